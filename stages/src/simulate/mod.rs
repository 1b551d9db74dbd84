//! The `simulate` stage: plant-like genomes with a known answer, so that the whole study runs on
//! a fresh machine with no downloads, and the analysis can be checked against the truth.
//!
//! Gene families start as ancestral promoters (random bases at the root's GC content) carrying
//! real plant cis-element consensus motifs, placed more often near the TSS. They evolve along a
//! small phylogeny (root, then one ancestor per clade, then each species, then each line of a
//! species) by substitutions drawn towards each species' GC content (rarely inside motifs, which
//! purifying selection conserves), short indels and
//! transposon-like insertions of a diverged copy of one element family. Each species duplicates a
//! share of its families (paralogs, which then diverge). Genes lie on both strands of a few
//! contigs, their promoters upstream of the TSS on the gene's strand.
//!
//! Expression (for species with `expression: true`, in each of their lines, 9 tissues, TPM) is
//! ln TPM = family baseline + Σ over motif occurrences in the line's own promoter of
//! weight(motif, tissue) × exp(−distance to TSS / `decay`) + normal noise, so it is learnable
//! from sequence and position, and not from k-mer counts alone.
//!
//! Output: `genomes/<genome>/genome.fa` and `genes.gff3` (Ensembl-style ids), `species.tsv`
//! (genome, species, group, line), `expression.tsv` (gene_id × tissue, TPM), `paralogs.tsv`
//! (gene, related: every gene of a family, across lines and duplicates, tied to its first gene),
//! `truth/motifs.tsv` (motif, consensus, weight per tissue), `truth/occurrences.tsv` (gene_id,
//! motif, distance of every occurrence in the expressed genes) and `summary.json`.

mod evolve;
mod write;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::Context;

/// The study's 9 tissues, which simulated maize is expressed in.
pub use crate::tables::expression::TISSUES;

/// Plant cis-element consensus motifs planted in promoters.
pub const MOTIFS: [(&str, &str); 9] = [
    ("TATA-box", "TATAAAT"),
    ("CAAT-box", "CCAATCA"),
    ("G-box", "CACGTG"),
    ("ABRE", "ACGTGGC"),
    ("W-box", "TTGACC"),
    ("DOF", "TAAAGTG"),
    ("MYB", "TAACCAA"),
    ("GCC-box", "GCCGCC"),
    ("RY", "CATGCAT"),
];

/// One simulated species.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeciesSpec {
    /// Its name (also the genome's name when it has no lines).
    pub name: String,
    /// Its clade (e.g. monocot, eudicot): species of one clade share an ancestor.
    pub group: String,
    /// GC content its substitutions move towards.
    #[serde(default = "default_gc")]
    pub gc: f64,
    /// Substitutions per site from its clade's ancestor.
    #[serde(default = "default_distance")]
    pub distance: f64,
    /// Lines (cultivars), each a genome of its own; none: one genome named after the species.
    #[serde(default)]
    pub lines: Vec<String>,
    /// Whether its genes get expression values.
    #[serde(default)]
    pub expression: bool,
}

fn default_gc() -> f64 {
    0.4
}

fn default_distance() -> f64 {
    0.08
}

/// Params of the `simulate` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// The species (default: A. thaliana and a Brassica as eudicots; rice, sorghum and maize
    /// with lines B73, Mo17 and W22 as monocots, maize with expression).
    pub species: Vec<SpeciesSpec>,
    /// Ancestral gene families (default 300).
    pub families: usize,
    /// Bases simulated upstream of each TSS (default 1000).
    pub promoter_length: usize,
    /// Contigs per genome (default 2).
    pub contigs: usize,
    /// Substitutions per site from the root to each clade's ancestor (default 0.12).
    pub clade_distance: f64,
    /// Substitutions per site from a species to each of its lines (default 0.01).
    pub line_distance: f64,
    /// Share of families duplicated in each species (default 0.15).
    pub duplication: f64,
    /// Substitutions per site separating a duplicate from its original (default 0.1).
    pub paralog_distance: f64,
    /// Transposon-like insertions per promoter and branch (default 0.05).
    pub transposons: f64,
    /// Motifs planted per ancestral promoter, on average (default 4).
    pub motifs_per_promoter: f64,
    /// Mean distance of a planted motif from the TSS, in bases (default 150).
    pub placement: f64,
    /// Distance at which a motif's effect falls to 1/e, in bases (default 200).
    pub decay: f64,
    /// Standard deviation of the noise on ln TPM (default 0.3).
    pub noise: f64,
    /// Seed of everything (default 0).
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        let sp = |name: &str, group: &str, gc: f64, lines: &[&str], expression: bool| SpeciesSpec {
            name: name.into(),
            group: group.into(),
            gc,
            distance: default_distance(),
            lines: lines.iter().map(|l| l.to_string()).collect(),
            expression,
        };
        Params {
            species: vec![
                sp("athaliana", "eudicot", 0.33, &[], false),
                sp("brapa", "eudicot", 0.35, &[], false),
                sp("osativa", "monocot", 0.45, &[], false),
                sp("sbicolor", "monocot", 0.43, &[], false),
                sp("zmays", "monocot", 0.44, &["B73", "Mo17", "W22"], true),
            ],
            families: 300,
            promoter_length: 1000,
            contigs: 2,
            clade_distance: 0.12,
            line_distance: 0.01,
            duplication: 0.15,
            paralog_distance: 0.1,
            transposons: 0.05,
            motifs_per_promoter: 4.0,
            placement: 150.0,
            decay: 200.0,
            noise: 0.3,
            seed: 0,
        }
    }
}

/// One simulated gene in one genome.
#[derive(Debug, Clone)]
pub struct Gene {
    /// `<genome>_<family>` (a duplicate ends in `d`).
    pub id: String,
    /// The family it descends from.
    pub family: usize,
    /// Its promoter, 5' to 3', ending at the TSS.
    pub promoter: Vec<u8>,
    /// ln TPM per tissue, for expressed species.
    pub ln_tpm: Option<Vec<f64>>,
}

/// One simulated genome: a species, or a line of one.
#[derive(Debug, Clone)]
pub struct Genome {
    /// Its name.
    pub name: String,
    /// The species.
    pub species: String,
    /// The species' clade.
    pub group: String,
    /// Its line, if the species has lines.
    pub line: Option<String>,
    /// Its genes, in family order.
    pub genes: Vec<Gene>,
}

/// What was simulated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Genes per genome.
    pub genes: BTreeMap<String, usize>,
    /// Genes with expression values.
    pub expressed: usize,
    /// Families duplicated, per species.
    pub duplicated: BTreeMap<String, usize>,
    /// Motif occurrences in expressed genes, per motif.
    pub occurrences: BTreeMap<String, usize>,
}

/// The planted truth: each motif's weight per tissue.
pub fn motif_weights(seed: u64) -> Vec<[f64; 9]> {
    let mut rng = Rng::new(seed ^ 0x005E_ED0F_7155);
    MOTIFS
        .iter()
        .map(|_| {
            let mut w = [0.0; 9];
            // A broad effect on every tissue, and strong effects on two to four of them.
            let broad = evolve::uniform(&mut rng) * 0.6 - 0.2;
            for x in w.iter_mut() {
                *x = broad;
            }
            for _ in 0..2 + rng.below(3) {
                let t = rng.below(9);
                let sign = if rng.below(4) == 0 { -1.0 } else { 1.0 };
                w[t] += sign * (0.6 + evolve::uniform(&mut rng));
            }
            w
        })
        .collect()
}

fn check(p: &Params) -> Result<(), String> {
    if p.species.is_empty() || p.families == 0 || p.contigs == 0 {
        return Err("species, families and contigs must not be empty or 0".into());
    }
    if p.promoter_length < 50 {
        return Err(format!("promoter_length {} is below 50", p.promoter_length));
    }
    let rates = [
        ("clade_distance", p.clade_distance),
        ("line_distance", p.line_distance),
        ("duplication", p.duplication),
        ("paralog_distance", p.paralog_distance),
    ];
    for (name, v) in rates {
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("{name} {v} must be between 0 and 1"));
        }
    }
    if !(p.decay > 0.0 && p.placement > 0.0 && p.noise >= 0.0 && p.transposons >= 0.0) {
        return Err("decay and placement must be > 0; noise and transposons >= 0".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for s in &p.species {
        if !(0.0..=1.0).contains(&s.gc) || !(0.0..=1.0).contains(&s.distance) {
            return Err(format!(
                "species {}: gc and distance must be between 0 and 1",
                s.name
            ));
        }
        let valid = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        for n in std::iter::once(&s.name).chain(&s.lines) {
            if !valid(n) {
                return Err(format!(
                    "species or line name {n:?}: use letters, digits, _ and -"
                ));
            }
            if !names.insert(n.clone()) {
                return Err(format!("the genome name {n} is used twice"));
            }
        }
    }
    Ok(())
}

/// Simulates every genome (without writing anything).
pub fn simulate(p: &Params) -> Result<Vec<Genome>, String> {
    check(p)?;
    evolve::genomes(p)
}

/// Runs the stage.
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, String> {
    let fail = |e: String| format!("simulate: {e}");
    let genomes = simulate(p).map_err(fail)?;
    let summary = write::all(p, &genomes, ctx).map_err(fail)?;
    eprintln!(
        "simulate: {} genomes, {} genes, {} with expression",
        genomes.len(),
        summary.genes.values().sum::<usize>(),
        summary.expressed
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genomics::promoters;

    fn small() -> Params {
        Params {
            families: 40,
            promoter_length: 300,
            ..Params::default()
        }
    }

    #[test]
    fn the_promoters_stage_finds_exactly_the_simulated_promoters() {
        let p = small();
        let genomes = simulate(&p).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = Context::new(
            dir.path().join("sim"),
            dir.path().join("w"),
            dir.path().into(),
        );
        std::fs::create_dir_all(&ctx.out).unwrap();
        let s = run(&p, &ctx).unwrap();
        assert_eq!(s.genes.len(), 7, "{s:?}");
        // 40 families plus the duplicates, in every maize line.
        let b73 = s.genes["B73"];
        assert!(b73 > 40 && b73 < 60, "{s:?}");
        assert_eq!(
            s.expressed,
            s.genes["B73"] + s.genes["Mo17"] + s.genes["W22"]
        );
        for g in genomes
            .iter()
            .filter(|g| ["B73", "athaliana"].contains(&g.name.as_str()))
        {
            let sim = dir.path().join("sim/genomes").join(&g.name);
            ctx.out = dir.path().join(format!("prom_{}", g.name));
            std::fs::create_dir_all(&ctx.out).unwrap();
            ctx.inputs.insert("fasta".into(), sim.join("genome.fa"));
            ctx.inputs.insert("gff".into(), sim.join("genes.gff3"));
            let params: promoters::Params =
                serde_json::from_value(serde_json::json!({"upstream": 300})).unwrap();
            promoters::run(&params, &ctx).unwrap();
            let got = crate::genomics::records::read_all(&ctx.out.join("promoters.fa.gz")).unwrap();
            assert_eq!(got.len(), g.genes.len(), "{}", g.name);
            let by_id: BTreeMap<&str, &[u8]> = got
                .iter()
                .map(|r| (r.id.as_str(), r.seq.as_slice()))
                .collect();
            for gene in &g.genes {
                assert_eq!(
                    by_id.get(gene.id.as_str()),
                    Some(&gene.promoter.as_slice()),
                    "{}",
                    gene.id
                );
            }
        }
        // Expression is a table of positive TPM; paralog families tie lines and duplicates.
        let expr = std::fs::read_to_string(dir.path().join("sim/expression.tsv")).unwrap();
        assert!(expr.starts_with("gene_id\tendosperm\ttassel\t"));
        assert_eq!(expr.lines().count(), 1 + s.expressed);
        let par = std::fs::read_to_string(dir.path().join("sim/paralogs.tsv")).unwrap();
        assert!(par.contains("Mo17_0003\tB73_0003\n"), "{par}");
        let motifs = std::fs::read_to_string(dir.path().join("sim/truth/motifs.tsv")).unwrap();
        assert_eq!(motifs.lines().count(), 1 + MOTIFS.len());
    }

    #[test]
    fn expression_follows_the_planted_motifs_near_the_tss() {
        // Without noise, a gene's ln TPM is its family baseline plus its motifs' decayed weights:
        // genes of one family that differ in motifs near the TSS differ in expression.
        let p = Params {
            noise: 0.0,
            families: 60,
            ..small()
        };
        let genomes = simulate(&p).unwrap();
        let w = motif_weights(p.seed);
        let b73 = genomes.iter().find(|g| g.name == "B73").unwrap();
        let mo17 = genomes.iter().find(|g| g.name == "Mo17").unwrap();
        let effect = |promoter: &[u8], t: usize| -> f64 {
            evolve::occurrences(promoter)
                .iter()
                .map(|&(m, d)| w[m][t] * (-(d as f64) / p.decay).exp())
                .sum()
        };
        for (a, b) in b73.genes.iter().zip(&mo17.genes) {
            assert_eq!(a.family, b.family);
            let (la, lb) = (a.ln_tpm.as_ref().unwrap(), b.ln_tpm.as_ref().unwrap());
            for t in 0..TISSUES.len() {
                let want = effect(&a.promoter, t) - effect(&b.promoter, t);
                assert!((la[t] - lb[t] - want).abs() < 1e-9, "{} {t}", a.id);
            }
        }
        // Seeded: the same params simulate the same genomes.
        let again = simulate(&p).unwrap();
        assert_eq!(again[0].genes[5].promoter, genomes[0].genes[5].promoter);
    }

    #[test]
    fn bad_params_are_clear() {
        let mut p = small();
        p.species[1].name = "athaliana".into();
        assert!(simulate(&p)
            .unwrap_err()
            .contains("athaliana is used twice"));
        let mut p = small();
        p.duplication = 2.0;
        assert!(simulate(&p)
            .unwrap_err()
            .contains("duplication 2 must be between 0 and 1"));
        let mut p = small();
        p.species[0].name = "a b".into();
        assert!(simulate(&p).unwrap_err().contains("use letters"));
    }
}
