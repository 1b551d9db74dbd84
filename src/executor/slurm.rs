//! The Slurm executor: each job is one `sbatch` job that runs `flora __job SPEC` on a node.
//!
//! The driver (this process) stays the only writer of the cache index: a Slurm job writes into
//! its scratch folder alone, and the driver publishes it once Slurm says it completed and the
//! job's end marker (written after `flora __job` succeeded) shows on the driver's file system,
//! waiting up to `latency` for a network file system to catch up. That needs the cache (and the
//! workflow's files) on a file system every node sees.
//!
//! Jobs are tracked with `squeue` while they are queued or running and with `scontrol show job`
//! once they leave the queue, so no accounting database (`sacct`) is needed. A job that ends in
//! NODE_FAIL, PREEMPTED or BOOT_FAIL is submitted again, up to `retries` times; Ctrl-C cancels
//! every job of the run with `scancel`.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{append_log, missing_tuning, thread_env, Executor, Launch, Outcome};
use crate::progress::Progress;

/// Slurm states after which a job is submitted again.
const RETRIED: [&str; 3] = ["NODE_FAIL", "PREEMPTED", "BOOT_FAIL"];

/// How long cancelled jobs of an earlier run get to leave the queue before the run gives up.
const LEFT_BEHIND_WAIT: Duration = Duration::from_secs(180);

/// How long `squeue` may keep failing (the controller down, say) before the run's jobs are
/// given up.
const UNREACHABLE_FOR: Duration = Duration::from_secs(300);

/// What the command line says about Slurm.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// `--partition` for every job whose stage names none.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// More `sbatch` arguments, as given.
    pub extra: Vec<String>,
    /// Submissions again after NODE_FAIL, PREEMPTED or BOOT_FAIL.
    pub retries: usize,
    /// Time between two `squeue` polls.
    pub poll: Duration,
    /// How long a completed job's output may take to show on this machine's file system.
    pub latency: Duration,
}

/// One submitted job.
struct Tracked {
    launch: Launch,
    /// Submissions so far (1 for the first).
    attempt: usize,
    /// The state `squeue` said last.
    state: String,
}

/// Runs jobs through `sbatch`, `squeue`, `scontrol` and `scancel` on the PATH.
pub struct Slurm {
    exe: PathBuf,
    opts: SlurmOptions,
    /// By Slurm job id.
    jobs: BTreeMap<String, Tracked>,
    ended: VecDeque<(usize, Outcome)>,
    interrupted: Arc<AtomicBool>,
    unreachable_since: Option<Instant>,
}

impl Slurm {
    /// An executor that submits `exe __job SPEC` for each job. From now on the first Ctrl-C
    /// (SIGINT) or SIGTERM cancels the run's jobs and lets the run end; a second one ends the
    /// process at once.
    pub fn new(exe: PathBuf, opts: SlurmOptions) -> std::io::Result<Self> {
        let interrupted = super::interrupt_flag()?;
        Ok(Slurm {
            exe,
            opts,
            jobs: BTreeMap::new(),
            ended: VecDeque::new(),
            interrupted,
            unreachable_since: None,
        })
    }

    /// Cancels this user's Slurm jobs that an earlier flora run on this cache left running (their
    /// logs are in `logs`), and waits until they have left the queue. A driver that was killed
    /// (SIGKILL, a login node's process reaper) could not cancel them, and they would go on
    /// writing into the work folders that this run's jobs resume from. Returns their ids.
    pub fn cancel_left_behind(&self, logs: &Path) -> anyhow::Result<Vec<String>> {
        // SAFETY: getuid takes nothing and cannot fail.
        #[allow(unsafe_code)]
        let uid = unsafe { libc::getuid() };
        let listed = Command::new("squeue")
            .args(["--noheader", &format!("--user={uid}")])
            .args(["-O", "JobID:40,StdOut:4096"])
            .output();
        let text = match listed {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                eprintln!(
                    "warning: cannot list your Slurm jobs (squeue: {why}): jobs that an earlier \
                     run on this cache left running are not cancelled"
                );
                return Ok(Vec::new());
            }
        };
        let ids: Vec<String> = text
            .lines()
            .filter_map(|line| {
                let (id, log) = line.trim().split_once(char::is_whitespace)?;
                Path::new(log.trim())
                    .starts_with(logs)
                    .then(|| id.to_string())
            })
            .collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        let list = ids.join(",");
        eprintln!(
            "flora: cancelling {} Slurm job(s) that an earlier run on this cache left running \
             (its driver ended without cancelling them): {list}",
            ids.len()
        );
        let _ = Command::new("scancel").args(&ids).status();
        let deadline = Instant::now() + LEFT_BEHIND_WAIT;
        loop {
            let out = Command::new("squeue")
                .args(["-h", "-o", "%i", "-j", &list])
                .output();
            // squeue fails with "Invalid job id" once none of them is known any more.
            let gone = match &out {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().is_empty(),
                Ok(o) => String::from_utf8_lossy(&o.stderr).contains("Invalid job id"),
                Err(_) => false,
            };
            if gone {
                return Ok(ids);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "Slurm jobs {list}, left running by an earlier run on this cache, are still \
                     there {} s after scancel: end them (`scancel {}`) and run again",
                    LEFT_BEHIND_WAIT.as_secs(),
                    ids.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `sbatch` arguments for `launch` (everything but the command).
    pub fn sbatch_args(&self, launch: &Launch) -> Vec<String> {
        let r = &launch.resources;
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name=flora:{}", launch.id),
            format!("--output={}", launch.log.display()),
            "--open-mode=append".to_string(),
            format!("--cpus-per-task={}", r.threads.max(1)),
        ];
        if let Some(m) = r.memory {
            args.push(format!("--mem={}M", m.bytes.div_ceil(1 << 20)));
        }
        if r.gpus > 0 {
            args.push(format!("--gres=gpu:{}", r.gpus));
        }
        if let Some(t) = r.time {
            args.push(format!("--time={}", t.minutes));
        }
        if let Some(p) = r.partition.as_ref().or(self.opts.partition.as_ref()) {
            args.push(format!("--partition={p}"));
        }
        if let Some(a) = &self.opts.account {
            args.push(format!("--account={a}"));
        }
        let mut export = "--export=ALL".to_string();
        if launch.kind != "exec" {
            for (var, value) in missing_tuning() {
                export.push_str(&format!(",{var}={value}"));
            }
            for (var, value) in thread_env(r.threads) {
                export.push_str(&format!(",{var}={value}"));
            }
        }
        args.push(export);
        args.extend(self.opts.extra.iter().cloned());
        args
    }

    fn sbatch(&self, launch: &Launch) -> std::io::Result<String> {
        // The job's exit status is flora's; the end marker follows a success only.
        let wrap = format!(
            "{}{} __job {} && uname -n > {}",
            shell_quote(&self.exe.to_string_lossy()),
            super::verbosity_flag()
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            shell_quote(&launch.spec_file.to_string_lossy()),
            shell_quote(&crate::jobspec::done_marker(&launch.spec_file).to_string_lossy())
        );
        let out = Command::new("sbatch")
            .args(self.sbatch_args(launch))
            .arg(format!("--wrap={wrap}"))
            .output()
            .map_err(|e| io_error(format!("cannot run sbatch: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(io_error(format!(
                "sbatch refused the job: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // `--parsable` prints `id` or `id;cluster`.
        let id = stdout.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(io_error(format!(
                "sbatch printed no job id: {:?}",
                stdout.trim()
            )));
        }
        Ok(id)
    }

    /// Asks `squeue` for every tracked job; jobs that left the queue are settled with `scontrol`.
    fn poll(&mut self, progress: &mut Progress) {
        if self.jobs.is_empty() {
            return;
        }
        let ids: Vec<&str> = self.jobs.keys().map(String::as_str).collect();
        let out = Command::new("squeue")
            .args(["-h", "-o", "%i %T", "-j", &ids.join(",")])
            .output();
        let listed: BTreeMap<String, String> = match out {
            Ok(o) if o.status.success() => {
                self.unreachable_since = None;
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| {
                        let (id, state) = l.trim().split_once(' ')?;
                        Some((id.to_string(), state.trim().to_string()))
                    })
                    .collect()
            }
            // squeue fails when none of the ids is known any more (all ended and purged), and
            // when the controller cannot be reached; scontrol tells the two apart below.
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                if !why.contains("Invalid job id") {
                    let since = *self.unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > UNREACHABLE_FOR {
                        self.give_up(&format!(
                            "squeue has failed for {} s: {why}",
                            UNREACHABLE_FOR.as_secs()
                        ));
                    }
                    return;
                }
                BTreeMap::new()
            }
        };
        let ids: Vec<String> = self.jobs.keys().cloned().collect();
        for id in ids {
            let queued = listed.get(&id).filter(|s| !is_final(s));
            if let Some(state) = queued {
                self.note_state(&id, state, progress);
                continue;
            }
            // It ended, or left squeue's view: scontrol has the exit code and the reason; a
            // record that aged out still has the end marker of a job that succeeded.
            let end = match (settle(&id), listed.get(&id)) {
                (Some(f), _) => f,
                (None, Some(state)) => Final {
                    state: state.clone(),
                    exit: None,
                    reason: None,
                },
                (None, None) => self.forgotten(&id),
            };
            if is_final(&end.state) {
                self.finish(&id, end, progress);
            } else {
                self.note_state(&id, &end.state, progress);
            }
        }
        self.show(progress);
    }

    /// The end of a job Slurm no longer knows: COMPLETED if its end marker is there.
    fn forgotten(&self, id: &str) -> Final {
        let done = self
            .jobs
            .get(id)
            .is_some_and(|t| crate::jobspec::done_marker(&t.launch.spec_file).exists());
        Final {
            state: if done { "COMPLETED" } else { "UNKNOWN" }.into(),
            exit: None,
            reason: Some("Slurm no longer knows the job (its record aged out)".into()),
        }
    }

    fn note_state(&mut self, id: &str, state: &str, progress: &mut Progress) {
        if let Some(t) = self.jobs.get_mut(id) {
            if t.state != state {
                if state == "RUNNING" && !progress.is_tty() {
                    progress.println(&format!("running {} (Slurm job {id})", t.launch.id));
                }
                t.state = state.to_string();
            }
        }
    }

    /// Shows how many jobs Slurm holds in each state beside the progress bar.
    fn show(&self, progress: &mut Progress) {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for t in self.jobs.values() {
            *counts.entry(t.state.as_str()).or_default() += 1;
        }
        let text: Vec<String> = counts
            .iter()
            .map(|(s, n)| format!("{n} {}", s.to_lowercase()))
            .collect();
        progress.set_note(&format!("slurm: {}", text.join(", ")));
    }

    fn finish(&mut self, id: &str, end: Final, progress: &mut Progress) {
        let Some(t) = self.jobs.remove(id) else {
            return;
        };
        if end.state == "COMPLETED" {
            let outcome = match wait_visible(&t.launch.spec_file, self.opts.latency) {
                Ok(()) => Outcome::Succeeded,
                Err(why) => Outcome::Failed(format!("Slurm job {id} completed, but {why}")),
            };
            self.ended.push_back((t.launch.job, outcome));
            return;
        }
        if RETRIED.contains(&end.state.as_str()) && t.attempt <= self.opts.retries {
            let line = format!(
                "Slurm job {id} of {} ended {}; submitting it again (attempt {} of {})",
                t.launch.id,
                end.state,
                t.attempt + 1,
                self.opts.retries + 1
            );
            progress.println(&line);
            append_log(&t.launch.log, &format!("\n--- flora: {line}\n"));
            clear_scratch(&t.launch.spec);
            match self.sbatch(&t.launch) {
                Ok(new_id) => {
                    self.jobs.insert(
                        new_id,
                        Tracked {
                            attempt: t.attempt + 1,
                            state: "SUBMITTED".into(),
                            launch: t.launch,
                        },
                    );
                }
                Err(e) => self.ended.push_back((
                    t.launch.job,
                    Outcome::Failed(format!("Slurm job {id} ended {}; {e}", end.state)),
                )),
            }
            return;
        }
        let mut why = format!("Slurm job {id} ended {}", end.state);
        if let Some(code) = end.exit.filter(|c| c != "0:0") {
            why.push_str(&format!(" (exit code {code})"));
        }
        if let Some(r) = end.reason.filter(|r| r != "None") {
            why.push_str(&format!(": {r}"));
        }
        if t.attempt > 1 {
            why.push_str(&format!(" after {} submissions", t.attempt));
        }
        self.ended.push_back((t.launch.job, Outcome::Failed(why)));
    }

    /// Cancels every tracked job and reports each as failed with `why`.
    fn give_up(&mut self, why: &str) {
        let ids: Vec<String> = self.jobs.keys().cloned().collect();
        if !ids.is_empty() {
            let _ = Command::new("scancel").args(&ids).status();
        }
        for (id, t) in std::mem::take(&mut self.jobs) {
            self.ended.push_back((
                t.launch.job,
                Outcome::Failed(format!("{why}; Slurm job {id} cancelled")),
            ));
        }
    }
}

impl Executor for Slurm {
    fn submit(&mut self, launch: Launch) -> std::io::Result<()> {
        launch.write_spec()?;
        let id = self.sbatch(&launch)?;
        append_log(&launch.log, &format!("--- submitted as Slurm job {id}\n"));
        self.jobs.insert(
            id,
            Tracked {
                launch,
                attempt: 1,
                state: "SUBMITTED".into(),
            },
        );
        Ok(())
    }

    fn wait(&mut self, progress: &mut Progress) -> (usize, Outcome) {
        loop {
            if let Some(e) = self.ended.pop_front() {
                return e;
            }
            if self.interrupted.load(Ordering::Relaxed) {
                progress.println("interrupted: cancelling the run's Slurm jobs (scancel)");
                self.give_up("interrupted");
                continue;
            }
            self.poll(progress);
            progress.tick();
            if self.ended.is_empty() {
                sleep_unless_interrupted(self.opts.poll, &self.interrupted);
            }
        }
    }

    fn running(&self) -> usize {
        self.jobs.len() + self.ended.len()
    }

    fn places_jobs(&self) -> bool {
        true
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }
}

/// How a job that left the queue ended.
struct Final {
    state: String,
    exit: Option<String>,
    reason: Option<String>,
}

/// `scontrol show job`'s record of a job, or `None` when Slurm has forgotten it.
fn settle(id: &str) -> Option<Final> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(Final {
        state: field("JobState")?,
        exit: field("ExitCode"),
        reason: field("Reason"),
    })
}

/// Whether a Slurm job state is an end.
fn is_final(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "CONFIGURING"
            | "RUNNING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
            | "STOPPED"
            | "RESV_DEL_HOLD"
    )
}

/// Waits up to `latency` for the job's end marker (written after `flora __job` succeeded) to
/// show on this machine: on a network file system a node's writes can take a while
/// to be seen elsewhere.
fn wait_visible(spec: &Path, latency: Duration) -> Result<(), String> {
    let marker = crate::jobspec::done_marker(spec);
    let until = Instant::now() + latency;
    loop {
        if marker.exists() {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!(
                "its end marker {} is not visible here after {} s: is the cache on a file \
                 system that every node shares (see --slurm-latency)?",
                marker.display(),
                latency.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(250).min(latency));
    }
}

/// Sleeps `d`, waking early on an interrupt.
fn sleep_unless_interrupted(d: Duration, interrupted: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !interrupted.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50).min(d));
    }
}

/// Empties a job's scratch folder (its output so far) before it is submitted again.
fn clear_scratch(spec: &crate::jobspec::JobSpec) {
    crate::cache::make_writable(&spec.context.out);
    let _ = std::fs::remove_dir_all(&spec.context.out);
    let _ = std::fs::create_dir_all(&spec.context.out);
}

fn io_error(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

/// `s` quoted for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
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
                poll: Duration::from_secs(1),
                latency: Duration::from_secs(1),
            },
            jobs: BTreeMap::new(),
            ended: VecDeque::new(),
            interrupted: Arc::new(AtomicBool::new(false)),
            unreachable_since: None,
        }
    }

    #[test]
    fn resources_map_to_sbatch_options() {
        let args = slurm(Some("cpu")).sbatch_args(&launch(
            "{threads: 8, gpus: 2, memory: 16G, time: 1h 30m, partition: gpu}",
            "pretrain",
        ));
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
        let args = slurm(None).sbatch_args(&launch("{}", "exec"));
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
        let e = wait_visible(&spec, Duration::from_millis(300)).unwrap_err();
        assert!(
            e.contains("x.job.done is not visible here after 0.3 s")
                && e.contains("every node shares"),
            "{e}"
        );
        std::fs::write(crate::jobspec::done_marker(&spec), "node1\n").unwrap();
        assert!(wait_visible(&spec, Duration::from_millis(300)).is_ok());
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
