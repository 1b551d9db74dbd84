//! The CUDA side of `dense_epilogue.rs`: `kernels.cu`'s `bias_epilogue_*`, `bias_gelu_grad_*`,
//! `dropout_to_bf16` and `col_sum_chunks_bf16`, in f32 or bf16 as the product is.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, DType, Layout, Result, Shape};
use half::bf16;

use super::dense::Epilogue;
use super::fused::last_dim;
use super::gpu_kernels::{chunks, config, launch, output, result, sum_chunks, typed, uninit, view};
use super::launch_shapes::{column_group_chunks, element_groups, rows_by_column_groups};

/// The bias and the epilogue after a product, into `out` (f32, or bf16 from a bf16 product).
pub fn bias_epilogue(
    (ps, pl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
    epilogue: Epilogue,
    out: DType,
) -> Result<(CudaStorage, Shape)> {
    let inputs = ((ps, pl), (bs, bl));
    match (ps.dtype(), out) {
        (DType::BF16, DType::BF16) => {
            epilogue_typed::<bf16, bf16>("bias_epilogue_bf16_to_bf16", inputs, epilogue)
        }
        (DType::BF16, _) => epilogue_typed::<bf16, f32>("bias_epilogue_bf16", inputs, epilogue),
        (DType::F32, _) => epilogue_typed::<f32, f32>("bias_epilogue_f32", inputs, epilogue),
        (d, _) => candle_core::bail!("flora-bias-epilogue: a product of {d:?}"),
    }
}

/// Launches epilogue kernel `name` on a product of `T` into `U`.
fn epilogue_typed<T: CudaDType + DeviceRepr, U: CudaDType + DeviceRepr>(
    name: &str,
    ((ps, pl), (bs, bl)): ((&CudaStorage, &Layout), (&CudaStorage, &Layout)),
    epilogue: Epilogue,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "flora-bias-epilogue";
    let dev = ps.device();
    let product = typed::<T>(ps, pl, OP)?;
    let bias = view(bs, bl, OP)?;
    let (len, n) = (pl.shape().elem_count(), last_dim(pl));
    let mut y = uninit::<U>(dev, len)?;
    let n_i = n as i32;
    let (gelu, p, seed) = match epilogue {
        Epilogue::None => (0i32, 0f32, 0u64),
        Epilogue::Gelu => (1, 0.0, 0),
        Epilogue::Dropout { rate, seed } => (0, rate.max(0.0), seed),
    };
    launch!(
        dev,
        name,
        config(rows_by_column_groups(len / n, n)),
        &product,
        &bias,
        &mut y,
        &n_i,
        &gelu,
        &p,
        &seed
    )?;
    Ok((U::wrap_cuda_slice(y, dev.clone()), pl.shape().clone()))
}

/// The gradient before a GELU epilogue, in the product's type.
pub fn bias_gelu_grad(
    (ps, pl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let inputs = ((ps, pl), (bs, bl), (gs, gl));
    match (ps.dtype(), gs.dtype()) {
        (DType::BF16, DType::BF16) => {
            gelu_grad_typed::<bf16, bf16>("bias_gelu_grad_bf16_from_bf16", inputs)
        }
        (DType::BF16, _) => gelu_grad_typed::<bf16, f32>("bias_gelu_grad_bf16", inputs),
        (DType::F32, _) => gelu_grad_typed::<f32, f32>("bias_gelu_grad_f32", inputs),
        (d, _) => candle_core::bail!("flora-bias-gelu-grad: a product of {d:?}"),
    }
}

/// The storages and layouts of a product, a bias and a gradient.
type ThreeInputs<'a> = (
    (&'a CudaStorage, &'a Layout),
    (&'a CudaStorage, &'a Layout),
    (&'a CudaStorage, &'a Layout),
);

/// Launches GELU-gradient kernel `name` on a product of `T` and a gradient of `G`.
fn gelu_grad_typed<T: CudaDType + DeviceRepr, G: CudaDType + DeviceRepr>(
    name: &str,
    ((ps, pl), (bs, bl), (gs, gl)): ThreeInputs<'_>,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "flora-bias-gelu-grad";
    let dev = ps.device();
    let product = typed::<T>(ps, pl, OP)?;
    let bias = view(bs, bl, OP)?;
    let g = typed::<G>(gs, gl, OP)?;
    let (len, n) = (pl.shape().elem_count(), last_dim(pl));
    let mut dz = uninit::<T>(dev, len)?;
    let n_i = n as i32;
    launch!(
        dev,
        name,
        config(rows_by_column_groups(len / n, n)),
        &product,
        &bias,
        &g,
        &mut dz,
        &n_i
    )?;
    Ok((T::wrap_cuda_slice(dz, dev.clone()), pl.shape().clone()))
}

/// A gradient through dropout (its mask redrawn), cast to bf16.
pub fn dropout_to_bf16(
    s: &CudaStorage,
    l: &Layout,
    p: f32,
    seed: u64,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "flora-dropout-to";
    let dev = s.device();
    let g = view(s, l, OP)?;
    let len = l.shape().elem_count();
    let mut y = uninit::<bf16>(dev, len)?;
    let len_u = len as u64;
    launch!(
        dev,
        "dropout_to_bf16",
        config(element_groups(len)),
        &g,
        &mut y,
        &p,
        &seed,
        &len_u
    )?;
    Ok((bf16::wrap_cuda_slice(y, dev.clone()), l.shape().clone()))
}

/// Column sums (f32) of a (rows, n) bf16 tensor: two kernels, in a fixed order.
pub fn col_sum_bf16(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "flora-col-sum";
    let dev = s.device();
    let g = typed::<bf16>(s, l, OP)?;
    let (len, n) = (l.shape().elem_count(), last_dim(l));
    let rows = len / n.max(1);
    let (per, count) = chunks(rows);
    let mut partial = output(dev, count * n)?;
    let (rows_i, n_i, per_i) = (rows as i32, n as i32, per as i32);
    launch!(
        dev,
        "col_sum_chunks_bf16",
        config(column_group_chunks(n, count)),
        &g,
        &mut partial,
        &rows_i,
        &n_i,
        &per_i
    )?;
    let mut out = output(dev, n)?;
    sum_chunks(dev, &partial, &mut out, 0, n, count)?;
    Ok(result(dev, out, Shape::from(n)))
}
