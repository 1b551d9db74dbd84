//! `flora check`: a workflow's key figures against its expected-results file.

use flora_stages::testing::{planted, planted_table};

use crate::util::Project;

const WORKFLOW: &str = r#"
name: judged
stages:
  baselines:
    kind: baselines
    inputs: {table: table.tsv}
    params: {k: [2, 4]}
  analysis:
    kind: analysis
    inputs: {baselines: baselines}
"#;

fn expected(bow4: f64, tolerance: f64) -> String {
    format!(
        r#"
figures:
  bow4: {{stage: analysis, file: table1.tsv, row: {{model: bow4, metric: r2}}, column: All}}
  best: {{stage: analysis, file: table1.tsv, row: {{model: "bow*", metric: r2}}, column: All, reduce: max}}
  constant: {{stage: analysis, file: table1.tsv, row: {{model: constant, metric: r2}}, column: All}}
  test_rows: {{stage: baselines, file: summary.json, json: rows.test}}
checks:
  - {{figure: bow4, expect: {bow4}, tolerance: {tolerance}}}
  - {{figure: best, above: constant, why: k-mers beat the means}}
  - {{figure: test_rows, min: 10}}
  - {{figure: best, above: constant, factor: 0.5, margin: 0.01}}
"#
    )
}

fn bow4_r2(p: &Project) -> f64 {
    let table = p.read("R/analysis/table1.tsv");
    let line = table
        .lines()
        .find(|l| l.starts_with("bow4\tr2\t"))
        .expect("a bow4 row");
    line.split('\t').nth(2).unwrap().parse().unwrap()
}

#[test]
fn check_passes_within_tolerance_and_fails_outside_it() {
    let p = Project::new();
    p.write("table.tsv", &planted_table(&planted(200, 120, 3)))
        .write("judged.yaml", WORKFLOW);
    p.ok(&["run", "judged.yaml", "--results", "R"]);
    let r2 = bow4_r2(&p);
    p.write("judged.expected.yaml", &expected(r2, 0.001));
    let out = p.ok(&["check", "judged.yaml"]);
    assert!(out.contains("all 4 checks passed"), "{out}");
    assert!(
        out.contains("k-mers beat the means") && out.contains(" ok"),
        "{out}"
    );
    // A bound from another figure is shown with how it is made, then its value.
    let constant: f64 = p
        .read("R/analysis/table1.tsv")
        .lines()
        .find(|l| l.starts_with("constant\tr2\t"))
        .and_then(|l| l.split('\t').nth(2))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        out.contains(&format!("> constant = {constant:.4}"))
            && out.contains(&format!(
                "> 0.5 × constant + 0.01 = {:.4}",
                0.5 * constant + 0.01
            )),
        "{out}"
    );

    // A figure outside its tolerance fails with status 1 and says which.
    p.write("judged.expected.yaml", &expected(r2 + 0.1, 0.01));
    let out = p.fails(&["check", "judged.yaml"], 1);
    assert!(
        out.contains("FAILED") && out.contains("1 of 4 checks failed"),
        "{out}"
    );

    // Another expected file can be named.
    p.write("other.yaml", &expected(r2, 0.001));
    p.ok(&["check", "judged.yaml", "--expected", "other.yaml"]);

    // After a param edit that was not run, the figures are not up to date: said, status 2.
    let out = p.fails(&["check", "judged.yaml", "--set", "baselines.seed=9"], 2);
    assert!(
        out.contains(
            "`analysis` is not up to date in the cache; run `flora run judged.yaml` first"
        ),
        "{out}"
    );
}

#[test]
fn bad_expected_files_are_clear() {
    let p = Project::new();
    p.write("table.tsv", &planted_table(&planted(120, 100, 3)))
        .write("judged.yaml", WORKFLOW);
    p.ok(&["run", "judged.yaml"]);
    let e = p.fails(&["check", "judged.yaml"], 2);
    assert!(
        e.contains("cannot read the expected results") && e.contains("judged.expected.yaml"),
        "{e}"
    );
    let cases = [
        (
            "figures: {x: {stage: nope, file: a.tsv, column: A}}\nchecks: []\n",
            "the workflow has no job `nope`",
        ),
        (
            "figures: {x: {stage: analysis, file: table1.tsv, column: Nope}}\nchecks: []\n",
            "has no column `Nope`",
        ),
        (
            "figures: {x: {stage: analysis, file: table1.tsv, column: All}}\nchecks: []\n",
            "rows of",
        ),
        (
            "figures: {x: {stage: analysis, file: table1.tsv, row: {model: zzz}, column: All}}\nchecks: []\n",
            "no row of",
        ),
        (
            "figures: {}\nchecks: [{figure: y, min: 1}]\n",
            "the figure `y`, which is not defined",
        ),
        ("figures: {}\nchecks: [{figure: y, minimum: 1}]\n", "unknown field `minimum`"),
    ];
    for (text, want) in cases {
        p.write("judged.expected.yaml", text);
        let e = p.fails(&["check", "judged.yaml"], 2);
        assert!(e.contains(want), "{want}:\n{e}");
    }
}
