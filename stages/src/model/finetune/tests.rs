use super::*;
use crate::model::predictor::Predictor;
use crate::model::pretrain::save_model;
use crate::model::roberta::Positions;
use crate::model::tokenizer as bpe;
use crate::testing::{planted, planted_table, Planted, PLANTED_MOTIFS};
use std::path::{Path, PathBuf};

/// A "pretrained" tiny model folder (random weights) with a tokenizer trained on `rows`.
pub(crate) fn tiny_model(dir: &Path, rows: &[Planted]) -> PathBuf {
    let tok = bpe::train(
        rows.iter().map(|r| r.seq.as_str()),
        &bpe::Params {
            vocab_size: 300,
            ..bpe::Params::default()
        },
    )
    .unwrap();
    let cfg = Config::new(
        tok.get_vocab_size(true),
        2,
        32,
        2,
        64,
        96,
        0.1,
        Positions::Tss,
    );
    // Weights of a width-32 model drawn at 0.02, as a 768-wide one is, barely tell tokens apart.
    let cfg = Config {
        initializer_range: 0.1,
        ..cfg
    };
    let w = Weights::init(&cfg, 3, &Device::Cpu).unwrap();
    let out = dir.join("pretrained");
    std::fs::create_dir_all(&out).unwrap();
    save_model(&out, &cfg, &w).unwrap();
    tok.save(out.join("tokenizer.json"), false).unwrap();
    out
}

/// A table of 200 planted rows of `len` bases, and a tiny model for them.
fn planted_setup(dir: &Path, len: usize) -> (PathBuf, PathBuf) {
    let rows = planted(200, len, 5);
    let table = dir.join("table.tsv");
    std::fs::write(&table, planted_table(&rows)).unwrap();
    (table, tiny_model(dir, &rows))
}

/// What a fine-tuning wrote that a re-run must repeat exactly: the model, predictions and log.
fn outputs(ctx: &Context) -> [Vec<u8>; 3] {
    ["model.safetensors", "predictions.tsv", "train_log.tsv"]
        .map(|f| std::fs::read(ctx.out.join(f)).unwrap())
}

fn context(dir: &Path, model: &Path, table: &Path) -> Context {
    let mut c = Context::new(dir.join("out"), dir.join("work"), dir.to_path_buf());
    std::fs::create_dir_all(&c.out).unwrap();
    c.inputs.insert("model".into(), model.to_path_buf());
    c.inputs.insert("table".into(), table.to_path_buf());
    c
}

pub(crate) fn quick() -> Params {
    Params {
        epochs: 45,
        batch_size: 32,
        lr: 5e-3,
        head_dropout: 0.1,
        patience: 15,
        ..Params::default()
    }
}

/// A tiny model fine-tuned on 800 planted rows, trained once and shared by the tests here.
pub(crate) struct Trained {
    /// The fine-tuned model folder.
    pub out: PathBuf,
    /// What training reported.
    pub summary: Summary,
    /// The rows it was trained and tested on.
    pub rows: Vec<Planted>,
}

/// The folder [`trained`] works in. A `TempDir` in a static is never dropped, so the folder is
/// removed when the test process exits, passed or failed.
static TRAINED_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

extern "C" fn remove_trained_dir() {
    if let Some(dir) = TRAINED_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub(crate) fn trained() -> &'static Trained {
    static TRAINED: std::sync::OnceLock<Trained> = std::sync::OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = TRAINED_DIR.get_or_init(|| tempfile::tempdir().unwrap().keep());
        // SAFETY: `remove_trained_dir` only reads a static that is set above and never changes.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(remove_trained_dir)
        };
        let rows = planted(800, 150, 11);
        let table = dir.join("table.tsv");
        std::fs::write(&table, planted_table(&rows)).unwrap();
        let model = tiny_model(dir, &rows);
        let ctx = context(dir, &model, &table);
        let summary = run(&quick(), &ctx).unwrap();
        Trained {
            out: ctx.out.clone(),
            summary,
            rows,
        }
    })
}

#[test]
fn learns_planted_motifs_on_held_out_rows() {
    let Trained { out, summary, .. } = trained();
    let all = summary.test_all.unwrap();
    assert!(all.r2 >= 0.5, "test R2 {} ({summary:?})", all.r2);
    assert_eq!(
        summary.transform,
        Some(Transform::None),
        "a ready table is not logged"
    );
    assert_eq!(summary.rows["test"], 240);
    // The artifact: a loadable model folder, predictions for every test row and target, a log.
    let pred = std::fs::read_to_string(out.join("predictions.tsv")).unwrap();
    assert!(pred.starts_with("id\ttarget\tobserved\tpredicted\n"));
    assert_eq!(pred.lines().count(), 1 + 240 * 3);
    let log = std::fs::read_to_string(out.join("train_log.tsv")).unwrap();
    assert!(log.lines().count() > 2);
    let model = Predictor::load(out, Device::Cpu).unwrap();
    assert_eq!(model.head().unwrap().targets, vec!["leaf", "root", "seed"]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_labels"], 3);
    assert_eq!(config["id2label"]["1"], "root");
}

#[test]
fn reloaded_model_predicts_what_training_reported() {
    let Trained { out, rows, .. } = trained();
    let model = Predictor::load(out, Device::Cpu).unwrap();
    let pred = std::fs::read_to_string(out.join("predictions.tsv")).unwrap();
    let first = pred.lines().nth(1).unwrap();
    let cols: Vec<&str> = first.split('\t').collect();
    let row = rows.iter().find(|r| r.id == cols[0]).unwrap();
    let enc = model.encode(&[row.seq.as_bytes()]).unwrap();
    let again = model.predict(&enc.rows).unwrap();
    let k = ["leaf", "root", "seed"]
        .iter()
        .position(|t| *t == cols[1])
        .unwrap();
    let reported: f32 = cols[3].parse().unwrap();
    assert!(
        (again[0][k] - reported).abs() < 1e-4,
        "{} vs {reported}",
        again[0][k]
    );
    // Batching and padding do not change a prediction.
    let both = model
        .encode(&[row.seq.as_bytes(), &row.seq.as_bytes()[..60]])
        .unwrap();
    let batched = model.predict(&both.rows).unwrap();
    assert!((batched[0][k] - reported).abs() < 1e-4);
}

#[test]
fn destroying_an_activating_motif_lowers_the_prediction() {
    let Trained { out, rows, .. } = trained();
    let model = Predictor::load(out, Device::Cpu).unwrap();
    // Motif 0 raises `leaf` by 2: break it in every sequence that has it.
    let (motif, _) = PLANTED_MOTIFS[0];
    let with: Vec<&Planted> = rows.iter().filter(|r| r.present[0]).take(40).collect();
    let broken: Vec<String> = with
        .iter()
        .map(|r| r.seq.replacen(motif, "TAGAGAT", 1))
        .collect();
    let before = model
        .predict(
            &model
                .encode(&with.iter().map(|r| r.seq.as_bytes()).collect::<Vec<_>>())
                .unwrap()
                .rows,
        )
        .unwrap();
    let after = model
        .predict(
            &model
                .encode(&broken.iter().map(|s| s.as_bytes()).collect::<Vec<_>>())
                .unwrap()
                .rows,
        )
        .unwrap();
    let drop: f32 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| b[0] - a[0])
        .sum::<f32>()
        / with.len() as f32;
    assert!(drop > 0.5, "mean drop in leaf {drop}");
}

#[test]
fn freezing_the_encoder_trains_the_head_only() {
    let dir = tempfile::tempdir().unwrap();
    let rows = planted(60, 150, 2);
    let table = dir.path().join("t.tsv");
    std::fs::write(&table, planted_table(&rows)).unwrap();
    let model = tiny_model(dir.path(), &rows);
    let ctx = context(dir.path(), &model, &table);
    let p = Params {
        freeze_encoder: true,
        epochs: 2,
        schedule: Schedule::Linear,
        ..quick()
    };
    run(&p, &ctx).unwrap();
    // The linear schedule ends at 0 on the last step.
    let log = std::fs::read_to_string(ctx.out.join("train_log.tsv")).unwrap();
    let last_lr = log.lines().last().unwrap().split('\t').nth(4).unwrap();
    assert_eq!(last_lr.parse::<f64>().unwrap(), 0.0, "{log}");
    let before =
        candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
    let after =
        candle_core::safetensors::load(ctx.out.join("model.safetensors"), &Device::Cpu).unwrap();
    let same = |name: &str| {
        let d = (&before[name] - &after[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        d.to_scalar::<f32>().unwrap() == 0.0
    };
    assert!(same("roberta.encoder.layer.0.attention.self.query.weight"));
    assert!(after.contains_key("classifier.out_proj.weight"));
}

#[test]
fn log_transform_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rows = planted(40, 150, 4);
    let model = tiny_model(dir.path(), &rows);
    let table = dir.path().join("t.tsv");
    std::fs::write(&table, planted_table(&rows)).unwrap();
    let ctx = context(dir.path(), &model, &table);
    let p = Params {
        transform: TransformParam::Log,
        epochs: 1,
        ..quick()
    };
    // Planted targets go negative: no logarithm.
    let e = run(&p, &ctx).unwrap_err();
    assert!(e.contains("has no logarithm"), "{e}");
    // A missing model input, and a model folder without weights.
    let mut c = ctx.clone();
    c.inputs.remove("model");
    assert!(run(&quick(), &c)
        .unwrap_err()
        .contains("needs an input `model`"));
    c.inputs.insert("model".into(), dir.path().join("nowhere"));
    assert!(run(&quick(), &c).unwrap_err().contains("model:"));
}

#[test]
fn beats_a_bag_of_5mers_ridge_regression_on_the_same_split() {
    use crate::baselines::{kmers, ridge};
    let Trained {
        out, summary, rows, ..
    } = trained();
    // The split the fine-tuning drew (a ready table without a split column).
    let table = out.parent().unwrap().join("table.tsv");
    let data = examples::from_table(&table, quick().seed, None).unwrap();
    let xy = |split: Split| {
        let rows = data.of(split);
        let x: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| kmers::features(&r.seq, &[5], kmers::Counting::Overlapping))
            .collect();
        let y: Vec<Vec<f64>> = rows.iter().map(|r| r.targets.clone()).collect();
        (x, y)
    };
    let (xt, yt) = xy(Split::Train);
    let (xv, yv) = xy(Split::Valid);
    let (xs, ys) = xy(Split::Test);
    // The baseline's best penalty, chosen on the validation rows as the model's epoch was.
    let mse = |m: &ridge::Ridge, x: &[Vec<f64>], y: &[Vec<f64>]| {
        x.iter()
            .zip(y)
            .flat_map(|(xi, yi)| m.predict(xi).into_iter().zip(yi.clone()))
            .map(|(p, o)| (p - o).powi(2))
            .sum::<f64>()
    };
    let best = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
        .into_iter()
        .map(|l| ridge::fit(&xt, &yt, l).unwrap())
        .min_by(|a, b| mse(a, &xv, &yv).total_cmp(&mse(b, &xv, &yv)))
        .unwrap();
    let obs: Vec<f64> = ys.iter().flatten().copied().collect();
    let pred: Vec<f64> = xs.iter().flat_map(|x| best.predict(x)).collect();
    let baseline = crate::analysis::metrics::compare(&obs, &pred).r2;
    let model = summary.test_all.unwrap().r2;
    assert!(rows.len() == 800);
    assert!(
        model > baseline,
        "model R2 {model:.3} does not beat the 5-mer baseline's {baseline:.3}"
    );
    eprintln!("planted motifs: model test R2 {model:.3}, bag-of-5-mers ridge {baseline:.3}");
}

#[test]
fn from_promoters_expression_and_split_with_the_log_default() {
    let dir = tempfile::tempdir().unwrap();
    let rows = planted(60, 150, 6);
    let model = tiny_model(dir.path(), &rows);
    // A `promoters` stage's output: 150 bases upstream of each TSS, on alternating strands.
    use crate::genomics::{gff::Strand, promoters};
    let cut: Vec<promoters::Promoter> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let tss = 1000 * (i as u64 + 1);
            let (strand, start) = match i % 2 {
                0 => (Strand::Forward, tss - 150),
                _ => (Strand::Reverse, tss + 1),
            };
            promoters::Promoter {
                gene_id: r.id.clone(),
                chrom: "chr1".into(),
                strand,
                tss,
                start,
                end: start + 149,
                seq: r.seq.clone().into_bytes(),
                n_fraction: 0.0,
            }
        })
        .collect();
    let promoters_dir = dir.path().join("promoters");
    std::fs::create_dir_all(&promoters_dir).unwrap();
    let summary = promoters::Summary {
        species: "sp".into(),
        ..Default::default()
    };
    promoters::write(&promoters_dir, &cut, &summary).unwrap();
    // TPM (positive) for all but the last gene; the split names all but the first.
    let mut expr = String::from("gene_id\tleaf\troot\tseed\n");
    for r in &rows[..59] {
        let tpm: Vec<String> = r.targets.iter().map(|t| format!("{}", t.exp())).collect();
        expr.push_str(&format!("{}\t{}\n", r.id, tpm.join("\t")));
    }
    std::fs::write(dir.path().join("expression.tsv"), expr).unwrap();
    let mut split = String::from("gene_id\tgroup\tsplit\n");
    for (i, r) in rows.iter().enumerate().skip(1) {
        let s = ["train", "train", "validation", "test"][i % 4];
        split.push_str(&format!("{}\tg{i}\t{s}\n", r.id));
    }
    std::fs::write(dir.path().join("split.tsv"), split).unwrap();
    let mut ctx = Context::new(
        dir.path().join("out"),
        dir.path().join("work"),
        dir.path().into(),
    );
    std::fs::create_dir_all(&ctx.out).unwrap();
    for (name, file) in [
        ("model", model),
        ("promoters", promoters_dir),
        ("expression", dir.path().join("expression.tsv")),
        ("split", dir.path().join("split.tsv")),
    ] {
        ctx.inputs.insert(name.into(), file);
    }
    let s = run(
        &Params {
            epochs: 1,
            ..quick()
        },
        &ctx,
    )
    .unwrap();
    assert_eq!(s.transform, Some(Transform::Log));
    assert_eq!(s.dropped["no expression values"], 1);
    assert_eq!(s.dropped["not in the split"], 1);
    assert_eq!(s.rows.values().sum::<usize>(), 58);
    // The model records the window its promoters were cut with.
    let head = Predictor::load(&ctx.out, Device::Cpu).unwrap();
    assert_eq!(
        head.head().unwrap().promoter_window,
        Some(crate::genomics::window::Window {
            upstream: 150,
            downstream: 0
        })
    );
    // Observed values are ln(TPM + 0.001), close to the planted targets.
    let pred = std::fs::read_to_string(ctx.out.join("predictions.tsv")).unwrap();
    let first: Vec<&str> = pred.lines().nth(1).unwrap().split('\t').collect();
    let row = rows.iter().find(|r| r.id == first[0]).unwrap();
    let k = ["leaf", "root", "seed"]
        .iter()
        .position(|t| *t == first[1])
        .unwrap();
    let observed: f64 = first[2].parse().unwrap();
    assert!((observed - (row.targets[k].exp() + 0.001).ln()).abs() < 1e-4);
}

/// `attention: flash` fine-tunes in bf16, and fails before training, saying why, with f32
/// products.
#[test]
fn flash_attention_fine_tunes_in_bf16_and_is_refused_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (table, model) = planted_setup(dir.path(), 150);
    let flash = Params {
        epochs: 2,
        max_steps: Some(6),
        precision: Precision::Bf16,
        attention: Attention::Flash,
        ..quick()
    };
    let ctx = context(&dir.path().join("bf16"), &model, &table);
    let summary = run(&flash, &ctx).unwrap();
    assert!(summary.best_val_loss.is_finite(), "{summary:?}");
    assert!(ctx.out.join("model.safetensors").exists());

    let refused = Params {
        precision: Precision::F32,
        ..flash
    };
    let ctx = context(&dir.path().join("f32"), &model, &table);
    let e = run(&refused, &ctx).unwrap_err().to_string();
    assert!(e.contains("flash attention needs precision bf16"), "{e}");
    assert!(!ctx.out.join("model.safetensors").exists());
}

/// A run that crashed inside an epoch goes on from the last epoch's checkpoint, one stopped
/// inside an epoch from the step it stopped after, and one stopped while an epoch (the last
/// too) is validated from that epoch's last step; all end with exactly the model, predictions
/// and log of a run that never stopped.
#[test]
fn a_resumed_fine_tuning_ends_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (table, model) = planted_setup(dir.path(), 120);
    // A checkpoint after every epoch; four steps an epoch (126 training rows in batches of 32).
    let p = Params {
        epochs: 4,
        batch_size: 32,
        lr: 5e-3,
        patience: 0,
        checkpoint_minutes: 0.0,
        ..Params::default()
    };
    let whole = context(&dir.path().join("whole"), &model, &table);
    let expected = run(&p, &whole).unwrap();
    assert!(
        !whole.work.join("checkpoint.json").exists(),
        "removed at the end"
    );
    let checkpoint_at = |ctx: &Context| {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ctx.work.join("checkpoint.json")).unwrap())
                .unwrap();
        (state["step"].as_u64(), state["epochs_done"].as_u64())
    };

    // Halts a run, checks its message and checkpoint, and resumes it to the end.
    let halt_and_resume = |name: &str, halt: Halt, message: &str, at: (u64, u64)| {
        let ctx = context(&dir.path().join(name), &model, &table);
        let e = train(&p, &ctx, Some(halt)).unwrap_err();
        assert!(e.contains(message), "{e}");
        assert_eq!(checkpoint_at(&ctx), (Some(at.0), Some(at.1)), "{name}");
        assert_eq!(run(&p, &ctx).unwrap(), expected, "{name}");
        assert!(
            outputs(&ctx) == outputs(&whole),
            "{name}: the resumed run's outputs differ"
        );
    };
    // A crash goes on from the second epoch's checkpoint; a stop from inside the third epoch.
    halt_and_resume("crashed", Halt::Crash(10), "halted after step 10", (8, 2));
    halt_and_resume(
        "stopped",
        Halt::Stop(10),
        "stopped by a test after step 10 of 16",
        (10, 2),
    );
    // A stop while the second epoch is validated keeps its steps; the re-run validates it.
    halt_and_resume(
        "stopped-validating",
        Halt::StopValidating(8),
        "stopped by a test while validating epoch 2 (after step 8 of 16)",
        (8, 1),
    );
    // And while the last is validated, with every step done.
    halt_and_resume(
        "stopped-validating-the-last",
        Halt::StopValidating(16),
        "stopped by a test while validating epoch 4 (after step 16 of 16)",
        (16, 3),
    );
}

/// Data parallelism: a step's micro-batches dealt to two or three devices (CPU replicas, each
/// on its own thread) take exactly the steps of one device with the same `grad_accum`: the same
/// model, predictions and log, bit for bit, with a frozen encoder too, and in bf16 with flash
/// attention. A run crashed on two devices goes on from its checkpoint on one.
#[test]
fn micro_batches_dealt_to_several_devices_fine_tune_as_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let (table, model) = planted_setup(dir.path(), 120);
    // Three micro-batches of 4 a step: eleven steps an epoch (126 training rows), the last of
    // 6 rows in two micro-batches. Rows are predicted 8 at a time: the validation rows and the
    // test rows in several batches, dealt to the devices too.
    let p = Params {
        epochs: 2,
        batch_size: 4,
        grad_accum: 3,
        lr: 5e-3,
        patience: 0,
        checkpoint_minutes: 0.0,
        ..Params::default()
    };
    let same = |p: &Params, name: &str| {
        let one = context(&dir.path().join(format!("{name}-one")), &model, &table);
        let expected = train_on(p, &one, None, &[Device::Cpu]).unwrap();
        assert_eq!(expected.steps, 22, "{expected:?}");
        assert!(expected.rows["validation"] > 8, "{expected:?}");
        for devices in [2, 3] {
            let many = context(
                &dir.path().join(format!("{name}-{devices}")),
                &model,
                &table,
            );
            let s = train_on(p, &many, None, &vec![Device::Cpu; devices]).unwrap();
            assert_eq!(s, expected, "{name} on {devices} devices");
            assert!(
                outputs(&many) == outputs(&one),
                "{name}: the outputs on {devices} devices differ from one's"
            );
        }
        one
    };
    let one = same(&p, "f32");
    let moved = context(&dir.path().join("moved"), &model, &table);
    let e = train_on(
        &p,
        &moved,
        Some(Halt::Crash(16)),
        &[Device::Cpu, Device::Cpu],
    )
    .unwrap_err();
    assert!(e.contains("halted after step 16"), "{e}");
    train_on(&p, &moved, None, &[Device::Cpu]).unwrap();
    assert!(
        outputs(&moved) == outputs(&one),
        "the resumed run's outputs differ"
    );
    // And one stopped while validating on three devices goes on from there on two.
    let stopped = context(&dir.path().join("stopped"), &model, &table);
    let e = train_on(
        &p,
        &stopped,
        Some(Halt::StopValidating(11)),
        &vec![Device::Cpu; 3],
    )
    .unwrap_err();
    assert!(e.contains("while validating epoch 1"), "{e}");
    train_on(&p, &stopped, None, &[Device::Cpu, Device::Cpu]).unwrap();
    assert!(
        outputs(&stopped) == outputs(&one),
        "the run stopped while validating ends differently"
    );
    // Only the head's gradients travel and count when the encoder is frozen.
    same(
        &Params {
            freeze_encoder: true,
            ..p.clone()
        },
        "frozen",
    );
    // The replicas take the run's precision and attention.
    same(
        &Params {
            precision: Precision::Bf16,
            attention: Attention::Flash,
            ..p.clone()
        },
        "bf16",
    );
    // Accumulating changes the steps: three micro-batches of 4 are not one batch of 12.
    let whole = context(&dir.path().join("whole"), &model, &table);
    let p12 = Params {
        batch_size: 12,
        grad_accum: 1,
        ..p
    };
    train_on(&p12, &whole, None, &[Device::Cpu]).unwrap();
    assert!(outputs(&whole)[0] != outputs(&one)[0]);
}

/// On a card: a step's micro-batches dealt to two devices (GPUs 0 and 1, or two handles of GPU
/// 0 on a machine with one, each on its own host thread and stream) fine-tune as GPU 0 alone
/// does, in bf16 with flash attention, within the card's run-to-run differences.
#[cfg(feature = "cuda")]
#[test]
fn gpu_micro_batches_dealt_to_two_devices_fine_tune_as_on_one() {
    use crate::model::device;
    let (Ok(first), Ok(second)) = (
        device::cuda(0),
        device::cuda(1).or_else(|_| device::cuda(0)),
    ) else {
        crate::testing::skipped("data-parallel fine-tuning on a GPU: no CUDA GPU");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (table, model) = planted_setup(dir.path(), 120);
    let p = Params {
        epochs: 2,
        batch_size: 12,
        grad_accum: 3,
        lr: 5e-3,
        patience: 0,
        precision: Precision::Bf16,
        attention: Attention::Flash,
        ..Params::default()
    };
    let one = context(&dir.path().join("one"), &model, &table);
    let a = train_on(&p, &one, None, std::slice::from_ref(&first)).unwrap();
    let two = context(&dir.path().join("two"), &model, &table);
    let b = train_on(&p, &two, None, &[first, second]).unwrap();
    assert_eq!(a.steps, b.steps);
    assert!(
        (a.best_val_loss - b.best_val_loss).abs() < 1e-3 * a.best_val_loss.abs().max(1.0),
        "validation loss {} on one device, {} on two",
        a.best_val_loss,
        b.best_val_loss
    );
    crate::testing::assert_weights_close(&one.out, &two.out, 1e-3);
}
