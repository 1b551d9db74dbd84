//! The `paralogs` stage: groups of related genes, so that a group never straddles train and test.
//!
//! Groups come from a paralog/syntenic table (each row is a set of related genes, over any number
//! of id columns; rows that share a gene are merged: union-find), or, where no table exists, from
//! promoter similarity (MinHash over k-mers). An ortholog table can map the genes of other lines
//! onto a reference line's genes, which puts them in the reference genes' groups.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use petgraph::unionfind::UnionFind;
use serde::{Deserialize, Serialize};

use super::{minhash, tsv};
use crate::Context;

/// How groups are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `table` when a `table` input is given, else `similarity`.
    Auto,
    /// From a paralog/syntenic table.
    Table,
    /// From promoter similarity.
    Similarity,
}

/// Params of the `paralogs` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// How groups are found (default auto).
    pub method: Method,
    /// Table columns that hold gene ids (default: every column not in `ignore_columns`).
    pub columns: Option<Vec<String>>,
    /// Table columns to leave out (e.g. `CommonID`, `subgenome`).
    pub ignore_columns: Vec<String>,
    /// A larger group is an error: usually a non-gene column was read as ids (default 1000).
    pub max_group_size: usize,
    /// Similarity: k-mer length (default 12).
    pub k: usize,
    /// Similarity: sketch size (default 128).
    pub bins: usize,
    /// Similarity: LSH bands (default 32).
    pub bands: usize,
    /// Similarity: estimated Jaccard at which two promoters are grouped (default 0.5).
    pub threshold: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            method: Method::Auto,
            columns: None,
            ignore_columns: Vec::new(),
            max_group_size: 1000,
            k: 12,
            bins: 128,
            bands: 32,
            threshold: 0.5,
        }
    }
}

/// What was grouped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// The method used.
    pub method: String,
    /// Genes written.
    pub genes: usize,
    /// Groups (singletons included).
    pub groups: usize,
    /// Genes in a group of two or more.
    pub grouped_genes: usize,
    /// The largest group's size.
    pub largest_group: usize,
}

/// Genes and their groups, in gene order.
pub type Groups = Vec<(String, String)>;

struct Ids {
    index: HashMap<String, usize>,
    names: Vec<String>,
}

impl Ids {
    fn id(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), self.names.len() - 1);
        self.names.len() - 1
    }
}

/// Unions from a table: each row joins its non-empty id cells.
fn table_pairs(path: &Path, p: &Params, ids: &mut Ids) -> Result<Vec<(usize, usize)>, String> {
    let (header, rows) = tsv::read_table(path)?;
    let cols: Vec<usize> = match &p.columns {
        Some(names) => names
            .iter()
            .map(|n| {
                header.iter().position(|h| h == n).ok_or_else(|| {
                    format!(
                        "{}: no column `{n}` (columns: {})",
                        path.display(),
                        header.join(", ")
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        None => (0..header.len())
            .filter(|&c| !p.ignore_columns.contains(&header[c]))
            .collect(),
    };
    let mut pairs = Vec::new();
    for row in &rows {
        let members: Vec<usize> = cols
            .iter()
            .filter_map(|&c| row.get(c))
            .filter(|v| !v.is_empty() && *v != "NA" && *v != "-")
            .map(|v| ids.id(v))
            .collect();
        for w in members.windows(2) {
            pairs.push((w[0], w[1]));
        }
        if members.len() == 1 {
            pairs.push((members[0], members[0]));
        }
    }
    Ok(pairs)
}

/// Groups genes; `universe` (if any) limits and completes the output.
pub fn group(
    p: &Params,
    table: Option<&Path>,
    promoters: Option<&Path>,
    orthologs: Option<&Path>,
    universe: Option<&[String]>,
) -> Result<(Groups, Summary), String> {
    let method = match (p.method, table) {
        (Method::Auto, Some(_)) | (Method::Table, _) => Method::Table,
        _ => Method::Similarity,
    };
    let mut ids = Ids {
        index: HashMap::new(),
        names: Vec::new(),
    };
    if let Some(u) = universe {
        for g in u {
            ids.id(g);
        }
    }
    let mut pairs = Vec::new();
    match method {
        Method::Table => {
            let table = table.ok_or("method `table` needs an input `table`")?;
            pairs.extend(table_pairs(table, p, &mut ids)?);
        }
        _ => {
            let promoters = promoters
                .ok_or("method `similarity` needs an input `promoters` (or give a `table`)")?;
            if !(1..=32).contains(&p.k) || p.bins == 0 || p.bands == 0 || p.bands > p.bins {
                return Err(format!(
                    "similarity needs 1 <= k <= 32 and 0 < bands <= bins (k {}, bins {}, bands {})",
                    p.k, p.bins, p.bands
                ));
            }
            let fasta = tsv::locate(promoters, "promoters.fa.gz")?;
            let records = crate::genomics::records::read_all(&fasta)?;
            let mut idx = Vec::new();
            let mut sketches = Vec::new();
            for r in &records {
                // Every promoter is a gene; those with no clean k-mer stay alone.
                let i = ids.id(&r.id);
                if let Some(s) = minhash::sketch(&r.seq, p.k, p.bins) {
                    idx.push(i);
                    sketches.push(s);
                }
            }
            for (a, b) in minhash::similar_pairs(&sketches, p.bands, p.threshold) {
                pairs.push((idx[a], idx[b]));
            }
        }
    }
    if let Some(path) = orthologs {
        let (header, rows) = tsv::read_table(path)?;
        if header.len() < 2 {
            return Err(format!(
                "{}: an ortholog table needs two columns: gene, reference gene",
                path.display()
            ));
        }
        for row in rows {
            if let (Some(a), Some(b)) = (row.first(), row.get(1)) {
                if !a.is_empty() && !b.is_empty() {
                    pairs.push((ids.id(a), ids.id(b)));
                }
            }
        }
    }
    let mut uf: UnionFind<usize> = UnionFind::new(ids.names.len());
    for (a, b) in pairs {
        uf.union(a, b);
    }
    // Name each group by its smallest gene id.
    let mut group_name: BTreeMap<usize, String> = BTreeMap::new();
    let mut sizes: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, name) in ids.names.iter().enumerate() {
        let root = uf.find(i);
        *sizes.entry(root).or_default() += 1;
        let e = group_name.entry(root).or_insert_with(|| name.clone());
        if name < e {
            *e = name.clone();
        }
    }
    let largest = sizes.values().copied().max().unwrap_or(0);
    if largest > p.max_group_size {
        let (root, _) = sizes.iter().max_by_key(|(_, s)| **s).expect("non-empty");
        return Err(format!(
            "a group of {largest} genes (containing {}) is larger than max_group_size {}: is a column that is not a gene id (e.g. a subgenome label) read as ids? Name the id columns with `columns:`",
            group_name[root],
            p.max_group_size
        ));
    }
    let keep: Vec<usize> = match universe {
        Some(u) => u.iter().map(|g| ids.index[g]).collect(),
        None => (0..ids.names.len()).collect(),
    };
    let groups: Groups = keep
        .iter()
        .map(|&i| (ids.names[i].clone(), group_name[&uf.find(i)].clone()))
        .collect();
    let mut per_group: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, g) in &groups {
        *per_group.entry(g).or_default() += 1;
    }
    let summary = Summary {
        method: format!("{method:?}").to_lowercase(),
        genes: groups.len(),
        groups: per_group.len(),
        grouped_genes: per_group.values().filter(|&&n| n > 1).sum(),
        largest_group: per_group.values().copied().max().unwrap_or(0),
    };
    Ok((groups, summary))
}

/// Runs the stage: inputs `table` and/or `promoters`, optional `genes` and `orthologs`.
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, String> {
    let universe = match ctx.inputs.get("genes") {
        Some(g) => {
            let path = ["promoters.tsv", "expression.tsv", "groups.tsv"]
                .iter()
                .find_map(|n| tsv::locate(g, n).ok())
                .ok_or_else(|| {
                    format!(
                        "{}: no promoters.tsv, expression.tsv or groups.tsv",
                        g.display()
                    )
                })?;
            let mut ids = tsv::gene_ids(&path)?;
            let mut seen = std::collections::HashSet::new();
            ids.retain(|g| seen.insert(g.clone()));
            Some(ids)
        }
        None => None,
    };
    let (groups, summary) = group(
        p,
        ctx.inputs.get("table").map(|p| p.as_path()),
        ctx.inputs.get("promoters").map(|p| p.as_path()),
        ctx.inputs.get("orthologs").map(|p| p.as_path()),
        universe.as_deref(),
    )
    .map_err(|e| format!("paralogs: {e}"))?;
    let path = ctx.out.join("groups.tsv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| e.to_string())?);
    let mut text = String::from("gene_id\tgroup\n");
    for (g, grp) in &groups {
        text.push_str(&format!("{g}\t{grp}\n"));
    }
    w.write_all(text.as_bytes())
        .and_then(|_| w.flush())
        .map_err(|e| e.to_string())?;
    std::fs::write(
        ctx.out.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("serializes"),
    )
    .map_err(|e| e.to_string())?;
    eprintln!("paralogs: {summary:?}");
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn table_rows_sharing_a_gene_merge() {
        let dir = tempfile::tempdir().unwrap();
        let t = write(
            dir.path(),
            "syn.csv",
            "CommonID,sorghum3,maize4,subgenome\ng1,Sb1,Zm1,maize1\ng2,Sb1,Zm2,maize2\ng3,Sb3,Zm3,maize1\ng4,Sb4,,maize1\n",
        );
        let p = Params {
            columns: Some(vec!["sorghum3".into(), "maize4".into()]),
            ..Params::default()
        };
        let universe: Vec<String> = ["Zm1", "Zm2", "Zm3", "Zm9"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (groups, s) = group(&p, Some(&t), None, None, Some(&universe)).unwrap();
        assert_eq!(
            groups,
            vec![
                ("Zm1".to_string(), "Sb1".to_string()),
                ("Zm2".to_string(), "Sb1".to_string()),
                ("Zm3".to_string(), "Sb3".to_string()),
                ("Zm9".to_string(), "Zm9".to_string()),
            ]
        );
        assert_eq!((s.groups, s.grouped_genes, s.largest_group), (3, 2, 2));
        // Reading the subgenome label as an id would merge everything: refused.
        let bad = Params {
            ignore_columns: vec!["CommonID".into()],
            max_group_size: 3,
            ..Params::default()
        };
        let err = group(&bad, Some(&t), None, None, None).unwrap_err();
        assert!(err.contains("larger than max_group_size 3"), "{err}");
        let missing = Params {
            columns: Some(vec!["rice".into()]),
            ..Params::default()
        };
        assert!(group(&missing, Some(&t), None, None, None)
            .unwrap_err()
            .contains("no column `rice`"));
    }

    #[test]
    fn orthologs_join_reference_groups() {
        let dir = tempfile::tempdir().unwrap();
        let t = write(dir.path(), "par.tsv", "a\tb\nB73_1\tB73_2\n");
        let o = write(
            dir.path(),
            "orth.tsv",
            "gene\treference\nMo17_1\tB73_2\nMo17_5\tB73_5\n",
        );
        let (groups, _) = group(&Params::default(), Some(&t), None, Some(&o), None).unwrap();
        let of = |g: &str| groups.iter().find(|(x, _)| x == g).unwrap().1.clone();
        assert_eq!(of("Mo17_1"), "B73_1");
        assert_eq!(of("Mo17_5"), "B73_5");
    }

    #[test]
    fn similarity_groups_near_identical_promoters() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = crate::rng::Rng::new(3);
        let a: String = (0..800)
            .map(|_| ['A', 'C', 'G', 'T'][rng.below(4)])
            .collect();
        let b: String = (0..800)
            .map(|_| ['A', 'C', 'G', 'T'][rng.below(4)])
            .collect();
        let mut a2 = a.clone();
        a2.replace_range(400..401, if &a[400..401] == "A" { "C" } else { "A" });
        let prom = dir.path().join("p");
        std::fs::create_dir_all(&prom).unwrap();
        let fa = prom.join("promoters.fa.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&fa).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(format!(">g1 sp\n{a}\n>g2 sp\n{a2}\n>g3 sp\n{b}\n>g4 sp\nNNNN\n").as_bytes())
            .unwrap();
        enc.finish().unwrap();
        let (groups, s) = group(&Params::default(), None, Some(&prom), None, None).unwrap();
        assert_eq!(s.method, "similarity");
        assert_eq!(
            groups,
            vec![
                ("g1".into(), "g1".into()),
                ("g2".into(), "g1".into()),
                ("g3".into(), "g3".into()),
                ("g4".into(), "g4".into())
            ]
        );
    }
}
