//! The RoBERTa encoder's layers as one node of the autograd graph where a layer is not one op
//! (`encoder_layer.rs` is, for f32 on the CPU): on GPUs, and in mixed precision.
//!
//! candle's backward pass gives every input of every node a freshly zeroed gradient and adds the
//! incoming one to it: with each dense layer and attention attached (`dense_attached.rs`,
//! `attention_attached.rs`), a layer still had fifteen activation-sized gradient edges (the
//! residual adds', the LayerNorms', the feed-forward's 4x-wide one), each a zeroing and an
//! addition over the activations. Here the pieces run on inputs that record nothing, each
//! returning its backward pass as a function; a layer's backward pass calls the pieces' in
//! reverse, adds the residual gradients itself, and hands the sixteen parameters' gradients to
//! the model's [`GradSink`](super::roberta::GradSink), as the CPU's whole-layer op does. The
//! stack of layers is one node whose only input in the graph is the embeddings' output: its
//! backward pass runs the layers' in reverse, handing each one's input gradient to the next.
//!
//! Being one node also lets the pieces hand each other what they make in the form the next one
//! reads: q, k and v come from one product written straight into heads (`qkv.rs`); the context
//! and the gradients between products stay in the compute type; each residual add is one pass
//! with the bias and dropout of the dense layer before it and with its LayerNorm
//! (`residual_norm.rs`), whose backward pass writes that dense layer's gradient; and the residual
//! stream's two gradients meet inside LayerNorm's backward pass, within a layer and across the
//! boundary between layers (a layer's input gradient is handed down in its two parts). The
//! arithmetic is the pieces' but for the grouping of sums and, in bf16, where the input gradient
//! of q, k and v is rounded; a test checks the values and every gradient against the pieces.

use candle_core::{DType, Result, Tensor};

use super::attached::attach3;
use super::attention_attached::attention_heads_forward;
use super::dense::Epilogue;
use super::dense_attached::{dense_forward, dense_product, Backward3};
use super::encoder_layer::LayerDropout;
use super::fused::{layer_norm_backward_to, GradTo};
use super::gpu_ops::add_in_f32;
use super::mlm_positions::SlotIndex;
use super::qkv::qkv_forward;
use super::residual_norm::{residual_layer_norm, DenseOutput};
use super::roberta::{Attention, Config, Params};
use super::step_profile::{backward_region, mirror, region, ATTENTION, DENSE_RESIDUAL_LAYER_NORM};

/// A piece's backward pass and the step profile's label for it.
struct Step {
    backward: Backward3,
    label: Option<String>,
}

impl Step {
    fn run(&self, grad: &Tensor) -> Result<[Tensor; 3]> {
        backward_region(&self.label, || (self.backward)(grad))
    }
}

/// Runs a piece's forward pass as the profile region `label`: its output and its [`Step`].
fn piece(
    label: impl FnOnce() -> String,
    forward: impl FnOnce() -> Result<(Tensor, Backward3)>,
) -> Result<(Tensor, Step)> {
    region(label, || {
        let (y, backward) = forward()?;
        Ok((
            y,
            Step {
                backward,
                label: mirror(),
            },
        ))
    })
}

/// A layer's backward pass: its input's gradient from its output's, handing the layer's
/// parameters' gradients to the model's sink on the way.
type LayerBackward = Box<dyn Fn(&LayerGrad) -> Result<LayerGrad> + Send + Sync>;

/// The gradient of a layer's output (or input) in two parts that the next pass to read it adds
/// as it reads them (the LayerNorm's backward pass below it, `grad_plus` in `kernels.cu`),
/// rather than in a pass of their own: the residual stream's (f32) and, where there is one, the
/// one through q, k and v (in the compute type).
struct LayerGrad {
    residual: Tensor,
    through_qkv: Option<Tensor>,
}

impl LayerGrad {
    /// The two parts as one f32 tensor.
    fn total(self) -> Result<Tensor> {
        match self.through_qkv {
            Some(dx) => add_in_f32(&self.residual, &dx),
            None => Ok(self.residual),
        }
    }
}

/// The encoder's layers over hidden states `x` (batch, len, hidden), with the additive key mask
/// `key_mask` (batch, 1, 1, len) and each layer's dropouts, as one node of the autograd graph
/// whose backward pass runs the layers' backward passes in reverse, handing their parameters'
/// gradients to `p.sink`; for frozen weights (inference), the same forward pass recording
/// nothing. One node for the stack rather than one per layer spares each layer boundary
/// candle's zeroed gradient, its addition and the copy of the node's output.
///
/// The layers are `first`, `first + 1`, ... (one per entry of `dropouts`). With `at`, the last of
/// them runs its queries and everything after its attention at those slots alone
/// (`mlm_positions.rs`), and the output is (batch, slots, hidden).
pub(crate) fn encoder_attached(
    p: &Params,
    cfg: &Config,
    x: &Tensor,
    key_mask: &Tensor,
    dropouts: &[LayerDropout],
    first: usize,
    at: Option<&SlotIndex>,
) -> Result<Tensor> {
    let mut h = x.detach();
    let mut backwards = Vec::with_capacity(dropouts.len());
    for (i, &dropout) in dropouts.iter().enumerate() {
        let queries = at.filter(|_| i + 1 == dropouts.len());
        let layer = first + i;
        let (y, backward) = encoder_layer_forward(p, cfg, layer, &h, key_mask, dropout, queries)?;
        h = y;
        backwards.extend(backward);
    }
    if p.frozen {
        return Ok(h);
    }
    attach3([x, x, x], h, move |grad: &Tensor| {
        let mut g = LayerGrad {
            residual: grad.clone(),
            through_qkv: None,
        };
        for backward in backwards.iter().rev() {
            g = backward(&g)?;
        }
        Ok([Some(g.total()?), None, None])
    })
}

/// Encoder layer `layer` of `p` over detached hidden states `x` (batch, len, hidden), with the
/// additive key mask `key_mask` (batch, 1, 1, len) and the dropouts' seeds: its output, recording
/// nothing, and its backward pass (none for frozen weights). With `queries`, every position
/// gives its key and value but only the slots a query, and the output is theirs (batch, slots,
/// hidden).
fn encoder_layer_forward(
    p: &Params,
    cfg: &Config,
    layer: usize,
    xd: &Tensor,
    key_mask: &Tensor,
    dropout: LayerDropout,
    queries: Option<&SlotIndex>,
) -> Result<(Tensor, Option<LayerBackward>)> {
    let prefix = format!("roberta.encoder.layer.{layer}");
    let param = |n: &str| -> Result<Tensor> {
        let name = format!("{prefix}.{n}");
        p.tensor(&name).map(|t| t.detach()).ok_or_else(|| {
            candle_core::Error::Msg(format!("flora-encoder-layer: no parameter {name}"))
        })
    };
    let compute = p.compute;
    let eps = cfg.layer_norm_eps;
    let dense = |role: &'static str, input: &Tensor, epilogue: Epilogue, out: DType| {
        let w = param(&format!("{role}.weight"))?;
        let b = param(&format!("{role}.bias"))?;
        let label =
            || epilogue.forward_label(role, input.dims().last().copied().unwrap_or(0), w.dims()[0]);
        piece(label, || {
            dense_forward(input, &w, &b, epilogue, compute, out)
        })
    };
    // q, k and v: one product, written straight into the heads the attention reads.
    let [wq, wk, wv] = QKV.map(|role| param(&format!("{role}.weight")));
    let [bq, bk, bv] = QKV.map(|role| param(&format!("{role}.bias")));
    let (wq, wk, wv, bq, bk, bv) = (wq?, wk?, wv?, bq?, bk?, bv?);
    let hidden = cfg.hidden_size;
    let ([qh, kh, vh], qkv_backward, qkv_label) = region(
        || format!("forward: attention.self.query, key, value {hidden} -> 3 x {hidden}"),
        || {
            let heads = cfg.num_attention_heads;
            let (qkv, backward) =
                qkv_forward(xd, [&wq, &wk, &wv], [&bq, &bk, &bv], heads, compute)?;
            Ok((qkv, backward, mirror()))
        },
    )?;
    // At the slots alone: their queries, and their rows of the residual stream.
    let (qh, residual) = match queries {
        Some(at) => (at.gather_heads(&qh)?, at.gather(xd)?),
        None => (qh, xd.clone()),
    };
    // Flash attention's kernels take as many queries as keys; the products take any.
    let attention = match queries {
        Some(_) => Attention::Products,
        None => p.attention,
    };
    // The context stays in the compute type: only the output dense layer's product reads it.
    let (ctx, att_step) = piece(
        || ATTENTION.to_string(),
        || {
            let qkv = [&qh, &kh, &vh];
            attention_heads_forward(qkv, key_mask, dropout.attention, compute, attention)
        },
    )?;
    drop((qh, kh, vh));
    // The two dense layers before a residual sum leave their bias and dropout to the pass that
    // adds them to the residual stream and takes the LayerNorm (`residual_norm.rs`); in the
    // backward pass, that LayerNorm's writes their gradient through the same dropout.
    let product_piece = |role: &'static str, input: &Tensor| {
        let w = param(&format!("{role}.weight"))?;
        let b = param(&format!("{role}.bias"))?;
        let label = || {
            let inp = input.dims().last().copied().unwrap_or(0);
            format!(
                "{}, product",
                Epilogue::None.forward_label(role, inp, w.dims()[0])
            )
        };
        let (product, step) = piece(label, || dense_product(input, &w, compute))?;
        Ok::<_, candle_core::Error>((product, b, step))
    };
    // Adds a dense layer's product (its bias and dropout applied in the same pass) to the
    // residual stream `r` and takes LayerNorm `ln`: the sum, the output, the profile's label and
    // the LayerNorm's weight, which its backward pass reads.
    let residual_ln = |ln: &str, product: &Tensor, bias: &Tensor, dense_dropout, r: &Tensor| {
        let (w, b) = (
            param(&format!("{ln}.weight"))?,
            param(&format!("{ln}.bias"))?,
        );
        let dense = DenseOutput {
            product,
            bias,
            dropout: dense_dropout,
        };
        let (sum, out, label) = region(
            || DENSE_RESIDUAL_LAYER_NORM.to_string(),
            || {
                let (sum, out) = residual_layer_norm(dense, r, &w, &b, eps)?;
                Ok((sum, out, mirror()))
            },
        )?;
        Ok::<_, candle_core::Error>((sum, out, label, w))
    };
    let (a, ao_bias, ao_step) = product_piece("attention.output.dense", &ctx)?;
    drop(ctx);
    let ao_dropout = dropout.attention_output;
    let (r1, x1, ln1_label, ln1w) = residual_ln(
        "attention.output.LayerNorm",
        &a,
        &ao_bias,
        ao_dropout,
        &residual,
    )?;
    drop((residual, a));
    // The feed-forward's intermediate activation is read only by the next product: it stays in
    // the compute type (bf16 in mixed precision), and so does its gradient.
    let (h, i_step) = dense("intermediate.dense", &x1, Epilogue::Gelu, compute)?;
    let (o, o_bias, f_step) = product_piece("output.dense", &h)?;
    drop(h);
    let (r2, y, ln2_label, ln2w) =
        residual_ln("output.LayerNorm", &o, &o_bias, dropout.output, &x1)?;
    drop(o);
    if p.frozen {
        // Nothing will ask for gradients: the pieces' backward passes, and what they keep, go.
        return Ok((y, None));
    }
    let sink = p.sink.clone();
    let scatter = queries.cloned();
    let backward = move |grad: &LayerGrad| {
        let named = |n: &str| format!("{prefix}.{n}");
        let hand_in = |role: &str, [dw, db]: [Tensor; 2]| -> Result<()> {
            sink.add(&named(&format!("{role}.weight")), dw)?;
            sink.add(&named(&format!("{role}.bias")), db)
        };
        // Each LayerNorm's backward pass also writes the gradient before the dense layer that
        // fed its residual sum, through that layer's dropout, in the compute type.
        let to = |d: Option<(f32, u64)>| {
            let (p, seed) = d.unwrap_or((0.0, 0));
            GradTo {
                p,
                seed,
                dtype: compute,
            }
        };
        let ([dr2, dw, db], dz2) = backward_region(&ln2_label, || {
            let (g, through_qkv) = (&grad.residual, grad.through_qkv.as_ref());
            layer_norm_backward_to(&r2, &ln2w, g, through_qkv, eps, to(dropout.output))
        })?;
        hand_in("output.LayerNorm", [dw, db])?;
        let [dh, dw, db] = f_step.run(&dz2)?;
        drop(dz2);
        hand_in("output.dense", [dw, db])?;
        let [dx1, dw, db] = i_step.run(&dh)?;
        hand_in("intermediate.dense", [dw, db])?;
        // x1's two gradients, the residual's and the feed-forward's, meet inside LayerNorm's
        // backward pass.
        let ([dr1, dw, db], dz1) = backward_region(&ln1_label, || {
            layer_norm_backward_to(
                &r1,
                &ln1w,
                &dr2,
                Some(&dx1),
                eps,
                to(dropout.attention_output),
            )
        })?;
        hand_in("attention.output.LayerNorm", [dw, db])?;
        let [dctx, dw, db] = ao_step.run(&dz1)?;
        hand_in("attention.output.dense", [dw, db])?;
        let [dq, dk, dv] = att_step.run(&dctx)?;
        // From the slots back to every position: zero where no slot was.
        let (dq, dr1) = match &scatter {
            Some(at) => (at.scatter_heads(&dq)?, at.scatter(&dr1)?),
            None => (dq, dr1),
        };
        let (dx, dws, dbs) = backward_region(&qkv_label, || qkv_backward([&dq, &dk, &dv]))?;
        for ((role, dw), db) in QKV.into_iter().zip(dws).zip(dbs) {
            hand_in(role, [dw, db])?;
        }
        // The layer's input gradient stays in two parts for the LayerNorm below to add.
        Ok(LayerGrad {
            residual: dr1,
            through_qkv: Some(dx),
        })
    };
    Ok((y, Some(Box::new(backward))))
}

/// The attention's projections, by their names within a layer.
const QKV: [&str; 3] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
];

/// Whether [`encoder_layer_attached`] runs a layer of `p`: where the CPU's f32 whole-layer op
/// does not apply.
pub fn applies(x: &Tensor, p: &Params) -> bool {
    !(x.device().is_cpu() && p.compute == DType::F32)
}

#[cfg(test)]
mod tests {
    use crate::model::lamb::sum_of_squares;
    use crate::model::mlm_positions::MlmPositions;
    use crate::model::roberta::{
        encode_at, encode_layers, encode_with, mlm_loss, Attention, Config, LayerOps, Params,
        Positions,
    };
    use crate::rng::Rng;
    use crate::testing::max_abs_diff;
    use candle_core::{DType, Device};

    /// The same training step's loss and every gradient with each layer as one attached node and
    /// as separate attached pieces, in f32 and bf16, with dropout.
    #[test]
    fn whole_attached_layers_match_separate_pieces_forward_and_backward() {
        let cfg = Config::new(60, 2, 32, 4, 64, 24, 0.1, Positions::Tss);
        let mut rng = Rng::new(3);
        let ids: Vec<Vec<u32>> = (0..3)
            .map(|b| {
                (0..20)
                    .map(|t| {
                        if b == 1 && t >= 15 {
                            1
                        } else {
                            5 + rng.below(55) as u32
                        }
                    })
                    .collect()
            })
            .collect();
        let labels: Vec<i64> = (0..60).map(|i| if i % 4 == 0 { 7 } else { -1 }).collect();
        for compute in [DType::F32, DType::BF16] {
            let mut p = Params::init(&cfg, 1, &Device::Cpu).unwrap();
            p.compute = compute;
            let run = |ops: LayerOps| {
                let mut drng = Rng::new(11);
                let h = encode_with(&p, &cfg, &ids, Some(&mut drng), &Device::Cpu, ops).unwrap();
                let (loss, _, _) = mlm_loss(&p, &cfg, &h, &labels).unwrap();
                let store = loss.backward().unwrap();
                (loss.to_scalar::<f32>().unwrap(), p.grads(&store))
            };
            let (l_whole, g_whole) = run(LayerOps::Attached);
            let (l_parts, g_parts) = run(LayerOps::Pieces);
            // In f32 the same arithmetic, but for the grouping of sums (the residual gradients;
            // q, k and v's input gradients as one product). bf16 rounds that one product's input
            // gradient once where three products rounded theirs, and the difference carries into
            // the layers below.
            let tol = if compute == DType::F32 { 1e-5 } else { 5e-3 };
            assert!(
                (l_whole - l_parts).abs() < 1e-5,
                "{compute:?}: {l_whole} vs {l_parts}"
            );
            assert_eq!(
                g_whole.len(),
                g_parts.len(),
                "{compute:?}: a parameter lost its gradient"
            );
            let mut worst = 0f64;
            for (name, g) in &g_parts {
                // The key bias's gradient is zero but for rounding (softmax ignores a shift of a
                // row's scores), so its differences are measured against a floor.
                let scale = max_abs_diff(g, &g.zeros_like().unwrap()).max(1e-3);
                let d = max_abs_diff(&g_whole[name], g) / scale;
                worst = worst.max(d);
                assert!(d < tol, "{compute:?} {name}: gradients differ by {d}");
            }
            eprintln!("{compute:?}: largest difference {worst:.2e} of a gradient's scale");
        }
    }

    /// A bf16 training step with flash attention in the attached layers: the loss and every
    /// gradient of the products path, up to bf16 rounding (flash attention keeps the scores in
    /// f32 where the products round them to bf16), with dropout on the probabilities.
    #[test]
    fn flash_attention_trains_as_the_products_do() {
        let cfg = Config::new(60, 2, 32, 2, 64, 24, 0.1, Positions::Tss);
        let ids: Vec<Vec<u32>> = (0..3u32)
            .map(|b| {
                (0..20u32)
                    .map(|t| {
                        if b == 1 && t >= 15 {
                            1
                        } else {
                            5 + (b * 17 + t * 11) % 55
                        }
                    })
                    .collect()
            })
            .collect();
        let labels: Vec<i64> = (0..60).map(|i| if i % 4 == 0 { 7 } else { -1 }).collect();
        let mut p = Params::init(&cfg, 2, &Device::Cpu).unwrap();
        p.compute = DType::BF16;
        let mut run = |attention: Attention| {
            p.attention = attention;
            let mut drng = Rng::new(11);
            let h = encode_with(
                &p,
                &cfg,
                &ids,
                Some(&mut drng),
                &Device::Cpu,
                LayerOps::Attached,
            )
            .unwrap();
            let (loss, _, _) = mlm_loss(&p, &cfg, &h, &labels).unwrap();
            let store = loss.backward().unwrap();
            (loss.to_scalar::<f32>().unwrap(), p.grads(&store))
        };
        let (l_products, g_products) = run(Attention::Products);
        let (l_flash, g_flash) = run(Attention::Flash);
        assert!(
            (l_flash - l_products).abs() < 1e-2,
            "losses {l_flash} (flash) and {l_products} (products)"
        );
        assert_eq!(
            g_flash.len(),
            g_products.len(),
            "a parameter lost its gradient"
        );
        let mut worst = 0f64;
        for (name, g) in &g_products {
            let scale = max_abs_diff(g, &g.zeros_like().unwrap()).max(1e-3);
            let d = max_abs_diff(&g_flash[name], g) / scale;
            worst = worst.max(d);
            assert!(d < 5e-2, "{name}: gradients differ by {d} of their scale");
        }
        eprintln!("flash against products: losses {l_flash} and {l_products}, largest gradient difference {worst:.2e} of a gradient's scale");
    }

    /// The last layer run at the labelled positions gives the loss and every gradient of the
    /// whole last layer (without dropout), however the layers run: attached in f32 and bf16, and
    /// the CPU's one-op layers with the last one attached. The sequences have different numbers
    /// of labels (padding slots), one has padding tokens and one has no label at all.
    #[test]
    fn the_last_layer_at_the_masked_positions_gives_the_whole_layers_loss_and_gradients() {
        let cfg = Config::new(60, 3, 32, 4, 64, 24, 0.0, Positions::Tss);
        let (batch, len) = (4, 20);
        let ids: Vec<Vec<u32>> = (0..batch as u32)
            .map(|b| {
                (0..len as u32)
                    .map(|t| {
                        if b == 1 && t >= 15 {
                            1
                        } else {
                            5 + (b * 19 + t * 7) % 55
                        }
                    })
                    .collect()
            })
            .collect();
        let picked: [&[usize]; 4] = [&[1, 4, 9], &[2], &[], &[3, 5, 7, 11, 19]];
        let mut labels = vec![-1i64; batch * len];
        for (b, positions) in picked.iter().enumerate() {
            for &t in *positions {
                labels[b * len + t] = 5 + (t as i64 * 3) % 50;
            }
        }
        let at = MlmPositions::from_labels(&labels, batch, len).unwrap();
        assert_eq!(at.slots(), 5);
        for (compute, ops) in [
            (DType::F32, LayerOps::Attached),
            (DType::BF16, LayerOps::Attached),
            (DType::F32, LayerOps::Fastest),
        ] {
            let mut p = Params::init(&cfg, 5, &Device::Cpu).unwrap();
            p.compute = compute;
            sharpen_attention(&p);
            let run = |masked: bool| {
                let mut drng = Rng::new(11);
                let dev = &Device::Cpu;
                let (h, labels) = if masked {
                    let h = encode_layers(&p, &cfg, &ids, Some(&mut drng), dev, ops, Some(&at));
                    (h.unwrap(), at.labels())
                } else {
                    let h = encode_with(&p, &cfg, &ids, Some(&mut drng), dev, ops);
                    (h.unwrap(), &labels[..])
                };
                let (loss, correct, n) = mlm_loss(&p, &cfg, &h, labels).unwrap();
                let store = loss.backward().unwrap();
                let correct = correct.to_scalar::<f32>().unwrap();
                (
                    loss.to_scalar::<f32>().unwrap(),
                    correct,
                    n,
                    p.grads(&store),
                )
            };
            let (l_at, c_at, n_at, g_at) = run(true);
            let (l_all, c_all, n_all, g_all) = run(false);
            let case = format!("{compute:?} {ops:?}");
            assert_eq!((n_at, c_at), (n_all, c_all), "{case}: labelled, correct");
            assert!(
                (l_at - l_all).abs() < 1e-5,
                "{case}: loss {l_at} vs {l_all}"
            );
            assert_eq!(
                g_at.len(),
                g_all.len(),
                "{case}: a parameter lost its gradient"
            );
            let tol = if compute == DType::F32 { 1e-5 } else { 1e-3 };
            let mut worst = 0f64;
            for (name, g) in &g_all {
                let scale = max_abs_diff(g, &g.zeros_like().unwrap()).max(1e-3);
                let d = max_abs_diff(&g_at[name], g) / scale;
                worst = worst.max(d);
                assert!(
                    d < tol,
                    "{case} {name}: gradients differ by {d} of their scale"
                );
            }
            eprintln!("{case}: largest difference {worst:.2e} of a gradient's scale");
        }
        // Frozen weights: the slots' rows of the whole encoder's hidden states.
        let mut p = Params::init(&cfg, 5, &Device::Cpu).unwrap();
        p.frozen = true;
        sharpen_attention(&p);
        let dev = &Device::Cpu;
        let ours = encode_layers(&p, &cfg, &ids, None, dev, LayerOps::Fastest, Some(&at)).unwrap();
        let all = encode_with(&p, &cfg, &ids, None, dev, LayerOps::Fastest).unwrap();
        let theirs = at.index(4, dev).unwrap().gather(&all).unwrap();
        assert!(!ours.track_op(), "inference recorded a graph");
        let d = max_abs_diff(&ours, &theirs);
        assert!(d < 1e-5, "frozen: hidden states differ by {d}");
    }

    /// A model without encoder layers has no last layer to run at the slots: the loss reads the
    /// embeddings' rows there, the loss of every position's; and labels that do not match the
    /// hidden states are refused rather than read at the wrong rows.
    #[test]
    fn a_model_without_layers_reads_the_embeddings_at_the_masked_positions() {
        let cfg = Config::new(60, 0, 32, 4, 64, 24, 0.0, Positions::Tss);
        let ids: Vec<Vec<u32>> = (0..2u32)
            .map(|b| (0..10u32).map(|t| 5 + (b * 7 + t * 3) % 55).collect())
            .collect();
        let labels: Vec<i64> = (0..20).map(|i| if i % 3 == 1 { 8 } else { -1 }).collect();
        let at = MlmPositions::from_labels(&labels, 2, 10).unwrap();
        let p = Params::init(&cfg, 7, &Device::Cpu).unwrap();
        let dev = &Device::Cpu;
        let h_at = encode_at(&p, &cfg, &ids, &at, None, dev).unwrap();
        let h_all = encode_with(&p, &cfg, &ids, None, dev, LayerOps::Fastest).unwrap();
        let (l_at, _, n_at) = mlm_loss(&p, &cfg, &h_at, at.labels()).unwrap();
        let (l_all, _, n_all) = mlm_loss(&p, &cfg, &h_all, &labels).unwrap();
        assert_eq!((n_at, n_all), (7, 7));
        let (l_at, l_all) = (
            l_at.to_scalar::<f32>().unwrap(),
            l_all.to_scalar::<f32>().unwrap(),
        );
        assert!((l_at - l_all).abs() < 1e-6, "loss {l_at} vs {l_all}");
        let e = mlm_loss(&p, &cfg, &h_all, at.labels()).unwrap_err();
        assert!(
            e.to_string()
                .contains("8 labels for hidden states of 2 x 10 positions"),
            "{e}"
        );
    }

    /// Scales the query and key weights of `p` up, so that attention at initialisation is no
    /// longer nearly uniform over the keys and a query at a wrong position shows in the loss.
    fn sharpen_attention(p: &Params) {
        for (name, var) in &p.vars {
            if name.ends_with("query.weight") || name.ends_with("key.weight") {
                var.set(&(var.as_tensor() * 12.0).unwrap()).unwrap();
            }
        }
    }

    /// With dropout, the last layer at the labelled positions draws its masks over its own
    /// shapes: another draw, so another loss, but every parameter's gradient, finite.
    #[test]
    fn the_last_layer_at_the_masked_positions_trains_with_dropout() {
        let cfg = Config::new(60, 2, 32, 4, 64, 24, 0.1, Positions::Tss);
        let ids: Vec<Vec<u32>> = (0..3u32)
            .map(|b| (0..16u32).map(|t| 5 + (b * 11 + t * 5) % 55).collect())
            .collect();
        let labels: Vec<i64> = (0..48).map(|i| if i % 5 == 1 { 9 } else { -1 }).collect();
        let at = MlmPositions::from_labels(&labels, 3, 16).unwrap();
        for compute in [DType::F32, DType::BF16] {
            let mut p = Params::init(&cfg, 6, &Device::Cpu).unwrap();
            p.compute = compute;
            let mut drng = Rng::new(2);
            let h = encode_at(&p, &cfg, &ids, &at, Some(&mut drng), &Device::Cpu).unwrap();
            let (loss, _, n) = mlm_loss(&p, &cfg, &h, at.labels()).unwrap();
            assert_eq!(n, 10);
            let grads = p.grads(&loss.backward().unwrap());
            assert_eq!(grads.len(), cfg.parameters().len(), "{compute:?}");
            for (name, g) in &grads {
                let sum = sum_of_squares(g).unwrap().to_scalar::<f32>().unwrap();
                assert!(sum.is_finite(), "{compute:?} {name}: {sum}");
            }
            assert!(loss.to_scalar::<f32>().unwrap().is_finite());
        }
    }

    /// Frozen weights (inference) run the attached layer's forward pass alone: the hidden states
    /// of the separate pieces, with nothing recorded for backpropagation.
    #[test]
    fn frozen_weights_run_the_same_forward_pass_recording_nothing() {
        let cfg = Config::new(60, 2, 32, 4, 64, 24, 0.1, Positions::Tss);
        let ids: Vec<Vec<u32>> = (0..3u32)
            .map(|b| {
                (0..20u32)
                    .map(|t| {
                        if b == 2 && t < 6 {
                            1
                        } else {
                            5 + (b * 13 + t * 7) % 55
                        }
                    })
                    .collect()
            })
            .collect();
        for compute in [DType::F32, DType::BF16] {
            let mut p = Params::init(&cfg, 4, &Device::Cpu).unwrap();
            p.compute = compute;
            p.frozen = true;
            let run = |ops| encode_with(&p, &cfg, &ids, None, &Device::Cpu, ops).unwrap();
            let (ours, pieces) = (run(LayerOps::Attached), run(LayerOps::Pieces));
            assert!(!ours.track_op(), "{compute:?}: inference recorded a graph");
            let d = max_abs_diff(&ours, &pieces);
            assert!(d < 1e-5, "{compute:?}: hidden states differ by {d}");
        }
    }
}
