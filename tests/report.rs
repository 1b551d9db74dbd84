//! The `report` stage in a workflow: one HTML page with Table 1, the figures and the provenance of
//! every upstream job from the cache's records.

use flora_stages::testing::{planted, planted_table};

use crate::util::Project;

const WORKFLOW: &str = r#"
name: judged
stages:
  baselines:
    kind: baselines
    inputs: {table: table.tsv}
    params: {k: [2, 3]}
  analysis:
    kind: analysis
    inputs: {baselines: baselines}
  report:
    kind: report
    inputs: {analysis: analysis, baselines: baselines}
    params: {title: "Planted motifs: baselines"}
"#;

/// Parses the page as XML; returns how many elements of each of `names` it holds.
fn count(page: &str, names: &[&str]) -> Vec<usize> {
    let doc = roxmltree::Document::parse_with_options(
        page,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("the report is not well-formed: {e}"));
    names
        .iter()
        .map(|name| {
            doc.descendants()
                .filter(|n| n.is_element() && n.tag_name().name() == *name)
                .count()
        })
        .collect()
}

#[test]
fn a_workflow_report_shows_results_and_the_provenance_of_every_job() {
    let p = Project::new();
    p.write("table.tsv", &planted_table(&planted(200, 120, 3)))
        .write("judged.yaml", WORKFLOW);
    p.ok(&[
        "run",
        "judged.yaml",
        "--results",
        "R",
        "--set",
        "baselines.seed=4",
    ]);
    let page = p.read("R/report/report.html");
    // Three scatter figures (constant, bow2, bow3), two R² tables + all metrics + the
    // provenance's jobs + the inputs.
    assert_eq!(count(&page, &["svg", "table"]), [3, 5], "{page}");
    for text in [
        "<title>Planted motifs: baselines</title>",
        "squared Pearson correlation",
        "<td>bow3</td>",
        "analysis/scatter_bow2.svg",
        "Workflow <code>judged</code>",
        "baselines v2",
        "analysis v3",
        "--set baselines.seed=4",
        "&quot;seed&quot;: 4",
        "kind: baselines",
        "baselines/summary.json",
    ] {
        assert!(page.contains(text), "{text} is missing");
    }
    // The report is cached like any stage: a second run runs nothing.
    let again = p.ok(&[
        "run",
        "judged.yaml",
        "--results",
        "R",
        "--set",
        "baselines.seed=4",
    ]);
    let plan = p.plan(&["judged.yaml", "--set", "baselines.seed=4"]);
    assert!(
        plan.iter().all(|(_, state, _)| state == "cached"),
        "{plan:?}\n{again}"
    );
    // Editing an upstream param re-runs the report with the new provenance.
    p.ok(&[
        "run",
        "judged.yaml",
        "--results",
        "R",
        "--set",
        "baselines.seed=5",
    ]);
    assert!(p
        .read("R/report/report.html")
        .contains("&quot;seed&quot;: 5"));
}

#[test]
fn a_report_outside_a_workflow_says_it_has_no_records() {
    let p = Project::new();
    p.write("table.tsv", &planted_table(&planted(120, 100, 3)));
    p.ok(&[
        "stage",
        "baselines",
        "--input",
        "table=table.tsv",
        "--set",
        "k=[2]",
        "--out",
        "bl",
    ]);
    p.ok(&["stage", "report", "--input", "baselines=bl", "--out", "rep"]);
    let page = p.read("rep/report.html");
    assert_eq!(count(&page, &["svg"]), [0]);
    assert!(page.contains("No upstream jobs"));
    assert!(page.contains("No input holds a table1.tsv"));
    let e = p.fails(&["stage", "report", "--out", "rep2"], 1);
    assert!(e.contains("needs at least one input"), "{e}");
}
