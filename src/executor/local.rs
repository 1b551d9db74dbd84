//! The local executor: each job is a child process of this `flora`.
//!
//! Each job runs in its own process group, so that everything it starts (an `exec` job's shell
//! and its children) can be stopped together. The first Ctrl-C (SIGINT) or SIGTERM stops the
//! run: no job starts any more, every running job's group gets SIGTERM (and SIGKILL after
//! [`GRACE`]), and their outputs are thrown away while their work folders stay for a retry; a
//! second signal ends flora at once. A job process also gets SIGTERM should flora die without
//! stopping it (Linux's parent-death signal; an `exec` job's process passes it on to its
//! program's group, see [`crate::supervise`]), so that no orphan stage keeps writing to the
//! cache.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{missing_tuning, thread_env, verbosity_flag, Executor, Launch, Outcome};
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

impl Executor for Local {
    fn submit(&mut self, launch: Launch) -> std::io::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)?;
        // No hook runs between fork and exec, so the standard library starts the job with
        // posix_spawn (vfork-like: the driver's page tables are not copied for each job); the
        // job process asks for the parent-death signal itself ([`die_with_driver`]).
        let mut cmd = Command::new(&self.exe);
        cmd.args(verbosity_flag())
            .arg("__job")
            .arg(&launch.spec)
            .arg("--driver")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        if launch.kind != "exec" {
            cmd.envs(missing_tuning());
            cmd.envs(thread_env(launch.resources.threads));
        }
        let mut child = cmd.spawn()?;
        self.groups.insert(launch.job, child.id());
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let outcome = match child.wait() {
                Ok(status) if status.success() => Outcome::Succeeded,
                Ok(status) => Outcome::Failed(describe(status)),
                Err(e) => Outcome::Failed(format!("lost track of the job process: {e}")),
            };
            let _ = tx.send((launch.job, outcome));
        });
        Ok(())
    }

    fn wait(&mut self, progress: &mut Progress) -> (usize, Outcome) {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok((job, outcome)) => {
                    self.groups.remove(&job);
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
        self.groups.len()
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
