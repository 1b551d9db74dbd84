//! The CUDA side of `attention_probs.rs`: `kernels.cu`'s `attention_probs_*` kernels, in f32 or
//! bf16 as the scores are.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, DType, Layout, Result, Shape};
use half::bf16;

use super::gpu_kernels::{config, launch, suffix, typed, uninit, view};
use super::launch_shapes::warp_per_row;

/// The probabilities and, with dropout, their dropped-out copy, packed as (2, the scores' shape),
/// else (1, the scores' shape).
pub fn attention_probs(
    (ss, sl): (&CudaStorage, &Layout),
    (ms, ml): (&CudaStorage, &Layout),
    scale: f32,
    dropout: Option<(f32, u64)>,
) -> Result<(CudaStorage, Shape)> {
    let mut dims = vec![1 + usize::from(dropout.is_some())];
    dims.extend_from_slice(sl.dims());
    let storage = match ss.dtype() {
        DType::BF16 => probs_typed::<bf16>((ss, sl), (ms, ml), scale, dropout)?,
        _ => probs_typed::<f32>((ss, sl), (ms, ml), scale, dropout)?,
    };
    Ok((storage, Shape::from(dims)))
}

fn probs_typed<T: CudaDType + DeviceRepr>(
    (ss, sl): (&CudaStorage, &Layout),
    (ms, ml): (&CudaStorage, &Layout),
    scale: f32,
    dropout: Option<(f32, u64)>,
) -> Result<CudaStorage> {
    const OP: &str = "flora-attention-probs";
    let name = format!("attention_probs_{}", suffix(ss.dtype(), OP)?);
    let dev = ss.device();
    let scores = typed::<T>(ss, sl, OP)?;
    let mask = view(ms, ml, OP)?;
    let (_, heads, queries, keys) = sl.shape().dims4()?;
    let len = sl.shape().elem_count();
    // The dropped-out copy only with dropout (the kernel writes none at p = 0).
    let copies = 1 + usize::from(dropout.is_some());
    let mut packed = uninit::<T>(dev, copies * len)?;
    let (mut probs, mut dropped) = packed.split_at_mut(len);
    let (p, seed) = dropout.unwrap_or((0.0, 0));
    let rows = len / keys.max(1);
    let (rows_i, n_i, per_batch_i) = (rows as i32, keys as i32, (heads * queries) as i32);
    launch!(
        dev,
        &name,
        config(warp_per_row(rows)),
        &scores,
        &mask,
        &mut probs,
        &mut dropped,
        &rows_i,
        &n_i,
        &per_batch_i,
        &scale,
        &p,
        &seed
    )?;
    Ok(T::wrap_cuda_slice(packed, dev.clone()))
}

/// The scores' gradient from the packed probabilities and dropped-out copy (2, the scores'
/// shape) and the gradient of the dropped-out copy.
pub fn attention_probs_grad(
    (ps, pl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    scale: f32,
    rate: f32,
) -> Result<(CudaStorage, Shape)> {
    let storage = match ps.dtype() {
        DType::BF16 => grad_typed::<bf16>((ps, pl), (gs, gl), scale, rate)?,
        _ => grad_typed::<f32>((ps, pl), (gs, gl), scale, rate)?,
    };
    Ok((storage, gl.shape().clone()))
}

fn grad_typed<T: CudaDType + DeviceRepr>(
    (ps, pl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    scale: f32,
    rate: f32,
) -> Result<CudaStorage> {
    const OP: &str = "flora-attention-probs-grad";
    let name = format!("attention_probs_grad_{}", suffix(ps.dtype(), OP)?);
    let dev = ps.device();
    let packed = typed::<T>(ps, pl, OP)?;
    let grad = typed::<T>(gs, gl, OP)?;
    let n = super::fused::last_dim(gl);
    let len = gl.shape().elem_count();
    let (probs, kept) = packed.split_at(len);
    // Without dropout there is no copy, and the rate of 0 reads none.
    let kept = if kept.is_empty() {
        packed.split_at(len).0
    } else {
        kept
    };
    let mut ds = uninit::<T>(dev, len)?;
    let rows = len / n.max(1);
    let (rows_i, n_i) = (rows as i32, n as i32);
    launch!(
        dev,
        &name,
        config(warp_per_row(rows)),
        &probs,
        &kept,
        &grad,
        &mut ds,
        &rows_i,
        &n_i,
        &scale,
        &rate
    )?;
    Ok(T::wrap_cuda_slice(ds, dev.clone()))
}
