//! Dense f64 products for the regressions, through OpenBLAS (the library the model's matrix
//! products already link; multi-threaded): the Gram matrix AᵀA and the product AᵀB of row-major
//! matrices. The only unsafe code is the two BLAS calls, each after its operands' sizes are checked.

use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE, CBLAS_UPLO};

/// A row-major matrix of f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// `rows * cols` values, row after row.
    pub data: Vec<f64>,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
}

impl Dense {
    /// A matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Dense {
        Dense {
            data: vec![0.0; rows * cols],
            rows,
            cols,
        }
    }

    /// The value at (`i`, `j`).
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The matrix transposed (a copy).
    pub fn transposed(&self) -> Dense {
        let mut t = Dense::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                t.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        t
    }
}

fn int(n: usize) -> i32 {
    i32::try_from(n).expect("matrix dimensions fit in a BLAS int")
}

/// AᵀA (cols x cols, both triangles filled), or AAᵀ (rows x rows) when `outer`.
pub fn gram(a: &Dense, outer: bool) -> Dense {
    assert_eq!(
        a.data.len(),
        a.rows * a.cols,
        "a matrix holds rows x cols values"
    );
    let (size, inner) = if outer {
        (a.rows, a.cols)
    } else {
        (a.cols, a.rows)
    };
    let mut c = Dense::zeros(size, size);
    if size == 0 || inner == 0 {
        return c;
    }
    let trans = if outer {
        CBLAS_TRANSPOSE::CblasNoTrans
    } else {
        CBLAS_TRANSPOSE::CblasTrans
    };
    let blas = crate::openblas::get();
    // SAFETY: `a` holds rows x cols values with leading dimension cols (checked above); `c` holds
    // size x size values with leading dimension size.
    #[allow(unsafe_code)]
    unsafe {
        (blas.dsyrk)(
            CBLAS_LAYOUT::CblasRowMajor,
            CBLAS_UPLO::CblasLower,
            trans,
            int(size),
            int(inner),
            1.0,
            a.data.as_ptr(),
            int(a.cols),
            0.0,
            c.data.as_mut_ptr(),
            int(size),
        );
    }
    for i in 0..size {
        for j in i + 1..size {
            c.data[i * size + j] = c.data[j * size + i];
        }
    }
    c
}

/// AᵀB for A (n x p) and B (n x q): a p x q matrix.
pub fn at_b(a: &Dense, b: &Dense) -> Dense {
    assert_eq!(a.rows, b.rows, "AᵀB needs A and B with the same rows");
    assert_eq!(
        a.data.len(),
        a.rows * a.cols,
        "a matrix holds rows x cols values"
    );
    assert_eq!(
        b.data.len(),
        b.rows * b.cols,
        "a matrix holds rows x cols values"
    );
    let mut c = Dense::zeros(a.cols, b.cols);
    if a.cols == 0 || b.cols == 0 || a.rows == 0 {
        return c;
    }
    let blas = crate::openblas::get();
    // SAFETY: the operands hold rows x cols values each with leading dimension cols (checked
    // above); `c` holds p x q values with leading dimension q.
    #[allow(unsafe_code)]
    unsafe {
        (blas.dgemm)(
            CBLAS_LAYOUT::CblasRowMajor,
            CBLAS_TRANSPOSE::CblasTrans,
            CBLAS_TRANSPOSE::CblasNoTrans,
            int(a.cols),
            int(b.cols),
            int(a.rows),
            1.0,
            a.data.as_ptr(),
            int(a.cols),
            b.data.as_ptr(),
            int(b.cols),
            0.0,
            c.data.as_mut_ptr(),
            int(b.cols),
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_at_b(a: &Dense, b: &Dense) -> Dense {
        let mut c = Dense::zeros(a.cols, b.cols);
        for i in 0..a.cols {
            for j in 0..b.cols {
                c.data[i * b.cols + j] = (0..a.rows).map(|r| a.at(r, i) * b.at(r, j)).sum();
            }
        }
        c
    }

    #[test]
    fn products_match_the_definition() {
        let mut rng = crate::rng::Rng::new(1);
        let mut random = |rows, cols| Dense {
            data: (0..rows * cols)
                .map(|_| rng.below(1000) as f64 / 100.0 - 5.0)
                .collect(),
            rows,
            cols,
        };
        let a = random(7, 3);
        let b = random(7, 2);
        let close = |x: &Dense, y: &Dense| {
            assert_eq!((x.rows, x.cols), (y.rows, y.cols));
            for (u, v) in x.data.iter().zip(&y.data) {
                assert!((u - v).abs() < 1e-9, "{u} {v}");
            }
        };
        close(&at_b(&a, &b), &naive_at_b(&a, &b));
        close(&gram(&a, false), &naive_at_b(&a, &a));
        let t = a.transposed();
        close(&gram(&a, true), &naive_at_b(&t, &t));
        assert_eq!(gram(&Dense::zeros(0, 3), false), Dense::zeros(3, 3));
    }
}
