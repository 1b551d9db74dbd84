//! The local executor: each job is a child process of this `flora`.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};

use super::{missing_tuning, thread_env, verbosity_flag, Executor, Launch, Outcome};
use crate::progress::Progress;

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
        cmd.args(verbosity_flag())
            .arg("__job")
            .arg(&launch.spec)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if launch.kind != "exec" {
            cmd.envs(missing_tuning());
            cmd.envs(thread_env(launch.resources.threads));
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

    fn wait(&mut self, _progress: &mut Progress) -> (usize, Outcome) {
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
