//! LAMB on a CUDA GPU: per parameter, one kernel updates both moments in place and sums the
//! squares of the weights and of the update direction by blocks (`kernels.cu`'s
//! `lamb_moments`); the partial sums of every parameter come back in one transfer; a second
//! kernel steps the weights in place (`lamb_apply`). As tensor operations the same update is
//! about fifteen kernels and three fresh tensors per parameter (22 ms per step of the paper's
//! model on an H100). Same arithmetic as the CPU's fused loops (`Lamb::update_on_cpu`).

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaViewMut;
use candle_core::cuda_backend::CudaDevice;
use candle_core::{CpuStorage, CudaStorage, DType, InplaceOp1, Layout, Result, Storage, Tensor};

use super::gpu_kernels::{config, launch, output, view};
use super::lamb::{block_pair_sums, moment, trust_ratio, Lamb};
use super::launch_shapes;
use super::roberta::Params;

/// Whether the GPU update applies to a parameter: f32 on a CUDA GPU.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cuda() && t.dtype() == DType::F32
}

/// One parameter's part of the step.
struct Part<'a> {
    name: &'a str,
    weights: &'a Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    /// Its kernels' grid and blocks.
    shape: launch_shapes::LaunchShape,
    /// Where its blocks' partial sums are in the shared buffer (a pair per block).
    sums: std::ops::Range<usize>,
    /// Its weight decay (0 for biases and LayerNorm weights).
    decay: f32,
}

/// One LAMB update of every parameter named in `names` that has a gradient, with the gradients
/// multiplied by `scale`, at learning rate `lr`; `bc1` and `bc2` are the bias corrections.
pub(crate) fn update(
    lamb: &mut Lamb,
    params: &Params,
    grads: &HashMap<String, Tensor>,
    names: Vec<&String>,
    lr: f64,
    (bc1, bc2): (f64, f64),
    scale: f64,
) -> Result<()> {
    let mut parts = Vec::new();
    let mut offset = 0;
    for name in names {
        let Some(grad) = grads.get(name) else {
            continue;
        };
        let weights = params.vars[name].as_tensor();
        let n = weights.elem_count();
        if grad.elem_count() != n {
            candle_core::bail!(
                "lamb: `{name}` has {n} weights but a gradient of {}",
                grad.elem_count()
            );
        }
        let shape = launch_shapes::lamb(n);
        parts.push(Part {
            name,
            weights,
            grad: grad.to_dtype(DType::F32)?.contiguous()?,
            m: moment(&mut lamb.m, name, weights)?,
            v: moment(&mut lamb.v, name, weights)?,
            shape,
            sums: offset..offset + 2 * shape.grid[0] as usize,
            decay: lamb.decay_of(name),
        });
        offset += 2 * shape.grid[0] as usize;
    }
    let Some(first) = parts.first() else {
        return Ok(());
    };
    let candle_core::Device::Cuda(dev) = first.weights.device() else {
        candle_core::bail!("lamb: `{}` is not on a CUDA GPU", first.name)
    };
    let dev = dev.clone();
    let (b1, b2, eps) = (lamb.beta1 as f32, lamb.beta2 as f32, lamb.eps as f32);
    let (c1, c2, scale) = (bc1 as f32, bc2 as f32, scale as f32);
    // SAFETY of `output`: each parameter's blocks write their pairs, which tile the buffer.
    let mut partial = output(&dev, offset)?;
    for part in &parts {
        let (n_u, wd) = (part.weights.elem_count() as u64, part.decay);
        in_place(&part.m, "lamb-moments", |m, _| -> Result<()> {
            in_place(&part.v, "lamb-moments", |v, dev| -> Result<()> {
                let (wg, wl) = part.weights.storage_and_layout();
                let (gg, gl) = part.grad.storage_and_layout();
                let w = view(cuda(&wg, "lamb-moments")?, wl, "lamb-moments")?;
                let g = view(cuda(&gg, "lamb-moments")?, gl, "lamb-moments")?;
                let mut sums = partial.slice_mut(part.sums.clone());
                launch!(
                    dev,
                    "lamb_moments",
                    config(part.shape),
                    &w,
                    &g,
                    m,
                    v,
                    &mut sums,
                    &n_u,
                    &scale,
                    &b1,
                    &b2,
                    &c1,
                    &c2,
                    &eps,
                    &wd
                )
            })?
        })??;
    }
    let sums = dev.clone_dtoh(&partial)?;
    for part in &parts {
        let (w_squares, u_squares) = block_pair_sums(&sums[part.sums.clone()]);
        let step = (lr * trust_ratio(w_squares, u_squares)) as f32;
        let (n_u, wd) = (part.weights.elem_count() as u64, part.decay);
        in_place(part.weights, "lamb-apply", |w, dev| {
            let (mg, ml) = part.m.storage_and_layout();
            let (vg, vl) = part.v.storage_and_layout();
            let m = view(cuda(&mg, "lamb-apply")?, ml, "lamb-apply")?;
            let v = view(cuda(&vg, "lamb-apply")?, vl, "lamb-apply")?;
            launch!(
                dev,
                "lamb_apply",
                config(part.shape),
                w,
                &m,
                &v,
                &n_u,
                &step,
                &c1,
                &c2,
                &eps,
                &wd
            )
        })??;
    }
    Ok(())
}

/// The CUDA storage inside a tensor's storage.
fn cuda<'a>(s: &'a Storage, op: &str) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(s) => Ok(s),
        _ => candle_core::bail!("{op}: expects a tensor on a CUDA GPU"),
    }
}

/// Runs `f` on the elements of `t`, a contiguous f32 tensor on a CUDA GPU, in place (the
/// storage that every clone of `t` shares: a `Var`'s, an optimizer's moment), with its device.
fn in_place<R>(
    t: &Tensor,
    op: &'static str,
    f: impl FnOnce(&mut CudaViewMut<'_, f32>, &CudaDevice) -> R,
) -> Result<R> {
    let modify = InPlace {
        op,
        f: RefCell::new(Some(f)),
        result: RefCell::new(None),
    };
    t.inplace_op1(&modify)?;
    let result = modify.result.into_inner();
    result.ok_or_else(|| candle_core::Error::Msg(format!("{op}: expects an f32 tensor on a GPU")))
}

/// [`in_place`]'s op: `f`, run once on the storage, and what it returned.
struct InPlace<F, R> {
    op: &'static str,
    f: RefCell<Option<F>>,
    result: RefCell<Option<R>>,
}

impl<F: FnOnce(&mut CudaViewMut<'_, f32>, &CudaDevice) -> R, R> InplaceOp1 for InPlace<F, R> {
    fn name(&self) -> &'static str {
        self.op
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("{}: expects a tensor on a CUDA GPU", self.op)
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: expects a contiguous tensor", self.op)
        };
        let dev = s.device().clone();
        let slice = s.as_cuda_slice_mut::<f32>()?;
        let mut view = slice.slice_mut(a..b);
        if let Some(f) = self.f.borrow_mut().take() {
            *self.result.borrow_mut() = Some(f(&mut view, &dev));
        }
        Ok(())
    }
}

/// The GPU update against the CPU's fused loops, on the first CUDA GPU; skipped (loudly) where
/// there is none. The kernels themselves are also tested on the CPU by the kernel emulator.
#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::model::layers::randn;
    use crate::rng::Rng;

    #[test]
    fn gpu_lamb_matches_the_cpu() {
        let Ok(dev) = Device::new_cuda(0) else {
            eprintln!("SKIPPED gpu_lamb_matches_the_cpu: no CUDA GPU");
            return;
        };
        // A weight bigger than one grid's stride, a bias (no weight decay), a LayerNorm weight.
        let shapes = [
            ("a.dense.weight", vec![300, 257]),
            ("a.dense.bias", vec![257]),
            ("a.LayerNorm.weight", vec![257]),
        ];
        let make = |rng: &mut Rng, d: &Device| -> HashMap<String, Tensor> {
            shapes
                .iter()
                .map(|(n, s)| (n.to_string(), randn(rng, s, 0.3, d).unwrap()))
                .collect()
        };
        let params = |d: &Device| Params {
            vars: make(&mut Rng::new(1), d)
                .into_iter()
                .map(|(k, t)| (k, Var::from_tensor(&t).unwrap()))
                .collect(),
            frozen: false,
            compute: DType::F32,
            sink: Default::default(),
        };
        let (cpu, gpu) = (params(&Device::Cpu), params(&dev));
        let (mut oc, mut og) = (Lamb::new(0.01), Lamb::new(0.01));
        let mut rng = (Rng::new(2), Rng::new(2));
        for step in 0..4 {
            let scale = if step == 2 { 0.5 } else { 1.0 };
            let gc = make(&mut rng.0, &Device::Cpu);
            let gg = make(&mut rng.1, &dev);
            oc.update_scaled(&cpu, &gc, 0.05, scale).unwrap();
            og.update_scaled(&gpu, &gg, 0.05, scale).unwrap();
        }
        let flat = |t: &Tensor| -> Vec<f32> {
            t.to_device(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        for (name, var) in &cpu.vars {
            let pairs = [
                (flat(var.as_tensor()), flat(gpu.vars[name].as_tensor()), "w"),
                (flat(&oc.m[name]), flat(&og.m[name]), "m"),
                (flat(&oc.v[name]), flat(&og.v[name]), "v"),
            ];
            for (c, g, what) in pairs {
                let d = c
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| (a - b).abs() / a.abs().max(1e-3))
                    .fold(0f32, f32::max);
                assert!(
                    d < 1e-4,
                    "{name} {what}: GPU and CPU differ by {d} (relative)"
                );
            }
        }
    }
}
