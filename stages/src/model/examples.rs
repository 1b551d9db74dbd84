//! The fine-tuning examples: a sequence, its target values and its split, from either a ready
//! table (`id, sequence, <targets...>[, split]`) or promoters + an expression table + a split.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::head::Transform;
use crate::rng::Rng;
use crate::splits::tsv;
use crate::Context;

/// How targets are transformed; `auto` picks `log` for expression tables, `none` for a ready table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransformParam {
    /// `log` for expression tables, `none` for ready tables.
    Auto,
    /// ln(value + offset).
    Log,
    /// As they are.
    None,
}

impl TransformParam {
    /// The transform for examples that did, or did not, come from a ready table.
    pub fn resolve(self, from_table: bool) -> Transform {
        match self {
            TransformParam::Log => Transform::Log,
            TransformParam::None => Transform::None,
            TransformParam::Auto if from_table => Transform::None,
            TransformParam::Auto => Transform::Log,
        }
    }
}

/// Reads the examples named by a stage's inputs: `table`, or `promoters` + `expression`
/// (+ `split`). `validation_fold` names the value of a ready table's split column that marks
/// its validation rows.
pub fn from_context(
    ctx: &Context,
    seed: u64,
    validation_fold: Option<&str>,
) -> Result<Examples, String> {
    match (
        ctx.inputs.get("table"),
        ctx.inputs.get("promoters"),
        ctx.inputs.get("expression"),
    ) {
        (Some(table), None, None) => {
            let path = tsv::locate(table, "table.tsv")?;
            from_table(&path, seed, validation_fold)
        }
        (None, Some(_), Some(_)) if validation_fold.is_some() => Err(
            "validation_fold names a fold of a ready table's `split` or `fold` column; with \
             promoters + expression the splits come from the `split` input"
                .into(),
        ),
        (None, Some(promoters), Some(expression)) => from_parts(
            promoters,
            expression,
            ctx.inputs.get("split").map(|p| p.as_path()),
            seed,
        ),
        _ => Err("needs either an input `table` (id, sequence, targets) or `promoters` + `expression` (+ `split`)".into()),
    }
}

/// Which part of the data a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Trained on.
    Train,
    /// Early stopping and model choice.
    Valid,
    /// Held out; reported.
    Test,
}

impl Split {
    /// Parses `train`, `valid`/`validation`/`val`/`eval`, `test`, and a numbered training fold
    /// (`train_0`, `train4`: FloraBERT's tables).
    pub fn parse(s: &str) -> Option<Split> {
        let s = s.trim().to_ascii_lowercase();
        let fold = s
            .strip_prefix("train")
            .map(|n| n.strip_prefix('_').unwrap_or(n))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        match s.as_str() {
            "train" => Some(Split::Train),
            _ if fold => Some(Split::Train),
            "valid" | "validation" | "val" | "dev" | "eval" => Some(Split::Valid),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

/// One example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Gene or sequence id.
    pub id: String,
    /// The promoter sequence.
    pub seq: Vec<u8>,
    /// Target values, raw (before any transform).
    pub targets: Vec<f64>,
    /// Its split.
    pub split: Split,
}

/// Examples with the names of their targets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Examples {
    /// Target (tissue) names.
    pub targets: Vec<String>,
    /// The examples, in input order.
    pub rows: Vec<Example>,
    /// Whether they came from a ready table (whose values default to no transform).
    pub from_table: bool,
    /// Rows left out, by reason.
    pub dropped: BTreeMap<String, usize>,
    /// A ready table's columns that are not targets because they hold text (`gene_id_full`).
    pub left_out: Vec<String>,
}

impl Examples {
    /// The rows of one split.
    pub fn of(&self, split: Split) -> Vec<&Example> {
        self.rows.iter().filter(|r| r.split == split).collect()
    }

    /// Checks that every value has a logarithm under `t` (values <= -offset have none).
    pub fn check_transform(&self, t: Transform, offset: f64) -> Result<(), String> {
        if t == Transform::Log {
            if let Some(bad) = self
                .rows
                .iter()
                .find(|r| r.targets.iter().any(|&v| v + offset <= 0.0))
            {
                return Err(format!(
                    "row {} has a value <= -offset, which has no logarithm; use transform: none for values that are already on a log scale",
                    bad.id
                ));
            }
        }
        Ok(())
    }
}

/// Reads a ready table: an id column (`id` or `gene_id`, else the first), a `sequence` (or
/// `seq`) column, an optional `split` (or `fold`) column, and one target per other column whose
/// first value is a number; text columns are left out. Rows whose split is `validation_fold`
/// are the validation rows. Without a split column, splits are drawn from `seed`
/// ([`draw_splits`]).
pub fn from_table(
    path: &Path,
    seed: u64,
    validation_fold: Option<&str>,
) -> Result<Examples, String> {
    let shown = path.display().to_string();
    let (header, rows) = tsv::read_numbered(path).map_err(|e| format!("{shown}: {e}"))?;
    let find = |names: &[&str]| {
        header
            .iter()
            .position(|h| names.contains(&h.to_ascii_lowercase().as_str()))
    };
    let seq_col = find(&["sequence", "seq"]).ok_or_else(|| {
        format!(
            "{shown}: no `sequence` column (the header is: {})",
            header.join(", ")
        )
    })?;
    let split_col = find(&["split", "fold"]);
    let id_col = find(&["id", "gene_id"]).unwrap_or(0);
    if seq_col == id_col {
        return Err(format!(
            "{shown}: no id column: name one `id` or `gene_id`, or put the ids first"
        ));
    }
    if validation_fold.is_some() && split_col.is_none() {
        return Err(format!(
            "{shown}: validation_fold needs a `split` or `fold` column (the header is: {})",
            header.join(", ")
        ));
    }
    let is_missing = |v: &str| matches!(v, "" | "NA" | "NaN" | "nan");
    // Targets: the other columns whose first value is a number (or missing); text is left out.
    let first = rows.first().map(|(_, r)| r.as_slice()).unwrap_or_default();
    let (target_cols, left_out): (Vec<usize>, Vec<usize>) = (0..header.len())
        .filter(|&c| c != id_col && c != seq_col && Some(c) != split_col)
        .partition(|&c| {
            let v = first.get(c).map(String::as_str).unwrap_or("");
            is_missing(v) || v.parse::<f64>().is_ok()
        });
    if target_cols.is_empty() {
        return Err(format!(
            "{shown}: no target columns (numbers) besides id, sequence and split"
        ));
    }
    let mut out = Examples {
        targets: target_cols.iter().map(|&c| header[c].clone()).collect(),
        from_table: true,
        left_out: left_out.iter().map(|&c| header[c].clone()).collect(),
        ..Examples::default()
    };
    let mut fold_seen = false;
    for (line, row) in rows {
        let cell = |c: usize| row.get(c).map(String::as_str).unwrap_or("");
        let mut targets = Vec::with_capacity(target_cols.len());
        let mut missing = false;
        for &c in &target_cols {
            match cell(c) {
                v if is_missing(v) => missing = true,
                v => targets.push(v.parse::<f64>().map_err(|_| {
                    format!(
                        "{shown}: line {line}, column `{}`: {v:?} is not a number",
                        header[c]
                    )
                })?),
            }
        }
        if missing {
            *out.dropped
                .entry("missing target value".into())
                .or_default() += 1;
            continue;
        }
        let seq = crate::genomics::seq::upper_dna(cell(seq_col).as_bytes())
            .map_err(|e| format!("{shown}: line {line}: the sequence {e}"))?
            .into_bytes();
        if seq.is_empty() {
            *out.dropped.entry("empty sequence".into()).or_default() += 1;
            continue;
        }
        let split = match split_col {
            Some(c) if validation_fold == Some(cell(c).trim()) => {
                fold_seen = true;
                Split::Valid
            }
            Some(c) => Split::parse(cell(c)).ok_or_else(|| {
                format!(
                    "{shown}: line {line}: split {:?} is not train, valid or test (or a \
                     training fold, train_<n>, which `validation_fold` can make the validation rows)",
                    cell(c)
                )
            })?,
            None => Split::Train,
        };
        out.rows.push(Example {
            id: cell(id_col).to_string(),
            seq,
            targets,
            split,
        });
    }
    if out.rows.is_empty() {
        return Err(format!("{shown}: no usable rows ({:?})", out.dropped));
    }
    if let Some(fold) = validation_fold.filter(|_| !fold_seen) {
        return Err(format!(
            "{shown}: no row's {} is {fold:?} (validation_fold)",
            header[split_col.unwrap_or(0)]
        ));
    }
    if split_col.is_none() {
        draw_splits(&mut out.rows, seed);
    }
    Ok(out)
}

/// Assigns splits from `seed`, ignoring groups: 30% test, then 10% of the rest validation.
pub fn draw_splits(rows: &mut [Example], seed: u64) {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    Rng::new(seed ^ 0x5B117).shuffle(&mut order);
    let n_test = (rows.len() as f64 * 0.3).round() as usize;
    let n_valid = ((rows.len() - n_test) as f64 * 0.1).round() as usize;
    for (k, &i) in order.iter().enumerate() {
        rows[i].split = if k < n_test {
            Split::Test
        } else if k < n_test + n_valid {
            Split::Valid
        } else {
            Split::Train
        };
    }
}

/// Every `expression.tsv` under `input`: the file itself, a folder holding one, or a folder of
/// such folders (an `expression` fan-out, one table per line).
fn expression_files(input: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    tsv::locate_all(input, &["expression.tsv"])
}

/// Joins promoters (FASTA, first header word = gene id), an expression table (`gene_id`, then one
/// column per tissue) and, if given, a split table (`gene_id, group, split`). Without a split,
/// splits are drawn from `seed`.
pub fn from_parts(
    promoters: &Path,
    expression: &Path,
    split: Option<&Path>,
    seed: u64,
) -> Result<Examples, String> {
    let mut values: HashMap<String, Vec<f64>> = HashMap::new();
    let mut first: Option<(String, Vec<String>)> = None;
    for expr_path in expression_files(expression)? {
        let shown = expr_path.display().to_string();
        let (header, rows) = tsv::read_numbered(&expr_path).map_err(|e| format!("{shown}: {e}"))?;
        if header.len() < 2 {
            return Err(format!(
                "{shown}: needs a gene id column and at least one tissue"
            ));
        }
        match &first {
            Some((file, h)) if h[1..] != header[1..] => {
                return Err(format!(
                    "{shown} has tissues {} but {file} has {}: expression tables of one fine-tuning set must share their tissues",
                    header[1..].join(", "),
                    h[1..].join(", ")
                ))
            }
            Some(_) => {}
            None => first = Some((shown.clone(), header.clone())),
        }
        for (line, row) in rows {
            let mut v = Vec::with_capacity(header.len() - 1);
            for (c, name) in header.iter().enumerate().skip(1) {
                let cell = row.get(c).map(String::as_str).unwrap_or("");
                v.push(cell.parse::<f64>().map_err(|_| {
                    format!("{shown}: line {line}, column `{name}`: {cell:?} is not a number")
                })?);
            }
            if values.insert(row[0].clone(), v).is_some() {
                return Err(format!(
                    "{shown}: line {line}: gene {} has expression values twice",
                    row[0]
                ));
            }
        }
    }
    let header = first.map(|f| f.1).unwrap_or_default();
    let splits: Option<HashMap<String, Split>> = match split {
        Some(s) => {
            let path = tsv::locate(s, "split.tsv")?;
            let shown = path.display().to_string();
            let (_, rows) = tsv::read_numbered(&path).map_err(|e| format!("{shown}: {e}"))?;
            let mut m = HashMap::new();
            for (line, row) in rows {
                let cell = row.last().map(String::as_str).unwrap_or("");
                let sp = Split::parse(cell).ok_or_else(|| {
                    format!("{shown}: line {line}: split {cell:?} is not train, validation or test")
                })?;
                m.insert(row[0].clone(), sp);
            }
            Some(m)
        }
        None => None,
    };
    let mut out = Examples {
        targets: header[1..].to_vec(),
        ..Examples::default()
    };
    let mut seen = std::collections::HashSet::new();
    for file in crate::splits::corpus::fasta_files(promoters)? {
        for rec in crate::genomics::records::read_all(&file)? {
            let id = rec.id.clone();
            if !seen.insert(id.clone()) {
                *out.dropped
                    .entry("duplicate promoter id".into())
                    .or_default() += 1;
                continue;
            }
            let Some(targets) = values.get(&id) else {
                *out.dropped
                    .entry("no expression values".into())
                    .or_default() += 1;
                continue;
            };
            let split = match &splits {
                Some(m) => match m.get(&id) {
                    Some(s) => *s,
                    None => {
                        *out.dropped.entry("not in the split".into()).or_default() += 1;
                        continue;
                    }
                },
                None => Split::Train,
            };
            out.rows.push(Example {
                id,
                seq: rec.seq,
                targets: targets.clone(),
                split,
            });
        }
    }
    if out.rows.is_empty() {
        let sorted = |ids: Vec<&String>| {
            let mut ids: Vec<String> = ids.into_iter().cloned().collect();
            ids.sort();
            ids
        };
        return Err(format!(
            "no promoter id matched a gene of {} (dropped: {:?}). {}",
            expression.display(),
            out.dropped,
            super::id_match::hint(
                &sorted(seen.iter().collect()),
                &sorted(values.keys().collect())
            )
        ));
    }
    if splits.is_none() {
        draw_splits(&mut out.rows, seed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_table_with_and_without_splits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tsv");
        std::fs::write(
            &p,
            "id\tsequence\tleaf\troot\tsplit\na\tacgt\t1.5\t-2\ttrain\nb\tGGCC\tNA\t1\ttest\nc\tTTAA\t0\t0\tvalidation\n",
        )
        .unwrap();
        let ex = from_table(&p, 0, None).unwrap();
        assert_eq!(ex.targets, vec!["leaf", "root"]);
        assert_eq!(ex.rows.len(), 2);
        assert_eq!(ex.rows[0].seq, b"ACGT");
        assert_eq!(ex.rows[0].targets, vec![1.5, -2.0]);
        assert_eq!(ex.rows[1].split, Split::Valid);
        assert_eq!(ex.dropped["missing target value"], 1);

        let q = dir.path().join("q.csv");
        let mut text = String::from("id,sequence,t1\n");
        for i in 0..100 {
            text.push_str(&format!("s{i},ACGT,{i}\n"));
        }
        std::fs::write(&q, text).unwrap();
        let ex = from_table(&q, 3, None).unwrap();
        assert_eq!(ex.of(Split::Test).len(), 30);
        assert_eq!(ex.of(Split::Valid).len(), 7);
        assert_eq!(from_table(&q, 3, None).unwrap(), ex, "seeded");
    }

    /// Promoters and a table that share no gene id: the error shows a few of each and what
    /// they differ by.
    #[test]
    fn ids_that_never_meet_are_shown_with_their_difference() {
        let dir = tempfile::tempdir().unwrap();
        let fasta = dir.path().join("promoters.fa");
        let table = dir.path().join("expression.tsv");
        let mut fa = String::new();
        let mut tsv = String::from("gene_id\tleaf\n");
        for i in 0..5 {
            fa.push_str(&format!(">AT1G0{i}010 ath\nACGTACGT\n"));
            tsv.push_str(&format!("AT1G0{i}010.1\t{i}\n"));
        }
        std::fs::write(&fasta, fa).unwrap();
        std::fs::write(&table, tsv).unwrap();
        let e = from_parts(&fasta, &table, None, 0).unwrap_err();
        assert!(
            e.contains("no promoter id matched a gene of")
                && e.contains(
                    "Promoter ids look like AT1G00010, AT1G01010, AT1G02010; the table's like \
                     AT1G00010.1, AT1G01010.1, AT1G02010.1. They differ by a version or \
                     transcript suffix (`.1`, `_T001`, `_P001`): 5 of 5 promoters would match \
                     without it."
                ),
            "{e}"
        );
    }

    /// FloraBERT's own table: `gene_id`, a text column, `seq`, a `fold` column of `test` and
    /// training folds `train_0`.. (one of which is its validation set), then the tissues.
    #[test]
    fn ready_tables_with_text_columns_and_numbered_folds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nam.csv");
        std::fs::write(
            &p,
            "gene_id,gene_id_full,seq,fold,tassel,root\n\
             g1,g1::chr1:1-5(+),ACGTA,train_0,-9.9,1.5\n\
             g2,g2::chr1:9-13(-),GGCCA,train_4,0.5,NA\n\
             g3,g3::chr2:1-5(+),TTGCA,test,2,3\n\
             g4,g4::chr2:7-11(+),CCGTA,train_4,1,1\n\
             g5,g5::chr3:1-5(-),AAGTC,train_1,0,0\n",
        )
        .unwrap();
        let ex = from_table(&p, 0, Some("train_4")).unwrap();
        assert_eq!(ex.targets, vec!["tassel", "root"]);
        assert_eq!(ex.left_out, vec!["gene_id_full"]);
        let ids = |s: Split| ex.of(s).iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(Split::Train), ["g1", "g5"]);
        assert_eq!(ids(Split::Valid), ["g4"]);
        assert_eq!(ids(Split::Test), ["g3"]);
        assert_eq!(ex.dropped["missing target value"], 1);
        // Without validation_fold every training fold trains.
        let ex = from_table(&p, 0, None).unwrap();
        assert_eq!(ex.of(Split::Train).len(), 3);
        assert!(ex.of(Split::Valid).is_empty());
        let e = from_table(&p, 0, Some("train_9")).unwrap_err();
        assert!(
            e.contains("nam.csv: no row's fold is \"train_9\" (validation_fold)"),
            "{e}"
        );
        let q = dir.path().join("plain.tsv");
        std::fs::write(&q, "id\tsequence\tleaf\na\tACGT\t1\n").unwrap();
        let e = from_table(&q, 0, Some("train_4")).unwrap_err();
        assert!(
            e.contains("validation_fold needs a `split` or `fold` column"),
            "{e}"
        );
    }

    #[test]
    fn bad_tables_name_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.tsv");
        std::fs::write(&p, "id\tsequence\tleaf\na\tACGT\t1\nb\tACGT\thigh\n").unwrap();
        let e = from_table(&p, 0, None).unwrap_err();
        assert!(
            e.contains("bad.tsv: line 3, column `leaf`: \"high\""),
            "{e}"
        );
        std::fs::write(&p, "id\tsequence\tleaf\na\tACGT\thigh\n").unwrap();
        let e = from_table(&p, 0, None).unwrap_err();
        assert!(e.contains("no target columns (numbers)"), "{e}");
        std::fs::write(&p, "id\tleaf\na\t1\n").unwrap();
        assert!(from_table(&p, 0, None)
            .unwrap_err()
            .contains("no `sequence` column"));
        std::fs::write(&p, "id\tsequence\tleaf\tsplit\na\tACGT\t1\tholdout\n").unwrap();
        assert!(from_table(&p, 0, None)
            .unwrap_err()
            .contains("line 2: split \"holdout\""));
        std::fs::write(&p, "").unwrap();
        assert!(from_table(&p, 0, None).unwrap_err().contains("empty"));
        std::fs::write(&p, "id\tsequence\tleaf\na\tacgtn\t1\nb\tMKELV\t2\n").unwrap();
        let e = from_table(&p, 0, None).unwrap_err();
        assert!(
            e.contains("bad.tsv: line 3: the sequence has `E` at position 3"),
            "{e}"
        );
    }

    #[test]
    fn promoters_that_are_not_dna_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let fa = dir.path().join("p.fa");
        std::fs::write(&fa, ">g1 sp\nacgt\n>g2 sp\nPEPTIDE\n").unwrap();
        let ex = dir.path().join("expression.tsv");
        std::fs::write(&ex, "gene_id\tleaf\ng1\t1\ng2\t3\n").unwrap();
        let e = from_parts(&fa, &ex, None, 0).unwrap_err();
        assert!(
            e.contains("p.fa: record g2 has `P` at position 1, which is not a nucleotide"),
            "{e}"
        );
    }

    #[test]
    fn parts_join_on_gene_ids() {
        let dir = tempfile::tempdir().unwrap();
        let fa = dir.path().join("p.fa");
        std::fs::write(&fa, ">g1 sp\nACGT\n>g2 sp\nCCCC\n>g3 sp\nGGGG\n").unwrap();
        let ex = dir.path().join("expression.tsv");
        std::fs::write(&ex, "gene_id\tleaf\troot\ng1\t1\t2\ng2\t3\t4\n").unwrap();
        let sp = dir.path().join("split.tsv");
        std::fs::write(&sp, "gene_id\tgroup\tsplit\ng1\tA\ttest\n").unwrap();
        let got = from_parts(&fa, &ex, Some(&sp), 0).unwrap();
        assert_eq!(got.rows.len(), 1);
        assert_eq!(got.rows[0].split, Split::Test);
        assert_eq!(got.dropped["no expression values"], 1);
        assert_eq!(got.dropped["not in the split"], 1);
        assert!(!got.from_table);
    }

    #[test]
    fn expression_tables_of_several_lines_are_joined() {
        let dir = tempfile::tempdir().unwrap();
        let fa = dir.path().join("p.fa");
        std::fs::write(&fa, ">a1 sp\nACGT\n>b1 sp\nCCCC\n").unwrap();
        let lines = dir.path().join("expression");
        for (line, gene) in [("A", "a1"), ("B", "b1")] {
            std::fs::create_dir_all(lines.join(line)).unwrap();
            std::fs::write(
                lines.join(line).join("expression.tsv"),
                format!("gene_id\tleaf\troot\n{gene}\t1\t2\n"),
            )
            .unwrap();
        }
        let got = from_parts(&fa, &lines, None, 0).unwrap();
        assert_eq!(got.rows.len(), 2);
        // Tables with other tissues, or a gene twice, are refused.
        std::fs::write(lines.join("B/expression.tsv"), "gene_id\tleaf\nb1\t1\n").unwrap();
        let e = from_parts(&fa, &lines, None, 0).unwrap_err();
        assert!(e.contains("must share their tissues"), "{e}");
        std::fs::write(
            lines.join("B/expression.tsv"),
            "gene_id\tleaf\troot\na1\t1\t2\n",
        )
        .unwrap();
        let e = from_parts(&fa, &lines, None, 0).unwrap_err();
        assert!(e.contains("gene a1 has expression values twice"), "{e}");
    }
}
