//! Scheduling: parallelism, failures, --keep-going, --until, --force, GPUs, logs.

use std::time::Instant;

use crate::util::{state_of, Project};

const DIAMOND_WITH_FAILURE: &str = r#"
stages:
  ok1: {kind: exec, params: {argv: [sh, -c, "echo 1 > $FLORA_OUT/x"]}}
  bad: {kind: exec, inputs: {i: ok1}, params: {argv: [sh, -c, "echo about to fail >&2; exit 3"]}}
  after_bad: {kind: exec, inputs: {i: bad}, params: {argv: [sh, -c, "echo > $FLORA_OUT/x"]}}
  slow_ok: {kind: exec, params: {argv: [sh, -c, "sleep 0.5; echo 2 > $FLORA_OUT/x"]}}
  after_slow: {kind: exec, inputs: {i: slow_ok}, params: {argv: [sh, -c, "cp $FLORA_IN_i/x $FLORA_OUT/x"]}}
"#;

#[test]
fn a_failure_stops_new_jobs_lets_running_ones_finish_and_names_the_log() {
    let p = Project::new();
    p.write("wf.yaml", DIAMOND_WITH_FAILURE);
    let out = p.fails(&["run", "wf.yaml", "--jobs", "2"], 1);
    assert_eq!(state_of(&out, "bad"), "failed", "{out}");
    assert_eq!(state_of(&out, "after_bad"), "not run");
    assert_eq!(
        state_of(&out, "slow_ok"),
        "ran",
        "running jobs finish\n{out}"
    );
    assert_eq!(
        state_of(&out, "after_slow"),
        "not run",
        "nothing new starts\n{out}"
    );
    assert!(
        out.contains("error: job bad failed: exited with status 3"),
        "{out}"
    );
    assert!(
        out.contains("  | about to fail"),
        "the log's tail is shown\n{out}"
    );
    let log_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("log: "))
        .unwrap();
    let log = log_line.trim_start().trim_start_matches("log: ");
    assert!(std::fs::read_to_string(log)
        .unwrap()
        .contains("about to fail"));
    // Nothing of the failed job was published, and `flora log` finds the attempt.
    let shown = p.ok(&["log", "wf.yaml", "bad"]);
    assert!(shown.contains("about to fail"), "{shown}");
}

#[test]
fn keep_going_runs_everything_that_does_not_depend_on_the_failure() {
    let p = Project::new();
    p.write("wf.yaml", DIAMOND_WITH_FAILURE);
    let out = p.fails(&["run", "wf.yaml", "--keep-going", "--jobs", "1"], 1);
    assert_eq!(state_of(&out, "bad"), "failed");
    assert_eq!(state_of(&out, "after_bad"), "not run");
    assert_eq!(state_of(&out, "after_slow"), "ran", "{out}");
    assert!(out.contains("(upstream bad did not finish)"), "{out}");
}

#[test]
fn until_runs_a_stage_and_its_ancestors_only() {
    let p = Project::new();
    p.write("wf.yaml", crate::util::HELLO);
    let out = p.ok(&["run", "wf.yaml", "--until", "hello"]);
    assert_eq!(
        Project::run_states(&out),
        [("hello".to_string(), "ran".to_string())]
    );
    let plan = p.plan(&["wf.yaml"]);
    assert_eq!(plan[0].1, "cached");
    assert_eq!(plan[1].1, "run");
    let err = p.fails(&["run", "wf.yaml", "--until", "nope"], 2);
    assert!(
        err.contains("--until: workflow `wf` has no stage or job `nope`"),
        "{err}"
    );
}

#[test]
fn force_reruns_a_cached_stage() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  t: {kind: exec, params: {argv: [sh, -c, \"date +%s%N > $FLORA_OUT/t\"]}}\n  u: {kind: exec, inputs: {i: t}, params: {argv: [sh, -c, \"cp $FLORA_IN_i/t $FLORA_OUT/\"]}}\n",
    );
    p.ok(&["run", "wf.yaml"]);
    let before = p.read("results/wf/u/t");
    let plan = p.plan(&["wf.yaml", "--force", "t"]);
    assert_eq!(plan[0], ("t".into(), "run".into(), "forced".into()));
    let out = p.ok(&["run", "wf.yaml", "--force", "t"]);
    assert_eq!(state_of(&out, "t"), "ran");
    assert_eq!(state_of(&out, "u"), "ran", "new bytes upstream");
    assert_ne!(p.read("results/wf/u/t"), before);
}

#[test]
fn independent_jobs_run_in_parallel_up_to_jobs() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  s: {kind: exec, foreach: [a, b, c, d], params: {argv: [sh, -c, \"sleep 1; echo ${item} > $FLORA_OUT/x\"]}}\n",
    );
    let t = Instant::now();
    p.ok(&["run", "wf.yaml", "--jobs", "4"]);
    let parallel = t.elapsed().as_secs_f64();
    // Four 1 s jobs take 4 s one after another; in parallel about 1 s (with room for a busy machine).
    assert!(parallel < 3.0, "4 jobs with --jobs 4 took {parallel:.2} s");
    let t = Instant::now();
    p.ok(&["run", "wf.yaml", "--jobs", "1", "--force", "s"]);
    assert!(
        t.elapsed().as_secs_f64() >= 4.0,
        "--jobs 1 runs one at a time"
    );
}

#[test]
fn threads_resource_limits_how_many_jobs_share_the_cpus() {
    let p = Project::new();
    let cpus = std::thread::available_parallelism().unwrap().get();
    p.write(
        "wf.yaml",
        &format!(
            "stages:\n  s: {{kind: exec, foreach: [a, b], resources: {{threads: {cpus}}}, params: {{argv: [sh, -c, \"echo $FLORA_THREADS > $FLORA_OUT/t; echo ${{item}} > $FLORA_OUT/i; sleep 0.5\"]}}}}\n"
        ),
    );
    let t = Instant::now();
    p.ok(&["run", "wf.yaml", "--jobs", "8"]);
    assert!(
        t.elapsed().as_secs_f64() >= 1.0,
        "two jobs that each take every CPU run one after the other"
    );
    assert_eq!(p.read("results/wf/s/a/t").trim(), cpus.to_string());
}

#[test]
fn gpu_stages_get_devices_or_fall_back_to_the_cpu() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  g: {kind: exec, foreach: [a, b], resources: {gpus: 1}, params: {argv: [sh, -c, \"echo dev=$CUDA_VISIBLE_DEVICES > $FLORA_OUT/d\"]}}\n",
    );
    let out = p.output(&["run", "wf.yaml"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: stage `g` asks for 1 GPU(s) but no --gpus was given"),
        "{err}"
    );
    assert_eq!(p.read("results/wf/g/a/d"), "dev=\n");

    let err = p.fails(&["run", "wf.yaml", "--require-gpu", "--force", "g"], 2);
    assert!(err.contains("--require-gpu"), "{err}");

    if cfg!(feature = "cuda") {
        eprintln!("SKIPPED --gpus 3,5: a CUDA build refuses GPUs this machine does not show");
        return;
    }
    p.ok(&["run", "wf.yaml", "--gpus", "3,5", "--force", "g"]);
    let mut got = vec![p.read("results/wf/g/a/d"), p.read("results/wf/g/b/d")];
    got.sort();
    // Two one-GPU jobs share two devices: each gets its own, or they run in turn on one.
    assert!(
        got.iter().all(|d| d == "dev=3\n" || d == "dev=5\n"),
        "{got:?}"
    );
}

/// `--gpus` with a flora built without CUDA is refused before any job runs when one of flora's
/// own GPU stages would get a GPU (it could only fail there, after the jobs before it); exec
/// stages, whose programs use the GPU themselves, still get theirs.
#[test]
fn gpus_for_flora_stages_need_a_cuda_build() {
    if cfg!(feature = "cuda") {
        eprintln!("SKIPPED: this flora is built with CUDA");
        return;
    }
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  prep: {kind: exec, params: {argv: [sh, -c, \"echo x > $FLORA_OUT/x\"]}}\n  pre:\n    kind: pretrain\n    inputs: {corpus: prep, tokenizer: prep}\n    resources: {gpus: 1}\n",
    );
    let e = p.fails(&["run", "wf.yaml", "--gpus", "0"], 2);
    assert!(
        e.contains("stage `pre` would run on GPU 0, but this flora was built without CUDA"),
        "{e}"
    );
    assert!(!p.path("results/wf/prep").exists(), "a job ran: {e}");
    // Without the pretraining stage, the exec stage runs.
    p.ok(&["run", "wf.yaml", "--gpus", "0", "--until", "prep"]);
    assert!(p.path("results/wf/prep/x").is_file());
}

/// A GPU named twice in `--gpus` would be handed to two jobs at once; it is refused before any
/// job runs, as are `--jobs 0` and, in a CUDA build, a GPU this machine does not show.
#[test]
fn gpus_named_twice_and_no_job_slots_are_refused() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  g: {kind: exec, foreach: [a, b], resources: {gpus: 1}, params: {argv: [sh, -c, \"echo $CUDA_VISIBLE_DEVICES > $FLORA_OUT/d\"]}}\n",
    );
    let e = p.fails(&["run", "wf.yaml", "--gpus", "1,0,1"], 2);
    assert!(e.contains("--gpus names GPU 1 twice"), "{e}");
    assert!(!p.path("results/wf/g").exists(), "a job ran: {e}");
    let e = p.fails(&["run", "wf.yaml", "-j", "0"], 2);
    assert!(
        e.contains("invalid value '0' for '--jobs <N>': must be at least 1"),
        "{e}"
    );
    if cfg!(feature = "cuda") {
        let e = p.fails(&["run", "wf.yaml", "--gpus", "999"], 2);
        assert!(e.contains("--gpus: GPU 999: this machine shows"), "{e}");
        assert!(!p.path("results/wf/g").exists(), "a job ran: {e}");
    } else {
        eprintln!("SKIPPED --gpus 999: a build without CUDA cannot count this machine's GPUs");
        p.ok(&["run", "wf.yaml", "--gpus", "1,0"]);
    }
}

#[test]
fn a_missing_program_fails_the_job_clearly() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  x: {kind: exec, params: {argv: [flora-no-such-tool, --help]}}\n",
    );
    let out = p.fails(&["run", "wf.yaml"], 1);
    assert!(
        out.contains("error: job x failed: exec: cannot start `flora-no-such-tool`: No such file"),
        "{out}"
    );
    assert!(!p.path("results/wf/x").exists());
    // The job's log says it too.
    let log = p.ok(&["log", "wf.yaml", "x"]);
    assert!(
        log.contains("error: job x: exec: cannot start `flora-no-such-tool`"),
        "{log}"
    );
}

/// The job process runs an exec job's program as its child and ends as it ended: a crash of the
/// program is the job's, named by its signal; and the program starts with no signal blocked.
#[test]
fn a_program_killed_by_a_signal_fails_its_job_with_that_signal() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  crash: {kind: exec, params: {argv: [sh, -c, \"grep SigBlk /proc/self/status; kill -SEGV $$\"]}}\n",
    );
    let out = p.fails(&["run", "wf.yaml"], 1);
    assert!(
        out.contains("error: job crash failed: killed by signal 11"),
        "{out}"
    );
    assert!(
        out.contains("| SigBlk:\t0000000000000000"),
        "the program starts with no signal blocked\n{out}"
    );
    assert!(!p.path("results/wf/crash").exists());
}

#[test]
fn exec_jobs_get_the_environment_unchanged() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  env: {kind: exec, params: {argv: [sh, -c, \"env | grep -E '^(MALLOC|OPENBLAS)_' > $FLORA_OUT/m; true\"]}}\n",
    );
    // The program sees the user's own settings (one here; none of the machine's), and no tuning
    // of flora's.
    let mut run = p.flora(&["run", "wf.yaml"]);
    for (name, _) in std::env::vars() {
        if name.starts_with("MALLOC_") || name.starts_with("OPENBLAS_") {
            run.env_remove(name);
        }
    }
    run.env("OPENBLAS_CORETYPE", "Haswell").assert().success();
    assert_eq!(
        p.read("results/wf/env/m"),
        "OPENBLAS_CORETYPE=Haswell\n",
        "malloc and OpenBLAS tuning is for built-in kinds only"
    );
    // Nor does flora size thread pools that the program does not use.
    let log = p.ok(&["log", "wf.yaml", "env"]);
    assert!(!log.contains("CPU threads"), "{log}");
}

#[test]
fn jobs_with_the_same_key_run_once() {
    let p = Project::new();
    // Three fan-out items whose params do not differ: one job, whose (random) output all share.
    p.write(
        "wf.yaml",
        "stages:\n  fan: {kind: exec, foreach: [a, b, c], params: {argv: [sh, -c, \"od -An -N8 -tx8 /dev/urandom > $FLORA_OUT/r\"]}}\n  join: {kind: exec, inputs: {all: fan}, params: {argv: [sh, -c, \"cat $FLORA_IN_all/*/r > $FLORA_OUT/r\"]}}\n",
    );
    let out = p.ok(&["run", "wf.yaml"]);
    let states: Vec<String> = ["fan[a]", "fan[b]", "fan[c]"]
        .iter()
        .map(|j| state_of(&out, j))
        .collect();
    assert_eq!(states.iter().filter(|s| *s == "ran").count(), 1, "{out}");
    assert_eq!(states.iter().filter(|s| *s == "cached").count(), 2, "{out}");
    let r = p.read("results/wf/fan/a/r");
    assert_eq!(p.read("results/wf/fan/b/r"), r);
    assert_eq!(p.read("results/wf/join/r"), r.repeat(3));
    let out = p.ok(&["run", "wf.yaml"]);
    assert!(out.contains("0 ran, 4 cached"), "{out}");
}

/// The "CPU threads" line a built-in job writes at the top of its log: (rayon's pool, candle's,
/// OpenBLAS's).
fn threads_in_log(log: &str) -> (usize, usize, usize) {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("flora: CPU threads: "))
        .unwrap_or_else(|| panic!("no CPU threads line in the log:\n{log}"));
    let parsed = line.strip_suffix(')').and_then(|l| {
        let (rayon, rest) = l.split_once(" (candle: ")?;
        let (candle, blas) = rest.split_once(", OpenBLAS: ")?;
        Some((
            rayon.parse().ok()?,
            candle.parse().ok()?,
            blas.parse().ok()?,
        ))
    });
    parsed.unwrap_or_else(|| panic!("unexpected CPU threads line: {line}"))
}

#[test]
fn built_in_jobs_get_the_threads_they_ask_for() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    if cpus < 2 {
        eprintln!("SKIPPED built_in_jobs_get_the_threads_they_ask_for: one CPU cannot tell 1 thread from all");
        return;
    }
    let p = Project::new();
    p.write_planted_fasta("corpus.fa", 40, 120, 3);
    // Two jobs side by side, one thread each: neither's pools may take every core.
    p.write(
        "wf.yaml",
        r#"
stages:
  one: {kind: bpe, inputs: {corpus: corpus.fa}, params: {vocab_size: 300}, resources: {threads: 1}}
  two: {kind: bpe, inputs: {corpus: corpus.fa}, params: {vocab_size: 301}, resources: {threads: 1}}
  wide: {kind: bpe, inputs: {corpus: corpus.fa}, params: {vocab_size: 302}, resources: {threads: 64}}
"#,
    );
    // The workflow's threads win over the pools' variables in the user's environment.
    let machine = cpus.to_string();
    p.flora(&["run", "wf.yaml", "--jobs", "2"])
        .env("RAYON_NUM_THREADS", &machine)
        .env("CANDLE_NUM_THREADS", &machine)
        .env("OPENBLAS_NUM_THREADS", &machine)
        .assert()
        .success();
    assert_eq!(threads_in_log(&p.ok(&["log", "wf.yaml", "one"])), (1, 1, 1));
    assert_eq!(threads_in_log(&p.ok(&["log", "wf.yaml", "two"])), (1, 1, 1));
    // More than the machine has: the scheduler gives what there is.
    let (pool, candle, blas) = threads_in_log(&p.ok(&["log", "wf.yaml", "wide"]));
    assert_eq!((pool, candle), (cpus, cpus));
    assert!(blas >= 1 && blas <= cpus, "OpenBLAS: {blas} of {cpus}");

    // `flora stage` runs one job, with the machine to itself.
    // `flora stage bpe` with a vocabulary of `vocab` (a job of its own) and `extra` arguments.
    let stage_bpe = |vocab: usize, extra: &[&str]| {
        let set = format!("vocab_size={vocab}");
        let mut args = vec!["stage", "bpe", "--input", "corpus=corpus.fa", "--set", &set];
        args.extend_from_slice(extra);
        let out = p.output(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stderr)
    };
    let (code, stderr) = stage_bpe(303, &["--out", "tok"]);
    assert_eq!(code, Some(0), "{stderr}");
    let logs = p.logs_containing("job bpe (kind bpe");
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(threads_in_log(&logs[0]).0, cpus);
    // Unless `--threads` says fewer.
    let (code, stderr) = stage_bpe(304, &["--threads", "1", "--out", "tok1"]);
    assert_eq!(code, Some(0), "{stderr}");
    let logs = p.logs_containing("job bpe (kind bpe");
    assert_eq!(logs.len(), 2, "{logs:?}");
    let logs: Vec<&String> = logs.iter().filter(|l| l.contains("OpenBLAS: 1)")).collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(threads_in_log(logs[0]), (1, 1, 1));
    let (code, stderr) = stage_bpe(305, &["--threads", "0", "--out", "tok0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--threads"), "{stderr}");
}
