//! `flora bench` and model stages given a GPU, through the binary.

use flora_stages::testing::planted;

use crate::util::Project;

/// `flora bench` on a tiny model, with `set` overriding or adding flags.
fn tiny(set: &[(&str, &str)]) -> Vec<String> {
    let mut flags: Vec<(String, String)> = [
        ("--layers", "2"),
        ("--hidden", "32"),
        ("--heads", "2"),
        ("--intermediate", "64"),
        ("--vocab", "300"),
        ("--len", "32"),
        ("--batch", "4"),
        ("--steps", "2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in set {
        match flags.iter_mut().find(|(f, _)| f == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => flags.push((k.to_string(), v.to_string())),
        }
    }
    let mut args = vec!["bench".to_string()];
    for (k, v) in flags {
        args.push(k);
        if !v.is_empty() {
            args.push(v);
        }
    }
    args
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A batch too small to draw a masked token (one sequence of one ordinary token) still times a
/// real step: the MLM head and a backward pass, with a loss near ln(vocabulary).
#[test]
fn bench_steps_always_have_a_masked_token() {
    let p = Project::new();
    let args = tiny(&[("--batch", "1"), ("--len", "3"), ("--json", "")]);
    let v: serde_json::Value = serde_json::from_str(p.ok(&refs(&args)).trim()).unwrap();
    let loss = v["last_loss"].as_f64().unwrap();
    assert!((loss - 300f64.ln()).abs() < 1.0, "{v}");
}

#[test]
fn bench_times_training_steps_in_both_precisions() {
    let p = Project::new();
    for precision in ["f32", "bf16"] {
        let args = tiny(&[("--precision", precision), ("--json", "")]);
        let out = p.ok(&refs(&args));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["device"], "cpu");
        assert_eq!(v["precision"], precision);
        assert_eq!(v["batch"], 4);
        assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["flops_per_step"].as_f64().unwrap() > 0.0, "{v}");
        let loss = v["last_loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{v}");
    }
    // f32 on the CPU times its dense and attention ops; bf16 the composed pieces, and dense and
    // attention as recorded ops and as one attached node each.
    let out = p.ok(&refs(&tiny(&[("--ops", "")])));
    for piece in [
        "layer_norm",
        "dense",
        "self-attention",
        "embeddings (gathers, adds, LayerNorm, dropout), recorded ops + backward",
        "embeddings (sum, LayerNorm, dropout), one attached node + backward",
        "decoder product (masked, hidden) x (vocabulary as it is, hidden)^T",
        "(vocabulary padded to a multiple of 8, hidden)^T",
        "MLM loss over (masked, vocabulary), candle's ops + backward",
        "MLM loss over (masked, vocabulary), one fused op + backward",
        "LAMB update",
        "s per step",
    ] {
        assert!(out.contains(piece), "{piece} missing:\n{out}");
    }
    let out = p.ok(&refs(&tiny(&[("--ops", ""), ("--precision", "bf16")])));
    for piece in [
        "softmax",
        "gelu",
        "attention matmuls",
        "feed-forward alone, BF16 operands, weight transposed as a view",
        "feed-forward alone, BF16 operands, weight transposed in memory",
        "f32 -> BF16 -> f32",
        "TFLOP/s)",
        "dense hidden -> feed-forward with GELU, recorded ops",
        "dense hidden -> feed-forward with GELU, one attached node",
        "self-attention, all heads with dropout, recorded ops",
        "self-attention, all heads with dropout, one attached node",
        "attention of split heads with dropout, products + backward",
        "attention of split heads with dropout, flash + backward",
        "s per step",
    ] {
        assert!(out.contains(piece), "{piece} missing:\n{out}");
    }
}

/// Without dropout, the last layer at the masked positions (the default) and at every position
/// (`--every-position`) give the same loss: the rows the loss reads are the same.
#[test]
fn bench_runs_the_last_layer_at_the_masked_positions_or_at_every_one() {
    let p = Project::new();
    for precision in ["f32", "bf16"] {
        let run = |every: bool| {
            let mut set = vec![
                ("--precision", precision),
                ("--dropout", "0"),
                ("--json", ""),
            ];
            if every {
                set.push(("--every-position", ""));
            }
            let v: serde_json::Value =
                serde_json::from_str(p.ok(&refs(&tiny(&set))).trim()).unwrap();
            (v["last_layer"].clone(), v["last_loss"].as_f64().unwrap())
        };
        let ((masked, l_masked), (every, l_every)) = (run(false), run(true));
        assert_eq!(
            (masked.as_str(), every.as_str()),
            (Some("masked"), Some("every"))
        );
        assert!(
            (l_masked - l_every).abs() < 1e-5,
            "{precision}: loss {l_masked} at the masked positions, {l_every} at every one"
        );
    }
    let out = p.ok(&refs(&tiny(&[("--every-position", ""), ("--profile", "")])));
    assert!(
        out.contains("cpu F32, last layer at every position: where a step's time goes"),
        "{out}"
    );
    assert!(
        out.contains("cpu F32, last layer at every position: 4 x 32 tokens"),
        "{out}"
    );
}

#[test]
fn bench_trains_with_flash_attention_in_bf16_and_refuses_it_elsewhere() {
    let p = Project::new();
    let flash = [("--precision", "bf16"), ("--attention", "flash")];
    let out = p.ok(&refs(&tiny(&flash)));
    assert!(
        out.contains("cpu Bf16, flash attention: 4 x 32 tokens"),
        "{out}"
    );
    let mut profiled = flash.to_vec();
    profiled.push(("--profile", ""));
    let out = p.ok(&refs(&tiny(&profiled)));
    assert!(
        out.contains("cpu Bf16, flash attention: where a step's time goes"),
        "{out}"
    );
    let mut json = flash.to_vec();
    json.push(("--json", ""));
    let v: serde_json::Value = serde_json::from_str(p.ok(&refs(&tiny(&json))).trim()).unwrap();
    assert_eq!(v["attention"], "flash");
    let loss = v["last_loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{v}");
    // f32 products, and heads of 8 elements, are not flash attention's.
    let e = p.fails(&refs(&tiny(&[("--attention", "flash")])), 2);
    assert!(e.contains("flash attention needs precision bf16"), "{e}");
    assert!(
        e.contains("this run has f32 products and heads of 16 on cpu"),
        "{e}"
    );
    let mut narrow = flash.to_vec();
    narrow.push(("--heads", "4"));
    let e = p.fails(&refs(&tiny(&narrow)), 2);
    assert!(e.contains("heads of 8 on cpu"), "{e}");
}

#[test]
fn bench_profiles_where_a_steps_time_goes() {
    let p = Project::new();
    // bf16 runs each layer as one node of separately timed pieces: each dense layer, attention
    // and LayerNorm has its own regions, forward and backward, one lap per layer.
    let out = p.ok(&refs(&tiny(&[
        ("--profile", ""),
        ("--precision", "bf16"),
        ("--json", ""),
    ])));
    let first = out.lines().next().unwrap();
    let v: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(v["precision"], "bf16");
    let regions = v["regions"].as_array().unwrap();
    let laps = |label: &str| {
        regions
            .iter()
            .find(|r| r["label"] == label)
            .unwrap_or_else(|| panic!("no {label} in {v}"))["laps"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(laps("forward: self-attention"), 2);
    assert_eq!(laps("backward: self-attention"), 2);
    assert_eq!(laps("forward: intermediate.dense 32 -> 64, GELU"), 2);
    assert_eq!(laps("backward: intermediate.dense 32 -> 64, GELU"), 2);
    // The output dense layers' bias and dropout run in the pass that adds them to the residual.
    assert_eq!(laps("forward: output.dense 64 -> 32, product"), 2);
    assert_eq!(laps("forward: attention.output.dense 32 -> 32, product"), 2);
    // q, k and v are one product.
    assert_eq!(
        laps("forward: attention.self.query, key, value 32 -> 3 x 32"),
        2
    );
    assert_eq!(
        laps("backward: attention.self.query, key, value 32 -> 3 x 32"),
        2
    );
    // Two per layer; the LayerNorms' backward passes are reported beside them.
    assert_eq!(laps("forward: bias, dropout, residual add + LayerNorm"), 4);
    assert_eq!(laps("backward: bias, dropout, residual add + LayerNorm"), 4);
    for label in [
        "forward: embeddings (sum, LayerNorm, dropout)",
        "forward: MLM head + loss",
        "forward: lm_head.dense 32 -> 32, GELU",
        "forward: MLM decoder product",
        "forward: MLM loss",
        "backward: candle's recorded ops and gradient sums",
        "gradient clipping and LAMB update",
    ] {
        laps(label);
    }
    for (each, whole) in [
        ("seconds", "seconds_per_step"),
        ("host_seconds", "host_seconds_per_step"),
    ] {
        let total: f64 = regions.iter().map(|r| r[each].as_f64().unwrap()).sum();
        let step = v[whole].as_f64().unwrap();
        assert!(
            step > 0.0 && (total - step).abs() < 1e-9 * step.max(1.0),
            "{each}: {v}"
        );
    }
    // f32 on the CPU runs each encoder layer as one op; the table says so.
    let out = p.ok(&refs(&tiny(&[("--profile", "")])));
    for piece in [
        "where a step's time goes",
        "host ms",
        "forward: encoder layer (one op)",
        "backward: encoder layer (one op)",
        "LAMB update",
        "s per step",
    ] {
        assert!(out.contains(piece), "{piece} missing:\n{out}");
    }
}

#[test]
fn bench_rejects_impossible_sizes() {
    let p = Project::new();
    let e = p.fails(&refs(&tiny(&[("--heads", "3")])), 2);
    assert!(
        e.contains("--hidden 32 is not a multiple of --heads 3"),
        "{e}"
    );
    for flag in ["--layers", "--hidden", "--intermediate"] {
        let e = p.fails(&refs(&tiny(&[(flag, "0"), ("--heads", "1")])), 2);
        assert!(e.contains(&format!("{flag} 0 must be at least 1")), "{e}");
    }
    let e = p.fails(&refs(&tiny(&[("--dropout", "1.5")])), 2);
    assert!(e.contains("--dropout 1.5 is not in [0, 1)"), "{e}");
    let e = p.fails(&refs(&tiny(&[("--vocab", "4")])), 2);
    assert!(e.contains("more than the 5 special tokens"), "{e}");
    // 8 x 6 heads x 100,000² attention probabilities: refused, not an allocation that aborts.
    if flora_stages::memory::available().is_some() {
        let huge = [("--hidden", "768"), ("--heads", "6"), ("--len", "100000")];
        let e = p.fails(&refs(&tiny(&huge)), 2);
        assert!(
            e.contains("--batch 4 --len 100000: a training step needs at least"),
            "{e}"
        );
        assert!(e.contains("attention probabilities"), "{e}");
    } else {
        eprintln!("SKIPPED: the memory check (this machine does not say what is available)");
    }
    if !cfg!(feature = "cuda") {
        let e = p.fails(&refs(&tiny(&[("--gpu", "0")])), 2);
        assert!(e.contains("built without CUDA"), "{e}");
    }
}

#[test]
fn a_model_stage_given_a_gpu_without_the_cuda_build_fails_and_publishes_nothing() {
    if cfg!(feature = "cuda") {
        return;
    }
    let p = Project::new();
    let fasta: String = planted(40, 120, 3)
        .iter()
        .map(|r| format!(">{}\n{}\n", r.id, r.seq))
        .collect();
    p.write("corpus.fa", &fasta);
    p.bpe(300, "tok");
    let args = [
        "stage",
        "pretrain",
        "--input",
        "corpus=corpus.fa",
        "--input",
        "tokenizer=tok",
        "--set",
        "layers=1",
        "--set",
        "hidden=16",
        "--set",
        "heads=2",
        "--set",
        "intermediate=32",
        "--set",
        "max_len=64",
        "--set",
        "epochs=1",
        "--gpus",
        "0",
        "--out",
        "pre",
    ];
    // Refused before the job starts, with what to do.
    let e = p.fails(&args, 2);
    assert!(
        e.contains("stage `pretrain` would run on GPU 0, but this flora was built without CUDA"),
        "{e}"
    );
    assert!(!p.path("pre/model.safetensors").exists());
    // The same stage without --gpus runs on the CPU.
    let args: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--gpus" && *a != "0")
        .collect();
    p.ok(&args);
    assert!(p.path("pre/model.safetensors").is_file());
}
