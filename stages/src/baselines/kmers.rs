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

fn code(b: u8) -> Option<usize> {
    match b {
        b'A' | b'a' => Some(0),
        b'C' | b'c' => Some(1),
        b'G' | b'g' => Some(2),
        b'T' | b't' => Some(3),
        _ => None,
    }
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
        let mut counts = vec![0f64; 1 << (2 * k)];
        let step = match counting {
            Counting::Overlapping => 1,
            Counting::NonOverlapping => k,
        };
        let mut windows = 0usize;
        let mut start = 0;
        while start + k <= seq.len() {
            windows += 1;
            let index = seq[start..start + k]
                .iter()
                .try_fold(0usize, |acc, &b| code(b).map(|c| acc * 4 + c));
            if let Some(i) = index {
                counts[i] += 1.0;
            }
            start += step;
        }
        let norm = windows.max(1) as f64;
        out.extend(counts.into_iter().map(|c| c / norm));
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
    }
}
