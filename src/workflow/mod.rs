//! The workflow file: reading the YAML, checking its shape, and applying `--set` overrides.
//!
//! This module owns the *declaration*: stages with their kind, params, inputs, `foreach` and
//! resources, as written. It does not expand fan-outs, resolve references or type-check params:
//! that is [`crate::dag`]'s job. Every problem it finds carries a file:line:column.

pub mod diag;
pub mod spans;
pub mod subst;

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

pub use diag::{Diagnostic, Diagnostics, Origin};
use spans::{dotted, Seg, SpanIndex};
use subst::key_text;

/// A parsed workflow file.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// The workflow's name (`name:`, else the file's stem); names its folder under `results/`.
    pub name: String,
    /// The file as the user named it, for messages.
    pub display_path: PathBuf,
    /// The file's canonical path: the workflow's identity in the cache's history.
    pub path: PathBuf,
    /// The folder that relative paths in the workflow are read against.
    pub dir: PathBuf,
    /// The `vars:` block.
    pub vars: Mapping,
    /// The stages, in the order written.
    pub stages: Vec<StageDecl>,
    /// Positions of every node in the file.
    pub spans: SpanIndex,
    /// `--set` overrides applied, for pointing problems at the flag instead of the file.
    pub overrides: Vec<Override>,
    /// Problems found while reading, reported together with those found when building jobs.
    pub problems: Diagnostics,
    /// Whether a stage was left out because it could not be read (later checks would only
    /// repeat the problem).
    pub incomplete: bool,
}

/// One stage as declared.
#[derive(Debug, Clone)]
pub struct StageDecl {
    /// The stage's name (its key under `stages:`).
    pub name: String,
    /// Which stage kind runs it.
    pub kind: String,
    /// Its params, not yet substituted or type-checked (a mapping).
    pub params: Value,
    /// Its inputs: name and reference (a stage, `stage[item]`, or a path), as written.
    pub inputs: Vec<(String, Value)>,
    /// `foreach:`: a list, or a template naming one.
    pub foreach: Option<Value>,
    /// `resources:` as written (checked when jobs are built).
    pub resources: Value,
}

/// A `--set stage.param.path=value` (or `--set vars.name=value`) override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The flag as the user wrote it.
    pub flag: String,
    /// The stage it targets, or `vars`.
    pub stage: String,
    /// The path inside the stage's params (or inside `vars`).
    pub path: Vec<String>,
    /// The new value, read as YAML.
    pub value: Value,
}

const TOP_KEYS: &[&str] = &["name", "description", "vars", "stages"];
const STAGE_KEYS: &[&str] = &[
    "kind",
    "description",
    "params",
    "inputs",
    "foreach",
    "resources",
];

impl Override {
    /// Parses `stage.param.path=value`.
    pub fn parse(flag: &str) -> Result<Override, Diagnostic> {
        let origin = Origin::Flag(format!("--set {flag}"));
        let bad = |message: String| Diagnostic {
            origin: origin.clone(),
            stage: None,
            message,
        };
        let (lhs, rhs) = flag.split_once('=').ok_or_else(|| {
            bad("expected STAGE.PARAM=VALUE, e.g. --set finetune.lr=1e-4".to_string())
        })?;
        let mut parts = lhs.split('.').map(str::trim);
        let stage = parts.next().unwrap_or_default().to_string();
        let path: Vec<String> = parts.map(str::to_string).collect();
        if stage.is_empty() || path.is_empty() || path.iter().any(String::is_empty) {
            return Err(bad(format!(
                "`{lhs}` must name a stage and a param, e.g. --set finetune.lr=1e-4"
            )));
        }
        let value: Value = serde_yaml::from_str(rhs)
            .map_err(|e| bad(format!("the value `{rhs}` is not valid YAML: {e}")))?;
        Ok(Override {
            flag: flag.to_string(),
            stage,
            path,
            value,
        })
    }

    /// Where this override came from.
    pub fn origin(&self) -> Origin {
        Origin::Flag(format!("--set {}", self.flag))
    }
}

impl Workflow {
    /// Reads and checks a workflow file, then applies `overrides`.
    pub fn load(file: &Path, overrides: &[String]) -> Result<Workflow, Diagnostics> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            let mut d = Diagnostics::default();
            d.push(
                Origin::File {
                    path: file.to_path_buf(),
                    line: 1,
                    col: 1,
                },
                None,
                format!("cannot read the workflow file: {e}"),
            );
            d
        })?;
        let path = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "workflow".into());
        Workflow::parse(&text, file, path, dir, &stem, overrides)
    }

    /// Parses workflow text; `display_path` names it in messages, `dir` anchors relative paths.
    pub fn parse(
        text: &str,
        display_path: &Path,
        path: PathBuf,
        dir: PathBuf,
        default_name: &str,
        overrides: &[String],
    ) -> Result<Workflow, Diagnostics> {
        let mut wf = Workflow {
            name: default_name.to_string(),
            display_path: display_path.to_path_buf(),
            path,
            dir,
            vars: Mapping::new(),
            stages: Vec::new(),
            spans: SpanIndex::default(),
            overrides: Vec::new(),
            problems: Diagnostics::default(),
            incomplete: false,
        };
        let mut errs = Diagnostics::default();
        let doc: Value = match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                // serde_yaml names only the mapping of a key written twice: name both places.
                for dup in SpanIndex::build(text).duplicate_keys() {
                    let within = match dup.mapping.as_slice() {
                        [] => String::new(),
                        path => format!(" in `{}`", dotted(path)),
                    };
                    errs.push(
                        wf.origin_at(dup.again.line, dup.again.col),
                        None,
                        format!(
                            "YAML syntax: `{}` is written twice{within} (first at line {}); \
                             a key may appear once per mapping",
                            dup.key, dup.first.line
                        ),
                    );
                }
                if errs.is_empty() {
                    let (line, col) = e
                        .location()
                        .map(|l| (l.line(), l.column()))
                        .unwrap_or((1, 1));
                    errs.push(wf.origin_at(line, col), None, format!("YAML syntax: {e}"));
                }
                return Err(errs);
            }
        };
        wf.spans = SpanIndex::build(text);
        let top = match doc {
            Value::Mapping(m) => m,
            Value::Null => {
                errs.push(
                    wf.at(&[]),
                    None,
                    "the workflow is empty; it needs a `stages:` block",
                );
                return Err(errs);
            }
            _ => {
                errs.push(
                    wf.at(&[]),
                    None,
                    "the workflow must be a mapping with a `stages:` block",
                );
                return Err(errs);
            }
        };
        for (k, v) in &top {
            let key = key_text(k);
            match key.as_str() {
                "name" => match v.as_str() {
                    Some(n) if valid_name(n) => wf.name = n.to_string(),
                    _ => errs.push(
                        wf.at(&[Seg::key("name")]),
                        None,
                        "`name` must be a word of letters, digits, `_` or `-`",
                    ),
                },
                "vars" => match v {
                    Value::Mapping(m) => wf.vars = m.clone(),
                    Value::Null => {}
                    _ => errs.push(wf.at(&[Seg::key("vars")]), None, "`vars` must be a mapping"),
                },
                "stages" | "description" => {}
                other => errs.push(
                    wf.at_key(&[Seg::key(other)]),
                    None,
                    format!(
                        "unknown top-level key `{other}` (expected one of: {})",
                        TOP_KEYS.join(", ")
                    ),
                ),
            }
        }
        match top.get("stages") {
            Some(Value::Mapping(stages)) if !stages.is_empty() => {
                for (k, v) in stages {
                    match wf.parse_stage(&key_text(k), v, &mut errs) {
                        Some(stage) => wf.stages.push(stage),
                        None => wf.incomplete = true,
                    }
                }
            }
            Some(Value::Mapping(_)) | Some(Value::Null) | None => {
                wf.incomplete = true;
                errs.push(
                    wf.at(&[]),
                    None,
                    "the workflow declares no stages: add a `stages:` mapping",
                )
            }
            Some(_) => {
                wf.incomplete = true;
                errs.push(
                    wf.at(&[Seg::key("stages")]),
                    None,
                    "`stages` must be a mapping from stage name to stage",
                )
            }
        }
        for flag in overrides {
            match Override::parse(flag) {
                Ok(o) => wf.apply(o, &mut errs),
                Err(d) => errs.0.push(d),
            }
        }
        wf.problems = errs;
        Ok(wf)
    }

    fn parse_stage(&self, name: &str, v: &Value, errs: &mut Diagnostics) -> Option<StageDecl> {
        let here = |rest: &[Seg]| {
            let mut p = vec![Seg::key("stages"), Seg::key(name)];
            p.extend_from_slice(rest);
            p
        };
        if !valid_name(name) {
            errs.push(
                self.at_key(&here(&[])),
                Some(name),
                "a stage name must be a word of letters, digits, `_` or `-` (it is used in `--set NAME.param` and `NAME[item]`)",
            );
            return None;
        }
        let Value::Mapping(m) = v else {
            errs.push(
                self.at(&here(&[])),
                Some(name),
                "a stage must be a mapping with at least `kind:`",
            );
            return None;
        };
        for k in m.keys() {
            let key = key_text(k);
            if !STAGE_KEYS.contains(&key.as_str()) {
                errs.push(
                    self.at_key(&here(&[Seg::key(&key)])),
                    Some(name),
                    format!(
                        "unknown key `{key}` (a stage has: {})",
                        STAGE_KEYS.join(", ")
                    ),
                );
            }
        }
        let kind = match m.get("kind") {
            Some(Value::String(k)) => k.clone(),
            Some(_) => {
                errs.push(
                    self.at(&here(&[Seg::key("kind")])),
                    Some(name),
                    "`kind` must be a string",
                );
                return None;
            }
            None => {
                errs.push(
                    self.at_key(&here(&[])),
                    Some(name),
                    "missing `kind:` (which stage kind runs this stage; `flora stage --list` shows them)",
                );
                return None;
            }
        };
        let params = match m.get("params") {
            None | Some(Value::Null) => Value::Mapping(Mapping::new()),
            Some(p @ Value::Mapping(_)) => p.clone(),
            Some(_) => {
                errs.push(
                    self.at(&here(&[Seg::key("params")])),
                    Some(name),
                    "`params` must be a mapping",
                );
                return None;
            }
        };
        let mut inputs = Vec::new();
        match m.get("inputs") {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(im)) => {
                for (k, v) in im {
                    let input = key_text(k);
                    if !valid_input_name(&input) {
                        errs.push(
                            self.at_key(&here(&[Seg::key("inputs"), Seg::key(&input)])),
                            Some(name),
                            format!("input name `{input}` must be letters, digits and `_`, not starting with a digit (it becomes FLORA_IN_{input})"),
                        );
                        continue;
                    }
                    inputs.push((input, v.clone()));
                }
            }
            Some(_) => errs.push(
                self.at(&here(&[Seg::key("inputs")])),
                Some(name),
                "`inputs` must be a mapping from input name to a stage or a path",
            ),
        }
        Some(StageDecl {
            name: name.to_string(),
            kind,
            params,
            inputs,
            foreach: m.get("foreach").cloned(),
            resources: m.get("resources").cloned().unwrap_or(Value::Null),
        })
    }

    fn apply(&mut self, o: Override, errs: &mut Diagnostics) {
        let declared = |name: &String| self.vars.contains_key(Value::String(name.clone()));
        let target = if o.stage == "vars" && !o.path.first().is_some_and(declared) {
            // A var nothing declares is read by nothing: most likely a typo, which would
            // otherwise leave every job cached and say nothing.
            let known: Vec<String> = self.vars.keys().map(key_text).collect();
            Err(format!(
                "the workflow has no var `{}` ({}); `--set vars.NAME` sets one its `vars:` \
                 block declares",
                o.path.first().map(String::as_str).unwrap_or(""),
                if known.is_empty() {
                    "it declares none".to_string()
                } else {
                    format!("vars: {}", known.join(", "))
                }
            ))
        } else if o.stage == "vars" {
            let mut vars = Value::Mapping(std::mem::take(&mut self.vars));
            let r = set_path(&mut vars, &o.path, o.value.clone());
            if let Value::Mapping(m) = vars {
                self.vars = m;
            }
            r
        } else if let Some(stage) = self.stages.iter_mut().find(|s| s.name == o.stage) {
            // No kind has a param named `resources`: `STAGE.resources.NAME` sets a resource.
            match o.path.split_first() {
                Some((first, [])) if first == "resources" => {
                    stage.resources = o.value.clone();
                    Ok(())
                }
                Some((first, rest)) if first == "resources" => {
                    set_path(&mut stage.resources, rest, o.value.clone())
                }
                _ => set_path(&mut stage.params, &o.path, o.value.clone()),
            }
        } else {
            let known: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
            Err(format!(
                "no stage named `{}` (stages: {}; or `vars`)",
                o.stage,
                known.join(", ")
            ))
        };
        match target {
            Ok(()) => self.overrides.push(o),
            Err(message) => errs.push(o.origin(), None, message),
        }
    }

    /// The override that set `param_path` (or a prefix of it) in `stage`, if any.
    pub fn override_for(&self, stage: &str, param_path: &[Seg]) -> Option<&Override> {
        if param_path.is_empty() {
            return None;
        }
        // One path is a prefix of the other: the flag set this param or something inside it.
        self.overrides.iter().rev().find(|o| {
            o.stage == stage
                && o.path
                    .iter()
                    .zip(param_path)
                    .all(|(a, b)| matches!(b, Seg::Key(k) if k == a))
        })
    }

    fn origin_at(&self, line: usize, col: usize) -> Origin {
        Origin::File {
            path: self.display_path.clone(),
            line,
            col,
        }
    }

    /// Where the value at `path` (from the document root) is.
    pub fn at(&self, path: &[Seg]) -> Origin {
        let p = self.spans.value(path);
        self.origin_at(p.line, p.col)
    }

    /// Where the key at `path` (from the document root) is.
    pub fn at_key(&self, path: &[Seg]) -> Origin {
        let p = self.spans.key(path);
        self.origin_at(p.line, p.col)
    }

    /// Where something inside stage `stage` is, e.g. `["params", "lr"]`; `key` points at the key.
    pub fn at_stage(&self, stage: &str, rest: &[Seg], key: bool) -> Origin {
        let mut p = vec![Seg::key("stages"), Seg::key(stage)];
        p.extend_from_slice(rest);
        if key {
            self.at_key(&p)
        } else {
            self.at(&p)
        }
    }

    /// Where a resource of `stage` is (`path` inside `resources:`): the `--set` flag that
    /// changed it, else its place in the file.
    pub fn at_resource(&self, stage: &str, path: &[Seg], key: bool) -> Origin {
        let mut full = vec![Seg::key("resources")];
        full.extend_from_slice(path);
        if let Some(o) = self.override_for(stage, &full) {
            return o.origin();
        }
        self.at_stage(stage, &full, key)
    }

    /// Where a param of `stage` is: the `--set` flag that changed it, else its place in the file.
    pub fn at_param(&self, stage: &str, param_path: &[Seg], key: bool) -> Origin {
        if let Some(o) = self.override_for(stage, param_path) {
            return o.origin();
        }
        let mut rest = vec![Seg::key("params")];
        rest.extend_from_slice(param_path);
        self.at_stage(stage, &rest, key)
    }

    /// The stage declared as `name`.
    pub fn stage(&self, name: &str) -> Option<&StageDecl> {
        self.stages.iter().find(|s| s.name == name)
    }
}

fn set_path(root: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let mut node = root;
    for (i, key) in path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = node else {
            return Err(format!(
                "cannot set `{}`: `{}` is not a mapping",
                path.join("."),
                path[..i].join(".")
            ));
        };
        let k = Value::String(key.clone());
        if i + 1 == path.len() {
            m.insert(k, value);
            return Ok(());
        }
        node = m.entry(k).or_insert(Value::Null);
    }
    Ok(())
}

/// A stage or workflow name: letters, digits, `_` and `-`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn valid_input_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, sets: &[&str]) -> Result<Workflow, Diagnostics> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Workflow::parse(
            text,
            Path::new("wf.yaml"),
            PathBuf::from("/x/wf.yaml"),
            PathBuf::from("/x"),
            "wf",
            &sets,
        )
    }

    #[test]
    fn parses_stages_in_order_and_applies_overrides() {
        let wf = parse(
            "name: demo\nvars: {n: 1}\nstages:\n  b: {kind: exec, params: {argv: [x]}}\n  a: {kind: exec, inputs: {src: b}}\n",
            &["a.env.MSG=bye", "vars.n=[1,2]"],
        )
        .unwrap();
        assert_eq!(wf.name, "demo");
        let names: Vec<&str> = wf.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(
            wf.stage("a").unwrap().params,
            serde_yaml::from_str::<Value>("{env: {MSG: bye}}").unwrap()
        );
        assert_eq!(
            wf.vars.get("n").unwrap(),
            &serde_yaml::from_str::<Value>("[1, 2]").unwrap()
        );
    }

    #[test]
    fn stage_resources_are_set_like_params() {
        let wf = parse(
            "stages:\n  a: {kind: exec, params: {argv: [x]}, resources: {threads: 2, memory: 1G}}\n  b: {kind: exec, params: {argv: [x]}}\n",
            &["a.resources.threads=8", "b.resources={gpus: 1, time: 2h}"],
        )
        .unwrap();
        let yaml = |t: &str| serde_yaml::from_str::<Value>(t).unwrap();
        assert_eq!(
            wf.stage("a").unwrap().resources,
            yaml("{threads: 8, memory: 1G}")
        );
        assert_eq!(
            wf.stage("b").unwrap().resources,
            yaml("{gpus: 1, time: 2h}")
        );
        // Params are untouched, and a resource's place is the flag that set it.
        assert_eq!(wf.stage("a").unwrap().params, yaml("{argv: [x]}"));
        assert_eq!(
            wf.at_resource("a", &[Seg::key("threads")], false)
                .to_string(),
            "--set a.resources.threads=8"
        );
        assert!(wf
            .at_resource("a", &[Seg::key("memory")], false)
            .to_string()
            .starts_with("wf.yaml:2:"));
    }

    #[test]
    fn reports_problems_with_locations() {
        let err = parse(
            "stages:\n  a: {kind: exec, colour: red}\n  b: {params: {}}\nextra: 1\n",
            &["zz.x=1", "novalue"],
        )
        .unwrap()
        .problems
        .to_string();
        assert!(
            err.contains("wf.yaml:4:1: unknown top-level key `extra`"),
            "{err}"
        );
        assert!(
            err.contains("wf.yaml:2:19: stage `a`: unknown key `colour`"),
            "{err}"
        );
        assert!(
            err.contains("wf.yaml:3:3: stage `b`: missing `kind:`"),
            "{err}"
        );
        assert!(err.contains("--set zz.x=1: no stage named `zz`"), "{err}");
        assert!(
            err.contains("--set novalue: expected STAGE.PARAM=VALUE"),
            "{err}"
        );
        let err = parse("stages:\n  a: [unclosed\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("wf.yaml:"), "{err}");
        assert!(err.contains("YAML syntax"), "{err}");
    }
}
