//! Multi-output linear regression with an optional ridge penalty, by eigendecomposition of the
//! centred Gram matrix: with XᵀX = U diag(e) Uᵀ (OpenBLAS for the product, faer for the
//! decomposition), B = U diag(1 / (e + λ)) Uᵀ XᵀY, the intercept fitted unpenalised. With fewer
//! rows than features the n x n matrix XXᵀ is decomposed instead (B = Xᵀ W diag(1 / (e + λ)) Wᵀ Y).
//! One decomposition serves every penalty ([`Prepared::solve`]). With λ = 0 eigenvalues at
//! rounding level are dropped, which gives the minimum-norm least-squares fit, well defined when
//! features are collinear (k-mer frequencies of one k sum to one).

use faer::{Mat, Side};

use crate::linalg::{self, Dense};

/// A fitted model: one coefficient column and intercept per output.
#[derive(Debug, Clone, PartialEq)]
pub struct Ridge {
    /// (features, outputs).
    pub coef: Vec<Vec<f64>>,
    /// One per output.
    pub intercept: Vec<f64>,
}

/// A decomposed problem, ready to be solved for any penalty.
#[derive(Debug, Clone)]
pub struct Prepared {
    x_mean: Vec<f64>,
    y_mean: Vec<f64>,
    /// (features, r): the directions the solution is built from.
    basis: Mat<f64>,
    /// (r, outputs): the targets' coordinates along them.
    coords: Mat<f64>,
    /// r eigenvalues.
    eigen: Vec<f64>,
    /// Eigenvalues at or below this are dropped when λ = 0.
    tol: f64,
}

/// Fits `y` (rows, outputs) on `x` (rows, features) with penalty `lambda` (0 for plain least
/// squares).
pub fn fit(x: &[Vec<f64>], y: &[Vec<f64>], lambda: f64) -> Result<Ridge, String> {
    Ok(prepare(x, y)?.solve(lambda))
}

fn centred(rows: &[Vec<f64>], width: usize) -> (Dense, Vec<f64>) {
    let n = rows.len();
    let mut mean = vec![0.0; width];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut d = Dense::zeros(n, width);
    for (i, r) in rows.iter().enumerate() {
        for (j, (v, m)) in r.iter().zip(&mean).enumerate() {
            d.data[i * width + j] = v - m;
        }
    }
    (d, mean)
}

/// Centres `x` and `y` and decomposes the smaller of XᵀX and XXᵀ.
pub fn prepare(x: &[Vec<f64>], y: &[Vec<f64>]) -> Result<Prepared, String> {
    let n = x.len();
    if n == 0 || n != y.len() {
        return Err(format!("{n} feature rows for {} target rows", y.len()));
    }
    let (p, q) = (x[0].len(), y[0].len());
    if let Some(i) = x.iter().position(|r| r.len() != p) {
        return Err(format!(
            "feature row {} has {} values, not {p}",
            i + 1,
            x[i].len()
        ));
    }
    if let Some(i) = y.iter().position(|r| r.len() != q) {
        return Err(format!(
            "target row {} has {} values, not {q}",
            i + 1,
            y[i].len()
        ));
    }
    let (xc, x_mean) = centred(x, p);
    let (yc, y_mean) = centred(y, q);
    let dual = n < p;
    let g = linalg::gram(&xc, dual);
    let r = g.rows;
    let eig = Mat::<f64>::from_fn(r, r, |i, j| g.at(i, j))
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| format!("the eigendecomposition did not converge: {e:?}"))?;
    let (u, s) = (eig.U(), eig.S().column_vector());
    let eigen: Vec<f64> = (0..r).map(|i| s[i].max(0.0)).collect();
    let top = eigen.iter().copied().fold(0.0, f64::max);
    let tol = top * f64::EPSILON * (64 * n.max(p)) as f64;
    let (basis, coords) = if dual {
        // B = Xᵀ W diag(f) Wᵀ Y: the basis is XᵀW (p x n), the coordinates WᵀY (n x q).
        let xt = Mat::<f64>::from_fn(p, n, |i, j| xc.at(j, i));
        let ym = Mat::<f64>::from_fn(n, q, |i, j| yc.at(i, j));
        (&xt * u, u.transpose() * &ym)
    } else {
        // B = U diag(f) Uᵀ XᵀY.
        let xty = linalg::at_b(&xc, &yc);
        let c = Mat::<f64>::from_fn(p, q, |i, j| xty.at(i, j));
        (u.to_owned(), u.transpose() * &c)
    };
    Ok(Prepared {
        x_mean,
        y_mean,
        basis,
        coords,
        eigen,
        tol,
    })
}

impl Prepared {
    /// The fit for penalty `lambda` (>= 0).
    pub fn solve(&self, lambda: f64) -> Ridge {
        let (p, r, q) = (self.basis.nrows(), self.eigen.len(), self.coords.ncols());
        let scaled = Mat::<f64>::from_fn(r, q, |i, j| {
            let e = self.eigen[i];
            if (lambda == 0.0 && e <= self.tol) || e + lambda == 0.0 {
                0.0
            } else {
                self.coords[(i, j)] / (e + lambda)
            }
        });
        let b = &self.basis * &scaled;
        let coef: Vec<Vec<f64>> = (0..p)
            .map(|i| (0..q).map(|j| b[(i, j)]).collect())
            .collect();
        let intercept = (0..q)
            .map(|j| self.y_mean[j] - (0..p).map(|i| self.x_mean[i] * coef[i][j]).sum::<f64>())
            .collect();
        Ridge { coef, intercept }
    }
}

impl Ridge {
    /// Predictions for one feature row.
    pub fn predict(&self, x: &[f64]) -> Vec<f64> {
        self.intercept
            .iter()
            .enumerate()
            .map(|(j, b)| {
                b + x
                    .iter()
                    .zip(&self.coef)
                    .map(|(xi, c)| xi * c[j])
                    .sum::<f64>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_linear_map_and_shrinks_with_lambda() {
        // y0 = 1 + 2 a - b, y1 = -3 + 0.5 b, over a small grid.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for a in 0..5 {
            for b in 0..4 {
                let (a, b) = (a as f64, (b * b) as f64);
                x.push(vec![a, b]);
                y.push(vec![1.0 + 2.0 * a - b, -3.0 + 0.5 * b]);
            }
        }
        let m = fit(&x, &y, 0.0).unwrap();
        assert!((m.coef[0][0] - 2.0).abs() < 1e-9 && (m.coef[1][0] + 1.0).abs() < 1e-9);
        assert!((m.intercept[0] - 1.0).abs() < 1e-9 && (m.intercept[1] + 3.0).abs() < 1e-9);
        assert!((m.predict(&[10.0, 1.0])[0] - 20.0).abs() < 1e-9);
        let r = fit(&x, &y, 100.0).unwrap();
        assert!(
            r.coef[0][0].abs() < 2.0 && r.coef[0][0] > 0.0,
            "{:?}",
            r.coef
        );
    }

    #[test]
    fn collinear_features_get_the_minimum_norm_fit() {
        // The second feature repeats the first: the weight is shared equally.
        let x: Vec<Vec<f64>> = (0..6).map(|i| vec![i as f64, i as f64]).collect();
        let y: Vec<Vec<f64>> = (0..6).map(|i| vec![4.0 * i as f64]).collect();
        let m = fit(&x, &y, 0.0).unwrap();
        assert!((m.coef[0][0] - 2.0).abs() < 1e-9 && (m.coef[1][0] - 2.0).abs() < 1e-9);
    }

    #[test]
    fn fewer_rows_than_features_use_the_dual_and_agree_with_the_primal() {
        // 5 rows, 8 features: the minimum-norm fit interpolates the targets exactly.
        let mut rng = crate::rng::Rng::new(3);
        let mut draw = || rng.below(1000) as f64 / 100.0;
        let x: Vec<Vec<f64>> = (0..5).map(|_| (0..8).map(|_| draw()).collect()).collect();
        let y: Vec<Vec<f64>> = (0..5).map(|_| vec![draw(), draw()]).collect();
        let m = fit(&x, &y, 0.0).unwrap();
        for (xi, yi) in x.iter().zip(&y) {
            for (p, o) in m.predict(xi).iter().zip(yi) {
                assert!((p - o).abs() < 1e-8, "{p} {o}");
            }
        }
        // The same problem with rows repeated (so more rows than features) has the same
        // minimum-norm solution.
        let x2: Vec<Vec<f64>> = x.iter().chain(&x).cloned().collect();
        let x2: Vec<Vec<f64>> = x2.iter().chain(&x2).cloned().collect();
        let y2: Vec<Vec<f64>> = y.iter().chain(&y).cloned().collect();
        let y2: Vec<Vec<f64>> = y2.iter().chain(&y2).cloned().collect();
        let m2 = fit(&x2, &y2, 0.0).unwrap();
        for (a, b) in m.coef.iter().flatten().zip(m2.coef.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{a} {b}");
        }
        // Ridge: the dual with λ equals the primal with 4λ on the four-fold data.
        let r = fit(&x, &y, 0.5).unwrap();
        let r2 = fit(&x2, &y2, 2.0).unwrap();
        for (a, b) in r.coef.iter().flatten().zip(r2.coef.iter().flatten()) {
            assert!((a - b).abs() < 1e-9, "{a} {b}");
        }
        let e = fit(&[vec![1.0, 2.0], vec![1.0]], &[vec![1.0], vec![2.0]], 0.0).unwrap_err();
        assert!(e.contains("feature row 2 has 1 values, not 2"), "{e}");
    }
}
