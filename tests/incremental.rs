//! Re-runs: only what changed runs again.

use crate::util::{state_of, Project, HELLO};

#[test]
fn exec_example_runs_then_is_cached() {
    let p = Project::new();
    p.write("wf.yaml", HELLO);
    let out = p.ok(&["run", "wf.yaml"]);
    assert_eq!(state_of(&out, "hello"), "ran");
    assert_eq!(state_of(&out, "upper"), "ran");
    assert_eq!(p.read("results/wf/upper/msg.txt"), "HI\n");
    let out = p.ok(&["run", "wf.yaml"]);
    assert_eq!(state_of(&out, "hello"), "cached");
    assert_eq!(state_of(&out, "upper"), "cached");
}

#[test]
fn param_edit_reruns_only_that_stage_and_its_dependents() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        r#"
stages:
  a: {kind: exec, params: {argv: [sh, -c, "echo a > $FLORA_OUT/x"]}}
  b: {kind: exec, params: {argv: [sh, -c, "echo $MSG > $FLORA_OUT/x"], env: {MSG: one}}}
  c: {kind: exec, inputs: {i: b}, params: {argv: [sh, -c, "cat $FLORA_IN_i/x $FLORA_IN_i/x > $FLORA_OUT/x"]}}
  d: {kind: exec, inputs: {i: a}, params: {argv: [sh, -c, "cp $FLORA_IN_i/x $FLORA_OUT/x"]}}
"#,
    );
    p.ok(&["run", "wf.yaml"]);
    let plan = p.plan(&["wf.yaml", "--set", "b.env.MSG=two"]);
    let states: Vec<(&str, &str)> = plan
        .iter()
        .map(|(j, s, _)| (j.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        states,
        [("a", "cached"), ("b", "run"), ("c", "run"), ("d", "cached")]
    );
    let b_reason = &plan.iter().find(|r| r.0 == "b").unwrap().2;
    assert_eq!(b_reason, "param env.MSG: \"one\" -> \"two\"");
    assert_eq!(
        plan.iter().find(|r| r.0 == "c").unwrap().2,
        "upstream b will run"
    );

    let out = p.ok(&["run", "wf.yaml", "--set", "b.env.MSG=two"]);
    assert_eq!(state_of(&out, "a"), "cached");
    assert_eq!(state_of(&out, "b"), "ran");
    assert_eq!(state_of(&out, "c"), "ran");
    assert_eq!(state_of(&out, "d"), "cached");
    assert_eq!(p.read("results/wf/c/x"), "two\ntwo\n");

    // Going back to the old value finds the old artifacts.
    let out = p.ok(&["run", "wf.yaml"]);
    assert!(out.contains("0 ran, 4 cached"), "{out}");
    assert_eq!(p.read("results/wf/c/x"), "one\none\n");
}

#[test]
fn editing_the_workflow_file_is_seen_like_a_set() {
    let p = Project::new();
    p.write("wf.yaml", HELLO);
    p.ok(&["run", "wf.yaml"]);
    p.write("wf.yaml", &HELLO.replace("tr a-z A-Z", "tr a-z B-Z"));
    let plan = p.plan(&["wf.yaml"]);
    assert_eq!(plan[0].1, "cached");
    assert_eq!(plan[1].1, "run");
    assert_eq!(
        plan[1].2,
        "param argv[2]: \"tr a-z A-Z < $FLORA_IN_src/msg.txt > $FLORA_OUT/msg.txt\" -> \"tr a-z B-Z < $FLORA_IN_src/msg.txt > $FLORA_OUT/msg.txt\""
    );
}

#[test]
fn early_cutoff_keeps_dependents_cached() {
    let p = Project::new();
    let wf = |note: &str| {
        format!(
            r#"
stages:
  make: {{kind: exec, params: {{argv: [sh, -c, "echo same > $FLORA_OUT/x"], env: {{NOTE: "{note}"}}}}}}
  use: {{kind: exec, inputs: {{i: make}}, params: {{argv: [sh, -c, "cp $FLORA_IN_i/x $FLORA_OUT/y"]}}}}
"#
        )
    };
    p.write("wf.yaml", &wf("first"));
    p.ok(&["run", "wf.yaml"]);
    p.write("wf.yaml", &wf("second"));
    let out = p.ok(&["run", "wf.yaml"]);
    assert_eq!(state_of(&out, "make"), "ran");
    assert_eq!(
        state_of(&out, "use"),
        "cached",
        "same bytes upstream: no re-run\n{out}"
    );
}

#[test]
fn touching_an_input_file_reruns_nothing_but_changing_a_byte_does() {
    let p = Project::new();
    p.write("data/genes.txt", "AT1G01010\nAT1G01020\n");
    p.write(
        "wf.yaml",
        r#"
stages:
  count: {kind: exec, inputs: {genes: data/genes.txt}, params: {argv: [sh, -c, "wc -l < $FLORA_IN_genes > $FLORA_OUT/n"]}}
"#,
    );
    p.ok(&["run", "wf.yaml"]);
    let file = std::fs::File::options()
        .write(true)
        .open(p.path("data/genes.txt"))
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(file);
    let out = p.ok(&["run", "wf.yaml"]);
    assert_eq!(state_of(&out, "count"), "cached", "{out}");

    p.write("data/genes.txt", "AT1G01010\nAT1G01021\n");
    let plan = p.plan(&["wf.yaml"]);
    assert_eq!(plan[0].1, "run");
    assert_eq!(plan[0].2, "input genes changed (data/genes.txt)");
    let out = p.ok(&["run", "wf.yaml"]);
    assert_eq!(state_of(&out, "count"), "ran");
}

#[test]
fn folder_inputs_are_hashed_by_content() {
    let p = Project::new();
    p.write("data/a.txt", "1").write("data/sub/b.txt", "2");
    p.write(
        "wf.yaml",
        "stages:\n  ls: {kind: exec, inputs: {d: ./data}, params: {argv: [sh, -c, \"ls -R $FLORA_IN_d > $FLORA_OUT/l\"]}}\n",
    );
    p.ok(&["run", "wf.yaml"]);
    assert_eq!(p.plan(&["wf.yaml"])[0].1, "cached");
    p.write("data/sub/c.txt", "");
    assert_eq!(p.plan(&["wf.yaml"])[0].1, "run");
}

#[test]
fn vars_can_be_set_from_the_command_line() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        r#"
vars: {greeting: hello, who: world, line: "${vars.greeting} ${vars.who}"}
stages:
  say: {kind: exec, params: {argv: [sh, -c, "echo '${vars.line}' > $FLORA_OUT/x"]}}
"#,
    );
    p.ok(&["run", "wf.yaml"]);
    assert_eq!(p.read("results/wf/say/x"), "hello world\n");
    p.ok(&["run", "wf.yaml", "--set", "vars.who=plants"]);
    assert_eq!(p.read("results/wf/say/x"), "hello plants\n");
}

/// `--set STAGE.resources.NAME=VALUE` sets a resource for this run; resources never change a
/// job's key, so a job that ran stays cached with other resources. A bad one is refused at the flag.
#[test]
fn resources_can_be_set_from_the_command_line() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  count: {kind: exec, params: {argv: [sh, -c, \"echo $FLORA_THREADS > $FLORA_OUT/threads\"]}, resources: {threads: 1}}\n",
    );
    let out = p.ok(&["run", "wf.yaml", "--set", "count.resources.threads=2"]);
    assert_eq!(state_of(&out, "count"), "ran");
    assert_eq!(p.read("results/wf/count/threads"), "2\n");
    let out = p.ok(&[
        "run",
        "wf.yaml",
        "--set",
        "count.resources={threads: 1, memory: 1G}",
    ]);
    assert_eq!(state_of(&out, "count"), "cached");
    let text = p.fails(&["run", "wf.yaml", "--set", "count.resources.threads=0"], 2);
    assert!(
        text.contains(
            "error: --set count.resources.threads=0: stage `count`: resources: `threads` must be \
             at least 1"
        ),
        "{text}"
    );
    let text = p.fails(
        &["run", "wf.yaml", "--set", "count.resources.memory=lots"],
        2,
    );
    assert!(
        text.contains("error: --set count.resources.memory=lots: stage `count`: resources:"),
        "{text}"
    );
    let text = p.fails(&["plan", "wf.yaml", "--set", "count.resources.gpu=1"], 2);
    assert!(
        text.contains(
            "error: --set count.resources.gpu=1: stage `count`: resources: unknown field `gpu`"
        ),
        "{text}"
    );
}

#[test]
fn params_that_change_no_output_leave_the_job_cached() {
    let p = Project::new();
    p.write_planted_fasta("corpus.fa", 60, 120, 7);
    p.write(
        "wf.yaml",
        r#"
stages:
  tok: {kind: bpe, inputs: {corpus: corpus.fa}, params: {vocab_size: 300}}
  pre:
    kind: pretrain
    inputs: {corpus: corpus.fa, tokenizer: tok}
    params: {layers: 1, hidden: 32, heads: 2, intermediate: 64, max_len: 64, batch_size: 8, max_steps: 2, checkpoint_every: 1}
"#,
    );
    let out = p.ok(&["run", "wf.yaml"]);
    assert_eq!(state_of(&out, "pre"), "ran");
    // How often checkpoints are written changes no weight: still cached, on the plan and the run.
    for set in ["pre.checkpoint_every=2", "pre.checkpoint_minutes=0.5"] {
        let plan = p.plan(&["wf.yaml", "--set", set]);
        assert_eq!(
            plan[1],
            ("pre".into(), "cached".into(), String::new()),
            "{set}"
        );
    }
    let out = p.ok(&["run", "wf.yaml", "--set", "pre.checkpoint_every=null"]);
    assert_eq!(state_of(&out, "pre"), "cached", "{out}");
    // A param that does change the output is the only one the plan names.
    let plan = p.plan(&[
        "wf.yaml",
        "--set",
        "pre.checkpoint_minutes=3",
        "--set",
        "pre.lr=0.002",
    ]);
    assert_eq!(plan[1].1, "run");
    assert_eq!(plan[1].2, "param lr: 0.001 -> 0.002");
}
