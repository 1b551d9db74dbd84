//! Bundles: several ready jobs of one stage run in a single Slurm job, one after another or
//! (`bundle_parallel`) several at a time.
//!
//! Slurm spends seconds on every job it places, starts and cleans up, so a fan-out of jobs that
//! each take a second is bound by Slurm, not by the jobs. A stage's `resources: {bundle: N}`
//! packs up to N of its ready jobs into one batch script. Each job keeps its own spec, log and
//! scratch folder, and ends in a marker of its own beside its spec: `.done` (the node's name,
//! the job's start and end) after a success, `.failed` (the exit status) after a failure, each
//! written under a temporary name and renamed, so that the driver, which looks for them while
//! the bundle runs, never reads half of one. A job's failure does not stop the bundle's next
//! jobs. A `.started` marker, left as a job starts, tells the jobs that a bundle ended by Slurm
//! (its time limit, a lost node) never started from those it stopped.

use std::path::{Path, PathBuf};

use super::super::Launch;
use super::shell_quote;

/// Which bundle a job may join: jobs of one kind with the same resources (so the same sbatch
/// options and thread settings).
pub fn group_key(launch: &Launch) -> String {
    format!("{}\u{0}{:?}", launch.kind, launch.resources)
}

/// Where the bundle's own Slurm output goes (Slurm's messages; each job writes its own log):
/// beside its first job's log, in the cache's `logs/`, where a later run looks for the jobs an
/// earlier one left behind.
pub fn log_of(members: &[Launch]) -> PathBuf {
    members[0].log.with_extension("bundle.log")
}

/// How many of `members` run at once: the stage's `bundle_parallel`, at most one per job.
pub fn width(members: &[Launch]) -> usize {
    members[0]
        .resources
        .bundle_parallel
        .clamp(1, members.len().max(1))
}

/// How a bundle runs its jobs, in words: "one after another", or "4 at a time".
pub fn pace_words(members: &[Launch]) -> String {
    match width(members) {
        1 => "one after another".to_string(),
        w => format!("{w} at a time"),
    }
}

/// The batch script that runs `members` as `exe __job SPEC`, each into its own log, `width` of
/// them at a time. Each of `width` lanes takes the jobs in order, each one that no other lane has
/// claimed (`mkdir` in a folder of the node's own, which succeeds for one lane only), so a lane
/// that drew short jobs takes more of them.
pub fn script(exe: &Path, verbosity: Option<&str>, members: &[Launch]) -> String {
    let flora = shell_quote(&exe.to_string_lossy());
    let flag = verbosity.map(|v| format!(" {v}")).unwrap_or_default();
    let width = width(members);
    let mut text = format!(
        "#!/bin/sh\n\
         # flora: {n} jobs in this Slurm job (a bundle), {width} at a time.\n\
         # run SPEC LOG DONE FAILED STARTED: runs one job, leaving STARTED as it starts; its\n\
         # end marker is DONE (the node's name, then its start and end)\n\
         # or FAILED (the exit status), each renamed into place once written.\n\
         # A job whose spec is gone (its end was taken) or whose DONE marker shows has run:\n\
         # a bundle that Slurm runs again (a requeue) skips it.\n\
         run() {{\n\
         \x20 [ -e \"$1\" ] && [ ! -e \"$3\" ] || return 0\n\
         \x20 : > \"$5\"\n\
         \x20 start=$(date +%s.%N)\n\
         \x20 {flora}{flag} __job \"$1\" >> \"$2\" 2>&1\n\
         \x20 status=$?\n\
         \x20 if [ \"$status\" -eq 0 ]; then\n\
         \x20   {done}\n\
         \x20 else\n\
         \x20   echo \"$status\" > \"$4.part\" && mv \"$4.part\" \"$4\"\n\
         \x20 fi\n\
         }}\n\
         # job I: runs the bundle's I-th job.\n\
         job() {{\n\
         \x20 case $1 in\n",
        n = members.len(),
        done = crate::jobspec::done_marker_command("\"$3\""),
    );
    for (i, m) in members.iter().enumerate() {
        let quoted = [
            m.spec_file.clone(),
            m.log.clone(),
            crate::jobspec::done_marker(&m.spec_file),
            crate::jobspec::failed_marker(&m.spec_file),
            crate::jobspec::started_marker(&m.spec_file),
        ]
        .map(|p| shell_quote(&p.to_string_lossy()));
        text.push_str(&format!("    {}) run {} ;;\n", i + 1, quoted.join(" ")));
    }
    text.push_str(&format!(
        "  esac\n\
         }}\n\
         claims=$(mktemp -d) || exit 1\n\
         # lane: runs each job, in order, that it claims first.\n\
         lane() {{\n\
         \x20 i=1\n\
         \x20 while [ \"$i\" -le {n} ]; do\n\
         \x20   if mkdir \"$claims/$i\" 2>/dev/null; then job \"$i\"; fi\n\
         \x20   i=$((i + 1))\n\
         \x20 done\n\
         }}\n",
        n = members.len()
    ));
    for _ in 0..width {
        text.push_str("lane &\n");
    }
    text.push_str("wait\nrm -rf \"$claims\"\n");
    text
}

/// `--time` for a bundle: the stage's limit is per job, so the bundle gets it once per job that
/// one lane may run (all of them, one after another, when `width` is 1).
pub fn time_minutes(per_job: u64, members: usize, width: usize) -> u64 {
    per_job.saturating_mul(members.div_ceil(width.max(1)) as u64)
}
