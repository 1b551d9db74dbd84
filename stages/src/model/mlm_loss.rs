//! The MLM loss over the vocabulary, one op per direction. The forward pass reads each logit of
//! the decoder's product once (in the product's type, f32 or bf16), adding the decoder's bias as
//! it goes, and gives each labelled position its loss, log-sum-exp and whether its argmax was
//! the label; the backward pass writes the logits' gradient, softmax minus the label's one-hot,
//! in one pass. Composed of candle's ops, the same loss cast the product to f32, added the bias,
//! and ran max, two subtractions, exp, sum, log, gather and argmax, each a pass over the logits,
//! and about as many again backwards: about 3 ms of an H200's 32 ms step at the paper's size
//! (benches/gpu/NOTES.md, run 7).
//!
//! The logits may carry padding columns past the vocabulary: [`decoder_weight`] pads the tied
//! word embeddings to a multiple of 8 rows on a GPU, so that the decoder's three products have
//! aligned rows and cuBLAS picks its fast kernels (for 5,005 columns it ran sm75 kernels at a
//! quarter of the card's rate). The padding is no part of the softmax and gets zero gradient.
//!
//! On a CUDA GPU the two passes are `kernels.cu`'s `mlm_xent_rows_*` and `mlm_xent_grad_*`; on
//! the CPU their twins below.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use half::bf16;
use rayon::prelude::*;

use super::attention_probs::Elem;
use super::fused::{elems, last_dim};

/// Rows of the logits (and of its gradient) padded to a multiple of this on a GPU.
pub const ALIGN: usize = 8;

/// The decoder's weight, tied to the word embeddings `emb` (vocab, hidden; f32), in `dtype`
/// (the products' type): on a CUDA GPU with zero rows added up to a multiple of [`ALIGN`], so
/// that the logits' rows are aligned (see the module's note); elsewhere as it is. Its gradient
/// flows back to `emb`'s real rows.
pub fn decoder_weight(emb: &Tensor, dtype: DType) -> Result<Tensor> {
    let w = emb.to_dtype(dtype)?;
    if emb.device().is_cuda() {
        return padded_rows(&w, ALIGN);
    }
    Ok(w)
}

/// `w` (rows, n) with zero rows added up to a multiple of `multiple` rows.
pub(crate) fn padded_rows(w: &Tensor, multiple: usize) -> Result<Tensor> {
    let (rows, n) = w.dims2()?;
    let padded = rows.next_multiple_of(multiple);
    if padded == rows {
        return Ok(w.clone());
    }
    let zeros = Tensor::zeros((padded - rows, n), w.dtype(), w.device())?;
    Tensor::cat(&[w, &zeros], 0)
}

/// The mean MLM loss of `logits` (rows, stride; f32 or bf16: the decoder's product, whose first
/// `bias.len()` columns are the vocabulary and the rest padding) with the decoder's `bias`
/// (vocab; f32) added, against one target token per row; and how many rows' argmax was their
/// target, as an f32 scalar on the logits' device that records no gradient.
pub fn cross_entropy(logits: &Tensor, bias: &Tensor, targets: &[u32]) -> Result<(Tensor, Tensor)> {
    let (rows, stride) = logits.dims2()?;
    let vocab = bias.dims1()?;
    if !matches!(logits.dtype(), DType::F32 | DType::BF16) || bias.dtype() != DType::F32 {
        candle_core::bail!(
            "the MLM loss takes f32 or bf16 logits and an f32 bias, not {:?} and {:?}",
            logits.dtype(),
            bias.dtype()
        );
    }
    if vocab > stride || targets.len() != rows {
        candle_core::bail!(
            "the MLM loss: {rows} rows of {stride} logits, a bias of {vocab} and {} targets",
            targets.len()
        );
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("the MLM label {t} is past the vocabulary of {vocab} tokens");
    }
    let targets = Tensor::from_slice(targets, rows, logits.device())?;
    let per_row =
        logits
            .contiguous()?
            .apply_op3(&bias.contiguous()?, &targets, CrossEntropyRows)?;
    let loss = per_row.narrow(1, 0, 1)?.mean_all()?;
    let correct = per_row.narrow(1, 3, 1)?.detach().sum_all()?;
    Ok((loss, correct))
}

/// A row's scan, as `kernels.cu`'s `RowScan`: the largest logit, the sum of exp(x - largest),
/// and the first column holding the largest.
#[derive(Clone, Copy)]
struct RowScan {
    m: f32,
    s: f32,
    a: usize,
}

/// `mlm_xent_rows_at`'s scan (kernels.cu) of one row's vocabulary, in column order.
fn scan<T: Elem>(z: &[T], bias: &[f32]) -> RowScan {
    let mut r = RowScan {
        m: f32::NEG_INFINITY,
        s: 0.0,
        a: usize::MAX,
    };
    for (c, (z, b)) in z.iter().zip(bias).enumerate() {
        let x = z.get() + b;
        if x > r.m {
            r.s = r.s * (r.m - x).exp() + 1.0;
            r.m = x;
            r.a = c;
        } else if x != f32::NEG_INFINITY {
            r.s += (x - r.m).exp();
        }
    }
    r
}

/// One row's (loss, lse, target, correct), as `mlm_xent_rows_at` writes it.
pub(crate) fn row_loss<T: Elem>(z: &[T], bias: &[f32], target: u32) -> [f32; 4] {
    let r = scan(z, bias);
    let lse = r.m + r.s.ln();
    let t = target as usize;
    let zt = match (z.get(t), bias.get(t)) {
        (Some(z), Some(b)) => z.get() + b,
        _ => f32::NAN,
    };
    let correct = if r.a == t { 1.0 } else { 0.0 };
    [lse - zt, lse, target as f32, correct]
}

/// One row's logit gradient, as `mlm_xent_grad_at` writes it: (exp(z_j + b_j - lse) - [j =
/// target]) * g over the vocabulary, 0 over the padding; `info` is the row's (g, lse, target).
pub(crate) fn row_grad<T: Elem>(z: &[T], bias: &[f32], info: [f32; 3], dz: &mut [T]) {
    let [g, lse, target] = info;
    for (j, (d, z)) in dz.iter_mut().zip(z).enumerate() {
        *d = T::put(match bias.get(j) {
            Some(b) => {
                let hit = if j as f32 == target { 1.0 } else { 0.0 };
                ((z.get() + b - lse).exp() - hit) * g
            }
            None => 0.0,
        });
    }
}

/// (logits, bias, targets) to (rows, 4) f32: each row's loss, log-sum-exp, target and whether
/// its argmax was the target.
struct CrossEntropyRows;

impl CrossEntropyRows {
    fn cpu<T: Elem + WithDType>(
        &self,
        (s, l): (&CpuStorage, &Layout),
        bias: &[f32],
        targets: &[u32],
    ) -> Result<Vec<f32>> {
        let z = elems::<T>(s, l, self.name())?;
        let stride = last_dim(l);
        let rows: Vec<[f32; 4]> = z
            .par_chunks(stride)
            .zip(targets.par_iter())
            .map(|(z, &t)| row_loss(&z[..bias.len()], bias, t))
            .collect();
        Ok(rows.concat())
    }
}

impl CustomOp3 for CrossEntropyRows {
    fn name(&self) -> &'static str {
        "flora-mlm-loss"
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
        let bias = elems::<f32>(s2, l2, self.name())?;
        let targets = elems::<u32>(s3, l3, self.name())?;
        let rows = match s1.dtype() {
            DType::F32 => self.cpu::<f32>((s1, l1), bias, targets)?,
            DType::BF16 => self.cpu::<bf16>((s1, l1), bias, targets)?,
            d => candle_core::bail!("{}: logits of {d:?}", self.name()),
        };
        Ok((CpuStorage::F32(rows), Shape::from((targets.len(), 4))))
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
        super::mlm_loss_cuda::rows((s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        bias: &Tensor,
        _targets: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Each row's (g, lse, target): the gradient of its loss, and what the forward pass kept.
        let info = Tensor::cat(&[&grad.narrow(1, 0, 1)?, &res.narrow(1, 1, 2)?], 1)?;
        let dz = logits.apply_op3_no_bwd(bias, &info.contiguous()?, &CrossEntropyGrad)?;
        let db = super::gpu_ops::column_sums(&dz)?.narrow(0, 0, bias.dim(0)?)?;
        Ok((Some(dz), Some(db), None))
    }
}

/// (logits, bias, info) to the logits' gradient, in their type: see [`row_grad`].
struct CrossEntropyGrad;

impl CrossEntropyGrad {
    fn cpu<T: Elem + WithDType>(
        &self,
        (s, l): (&CpuStorage, &Layout),
        bias: &[f32],
        info: &[f32],
    ) -> Result<Vec<T>> {
        let z = elems::<T>(s, l, self.name())?;
        let stride = last_dim(l);
        let mut dz = vec![T::put(0.0); z.len()];
        dz.par_chunks_mut(stride)
            .zip(z.par_chunks(stride).zip(info.par_chunks(3)))
            .for_each(|(d, (z, info))| row_grad(z, bias, [info[0], info[1], info[2]], d));
        Ok(dz)
    }
}

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "flora-mlm-loss-grad"
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
        let bias = elems::<f32>(s2, l2, self.name())?;
        let info = elems::<f32>(s3, l3, self.name())?;
        let dz = match s1.dtype() {
            DType::F32 => CpuStorage::F32(self.cpu::<f32>((s1, l1), bias, info)?),
            DType::BF16 => CpuStorage::BF16(self.cpu::<bf16>((s1, l1), bias, info)?),
            d => candle_core::bail!("{}: logits of {d:?}", self.name()),
        };
        Ok((dz, l1.shape().clone()))
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
        super::mlm_loss_cuda::grad((s1, l1), (s2, l2), (s3, l3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::log_softmax;
    use crate::testing::{max_abs_diff, random_var};
    use candle_core::{Device, D};

    /// The loss as candle's ops compose it (the model's path before this op), its correct
    /// count, and the gradients of the logits and bias of `loss * 3` (an upstream gradient
    /// other than 1).
    fn composed(
        logits: &candle_core::Var,
        bias: &candle_core::Var,
        targets: &[u32],
    ) -> (f32, f32, Tensor, Tensor) {
        let vocab = bias.dim(0).unwrap();
        let z = logits
            .as_tensor()
            .narrow(1, 0, vocab)
            .unwrap()
            .broadcast_add(bias.as_tensor())
            .unwrap();
        let tgt = Tensor::from_slice(targets, (targets.len(), 1), &Device::Cpu).unwrap();
        let loss = log_softmax(&z)
            .unwrap()
            .gather(&tgt, D::Minus1)
            .unwrap()
            .neg()
            .unwrap()
            .mean_all()
            .unwrap();
        let correct = z.argmax_keepdim(D::Minus1).unwrap().eq(&tgt).unwrap();
        let correct = correct.to_dtype(DType::F32).unwrap().sum_all().unwrap();
        let grads = (&loss * 3.0).unwrap().backward().unwrap();
        (
            loss.to_scalar().unwrap(),
            correct.to_scalar().unwrap(),
            grads.get(logits).unwrap().clone(),
            grads.get(bias).unwrap().clone(),
        )
    }

    fn fused(
        logits: &candle_core::Var,
        bias: &candle_core::Var,
        targets: &[u32],
    ) -> (f32, f32, Tensor, Tensor) {
        let (loss, correct) = cross_entropy(logits.as_tensor(), bias.as_tensor(), targets).unwrap();
        let grads = (&loss * 3.0).unwrap().backward().unwrap();
        (
            loss.to_scalar().unwrap(),
            correct.to_scalar().unwrap(),
            grads.get(logits).unwrap().clone(),
            grads.get(bias).unwrap().clone(),
        )
    }

    #[test]
    fn the_fused_loss_matches_candles_log_softmax_forward_and_backward() {
        // 37 rows of a vocabulary of 29, padded to 32 columns; logits large enough that a
        // softmax without its max subtracted would overflow.
        let logits = random_var(&[37, 32], 30.0, 1);
        let bias = random_var(&[29], 1.0, 2);
        let targets: Vec<u32> = (0..37).map(|i| (i * 7 % 29) as u32).collect();
        let (loss, correct, dz, db) = fused(&logits, &bias, &targets);
        let (want, want_correct, want_dz, want_db) = composed(&logits, &bias, &targets);
        assert!((loss - want).abs() < 1e-4 * want.abs(), "{loss} vs {want}");
        assert_eq!(correct, want_correct);
        let real = dz.narrow(1, 0, 29).unwrap();
        assert!(max_abs_diff(&real, &want_dz.narrow(1, 0, 29).unwrap()) < 1e-6);
        let padding = dz.narrow(1, 29, 3).unwrap();
        assert_eq!(
            padding
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert!(max_abs_diff(&db, &want_db) < 1e-6);
    }

    #[test]
    fn an_argmax_at_the_target_counts_as_correct() {
        // Row 0's largest logit is its target's, row 1's is not; row 2 ties at the target and
        // a later column (the first largest counts, as candle's argmax).
        let z = Tensor::new(&[[0f32, 5., 1.], [4., 0., 1.], [0., 3., 3.]], &Device::Cpu).unwrap();
        let bias = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let (_, correct) = cross_entropy(&z, &bias, &[1, 2, 1]).unwrap();
        assert_eq!(correct.to_scalar::<f32>().unwrap(), 2.0);
    }

    #[test]
    fn bf16_logits_give_the_loss_of_their_f32_values() {
        let logits = random_var(&[11, 24], 2.0, 3);
        let bias = random_var(&[21], 1.0, 4);
        let targets: Vec<u32> = (0..11).map(|i| (i * 5 % 21) as u32).collect();
        let z16 = logits.as_tensor().to_dtype(DType::BF16).unwrap();
        let (loss16, _) = cross_entropy(&z16, bias.as_tensor(), &targets).unwrap();
        let z32 = z16.to_dtype(DType::F32).unwrap();
        let (loss32, _) = cross_entropy(&z32, bias.as_tensor(), &targets).unwrap();
        let (a, b) = (
            loss16.to_scalar::<f32>().unwrap(),
            loss32.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        // The gradient comes back in bf16, as the products that follow take it.
        let v16 = candle_core::Var::from_tensor(&z16).unwrap();
        let (loss, _) = cross_entropy(v16.as_tensor(), bias.as_tensor(), &targets).unwrap();
        let g = loss.backward().unwrap();
        assert_eq!(g.get(&v16).unwrap().dtype(), DType::BF16);
    }

    #[test]
    fn a_label_past_the_vocabulary_is_named() {
        let z = Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap();
        let bias = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
        let e = cross_entropy(&z, &bias, &[1, 6]).unwrap_err().to_string();
        assert!(e.contains("label 6 is past the vocabulary of 5"), "{e}");
        let e = cross_entropy(&z, &bias, &[1]).unwrap_err().to_string();
        assert!(e.contains("2 rows of 8 logits"), "{e}");
    }

    #[test]
    fn padding_adds_zero_rows_whose_gradient_goes_nowhere() {
        let emb = random_var(&[5, 3], 1.0, 5);
        let w = padded_rows(emb.as_tensor(), ALIGN).unwrap();
        assert_eq!(w.dims(), &[8, 3]);
        let tail = w.narrow(0, 5, 3).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(tail.to_scalar::<f32>().unwrap(), 0.0);
        let g = w.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&emb).unwrap().dims(), &[5, 3]);
        // Already a multiple: as it is. On the CPU the decoder's weight is only cast.
        assert_eq!(padded_rows(&w, ALIGN).unwrap().dims(), &[8, 3]);
        let cast = decoder_weight(emb.as_tensor(), DType::BF16).unwrap();
        assert_eq!((cast.dims(), cast.dtype()), (&[5usize, 3][..], DType::BF16));
    }
}
