//! The `split` stage: whole paralog groups to train, validation and test, from a seed.
//!
//! Groups are shuffled with a fixed-stream generator ([`crate::rng`]) and dealt in that order:
//! to test until it holds `test` of the genes, then to validation until it holds `validation` of
//! the rest, then to train. A group is never divided, so sizes overshoot by at most one group.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::tsv;
use crate::rng::Rng;
use crate::Context;

/// Params of the `split` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Share of genes in test (default 0.3).
    pub test: f64,
    /// Share of the non-test genes in validation (default 0.1).
    pub validation: f64,
    /// Seed of the shuffle (default 0).
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            test: 0.3,
            validation: 0.1,
            seed: 0,
        }
    }
}

/// Split sizes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Genes per split.
    pub genes: BTreeMap<String, usize>,
    /// Groups per split.
    pub groups: BTreeMap<String, usize>,
}

/// Assigns each gene of `groups` (gene, group) to a split: rows (gene, group, split).
pub fn split(
    groups: &[(String, String)],
    p: &Params,
) -> Result<Vec<(String, String, String)>, String> {
    for (name, v) in [("test", p.test), ("validation", p.validation)] {
        if !(0.0..1.0).contains(&v) {
            return Err(format!("`{name}` must be at least 0 and below 1, not {v}"));
        }
    }
    let mut members: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (gene, group) in groups {
        if let Some(other) = seen.insert(gene, group) {
            return Err(format!(
                "gene `{gene}` is in two groups (`{other}` and `{group}`)"
            ));
        }
        members.entry(group).or_default().push(gene);
    }
    let mut order: Vec<&str> = members.keys().copied().collect();
    Rng::new(p.seed).shuffle(&mut order);
    let total = groups.len() as f64;
    let test_target = (p.test * total).round() as usize;
    let val_target = (p.validation * (total - test_target as f64)).round() as usize;
    let (mut n_test, mut n_val) = (0, 0);
    let mut assigned: HashMap<&str, &str> = HashMap::new();
    for g in order {
        let size = members[g].len();
        let split = if n_test < test_target {
            n_test += size;
            "test"
        } else if n_val < val_target {
            n_val += size;
            "validation"
        } else {
            "train"
        };
        assigned.insert(g, split);
    }
    let rows: Vec<(String, String, String)> = groups
        .iter()
        .map(|(gene, group)| {
            (
                gene.clone(),
                group.clone(),
                assigned[group.as_str()].to_string(),
            )
        })
        .collect();
    check(&rows)?;
    Ok(rows)
}

/// Fails if any group has genes in two splits.
pub fn check(rows: &[(String, String, String)]) -> Result<(), String> {
    let mut split_of: HashMap<&str, (&str, &str)> = HashMap::new();
    for (gene, group, split) in rows {
        if let Some((other_split, other_gene)) = split_of.insert(group, (split, gene)) {
            if other_split != split {
                return Err(format!(
                    "group `{group}` straddles two splits: `{other_gene}` is in {other_split}, `{gene}` in {split}"
                ));
            }
        }
    }
    Ok(())
}

/// Reads a split.tsv (gene_id, group, split).
pub fn read(path: &Path) -> Result<Vec<(String, String, String)>, String> {
    let (header, rows) = tsv::read_table(path)?;
    if header.len() < 3 || header[2] != "split" {
        return Err(format!(
            "{}: expected columns gene_id, group, split",
            path.display()
        ));
    }
    Ok(rows
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect())
}

/// Runs the stage: input `groups` (a groups.tsv, or the paralogs stage's folder).
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, String> {
    let input = ctx
        .inputs
        .get("groups")
        .ok_or("split: needs an input `groups` (from the paralogs stage)")?;
    let path = tsv::locate(input, "groups.tsv")?;
    let (_, table) = tsv::read_table(&path)?;
    let groups: Vec<(String, String)> = table
        .into_iter()
        .filter(|r| r.len() >= 2)
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    if groups.is_empty() {
        return Err(format!("split: {} has no genes", path.display()));
    }
    let rows = split(&groups, p).map_err(|e| format!("split: {e}"))?;
    let mut summary = Summary::default();
    let mut group_split: BTreeMap<(&str, &str), ()> = BTreeMap::new();
    let mut text = String::from("gene_id\tgroup\tsplit\n");
    for (gene, group, split) in &rows {
        *summary.genes.entry(split.clone()).or_default() += 1;
        group_split.insert((split, group), ());
        text.push_str(&format!("{gene}\t{group}\t{split}\n"));
    }
    for (split, _) in group_split.keys() {
        *summary.groups.entry(split.to_string()).or_default() += 1;
    }
    std::fs::write(ctx.out.join("split.tsv"), text).map_err(|e| e.to_string())?;
    std::fs::write(
        ctx.out.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("serializes"),
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "split: genes {:?}, groups {:?}",
        summary.genes, summary.groups
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(n: usize) -> Vec<(String, String)> {
        // Groups of 1, 2 and 3 genes, in turn.
        let mut out = Vec::new();
        let mut g = 0;
        while out.len() < n {
            for k in 0..(g % 3 + 1) {
                out.push((format!("gene{g}_{k}"), format!("grp{g}")));
            }
            g += 1;
        }
        out
    }

    #[test]
    fn groups_stay_whole_and_shares_are_close() {
        let gs = groups(1000);
        let rows = split(&gs, &Params::default()).unwrap();
        check(&rows).unwrap();
        let count = |s: &str| rows.iter().filter(|r| r.2 == s).count() as f64;
        let n = rows.len() as f64;
        assert!((count("test") / n - 0.3).abs() < 0.01, "{}", count("test"));
        assert!((count("validation") / (n - count("test")) - 0.1).abs() < 0.01);
        // Deterministic per seed, different across seeds.
        assert_eq!(rows, split(&gs, &Params::default()).unwrap());
        assert_ne!(
            rows,
            split(
                &gs,
                &Params {
                    seed: 1,
                    ..Params::default()
                }
            )
            .unwrap()
        );
    }

    #[test]
    fn straddling_and_bad_params_are_errors() {
        let rows = vec![
            ("a".to_string(), "G".to_string(), "train".to_string()),
            ("b".to_string(), "G".to_string(), "test".to_string()),
        ];
        assert!(check(&rows)
            .unwrap_err()
            .contains("group `G` straddles two splits"));
        assert!(split(
            &groups(10),
            &Params {
                test: 1.5,
                ..Params::default()
            }
        )
        .is_err());
        let dup = vec![
            ("a".to_string(), "G1".to_string()),
            ("a".to_string(), "G2".to_string()),
        ];
        assert!(split(&dup, &Params::default())
            .unwrap_err()
            .contains("in two groups"));
    }
}
