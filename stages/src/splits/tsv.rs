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

/// A table's header, and its rows with their 1-based line numbers.
pub type Numbered = (Vec<String>, Vec<(usize, Vec<String>)>);

/// Reads a table with a header (plain or compressed; CSV or TSV by the header's separators),
/// keeping each row's line number. Errors do not name the file: callers add it.
pub fn read_numbered(path: &Path) -> Result<Numbered, String> {
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut crate::genomics::io::open_text(path).map_err(|e| e.to_string())?,
        &mut text,
    )
    .map_err(|e| e.to_string())?;
    let first = text.lines().next().unwrap_or_default();
    if first.trim().is_empty() {
        return Err("the file is empty".into());
    }
    let delimiter = if first.contains('\t') { b'\t' } else { b',' };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            format!("line {line}: {e}")
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        rows.push((line, rec.iter().map(|c| c.trim().to_string()).collect()));
    }
    Ok((header, rows))
}

/// Reads a table with a header: (header, rows).
pub fn read_table(path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let (header, rows) = read_numbered(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((header, rows.into_iter().map(|(_, r)| r).collect()))
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
