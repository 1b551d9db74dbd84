//! Flash attention in bf16: the attention of q, k and v split into heads, with the key mask and
//! dropout, without the (batch, heads, len, len) scores and probabilities in memory. On a CUDA
//! GPU (sm_80 and later) it is `kernels.cu`'s `flash_attention_*` kernels on tensor cores; on the
//! CPU their twins below, which the kernel emulator's tests compare them with and which let the
//! model's tests run the flash path end to end without a GPU.
//!
//! The forward pass keeps each query's log-sum-exp instead of its probabilities; the backward
//! pass recomputes them a tile at a time. Its results match `attention_attached.rs`'s products
//! path (the same dropout mask, drawn over the flat (batch, heads, query, key) index) up to bf16
//! rounding: that path rounds the scores to bf16 before the softmax, this one keeps them in f32.
//!
//! One op each way, each with one result, so the forward pass packs the context (batch, len,
//! heads x head_dim) with each query's log-sum-exp after it (its f32 bits as two bf16 words) and,
//! with dropout, the mask it drew (a bit per probability, which the backward pass reads rather
//! than drawing it again); the backward pass writes dq, dk and dv as one (3, batch, heads, len,
//! head_dim) tensor, the heads layout that `qkv::qkv_merge` reads.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::fused::elems;
use super::gpu_ops::keep;

/// The largest head size the kernels take (their registers are sized for it).
pub const MAX_HEAD_DIM: usize = 128;

/// The sizes of one attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    /// Sequences.
    pub batch: usize,
    /// Heads per sequence.
    pub heads: usize,
    /// Positions per sequence: queries and keys.
    pub len: usize,
    /// Elements per head.
    pub head_dim: usize,
}

impl Dims {
    /// Elements of q (or k, v, the context): batch x heads x len x head_dim.
    pub fn elements(&self) -> usize {
        self.batch * self.heads * self.len * self.head_dim
    }

    /// Query rows over all heads: batch x heads x len.
    pub fn rows(&self) -> usize {
        self.batch * self.heads * self.len
    }

    /// Tiles of [`KEY_TILE`] keys in a row.
    pub fn key_tiles(&self) -> usize {
        self.len.div_ceil(KEY_TILE)
    }

    /// Where the dropout mask's words start in the packed result, in bf16 words: after the
    /// log-sum-exps, at the next multiple of four (8 bytes).
    pub fn keep_offset(&self) -> usize {
        self.packed(false).next_multiple_of(4)
    }

    /// 16-bit words of the dropout mask: four per row and tile of keys.
    pub fn keep_words(&self) -> usize {
        4 * self.rows() * self.key_tiles()
    }

    /// Elements of the forward pass's packed result: the context, then two words per row, then
    /// with `dropout` one 64-bit mask word (four bf16 words) per row and tile of keys.
    pub fn packed(&self, dropout: bool) -> usize {
        let lses_end = self.elements() + 2 * self.rows();
        if dropout {
            lses_end.next_multiple_of(4) + self.keep_words()
        } else {
            lses_end
        }
    }
}

/// Keys per tile of the dropout mask (four 16-bit words): `kernels.cu`'s FLASH_KEYS.
pub const KEY_TILE: usize = 64;

/// Where key `j` of a tile is in its four mask words taken as one 64-bit word: `kernels.cu`'s
/// `keep_bit`, the order in which the kernels' lanes hold the keys (word t has bit 2 n + e for key
/// 8 n + 2 t + e).
fn keep_bit(j: usize) -> usize {
    16 * ((j % 8) / 2) + 2 * (j / 8) + j % 2
}

/// Whether flash attention takes heads of `head_dim` in `dtype` on `device`: bf16, a head size
/// that is a multiple of 16 up to [`MAX_HEAD_DIM`], and the CPU or a CUDA GPU with bf16 tensor
/// cores (sm_80 and later).
pub fn supports(device: &Device, dtype: DType, head_dim: usize) -> bool {
    takes_dtype(dtype)
        && takes_heads_of(head_dim)
        && match device {
            Device::Cpu => true,
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => super::gpu_kernels::compute_capability(dev)
                .map(|(major, _)| major >= 8)
                .unwrap_or(false),
            _ => false,
        }
}

/// Whether the kernels take operands of `dtype`: bf16 alone (tensor-core products).
pub fn takes_dtype(dtype: DType) -> bool {
    dtype == DType::BF16
}

/// Whether the kernels take heads of `head_dim` elements: a multiple of 16 up to
/// [`MAX_HEAD_DIM`].
fn takes_heads_of(head_dim: usize) -> bool {
    head_dim.is_multiple_of(16) && (16..=MAX_HEAD_DIM).contains(&head_dim)
}

/// The forward pass's results.
pub struct FlashForward {
    /// The context, (batch, len, heads x head_dim), bf16.
    pub context: Tensor,
    /// The packed result that [`flash_attention_backward`] reads: the context and each query's
    /// log-sum-exp.
    pub saved: Tensor,
}

/// Attention of `q`, `k` and `v` (each (batch, heads, len, head_dim), bf16) with the additive key
/// mask `key_mask` ((batch, 1, 1, len) or (batch, len), f32), the scores scaled by `scale` and
/// dropout at (rate, seed) on the probabilities.
pub fn flash_attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &Tensor,
    scale: f32,
    dropout: Option<(f32, u64)>,
) -> Result<FlashForward> {
    let dims = checked_dims("flora-flash-attention", q, k, v, key_mask)?;
    let op = Forward {
        dims,
        key_mask: key_mask.flatten_all()?.contiguous()?,
        scale,
        dropout: active(dropout),
    };
    let saved = aligned(q)?.apply_op3_no_bwd(&aligned(k)?, &aligned(v)?, &op)?;
    let hidden = dims.heads * dims.head_dim;
    let context = saved
        .narrow(0, 0, dims.elements())?
        .reshape((dims.batch, dims.len, hidden))?;
    Ok(FlashForward { context, saved })
}

/// The gradients (dq, dk, dv), each (batch, heads, len, head_dim) bf16, of
/// [`flash_attention_forward`] from the same inputs, its `saved` result and the context's
/// gradient `dcontext` ((batch, len, heads x head_dim), f32 or bf16).
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    saved: &Tensor,
    dcontext: &Tensor,
    key_mask: &Tensor,
    scale: f32,
    dropout: Option<(f32, u64)>,
) -> Result<[Tensor; 3]> {
    const OP: &str = "flora-flash-attention-grad";
    let dims = checked_dims(OP, q, k, v, key_mask)?;
    let hidden = dims.heads * dims.head_dim;
    let dropout = active(dropout);
    let packed = dims.packed(dropout.is_some());
    if dcontext.dims() != [dims.batch, dims.len, hidden] || saved.dims() != [packed] {
        candle_core::bail!(
            "{OP}: a context gradient of {:?} and a saved forward pass of {:?} for {dims:?}",
            dcontext.dims(),
            saved.dims()
        );
    }
    let op = Backward {
        dims,
        saved: aligned(saved)?,
        dcontext: aligned(&dcontext.to_dtype(DType::BF16)?)?,
        key_mask: key_mask.flatten_all()?.contiguous()?,
        scale,
        rate: dropout.map_or(0.0, |(p, _)| p),
    };
    let grads = aligned(q)?.apply_op3_no_bwd(&aligned(k)?, &aligned(v)?, &op)?;
    Ok([grads.get(0)?, grads.get(1)?, grads.get(2)?])
}

/// Dropout at a rate above 0, else none.
fn active(dropout: Option<(f32, u64)>) -> Option<(f32, u64)> {
    dropout.filter(|(p, _)| *p > 0.0)
}

/// The sizes of q, k and v, which must agree, be bf16 and have a head size the kernels take,
/// with a mask of one f32 per key; else an error naming `op` and the shapes.
fn checked_dims(op: &str, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Dims> {
    let (batch, heads, len, head_dim) = q.dims4()?;
    let dims = Dims {
        batch,
        heads,
        len,
        head_dim,
    };
    let agree = k.dims() == q.dims() && v.dims() == q.dims();
    let typed = [q, k, v].iter().all(|t| t.dtype() == DType::BF16);
    if !agree || !typed {
        candle_core::bail!(
            "{op}: q {:?} {:?}, k {:?} {:?} and v {:?} {:?} are not bf16 heads of one shape",
            q.dims(),
            q.dtype(),
            k.dims(),
            k.dtype(),
            v.dims(),
            v.dtype()
        );
    }
    if batch * heads > u16::MAX as usize {
        candle_core::bail!(
            "{op}: {batch} sequences of {heads} heads; the kernels take at most {} in one call",
            u16::MAX
        );
    }
    if !takes_heads_of(head_dim) {
        candle_core::bail!(
            "{op}: heads of {head_dim} elements; flash attention takes multiples of 16 up to \
             {MAX_HEAD_DIM}"
        );
    }
    if mask.elem_count() != batch * len || mask.dtype() != DType::F32 {
        candle_core::bail!(
            "{op}: a key mask of {:?} {:?} for {batch} sequences of {len}",
            mask.dims(),
            mask.dtype()
        );
    }
    Ok(dims)
}

/// `t` contiguous and starting on a 16-byte boundary of its storage (eight bf16), as the kernels'
/// 16-byte loads need: `t` itself where it is, else a copy.
fn aligned(t: &Tensor) -> Result<Tensor> {
    let start = t.layout().start_offset();
    if t.is_contiguous() && start.is_multiple_of(8) {
        Ok(t.clone())
    } else {
        t.contiguous()?.copy()
    }
}

/// The forward pass's scores of query `i` of one head: q_i . k_j x scale + mask_j.
fn scores(q: &[f32], k: &[f32], mask: &[f32], d: usize, i: usize, scale: f32) -> Vec<f32> {
    let qi = &q[i * d..(i + 1) * d];
    k.chunks(d)
        .zip(mask)
        .map(|(kj, m)| qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale + m)
        .collect()
}

/// One head's elements as f32, and the head's key mask.
struct Head {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    mask: Vec<f32>,
}

impl Head {
    /// Head `bh` (sequence bh / heads) of q, k and v in the heads layout.
    fn of(q: &[bf16], k: &[bf16], v: &[bf16], mask: &[f32], d: Dims, bh: usize) -> Head {
        let size = d.len * d.head_dim;
        let widen = |x: &[bf16]| {
            x[bh * size..(bh + 1) * size]
                .iter()
                .map(|v| v.to_f32())
                .collect()
        };
        let b = bh / d.heads;
        Head {
            q: widen(q),
            k: widen(k),
            v: widen(v),
            mask: mask[b * d.len..(b + 1) * d.len].to_vec(),
        }
    }
}

/// `x` through inverted dropout at `rate` where the mask `keep`s it, else 0.
fn through(keep: bool, x: f32, rate: f32) -> f32 {
    if keep {
        x / (1.0 - rate)
    } else {
        0.0
    }
}

/// The flat (batch x heads, query, key) index of the dropout draw of query `i`, key `j`.
fn draw(d: Dims, bh: usize, i: usize, j: usize) -> u64 {
    ((bh * d.len + i) * d.len + j) as u64
}

/// `flash_attention_fwd_bf16`'s CPU twin: the packed context, log-sum-exps and, with dropout, the
/// mask's words.
pub(crate) fn forward_cpu(
    [q, k, v]: [&[bf16]; 3],
    mask: &[f32],
    d: Dims,
    scale: f32,
    dropout: Option<(f32, u64)>,
) -> Vec<bf16> {
    let hd = d.head_dim;
    // The mask first, as the kernels draw it, and read as they read it.
    let keeps = dropout.map(|(p, seed)| mask_words(d, p, seed));
    let rate = dropout.map_or(0.0, |(p, _)| p);
    let heads: Vec<(Vec<f32>, Vec<f32>)> = (0..d.batch * d.heads)
        .into_par_iter()
        .map(|bh| {
            let h = Head::of(q, k, v, mask, d, bh);
            let mut out = vec![0f32; d.len * hd];
            let mut lse = vec![0f32; d.len];
            for i in 0..d.len {
                let s = scores(&h.q, &h.k, &h.mask, hd, i, scale);
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let shift = if max == f32::NEG_INFINITY { 0.0 } else { max };
                let e: Vec<f32> = s.iter().map(|x| (x - shift).exp()).collect();
                let sum: f32 = e.iter().sum();
                let oi = &mut out[i * hd..(i + 1) * hd];
                for (j, (ej, vj)) in e.iter().zip(h.v.chunks(hd)).enumerate() {
                    let keep = kept_in(keeps.as_deref(), d, bh * d.len + i, j);
                    let kept = bf16::from_f32(through(keep, *ej, rate)).to_f32();
                    oi.iter_mut().zip(vj).for_each(|(o, x)| *o += kept * x);
                }
                let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                oi.iter_mut().for_each(|o| *o *= inv);
                lse[i] = if sum > 0.0 {
                    shift + sum.ln()
                } else {
                    f32::INFINITY
                };
            }
            (out, lse)
        })
        .collect();
    let mut packed = vec![bf16::ZERO; d.packed(dropout.is_some())];
    let hidden = d.heads * hd;
    for (bh, (out, lse)) in heads.iter().enumerate() {
        let (b, h) = (bh / d.heads, bh % d.heads);
        for i in 0..d.len {
            let at = (b * d.len + i) * hidden + h * hd;
            for (x, o) in packed[at..at + hd].iter_mut().zip(&out[i * hd..]) {
                *x = bf16::from_f32(*o);
            }
            let bits = lse[i].to_bits();
            let row = bh * d.len + i;
            packed[d.elements() + 2 * row] = bf16::from_bits((bits & 0xffff) as u16);
            packed[d.elements() + 2 * row + 1] = bf16::from_bits((bits >> 16) as u16);
        }
    }
    if let Some(keeps) = keeps {
        packed[d.keep_offset()..].copy_from_slice(&keeps);
    }
    packed
}

/// `flash_dropout_mask`'s CPU twin: dropout's mask at `p` under `seed`, [`Dims::keep_words`]
/// words of the packed result's layout (keys past the last not kept).
fn mask_words(d: Dims, p: f32, seed: u64) -> Vec<bf16> {
    let mut words = vec![bf16::ZERO; d.keep_words()];
    for (row, tiles) in words.chunks_mut(4 * d.key_tiles()).enumerate() {
        let (bh, i) = (row / d.len, row % d.len);
        for (tile, parts) in tiles.chunks_mut(4).enumerate() {
            let keys = tile * KEY_TILE..((tile + 1) * KEY_TILE).min(d.len);
            let word = keys
                .filter(|&j| keep(seed, draw(d, bh, i, j), p))
                .fold(0u64, |w, j| w | 1 << keep_bit(j % KEY_TILE));
            for (x, part) in parts.iter_mut().zip(0..) {
                *x = bf16::from_bits((word >> (16 * part)) as u16);
            }
        }
    }
    words
}

/// Whether dropout kept the probability of key `j` for query `row` (of all heads' rows): its bit
/// of the mask words `keeps`; every one without dropout (`None`).
fn kept_in(keeps: Option<&[bf16]>, d: Dims, row: usize, j: usize) -> bool {
    let Some(keeps) = keeps else { return true };
    let at = 4 * (row * d.key_tiles() + j / KEY_TILE);
    let bit = keep_bit(j % KEY_TILE);
    keeps[at + bit / 16].to_bits() >> (bit % 16) & 1 == 1
}

/// Query `row`'s log-sum-exp (of all heads' rows) from the forward pass's packed result.
fn lse_of(saved: &[bf16], d: Dims, row: usize) -> f32 {
    let at = d.elements() + 2 * row;
    let bits = saved[at].to_bits() as u32 | ((saved[at + 1].to_bits() as u32) << 16);
    f32::from_bits(bits)
}

/// `flash_attention_dq_bf16`'s and `flash_attention_dkv_bf16`'s CPU twin: dq, dk and dv, one
/// after another in the heads layout, from the packed forward result (with dropout at `rate`, its
/// mask) and the context's gradient (batch, len, hidden).
pub(crate) fn backward_cpu(
    [q, k, v]: [&[bf16]; 3],
    saved: &[bf16],
    dcontext: &[bf16],
    mask: &[f32],
    d: Dims,
    scale: f32,
    rate: f32,
) -> Vec<bf16> {
    let (hd, len) = (d.head_dim, d.len);
    let hidden = d.heads * hd;
    let keeps = (rate > 0.0).then(|| &saved[d.keep_offset()..]);
    let grads: Vec<[Vec<f32>; 3]> = (0..d.batch * d.heads)
        .into_par_iter()
        .map(|bh| {
            let h = Head::of(q, k, v, mask, d, bh);
            let (b, head) = (bh / d.heads, bh % d.heads);
            let row = |x: &[bf16], i: usize| -> Vec<f32> {
                let at = (b * len + i) * hidden + head * hd;
                x[at..at + hd].iter().map(|v| v.to_f32()).collect()
            };
            let (mut dq, mut dk, mut dv) = (
                vec![0f32; len * hd],
                vec![0f32; len * hd],
                vec![0f32; len * hd],
            );
            for i in 0..len {
                let (gi, oi) = (row(dcontext, i), row(saved, i));
                let delta: f32 = gi.iter().zip(&oi).map(|(a, b)| a * b).sum();
                let lse = lse_of(saved, d, bh * len + i);
                let s = scores(&h.q, &h.k, &h.mask, hd, i, scale);
                for j in 0..len {
                    let vj = &h.v[j * hd..(j + 1) * hd];
                    let dp: f32 = gi.iter().zip(vj).map(|(a, b)| a * b).sum();
                    let y = (s[j] - lse).exp();
                    let keep = kept_in(keeps, d, bh * len + i, j);
                    let ds = bf16::from_f32(scale * y * (through(keep, dp, rate) - delta)).to_f32();
                    let kept = bf16::from_f32(through(keep, y, rate)).to_f32();
                    for c in 0..hd {
                        dq[i * hd + c] += ds * h.k[j * hd + c];
                        dk[j * hd + c] += ds * h.q[i * hd + c];
                        dv[j * hd + c] += kept * gi[c];
                    }
                }
            }
            [dq, dk, dv]
        })
        .collect();
    let n = d.elements();
    let size = len * hd;
    let mut out = vec![bf16::ZERO; 3 * n];
    for (bh, g) in grads.iter().enumerate() {
        for (which, x) in g.iter().enumerate() {
            let at = which * n + bh * size;
            for (o, v) in out[at..at + size].iter_mut().zip(x) {
                *o = bf16::from_f32(*v);
            }
        }
    }
    out
}

/// The forward op: (q, k, v) to the packed context and log-sum-exps.
struct Forward {
    dims: Dims,
    key_mask: Tensor,
    scale: f32,
    dropout: Option<(f32, u64)>,
}

/// The backward op: (q, k, v) to (3, batch, heads, len, head_dim) gradients.
struct Backward {
    dims: Dims,
    saved: Tensor,
    dcontext: Tensor,
    key_mask: Tensor,
    scale: f32,
    /// Dropout's rate (0: none); its mask is in `saved`.
    rate: f32,
}

/// The elements of a tensor held by an op, on the CPU, as `T`.
fn held<T: candle_core::WithDType>(t: &Tensor, op: &str) -> Result<Vec<T>> {
    let (guard, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*guard else {
        candle_core::bail!("{op}: an input is not on the CPU")
    };
    Ok(elems::<T>(s, layout, op)?.to_vec())
}

/// q, k and v's elements on the CPU.
fn bf16_inputs<'a>(
    [(s1, l1), (s2, l2), (s3, l3)]: [(&'a CpuStorage, &Layout); 3],
    op: &str,
) -> Result<[&'a [bf16]; 3]> {
    Ok([
        elems::<bf16>(s1, l1, op)?,
        elems::<bf16>(s2, l2, op)?,
        elems::<bf16>(s3, l3, op)?,
    ])
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "flora-flash-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let qkv = bf16_inputs([(s1, l1), (s2, l2), (s3, l3)], op)?;
        let mask = held::<f32>(&self.key_mask, op)?;
        let packed = forward_cpu(qkv, &mask, self.dims, self.scale, self.dropout);
        let shape = Shape::from(self.dims.packed(self.dropout.is_some()));
        Ok((CpuStorage::BF16(packed), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::flash_attention_cuda::forward(
            [(s1, l1), (s2, l2), (s3, l3)],
            &self.key_mask,
            self.dims,
            self.scale,
            self.dropout,
        )
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "flora-flash-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let qkv = bf16_inputs([(s1, l1), (s2, l2), (s3, l3)], op)?;
        let saved = held::<bf16>(&self.saved, op)?;
        let dcontext = held::<bf16>(&self.dcontext, op)?;
        let mask = held::<f32>(&self.key_mask, op)?;
        let d = self.dims;
        let grads = backward_cpu(qkv, &saved, &dcontext, &mask, d, self.scale, self.rate);
        let shape = Shape::from((3, d.batch, d.heads, d.len, d.head_dim));
        Ok((CpuStorage::BF16(grads), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::flash_attention_cuda::backward(
            [(s1, l1), (s2, l2), (s3, l3)],
            [&self.saved, &self.dcontext, &self.key_mask],
            self.dims,
            self.scale,
            self.rate,
        )
    }
}

/// The inputs of `kernels.cu`'s `mma_fragments_probe` and the product it must give: a and b
/// (16 x 16, row-major), b transposed, and a b, of small multiples of 1/4 whose sums f32 holds
/// exactly.
#[cfg(test)]
pub(crate) fn mma_probe_inputs() -> (Vec<bf16>, Vec<bf16>, Vec<bf16>, Vec<f32>) {
    let value = |i: usize, salt: usize| ((i * 7 + salt * 13) % 9) as f32 / 4.0 - 1.0;
    let a: Vec<f32> = (0..256).map(|i| value(i, 1)).collect();
    let b: Vec<f32> = (0..256).map(|i| value(i, 2)).collect();
    let bt: Vec<f32> = (0..256).map(|i| b[(i % 16) * 16 + i / 16]).collect();
    let c: Vec<f32> = (0..256)
        .map(|i| {
            (0..16)
                .map(|k| a[(i / 16) * 16 + k] * b[k * 16 + i % 16])
                .sum()
        })
        .collect();
    let to = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
    (to(&a), to(&b), to(&bt), c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention_attached::attention_heads_forward;
    use crate::model::roberta::Attention;
    use crate::testing::max_rel_diff;

    fn heads(dims: Dims, seed: u64) -> Tensor {
        let (b, h, l, d) = (dims.batch, dims.heads, dims.len, dims.head_dim);
        crate::testing::random_var(&[b, h, l, d], 1.0, seed)
            .as_tensor()
            .to_dtype(DType::BF16)
            .unwrap()
    }

    /// A key mask whose second sequence's last three keys are padding (-1e9, as the model's).
    pub(crate) fn padded_mask(batch: usize, len: usize) -> Tensor {
        let mask: Vec<f32> = (0..batch * len)
            .map(|i| {
                if i / len == 1 && i % len >= len - 3 {
                    -1e9
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(mask, (batch, 1, 1, len), &Device::Cpu).unwrap()
    }

    /// Flash attention against the products path (`attention_heads_forward`) in bf16, forward
    /// and backward, with and without dropout.
    #[test]
    fn flash_attention_matches_the_products_path_forward_and_backward() {
        let dims = Dims {
            batch: 2,
            heads: 2,
            len: 37,
            head_dim: 32,
        };
        let (q, k, v) = (heads(dims, 1), heads(dims, 2), heads(dims, 3));
        let mask = padded_mask(dims.batch, dims.len);
        let hidden = dims.heads * dims.head_dim;
        let grad = crate::testing::random_var(&[dims.batch, dims.len, hidden], 1.0, 4)
            .as_tensor()
            .to_dtype(DType::BF16)
            .unwrap();
        let scale = 1.0 / (dims.head_dim as f32).sqrt();
        for dropout in [None, Some((0.2, 9))] {
            let ours = flash_attention_forward(&q, &k, &v, &mask, scale, dropout).unwrap();
            let qkv = [&q, &k, &v];
            let (theirs, backward) =
                attention_heads_forward(qkv, &mask, dropout, DType::BF16, Attention::Products)
                    .unwrap();
            let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let d = max_rel_diff(&f32_of(&ours.context), &f32_of(&theirs));
            assert!(d < 2e-2, "{dropout:?}: contexts differ by {d}");
            let g_ours =
                flash_attention_backward(&q, &k, &v, &ours.saved, &grad, &mask, scale, dropout)
                    .unwrap();
            let g_theirs = backward(&grad).unwrap();
            for (name, a, b) in [("q", 0, 0), ("k", 1, 1), ("v", 2, 2)] {
                let d = max_rel_diff(&f32_of(&g_ours[a]), &f32_of(&g_theirs[b]));
                assert!(d < 3e-2, "{dropout:?}: d{name} differs by {d}");
            }
        }
    }

    #[test]
    fn padded_keys_get_no_attention() {
        let dims = Dims {
            batch: 2,
            heads: 1,
            len: 9,
            head_dim: 16,
        };
        let (q, k) = (heads(dims, 5), heads(dims, 6));
        let mask = padded_mask(dims.batch, dims.len);
        // v is 1 at the padding keys of sequence 2, else 0: its context must stay 0.
        let v: Vec<f32> = (0..dims.elements())
            .map(|i| if i / 16 >= 9 + 6 { 1.0 } else { 0.0 })
            .collect();
        let v = Tensor::from_vec(v, (2, 1, 9, 16), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let out = flash_attention_forward(&q, &k, &v, &mask, 0.25, None).unwrap();
        let context = out.context.to_dtype(DType::F32).unwrap();
        let second = context.get(1).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(second.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn shapes_and_head_sizes_it_cannot_take_are_refused() {
        let dims = Dims {
            batch: 1,
            heads: 2,
            len: 5,
            head_dim: 8,
        };
        let q = heads(dims, 1);
        let mask = padded_mask(1, 5);
        let err = flash_attention_forward(&q, &q, &q, &mask, 1.0, None)
            .err()
            .expect("a head of 8 is refused")
            .to_string();
        assert!(err.contains("heads of 8 elements"), "{err}");
        let wide = Dims {
            head_dim: 16,
            ..dims
        };
        let (q, k) = (heads(wide, 1), heads(Dims { len: 6, ..wide }, 2));
        let err = flash_attention_forward(&q, &k, &k, &mask, 1.0, None)
            .err()
            .expect("k of another length is refused")
            .to_string();
        assert!(err.contains("not bf16 heads of one shape"), "{err}");
        let q32 = q.to_dtype(DType::F32).unwrap();
        assert!(flash_attention_forward(&q32, &q32, &q32, &mask, 1.0, None).is_err());
        let err = flash_attention_forward(&q, &q, &q, &padded_mask(2, 5), 1.0, None)
            .err()
            .expect("a mask for two sequences is refused")
            .to_string();
        assert!(err.contains("a key mask of [2, 1, 1, 5]"), "{err}");
        assert!(!supports(&Device::Cpu, DType::F32, 64));
        assert!(!supports(&Device::Cpu, DType::BF16, 8));
        assert!(!supports(&Device::Cpu, DType::BF16, 144));
        assert!(supports(&Device::Cpu, DType::BF16, 128));
    }
}
