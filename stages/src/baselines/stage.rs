//! The `baselines` stage: what a language model has to beat, scored on the same rows and scale.
//!
//! - `constant`: each tissue's mean over the training rows.
//! - `bow<k>` for every k in `k` (2..5 by default): bag-of-k-mers frequencies (overlapping, or
//!   non-overlapping as in FloraBERT's original code) fed to one multi-output linear regression.
//!   The ridge penalty is `ridge` when given; otherwise, per model, the one of 0, 1e-4, ..., 1
//!   with the lowest validation MSE (0 without validation rows).
//!
//! Inputs and the `transform` param are those of `finetune` (a ready `table`, or `promoters` +
//! `expression` + `split`), so that every model is scored on one scale. Output:
//! `predictions.tsv` (`model, id, target, observed, predicted` for the test rows of every model)
//! and `summary.json` with every model's test metrics.

use std::collections::BTreeMap;

use rayon::prelude::*;
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
    /// k-mer lengths, one `bow<k>` model each (default [2, 3, 4, 5]; each 1 to 6).
    pub k: Vec<usize>,
    /// `overlapping` or `non_overlapping` (default overlapping).
    pub counting: Counting,
    /// Ridge penalty; absent: chosen on the validation rows (default absent).
    pub ridge: Option<f64>,
    /// Seed of a drawn split, when the inputs have none (default 0).
    pub seed: u64,
    /// A ready table's split (or fold) value whose rows are the validation rows, as `finetune`
    /// (default none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_fold: Option<String>,
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
            validation_fold: None,
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
    /// Features per sequence, per k-mer model.
    pub features: BTreeMap<String, usize>,
    /// The ridge penalty of each k-mer model.
    pub ridge: BTreeMap<String, f64>,
    /// Test metrics over all targets, per model.
    pub test_all: BTreeMap<String, Metrics>,
    /// Test metrics per model and target.
    pub test: BTreeMap<String, BTreeMap<String, Metrics>>,
}

/// Penalties tried when `ridge` is not given.
const RIDGE_GRID: [f64; 6] = [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

/// The rows of one split: k-mer features and transformed targets.
struct Rows {
    x: Vec<Vec<f64>>,
    y: Vec<Vec<f64>>,
}

/// Fits every baseline and writes their test predictions.
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, String> {
    let fail = |e: String| format!("baselines: {e}");
    if p.k.is_empty() || p.k.iter().any(|&k| !(1..=6).contains(&k)) {
        return Err(fail(format!("k {:?}: each k must be 1 to 6", p.k)));
    }
    if let Some(k) =
        p.k.iter()
            .enumerate()
            .find_map(|(i, k)| p.k[..i].contains(k).then_some(k))
    {
        return Err(fail(format!("k {:?}: {k} is listed twice", p.k)));
    }
    if p.ridge.is_some_and(|r| !(r >= 0.0 && r.is_finite())) {
        return Err(fail("ridge must be a number >= 0".into()));
    }
    let data = examples::from_context(ctx, p.seed, p.validation_fold.as_deref()).map_err(fail)?;
    if !data.left_out.is_empty() {
        eprintln!(
            "baselines: table columns left out (text, not targets): {}",
            data.left_out.join(", ")
        );
    }
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
    let mut summary = Summary {
        dropped: data.dropped.clone(),
        transform: Some(t),
        ..Summary::default()
    };
    for (name, rows) in [("train", &train), ("validation", &valid), ("test", &test)] {
        summary.rows.insert(name.into(), rows.len());
    }
    let (y_train, y_valid, y_test) = (y(&train), y(&valid), y(&test));
    let ids: Vec<&str> = test.iter().map(|r| r.id.as_str()).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(ctx.threads.max(1))
        .build()
        .map_err(|e| fail(format!("cannot start threads: {e}")))?;
    let mut text = predictions::header(true);
    let mut emit = |summary: &mut Summary, model: &str, predicted: &[Vec<f64>]| {
        let scored = predictions::score(Some(model), &ids, &data.targets, &y_test, predicted);
        text.push_str(&scored.rows);
        if let Some(all) = scored.all {
            summary.test_all.insert(model.into(), all);
        }
        summary.test.insert(model.into(), scored.per_target);
    };

    // The mean of each tissue over the training rows.
    let n = y_train.len() as f64;
    let means: Vec<f64> = (0..data.targets.len())
        .map(|k| y_train.iter().map(|r| r[k]).sum::<f64>() / n)
        .collect();
    emit(&mut summary, "constant", &vec![means; test.len()]);

    // Bag of k-mers, one multi-output linear fit per k.
    for &k in &p.k {
        let name = format!("bow{k}");
        let features = |rows: &[&Example]| -> Vec<Vec<f64>> {
            pool.install(|| {
                rows.par_iter()
                    .map(|r| kmers::features(&r.seq, &[k], p.counting))
                    .collect()
            })
        };
        let fit_rows = Rows {
            x: features(&train),
            y: y_train.clone(),
        };
        let valid_rows = Rows {
            x: features(&valid),
            y: y_valid.clone(),
        };
        let (lambda, model) = pool
            .install(|| choose(p.ridge, &fit_rows, &valid_rows))
            .map_err(|e| fail(format!("{name}: {e}")))?;
        let predicted: Vec<Vec<f64>> = features(&test).iter().map(|x| model.predict(x)).collect();
        summary.features.insert(name.clone(), kmers::width(&[k]));
        summary.ridge.insert(name.clone(), lambda);
        emit(&mut summary, &name, &predicted);
    }

    for (file, body) in [
        ("predictions.tsv", text),
        (
            "summary.json",
            serde_json::to_string_pretty(&summary).expect("serializes"),
        ),
    ] {
        let path = ctx.out.join(file);
        std::fs::write(&path, body).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    }
    for (m, metrics) in &summary.test_all {
        eprintln!(
            "baselines: {m}: test R2 {:.3} (squared Pearson {:.3})",
            metrics.r2, metrics.pearson_r2
        );
    }
    Ok(summary)
}

/// Fits on `train` with the given penalty, or with the one of [`RIDGE_GRID`] that predicts
/// `valid` best (0 when there are no validation rows). One decomposition serves every penalty.
fn choose(given: Option<f64>, train: &Rows, valid: &Rows) -> Result<(f64, Ridge), String> {
    let prepared = ridge::prepare(&train.x, &train.y)?;
    let grid: &[f64] = match given {
        Some(ref l) => std::slice::from_ref(l),
        None if valid.x.is_empty() => &[0.0],
        None => &RIDGE_GRID,
    };
    let mut best: Option<(f64, f64, Ridge)> = None;
    for &l in grid {
        let m = prepared.solve(l);
        let err = if grid.len() > 1 { mse(&m, valid) } else { 0.0 };
        if best.as_ref().is_none_or(|(e, _, _)| err < *e) {
            best = Some((err, l, m));
        }
    }
    let (_, l, m) = best.expect("the grid is not empty");
    Ok((l, m))
}

fn mse(m: &Ridge, rows: &Rows) -> f64 {
    let mut s = 0.0;
    let mut n = 0usize;
    for (xi, yi) in rows.x.iter().zip(&rows.y) {
        for (p, o) in m.predict(xi).iter().zip(yi) {
            s += (p - o).powi(2);
            n += 1;
        }
    }
    s / n.max(1) as f64
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
        assert!(s.test_all["bow2"].r2 > 0.999, "{s:?}");
        assert!(s.test_all["constant"].r2 < 0.05);
        assert_eq!(s.transform, Some(Transform::None));
        let text = std::fs::read_to_string(ctx.out.join("predictions.tsv")).unwrap();
        assert!(text.starts_with("model\tid\ttarget\tobserved\tpredicted\n"));
        assert_eq!(text.lines().count(), 1 + 2 * 90);
        let models: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| &l[..l.find('\t').unwrap()])
            .collect();
        assert_eq!(models.iter().filter(|&&m| m == "constant").count(), 90);
        assert_eq!(models.iter().filter(|&&m| m == "bow2").count(), 90);
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
                k: vec![3, 2, 3],
                ..Params::default()
            },
            &ctx,
        )
        .unwrap_err();
        assert!(e.contains("3 is listed twice"), "{e}");
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
