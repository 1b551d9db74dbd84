//! A fine-tuned FloraBERT model folder, loaded for use: predictions per tissue and mean-pooled
//! embeddings of promoter sequences, in batches.
//!
//! The folder is HuggingFace-style: `config.json` (the RoBERTa config plus `flora_head`,
//! `num_labels`, `id2label` and `problem_type: regression`), `model.safetensors` (encoder, MLM
//! head and `classifier.*`) and `tokenizer.json`.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use super::head::{self, HeadConfig};
use super::model_config;
use super::roberta::{self, Config, Params as Weights};
use super::tokenizer::{self, PAD};

/// A model with an expression head, ready to predict.
pub struct Predictor {
    /// The encoder's config.
    pub cfg: Config,
    /// The head's settings (targets, transform); `None` for a pretrained model without one,
    /// which can embed but not predict.
    pub head: Option<HeadConfig>,
    /// Every parameter.
    pub weights: Weights,
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// Where the tensors live.
    pub device: Device,
    /// Sequences per forward pass.
    pub batch_size: usize,
}

/// What a prediction run saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded {
    /// One row of ids per sequence (framed, left-padded).
    pub rows: Vec<Vec<u32>>,
    /// Sequences whose 5' end was cut to fit.
    pub truncated: usize,
}

impl Predictor {
    /// Loads a model folder: fine-tuned (with `flora_head`), or pretrained (embeddings only).
    /// `config.json` and `model.safetensors` are each read once.
    pub fn load(dir: &Path, device: Device) -> Result<Predictor, String> {
        let config = dir.join("config.json");
        let (cfg, value) = model_config::read(dir)?;
        let head: Option<HeadConfig> = match value.get("flora_head") {
            Some(v) => Some(
                serde_json::from_value(v.clone())
                    .map_err(|e| format!("{}: flora_head: {e}", config.display()))?,
            ),
            None => None,
        };
        let weights_file = dir.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&weights_file, &device)
            .map_err(|e| format!("{}: {e}", weights_file.display()))?;
        let mut head_vars = Vec::new();
        if let Some(head_cfg) = &head {
            for (name, shape) in head::parameters(cfg.hidden_size, head_cfg.targets.len()) {
                let t = tensors
                    .remove(name)
                    .ok_or_else(|| format!("{}: the weights have no `{name}`", dir.display()))?;
                if t.dims() != shape.as_slice() {
                    return Err(format!(
                        "{}: `{name}` has shape {:?}, expected {shape:?}",
                        dir.display(),
                        t.dims()
                    ));
                }
                let var = candle_core::Var::from_tensor(&t).map_err(|e| e.to_string())?;
                head_vars.push((name.to_string(), var));
            }
        }
        let mut weights = Weights::from_tensors(&cfg, tensors)
            .map_err(|e| format!("{}: {e}", weights_file.display()))?;
        weights.vars.extend(head_vars);
        weights.frozen = true;
        let tokenizer_file = dir.join("tokenizer.json");
        let tokenizer = tokenizer::load(&tokenizer_file).map_err(|e| e.to_string())?;
        model_config::check_tokenizer(&cfg, &tokenizer)
            .map_err(|e| format!("{}: {e}", tokenizer_file.display()))?;
        Ok(Predictor {
            cfg,
            head,
            weights,
            tokenizer,
            device,
            batch_size: 32,
        })
    }

    /// The longest row the model reads, specials and padding included.
    pub fn max_len(&self) -> usize {
        self.cfg.max_position_embeddings - 3
    }

    /// Tokenizes and frames sequences (upper-cased first).
    pub fn encode(&self, seqs: &[&[u8]]) -> Result<Encoded, String> {
        let mut out = Encoded::default();
        for s in seqs {
            let text = String::from_utf8_lossy(s).to_ascii_uppercase();
            let ids = tokenizer::tokens(&self.tokenizer, &text).map_err(|e| e.to_string())?;
            let (row, cut) = tokenizer::frame(&ids, self.max_len());
            out.truncated += usize::from(cut > 0);
            out.rows.push(row);
        }
        Ok(out)
    }

    /// The head's settings, or an error saying the model has none.
    pub fn head(&self) -> Result<&HeadConfig, String> {
        self.head.as_ref().ok_or_else(|| {
            "this is a pretrained model without an expression head: fine-tune it first (kind: finetune)".to_string()
        })
    }

    /// Predictions (one value per target) for each row, in batches.
    pub fn predict(&self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, String> {
        self.head()?;
        self.batched(rows, |pooled| {
            head::forward(&self.weights, pooled, 0.0, None)
        })
    }

    /// Mean-pooled final hidden states of each row.
    pub fn embed(&self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, String> {
        self.batched(rows, |pooled| Ok(pooled.clone()))
    }

    fn batched(
        &self,
        rows: &[Vec<u32>],
        then: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Vec<Vec<f32>>, String> {
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(self.batch_size.max(1)) {
            let run = || then(&pooled(&self.weights, &self.cfg, chunk, &self.device)?)?.to_vec2();
            out.extend(run().map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
}

/// The mean-pooled final hidden states (batch, hidden) of a batch of framed rows, without
/// dropout; columns that are padding in every row are dropped first.
pub fn pooled(
    w: &Weights,
    cfg: &Config,
    rows: &[Vec<u32>],
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let ids = trim_padding(rows);
    let hidden = roberta::encode(w, cfg, &ids, None, dev)?;
    head::mean_pool(&hidden, &ids)
}

/// Drops the columns that are padding in every row. Rows are left-padded and position ids count
/// from the real tokens, so this changes no output, only the work.
pub fn trim_padding<R: AsRef<[u32]>>(rows: &[R]) -> Vec<Vec<u32>> {
    trimmed(rows).into_iter().map(<[u32]>::to_vec).collect()
}

/// The padding at the start of a left-padded row.
pub fn leading_padding(row: &[u32]) -> usize {
    row.iter().take_while(|&&t| t == PAD).count()
}

/// [`trim_padding`] as views into the rows, for callers that copy them anyway.
pub fn trimmed<R: AsRef<[u32]>>(rows: &[R]) -> Vec<&[u32]> {
    let lead = rows
        .iter()
        .map(|r| leading_padding(r.as_ref()))
        .min()
        .unwrap_or(0);
    rows.iter().map(|r| &r.as_ref()[lead..]).collect()
}

/// Writes a model folder with its head: config.json (with `flora_head`), weights, tokenizer.
pub fn save(
    dir: &Path,
    cfg: &Config,
    head_cfg: &HeadConfig,
    w: &Weights,
    tok: &Tokenizer,
) -> Result<(), String> {
    let mut value = serde_json::to_value(cfg).expect("config serializes");
    let map = value.as_object_mut().expect("config is an object");
    map.insert(
        "flora_head".into(),
        serde_json::to_value(head_cfg).expect("head serializes"),
    );
    map.insert("num_labels".into(), head_cfg.targets.len().into());
    map.insert(
        "id2label".into(),
        head_cfg
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (i.to_string(), serde_json::Value::from(t.as_str())))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    map.insert(
        "label2id".into(),
        head_cfg
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), serde_json::Value::from(i)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    map.insert("problem_type".into(), "regression".into());
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&value).expect("serializes"),
    )
    .map_err(|e| format!("{}: {e}", dir.join("config.json").display()))?;
    candle_core::safetensors::save(&w.tensors(), dir.join("model.safetensors"))
        .map_err(|e| e.to_string())?;
    tok.save(dir.join("tokenizer.json"), true)
        .map_err(|e| e.to_string())
}
