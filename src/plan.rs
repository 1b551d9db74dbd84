//! Freshness: for every job, whether its artifact is already in the cache, and if not, why not.
//!
//! Planning reads the cache but runs nothing, so `flora plan` is free. A job whose inputs are all
//! known (files, or cached upstream artifacts) gets its key now; a job downstream of one that must
//! run gets its key only when that upstream finishes (and may then turn out cached after all:
//! early cutoff).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::Context as _;
use serde::Serialize;

use crate::cache::key::{collection_digest, job_key, sub_digest};
use crate::cache::records::LastRun;
use crate::cache::Cache;
use crate::dag::{Job, JobGraph, Source};
use crate::hash::Digest;

/// Why a job must run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StaleReason {
    /// This job has never run in this workflow and its key is not in the cache.
    New,
    /// A param differs from the last run.
    ParamChanged {
        /// The param's dotted path.
        param: String,
        /// The value at the last run (null if absent).
        old: serde_json::Value,
        /// The value now (null if absent).
        new: serde_json::Value,
    },
    /// An input's content differs from the last run.
    InputChanged {
        /// The input's name.
        name: String,
        /// The input as written.
        source: String,
    },
    /// An input was added or removed since the last run.
    InputsChanged {
        /// Inputs now.
        now: Vec<String>,
        /// Inputs at the last run.
        before: Vec<String>,
    },
    /// The stage kind's version changed.
    KindChanged {
        /// Version at the last run.
        old: u32,
        /// Version now.
        new: u32,
    },
    /// `--force` named this job or its stage.
    Forced,
    /// An upstream job must run first; this job's key is known only after it.
    UpstreamWillRun {
        /// The upstream job.
        job: String,
    },
    /// The last run's artifact is no longer in the cache (removed by gc or by hand).
    OutputMissing,
    /// Nothing visible changed since the last run, but this key is not in the cache (a different
    /// cache, or one that was cleaned).
    NotInCache,
    /// A run of this very job (its key) started and did not finish: it failed or was stopped.
    Unfinished {
        /// Whether it left something in its work folder (a checkpoint) to go on from.
        resumes: bool,
        /// The step of the checkpoint it left, where a `checkpoint.json` there says (pretraining
        /// and fine-tuning write one).
        #[serde(skip_serializing_if = "Option::is_none")]
        step: Option<u64>,
    },
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StaleReason::New => write!(f, "new"),
            StaleReason::ParamChanged { param, old, new } => {
                let (o, n) = shorten_pair(old, new);
                write!(f, "param {param}: {o} -> {n}")
            }
            StaleReason::InputChanged { name, source } => {
                write!(f, "input {name} changed ({source})")
            }
            StaleReason::InputsChanged { now, before } => write!(
                f,
                "inputs changed: [{}] -> [{}]",
                before.join(", "),
                now.join(", ")
            ),
            StaleReason::KindChanged { old, new } => write!(f, "kind version {old} -> {new}"),
            StaleReason::Forced => write!(f, "forced"),
            StaleReason::UpstreamWillRun { job } => write!(f, "upstream {job} will run"),
            StaleReason::OutputMissing => write!(f, "output missing from the cache"),
            StaleReason::NotInCache => write!(f, "not in this cache"),
            StaleReason::Unfinished {
                resumes: true,
                step,
            } => {
                write!(f, "did not finish last time; goes on from its work folder")?;
                match step {
                    Some(n) => write!(f, " (its checkpoint after step {n})"),
                    None => Ok(()),
                }
            }
            StaleReason::Unfinished { resumes: false, .. } => {
                write!(f, "did not finish last time")
            }
        }
    }
}

/// Two values as short texts that still show where they differ.
fn shorten_pair(old: &serde_json::Value, new: &serde_json::Value) -> (String, String) {
    const MAX: usize = 60;
    let text = |v: &serde_json::Value| {
        if v.is_null() {
            "(unset)".to_string()
        } else {
            v.to_string()
        }
    };
    let (o, n) = (text(old), text(new));
    let (oc, nc): (Vec<char>, Vec<char>) = (o.chars().collect(), n.chars().collect());
    if oc.len() <= MAX && nc.len() <= MAX {
        return (o, n);
    }
    let first_diff = oc.iter().zip(&nc).take_while(|(a, b)| a == b).count();
    let start = first_diff.saturating_sub(20);
    let cut = |c: &[char]| {
        let end = (start + MAX - 10).min(c.len());
        format!(
            "{}{}{}",
            if start > 0 { "..." } else { "" },
            c[start.min(c.len())..end].iter().collect::<String>(),
            if end < c.len() { "..." } else { "" }
        )
    };
    (cut(&oc), cut(&nc))
}

/// A job's freshness.
#[derive(Debug, Clone, PartialEq)]
pub enum Freshness {
    /// Its artifact is in the cache.
    Cached {
        /// The job's key.
        key: Digest,
        /// Its artifact.
        artifact: Digest,
    },
    /// It must run.
    Run {
        /// Its key, when all its inputs are known now.
        key: Option<Digest>,
        /// Why.
        reasons: Vec<StaleReason>,
    },
    /// Not part of this run (`--until`).
    Skipped,
}

/// Resolves a job's inputs to content digests; `None` when an upstream artifact is not known yet.
pub fn input_digests(
    job: &Job,
    cache: &Cache,
    artifacts: &[Option<Digest>],
) -> anyhow::Result<Option<Vec<(String, Digest)>>> {
    let mut out = Vec::with_capacity(job.inputs.len());
    for input in &job.inputs {
        let digest = match &input.source {
            Source::Path(p) => cache
                .input_digest(p)
                .with_context(|| format!("input `{}`: cannot read {}", input.name, p.display()))?,
            Source::Job(j) => match artifacts[*j] {
                Some(d) => d,
                None => return Ok(None),
            },
            Source::Collection(items) => {
                let mut list = Vec::with_capacity(items.len());
                for (item, j) in items {
                    match artifacts[*j] {
                        Some(d) => list.push((item.clone(), d)),
                        None => return Ok(None),
                    }
                }
                collection_digest(&list)
            }
        };
        let digest = match &input.sub {
            Some(sub) => sub_digest(&digest, sub),
            None => digest,
        };
        out.push((input.name.clone(), digest));
    }
    Ok(Some(out))
}

/// The key of `job` given its input digests.
pub fn key_of(job: &Job, inputs: &[(String, Digest)]) -> Digest {
    let params = job.kind.keyed_params(&job.params);
    job_key(job.kind.name, job.kind.version, &params, inputs)
}

/// The last-run record for `job` with this key and these inputs.
pub fn last_run(job: &Job, key: Digest, inputs: &[(String, Digest)]) -> LastRun {
    LastRun {
        key,
        kind_version: job.kind.version,
        params: job.params.clone(),
        inputs: inputs.iter().cloned().collect(),
    }
}

/// Why `job` must run, compared with its last run.
pub fn reasons(
    job: &Job,
    inputs: Option<&[(String, Digest)]>,
    last: Option<&LastRun>,
    cache: &Cache,
) -> Vec<StaleReason> {
    let Some(last) = last else {
        return vec![StaleReason::New];
    };
    let mut out = Vec::new();
    if last.kind_version != job.kind.version {
        out.push(StaleReason::KindChanged {
            old: last.kind_version,
            new: job.kind.version,
        });
    }
    let (last_params, params) = (
        job.kind.keyed_params(&last.params),
        job.kind.keyed_params(&job.params),
    );
    let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &last_params, &mut old);
    flatten("", &params, &mut new);
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let (o, n) = (old.get(name), new.get(name));
        if o != n {
            out.push(StaleReason::ParamChanged {
                param: name.clone(),
                old: o.cloned().cloned().unwrap_or(serde_json::Value::Null),
                new: n.cloned().cloned().unwrap_or(serde_json::Value::Null),
            });
        }
    }
    let now_names: Vec<String> = job.inputs.iter().map(|i| i.name.clone()).collect();
    let before_names: Vec<String> = last.inputs.keys().cloned().collect();
    if now_names != before_names {
        out.push(StaleReason::InputsChanged {
            now: now_names,
            before: before_names,
        });
    } else if let Some(inputs) = inputs {
        for ((name, d), input) in inputs.iter().zip(&job.inputs) {
            if last.inputs.get(name) != Some(d) {
                out.push(StaleReason::InputChanged {
                    name: name.clone(),
                    source: input.written.clone(),
                });
            }
        }
    }
    if out.is_empty() && inputs.is_some() {
        out.push(if cache.record_of(&last.key).is_some() {
            StaleReason::OutputMissing
        } else {
            StaleReason::NotInCache
        });
    }
    out
}

fn flatten<'a>(
    prefix: &str,
    v: &'a serde_json::Value,
    out: &mut BTreeMap<String, &'a serde_json::Value>,
) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v);
        }
    }
}

/// Whether a run of `key` started (its log is there) and did not finish (no record of it),
/// whether it left anything in its work folder, and the step of the checkpoint it left there.
fn unfinished(cache: &Cache, key: &Digest) -> Option<StaleReason> {
    if cache.record_of(key).is_some() || !cache.log_path(key).exists() {
        return None;
    }
    let work = cache.work_path(key);
    let resumes = std::fs::read_dir(&work).is_ok_and(|mut d| d.next().is_some());
    let step = flora_stages::model::checkpoint::saved_step(&work);
    Some(StaleReason::Unfinished { resumes, step })
}

/// Plans every job: cached or to run, and why. `forced` and `selected` are per job.
pub fn plan(
    graph: &JobGraph,
    cache: &Cache,
    forced: &[bool],
    selected: &[bool],
) -> anyhow::Result<Vec<Freshness>> {
    let mut artifacts: Vec<Option<Digest>> = vec![None; graph.jobs.len()];
    let mut out = Vec::with_capacity(graph.jobs.len());
    for (j, job) in graph.jobs.iter().enumerate() {
        if !selected[j] {
            out.push(Freshness::Skipped);
            continue;
        }
        let inputs =
            input_digests(job, cache, &artifacts).with_context(|| format!("job {}", job.id))?;
        let last = cache.last_run(&graph.workflow.path, &job.id);
        let key = inputs.as_ref().map(|i| key_of(job, i));
        let cached = key.and_then(|k| cache.lookup(&k));
        let state = match (cached, forced[j]) {
            (Some(rec), false) => {
                artifacts[j] = Some(rec.artifact);
                Freshness::Cached {
                    key: rec.key,
                    artifact: rec.artifact,
                }
            }
            (_, force) => {
                let mut reasons = Vec::new();
                if force {
                    reasons.push(StaleReason::Forced);
                } else {
                    reasons = self::reasons(job, inputs.as_deref(), last.as_ref(), cache);
                    if let Some(unfinished) = key.and_then(|k| unfinished(cache, &k)) {
                        reasons
                            .retain(|r| !matches!(r, StaleReason::New | StaleReason::NotInCache));
                        reasons.push(unfinished);
                    }
                    if inputs.is_none() {
                        let up = job
                            .deps
                            .iter()
                            .find(|&&d| artifacts[d].is_none())
                            .map(|&d| graph.jobs[d].id.clone())
                            .unwrap_or_default();
                        reasons.push(StaleReason::UpstreamWillRun { job: up });
                    }
                }
                Freshness::Run { key, reasons }
            }
        };
        out.push(state);
    }
    Ok(out)
}
