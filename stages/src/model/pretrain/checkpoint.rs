//! Pretraining's checkpoints (`model::checkpoint`): the weights and LAMB's moments after a step,
//! with the step, its training loss and the training log so far.

use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::model::checkpoint;
use crate::model::lamb::Lamb;
use crate::model::roberta::{Config, Params as Weights};

#[cfg(test)]
pub(super) use checkpoint::exists;
pub(super) use checkpoint::remove;

/// Pretraining's state beside the tensors.
#[derive(Serialize, Deserialize)]
struct State {
    step: u64,
    lamb_step: u64,
    /// The step's training loss (absent from checkpoints written before it was kept).
    #[serde(default)]
    loss: Option<f64>,
    log: Vec<String>,
}

/// Weights, optimizer, step and log rows restored from a checkpoint.
pub(super) struct Restored {
    pub weights: Weights,
    pub optimizer: Lamb,
    pub step: u64,
    pub loss: Option<f64>,
    pub log: Vec<String>,
}

/// Writes the checkpoint after `step`, then removes the one before it.
pub(super) fn save(
    work: &Path,
    w: &Weights,
    opt: &Lamb,
    step: u64,
    loss: f64,
    log: &[String],
) -> Result<(), String> {
    let mut tensors = w.tensors();
    checkpoint::put_lamb(opt, &mut tensors);
    let state = State {
        step,
        lamb_step: opt.step,
        loss: Some(loss),
        log: log.to_vec(),
    };
    checkpoint::save(work, step, &tensors, &state)
}

/// The checkpoint in `work`, if there is one that can be read (see [`checkpoint::load`]).
pub(super) fn load(work: &Path, cfg: &Config, dev: &Device) -> Option<Restored> {
    checkpoint::load(work, dev, "pretrain", |mut tensors, state: State| {
        let optimizer = checkpoint::take_lamb(&mut tensors, state.lamb_step, 0.0);
        let weights = Weights::from_tensors(cfg, tensors).map_err(|e| e.to_string())?;
        Ok(Restored {
            weights,
            optimizer,
            step: state.step,
            loss: state.loss,
            log: state.log,
        })
    })
}
