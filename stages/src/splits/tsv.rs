//! Small helpers for the TSV files that pass between stages (`gene_id<TAB>...` with a header).

use std::path::{Path, PathBuf};

/// Finds `name` in `input`: the input itself if it is a file, else `input/name`.
pub fn locate(input: &Path, name: &str) -> Result<PathBuf, String> {
    if input.is_file() {
        return Ok(input.to_path_buf());
    }
    let p = input.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{} has no {name}", input.display()))
    }
}

/// Reads a table with a header: (header, rows); CSV or TSV by the header's separators.
pub fn read_table(path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = text.lines().next().unwrap_or_default();
    if first.trim().is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    let delimiter = if first.contains('\t') { b'\t' } else { b',' };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            format!("{}: line {line}: {e}", path.display())
        })?;
        rows.push(rec.iter().map(|c| c.trim().to_string()).collect());
    }
    Ok((header, rows))
}

/// The gene ids in the first column of a table with a header (a promoters manifest, an
/// expression table, a split).
pub fn gene_ids(path: &Path) -> Result<Vec<String>, String> {
    Ok(read_table(path)?
        .1
        .into_iter()
        .filter_map(|r| r.into_iter().next())
        .collect())
}
