//! Multi-head self-attention as one node of the autograd graph where it is not one op
//! (`attention.rs` is, for f32 on the CPU): on GPUs, and in mixed precision.
//!
//! Composed and recorded, attention is about twenty nodes per layer (three head splits with their
//! transposes and copies, the score product and its casts, the scale, the mask, softmax, dropout,
//! the context product and its casts, the merge of the heads), half of them the size of the
//! scores (batch x heads x len x len), and candle's backward pass zeroes and adds a gradient for
//! each. Attached (`attached.rs`), the forward pass runs the same ops on detached inputs and keeps
//! the heads and the probabilities; the backward pass is the four products, dropout's mask
//! (redrawn from its seed), and softmax's backward.

use candle_core::{DType, Result, Tensor, D};

use super::attached::attach3;
use super::layers::{dropout_with_seed, matmul, softmax};
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
    let (bsz, len, hidden) = q.dims3()?;
    let hd = hidden / heads;
    let scale = 1.0 / (hd as f64).sqrt();
    let split = move |t: &Tensor| -> Result<Tensor> {
        t.reshape((bsz, len, heads, hd))?
            .transpose(1, 2)?
            .contiguous()
    };
    let merge = move |t: &Tensor| -> Result<Tensor> {
        t.transpose(1, 2)?.contiguous()?.reshape((bsz, len, hidden))
    };
    let drop = move |t: &Tensor| -> Result<Tensor> {
        match dropout {
            Some((rate, seed)) => dropout_with_seed(t, rate, seed),
            None => Ok(t.clone()),
        }
    };
    let (qh, kh, vh) = (
        split(&q.detach())?,
        split(&k.detach())?,
        split(&v.detach())?,
    );
    let scores =
        (matmul(&qh, &kh.t()?.contiguous()?, compute)? * scale)?.broadcast_add(key_mask)?;
    let probs = softmax(&scores)?;
    let context = merge(&matmul(&drop(&probs)?, &vh, compute)?)?;
    let label = mirror();
    attach3([q, k, v], context, move |grad: &Tensor| {
        backward_region(&label, || {
            let g = split(grad)?;
            let dv = matmul(&drop(&probs)?.t()?.contiguous()?, &g, compute)?;
            let dp = drop(&matmul(&g, &vh.t()?.contiguous()?, compute)?)?;
            let ds = (softmax_backward(&probs, &dp)? * scale)?;
            let dq = matmul(&ds, &kh, compute)?;
            let dk = matmul(&ds.t()?.contiguous()?, &qh, compute)?;
            Ok([Some(merge(&dq)?), Some(merge(&dk)?), Some(merge(&dv)?)])
        })
    })
}

/// Softmax's input gradient from its output `y` and the output's gradient `g`: the fused op for
/// f32 on the CPU and on CUDA GPUs, candle's ops otherwise.
fn softmax_backward(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    if super::fused::applies(y) {
        return super::fused::softmax_grad(y, g);
    }
    y.mul(&g.broadcast_sub(&g.mul(y)?.sum_keepdim(D::Minus1)?)?)
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

    #[test]
    fn the_composed_softmax_backward_matches_the_fused_one() {
        let x = random_var(&[6, 13], 2.0, 5).as_tensor().detach();
        let g = random_var(&[6, 13], 1.0, 6).as_tensor().detach();
        let y = softmax(&x).unwrap();
        let fused = crate::model::fused::softmax_grad(&y, &g).unwrap();
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let composed = softmax_backward(&f64s(&y), &f64s(&g))
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert!(max_rel_diff(&fused, &composed) < 1e-6);
    }
}
