//! `flora show` and `flora log`: a stage's artifact, provenance and log.

use super::run::{load_graph, open_existing_cache};
use super::{Cli, ShowArgs, WorkflowArgs};
use crate::cache::records::JobRecord;
use crate::cache::Cache;
use crate::dag::JobGraph;
use crate::plan::{self, Freshness};

struct Found {
    job: usize,
    state: Freshness,
    record: Option<JobRecord>,
    current: bool,
}

fn find(cli: &Cli, args: &ShowArgs) -> anyhow::Result<(JobGraph, Cache, Vec<Found>)> {
    let graph = load_graph(&WorkflowArgs {
        workflow: args.workflow.clone(),
        sets: args.sets.clone(),
    })?;
    let jobs = graph.select(&args.stage).map_err(|e| anyhow::anyhow!(e))?;
    let cache = open_existing_cache(cli)?;
    let n = graph.jobs.len();
    let selected = graph.ancestors(&jobs);
    let states = plan::plan(&graph, &cache, &vec![false; n], &selected)?;
    let found = jobs
        .into_iter()
        .map(|j| {
            let state = states[j].clone();
            let (record, current) = match &state {
                Freshness::Cached { key, .. } => (cache.record_of(key), true),
                _ => (
                    cache
                        .last_run(&graph.workflow.path, &graph.jobs[j].id)
                        .and_then(|l| cache.record_of(&l.key)),
                    false,
                ),
            };
            Found {
                job: j,
                state,
                record,
                current,
            }
        })
        .collect();
    Ok((graph, cache, found))
}

/// `flora show`.
pub fn show(cli: &Cli, args: &ShowArgs) -> anyhow::Result<()> {
    let (graph, cache, found) = find(cli, args)?;
    for (i, f) in found.iter().enumerate() {
        if i > 0 {
            outln!();
        }
        let job = &graph.jobs[f.job];
        outln!("job:       {}", job.id);
        match &f.state {
            Freshness::Cached { key, artifact } => {
                outln!("state:     cached");
                outln!("artifact:  {}", cache.artifact_path(artifact).display());
                outln!("key:       {key}");
            }
            Freshness::Run { reasons, .. } => {
                let why: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                outln!(
                    "state:     not cached; a run would make it ({})",
                    why.join("; ")
                );
            }
            Freshness::Skipped => {}
        }
        outln!("kind:      {} v{}", job.kind.name, job.kind.version);
        outln!("params:    {}", job.params);
        match &f.record {
            Some(rec) => {
                if !f.current {
                    outln!("last run:  (an earlier version of this job)");
                    outln!(
                        "artifact:  {}",
                        cache.artifact_path(&rec.artifact).display()
                    );
                }
                for input in &rec.inputs {
                    outln!(
                        "input:     {} = {} ({})",
                        input.name,
                        input.source,
                        input.digest.short()
                    );
                }
                outln!(
                    "workflow:  {} ({})",
                    rec.workflow_name,
                    rec.workflow.display()
                );
                outln!("started:   {}", rec.started);
                outln!("duration:  {:.2} s", rec.duration_s);
                outln!("host:      {}", rec.host);
                outln!("flora:     {}", rec.flora_version);
                outln!("log:       {}", rec.log.display());
            }
            None => outln!("history:   never run with this cache"),
        }
    }
    Ok(())
}

/// `flora log`.
pub fn log(cli: &Cli, args: &ShowArgs) -> anyhow::Result<()> {
    let (graph, cache, found) = find(cli, args)?;
    let many = found.len() > 1;
    let mut any = false;
    for f in &found {
        let job = &graph.jobs[f.job];
        // The log of the current key (even a failed attempt), else of the last finished run.
        let path = match &f.state {
            Freshness::Cached { key, .. } | Freshness::Run { key: Some(key), .. }
                if cache.log_path(key).exists() =>
            {
                Some(cache.log_path(key))
            }
            _ => f.record.as_ref().map(|r| r.log.clone()),
        };
        match path.filter(|p| p.exists()) {
            Some(p) => {
                if many {
                    outln!("==> {} <==", job.id);
                }
                out!("{}", std::fs::read_to_string(&p)?);
                any = true;
            }
            None => eprintln!(
                "flora: no log for {}: it has not run with this cache",
                job.id
            ),
        }
    }
    anyhow::ensure!(any, "no log found for `{}`", args.stage);
    Ok(())
}
