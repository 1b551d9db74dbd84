//! LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning"): Adam moments with bias
//! correction and decoupled weight decay, scaled per tensor by the trust ratio ||w|| / ||update||.

use std::collections::HashMap;

use candle_core::{Result, Tensor};

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

    /// One update of every parameter with `grads` (by name) at learning rate `lr`. The norms
    /// behind the trust ratios are gathered into one tensor and read back at once: one
    /// device-to-host wait per step instead of two per parameter.
    pub fn update(
        &mut self,
        params: &Params,
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let mut names: Vec<&String> = params.vars.keys().collect();
        names.sort();
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
            let wn = (sq[2 * k] as f64).sqrt();
            let un = (sq[2 * k + 1] as f64).sqrt();
            let trust = if wn > 0.0 && un > 0.0 { wn / un } else { 1.0 };
            var.set(&(var.as_tensor() - (u * (lr * trust))?)?)?;
        }
        Ok(())
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

/// The global L2 norm of `grads` (one device-to-host wait).
pub fn global_norm(grads: &HashMap<String, Tensor>) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    // In name order, so that the sum (and a resumed run) does not depend on hashing.
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
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
}
