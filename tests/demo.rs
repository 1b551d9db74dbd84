//! The README's demo workflow runs end to end, and again entirely from the cache.

use crate::util::Project;

#[test]
fn the_demo_workflow_runs_end_to_end() {
    let p = Project::new();
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/demo.yaml");
    let demo = demo.to_str().unwrap();
    let out = p.ok(&["run", demo, "--results", "res"]);
    assert!(out.contains("18 jobs: 18 ran, 0 cached, 0 failed"), "{out}");
    let summary = p.read("res/summary/gc_by_species.tsv");
    assert!(summary.starts_with("species\tgenes\tmean_gc"), "{summary}");
    assert_eq!(summary.lines().count(), 4);
    let corpus: serde_json::Value =
        serde_json::from_str(&p.read("res/corpus/summary.json")).unwrap();
    assert!(
        corpus["removed_held_out_gene"].as_u64().unwrap() > 0,
        "{corpus}"
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train_log.tsv",
    ] {
        assert!(p.path("res/pretrain").join(f).is_file(), "{f}");
    }
    let again = p.ok(&["run", demo, "--results", "res"]);
    assert!(again.contains("18 jobs: 0 ran, 18 cached"), "{again}");
}
