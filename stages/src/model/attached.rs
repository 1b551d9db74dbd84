//! One node of the autograd graph for a chain of ops: the value is computed by ops that record
//! nothing (on detached inputs), and a closure gives the inputs' gradients.
//!
//! candle's backward pass allocates a zeroed gradient for every node of the graph and adds each
//! incoming gradient to it: for a dense layer composed of a reshape, casts, a product, a bias add
//! and GELU, that is a zeroed tensor and an addition per intermediate result, each a full pass
//! over the activations (on a GPU, where these layers are not one op as on the CPU, the
//! feed-forward's are (84 x 256, 3072) floats). Attached, the chain is one node, and its backward
//! pass runs only the ops the gradients need. The value is copied once into the node's output.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

/// The gradients of the three inputs from the output's gradient.
pub type Gradients = [Option<Tensor>; 3];

/// `value` (computed from detached copies of `inputs`) as the output of one node whose backward
/// pass is `backward`. The inputs are only the graph's edges: nothing reads them here.
pub fn attach3<F>(inputs: [&Tensor; 3], value: Tensor, backward: F) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Gradients> + Send + Sync + 'static,
{
    let [a, b, c] = inputs;
    a.apply_op3_arc(
        b,
        c,
        std::sync::Arc::new(Box::new(Attached {
            value: Mutex::new(Some(value)),
            backward,
        })),
    )
}

struct Attached<F> {
    /// The value, taken by the forward pass (so that the graph does not keep a second copy).
    value: Mutex<Option<Tensor>>,
    backward: F,
}

impl<F> Attached<F> {
    fn take(&self) -> Result<Tensor> {
        let taken = self.value.lock().map(|mut v| v.take());
        match taken {
            Ok(Some(v)) => Ok(v),
            _ => candle_core::bail!("flora-attached: the forward pass ran twice"),
        }
    }
}

impl<F> CustomOp3 for Attached<F>
where
    F: Fn(&Tensor) -> Result<Gradients> + Send + Sync,
{
    fn name(&self) -> &'static str {
        "flora-attached"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let value = self.take()?;
        let (storage, layout) = value.storage_and_layout();
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("flora-attached: the value is not contiguous")
        };
        let copy = match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => CpuStorage::F32(v[a..b].to_vec()),
            Storage::Cpu(CpuStorage::BF16(v)) => CpuStorage::BF16(v[a..b].to_vec()),
            _ => candle_core::bail!("flora-attached: expects an f32 or bf16 value on the CPU"),
        };
        Ok((copy, value.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let value = self.take()?;
        let (storage, layout) = value.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            candle_core::bail!("flora-attached: expects the value on a CUDA GPU")
        };
        Ok((
            super::gpu_kernels::compact_copy(s, layout)?,
            value.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [a, b, c] = (self.backward)(grad)?;
        Ok((a, b, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_diff, random_var, weighted_grads};

    /// (x * w) + b through ops, against the same value attached with its hand-written backward.
    #[test]
    fn an_attached_chain_has_the_gradients_of_its_ops() {
        let x = random_var(&[4, 6], 1.0, 1);
        let w = random_var(&[4, 6], 1.0, 2);
        let b = random_var(&[6], 1.0, 3);
        let weights = random_var(&[4, 6], 1.0, 4);
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let ops = xt.mul(wt).unwrap().broadcast_add(bt).unwrap();
        let (xd, wd) = (xt.detach(), wt.detach());
        let value = xd.mul(&wd).unwrap().broadcast_add(&bt.detach()).unwrap();
        let attached = attach3([xt, wt, bt], value, move |g| {
            Ok([Some(g.mul(&wd)?), Some(g.mul(&xd)?), Some(g.sum(0)?)])
        })
        .unwrap();
        assert!(max_rel_diff(&attached, &ops) < 1e-7);
        let (g1, g2) = (
            weighted_grads(&attached, weights.as_tensor()),
            weighted_grads(&ops, weights.as_tensor()),
        );
        for v in [&x, &w, &b] {
            let d = max_rel_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-6, "gradient differs by {d}");
        }
    }

    #[test]
    fn an_attached_value_is_a_compact_copy() {
        // A narrowed value starts inside its storage: the node's output is only its elements.
        let big = random_var(&[5, 3], 1.0, 5).as_tensor().detach();
        let part = big.narrow(0, 2, 2).unwrap();
        let x = random_var(&[2, 3], 1.0, 6);
        let out = attach3(
            [x.as_tensor(), x.as_tensor(), x.as_tensor()],
            part.clone(),
            |_| Ok([None, None, None]),
        )
        .unwrap();
        assert_eq!(out.dims(), &[2, 3]);
        assert_eq!(
            out.to_vec2::<f32>().unwrap(),
            part.to_vec2::<f32>().unwrap()
        );
    }
}
