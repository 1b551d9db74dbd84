//! The residual add and the LayerNorm after it as one pass, for the encoder layer that is one
//! autograd node (`encoder_layer_attached.rs`): y + r, kept as the LayerNorm's input for its
//! backward pass, and its LayerNorm. Separately they were candle's add (two reads, one write)
//! and the LayerNorm (one read back, one write). On a CUDA GPU the pass is `kernels.cu`'s
//! `add_ln_fwd`; on the CPU its twin, the sum then `fused::layer_norm_rows`. The backward pass is
//! `fused::layer_norm_backward_plus`, which adds the residual stream's second gradient as it
//! reads the first.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::fused::{data, hold, layer_norm_rows};

/// The residual sum `y` + `r` (each (.., n), f32) and its LayerNorm with `weight` and `bias`
/// (each (n), f32): (sum, normed). Records no gradient.
pub fn residual_layer_norm(
    y: &Tensor,
    r: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let n = y.dims().last().copied().unwrap_or(0);
    let f32s = [y, r, weight, bias].iter().all(|t| t.dtype() == DType::F32);
    if r.dims() != y.dims() || weight.dims() != [n] || bias.dims() != [n] || !f32s {
        candle_core::bail!(
            "flora-residual-layer-norm: y {:?} {:?}, r {:?} {:?}, weight {:?} and bias {:?} \
             are not two f32 tensors of one shape and a weight and bias of its last dimension",
            y.dims(),
            y.dtype(),
            r.dims(),
            r.dtype(),
            weight.dims(),
            bias.dims()
        );
    }
    let op = ResidualLayerNorm {
        eps,
        bias: bias.contiguous()?,
    };
    let packed = y
        .contiguous()?
        .apply_op3_no_bwd(&r.contiguous()?, &weight.contiguous()?, &op)?;
    Ok((packed.get(0)?, packed.get(1)?))
}

/// A custom op has three inputs: the bias rides along.
struct ResidualLayerNorm {
    eps: f64,
    bias: Tensor,
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
        let y = data(s1, l1, self.name())?;
        let r = data(s2, l2, self.name())?;
        let w = data(s3, l3, self.name())?;
        let bias = hold(&self.bias, self.name())?;
        let sum: Vec<f32> = y.iter().zip(r).map(|(y, r)| y + r).collect();
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
        let (guard, bl) = self.bias.storage_and_layout();
        let candle_core::Storage::Cuda(bs) = &*guard else {
            candle_core::bail!("{}: the bias is not on the GPU", self.name())
        };
        super::fused_cuda::residual_layer_norm([(s1, l1), (s2, l2), (s3, l3), (bs, bl)], self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::{layer_norm, layer_norm_backward, layer_norm_backward_plus};
    use crate::testing::{max_rel_diff, random_var};

    #[test]
    fn the_fused_pass_matches_an_add_then_layer_norm() {
        let y = random_var(&[4, 6, 40], 1.0, 1).as_tensor().detach();
        let r = random_var(&[4, 6, 40], 2.0, 2).as_tensor().detach();
        let w = random_var(&[40], 1.0, 3).as_tensor().detach();
        let b = random_var(&[40], 1.0, 4).as_tensor().detach();
        let (sum, normed) = residual_layer_norm(&y, &r, &w, &b, 1e-5).unwrap();
        let want_sum = (&y + &r).unwrap();
        assert_eq!(max_rel_diff(&sum, &want_sum), 0.0);
        let want = layer_norm(&want_sum, &w, &b, 1e-5).unwrap();
        assert!(max_rel_diff(&normed, &want) < 1e-6);
    }

    #[test]
    fn a_second_gradient_is_added_as_the_backward_pass_reads_the_first() {
        let x = random_var(&[5, 7, 24], 1.5, 5).as_tensor().detach();
        let w = random_var(&[24], 1.0, 6).as_tensor().detach();
        let g = random_var(&[5, 7, 24], 1.0, 7).as_tensor().detach();
        let extra = random_var(&[5, 7, 24], 1.0, 8).as_tensor().detach();
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

    #[test]
    fn mismatched_inputs_are_refused_with_their_shapes() {
        let dev = candle_core::Device::Cpu;
        let y = Tensor::zeros((3, 8), DType::F32, &dev).unwrap();
        let w = Tensor::ones(8, DType::F32, &dev).unwrap();
        let r = Tensor::zeros((3, 7), DType::F32, &dev).unwrap();
        let e = residual_layer_norm(&y, &r, &w, &w, 1e-5).unwrap_err();
        assert!(e.to_string().contains("r [3, 7]"), "{e}");
        let bf = y.to_dtype(DType::BF16).unwrap();
        let e = residual_layer_norm(&y, &bf, &w, &w, 1e-5).unwrap_err();
        assert!(e.to_string().contains("BF16"), "{e}");
        let short = Tensor::zeros((3, 7), DType::BF16, &dev).unwrap();
        let e = layer_norm_backward_plus(&y, &w, &y, Some(&short), 1e-5).unwrap_err();
        assert!(e.to_string().contains("second gradient of [3, 7]"), "{e}");
    }
}
