//! The `report` stage: one self-contained HTML file that shows what a workflow found and how.
//!
//! Every input (an upstream stage's output folder, or a file) is searched for what it can show:
//! `table1.tsv` (Table 1, from `analysis`: the two kinds of R² as tables, best model per column
//! in bold, every metric under a fold), SVG figures (inline, as drawn by the stages: predicted
//! against observed, positional importance, species PCA, ...), `train_log.tsv` (training curves,
//! drawn here with plotters) and `summary.json` (each stage's own account, under a fold). Then
//! the provenance: the workflow file and its `--set` flags, and for every job upstream its kind
//! and version, params, cache key, artifact digest, inputs, device, threads, start and duration,
//! from the engine's records. Outside a workflow (`flora stage report`) there are no records;
//! the report says so and lists its inputs.
//!
//! The page has no external references (no scripts, fonts or images to fetch) and is
//! well-formed XML as well as HTML.

pub mod html;
pub mod provenance;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analysis::figures;
use crate::Context;
use html::escape;
use provenance::Provenance;

/// Params of the `report` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// The page's title (default `flora report`).
    pub title: String,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            title: "flora report".into(),
        }
    }
}

/// What went into the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Table 1 files shown.
    pub tables: usize,
    /// Figures embedded, training curves included.
    pub figures: usize,
    /// Training curves drawn.
    pub curves: usize,
    /// Stage summaries shown.
    pub summaries: usize,
    /// Upstream jobs in the provenance.
    pub jobs: usize,
}

/// The files of one input that the report can show, each with its path relative to the input.
#[derive(Default)]
struct Found {
    tables: Vec<(String, PathBuf)>,
    figures: Vec<(String, PathBuf)>,
    logs: Vec<(String, PathBuf)>,
    summaries: Vec<(String, PathBuf)>,
}

/// Files under `input` (itself if a file), sorted, at most four folders deep.
fn walk(input: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    fn go(
        root: &Path,
        dir: &Path,
        depth: usize,
        out: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), String> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                if depth < 4 {
                    go(root, &p, depth + 1, out)?;
                }
            } else {
                let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                out.push((rel, p));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    if input.is_file() {
        let name = input
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        out.push((name, input.to_path_buf()));
    } else if input.is_dir() {
        go(input, input, 0, &mut out)?;
    } else {
        return Err(format!("{}: no such file or folder", input.display()));
    }
    Ok(out)
}

fn find(input: &Path) -> Result<Found, String> {
    let mut found = Found::default();
    for (rel, path) in walk(input)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name == "table1.tsv" {
            found.tables.push((rel, path));
        } else if name.ends_with(".svg") {
            found.figures.push((rel, path));
        } else if name == "train_log.tsv" {
            found.logs.push((rel, path));
        } else if name == "summary.json" {
            found.summaries.push((rel, path));
        }
    }
    Ok(found)
}

/// Table 1 as HTML: one table per kind of R², the best model of each column in bold, and every
/// metric in a fold.
fn table1(path: &Path) -> Result<String, String> {
    let (header, rows) = crate::splits::tsv::read_table(path)?;
    if header.len() < 3 || header[0] != "model" || header[1] != "metric" {
        return Err(format!(
            "{}: expected a header `model, metric, All, ...`, found {}",
            path.display(),
            header.join(", ")
        ));
    }
    let columns = &header[2..];
    let numeric: Vec<bool> = std::iter::once(false)
        .chain(columns.iter().map(|_| true))
        .collect();
    let mut head: Vec<String> = vec!["model".into()];
    head.extend(columns.iter().map(|c| escape(c)));
    let mut out = String::new();
    for (metric, title) in [
        (
            "r2",
            "R² as the coefficient of determination, 1 − SS<sub>res</sub>/SS<sub>tot</sub>",
        ),
        (
            "pearson_r2",
            "R² as the squared Pearson correlation (what the FloraBERT paper reported)",
        ),
    ] {
        let of: Vec<&Vec<String>> = rows
            .iter()
            .filter(|r| r.get(1).is_some_and(|m| m == metric))
            .collect();
        if of.is_empty() {
            continue;
        }
        let value = |r: &Vec<String>, c: usize| r.get(c + 2).and_then(|v| v.parse::<f64>().ok());
        let best: Vec<Option<f64>> = (0..columns.len())
            .map(|c| {
                of.iter()
                    .filter_map(|r| value(r, c))
                    .filter(|v| v.is_finite())
                    .reduce(f64::max)
            })
            .collect();
        let body: Vec<Vec<String>> = of
            .iter()
            .map(|r| {
                let mut cells = vec![escape(&r[0])];
                for (c, top) in best.iter().enumerate() {
                    cells.push(match value(r, c) {
                        // Undefined (a constant prediction has no correlation).
                        Some(v) if v.is_nan() => "–".to_string(),
                        // Four places, as table1.tsv has them: rounding those again to three
                        // could disagree with table1.md.
                        Some(v) if *top == Some(v) => {
                            format!("<span class=\"best\">{v:.4}</span>")
                        }
                        Some(v) => format!("{v:.4}"),
                        None => escape(r.get(c + 2).map_or("", String::as_str)),
                    });
                }
                cells
            })
            .collect();
        out.push_str(&format!("<h3>{title}</h3>\n"));
        out.push_str(&html::table(&head, &body, &numeric));
    }
    let mut all_head = vec!["model".to_string(), "metric".to_string()];
    all_head.extend(columns.iter().map(|c| escape(c)));
    let all: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape(c)).collect())
        .collect();
    let mut numeric_all = vec![false, false];
    numeric_all.extend(columns.iter().map(|_| true));
    out.push_str(
        "<details><summary>Every metric (R², Pearson r and r², Spearman, MSE, n)</summary>\n",
    );
    out.push_str(&html::table(&all_head, &all, &numeric_all));
    out.push_str("</details>\n");
    Ok(out)
}

/// The training curve of a `train_log.tsv`: every column whose name holds `loss`, against
/// `step` (or the first column).
fn curve(path: &Path, title: &str) -> Result<String, String> {
    let (header, rows) = crate::splits::tsv::read_table(path)?;
    let x = header.iter().position(|h| h == "step").unwrap_or(0);
    let series: Vec<(String, Vec<(f64, f64)>)> = header
        .iter()
        .enumerate()
        .filter(|(i, h)| *i != x && h.contains("loss"))
        .map(|(i, h)| {
            let points = rows
                .iter()
                .filter_map(|r| Some((r.get(x)?.parse().ok()?, r.get(i)?.parse().ok()?)))
                .collect();
            (h.clone(), points)
        })
        .filter(|(_, points): &(String, Vec<(f64, f64)>)| !points.is_empty())
        .collect();
    if series.is_empty() {
        return Err(format!("{}: no loss column with numbers", path.display()));
    }
    figures::curves(&series, &header[x], "loss", title)
}

fn figure(svg: &str, caption: &str) -> String {
    format!(
        "<figure>\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
        escape(caption)
    )
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The provenance section.
fn provenance_html(prov: Option<&Provenance>, ctx: &Context) -> String {
    let mut out = String::from("<h2 id=\"provenance\">Provenance</h2>\n");
    out.push_str(&format!(
        "<p>Report written by flora {}.</p>\n",
        escape(env!("CARGO_PKG_VERSION"))
    ));
    match prov.filter(|p| !p.jobs.is_empty()) {
        None => out.push_str(
            "<p class=\"muted\">No upstream jobs: the inputs are files, not stages of this \
             workflow (as with <code>flora stage report</code>, outside a workflow), so there are \
             no records of how they were made.</p>\n",
        ),
        Some(p) => {
            let total: f64 = p.jobs.iter().map(|j| j.duration_s).sum();
            out.push_str(&format!(
                "<p>Workflow <code>{}</code> (<code>{}</code>); {} upstream jobs, {:.1} s of job time in all.</p>\n",
                escape(&p.workflow.name),
                escape(&p.workflow.path),
                p.jobs.len(),
                total
            ));
            if !p.workflow.overrides.is_empty() {
                let flags: Vec<String> = p
                    .workflow
                    .overrides
                    .iter()
                    .map(|o| format!("<code>{}</code>", escape(o)))
                    .collect();
                out.push_str(&format!(
                    "<p>Command-line overrides: {}</p>\n",
                    flags.join(" ")
                ));
            }
            let head: Vec<String> = [
                "job",
                "kind",
                "device",
                "threads",
                "started (UTC)",
                "seconds",
                "key",
                "artifact",
                "flora",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let short = |d: &str| {
                format!(
                    "<code title=\"{}\">{}</code>",
                    escape(d),
                    escape(&d[..d.len().min(12)])
                )
            };
            let rows: Vec<Vec<String>> = p
                .jobs
                .iter()
                .map(|j| {
                    vec![
                        escape(&j.job),
                        format!("{} v{}", escape(&j.kind), j.kind_version),
                        escape(&j.device),
                        j.threads.to_string(),
                        escape(&j.started),
                        format!("{:.2}", j.duration_s),
                        short(&j.key),
                        short(&j.artifact),
                        escape(&j.flora_version),
                    ]
                })
                .collect();
            out.push_str(&html::table(
                &head,
                &rows,
                &[false, false, false, true, false, true, false, false, false],
            ));
            out.push_str("<h3>Params and inputs of every job</h3>\n");
            for j in &p.jobs {
                let inputs: Vec<String> = j
                    .inputs
                    .iter()
                    .map(|(name, source, digest)| {
                        format!("{name} = {source} ({})", &digest[..digest.len().min(16)])
                    })
                    .collect();
                let params = serde_json::to_string_pretty(&j.params).unwrap_or_default();
                out.push_str(&format!(
                    "<details><summary><code>{}</code></summary>\n<pre>params: {}\ninputs:\n  {}</pre>\n</details>\n",
                    escape(&j.job),
                    escape(&params),
                    escape(&inputs.join("\n  "))
                ));
            }
            out.push_str(&format!(
                "<details><summary>The workflow file, <code>{}</code></summary>\n<pre>{}</pre>\n</details>\n",
                escape(&p.workflow.path),
                escape(&p.workflow.text)
            ));
        }
    }
    out.push_str("<h3>This report's inputs</h3>\n");
    let rows: Vec<Vec<String>> = ctx
        .inputs
        .iter()
        .map(|(name, path)| {
            vec![
                escape(name),
                format!("<code>{}</code>", escape(&path.display().to_string())),
            ]
        })
        .collect();
    out.push_str(&html::table(
        &["input".into(), "path".into()],
        &rows,
        &[false, false],
    ));
    out
}

/// Writes `report.html` (and `summary.json`) into `ctx.out`.
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, String> {
    let fail = |e: String| format!("report: {e}");
    if ctx.inputs.is_empty() {
        return Err(fail(
            "needs at least one input: the outputs of the stages to report on".into(),
        ));
    }
    let prov = match &ctx.provenance {
        Some(path) => Some(Provenance::read(path).map_err(fail)?),
        None => None,
    };
    let mut summary = Summary {
        jobs: prov.as_ref().map_or(0, |p| p.jobs.len()),
        ..Summary::default()
    };
    let mut tables = String::new();
    let mut figs = String::new();
    let mut curves = String::new();
    let mut details = String::new();
    for (name, input) in &ctx.inputs {
        let found = find(input).map_err(fail)?;
        for (rel, path) in &found.tables {
            tables.push_str(&format!(
                "<p class=\"muted\">From <code>{}/{}</code>.</p>\n",
                escape(name),
                escape(rel)
            ));
            tables.push_str(&table1(path).map_err(fail)?);
            summary.tables += 1;
        }
        for (rel, path) in &found.figures {
            let text = read(path).map_err(fail)?;
            let Some(svg) = html::inline_svg(&text) else {
                eprintln!("report: {}: not an SVG figure, left out", path.display());
                continue;
            };
            figs.push_str(&figure(svg, &format!("{name}/{rel}")));
            summary.figures += 1;
        }
        for (rel, path) in &found.logs {
            let title = format!("{name}: training curve");
            match curve(path, &title) {
                Ok(svg) => {
                    curves.push_str(&figure(&svg, &format!("{name}/{rel}")));
                    summary.curves += 1;
                    summary.figures += 1;
                }
                Err(e) => eprintln!("report: {e}; no curve drawn"),
            }
        }
        for (rel, path) in &found.summaries {
            let text = read(path).map_err(fail)?;
            let pretty = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(text);
            details.push_str(&format!(
                "<details><summary><code>{}/{}</code></summary>\n<pre>{}</pre>\n</details>\n",
                escape(name),
                escape(rel),
                escape(&pretty)
            ));
            summary.summaries += 1;
        }
    }
    let mut page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>{title}</title>\n<style>{}</style>\n</head>\n<body>\n<h1>{title}</h1>\n",
        html::STYLE,
        title = escape(&p.title)
    );
    if let Some(pr) = &prov {
        page.push_str(&format!(
            "<p class=\"muted\">Workflow <code>{}</code>, written {} by flora {}.</p>\n",
            escape(&pr.workflow.name),
            escape(&pr.written),
            escape(&pr.flora_version)
        ));
    }
    page.push_str("<nav><a href=\"#table1\">Table 1</a><a href=\"#figures\">Figures</a><a href=\"#training\">Training</a><a href=\"#stages\">Stages</a><a href=\"#provenance\">Provenance</a></nav>\n");
    let section = |id: &str, title: &str, body: &str, empty: &str| {
        let body = if body.is_empty() {
            format!("<p class=\"muted\">{empty}</p>\n")
        } else {
            body.to_string()
        };
        format!("<h2 id=\"{id}\">{title}</h2>\n{body}")
    };
    page.push_str(&section(
        "table1",
        "Table 1: test-set performance",
        &tables,
        "No input holds a table1.tsv (the analysis stage writes it).",
    ));
    page.push_str(&section(
        "figures",
        "Figures",
        &figs,
        "No input holds a figure.",
    ));
    page.push_str(&section(
        "training",
        "Training curves",
        &curves,
        "No input holds a train_log.tsv.",
    ));
    page.push_str(&section(
        "stages",
        "What each stage reported",
        &details,
        "No input holds a summary.json.",
    ));
    page.push_str(&provenance_html(prov.as_ref(), ctx));
    page.push_str("</body>\n</html>\n");
    for (file, text) in [
        ("report.html", page),
        (
            "summary.json",
            serde_json::to_string_pretty(&summary).expect("serializes"),
        ),
    ] {
        let path = ctx.out.join(file);
        std::fs::write(&path, text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    }
    eprintln!(
        "report: {} table(s), {} figure(s) ({} training curves), {} stage summaries, {} upstream jobs",
        summary.tables, summary.figures, summary.curves, summary.summaries, summary.jobs
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::figures::ScatterPanel;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Parses the page as XML and returns the names of every element, in document order.
    fn elements(page: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse_with_options(
            page,
            roxmltree::ParsingOptions {
                allow_dtd: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("the report is not well-formed: {e}"));
        doc.descendants()
            .filter(|n| n.is_element())
            .map(|n| n.tag_name().name().to_string())
            .collect()
    }

    #[test]
    fn the_report_holds_the_table_every_figure_curves_and_provenance() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            &d.join("an/table1.tsv"),
            "model\tmetric\tAll\tleaf\nfinetune\tr2\t0.6\t0.7\nfinetune\tpearson_r2\t0.65\t0.72\nbow5\tr2\t0.4\t0.8\nbow5\tpearson_r2\t0.45\t0.81\nconstant\tr2\t0.1\t-0.0042\nconstant\tpearson_r2\t0.12\tNaN\n",
        );
        let panel = ScatterPanel {
            target: "leaf".into(),
            points: vec![(1.0, 1.1), (2.0, 1.9)],
            pearson_r2: 0.99,
        };
        let scatter = figures::scatter(&[panel], "finetune <&> test").unwrap();
        write(&d.join("an/scatter_finetune.svg"), &scatter);
        write(
            &d.join("an/nested/extra.svg"),
            &format!("<?xml version=\"1.0\"?>\n{scatter}"),
        );
        write(
            &d.join("ft/train_log.tsv"),
            "epoch\tstep\ttrain_loss\tval_loss\tlr\n1\t10\t2.0\t2.5\t0.001\n2\t20\t1.5\t2.1\t0.001\n3\t30\t1.2\t\t0.001\n",
        );
        write(
            &d.join("ft/summary.json"),
            "{\"test_r2\": 0.6, \"note\": \"a < b\"}",
        );
        let prov = Provenance {
            flora_version: "9.9.9".into(),
            written: "2026-11-26T00:00:00Z".into(),
            workflow: provenance::WorkflowInfo {
                name: "demo".into(),
                path: "workflows/demo.yaml".into(),
                text: "stages:\n  ft: {kind: finetune} # <b>\n".into(),
                overrides: vec!["--set ft.epochs=3".into()],
            },
            jobs: vec![provenance::JobInfo {
                job: "ft".into(),
                kind: "finetune".into(),
                kind_version: 1,
                params: serde_json::json!({"epochs": 3}),
                key: "ab".repeat(32),
                artifact: "cd".repeat(32),
                inputs: vec![("model".into(), "pretrain".into(), "ef".repeat(32))],
                started: "2026-11-26T00:00:00Z".into(),
                duration_s: 12.5,
                host: "node1".into(),
                device: "gpu 0".into(),
                threads: 4,
                flora_version: "9.9.9".into(),
            }],
        };
        write(&d.join("prov.json"), &serde_json::to_string(&prov).unwrap());
        let mut ctx = Context::new(d.join("out"), d.join("work"), d.into());
        std::fs::create_dir_all(&ctx.out).unwrap();
        ctx.inputs.insert("analysis".into(), d.join("an"));
        ctx.inputs.insert("finetune".into(), d.join("ft"));
        ctx.provenance = Some(d.join("prov.json"));
        let s = run(&Params::default(), &ctx).unwrap();
        assert_eq!(
            s,
            Summary {
                tables: 1,
                figures: 3,
                curves: 1,
                summaries: 1,
                jobs: 1
            }
        );
        let page = std::fs::read_to_string(ctx.out.join("report.html")).unwrap();
        let names = elements(&page);
        assert_eq!(names.iter().filter(|n| *n == "svg").count(), 3);
        assert_eq!(names.iter().filter(|n| *n == "figure").count(), 3);
        // Table 1 twice (one per R²) plus every metric, the provenance's jobs and the inputs.
        assert_eq!(names.iter().filter(|n| *n == "table").count(), 5);
        // The best model of each column is bold: finetune for All, bow5 for leaf.
        assert!(page.contains("<td>finetune</td><td class=\"num\"><span class=\"best\">0.6000</span></td><td class=\"num\">0.7000</td>"), "{page}");
        assert!(page.contains("<span class=\"best\">0.8000</span>"));
        assert!(
            page.contains("<td>constant</td><td class=\"num\">0.1200</td><td class=\"num\">–</td>"),
            "{page}"
        );
        for text in [
            "squared Pearson correlation",
            "finetune: training curve",
            "val_loss",
            "a &lt; b",
            "gpu 0",
            "12.50",
            "--set ft.epochs=3",
            "# &lt;b&gt;",
            "finetune v1",
            "abababababab",
        ] {
            assert!(page.contains(text), "{text}");
        }
        // No external references.
        assert!(!page.contains("<script") && !page.contains("src=\"http"));

        // Outside a workflow: no records, said plainly; an empty input set is an error.
        ctx.provenance = None;
        run(&Params::default(), &ctx).unwrap();
        let page = std::fs::read_to_string(ctx.out.join("report.html")).unwrap();
        elements(&page);
        assert!(page.contains("No upstream jobs"));
        ctx.inputs.clear();
        assert!(run(&Params::default(), &ctx)
            .unwrap_err()
            .contains("at least one input"));
    }

    #[test]
    fn a_malformed_table_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("an/table1.tsv"), "x\ty\n1\t2\n");
        let mut ctx = Context::new(
            dir.path().join("out"),
            dir.path().join("w"),
            dir.path().into(),
        );
        std::fs::create_dir_all(&ctx.out).unwrap();
        ctx.inputs.insert("analysis".into(), dir.path().join("an"));
        let e = run(&Params::default(), &ctx).unwrap_err();
        assert!(
            e.contains("table1.tsv: expected a header `model, metric, All"),
            "{e}"
        );
    }
}
