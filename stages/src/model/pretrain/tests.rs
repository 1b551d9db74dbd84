use super::epoch_order::GROUP_STEPS;
use super::*;
use crate::model::tokenizer as bpe;
use std::collections::HashMap;
use std::path::PathBuf;

/// A corpus of 120 promoter-like sequences built from plant cis-element pairs: each element is
/// always followed by its partner (so a masked element is predictable from its context), with
/// random spacers between pairs.
fn corpus(dir: &Path) -> PathBuf {
    const PAIRS: [(&str, &str); 3] = [
        ("TATAAA", "CACGTG"),
        ("ACGTGG", "AAAGGT"),
        ("TTGACC", "GCCACC"),
    ];
    let mut rng = Rng::new(5);
    let mut fa = String::new();
    for i in 0..120 {
        let mut s = String::new();
        while s.len() < 180 {
            let (a, b) = PAIRS[rng.below(3)];
            s.push_str(a);
            s.push_str(b);
            for _ in 0..rng.below(3) {
                s.push(['A', 'C', 'G', 'T'][rng.below(4)]);
            }
        }
        fa.push_str(&format!(">p{i} toy\n{s}\n"));
    }
    let p = dir.join("corpus.fa");
    std::fs::write(&p, fa).unwrap();
    p
}

fn tokenizer(dir: &Path, corpus: &Path) -> PathBuf {
    let seqs: Vec<String> = crate::genomics::records::read_all(corpus)
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.seq).unwrap())
        .collect();
    let tok = bpe::train(
        seqs.iter(),
        &bpe::Params {
            vocab_size: 300,
            ..bpe::Params::default()
        },
    )
    .unwrap();
    let out = dir.join("tok");
    std::fs::create_dir_all(&out).unwrap();
    tok.save(out.join("tokenizer.json"), false).unwrap();
    out
}

fn tiny() -> Params {
    Params {
        layers: 2,
        hidden: 32,
        heads: 2,
        intermediate: 64,
        max_len: 64,
        dropout: 0.1,
        lr: 5e-3,
        warmup_steps: 2,
        epochs: 2,
        batch_size: 8,
        validation: 0.1,
        checkpoint_every: Some(4),
        ..Params::default()
    }
}

fn ctx(dir: &Path, name: &str, corpus: &Path, tok: &Path) -> Context {
    let mut c = Context::new(
        dir.join(name).join("out"),
        dir.join(name).join("work"),
        dir.to_path_buf(),
    );
    std::fs::create_dir_all(&c.out).unwrap();
    c.inputs.insert("corpus".into(), corpus.to_path_buf());
    c.inputs.insert("tokenizer".into(), tok.to_path_buf());
    c
}

/// The mean training loss of the first three and the last three steps of a run's log.
fn first_and_last_losses(out: &Path) -> (f64, f64) {
    let log = std::fs::read_to_string(out.join("train_log.tsv")).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(2).unwrap().parse().unwrap())
        .collect();
    let first = losses[..3].iter().sum::<f64>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    (first, last)
}

fn tiny_config() -> Config {
    Config::new(305, 2, 32, 2, 64, 64, 0.0, Positions::Tss)
}

#[test]
fn every_parameter_receives_a_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let tok = bpe::load(&tokenizer(dir.path(), &c)).unwrap();
    let data = tokenize(&c, &tok, 64).unwrap();
    let cfg = tiny_config();
    let w = Weights::init(&cfg, 1, &Device::Cpu).unwrap();
    let rows: Vec<&[u32]> = (0..8).map(|i| data.row(i)).collect();
    let p = Params {
        mask_prob: 0.3,
        ..tiny()
    };
    let ((_, _, n), grads) = micro_step(&w, &cfg, &rows, &p, 0, 0, &Device::Cpu).unwrap();
    assert!(n > 0);
    for (name, _) in cfg.parameters() {
        let g = grads
            .get(&name)
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // The padding rows of the embeddings get none, but every tensor gets some.
        assert!(norm > 0.0, "{name} has a zero gradient");
    }
}

#[test]
fn names_and_shapes_follow_roberta() {
    let cfg = tiny_config();
    let names: Vec<String> = cfg.parameters().into_iter().map(|(n, _)| n).collect();
    for want in [
        "roberta.embeddings.word_embeddings.weight",
        "roberta.embeddings.position_embeddings.weight",
        "roberta.embeddings.LayerNorm.weight",
        "roberta.encoder.layer.0.attention.self.query.weight",
        "roberta.encoder.layer.1.attention.output.LayerNorm.bias",
        "roberta.encoder.layer.1.intermediate.dense.weight",
        "roberta.encoder.layer.1.output.dense.weight",
        "lm_head.dense.weight",
        "lm_head.layer_norm.weight",
        "lm_head.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing");
    }
    let shapes: HashMap<String, Vec<usize>> = cfg.parameters().into_iter().collect();
    assert_eq!(
        shapes["roberta.encoder.layer.0.intermediate.dense.weight"],
        vec![64, 32]
    );
    assert_eq!(
        shapes["roberta.encoder.layer.0.output.dense.weight"],
        vec![32, 64]
    );
    assert_eq!(
        shapes["roberta.embeddings.position_embeddings.weight"],
        vec![67, 32]
    );
    assert_eq!(names.len(), 5 + 2 * 16 + 5);
}

#[test]
fn padding_changes_nothing_for_real_tokens() {
    let cfg = tiny_config();
    let dev = Device::Cpu;
    let w = Weights::init(&cfg, 2, &dev).unwrap();
    let real = [10u32, 20, 30, 40];
    let (short, _) = bpe::frame(&real, 8);
    let (long, _) = bpe::frame(&real, 20);
    let a = roberta::encode(&w, &cfg, std::slice::from_ref(&short), None, &dev).unwrap();
    let b = roberta::encode(&w, &cfg, std::slice::from_ref(&long), None, &dev).unwrap();
    // The last 6 positions (<s>, 4 tokens, </s>) are the real ones in both.
    let a = a
        .narrow(1, 2, 6)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = b
        .narrow(1, 14, 6)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() < 1e-5,
            "padding leaked into the real tokens: {x} vs {y}"
        );
    }
}

#[test]
fn lamb_on_mlm_drives_the_loss_down_and_beats_unigram_guessing() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let t = tokenizer(dir.path(), &c);
    let p = Params {
        epochs: 40,
        dropout: 0.0,
        lr: 1e-2,
        checkpoint_every: Some(1000),
        ..tiny()
    };
    let cx = ctx(dir.path(), "run", &c, &t);
    let s = train(&p, &cx, None).unwrap();
    let (first, last) = first_and_last_losses(&cx.out);
    assert!(last < first - 1.0, "loss {first:.3} -> {last:.3}");
    // Guessing the most frequent token gets at most its frequency among real tokens.
    let tok = bpe::load(&t).unwrap();
    let data = tokenize(&c, &tok, 64).unwrap();
    let mut counts: HashMap<u32, usize> = HashMap::new();
    let mut total = 0;
    for &id in &data.ids {
        if id > 4 {
            *counts.entry(id).or_default() += 1;
            total += 1;
        }
    }
    let unigram = *counts.values().max().unwrap() as f64 / total as f64;
    assert!(
        s.validation_accuracy > unigram,
        "masked accuracy {:.3} vs unigram {unigram:.3}",
        s.validation_accuracy
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train_log.tsv",
    ] {
        assert!(cx.out.join(f).is_file(), "{f}");
    }
    let cfg: Config =
        serde_json::from_slice(&std::fs::read(cx.out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg.pad_token_id, 2);
    assert_eq!(cfg.architectures, ["RobertaForMaskedLM"]);
}

/// A run stopped after step 6 resumes from its checkpoint at step 4 and ends with the weights of
/// a run never stopped. So does one killed while writing a checkpoint (between its weights and
/// its state, which leaves the checkpoint before it in force), and one whose checkpoint cannot be
/// read (reported; training starts over). None leaves a checkpoint file behind.
#[test]
fn a_resumed_run_ends_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let t = tokenizer(dir.path(), &c);
    let p = tiny();
    let whole = ctx(dir.path(), "whole", &c, &t);
    train(&p, &whole, None).unwrap();
    let broken = ctx(dir.path(), "broken", &c, &t);
    let err = train(&p, &broken, Some(Halt::Crash(6))).unwrap_err();
    assert!(err.contains("halted after step 6"));
    assert!(checkpoint::exists(&broken.work));
    let s = train(&p, &broken, None).unwrap();
    assert_eq!(s.resumed_from, 4, "the checkpoint every 4 steps");
    assert_same_model(&whole, &broken);

    let killed = ctx(dir.path(), "killed", &c, &t);
    train(&p, &killed, Some(Halt::Crash(10))).unwrap_err();
    // Checkpoints at steps 4 and 8: only the last one's weights are kept.
    assert_eq!(
        checkpoint_files(&killed.work),
        ["checkpoint-8.safetensors", "checkpoint.json"]
    );
    // The save after step 12, killed between its weights and its state.
    std::fs::copy(
        killed.work.join("checkpoint-8.safetensors"),
        killed.work.join("checkpoint-12.safetensors"),
    )
    .unwrap();
    std::fs::write(killed.work.join("checkpoint.json.tmp"), "{\"step\": 1").unwrap();
    let s = train(&p, &killed, None).unwrap();
    assert_eq!(s.resumed_from, 8);
    assert_same_model(&whole, &killed);
    assert_eq!(checkpoint_files(&killed.work), Vec::<String>::new());

    let damaged = ctx(dir.path(), "damaged", &c, &t);
    train(&p, &damaged, Some(Halt::Crash(6))).unwrap_err();
    let weights = damaged.work.join("checkpoint-4.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let s = train(&p, &damaged, None).unwrap();
    assert_eq!(s.resumed_from, 0, "started over");
    assert_same_model(&whole, &damaged);
    assert_eq!(checkpoint_files(&damaged.work), Vec::<String>::new());
}

/// A run stopped after a step, or while it validates an epoch (the first, or the last after the
/// last step), saves that step; the re-run validates what the stop interrupted and ends as a run
/// never stopped, with the same validation figures.
#[test]
fn a_run_stopped_while_validating_validates_again_and_ends_as_an_unstopped_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let t = tokenizer(dir.path(), &c);
    let p = Params {
        batch_size: 4,
        checkpoint_every: Some(1000),
        ..tiny()
    };
    let whole = ctx(dir.path(), "whole", &c, &t);
    let expected = train(&p, &whole, None).unwrap();
    // The steps whose rows carry a validation: the epochs' ends.
    let log = std::fs::read_to_string(whole.out.join("train_log.tsv")).unwrap();
    let validated: Vec<u64> = log
        .lines()
        .skip(1)
        .filter(|row| !row.ends_with("\t\t"))
        .map(|row| row.split('\t').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(validated.len(), 2, "two epochs: {log}");
    assert!(
        expected.validation_sequences > p.batch_size,
        "validated in batches"
    );
    let (first, last) = (validated[0], validated[1]);
    assert_eq!(last, expected.steps);
    for (name, halt, message) in [
        (
            "after-a-step",
            Halt::Stop(3),
            format!("stopped by a test after step 3 of {last}"),
        ),
        (
            "first-validation",
            Halt::StopValidating(first),
            format!("stopped by a test while validating epoch 1 (after step {first} of {last})"),
        ),
        (
            "last-validation",
            Halt::StopValidating(last),
            format!("stopped by a test while validating epoch 2 (after step {last} of {last})"),
        ),
    ] {
        let run = ctx(dir.path(), name, &c, &t);
        let err = train(&p, &run, Some(halt)).unwrap_err();
        assert!(err.contains(&message), "{name}: {err}");
        assert!(checkpoint::exists(&run.work), "{name}");
        assert!(!run.out.join("model.safetensors").exists(), "{name}");
        let s = train(&p, &run, None).unwrap();
        assert_same_model(&whole, &run);
        assert_eq!(
            (s.validation_loss, s.validation_accuracy, s.final_loss),
            (
                expected.validation_loss,
                expected.validation_accuracy,
                expected.final_loss
            ),
            "{name}"
        );
        assert_eq!(checkpoint_files(&run.work), Vec::<String>::new(), "{name}");
    }
}

/// The same weights and training log in two runs' outputs.
fn assert_same_model(a: &Context, b: &Context) {
    let load = |c: &Context| {
        candle_core::safetensors::load(c.out.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (ta, tb) = (load(a), load(b));
    assert_eq!(ta.len(), tb.len());
    for (name, x) in &ta {
        let va = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let vb = tb[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(va, vb, "{name} differs");
    }
    assert_eq!(
        std::fs::read_to_string(a.out.join("train_log.tsv")).unwrap(),
        std::fs::read_to_string(b.out.join("train_log.tsv")).unwrap()
    );
}

/// The files in a work folder whose names start with `checkpoint`, sorted.
fn checkpoint_files(work: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint"))
        .collect();
    names.sort();
    names
}

/// Without `checkpoint_every`, checkpoints follow the clock: at 0 minutes one after every step
/// (a halted run resumes from its last step), at a day none in a short run (it starts over).
#[test]
fn checkpoints_by_time_follow_checkpoint_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let t = tokenizer(dir.path(), &c);
    for (minutes, resumed_from) in [(0.0, 5), (24.0 * 60.0, 0)] {
        let p = Params {
            checkpoint_every: None,
            checkpoint_minutes: minutes,
            max_steps: Some(7),
            ..tiny()
        };
        let run = ctx(dir.path(), &format!("by-time-{minutes}"), &c, &t);
        let err = train(&p, &run, Some(Halt::Crash(5))).unwrap_err();
        assert!(err.contains("halted after step 5"), "{err}");
        assert_eq!(
            checkpoint::exists(&run.work),
            resumed_from > 0,
            "{minutes} minutes"
        );
        let s = train(&p, &run, None).unwrap();
        assert_eq!(
            (s.resumed_from, s.steps),
            (resumed_from, 7),
            "{minutes} minutes"
        );
    }
}

/// A loss that stops being finite stops the run, naming the step and the last good checkpoint
/// (or saying there is none), which stays in the work folder.
#[test]
fn a_loss_that_turns_infinite_stops_the_run_and_names_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let t = tokenizer(dir.path(), &c);
    // A learning rate of 1e38 makes the weights overflow at the first update.
    for (every, kept) in [
        (Some(1), "the last good checkpoint (step 1) is kept in"),
        (Some(100), "no checkpoint was written before it"),
    ] {
        let p = Params {
            lr: 1e38,
            checkpoint_every: every,
            ..tiny()
        };
        let run = ctx(dir.path(), &format!("diverges-{every:?}"), &c, &t);
        let err = train(&p, &run, None).unwrap_err();
        assert!(err.contains("the loss became NaN at step 2"), "{err}");
        assert!(err.contains(kept), "{err}");
        assert_eq!(checkpoint::exists(&run.work), every == Some(1));
    }
}

/// Each epoch's order is a permutation of the training rows, the same whenever it is asked
/// for (so a resumed run sees it too), and differs between epochs.
#[test]
fn each_epoch_has_its_own_fixed_order() {
    let train: Vec<usize> = (100..300).collect();
    let mut order = EpochOrder::new(&train, 7, None);
    let first = order.of(0).to_vec();
    let second = order.of(1).to_vec();
    assert_ne!(first, second);
    assert_eq!(order.of(0), first.as_slice());
    assert_eq!(EpochOrder::new(&train, 7, None).of(1), second.as_slice());
    let mut sorted = second.clone();
    sorted.sort();
    assert_eq!(sorted, train);
    assert_ne!(EpochOrder::new(&train, 8, None).of(0), first.as_slice());
}

#[test]
fn learning_rate_schedule() {
    let p = Params {
        lr: 1.0,
        warmup_steps: 10,
        ..Params::default()
    };
    assert_eq!(lr_at(&p, 5, 110), 0.5);
    assert_eq!(lr_at(&p, 10, 110), 1.0);
    assert!((lr_at(&p, 60, 110) - 0.5).abs() < 1e-12);
    assert_eq!(lr_at(&p, 110, 110), 0.0);
    let c = Params {
        schedule: Schedule::Constant,
        ..p
    };
    assert_eq!(lr_at(&c, 100, 110), 1.0);
}

#[test]
fn masking_follows_80_10_10_and_spares_specials() {
    let row: Vec<u32> = std::iter::repeat_n(PAD, 10)
        .chain([BOS])
        .chain((0..10_000).map(|i| 5 + (i % 200) as u32))
        .chain([EOS])
        .collect();
    let mut rng = Rng::new(3);
    let (inp, labels) = mask_batch(&[&row], 300, 0.15, &mut rng);
    let chosen: Vec<usize> = labels
        .iter()
        .enumerate()
        .filter(|(_, l)| **l >= 0)
        .map(|(i, _)| i)
        .collect();
    let share = chosen.len() as f64 / 10_000.0;
    assert!((share - 0.15).abs() < 0.01, "{share}");
    assert!(
        chosen.iter().all(|&i| i > 10 && i < row.len() - 1),
        "specials and padding are never chosen"
    );
    let masked = chosen.iter().filter(|&&i| inp[0][i] == MASK).count() as f64 / chosen.len() as f64;
    let same = chosen.iter().filter(|&&i| inp[0][i] == row[i]).count() as f64 / chosen.len() as f64;
    assert!((masked - 0.8).abs() < 0.03, "{masked}");
    assert!(same > 0.08 && same < 0.13, "{same}");
}

/// Where Python can import torch and transformers, `RobertaForMaskedLM.from_pretrained` loads the
/// saved folder and gives the same logits (positions: roberta, no padding, so both schemes agree).
#[test]
fn transformers_loads_the_folder_and_gives_the_same_logits() {
    let importable = std::process::Command::new("python3")
        .args(["-c", "import torch, transformers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !importable {
        crate::testing::skipped("transformers_loads_the_folder_and_gives_the_same_logits: python3 cannot import torch and transformers");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let cfg = Config::new(305, 2, 32, 2, 64, 64, 0.0, Positions::Roberta);
    let w = Weights::init(&cfg, 4, &dev).unwrap();
    save_model(dir.path(), &cfg, &w).unwrap();
    let ids = vec![vec![0u32, 10, 20, 30, 40, 1]];
    let hidden = roberta::encode(&w, &cfg, &ids, None, &dev).unwrap();
    let ours: Vec<f32> = roberta::mlm_logits(&w, &cfg, &hidden)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let script = "import json, sys, torch\nfrom transformers import RobertaForMaskedLM\nm = RobertaForMaskedLM.from_pretrained(sys.argv[1]).eval()\nwith torch.no_grad():\n    out = m(input_ids=torch.tensor(json.loads(sys.argv[2]))).logits\nprint(json.dumps(out.flatten().tolist()))\n";
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            dir.path().to_str().unwrap(),
            &serde_json::to_string(&ids).unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<f32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
}

#[test]
fn the_tokenized_corpus_round_trips_through_its_compact_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let tok = bpe::load(&tokenizer(dir.path(), &c)).unwrap();
    let data = tokenize(&c, &tok, 64).unwrap();
    let path = dir.path().join("corpus.tokens");
    data.save(&path).unwrap();
    let back = Corpus::load(&path, 64).unwrap();
    assert_eq!(back.ids, data.ids);
    assert_eq!(back.names, data.names);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        25 + data.ids.len() * 2 + data.names.join("\n").len()
    );
    assert!(
        Corpus::load(&path, 32).is_none(),
        "another row length is another corpus"
    );
    std::fs::write(&path, b"junk").unwrap();
    assert!(Corpus::load(&path, 64).is_none());
}

#[test]
fn the_head_on_masked_positions_gives_the_loss_and_right_guesses_of_the_full_logits() {
    let cfg = tiny_config();
    let dev = Device::Cpu;
    let w = Weights::init(&cfg, 7, &dev).unwrap();
    let ids: Vec<Vec<u32>> = (0..3)
        .map(|r| {
            (0..10)
                .map(|i| 5 + ((r * 31 + i * 17) % 300) as u32)
                .collect()
        })
        .collect();
    let hidden = roberta::encode(&w, &cfg, &ids, None, &dev).unwrap();
    let logits: Vec<Vec<f32>> = roberta::mlm_logits(&w, &cfg, &hidden)
        .unwrap()
        .reshape((30, cfg.vocab_size))
        .unwrap()
        .to_vec2()
        .unwrap();
    let argmax = |row: &[f32]| {
        (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap() as i64
    };
    // Every fourth position labelled; half of those with the head's own guess, so that the
    // count of right guesses is known.
    let labels: Vec<i64> = (0..30)
        .map(|i| match i % 8 {
            1 => argmax(&logits[i]),
            5 => (argmax(&logits[i]) + 1 + (i as i64 * 7 % 300)) % cfg.vocab_size as i64,
            _ => -1,
        })
        .collect();
    let right = (0..30)
        .filter(|&i| labels[i] >= 0 && labels[i] == argmax(&logits[i]))
        .count();
    assert!(right >= 4, "{right} right guesses");
    let (loss, correct, n) = roberta::mlm_loss(&w, &cfg, &hidden, &labels).unwrap();
    assert_eq!(correct.to_scalar::<f32>().unwrap(), right as f32);
    let mut want = 0f64;
    for (row, &l) in logits.iter().zip(&labels) {
        if l >= 0 {
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            want += lse - row[l as usize] as f64;
        }
    }
    want /= n as f64;
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert_eq!(n, labels.iter().filter(|&&l| l >= 0).count());
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
}

#[test]
fn bf16_mixed_precision_keeps_f32_weights_and_follows_f32_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let tok = bpe::load(&tokenizer(dir.path(), &c)).unwrap();
    let data = tokenize(&c, &tok, 64).unwrap();
    let cfg = tiny_config();
    let rows: Vec<&[u32]> = (0..8).map(|i| data.row(i)).collect();
    let p = tiny();
    let mut w = Weights::init(&cfg, 1, &Device::Cpu).unwrap();
    let ((l32, _, _), g32) = micro_step(&w, &cfg, &rows, &p, 0, 0, &Device::Cpu).unwrap();
    w.compute = candle_core::DType::BF16;
    let ((l16, _, _), g16) = micro_step(&w, &cfg, &rows, &p, 0, 0, &Device::Cpu).unwrap();
    assert!((l32 - l16).abs() < 0.02 * l32, "loss f32 {l32} bf16 {l16}");
    for (name, a) in &g32 {
        let b = &g16[name];
        assert_eq!(b.dtype(), candle_core::DType::F32, "{name}");
        let dot = crate::testing::total(&(a * b).unwrap());
        let na = crate::testing::total(&a.sqr().unwrap());
        let nb = crate::testing::total(&b.sqr().unwrap());
        if na > 1e-12 {
            let cos = dot / (na.sqrt() * nb.sqrt());
            assert!(
                cos > 0.98,
                "{name}: cosine {cos} between f32 and bf16 gradients"
            );
        }
    }
    // A bf16 run trains, and saves f32 weights.
    let t = tokenizer(dir.path(), &c);
    let p = Params {
        epochs: 10,
        dropout: 0.0,
        lr: 1e-2,
        checkpoint_every: Some(1000),
        precision: Precision::Bf16,
        ..tiny()
    };
    let cx = ctx(dir.path(), "bf16", &c, &t);
    train(&p, &cx, None).unwrap();
    let (first, last) = first_and_last_losses(&cx.out);
    assert!(last < first - 0.5, "bf16 loss {first:.3} -> {last:.3}");
    let saved =
        candle_core::safetensors::load(cx.out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(saved.values().all(|t| t.dtype() == candle_core::DType::F32));
}

/// `attention: flash` pretrains in bf16 (its loss falls as the products' does), and a run it
/// cannot take (f32 products) fails before training, saying why.
#[test]
fn flash_attention_pretrains_in_bf16_and_is_refused_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let t = tokenizer(dir.path(), &c);
    let p = Params {
        epochs: 10,
        dropout: 0.1,
        lr: 1e-2,
        checkpoint_every: Some(1000),
        precision: Precision::Bf16,
        attention: Attention::Flash,
        ..tiny()
    };
    let cx = ctx(dir.path(), "flash", &c, &t);
    train(&p, &cx, None).unwrap();
    let (first, last) = first_and_last_losses(&cx.out);
    assert!(last < first - 0.5, "flash loss {first:.3} -> {last:.3}");

    let f32_run = Params {
        precision: Precision::F32,
        ..p
    };
    let cx = ctx(dir.path(), "flash-f32", &c, &t);
    let e = train(&f32_run, &cx, None).unwrap_err().to_string();
    assert!(e.contains("flash attention needs precision bf16"), "{e}");
    assert!(!cx.out.join("model.safetensors").exists());
}

/// A batch cut to its longest sequence masks the same tokens and gives the same loss as the batch
/// padded to `max_len`: the padding columns it leaves out did no work that counted.
#[test]
fn a_batch_cut_to_its_longest_sequence_gives_the_loss_of_the_padded_batch() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let tok = bpe::load(&tokenizer(dir.path(), &c)).unwrap();
    // Rows of up to 64 ids, framed to 100: every row starts with shared padding.
    let data = tokenize(&c, &tok, 100).unwrap();
    let cfg = Config::new(305, 2, 32, 2, 64, 104, 0.0, Positions::Tss);
    let w = Weights::init(&cfg, 1, &Device::Cpu).unwrap();
    let padded: Vec<&[u32]> = (0..6).map(|i| data.row(i)).collect();
    let cut = trimmed(&padded);
    let longest = cut[0].len();
    assert!(longest < 100, "the test's rows are all 100 long");
    assert!(
        cut.iter().any(|r| r[0] != PAD),
        "a row starts at the first column"
    );
    let loss = |rows: &[&[u32]]| {
        let (inputs, labels) = mask_batch(rows, cfg.vocab_size, 0.15, &mut Rng::new(4));
        let hidden = roberta::encode(&w, &cfg, &inputs, None, &Device::Cpu).unwrap();
        let (loss, correct, n) = roberta::mlm_loss(&w, &cfg, &hidden, &labels).unwrap();
        let masked: Vec<u32> = inputs
            .iter()
            .flat_map(|r| r[r.len() - longest..].to_vec())
            .collect();
        let (loss, correct) = (
            loss.to_scalar::<f32>().unwrap(),
            correct.to_scalar::<f32>().unwrap(),
        );
        (loss, correct, n, masked)
    };
    let (l_padded, c_padded, n_padded, m_padded) = loss(&padded);
    let (l_cut, c_cut, n_cut, m_cut) = loss(&cut);
    assert_eq!(m_cut, m_padded, "the same tokens are masked");
    assert_eq!((n_cut, c_cut), (n_padded, c_padded));
    assert!((l_cut - l_padded).abs() < 1e-5, "{l_cut} vs {l_padded}");
}

/// Grouped by length, each block of 50 steps' sequences is sorted longest first, and the epoch's
/// order is still a fixed permutation of the training rows.
#[test]
fn grouping_by_length_sorts_each_block_of_steps() {
    let train: Vec<usize> = (0..1000).collect();
    let lengths: Vec<u32> = (0..1000).map(|i| (i * 37 % 101) as u32).collect();
    let per_step = 4;
    let mut grouped = EpochOrder::new(&train, 7, Some((&lengths, per_step)));
    let first = grouped.of(0).to_vec();
    let block = per_step * GROUP_STEPS;
    for b in first.chunks(block) {
        assert!(b.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]));
    }
    // The blocks hold the same sequences as the plain shuffle's.
    let plain = EpochOrder::new(&train, 7, None).of(0).to_vec();
    for (g, p) in first.chunks(block).zip(plain.chunks(block)) {
        let (mut g, mut p) = (g.to_vec(), p.to_vec());
        g.sort();
        p.sort();
        assert_eq!(g, p);
    }
    assert_ne!(first, plain);
    assert_ne!(grouped.of(1), first.as_slice());
    assert_eq!(
        EpochOrder::new(&train, 7, Some((&lengths, per_step))).of(0),
        first.as_slice()
    );
}

/// On promoters of mixed lengths, grouping by length trains on far less padding, and the summary
/// says how much.
#[test]
fn grouping_by_length_cuts_the_padding_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(3);
    let mut fa = String::new();
    for i in 0..160 {
        let len = 30 + rng.below(200);
        let s: String = (0..len)
            .map(|_| ['A', 'C', 'G', 'T'][rng.below(4)])
            .collect();
        fa.push_str(&format!(">p{i}\n{s}\n"));
    }
    let c = dir.path().join("mixed.fa");
    std::fs::write(&c, fa).unwrap();
    let t = tokenizer(dir.path(), &c);
    let mut padding = Vec::new();
    for group_by_length in [false, true] {
        let p = Params {
            group_by_length,
            max_len: 128,
            ..tiny()
        };
        let run = ctx(dir.path(), &format!("grouped-{group_by_length}"), &c, &t);
        let s = train(&p, &run, None).unwrap();
        assert!(s.final_loss.is_finite() && s.validation_loss.is_finite());
        assert!(s.positions > 0);
        padding.push((s.padding, s.positions));
    }
    let ((plain, plain_positions), (grouped, grouped_positions)) = (padding[0], padding[1]);
    assert!(
        plain > 0.2,
        "random batches of mixed lengths: padding {plain}"
    );
    assert!(grouped < plain / 3.0, "grouped {grouped}, plain {plain}");
    assert!(grouped_positions < plain_positions);
    // No step, no positions: nothing was padding.
    let run = ctx(dir.path(), "no-steps", &c, &t);
    let none = Params {
        max_steps: Some(0),
        ..tiny()
    };
    let s = train(&none, &run, None).unwrap();
    assert_eq!((s.steps, s.positions, s.padding), (0, 0, 0.0));
}

#[test]
fn params_no_training_can_take_are_named() {
    assert_eq!(Params::default().check(), Ok(()));
    // No step at all writes the initial model (a baseline); checkpoints by time may come every step.
    let initial = Params {
        max_steps: Some(0),
        checkpoint_minutes: 0.0,
        ..Params::default()
    };
    assert_eq!(initial.check(), Ok(()));
    // Each case changes one param of the defaults.
    type Change = fn(&mut Params);
    let bad: [(Change, &str); 16] = [
        (|p| p.hidden = 0, "hidden"),
        (|p| p.heads = 0, "heads"),
        (|p| (p.hidden, p.heads) = (30, 4), "hidden"),
        (|p| p.intermediate = 0, "intermediate"),
        (|p| p.max_len = 2, "max_len"),
        (|p| p.dropout = 1.0, "dropout"),
        (|p| p.mask_prob = 0.0, "mask_prob"),
        (|p| p.lr = f64::NAN, "lr"),
        (|p| p.weight_decay = -0.1, "weight_decay"),
        (|p| p.clip_norm = -1.0, "clip_norm"),
        (|p| p.epochs = 0, "epochs"),
        (|p| p.batch_size = 0, "batch_size"),
        (|p| p.grad_accum = 0, "grad_accum"),
        (|p| p.validation = 1.0, "validation"),
        (|p| p.checkpoint_every = Some(0), "checkpoint_every"),
        (|p| p.checkpoint_minutes = -1.0, "checkpoint_minutes"),
    ];
    for (change, param) in bad {
        let mut p = Params::default();
        change(&mut p);
        let e = p.check().unwrap_err();
        assert_eq!(e.param, param, "{e}");
        assert!(e.message.starts_with(param), "{e}");
    }
}

/// Data parallelism: a step's micro-batches dealt to two or three devices (here CPU replicas, each
/// on its worker thread) train as one device does with the same `grad_accum`, bit for bit, and a
/// run halted on two devices resumes on one to the same end.
#[test]
fn micro_batches_dealt_to_several_devices_train_as_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let t = tokenizer(dir.path(), &c);
    let p = Params {
        batch_size: 3,
        grad_accum: 3,
        ..tiny()
    };
    let one = ctx(dir.path(), "one", &c, &t);
    let s = train_on(&p, &one, None, &[Device::Cpu]).unwrap();
    assert!(s.steps > 8, "{s:?}");
    // Validated in several batches, which are dealt to the devices too.
    assert!(s.validation_sequences > 2 * p.batch_size, "{s:?}");
    let first_validation = s.steps / 2;
    for devices in [2, 3] {
        let many = ctx(dir.path(), &format!("on{devices}"), &c, &t);
        train_on(&p, &many, None, &vec![Device::Cpu; devices]).unwrap();
        assert_same_model(&one, &many);
    }
    let moved = ctx(dir.path(), "moved", &c, &t);
    train_on(
        &p,
        &moved,
        Some(Halt::Crash(6)),
        &[Device::Cpu, Device::Cpu],
    )
    .unwrap_err();
    let s = train_on(&p, &moved, None, &[Device::Cpu]).unwrap();
    assert_eq!(s.resumed_from, 4);
    assert_same_model(&one, &moved);
    let stopped = ctx(dir.path(), "stopped", &c, &t);
    let err = train_on(
        &p,
        &stopped,
        Some(Halt::StopValidating(first_validation)),
        &vec![Device::Cpu; 3],
    )
    .unwrap_err();
    assert!(err.contains("while validating epoch 1"), "{err}");
    train_on(&p, &stopped, None, &[Device::Cpu, Device::Cpu]).unwrap();
    assert_same_model(&one, &stopped);
    // The replicas take the run's precision and attention.
    let p = Params {
        precision: Precision::Bf16,
        attention: Attention::Flash,
        hidden: 64,
        ..p
    };
    let one = ctx(dir.path(), "one_bf16", &c, &t);
    train_on(&p, &one, None, &[Device::Cpu]).unwrap();
    let two = ctx(dir.path(), "two_bf16", &c, &t);
    train_on(&p, &two, None, &[Device::Cpu, Device::Cpu]).unwrap();
    assert_same_model(&one, &two);
}

/// On a card: a step's micro-batches dealt to two devices (GPUs 0 and 1, or two handles of GPU
/// 0 on a machine with one, each on its own host thread and stream) train as GPU 0 alone does,
/// in bf16 with flash attention, within the card's run-to-run differences.
#[cfg(feature = "cuda")]
#[test]
fn gpu_micro_batches_dealt_to_two_devices_train_as_on_one() {
    use crate::model::device;
    let (Ok(first), Ok(second)) = (
        device::cuda(0),
        device::cuda(1).or_else(|_| device::cuda(0)),
    ) else {
        crate::testing::skipped("data parallel on a GPU: no CUDA GPU");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let t = tokenizer(dir.path(), &c);
    let p = Params {
        batch_size: 3,
        grad_accum: 3,
        precision: Precision::Bf16,
        attention: Attention::Flash,
        hidden: 64,
        heads: 2,
        ..tiny()
    };
    let one = ctx(dir.path(), "one", &c, &t);
    let a = train_on(&p, &one, None, std::slice::from_ref(&first)).unwrap();
    let two = ctx(dir.path(), "two", &c, &t);
    let b = train_on(&p, &two, None, &[first, second]).unwrap();
    assert!(
        (a.final_loss - b.final_loss).abs() < 1e-3 * a.final_loss.abs().max(1.0),
        "final loss {} on one device, {} on two",
        a.final_loss,
        b.final_loss
    );
    crate::testing::assert_weights_close(&one.out, &two.out, 1e-3);
}
