//! The least memory an MLM training step of a model can take, to refuse one that cannot fit
//! before it starts (on the CPU an allocation that fails aborts the process, and one the kernel
//! overcommits gets it killed later; a GPU reports its own out-of-memory error).
//!
//! The count is a floor, not an estimate: only tensors a step surely holds at once are in it,
//! so a step it refuses could not have run. Against the peak RSS of `flora bench --steps 1` on the
//! paper's model (6 x 768; 2-core CPU, `/usr/bin/time`): 8 x 256 tokens in f32, a floor of
//! 0.77 GiB and a peak of 1.38 GiB; in bf16, 0.67 and 1.44 GiB; 8 x 1,024 tokens in f32, 2.20
//! and 4.07 GiB.

use candle_core::Device;

use super::roberta::{Attention, Config, Precision};
use super::throughput::MASKED_SHARE;
use crate::memory;

/// What a training step holds at least, in bytes, by what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFloor {
    /// The f32 gradients of the weights and the optimizer's two moments: 12 bytes a parameter
    /// (the weights themselves may be loaded already, and so counted out of what is available).
    pub parameters: u64,
    /// The attention probabilities of every layer but the last (which may run at the masked
    /// positions alone), kept for the backward pass; none with flash attention.
    pub attention: u64,
    /// Every layer's other activations kept for the backward pass: the feed-forward's input to
    /// GELU and the layer's f32 output.
    pub activations: u64,
    /// The MLM decoder's logits over the vocabulary at the masked positions (pretraining's).
    pub logits: u64,
}

impl StepFloor {
    /// The floor of a step of `cfg` on `batch` sequences of `len` tokens.
    pub fn of(
        cfg: &Config,
        batch: usize,
        len: usize,
        precision: Precision,
        attention: Attention,
    ) -> StepFloor {
        let (h, i, v) = (
            cfg.hidden_size as u64,
            cfg.intermediate_size as u64,
            cfg.vocab_size as u64,
        );
        let layers = cfg.num_hidden_layers as u64;
        let (b, n) = (batch as u64, len as u64);
        let element = precision.dtype().size_in_bytes() as u64;
        let matrices = v * h
            + cfg.max_position_embeddings as u64 * h
            + layers * (4 * h * h + 2 * h * i)
            + h * h;
        let probabilities = match attention {
            Attention::Products => b * cfg.num_attention_heads as u64 * n * n * element,
            Attention::Flash => 0,
        };
        let masked = (MASKED_SHARE * (b * n) as f64) as u64;
        StepFloor {
            parameters: 12 * matrices,
            attention: layers.saturating_sub(1) * probabilities,
            activations: layers * b * n * (i * element + h * 4),
            logits: masked * v * 4,
        }
    }

    /// All of it.
    pub fn total(&self) -> u64 {
        self.parameters + self.attention + self.activations + self.logits
    }

    /// Refuses the step on the CPU when its floor is more than the memory this process can
    /// still take ([`memory::available`]), with both figures and what the floor is made of.
    /// A GPU, or a host whose memory is unknown, passes.
    pub fn check(&self, device: &Device) -> Result<(), String> {
        if !device.is_cpu() {
            return Ok(());
        }
        match memory::available() {
            Some(free) if self.total() > free => Err(self.too_big(free)),
            _ => Ok(()),
        }
    }

    /// The message for a step that needs more than `free` bytes.
    fn too_big(&self, free: u64) -> String {
        format!(
            "a training step needs at least {} of memory (attention probabilities {}, other \
             activations {}, gradients and optimizer state {}, logits {}), and \
             {} is available",
            memory::human(self.total()),
            memory::human(self.attention),
            memory::human(self.activations),
            memory::human(self.parameters),
            memory::human(self.logits),
            memory::human(free)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::roberta::Positions;

    fn papers() -> Config {
        Config::new(5005, 6, 768, 6, 3072, 256, 0.1, Positions::Tss)
    }

    #[test]
    fn the_papers_step_counts_by_hand() {
        let f = StepFloor::of(&papers(), 8, 256, Precision::F32, Attention::Products);
        // 5,005 + 259 position rows of 768, six layers of 4 x 768² + 2 x 768 x 3072, the head's
        // dense 768²: 47,099,904 weights.
        assert_eq!(f.parameters, 12 * 47_099_904);
        // Five layers' probabilities (the last runs at the masked positions): 8 x 6 x 256² x 4.
        assert_eq!(f.attention, 5 * 12_582_912);
        assert_eq!(f.activations, 6 * 8 * 256 * (3072 * 4 + 768 * 4));
        assert_eq!(f.logits, 307 * 5005 * 4);
        let bf16 = StepFloor::of(&papers(), 8, 256, Precision::Bf16, Attention::Products);
        assert_eq!(bf16.attention * 2, f.attention);
        let flash = StepFloor::of(&papers(), 8, 256, Precision::Bf16, Attention::Flash);
        assert_eq!(flash.attention, 0);
    }

    #[test]
    fn a_step_that_cannot_fit_is_refused_with_its_sizes() {
        let f = StepFloor::of(&papers(), 8, 100_000, Precision::F32, Attention::Products);
        let e = f.too_big(20 << 30);
        assert!(e.contains("needs at least 8.8 TiB"), "{e}");
        assert!(e.contains("attention probabilities 8.7 TiB"), "{e}");
        assert!(e.contains("and 20.0 GiB is available"), "{e}");
        if memory::available().is_some() {
            assert!(f.check(&Device::Cpu).is_err());
        }
        let small = StepFloor::of(&papers(), 8, 256, Precision::F32, Attention::Products);
        assert!(small.check(&Device::Cpu).is_ok(), "{small:?}");
    }
}
