//! A fresh project folder per test, and helpers to run `flora` in it.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// A temporary project: a folder with workflow files, a cache and results.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Self {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating folders).
    pub fn write(&self, rel: &str, text: &str) -> &Self {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        self
    }

    /// Writes `n` promoter-like sequences of `len` bp with planted motifs (seeded) as a FASTA.
    pub fn write_planted_fasta(&self, rel: &str, n: usize, len: usize, seed: u64) {
        let fasta: String = flora_stages::testing::planted(n, len, seed)
            .iter()
            .map(|r| format!(">{}\n{}\n", r.id, r.seq))
            .collect();
        self.write(rel, &fasta);
    }

    /// The job logs in the project's cache that contain `text`.
    pub fn logs_containing(&self, text: &str) -> Vec<String> {
        std::fs::read_dir(self.path("cache/logs"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .filter(|l| l.contains(text))
            .collect()
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
    }

    /// `flora ARGS` in the project folder, with its own cache.
    pub fn flora(&self, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("flora").unwrap();
        cmd.current_dir(self.root())
            .env_remove("FLORA_CACHE")
            .env("NO_COLOR", "1")
            .args(args);
        cmd
    }

    /// Runs flora and returns its output, whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Output {
        self.flora(args).output().unwrap()
    }

    /// Runs flora, expects success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "flora {args:?} failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `flora stage bpe` on `corpus.fa` with `vocab_size` tokens, into `out`; expects success.
    pub fn bpe(&self, vocab_size: usize, out: &str) -> String {
        let vocab = format!("vocab_size={vocab_size}");
        self.ok(&[
            "stage",
            "bpe",
            "--input",
            "corpus=corpus.fa",
            "--set",
            &vocab,
            "--out",
            out,
        ])
    }

    /// Runs flora, expects exit status `code`, returns stdout + stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        self.fails_with(&[], args, code)
    }

    /// [`Project::fails`] with `env` set for flora.
    pub fn fails_with(&self, env: &[(&str, &str)], args: &[&str], code: i32) -> String {
        let out = self.flora(args).envs(env.iter().copied()).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(code), "flora {args:?}:\n{text}");
        text
    }

    /// `flora plan --json` as (job, state, reason) rows.
    pub fn plan(&self, args: &[&str]) -> Vec<(String, String, String)> {
        let mut all = vec!["plan"];
        all.extend_from_slice(args);
        all.push("--json");
        let out = self.ok(&all);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        rows.iter()
            .map(|r| {
                (
                    r["job"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                    r["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The state ("ran", "cached", "failed", "not run") of each job in a run's summary table.
    pub fn run_states(stdout: &str) -> Vec<(String, String)> {
        stdout
            .lines()
            .skip(1)
            .take_while(|l| !l.contains(" jobs: "))
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let job = parts.next()?.to_string();
                let state = parts.next()?.to_string();
                let state = if state == "not" {
                    "not run".into()
                } else {
                    state
                };
                Some((job, state))
            })
            .collect()
    }
}

/// The state of `job` in a run's summary.
pub fn state_of(stdout: &str, job: &str) -> String {
    Project::run_states(stdout)
        .into_iter()
        .find(|(j, _)| j == job)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no job {job} in:\n{stdout}"))
}

/// The two-stage workflow of the `exec` example.
pub const HELLO: &str = r#"
stages:
  hello: {kind: exec, params: {argv: ["sh", "-c", "echo hi > $FLORA_OUT/msg.txt"]}}
  upper:
    kind: exec
    inputs: {src: hello}
    params: {argv: ["sh", "-c", "tr a-z A-Z < $FLORA_IN_src/msg.txt > $FLORA_OUT/msg.txt"]}
"#;
