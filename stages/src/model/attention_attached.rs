//! Multi-head self-attention as one node of the autograd graph where it is not one op
//! (`attention.rs` is, for f32 on the CPU): on GPUs, and in mixed precision.
//!
//! Composed and recorded, attention is about twenty nodes per layer (three head splits with their
//! transposes and copies, the score product and its casts, the scale, the mask, softmax, dropout,
//! the context product and its casts, the merge of the heads), half of them the size of the
//! scores (batch x heads x len x len), and candle's backward pass zeroes and adds a gradient for
//! each. Attached (`attached.rs`), the forward pass is: each input's heads split out and cast to
//! the products' type in one copy, the score product, the probabilities and their dropped-out
//! copy in one pass (`attention_probs.rs`), the context product, and the heads merged back into
//! f32 in one copy. The scores and probabilities stay in the products' type (bf16 in mixed
//! precision) throughout; the products read transposed operands in place. The backward pass is
//! the four products, one pass for dropout's, softmax's and the scale's backward, and the merges.
//!
//! Inside the encoder layer that is one node (`encoder_layer_attached.rs`), q, k and v arrive
//! already split into heads by their projections' product (`qkv.rs`), and the context leaves in
//! the products' type for the output dense layer's product: [`attention_heads_forward`].

use candle_core::{DType, Result, Tensor};

use super::attached::attach3;
use super::attention_probs::{attention_probs, attention_probs_grad};
use super::dense_attached::Backward3;
use super::flash_attention::{flash_attention_backward, flash_attention_forward, FlashForward};
use super::layers::{contiguous_in, product};
use super::qkv::{merge_heads, split_heads};
use super::roberta::Attention;
use super::step_profile::{backward_region, mirror};

/// Attention of `q`, `k` and `v` (batch, len, hidden) over `heads` heads with the additive key
/// mask `key_mask` (batch, 1, 1, len), dropout at (rate, seed) on the probabilities, the products
/// in `compute`: the context (batch, len, hidden), f32.
pub fn attention_attached(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    key_mask: &Tensor,
    dropout: Option<(f32, u64)>,
    compute: DType,
) -> Result<Tensor> {
    let (context, backward) = attention_forward(
        &q.detach(),
        &k.detach(),
        &v.detach(),
        heads,
        key_mask,
        dropout,
        compute,
    )?;
    let label = mirror();
    attach3([q, k, v], context, move |grad: &Tensor| {
        backward_region(&label, || Ok(backward(grad)?.map(Some)))
    })
}

/// [`attention_attached`]'s forward pass on inputs that record nothing: the context, and the
/// function that gives (dq, dk, dv), f32, from its gradient.
pub(crate) fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    key_mask: &Tensor,
    dropout: Option<(f32, u64)>,
    compute: DType,
) -> Result<(Tensor, Backward3)> {
    let (qh, kh, vh) = (
        split(q, heads, compute)?,
        split(k, heads, compute)?,
        split(v, heads, compute)?,
    );
    let (context, backward) = attention_heads_forward(
        [&qh, &kh, &vh],
        key_mask,
        dropout,
        DType::F32,
        Attention::Products,
    )?;
    let backward = move |grad: &Tensor| -> Result<[Tensor; 3]> {
        let [dq, dk, dv] = backward(grad)?;
        Ok([
            merge(&dq, DType::F32)?,
            merge(&dk, DType::F32)?,
            merge(&dv, DType::F32)?,
        ])
    };
    Ok((context, Box::new(backward)))
}

/// (batch, len, hidden) into (batch, heads, len, head) in `dtype`, in one copy.
pub(crate) fn split(t: &Tensor, heads: usize, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        return split_heads(t, heads);
    }
    let (bsz, len, hidden) = t.dims3()?;
    contiguous_in(
        &t.reshape((bsz, len, heads, hidden / heads))?
            .transpose(1, 2)?,
        dtype,
    )
}

/// (batch, heads, len, head) into (batch, len, heads x head) in `dtype`, in one copy: [`split`]
/// undone.
fn merge(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        return merge_heads(t);
    }
    let (bsz, heads, len, hd) = t.dims4()?;
    contiguous_in(&t.transpose(1, 2)?, dtype)?.reshape((bsz, len, heads * hd))
}

/// Attention of q, k and v already split into heads (each (batch, heads, len, head), in the
/// products' type), with the additive key mask `key_mask` (batch, 1, 1, len) and dropout at
/// (rate, seed) on the probabilities: the context (batch, len, hidden) in `out` (f32, or the
/// products' type for a dense layer's product to read), and the function that gives the
/// gradients of q, k and v, in the heads layout and the products' type, from the context's
/// (of either type). With `kernel` [`Attention::Flash`], flash attention
/// (`flash_attention.rs`) computes both, which the caller has checked it takes.
pub(crate) fn attention_heads_forward(
    [qh, kh, vh]: [&Tensor; 3],
    key_mask: &Tensor,
    dropout: Option<(f32, u64)>,
    out: DType,
    kernel: Attention,
) -> Result<(Tensor, Backward3)> {
    let heads = qh.dim(1)?;
    let hd = qh.dim(3)?;
    let compute = qh.dtype();
    let scale = 1.0 / (hd as f32).sqrt();
    if kernel == Attention::Flash {
        return flash_heads_forward([qh, kh, vh], key_mask, dropout, out, scale);
    }
    let (qh, kh, vh) = (qh.clone(), kh.clone(), vh.clone());
    let scores = product(&qh, &kh.t()?)?;
    let probs = attention_probs(&scores, key_mask, scale, dropout)?;
    let dropped = probs.dropped()?;
    drop(scores);
    let context = merge(&product(&dropped, &vh)?, out)?;
    let backward = move |grad: &Tensor| -> Result<[Tensor; 3]> {
        let g = split(grad, heads, compute)?;
        let dv = product(&dropped.t()?, &g)?;
        let dp = product(&g, &vh.t()?)?;
        let rate = dropout.map_or(0.0, |(p, _)| p);
        let ds = attention_probs_grad(&probs, &dp, scale, rate)?;
        let dq = product(&ds, &kh)?;
        let dk = product(&ds.t()?, &qh)?;
        Ok([dq, dk, dv])
    };
    Ok((context, Box::new(backward)))
}

/// [`attention_heads_forward`] by flash attention.
fn flash_heads_forward(
    [qh, kh, vh]: [&Tensor; 3],
    key_mask: &Tensor,
    dropout: Option<(f32, u64)>,
    out: DType,
    scale: f32,
) -> Result<(Tensor, Backward3)> {
    let FlashForward { context, saved } =
        flash_attention_forward(qh, kh, vh, key_mask, scale, dropout)?;
    let context = context.to_dtype(out)?;
    let (qh, kh, vh, key_mask) = (qh.clone(), kh.clone(), vh.clone(), key_mask.clone());
    let backward = move |grad: &Tensor| -> Result<[Tensor; 3]> {
        flash_attention_backward(&qh, &kh, &vh, &saved, grad, &key_mask, scale, dropout)
    };
    Ok((context, Box::new(backward)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{composed_attention, max_rel_diff, random_var, weighted_grads};

    #[test]
    fn attached_attention_matches_its_recorded_ops_in_f32_and_bf16() {
        let (bsz, len, hidden, heads) = (3, 11, 16, 4);
        let q = random_var(&[bsz, len, hidden], 1.0, 1);
        let k = random_var(&[bsz, len, hidden], 1.0, 2);
        let v = random_var(&[bsz, len, hidden], 1.0, 3);
        let weights = random_var(&[bsz, len, hidden], 1.0, 4);
        // The last three keys of the second sequence are padding.
        let mask: Vec<f32> = (0..bsz * len)
            .map(|i| {
                if i / len == 1 && i % len >= 8 {
                    -1e9
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (bsz, 1, 1, len), &candle_core::Device::Cpu).unwrap();
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        for compute in [DType::F32, DType::BF16] {
            for dropout in [None, Some((0.2, 9))] {
                let ours = attention_attached(qt, kt, vt, heads, &mask, dropout, compute).unwrap();
                let theirs =
                    composed_attention([qt, kt, vt], heads, &mask, dropout, compute).unwrap();
                assert_eq!(ours.dims(), &[bsz, len, hidden]);
                let d = max_rel_diff(&ours, &theirs);
                assert!(d < 1e-6, "{compute:?} {dropout:?}: outputs differ by {d}");
                let (g1, g2) = (
                    weighted_grads(&ours, weights.as_tensor()),
                    weighted_grads(&theirs, weights.as_tensor()),
                );
                let tol = if compute == DType::F32 { 1e-5 } else { 2e-2 };
                for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                    let d = max_rel_diff(g1.get(x).unwrap(), g2.get(x).unwrap());
                    assert!(d < tol, "{compute:?} {dropout:?}: d{name} differs by {d}");
                }
            }
        }
    }
}
