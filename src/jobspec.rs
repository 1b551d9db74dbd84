//! The job spec: everything a job process needs, written by the driver as JSON and read by
//! `flora __job SPEC`, locally or on a cluster node.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use flora_stages::Context;

use crate::registry;

/// One job, ready to run anywhere that sees the same file system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job id, for messages.
    pub job: String,
    /// The stage kind.
    pub kind: String,
    /// Its canonical params.
    pub params: serde_json::Value,
    /// Inputs, output folder, work folder, resources.
    pub context: Context,
}

impl JobSpec {
    /// Writes the spec to `path`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write the job spec {}", path.display()))
    }

    /// Reads a spec.
    pub fn read(path: &Path) -> anyhow::Result<JobSpec> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the job spec {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a flora job spec", path.display()))
    }

    /// Makes the job's output and work folders.
    pub fn make_folders(&self) -> anyhow::Result<()> {
        for dir in [&self.context.out, &self.context.work] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(())
    }

    /// What a job logs at `-v` before it runs: its folders, GPUs and inputs, a line each.
    pub fn described(&self) -> Vec<String> {
        let ctx = &self.context;
        let mut lines = vec![format!(
            "job {} (kind {}): output {}, work folder {}, GPUs {:?}",
            self.job,
            self.kind,
            ctx.out.display(),
            ctx.work.display(),
            ctx.gpus
        )];
        for (name, path) in &ctx.inputs {
            lines.push(format!("input {name}: {}", path.display()));
        }
        lines
    }

    /// Empties the job's output folder (its scratch folder): what an earlier attempt wrote
    /// there must not end up in the artifact. Returns whether there was anything.
    pub fn empty_output(&self) -> anyhow::Result<bool> {
        let out = &self.context.out;
        let held = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
        if held {
            crate::cache::make_writable(out);
            std::fs::remove_dir_all(out)
                .with_context(|| format!("cannot empty {}", out.display()))?;
        }
        Ok(held)
    }

    /// Runs the job in this process (the body of `flora __job`).
    pub fn run(&self) -> anyhow::Result<()> {
        let kind = registry::lookup(&self.kind)
            .with_context(|| format!("this flora has no stage kind `{}`", self.kind))?;
        // A fresh job's output folder is empty. One that holds files was an earlier attempt's,
        // run again in place: Slurm requeues a job after a node failure or a pre-emption by
        // itself where it is configured to (its default), as the same job in the same folder.
        if self.empty_output()? {
            eprintln!(
                "flora: removed what an earlier attempt of this job left in its output folder \
                 (Slurm ran it again)"
            );
        }
        self.make_folders()?;
        for line in self.described() {
            tracing::debug!("{line}");
        }
        // A built-in kind's pools, as the executor's environment sized them (an `exec` job's
        // program gets `FLORA_THREADS` and keeps to it itself).
        if self.kind != "exec" {
            // Opened here, so that a missing OpenBLAS fails the job before any work.
            flora_stages::openblas::load().map_err(anyhow::Error::msg)?;
            eprintln!("flora: CPU threads: {}", flora_stages::threads::in_use());
        }
        (kind.run)(&self.params, &self.context).with_context(|| format!("job {}", self.job))
    }
}

/// The marker a cluster job writes beside its spec once `flora __job SPEC` succeeded (the
/// node's name in it, then the job's start and end in seconds since the epoch by the node's
/// clock): a cluster driver waits until it sees it, so that it never publishes an output folder
/// that its file system does not show in full yet (NFS caches what it has seen).
pub fn done_marker(spec: &Path) -> std::path::PathBuf {
    spec.with_extension("done")
}

/// The shell command that writes the end marker `done` (a shell word: a quoted path, or
/// `"$3"`) as [`DoneMarker::parse`] reads it, for a job that set `$start` to `$(date +%s.%N)`
/// as it started. It is renamed into place once written: a driver looks for it while the job
/// runs.
pub fn done_marker_command(done: &str) -> String {
    format!(
        "{{ uname -n; echo \"$start $(date +%s.%N)\"; }} > {done}.part && mv {done}.part {done}"
    )
}

/// The marker a job of a Slurm bundle writes beside its spec when `flora __job` fails: its exit
/// status (a lone job's failure is its Slurm job's).
pub fn failed_marker(spec: &Path) -> std::path::PathBuf {
    spec.with_extension("failed")
}

/// The marker a job of a Slurm bundle leaves beside its spec as it starts: a job without one
/// when its bundle ended never started, so it goes on in a new Slurm job whatever the bundle's
/// end.
pub fn started_marker(spec: &Path) -> std::path::PathBuf {
    spec.with_extension("started")
}

/// How a cluster job ended, going by its markers: `Some(Ok(()))` after a success,
/// `Some(Err(status))` after a bundled job's failure, `None` while neither shows. The failed
/// marker is removed once read.
pub fn marker_end(spec: &Path) -> Option<Result<(), String>> {
    if done_marker(spec).exists() {
        return Some(Ok(()));
    }
    let failed = failed_marker(spec);
    let status = std::fs::read_to_string(&failed).ok()?;
    let _ = std::fs::remove_file(&failed);
    Some(Err(status.trim().to_string()))
}

/// What a job's end marker says: the node it ran on, and how long it ran there (a cluster
/// driver's own clock would count the time it queued, and in a bundle the jobs before it).
#[derive(Debug, Clone, PartialEq)]
pub struct DoneMarker {
    /// `uname -n` on the node.
    pub node: String,
    /// Seconds from the job's start to its end, where the marker has both.
    pub seconds: Option<f64>,
}

impl DoneMarker {
    /// Reads `text`, a marker's content: the node's name on the first line and, on the second,
    /// `START END` (from `date +%s.%N`; a `date` without `%N` leaves no usable time).
    pub fn parse(text: &str) -> Option<DoneMarker> {
        let mut lines = text.lines();
        let node = lines.next()?.trim().to_string();
        if node.is_empty() {
            return None;
        }
        let seconds = lines.next().and_then(|l| {
            let (start, end) = l.trim().split_once(' ')?;
            let span = end.trim().parse::<f64>().ok()? - start.trim().parse::<f64>().ok()?;
            (span.is_finite() && span >= 0.0).then_some(span)
        });
        Some(DoneMarker { node, seconds })
    }
}

#[cfg(test)]
mod tests {
    use super::DoneMarker;

    #[test]
    fn an_end_marker_gives_the_node_and_the_jobs_own_time() {
        let d = DoneMarker::parse("node7\n1764400000.250 1764400002.750\n").unwrap();
        assert_eq!(d.node, "node7");
        assert_eq!(d.seconds, Some(2.5));
        // An older marker (the node only), or a `date` without nanoseconds: no time.
        for text in ["node7\n", "node7\n1764400000.N 1764400002.N\n"] {
            let d = DoneMarker::parse(text).unwrap();
            assert_eq!((d.node.as_str(), d.seconds), ("node7", None), "{text:?}");
        }
        assert_eq!(DoneMarker::parse(""), None);
        assert_eq!(DoneMarker::parse("\n"), None);
    }
}
