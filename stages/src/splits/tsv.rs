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

/// Every file a stage's input holds under one of `names`: the input itself when it is a file;
/// else `input/<name>` for the first of `names` there; else the same in each of its folders, in
/// name order, at any depth (a fan-out stage's items). None at all is an error naming `names`.
pub fn locate_all(input: &Path, names: &[&str]) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, names: &[&str], out: &mut Vec<PathBuf>) -> Result<(), String> {
        if let Some(p) = names.iter().map(|n| dir.join(n)).find(|p| p.is_file()) {
            out.push(p);
            return Ok(());
        }
        let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        subs.iter().try_for_each(|sub| walk(sub, names, out))
    }
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let mut out = Vec::new();
    walk(input, names, &mut out)?;
    if out.is_empty() {
        return Err(format!(
            "{} holds no {}",
            input.display(),
            names.join(" or ")
        ));
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_all_finds_a_file_a_folder_and_fan_outs_at_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let put = |rel: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "x").unwrap();
            p
        };
        let names = ["a.tsv", "b.tsv"];
        // A file is itself; a folder gives the first of the names it holds.
        let file = put("lone.tsv");
        assert_eq!(locate_all(&file, &names).unwrap(), vec![file.clone()]);
        let a = put("one/a.tsv");
        put("one/b.tsv");
        assert_eq!(locate_all(&root.join("one"), &names).unwrap(), vec![a]);
        // A fan-out (of fan-outs), in name order; folders without the file are passed over.
        let y = put("fan/y/b.tsv");
        let x = put("fan/x/deep/a.tsv");
        std::fs::create_dir_all(root.join("fan/z")).unwrap();
        assert_eq!(locate_all(&root.join("fan"), &names).unwrap(), vec![x, y]);
        // Nothing at all names what was looked for.
        let e = locate_all(&root.join("fan/z"), &names).unwrap_err();
        assert!(e.ends_with("fan/z holds no a.tsv or b.tsv"), "{e}");
        assert!(locate_all(&root.join("nowhere"), &names).is_err());
    }
}
