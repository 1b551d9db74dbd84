//! Executors: where a job's process runs. The scheduler hands them ready jobs and hears back when
//! each ends; it never learns how the process was started.
//!
//! Every job runs as `flora __job SPEC` (the hidden `job` subcommand), so a job crashes alone,
//! its output goes straight to its log, and a cluster executor runs the same command on a node.
//!
//! Built-in stage kinds run with glibc's malloc told to keep freed memory rather than return it
//! to the kernel at once (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, unless already
//! set): model training allocates and frees tensors of tens of megabytes every step, and
//! otherwise spends a fifth of its time having the kernel zero fresh pages (measured: one
//! pretraining step of the paper's model went from 7.57 s to 7.08 s). `exec` jobs get the
//! environment unchanged.

pub mod local;
pub mod slurm;

use std::path::PathBuf;

use crate::dag::Resources;
use crate::progress::Progress;

/// glibc malloc settings for built-in kinds (see the module notes).
pub const MALLOC_TUNING: [(&str, &str); 2] = [
    ("MALLOC_MMAP_THRESHOLD_", "33554432"),
    ("MALLOC_TRIM_THRESHOLD_", "17179869184"),
];

/// A job ready to start.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The job's index in the graph.
    pub job: usize,
    /// Its id, for messages.
    pub id: String,
    /// Its stage kind.
    pub kind: String,
    /// The spec file the job process reads.
    pub spec: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// What it asked for (GPUs: what it is to be given).
    pub resources: Resources,
}

/// How a job process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Succeeded,
    /// Anything else, said in words.
    Failed(String),
}

/// Starts job processes and reports their ends.
pub trait Executor {
    /// Starts `launch`; an error means it could not be started at all.
    fn submit(&mut self, launch: Launch) -> std::io::Result<()>;
    /// Blocks until some started job ends, and says which and how; may show what it waits on
    /// in `progress`.
    fn wait(&mut self, progress: &mut Progress) -> (usize, Outcome);
    /// How many started jobs have not been reported yet.
    fn running(&self) -> usize;
    /// Whether a cluster places the jobs and hands them their CPUs and GPUs, so that the
    /// scheduler budgets none of this machine's.
    fn places_jobs(&self) -> bool {
        false
    }
}

/// Appends `text` to a job's log, best effort (a log that cannot be written loses the line).
pub(crate) fn append_log(path: &std::path::Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}
