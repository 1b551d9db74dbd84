//! LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning"): Adam moments with bias
//! correction and decoupled weight decay, scaled per tensor by the trust ratio ||w|| / ||update||.

use std::collections::HashMap;

use candle_core::{Result, Tensor};

use super::fused::{hold, modify};
use super::roberta::Params;

/// LAMB's state and hyper-parameters.
pub struct Lamb {
    /// beta1 (0.9).
    pub beta1: f64,
    /// beta2 (0.999).
    pub beta2: f64,
    /// epsilon (1e-8).
    pub eps: f64,
    /// Weight decay, not applied to biases and LayerNorm weights.
    pub weight_decay: f64,
    /// Steps taken.
    pub step: u64,
    /// First moments, by parameter name.
    pub m: HashMap<String, Tensor>,
    /// Second moments, by parameter name.
    pub v: HashMap<String, Tensor>,
}

/// Whether weight decay applies to a parameter (not to biases, LayerNorm or embeddings' norms).
pub fn decays(name: &str) -> bool {
    !(name.ends_with("bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

impl Lamb {
    /// A fresh optimizer.
    pub fn new(weight_decay: f64) -> Lamb {
        Lamb {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// One update of every parameter with `grads` (by name) at learning rate `lr`: fused loops
    /// over each tensor on the CPU, two kernels per tensor on a CUDA GPU (`lamb_cuda.rs`),
    /// tensor operations elsewhere (with the norms behind the trust ratios read back in one
    /// transfer: one device-to-host wait per step, not two per parameter).
    pub fn update(
        &mut self,
        params: &Params,
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.update_scaled(params, grads, lr, 1.0)
    }

    /// [`Lamb::update`] with every gradient multiplied by `scale` first (averaging accumulated
    /// gradients, done inside the update's own passes).
    pub fn update_scaled(
        &mut self,
        params: &Params,
        grads: &HashMap<String, Tensor>,
        lr: f64,
        scale: f64,
    ) -> Result<()> {
        self.update_clipped(params, grads, lr, scale, 0.0)
    }

    /// [`Lamb::update_scaled`] with the scaled gradients then clipped to a global norm of `clip`
    /// (not clipped when `clip` is 0). On a CUDA GPU the norm is computed and applied inside the
    /// update's kernels, with nothing read back to the host; elsewhere through [`global_norm`].
    pub fn update_clipped(
        &mut self,
        params: &Params,
        grads: &HashMap<String, Tensor>,
        lr: f64,
        scale: f64,
        clip: f64,
    ) -> Result<()> {
        let t = (self.step + 1) as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let mut names: Vec<&String> = params.vars.keys().collect();
        names.sort();
        let on_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
        if params.vars.values().all(|v| on_cpu(v.as_tensor())) {
            let scale = clipped(grads, scale, clip)? as f32;
            self.step += 1;
            for name in names {
                if let Some(g) = grads.get(name) {
                    let var = &params.vars[name];
                    self.update_on_cpu(name, var, g, lr, (bc1, bc2), scale)?;
                }
            }
            return Ok(());
        }
        #[cfg(feature = "cuda")]
        if params
            .vars
            .values()
            .all(|v| super::lamb_cuda::applies(v.as_tensor()))
        {
            self.step += 1;
            return super::lamb_cuda::update(
                self,
                params,
                grads,
                names,
                lr,
                (bc1, bc2),
                scale,
                clip,
            );
        }
        let scale = clipped(grads, scale, clip)?;
        self.step += 1;
        if scale != 1.0 {
            let scaled: HashMap<String, Tensor> = grads
                .iter()
                .map(|(k, g)| Ok((k.clone(), (g * scale)?)))
                .collect::<Result<_>>()?;
            return self.update_tensors(params, &scaled, names, lr, bc1, bc2);
        }
        self.update_tensors(params, grads, names, lr, bc1, bc2)
    }

    /// The update as tensor operations, on any device; the norms behind the trust ratios are
    /// gathered and read back at once.
    fn update_tensors(
        &mut self,
        params: &Params,
        grads: &HashMap<String, Tensor>,
        names: Vec<&String>,
        lr: f64,
        bc1: f64,
        bc2: f64,
    ) -> Result<()> {
        let mut updates = Vec::new();
        let mut norms = Vec::new();
        for name in names {
            let w = params.vars[name].as_tensor();
            let Some(g) = grads.get(name) else { continue };
            let m = match self.m.get(name) {
                Some(m) => ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?,
                None => (g * (1.0 - self.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                None => (g.sqr()? * (1.0 - self.beta2))?,
            };
            let mhat = (&m / bc1)?;
            let vhat = (&v / bc2)?;
            let mut u = mhat.div(&(vhat.sqrt()? + self.eps)?)?;
            if decays(name) && self.weight_decay > 0.0 {
                u = (u + (w * self.weight_decay)?)?;
            }
            norms.push(sum_of_squares(w)?);
            norms.push(sum_of_squares(&u)?);
            updates.push((name, u));
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        if updates.is_empty() {
            return Ok(());
        }
        let sq: Vec<f32> = Tensor::stack(&norms, 0)?.to_vec1()?;
        for (k, (name, u)) in updates.into_iter().enumerate() {
            let var = &params.vars[name];
            let trust = trust_ratio(sq[2 * k] as f64, sq[2 * k + 1] as f64);
            var.set(&(var.as_tensor() - (u * (lr * trust))?)?)?;
        }
        Ok(())
    }
}

impl Lamb {
    /// One parameter's update on the CPU in two fused passes over the weights, gradient and
    /// moments, all in place (the moments and the update direction's norm; then the weights, the
    /// direction recomputed), instead of about fifteen tensor operations and three fresh
    /// tensors. Same arithmetic as [`Lamb::update`]'s general path, with the gradient multiplied
    /// by `scale` first.
    #[allow(clippy::too_many_arguments)]
    fn update_on_cpu(
        &mut self,
        name: &str,
        var: &candle_core::Var,
        grad: &Tensor,
        lr: f64,
        (bc1, bc2): (f64, f64),
        scale: f32,
    ) -> Result<()> {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 14;
        let op = "lamb";
        let weights = var.as_tensor();
        let n = weights.elem_count();
        let grad = grad.contiguous()?;
        let (b1, b2, eps) = (self.beta1 as f32, self.beta2 as f32, self.eps as f32);
        let (c1, c2) = (bc1 as f32, bc2 as f32);
        let wd = self.decay_of(name);
        let direction = move |m: f32, v: f32, w: f32| (m / c1) / ((v / c2).sqrt() + eps) + wd * w;
        let (m, v) = (
            moment(&mut self.m, name, weights)?,
            moment(&mut self.v, name, weights)?,
        );
        let (wn, un) = {
            let (wh, gh) = (hold(weights, op)?, hold(&grad, op)?);
            let (w, g) = (wh.slice(), gh.slice());
            if g.len() != n {
                candle_core::bail!(
                    "lamb: `{name}` has {n} weights but a gradient of {}",
                    g.len()
                );
            }
            modify(&m, op, |m| {
                modify(&v, op, |v| {
                    m.par_chunks_mut(CHUNK)
                        .zip(v.par_chunks_mut(CHUNK))
                        .zip(w.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                        .map(|((m, v), (w, g))| {
                            // Eight lanes of partial sums, so that the loop vectorises.
                            let (mut wn, mut un) = ([0f32; 8], [0f32; 8]);
                            let rows = m
                                .chunks_mut(8)
                                .zip(v.chunks_mut(8))
                                .zip(w.chunks(8).zip(g.chunks(8)));
                            for ((m, v), (w, g)) in rows {
                                for i in 0..m.len() {
                                    let gi = g[i] * scale;
                                    m[i] = m[i] * b1 + gi * (1.0 - b1);
                                    v[i] = v[i] * b2 + gi * gi * (1.0 - b2);
                                    let u = direction(m[i], v[i], w[i]);
                                    wn[i] += w[i] * w[i];
                                    un[i] += u * u;
                                }
                            }
                            let total = |l: [f32; 8]| l.iter().map(|&x| x as f64).sum::<f64>();
                            (total(wn), total(un))
                        })
                        .collect::<Vec<_>>()
                })
            })??
            .iter()
            .fold((0f64, 0f64), |(a, b), (c, d)| (a + c, b + d))
        };
        let step = (lr * trust_ratio(wn, un)) as f32;
        let (mh, vh) = (hold(&m, op)?, hold(&v, op)?);
        let (m, v) = (mh.slice(), vh.slice());
        modify(weights, op, |w| {
            w.par_chunks_mut(CHUNK)
                .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
                .for_each(|(w, (m, v))| {
                    for i in 0..w.len() {
                        w[i] -= step * direction(m[i], v[i], w[i]);
                    }
                });
        })
    }
}

impl Lamb {
    /// The weight decay of parameter `name` (0 for biases and LayerNorm weights).
    pub(crate) fn decay_of(&self, name: &str) -> f32 {
        if decays(name) {
            self.weight_decay as f32
        } else {
            0.0
        }
    }
}

/// The moment of parameter `name` in `moments`, zeros like `weights` (stored) on its first step;
/// an error if a stored moment's size is not the weights'.
pub(crate) fn moment(
    moments: &mut HashMap<String, Tensor>,
    name: &str,
    weights: &Tensor,
) -> Result<Tensor> {
    let n = weights.elem_count();
    let t = match moments.get(name) {
        Some(t) => t.clone(),
        None => {
            let zeros = weights.zeros_like()?;
            moments.insert(name.to_string(), zeros.clone());
            zeros
        }
    };
    if t.elem_count() != n {
        candle_core::bail!("lamb: `{name}` has {n} weights but a moment of another size");
    }
    Ok(t)
}

/// `scale`, times clip / norm where the global norm of the gradients times `scale` exceeds
/// `clip` (when `clip` is positive).
fn clipped(grads: &HashMap<String, Tensor>, scale: f64, clip: f64) -> Result<f64> {
    if clip <= 0.0 {
        return Ok(scale);
    }
    let norm = global_norm(grads)? * scale;
    Ok(if norm > clip {
        scale * (clip / norm)
    } else {
        scale
    })
}

/// LAMB's trust ratio ||w|| / ||u|| from the sums of squares of the weights and of the update
/// direction; 1 where either is zero.
pub(crate) fn trust_ratio(w_squares: f64, u_squares: f64) -> f64 {
    let (wn, un) = (w_squares.sqrt(), u_squares.sqrt());
    if wn > 0.0 && un > 0.0 {
        wn / un
    } else {
        1.0
    }
}

/// The sum of the squares of `t`'s elements, as a scalar tensor on its device. Summed by rows
/// first: a GPU reduces a whole tensor to one value in a single block of threads, which for
/// millions of elements is far slower than rows in parallel, then a short sum.
pub fn sum_of_squares(t: &Tensor) -> Result<Tensor> {
    let sq = t.sqr()?;
    if t.rank() >= 2 {
        let last = t.rank() - 1;
        sq.flatten_to(last - 1)?.sum_keepdim(1)?.sum_all()
    } else {
        sq.sum_all()
    }
}

/// The sum of the squares of `x`, in parallel, with eight lanes of f32 partial sums per block
/// (so that the loop vectorises) added up in f64, in block order.
fn cpu_sum_of_squares(x: &[f32]) -> f64 {
    use rayon::prelude::*;
    let blocks: Vec<f64> = x
        .par_chunks(1 << 14)
        .map(|block| {
            let mut lanes = [0f32; 8];
            let mut rows = block.chunks_exact(8);
            for row in &mut rows {
                lanes.iter_mut().zip(row).for_each(|(l, v)| *l += v * v);
            }
            let tail: f64 = rows.remainder().iter().map(|&v| (v * v) as f64).sum();
            lanes.iter().map(|&l| l as f64).sum::<f64>() + tail
        })
        .collect();
    blocks.iter().sum()
}

/// The global L2 norm of `grads` (one device-to-host wait).
pub fn global_norm(grads: &HashMap<String, Tensor>) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    // In name order, so that the sum (and a resumed run) does not depend on hashing.
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    if grads
        .values()
        .all(|g| g.device().is_cpu() && g.dtype() == candle_core::DType::F32)
    {
        let mut total = 0f64;
        for name in names {
            let g = grads[name].contiguous()?;
            let held = hold(&g, "global_norm")?;
            total += cpu_sum_of_squares(held.slice());
        }
        return Ok(total.sqrt());
    }
    let parts = names
        .into_iter()
        .map(|n| sum_of_squares(&grads[n]))
        .collect::<Result<Vec<_>>>()?;
    let total = Tensor::stack(&parts, 0)?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok(total.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// One LAMB step computed by hand: w = [3, 4], g = [1, 2], lr = 0.1, wd = 0.01.
    #[test]
    fn matches_a_hand_computed_step() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[3f32, 4.0], &dev).unwrap()).unwrap();
        let params = Params {
            vars: HashMap::from([("x.weight".to_string(), w.clone())]),
            frozen: false,
            compute: candle_core::DType::F32,
            sink: Default::default(),
            attention: Default::default(),
        };
        let grads = HashMap::from([(
            "x.weight".to_string(),
            Tensor::new(&[1f32, 2.0], &dev).unwrap(),
        )]);
        let mut opt = Lamb::new(0.01);
        opt.update(&params, &grads, 0.1).unwrap();
        // Step 1: mhat = g, vhat = g^2, so the Adam direction is g / (|g| + eps) = [1, 1].
        let u: [f64; 2] = [1.0 + 0.01 * 3.0, 1.0 + 0.01 * 4.0];
        let wn = (3.0f64 * 3.0 + 4.0 * 4.0).sqrt();
        let un = (u[0] * u[0] + u[1] * u[1]).sqrt();
        let trust = wn / un;
        let want = [3.0 - 0.1 * trust * u[0], 4.0 - 0.1 * trust * u[1]];
        let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        for (g, e) in got.iter().zip(want) {
            assert!((*g as f64 - e).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // Biases get no weight decay.
        assert!(!decays("a.bias") && !decays("a.LayerNorm.weight") && decays("a.dense.weight"));
    }

    /// Clipping scales the gradients down to the norm asked for, once they exceed it, and
    /// leaves them alone below it: the same weights as gradients scaled by hand, not those of
    /// the unclipped gradients.
    #[test]
    fn clipping_scales_the_gradients_to_the_norm() {
        let dev = Device::Cpu;
        let params = || Params {
            vars: HashMap::from([(
                "x.weight".to_string(),
                Var::from_tensor(&Tensor::new(&[3f32, 4.0, -1.0], &dev).unwrap()).unwrap(),
            )]),
            frozen: false,
            compute: candle_core::DType::F32,
            sink: Default::default(),
            attention: Default::default(),
        };
        let grads =
            |g: [f32; 3]| HashMap::from([("x.weight".to_string(), Tensor::new(&g, &dev).unwrap())]);
        let weights =
            |p: &Params| -> Vec<f32> { p.vars["x.weight"].as_tensor().to_vec1().unwrap() };
        let (g1, g2) = ([1f32, 2.0, 2.0], [4f32, -4.0, 2.0]);
        // Norms 3 and 6. With a clip of 4: the first step's 3 x 2.0 = 6 is cut to 4, the
        // second's 6 x 0.5 = 3 is left alone (the cut shows in the second step's moments).
        let (clipped, by_hand, unclipped) = (params(), params(), params());
        let (mut oc, mut oh, mut ou) = (Lamb::new(0.01), Lamb::new(0.01), Lamb::new(0.01));
        oc.update_clipped(&clipped, &grads(g1), 0.1, 2.0, 4.0)
            .unwrap();
        oc.update_clipped(&clipped, &grads(g2), 0.1, 0.5, 4.0)
            .unwrap();
        oh.update_scaled(&by_hand, &grads(g1), 0.1, 2.0 * 4.0 / 6.0)
            .unwrap();
        oh.update_scaled(&by_hand, &grads(g2), 0.1, 0.5).unwrap();
        ou.update_scaled(&unclipped, &grads(g1), 0.1, 2.0).unwrap();
        ou.update_scaled(&unclipped, &grads(g2), 0.1, 0.5).unwrap();
        let (c, h, u) = (weights(&clipped), weights(&by_hand), weights(&unclipped));
        for (x, y) in c.iter().zip(&h) {
            assert!((x - y).abs() < 1e-7, "{c:?} vs {h:?}");
        }
        let apart = c
            .iter()
            .zip(&u)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(apart > 1e-4, "clipping changed nothing: {c:?} vs {u:?}");
    }

    /// The CPU's fused loops and the general tensor path give the same weights and moments.
    #[test]
    fn the_cpu_loops_match_the_tensor_path() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(4);
        let shapes = [("a.dense.weight", vec![7, 33]), ("a.dense.bias", vec![33])];
        let make = |rng: &mut crate::rng::Rng| {
            shapes
                .iter()
                .map(|(n, s)| {
                    let t = crate::model::layers::randn(rng, s, 0.3, &dev).unwrap();
                    (n.to_string(), t)
                })
                .collect::<HashMap<String, Tensor>>()
        };
        let init = make(&mut rng);
        let vars = |t: &HashMap<String, Tensor>| Params {
            vars: t
                .iter()
                .map(|(k, v)| (k.clone(), Var::from_tensor(v).unwrap()))
                .collect(),
            frozen: false,
            compute: candle_core::DType::F32,
            sink: Default::default(),
            attention: Default::default(),
        };
        let (fast, slow) = (vars(&init), vars(&init));
        let (mut of, mut os) = (Lamb::new(0.01), Lamb::new(0.01));
        for _ in 0..3 {
            let grads = make(&mut rng);
            of.update(&fast, &grads, 0.05).unwrap();
            os.step += 1;
            let t = os.step as i32;
            let (bc1, bc2) = (1.0 - os.beta1.powi(t), 1.0 - os.beta2.powi(t));
            let mut names: Vec<&String> = slow.vars.keys().collect();
            names.sort();
            os.update_tensors(&slow, &grads, names, 0.05, bc1, bc2)
                .unwrap();
        }
        for (name, v) in &fast.vars {
            let a: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = slow.vars[name]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-6, "{name}: {x} vs {y}");
            }
            let ma: Vec<f32> = of.m[name].flatten_all().unwrap().to_vec1().unwrap();
            let mb: Vec<f32> = os.m[name].flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                ma.iter().zip(&mb).all(|(x, y)| (x - y).abs() < 1e-7),
                "{name}"
            );
        }
    }
}
