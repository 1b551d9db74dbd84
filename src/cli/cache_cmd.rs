//! `flora cache ls | gc | verify`.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use super::run::{load_graph, open_existing_cache};
use super::{CacheCommand, Cli, GcArgs, WorkflowArgs};
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
    let mut keep: HashSet<Digest> = HashSet::new();
    for g in &graphs {
        let n = g.jobs.len();
        for s in plan::plan(g, &cache, &vec![false; n], &vec![true; n])? {
            if let Freshness::Cached { artifact, .. } = s {
                keep.insert(artifact);
            }
        }
    }
    // Who made each artifact, read before a real collection removes their records.
    let made_by = made_by(&cache);
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
    outln!(
        "{verb} {} artifacts ({}); kept {}",
        report.artifacts.len(),
        human(report.bytes),
        report.kept
    );
    Ok(())
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
