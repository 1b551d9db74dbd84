//! Helpers for tests: loud skips, and data with a known answer.

use std::io::Write;

use crate::rng::Rng;

/// Says that a test was skipped and why, on stderr past the test harness's output capture,
/// so that a skip is never silent.
pub fn skipped(message: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {message}");
}

/// The shared real-data folder (`FLORA_SHARED_DATA`), or `None` after saying loudly that `test`
/// is skipped without it.
pub fn shared_data(test: &str) -> Option<std::path::PathBuf> {
    let data = std::env::var_os("FLORA_SHARED_DATA").map(std::path::PathBuf::from);
    if data.is_none() {
        skipped(&format!("{test}: FLORA_SHARED_DATA is not set"));
    }
    data
}

/// Motifs planted by [`planted`] and their effect on each of its three targets.
pub const PLANTED_MOTIFS: [(&str, [f64; 3]); 3] = [
    ("TATAAAT", [2.0, 0.0, 1.0]),
    ("CACGTGG", [0.0, 2.0, 1.0]),
    ("GGTCAAC", [1.0, 1.0, -1.5]),
];

/// The names of [`planted`]'s targets.
pub const PLANTED_TARGETS: [&str; 3] = ["leaf", "root", "seed"];

/// One sequence with planted motifs and its targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Planted {
    /// `p0`, `p1`, ...
    pub id: String,
    /// Random bases with some of [`PLANTED_MOTIFS`] written in.
    pub seq: String,
    /// Which motifs were planted.
    pub present: [bool; 3],
    /// Sum of the planted motifs' effects plus normal noise (sd 0.2).
    pub targets: [f64; 3],
}

/// `n` random sequences of `len` bases; each motif is planted with probability one half in the
/// 3' (TSS-near) half, and the targets are additive in the motifs present.
pub fn planted(n: usize, len: usize, seed: u64) -> Vec<Planted> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let mut seq: Vec<u8> = (0..len).map(|_| b"ACGT"[rng.below(4)]).collect();
            let mut present = [false; 3];
            let mut targets = [0.0; 3];
            // Non-overlapping slots in the 3' half, one per motif.
            let slot = len / 2 / PLANTED_MOTIFS.len();
            for (m, (motif, effect)) in PLANTED_MOTIFS.iter().enumerate() {
                if rng.below(2) == 0 {
                    continue;
                }
                present[m] = true;
                let start = len / 2 + m * slot + rng.below(slot - motif.len());
                seq[start..start + motif.len()].copy_from_slice(motif.as_bytes());
                for t in 0..3 {
                    targets[t] += effect[t];
                }
            }
            for t in &mut targets {
                *t += 0.2 * crate::model::layers::normal(&mut rng) as f64;
            }
            Planted {
                id: format!("p{i}"),
                seq: String::from_utf8(seq).expect("ASCII"),
                present,
                targets,
            }
        })
        .collect()
}

/// Writes planted data as a ready table (`id, sequence, leaf, root, seed`).
pub fn planted_table(rows: &[Planted]) -> String {
    let mut text = format!("id\tsequence\t{}\n", PLANTED_TARGETS.join("\t"));
    for r in rows {
        text.push_str(&format!(
            "{}\t{}\t{:.4}\t{:.4}\t{:.4}\n",
            r.id, r.seq, r.targets[0], r.targets[1], r.targets[2]
        ));
    }
    text
}

/// Values whose rounding to bf16 is easy to get wrong: ties to even each way, just past a tie,
/// overflow to infinity, infinities and subnormals (no NaN: the card and the CPU keep different
/// NaN payloads).
pub fn bf16_rounding_cases() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        1.0,
        1.0 + 1.0 / 256.0,        // a tie: stays at the even 1.0
        1.0 + 3.0 / 256.0,        // a tie: up to the even neighbour
        1.0 + 1.0 / 256.0 + 1e-7, // just past a tie: up
        f32::MAX,                 // past bf16's largest: infinity
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40, // subnormal
        -3.3e-39,
    ]
}

/// A CPU variable of normal(0, `std`) values drawn from `seed` (for gradient checks).
pub fn random_var(shape: &[usize], std: f32, seed: u64) -> candle_core::Var {
    let t = crate::model::layers::randn(&mut Rng::new(seed), shape, std, &candle_core::Device::Cpu)
        .expect("a CPU tensor");
    candle_core::Var::from_tensor(&t).expect("a variable")
}

/// The gradients of sum(y * weights): every element of `y` gets its own gradient.
pub fn weighted_grads(
    y: &candle_core::Tensor,
    weights: &candle_core::Tensor,
) -> candle_core::backprop::GradStore {
    (y * weights)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("a weighted sum and its backward pass")
}

/// A float tensor's elements summed, as f64.
pub fn total(t: &candle_core::Tensor) -> f64 {
    t.to_dtype(candle_core::DType::F64)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.to_scalar::<f64>())
        .expect("a float tensor")
}

/// The largest |a - b| over two tensors of one shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.to_dtype(candle_core::DType::F64))
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f64>())
        .expect("tensors of one shape")
}

/// Checks that two model folders' `model.safetensors` hold the same tensors within `tolerance`
/// (the largest |a - b| of each), naming the first that differs.
pub fn assert_weights_close(a: &std::path::Path, b: &std::path::Path, tolerance: f64) {
    let load = |dir: &std::path::Path| {
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .expect("a model folder")
    };
    let (ta, tb) = (load(a), load(b));
    assert_eq!(
        ta.len(),
        tb.len(),
        "tensors in {} and {}",
        a.display(),
        b.display()
    );
    for (name, x) in &ta {
        let d = max_abs_diff(x, &tb[name]);
        assert!(d < tolerance, "{name}: weights differ by {d}");
    }
}

/// [`max_abs_diff`] relative to the largest |b|.
pub fn max_rel_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    let zero = b.zeros_like().expect("a tensor");
    max_abs_diff(a, b) / max_abs_diff(b, &zero).max(1e-12)
}

/// Multi-head attention composed of recorded candle ops (the reference of the fused and attached
/// versions, and a row of `flora bench --ops`): `q`, `k`, `v` (batch, len, hidden) over `heads`
/// heads, the additive key mask (batch, 1, 1, len), seeded dropout on the probabilities, the
/// products in `compute`.
pub fn composed_attention(
    qkv: [&candle_core::Tensor; 3],
    heads: usize,
    mask: &candle_core::Tensor,
    dropout: Option<(f32, u64)>,
    compute: candle_core::DType,
) -> candle_core::Result<candle_core::Tensor> {
    use crate::model::layers::{dropout_with_seed, matmul, softmax_composite};
    let [q, k, v] = qkv;
    let (b, len, hidden) = q.dims3()?;
    let hd = hidden / heads;
    let split = |t: &candle_core::Tensor| {
        t.reshape((b, len, heads, hd))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let scores =
        (matmul(&q, &k.t()?.contiguous()?, compute)? / (hd as f64).sqrt())?.broadcast_add(mask)?;
    let mut probs = softmax_composite(&scores)?;
    if let Some((p, seed)) = dropout {
        probs = dropout_with_seed(&probs, p, seed)?;
    }
    matmul(&probs, &v, compute)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, len, hidden))
}

/// A random-weight model folder (1 layer of width 16, a `leaf`/`root` head, one token per base)
/// saved in `dir` and loaded; rows are `max_len` tokens, so it reads the last `max_len - 2`
/// bases of a sequence.
pub fn tiny_model(dir: &std::path::Path, max_len: usize) -> crate::model::predictor::Predictor {
    use crate::model::roberta::{Config, Params as Weights, Positions};
    use crate::model::{head, predictor, tokenizer};
    use candle_core::Device;
    // 256 byte symbols and no merges: one token per base.
    let tok = tokenizer::train(
        ["ACGTACGGTTCAGATCCGATCGA"].into_iter(),
        &tokenizer::Params {
            vocab_size: 256,
            ..Default::default()
        },
    )
    .expect("trains a tokenizer");
    let cfg = Config::new(
        tok.get_vocab_size(true),
        1,
        16,
        2,
        32,
        max_len,
        0.0,
        Positions::Tss,
    );
    let mut w = Weights::init(&cfg, 3, &Device::Cpu).expect("initialises");
    head::init(&mut w, &cfg, 2, 5, &Device::Cpu).expect("adds a head");
    let hc = head::HeadConfig {
        targets: vec!["leaf".into(), "root".into()],
        transform: head::Transform::None,
        offset: 0.0,
        dropout: 0.0,
        pooling: "mean".into(),
        promoter_window: None,
    };
    predictor::save(dir, &cfg, &hc, &w, &tok).expect("saves");
    predictor::Predictor::load(dir, Device::Cpu).expect("loads")
}
