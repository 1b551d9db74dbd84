//! Unit tests of the Slurm executor: sbatch options, states, markers and quoting.

use super::*;
use crate::dag::Resources;

fn launch(resources: &str, kind: &str) -> Launch {
    Launch {
        job: 0,
        id: "train[maize]".into(),
        kind: kind.into(),
        spec_file: PathBuf::from("/shared/cache/tmp/x.job.json"),
        spec: crate::jobspec::JobSpec {
            job: "train[maize]".into(),
            kind: kind.into(),
            params: serde_json::json!({}),
            context: flora_stages::Context::new(
                PathBuf::from("/shared/cache/tmp/x"),
                PathBuf::from("/shared/cache/work/x"),
                PathBuf::from("/shared/project"),
            ),
        },
        log: PathBuf::from("/shared/cache/logs/x.log"),
        resources: serde_yaml::from_str::<Resources>(resources).unwrap(),
    }
}

fn slurm(partition: Option<&str>) -> Slurm {
    Slurm {
        exe: PathBuf::from("/opt/flora"),
        opts: SlurmOptions {
            partition: partition.map(str::to_string),
            account: Some("plants".into()),
            extra: vec!["--qos=high".into()],
            retries: 2,
            continuations: 3,
            poll: Duration::from_secs(1),
            latency: Duration::from_secs(1),
        },
        jobs: BTreeMap::new(),
        forming: BTreeMap::new(),
        ended: VecDeque::new(),
        interrupted: Arc::new(AtomicBool::new(false)),
        unreachable_since: None,
        last_poll: None,
    }
}

#[test]
fn resources_map_to_sbatch_options() {
    let args = slurm(Some("cpu")).sbatch_args(&[launch(
        "{threads: 8, gpus: 2, memory: 16G, time: 1h 30m, partition: gpu}",
        "pretrain",
    )]);
    for want in [
        "--parsable",
        "--job-name=flora:train[maize]",
        "--output=/shared/cache/logs/x.log",
        "--open-mode=append",
        "--cpus-per-task=8",
        "--mem=16384M",
        "--gres=gpu:2",
        "--time=90",
        "--partition=gpu",
        "--account=plants",
        "--qos=high",
    ] {
        assert!(args.contains(&want.to_string()), "{want} in {args:?}");
    }
    let export = args.iter().find(|a| a.starts_with("--export=ALL")).unwrap();
    // The job's thread pools are as wide as its CPUs.
    for var in [
        "RAYON_NUM_THREADS",
        "CANDLE_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
    ] {
        assert!(export.contains(&format!(",{var}=8")), "{var} in {export}");
    }
}

#[test]
fn unstated_resources_are_left_to_the_partition() {
    let args = slurm(None).sbatch_args(&[launch("{}", "exec")]);
    assert!(args.contains(&"--cpus-per-task=1".to_string()));
    assert!(!args.iter().any(|a| a.starts_with("--mem")
        || a.starts_with("--gres")
        || a.starts_with("--time")
        || a.starts_with("--partition")));
    // exec jobs get the environment unchanged.
    assert!(args.contains(&"--export=ALL".to_string()));
}

#[test]
fn queued_and_running_states_are_not_ends() {
    for s in ["PENDING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"] {
        assert!(!is_final(s), "{s}");
    }
    for s in [
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
    ] {
        assert!(is_final(s), "{s}");
    }
}

#[test]
fn a_completed_job_counts_once_its_end_marker_shows() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("x.job.json");
    let e = wait_visible(
        &spec,
        Duration::from_millis(300),
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(
        e.contains("x.job.done is not visible here after 0.3 s") && e.contains("every node shares"),
        "{e}"
    );
    std::fs::write(crate::jobspec::done_marker(&spec), "node1\n").unwrap();
    assert!(wait_visible(
        &spec,
        Duration::from_millis(300),
        Duration::from_millis(300)
    )
    .is_ok());
}

#[test]
fn quoting_survives_quotes_and_spaces() {
    assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
}

/// `n` jobs of one bundle, with their specs and logs in `dir`.
fn members(dir: &Path, n: usize) -> Vec<Launch> {
    (0..n)
        .map(|i| {
            let mut l = launch("{time: 10m, bundle: 50}", "exec");
            l.job = i;
            l.id = format!("fan[{i}]");
            l.spec_file = dir.join(format!("k{i}.job.json"));
            l.log = dir.join(format!("k{i}.log"));
            l
        })
        .collect()
}

/// Writes each job's spec file, as the driver does before it submits.
fn write_specs(jobs: &[Launch]) {
    for j in jobs {
        j.write_spec().unwrap();
    }
}

/// A bundle that Slurm runs again (a requeue) runs only its jobs that have not run: not one
/// whose end the driver took (its spec is gone), nor one whose DONE marker shows.
#[test]
fn a_bundle_run_again_skips_the_jobs_that_ran() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("flora");
    std::fs::write(&exe, "#!/bin/sh\necho \"ran $2\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let jobs = members(dir.path(), 3);
    write_specs(&jobs);
    std::fs::remove_file(&jobs[0].spec_file).unwrap();
    std::fs::write(crate::jobspec::done_marker(&jobs[1].spec_file), "node1\n").unwrap();
    let text = bundle::script(&exe, None, &jobs);
    let status = Command::new("sh").arg("-c").arg(&text).status().unwrap();
    assert!(status.success(), "{text}");
    assert!(
        !jobs[0].log.exists() && !jobs[1].log.exists(),
        "a job ran again"
    );
    let started = |j: &Launch| crate::jobspec::started_marker(&j.spec_file).exists();
    assert_eq!(
        jobs.iter().map(started).collect::<Vec<_>>(),
        [false, false, true]
    );
    let log = std::fs::read_to_string(&jobs[2].log).unwrap();
    assert_eq!(log.trim(), format!("ran {}", jobs[2].spec_file.display()));
}

#[test]
fn a_bundle_is_one_slurm_job_with_time_for_each_of_its_jobs() {
    let dir = Path::new("/shared/cache/logs");
    let args = slurm(None).sbatch_args(&members(dir, 3));
    for want in [
        "--job-name=flora:fan[0]+2",
        "--output=/shared/cache/logs/k0.bundle.log",
        "--time=30",
        "--cpus-per-task=1",
    ] {
        assert!(args.contains(&want.to_string()), "{want} in {args:?}");
    }
}

#[test]
fn a_bundles_script_runs_each_job_into_its_log_and_goes_on_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for flora: prints its spec's name, and fails for the second job.
    let exe = dir.path().join("fake flora");
    std::fs::write(
        &exe,
        "#!/bin/sh\n[ \"$1\" = __job ] || exit 9\necho \"ran $2\"\ncase \"$2\" in *k1.job.json) exit 3;; esac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let jobs = members(dir.path(), 3);
    write_specs(&jobs);
    let text = bundle::script(&exe, None, &jobs);
    let status = Command::new("sh").arg("-c").arg(&text).status().unwrap();
    assert!(status.success(), "{text}");
    for (i, m) in jobs.iter().enumerate() {
        let log = std::fs::read_to_string(&m.log).unwrap();
        assert_eq!(
            log.trim(),
            format!("ran {}", m.spec_file.display()),
            "job {i}"
        );
        assert!(
            crate::jobspec::started_marker(&m.spec_file).exists(),
            "job {i}"
        );
        let end = crate::jobspec::marker_end(&m.spec_file);
        if i == 1 {
            assert_eq!(end, Some(Err("3".to_string())));
            // Read once: the failed marker goes.
            assert!(!crate::jobspec::failed_marker(&m.spec_file).exists());
        } else {
            assert_eq!(end, Some(Ok(())));
            let text = std::fs::read_to_string(crate::jobspec::done_marker(&m.spec_file));
            let done = crate::jobspec::DoneMarker::parse(&text.unwrap()).expect("a marker");
            assert!(!done.node.is_empty(), "the node's name");
            assert!(done.seconds.is_some_and(|s| s < 5.0), "{done:?}");
        }
    }
    // No marker is left half-written under its temporary name.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(!name.to_string_lossy().ends_with(".part"), "{name:?} left");
    }
}

#[test]
fn a_parallel_bundle_asks_for_each_lane_and_time_for_the_jobs_of_one() {
    let dir = Path::new("/shared/cache/logs");
    let parallel = |n: usize| {
        let mut jobs = members(dir, n);
        for j in &mut jobs {
            j.resources.bundle_parallel = 4;
            j.resources.threads = 2;
            j.resources.memory = Some("1G".parse().unwrap());
        }
        slurm(None).sbatch_args(&jobs)
    };
    // Ten jobs, four at a time: a lane runs at most three of them.
    let args = parallel(10);
    for want in ["--cpus-per-task=8", "--mem=4096M", "--time=30"] {
        assert!(args.contains(&want.to_string()), "{want} in {args:?}");
    }
    // A bundle not full asks for no more lanes than it has jobs.
    let args = parallel(3);
    for want in ["--cpus-per-task=6", "--mem=3072M", "--time=10"] {
        assert!(args.contains(&want.to_string()), "{want} in {args:?}");
    }
}

#[test]
fn a_parallel_bundles_script_runs_each_job_once_and_width_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let active = dir.path().join("active");
    std::fs::create_dir(&active).unwrap();
    // A stand-in for flora: notes how many jobs run beside it, then holds its slot a second.
    let exe = dir.path().join("flora");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/sh\nslot={a}/$$\ntouch \"$slot\"\nsleep 1\necho \"ran $2 beside $(ls {a} | wc -l)\"\nrm \"$slot\"\n",
            a = active.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut jobs = members(dir.path(), 6);
    for j in &mut jobs {
        j.resources.bundle_parallel = 3;
    }
    write_specs(&jobs);
    let text = bundle::script(&exe, None, &jobs);
    assert_eq!(text.matches("lane &").count(), 3, "{text}");
    let status = Command::new("sh").arg("-c").arg(&text).status().unwrap();
    assert!(status.success(), "{text}");
    let mut most = 0;
    for (i, m) in jobs.iter().enumerate() {
        let log = std::fs::read_to_string(&m.log).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "job {i} ran once: {log}");
        let prefix = format!("ran {} beside ", m.spec_file.display());
        let beside: usize = lines[0]
            .strip_prefix(&prefix)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        most = most.max(beside);
        assert_eq!(crate::jobspec::marker_end(&m.spec_file), Some(Ok(())));
    }
    assert!(
        (2..=3).contains(&most),
        "at most 3 jobs at once, and more than one: {most}"
    );
}

#[test]
fn a_bundled_job_without_a_marker_has_not_ended() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        crate::jobspec::marker_end(&dir.path().join("x.job.json")),
        None
    );
}

#[test]
fn only_jobs_of_one_kind_and_the_same_resources_share_a_bundle() {
    let a = launch("{threads: 2, bundle: 10}", "exec");
    let b = launch("{threads: 2, bundle: 10}", "exec");
    let c = launch("{threads: 4, bundle: 10}", "exec");
    let d = launch("{threads: 2, bundle: 10}", "promoters");
    assert_eq!(bundle::group_key(&a), bundle::group_key(&b));
    assert_ne!(bundle::group_key(&a), bundle::group_key(&c));
    assert_ne!(bundle::group_key(&a), bundle::group_key(&d));
}

/// Slurm's record of a job that reached its time limit.
fn timed_out() -> Final {
    Final {
        state: "TIMEOUT".into(),
        exit: Some("0:15".into()),
        reason: Some("TimeLimit".into()),
    }
}

/// Tracks `job` as Slurm job 77, submitted `continued` times after a time limit, with its work
/// folder as it is now.
fn track(slurm: &mut Slurm, job: Launch, continued: usize) {
    let work_before = [(job.job, work_print(&job.spec.context.work))].into();
    slurm.jobs.insert(
        "77".into(),
        Tracked {
            members: vec![job],
            size: 1,
            attempt: 1,
            continued,
            work_before,
            state: "RUNNING".into(),
            output: None,
        },
    );
}

fn failure(slurm: &mut Slurm) -> String {
    match slurm.ended.pop_front() {
        Some((_, Outcome::Failed(why))) => why,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_job_that_saved_nothing_before_its_time_limit_fails_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = launch("{time: 1h}", "pretrain");
    job.spec.context.work = dir.path().join("work");
    let mut slurm = slurm(None);
    track(&mut slurm, job, 0);
    slurm.finish("77", timed_out(), &mut Progress::new(1));
    let why = failure(&mut slurm);
    assert!(
        why.starts_with("Slurm job 77 ended TIMEOUT (exit code 0:15): TimeLimit")
            && why.ends_with(
                "it saved nothing in its work folder to go on from: give its stage more `time`"
            ),
        "{why}"
    );
    assert!(slurm.jobs.is_empty(), "nothing submitted again");
}

#[test]
fn a_job_that_went_on_too_many_times_fails() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut job = launch("{time: 1h}", "pretrain");
    job.spec.context.work = work.clone();
    let mut slurm = slurm(None);
    track(&mut slurm, job, 3);
    std::fs::write(work.join("checkpoint.json"), "{}").unwrap();
    slurm.finish("77", timed_out(), &mut Progress::new(1));
    let why = failure(&mut slurm);
    assert!(
        why.ends_with("after going on from its work folder 3 times (--slurm-continuations)"),
        "{why}"
    );
}

/// When a bundle reaches its time limit, a job that ended keeps its end, one that started and
/// saved nothing fails for want of time, and one that never started is not blamed: it goes on in
/// a new Slurm job while continuations are left, and says it never started when none are.
#[test]
fn a_bundles_time_limit_tells_its_jobs_that_never_started_from_the_one_that_ran_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut jobs = members(dir.path(), 3);
    for (i, j) in jobs.iter_mut().enumerate() {
        j.spec.context.work = dir.path().join(format!("work{i}"));
    }
    write_specs(&jobs);
    std::fs::write(crate::jobspec::done_marker(&jobs[0].spec_file), "node1\n").unwrap();
    for j in &jobs[..2] {
        std::fs::write(crate::jobspec::started_marker(&j.spec_file), "").unwrap();
    }
    let mut slurm = slurm(None);
    slurm.opts.continuations = 2;
    let work_before = jobs
        .iter()
        .map(|j| (j.job, work_print(&j.spec.context.work)))
        .collect();
    slurm.jobs.insert(
        "77".into(),
        Tracked {
            size: jobs.len(),
            members: jobs.clone(),
            attempt: 1,
            continued: 2,
            work_before,
            state: "RUNNING".into(),
            output: Some(dir.path().join("k0.bundle.log")),
        },
    );
    slurm.finish("77", timed_out(), &mut Progress::new(3));
    assert!(matches!(
        slurm.ended.pop_front(),
        Some((0, Outcome::Succeeded))
    ));
    let ran_out = failure(&mut slurm);
    assert!(
        ran_out.contains("before this job ended (a bundle of 3 jobs;")
            && ran_out.ends_with("give its stage more `time`"),
        "{ran_out}"
    );
    let never_started = failure(&mut slurm);
    assert!(
        never_started.starts_with("Slurm job 77 ended TIMEOUT (exit code 0:15): TimeLimit before this job started (a bundle of 3 jobs;")
            && never_started.ends_with("after going on 2 times (--slurm-continuations)"),
        "{never_started}"
    );
    for j in &jobs {
        assert!(
            !crate::jobspec::started_marker(&j.spec_file).exists(),
            "{}",
            j.id
        );
    }
}

#[test]
fn a_work_folders_print_changes_with_what_is_saved_there() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let missing = work_print(&work);
    std::fs::create_dir_all(&work).unwrap();
    let empty = work_print(&work);
    std::fs::write(work.join("checkpoint-10.safetensors"), "weights").unwrap();
    let saved = work_print(&work);
    assert_eq!(saved, work_print(&work), "the same folder, the same print");
    std::fs::write(work.join("checkpoint-10.safetensors"), "weights, later").unwrap();
    let rewritten = work_print(&work);
    assert!(
        missing != saved && empty != saved && rewritten != saved,
        "{missing} {empty} {saved} {rewritten}"
    );
}

/// The resubmission line says what goes on from a work folder only when a job does, and names
/// the jobs that had not started; a retry of a job lost with nothing saved says its attempt.
#[test]
fn a_resubmission_says_why_each_job_goes_again() {
    let ended = "Slurm job 77 of fan[a], fan[b] ended NODE_FAIL";
    let b = ["fan[b]".to_string()];
    assert_eq!(
        resubmission_line(ended, true, Some((1, 10)), None, &b),
        format!("{ended}; submitting it again to go on from its work folder (continuation 1 of at most 10); fan[b] had not started")
    );
    assert_eq!(
        resubmission_line(ended, false, Some((2, 10)), Some((2, 3)), &b),
        format!("{ended}; submitting it again (continuation 2 of at most 10) (attempt 2 of 3); fan[b] had not started")
    );
    assert_eq!(
        resubmission_line(ended, false, None, Some((3, 3)), &[]),
        format!("{ended}; submitting it again (attempt 3 of 3)")
    );
}
