//! Provenance of a report: which flora ran which jobs with which params on what, and how long
//! each took. The engine writes it (as JSON) for a stage kind that asks for it, from its cache
//! records of every job upstream of that stage; the `report` stage reads it.

use serde::{Deserialize, Serialize};

/// Where a report's artifacts came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The flora that wrote this file.
    pub flora_version: String,
    /// When this file was written (RFC 3339, UTC).
    pub written: String,
    /// The workflow.
    pub workflow: WorkflowInfo,
    /// Every job upstream of the report, in the workflow's order.
    pub jobs: Vec<JobInfo>,
}

/// The workflow file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowInfo {
    /// Its name.
    pub name: String,
    /// Its path.
    pub path: String,
    /// Its text when the report ran.
    pub text: String,
    /// `--set` overrides given on the command line.
    pub overrides: Vec<String>,
}

/// One upstream job, from its cache record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job id (`stage` or `stage[item]`).
    pub job: String,
    /// Its stage kind.
    pub kind: String,
    /// The kind's version.
    pub kind_version: u32,
    /// Its canonical params (defaults filled in).
    pub params: serde_json::Value,
    /// Its cache key.
    pub key: String,
    /// The digest of its artifact.
    pub artifact: String,
    /// Each input: name, reference as written, content digest.
    pub inputs: Vec<(String, String, String)>,
    /// When it started (RFC 3339, UTC).
    pub started: String,
    /// Seconds it ran.
    pub duration_s: f64,
    /// The machine it ran on.
    pub host: String,
    /// Where it computed: `cpu` or the GPUs it was given.
    pub device: String,
    /// CPU threads it was given.
    pub threads: usize,
    /// The flora that ran it.
    pub flora_version: String,
}

impl Provenance {
    /// Reads a provenance file.
    pub fn read(path: &std::path::Path) -> Result<Provenance, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}
