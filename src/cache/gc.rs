//! `flora cache gc`: remove what nothing asked to keep.
//!
//! Besides artifacts, a cache gathers things no run ever removes by itself: the work folders
//! (checkpoints) of jobs that failed or were stopped and will never run under that key again,
//! the logs of such jobs, memos of input files that changed or are gone, and the last runs of
//! workflow files that are gone. A collection removes them too, by the same rule: what the kept
//! workflows use stays, and so does anything newer than `--newer-than`.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::records::{ArtifactRecord, FileMemo, JobRecord};
use super::{make_writable, parse, path_of_bytes, split_history_key, Cache};
use crate::hash::Digest;

/// What a collection keeps whatever its age: what the kept workflows use now.
#[derive(Debug, Default)]
pub struct Keep {
    /// The artifacts of their cached jobs.
    pub artifacts: HashSet<Digest>,
    /// The keys of their jobs that are known now, cached or still to run: the logs and work
    /// folders (a stopped pretraining's checkpoints) under these keys stay.
    pub keys: HashSet<Digest>,
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Default)]
pub struct GcReport {
    /// Artifacts removed, each with its size in bytes.
    pub artifacts: Vec<(Digest, u64)>,
    /// Bytes of artifacts freed.
    pub bytes: u64,
    /// Artifacts kept.
    pub kept: usize,
    /// Work folders of jobs that never finished, by key, each with its size in bytes.
    pub work: Vec<(Digest, u64)>,
    /// Logs removed.
    pub logs: usize,
    /// Bytes of logs freed.
    pub log_bytes: u64,
    /// Index entries dropped: job records whose artifact is gone, memos of input files that
    /// changed or are gone, last runs of workflow files that are gone.
    pub index_entries: usize,
}

impl GcReport {
    /// Bytes of work folders freed.
    pub fn work_bytes(&self) -> u64 {
        self.work.iter().map(|(_, size)| size).sum()
    }
}

/// Seconds since the epoch of `path`'s last change, if it can be read.
fn modified_secs(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path)
        .ok()
        .and_then(|m| u64::try_from(m.mtime()).ok())
}

/// The key a log file belongs to: `<key>.log`, or `<key>.bundle.log` (a Slurm bundle's own
/// output, named after its first job).
fn key_of_log(name: &str) -> Option<Digest> {
    let stem = name.strip_suffix(".log")?;
    let stem = stem.strip_suffix(".bundle").unwrap_or(stem);
    stem.parse().ok()
}

impl Cache {
    /// Removes every artifact that is neither kept nor published after `newer_than` (seconds
    /// since the epoch), with its index records and logs; then the work folders and logs of keys
    /// that are neither kept, nor of a remaining record, nor changed after `newer_than`; then
    /// stale index entries. Collections are always removed (they are links, rebuilt on demand).
    pub fn gc(
        &self,
        keep: &Keep,
        newer_than: Option<u64>,
        dry_run: bool,
    ) -> anyhow::Result<GcReport> {
        let recent = |t: Option<u64>| matches!((newer_than, t), (Some(n), Some(t)) if t >= n);
        let mut report = GcReport::default();
        let doomed = self.doomed_artifacts(keep, &recent, &mut report)?;

        // Records that stay: their artifact stays, or (gone already) their key is kept.
        let mut records_left: HashSet<Digest> = HashSet::new();
        let mut records_gone: Vec<(sled::IVec, PathBuf)> = Vec::new();
        for kv in self.jobs.iter() {
            let (k, v) = kv?;
            let Some(rec) = parse::<JobRecord>(&v) else {
                continue;
            };
            let present = self.artifact_path(&rec.artifact).is_dir();
            if (present && !doomed.contains(&rec.artifact)) || keep.keys.contains(&rec.key) {
                records_left.insert(rec.key);
            } else {
                if !doomed.contains(&rec.artifact) {
                    report.index_entries += 1;
                }
                records_gone.push((k, rec.log));
            }
        }
        let spared = |key: &Digest, path: &Path| {
            keep.keys.contains(key) || records_left.contains(key) || recent(modified_secs(path))
        };

        let mut work = Vec::new();
        for (key, path) in self.work_folders() {
            if !spared(&key, &path) {
                let size = crate::hash::tree_size(&path).unwrap_or(0);
                report.work.push((key, size));
                work.push(path);
            }
        }
        report.work.sort();
        let mut logs = Vec::new();
        for (key, path) in keyed_entries(&self.root.join("logs"), key_of_log) {
            if !spared(&key, &path) {
                report.logs += 1;
                report.log_bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                logs.push(path);
            }
        }
        let memos = self.stale_memos()?;
        let history = self.stale_history()?;
        report.index_entries += memos.len() + history.len();
        if dry_run {
            return Ok(report);
        }

        for (digest, _) in &report.artifacts {
            let path = self.artifact_path(digest);
            make_writable(&path);
            std::fs::remove_dir_all(&path)?;
            self.artifacts.remove(digest.0)?;
        }
        for (k, log) in records_gone {
            let _ = std::fs::remove_file(log);
            self.jobs.remove(k)?;
        }
        for path in work {
            make_writable(&path);
            std::fs::remove_dir_all(&path)?;
        }
        for path in logs {
            let _ = std::fs::remove_file(path);
        }
        for k in memos {
            self.files.remove(k)?;
        }
        for k in history {
            self.history.remove(k)?;
        }
        let collections = self.root.join("collections");
        std::fs::remove_dir_all(&collections)?;
        std::fs::create_dir_all(&collections)?;
        self.flush()?;
        Ok(report)
    }

    /// The work folders left by jobs that did not finish (a finished job's is removed), by key.
    pub fn work_folders(&self) -> Vec<(Digest, PathBuf)> {
        let mut folders: Vec<_> =
            keyed_entries(&self.root.join("work"), |n| n.parse().ok()).collect();
        folders.sort();
        folders
    }

    /// Fills `report` with the artifacts to remove, and returns them.
    fn doomed_artifacts(
        &self,
        keep: &Keep,
        recent: &dyn Fn(Option<u64>) -> bool,
        report: &mut GcReport,
    ) -> anyhow::Result<HashSet<Digest>> {
        let mut doomed = HashSet::new();
        for (digest, path) in keyed_entries(&self.root.join("artifacts"), |n| n.parse().ok()) {
            let meta: Option<ArtifactRecord> =
                self.artifacts.get(digest.0)?.and_then(|v| parse(&v));
            if keep.artifacts.contains(&digest) || recent(meta.as_ref().map(|m| m.created)) {
                report.kept += 1;
                continue;
            }
            let size = meta
                .map(|m| m.size)
                .unwrap_or_else(|| crate::hash::tree_size(&path).unwrap_or(0));
            report.bytes += size;
            report.artifacts.push((digest, size));
            doomed.insert(digest);
        }
        report.artifacts.sort();
        Ok(doomed)
    }

    /// Memos of input files that are gone or changed since they were hashed (a changed file is
    /// hashed again anyway; its memo would only be overwritten).
    fn stale_memos(&self) -> anyhow::Result<Vec<sled::IVec>> {
        let mut stale = Vec::new();
        for kv in self.files.iter() {
            let (k, v) = kv?;
            let path = path_of_bytes(&k);
            let current = match (parse::<FileMemo>(&v), std::fs::metadata(path)) {
                (Some(m), Ok(meta)) => m.describes(&meta),
                _ => false,
            };
            if !current {
                stale.push(k);
            }
        }
        Ok(stale)
    }

    /// Last runs recorded for workflow files that no longer exist.
    fn stale_history(&self) -> anyhow::Result<Vec<sled::IVec>> {
        let mut stale = Vec::new();
        for kv in self.history.iter() {
            let (k, _) = kv?;
            if !split_history_key(&k).0.exists() {
                stale.push(k);
            }
        }
        Ok(stale)
    }
}

/// The entries of `dir` whose names `key` reads as a digest, with their paths.
fn keyed_entries(
    dir: &Path,
    key: impl Fn(&str) -> Option<Digest>,
) -> impl Iterator<Item = (Digest, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |e| Some((key(e.file_name().to_str()?)?, e.path())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_belongs_to_the_key_in_its_name() {
        let key = Digest::of(b"job");
        assert_eq!(key_of_log(&format!("{}.log", key.to_hex())), Some(key));
        assert_eq!(
            key_of_log(&format!("{}.bundle.log", key.to_hex())),
            Some(key)
        );
        assert_eq!(key_of_log("notes.log"), None);
        assert_eq!(key_of_log(&key.to_hex()), None);
    }
}
