//! The scheduler: runs a job graph through an executor, in parallel, reusing the cache.
//!
//! A job becomes ready when every job it reads has finished. Ready jobs start highest priority
//! first (those with the most work downstream, as in cargo's job queue) while the `--jobs` limit,
//! the CPU budget (a job's `threads`) and the free GPUs allow. When a job is ready its key is
//! computed from its inputs' artifacts; a key found in the cache finishes the job at once.
//! Jobs whose keys are equal (the same kind, params and inputs, e.g. two fan-out items that do
//! not differ) run once: the later ones wait for the first and then find its artifact cached.
//! After a failure no new job starts (unless `--keep-going`, which only skips what depends on it);
//! running jobs are always allowed to finish.

use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;

use crate::cache::records::{InputRecord, JobRecord};
use crate::cache::Cache;
use crate::dag::{JobGraph, Source};
use crate::executor::{append_log, Executor, Launch, Outcome};
use crate::hash::Digest;
use crate::jobspec::JobSpec;
use crate::plan::{input_digests, key_of, last_run};
use crate::progress::Progress;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// At most this many jobs at once.
    pub jobs: usize,
    /// CPU threads available to all running jobs together.
    pub cpus: usize,
    /// GPU device indices that jobs may be given.
    pub gpus: Vec<usize>,
    /// Fail instead of running GPU stages on the CPU when no GPU is given.
    pub require_gpu: bool,
    /// After a failure, run everything that does not depend on it.
    pub keep_going: bool,
    /// Per job: run even if cached.
    pub forced: Vec<bool>,
    /// Per job: part of this run (`--until`).
    pub selected: Vec<bool>,
}

/// How a job ended in this run.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// Found in the cache.
    Cached,
    /// Ran and was published.
    Ran,
    /// Ran and failed, or could not be started.
    Failed(String),
    /// Not started: an upstream job failed, or the run stopped after a failure.
    NotRun(String),
    /// Not part of this run (`--until`).
    NotSelected,
}

/// One job's result.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// How it ended.
    pub state: JobState,
    /// Seconds it ran (0 for cached jobs).
    pub seconds: f64,
    /// Its key, once known.
    pub key: Option<Digest>,
    /// Its artifact.
    pub artifact: Option<Digest>,
    /// Its log file.
    pub log: Option<PathBuf>,
}

struct Running {
    scratch: PathBuf,
    spec: PathBuf,
    key: Digest,
    inputs: Vec<(String, Digest)>,
    started: Instant,
    started_at: SystemTime,
    threads: usize,
    gpus: Vec<usize>,
}

/// Runs `graph`; returns one report per job.
pub fn run(
    graph: &JobGraph,
    cache: &Cache,
    executor: &mut dyn Executor,
    opts: &RunOptions,
    progress: &mut Progress,
) -> anyhow::Result<Vec<JobReport>> {
    let n = graph.jobs.len();
    // A cluster places jobs and gives them CPUs and GPUs; else this machine's are budgeted.
    let cluster = executor.places_jobs();
    check_gpus(graph, opts, cluster, progress)?;
    let mut reports: Vec<JobReport> = (0..n)
        .map(|j| JobReport {
            state: if opts.selected[j] {
                JobState::NotRun("the run stopped after a failure".into())
            } else {
                JobState::NotSelected
            },
            seconds: 0.0,
            key: None,
            artifact: None,
            log: None,
        })
        .collect();
    let priority = priorities(graph);
    let mut waiting: Vec<usize> = graph.jobs.iter().map(|j| j.deps.len()).collect();
    let mut ready: BinaryHeap<(usize, std::cmp::Reverse<usize>)> = BinaryHeap::new();
    for j in 0..n {
        if opts.selected[j] && waiting[j] == 0 {
            ready.push((priority[j], std::cmp::Reverse(j)));
        }
    }
    let mut artifacts: Vec<Option<Digest>> = vec![None; n];
    let mut running: Vec<Option<Running>> = (0..n).map(|_| None).collect();
    let mut free_cpus = opts.cpus.max(1);
    let mut free_gpus: Vec<usize> = opts.gpus.clone();
    let mut stopping = false;
    // Keys being computed now, and the ready jobs with the same key that wait for them.
    let mut running_keys: std::collections::HashSet<Digest> = Default::default();
    let mut twins: std::collections::HashMap<Digest, Vec<usize>> = Default::default();
    let mut last_flush = Instant::now();
    let host = gethostname::gethostname().to_string_lossy().into_owned();

    loop {
        // Start (or finish from the cache) every ready job that fits.
        while !stopping && !executor.interrupted() {
            let Some(&(_, std::cmp::Reverse(j))) = ready.peek() else {
                break;
            };
            let job = &graph.jobs[j];
            let prepared = input_digests(job, cache, &artifacts).and_then(|inputs| {
                let inputs = inputs.context("an upstream artifact is missing")?;
                check_subpaths(graph, j, cache, &artifacts)?;
                Ok(inputs)
            });
            let inputs = match prepared {
                Ok(i) => i,
                Err(e) => {
                    ready.pop();
                    reports[j].state = JobState::Failed(format!("{e:#}"));
                    progress.finished(&job.id, "failed", 0.0);
                    stopping = !opts.keep_going;
                    continue;
                }
            };
            let key = key_of(job, &inputs);
            reports[j].key = Some(key);
            tracing::debug!(
                "{}: key {} (kind {} v{}; inputs: {})",
                job.id,
                key.short(),
                job.kind.name,
                job.kind.version,
                describe_inputs(&inputs)
            );
            if !opts.forced[j] {
                if let Some(rec) = cache.lookup(&key) {
                    tracing::debug!("{}: cached, artifact {}", job.id, rec.artifact.short());
                    ready.pop();
                    artifacts[j] = Some(rec.artifact);
                    reports[j].state = JobState::Cached;
                    reports[j].artifact = Some(rec.artifact);
                    reports[j].log = Some(rec.log.clone());
                    cache.set_last_run(
                        &graph.workflow.path,
                        &job.id,
                        &last_run(job, key, &inputs),
                    )?;
                    progress.cached();
                    release(graph, j, &mut waiting, &mut ready, &priority, opts);
                    continue;
                }
            }
            if running_keys.contains(&key) {
                tracing::debug!("{}: waits for the running job with the same key", job.id);
                ready.pop();
                twins.entry(key).or_default().push(j);
                continue;
            }
            let (threads, want_gpus) = if cluster {
                (job.resources.threads, cluster_gpus(job))
            } else if opts.gpus.is_empty() {
                (job.resources.threads.min(opts.cpus.max(1)), 0)
            } else {
                (
                    job.resources.threads.min(opts.cpus.max(1)),
                    job.resources.gpus,
                )
            };
            if executor.busy() >= opts.jobs.max(1)
                || (!cluster && executor.running() > 0 && threads > free_cpus)
                || (!cluster && want_gpus > free_gpus.len())
            {
                tracing::trace!(
                    "{} waits: {} running, {} free CPU threads, free GPUs {free_gpus:?}",
                    job.id,
                    executor.running(),
                    free_cpus
                );
                break;
            }
            ready.pop();
            // On a cluster the GPUs are the first `want_gpus` of those it makes visible.
            let gpus: Vec<usize> = if cluster {
                (0..want_gpus).collect()
            } else {
                free_gpus.drain(..want_gpus).collect()
            };
            if !cluster {
                free_cpus = free_cpus.saturating_sub(threads);
            }
            let started = Slot {
                threads,
                gpus: &gpus,
                cluster,
            };
            match start(
                graph, j, key, &artifacts, &reports, &started, cache, &host, executor,
            ) {
                Ok(r) => {
                    let log = cache.log_path(&key);
                    tracing::debug!(
                        "{}: started with {threads} threads and GPUs {gpus:?}; log {}",
                        job.id,
                        log.display()
                    );
                    progress.started(&job.id, &log);
                    crate::cache::running::mark(
                        &cache.root,
                        &key,
                        &crate::cache::running::RunningJob {
                            workflow: graph.workflow.path.clone(),
                            job: job.id.clone(),
                            log: log.clone(),
                            started: humantime::format_rfc3339_seconds(r.started_at).to_string(),
                            cluster,
                        },
                    );
                    reports[j].log = Some(log);
                    running_keys.insert(key);
                    running[j] = Some(Running {
                        inputs,
                        threads,
                        gpus,
                        ..r
                    });
                }
                Err(e) => {
                    free_cpus += threads;
                    free_gpus.extend(gpus);
                    reports[j].state = JobState::Failed(format!("cannot start: {e:#}"));
                    progress.finished(&job.id, "failed", 0.0);
                    stopping = !opts.keep_going;
                }
            }
        }
        if executor.running() == 0 {
            break;
        }
        if stopping || executor.interrupted() {
            // No job starts after a failure or an interruption, held ones included.
            for j in executor.withdraw_held() {
                let r = running[j].take().expect("a held job has its state");
                running_keys.remove(&r.key);
                withdraw(cache, &r);
                reports[j].log = None;
                progress.withdrawn(&graph.jobs[j].id);
            }
            if executor.running() == 0 {
                break;
            }
        } else if ready.is_empty() {
            executor.start_held();
        }
        let (j, outcome) = executor.wait(progress);
        let job = &graph.jobs[j];
        let r = running[j].take().expect("a running job has its state");
        if !cluster {
            free_cpus += r.threads;
            free_gpus.extend(r.gpus.iter().copied());
            free_gpus.sort_unstable();
        }
        running_keys.remove(&r.key);
        for twin in twins.remove(&r.key).unwrap_or_default() {
            ready.push((priority[twin], std::cmp::Reverse(twin)));
        }
        let _ = std::fs::remove_file(&r.spec);
        // The job's end marker names the machine it ran on (a cluster node, or this one), and
        // how long it ran there.
        let marker = crate::jobspec::done_marker(&r.spec);
        let done = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|text| crate::jobspec::DoneMarker::parse(&text));
        let _ = std::fs::remove_file(&marker);
        let ran_on = done
            .as_ref()
            .map_or_else(|| host.clone(), |d| d.node.clone());
        let seconds = done
            .and_then(|d| d.seconds)
            .unwrap_or_else(|| r.started.elapsed().as_secs_f64());
        reports[j].seconds = seconds;
        match &outcome {
            Outcome::Succeeded => tracing::debug!("{}: succeeded in {seconds:.2} s", job.id),
            Outcome::Failed(why) => tracing::debug!("{}: failed in {seconds:.2} s: {why}", job.id),
        }
        let log = cache.log_path(&r.key);
        let published = match outcome {
            Outcome::Succeeded => inputs_unchanged(job, cache, &r.inputs).and_then(|()| {
                cache
                    .publish(&r.scratch)
                    .with_context(|| format!("cannot publish the output of {}", job.id))
            }),
            Outcome::Failed(why) => Err(anyhow::anyhow!("{why}")),
        };
        match published {
            Ok(artifact) => {
                tracing::debug!("{}: published artifact {}", job.id, artifact.short());
                artifacts[j] = Some(artifact);
                reports[j].state = JobState::Ran;
                reports[j].artifact = Some(artifact);
                let _ = std::fs::remove_dir_all(cache.work_path(&r.key));
                cache.record(&JobRecord {
                    key: r.key,
                    artifact,
                    workflow: graph.workflow.path.clone(),
                    workflow_name: graph.workflow.name.clone(),
                    job: job.id.clone(),
                    stage: graph.stages[job.stage].name.clone(),
                    kind: job.kind.name.to_string(),
                    kind_version: job.kind.version,
                    params: job.params.clone(),
                    inputs: job
                        .inputs
                        .iter()
                        .zip(&r.inputs)
                        .map(|(i, (_, d))| InputRecord {
                            name: i.name.clone(),
                            source: i.written.clone(),
                            digest: *d,
                        })
                        .collect(),
                    started: humantime::format_rfc3339_seconds(r.started_at).to_string(),
                    duration_s: seconds,
                    flora_version: env!("CARGO_PKG_VERSION").to_string(),
                    host: ran_on,
                    log: log.clone(),
                    gpus: r.gpus.clone(),
                    threads: r.threads,
                })?;
                cache.set_last_run(
                    &graph.workflow.path,
                    &job.id,
                    &last_run(job, r.key, &r.inputs),
                )?;
                progress.finished(&job.id, "ran", seconds);
                release(graph, j, &mut waiting, &mut ready, &priority, opts);
            }
            Err(e) => {
                // Nothing is published: the scratch folder goes, the work folder stays for a retry.
                crate::cache::make_writable(&r.scratch);
                let _ = std::fs::remove_dir_all(&r.scratch);
                append_log(
                    &log,
                    &format!("\n--- flora: job {} failed: {e:#}\n", job.id),
                );
                reports[j].state = JobState::Failed(format!("{e:#}"));
                progress.finished(&job.id, "failed", seconds);
                if !opts.keep_going {
                    stopping = true;
                }
            }
        }
        // After the log's last line (a failure's), so that `flora log --follow` shows it.
        crate::cache::running::unmark(&cache.root, &r.key);
        if last_flush.elapsed().as_secs_f64() > 1.0 {
            cache.flush()?;
            last_flush = Instant::now();
        }
    }
    cache.flush()?;
    // Say why the jobs that never started did not.
    for j in 0..n {
        if let JobState::NotRun(why) = &mut reports[j].state {
            if executor.interrupted() {
                *why = "the run was interrupted".into();
            }
        }
        if let JobState::NotRun(_) = reports[j].state {
            if let Some(&d) = graph.jobs[j]
                .deps
                .iter()
                .find(|&&d| !matches!(reports[d].state, JobState::Cached | JobState::Ran))
            {
                reports[j].state =
                    JobState::NotRun(format!("upstream {} did not finish", graph.jobs[d].id));
            }
        }
    }
    Ok(reports)
}

/// Checks, before any job starts, that each selected stage asking for GPUs can have them: on this
/// machine, from `--gpus` (enough of them, and a CUDA build for flora's own GPU stages) or, with
/// `--require-gpu`, at all; on a cluster, from a build that can use them. Where a stage would
/// fall back to the CPU, it warns.
fn check_gpus(
    graph: &JobGraph,
    opts: &RunOptions,
    cluster: bool,
    progress: &Progress,
) -> anyhow::Result<()> {
    // A GPU named twice would be handed to two jobs at once.
    for (i, g) in opts.gpus.iter().enumerate() {
        anyhow::ensure!(
            !opts.gpus[..i].contains(g),
            "--gpus names GPU {g} twice; name each GPU once"
        );
    }
    if !cluster {
        flora_stages::model::device::check_indices(&opts.gpus)
            .map_err(|e| anyhow::anyhow!("--gpus: {e}"))?;
    }
    for stage in &graph.stages {
        let Some(&j) = stage.jobs.iter().find(|&&j| opts.selected[j]) else {
            continue;
        };
        let want = graph.jobs[j].resources.gpus;
        if want == 0 {
            continue;
        }
        if cluster {
            if cluster_gpus(&graph.jobs[j]) == 0 {
                let what = format!(
                    "stage `{}` asks for {want} GPU(s) but this flora was built without CUDA",
                    stage.name
                );
                if opts.require_gpu {
                    anyhow::bail!("{what} and --require-gpu was given");
                }
                progress.println(&format!(
                    "warning: {what}: it runs on the CPUs of its node and asks the cluster for no GPU"
                ));
            }
        } else if opts.gpus.is_empty() {
            if opts.require_gpu {
                anyhow::bail!(
                    "stage `{}` needs {want} GPU(s) and --require-gpu was given, but no GPU was named: add --gpus 0[,1...]",
                    stage.name
                );
            }
            progress.println(&format!(
                "warning: stage `{}` asks for {want} GPU(s) but no --gpus was given: it runs on the CPU",
                stage.name
            ));
        } else if cluster_gpus(&graph.jobs[j]) == 0 {
            anyhow::bail!(
                "stage `{}` would run on GPU {}, but this flora was built without CUDA: build it \
                 with `scripts/cuda.sh cargo build --release --features cuda`, or run without \
                 --gpus (the stage then runs on the CPU)",
                stage.name,
                opts.gpus[0]
            );
        } else if want > opts.gpus.len() {
            anyhow::bail!(
                "stage `{}` needs {want} GPUs but --gpus names only {}",
                stage.name,
                opts.gpus.len()
            );
        }
    }
    Ok(())
}

fn check_subpaths(
    graph: &JobGraph,
    j: usize,
    cache: &Cache,
    artifacts: &[Option<Digest>],
) -> anyhow::Result<()> {
    for input in &graph.jobs[j].inputs {
        if let (Source::Job(up), Some(sub)) = (&input.source, &input.sub) {
            if let Some(d) = artifacts[*up] {
                let p = cache.artifact_path(&d).join(sub);
                anyhow::ensure!(
                    p.exists(),
                    "input `{}`: {} has no `{}` in its output",
                    input.name,
                    graph.jobs[*up].id,
                    sub.display()
                );
            }
        }
    }
    Ok(())
}

/// What a starting job is given.
struct Slot<'a> {
    threads: usize,
    gpus: &'a [usize],
    /// A cluster chose the GPUs (`gpus` are ordinals among those it made visible).
    cluster: bool,
}

/// The GPUs a job can use, and so asks a cluster for: its stage's, unless it is a built-in kind
/// and this flora has no CUDA (it would run on the CPU and hold the GPUs idle).
fn cluster_gpus(job: &crate::dag::Job) -> usize {
    if job.kind.name == "exec" || cfg!(feature = "cuda") {
        job.resources.gpus
    } else {
        0
    }
}

/// Fails when a file or folder input changed, or went away, while the job ran: the job may have
/// read either content, so its output must not be kept under the key of the content hashed
/// before it started (a later run with that content would take it from the cache). Unchanged
/// files cost one `stat` each (the digest memo).
fn inputs_unchanged(
    job: &crate::dag::Job,
    cache: &Cache,
    used: &[(String, Digest)],
) -> anyhow::Result<()> {
    for (input, (_, before)) in job.inputs.iter().zip(used) {
        let Source::Path(path) = &input.source else {
            continue;
        };
        match cache.input_digest(path) {
            Ok(now) if now == *before => {}
            Ok(_) => anyhow::bail!(
                "input `{}` ({}) changed while the job ran: its output is not kept; run again \
                 to use the new content",
                input.name,
                path.display()
            ),
            Err(e) => anyhow::bail!(
                "input `{}` ({}) cannot be read since the job ran ({e}): its output is not kept",
                input.name,
                path.display()
            ),
        }
    }
    Ok(())
}

/// Starts job `j`; `reports` gives the keys of the jobs upstream (for provenance).
#[allow(clippy::too_many_arguments)]
fn start(
    graph: &JobGraph,
    j: usize,
    key: Digest,
    artifacts: &[Option<Digest>],
    reports: &[JobReport],
    slot: &Slot,
    cache: &Cache,
    host: &str,
    executor: &mut dyn Executor,
) -> anyhow::Result<Running> {
    let job = &graph.jobs[j];
    let scratch = cache.new_scratch(&key)?;
    let work = cache.work_path(&key);
    std::fs::create_dir_all(&work)?;
    let mut ctx =
        flora_stages::Context::new(scratch.clone(), work.clone(), graph.workflow.dir.clone());
    ctx.threads = slot.threads;
    ctx.gpus = slot.gpus.to_vec();
    ctx.cluster_gpus = slot.cluster;
    if job.kind.provenance {
        ctx.provenance = Some(
            crate::provenance::write(graph, j, &|d| reports[d].key, cache, &work)
                .context("cannot write the provenance file")?,
        );
    }
    for input in &job.inputs {
        let base = match &input.source {
            Source::Path(p) => p.clone(),
            Source::Job(up) => cache.artifact_path(&artifacts[*up].context("upstream artifact")?),
            Source::Collection(items) => {
                let list = items
                    .iter()
                    .map(|(item, up)| {
                        Ok((item.clone(), artifacts[*up].context("upstream artifact")?))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                cache.collection(&list)?.0
            }
        };
        let path = match &input.sub {
            Some(sub) => base.join(sub),
            None => base,
        };
        ctx.inputs.insert(input.name.clone(), path);
    }
    let spec_path = scratch.with_extension("job.json");
    let spec = JobSpec {
        job: job.id.clone(),
        kind: job.kind.name.to_string(),
        params: job.params.clone(),
        context: ctx,
    };
    let log = cache.log_path(&key);
    let started_at = SystemTime::now();
    let header = crate::cache::log_header::LogHeader {
        job: &job.id,
        kind: job.kind.name,
        kind_version: job.kind.version,
        workflow: &graph.workflow.path,
        key,
        started: started_at,
        host,
    };
    std::fs::write(&log, header.text())?;
    let mut resources = job.resources.clone();
    resources.threads = slot.threads;
    resources.gpus = slot.gpus.len();
    executor.submit(Launch {
        job: j,
        id: job.id.clone(),
        kind: job.kind.name.to_string(),
        spec_file: spec_path.clone(),
        spec,
        log,
        resources,
    })?;
    Ok(Running {
        scratch,
        spec: spec_path,
        key,
        inputs: Vec::new(),
        started: Instant::now(),
        started_at,
        threads: slot.threads,
        gpus: Vec::new(),
    })
}

/// Undoes the start of a job that never ran: its spec, scratch folder, log and running note.
fn withdraw(cache: &Cache, r: &Running) {
    let _ = std::fs::remove_file(&r.spec);
    crate::cache::make_writable(&r.scratch);
    let _ = std::fs::remove_dir_all(&r.scratch);
    let _ = std::fs::remove_file(cache.log_path(&r.key));
    crate::cache::running::unmark(&cache.root, &r.key);
}

/// A job's input digests for a log line: `name abcd1234, ...`.
fn describe_inputs(inputs: &[(String, Digest)]) -> String {
    if inputs.is_empty() {
        return "none".into();
    }
    inputs
        .iter()
        .map(|(name, d)| format!("{name} {}", d.short()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn release(
    graph: &JobGraph,
    j: usize,
    waiting: &mut [usize],
    ready: &mut BinaryHeap<(usize, std::cmp::Reverse<usize>)>,
    priority: &[usize],
    opts: &RunOptions,
) {
    for &d in &graph.dependents[j] {
        waiting[d] -= 1;
        if waiting[d] == 0 && opts.selected[d] {
            ready.push((priority[d], std::cmp::Reverse(d)));
        }
    }
}

/// How much work waits on each job: itself plus everything downstream (diamonds counted twice,
/// which only matters for ordering).
fn priorities(graph: &JobGraph) -> Vec<usize> {
    let mut p = vec![1usize; graph.jobs.len()];
    for j in (0..graph.jobs.len()).rev() {
        let below: usize = graph.dependents[j].iter().map(|&d| p[d]).sum();
        p[j] = 1usize.saturating_add(below);
    }
    p
}
