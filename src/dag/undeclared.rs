//! Files a stage reads without declaring them as inputs: a file that an `exec` job's `argv`
//! names (its script, a table), or a local path in a param its kind lists in `path_params` (a
//! `download` job's `fasta`, an `expression` job's `url`). flora hashes inputs only, so changing
//! such a file re-runs nothing; `plan`, `run` and `stage` warn about each.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::{JobGraph, Source};

/// Prints [`warnings`] to stderr (`plan`, `run` and `stage` do, before anything runs).
pub fn warn(graph: &JobGraph) {
    for warning in warnings(graph) {
        eprintln!("{warning}");
    }
}

/// One warning per stage and file, in stage order. A fan-out's jobs name the same files over
/// and over: each path is looked at on disk once.
pub fn warnings(graph: &JobGraph) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut disk = Disk::default();
    let mut out = Vec::new();
    for job in &graph.jobs {
        let stage = &graph.stages[job.stage].name;
        for (named, how) in named_files(job.kind, &job.params, &graph.workflow.dir, &mut disk) {
            if seen.contains(&(stage, named.clone())) {
                continue;
            }
            let file = disk.absolute(&named);
            let declared = job.inputs.iter().any(|i| match &i.source {
                Source::Path(p) => file.starts_with(disk.absolute(p)),
                _ => false,
            });
            if declared {
                continue;
            }
            out.push(format!(
                "warning: stage `{stage}`: {how} {}, a file that is not one of its inputs: \
                 changing it will not re-run the stage (declare it as an input)",
                named.display()
            ));
            seen.insert((stage, named));
        }
    }
    out
}

/// What the disk says of each path, asked once.
#[derive(Default)]
struct Disk {
    is_file: HashMap<PathBuf, bool>,
    absolute: HashMap<PathBuf, PathBuf>,
}

impl Disk {
    /// Whether `p` is a file.
    fn is_file(&mut self, p: &Path) -> bool {
        *self
            .is_file
            .entry(p.to_path_buf())
            .or_insert_with(|| p.is_file())
    }

    /// `p` made absolute against the current folder, with `.` and `..` resolved where it exists.
    fn absolute(&mut self, p: &Path) -> PathBuf {
        self.absolute
            .entry(p.to_path_buf())
            .or_insert_with(|| {
                std::fs::canonicalize(p)
                    .unwrap_or_else(|_| std::path::absolute(p).unwrap_or(p.to_path_buf()))
            })
            .clone()
    }
}

/// The local files that a job's params name, each with where it is named.
fn named_files(
    kind: &crate::registry::Kind,
    params: &serde_json::Value,
    dir: &Path,
    disk: &mut Disk,
) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let argv = params["argv"].as_array().into_iter().flatten();
    for word in argv.filter_map(|a| a.as_str()).flat_map(shell_words) {
        let path = dir.join(word);
        if disk.is_file(&path) {
            out.push((path, "its argv names".to_string()));
        }
    }
    local_params(params, kind.path_params, dir, &mut out);
    out
}

/// The params among `names` that hold a local path or a `file://` URL rather than a remote URL.
fn local_params(
    params: &serde_json::Value,
    names: &[&str],
    dir: &Path,
    out: &mut Vec<(PathBuf, String)>,
) {
    for param in names {
        let Some(value) = params[*param].as_str() else {
            continue;
        };
        if value.starts_with("http://") || value.starts_with("https://") {
            continue;
        }
        let path = dir.join(value.strip_prefix("file://").unwrap_or(value));
        out.push((path, format!("param `{param}` reads")));
    }
}

/// The words of an argv element that could be relative paths: split at blanks and shell
/// punctuation, leaving out options, variables, globs and absolute paths (system programs).
fn shell_words(arg: &str) -> impl Iterator<Item = &str> {
    arg.split(|c: char| c.is_whitespace() || ";|&<>()'\"`=".contains(c))
        .filter(|w| {
            !w.is_empty() && !w.starts_with(['-', '/', '~']) && !w.contains(['$', '*', '?', '['])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_keep_what_could_be_a_relative_path() {
        let words: Vec<&str> = shell_words(
            "python3 scripts/fit.py --in=$FLORA_IN_x -k 5 > $FLORA_OUT/a; awk -f 'demo/s.awk' *.txt /usr/bin/env",
        )
        .collect();
        assert_eq!(
            words,
            ["python3", "scripts/fit.py", "5", "awk", "demo/s.awk"]
        );
    }
}
