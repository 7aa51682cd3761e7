//! Every op's backward against central finite differences.
//!
//! Each check builds `L = sum(f(inputs) * R)` with a fixed random `R`, takes the analytic
//! gradient from the tape, and compares it on sampled elements with
//! `(L(x + h) - L(x - h)) / 2h`, `L` summed in f64. The ops compute in f32, so the
//! tolerance is `|fd - analytic| <= 2e-3 * max(1, max |analytic|)`, with h = 1e-2
//! (truncation error ~h^2, rounding ~1e-7 |L| / h). A wrong sign, a missing term or a
//! transposed gradient is off by O(1) and fails.

use artist_autograd::{
    Ctx, Param, Tape, Var, checkpoint, token_logprobs, token_logprobs_in, token_logprobs_with_entropy_in,
};
use artist_tensor::{DType, Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const H: f32 = 1e-2;
const TOL: f64 = 2e-3;

fn rand_tensor(rng: &mut ChaCha8Rng, dims: &[usize], lo: f32, hi: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, dims.to_vec(), Device::Cpu).unwrap()
}

/// `sum(out * r)` in f64.
fn weighted_sum(out: &Tensor, r: &[f32]) -> f64 {
    let v = out.to_f32_vec().unwrap();
    v.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Checks the gradients of `f` with respect to every input.
fn check(name: &str, inputs: Vec<Tensor>, f: impl Fn(&[Var]) -> Result<Var>) {
    let mut rng = ChaCha8Rng::seed_from_u64(name.len() as u64 * 7919);
    let params: Vec<Param> =
        inputs.iter().enumerate().map(|(i, t)| Param::new(format!("x{i}"), t.copy().unwrap())).collect();
    let tape = Tape::new();
    let vars: Vec<Var> = params.iter().map(|p| tape.param(p)).collect();
    let out = f(&vars).unwrap();
    let r: Vec<f32> = (0..out.value().elem_count()).map(|_| rng.random_range(-1.0..1.0)).collect();
    let rt = Tensor::from_vec(r.clone(), out.shape().clone(), Device::Cpu).unwrap();
    let loss = out.mul(&Var::constant(rt)).unwrap().sum_all().unwrap();
    let grads = tape.backward(&loss).unwrap();

    let eval = |vals: &[Tensor]| -> f64 {
        let vars: Vec<Var> = vals.iter().map(|t| Var::constant(t.clone())).collect();
        weighted_sum(f(&vars).unwrap().value(), &r)
    };
    for (i, p) in params.iter().enumerate() {
        let an = match grads.get(p.id()) {
            Some(g) => g.to_f32_vec().unwrap(),
            None => vec![0.0; inputs[i].elem_count()],
        };
        assert_eq!(an.len(), inputs[i].elem_count(), "{name}: gradient {i} has the wrong size");
        let gmax = an.iter().fold(0f64, |m, &g| m.max(g.abs() as f64));
        let base = inputs[i].to_f32_vec().unwrap();
        let n = base.len();
        let picks: Vec<usize> =
            if n <= 48 { (0..n).collect() } else { (0..48).map(|_| rng.random_range(0..n)).collect() };
        for j in picks {
            let at = |delta: f32| {
                let mut v = base.clone();
                v[j] += delta;
                let mut vals: Vec<Tensor> = inputs.iter().map(|t| t.copy().unwrap()).collect();
                vals[i] = Tensor::from_vec(v, inputs[i].shape().clone(), Device::Cpu).unwrap();
                eval(&vals)
            };
            let fd = (at(H) - at(-H)) / (2.0 * H as f64);
            let err = (fd - an[j] as f64).abs();
            assert!(
                err <= TOL * gmax.max(1.0),
                "{name}: d/dx{i}[{j}] analytic {} vs finite difference {fd} (max |grad| {gmax})",
                an[j]
            );
        }
    }
}

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(17)
}

#[test]
fn elementwise_binary_with_broadcasting() {
    let mut g = rng();
    let (a, b) = (rand_tensor(&mut g, &[3, 4], -1.0, 1.0), rand_tensor(&mut g, &[1, 4], 0.5, 1.5));
    check("add", vec![a.clone(), b.clone()], |x| x[0].add(&x[1]));
    check("sub", vec![a.clone(), b.clone()], |x| x[0].sub(&x[1]));
    check("mul", vec![a.clone(), b.clone()], |x| x[0].mul(&x[1]));
    check("div", vec![a.clone(), b.clone()], |x| x[0].div(&x[1]));
    // Inputs kept apart so no perturbation crosses a tie.
    let c = rand_tensor(&mut g, &[3, 4], 2.0, 3.0);
    check("minimum", vec![a.clone(), c.clone()], |x| x[0].minimum(&x[1]));
    check("maximum", vec![c.clone(), a.clone()], |x| x[0].maximum(&x[1]));
}

#[test]
fn elementwise_unary() {
    let mut g = rng();
    let x = rand_tensor(&mut g, &[5, 6], -2.0, 2.0);
    let pos = rand_tensor(&mut g, &[5, 6], 0.5, 2.0);
    check("exp", vec![x.clone()], |v| v[0].exp());
    check("log", vec![pos.clone()], |v| v[0].log());
    check("sqr", vec![x.clone()], |v| v[0].sqr());
    check("sqrt", vec![pos.clone()], |v| v[0].sqrt());
    check("silu", vec![x.clone()], |v| v[0].silu());
    check("sigmoid", vec![x.clone()], |v| v[0].sigmoid());
    check("tanh", vec![x.clone()], |v| v[0].tanh());
    check("neg", vec![x.clone()], |v| v[0].neg());
    check("affine", vec![x.clone()], |v| v[0].affine(-1.5, 0.25));
    // Values between the bounds and beyond them, none within h of a bound.
    let c = Tensor::from_vec(vec![-3.0f32, -0.5, 0.2, 0.7, 2.5, -1.7], 6, Device::Cpu).unwrap();
    check("clamp", vec![c], |v| v[0].clamp(-1.0, 1.0));
}

#[test]
fn reductions() {
    let mut g = rng();
    let x = rand_tensor(&mut g, &[3, 4, 5], -1.0, 1.0);
    check("sum_all", vec![x.clone()], |v| v[0].sum_all());
    check("mean_all", vec![x.clone()], |v| v[0].mean_all());
    check("sum_keepdim(1)", vec![x.clone()], |v| v[0].sum_keepdim(1));
    check("sum_keepdim(-1)", vec![x.clone()], |v| v[0].sum_keepdim(-1));
}

#[test]
fn matrix_products() {
    let mut g = rng();
    let (a, b) = (rand_tensor(&mut g, &[2, 3, 4], -1.0, 1.0), rand_tensor(&mut g, &[2, 4, 5], -1.0, 1.0));
    check("matmul batched", vec![a.clone(), b], |v| v[0].matmul(&v[1]));
    let b2 = rand_tensor(&mut g, &[4, 5], -1.0, 1.0);
    check("matmul broadcast rhs", vec![a.clone(), b2], |v| v[0].matmul(&v[1]));
    let bt = rand_tensor(&mut g, &[2, 5, 4], -1.0, 1.0);
    check("matmul transposed view", vec![a.clone(), bt], |v| v[0].matmul(&v[1].transpose(-2, -1)?));
    let (x, w, bias) = (
        rand_tensor(&mut g, &[2, 3, 6], -1.0, 1.0),
        rand_tensor(&mut g, &[5, 6], -1.0, 1.0),
        rand_tensor(&mut g, &[5], -1.0, 1.0),
    );
    check("linear with bias", vec![x.clone(), w.clone(), bias], |v| v[0].linear(&v[1], Some(&v[2])));
    // Many rows: the gemm path rather than the matrix-vector one.
    let xl = rand_tensor(&mut g, &[40, 6], -1.0, 1.0);
    check("linear 40 rows", vec![xl, w.clone()], |v| v[0].linear(&v[1], None));
}

/// A bf16 weight: the gradients equal those of its f32 widening.
#[test]
fn linear_with_bf16_weight_matches_its_f32_widening() {
    let mut g = rng();
    let x = rand_tensor(&mut g, &[20, 8], -1.0, 1.0);
    let w16 = rand_tensor(&mut g, &[6, 8], -1.0, 1.0).to_dtype(DType::BF16).unwrap();
    let w32 = w16.to_dtype(DType::F32).unwrap();
    let grads = |w: &Tensor| {
        let (px, pw) = (Param::new("x", x.clone()), Param::new("w", w.clone()));
        let tape = Tape::new();
        let y = tape.param(&px).linear(&tape.param(&pw), None).unwrap();
        let loss = y.sqr().unwrap().sum_all().unwrap();
        let gr = tape.backward(&loss).unwrap();
        (gr.get(px.id()).unwrap().to_f32_vec().unwrap(), gr.get(pw.id()).unwrap().clone())
    };
    let (dx16, dw16) = grads(&w16);
    let (dx32, dw32) = grads(&w32);
    assert_eq!(dw16.dtype(), DType::F32);
    for (a, b) in dx16.iter().zip(&dx32) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "dx {a} vs {b}");
    }
    for (a, b) in dw16.to_f32_vec().unwrap().iter().zip(dw32.to_f32_vec().unwrap()) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "dw {a} vs {b}");
    }
}

/// `x @ w^T` rounded to `dt` first, in f64 from the rounded values: an independent
/// reference for the bf16 products (`a: [m, k]`, `b: [n, k]`, both as f32 row-major).
fn rounded_product(a: &Tensor, b: &Tensor, dt: DType) -> Vec<f64> {
    let r = |t: &Tensor| t.to_dtype(dt).unwrap().to_f32_vec().unwrap();
    let (av, bv) = (r(a), r(b));
    let (m, k, n) = (a.dims()[0], a.dims()[1], b.dims()[0]);
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| av[i * k + p] as f64 * bv[j * k + p] as f64).sum();
        }
    }
    out
}

/// A linear layer in bf16 (autocast's products): its value and gradients are the f32
/// products of the rounded operands (activations and weight forward; output gradient
/// and weight, output gradient and activations backward), against an f64 reference of
/// the same rounded values (within 1e-5 of the largest term); and they are not the f32
/// layer's (rounding happened) but within bf16's reach of it. Rounding makes finite
/// differences meaningless here: the function is flat between bf16 neighbours.
#[test]
fn linear_in_bf16_multiplies_the_rounded_operands() {
    let mut g = rng();
    let (m, k, n) = (24, 40, 12);
    let x = rand_tensor(&mut g, &[m, k], -1.0, 1.0);
    let w = rand_tensor(&mut g, &[n, k], -1.0, 1.0);
    let bias = rand_tensor(&mut g, &[n], -1.0, 1.0);
    let r = rand_tensor(&mut g, &[m, n], -1.0, 1.0); // the output gradient
    let run = |compute: Option<DType>| {
        let (px, pw, pb) = (Param::new("x", x.clone()), Param::new("w", w.clone()), Param::new("b", bias.clone()));
        let tape = Tape::new();
        let (vx, vw, vb) = (tape.param(&px), tape.param(&pw), tape.param(&pb));
        let y = match compute {
            Some(dt) => vx.linear_in(&vw, Some(&vb), dt).unwrap(),
            None => vx.linear(&vw, Some(&vb)).unwrap(),
        };
        let loss = y.mul(&Var::constant(r.clone())).unwrap().sum_all().unwrap();
        let gr = tape.backward(&loss).unwrap();
        let get = |p: &Param| gr.get(p.id()).unwrap().clone();
        (y.value().to_f32_vec().unwrap(), get(&px), get(&pw), get(&pb))
    };
    let (y, dx, dw, db) = run(Some(DType::BF16));
    assert_eq!((dx.dtype(), dw.dtype()), (DType::F32, DType::F32), "gradients stay f32");
    let close = |what: &str, got: &[f32], want: &[f64]| {
        let scale = want.iter().fold(1f64, |a, b| a.max(b.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((*a as f64 - b).abs() <= 1e-5 * scale, "{what}[{i}]: {a} vs {b}");
        }
    };
    let bv = bias.to_f32_vec().unwrap();
    let want_y: Vec<f64> =
        rounded_product(&x, &w, DType::BF16).iter().enumerate().map(|(i, v)| v + bv[i % n] as f64).collect();
    close("y", &y, &want_y);
    // dx = r @ w: [m, n] x [n, k]; as rows of an `a @ b^T`, b = w^T.
    close("dx", &dx.to_f32_vec().unwrap(), &rounded_product(&r, &w.t().unwrap().contiguous().unwrap(), DType::BF16));
    // dw = r^T @ x.
    let (rt, xt) = (r.t().unwrap().contiguous().unwrap(), x.t().unwrap().contiguous().unwrap());
    close("dw", &dw.to_f32_vec().unwrap(), &rounded_product(&rt, &xt, DType::BF16));
    let rv = r.to_f32_vec().unwrap();
    let want_db: Vec<f64> = (0..n).map(|j| (0..m).map(|i| rv[i * n + j] as f64).sum()).collect();
    close("db", &db.to_f32_vec().unwrap(), &want_db);

    // Against the f32 layer: not equal, within bf16 rounding (2^-8 relative per operand).
    let (y32, dx32, dw32, _) = run(None);
    for (what, a, b) in [
        ("y", y.clone(), y32),
        ("dx", dx.to_f32_vec().unwrap(), dx32.to_f32_vec().unwrap()),
        ("dw", dw.to_f32_vec().unwrap(), dw32.to_f32_vec().unwrap()),
    ] {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(&b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff > 0.0, "{what}: bf16 products gave the f32 bits");
        assert!(diff <= 2e-2 * scale, "{what}: {diff} from f32 (largest {scale})");
    }
    // f32 compute is the plain layer; a weight already in bf16 is used as it is.
    let (y_same, ..) = run(Some(DType::F32));
    assert_eq!(y_same, run(None).0);
    let y16 = x.linear_in(&w.to_dtype(DType::BF16).unwrap(), Some(&bias), DType::BF16).unwrap();
    assert_eq!(y16.to_f32_vec().unwrap(), y);
    // Bad requests are errors, not panics.
    assert!(x.linear_in(&w, None, DType::U32).is_err());
    assert!(x.linear_in(&w.narrow(1, 0, 8).unwrap(), None, DType::BF16).is_err());
}

/// `token_logprobs_in` with bf16 products: the value of the rounded projection followed
/// by an f32 log-softmax, and gradients equal to the same composition of differentiable
/// ops (`linear_in`, `log_softmax`, a one-hot pick) on the tape, for any chunking.
#[test]
fn token_logprobs_in_bf16_equals_its_composition() {
    let mut g = rng();
    let (h, w) = (rand_tensor(&mut g, &[9, 16], -1.0, 1.0), rand_tensor(&mut g, &[13, 16], -1.0, 1.0));
    let targets = vec![3u32, 0, 12, 3, 7, 1, 5, 9, 2];
    let scale = 0.7;
    let grads = |f: &dyn Fn(&Var, &Var) -> Var| {
        let (ph, pw) = (Param::new("h", h.clone()), Param::new("w", w.clone()));
        let tape = Tape::new();
        let lp = f(&tape.param(&ph), &tape.param(&pw));
        let weights = Tensor::from_vec((0..9).map(|i| 0.5 - i as f32 * 0.1).collect::<Vec<_>>(), 9, Device::Cpu);
        let loss = lp.mul(&Var::constant(weights.unwrap())).unwrap().sum_all().unwrap();
        let gr = tape.backward(&loss).unwrap();
        let v = |p: &Param| gr.get(p.id()).unwrap().to_f32_vec().unwrap();
        (lp.value().to_f32_vec().unwrap(), v(&ph), v(&pw))
    };
    let mut onehot = vec![0f32; 9 * 13];
    for (i, &t) in targets.iter().enumerate() {
        onehot[i * 13 + t as usize] = 1.0;
    }
    let onehot = Var::constant(Tensor::from_vec(onehot, (9, 13), Device::Cpu).unwrap());
    let want = grads(&|h, w| {
        let z = h.linear_in(w, None, DType::BF16).unwrap().mul_scalar(scale).unwrap();
        z.log_softmax(-1).unwrap().mul(&onehot).unwrap().sum_keepdim(-1).unwrap().reshape(9).unwrap()
    });
    for chunk in [2, 100] {
        let got = grads(&|h, w| token_logprobs_in(h, w, &targets, scale, Some(chunk), Some(DType::BF16)).unwrap());
        for (what, a, b) in [("value", &got.0, &want.0), ("dh", &got.1, &want.1), ("dw", &got.2, &want.2)] {
            for (x, y) in a.iter().zip(b.iter()) {
                assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "chunk {chunk} {what}: {x} vs {y}");
            }
        }
    }
    // And not the f32 projection's values.
    let f32v = token_logprobs(&Var::constant(h.clone()), &Var::constant(w.clone()), &targets, scale, None).unwrap();
    assert_ne!(f32v.value().to_f32_vec().unwrap(), want.0);
}

#[test]
fn views_and_indexing() {
    let mut g = rng();
    let x = rand_tensor(&mut g, &[3, 4, 5], -1.0, 1.0);
    check("reshape", vec![x.clone()], |v| v[0].reshape((12, 5)));
    check("permute", vec![x.clone()], |v| v[0].permute(&[2, 0, 1]));
    check("permute then reshape", vec![x.clone()], |v| v[0].permute(&[1, 0, 2])?.reshape((4, 15)));
    check("transpose", vec![x.clone()], |v| v[0].transpose(0, 2));
    check("narrow", vec![x.clone()], |v| v[0].narrow(1, 1, 2));
    // Slices whose gradients the tape adds in place: several of one input, overlapping,
    // beside a full gradient, and after a gradient that shares its storage with another
    // input's (`add` hands both inputs the same tensor), which must not be written.
    check("narrows, overlapping", vec![x.clone()], |v| {
        let (a, b) = (v[0].narrow(1, 0, 3)?, v[0].narrow(1, 1, 3)?);
        let ab = a.mul_scalar(2.0)?.add(&b.mul_scalar(-1.5)?)?;
        Var::cat(&[&ab, &v[0].narrow(0, 1, 2)?.narrow(1, 0, 3)?], 0)
    });
    check("narrows beside a full gradient", vec![x.clone()], |v| {
        let s = v[0].narrow(2, 1, 3)?.mul(&v[0].narrow(2, 0, 3)?)?;
        Var::cat(&[&s, &v[0].mul_scalar(0.5)?], 2)
    });
    check("a slice after a shared gradient", vec![x.clone()], |v| {
        let (a, b) = (v[0].mul_scalar(2.0)?, v[0].mul_scalar(3.0)?);
        let e = a.narrow(1, 0, 2)?.mul_scalar(7.0)?; // recorded first, differentiated last
        let sum = a.add(&b)?.mul_scalar(1.5)?; // add's inputs get the same contiguous tensor
        Var::cat(&[&sum, &e], 1)
    });
    let y = rand_tensor(&mut g, &[3, 2, 5], -1.0, 1.0);
    check("cat", vec![x.clone(), y], |v| Var::cat(&[&v[0], &v[1]], 1));
    let ids = Tensor::from_vec(vec![2u32, 0, 2, 1], 4, Device::Cpu).unwrap();
    check("index_select repeated", vec![x.clone()], |v| v[0].index_select(&ids, 1));
    let table = rand_tensor(&mut g, &[7, 3], -1.0, 1.0);
    let tok = Tensor::from_vec(vec![6u32, 1, 1, 3, 0, 6], (2, 3), Device::Cpu).unwrap();
    check("embedding", vec![table], |v| Var::embedding(&tok, &v[0]));
    check("to_dtype round trip", vec![x.clone()], |v| v[0].to_dtype(DType::F32)?.mul_scalar(2.0));
}

#[test]
fn normalisation_and_attention_pieces() {
    let mut g = rng();
    let s = rand_tensor(&mut g, &[2, 3, 6], -2.0, 2.0);
    check("softmax(-1)", vec![s.clone()], |v| v[0].softmax(-1));
    check("softmax(1)", vec![s.clone()], |v| v[0].softmax(1));
    check("log_softmax(-1)", vec![s.clone()], |v| v[0].log_softmax(-1));
    let mask = Tensor::causal_mask(3, 6, Device::Cpu).unwrap();
    check("masked_fill + softmax", vec![s.clone()], |v| v[0].masked_fill(&mask, f32::NEG_INFINITY)?.softmax(-1));
    let (x, w) = (rand_tensor(&mut g, &[4, 8], -2.0, 2.0), rand_tensor(&mut g, &[8], 0.5, 1.5));
    check("rms_norm", vec![x.clone(), w], |v| v[0].rms_norm(&v[1], 1e-6));
    let q = rand_tensor(&mut g, &[2, 3, 2, 8], -1.0, 1.0);
    let pos: Vec<u32> = vec![0, 5, 9];
    let (cos, sin) = artist_tensor::rope_tables(&pos, 8, 100.0, Device::Cpu).unwrap();
    check("rope", vec![q], |v| v[0].rope(&cos, &sin));
    let (gate, up) = (rand_tensor(&mut g, &[4, 5], -3.0, 3.0), rand_tensor(&mut g, &[4, 5], -1.0, 1.0));
    check("silu_mul", vec![gate, up], |v| v[0].silu_mul(&v[1]));
    let gate_up = rand_tensor(&mut g, &[4, 10], -3.0, 3.0);
    check("swiglu", vec![gate_up], |v| v[0].swiglu());
    // Fused causal attention: GQA (4 query heads over 2 KV heads), the queries being the
    // last 3 of 5 positions.
    let (q, k, v) = (
        rand_tensor(&mut g, &[3, 4, 6], -1.0, 1.0),
        rand_tensor(&mut g, &[5, 2, 6], -1.0, 1.0),
        rand_tensor(&mut g, &[5, 2, 6], -1.0, 1.0),
    );
    check("causal_attention", vec![q, k, v], |v| Var::causal_attention(&v[0], &v[1], &v[2], 0.4));
}

#[test]
fn chunked_token_logprobs() {
    let mut g = rng();
    let (h, w) = (rand_tensor(&mut g, &[7, 6], -1.0, 1.0), rand_tensor(&mut g, &[11, 6], -1.0, 1.0));
    let targets = vec![3u32, 0, 10, 3, 7, 1, 5];
    for chunk in [1, 3, 100] {
        let t = targets.clone();
        check(&format!("token_logprobs chunk {chunk}"), vec![h.clone(), w.clone()], move |v| {
            token_logprobs(&v[0], &v[1], &t, 0.7, Some(chunk))
        });
    }
    // Value: the same as log_softmax + gather over the whole matrix.
    let lp = token_logprobs(&Var::constant(h.clone()), &Var::constant(w.clone()), &targets, 1.0, Some(2)).unwrap();
    let full = h.linear(&w, None).unwrap().log_softmax(-1).unwrap();
    let idx = Tensor::from_vec(targets.clone(), (7, 1), Device::Cpu).unwrap();
    let want = full.gather(1, &idx).unwrap().to_f32_vec().unwrap();
    for (a, b) in lp.value().to_f32_vec().unwrap().iter().zip(&want) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    assert!(token_logprobs(&Var::constant(h), &Var::constant(w), &[11, 0, 0, 0, 0, 0, 0], 1.0, None).is_err());
}

/// The entropy beside the logprobs: each row's `-sum p log p` at the scale, against f64
/// from the logits, for any chunking; the logprobs are the same bits as without it.
#[test]
fn token_entropies_match_f64() {
    let mut g = rng();
    let (h, w) = (rand_tensor(&mut g, &[7, 6], -2.0, 2.0), rand_tensor(&mut g, &[11, 6], -2.0, 2.0));
    let targets = vec![3u32, 0, 10, 3, 7, 1, 5];
    let logits = h.linear(&w, None).unwrap().to_vec2::<f32>().unwrap();
    let scale = 1.0 / 0.7;
    let want: Vec<f64> = logits
        .iter()
        .map(|row| {
            let z: Vec<f64> = row.iter().map(|&x| x as f64 * scale as f64).collect();
            let max = z.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + z.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            -z.iter().map(|x| (x - lse).exp() * (x - lse)).sum::<f64>()
        })
        .collect();
    let (hv, wv) = (Var::constant(h.clone()), Var::constant(w.clone()));
    let plain = token_logprobs(&hv, &wv, &targets, scale, Some(3)).unwrap().value().to_f32_vec().unwrap();
    for chunk in [1, 3, 100] {
        let (lp, ent) = token_logprobs_with_entropy_in(&hv, &wv, &targets, scale, Some(chunk), None).unwrap();
        let ent = ent.value().to_f32_vec().unwrap();
        assert_eq!(ent.len(), 7);
        for (a, b) in ent.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-5 * b.max(1.0), "chunk {chunk}: entropy {a} vs {b}");
        }
        let lp = lp.value().to_f32_vec().unwrap();
        assert!(lp.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "chunk {chunk}: logprobs moved");
    }
    // A uniform row has entropy ln(vocab); a one-hot one about 0.
    let zero = Var::constant(Tensor::zeros((1, 6), DType::F32, Device::Cpu).unwrap());
    let (_, e) = token_logprobs_with_entropy_in(&zero, &wv, &[2], 1.0, None, None).unwrap();
    let e = e.value().to_f32_vec().unwrap();
    assert!((e[0] as f64 - 11f64.ln()).abs() < 1e-6, "{}", e[0]);
}

/// The entropy's gradient (an entropy bonus): finite differences of the entropy alone and of
/// logprobs and entropy weighted together, for any chunking; with no gradient reaching the
/// entropy, the logprobs' gradients are the plain op's to the bit.
#[test]
fn token_entropy_gradients() {
    let mut g = rng();
    let (h, w) = (rand_tensor(&mut g, &[7, 6], -1.0, 1.0), rand_tensor(&mut g, &[11, 6], -1.0, 1.0));
    let targets = vec![3u32, 0, 10, 3, 7, 1, 5];
    for chunk in [1, 3, 100] {
        let t = targets.clone();
        check(&format!("token entropy chunk {chunk}"), vec![h.clone(), w.clone()], move |v| {
            Ok(token_logprobs_with_entropy_in(&v[0], &v[1], &t, 0.7, Some(chunk), None)?.1)
        });
        let t = targets.clone();
        check(&format!("token logprobs and entropy chunk {chunk}"), vec![h.clone(), w.clone()], move |v| {
            let (lp, ent) = token_logprobs_with_entropy_in(&v[0], &v[1], &t, 1.3, Some(chunk), None)?;
            Var::cat(&[&lp, &ent], 0)
        });
    }
    let grads_of = |with_entropy: bool| {
        let (ph, pw) = (Param::new("h", h.copy().unwrap()), Param::new("w", w.copy().unwrap()));
        let tape = Tape::new();
        let (hv, wv) = (tape.param(&ph), tape.param(&pw));
        let lp = if with_entropy {
            token_logprobs_with_entropy_in(&hv, &wv, &targets, 0.7, Some(3), None).unwrap().0
        } else {
            token_logprobs(&hv, &wv, &targets, 0.7, Some(3)).unwrap()
        };
        let gr = tape.backward(&lp.sum_all().unwrap()).unwrap();
        [gr.get(ph.id()).unwrap().to_f32_vec().unwrap(), gr.get(pw.id()).unwrap().to_f32_vec().unwrap()]
    };
    let (with, without) = (grads_of(true), grads_of(false));
    for (a, b) in with.iter().zip(&without) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "an unused entropy moved the gradients");
    }
}

/// A block run under `checkpoint` gives the gradients of the same block run straight,
/// for its input and for the parameters inside it.
#[test]
fn checkpointed_block_gives_the_same_gradients() {
    let mut g = rng();
    let x0 = rand_tensor(&mut g, &[5, 8], -1.0, 1.0);
    let w1 = Param::new("w1", rand_tensor(&mut g, &[8, 8], -0.5, 0.5));
    let norm = Param::new("norm", rand_tensor(&mut g, &[8], 0.5, 1.5));
    let block = {
        let (w1, norm) = (w1.clone(), norm.clone());
        move |ctx: &Ctx, xs: &[Var]| -> Result<Var> {
            let h = xs[0].rms_norm(&ctx.param(&norm), 1e-6)?;
            xs[0].add(&h.linear(&ctx.param(&w1), None)?.silu()?)
        }
    };
    let run = |ckpt: bool| {
        let px = Param::new("x", x0.clone());
        let tape = Tape::new();
        let ctx = Ctx::training(&tape).with_checkpointing(ckpt);
        let x = tape.param(&px);
        let mut y = x.clone();
        for _ in 0..2 {
            y = if ctx.checkpointing() {
                checkpoint(&ctx, &[&y], block.clone()).unwrap()
            } else {
                block(&ctx, &[y]).unwrap()
            };
        }
        let loss = y.sqr().unwrap().mean_all().unwrap();
        let nodes = tape.len();
        let gr = tape.backward(&loss).unwrap();
        let get = |p: &Param| gr.get(p.id()).unwrap().to_f32_vec().unwrap();
        (nodes, loss.to_scalar().unwrap(), get(&px), get(&w1), get(&norm))
    };
    let (n_plain, l_plain, dx, dw, dn) = run(false);
    let (n_ckpt, l_ckpt, dx_c, dw_c, dn_c) = run(true);
    assert!(n_ckpt < n_plain, "checkpointing records {n_ckpt} nodes, straight {n_plain}");
    assert_eq!(l_plain, l_ckpt);
    for (a, b) in [(dx, dx_c), (dw, dw_c), (dn, dn_c)] {
        assert_eq!(a.len(), b.len());
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-6 * p.abs().max(1.0), "{p} vs {q}");
        }
    }
}

#[test]
fn frozen_params_and_inference_record_nothing() {
    let mut w = Param::new("w", Tensor::ones((3, 3), DType::F32, Device::Cpu).unwrap());
    let x = Var::constant(Tensor::ones((2, 3), DType::F32, Device::Cpu).unwrap());
    let ctx = Ctx::inference();
    let y = x.linear(&ctx.param(&w), None).unwrap().softmax(-1).unwrap();
    assert!(!y.is_tracked());
    w.set_trainable(false);
    let tape = Tape::new();
    let y = x.linear(&tape.param(&w), None).unwrap();
    assert!(!y.is_tracked());
    assert!(tape.is_empty());
    // A non-scalar loss is an error, not a panic.
    let p = Param::new("p", Tensor::ones(3, DType::F32, Device::Cpu).unwrap());
    let t = Tape::new();
    assert!(t.backward(&t.param(&p).exp().unwrap()).is_err());
}

/// Causal attention composed of taped ops (products, mask, softmax), as torch's eager
/// attention runs: each piece is checked by finite differences above.
fn composed_attention(q: &Var, k: &Var, v: &Var, scale: f32) -> Result<Var> {
    let [t, heads, d] = q.value().dims_n("attention")?;
    let [len, kv_heads, _] = k.value().dims_n("attention")?;
    let rep = heads / kv_heads;
    let qg = q.reshape((t, kv_heads, rep, d))?.permute(&[1, 2, 0, 3])?.reshape((kv_heads, rep * t, d))?;
    let scores = qg.matmul(&k.permute(&[1, 2, 0])?)?.mul_scalar(scale)?;
    let mask = Tensor::causal_mask(t, len, Device::Cpu)?;
    let scores = scores.reshape((kv_heads, rep, t, len))?.masked_fill(&mask, f32::NEG_INFINITY)?.reshape((
        kv_heads,
        rep * t,
        len,
    ))?;
    let out = scores.softmax(-1)?.matmul(&v.permute(&[1, 0, 2])?)?;
    out.reshape((kv_heads, rep, t, d))?.permute(&[2, 0, 1, 3])?.reshape((t, heads, d))
}

/// The fused attention kernels (`Tensor::causal_attention_fused` and its backward: on the
/// CPU those of cpu/attention.rs) give the values and gradients of autograd through the
/// composed attention, at shapes that cross the kernels' blocks (64 keys, 16 queries per
/// task), with queries that are the last of longer sequences, and head sizes off their
/// 32-column chunks. `Var::causal_attention` records the composition below
/// `CPU_FUSED_MIN_KEYS` keys and the fused kernels from there (the same bits).
#[test]
fn fused_attention_equals_the_composed_tape() {
    let mut g = rng();
    let shapes = [(3, 5, 4, 2, 6), (70, 150, 4, 2, 40), (17, 17, 3, 1, 32), (1, 130, 6, 2, 64), (24, 530, 4, 2, 16)];
    for (t, len, heads, kv_heads, d) in shapes {
        let (q, k, v) = (
            rand_tensor(&mut g, &[t, heads, d], -1.0, 1.0),
            rand_tensor(&mut g, &[len, kv_heads, d], -1.0, 1.0),
            rand_tensor(&mut g, &[len, kv_heads, d], -1.0, 1.0),
        );
        let dout = rand_tensor(&mut g, &[t, heads, d], -1.0, 1.0);
        let taped = |f: &dyn Fn(&Var, &Var, &Var) -> Result<Var>| -> Vec<Vec<f32>> {
            let ps: Vec<Param> =
                [&q, &k, &v].iter().enumerate().map(|(i, t)| Param::new(format!("p{i}"), (*t).clone())).collect();
            let tape = Tape::new();
            let vars: Vec<Var> = ps.iter().map(|p| tape.param(p)).collect();
            let out = f(&vars[0], &vars[1], &vars[2]).unwrap();
            let loss = out.mul(&Var::constant(dout.clone())).unwrap().sum_all().unwrap();
            let grads = tape.backward(&loss).unwrap();
            let mut all = vec![out.value().to_f32_vec().unwrap()];
            all.extend(ps.iter().map(|p| grads.get(p.id()).unwrap().to_f32_vec().unwrap()));
            all
        };
        let composed = taped(&|q, k, v| composed_attention(q, k, v, 0.3));
        let recorded = taped(&|q, k, v| Var::causal_attention(q, k, v, 0.3));
        let (o, lse) = q.causal_attention_fused(&k, &v, 0.3).unwrap();
        let (dq, dk, dv) = q.causal_attention_backward_fused(&k, &v, &o, &lse, &dout, 0.3).unwrap();
        let fused: Vec<Vec<f32>> = [o, dq, dk, dv].iter().map(|x| x.to_f32_vec().unwrap()).collect();
        for (what, (a, b)) in ["out", "dq", "dk", "dv"].iter().zip(fused.iter().zip(&composed)) {
            let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
            let worst =
                a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, |m, x| if x.is_nan() || x > m { x } else { m });
            assert!(worst <= 2e-6 * scale, "{what} at t {t}, len {len}, d {d}: {worst} (largest {scale})");
        }
        let expected = if len >= artist_tensor::CPU_FUSED_MIN_KEYS { &fused } else { &composed };
        assert_eq!(&recorded, expected, "Var::causal_attention at t {t}, len {len}");
    }
}

/// bf16 queries, keys and values on the CPU (a model's `attention_dtype = "bf16"` there):
/// attention runs in f32 over their exact widening and returns its output rounded to bf16;
/// the gradients (f32) are those of f32 attention over the widened values (the fused f32
/// backward's, within 1e-5).
#[test]
fn bf16_attention_on_the_cpu_differentiates_its_widening() {
    let mut g = rng();
    let round = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
    let (q, k, v) = (
        round(rand_tensor(&mut g, &[4, 4, 8], -1.0, 1.0)),
        round(rand_tensor(&mut g, &[6, 2, 8], -1.0, 1.0)),
        round(rand_tensor(&mut g, &[6, 2, 8], -1.0, 1.0)),
    );
    let dout = rand_tensor(&mut g, &[4, 4, 8], -1.0, 1.0);
    let ps: Vec<Param> =
        [&q, &k, &v].iter().enumerate().map(|(i, t)| Param::new(format!("p{i}"), (*t).clone())).collect();
    let tape = Tape::new();
    let vars: Vec<Var> = ps.iter().map(|p| tape.param(p)).collect();
    let out = Var::causal_attention(&vars[0], &vars[1], &vars[2], 0.35).unwrap();
    assert_eq!(out.value().dtype(), DType::BF16);
    let loss = out.to_dtype(DType::F32).unwrap().mul(&Var::constant(dout.clone())).unwrap().sum_all().unwrap();
    let grads = tape.backward(&loss).unwrap();
    let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let (qf, kf, vf) = (wide(&q), wide(&k), wide(&v));
    let (o, lse) = qf.causal_attention(&kf, &vf, 0.35).unwrap();
    let (dq, dk, dv) = qf.causal_attention_backward(&kf, &vf, &o, &lse, &dout, 0.35).unwrap();
    assert_eq!(out.value().to_f32_vec().unwrap(), o.to_dtype(DType::BF16).unwrap().to_f32_vec().unwrap());
    for (p, fused) in ps.iter().zip([dq, dk, dv]) {
        let (a, b) = (grads.get(p.id()).unwrap().to_f32_vec().unwrap(), fused.to_f32_vec().unwrap());
        let worst = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst < 1e-5, "{}: {worst}", p.name());
    }
}

/// The fused SwiGLU gives the values and gradients of its composition (`narrow`, `narrow`,
/// `silu_mul`) in f32. The f32 gradient of a bf16 output (the tape passes it through the
/// cast as it is; the composition refuses it, multiplying f32 by bf16) gives the
/// composition's gradient over the input widened to f32.
#[test]
fn swiglu_equals_narrow_narrow_silu_mul() {
    let mut g = rng();
    for dt in [DType::F32, DType::BF16] {
        let x = rand_tensor(&mut g, &[6, 2 * 13], -3.0, 3.0).to_dtype(dt).unwrap();
        let r = rand_tensor(&mut g, &[6, 13], -1.0, 1.0);
        let run = |fused: bool| {
            let p = Param::new("x", x.copy().unwrap());
            let tape = Tape::new();
            let v = tape.param(&p);
            let out = if fused {
                v.swiglu().unwrap()
            } else {
                let v = v.to_dtype(DType::F32).unwrap();
                v.narrow(1, 0, 13).unwrap().silu_mul(&v.narrow(1, 13, 13).unwrap()).unwrap()
            };
            let value = out.value().to_f32_vec().unwrap();
            let loss = out.to_dtype(DType::F32).unwrap().mul(&Var::constant(r.clone())).unwrap().sum_all().unwrap();
            let grads = tape.backward(&loss).unwrap();
            (value, grads.get(p.id()).unwrap().to_f32_vec().unwrap())
        };
        let ((v1, g1), (v2, g2)) = (run(true), run(false));
        if dt == DType::F32 {
            assert_eq!(v1, v2, "values");
        }
        // Equal as numbers: the composition adds a zero to each half, which turns -0 into +0.
        assert_eq!(g1, g2, "{dt}: gradients");
    }
}
