//! `flora log` while a run runs the job: the log so far, or with `--follow` the log as it grows
//! until the job ends. The run holds the cache (and its index), so the job is found through the
//! cache's notes of its running jobs (`cache::running`), not through the index.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::lock::{CacheLock, LockError, Wait};
use crate::cache::running::{self, RunningJob};

/// How often `--follow` looks for more of the log.
const POLL: Duration = Duration::from_millis(300);

/// Every job of the workflow at `workflow` that a run holding the cache at `root` is running
/// now (none when no run holds it: notes a killed run left are not trusted).
pub fn running_in(root: &Path, workflow: &Path) -> Vec<RunningJob> {
    let jobs: Vec<RunningJob> = running::list(root)
        .into_iter()
        .filter(|j| j.workflow == workflow)
        .collect();
    if jobs.is_empty() || !held(root) {
        return Vec::new();
    }
    jobs
}

/// Whether another flora holds the cache at `root`.
fn held(root: &Path) -> bool {
    matches!(
        CacheLock::acquire(root, Wait::NoWait, |_| {}),
        Err(LockError::Busy { .. })
    )
}

/// Prints the logs of `jobs` so far; with `follow`, then what is added to them until each job
/// ends (or the run holding the cache does).
pub fn print(root: &Path, jobs: &[RunningJob], follow: bool) -> anyhow::Result<()> {
    let many = jobs.len() > 1;
    let mut open: Vec<(&RunningJob, u64)> = Vec::new();
    for job in jobs {
        let state = match job.cluster {
            true => "was submitted to the cluster",
            false => "is running, started",
        };
        eprintln!(
            "flora: {} {state} {}{}",
            job.job,
            job.started,
            if follow {
                "; its log follows until it ends"
            } else {
                "; its log so far"
            }
        );
        if many {
            outln!("==> {} (running) <==", job.job);
        }
        let read = copy_from(&job.log, 0)?;
        open.push((job, read));
    }
    let mut last_shown = jobs.last().map(|j| j.job.as_str());
    while follow && !open.is_empty() {
        std::thread::sleep(POLL);
        let live: Vec<PathBuf> = if held(root) {
            running::list(root).into_iter().map(|j| j.log).collect()
        } else {
            Vec::new()
        };
        let mut still = Vec::new();
        for (job, offset) in open {
            if std::fs::metadata(&job.log).is_ok_and(|m| m.len() > offset)
                && many
                && last_shown != Some(job.job.as_str())
            {
                outln!("\n==> {} (running) <==", job.job);
                last_shown = Some(job.job.as_str());
            }
            let offset = copy_from(&job.log, offset)?;
            if live.contains(&job.log) {
                still.push((job, offset));
            } else {
                eprintln!("flora: {} ended", job.job);
            }
        }
        open = still;
    }
    Ok(())
}

/// Writes what `log` holds from `offset` on to stdout; returns the new end.
fn copy_from(log: &Path, offset: u64) -> anyhow::Result<u64> {
    let mut file = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(offset),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot read the log {}: {e}",
                log.display()
            ))
        }
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&bytes)?;
    stdout.flush()?;
    Ok(offset + bytes.len() as u64)
}
