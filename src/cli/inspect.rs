//! `flora show` and `flora log`: a stage's artifact, provenance and log.

use super::run::{load_graph, open_existing_cache};
use super::{live_log, Cli, LogArgs, ShowArgs, WorkflowArgs};
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

fn graph_of(args: &ShowArgs) -> anyhow::Result<JobGraph> {
    load_graph(&WorkflowArgs {
        workflow: args.workflow.clone(),
        sets: args.sets.clone(),
    })
}

fn find(
    cli: &Cli,
    graph: JobGraph,
    args: &ShowArgs,
) -> anyhow::Result<(JobGraph, Cache, Vec<Found>)> {
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
    let (graph, cache, found) = find(cli, graph_of(args)?, args)?;
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
pub fn log(cli: &Cli, log_args: &LogArgs) -> anyhow::Result<()> {
    let args = &log_args.show;
    let graph = graph_of(args)?;
    // While a run holds the cache, its running jobs' logs are read without the index.
    let ids: Vec<String> = graph
        .select(&args.stage)
        .map_err(|e| anyhow::anyhow!(e))?
        .into_iter()
        .map(|j| graph.jobs[j].id.clone())
        .collect();
    if let Ok(root) = std::fs::canonicalize(&cli.cache) {
        let running = live_log::running_in(&root, &graph.workflow.path);
        let live: Vec<_> = running
            .iter()
            .filter(|j| ids.contains(&j.job))
            .cloned()
            .collect();
        if live.is_empty() && !running.is_empty() {
            // The run may hold the cache for hours: say what it does before waiting for it.
            let names: Vec<&str> = running.iter().map(|j| j.job.as_str()).collect();
            eprintln!(
                "flora: the run on this cache is running {} now, not `{}`; `flora log` reads a \
                 running job's log at once, and this one's once the run ends",
                names.join(", "),
                args.stage
            );
        }
        if !live.is_empty() {
            if live.len() < ids.len() {
                eprintln!(
                    "flora: {} other job(s) of `{}` are not running now; `flora log` shows \
                     their logs once the run ends",
                    ids.len() - live.len(),
                    args.stage
                );
            }
            return live_log::print(&root, &live, log_args.follow);
        }
    }
    if log_args.follow {
        eprintln!(
            "flora: `{}` is not running now; the log of its last run:",
            args.stage
        );
    }
    let (graph, cache, found) = find(cli, graph, args)?;
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
