//! Agreement between observed and predicted values: R², Pearson, Spearman and MSE.
//!
//! Two numbers are both called "R²" in this field. [`Metrics::r2`] is the coefficient of
//! determination, 1 - SS_res / SS_tot (negative when a model is worse than the mean);
//! [`Metrics::pearson_r2`] is the squared Pearson correlation, which the FloraBERT paper reported
//! as its R² and which ignores any bias or scale error in the predictions.

use serde::{Deserialize, Serialize};

/// How well `predicted` matches `observed`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Pairs compared.
    pub n: usize,
    /// Coefficient of determination.
    pub r2: f64,
    /// Pearson correlation.
    pub pearson_r: f64,
    /// Squared Pearson correlation (the paper's "R²").
    pub pearson_r2: f64,
    /// Spearman rank correlation (ties get their mean rank).
    pub spearman: f64,
    /// Mean squared error.
    pub mse: f64,
}

/// Computes every metric; NaN where one is undefined (fewer than two pairs, or no variance).
///
/// ```
/// let m = flora_stages::analysis::metrics::compare(&[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0]);
/// assert!((m.mse - 1.0 / 3.0).abs() < 1e-12);
/// assert!((m.r2 - 0.5).abs() < 1e-12);
/// assert_eq!(m.spearman, 1.0);
/// ```
pub fn compare(observed: &[f64], predicted: &[f64]) -> Metrics {
    assert_eq!(observed.len(), predicted.len(), "paired values");
    let n = observed.len();
    let mse = if n == 0 {
        f64::NAN
    } else {
        observed
            .iter()
            .zip(predicted)
            .map(|(o, p)| (o - p).powi(2))
            .sum::<f64>()
            / n as f64
    };
    let mean = mean(observed);
    let ss_tot: f64 = observed.iter().map(|o| (o - mean).powi(2)).sum();
    let r2 = if n < 2 || ss_tot == 0.0 || !varies(observed) {
        f64::NAN
    } else {
        1.0 - mse * n as f64 / ss_tot
    };
    let pearson_r = pearson(observed, predicted);
    Metrics {
        n,
        r2,
        pearson_r,
        pearson_r2: pearson_r * pearson_r,
        spearman: pearson(&ranks(observed), &ranks(predicted)),
        mse,
    }
}

/// Whether `x` holds two different values. The mean of equal values can differ from them by a
/// rounding, so sums of squares around it are no test: a constant prediction had a Pearson r of
/// ±1e-9 where it has none.
fn varies(x: &[f64]) -> bool {
    x.iter().any(|v| *v != x[0])
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len().max(1) as f64
}

/// Pearson correlation; NaN with fewer than two values or no variance.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    if x.len() < 2 || !varies(x) || !varies(y) {
        return f64::NAN;
    }
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// 1-based ranks, ties sharing their mean rank.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        // observed 1 2 3 4, predicted 2 2 3 5: residuals -1 0 0 -1, SS_res 2, SS_tot 5.
        let m = compare(&[1.0, 2.0, 3.0, 4.0], &[2.0, 2.0, 3.0, 5.0]);
        assert_eq!(m.n, 4);
        assert!((m.mse - 0.5).abs() < 1e-12);
        assert!((m.r2 - (1.0 - 2.0 / 5.0)).abs() < 1e-12);
        // Pearson by hand: x-mx = -1.5 -.5 .5 1.5; y = 2 2 3 5, my = 3, y-my = -1 -1 0 2.
        // sxy = 1.5 + .5 + 0 + 3 = 5; sxx = 5; syy = 6.
        let r = 5.0 / (5.0f64 * 6.0).sqrt();
        assert!((m.pearson_r - r).abs() < 1e-12);
        assert!((m.pearson_r2 - r * r).abs() < 1e-12);
        // Ranks: observed 1 2 3 4; predicted 1.5 1.5 3 4.
        assert_eq!(ranks(&[2.0, 2.0, 3.0, 5.0]), vec![1.5, 1.5, 3.0, 4.0]);
        let s = pearson(&[1.0, 2.0, 3.0, 4.0], &[1.5, 1.5, 3.0, 4.0]);
        assert!((m.spearman - s).abs() < 1e-12);
    }

    #[test]
    fn a_shifted_prediction_keeps_pearson_but_loses_r2() {
        let obs = [1.0, 2.0, 3.0, 4.0, 5.0];
        let shifted: Vec<f64> = obs.iter().map(|x| x + 3.0).collect();
        let m = compare(&obs, &shifted);
        assert!((m.pearson_r2 - 1.0).abs() < 1e-12);
        assert!(m.r2 < -3.0, "{}", m.r2);
    }

    #[test]
    fn a_constant_has_no_correlation_even_where_its_mean_rounds() {
        // The mean of 1554 copies of 0.1 is not 0.1 in f64, which gave a "variance" of 1e-30.
        let constant = vec![0.1; 1554];
        let other: Vec<f64> = (0..1554).map(|i| f64::from(i % 7)).collect();
        assert_ne!(mean(&constant), 0.1);
        let m = compare(&other, &constant);
        assert!(m.pearson_r.is_nan() && m.pearson_r2.is_nan() && m.spearman.is_nan());
        assert!(compare(&constant, &other).r2.is_nan());
        assert!(m.r2.is_finite() && m.mse.is_finite());
    }

    #[test]
    fn undefined_cases_are_nan_not_panics() {
        assert!(compare(&[], &[]).mse.is_nan());
        assert!(compare(&[1.0], &[1.0]).r2.is_nan());
        assert!(compare(&[2.0, 2.0], &[1.0, 3.0]).pearson_r.is_nan());
    }
}
