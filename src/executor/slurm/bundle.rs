//! Bundles: several ready jobs of one stage run one after another in a single Slurm job.
//!
//! Slurm spends seconds on every job it places, starts and cleans up, so a fan-out of jobs that
//! each take a second is bound by Slurm, not by the jobs. A stage's `resources: {bundle: N}`
//! packs up to N of its ready jobs into one batch script. Each job keeps its own spec, log and
//! scratch folder, and ends in a marker of its own beside its spec: `.done` (the node's name,
//! the job's start and end) after a success, `.failed` (the exit status) after a failure, each
//! written under a temporary name and renamed, so that the driver, which looks for them while
//! the bundle runs, never reads half of one. A job's failure does not stop the bundle's next
//! jobs.

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

/// The batch script that runs `members` in turn as `exe __job SPEC`, each into its own log.
pub fn script(exe: &Path, verbosity: Option<&str>, members: &[Launch]) -> String {
    let flora = shell_quote(&exe.to_string_lossy());
    let flag = verbosity.map(|v| format!(" {v}")).unwrap_or_default();
    let mut text = format!(
        "#!/bin/sh\n\
         # flora: {} jobs run one after another in this Slurm job (a bundle).\n\
         # run SPEC LOG DONE FAILED: runs one job; its end marker is DONE (the node's name,\n\
         # then its start and end)\n\
         # or FAILED (the exit status), each renamed into place once written.\n\
         run() {{\n\
         \x20 start=$(date +%s.%N)\n\
         \x20 {flora}{flag} __job \"$1\" >> \"$2\" 2>&1\n\
         \x20 status=$?\n\
         \x20 if [ \"$status\" -eq 0 ]; then\n\
         \x20   {done}\n\
         \x20 else\n\
         \x20   echo \"$status\" > \"$4.part\" && mv \"$4.part\" \"$4\"\n\
         \x20 fi\n\
         }}\n",
        members.len(),
        done = crate::jobspec::done_marker_command("\"$3\""),
    );
    for m in members {
        let quoted = [
            m.spec_file.clone(),
            m.log.clone(),
            crate::jobspec::done_marker(&m.spec_file),
            crate::jobspec::failed_marker(&m.spec_file),
        ]
        .map(|p| shell_quote(&p.to_string_lossy()));
        text.push_str(&format!("run {}\n", quoted.join(" ")));
    }
    text
}

/// `--time` for a bundle: the stage's limit is per job, so the bundle gets it once per job.
pub fn time_minutes(per_job: u64, members: usize) -> u64 {
    per_job.saturating_mul(members as u64)
}
