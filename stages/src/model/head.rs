//! The expression head of FloraBERT: mean of the final hidden states over real tokens (padding,
//! `<s>` and `</s>` left out), dropout, dense, tanh, dropout, dense to one output per tissue.
//!
//! Its parameters sit beside the encoder's under HuggingFace's classification-head names
//! (`classifier.dense.*`, `classifier.out_proj.*`); its settings are stored in the model's
//! `config.json` under `flora_head`.

use candle_core::{DType, Device, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::layers::{dropout, randn};
use super::roberta::{Config, Params as Weights};
use super::tokenizer::{BOS, EOS, PAD};
use crate::rng::Rng;

/// How targets were transformed before training (predictions are on that scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// ln(value + offset): for expression tables in TPM.
    Log,
    /// Values taken as they are.
    None,
}

impl Transform {
    /// `v` on this scale.
    pub fn apply(self, v: f64, offset: f64) -> f64 {
        match self {
            Transform::Log => (v + offset).ln(),
            Transform::None => v,
        }
    }
}

/// The head's settings, saved with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// One name per output (tissues).
    pub targets: Vec<String>,
    /// The transform the targets went through.
    pub transform: Transform,
    /// The offset of the `log` transform.
    pub offset: f64,
    /// Dropout before each dense layer.
    pub dropout: f32,
    /// Always `mean`: mean over real tokens.
    pub pooling: String,
    /// The promoter window the training sequences were cut with, when their promoters say
    /// (a ready table does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoter_window: Option<crate::genomics::window::Window>,
}

/// Names and shapes of the head's parameters.
pub fn parameters(hidden: usize, targets: usize) -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("classifier.dense.weight", vec![hidden, hidden]),
        ("classifier.dense.bias", vec![hidden]),
        ("classifier.out_proj.weight", vec![targets, hidden]),
        ("classifier.out_proj.bias", vec![targets]),
    ]
}

/// Adds fresh head parameters to `w`: zero biases, and normal weights with the standard deviation
/// of PyTorch's default `nn.Linear` initialisation, 1/sqrt(3 fan_in). At the paper's width (768)
/// that is 0.0208, HuggingFace's 0.02; at a test model's width of 32 it is 0.10, which LAMB needs:
/// its steps are proportional to a tensor's norm, so a head started at 0.02 grows out of the
/// "predict the mean" plateau only after hundreds of steps.
pub fn init(w: &mut Weights, cfg: &Config, targets: usize, seed: u64, dev: &Device) -> Result<()> {
    let mut rng = Rng::new(seed ^ 0x4EAD);
    for (name, shape) in parameters(cfg.hidden_size, targets) {
        let t = if name.ends_with("bias") {
            Tensor::zeros(shape.as_slice(), DType::F32, dev)?
        } else {
            let std = 1.0 / (3.0 * shape[1] as f32).sqrt();
            randn(&mut rng, &shape, std, dev)?
        };
        w.vars.insert(name.to_string(), Var::from_tensor(&t)?);
    }
    Ok(())
}

/// Starts the output bias at `means` (one per target, e.g. the training rows' means), so that a
/// fresh head predicts the means from the first step. LAMB scales each step to the tensor's
/// norm, so a bias started at zero takes well over a thousand steps (at a fine-tuning learning
/// rate) to grow to the scale of ln TPM, and the model spends that time learning tissue means.
pub fn start_at(w: &Weights, means: &[f32]) -> Result<()> {
    let bias = &w.vars["classifier.out_proj.bias"];
    bias.set(&Tensor::from_slice(means, means.len(), bias.device())?)
}

/// Whether a parameter belongs to the head.
pub fn is_head(name: &str) -> bool {
    name.starts_with("classifier.")
}

/// Mean of `hidden` (batch, len, h) over the real tokens of each row of `ids`: (batch, h).
/// A row with no real token pools to zeros.
pub fn mean_pool(hidden: &Tensor, ids: &[Vec<u32>]) -> Result<Tensor> {
    let (bsz, len, _) = hidden.dims3()?;
    let mut mask = Vec::with_capacity(bsz * len);
    let mut counts = Vec::with_capacity(bsz);
    for row in ids {
        let mut n = 0f32;
        for &t in row {
            let real = t != PAD && t != BOS && t != EOS;
            mask.push(if real { 1f32 } else { 0f32 });
            n += f32::from(u8::from(real));
        }
        counts.push(1.0 / n.max(1.0));
    }
    let dev = hidden.device();
    let mask = Tensor::from_vec(mask, (bsz, len, 1), dev)?;
    let inv = Tensor::from_vec(counts, (bsz, 1), dev)?;
    hidden.broadcast_mul(&mask)?.sum(1)?.broadcast_mul(&inv)
}

/// The head on pooled states (batch, h): (batch, targets). `rng` turns dropout on.
pub fn forward(w: &Weights, pooled: &Tensor, p: f32, mut rng: Option<&mut Rng>) -> Result<Tensor> {
    let get = |name: &str| {
        w.tensor(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("the model has no `{name}`")))
    };
    let x = dropout(pooled, p, rng.as_deref_mut())?;
    let x = x
        .matmul(&get("classifier.dense.weight")?.t()?)?
        .broadcast_add(&get("classifier.dense.bias")?)?
        .tanh()?;
    let x = dropout(&x, p, rng)?;
    x.matmul(&get("classifier.out_proj.weight")?.t()?)?
        .broadcast_add(&get("classifier.out_proj.bias")?)
}

/// Mean squared error over every element.
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    pred.sub(target)?.sqr()?.mean_all()
}

/// The number of outputs of a loaded head.
pub fn outputs(w: &Weights) -> Option<usize> {
    w.vars
        .get("classifier.out_proj.bias")
        .and_then(|v| v.as_tensor().dims().first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pool_ignores_padding_and_specials() {
        let dev = Device::Cpu;
        // Two rows of 4: [pad, <s>, 7, </s>] and [<s>, 8, 9, </s>].
        let ids = vec![vec![PAD, BOS, 7, EOS], vec![BOS, 8, 9, EOS]];
        let hidden = Tensor::from_vec(
            vec![
                100f32, 100., 1., 2., 3., 4., 100., 100., //
                100., 100., 1., 1., 3., 5., 100., 100.,
            ],
            (2, 4, 2),
            &dev,
        )
        .unwrap();
        let pooled: Vec<Vec<f32>> = mean_pool(&hidden, &ids).unwrap().to_vec2().unwrap();
        assert_eq!(pooled, vec![vec![3.0, 4.0], vec![2.0, 3.0]]);
    }
}
