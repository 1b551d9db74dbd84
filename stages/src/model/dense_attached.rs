//! A dense layer, x Wᵀ + b with its epilogue (GELU or dropout), as one node of the autograd graph
//! where it is not one op (`dense.rs` is, for f32 on the CPU): on GPUs, and in mixed precision.
//!
//! The forward pass casts x and W to the compute type (kept for the backward pass), takes their
//! product in that type, and adds the bias and applies the epilogue in one pass that writes the f32
//! output (`dense_epilogue.rs`). Composed and recorded, the same layer was about eight nodes
//! (reshape, two casts, product, cast, bias add, epilogue, reshape), and candle's backward pass
//! zeroes and adds a gradient for each. Attached (`attached.rs`), the backward pass is only what
//! the gradients need: the epilogue's backward straight into the compute type (GELU's from the
//! kept product and the bias), dx = g W and dW = gᵀ x as products in that type, and db as column
//! sums.

use candle_core::{DType, Result, Tensor};

use super::attached::attach3;
use super::dense::Epilogue;
use super::dense_epilogue::{bias_epilogue, bias_gelu_grad, dropout_to};
use super::layers::{contiguous_in, product};
use super::step_profile::{backward_region, mirror};

/// The gradients of a layer's inputs from its output's gradient, in order.
pub type Backward3 = Box<dyn Fn(&Tensor) -> Result<[Tensor; 3]> + Send + Sync>;

/// `x` (batch, len, in) times the transpose of `w` (out, in), plus `b` (out), then `epilogue`:
/// (batch, len, out) in f32, the products in `compute`.
pub fn dense_attached(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    epilogue: Epilogue,
    compute: DType,
) -> Result<Tensor> {
    let (xd, wd, bd) = (x.detach(), w.detach(), b.detach());
    let (y, backward) = dense_forward(&xd, &wd, &bd, epilogue, compute, DType::F32)?;
    let label = mirror();
    let x_dtype = x.dtype();
    attach3([x, w, b], y, move |grad: &Tensor| {
        backward_region(&label, || {
            let [dx, dw, db] = backward(grad)?;
            Ok([Some(dx.to_dtype(x_dtype)?), Some(dw), Some(db)])
        })
    })
}

/// [`dense_attached`]'s forward pass on inputs that record nothing, with the output in `out`
/// (f32; or the compute type, for an output that only the next product reads): the output, and
/// the function that gives (dx, dW, db) from the output's gradient (dx in the compute type, for
/// whichever pass reads it next to take as it is; dW and db f32).
pub(crate) fn dense_forward(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    epilogue: Epilogue,
    compute: DType,
    out_dtype: DType,
) -> Result<(Tensor, Backward3)> {
    let (xw, product_backward) = dense_product(x, w, compute)?;
    let bd = b.clone();
    let y = bias_epilogue(&xw, &bd, epilogue, out_dtype)?;
    // GELU's backward pass recomputes its input from the product; the others need nothing of it.
    let kept = (epilogue == Epilogue::Gelu).then_some(xw);
    let backward = move |grad: &Tensor| -> Result<[Tensor; 3]> {
        let dz = match (epilogue, &kept) {
            (Epilogue::Gelu, Some(xw)) => bias_gelu_grad(xw, &bd, &grad.contiguous()?)?,
            (Epilogue::Dropout { rate, seed }, _) => dropout_to(grad, Some((rate, seed)), compute)?,
            _ => dropout_to(grad, None, compute)?,
        };
        product_backward(&dz)
    };
    Ok((y, Box::new(backward)))
}

/// The product of [`dense_forward`] alone, for a pass that applies the bias and what follows it
/// itself (`residual_norm.rs`): `x` (batch, len, in) times the transpose of `w` (out, in) in
/// `compute`, as (batch, len, out); and the function that gives (dx, dW, db) from dz, the
/// gradient of the product plus the bias, in `compute` (dx (batch, len, in) in `compute`, dW and
/// db f32).
pub(crate) fn dense_product(x: &Tensor, w: &Tensor, compute: DType) -> Result<(Tensor, Backward3)> {
    let (bsz, len, inp) = x.dims3()?;
    let out = w.dim(0)?;
    let rows = bsz * len;
    let xc = contiguous_in(&x.reshape((rows, inp))?, compute)?;
    let wc = contiguous_in(w, compute)?;
    let xw = product(&xc, &wc.t()?)?.reshape((bsz, len, out))?;
    let backward = move |dz: &Tensor| -> Result<[Tensor; 3]> {
        let dz = dz.reshape((rows, out))?;
        let dx = product(&dz, &wc)?.reshape((bsz, len, inp))?;
        let dw = product(&dz.t()?, &xc)?.to_dtype(DType::F32)?;
        let db = super::gpu_ops::column_sums(&dz)?;
        Ok([dx, dw, db])
    };
    Ok((xw, Box::new(backward)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::{bias_add, dropout_with_seed, gelu, matmul};
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
}
