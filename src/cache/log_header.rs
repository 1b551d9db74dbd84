//! The lines flora writes at the top of each job's log, and which job a log says it is of.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::hash::Digest;

/// Who a job is: what the first lines of its log say.
pub struct LogHeader<'a> {
    /// The job id (`stage` or `stage[item]`).
    pub job: &'a str,
    /// The stage kind.
    pub kind: &'a str,
    /// The kind's version.
    pub kind_version: u32,
    /// The workflow file (canonical path).
    pub workflow: &'a Path,
    /// The job's key.
    pub key: Digest,
    /// When it started.
    pub started: SystemTime,
    /// The machine that started it.
    pub host: &'a str,
}

impl LogHeader<'_> {
    /// The header's text, one `--- ` line per fact.
    pub fn text(&self) -> String {
        format!(
            "--- flora {}: job {} (kind {} v{}) of workflow {}\n--- key {}\n--- started {} on {}\n",
            env!("CARGO_PKG_VERSION"),
            self.job,
            self.kind,
            self.kind_version,
            self.workflow.display(),
            self.key,
            humantime::format_rfc3339_seconds(self.started),
            self.host,
        )
    }
}

/// The workflow file and job id the log at `path` names in its first line, if it has one.
pub fn job_of_log(path: &Path) -> Option<(PathBuf, String)> {
    use std::io::BufRead as _;
    let mut first = String::new();
    std::io::BufReader::new(std::fs::File::open(path).ok()?)
        .read_line(&mut first)
        .ok()?;
    let (_, rest) = first.trim_end().split_once(": job ")?;
    let (job, workflow) = rest.rsplit_once(" of workflow ")?;
    let (job, _kind) = job.rsplit_once(" (kind ")?;
    Some((PathBuf::from(workflow), job.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_names_the_job_it_was_written_for() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("k.log");
        let header = LogHeader {
            job: "stats[B73 leaf]",
            kind: "exec",
            kind_version: 1,
            workflow: Path::new("/home/me/my workflows/demo.yaml"),
            key: Digest::of(b"k"),
            started: SystemTime::now(),
            host: "node1",
        };
        std::fs::write(&log, header.text() + "job output\n").unwrap();
        assert_eq!(
            job_of_log(&log),
            Some((
                PathBuf::from("/home/me/my workflows/demo.yaml"),
                "stats[B73 leaf]".to_string()
            ))
        );
        std::fs::write(&log, "no header\n").unwrap();
        assert_eq!(job_of_log(&log), None);
        assert_eq!(job_of_log(&dir.path().join("missing.log")), None);
    }
}
