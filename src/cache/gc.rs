//! `flora cache gc`: remove artifacts that nothing asked to keep.

use std::collections::HashSet;

use super::records::{ArtifactRecord, JobRecord};
use super::{make_writable, parse, Cache};
use crate::hash::Digest;

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Default)]
pub struct GcReport {
    /// Artifacts removed, each with its size in bytes.
    pub artifacts: Vec<(Digest, u64)>,
    /// Bytes freed.
    pub bytes: u64,
    /// Artifacts kept.
    pub kept: usize,
}

impl Cache {
    /// Removes every artifact that is neither in `keep` nor published after `newer_than` (seconds
    /// since the epoch), with its index records and logs. Collections are always removed (they are
    /// links, rebuilt on demand).
    pub fn gc(
        &self,
        keep: &HashSet<Digest>,
        newer_than: Option<u64>,
        dry_run: bool,
    ) -> anyhow::Result<GcReport> {
        let (jobs, artifacts, _) = self.trees();
        let mut report = GcReport::default();
        let mut doomed: HashSet<Digest> = HashSet::new();
        for entry in std::fs::read_dir(self.root.join("artifacts"))? {
            let entry = entry?;
            let Ok(digest) = entry.file_name().to_string_lossy().parse::<Digest>() else {
                continue;
            };
            let meta: Option<ArtifactRecord> = artifacts.get(digest.0)?.and_then(|v| parse(&v));
            let recent = match (newer_than, &meta) {
                (Some(t), Some(m)) => m.created >= t,
                _ => false,
            };
            if keep.contains(&digest) || recent {
                report.kept += 1;
                continue;
            }
            let size = meta
                .map(|m| m.size)
                .unwrap_or_else(|| crate::hash::tree_size(&entry.path()).unwrap_or(0));
            report.bytes += size;
            report.artifacts.push((digest, size));
            doomed.insert(digest);
        }
        report.artifacts.sort();
        if dry_run {
            return Ok(report);
        }
        for (digest, _) in &report.artifacts {
            let path = self.artifact_path(digest);
            make_writable(&path);
            std::fs::remove_dir_all(&path)?;
            artifacts.remove(digest.0)?;
        }
        for kv in jobs.iter() {
            let (k, v) = kv?;
            if let Some(rec) = parse::<JobRecord>(&v) {
                if doomed.contains(&rec.artifact) {
                    let _ = std::fs::remove_file(&rec.log);
                    jobs.remove(k)?;
                }
            }
        }
        let collections = self.root.join("collections");
        std::fs::remove_dir_all(&collections)?;
        std::fs::create_dir_all(&collections)?;
        self.flush()?;
        Ok(report)
    }
}
