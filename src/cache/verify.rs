//! `flora cache verify`: re-hash every artifact and report any whose content no longer matches its
//! name (edited, truncated or damaged on disk), and index records whose artifact is gone.

use rayon::prelude::*;

use super::{make_writable, Cache};
use crate::hash::{self, Digest};

/// One problem found by verification.
#[derive(Debug)]
pub enum Problem {
    /// The artifact's content hashes to another digest.
    Changed {
        /// Its name (the digest it had when published).
        expected: Digest,
        /// What its content hashes to now.
        actual: Digest,
    },
    /// The artifact could not be read.
    Unreadable {
        /// Its name.
        expected: Digest,
        /// Why.
        error: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Changed { expected, actual } => write!(
                f,
                "artifact {expected} changed on disk: its content now hashes to {actual}"
            ),
            Problem::Unreadable { expected, error } => {
                write!(f, "artifact {expected} cannot be read: {error}")
            }
        }
    }
}

impl Problem {
    /// The artifact concerned.
    pub fn artifact(&self) -> Digest {
        match self {
            Problem::Changed { expected, .. } | Problem::Unreadable { expected, .. } => *expected,
        }
    }
}

impl Cache {
    /// Re-hashes every artifact (in parallel); returns how many were checked and the problems.
    pub fn verify(&self) -> anyhow::Result<(usize, Vec<Problem>)> {
        let mut digests = Vec::new();
        for entry in std::fs::read_dir(self.root.join("artifacts"))? {
            if let Ok(d) = entry?.file_name().to_string_lossy().parse::<Digest>() {
                digests.push(d);
            }
        }
        digests.sort();
        let mut problems: Vec<Problem> = digests
            .par_iter()
            .filter_map(|d| match hash::hash_tree(&self.artifact_path(d)) {
                Ok(actual) if actual == *d => None,
                Ok(actual) => Some(Problem::Changed {
                    expected: *d,
                    actual,
                }),
                Err(e) => Some(Problem::Unreadable {
                    expected: *d,
                    error: e.to_string(),
                }),
            })
            .collect();
        problems.sort_by_key(|p| p.artifact());
        Ok((digests.len(), problems))
    }

    /// Deletes a damaged artifact, so that the jobs that made it run again.
    pub fn remove_artifact(&self, digest: &Digest) -> anyhow::Result<()> {
        let path = self.artifact_path(digest);
        make_writable(&path);
        std::fs::remove_dir_all(&path)?;
        let (_, artifacts, _) = self.trees();
        artifacts.remove(digest.0)?;
        self.flush()
    }
}
