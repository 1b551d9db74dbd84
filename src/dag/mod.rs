//! The job graph: a workflow's stages expanded into jobs (one per `foreach` item), with every
//! template substituted, every param type-checked by its kind, and every input resolved to a file,
//! an upstream job, or all jobs of an upstream fan-out.
//!
//! Building the graph runs nothing and reads no cache: it only decides *what* there is to do.
//! Dependencies come from inputs alone; a cycle among stages is an error that names the cycle.

pub mod gpu_use;
pub mod render;
pub mod resources;
pub mod undeclared;

/// Warns, before anything runs, about what the workflow asks for that will not work as meant:
/// files read without being inputs ([`undeclared`]), GPUs its jobs would leave idle
/// ([`gpu_use`]).
pub fn warn(graph: &JobGraph) {
    undeclared::warn(graph);
    gpu_use::warn(graph);
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use petgraph::graphmap::DiGraphMap;
use serde_yaml::Value;

use crate::registry::{self, Kind};
use crate::workflow::spans::Seg;
use crate::workflow::subst::{self, scalar_text, Scope, SubstError};
use crate::workflow::{Diagnostics, Workflow};
pub use resources::Resources;

/// Where an input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file or folder outside the cache (absolute path).
    Path(PathBuf),
    /// The artifact of one job.
    Job(usize),
    /// The artifacts of every job of a fan-out stage, as a folder with one entry per item.
    Collection(Vec<(String, usize)>),
}

/// One input of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The input's name (`FLORA_IN_<name>`).
    pub name: String,
    /// Where it comes from.
    pub source: Source,
    /// A path inside an upstream artifact (`stage/sub/path`), if one was given.
    pub sub: Option<PathBuf>,
    /// The reference as written (after substitution), for messages.
    pub written: String,
}

/// One job: a stage, or one item of a fan-out stage.
#[derive(Debug, Clone)]
pub struct Job {
    /// `stage`, or `stage[item]` in a fan-out.
    pub id: String,
    /// Index of its stage in [`JobGraph::stages`].
    pub stage: usize,
    /// The `foreach` item's label.
    pub item: Option<String>,
    /// Its kind.
    pub kind: &'static Kind,
    /// Canonical params (defaults filled in, keys sorted).
    pub params: serde_json::Value,
    /// Its inputs, sorted by name.
    pub inputs: Vec<Input>,
    /// What it asks of the machine.
    pub resources: Resources,
    /// Jobs whose artifacts it reads.
    pub deps: Vec<usize>,
}

/// A stage of the graph and its jobs.
#[derive(Debug, Clone)]
pub struct StageInfo {
    /// The stage's name.
    pub name: String,
    /// Its kind's name.
    pub kind: String,
    /// Whether it fans out over `foreach`.
    pub foreach: bool,
    /// Its jobs, in item order.
    pub jobs: Vec<usize>,
    /// Stages it reads from.
    pub deps: Vec<usize>,
}

/// A workflow expanded into jobs, in an order where every job comes after its dependencies.
#[derive(Debug, Clone)]
pub struct JobGraph {
    /// The workflow it came from.
    pub workflow: Workflow,
    /// Stages in dependency order.
    pub stages: Vec<StageInfo>,
    /// Jobs in dependency order.
    pub jobs: Vec<Job>,
    /// For each job, the jobs that read it.
    pub dependents: Vec<Vec<usize>>,
}

/// An input reference before it is tied to jobs.
#[derive(Debug, Clone)]
enum Ref {
    Stage {
        stage: String,
        item: Option<String>,
        sub: Option<PathBuf>,
    },
    Path(PathBuf),
}

struct Pending {
    decl: usize,
    item: Option<String>,
    params: serde_json::Value,
    inputs: Vec<(String, Ref, String)>,
    resources: Resources,
}

impl JobGraph {
    /// Expands and checks `wf`, reporting every problem with its place.
    pub fn build(mut wf: Workflow) -> Result<JobGraph, Diagnostics> {
        let mut errs = std::mem::take(&mut wf.problems);
        if wf.incomplete {
            return Err(errs);
        }
        let vars = resolve_vars(&wf, &mut errs);
        let names: HashMap<&str, usize> = wf
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();

        // Items of every fan-out stage, needed to check `stage[item]` references.
        let mut items: Vec<Option<Vec<(String, Value)>>> = Vec::new();
        for decl in &wf.stages {
            items.push(
                decl.foreach
                    .as_ref()
                    .and_then(|f| expand_foreach(&wf, &decl.name, f, &vars, &mut errs)),
            );
        }

        let mut pending: Vec<Pending> = Vec::new();
        for (di, decl) in wf.stages.iter().enumerate() {
            let Some(kind) = registry::lookup(&decl.kind) else {
                let known: Vec<&str> = registry::all().iter().map(|k| k.name).collect();
                errs.push(
                    wf.at_stage(&decl.name, &[Seg::key("kind")], false),
                    Some(&decl.name),
                    format!(
                        "unknown kind `{}` (known kinds: {})",
                        decl.kind,
                        known.join(", ")
                    ),
                );
                continue;
            };
            if decl.foreach.is_some() && items[di].is_none() {
                continue; // already reported
            }
            let job_items: Vec<(Option<String>, Option<&Value>)> = match &items[di] {
                Some(list) => list
                    .iter()
                    .map(|(l, v)| (Some(l.clone()), Some(v)))
                    .collect(),
                None => vec![(None, None)],
            };
            let mut reported = false;
            for (label, item) in job_items {
                let scope = Scope { vars: &vars, item };
                let before = errs.0.len();
                let job = build_pending(&wf, di, kind, label, &scope, &names, &items, &mut errs);
                // One fan-out usually repeats the same mistake per item: say it once.
                if errs.0.len() > before {
                    if reported {
                        errs.0.truncate(before);
                    }
                    reported = true;
                }
                if let Some(job) = job {
                    pending.push(job);
                }
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }

        // Stage graph: order and cycles.
        let mut graph: DiGraphMap<usize, ()> = DiGraphMap::new();
        for i in 0..wf.stages.len() {
            graph.add_node(i);
        }
        for p in &pending {
            for (_, r, _) in &p.inputs {
                if let Ref::Stage { stage, .. } = r {
                    graph.add_edge(names[stage.as_str()], p.decl, ());
                }
            }
        }
        let Some(order) = declaration_order_topo(&graph, wf.stages.len()) else {
            report_cycle(&wf, &graph, &mut errs);
            return Err(errs);
        };

        // Jobs, stage by stage in dependency order.
        let mut stages: Vec<StageInfo> = Vec::new();
        let mut stage_index: HashMap<usize, usize> = HashMap::new();
        let mut jobs: Vec<Job> = Vec::new();
        let mut by_decl: HashMap<usize, Vec<Pending>> = HashMap::new();
        for p in pending {
            by_decl.entry(p.decl).or_default().push(p);
        }
        for di in order {
            let decl = &wf.stages[di];
            let si = stages.len();
            stage_index.insert(di, si);
            let mut info = StageInfo {
                name: decl.name.clone(),
                kind: decl.kind.clone(),
                foreach: decl.foreach.is_some(),
                jobs: Vec::new(),
                deps: Vec::new(),
            };
            for p in by_decl.remove(&di).unwrap_or_default() {
                let mut inputs = Vec::new();
                let mut deps = Vec::new();
                for (name, r, written) in p.inputs {
                    let (source, sub) = match r {
                        Ref::Path(path) => (Source::Path(path), None),
                        Ref::Stage { stage, item, sub } => {
                            let up = &stages[stage_index[&names[stage.as_str()]]];
                            if !info.deps.contains(&stage_index[&names[stage.as_str()]]) {
                                info.deps.push(stage_index[&names[stage.as_str()]]);
                            }
                            let source = match item {
                                Some(item) => {
                                    let j = *up
                                        .jobs
                                        .iter()
                                        .find(|&&j| jobs[j].item.as_deref() == Some(&item))
                                        .expect("items were checked");
                                    deps.push(j);
                                    Source::Job(j)
                                }
                                None if up.foreach => {
                                    deps.extend(up.jobs.iter().copied());
                                    Source::Collection(
                                        up.jobs
                                            .iter()
                                            .map(|&j| (jobs[j].item.clone().unwrap_or_default(), j))
                                            .collect(),
                                    )
                                }
                                None => {
                                    deps.push(up.jobs[0]);
                                    Source::Job(up.jobs[0])
                                }
                            };
                            (source, sub)
                        }
                    };
                    inputs.push(Input {
                        name,
                        source,
                        sub,
                        written,
                    });
                }
                inputs.sort_by(|a, b| a.name.cmp(&b.name));
                deps.sort_unstable();
                deps.dedup();
                let id = match &p.item {
                    Some(item) => format!("{}[{item}]", decl.name),
                    None => decl.name.clone(),
                };
                info.jobs.push(jobs.len());
                jobs.push(Job {
                    id,
                    stage: si,
                    item: p.item,
                    kind: registry::lookup(&decl.kind).expect("kinds were checked"),
                    params: p.params,
                    inputs,
                    resources: p.resources,
                    deps,
                });
            }
            stages.push(info);
        }
        let mut dependents = vec![Vec::new(); jobs.len()];
        for (j, job) in jobs.iter().enumerate() {
            for &d in &job.deps {
                dependents[d].push(j);
            }
        }
        Ok(JobGraph {
            workflow: wf,
            stages,
            jobs,
            dependents,
        })
    }

    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&StageInfo> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The jobs named by `selector`: a stage name (all its jobs) or a job id `stage[item]`.
    pub fn select(&self, selector: &str) -> Result<Vec<usize>, String> {
        if let Some(j) = self.jobs.iter().position(|j| j.id == selector) {
            if self.jobs[j].item.is_some() || !self.stages[self.jobs[j].stage].foreach {
                return Ok(vec![j]);
            }
        }
        if let Some(s) = self.stage(selector) {
            return Ok(s.jobs.clone());
        }
        let known: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
        Err(format!(
            "workflow `{}` has no stage or job `{selector}` (stages: {})",
            self.workflow.name,
            known.join(", ")
        ))
    }

    /// `roots` and every job they depend on, directly or not.
    pub fn ancestors(&self, roots: &[usize]) -> Vec<bool> {
        let mut keep = vec![false; self.jobs.len()];
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(j) = stack.pop() {
            if !keep[j] {
                keep[j] = true;
                stack.extend(self.jobs[j].deps.iter().copied());
            }
        }
        keep
    }
}

fn resolve_vars(wf: &Workflow, errs: &mut Diagnostics) -> serde_yaml::Mapping {
    // A var may use the vars written above it.
    let mut resolved = serde_yaml::Mapping::new();
    for (k, v) in &wf.vars {
        let mut problems = Vec::new();
        let value = subst::substitute(
            v,
            &Scope {
                vars: &resolved,
                item: None,
            },
            &mut problems,
        );
        let name = subst::key_text(k);
        for p in problems {
            let mut path = vec![Seg::key("vars"), Seg::key(&name)];
            path.extend(p.path);
            errs.push(wf.at(&path), None, format!("var `{name}`: {}", p.message));
        }
        resolved.insert(k.clone(), value);
    }
    resolved
}

fn expand_foreach(
    wf: &Workflow,
    stage: &str,
    foreach: &Value,
    vars: &serde_yaml::Mapping,
    errs: &mut Diagnostics,
) -> Option<Vec<(String, Value)>> {
    let at = |rest: &[Seg]| {
        let mut p = vec![Seg::key("foreach")];
        p.extend_from_slice(rest);
        wf.at_stage(stage, &p, false)
    };
    let mut problems = Vec::new();
    let value = subst::substitute(foreach, &Scope { vars, item: None }, &mut problems);
    if let Some(p) = problems.first() {
        errs.push(at(&p.path), Some(stage), format!("foreach: {}", p.message));
        return None;
    }
    let value = match value {
        Value::Mapping(m) if m.contains_key("table") => match table_items(&wf.dir, &m) {
            Ok(list) => Value::Sequence(list),
            Err(e) => {
                errs.push(at(&[]), Some(stage), format!("foreach: {e}"));
                return None;
            }
        },
        v => v,
    };
    let Value::Sequence(list) = value else {
        errs.push(
            at(&[]),
            Some(stage),
            "`foreach` must be a list, `${vars.NAME}` naming one, or `{table: FILE.tsv}`",
        );
        return None;
    };
    if list.is_empty() {
        errs.push(
            at(&[]),
            Some(stage),
            "`foreach` is an empty list: the stage would have no jobs",
        );
        return None;
    }
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, item) in list.into_iter().enumerate() {
        let label = match &item {
            Value::Mapping(m) => m
                .get("name")
                .or_else(|| m.get("id"))
                .and_then(scalar_text)
                .unwrap_or_else(|| i.to_string()),
            Value::Sequence(_) => i.to_string(),
            other => scalar_text(other).unwrap_or_default(),
        };
        let bad = label.is_empty()
            || label == "."
            || label == ".."
            || label.trim() != label
            || label.chars().any(|c| c.is_control() || "/[]".contains(c));
        if bad {
            errs.push(
                at(&[Seg::Index(i)]),
                Some(stage),
                format!("foreach item {label:?} cannot name a job: use a non-empty word without `/`, `[`, `]` or surrounding spaces"),
            );
            return None;
        }
        if let Some(first) = seen.insert(label.clone(), i) {
            errs.push(
                at(&[Seg::Index(i)]),
                Some(stage),
                format!("foreach item `{label}` repeats item {first}: every item must name a different job"),
            );
            return None;
        }
        out.push((label, item));
    }
    Some(out)
}

/// The rows of a `foreach: {table: FILE.tsv, where: {column: value}}` table (tab-separated, a
/// header line, `#` comments), each a mapping from column to cell (numbers read as numbers, empty
/// cells as null),
/// keeping the rows whose cells equal every `where` value.
fn table_items(dir: &Path, spec: &serde_yaml::Mapping) -> Result<Vec<Value>, String> {
    for k in spec.keys() {
        let key = scalar_text(k).unwrap_or_default();
        if key != "table" && key != "where" {
            return Err(format!(
                "unknown key `{key}` (a table foreach has: table, where)"
            ));
        }
    }
    let file = spec
        .get("table")
        .and_then(scalar_text)
        .ok_or("`table` must be a file name")?;
    let path = dir.join(&file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let header: Vec<&str> = match lines.next() {
        Some((_, h)) => h.split('\t').map(str::trim).collect(),
        None => return Err(format!("{}: the table is empty", path.display())),
    };
    let filters: Vec<(String, String)> = match spec.get("where") {
        None => Vec::new(),
        Some(Value::Mapping(w)) => w
            .iter()
            .map(|(k, v)| {
                let (k, v) = (
                    scalar_text(k).unwrap_or_default(),
                    scalar_text(v).unwrap_or_default(),
                );
                if header.contains(&k.as_str()) {
                    Ok((k, v))
                } else {
                    Err(format!(
                        "{}: `where` names a column `{k}` that the table lacks (it has {})",
                        path.display(),
                        header.join(", ")
                    ))
                }
            })
            .collect::<Result<_, String>>()?,
        Some(_) => return Err("`where` must map columns to values".into()),
    };
    let mut out = Vec::new();
    for (i, line) in lines {
        let cells: Vec<&str> = line.split('\t').map(str::trim).collect();
        if cells.len() != header.len() {
            return Err(format!(
                "{} line {}: {} cells for {} columns",
                path.display(),
                i + 1,
                cells.len(),
                header.len()
            ));
        }
        if filters
            .iter()
            .any(|(k, v)| cells[header.iter().position(|h| h == k).unwrap_or(0)] != v)
        {
            continue;
        }
        let mut m = serde_yaml::Mapping::new();
        for (h, c) in header.iter().zip(&cells) {
            let v = match serde_yaml::from_str::<Value>(c) {
                _ if c.is_empty() => Value::Null,
                Ok(n @ Value::Number(_)) => n,
                _ => Value::String(c.to_string()),
            };
            m.insert(Value::String(h.to_string()), v);
        }
        out.push(Value::Mapping(m));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn build_pending(
    wf: &Workflow,
    di: usize,
    kind: &'static Kind,
    item: Option<String>,
    scope: &Scope,
    names: &HashMap<&str, usize>,
    items: &[Option<Vec<(String, Value)>>],
    errs: &mut Diagnostics,
) -> Option<Pending> {
    let decl = &wf.stages[di];
    let stage = decl.name.as_str();
    let ok_before = errs.0.len();

    // Params: substitute, then let the kind check types and fill defaults.
    let mut problems: Vec<SubstError> = Vec::new();
    let params = subst::substitute(&decl.params, scope, &mut problems);
    for p in &problems {
        errs.push(
            wf.at_param(stage, &p.path, false),
            Some(stage),
            p.message.clone(),
        );
    }
    let mut canonical = serde_json::Value::Null;
    if problems.is_empty() {
        match (kind.check)(&params) {
            Ok(c) => canonical = c,
            Err(e) => errs.push(
                wf.at_param(stage, &e.path, e.at_key),
                Some(stage),
                format!("{} (kind `{}`)", e.message, kind.name),
            ),
        }
    }

    // Resources.
    let mut problems = Vec::new();
    let res_value = subst::substitute(&decl.resources, scope, &mut problems);
    let resources = if res_value.is_null() {
        Resources::default()
    } else {
        match serde_path_to_error::deserialize::<_, Resources>(res_value) {
            Ok(r) => r,
            Err(e) => {
                let e = registry::param_error(e);
                errs.push(
                    wf.at_resource(stage, &e.path, e.at_key),
                    Some(stage),
                    format!(
                        "resources: {}",
                        e.message.replace("unknown param", "unknown field")
                    ),
                );
                Resources::default()
            }
        }
    };
    if resources.threads == 0 {
        errs.push(
            wf.at_resource(stage, &[Seg::key("threads")], false),
            Some(stage),
            "resources: `threads` must be at least 1",
        );
    }
    if resources.bundle == 0 {
        errs.push(
            wf.at_resource(stage, &[Seg::key("bundle")], false),
            Some(stage),
            "resources: `bundle` must be at least 1 (1: each job is a Slurm job of its own)",
        );
    }
    if resources.bundle_parallel == 0 {
        errs.push(
            wf.at_resource(stage, &[Seg::key("bundle_parallel")], false),
            Some(stage),
            "resources: `bundle_parallel` must be at least 1 (1: a bundle's jobs run one after another)",
        );
    } else if resources.bundle_parallel > 1 && resources.gpus > 0 {
        errs.push(
            wf.at_resource(stage, &[Seg::key("bundle_parallel")], false),
            Some(stage),
            "resources: a bundle of GPU jobs runs them one after another: `bundle_parallel` needs `gpus: 0`",
        );
    }

    // Inputs.
    let mut inputs = Vec::new();
    for (name, raw) in &decl.inputs {
        let at = wf.at_stage(stage, &[Seg::key("inputs"), Seg::key(name)], false);
        let mut problems = Vec::new();
        let value = subst::substitute(raw, scope, &mut problems);
        if let Some(p) = problems.first() {
            errs.push(at, Some(stage), format!("input `{name}`: {}", p.message));
            continue;
        }
        let Some(text) = value.as_str().map(str::to_string) else {
            errs.push(
                at,
                Some(stage),
                format!("input `{name}` must be a stage name, `stage[item]`, or a path"),
            );
            continue;
        };
        match parse_ref(&text, &wf.dir, names, items, &wf.stages) {
            Ok(r) => inputs.push((name.clone(), r, text)),
            Err(message) => errs.push(at, Some(stage), format!("input `{name}`: {message}")),
        }
    }
    if errs.0.len() > ok_before {
        return None;
    }
    Some(Pending {
        decl: di,
        item,
        params: canonical,
        inputs,
        resources,
    })
}

fn parse_ref(
    text: &str,
    dir: &Path,
    names: &HashMap<&str, usize>,
    items: &[Option<Vec<(String, Value)>>],
    decls: &[crate::workflow::StageDecl],
) -> Result<Ref, String> {
    let is_explicit_path =
        text.starts_with('/') || text.starts_with("./") || text.starts_with("../");
    if !is_explicit_path && !text.is_empty() {
        // `name`, `name[item]`, optionally followed by `/sub/path`.
        let (head, sub) = match text.find('/') {
            Some(i) if !text[..i].contains('[') || text[..i].ends_with(']') => {
                (&text[..i], Some(&text[i + 1..]))
            }
            _ => match text.find("]/") {
                Some(i) => (&text[..=i], Some(&text[i + 2..])),
                None => (text, None),
            },
        };
        let (name, item) = match head.split_once('[') {
            Some((n, rest)) => match rest.strip_suffix(']') {
                Some(item) => (n, Some(item.to_string())),
                None => return Err(format!("`{text}`: unclosed `[` in a job reference")),
            },
            None => (head, None),
        };
        let sub = sub.filter(|s| !s.is_empty()).map(PathBuf::from);
        if let Some(sub) = &sub {
            if sub
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(format!(
                    "`{text}`: a path inside an artifact may not contain `..` or start with `/`"
                ));
            }
        }
        if let Some(&si) = names.get(name) {
            if let Some(item) = &item {
                match &items[si] {
                    None => {
                        return Err(format!(
                            "`{text}`: stage `{name}` has no `foreach`, so it has no item `{item}`"
                        ))
                    }
                    Some(list) if !list.iter().any(|(l, _)| l == item) => {
                        let labels: Vec<&str> =
                            list.iter().take(10).map(|(l, _)| l.as_str()).collect();
                        return Err(format!(
                            "`{text}`: stage `{name}` has no item `{item}` (items: {}{})",
                            labels.join(", "),
                            if list.len() > 10 { ", ..." } else { "" }
                        ));
                    }
                    _ => {}
                }
            }
            return Ok(Ref::Stage {
                stage: name.to_string(),
                item,
                sub,
            });
        }
        if item.is_some() {
            let known: Vec<&str> = decls.iter().map(|d| d.name.as_str()).collect();
            return Err(format!(
                "`{text}` refers to a stage `{name}` that does not exist (stages: {})",
                known.join(", ")
            ));
        }
    }
    let path = dir.join(text);
    if text.is_empty() || !path.exists() {
        let looks_like_stage = crate::workflow::valid_name(text);
        let known: Vec<&str> = decls.iter().map(|d| d.name.as_str()).collect();
        return Err(if looks_like_stage {
            format!(
                "`{text}` is neither a stage (stages: {}) nor an existing file ({})",
                known.join(", "),
                path.display()
            )
        } else {
            format!("no such file or folder: {}", path.display())
        });
    }
    Ok(Ref::Path(std::fs::canonicalize(&path).unwrap_or(path)))
}

/// A dependency order that keeps the order stages are written in wherever dependencies allow
/// (Kahn's algorithm, smallest declaration index first); `None` when there is a cycle.
fn declaration_order_topo(graph: &DiGraphMap<usize, ()>, n: usize) -> Option<Vec<usize>> {
    use std::cmp::Reverse;
    let mut indegree = vec![0usize; n];
    for (_, to, _) in graph.all_edges() {
        indegree[to] += 1;
    }
    let mut ready: std::collections::BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for next in graph.neighbors(i) {
            indegree[next] -= 1;
            if indegree[next] == 0 {
                ready.push(Reverse(next));
            }
        }
    }
    (order.len() == n).then_some(order)
}

fn report_cycle(wf: &Workflow, graph: &DiGraphMap<usize, ()>, errs: &mut Diagnostics) {
    for scc in petgraph::algo::tarjan_scc(graph) {
        let looped = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
        if !looped {
            continue;
        }
        // The shortest way round the cycle, from the first stage written, breadth first.
        let start = *scc.iter().min().expect("non-empty");
        let mut parent: HashMap<usize, usize> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut last = start;
        'search: while let Some(n) = queue.pop_front() {
            let mut next: Vec<usize> = graph.neighbors(n).filter(|m| scc.contains(m)).collect();
            next.sort_unstable();
            for m in next {
                if m == start {
                    last = n;
                    break 'search;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(m) {
                    e.insert(n);
                    queue.push_back(m);
                }
            }
        }
        let mut path = vec![last];
        while *path.last().expect("non-empty") != start {
            path.push(parent[path.last().expect("non-empty")]);
        }
        path.reverse();
        path.push(start);
        let names: Vec<&str> = path.iter().map(|&i| wf.stages[i].name.as_str()).collect();
        let from = wf.stages[path[1]].name.as_str();
        let input = wf.stages[path[1]]
            .inputs
            .iter()
            .find(|(_, v)| {
                v.as_str()
                    .map(|s| s.split(['[', '/']).next() == Some(names[0]))
                    .unwrap_or(false)
            })
            .map(|(n, _)| n.clone());
        let origin = match &input {
            Some(n) => wf.at_stage(from, &[Seg::key("inputs"), Seg::key(n)], false),
            None => wf.at_stage(from, &[], true),
        };
        errs.push(
            origin,
            Some(from),
            format!("dependency cycle: {}", names.join(" -> ")),
        );
        return;
    }
}
