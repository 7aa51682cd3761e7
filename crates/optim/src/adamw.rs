//! AdamW (decoupled weight decay), element for element as `torch.optim.AdamW` computes it
//! with `foreach=False`: scalars in f64, elements in f32, the same operation order.
//! Half-precision parameters get f32 master weights; moments are always f32.

use std::collections::BTreeMap;

use artist_autograd::{Gradients, Param};
use artist_tensor::{AdamWScalars, DType, Result, Tensor, invalid};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay only parameters with two or more dimensions (not norms and biases), the
    /// usual two-group setup; off by default, as with a single torch parameter group.
    pub decay_matrices_only: bool,
}

impl Default for AdamWConfig {
    /// `torch.optim.AdamW`'s defaults.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, decay_matrices_only: false }
    }
}

struct Slot {
    param: Param,
    exp_avg: Tensor,    // f32, the parameter's shape
    exp_avg_sq: Tensor, // f32
    /// The f32 weights a half-precision parameter is rounded from.
    master: Option<Tensor>,
    step: u64,
}

pub struct AdamW {
    pub config: AdamWConfig,
    slots: Vec<Slot>,
}

impl AdamW {
    /// State for `params` (frozen ones are left out).
    pub fn new(params: &[&Param], config: AdamWConfig) -> Result<AdamW> {
        let mut slots = Vec::new();
        for p in params.iter().filter(|p| p.trainable()) {
            let v = p.value();
            if !v.dtype().is_float() {
                return Err(invalid!("AdamW", "parameter {} has dtype {:?}", p.name(), v.dtype()));
            }
            let zeros = || Tensor::zeros(v.shape().clone(), DType::F32, v.device());
            let master = if v.dtype() == DType::F32 {
                if !v.is_contiguous() {
                    return Err(invalid!("AdamW", "parameter {} is not contiguous", p.name()));
                }
                None
            } else {
                Some(v.to_dtype(DType::F32)?.copy()?)
            };
            slots.push(Slot { param: (*p).clone(), exp_avg: zeros()?, exp_avg_sq: zeros()?, master, step: 0 });
        }
        Ok(AdamW { config, slots })
    }

    /// One update at learning rate `lr` from `grads`. Parameters without a gradient are
    /// left alone and their step count does not advance (as in torch).
    pub fn step(&mut self, grads: &Gradients, lr: f64) -> Result<()> {
        let _range = artist_tensor::nvtx::range("optimizer step");
        let c = self.config;
        for s in &mut self.slots {
            let Some(g) = grads.get(s.param.id()) else { continue };
            if g.shape() != s.param.value().shape() {
                return Err(invalid!(
                    "AdamW",
                    "gradient {} for parameter {} of shape {}",
                    g.shape(),
                    s.param.name(),
                    s.param.value().shape()
                ));
            }
            s.step += 1;
            let wd = if c.decay_matrices_only && s.param.value().rank() < 2 { 0.0 } else { c.weight_decay };
            let bc1 = 1.0 - c.beta1.powi(s.step as i32);
            let bc2 = 1.0 - c.beta2.powi(s.step as i32);
            let scalars = AdamWScalars {
                decay: (1.0 - lr * wd) as f32,
                beta1_complement: (1.0 - c.beta1) as f32,
                beta2: c.beta2 as f32,
                beta2_complement: (1.0 - c.beta2) as f32,
                eps: c.eps as f32,
                bias_correction2_sqrt: bc2.sqrt() as f32,
                step_size: -(lr / bc1) as f32,
            };
            let weights = s.master.as_ref().unwrap_or(s.param.value());
            weights.adamw_step(&s.exp_avg, &s.exp_avg_sq, &g.contiguous()?, &scalars)?;
            if let Some(master) = &s.master {
                s.param.value().copy_from(&master.to_dtype(s.param.value().dtype())?)?;
            }
        }
        Ok(())
    }

    /// The optimiser state as named tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`,
    /// `<param>.master`) and each parameter's step count.
    pub fn state(&self) -> (Vec<(String, Tensor)>, BTreeMap<String, u64>) {
        let mut tensors = Vec::new();
        let mut steps = BTreeMap::new();
        for s in &self.slots {
            let n = s.param.name();
            tensors.push((format!("{n}.exp_avg"), s.exp_avg.clone()));
            tensors.push((format!("{n}.exp_avg_sq"), s.exp_avg_sq.clone()));
            if let Some(m) = &s.master {
                tensors.push((format!("{n}.master"), m.clone()));
            }
            steps.insert(n.to_string(), s.step);
        }
        (tensors, steps)
    }

    /// Restores what [`AdamW::state`] gave; `get` looks a tensor up by name. Every
    /// parameter must be present with its own shape.
    pub fn load_state(&mut self, get: impl Fn(&str) -> Option<Tensor>, steps: &BTreeMap<String, u64>) -> Result<()> {
        for s in &mut self.slots {
            let n = s.param.name().to_string();
            let shape = s.param.value().shape().clone();
            let fetch = |key: String| -> Result<Tensor> {
                let t = get(&key).ok_or_else(|| invalid!("AdamW", "the saved state has no {key}"))?;
                if t.shape() != &shape || t.dtype() != DType::F32 {
                    return Err(invalid!("AdamW", "{key} is {:?} {}, expected F32 {shape}", t.dtype(), t.shape()));
                }
                t.to_device(s.param.value().device())?.copy()
            };
            s.exp_avg = fetch(format!("{n}.exp_avg"))?;
            s.exp_avg_sq = fetch(format!("{n}.exp_avg_sq"))?;
            if s.master.is_some() {
                let m = fetch(format!("{n}.master"))?;
                s.param.value().copy_from(&m.to_dtype(s.param.value().dtype())?)?;
                s.master = Some(m);
            }
            s.step = *steps.get(&n).ok_or_else(|| invalid!("AdamW", "the saved state has no step count for {n}"))?;
        }
        Ok(())
    }

    /// Forgets the moments and step counts (ProRL resets them with its reference), keeping
    /// the weights and their f32 masters: the next step is a first step from where the
    /// weights are.
    pub fn reset_moments(&mut self) -> Result<()> {
        for s in &mut self.slots {
            let v = s.param.value();
            s.exp_avg = Tensor::zeros(v.shape().clone(), DType::F32, v.device())?;
            s.exp_avg_sq = Tensor::zeros(v.shape().clone(), DType::F32, v.device())?;
            s.step = 0;
        }
        Ok(())
    }

    /// The f32 weights of every parameter (masters for half-precision ones): what a
    /// checkpoint must hold for a resumed run to continue bit for bit.
    pub fn master_weights(&self) -> impl Iterator<Item = (&Param, &Tensor)> {
        self.slots.iter().map(|s| (&s.param, s.master.as_ref().unwrap_or(s.param.value())))
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm` (when `max_norm >
/// 0`), as `clip_grad_norm_` does (`coef = max_norm / (norm + 1e-6)`, capped at 1).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: f64) -> Result<f64> {
    let norm = grads.global_norm()?;
    if max_norm > 0.0 {
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        if coef < 1.0 {
            grads.scale(coef as f32)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use artist_autograd::Tape;
    use artist_tensor::Device;

    /// After `reset_moments`, a step is the step a fresh optimiser takes from the same
    /// weights, to the bit; without the reset it is not.
    #[test]
    fn a_reset_optimiser_steps_as_a_fresh_one() {
        let w0: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let param = |name: &str| Param::new(name, Tensor::from_vec(w0.clone(), (3, 4), Device::Cpu).unwrap());
        let grads = |p: &Param, k: f32| {
            let tape = Tape::new();
            let x = tape.param(p);
            tape.backward(&x.mul(&x).unwrap().mul_scalar(k).unwrap().sum_all().unwrap()).unwrap()
        };
        let config = AdamWConfig::default();
        // Two copies trained alike for three steps; then one forgets its moments.
        let (reset, kept, fresh) = (param("w"), param("w"), param("w"));
        let (mut opt_reset, mut opt_kept) =
            (AdamW::new(&[&reset], config).unwrap(), AdamW::new(&[&kept], config).unwrap());
        for k in [1.0, -0.5, 2.0] {
            opt_reset.step(&grads(&reset, k), 1e-2).unwrap();
            opt_kept.step(&grads(&kept, k), 1e-2).unwrap();
        }
        opt_reset.reset_moments().unwrap();
        assert_eq!(opt_reset.state().1["w"], 0);
        fresh.value().copy_from(reset.value()).unwrap();
        let mut opt_fresh = AdamW::new(&[&fresh], config).unwrap();
        for (p, opt) in [(&reset, &mut opt_reset), (&kept, &mut opt_kept), (&fresh, &mut opt_fresh)] {
            opt.step(&grads(p, 0.7), 1e-2).unwrap();
        }
        let bits = |p: &Param| -> Vec<u32> { p.value().to_f32_vec().unwrap().iter().map(|x| x.to_bits()).collect() };
        assert_eq!(bits(&reset), bits(&fresh));
        assert_ne!(bits(&kept), bits(&fresh), "the moments made no difference: the test shows nothing");
    }
}
