//! Matrix products on the CPU through OpenBLAS's `cblas_sgemm`, with their backward pass, as a
//! candle custom op. On the 2-core development machine (AVX-512) OpenBLAS multiplies a
//! 2048 x 768 by a 768 x 3072 matrix at about 330 GFLOP/s, three times candle's own CPU kernels;
//! the matrix products are most of a CPU training step. Transposed operands (a weight's `.t()`)
//! are passed to BLAS as transposed, never copied. f32 on the CPU only; everything else keeps
//! candle's `matmul`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE};

/// How many threads OpenBLAS's matrix products use (opening it, `crate::openblas`).
pub(crate) fn threads() -> usize {
    let blas = crate::openblas::get();
    // SAFETY: a plain read of OpenBLAS's setting.
    #[allow(unsafe_code)]
    let n = unsafe { (blas.threads)() };
    usize::try_from(n).unwrap_or(1)
}

/// Whether [`matmul`] applies to `a` x `b`: f32 CPU tensors of the same rank (at least 2) with
/// equal batch dimensions and matching inner sizes.
pub fn applies(a: &Tensor, b: &Tensor) -> bool {
    let (da, db) = (a.dims(), b.dims());
    a.device().is_cpu()
        && b.device().is_cpu()
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && da.len() >= 2
        && da.len() == db.len()
        && da[..da.len() - 2] == db[..db.len() - 2]
        && da[da.len() - 1] == db[db.len() - 2]
}

/// `a` x `b` through BLAS, recording the product for backpropagation.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = blas_ready(a)?;
    let b = blas_ready(b)?;
    a.apply_op2(&b, Matmul)
}

/// `a` x `b` through BLAS, without recording (for the backward pass itself).
fn matmul_untracked(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    blas_ready(a)?.apply_op2_no_bwd(&blas_ready(b)?, &Matmul)
}

/// `t` itself when BLAS can read its last two dimensions as they are (plain or transposed), else a
/// contiguous copy.
fn blas_ready(t: &Tensor) -> Result<Tensor> {
    let l = t.layout();
    let r = l.dims().len();
    if view(l.dims()[r - 2], l.dims()[r - 1], &l.stride()[r - 2..]).is_some() {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// The BLAS view of a `rows` x `cols` matrix with these two strides: (transposed, leading
/// dimension), or `None` when neither row- nor column-major.
fn view(rows: usize, cols: usize, strides: &[usize]) -> Option<(bool, usize)> {
    let (sr, sc) = (strides[0], strides[1]);
    if (sc == 1 || cols == 1) && (sr >= cols || rows == 1) {
        Some((false, if rows == 1 { cols.max(1) } else { sr }))
    } else if (sr == 1 || rows == 1) && (sc >= rows || cols == 1) {
        Some((true, if cols == 1 { rows.max(1) } else { sc }))
    } else {
        None
    }
}

/// Offsets of each matrix of a batch (every index of the dimensions before the last two).
fn batch_offsets(l: &Layout) -> Vec<usize> {
    let r = l.dims().len();
    let mut offsets = vec![l.start_offset()];
    for (&d, &s) in l.dims()[..r - 2].iter().zip(&l.stride()[..r - 2]) {
        offsets = offsets
            .iter()
            .flat_map(|&o| (0..d).map(move |i| o + i * s))
            .collect();
    }
    offsets
}

/// One operand of [`gemm`]: a row-major matrix inside `data`, starting at `offset`, read
/// transposed or not, with leading dimension `ld`.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    data: &'a [f32],
    offset: usize,
    trans: bool,
    ld: usize,
}

impl<'a> Operand<'a> {
    /// The matrix at `offset` in `data`.
    pub(crate) fn new(data: &'a [f32], offset: usize, trans: bool, ld: usize) -> Operand<'a> {
        Operand {
            data,
            offset,
            trans,
            ld,
        }
    }

    /// Whether a `rows` x `cols` matrix read this way lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        let (stored_rows, stored_cols) = if self.trans {
            (cols, rows)
        } else {
            (rows, cols)
        };
        self.ld >= stored_cols.max(1)
            && self.offset + (stored_rows - 1) * self.ld + stored_cols <= self.data.len()
    }

    fn transpose(&self) -> CBLAS_TRANSPOSE {
        if self.trans {
            CBLAS_TRANSPOSE::CblasTrans
        } else {
            CBLAS_TRANSPOSE::CblasNoTrans
        }
    }
}

/// C = alpha op(A) op(B) + beta C through OpenBLAS, for an m x k A and a k x n B (`dims` is
/// (m, n, k)); C is the m x n matrix at an offset of a slice, with a leading dimension. Every
/// operand's extent is checked against its slice first: this is the one call into BLAS.
pub(crate) fn gemm(
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Operand,
    b: Operand,
    beta: f32,
    (c, c_offset, ldc): (&mut [f32], usize, usize),
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let c_fits = ldc >= n && c_offset + (m - 1) * ldc + n <= c.len();
    if k == 0 && c_fits {
        // An empty sum: C = beta C.
        for row in 0..m {
            let start = c_offset + row * ldc;
            c[start..start + n]
                .iter_mut()
                .for_each(|v| *v = if beta == 0.0 { 0.0 } else { *v * beta });
        }
        return Ok(());
    }
    if !a.fits(m, k) || !b.fits(k, n) || !c_fits {
        candle_core::bail!(
            "gemm: a {m} x {k} by {k} x {n} product does not fit its buffers \
             (a {} at {}, b {} at {}, c {} at {c_offset})",
            a.data.len(),
            a.offset,
            b.data.len(),
            b.offset,
            c.len()
        );
    }
    let int = |v: usize| {
        i32::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("gemm: {v} is too large for BLAS")))
    };
    let blas = crate::openblas::load().map_err(candle_core::Error::Msg)?;
    // SAFETY: the extents of A, B and C were checked against their slices above, and C is
    // borrowed mutably, so BLAS reads and writes only memory that these slices own.
    #[allow(unsafe_code)]
    unsafe {
        (blas.sgemm)(
            CBLAS_LAYOUT::CblasRowMajor,
            a.transpose(),
            b.transpose(),
            int(m)?,
            int(n)?,
            int(k)?,
            alpha,
            a.data.as_ptr().add(a.offset),
            int(a.ld.max(1))?,
            b.data.as_ptr().add(b.offset),
            int(b.ld.max(1))?,
            beta,
            c.as_mut_ptr().add(c_offset),
            int(ldc.max(1))?,
        );
    }
    Ok(())
}

struct Matmul;

impl CustomOp2 for Matmul {
    fn name(&self) -> &'static str {
        "flora-blas-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!(
                "{}: expects f32, got {:?} and {:?}",
                self.name(),
                s1.dtype(),
                s2.dtype()
            )
        };
        let r = l1.dims().len();
        let (m, k, n) = (l1.dims()[r - 2], l1.dims()[r - 1], l2.dims()[r - 1]);
        let (Some((ta, lda)), Some((tb, ldb))) = (
            view(m, k, &l1.stride()[r - 2..]),
            view(k, n, &l2.stride()[r - 2..]),
        ) else {
            candle_core::bail!(
                "{}: an operand is neither row- nor column-major",
                self.name()
            )
        };
        let (oa, ob) = (batch_offsets(l1), batch_offsets(l2));
        let mut c = vec![0f32; oa.len() * m * n];
        for (i, (&pa, &pb)) in oa.iter().zip(&ob).enumerate() {
            gemm(
                (m, n, k),
                1.0,
                Operand::new(a, pa, ta, lda),
                Operand::new(b, pb, tb, ldb),
                0.0,
                (&mut c, i * m * n, n),
            )?;
        }
        let mut dims = l1.dims().to_vec();
        dims[r - 1] = n;
        Ok((CpuStorage::F32(c), Shape::from(dims)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_a = matmul_untracked(grad, &b.t()?)?;
        let grad_b = matmul_untracked(&a.t()?, grad)?;
        Ok((Some(grad_a), Some(grad_b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_diff, random_var};
    use candle_core::Var;

    fn random(shape: &[usize], seed: u64) -> Var {
        random_var(shape, 1.0, seed)
    }

    /// The product and both gradients against candle's own `matmul`.
    fn check(a: &Var, b: &Tensor, b_var: &Var) {
        assert!(applies(a.as_tensor(), b));
        let ours = matmul(a.as_tensor(), b).unwrap();
        let theirs = a.as_tensor().matmul(b).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        assert!(max_rel_diff(&ours, &theirs) < 1e-5);
        let w = random(ours.dims(), 99);
        let g1 = (ours * w.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (theirs * w.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [a, b_var] {
            let d = max_rel_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-5, "gradient differs by {d}");
        }
    }

    #[test]
    fn plain_transposed_and_batched_products_match_candle() {
        let (a, b) = (random(&[7, 5], 1), random(&[5, 3], 2));
        check(&a, b.as_tensor(), &b);
        // A weight used as w.t(): BLAS reads it transposed.
        let w = random(&[3, 5], 3);
        check(&a, &w.as_tensor().t().unwrap(), &w);
        // Batched, as attention: (batch, heads, len, d) x (batch, heads, d, len).
        let (q, k) = (random(&[2, 3, 6, 4], 4), random(&[2, 3, 6, 4], 5));
        check(&q, &k.as_tensor().t().unwrap(), &k);
        // One row, one column.
        let (r, c) = (random(&[1, 5], 6), random(&[5, 1], 7));
        check(&r, c.as_tensor(), &c);
    }

    #[test]
    fn a_strided_view_is_copied_first() {
        // Every other column: neither row- nor column-major for BLAS.
        let big = random(&[6, 10], 8);
        let a = big
            .as_tensor()
            .narrow(1, 0, 10)
            .unwrap()
            .reshape((6, 5, 2))
            .unwrap();
        let a = a.narrow(2, 0, 1).unwrap().squeeze(2).unwrap();
        let b = random(&[5, 4], 9);
        let ours = matmul(&a, b.as_tensor()).unwrap();
        let theirs = a.contiguous().unwrap().matmul(b.as_tensor()).unwrap();
        assert!(max_rel_diff(&ours, &theirs) < 1e-5);
    }

    #[test]
    fn mismatched_operands_are_left_to_candle() {
        let (a, b) = (random(&[2, 4, 5], 1), random(&[5, 3], 2));
        assert!(!applies(a.as_tensor(), b.as_tensor()));
        let c = random(&[4, 6], 3);
        assert!(!applies(c.as_tensor(), b.as_tensor()));
    }
}
