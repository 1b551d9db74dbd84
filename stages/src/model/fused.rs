//! Fused CPU kernels, with their backward passes, for the costliest elementwise pieces of a
//! training step: LayerNorm, softmax over the last dimension and GELU (erf form).
//!
//! Built as candle custom ops: each replaces a chain of generic ops (a composite LayerNorm and its
//! backward are about 34 of them, each a full pass with broadcasting) by one pass over contiguous
//! rows per direction, split across threads. On the paper's model they took more than half of a
//! CPU training step. They run for f32 tensors on the CPU; other devices and types keep the
//! differentiable compositions in `layers.rs`, against which the tests here check them.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::second_result::SecondResult;

/// Rows handed to a thread at a time.
const ROWS_PER_TASK: usize = 32;

/// Whether the fused kernels apply to `t`: f32 on the CPU, or on a CUDA GPU (`kernels.cu`).
pub fn applies(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && (t.device().is_cpu() || t.device().is_cuda())
}

/// The f32 data of a contiguous CPU tensor.
pub(crate) fn data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expects f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: expects a contiguous tensor"),
    }
}

/// The elements of a contiguous CPU tensor as `T` (f32, bf16, ...).
pub(crate) fn elems<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    let all = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("{op}: expects a contiguous tensor"),
    }
}

/// A CPU f32 tensor's storage, held for reading (by a custom op's backward pass, which gets
/// tensors rather than storage).
pub(crate) struct Held<'a> {
    guard: candle_core::StorageRef<'a>,
    range: std::ops::Range<usize>,
}

impl Held<'_> {
    /// The tensor's elements, in order.
    pub(crate) fn slice(&self) -> &[f32] {
        match &*self.guard {
            candle_core::Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
            _ => unreachable!("checked by `hold`"),
        }
    }
}

/// Holds `t`, a contiguous f32 tensor on the CPU, for reading.
pub(crate) fn hold<'a>(t: &'a Tensor, op: &str) -> Result<Held<'a>> {
    let (guard, layout) = t.storage_and_layout();
    let range = match (&*guard, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) => a..b,
        _ => candle_core::bail!("{op}: expects a contiguous f32 tensor on the CPU"),
    };
    Ok(Held { guard, range })
}

/// Runs `f` on the elements of `t`, a contiguous f32 tensor on the CPU, in place: the tensor's
/// own storage, which every clone of `t` shares (a `Var`'s, an optimizer's moment), written
/// without a copy or a fresh allocation.
pub(crate) fn modify<R>(
    t: &Tensor,
    op: &'static str,
    f: impl FnOnce(&mut [f32]) -> R,
) -> Result<R> {
    let modify = Modify {
        op,
        f: std::cell::RefCell::new(Some(f)),
        result: std::cell::RefCell::new(None),
    };
    t.inplace_op1(&modify)?;
    let result = modify.result.into_inner();
    result.ok_or_else(|| candle_core::Error::Msg(format!("{op}: expects an f32 tensor on the CPU")))
}

/// [`modify`]'s in-place op: `f`, run once on the storage, and what it returned.
struct Modify<F, R> {
    op: &'static str,
    f: std::cell::RefCell<Option<F>>,
    result: std::cell::RefCell<Option<R>>,
}

impl<F: FnOnce(&mut [f32]) -> R, R> candle_core::InplaceOp1 for Modify<F, R> {
    fn name(&self) -> &'static str {
        self.op
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("{}: expects f32, got {:?}", self.op, s.dtype())
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: expects a contiguous tensor", self.op)
        };
        if let Some(f) = self.f.borrow_mut().take() {
            *self.result.borrow_mut() = Some(f(&mut v[a..b]));
        }
        Ok(())
    }
}

/// The length of a layout's last dimension (rows of it are what row ops work on).
pub(crate) fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

/// e^x for f32 without a call into libm, so that loops over it vectorise: x = n ln 2 + r with
/// |r| <= ln 2 / 2 (Cody and Waite's two-part ln 2), e^r by its degree-6 Taylor polynomial, and
/// 2^n put into the exponent bits. Relative error below 3e-7 (tested); 0 below -87.3, where f32
/// has no normal result, and capped at 88.
#[inline]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 x 2^23 rounds to the nearest integer (ties to even) and leaves it in the low
    // mantissa bits: no call to `roundf`, so loops over `exp` vectorise.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let n = shifted.to_bits().wrapping_sub(SHIFTER.to_bits());
    p * f32::from_bits(n.wrapping_add(127) << 23)
}

/// Φ(x) and φ(x): the standard normal CDF and density. Φ comes from erf by Abramowitz and Stegun's
/// formula 7.1.26 (absolute error below 1.5e-7, under f32's resolution near 1), which shares its
/// exponential with φ: one `exp` per element instead of a series for erf and another for φ.
#[inline]
fn phi(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let e = exp(-0.5 * x * x);
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let erf = 1.0 - poly * e;
    let erf = if x < 0.0 { -erf } else { erf };
    (0.5 * (1.0 + erf), e * 0.398_942_3)
}

/// GELU(x) = x Φ(x) and its derivative Φ(x) + x φ(x).
#[inline]
pub(crate) fn gelu_and_slope(x: f32) -> (f32, f32) {
    let (cdf, pdf) = phi(x);
    (x * cdf, cdf + x * pdf)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "flora-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(y, x)| {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = gelu_and_slope(x).0;
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::gelu(s, l)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

/// grad x GELU'(x), GELU'(x) = Φ(x) + x φ(x).
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "flora-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(s1, l1, self.name())?;
        let g = data(s2, l2, self.name())?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(4096)
            .zip(x.par_chunks(4096).zip(g.par_chunks(4096)))
            .for_each(|(d, (x, g))| {
                for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                    *d = g * gelu_and_slope(x).1;
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::gelu_grad(s1, l1, s2, l2)
    }
}

/// Softmax of one row, in place.
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / row.iter().sum::<f32>();
    row.iter_mut().for_each(|v| *v *= inv);
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "flora-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(s, l, self.name())?;
        let n = last_dim(l);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n * ROWS_PER_TASK)
            .zip(x.par_chunks(n * ROWS_PER_TASK))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_mut(n).zip(x.chunks(n)) {
                    y.copy_from_slice(x);
                    softmax_in_place(y);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::softmax(s, l)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// dx = y (g - sum(g y)) per row, from the softmax's output y.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "flora-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = data(s1, l1, self.name())?;
        let g = data(s2, l2, self.name())?;
        let n = last_dim(l1);
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(n * ROWS_PER_TASK)
            .zip(
                y.par_chunks(n * ROWS_PER_TASK)
                    .zip(g.par_chunks(n * ROWS_PER_TASK)),
            )
            .for_each(|(d, (y, g))| {
                for ((d, y), g) in d.chunks_mut(n).zip(y.chunks(n)).zip(g.chunks(n)) {
                    let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                    for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                        *d = y * (g - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::softmax_grad(s1, l1, s2, l2)
    }
}

/// LayerNorm of each row of `x` (rows of `w.len()`), in parallel.
pub(crate) fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f64) -> Vec<f32> {
    let n = w.len().max(1);
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(x.par_chunks(n * ROWS_PER_TASK))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(n).zip(x.chunks(n)) {
                let (mean, rstd) = moments(x, eps);
                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                    *y = (x - mean) * rstd * w + b;
                }
            }
        });
    y
}

/// The backward pass of [`layer_norm_rows`] from its input `xs`, weight `ws` and the output's
/// gradient `gs`: dx into `dx`, and dw and db (each task's partial sums added in task order, so
/// the result does not depend on scheduling).
pub(crate) fn layer_norm_rows_backward(
    xs: &[f32],
    ws: &[f32],
    gs: &[f32],
    eps: f64,
    dx: &mut [f32],
    (dw, db): (&mut [f32], &mut [f32]),
) {
    let n = ws.len().max(1);
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(n * ROWS_PER_TASK)
        .zip(
            xs.par_chunks(n * ROWS_PER_TASK)
                .zip(gs.par_chunks(n * ROWS_PER_TASK)),
        )
        .map(|(d, (x, g))| {
            let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
            for ((d, x), g) in d.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
                let (mean, rstd) = moments(x, eps);
                let (mut sum_gw, mut sum_gw_xhat) = (0f32, 0f32);
                for j in 0..n {
                    let xhat = (x[j] - mean) * rstd;
                    let gw = g[j] * ws[j];
                    sum_gw += gw;
                    sum_gw_xhat += gw * xhat;
                    dw[j] += g[j] * xhat;
                    db[j] += g[j];
                }
                let (m1, m2) = (sum_gw / n as f32, sum_gw_xhat / n as f32);
                for j in 0..n {
                    let xhat = (x[j] - mean) * rstd;
                    d[j] = rstd * (g[j] * ws[j] - m1 - xhat * m2);
                }
            }
            (dw, db)
        })
        .collect();
    dw.fill(0.0);
    db.fill(0.0);
    for (pw, pb) in partial {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
}

struct LayerNorm {
    eps: f64,
    /// The step profile's label for the backward pass.
    profile_label: Option<String>,
}

/// Mean and 1/sqrt(var + eps) of one row, accumulated in f64.
fn moments(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

impl candle_core::CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "flora-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(s1, l1, self.name())?;
        let w = data(s2, l2, self.name())?;
        let b = data(s3, l3, self.name())?;
        let n = last_dim(l1);
        if w.len() != n || b.len() != n {
            candle_core::bail!(
                "{}: weight {} and bias {} for rows of {n}",
                self.name(),
                w.len(),
                b.len()
            );
        }
        let y = layer_norm_rows(x, w, b, self.eps);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::layer_norm([(s1, l1), (s2, l2), (s3, l3)], self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = super::step_profile::backward_region(&self.profile_label, || {
            layer_norm_backward(x, w, grad, self.eps)
        })?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// LayerNorm's gradients from its input x, weight w and the output's gradient g (plus `extra`, a
/// second gradient of the same output, f32 or bf16, where there is one), packed in one vector (a
/// custom op has one result): dx (x's elements), then dw and db.
struct LayerNormGrad {
    eps: f64,
    extra: Option<Tensor>,
    /// The dense layer's gradient to write beside dx, if any, and where it is left.
    to: Option<GradTo>,
    second: SecondResult,
}

/// The gradient before a dense layer whose output, through its dropout, a residual sum took
/// (`residual_norm.rs`), written by the backward pass of that sum's LayerNorm beside its own:
/// LayerNorm's input gradient through the dropout at `p` under `seed` (none at 0), in `dtype`,
/// the type the layer's products read (f32 or bf16).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradTo {
    /// Dropout's rate (0: none).
    pub p: f32,
    /// Dropout's seed, the forward pass's.
    pub seed: u64,
    /// The products' type.
    pub dtype: DType,
}

impl LayerNormGrad {
    /// `gs` plus the extra gradient on the CPU, or `None` without one.
    fn total_on_cpu(&self, gs: &[f32]) -> Result<Option<Vec<f32>>> {
        let Some(extra) = &self.extra else {
            return Ok(None);
        };
        let op = candle_core::CustomOp3::name(self);
        let (guard, layout) = extra.storage_and_layout();
        let candle_core::Storage::Cpu(s) = &*guard else {
            candle_core::bail!("{op}: the second gradient is not on the CPU")
        };
        let values: Vec<f32> = match s {
            CpuStorage::F32(_) => elems::<f32>(s, layout, op)?.to_vec(),
            CpuStorage::BF16(_) => elems::<half::bf16>(s, layout, op)?
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            s => candle_core::bail!("{op}: a second gradient of {:?}", s.dtype()),
        };
        if values.len() != gs.len() {
            candle_core::bail!(
                "{op}: a second gradient of {} elements for {}",
                values.len(),
                gs.len()
            );
        }
        Ok(Some(gs.iter().zip(values).map(|(g, e)| g + e).collect()))
    }
}

impl candle_core::CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "flora-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = data(s1, l1, self.name())?;
        let ws = data(s2, l2, self.name())?;
        let gs = data(s3, l3, self.name())?;
        let total = self.total_on_cpu(gs)?;
        let gs = total.as_deref().unwrap_or(gs);
        let (n, len) = (ws.len(), xs.len());
        let mut packed = vec![0f32; len + 2 * n];
        let (dx, sums) = packed.split_at_mut(len);
        let (dw, db) = sums.split_at_mut(n);
        layer_norm_rows_backward(xs, ws, gs, self.eps, dx, (dw, db));
        if let Some(to) = self.to {
            let dz = match to.dtype {
                DType::BF16 => CpuStorage::BF16(dropped_copy(dx, to)),
                _ => CpuStorage::F32(dropped_copy(dx, to)),
            };
            self.second.put_cpu(dz, l1.shape().clone());
        }
        Ok((CpuStorage::F32(packed), Shape::from(len + 2 * n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let inputs = [(s1, l1), (s2, l2), (s3, l3)];
        let guarded = self.extra.as_ref().map(Tensor::storage_and_layout);
        let extra = match &guarded {
            None => None,
            Some((guard, layout)) => match &**guard {
                candle_core::Storage::Cuda(e) => Some((e, *layout)),
                _ => candle_core::bail!("{}: the second gradient is not on the GPU", self.name()),
            },
        };
        let (packed, dz) = super::fused_cuda::layer_norm_grad(inputs, self.eps, extra, self.to)?;
        if let Some(dz) = dz {
            self.second.put_cuda(dz, l1.shape().clone());
        }
        Ok(packed)
    }
}

/// LayerNorm over the last dimension, fused (see [`applies`]).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm {
            eps,
            profile_label: super::step_profile::mirror(),
        },
    )
}

/// LayerNorm's gradients (dx, dw, db) from its input `x`, its weight `w` and its output's
/// gradient, fused (see [`applies`]), recording nothing for autograd.
pub fn layer_norm_backward(x: &Tensor, w: &Tensor, grad: &Tensor, eps: f64) -> Result<[Tensor; 3]> {
    layer_norm_backward_plus(x, w, grad, None, eps)
}

/// [`layer_norm_backward`] for an output with two gradients, `grad` (f32) and `extra` (f32 or
/// bf16; where the output feeds both a residual and a product), added inside the pass that reads
/// them instead of in one of their own.
pub fn layer_norm_backward_plus(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    extra: Option<&Tensor>,
    eps: f64,
) -> Result<[Tensor; 3]> {
    Ok(layer_norm_grad(x, w, grad, extra, eps, None)?.0)
}

/// [`layer_norm_backward_plus`] that also writes the gradient before the dense layer whose
/// output, through its dropout, went into `x` (see [`GradTo`]), in the pass that writes dx:
/// ([dx, dw, db], that gradient in `to.dtype`). Where it equals dx (f32, no dropout), dx itself.
pub fn layer_norm_backward_to(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    extra: Option<&Tensor>,
    eps: f64,
    to: GradTo,
) -> Result<([Tensor; 3], Tensor)> {
    if !matches!(to.dtype, DType::F32 | DType::BF16) {
        candle_core::bail!(
            "flora-layer-norm-grad: a dense layer's gradient in {:?}",
            to.dtype
        );
    }
    if to.dtype == DType::F32 && to.p <= 0.0 {
        let grads = layer_norm_backward_plus(x, w, grad, extra, eps)?;
        let dz = grads[0].clone();
        return Ok((grads, dz));
    }
    match layer_norm_grad(x, w, grad, extra, eps, Some(to))? {
        (grads, Some(dz)) => Ok((grads, dz)),
        _ => candle_core::bail!("flora-layer-norm-grad: the pass left no dense layer's gradient"),
    }
}

/// LayerNorm's gradients through [`LayerNormGrad`], with its second result where `to` asks.
fn layer_norm_grad(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    extra: Option<&Tensor>,
    eps: f64,
    to: Option<GradTo>,
) -> Result<([Tensor; 3], Option<Tensor>)> {
    if let Some(e) = extra {
        if e.dims() != grad.dims() || !matches!(e.dtype(), DType::F32 | DType::BF16) {
            candle_core::bail!(
                "flora-layer-norm-grad: a second gradient of {:?} {:?} for {:?}",
                e.dims(),
                e.dtype(),
                grad.dims()
            );
        }
    }
    let (len, n) = (x.elem_count(), w.elem_count());
    let op = LayerNormGrad {
        eps,
        extra: extra.map(Tensor::contiguous).transpose()?,
        to,
        second: SecondResult::default(),
    };
    let packed = x
        .contiguous()?
        .apply_op3_no_bwd(&w.contiguous()?, &grad.contiguous()?, &op)?;
    let dz = match to {
        Some(_) => Some(op.second.tensor(x)?.reshape(x.shape())?),
        None => None,
    };
    let grads = [
        packed.narrow(0, 0, len)?.reshape(x.shape())?,
        packed.narrow(0, len, n)?.reshape(w.shape())?,
        packed.narrow(0, len + n, n)?.reshape(w.shape())?,
    ];
    Ok((grads, dz))
}

/// dx through `to`'s dropout, in `T`: `dense_epilogue::dropout_to`'s arithmetic on the CPU.
fn dropped_copy<T: super::attention_probs::Elem>(dx: &[f32], to: GradTo) -> Vec<T> {
    /// Elements handed to a thread at a time.
    const CHUNK: usize = 4096;
    let mut dz = vec![T::put(0.0); dx.len()];
    dz.par_chunks_mut(CHUNK)
        .zip(dx.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (y, g))| {
            super::dense_epilogue::dropout_to_from(g, to.p, to.seed, c * CHUNK, y)
        });
    dz
}

/// Softmax over the last dimension, fused (see [`applies`]).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// GELU, erf form, fused (see [`applies`]).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

/// Softmax's input gradient from its output `y` and the output's gradient: y (g - sum(g y)),
/// fused (see [`applies`]), recording nothing for autograd.
pub fn softmax_grad(y: &Tensor, grad: &Tensor) -> Result<Tensor> {
    y.contiguous()?
        .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)
}

/// `grad` x GELU'(`x`), fused (see [`applies`]), recording nothing for autograd.
pub fn gelu_grad(x: &Tensor, grad: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers;
    use crate::testing::{max_abs_diff, random_var};
    use candle_core::Var;

    fn random(shape: &[usize], seed: u64) -> Var {
        random_var(shape, 1.5, seed)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs_diff(a, b) as f32
    }

    /// A weighted sum, so that every output element gets a different gradient.
    fn loss(y: &Tensor, weights: &Tensor) -> Tensor {
        (y * weights).unwrap().sum_all().unwrap()
    }

    #[test]
    fn layer_norm_matches_the_composition_forward_and_backward() {
        let (x, w, b) = (random(&[3, 5, 48], 1), random(&[48], 2), random(&[48], 3));
        let weights = random(&[3, 5, 48], 4);
        let fused = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        let plain = layers::layer_norm_composite(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)
            .unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);
        let gf = loss(&fused, weights.as_tensor()).backward().unwrap();
        let gp = loss(&plain, weights.as_tensor()).backward().unwrap();
        for v in [&x, &w, &b] {
            let (a, e) = (gf.get(v).unwrap(), gp.get(v).unwrap());
            assert!(
                max_diff(a, e) < 1e-4,
                "gradient differs by {}",
                max_diff(a, e)
            );
        }
    }

    /// A one-input op against its reference, forward and backward.
    fn check_unary(
        shape: &[usize],
        ours: fn(&Tensor) -> Result<Tensor>,
        reference: fn(&Tensor) -> Result<Tensor>,
        tolerance: (f32, f32),
    ) {
        let x = random(shape, 5);
        let weights = random(shape, 6);
        let fused = ours(x.as_tensor()).unwrap();
        let plain = reference(x.as_tensor()).unwrap();
        assert!(max_diff(&fused, &plain) < tolerance.0);
        let gf = loss(&fused, weights.as_tensor()).backward().unwrap();
        let gp = loss(&plain, weights.as_tensor()).backward().unwrap();
        let (a, e) = (gf.get(&x).unwrap(), gp.get(&x).unwrap());
        assert!(
            max_diff(a, e) < tolerance.1,
            "gradient differs by {}",
            max_diff(a, e)
        );
    }

    #[test]
    fn softmax_matches_the_composition_forward_and_backward() {
        check_unary(
            &[2, 3, 7, 40],
            softmax,
            layers::softmax_composite,
            (1e-6, 1e-5),
        );
    }

    #[test]
    fn gelu_matches_candle_forward_and_backward() {
        check_unary(&[4, 33, 17], gelu, |x| x.gelu_erf(), (1e-5, 1e-4));
    }

    #[test]
    fn exp_is_accurate_over_the_range_of_f32() {
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert!(exp(-200.0) < 1e-37 && exp(200.0).is_finite());
    }

    #[test]
    fn the_normal_cdf_matches_erf_and_the_density_its_formula() {
        for i in -4000..=4000 {
            let x = i as f32 / 500.0;
            let (cdf, pdf) = phi(x);
            let want = 0.5 * (1.0 + candle_core::cpu::erf::erf_f64(x as f64 / 2f64.sqrt()));
            assert!(
                (cdf as f64 - want).abs() < 3e-7,
                "Φ({x}) = {cdf}, want {want}"
            );
            let want = (-0.5 * (x as f64).powi(2)).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!(
                (pdf as f64 - want).abs() < 1e-7,
                "φ({x}) = {pdf}, want {want}"
            );
        }
    }

    #[test]
    fn non_contiguous_input_is_handled() {
        let x = random(&[6, 10], 9);
        let t = x.as_tensor().t().unwrap();
        let fused = softmax(&t).unwrap();
        let plain = layers::softmax_composite(&t.contiguous().unwrap()).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-6);
    }
}
