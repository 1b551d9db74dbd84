//! Custom ops that replace candle's slowest pieces of a training step on a CUDA GPU: picking rows
//! of an embedding table (candle's backward, `index_add`, runs one thread per hidden unit over
//! every token), adding a bias (its backward sums columns with strided reads), and dropout (five
//! kernels and a mask in memory; here one kernel whose mask is recomputed from a seed).
//!
//! Each op has a CPU side with the same arithmetic, which the tests compare with candle's ops and,
//! on a `cuda` build with a GPU, with the kernels. The model uses them on CUDA f32 tensors
//! ([`applies`]); the CPU keeps candle's ops except for f32 dropout, which runs this op there too
//! (one parallel pass, no mask tensor).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use rayon::prelude::*;

use super::fused::{data, last_dim};

/// Whether these ops replace candle's for `t`: f32 on a CUDA GPU.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cuda() && t.dtype() == DType::F32
}

fn u32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else {
        candle_core::bail!("{op}: expects u32 ids, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: expects contiguous ids"),
    }
}

/// Rows of a (rows, n) table picked by u32 ids: (ids, n).
struct GatherRows;

impl CustomOp2 for GatherRows {
    fn name(&self) -> &'static str {
        "flora-gather-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let table = data(s1, l1, self.name())?;
        let ids = u32s(s2, l2, self.name())?;
        let n = last_dim(l1);
        let rows = table.len() / n;
        let mut y = Vec::with_capacity(ids.len() * n);
        for &id in ids {
            let id = id as usize;
            if id >= rows {
                candle_core::bail!("{}: id {id} in a table of {rows} rows", self.name());
            }
            y.extend_from_slice(&table[id * n..(id + 1) * n]);
        }
        Ok((CpuStorage::F32(y), Shape::from((ids.len(), n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::gather_rows(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(scatter_rows(grad, ids, table.dim(0)?)?), None))
    }
}

/// A (rows, n) table's gradient from the gradient of the rows [`GatherRows`] picked.
struct ScatterRows {
    rows: usize,
}

impl CustomOp2 for ScatterRows {
    fn name(&self) -> &'static str {
        "flora-gather-rows-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = data(s1, l1, self.name())?;
        let ids = u32s(s2, l2, self.name())?;
        let n = last_dim(l1);
        let mut table = vec![0f32; self.rows * n];
        for (&id, g) in ids.iter().zip(g.chunks(n)) {
            let row = &mut table[id as usize * n..(id as usize + 1) * n];
            row.iter_mut().zip(g).for_each(|(t, g)| *t += g);
        }
        Ok((CpuStorage::F32(table), Shape::from((self.rows, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::scatter_add_rows(s1, l1, s2, l2, self.rows)
    }
}

/// x (rows, n) + bias (n).
struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "flora-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(s1, l1, self.name())?;
        let b = data(s2, l2, self.name())?;
        let n = last_dim(l1);
        if b.len() != n {
            candle_core::bail!("{}: bias of {} for rows of {n}", self.name(), b.len());
        }
        let y = x
            .chunks(n)
            .flat_map(|row| row.iter().zip(b).map(|(x, b)| x + b))
            .collect();
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::bias_add(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let db = grad.apply_op1_no_bwd(&ColSum)?.reshape(b.shape())?;
        Ok((Some(grad), Some(db)))
    }
}

/// The sums of the columns of `g` (rows, n; f32, or bf16 summed in f32): (n) f32, recording
/// nothing for autograd. On a CUDA GPU two kernels with coalesced reads, else candle's sum.
pub fn column_sums(g: &Tensor) -> Result<Tensor> {
    if g.device().is_cuda() && matches!(g.dtype(), DType::F32 | DType::BF16) {
        return g.contiguous()?.apply_op1_no_bwd(&ColSum);
    }
    g.to_dtype(DType::F32)?.sum(0)
}

/// Sums over the rows of (rows, n): (n).
struct ColSum;

impl CustomOp1 for ColSum {
    fn name(&self) -> &'static str {
        "flora-col-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = data(s, l, self.name())?;
        let n = last_dim(l);
        let mut out = vec![0f32; n];
        for row in g.chunks(n) {
            out.iter_mut().zip(row).for_each(|(o, g)| *o += g);
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if s.dtype() == DType::BF16 {
            return super::dense_epilogue_cuda::col_sum_bf16(s, l);
        }
        super::fused_cuda::col_sum(s, l)
    }
}

/// Elements of a dropout's input handed to a thread at a time.
const CHUNK: usize = 4096;

/// Inverted dropout whose mask is a function of (seed, element index): its backward pass applies
/// the same mask to the gradient.
struct Dropout {
    p: f32,
    seed: u64,
}

/// Whether element `i` survives dropout at rate `p` under `seed` (the CPU twin of `kernels.cu`'s
/// `unit_draw`: SplitMix64's finaliser of a counter).
pub fn keep(seed: u64, i: u64, p: f32) -> bool {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / 16_777_216.0) >= p
}

/// `v` through inverted dropout at `p` for element `i` under `seed`: `v / (1 - p)` if kept,
/// else 0 (the CPU twin of `kernels.cu`'s `dropped`, which multiplies by `1 / (1 - p)` rounded:
/// at most a unit in the last place from this quotient).
pub(crate) fn dropped(v: f32, p: f32, seed: u64, i: u64) -> f32 {
    if keep(seed, i, p) {
        v / (1.0 - p)
    } else {
        0.0
    }
}

/// Dropout's backward pass for the gradient `g` of an element whose dropped-out value was
/// `kept`: `g / (1 - p)` where that value is not 0, else 0 (`g` itself at p = 0). Where the
/// value before dropout was 0 the mask it reads may be wrong, so use it only where `g` is then
/// multiplied by that 0, as softmax's backward pass does (the CPU twin of `kernels.cu`'s
/// `kept_grad`, which multiplies by `1 / (1 - p)` as `dropped` does).
pub(crate) fn kept_grad(g: f32, kept: f32, p: f32) -> f32 {
    if p <= 0.0 {
        g
    } else if kept != 0.0 {
        g / (1.0 - p)
    } else {
        0.0
    }
}

/// Inverted dropout of `y` in place, in parallel: element i is kept, divided by 1 - `p`, where
/// `keep(seed, i, p)`, and zeroed otherwise.
pub(crate) fn dropout_in_place(y: &mut [f32], p: f32, seed: u64) {
    y.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(t, y)| dropout_from(y, p, seed, (t * CHUNK) as u64));
}

/// [`dropout_in_place`] of a part of a larger tensor that starts at element `first`, on this
/// thread.
pub(crate) fn dropout_from(y: &mut [f32], p: f32, seed: u64, first: u64) {
    for (i, y) in (first..).zip(y.iter_mut()) {
        *y = dropped(*y, p, seed, i);
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "flora-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut y = data(s, l, self.name())?.to_vec();
        dropout_in_place(&mut y, self.p, self.seed);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::dropout(s, l, self.p, self.seed)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let same = Dropout {
            p: self.p,
            seed: self.seed,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&same)?))
    }
}

/// `a` (f32) plus `b` (f32 or bf16, of `a`'s shape) in f32: on a CUDA GPU with `b` in bf16 one
/// pass (`add_bf16_to_f32`), elsewhere a cast and candle's add. Records no gradient on the GPU's
/// path: for backward passes that add gradients.
pub fn add_in_f32(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fused = a.device().is_cuda()
        && a.dtype() == DType::F32
        && b.dtype() == DType::BF16
        && a.dims() == b.dims();
    if !fused {
        return a.add(&b.to_dtype(DType::F32)?);
    }
    a.contiguous()?
        .apply_op2_no_bwd(&b.contiguous()?, &AddBf16ToF32)
}

/// [`add_in_f32`]'s one pass.
struct AddBf16ToF32;

impl CustomOp2 for AddBf16ToF32 {
    fn name(&self) -> &'static str {
        "flora-add-bf16-to-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = data(s1, l1, self.name())?;
        let b = super::fused::elems::<half::bf16>(s2, l2, self.name())?;
        if a.len() != b.len() {
            candle_core::bail!("{}: {} and {} elements", self.name(), a.len(), b.len());
        }
        let y = a.iter().zip(b).map(|(x, y)| x + y.to_f32()).collect();
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::add_bf16_to_f32((s1, l1), (s2, l2))
    }
}

/// Rows of `table` (rows, n) picked by `ids` (u32, one dimension): (ids, n).
pub fn gather_rows(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    table
        .contiguous()?
        .apply_op2(&ids.contiguous()?, GatherRows)
}

/// The gradient of a (rows, n) table from the gradient `grad` (ids, n) of the rows that `ids`
/// picked: each id's rows summed. Records nothing for autograd.
pub fn scatter_rows(grad: &Tensor, ids: &Tensor, rows: usize) -> Result<Tensor> {
    grad.contiguous()?
        .apply_op2_no_bwd(&ids.contiguous()?, &ScatterRows { rows })
}

/// `x` (rows, n) + `bias` (n).
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd)
}

/// Inverted dropout at rate `p` with the mask of `seed`.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Dropout { p, seed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_var};
    use candle_core::Device;

    /// The fused add of a bf16 gradient to an f32 one is a cast and an add, on the CPU's side of
    /// the op as through `add_in_f32`'s fallback.
    #[test]
    fn adding_bf16_to_f32_is_a_cast_and_an_add() {
        let a = Tensor::new(&[[1.5f32, -2.0, 0.25], [3.0, 0.0, -1.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[0.5f32, 1.0, -0.25], [2.0, -3.0, 7.0]], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let want = [[2.0f32, -1.0, 0.0], [5.0, -3.0, 6.0]];
        let op = a.apply_op2_no_bwd(&b, &AddBf16ToF32).unwrap();
        assert_eq!(op.to_vec2::<f32>().unwrap(), want);
        assert_eq!(add_in_f32(&a, &b).unwrap().to_vec2::<f32>().unwrap(), want);
        let short = b.narrow(1, 0, 2).unwrap();
        assert!(a.apply_op2_no_bwd(&short, &AddBf16ToF32).is_err());
    }

    #[test]
    fn gather_rows_matches_index_select_forward_and_backward() {
        let table = random_var(&[7, 5], 1.0, 1);
        let ids = Tensor::new(&[3u32, 0, 3, 6, 1], &Device::Cpu).unwrap();
        let weights = random_var(&[5, 5], 1.0, 2);
        let ours = gather_rows(table.as_tensor(), &ids).unwrap();
        let theirs = table.as_tensor().index_select(&ids, 0).unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-7);
        let grad = |y: &Tensor| {
            let loss = (y * weights.as_tensor()).unwrap().sum_all().unwrap();
            loss.backward().unwrap().get(&table).unwrap().clone()
        };
        // Row 3 is picked twice: its gradient is the sum of both.
        assert!(max_abs_diff(&grad(&ours), &grad(&theirs)) < 1e-6);
    }

    #[test]
    fn gather_rows_names_an_id_past_the_table() {
        let table = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[1u32, 9], &Device::Cpu).unwrap();
        let e = gather_rows(&table, &ids).unwrap_err().to_string();
        assert!(e.contains("id 9 in a table of 4 rows"), "{e}");
    }

    #[test]
    fn bias_add_matches_broadcasting_forward_and_backward() {
        let x = random_var(&[6, 4], 1.0, 3);
        let b = random_var(&[4], 1.0, 4);
        let weights = random_var(&[6, 4], 1.0, 5);
        let ours = bias_add(x.as_tensor(), b.as_tensor()).unwrap();
        let theirs = x.as_tensor().broadcast_add(b.as_tensor()).unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-7);
        let grads = |y: &Tensor| {
            let loss = (y * weights.as_tensor()).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            (g.get(&x).unwrap().clone(), g.get(&b).unwrap().clone())
        };
        let (ox, ob) = grads(&ours);
        let (tx, tb) = grads(&theirs);
        assert!(max_abs_diff(&ox, &tx) < 1e-7);
        assert!(max_abs_diff(&ob, &tb) < 1e-6);
    }

    #[test]
    fn dropout_drops_its_share_scales_the_rest_and_masks_the_gradient_alike() {
        let n = 20_000;
        let x = candle_core::Var::from_tensor(&Tensor::ones(n, DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let y = dropout(x.as_tensor(), 0.1, 42).unwrap();
        let ys: Vec<f32> = y.to_vec1().unwrap();
        let dropped = ys.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.1).abs() < 0.01, "dropped {dropped}");
        assert!(ys.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // d(sum y)/dx is the mask itself: the same elements, the same scale.
        let g: Vec<f32> = y
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .get(&x)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g, ys);
        // Another seed, another mask.
        let other: Vec<f32> = dropout(x.as_tensor(), 0.1, 43).unwrap().to_vec1().unwrap();
        assert_ne!(other, ys);
    }
}
