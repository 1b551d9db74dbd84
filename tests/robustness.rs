//! Crashes and concurrency: a killed run leaves nothing half-written, and two runs share a cache.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{state_of, Project};

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (as [`wait_for`]) until `child` has ended.
fn wait_to_end(what: &str, child: &mut std::process::Child) {
    wait_for(&format!("{what} to end"), || {
        child.try_wait().unwrap().is_some()
    });
}

/// A one-job workflow that ends at once.
const QUICK: &str =
    "stages:\n  quick: {kind: exec, params: {argv: [sh, -c, \"echo q > $FLORA_OUT/x\"]}}\n";

/// Starts flora with SIGHUP at its default, as from a terminal: a test run in the background
/// under `nohup` would otherwise hand it SIGHUP ignored, which flora keeps ignoring.
fn spawn_flora(p: &Project, args: &[&str]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("flora"));
    cmd.current_dir(p.root())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec, `signal` is async-signal-safe and touches no memory.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// Whether process `pid` is gone (or a zombie no one has reaped yet).
fn process_ended(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.contains(") Z "))
        .unwrap_or(true)
}

fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(files_in(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The pids of live `flora __reaper` processes started from `root` (their working folder).
fn reapers_of(root: &std::path::Path) -> Vec<String> {
    let root = root.canonicalize().unwrap();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let reaper = cmdline.split(|&b| b == 0).any(|arg| arg == b"__reaper");
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            (reaper && cwd == root && !process_ended(&pid)).then_some(pid)
        })
        .collect()
}

/// On a cluster node an `exec` job runs under `flora __job`, which passes a stop signal (here
/// SIGTERM, as `scancel` sends) on to its program's process group, so to what the program started,
/// and ends as the program ended.
#[test]
fn a_job_process_passes_a_stop_signal_on_to_its_program() {
    let p = Project::new();
    let root = p.root().canonicalize().unwrap();
    let script = "trap 'echo TERM > ../stopped; exit 143' TERM; sleep 60 & echo $! > ../started.tmp; mv ../started.tmp ../started; wait";
    let spec = serde_json::json!({
        "job": "x",
        "kind": "exec",
        "params": {"argv": ["sh", "-c", script]},
        "context": {
            "inputs": {},
            "out": root.join("out"),
            "work": root.join("work"),
            "workdir": root.join("work"),
            "threads": 1,
            "gpus": [],
        },
    });
    p.write("x.job.json", &spec.to_string());
    let mut child = spawn_flora(&p, &["__job", "x.job.json"]);
    wait_for("the program to start", || p.path("started").exists());
    let sleeper = p.read("started").trim().to_string();
    send(&child, "TERM");
    wait_to_end("the job process", &mut child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{out:?}");
    assert_eq!(p.read("stopped"), "TERM\n");
    wait_for("the program's child to end", || process_ended(&sleeper));
}

/// A local run with `exec` jobs has one reaper while it runs, and none once it has ended.
#[test]
fn a_runs_reaper_ends_with_the_run() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  wait: {kind: exec, params: {argv: [sh, -c, \"touch $FLORA_WORK/../../../started; while [ ! -e $FLORA_WORK/../../../go ]; do sleep 0.05; done; echo x > $FLORA_OUT/x\"]}}\n",
    );
    let mut child = spawn_flora(&p, &["run", "wf.yaml"]);
    wait_for("the job to start", || p.path("started").exists());
    assert_eq!(
        reapers_of(p.root()).len(),
        1,
        "one reaper while the run runs"
    );
    p.write("go", "");
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(
        reapers_of(p.root()),
        Vec::<String>::new(),
        "a reaper outlived its run"
    );
}

#[test]
fn a_run_killed_mid_write_leaves_no_artifact_and_the_rerun_completes() {
    let p = Project::new();
    // The job writes half its output, signals, then waits before writing the rest.
    p.write(
        "wf.yaml",
        r#"
stages:
  slow:
    kind: exec
    params: {argv: [sh, -c, "trap 'echo TERM > $FLORA_WORK/../../../stopped; exit 143' TERM; echo first-half > $FLORA_OUT/data; if [ -z \"$FAST\" ]; then sleep 60 & echo $$ $! > $FLORA_WORK/../../../started.tmp; mv $FLORA_WORK/../../../started.tmp $FLORA_WORK/../../../started; wait; fi; echo second-half >> $FLORA_OUT/data"]}
  after: {kind: exec, inputs: {i: slow}, params: {argv: [sh, -c, "cp $FLORA_IN_i/data $FLORA_OUT/"]}}
"#,
    );
    let mut child = spawn_flora(&p, &["run", "wf.yaml"]);
    let marker = p.path("started");
    wait_for("the job to start writing", || marker.exists());
    // SIGKILL the driver, as a crash or an OOM kill would: its job ends with it (the run's
    // reaper sends SIGTERM to the exec job's process group: the shell and what it started).
    // Before, the shell ended and its `sleep` lived on, orphaned.
    child.kill().unwrap();
    child.wait().unwrap();
    let pids = std::fs::read_to_string(&marker).unwrap();
    let (shell, sleeper) = pids.trim().split_once(' ').unwrap();
    wait_for("the orphaned job to end", || process_ended(shell));
    wait_for("what the orphaned job started to end", || {
        process_ended(sleeper)
    });
    // The reaper that stopped it has ended too.
    wait_for("the reaper to end", || reapers_of(p.root()).is_empty());
    // Stopped by the reaper's SIGTERM, not by the SIGKILL that follows it 10 s later.
    assert_eq!(p.read("stopped"), "TERM\n");

    let artifacts = files_in(&p.path("cache/artifacts"));
    assert!(artifacts.is_empty(), "a killed job published {artifacts:?}");

    // Re-run (fast this time): completes, with the whole output.
    std::fs::remove_file(&marker).unwrap();
    p.write(
        "wf.yaml",
        &p.read("wf.yaml")
            .replace("if [ -z \\\"$FAST\\\" ]", "if false"),
    );
    let out = p.ok(&["run", "wf.yaml"]);
    assert_eq!(state_of(&out, "slow"), "ran");
    assert_eq!(p.read("results/wf/after/data"), "first-half\nsecond-half\n");
    assert!(
        files_in(&p.path("cache/scratch")).is_empty(),
        "scratch is cleaned"
    );
    let verify = p.ok(&["cache", "verify"]);
    assert!(verify.contains("0 damaged"), "{verify}");
}

/// A job process asks for the parent-death signal itself, after it started. Should its driver
/// die before that (so that the job process has a new parent already), it ends at once, as the
/// signal would have ended it, instead of running orphaned.
#[test]
fn a_job_process_whose_driver_is_gone_ends_at_once() {
    use std::os::unix::process::ExitStatusExt;
    let p = Project::new();
    // Its parent is this test, not process 1: as if the driver had died and it was re-parented.
    let orphan = p
        .flora(&["__job", "missing.json", "--driver", "1"])
        .output()
        .unwrap();
    assert_eq!(
        orphan.status.signal(),
        Some(libc::SIGTERM),
        "{:?}: {}",
        orphan.status,
        String::from_utf8_lossy(&orphan.stderr)
    );
    // With its real parent named it goes on (and fails on the missing spec, by name).
    let parent = std::process::id().to_string();
    let stderr = p.fails(&["__job", "missing.json", "--driver", &parent], 2);
    assert!(stderr.contains("cannot read the job spec"), "{stderr}");
}

/// Ctrl-C (SIGINT) or SIGTERM (`timeout`, a cluster ending the driver's allocation) stops the
/// running jobs, everything they started included, starts no more, publishes nothing and keeps
/// the work folder; flora exits with 130. Before, SIGTERM ended flora alone and left its job
/// running, orphaned, writing into the cache.
#[test]
fn an_interrupted_run_stops_its_jobs_and_starts_no_more() {
    for signal in ["INT", "TERM", "HUP"] {
        let p = Project::new();
        p.write(
            "wf.yaml",
            r#"
stages:
  slow:
    kind: exec
    params: {argv: [sh, -c, "echo part > $FLORA_OUT/data; echo ckpt > $FLORA_WORK/ckpt; sleep 60 & echo $! > $FLORA_WORK/../../../started.tmp; mv $FLORA_WORK/../../../started.tmp $FLORA_WORK/../../../started; wait"]}
  other: {kind: exec, params: {argv: [sh, -c, "echo o > $FLORA_OUT/x"]}}
"#,
        );
        let mut child = spawn_flora(&p, &["run", "wf.yaml", "--jobs", "1"]);
        let marker = p.path("started");
        wait_for("the job to start", || marker.exists());
        let sleeper = std::fs::read_to_string(&marker).unwrap().trim().to_string();
        send(&child, signal);
        wait_to_end("flora", &mut child);
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(
            out.status.code(),
            Some(130),
            "SIG{signal}: {stdout}\n{stderr}"
        );
        assert!(
            stderr.contains("interrupted: stopping 1 running job(s)")
                && stderr.contains("job slow failed: interrupted (killed by signal 15)")
                && stderr.contains("flora: interrupted: 1 running job(s) stopped"),
            "SIG{signal}: {stderr}"
        );
        assert!(
            stdout.contains("not run") && stdout.contains("(the run was interrupted)"),
            "SIG{signal}: {stdout}"
        );
        // The job's own child (a grandchild of flora) was stopped with it.
        wait_for("the job's child to end", || process_ended(&sleeper));
        assert!(files_in(&p.path("cache/artifacts")).is_empty());
        assert!(files_in(&p.path("cache/scratch")).is_empty());
        let work: Vec<_> = files_in(&p.path("cache/work"));
        assert!(
            work.iter().any(|f| f.ends_with("ckpt")),
            "SIG{signal}: the work folder stays for the next run: {work:?}"
        );
    }
    // `flora stage` stops its job the same way.
    let p = Project::new();
    let mut child = spawn_flora(
        &p,
        &[
            "stage",
            "exec",
            "--set",
            "argv=[sh, -c, 'sleep 60 & touch $FLORA_WORK/../../../started; wait']",
            "--out",
            "out",
        ],
    );
    wait_for("the stage to start", || p.path("started").exists());
    send(&child, "TERM");
    wait_to_end("flora stage", &mut child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("error: stage exec stopped: interrupted")
            && stderr.contains("flora: interrupted: 1 running job(s) stopped"),
        "{stderr}"
    );
    assert!(!p.path("out").exists());
}

/// Under `nohup` (SIGHUP ignored from the start) a lost terminal does not stop the run.
#[test]
fn a_hangup_that_nohup_ignores_does_not_stop_the_run() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  slow: {kind: exec, params: {argv: [sh, -c, \"touch $FLORA_WORK/../../../started; sleep 1; echo done > $FLORA_OUT/x\"]}}\n",
    );
    let flora = assert_cmd::cargo::cargo_bin("flora");
    let child = Command::new("sh")
        .current_dir(p.root())
        .args([
            "-c",
            &format!("trap '' HUP; exec '{}' run wf.yaml", flora.display()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the job to start", || p.path("started").exists());
    send(&child, "HUP");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.read("results/wf/slow/x"), "done\n");
}

/// Sends `signal` (`INT`, `TERM`, `HUP`) to `child`, as `kill` does.
fn send(child: &std::process::Child, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// A run waiting for another flora's cache ends at the first signal (SIGTERM here: a shell that
/// starts the tests in the background hands them SIGINT ignored, which Ctrl-C cannot reach
/// anyway).
#[test]
fn a_signal_ends_a_wait_for_the_cache() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  hold: {kind: exec, params: {argv: [sh, -c, \"touch $FLORA_WORK/../../../holding; sleep 30\"]}}\n",
    );
    p.write("other.yaml", QUICK);
    let mut first = spawn_flora(&p, &["run", "wf.yaml"]);
    wait_for("the first run to hold the cache", || {
        p.path("holding").exists()
    });
    let mut second = spawn_flora(&p, &["run", "other.yaml"]);
    std::thread::sleep(Duration::from_millis(300));
    send(&second, "TERM");
    wait_to_end("the waiting run", &mut second);
    assert!(!second.wait().unwrap().success());
    assert!(!p.path("results/other").exists());
    send(&first, "INT");
    wait_to_end("the first run", &mut first);
    assert_eq!(first.wait().unwrap().code(), Some(130));
}

#[test]
fn a_second_run_on_the_same_cache_waits_or_fails_with_no_wait() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        r#"
stages:
  hold: {kind: exec, params: {argv: [sh, -c, "touch $FLORA_WORK/../../../holding; sleep 2; echo done > $FLORA_OUT/x"]}}
"#,
    );
    p.write("other.yaml", QUICK);
    let mut first = spawn_flora(&p, &["run", "wf.yaml"]);
    wait_for("the first run to hold the cache", || {
        p.path("holding").exists()
    });

    let busy = p.fails(&["run", "other.yaml", "--no-wait"], 2);
    assert!(busy.contains("in use by another flora (pid"), "{busy}");

    let second = p.output(&["run", "other.yaml"]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert!(err.contains("waiting for the cache"), "{err}");
    assert!(first.wait().unwrap().success());
    assert_eq!(p.read("results/wf/hold/x"), "done\n");
    assert_eq!(p.read("results/other/quick/x"), "q\n");
    let verify = p.ok(&["cache", "verify"]);
    assert!(
        verify.contains("2 artifacts checked, 0 damaged"),
        "{verify}"
    );
}

#[test]
fn a_crashed_job_keeps_its_work_folder_for_the_retry() {
    let p = Project::new();
    // First attempt writes a checkpoint and fails; the retry finds the checkpoint.
    p.write(
        "wf.yaml",
        r#"
stages:
  train:
    kind: exec
    params: {argv: [sh, -c, "if [ -f $FLORA_WORK/ckpt ]; then echo resumed > $FLORA_OUT/r; else echo 1 > $FLORA_WORK/ckpt; exit 9; fi"]}
"#,
    );
    let out = p.fails(&["run", "wf.yaml"], 1);
    assert!(
        out.contains("job train failed: exited with status 9"),
        "{out}"
    );
    p.ok(&["run", "wf.yaml"]);
    assert_eq!(p.read("results/wf/train/r"), "resumed\n");
    // After success the work folder is gone.
    assert!(files_in(&p.path("cache/work")).is_empty());
}

/// A job whose file input changes while it runs fails and publishes nothing. Its output may have
/// read either content; kept under the key of the content hashed before it started, a later run
/// on that content would take it from the cache. Before, it was kept.
#[test]
fn an_input_changed_while_its_job_ran_fails_the_job_and_is_not_cached() {
    let p = Project::new();
    p.write("data.txt", "old\n");
    // With the `mutate` marker present, the job rewrites its input before reading it (as an
    // editor saving the file mid-run would).
    p.write(
        "wf.yaml",
        "stages:\n  copy: {kind: exec, inputs: {src: data.txt}, params: {argv: [sh, -c, \"if [ -e $FLORA_WORK/../../../mutate ]; then echo new > $FLORA_IN_src; fi; cat $FLORA_IN_src > $FLORA_OUT/copy\"]}}\n",
    );
    p.write("mutate", "");
    let out = p.fails(&["run", "wf.yaml"], 1);
    assert!(
        out.contains("error: job copy failed: input `src` (")
            && out.contains(
                "data.txt) changed while the job ran: its output is not kept; run again to use \
                 the new content"
            ),
        "{out}"
    );
    assert!(files_in(&p.path("cache/artifacts")).is_empty(), "{out}");
    assert!(!p.path("results/wf/copy").exists());

    // The first content again, left alone this time: nothing was kept under its key, so the job
    // runs and copies it.
    std::fs::remove_file(p.path("mutate")).unwrap();
    p.write("data.txt", "old\n");
    let out = p.ok(&["run", "wf.yaml"]);
    assert_eq!(state_of(&out, "copy"), "ran", "{out}");
    assert_eq!(p.read("results/wf/copy/copy"), "old\n");
}

/// While a run holds the cache, `flora log` prints a running job's log so far without waiting
/// for the run, and `--follow` prints it as it grows until the job ends. Notes of running jobs
/// that a killed run left are not taken for running jobs.
#[test]
fn the_log_of_a_running_job_is_read_during_the_run() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "stages:\n  slow: {kind: exec, params: {argv: [sh, -c, \"echo first; touch started; while [ ! -e go ]; do sleep 0.05; done; echo second; echo x > $FLORA_OUT/x\"]}}\n  other: {kind: exec, params: {argv: [sh, -c, \"echo o > $FLORA_OUT/x\"]}}\n",
    );
    let mut run = spawn_flora(&p, &["run", "wf.yaml", "--jobs", "1"]);
    wait_for("the job to start", || p.path("started").exists());
    // --no-wait: without the running job's notes, this would wait for the run (and fail here).
    let out = p.output(&["--no-wait", "log", "wf.yaml", "slow"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("--- flora") && stdout.contains("first\n") && !stdout.contains("second"),
        "{stdout}"
    );
    assert!(
        stderr.contains("flora: slow is running, started "),
        "{stderr}"
    );
    assert!(!stderr.contains("waiting for the cache"), "{stderr}");

    // A job the run has not started: what the run is doing, before waiting (here: failing).
    let out = p.output(&["--no-wait", "log", "wf.yaml", "other"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("the run on this cache is running slow now, not `other`")
            && stderr.contains("in use by another flora"),
        "{stderr}"
    );

    let follow = spawn_flora(&p, &["--no-wait", "log", "wf.yaml", "slow", "--follow"]);
    std::thread::sleep(Duration::from_millis(500));
    p.write("go", "");
    let out = follow.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("first\nsecond\n"), "{stdout}");
    assert!(
        stderr.contains("its log follows until it ends") && stderr.contains("flora: slow ended"),
        "{stderr}"
    );
    wait_to_end("the run", &mut run);
    assert!(run.wait().unwrap().success());

    // After the run: the log from the cache, as always; --follow has nothing to follow.
    let out = p.ok(&["log", "wf.yaml", "slow"]);
    assert!(out.contains("first\nsecond\n"), "{out}");
    let out = p.output(&["log", "wf.yaml", "slow", "-f"]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("flora: `slow` is not running now; the log of its last run:"));
    // A note a killed run left behind, with no run holding the cache, is not believed.
    let a_log = std::fs::read_dir(p.path("cache/logs"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    std::fs::create_dir_all(p.path("cache/running")).unwrap();
    std::fs::write(
        p.path("cache/running/stale.json"),
        format!(
            "{{\"workflow\": {:?}, \"job\": \"slow\", \"log\": {:?}, \"started\": \"2026-01-01T00:00:00Z\"}}",
            std::fs::canonicalize(p.path("wf.yaml")).unwrap(),
            a_log
        ),
    )
    .unwrap();
    let out = p.output(&["log", "wf.yaml", "slow"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("is running"),
        "{stderr}"
    );
}

/// The step after which a training stage stopped on SIGTERM, from its log (`stopped by SIGTERM
/// after step N of M`, or `while validating epoch E (after step N of M)` when the signal came
/// during a validation), and that log.
fn stopped_after(p: &Project, stage: &str) -> (u64, String) {
    let said = format!("{stage}: stopped by SIGTERM ");
    let log = p.logs_containing(&said).concat();
    let step = log
        .split(&said)
        .nth(1)
        .and_then(|t| t.lines().next())
        .and_then(|line| line.split("after step ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stop in the log:\n{log}"));
    (step, log)
}

/// A pretraining stopped by the run (SIGTERM to flora, as Ctrl-C; Slurm's time limit sends the job
/// the same SIGTERM)
/// saves a checkpoint after the step under way instead of losing the steps since its last one,
/// and the next run goes on from that step.
#[test]
fn a_stopped_pretraining_saves_its_checkpoint_and_the_rerun_goes_on_from_it() {
    let p = Project::new();
    p.write_planted_fasta("corpus.fa", 64, 120, 3);
    // Far more steps than the test waits for, and no checkpoint by time.
    let wf = |epochs: usize| {
        format!(
            "name: wf\nstages:\n  tok: {{kind: bpe, inputs: {{corpus: corpus.fa}}, params: {{vocab_size: 300}}}}\n  pre:\n    kind: pretrain\n    inputs: {{corpus: corpus.fa, tokenizer: tok}}\n    params: {{layers: 1, hidden: 16, heads: 2, intermediate: 32, max_len: 48, epochs: {epochs}, batch_size: 16, checkpoint_minutes: 600}}\n"
        )
    };
    p.write("wf.yaml", &wf(100_000));
    let mut child = spawn_flora(&p, &["run", "wf.yaml"]);
    wait_for("pretraining's 20th step", || {
        p.path("cache/logs").is_dir() && !p.logs_containing("pretrain: step 20/").is_empty()
    });
    send(&child, "TERM");
    wait_to_end("the stopped run", &mut child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let (step, log) = stopped_after(&p, "pretrain");
    assert!(step >= 20, "stopped after step {step}, past step 20");
    assert!(log.contains("its checkpoint is in "), "{log}");
    let plan = p.ok(&["plan", "wf.yaml"]);
    assert!(
        plan.contains(&format!(
            "did not finish last time; goes on from its work folder (its checkpoint after step \
             {step})"
        )),
        "{plan}"
    );

    // The same job, run again and stopped again, starts from that step.
    let mut child = spawn_flora(&p, &["run", "wf.yaml"]);
    let resumed = format!("pretrain: resuming from the checkpoint at step {step}\n");
    wait_for("the resumed pretraining", || {
        !p.logs_containing(&resumed).is_empty()
    });
    send(&child, "TERM");
    wait_to_end("the second stopped run", &mut child);
    assert_eq!(child.wait().unwrap().code(), Some(130));
}

/// Fine-tuning stopped by the run saves the step under way too, inside its epoch, and the next
/// run goes on from that step.
#[test]
fn a_stopped_fine_tuning_saves_its_checkpoint_and_the_rerun_goes_on_from_it() {
    let p = Project::new();
    let rows = flora_stages::testing::planted(160, 120, 7);
    let fasta: String = rows
        .iter()
        .map(|r| format!(">{}\n{}\n", r.id, r.seq))
        .collect();
    p.write("corpus.fa", &fasta);
    p.write("table.tsv", &flora_stages::testing::planted_table(&rows));
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  tok: {kind: bpe, inputs: {corpus: corpus.fa}, params: {vocab_size: 300}}\n  pre:\n    kind: pretrain\n    inputs: {corpus: corpus.fa, tokenizer: tok}\n    params: {layers: 1, hidden: 16, heads: 2, intermediate: 32, max_len: 48, epochs: 1, batch_size: 16}\n  ft:\n    kind: finetune\n    inputs: {model: pre, table: table.tsv}\n    params: {epochs: 100000, patience: 0, batch_size: 8, lr: 0.001}\n",
    );
    let mut child = spawn_flora(&p, &["run", "wf.yaml"]);
    wait_for("fine-tuning's third epoch", || {
        p.path("cache/logs").is_dir() && !p.logs_containing("finetune: epoch 3 ").is_empty()
    });
    send(&child, "TERM");
    wait_to_end("the stopped run", &mut child);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let (step, _) = stopped_after(&p, "finetune");
    let mut child = spawn_flora(&p, &["run", "wf.yaml"]);
    let resumed = format!("finetune: resuming from the checkpoint at step {step} (epoch ");
    wait_for("the resumed fine-tuning", || {
        !p.logs_containing(&resumed).is_empty()
    });
    send(&child, "TERM");
    wait_to_end("the second stopped run", &mut child);
    assert_eq!(child.wait().unwrap().code(), Some(130));
}
