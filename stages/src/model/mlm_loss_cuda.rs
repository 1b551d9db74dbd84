//! The CUDA side of `mlm_loss.rs`: `kernels.cu`'s `mlm_xent_rows_*` and `mlm_xent_grad_*`, in
//! f32 or bf16 as the logits are.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, DType, Layout, Result, Shape};
use half::bf16;

use super::fused::last_dim;
use super::gpu_kernels::{config, launch, output, result, suffix, typed, uninit, view};
use super::launch_shapes::{per_row, rows_by_column_groups, GROUP};

/// A storage and its layout.
type Input<'a> = (&'a CudaStorage, &'a Layout);

/// Each row's (loss, lse, target, correct) from the logits, the bias and the targets (u32).
pub fn rows(
    logits: Input<'_>,
    bias: Input<'_>,
    targets: Input<'_>,
) -> Result<(CudaStorage, Shape)> {
    match logits.0.dtype() {
        DType::BF16 => rows_typed::<bf16>(logits, bias, targets),
        _ => rows_typed::<f32>(logits, bias, targets),
    }
}

fn rows_typed<T: CudaDType + DeviceRepr>(
    (zs, zl): Input<'_>,
    (bs, bl): Input<'_>,
    (ts, tl): Input<'_>,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "flora-mlm-loss";
    let dev = zs.device();
    let name = format!("mlm_xent_rows_{}", suffix(zs.dtype(), OP)?);
    let z = typed::<T>(zs, zl, OP)?;
    let b = view(bs, bl, OP)?;
    let t = typed::<u32>(ts, tl, OP)?;
    let (stride, n) = (last_dim(zl), bl.shape().elem_count());
    let rows = zl.shape().elem_count() / stride;
    let mut out = output(dev, 4 * rows)?;
    let (n_i, stride_i) = (n as i32, stride as i32);
    let shape = per_row(rows, n.div_ceil(GROUP));
    launch!(
        dev,
        &name,
        config(shape),
        &z,
        &b,
        &t,
        &mut out,
        &n_i,
        &stride_i
    )?;
    Ok(result(dev, out, Shape::from((rows, 4))))
}

/// The logits' gradient, in their type, from the logits, the bias and each row's (g, lse,
/// target).
pub fn grad(logits: Input<'_>, bias: Input<'_>, info: Input<'_>) -> Result<(CudaStorage, Shape)> {
    match logits.0.dtype() {
        DType::BF16 => grad_typed::<bf16>(logits, bias, info),
        _ => grad_typed::<f32>(logits, bias, info),
    }
}

fn grad_typed<T: CudaDType + DeviceRepr>(
    (zs, zl): Input<'_>,
    (bs, bl): Input<'_>,
    (is, il): Input<'_>,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "flora-mlm-loss-grad";
    let dev = zs.device();
    let name = format!("mlm_xent_grad_{}", suffix(zs.dtype(), OP)?);
    let z = typed::<T>(zs, zl, OP)?;
    let b = view(bs, bl, OP)?;
    let info = view(is, il, OP)?;
    let (len, stride, n) = (
        zl.shape().elem_count(),
        last_dim(zl),
        bl.shape().elem_count(),
    );
    let mut dz = uninit::<T>(dev, len)?;
    let (n_i, stride_i) = (n as i32, stride as i32);
    launch!(
        dev,
        &name,
        config(rows_by_column_groups(len / stride, stride)),
        &z,
        &b,
        &info,
        &mut dz,
        &n_i,
        &stride_i
    )?;
    Ok((T::wrap_cuda_slice(dz, dev.clone()), zl.shape().clone()))
}
