//! A custom op's second result, handed out as a tensor of its own. candle's custom ops have one
//! result; a pass that writes two of different types (LayerNorm's backward pass writing its f32
//! input gradient and, beside it, a dense layer's gradient in bf16) leaves the second here, and
//! [`SecondResult::tensor`] makes a tensor of it on the same device, without a copy.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The storage a custom op left for a second result, until it is taken.
#[derive(Default)]
pub(crate) struct SecondResult {
    cpu: Mutex<Option<(CpuStorage, Shape)>>,
    #[cfg(feature = "cuda")]
    cuda: Mutex<Option<(candle_core::CudaStorage, Shape)>>,
}

/// Takes what a slot holds, or fails naming the op that should have filled it.
fn take<T>(slot: &Mutex<Option<T>>, op: &str) -> Result<T> {
    match slot.lock().map(|mut v| v.take()) {
        Ok(Some(v)) => Ok(v),
        _ => candle_core::bail!("{op}: no second result on this device"),
    }
}

impl SecondResult {
    /// Leaves a CPU storage of `shape`.
    pub(crate) fn put_cpu(&self, storage: CpuStorage, shape: Shape) {
        if let Ok(mut slot) = self.cpu.lock() {
            *slot = Some((storage, shape));
        }
    }

    /// Leaves a CUDA storage of `shape`.
    #[cfg(feature = "cuda")]
    pub(crate) fn put_cuda(&self, storage: candle_core::CudaStorage, shape: Shape) {
        if let Ok(mut slot) = self.cuda.lock() {
            *slot = Some((storage, shape));
        }
    }

    /// The storage left on `like`'s device as a tensor (an error if none was left there).
    pub(crate) fn tensor(&self, like: &Tensor) -> Result<Tensor> {
        like.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for SecondResult {
    fn name(&self) -> &'static str {
        "flora-second-result"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        take(&self.cpu, self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        take(&self.cuda, self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn a_second_result_is_taken_once_as_a_tensor() {
        let like = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let second = SecondResult::default();
        let values = vec![half::bf16::from_f32(1.5), half::bf16::from_f32(-2.0)];
        second.put_cpu(CpuStorage::BF16(values), Shape::from((1, 2)));
        let t = second.tensor(&like).unwrap();
        assert_eq!(t.dims(), &[1, 2]);
        assert_eq!(t.dtype(), DType::BF16);
        let got: Vec<f32> = t
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, [1.5, -2.0]);
        let e = second.tensor(&like).unwrap_err();
        assert!(e.to_string().contains("no second result"), "{e}");
    }
}
