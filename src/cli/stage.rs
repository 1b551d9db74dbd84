//! `flora stage`: run one stage kind outside a workflow, still through the cache.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::run::open_cache;
use super::{Cli, StageArgs};
use crate::dag::JobGraph;
use crate::executor::local::Local;
use crate::executor::Executor;
use crate::progress::Progress;
use crate::registry;
use crate::scheduler::{self, JobState, RunOptions};
use crate::workflow::Workflow;

/// `flora stage`.
pub fn stage(cli: &Cli, args: &StageArgs) -> anyhow::Result<()> {
    if args.list {
        for k in registry::all() {
            outln!("{:<12} v{:<3} {}", k.name, k.version, k.summary);
        }
        return Ok(());
    }
    let kind = args.kind.as_deref().context("name a stage kind")?;
    let out = args.out.as_deref().context("--out DIR is required")?;
    if registry::lookup(kind).is_none() {
        let known: Vec<&str> = registry::all().iter().map(|k| k.name).collect();
        anyhow::bail!(
            "unknown stage kind `{kind}` (known kinds: {})",
            known.join(", ")
        );
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        anyhow::bail!(
            "--out {}: the folder exists and is not empty",
            out.display()
        );
    }
    // A one-stage workflow named after the kind, anchored in the current folder.
    let mut inputs = serde_yaml::Mapping::new();
    for spec in &args.inputs {
        let (name, path) = spec
            .split_once('=')
            .with_context(|| format!("--input {spec}: expected NAME=PATH"))?;
        let abs = std::fs::canonicalize(path)
            .with_context(|| format!("--input {spec}: no such file or folder: {path}"))?;
        inputs.insert(
            name.into(),
            serde_yaml::Value::String(abs.to_string_lossy().into_owned()),
        );
    }
    let stage = kind.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_");
    // The one job has the machine: every CPU unless `--threads` says fewer, and every GPU of
    // `--gpus` (pretraining and fine-tuning deal their micro-batches to them; other model
    // stages use the first).
    let machine = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpus = args
        .threads
        .map_or(machine, |n| usize::from(n).min(machine));
    let gpus = args.devices.gpus.len();
    let spec = serde_json::json!({"kind": kind, "inputs": inputs,
        "resources": {"threads": cpus, "gpus": gpus}});
    let doc = serde_json::json!({"stages": {&stage: spec}});
    let cwd = std::env::current_dir()?;
    let sets: Vec<String> = args.sets.iter().map(|s| format!("{stage}.{s}")).collect();
    let wf = Workflow::parse(
        &serde_yaml::to_string(&doc)?,
        Path::new("<flora stage>"),
        cwd.join(format!(".flora-stage-{stage}")),
        cwd,
        &format!("stage-{stage}"),
        &sets,
    )?;
    let graph = JobGraph::build(wf)?;
    crate::dag::warn(&graph);
    let cache = open_cache(cli)?;
    let opts = RunOptions {
        jobs: 1,
        cpus,
        gpus: args.devices.gpus.clone(),
        require_gpu: args.devices.require_gpu,
        keep_going: false,
        forced: vec![false],
        selected: vec![true],
    };
    let mut executor = Local::new(std::env::current_exe()?)?;
    let mut progress = Progress::new(1);
    let reports = scheduler::run(&graph, &cache, &mut executor, &opts, &mut progress)?;
    progress.finish();
    let r = &reports[0];
    if executor.interrupted() {
        let stopped = match &r.state {
            JobState::Failed(why) => {
                eprintln!("error: stage {kind} stopped: {why}");
                1
            }
            _ => 0,
        };
        return Err(crate::cli::run::Interrupted { stopped }.into());
    }
    match (&r.state, r.artifact) {
        (JobState::Ran | JobState::Cached, Some(artifact)) => {
            copy_tree(&cache.artifact_path(&artifact), out)?;
            outln!(
                "{} {kind} -> {} (artifact {})",
                if r.state == JobState::Cached {
                    "cached"
                } else {
                    "ran"
                },
                out.display(),
                artifact.short()
            );
            Ok(())
        }
        (JobState::Failed(why), _) => {
            eprintln!("error: stage {kind} failed: {why}");
            if let Some(log) = &r.log {
                eprintln!("  log: {}", log.display());
                super::run::print_log_tail(log);
            }
            Err(crate::cli::run::JobsFailed { failed: 1 }.into())
        }
        (other, _) => anyhow::bail!("stage {kind} did not run: {other:?}"),
    }
}

/// Copies a folder (files writable again, links as links).
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in crate::hash::walk(from)? {
        let dest: PathBuf = to.join(&e.rel);
        match &e.kind {
            crate::hash::EntryKind::Dir => std::fs::create_dir_all(&dest)?,
            crate::hash::EntryKind::File { .. } => {
                std::fs::copy(&e.path, &dest)?;
                let mut perm = std::fs::metadata(&dest)?.permissions();
                use std::os::unix::fs::PermissionsExt;
                perm.set_mode(perm.mode() | 0o200);
                std::fs::set_permissions(&dest, perm)?;
            }
            crate::hash::EntryKind::Symlink(t) => std::os::unix::fs::symlink(t, &dest)?,
        }
    }
    Ok(())
}
