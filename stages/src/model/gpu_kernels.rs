//! flora's fused CUDA kernels (`kernels.cu`): compiled once per process with NVRTC (which the
//! `cuda` build links already), loaded into each device, and launched for the custom ops of
//! `fused.rs` and `gpu_ops.rs`. Compiling at run time keeps the build free of a second nvcc pass
//! and targets whichever card the program finds.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::{cudarc, CudaDevice};
use candle_core::{CudaStorage, DType, Layout, Result, Shape};

use super::launch_shapes as shapes;
pub use super::launch_shapes::chunks;

const SOURCE: &str = include_str!("kernels.cu");

/// The PTX of `kernels.cu` for `dev`'s compute capability, or NVRTC's log when it did not
/// compile. The flash attention kernels need the architecture: their tensor-core instructions
/// (bf16 `mma`) exist from sm_80, and NVRTC's default target is older.
pub fn ptx(dev: &CudaDevice) -> Result<&'static str> {
    type Compiled = std::result::Result<&'static str, String>;
    static PTX: OnceLock<Mutex<HashMap<(i32, i32), Compiled>>> = OnceLock::new();
    let capability = compute_capability(dev)?;
    let mut compiled = PTX
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::Msg("flora's CUDA kernels: a compile panicked".into()))?;
    let ptx = compiled.entry(capability).or_insert_with(|| {
        let (major, minor) = capability;
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let options = cudarc::nvrtc::CompileOptions {
            arch: Some(arch),
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(SOURCE, options)
            .map(|p| &*Box::leak(p.to_src().into_boxed_str()))
            .map_err(|e| format!("{e:?}"))
    });
    match ptx {
        Ok(p) => Ok(*p),
        Err(e) => candle_core::bail!("flora's CUDA kernels did not compile: {e}"),
    }
}

/// `dev`'s compute capability (major, minor).
pub fn compute_capability(dev: &CudaDevice) -> Result<(i32, i32)> {
    use candle_core::cuda_backend::WrapErr as _;
    dev.cuda_stream().context().compute_capability().w()
}

/// Launches kernel `$name` of `kernels.cu` on `$dev`'s stream with `$cfg` and the arguments, each
/// a reference that outlives the launch. Evaluates to `Result<()>`.
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg as _;
        use candle_core::cuda_backend::WrapErr as _;
        let func = $dev.get_or_load_custom_func(
            $name,
            "flora_kernels",
            $crate::model::gpu_kernels::ptx(&$dev)?,
        )?;
        let mut args = func.builder();
        $( args.arg($arg); )+
        // SAFETY: the kernels index within the lengths passed to them, which the callers derive
        // from the buffers they pass.
        #[allow(unsafe_code)]
        let launched = unsafe { args.launch($cfg) };
        launched.w().map(|_| ())
    }};
}
pub(crate) use launch;

/// A launch shape as cudarc's configuration.
pub fn config(shape: shapes::LaunchShape) -> LaunchConfig {
    let [gx, gy, gz] = shape.grid;
    let [bx, by, bz] = shape.block;
    LaunchConfig {
        grid_dim: (gx, gy, gz),
        block_dim: (bx, by, bz),
        shared_mem_bytes: 0,
    }
}

/// One thread per element of `len`.
pub fn elementwise(len: usize) -> LaunchConfig {
    config(shapes::elementwise(len))
}

/// One block per row of `n`.
pub fn per_row(rows: usize, n: usize) -> LaunchConfig {
    config(shapes::per_row(rows, n))
}

/// Blocks of (32, 8) threads over 32 columns by chunks of rows.
pub fn column_chunks(n: usize, chunks: usize) -> LaunchConfig {
    config(shapes::column_chunks(n, chunks))
}

/// The f32 view of a contiguous CUDA tensor's storage.
pub fn view<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    typed(s, l, op)
}

/// The view of a contiguous CUDA tensor's storage as `T`.
pub fn typed<'a, T: candle_core::cuda_backend::CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
    op: &str,
) -> Result<CudaView<'a, T>> {
    let slice = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => candle_core::bail!("{op}: expects a contiguous tensor"),
    }
}

/// A new buffer of `len` f32 on `dev`, every element written by the kernel that fills it.
pub fn output(dev: &CudaDevice, len: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: callers launch a kernel that writes all `len` elements before the buffer is read.
    #[allow(unsafe_code)]
    let buffer = unsafe { dev.alloc::<f32>(len) };
    buffer
}

/// The kernels' name suffix for `dtype`, or an error naming `op`.
pub fn suffix(dtype: DType, op: &str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        d => candle_core::bail!("{op}: expects f32 or bf16, got {d:?}"),
    }
}

/// A new buffer of `len` elements on `dev`, every one written by the kernel that fills it.
pub fn uninit<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: callers launch a kernel that writes all `len` elements before anything reads them.
    #[allow(unsafe_code)]
    let buffer = unsafe { dev.alloc::<T>(len) };
    buffer
}

/// A copy of a contiguous CUDA tensor's elements (f32 or bf16) in a storage of their own.
pub fn compact_copy(s: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("compact copy: expects a contiguous tensor")
    };
    match s.dtype() {
        candle_core::DType::F32 => copy_range::<f32>(s, a..b),
        candle_core::DType::BF16 => copy_range::<half::bf16>(s, a..b),
        d => candle_core::bail!("compact copy: expects f32 or bf16, got {d:?}"),
    }
}

/// Elements `range` of a CUDA storage of `T`, copied on the device.
fn copy_range<T: candle_core::cuda_backend::CudaDType + DeviceRepr>(
    s: &CudaStorage,
    range: std::ops::Range<usize>,
) -> Result<CudaStorage> {
    let dev = s.device();
    let src = s.as_cuda_slice::<T>()?.slice(range.clone());
    // SAFETY: the copy below writes every element before anything reads the buffer.
    #[allow(unsafe_code)]
    let mut out = unsafe { dev.alloc::<T>(range.len()) }?;
    dev.memcpy_dtod(&src, &mut out)?;
    Ok(T::wrap_cuda_slice(out, dev.clone()))
}

/// Wraps a filled buffer as an op's result.
pub fn result(dev: &CudaDevice, y: CudaSlice<f32>, shape: Shape) -> (CudaStorage, Shape) {
    (CudaStorage::wrap_cuda_slice(y, dev.clone()), shape)
}

/// Column sums of a (rows, n) buffer into `out[offset..offset + n]`, in a fixed order.
pub fn column_sums(
    dev: &CudaDevice,
    g: &CudaView<'_, f32>,
    rows: usize,
    n: usize,
    out: &mut CudaSlice<f32>,
    offset: usize,
) -> Result<()> {
    let (per, count) = chunks(rows);
    let mut partial = output(dev, count * n)?;
    let (rows_i, n_i, per_i) = (rows as i32, n as i32, per as i32);
    launch!(
        dev,
        "col_sum_chunks",
        column_chunks(n, count),
        g,
        &mut partial,
        &rows_i,
        &n_i,
        &per_i
    )?;
    sum_chunks(dev, &partial, out, offset, n, count)
}

/// `out[offset + j]` = the sum over `chunks` rows of `partial` (chunks x width) at column j.
pub fn sum_chunks(
    dev: &CudaDevice,
    partial: &CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
    offset: usize,
    width: usize,
    chunks: usize,
) -> Result<()> {
    let (offset, width_i, chunks_i) = (offset as u64, width as i32, chunks as i32);
    launch!(
        dev,
        "sum_chunks",
        elementwise(width),
        partial,
        out,
        &offset,
        &width_i,
        &chunks_i
    )
}
