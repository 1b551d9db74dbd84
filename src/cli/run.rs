//! `flora run`, `flora plan` and `flora dag`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::summary;
use super::{Cli, DagArgs, ExecutorKind, PlanArgs, RunArgs, SelectArgs, WorkflowArgs};
use crate::cache::{Cache, Wait};
use crate::dag::JobGraph;
use crate::executor::local::Local;
use crate::executor::slurm::{Slurm, SlurmOptions};
use crate::executor::Executor;
use crate::plan::{self, Freshness};
use crate::progress::Progress;
use crate::scheduler::{self, JobState, RunOptions};
use crate::workflow::Workflow;

/// Jobs failed; the binary exits with status 1.
#[derive(Debug, thiserror::Error)]
#[error("{failed} job(s) failed")]
pub struct JobsFailed {
    /// How many.
    pub failed: usize,
}

/// The run was interrupted (SIGINT or SIGTERM); the binary exits with status 130.
#[derive(Debug, thiserror::Error)]
#[error(
    "interrupted: {stopped} running job(s) stopped; `flora run` again carries on from the cache"
)]
pub struct Interrupted {
    /// How many jobs were running and were stopped.
    pub stopped: usize,
}

/// Reads, checks and expands a workflow.
pub fn load_graph(args: &WorkflowArgs) -> anyhow::Result<JobGraph> {
    let wf = Workflow::load(&args.workflow, &args.sets)?;
    Ok(JobGraph::build(wf)?)
}

/// Opens the cache named on the command line.
pub fn open_cache(cli: &Cli) -> anyhow::Result<Cache> {
    Cache::open(
        &cli.cache,
        if cli.no_wait {
            Wait::NoWait
        } else {
            Wait::Block
        },
    )
}

/// Opens the cache named on the command line for a command that only reads it (`show`, `log`,
/// `check`, `cache ...`): a folder that holds no cache is refused rather than created, so that
/// a mistyped `--cache` is not mistaken for an empty cache.
pub fn open_existing_cache(cli: &Cli) -> anyhow::Result<Cache> {
    if !cli.cache.join("index").is_dir() {
        anyhow::bail!(
            "no flora cache at {}: nothing has run with it yet (`--cache DIR` or FLORA_CACHE \
             names the cache; `flora run` makes it)",
            cli.cache.display()
        );
    }
    open_cache(cli)
}

/// Per-job selection (`--until`) and forcing (`--force`).
pub fn selection(graph: &JobGraph, select: &SelectArgs) -> anyhow::Result<(Vec<bool>, Vec<bool>)> {
    let n = graph.jobs.len();
    let selected = match &select.until {
        Some(s) => graph.ancestors(
            &graph
                .select(s)
                .map_err(|e| anyhow::anyhow!("--until: {e}"))?,
        ),
        None => vec![true; n],
    };
    let mut forced = vec![false; n];
    for f in &select.force {
        for j in graph
            .select(f)
            .map_err(|e| anyhow::anyhow!("--force: {e}"))?
        {
            forced[j] = true;
        }
    }
    Ok((selected, forced))
}

/// Jobs submitted at once to a cluster when `--jobs` is not given.
const CLUSTER_JOBS: usize = 500;

/// The executor the command line asks for, after checking that its options fit it.
fn executor(args: &RunArgs, cache: &Cache) -> anyhow::Result<Box<dyn Executor>> {
    let exe = std::env::current_exe().context("cannot find the flora executable")?;
    let s = &args.slurm;
    match args.executor {
        ExecutorKind::Local => {
            let slurm_only = [
                (s.partition.is_some(), "--partition"),
                (s.account.is_some(), "--account"),
                (!s.slurm_args.is_empty(), "--slurm-arg"),
            ];
            if let Some((_, flag)) = slurm_only.iter().find(|(given, _)| *given) {
                anyhow::bail!("{flag} is an option of --executor slurm");
            }
            Ok(Box::new(Local::new(exe)?))
        }
        ExecutorKind::Slurm => {
            anyhow::ensure!(
                args.devices.gpus.is_empty(),
                "--gpus names this machine's GPUs; with --executor slurm each job gets its GPUs \
                 from Slurm (its stage's `resources: {{gpus: N}}`)"
            );
            anyhow::ensure!(
                s.slurm_poll.is_finite() && s.slurm_poll > 0.0,
                "--slurm-poll must be a positive number of seconds"
            );
            anyhow::ensure!(
                s.slurm_latency.is_finite() && s.slurm_latency >= 0.0,
                "--slurm-latency must be a number of seconds, 0 or more"
            );
            let opts = SlurmOptions {
                partition: s.partition.clone(),
                account: s.account.clone(),
                extra: s.slurm_args.clone(),
                retries: s.slurm_retries,
                continuations: s.slurm_continuations,
                poll: std::time::Duration::from_secs_f64(s.slurm_poll),
                latency: std::time::Duration::from_secs_f64(s.slurm_latency),
            };
            let slurm = Slurm::new(exe, opts).context("cannot watch for Ctrl-C")?;
            slurm.cancel_left_behind(&cache.root.join("logs"))?;
            Ok(Box::new(slurm))
        }
    }
}

/// `flora run`.
pub fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    let graph = load_graph(&args.workflow)?;
    crate::dag::warn(&graph);
    let (selected, forced) = selection(&graph, &args.select)?;
    let results_dir = args
        .results
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(&graph.workflow.name));
    crate::results::check(&results_dir, &graph).map_err(anyhow::Error::msg)?;
    let cache = open_cache(cli)?;
    // After the cache's lock: the executor takes over Ctrl-C, which must still end a wait for
    // another flora at once.
    let mut executor = executor(args, &cache)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let default_jobs = if executor.places_jobs() {
        CLUSTER_JOBS
    } else {
        cpus
    };
    let opts = RunOptions {
        jobs: args.jobs.unwrap_or(default_jobs),
        cpus,
        gpus: args.devices.gpus.clone(),
        require_gpu: args.devices.require_gpu,
        keep_going: args.keep_going,
        forced,
        selected,
    };
    let started = std::time::Instant::now();
    let total = opts.selected.iter().filter(|s| **s).count();
    tracing::debug!(
        "{} of {} jobs selected; cache {}; at most {} at once, {} CPU threads, GPUs {:?}",
        total,
        graph.jobs.len(),
        cache.root.display(),
        opts.jobs,
        opts.cpus,
        opts.gpus
    );
    let mut progress = Progress::new(total);
    let reports = scheduler::run(&graph, &cache, executor.as_mut(), &opts, &mut progress)?;
    progress.finish();
    crate::results::link(&results_dir, &graph, &reports, &cache.root)
        .with_context(|| format!("cannot link results into {}", results_dir.display()))?;
    // A closed stdout must not hide failures, which go to stderr below.
    let _ = summary::print_run(
        &graph,
        &reports,
        started.elapsed().as_secs_f64(),
        &results_dir,
    );
    let failed: Vec<usize> = (0..reports.len())
        .filter(|&j| matches!(reports[j].state, JobState::Failed(_)))
        .collect();
    for &j in &failed {
        if let JobState::Failed(why) = &reports[j].state {
            eprintln!("error: job {} failed: {why}", graph.jobs[j].id);
            if let Some(log) = &reports[j].log {
                eprintln!("  log: {}", log.display());
                print_log_tail(log);
            }
        }
    }
    if executor.interrupted() {
        let stopped = failed
            .iter()
            .filter(|&&j| {
                matches!(&reports[j].state, JobState::Failed(why) if why.starts_with("interrupted"))
            })
            .count();
        Err(Interrupted { stopped }.into())
    } else if failed.is_empty() {
        Ok(())
    } else {
        Err(JobsFailed {
            failed: failed.len(),
        }
        .into())
    }
}

/// Prints the last lines a job wrote (flora's own header lines left out).
pub fn print_log_tail(log: &Path) {
    if let Ok(text) = std::fs::read_to_string(log) {
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("--- ")).collect();
        let tail = &lines[lines.len().saturating_sub(10)..];
        for l in tail {
            eprintln!("  | {l}");
        }
    }
}

/// `flora plan`.
pub fn plan(cli: &Cli, args: &PlanArgs) -> anyhow::Result<()> {
    let graph = load_graph(&args.workflow)?;
    crate::dag::warn(&graph);
    let (selected, forced) = selection(&graph, &args.select)?;
    let cache = open_cache(cli)?;
    let states = plan::plan(&graph, &cache, &forced, &selected)?;
    // How long each job to run took the last time it ran with this cache (any key).
    let last_seconds: Vec<Option<f64>> = graph
        .jobs
        .iter()
        .zip(&states)
        .map(|(job, state)| match state {
            Freshness::Run { .. } => cache
                .last_run(&graph.workflow.path, &job.id)
                .and_then(|l| cache.record_of(&l.key))
                .map(|r| r.duration_s),
            _ => None,
        })
        .collect();
    if args.json {
        let rows: Vec<serde_json::Value> = graph
            .jobs
            .iter()
            .zip(&states)
            .zip(&last_seconds)
            .filter(|((_, s), _)| !matches!(s, Freshness::Skipped))
            .map(|((job, state), last)| {
                let (st, key, artifact, reasons) = match state {
                    Freshness::Cached { key, artifact } => {
                        ("cached", Some(*key), Some(*artifact), Vec::new())
                    }
                    Freshness::Run { key, reasons } => ("run", *key, None, reasons.clone()),
                    Freshness::Skipped => unreachable!("filtered"),
                };
                serde_json::json!({
                    "job": job.id,
                    "stage": graph.stages[job.stage].name,
                    "item": job.item,
                    "kind": job.kind.name,
                    "state": st,
                    "reason": reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; "),
                    "reasons": reasons,
                    "key": key.map(|k| k.to_hex()),
                    "artifact": artifact.map(|a| cache.artifact_path(&a)),
                    "last_seconds": last,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        summary::print_plan(&graph, &states, &last_seconds)?;
    }
    Ok(())
}

/// `flora dag`.
pub fn dag(args: &DagArgs) -> anyhow::Result<()> {
    let graph = load_graph(&args.workflow)?;
    out!(
        "{}",
        crate::dag::render::render(&graph, args.format, args.jobs)
    );
    Ok(())
}
