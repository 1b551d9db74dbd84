//! Training throughput: timed MLM steps (forward, backward, LAMB update with the gradients
//! clipped as pretraining clips them) of a model of a given size on random tokens, with the
//! model FLOPs they did. Used by `flora bench` and
//! `cargo bench --bench pretrain`.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use serde::Serialize;

use super::attention_attached::attention_heads_forward;
use super::lamb::{sum_of_squares, Lamb};
use super::mlm_positions::MlmPositions;
use super::pretrain::{mask_batch, DEFAULT_CLIP_NORM};
use super::roberta::{self, Attention, Config, Params, Precision};
use super::step_profile::{self, RegionTime};
use super::tokenizer;
use crate::rng::Rng;

/// Where a bench step runs its last encoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LastLayer {
    /// At the masked positions' queries alone, as pretraining runs it (`mlm_positions.rs`).
    #[default]
    Masked,
    /// At every position, as HuggingFace's RobertaForMaskedLM runs it: for comparison.
    Every,
}

/// How a bench step computes: the products' precision, the attention's kernels and where the last
/// layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepKernels {
    /// Matrix-product precision.
    pub precision: Precision,
    /// The attention's kernels.
    pub attention: Attention,
    /// Where the last encoder layer runs.
    pub last_layer: LastLayer,
}

impl StepKernels {
    /// `precision` with the products path of attention and the last layer at the masked
    /// positions: pretraining's defaults.
    pub fn new(precision: Precision) -> StepKernels {
        StepKernels {
            precision,
            attention: Attention::Products,
            last_layer: LastLayer::Masked,
        }
    }
}

/// What a timing run measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Matrix-product precision.
    pub precision: Precision,
    /// The attention's kernels.
    pub attention: Attention,
    /// Where the last encoder layer ran.
    pub last_layer: LastLayer,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub len: usize,
    /// Timed steps (after one untimed warm-up step).
    pub steps: usize,
    /// Median seconds per step.
    pub seconds_per_step: f64,
    /// Fastest and slowest timed step.
    pub min_max_seconds: (f64, f64),
    /// Tokens per second at the median.
    pub tokens_per_second: f64,
    /// Model FLOPs of one step (see [`train_flops`]).
    pub flops_per_step: f64,
    /// Model FLOPs per second at the median.
    pub flops_per_second: f64,
    /// MLM loss of the last step (finite, or the step is broken).
    pub last_loss: f64,
}

/// Share of tokens that carry an MLM label: the head's work is counted on these alone.
pub const MASKED_SHARE: f64 = 0.15;

/// Model FLOPs of one training step (forward + backward = 3 x forward; matrix products only, as
/// in the usual MFU accounting): per layer the four attention projections and the feed-forward
/// (2 x tokens x (4h² + 2hi)), the attention scores and weighted sum (2 x 2 x batch x len² x h),
/// and the MLM head's dense and decoder on the masked positions (2 x 0.15 tokens x (h² + hV)).
/// HuggingFace's RobertaForMaskedLM runs the head on every position; that extra work is not
/// credited, so both are held to the same count.
pub fn train_flops(cfg: &Config, batch: usize, len: usize) -> f64 {
    let (h, i, v) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.vocab_size as f64,
    );
    let tokens = (batch * len) as f64;
    let per_layer = 2.0 * tokens * (4.0 * h * h + 2.0 * h * i) + 4.0 * tokens * len as f64 * h;
    let head = 2.0 * tokens * MASKED_SHARE * (h * h + h * v);
    3.0 * (cfg.num_hidden_layers as f64 * per_layer + head)
}

/// `batch` sequences of `len` tokens (`<s>`, random ordinary tokens, `</s>`) masked as pretraining
/// masks them ([`mask_batch`]: 15% of the ordinary tokens, 80% of those made `<mask>`): the
/// inputs and their labels. A batch so small that no token was chosen (a few short sequences)
/// would time neither the MLM head nor a backward pass, so its first ordinary token is then
/// chosen.
fn masked_random_batch(vocab: usize, batch: usize, len: usize) -> (Vec<Vec<u32>>, Vec<i64>) {
    let mut rng = Rng::new(1);
    let specials = 5;
    let rows: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            std::iter::once(tokenizer::BOS)
                .chain((0..len - 2).map(|_| specials + rng.below(vocab - specials as usize) as u32))
                .chain([tokenizer::EOS])
                .collect()
        })
        .collect();
    let views: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let (mut inputs, mut labels) = mask_batch(&views, vocab, MASKED_SHARE, &mut rng);
    if labels.iter().all(|&l| l < 0) {
        labels[1] = rows[0][1] as i64;
        inputs[0][1] = tokenizer::MASK;
    }
    (inputs, labels)
}

/// A fresh model `cfg` training on `batch` random sequences of `len` tokens, 15% of them masked:
/// what `flora bench` times and profiles.
struct BenchTrainer<'a> {
    cfg: &'a Config,
    device: &'a Device,
    w: Params,
    opt: Lamb,
    rows: Vec<Vec<u32>>,
    labels: Vec<i64>,
    at: Option<MlmPositions>,
}

impl<'a> BenchTrainer<'a> {
    fn new(
        cfg: &'a Config,
        batch: usize,
        len: usize,
        kernels: StepKernels,
        device: &'a Device,
    ) -> Result<Self> {
        let StepKernels {
            precision,
            attention,
            last_layer,
        } = kernels;
        let mut w = Params::init(cfg, 0, device)?;
        w.compute = precision.dtype();
        let head_dim = cfg.hidden_size / cfg.num_attention_heads;
        attention
            .check(w.compute, head_dim, device)
            .map_err(candle_core::Error::Msg)?;
        w.attention = attention;
        let (rows, labels) = masked_random_batch(cfg.vocab_size, batch, len);
        let at = match last_layer {
            LastLayer::Masked => Some(MlmPositions::from_labels(&labels, batch, len)?),
            LastLayer::Every => None,
        };
        Ok(BenchTrainer {
            cfg,
            device,
            w,
            opt: Lamb::new(0.01),
            rows,
            labels,
            at,
        })
    }

    /// Training step `s` (its dropout drawn from `s`), in phases for a step profile: its loss.
    fn step(&mut self, s: usize) -> Result<f64> {
        let mut drng = Rng::new(s as u64);
        step_profile::phase("forward: other")?;
        let (w, cfg, rows, dev) = (&self.w, self.cfg, &self.rows, self.device);
        let (hidden, labels) = match &self.at {
            Some(at) => (
                roberta::encode_at(w, cfg, rows, at, Some(&mut drng), dev)?,
                at.labels(),
            ),
            None => (
                roberta::encode(w, cfg, rows, Some(&mut drng), dev)?,
                &self.labels[..],
            ),
        };
        let (loss, _, _) = step_profile::region(
            || "forward: MLM head + loss".to_string(),
            || roberta::mlm_loss(w, cfg, &hidden, labels),
        )?;
        step_profile::phase("backward: candle's recorded ops and gradient sums")?;
        let store = loss.backward()?;
        step_profile::phase("gradient clipping and LAMB update")?;
        let grads: HashMap<String, Tensor> = self.w.grads(&store);
        self.opt
            .update_clipped(&self.w, &grads, 1e-4, 1.0, DEFAULT_CLIP_NORM)?;
        step_profile::phase("the loss back to the host")?;
        Ok(loss.to_scalar::<f32>()? as f64)
    }
}

/// Times `steps` training steps (after one warm-up step) of a fresh model `cfg` on `batch`
/// random sequences of `len` tokens, 15% of them masked.
pub fn time_steps(
    cfg: &Config,
    batch: usize,
    len: usize,
    steps: usize,
    kernels: StepKernels,
    device: &Device,
) -> Result<StepTiming> {
    let mut trainer = BenchTrainer::new(cfg, batch, len, kernels, device)?;
    let mut times = Vec::with_capacity(steps);
    let mut last_loss = f64::NAN;
    for s in 0..=steps {
        device.synchronize()?;
        let t = Instant::now();
        last_loss = trainer.step(s)?;
        device.synchronize()?;
        if s > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let flops = train_flops(cfg, batch, len);
    Ok(StepTiming {
        device: super::device::name(device),
        precision: kernels.precision,
        attention: kernels.attention,
        last_layer: kernels.last_layer,
        batch,
        len,
        steps,
        seconds_per_step: median,
        min_max_seconds: (sorted[0], sorted[sorted.len() - 1]),
        tokens_per_second: (batch * len) as f64 / median,
        flops_per_step: flops,
        flops_per_second: flops / median,
        last_loss,
    })
}

/// Where the time of a training step goes: [`step_profile`]'s labels over `steps` profiled steps
/// (after one warm-up step), per step.
#[derive(Debug, Clone, Serialize)]
pub struct StepProfile {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Matrix-product precision.
    pub precision: Precision,
    /// The attention's kernels.
    pub attention: Attention,
    /// Where the last encoder layer ran.
    pub last_layer: LastLayer,
    /// Profiled steps.
    pub steps: usize,
    /// Seconds per profiled step, all labels together.
    pub seconds_per_step: f64,
    /// Seconds per step the host spent issuing the step's work (on the CPU, the step itself).
    pub host_seconds_per_step: f64,
    /// Each label's seconds and laps per step, in the order they first ran.
    pub regions: Vec<RegionTime>,
}

/// Profiles `steps` training steps (after one warm-up step) of the model [`time_steps`] times.
pub fn profile_steps(
    cfg: &Config,
    batch: usize,
    len: usize,
    steps: usize,
    kernels: StepKernels,
    device: &Device,
) -> Result<StepProfile> {
    let mut trainer = BenchTrainer::new(cfg, batch, len, kernels, device)?;
    trainer.step(0)?;
    let mut regions: Vec<RegionTime> = Vec::new();
    for s in 1..=steps {
        let (_, times) = step_profile::record(device, || trainer.step(s))?;
        for t in times {
            step_profile::add_to(&mut regions, t);
        }
    }
    let n = steps.max(1);
    for r in &mut regions {
        r.seconds /= n as f64;
        r.host_seconds /= n as f64;
        r.laps /= n;
    }
    Ok(StepProfile {
        device: super::device::name(device),
        precision: kernels.precision,
        attention: kernels.attention,
        last_layer: kernels.last_layer,
        steps,
        seconds_per_step: regions.iter().map(|r| r.seconds).sum(),
        host_seconds_per_step: regions.iter().map(|r| r.host_seconds).sum(),
        regions,
    })
}

/// One timed piece of a training step.
#[derive(Debug, Clone, Serialize)]
pub struct OpTiming {
    /// What was timed.
    pub name: String,
    /// Median seconds.
    pub seconds: f64,
    /// Floating-point operations, for the pieces that are one matrix product.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops: Option<f64>,
}

fn median_time(device: &Device, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        device.synchronize()?;
        let t = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Times the pieces of a training step of `cfg` on `batch` x `len` tokens one at a time (forward
/// and backward where there is one; median of `reps`), to show where a step's time goes.
pub fn profile_ops(
    cfg: &Config,
    batch: usize,
    len: usize,
    precision: Precision,
    device: &Device,
    reps: usize,
) -> Result<Vec<OpTiming>> {
    use super::layers;
    use candle_core::Var;
    let (h, i, heads) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
    );
    let dt = precision.dtype();
    let mut rng = Rng::new(3);
    let mut var = |shape: &[usize]| -> Result<Var> {
        Var::from_tensor(&layers::randn(&mut rng, shape, 0.5, device)?)
    };
    let x = var(&[batch, len, h])?;
    let scores = var(&[batch, heads, len, len])?;
    let inter = var(&[batch, len, i])?;
    let w_in = var(&[i, h])?;
    let b_in = var(&[i])?;
    let ln_w = var(&[h])?;
    let ln_b = var(&[h])?;
    let emb = var(&[cfg.vocab_size, h])?;
    let q = var(&[batch, heads, len, h / heads])?;
    let ids: Vec<u32> = (0..batch * len)
        .map(|k| 5 + (k * 7919 % (cfg.vocab_size - 5)) as u32)
        .collect();
    let ids_t = Tensor::from_vec(ids.clone(), batch * len, device)?;
    let mut out = Vec::new();
    let mut time =
        |name: &str, flops: Option<f64>, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
            let seconds = median_time(device, reps, f)?;
            out.push(OpTiming {
                name: name.to_string(),
                seconds,
                flops,
            });
            Ok(())
        };
    time(
        "sum of squares + backward of (batch, len, hidden): the harness's own cost",
        None,
        &mut || sum_of_squares(x.as_tensor())?.backward().map(|_| ()),
    )?;
    time("word embeddings: gather rows + backward", None, &mut || {
        layers::gather_rows(emb.as_tensor(), &ids_t)?
            .apply(&sum_of_squares)?
            .backward()
            .map(|_| ())
    })?;
    time("layer_norm + backward", None, &mut || {
        layers::layer_norm(x.as_tensor(), ln_w.as_tensor(), ln_b.as_tensor(), 1e-5)?
            .apply(&sum_of_squares)?
            .backward()
            .map(|_| ())
    })?;
    // The embeddings as recorded ops and as one attached node (what training runs), each with
    // its backward pass and the gradients collected.
    let pe = Params::init(cfg, 1, device)?;
    let positions: Vec<u32> = (0..batch * len).map(|k| 2 + (k % len) as u32).collect();
    let embeddings_step = |x: Tensor| -> Result<()> {
        pe.grads(&sum_of_squares(&x)?.backward()?);
        Ok(())
    };
    time(
        "embeddings (gathers, adds, LayerNorm, dropout), recorded ops + backward",
        None,
        &mut || {
            let dropout = Some((0.1, 7));
            embeddings_step(roberta::embeddings_composed(
                &pe, cfg, &ids, &positions, dropout,
            )?)
        },
    )?;
    time(
        "embeddings (sum, LayerNorm, dropout), one attached node + backward",
        None,
        &mut || {
            let dropout = Some((0.1, 7));
            embeddings_step(super::embeddings::embeddings(
                &pe, cfg, &ids, &positions, dropout,
            )?)
        },
    )?;
    // The MLM head's decoder and loss on the masked 15% of the tokens: the product with the
    // vocabulary as it is and padded to a multiple of 8 (what a GPU runs), and the loss composed
    // of candle's ops (the product cast to f32, the bias, log-softmax, the targets' pick, the
    // argmax) against the fused op, each with its backward pass.
    let masked = (batch * len * 15).div_ceil(100);
    let h_dt = var(&[masked, h])?.as_tensor().to_dtype(dt)?;
    let emb_dt = emb.as_tensor().to_dtype(dt)?;
    let decoder_flops = Some(2.0 * (masked * h * cfg.vocab_size) as f64);
    let padded = super::mlm_loss::padded_rows(&emb_dt, super::mlm_loss::ALIGN)?;
    for (label, wd) in [
        ("as it is", &emb_dt),
        ("padded to a multiple of 8", &padded),
    ] {
        time(
            &format!(
                "decoder product (masked, hidden) x (vocabulary {label}, hidden)^T, {dt:?} (forward)"
            ),
            decoder_flops,
            &mut || h_dt.matmul(&wd.t()?).map(|_| ()),
        )?;
    }
    let logits = var(&[masked, cfg.vocab_size])?;
    let dec_bias = var(&[cfg.vocab_size])?;
    let targets: Vec<u32> = ids[..masked].to_vec();
    let targets_t = Tensor::from_slice(&targets, (masked, 1), device)?;
    time(
        "MLM loss over (masked, vocabulary), candle's ops + backward",
        None,
        &mut || {
            let z = logits.as_tensor().to_dtype(dt)?.to_dtype(DType::F32)?;
            let z = layers::bias_add(&z, dec_bias.as_tensor())?;
            let nll = layers::log_softmax(&z)?
                .gather(&targets_t, candle_core::D::Minus1)?
                .neg()?
                .mean_all()?;
            let correct = z.argmax_keepdim(candle_core::D::Minus1)?.eq(&targets_t)?;
            correct.to_dtype(DType::F32)?.sum_all()?;
            nll.backward().map(|_| ())
        },
    )?;
    time(
        "MLM loss over (masked, vocabulary), one fused op + backward",
        None,
        &mut || {
            let z = logits.as_tensor().to_dtype(dt)?;
            let (loss, _) = super::mlm_loss::cross_entropy(&z, dec_bias.as_tensor(), &targets)?;
            loss.backward().map(|_| ())
        },
    )?;
    if dt == DType::F32 && super::dense::applies(x.as_tensor(), w_in.as_tensor()) {
        // The CPU's f32 path: one op per dense layer and one for attention.
        let (qkv, mask) = (var(&[batch, len, h])?, vec![0f32; batch * len]);
        time(
            "dense hidden -> feed-forward with GELU, one op + backward",
            None,
            &mut || {
                let y = super::dense::dense_then(
                    x.as_tensor(),
                    w_in.as_tensor(),
                    b_in.as_tensor(),
                    super::dense::Epilogue::Gelu,
                )?;
                sum_of_squares(&y)?.backward().map(|_| ())
            },
        )?;
        time(
            "self-attention, all heads with dropout, one op + backward",
            None,
            &mut || {
                let t = qkv.as_tensor();
                let y = super::attention::attention(t, t, t, heads, mask.clone(), Some((0.1, 7)))?;
                sum_of_squares(&y)?.backward().map(|_| ())
            },
        )?;
    } else {
        time(
            "softmax over attention scores + backward",
            None,
            &mut || {
                layers::softmax(scores.as_tensor())?
                    .apply(&sum_of_squares)?
                    .backward()
                    .map(|_| ())
            },
        )?;
        let mut drng = Rng::new(5);
        time(
            "dropout of attention probabilities (forward)",
            None,
            &mut || layers::dropout(scores.as_tensor(), 0.1, Some(&mut drng)).map(|_| ()),
        )?;
        time("gelu over the feed-forward + backward", None, &mut || {
            sum_of_squares(&layers::gelu(inter.as_tensor())?)?
                .backward()
                .map(|_| ())
        })?;
        time(
            "linear hidden -> feed-forward + backward",
            None,
            &mut || {
                let x2 = x.as_tensor().reshape((batch * len, h))?;
                layers::bias_add(
                    &layers::matmul(&x2, &w_in.as_tensor().t()?, dt)?,
                    b_in.as_tensor(),
                )?
                .apply(&sum_of_squares)?
                .backward()
                .map(|_| ())
            },
        )?;
        // The same product bare, forward only, with its operands already in the compute type:
        // what the matrix units give for this shape, against which the casts, bias and autograd
        // around it in the piece above can be read.
        let product_flops = Some(2.0 * (batch * len * h * i) as f64);
        let x_dt = x.as_tensor().reshape((batch * len, h))?.to_dtype(dt)?;
        let w_dt = w_in.as_tensor().to_dtype(dt)?;
        let w_dt_t = w_dt.t()?;
        for (layout, w) in [("as a view", &w_dt_t), ("in memory", &w_dt_t.contiguous()?)] {
            time(
                &format!("product hidden -> feed-forward alone, {dt:?} operands, weight transposed {layout} (forward)"),
                product_flops,
                &mut || x_dt.matmul(w).map(|_| ()),
            )?;
        }
        if dt != DType::F32 {
            time(
                &format!("cast (batch, len, feed-forward) f32 -> {dt:?} -> f32 (forward)"),
                None,
                &mut || {
                    inter
                        .as_tensor()
                        .to_dtype(dt)?
                        .to_dtype(DType::F32)
                        .map(|_| ())
                },
            )?;
        }
        time(
            "attention matmuls (q k^T, probs v) + backward",
            None,
            &mut || {
                let kt = q.as_tensor().t()?.contiguous()?;
                let s = layers::matmul(q.as_tensor(), &kt, dt)?;
                layers::matmul(&s, q.as_tensor(), dt)?
                    .apply(&sum_of_squares)?
                    .backward()
                    .map(|_| ())
            },
        )?;
        // Where the CPU has one op, GPUs and bf16 run one attached node (`dense_attached.rs`,
        // `attention_attached.rs`); the same pieces as recorded ops, for the difference.
        let (qkv, mask) = (
            var(&[batch, len, h])?,
            Tensor::zeros((batch, 1, 1, len), DType::F32, device)?,
        );
        let gelu = super::dense::Epilogue::Gelu;
        time(
            "dense hidden -> feed-forward with GELU, recorded ops + backward",
            None,
            &mut || {
                let x2 = x.as_tensor().reshape((batch * len, h))?;
                let z = layers::bias_add(
                    &layers::matmul(&x2, &w_in.as_tensor().t()?, dt)?,
                    b_in.as_tensor(),
                )?;
                layers::gelu(&z)?
                    .apply(&sum_of_squares)?
                    .backward()
                    .map(|_| ())
            },
        )?;
        time(
            "dense hidden -> feed-forward with GELU, one attached node + backward",
            None,
            &mut || {
                let (xt, wt, bt) = (x.as_tensor(), w_in.as_tensor(), b_in.as_tensor());
                super::dense_attached::dense_attached(xt, wt, bt, gelu, dt)?
                    .apply(&sum_of_squares)?
                    .backward()
                    .map(|_| ())
            },
        )?;
        time(
            "self-attention, all heads with dropout, recorded ops + backward",
            None,
            &mut || {
                let t = qkv.as_tensor();
                crate::testing::composed_attention([t, t, t], heads, &mask, Some((0.1, 7)), dt)?
                    .apply(&sum_of_squares)?
                    .backward()
                    .map(|_| ())
            },
        )?;
        time(
            "self-attention, all heads with dropout, one attached node + backward",
            None,
            &mut || {
                let t = qkv.as_tensor();
                super::attention_attached::attention_attached(
                    t,
                    t,
                    t,
                    heads,
                    &mask,
                    Some((0.1, 7)),
                    dt,
                )?
                .apply(&sum_of_squares)?
                .backward()
                .map(|_| ())
            },
        )?;
        // Inside the attached layers, the attention of split heads by its two kernels.
        if Attention::Flash.check(dt, h / heads, device).is_ok() {
            let qh = q.as_tensor().to_dtype(dt)?;
            for (kernel, name) in [
                (Attention::Products, "products"),
                (Attention::Flash, "flash"),
            ] {
                time(
                    &format!("attention of split heads with dropout, {name} + backward"),
                    None,
                    &mut || {
                        let qkv = [&qh, &qh, &qh];
                        let dropout = Some((0.1, 7));
                        let (context, backward) =
                            attention_heads_forward(qkv, &mask, dropout, dt, kernel)?;
                        // The context as its own gradient.
                        backward(&context).map(|_| ())
                    },
                )?;
            }
        }
        time(
            "split heads: reshape, transpose, contiguous + backward",
            None,
            &mut || {
                x.as_tensor()
                    .reshape((batch, len, heads, h / heads))?
                    .transpose(1, 2)?
                    .contiguous()?
                    .apply(&sum_of_squares)?
                    .backward()
                    .map(|_| ())
            },
        )?;
    }
    let mut w = Params::init(cfg, 0, device)?;
    w.compute = dt;
    let rows: Vec<Vec<u32>> = ids.chunks(len).map(|c| c.to_vec()).collect();
    let labels: Vec<i64> = ids
        .iter()
        .enumerate()
        .map(|(k, &t)| if k % 7 == 0 { t as i64 } else { -1 })
        .collect();
    let mut erng = Rng::new(9);
    time("encoder forward (all layers)", None, &mut || {
        roberta::encode(&w, cfg, &rows, Some(&mut erng), device).map(|_| ())
    })?;
    time("encoder forward + MLM loss", None, &mut || {
        let hidden = roberta::encode(&w, cfg, &rows, Some(&mut erng), device)?;
        roberta::mlm_loss(&w, cfg, &hidden, &labels).map(|_| ())
    })?;
    let mut grads = HashMap::new();
    time("encoder forward + MLM loss + backward", None, &mut || {
        let hidden = roberta::encode(&w, cfg, &rows, Some(&mut erng), device)?;
        let (loss, _, _) = roberta::mlm_loss(&w, cfg, &hidden, &labels)?;
        let store = loss.backward()?;
        grads = w.grads(&store);
        Ok(())
    })?;
    let mut opt = Lamb::new(0.01);
    time(
        "gradient clipping and LAMB update of every parameter",
        None,
        &mut || opt.update_clipped(&w, &grads, 1e-4, 1.0, DEFAULT_CLIP_NORM),
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::roberta::Positions;

    #[test]
    fn bench_batches_are_masked_as_pretraining_masks_and_never_without_a_label() {
        let (inputs, labels) = masked_random_batch(300, 64, 128);
        assert_eq!((inputs.len(), labels.len()), (64, 64 * 128));
        let mut chosen = 0;
        for (r, row) in inputs.iter().enumerate() {
            assert_eq!((row[0], row[127]), (tokenizer::BOS, tokenizer::EOS));
            for (i, &t) in row.iter().enumerate() {
                let label = labels[r * 128 + i];
                if i == 0 || i == 127 {
                    assert_eq!(label, -1, "a special token got a label");
                } else if label >= 0 {
                    chosen += 1;
                    assert!((5..300).contains(&label));
                } else {
                    assert!((5..300).contains(&(t as i64)), "row {r} position {i}: {t}");
                }
            }
        }
        // 15% of 64 x 126 ordinary tokens: 1,209.6, binomial sd 32.
        assert!((1_080..1_340).contains(&chosen), "{chosen} chosen");
        let masks = inputs
            .iter()
            .flatten()
            .filter(|&&t| t == tokenizer::MASK)
            .count();
        assert!(
            (masks as f64 / chosen as f64 - 0.8).abs() < 0.06,
            "{masks} of {chosen}"
        );
        // One sequence of one ordinary token: chosen whatever the draw.
        for len in [3, 4, 8] {
            let (inputs, labels) = masked_random_batch(300, 1, len);
            assert!(labels.iter().any(|&l| l >= 0), "len {len}: {labels:?}");
            assert_eq!(inputs[0].len(), len);
        }
    }

    #[test]
    fn flops_of_the_papers_model_match_a_hand_count() {
        let cfg = Config::new(5005, 6, 768, 6, 3072, 256, 0.1, Positions::Tss);
        // Per token and layer: 2 * (4 * 768² + 2 * 768 * 3072) = 14,155,776 in the projections
        // and feed-forward, 4 * 256 * 768 = 786,432 in attention; head 2 * (768² + 768 * 5005)
        // on 15% of them.
        let per_token = 6.0 * (14_155_776.0 + 786_432.0) + 0.3 * (589_824.0 + 3_843_840.0);
        let want = 3.0 * per_token * 84.0 * 256.0;
        assert!((train_flops(&cfg, 84, 256) - want).abs() < 1.0);
    }

    #[test]
    fn a_tiny_model_trains_in_both_precisions() {
        let cfg = Config::new(64, 2, 32, 2, 64, 16, 0.1, Positions::Tss);
        for precision in [Precision::F32, Precision::Bf16] {
            let t = time_steps(&cfg, 4, 16, 2, StepKernels::new(precision), &Device::Cpu).unwrap();
            assert!(t.last_loss.is_finite() && t.last_loss > 0.0, "{t:?}");
            assert!(t.seconds_per_step > 0.0 && t.tokens_per_second > 0.0);
            assert_eq!(t.device, "cpu");
        }
    }
}
