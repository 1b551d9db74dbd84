//! LAMB on a CUDA GPU in five launches for the whole model, whatever its number of parameter
//! tensors, and nothing read back to the host: a table of every tensor's weights, gradient and
//! moments (their device addresses) is uploaded, and `kernels.cu`'s multi-tensor kernels work
//! through it by chunks of [`LAMB_CHUNK`] elements. They sum the gradients' squares
//! (`lamb_grad_squares`, when clipping), turn them into the gradients' scale (`lamb_clip_scale`),
//! update both moments in place and sum the squares of the weights and of the update direction
//! (`lamb_moments`), turn those into each tensor's step, the learning rate times its trust ratio
//! (`lamb_trust_steps`), and step the weights in place (`lamb_apply`). Two kernels per tensor with
//! the trust ratios read back between them, after clipping's global norm as three tensor
//! operations per tensor and a read-back, were over 500 launches and two waits for the paper's
//! model of 106 tensors. Same arithmetic as the CPU's fused loops (`Lamb::update_on_cpu`).

use std::collections::HashMap;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr as _};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Layout, Result, Storage, Tensor};

use super::gpu_kernels::{config, launch, output, view};
use super::lamb::{moment, Lamb};
use super::launch_shapes::{blocks_of_256, lamb_chunks, LAMB_CHUNK};
use super::roberta::Params;

/// Whether the GPU update applies to a parameter: f32 on a CUDA GPU.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cuda() && t.dtype() == DType::F32
}

/// One parameter tensor's part of the step.
struct Part<'a> {
    name: &'a str,
    weights: &'a Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    /// Its weight decay (0 for biases and LayerNorm weights).
    decay: f32,
}

/// 64-bit words per tensor in the table (`kernels.cu`'s `LambTensor`).
const WORDS: usize = 7;

/// One LAMB update of every parameter named in `names` that has a gradient, at learning rate
/// `lr`, with the gradients multiplied by `scale` and then, when `clip` is positive, scaled down
/// to a global norm of `clip`; `bc1` and `bc2` are the bias corrections.
#[allow(clippy::too_many_arguments)]
pub(crate) fn update(
    lamb: &mut Lamb,
    params: &Params,
    grads: &HashMap<String, Tensor>,
    names: Vec<&String>,
    lr: f64,
    (bc1, bc2): (f64, f64),
    scale: f64,
    clip: f64,
) -> Result<()> {
    let mut parts = Vec::new();
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
        parts.push(Part {
            name,
            weights,
            grad: grad.to_dtype(DType::F32)?.contiguous()?,
            m: moment(&mut lamb.m, name, weights)?,
            v: moment(&mut lamb.v, name, weights)?,
            decay: lamb.decay_of(name),
        });
    }
    let Some(first) = parts.first() else {
        return Ok(());
    };
    let candle_core::Device::Cuda(dev) = first.weights.device() else {
        candle_core::bail!("lamb: `{}` is not on a CUDA GPU", first.name)
    };
    let dev = dev.clone();
    let (table, chunks) = table(&dev, &parts)?;
    let count = parts.len() as i32;
    let chunk = LAMB_CHUNK as i32;
    let (b1, b2, eps) = (lamb.beta1 as f32, lamb.beta2 as f32, lamb.eps as f32);
    let (c1, c2, base, clip) = (bc1 as f32, bc2 as f32, scale as f32, clip as f32);
    // SAFETY of `output`: each buffer is written whole by the kernel that fills it (one value
    // per chunk, pair per chunk, value per tensor, or the one scale) before any kernel reads it.
    let mut squares = output(&dev, chunks)?;
    let clipped_chunks = if clip > 0.0 {
        launch!(
            dev,
            "lamb_grad_squares",
            config(blocks_of_256(chunks)),
            &table,
            &count,
            &chunk,
            &mut squares
        )?;
        chunks as i32
    } else {
        0
    };
    let mut grad_scale = output(&dev, 1)?;
    launch!(
        dev,
        "lamb_clip_scale",
        config(blocks_of_256(1)),
        &squares,
        &clipped_chunks,
        &base,
        &clip,
        &mut grad_scale
    )?;
    let mut pairs = output(&dev, 2 * chunks)?;
    launch!(
        dev,
        "lamb_moments",
        config(blocks_of_256(chunks)),
        &table,
        &count,
        &chunk,
        &grad_scale,
        &b1,
        &b2,
        &c1,
        &c2,
        &eps,
        &mut pairs
    )?;
    let mut steps = output(&dev, parts.len())?;
    launch!(
        dev,
        "lamb_trust_steps",
        config(blocks_of_256(parts.len())),
        &table,
        &chunk,
        &pairs,
        &lr,
        &mut steps
    )?;
    launch!(
        dev,
        "lamb_apply",
        config(blocks_of_256(chunks)),
        &table,
        &count,
        &chunk,
        &steps,
        &c1,
        &c2,
        &eps
    )?;
    // The gradients, and the weights and moments the kernels wrote, stay alive in `parts` until
    // here; candle frees memory in stream order, after the kernels that use it.
    drop(parts);
    Ok(())
}

/// The table of `parts` on the device (`kernels.cu`'s `LambTensor` records), and the number of
/// chunks of all tensors together.
fn table(dev: &CudaDevice, parts: &[Part<'_>]) -> Result<(CudaSlice<u64>, usize)> {
    let stream = dev.cuda_stream();
    if stream.context().is_in_multi_stream_mode() {
        // The kernels use the addresses in the table outside cudarc's view of the buffers, and
        // so outside the events that order a buffer's uses across streams: safe on flora's one
        // stream (model/device.rs), where the stream's order is the only order there is.
        candle_core::bail!("lamb: the GPU runs several streams; flora's update expects one");
    }
    let address = |t: &Tensor, what: &str| -> Result<u64> {
        let (storage, layout): (_, &Layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            candle_core::bail!("lamb: a {what} is not on a CUDA GPU")
        };
        let v = view(s, layout, "lamb")?;
        let (ptr, _unused_outside_multi_stream_mode) = v.device_ptr(&stream);
        Ok(ptr)
    };
    let mut words = Vec::with_capacity(WORDS * parts.len());
    let mut first_chunk = 0;
    for part in parts {
        words.extend([
            address(part.weights, "weight")?,
            address(&part.grad, "gradient")?,
            address(&part.m, "moment")?,
            address(&part.v, "moment")?,
            part.weights.elem_count() as u64,
            first_chunk as u64,
            u64::from(part.decay.to_bits()),
        ]);
        first_chunk += lamb_chunks(part.weights.elem_count());
    }
    Ok((dev.clone_htod(&words)?, first_chunk))
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
        // A weight of five chunks (the last ragged), a bias (no weight decay), a LayerNorm weight.
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
            attention: Default::default(),
        };
        let (cpu, gpu) = (params(&Device::Cpu), params(&dev));
        let (mut oc, mut og) = (Lamb::new(0.01), Lamb::new(0.01));
        let mut rng = (Rng::new(2), Rng::new(2));
        for step in 0..4 {
            let scale = if step == 2 { 0.5 } else { 1.0 };
            // The gradients' norm is about 0.3 x sqrt(77,600) = 84: clipped at the first and last.
            let clip = [20.0, 0.0, 1e6, 20.0][step];
            let gc = make(&mut rng.0, &Device::Cpu);
            let gg = make(&mut rng.1, &dev);
            oc.update_clipped(&cpu, &gc, 0.05, scale, clip).unwrap();
            og.update_clipped(&gpu, &gg, 0.05, scale, clip).unwrap();
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
