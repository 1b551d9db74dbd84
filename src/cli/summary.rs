//! Tables printed at the end of `flora run` and by `flora plan`.

use std::path::Path;

use crate::dag::JobGraph;
use crate::plan::Freshness;
use crate::scheduler::{JobReport, JobState};

/// Above this many jobs, tables show one row per stage.
const MAX_JOB_ROWS: usize = 40;

fn width(names: impl Iterator<Item = usize>) -> usize {
    names.max().unwrap_or(3).clamp(3, 48)
}

/// The end-of-run table: job, state, time.
pub fn print_run(
    graph: &JobGraph,
    reports: &[JobReport],
    seconds: f64,
    results: &Path,
) -> std::io::Result<()> {
    let shown: Vec<usize> = (0..reports.len())
        .filter(|&j| reports[j].state != JobState::NotSelected)
        .collect();
    let count = |f: fn(&JobState) -> bool| shown.iter().filter(|&&j| f(&reports[j].state)).count();
    let ran = count(|s| *s == JobState::Ran);
    let cached = count(|s| *s == JobState::Cached);
    let failed = count(|s| matches!(s, JobState::Failed(_)));
    let not_run = count(|s| matches!(s, JobState::NotRun(_)));
    let word = |s: &JobState| match s {
        JobState::Cached => "cached",
        JobState::Ran => "ran",
        JobState::Failed(_) => "failed",
        JobState::NotRun(_) => "not run",
        JobState::NotSelected => "",
    };
    if shown.len() <= MAX_JOB_ROWS {
        let w = width(shown.iter().map(|&j| graph.jobs[j].id.len()));
        outln!("{:<w$}  {:<8}  {:>9}", "JOB", "STATE", "TIME");
        for &j in &shown {
            let r = &reports[j];
            let time = match r.state {
                JobState::Ran | JobState::Failed(_) => format!("{:.2} s", r.seconds),
                _ => "-".to_string(),
            };
            let note = match &r.state {
                JobState::NotRun(why) => format!("  ({why})"),
                _ => String::new(),
            };
            outln!(
                "{:<w$}  {:<8}  {:>9}{note}",
                graph.jobs[j].id,
                word(&r.state),
                time
            );
        }
    } else {
        let w = width(graph.stages.iter().map(|s| s.name.len()));
        outln!(
            "{:<w$}  {:>6}  {:>6}  {:>6}  {:>6}  {:>7}  {:>9}",
            "STAGE",
            "JOBS",
            "RAN",
            "CACHED",
            "FAILED",
            "NOT RUN",
            "TIME"
        );
        for s in &graph.stages {
            let js: Vec<&JobReport> = s
                .jobs
                .iter()
                .map(|&j| &reports[j])
                .filter(|r| r.state != JobState::NotSelected)
                .collect();
            if js.is_empty() {
                continue;
            }
            let c = |f: fn(&JobState) -> bool| js.iter().filter(|r| f(&r.state)).count();
            let t: f64 = js.iter().map(|r| r.seconds).sum();
            outln!(
                "{:<w$}  {:>6}  {:>6}  {:>6}  {:>6}  {:>7}  {:>7.2} s",
                s.name,
                js.len(),
                c(|s| *s == JobState::Ran),
                c(|s| *s == JobState::Cached),
                c(|s| matches!(s, JobState::Failed(_))),
                c(|s| matches!(s, JobState::NotRun(_))),
                t
            );
        }
    }
    outln!(
        "{} jobs: {ran} ran, {cached} cached, {failed} failed, {not_run} not run, in {seconds:.2} s; outputs in {}",
        shown.len(),
        results.display()
    );
    Ok(())
}

/// The `flora plan` table: job, state, reason.
pub fn print_plan(graph: &JobGraph, states: &[Freshness]) -> std::io::Result<()> {
    let shown: Vec<usize> = (0..states.len())
        .filter(|&j| !matches!(states[j], Freshness::Skipped))
        .collect();
    let w = width(shown.iter().map(|&j| graph.jobs[j].id.len()));
    outln!("{:<w$}  {:<6}  REASON", "JOB", "STATE");
    let mut to_run = 0;
    for &j in &shown {
        let (state, reason) = match &states[j] {
            Freshness::Cached { .. } => ("cached", String::new()),
            Freshness::Run { reasons, .. } => {
                to_run += 1;
                (
                    "run",
                    reasons
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            }
            Freshness::Skipped => continue,
        };
        outln!("{:<w$}  {state:<6}  {reason}", graph.jobs[j].id);
    }
    outln!(
        "{} jobs: {to_run} to run, {} cached",
        shown.len(),
        shown.len() - to_run
    );
    Ok(())
}
