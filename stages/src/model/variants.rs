//! Variant effects: for every VCF/BCF allele that lies inside a gene's promoter window, the
//! predicted change in expression (alt minus ref, per tissue, on the model's scale), computed on
//! the gene's strand.
//!
//! Decisions, each counted in [`Report::skipped`]:
//! - an allele that reaches past either end of a window is skipped (`crosses the window edge`):
//!   its effect would mix promoter and non-promoter bases;
//! - symbolic alleles (`<DEL>`, `*`, breakends) are skipped: their sequence is not written out;
//! - a REF that differs from the genome is skipped (`REF does not match the genome`);
//! - records on contigs the genome lacks are skipped; if no record's contig is in the genome, that
//!   is an error naming a few of each.
//!
//! A multi-allelic record gives one row per ALT. Indels change the window's length; the model
//! keeps the TSS end of a sequence, so the window stays anchored at the TSS.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rust_htslib::bcf::{self, Read as _};

use super::predictor::Predictor;
use crate::genomics::fasta::Genome;
use crate::genomics::gff::Strand;
use crate::genomics::promoters::Promoter;
use crate::genomics::seq::reverse_complement;

/// One scored allele.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    /// Contig.
    pub chrom: String,
    /// 1-based position of the first REF base.
    pub pos: u64,
    /// REF allele.
    pub reference: String,
    /// ALT allele.
    pub alt: String,
    /// The gene whose window holds it.
    pub gene_id: String,
    /// The gene's strand.
    pub strand: Strand,
    /// Bases from the variant's first base to the TSS, along the gene's strand (1 = next to it).
    pub distance_to_tss: u64,
    /// Alt minus ref, per target.
    pub delta: Vec<f32>,
}

/// What happened to every allele.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Scored alleles, in VCF order.
    pub effects: Vec<Effect>,
    /// Alleles not scored, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Alleles outside every promoter window (not an error: most of a genome is not promoter).
    pub outside: usize,
}

/// An allele placed in one window: the window's index and its two sequences.
struct Placed {
    window: usize,
    alt_seq: Vec<u8>,
    effect: Effect,
}

/// Scores every allele of `vcf` that falls in one of `windows` (promoters of `genome`).
pub fn score(
    model: &Predictor,
    genome: &Genome,
    windows: &[Promoter],
    vcf: &Path,
) -> Result<Report, String> {
    let shown = vcf.display().to_string();
    let mut reader =
        bcf::Reader::from_path(vcf).map_err(|e| format!("{shown}: cannot read as VCF/BCF: {e}"))?;
    let mut by_chrom: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, w) in windows.iter().enumerate() {
        by_chrom.entry(w.chrom.as_str()).or_default().push(i);
    }
    for list in by_chrom.values_mut() {
        list.sort_by_key(|&i| windows[i].start);
    }
    let longest = windows
        .iter()
        .map(|w| w.end - w.start + 1)
        .max()
        .unwrap_or(0);
    let mut report = Report::default();
    let mut placed: Vec<Placed> = Vec::new();
    let (mut records, mut on_genome) = (0usize, 0usize);
    let mut unknown: Vec<String> = Vec::new();
    for (n, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| format!("{shown}: record {}: {e}", n + 1))?;
        records += 1;
        // The record's own header is the reader's live one, to which htslib adds a contig the
        // header did not declare when a record names it; `rid2name` of rust-htslib 1.0 lets one
        // id past the end through (and reads past its table), so the bound is checked here.
        let live = rec.header();
        let chrom = match rec.rid() {
            Some(rid) if rid < live.contig_count() => match live.rid2name(rid) {
                Ok(name) => String::from_utf8_lossy(name).into_owned(),
                Err(e) => return Err(format!("{shown}: record {}: {e}", n + 1)),
            },
            _ => return Err(format!("{shown}: record {}: no contig", n + 1)),
        };
        let alleles: Vec<Vec<u8>> = rec
            .alleles()
            .iter()
            .map(|a| a.to_ascii_uppercase())
            .collect();
        let alts = alleles.len().saturating_sub(1);
        if genome.len_of(&chrom).is_err() {
            *report
                .skipped
                .entry("contig not in the genome".into())
                .or_default() += alts;
            if unknown.len() < 3 && !unknown.contains(&chrom) {
                unknown.push(chrom);
            }
            continue;
        }
        on_genome += 1;
        let pos0 = rec.pos() as u64;
        let reference = &alleles[0];
        let span = (pos0 + 1, pos0 + reference.len() as u64);
        let Some(list) = by_chrom.get(chrom.as_str()) else {
            report.outside += alts;
            continue;
        };
        // Windows starting at most `longest` before the variant may hold it.
        let from = list.partition_point(|&i| windows[i].start + longest <= span.0);
        let hits: Vec<usize> = list[from..]
            .iter()
            .copied()
            .take_while(|&i| windows[i].start <= span.1)
            .filter(|&i| windows[i].end >= span.0)
            .collect();
        if hits.is_empty() {
            report.outside += alts;
            continue;
        }
        let contig_len = genome.len_of(&chrom).map_err(|e| e.to_string())?;
        let genome_ref = genome
            .fetch(
                &chrom,
                pos0.min(contig_len),
                (pos0 + reference.len() as u64).min(contig_len),
            )
            .map_err(|e| e.to_string())?;
        for alt in &alleles[1..] {
            let symbolic = alt.is_empty()
                || alt.contains(&b'<')
                || alt.contains(&b'[')
                || alt.contains(&b']')
                || alt.as_slice() == b"*";
            for &wi in &hits {
                let w = &windows[wi];
                let reason = if symbolic {
                    Some("symbolic allele")
                } else if genome_ref.to_ascii_uppercase() != *reference {
                    Some("REF does not match the genome")
                } else if span.0 < w.start || span.1 > w.end {
                    Some("crosses the window edge")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    *report.skipped.entry(reason.into()).or_default() += 1;
                    continue;
                }
                // The window on the + strand, the allele written in, then back to the gene's strand.
                let mut plus = match w.strand {
                    Strand::Reverse => reverse_complement(&w.seq),
                    _ => w.seq.clone(),
                };
                let off = (span.0 - w.start) as usize;
                plus.splice(off..off + reference.len(), alt.iter().copied());
                let alt_seq = match w.strand {
                    Strand::Reverse => reverse_complement(&plus),
                    _ => plus,
                };
                let distance_to_tss = match w.strand {
                    Strand::Reverse => span.0.saturating_sub(w.tss).max(1),
                    _ => w.tss.saturating_sub(span.1).max(1),
                };
                placed.push(Placed {
                    window: wi,
                    alt_seq,
                    effect: Effect {
                        chrom: chrom.clone(),
                        pos: span.0,
                        reference: String::from_utf8_lossy(reference).into_owned(),
                        alt: String::from_utf8_lossy(alt).into_owned(),
                        gene_id: w.gene_id.clone(),
                        strand: w.strand,
                        distance_to_tss,
                        delta: Vec::new(),
                    },
                });
            }
        }
    }
    if records > 0 && on_genome == 0 {
        return Err(format!(
            "{shown}: none of its contigs ({}) is in the genome ({}): do the VCF and the genome use the same names?",
            unknown.join(", "),
            genome.names().iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    // Reference windows once each, alternatives in one batched pass.
    let mut refs: Vec<usize> = placed.iter().map(|p| p.window).collect();
    refs.sort_unstable();
    refs.dedup();
    let ref_seqs: Vec<&[u8]> = refs.iter().map(|&i| windows[i].seq.as_slice()).collect();
    let ref_pred = model.predict(&model.encode(&ref_seqs)?.rows)?;
    let ref_of: HashMap<usize, &Vec<f32>> = refs.iter().copied().zip(&ref_pred).collect();
    let alt_seqs: Vec<&[u8]> = placed.iter().map(|p| p.alt_seq.as_slice()).collect();
    let alt_pred = model.predict(&model.encode(&alt_seqs)?.rows)?;
    for (p, alt) in placed.into_iter().zip(alt_pred) {
        let base = ref_of[&p.window];
        let mut effect = p.effect;
        effect.delta = alt.iter().zip(base.iter()).map(|(a, r)| a - r).collect();
        report.effects.push(effect);
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
