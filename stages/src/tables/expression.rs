//! The `expression` stage: expression tables in the layouts people have, to one TSV of genes x
//! tissues (TPM), or a ready `id, sequence, targets...` table passed through.
//!
//! | layout | rows | columns |
//! | --- | --- | --- |
//! | `genes_by_samples` | genes | a gene id, then one column per sample (TSV or CSV) |
//! | `runs_by_genes` | RNA-seq runs | `Cultivar`, `organism_part`, then one column per gene (the NAM/FloraBERT layout) |
//! | `ready` | sequences | an id, a sequence, then one column per target (values taken as they are) |
//!
//! Replicates (samples or runs of one tissue) are averaged. `NA` and empty cells are missing and
//! left out of the mean; a gene with no value for a tissue is dropped and counted. Any other
//! non-numeric cell is an error naming the file, line and column.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ordered::OrderedMap;
use crate::Context;

/// Which layout the table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Decide from the header: `Cultivar`+`organism_part` is runs_by_genes; a `sequence`/`seq`
    /// column is ready; anything else genes_by_samples.
    Auto,
    /// Genes in rows, samples in columns.
    GenesBySamples,
    /// Runs in rows, genes in columns (NAM/FloraBERT).
    RunsByGenes,
    /// `id, sequence, targets...`.
    Ready,
}

/// Params of the `expression` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// The table's layout (default auto).
    pub layout: Layout,
    /// runs_by_genes: `organism_part` -> tissue name, in output order (default: the study's 9
    /// maize tissues: endosperm, tassel, base->leaf_base, anther, middle->leaf_middle, ear, shoot,
    /// root, tip->leaf_tip). genes_by_samples: sample column -> tissue (default: each sample is
    /// its own tissue, or all are replicates of `tissue`).
    pub tissues: Option<OrderedMap>,
    /// genes_by_samples: every sample column is a replicate of this one tissue.
    pub tissue: Option<String>,
    /// runs_by_genes: keep only runs of this cultivar (default: all runs).
    pub cultivar: Option<String>,
    /// Drop genes whose TPM is below this in every tissue (default 1.0; not applied to `ready`).
    pub min_tpm: f64,
    /// Columns to leave out (e.g. `logMaxTPM`, `fold`).
    pub ignore_columns: Vec<String>,
    /// Fetch the table from this URL (http, https, file:// or a path) instead of an input.
    pub url: Option<String>,
    /// The fetched table's checksum, `sha256:HEX` or `md5:HEX` (default: not verified).
    pub checksum: Option<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            layout: Layout::Auto,
            tissues: None,
            tissue: None,
            cultivar: None,
            min_tpm: 1.0,
            ignore_columns: Vec::new(),
            url: None,
            checksum: None,
        }
    }
}

/// The study's 9 maize tissues, by the names flora gives them.
pub const TISSUES: [&str; 9] = [
    "endosperm",
    "tassel",
    "leaf_base",
    "anther",
    "leaf_middle",
    "ear",
    "shoot",
    "root",
    "leaf_tip",
];

/// The columns of [`TISSUES`] in the NAM/FloraBERT tables, in the same order.
const NAM_COLUMNS: [&str; 9] = [
    "endosperm",
    "tassel",
    "base",
    "anther",
    "middle",
    "ear",
    "shoot",
    "root",
    "tip",
];

/// The study's 9 maize tissues, as named in the NAM/FloraBERT tables, and their output names.
pub fn study_tissues() -> OrderedMap {
    let pairs: Vec<(&str, &str)> = NAM_COLUMNS.into_iter().zip(TISSUES).collect();
    OrderedMap::from_pairs(&pairs)
}

/// Why the stage failed.
#[derive(Debug, thiserror::Error)]
pub enum ExpressionError {
    /// The table could not be read.
    #[error("expression: {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong (with the line where there is one).
        message: String,
    },
    /// A cell is not a number.
    #[error("expression: {path}: line {line}, column `{column}`: {value:?} is not a number")]
    NotANumber {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The column's header.
        column: String,
        /// The cell.
        value: String,
    },
    /// Params that do not fit the table.
    #[error("expression: {0}")]
    Params(String),
    /// The output could not be written.
    #[error("expression: cannot write {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// A gene x tissue table (and, for ready tables, the sequences).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    /// Tissue (target) names, in column order.
    pub tissues: Vec<String>,
    /// One row per gene: id and one value per tissue.
    pub rows: Vec<(String, Vec<f64>)>,
    /// Sequences by id (ready tables only).
    pub sequences: Vec<(String, String)>,
}

/// What was read and dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// The layout used.
    pub layout: String,
    /// Genes (or sequences) read.
    pub genes: usize,
    /// Genes written.
    pub written: usize,
    /// Replicates averaged per tissue.
    pub replicates: BTreeMap<String, usize>,
    /// Genes dropped, by reason.
    pub dropped: BTreeMap<String, usize>,
}

struct Raw {
    path: PathBuf,
    header: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

fn read_raw(path: &Path) -> Result<Raw, ExpressionError> {
    let err = |message: String| ExpressionError::Read {
        path: path.to_path_buf(),
        message,
    };
    let (header, rows) = crate::splits::tsv::read_numbered(path).map_err(err)?;
    if rows.is_empty() {
        return Err(err("the table has a header but no rows".into()));
    }
    Ok(Raw {
        path: path.to_path_buf(),
        header,
        rows,
    })
}

/// A cell as a number; `None` for missing (`NA`, `NaN`, empty).
fn number(raw: &Raw, line: usize, col: usize, cell: &str) -> Result<Option<f64>, ExpressionError> {
    if cell.is_empty() || cell.eq_ignore_ascii_case("na") || cell.eq_ignore_ascii_case("nan") {
        return Ok(None);
    }
    match cell.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => Err(ExpressionError::NotANumber {
            path: raw.path.clone(),
            line,
            column: raw.header.get(col).cloned().unwrap_or_default(),
            value: cell.to_string(),
        }),
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Reads an expression table into genes x tissues.
pub fn read(path: &Path, p: &Params) -> Result<(Table, Summary), ExpressionError> {
    let raw = read_raw(path)?;
    let lower: Vec<String> = raw.header.iter().map(|h| h.to_ascii_lowercase()).collect();
    let layout = match p.layout {
        Layout::Auto
            if lower.len() > 2 && lower[0] == "cultivar" && lower[1] == "organism_part" =>
        {
            Layout::RunsByGenes
        }
        Layout::Auto if lower.iter().any(|h| h == "sequence" || h == "seq") => Layout::Ready,
        Layout::Auto => Layout::GenesBySamples,
        other => other,
    };
    let (table, mut summary) = match layout {
        Layout::RunsByGenes => runs_by_genes(&raw, p)?,
        Layout::Ready => ready(&raw, p)?,
        _ => genes_by_samples(&raw, p)?,
    };
    summary.layout = format!("{layout:?}");
    Ok((table, summary))
}

fn genes_by_samples(raw: &Raw, p: &Params) -> Result<(Table, Summary), ExpressionError> {
    // Sample columns: every column after the id that is not ignored.
    let samples: Vec<usize> = (1..raw.header.len())
        .filter(|&c| !p.ignore_columns.contains(&raw.header[c]))
        .collect();
    let tissue_of = |c: usize| -> Option<String> {
        let name = &raw.header[c];
        match (&p.tissues, &p.tissue) {
            (Some(map), _) => map.get(name).map(str::to_string),
            (None, Some(t)) => Some(t.clone()),
            (None, None) => Some(name.clone()),
        }
    };
    let mut tissues: Vec<String> = Vec::new();
    let mut columns: Vec<Vec<usize>> = Vec::new();
    for &c in &samples {
        if let Some(t) = tissue_of(c) {
            match tissues.iter().position(|x| *x == t) {
                Some(i) => columns[i].push(c),
                None => {
                    tissues.push(t);
                    columns.push(vec![c]);
                }
            }
        }
    }
    if let Some(map) = &p.tissues {
        let missing: Vec<&str> = map
            .0
            .iter()
            .filter(|(k, _)| !raw.header.contains(k))
            .map(|(k, _)| k.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(ExpressionError::Params(format!(
                "{}: no column {} (columns: {})",
                raw.path.display(),
                missing.join(", "),
                raw.header[1..].join(", ")
            )));
        }
    }
    if tissues.is_empty() {
        return Err(ExpressionError::Params(format!(
            "{}: no sample column left",
            raw.path.display()
        )));
    }
    let mut summary = Summary {
        replicates: tissues
            .iter()
            .zip(&columns)
            .map(|(t, c)| (t.clone(), c.len()))
            .collect(),
        ..Summary::default()
    };
    let mut table = Table {
        tissues: tissues.clone(),
        ..Table::default()
    };
    let mut seen = std::collections::HashSet::new();
    for (line, row) in &raw.rows {
        let id = row[0].clone();
        summary.genes += 1;
        if !seen.insert(id.clone()) {
            *summary
                .dropped
                .entry("duplicate gene id (first kept)".into())
                .or_default() += 1;
            continue;
        }
        let mut values = Vec::with_capacity(tissues.len());
        for cols in &columns {
            let mut reps = Vec::new();
            for &c in cols {
                if let Some(v) = number(raw, *line, c, &row[c])? {
                    reps.push(v);
                }
            }
            values.push(mean(&reps));
        }
        push_row(&mut table, &mut summary, id, values, p.min_tpm);
    }
    Ok((table, summary))
}

fn runs_by_genes(raw: &Raw, p: &Params) -> Result<(Table, Summary), ExpressionError> {
    let map = p.tissues.clone().unwrap_or_else(study_tissues);
    let genes: Vec<usize> = (2..raw.header.len())
        .filter(|&c| !p.ignore_columns.contains(&raw.header[c]))
        .collect();
    // Runs per output tissue.
    let mut runs: Vec<Vec<&(usize, Vec<String>)>> = vec![Vec::new(); map.0.len()];
    for row in &raw.rows {
        if let Some(c) = &p.cultivar {
            if row.1[0] != *c {
                continue;
            }
        }
        if let Some(i) = map.0.iter().position(|(from, _)| *from == row.1[1]) {
            runs[i].push(row);
        }
    }
    let missing: Vec<&str> = map
        .0
        .iter()
        .zip(&runs)
        .filter(|(_, r)| r.is_empty())
        .map(|((from, _), _)| from.as_str())
        .collect();
    if !missing.is_empty() {
        let mut parts: Vec<&str> = raw.rows.iter().map(|r| r.1[1].as_str()).collect();
        parts.sort_unstable();
        parts.dedup();
        return Err(ExpressionError::Params(format!(
            "{}: no runs of tissue {}{} (organism_part values: {})",
            raw.path.display(),
            missing.join(", "),
            p.cultivar
                .as_ref()
                .map(|c| format!(" for cultivar {c}"))
                .unwrap_or_default(),
            parts.join(", ")
        )));
    }
    let mut summary = Summary {
        genes: genes.len(),
        replicates: map
            .0
            .iter()
            .zip(&runs)
            .map(|((_, to), r)| (to.clone(), r.len()))
            .collect(),
        ..Summary::default()
    };
    let mut table = Table {
        tissues: map.0.iter().map(|(_, to)| to.clone()).collect(),
        ..Table::default()
    };
    for &g in &genes {
        let mut values = Vec::with_capacity(runs.len());
        for tissue_runs in &runs {
            let mut reps = Vec::new();
            for (line, row) in tissue_runs {
                if let Some(v) = number(raw, *line, g, &row[g])? {
                    reps.push(v);
                }
            }
            values.push(mean(&reps));
        }
        push_row(
            &mut table,
            &mut summary,
            raw.header[g].clone(),
            values,
            p.min_tpm,
        );
    }
    Ok((table, summary))
}

fn ready(raw: &Raw, p: &Params) -> Result<(Table, Summary), ExpressionError> {
    let lower: Vec<String> = raw.header.iter().map(|h| h.to_ascii_lowercase()).collect();
    let seq_col = lower
        .iter()
        .position(|h| h == "sequence" || h == "seq")
        .ok_or_else(|| {
            ExpressionError::Params(format!("{}: no `sequence` column", raw.path.display()))
        })?;
    let id_col = lower
        .iter()
        .position(|h| h == "id" || h == "gene_id")
        .unwrap_or(if seq_col == 0 { 1 } else { 0 });
    // Targets: the other columns whose first value is a number (the rest must be ignored).
    let first = &raw.rows[0];
    let mut targets = Vec::new();
    for c in 0..raw.header.len() {
        if c == seq_col || c == id_col || p.ignore_columns.contains(&raw.header[c]) {
            continue;
        }
        if number(raw, first.0, c, &first.1[c]).is_ok() {
            targets.push(c);
        }
    }
    if targets.is_empty() {
        return Err(ExpressionError::Params(format!(
            "{}: no numeric target column",
            raw.path.display()
        )));
    }
    let mut summary = Summary::default();
    let mut table = Table {
        tissues: targets.iter().map(|&c| raw.header[c].clone()).collect(),
        ..Table::default()
    };
    let mut seen = std::collections::HashSet::new();
    for (line, row) in &raw.rows {
        summary.genes += 1;
        let id = row[id_col].clone();
        if !seen.insert(id.clone()) {
            *summary
                .dropped
                .entry("duplicate id (first kept)".into())
                .or_default() += 1;
            continue;
        }
        let sequence = row[seq_col].to_ascii_uppercase();
        if sequence.is_empty() || !sequence.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ExpressionError::Read {
                path: raw.path.clone(),
                message: format!("line {line}: the sequence of `{id}` is empty or not letters"),
            });
        }
        let values = targets
            .iter()
            .map(|&c| number(raw, *line, c, &row[c]))
            .collect::<Result<Vec<_>, _>>()?;
        if push_row(
            &mut table,
            &mut summary,
            id.clone(),
            values,
            f64::NEG_INFINITY,
        ) {
            table.sequences.push((id, sequence));
        }
    }
    Ok((table, summary))
}

/// Adds a gene unless a tissue has no value or it is below `min` everywhere; says whether it did.
fn push_row(
    table: &mut Table,
    summary: &mut Summary,
    id: String,
    values: Vec<Option<f64>>,
    min: f64,
) -> bool {
    let Some(values) = values.into_iter().collect::<Option<Vec<f64>>>() else {
        *summary.dropped.entry("missing values".into()).or_default() += 1;
        return false;
    };
    if values.iter().all(|v| *v < min) {
        *summary
            .dropped
            .entry(format!("below {min} TPM in every tissue"))
            .or_default() += 1;
        return false;
    }
    table.rows.push((id, values));
    summary.written += 1;
    true
}

/// Writes `expression.tsv`, `summary.json` and, for ready tables, `sequences.fa.gz`.
pub fn write(out: &Path, table: &Table, summary: &Summary) -> Result<(), ExpressionError> {
    let werr = |path: &Path, e: &dyn std::fmt::Display| ExpressionError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let tsv = out.join("expression.tsv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tsv).map_err(|e| werr(&tsv, &e))?);
    let mut text = format!("gene_id\t{}\n", table.tissues.join("\t"));
    for (id, values) in &table.rows {
        text.push_str(id);
        for v in values {
            text.push('\t');
            text.push_str(&format!("{v}"));
        }
        text.push('\n');
    }
    w.write_all(text.as_bytes())
        .and_then(|_| w.flush())
        .map_err(|e| werr(&tsv, &e))?;
    if !table.sequences.is_empty() {
        let fa = out.join("sequences.fa.gz");
        let mut bgzf = rust_htslib::bgzf::Writer::from_path(&fa).map_err(|e| werr(&fa, &e))?;
        for (id, s) in &table.sequences {
            bgzf.write_all(format!(">{id}\n{s}\n").as_bytes())
                .map_err(|e| werr(&fa, &e))?;
        }
        bgzf.flush().map_err(|e| werr(&fa, &e))?;
    }
    let json = out.join("summary.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(summary).expect("serializes"),
    )
    .map_err(|e| werr(&json, &e))?;
    Ok(())
}

/// Runs the stage: input `table`, outputs into `ctx.out`.
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, ExpressionError> {
    let fetched;
    let path = match (ctx.inputs.get("table"), &p.url) {
        (Some(_), Some(_)) => {
            return Err(ExpressionError::Params(
                "give the table as an input `table` or a `url` param, not both".into(),
            ))
        }
        (Some(path), None) => path,
        (None, Some(url)) => {
            std::fs::create_dir_all(&ctx.work)
                .map_err(|e| ExpressionError::Params(format!("{}: {e}", ctx.work.display())))?;
            let name = url
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty())
                .unwrap_or("table");
            fetched = ctx.work.join(name);
            eprintln!("expression: fetching {url}");
            crate::download::fetch_one(url, p.checksum.as_deref(), &ctx.workdir, &fetched)
                .map_err(|e| ExpressionError::Params(format!("fetching {url}: {e}")))?;
            &fetched
        }
        (None, None) => {
            return Err(ExpressionError::Params(
                "needs an input `table` (the expression file) or a `url` param".into(),
            ))
        }
    };
    let (table, summary) = read(path, p)?;
    if table.rows.is_empty() {
        return Err(ExpressionError::Params(format!(
            "no gene left of {} (dropped: {:?})",
            summary.genes, summary.dropped
        )));
    }
    write(&ctx.out, &table, &summary)?;
    eprintln!(
        "expression: {} of {} genes written, tissues {:?}; dropped: {:?}",
        summary.written, summary.genes, table.tissues, summary.dropped
    );
    Ok(summary)
}

#[cfg(test)]
mod tests;
