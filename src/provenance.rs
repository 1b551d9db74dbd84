//! The provenance file given to jobs whose kind asks for it (`report`): the workflow's text and
//! `--set` flags, and the cache record of every job upstream of the job (params, key, artifact,
//! inputs, time, host, device).

use std::path::{Path, PathBuf};

use flora_stages::report::provenance::{JobInfo, Provenance, WorkflowInfo};

use crate::cache::records::JobRecord;
use crate::cache::Cache;
use crate::dag::JobGraph;
use crate::hash::Digest;

/// Every job that `j` reads, directly or not, in the workflow's order.
pub fn upstream(graph: &JobGraph, j: usize) -> Vec<usize> {
    let mut seen = vec![false; graph.jobs.len()];
    let mut stack: Vec<usize> = graph.jobs[j].deps.clone();
    while let Some(d) = stack.pop() {
        if !seen[d] {
            seen[d] = true;
            stack.extend(graph.jobs[d].deps.iter().copied());
        }
    }
    (0..graph.jobs.len()).filter(|&d| seen[d]).collect()
}

/// What a report shows of one finished job.
pub fn job_info(rec: &JobRecord) -> JobInfo {
    JobInfo {
        job: rec.job.clone(),
        kind: rec.kind.clone(),
        kind_version: rec.kind_version,
        params: rec.params.clone(),
        key: rec.key.to_string(),
        artifact: rec.artifact.to_string(),
        inputs: rec
            .inputs
            .iter()
            .map(|i| (i.name.clone(), i.source.clone(), i.digest.to_string()))
            .collect(),
        started: rec.started.clone(),
        duration_s: rec.duration_s,
        host: rec.host.clone(),
        device: if rec.gpus.is_empty() {
            "cpu".into()
        } else {
            let gpus: Vec<String> = rec.gpus.iter().map(|g| format!("gpu {g}")).collect();
            gpus.join(", ")
        },
        threads: rec.threads,
        flora_version: rec.flora_version.clone(),
    }
}

/// Writes the provenance of job `j` into `dir/provenance.json`; `key_of` gives a job's key in this
/// run, when it has one.
pub fn write(
    graph: &JobGraph,
    j: usize,
    key_of: &dyn Fn(usize) -> Option<Digest>,
    cache: &Cache,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let wf = &graph.workflow;
    let jobs = upstream(graph, j)
        .into_iter()
        .filter_map(|d| key_of(d).and_then(|k| cache.record_of(&k)))
        .map(|rec| job_info(&rec))
        .collect();
    let p = Provenance {
        flora_version: env!("CARGO_PKG_VERSION").to_string(),
        written: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        workflow: WorkflowInfo {
            name: wf.name.clone(),
            path: wf.display_path.display().to_string(),
            text: std::fs::read_to_string(&wf.path).unwrap_or_default(),
            overrides: wf
                .overrides
                .iter()
                .map(|o| format!("--set {}", o.flag))
                .collect(),
        },
        jobs,
    };
    std::fs::create_dir_all(dir)?;
    let path = dir.join("provenance.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&p)?)?;
    Ok(path)
}
