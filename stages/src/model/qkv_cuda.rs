//! The CUDA side of `qkv.rs`: `kernels.cu`'s `qkv_heads_*` and `qkv_merge_*`, in f32 or bf16 as
//! the product is.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, DType, Layout, Result, Shape};
use half::bf16;

use super::gpu_kernels::{config, launch, suffix, typed, uninit, view};
use super::launch_shapes::rows_by_column_groups;
use super::qkv::Heads;

/// The heads layout as the kernels take it: (len, heads, head_dim, rows), each an `int`.
fn kernel_dims(shape: Heads) -> [i32; 4] {
    [shape.len, shape.heads, shape.head_dim, shape.rows()].map(|d| d as i32)
}

/// q, k and v packed as (3, batch, heads, len, head_dim) from the projections' product and bias.
pub fn qkv_heads(
    (ps, pl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
    shape: Heads,
) -> Result<(CudaStorage, Shape)> {
    let storage = match ps.dtype() {
        DType::BF16 => heads_typed::<bf16>((ps, pl), (bs, bl), shape)?,
        _ => heads_typed::<f32>((ps, pl), (bs, bl), shape)?,
    };
    let dims = (3, shape.batch, shape.heads, shape.len, shape.head_dim);
    Ok((storage, Shape::from(dims)))
}

fn heads_typed<T: CudaDType + DeviceRepr>(
    (ps, pl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
    shape: Heads,
) -> Result<CudaStorage> {
    const OP: &str = "flora-qkv-heads";
    let name = format!("qkv_heads_{}", suffix(ps.dtype(), OP)?);
    let dev = ps.device();
    let product = typed::<T>(ps, pl, OP)?;
    let bias = view(bs, bl, OP)?;
    let total = pl.shape().elem_count();
    let mut out = uninit::<T>(dev, total)?;
    let [len, heads, head_dim, rows] = kernel_dims(shape);
    launch!(
        dev,
        &name,
        config(rows_by_column_groups(shape.rows(), 3 * shape.hidden())),
        &product,
        &bias,
        &mut out,
        &len,
        &heads,
        &head_dim,
        &rows
    )?;
    Ok(T::wrap_cuda_slice(out, dev.clone()))
}

/// The projections' gradient (rows, 3 hidden) from the gradients of q, k and v.
pub fn qkv_merge(
    grads: [(&CudaStorage, &Layout); 3],
    shape: Heads,
) -> Result<(CudaStorage, Shape)> {
    let storage = match grads[0].0.dtype() {
        DType::BF16 => merge_typed::<bf16>(grads, shape)?,
        _ => merge_typed::<f32>(grads, shape)?,
    };
    Ok((storage, Shape::from((shape.rows(), 3 * shape.hidden()))))
}

fn merge_typed<T: CudaDType + DeviceRepr>(
    [(qs, ql), (ks, kl), (vs, vl)]: [(&CudaStorage, &Layout); 3],
    shape: Heads,
) -> Result<CudaStorage> {
    const OP: &str = "flora-qkv-merge";
    let name = format!("qkv_merge_{}", suffix(qs.dtype(), OP)?);
    let dev = qs.device();
    let (dq, dk, dv) = (
        typed::<T>(qs, ql, OP)?,
        typed::<T>(ks, kl, OP)?,
        typed::<T>(vs, vl, OP)?,
    );
    let total = 3 * shape.rows() * shape.hidden();
    let mut out = uninit::<T>(dev, total)?;
    let [len, heads, head_dim, rows] = kernel_dims(shape);
    launch!(
        dev,
        &name,
        config(rows_by_column_groups(shape.rows(), 3 * shape.hidden())),
        &dq,
        &dk,
        &dv,
        &mut out,
        &len,
        &heads,
        &head_dim,
        &rows
    )?;
    Ok(T::wrap_cuda_slice(out, dev.clone()))
}

/// `x` (batch, len, hidden) into heads when `to_heads`, else out of them (`heads_split_*`,
/// `heads_merge_*`).
pub fn heads_layout(
    (xs, xl): (&CudaStorage, &Layout),
    shape: Heads,
    to_heads: bool,
) -> Result<CudaStorage> {
    match xs.dtype() {
        DType::BF16 => layout_typed::<bf16>((xs, xl), shape, to_heads),
        _ => layout_typed::<f32>((xs, xl), shape, to_heads),
    }
}

fn layout_typed<T: CudaDType + DeviceRepr>(
    (xs, xl): (&CudaStorage, &Layout),
    shape: Heads,
    to_heads: bool,
) -> Result<CudaStorage> {
    const OP: &str = "flora-heads-layout";
    let way = if to_heads { "split" } else { "merge" };
    let name = format!("heads_{way}_{}", suffix(xs.dtype(), OP)?);
    let dev = xs.device();
    let x = typed::<T>(xs, xl, OP)?;
    let mut out = uninit::<T>(dev, shape.rows() * shape.hidden())?;
    let [len, heads, head_dim, rows] = kernel_dims(shape);
    launch!(
        dev,
        &name,
        config(rows_by_column_groups(shape.rows(), shape.hidden())),
        &x,
        &mut out,
        &len,
        &heads,
        &head_dim,
        &rows
    )?;
    Ok(T::wrap_cuda_slice(out, dev.clone()))
}
