//! GPUs a stage asks for (`resources: {gpus: N}`) that its jobs would leave idle, as its kind
//! judges them (`registry::gpu_use`). A local run would hold them from other jobs, and a cluster
//! job would ask Slurm for them; `plan`, `run` and `stage` warn, before anything runs.

use super::JobGraph;

/// Prints [`warnings`] to stderr.
pub fn warn(graph: &JobGraph) {
    for warning in warnings(graph) {
        eprintln!("{warning}");
    }
}

/// One warning for each stage whose jobs would leave some of the GPUs they ask for idle (judged
/// by its first job: a fan-out's jobs share their resources).
pub fn warnings(graph: &JobGraph) -> Vec<String> {
    let mut out = Vec::new();
    for stage in &graph.stages {
        let Some(&first) = stage.jobs.first() else {
            continue;
        };
        let job = &graph.jobs[first];
        let asked = job.resources.gpus;
        if let Some(why) = job.kind.gpus.idle(&job.params, asked) {
            out.push(format!(
                "warning: stage `{}` asks for {asked} GPU{}, but {why}",
                stage.name,
                if asked == 1 { "" } else { "s" }
            ));
        }
    }
    out
}
