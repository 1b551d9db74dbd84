//! DNA sequence helpers: reverse complement (IUPAC-aware) and base composition.

/// Complement of every byte (upper-cased IUPAC; anything else becomes `N`), built at compile time.
const COMPLEMENT: [u8; 256] = {
    let mut t = [b'N'; 256];
    let pairs: [(u8, u8); 15] = [
        (b'A', b'T'),
        (b'T', b'A'),
        (b'U', b'A'),
        (b'C', b'G'),
        (b'G', b'C'),
        (b'R', b'Y'),
        (b'Y', b'R'),
        (b'K', b'M'),
        (b'M', b'K'),
        (b'S', b'S'),
        (b'W', b'W'),
        (b'B', b'V'),
        (b'V', b'B'),
        (b'D', b'H'),
        (b'H', b'D'),
    ];
    let mut i = 0;
    while i < pairs.len() {
        let (from, to) = pairs[i];
        t[from as usize] = to;
        t[from.to_ascii_lowercase() as usize] = to;
        i += 1;
    }
    t
};

/// The complement of one IUPAC nucleotide code (upper-case); anything else becomes `N`.
pub fn complement(b: u8) -> u8 {
    COMPLEMENT[b as usize]
}

/// The reverse complement of `s`, upper-cased.
///
/// ```
/// assert_eq!(flora_stages::genomics::seq::reverse_complement(b"AACGtn"), b"NACGTT");
/// ```
pub fn reverse_complement(s: &[u8]) -> Vec<u8> {
    let mut out = s.to_vec();
    reverse_complement_in_place(&mut out);
    out
}

/// Reverse-complements `s` where it lies, upper-casing it (no second buffer).
///
/// ```
/// let mut s = b"AACGtn".to_vec();
/// flora_stages::genomics::seq::reverse_complement_in_place(&mut s);
/// assert_eq!(s, b"NACGTT");
/// ```
pub fn reverse_complement_in_place(s: &mut [u8]) {
    s.reverse();
    for b in s.iter_mut() {
        *b = COMPLEMENT[*b as usize];
    }
}

/// A byte that is no IUPAC nucleotide code, and its 1-based position: a protein or a corrupted
/// record, not DNA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotNucleotide {
    /// The byte.
    pub byte: u8,
    /// Where it is, from 1.
    pub position: usize,
}

impl std::fmt::Display for NotNucleotide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "has `{}` at position {}, which is not a nucleotide code (A, C, G, T, N or another \
             IUPAC code)",
            char::from(self.byte).escape_default(),
            self.position
        )
    }
}

/// The first byte of `s` that is no nucleotide code (A, C, G, T, U, N and the ambiguity codes,
/// in either case), if there is one.
///
/// ```
/// use flora_stages::genomics::seq::check_dna;
/// assert!(check_dna(b"acgtNRY").is_ok());
/// assert_eq!(check_dna(b"ACGEL").unwrap_err().position, 4);
/// ```
pub fn check_dna(s: &[u8]) -> Result<(), NotNucleotide> {
    match s
        .iter()
        .position(|&b| COMPLEMENT[b as usize] == b'N' && b | 0x20 != b'n')
    {
        Some(at) => Err(NotNucleotide {
            byte: s[at],
            position: at + 1,
        }),
        None => Ok(()),
    }
}

/// `s` upper-cased, as the models read it, once [`check_dna`] passes.
///
/// ```
/// use flora_stages::genomics::seq::upper_dna;
/// assert_eq!(upper_dna(b"acgtNRY").unwrap(), "ACGTNRY");
/// ```
pub fn upper_dna(s: &[u8]) -> Result<String, NotNucleotide> {
    check_dna(s)?;
    // Every byte is an ASCII letter.
    Ok(String::from_utf8(s.to_ascii_uppercase()).expect("ASCII"))
}

/// The share of bases that are not A, C, G or T (N and other IUPAC ambiguity codes).
pub fn ambiguous_fraction(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    // `b | 0x20` lower-cases letters and maps no other byte onto a, c, g or t: compares that
    // vectorise, where a table lookup per byte does not.
    let acgt = s
        .iter()
        .filter(|&&b| matches!(b | 0x20, b'a' | b'c' | b'g' | b't'))
        .count();
    (s.len() - acgt) as f64 / s.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_complement_handles_iupac_and_case() {
        assert_eq!(reverse_complement(b"ACGTRYKMSWBDHVN"), b"NBDHVWSKMRYACGT");
        assert_eq!(reverse_complement(b"acgt"), b"ACGT");
        assert_eq!(reverse_complement(b""), b"");
        assert_eq!(reverse_complement(b"X"), b"N");
        for odd in [&b"ACGTRYKMSWBDHVN"[..], b"acgta", b""] {
            let mut s = odd.to_vec();
            reverse_complement_in_place(&mut s);
            assert_eq!(s, reverse_complement(odd));
        }
    }

    #[test]
    fn ambiguous_share() {
        assert_eq!(ambiguous_fraction(b"ACGN"), 0.25);
        assert_eq!(ambiguous_fraction(b"acgtR"), 0.2);
        assert_eq!(ambiguous_fraction(b""), 0.0);
        for b in 0..=255u8 {
            let want = if b"ACGTacgt".contains(&b) { 0.0 } else { 1.0 };
            assert_eq!(ambiguous_fraction(&[b]), want, "byte {b}");
        }
    }
}
