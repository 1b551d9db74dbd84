//! DNA sequence helpers: reverse complement (IUPAC-aware) and base composition.

/// The complement of one IUPAC nucleotide code (upper-case); anything else becomes `N`.
pub fn complement(b: u8) -> u8 {
    match b.to_ascii_uppercase() {
        b'A' => b'T',
        b'T' | b'U' => b'A',
        b'C' => b'G',
        b'G' => b'C',
        b'R' => b'Y',
        b'Y' => b'R',
        b'K' => b'M',
        b'M' => b'K',
        b'S' => b'S',
        b'W' => b'W',
        b'B' => b'V',
        b'V' => b'B',
        b'D' => b'H',
        b'H' => b'D',
        _ => b'N',
    }
}

/// The reverse complement of `s`, upper-cased.
///
/// ```
/// assert_eq!(flora_stages::genomics::seq::reverse_complement(b"AACGtn"), b"NACGTT");
/// ```
pub fn reverse_complement(s: &[u8]) -> Vec<u8> {
    s.iter().rev().map(|&b| complement(b)).collect()
}

/// The share of bases that are not A, C, G or T (N and other IUPAC ambiguity codes).
pub fn ambiguous_fraction(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let n = s
        .iter()
        .filter(|b| !matches!(b.to_ascii_uppercase(), b'A' | b'C' | b'G' | b'T'))
        .count();
    n as f64 / s.len() as f64
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
    }

    #[test]
    fn ambiguous_share() {
        assert_eq!(ambiguous_fraction(b"ACGN"), 0.25);
        assert_eq!(ambiguous_fraction(b"acgtR"), 0.2);
        assert_eq!(ambiguous_fraction(b""), 0.0);
    }
}
