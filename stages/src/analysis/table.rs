//! Table 1 of the paper: every model's test metrics, over all tissues and per tissue, from the
//! `predictions.tsv` files the models wrote (`id, target, observed, predicted`).
//!
//! Each input of the stage holds models: a `predictions.tsv`, a folder holding one (`finetune`),
//! or a folder of such folders (named `<input>/<folder>`). A file of one model is named after its
//! input; a file with a leading `model` column (`baselines`: `constant`, `bow2` ... `bow5`) holds
//! one model per value, named by it. Names must be unique, and every model must have been scored
//! on the same (id, target) pairs; a difference is an error naming the first pair that differs.

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

/// The predictions files under one input, each with the name its models take: a file, a folder
/// holding `predictions.tsv` (named after the input), or a folder of such folders (named
/// `<input>/<folder>`).
fn files(name: &str, input: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let found =
        tsv::locate_all(input, &["predictions.tsv"]).map_err(|e| format!("input `{name}`: {e}"))?;
    Ok(found
        .into_iter()
        .map(|p| {
            let folder = p.parent().and_then(|d| d.strip_prefix(input).ok());
            match folder.filter(|f| !f.as_os_str().is_empty()) {
                Some(f) => (format!("{name}/{}", f.display()), p),
                None => (name.to_string(), p),
            }
        })
        .collect())
}

/// Reads one predictions file: `id, target, observed, predicted` (one model, called `name`), or
/// with a leading `model` column (a model per value, in order of appearance, each called by its
/// value, or `<name>/<value>` when `nested`).
fn read(name: &str, nested: bool, path: &Path) -> Result<Vec<(String, Predictions)>, String> {
    let shown = path.display().to_string();
    let (header, rows) = tsv::read_numbered(path).map_err(|e| format!("{shown}: {e}"))?;
    let want = ["id", "target", "observed", "predicted"];
    let lead = usize::from(header.first().is_some_and(|h| h == "model"));
    if header.len() < lead + 4 || header[lead..lead + 4] != want {
        return Err(format!(
            "{shown}: the header is {}, expected {} (optionally after `model`)",
            header.join(", "),
            want.join(", ")
        ));
    }
    let mut out: Vec<(String, Predictions)> = Vec::new();
    for (line, row) in rows {
        let model = match (lead, nested) {
            (0, _) => name.to_string(),
            (_, true) => format!("{name}/{}", row[0]),
            (_, false) => row[0].clone(),
        };
        let num = |c: usize| -> Result<f64, String> {
            row[lead + c].parse::<f64>().map_err(|_| {
                format!(
                    "{shown}: line {line}, column `{}`: {:?} is not a number",
                    want[c],
                    row[lead + c]
                )
            })
        };
        let slot = match out.iter().position(|(m, _)| *m == model) {
            Some(s) => s,
            None => {
                let empty = Predictions {
                    keys: Vec::new(),
                    observed: Vec::new(),
                    predicted: Vec::new(),
                };
                out.push((model, empty));
                out.len() - 1
            }
        };
        let p = &mut out[slot].1;
        p.observed.push(num(2)?);
        p.predicted.push(num(3)?);
        p.keys.push((row[lead].clone(), row[lead + 1].clone()));
    }
    Ok(out)
}

/// Reads every model named by the inputs, in order, checking that names are unique and that all
/// were scored on the same (id, target) rows.
fn load(inputs: &BTreeMap<String, PathBuf>) -> Result<Vec<(String, Predictions)>, String> {
    let mut out: Vec<(String, Predictions)> = Vec::new();
    let mut from: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (name, input) in inputs {
        for (base, path) in files(name, input)? {
            for (model, p) in read(&base, base != *name, &path)? {
                if let Some(first) = from.insert(model.clone(), path.clone()) {
                    return Err(format!(
                        "two models are called `{model}`: in {} and in {}",
                        first.display(),
                        path.display()
                    ));
                }
                if let Some((first, reference)) = out.first() {
                    same_rows(&model, &p, first, reference)?;
                }
                out.push((model, p));
            }
        }
    }
    if out.is_empty() {
        return Err("needs at least one input: a model's predictions".into());
    }
    Ok(out)
}

/// Fails, naming the first differing row, unless `p` was scored on the rows of `reference`.
fn same_rows(
    model: &str,
    p: &Predictions,
    first: &str,
    reference: &Predictions,
) -> Result<(), String> {
    let keys = &reference.keys;
    let Some(i) = (0..keys.len().max(p.keys.len())).find(|&i| keys.get(i) != p.keys.get(i)) else {
        return Ok(());
    };
    let show = |k: Option<&(String, String)>| {
        k.map_or("nothing".to_string(), |(id, t)| format!("{id} {t}"))
    };
    Err(format!(
        "{model} and {first} were not scored on the same rows: row {} is {} in one and {} in the other",
        i + 1,
        show(p.keys.get(i)),
        show(keys.get(i))
    ))
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
            // Counts as whole numbers, the rest to four places.
            let cell = |v: f64| match metric {
                "n" => format!("\t{v:.0}"),
                _ => format!("\t{v:.4}"),
            };
            text.push_str(&format!("{}\t{metric}", m.model));
            text.push_str(&cell(get(&m.all)));
            for (_, t) in &m.tissues {
                text.push_str(&cell(get(t)));
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
        // An undefined figure (a constant prediction has no correlation) shows as a dash.
        let cell = |v: f64| match v.is_nan() {
            true => " – |".to_string(),
            false => format!(" {v:.3} |"),
        };
        for m in models {
            text.push_str(&format!("| {} |{}", m.model, cell(get(&m.all))));
            for (_, t) in &m.tissues {
                text.push_str(&cell(get(t)));
            }
            text.push('\n');
        }
        text.push('\n');
    }
    if text.contains(" – |") {
        text.push_str("–: undefined (a constant prediction has no correlation).\n");
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
        let mut bl = String::from("model\tid\ttarget\tobserved\tpredicted\n");
        for (model, shift) in [("constant", 1.0), ("bow2", -1.0)] {
            for (id, t, o, p) in rows(shift) {
                bl.push_str(&format!("{model}\t{id}\t{t}\t{o}\t{p}\n"));
            }
        }
        std::fs::create_dir_all(dir.path().join("bl")).unwrap();
        std::fs::write(dir.path().join("bl/predictions.tsv"), &bl).unwrap();
        write(dir.path(), "runs/a/predictions.tsv", &rows(0.5));
        std::fs::create_dir_all(dir.path().join("runs/b")).unwrap();
        std::fs::write(dir.path().join("runs/b/predictions.tsv"), &bl).unwrap();
        let inputs = BTreeMap::from([
            ("finetune".to_string(), dir.path().join("ft")),
            ("baselines".to_string(), dir.path().join("bl")),
            ("runs".to_string(), dir.path().join("runs")),
        ]);
        let m = score(&inputs).unwrap();
        let names: Vec<&str> = m.iter().map(|x| x.model.as_str()).collect();
        assert_eq!(
            names,
            [
                "constant",
                "bow2",
                "finetune",
                "runs/a",
                "runs/b/constant",
                "runs/b/bow2"
            ]
        );
        // finetune's leaf is exact; a constant shift keeps Pearson at 1 but costs R².
        let ft = &m[2];
        assert_eq!(ft.tissues[0].0, "leaf");
        assert_eq!(ft.tissues[0].1.r2, 1.0);
        let mean = &m[0];
        assert!((mean.tissues[0].1.pearson_r2 - 1.0).abs() < 1e-12);
        assert!((mean.tissues[0].1.r2 - (1.0 - 3.0 / 8.0)).abs() < 1e-12);
        let table = tsv(&m);
        assert!(table.starts_with("model\tmetric\tAll\tleaf\troot\n"));
        assert!(table.contains("finetune\tr2\t"));
        assert!(table.contains("finetune\tn\t6\t3\t3\n"), "{table}");
        let md = markdown(&m);
        assert!(md.contains("squared Pearson correlation (what the FloraBERT paper reported)"));
        assert!(md.contains("| finetune | "));
        assert!(!md.contains("undefined"), "{md}");
        // A prediction that is the same for every row has no correlation: a dash, explained.
        let mut flat = String::from("id\ttarget\tobserved\tpredicted\n");
        for (id, t, o, _) in rows(0.0) {
            flat.push_str(&format!("{id}\t{t}\t{o}\t0.1\n"));
        }
        std::fs::write(dir.path().join("flat.tsv"), flat).unwrap();
        let m = score(&BTreeMap::from([(
            "flat".to_string(),
            dir.path().join("flat.tsv"),
        )]))
        .unwrap();
        assert!(m[0].all.pearson_r2.is_nan());
        let md = markdown(&m);
        assert!(
            md.contains("| flat | – | – | – |") && md.contains("–: undefined"),
            "{md}"
        );
        assert!(tsv(&m).contains("flat\tpearson_r\tNaN\tNaN\tNaN\n"));
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
        // The same model name from two inputs.
        write(dir.path(), "a.tsv", &[("x", "leaf", 1.0, 1.0)]);
        let two = "model\tid\ttarget\tobserved\tpredicted\na\tx\tleaf\t1\t1\n";
        std::fs::write(dir.path().join("c.tsv"), two).unwrap();
        let e = score(&BTreeMap::from([
            ("a".to_string(), dir.path().join("a.tsv")),
            ("c".to_string(), dir.path().join("c.tsv")),
        ]))
        .unwrap_err();
        assert!(e.contains("two models are called `a`"), "{e}");
        std::fs::write(dir.path().join("c.tsv"), "model\tid\tvalue\n").unwrap();
        let e = score(&BTreeMap::from([(
            "c".to_string(),
            dir.path().join("c.tsv"),
        )]))
        .unwrap_err();
        assert!(
            e.contains("expected id, target, observed, predicted"),
            "{e}"
        );
    }
}
