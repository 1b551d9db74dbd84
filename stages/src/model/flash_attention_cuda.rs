//! The CUDA side of `flash_attention.rs`: `kernels.cu`'s `flash_dropout_mask` (with dropout) and
//! `flash_attention_fwd_bf16`, then `flash_attention_dq_bf16` and `flash_attention_dkv_bf16`
//! backwards.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::{CudaStorage, Layout, Result, Shape, Tensor};
use half::bf16;

use super::flash_attention::Dims;
use super::gpu_kernels::{config, launch, output, typed, uninit, view};
use super::launch_shapes::{elementwise, flash_tiles};

/// A storage and its layout.
type Input<'a> = (&'a CudaStorage, &'a Layout);

/// The CUDA storage of a tensor that an op holds, and its layout.
fn held<'a>(
    guard: &'a (impl std::ops::Deref<Target = candle_core::Storage> + 'a),
    op: &str,
) -> Result<&'a CudaStorage> {
    match &**guard {
        candle_core::Storage::Cuda(s) => Ok(s),
        _ => candle_core::bail!("{op}: an input is not on the GPU"),
    }
}

/// q, k and v as bf16 views.
fn bf16_views<'a>(
    [(qs, ql), (ks, kl), (vs, vl)]: [Input<'a>; 3],
    op: &str,
) -> Result<[CudaView<'a, bf16>; 3]> {
    Ok([
        typed::<bf16>(qs, ql, op)?,
        typed::<bf16>(ks, kl, op)?,
        typed::<bf16>(vs, vl, op)?,
    ])
}

/// The packed context and log-sum-exps of q, k and v.
pub fn forward(
    [(qs, ql), (ks, kl), (vs, vl)]: [Input<'_>; 3],
    key_mask: &Tensor,
    d: Dims,
    scale: f32,
    dropout: Option<(f32, u64)>,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "flora-flash-attention";
    let dev = qs.device();
    let [q, k, v] = bf16_views([(qs, ql), (ks, kl), (vs, vl)], OP)?;
    let (mask_guard, mask_layout) = key_mask.storage_and_layout();
    let mask = view(held(&mask_guard, OP)?, mask_layout, OP)?;
    let mut out = uninit::<bf16>(dev, d.packed(dropout.is_some()))?;
    let (p, seed) = dropout.unwrap_or((0.0, 0));
    let (heads, len, hd) = (d.heads as i32, d.len as i32, d.head_dim as i32);
    if dropout.is_some() {
        // Dropout's mask first, into the packed result, for all three kernels to read.
        let bhs = (d.batch * d.heads) as i32;
        launch!(
            dev,
            "flash_dropout_mask",
            config(elementwise(d.keep_words())),
            &mut out,
            &bhs,
            &len,
            &hd,
            &p,
            &seed
        )?;
    }
    launch!(
        dev,
        "flash_attention_fwd_bf16",
        config(flash_tiles(d.len, d.batch * d.heads)),
        &q,
        &k,
        &v,
        &mask,
        &mut out,
        &heads,
        &len,
        &hd,
        &scale,
        &p
    )?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(d.packed(dropout.is_some())),
    ))
}

/// dq, dk and dv as one (3, batch, heads, len, head_dim) bf16 tensor, from q, k, v and the
/// held tensors: the forward pass's packed result (with dropout at `rate`, its mask), the
/// context's gradient and the key mask.
pub fn backward(
    [(qs, ql), (ks, kl), (vs, vl)]: [Input<'_>; 3],
    [saved, dcontext, key_mask]: [&Tensor; 3],
    d: Dims,
    scale: f32,
    rate: f32,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "flora-flash-attention-grad";
    let dev = qs.device();
    let [q, k, v] = bf16_views([(qs, ql), (ks, kl), (vs, vl)], OP)?;
    let (saved_guard, saved_layout) = saved.storage_and_layout();
    let fwd = typed::<bf16>(held(&saved_guard, OP)?, saved_layout, OP)?;
    let (grad_guard, grad_layout) = dcontext.storage_and_layout();
    let dout = typed::<bf16>(held(&grad_guard, OP)?, grad_layout, OP)?;
    let (mask_guard, mask_layout) = key_mask.storage_and_layout();
    let mask = view(held(&mask_guard, OP)?, mask_layout, OP)?;
    // Each query's delta, written by the dq kernel for the dk and dv kernel.
    let mut delta = output(dev, d.rows())?;
    let mut grads = uninit::<bf16>(dev, 3 * d.elements())?;
    let (heads, len, hd) = (d.heads as i32, d.len as i32, d.head_dim as i32);
    let shape = config(flash_tiles(d.len, d.batch * d.heads));
    launch!(
        dev,
        "flash_attention_dq_bf16",
        shape,
        &q,
        &k,
        &v,
        &fwd,
        &dout,
        &mask,
        &mut delta,
        &mut grads,
        &heads,
        &len,
        &hd,
        &scale,
        &rate
    )?;
    launch!(
        dev,
        "flash_attention_dkv_bf16",
        shape,
        &q,
        &k,
        &v,
        &fwd,
        &dout,
        &mask,
        &delta,
        &mut grads,
        &heads,
        &len,
        &hd,
        &scale,
        &rate
    )?;
    let shape = Shape::from((3, d.batch, d.heads, d.len, d.head_dim));
    Ok((CudaStorage::wrap_cuda_slice(grads, dev.clone()), shape))
}

/// `mma_fragments_probe` on `dev`: a (16 x 16) times b (16 x 16, and transposed as bt) three ways,
/// each 16 x 16 f32 (see the kernel).
#[cfg(test)]
pub(crate) fn probe_fragments(
    dev: &candle_core::CudaDevice,
    a: &[bf16],
    b: &[bf16],
    bt: &[bf16],
) -> Result<Vec<f32>> {
    let (a, b, bt) = (dev.clone_htod(a)?, dev.clone_htod(b)?, dev.clone_htod(bt)?);
    let mut c = output(dev, 3 * 256)?;
    let shape = super::launch_shapes::LaunchShape {
        grid: [1, 1, 1],
        block: [32, 1, 1],
    };
    launch!(
        dev,
        "mma_fragments_probe",
        config(shape),
        &a,
        &b,
        &bt,
        &mut c
    )?;
    dev.clone_dtoh(&c)
}
