//! The positions the MLM loss reads, and the encoder's last layer run at those positions alone.
//!
//! Only the labelled positions (15% of the real tokens in pretraining) reach the loss. In the last
//! layer every position still gives its key and value, but only the labelled ones need a query,
//! and all that follows the attention (the output dense layer, the residual sums and their
//! LayerNorms, the feed-forward) works row by row. Run on the labelled rows alone, the last layer
//! gives the same hidden states there for about a fifth of its work. Attention reads a sequence's
//! own keys, so the positions are grouped by sequence and each group is padded to the largest:
//! (batch, slots) queries, a padding slot repeating position 0 with no label.

use candle_core::{Device, Result, Tensor};

/// The labelled positions of a batch, grouped by sequence into `slots` per sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlmPositions {
    batch: usize,
    len: usize,
    slots: usize,
    positions: Vec<u32>,
    labels: Vec<i64>,
}

impl MlmPositions {
    /// The positions of `labels` (one per token of `batch` sequences of `len`, in order; `-1`
    /// where a token has none) that carry a label.
    pub fn from_labels(labels: &[i64], batch: usize, len: usize) -> Result<MlmPositions> {
        if labels.len() != batch * len {
            candle_core::bail!(
                "flora-mlm-positions: {} labels for {batch} sequences of {len} tokens",
                labels.len()
            );
        }
        let picked: Vec<Vec<(u32, i64)>> = labels
            .chunks(len.max(1))
            .map(|row| {
                row.iter()
                    .enumerate()
                    .filter(|(_, l)| **l >= 0)
                    .map(|(i, &l)| (i as u32, l))
                    .collect()
            })
            .collect();
        // At least one slot, so that a batch without labels still has a shape.
        let slots = picked.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let (mut positions, mut slot_labels) = (
            Vec::with_capacity(batch * slots),
            Vec::with_capacity(batch * slots),
        );
        for row in &picked {
            for s in 0..slots {
                let (position, label) = row.get(s).copied().unwrap_or((0, -1));
                positions.push(position);
                slot_labels.push(label);
            }
        }
        Ok(MlmPositions {
            batch,
            len,
            slots,
            positions,
            labels: slot_labels,
        })
    }

    /// Slots per sequence: the most labelled positions of any sequence (at least 1).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// One label per slot (batch x slots, by sequence): the token, or `-1` for a padding slot.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// Each slot's position within its sequence (batch x slots).
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    /// The row indices that move activations between all positions and the slots, on `device`,
    /// for attention over `heads` heads.
    pub(crate) fn index(&self, heads: usize, device: &Device) -> Result<SlotIndex> {
        let (batch, len, slots) = (self.batch, self.len, self.slots);
        // Per sequence b and slot s, the row b x len + position of (batch x len) rows.
        let rows: Vec<u32> = (0..batch * slots)
            .map(|i| ((i / slots) * len) as u32 + self.positions[i])
            .collect();
        // Per full row, the slot that holds it, or the zero row past the slots. A padding slot
        // holds nothing: its row's gradient is zero, and a real slot may hold the same row.
        let back = |groups: usize, group_slots: &dyn Fn(usize) -> usize| {
            let mut back = vec![(groups * slots) as u32; groups * len];
            for g in 0..groups {
                let b = group_slots(g);
                for s in 0..slots {
                    if self.labels[b * slots + s] >= 0 {
                        back[g * len + self.positions[b * slots + s] as usize] =
                            (g * slots + s) as u32;
                    }
                }
            }
            back
        };
        let rows_back = back(batch, &|g| g);
        // The same over (batch x heads) groups of a sequence's heads.
        let head_rows: Vec<u32> = (0..batch * heads * slots)
            .map(|i| {
                let (g, s) = (i / slots, i % slots);
                (g * len) as u32 + self.positions[(g / heads) * slots + s]
            })
            .collect();
        let head_rows_back = back(batch * heads, &|g| g / heads);
        let upload = |v: Vec<u32>| {
            let n = v.len();
            Tensor::from_vec(v, n, device)
        };
        Ok(SlotIndex {
            batch,
            len,
            slots,
            rows: upload(rows)?,
            rows_back: upload(rows_back)?,
            head_rows: upload(head_rows)?,
            head_rows_back: upload(head_rows_back)?,
        })
    }
}

/// [`MlmPositions`]' rows on a device: activations gathered at the slots and gradients scattered
/// back, both as row gathers (a scatter gathers from the slots and a zero row after them).
#[derive(Clone)]
pub(crate) struct SlotIndex {
    batch: usize,
    len: usize,
    slots: usize,
    rows: Tensor,
    rows_back: Tensor,
    head_rows: Tensor,
    head_rows_back: Tensor,
}

impl SlotIndex {
    /// The rows of `x` (batch, len, n) at the slots: (batch, slots, n).
    pub fn gather(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(2)?;
        gather(x, &self.rows, n)?.reshape((self.batch, self.slots, n))
    }

    /// The gradient of [`SlotIndex::gather`]'s input from its output's `g` (batch, slots, n):
    /// (batch, len, n), zero at the positions no slot holds.
    pub fn scatter(&self, g: &Tensor) -> Result<Tensor> {
        let n = g.dim(2)?;
        scatter(g, &self.rows_back, n)?.reshape((self.batch, self.len, n))
    }

    /// The queries of `q` (batch, heads, len, head) at the slots: (batch, heads, slots, head).
    pub fn gather_heads(&self, q: &Tensor) -> Result<Tensor> {
        let (batch, heads, _, hd) = q.dims4()?;
        gather(q, &self.head_rows, hd)?.reshape((batch, heads, self.slots, hd))
    }

    /// The gradient of [`SlotIndex::gather_heads`]' input from its output's `g`.
    pub fn scatter_heads(&self, g: &Tensor) -> Result<Tensor> {
        let (batch, heads, _, hd) = g.dims4()?;
        scatter(g, &self.head_rows_back, hd)?.reshape((batch, heads, self.len, hd))
    }
}

/// Rows `ids` of `t` taken as rows of `n`.
fn gather(t: &Tensor, ids: &Tensor, n: usize) -> Result<Tensor> {
    let rows = t.elem_count() / n.max(1);
    t.contiguous()?.reshape((rows, n))?.index_select(ids, 0)
}

/// Rows `back` of `g` (taken as rows of `n`) with a row of zeros after them.
fn scatter(g: &Tensor, back: &Tensor, n: usize) -> Result<Tensor> {
    let rows = g.elem_count() / n.max(1);
    let g = g.contiguous()?.reshape((rows, n))?;
    let zero = Tensor::zeros((1, n), g.dtype(), g.device())?;
    Tensor::cat(&[&g, &zero], 0)?.index_select(back, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn positions_are_grouped_by_sequence_and_padded_to_the_largest_group() {
        let labels = [
            -1, 7, -1, 9, /* */ -1, -1, -1, -1, /* */ 4, -1, -1, -1,
        ];
        let at = MlmPositions::from_labels(&labels, 3, 4).unwrap();
        assert_eq!(at.slots(), 2);
        assert_eq!(at.positions(), &[1, 3, 0, 0, 0, 0]);
        assert_eq!(at.labels(), &[7, 9, -1, -1, 4, -1]);
        let none = MlmPositions::from_labels(&[-1; 6], 2, 3).unwrap();
        assert_eq!((none.slots(), none.labels()), (1, &[-1i64, -1][..]));
    }

    #[test]
    fn labels_that_do_not_fill_the_batch_are_named() {
        let e = MlmPositions::from_labels(&[1, 2, 3], 2, 2).unwrap_err();
        assert!(
            e.to_string()
                .contains("3 labels for 2 sequences of 2 tokens"),
            "{e}"
        );
    }

    /// `t`'s elements as f32, in order.
    fn values(t: &Tensor) -> Vec<f32> {
        let t = t.to_dtype(DType::F32).unwrap();
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// 0, 1, 2, ... in `shape` and `dtype`.
    fn counting(shape: &[usize], dtype: DType) -> Tensor {
        let n = shape.iter().product::<usize>() as f32;
        let t = Tensor::arange(0f32, n, &Device::Cpu).unwrap();
        t.reshape(shape).unwrap().to_dtype(dtype).unwrap()
    }

    /// Rows gathered at the slots and scattered back: each labelled row where it was, zeros
    /// elsewhere, a padding slot's row (position 0, also a real slot of the second sequence) not
    /// added twice; the same through the heads layout, for f32 and bf16.
    #[test]
    fn gathered_rows_scatter_back_to_their_positions() {
        let labels = [7, -1, 5, /* */ 3, -1, -1];
        let at = MlmPositions::from_labels(&labels, 2, 3).unwrap();
        let index = at.index(2, &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let g = index.gather(&counting(&[2, 3, 2], dtype)).unwrap();
            // Sequence 0: positions 0 and 2; sequence 1: position 0, then padding (position 0).
            assert_eq!(values(&g), [0., 1., 4., 5., 6., 7., 6., 7.]);
            let back = index.scatter(&g).unwrap();
            assert_eq!(
                values(&back),
                [0., 1., 0., 0., 4., 5., 6., 7., 0., 0., 0., 0.]
            );
            // Heads: (batch 2, heads 2, len 3, head 1).
            let qs = index.gather_heads(&counting(&[2, 2, 3, 1], dtype)).unwrap();
            assert_eq!(qs.dims(), &[2, 2, 2, 1]);
            assert_eq!(values(&qs), [0., 2., 3., 5., 6., 6., 9., 9.]);
            let back = index.scatter_heads(&qs).unwrap();
            assert_eq!(
                values(&back),
                [0., 0., 2., 3., 0., 5., 6., 0., 0., 9., 0., 0.]
            );
        }
    }
}
