//! The local executor: each job is a child process of this `flora`.
//!
//! A built-in kind's job runs as `flora __job SPEC`; an `exec` job's program is started directly
//! (one process start fewer for each small step). Each runs in its own process group, so that
//! everything it starts (an `exec` job's shell and its children) can be stopped together. The
//! first Ctrl-C (SIGINT) or SIGTERM stops the run: no job starts any more, every running job's
//! group gets SIGTERM (and SIGKILL after [`GRACE`]), and their outputs are thrown away while
//! their work folders stay for a retry; a second signal ends flora at once. Should flora die
//! without stopping its jobs, a `flora __job` process gets SIGTERM (Linux's parent-death
//! signal, [`die_with_driver`]) and the reaper stops the `exec` programs' groups
//! ([`super::reaper`]), so that no orphan stage keeps writing to the cache.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reaper::Reaper;
use super::{append_log, missing_tuning, thread_env, verbosity_flag, Executor, Launch, Outcome};
use crate::progress::Progress;

/// How long interrupted jobs get to end after SIGTERM before they are killed.
pub const GRACE: Duration = Duration::from_secs(10);

/// Runs jobs as child processes on this machine.
pub struct Local {
    exe: PathBuf,
    tx: Sender<(usize, Outcome)>,
    rx: Receiver<(usize, Outcome)>,
    /// The process (and process group) id of each running job, by job index.
    groups: HashMap<usize, u32>,
    /// Jobs submitted and not yet reported by [`Executor::wait`] (a program that could not
    /// start has no group, but its failure is still to be reported).
    unreported: usize,
    /// Started with the first `exec` program.
    reaper: Option<Reaper>,
    interrupted: Arc<AtomicBool>,
    /// When the running jobs were told to stop, and whether they have been killed since.
    stopping: Option<(Instant, bool)>,
}

impl Local {
    /// An executor that starts `exe __job SPEC` for each job. From now on the first SIGINT or
    /// SIGTERM stops the run's jobs and lets the run end; a second one ends the process at once.
    pub fn new(exe: PathBuf) -> std::io::Result<Self> {
        let interrupted = super::interrupt_flag()?;
        let (tx, rx) = channel();
        Ok(Local {
            exe,
            tx,
            rx,
            groups: HashMap::new(),
            unreported: 0,
            reaper: None,
            interrupted,
            stopping: None,
        })
    }

    /// Signals every running job's process group.
    fn signal_jobs(&self, signal: i32) {
        for &pid in self.groups.values() {
            signal_group(pid, signal);
        }
    }
}

/// Called first in a job process that the local executor started: asks Linux for SIGTERM
/// when the driver (process `driver`, its parent) dies, and if it died before the request
/// (the job process was already re-parented), ends the job the same way at once.
pub fn die_with_driver(driver: u32) {
    // SAFETY: prctl, getppid and raise take plain integers and touch no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        if u32::try_from(libc::getppid()).ok() != Some(driver) {
            libc::raise(libc::SIGTERM);
        }
    }
}

/// Sends `signal` to process group `pgid`, best effort (a group that already ended is fine).
fn signal_group(pgid: u32, signal: i32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: killpg takes plain integers and touches no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::killpg(pgid, signal);
    }
}

impl Local {
    /// Starts `flora __job SPEC` for a built-in kind.
    fn start_job_process(&mut self, launch: Launch, log: File) -> std::io::Result<()> {
        // No hook runs between fork and exec, so the standard library starts the job with
        // posix_spawn (vfork-like: the driver's page tables are not copied for each job); the
        // job process asks for the parent-death signal itself ([`die_with_driver`]).
        launch.write_spec()?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(verbosity_flag())
            .arg("__job")
            .arg(&launch.spec_file)
            .arg("--driver")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .envs(missing_tuning())
            .envs(thread_env(launch.resources.threads));
        let child = cmd.spawn()?;
        self.wait_for(launch.job, child);
        Ok(())
    }

    /// Starts an `exec` job's program itself, in a group of its own that the reaper watches:
    /// no `flora __job` process between them. The program's end is the job's; one that cannot
    /// start fails its job, with the reason in its log.
    fn start_program(&mut self, launch: Launch, log: File) -> std::io::Result<()> {
        let mut cmd = match program_command(&launch) {
            Ok(cmd) => cmd,
            Err(why) => {
                self.not_started(&launch, why);
                return Ok(());
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        if self.reaper.is_none() {
            let reaper = Reaper::start(&self.exe).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot start `{} __reaper`: {e}", self.exe.display()),
                )
            })?;
            self.reaper = Some(reaper);
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let program = cmd.get_program().to_string_lossy().into_owned();
                let why = format!("exec: cannot start `{program}`: {e}");
                self.not_started(&launch, why);
                return Ok(());
            }
        };
        if let Some(reaper) = &mut self.reaper {
            if let Err(e) = reaper.watch(child.id()) {
                tracing::warn!("the reaper cannot watch job {}: {e}", launch.id);
            }
        }
        self.wait_for(launch.job, child);
        Ok(())
    }

    /// Fails a job whose program could not start: says why in its log, and reports it as if
    /// it had ended.
    fn not_started(&self, launch: &Launch, why: String) {
        append_log(&launch.log, &format!("error: job {}: {why}\n", launch.id));
        let _ = self.tx.send((launch.job, Outcome::Failed(why)));
    }

    /// Notes `child` as job `job`'s process (and group) and reports its end on the channel.
    fn wait_for(&mut self, job: usize, mut child: std::process::Child) {
        self.groups.insert(job, child.id());
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let outcome = match child.wait() {
                Ok(status) if status.success() => Outcome::Succeeded,
                Ok(status) => Outcome::Failed(describe(status)),
                Err(e) => Outcome::Failed(format!("lost track of the job process: {e}")),
            };
            let _ = tx.send((job, outcome));
        });
    }
}

/// The command that runs an `exec` job's program, with its output and work folders made (as
/// `flora __job` makes them) and, at `-v`, the lines `flora __job` would log; or why not.
fn program_command(launch: &Launch) -> Result<Command, String> {
    let spec = &launch.spec;
    let params: flora_stages::exec::Params =
        serde_json::from_value(spec.params.clone()).map_err(|e| format!("exec: {e}"))?;
    spec.make_folders().map_err(|e| format!("{e:#}"))?;
    if tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG {
        // As the job process's tracing writes them.
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        let lines: String = spec
            .described()
            .iter()
            .map(|line| format!("{now} DEBUG {line}\n"))
            .collect();
        append_log(&launch.log, &lines);
    }
    flora_stages::exec::command(&params, &spec.context).map_err(|e| e.to_string())
}

impl Executor for Local {
    fn submit(&mut self, launch: Launch) -> std::io::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)?;
        if launch.kind == "exec" {
            self.start_program(launch, log)?;
        } else {
            self.start_job_process(launch, log)?;
        }
        self.unreported += 1;
        Ok(())
    }

    fn wait(&mut self, progress: &mut Progress) -> (usize, Outcome) {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok((job, outcome)) => {
                    self.unreported -= 1;
                    // The reaper ignores a group it was not given (a built-in kind's).
                    if let (Some(pgid), Some(reaper)) = (self.groups.remove(&job), &mut self.reaper)
                    {
                        let _ = reaper.forget(pgid);
                    }
                    let outcome = match outcome {
                        Outcome::Failed(why) if self.stopping.is_some() => {
                            Outcome::Failed(format!("interrupted ({why})"))
                        }
                        other => other,
                    };
                    return (job, outcome);
                }
                Err(RecvTimeoutError::Timeout) => progress.tick(),
                Err(RecvTimeoutError::Disconnected) => unreachable!("the executor holds a sender"),
            }
            if !self.interrupted.load(Ordering::Relaxed) {
                continue;
            }
            match self.stopping {
                None => {
                    progress.println(&format!(
                        "interrupted: stopping {} running job(s); their work folders stay for the next run",
                        self.groups.len()
                    ));
                    self.signal_jobs(libc::SIGTERM);
                    self.stopping = Some((Instant::now(), false));
                }
                Some((since, false)) if since.elapsed() > GRACE => {
                    progress.println(&format!(
                        "interrupted: killing {} job(s) still running after {GRACE:?}",
                        self.groups.len()
                    ));
                    self.signal_jobs(libc::SIGKILL);
                    self.stopping = Some((since, true));
                }
                Some(_) => {}
            }
        }
    }

    fn running(&self) -> usize {
        self.unreported
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}
