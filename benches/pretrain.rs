//! One MLM training step of the paper's model (6 layers x 768, 6 heads, batch 8 x 256 tokens) on
//! the CPU: forward, backward and a LAMB update, with tokens per second and peak memory. Where
//! Python can import torch and transformers, the same step of HuggingFace's RobertaForMaskedLM
//! (benches/torch_step.py) runs beside it for comparison. GPUs: `flora bench --gpu 0` and
//! benches/gpu/run.sh.
//!
//! ```sh
//! cargo bench --bench pretrain            # BENCH_STEPS=3 by default
//! ```

use candle_core::Device;
use flora_stages::model::roberta::{Config, Positions, Precision};
use flora_stages::model::throughput::time_steps;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let steps: usize = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (batch, len) = (8usize, 256usize);
    let cfg = Config::new(5005, 6, 768, 6, 3072, len, 0.1, Positions::Tss);
    let t = time_steps(&cfg, batch, len, steps, Precision::F32, &Device::Cpu).unwrap();
    println!(
        "flora (candle, f32, CPU): {:.2} s per step (median of {steps}), {:.0} tokens/s, peak RSS {:.0} MiB",
        t.seconds_per_step,
        t.tokens_per_second,
        peak_rss_mib()
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_step.py");
    let out = std::process::Command::new("python3")
        .args([script, "--device", "cpu", "--warmup", "1"])
        .args(["--batch", &batch.to_string(), "--len", &len.to_string()])
        .args(["--steps", &steps.to_string()])
        .output();
    let json = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => {
            println!(
                "PyTorch: SKIPPED (python3 cannot run {script}: torch and transformers needed)"
            );
            return;
        }
    };
    let secs = serde_json::from_str::<serde_json::Value>(json.trim())
        .ok()
        .and_then(|v| v["seconds_per_step"].as_f64())
        .unwrap_or(f64::NAN);
    println!(
        "PyTorch (transformers RobertaForMaskedLM, AdamW): {secs:.2} s per step, {:.0} tokens/s; flora / PyTorch time: {:.2}",
        (batch * len) as f64 / secs,
        t.seconds_per_step / secs
    );
}
