//! A dense layer, x Wᵀ + b, optionally followed by GELU or dropout, as one CPU op with its
//! backward pass (f32, through OpenBLAS).
//!
//! Composed of candle ops, a dense layer is a reshape, a transpose, a product, a broadcasting add
//! and another reshape: five nodes of the autograd graph, and candle's backward pass allocates,
//! zeroes and adds a full-size gradient for each. Here the bias is written into the output first
//! and the product added to it (BLAS with beta = 1), and the backward pass makes the three
//! gradients directly: dx = g W, dW = gᵀ x, db = the column sums of g. GELU (the feed-forward's)
//! and dropout (after the attention output and the feed-forward) are applied to the result in
//! place, and their backward passes to g, sparing two more nodes and their gradients.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::blas::{gemm, Operand};
use super::fused::{data, gelu_and_slope, hold, last_dim};
use super::gpu_ops::dropout_in_place;

/// Elements handed to a thread at a time by the element-wise steps.
const CHUNK: usize = 4096;

/// What follows the product and bias inside the op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Epilogue {
    /// Nothing: x Wᵀ + b.
    None,
    /// GELU (erf form).
    Gelu,
    /// Inverted dropout at `rate`, its mask drawn from `seed` and each element's index (the
    /// mask of `gpu_ops::dropout`).
    Dropout {
        /// The share of elements dropped.
        rate: f32,
        /// The mask's seed.
        seed: u64,
    },
}

impl Epilogue {
    /// The step profile's region for the forward pass of the dense layer `role` (its name
    /// within a layer, e.g. `intermediate.dense`) from `inp` to `out` features with this
    /// epilogue: `forward: intermediate.dense 768 -> 3072, GELU`.
    pub fn forward_label(self, role: &str, inp: usize, out: usize) -> String {
        let after = match self {
            Epilogue::None => "",
            Epilogue::Gelu => ", GELU",
            Epilogue::Dropout { .. } => ", dropout",
        };
        format!("forward: {role} {inp} -> {out}{after}")
    }
}

/// Rows of the gradient summed by one task for db.
const ROWS_PER_TASK: usize = 64;

/// Whether [`dense`] applies: f32 input and weight on the CPU.
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32
}

/// `x` (.., in) times the transpose of `w` (out, in), plus `b` (out): (.., out).
pub fn dense(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    dense_then(x, w, b, Epilogue::None)
}

/// [`dense`] followed by `epilogue`.
pub fn dense_then(x: &Tensor, w: &Tensor, b: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    let epilogue = match epilogue {
        Epilogue::Dropout { rate, .. } if rate <= 0.0 => Epilogue::None,
        e => e,
    };
    let op = Dense {
        epilogue,
        pre_activation: Mutex::new(Vec::new()),
        profile_label: super::step_profile::mirror(),
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

struct Dense {
    epilogue: Epilogue,
    /// x Wᵀ + b before GELU, kept by the forward pass for the backward pass.
    pre_activation: Mutex<Vec<f32>>,
    /// The step profile's label for the backward pass.
    profile_label: Option<String>,
}

/// (rows, in, out) of a dense layer's operands, checked.
fn sizes(x_len: usize, x_cols: usize, w: &Layout, b_len: usize) -> Result<(usize, usize, usize)> {
    let [out, inp] = w.dims() else {
        candle_core::bail!(
            "flora-dense: the weight has shape {:?}, not (out, in)",
            w.dims()
        )
    };
    if *inp != x_cols || b_len != *out {
        candle_core::bail!(
            "flora-dense: input rows of {x_cols}, weight {:?}, bias of {b_len}",
            w.dims()
        );
    }
    Ok((x_len / x_cols.max(1), *inp, *out))
}

impl CustomOp3 for Dense {
    fn name(&self) -> &'static str {
        "flora-dense"
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
        let x = data(s1, l1, self.name())?;
        let w = data(s2, l2, self.name())?;
        let b = data(s3, l3, self.name())?;
        let (rows, inp, out) = sizes(x.len(), last_dim(l1), l2, b.len())?;
        let mut y = forward(x, w, b, (rows, inp, out))?;
        match self.epilogue {
            Epilogue::None => {}
            Epilogue::Gelu => {
                let z = y.clone();
                gelu_in_place(&mut y);
                *self.pre_activation.lock().expect("dense pre-activation") = z;
            }
            Epilogue::Dropout { rate, seed } => dropout_in_place(&mut y, rate, seed),
        }
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("a dense input has dimensions") = out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        super::step_profile::backward_region(&self.profile_label, || self.backward(x, w, b, grad))
    }
}

impl Dense {
    /// The gradients of x, w and b.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (xs, ws, gh) = (
            hold(x, self.name())?,
            hold(w, self.name())?,
            hold(&grad, self.name())?,
        );
        let (xs, ws) = (xs.slice(), ws.slice());
        // The gradient before the epilogue.
        let through: Option<Vec<f32>> = match self.epilogue {
            Epilogue::None => None,
            Epilogue::Gelu => {
                let z = self.pre_activation.lock().expect("dense pre-activation");
                if z.len() != gh.slice().len() {
                    candle_core::bail!("flora-dense: the backward pass ran without a forward pass");
                }
                let mut dz = gh.slice().to_vec();
                through_gelu(&mut dz, &z);
                Some(dz)
            }
            Epilogue::Dropout { rate, seed } => {
                let mut dz = gh.slice().to_vec();
                dropout_in_place(&mut dz, rate, seed);
                Some(dz)
            }
        };
        let gs = through.as_deref().unwrap_or(gh.slice());
        let (rows, inp, out) = sizes(
            xs.len(),
            x.dims().last().copied().unwrap_or(1),
            w.layout(),
            b.elem_count(),
        )?;
        let mut dx = vec![0f32; rows * inp];
        let (dw, db) = backward(gs, xs, ws, (rows, inp, out), &mut dx, false)?;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, w.shape(), device)?),
            Some(Tensor::from_vec(db, b.shape(), device)?),
        ))
    }
}

/// x Wᵀ + b for `rows` rows of x (rows, in) and a weight (out, in): (rows, out), through one
/// BLAS call with the bias preloaded.
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    (rows, inp, out): (usize, usize, usize),
) -> Result<Vec<f32>> {
    let mut y = vec![0f32; rows * out];
    y.par_chunks_mut(out.max(1))
        .for_each(|row| row.copy_from_slice(b));
    gemm(
        (rows, out, inp),
        1.0,
        Operand::new(x, 0, false, inp),
        Operand::new(w, 0, true, inp),
        1.0,
        (&mut y, 0, out),
    )?;
    Ok(y)
}

/// The backward pass of [`forward`] from the output's gradient `g`: dx = g W written into `dx`
/// (or added to it, with `accumulate`), and (dW, db).
pub(crate) fn backward(
    g: &[f32],
    x: &[f32],
    w: &[f32],
    (rows, inp, out): (usize, usize, usize),
    dx: &mut [f32],
    accumulate: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    gemm(
        (rows, inp, out),
        1.0,
        Operand::new(g, 0, false, out),
        Operand::new(w, 0, false, inp),
        if accumulate { 1.0 } else { 0.0 },
        (dx, 0, inp),
    )?;
    let mut dw = vec![0f32; out * inp];
    gemm(
        (out, inp, rows),
        1.0,
        Operand::new(g, 0, true, out),
        Operand::new(x, 0, false, inp),
        0.0,
        (&mut dw, 0, inp),
    )?;
    Ok((dw, column_sums(g, out)))
}

/// GELU of `y` in place, in parallel.
pub(crate) fn gelu_in_place(y: &mut [f32]) {
    y.par_chunks_mut(CHUNK).for_each(|y| {
        y.iter_mut().for_each(|v| *v = gelu_and_slope(*v).0);
    });
}

/// A gradient `g` taken back through GELU at its inputs `z`, in place: g GELU'(z).
pub(crate) fn through_gelu(g: &mut [f32], z: &[f32]) {
    g.par_chunks_mut(CHUNK)
        .zip(z.par_chunks(CHUNK))
        .for_each(|(g, z)| {
            for (g, &z) in g.iter_mut().zip(z) {
                *g *= gelu_and_slope(z).1;
            }
        });
}

/// The sums of the columns of `g` (rows of `n`), in parallel over blocks of rows whose partial
/// sums are added in block order, so the result does not depend on scheduling.
pub(crate) fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    let partial: Vec<Vec<f32>> = g
        .par_chunks(n * ROWS_PER_TASK)
        .map(|block| {
            let mut sums = vec![0f32; n];
            for row in block.chunks(n) {
                sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            sums
        })
        .collect();
    let mut sums = vec![0f32; n];
    for p in partial {
        sums.iter_mut().zip(p).for_each(|(s, v)| *s += v);
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_diff, random_var, weighted_grads};

    #[test]
    fn dense_matches_candle_forward_and_backward() {
        // 3 x 70 rows: more than one block of rows for the bias gradient.
        let x = random_var(&[3, 70, 12], 1.0, 1);
        let w = random_var(&[5, 12], 1.0, 2);
        let b = random_var(&[5], 1.0, 3);
        let weights = random_var(&[3, 70, 5], 1.0, 4);
        let ours = dense(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let theirs = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        assert_eq!(ours.dims(), &[3, 70, 5]);
        assert!(max_rel_diff(&ours, &theirs) < 1e-5);
        let grads = |y: &Tensor| weighted_grads(y, weights.as_tensor());
        let (g1, g2) = (grads(&ours), grads(&theirs));
        for v in [&x, &w, &b] {
            let d = max_rel_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-5, "gradient differs by {d}");
        }
    }

    /// GELU and dropout inside the op against the same ops after it, forward and backward.
    #[test]
    fn epilogues_match_the_separate_ops() {
        let x = random_var(&[2, 40, 12], 1.0, 5);
        let w = random_var(&[9, 12], 1.0, 6);
        let b = random_var(&[9], 1.0, 7);
        let weights = random_var(&[2, 40, 9], 1.0, 8);
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let plain = || dense(xt, wt, bt).unwrap();
        let cases: [(Epilogue, Box<dyn Fn() -> Tensor>); 2] = [
            (
                Epilogue::Gelu,
                Box::new(|| crate::model::fused::gelu(&plain()).unwrap()),
            ),
            (
                Epilogue::Dropout {
                    rate: 0.3,
                    seed: 11,
                },
                Box::new(|| crate::model::gpu_ops::dropout(&plain(), 0.3, 11).unwrap()),
            ),
        ];
        for (epilogue, separate) in cases {
            let ours = dense_then(xt, wt, bt, epilogue).unwrap();
            let theirs = separate();
            assert!(max_rel_diff(&ours, &theirs) < 1e-5, "{epilogue:?}");
            let grads = |y: &Tensor| weighted_grads(y, weights.as_tensor());
            let (g1, g2) = (grads(&ours), grads(&theirs));
            for v in [&x, &w, &b] {
                let d = max_rel_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(d < 1e-5, "{epilogue:?}: gradient differs by {d}");
            }
        }
        // A rate of 0 is no dropout.
        let none = dense_then(xt, wt, bt, Epilogue::Dropout { rate: 0.0, seed: 1 }).unwrap();
        assert!(max_rel_diff(&none, &plain()) < 1e-7);
    }

    #[test]
    fn mismatched_shapes_are_refused_with_their_sizes() {
        let x = random_var(&[4, 6], 1.0, 1);
        let w = random_var(&[3, 5], 1.0, 2);
        let b = random_var(&[3], 1.0, 3);
        let e = dense(x.as_tensor(), w.as_tensor(), b.as_tensor())
            .unwrap_err()
            .to_string();
        assert!(e.contains("input rows of 6"), "{e}");
    }
}
