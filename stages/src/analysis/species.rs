//! Species embeddings, the paper's species figure: the mean pretrained embedding of each species'
//! promoters, projected on its first two principal components and coloured by an attribute that
//! the workflow gives each species (e.g. monocot/eudicot); beside it the same PCA on the species'
//! 1-mer (base) composition, so that the reader sees how much of the picture composition alone
//! explains (the FloraBERT paper noticed that it explains much of it).
//!
//! The `embeddings` stage kind: input `model` (a pretrained or fine-tuned model folder) and any
//! number of promoter inputs (FASTA, a folder holding one, or a fan-out of them), and optionally
//! `groups`, a table giving each species (a `species` or `name` column) its attribute value (the
//! column named by `attribute`), beside or instead of the `groups` param; a record's
//! species is the first word of its header's description (as `promoters` writes it), else the
//! input's name. Output: `species.tsv` (species, attribute, sequences, pc1, pc2,
//! composition_pc1, composition_pc2, A, C, G, T), `species_means.tsv` (the mean embedding of each
//! species), `species_pca.svg` and `summary.json` (variance explained). Seeded: the same seed
//! samples the same sequences.

use std::collections::BTreeMap;
use std::io::Write;

use faer::Mat;
use serde::{Deserialize, Serialize};

use super::figures::{self, PcaPanel};
use crate::baselines::kmers::{self, Counting};
use crate::model::predictor::Predictor;
use crate::rng::Rng;
use crate::Context;

/// Params of the `embeddings` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// The name of the attribute that colours the points (default `group`).
    pub attribute: String,
    /// Each species' attribute value; species not listed are `unassigned` (default none).
    pub groups: BTreeMap<String, String>,
    /// At most this many promoters per species, drawn at random (default 500).
    pub per_species: usize,
    /// Sequences per forward pass (default 32).
    pub batch_size: usize,
    /// Seed of the draw (default 0).
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            attribute: "group".into(),
            groups: BTreeMap::new(),
            per_species: 500,
            batch_size: 32,
            seed: 0,
        }
    }
}

/// One species' row of the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeciesRow {
    /// The species.
    pub species: String,
    /// Its attribute value.
    pub group: String,
    /// Promoters embedded.
    pub sequences: usize,
    /// The mean embedding's first two principal-component scores.
    pub pc: [f64; 2],
    /// The base composition's first two principal-component scores.
    pub composition_pc: [f64; 2],
    /// Mean frequencies of A, C, G and T.
    pub composition: [f64; 4],
}

/// What the stage found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// One row per species, sorted by name.
    pub species: Vec<SpeciesRow>,
    /// Share of variance of the first two components, embeddings.
    pub explained: [f64; 2],
    /// Share of variance of the first two components, composition.
    pub composition_explained: [f64; 2],
    /// Species that `groups` does not name.
    pub unassigned: Vec<String>,
    /// Entries of `groups` that name no species in the inputs.
    pub unused_groups: Vec<String>,
}

/// The first two principal-component scores of each row of `rows` (centred; signs fixed so that
/// the first row scores >= 0) and the share of variance each explains.
pub fn pca2(rows: &[Vec<f64>]) -> Result<(Vec<[f64; 2]>, [f64; 2]), String> {
    let n = rows.len();
    let d = rows.first().map_or(0, Vec::len);
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n.max(1) as f64)
        .collect();
    let x = Mat::<f64>::from_fn(n, d, |i, j| rows[i][j] - mean[j]);
    let svd = x
        .thin_svd()
        .map_err(|e| format!("the SVD did not converge: {e:?}"))?;
    let (u, s) = (svd.U(), svd.S().column_vector());
    let total: f64 = (0..s.nrows()).map(|i| s[i] * s[i]).sum();
    let mut scores = vec![[0.0; 2]; n];
    let mut explained = [0.0; 2];
    for c in 0..2.min(s.nrows()) {
        let sign = if u[(0, c)] < 0.0 { -1.0 } else { 1.0 };
        for (i, row) in scores.iter_mut().enumerate() {
            row[c] = sign * u[(i, c)] * s[c];
        }
        explained[c] = if total > 0.0 {
            s[c] * s[c] / total
        } else {
            0.0
        };
    }
    Ok((scores, explained))
}

/// Every promoter of the inputs (all but `model`), grouped by species.
fn promoters_by_species(ctx: &Context) -> Result<BTreeMap<String, Vec<Vec<u8>>>, String> {
    let mut by: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (name, input) in ctx
        .inputs
        .iter()
        .filter(|(n, _)| *n != "model" && *n != "groups")
    {
        for f in crate::splits::corpus::fasta_files(input)? {
            for r in crate::genomics::records::read_all(&f)? {
                let species = r
                    .description
                    .split_whitespace()
                    .next()
                    .unwrap_or(name)
                    .to_string();
                by.entry(species).or_default().push(r.seq);
            }
        }
    }
    Ok(by)
}

/// Each species' attribute from a table (tab-separated, a header, `#` comments): the species in
/// a `species` column (or `name`), the value in the column named `attribute`.
fn groups_from(path: &std::path::Path, attribute: &str) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'));
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let key = col("species").or_else(|| col("name")).ok_or_else(|| {
        format!(
            "{}: the groups table needs a `species` or `name` column",
            path.display()
        )
    })?;
    let value = col(attribute).ok_or_else(|| {
        format!(
            "{}: the groups table has no column `{attribute}` (the `attribute` param)",
            path.display()
        )
    })?;
    Ok(lines
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('\t').collect();
            let (k, v) = (cells.get(key)?, cells.get(value)?);
            (!k.is_empty() && !v.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// Runs the stage.
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, String> {
    let fail = |e: String| format!("embeddings: {e}");
    if p.per_species == 0 || p.batch_size == 0 {
        return Err(fail("per_species and batch_size must be at least 1".into()));
    }
    let model_dir = ctx.inputs.get("model").ok_or_else(|| {
        fail("needs an input `model` (a pretrained or fine-tuned model folder)".into())
    })?;
    if ctx.inputs.len() < 2 {
        return Err(fail(
            "needs promoter inputs beside `model` (FASTA files or folders)".into(),
        ));
    }
    let by = promoters_by_species(ctx).map_err(fail)?;
    let mut p = p.clone();
    if let Some(table) = ctx.inputs.get("groups") {
        for (species, group) in groups_from(table, &p.attribute).map_err(fail)? {
            p.groups.entry(species).or_insert(group);
        }
    }
    let p = &p;
    if by.len() < 2 {
        return Err(fail(format!(
            "needs promoters of at least 2 species to compare, found {}: {}",
            by.len(),
            by.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let device = crate::model::device::for_job(&ctx.gpus, "embeddings")?;
    let mut model = Predictor::load(model_dir, device).map_err(fail)?;
    model.batch_size = p.batch_size;
    let mut rng = Rng::new(p.seed);
    let mut means = Vec::new();
    let mut compositions = Vec::new();
    let mut counts = Vec::new();
    for (species, seqs) in &by {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        rng.shuffle(&mut order);
        order.truncate(p.per_species);
        order.sort_unstable();
        let chosen: Vec<&[u8]> = order.iter().map(|&i| seqs[i].as_slice()).collect();
        let rows = model.encode(&chosen).map_err(fail)?.rows;
        let embedded = model.embed(&rows).map_err(fail)?;
        let width = embedded.first().map_or(0, Vec::len);
        let mut mean = vec![0f64; width];
        for e in &embedded {
            for (m, v) in mean.iter_mut().zip(e) {
                *m += f64::from(*v) / embedded.len() as f64;
            }
        }
        let mut comp = [0f64; 4];
        for s in &chosen {
            for (c, v) in comp
                .iter_mut()
                .zip(kmers::features(s, &[1], Counting::Overlapping))
            {
                *c += v / chosen.len() as f64;
            }
        }
        eprintln!("embeddings: {species}: {} promoters", chosen.len());
        means.push(mean);
        compositions.push(comp.to_vec());
        counts.push(chosen.len());
    }
    let (pcs, explained) = pca2(&means).map_err(fail)?;
    let (comp_pcs, composition_explained) = pca2(&compositions).map_err(fail)?;
    let group_of = |s: &str| {
        p.groups
            .get(s)
            .cloned()
            .unwrap_or_else(|| "unassigned".to_string())
    };
    let species: Vec<SpeciesRow> = by
        .keys()
        .enumerate()
        .map(|(i, s)| SpeciesRow {
            species: s.clone(),
            group: group_of(s),
            sequences: counts[i],
            pc: pcs[i],
            composition_pc: comp_pcs[i],
            composition: [
                compositions[i][0],
                compositions[i][1],
                compositions[i][2],
                compositions[i][3],
            ],
        })
        .collect();
    let summary = Summary {
        unassigned: by
            .keys()
            .filter(|s| !p.groups.contains_key(*s))
            .cloned()
            .collect(),
        unused_groups: p
            .groups
            .keys()
            .filter(|s| !by.contains_key(*s))
            .cloned()
            .collect(),
        species,
        explained,
        composition_explained,
    };
    if !p.groups.is_empty() && !summary.unassigned.is_empty() {
        eprintln!(
            "embeddings: warning: `groups` does not name {} (shown as unassigned)",
            summary.unassigned.join(", ")
        );
    }
    if !summary.unused_groups.is_empty() {
        eprintln!(
            "embeddings: warning: `groups` names species with no promoters in the inputs: {}",
            summary.unused_groups.join(", ")
        );
    }
    write_outputs(p, ctx, &summary, &by, &means).map_err(fail)?;
    Ok(summary)
}

fn write_outputs(
    p: &Params,
    ctx: &Context,
    summary: &Summary,
    by: &BTreeMap<String, Vec<Vec<u8>>>,
    means: &[Vec<f64>],
) -> Result<(), String> {
    let path = ctx.out.join("species.tsv");
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
    writeln!(
        f,
        "species\t{}\tsequences\tpc1\tpc2\tcomposition_pc1\tcomposition_pc2\tA\tC\tG\tT",
        p.attribute
    )
    .map_err(io)?;
    for r in &summary.species {
        let c = r.composition;
        writeln!(
            f,
            "{}\t{}\t{}\t{:.6}\t{:.6}\t{:.6}\t{:.6}\t{:.5}\t{:.5}\t{:.5}\t{:.5}",
            r.species,
            r.group,
            r.sequences,
            r.pc[0],
            r.pc[1],
            r.composition_pc[0],
            r.composition_pc[1],
            c[0],
            c[1],
            c[2],
            c[3]
        )
        .map_err(io)?;
    }
    f.flush().map_err(io)?;
    let path = ctx.out.join("species_means.tsv");
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
    let width = means.first().map_or(0, Vec::len);
    let dims: Vec<String> = (0..width).map(|i| format!("e{i}")).collect();
    writeln!(f, "species\t{}", dims.join("\t")).map_err(io)?;
    for (species, mean) in by.keys().zip(means) {
        let cells: Vec<String> = mean.iter().map(|v| format!("{v:.6}")).collect();
        writeln!(f, "{species}\t{}", cells.join("\t")).map_err(io)?;
    }
    f.flush().map_err(io)?;
    let pct = |v: f64| format!("{:.0}%", v * 100.0);
    let panel = |title: &str, ex: [f64; 2], get: fn(&SpeciesRow) -> [f64; 2]| PcaPanel {
        title: title.to_string(),
        axes: (
            format!("PC1 ({})", pct(ex[0])),
            format!("PC2 ({})", pct(ex[1])),
        ),
        points: summary
            .species
            .iter()
            .map(|r| (r.species.clone(), r.group.clone(), get(r)[0], get(r)[1]))
            .collect(),
    };
    let svg = figures::pca(
        &[
            panel(
                "mean promoter embedding",
                summary.explained,
                |r: &SpeciesRow| r.pc,
            ),
            panel(
                "base (1-mer) composition",
                summary.composition_explained,
                |r: &SpeciesRow| r.composition_pc,
            ),
        ],
        &p.attribute,
        "species: principal components",
    )?;
    for (name, text) in [
        ("species_pca.svg", svg),
        (
            "summary.json",
            serde_json::to_string_pretty(summary).expect("serializes"),
        ),
    ] {
        let path = ctx.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_of_points_on_a_line_puts_everything_on_pc1() {
        // Points along (1, 2, 0) plus a small orthogonal wiggle along (0, 0, 1).
        let rows: Vec<Vec<f64>> = (0..5)
            .map(|i| {
                let t = i as f64;
                vec![t, 2.0 * t, if i % 2 == 0 { 0.01 } else { -0.01 }]
            })
            .collect();
        let (scores, explained) = pca2(&rows).unwrap();
        assert!(explained[0] > 0.9999 && explained[1] > 0.0, "{explained:?}");
        assert!((explained[0] + explained[1] - 1.0).abs() < 1e-12);
        // PC1 scores are the centred positions along the line, times |(1, 2)| = sqrt(5); the
        // first row scores >= 0 by convention.
        for (i, s) in scores.iter().enumerate() {
            let want = -(i as f64 - 2.0) * 5f64.sqrt();
            assert!((s[0] - want).abs() < 1e-3, "{i}: {s:?}");
        }
        assert!(scores[0][0] >= 0.0 && scores[0][1] >= 0.0);
    }

    fn fasta(
        dir: &std::path::Path,
        name: &str,
        species: &str,
        gc: usize,
        n: usize,
    ) -> std::path::PathBuf {
        // `gc` in 10ths: the share of G or C bases.
        let mut rng = Rng::new(gc as u64 * 7 + n as u64);
        let mut text = String::new();
        for i in 0..n {
            let seq: String = (0..120)
                .map(|_| {
                    let strong = rng.below(10) < gc;
                    let b = if strong { b"GC" } else { b"AT" };
                    b[rng.below(2)] as char
                })
                .collect();
            text.push_str(&format!(">{species}_{i} {species} chr1:1-120(+)\n{seq}\n"));
        }
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn species_are_embedded_projected_and_coloured() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("model")).unwrap();
        crate::testing::tiny_model(&dir.path().join("model"), 40);
        let mut ctx = Context::new(
            dir.path().join("out"),
            dir.path().join("work"),
            dir.path().into(),
        );
        std::fs::create_dir_all(&ctx.out).unwrap();
        ctx.inputs.insert("model".into(), dir.path().join("model"));
        ctx.inputs
            .insert("a".into(), fasta(dir.path(), "a.fa", "rich", 8, 30));
        ctx.inputs
            .insert("b".into(), fasta(dir.path(), "b.fa", "poor", 2, 30));
        // Two species in one file.
        let c = fasta(dir.path(), "c.fa", "middle", 5, 10);
        let d = std::fs::read_to_string(fasta(dir.path(), "d.fa", "richer", 9, 10)).unwrap();
        std::fs::write(&c, std::fs::read_to_string(&c).unwrap() + &d).unwrap();
        ctx.inputs.insert("c".into(), c);
        let p = Params {
            attribute: "clade".into(),
            groups: BTreeMap::from([
                ("rich".to_string(), "strong".to_string()),
                ("richer".to_string(), "strong".to_string()),
                ("poor".to_string(), "weak".to_string()),
                ("absent".to_string(), "weak".to_string()),
            ]),
            per_species: 20,
            ..Params::default()
        };
        let s = run(&p, &ctx).unwrap();
        let names: Vec<&str> = s.species.iter().map(|r| r.species.as_str()).collect();
        assert_eq!(names, ["middle", "poor", "rich", "richer"]);
        let counts: Vec<usize> = s.species.iter().map(|r| r.sequences).collect();
        assert_eq!(counts, [10, 20, 20, 10]);
        assert_eq!(s.unassigned, ["middle"]);
        assert_eq!(s.unused_groups, ["absent"]);
        // GC content orders the species along composition PC1.
        let gc = |r: &SpeciesRow| r.composition[1] + r.composition[2];
        let mut by_gc = s.species.clone();
        by_gc.sort_by(|a, b| gc(a).total_cmp(&gc(b)));
        let pc1: Vec<f64> = by_gc.iter().map(|r| r.composition_pc[0]).collect();
        assert!(
            pc1.windows(2).all(|w| w[0] < w[1]) || pc1.windows(2).all(|w| w[0] > w[1]),
            "{pc1:?}"
        );
        assert!(s.composition_explained[0] > 0.9, "{s:?}");
        assert!(s.explained[0] > 0.0 && s.explained[0] + s.explained[1] <= 1.0 + 1e-9);
        let table = std::fs::read_to_string(ctx.out.join("species.tsv")).unwrap();
        assert!(
            table.starts_with("species\tclade\tsequences\tpc1\tpc2\t"),
            "{table}"
        );
        assert!(table.contains("\npoor\tweak\t20\t"), "{table}");
        let means = std::fs::read_to_string(ctx.out.join("species_means.tsv")).unwrap();
        assert_eq!(means.lines().count(), 5);
        assert_eq!(means.lines().next().unwrap().split('\t').count(), 1 + 16);
        let svg = std::fs::read_to_string(ctx.out.join("species_pca.svg")).unwrap();
        assert!(svg.contains("clade: strong") && svg.contains("base (1-mer) composition"));
        // Seeded: the same run gives the same numbers.
        assert_eq!(run(&p, &ctx).unwrap(), s);

        // A groups table fills in what the param does not name.
        let mut with_table = ctx.clone();
        let table = dir.path().join("species.tsv");
        std::fs::write(
            &table,
            "# genomes\nname\tclade\nmiddle\tmid\nrich\tignored\n",
        )
        .unwrap();
        with_table.inputs.insert("groups".into(), table);
        let t = run(&p, &with_table).unwrap();
        assert!(t.unassigned.is_empty(), "{t:?}");
        let group = |name: &str| {
            t.species
                .iter()
                .find(|r| r.species == name)
                .unwrap()
                .group
                .clone()
        };
        assert_eq!(
            (group("middle"), group("rich")),
            ("mid".to_string(), "strong".to_string())
        );
        let e = run(
            &Params {
                attribute: "habit".into(),
                ..p.clone()
            },
            &with_table,
        )
        .unwrap_err();
        assert!(e.contains("has no column `habit`"), "{e}");

        // One species is not enough to compare.
        let mut one = ctx.clone();
        one.inputs.retain(|k, _| k == "model" || k == "a");
        let e = run(&p, &one).unwrap_err();
        assert!(e.contains("at least 2 species"), "{e}");
        one.inputs.remove("model");
        let e = run(&p, &one).unwrap_err();
        assert!(e.contains("needs an input `model`"), "{e}");
    }
}
