//! `Tape::backward_with`: each parameter's gradient is reported once, as soon as it is
//! final, and the accumulated gradients are the bits of `merge(backward())`.

use std::collections::HashMap;

use artist_autograd::{Ctx, Gradients, Param, ParamId, Tape, Var, checkpoint};
use artist_tensor::{Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_tensor(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5..0.5)).collect();
    Tensor::from_vec(v, dims.to_vec(), Device::Cpu).unwrap()
}

struct Net {
    /// Used first (in layer 0) and last (the head), like tied embeddings.
    tied: Param,
    layers: Vec<Param>,
    norm: Param,
    /// Never used by the loss.
    unused: Param,
}

impl Net {
    fn new() -> Net {
        let mut g = ChaCha8Rng::seed_from_u64(5);
        Net {
            tied: Param::new("tied", rand_tensor(&mut g, &[8, 8])),
            layers: (0..4).map(|i| Param::new(format!("layer{i}"), rand_tensor(&mut g, &[8, 8]))).collect(),
            norm: Param::new("norm", rand_tensor(&mut g, &[8])),
            unused: Param::new("unused", rand_tensor(&mut g, &[8])),
        }
    }

    fn all(&self) -> Vec<&Param> {
        let mut v = vec![&self.tied, &self.norm, &self.unused];
        v.extend(self.layers.iter());
        v
    }

    fn loss(&self, ctx: &Ctx, x: &Tensor) -> Var {
        let mut h = Var::constant(x.clone()).linear(&ctx.param(&self.tied), None).unwrap();
        for w in &self.layers {
            let (w, norm) = (w.clone(), self.norm.clone());
            let block = move |ctx: &Ctx, xs: &[Var]| -> Result<Var> {
                let n = xs[0].rms_norm(&ctx.param(&norm), 1e-6)?;
                xs[0].add(&n.linear(&ctx.param(&w), None)?.silu()?)
            };
            h = if ctx.checkpointing() { checkpoint(ctx, &[&h], block).unwrap() } else { block(ctx, &[h]).unwrap() };
        }
        h.linear(&ctx.param(&self.tied), None).unwrap().sqr().unwrap().mean_all().unwrap()
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_f32_vec().unwrap().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn gradients_are_reported_once_final_and_accumulate_like_merge() {
    let net = Net::new();
    let names: HashMap<ParamId, String> = net.all().iter().map(|p| (p.id(), p.name().to_string())).collect();
    let mut g = ChaCha8Rng::seed_from_u64(9);
    let (x1, x2) = (rand_tensor(&mut g, &[5, 8]), rand_tensor(&mut g, &[5, 8]));
    for ckpt in [false, true] {
        for accumulate in [false, true] {
            // The reference: gradient accumulation as the trainers did it.
            let mut want = Gradients::default();
            if accumulate {
                let t = Tape::new();
                want.merge(t.backward(&net.loss(&Ctx::training(&t).with_checkpointing(ckpt), &x1)).unwrap()).unwrap();
            }
            let t = Tape::new();
            want.merge(t.backward(&net.loss(&Ctx::training(&t).with_checkpointing(ckpt), &x2)).unwrap()).unwrap();

            let mut total = Gradients::default();
            if accumulate {
                let t = Tape::new();
                total.merge(t.backward(&net.loss(&Ctx::training(&t).with_checkpointing(ckpt), &x1)).unwrap()).unwrap();
            }
            let t = Tape::new();
            let loss = net.loss(&Ctx::training(&t).with_checkpointing(ckpt), &x2);
            // A parameter recorded after the loss is not the loss's business.
            let late = Param::new("late", Tensor::ones(8, artist_tensor::DType::F32, Device::Cpu).unwrap());
            let _ = t.param(&late).exp().unwrap();
            let mut reports: Vec<(String, Vec<u32>, usize)> = Vec::new();
            t.backward_with(&loss, &mut total, &mut |id, grads| {
                let name = names.get(&id).cloned().unwrap_or_else(|| "?".into());
                reports.push((name, bits(grads.get(id).expect("every used parameter gets a gradient")), grads.len()));
            })
            .unwrap();

            let case = format!("checkpointing {ckpt}, accumulating {accumulate}");
            let order: Vec<&str> = reports.iter().map(|r| r.0.as_str()).collect();
            // Last layer first; the tied weight once, after layer 0 (its first use is
            // before layer 0, its last after layer 3).
            assert_eq!(order, ["layer3", "layer2", "layer1", "layer0", "norm", "tied"], "{case}");
            for (name, at_report, _) in &reports {
                let p = net.all().into_iter().find(|p| p.name() == name).unwrap();
                assert_eq!(at_report, &bits(total.get(p.id()).unwrap()), "{case}: {name} changed after its report");
                assert_eq!(at_report, &bits(want.get(p.id()).unwrap()), "{case}: {name} differs from merge(backward)");
            }
            assert_eq!(total.len(), want.len(), "{case}");
            assert!(total.get(net.unused.id()).is_none() && total.get(late.id()).is_none(), "{case}");
            if !accumulate {
                // Reported while backward still had the layers below to do.
                assert_eq!(reports[0].2, 1, "{case}: layer3 was reported only after other gradients arrived");
            }
        }
    }
}
