//! The cache: verify, gc, ls, the content-addressed layout and the index.

use crate::util::{state_of, Project, HELLO};

fn artifact_dirs(p: &Project) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(p.path("cache/artifacts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn verify_catches_a_tampered_artifact_and_remove_heals_it() {
    let p = Project::new();
    p.write("wf.yaml", HELLO);
    p.ok(&["run", "wf.yaml"]);
    assert!(p
        .ok(&["cache", "verify"])
        .contains("2 artifacts checked, 0 damaged"));

    // Artifacts are read-only; a determined user (or a disk) changes one anyway.
    let target = std::fs::canonicalize(p.path("results/wf/upper/msg.txt")).unwrap();
    let meta = std::fs::metadata(&target).unwrap();
    assert!(
        meta.permissions().readonly(),
        "published files are read-only"
    );
    let mut perm = meta.permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&target, perm).unwrap();
    std::fs::write(&target, "TAMPERED\n").unwrap();

    let out = p.fails(&["cache", "verify"], 1);
    assert!(out.contains("DAMAGED artifact"), "{out}");
    assert!(out.contains("changed on disk"), "{out}");
    assert!(out.contains("2 artifacts checked, 1 damaged"), "{out}");

    p.ok(&["cache", "verify", "--remove"]);
    // The removed artifact's record stays while a kept workflow names its key, so that `plan`
    // can say why the job runs; without one, a collection drops it.
    let out = p.ok(&["cache", "gc", "--keep", "wf.yaml", "--dry-run"]);
    assert!(out.contains(", 0 index entries"), "{out}");
    let out = p.ok(&["cache", "gc", "--newer-than", "1h", "--dry-run"]);
    assert!(out.contains(", 1 index entries"), "{out}");
    let out = p.ok(&["run", "wf.yaml"]);
    assert_eq!(state_of(&out, "upper"), "ran", "{out}");
    assert_eq!(p.read("results/wf/upper/msg.txt"), "HI\n");
    assert!(p.ok(&["cache", "verify"]).contains("0 damaged"));
}

#[test]
fn artifacts_are_named_by_their_content() {
    let p = Project::new();
    // Two stages that write the same bytes share one artifact.
    p.write(
        "wf.yaml",
        "stages:\n  a: {kind: exec, params: {argv: [sh, -c, \"echo same > $FLORA_OUT/x\"]}}\n  b: {kind: exec, params: {argv: [sh, -c, \"echo same > $FLORA_OUT/x\"], env: {B: 1}}}\n",
    );
    p.ok(&["run", "wf.yaml"]);
    assert_eq!(artifact_dirs(&p).len(), 1);
    assert_eq!(
        std::fs::canonicalize(p.path("results/wf/a")).unwrap(),
        std::fs::canonicalize(p.path("results/wf/b")).unwrap()
    );
}

#[test]
fn gc_keeps_what_workflows_reach_and_removes_the_rest() {
    let p = Project::new();
    p.write("wf.yaml", HELLO);
    p.write(
        "old.yaml",
        "stages:\n  gone: {kind: exec, params: {argv: [sh, -c, \"echo old > $FLORA_OUT/x\"]}}\n",
    );
    p.ok(&["run", "wf.yaml"]);
    p.ok(&["run", "old.yaml"]);
    assert_eq!(artifact_dirs(&p).len(), 3);

    let err = p.fails(&["cache", "gc"], 2);
    assert!(err.contains("say what to keep"), "{err}");

    let dry = p.ok(&["cache", "gc", "--keep", "wf.yaml", "--dry-run"]);
    assert!(dry.contains("would remove 1 artifacts"), "{dry}");
    // Each artifact with its size and the jobs that made it.
    let line = dry.lines().next().unwrap();
    assert!(
        line.starts_with("would remove ") && line.ends_with("4 B  old:gone"),
        "{dry}"
    );
    assert_eq!(artifact_dirs(&p).len(), 3);

    let out = p.ok(&["cache", "gc", "--keep", "wf.yaml"]);
    assert!(out.contains("removed 1 artifacts"), "{out}");
    assert!(out.lines().next().unwrap().ends_with("old:gone"), "{out}");
    assert_eq!(artifact_dirs(&p).len(), 2);
    assert!(p.plan(&["wf.yaml"]).iter().all(|r| r.1 == "cached"));
    let plan = p.plan(&["old.yaml"]);
    assert_eq!(plan[0].1, "run");
    assert_eq!(plan[0].2, "not in this cache");

    // --newer-than keeps recent artifacts even when no workflow names them.
    p.ok(&["run", "old.yaml"]);
    let out = p.ok(&["cache", "gc", "--newer-than", "1h"]);
    assert!(out.contains("removed 0 artifacts"), "{out}");
    let out = p.ok(&["cache", "gc", "--newer-than", "2099-01-01"]);
    assert!(out.contains("removed 3 artifacts"), "{out}");
    assert!(artifact_dirs(&p).is_empty());
    let err = p.fails(&["cache", "gc", "--newer-than", "someday"], 2);
    assert!(err.contains("expected a date"), "{err}");
}

/// A training job that checkpoints into its work folder and then fails, with `lr` in its key.
fn failing_train(lr: &str) -> String {
    format!(
        "stages:\n  train:\n    kind: exec\n    inputs: {{corpus: corpus.txt}}\n    params: {{argv: [sh, -c, \"echo lr {lr} > $FLORA_WORK/checkpoint; echo '{{\\\"step\\\": 12}}' > $FLORA_WORK/checkpoint.json; echo training; exit 3\"]}}\n"
    )
}

fn entries(p: &Project, folder: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p.path(folder))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn gc_removes_the_checkpoints_and_logs_of_runs_that_will_not_resume() {
    let p = Project::new();
    p.write("corpus.txt", "ACGT\n");
    p.write("wf.yaml", &failing_train("1e-4"));
    p.fails(&["run", "wf.yaml"], 1);
    let first = entries(&p, "cache/work");
    assert_eq!(first.len(), 1, "the failed job keeps its checkpoint");
    assert_eq!(entries(&p, "cache/logs").len(), 1);
    let ls = p.ok(&["cache", "ls"]);
    assert!(ls.contains("WORK FOLDER"), "{ls}");
    assert!(ls.contains(&format!("{}  ", &first[0][..12])), "{ls}");
    assert!(
        ls.contains("wf:train (its checkpoint after step 12)"),
        "{ls}"
    );
    assert!(
        ls.contains("1 work folders of runs that did not finish"),
        "{ls}"
    );

    // The workflow would resume from that checkpoint: it stays, and so does its log.
    let out = p.ok(&["cache", "gc", "--keep", "wf.yaml"]);
    assert!(out.contains("0 work folders (0 B), 0 logs (0 B)"), "{out}");
    assert_eq!(entries(&p, "cache/work"), first);

    // A param edit: the old key will never run again, and nothing else names it.
    p.write("wf.yaml", &failing_train("3e-4"));
    p.fails(&["run", "wf.yaml"], 1);
    assert_eq!(entries(&p, "cache/work").len(), 2);
    let second: Vec<String> = entries(&p, "cache/work")
        .into_iter()
        .filter(|k| *k != first[0])
        .collect();

    // Recent enough to keep.
    let out = p.ok(&["cache", "gc", "--newer-than", "1h", "--dry-run"]);
    assert!(
        out.contains("would remove 0 artifacts (0 B), 0 work folders"),
        "{out}"
    );

    let dry = p.ok(&["cache", "gc", "--keep", "wf.yaml", "--dry-run"]);
    let line = dry.lines().next().unwrap();
    assert!(
        line.starts_with(&format!("would remove {}", &first[0][..12]))
            && line.ends_with(
                "wf:train (the work folder of a run that did not finish; its checkpoint after step 12)",
            ),
        "{dry}"
    );
    assert!(dry.contains("1 work folders (21 B), 1 logs ("), "{dry}");
    assert_eq!(
        entries(&p, "cache/work").len(),
        2,
        "a dry run removes nothing"
    );

    let out = p.ok(&["cache", "gc", "--keep", "wf.yaml"]);
    assert!(
        out.contains("removed 0 artifacts (0 B), 1 work folders (21 B), 1 logs"),
        "{out}"
    );
    assert_eq!(entries(&p, "cache/work"), second);
    assert_eq!(
        entries(&p, "cache/logs"),
        vec![format!("{}.log", second[0])],
        "the log of the run that can resume stays"
    );
    let log = p.ok(&["log", "wf.yaml", "train"]);
    assert!(log.contains("training"), "{log}");

    // The index forgets an input file (its memo) and a workflow file (its jobs' last runs) once
    // they are gone.
    p.write("old.txt", "old\n");
    let touched = std::process::Command::new("touch")
        .args(["-d", "2020-01-01"])
        .arg(p.path("old.txt"))
        .status()
        .unwrap();
    assert!(touched.success());
    p.write(
        "ok.yaml",
        "stages:\n  copy: {kind: exec, inputs: {src: old.txt}, params: {argv: [sh, -c, \"cp $FLORA_IN_src $FLORA_OUT/\"]}}\n",
    );
    p.ok(&["run", "ok.yaml"]);
    std::fs::remove_file(p.path("old.txt")).unwrap();
    std::fs::remove_file(p.path("ok.yaml")).unwrap();
    let out = p.ok(&["cache", "gc", "--newer-than", "1h"]);
    assert!(out.contains("0 logs (0 B), 2 index entries"), "{out}");
    let out = p.ok(&["cache", "gc", "--newer-than", "1h"]);
    assert!(out.contains("0 index entries"), "{out}");
}

#[test]
fn ls_lists_artifacts_with_the_jobs_that_made_them() {
    let p = Project::new();
    p.write("wf.yaml", HELLO);
    p.ok(&["run", "wf.yaml"]);
    let out = p.ok(&["cache", "ls"]);
    assert!(out.contains("wf:hello"), "{out}");
    assert!(out.contains("wf:upper"), "{out}");
    assert!(out.contains("2 artifacts, 6 B"), "{out}");
}

#[test]
fn the_cache_can_live_anywhere() {
    let p = Project::new();
    p.write("wf.yaml", HELLO);
    let elsewhere = p.path("elsewhere/c");
    p.flora(&["run", "wf.yaml"])
        .env("FLORA_CACHE", &elsewhere)
        .assert()
        .success();
    assert!(elsewhere.join("artifacts").is_dir());
    assert!(!p.path("cache").exists());
    let out = p.ok(&["--cache", elsewhere.to_str().unwrap(), "plan", "wf.yaml"]);
    assert!(out.contains("0 to run, 2 cached"), "{out}");
    // Commands that only read a cache refuse a folder that holds none (a mistyped --cache)
    // instead of making an empty cache there and reporting nothing in it.
    p.write("expected.yaml", "figures: {}\nchecks: []\n");
    for args in [
        &["cache", "ls"][..],
        &["cache", "verify"],
        &["cache", "gc", "--keep", "wf.yaml"],
        &["show", "wf.yaml", "hello"],
        &["log", "wf.yaml", "hello"],
        &["check", "wf.yaml", "--expected", "expected.yaml"],
    ] {
        let mut with_cache = vec!["--cache", "elsewhere/typo"];
        with_cache.extend_from_slice(args);
        let e = p.fails(&with_cache, 2);
        assert!(
            e.contains("no flora cache at elsewhere/typo: nothing has run with it yet"),
            "{args:?}: {e}"
        );
        assert!(!p.path("elsewhere/typo").exists(), "{args:?} made a cache");
    }
}
