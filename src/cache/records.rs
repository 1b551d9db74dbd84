//! What the sled index stores: one record per cache key, the last run of every job of every
//! workflow (for `flora plan`'s reasons), artifact metadata, and memoised digests of external files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::hash::Digest;

/// A finished job: key -> artifact, with its provenance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    /// The job's cache key.
    pub key: Digest,
    /// The digest (and folder name) of its artifact.
    pub artifact: Digest,
    /// The workflow file (canonical path) that ran it.
    pub workflow: PathBuf,
    /// The workflow's name.
    pub workflow_name: String,
    /// The job id (`stage` or `stage[item]`).
    pub job: String,
    /// The stage.
    pub stage: String,
    /// The stage kind and its version.
    pub kind: String,
    /// The kind's version.
    pub kind_version: u32,
    /// The canonical params.
    pub params: serde_json::Value,
    /// Each input: name, reference as written, digest.
    pub inputs: Vec<InputRecord>,
    /// When it started (RFC 3339, UTC).
    pub started: String,
    /// How long it ran, in seconds.
    pub duration_s: f64,
    /// The flora that ran it.
    pub flora_version: String,
    /// The machine it ran on.
    pub host: String,
    /// Its log file.
    pub log: PathBuf,
    /// GPU devices it was given (none: the CPU).
    #[serde(default)]
    pub gpus: Vec<usize>,
    /// CPU threads it was given.
    #[serde(default)]
    pub threads: usize,
}

/// One input of a finished job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputRecord {
    /// The input's name.
    pub name: String,
    /// The reference as written in the workflow.
    pub source: String,
    /// Its content digest.
    pub digest: Digest,
}

/// The last run of one job of one workflow: what `flora plan` compares against to say why a job
/// must run again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastRun {
    /// The key it ran (or was found cached) under.
    pub key: Digest,
    /// The kind's version then.
    pub kind_version: u32,
    /// Its params then.
    pub params: serde_json::Value,
    /// Its input digests then.
    pub inputs: BTreeMap<String, Digest>,
}

/// Metadata of a published artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArtifactRecord {
    /// Total size of its files in bytes.
    pub size: u64,
    /// When it was published (seconds since the Unix epoch).
    pub created: u64,
}

/// A memoised digest of an external file, valid while size, mtime and inode are unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileMemo {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode number.
    pub ino: u64,
    /// Content digest.
    pub digest: Digest,
}
