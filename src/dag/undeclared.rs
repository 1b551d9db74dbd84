//! Files a stage reads without declaring them as inputs: a file that an `exec` job's `argv`
//! names (its script, a table), or a local path in a param its kind lists in `path_params` (a
//! `download` job's `fasta`, an `expression` job's `url`). flora hashes inputs only, so changing
//! such a file re-runs nothing; `plan`, `run` and `stage` warn about each.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{JobGraph, Source};

/// One warning per stage and file, in stage order.
pub fn warnings(graph: &JobGraph) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for job in &graph.jobs {
        let stage = &graph.stages[job.stage].name;
        let declared: Vec<PathBuf> = job
            .inputs
            .iter()
            .filter_map(|i| match &i.source {
                Source::Path(p) => Some(absolute(p)),
                _ => None,
            })
            .collect();
        let is_declared = |file: &Path| {
            let file = absolute(file);
            declared.iter().any(|d| file.starts_with(d))
        };
        for (named, how) in named_files(job.kind, &job.params, &graph.workflow.dir) {
            if is_declared(&named) || !seen.insert((stage.clone(), named.clone())) {
                continue;
            }
            out.push(format!(
                "warning: stage `{stage}`: {how} {}, a file that is not one of its inputs: \
                 changing it will not re-run the stage (declare it as an input)",
                named.display()
            ));
        }
    }
    out
}

/// The local files that a job's params name, each with where it is named.
fn named_files(
    kind: &crate::registry::Kind,
    params: &serde_json::Value,
    dir: &Path,
) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let argv = params["argv"].as_array().into_iter().flatten();
    for word in argv.filter_map(|a| a.as_str()).flat_map(shell_words) {
        let path = dir.join(word);
        if path.is_file() {
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

/// `p` made absolute against the current folder, with `.` and `..` resolved where it exists.
fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| std::path::absolute(p).unwrap_or(p.to_path_buf()))
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
