//! The shipped workflows: the paper's plans offline; tables drive `foreach`.

use crate::util::Project;

#[test]
fn the_paper_workflow_plans_offline() {
    let p = Project::new();
    let paper = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/paper.yaml");
    let rows = p.plan(&[paper.to_str().unwrap()]);
    assert_eq!(rows.len(), 195, "{rows:?}");
    assert!(rows.iter().all(|(_, state, _)| state == "run"));
    let jobs: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    for job in [
        "genome[arabidopsis_thaliana]",
        "genome[athaliana_refseq]",
        "genome[B73]",
        "genome[Tzi8]",
        "nam_promoters[Oh43]",
        "expression[CML247]",
        "maize_pretrain",
        "finetune",
        "report",
    ] {
        assert!(jobs.contains(&job), "{job}");
    }
    // 52 pretraining genomes and 26 NAM lines.
    assert_eq!(
        jobs.iter().filter(|j| j.starts_with("promoters[")).count(),
        52
    );
    assert_eq!(
        jobs.iter().filter(|j| j.starts_with("expression[")).count(),
        26
    );
}

#[test]
fn foreach_reads_a_table_with_a_filter() {
    let p = Project::new();
    p.write(
        "genomes.tsv",
        "# a comment\nname\tset\tsize\nalpha\tpre\t3\nbeta\tnam\t\ngamma\tnam\t5\n",
    )
    .write(
        "wf.yaml",
        r#"
stages:
  each:
    kind: exec
    foreach: {table: genomes.tsv, where: {set: nam}}
    params:
      argv: [sh, -c, "echo ${item.name} ${item.size} > $FLORA_OUT/x.txt"]
"#,
    );
    p.ok(&["run", "wf.yaml", "--results", "R"]);
    assert_eq!(
        p.read("R/each/beta/x.txt"),
        "beta\n",
        "an empty cell is null"
    );
    assert_eq!(p.read("R/each/gamma/x.txt"), "gamma 5\n");
    assert!(!p.path("R/each/alpha").exists());
    // Bad tables are reported with the stage and the file.
    p.write("genomes.tsv", "name\tset\nalpha\tpre\textra\n");
    let e = p.fails(&["plan", "wf.yaml"], 2);
    assert!(
        e.contains("genomes.tsv line 2: 3 cells for 2 columns"),
        "{e}"
    );
    p.write("genomes.tsv", "name\tkind\nalpha\tpre\n");
    let e = p.fails(&["plan", "wf.yaml"], 2);
    assert!(
        e.contains("`where` names a column `set` that the table lacks"),
        "{e}"
    );
    p.write(
        "wf.yaml",
        "stages:\n  each:\n    kind: exec\n    foreach: {table: missing.tsv}\n    params: {argv: [true]}\n",
    );
    let e = p.fails(&["plan", "wf.yaml"], 2);
    assert!(e.contains("missing.tsv") && e.contains("each"), "{e}");
}
