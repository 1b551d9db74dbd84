//! `flora check`: compares a workflow's key figures with an expected-results file committed
//! beside it (`<workflow>.expected.yaml`), within stated tolerances.
//!
//! The file names figures (a number read from a stage's output: a TSV cell, a row filter and a
//! column, or a JSON path) and checks on them: `expect` ± `tolerance`, `min`/`max`, or `above`
//! another figure (value > factor × other + margin). Figures come from the cache, for the
//! workflow as it stands (with any `--set`): a stage that is not up to date is an error that says
//! to run it first.
//!
//! ```yaml
//! figures:
//!   finetune_r2: {stage: analysis, file: table1.tsv, row: {model: finetune, metric: r2}, column: All}
//!   best_kmers_r2: {stage: analysis, file: table1.tsv, row: {model: "bow*", metric: r2}, column: All, reduce: max}
//!   near: {stage: importance, file: importance.tsv, row: {from: "<= 100"}, column: mean_abs_change, reduce: mean}
//!   rows: {stage: finetune, file: summary.json, json: rows.test}
//! checks:
//!   - {figure: finetune_r2, expect: 0.42, tolerance: 0.05}
//!   - {figure: finetune_r2, above: best_kmers_r2, why: the model beats every k-mer baseline}
//!   - {figure: rows, min: 100}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::Deserialize;

use super::run::{load_graph, open_existing_cache};
use super::{Cli, WorkflowArgs};
use crate::plan::{self, Freshness};

/// One or more checks failed (exit status 1).
#[derive(Debug)]
pub struct ChecksFailed(pub usize, pub usize);

impl std::fmt::Display for ChecksFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} checks failed", self.0, self.1)
    }
}

impl std::error::Error for ChecksFailed {}

/// The expected-results file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    figures: BTreeMap<String, Figure>,
    checks: Vec<Check>,
}

/// Where a figure is read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Figure {
    /// The job (`stage` or `stage[item]`).
    stage: String,
    /// The file inside its output.
    file: String,
    /// TSV: the rows whose cells match (exact, `prefix*`, or `<= x`, `>= x`, `< x`, `> x`).
    #[serde(default)]
    row: BTreeMap<String, String>,
    /// TSV: the column.
    column: Option<String>,
    /// JSON: a dotted path (numbers index arrays).
    json: Option<String>,
    /// TSV: how several matching rows become one number (default: exactly one row must match).
    #[serde(default)]
    reduce: Reduce,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Reduce {
    #[default]
    One,
    Max,
    Min,
    Mean,
}

/// A condition on a figure.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Check {
    figure: String,
    expect: Option<f64>,
    tolerance: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    above: Option<String>,
    #[serde(default)]
    margin: f64,
    #[serde(default = "one")]
    factor: f64,
    why: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// `flora check` arguments.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The workflow and its `--set` flags.
    #[command(flatten)]
    pub workflow: WorkflowArgs,
    /// The expected-results file (default: `<workflow>.expected.yaml` beside the workflow).
    #[arg(long, value_name = "FILE")]
    pub expected: Option<PathBuf>,
}

/// Whether `cell` matches `pattern`.
fn matches(cell: &str, pattern: &str) -> bool {
    let p = pattern.trim();
    for (op, f) in [
        ("<=", (|a, b| a <= b) as fn(f64, f64) -> bool),
        (">=", |a, b| a >= b),
        ("<", |a, b| a < b),
        (">", |a, b| a > b),
    ] {
        if let Some(rest) = p.strip_prefix(op) {
            return match (cell.parse::<f64>(), rest.trim().parse::<f64>()) {
                (Ok(a), Ok(b)) => f(a, b),
                _ => false,
            };
        }
    }
    match p.strip_suffix('*') {
        Some(prefix) => cell.starts_with(prefix),
        None => cell == p,
    }
}

/// Reads one figure from `path`.
fn read_figure(name: &str, fig: &Figure, path: &Path) -> anyhow::Result<f64> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("figure `{name}`: {shown}"))?;
    if let Some(json) = &fig.json {
        let mut v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("figure `{name}`: {shown}"))?;
        for part in json.split('.') {
            v = match part.parse::<usize>() {
                Ok(i) => v.get(i).cloned(),
                Err(_) => v.get(part).cloned(),
            }
            .with_context(|| format!("figure `{name}`: {shown} has no `{json}` (at `{part}`)"))?;
        }
        return v
            .as_f64()
            .with_context(|| format!("figure `{name}`: `{json}` in {shown} is {v}, not a number"));
    }
    let column = fig
        .column
        .as_ref()
        .with_context(|| format!("figure `{name}`: give `column` (a TSV) or `json`"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let col = |c: &str| {
        header.iter().position(|h| *h == c).with_context(|| {
            format!(
                "figure `{name}`: {shown} has no column `{c}` (it has {})",
                header.join(", ")
            )
        })
    };
    let target = col(column)?;
    let filters: Vec<(usize, &String)> = fig
        .row
        .iter()
        .map(|(c, v)| Ok((col(c)?, v)))
        .collect::<anyhow::Result<_>>()?;
    let mut values = Vec::new();
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split('\t').collect();
        if filters
            .iter()
            .all(|(c, v)| cells.get(*c).is_some_and(|cell| matches(cell, v)))
        {
            let cell = cells.get(target).copied().unwrap_or("");
            values.push(cell.parse::<f64>().with_context(|| {
                format!(
                    "figure `{name}`: {shown} line {}: `{column}` is {cell:?}, not a number",
                    i + 2
                )
            })?);
        }
    }
    if values.is_empty() {
        bail!("figure `{name}`: no row of {shown} matches {:?}", fig.row);
    }
    Ok(match fig.reduce {
        Reduce::One if values.len() > 1 => bail!(
            "figure `{name}`: {} rows of {shown} match {:?}; narrow `row` or set `reduce: max|min|mean`",
            values.len(),
            fig.row
        ),
        Reduce::One => values[0],
        Reduce::Max => values.iter().copied().fold(f64::MIN, f64::max),
        Reduce::Min => values.iter().copied().fold(f64::MAX, f64::min),
        Reduce::Mean => values.iter().sum::<f64>() / values.len() as f64,
    })
}

/// The expected-results file beside `workflow`.
fn default_expected(workflow: &Path) -> PathBuf {
    let stem = workflow.file_stem().unwrap_or_default().to_string_lossy();
    workflow.with_file_name(format!("{stem}.expected.yaml"))
}

/// `flora check`.
pub fn check(cli: &Cli, args: &CheckArgs) -> anyhow::Result<()> {
    let path = args
        .expected
        .clone()
        .unwrap_or_else(|| default_expected(&args.workflow.workflow));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the expected results {}", path.display()))?;
    let expected: Expected = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: not an expected-results file", path.display()))?;
    let graph = load_graph(&args.workflow)?;
    let cache = open_existing_cache(cli)?;
    let n = graph.jobs.len();
    let states = plan::plan(&graph, &cache, &vec![false; n], &vec![true; n])?;
    let mut values: BTreeMap<&str, f64> = BTreeMap::new();
    for (name, fig) in &expected.figures {
        let j = graph
            .jobs
            .iter()
            .position(|job| job.id == fig.stage)
            .with_context(|| format!("figure `{name}`: the workflow has no job `{}`", fig.stage))?;
        let Freshness::Cached { artifact, .. } = &states[j] else {
            bail!(
                "figure `{name}`: `{}` is not up to date in the cache; run `flora run {}` first",
                fig.stage,
                args.workflow.workflow.display()
            );
        };
        let file = cache.artifact_path(artifact).join(&fig.file);
        values.insert(name, read_figure(name, fig, &file)?);
    }
    let mut failed = 0;
    let width = expected
        .checks
        .iter()
        .map(|c| c.why.as_ref().unwrap_or(&c.figure).chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    outln!(
        "{:<width$} {:>10}  {:<32} result",
        "check",
        "value",
        "expected"
    );
    for c in &expected.checks {
        let v = *values.get(c.figure.as_str()).with_context(|| {
            format!(
                "a check names the figure `{}`, which is not defined",
                c.figure
            )
        })?;
        let mut wants = Vec::new();
        let mut ok = true;
        if let Some(e) = c.expect {
            let tol = c.tolerance.with_context(|| {
                format!("check on `{}`: `expect` needs a `tolerance`", c.figure)
            })?;
            ok &= (v - e).abs() <= tol;
            wants.push(format!("{e} ± {tol}"));
        }
        if let Some(m) = c.min {
            ok &= v >= m;
            wants.push(format!(">= {m}"));
        }
        if let Some(m) = c.max {
            ok &= v <= m;
            wants.push(format!("<= {m}"));
        }
        if let Some(other) = &c.above {
            let o = *values.get(other.as_str()).with_context(|| {
                format!(
                    "check on `{}`: `above` names `{other}`, which is not a figure",
                    c.figure
                )
            })?;
            let bound = c.factor * o + c.margin;
            ok &= v > bound;
            // The bound, and how it comes from the other figure: `> 2 × far + 0.01 = 0.0843`.
            let scaled = if c.factor == 1.0 {
                other.clone()
            } else {
                format!("{} × {other}", c.factor)
            };
            let plus = if c.margin == 0.0 {
                String::new()
            } else {
                format!(" + {}", c.margin)
            };
            wants.push(format!("> {scaled}{plus} = {bound:.4}"));
        }
        if wants.is_empty() {
            bail!(
                "check on `{}`: give expect + tolerance, min, max or above",
                c.figure
            );
        }
        failed += usize::from(!ok);
        let label = c.why.clone().unwrap_or_else(|| c.figure.clone());
        outln!(
            "{:<width$} {:>10.4}  {:<32} {}",
            label,
            v,
            wants.join(", "),
            if ok { "ok" } else { "FAILED" }
        );
    }
    if failed > 0 {
        return Err(ChecksFailed(failed, expected.checks.len()).into());
    }
    outln!(
        "all {} checks passed ({})",
        expected.checks.len(),
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_patterns() {
        assert!(matches("bow5", "bow*") && !matches("constant", "bow*"));
        assert!(matches("51", "<= 100") && !matches("151", "<= 100") && matches("301", ">300"));
        assert!(matches("finetune", "finetune") && !matches("x", "< 3"));
    }
}
