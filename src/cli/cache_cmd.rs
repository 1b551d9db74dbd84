//! `flora cache ls | gc | verify`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use super::run::{load_graph, open_existing_cache};
use super::{CacheCommand, Cli, GcArgs, WorkflowArgs};
use crate::cache::gc::Keep;
use crate::cache::log_header::job_of_log;
use crate::hash::Digest;
use crate::plan::{self, Freshness};
use flora_stages::memory::human;

/// Damaged artifacts were found; the binary exits with status 1.
#[derive(Debug, thiserror::Error)]
#[error("{0} damaged artifact(s)")]
pub struct Damaged(pub usize);

/// `flora cache ...`.
pub fn cache(cli: &Cli, cmd: &CacheCommand) -> anyhow::Result<()> {
    match cmd {
        CacheCommand::Ls => ls(cli),
        CacheCommand::Gc(args) => gc(cli, args),
        CacheCommand::Verify { remove } => verify(cli, *remove),
    }
}

/// For each artifact, the jobs that made it (`workflow:job`), sorted and each once.
fn made_by(cache: &crate::cache::Cache) -> BTreeMap<Digest, Vec<String>> {
    let mut made_by: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for rec in cache.all_jobs() {
        made_by
            .entry(rec.artifact)
            .or_default()
            .push(format!("{}:{}", rec.workflow_name, rec.job));
    }
    for jobs in made_by.values_mut() {
        jobs.sort();
        jobs.dedup();
    }
    made_by
}

fn ls(cli: &Cli) -> anyhow::Result<()> {
    let cache = open_existing_cache(cli)?;
    let made_by = made_by(&cache);
    let mut rows = Vec::new();
    for e in std::fs::read_dir(cache.root.join("artifacts"))? {
        let Ok(d) = e?.file_name().to_string_lossy().parse::<Digest>() else {
            continue;
        };
        let meta = cache.artifact_record(&d);
        rows.push((d, meta));
    }
    rows.sort_by_key(|(d, m)| (m.as_ref().map(|m| m.created).unwrap_or(0), *d));
    outln!(
        "{:<12}  {:>10}  {:<20}  JOBS",
        "ARTIFACT",
        "SIZE",
        "CREATED"
    );
    let mut total = 0;
    for (d, meta) in &rows {
        let (size, created) = match meta {
            Some(m) => (
                m.size,
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(m.created))
                    .to_string(),
            ),
            None => (
                crate::hash::tree_size(&cache.artifact_path(d)).unwrap_or(0),
                "?".into(),
            ),
        };
        total += size;
        let jobs = made_by.get(d).cloned().unwrap_or_default();
        outln!(
            "{:<12}  {:>10}  {:<20}  {}",
            d.short(),
            human(size),
            created,
            jobs.join(", ")
        );
    }
    outln!(
        "{} artifacts, {} in {}",
        rows.len(),
        human(total),
        cache.root.display()
    );
    let work = cache.work_folders();
    if !work.is_empty() {
        let work_jobs = work_folder_jobs(&cache);
        outln!(
            "\n{:<12}  {:>10}  {:<20}  JOBS",
            "WORK FOLDER",
            "SIZE",
            "MODIFIED"
        );
        let mut total = 0;
        for (key, path) in &work {
            let size = crate::hash::tree_size(path).unwrap_or(0);
            total += size;
            let modified = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                .unwrap_or_else(|_| "?".into());
            let step = flora_stages::model::checkpoint::saved_step(path)
                .map(|n| format!(" (its checkpoint after step {n})"))
                .unwrap_or_default();
            outln!(
                "{:<12}  {:>10}  {:<20}  {}{step}",
                key.short(),
                human(size),
                modified,
                work_jobs[key]
            );
        }
        outln!(
            "{} work folders of runs that did not finish (checkpoints), {}",
            work.len(),
            human(total)
        );
    }
    Ok(())
}

/// Parses `--newer-than`: a date, an RFC 3339 time, or a duration meaning "that long ago".
fn parse_when(s: &str) -> anyhow::Result<u64> {
    let t = if let Ok(d) = humantime::parse_duration(s) {
        SystemTime::now() - d
    } else if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        t
    } else if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")) {
        t
    } else {
        anyhow::bail!("--newer-than {s:?}: expected a date (2026-11-01), a time (2026-11-01T12:00:00Z) or a duration (7days)")
    };
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

fn gc(cli: &Cli, args: &GcArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.keep.is_empty() || args.newer_than.is_some(),
        "say what to keep: --keep WORKFLOW (repeatable) and/or --newer-than WHEN"
    );
    let newer = args.newer_than.as_deref().map(parse_when).transpose()?;
    let graphs = args
        .keep
        .iter()
        .map(|w| {
            load_graph(&WorkflowArgs {
                workflow: w.clone(),
                sets: Vec::new(),
            })
            .with_context(|| format!("--keep {}", w.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache = open_existing_cache(cli)?;
    let mut keep = Keep::default();
    for g in &graphs {
        let n = g.jobs.len();
        for s in plan::plan(g, &cache, &vec![false; n], &vec![true; n])? {
            match s {
                Freshness::Cached { key, artifact } => {
                    keep.keys.insert(key);
                    keep.artifacts.insert(artifact);
                }
                Freshness::Run { key: Some(key), .. } => {
                    keep.keys.insert(key);
                }
                _ => {}
            }
        }
    }
    // Who made each artifact, and which job each work folder was for, read before a real
    // collection removes their records.
    let made_by = made_by(&cache);
    let work_jobs = work_folder_jobs(&cache);
    let work_steps: HashMap<Digest, u64> = cache
        .work_folders()
        .iter()
        .filter_map(|(key, path)| Some((*key, flora_stages::model::checkpoint::saved_step(path)?)))
        .collect();
    let report = cache.gc(&keep, newer, args.dry_run)?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for (d, size) in &report.artifacts {
        let jobs = made_by.get(d).map(|j| j.join(", ")).unwrap_or_default();
        outln!("{verb} {}  {:>10}  {jobs}", d.short(), human(*size));
    }
    for (key, size) in &report.work {
        let step = work_steps
            .get(key)
            .map(|n| format!("; its checkpoint after step {n}"))
            .unwrap_or_default();
        outln!(
            "{verb} {}  {:>10}  {} (the work folder of a run that did not finish{step})",
            key.short(),
            human(*size),
            work_jobs[key]
        );
    }
    outln!(
        "{verb} {} artifacts ({}), {} work folders ({}), {} logs ({}), {} index entries; kept {} artifacts",
        report.artifacts.len(),
        human(report.bytes),
        report.work.len(),
        human(report.work_bytes()),
        report.logs,
        human(report.log_bytes),
        report.index_entries,
        report.kept
    );
    Ok(())
}

/// For each work folder, the jobs it was for as `workflow:job` (the workflow file's stem): the
/// job its log names, else the jobs that last ran under its key.
fn work_folder_jobs(cache: &crate::cache::Cache) -> HashMap<Digest, String> {
    let last_runs = cache.last_runs_by_key();
    let name = |(workflow, job): &(std::path::PathBuf, String)| {
        let stem = workflow.file_stem().unwrap_or_default().to_string_lossy();
        format!("{stem}:{job}")
    };
    cache
        .work_folders()
        .into_iter()
        .map(|(key, _)| {
            let mut names: Vec<String> = job_of_log(&cache.log_path(&key))
                .iter()
                .chain(last_runs.get(&key).into_iter().flatten())
                .map(name)
                .collect();
            names.sort();
            names.dedup();
            let names = if names.is_empty() {
                "a job no workflow names now".into()
            } else {
                names.join(", ")
            };
            (key, names)
        })
        .collect()
}

fn verify(cli: &Cli, remove: bool) -> anyhow::Result<()> {
    let cache = open_existing_cache(cli)?;
    let (checked, problems) = cache.verify()?;
    for p in &problems {
        outln!("DAMAGED {p}");
        if remove {
            cache.remove_artifact(&p.artifact())?;
            outln!(
                "removed {}; the jobs that made it will run again",
                p.artifact().short()
            );
        }
    }
    outln!("{checked} artifacts checked, {} damaged", problems.len());
    if problems.is_empty() || remove {
        Ok(())
    } else {
        Err(Damaged(problems.len()).into())
    }
}
