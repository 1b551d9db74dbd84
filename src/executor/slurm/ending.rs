//! How a Slurm job ended, and what the run says of it: `scontrol`'s record of a job that left
//! the queue, each of its flora jobs' outcomes, the work folder's fingerprint that tells whether
//! a job saved something to go on from, why one failed, and the line that says why some are
//! submitted again.

use std::path::Path;
use std::process::Command;

use super::Tracked;
use crate::executor::Outcome;

/// How a job that left the queue ended.
pub(super) struct Final {
    /// Slurm's state, e.g. `COMPLETED`, `TIMEOUT`.
    pub state: String,
    /// Its `ExitCode` (`status:signal`).
    pub exit: Option<String>,
    /// Its `Reason`, e.g. `TimeLimit`.
    pub reason: Option<String>,
}

/// `scontrol show job`'s record of a job, or `None` when Slurm has forgotten it.
pub(super) fn settle(id: &str) -> Option<Final> {
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
pub(super) fn is_final(state: &str) -> bool {
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

/// A fingerprint of a work folder: each file's path, size and modification time (0 for a
/// folder that does not exist). It changes when a job saves a checkpoint there, whatever the
/// clocks of the node and of this machine say.
pub(super) fn work_print(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = crate::hash::walk(dir) else {
        return 0;
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for e in &entries {
        e.rel.hash(&mut h);
        if let Ok(meta) = std::fs::symlink_metadata(&e.path) {
            (meta.len(), meta.mtime(), meta.mtime_nsec()).hash(&mut h);
        }
    }
    h.finish()
}

/// How a job of Slurm job `id` (of `size` jobs) ended, from its end marker: a bundled job's
/// failure has its exit status.
pub(super) fn member_outcome(end: Result<(), String>, id: &str, size: usize) -> Outcome {
    match end {
        Ok(()) => Outcome::Succeeded,
        Err(status) => Outcome::Failed(format!(
            "exited with status {status} (in Slurm job {id}, a bundle of {size} jobs)"
        )),
    }
}

/// What a run says when it submits a Slurm job's jobs again: `ended` (which Slurm job, its jobs,
/// its end), whether some go on from their work folders, the continuation and the attempt (each
/// with its most), and the jobs that had not started.
pub(super) fn resubmission_line(
    ended: &str,
    from_work: bool,
    continuation: Option<(usize, usize)>,
    attempt: Option<(usize, usize)>,
    unstarted: &[String],
) -> String {
    let mut line = format!("{ended}; submitting it again");
    if from_work {
        line.push_str(" to go on from its work folder");
    }
    if let Some((n, most)) = continuation {
        line.push_str(&format!(" (continuation {n} of at most {most})"));
    }
    if let Some((n, most)) = attempt {
        line.push_str(&format!(" (attempt {n} of {most})"));
    }
    if !unstarted.is_empty() {
        line.push_str(&format!("; {} had not started", unstarted.join(", ")));
    }
    line
}

/// Why a job failed that Slurm ended before it could end itself, or (a bundled job, `before`
/// "started") before it could start.
pub(super) fn slurm_failure(id: &str, end: &Final, t: &Tracked, before: &str) -> String {
    let mut why = format!("Slurm job {id} ended {}", end.state);
    if let Some(code) = end.exit.as_ref().filter(|c| *c != "0:0") {
        why.push_str(&format!(" (exit code {code})"));
    }
    if let Some(r) = end.reason.as_ref().filter(|r| *r != "None") {
        why.push_str(&format!(": {r}"));
    }
    if t.attempt > 1 {
        why.push_str(&format!(" after {} submissions", t.attempt));
    }
    if let Some(output) = &t.output {
        why.push_str(&format!(
            " before this job {before} (a bundle of {} jobs; Slurm's output: {})",
            t.size,
            output.display()
        ));
    }
    why
}
