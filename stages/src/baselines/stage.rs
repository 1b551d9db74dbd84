//! The `baselines` stage: what a language model has to beat, scored on the same rows and scale.
//!
//! - `mean`: each tissue's mean over the training rows.
//! - `kmers`: bag-of-k-mers frequencies (k = 2..5 by default; overlapping, or non-overlapping as
//!   in FloraBERT's original code) fed to one multi-output linear regression. The ridge penalty
//!   is `ridge` when given; otherwise the one of 0, 1e-4, ..., 1 with the lowest validation MSE
//!   (0 without validation rows).
//!
//! Inputs and the `transform` param are those of `finetune` (a ready `table`, or `promoters` +
//! `expression` + `split`), so that the three models are scored on one scale. Output:
//! `mean/predictions.tsv` and `kmers/predictions.tsv` (`id, target, observed, predicted` for the
//! test rows), and `summary.json` with every model's test metrics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::kmers::{self, Counting};
use super::ridge::{self, Ridge};
use crate::analysis::metrics::Metrics;
use crate::analysis::predictions;
use crate::model::examples::{self, Example, Split, TransformParam};
use crate::model::head::Transform;
use crate::Context;

/// Params of the `baselines` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Target transform, as `finetune` (default auto).
    pub transform: TransformParam,
    /// Offset of the log transform (default 0.001).
    pub offset: f64,
    /// k-mer lengths (default [2, 3, 4, 5]; each 1 to 6).
    pub k: Vec<usize>,
    /// `overlapping` or `non_overlapping` (default overlapping).
    pub counting: Counting,
    /// Ridge penalty; absent: chosen on the validation rows (default absent).
    pub ridge: Option<f64>,
    /// Seed of a drawn split, when the inputs have none (default 0).
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            transform: TransformParam::Auto,
            offset: 0.001,
            k: vec![2, 3, 4, 5],
            counting: Counting::Overlapping,
            ridge: None,
            seed: 0,
        }
    }
}

/// What the baselines scored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Rows per split.
    pub rows: BTreeMap<String, usize>,
    /// Rows left out, by reason.
    pub dropped: BTreeMap<String, usize>,
    /// The transform used.
    pub transform: Option<Transform>,
    /// k-mer features per sequence.
    pub features: usize,
    /// The ridge penalty of the k-mer model.
    pub ridge: f64,
    /// Test metrics over all targets, per model.
    pub test_all: BTreeMap<String, Metrics>,
    /// Test metrics per model and target.
    pub test: BTreeMap<String, BTreeMap<String, Metrics>>,
}

/// Penalties tried when `ridge` is not given.
const RIDGE_GRID: [f64; 6] = [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

/// Fits both baselines and writes their test predictions.
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, String> {
    let fail = |e: String| format!("baselines: {e}");
    if p.k.is_empty() || p.k.iter().any(|&k| !(1..=6).contains(&k)) {
        return Err(fail(format!("k {:?}: each k must be 1 to 6", p.k)));
    }
    if p.ridge.is_some_and(|r| !(r >= 0.0 && r.is_finite())) {
        return Err(fail("ridge must be a number >= 0".into()));
    }
    let data = examples::from_context(ctx, p.seed).map_err(fail)?;
    let t = p.transform.resolve(data.from_table);
    data.check_transform(t, p.offset).map_err(fail)?;
    let (train, valid, test) = (
        data.of(Split::Train),
        data.of(Split::Valid),
        data.of(Split::Test),
    );
    if train.is_empty() {
        return Err(fail("no training rows".into()));
    }
    let y = |rows: &[&Example]| -> Vec<Vec<f64>> {
        rows.iter()
            .map(|r| r.targets.iter().map(|&v| t.apply(v, p.offset)).collect())
            .collect()
    };
    let x = |rows: &[&Example]| -> Vec<Vec<f64>> {
        rows.iter()
            .map(|r| kmers::features(&r.seq, &p.k, p.counting))
            .collect()
    };
    let mut summary = Summary {
        dropped: data.dropped.clone(),
        transform: Some(t),
        features: kmers::width(&p.k),
        ..Summary::default()
    };
    for (name, rows) in [("train", &train), ("validation", &valid), ("test", &test)] {
        summary.rows.insert(name.into(), rows.len());
    }
    let (y_train, y_valid, y_test) = (y(&train), y(&valid), y(&test));
    let ids: Vec<&str> = test.iter().map(|r| r.id.as_str()).collect();

    // The mean of each tissue over the training rows.
    let n = y_train.len() as f64;
    let means: Vec<f64> = (0..data.targets.len())
        .map(|k| y_train.iter().map(|r| r[k]).sum::<f64>() / n)
        .collect();
    let mean_pred = vec![means; test.len()];
    let scored = predictions::score(&ids, &data.targets, &y_test, &mean_pred);
    write(ctx, "mean", &scored.text)?;
    record(&mut summary, "mean", scored);

    // Bag of k-mers, one multi-output linear fit.
    let x_train = x(&train);
    let x_valid = x(&valid);
    let fit = |lambda: f64| ridge::fit(&x_train, &y_train, lambda).map_err(fail);
    let (lambda, model) = match p.ridge {
        Some(l) => (l, fit(l)?),
        None if valid.is_empty() => (0.0, fit(0.0)?),
        None => {
            let mut best: Option<(f64, f64, Ridge)> = None;
            for l in RIDGE_GRID {
                let m = fit(l)?;
                let err = mse(&m, &x_valid, &y_valid);
                if best.as_ref().is_none_or(|(e, _, _)| err < *e) {
                    best = Some((err, l, m));
                }
            }
            let (_, l, m) = best.expect("the grid is not empty");
            (l, m)
        }
    };
    summary.ridge = lambda;
    let k_pred: Vec<Vec<f64>> = x(&test).iter().map(|xi| model.predict(xi)).collect();
    let scored = predictions::score(&ids, &data.targets, &y_test, &k_pred);
    write(ctx, "kmers", &scored.text)?;
    record(&mut summary, "kmers", scored);

    let json = ctx.out.join("summary.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&summary).expect("serializes"),
    )
    .map_err(|e| fail(format!("{}: {e}", json.display())))?;
    for (m, metrics) in &summary.test_all {
        eprintln!(
            "baselines: {m}: test R2 {:.3} (squared Pearson {:.3})",
            metrics.r2, metrics.pearson_r2
        );
    }
    Ok(summary)
}

fn mse(m: &Ridge, x: &[Vec<f64>], y: &[Vec<f64>]) -> f64 {
    let mut s = 0.0;
    let mut n = 0usize;
    for (xi, yi) in x.iter().zip(y) {
        for (p, o) in m.predict(xi).iter().zip(yi) {
            s += (p - o).powi(2);
            n += 1;
        }
    }
    s / n.max(1) as f64
}

fn record(summary: &mut Summary, model: &str, scored: predictions::Scored) {
    if let Some(all) = scored.all {
        summary.test_all.insert(model.into(), all);
    }
    summary.test.insert(model.into(), scored.per_target);
}

fn write(ctx: &Context, model: &str, text: &str) -> Result<(), String> {
    let dir = ctx.out.join(model);
    std::fs::create_dir_all(&dir).map_err(|e| format!("baselines: {}: {e}", dir.display()))?;
    let path = dir.join("predictions.tsv");
    std::fs::write(&path, text).map_err(|e| format!("baselines: {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(dir: &std::path::Path, table: &str) -> Context {
        std::fs::write(dir.join("table.tsv"), table).unwrap();
        let mut c = Context::new(dir.join("out"), dir.join("work"), dir.to_path_buf());
        std::fs::create_dir_all(&c.out).unwrap();
        c.inputs.insert("table".into(), dir.join("table.tsv"));
        c
    }

    #[test]
    fn kmers_recover_a_planted_linear_signal_and_beat_the_mean() {
        // Target = 3 x (share of "AC" dinucleotides) - 2 x (share of "GG") + 1, exactly.
        let mut rng = crate::rng::Rng::new(4);
        let mut table = String::from("id\tsequence\tleaf\n");
        for i in 0..300 {
            let s: Vec<u8> = (0..80).map(|_| b"ACGT"[rng.below(4)]).collect();
            let f = kmers::features(&s, &[2], Counting::Overlapping);
            // AC is index 0*4+1 = 1, GG is 2*4+2 = 10.
            let y = 3.0 * f[1] - 2.0 * f[10] + 1.0;
            table.push_str(&format!("s{i}\t{}\t{y}\n", String::from_utf8(s).unwrap()));
        }
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), &table);
        let s = run(
            &Params {
                k: vec![2],
                ..Params::default()
            },
            &ctx,
        )
        .unwrap();
        assert!(s.test_all["kmers"].r2 > 0.999, "{s:?}");
        assert!(s.test_all["mean"].r2 < 0.05);
        assert_eq!(s.transform, Some(Transform::None));
        let text = std::fs::read_to_string(ctx.out.join("kmers/predictions.tsv")).unwrap();
        assert!(text.starts_with("id\ttarget\tobserved\tpredicted\n"));
        assert_eq!(text.lines().count(), 1 + 90);
    }

    #[test]
    fn bad_params_and_inputs_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), "id\tsequence\tleaf\na\tACGT\t-1\n");
        let e = run(
            &Params {
                k: vec![9],
                ..Params::default()
            },
            &ctx,
        )
        .unwrap_err();
        assert!(e.contains("each k must be 1 to 6"), "{e}");
        let e = run(
            &Params {
                transform: TransformParam::Log,
                ..Params::default()
            },
            &ctx,
        )
        .unwrap_err();
        assert!(e.contains("no logarithm"), "{e}");
        let mut c = ctx.clone();
        c.inputs.clear();
        assert!(run(&Params::default(), &c)
            .unwrap_err()
            .contains("needs either an input `table`"));
    }
}
