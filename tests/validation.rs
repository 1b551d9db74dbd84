//! Every problem in a workflow is reported with file:line:column and the stage, before anything runs.

use crate::util::Project;

/// Runs `flora plan` on `yaml` and returns the error text (exit status 2).
fn problems(yaml: &str, extra: &[&str]) -> String {
    let p = Project::new();
    p.write("wf.yaml", yaml);
    let mut args = vec!["plan", "wf.yaml"];
    args.extend_from_slice(extra);
    let out = p.fails(&args, 2);
    assert!(!p
        .path("cache/artifacts")
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false));
    out
}

fn assert_has(out: &str, want: &str) {
    assert!(out.contains(want), "expected {want:?} in:\n{out}");
}

#[test]
fn yaml_syntax_error() {
    let out = problems("stages:\n  a: {kind: exec\n  b: [\n", &[]);
    assert_has(&out, "error: wf.yaml:3:");
    assert_has(&out, "YAML syntax");
}

#[test]
fn keys_written_twice_are_named_where_each_is() {
    let out = problems(
        "name: a\nstages:\n  s:\n    kind: exec\n    params: {argv: [true], argv: [false]}\n  s:\n    kind: exec\nname: b\n",
        &[],
    );
    assert_has(
        &out,
        "error: wf.yaml:6:3: YAML syntax: `s` is written twice in `stages` (first at line 3); a key may appear once per mapping",
    );
    assert_has(
        &out,
        "error: wf.yaml:5:28: YAML syntax: `argv` is written twice in `stages.s.params` (first at line 5)",
    );
    assert_has(
        &out,
        "error: wf.yaml:8:1: YAML syntax: `name` is written twice (first at line 1)",
    );
}

#[test]
fn unknown_kind() {
    let out = problems("stages:\n  a:\n    kind: exce\n", &[]);
    assert_has(
        &out,
        "error: wf.yaml:3:11: stage `a`: unknown kind `exce` (known kinds: exec",
    );
}

#[test]
fn unknown_and_mistyped_params() {
    let out = problems(
        "stages:\n  a:\n    kind: exec\n    params:\n      argv: [echo]\n      argvs: [x]\n  b:\n    kind: exec\n    params: {argv: echo}\n",
        &[],
    );
    assert_has(&out, "error: wf.yaml:6:7: stage `a`: unknown param `argvs`, expected `argv` or `env` (kind `exec`)");
    assert_has(&out, "error: wf.yaml:9:20: stage `b`: invalid type: string \"echo\", expected a sequence (kind `exec`)");
}

/// Training params no run can take are refused where they are written, before anything runs:
/// each would have panicked in a tensor op, or trained nothing and published the untrained model.
#[test]
fn training_params_out_of_range() {
    let out = problems(
        "stages:\n  pre:\n    kind: pretrain\n    params:\n      epochs: 0\n  pre2:\n    kind: pretrain\n    params: {lr: -1, layers: 2}\n  pre3:\n    kind: pretrain\n    params: {max_len: 2}\n  pre4:\n    kind: pretrain\n    params: {mask_prob: 1.5}\n  ft:\n    kind: finetune\n    params: {head_dropout: 1.0}\n  ft2:\n    kind: finetune\n    params: {lr: 0}\n  ft3:\n    kind: finetune\n    params: {attention: flash}\n",
        &[],
    );
    assert_has(
        &out,
        "error: wf.yaml:5:15: stage `pre`: epochs 0 must be at least 1 (kind `pretrain`)",
    );
    assert_has(
        &out,
        "error: wf.yaml:8:18: stage `pre2`: lr -1 must be a number above 0 (kind `pretrain`)",
    );
    assert_has(
        &out,
        "stage `pre3`: max_len 2 must be at least 3 (<s>, a token and </s>)",
    );
    assert_has(&out, "stage `pre4`: mask_prob 1.5 is not a share in (0, 1]");
    assert_has(&out, "stage `ft`: head_dropout 1 is not a share in [0, 1)");
    assert_has(&out, "stage `ft2`: lr 0 must be a number above 0");
    assert_has(
        &out,
        "stage `ft3`: attention flash: flash attention needs precision bf16",
    );
    // The same check for one stage run alone, its value given by --set.
    let p = Project::new();
    let e = p.fails(
        &["stage", "pretrain", "--set", "grad_accum=0", "--out", "x"],
        2,
    );
    assert_has(&e, "stage `pretrain`: grad_accum 0 must be at least 1");
}

#[test]
fn missing_required_param() {
    let out = problems("stages:\n  a: {kind: exec}\n", &[]);
    assert_has(
        &out,
        "error: wf.yaml:2:6: stage `a`: missing field `argv` (kind `exec`)",
    );
}

#[test]
fn reference_to_a_missing_stage() {
    let out = problems(
        "stages:\n  a: {kind: exec, params: {argv: [x]}}\n  b:\n    kind: exec\n    params: {argv: [x]}\n    inputs: {src: hello}\n  c: {kind: exec, params: {argv: [x]}, inputs: {src: \"nope[1]\"}}\n",
        &[],
    );
    assert_has(&out, "error: wf.yaml:6:19: stage `b`: input `src`: `hello` is neither a stage (stages: a, b, c) nor an existing file");
    assert_has(&out, "error: wf.yaml:7:54: stage `c`: input `src`: `nope[1]` refers to a stage `nope` that does not exist");
}

#[test]
fn reference_to_a_missing_item() {
    let out = problems(
        "stages:\n  a: {kind: exec, foreach: [x, y], params: {argv: [x]}}\n  b: {kind: exec, params: {argv: [x]}, inputs: {src: \"a[z]\"}}\n",
        &[],
    );
    assert_has(
        &out,
        "stage `b`: input `src`: `a[z]`: stage `a` has no item `z` (items: x, y)",
    );
}

#[test]
fn cycle_is_printed() {
    let out = problems(
        "stages:\n  a: {kind: exec, params: {argv: [x]}, inputs: {i: c}}\n  b: {kind: exec, params: {argv: [x]}, inputs: {i: a}}\n  c: {kind: exec, params: {argv: [x]}, inputs: {i: b}}\n  d: {kind: exec, params: {argv: [x]}, inputs: {i: d}}\n",
        &[],
    );
    assert!(
        out.contains("stage `b`: dependency cycle: a -> b -> c -> a")
            || out.contains("stage `d`: dependency cycle: d -> d"),
        "{out}"
    );
    assert_has(&out, "error: wf.yaml:");
}

#[test]
fn bad_foreach() {
    let out = problems(
        "stages:\n  a: {kind: exec, foreach: 3, params: {argv: [x]}}\n",
        &[],
    );
    assert_has(
        &out,
        "error: wf.yaml:2:28: stage `a`: `foreach` must be a list",
    );
    let out = problems(
        "stages:\n  a: {kind: exec, foreach: [x, y, x], params: {argv: [x]}}\n",
        &[],
    );
    assert_has(
        &out,
        "error: wf.yaml:2:35: stage `a`: foreach item `x` repeats item 0",
    );
    let out = problems(
        "stages:\n  a: {kind: exec, foreach: [\"a/b\"], params: {argv: [x]}}\n",
        &[],
    );
    assert_has(&out, "foreach item \"a/b\" cannot name a job");
    let out = problems(
        "stages:\n  a: {kind: exec, foreach: [], params: {argv: [x]}}\n",
        &[],
    );
    assert_has(&out, "`foreach` is an empty list");
    let out = problems(
        "stages:\n  a: {kind: exec, foreach: \"${vars.list}\", params: {argv: [x]}}\n",
        &[],
    );
    assert_has(
        &out,
        "stage `a`: foreach: `${vars.list}`: the workflow has no `vars:` block",
    );
    let out = problems(
        "stages:\n  a: {kind: exec, params: {argv: [\"${item}\"]}}\n",
        &[],
    );
    assert_has(
        &out,
        "error: wf.yaml:2:35: stage `a`: `${item}` is only available in a stage with `foreach`",
    );
}

#[test]
fn missing_input_file() {
    let out = problems(
        "stages:\n  a: {kind: exec, params: {argv: [x]}, inputs: {genome: data/TAIR10.fa}}\n",
        &[],
    );
    assert_has(
        &out,
        "error: wf.yaml:2:57: stage `a`: input `genome`: no such file or folder:",
    );
    assert_has(&out, "data/TAIR10.fa");
}

#[test]
fn bad_set_flags() {
    let wf = "stages:\n  hello: {kind: exec, params: {argv: [x]}}\n";
    let out = problems(wf, &["--set", "hello.argvv=1"]);
    assert_has(
        &out,
        "error: --set hello.argvv=1: stage `hello`: unknown param `argvv`",
    );
    let out = problems(wf, &["--set", "hello.argv=notalist"]);
    assert_has(&out, "error: --set hello.argv=notalist: stage `hello`: invalid type: string \"notalist\", expected a sequence");
    let out = problems(wf, &["--set", "nostage.x=1"]);
    assert_has(&out, "error: --set nostage.x=1: no stage named `nostage`");
    let out = problems(wf, &["--set", "hello"]);
    assert_has(&out, "error: --set hello: expected STAGE.PARAM=VALUE");
    // A var must be declared to be set: a misspelt one would leave every job cached, silently.
    let out = problems(wf, &["--set", "vars.genes=500"]);
    assert_has(&out, "error: --set vars.genes=500: the workflow has no var `genes` (it declares none); `--set vars.NAME` sets one its `vars:` block declares");
    let with_vars = format!("vars: {{families: 1, seed: 2}}\n{wf}");
    let out = problems(&with_vars, &["--set", "vars.famlies=200"]);
    assert_has(
        &out,
        "error: --set vars.famlies=200: the workflow has no var `famlies` (vars: families, seed)",
    );
    let out = problems(wf, &["--set", "hello.env=[unclosed"]);
    assert_has(&out, "is not valid YAML");
}

#[test]
fn set_reads_yaml_and_nested_keys() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  hello: {kind: exec, params: {argv: [sh, -c, \"echo $MSG > $FLORA_OUT/m\"]}}\n",
    );
    p.ok(&["run", "wf.yaml", "--set", "hello.env.MSG=bye"]);
    assert_eq!(p.read("results/wf/hello/m"), "bye\n");
    p.ok(&[
        "run",
        "wf.yaml",
        "--set",
        "hello.argv=[sh, -c, 'echo list > $FLORA_OUT/m']",
    ]);
    assert_eq!(p.read("results/wf/hello/m"), "list\n");
}

#[test]
fn structural_problems() {
    let out = problems(
        "stages:\n  a: {kind: exec, params: {argv: [x]}, resources: {cpus: 2}}\nstagez: 1\n",
        &[],
    );
    assert_has(&out, "wf.yaml:3:1: unknown top-level key `stagez`");
    assert_has(
        &out,
        "wf.yaml:2:52: stage `a`: resources: unknown field `cpus`",
    );
    let out = problems("stages:\n  a: {kind: exec, params: {argv: [x]}, resources: {memory: 4X}}\n  b c: {kind: exec}\n", &[]);
    assert_has(
        &out,
        "wf.yaml:3:3: stage `b c`: a stage name must be a word",
    );
    let out = problems(
        "stages:\n  a: {kind: exec, params: {argv: [x]}, resources: {memory: 4X}}\n",
        &[],
    );
    assert_has(&out, "stage `a`: resources: memory \"4X\": unknown unit");
    let out = problems("", &[]);
    assert_has(&out, "the workflow is empty");
    let out = problems(
        "stages:\n  a: {kind: exec, params: {argv: [x]}, inputs: {1bad: x}}\n",
        &[],
    );
    assert_has(&out, "input name `1bad` must be letters");
    let p = Project::new();
    let out = p.fails(&["plan", "nowhere.yaml"], 2);
    assert_has(
        &out,
        "error: nowhere.yaml:1:1: cannot read the workflow file",
    );
}

#[test]
fn several_problems_are_reported_at_once() {
    let out = problems(
        "stages:\n  a: {kind: nokind}\n  b: {kind: exec, params: {argv: [x], oops: 1}}\n",
        &[],
    );
    assert_eq!(out.matches("error: ").count(), 2, "{out}");
}
