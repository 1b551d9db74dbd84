//! The promoter window a set of promoters was cut with (bases upstream and downstream of the
//! TSS), read back from the `promoters.tsv` beside each `promoters.fa.gz`. A fine-tuned model
//! records it, so that `flora variants` cuts the same windows from a genome.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bases upstream of the TSS and from the TSS on into the gene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Bases before the TSS, along the gene's strand.
    pub upstream: u64,
    /// Bases from the TSS on, into the gene.
    pub downstream: u64,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bases upstream and {} downstream of the TSS",
            self.upstream, self.downstream
        )
    }
}

/// Where a window could not be read back, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    /// A promoters FASTA has no `promoters.tsv` beside it (a user's own FASTA).
    NoManifest(PathBuf),
    /// Files were cut with different windows.
    Differ {
        /// One file and its window.
        first: (PathBuf, Window),
        /// Another file and its different window.
        other: (PathBuf, Window),
    },
    /// A manifest could not be read.
    Unreadable(String),
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unknown::NoManifest(fasta) => {
                write!(f, "{} has no promoters.tsv beside it", fasta.display())
            }
            Unknown::Differ { first, other } => write!(
                f,
                "{} was cut with {} but {} with {}",
                first.0.display(),
                first.1,
                other.0.display(),
                other.1
            ),
            Unknown::Unreadable(why) => f.write_str(why),
        }
    }
}

/// The one window that cut every promoters FASTA in `fastas` (each read back from the
/// `promoters.tsv` beside it: the widest window of its rows, since windows clipped at a contig
/// end or a neighbouring gene are shorter).
pub fn of_promoters(fastas: &[PathBuf]) -> Result<Window, Unknown> {
    let mut found: Option<(PathBuf, Window)> = None;
    for fasta in fastas {
        let manifest = fasta.with_file_name("promoters.tsv");
        if fasta.file_name() != Some("promoters.fa.gz".as_ref()) || !manifest.is_file() {
            return Err(Unknown::NoManifest(fasta.clone()));
        }
        let Some(window) = widest(&manifest).map_err(Unknown::Unreadable)? else {
            continue;
        };
        match &found {
            Some((path, w)) if *w != window => {
                return Err(Unknown::Differ {
                    first: (path.clone(), *w),
                    other: (manifest, window),
                })
            }
            Some(_) => {}
            None => found = Some((manifest, window)),
        }
    }
    found
        .map(|(_, w)| w)
        .ok_or_else(|| Unknown::Unreadable("the promoters manifests have no rows".into()))
}

/// The widest window among the rows of one `promoters.tsv` (none if it has no rows).
pub fn widest(manifest: &Path) -> Result<Option<Window>, String> {
    let shown = manifest.display();
    let (names, rows) =
        crate::splits::tsv::read_numbered(manifest).map_err(|e| format!("{shown}: {e}"))?;
    let column = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| format!("{shown}: line 1: no `{name}` column"))
    };
    let (strand, tss, start, end) = (
        column("strand")?,
        column("tss")?,
        column("start")?,
        column("end")?,
    );
    let mut widest: Option<Window> = None;
    for (line, cells) in rows {
        let number = |c: usize, name: &str| -> Result<u64, String> {
            let cell = cells.get(c).map(String::as_str).unwrap_or("");
            cell.parse().map_err(|_| {
                format!("{shown}: line {line}, column `{name}`: {cell:?} is not a position")
            })
        };
        let w = split_at_tss(
            cells.get(strand).is_some_and(|s| s == "-"),
            number(tss, "tss")?,
            number(start, "start")?,
            number(end, "end")?,
        );
        widest = Some(match widest {
            Some(o) => Window {
                upstream: o.upstream.max(w.upstream),
                downstream: o.downstream.max(w.downstream),
            },
            None => w,
        });
    }
    Ok(widest)
}

/// How many bases of the window `[start, end]` lie upstream of the TSS and how many from it on.
fn split_at_tss(reverse: bool, tss: u64, start: u64, end: u64) -> Window {
    let count = |from: u64, to: u64| if to >= from { to - from + 1 } else { 0 };
    if reverse {
        Window {
            upstream: count(start.max(tss + 1), end),
            downstream: count(start, end.min(tss)),
        }
    } else {
        Window {
            upstream: count(start, end.min(tss.saturating_sub(1))),
            downstream: count(start.max(tss), end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genomics::promoters::{self, Params};

    /// Cuts promoters from a small genome with `p` and returns the output folder.
    fn cut(dir: &Path, name: &str, p: &Params) -> PathBuf {
        let fasta = dir.join("genome.fa");
        let gff = dir.join("genes.gff3");
        let contig: String = "ACGT".repeat(500);
        std::fs::write(&fasta, format!(">chr1\n{contig}\n")).unwrap();
        std::fs::write(
            &gff,
            "##gff-version 3\n\
             chr1\tt\tgene\t900\t1100\t.\t+\t.\tID=plus;biotype=protein_coding\n\
             chr1\tt\tgene\t1300\t1500\t.\t-\t.\tID=minus;biotype=protein_coding\n\
             chr1\tt\tgene\t50\t200\t.\t+\t.\tID=clipped;biotype=protein_coding\n",
        )
        .unwrap();
        let out = dir.join(name);
        std::fs::create_dir_all(&out).unwrap();
        let work = dir.join(format!("{name}-work"));
        std::fs::create_dir_all(&work).unwrap();
        let (found, summary) = promoters::extract(p, &fasta, &gff, &work).unwrap();
        promoters::write(&out, &found, &summary).unwrap();
        out.join("promoters.fa.gz")
    }

    #[test]
    fn the_window_is_read_back_from_what_the_promoters_stage_wrote() {
        let dir = tempfile::tempdir().unwrap();
        for (upstream, downstream) in [(300, 0), (250, 40), (0, 120)] {
            let p = Params {
                upstream,
                downstream,
                edge: promoters::Edge::Keep,
                ..Params::default()
            };
            let fasta = cut(dir.path(), &format!("u{upstream}d{downstream}"), &p);
            // Gene `clipped` starts at 50: its window is cut short at the contig's start.
            assert_eq!(
                of_promoters(&[fasta]).unwrap(),
                Window {
                    upstream,
                    downstream
                }
            );
        }
    }

    #[test]
    fn an_unknown_window_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let short = cut(
            dir.path(),
            "short",
            &Params {
                upstream: 100,
                ..Params::default()
            },
        );
        let long = cut(
            dir.path(),
            "long",
            &Params {
                upstream: 200,
                ..Params::default()
            },
        );
        let differ = of_promoters(&[short.clone(), long]).unwrap_err();
        assert!(
            matches!(differ, Unknown::Differ { .. })
                && differ
                    .to_string()
                    .contains("was cut with 100 bases upstream and 0 downstream of the TSS but"),
            "{differ}"
        );
        let own = dir.path().join("own.fa.gz");
        std::fs::copy(&short, &own).unwrap();
        assert_eq!(
            of_promoters(std::slice::from_ref(&own)).unwrap_err(),
            Unknown::NoManifest(own)
        );
        let manifest = short.with_file_name("promoters.tsv");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, text.replacen("\t+\t", "\t+\tx", 1)).unwrap();
        let bad = of_promoters(&[short]).unwrap_err().to_string();
        assert!(
            bad.contains("promoters.tsv: line 2, column `tss`: \"x")
                && bad.contains("is not a position"),
            "{bad}"
        );
    }
}
