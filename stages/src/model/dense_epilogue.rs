//! What a dense layer does around its product, as one pass each, reading the product in its type
//! (f32, or bf16 in mixed precision): the bias and the epilogue (GELU or dropout) into the f32
//! activation; and in the backward pass, the gradient before the epilogue, in the products' type
//! for the two products that follow. `dense_attached.rs` runs them on GPUs and in bf16.
//!
//! Composed, the forward pass cast the product to f32, added the bias and applied the epilogue,
//! three passes over the layer's output; the backward pass applied the epilogue's backward in f32
//! and cast the result for each product. On a CUDA GPU these are `kernels.cu`'s
//! `bias_epilogue_*`, `bias_gelu_grad_*` and `dropout_to_bf16`; on the CPU their twins below.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape};
use candle_core::{Tensor, WithDType};
use half::bf16;
use rayon::prelude::*;

use super::attention_probs::Elem;
use super::dense::Epilogue;
use super::fused::{elems, gelu_and_slope};
use super::gpu_ops::dropped;

/// Elements handed to a thread at a time.
const CHUNK: usize = 4096;

/// `bias_epilogue_at` (kernels.cu) for the elements of `product` starting at flat index `first`.
pub(crate) fn bias_epilogue_from<T: Elem, U: Elem>(
    product: &[T],
    bias: &[f32],
    epilogue: Epilogue,
    first: usize,
    y: &mut [U],
) {
    let n = bias.len();
    for (k, (y, p)) in y.iter_mut().zip(product).enumerate() {
        let i = first + k;
        let z = p.get() + bias[i % n];
        *y = U::put(match epilogue {
            Epilogue::None => z,
            Epilogue::Gelu => gelu_and_slope(z).0,
            Epilogue::Dropout { rate, seed } => dropped(z, rate, seed, i as u64),
        });
    }
}

/// `bias_gelu_grad_at` (kernels.cu) for the elements starting at flat index `first`.
pub(crate) fn bias_gelu_grad_from<T: Elem, G: Elem>(
    product: &[T],
    bias: &[f32],
    g: &[G],
    first: usize,
    dz: &mut [T],
) {
    let n = bias.len();
    for (k, ((d, p), g)) in dz.iter_mut().zip(product).zip(g).enumerate() {
        let z = p.get() + bias[(first + k) % n];
        *d = T::put(g.get() * gelu_and_slope(z).1);
    }
}

/// `dropout_to_bf16` (kernels.cu) for the elements starting at flat index `first`.
pub(crate) fn dropout_to_from<T: Elem>(g: &[f32], p: f32, seed: u64, first: usize, y: &mut [T]) {
    for (k, (y, g)) in y.iter_mut().zip(g).enumerate() {
        *y = T::put(dropped(*g, p, seed, (first + k) as u64));
    }
}

/// The bias `bias` (n, f32) added to `product` (rows, n; f32 or bf16), then `epilogue`: (rows, n)
/// in `out` (f32; or bf16, from a bf16 product, for an output that only a product reads).
/// Records no gradient.
pub fn bias_epilogue(
    product: &Tensor,
    bias: &Tensor,
    epilogue: Epilogue,
    out: DType,
) -> Result<Tensor> {
    check_bias(product, bias, "flora-bias-epilogue")?;
    if !(out == DType::F32 || out == product.dtype()) {
        candle_core::bail!(
            "flora-bias-epilogue: a {:?} product gives f32 or {:?}, not {out:?}",
            product.dtype(),
            product.dtype()
        );
    }
    product
        .contiguous()?
        .apply_op2_no_bwd(&bias.contiguous()?, &BiasEpilogue { epilogue, out })
}

/// The gradient before a GELU epilogue from the `grad` (rows, n; f32, or the product's type) of
/// its output, with the pre-activation recomputed as `product` + `bias`: (rows, n) in the
/// product's type.
pub fn bias_gelu_grad(product: &Tensor, bias: &Tensor, grad: &Tensor) -> Result<Tensor> {
    check_bias(product, bias, "flora-bias-gelu-grad")?;
    let typed = grad.dtype() == DType::F32 || grad.dtype() == product.dtype();
    if grad.dims() != product.dims() || !typed {
        candle_core::bail!(
            "flora-bias-gelu-grad: the gradient is {:?} {:?}, not {:?} f32 or {:?}",
            grad.dims(),
            grad.dtype(),
            product.dims(),
            product.dtype()
        );
    }
    product
        .contiguous()?
        .apply_op3_no_bwd(&bias.contiguous()?, &grad.contiguous()?, &BiasGeluGrad)
}

/// `grad` (f32, or read as f32) through inverted dropout at `dropout`'s (rate, seed), its mask redrawn (none
/// without one), in `dtype` (f32 or bf16): one pass, or none for f32 without dropout.
pub fn dropout_to(grad: &Tensor, dropout: Option<(f32, u64)>, dtype: DType) -> Result<Tensor> {
    let dropout = dropout.filter(|&(p, _)| p > 0.0);
    match (dropout, dtype) {
        (None, _) => grad.to_dtype(dtype),
        (Some((p, seed)), DType::F32) => super::layers::dropout_with_seed(grad, p, seed),
        (Some((p, seed)), _) => grad
            .to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1_no_bwd(&DropoutTo { p, seed, dtype }),
    }
}

fn check_bias(product: &Tensor, bias: &Tensor, op: &str) -> Result<()> {
    let n = product.dims().last().copied().unwrap_or(0);
    if bias.dims() != [n] || bias.dtype() != DType::F32 {
        candle_core::bail!(
            "{op}: the bias is {:?} {:?}, not ({n}) f32",
            bias.dims(),
            bias.dtype()
        );
    }
    Ok(())
}

struct BiasEpilogue {
    epilogue: Epilogue,
    out: DType,
}

impl BiasEpilogue {
    fn cpu<T: Elem + WithDType, U: Elem>(
        &self,
        s: &CpuStorage,
        l: &Layout,
        bias: &[f32],
    ) -> Result<Vec<U>> {
        let product = elems::<T>(s, l, self.name())?;
        let mut y = vec![U::put(0.0); product.len()];
        y.par_chunks_mut(CHUNK)
            .zip(product.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (y, p))| bias_epilogue_from(p, bias, self.epilogue, c * CHUNK, y));
        Ok(y)
    }
}

impl CustomOp2 for BiasEpilogue {
    fn name(&self) -> &'static str {
        "flora-bias-epilogue"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bias = elems::<f32>(s2, l2, self.name())?;
        let y = match (s1.dtype(), self.out) {
            (DType::F32, _) => CpuStorage::F32(self.cpu::<f32, f32>(s1, l1, bias)?),
            (DType::BF16, DType::F32) => CpuStorage::F32(self.cpu::<bf16, f32>(s1, l1, bias)?),
            (DType::BF16, _) => CpuStorage::BF16(self.cpu::<bf16, bf16>(s1, l1, bias)?),
            (d, _) => candle_core::bail!("{}: a product of {d:?}", self.name()),
        };
        Ok((y, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::dense_epilogue_cuda::bias_epilogue((s1, l1), (s2, l2), self.epilogue, self.out)
    }
}

struct BiasGeluGrad;

impl BiasGeluGrad {
    fn cpu<T: Elem + WithDType, G: Elem>(
        &self,
        s: &CpuStorage,
        l: &Layout,
        bias: &[f32],
        g: &[G],
    ) -> Result<Vec<T>> {
        let product = elems::<T>(s, l, self.name())?;
        let mut dz = vec![T::put(0.0); product.len()];
        dz.par_chunks_mut(CHUNK)
            .zip(product.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .enumerate()
            .for_each(|(c, (d, (p, g)))| bias_gelu_grad_from(p, bias, g, c * CHUNK, d));
        Ok(dz)
    }
}

impl CustomOp3 for BiasGeluGrad {
    fn name(&self) -> &'static str {
        "flora-bias-gelu-grad"
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
        let bias = elems::<f32>(s2, l2, self.name())?;
        let dz = match (s1.dtype(), s3.dtype()) {
            (DType::F32, _) => {
                let g = elems::<f32>(s3, l3, self.name())?;
                CpuStorage::F32(self.cpu::<f32, f32>(s1, l1, bias, g)?)
            }
            (DType::BF16, DType::F32) => {
                let g = elems::<f32>(s3, l3, self.name())?;
                CpuStorage::BF16(self.cpu::<bf16, f32>(s1, l1, bias, g)?)
            }
            (DType::BF16, _) => {
                let g = elems::<bf16>(s3, l3, self.name())?;
                CpuStorage::BF16(self.cpu::<bf16, bf16>(s1, l1, bias, g)?)
            }
            (d, _) => candle_core::bail!("{}: a product of {d:?}", self.name()),
        };
        Ok((dz, l1.shape().clone()))
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
        super::dense_epilogue_cuda::bias_gelu_grad((s1, l1), (s2, l2), (s3, l3))
    }
}

struct DropoutTo {
    p: f32,
    seed: u64,
    dtype: DType,
}

impl CustomOp1 for DropoutTo {
    fn name(&self) -> &'static str {
        "flora-dropout-to"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = elems::<f32>(s, l, self.name())?;
        if self.dtype != DType::BF16 {
            candle_core::bail!("{}: to {:?}", self.name(), self.dtype);
        }
        let mut y = vec![bf16::ZERO; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (y, g))| dropout_to_from(g, self.p, self.seed, c * CHUNK, y));
        Ok((CpuStorage::BF16(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if self.dtype != DType::BF16 {
            candle_core::bail!("{}: to {:?}", self.name(), self.dtype);
        }
        super::dense_epilogue_cuda::dropout_to_bf16(s, l, self.p, self.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::{bias_add, dropout_with_seed, gelu};
    use crate::testing::{max_rel_diff, random_var};

    #[test]
    fn the_epilogue_matches_bias_add_then_gelu_or_dropout_in_f32_and_bf16() {
        let product = random_var(&[70, 9], 2.0, 1).as_tensor().detach();
        let bias = random_var(&[9], 1.0, 2).as_tensor().detach();
        for dt in [DType::F32, DType::BF16] {
            let p = product.to_dtype(dt).unwrap();
            let z = bias_add(&p.to_dtype(DType::F32).unwrap(), &bias).unwrap();
            for (epilogue, want) in [
                (Epilogue::None, z.clone()),
                (Epilogue::Gelu, gelu(&z).unwrap()),
                (
                    Epilogue::Dropout { rate: 0.3, seed: 4 },
                    dropout_with_seed(&z, 0.3, 4).unwrap(),
                ),
            ] {
                let y = bias_epilogue(&p, &bias, epilogue, DType::F32).unwrap();
                assert_eq!(y.dtype(), DType::F32);
                let d = max_rel_diff(&y, &want);
                assert!(d < 1e-6, "{dt:?} {epilogue:?}: {d}");
                // In the product's own type: the same values, rounded once.
                let y = bias_epilogue(&p, &bias, epilogue, dt).unwrap();
                assert_eq!(y.dtype(), dt);
                let tol = if dt == DType::F32 { 1e-6 } else { 4e-3 };
                let d = max_rel_diff(&y.to_dtype(DType::F32).unwrap(), &want);
                assert!(d < tol, "{dt:?} {epilogue:?} in {dt:?}: {d}");
            }
        }
    }

    #[test]
    fn the_gelu_gradient_matches_autograd_and_dropout_to_redraws_the_mask() {
        let product = random_var(&[50, 7], 2.0, 3);
        let bias = random_var(&[7], 1.0, 4).as_tensor().detach();
        let g = random_var(&[50, 7], 1.0, 5).as_tensor().detach();
        let z = bias_add(product.as_tensor(), &bias).unwrap();
        let y = crate::model::layers::gelu(&z).unwrap();
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let want = grads.get(product.as_tensor()).unwrap();
        let p = product.as_tensor().detach();
        let got = bias_gelu_grad(&p, &bias, &g).unwrap();
        assert!(max_rel_diff(&got, want) < 1e-5);
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        // From the rounded product (and gradient), rounded once more.
        for grad in [g.clone(), bf(&g)] {
            let got = bias_gelu_grad(&bf(&p), &bias, &grad).unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            let d = max_rel_diff(&got.to_dtype(DType::F32).unwrap(), want);
            assert!(d < 3e-2, "bf16 from {:?}: {d}", grad.dtype());
        }

        for dt in [DType::F32, DType::BF16] {
            for dropout in [None, Some((0.25, 6))] {
                let got = dropout_to(&g, dropout, dt).unwrap();
                assert_eq!(got.dtype(), dt);
                let want = match dropout {
                    Some((p, seed)) => dropout_with_seed(&g, p, seed).unwrap(),
                    None => g.clone(),
                };
                let tol = if dt == DType::F32 { 1e-7 } else { 4e-3 };
                let d = max_rel_diff(&got.to_dtype(DType::F32).unwrap(), &want);
                assert!(d < tol, "{dt:?} {dropout:?}: {d}");
            }
        }
    }

    #[test]
    fn mismatched_inputs_are_refused_with_their_shapes() {
        let product = Tensor::zeros((4, 3), DType::BF16, &candle_core::Device::Cpu).unwrap();
        let bias = Tensor::zeros(4, DType::F32, &candle_core::Device::Cpu).unwrap();
        let e = bias_epilogue(&product, &bias, Epilogue::Gelu, DType::F32).unwrap_err();
        assert!(e.to_string().contains("not (3) f32"), "{e}");
        let bias = Tensor::zeros(3, DType::F32, &candle_core::Device::Cpu).unwrap();
        let g = Tensor::zeros((3, 4), DType::F32, &candle_core::Device::Cpu).unwrap();
        let e = bias_gelu_grad(&product, &bias, &g).unwrap_err();
        assert!(e.to_string().contains("not [4, 3] f32 or BF16"), "{e}");
        let f32_product = product.to_dtype(DType::F32).unwrap();
        let e = bias_epilogue(&f32_product, &bias, Epilogue::Gelu, DType::BF16).unwrap_err();
        assert!(e.to_string().contains("gives f32 or F32, not BF16"), "{e}");
    }
}
