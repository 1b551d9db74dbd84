//! One MLM training step of the paper's model (6 layers x 768, 6 heads, batch 8 x 256 tokens) on
//! the CPU: forward, backward and a LAMB update, with tokens per second and peak memory, run with
//! the environment flora gives its jobs; then the same step of HuggingFace's RobertaForMaskedLM in
//! PyTorch (benches/torch_step.py) on the same machine, and the ratio, in alternating rounds.
//! PyTorch and transformers come from a virtual environment that the bench makes and fills from
//! PyPI on first use (target/torch-venv, about 5.6 GB: PyPI's Linux torch brings its CUDA
//! libraries along), or from the Python named by FLORA_TORCH_PYTHON. GPUs: `flora bench --gpu 0` and benches/gpu/run.sh.
//!
//! ```sh
//! cargo bench --bench pretrain            # BENCH_STEPS=3, BENCH_ROUNDS=3 by default
//! BENCH_NO_INSTALL=1 cargo bench --bench pretrain   # flora alone where torch is missing
//! ```

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use candle_core::Device;
use flora_stages::model::roberta::{Config, Positions, Precision};
use flora_stages::model::throughput::{time_steps, StepKernels};

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

/// Whether `python` imports torch and transformers.
fn has_torch(python: &PathBuf) -> bool {
    Command::new(python)
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A Python with torch and transformers: FLORA_TORCH_PYTHON, else the bench's virtual
/// environment, made and filled from PyPI when missing (unless BENCH_NO_INSTALL is set).
fn torch_python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FLORA_TORCH_PYTHON") {
        let p = PathBuf::from(p);
        return if has_torch(&p) {
            Ok(p)
        } else {
            Err(format!(
                "FLORA_TORCH_PYTHON={} cannot import torch and transformers",
                p.display()
            ))
        };
    }
    let venv = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/torch-venv"));
    let python = venv.join("bin/python");
    if has_torch(&python) {
        return Ok(python);
    }
    if std::env::var_os("BENCH_NO_INSTALL").is_some() {
        return Err(format!(
            "{} has no torch and BENCH_NO_INSTALL is set",
            venv.display()
        ));
    }
    eprintln!(
        "installing torch and transformers from PyPI into {} (about 5.6 GB, once)",
        venv.display()
    );
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    if !python.exists() && !ok(Command::new("python3").args(["-m", "venv"]).arg(&venv)) {
        return Err("python3 -m venv failed (apt-get install python3-venv)".into());
    }
    if !ok(Command::new(venv.join("bin/pip")).args(["install", "-q", "torch", "transformers"])) {
        return Err(format!(
            "pip could not install torch and transformers into {}",
            venv.display()
        ));
    }
    Ok(python)
}

/// One run of PyTorch's step through benches/torch_step.py: its JSON report.
fn torch_step(python: &PathBuf, batch: usize, len: usize, steps: usize) -> Result<Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_step.py");
    let out = Command::new(python)
        .args([script, "--device", "cpu", "--warmup", "1"])
        .args(["--batch", &batch.to_string(), "--len", &len.to_string()])
        .args(["--steps", &steps.to_string()])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {script}: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| format!("{script} printed {text:?}: {e}"))
}

/// The median of `xs` (NaN when empty).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn main() {
    // flora runs every built-in job with flora::executor::JOB_TUNING in its environment.
    flora::executor::rerun_tuned().unwrap();
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (steps, rounds) = (var("BENCH_STEPS", 3), var("BENCH_ROUNDS", 3).max(1));
    let (batch, len) = (8usize, 256usize);
    let tokens = (batch * len) as f64;
    let cfg = Config::new(5005, 6, 768, 6, 3072, len, 0.1, Positions::Tss);
    let python = torch_python().inspect_err(|e| println!("PyTorch: SKIPPED ({e})"));
    // Rounds alternate flora and PyTorch, so that a machine whose speed drifts (a shared
    // virtual machine) slows both alike; each round's ratio compares neighbours in time.
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut versions = String::new();
    for round in 1..=rounds {
        let t = time_steps(
            &cfg,
            batch,
            len,
            steps,
            StepKernels::new(Precision::F32),
            &Device::Cpu,
        )
        .unwrap();
        println!(
            "round {round}/{rounds}: flora (candle, f32, CPU) {:.2} s per step (median of {steps}), {:.0} tokens/s",
            t.seconds_per_step, t.tokens_per_second
        );
        ours.push(t.seconds_per_step);
        let Ok(python) = &python else { continue };
        match torch_step(python, batch, len, steps) {
            Ok(report) => {
                let secs = report["seconds_per_step"].as_f64().unwrap_or(f64::NAN);
                versions = format!(
                    "torch {}, transformers {}, peak RSS {:.0} MiB",
                    report["torch"].as_str().unwrap_or("?"),
                    report["transformers"].as_str().unwrap_or("?"),
                    report["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
                );
                println!(
                    "round {round}/{rounds}: PyTorch (RobertaForMaskedLM, AdamW) {secs:.2} s per step, {:.0} tokens/s; flora / PyTorch time {:.2}",
                    tokens / secs,
                    t.seconds_per_step / secs
                );
                theirs.push(secs);
                ratios.push(t.seconds_per_step / secs);
            }
            Err(e) => println!("round {round}/{rounds}: PyTorch FAILED ({e})"),
        }
    }
    let flora = median(ours);
    println!(
        "flora: {flora:.2} s per step (median of {rounds} rounds), {:.0} tokens/s, peak RSS {:.0} MiB",
        tokens / flora,
        peak_rss_mib()
    );
    if !theirs.is_empty() {
        let torch = median(theirs);
        println!(
            "PyTorch ({versions}): {torch:.2} s per step, {:.0} tokens/s; flora / PyTorch time: {:.2} (median of the rounds' ratios)",
            tokens / torch,
            median(ratios)
        );
    }
}
