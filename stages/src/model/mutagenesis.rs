//! In-silico saturation mutagenesis: every position of one promoter changed to each of the three
//! other bases, and the predicted change per tissue (mutant minus original). The per-base
//! importance maps people draw are these deltas.

use super::predictor::Predictor;

/// One single-base change and its effect.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// 1-based position in the sequence (5' to 3').
    pub position: usize,
    /// Bases from this one to the TSS end (the last base is 1).
    pub distance_to_tss: usize,
    /// The original base.
    pub reference: u8,
    /// The new base.
    pub alt: u8,
    /// Mutant minus original, per target.
    pub delta: Vec<f32>,
}

/// Every single-base substitution of `seq` (upper-cased; positions that are not A, C, G or T get
/// all four bases as alternatives), scored in batches.
pub fn saturate(model: &Predictor, seq: &[u8]) -> Result<(Vec<f32>, Vec<Mutation>), String> {
    if seq.is_empty() {
        return Err("the sequence is empty".into());
    }
    let seq = seq.to_ascii_uppercase();
    let mut variants: Vec<Vec<u8>> = Vec::with_capacity(seq.len() * 3);
    let mut muts = Vec::with_capacity(seq.len() * 3);
    for (i, &b) in seq.iter().enumerate() {
        for &alt in b"ACGT" {
            if alt == b {
                continue;
            }
            let mut v = seq.clone();
            v[i] = alt;
            variants.push(v);
            muts.push(Mutation {
                position: i + 1,
                distance_to_tss: seq.len() - i,
                reference: b,
                alt,
                delta: Vec::new(),
            });
        }
    }
    let base = model.predict(&model.encode(&[&seq])?.rows)?.remove(0);
    let refs: Vec<&[u8]> = variants.iter().map(Vec::as_slice).collect();
    let preds = model.predict(&model.encode(&refs)?.rows)?;
    for (m, p) in muts.iter_mut().zip(preds) {
        m.delta = p.iter().zip(&base).map(|(a, r)| a - r).collect();
    }
    Ok((base, muts))
}
