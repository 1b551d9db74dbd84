//! What a stage is given when it runs: its inputs, its output folder, a work folder, and resources.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Everything a stage function needs to know about where it runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Context {
    /// Named inputs: a file or folder each (an upstream artifact, or a file named in the workflow).
    pub inputs: BTreeMap<String, PathBuf>,
    /// The empty folder the stage writes its output into; published only if the stage succeeds.
    pub out: PathBuf,
    /// A folder that survives a crash of this job (checkpoints); keyed by the job's cache key.
    pub work: PathBuf,
    /// The folder that relative paths in params are read against (the workflow file's folder).
    pub workdir: PathBuf,
    /// How many threads the stage may use.
    pub threads: usize,
    /// GPU device indices given to this job (empty: run on the CPU).
    pub gpus: Vec<usize>,
    /// Whether a cluster scheduler (Slurm) chose the GPUs and set `CUDA_VISIBLE_DEVICES`
    /// already: `gpus` are then ordinals among the visible devices, and the variable stays.
    #[serde(default)]
    pub cluster_gpus: bool,
    /// A provenance file (see `report::provenance`) written by the engine for kinds that ask for
    /// one; absent outside a workflow.
    #[serde(default)]
    pub provenance: Option<PathBuf>,
}

impl Context {
    /// A context with no inputs, one thread and no GPU.
    pub fn new(out: PathBuf, work: PathBuf, workdir: PathBuf) -> Self {
        Self {
            inputs: BTreeMap::new(),
            out,
            work,
            workdir,
            threads: 1,
            gpus: Vec::new(),
            cluster_gpus: false,
            provenance: None,
        }
    }
}
