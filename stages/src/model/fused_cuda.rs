//! The CUDA side of the fused custom ops in `fused.rs` and `gpu_ops.rs`: each function takes the
//! ops' storages and layouts and launches `kernels.cu` (through `gpu_kernels.rs`). Inputs are
//! contiguous f32 (u32 for ids), as the ops' CPU sides require.

use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, DType, Layout, Result, Shape};

use super::fused::{last_dim, GradTo};
use super::gpu_kernels::{
    chunks, column_chunks, column_sums, config, elementwise, launch, output, per_row, result,
    sum_chunks, typed, uninit, view,
};
use super::launch_shapes::{element_groups, rows_by_column_groups, rows_by_columns, warp_per_row};

/// GELU (erf form).
pub fn gelu(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let x = view(s, l, "flora-gelu")?;
    let len = l.shape().elem_count();
    let mut y = output(dev, len)?;
    let len_u = len as u64;
    launch!(dev, "gelu_fwd", elementwise(len), &x, &mut y, &len_u)?;
    Ok(result(dev, y, l.shape().clone()))
}

/// g GELU'(x).
pub fn gelu_grad(
    xs: &CudaStorage,
    xl: &Layout,
    gs: &CudaStorage,
    gl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = xs.device();
    let x = view(xs, xl, "flora-gelu-grad")?;
    let g = view(gs, gl, "flora-gelu-grad")?;
    let len = xl.shape().elem_count();
    let mut dx = output(dev, len)?;
    let len_u = len as u64;
    launch!(dev, "gelu_bwd", elementwise(len), &x, &g, &mut dx, &len_u)?;
    Ok(result(dev, dx, xl.shape().clone()))
}

/// Softmax over the last dimension.
pub fn softmax(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let x = view(s, l, "flora-softmax")?;
    let (len, n) = (l.shape().elem_count(), last_dim(l));
    let mut y = output(dev, len)?;
    let n_i = n as i32;
    launch!(dev, "softmax_fwd", per_row(len / n, n), &x, &mut y, &n_i)?;
    Ok(result(dev, y, l.shape().clone()))
}

/// Softmax's input gradient from its output and the output's gradient.
pub fn softmax_grad(
    ys: &CudaStorage,
    yl: &Layout,
    gs: &CudaStorage,
    gl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = ys.device();
    let y = view(ys, yl, "flora-softmax-grad")?;
    let g = view(gs, gl, "flora-softmax-grad")?;
    let (len, n) = (yl.shape().elem_count(), last_dim(yl));
    let mut dx = output(dev, len)?;
    let n_i = n as i32;
    launch!(
        dev,
        "softmax_bwd",
        per_row(len / n, n),
        &y,
        &g,
        &mut dx,
        &n_i
    )?;
    Ok(result(dev, dx, yl.shape().clone()))
}

/// LayerNorm over the last dimension.
pub fn layer_norm(inputs: [(&CudaStorage, &Layout); 3], eps: f64) -> Result<(CudaStorage, Shape)> {
    let [(xs, xl), (ws, wl), (bs, bl)] = inputs;
    let dev = xs.device();
    let x = view(xs, xl, "flora-layer-norm")?;
    let w = view(ws, wl, "flora-layer-norm")?;
    let b = view(bs, bl, "flora-layer-norm")?;
    let (len, n) = (xl.shape().elem_count(), last_dim(xl));
    let rows = len / n;
    let mut y = output(dev, len)?;
    let (rows_i, n_i, eps) = (rows as i32, n as i32, eps as f32);
    launch!(
        dev,
        "ln_fwd",
        config(warp_per_row(rows)),
        &x,
        &w,
        &b,
        &mut y,
        &rows_i,
        &n_i,
        &eps
    )?;
    Ok(result(dev, y, xl.shape().clone()))
}

/// LayerNorm's gradients packed in one vector: dx (the input's elements), then dw and db; the
/// output's gradient is g plus `extra` (f32 or bf16) where there is one. With `to`, also dx
/// through `to`'s dropout in its type, written by the same pass (`ln_bwd_rows_at`), as a second
/// storage.
pub fn layer_norm_grad(
    inputs: [(&CudaStorage, &Layout); 3],
    eps: f64,
    extra: Option<(&CudaStorage, &Layout)>,
    to: Option<GradTo>,
) -> Result<((CudaStorage, Shape), Option<CudaStorage>)> {
    const OP: &str = "flora-layer-norm-grad";
    let [(xs, xl), (ws, wl), (gs, gl)] = inputs;
    let dev = xs.device();
    let x = view(xs, xl, OP)?;
    let w = view(ws, wl, OP)?;
    let g = view(gs, gl, OP)?;
    let (len, n) = (xl.shape().elem_count(), last_dim(xl));
    let rows = len / n;
    let mut packed = output(dev, len + 2 * n)?;
    let mut stats = output(dev, 2 * rows)?;
    let (n_i, rows_i, eps) = (n as i32, rows as i32, eps as f32);
    let (per, count) = chunks(rows);
    let mut partial = output(dev, count * 2 * n)?;
    let per_i = per as i32;
    let (row_cfg, col_cfg) = (config(warp_per_row(rows)), column_chunks(n, count));
    let extra_bf16 = extra.map(|(es, _)| es.dtype() == DType::BF16);
    if let (Some(to), Some(bf16)) = (to, extra_bf16) {
        if bf16 != (to.dtype == DType::BF16) {
            candle_core::bail!(
                "{OP}: a second gradient of the products' type, {:?}, for the dense layer's",
                to.dtype
            );
        }
    }
    let mut dz_f32 = None;
    let mut dz_bf16 = None;
    // The rows kernel (with or without the second gradient, which follows g, and the dense
    // layer's gradient, which follows the stats), then the columns kernel.
    macro_rules! launch_rows {
        ($name:expr $(, $extra:expr)?) => {{
            launch!(
                dev, $name, row_cfg, &x, &w, &g, $($extra,)? &mut packed, &mut stats, &rows_i,
                &n_i, &eps
            )?;
        }};
    }
    macro_rules! launch_rows_to {
        ($name:expr, $dz:expr, $to:expr $(, $extra:expr)?) => {{
            launch!(
                dev, $name, row_cfg, &x, &w, &g, $($extra,)? &mut packed, &mut stats, $dz,
                &rows_i, &n_i, &eps, &$to.p, &$to.seed
            )?;
        }};
    }
    macro_rules! launch_cols {
        ($name:expr $(, $extra:expr)?) => {{
            launch!(
                dev, $name, col_cfg, &x, &g, $($extra,)? &stats, &mut partial, &rows_i, &n_i,
                &per_i
            )?;
        }};
    }
    match (extra, to) {
        (None, None) => launch_rows!("ln_bwd_rows"),
        (None, Some(to)) if to.dtype == DType::BF16 => {
            let dz = dz_bf16.insert(uninit::<half::bf16>(dev, len)?);
            launch_rows_to!("ln_bwd_rows_to_bf16", dz, to)
        }
        (None, Some(to)) => {
            let dz = dz_f32.insert(uninit::<f32>(dev, len)?);
            launch_rows_to!("ln_bwd_rows_to_f32", dz, to)
        }
        (Some((es, el)), to) if es.dtype() == DType::BF16 => {
            let e = typed::<half::bf16>(es, el, OP)?;
            match to {
                None => launch_rows!("ln_bwd_rows_plus_bf16", &e),
                Some(to) => {
                    let dz = dz_bf16.insert(uninit::<half::bf16>(dev, len)?);
                    launch_rows_to!("ln_bwd_rows_plus_to_bf16", dz, to, &e)
                }
            }
        }
        (Some((es, el)), to) => {
            let e = view(es, el, OP)?;
            match to {
                None => launch_rows!("ln_bwd_rows_plus_f32", &e),
                Some(to) => {
                    let dz = dz_f32.insert(uninit::<f32>(dev, len)?);
                    launch_rows_to!("ln_bwd_rows_plus_to_f32", dz, to, &e)
                }
            }
        }
    }
    match extra {
        None => launch_cols!("ln_bwd_cols"),
        Some((es, el)) if es.dtype() == DType::BF16 => {
            let e = typed::<half::bf16>(es, el, OP)?;
            launch_cols!("ln_bwd_cols_plus_bf16", &e)
        }
        Some((es, el)) => {
            let e = view(es, el, OP)?;
            launch_cols!("ln_bwd_cols_plus_f32", &e)
        }
    }
    sum_chunks(dev, &partial, &mut packed, len, 2 * n, count)?;
    let dz = match (dz_f32, dz_bf16) {
        (Some(dz), _) => Some(CudaStorage::wrap_cuda_slice(dz, dev.clone())),
        (_, Some(dz)) => Some(CudaStorage::wrap_cuda_slice(dz, dev.clone())),
        _ => None,
    };
    Ok((result(dev, packed, Shape::from(len + 2 * n)), dz))
}

/// A dense layer's `product` (f32 or bf16) plus its bias, through inverted dropout at (p, seed)
/// (none at p = 0), plus the residual r, and the sum's LayerNorm with w and b: the sum and the
/// normed rows packed as (2, the product's shape). `inputs` are the bias, r, w and b (f32).
pub fn residual_layer_norm(
    (ps, pl): (&CudaStorage, &Layout),
    inputs: [(&CudaStorage, &Layout); 4],
    (p, seed): (f32, u64),
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "flora-residual-layer-norm";
    let [(cs, cl), (rs, rl), (ws, wl), (bs, bl)] = inputs;
    let dev = ps.device();
    let (bias, r, w, b) = (
        view(cs, cl, OP)?,
        view(rs, rl, OP)?,
        view(ws, wl, OP)?,
        view(bs, bl, OP)?,
    );
    let (len, n) = (pl.shape().elem_count(), last_dim(pl));
    let mut packed = output(dev, 2 * len)?;
    let (mut sum, mut out) = packed.split_at_mut(len);
    let rows = len / n;
    let (rows_i, n_i, eps) = (rows as i32, n as i32, eps as f32);
    macro_rules! launch_on {
        ($name:expr, $product:expr) => {
            launch!(
                dev,
                $name,
                config(warp_per_row(rows)),
                $product,
                &bias,
                &r,
                &w,
                &b,
                &mut sum,
                &mut out,
                &rows_i,
                &n_i,
                &p,
                &seed,
                &eps
            )
        };
    }
    match ps.dtype() {
        DType::BF16 => {
            let product = typed::<half::bf16>(ps, pl, OP)?;
            launch_on!("bias_dropout_add_ln_bf16", &product)?
        }
        _ => {
            let product = view(ps, pl, OP)?;
            launch_on!("bias_dropout_add_ln_f32", &product)?
        }
    }
    let mut dims = vec![2];
    dims.extend_from_slice(pl.dims());
    Ok(result(dev, packed, Shape::from(dims)))
}

/// Rows of a (rows, n) table picked by u32 ids.
pub fn gather_rows(
    ts: &CudaStorage,
    tl: &Layout,
    is: &CudaStorage,
    il: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = ts.device();
    let table = view(ts, tl, "flora-gather-rows")?;
    let ids = typed::<u32>(is, il, "flora-gather-rows")?;
    let n = last_dim(tl);
    let picked = il.shape().elem_count();
    let len = picked * n;
    let mut y = output(dev, len)?;
    let n_i = n as i32;
    launch!(
        dev,
        "gather_rows",
        config(rows_by_columns(picked, n)),
        &table,
        &ids,
        &mut y,
        &n_i
    )?;
    Ok(result(dev, y, Shape::from((picked, n))))
}

/// A (rows, n) table's gradient from the gradient of rows picked by ids: sums per id.
pub fn scatter_add_rows(
    gs: &CudaStorage,
    gl: &Layout,
    is: &CudaStorage,
    il: &Layout,
    rows: usize,
) -> Result<(CudaStorage, Shape)> {
    let dev = gs.device();
    let g = view(gs, gl, "flora-gather-rows-grad")?;
    let ids = typed::<u32>(is, il, "flora-gather-rows-grad")?;
    let n = last_dim(gl);
    let len = gl.shape().elem_count();
    let mut table = dev.alloc_zeros::<f32>(rows * n)?;
    let n_i = n as i32;
    launch!(
        dev,
        "scatter_add_rows",
        config(rows_by_columns(len / n, n)),
        &g,
        &ids,
        &mut table,
        &n_i
    )?;
    Ok(result(dev, table, Shape::from((rows, n))))
}

/// x + bias over rows.
pub fn bias_add(
    xs: &CudaStorage,
    xl: &Layout,
    bs: &CudaStorage,
    bl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = xs.device();
    let x = view(xs, xl, "flora-bias-add")?;
    let b = view(bs, bl, "flora-bias-add")?;
    let (len, n) = (xl.shape().elem_count(), last_dim(xl));
    let mut y = output(dev, len)?;
    let n_i = n as i32;
    launch!(
        dev,
        "bias_add",
        config(rows_by_columns(len / n, n)),
        &x,
        &b,
        &mut y,
        &n_i
    )?;
    Ok(result(dev, y, xl.shape().clone()))
}

/// Column sums of a (rows, n) tensor.
pub fn col_sum(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let g = view(s, l, "flora-col-sum")?;
    let (len, n) = (l.shape().elem_count(), last_dim(l));
    let mut out = output(dev, n)?;
    column_sums(dev, &g, len / n, n, &mut out, 0)?;
    Ok(result(dev, out, Shape::from(n)))
}

/// Inverted dropout with the counter-based mask of `seed`.
pub fn dropout(s: &CudaStorage, l: &Layout, p: f32, seed: u64) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let x = view(s, l, "flora-dropout")?;
    let len = l.shape().elem_count();
    let mut y = output(dev, len)?;
    let len_u = len as u64;
    launch!(
        dev,
        "dropout",
        config(element_groups(len)),
        &x,
        &mut y,
        &p,
        &seed,
        &len_u
    )?;
    Ok(result(dev, y, l.shape().clone()))
}

/// `a` (f32) plus `b` (bf16) into f32, in one pass.
pub fn add_bf16_to_f32(
    (a_s, a_l): (&CudaStorage, &Layout),
    (b_s, b_l): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "flora-add-bf16-to-f32";
    let dev = a_s.device();
    let a = view(a_s, a_l, OP)?;
    let b = typed::<half::bf16>(b_s, b_l, OP)?;
    let len = a_l.shape().elem_count();
    let mut y = output(dev, len)?;
    let len_u = len as u64;
    launch!(
        dev,
        "add_bf16_to_f32",
        config(element_groups(len)),
        &a,
        &b,
        &mut y,
        &len_u
    )?;
    Ok(result(dev, y, a_l.shape().clone()))
}

/// The embeddings' sum: rows of the word table and of the position (plus token type) table,
/// picked by the ids and the positions that `ids2` (2, tokens) holds.
pub fn embed_sum(
    (ws, wl): (&CudaStorage, &Layout),
    (ps, pl): (&CudaStorage, &Layout),
    (is, il): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "flora-embed-sum";
    let dev = ws.device();
    let word = view(ws, wl, OP)?;
    let pos_type = view(ps, pl, OP)?;
    let ids2 = typed::<u32>(is, il, OP)?;
    let n = last_dim(wl);
    let tokens = il.shape().elem_count() / 2;
    let mut x = output(dev, tokens * n)?;
    let (n_i, tokens_i) = (n as i32, tokens as i32);
    launch!(
        dev,
        "embed_sum",
        config(rows_by_column_groups(tokens, n)),
        &word,
        &pos_type,
        &ids2,
        &mut x,
        &n_i,
        &tokens_i
    )?;
    Ok(result(dev, x, Shape::from((tokens, n))))
}

/// The kernels against their CPU twins, forward and backward, on the first CUDA GPU; skipped
/// (loudly) where there is none. Run on the device machine with the `cuda` test binary.
#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use crate::model::mlm_positions::MlmPositions;
    use crate::model::roberta::{encode, encode_at, mlm_loss, Config, Params, Positions};
    use crate::model::{dense_epilogue, embeddings, fused, gpu_ops, mlm_loss};
    use crate::testing::{max_abs_diff, random_var, skipped};

    fn gpu(test: &str) -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(d) => Some(d),
            Err(e) => {
                skipped(&format!("{test}: no CUDA GPU ({e})"));
                None
            }
        }
    }

    /// `f`'s output and the gradients of sum(output * weights) with respect to `inputs`, on
    /// `dev`, brought back to the CPU.
    fn run(
        f: &dyn Fn(&[Tensor]) -> Tensor,
        inputs: &[Var],
        weights: &Tensor,
        dev: &Device,
    ) -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|v| Var::from_tensor(&v.as_tensor().to_device(dev).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let loss = (&y * weights.to_device(dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let back = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
        let g = vars
            .iter()
            .map(|v| back(grads.get(v).expect("a gradient")))
            .collect();
        (back(&y), g)
    }

    /// Checks `f` on the GPU against the CPU: output and every input's gradient within `tol`.
    fn same_on_both(
        test: &str,
        f: &dyn Fn(&[Tensor]) -> Tensor,
        inputs: &[Var],
        out_shape: &[usize],
        tol: f64,
    ) {
        let Some(dev) = gpu(test) else { return };
        let weights = random_var(out_shape, 1.0, 99).as_tensor().clone();
        let (cy, cg) = run(f, inputs, &weights, &Device::Cpu);
        let (gy, gg) = run(f, inputs, &weights, &dev);
        let d = max_abs_diff(&cy, &gy);
        assert!(d < tol, "{test}: outputs differ by {d}");
        for (i, (c, g)) in cg.iter().zip(&gg).enumerate() {
            let d = max_abs_diff(c, g);
            assert!(d < tol, "{test}: gradients of input {i} differ by {d}");
        }
    }

    #[test]
    fn gpu_layer_norm_matches_the_cpu() {
        let inputs = [
            random_var(&[3, 50, 96], 1.5, 1),
            random_var(&[96], 1.0, 2),
            random_var(&[96], 1.0, 3),
        ];
        let f = |t: &[Tensor]| fused::layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap();
        same_on_both("layer_norm", &f, &inputs, &[3, 50, 96], 1e-4);
    }

    #[test]
    fn gpu_softmax_matches_the_cpu() {
        let inputs = [random_var(&[4, 3, 37, 300], 3.0, 4)];
        let f = |t: &[Tensor]| fused::softmax(&t[0]).unwrap();
        same_on_both("softmax", &f, &inputs, &[4, 3, 37, 300], 1e-5);
    }

    #[test]
    fn gpu_gelu_matches_the_cpu() {
        let inputs = [random_var(&[70_001], 3.0, 5)];
        let f = |t: &[Tensor]| fused::gelu(&t[0]).unwrap();
        same_on_both("gelu", &f, &inputs, &[70_001], 1e-5);
    }

    #[test]
    fn gpu_bias_add_matches_the_cpu() {
        let inputs = [random_var(&[1000, 77], 1.0, 6), random_var(&[77], 1.0, 7)];
        let f = |t: &[Tensor]| gpu_ops::bias_add(&t[0], &t[1]).unwrap();
        same_on_both("bias_add", &f, &inputs, &[1000, 77], 1e-4);
    }

    #[test]
    fn gpu_gather_rows_matches_the_cpu() {
        let ids: Vec<u32> = (0..5000u32).map(|i| (i * 7919) % 300).collect();
        let inputs = [random_var(&[300, 40], 1.0, 8)];
        let f = |t: &[Tensor]| {
            let ids = Tensor::new(ids.as_slice(), t[0].device()).unwrap();
            gpu_ops::gather_rows(&t[0], &ids).unwrap()
        };
        same_on_both("gather_rows", &f, &inputs, &[5000, 40], 1e-4);
    }

    #[test]
    fn gpu_embeddings_match_the_cpu() {
        // The paper's tables at a small width: 5,005 words, 514 positions; a batch of 600
        // tokens with repeated ids, through the sum, LayerNorm and dropout, and back.
        let cfg = Config::new(5005, 1, 40, 2, 80, 512, 0.1, Positions::Roberta);
        let ids: Vec<u32> = (0..600u32).map(|i| i * 7919 % 5005).collect();
        let positions: Vec<u32> = (0..600u32).map(|i| 2 + i % 512).collect();
        let Some(dev) = gpu("embeddings") else { return };
        let run = |dev: &Device| {
            let p = Params::init(&cfg, 5, dev).unwrap();
            let x = embeddings::embeddings(&p, &cfg, &ids, &positions, Some((0.1, 9))).unwrap();
            let w = random_var(&[600, 40], 1.0, 12)
                .as_tensor()
                .to_device(dev)
                .unwrap();
            let loss = (&x * &w).unwrap().sum_all().unwrap();
            let grads = p.grads(&loss.backward().unwrap());
            (x.to_device(&Device::Cpu).unwrap(), grads)
        };
        let (cx, cg) = run(&Device::Cpu);
        let (gx, gg) = run(&dev);
        assert!(max_abs_diff(&cx, &gx) < 1e-4, "embeddings differ");
        assert_eq!(cg.len(), 5, "{:?}", cg.keys());
        for (name, c) in &cg {
            let d = max_abs_diff(c, &gg[name].to_device(&Device::Cpu).unwrap());
            assert!(d < 1e-4, "{name}: gradients differ by {d}");
        }
    }

    /// A dense layer's output through its bias and dropout into the residual sum and its
    /// LayerNorm, and that LayerNorm's backward pass writing the dense layer's gradient beside
    /// its own (`residual_norm.rs`), on the GPU against the CPU: f32 and bf16 products, with a
    /// second gradient and dropout, at the paper's width and one wider than a warp's registers.
    #[test]
    fn gpu_residual_layer_norm_and_the_dense_gradient_match_the_cpu() {
        use crate::model::residual_norm::{residual_layer_norm, DenseOutput};
        let Some(dev) = gpu("residual layer norm") else {
            return;
        };
        for (n, compute) in [(768, DType::BF16), (768, DType::F32), (1100, DType::BF16)] {
            let t = |dims: &[usize], scale: f32, seed: u64| {
                random_var(dims, scale, seed).as_tensor().clone()
            };
            let (product, r, g) = (
                t(&[3, 41, n], 1.0, 1),
                t(&[3, 41, n], 2.0, 2),
                t(&[3, 41, n], 1.0, 3),
            );
            let (dense_bias, w, b) = (t(&[n], 1.0, 4), t(&[n], 1.0, 5), t(&[n], 1.0, 6));
            let extra = t(&[3, 41, n], 1.0, 7);
            let on = |dev: &Device| -> Vec<Tensor> {
                let at = |x: &Tensor| x.to_device(dev).unwrap();
                let product = at(&product).to_dtype(compute).unwrap();
                let dense = DenseOutput {
                    product: &product,
                    bias: &at(&dense_bias),
                    dropout: Some((0.1, 31)),
                };
                let (sum, normed) =
                    residual_layer_norm(dense, &at(&r), &at(&w), &at(&b), 1e-5).unwrap();
                let to = fused::GradTo {
                    p: 0.1,
                    seed: 31,
                    dtype: compute,
                };
                let extra = at(&extra).to_dtype(compute).unwrap();
                let (grads, dz) =
                    fused::layer_norm_backward_to(&sum, &at(&w), &at(&g), Some(&extra), 1e-5, to)
                        .unwrap();
                let [dx, dw, db] = grads;
                [sum, normed, dx, dw, db, dz.to_dtype(DType::F32).unwrap()]
                    .iter()
                    .map(|x| x.to_device(&Device::Cpu).unwrap())
                    .collect()
            };
            let (want, got) = (on(&Device::Cpu), on(&dev));
            let names = ["sum", "normed", "dx", "dw", "db", "dz"];
            for ((name, w), g) in names.iter().zip(&want).zip(&got) {
                let largest = w.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                let scale = largest.to_scalar::<f32>().unwrap().max(1.0);
                let d = max_abs_diff(w, g) as f32 / scale;
                let tol = if *name == "dz" && compute == DType::BF16 {
                    8e-3
                } else {
                    1e-4
                };
                assert!(
                    d < tol,
                    "{n} {compute:?}: {name} differs by {d} (relative to {scale})"
                );
            }
        }
    }

    /// The card's bf16 stores round as the CPU's `half::bf16::from_f32` does, bit for bit: from
    /// sm_80 they are `cvt` instructions, whose packed form puts its first operand in the high
    /// half. Through `dropout_to` at a rate below f32's resolution (its scale is then exactly 1),
    /// in groups of eight (16-byte stores) and a ragged tail of single stores.
    #[test]
    fn gpu_bf16_stores_round_to_nearest_even() {
        let Some(dev) = gpu("bf16 stores") else {
            return;
        };
        let mut x = crate::testing::bf16_rounding_cases();
        x.extend(
            random_var(&[1000], 100.0, 13)
                .as_tensor()
                .to_vec1::<f32>()
                .unwrap(),
        );
        let cpu = Tensor::new(x.as_slice(), &Device::Cpu).unwrap();
        let rounded = |t: &Tensor| {
            dense_epilogue::dropout_to(t, Some((1e-9, 3)), DType::BF16)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap()
                .to_vec1::<half::bf16>()
                .unwrap()
        };
        let (want, got) = (rounded(&cpu), rounded(&cpu.to_device(&dev).unwrap()));
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                w.to_bits(),
                g.to_bits(),
                "element {i}, {}: {w} against {g}",
                x[i]
            );
        }
    }

    #[test]
    fn gpu_dropout_draws_the_cpu_mask() {
        let inputs = [random_var(&[100_003], 1.0, 9)];
        let f = |t: &[Tensor]| gpu_ops::dropout(&t[0], 0.1, 7).unwrap();
        same_on_both("dropout", &f, &inputs, &[100_003], 1e-6);
    }

    #[test]
    fn gpu_mlm_loss_matches_the_cpu() {
        // A vocabulary of 5,005 in rows padded to 5,008, as the paper's model has on a GPU;
        // f32 logits and bf16 ones (their gradient in bf16, cast back through the f32 input).
        let inputs = [
            random_var(&[300, 5008], 4.0, 10),
            random_var(&[5005], 1.0, 11),
        ];
        let targets: Vec<u32> = (0..300u32).map(|i| i * 7919 % 5005).collect();
        for dtype in [candle_core::DType::F32, candle_core::DType::BF16] {
            let f = |t: &[Tensor]| {
                let z = t[0].to_dtype(dtype).unwrap();
                let (loss, _) = mlm_loss::cross_entropy(&z, &t[1], &targets).unwrap();
                loss.reshape(1).unwrap()
            };
            same_on_both(&format!("mlm loss {dtype:?}"), &f, &inputs, &[1], 1e-4);
        }
    }

    /// Six sequences of 40 tokens, the last 10 to 5 of them padding, and every seventh token's
    /// label.
    fn padded_batch() -> (Vec<Vec<u32>>, Vec<i64>) {
        let ids = (0..6u32)
            .map(|r| {
                (0..40u32)
                    .map(|i| {
                        if i >= 30 + r {
                            1
                        } else {
                            4 + (r * 13 + i * 7) % 56
                        }
                    })
                    .collect()
            })
            .collect();
        let labels = (0..240i64)
            .map(|i| if i % 7 == 0 { 4 + i % 50 } else { -1 })
            .collect();
        (ids, labels)
    }

    /// A training step's loss and gradients of a fresh model `cfg` (`setup` applied to its
    /// weights) on [`padded_batch`], with dropout drawn from seed 8: on the CPU, then on `dev`.
    /// With `masked`, the last layer runs at the labelled positions, as pretraining runs it.
    fn step_on_both(
        dev: &Device,
        cfg: &Config,
        setup: &dyn Fn(&mut Params),
        masked: bool,
    ) -> [(f32, std::collections::HashMap<String, Tensor>); 2] {
        let (ids, labels) = padded_batch();
        let at = MlmPositions::from_labels(&labels, ids.len(), ids[0].len()).unwrap();
        let step = |dev: &Device| {
            let mut p = Params::init(cfg, 3, dev).unwrap();
            setup(&mut p);
            let mut rng = crate::rng::Rng::new(8);
            let (hidden, labels) = if masked {
                let h = encode_at(&p, cfg, &ids, &at, Some(&mut rng), dev).unwrap();
                (h, at.labels())
            } else {
                (
                    encode(&p, cfg, &ids, Some(&mut rng), dev).unwrap(),
                    &labels[..],
                )
            };
            let (loss, _, _) = mlm_loss(&p, cfg, &hidden, labels).unwrap();
            let grads = p.grads(&loss.backward().unwrap());
            let loss: f32 = loss.to_device(&Device::Cpu).unwrap().to_scalar().unwrap();
            (loss, grads)
        };
        [step(&Device::Cpu), step(dev)]
    }

    #[test]
    fn gpu_training_step_matches_the_cpu() {
        let Some(dev) = gpu("training step") else {
            return;
        };
        let cfg = Config::new(60, 2, 64, 4, 128, 40, 0.0, Positions::Roberta);
        for masked in [false, true] {
            let [(cl, cg), (gl, gg)] = step_on_both(&dev, &cfg, &|_| {}, masked);
            assert!(
                (cl - gl).abs() < 1e-4,
                "masked {masked}: loss {cl} on the CPU, {gl} on the GPU"
            );
            assert_eq!(cg.len(), gg.len());
            for (name, c) in &cg {
                let g = gg[name].to_device(&Device::Cpu).unwrap();
                let d = max_abs_diff(c, &g);
                assert!(d < 1e-4, "masked {masked}: {name}: gradients differ by {d}");
            }
        }
    }

    #[test]
    fn gpu_flash_attention_matches_the_cpu() {
        use crate::model::flash_attention::{flash_attention_backward, flash_attention_forward};
        use candle_core::DType;
        let Some(dev) = gpu("flash attention") else {
            return;
        };
        // The paper's heads (6 of 128) at a length that is no multiple of the tiles, and small
        // heads with padding keys; with dropout and without.
        for ((batch, heads, len, hd), dropout) in [
            ((2, 6, 200, 128), Some((0.1, 3))),
            ((3, 2, 37, 32), None),
            ((3, 2, 37, 32), Some((0.2, 5))),
        ] {
            let bf16 = |seed| {
                random_var(&[batch, heads, len, hd], 1.0, seed)
                    .as_tensor()
                    .to_dtype(DType::BF16)
                    .unwrap()
            };
            let (q, k, v) = (bf16(1), bf16(2), bf16(3));
            let grad = random_var(&[batch, len, heads * hd], 1.0, 4)
                .as_tensor()
                .clone();
            let mask: Vec<f32> = (0..batch * len)
                .map(|i| {
                    if i / len == 1 && i % len >= len - 5 {
                        -1e9
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (batch, 1, 1, len), &Device::Cpu).unwrap();
            let scale = 1.0 / (hd as f32).sqrt();
            let dims = crate::model::flash_attention::Dims {
                batch,
                heads,
                len,
                head_dim: hd,
            };
            let run = |dev: &Device| {
                let on = |t: &Tensor| t.to_device(dev).unwrap();
                let (q, k, v, mask, grad) = (on(&q), on(&k), on(&v), on(&mask), on(&grad));
                let out = flash_attention_forward(&q, &k, &v, &mask, scale, dropout).unwrap();
                let grads =
                    flash_attention_backward(&q, &k, &v, &out.saved, &grad, &mask, scale, dropout)
                        .unwrap();
                let back = |t: &Tensor| {
                    t.to_device(&Device::Cpu)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                };
                let mut all = vec![back(&out.context)];
                all.extend(grads.iter().map(back));
                // The dropout mask the forward pass kept, as its bits.
                let words = out.saved.dim(0).unwrap();
                let from = words.min(dims.keep_offset());
                let keeps: Vec<u16> = out
                    .saved
                    .narrow(0, from, words - from)
                    .and_then(|t| t.to_device(&Device::Cpu))
                    .and_then(|t| t.to_vec1::<half::bf16>())
                    .unwrap()
                    .iter()
                    .map(|w| w.to_bits())
                    .collect();
                (all, keeps)
            };
            let ((cpu, cpu_keeps), (gpu, gpu_keeps)) = (run(&Device::Cpu), run(&dev));
            assert_eq!(dropout.is_some(), !cpu_keeps.is_empty());
            assert!(
                cpu_keeps == gpu_keeps,
                "{batch}x{heads}x{len}x{hd}: the dropout masks differ"
            );
            for (name, (c, g)) in ["context", "dq", "dk", "dv"]
                .iter()
                .zip(cpu.iter().zip(&gpu))
            {
                let scale = max_abs_diff(c, &c.zeros_like().unwrap()).max(1e-3);
                let d = max_abs_diff(c, g) / scale;
                assert!(
                    d < 2e-2,
                    "{batch}x{heads}x{len}x{hd} {dropout:?} {name}: differs by {d} of its scale"
                );
            }
        }
    }

    #[test]
    fn gpu_training_step_with_flash_attention_matches_the_cpu() {
        let Some(dev) = gpu("training step with flash attention") else {
            return;
        };
        let cfg = Config::new(60, 2, 64, 4, 128, 40, 0.1, Positions::Roberta);
        let setup = |p: &mut Params| {
            p.compute = candle_core::DType::BF16;
            p.attention = crate::model::roberta::Attention::Flash;
        };
        // Masked: flash attention but in the last layer, which runs the products at the slots.
        for masked in [false, true] {
            let [(cl, cg), (gl, gg)] = step_on_both(&dev, &cfg, &setup, masked);
            assert!(
                (cl - gl).abs() < 2e-2,
                "masked {masked}: loss {cl} on the CPU, {gl} on the GPU"
            );
            assert_eq!(cg.len(), gg.len());
            for (name, c) in &cg {
                let g = gg[name].to_device(&Device::Cpu).unwrap();
                let scale = max_abs_diff(c, &c.zeros_like().unwrap()).max(1e-3);
                let d = max_abs_diff(c, &g) / scale;
                assert!(
                    d < 5e-2,
                    "masked {masked}: {name}: gradients differ by {d} of their scale"
                );
            }
        }
    }

    #[test]
    fn gpu_tensor_core_fragments_follow_ptx_layouts() {
        // flash attention's conventions alone: if this fails, the flash kernels cannot pass.
        let Some(Device::Cuda(dev)) = gpu("tensor core fragments") else {
            return;
        };
        let (a, b, bt, want) = crate::model::flash_attention::mma_probe_inputs();
        let c = crate::model::flash_attention_cuda::probe_fragments(&dev, &a, &b, &bt).unwrap();
        for (way, got) in ["PTX's layouts", "ldmatrix", "ldmatrix of b^T"]
            .iter()
            .zip(c.chunks(256))
        {
            assert_eq!(got, &want[..], "{way}");
        }
    }
}
