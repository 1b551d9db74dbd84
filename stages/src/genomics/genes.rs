//! Genes and their transcripts from a GFF3 file, in the dialects plant genomes come in.
//!
//! | dialect | gene line | biotype | canonical transcript |
//! | --- | --- | --- | --- |
//! | Ensembl Plants | `ID=gene:Zm00001eb000010` | `biotype=` | `tag=Ensembl_canonical` |
//! | RefSeq | `ID=gene-AT1G01010;locus_tag=AT1G01010` | `gene_biotype=` | (longest) |
//! | GenBank submitter | `ID=gene-AARE701A_LOCUS1;locus_tag=...` | `gene_biotype=` | (longest) |
//! | MaizeGDB | `ID=Zm00001eb000010` | `biotype=` (if any) | `canonical_transcript=1` |
//! | GTF | `gene_id "X"` (or none: made from its transcripts) | `gene_biotype` (if any) | `tag "Ensembl_canonical"` |
//!
//! With `id_attribute: auto` the id is `ID` with a `gene:` or `gene-` prefix removed. A gene with
//! no biotype is taken as `protein_coding` when it has an mRNA. Decisions that drop genes are
//! counted by reason, never silent.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::path::Path;

use super::gff::{GffError, Reader, Record, Strand};

/// Feature types read as genes.
pub const GENE_TYPES: &[&str] = &[
    "gene",
    "ncRNA_gene",
    "pseudogene",
    "transposable_element_gene",
];

/// A transcript of a gene.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// Its id (`ID`).
    pub id: String,
    /// 1-based start.
    pub start: u64,
    /// 1-based inclusive end.
    pub end: u64,
    /// Marked canonical by the annotation.
    pub canonical: bool,
    /// Total exon length (0 if it has no exons).
    pub exon_length: u64,
}

/// A gene.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gene {
    /// The gene id (per `id_attribute`).
    pub id: String,
    /// The contig.
    pub seqid: String,
    /// 1-based start.
    pub start: u64,
    /// 1-based inclusive end.
    pub end: u64,
    /// Its strand.
    pub strand: Strand,
    /// Its biotype (given, or inferred).
    pub biotype: Option<String>,
    /// 1-based line of the gene in the GFF3.
    pub line: usize,
    /// Its transcripts, in file order.
    pub transcripts: Vec<Transcript>,
}

impl Gene {
    /// The transcript that defines the TSS: the canonical one, else the one with the longest
    /// exons, else the longest span; ties go to the first written.
    pub fn main_transcript(&self) -> Option<&Transcript> {
        self.transcripts.iter().find(|t| t.canonical).or_else(|| {
            self.transcripts.iter().reduce(|best, t| {
                if (t.exon_length, t.end - t.start) > (best.exon_length, best.end - best.start) {
                    t
                } else {
                    best
                }
            })
        })
    }
}

/// Genes read from a file, with counts of what was set aside.
#[derive(Debug, Default)]
pub struct GeneSet {
    /// Genes in file order.
    pub genes: Vec<Gene>,
    /// Genes set aside, by reason.
    pub dropped: BTreeMap<String, usize>,
}

/// A problem reading genes.
#[derive(Debug, thiserror::Error)]
pub enum GenesError {
    /// The file could not be opened.
    #[error("{path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}: {source}")]
    Gff {
        /// The file.
        path: String,
        /// Where and what.
        source: GffError,
    },
    /// The file has no genes at all.
    #[error("{path}: no gene features found (is this a GFF3 or GTF file?)")]
    Empty {
        /// The file.
        path: String,
    },
}

/// Which attribute names a gene.
pub fn gene_id(rec: &Record, id_attribute: &str) -> Option<String> {
    if id_attribute == "auto" {
        let id = rec.attr("ID")?;
        let id = id
            .strip_prefix("gene:")
            .or_else(|| id.strip_prefix("gene-"))
            .unwrap_or(&id);
        Some(id.to_string())
    } else {
        rec.attr(id_attribute).map(|v| v.into_owned())
    }
}

/// Reads every gene of a GFF3 file (plain, gzip or bgzip).
pub fn read_genes(path: &Path, id_attribute: &str) -> Result<GeneSet, GenesError> {
    read_genes_with(path, id_attribute, true)
}

/// Reads genes; without `with_exons`, exon lines are passed over (they only matter for choosing
/// a transcript by exon length).
pub fn read_genes_with(
    path: &Path,
    id_attribute: &str,
    with_exons: bool,
) -> Result<GeneSet, GenesError> {
    let shown = path.display().to_string();
    let input = super::io::open_text(path).map_err(|source| GenesError::Open {
        path: shown.clone(),
        source,
    })?;
    let set =
        read_genes_impl(input, id_attribute, with_exons).map_err(|source| GenesError::Gff {
            path: shown.clone(),
            source,
        })?;
    if set.genes.is_empty() && set.dropped.is_empty() {
        return Err(GenesError::Empty { path: shown });
    }
    Ok(set)
}

/// Reads genes from GFF3 text.
pub fn read_genes_from(
    input: impl std::io::BufRead,
    id_attribute: &str,
) -> Result<GeneSet, GffError> {
    read_genes_impl(input, id_attribute, true)
}

/// Feature types that never name a gene or a transcript.
const NOT_TRANSCRIPTS: &[&str] = &[
    "CDS",
    "five_prime_UTR",
    "three_prime_UTR",
    "start_codon",
    "stop_codon",
    "intron",
    "region",
    "chromosome",
];

/// What one GFF3 record means for genes, worked out on the thread that parsed it.
enum Line {
    /// A feature of a gene type.
    Gene {
        /// Its gene id per `id_attribute` (`None`: the attribute is missing).
        id: Option<String>,
        /// Its `ID`, which transcripts name as `Parent`.
        feature_id: Option<String>,
        seqid: String,
        start: u64,
        end: u64,
        strand: Strand,
        biotype: Option<String>,
    },
    /// An exon of the transcripts in `parents` (comma-separated).
    Exon { parents: String, length: u64 },
    /// Any other feature with a parent: a transcript if a parent is a gene.
    Transcript {
        parents: String,
        id: Option<String>,
        start: u64,
        end: u64,
        canonical: bool,
        mrna: bool,
        /// From a GTF line: the gene to make if no gene line named it.
        gtf_gene: Option<GtfGene>,
    },
}

/// What a GTF transcript line says about its gene, which GTF files often give no line of its
/// own: the gene is made from its transcripts.
struct GtfGene {
    /// Its gene id per `id_attribute` (`None`: the attribute is missing).
    id: Option<String>,
    seqid: String,
    strand: Strand,
    biotype: Option<String>,
}

impl Line {
    /// The meaning of `rec`, or `None` for a feature that is neither a gene nor has a parent.
    fn of(rec: Record, id_attribute: &str) -> Option<Line> {
        if GENE_TYPES.contains(&rec.ty.as_str()) {
            return Some(Line::Gene {
                id: gene_id(&rec, id_attribute),
                feature_id: rec.attr("ID").map(|v| v.into_owned()),
                biotype: rec
                    .attr("biotype")
                    .or_else(|| rec.attr("gene_biotype"))
                    .map(|b| b.into_owned()),
                start: rec.start,
                end: rec.end,
                strand: rec.strand,
                seqid: rec.seqid,
            });
        }
        if rec.ty == "exon" {
            return Some(Line::Exon {
                parents: rec.attr("Parent").unwrap_or_default().into_owned(),
                length: rec.end - rec.start + 1,
            });
        }
        let parents = rec.attr("Parent")?.into_owned();
        // A GTF `transcript` is an mRNA unless its biotype says otherwise.
        let gtf_mrna = rec.gtf
            && rec.ty == "transcript"
            && rec
                .attr("biotype")
                .is_none_or(|b| b == "protein_coding" || b == "mRNA");
        let gtf_gene = rec.gtf.then(|| GtfGene {
            id: if id_attribute == "auto" {
                Some(parents.clone())
            } else {
                rec.attr(id_attribute).map(|v| v.into_owned())
            },
            seqid: rec.seqid.clone(),
            strand: rec.strand,
            biotype: rec
                .attr("gene_biotype")
                .or_else(|| rec.attr("gene_type"))
                .map(|b| b.into_owned()),
        });
        Some(Line::Transcript {
            canonical: rec
                .attr("tag")
                .is_some_and(|t| t.split(',').any(|t| t == "Ensembl_canonical"))
                || rec.attr("canonical_transcript").as_deref() == Some("1")
                || rec.attr("is_canonical").as_deref() == Some("true"),
            id: rec.attr("ID").map(|v| v.into_owned()),
            mrna: rec.ty == "mRNA" || gtf_mrna,
            start: rec.start,
            end: rec.end,
            parents,
            gtf_gene,
        })
    }
}

fn read_genes_impl(
    input: impl std::io::BufRead,
    id_attribute: &str,
    with_exons: bool,
) -> Result<GeneSet, GffError> {
    let mut set = GeneSet::default();
    // GFF `ID` of a gene -> index in `set.genes`; transcript `ID` -> (gene index, transcript index).
    // FxHash: ids are not attacker-chosen, and SipHash was a sixth of the time on 40,000 genes.
    let mut by_feature_id: FxHashMap<String, usize> = FxHashMap::default();
    let mut transcripts: FxHashMap<String, (usize, usize)> = FxHashMap::default();
    let mut seen_ids: FxHashMap<String, usize> = FxHashMap::default();
    // Genes made from GTF transcripts (their extent grows with each transcript), and GTF gene
    // ids that could not make one (counted once).
    let mut made_from_gtf: rustc_hash::FxHashSet<usize> = Default::default();
    let mut refused_gtf: rustc_hash::FxHashSet<String> = Default::default();
    // Exons only matter for choosing a transcript by exon length.
    let mut skip = NOT_TRANSCRIPTS.to_vec();
    if !with_exons {
        skip.push("exon");
    }
    let mut reader = Reader::skipping(input, skip);
    let read = |rec: Record| Line::of(rec, id_attribute);
    while let Some(batch) = reader.read_batch_with(&read)? {
        // Most lines of a batch are genes or transcripts once exons and CDS are passed over.
        seen_ids.reserve(batch.len());
        by_feature_id.reserve(batch.len());
        set.genes.reserve(batch.len());
        for (line, item) in batch {
            match item {
                Line::Gene { id: None, .. } => {
                    *set.dropped
                        .entry(format!("no {id_attribute} attribute"))
                        .or_default() += 1;
                }
                Line::Gene {
                    id: Some(id),
                    feature_id,
                    seqid,
                    start,
                    end,
                    strand,
                    biotype,
                } => {
                    if seen_ids.contains_key(&id) {
                        *set.dropped
                            .entry("duplicate gene id (first kept)".into())
                            .or_default() += 1;
                        continue;
                    }
                    if strand == Strand::Unknown {
                        *set.dropped.entry("no strand".into()).or_default() += 1;
                        continue;
                    }
                    let idx = set.genes.len();
                    seen_ids.insert(id.clone(), idx);
                    if let Some(fid) = feature_id {
                        by_feature_id.insert(fid, idx);
                    }
                    set.genes.push(Gene {
                        id,
                        seqid,
                        start,
                        end,
                        strand,
                        biotype,
                        line,
                        transcripts: Vec::new(),
                    });
                }
                Line::Exon { parents, length } => {
                    for parent in parents.split(',') {
                        if let Some(&(g, t)) = transcripts.get(parent) {
                            set.genes[g].transcripts[t].exon_length += length;
                        }
                    }
                }
                Line::Transcript {
                    parents,
                    id,
                    start,
                    end,
                    canonical,
                    mrna,
                    gtf_gene,
                } => {
                    // A transcript: any feature whose parent is a gene (mRNA, transcript, ...).
                    for parent in parents.split(',') {
                        let g = match (by_feature_id.get(parent), &gtf_gene) {
                            (Some(&g), _) => g,
                            (None, Some(made)) if !refused_gtf.contains(parent) => {
                                let refusal = match &made.id {
                                    None => Some(format!("no {id_attribute} attribute")),
                                    Some(id) if seen_ids.contains_key(id) => {
                                        Some("duplicate gene id (first kept)".into())
                                    }
                                    Some(_) if made.strand == Strand::Unknown => {
                                        Some("no strand".into())
                                    }
                                    Some(_) => None,
                                };
                                if let Some(reason) = refusal {
                                    *set.dropped.entry(reason).or_default() += 1;
                                    refused_gtf.insert(parent.to_string());
                                    continue;
                                }
                                let id = made.id.clone().unwrap_or_default();
                                let g = set.genes.len();
                                seen_ids.insert(id.clone(), g);
                                by_feature_id.insert(parent.to_string(), g);
                                made_from_gtf.insert(g);
                                set.genes.push(Gene {
                                    id,
                                    seqid: made.seqid.clone(),
                                    start,
                                    end,
                                    strand: made.strand,
                                    biotype: made.biotype.clone(),
                                    line,
                                    transcripts: Vec::new(),
                                });
                                g
                            }
                            (None, _) => continue,
                        };
                        let gene = &mut set.genes[g];
                        if made_from_gtf.contains(&g) {
                            gene.start = gene.start.min(start);
                            gene.end = gene.end.max(end);
                        }
                        if gene.biotype.is_none() && mrna {
                            gene.biotype = Some("protein_coding".into());
                        }
                        let t = gene.transcripts.len();
                        gene.transcripts.push(Transcript {
                            id: id.clone().unwrap_or_default(),
                            start,
                            end,
                            canonical,
                            exon_length: 0,
                        });
                        if let Some(id) = &id {
                            transcripts.insert(id.clone(), (g, t));
                        }
                    }
                }
            }
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFSEQ: &str = "##gff-version 3
NC_1\tRefSeq\tregion\t1\t10000\t.\t+\t.\tID=NC_1:1..10000
NC_1\tRefSeq\tgene\t3631\t5899\t.\t+\t.\tID=gene-AT1G01010;gene_biotype=protein_coding;locus_tag=AT1G01010
NC_1\tRefSeq\tmRNA\t3631\t5899\t.\t+\t.\tID=rna-NM_1;Parent=gene-AT1G01010
NC_1\tRefSeq\texon\t3631\t3913\t.\t+\t.\tID=exon-1;Parent=rna-NM_1
NC_1\tRefSeq\tgene\t6000\t6500\t.\t-\t.\tID=gene-AT1G01015;gene_biotype=tRNA;locus_tag=AT1G01015
NC_1\tRefSeq\tgene\t7000\t7500\t.\t-\t.\tID=gene-AT1G01010;gene_biotype=protein_coding
";

    const ENSEMBL: &str = "1\tgramene\tgene\t100\t900\t.\t-\t.\tID=gene:Zm1;biotype=protein_coding
1\tgramene\tmRNA\t100\t900\t.\t-\t.\tID=transcript:Zm1_T1;Parent=gene:Zm1;biotype=protein_coding
1\tgramene\tmRNA\t150\t800\t.\t-\t.\tID=transcript:Zm1_T2;Parent=gene:Zm1;biotype=protein_coding;tag=basic,Ensembl_canonical
";

    #[test]
    fn refseq_ids_biotypes_and_duplicates() {
        let set = read_genes_from(REFSEQ.as_bytes(), "auto").unwrap();
        let ids: Vec<&str> = set.genes.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, ["AT1G01010", "AT1G01015"]);
        assert_eq!(set.genes[0].biotype.as_deref(), Some("protein_coding"));
        assert_eq!(set.genes[0].transcripts[0].exon_length, 283);
        assert_eq!(set.genes[0].line, 3);
        assert_eq!(set.dropped["duplicate gene id (first kept)"], 1);
        let by_tag = read_genes_from(REFSEQ.as_bytes(), "locus_tag").unwrap();
        assert_eq!(by_tag.dropped["no locus_tag attribute"], 1);
    }

    #[test]
    fn ensembl_canonical_transcript_wins() {
        let set = read_genes_from(ENSEMBL.as_bytes(), "auto").unwrap();
        assert_eq!(set.genes[0].id, "Zm1");
        assert_eq!(
            set.genes[0].main_transcript().unwrap().id,
            "transcript:Zm1_T2"
        );
    }

    #[test]
    fn gtf_with_and_without_gene_lines() {
        // Ensembl's GTF: gene lines, biotypes, the canonical tag.
        let ensembl = "1\tgramene\tgene\t100\t900\t.\t-\t.\tgene_id \"Zm1\"; gene_biotype \"protein_coding\";
1\tgramene\ttranscript\t100\t900\t.\t-\t.\tgene_id \"Zm1\"; transcript_id \"Zm1_T1\"; gene_biotype \"protein_coding\"; transcript_biotype \"protein_coding\"; tag \"basic\";
1\tgramene\ttranscript\t150\t800\t.\t-\t.\tgene_id \"Zm1\"; transcript_id \"Zm1_T2\"; tag \"basic\"; tag \"Ensembl_canonical\";
1\tgramene\texon\t150\t800\t.\t-\t.\tgene_id \"Zm1\"; transcript_id \"Zm1_T2\";
1\tgramene\tfive_prime_utr\t700\t800\t.\t-\t.\tgene_id \"Zm1\"; transcript_id \"Zm1_T2\";
";
        let set = read_genes_from(ensembl.as_bytes(), "auto").unwrap();
        assert_eq!(set.genes.len(), 1);
        let gene = &set.genes[0];
        assert_eq!((gene.id.as_str(), gene.start, gene.end), ("Zm1", 100, 900));
        assert_eq!(gene.transcripts.len(), 2, "{:?}", gene.transcripts);
        assert_eq!(gene.main_transcript().unwrap().id, "Zm1_T2");
        assert_eq!(gene.transcripts[1].exon_length, 651);

        // GTF 2.2 as assemblers write it: no gene lines, no biotypes; each gene is made from its
        // transcripts (its extent, their union) and is protein-coding by them.
        let plain = "chr1\tStringTie\ttranscript\t500\t900\t.\t+\t.\tgene_id \"G1\"; transcript_id \"G1.1\";
chr1\tStringTie\texon\t500\t600\t.\t+\t.\tgene_id \"G1\"; transcript_id \"G1.1\";
chr1\tStringTie\ttranscript\t450\t700\t.\t+\t.\tgene_id \"G1\"; transcript_id \"G1.2\";
chr1\tStringTie\ttranscript\t50\t90\t.\t.\t.\tgene_id \"G2\"; transcript_id \"G2.1\";
chr1\tStringTie\ttranscript\t60\t95\t.\t.\t.\tgene_id \"G2\"; transcript_id \"G2.2\";
";
        let set = read_genes_from(plain.as_bytes(), "auto").unwrap();
        assert_eq!(set.genes.len(), 1);
        let gene = &set.genes[0];
        assert_eq!((gene.id.as_str(), gene.start, gene.end), ("G1", 450, 900));
        assert_eq!(gene.strand, Strand::Forward);
        assert_eq!(gene.biotype.as_deref(), Some("protein_coding"));
        assert_eq!(gene.line, 1);
        assert_eq!(gene.main_transcript().unwrap().id, "G1.1");
        assert_eq!(set.dropped["no strand"], 1, "counted once per gene");
    }

    #[test]
    fn maizegdb_without_biotype_is_protein_coding_by_its_mrna() {
        let text = "chr1\tNAM\tgene\t10\t90\t.\t+\t.\tID=Zm00001eb000010\nchr1\tNAM\tmRNA\t10\t90\t.\t+\t.\tID=Zm00001eb000010_T001;Parent=Zm00001eb000010;canonical_transcript=1\n";
        let set = read_genes_from(text.as_bytes(), "auto").unwrap();
        assert_eq!(set.genes[0].biotype.as_deref(), Some("protein_coding"));
        assert!(set.genes[0].transcripts[0].canonical);
    }
}
