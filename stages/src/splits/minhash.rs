//! MinHash sketches of DNA k-mers (one hash per k-mer, densified one-permutation hashing) and
//! banded locality-sensitive hashing, to find similar promoters without comparing all pairs.

use std::collections::HashMap;

/// A sketch: the minimum hash value in each of `bins` bins.
pub type Sketch = Vec<u64>;

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The sketch of `seq` over its k-mers (k <= 32) that contain only A, C, G and T; `None` when it
/// has no such k-mer.
pub fn sketch(seq: &[u8], k: usize, bins: usize) -> Option<Sketch> {
    assert!((1..=32).contains(&k) && bins > 0);
    let mask: u64 = if k == 32 {
        u64::MAX
    } else {
        (1u64 << (2 * k)) - 1
    };
    let mut mins = vec![u64::MAX; bins];
    let (mut code, mut valid) = (0u64, 0usize);
    let mut any = false;
    for &b in seq {
        let v = match b.to_ascii_uppercase() {
            b'A' => 0,
            b'C' => 1,
            b'G' => 2,
            b'T' => 3,
            _ => {
                valid = 0;
                continue;
            }
        };
        code = ((code << 2) | v) & mask;
        valid += 1;
        if valid >= k {
            let h = mix(code);
            let bin = (h % bins as u64) as usize;
            let value = h / bins as u64;
            if value < mins[bin] {
                mins[bin] = value;
            }
            any = true;
        }
    }
    if !any {
        return None;
    }
    // Densify: an empty bin borrows from the next non-empty one (circularly), salted by distance.
    let filled: Vec<u64> = mins.clone();
    for i in 0..bins {
        if filled[i] == u64::MAX {
            let mut j = (i + 1) % bins;
            let mut d = 1u64;
            while filled[j] == u64::MAX {
                j = (j + 1) % bins;
                d += 1;
            }
            mins[i] = mix(filled[j] ^ d.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
    }
    Some(mins)
}

/// The estimated Jaccard similarity of two sketches: the share of equal bins.
pub fn similarity(a: &Sketch, b: &Sketch) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len() as f64
}

/// Pairs `(i, j)` (i < j) whose sketches agree on all rows of at least one of `bands` bands and
/// whose estimated similarity is at least `threshold`. Large buckets are compared against their
/// first 64 members only, so identical sequences stay linear.
pub fn similar_pairs(sketches: &[Sketch], bands: usize, threshold: f64) -> Vec<(usize, usize)> {
    if sketches.is_empty() {
        return Vec::new();
    }
    let rows = (sketches[0].len() / bands.max(1)).max(1);
    let mut pairs = std::collections::BTreeSet::new();
    for band in 0..bands.max(1) {
        let lo = band * rows;
        if lo >= sketches[0].len() {
            break;
        }
        let hi = (lo + rows).min(sketches[0].len());
        let mut buckets: HashMap<&[u64], Vec<usize>> = HashMap::new();
        for (i, s) in sketches.iter().enumerate() {
            buckets.entry(&s[lo..hi]).or_default().push(i);
        }
        for members in buckets.values().filter(|m| m.len() > 1) {
            for (x, &i) in members.iter().enumerate() {
                for &j in members.iter().take(x.min(64)) {
                    let (a, b) = (j.min(i), j.max(i));
                    if !pairs.contains(&(a, b))
                        && similarity(&sketches[a], &sketches[b]) >= threshold
                    {
                        pairs.insert((a, b));
                    }
                }
            }
        }
    }
    pairs.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random_seq(rng: &mut Rng, n: usize) -> Vec<u8> {
        (0..n).map(|_| b"ACGT"[rng.below(4)]).collect()
    }

    #[test]
    fn similar_sequences_pair_and_unrelated_ones_do_not() {
        let mut rng = Rng::new(7);
        let a = random_seq(&mut rng, 1000);
        let mut a_mut = a.clone();
        for i in (0..1000).step_by(100) {
            a_mut[i] = if a_mut[i] == b'A' { b'C' } else { b'A' };
        }
        let b = random_seq(&mut rng, 1000);
        let s: Vec<Sketch> = [&a, &a_mut, &b]
            .iter()
            .map(|s| sketch(s, 12, 128).unwrap())
            .collect();
        assert!(
            similarity(&s[0], &s[1]) > 0.6,
            "{}",
            similarity(&s[0], &s[1])
        );
        assert!(similarity(&s[0], &s[2]) < 0.05);
        assert_eq!(similar_pairs(&s, 32, 0.5), vec![(0, 1)]);
        assert!(sketch(b"NNNN", 3, 8).is_none());
    }
}
