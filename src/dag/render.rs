//! The job graph drawn as Graphviz dot or Mermaid, stage by stage or job by job.

use std::fmt::Write;

use super::JobGraph;

/// Output formats of `flora dag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Graphviz dot (`dot -Tsvg`).
    Dot,
    /// Mermaid flowchart (renders on GitHub and in most Markdown viewers).
    Mermaid,
}

struct Node {
    id: String,
    label: String,
}

fn nodes_and_edges(g: &JobGraph, jobs: bool) -> (Vec<Node>, Vec<(usize, usize)>) {
    if jobs {
        let nodes = g
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| Node {
                id: format!("j{i}"),
                label: format!("{} ({})", j.id, j.kind.name),
            })
            .collect();
        let edges = g
            .jobs
            .iter()
            .enumerate()
            .flat_map(|(i, j)| j.deps.iter().map(move |&d| (d, i)))
            .collect();
        (nodes, edges)
    } else {
        let nodes = g
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| Node {
                id: format!("s{i}"),
                label: if s.foreach {
                    format!("{} ({}) x{}", s.name, s.kind, s.jobs.len())
                } else {
                    format!("{} ({})", s.name, s.kind)
                },
            })
            .collect();
        let edges = g
            .stages
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.deps.iter().map(move |&d| (d, i)))
            .collect();
        (nodes, edges)
    }
}

/// Draws the graph; `jobs` draws one node per job instead of per stage.
pub fn render(g: &JobGraph, format: Format, jobs: bool) -> String {
    let (nodes, edges) = nodes_and_edges(g, jobs);
    let mut out = String::new();
    match format {
        Format::Dot => {
            let _ = writeln!(out, "digraph {:?} {{", g.workflow.name);
            let _ = writeln!(out, "  rankdir=LR;\n  node [shape=box, style=rounded];");
            for n in &nodes {
                let _ = writeln!(out, "  {} [label={:?}];", n.id, n.label);
            }
            for (a, b) in &edges {
                let _ = writeln!(out, "  {} -> {};", nodes[*a].id, nodes[*b].id);
            }
            out.push_str("}\n");
        }
        Format::Mermaid => {
            out.push_str("flowchart LR\n");
            for n in &nodes {
                let label = n.label.replace('"', "#quot;");
                let _ = writeln!(out, "  {}[\"{label}\"]", n.id);
            }
            for (a, b) in &edges {
                let _ = writeln!(out, "  {} --> {}", nodes[*a].id, nodes[*b].id);
            }
        }
    }
    out
}
