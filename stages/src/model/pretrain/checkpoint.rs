//! Pretraining's checkpoints in the job's work folder: the weights and the optimizer's moments
//! after a step, so that a run stopped by a crash, a pre-emption or a time limit resumes there.
//!
//! `checkpoint.json` is the one commit point: it names the weights file it describes
//! (`checkpoint-<step>.safetensors`), and it is replaced by a rename only after that file is
//! complete. A run killed at any moment leaves either the old checkpoint or the new one, never a
//! state that describes other weights. A checkpoint that cannot be read (a disk error, a file
//! edited by hand) is reported and training starts over, rather than failing every retry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::lamb::Lamb;
use crate::model::roberta::{Config, Params as Weights};

/// The checkpoint's state file.
const STATE: &str = "checkpoint.json";

/// What `checkpoint.json` holds.
#[derive(Serialize, Deserialize)]
struct State {
    step: u64,
    lamb_step: u64,
    log: Vec<String>,
    /// The weights file (in the work folder) this state describes.
    weights: String,
}

/// Weights, optimizer, step and log rows restored from a checkpoint.
pub(super) struct Restored {
    pub weights: Weights,
    pub optimizer: Lamb,
    pub step: u64,
    pub log: Vec<String>,
}

/// Whether `work` holds a checkpoint.
pub(super) fn exists(work: &Path) -> bool {
    work.join(STATE).is_file()
}

/// Writes the checkpoint after `step`, then removes the one before it.
pub(super) fn save(
    work: &Path,
    w: &Weights,
    opt: &Lamb,
    step: u64,
    log: &[String],
) -> Result<(), String> {
    let mut tensors: HashMap<String, Tensor> = w.tensors();
    for (k, v) in &opt.m {
        tensors.insert(format!("lamb.m.{k}"), v.clone());
    }
    for (k, v) in &opt.v {
        tensors.insert(format!("lamb.v.{k}"), v.clone());
    }
    let name = format!("checkpoint-{step}.safetensors");
    let tmp = work.join(format!("{name}.tmp"));
    let fail = |path: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    candle_core::safetensors::save(&tensors, &tmp).map_err(|e| fail(&tmp, &e))?;
    std::fs::rename(&tmp, work.join(&name)).map_err(|e| fail(&tmp, &e))?;
    let state = State {
        step,
        lamb_step: opt.step,
        log: log.to_vec(),
        weights: name.clone(),
    };
    let state_tmp = work.join(format!("{STATE}.tmp"));
    std::fs::write(&state_tmp, serde_json::to_vec(&state).expect("serializes"))
        .map_err(|e| fail(&state_tmp, &e))?;
    std::fs::rename(&state_tmp, work.join(STATE)).map_err(|e| fail(&state_tmp, &e))?;
    for old in weights_files(work) {
        if old.file_name().is_some_and(|n| *n != *name) {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(())
}

/// The checkpoint in `work`, if there is one that can be read. One that cannot is reported on
/// stderr (the job's log), naming the file, and removed: training then starts over.
pub(super) fn load(work: &Path, cfg: &Config, dev: &Device) -> Option<Restored> {
    if !exists(work) {
        return None;
    }
    match read(work, cfg, dev) {
        Ok(restored) => Some(restored),
        Err(why) => {
            eprintln!("pretrain: warning: the checkpoint cannot be read ({why}); starting over");
            remove(work);
            None
        }
    }
}

fn read(work: &Path, cfg: &Config, dev: &Device) -> Result<Restored, String> {
    let path = work.join(STATE);
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let state: State =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let weights_file = work.join(&state.weights);
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", weights_file.display());
    let mut tensors = candle_core::safetensors::load(&weights_file, dev).map_err(|e| fail(&e))?;
    let mut optimizer = Lamb::new(0.0);
    optimizer.step = state.lamb_step;
    let keys: Vec<String> = tensors.keys().cloned().collect();
    for k in keys {
        if let Some(name) = k.strip_prefix("lamb.m.") {
            optimizer
                .m
                .insert(name.to_string(), tensors.remove(&k).expect("listed"));
        } else if let Some(name) = k.strip_prefix("lamb.v.") {
            optimizer
                .v
                .insert(name.to_string(), tensors.remove(&k).expect("listed"));
        }
    }
    let weights = Weights::from_tensors(cfg, tensors).map_err(|e| fail(&e))?;
    Ok(Restored {
        weights,
        optimizer,
        step: state.step,
        log: state.log,
    })
}

/// Removes the checkpoint: its state, its weights and any file a killed save left half-written.
pub(super) fn remove(work: &Path) {
    let _ = std::fs::remove_file(work.join(STATE));
    for f in weights_files(work) {
        let _ = std::fs::remove_file(f);
    }
}

/// Every checkpoint weights file in `work`, complete or half-written (and the single
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
