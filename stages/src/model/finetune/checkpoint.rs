//! Fine-tuning's checkpoints (`model::checkpoint`): the weights (the encoder's and the head's),
//! LAMB's moments and the best epoch's weights so far, with where training stood: after an
//! epoch (a checkpoint by time), or inside one (a stop), with the epoch's loss so far.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::checkpoint;
use crate::model::lamb::Lamb;
use crate::model::roberta::Params as Weights;

/// Where training stood when a checkpoint was written.
pub(super) struct At {
    /// Steps taken.
    pub step: u64,
    /// Epochs finished (validated).
    pub epochs_done: usize,
    /// Inside an epoch: the sum of its training losses (weighted by rows) and its rows so far.
    pub partial: Option<(f64, usize)>,
}

/// Fine-tuning's state beside the tensors.
#[derive(Serialize, Deserialize)]
struct State {
    step: u64,
    epochs_done: usize,
    partial: Option<(f64, usize)>,
    lamb_step: u64,
    log: Vec<String>,
    /// The best validation loss so far and its epoch (its weights are the `best.` tensors).
    best: Option<(f64, usize)>,
    since_best: usize,
}

/// Training restored from a checkpoint; the weights are set in place.
pub(super) struct Restored {
    pub optimizer: Lamb,
    pub step: u64,
    pub epochs_done: usize,
    pub partial: Option<(f64, usize)>,
    pub log: Vec<String>,
    pub best: Option<(f64, usize, HashMap<String, Tensor>)>,
    pub since_best: usize,
}

/// The prefix of the best epoch's weights among the tensors.
const BEST: &str = "best.";

/// Writes the checkpoint at `at`, then removes the one before it.
pub(super) fn save(
    work: &Path,
    w: &Weights,
    opt: &Lamb,
    at: &At,
    log: &[String],
    best: Option<&(f64, usize, HashMap<String, Tensor>)>,
    since_best: usize,
) -> Result<(), String> {
    let mut tensors = w.tensors();
    checkpoint::put_lamb(opt, &mut tensors);
    if let Some((_, _, snapshot)) = best {
        for (k, t) in snapshot {
            tensors.insert(format!("{BEST}{k}"), t.clone());
        }
    }
    let state = State {
        step: at.step,
        epochs_done: at.epochs_done,
        partial: at.partial,
        lamb_step: opt.step,
        log: log.to_vec(),
        best: best.map(|(loss, epoch, _)| (*loss, *epoch)),
        since_best,
    };
    checkpoint::save(work, at.step, &tensors, &state)
}

/// The checkpoint in `work`, if there is one that can be read and that fits `w` (the same
/// parameters, of the same shapes): its weights are set into `w`.
pub(super) fn load(work: &Path, w: &Weights, weight_decay: f64, dev: &Device) -> Option<Restored> {
    checkpoint::load(work, dev, "finetune", |mut tensors, state: State| {
        let optimizer = checkpoint::take_lamb(&mut tensors, state.lamb_step, weight_decay);
        let mut snapshot = HashMap::new();
        let names: Vec<String> = tensors.keys().cloned().collect();
        for name in names {
            if let Some(k) = name.strip_prefix(BEST) {
                snapshot.insert(k.to_string(), tensors.remove(&name).expect("listed"));
            }
        }
        // Every parameter, and nothing else, before any is set.
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        let mut wanted: Vec<&String> = w.vars.keys().collect();
        wanted.sort();
        if names != wanted {
            return Err("its weights are not this model's".into());
        }
        for (k, t) in &tensors {
            let var = &w.vars[k];
            if var.shape() != t.shape() {
                return Err(format!(
                    "{k} is {:?} there, {:?} in the model",
                    t.shape(),
                    var.shape()
                ));
            }
        }
        for (k, t) in tensors {
            w.vars[&k].set(&t).map_err(|e| e.to_string())?;
        }
        let best = match state.best {
            Some((loss, epoch)) if !snapshot.is_empty() => Some((loss, epoch, snapshot)),
            _ => None,
        };
        Ok(Restored {
            optimizer,
            step: state.step,
            epochs_done: state.epochs_done,
            partial: state.partial,
            log: state.log,
            best,
            since_best: state.since_best,
        })
    })
}
