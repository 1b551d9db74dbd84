//! A RoBERTa encoder with a masked-language-model head, in candle, with HuggingFace's parameter
//! names (`roberta.encoder.layer.0.attention.self.query.weight`, `lm_head.dense.weight`, ...) so
//! that a saved model loads in `transformers` as `RobertaForMaskedLM`.
//!
//! Layout follows `transformers/models/roberta/modeling_roberta.py` (v4.x): embeddings (word +
//! position + token type, LayerNorm, dropout); per layer self-attention with a padding mask,
//! output dense + residual + LayerNorm (post-LN), intermediate dense + GELU (erf), output dense +
//! residual + LayerNorm; the MLM head is dense, GELU, LayerNorm and a decoder tied to the word
//! embeddings, plus a bias.
//!
//! Position ids: sequences are left-padded so that they end at the TSS. With `positions: tss`
//! (the default), position ids count from the TSS end: the last real token (`</s>`) is
//! `pad_token_id + 1`, the one before it `+ 2`, and so on, so a base at a given distance from the
//! TSS always has the same position. `positions: roberta` is HuggingFace's scheme, counting from
//! the first real token; the two give the same ids only for sequences that fill `max_len`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::dense::Epilogue;
use super::encoder_layer::{encoder_layer, LayerDropout};
use super::encoder_layer_attached::encoder_attached;
use super::layers::{
    bias_add, dropout_with_seed, gather_rows, layer_norm, matmul, product, randn, seed_device,
};
use super::mlm_positions::MlmPositions;
use super::step_profile::{self, region};
use crate::rng::Rng;

/// How position ids are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// From the TSS (3') end.
    Tss,
    /// HuggingFace RoBERTa: from the first real token.
    Roberta,
}

/// The precision of training's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: bf16 operands for the matrix products, f32 master weights, optimizer
    /// state, normalisation, softmax and loss.
    Bf16,
}

impl Precision {
    /// The matrix products' operand type.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// How the attention of training's attached layers is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    /// Matrix products (cuBLAS on a GPU: q k^T and P v, four more backwards) around one pass for
    /// the softmax and dropout, with the (batch, heads, len, len) scores and probabilities in
    /// memory.
    #[default]
    Products,
    /// Flash attention (`flash_attention.rs`): bf16 only, heads of a multiple of 16 up to 128
    /// elements, on the CPU or a GPU of sm_80 or later; nothing of len x len in memory.
    Flash,
}

impl Attention {
    /// Whether this attention runs with products in `compute`, heads of `head_dim` elements, on
    /// `device`; else why not.
    pub fn check(
        self,
        compute: DType,
        head_dim: usize,
        device: &Device,
    ) -> std::result::Result<(), String> {
        if self == Attention::Products
            || super::flash_attention::supports(device, compute, head_dim)
        {
            return Ok(());
        }
        let products = format!("{compute:?}").to_lowercase();
        Err(format!(
            "flash attention needs precision bf16, heads of a multiple of 16 up to {} elements \
             and the CPU or a GPU of compute capability 8.0 or later; this run has {products} \
             products and heads of {head_dim} on {}",
            super::flash_attention::MAX_HEAD_DIM,
            super::device::name(device)
        ))
    }
}

fn default_positions() -> Positions {
    Positions::Tss
}

/// The model's configuration, read and written as HuggingFace `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward size.
    pub intermediate_size: usize,
    /// Activation (always `gelu`, the erf form).
    pub hidden_act: String,
    /// Dropout after embeddings, attention output and feed-forward.
    pub hidden_dropout_prob: f32,
    /// Dropout on attention probabilities.
    pub attention_probs_dropout_prob: f32,
    /// Position embeddings (max_len + pad_token_id + 1).
    pub max_position_embeddings: usize,
    /// Token types (1).
    pub type_vocab_size: usize,
    /// Std of the initial weights.
    pub initializer_range: f32,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// `<pad>` id (2 in FloraBERT's tokenizers; the original code got it wrong).
    pub pad_token_id: u32,
    /// `<s>` id.
    pub bos_token_id: u32,
    /// `</s>` id.
    pub eos_token_id: u32,
    /// Always `roberta`.
    pub model_type: String,
    /// `["RobertaForMaskedLM"]`.
    pub architectures: Vec<String>,
    /// flora: how position ids are counted.
    #[serde(default = "default_positions")]
    pub flora_positions: Positions,
}

impl Config {
    /// A config for `layers` x `hidden` with `heads` heads, for sequences of `max_len` tokens.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vocab_size: usize,
        layers: usize,
        hidden: usize,
        heads: usize,
        intermediate: usize,
        max_len: usize,
        dropout: f32,
        positions: Positions,
    ) -> Config {
        Config {
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: intermediate,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: dropout,
            attention_probs_dropout_prob: dropout,
            max_position_embeddings: max_len + 3,
            type_vocab_size: 1,
            initializer_range: 0.02,
            layer_norm_eps: 1e-5,
            pad_token_id: super::tokenizer::PAD,
            bos_token_id: super::tokenizer::BOS,
            eos_token_id: super::tokenizer::EOS,
            model_type: "roberta".into(),
            architectures: vec!["RobertaForMaskedLM".into()],
            flora_positions: positions,
        }
    }

    /// Every parameter: HuggingFace name and shape. `lm_head.decoder.weight` is tied to the word
    /// embeddings and not listed.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let mut out = vec![
            (
                "roberta.embeddings.word_embeddings.weight".into(),
                vec![v, h],
            ),
            (
                "roberta.embeddings.position_embeddings.weight".into(),
                vec![self.max_position_embeddings, h],
            ),
            (
                "roberta.embeddings.token_type_embeddings.weight".into(),
                vec![self.type_vocab_size, h],
            ),
            ("roberta.embeddings.LayerNorm.weight".into(), vec![h]),
            ("roberta.embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for l in 0..self.num_hidden_layers {
            let p = format!("roberta.encoder.layer.{l}");
            for (name, shape) in [
                ("attention.self.query.weight", vec![h, h]),
                ("attention.self.query.bias", vec![h]),
                ("attention.self.key.weight", vec![h, h]),
                ("attention.self.key.bias", vec![h]),
                ("attention.self.value.weight", vec![h, h]),
                ("attention.self.value.bias", vec![h]),
                ("attention.output.dense.weight", vec![h, h]),
                ("attention.output.dense.bias", vec![h]),
                ("attention.output.LayerNorm.weight", vec![h]),
                ("attention.output.LayerNorm.bias", vec![h]),
                ("intermediate.dense.weight", vec![i, h]),
                ("intermediate.dense.bias", vec![i]),
                ("output.dense.weight", vec![h, i]),
                ("output.dense.bias", vec![h]),
                ("output.LayerNorm.weight", vec![h]),
                ("output.LayerNorm.bias", vec![h]),
            ] {
                out.push((format!("{p}.{name}"), shape));
            }
        }
        out.extend([
            ("lm_head.dense.weight".into(), vec![h, h]),
            ("lm_head.dense.bias".into(), vec![h]),
            ("lm_head.layer_norm.weight".into(), vec![h]),
            ("lm_head.layer_norm.bias".into(), vec![h]),
            ("lm_head.bias".into(), vec![v]),
        ]);
        out
    }
}

/// Gradients that ops hand in themselves during a backward pass, by parameter name, until
/// [`Params::grads`] collects them: the CPU's encoder-layer op (`encoder_layer.rs`) computes its
/// parameters' gradients itself rather than through candle's graph.
#[derive(Default)]
pub struct GradSink(Mutex<HashMap<String, Tensor>>);

impl GradSink {
    /// Adds `grad` to the gradient of `name`.
    pub fn add(&self, name: &str, grad: Tensor) -> Result<()> {
        let mut grads = self.0.lock().expect("gradient sink");
        let sum = match grads.remove(name) {
            Some(prev) => (prev + grad)?,
            None => grad,
        };
        grads.insert(name.to_string(), sum);
        Ok(())
    }

    /// Every gradient handed in since the last call.
    pub fn take(&self) -> HashMap<String, Tensor> {
        std::mem::take(&mut *self.0.lock().expect("gradient sink"))
    }
}

/// The model's parameters, by HuggingFace name.
pub struct Params {
    /// Trainable variables.
    pub vars: HashMap<String, Var>,
    /// Inference only: computations on these weights record no graph for backpropagation, so a
    /// forward pass keeps no activations alive (the equivalent of PyTorch's `no_grad`).
    pub frozen: bool,
    /// The matrix products' operand type: f32, or bf16 for mixed precision (f32 weights, bf16
    /// products, f32 everywhere else: LayerNorm, softmax, GELU, the loss).
    pub compute: DType,
    /// Gradients computed by ops outside candle's graph, collected by [`Params::grads`].
    pub sink: Arc<GradSink>,
    /// How the attached layers compute attention.
    pub attention: Attention,
}

impl Params {
    /// Fresh parameters as HuggingFace initialises them (normal(0, 0.02) weights, zero biases,
    /// unit LayerNorm, zero padding embedding), from `seed`.
    pub fn init(cfg: &Config, seed: u64, device: &Device) -> Result<Params> {
        let mut rng = Rng::new(seed);
        let mut vars = HashMap::new();
        for (name, shape) in cfg.parameters() {
            let t = if name.contains("LayerNorm.weight") || name.contains("layer_norm.weight") {
                Tensor::ones(shape.as_slice(), DType::F32, device)?
            } else if name.ends_with("bias") {
                Tensor::zeros(shape.as_slice(), DType::F32, device)?
            } else {
                let mut t = randn(&mut rng, &shape, cfg.initializer_range, device)?;
                if name.ends_with("word_embeddings.weight")
                    || name.ends_with("position_embeddings.weight")
                {
                    // The padding row is zero, as nn.Embedding(padding_idx=...) makes it.
                    let pad = cfg.pad_token_id as usize;
                    let rows = t.dim(0)?;
                    let zero = Tensor::zeros((1, shape[1]), DType::F32, device)?;
                    let mut parts = Vec::new();
                    if pad > 0 {
                        parts.push(t.narrow(0, 0, pad)?);
                    }
                    parts.push(zero);
                    if pad + 1 < rows {
                        parts.push(t.narrow(0, pad + 1, rows - pad - 1)?);
                    }
                    t = Tensor::cat(&parts, 0)?;
                }
                t
            };
            vars.insert(name, Var::from_tensor(&t)?);
        }
        Ok(Params::of_vars(vars))
    }

    /// Parameters from tensors (a loaded safetensors file), checking names and shapes.
    pub fn from_tensors(
        cfg: &Config,
        mut tensors: HashMap<String, Tensor>,
    ) -> std::result::Result<Params, String> {
        let mut vars = HashMap::new();
        for (name, shape) in cfg.parameters() {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| format!("the weights have no `{name}`"))?;
            if t.dims() != shape.as_slice() {
                return Err(format!(
                    "`{name}` has shape {:?}, the config wants {shape:?}",
                    t.dims()
                ));
            }
            let t = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
            vars.insert(name, Var::from_tensor(&t).map_err(|e| e.to_string())?);
        }
        // A layer the config does not count would be left out of every forward pass unsaid.
        if let Some(extra) = tensors
            .keys()
            .filter(|n| n.starts_with("roberta.encoder."))
            .min()
        {
            return Err(format!(
                "the weights hold `{extra}`, which a model of num_hidden_layers {} does not have",
                cfg.num_hidden_layers
            ));
        }
        Ok(Params::of_vars(vars))
    }

    /// Weights of `vars`, trainable, in f32 products with products attention until told
    /// otherwise.
    fn of_vars(vars: HashMap<String, Var>) -> Params {
        Params {
            vars,
            frozen: false,
            compute: DType::F32,
            sink: Arc::default(),
            attention: Attention::Products,
        }
    }

    /// Trainable copies of `tensors` (another device's weights, any of them: the encoder's,
    /// the MLM head's, the expression head's) on `dev`, in f32 products with products
    /// attention until told otherwise.
    pub fn copy_on(tensors: &HashMap<String, Tensor>, dev: &Device) -> Result<Params> {
        let mut vars = HashMap::with_capacity(tensors.len());
        for (name, t) in tensors {
            vars.insert(name.clone(), Var::from_tensor(&t.to_device(dev)?)?);
        }
        Ok(Params::of_vars(vars))
    }

    fn get(&self, name: &str) -> Tensor {
        self.tensor(name)
            .unwrap_or_else(|| panic!("parameter {name} exists by construction"))
    }

    /// The parameter `name`, detached from backpropagation when the weights are frozen.
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        let t = self.vars.get(name)?.as_tensor();
        Some(if self.frozen { t.detach() } else { t.clone() })
    }

    /// The gradient of every parameter that has one in `store`, by name.
    /// Ops that compute their parameters' gradients themselves hand them in to [`Params::sink`]
    /// during the backward pass; they are collected (and the sink emptied) here.
    pub fn grads(&self, store: &candle_core::backprop::GradStore) -> HashMap<String, Tensor> {
        let mut grads: HashMap<String, Tensor> = self
            .vars
            .iter()
            .filter_map(|(n, v)| store.get(v.as_tensor()).map(|g| (n.clone(), g.clone())))
            .collect();
        for (name, g) in self.sink.take() {
            let sum = match grads.remove(&name) {
                Some(prev) => (prev + &g).unwrap_or(g),
                None => g,
            };
            grads.insert(name, sum);
        }
        grads
    }

    /// The tensors, by name, for saving.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }
}

fn linear(p: &Params, prefix: &str, x: &Tensor) -> Result<Tensor> {
    linear_then(p, prefix, x, Epilogue::None)
}

/// A dense layer followed by `epilogue`: inside one op for f32 on the CPU (`dense.rs`), as one
/// autograd node over separate ops elsewhere (`dense_attached.rs`).
fn linear_then(p: &Params, prefix: &str, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    let w = p.get(&format!("{prefix}.weight"));
    let b = p.get(&format!("{prefix}.bias"));
    let label = || {
        // The layer's name without its layer number: the same layers of every layer add up.
        let role = match prefix.strip_prefix("roberta.encoder.layer.") {
            Some(rest) => rest.split_once('.').map_or(rest, |(_, role)| role),
            None => prefix,
        };
        epilogue.forward_label(role, x.dims().last().copied().unwrap_or(0), w.dims()[0])
    };
    region(label, || {
        if p.compute == DType::F32 && super::dense::applies(x, &w) {
            return super::dense::dense_then(x, &w, &b, epilogue);
        }
        super::dense_attached::dense_attached(x, &w, &b, epilogue, p.compute)
    })
}

/// A dropout's (rate, seed), the seed drawn from `rng`; none without `rng` or at rate 0.
fn draw_dropout(rate: f32, rng: Option<&mut Rng>) -> Option<(f32, u64)> {
    match rng {
        Some(rng) if rate > 0.0 => Some((rate, rng.next_u64())),
        _ => None,
    }
}

/// Dropout at `rate` after a dense layer, its seed drawn from `rng` (none without `rng`).
fn dropout_after(rate: f32, rng: Option<&mut Rng>) -> Epilogue {
    match draw_dropout(rate, rng) {
        Some((rate, seed)) => Epilogue::Dropout { rate, seed },
        None => Epilogue::None,
    }
}

fn ln(p: &Params, prefix: &str, x: &Tensor, eps: f64) -> Result<Tensor> {
    layer_norm(
        x,
        &p.get(&format!("{prefix}.weight")),
        &p.get(&format!("{prefix}.bias")),
        eps,
    )
}

/// LayerNorm `prefix` of `y + residual`.
fn residual_ln(
    p: &Params,
    prefix: &str,
    y: &Tensor,
    residual: &Tensor,
    cfg: &Config,
) -> Result<Tensor> {
    region(
        || step_profile::RESIDUAL_LAYER_NORM.to_string(),
        || ln(p, prefix, &y.add(residual)?, cfg.layer_norm_eps),
    )
}

/// Position ids for a batch of ids (`positions` scheme), as u32.
pub fn position_ids(ids: &[Vec<u32>], cfg: &Config) -> Vec<u32> {
    let pad = cfg.pad_token_id;
    let mut out = Vec::with_capacity(ids.len() * ids.first().map_or(0, |r| r.len()));
    for row in ids {
        let mut pos = vec![pad; row.len()];
        let mut count = 0;
        match cfg.flora_positions {
            Positions::Roberta => {
                for (i, &t) in row.iter().enumerate() {
                    if t != pad {
                        count += 1;
                        pos[i] = pad + count;
                    }
                }
            }
            Positions::Tss => {
                for (i, &t) in row.iter().enumerate().rev() {
                    if t != pad {
                        count += 1;
                        pos[i] = pad + count;
                    }
                }
            }
        }
        out.extend(pos);
    }
    out
}

/// The embeddings (tokens, hidden) of `ids` at `positions` composed of recorded ops (row
/// gathers, adds, LayerNorm, dropout at `dropout`'s rate and seed): what
/// [`embeddings`](super::embeddings::embeddings) computes as one node, for the tests and
/// `flora bench --ops` to compare it with.
pub(crate) fn embeddings_composed(
    p: &Params,
    cfg: &Config,
    ids: &[u32],
    positions: &[u32],
    dropout: Option<(f32, u64)>,
) -> Result<Tensor> {
    let table = p.get("roberta.embeddings.word_embeddings.weight");
    let ids_t = Tensor::from_slice(ids, ids.len(), table.device())?;
    let pos_t = Tensor::from_slice(positions, positions.len(), table.device())?;
    let word = gather_rows(&table, &ids_t)?;
    let posv = gather_rows(
        &p.get("roberta.embeddings.position_embeddings.weight"),
        &pos_t,
    )?;
    let tt = p
        .get("roberta.embeddings.token_type_embeddings.weight")
        .get(0)?;
    let x = word.add(&posv)?.broadcast_add(&tt)?;
    let x = ln(p, "roberta.embeddings.LayerNorm", &x, cfg.layer_norm_eps)?;
    match dropout {
        Some((rate, seed)) => dropout_with_seed(&x, rate, seed),
        None => Ok(x),
    }
}

/// The encoder's final hidden states (batch, len, hidden) for `ids` (rows of equal length);
/// `rng` turns dropout on. For f32 on the CPU each layer is one op (`encoder_layer.rs`).
pub fn encode(
    p: &Params,
    cfg: &Config,
    ids: &[Vec<u32>],
    rng: Option<&mut Rng>,
    device: &Device,
) -> Result<Tensor> {
    encode_with(p, cfg, ids, rng, device, LayerOps::Fastest)
}

/// How [`encode_with`] runs each encoder layer. Training runs the fastest; the tests compare it
/// with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum LayerOps {
    /// The fastest that applies: one op for f32 on the CPU (`encoder_layer.rs`), elsewhere the
    /// attached layer (`encoder_layer_attached.rs`; one node, or for frozen weights its forward
    /// pass alone).
    Fastest,
    /// The attached layer everywhere, on the CPU in f32 too.
    Attached,
    /// Separate pieces, each its own op or node.
    Pieces,
}

/// The encoder's final hidden states at the labelled positions `at` of `ids` (batch, slots,
/// hidden; `at` groups them by sequence): the last layer runs its queries and all that follows
/// its attention at those positions alone (`mlm_positions.rs`), which gives their rows of
/// [`encode`]'s result for less work. `rng` turns dropout on; the last layer's dropout masks are
/// drawn over its smaller shapes, so with dropout its values are another draw of the same
/// distribution.
pub fn encode_at(
    p: &Params,
    cfg: &Config,
    ids: &[Vec<u32>],
    at: &MlmPositions,
    rng: Option<&mut Rng>,
    device: &Device,
) -> Result<Tensor> {
    encode_layers(p, cfg, ids, rng, device, LayerOps::Fastest, Some(at))
}

/// [`encode`], with each layer's ops chosen by `ops`.
pub(crate) fn encode_with(
    p: &Params,
    cfg: &Config,
    ids: &[Vec<u32>],
    rng: Option<&mut Rng>,
    device: &Device,
    ops: LayerOps,
) -> Result<Tensor> {
    encode_layers(p, cfg, ids, rng, device, ops, None)
}

/// [`encode`] (`at` none) or [`encode_at`], each layer's ops chosen by `ops`.
pub(crate) fn encode_layers(
    p: &Params,
    cfg: &Config,
    ids: &[Vec<u32>],
    mut rng: Option<&mut Rng>,
    device: &Device,
    ops: LayerOps,
    at: Option<&MlmPositions>,
) -> Result<Tensor> {
    let (bsz, len) = (ids.len(), ids[0].len());
    seed_device(device, rng.as_deref_mut())?;
    let flat: Vec<u32> = ids.iter().flatten().copied().collect();
    let mask: Vec<f32> = flat
        .iter()
        .map(|&t| if t == cfg.pad_token_id { 0.0 } else { 1.0 })
        .collect();
    let positions = position_ids(ids, cfg);
    let mut x = region(
        || "forward: embeddings (sum, LayerNorm, dropout)".to_string(),
        || {
            let dropout = draw_dropout(cfg.hidden_dropout_prob, rng.as_deref_mut());
            let x = if ops == LayerOps::Pieces {
                embeddings_composed(p, cfg, &flat, &positions, dropout)?
            } else {
                super::embeddings::embeddings(p, cfg, &flat, &positions, dropout)?
            };
            x.reshape((bsz, len, cfg.hidden_size))
        },
    )?;
    // Additive attention mask over keys: 0 for real tokens, a large negative for padding.
    let key_mask_rows: Vec<f32> = mask.iter().map(|m| (1.0 - m) * -1e9).collect();
    let key_mask = Tensor::from_vec(key_mask_rows.clone(), (bsz, 1, 1, len), device)?;
    let heads = cfg.num_attention_heads;
    let index = at.map(|at| at.index(heads, device)).transpose()?;
    let layers = cfg.num_hidden_layers;
    if layers == 0 {
        // No layer to run at the slots: the embeddings' rows there.
        return match index {
            Some(index) => index.gather(&x),
            None => Ok(x),
        };
    }
    let draw_layer = |rng: &mut Option<&mut Rng>| LayerDropout {
        attention: draw_dropout(cfg.attention_probs_dropout_prob, rng.as_deref_mut()),
        attention_output: draw_dropout(cfg.hidden_dropout_prob, rng.as_deref_mut()),
        output: draw_dropout(cfg.hidden_dropout_prob, rng.as_deref_mut()),
    };
    let attached = match ops {
        LayerOps::Fastest => {
            !super::encoder_layer::applies(&x, p) && super::encoder_layer_attached::applies(&x, p)
        }
        LayerOps::Attached => true,
        LayerOps::Pieces => false,
    };
    if attached {
        let dropouts: Vec<LayerDropout> = (0..layers).map(|_| draw_layer(&mut rng)).collect();
        return encoder_attached(p, cfg, &x, &key_mask, &dropouts, 0, index.as_ref());
    }
    for l in 0..layers {
        if ops == LayerOps::Fastest && super::encoder_layer::applies(&x, p) {
            let dropout = draw_layer(&mut rng);
            if l + 1 == layers && index.is_some() {
                // The CPU's whole-layer op runs every position; the attached layer runs the last
                // one at the slots.
                return encoder_attached(p, cfg, &x, &key_mask, &[dropout], l, index.as_ref());
            }
            x = region(
                || "forward: encoder layer (one op)".to_string(),
                || encoder_layer(p, cfg, l, &x, &key_mask_rows, dropout),
            )?;
            continue;
        }
        let pre = format!("roberta.encoder.layer.{l}");
        let q = linear(p, &format!("{pre}.attention.self.query"), &x)?;
        let k = linear(p, &format!("{pre}.attention.self.key"), &x)?;
        let v = linear(p, &format!("{pre}.attention.self.value"), &x)?;
        let dropout = draw_dropout(cfg.attention_probs_dropout_prob, rng.as_deref_mut());
        let ctx = region(
            || step_profile::ATTENTION.to_string(),
            || {
                if p.compute == DType::F32 && super::attention::applies(&q) {
                    let mask = key_mask_rows.clone();
                    return super::attention::attention(&q, &k, &v, heads, mask, dropout);
                }
                super::attention_attached::attention_attached(
                    &q, &k, &v, heads, &key_mask, dropout, p.compute,
                )
            },
        )?;
        let attn = linear_then(
            p,
            &format!("{pre}.attention.output.dense"),
            &ctx,
            dropout_after(cfg.hidden_dropout_prob, rng.as_deref_mut()),
        )?;
        let x1 = residual_ln(
            p,
            &format!("{pre}.attention.output.LayerNorm"),
            &attn,
            &x,
            cfg,
        )?;
        let inter = linear_then(p, &format!("{pre}.intermediate.dense"), &x1, Epilogue::Gelu)?;
        let out = linear_then(
            p,
            &format!("{pre}.output.dense"),
            &inter,
            dropout_after(cfg.hidden_dropout_prob, rng.as_deref_mut()),
        )?;
        x = residual_ln(p, &format!("{pre}.output.LayerNorm"), &out, &x1, cfg)?;
    }
    match index {
        // Separate pieces run every position, and then keep the slots' rows (what the tests
        // compare the other paths with).
        Some(index) => index.gather(&x),
        None => Ok(x),
    }
}

/// The MLM head's transform of hidden states (..., hidden): dense, GELU, LayerNorm.
fn mlm_transform(p: &Params, cfg: &Config, hidden: &Tensor) -> Result<Tensor> {
    let h = linear_then(p, "lm_head.dense", hidden, Epilogue::Gelu)?;
    ln(p, "lm_head.layer_norm", &h, cfg.layer_norm_eps)
}

/// MLM logits (batch, len, vocab) from hidden states.
pub fn mlm_logits(p: &Params, cfg: &Config, hidden: &Tensor) -> Result<Tensor> {
    let h = mlm_transform(p, cfg, hidden)?;
    let (bsz, len, hs) = h.dims3()?;
    let emb = p.get("roberta.embeddings.word_embeddings.weight");
    bias_add(
        &matmul(&h.reshape((bsz * len, hs))?, &emb.t()?, p.compute)?,
        &p.get("lm_head.bias"),
    )?
    .reshape((bsz, len, cfg.vocab_size))
}

/// The MLM loss: mean cross-entropy over the positions whose label is not `-1`; how many of them
/// the argmax got right, as a scalar f32 tensor on the model's device (read it after the backward
/// pass, so that a GPU step does not wait on it halfway); and how many positions were labelled.
/// `labels` has one entry per position (batch * len). The head runs on those positions alone (15%
/// of the tokens in pretraining), which gives the loss of running it on every position and keeping
/// those, for less work. The decoder's product stays in the products' type, and the loss reads it
/// with the bias in one op (`mlm_loss.rs`).
pub fn mlm_loss(
    p: &Params,
    cfg: &Config,
    hidden: &Tensor,
    labels: &[i64],
) -> Result<(Tensor, Tensor, usize)> {
    let (bsz, len, hs) = hidden.dims3()?;
    if labels.len() != bsz * len {
        candle_core::bail!(
            "flora-mlm-loss: {} labels for hidden states of {bsz} x {len} positions",
            labels.len()
        );
    }
    let device = hidden.device();
    let (picked, targets): (Vec<u32>, Vec<u32>) = labels
        .iter()
        .enumerate()
        .filter(|(_, l)| **l >= 0)
        .map(|(i, &l)| (i as u32, l as u32))
        .unzip();
    let n = picked.len();
    if n == 0 {
        let zero = Tensor::new(0f32, device)?;
        return Ok((zero.clone(), zero, 0));
    }
    let rows = gather_rows(
        &hidden.reshape((bsz * len, hs))?,
        &Tensor::from_vec(picked, n, device)?,
    )?
    .reshape((1, n, hs))?;
    let h = mlm_transform(p, cfg, &rows)?.reshape((n, hs))?;
    let emb = p.get("roberta.embeddings.word_embeddings.weight");
    let decoder = super::mlm_loss::decoder_weight(&emb, p.compute)?;
    let logits = region(
        || step_profile::MLM_DECODER.to_string(),
        || product(&h.to_dtype(p.compute)?, &decoder.t()?),
    )?;
    let (loss, correct) = region(
        || step_profile::MLM_LOSS.to_string(),
        || super::mlm_loss::cross_entropy(&logits, &p.get("lm_head.bias"), &targets),
    )?;
    Ok((loss, correct, n))
}
