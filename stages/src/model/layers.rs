//! Building blocks with a backward pass on every path: LayerNorm, softmax and GELU (fused with
//! their backward for f32 on the CPU and on CUDA GPUs, in `fused.rs`; otherwise compositions of
//! differentiable candle ops, since candle-nn 0.11's fused versions have no backward), row
//! gathers and bias adds (custom ops on CUDA GPUs, `gpu_ops.rs`), seeded dropout, and seeded
//! initialisation (candle's CPU generator cannot be seeded).

use candle_core::{DType, Device, Result, Tensor, D};

use crate::rng::Rng;

/// Uniform in [0, 1).
pub fn unit(rng: &mut Rng) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32
}

/// A standard normal draw (Box-Muller).
pub fn normal(rng: &mut Rng) -> f32 {
    let u1 = unit(rng).max(f32::MIN_POSITIVE);
    let u2 = unit(rng);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias. Fused for f32
/// (`fused.rs`), composed of differentiable ops otherwise.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if super::fused::applies(x) {
        return super::fused::layer_norm(x, weight, bias, eps);
    }
    layer_norm_composite(x, weight, bias, eps)
}

/// LayerNorm composed of differentiable ops (any device and type).
pub fn layer_norm_composite(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension. Fused for f32 (`fused.rs`), composed otherwise.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if super::fused::applies(x) {
        return super::fused::softmax(x);
    }
    softmax_composite(x)
}

/// GELU (erf form). Fused for f32 (`fused.rs`), candle's op otherwise.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if super::fused::applies(x) {
        return super::fused::gelu(x);
    }
    x.gelu_erf()
}

/// Softmax composed of differentiable ops; the max is subtracted for stability as a constant
/// (exact, since softmax ignores shifts) so that no gradient flows through it.
pub fn softmax_composite(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// log-softmax over the last dimension, the same way.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Inverted dropout with a seeded mask; identity when `rng` is `None` or `p` is 0. For f32, on the
/// CPU and on a GPU, the mask is a function of a seed drawn from `rng` and the element's index
/// (`gpu_ops::dropout`, whose backward pass recomputes it; on a GPU no mask crosses the bus). For
/// other types it is drawn from `rng` on the CPU and from the device's generator (cuRAND) on a
/// GPU, which [`seed_device`] seeds from `rng` once per forward pass. Runs stay reproducible on
/// one kind of device.
pub fn dropout(x: &Tensor, p: f32, rng: Option<&mut Rng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if x.dtype() == DType::F32 && (x.device().is_cpu() || super::gpu_ops::applies(x)) {
        return super::gpu_ops::dropout(x, p, rng.next_u64());
    }
    random_dropout(x, p, rng)
}

/// [`dropout`] with the seed already drawn: the seeded op for f32, else a mask drawn from a
/// generator seeded with `seed`.
pub fn dropout_with_seed(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if x.dtype() == DType::F32 && (x.device().is_cpu() || super::gpu_ops::applies(x)) {
        return super::gpu_ops::dropout(x, p, seed);
    }
    random_dropout(x, p, &mut Rng::new(seed))
}

/// Dropout with a mask drawn from `rng` (CPU) or the device's generator (GPU).
fn random_dropout(x: &Tensor, p: f32, rng: &mut Rng) -> Result<Tensor> {
    let scale = 1.0 / (1.0 - p) as f64;
    let device = x.device();
    if device.is_cpu() {
        let scale = scale as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if unit(rng) < p { 0.0 } else { scale })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), device)?.to_dtype(x.dtype())?;
        return x.mul(&mask);
    }
    let keep = Tensor::rand(0f32, 1f32, x.shape(), device)?
        .ge(p as f64)?
        .to_dtype(x.dtype())?;
    x.mul(&(keep * scale)?)
}

/// Rows of `table` picked by `ids` (u32, one dimension). On a CUDA GPU a custom op whose
/// backward pass scatters with atomic adds (`gpu_ops.rs`), else candle's `index_select`.
pub fn gather_rows(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if super::gpu_ops::applies(table) {
        return super::gpu_ops::gather_rows(table, ids);
    }
    table.index_select(ids, 0)
}

/// `x` (rows, n) + `bias` (n). On a CUDA GPU a custom op whose backward pass sums columns with
/// coalesced reads (`gpu_ops.rs`), else candle's broadcasting add.
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if super::gpu_ops::applies(x) {
        return super::gpu_ops::bias_add(x, bias);
    }
    x.broadcast_add(bias)
}

/// Seeds a GPU's generator from `rng` (dropout masks are drawn there); nothing on the CPU. Once
/// per forward pass: re-seeding re-creates cuRAND's generator.
pub fn seed_device(device: &Device, rng: Option<&mut Rng>) -> Result<()> {
    match rng {
        Some(rng) if !device.is_cpu() => device.set_seed(rng.next_u64()),
        _ => Ok(()),
    }
}

/// `a` x `b` (through OpenBLAS for f32 on the CPU: `blas.rs`), with the operands rounded to `compute` (bf16 for mixed precision: the matrix units'
/// fast path) and the product returned in f32; a plain f32 product when `compute` is f32. The
/// casts are differentiable, so gradients reach f32 master weights.
pub fn matmul(a: &Tensor, b: &Tensor, compute: DType) -> Result<Tensor> {
    if compute == DType::F32 {
        if super::blas::applies(a, b) {
            return super::blas::matmul(a, b);
        }
        return a.matmul(b);
    }
    a.to_dtype(compute)?
        .matmul(&b.to_dtype(compute)?)?
        .to_dtype(DType::F32)
}

/// The product of two tensors of one type, in that type (f32 through BLAS on the CPU); records
/// for autograd as [`matmul`] does.
pub fn product(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() == DType::F32 {
        return matmul(a, b, DType::F32);
    }
    a.matmul(b)
}

/// `t` in `dtype`, contiguous, in one copy (a cast of a strided view writes it in order), or none
/// when it already is.
pub fn contiguous_in(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        t.contiguous()
    } else {
        t.to_dtype(dtype)
    }
}

/// A tensor of normal(0, std) values from `rng`.
pub fn randn(rng: &mut Rng, shape: &[usize], std: f32, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| normal(rng) * std).collect();
    Tensor::from_vec(v, shape, device)?.to_dtype(DType::F32)
}
