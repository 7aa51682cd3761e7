//! Every op against the plain reference in `common`: contiguous inputs, strided views
//! (transposed, narrowed, broadcast) and bf16.

// Exact binary fractions (1 + 2^-8) are spelled out; tables of ops are clearer inline.
#![allow(clippy::excessive_precision, clippy::approx_constant, clippy::type_complexity, clippy::needless_range_loop)]

mod common;

use artist_tensor::{CmpOp, DType, Device, Error, Tensor, rope_tables};
use common::{BF16_TOL, Nd, assert_close};

const CPU: Device = Device::Cpu;

/// An input three ways: contiguous, as a transposed view of a contiguous buffer, and as a
/// narrowed view; the reference is the same values in each case.
fn variants(shape: &[usize], seed: u64) -> Vec<(String, Tensor, Nd)> {
    let x = Nd::random(shape, seed);
    let r = shape.len();
    let mut out = vec![("contiguous".to_string(), x.tensor(DType::F32), x.clone())];
    if r >= 2 {
        // Store the transpose, view it back: same values, non-contiguous strides.
        let t = x.transpose(r - 2, r - 1).tensor(DType::F32).transpose(-2, -1).unwrap();
        assert!(!t.is_contiguous() || shape[r - 1] == 1 || shape[r - 2] == 1);
        out.push(("transposed view".into(), t, x.clone()));
    }
    // A wider buffer narrowed to `shape` along the last dim.
    let mut wide = shape.to_vec();
    wide[r - 1] += 3;
    let w = Nd::random(&wide, seed + 1);
    out.push((
        "narrowed view".into(),
        w.tensor(DType::F32).narrow(-1, 1, shape[r - 1]).unwrap(),
        w.narrow(r - 1, 1, shape[r - 1]),
    ));
    out
}

#[test]
fn construction_and_readback() {
    let t = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (2, 3), CPU).unwrap();
    assert_eq!(t.to_vec2::<f32>().unwrap(), vec![vec![1., 2., 3.], vec![4., 5., 6.]]);
    assert!(matches!(Tensor::from_vec(vec![1f32; 5], (2, 3), CPU), Err(Error::ElementCount { .. })));
    assert!(matches!(t.to_vec::<u32>(), Err(Error::DTypeMismatch { .. })));
    assert_eq!(Tensor::zeros((2, 2), DType::BF16, CPU).unwrap().to_f32_vec().unwrap(), vec![0.0; 4]);
    assert_eq!(Tensor::full(2.5, 3, DType::F16, CPU).unwrap().to_f32_vec().unwrap(), vec![2.5; 3]);
    assert_eq!(Tensor::arange(4, DType::U32, CPU).unwrap().to_vec1::<u32>().unwrap(), vec![0, 1, 2, 3]);
    let b = Tensor::from_bytes(&t.to_bytes().unwrap(), DType::F32, (3, 2), CPU).unwrap();
    assert_eq!(b.to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
    assert!(Tensor::from_bytes(&[0u8; 7], DType::F32, 2, CPU).is_err());
    assert!(t.to_vec3::<f32>().is_err());
    assert_eq!(t.dims_n::<2>("t").unwrap(), [2, 3]);
}

#[test]
fn views_read_the_right_elements() {
    let x = Nd::random(&[2, 3, 4], 1);
    let t = x.tensor(DType::F32);
    assert_close(&t.transpose(0, 2).unwrap(), &x.transpose(0, 2), 0.0, 0.0);
    assert_close(&t.permute(&[1, 2, 0]).unwrap(), &x.permute(&[1, 2, 0]), 0.0, 0.0);
    assert_close(&t.narrow(1, 1, 2).unwrap(), &x.narrow(1, 1, 2), 0.0, 0.0);
    assert_close(&t.transpose(0, 1).unwrap().narrow(2, 1, 3).unwrap(), &x.transpose(0, 1).narrow(2, 1, 3), 0.0, 0.0);
    // Reshape of a contiguous tensor is a view; of a strided one, a copy with the same order.
    assert!(t.reshape((6, 4)).unwrap().same_storage(&t));
    let tt = t.transpose(1, 2).unwrap();
    let r = tt.reshape((2, 12)).unwrap();
    assert!(!r.same_storage(&t));
    assert_close(&r, &Nd::new(&[2, 12], x.transpose(1, 2).data), 0.0, 0.0);
    assert_close(&t.get(1).unwrap(), &Nd::new(&[3, 4], x.data[12..].to_vec()), 0.0, 0.0);
    assert_eq!(t.flatten(0, 1).unwrap().dims(), &[6, 4]);
    assert_eq!(t.unsqueeze(1).unwrap().dims(), &[2, 1, 3, 4]);
    let b = x.narrow(2, 0, 1).tensor(DType::F32).broadcast_as((5, 2, 3, 4)).unwrap();
    assert_close(&b, &Nd::from_fn(&[5, 2, 3, 4], |i| x.at(&[i[1], i[2], 0])), 0.0, 0.0);
    assert!(t.narrow(2, 3, 2).is_err());
    assert!(t.transpose(0, 3).is_err());
    assert!(t.squeeze(0).is_err());
    assert!(t.reshape((5, 5)).is_err());
    assert!(!t.copy().unwrap().same_storage(&t));
}

#[test]
fn unary_ops_match_reference() {
    type F = fn(&Tensor) -> artist_tensor::Result<Tensor>;
    let ops: Vec<(&str, F, fn(f64) -> f64)> = vec![
        ("neg", Tensor::neg, |x| -x),
        ("abs", Tensor::abs, f64::abs),
        ("exp", Tensor::exp, f64::exp),
        ("log", |t| t.abs()?.log(), |x| x.abs().ln()),
        ("sqrt", |t| t.abs()?.sqrt(), |x| x.abs().sqrt()),
        ("rsqrt", |t| t.abs()?.rsqrt(), |x| 1.0 / x.abs().sqrt()),
        ("recip", Tensor::recip, |x| 1.0 / x),
        ("sqr", Tensor::sqr, |x| x * x),
        ("sin", Tensor::sin, f64::sin),
        ("cos", Tensor::cos, f64::cos),
        ("tanh", Tensor::tanh, f64::tanh),
        ("relu", Tensor::relu, |x| x.max(0.0)),
        ("sigmoid", Tensor::sigmoid, |x| 1.0 / (1.0 + (-x).exp())),
        ("silu", Tensor::silu, |x| x / (1.0 + (-x).exp())),
        ("gelu", Tensor::gelu, |x| 0.5 * x * (1.0 + (0.7978845608 * (x + 0.044715 * x * x * x)).tanh())),
        ("affine", |t| t.affine(1.5, -0.25), |x| 1.5 * x - 0.25),
        ("add_scalar", |t| t.add_scalar(3.0), |x| x + 3.0),
        ("mul_scalar", |t| t.mul_scalar(-2.0), |x| -2.0 * x),
        ("powf", |t| t.abs()?.powf(1.7), |x| x.abs().powf(1.7)),
        ("clamp", |t| t.clamp(-0.5, 0.75), |x| x.clamp(-0.5, 0.75)),
    ];
    for (name, op, f) in ops {
        for (how, t, x) in variants(&[3, 5, 7], 2) {
            let got = op(&t).unwrap_or_else(|e| panic!("{name} {how}: {e}"));
            let want = x.map(f);
            let g = got.to_f32_vec().unwrap();
            for (i, (&a, &b)) in g.iter().zip(&want.data).enumerate() {
                let ok = (a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0) || (a.is_infinite() && b.is_infinite());
                assert!(ok, "{name} ({how}) element {i}: got {a}, want {b}");
            }
        }
        // bf16: inputs are bf16 values, the result is one rounding away from exact.
        let x = Nd::random(&[4, 9], 3).round_bf16();
        let got = op(&x.tensor(DType::BF16)).unwrap();
        assert_eq!(got.dtype(), DType::BF16, "{name}");
        let want = x.map(f);
        for (&a, &b) in got.to_f32_vec().unwrap().iter().zip(&want.data) {
            assert!(
                (a as f64 - b).abs() <= 8e-3 * b.abs().max(1e-2) || (a.is_infinite() && b.is_infinite()),
                "{name} bf16: {a} vs {b}"
            );
        }
    }
    let u = Tensor::arange(3, DType::U32, CPU).unwrap();
    assert!(matches!(u.exp(), Err(Error::UnsupportedDType { op: "exp", .. })));
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    type F = fn(&Tensor, &Tensor) -> artist_tensor::Result<Tensor>;
    let ops: Vec<(&str, F, fn(f64, f64) -> f64)> = vec![
        ("add", Tensor::add, |a, b| a + b),
        ("sub", Tensor::sub, |a, b| a - b),
        ("mul", Tensor::mul, |a, b| a * b),
        ("div", Tensor::div, |a, b| a / b),
        ("maximum", Tensor::maximum, f64::max),
        ("minimum", Tensor::minimum, f64::min),
        ("pow", |a, b| a.abs()?.pow(b), |a, b| a.abs().powf(b)),
        ("silu_mul", Tensor::silu_mul, |a, b| a / (1.0 + (-a).exp()) * b),
    ];
    let pairs: &[(&[usize], &[usize])] =
        &[(&[4, 5], &[4, 5]), (&[4, 5], &[5]), (&[4, 1], &[1, 5]), (&[2, 3, 4], &[3, 1]), (&[1], &[2, 3]), (&[], &[3])];
    for (_name, op, f) in &ops {
        for (i, &(sa, sb)) in pairs.iter().enumerate() {
            let (a, b) = (Nd::random(sa, 10 + i as u64), Nd::random(sb, 20 + i as u64));
            let want = a.zip(&b, f);
            assert_close(&op(&a.tensor(DType::F32), &b.tensor(DType::F32)).unwrap(), &want, 2e-5, 1e-6);
            assert_close(&op(&b.tensor(DType::F32), &a.tensor(DType::F32)).unwrap(), &b.zip(&a, f), 2e-5, 1e-6);
            let (a16, b16) = (a.round_bf16(), b.round_bf16());
            let got = op(&a16.tensor(DType::BF16), &b16.tensor(DType::BF16)).unwrap();
            assert_close(&got, &a16.zip(&b16, f), BF16_TOL.0, BF16_TOL.1);
        }
        // Strided operands.
        for ((how, ta, a), (_, tb, b)) in variants(&[3, 6], 30).into_iter().zip(variants(&[3, 6], 31)) {
            let got = op(&ta, &tb.transpose(0, 1).unwrap().contiguous().unwrap().transpose(0, 1).unwrap()).unwrap();
            assert_close(&got, &a.zip(&b, f), 2e-5, 1e-6);
            let _ = how;
        }
    }
    let (a, b) = (Tensor::zeros((3, 2), DType::F32, CPU).unwrap(), Tensor::zeros((3,), DType::F32, CPU).unwrap());
    let err = a.add(&b).unwrap_err().to_string();
    assert!(err.contains("add") && err.contains("[3, 2]") && err.contains("[3]"), "{err}");
    assert!(matches!(a.add(&a.to_dtype(DType::BF16).unwrap()), Err(Error::DTypeMismatch { .. })));
    // Operators read like math.
    let x = Nd::random(&[2, 3], 40).tensor(DType::F32);
    let y = ((&x * 2.0).unwrap() - &x).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
}

#[test]
fn comparisons_where_and_masked_fill() {
    let a = Tensor::from_vec(vec![1f32, 2., 3., 4.], (2, 2), CPU).unwrap();
    let b = Tensor::from_vec(vec![2f32, 2.], 2, CPU).unwrap();
    let cases = [
        (CmpOp::Eq, vec![0u8, 1, 0, 0]),
        (CmpOp::Ne, vec![1, 0, 1, 1]),
        (CmpOp::Lt, vec![1, 0, 0, 0]),
        (CmpOp::Le, vec![1, 1, 0, 0]),
        (CmpOp::Gt, vec![0, 0, 1, 1]),
        (CmpOp::Ge, vec![0, 1, 1, 1]),
    ];
    for (op, want) in cases {
        assert_eq!(a.cmp(op, &b).unwrap().to_vec::<u8>().unwrap(), want, "{op:?}");
    }
    let ids = Tensor::from_vec(vec![5u32, 7, 5], 3, CPU).unwrap();
    let five = Tensor::from_vec(vec![5u32], 1, CPU).unwrap();
    assert_eq!(ids.eq(&five).unwrap().to_vec::<u8>().unwrap(), vec![1, 0, 1]);

    let cond = Tensor::from_vec(vec![1u8, 0], (2, 1), CPU).unwrap();
    let t = Tensor::from_vec(vec![10f32, 20., 30.], 3, CPU).unwrap();
    let f = Tensor::from_vec(vec![-1f32, -2., -3., -4., -5., -6.], (2, 3), CPU).unwrap();
    assert_eq!(cond.where_cond(&t, &f).unwrap().to_vec::<f32>().unwrap(), vec![10., 20., 30., -4., -5., -6.]);
    assert!(t.where_cond(&t, &f).is_err(), "the condition must be U8");

    let mask = Tensor::causal_mask(2, 3, CPU).unwrap();
    assert_eq!(mask.to_vec2::<u8>().unwrap(), vec![vec![0, 0, 1], vec![0, 0, 0]]);
    let scores = Tensor::zeros((4, 2, 3), DType::F32, CPU).unwrap();
    let m = scores.masked_fill(&mask, f32::NEG_INFINITY).unwrap();
    let v = m.to_vec3::<f32>().unwrap();
    assert_eq!(v[3][0], vec![0.0, 0.0, f32::NEG_INFINITY]);
    assert_eq!(v[3][1], vec![0.0, 0.0, 0.0]);
    assert_eq!(
        Tensor::causal_mask(3, 3, CPU).unwrap().to_vec2::<u8>().unwrap(),
        vec![vec![0, 1, 1], vec![0, 0, 1], vec![0, 0, 0]]
    );
    assert!(Tensor::causal_mask(4, 3, CPU).is_err());
}

#[test]
fn reductions_along_every_dim() {
    let shape = [3, 4, 5];
    for (how, t, x) in variants(&shape, 50) {
        for d in 0..3 {
            let di = d as isize;
            let ctx = format!("{how}, dim {d}");
            let sum = x.fold(d, |l| l.iter().sum());
            let keep = |r: Nd| r;
            assert_close(&t.sum_keepdim(di).unwrap(), &keep(sum.clone()), 1e-5, 1e-5);
            let mut squeezed = sum.clone();
            squeezed.shape.remove(d);
            assert_close(&t.sum(di).unwrap(), &squeezed, 1e-5, 1e-5);
            assert_close(&t.mean_keepdim(di).unwrap(), &sum.map(|s| s / shape[d] as f64), 1e-5, 1e-5);
            assert_close(
                &t.max_keepdim(di).unwrap(),
                &x.fold(d, |l| l.iter().cloned().fold(f64::MIN, f64::max)),
                0.0,
                0.0,
            );
            assert_close(
                &t.min_keepdim(di).unwrap(),
                &x.fold(d, |l| l.iter().cloned().fold(f64::MAX, f64::min)),
                0.0,
                0.0,
            );
            let argmax = x.fold(d, |l| (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as f64);
            let argmin = x.fold(d, |l| (0..l.len()).fold(0, |b, i| if l[i] < l[b] { i } else { b }) as f64);
            assert_close(&t.argmax_keepdim(di).unwrap(), &argmax, 0.0, 0.0);
            assert_close(&t.argmin_keepdim(di).unwrap(), &argmin, 0.0, 0.0);
            assert_eq!(t.argmax(di).unwrap().dtype(), DType::U32, "{ctx}");
        }
        let total: f64 = x.data.iter().sum();
        assert!((t.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64 - total).abs() < 1e-4);
    }
    // Long rows (the vectorised path) and bf16.
    let x = Nd::random(&[3, 1000], 51).round_bf16();
    assert_close(&x.tensor(DType::BF16).sum_keepdim(1).unwrap(), &x.fold(1, |l| l.iter().sum()), 1e-2, 1e-1);
    assert_close(&x.tensor(DType::F32).sum_keepdim(0).unwrap(), &x.fold(0, |l| l.iter().sum()), 1e-5, 1e-5);
    // Ties pick the first index; NaN wins max and argmax.
    let t = Tensor::from_vec(vec![1f32, 3., 3., f32::NAN, 0.], (1, 5), CPU).unwrap();
    assert_eq!(t.narrow(1, 0, 3).unwrap().argmax(1).unwrap().to_vec::<u32>().unwrap(), vec![1]);
    assert_eq!(t.argmax(1).unwrap().to_vec::<u32>().unwrap(), vec![3]);
    assert!(t.max(1).unwrap().to_vec::<f32>().unwrap()[0].is_nan());
    assert!(Tensor::zeros((2, 0), DType::F32, CPU).unwrap().argmax(1).is_err());
    // sum_to undoes broadcasting.
    let g = Nd::random(&[2, 3, 4], 52);
    let want = Nd::from_fn(&[3, 1], |i| {
        (0..2).flat_map(|a| (0..4).map(move |c| (a, c))).map(|(a, c)| g.at(&[a, i[0], c])).sum()
    });
    assert_close(&g.tensor(DType::F32).sum_to((3, 1)).unwrap(), &want, 1e-5, 1e-5);
    assert!(g.tensor(DType::F32).sum_to((2, 4)).is_err());
}

fn softmax_ref(l: &[f64]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::MIN, f64::max);
    let s: f64 = l.iter().map(|x| (x - m).exp()).sum();
    l.iter().map(|x| (x - m).exp() / s).collect()
}

#[test]
fn softmax_and_log_softmax() {
    for (how, t, x) in variants(&[3, 4, 6], 60) {
        for d in 0..3 {
            let want = x.lines(d, softmax_ref);
            assert_close(&t.softmax(d as isize).unwrap(), &want, 1e-5, 1e-7);
            let got = t.log_softmax(d as isize).unwrap();
            assert_close(&got, &want.map(f64::ln), 1e-5, 1e-6);
            let _ = &how;
        }
    }
    // Stable for large logits, masked entries get exactly 0, bf16 rounds once.
    let x = Nd::new(&[2, 3], vec![1000.0, 1001.0, 999.0, -1e4, 0.0, -1e4]);
    assert_close(&x.tensor(DType::F32).softmax(-1).unwrap(), &x.lines(1, softmax_ref), 1e-6, 1e-7);
    let m = Tensor::from_vec(vec![0.5f32, f32::NEG_INFINITY, 1.0], (1, 3), CPU).unwrap().softmax(-1).unwrap();
    assert_eq!(m.to_vec::<f32>().unwrap()[1], 0.0);
    let v = Nd::random(&[5, 151], 61).map(|x| 8.0 * x).round_bf16();
    assert_close(&v.tensor(DType::BF16).softmax(-1).unwrap(), &v.lines(1, softmax_ref), 8e-3, 1e-5);
    // A long row as over a vocabulary.
    let v = Nd::random(&[2, 151_936], 62).map(|x| 10.0 * x);
    let ls = v.lines(1, |l| softmax_ref(l).into_iter().map(f64::ln).collect());
    assert_close(&v.tensor(DType::F32).log_softmax(-1).unwrap(), &ls, 2e-6, 2e-5);
}

#[test]
fn rms_norm_matches_hugging_face() {
    let eps = 1e-6;
    let w = Nd::random(&[8], 70);
    let rms = |x: &Nd| {
        x.lines(1, |l| {
            let ms = l.iter().map(|v| v * v).sum::<f64>() / l.len() as f64;
            l.iter().zip(&w.data).map(|(v, g)| g * v / (ms + eps).sqrt()).collect()
        })
    };
    for (how, t, x) in variants(&[5, 8], 71) {
        assert_close(&t.rms_norm(&w.tensor(DType::F32), eps as f32).unwrap(), &rms(&x), 1e-5, 1e-6);
        let _ = how;
    }
    // bf16: Hugging Face rounds the normalised value to bf16 before the weight multiplies it.
    let (x, w16) = (Nd::random(&[4, 8], 72).round_bf16(), w.round_bf16());
    let want = x.lines(1, |l| {
        let ms = l.iter().map(|v| v * v).sum::<f64>() / l.len() as f64;
        l.iter()
            .zip(&w16.data)
            .map(|(v, g)| {
                let n = artist_tensor::bf16::from_f64(v / (ms + eps).sqrt()).to_f64();
                artist_tensor::bf16::from_f64(g * n).to_f64()
            })
            .collect()
    });
    assert_close(&x.tensor(DType::BF16).rms_norm(&w16.tensor(DType::BF16), eps as f32).unwrap(), &want, 0.0, 1e-6);
    assert!(x.tensor(DType::F32).rms_norm(&Tensor::ones(7, DType::F32, CPU).unwrap(), 1e-6).is_err());
}

/// The fused RMSNorm backward against its formula in f64 (dx = r (g w - xh mean(g w xh)),
/// dw = sum over rows of g xh) and, to the bit, against the composition of tensor ops it
/// replaces, for 1, 70 and 200 rows, an odd width, strided inputs, bf16 x and w;
/// `want_dw = false` gives none.
#[test]
fn rms_norm_backward_is_its_formula() {
    let eps = 1e-6;
    for (rows, h) in [(1usize, 8usize), (70, 13), (200, 64)] {
        let w = Nd::random(&[h], 80);
        let g = Nd::random(&[rows, h], 81);
        for (how, t, x) in variants(&[rows, h], 82) {
            let (dx, dw) = t.rms_norm_backward(&w.tensor(DType::F32), &g.tensor(DType::F32), eps as f32, true).unwrap();
            let (want_dx, want_dw) = rms_norm_grads(&x, &w, &g, eps);
            assert_close(&dx, &want_dx, 1e-5, 1e-5);
            assert_close(&dw.unwrap(), &want_dw, 1e-5, 1e-4);
            let (_, none) =
                t.rms_norm_backward(&w.tensor(DType::F32), &g.tensor(DType::F32), eps as f32, false).unwrap();
            assert!(none.is_none(), "{how}");
            // The composition of tensor ops, to the bit.
            let (gt, wt) = (g.tensor(DType::F32), w.tensor(DType::F32));
            let r = t.sqr().unwrap().mean_keepdim(-1).unwrap().add_scalar(eps as f32).unwrap().rsqrt().unwrap();
            let xhat = t.mul(&r).unwrap();
            let gw = gt.mul(&wt).unwrap();
            let m = gw.mul(&xhat).unwrap().mean_keepdim(-1).unwrap();
            let composed_dx = r.mul(&gw.sub(&xhat.mul(&m).unwrap()).unwrap()).unwrap();
            let composed_dw = gt.mul(&xhat).unwrap().sum(0).unwrap();
            let (dx, dw) = t.rms_norm_backward(&wt, &gt, eps as f32, true).unwrap();
            assert_eq!(dx.to_bytes().unwrap(), composed_dx.to_bytes().unwrap(), "{how}: dx bits");
            assert_eq!(dw.unwrap().to_bytes().unwrap(), composed_dw.to_bytes().unwrap(), "{how}: dw bits");
        }
        // bf16 activations and weight: the same formula over their values, f32 gradients.
        let (x16, w16) = (Nd::random(&[rows, h], 83).round_bf16(), w.round_bf16());
        let (dx, dw) = x16
            .tensor(DType::BF16)
            .rms_norm_backward(&w16.tensor(DType::BF16), &g.tensor(DType::F32), eps as f32, true)
            .unwrap();
        assert_eq!((dx.dtype(), dw.as_ref().unwrap().dtype()), (DType::F32, DType::F32));
        let (want_dx, want_dw) = rms_norm_grads(&x16, &w16, &g, eps);
        assert_close(&dx, &want_dx, 1e-5, 1e-5);
        assert_close(&dw.unwrap(), &want_dw, 1e-5, 1e-4);
    }
    let x = Tensor::ones((2, 4), DType::F32, CPU).unwrap();
    let g = Tensor::ones((2, 5), DType::F32, CPU).unwrap();
    assert!(x.rms_norm_backward(&Tensor::ones(4, DType::F32, CPU).unwrap(), &g, 1e-6, true).is_err());
}

/// The fused SwiGLU backward gives the bits of its composition (`mul`, `silu_backward`,
/// `silu`, `mul`) in f32 and bf16, strided inputs included, and `silu'` is the derivative
/// of `silu` (central differences in f64 of the f32 forward, within 1e-3); mismatched
/// shapes or dtypes are errors.
#[test]
fn silu_mul_backward_is_its_composition() {
    for dt in [DType::F32, DType::BF16] {
        for (how, gate, _) in variants(&[33, 70], 90) {
            let gate = gate.to_dtype(dt).unwrap().affine(3.0, 0.0).unwrap();
            let up = Nd::random(&[33, 70], 91).tensor(dt);
            let g = Nd::random(&[33, 70], 92).tensor(dt);
            let (dgate, dup) = gate.silu_mul_backward(&up, &g).unwrap();
            let want_dgate = g.mul(&up).unwrap().silu_backward(&gate).unwrap();
            let want_dup = g.mul(&gate.silu().unwrap()).unwrap();
            assert_eq!(dgate.to_bytes().unwrap(), want_dgate.to_bytes().unwrap(), "{dt} {how}: dgate");
            assert_eq!(dup.to_bytes().unwrap(), want_dup.to_bytes().unwrap(), "{dt} {how}: dup");
        }
    }
    // silu' against the forward's slope.
    let x = Nd::random(&[64], 93).map(|v| v * 4.0);
    let xt = x.tensor(DType::F32);
    let ones = Tensor::ones(64, DType::F32, CPU).unwrap();
    let (dgate, _) = xt.silu_mul_backward(&ones, &ones).unwrap();
    let silu = |v: f64| v / (1.0 + (-v).exp());
    assert_close(&dgate, &x.map(|v| (silu(v + 1e-4) - silu(v - 1e-4)) / 2e-4), 1e-3, 1e-3);
    let short = Tensor::ones(63, DType::F32, CPU).unwrap();
    assert!(xt.silu_mul_backward(&short, &ones).is_err());
    assert!(xt.silu_mul_backward(&ones.to_dtype(DType::BF16).unwrap(), &ones).is_err());
}

/// The fused SwiGLU backward over `[gate | up]` gives, in f32, the bits of
/// `silu_mul_backward` of its two halves side by side, whatever the input's layout; shapes
/// that are not two halves and an odd width are errors.
#[test]
fn swiglu_backward_is_silu_mul_backward_of_the_halves() {
    for dt in [DType::F32, DType::BF16, DType::F16] {
        for (how, gu, _) in variants(&[9, 2 * 35], 95) {
            let gu = gu.to_dtype(dt).unwrap().affine(3.0, 0.0).unwrap();
            let g = Nd::random(&[9, 35], 96).tensor(dt);
            let fused = gu.swiglu_backward(&g).unwrap();
            assert_eq!((fused.dtype(), fused.dims()), (DType::F32, &[9usize, 70][..]));
            let (dgate, dup) =
                gu.narrow(-1, 0, 35).unwrap().silu_mul_backward(&gu.narrow(-1, 35, 35).unwrap(), &g).unwrap();
            let want =
                Tensor::cat(&[&dgate.to_dtype(DType::F32).unwrap(), &dup.to_dtype(DType::F32).unwrap()], -1).unwrap();
            assert_eq!(fused.to_bytes().unwrap(), want.to_bytes().unwrap(), "{dt} {how}");
        }
    }
    let gu = Tensor::ones((2, 6), DType::F32, CPU).unwrap();
    assert!(gu.swiglu_backward(&Tensor::ones((2, 6), DType::F32, CPU).unwrap()).is_err());
    assert!(gu.swiglu_backward(&Tensor::ones((3, 3), DType::F32, CPU).unwrap()).is_err());
    assert!(gu.swiglu_backward(&Tensor::ones((2, 3), DType::BF16, CPU).unwrap()).is_err());
    let odd = Tensor::ones((2, 5), DType::F32, CPU).unwrap();
    assert!(odd.swiglu_backward(&Tensor::ones((2, 2), DType::F32, CPU).unwrap()).is_err());
}

/// dx and dw of `y = w x / sqrt(mean(x^2) + eps)` over the last dim, in f64.
fn rms_norm_grads(x: &Nd, w: &Nd, g: &Nd, eps: f64) -> (Nd, Nd) {
    let h = w.data.len();
    let rows = x.data.len() / h;
    let (mut dx, mut dw) = (vec![0f64; rows * h], vec![0f64; h]);
    for r in 0..rows {
        let xr = &x.data[r * h..(r + 1) * h];
        let gr = &g.data[r * h..(r + 1) * h];
        let inv = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / h as f64 + eps).sqrt();
        let m = (0..h).map(|i| gr[i] * w.data[i] * xr[i] * inv).sum::<f64>() / h as f64;
        for i in 0..h {
            dx[r * h + i] = inv * (gr[i] * w.data[i] - xr[i] * inv * m);
            dw[i] += gr[i] * xr[i] * inv;
        }
    }
    (Nd::new(&[rows, h], dx), Nd::new(&[h], dw))
}

#[test]
fn rope_is_rotate_half() {
    let (b, t, h, d) = (2, 5, 3, 8);
    let theta = 10_000f64;
    let positions: Vec<u32> = vec![3, 4, 5, 6, 7];
    let (cos, sin) = rope_tables(&positions, d, theta as f32, CPU).unwrap();
    let angle = |p: usize, i: usize| positions[p] as f64 / theta.powf((2 * (i % (d / 2))) as f64 / d as f64);
    assert_close(&cos, &Nd::from_fn(&[t, d / 2], |i| angle(i[0], i[1]).cos()), 1e-5, 1e-6);
    assert_close(&sin, &Nd::from_fn(&[t, d / 2], |i| angle(i[0], i[1]).sin()), 1e-5, 1e-6);
    // q * cat(cos, cos) + rotate_half(q) * cat(sin, sin), rotate_half(q) = cat(-q2, q1).
    let x = Nd::random(&[b, t, h, d], 80);
    let want = Nd::from_fn(&[b, t, h, d], |i| {
        let (pi, j) = (i[1], i[3]);
        let rot = if j < d / 2 { -x.at(&[i[0], i[1], i[2], j + d / 2]) } else { x.at(&[i[0], i[1], i[2], j - d / 2]) };
        x.at(i) * angle(pi, j).cos() + rot * angle(pi, j).sin()
    });
    assert_close(&x.tensor(DType::F32).rope(&cos, &sin).unwrap(), &want, 1e-5, 1e-5);
    // The same through a strided view: [b, h, t, d] stored, viewed as [b, t, h, d].
    let strided = x.permute(&[0, 2, 1, 3]).tensor(DType::F32).transpose(1, 2).unwrap();
    assert_close(&strided.rope(&cos, &sin).unwrap(), &want, 1e-5, 1e-5);
    // Per-sequence tables: sequence 1 uses positions shifted by 2.
    let (c2, s2) = rope_tables(&[3, 4, 5, 6, 7, 5, 6, 7, 8, 9], d, theta as f32, CPU).unwrap();
    let (c2, s2) = (c2.reshape((b, t, d / 2)).unwrap(), s2.reshape((b, t, d / 2)).unwrap());
    let got = x.tensor(DType::F32).rope(&c2, &s2).unwrap();
    assert_close(&got.narrow(0, 0, 1).unwrap(), &want.narrow(0, 0, 1), 1e-5, 1e-5);
    let shifted = Nd::from_fn(&[1, t, h, d], |i| {
        let (p, j) = (positions[i[1]] as f64 + 2.0, i[3]);
        let a = p / theta.powf((2 * (j % (d / 2))) as f64 / d as f64);
        let xi = [1, i[1], i[2], j];
        let rot = if j < d / 2 { -x.at(&[1, i[1], i[2], j + d / 2]) } else { x.at(&[1, i[1], i[2], j - d / 2]) };
        x.at(&xi) * a.cos() + rot * a.sin()
    });
    assert_close(&got.narrow(0, 1, 1).unwrap(), &shifted, 1e-5, 1e-5);
    assert!(x.tensor(DType::F32).rope(&cos.narrow(0, 0, 4).unwrap(), &sin).is_err());
}

#[test]
fn index_select_gather_scatter_and_index_add() {
    let x = Nd::random(&[4, 3, 5], 90);
    let t = x.tensor(DType::F32);
    let ids = Tensor::from_vec(vec![2u32, 0, 2], 3, CPU).unwrap();
    let idv = [2usize, 0, 2];
    for d in 0..3usize {
        let mut shape = x.shape.clone();
        shape[d] = 3;
        let want = Nd::from_fn(&shape, |i| {
            let mut s = i.to_vec();
            s[d] = idv[i[d]];
            x.at(&s)
        });
        assert_close(&t.index_select(&ids, d as isize).unwrap(), &want, 0.0, 0.0);
        assert_close(
            &t.transpose(0, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(0, 2)
                .unwrap()
                .index_select(&ids, d as isize)
                .unwrap(),
            &want,
            0.0,
            0.0,
        );
    }
    let bad = Tensor::from_vec(vec![4u32], 1, CPU).unwrap();
    assert!(matches!(t.index_select(&bad, 0), Err(Error::IndexOutOfRange { index: 4, size: 4, .. })));
    // Embedding: ids of any shape pick rows.
    let emb = Nd::random(&[10, 4], 91);
    let tok = Tensor::from_vec(vec![9u32, 0, 3, 3, 7, 1], (2, 3), CPU).unwrap();
    let e = Tensor::embedding(&tok, &emb.tensor(DType::BF16)).unwrap();
    assert_eq!((e.dims(), e.dtype()), (&[2usize, 3, 4][..], DType::BF16));
    let tv = [9usize, 0, 3, 3, 7, 1];
    assert_close(&e, &Nd::from_fn(&[2, 3, 4], |i| emb.at(&[tv[i[0] * 3 + i[1]], i[2]])).round_bf16(), 0.0, 0.0);

    // gather along the last dim: the token logprob pattern.
    let logits = Nd::random(&[3, 6], 92);
    let pick = Tensor::from_vec(vec![5u32, 0, 2, 2, 1, 4], (3, 2), CPU).unwrap();
    let pv = [5usize, 0, 2, 2, 1, 4];
    let g = logits.tensor(DType::F32).gather(1, &pick).unwrap();
    assert_close(&g, &Nd::from_fn(&[3, 2], |i| logits.at(&[i[0], pv[i[0] * 2 + i[1]]])), 0.0, 0.0);
    let g0 = logits
        .tensor(DType::F32)
        .gather(0, &Tensor::from_vec(vec![2u32, 1, 0, 0, 1, 2], (1, 6), CPU).unwrap())
        .unwrap();
    assert_eq!(
        g0.to_f32_vec().unwrap(),
        (0..6).map(|j| logits.at(&[[2, 1, 0, 0, 1, 2][j], j]) as f32).collect::<Vec<_>>()
    );
    assert!(logits.tensor(DType::F32).gather(1, &Tensor::zeros((2, 2), DType::U32, CPU).unwrap()).is_err());

    // scatter_add with repeated indices accumulates.
    let base = Nd::random(&[3, 6], 93);
    let src = Nd::random(&[3, 2], 94);
    let mut want = base.clone();
    for r in 0..3 {
        for k in 0..2 {
            want.data[r * 6 + pv[r * 2 + k]] += src.at(&[r, k]);
        }
    }
    let got = base.tensor(DType::F32).scatter_add(1, &pick, &src.tensor(DType::F32)).unwrap();
    assert_close(&got, &want, 1e-6, 1e-6);
    assert_eq!(
        Tensor::zeros(3, DType::F32, CPU)
            .unwrap()
            .scatter_add(
                0,
                &Tensor::from_vec(vec![1u32, 1, 1], 3, CPU).unwrap(),
                &Tensor::ones(3, DType::F32, CPU).unwrap()
            )
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        vec![0., 3., 0.]
    );

    // index_add is the backward of index_select: <index_select(x), g> = <x, index_add(0, g)>.
    let gsel = Nd::random(&[4, 3, 3], 95);
    let got = Tensor::zeros((4, 3, 5), DType::F32, CPU).unwrap().index_add(2, &ids, &gsel.tensor(DType::F32)).unwrap();
    let want = Nd::from_fn(&[4, 3, 5], |i| (0..3).filter(|&j| idv[j] == i[2]).map(|j| gsel.at(&[i[0], i[1], j])).sum());
    assert_close(&got, &want, 1e-6, 1e-6);
    assert!(t.index_add(0, &ids, &t).is_err());
}

#[test]
fn cat_along_each_dim() {
    let a = Nd::random(&[2, 3, 4], 100);
    for d in 0..3 {
        let mut shape = a.shape.clone();
        shape[d] = 2;
        let b = Nd::random(&shape, 101 + d as u64);
        let got = Tensor::cat(
            &[
                &a.tensor(DType::F32),
                &b.tensor(DType::F32).transpose(0, 2).unwrap().contiguous().unwrap().transpose(0, 2).unwrap(),
            ],
            d as isize,
        )
        .unwrap();
        let mut out_shape = a.shape.clone();
        out_shape[d] += 2;
        let want = Nd::from_fn(&out_shape, |i| {
            if i[d] < a.shape[d] {
                a.at(i)
            } else {
                let mut j = i.to_vec();
                j[d] -= a.shape[d];
                b.at(&j)
            }
        });
        assert_close(&got, &want, 0.0, 0.0);
    }
    let c = Tensor::zeros((2, 3, 5), DType::F32, CPU).unwrap();
    assert!(Tensor::cat(&[&a.tensor(DType::F32), &c], 0).is_err());
    assert!(Tensor::cat(&[], 0).is_err());
}

#[test]
fn copy_from_writes_into_a_preallocated_cache() {
    // A KV cache [batch, max_len, heads, dim], filled a step at a time.
    let cache = Tensor::zeros((2, 6, 2, 3), DType::BF16, CPU).unwrap();
    let step1 = Nd::random(&[2, 4, 2, 3], 110).round_bf16();
    let step2 = Nd::random(&[2, 1, 2, 3], 111).round_bf16();
    cache.narrow(1, 0, 4).unwrap().copy_from(&step1.tensor(DType::BF16)).unwrap();
    let view = cache.clone();
    cache.narrow(1, 4, 1).unwrap().copy_from(&step2.tensor(DType::BF16)).unwrap();
    let want = Nd::from_fn(&[2, 6, 2, 3], |i| match i[1] {
        0..4 => step1.at(i),
        4 => step2.at(&[i[0], 0, i[2], i[3]]),
        _ => 0.0,
    });
    assert_close(&view, &want, 0.0, 0.0);
    // Into a transposed view, from a broadcast source, and from the same storage.
    let m = Tensor::zeros((3, 2), DType::F32, CPU).unwrap();
    m.t().unwrap().copy_from(&Tensor::from_vec(vec![1f32, 2., 3.], (1, 3), CPU).unwrap()).unwrap();
    assert_eq!(m.to_vec2::<f32>().unwrap(), vec![vec![1., 1.], vec![2., 2.], vec![3., 3.]]);
    m.narrow(0, 1, 2).unwrap().copy_from(&m.narrow(0, 0, 2).unwrap()).unwrap();
    assert_eq!(m.to_vec2::<f32>().unwrap(), vec![vec![1., 1.], vec![1., 1.], vec![2., 2.]]);
    assert!(m.copy_from(&Tensor::zeros((2, 3), DType::F32, CPU).unwrap()).is_err());
    assert!(m.copy_from(&Tensor::zeros((3, 2), DType::BF16, CPU).unwrap()).is_err());
    let b = Tensor::zeros(1, DType::F32, CPU).unwrap().broadcast_as(4).unwrap();
    assert!(b.copy_from(&Tensor::zeros(4, DType::F32, CPU).unwrap()).is_err());
}

#[test]
fn casts_round_to_nearest_even() {
    let v = vec![1.0f32, 1.00390625, 1.01171875, -3.14159, 65504.0, 1e-3, 0.5];
    let t = Tensor::from_vec(v.clone(), v.len(), CPU).unwrap();
    let bf: Vec<f32> = v.iter().map(|&x| artist_tensor::bf16::from_f32(x).to_f32()).collect();
    let hf: Vec<f32> = v.iter().map(|&x| artist_tensor::f16::from_f32(x).to_f32()).collect();
    assert_eq!(t.to_dtype(DType::BF16).unwrap().to_f32_vec().unwrap(), bf);
    assert_eq!(t.to_dtype(DType::F16).unwrap().to_f32_vec().unwrap(), hf);
    // 1 + 2^-8 is a tie in bf16: rounds to even (1.0); 1 + 3*2^-8 rounds up.
    assert_eq!(bf[1], 1.0);
    assert_eq!(bf[2], 1.015625);
    assert_eq!(t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F16).unwrap().to_f32_vec().unwrap()[3], -3.140625);
    let u = Tensor::from_vec(vec![2.7f32, -1.0, 300.0], 3, CPU).unwrap();
    assert_eq!(u.to_dtype(DType::U32).unwrap().to_vec::<u32>().unwrap(), vec![2, 0, 300]);
    assert_eq!(u.to_dtype(DType::U8).unwrap().to_vec::<u8>().unwrap(), vec![2, 0, 255]);
    let tt = Nd::random(&[3, 4], 120);
    assert_close(
        &tt.tensor(DType::F32).t().unwrap().to_dtype(DType::BF16).unwrap(),
        &tt.transpose(0, 1).round_bf16(),
        0.0,
        0.0,
    );
}

#[test]
fn topk_matches_a_sort() {
    let x = Nd::random(&[4, 50], 130);
    let (vals, idx) = x.tensor(DType::F32).topk(7).unwrap();
    for r in 0..4 {
        let mut order: Vec<usize> = (0..50).collect();
        order.sort_by(|&a, &b| x.at(&[r, b]).partial_cmp(&x.at(&[r, a])).unwrap());
        let want: Vec<u32> = order[..7].iter().map(|&i| i as u32).collect();
        assert_eq!(idx.get(r).unwrap().to_vec::<u32>().unwrap(), want);
        let wv: Vec<f32> = order[..7].iter().map(|&i| x.at(&[r, i]) as f32).collect();
        assert_eq!(vals.get(r).unwrap().to_vec::<f32>().unwrap(), wv);
    }
    let t = Tensor::from_vec(vec![1f32, 5., 5., f32::NAN, 2.], 5, CPU).unwrap();
    let (v, i) = t.topk(3).unwrap();
    assert_eq!(i.to_vec::<u32>().unwrap(), vec![3, 1, 2]);
    assert!(v.to_vec::<f32>().unwrap()[0].is_nan());
    assert_eq!(t.topk(5).unwrap().1.to_vec::<u32>().unwrap(), vec![3, 1, 2, 4, 0]);
    assert!(t.topk(6).is_err());
    assert_eq!(t.topk(0).unwrap().0.dims(), &[0]);
}

/// The bf16 products at the sizes that take the CPU's bf16 dot products where it has them
/// (more than 8 rows, at least 128 terms per sum for `matmul_f32`): `linear_in` forward and
/// `matmul_f32` with each operand contiguous or a transposed view, as backward passes them
/// (`g @ w`, `g^T @ x`), against f64 sums of the rounded operands. Each value within
/// `k * eps_f32 * sum |terms|`, the worst case of `k` f32 additions; the same on a CPU
/// without them (the widening path).
#[test]
fn bf16_products_are_f32_sums_of_the_rounded_operands() {
    let check = |what: &str, got: &Tensor, a: &Nd, b: &Nd| {
        // got = a @ b with a: [m, k], b: [k, n], both already bf16 values.
        let (m, k, n) = (a.shape[0], a.shape[1], b.shape[1]);
        assert_eq!((got.dims(), got.dtype()), (&[m, n][..], DType::F32), "{what}");
        let v = got.to_vec::<f32>().unwrap();
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|p| a.data[i * k + p] * b.data[p * n + j]);
                let (exact, abs) = terms.fold((0f64, 0f64), |(s, t), x| (s + x, t + x.abs()));
                let bound = k as f64 * f32::EPSILON as f64 * abs;
                assert!((v[i * n + j] as f64 - exact).abs() <= bound, "{what} [{i}, {j}]: {} vs {exact}", v[i * n + j]);
            }
        }
    };
    // Forward: x f32 [40, 300] against a bf16 weight [70, 300].
    let x = Nd::random(&[40, 300], 150);
    let w = Nd::random(&[70, 300], 151).round_bf16();
    let y = x.tensor(DType::F32).linear_in(&w.tensor(DType::BF16), None, DType::BF16).unwrap();
    check("linear_in", &y, &x.round_bf16(), &w.transpose(0, 1));
    // dx = g @ w: g [40, 260], w [260, 300] as stored (its transpose made for the kernel).
    let g = Nd::random(&[40, 260], 152).round_bf16();
    let w2 = Nd::random(&[260, 300], 153).round_bf16();
    check("g @ w", &g.tensor(DType::BF16).matmul_f32(&w2.tensor(DType::BF16)).unwrap(), &g, &w2);
    // The same with w as a transposed view of its stored transpose (read in place).
    let w2t = w2.transpose(0, 1).tensor(DType::BF16).t().unwrap();
    check("g @ (w^T)^T", &g.tensor(DType::BF16).matmul_f32(&w2t).unwrap(), &g, &w2);
    // dw = g^T @ x: g [300, 20] viewed transposed, x [300, 50] as stored.
    let (g3, x3) = (Nd::random(&[300, 20], 154).round_bf16(), Nd::random(&[300, 50], 155).round_bf16());
    let got = g3.tensor(DType::BF16).t().unwrap().matmul_f32(&x3.tensor(DType::BF16)).unwrap();
    check("g^T @ x", &got, &g3.transpose(0, 1), &x3);
    // Odd k and a narrowed (neither contiguous nor transposed) operand.
    let (a5, b5) = (Nd::random(&[12, 257], 156).round_bf16(), Nd::random(&[257, 9], 157).round_bf16());
    check("odd k", &a5.tensor(DType::BF16).matmul_f32(&b5.tensor(DType::BF16)).unwrap(), &a5, &b5);
    let wide = Nd::random(&[12, 300], 158).round_bf16();
    let narrow = wide.tensor(DType::BF16).narrow(1, 10, 258).unwrap();
    let b6 = Nd::random(&[258, 9], 159).round_bf16();
    check("narrowed", &narrow.matmul_f32(&b6.tensor(DType::BF16)).unwrap(), &wide.narrow(1, 10, 258), &b6);
}

#[test]
fn matmul_plain_transposed_batched_and_bf16() {
    let a = Nd::random(&[5, 7], 140);
    let b = Nd::random(&[7, 3], 141);
    assert_close(&a.tensor(DType::F32).matmul(&b.tensor(DType::F32)).unwrap(), &a.matmul(&b), 1e-5, 1e-5);
    // Operands given as transposed views of their stored transposes: read through strides.
    let at = a.transpose(0, 1).tensor(DType::F32).t().unwrap();
    let bt = b.transpose(0, 1).tensor(DType::F32).t().unwrap();
    assert!(!at.is_contiguous() && !bt.is_contiguous());
    assert_close(&at.matmul(&bt).unwrap(), &a.matmul(&b), 1e-5, 1e-5);
    // Batched attention scores: [b, h, t, d] @ [b, h, d, s], and a broadcast weight.
    let q = Nd::random(&[2, 3, 4, 8], 142);
    let k = Nd::random(&[2, 3, 5, 8], 143);
    let kt = k.transpose(2, 3);
    let got = q.tensor(DType::F32).matmul(&k.tensor(DType::F32).t().unwrap()).unwrap();
    assert_close(&got, &q.matmul(&kt), 1e-5, 1e-5);
    let w = Nd::random(&[8, 6], 144);
    assert_close(&q.tensor(DType::F32).matmul(&w.tensor(DType::F32)).unwrap(), &q.matmul(&w), 1e-5, 1e-5);
    let wb = Nd::random(&[3, 8, 2], 145);
    assert_close(&q.tensor(DType::F32).matmul(&wb.tensor(DType::F32)).unwrap(), &q.matmul(&wb), 1e-5, 1e-5);
    // A large product, so gemm's own threading is exercised.
    let (x, y) = (Nd::random(&[130, 260], 146), Nd::random(&[260, 129], 147));
    assert_close(&x.tensor(DType::F32).matmul(&y.tensor(DType::F32)).unwrap(), &x.matmul(&y), 1e-4, 1e-4);
    // bf16 in, bf16 out, f32 accumulation.
    let (a16, b16) = (a.round_bf16(), b.round_bf16());
    let got = a16.tensor(DType::BF16).matmul(&b16.tensor(DType::BF16)).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    assert_close(&got, &a16.matmul(&b16).round_bf16(), 0.0, 1e-6);
    // linear = x @ W^T + b.
    let (wl, bias) = (Nd::random(&[4, 7], 148), Nd::random(&[4], 149));
    let want = a.matmul(&wl.transpose(0, 1)).zip(&bias, |p, q| p + q);
    assert_close(
        &a.tensor(DType::F32).linear(&wl.tensor(DType::F32), Some(&bias.tensor(DType::F32))).unwrap(),
        &want,
        1e-5,
        1e-5,
    );
    // Errors name the shapes; empty inner dimension gives zeros.
    let err = a.tensor(DType::F32).matmul(&a.tensor(DType::F32)).unwrap_err().to_string();
    assert!(err.contains("matmul") && err.contains("[5, 7]"), "{err}");
    let z = Tensor::zeros((3, 0), DType::F32, CPU)
        .unwrap()
        .matmul(&Tensor::zeros((0, 2), DType::F32, CPU).unwrap())
        .unwrap();
    assert_eq!(z.to_vec::<f32>().unwrap(), vec![0.0; 6]);
    assert!(
        Tensor::zeros(3, DType::U32, CPU)
            .unwrap()
            .reshape((1, 3))
            .unwrap()
            .matmul(&Tensor::zeros((3, 1), DType::U32, CPU).unwrap())
            .is_err()
    );
}

#[test]
fn random_init_is_seeded() {
    use rand::SeedableRng;
    let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let a = Tensor::randn((100, 100), 0.0, 0.02, DType::F32, CPU, &mut r1).unwrap();
    let b = Tensor::randn((100, 100), 0.0, 0.02, DType::F32, CPU, &mut r2).unwrap();
    assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    let v = a.to_vec::<f32>().unwrap();
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    assert!(mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3, "mean {mean} std {std}");
    let u = Tensor::rand_uniform(1000, -1.0, 1.0, DType::BF16, CPU, &mut r1).unwrap().to_f32_vec().unwrap();
    assert!(u.iter().all(|&x| (-1.0..=1.0).contains(&x)));
}

#[test]
fn cuda_without_a_driver_is_an_error_not_a_panic() {
    if artist_tensor::cuda::driver_present() {
        eprintln!("a CUDA driver is present: nothing to test here");
        return;
    }
    let r = Device::cuda(0);
    assert!(r.is_err());
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("CUDA"), "{msg}");
    assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
    assert!(Device::parse("tpu").is_err());
    assert!(Device::parse("cuda:1").is_err());
    assert_eq!(Device::best(), Device::Cpu);
    // A Cuda device value made by hand is refused by every constructor, with the reason.
    let err = Tensor::zeros(2, DType::F32, Device::Cuda(0)).unwrap_err();
    assert!(matches!(err, Error::NoCudaDriver(_)), "{err}");
}

#[test]
fn linear_widens_half_weights_on_the_fly() {
    // Every path of the CPU's `linear`: the matrix-vector product (up to 8 rows), tasks of
    // weight rows (9 to 128 rows with f32 weights, to 256 with half ones; here tasks of 16
    // weight rows, the last one short; x's rows by 16 unpacked, the rest of them packed:
    // 17, 33, 40 and 200 rows have both) and gemm (more; over blocks of widened weights for
    // half ones), weights in every float type: the result is the f32 product over the
    // widened weights.
    let (n, k) = (37, 70);
    let w = Nd::random(&[n, k], 150).round_bf16();
    let bias = Nd::random(&[n], 151).round_bf16();
    for m in [1usize, 3, 8, 9, 16, 17, 33, 40, 128, 129, 200, 256, 257, 300] {
        let x = Nd::random(&[m, k], 152 + m as u64);
        let want = x.matmul(&w.transpose(0, 1)).zip(&bias, |p, q| p + q);
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let got = x.tensor(DType::F32).linear(&w.tensor(dt), Some(&bias.tensor(dt))).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            assert_close(&got, &want, 1e-5, 1e-5);
        }
        // Leading batch dimensions are flattened into rows.
        let x3 = x.tensor(DType::F32).reshape((1, m, k)).unwrap();
        assert_eq!(x3.linear(&w.tensor(DType::BF16), None).unwrap().dims(), &[1, m, n]);
    }
    // Wide: at k = 4096, tasks of 128 weight rows (nine, the last one short; on 2 threads),
    // each in gemm calls of 43 of them on the 32 unpacked rows of x, and blocks of 512
    // (three, the last one short) above 256 rows of x.
    let w = Nd::random(&[1100, 4096], 162).round_bf16();
    let x = Nd::random(&[33, 4096], 163);
    // x w^T by rows of both (Nd's matmul indexes element by element: too slow at this size).
    let dot = |i: usize, j: usize| (0..4096).map(|p| x.data[i * 4096 + p] * w.data[j * 4096 + p]).sum::<f64>();
    let want = Nd::new(&[33, 1100], (0..33 * 1100).map(|e| dot(e / 1100, e % 1100)).collect());
    for dt in [DType::F32, DType::BF16] {
        assert_close(&x.tensor(DType::F32).linear(&w.tensor(dt), None).unwrap(), &want, 1e-4, 1e-4);
    }
    // Above 256 rows, against gemm on the same weights in f32 (bf16 widens exactly).
    let x = Nd::random(&[260, 4096], 164).tensor(DType::F32);
    let want = x.linear(&w.tensor(DType::F32), None).unwrap().to_vec::<f32>().unwrap();
    let want = Nd::new(&[260, 1100], want.into_iter().map(f64::from).collect());
    assert_close(&x.linear(&w.tensor(DType::BF16), None).unwrap(), &want, 1e-4, 1e-4);
    // A long reduction (4864, as Qwen2.5-0.5B's down projection) in the vectorised dot.
    let (w, x) = (Nd::random(&[5, 4864], 160).round_bf16(), Nd::random(&[2, 4864], 161));
    assert_close(
        &x.tensor(DType::F32).linear(&w.tensor(DType::BF16), None).unwrap(),
        &x.matmul(&w.transpose(0, 1)),
        1e-4,
        1e-4,
    );
    let err = x.tensor(DType::F32).linear(&w.tensor(DType::BF16).t().unwrap(), None).unwrap_err().to_string();
    assert!(err.contains("linear"), "{err}");
}

#[test]
fn large_transposes_copy_in_tiles() {
    // Big enough for the tiled path (both sides >= 32), with ragged edge tiles and a batch.
    for shape in [[1usize, 70, 45], [3, 40, 33], [2, 64, 96]] {
        let x = Nd::random(&shape, 170);
        let t = x.tensor(DType::F32).transpose(1, 2).unwrap();
        assert_close(&t.contiguous().unwrap(), &x.transpose(1, 2), 0.0, 0.0);
        assert_close(&t.to_dtype(DType::BF16).unwrap(), &x.transpose(1, 2).round_bf16(), 0.0, 0.0);
        assert_close(&t.exp().unwrap(), &x.transpose(1, 2).map(f64::exp), 1e-6, 1e-7);
        let p = x.tensor(DType::F32).permute(&[2, 0, 1]).unwrap();
        assert_close(&p.contiguous().unwrap(), &x.permute(&[2, 0, 1]), 0.0, 0.0);
    }
}

/// The CPU's fused causal attention (cpu/attention.rs) against its composition through
/// matrix products (`causal_attention_reference`, torch's eager order), forward and
/// backward: shapes that cross its blocks (64 keys, 16 queries a task) with GQA, queries that
/// are the last of longer sequences, head sizes off its 64/32/8-column chunks, keys and
/// values as strided views (a KV cache's narrowed rows, every other column), and bf16
/// inputs. Within 2e-6 of each result's largest element in f32. The results do not depend
/// on the number of threads: the same bits in pools of one and three.
#[test]
fn fused_causal_attention_matches_its_reference() {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(29);
    let close = |what: &str, got: &Tensor, want: &Tensor, tol: f32| {
        assert_eq!(got.dims(), want.dims(), "{what}: shape");
        let (g, w) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
        let top = w.iter().fold(1f32, |m, x| m.max(x.abs()));
        let worst =
            g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0f32, |m, x| if x.is_nan() || x > m { x } else { m });
        assert!(worst <= tol * top, "{what}: {worst} (largest {top})");
    };
    for (t, len, heads, kv_heads, d) in [
        (1, 1, 1, 1, 8),
        (5, 5, 2, 2, 3),
        (33, 40, 6, 3, 48),
        (130, 300, 14, 2, 64),
        (1, 257, 12, 2, 128),
        (64, 64, 4, 4, 72),
        (100, 130, 8, 4, 128),
    ] {
        let q = Tensor::randn((t, heads, d), 0.0, 1.0, DType::F32, CPU, &mut rng).unwrap();
        // K and V: every other column of a wider buffer, rows of a longer one (a cache).
        let wide = |rng: &mut rand_chacha::ChaCha8Rng| {
            let buf = Tensor::randn((len + 3, kv_heads, d, 2), 0.0, 1.0, DType::F32, CPU, rng).unwrap();
            buf.narrow(0, 0, len).unwrap().narrow(3, 1, 1).unwrap().reshape((len, kv_heads, d)).unwrap()
        };
        let (k, v) = (wide(&mut rng), wide(&mut rng));
        let dout = Tensor::randn((t, heads, d), 0.0, 1.0, DType::F32, CPU, &mut rng).unwrap();
        let scale = (d as f32).powf(-0.5);
        let run = || {
            let (out, lse) = q.causal_attention_fused(&k, &v, scale).unwrap();
            let (dq, dk, dv) = q.causal_attention_backward_fused(&k, &v, &out, &lse, &dout, scale).unwrap();
            [out, lse, dq, dk, dv]
        };
        let fused = run();
        let (out, lse) = q.causal_attention_reference(&k, &v, scale).unwrap();
        let (dq, dk, dv) = q.causal_attention_backward_reference(&k, &v, &dout, scale).unwrap();
        let at = format!("t {t}, len {len}, heads {heads}/{kv_heads}, d {d}");
        for (what, got, want) in [("out", &fused[0], &out), ("lse", &fused[1], &lse), ("dq", &fused[2], &dq)] {
            close(&format!("{what} at {at}"), got, want, 2e-6);
        }
        for (what, got, want) in [("dk", &fused[3], &dk), ("dv", &fused[4], &dv)] {
            close(&format!("{what} at {at}"), got, want, 2e-6);
        }
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (a, b) in pool.install(run).iter().zip(&fused) {
                assert_eq!(a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap(), "{threads} threads at {at}");
            }
        }
        // bf16 inputs: computed in f32 over their widening, the output rounded to bf16.
        let half = |x: &Tensor| x.to_dtype(DType::BF16).unwrap();
        let (o16, l16) = half(&q).causal_attention_fused(&half(&k), &half(&v), scale).unwrap();
        let wide = |x: &Tensor| half(x).to_dtype(DType::F32).unwrap();
        let (o32, l32) = wide(&q).causal_attention_reference(&wide(&k), &wide(&v), scale).unwrap();
        assert_eq!(o16.dtype(), DType::BF16);
        close(&format!("bf16 out at {at}"), &o16, &o32, 1e-2);
        close(&format!("bf16 lse at {at}"), &l16, &l32, 2e-6);
    }
    // Degenerate sizes give results, not panics: no queries, a head dimension of zero.
    for (t, len, d) in [(0, 0, 8), (0, 5, 8), (3, 4, 0)] {
        let q = Tensor::zeros((t, 2, d), DType::F32, CPU).unwrap();
        let kv = Tensor::zeros((len, 1, d), DType::F32, CPU).unwrap();
        let (o, l) = q.causal_attention_fused(&kv, &kv, 1.0).unwrap();
        assert_eq!((o.dims(), l.dims()), (&[t, 2, d][..], &[2, t][..]));
        let g = q.causal_attention_backward_fused(&kv, &kv, &o, &l, &q, 1.0).unwrap();
        assert_eq!((g.0.dims(), g.1.dims()), (&[t, 2, d][..], &[len, 1, d][..]));
    }
    // The dispatching entry points: the composition below CPU_FUSED_MIN_KEYS keys, the fused
    // kernels from there, forward and backward, bit for bit.
    for len in [artist_tensor::CPU_FUSED_MIN_KEYS - 1, artist_tensor::CPU_FUSED_MIN_KEYS] {
        let q = Tensor::randn((3, 4, 8), 0.0, 1.0, DType::F32, CPU, &mut rng).unwrap();
        let k = Tensor::randn((len, 2, 8), 0.0, 1.0, DType::F32, CPU, &mut rng).unwrap();
        let v = Tensor::randn((len, 2, 8), 0.0, 1.0, DType::F32, CPU, &mut rng).unwrap();
        let dout = Tensor::randn((3, 4, 8), 0.0, 1.0, DType::F32, CPU, &mut rng).unwrap();
        let (o, l) = q.causal_attention(&k, &v, 0.3).unwrap();
        let grads = q.causal_attention_backward(&k, &v, &o, &l, &dout, 0.3).unwrap();
        let (want_o, want_l, want_g) = if len >= artist_tensor::CPU_FUSED_MIN_KEYS {
            let (o, l) = q.causal_attention_fused(&k, &v, 0.3).unwrap();
            let g = q.causal_attention_backward_fused(&k, &v, &o, &l, &dout, 0.3).unwrap();
            (o, l, g)
        } else {
            let (o, l) = q.causal_attention_reference(&k, &v, 0.3).unwrap();
            (o, l, q.causal_attention_backward_reference(&k, &v, &dout, 0.3).unwrap())
        };
        let bits = |x: &Tensor| x.to_f32_vec().unwrap();
        assert_eq!((bits(&o), bits(&l)), (bits(&want_o), bits(&want_l)), "forward at {len} keys");
        for (a, b) in [(&grads.0, &want_g.0), (&grads.1, &want_g.1), (&grads.2, &want_g.2)] {
            assert_eq!(bits(a), bits(b), "backward at {len} keys");
        }
    }
}

/// `cpu::on_worker` runs its closure on one of the global pool's workers (where parallel ops
/// split without waking the caller) when that pool has more than one thread, else on the
/// calling thread, returning the closure's value either way. The test thread is outside
/// the pool.
#[test]
fn on_worker_runs_inside_the_pool() {
    assert_eq!(rayon::current_thread_index(), None, "the test starts outside the pool");
    let (inside, value) = artist_tensor::cpu::on_worker(|| (rayon::current_thread_index().is_some(), 42));
    assert_eq!(value, 42);
    assert_eq!(inside, rayon::current_num_threads() > 1, "{} threads", rayon::current_num_threads());
}
