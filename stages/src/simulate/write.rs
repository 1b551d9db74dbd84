//! Writes a simulation as the files real data comes in: FASTA and GFF3 per genome, an expression
//! table, a paralog table, and the planted truth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::evolve::{self, occurrences};
use super::{motif_weights, Genome, Params, Summary, MOTIFS, TISSUES};
use crate::genomics::seq::reverse_complement;
use crate::rng::Rng;
use crate::Context;

fn put(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The FASTA and GFF3 of one genome: genes round-robin over the contigs, each after a random
/// spacer, on a random strand, with its promoter upstream of the TSS on that strand.
fn genome_files(p: &Params, g: &Genome, gc: f64, seed: u64) -> (String, String) {
    let mut rng = Rng::new(seed);
    let mut contigs: Vec<Vec<u8>> = vec![Vec::new(); p.contigs];
    let mut gff = String::from("##gff-version 3\n");
    let mut features: Vec<Vec<String>> = vec![Vec::new(); p.contigs];
    for (i, gene) in g.genes.iter().enumerate() {
        let c = i % p.contigs;
        let chrom = format!("chr{}", c + 1);
        let seq = &mut contigs[c];
        let spacer = 200 + rng.below(400);
        seq.extend(evolve::random_seq(spacer, gc, &mut rng));
        let body = evolve::random_seq(300 + rng.below(900), gc, &mut rng);
        let plus = rng.below(2) == 0;
        let (start, end, strand) = if plus {
            seq.extend_from_slice(&gene.promoter);
            let start = seq.len() + 1;
            seq.extend_from_slice(&body);
            (start, seq.len(), '+')
        } else {
            let start = seq.len() + 1;
            seq.extend(reverse_complement(&body));
            let end = seq.len();
            seq.extend(reverse_complement(&gene.promoter));
            (start, end, '-')
        };
        let id = &gene.id;
        let mut lines = String::new();
        let _ = writeln!(
            lines,
            "{chrom}\tflora\tgene\t{start}\t{end}\t.\t{strand}\t.\tID=gene:{id};Name={id};biotype=protein_coding"
        );
        let _ = writeln!(
            lines,
            "{chrom}\tflora\tmRNA\t{start}\t{end}\t.\t{strand}\t.\tID=transcript:{id}.1;Parent=gene:{id};biotype=protein_coding"
        );
        let _ = write!(
            lines,
            "{chrom}\tflora\texon\t{start}\t{end}\t.\t{strand}\t.\tParent=transcript:{id}.1"
        );
        features[c].push(lines);
    }
    let mut fasta = String::new();
    for (c, seq) in contigs.iter_mut().enumerate() {
        seq.extend(evolve::random_seq(300, gc, &mut rng));
        let _ = writeln!(gff, "##sequence-region chr{} 1 {}", c + 1, seq.len());
        let _ = writeln!(fasta, ">chr{} {} simulated", c + 1, g.name);
        for line in seq.chunks(60) {
            fasta.push_str(std::str::from_utf8(line).expect("bases are ASCII"));
            fasta.push('\n');
        }
    }
    for f in features.iter().flatten() {
        gff.push_str(f);
        gff.push('\n');
    }
    (fasta, gff)
}

/// Writes every file of the simulation into `ctx.out`.
pub fn all(p: &Params, genomes: &[Genome], ctx: &Context) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let mut species = String::from("genome\tspecies\tgroup\tline\n");
    for (i, g) in genomes.iter().enumerate() {
        let gc = p
            .species
            .iter()
            .find(|s| s.name == g.species)
            .map_or(0.4, |s| s.gc);
        let (fasta, gff) = genome_files(p, g, gc, p.seed ^ (0xF00D + i as u64));
        let dir = ctx.out.join("genomes").join(&g.name);
        put(&dir.join("genome.fa"), &fasta)?;
        put(&dir.join("genes.gff3"), &gff)?;
        let _ = writeln!(
            species,
            "{}\t{}\t{}\t{}",
            g.name,
            g.species,
            g.group,
            g.line.as_deref().unwrap_or("")
        );
        summary.genes.insert(g.name.clone(), g.genes.len());
        let dups = g.genes.iter().filter(|x| x.id.ends_with('d')).count();
        summary.duplicated.insert(g.species.clone(), dups);
    }
    put(&ctx.out.join("species.tsv"), &species)?;

    // Expression, occurrences and paralog families of the expressed genomes.
    let mut expression = format!("gene_id\t{}\n", TISSUES.join("\t"));
    let mut occ = String::from("gene_id\tmotif\tdistance\n");
    let mut families: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for g in genomes {
        for gene in &g.genes {
            let Some(ln) = &gene.ln_tpm else { continue };
            summary.expressed += 1;
            let cells: Vec<String> = ln.iter().map(|v| format!("{:.4}", v.exp())).collect();
            let _ = writeln!(expression, "{}\t{}", gene.id, cells.join("\t"));
            for (m, d) in occurrences(&gene.promoter) {
                let _ = writeln!(occ, "{}\t{}\t{d}", gene.id, MOTIFS[m].0);
                *summary
                    .occurrences
                    .entry(MOTIFS[m].0.to_string())
                    .or_default() += 1;
            }
            families.entry(gene.family).or_default().push(&gene.id);
        }
    }
    let mut paralogs = String::from("gene\trelated\n");
    for members in families.values() {
        for m in members {
            let _ = writeln!(paralogs, "{m}\t{}", members[0]);
        }
    }
    put(&ctx.out.join("expression.tsv"), &expression)?;
    put(&ctx.out.join("paralogs.tsv"), &paralogs)?;
    put(&ctx.out.join("truth/occurrences.tsv"), &occ)?;
    let mut motifs = format!("motif\tconsensus\t{}\n", TISSUES.join("\t"));
    for ((name, consensus), w) in MOTIFS.iter().zip(motif_weights(p.seed)) {
        let cells: Vec<String> = w.iter().map(|v| format!("{v:.4}")).collect();
        let _ = writeln!(motifs, "{name}\t{consensus}\t{}", cells.join("\t"));
    }
    put(&ctx.out.join("truth/motifs.tsv"), &motifs)?;
    put(
        &ctx.out.join("summary.json"),
        &serde_json::to_string_pretty(&summary).expect("serializes"),
    )?;
    Ok(summary)
}
