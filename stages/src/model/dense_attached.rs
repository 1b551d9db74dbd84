//! A dense layer, x Wᵀ + b with its epilogue (GELU or dropout), as one node of the autograd graph
//! where it is not one op (`dense.rs` is, for f32 on the CPU): on GPUs, and in mixed precision.
//!
//! The forward pass is the layer's ops on detached inputs: the product in the compute type
//! (operands cast, result back in f32), the bias add, the epilogue. Composed and recorded, the
//! same layer is about eight nodes (reshape, two casts, product, cast, bias add, epilogue,
//! reshape), and candle's backward pass zeroes and adds a gradient for each. Attached
//! (`attached.rs`), the backward pass is only what the gradients need: the epilogue's backward,
//! dx = g W and dW = gᵀ x as products in the compute type, and db as column sums.

use candle_core::{DType, Result, Tensor};

use super::attached::attach3;
use super::dense::Epilogue;
use super::layers::{bias_add, dropout_with_seed, gelu, matmul};
use super::step_profile::{backward_region, mirror};

/// `x` (batch, len, in) times the transpose of `w` (out, in), plus `b` (out), then `epilogue`:
/// (batch, len, out) in f32, the products in `compute`.
pub fn dense_attached(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    epilogue: Epilogue,
    compute: DType,
) -> Result<Tensor> {
    let (bsz, len, inp) = x.dims3()?;
    let out = w.dim(0)?;
    let rows = bsz * len;
    let (x2, wd) = (x.detach().reshape((rows, inp))?, w.detach());
    let z = bias_add(&matmul(&x2, &wd.t()?, compute)?, &b.detach())?;
    let (y, pre_activation) = match epilogue {
        Epilogue::None => (z, None),
        Epilogue::Gelu => (gelu(&z)?, Some(z)),
        Epilogue::Dropout { rate, seed } => (dropout_with_seed(&z, rate, seed)?, None),
    };
    let y = y.reshape((bsz, len, out))?;
    let label = mirror();
    attach3([x, w, b], y, move |grad: &Tensor| {
        backward_region(&label, || {
            let g = grad.reshape((rows, out))?;
            let g = match (epilogue, &pre_activation) {
                (Epilogue::Gelu, Some(z)) => gelu_backward(z, &g)?,
                (Epilogue::Dropout { rate, seed }, _) => dropout_with_seed(&g, rate, seed)?,
                _ => g,
            };
            let dx = matmul(&g, &wd, compute)?.reshape((bsz, len, inp))?;
            let dw = matmul(&g.t()?, &x2, compute)?;
            let db = super::gpu_ops::column_sums(&g)?;
            Ok([Some(dx), Some(dw), Some(db)])
        })
    })
}

/// `g` x GELU'(`z`): the fused op for f32 on the CPU and on CUDA GPUs, candle's ops otherwise
/// (GELU'(z) = Φ(z) + z φ(z)).
fn gelu_backward(z: &Tensor, g: &Tensor) -> Result<Tensor> {
    if super::fused::applies(z) {
        return super::fused::gelu_grad(z, g);
    }
    let cdf = ((z / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
    let pdf = (z.sqr()? * -0.5)?.exp()? * (1.0 / (2.0 * std::f64::consts::PI).sqrt());
    g.mul(&(cdf? + z.mul(&pdf?)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_diff, random_var, weighted_grads};

    /// The layer composed of recorded ops, as `roberta.rs` ran it before.
    fn composed(x: &Tensor, w: &Tensor, b: &Tensor, epilogue: Epilogue, compute: DType) -> Tensor {
        let (bsz, len, inp) = x.dims3().unwrap();
        let z = bias_add(
            &matmul(
                &x.reshape((bsz * len, inp)).unwrap(),
                &w.t().unwrap(),
                compute,
            )
            .unwrap(),
            b,
        )
        .unwrap()
        .reshape((bsz, len, w.dim(0).unwrap()))
        .unwrap();
        match epilogue {
            Epilogue::None => z,
            Epilogue::Gelu => gelu(&z).unwrap(),
            Epilogue::Dropout { rate, seed } => dropout_with_seed(&z, rate, seed).unwrap(),
        }
    }

    #[test]
    fn the_attached_layer_matches_its_recorded_ops_in_f32_and_bf16() {
        let x = random_var(&[3, 70, 12], 1.0, 1);
        let w = random_var(&[9, 12], 1.0, 2);
        let b = random_var(&[9], 1.0, 3);
        let weights = random_var(&[3, 70, 9], 1.0, 4);
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let epilogues = [
            Epilogue::None,
            Epilogue::Gelu,
            Epilogue::Dropout {
                rate: 0.3,
                seed: 11,
            },
        ];
        for compute in [DType::F32, DType::BF16] {
            for epilogue in epilogues {
                let ours = dense_attached(xt, wt, bt, epilogue, compute).unwrap();
                let theirs = composed(xt, wt, bt, epilogue, compute);
                assert_eq!(ours.dims(), &[3, 70, 9]);
                assert_eq!(ours.dtype(), DType::F32);
                let d = max_rel_diff(&ours, &theirs);
                assert!(d < 1e-6, "{compute:?} {epilogue:?}: outputs differ by {d}");
                let (g1, g2) = (
                    weighted_grads(&ours, weights.as_tensor()),
                    weighted_grads(&theirs, weights.as_tensor()),
                );
                // bf16 rounds the gradient before the products here, as the recorded casts did.
                let tol = if compute == DType::F32 { 1e-5 } else { 1e-2 };
                for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                    let d = max_rel_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                    assert!(d < tol, "{compute:?} {epilogue:?}: d{name} differs by {d}");
                }
            }
        }
    }

    #[test]
    fn the_composed_gelu_backward_matches_the_fused_one() {
        let z = random_var(&[50, 7], 2.0, 5).as_tensor().detach();
        let g = random_var(&[50, 7], 1.0, 6).as_tensor().detach();
        let fused = super::super::fused::gelu_grad(&z, &g).unwrap();
        let composed = gelu_backward(
            &z.to_dtype(DType::F64).unwrap(),
            &g.to_dtype(DType::F64).unwrap(),
        )
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
        assert!(max_rel_diff(&fused, &composed) < 1e-5);
    }
}
