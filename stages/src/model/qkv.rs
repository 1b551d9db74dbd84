//! The attention's query, key and value projections as one product, for the encoder layer that is
//! one autograd node (`encoder_layer_attached.rs`): on GPUs, and in mixed precision.
//!
//! As three dense layers, each cast the layer's input to the products' type, took its own product,
//! added its bias into an f32 output, and the attention split that output into heads (a copy and a
//! cast), three times over; the backward pass merged three head gradients into f32, cast each back,
//! took six products and added three input gradients. Here the input is cast once and multiplied
//! by the three weights stacked, (rows, hidden) x (hidden, 3 hidden); one pass adds the bias and
//! writes q, k and v straight into the heads layout the attention's products read, in the products'
//! type (`qkv_heads`). The backward pass is the inverse placement (`qkv_merge`), two products and
//! one column sum. On a CUDA GPU the passes are `kernels.cu`'s `qkv_heads_*` and `qkv_merge_*`; on
//! the CPU their twins below, which the kernel emulator's tests compare them with.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use half::bf16;
use rayon::prelude::*;

use super::attention_probs::Elem;
use super::fused::elems;
use super::gpu_ops::column_sums;
use super::layers::{contiguous_in, product};

/// The heads layout of q, k and v: each (batch, heads, len, head_dim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Heads {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub len: usize,
    /// Attention heads.
    pub heads: usize,
    /// Features per head.
    pub head_dim: usize,
}

impl Heads {
    /// Features per token: heads x head_dim.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Tokens in the batch: the projections' rows.
    pub fn rows(&self) -> usize {
        self.batch * self.len
    }

    /// The shape of one of q, k and v.
    fn dims(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.heads, self.len, self.head_dim)
    }
}

/// `qkv_heads_at` (kernels.cu), written as a gather: q, k and v packed as (3, batch, heads, len,
/// head_dim) from the projections' `product` (rows, 3 hidden) plus `bias` (3 hidden).
pub(crate) fn qkv_heads_cpu<T: Elem>(product: &[T], bias: &[f32], s: Heads) -> Vec<T> {
    let (hidden, hd) = (s.hidden(), s.head_dim);
    let width = 3 * hidden;
    let mut out = vec![T::put(0.0); 3 * s.rows() * hidden];
    // One (which of q, k, v; sequence) block of (heads, len, head_dim) per task.
    out.par_chunks_mut(s.heads * s.len * hd)
        .enumerate()
        .for_each(|(k, block)| {
            let (which, b) = (k / s.batch, k % s.batch);
            for h in 0..s.heads {
                let col = which * hidden + h * hd;
                for t in 0..s.len {
                    let src = &product[(b * s.len + t) * width + col..][..hd];
                    let dst = &mut block[(h * s.len + t) * hd..][..hd];
                    for ((y, p), b) in dst.iter_mut().zip(src).zip(&bias[col..col + hd]) {
                        *y = T::put(p.get() + b);
                    }
                }
            }
        });
    out
}

/// `qkv_merge_at` (kernels.cu): the projections' gradient (rows, 3 hidden) from the gradients of q,
/// k and v, each (batch, heads, len, head_dim).
pub(crate) fn qkv_merge_cpu<T: Elem>(grads: [&[T]; 3], s: Heads) -> Vec<T> {
    let (hidden, hd) = (s.hidden(), s.head_dim);
    let mut out = vec![T::put(0.0); s.rows() * 3 * hidden];
    out.par_chunks_mut(3 * hidden)
        .enumerate()
        .for_each(|(row, y)| {
            let (b, t) = (row / s.len, row % s.len);
            for (which, g) in grads.iter().enumerate() {
                for h in 0..s.heads {
                    let src = &g[((b * s.heads + h) * s.len + t) * hd..][..hd];
                    y[which * hidden + h * hd..][..hd].copy_from_slice(src);
                }
            }
        });
    out
}

/// q, k and v from their projections' `product` (batch x len rows, 3 hidden columns: q's, k's,
/// v's; f32 or bf16) plus `bias` (3 hidden, f32), split into `heads` heads of sequences of `len`:
/// each (batch, heads, len, head_dim), in the product's type. Records no gradient.
pub fn qkv_heads(product: &Tensor, bias: &Tensor, len: usize, heads: usize) -> Result<[Tensor; 3]> {
    const OP: &str = "flora-qkv-heads";
    let (rows, width) = product.dims2()?;
    let hidden = width / 3;
    let fits = width % 3 == 0 && heads > 0 && hidden % heads == 0 && len > 0 && rows % len == 0;
    if !fits {
        candle_core::bail!(
            "{OP}: a product of {rows} x {width} is not sequences of {len} by 3 x {heads} heads"
        );
    }
    if bias.dims() != [width] || bias.dtype() != DType::F32 {
        candle_core::bail!(
            "{OP}: the bias is {:?} {:?}, not ({width}) f32",
            bias.dims(),
            bias.dtype()
        );
    }
    let shape = Heads {
        batch: rows / len,
        len,
        heads,
        head_dim: hidden / heads,
    };
    let packed = product
        .contiguous()?
        .apply_op2_no_bwd(&bias.contiguous()?, &QkvHeads(shape))?;
    Ok([packed.get(0)?, packed.get(1)?, packed.get(2)?])
}

/// The gradient of [`qkv_heads`]' product, (batch x len, 3 hidden), from the gradients of q, k and
/// v (each (batch, heads, len, head_dim), all of one type). Records no gradient.
pub fn qkv_merge(dq: &Tensor, dk: &Tensor, dv: &Tensor) -> Result<Tensor> {
    let same = |t: &Tensor| t.dims() == dq.dims() && t.dtype() == dq.dtype();
    if !(same(dk) && same(dv)) {
        candle_core::bail!(
            "flora-qkv-merge: the gradients of q {:?} {:?}, k {:?} {:?} and v {:?} {:?} differ",
            dq.dims(),
            dq.dtype(),
            dk.dims(),
            dk.dtype(),
            dv.dims(),
            dv.dtype()
        );
    }
    let (batch, heads, len, head_dim) = dq.dims4()?;
    let shape = Heads {
        batch,
        len,
        heads,
        head_dim,
    };
    dq.contiguous()?
        .apply_op3_no_bwd(&dk.contiguous()?, &dv.contiguous()?, &QkvMerge(shape))
}

/// `heads_layout_at` (kernels.cu): `x` (batch, len, hidden) into heads (batch, heads, len,
/// head_dim) when `to_heads`, else `x` in heads back into (batch, len, hidden).
pub(crate) fn heads_layout_cpu<T: Copy>(x: &[T], s: Heads, to_heads: bool) -> Vec<T> {
    let (hidden, hd) = (s.hidden(), s.head_dim);
    let mut y = x.to_vec();
    for row in 0..s.rows() {
        let (b, t) = (row / s.len, row % s.len);
        for c in 0..hidden {
            let flat = row * hidden + c;
            let h = ((b * s.heads + c / hd) * s.len + t) * hd + c % hd;
            if to_heads {
                y[h] = x[flat];
            } else {
                y[flat] = x[h];
            }
        }
    }
    y
}

/// The attention's context (batch, heads, len, head_dim) as (batch, len, heads x head_dim), in one
/// copy: on a CUDA GPU `kernels.cu`'s `heads_merge_*`, elsewhere candle's transposed copy.
pub fn merge_heads(t: &Tensor) -> Result<Tensor> {
    let (batch, heads, len, head_dim) = t.dims4()?;
    if !t.device().is_cuda() {
        return t
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, len, heads * head_dim));
    }
    HeadsLayout::run(t, (batch, len, heads, head_dim), false)
}

/// (batch, len, hidden) split into `heads` heads, (batch, heads, len, hidden / heads), in one
/// copy: [`merge_heads`] undone (`heads_split_*` on a CUDA GPU).
pub fn split_heads(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, len, hidden) = t.dims3()?;
    if heads == 0 || hidden % heads != 0 {
        candle_core::bail!("flora-heads-split: {hidden} features are not {heads} heads");
    }
    let head_dim = hidden / heads;
    if !t.device().is_cuda() {
        return t
            .reshape((batch, len, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous();
    }
    HeadsLayout::run(t, (batch, len, heads, head_dim), true)
}

/// [`merge_heads`] and [`split_heads`] as one op: into heads when `to_heads`.
struct HeadsLayout {
    shape: Heads,
    to_heads: bool,
}

impl HeadsLayout {
    /// `t` into or out of the heads layout of (batch, len, heads, head_dim).
    fn run(
        t: &Tensor,
        (batch, len, heads, head_dim): (usize, usize, usize, usize),
        to_heads: bool,
    ) -> Result<Tensor> {
        let shape = Heads {
            batch,
            len,
            heads,
            head_dim,
        };
        t.contiguous()?
            .apply_op1_no_bwd(&HeadsLayout { shape, to_heads })
    }

    fn out_shape(&self) -> Shape {
        let s = self.shape;
        if self.to_heads {
            Shape::from(s.dims())
        } else {
            Shape::from((s.batch, s.len, s.hidden()))
        }
    }
}

impl CustomOp1 for HeadsLayout {
    fn name(&self) -> &'static str {
        "flora-heads-layout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (shape, to) = (self.shape, self.to_heads);
        let storage = match s {
            CpuStorage::F32(_) => CpuStorage::F32(heads_layout_cpu(
                elems::<f32>(s, l, self.name())?,
                shape,
                to,
            )),
            CpuStorage::BF16(_) => CpuStorage::BF16(heads_layout_cpu(
                elems::<bf16>(s, l, self.name())?,
                shape,
                to,
            )),
            s => candle_core::bail!("{}: values of {:?}", self.name(), s.dtype()),
        };
        Ok((storage, self.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let storage = super::qkv_cuda::heads_layout((s, l), self.shape, self.to_heads)?;
        Ok((storage, self.out_shape()))
    }
}

/// The gradients of the projections' input and parameters from those of q, k and v: (dx (batch,
/// len, hidden) in the products' type, [dWq, dWk, dWv], [dbq, dbk, dbv]), the parameters' f32.
pub type QkvBackward =
    Box<dyn Fn([&Tensor; 3]) -> Result<(Tensor, [Tensor; 3], [Tensor; 3])> + Send + Sync>;

/// q, k and v of `x` (batch, len, hidden; on inputs that record nothing): `x` times the transposes
/// of `weights` (Wq, Wk, Wv, each (hidden, hidden)) plus `biases`, as one product in `compute`,
/// split into `heads` heads: each (batch, heads, len, head_dim) in `compute`; and their backward
/// pass.
pub(crate) fn qkv_forward(
    x: &Tensor,
    weights: [&Tensor; 3],
    biases: [&Tensor; 3],
    heads: usize,
    compute: DType,
) -> Result<([Tensor; 3], QkvBackward)> {
    let (bsz, len, hidden) = x.dims3()?;
    let xc = contiguous_in(&x.reshape((bsz * len, hidden))?, compute)?;
    let w = contiguous_in(&Tensor::cat(&weights, 0)?, compute)?;
    let b = Tensor::cat(&biases, 0)?;
    let qkv = qkv_heads(&product(&xc, &w.t()?)?, &b, len, heads)?;
    let backward = move |[dq, dk, dv]: [&Tensor; 3]| {
        let g = qkv_merge(dq, dk, dv)?;
        let dx = product(&g, &w)?.reshape((bsz, len, hidden))?;
        let dw = product(&g.t()?, &xc)?.to_dtype(DType::F32)?;
        let db = column_sums(&g)?;
        let thirds = |t: &Tensor| -> Result<[Tensor; 3]> {
            Ok([
                t.narrow(0, 0, hidden)?,
                t.narrow(0, hidden, hidden)?,
                t.narrow(0, 2 * hidden, hidden)?,
            ])
        };
        Ok((dx, thirds(&dw)?, thirds(&db)?))
    };
    Ok((qkv, Box::new(backward)))
}

struct QkvHeads(Heads);

impl CustomOp2 for QkvHeads {
    fn name(&self) -> &'static str {
        "flora-qkv-heads"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bias = elems::<f32>(s2, l2, self.name())?;
        let storage = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(qkv_heads_cpu(
                elems::<f32>(s1, l1, self.name())?,
                bias,
                self.0,
            )),
            CpuStorage::BF16(_) => CpuStorage::BF16(qkv_heads_cpu(
                elems::<bf16>(s1, l1, self.name())?,
                bias,
                self.0,
            )),
            s => candle_core::bail!("{}: a product of {:?}", self.name(), s.dtype()),
        };
        let (b, h, l, d) = self.0.dims();
        Ok((storage, Shape::from((3, b, h, l, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::qkv_cuda::qkv_heads((s1, l1), (s2, l2), self.0)
    }
}

struct QkvMerge(Heads);

impl CustomOp3 for QkvMerge {
    fn name(&self) -> &'static str {
        "flora-qkv-merge"
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
        let name = self.name();
        let storage = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(qkv_merge_cpu(
                [
                    elems::<f32>(s1, l1, name)?,
                    elems::<f32>(s2, l2, name)?,
                    elems::<f32>(s3, l3, name)?,
                ],
                self.0,
            )),
            CpuStorage::BF16(_) => CpuStorage::BF16(qkv_merge_cpu(
                [
                    elems::<bf16>(s1, l1, name)?,
                    elems::<bf16>(s2, l2, name)?,
                    elems::<bf16>(s3, l3, name)?,
                ],
                self.0,
            )),
            s => candle_core::bail!("{name}: gradients of {:?}", s.dtype()),
        };
        Ok((storage, Shape::from((self.0.rows(), 3 * self.0.hidden()))))
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
        super::qkv_cuda::qkv_merge([(s1, l1), (s2, l2), (s3, l3)], self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention_attached::split;
    use crate::model::dense::Epilogue;
    use crate::model::dense_attached::dense_attached;
    use crate::testing::{max_rel_diff, random_var};
    use candle_core::Var;

    /// q, k and v and every gradient, one product against three dense layers and head splits, in
    /// f32 and bf16: q, k and v weighted by fixed random tensors and summed, as a loss.
    #[test]
    fn one_product_matches_three_dense_layers_forward_and_backward() {
        let (bsz, len, hidden, heads) = (3, 7, 12, 3);
        let x = random_var(&[bsz, len, hidden], 1.0, 1);
        let ws: Vec<Var> = (0..3)
            .map(|i| random_var(&[hidden, hidden], 0.5, 2 + i))
            .collect();
        let bs: Vec<Var> = (0..3).map(|i| random_var(&[hidden], 0.5, 5 + i)).collect();
        let loss_weights: Vec<Tensor> = (0..3)
            .map(|i| {
                random_var(&[bsz, heads, len, hidden / heads], 1.0, 8 + i)
                    .as_tensor()
                    .detach()
            })
            .collect();
        for compute in [DType::F32, DType::BF16] {
            // Three dense layers, recorded.
            let mut want = Vec::new();
            let mut loss = Tensor::zeros((), DType::F32, &candle_core::Device::Cpu).unwrap();
            for i in 0..3 {
                let y = dense_attached(
                    x.as_tensor(),
                    ws[i].as_tensor(),
                    bs[i].as_tensor(),
                    Epilogue::None,
                    compute,
                )
                .unwrap();
                let y = split(&y, heads, compute).unwrap();
                let term = (y.to_dtype(DType::F32).unwrap() * &loss_weights[i])
                    .unwrap()
                    .sum_all()
                    .unwrap();
                loss = (loss + term).unwrap();
                want.push(y);
            }
            let grads = loss.backward().unwrap();
            // One product, and its backward pass from the loss's gradients of q, k and v.
            let detached: Vec<Tensor> = ws.iter().map(|w| w.as_tensor().detach()).collect();
            let biases: Vec<Tensor> = bs.iter().map(|b| b.as_tensor().detach()).collect();
            let (qkv, backward) = qkv_forward(
                &x.as_tensor().detach(),
                [&detached[0], &detached[1], &detached[2]],
                [&biases[0], &biases[1], &biases[2]],
                heads,
                compute,
            )
            .unwrap();
            for (i, (got, want)) in qkv.iter().zip(&want).enumerate() {
                assert_eq!(got.dims(), &[bsz, heads, len, hidden / heads]);
                assert_eq!(got.dtype(), compute);
                let d = max_rel_diff(
                    &got.to_dtype(DType::F32).unwrap(),
                    &want.to_dtype(DType::F32).unwrap(),
                );
                assert!(d < 1e-6, "{compute:?}: projection {i} differs by {d}");
            }
            let g: Vec<Tensor> = loss_weights
                .iter()
                .map(|w| w.to_dtype(compute).unwrap())
                .collect();
            let (dx, dws, dbs) = backward([&g[0], &g[1], &g[2]]).unwrap();
            assert_eq!(dx.dtype(), compute);
            // bf16 rounds the summed input gradient once, where the three layers rounded three.
            let tol = if compute == DType::F32 { 1e-5 } else { 1e-2 };
            let dx = dx.to_dtype(DType::F32).unwrap();
            let d = max_rel_diff(&dx, grads.get(x.as_tensor()).unwrap());
            assert!(d < tol, "{compute:?}: dx differs by {d}");
            for i in 0..3 {
                let d = max_rel_diff(&dws[i], grads.get(ws[i].as_tensor()).unwrap());
                assert!(d < tol, "{compute:?}: dW {i} differs by {d}");
                let d = max_rel_diff(&dbs[i], grads.get(bs[i].as_tensor()).unwrap());
                assert!(d < tol, "{compute:?}: db {i} differs by {d}");
            }
        }
    }

    #[test]
    fn the_heads_layout_twin_is_candles_transposed_copy() {
        let s = Heads {
            batch: 2,
            len: 5,
            heads: 3,
            head_dim: 4,
        };
        let x = random_var(&[2, 5, 12], 1.0, 8).as_tensor().detach();
        let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let split = split_heads(&x, 3).unwrap();
        assert_eq!(split.dims(), &[2, 3, 5, 4]);
        let want = split.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(heads_layout_cpu(&flat, s, true), want);
        assert_eq!(heads_layout_cpu(&want, s, false), flat);
        let merged = merge_heads(&split).unwrap();
        assert_eq!(merged.dims(), &[2, 5, 12]);
        assert_eq!(
            merged.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            flat
        );
        // The op itself, as the GPU runs it, on the CPU's storage.
        let op = |t: &Tensor, to_heads| {
            t.apply_op1_no_bwd(&HeadsLayout { shape: s, to_heads })
                .unwrap()
        };
        assert_eq!(op(&x, true).dims(), &[2, 3, 5, 4]);
        assert_eq!(
            op(&split, false)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            flat
        );
        assert!(split_heads(&x, 5).is_err());
    }

    #[test]
    fn merging_undoes_the_split_exactly() {
        let s = Heads {
            batch: 2,
            len: 5,
            heads: 3,
            head_dim: 4,
        };
        let width = 3 * s.hidden();
        let product: Vec<f32> = (0..s.rows() * width).map(|i| i as f32).collect();
        let split = qkv_heads_cpu(&product, &vec![0.0; width], s);
        let per = s.rows() * s.hidden();
        let merged = qkv_merge_cpu([&split[..per], &split[per..2 * per], &split[2 * per..]], s);
        assert_eq!(merged, product);
    }

    #[test]
    fn mismatched_inputs_are_refused_with_their_shapes() {
        let dev = candle_core::Device::Cpu;
        let product = Tensor::zeros((10, 12), DType::F32, &dev).unwrap();
        let bias = Tensor::zeros(12, DType::F32, &dev).unwrap();
        let e = qkv_heads(&product, &bias, 3, 2).unwrap_err();
        assert!(e.to_string().contains("not sequences of 3"), "{e}");
        let e = qkv_heads(&product, &bias, 5, 3).unwrap_err();
        assert!(e.to_string().contains("by 3 x 3 heads"), "{e}");
        let short = Tensor::zeros(9, DType::F32, &dev).unwrap();
        let e = qkv_heads(&product, &short, 5, 2).unwrap_err();
        assert!(e.to_string().contains("not (12) f32"), "{e}");
        let g = Tensor::zeros((2, 2, 5, 2), DType::F32, &dev).unwrap();
        let e = qkv_merge(&g, &g.to_dtype(DType::BF16).unwrap(), &g).unwrap_err();
        assert!(e.to_string().contains("differ"), "{e}");
    }
}
