//! The order in which pretraining visits its training sequences, epoch by epoch: a seeded
//! shuffle, optionally grouped by length so that a batch wastes little on padding.

use crate::rng::Rng;

/// Steps' worth of sequences sorted together when grouping by length (HuggingFace's
/// `LengthGroupedSampler` sorts 50 batches' worth).
pub(super) const GROUP_STEPS: usize = 50;

/// Sorts sequence indices by their `lengths`, longest first; a stable sort, so equal lengths keep
/// their order (a shuffle's, for the epoch order).
pub(super) fn longest_first(indices: &mut [usize], lengths: &[u32]) {
    indices.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
}

/// The training sequences' order in each epoch, a shuffle seeded by the run's seed and the
/// epoch, drawn when an epoch is first asked for and kept for its steps.
pub(super) struct EpochOrder<'a> {
    train: &'a [usize],
    seed: u64,
    /// When grouping by length: each sequence's length, and the sequences per step.
    grouping: Option<(&'a [u32], usize)>,
    drawn: Option<(usize, Vec<usize>)>,
}

impl<'a> EpochOrder<'a> {
    pub(super) fn new(train: &'a [usize], seed: u64, grouping: Option<(&'a [u32], usize)>) -> Self {
        EpochOrder {
            train,
            seed,
            grouping,
            drawn: None,
        }
    }

    /// Epoch `epoch`'s order.
    pub(super) fn of(&mut self, epoch: usize) -> &[usize] {
        if self.drawn.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut order = self.train.to_vec();
            Rng::new(self.seed ^ (epoch as u64).wrapping_mul(0xE7037ED1A0B428DB))
                .shuffle(&mut order);
            if let Some((lengths, per_step)) = self.grouping {
                for block in order.chunks_mut(per_step.max(1) * GROUP_STEPS) {
                    longest_first(block, lengths);
                }
            }
            self.drawn = Some((epoch, order));
        }
        &self.drawn.as_ref().expect("drawn above").1
    }
}
