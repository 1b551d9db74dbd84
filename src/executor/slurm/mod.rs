//! The Slurm executor: each job is one `sbatch` job that runs `flora __job SPEC` on a node.
//!
//! The driver (this process) stays the only writer of the cache index: a Slurm job writes into
//! its scratch folder alone, and the driver publishes it once Slurm says it completed and the
//! job's end marker (written after `flora __job` succeeded) shows on the driver's file system,
//! waiting up to `latency` for a network file system to catch up. That needs the cache (and the
//! workflow's files) on a file system every node sees.
//!
//! A stage's `resources: {bundle: N}` runs up to N of its ready jobs in one Slurm job, one
//! after another or `bundle_parallel` at a time ([`bundle`]); each is reported as soon as its
//! own end marker shows.
//!
//! Jobs are tracked with `squeue` while they are queued or running and with `scontrol show job`
//! once they leave the queue, so no accounting database (`sacct`) is needed. A job that reaches
//! its time limit, or in NODE_FAIL, PREEMPTED or BOOT_FAIL, after saving something in its work
//! folder goes on from there in a new Slurm job, up to `continuations` times; one lost to a
//! node failure or pre-emption without saving anything is submitted again, up to `retries`
//! times; Ctrl-C cancels every job of the run with `scancel`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod bundle;
mod ending;

use super::{append_log, missing_tuning, thread_env, Executor, Launch, Outcome};
use crate::progress::Progress;
use ending::{
    is_final, member_outcome, resubmission_line, settle, slurm_failure, work_print, Final,
};

/// Slurm states after which a job is submitted again.
const RETRIED: [&str; 3] = ["NODE_FAIL", "PREEMPTED", "BOOT_FAIL"];

/// How long cancelled jobs of an earlier run get to leave the queue before the run gives up.
const LEFT_BEHIND_WAIT: Duration = Duration::from_secs(180);

/// How often the driver looks for jobs' end markers between two `squeue` polls (one read of the
/// folder they are in): a job's end is seen within this, not within a poll.
const MARKER_TICK: Duration = Duration::from_millis(250);

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
    /// Submissions again of a job that reached its time limit after it saved something in its
    /// work folder.
    pub continuations: usize,
    /// Time between two `squeue` polls.
    pub poll: Duration,
    /// How long a completed job's output may take to show on this machine's file system.
    pub latency: Duration,
}

/// One submitted Slurm job: one flora job, or a bundle of them.
struct Tracked {
    /// Its flora jobs not reported yet, in the order they run.
    members: Vec<Launch>,
    /// How many flora jobs it was submitted with.
    size: usize,
    /// Submissions so far (1 for the first).
    attempt: usize,
    /// How many times its jobs were submitted again after a time limit, to go on.
    continued: usize,
    /// Each job's work folder (by job index) as it was at submission: a job that Slurm ends at
    /// its time limit goes on only if it changed since.
    work_before: HashMap<usize, u64>,
    /// The state `squeue` said last.
    state: String,
    /// A bundle's own Slurm output (none for one job: Slurm's goes to the job's log).
    output: Option<PathBuf>,
}

/// Runs jobs through `sbatch`, `squeue`, `scontrol` and `scancel` on the PATH.
pub struct Slurm {
    exe: PathBuf,
    opts: SlurmOptions,
    /// By Slurm job id.
    jobs: BTreeMap<String, Tracked>,
    /// Bundles being filled, by [`bundle::group_key`]: submitted when full, when the scheduler
    /// has no more ready jobs to give, or when no Slurm job of the run is left.
    forming: BTreeMap<String, Vec<Launch>>,
    ended: VecDeque<(usize, Outcome)>,
    interrupted: Arc<AtomicBool>,
    unreachable_since: Option<Instant>,
    /// When `squeue` was last asked.
    last_poll: Option<Instant>,
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
            forming: BTreeMap::new(),
            ended: VecDeque::new(),
            interrupted,
            unreachable_since: None,
            last_poll: None,
        })
    }

    /// Cancels this user's Slurm jobs that an earlier flora run on this cache left running (their
    /// logs are in `logs`), and waits until they have left the queue. A driver that was killed
    /// (SIGKILL, a login node's process reaper) could not cancel them, and they would go on
    /// writing into the work folders that this run's jobs resume from. Returns their ids. A
    /// Slurm that cannot be asked (no `squeue` here, or no controller answering) is an error,
    /// before any job is submitted.
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
            Ok(o) => anyhow::bail!(
                "--executor slurm: Slurm does not answer: {} (is SLURM_CONF, or this machine's \
                 Slurm configuration, right, and is the controller up?)",
                last_line(&String::from_utf8_lossy(&o.stderr))
            ),
            Err(e) => anyhow::bail!(
                "--executor slurm: cannot run `squeue` ({e}): Slurm's commands (sbatch, squeue, \
                 scontrol, scancel) must be on the PATH, as on a cluster's login node"
            ),
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

    /// `sbatch` arguments for one job, or a bundle of jobs (everything but the command). A
    /// bundle that runs `width` jobs at a time asks for `width` times a job's threads and
    /// memory, and its stage's `--time` once per job that one of its lanes may run.
    pub fn sbatch_args(&self, members: &[Launch]) -> Vec<String> {
        let launch = &members[0];
        let r = &launch.resources;
        let width = bundle::width(members);
        let (name, output) = match members.len() {
            1 => (launch.id.clone(), launch.log.clone()),
            n => (format!("{}+{}", launch.id, n - 1), bundle::log_of(members)),
        };
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name=flora:{name}"),
            format!("--output={}", output.display()),
            "--open-mode=append".to_string(),
            format!("--cpus-per-task={}", r.threads.max(1) * width),
        ];
        if let Some(m) = r.memory {
            let megabytes = m.bytes.div_ceil(1 << 20).saturating_mul(width as u64);
            args.push(format!("--mem={megabytes}M"));
        }
        if r.gpus > 0 {
            args.push(format!("--gres=gpu:{}", r.gpus));
        }
        if let Some(t) = r.time {
            let minutes = bundle::time_minutes(t.minutes, members.len(), width);
            args.push(format!("--time={minutes}"));
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

    /// Submits one job, or a bundle; returns the Slurm job id.
    fn sbatch(&self, members: &[Launch]) -> std::io::Result<String> {
        let mut sbatch = Command::new("sbatch");
        sbatch.args(self.sbatch_args(members));
        let script = if let [launch] = members {
            // The job's exit status is flora's; the end marker follows a success only.
            let done = crate::jobspec::done_marker(&launch.spec_file);
            let wrap = format!(
                "start=$(date +%s.%N); {}{} __job {} && {}",
                shell_quote(&self.exe.to_string_lossy()),
                super::verbosity_flag()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default(),
                shell_quote(&launch.spec_file.to_string_lossy()),
                crate::jobspec::done_marker_command(&shell_quote(&done.to_string_lossy())),
            );
            sbatch.arg(format!("--wrap={wrap}")).stdin(Stdio::null());
            None
        } else {
            // On stdin: sbatch keeps a copy, and a thousand jobs' lines would not fit in
            // one argument.
            sbatch.stdin(Stdio::piped());
            Some(bundle::script(&self.exe, super::verbosity_flag(), members))
        };
        let out = sbatch
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                if let Some(text) = script {
                    use std::io::Write;
                    let mut stdin = child.stdin.take().expect("sbatch's stdin is piped");
                    // An sbatch that stops reading has failed, and says why on stderr.
                    let _ = stdin.write_all(text.as_bytes());
                }
                child.wait_with_output()
            })
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
        self.last_poll = Some(Instant::now());
        self.report_marked();
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

    /// Reports every job whose end marker shows, so that what depends on it starts without
    /// waiting for the next `squeue` poll or, in a bundle, for the rest of the bundle. The
    /// markers are looked for in one read of each folder the specs are in (the cache's
    /// `scratch/`), not one look-up per job. A lone job's failure is left to Slurm's state.
    fn report_marked(&mut self) {
        let mut listings: BTreeMap<PathBuf, HashSet<OsString>> = BTreeMap::new();
        for t in self.jobs.values() {
            for m in &t.members {
                let Some(dir) = m.spec_file.parent() else {
                    continue;
                };
                if !listings.contains_key(dir) {
                    listings.insert(dir.to_path_buf(), end_markers_in(dir));
                }
            }
        }
        if listings.values().all(HashSet::is_empty) {
            return;
        }
        let shows = |marker: PathBuf| {
            let dir = marker.parent().unwrap_or(Path::new(""));
            let name = marker.file_name().unwrap_or_default();
            listings.get(dir).is_some_and(|l| l.contains(name))
        };
        let ids: Vec<String> = self.jobs.keys().cloned().collect();
        for id in ids {
            let Some(t) = self.jobs.get_mut(&id) else {
                continue;
            };
            let mut i = 0;
            while i < t.members.len() {
                let spec = &t.members[i].spec_file;
                let end = if shows(crate::jobspec::done_marker(spec)) {
                    Some(Ok(()))
                } else if t.size > 1 && shows(crate::jobspec::failed_marker(spec)) {
                    // Read for the exit status (and removed).
                    crate::jobspec::marker_end(spec)
                } else {
                    None
                };
                match end {
                    None => i += 1,
                    Some(end) => {
                        let m = t.members.remove(i);
                        let outcome = member_outcome(end, &id, t.size);
                        self.ended.push_back((m.job, outcome));
                    }
                }
            }
            if t.members.is_empty() {
                let t = self.jobs.remove(&id).expect("tracked");
                forget_bundle(&t);
            }
        }
    }

    /// The end of a job Slurm no longer knows: COMPLETED if each of its jobs' end markers is
    /// there.
    fn forgotten(&self, id: &str) -> Final {
        let done = self.jobs.get(id).is_some_and(|t| {
            t.members.iter().all(|m| {
                crate::jobspec::done_marker(&m.spec_file).exists()
                    || crate::jobspec::failed_marker(&m.spec_file).exists()
            })
        });
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
                    let what = match t.members.len() {
                        1 => t.members[0].id.clone(),
                        n => format!(
                            "{} and {} more, {}",
                            t.members[0].id,
                            n - 1,
                            bundle::pace_words(&t.members)
                        ),
                    };
                    progress.println(&format!("running {what} (Slurm job {id})"));
                }
                t.state = state.to_string();
            }
        }
    }

    /// Shows how many jobs Slurm holds in each state beside the progress bar.
    fn show(&self, progress: &mut Progress) {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for t in self.jobs.values() {
            *counts.entry(t.state.as_str()).or_default() += t.members.len();
        }
        let text: Vec<String> = counts
            .iter()
            .map(|(s, n)| format!("{n} {}", s.to_lowercase()))
            .collect();
        progress.set_note(&format!("slurm: {}", text.join(", ")));
    }

    /// Reports the jobs of Slurm job `id`, which ended `end`: each by its end marker, or
    /// submitted again, or failed with Slurm's reason. A job that Slurm ended before it could end
    /// (a time limit, a node failure, a pre-emption) goes on in a new Slurm job when it saved
    /// something in its work folder since it was submitted (a checkpoint), up to
    /// `continuations` times; one that saved nothing is tried again after a node failure or a
    /// pre-emption, up to `retries` times, and fails after a time limit. A bundled job that had
    /// not started when its bundle ended goes on too (it was not the one that ran out of time).
    fn finish(&mut self, id: &str, end: Final, progress: &mut Progress) {
        let Some(mut t) = self.jobs.remove(id) else {
            return;
        };
        let lost = RETRIED.contains(&end.state.as_str());
        let timed_out = end.state == "TIMEOUT";
        let can_retry = lost && t.attempt <= self.opts.retries;
        let can_go_on = t.continued < self.opts.continuations;
        let mut again = Vec::new();
        let (mut went_on, mut retried, mut from_work) = (false, false, false);
        let mut unstarted = Vec::new();
        // One wait for a slow file system for all of a bundle's jobs, not one each.
        let visible_by = Instant::now() + self.opts.latency;
        for m in std::mem::take(&mut t.members) {
            let started_marker = crate::jobspec::started_marker(&m.spec_file);
            let started = t.size == 1 || started_marker.exists();
            let _ = std::fs::remove_file(&started_marker);
            let outcome = match crate::jobspec::marker_end(&m.spec_file) {
                Some(ended) => member_outcome(ended, id, t.size),
                None if end.state == "COMPLETED" => {
                    let left = visible_by.saturating_duration_since(Instant::now());
                    match wait_visible(&m.spec_file, left, self.opts.latency) {
                        Ok(()) => member_outcome(
                            crate::jobspec::marker_end(&m.spec_file).unwrap_or(Ok(())),
                            id,
                            t.size,
                        ),
                        Err(why) => Outcome::Failed(format!("Slurm job {id} completed, but {why}")),
                    }
                }
                None if lost || timed_out => {
                    // A bundled job that had not started goes on as one that saved something.
                    let saved =
                        t.work_before.get(&m.job) != Some(&work_print(&m.spec.context.work));
                    if (saved || !started) && can_go_on {
                        went_on = true;
                        if started {
                            from_work = true;
                        } else {
                            unstarted.push(m.id.clone());
                        }
                        again.push(m);
                        continue;
                    }
                    if can_retry {
                        retried = true;
                        again.push(m);
                        continue;
                    }
                    let before = if started { "ended" } else { "started" };
                    let mut why = slurm_failure(id, &end, &t, before);
                    if !started {
                        why.push_str(&format!(
                            ", after going on {} times (--slurm-continuations)",
                            t.continued
                        ));
                    } else if saved {
                        why.push_str(&format!(
                            " after going on from its work folder {} times (--slurm-continuations)",
                            t.continued
                        ));
                    } else if timed_out {
                        why.push_str(
                            "; it saved nothing in its work folder to go on from: give its stage \
                             more `time`",
                        );
                    }
                    Outcome::Failed(why)
                }
                None => Outcome::Failed(slurm_failure(id, &end, &t, "ended")),
            };
            self.ended.push_back((m.job, outcome));
        }
        // Before a resubmission, which may write to the same Slurm output.
        forget_bundle(&t);
        if again.is_empty() {
            return;
        }
        let next = Submission {
            attempt: t.attempt + usize::from(retried),
            continued: t.continued + usize::from(went_on),
        };
        let ids: Vec<&str> = again.iter().map(|m| m.id.as_str()).collect();
        let line = resubmission_line(
            &format!("Slurm job {id} of {} ended {}", ids.join(", "), end.state),
            from_work,
            went_on.then_some((next.continued, self.opts.continuations)),
            retried.then_some((next.attempt, self.opts.retries + 1)),
            &unstarted,
        );
        progress.println(&line);
        for m in &again {
            append_log(&m.log, &format!("\n--- flora: {line}\n"));
            clear_scratch(&m.spec);
        }
        if let Err(e) = self.submit_members(again, next) {
            let why = format!("Slurm job {id} ended {}; {}", end.state, e.error);
            self.fail_all(e.members, &why);
        }
    }

    /// Reports each of `members` as failed with `why`.
    fn fail_all(&mut self, members: Vec<Launch>, why: &str) {
        for m in members {
            self.ended
                .push_back((m.job, Outcome::Failed(why.to_string())));
        }
    }

    /// Submits `members` as one Slurm job (a bundle when more than one) and tracks it.
    fn submit_members(
        &mut self,
        members: Vec<Launch>,
        submission: Submission,
    ) -> Result<(), NotSubmitted> {
        let work_before = members
            .iter()
            .map(|m| (m.job, work_print(&m.spec.context.work)))
            .collect();
        match self.sbatch(&members) {
            Ok(id) => {
                let output = (members.len() > 1).then(|| bundle::log_of(&members));
                let line = match &output {
                    None => format!("--- submitted as Slurm job {id}\n"),
                    Some(output) => format!(
                        "--- submitted as Slurm job {id}, a bundle of {} jobs run {} \
                         (Slurm's output: {})\n",
                        members.len(),
                        bundle::pace_words(&members),
                        output.display()
                    ),
                };
                for m in &members {
                    append_log(&m.log, &line);
                }
                self.jobs.insert(
                    id,
                    Tracked {
                        output,
                        size: members.len(),
                        members,
                        attempt: submission.attempt,
                        continued: submission.continued,
                        work_before,
                        state: "SUBMITTED".into(),
                    },
                );
                Ok(())
            }
            Err(error) => Err(NotSubmitted { error, members }),
        }
    }

    /// Submits every bundle being filled: the scheduler has no more ready jobs for now.
    fn submit_forming(&mut self) {
        for (_, members) in std::mem::take(&mut self.forming) {
            if let Err(e) = self.submit_members(members, Submission::FIRST) {
                let why = e.error.to_string();
                self.fail_all(e.members, &why);
            }
        }
    }

    /// Cancels every tracked job and reports each as failed with `why`. Jobs held for a bundle
    /// stay held: the scheduler, seeing the failures or the interruption, withdraws them as not
    /// run. Only when nothing else is left to report are they failed, so that `wait` returns.
    fn give_up(&mut self, why: &str) {
        let ids: Vec<String> = self.jobs.keys().cloned().collect();
        if !ids.is_empty() {
            let _ = Command::new("scancel").args(&ids).status();
        }
        for (id, t) in std::mem::take(&mut self.jobs) {
            self.fail_all(t.members, &format!("{why}; Slurm job {id} cancelled"));
        }
        if self.ended.is_empty() {
            for (_, members) in std::mem::take(&mut self.forming) {
                self.fail_all(members, &format!("{why}; never submitted"));
            }
        }
    }
}

impl Executor for Slurm {
    fn submit(&mut self, launch: Launch) -> std::io::Result<()> {
        launch.write_spec()?;
        let size = launch.resources.bundle.max(1);
        if size == 1 {
            return self
                .submit_members(vec![launch], Submission::FIRST)
                .map_err(|e| e.error);
        }
        let group = bundle::group_key(&launch);
        let forming = self.forming.entry(group.clone()).or_default();
        forming.push(launch);
        if forming.len() >= size {
            let members = self.forming.remove(&group).unwrap_or_default();
            // The scheduler counts each of them as started: a refusal is reported by `wait`.
            if let Err(e) = self.submit_members(members, Submission::FIRST) {
                let why = e.error.to_string();
                self.fail_all(e.members, &why);
            }
        }
        Ok(())
    }

    fn wait(&mut self, progress: &mut Progress) -> (usize, Outcome) {
        // Bundles not yet full wait for more jobs while others run; with none running, they go.
        if self.jobs.is_empty() {
            self.submit_forming();
        }
        loop {
            if let Some(e) = self.ended.pop_front() {
                return e;
            }
            if self.interrupted.load(Ordering::Relaxed) {
                progress.println("interrupted: cancelling the run's Slurm jobs (scancel)");
                self.give_up("interrupted");
                continue;
            }
            let since_poll = self.last_poll.map(|t| t.elapsed());
            if since_poll.is_none_or(|s| s >= self.opts.poll) {
                self.poll(progress);
            } else {
                self.report_marked();
            }
            progress.tick();
            if self.ended.is_empty() {
                let until_poll = self
                    .opts
                    .poll
                    .saturating_sub(self.last_poll.map_or(Duration::ZERO, |t| t.elapsed()));
                sleep_unless_interrupted(until_poll.min(MARKER_TICK), &self.interrupted);
            }
        }
    }

    fn running(&self) -> usize {
        let submitted: usize = self.jobs.values().map(|t| t.members.len()).sum();
        let forming: usize = self.forming.values().map(Vec::len).sum();
        submitted + forming + self.ended.len()
    }

    /// Slurm jobs: `--jobs` limits what the run asks of Slurm at once.
    fn busy(&self) -> usize {
        self.jobs.len()
    }

    fn start_held(&mut self) {
        self.submit_forming();
    }

    fn withdraw_held(&mut self) -> Vec<usize> {
        let held = std::mem::take(&mut self.forming);
        held.into_values().flatten().map(|m| m.job).collect()
    }

    fn places_jobs(&self) -> bool {
        true
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }
}

/// Which submission of its jobs a Slurm job is.
#[derive(Debug, Clone, Copy)]
struct Submission {
    /// Submissions so far, this one included, after node failures and the like.
    attempt: usize,
    /// Times its jobs went on from their work folders after a time limit.
    continued: usize,
}

impl Submission {
    /// A job's first submission.
    const FIRST: Submission = Submission {
        attempt: 1,
        continued: 0,
    };
}

/// A Slurm job that `sbatch` did not take, and its flora jobs.
struct NotSubmitted {
    error: std::io::Error,
    members: Vec<Launch>,
}

/// Removes a finished bundle's Slurm output when Slurm wrote nothing there (each job has its
/// own log); one with Slurm's messages (a time limit, a cancellation) is kept, and a job that
/// Slurm ended names it in its failure.
fn forget_bundle(t: &Tracked) {
    if let Some(output) = &t.output {
        if std::fs::metadata(output).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(output);
        }
    }
}

/// Waits up to `left` for the job's end marker (written after `flora __job` succeeded, or in a
/// bundle after it failed) to show on this machine: on a network file system a node's writes
/// can take a while to be seen elsewhere. `latency` is the whole wait allowed, for the message.
fn wait_visible(spec: &Path, left: Duration, latency: Duration) -> Result<(), String> {
    let marker = crate::jobspec::done_marker(spec);
    let failed = crate::jobspec::failed_marker(spec);
    let until = Instant::now() + left;
    loop {
        if marker.exists() || failed.exists() {
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
    let _ = spec.empty_output();
    let _ = std::fs::create_dir_all(&spec.context.out);
}

fn io_error(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

/// The names of the end markers (`.done`, `.failed`) in `dir` now; none where it cannot be read.
fn end_markers_in(dir: &Path) -> HashSet<OsString> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashSet::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|name| {
            let name = name.to_string_lossy();
            name.ends_with(".done") || name.ends_with(".failed")
        })
        .collect()
}

/// The last non-empty line of a command's error output (Slurm's commands end with the fatal
/// one), or a note that there was none.
fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message")
        .to_string()
}

/// `s` quoted for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests;
