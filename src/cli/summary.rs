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

/// The `flora plan` table: job, state, how long the job's last run took (for jobs to run; from
/// `last_seconds`), reason.
pub fn print_plan(
    graph: &JobGraph,
    states: &[Freshness],
    last_seconds: &[Option<f64>],
) -> std::io::Result<()> {
    let shown: Vec<usize> = (0..states.len())
        .filter(|&j| !matches!(states[j], Freshness::Skipped))
        .collect();
    let w = width(shown.iter().map(|&j| graph.jobs[j].id.len()));
    outln!("{:<w$}  {:<6}  {:>9}  REASON", "JOB", "STATE", "LAST RUN");
    let mut to_run = 0;
    let (mut known, mut total) = (0, 0.0);
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
        let last = match (state, last_seconds[j]) {
            ("run", Some(t)) => {
                known += 1;
                total += t;
                duration(t)
            }
            _ => "-".to_string(),
        };
        let line = format!("{:<w$}  {state:<6}  {last:>9}  {reason}", graph.jobs[j].id);
        outln!("{}", line.trim_end());
    }
    let took = match known {
        0 => String::new(),
        n if n == to_run => format!(" (their last runs took {} in all)", duration(total)),
        n => format!(
            " ({n} of them ran before, taking {} in all)",
            duration(total)
        ),
    };
    outln!(
        "{} jobs: {to_run} to run{took}, {} cached",
        shown.len(),
        shown.len() - to_run
    );
    Ok(())
}

/// `0.52 s`, `12.3 s`, `4m 05s`, `2h 05m`.
fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 10.0 => format!("{s:.2} s"),
        s if s < 60.0 => format!("{s:.1} s"),
        s => flora_stages::model::pace::clock(s),
    }
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0.523), "0.52 s");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(245.0), "4m 05s");
        assert_eq!(duration(7500.0), "2h 05m");
    }
}
