//! `flora bench`: timed training steps of a RoBERTa of a given size, on the CPU or a GPU.

use clap::{Args, ValueEnum};
use flora_stages::model::roberta::{Attention, Config, Positions, Precision};
use flora_stages::model::step_memory::StepFloor;
use flora_stages::model::throughput::{self, LastLayer, StepKernels};
use flora_stages::model::{device, param_checks};

/// Matrix-product precision, as on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    /// f32 throughout.
    F32,
    /// bf16 matrix products, f32 master weights.
    Bf16,
}

/// The attention's kernels, as on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AttentionArg {
    /// Matrix products around one pass for the softmax and dropout.
    Products,
    /// Flash attention (bf16, heads of a multiple of 16 up to 128 elements).
    Flash,
}

/// `flora bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Run on this CUDA GPU (needs a `cuda` build); default: the CPU.
    #[arg(long, value_name = "INDEX")]
    pub gpu: Option<usize>,
    /// Precision of the matrix products.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
    /// The attention's kernels.
    #[arg(long, value_enum, default_value = "products")]
    pub attention: AttentionArg,
    /// Run the last encoder layer at every position, as HuggingFace's RobertaForMaskedLM does,
    /// rather than at the masked positions' queries alone, as pretraining does: for comparison.
    #[arg(long)]
    pub every_position: bool,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub len: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Encoder layers.
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 768)]
    pub hidden: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 6)]
    pub heads: usize,
    /// Feed-forward size.
    #[arg(long, default_value_t = 3072)]
    pub intermediate: usize,
    /// Dropout (0 leaves its cost out, to see what it costs).
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f32,
    /// Vocabulary size (FloraBERT's: 5,000 tokens + 5 specials).
    #[arg(long, default_value_t = 5005)]
    pub vocab: usize,
    /// Also time the pieces of a step one at a time (embeddings, LayerNorm, softmax, ...).
    #[arg(long)]
    pub ops: bool,
    /// Also profile whole training steps: where each step's time goes, region by region
    /// (embeddings, each kind of dense layer, attention, LayerNorms, their backward passes, LAMB).
    #[arg(long)]
    pub profile: bool,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `flora bench`.
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    // Time what a pretraining job gets: the same malloc and OpenBLAS settings.
    crate::executor::rerun_tuned()?;
    if args.batch == 0 || args.len < 3 || args.steps == 0 {
        anyhow::bail!("--batch and --steps must be at least 1 and --len at least 3");
    }
    for (flag, value) in [
        ("--layers", args.layers),
        ("--hidden", args.hidden),
        ("--intermediate", args.intermediate),
    ] {
        param_checks::at_least_one(flag, value)?;
    }
    if args.heads == 0 || !args.hidden.is_multiple_of(args.heads) {
        anyhow::bail!(
            "--hidden {} is not a multiple of --heads {}",
            args.hidden,
            args.heads
        );
    }
    if !(0.0..1.0).contains(&args.dropout) {
        anyhow::bail!("--dropout {} is not in [0, 1)", args.dropout);
    }
    if args.vocab <= 5 {
        anyhow::bail!("--vocab must be more than the 5 special tokens");
    }
    let dev = match args.gpu {
        None => candle_core::Device::Cpu,
        Some(i) => device::cuda(i).map_err(|e| anyhow::anyhow!("--gpu: {e}"))?,
    };
    let precision = match args.precision {
        PrecisionArg::F32 => Precision::F32,
        PrecisionArg::Bf16 => Precision::Bf16,
    };
    let attention = match args.attention {
        AttentionArg::Products => Attention::Products,
        AttentionArg::Flash => Attention::Flash,
    };
    let head_dim = args.hidden / args.heads.max(1);
    if let Err(e) = attention.check(precision.dtype(), head_dim, &dev) {
        anyhow::bail!("--attention flash: {e}");
    }
    let run = StepKernels {
        precision,
        attention,
        last_layer: if args.every_position {
            LastLayer::Every
        } else {
            LastLayer::Masked
        },
    };
    let cfg = Config::new(
        args.vocab,
        args.layers,
        args.hidden,
        args.heads,
        args.intermediate,
        args.len,
        args.dropout,
        Positions::Tss,
    );
    StepFloor::of(&cfg, args.batch, args.len, precision, attention)
        .check(&dev)
        .map_err(|e| anyhow::anyhow!("--batch {} --len {}: {e}", args.batch, args.len))?;
    if args.ops {
        for op in throughput::profile_ops(&cfg, args.batch, args.len, precision, &dev, args.steps)?
        {
            if args.json {
                outln!("{}", serde_json::to_string(&op)?);
            } else {
                let rate = op
                    .flops
                    .map(|f| format!(" ({:.2} TFLOP/s)", f / op.seconds / 1e12))
                    .unwrap_or_default();
                outln!("{:>10.3} ms  {}{rate}", op.seconds * 1e3, op.name);
            }
        }
    }
    if args.profile {
        let prof = throughput::profile_steps(&cfg, args.batch, args.len, args.steps, run, &dev)?;
        if args.json {
            outln!("{}", serde_json::to_string(&prof)?);
        } else {
            print_profile(&prof)?;
        }
    }
    let t = throughput::time_steps(&cfg, args.batch, args.len, args.steps, run, &dev)?;
    if args.json {
        outln!("{}", serde_json::to_string(&t)?);
    } else {
        outln!(
            "{} {:?}{}{}: {} x {} tokens, {} layers x {}: {:.4} s per step (median of {}; {:.4}-{:.4}), {:.0} tokens/s, {:.2} TFLOP/s (model FLOPs), loss {:.3}",
            t.device,
            t.precision,
            attention_label(t.attention),
            last_layer_label(t.last_layer),
            t.batch,
            t.len,
            args.layers,
            args.hidden,
            t.seconds_per_step,
            t.steps,
            t.min_max_seconds.0,
            t.min_max_seconds.1,
            t.tokens_per_second,
            t.flops_per_second / 1e12,
            t.last_loss
        );
    }
    Ok(())
}

/// What the text output adds after the precision for `attention`: nothing for the default.
fn attention_label(attention: Attention) -> &'static str {
    match attention {
        Attention::Products => "",
        Attention::Flash => ", flash attention",
    }
}

/// What the text output adds after the attention for `last_layer`: nothing for the default.
fn last_layer_label(last_layer: LastLayer) -> &'static str {
    match last_layer {
        LastLayer::Masked => "",
        LastLayer::Every => ", last layer at every position",
    }
}

/// The profile as a table: milliseconds per step on the device and on the host, share of the
/// step, laps per step, label.
fn print_profile(prof: &throughput::StepProfile) -> anyhow::Result<()> {
    outln!(
        "{} {:?}{}{}: where a step's time goes (mean of {} profiled steps, {:.4} s per step; the \
         host issued it in {:.4} s)",
        prof.device,
        prof.precision,
        attention_label(prof.attention),
        last_layer_label(prof.last_layer),
        prof.steps,
        prof.seconds_per_step,
        prof.host_seconds_per_step
    );
    if !prof.device.starts_with("cpu") {
        outln!(
            "(host ms: the host's time issuing a region's kernels; where it comes close to the \
             region's ms, the card waited on launches)"
        );
    }
    outln!(
        "{:>10}  {:>8}  {:>6}  {:>5}  region",
        "ms/step",
        "host ms",
        "share",
        "laps"
    );
    for r in &prof.regions {
        outln!(
            "{:>10.3}  {:>8.3}  {:>5.1}%  {:>5}  {}",
            r.seconds * 1e3,
            r.host_seconds * 1e3,
            100.0 * r.seconds / prof.seconds_per_step.max(f64::MIN_POSITIVE),
            r.laps,
            r.label
        );
    }
    Ok(())
}
