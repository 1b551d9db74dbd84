//! Executors: where a job's process runs. The scheduler hands them ready jobs and hears back when
//! each ends; it never learns how the process was started.
//!
//! Every job runs in a process of its own, so a job crashes alone and its output goes straight
//! to its log: a built-in kind as `flora __job SPEC` (the hidden `job` subcommand), which a
//! cluster executor runs on a node for `exec` jobs too; the local executor starts an `exec`
//! job's program itself.
//!
//! Built-in stage kinds run with their `threads` as every thread pool's size ([`thread_env`])
//! and with [`JOB_TUNING`] in their environment (each variable unless already set); `exec` jobs
//! get the environment unchanged (and `FLORA_THREADS`):
//! - glibc's malloc keeps freed memory rather than return it to the kernel at once
//!   (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`): model training allocates and frees
//!   tensors of tens of megabytes every step, and otherwise spends a fifth of its time having the
//!   kernel zero fresh pages (measured: one pretraining step of the paper's model went from
//!   7.57 s to 7.08 s);
//! - OpenBLAS's threads go to sleep as soon as a matrix product ends
//!   (`OPENBLAS_THREAD_TIMEOUT=4`, its minimum) instead of spinning for about 2^28 cycles, which
//!   took the cores from the element-wise ops between products (measured, 6 steps x 3 runs,
//!   alternating: 5.09/5.08/5.09 s per step before, 4.81/4.73/4.47 s after).

pub mod local;
pub mod reaper;
pub mod slurm;

use std::path::PathBuf;

use crate::dag::Resources;
use crate::progress::Progress;

/// Environment settings for built-in kinds: malloc and OpenBLAS (see the module notes).
pub const JOB_TUNING: [(&str, &str); 3] = [
    ("MALLOC_MMAP_THRESHOLD_", "33554432"),
    ("MALLOC_TRIM_THRESHOLD_", "17179869184"),
    ("OPENBLAS_THREAD_TIMEOUT", "4"),
];

/// The settings of [`JOB_TUNING`] whose variables this process's environment does not set
/// (a value the user set wins).
pub fn missing_tuning() -> impl Iterator<Item = (&'static str, &'static str)> {
    JOB_TUNING
        .into_iter()
        .filter(|(var, _)| std::env::var_os(var).is_none())
}

/// The thread counts a built-in job starts with, all its `threads`: rayon's global pool
/// (`RAYON_NUM_THREADS`), candle's pool for element-wise ops (`CANDLE_NUM_THREADS`) and
/// OpenBLAS's (`OPENBLAS_NUM_THREADS`). Each pool reads its variable once, when it starts, so
/// they are set in the job's environment, over any the user set: the workflow's `threads` is the
/// one knob.
pub fn thread_env(threads: usize) -> [(&'static str, String); 3] {
    let n = threads.max(1).to_string();
    [
        ("RAYON_NUM_THREADS", n.clone()),
        ("CANDLE_NUM_THREADS", n.clone()),
        ("OPENBLAS_NUM_THREADS", n),
    ]
}

/// Starts this same command again with [`JOB_TUNING`] when any of it is missing (glibc and
/// OpenBLAS read it only at start-up), so that benchmarks measure what jobs get; returns when
/// the environment is already tuned, and exits with the second run's status otherwise.
pub fn rerun_tuned() -> std::io::Result<()> {
    let missing: Vec<_> = missing_tuning().collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1)).envs(missing);
    std::process::exit(cmd.status()?.code().unwrap_or(1));
}

/// A flag that the first SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal or SSH session went
/// away) raises, for an executor to stop its jobs and let the run end; a second one ends the
/// process at once, with status 130. A SIGHUP that this process started out ignoring (`nohup
/// flora run ...`) stays ignored.
pub fn interrupt_flag() -> std::io::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use std::sync::{atomic::AtomicBool, Arc};
    let interrupted = Arc::new(AtomicBool::new(false));
    let hangup = (!ignored(SIGHUP)).then_some(SIGHUP);
    for signal in [SIGINT, SIGTERM].into_iter().chain(hangup) {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&interrupted))?;
        signal_hook::flag::register(signal, Arc::clone(&interrupted))?;
    }
    Ok(interrupted)
}

/// Whether `signal` is ignored in this process (as `nohup` leaves SIGHUP).
fn ignored(signal: libc::c_int) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one into `old`, which
    // lives on this stack.
    #[allow(unsafe_code)]
    unsafe {
        let mut old = std::mem::zeroed::<libc::sigaction>();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The `-v` flags that give a job process this process's log level (its log file then has the
/// same detail as the driver's output), or none at the default level.
pub fn verbosity_flag() -> Option<&'static str> {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => Some("-vv"),
        LevelFilter::DEBUG | LevelFilter::INFO => Some("-v"),
        _ => None,
    }
}

/// A job ready to start.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The job's index in the graph.
    pub job: usize,
    /// Its id, for messages.
    pub id: String,
    /// Its stage kind.
    pub kind: String,
    /// Where a job process reads its spec from: the executor writes it there if it starts one.
    pub spec_file: PathBuf,
    /// The spec: what the job runs, with its inputs and folders.
    pub spec: crate::jobspec::JobSpec,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// What it asked for (GPUs: what it is to be given).
    pub resources: Resources,
}

impl Launch {
    /// Writes the spec to its file, for a job process to read.
    pub fn write_spec(&self) -> std::io::Result<()> {
        self.spec
            .write(&self.spec_file)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
    }
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
    /// How many of `--jobs`' places the started jobs take (a Slurm bundle of many jobs takes
    /// one).
    fn busy(&self) -> usize {
        self.running()
    }
    /// The scheduler has no more ready jobs to give for now: start any held back to be started
    /// together (a Slurm bundle not yet full).
    fn start_held(&mut self) {}
    /// The run stops: gives back the jobs held back and not started (their graph indices),
    /// which will not run.
    fn withdraw_held(&mut self) -> Vec<usize> {
        Vec::new()
    }
    /// Whether a cluster places the jobs and hands them their CPUs and GPUs, so that the
    /// scheduler budgets none of this machine's.
    fn places_jobs(&self) -> bool {
        false
    }
    /// Whether the run was interrupted (SIGINT or SIGTERM): no job may start any more.
    fn interrupted(&self) -> bool {
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
