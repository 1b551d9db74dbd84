//! Positional importance, the paper's Figure 2: how far a fine-tuned model's prediction moves
//! when a random k-mer at a given distance from the TSS is replaced by another random k-mer, for
//! k = 1..6, as the mean |change| (on the model's scale, ln TPM for expression tables) over
//! tissues, sequences and draws, binned by distance to the TSS.
//!
//! The `importance` stage kind: inputs `model` (a fine-tuned model folder) and `promoters` (FASTA,
//! or a folder of them, sequences ending at the TSS); output `importance.tsv` (k, from, to,
//! mean_abs_change, n) and `importance.svg` (the heat map, TSS on the right). Seeded: the same
//! seed draws the same sequences, positions and replacements.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::figures;
use crate::model::predictor::Predictor;
use crate::rng::Rng;
use crate::Context;

/// Params of the `importance` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// k-mer sizes replaced (default 1 to 6).
    pub ks: Vec<usize>,
    /// Width of a distance bin in bases (default 50).
    pub bin: usize,
    /// At most this many sequences, drawn at random (default 200).
    pub sequences: usize,
    /// Replacements per sequence, k and bin (default 1).
    pub draws: usize,
    /// Seed of the draws (default 0).
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            ks: (1..=6).collect(),
            bin: 50,
            sequences: 200,
            draws: 1,
            seed: 0,
        }
    }
}

/// One cell of the map: replacing k-mers whose TSS-side base lies `from..=to` bases from the TSS.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// k-mer size.
    pub k: usize,
    /// Nearest distance to the TSS in the bin (1: the base next to the TSS).
    pub from: usize,
    /// Farthest distance in the bin.
    pub to: usize,
    /// Mean |predicted change| over tissues, sequences and draws.
    pub mean_abs_change: f64,
    /// Replacements averaged.
    pub n: usize,
}

/// The positional importance of `model` on `seqs` (each ending at its TSS).
pub fn importance(model: &Predictor, seqs: &[Vec<u8>], p: &Params) -> Result<Vec<Cell>, String> {
    if p.bin == 0 || p.ks.is_empty() || p.ks.contains(&0) || p.draws == 0 {
        return Err("importance: bin, draws and every k must be at least 1".into());
    }
    let mut rng = Rng::new(p.seed ^ 0x1A0B);
    let seqs: Vec<Vec<u8>> = seqs.iter().map(|s| s.to_ascii_uppercase()).collect();
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let bins = longest.div_ceil(p.bin);
    // Every replacement: (cell index, sequence index, mutated sequence).
    let mut jobs: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for (si, seq) in seqs.iter().enumerate() {
        let len = seq.len();
        for (ki, &k) in p.ks.iter().enumerate() {
            for b in 0..bins {
                let from = b * p.bin + 1;
                // The k-mer's TSS-side base is at distance d; its far end at d + k - 1 <= len.
                let to = ((b + 1) * p.bin).min(len.saturating_sub(k - 1));
                if from > to {
                    continue;
                }
                for _ in 0..p.draws {
                    let d = from + rng.below(to - from + 1);
                    let start = len - (d + k - 1);
                    let mut mutated = seq.clone();
                    replace(&mut mutated[start..start + k], &mut rng);
                    jobs.push((ki * bins + b, si, mutated));
                }
            }
        }
    }
    let refs: Vec<&[u8]> = seqs.iter().map(Vec::as_slice).collect();
    let base = model.predict(&model.encode(&refs)?.rows)?;
    let mutated: Vec<&[u8]> = jobs.iter().map(|j| j.2.as_slice()).collect();
    let preds = model.predict(&model.encode(&mutated)?.rows)?;
    let mut sums = vec![(0f64, 0usize); p.ks.len() * bins];
    for ((cell, si, _), pred) in jobs.iter().zip(preds) {
        let change = pred
            .iter()
            .zip(&base[*si])
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / pred.len().max(1) as f64;
        sums[*cell].0 += change;
        sums[*cell].1 += 1;
    }
    let mut out = Vec::new();
    for (ki, &k) in p.ks.iter().enumerate() {
        for b in 0..bins {
            let (sum, n) = sums[ki * bins + b];
            if n > 0 {
                out.push(Cell {
                    k,
                    from: b * p.bin + 1,
                    to: (b + 1) * p.bin,
                    mean_abs_change: sum / n as f64,
                    n,
                });
            }
        }
    }
    Ok(out)
}

/// Replaces `kmer` by a random k-mer of A, C, G and T that differs from it.
fn replace(kmer: &mut [u8], rng: &mut Rng) {
    let original = kmer.to_vec();
    loop {
        for b in kmer.iter_mut() {
            *b = b"ACGT"[rng.below(4)];
        }
        if kmer != original.as_slice() {
            return;
        }
    }
}

/// Runs the stage.
pub fn run(p: &Params, ctx: &Context) -> Result<Vec<Cell>, String> {
    let fail = |e: String| format!("importance: {e}");
    let model_dir = ctx
        .inputs
        .get("model")
        .ok_or_else(|| fail("needs an input `model` (a fine-tuned model folder)".into()))?;
    let promoters = ctx
        .inputs
        .get("promoters")
        .ok_or_else(|| fail("needs an input `promoters` (FASTA)".into()))?;
    let device = crate::model::device::for_job(&ctx.gpus, "importance")?;
    let model = Predictor::load(model_dir, device).map_err(fail)?;
    model.head().map_err(fail)?;
    let mut seqs = Vec::new();
    for f in crate::splits::corpus::fasta_files(promoters).map_err(fail)? {
        for r in crate::genomics::records::read_all(&f).map_err(fail)? {
            seqs.push(r.seq);
        }
    }
    if seqs.is_empty() {
        return Err(fail(format!("{} holds no sequences", promoters.display())));
    }
    let mut rng = Rng::new(p.seed);
    rng.shuffle(&mut seqs);
    seqs.truncate(p.sequences.max(1));
    let cells = importance(&model, &seqs, p).map_err(fail)?;
    let path = ctx.out.join("importance.tsv");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?,
    );
    let io = |e: std::io::Error| fail(format!("{}: {e}", path.display()));
    writeln!(f, "k\tfrom\tto\tmean_abs_change\tn").map_err(io)?;
    for c in &cells {
        writeln!(
            f,
            "{}\t{}\t{}\t{:.6}\t{}",
            c.k, c.from, c.to, c.mean_abs_change, c.n
        )
        .map_err(io)?;
    }
    f.flush().map_err(io)?;
    let title = format!(
        "mean |change in prediction| when a k-mer is replaced ({} sequences)",
        seqs.len()
    );
    let svg = figures::importance_heatmap(&cells, &title)?;
    std::fs::write(ctx.out.join("importance.svg"), svg).map_err(|e| fail(e.to_string()))?;
    eprintln!(
        "importance: {} sequences, {} cells",
        seqs.len(),
        cells.len()
    );
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short_sighted(dir: &std::path::Path, max_len: usize) -> Predictor {
        crate::testing::tiny_model(dir, max_len)
    }

    fn random_seqs(n: usize, len: usize) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(11);
        (0..n)
            .map(|_| (0..len).map(|_| b"ACGT"[rng.below(4)]).collect())
            .collect()
    }

    #[test]
    fn a_model_that_reads_the_last_50_bases_matters_only_there() {
        let dir = tempfile::tempdir().unwrap();
        let model = short_sighted(dir.path(), 52);
        let seqs = random_seqs(12, 200);
        let p = Params {
            ks: vec![1, 3],
            bin: 25,
            draws: 2,
            ..Params::default()
        };
        let cells = importance(&model, &seqs, &p).unwrap();
        assert_eq!(cells.len(), 2 * 8);
        // Beyond what the model reads, changes are rounding (batches differ in padding).
        let outside = cells
            .iter()
            .filter(|c| c.from > 50)
            .map(|c| c.mean_abs_change)
            .fold(0.0, f64::max);
        assert!(outside < 1e-6, "{cells:?}");
        for c in cells.iter().filter(|c| c.from <= 50) {
            assert!(c.mean_abs_change > 1e4 * outside.max(1e-9), "{c:?}");
        }
        assert!(cells.iter().all(|c| c.n == 12 * 2));
        // Seeded: the same params give the same map.
        assert_eq!(importance(&model, &seqs, &p).unwrap(), cells);
    }

    #[test]
    fn replacements_always_change_the_kmer() {
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            let mut k = *b"A";
            replace(&mut k, &mut rng);
            assert_ne!(&k, b"A");
        }
    }

    #[test]
    fn bad_params_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let model = short_sighted(dir.path(), 20);
        let p = Params {
            bin: 0,
            ..Params::default()
        };
        let e = importance(&model, &random_seqs(2, 30), &p).unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
    }
}
