//! Bag-of-k-mers features of DNA sequences: for each k, the count of every k-mer (4^k of them, in
//! lexicographic order of A < C < G < T) divided by the number of k-mer positions. Windows holding
//! anything but A, C, G or T are skipped.

use serde::{Deserialize, Serialize};

/// How k-mers are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counting {
    /// Every position (windows overlap).
    Overlapping,
    /// Consecutive, non-overlapping windows from the first base, as FloraBERT's original code.
    NonOverlapping,
}

/// The number of features for `ks`.
pub fn width(ks: &[usize]) -> usize {
    ks.iter().map(|&k| 1 << (2 * k)).sum()
}

/// 2-bit codes of A, C, G, T in either case; 4 for anything else.
const CODES: [u8; 256] = {
    let mut t = [4u8; 256];
    t[b'A' as usize] = 0;
    t[b'a' as usize] = 0;
    t[b'C' as usize] = 1;
    t[b'c' as usize] = 1;
    t[b'G' as usize] = 2;
    t[b'g' as usize] = 2;
    t[b'T' as usize] = 3;
    t[b't' as usize] = 3;
    t
};

#[cfg(test)]
fn code(b: u8) -> Option<usize> {
    let c = CODES[b as usize];
    (c < 4).then_some(c as usize)
}

/// The features of one sequence, for every k in `ks` one after the other.
///
/// ```
/// use flora_stages::baselines::kmers::{features, Counting};
/// // k = 1 over "AACG": A twice, C once, G once, among 4 positions.
/// assert_eq!(features(b"AACG", &[1], Counting::Overlapping), vec![0.5, 0.25, 0.25, 0.0]);
/// ```
pub fn features(seq: &[u8], ks: &[usize], counting: Counting) -> Vec<f64> {
    let mut out = Vec::with_capacity(width(ks));
    for &k in ks {
        let mut counts = vec![0u32; 1 << (2 * k)];
        let windows = match counting {
            Counting::Overlapping => {
                // A rolling code of the last k bases; `run` counts the valid bases behind it.
                let mask = (1usize << (2 * k)) - 1;
                let (mut kmer, mut run) = (0usize, 0usize);
                for &b in seq {
                    let c = CODES[b as usize];
                    if c < 4 {
                        kmer = ((kmer << 2) | c as usize) & mask;
                        run += 1;
                        if run >= k {
                            counts[kmer] += 1;
                        }
                    } else {
                        run = 0;
                    }
                }
                (seq.len() + 1).saturating_sub(k)
            }
            Counting::NonOverlapping => {
                let chunks = seq.chunks_exact(k);
                let windows = chunks.len();
                for chunk in chunks {
                    let index = chunk.iter().try_fold(0usize, |acc, &b| {
                        let c = CODES[b as usize];
                        (c < 4).then_some(acc * 4 + c as usize)
                    });
                    if let Some(i) = index {
                        counts[i] += 1;
                    }
                }
                windows
            }
        };
        let norm = windows.max(1) as f64;
        out.extend(counts.into_iter().map(|c| f64::from(c) / norm));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_hand() {
        // "ACGTA", k = 2 overlapping: AC CG GT TA, 4 windows.
        let f = features(b"ACGTA", &[2], Counting::Overlapping);
        assert_eq!(f.len(), 16);
        let at = |s: &str| {
            let b = s.as_bytes();
            code(b[0]).unwrap() * 4 + code(b[1]).unwrap()
        };
        for kmer in ["AC", "CG", "GT", "TA"] {
            assert_eq!(f[at(kmer)], 0.25, "{kmer}");
        }
        assert_eq!(f.iter().sum::<f64>(), 1.0);
        // Non-overlapping: AC GT (A left over), 2 windows.
        let g = features(b"ACGTA", &[2], Counting::NonOverlapping);
        assert_eq!((g[at("AC")], g[at("GT")], g[at("CG")]), (0.5, 0.5, 0.0));
        // N windows are skipped but still count as positions.
        let n = features(b"ANA", &[1], Counting::Overlapping);
        assert_eq!(n, vec![2.0 / 3.0, 0.0, 0.0, 0.0]);
        assert_eq!(width(&[2, 3, 4, 5]), 16 + 64 + 256 + 1024);
        // An N breaks the run: "ACNGT" has AC and GT only, among 4 windows; lower case counts.
        let f = features(b"acNGT", &[2], Counting::Overlapping);
        assert_eq!(
            (f[at("AC")], f[at("GT")], f.iter().sum::<f64>()),
            (0.25, 0.25, 0.5)
        );
        // Shorter than k: no windows, all zeros.
        assert_eq!(features(b"AC", &[3], Counting::Overlapping), vec![0.0; 64]);
    }
}
