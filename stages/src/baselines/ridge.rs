//! Multi-output linear regression with an optional ridge penalty, solved through faer's thin SVD
//! of the centred design matrix: B = V diag(s / (s² + λ)) Uᵀ Y, the intercept fitted unpenalised.
//! With λ = 0 this is the minimum-norm least-squares fit, which stays well defined when features
//! are collinear (k-mer frequencies of one k sum to one).

use faer::Mat;

/// A fitted model: one coefficient column and intercept per output.
#[derive(Debug, Clone, PartialEq)]
pub struct Ridge {
    /// (features, outputs).
    pub coef: Vec<Vec<f64>>,
    /// One per output.
    pub intercept: Vec<f64>,
}

/// Fits `y` (rows, outputs) on `x` (rows, features) with penalty `lambda` (0 for plain least
/// squares).
pub fn fit(x: &[Vec<f64>], y: &[Vec<f64>], lambda: f64) -> Result<Ridge, String> {
    let n = x.len();
    if n == 0 || n != y.len() {
        return Err(format!("{n} feature rows for {} target rows", y.len()));
    }
    let (p, q) = (x[0].len(), y[0].len());
    let xm: Vec<f64> = (0..p)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n as f64)
        .collect();
    let ym: Vec<f64> = (0..q)
        .map(|j| y.iter().map(|r| r[j]).sum::<f64>() / n as f64)
        .collect();
    let xc = Mat::<f64>::from_fn(n, p, |i, j| x[i][j] - xm[j]);
    let yc = Mat::<f64>::from_fn(n, q, |i, j| y[i][j] - ym[j]);
    let svd = xc
        .thin_svd()
        .map_err(|e| format!("the SVD did not converge: {e:?}"))?;
    let (u, v) = (svd.U(), svd.V());
    let s = svd.S().column_vector();
    let k = s.nrows();
    let top = (0..k).map(|i| s[i]).fold(0.0, f64::max);
    let tol = top * 1e-10 * n.max(p) as f64;
    // B = V D Uᵀ Yc with D = s / (s² + λ), singular values below tol dropped.
    let uty = u.transpose() * &yc;
    let scaled = Mat::<f64>::from_fn(k, q, |i, j| {
        let si = s[i];
        if si <= tol {
            0.0
        } else {
            uty[(i, j)] * si / (si * si + lambda)
        }
    });
    let b = v * &scaled;
    let coef: Vec<Vec<f64>> = (0..p)
        .map(|i| (0..q).map(|j| b[(i, j)]).collect())
        .collect();
    let intercept = (0..q)
        .map(|j| ym[j] - (0..p).map(|i| xm[i] * coef[i][j]).sum::<f64>())
        .collect();
    Ok(Ridge { coef, intercept })
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
}
