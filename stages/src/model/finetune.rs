//! The `finetune` stage: a pretrained encoder plus the expression head, trained on expression
//! per tissue with MSE over all tissues at once and LAMB.
//!
//! - Inputs: `model` (a pretrained model folder) and either `table` (a ready `id, sequence,
//!   <targets...>[, split]` table) or `promoters` + `expression` (+ optional `split`).
//! - Targets: `transform: log` takes ln(value + offset) (offset 0.001; the default for expression
//!   tables, which hold TPM); `none` takes values as they are (the default for a ready table).
//! - The learning rate warms up linearly over the first `warmup` share of the steps, then stays
//!   constant (`schedule: constant`, the default; 5e-5, 25 epochs) or decays linearly to 0 at the
//!   last step (`schedule: linear`, HuggingFace's default). After every epoch the validation loss
//!   is measured; with `patience` > 0, training stops once it has not improved for that many
//!   epochs, and the best epoch's weights are kept.
//! - The head starts out predicting each target's mean over the training rows (its output bias),
//!   so training spends its steps on what the sequence adds to the means.
//! - `freeze_encoder: true` trains the head alone on fixed embeddings.
//! - A step may add the gradients of `grad_accum` micro-batches of `batch_size` rows; a job
//!   given several GPUs deals them to the GPUs and adds their gradients on the first in
//!   micro-batch order (`model/replicas.rs`): the same steps as on one. The batches of its
//!   validation and test predictions are dealt to the GPUs too (`finetune/steps.rs`).
//!
//! Output: the fine-tuned model folder (`config.json` with `flora_head`, `model.safetensors`,
//! `tokenizer.json`), `predictions.tsv` (`id, target, observed, predicted` for every test row, on
//! the transformed scale), `train_log.tsv` (epoch, step, train_loss, val_loss, lr) and
//! `summary.json` (test metrics per target and over all).

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use super::checkpoint::Halt;
use super::examples::{self, Example, Split};
use super::head::{self, HeadConfig, Transform};
use super::lamb::Lamb;
use super::param_checks::*;
use super::predictor;
use super::pretrain::{load_model, Schedule};
use super::replicas::{GradSum, Grads, MicroBatchJob, Replicas};
use super::roberta::{self, Attention, Config, Params as Weights, Precision};
use super::step_memory::StepFloor;
use super::tokenizer;
use crate::analysis::metrics::Metrics;
use crate::analysis::predictions;
use crate::rng::Rng;
use crate::Context;
use steps::{predict_rows, train_step, ExpressionFit, FitBatch, MicroBatch};

pub use super::examples::TransformParam;

/// Params of the `finetune` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Target transform (default auto).
    pub transform: TransformParam,
    /// Offset of the log transform (default 0.001).
    pub offset: f64,
    /// Passes over the training rows (default 25).
    pub epochs: usize,
    /// Sequences per micro-batch: a step has `grad_accum` of them (default 16).
    pub batch_size: usize,
    /// Micro-batches per step, their gradients added; a job given several GPUs deals them to
    /// the GPUs (default 1).
    pub grad_accum: usize,
    /// Learning rate after warm-up (default 5e-5).
    pub lr: f64,
    /// Share of the steps spent warming up linearly (default 0.1).
    pub warmup: f64,
    /// After the warm-up: constant, or a linear decay to 0 at the last step (default constant).
    pub schedule: Schedule,
    /// LAMB weight decay (default 0.01).
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 turns it off (default 1.0).
    pub clip_norm: f64,
    /// Dropout in the head (default 0.2, as the study).
    pub head_dropout: f32,
    /// Train the head only (default false).
    pub freeze_encoder: bool,
    /// Epochs without a better validation loss before stopping; 0 never stops early (default 5).
    pub patience: usize,
    /// Seed of the head's initial weights, shuffles, dropout and drawn splits (default 0).
    pub seed: u64,
    /// A ready table's split (or fold) value whose rows are the validation rows, e.g. `train_4`
    /// in FloraBERT's tables (default none: `valid`/`validation` rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_fold: Option<String>,
    /// Stop after this many steps (default: all epochs).
    pub max_steps: Option<u64>,
    /// Matrix products in `f32`, or `bf16` mixed precision (f32 master weights and optimizer
    /// state) (default f32).
    pub precision: Precision,
    /// The attention's kernels: `products`, or `flash` (bf16, heads of a multiple of 16 up to
    /// 128 elements) (default products).
    pub attention: Attention,
    /// Minutes between checkpoints, written at the end of an epoch (default 10); not part of
    /// the cache key.
    pub checkpoint_minutes: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            transform: TransformParam::Auto,
            offset: 0.001,
            epochs: 25,
            batch_size: 16,
            grad_accum: 1,
            lr: 5e-5,
            warmup: 0.1,
            schedule: Schedule::Constant,
            weight_decay: 0.01,
            clip_norm: 1.0,
            head_dropout: 0.2,
            freeze_encoder: false,
            patience: 5,
            seed: 0,
            validation_fold: None,
            max_steps: None,
            precision: Precision::F32,
            attention: Attention::Products,
            checkpoint_minutes: 10.0,
        }
    }
}

impl Params {
    /// Refuses a value no fine-tuning can take, naming it.
    pub fn check(&self) -> Result<(), BadParam> {
        at_least_one("epochs", self.epochs)?;
        at_least_one("batch_size", self.batch_size)?;
        at_least_one("grad_accum", self.grad_accum)?;
        positive("lr", self.lr)?;
        share_below_one("warmup", self.warmup)?;
        non_negative("weight_decay", self.weight_decay)?;
        non_negative("clip_norm", self.clip_norm)?;
        share_below_one("head_dropout", self.head_dropout as f64)?;
        non_negative("checkpoint_minutes", self.checkpoint_minutes)?;
        flash_needs_bf16(self.attention, self.precision)
    }
}

/// What fine-tuning did and how well the model does on the test rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Rows per split.
    pub rows: BTreeMap<String, usize>,
    /// Rows left out, by reason.
    pub dropped: BTreeMap<String, usize>,
    /// Sequences cut at the 5' end to fit the model.
    pub truncated: usize,
    /// The transform used.
    pub transform: Option<Transform>,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Epochs run.
    pub epochs: usize,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Its validation loss.
    pub best_val_loss: f64,
    /// Test metrics over every target and row together.
    pub test_all: Option<Metrics>,
    /// Test metrics per target.
    pub test: BTreeMap<String, Metrics>,
}

/// One framed example: ids and transformed targets.
struct Row<'a> {
    example: &'a Example,
    ids: Vec<u32>,
    y: Vec<f32>,
}

/// The window the `promoters` input was cut with, for the model to record (`flora variants`
/// cuts the same from a genome); the log says when there is none to record.
fn promoter_window(ctx: &Context) -> Option<crate::genomics::window::Window> {
    let Some(promoters) = ctx.inputs.get("promoters") else {
        eprintln!(
            "finetune: the model records no promoter window (trained from a ready table): \
             give `flora variants` the window with --upstream and --downstream"
        );
        return None;
    };
    let found = crate::splits::corpus::fasta_files(promoters)
        .map_err(crate::genomics::window::Unknown::Unreadable)
        .and_then(|fastas| crate::genomics::window::of_promoters(&fastas));
    match found {
        Ok(window) => {
            eprintln!("finetune: promoters cut with {window}, recorded with the model");
            Some(window)
        }
        Err(why) => {
            eprintln!(
                "finetune: the model records no promoter window ({why}): give `flora variants` \
                 the window with --upstream and --downstream"
            );
            None
        }
    }
}

/// Trains, writes the artifact, and returns the summary.
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, String> {
    train(p, ctx, None)
}

/// Fine-tunes; `halt` (tests) ends the run early.
pub fn train(p: &Params, ctx: &Context, halt: Option<Halt>) -> Result<Summary, String> {
    p.check().map_err(|e| format!("finetune: {}", e.message))?;
    let devices =
        super::device::for_data_parallel_job(&ctx.gpus, "finetune", p.grad_accum, p.batch_size)?;
    train_on(p, ctx, halt, &devices)
}

/// Fine-tunes on `devices`: the first holds the weights, and a step's micro-batches are dealt
/// to all of them (`model/replicas.rs`).
fn train_on(
    p: &Params,
    ctx: &Context,
    halt: Option<Halt>,
    devices: &[Device],
) -> Result<Summary, String> {
    let fail = |e: String| format!("finetune: {e}");
    let dev = devices.first().cloned().unwrap_or(Device::Cpu);
    let model_dir = ctx
        .inputs
        .get("model")
        .ok_or_else(|| fail("needs an input `model` (a pretrained model folder)".into()))?;
    let data = examples::from_context(ctx, p.seed, p.validation_fold.as_deref()).map_err(fail)?;
    if !data.left_out.is_empty() {
        eprintln!(
            "finetune: table columns left out (text, not targets): {}",
            data.left_out.join(", ")
        );
    }
    let t = p.transform.resolve(data.from_table);
    data.check_transform(t, p.offset).map_err(fail)?;
    let (cfg, mut w) = load_model(model_dir, &dev).map_err(|e| fail(format!("model: {e}")))?;
    let tok_file = model_dir.join("tokenizer.json");
    let tok = tokenizer::load(&tok_file).map_err(|e| fail(e.to_string()))?;
    super::model_config::check_tokenizer(&cfg, &tok)
        .map_err(|e| fail(format!("{}: {e}", tok_file.display())))?;
    head::init(&mut w, &cfg, data.targets.len(), p.seed, &dev).map_err(|e| fail(e.to_string()))?;
    w.compute = p.precision.dtype();
    // Every device runs the attention's kernels (a machine may mix cards of several kinds).
    for d in devices {
        p.attention
            .check(w.compute, cfg.hidden_size / cfg.num_attention_heads, d)
            .map_err(fail)?;
    }
    w.attention = p.attention;
    let job = ExpressionFit {
        cfg: cfg.clone(),
        p: p.clone(),
    };
    let replicas =
        Replicas::start("finetune", devices, job.clone(), w.compute, w.attention).map_err(fail)?;
    let max_len = cfg.max_position_embeddings - 3;

    let mut summary = Summary {
        dropped: data.dropped.clone(),
        transform: Some(t),
        ..Summary::default()
    };
    let mut framed: HashMap<Split, Vec<Row>> = HashMap::new();
    for ex in &data.rows {
        let ids = tokenizer::tokens(&tok, &String::from_utf8_lossy(&ex.seq))
            .map_err(|e| fail(e.to_string()))?;
        let (ids, cut) = tokenizer::frame(&ids, max_len);
        summary.truncated += usize::from(cut > 0);
        let y = ex
            .targets
            .iter()
            .map(|&v| t.apply(v, p.offset) as f32)
            .collect();
        framed.entry(ex.split).or_default().push(Row {
            example: ex,
            ids,
            y,
        });
    }
    for (name, split) in [
        ("train", Split::Train),
        ("validation", Split::Valid),
        ("test", Split::Test),
    ] {
        summary
            .rows
            .insert(name.into(), framed.get(&split).map_or(0, Vec::len));
    }
    let train = framed.remove(&Split::Train).unwrap_or_default();
    let valid = framed.remove(&Split::Valid).unwrap_or_default();
    let test = framed.remove(&Split::Test).unwrap_or_default();
    if train.is_empty() {
        return Err(fail("no training rows".into()));
    }
    let means: Vec<f32> = (0..data.targets.len())
        .map(|j| train.iter().map(|r| f64::from(r.y[j])).sum::<f64>() / train.len() as f64)
        .map(|m| m as f32)
        .collect();
    head::start_at(&w, &means).map_err(|e| fail(e.to_string()))?;
    eprintln!(
        "finetune: {} train, {} validation, {} test rows; {} targets; transform {t:?}",
        train.len(),
        valid.len(),
        test.len(),
        data.targets.len()
    );
    let longest = train
        .iter()
        .map(|r| r.ids.len() - predictor::leading_padding(&r.ids))
        .max()
        .unwrap_or(0);
    let floor = StepFloor {
        logits: 0,
        ..StepFloor::of(
            &cfg,
            p.batch_size.min(train.len().max(1)),
            longest,
            p.precision,
            p.attention,
        )
    };
    floor.check(&dev).map_err(|e| {
        fail(format!(
            "batch_size {} of sequences up to {longest} tokens: {e}; lower batch_size \
             (grad_accum keeps the optimizer's step as large)",
            p.batch_size
        ))
    })?;

    if valid.is_empty() {
        eprintln!(
            "finetune: no validation rows: every epoch runs (no early stopping) and the last is kept"
        );
    }
    let per_step = p.batch_size * p.grad_accum;
    let steps_per_epoch = train.len().div_ceil(per_step) as u64;
    let total = p
        .max_steps
        .unwrap_or(u64::MAX)
        .min(steps_per_epoch * p.epochs as u64);
    let warmup = (total as f64 * p.warmup).round() as u64;
    let lr_at = |step: u64| p.schedule.lr(p.lr, warmup, step, total);
    let mut opt = Lamb::new(p.weight_decay);
    let mut step = 0u64;
    let mut log = vec!["epoch\tstep\ttrain_loss\tval_loss\tlr".to_string()];
    let mut best: Option<(f64, usize, HashMap<String, Tensor>)> = None;
    let mut since_best = 0;
    let mut epoch = 0;
    let mut partial = None;
    std::fs::create_dir_all(&ctx.work).map_err(|e| fail(format!("{}: {e}", ctx.work.display())))?;
    if let Some(r) = checkpoint::load(&ctx.work, &w, p.weight_decay, &dev) {
        eprintln!(
            "finetune: resuming from the checkpoint at step {} (epoch {})",
            r.step,
            r.epochs_done + 1
        );
        (opt, step, log, best, since_best, epoch) = (
            r.optimizer,
            r.step,
            r.log,
            r.best,
            r.since_best,
            r.epochs_done,
        );
        partial = r.partial;
    }
    let mut schedule = super::checkpoint::Schedule::new(None, p.checkpoint_minutes, step);
    // From here a SIGTERM (the run stopping, Slurm's time limit) saves the steps done so far.
    let stop = crate::stop::StopOnSignal::install()?;
    let pace = super::pace::Pace::start(step, total);
    // A run stopped while it validated its last epoch has all its steps and that epoch to end.
    while step < total || partial.is_some() {
        epoch += 1;
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::new(p.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut order);
        // A run resumed inside an epoch skips the batches it trained on before it stopped.
        let (mut loss_sum, mut n) = partial.take().unwrap_or((0f64, 0usize));
        // Set by a stop: whether a signal asked for it, and when it came.
        let mut stopped: Option<(bool, String)> = None;
        let done_in_epoch = step.saturating_sub((epoch as u64 - 1) * steps_per_epoch) as usize;
        for batch in order.chunks(per_step).skip(done_in_epoch) {
            if step >= total {
                break;
            }
            let micro_batches: Vec<MicroBatch> = batch
                .chunks(p.batch_size)
                .map(|rows| MicroBatch::of(rows.iter().map(|&i| &train[i])))
                .collect();
            // Each micro-batch's gradient is its mean over its rows, weighted by their count in
            // the step's sum.
            let mut grads = GradSum::new(micro_batches.len());
            let (mut step_loss, mut step_rows) = (0f64, 0usize);
            let mut absorb = |(loss, g): (f64, Grads), rows: usize| {
                step_loss += loss * rows as f64;
                step_rows += rows;
                grads.add(g, rows)
            };
            let failed = |e: String| fail(format!("step {}: {e}", step + 1));
            match replicas.as_ref().filter(|_| micro_batches.len() > 1) {
                // Every micro-batch's gradients at once, added in order as below.
                Some(replicas) => {
                    let rows: Vec<usize> = micro_batches.iter().map(MicroBatch::rows).collect();
                    let batches = micro_batches.into_iter().map(FitBatch::Train).collect();
                    let results = replicas.step(&w, step, batches).map_err(failed)?;
                    for ((out, grads), rows) in results.into_iter().zip(rows) {
                        absorb((out.loss(), grads), rows).map_err(|e| failed(e.to_string()))?;
                    }
                }
                // One micro-batch's gradients alive at a time.
                None => {
                    for (micro, batch) in micro_batches.iter().enumerate() {
                        train_step(&w, &cfg, batch, p, step, micro, &dev)
                            .and_then(|result| absorb(result, batch.rows()))
                            .map_err(|e| failed(e.to_string()))?;
                    }
                }
            }
            let loss = step_loss / step_rows.max(1) as f64;
            if !loss.is_finite() {
                return Err(fail(format!("the loss became {loss} at step {}", step + 1)));
            }
            loss_sum += step_loss;
            n += step_rows;
            step += 1;
            let (grads, scale) = grads.finish();
            opt.update_clipped(&w, &grads, lr_at(step), scale, p.clip_norm)
                .map_err(|e| fail(e.to_string()))?;
            let signalled = stop.requested();
            if step < total && (signalled || halt == Some(Halt::Stop(step))) {
                stopped = Some((signalled, format!("after step {step} of {total}")));
                break;
            }
            if halt == Some(Halt::Crash(step)) {
                return Err(fail(format!("halted after step {step} (test)")));
            }
        }
        let train_loss = loss_sum / n.max(1) as f64;
        let val_loss = if stopped.is_some() || valid.is_empty() {
            f64::NAN
        } else {
            let refs: Vec<&Row> = valid.iter().collect();
            let asked = || stop.requested() || halt == Some(Halt::StopValidating(step));
            match predict_rows(&w, &job, &refs, replicas.as_ref(), &dev, &asked).map_err(fail)? {
                Some(pred) => mse_of(&pred, &refs),
                None => {
                    let when =
                        format!("while validating epoch {epoch} (after step {step} of {total})");
                    stopped = Some((stop.requested(), when));
                    f64::NAN
                }
            }
        };
        // A stop inside the epoch, or while validating it, keeps its steps so far; the re-run
        // skips them, and validates when they were all.
        if let Some((signalled, when)) = stopped {
            let at = checkpoint::At {
                step,
                epochs_done: epoch - 1,
                partial: Some((loss_sum, n)),
            };
            checkpoint::save(&ctx.work, &w, &opt, &at, &log, best.as_ref(), since_best)
                .map_err(fail)?;
            return Err(fail(format!(
                "stopped by {} {when}; its checkpoint is in {}, and a re-run goes on from there",
                if signalled { "SIGTERM" } else { "a test" },
                ctx.work.display()
            )));
        }
        log.push(format!(
            "{epoch}\t{step}\t{train_loss:.6}\t{val_loss:.6}\t{:.3e}",
            lr_at(step)
        ));
        // Early stopping can end the run sooner than the time left says.
        let pace = pace.line(step, None);
        if valid.is_empty() {
            eprintln!(
                "finetune: epoch {epoch} step {step}/{total} ({pace}) train loss {train_loss:.4}"
            );
        } else {
            eprintln!("finetune: epoch {epoch} step {step}/{total} ({pace}) train loss {train_loss:.4} validation loss {val_loss:.4}");
        }
        if val_loss.is_finite() {
            if best.as_ref().is_none_or(|(b, _, _)| val_loss < *b) {
                let snapshot = w
                    .vars
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
                    .collect::<candle_core::Result<HashMap<_, _>>>()
                    .map_err(|e| fail(e.to_string()))?;
                best = Some((val_loss, epoch, snapshot));
                since_best = 0;
            } else {
                since_best += 1;
                if p.patience > 0 && since_best >= p.patience {
                    eprintln!(
                        "finetune: no better validation loss for {since_best} epochs; stopping"
                    );
                    break;
                }
            }
        }
        if step < total && schedule.due(step) {
            let at = checkpoint::At {
                step,
                epochs_done: epoch,
                partial: None,
            };
            checkpoint::save(&ctx.work, &w, &opt, &at, &log, best.as_ref(), since_best)
                .map_err(fail)?;
            schedule.written(step);
        }
    }
    summary.steps = step;
    summary.epochs = epoch;
    match best {
        Some((loss, e, snapshot)) => {
            for (k, t) in snapshot {
                w.vars[&k].set(&t).map_err(|e| fail(e.to_string()))?;
            }
            summary.best_epoch = e;
            summary.best_val_loss = loss;
        }
        None => {
            summary.best_epoch = epoch;
            summary.best_val_loss = f64::NAN;
        }
    }

    // The artifact: model folder, test predictions, log, summary.
    let head_cfg = HeadConfig {
        targets: data.targets.clone(),
        transform: t,
        offset: p.offset,
        dropout: p.head_dropout,
        pooling: "mean".into(),
        promoter_window: promoter_window(ctx),
    };
    predictor::save(&ctx.out, &cfg, &head_cfg, &w, &tok).map_err(fail)?;
    let refs: Vec<&Row> = test.iter().collect();
    let pred = predict_rows(&w, &job, &refs, replicas.as_ref(), &dev, &|| false)
        .map_err(fail)?
        .expect("never asked to stop");
    let ids: Vec<&str> = refs.iter().map(|r| r.example.id.as_str()).collect();
    let observed: Vec<Vec<f64>> = refs
        .iter()
        .map(|r| r.y.iter().map(|&v| v as f64).collect())
        .collect();
    let predicted: Vec<Vec<f64>> = pred
        .iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let scored = predictions::score(None, &ids, &data.targets, &observed, &predicted);
    summary.test = scored.per_target;
    summary.test_all = scored.all;
    let text = predictions::header(false) + &scored.rows;
    write(ctx, "predictions.tsv", &text)?;
    write(ctx, "train_log.tsv", &(log.join("\n") + "\n"))?;
    write(
        ctx,
        "summary.json",
        &serde_json::to_string_pretty(&summary).expect("serializes"),
    )?;
    super::checkpoint::remove(&ctx.work);
    if let Some(m) = summary.test_all.as_ref().filter(|m| !m.r2.is_finite()) {
        eprintln!(
            "finetune: test R2 is not defined over {} values (too few, or all equal)",
            m.n
        );
    } else if let Some(m) = &summary.test_all {
        eprintln!(
            "finetune: test R2 {:.3} (squared Pearson {:.3}) over {} values",
            m.r2, m.pearson_r2, m.n
        );
    }
    Ok(summary)
}

fn write(ctx: &Context, name: &str, text: &str) -> Result<(), String> {
    let path = ctx.out.join(name);
    std::fs::write(&path, text).map_err(|e| format!("finetune: {}: {e}", path.display()))
}

fn mse_of(pred: &[Vec<f32>], rows: &[&Row]) -> f64 {
    let (mut s, mut n) = (0f64, 0usize);
    for (p, r) in pred.iter().zip(rows) {
        for (a, b) in p.iter().zip(&r.y) {
            s += ((a - b) as f64).powi(2);
            n += 1;
        }
    }
    s / n.max(1) as f64
}

mod checkpoint;
mod steps;
#[cfg(test)]
pub(crate) mod tests;
