//! `--executor slurm` against a real Slurm: CI starts a one-node cluster (`scripts/slurm.sh`) and
//! sets SLURM_CONF. Where no Slurm answers, the tests that need one say SKIPPED and return. They
//! run one at a time (they share the node, and one takes it down).

use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::util::{state_of, Project};

static NODE: Mutex<()> = Mutex::new(());

/// Holds the Slurm node for one test, or `None` (and a loud skip) where there is no Slurm.
fn slurm(test: &str) -> Option<MutexGuard<'static, ()>> {
    let up = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo")
            .arg("-h")
            .output()
            .is_ok_and(|o| o.status.success());
    if !up {
        eprintln!(
            "SKIPPED {test}: no Slurm here (CI starts one with scripts/slurm.sh and sets SLURM_CONF)"
        );
        return None;
    }
    Some(NODE.lock().unwrap_or_else(|e| e.into_inner()))
}

const SLURM: [&str; 3] = ["--executor", "slurm", "--slurm-poll=0.2"];

fn run_args<'a>(wf: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", wf];
    args.extend(SLURM);
    args.extend_from_slice(more);
    args
}

/// The highest job id Slurm remembers (0 when none): a submission makes a higher one.
fn newest_job_id() -> u64 {
    let out = Command::new("scontrol")
        .args(["show", "jobs", "-o"])
        .output()
        .expect("scontrol");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.strip_prefix("JobId=")?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn seconds(p: &Project, rel: &str) -> f64 {
    p.read(rel).trim().parse().unwrap()
}

#[test]
fn fan_out_jobs_run_as_parallel_slurm_jobs_and_a_rerun_submits_nothing() {
    let Some(_node) = slurm("slurm fan-out") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  fan:\n    kind: exec\n    foreach: [a, b, c]\n    params: {argv: [sh, -c, \"echo ${item} > $FLORA_OUT/item; date +%s.%N > $FLORA_OUT/start; echo $SLURM_JOB_ID > $FLORA_OUT/job; sleep 2; date +%s.%N > $FLORA_OUT/end\"]}\n  join:\n    kind: exec\n    inputs: {all: fan}\n    params: {argv: [sh, -c, \"cat $FLORA_IN_all/*/job > $FLORA_OUT/jobs\"]}\n",
    );
    let before = newest_job_id();
    let out = p.ok(&run_args("wf.yaml", &[]));
    for job in ["fan[a]", "fan[b]", "fan[c]", "join"] {
        assert_eq!(state_of(&out, job), "ran", "{out}");
    }
    // Each fan-out job ran as its own Slurm job, submitted by this run...
    let ids: Vec<u64> = p
        .read("results/wf/join/jobs")
        .lines()
        .map(|l| {
            l.trim()
                .parse()
                .expect("SLURM_JOB_ID in the job's environment")
        })
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|&id| id > before), "{ids:?} after {before}");
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{ids:?}");
    // ... at the same time: the last to start started before the first to end ended.
    let starts: Vec<f64> = ["a", "b", "c"]
        .iter()
        .map(|i| seconds(&p, &format!("results/wf/fan/{i}/start")))
        .collect();
    let ends: Vec<f64> = ["a", "b", "c"]
        .iter()
        .map(|i| seconds(&p, &format!("results/wf/fan/{i}/end")))
        .collect();
    let last_start = starts.iter().cloned().fold(f64::MIN, f64::max);
    let first_end = ends.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "jobs ran one after another: {starts:?} {ends:?}"
    );

    // A re-run finds everything in the cache and submits nothing.
    let newest = newest_job_id();
    let out = p.ok(&run_args("wf.yaml", &[]));
    assert!(out.contains("0 ran, 4 cached"), "{out}");
    assert_eq!(newest_job_id(), newest, "a cached re-run submitted a job");
}

#[test]
fn a_param_edit_submits_only_the_affected_jobs() {
    let Some(_node) = slurm("slurm param edit") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nvars: {word: one}\nstages:\n  a:\n    kind: exec\n    params: {argv: [sh, -c, \"echo ${vars.word} > $FLORA_OUT/w\"]}\n  b:\n    kind: exec\n    params: {argv: [sh, -c, \"echo b > $FLORA_OUT/b\"]}\n  c:\n    kind: exec\n    inputs: {a: a}\n    params: {argv: [sh, -c, \"cat $FLORA_IN_a/w > $FLORA_OUT/w\"]}\n",
    );
    p.ok(&run_args("wf.yaml", &[]));
    let before = newest_job_id();
    let out = p.ok(&run_args("wf.yaml", &["--set", "vars.word=two"]));
    assert_eq!(state_of(&out, "a"), "ran", "{out}");
    assert_eq!(state_of(&out, "b"), "cached", "{out}");
    assert_eq!(state_of(&out, "c"), "ran", "{out}");
    assert_eq!(p.read("results/wf/c/w"), "two\n");
    assert_eq!(
        newest_job_id(),
        before + 2,
        "exactly a and c were submitted"
    );
}

#[test]
fn a_failing_job_reports_slurms_state_and_its_log() {
    let Some(_node) = slurm("slurm failing job") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  bad:\n    kind: exec\n    params: {argv: [sh, -c, \"echo half > $FLORA_OUT/x; echo broken >&2; exit 3\"]}\n  after:\n    kind: exec\n    inputs: {x: bad}\n    params: {argv: [true]}\n",
    );
    let text = p.fails(&run_args("wf.yaml", &[]), 1);
    assert!(
        text.contains("error: job bad failed: Slurm job ")
            && text.contains("ended FAILED (exit code 3:0)"),
        "{text}"
    );
    assert!(text.contains("log: ") && text.contains("broken"), "{text}");
    assert_eq!(state_of(&text, "after"), "not run", "{text}");
    assert!(!p.path("results/wf/bad").exists(), "a failed job published");
}

#[test]
fn a_job_slurm_refuses_fails_with_sbatchs_reason() {
    let Some(_node) = slurm("slurm refusal") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  big:\n    kind: exec\n    resources: {memory: 100T}\n    params: {argv: [true]}\n",
    );
    let text = p.fails(&run_args("wf.yaml", &[]), 1);
    assert!(
        text.contains("job big failed: cannot start: sbatch refused the job: sbatch: error:"),
        "{text}"
    );
}

#[test]
fn gpu_jobs_get_their_devices_from_slurm() {
    let Some(_node) = slurm("slurm GPUs") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  g:\n    kind: exec\n    foreach: [a, b]\n    resources: {gpus: 1, memory: 64M, time: 5m}\n    params: {argv: [sh, -c, \"echo ${item} $CUDA_VISIBLE_DEVICES > $FLORA_OUT/d; date +%s.%N > $FLORA_OUT/start; sleep 1; date +%s.%N > $FLORA_OUT/end\"]}\n",
    );
    p.ok(&run_args("wf.yaml", &[]));
    let devices: Vec<String> = ["a", "b"]
        .iter()
        .map(|i| {
            let d = p.read(&format!("results/wf/g/{i}/d"));
            d.trim().strip_prefix(*i).unwrap().trim().to_string()
        })
        .collect();
    assert!(
        devices.iter().all(|d| d == "0" || d == "1"),
        "CUDA_VISIBLE_DEVICES from Slurm: {devices:?}"
    );
    let overlap = seconds(&p, "results/wf/g/a/start") < seconds(&p, "results/wf/g/b/end")
        && seconds(&p, "results/wf/g/b/start") < seconds(&p, "results/wf/g/a/end");
    if overlap {
        assert_ne!(devices[0], devices[1], "two jobs at once share a GPU");
    }
}

#[test]
fn ctrl_c_cancels_the_runs_slurm_jobs() {
    let Some(_node) = slurm("slurm Ctrl-C") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  fan:\n    kind: exec\n    foreach: [a]\n    resources: {bundle: 3}\n    params: {argv: [sh, -c, \"touch a-ran\"]}\n  long:\n    kind: exec\n    params: {argv: [sleep, \"120\"]}\n  tail:\n    kind: exec\n    params: {argv: [\"true\"]}\n",
    );
    // fan[a] starts first and is held for its bundle; `long` then takes the one Slurm job
    // `--jobs 1` allows, and `tail` waits for it, so the bundle waits for more jobs.
    let mut child = spawn_run(&p, &["--jobs", "1"]);
    let id = wait_for_running("flora:long", Duration::from_secs(30));
    // Its log, read while the run holds the cache.
    let log = p.output(&["--no-wait", "log", "wf.yaml", "long"]);
    let err = String::from_utf8_lossy(&log.stderr);
    assert!(
        err.contains("flora: long was submitted to the cluster ")
            && String::from_utf8_lossy(&log.stdout)
                .contains(&format!("--- submitted as Slurm job {id}")),
        "{err}"
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "flora did not end after Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted: cancelling the run's Slurm jobs")
            && err.contains("flora: interrupted: 1 running job(s) stopped"),
        "{err}"
    );
    assert!(err.contains(&format!("Slurm job {id} cancelled")), "{err}");
    let out = String::from_utf8_lossy(&out.stdout);
    assert_eq!(state_of(&out, "fan[a]"), "not run", "{out}\n{err}");
    assert!(!p.path("a-ran").exists(), "a held job ran after Ctrl-C");
    assert!(
        p.logs_containing("job fan[a] ").is_empty(),
        "a withdrawn job kept a log"
    );
    let state = Command::new("scontrol")
        .args(["show", "job", "-o", &id])
        .output()
        .unwrap();
    let state = String::from_utf8_lossy(&state.stdout);
    assert!(state.contains("JobState=CANCELLED"), "{state}");
}

/// A driver killed outright (SIGKILL, a login node's process reaper) cannot cancel its jobs; the
/// next run on the cache does, and waits for them to leave the queue before it starts its own,
/// which would resume from the same work folders.
#[test]
fn jobs_a_killed_driver_left_running_are_cancelled_by_the_next_run() {
    let Some(_node) = slurm("slurm jobs left behind") else {
        return;
    };
    let p = Project::new();
    p.write("slow", "");
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  long:\n    kind: exec\n    params: {argv: [sh, -c, \"if [ -e slow ]; then touch sleeping; sleep 120; fi; echo done > $FLORA_OUT/x\"]}\n",
    );
    let mut child = spawn_run(&p, &[]);
    let id = wait_for_running("flora:long", Duration::from_secs(30));
    let state = || {
        let out = Command::new("scontrol")
            .args(["show", "job", "-o", &id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // What Slurm says of the job, and its log, for a failure's message.
    let diagnose = || {
        let now = state();
        let path = now
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("StdOut="))
            .unwrap_or_default()
            .to_string();
        let log = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("{path}: {e}"));
        format!("{now}\n{log}\n{}", all_jobs())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.path("sleeping").exists() {
        assert!(
            Instant::now() < deadline,
            "the job never started sleeping:\n{}",
            diagnose()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    let first = child.wait_with_output().unwrap();
    assert!(
        state().contains("JobState=RUNNING"),
        "{}\nthe killed driver's stderr:\n{}",
        diagnose(),
        String::from_utf8_lossy(&first.stderr)
    );

    std::fs::remove_file(p.path("slow")).unwrap();
    let out = p.output(&run_args("wf.yaml", &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "flora: cancelling 1 Slurm job(s) that an earlier run on this cache left running \
             (its driver ended without cancelling them): {id}"
        )),
        "{err}"
    );
    assert!(state().contains("JobState=CANCELLED"), "{}", state());
    assert_eq!(p.read("results/wf/long/x"), "done\n");
    // Nothing is left behind the second time.
    let out = p.output(&run_args("wf.yaml", &[]));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("cancelling"));
}

#[test]
fn a_job_lost_to_a_node_failure_is_submitted_again() {
    let Some(_node) = slurm("slurm node failure") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  slow:\n    kind: exec\n    params: {argv: [sh, -c, \"echo part > $FLORA_OUT/partial-$SLURM_JOB_ID; sleep 3; echo done > $FLORA_OUT/done\"]}\n",
    );
    // Without Slurm's own requeue, so that the node failure reaches flora.
    let child = spawn_run(&p, &["--slurm-arg=--no-requeue"]);
    let first = wait_for_running("flora:slow", Duration::from_secs(30));
    fail_the_node_and_bring_it_back();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "Slurm job {first} of slow ended NODE_FAIL; submitting it again (attempt 2 of 3)"
        )),
        "{err}"
    );
    // The second attempt started from an empty output folder.
    let names: Vec<String> = std::fs::read_dir(p.path("results/wf/slow"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"done".to_string()));
    assert!(!names.contains(&format!("partial-{first}")), "{names:?}");
}

/// A job that Slurm itself runs again (a requeue: Slurm's default after a node failure, where
/// the job is submitted with `--requeue` or the cluster requeues by default) starts from an
/// empty output folder: what the first attempt wrote there is not published.
#[test]
fn a_job_slurm_requeues_starts_from_an_empty_output_folder() {
    let Some(_node) = slurm("slurm requeue") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  slow:\n    kind: exec\n    params: {argv: [sh, -c, \"n=$SLURM_RESTART_COUNT; [ -n \\\"$n\\\" ] || n=0; echo part > $FLORA_OUT/partial-$n; if [ $n = 0 ]; then touch started; sleep 60; fi; echo done > $FLORA_OUT/done\"]}\n",
    );
    let child = spawn_run(&p, &["--slurm-arg=--requeue"]);
    let id = wait_for_running("flora:slow", Duration::from_secs(30));
    wait_for_file(&p, "started");
    let scontrol = |args: &[&str]| {
        let done = Command::new("scontrol").args(args).status().unwrap();
        assert!(done.success(), "scontrol {args:?}");
    };
    scontrol(&["requeue", &id]);
    // A requeued job waits about two minutes before it may start again; once it is pending
    // again, not this one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = Command::new("squeue")
            .args(["-h", "-j", &id, "-o", "%T"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&state.stdout).trim() == "PENDING" {
            break;
        }
        assert!(Instant::now() < deadline, "job {id} is not pending again");
        std::thread::sleep(Duration::from_millis(200));
    }
    scontrol(&["update", &format!("JobId={id}"), "StartTime=now"]);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let mut names: Vec<String> = std::fs::read_dir(p.path("results/wf/slow"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["done", "partial-1"],
        "the first attempt's file was kept"
    );
    let log = p.ok(&["log", "wf.yaml", "slow"]);
    assert!(
        log.contains("removed what an earlier attempt of this job left in its output folder"),
        "{log}"
    );
}

/// A job lost to a node failure after it saved its work goes on from there, without using one
/// of `--slurm-retries` (none here).
#[test]
fn a_job_lost_after_saving_its_work_goes_on_from_it() {
    let Some(_node) = slurm("slurm node failure after a checkpoint") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  saves:\n    kind: exec\n    params: {argv: [sh, -c, \"if [ -f $FLORA_WORK/checkpoint ]; then echo went on > $FLORA_OUT/x; else echo step 1 > $FLORA_WORK/checkpoint; touch saved; sleep 60; fi\"]}\n",
    );
    let child = spawn_run(&p, &["--slurm-arg=--no-requeue", "--slurm-retries", "0"]);
    let first = wait_for_running("flora:saves", Duration::from_secs(30));
    wait_for_file(&p, "saved");
    fail_the_node_and_bring_it_back();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "Slurm job {first} of saves ended NODE_FAIL; submitting it again to go on from its work folder (continuation 1 of at most 10)"
        )),
        "{err}"
    );
    assert_eq!(p.read("results/wf/saves/x"), "went on\n");
}

/// A job's end is seen by its end marker between two `squeue` polls: in a two-job chain with a
/// 20 s poll, the second starts seconds after the first ended (Slurm's own start), not at the
/// next poll, and squeue is asked at most twice (the run's start, its first poll).
#[test]
fn a_jobs_end_is_seen_by_its_marker_before_the_next_poll() {
    let Some(_node) = slurm("slurm end markers") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  a: {kind: exec, params: {argv: [sh, -c, \"echo a > $FLORA_OUT/x; date +%s.%N > $FLORA_OUT/end\"]}}\n  b: {kind: exec, inputs: {x: a}, params: {argv: [sh, -c, \"date +%s.%N > $FLORA_OUT/start; cat $FLORA_IN_x/x > $FLORA_OUT/x\"]}}\n",
    );
    // A squeue that counts its calls.
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v squeue"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let calls = p.path("squeue-calls");
    p.write(
        "bin/squeue",
        &format!(
            "#!/bin/sh\necho called >> '{}'\nexec '{}' \"$@\"\n",
            calls.display(),
            real.trim()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p.path("bin/squeue"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        p.path("bin").display(),
        std::env::var("PATH").unwrap()
    );
    let out = p
        .flora(&["run", "wf.yaml", "--executor", "slurm", "--slurm-poll=20"])
        .env("PATH", path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(p.read("results/wf/b/x").trim(), "a");
    let gap = seconds(&p, "results/wf/b/start") - seconds(&p, "results/wf/a/end");
    assert!(gap < 12.0, "b started {gap:.1} s after a ended: at a poll?");
    let asked = p.read("squeue-calls").lines().count();
    assert!(asked <= 2, "squeue asked {asked} times:\n{text}");
}

/// A fan-out whose `bundle: 2` runs its five jobs as three Slurm jobs (two, two and one), each
/// job with its own log and end, also when `--jobs` allows one Slurm job at a time; a re-run
/// submits nothing.
#[test]
fn a_bundled_fan_out_runs_its_jobs_in_turn_in_fewer_slurm_jobs() {
    let Some(_node) = slurm("slurm bundles") else {
        return;
    };
    let p = Project::new();
    let wf = |fail: &str| {
        format!(
            "name: wf\nstages:\n  fan:\n    kind: exec\n    foreach: [a, b, c, d, e]\n    resources: {{bundle: 2}}\n    params: {{argv: [sh, -c, \"echo $SLURM_JOB_ID > $FLORA_OUT/job; echo log-of-${{item}}; [ ${{item}} != a ] || sleep 1; [ ${{item}} != {fail} ] || exit 3\"]}}\n  join:\n    kind: exec\n    inputs: {{all: fan}}\n    params: {{argv: [sh, -c, \"cat $FLORA_IN_all/*/job > $FLORA_OUT/jobs\"]}}\n"
        )
    };
    p.write("wf.yaml", &wf("none"));
    // `--jobs 1`: one Slurm job at a time, each a full bundle while there are jobs to fill it.
    let out = p.ok(&run_args("wf.yaml", &["--jobs", "1"]));
    for job in ["fan[a]", "fan[b]", "fan[c]", "fan[d]", "fan[e]", "join"] {
        assert_eq!(state_of(&out, job), "ran", "{out}");
    }
    let ids: Vec<String> = p
        .read("results/wf/join/jobs")
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(ids[0], ids[1], "a and b share a Slurm job: {ids:?}");
    assert_eq!(ids[2], ids[3], "c and d share a Slurm job: {ids:?}");
    assert!(
        ids[1] != ids[2] && ids[3] != ids[4] && ids[1] != ids[4],
        "three Slurm jobs: {ids:?}"
    );
    // Each job's output went to its own log; a bundle's empty Slurm output is gone.
    let log = p.output(&["log", "wf.yaml", "fan[d]"]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains("log-of-d")
            && !log.contains("log-of-c")
            && log.contains(&format!(
                "--- submitted as Slurm job {}, a bundle of 2 jobs",
                ids[3]
            )),
        "{log}"
    );
    // A job's time is its own, on the node: fan[b] ran after fan[a] slept 1 s in its bundle.
    let duration = |job: &str| -> f64 {
        let shown = p.ok(&["show", "wf.yaml", job]);
        let line = shown.lines().find(|l| l.starts_with("duration:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert!(duration("fan[a]") >= 1.0, "fan[a] slept 1 s");
    assert!(duration("fan[b]") < 0.9, "fan[b]'s time counts fan[a]'s");
    let logs: Vec<_> = std::fs::read_dir(p.path("cache/logs")).unwrap().collect();
    assert!(
        logs.iter().all(|e| !e
            .as_ref()
            .unwrap()
            .path()
            .to_string_lossy()
            .ends_with(".bundle.log")),
        "a bundle's empty Slurm output was kept"
    );

    let before = newest_job_id();
    let again = p.ok(&run_args("wf.yaml", &[]));
    assert_eq!(state_of(&again, "fan[c]"), "cached", "{again}");
    assert_eq!(newest_job_id(), before, "a cached re-run submitted a job");

    // A failing job fails alone: the job after it in its bundle still runs.
    p.write("wf.yaml", &wf("c"));
    let text = p.fails(&run_args("wf.yaml", &["--keep-going"]), 1);
    assert!(
        text.contains("job fan[c] failed: exited with status 3 (in Slurm job ")
            && text.contains(", a bundle of 2 jobs)")
            && text.contains("log-of-c"),
        "{text}"
    );
    for job in ["fan[a]", "fan[b]", "fan[d]", "fan[e]"] {
        assert_eq!(state_of(&text, job), "ran", "{text}");
    }
    assert_eq!(state_of(&text, "join"), "not run", "{text}");
}

/// After a failure no job starts, a held bundle's included: `fan[a]` waits for two more jobs to
/// fill its bundle while `--jobs 2` holds `fan2[z]` back (`bad` and the bundle of `fan2[x]` and
/// `fan2[y]` run), and `bad` then fails.
#[test]
fn a_failure_withdraws_the_jobs_held_for_a_bundle() {
    let Some(_node) = slurm("slurm held bundle") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  bad:\n    kind: exec\n    params: {argv: [sh, -c, \"sleep 2; exit 3\"]}\n  fan:\n    kind: exec\n    foreach: [a]\n    resources: {bundle: 3}\n    params: {argv: [sh, -c, \"touch a-ran\"]}\n  fan2:\n    kind: exec\n    foreach: [x, y, z]\n    resources: {bundle: 2}\n    params: {argv: [sh, -c, \"sleep 5; echo ${item} > $FLORA_OUT/x\"]}\n",
    );
    let text = p.fails(&run_args("wf.yaml", &["--jobs", "2"]), 1);
    assert!(text.contains("job bad failed: Slurm job "), "{text}");
    assert_eq!(state_of(&text, "fan2[x]"), "ran", "{text}");
    assert_eq!(state_of(&text, "fan2[y]"), "ran", "{text}");
    for job in ["fan[a]", "fan2[z]"] {
        assert_eq!(state_of(&text, job), "not run", "{text}");
    }
    assert!(
        !p.path("a-ran").exists(),
        "a held job ran after the failure"
    );
    assert!(
        p.logs_containing("job fan[a] ").is_empty(),
        "a withdrawn job kept a log"
    );
    assert_eq!(
        std::fs::read_dir(p.path("cache/running")).unwrap().count(),
        0
    );
}

/// A job that Slurm ends at its time limit goes on from its work folder in a new Slurm job when
/// it saved something there (a checkpoint), and fails saying it needs more `time` when not. In a
/// bundle that reaches its time limit (`--time=1` for all, where a bundle of two would have 2
/// minutes), the job that ran out fails, and the one that never started goes on.
/// Slurm checks time limits every 30 s or so, so this test waits a minute and a half.
#[test]
fn a_job_at_its_time_limit_goes_on_from_what_it_saved() {
    let Some(_node) = slurm("slurm time limit") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  saves:\n    kind: exec\n    resources: {time: 1}\n    params: {argv: [sh, -c, \"if [ -f $FLORA_WORK/checkpoint ]; then echo went on > $FLORA_OUT/x; else echo step 1 > $FLORA_WORK/checkpoint; sleep 600; fi\"]}\n  saves_nothing:\n    kind: exec\n    resources: {time: 1}\n    params: {argv: [sleep, \"600\"]}\n  fan:\n    kind: exec\n    foreach: [a, b]\n    resources: {time: 1, bundle: 2}\n    params: {argv: [sh, -c, \"if mkdir first-started; then sleep 600; fi; echo ${item} > $FLORA_OUT/x\"]}\n",
    );
    let text = p.fails(
        &run_args("wf.yaml", &["--keep-going", "--slurm-arg=--time=1"]),
        1,
    );
    let (ran_out, never_started) = match state_of(&text, "fan[a]").as_str() {
        "failed" => ("fan[a]", "fan[b]"),
        _ => ("fan[b]", "fan[a]"),
    };
    assert_eq!(state_of(&text, ran_out), "failed", "{text}");
    assert_eq!(state_of(&text, never_started), "ran", "{text}");
    assert!(
        text.contains(&format!(
            "ended TIMEOUT; submitting it again (continuation 1 of at most 10); {never_started} had not started"
        )),
        "{text}"
    );
    let failure = text
        .lines()
        .skip_while(|l| !l.contains(&format!("job {ran_out} failed")))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        failure.contains("before this job ended (a bundle of 2 jobs;")
            && failure.contains("give its stage more `time`"),
        "{text}"
    );
    assert_eq!(state_of(&text, "saves"), "ran", "{text}");
    assert_eq!(p.read("results/wf/saves/x"), "went on\n");
    assert!(
        text.contains("of saves ended TIMEOUT; submitting it again to go on from its work folder (continuation 1 of at most 10)"),
        "{text}"
    );
    assert_eq!(state_of(&text, "saves_nothing"), "failed", "{text}");
    assert!(
        text.contains("ended TIMEOUT")
            && text.contains(
                "it saved nothing in its work folder to go on from: give its stage more `time`"
            ),
        "{text}"
    );
    let log = p.ok(&["log", "wf.yaml", "saves"]);
    assert_eq!(
        log.matches("--- submitted as Slurm job ").count(),
        2,
        "{log}"
    );
}

/// A parallel bundle runs its jobs `bundle_parallel` at a time in one Slurm job, which asks
/// for the CPUs of all of them.
#[test]
fn a_parallel_bundle_runs_its_jobs_side_by_side_in_one_slurm_job() {
    let Some(_node) = slurm("slurm parallel bundle") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  fan:\n    kind: exec\n    foreach: [a, b, c, d]\n    resources: {bundle: 4, bundle_parallel: 2}\n    params: {argv: [sh, -c, \"echo $SLURM_JOB_ID $SLURM_CPUS_PER_TASK > $FLORA_OUT/job; touch ${item}.started; sleep 2; ls *.started | wc -l > $FLORA_OUT/started; rm ${item}.started\"]}\n",
    );
    let out = p.ok(&run_args("wf.yaml", &[]));
    let mut ids = Vec::new();
    let mut most = 0;
    for item in ["a", "b", "c", "d"] {
        assert_eq!(state_of(&out, &format!("fan[{item}]")), "ran", "{out}");
        let job = p.read(&format!("results/wf/fan/{item}/job"));
        let (id, cpus) = job.trim().split_once(' ').unwrap();
        assert_eq!(cpus, "2", "the Slurm job has a CPU for each lane: {job}");
        ids.push(id.to_string());
        let started: usize = p
            .read(&format!("results/wf/fan/{item}/started"))
            .trim()
            .parse()
            .unwrap();
        most = most.max(started);
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "one Slurm job: {ids:?}");
    assert_eq!(most, 2, "two jobs at a time, never more");
    let log = p.ok(&["log", "wf.yaml", "fan[c]"]);
    assert!(
        log.contains(&format!(
            "--- submitted as Slurm job {}, a bundle of 4 jobs run 2 at a time",
            ids[0]
        )),
        "{log}"
    );
}

/// A bundle's jobs are reported as each ends, and a bundle that Slurm ends (here `scancel`)
/// fails only the jobs that had not ended, naming the bundle's Slurm output.
#[test]
fn a_bundle_slurm_ends_fails_only_its_unfinished_jobs() {
    let Some(_node) = slurm("slurm bundle cancelled") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  fan:\n    kind: exec\n    foreach: [a, b, c]\n    resources: {bundle: 3}\n    params: {argv: [sh, -c, \"if [ ${item} = b ]; then touch b-started; sleep 120; fi; echo ${item} > $FLORA_OUT/x\"]}\n",
    );
    let child = spawn_run(&p, &["--keep-going"]);
    wait_for_file(&p, "b-started");
    // The bundle's id, from fan[b]'s log (not squeue's names: another run's may be the same).
    let log = p.logs_containing("job fan[b] ").concat();
    let id = log
        .split("--- submitted as Slurm job ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .unwrap_or_else(|| panic!("no Slurm job in fan[b]'s log:\n{log}"))
        .to_string();
    // fan[a] is reported while its bundle runs: the run's note that it runs goes.
    let notes = || std::fs::read_dir(p.path("cache/running")).unwrap().count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while notes() != 2 {
        assert!(
            Instant::now() < deadline,
            "fan[a] not reported while its bundle runs: {} running notes",
            notes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(Command::new("scancel").arg(&id).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(state_of(&text, "fan[a]"), "ran", "{text}");
    assert_eq!(p.read("results/wf/fan/a/x").trim(), "a");
    for job in ["fan[b]", "fan[c]"] {
        assert_eq!(state_of(&text, job), "failed", "{text}");
        assert!(
            text.contains(&format!("job {job} failed: Slurm job {id} ended CANCELLED")),
            "{text}"
        );
    }
    let output = text
        .split("Slurm's output: ")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .unwrap_or_else(|| panic!("no bundle output named in:\n{text}"));
    let slurm_said = std::fs::read_to_string(output).unwrap();
    assert!(slurm_said.contains("CANCELLED"), "{slurm_said}");
}

/// Marks the test cluster's node down, which ends its jobs NODE_FAIL, and brings it back for
/// the jobs submitted again (and the tests after this one).
fn fail_the_node_and_bring_it_back() {
    let node = String::from_utf8(
        Command::new("sinfo")
            .args(["-h", "-N", "-o", "%N"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let node = node.lines().next().unwrap().trim().to_string();
    let update = |state: &str| {
        Command::new("scontrol")
            .args([
                "update",
                &format!("nodename={node}"),
                &format!("state={state}"),
            ])
            .args(if state == "down" {
                vec!["reason=flora-test"]
            } else {
                vec![]
            })
            .status()
            .unwrap()
            .success()
    };
    assert!(update("down"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = update("resume");
        let state = Command::new("sinfo")
            .args(["-h", "-N", "-o", "%T"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&state.stdout)
            .trim()
            .starts_with("idle")
            || String::from_utf8_lossy(&state.stdout)
                .trim()
                .starts_with("mixed")
            || String::from_utf8_lossy(&state.stdout)
                .trim()
                .starts_with("allocated")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A bundle that a node failure ends is submitted again with only its jobs that had not ended.
#[test]
fn a_bundle_lost_to_a_node_failure_is_submitted_again_without_its_ended_jobs() {
    let Some(_node) = slurm("slurm bundle node failure") else {
        return;
    };
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  fan:\n    kind: exec\n    foreach: [a, b]\n    resources: {bundle: 2}\n    params: {argv: [sh, -c, \"echo $SLURM_JOB_ID > $FLORA_OUT/job; if [ ${item} = b ]; then touch b-started; echo part > $FLORA_OUT/partial-$SLURM_JOB_ID; sleep 3; fi\"]}\n",
    );
    let child = spawn_run(&p, &["--slurm-arg=--no-requeue"]);
    wait_for_file(&p, "b-started");
    fail_the_node_and_bring_it_back();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let first = p.read("results/wf/fan/a/job").trim().to_string();
    assert!(
        err.contains(&format!(
            "Slurm job {first} of fan[b] ended NODE_FAIL; submitting it again (attempt 2 of 3)"
        )),
        "{err}"
    );
    // fan[b] ran again, alone, from an empty output folder; fan[a] did not.
    let second = p.read("results/wf/fan/b/job").trim().to_string();
    assert_ne!(first, second);
    let mut names: Vec<String> = std::fs::read_dir(p.path("results/wf/fan/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["job".to_string(), format!("partial-{second}")]);
}

/// `flora run wf.yaml --executor slurm ...` in the background, its output captured.
fn spawn_run(p: &Project, more: &[&str]) -> std::process::Child {
    Command::new(assert_cmd::cargo::cargo_bin("flora"))
        .current_dir(p.root())
        .env_remove("FLORA_CACHE")
        .args(run_args("wf.yaml", more))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Every job Slurm remembers, one line each, for a failure's message.
fn all_jobs() -> String {
    let out = Command::new("scontrol")
        .args(["show", "jobs", "-o"])
        .output()
        .expect("scontrol");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits up to 30 s for a job to create `rel` in the project folder.
fn wait_for_file(p: &Project, rel: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.path(rel).exists() {
        assert!(Instant::now() < deadline, "{rel} never showed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until Slurm runs a job named `name`; returns its id.
fn wait_for_running(name: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-n", name, "-t", "RUNNING", "-o", "%i"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(id) = text.lines().next() {
            return id.trim().to_string();
        }
        assert!(Instant::now() < deadline, "{name} never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn slurm_options_need_the_slurm_executor() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  a: {kind: exec, params: {argv: [\"true\"]}}\n",
    );
    let text = p.fails(&["run", "wf.yaml", "--partition", "gpu"], 2);
    assert!(
        text.contains("--partition is an option of --executor slurm"),
        "{text}"
    );
    let text = p.fails(&["run", "wf.yaml", "--executor", "slurm", "--gpus", "0"], 2);
    assert!(text.contains("each job gets its GPUs from Slurm"), "{text}");
    let text = p.fails(
        &["run", "wf.yaml", "--executor", "slurm", "--slurm-poll", "0"],
        2,
    );
    assert!(text.contains("--slurm-poll must be a positive"), "{text}");
}

/// A Slurm that cannot be asked stops the run before any job: no `squeue` on the PATH, or (where
/// Slurm's commands are installed) a configuration that names no controller.
#[test]
fn a_run_without_a_slurm_to_ask_stops_before_any_job() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: wf\nstages:\n  a: {kind: exec, params: {argv: [\"true\"]}}\n",
    );
    let text = p.fails_with(
        &[("PATH", "/nonexistent")],
        &["run", "wf.yaml", "--executor", "slurm"],
        2,
    );
    assert!(
        text.contains("--executor slurm: cannot run `squeue`")
            && text.contains("must be on the PATH"),
        "{text}"
    );
    assert!(!text.contains("job a"), "{text}");
    if Command::new("squeue").arg("--version").output().is_err() {
        eprintln!("SKIPPED the unanswering half of a_run_without_a_slurm_to_ask: no squeue here");
        return;
    }
    p.write("nowhere.conf", "ClusterName=nowhere\n");
    let conf = p.path("nowhere.conf");
    let text = p.fails_with(
        &[("SLURM_CONF", conf.to_str().unwrap())],
        &["run", "wf.yaml", "--executor", "slurm"],
        2,
    );
    assert!(
        text.contains("--executor slurm: Slurm does not answer: "),
        "{text}"
    );
}

#[test]
fn bad_cluster_resources_are_refused_at_their_line() {
    let p = Project::new();
    for (resources, why) in [
        ("{time: soon}", "expected a duration"),
        ("{bundle: 0}", "`bundle` must be at least 1"),
        (
            "{bundle: 4, bundle_parallel: 0}",
            "`bundle_parallel` must be at least 1",
        ),
        (
            "{bundle: 4, bundle_parallel: 2, gpus: 1}",
            "`bundle_parallel` needs `gpus: 0`",
        ),
    ] {
        p.write(
            "wf.yaml",
            &format!("name: wf\nstages:\n  a:\n    kind: exec\n    resources: {resources}\n    params: {{argv: [\"true\"]}}\n"),
        );
        let text = p.fails(&["plan", "wf.yaml"], 2);
        assert!(text.contains("wf.yaml:5") && text.contains(why), "{text}");
    }
}
