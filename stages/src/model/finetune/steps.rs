//! What fine-tuning computes on a batch, on whichever device it is dealt to: a training
//! micro-batch's loss and gradients, or the predictions for rows being validated or tested.

use candle_core::{Device, Tensor};

use super::{
    head, predictor, roberta, Config, Grads, MicroBatchJob, Params, Replicas, Row, Weights,
};
use crate::model::replicas::in_rounds;
use crate::rng::Rng;

/// One micro-batch of training rows: their token ids, cut to the longest, and their targets,
/// row after row.
pub(super) struct MicroBatch {
    ids: Vec<Vec<u32>>,
    y: Vec<f32>,
}

impl MicroBatch {
    /// The micro-batch of `rows`.
    pub(super) fn of<'a, 'r: 'a>(rows: impl Iterator<Item = &'a Row<'r>> + Clone) -> MicroBatch {
        MicroBatch {
            ids: predictor::trim_padding(&rows.clone().map(|r| &r.ids).collect::<Vec<_>>()),
            y: rows.flat_map(|r| r.y.iter().copied()).collect(),
        }
    }

    /// Its rows.
    pub(super) fn rows(&self) -> usize {
        self.ids.len()
    }
}

/// A batch for a device: a training micro-batch, or framed rows to predict.
pub(super) enum FitBatch {
    Train(MicroBatch),
    Predict(Vec<Vec<u32>>),
}

/// What a batch gave: a micro-batch's mean loss, or each row's predictions.
pub(super) enum FitOut {
    Loss(f64),
    Predicted(Vec<Vec<f32>>),
}

impl FitOut {
    /// The mean loss of a training micro-batch.
    pub(super) fn loss(self) -> f64 {
        match self {
            FitOut::Loss(loss) => loss,
            FitOut::Predicted(_) => unreachable!("a training micro-batch gives its loss"),
        }
    }

    fn predicted(self) -> Vec<Vec<f32>> {
        match self {
            FitOut::Predicted(rows) => rows,
            FitOut::Loss(_) => unreachable!("rows to predict give predictions"),
        }
    }
}

/// Fine-tuning's batch as every device of a data-parallel job runs it.
#[derive(Clone)]
pub(super) struct ExpressionFit {
    pub(super) cfg: Config,
    pub(super) p: Params,
}

impl MicroBatchJob for ExpressionFit {
    type Batch = FitBatch;
    type Out = FitOut;

    fn run(
        &self,
        w: &Weights,
        step: u64,
        micro: usize,
        batch: &FitBatch,
        dev: &Device,
    ) -> candle_core::Result<(FitOut, Grads)> {
        match batch {
            FitBatch::Train(batch) => train_step(w, &self.cfg, batch, &self.p, step, micro, dev)
                .map(|(loss, grads)| (FitOut::Loss(loss), grads)),
            FitBatch::Predict(ids) => Ok((
                FitOut::Predicted(predict(w, &self.cfg, ids, dev)?),
                Grads::new(),
            )),
        }
    }
}

/// The dropout draws of micro-batch `micro` of step `step`; a step's first micro-batch draws as
/// a step of one micro-batch does.
fn dropout_rng(seed: u64, step: u64, micro: usize) -> Rng {
    Rng::new(
        seed ^ 0xF1E7
            ^ step.wrapping_mul(0xBF58_476D_1CE4_E5B9)
            ^ (micro as u64).wrapping_mul(0x94D0_49BB_1331_11EB),
    )
}

/// Mean loss and gradients of one micro-batch.
pub(super) fn train_step(
    w: &Weights,
    cfg: &Config,
    batch: &MicroBatch,
    p: &Params,
    step: u64,
    micro: usize,
    dev: &Device,
) -> candle_core::Result<(f64, Grads)> {
    let mut rng = dropout_rng(p.seed, step, micro);
    let ids = &batch.ids;
    let hidden = roberta::encode(w, cfg, ids, Some(&mut rng), dev)?;
    let hidden = if p.freeze_encoder {
        hidden.detach()
    } else {
        hidden
    };
    let pooled = head::mean_pool(&hidden, ids)?;
    let pred = head::forward(w, &pooled, p.head_dropout, Some(&mut rng))?;
    let y = Tensor::from_vec(batch.y.clone(), pred.dims(), dev)?;
    let loss = head::mse(&pred, &y)?;
    let mut grads = w.grads(&loss.backward()?);
    if p.freeze_encoder {
        grads.retain(|name, _| head::is_head(name));
    }
    Ok((loss.to_scalar::<f32>()? as f64, grads))
}

/// Predictions (no dropout) for framed rows.
fn predict(
    w: &Weights,
    cfg: &Config,
    ids: &[Vec<u32>],
    dev: &Device,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let pooled = predictor::pooled(w, cfg, ids, dev)?;
    head::forward(w, &pooled, 0.0, None)?.to_vec2::<f32>()
}

/// Predictions for rows, in batches of twice `batch_size`, dealt to the devices of `replicas`
/// when there are several ([`in_rounds`]); `stop` is asked before each batch (each round of
/// batches on several devices), and `None` returned when it says to stop.
pub(super) fn predict_rows(
    w: &Weights,
    job: &ExpressionFit,
    rows: &[&Row],
    replicas: Option<&Replicas<ExpressionFit>>,
    dev: &Device,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Vec<Vec<f32>>>, String> {
    let batches = rows
        .chunks(job.p.batch_size.max(1) * 2)
        .map(|chunk| FitBatch::Predict(chunk.iter().map(|r| r.ids.clone()).collect()));
    let predicted = in_rounds(job, replicas, w, dev, batches, stop)?;
    Ok(predicted.map(|outs| outs.into_iter().flat_map(FitOut::predicted).collect()))
}
