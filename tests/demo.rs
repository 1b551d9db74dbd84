//! The README's demo workflow runs end to end (at a small size, so the suite stays fast; the
//! full-size demo and its `flora check` run in `scripts/test.sh`), and again entirely from the
//! cache; a fine-tuning edit re-runs only what depends on fine-tuning.

use crate::util::Project;

const SMALL: [&str; 12] = [
    "--set",
    "vars.families=30",
    "--set",
    "pretrain.epochs=1",
    "--set",
    "maize_pretrain.epochs=1",
    "--set",
    "finetune.epochs=1",
    "--set",
    "importance.sequences=5",
    "--set",
    "embeddings.per_species=10",
];

#[test]
fn the_demo_workflow_runs_end_to_end() {
    let p = Project::new();
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/demo.yaml");
    let demo = demo.to_str().unwrap();
    let mut args = vec!["run", demo, "--results", "res"];
    args.extend(SMALL);
    let out = p.ok(&args);
    assert!(out.contains("37 jobs: 37 ran, 0 cached, 0 failed"), "{out}");
    let summary = p.read("res/summary/gc_by_genome.tsv");
    assert!(summary.starts_with("genome\tgenes\tmean_gc"), "{summary}");
    assert_eq!(summary.lines().count(), 8);
    let corpus: serde_json::Value =
        serde_json::from_str(&p.read("res/corpus/summary.json")).unwrap();
    assert!(
        corpus["removed_held_out_gene"].as_u64().unwrap() > 0,
        "{corpus}"
    );
    let table = p.read("res/analysis/table1.tsv");
    for model in ["constant", "bow2", "bow5", "finetune"] {
        assert!(
            table.contains(&format!("\n{model}\tr2\t")),
            "{model}:\n{table}"
        );
    }
    let report = p.read("res/report/report.html");
    for part in [
        "Table 1",
        "importance/importance.svg",
        "embeddings/species_pca.svg",
        "finetune: training curve",
        "simulate v1",
    ] {
        assert!(report.contains(part), "{part} is missing from the report");
    }
    let again = p.ok(&args);
    assert!(again.contains("37 jobs: 0 ran, 37 cached"), "{again}");
    // A fine-tuning edit: only finetune and what reads it would run.
    let mut plan_args = vec![demo];
    plan_args.extend(SMALL);
    plan_args.extend(["--set", "finetune.lr=0.001"]);
    let to_run: Vec<String> = p
        .plan(&plan_args)
        .into_iter()
        .filter(|(_, state, _)| state != "cached")
        .map(|(job, _, _)| job)
        .collect();
    assert_eq!(to_run, ["finetune", "analysis", "importance", "report"]);
}
