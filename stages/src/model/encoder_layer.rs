//! A whole RoBERTa encoder layer as one CPU op (f32): self-attention, output dense, dropout,
//! residual and LayerNorm, then the feed-forward (dense, GELU, dense, dropout, residual,
//! LayerNorm), with its backward pass written out.
//!
//! Every node of candle's autograd graph costs, in the backward pass, a freshly zeroed gradient
//! for each of its inputs and a full pass to add into it: even with one op per dense layer that
//! was a dozen activation-sized gradients per layer and one per parameter. Here the layer's only
//! input in the graph is its hidden states: its sixteen parameters are read by the op directly,
//! their gradients are computed in the backward pass and handed to the model's
//! [`GradSink`](super::roberta::GradSink), and candle sees one gradient per layer. The
//! activations the backward pass needs (q, k, v, the attention probabilities, the context, the
//! LayerNorms' inputs, the feed-forward's) are kept by the op until its graph is dropped.
//!
//! The arithmetic is that of the separate ops (`dense.rs`, `attention.rs`, `fused.rs`), called on
//! slices, and dropout masks are drawn from the same seeds, so the layer gives what they give; a
//! test checks forward values and every gradient against them.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attention::{self, Dims, Problem};
use super::dense::{self, gelu_in_place, through_gelu};
use super::fused::{data, hold, layer_norm_rows, layer_norm_rows_backward};
use super::gpu_ops::dropout_in_place;
use super::roberta::{Config, GradSink, Params};

/// The layer's parameters, in the order the op keeps them (names after `...layer.N.`).
const NAMES: [&str; 16] = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];
const QW: usize = 0;
const QB: usize = 1;
const KW: usize = 2;
const KB: usize = 3;
const VW: usize = 4;
const VB: usize = 5;
const OW: usize = 6;
const OB: usize = 7;
const LN1W: usize = 8;
const LN1B: usize = 9;
const IW: usize = 10;
const IB: usize = 11;
const FW: usize = 12;
const FB: usize = 13;
const LN2W: usize = 14;
const LN2B: usize = 15;

/// Elements handed to a thread at a time by the residual additions.
const CHUNK: usize = 4096;

/// Whether [`encoder_layer`] applies: f32 hidden states on the CPU and f32 products.
pub fn applies(x: &Tensor, p: &Params) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && p.compute == DType::F32
}

/// The seeds of a layer's three dropouts (none without dropout).
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerDropout {
    /// On the attention probabilities: (rate, seed).
    pub attention: Option<(f32, u64)>,
    /// After the attention's output dense layer.
    pub attention_output: Option<(f32, u64)>,
    /// After the feed-forward's output dense layer.
    pub output: Option<(f32, u64)>,
}

/// Encoder layer `layer` of `p` over hidden states `x` (batch, len, hidden), with the additive
/// key mask (batch x len) and the dropouts' seeds.
pub fn encoder_layer(
    p: &Params,
    cfg: &Config,
    layer: usize,
    x: &Tensor,
    key_mask: &[f32],
    dropout: LayerDropout,
) -> Result<Tensor> {
    let prefix = format!("roberta.encoder.layer.{layer}");
    let params = NAMES
        .iter()
        .map(|n| {
            let name = format!("{prefix}.{n}");
            let t = p.tensor(&name).ok_or_else(|| {
                candle_core::Error::Msg(format!("flora-encoder-layer: no parameter {name}"))
            })?;
            t.contiguous()
        })
        .collect::<Result<Vec<_>>>()?;
    let op = EncoderLayer {
        prefix,
        params,
        heads: cfg.num_attention_heads,
        eps: cfg.layer_norm_eps,
        key_mask: key_mask.to_vec(),
        dropout,
        sink: (!p.frozen).then(|| p.sink.clone()),
        saved: Mutex::new(None),
        profile_label: super::step_profile::mirror(),
    };
    x.contiguous()?.apply_op1(op)
}

struct EncoderLayer {
    prefix: String,
    params: Vec<Tensor>,
    heads: usize,
    eps: f64,
    key_mask: Vec<f32>,
    dropout: LayerDropout,
    /// Where the parameters' gradients go (none for frozen weights).
    sink: Option<Arc<GradSink>>,
    saved: Mutex<Option<Saved>>,
    /// The step profile's label for the backward pass.
    profile_label: Option<String>,
}

/// What the forward pass keeps for the backward pass.
struct Saved {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    context: Vec<f32>,
    /// The first LayerNorm's input (attention output + residual) and output.
    ln1_in: Vec<f32>,
    ln1_out: Vec<f32>,
    /// The feed-forward's pre-activation and GELU output.
    pre_gelu: Vec<f32>,
    gelu: Vec<f32>,
    /// The second LayerNorm's input.
    ln2_in: Vec<f32>,
}

/// `a += b`, in parallel.
fn add_in_place(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// Dropout of `y` in place where `d` asks for it.
fn maybe_dropout(y: &mut [f32], d: Option<(f32, u64)>) {
    if let Some((rate, seed)) = d.filter(|&(r, _)| r > 0.0) {
        dropout_in_place(y, rate, seed);
    }
}

impl EncoderLayer {
    /// The parameters' storage, held for reading, in [`NAMES`] order.
    fn held_params(&self) -> Result<Vec<super::fused::Held<'_>>> {
        self.params
            .iter()
            .map(|t| hold(t, "flora-encoder-layer"))
            .collect()
    }

    /// (batch, len, hidden, intermediate), checked against the parameters' shapes.
    fn sizes(&self, l: &Layout) -> Result<(usize, usize, usize, usize)> {
        let [batch, len, hidden] = l.dims() else {
            candle_core::bail!(
                "flora-encoder-layer: expects (batch, len, hidden), got {:?}",
                l.dims()
            )
        };
        let inter = self.params[IW].dims().first().copied().unwrap_or(0);
        let shapes_ok = self.params[QW].dims() == [*hidden, *hidden]
            && self.params[IW].dims() == [inter, *hidden]
            && self.params[FW].dims() == [*hidden, inter];
        if !shapes_ok || self.heads == 0 || !hidden.is_multiple_of(self.heads) {
            candle_core::bail!(
                "flora-encoder-layer: {} does not fit hidden states {:?} with {} heads",
                self.prefix,
                l.dims(),
                self.heads
            );
        }
        Ok((*batch, *len, *hidden, inter))
    }

    fn problem(&self, batch: usize, len: usize, hidden: usize) -> Problem<'_> {
        Problem {
            d: Dims::new(batch, len, hidden, self.heads),
            scale: 1.0 / ((hidden / self.heads) as f32).sqrt(),
            key_mask: &self.key_mask,
            dropout: self.dropout.attention.filter(|&(r, _)| r > 0.0),
        }
    }
}

impl CustomOp1 for EncoderLayer {
    fn name(&self) -> &'static str {
        "flora-encoder-layer"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(s, l, self.name())?;
        let (batch, len, h, inter) = self.sizes(l)?;
        let rows = batch * len;
        let held = self.held_params()?;
        let w = |i: usize| held[i].slice();
        let q = dense::forward(x, w(QW), w(QB), (rows, h, h))?;
        let k = dense::forward(x, w(KW), w(KB), (rows, h, h))?;
        let v = dense::forward(x, w(VW), w(VB), (rows, h, h))?;
        let (context, probs) = attention::forward(&q, &k, &v, &self.problem(batch, len, h))?;
        let mut ln1_in = dense::forward(&context, w(OW), w(OB), (rows, h, h))?;
        maybe_dropout(&mut ln1_in, self.dropout.attention_output);
        add_in_place(&mut ln1_in, x);
        let ln1_out = layer_norm_rows(&ln1_in, w(LN1W), w(LN1B), self.eps);
        let pre_gelu = dense::forward(&ln1_out, w(IW), w(IB), (rows, h, inter))?;
        let mut gelu = pre_gelu.clone();
        gelu_in_place(&mut gelu);
        let mut ln2_in = dense::forward(&gelu, w(FW), w(FB), (rows, inter, h))?;
        maybe_dropout(&mut ln2_in, self.dropout.output);
        add_in_place(&mut ln2_in, &ln1_out);
        let y = layer_norm_rows(&ln2_in, w(LN2W), w(LN2B), self.eps);
        *self.saved.lock().expect("encoder layer activations") = Some(Saved {
            q,
            k,
            v,
            probs,
            context,
            ln1_in,
            ln1_out,
            pre_gelu,
            gelu,
            ln2_in,
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        super::step_profile::backward_region(&self.profile_label, || {
            let grad = grad.contiguous()?;
            let (batch, len, h, inter) = self.sizes(x.layout())?;
            let rows = batch * len;
            let (xh, gh) = (hold(x, self.name())?, hold(&grad, self.name())?);
            let (xs, g) = (xh.slice(), gh.slice());
            let held = self.held_params()?;
            let w = |i: usize| held[i].slice();
            let saved = self.saved.lock().expect("encoder layer activations");
            let Some(s) = saved.as_ref() else {
                candle_core::bail!(
                    "flora-encoder-layer: the backward pass ran without a forward pass"
                )
            };
            let mut grads: Vec<(usize, Vec<f32>)> = Vec::with_capacity(16);
            let ln_grads = |input: &[f32], weight: &[f32], g: &[f32]| {
                let mut dx = vec![0f32; input.len()];
                let (mut dw, mut db) = (vec![0f32; h], vec![0f32; h]);
                layer_norm_rows_backward(input, weight, g, self.eps, &mut dx, (&mut dw, &mut db));
                (dx, dw, db)
            };
            // Second LayerNorm; its input's gradient also reaches the first LayerNorm's output
            // through the residual.
            let (mut d_ln1_out, dw, db) = ln_grads(&s.ln2_in, w(LN2W), g);
            grads.extend([(LN2W, dw), (LN2B, db)]);
            let mut d_out = d_ln1_out.clone();
            maybe_dropout(&mut d_out, self.dropout.output);
            let mut d_gelu = vec![0f32; rows * inter];
            let (dw, db) =
                dense::backward(&d_out, &s.gelu, w(FW), (rows, inter, h), &mut d_gelu, false)?;
            grads.extend([(FW, dw), (FB, db)]);
            drop(d_out);
            through_gelu(&mut d_gelu, &s.pre_gelu);
            let (dw, db) = dense::backward(
                &d_gelu,
                &s.ln1_out,
                w(IW),
                (rows, h, inter),
                &mut d_ln1_out,
                true,
            )?;
            grads.extend([(IW, dw), (IB, db)]);
            drop(d_gelu);
            // First LayerNorm; its input's gradient also reaches x through the residual.
            let (mut dx, dw, db) = ln_grads(&s.ln1_in, w(LN1W), &d_ln1_out);
            grads.extend([(LN1W, dw), (LN1B, db)]);
            drop(d_ln1_out);
            let mut d_attn = dx.clone();
            maybe_dropout(&mut d_attn, self.dropout.attention_output);
            let mut d_context = vec![0f32; rows * h];
            let (dw, db) = dense::backward(
                &d_attn,
                &s.context,
                w(OW),
                (rows, h, h),
                &mut d_context,
                false,
            )?;
            grads.extend([(OW, dw), (OB, db)]);
            drop(d_attn);
            let (dq, dk, dv) = attention::backward(
                (&s.q, &s.k, &s.v),
                &d_context,
                &s.probs,
                &self.problem(batch, len, h),
            )?;
            for (d, (wi, bi)) in [(dq, (QW, QB)), (dk, (KW, KB)), (dv, (VW, VB))] {
                let (dw, db) = dense::backward(&d, xs, w(wi), (rows, h, h), &mut dx, true)?;
                grads.extend([(wi, dw), (bi, db)]);
            }
            if let Some(sink) = &self.sink {
                for (i, g) in grads {
                    let t = Tensor::from_vec(g, self.params[i].shape(), x.device())?;
                    sink.add(&format!("{}.{}", self.prefix, NAMES[i]), t)?;
                }
            }
            Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::roberta::{encode_with, LayerOps, Positions};
    use crate::rng::Rng;
    use crate::testing::{max_abs_diff, random_var, weighted_grads};
    use candle_core::Device;

    /// The whole-layer op against the same layers as separate ops, with dropout and padding:
    /// the same hidden states and the same gradient for every parameter.
    #[test]
    fn whole_layers_match_separate_ops_forward_and_backward() {
        let cfg = Config::new(40, 2, 32, 4, 48, 20, 0.1, Positions::Tss);
        let p = Params::init(&cfg, 3, &Device::Cpu).unwrap();
        let mut rng = Rng::new(8);
        let ids: Vec<Vec<u32>> = (0..3)
            .map(|r| {
                (0..20)
                    .map(|i| {
                        if r == 1 && i < 6 {
                            2
                        } else {
                            5 + rng.below(35) as u32
                        }
                    })
                    .collect()
            })
            .collect();
        let weights = random_var(&[3, 20, 32], 1.0, 9);
        let run = |ops: LayerOps| {
            let mut drng = Rng::new(5);
            let y = encode_with(&p, &cfg, &ids, Some(&mut drng), &Device::Cpu, ops).unwrap();
            let grads = p.grads(&weighted_grads(&y, weights.as_tensor()));
            (y, grads)
        };
        let (y1, g1) = run(LayerOps::Fastest);
        let (y2, g2) = run(LayerOps::Pieces);
        assert!(max_abs_diff(&y1, &y2) < 1e-5, "{}", max_abs_diff(&y1, &y2));
        let mut names: Vec<&String> = g2.keys().collect();
        names.sort();
        assert_eq!(g1.len(), g2.len());
        // Every parameter of both layers is among them.
        assert!(names.len() >= 2 * NAMES.len(), "{names:?}");
        for name in names {
            let (a, b) = (&g1[name], &g2[name]);
            let d = max_abs_diff(a, b);
            let scale = crate::testing::total(&b.abs().unwrap()).max(1e-3) / b.elem_count() as f64;
            assert!(d < 1e-4 + 1e-3 * scale, "{name}: gradient differs by {d}");
        }
        // The sink was emptied.
        assert!(p.sink.take().is_empty());
    }

    #[test]
    fn a_layer_that_does_not_fit_is_refused() {
        let cfg = Config::new(40, 1, 32, 4, 48, 8, 0.0, Positions::Tss);
        let p = Params::init(&cfg, 3, &Device::Cpu).unwrap();
        let x = random_var(&[1, 8, 16], 1.0, 1);
        let e = encoder_layer(
            &p,
            &cfg,
            0,
            x.as_tensor(),
            &[0.0; 8],
            LayerDropout::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not fit"), "{e}");
        let e = encoder_layer(
            &p,
            &cfg,
            3,
            x.as_tensor(),
            &[0.0; 8],
            LayerDropout::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no parameter roberta.encoder.layer.3"), "{e}");
    }
}
