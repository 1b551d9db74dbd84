//! The local executor: each job is a child process of this `flora`.
//!
//! Built-in stage kinds run with glibc's malloc told to keep freed memory rather than return it
//! to the kernel at once (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, unless already
//! set): model training allocates and frees tensors of tens of megabytes every step, and
//! otherwise spends a fifth of its time having the kernel zero fresh pages (measured: one
//! pretraining step of the paper's model went from 7.57 s to 7.08 s). `exec` jobs get the
//! environment unchanged.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};

use super::{Executor, Launch, Outcome};

/// glibc malloc settings for built-in kinds (see the module notes).
const MALLOC_TUNING: [(&str, &str); 2] = [
    ("MALLOC_MMAP_THRESHOLD_", "33554432"),
    ("MALLOC_TRIM_THRESHOLD_", "17179869184"),
];

/// Runs jobs as child processes on this machine.
pub struct Local {
    exe: PathBuf,
    tx: Sender<(usize, Outcome)>,
    rx: Receiver<(usize, Outcome)>,
    running: usize,
}

impl Local {
    /// An executor that starts `exe __job SPEC` for each job.
    pub fn new(exe: PathBuf) -> Self {
        let (tx, rx) = channel();
        Local {
            exe,
            tx,
            rx,
            running: 0,
        }
    }
}

impl Executor for Local {
    fn submit(&mut self, launch: Launch) -> std::io::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("__job")
            .arg(&launch.spec)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if launch.kind != "exec" {
            for (var, value) in MALLOC_TUNING {
                if std::env::var_os(var).is_none() {
                    cmd.env(var, value);
                }
            }
        }
        let mut child = cmd.spawn()?;
        self.running += 1;
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

    fn wait(&mut self) -> (usize, Outcome) {
        let ended = self.rx.recv().expect("the executor holds a sender");
        self.running -= 1;
        ended
    }

    fn running(&self) -> usize {
        self.running
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
