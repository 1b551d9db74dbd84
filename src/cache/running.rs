//! The jobs a run is running now, for the commands that cannot open the cache while it runs
//! (`flora log`): one small JSON file per job in `<cache>/running/`, written when the job
//! starts and removed when it ends. The next flora to take the cache's lock removes what a
//! killed run left there, and a reader trusts the files only while the lock is held.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hash::Digest;

/// The folder of the running-job files under a cache's root (made when the cache is opened).
pub const FOLDER: &str = "running";

/// One running job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningJob {
    /// The workflow file of the run, as the run read it (canonical).
    pub workflow: PathBuf,
    /// The job's id (`stage` or `stage[item]`).
    pub job: String,
    /// Its log.
    pub log: PathBuf,
    /// When it started, or was submitted to a cluster (RFC 3339).
    pub started: String,
    /// Whether a cluster runs it (it may still be queued there).
    #[serde(default)]
    pub cluster: bool,
}

fn file(root: &Path, key: &Digest) -> PathBuf {
    root.join(FOLDER).join(format!("{}.json", key.to_hex()))
}

/// Notes that the job of `key` is running (best effort: a reader only misses it).
pub fn mark(root: &Path, key: &Digest, job: &RunningJob) {
    let path = file(root, key);
    let tmp = path.with_extension("json.tmp");
    let written = std::fs::write(&tmp, serde_json::to_vec(job).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::debug!("cannot note {} as running: {e}", job.job);
    }
}

/// Notes that the job of `key` ended.
pub fn unmark(root: &Path, key: &Digest) {
    let _ = std::fs::remove_file(file(root, key));
}

/// Removes every note (the caller holds the lock: no run of another flora is live).
pub fn clear(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root.join(FOLDER)) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The jobs noted as running in the cache at `root`, by their start (files being written are
/// skipped). Only meaningful while another flora holds the cache's lock.
pub fn list(root: &Path) -> Vec<RunningJob> {
    let Ok(entries) = std::fs::read_dir(root.join(FOLDER)) else {
        return Vec::new();
    };
    let mut jobs: Vec<RunningJob> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    jobs.sort_by(|a, b| (&a.started, &a.job).cmp(&(&b.started, &b.job)));
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_jobs_are_listed_until_unmarked_or_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(list(root).is_empty());
        std::fs::create_dir_all(root.join(FOLDER)).unwrap();
        let key = |b: u8| Digest::of(&[b]);
        let job = |id: &str, started: &str| RunningJob {
            workflow: "/w/wf.yaml".into(),
            job: id.into(),
            log: format!("/c/logs/{id}.log").into(),
            started: started.into(),
            cluster: false,
        };
        mark(root, &key(1), &job("b", "2026-11-29T10:00:01Z"));
        mark(root, &key(2), &job("a", "2026-11-29T10:00:00Z"));
        let ids: Vec<String> = list(root).into_iter().map(|j| j.job).collect();
        assert_eq!(ids, ["a", "b"]);
        unmark(root, &key(2));
        assert_eq!(list(root), [job("b", "2026-11-29T10:00:01Z")]);
        clear(root);
        assert!(list(root).is_empty());
    }
}
