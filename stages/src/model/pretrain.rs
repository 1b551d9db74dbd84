//! The `pretrain` stage: masked language modelling of promoters with LAMB.
//!
//! - Each sequence is framed as `<s>` + tokens + `</s>`, left-padded to `max_len` (TSS end kept).
//!   A batch is cut to its longest sequence: the columns that are padding in every row are left
//!   out, which changes no output (padding is masked from attention, positions count real tokens)
//!   and leaves the padding of real promoters (about a quarter of 256 tokens) unprocessed.
//! - 15% of the real tokens are chosen (never padding or specials); of those 80% become `<mask>`,
//!   10% a random token and 10% stay, and the loss is taken on the chosen positions only.
//! - The learning rate warms up linearly over `warmup_steps`, then decays linearly to 0 (or
//!   stays constant); gradients are clipped to `clip_norm` and may be accumulated.
//! - Every random choice (initial weights, shuffles, masks, dropout) derives from `seed` and the
//!   step, so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
//! - Checkpoints (weights, LAMB moments, step) go to the job's work folder every
//!   `checkpoint_minutes` (or every `checkpoint_every` steps); a re-run resumes from the last one.
//!   A SIGTERM (the run stopping, Slurm's time limit) saves one after the step under way and
//!   ends the stage with an error (`crate::stop`), so no step is lost; one during an epoch's
//!   validation stops it at its next batch, and the re-run validates that epoch first.
//! - Each epoch's order of the training sequences is drawn once, at the epoch's first step: at
//!   the paper's 7.5 M training promoters, drawing it takes about 0.2 s.
//! - The corpus is tokenized once per job and stored compactly (2 bytes per id) in the work
//!   folder, so a resumed run does not tokenize again.
//! - A job given several GPUs deals each step's `grad_accum` micro-batches to them and adds
//!   their gradients on the first in micro-batch order (`model/replicas.rs`): the same steps as
//!   on one. Its validation batches are dealt to the GPUs too (`pretrain/steps.rs`).
//! - With an `init` input (a model folder) training continues from it: the study's maize
//!   pretraining after all-plant pretraining.
//!
//! Output: a HuggingFace-style folder (`config.json`, `model.safetensors`, `tokenizer.json`), and
//! `train_log.tsv` (step, epoch, loss, masked_acc, lr, val_loss, val_perplexity).

use std::io::Write;
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

pub use super::checkpoint::Halt;
use super::lamb::Lamb;
use super::mlm_positions::MlmPositions;
use super::param_checks::*;
use super::predictor::trimmed;
use super::replicas::{GradSum, Grads, MicroBatchJob, Replicas};
use super::roberta::{self, Attention, Config, Params as Weights, Positions, Precision};
use super::step_memory::StepFloor;
use super::tokenizer::{self, BOS, EOS, MASK, PAD};
use crate::rng::Rng;
use crate::Context;
pub use corpus::{tokenize, Corpus};
use epoch_order::{longest_first, EpochOrder};
use steps::{evaluate, micro_step, LmBatch, MaskedLm, MicroOut};

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear decay to 0 at the last step.
    Linear,
    /// Constant.
    Constant,
}

/// Params of the `pretrain` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Encoder layers (default 6).
    pub layers: usize,
    /// Hidden size (default 768).
    pub hidden: usize,
    /// Attention heads (default 6).
    pub heads: usize,
    /// Feed-forward size (default 3072).
    pub intermediate: usize,
    /// Tokens per sequence, specials and padding included (default 256).
    pub max_len: usize,
    /// Dropout (default 0.1).
    pub dropout: f32,
    /// Position ids: `tss` (from the TSS end) or `roberta` (default tss).
    pub positions: Positions,
    /// Share of real tokens chosen for MLM (default 0.15).
    pub mask_prob: f64,
    /// Peak learning rate (default 1e-3).
    pub lr: f64,
    /// Linear warm-up steps (default 200).
    pub warmup_steps: u64,
    /// After warm-up: `linear` decay to 0, or `constant` (default linear).
    pub schedule: Schedule,
    /// LAMB weight decay (default 0.01).
    pub weight_decay: f64,
    /// Passes over the training sequences (default 3).
    pub epochs: usize,
    /// Sequences per micro-batch (default 8).
    pub batch_size: usize,
    /// Micro-batches per optimizer step (default 1).
    pub grad_accum: usize,
    /// Global gradient-norm clip; 0 turns it off (default 1.0).
    pub clip_norm: f64,
    /// Seed of every random choice (default 0).
    pub seed: u64,
    /// Share of sequences held out for validation (default 0.05).
    pub validation: f64,
    /// Steps between checkpoints (default: by time, every `checkpoint_minutes`).
    pub checkpoint_every: Option<u64>,
    /// Minutes between checkpoints when `checkpoint_every` is not given (default 10). A
    /// checkpoint of the paper's model (weights and LAMB's two moments) is about 570 MB: every
    /// 100 steps would be every few seconds on a GPU.
    pub checkpoint_minutes: f64,
    /// Stop after this many optimizer steps (default: all epochs; 0 writes the initial model, a
    /// baseline that learned nothing).
    pub max_steps: Option<u64>,
    /// Put sequences of similar length in the same step (HuggingFace's `group_by_length`): each
    /// epoch's shuffled order is cut into blocks of 50 steps' sequences, each sorted longest
    /// first, and validation batches are sorted too, so batches cut to their longest sequence
    /// carry little padding (default false).
    pub group_by_length: bool,
    /// Matrix products in `f32`, or `bf16` mixed precision (f32 master weights and optimizer
    /// state; for GPUs, whose matrix units run bf16 many times faster) (default f32).
    pub precision: Precision,
    /// The attention's kernels: `products`, or `flash` (bf16, heads of a multiple of 16 up to
    /// 128 elements; see `flash_attention.rs`) (default products).
    pub attention: Attention,
}

/// Pretraining's default global gradient-norm clip (the benches clip as pretraining does).
pub const DEFAULT_CLIP_NORM: f64 = 1.0;

impl Params {
    /// Refuses a value no training can take, naming it. The model's sizes are checked even where
    /// an `init` model brings its own and they are not used.
    pub fn check(&self) -> Result<(), BadParam> {
        at_least_one("hidden", self.hidden)?;
        at_least_one("heads", self.heads)?;
        if !self.hidden.is_multiple_of(self.heads) {
            return Err(bad(
                "hidden",
                format!(
                    "hidden {} is not a multiple of heads {}",
                    self.hidden, self.heads
                ),
            ));
        }
        at_least_one("intermediate", self.intermediate)?;
        if self.max_len < 3 {
            return Err(bad(
                "max_len",
                format!(
                    "max_len {} must be at least 3 (<s>, a token and </s>)",
                    self.max_len
                ),
            ));
        }
        share_below_one("dropout", self.dropout as f64)?;
        share_above_zero("mask_prob", self.mask_prob)?;
        positive("lr", self.lr)?;
        non_negative("weight_decay", self.weight_decay)?;
        non_negative("clip_norm", self.clip_norm)?;
        at_least_one("epochs", self.epochs)?;
        at_least_one("batch_size", self.batch_size)?;
        at_least_one("grad_accum", self.grad_accum)?;
        share_below_one("validation", self.validation)?;
        optional_at_least_one("checkpoint_every", self.checkpoint_every)?;
        non_negative("checkpoint_minutes", self.checkpoint_minutes)?;
        flash_needs_bf16(self.attention, self.precision)
    }
}

impl Default for Params {
    fn default() -> Self {
        Params {
            layers: 6,
            hidden: 768,
            heads: 6,
            intermediate: 3072,
            max_len: 256,
            dropout: 0.1,
            positions: Positions::Tss,
            mask_prob: 0.15,
            lr: 1e-3,
            warmup_steps: 200,
            schedule: Schedule::Linear,
            weight_decay: 0.01,
            epochs: 3,
            batch_size: 8,
            grad_accum: 1,
            clip_norm: DEFAULT_CLIP_NORM,
            seed: 0,
            validation: 0.05,
            checkpoint_every: None,
            checkpoint_minutes: 10.0,
            max_steps: None,
            group_by_length: false,
            precision: Precision::F32,
            attention: Attention::Products,
        }
    }
}

/// The learning rate at `step` (1-based) of `total`.
pub fn lr_at(p: &Params, step: u64, total: u64) -> f64 {
    p.schedule.lr(p.lr, p.warmup_steps, step, total)
}

impl Schedule {
    /// The learning rate at `step` (1-based) of `total`: a linear warm-up to `peak` over
    /// `warmup` steps, then this schedule.
    pub fn lr(self, peak: f64, warmup: u64, step: u64, total: u64) -> f64 {
        if warmup > 0 && step <= warmup {
            return peak * step as f64 / warmup as f64;
        }
        match self {
            Schedule::Constant => peak,
            Schedule::Linear => {
                let rest = total.saturating_sub(warmup).max(1);
                let done = step.saturating_sub(warmup);
                peak * (1.0 - done as f64 / rest as f64).max(0.0)
            }
        }
    }
}

/// A batch with MLM corruption: inputs, and labels (-1 where no loss is taken).
pub fn mask_batch(
    rows: &[&[u32]],
    vocab: usize,
    mask_prob: f64,
    rng: &mut Rng,
) -> (Vec<Vec<u32>>, Vec<i64>) {
    let mut inputs = Vec::with_capacity(rows.len());
    let mut labels = Vec::new();
    for row in rows {
        let mut input = row.to_vec();
        for (i, &t) in row.iter().enumerate() {
            let real = t != PAD && t != BOS && t != EOS;
            let chosen = real && (super::layers::unit(rng) as f64) < mask_prob;
            if chosen {
                labels.push(t as i64);
                let r = super::layers::unit(rng);
                if r < 0.8 {
                    input[i] = MASK;
                } else if r < 0.9 {
                    // A random ordinary token (never a special).
                    input[i] = 5 + rng.below(vocab - 5) as u32;
                }
            } else {
                labels.push(-1);
            }
        }
        inputs.push(input);
    }
    (inputs, labels)
}

fn step_rng(seed: u64, step: u64, micro: u64, salt: u64) -> Rng {
    let mut r = Rng::new(seed ^ 0x5EED_0000_0000_0000 ^ salt);
    r.next_u64();
    Rng::new(
        r.next_u64()
            ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ micro.wrapping_mul(0xBF58_476D_1CE4_E5B9),
    )
}

/// A training log row's last two cells (validation loss and perplexity) when it has none.
const NO_VALIDATION: &str = "\t";

/// A training log row whose validation was stopped before it ended: its epoch's last, with
/// empty validation cells.
fn awaits_validation(row: &str) -> bool {
    row.strip_suffix(NO_VALIDATION)
        .is_some_and(|rest| rest.ends_with('\t'))
}

/// The validation cells of a training log row.
fn validation_cells(loss: f64) -> String {
    format!("{loss:.6}\t{:.4}", loss.exp())
}

/// Loads a model folder: its config and weights.
pub fn load_model(dir: &Path, dev: &Device) -> Result<(Config, Weights), String> {
    let (cfg, _) = super::model_config::read(dir)?;
    let weights_file = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights_file, dev)
        .map_err(|e| format!("{}: {e}", weights_file.display()))?;
    let w = Weights::from_tensors(&cfg, tensors)
        .map_err(|e| format!("{}: {e}", weights_file.display()))?;
    Ok((cfg, w))
}

/// Writes a model folder.
pub fn save_model(dir: &Path, cfg: &Config, w: &Weights) -> Result<(), String> {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg).expect("serializes"),
    )
    .map_err(|e| e.to_string())?;
    candle_core::safetensors::save(&w.tensors(), dir.join("model.safetensors"))
        .map_err(|e| e.to_string())
}

/// What training did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Optimizer steps taken in all (resumed ones included).
    pub steps: u64,
    /// Step this run started from (0, or a checkpoint's).
    pub resumed_from: u64,
    /// Training sequences.
    pub train_sequences: usize,
    /// Validation sequences.
    pub validation_sequences: usize,
    /// Last training loss.
    pub final_loss: f64,
    /// Validation loss at the end.
    pub validation_loss: f64,
    /// Validation perplexity at the end.
    pub validation_perplexity: f64,
    /// Validation masked-token accuracy at the end.
    pub validation_accuracy: f64,
    /// Token positions that this run's training steps processed (each batch cut to its longest
    /// sequence).
    pub positions: u64,
    /// The share of those positions that were padding.
    pub padding: f64,
}

impl Summary {
    /// Takes the validation loss and masked accuracy of the last epoch validated.
    fn validated(&mut self, (loss, accuracy): (f64, f64)) {
        self.validation_loss = loss;
        self.validation_perplexity = loss.exp();
        self.validation_accuracy = accuracy;
    }
}

/// Trains; `halt` (tests) ends the run early.
pub fn train(p: &Params, ctx: &Context, halt: Option<Halt>) -> Result<Summary, String> {
    p.check().map_err(|e| format!("pretrain: {e}"))?;
    let devices =
        super::device::for_data_parallel_job(&ctx.gpus, "pretrain", p.grad_accum, p.batch_size)?;
    train_on(p, ctx, halt, &devices)
}

/// Trains on `devices`: the first holds the weights, and a step's micro-batches are dealt to
/// all of them (`model/replicas.rs`).
fn train_on(
    p: &Params,
    ctx: &Context,
    halt: Option<Halt>,
    devices: &[Device],
) -> Result<Summary, String> {
    let dev = devices.first().cloned().unwrap_or(Device::Cpu);
    let corpus_in = ctx
        .inputs
        .get("corpus")
        .ok_or("pretrain: needs an input `corpus` (FASTA)")?;
    let tok_in = ctx
        .inputs
        .get("tokenizer")
        .ok_or("pretrain: needs an input `tokenizer` (from the bpe stage)")?;
    let tok = tokenizer::load(tok_in).map_err(|e| format!("pretrain: {e}"))?;
    let (cfg, init) = match ctx.inputs.get("init") {
        Some(dir) => {
            let (cfg, w) = load_model(dir, &dev).map_err(|e| format!("pretrain: init: {e}"))?;
            (cfg, Some(w))
        }
        None => {
            let vocab = tok.get_vocab_size(true);
            (
                Config::new(
                    vocab,
                    p.layers,
                    p.hidden,
                    p.heads,
                    p.intermediate,
                    p.max_len,
                    p.dropout,
                    p.positions,
                ),
                None,
            )
        }
    };
    let max_len = cfg.max_position_embeddings - 3;
    super::model_config::check_tokenizer(&cfg, &tok).map_err(|e| format!("pretrain: {e}"))?;
    std::fs::create_dir_all(&ctx.work).map_err(|e| e.to_string())?;
    // Tokenized once per job key; a resumed run reads the stored ids.
    let stored = ctx.work.join("corpus.tokens");
    let corpus = match Corpus::load(&stored, max_len) {
        Some(c) => c,
        None => {
            let c = tokenize(corpus_in, &tok, max_len)?;
            c.save(&stored)?;
            c
        }
    };
    eprintln!(
        "pretrain: {} sequences of {max_len} tokens ({} cut at the 5' end)",
        corpus.len(),
        corpus.truncated
    );
    // Seeded hold-out for validation.
    let mut order: Vec<usize> = (0..corpus.len()).collect();
    Rng::new(p.seed ^ 0xA11).shuffle(&mut order);
    let n_val = ((corpus.len() as f64) * p.validation).round() as usize;
    let n_val = n_val.min(corpus.len().saturating_sub(1));
    let (val_idx, train_idx) = order.split_at(n_val);
    let longest = (0..corpus.len())
        .map(|i| corpus.length(i))
        .max()
        .unwrap_or(0);
    // A step's batch is at most the training sequences.
    let batch = p.batch_size.clamp(1, train_idx.len().max(1));
    StepFloor::of(&cfg, batch, longest, p.precision, p.attention)
        .check(&dev)
        .map_err(|e| {
            format!(
                "pretrain: batch_size {} of sequences up to {longest} tokens: {e}; lower \
                 batch_size (grad_accum keeps the optimizer's step as large)",
                p.batch_size
            )
        })?;
    let per_step = p.batch_size.max(1) * p.grad_accum.max(1);
    let steps_per_epoch = train_idx.len().div_ceil(per_step) as u64;
    let total = p
        .max_steps
        .unwrap_or(steps_per_epoch * p.epochs as u64)
        .min(steps_per_epoch * p.epochs as u64);
    std::fs::create_dir_all(&ctx.work).map_err(|e| e.to_string())?;
    let (mut w, mut opt, mut step, mut log, last_loss) =
        match checkpoint::load(&ctx.work, &cfg, &dev) {
            Some(r) => {
                eprintln!("pretrain: resuming from the checkpoint at step {}", r.step);
                let mut opt = r.optimizer;
                opt.weight_decay = p.weight_decay;
                (r.weights, opt, r.step, r.log, r.loss)
            }
            None => {
                let w = match init {
                    Some(w) => w,
                    None => Weights::init(&cfg, p.seed, &dev).map_err(|e| e.to_string())?,
                };
                (w, Lamb::new(p.weight_decay), 0, Vec::new(), None)
            }
        };
    w.compute = p.precision.dtype();
    // Every device runs the attention's kernels (a machine may mix cards of several kinds).
    for d in devices {
        p.attention
            .check(w.compute, cfg.hidden_size / cfg.num_attention_heads, d)?;
    }
    w.attention = p.attention;
    let job = MaskedLm {
        cfg: cfg.clone(),
        p: p.clone(),
    };
    let replicas = Replicas::start("pretrain", devices, job.clone(), w.compute, w.attention)
        .map_err(|e| format!("pretrain: {e}"))?;
    let resumed_from = step;
    let mut summary = Summary {
        resumed_from,
        train_sequences: train_idx.len(),
        validation_sequences: val_idx.len(),
        final_loss: last_loss.unwrap_or(f64::NAN),
        ..Summary::default()
    };
    let header = "step\tepoch\tloss\tmasked_acc\tlr\tval_loss\tval_perplexity";
    let lengths: Vec<u32> = (0..corpus.len()).map(|i| corpus.length(i) as u32).collect();
    let mut val_idx = val_idx.to_vec();
    if p.group_by_length {
        longest_first(&mut val_idx, &lengths);
    }
    let val_rows: Vec<&[u32]> = val_idx.iter().map(|&i| corpus.row(i)).collect();
    let grouping = p.group_by_length.then_some((lengths.as_slice(), per_step));
    let mut order = EpochOrder::new(train_idx, p.seed, grouping);
    let (mut positions, mut real) = (0u64, 0u64);
    let mut checkpoints =
        super::checkpoint::Schedule::new(p.checkpoint_every, p.checkpoint_minutes, step);
    // From here a SIGTERM (the run stopping, Slurm's time limit) saves the steps done so far.
    let stop = crate::stop::StopOnSignal::install()?;
    let stopped = |by: &str, when: String| {
        format!(
            "pretrain: stopped by {by} {when}; its checkpoint is in {}, and a re-run goes on \
             from there",
            ctx.work.display()
        )
    };
    let is_epoch_end = |step: u64| step.is_multiple_of(steps_per_epoch) || step == total;
    if let Some(row) = log.last_mut() {
        // A stop during an epoch's validation left its row without one: it is done first.
        if is_epoch_end(step) && !val_rows.is_empty() && awaits_validation(row) {
            let epoch = (step - 1) / steps_per_epoch + 1;
            eprintln!("pretrain: validating epoch {epoch}, which the stop interrupted");
            let asked = || stop.requested();
            match evaluate(&w, &job, &val_rows, replicas.as_ref(), &dev, &asked)? {
                Some(v) => {
                    summary.validated(v);
                    row.truncate(row.len() - NO_VALIDATION.len());
                    row.push_str(&validation_cells(v.0));
                }
                None => {
                    return Err(stopped(
                        "SIGTERM",
                        format!("while validating epoch {epoch} (after step {step} of {total})"),
                    ))
                }
            }
        }
    }
    let pace = super::pace::Pace::start(step, total);
    while step < total {
        let epoch = (step / steps_per_epoch) as usize;
        let in_epoch = (step % steps_per_epoch) as usize;
        let ord = order.of(epoch);
        let batch = &ord[in_epoch * per_step..((in_epoch + 1) * per_step).min(ord.len())];
        // Each micro-batch's gradient is its mean over its masked tokens, weighted by their
        // count in the step's sum.
        let micro_batches: Vec<&[usize]> = batch.chunks(p.batch_size.max(1)).collect();
        let mut grads = GradSum::new(micro_batches.len());
        let (mut loss_sum, mut correct, mut count) = (0f64, 0usize, 0usize);
        let mut absorb = |((l, c, n), g): (MicroOut, Grads)| -> Result<(), String> {
            loss_sum += l * n as f64;
            correct += c;
            count += n;
            grads.add(g, n).map_err(|e| e.to_string())
        };
        let mut rows_of = Vec::with_capacity(micro_batches.len());
        for chunk in &micro_batches {
            let longest = chunk.iter().map(|&i| lengths[i] as u64).max().unwrap_or(0);
            positions += longest * chunk.len() as u64;
            real += chunk.iter().map(|&i| lengths[i] as u64).sum::<u64>();
            rows_of.push(
                chunk
                    .iter()
                    .map(|&i| corpus.row(i))
                    .collect::<Vec<&[u32]>>(),
            );
        }
        let failed = |e: String| format!("pretrain: step {}: {e}", step + 1);
        match replicas.as_ref().filter(|_| rows_of.len() > 1) {
            // Every micro-batch's gradients at once, added in order as below.
            Some(replicas) => {
                let owned = rows_of
                    .iter()
                    .map(|rows| LmBatch::Train(rows.iter().map(|row| row.to_vec()).collect()))
                    .collect();
                for result in replicas.step(&w, step, owned).map_err(failed)? {
                    absorb(result)?;
                }
            }
            // One micro-batch's gradients alive at a time.
            None => {
                for (micro, rows) in rows_of.iter().enumerate() {
                    let result = micro_step(&w, &cfg, rows, p, step, micro as u64, &dev)
                        .map_err(|e| failed(e.to_string()))?;
                    absorb(result)?;
                }
            }
        }
        let loss = loss_sum / count.max(1) as f64;
        if !loss.is_finite() {
            let kept = match checkpoints.last {
                Some(at) => format!(
                    "the last good checkpoint (step {at}) is kept in {}",
                    ctx.work.display()
                ),
                None => "no checkpoint was written before it".to_string(),
            };
            return Err(format!(
                "pretrain: the loss became {loss} at step {}; {kept}",
                step + 1
            ));
        }
        let (grads, scale) = grads.finish();
        step += 1;
        let lr = lr_at(p, step, total);
        opt.update_clipped(&w, &grads, lr, scale, p.clip_norm)
            .map_err(|e| e.to_string())?;
        let acc = correct as f64 / count.max(1) as f64;
        // A stop while validating keeps the step; the re-run validates before it goes on.
        let mut interrupted = false;
        let val = if is_epoch_end(step) && !val_rows.is_empty() {
            let asked = || stop.requested() || halt == Some(Halt::StopValidating(step));
            match evaluate(&w, &job, &val_rows, replicas.as_ref(), &dev, &asked)? {
                Some(v) => {
                    summary.validated(v);
                    validation_cells(v.0)
                }
                None => {
                    interrupted = true;
                    NO_VALIDATION.to_string()
                }
            }
        } else {
            NO_VALIDATION.to_string()
        };
        log.push(format!(
            "{step}\t{}\t{loss:.6}\t{acc:.4}\t{lr:.3e}\t{val}",
            epoch + 1
        ));
        summary.final_loss = loss;
        // Read once: a signal between two reads would end the run without this step's save.
        let signalled = stop.requested();
        let stopping = signalled || interrupted || halt == Some(Halt::Stop(step));
        // The last step needs a checkpoint only when its validation is still to do.
        let saves = step < total || interrupted;
        if saves && (checkpoints.due(step) || stopping) {
            checkpoint::save(&ctx.work, &w, &opt, step, loss, &log)?;
            checkpoints.written(step);
        }
        if saves && stopping {
            let by = if signalled { "SIGTERM" } else { "a test" };
            let when = if interrupted {
                format!(
                    "while validating epoch {} (after step {step} of {total})",
                    epoch + 1
                )
            } else {
                format!("after step {step} of {total}")
            };
            return Err(stopped(by, when));
        }
        if halt == Some(Halt::Crash(step)) {
            return Err(format!("pretrain: halted after step {step} (test)"));
        }
        if step % 10 == 0 || step == total {
            eprintln!(
                "pretrain: step {step}/{total} ({}) loss {loss:.4} masked acc {acc:.3} lr \
                 {lr:.2e}",
                pace.line(step, Some(positions))
            );
        }
    }
    summary.steps = step;
    summary.positions = positions;
    summary.padding = if positions == 0 {
        0.0
    } else {
        1.0 - real as f64 / positions as f64
    };
    save_model(&ctx.out, &cfg, &w)?;
    tok.save(ctx.out.join("tokenizer.json"), true)
        .map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(ctx.out.join("train_log.tsv")).map_err(|e| e.to_string())?;
    writeln!(f, "{header}").map_err(|e| e.to_string())?;
    for row in &log {
        writeln!(f, "{row}").map_err(|e| e.to_string())?;
    }
    std::fs::write(
        ctx.out.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("serializes"),
    )
    .map_err(|e| e.to_string())?;
    checkpoint::remove(&ctx.work);
    let _ = std::fs::remove_file(ctx.work.join("corpus.tokens"));
    Ok(summary)
}

/// Runs the stage.
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, String> {
    train(p, ctx, None)
}

mod checkpoint;
mod corpus;
mod epoch_order;
mod steps;
#[cfg(test)]
mod tests;
