//! What pretraining computes on a batch, on whichever device it is dealt to: a training
//! micro-batch's masked loss, counts and gradients, or a validation batch's loss and counts.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::{
    mask_batch, roberta, step_rng, trimmed, Config, Grads, MicroBatchJob, MlmPositions, Params,
    Replicas, Weights,
};
use crate::model::replicas::in_rounds;

/// What a batch gave besides its gradients: its mean masked loss, right guesses and masked
/// tokens.
pub(super) type MicroOut = (f64, usize, usize);

/// The loss, masked accuracy counts and gradients of one micro-batch.
pub(super) fn micro_step(
    w: &Weights,
    cfg: &Config,
    rows: &[&[u32]],
    p: &Params,
    step: u64,
    micro: u64,
    dev: &Device,
) -> candle_core::Result<(MicroOut, Grads)> {
    let mut mrng = step_rng(p.seed, step, micro, 1);
    let (inputs, labels) = mask_batch(&trimmed(rows), cfg.vocab_size, p.mask_prob, &mut mrng);
    let at = MlmPositions::from_labels(&labels, inputs.len(), width(&inputs))?;
    let mut drng = step_rng(p.seed, step, micro, 2);
    let hidden = roberta::encode_at(w, cfg, &inputs, &at, Some(&mut drng), dev)?;
    let (loss, correct, n) = roberta::mlm_loss(w, cfg, &hidden, at.labels())?;
    // The backward pass is issued before anything is read back: a GPU runs the whole step
    // without stopping for the host.
    let grads = if n > 0 {
        w.grads(&loss.backward()?)
    } else {
        HashMap::new()
    };
    let value = loss.to_scalar::<f32>()? as f64;
    Ok(((value, read_count(&correct)?, n), grads))
}

/// The masked loss and counts of validation batch `index` (no dropout; its masks fixed by the
/// seed and the index).
fn validation_batch(
    w: &Weights,
    cfg: &Config,
    rows: &[&[u32]],
    p: &Params,
    index: usize,
    dev: &Device,
) -> candle_core::Result<MicroOut> {
    let mut rng = step_rng(p.seed, u64::MAX, index as u64, 3);
    let (inputs, labels) = mask_batch(&trimmed(rows), cfg.vocab_size, p.mask_prob, &mut rng);
    let at = MlmPositions::from_labels(&labels, inputs.len(), width(&inputs))?;
    let hidden = roberta::encode_at(w, cfg, &inputs, &at, None, dev)?;
    let (loss, c, n) = roberta::mlm_loss(w, cfg, &hidden, at.labels())?;
    Ok((loss.to_scalar::<f32>()? as f64, read_count(&c)?, n))
}

/// A batch for a device: a training micro-batch, or a validation batch with its index.
pub(super) enum LmBatch {
    Train(Vec<Vec<u32>>),
    Validate(usize, Vec<Vec<u32>>),
}

/// Pretraining's batch as every device of a data-parallel job runs it.
#[derive(Clone)]
pub(super) struct MaskedLm {
    pub(super) cfg: Config,
    pub(super) p: Params,
}

impl MicroBatchJob for MaskedLm {
    type Batch = LmBatch;
    type Out = MicroOut;

    fn run(
        &self,
        w: &Weights,
        step: u64,
        micro: usize,
        batch: &LmBatch,
        dev: &Device,
    ) -> candle_core::Result<(MicroOut, Grads)> {
        match batch {
            LmBatch::Train(rows) => micro_step(
                w,
                &self.cfg,
                &slices(rows),
                &self.p,
                step,
                micro as u64,
                dev,
            ),
            LmBatch::Validate(index, rows) => {
                validation_batch(w, &self.cfg, &slices(rows), &self.p, *index, dev)
                    .map(|out| (out, Grads::new()))
            }
        }
    }
}

/// Rows as slices.
fn slices(rows: &[Vec<u32>]) -> Vec<&[u32]> {
    rows.iter().map(Vec::as_slice).collect()
}

/// Tokens per row of a batch of rows of one length (0 for no rows).
fn width(rows: &[Vec<u32>]) -> usize {
    rows.first().map_or(0, Vec::len)
}

/// A count held as a scalar f32 tensor (exact below 2^24).
fn read_count(t: &Tensor) -> candle_core::Result<usize> {
    Ok(t.to_scalar::<f32>()?.round() as usize)
}

/// Mean masked loss and accuracy over a set of rows (no dropout, fixed masks): for validation,
/// in batches of `batch_size`, dealt to the devices of `replicas` when there are several
/// ([`in_rounds`]). `stop` is asked before each batch (each round of batches on several
/// devices); `None` when it said to stop.
pub fn evaluate(
    w: &Weights,
    job: &MaskedLm,
    rows: &[&[u32]],
    replicas: Option<&Replicas<MaskedLm>>,
    dev: &Device,
    stop: &dyn Fn() -> bool,
) -> Result<Option<(f64, f64)>, String> {
    let batches = rows
        .chunks(job.p.batch_size.max(1))
        .enumerate()
        .map(|(i, chunk)| LmBatch::Validate(i, chunk.iter().map(|row| row.to_vec()).collect()));
    let Some(outs) = in_rounds(job, replicas, w, dev, batches, stop)? else {
        return Ok(None);
    };
    let (mut total, mut count, mut correct) = (0f64, 0usize, 0usize);
    for (loss, c, n) in outs {
        total += loss * n as f64;
        count += n;
        correct += c;
    }
    let mean = if count > 0 {
        total / count as f64
    } else {
        f64::NAN
    };
    Ok(Some((mean, correct as f64 / count.max(1) as f64)))
}
