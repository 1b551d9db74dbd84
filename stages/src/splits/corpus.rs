//! The `corpus` stage: pretraining sequences with every held-out promoter removed.
//!
//! A record is removed when its gene is in an excluded split (test, by default) or when its
//! sequence is identical to the promoter of such a gene in the held-out set. The original
//! FloraBERT code leaked about 70% of its test promoters into its maize pretraining corpus; here a
//! corpus cannot be built without a split, and the summary says how many records were removed.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{split, tsv};
use crate::genomics::records::{self, FastaRecord};
use crate::Context;

/// Params of the `corpus` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Splits whose genes are kept out (default `[test]`).
    pub exclude: Vec<String>,
    /// Keep only these species (the first word of each header's description); empty keeps all.
    pub species: Vec<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            exclude: vec!["test".into()],
            species: Vec::new(),
        }
    }
}

/// What went in and what came out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Records read.
    pub records: usize,
    /// Records written.
    pub written: usize,
    /// Removed because their gene is held out.
    pub removed_held_out_gene: usize,
    /// Removed because their sequence equals a held-out promoter.
    pub removed_identical_sequence: usize,
    /// Removed by the species filter.
    pub removed_other_species: usize,
    /// Records written per species.
    pub species: BTreeMap<String, usize>,
}

/// Every promoter FASTA under `input`: a file, a folder with promoters.fa.gz, sequences.fa.gz
/// or corpus.fa.gz, or a folder of such folders (a fan-out).
pub fn fasta_files(input: &Path) -> Result<Vec<PathBuf>, String> {
    tsv::locate_all(
        input,
        &["promoters.fa.gz", "sequences.fa.gz", "corpus.fa.gz"],
    )
}

fn species_of(r: &FastaRecord) -> &str {
    r.description.split_whitespace().next().unwrap_or("")
}

/// Filters `records`: drops held-out genes and identical sequences.
pub fn filter(
    records: Vec<FastaRecord>,
    held_out_genes: &HashSet<String>,
    held_out_seqs: &HashSet<Vec<u8>>,
    p: &Params,
) -> (Vec<FastaRecord>, Summary) {
    let mut s = Summary {
        records: records.len(),
        ..Summary::default()
    };
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        if !p.species.is_empty() && !p.species.iter().any(|x| x == species_of(&r)) {
            s.removed_other_species += 1;
        } else if held_out_genes.contains(&r.id) {
            s.removed_held_out_gene += 1;
        } else if held_out_seqs.contains(&r.seq) {
            s.removed_identical_sequence += 1;
        } else {
            *s.species.entry(species_of(&r).to_string()).or_default() += 1;
            out.push(r);
        }
    }
    s.written = out.len();
    (out, s)
}

/// Runs the stage: inputs `promoters` (the corpus sources), `split`, and optionally `heldout`
/// (the fine-tuning promoters, whose held-out sequences are removed wherever they occur).
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, String> {
    let promoters = ctx
        .inputs
        .get("promoters")
        .ok_or("corpus: needs an input `promoters`")?;
    let split_in = ctx.inputs.get("split").ok_or(
        "corpus: needs an input `split`, so that held-out genes are kept out of pretraining",
    )?;
    let rows = split::read(&tsv::locate(split_in, "split.tsv")?)?;
    split::check(&rows).map_err(|e| format!("corpus: {e}"))?;
    let held_out: HashSet<String> = rows
        .iter()
        .filter(|r| p.exclude.contains(&r.2))
        .map(|r| r.0.clone())
        .collect();
    let mut held_seqs: HashSet<Vec<u8>> = HashSet::new();
    if let Some(h) = ctx.inputs.get("heldout") {
        for f in fasta_files(h)? {
            for r in records::read_all(&f)? {
                if held_out.contains(&r.id) {
                    held_seqs.insert(r.seq);
                }
            }
        }
    }
    let mut all = Vec::new();
    for f in fasta_files(promoters)? {
        all.extend(records::read_all(&f)?);
    }
    let (kept, summary) = filter(all, &held_out, &held_seqs, p);
    if kept.is_empty() {
        return Err(format!("corpus: every record was removed ({summary:?})"));
    }
    let path = ctx.out.join("corpus.fa.gz");
    let mut w = rust_htslib::bgzf::Writer::from_path_with_level(
        &path,
        rust_htslib::bgzf::CompressionLevel::Fastest,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    for r in &kept {
        let header = if r.description.is_empty() {
            format!(">{}\n", r.id)
        } else {
            format!(">{} {}\n", r.id, r.description)
        };
        w.write_all(header.as_bytes())
            .and_then(|_| w.write_all(&r.seq))
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    w.flush().map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::write(
        ctx.out.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("serializes"),
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "corpus: {} of {} records written; removed {} held-out genes and {} identical sequences",
        summary.written,
        summary.records,
        summary.removed_held_out_gene,
        summary.removed_identical_sequence
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, sp: &str, seq: &str) -> FastaRecord {
        FastaRecord {
            id: id.into(),
            description: format!("{sp} chr1:1-4(+)"),
            seq: seq.as_bytes().to_vec(),
        }
    }

    #[test]
    fn removes_held_out_genes_identical_sequences_and_other_species() {
        let records = vec![
            rec("Zm1", "zmays", "AAAA"),
            rec("Zm2", "zmays", "CCCC"),
            rec("Zm3_copy_in_other_line", "zmays", "CCCC"),
            rec("Sb1", "sbicolor", "GGGG"),
            rec("Zm4", "zmays", "TTTT"),
        ];
        let genes: HashSet<String> = ["Zm2".to_string()].into();
        let seqs: HashSet<Vec<u8>> = [b"CCCC".to_vec()].into();
        let p = Params {
            species: vec!["zmays".into()],
            ..Params::default()
        };
        let (kept, s) = filter(records, &genes, &seqs, &p);
        let ids: Vec<&str> = kept.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["Zm1", "Zm4"]);
        assert_eq!(
            (
                s.removed_held_out_gene,
                s.removed_identical_sequence,
                s.removed_other_species
            ),
            (1, 1, 1)
        );
        assert_eq!(s.species["zmays"], 2);
    }
}
