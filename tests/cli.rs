//! The other subcommands: plan, dag, show, log, stage, help.

use crate::util::{Project, HELLO};

/// A job whose last run failed or was stopped is not "new": the plan says it did not finish,
/// and whether it goes on from its work folder.
#[test]
fn plan_says_which_jobs_did_not_finish_and_which_go_on_from_their_work() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  saves: {kind: exec, params: {argv: [sh, -c, \"echo 1 > $FLORA_WORK/checkpoint; exit 3\"]}}\n  fails: {kind: exec, params: {argv: [sh, -c, \"exit 4\"]}}\n  steps: {kind: exec, params: {argv: [sh, -c, \"echo '{\\\"step\\\": 7}' > $FLORA_WORK/checkpoint.json; exit 5\"]}}\n",
    );
    p.fails(&["run", "wf.yaml", "--keep-going"], 1);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&p.ok(&["plan", "wf.yaml", "--json"])).unwrap();
    assert_eq!(
        rows[0]["reason"],
        "did not finish last time; goes on from its work folder"
    );
    assert_eq!(rows[0]["reasons"][0]["reason"], "unfinished");
    assert_eq!(rows[0]["reasons"][0]["resumes"], true);
    assert_eq!(rows[1]["reason"], "did not finish last time");
    // A `checkpoint.json` (pretraining's and fine-tuning's) gives the step it goes on from.
    assert_eq!(
        rows[2]["reason"],
        "did not finish last time; goes on from its work folder (its checkpoint after step 7)"
    );
    assert_eq!(rows[2]["reasons"][0]["step"], 7);
    assert!(rows[0]["reasons"][0].get("step").is_none());
    // An edit makes another job: that one is new, whatever the old one left.
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&p.ok(&["plan", "wf.yaml", "--json", "--set", "fails.env.X=1"]))
            .unwrap();
    assert_eq!(rows[1]["reason"], "new");
}

#[test]
fn plan_json_has_job_stage_state_and_reason() {
    let p = Project::new();
    p.write("wf.yaml", HELLO);
    let out = p.ok(&["plan", "wf.yaml", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["job"], "hello");
    assert_eq!(rows[0]["stage"], "hello");
    assert_eq!(rows[0]["state"], "run");
    assert_eq!(rows[0]["reason"], "new");
    assert_eq!(rows[0]["reasons"][0]["reason"], "new");
    assert_eq!(rows[1]["reason"], "new; upstream hello will run");
    assert!(rows[0]["last_seconds"].is_null());
    p.ok(&["run", "wf.yaml"]);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&p.ok(&["plan", "wf.yaml", "--json"])).unwrap();
    assert_eq!(rows[1]["state"], "cached");
    assert_eq!(rows[1]["reason"], "");
    assert!(rows[1]["artifact"]
        .as_str()
        .unwrap()
        .contains("/cache/artifacts/"));
    // The human table.
    let table = p.ok(&["plan", "wf.yaml"]);
    assert!(
        table.starts_with("JOB    STATE    LAST RUN  REASON\nhello  cached          -\n"),
        "{table}"
    );
    // A job to run again shows how long its last run took, and the total line adds them up.
    let edited = ["plan", "wf.yaml", "--set", "upper.env.X=1"];
    let table = p.ok(&edited);
    let upper = table.lines().find(|l| l.starts_with("upper")).unwrap();
    assert!(
        upper.contains(" s  param env: ") && table.contains("1 to run (their last runs took "),
        "{table}"
    );
    let mut json = edited.to_vec();
    json.push("--json");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&p.ok(&json)).unwrap();
    assert!(rows[1]["last_seconds"].as_f64().unwrap() > 0.0, "{rows:?}");
}

#[test]
fn dag_as_dot_and_mermaid() {
    let p = Project::new();
    p.write("wf.yaml", HELLO);
    let dot = p.ok(&["dag", "wf.yaml"]);
    assert!(dot.starts_with("digraph \"wf\" {"), "{dot}");
    assert!(dot.contains("s0 [label=\"hello (exec)\"]"), "{dot}");
    assert!(dot.contains("s0 -> s1;"), "{dot}");
    let mermaid = p.ok(&["dag", "wf.yaml", "--format", "mermaid"]);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert!(mermaid.contains("s0 --> s1"), "{mermaid}");
    p.write(
        "fan.yaml",
        "stages:\n  a: {kind: exec, foreach: [x, y], params: {argv: [x]}}\n  b: {kind: exec, inputs: {i: a}, params: {argv: [x]}}\n",
    );
    let jobs = p.ok(&["dag", "fan.yaml", "--jobs"]);
    assert!(jobs.contains("j0 [label=\"a[x] (exec)\"]"), "{jobs}");
    assert!(
        jobs.contains("j0 -> j2;") && jobs.contains("j1 -> j2;"),
        "{jobs}"
    );
    let stages = p.ok(&["dag", "fan.yaml"]);
    assert!(stages.contains("a (exec) x2"), "{stages}");
}

#[test]
fn show_gives_the_artifact_and_its_provenance() {
    let p = Project::new();
    p.write("wf.yaml", HELLO);
    let none = p.fails(&["show", "wf.yaml", "upper"], 2);
    assert!(none.contains("no flora cache at cache"), "{none}");
    assert!(!p.path("cache").exists(), "show made a cache");
    p.ok(&["run", "wf.yaml", "--until", "hello"]);
    let before = p.ok(&["show", "wf.yaml", "upper"]);
    assert!(before.contains("state:     not cached"), "{before}");
    assert!(before.contains("never run with this cache"), "{before}");
    p.ok(&["run", "wf.yaml"]);
    let out = p.ok(&["show", "wf.yaml", "upper"]);
    for field in [
        "job:       upper",
        "state:     cached",
        "artifact:  ",
        "key:       ",
        "kind:      exec v1",
        "params:    {\"argv\"",
        "input:     src = hello (",
        "workflow:  wf (",
        "started:   20",
        "duration:  ",
        "host:      ",
        "flora:     0.",
        "log:       ",
    ] {
        assert!(out.contains(field), "{field:?} in:\n{out}");
    }
    let artifact = out.lines().find(|l| l.starts_with("artifact:")).unwrap()[11..].to_string();
    assert_eq!(
        std::fs::read_to_string(format!("{artifact}/msg.txt")).unwrap(),
        "HI\n"
    );
    let err = p.fails(&["show", "wf.yaml", "nope"], 2);
    assert!(err.contains("has no stage or job `nope`"), "{err}");
}

#[test]
fn log_prints_what_the_job_wrote() {
    let p = Project::new();
    p.write("wf.yaml", "stages:\n  talk: {kind: exec, params: {argv: [sh, -c, \"echo to-stdout; echo to-stderr >&2; touch $FLORA_OUT/x\"]}}\n");
    let err = p.fails(&["log", "wf.yaml", "talk"], 2);
    assert!(err.contains("no flora cache at cache"), "{err}");
    p.write(
        "other.yaml",
        "stages:\n  quiet: {kind: exec, params: {argv: [true]}}\n",
    );
    p.ok(&["run", "other.yaml"]);
    let err = p.fails(&["log", "wf.yaml", "talk"], 2);
    assert!(err.contains("no log for talk"), "{err}");
    p.ok(&["run", "wf.yaml"]);
    let log = p.ok(&["log", "wf.yaml", "talk"]);
    assert!(
        log.contains("to-stdout") && log.contains("to-stderr"),
        "{log}"
    );
    assert!(log.contains("--- flora "), "{log}");
    let linked = p.read("results/wf/talk.log");
    assert_eq!(linked, log);
}

/// `-v` says what the scheduler does with each job (its key from its inputs, cached or started,
/// published), and a job started by a verbose run logs at the same level. Output that is not a
/// terminal has no colour codes, whatever `NO_COLOR` says.
#[test]
fn verbose_runs_say_what_each_job_does() {
    let p = Project::new();
    p.write("data.txt", "hi\n");
    p.write(
        "wf.yaml",
        "stages:\n  a: {kind: exec, inputs: {data: data.txt}, params: {argv: [sh, -c, \"cp $FLORA_IN_data $FLORA_OUT/x\"]}}\n",
    );
    // Older than the clock's granularity, so that its digest is remembered (a trace-level line).
    let touched = std::process::Command::new("touch")
        .args(["-d", "2020-01-01", "data.txt"])
        .current_dir(p.root())
        .status()
        .unwrap();
    assert!(touched.success());
    let run = |args: &[&str]| {
        let out = p.flora(args).env_remove("NO_COLOR").output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let quiet = run(&["run", "wf.yaml", "--force", "a"]);
    assert!(!quiet.contains("DEBUG"), "{quiet}");
    let first = run(&["-v", "run", "wf.yaml", "--force", "a"]);
    for want in [
        "DEBUG 1 of 1 jobs selected; cache ",
        "DEBUG a: key ",
        "(kind exec v1; inputs: data ",
        "DEBUG a: started with 1 threads and GPUs []; log ",
        "DEBUG a: succeeded in ",
        "DEBUG a: published artifact ",
    ] {
        assert!(first.contains(want), "{want:?} in:\n{first}");
    }
    assert!(!first.contains('\u{1b}'), "colour codes in:\n{first}");
    let log = p.read("results/wf/a.log");
    assert!(log.contains("DEBUG job a (kind exec): output "), "{log}");
    assert!(log.contains("DEBUG input data: "), "{log}");
    let again = run(&["-v", "run", "wf.yaml"]);
    assert!(again.contains("DEBUG a: cached, artifact "), "{again}");
    let traced = run(&["-vv", "run", "wf.yaml"]);
    assert!(
        traced.contains("TRACE") && traced.contains("data.txt: unchanged since it was hashed"),
        "{traced}"
    );
}

#[test]
fn stage_runs_one_kind_outside_a_workflow_and_is_cached() {
    let p = Project::new();
    p.write("genes.txt", "b\na\nc\n");
    let args = [
        "stage",
        "exec",
        "--input",
        "src=genes.txt",
        "--set",
        "argv=[sh, -c, 'sort $FLORA_IN_src > $FLORA_OUT/sorted.txt']",
        "--out",
        "sorted",
    ];
    let out = p.ok(&args);
    assert!(out.starts_with("ran exec -> sorted"), "{out}");
    assert_eq!(p.read("sorted/sorted.txt"), "a\nb\nc\n");
    std::fs::remove_dir_all(p.path("sorted")).unwrap();
    let out = p.ok(&args);
    assert!(out.starts_with("cached exec -> sorted"), "{out}");
    // The copy is the user's: writable.
    std::fs::write(p.path("sorted/sorted.txt"), "mine").unwrap();

    let err = p.fails(&args, 2);
    assert!(err.contains("exists and is not empty"), "{err}");
    let err = p.fails(&["stage", "nokind", "--out", "x"], 2);
    assert!(err.contains("unknown stage kind `nokind`"), "{err}");
    let err = p.fails(&["stage", "exec", "--set", "argvv=1", "--out", "y"], 2);
    assert!(err.contains("unknown param `argvv`"), "{err}");
    let err = p.fails(
        &[
            "stage",
            "exec",
            "--input",
            "src=missing.txt",
            "--set",
            "argv=[true]",
            "--out",
            "y",
        ],
        2,
    );
    assert!(err.contains("no such file or folder: missing.txt"), "{err}");
    let err = p.fails(&["stage", "exec", "--set", "argv=[false]", "--out", "z"], 1);
    assert!(
        err.contains("stage exec failed: exited with status 1"),
        "{err}"
    );
    let list = p.ok(&["stage", "--list"]);
    assert!(list.contains("exec"), "{list}");
}

#[test]
fn help_has_examples() {
    let p = Project::new();
    let help = p.ok(&["--help"]);
    assert!(help.contains("Examples:"), "{help}");
    for cmd in ["run", "plan", "dag", "show", "log", "stage", "cache"] {
        assert!(help.contains(cmd), "{cmd} in:\n{help}");
    }
    let run = p.ok(&["run", "--help"]);
    assert!(run.contains("flora run workflows/demo.yaml"), "{run}");
    assert!(!help.contains("__job"), "the job subcommand is hidden");
}

/// Splits a shell line into words, honouring single and double quotes (enough for examples).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut open) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => (quote, open) = (Some(c), true),
            (None, c) if c.is_whitespace() => {
                if open || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                open = false;
            }
            (None, c) => word.push(c),
        }
    }
    if open || !word.is_empty() {
        words.push(word);
    }
    words
}

/// Every example in the README and in `--help` that works on the demo workflow names stages,
/// jobs, params and vars the demo has: each one's `--set`, `--until` and `--force` (and the
/// stage or job of `show` and `log`) is planned against `workflows/demo.yaml`.
#[test]
fn examples_for_the_demo_name_what_it_has() {
    let p = Project::new();
    let readme = include_str!("../README.md");
    let mut lines: Vec<String> = readme.lines().map(str::to_string).collect();
    for cmd in ["run", "plan", "dag", "show", "log", "check", "cache"] {
        lines.extend(p.ok(&[cmd, "--help"]).lines().map(str::to_string));
    }
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/demo.yaml");
    let mut checked = 0;
    for line in &lines {
        let line = line.trim().trim_start_matches('`');
        if !line.starts_with("flora ") || !line.contains("workflows/demo.yaml") {
            continue;
        }
        let words = shell_words(line.split(" |").next().unwrap().split(" #").next().unwrap());
        let mut args = vec!["plan".to_string(), demo.to_string(), "--cache".into()];
        args.push(p.path("cache").to_string_lossy().into_owned());
        match words[1].as_str() {
            "show" | "log" => args.extend(["--until".into(), words[3].clone()]),
            "run" | "plan" | "check" => {
                for pair in words.windows(2) {
                    if ["--set", "--until", "--force"].contains(&pair[0].as_str()) {
                        args.extend(pair.iter().cloned());
                    }
                }
            }
            _ => continue,
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = p.output(&args);
        assert!(
            out.status.success(),
            "the example `{line}` does not fit the demo:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} examples found");
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    let p = Project::new();
    let stages: String = (0..3000)
        .map(|i| format!("  s{i}: {{kind: exec, params: {{argv: [x]}}}}\n"))
        .collect();
    p.write("wf.yaml", &format!("stages:\n{stages}"));
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("flora"))
        .current_dir(p.root())
        .args(["plan", "wf.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close the pipe, as `flora plan wf.yaml | head -1` does.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// A file that a stage reads without declaring it (a script in `argv`, a local `download`
/// path) is not hashed, so changing it re-runs nothing: `plan` and `run` say so, once per
/// stage and file; a declared one is not warned about.
#[test]
fn files_a_stage_reads_without_declaring_them_are_warned_about() {
    let p = Project::new();
    p.write("fit.sh", "echo fit > $FLORA_OUT/fit\n");
    p.write("scripts/count.awk", "{ n++ } END { print n }\n");
    p.write("genome.fa", ">chr1\nACGT\n");
    p.write(
        "wf.yaml",
        r#"
vars:
  items: [a, b]
stages:
  fit: {kind: exec, foreach: "${vars.items}", params: {argv: [sh, fit.sh]}}
  count: {kind: exec, params: {argv: [sh, -c, "awk -f scripts/count.awk fit.sh > $FLORA_OUT/n"]}}
  declared: {kind: exec, inputs: {script: fit.sh}, params: {argv: [sh, fit.sh]}}
  genome: {kind: download, params: {fasta: genome.fa, gff: "file://genes.gff3"}}
  tpm: {kind: expression, params: {url: tpm.tsv}}
  remote: {kind: expression, params: {url: "https://example.org/tpm.tsv"}}
"#,
    );
    let warned = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("warning: "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let plan = p.output(&["plan", "wf.yaml"]);
    assert!(plan.status.success());
    let lines = warned(&plan);
    let root = p.root().canonicalize().unwrap();
    let expected = [
        format!(
            "warning: stage `fit`: its argv names {}/fit.sh, a file that is not one of its inputs",
            root.display()
        ),
        format!(
            "warning: stage `count`: its argv names {}/scripts/count.awk, a file",
            root.display()
        ),
        format!(
            "warning: stage `count`: its argv names {}/fit.sh, a file",
            root.display()
        ),
        format!(
            "warning: stage `genome`: param `fasta` reads {}/genome.fa, a file",
            root.display()
        ),
        format!(
            "warning: stage `genome`: param `gff` reads {}/genes.gff3, a file",
            root.display()
        ),
        format!(
            "warning: stage `tpm`: param `url` reads {}/tpm.tsv, a file",
            root.display()
        ),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, start) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(start.as_str()),
            "{line}\nexpected: {start}"
        );
    }
    assert!(lines[0].ends_with("changing it will not re-run the stage (declare it as an input)"));
    let run = p.output(&["run", "wf.yaml", "--until", "count"]);
    assert_eq!(warned(&run), lines);
    // `flora stage` too, where `--input` declares.
    let stage = |more: &[&str]| {
        let mut args = vec!["stage", "exec", "--set", "argv=[sh, fit.sh]"];
        args.extend_from_slice(more);
        let out = p.output(&args);
        assert!(out.status.success(), "{out:?}");
        warned(&out)
    };
    assert_eq!(
        stage(&["--out", "o1"]),
        [format!(
            "warning: stage `exec`: its argv names {}/fit.sh, a file that is not one of its \
             inputs: changing it will not re-run the stage (declare it as an input)",
            root.display()
        )]
    );
    assert!(stage(&["--input", "s=fit.sh", "--out", "o2"]).is_empty());
}

/// GPUs a stage asks for but would leave idle are named before anything runs, with what would
/// use them; a stage that can use all it asks for gets no warning, nor does an `exec` stage.
#[test]
fn gpus_a_stage_would_leave_idle_are_warned_about_before_anything_runs() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        r#"
stages:
  prep: {kind: exec, resources: {gpus: 2}, params: {argv: [sh, -c, "echo x > $FLORA_OUT/x"]}}
  bpe: {kind: bpe, inputs: {corpus: prep}, resources: {gpus: 1}}
  pre:
    kind: pretrain
    inputs: {corpus: prep, tokenizer: bpe}
    params: {batch_size: 64}
    resources: {gpus: 4}
  spread:
    kind: pretrain
    inputs: {corpus: prep, tokenizer: bpe}
    params: {batch_size: 16, grad_accum: 4}
    resources: {gpus: 4}
  tune:
    kind: finetune
    inputs: {model: pre, table: prep}
    resources: {gpus: 2}
  imp:
    kind: importance
    inputs: {model: tune, promoters: prep}
    resources: {gpus: 2}
"#,
    );
    let out = p.output(&["plan", "wf.yaml"]);
    assert!(out.status.success());
    let warnings: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .map(str::to_string)
        .collect();
    assert_eq!(
        warnings,
        [
            "warning: stage `bpe` asks for 1 GPU, but it runs on the CPU: the GPU would stay idle",
            "warning: stage `pre` asks for 4 GPUs, but a step has 1 micro-batch (grad_accum), one \
             to a GPU: 3 would stay idle (`grad_accum: 4` with `batch_size: 16` would use every \
             GPU for 64 sequences a step; now 64)",
            "warning: stage `tune` asks for 2 GPUs, but a step has 1 micro-batch (grad_accum), \
             one to a GPU: 1 would stay idle (`grad_accum: 2` with `batch_size: 8` would use \
             every GPU for 16 sequences a step; now 16)",
            "warning: stage `imp` asks for 2 GPUs, but it runs on one: 1 would stay idle",
        ]
    );
    // `flora stage` gives its job every GPU named, and says the same.
    let out = p.output(&[
        "stage",
        "pretrain",
        "--gpus",
        "0,1",
        "--input",
        "corpus=wf.yaml",
        "--out",
        "o",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "warning: stage `pretrain` asks for 2 GPUs, but a step has 1 micro-batch (grad_accum)"
        ),
        "{stderr}"
    );
}
