//! Training checkpoints in a job's work folder: tensors (weights, the optimizer's moments, and
//! whatever else a stage keeps) and a small state, so that a run stopped by a crash, a signal, a
//! pre-emption or a time limit goes on from there. Pretraining and fine-tuning both use it.
//!
//! `checkpoint.json` is the one commit point: it names the tensors file it describes
//! (`checkpoint-<step>.safetensors`), and it is replaced by a rename only after that file is
//! complete. A run killed at any moment leaves either the old checkpoint or the new one, never a
//! state that describes other tensors. A checkpoint that cannot be read (a disk error, a file
//! edited by hand, another stage's) is reported and training starts over, rather than failing
//! every retry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::lamb::Lamb;

/// The checkpoint's state file.
const STATE: &str = "checkpoint.json";

/// What `checkpoint.json` holds: the tensors file, and the stage's own state beside it.
#[derive(Serialize, Deserialize)]
struct StateFile<S> {
    /// The tensors file (in the work folder) this state describes.
    weights: String,
    #[serde(flatten)]
    state: S,
}

/// The step of the checkpoint in `work`, where its state file gives one (pretraining's and
/// fine-tuning's do; an `exec` program may write one too). Only `step` is read: pretraining's
/// state also holds its whole training log, a row a step (about 17 MB of JSON after the paper's
/// 282,000 steps), which is skipped without being kept.
pub fn saved_step(work: &Path) -> Option<u64> {
    #[derive(Deserialize)]
    struct Step {
        step: u64,
    }
    let bytes = std::fs::read(work.join(STATE)).ok()?;
    serde_json::from_slice::<Step>(&bytes).ok().map(|s| s.step)
}

/// Whether `work` holds a checkpoint.
pub fn exists(work: &Path) -> bool {
    work.join(STATE).is_file()
}

/// Writes the checkpoint after `step`, then removes the one before it.
pub fn save<S: Serialize>(
    work: &Path,
    step: u64,
    tensors: &HashMap<String, Tensor>,
    state: &S,
) -> Result<(), String> {
    let name = format!("checkpoint-{step}.safetensors");
    let tmp = work.join(format!("{name}.tmp"));
    let fail = |path: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| fail(&tmp, &e))?;
    std::fs::rename(&tmp, work.join(&name)).map_err(|e| fail(&tmp, &e))?;
    let file = StateFile {
        weights: name.clone(),
        state,
    };
    let state_tmp = work.join(format!("{STATE}.tmp"));
    std::fs::write(&state_tmp, serde_json::to_vec(&file).expect("serializes"))
        .map_err(|e| fail(&state_tmp, &e))?;
    std::fs::rename(&state_tmp, work.join(STATE)).map_err(|e| fail(&state_tmp, &e))?;
    for old in weights_files(work) {
        if old.file_name().is_some_and(|n| *n != *name) {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(())
}

/// The checkpoint in `work`, read and handed to `restore`, if there is one that can be read
/// and restored. One that cannot is reported on stderr (the job's log) as `stage`'s, and
/// removed: training then starts over.
pub fn load<S: DeserializeOwned, R>(
    work: &Path,
    dev: &Device,
    stage: &str,
    restore: impl FnOnce(HashMap<String, Tensor>, S) -> Result<R, String>,
) -> Option<R> {
    if !exists(work) {
        return None;
    }
    let read = || -> Result<R, String> {
        let path = work.join(STATE);
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: StateFile<S> =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let weights = work.join(&file.weights);
        let tensors = candle_core::safetensors::load(&weights, dev)
            .map_err(|e| format!("{}: {e}", weights.display()))?;
        restore(tensors, file.state).map_err(|e| format!("{}: {e}", weights.display()))
    };
    match read() {
        Ok(restored) => Some(restored),
        Err(why) => {
            eprintln!("{stage}: warning: the checkpoint cannot be read ({why}); starting over");
            remove(work);
            None
        }
    }
}

/// Removes the checkpoint: its state, its tensors and any file a killed save left half-written.
pub fn remove(work: &Path) {
    let _ = std::fs::remove_file(work.join(STATE));
    for f in weights_files(work) {
        let _ = std::fs::remove_file(f);
    }
}

/// Every checkpoint tensors file in `work`, complete or half-written (and the single
/// `checkpoint.safetensors` of flora before 2026-11-29).
fn weights_files(work: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(work) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("checkpoint") && n.contains(".safetensors"))
        })
        .collect()
}

/// Adds LAMB's moments to `tensors` (`lamb.m.NAME`, `lamb.v.NAME`).
pub fn put_lamb(opt: &Lamb, tensors: &mut HashMap<String, Tensor>) {
    for (k, v) in &opt.m {
        tensors.insert(format!("lamb.m.{k}"), v.clone());
    }
    for (k, v) in &opt.v {
        tensors.insert(format!("lamb.v.{k}"), v.clone());
    }
}

/// Takes LAMB's moments out of `tensors`, as an optimizer that has taken `step` steps with
/// `weight_decay`.
pub fn take_lamb(tensors: &mut HashMap<String, Tensor>, step: u64, weight_decay: f64) -> Lamb {
    let mut opt = Lamb::new(weight_decay);
    opt.step = step;
    let keys: Vec<String> = tensors.keys().cloned().collect();
    for k in keys {
        if let Some(name) = k.strip_prefix("lamb.m.") {
            opt.m
                .insert(name.to_string(), tensors.remove(&k).expect("listed"));
        } else if let Some(name) = k.strip_prefix("lamb.v.") {
            opt.v
                .insert(name.to_string(), tensors.remove(&k).expect("listed"));
        }
    }
    opt
}

/// When checkpoints are written: every `every` steps when given, else once `minutes` have
/// passed since the last one (or the run's start).
pub struct Schedule {
    every: Option<u64>,
    interval: Duration,
    since: Instant,
    /// The step of the last checkpoint there is (a resumed run's starting one).
    pub last: Option<u64>,
}

impl Schedule {
    /// A schedule for a run that starts at step `resumed_from` (0: from the start).
    pub fn new(every: Option<u64>, minutes: f64, resumed_from: u64) -> Self {
        Schedule {
            every,
            // Negative or NaN minutes are none; too many for a Duration, never.
            interval: Duration::try_from_secs_f64(minutes.max(0.0) * 60.0).unwrap_or(Duration::MAX),
            since: Instant::now(),
            last: (resumed_from > 0).then_some(resumed_from),
        }
    }

    /// Whether a checkpoint is due after `step`.
    pub fn due(&self, step: u64) -> bool {
        match self.every {
            Some(n) => step.is_multiple_of(n.max(1)),
            None => self.since.elapsed() >= self.interval,
        }
    }

    /// Records a checkpoint written after `step`.
    pub fn written(&mut self, step: u64) {
        self.last = Some(step);
        self.since = Instant::now();
    }
}

/// How a test ends a training run early, as a crash or a stop would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// After this step, as a crash would: with only the checkpoints written by then.
    Crash(u64),
    /// After this step, as a SIGTERM would: with a checkpoint of that step.
    Stop(u64),
    /// During the validation that follows this step, as a SIGTERM there would.
    StopValidating(u64),
}
