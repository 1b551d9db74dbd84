//! A dense layer's output added to the residual stream, and the LayerNorm after it, as one pass,
//! for the encoder layer that is one autograd node (`encoder_layer_attached.rs`): the layer's
//! product (in the products' type) plus its bias, through its dropout, plus the residual r; the
//! sum, kept as the LayerNorm's input for its backward pass, and its LayerNorm. Separately they
//! were the dense layer's epilogue (the product read, the f32 output written), candle's add (two
//! reads, one write) and the LayerNorm (one read back, one write). On a CUDA GPU the pass is
//! `kernels.cu`'s `bias_dropout_add_ln_*`; on the CPU its twin, the dense epilogue's
//! (`dense_epilogue::bias_epilogue_from`), the sum, then `fused::layer_norm_rows`.
//!
//! The backward pass is `fused::layer_norm_backward_to`: LayerNorm's, adding the residual
//! stream's second gradient as it reads the first, and writing the dense layer's gradient
//! through the same dropout, in the products' type, beside its own.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};

use super::attention_probs::Elem;
use super::dense::Epilogue;
use super::dense_epilogue::bias_epilogue_from;
use super::fused::{data, elems, hold, layer_norm_rows};

/// What a dense layer adds to the residual stream, before its bias and dropout.
#[derive(Clone, Copy)]
pub struct DenseOutput<'a> {
    /// The layer's product x Wᵀ (.., n), f32 or bf16.
    pub product: &'a Tensor,
    /// The layer's bias (n), f32.
    pub bias: &'a Tensor,
    /// Inverted dropout's (rate, seed) after the bias, if any.
    pub dropout: Option<(f32, u64)>,
}

/// The residual sum of `dense`'s output and `r` ((.., n), f32), and its LayerNorm with `weight`
/// and `bias` (each (n), f32): (sum, normed), f32. Records no gradient.
pub fn residual_layer_norm(
    dense: DenseOutput<'_>,
    r: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let y = dense.product;
    let n = y.dims().last().copied().unwrap_or(0);
    let f32s = [r, dense.bias, weight, bias]
        .iter()
        .all(|t| t.dtype() == DType::F32);
    let product_type = matches!(y.dtype(), DType::F32 | DType::BF16);
    let vectors = [dense.bias, weight, bias].iter().all(|t| t.dims() == [n]);
    if r.dims() != y.dims() || !vectors || !f32s || !product_type {
        candle_core::bail!(
            "flora-residual-layer-norm: a product {:?} {:?}, its bias {:?} {:?}, r {:?} {:?}, \
             weight {:?} and bias {:?} are not an f32 or bf16 product, an f32 residual of its \
             shape, and f32 biases and weight of its last dimension",
            y.dims(),
            y.dtype(),
            dense.bias.dims(),
            dense.bias.dtype(),
            r.dims(),
            r.dtype(),
            weight.dims(),
            bias.dims()
        );
    }
    let op = ResidualLayerNorm {
        eps,
        dropout: dense.dropout.filter(|&(p, _)| p > 0.0),
        dense_bias: dense.bias.contiguous()?,
        bias: bias.contiguous()?,
    };
    let packed = y
        .contiguous()?
        .apply_op3_no_bwd(&r.contiguous()?, &weight.contiguous()?, &op)?;
    Ok((packed.get(0)?, packed.get(1)?))
}

/// A custom op has three inputs: the two biases ride along.
struct ResidualLayerNorm {
    eps: f64,
    dropout: Option<(f32, u64)>,
    dense_bias: Tensor,
    bias: Tensor,
}

impl ResidualLayerNorm {
    /// The dense layer's output, f32: its epilogue on the CPU.
    fn dense_output<T: Elem + WithDType>(&self, s: &CpuStorage, l: &Layout) -> Result<Vec<f32>> {
        let product = elems::<T>(s, l, self.name())?;
        let bias = hold(&self.dense_bias, self.name())?;
        let epilogue = match self.dropout {
            Some((rate, seed)) => Epilogue::Dropout { rate, seed },
            None => Epilogue::None,
        };
        let mut y = vec![0f32; product.len()];
        bias_epilogue_from(product, bias.slice(), epilogue, 0, &mut y);
        Ok(y)
    }
}

impl CustomOp3 for ResidualLayerNorm {
    fn name(&self) -> &'static str {
        "flora-residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let mut sum = match s1 {
            CpuStorage::BF16(_) => self.dense_output::<half::bf16>(s1, l1)?,
            _ => self.dense_output::<f32>(s1, l1)?,
        };
        let r = data(s2, l2, self.name())?;
        let w = data(s3, l3, self.name())?;
        let bias = hold(&self.bias, self.name())?;
        sum.iter_mut().zip(r).for_each(|(y, r)| *y += r);
        let normed = layer_norm_rows(&sum, w, bias.slice(), self.eps);
        let mut packed = sum;
        packed.extend_from_slice(&normed);
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((CpuStorage::F32(packed), Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (dense_guard, dl) = self.dense_bias.storage_and_layout();
        let (guard, bl) = self.bias.storage_and_layout();
        let (candle_core::Storage::Cuda(ds), candle_core::Storage::Cuda(bs)) =
            (&*dense_guard, &*guard)
        else {
            candle_core::bail!("{}: the biases are not on the GPU", self.name())
        };
        super::fused_cuda::residual_layer_norm(
            (s1, l1),
            [(ds, dl), (s2, l2), (s3, l3), (bs, bl)],
            self.dropout.unwrap_or((0.0, 0)),
            self.eps,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dense_epilogue::{bias_epilogue, dropout_to};
    use crate::model::fused::{
        layer_norm, layer_norm_backward, layer_norm_backward_plus, layer_norm_backward_to, GradTo,
    };
    use crate::testing::{max_rel_diff, random_var};

    fn detached(dims: &[usize], scale: f32, seed: u64) -> Tensor {
        random_var(dims, scale, seed).as_tensor().detach()
    }

    /// The fused pass against the dense epilogue, candle's add and LayerNorm, for f32 and bf16
    /// products, with and without dropout: the sums bit for bit.
    #[test]
    fn the_fused_pass_matches_the_epilogue_an_add_then_layer_norm() {
        let product = detached(&[4, 6, 40], 1.0, 1);
        let dense_bias = detached(&[40], 1.0, 9);
        let r = detached(&[4, 6, 40], 2.0, 2);
        let w = detached(&[40], 1.0, 3);
        let b = detached(&[40], 1.0, 4);
        for dtype in [DType::F32, DType::BF16] {
            let product = product.to_dtype(dtype).unwrap();
            for dropout in [None, Some((0.3, 17))] {
                let dense = DenseOutput {
                    product: &product,
                    bias: &dense_bias,
                    dropout,
                };
                let (sum, normed) = residual_layer_norm(dense, &r, &w, &b, 1e-5).unwrap();
                let epilogue = match dropout {
                    Some((rate, seed)) => Epilogue::Dropout { rate, seed },
                    None => Epilogue::None,
                };
                let y = bias_epilogue(&product, &dense_bias, epilogue, DType::F32).unwrap();
                let want_sum = (&y + &r).unwrap();
                assert_eq!(max_rel_diff(&sum, &want_sum), 0.0, "{dtype:?} {dropout:?}");
                let want = layer_norm(&want_sum, &w, &b, 1e-5).unwrap();
                assert!(max_rel_diff(&normed, &want) < 1e-6, "{dtype:?} {dropout:?}");
            }
        }
    }

    #[test]
    fn a_second_gradient_is_added_as_the_backward_pass_reads_the_first() {
        let x = detached(&[5, 7, 24], 1.5, 5);
        let w = detached(&[24], 1.0, 6);
        let g = detached(&[5, 7, 24], 1.0, 7);
        let extra = detached(&[5, 7, 24], 1.0, 8);
        for e in [extra.clone(), extra.to_dtype(DType::BF16).unwrap()] {
            let got = layer_norm_backward_plus(&x, &w, &g, Some(&e), 1e-5).unwrap();
            let total = (&g + e.to_dtype(DType::F32).unwrap()).unwrap();
            let want = layer_norm_backward(&x, &w, &total, 1e-5).unwrap();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let d = max_rel_diff(a, b);
                assert!(d < 1e-6, "{:?}: gradient {i} differs by {d}", e.dtype());
            }
        }
    }

    /// The dense layer's gradient written beside LayerNorm's is LayerNorm's input gradient
    /// through the dense layer's dropout in the products' type (`dropout_to`), bit for bit, with
    /// and without a second gradient and dropout, in f32 and bf16.
    #[test]
    fn the_backward_pass_writes_the_dense_layers_gradient_beside_its_own() {
        let x = detached(&[5, 7, 24], 1.5, 5);
        let w = detached(&[24], 1.0, 6);
        let g = detached(&[5, 7, 24], 1.0, 7);
        let extra = detached(&[5, 7, 24], 1.0, 8);
        for dtype in [DType::F32, DType::BF16] {
            let e = extra.to_dtype(dtype).unwrap();
            for (extra, p) in [(None, 0.0), (Some(&e), 0.0), (None, 0.25), (Some(&e), 0.25)] {
                let to = GradTo { p, seed: 21, dtype };
                let (grads, dz) = layer_norm_backward_to(&x, &w, &g, extra, 1e-5, to).unwrap();
                let want = layer_norm_backward_plus(&x, &w, &g, extra, 1e-5).unwrap();
                for (i, (a, b)) in grads.iter().zip(&want).enumerate() {
                    assert_eq!(max_rel_diff(a, b), 0.0, "{dtype:?} p {p}: gradient {i}");
                }
                let dropout = (p > 0.0).then_some((p, 21));
                let want_dz = dropout_to(&want[0], dropout, dtype).unwrap();
                assert_eq!(dz.dtype(), dtype);
                assert_eq!(dz.dims(), x.dims());
                assert_eq!(max_rel_diff(&dz, &want_dz), 0.0, "{dtype:?} p {p}: dz");
            }
        }
    }

    #[test]
    fn mismatched_inputs_are_refused_with_their_shapes() {
        let dev = candle_core::Device::Cpu;
        let y = Tensor::zeros((3, 8), DType::F32, &dev).unwrap();
        let w = Tensor::ones(8, DType::F32, &dev).unwrap();
        let r = Tensor::zeros((3, 7), DType::F32, &dev).unwrap();
        let dense = |product| DenseOutput {
            product,
            bias: &w,
            dropout: None,
        };
        let e = residual_layer_norm(dense(&y), &r, &w, &w, 1e-5).unwrap_err();
        assert!(e.to_string().contains("r [3, 7]"), "{e}");
        let bf = y.to_dtype(DType::BF16).unwrap();
        let e = residual_layer_norm(dense(&y), &bf, &w, &w, 1e-5).unwrap_err();
        assert!(e.to_string().contains("BF16"), "{e}");
        let ints = y.to_dtype(DType::U32).unwrap();
        let e = residual_layer_norm(dense(&ints), &y, &w, &w, 1e-5).unwrap_err();
        assert!(e.to_string().contains("U32"), "{e}");
        let short = Tensor::zeros((3, 7), DType::BF16, &dev).unwrap();
        let e = layer_norm_backward_plus(&y, &w, &y, Some(&short), 1e-5).unwrap_err();
        assert!(e.to_string().contains("second gradient of [3, 7]"), "{e}");
        let to = GradTo {
            p: 0.1,
            seed: 1,
            dtype: DType::F16,
        };
        let e = layer_norm_backward_to(&y, &w, &y, None, 1e-5, to).unwrap_err();
        assert!(e.to_string().contains("F16"), "{e}");
    }
}
