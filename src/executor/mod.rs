//! Executors: where a job's process runs. The scheduler hands them ready jobs and hears back when
//! each ends; it never learns how the process was started.
//!
//! Every job runs as `flora __job SPEC` (the hidden `job` subcommand), so a job crashes alone,
//! its output goes straight to its log, and a cluster executor can run the same command on a node.

pub mod local;

use std::path::PathBuf;

use crate::dag::Resources;

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
    /// What it asked for.
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
    /// Blocks until some started job ends, and says which and how.
    fn wait(&mut self) -> (usize, Outcome);
    /// How many started jobs have not been reported yet.
    fn running(&self) -> usize;
}
