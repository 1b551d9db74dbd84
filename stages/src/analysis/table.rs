//! Table 1 of the paper: every model's test metrics, over all tissues and per tissue, from the
//! `predictions.tsv` files the models wrote (`id, target, observed, predicted`).
//!
//! Each input of the stage names a model: a `predictions.tsv`, a folder holding one (`finetune`),
//! or a folder of such folders (`baselines`: `mean/`, `kmers/`), whose models are named
//! `<input>/<folder>`. Every model must have been scored on the same (id, target) pairs; a
//! difference is an error naming the first pair that differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metrics::{self, Metrics};
use crate::splits::tsv;
use crate::Context;

/// Params of the `analysis` stage (none yet).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {}

/// One model's metrics: over all tissues, then per tissue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    /// The model's name.
    pub model: String,
    /// Over every tissue and sequence.
    pub all: Metrics,
    /// Per tissue, in the order of the predictions file.
    pub tissues: Vec<(String, Metrics)>,
}

/// One model's predictions, read back.
struct Predictions {
    keys: Vec<(String, String)>,
    observed: Vec<f64>,
    predicted: Vec<f64>,
}

/// The models under one input, with their names.
fn models(name: &str, input: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    if input.is_file() {
        return Ok(vec![(name.to_string(), input.to_path_buf())]);
    }
    if input.join("predictions.tsv").is_file() {
        return Ok(vec![(name.to_string(), input.join("predictions.tsv"))]);
    }
    let mut subs: Vec<PathBuf> = std::fs::read_dir(input)
        .map_err(|e| format!("{}: {e}", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("predictions.tsv").is_file())
        .collect();
    subs.sort();
    if subs.is_empty() {
        return Err(format!(
            "input `{name}` ({}) holds no predictions.tsv",
            input.display()
        ));
    }
    Ok(subs
        .into_iter()
        .map(|p| {
            let sub = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (format!("{name}/{sub}"), p.join("predictions.tsv"))
        })
        .collect())
}

fn read(path: &Path) -> Result<Predictions, String> {
    let shown = path.display().to_string();
    let (header, rows) = tsv::read_numbered(path).map_err(|e| format!("{shown}: {e}"))?;
    let want = ["id", "target", "observed", "predicted"];
    if header.len() < 4 || header[..4] != want {
        return Err(format!(
            "{shown}: the header is {}, expected {}",
            header.join(", "),
            want.join(", ")
        ));
    }
    let mut out = Predictions {
        keys: Vec::new(),
        observed: Vec::new(),
        predicted: Vec::new(),
    };
    for (line, row) in rows {
        let num = |c: usize| -> Result<f64, String> {
            row[c].parse::<f64>().map_err(|_| {
                format!(
                    "{shown}: line {line}, column `{}`: {:?} is not a number",
                    want[c], row[c]
                )
            })
        };
        out.observed.push(num(2)?);
        out.predicted.push(num(3)?);
        out.keys.push((row[0].clone(), row[1].clone()));
    }
    Ok(out)
}

/// Reads every model named by the inputs, in order, checking that all were scored on the same
/// (id, target) rows.
fn load(inputs: &BTreeMap<String, PathBuf>) -> Result<Vec<(String, Predictions)>, String> {
    let mut named = Vec::new();
    for (name, input) in inputs {
        named.extend(models(name, input)?);
    }
    if named.is_empty() {
        return Err("needs at least one input: a model's predictions".into());
    }
    let mut out: Vec<(String, Predictions)> = Vec::new();
    for (model, path) in named {
        let p = read(&path)?;
        if let Some((first, reference)) = out.first() {
            let keys = &reference.keys;
            if let Some(i) =
                (0..keys.len().max(p.keys.len())).find(|&i| keys.get(i) != p.keys.get(i))
            {
                let show = |k: Option<&(String, String)>| {
                    k.map_or("nothing".to_string(), |(id, t)| format!("{id} {t}"))
                };
                return Err(format!(
                    "{model} and {first} were not scored on the same rows: row {} is {} in one and {} in the other",
                    i + 1,
                    show(p.keys.get(i)),
                    show(keys.get(i))
                ));
            }
        }
        out.push((model, p));
    }
    Ok(out)
}

/// A model's pairs grouped by tissue, tissues in file order: (tissue, observed, predicted).
fn by_tissue(p: &Predictions) -> Vec<(String, Vec<f64>, Vec<f64>)> {
    let mut tissues: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    for (i, (_, t)) in p.keys.iter().enumerate() {
        let slot = match tissues.iter().position(|(name, _, _)| name == t) {
            Some(s) => s,
            None => {
                tissues.push((t.clone(), Vec::new(), Vec::new()));
                tissues.len() - 1
            }
        };
        tissues[slot].1.push(p.observed[i]);
        tissues[slot].2.push(p.predicted[i]);
    }
    tissues
}

fn metrics_of(model: &str, p: &Predictions) -> ModelMetrics {
    ModelMetrics {
        model: model.to_string(),
        all: metrics::compare(&p.observed, &p.predicted),
        tissues: by_tissue(p)
            .into_iter()
            .map(|(t, o, pr)| (t, metrics::compare(&o, &pr)))
            .collect(),
    }
}

/// Scores every model named by the inputs.
pub fn score(inputs: &BTreeMap<String, PathBuf>) -> Result<Vec<ModelMetrics>, String> {
    Ok(load(inputs)?
        .iter()
        .map(|(model, p)| metrics_of(model, p))
        .collect())
}

/// Table 1 as TSV: a row per model and metric, columns All and each tissue.
pub fn tsv(models: &[ModelMetrics]) -> String {
    let tissues: Vec<&str> = models
        .first()
        .map(|m| m.tissues.iter().map(|(t, _)| t.as_str()).collect())
        .unwrap_or_default();
    let mut text = format!("model\tmetric\tAll\t{}\n", tissues.join("\t"));
    for m in models {
        for (metric, get) in METRICS {
            text.push_str(&format!("{}\t{metric}\t{:.4}", m.model, get(&m.all)));
            for (_, t) in &m.tissues {
                text.push_str(&format!("\t{:.4}", get(t)));
            }
            text.push('\n');
        }
    }
    text
}

type Getter = fn(&Metrics) -> f64;

/// The metrics of the table, by name.
const METRICS: [(&str, Getter); 6] = [
    ("r2", |m| m.r2),
    ("pearson_r2", |m| m.pearson_r2),
    ("pearson_r", |m| m.pearson_r),
    ("spearman", |m| m.spearman),
    ("mse", |m| m.mse),
    ("n", |m| m.n as f64),
];

/// Table 1 as Markdown: one table for each R², named for what it is.
pub fn markdown(models: &[ModelMetrics]) -> String {
    let tissues: Vec<&str> = models
        .first()
        .map(|m| m.tissues.iter().map(|(t, _)| t.as_str()).collect())
        .unwrap_or_default();
    let mut text = String::new();
    for (title, get) in [
        (
            "R² as the coefficient of determination, 1 - SS_res / SS_tot",
            METRICS[0].1,
        ),
        (
            "R² as the squared Pearson correlation (what the FloraBERT paper reported)",
            METRICS[1].1,
        ),
    ] {
        text.push_str(&format!(
            "### {title}\n\n| model | All | {} |\n",
            tissues.join(" | ")
        ));
        text.push_str(&format!(
            "| --- | ---: |{}\n",
            " ---: |".repeat(tissues.len())
        ));
        for m in models {
            text.push_str(&format!("| {} | {:.3} |", m.model, get(&m.all)));
            for (_, t) in &m.tissues {
                text.push_str(&format!(" {:.3} |", get(t)));
            }
            text.push('\n');
        }
        text.push('\n');
    }
    text
}

/// Predicted-against-observed figures, one SVG per model (a panel per tissue), as
/// (file name, SVG text).
fn scatter_figures(loaded: &[(String, Predictions)]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (model, p) in loaded {
        let panels: Vec<super::figures::ScatterPanel> = by_tissue(p)
            .into_iter()
            .map(|(target, o, pr)| super::figures::ScatterPanel {
                pearson_r2: metrics::compare(&o, &pr).pearson_r2,
                target,
                points: o.into_iter().zip(pr).collect(),
            })
            .collect();
        let svg = super::figures::scatter(
            &panels,
            &format!("{model}: predicted against observed (test rows)"),
        )?;
        out.push((format!("scatter_{}.svg", model.replace('/', "_")), svg));
    }
    Ok(out)
}

/// Runs the stage: `table1.tsv`, `table1.md`, `metrics.json` and a `scatter_<model>.svg` per
/// model into `ctx.out`.
pub fn run(_p: &Params, ctx: &Context) -> Result<Vec<ModelMetrics>, String> {
    let fail = |e: String| format!("analysis: {e}");
    let loaded = load(&ctx.inputs).map_err(fail)?;
    let models: Vec<ModelMetrics> = loaded.iter().map(|(m, p)| metrics_of(m, p)).collect();
    for (name, svg) in scatter_figures(&loaded).map_err(fail)? {
        let path = ctx.out.join(&name);
        std::fs::write(&path, svg).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    }
    for (name, text) in [
        ("table1.tsv", tsv(&models)),
        ("table1.md", markdown(&models)),
        (
            "metrics.json",
            serde_json::to_string_pretty(&models).expect("serializes"),
        ),
    ] {
        let path = ctx.out.join(name);
        std::fs::write(&path, text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    }
    eprint!("{}", markdown(&models));
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, rows: &[(&str, &str, f64, f64)]) -> PathBuf {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut text = String::from("id\ttarget\tobserved\tpredicted\n");
        for (id, t, o, pr) in rows {
            text.push_str(&format!("{id}\t{t}\t{o}\t{pr}\n"));
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn table_one_from_a_model_folder_and_a_baselines_folder() {
        let dir = tempfile::tempdir().unwrap();
        let rows = |shift: f64| {
            vec![
                ("a", "leaf", 1.0, 1.0 + shift),
                ("a", "root", 2.0, 2.0),
                ("b", "leaf", 3.0, 3.0 + shift),
                ("b", "root", 4.0, 4.5),
                ("c", "leaf", 5.0, 5.0 + shift),
                ("c", "root", 6.0, 6.0),
            ]
        };
        write(dir.path(), "ft/predictions.tsv", &rows(0.0));
        write(dir.path(), "bl/mean/predictions.tsv", &rows(1.0));
        write(dir.path(), "bl/kmers/predictions.tsv", &rows(-1.0));
        let inputs = BTreeMap::from([
            ("finetune".to_string(), dir.path().join("ft")),
            ("baselines".to_string(), dir.path().join("bl")),
        ]);
        let m = score(&inputs).unwrap();
        let names: Vec<&str> = m.iter().map(|x| x.model.as_str()).collect();
        assert_eq!(names, ["baselines/kmers", "baselines/mean", "finetune"]);
        // finetune's leaf is exact; a constant shift keeps Pearson at 1 but costs R².
        let ft = &m[2];
        assert_eq!(ft.tissues[0].0, "leaf");
        assert_eq!(ft.tissues[0].1.r2, 1.0);
        let mean = &m[1];
        assert!((mean.tissues[0].1.pearson_r2 - 1.0).abs() < 1e-12);
        assert!((mean.tissues[0].1.r2 - (1.0 - 3.0 / 8.0)).abs() < 1e-12);
        let table = tsv(&m);
        assert!(table.starts_with("model\tmetric\tAll\tleaf\troot\n"));
        assert!(table.contains("finetune\tr2\t"));
        let md = markdown(&m);
        assert!(md.contains("squared Pearson correlation (what the FloraBERT paper reported)"));
        assert!(md.contains("| finetune | "));
    }

    #[test]
    fn models_scored_on_different_rows_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.tsv",
            &[("x", "leaf", 1.0, 1.0), ("y", "leaf", 2.0, 2.0)],
        );
        write(
            dir.path(),
            "b.tsv",
            &[("x", "leaf", 1.0, 1.0), ("z", "leaf", 2.0, 2.0)],
        );
        let inputs = BTreeMap::from([
            ("a".to_string(), dir.path().join("a.tsv")),
            ("b".to_string(), dir.path().join("b.tsv")),
        ]);
        let e = score(&inputs).unwrap_err();
        assert!(
            e.contains("row 2 is z leaf in one and y leaf in the other"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("a.tsv"),
            "id\ttarget\tobserved\tpredicted\nx\tleaf\thigh\t1\n",
        )
        .unwrap();
        let e = score(&BTreeMap::from([(
            "a".to_string(),
            dir.path().join("a.tsv"),
        )]))
        .unwrap_err();
        assert!(
            e.contains("a.tsv: line 2, column `observed`: \"high\""),
            "{e}"
        );
        assert!(score(&BTreeMap::new())
            .unwrap_err()
            .contains("at least one input"));
    }
}
