//! Attention probabilities from raw scores, and the scores' gradient, as one op each in the
//! products' type (f32, or bf16 for mixed precision): the attached attention of GPUs and bf16
//! (`attention_attached.rs`) runs these between its matrix products.
//!
//! Composed, the forward pass is four passes over the (batch, heads, len, len) scores (scale,
//! key mask, softmax, dropout) plus casts around them in bf16; the backward pass is dropout's,
//! softmax's (three more) and the scale's. Here each direction is one pass that reads the scores
//! in their type and writes its results in it, with the arithmetic in f32. On a CUDA GPU the
//! passes are `kernels.cu`'s `attention_probs_*` kernels; on the CPU their twins below, which the
//! kernel emulator's tests compare them with.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::fused::elems;
use super::gpu_ops::{dropped, kept_grad};

/// An element type of the scores: f32, or bf16 widened to f32 for the arithmetic.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    /// The value as f32.
    fn get(self) -> f32;
    /// `v` rounded to this type (to nearest even for bf16).
    fn put(v: f32) -> Self;
}

impl Elem for f32 {
    fn get(self) -> f32 {
        self
    }
    fn put(v: f32) -> Self {
        v
    }
}

impl Elem for bf16 {
    fn get(self) -> f32 {
        self.to_f32()
    }
    fn put(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// The value of a dropped-out element `i` under `dropout`: `v / (1 - p)` if kept, else 0 (the
/// mask of `gpu_ops::dropout`).
fn through_dropout(v: f32, i: u64, dropout: Option<(f32, u64)>) -> f32 {
    match dropout {
        Some((p, seed)) => dropped(v, p, seed, i),
        None => v,
    }
}

/// One row of `attention_probs_rows` (kernels.cu): the probabilities of `scores` times `scale`
/// plus the additive `mask`, and with `dropout` their dropped-out copy (`dropped` is not written
/// without); `first` is the row's flat index.
pub(crate) fn probs_row<T: Elem>(
    scores: &[T],
    mask: &[f32],
    scale: f32,
    dropout: Option<(f32, u64)>,
    first: u64,
    (probs, dropped): (&mut [T], &mut [T]),
) {
    let x = |j: usize| scores[j].get() * scale + mask[j];
    let m = (0..scores.len()).map(x).fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = (0..scores.len()).map(|j| (x(j) - m).exp()).sum();
    let inv = 1.0 / sum;
    for j in 0..scores.len() {
        let y = (x(j) - m).exp() * inv;
        probs[j] = T::put(y);
        if dropout.is_some() {
            dropped[j] = T::put(through_dropout(y, first + j as u64, dropout));
        }
    }
}

/// One row of `attention_probs_grad_rows` (kernels.cu): the scores' gradient from the
/// probabilities and the gradient of their dropped-out copy `kept`, whose zeros are dropout's
/// mask at `rate` (where the probability is 0 too the mask makes no difference: the gradient is
/// multiplied by it).
pub(crate) fn probs_grad_row<T: Elem>(
    probs: &[T],
    kept: &[T],
    grad: &[T],
    scale: f32,
    rate: f32,
    dscores: &mut [T],
) {
    let g = |j: usize| kept_grad(grad[j].get(), kept[j].get(), rate);
    let s: f32 = (0..probs.len()).map(|j| g(j) * probs[j].get()).sum();
    for (j, d) in dscores.iter_mut().enumerate() {
        *d = T::put(scale * probs[j].get() * (g(j) - s));
    }
}

/// The probabilities of [`attention_probs`] and, with dropout, their dropped-out copy, packed as
/// (2, the scores' shape), else (1, the scores' shape): one tensor, so that the backward pass
/// takes both as one input.
#[derive(Debug)]
pub struct Probabilities {
    packed: Tensor,
}

impl Probabilities {
    /// The probabilities.
    pub fn probs(&self) -> Result<Tensor> {
        self.packed.get(0)
    }

    /// The probabilities through dropout (the probabilities themselves without dropout): what
    /// the context product reads.
    pub fn dropped(&self) -> Result<Tensor> {
        self.packed.get(self.packed.dim(0)? - 1)
    }
}

/// Softmax over the keys of `scores` (batch, heads, queries, keys; f32 or bf16, as the products
/// made them) times `scale` plus the additive `key_mask` (batch x keys elements, f32: 0, or a
/// large negative for padding); and inverted dropout of the result at `dropout`'s (rate, seed).
/// The probabilities and, with dropout, their dropped-out copy, both of the scores' type.
/// Records no gradient.
pub fn attention_probs(
    scores: &Tensor,
    key_mask: &Tensor,
    scale: f32,
    dropout: Option<(f32, u64)>,
) -> Result<Probabilities> {
    let (batch, _, _, keys) = scores.dims4()?;
    if key_mask.elem_count() != batch * keys || key_mask.dtype() != DType::F32 {
        candle_core::bail!(
            "flora-attention-probs: the key mask is {:?} {:?}, not {batch} x {keys} f32",
            key_mask.dims(),
            key_mask.dtype()
        );
    }
    let packed = scores.contiguous()?.apply_op2_no_bwd(
        &key_mask.contiguous()?,
        &AttentionProbs {
            scale,
            dropout: dropout.filter(|&(p, _)| p > 0.0),
        },
    )?;
    Ok(Probabilities { packed })
}

/// The gradient of [`attention_probs`]' scores from its result `probs` and the gradient `grad`
/// of the dropped-out probabilities (of their shape and type), with the same `scale` and dropout
/// `rate`. Dropout's mask is read from the dropped-out copy, not drawn again. Records no gradient.
pub fn attention_probs_grad(
    probs: &Probabilities,
    grad: &Tensor,
    scale: f32,
    rate: f32,
) -> Result<Tensor> {
    let packed = &probs.packed;
    if rate > 0.0 && packed.dim(0)? != 2 {
        candle_core::bail!(
            "flora-attention-probs-grad: dropout at {rate} but probabilities without dropout"
        );
    }
    if packed.dims()[1..] != *grad.dims() || packed.dtype() != grad.dtype() {
        candle_core::bail!(
            "flora-attention-probs-grad: probabilities {:?} {:?} and gradient {:?} {:?} differ",
            &packed.dims()[1..],
            packed.dtype(),
            grad.dims(),
            grad.dtype()
        );
    }
    packed.contiguous()?.apply_op2_no_bwd(
        &grad.contiguous()?,
        &AttentionProbsGrad {
            scale,
            rate: rate.max(0.0),
        },
    )
}

struct AttentionProbs {
    scale: f32,
    dropout: Option<(f32, u64)>,
}

impl AttentionProbs {
    fn cpu<T: Elem + candle_core::WithDType>(
        &self,
        scores: &[T],
        mask: &[f32],
        l: &Layout,
    ) -> Result<(Vec<T>, Shape)> {
        let (_, heads, queries, keys) = l.shape().dims4()?;
        let len = scores.len();
        // The dropped-out copy only with dropout: without, the context product reads probs.
        let copies = 1 + usize::from(self.dropout.is_some());
        let mut packed = vec![T::put(0.0); copies * len];
        let (probs, dropped) = packed.split_at_mut(len);
        let row = |r: usize, p: &mut [T], d: &mut [T]| {
            let b = r / (heads * queries);
            let first = r * keys;
            probs_row(
                &scores[first..first + keys],
                &mask[b * keys..(b + 1) * keys],
                self.scale,
                self.dropout,
                first as u64,
                (p, d),
            );
        };
        if dropped.is_empty() {
            let rows = probs.par_chunks_mut(keys).enumerate();
            rows.for_each(|(r, p)| row(r, p, &mut []));
        } else {
            let rows = probs.par_chunks_mut(keys).zip(dropped.par_chunks_mut(keys));
            rows.enumerate().for_each(|(r, (p, d))| row(r, p, d));
        }
        let mut dims = vec![copies];
        dims.extend_from_slice(l.dims());
        Ok((packed, Shape::from(dims)))
    }
}

impl CustomOp2 for AttentionProbs {
    fn name(&self) -> &'static str {
        "flora-attention-probs"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let mask = elems::<f32>(s2, l2, self.name())?;
        match s1 {
            CpuStorage::F32(_) => {
                let (v, s) = self.cpu(elems::<f32>(s1, l1, self.name())?, mask, l1)?;
                Ok((CpuStorage::F32(v), s))
            }
            CpuStorage::BF16(_) => {
                let (v, s) = self.cpu(elems::<bf16>(s1, l1, self.name())?, mask, l1)?;
                Ok((CpuStorage::BF16(v), s))
            }
            s => candle_core::bail!("{}: scores of {:?}", self.name(), s.dtype()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::attention_probs_cuda::attention_probs((s1, l1), (s2, l2), self.scale, self.dropout)
    }
}

struct AttentionProbsGrad {
    scale: f32,
    rate: f32,
}

impl AttentionProbsGrad {
    /// The scores' gradient from `packed` (the probabilities, then their dropped-out copy) and
    /// `grad`, rows of `n`.
    fn cpu<T: Elem + candle_core::WithDType>(&self, packed: &[T], grad: &[T], n: usize) -> Vec<T> {
        let (probs, kept) = packed.split_at(grad.len());
        // Without dropout there is no copy, and the rate of 0 reads none.
        let kept = if kept.is_empty() { probs } else { kept };
        let mut ds = vec![T::put(0.0); grad.len()];
        ds.par_chunks_mut(n).enumerate().for_each(|(r, d)| {
            let row = r * n..(r + 1) * n;
            probs_grad_row(
                &probs[row.clone()],
                &kept[row.clone()],
                &grad[row],
                self.scale,
                self.rate,
                d,
            );
        });
        ds
    }
}

impl CustomOp2 for AttentionProbsGrad {
    fn name(&self) -> &'static str {
        "flora-attention-probs-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = super::fused::last_dim(l1);
        let storage = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(self.cpu(
                elems::<f32>(s1, l1, self.name())?,
                elems::<f32>(s2, l2, self.name())?,
                n,
            )),
            (CpuStorage::BF16(_), CpuStorage::BF16(_)) => CpuStorage::BF16(self.cpu(
                elems::<bf16>(s1, l1, self.name())?,
                elems::<bf16>(s2, l2, self.name())?,
                n,
            )),
            (a, _) => candle_core::bail!("{}: probabilities of {:?}", self.name(), a.dtype()),
        };
        Ok((storage, l2.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::attention_probs_cuda::attention_probs_grad((s1, l1), (s2, l2), self.scale, self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::{dropout_with_seed, softmax};
    use crate::testing::{max_rel_diff, random_var};
    use candle_core::Device;

    /// The composed ops these replace, in f32: scale, mask, softmax, dropout.
    fn composed(scores: &Tensor, mask: &Tensor, scale: f32, dropout: Option<(f32, u64)>) -> Tensor {
        let (b, _, _, k) = scores.dims4().unwrap();
        let x = (scores.to_dtype(DType::F32).unwrap() * scale as f64)
            .unwrap()
            .broadcast_add(&mask.reshape((b, 1, 1, k)).unwrap())
            .unwrap();
        let y = softmax(&x).unwrap();
        match dropout {
            Some((p, seed)) => dropout_with_seed(&y, p, seed).unwrap(),
            None => y,
        }
    }

    fn key_mask(batch: usize, keys: usize) -> Tensor {
        // The second sequence's last three keys are padding.
        let m: Vec<f32> = (0..batch * keys)
            .map(|i| {
                if i / keys == 1 && i % keys >= keys - 3 {
                    -1e9
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(m, (batch, keys), &Device::Cpu).unwrap()
    }

    #[test]
    fn probabilities_match_scale_mask_softmax_and_dropout_in_f32_and_bf16() {
        let (b, h, q, k) = (3, 2, 5, 11);
        let scores = random_var(&[b, h, q, k], 3.0, 1).as_tensor().detach();
        let mask = key_mask(b, k);
        for dt in [DType::F32, DType::BF16] {
            let s = scores.to_dtype(dt).unwrap();
            for dropout in [None, Some((0.3, 7))] {
                let result = attention_probs(&s, &mask, 0.25, dropout).unwrap();
                // The dropped-out copy is made only with dropout.
                let copies = if dropout.is_some() { 2 } else { 1 };
                assert_eq!(result.packed.dim(0).unwrap(), copies, "{dt:?} {dropout:?}");
                let (probs, dropped) = (result.probs().unwrap(), result.dropped().unwrap());
                assert_eq!((probs.dtype(), probs.dims()), (dt, &[b, h, q, k][..]));
                assert_eq!((dropped.dtype(), dropped.dims()), (dt, &[b, h, q, k][..]));
                let want_p = composed(&s, &mask, 0.25, None);
                let want_d = composed(&s, &mask, 0.25, dropout);
                // bf16 results are the f32 ones rounded once.
                let tol = if dt == DType::F32 { 1e-6 } else { 4e-3 };
                let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                assert!(
                    max_rel_diff(&f(&probs), &want_p) < tol,
                    "{dt:?} {dropout:?}"
                );
                assert!(
                    max_rel_diff(&f(&dropped), &want_d) < tol,
                    "{dt:?} {dropout:?}"
                );
                // Padding keys get nothing.
                let padded = f(&probs).get(1).unwrap().narrow(2, k - 3, 3).unwrap();
                assert_eq!(
                    padded
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap(),
                    0.0
                );
            }
        }
    }

    #[test]
    fn the_scores_gradient_matches_autograd_through_the_composed_ops() {
        let (b, h, q, k) = (2, 3, 4, 9);
        let scores = random_var(&[b, h, q, k], 2.0, 2);
        let upstream = random_var(&[b, h, q, k], 1.0, 3).as_tensor().detach();
        let mask = key_mask(b, k);
        for dropout in [None, Some((0.25, 5))] {
            let y = composed(scores.as_tensor(), &mask, 0.5, dropout);
            let grads = (y * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let want = grads.get(scores.as_tensor()).unwrap();
            // Dropout's mask is read from the dropped-out copy here, drawn in `composed`: they
            // must agree, the padding keys' (probability 0, so a copy of 0 either way) included.
            let probs = attention_probs(&scores.as_tensor().detach(), &mask, 0.5, dropout).unwrap();
            let rate = dropout.map_or(0.0, |(p, _)| p);
            let got = attention_probs_grad(&probs, &upstream, 0.5, rate).unwrap();
            assert!(max_rel_diff(&got, want) < 1e-5, "{dropout:?}");
            // In bf16, the same from rounded probabilities and gradient, rounded once more.
            let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
            let rounded = Probabilities {
                packed: bf(&probs.packed),
            };
            let got = attention_probs_grad(&rounded, &bf(&upstream), 0.5, rate).unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            let d = max_rel_diff(&got.to_dtype(DType::F32).unwrap(), want);
            assert!(d < 2e-2, "bf16 {dropout:?}: {d}");
        }
    }

    #[test]
    fn mismatched_inputs_are_refused_with_their_shapes() {
        let scores = Tensor::zeros((2, 1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let mask = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let e = attention_probs(&scores, &mask, 1.0, None).unwrap_err();
        assert!(e.to_string().contains("not 2 x 4 f32"), "{e}");
        let g = Tensor::zeros((2, 1, 3, 4), DType::BF16, &Device::Cpu).unwrap();
        let probs = Probabilities {
            packed: Tensor::zeros((2, 2, 1, 3, 4), DType::F32, &Device::Cpu).unwrap(),
        };
        let e = attention_probs_grad(&probs, &g, 1.0, 0.1).unwrap_err();
        assert!(e.to_string().contains("differ"), "{e}");
        let g = Tensor::zeros((2, 1, 3, 5), DType::F32, &Device::Cpu).unwrap();
        let e = attention_probs_grad(&probs, &g, 1.0, 0.1).unwrap_err();
        assert!(
            e.to_string()
                .contains("[2, 1, 3, 4] F32 and gradient [2, 1, 3, 5]"),
            "{e}"
        );
        let no_keys_masked = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let without = attention_probs(&scores, &no_keys_masked, 1.0, None).unwrap();
        let g = Tensor::zeros((2, 1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let e = attention_probs_grad(&without, &g, 1.0, 0.1).unwrap_err();
        assert!(
            e.to_string().contains("probabilities without dropout"),
            "{e}"
        );
    }
}
