//! One MLM training step of the paper's model (6 layers x 768, 6 heads, batch 8 x 256 tokens) on
//! the CPU: forward, backward and a LAMB update, with tokens per second and peak memory. Where
//! Python can import torch and transformers, the same step of HuggingFace's RobertaForMaskedLM
//! runs beside it for comparison.
//!
//! ```sh
//! cargo bench --bench pretrain            # BENCH_STEPS=3 by default
//! ```

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use flora_stages::model::lamb::Lamb;
use flora_stages::model::roberta::{self, Config, Params, Positions};
use flora_stages::rng::Rng;

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
    let dev = Device::Cpu;
    let cfg = Config::new(5005, 6, 768, 6, 3072, len, 0.1, Positions::Tss);
    let w = Params::init(&cfg, 0, &dev).unwrap();
    let mut opt = Lamb::new(0.01);
    let mut rng = Rng::new(1);
    let rows: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            std::iter::once(0)
                .chain((0..len - 2).map(|_| 5 + rng.below(5000) as u32))
                .chain([1])
                .collect()
        })
        .collect();
    let labels: Vec<i64> = rows
        .iter()
        .flatten()
        .map(|&t| if rng.below(100) < 15 { t as i64 } else { -1 })
        .collect();
    let mut times = Vec::new();
    for s in 0..=steps {
        let t = Instant::now();
        let mut drng = Rng::new(s as u64);
        let hidden = roberta::encode(&w, &cfg, &rows, Some(&mut drng), &dev).unwrap();
        let logits = roberta::mlm_logits(&w, &cfg, &hidden).unwrap();
        let (loss, _, _) = roberta::masked_loss(&logits, &labels).unwrap();
        let store = loss.backward().unwrap();
        let grads: HashMap<String, Tensor> = w
            .vars
            .iter()
            .filter_map(|(n, v)| store.get(v.as_tensor()).map(|g| (n.clone(), g.clone())))
            .collect();
        opt.update(&w, &grads, 1e-3).unwrap();
        if s > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let tokens = (batch * len) as f64;
    println!(
        "flora (candle, f32, CPU): {mean:.2} s per step, {:.0} tokens/s, peak RSS {:.0} MiB",
        tokens / mean,
        peak_rss_mib()
    );

    let torch = std::process::Command::new("python3")
        .args(["-c", "import torch, transformers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !torch {
        println!("PyTorch: SKIPPED (python3 cannot import torch and transformers)");
        return;
    }
    let script = format!(
        "import time, torch, transformers as T\n\
         c = T.RobertaConfig(vocab_size=5005, hidden_size=768, num_hidden_layers=6, num_attention_heads=6, intermediate_size=3072, max_position_embeddings={}, pad_token_id=2)\n\
         m = T.RobertaForMaskedLM(c); opt = torch.optim.AdamW(m.parameters(), lr=1e-3)\n\
         ids = torch.randint(5, 5005, ({batch}, {len})); labels = ids.clone(); labels[torch.rand(ids.shape) > 0.15] = -100\n\
         ts = []\n\
         for s in range({}):\n    t = time.time(); opt.zero_grad(); out = m(input_ids=ids, labels=labels); out.loss.backward(); opt.step(); ts.append(time.time() - t)\n\
         print(sum(ts[1:]) / len(ts[1:]))\n",
        len + 3,
        steps + 1
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN);
    println!("PyTorch (transformers RobertaForMaskedLM, AdamW): {secs:.2} s per step, {:.0} tokens/s; flora / PyTorch time: {:.2}", tokens / secs, mean / secs);
}
