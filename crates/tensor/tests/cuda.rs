//! The CUDA backend against the CPU backend, op by op, forward and backward ops alike, on
//! random inputs: contiguous, transposed, narrowed and broadcast views, every float dtype.
//!
//! Runs on a real GPU when the driver finds one; otherwise on the CPU emulator of the CUDA
//! backend (the same kernel sources compiled as C++), so it runs in CI too. Without either
//! it says why and passes. Tolerances: f32 within 1e-5 relative (the GPU contracts
//! multiply-adds and sums in another order), half types within one or two units of their
//! last place; data movement, comparisons, indexing, argmax/top-k and AdamW exactly.

#![allow(clippy::needless_range_loop, clippy::type_complexity)]

use artist_tensor::{AdamWScalars, BlockTable, CmpOp, DType, Device, PagedBatch, QkNorm, Tensor, cuda, rope_tables};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gpu() -> Option<Device> {
    match cuda::test_backend() {
        Ok(b) => {
            let d = Device::cuda(0).expect("the chosen CUDA runtime opens device 0");
            if std::env::var("ARTIST_GPU_VERBOSE").is_ok() {
                eprintln!("CUDA tests on {:?}: {:?}", b, cuda::info(0).unwrap());
            }
            Some(d)
        }
        Err(why) => {
            eprintln!("skipping the CUDA tests: {why}");
            None
        }
    }
}

macro_rules! gpu_or_skip {
    () => {
        match gpu() {
            Some(d) => d,
            None => return,
        }
    };
}

fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(rand_vec(n, seed, -2.0, 2.0), shape.to_vec(), Device::Cpu).unwrap()
}

/// Tolerances by dtype: (relative, absolute).
fn tol(d: DType) -> (f32, f32) {
    match d {
        DType::F32 => (1e-5, 1e-6),
        DType::BF16 => (1.6e-2, 1e-3),
        DType::F16 => (2e-3, 1e-4),
        _ => (0.0, 0.0),
    }
}

/// `got` (any device) equals `want` (CPU) in shape and dtype, and element-wise within
/// `rtol`/`atol`; NaN must meet NaN.
fn close(what: &str, got: &Tensor, want: &Tensor, rtol: f32, atol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = if b.is_nan() {
            a.is_nan()
        } else if b.is_infinite() {
            a == b
        } else {
            (a - b).abs() <= atol + rtol * b.abs()
        };
        assert!(ok, "{what}: element {i}: got {a}, want {b} (rtol {rtol}, atol {atol})");
    }
}

fn same(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    assert_eq!(got.to_bytes().unwrap(), want.to_bytes().unwrap(), "{what}: bytes");
}

/// The same value three ways: contiguous, a transposed view, a narrowed view (for inputs
/// of rank 2 or more), on both devices.
fn views(shape: &[usize], seed: u64, dev: Device) -> Vec<(String, Tensor, Tensor)> {
    let r = shape.len();
    let x = randn(shape, seed);
    let mut out = vec![("contiguous".to_string(), x.to_device(dev).unwrap(), x.clone())];
    if r >= 2 {
        let mut ts = shape.to_vec();
        ts.swap(r - 2, r - 1);
        let t = randn(&ts, seed + 1);
        let (tc, tg) = (t.transpose(-2, -1).unwrap(), t.to_device(dev).unwrap().transpose(-2, -1).unwrap());
        out.push(("transposed".into(), tg, tc));
    }
    let mut wide = shape.to_vec();
    wide[r - 1] += 3;
    let w = randn(&wide, seed + 2);
    let (wc, wg) =
        (w.narrow(-1, 1, shape[r - 1]).unwrap(), w.to_device(dev).unwrap().narrow(-1, 1, shape[r - 1]).unwrap());
    out.push(("narrowed".into(), wg, wc));
    out
}

#[test]
fn storage_round_trips_and_constructors() {
    let dev = gpu_or_skip!();
    let x = randn(&[3, 5, 7], 1);
    for d in [DType::F32, DType::BF16, DType::F16, DType::U32, DType::U8] {
        let c = x.abs().unwrap().mul_scalar(40.0).unwrap().to_dtype(d).unwrap();
        let g = c.to_device(dev).unwrap();
        assert_eq!(g.device(), dev);
        same(&format!("round trip {d}"), &g.to_device(Device::Cpu).unwrap(), &c);
        same(&format!("to_vec {d}"), &g, &c);
        same(
            &format!("zeros {d}"),
            &Tensor::zeros((4, 3), d, dev).unwrap(),
            &Tensor::zeros((4, 3), d, Device::Cpu).unwrap(),
        );
        for v in [1.5f32, -3.25, 1e-3, 300.7] {
            let want = Tensor::full(v, (2, 129), d, Device::Cpu).unwrap();
            same(&format!("full({v}) {d}"), &Tensor::full(v, (2, 129), d, dev).unwrap(), &want);
        }
    }
    let a = Tensor::arange(1000, DType::F32, dev).unwrap();
    same("arange", &a, &Tensor::arange(1000, DType::F32, Device::Cpu).unwrap());
    // Empty tensors move too.
    let e = Tensor::zeros((0, 4), DType::F32, dev).unwrap();
    assert_eq!(e.to_vec::<f32>().unwrap(), Vec::<f32>::new());
    assert_eq!(Tensor::from_vec(vec![7u32], (), dev).unwrap().to_scalar::<u32>().unwrap(), 7);
}

#[test]
fn views_copy_and_cast_exactly() {
    let dev = gpu_or_skip!();
    let x = randn(&[4, 6, 10], 2);
    let g = x.to_device(dev).unwrap();
    let cases: Vec<(&str, Box<dyn Fn(&Tensor) -> Tensor>)> = vec![
        ("transpose", Box::new(|t: &Tensor| t.transpose(0, 2).unwrap())),
        ("permute", Box::new(|t: &Tensor| t.permute(&[1, 2, 0]).unwrap())),
        ("narrow", Box::new(|t: &Tensor| t.narrow(2, 3, 5).unwrap().narrow(0, 1, 2).unwrap())),
        ("broadcast", Box::new(|t: &Tensor| t.narrow(1, 2, 1).unwrap().broadcast_as((2, 4, 6, 10)).unwrap())),
        ("reshape of a view", Box::new(|t: &Tensor| t.transpose(1, 2).unwrap().reshape((4, 60)).unwrap())),
    ];
    for (name, f) in &cases {
        same(name, &f(&g).contiguous().unwrap(), &f(&x).contiguous().unwrap());
        for d in [DType::BF16, DType::F16, DType::U32, DType::U8] {
            same(&format!("{name} to {d}"), &f(&g).to_dtype(d).unwrap(), &f(&x).to_dtype(d).unwrap());
        }
    }
    // Rounding and saturation of special values, every pair of types.
    let special = Tensor::from_vec(
        vec![
            0.0f32,
            -0.0,
            1.0,
            -1.5,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 512.0,
            65504.0,
            65520.0,
            1e-8,
            -1e-8,
            6.1e-5,
            3e-7,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            255.6,
            256.0,
            4.3e9,
            -7.0,
            16777217.0,
        ],
        20,
        Device::Cpu,
    )
    .unwrap();
    let all = [DType::F32, DType::BF16, DType::F16, DType::U32, DType::U8];
    for a in all {
        let src = special.to_dtype(a).unwrap();
        for b in all {
            let (got, want) = (src.to_device(dev).unwrap().to_dtype(b).unwrap(), src.to_dtype(b).unwrap());
            let (gb, wb) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
            for (i, (p, q)) in gb.iter().zip(&wb).enumerate() {
                assert!(p == q || (p.is_nan() && q.is_nan()), "cast {a} -> {b} of element {i}: got {p}, want {q}");
            }
        }
    }
}

#[test]
fn copy_from_writes_through_views() {
    let dev = gpu_or_skip!();
    // A KV cache: [slots, max_len, heads, d], written a few positions at a time.
    let mut cache_c = Tensor::zeros((3, 16, 2, 8), DType::F32, Device::Cpu).unwrap();
    let mut cache_g = Tensor::zeros((3, 16, 2, 8), DType::F32, dev).unwrap();
    for (step, (slot, pos, len)) in [(0usize, 0usize, 5usize), (2, 0, 1), (0, 5, 3), (1, 7, 9)].into_iter().enumerate()
    {
        let kv = randn(&[len, 2, 8], 10 + step as u64);
        cache_c.get(slot).unwrap().narrow(0, pos, len).unwrap().copy_from(&kv).unwrap();
        cache_g.get(slot).unwrap().narrow(0, pos, len).unwrap().copy_from(&kv.to_device(dev).unwrap()).unwrap();
    }
    same("kv cache writes", &cache_g, &cache_c);
    // Broadcast source, transposed destination, and a copy within one storage.
    let row = randn(&[8], 20);
    cache_c.get(1).unwrap().narrow(0, 0, 4).unwrap().transpose(0, 1).unwrap().copy_from(&row).unwrap();
    cache_g
        .get(1)
        .unwrap()
        .narrow(0, 0, 4)
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .copy_from(&row.to_device(dev).unwrap())
        .unwrap();
    same("broadcast into a transposed view", &cache_g, &cache_c);
    let (fc, fg) = (cache_c.get(0).unwrap(), cache_g.get(0).unwrap());
    cache_c.get(2).unwrap().copy_from(&fc).unwrap();
    cache_g.get(2).unwrap().copy_from(&fg).unwrap();
    same("slot fork", &cache_g, &cache_c);
    // In-place updates.
    let acc_c = randn(&[5, 7], 21);
    let acc_g = acc_c.to_device(dev).unwrap();
    let inc = randn(&[5, 7], 22);
    acc_c.add_assign(&inc).unwrap();
    acc_g.add_assign(&inc.to_device(dev).unwrap()).unwrap();
    same("add_assign", &acc_g, &acc_c);
    // Into views, in one pass (the tape's slice gradients): a column slice (whole vectors per
    // row on the GPU), a transposed slice, a broadcast source; each against the same sum made
    // in a fresh tensor and copied in, on both devices.
    let parts: [(&str, fn(&Tensor) -> Tensor, Vec<usize>); 3] = [
        ("a column slice", |t| t.narrow(1, 8, 16).unwrap(), vec![6, 16]),
        ("a transposed slice", |t| t.narrow(0, 1, 4).unwrap().transpose(0, 1).unwrap(), vec![32, 4]),
        ("a broadcast row into a slice", |t| t.narrow(0, 2, 3).unwrap(), vec![32]),
    ];
    for (k, (what, view, shape)) in parts.into_iter().enumerate() {
        let big_c = randn(&[6, 32], 23 + k as u64);
        let (big_g, want) = (big_c.to_device(dev).unwrap(), big_c.copy().unwrap());
        let inc = randn(&shape, 26 + k as u64);
        let w = view(&want);
        w.copy_from(&w.add(&inc.broadcast_as(w.dims()).unwrap()).unwrap()).unwrap();
        let inc = inc.broadcast_as(w.dims()).unwrap();
        view(&big_c).add_assign(&inc).unwrap();
        view(&big_g).add_assign(&inc.to_device(dev).unwrap()).unwrap();
        same(&format!("add_assign into {what} (CPU)"), &big_c, &want);
        same(&format!("add_assign into {what} (GPU)"), &big_g, &want);
    }
    let err = acc_c.narrow(0, 0, 1).unwrap().broadcast_as((3, 7)).unwrap().add_assign(&randn(&[3, 7], 29));
    assert!(err.unwrap_err().to_string().contains("broadcast"), "adding into a broadcast view is refused");
    acc_c.scale_in_place(-0.37).unwrap();
    acc_g.scale_in_place(-0.37).unwrap();
    same("scale_in_place", &acc_g, &acc_c);
    let sum = acc_g.update_f32(|v| {
        v[3] = 42.0;
        v.iter().sum::<f32>()
    });
    assert!(sum.unwrap().is_finite());
    assert_eq!(acc_g.to_vec::<f32>().unwrap()[3], 42.0);
    let (sc, sg) = (acc_c.sum_squares_f64().unwrap(), acc_g.sum_squares_f64().unwrap());
    let want: f64 = acc_g.to_vec::<f32>().unwrap().iter().map(|&x| x as f64 * x as f64).sum();
    assert!((sg - want).abs() <= 1e-12 * want, "sum of squares {sg} vs {want} (cpu before the write {sc})");
    _ = (&mut cache_c, &mut cache_g);
}

#[test]
fn unary_ops_match() {
    let dev = gpu_or_skip!();
    type Op = fn(&Tensor) -> artist_tensor::Result<Tensor>;
    let ops: Vec<(&str, Op)> = vec![
        ("neg", Tensor::neg),
        ("abs", Tensor::abs),
        ("exp", Tensor::exp),
        ("log(|x|)", |t| t.abs()?.log()),
        ("sqrt(|x|)", |t| t.abs()?.sqrt()),
        ("rsqrt(|x|+.1)", |t| t.abs()?.add_scalar(0.1)?.rsqrt()),
        ("recip", Tensor::recip),
        ("sqr", Tensor::sqr),
        ("sin", Tensor::sin),
        ("cos", Tensor::cos),
        ("tanh", Tensor::tanh),
        ("relu", Tensor::relu),
        ("sigmoid", Tensor::sigmoid),
        ("silu", Tensor::silu),
        ("gelu", Tensor::gelu),
        ("affine", |t| t.affine(0.75, -0.125)),
        ("mul_scalar", |t| t.mul_scalar(3.0)),
        ("powf", |t| t.abs()?.powf(1.7)),
        ("clamp", |t| t.clamp(-0.5, 0.75)),
    ];
    for (name, f) in &ops {
        for d in [DType::F32, DType::BF16, DType::F16] {
            for (view, g, c) in views(&[6, 33], 3, dev) {
                let (g, c) = (g.to_dtype(d).unwrap(), c.to_dtype(d).unwrap());
                let (rt, at) = tol(d);
                close(&format!("{name} {d} {view}"), &f(&g).unwrap(), &f(&c).unwrap(), rt * 4.0, at * 4.0);
            }
        }
    }
    // NaN and infinities pass through as on the CPU.
    let s = Tensor::from_vec(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0], 4, Device::Cpu).unwrap();
    for (name, f) in &ops {
        close(&format!("{name} of specials"), &f(&s.to_device(dev).unwrap()).unwrap(), &f(&s).unwrap(), 1e-6, 1e-6);
    }
}

#[test]
fn binary_ops_broadcast_and_match() {
    let dev = gpu_or_skip!();
    type Op = fn(&Tensor, &Tensor) -> artist_tensor::Result<Tensor>;
    let ops: Vec<(&str, Op)> = vec![
        ("add", Tensor::add),
        ("sub", Tensor::sub),
        ("mul", Tensor::mul),
        ("div", Tensor::div),
        ("maximum", Tensor::maximum),
        ("minimum", Tensor::minimum),
        ("pow", |a, b| a.abs()?.pow(b)),
        ("silu_mul", Tensor::silu_mul),
        ("silu_backward", Tensor::silu_backward),
        ("sigmoid_backward", Tensor::sigmoid_backward),
        ("tanh_backward", Tensor::tanh_backward),
        ("clamp_backward", |g, x| g.clamp_backward(x, -0.5, 0.5)),
    ];
    let shapes: [(&[usize], &[usize]); 4] =
        [(&[4, 9], &[4, 9]), (&[4, 9], &[9]), (&[3, 1, 9], &[4, 1]), (&[2, 3, 4, 5], &[3, 1, 5])];
    for (name, f) in &ops {
        for (i, (sa, sb)) in shapes.iter().enumerate() {
            for d in [DType::F32, DType::BF16] {
                let (a, b) =
                    (randn(sa, 30 + i as u64).to_dtype(d).unwrap(), randn(sb, 40 + i as u64).to_dtype(d).unwrap());
                let (ga, gb) = (a.to_device(dev).unwrap(), b.to_device(dev).unwrap());
                let (rt, at) = tol(d);
                close(
                    &format!("{name} {sa:?} {sb:?} {d}"),
                    &f(&ga, &gb).unwrap(),
                    &f(&a, &b).unwrap(),
                    rt * 2.0,
                    at * 2.0,
                );
            }
        }
        for ((va, ga, ca), (_, gb, cb)) in views(&[5, 12], 50, dev).into_iter().zip(views(&[5, 12], 60, dev)) {
            close(&format!("{name} {va}"), &f(&ga, &gb).unwrap(), &f(&ca, &cb).unwrap(), 2e-5, 2e-6);
        }
    }
    // Operator sugar with a scalar, and a device mismatch is an error.
    let a = randn(&[3, 4], 70);
    close("a * 2.5", &(&a.to_device(dev).unwrap() * 2.5).unwrap(), &(&a * 2.5).unwrap(), 0.0, 0.0);
    assert!(a.add(&a.to_device(dev).unwrap()).is_err());
    // Closures run on the CPU only, with an error naming the op.
    let err = a.to_device(dev).unwrap().map_f32("my_op", |x| x).unwrap_err().to_string();
    assert!(err.contains("my_op") && err.contains("CPU"), "{err}");
}

#[test]
fn comparisons_and_where() {
    let dev = gpu_or_skip!();
    let a = randn(&[6, 10], 80).mul_scalar(3.0).unwrap().round_to_halves();
    let b = randn(&[10], 81).mul_scalar(3.0).unwrap().round_to_halves();
    for d in [DType::F32, DType::BF16, DType::F16, DType::U32, DType::U8] {
        let (ac, bc) = (a.abs().unwrap().to_dtype(d).unwrap(), b.abs().unwrap().to_dtype(d).unwrap());
        let (ag, bg) = (ac.to_device(dev).unwrap(), bc.to_device(dev).unwrap());
        for op in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
            same(&format!("{op:?} {d}"), &ag.cmp(op, &bg).unwrap(), &ac.cmp(op, &bc).unwrap());
        }
    }
    // Big u32 values compare as integers, not through f32.
    let big = Tensor::from_vec(vec![16777216u32, 16777217, 4_000_000_000], 3, Device::Cpu).unwrap();
    let big2 = Tensor::from_vec(vec![16777217u32, 16777217, 3_999_999_999], 3, Device::Cpu).unwrap();
    same("u32 lt", &big.to_device(dev).unwrap().lt(&big2.to_device(dev).unwrap()).unwrap(), &big.lt(&big2).unwrap());
    let cond = a.gt(&b).unwrap();
    for d in [DType::F32, DType::BF16, DType::U8] {
        let (t, f) = (a.to_dtype(d).unwrap(), b.neg().unwrap().to_dtype(d).unwrap());
        let want = cond.where_cond(&t, &f).unwrap();
        let got =
            cond.to_device(dev).unwrap().where_cond(&t.to_device(dev).unwrap(), &f.to_device(dev).unwrap()).unwrap();
        same(&format!("where {d}"), &got, &want);
    }
    let mask = Tensor::causal_mask(5, 8, Device::Cpu).unwrap();
    let x = randn(&[2, 5, 8], 82);
    same(
        "masked_fill",
        &x.to_device(dev).unwrap().masked_fill(&mask.to_device(dev).unwrap(), f32::NEG_INFINITY).unwrap(),
        &x.masked_fill(&mask, f32::NEG_INFINITY).unwrap(),
    );
    same("causal_mask on the GPU", &Tensor::causal_mask(5, 8, dev).unwrap(), &mask);
}

trait Halves {
    fn round_to_halves(&self) -> Tensor;
}

impl Halves for Tensor {
    /// Values rounded to multiples of 0.5, so comparisons see ties.
    fn round_to_halves(&self) -> Tensor {
        let v: Vec<f32> = self.to_vec::<f32>().unwrap().iter().map(|x| (x * 2.0).round() / 2.0).collect();
        Tensor::from_vec(v, self.shape().clone(), Device::Cpu).unwrap()
    }
}

#[test]
fn reductions_match() {
    let dev = gpu_or_skip!();
    for d in [DType::F32, DType::BF16] {
        for (view, g, c) in views(&[5, 6, 70], 90, dev) {
            let (g, c) = (g.to_dtype(d).unwrap(), c.to_dtype(d).unwrap());
            for dim in [0isize, 1, 2, -1] {
                let (rt, at) = tol(d);
                let what = |op: &str| format!("{op} dim {dim} {d} {view}");
                close(&what("sum"), &g.sum_keepdim(dim).unwrap(), &c.sum_keepdim(dim).unwrap(), rt * 4.0, 1e-4);
                close(&what("mean"), &g.mean(dim).unwrap(), &c.mean(dim).unwrap(), rt * 4.0, 1e-5);
                same(&what("max"), &g.max_keepdim(dim).unwrap(), &c.max_keepdim(dim).unwrap());
                same(&what("min"), &g.min(dim).unwrap(), &c.min(dim).unwrap());
                same(&what("argmax"), &g.argmax_keepdim(dim).unwrap(), &c.argmax_keepdim(dim).unwrap());
                same(&what("argmin"), &g.argmin(dim).unwrap(), &c.argmin(dim).unwrap());
                let _ = at;
            }
        }
    }
    // Ties, NaN and a long row (the vocabulary case, one block per row).
    let mut v = rand_vec(3 * 5000, 91, -1.0, 1.0);
    v[17] = 5.0;
    v[4000] = 5.0;
    v[5000 + 123] = f32::NAN;
    v[5000 + 4321] = f32::NAN;
    v[10000 + 9] = -7.0;
    v[10000 + 99] = -7.0;
    let t = Tensor::from_vec(v, (3, 5000), Device::Cpu).unwrap();
    let g = t.to_device(dev).unwrap();
    same("argmax ties and NaN", &g.argmax(-1).unwrap(), &t.argmax(-1).unwrap());
    same("argmin ties and NaN", &g.argmin(-1).unwrap(), &t.argmin(-1).unwrap());
    same("max with NaN", &g.max(-1).unwrap(), &t.max(-1).unwrap());
    close("sum of a long row", &g.sum(-1).unwrap(), &t.sum(-1).unwrap(), 1e-4, 1e-3);
    close("sum_all", &g.sum_all().unwrap(), &t.sum_all().unwrap(), 1e-4, 1e-3);
    close("sum_to", &g.sum_to((3, 1)).unwrap(), &t.sum_to((3, 1)).unwrap(), 1e-4, 1e-3);
    let e = Tensor::zeros((4, 0), DType::F32, Device::Cpu).unwrap();
    same("max of nothing", &e.to_device(dev).unwrap().max(-1).unwrap(), &e.max(-1).unwrap());
}

#[test]
fn softmax_rmsnorm_rope_match() {
    let dev = gpu_or_skip!();
    for d in [DType::F32, DType::BF16, DType::F16] {
        let (rt, at) = tol(d);
        for (view, g, c) in views(&[7, 300], 100, dev) {
            let (g, c) = (g.to_dtype(d).unwrap(), c.to_dtype(d).unwrap());
            close(&format!("softmax {d} {view}"), &g.softmax(-1).unwrap(), &c.softmax(-1).unwrap(), rt * 2.0, at);
            close(
                &format!("log_softmax {d} {view}"),
                &g.log_softmax(-1).unwrap(),
                &c.log_softmax(-1).unwrap(),
                rt * 2.0,
                at * 4.0,
            );
            close(&format!("softmax dim 0 {d} {view}"), &g.softmax(0).unwrap(), &c.softmax(0).unwrap(), rt * 2.0, at);
            let w = randn(&[300], 101).to_dtype(d).unwrap();
            close(
                &format!("rms_norm {d} {view}"),
                &g.rms_norm(&w.to_device(dev).unwrap(), 1e-6).unwrap(),
                &c.rms_norm(&w, 1e-6).unwrap(),
                rt * 2.0,
                at * 2.0,
            );
        }
        // Fully masked rows give NaN; a vocabulary-sized row.
        let mut m = randn(&[3, 151_936 / 8], 102);
        m = m.masked_fill(&Tensor::from_vec(vec![0u8, 1, 0], (3, 1), Device::Cpu).unwrap(), f32::NEG_INFINITY).unwrap();
        let m = m.to_dtype(d).unwrap();
        close(
            &format!("masked softmax {d}"),
            &m.to_device(dev).unwrap().softmax(-1).unwrap(),
            &m.softmax(-1).unwrap(),
            rt * 2.0,
            at,
        );
        // Rows partly masked, the masked positions first, last and in between: the running
        // maximum starts at -inf and must skip them.
        let mut v = rand_vec(2 * 40, 105, -3.0, 3.0);
        for j in [0usize, 1, 2, 17, 39, 40, 63, 79] {
            v[j] = f32::NEG_INFINITY;
        }
        let pm = Tensor::from_vec(v, (2, 40), Device::Cpu).unwrap().to_dtype(d).unwrap();
        for log in [false, true] {
            let f = |t: &Tensor| if log { t.log_softmax(-1).unwrap() } else { t.softmax(-1).unwrap() };
            close(&format!("partly masked (log {log}) {d}"), &f(&pm.to_device(dev).unwrap()), &f(&pm), rt * 2.0, at);
        }
        // Row entropies of the softmax (the GPU composes them from the log-softmax).
        let z = randn(&[5, 300], 106).to_dtype(d).unwrap();
        let (g, c) = (z.to_device(dev).unwrap().softmax_entropy().unwrap(), z.softmax_entropy().unwrap());
        for (a, b) in g.iter().zip(&c) {
            assert!((a - b).abs() <= rt * 4.0 * b.abs().max(1.0), "softmax_entropy {d}: {a} vs {b}");
        }
        // RoPE with positions shared by the batch and per sequence; head dim 16 takes 8 pairs
        // per thread, 12 one.
        let x = randn(&[2, 5, 3, 16], 103).to_dtype(d).unwrap();
        let (cos, sin) = rope_tables(&[3, 4, 5, 6, 7], 16, 10000.0, Device::Cpu).unwrap();
        let x12 = randn(&[2, 5, 3, 12], 104).to_dtype(d).unwrap();
        let (c12, s12) = rope_tables(&[3, 4, 5, 6, 7], 12, 10000.0, Device::Cpu).unwrap();
        same(
            &format!("rope head dim 12 {d}"),
            &x12.to_device(dev).unwrap().rope(&c12.to_device(dev).unwrap(), &s12.to_device(dev).unwrap()).unwrap(),
            &x12.rope(&c12, &s12).unwrap(),
        );
        close(
            &format!("rope {d}"),
            &x.to_device(dev).unwrap().rope(&cos.to_device(dev).unwrap(), &sin.to_device(dev).unwrap()).unwrap(),
            &x.rope(&cos, &sin).unwrap(),
            rt,
            at,
        );
        let (c2, s2) = rope_tables(&[0, 1, 2, 3, 4, 9, 10, 11, 12, 13], 16, 1e6, Device::Cpu).unwrap();
        let (c2, s2) = (c2.reshape((2, 5, 8)).unwrap(), s2.reshape((2, 5, 8)).unwrap());
        close(
            &format!("rope per sequence {d}"),
            &x.to_device(dev).unwrap().rope(&c2, &s2).unwrap(),
            &x.rope(&c2, &s2).unwrap(),
            rt,
            at,
        );
    }
}

#[test]
fn indexing_matches_exactly() {
    let dev = gpu_or_skip!();
    let x = randn(&[11, 6, 5], 110);
    let ids = Tensor::from_vec(vec![3u32, 0, 10, 3, 3, 7], 6, Device::Cpu).unwrap();
    for d in [DType::F32, DType::BF16, DType::U32] {
        let xc = x.abs().unwrap().mul_scalar(10.0).unwrap().to_dtype(d).unwrap();
        let xg = xc.to_device(dev).unwrap();
        for dim in [0isize, 1, 2] {
            let size = x.dims()[dim as usize] as u32;
            let ids =
                Tensor::from_vec(ids.to_vec::<u32>().unwrap().iter().map(|&i| i % size).collect(), 6, Device::Cpu)
                    .unwrap();
            same(
                &format!("index_select dim {dim} {d}"),
                &xg.index_select(&ids.to_device(dev).unwrap(), dim).unwrap(),
                &xc.index_select(&ids, dim).unwrap(),
            );
        }
        let w = xc.get(0).unwrap(); // [6, 5]
        let tok = Tensor::from_vec(vec![3u32, 0, 5, 3, 3, 1], (2, 3), Device::Cpu).unwrap();
        same(
            &format!("embedding {d}"),
            &Tensor::embedding(&tok, &w.to_device(dev).unwrap()).unwrap(),
            &Tensor::embedding(&tok, &w).unwrap(),
        );
        // gather along each dimension
        for dim in 0..3usize {
            let mut shape = x.dims().to_vec();
            shape[dim] = 4;
            let n: usize = shape.iter().product();
            let mut r = ChaCha8Rng::seed_from_u64(111 + dim as u64);
            let idx: Vec<u32> = (0..n).map(|_| r.random_range(0..x.dims()[dim] as u32)).collect();
            let index = Tensor::from_vec(idx, shape, Device::Cpu).unwrap();
            same(
                &format!("gather dim {dim} {d}"),
                &xg.gather(dim as isize, &index.to_device(dev).unwrap()).unwrap(),
                &xc.gather(dim as isize, &index).unwrap(),
            );
        }
    }
    // Accumulation with repeated indices: the same order, so the same bits.
    for d in [DType::F32, DType::BF16] {
        let base = randn(&[9, 4, 6], 120).to_dtype(d).unwrap();
        let src = randn(&[9, 8, 6], 121).to_dtype(d).unwrap();
        let ids = Tensor::from_vec(vec![1u32, 3, 1, 0, 1, 2, 3, 3], 8, Device::Cpu).unwrap();
        same(
            &format!("index_add {d}"),
            &base.to_device(dev).unwrap().index_add(1, &ids, &src.to_device(dev).unwrap()).unwrap(),
            &base.index_add(1, &ids, &src).unwrap(),
        );
        let mut r = ChaCha8Rng::seed_from_u64(122);
        let index: Vec<u32> = (0..9 * 8 * 6).map(|_| r.random_range(0..4u32)).collect();
        let index = Tensor::from_vec(index, (9, 8, 6), Device::Cpu).unwrap();
        same(
            &format!("scatter_add {d}"),
            &base.to_device(dev).unwrap().scatter_add(1, &index, &src.to_device(dev).unwrap()).unwrap(),
            &base.scatter_add(1, &index, &src).unwrap(),
        );
        let emb_grad = Tensor::zeros((50, 6), d, Device::Cpu).unwrap();
        let tok = Tensor::from_vec(vec![5u32, 9, 5, 5, 49, 0, 9], 7, Device::Cpu).unwrap();
        let g = randn(&[7, 6], 123).to_dtype(d).unwrap();
        same(
            &format!("embedding backward {d}"),
            &emb_grad.to_device(dev).unwrap().index_add(0, &tok, &g.to_device(dev).unwrap()).unwrap(),
            &emb_grad.index_add(0, &tok, &g).unwrap(),
        );
    }
    // Out-of-range indices are refused before anything runs.
    let bad = Tensor::from_vec(vec![0u32, 11], 2, Device::Cpu).unwrap();
    assert!(x.to_device(dev).unwrap().index_select(&bad, 0).is_err());
    // cat along each dimension, with an empty part.
    let parts: Vec<Tensor> = [2usize, 0, 3].iter().map(|&n| randn(&[4, n, 5], 130 + n as u64)).collect();
    let gp: Vec<Tensor> = parts.iter().map(|p| p.to_device(dev).unwrap()).collect();
    same(
        "cat dim 1",
        &Tensor::cat(&gp.iter().collect::<Vec<_>>(), 1).unwrap(),
        &Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1).unwrap(),
    );
    let (a, b) = (randn(&[2, 3], 131), randn(&[5, 3], 132));
    same(
        "cat dim 0",
        &Tensor::cat(&[&a.to_device(dev).unwrap(), &b.to_device(dev).unwrap()], 0).unwrap(),
        &Tensor::cat(&[&a, &b], 0).unwrap(),
    );
}

#[test]
fn topk_matches_with_ties_and_nan() {
    let dev = gpu_or_skip!();
    let cols = 300;
    let mut v = rand_vec(4 * cols, 140, -3.0, 3.0);
    for i in 0..cols {
        if i % 7 == 0 {
            v[i] = 1.0; // ties in row 0
        }
    }
    v[cols + 5] = f32::NAN;
    v[cols + 6] = f32::INFINITY;
    v[cols + 200] = f32::NAN;
    let t = Tensor::from_vec(v, (4, cols), Device::Cpu).unwrap();
    for d in [DType::F32, DType::BF16] {
        let t = t.to_dtype(d).unwrap();
        for k in [1usize, 5, 50, cols] {
            let (vc, ic) = t.topk(k).unwrap();
            let (vg, ig) = t.to_device(dev).unwrap().topk(k).unwrap();
            same(&format!("topk {k} values {d}"), &vg, &vc);
            same(&format!("topk {k} indices {d}"), &ig, &ic);
        }
    }
}

/// Matrix products over every layout cuBLAS is handed: plain, transposed either side,
/// broadcast batches, batches whose offsets are not one stride (copied first), empty sums.
#[test]
fn matmul_matches_across_layouts() {
    let dev = gpu_or_skip!();
    let cases: Vec<(&str, Vec<usize>, Vec<usize>, bool, bool)> = vec![
        ("square", vec![8, 8], vec![8, 8], false, false),
        ("rect", vec![5, 7], vec![7, 3], false, false),
        ("lhs transposed", vec![5, 7], vec![7, 3], true, false),
        ("rhs transposed", vec![5, 7], vec![7, 3], false, true),
        ("both transposed", vec![5, 7], vec![7, 3], true, true),
        ("batched", vec![4, 5, 7], vec![4, 7, 3], false, false),
        ("broadcast rhs", vec![4, 5, 7], vec![7, 3], false, true),
        ("broadcast batch dims", vec![2, 1, 5, 7], vec![3, 7, 6], false, false),
        ("vector", vec![1, 7], vec![7, 1], false, false),
        ("one column", vec![6, 1], vec![1, 4], false, false),
    ];
    for (name, sa, sb, ta, tb) in &cases {
        for d in [DType::F32, DType::BF16, DType::F16] {
            let make = |shape: &Vec<usize>, t: bool, seed: u64| -> (Tensor, Tensor) {
                let r = shape.len();
                if t {
                    let mut s = shape.clone();
                    s.swap(r - 2, r - 1);
                    let x = randn(&s, seed).to_dtype(d).unwrap();
                    (x.transpose(-2, -1).unwrap(), x.to_device(dev).unwrap().transpose(-2, -1).unwrap())
                } else {
                    let x = randn(shape, seed).to_dtype(d).unwrap();
                    (x.clone(), x.to_device(dev).unwrap())
                }
            };
            let (ac, ag) = make(sa, *ta, 150);
            let (bc, bg) = make(sb, *tb, 151);
            let (rt, at) = tol(d);
            close(
                &format!("matmul {name} {d}"),
                &ag.matmul(&bg).unwrap(),
                &ac.matmul(&bc).unwrap(),
                rt * 2.0,
                at * 4.0,
            );
            // The f32-output GEMM: exact products of the half operands, f32 sums, f32 out
            // (f32 operands: the plain product).
            let got = ag.matmul_f32(&bg).unwrap();
            assert_eq!(got.dtype(), DType::F32, "matmul_f32 {name} {d}");
            close(&format!("matmul_f32 {name} {d}"), &got, &ac.matmul_f32(&bc).unwrap(), 1e-5, 1e-5);
        }
    }
    // Attention-shaped: per-head queries against a permuted cache view (batch offsets that
    // are not one arithmetic progression after the permute are copied first).
    let q = randn(&[2, 6, 16], 160);
    let k = randn(&[9, 2, 16], 161);
    let want = q.matmul(&k.permute(&[1, 2, 0]).unwrap()).unwrap();
    let got = q.to_device(dev).unwrap().matmul(&k.to_device(dev).unwrap().permute(&[1, 2, 0]).unwrap()).unwrap();
    close("scores against a permuted cache", &got, &want, 1e-5, 1e-5);
    let k4 = randn(&[3, 4, 5, 2], 162);
    let v4 = k4.permute(&[2, 0, 3, 1]).unwrap(); // [5, 3, 2, 4], irregular batch offsets
    let l4 = randn(&[5, 3, 6, 2], 163);
    close(
        "irregular batches",
        &l4.to_device(dev).unwrap().matmul(&k4.to_device(dev).unwrap().permute(&[2, 0, 3, 1]).unwrap()).unwrap(),
        &l4.matmul(&v4).unwrap(),
        1e-5,
        1e-5,
    );
    // An empty sum gives zeros.
    let (a, b) = (
        Tensor::zeros((3, 0), DType::F32, Device::Cpu).unwrap(),
        Tensor::zeros((0, 4), DType::F32, Device::Cpu).unwrap(),
    );
    same("k = 0", &a.to_device(dev).unwrap().matmul(&b.to_device(dev).unwrap()).unwrap(), &a.matmul(&b).unwrap());
}

#[test]
fn linear_matches_in_every_weight_dtype() {
    let dev = gpu_or_skip!();
    let (n, k) = (37, 70);
    let w = randn(&[n, k], 170);
    let bias = randn(&[n], 171);
    for m in [1usize, 3, 17, 40] {
        let x = randn(&[m, k], 172 + m as u64);
        for wd in [DType::F32, DType::BF16, DType::F16] {
            let (wc, bc) = (w.to_dtype(wd).unwrap(), bias.to_dtype(wd).unwrap());
            let want = x.linear(&wc, Some(&bc)).unwrap();
            let got = x
                .to_device(dev)
                .unwrap()
                .linear(&wc.to_device(dev).unwrap(), Some(&bc.to_device(dev).unwrap()))
                .unwrap();
            close(&format!("linear m {m}, f32 x, {wd} w"), &got, &want, 2e-5, 2e-5);
            // Activations in the weights' type too (the GPU's bf16 path).
            let xd = x.to_dtype(wd).unwrap();
            let want = xd.linear(&wc, None).unwrap();
            let got = xd.to_device(dev).unwrap().linear(&wc.to_device(dev).unwrap(), None).unwrap();
            let (rt, at) = tol(wd);
            close(&format!("linear m {m}, {wd} x and w"), &got, &want, rt * 2.0, at * 8.0);
            // Rounded to a half type for the product (autocast's linear): the CPU's values
            // to f32 reassociation, whatever the weight's own dtype.
            for compute in [DType::BF16, DType::F16] {
                let want = x.linear_in(&wc, Some(&bc), compute).unwrap();
                let got = x
                    .to_device(dev)
                    .unwrap()
                    .linear_in(&wc.to_device(dev).unwrap(), Some(&bc.to_device(dev).unwrap()), compute)
                    .unwrap();
                close(&format!("linear_in {compute}, m {m}, {wd} w"), &got, &want, 1e-5, 1e-5);
            }
        }
        let x3 = x.reshape((1, m, k)).unwrap().to_device(dev).unwrap();
        assert_eq!(
            x3.linear(&w.to_dtype(DType::BF16).unwrap().to_device(dev).unwrap(), None).unwrap().dims(),
            &[1, m, n]
        );
    }
}

/// Up to 8 rows of f32 activations meet a half-precision weight in `gemv_*` (the weights
/// read once and widened in registers), not through a widened copy for cuBLAS: the CPU's
/// values, and each row's bits independent of how many rows come with it (what padding a
/// decode step relies on). Nine rows, a k that is not a multiple of 8, or a weight view that
/// is not contiguous take the widening path. The shapes split k over 1 (k 64), 2 (512, 70),
/// 4 (1536, 300) and 8 (2048, 40) warps per group of rows (`gemv_split`).
#[test]
fn decode_sized_linear_reads_half_weights_in_place() {
    let dev = gpu_or_skip!();
    for (k, n) in [(64, 1), (64, 37), (512, 70), (1536, 300), (2048, 40)] {
        let w = randn(&[n, k], 180 + k as u64);
        let bias = randn(&[n], 181);
        for wd in [DType::BF16, DType::F16] {
            let (wc, bc) = (w.to_dtype(wd).unwrap(), bias.to_dtype(wd).unwrap());
            let (wg, bg) = (wc.to_device(dev).unwrap(), bc.to_device(dev).unwrap());
            let kernel = format!("gemv_{}", if wd == DType::BF16 { "bf16" } else { "f16" });
            let x = randn(&[9, k], 182);
            let mut first_row = None;
            for m in [1usize, 3, 8, 9] {
                let xm = x.narrow(0, 0, m).unwrap().copy().unwrap();
                let before = cuda::thread_kernel_launches(&kernel);
                let got = xm.to_device(dev).unwrap().linear(&wg, Some(&bg)).unwrap();
                let ran = cuda::thread_kernel_launches(&kernel) - before;
                assert_eq!(ran, u64::from(m <= 8), "m {m}, k {k}, n {n}, {wd}: {kernel} launches");
                let want = xm.linear(&wc, Some(&bc)).unwrap();
                // f32 sums of k terms in another order: rounding grows with sqrt(k).
                let at = 2e-5 * (k as f32 / 64.0).sqrt();
                close(&format!("linear m {m}, k {k}, n {n}, {wd} w"), &got, &want, 2e-5, at);
                let row0: Vec<u32> =
                    got.narrow(0, 0, 1).unwrap().to_vec2::<f32>().unwrap()[0].iter().map(|v| v.to_bits()).collect();
                if m <= 8 {
                    let first = first_row.get_or_insert_with(|| row0.clone());
                    assert_eq!(&row0, first, "k {k}, n {n}, {wd}: row 0 changed with {m} rows");
                }
                // Products in the weights' type (`linear_in`): the kernel rounds each
                // activation as it loads it (up to 8 rows), a GEMM beyond; the CPU's values.
                let before = cuda::thread_kernel_launches(&kernel);
                let got = xm.to_device(dev).unwrap().linear_in(&wg, Some(&bg), wd).unwrap();
                assert_eq!(cuda::thread_kernel_launches(&kernel) - before, u64::from(m <= 8), "linear_in m {m}");
                let want = xm.linear_in(&wc, Some(&bc), wd).unwrap();
                close(&format!("linear_in m {m}, k {k}, n {n}, {wd}"), &got, &want, 2e-5, at);
                let unrounded = xm.linear(&wc, Some(&bc)).unwrap().to_f32_vec().unwrap();
                assert_ne!(want.to_f32_vec().unwrap(), unrounded, "linear_in m {m}, {wd}: nothing was rounded");
            }
        }
    }
    // Not a multiple of 8, and a transposed (non-contiguous) weight: the widening path.
    let before = cuda::thread_kernel_launches("gemv_bf16");
    let x = randn(&[2, 60], 183);
    let w = randn(&[5, 60], 184).to_dtype(DType::BF16).unwrap();
    let got = x.to_device(dev).unwrap().linear(&w.to_device(dev).unwrap(), None).unwrap();
    close("linear k 60", &got, &x.linear(&w, None).unwrap(), 2e-5, 2e-5);
    let wt = randn(&[64, 16], 185).to_dtype(DType::BF16).unwrap();
    let x = randn(&[2, 64], 186);
    let got = x.to_device(dev).unwrap().linear(&wt.to_device(dev).unwrap().t().unwrap(), None).unwrap();
    close("linear, transposed weight", &got, &x.linear(&wt.t().unwrap(), None).unwrap(), 2e-5, 2e-5);
    assert_eq!(cuda::thread_kernel_launches("gemv_bf16"), before);
}

#[test]
fn adamw_step_gives_the_cpu_bits() {
    let dev = gpu_or_skip!();
    // Whole vectors and a tail (3003 = 8 * 375 + 3), and element by element from a start
    // one past an aligned address.
    for shift in [0usize, 1] {
        let n = 3003;
        let shifted = |t: Tensor| {
            if shift == 0 {
                t
            } else {
                Tensor::cat(&[&t.narrow(0, 0, 1).unwrap(), &t], 0).unwrap().narrow(0, 1, n).unwrap()
            }
        };
        let p = randn(&[n], 180);
        let m = randn(&[n], 181).mul_scalar(0.01).unwrap();
        let v = randn(&[n], 182).sqr().unwrap().mul_scalar(1e-4).unwrap();
        let on = |t: &Tensor| shifted(t.to_device(dev).unwrap());
        let (pg, mg, vg) = (on(&p), on(&m), on(&v));
        let (pc, mc, vc) = (p.copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
        for step in 1..=3u64 {
            let g = randn(&[n], 190 + step);
            let (lr, b1, b2, eps, wd) = (1e-3f64, 0.9f64, 0.999f64, 1e-8f64, 0.01f64);
            let s = AdamWScalars {
                decay: (1.0 - lr * wd) as f32,
                beta1_complement: (1.0 - b1) as f32,
                beta2: b2 as f32,
                beta2_complement: (1.0 - b2) as f32,
                eps: eps as f32,
                bias_correction2_sqrt: (1.0 - b2.powi(step as i32)).sqrt() as f32,
                step_size: -(lr / (1.0 - b1.powi(step as i32))) as f32,
            };
            pc.adamw_step(&mc, &vc, &g, &s).unwrap();
            pg.adamw_step(&mg, &vg, &on(&g), &s).unwrap();
        }
        same(&format!("adamw weights (shift {shift})"), &pg, &pc);
        same(&format!("adamw first moment (shift {shift})"), &mg, &mc);
        same(&format!("adamw second moment (shift {shift})"), &vg, &vc);
    }
}

#[test]
fn token_logprob_gradient_matches() {
    let dev = gpu_or_skip!();
    // Eight logits per thread (1000) and one (1001).
    for vocab in [1000usize, 1001] {
        let rows = 5;
        let z = randn(&[rows, vocab], 200);
        let scale = 1.0 / 0.7;
        let lse: Vec<f32> = z
            .mul_scalar(scale)
            .unwrap()
            .log_softmax(-1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .zip(z.to_vec2::<f32>().unwrap())
            .map(|(lp, zr)| zr[0] * scale - lp[0])
            .collect();
        let g = rand_vec(rows, 201, -1.0, 1.0);
        let targets = vec![3u32, 999, 0, 500, 3];
        let (zc, zg) = (z.copy().unwrap(), z.to_device(dev).unwrap());
        zc.token_logprob_grad_in_place(&g, &lse, &targets, scale).unwrap();
        zg.token_logprob_grad_in_place(&g, &lse, &targets, scale).unwrap();
        close("token logprob gradient", &zg, &zc, 1e-5, 1e-7);
        // With the entropy's gradient and values (the forward pass's, from the CPU).
        let h = z.mul_scalar(scale).unwrap().softmax_entropy().unwrap();
        let gh = rand_vec(rows, 202, -1.0, 1.0);
        let (zc, zg) = (z.copy().unwrap(), z.to_device(dev).unwrap());
        zc.token_logprob_entropy_grad_in_place(&g, &lse, &targets, scale, Some((&gh, &h))).unwrap();
        zg.token_logprob_entropy_grad_in_place(&g, &lse, &targets, scale, Some((&gh, &h))).unwrap();
        close("token logprob and entropy gradient", &zg, &zc, 1e-5, 1e-7);
        let (zp, zn) = (z.copy().unwrap(), z.copy().unwrap());
        zp.token_logprob_grad_in_place(&g, &lse, &targets, scale).unwrap();
        zn.token_logprob_entropy_grad_in_place(&g, &lse, &targets, scale, Some((&gh, &h))).unwrap();
        let moved = zp
            .to_f32_vec()
            .unwrap()
            .iter()
            .zip(zn.to_f32_vec().unwrap())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(moved > 1e-4, "the entropy term changed nothing ({moved})");
        assert!(zg.token_logprob_entropy_grad_in_place(&g, &lse, &targets, scale, Some((&gh[1..], &h))).is_err());
        assert!(zg.token_logprob_grad_in_place(&g, &lse, &[0, 0, 0, 0, vocab as u32], scale).is_err());
    }
}

#[test]
fn the_pool_reuses_memory() {
    let dev = gpu_or_skip!();
    let Device::Cuda(ord) = dev else { unreachable!() };
    // Warm the pool with a size no other test uses, then allocate it again and again.
    let shape = (1237, 333);
    drop(Tensor::zeros(shape, DType::F32, dev).unwrap());
    let before = cuda::memory_stats(ord).unwrap();
    for _ in 0..20 {
        let t = Tensor::zeros(shape, DType::F32, dev).unwrap();
        drop(t);
    }
    let after = cuda::memory_stats(ord).unwrap();
    assert!(
        after.runtime_allocations <= before.runtime_allocations + 2,
        "20 allocations of a cached size took {} new blocks from the runtime",
        after.runtime_allocations - before.runtime_allocations
    );
    assert!(after.peak_allocated >= 1237 * 333 * 4);
}

#[test]
fn every_kernel_the_backend_launches_exists() {
    let _ = gpu_or_skip!();
    #[cfg(feature = "emulator")]
    if cuda::backend() == cuda::Backend::Emulator {
        let mut want: Vec<String> = cuda::kernel_inventory().into_iter().map(|(_, k)| k).collect();
        want.sort();
        let have = cuda::emulator_kernels();
        assert_eq!(have, want, "the kernels exported by kernels/*.cu and the backend's inventory differ");
    }
}

/// Random `q: [t, h, d]` and `k`, `v: [len, kv, d]` of dtype `dt` from seeds `seed..seed + 3`,
/// on the CPU and on `dev`; k and v are views into a wider cache `[len + 2, kv, d]`, as the
/// model reads them.
fn attention_inputs([t, len, h, kv, d]: [usize; 5], dt: DType, seed: u64, dev: Device) -> ([Tensor; 3], [Tensor; 3]) {
    let q = randn(&[t, h, d], seed).to_dtype(dt).unwrap();
    let kc = randn(&[len + 2, kv, d], seed + 1).to_dtype(dt).unwrap();
    let vc = randn(&[len + 2, kv, d], seed + 2).to_dtype(dt).unwrap();
    let view = |c: &Tensor| c.narrow(0, 0, len).unwrap();
    let on_dev = |c: &Tensor| view(&c.to_device(dev).unwrap());
    let qg = q.to_device(dev).unwrap();
    ([q, view(&kc), view(&vc)], [qg, on_dev(&kc), on_dev(&vc)])
}

/// Fused causal attention against the CPU's (matrix products), forward and backward:
/// GQA, MQA and MHA, a prefill, a decode step against a strided cache view, f32 and bf16.
#[test]
fn causal_attention_matches() {
    let dev = gpu_or_skip!();
    // (t, len, heads, kv_heads, d)
    for (t, len, h, kv, d) in [(5, 5, 4, 2, 16), (1, 9, 4, 1, 32), (3, 7, 2, 2, 40), (6, 6, 6, 3, 8)] {
        for dt in [DType::F32, DType::BF16] {
            let ([q, k, v], [qg, kg, vg]) = attention_inputs([t, len, h, kv, d], dt, 210, dev);
            let scale = (d as f32).powf(-0.5);
            let what = format!("attention t {t} len {len} heads {h}/{kv} d {d} {dt}");
            let (oc, lc) = q.causal_attention(&k, &v, scale).unwrap();
            let (og, lg) = qg.causal_attention(&kg, &vg, scale).unwrap();
            let (rt, at) = tol(dt);
            close(&format!("{what}: out"), &og, &oc, rt * 2.0, at * 2.0);
            close(&format!("{what}: lse"), &lg, &lc, 1e-5, 1e-5);
            let dout = randn(&[t, h, d], 213);
            let (dqc, dkc, dvc) = q.causal_attention_backward(&k, &v, &oc, &lc, &dout, scale).unwrap();
            let (dqg, dkg, dvg) =
                qg.causal_attention_backward(&kg, &vg, &og, &lg, &dout.to_device(dev).unwrap(), scale).unwrap();
            let gt = if dt == DType::F32 { 2e-5 } else { 2e-2 };
            close(&format!("{what}: dq"), &dqg, &dqc, gt, gt);
            close(&format!("{what}: dk"), &dkg, &dkc, gt, gt);
            close(&format!("{what}: dv"), &dvg, &dvc, gt, gt);
        }
    }
}

/// Attention over a paged KV cache: the GPU kernel reads the pools through a shuffled block
/// table and gives what the CPU gives after gathering the blocks, and the same bits as the
/// dense GPU kernel over those gathered keys and values; `gather_blocks` is exact on both.
#[test]
fn paged_attention_matches() {
    let dev = gpu_or_skip!();
    // (t, len, heads, kv_heads, d, block_size)
    for (t, len, h, kv, d, bs) in [
        (1, 10usize, 4, 2, 16, 3usize),
        (4, 9, 4, 1, 32, 4),
        (7, 7, 2, 2, 8, 16),
        (6, 11, 4, 2, 8, 2),
        (1, 1, 2, 1, 8, 1),
    ] {
        for dt in [DType::F32, DType::BF16] {
            let blocks = len.div_ceil(bs) + 3;
            let q = randn(&[t, h, d], 220).to_dtype(dt).unwrap();
            let kp = randn(&[blocks, bs, kv, d], 221).to_dtype(dt).unwrap();
            let vp = randn(&[blocks, bs, kv, d], 222).to_dtype(dt).unwrap();
            // Every other block, from the top: never consecutive (one case of one block).
            let table: Vec<u32> = (0..len.div_ceil(bs)).map(|i| (blocks - 1 - 2 * i % blocks) as u32).collect();
            let (qg, kg, vg) = (q.to_device(dev).unwrap(), kp.to_device(dev).unwrap(), vp.to_device(dev).unwrap());
            let what = format!("paged attention t {t} len {len} heads {h}/{kv} d {d} blocks of {bs} {dt}");
            let (kc, vc) = (kp.gather_blocks(&table, len).unwrap(), vp.gather_blocks(&table, len).unwrap());
            same(&format!("{what}: gathered keys"), &kg.gather_blocks(&table, len).unwrap(), &kc);
            let scale = (d as f32).powf(-0.5);
            let (oc, lc) =
                q.paged_attention(&kp, &vp, &BlockTable::new(table.clone(), Device::Cpu).unwrap(), len, scale).unwrap();
            // The table uploaded once, and from the host (uploaded by the call).
            let (og, lg) =
                qg.paged_attention(&kg, &vg, &BlockTable::new(table.clone(), dev).unwrap(), len, scale).unwrap();
            let (og2, _) = qg
                .paged_attention(&kg, &vg, &BlockTable::new(table.clone(), Device::Cpu).unwrap(), len, scale)
                .unwrap();
            same(&format!("{what}: table uploaded by the call"), &og2, &og);
            let (rt, at) = tol(dt);
            close(&format!("{what}: out"), &og, &oc, rt * 2.0, at * 2.0);
            close(&format!("{what}: lse"), &lg, &lc, 1e-5, 1e-5);
            let dense = qg.causal_attention(&kc.to_device(dev).unwrap(), &vc.to_device(dev).unwrap(), scale).unwrap();
            same(&format!("{what}: against the dense kernel"), &og, &dense.0);
        }
    }
    // A table too short for `len`, or naming a block the pool lacks, is an error.
    let kp = randn(&[2, 4, 1, 8], 1).to_device(dev).unwrap();
    let q = randn(&[1, 2, 8], 2).to_device(dev).unwrap();
    let t = |ids: &[u32]| BlockTable::new(ids.to_vec(), dev).unwrap();
    assert!(q.paged_attention(&kp, &kp, &t(&[0]), 5, 1.0).unwrap_err().to_string().contains("need 2 blocks"));
    assert!(q.paged_attention(&kp, &kp, &t(&[0, 7]), 5, 1.0).unwrap_err().to_string().contains("block 7"));
}

/// Many sequences in one launch: `paged_attention_batch` gives each sequence's rows the
/// bits `paged_attention` gives them alone (a decode step of 1-row sequences, and decode
/// rows beside prefills, with shared and shuffled blocks), on the GPU and on the CPU;
/// `write_paged` puts each new position where the table says, on both, and refuses a bad
/// batch.
#[test]
fn paged_attention_batch_equals_one_sequence_at_a_time() {
    let dev = gpu_or_skip!();
    let (h, kv, d, bs, blocks) = (4usize, 2usize, 16usize, 4usize, 24usize);
    // (start, t, table): positions already cached, new rows, blocks.
    let decode: Vec<(usize, usize, Vec<u32>)> =
        vec![(9, 1, vec![3, 7, 1]), (0, 1, vec![5]), (4, 1, vec![3, 9]), (15, 1, vec![20, 2, 11, 4])];
    let mixed: Vec<(usize, usize, Vec<u32>)> =
        vec![(0, 6, vec![12, 13]), (9, 1, vec![3, 7, 1]), (2, 9, vec![6, 0, 22]), (7, 1, vec![14, 15])];
    for (name, seqs) in [("decode", decode), ("decode beside prefills", mixed)] {
        for dt in [DType::F32, DType::BF16] {
            let what = format!("{name} {dt}");
            let rows: usize = seqs.iter().map(|s| s.1).sum();
            let q = randn(&[rows, h, d], 230).to_dtype(dt).unwrap();
            let kp = randn(&[blocks, bs, kv, d], 231).to_dtype(dt).unwrap();
            let vp = randn(&[blocks, bs, kv, d], 232).to_dtype(dt).unwrap();
            let knew = randn(&[rows, kv, d], 233).to_dtype(dt).unwrap();
            let vnew = randn(&[rows, kv, d], 234).to_dtype(dt).unwrap();
            let spec: Vec<(usize, usize, &[u32])> = seqs.iter().map(|(a, t, b)| (*a, *t, b.as_slice())).collect();
            let scale = (d as f32).powf(-0.5);
            let mut results = Vec::new();
            for device in [Device::Cpu, dev] {
                let (q, kp, vp) = (q.to_device(device).unwrap(), kp.copy().unwrap(), vp.copy().unwrap());
                let (kp, vp) = (kp.to_device(device).unwrap(), vp.to_device(device).unwrap());
                // One warp per (row, head), as the single-sequence kernel (grouped heads:
                // grouped_decode_attention_equals_one_warp_per_head).
                let batch = PagedBatch::new(&spec, bs, device).unwrap().with_grouped_heads(false);
                kp.write_paged(&batch, &knew.to_device(device).unwrap()).unwrap();
                vp.write_paged(&batch, &vnew.to_device(device).unwrap()).unwrap();
                let (out, lse) = q.paged_attention_batch(&kp, &vp, &batch, scale).unwrap();
                // One sequence at a time, with its rows written by position.
                let mut row = 0;
                for (n, (start, t, table)) in seqs.iter().enumerate() {
                    let len = start + t;
                    for i in 0..*t {
                        let p = start + i;
                        let b = table[p / bs] as usize;
                        let got = kp.narrow(0, b, 1).unwrap().narrow(1, p % bs, 1).unwrap().reshape((kv, d)).unwrap();
                        same(
                            &format!("{what} on {device:?}: key of sequence {n} position {p}"),
                            &got,
                            &knew.narrow(0, row + i, 1).unwrap().reshape((kv, d)).unwrap(),
                        );
                    }
                    let bt = BlockTable::new(table.clone(), device).unwrap();
                    let (o1, l1) = q.narrow(0, row, *t).unwrap().paged_attention(&kp, &vp, &bt, len, scale).unwrap();
                    same(&format!("{what} on {device:?}: sequence {n} out"), &out.narrow(0, row, *t).unwrap(), &o1);
                    same(&format!("{what} on {device:?}: sequence {n} lse"), &lse.narrow(1, row, *t).unwrap(), &l1);
                    row += t;
                }
                results.push((out, lse, kp));
            }
            let (rt, at) = tol(dt);
            close(&format!("{what}: GPU against CPU"), &results[1].0, &results[0].0, rt * 2.0, at * 2.0);
            same(&format!("{what}: pools written alike"), &results[1].2, &results[0].2);
        }
    }
    // Bad batches: a table too short, a block outside the pool, a pool of other blocks, src
    // of the wrong shape.
    let pool = randn(&[2, 4, 1, 8], 1).to_device(dev).unwrap();
    assert!(PagedBatch::new(&[(3, 2, &[0][..])], 4, dev).unwrap_err().to_string().contains("need 2 blocks"));
    let far = PagedBatch::new(&[(0, 1, &[7][..])], 4, dev).unwrap();
    let src = randn(&[1, 1, 8], 2).to_device(dev).unwrap();
    assert!(pool.write_paged(&far, &src).unwrap_err().to_string().contains("block 7"));
    let other = PagedBatch::new(&[(0, 1, &[0][..])], 2, dev).unwrap();
    assert!(pool.write_paged(&other, &src).unwrap_err().to_string().contains("blocks of 4"));
    let ok = PagedBatch::new(&[(0, 1, &[1][..])], 4, dev).unwrap();
    assert!(pool.write_paged(&ok, &randn(&[2, 1, 8], 3).to_device(dev).unwrap()).is_err());
}

/// f32 queries over a bf16 paged KV cache (`KvCache::paged_in`): the GPU's kernels widen
/// keys and values as they read them and give the CPU's values (which attends over the
/// widened blocks) to f32 reassociation, one warp per pair and split over keys alike; the
/// output is f32; and a cache of another mix (f16 under f32) is a clear error.
#[test]
fn paged_attention_reads_a_bf16_cache_under_f32_queries() {
    let dev = gpu_or_skip!();
    let (h, kv, d, bs, blocks) = (4usize, 2usize, 32usize, 4usize, 24usize);
    let seqs: Vec<(usize, usize, Vec<u32>)> =
        vec![(0, 6, vec![12, 13]), (9, 1, vec![3, 7, 1]), (2, 9, vec![6, 0, 22]), (15, 1, vec![20, 2, 11, 4])];
    let spec: Vec<(usize, usize, &[u32])> = seqs.iter().map(|(a, t, b)| (*a, *t, b.as_slice())).collect();
    let rows: usize = seqs.iter().map(|s| s.1).sum();
    let q = randn(&[rows, h, d], 250);
    let kp = randn(&[blocks, bs, kv, d], 251).to_dtype(DType::BF16).unwrap();
    let vp = randn(&[blocks, bs, kv, d], 252).to_dtype(DType::BF16).unwrap();
    let scale = (d as f32).powf(-0.5);
    let cpu_batch = PagedBatch::new(&spec, bs, Device::Cpu).unwrap();
    let (want, want_lse) = q.paged_attention_batch(&kp, &vp, &cpu_batch, scale).unwrap();
    assert_eq!(want.dtype(), DType::F32);
    // The CPU's reference is attention over the widened pools.
    let (kf, vf) = (kp.to_dtype(DType::F32).unwrap(), vp.to_dtype(DType::F32).unwrap());
    same(
        "CPU: a bf16 cache is its f32 widening",
        &want,
        &q.paged_attention_batch(&kf, &vf, &cpu_batch, scale).unwrap().0,
    );
    let (qg, kg, vg) = (q.to_device(dev).unwrap(), kp.to_device(dev).unwrap(), vp.to_device(dev).unwrap());
    for splits in [1usize, 3] {
        let kernel = if splits > 1 { "attn_fwd_paged_split_f32_bf16kv" } else { "attn_fwd_paged_batch_f32_bf16kv" };
        let before = cuda::thread_kernel_launches(kernel);
        let batch = PagedBatch::new(&spec, bs, dev).unwrap().with_key_splits(splits).with_grouped_heads(false);
        let (out, lse) = qg.paged_attention_batch(&kg, &vg, &batch, scale).unwrap();
        assert_eq!(cuda::thread_kernel_launches(kernel), before + 1, "{kernel} did not run");
        assert_eq!(out.dtype(), DType::F32);
        close(&format!("{splits} shares: out"), &out, &want, 1e-5, 1e-5);
        close(&format!("{splits} shares: lse"), &lse, &want_lse, 1e-5, 1e-5);
    }
    let f16 = randn(&[blocks, bs, kv, d], 253).to_dtype(DType::F16).unwrap().to_device(dev).unwrap();
    let batch = PagedBatch::new(&spec, bs, dev).unwrap();
    assert!(qg.paged_attention_batch(&f16, &f16, &batch, scale).is_err());
}

/// The fused projection's bias, split, RoPE and cache writes in one launch give the bits of
/// the composition (`add`, `narrow`, `rope`, `write_paged`) the CPU runs.
#[test]
fn qkv_rope_paged_equals_rope_and_cache_writes() {
    let dev = gpu_or_skip!();
    let (h, kv, bs, blocks) = (4usize, 2usize, 4usize, 12usize);
    // Head dim 16: 8 pairs per thread; 12: one pair per thread.
    for d in [16usize, 12] {
        let seqs: Vec<(usize, usize, Vec<u32>)> = vec![(0, 5, vec![4, 9]), (9, 1, vec![3, 7, 1]), (2, 3, vec![6, 0])];
        let spec: Vec<(usize, usize, &[u32])> = seqs.iter().map(|(a, t, b)| (*a, *t, b.as_slice())).collect();
        let rows: usize = seqs.iter().map(|s| s.1).sum();
        let pos: Vec<u32> = seqs.iter().flat_map(|(a, t, _)| (*a..a + t).map(|p| p as u32)).collect();
        let (cos, sin) = rope_tables(&pos, d, 10_000.0, Device::Cpu).unwrap();
        let bias = randn(&[(h + 2 * kv) * d], 243);
        // Activations and pools of one dtype, and f32 activations into a bf16 cache (keys and
        // values rounded as they are stored).
        for (dt, pool_dt) in [(DType::F32, DType::F32), (DType::BF16, DType::BF16), (DType::F32, DType::BF16)] {
            let qkv = randn(&[rows, (h + 2 * kv) * d], 240).to_dtype(dt).unwrap();
            let pools = [
                randn(&[blocks, bs, kv, d], 241).to_dtype(pool_dt).unwrap(),
                randn(&[blocks, bs, kv, d], 242).to_dtype(pool_dt).unwrap(),
            ];
            let mut out = Vec::new();
            for device in [Device::Cpu, dev] {
                let (kp, vp) = (
                    pools[0].copy().unwrap().to_device(device).unwrap(),
                    pools[1].copy().unwrap().to_device(device).unwrap(),
                );
                let batch = PagedBatch::new(&spec, bs, device).unwrap();
                let (c, s) = (cos.to_device(device).unwrap(), sin.to_device(device).unwrap());
                let b = bias.to_dtype(dt).unwrap().to_device(device).unwrap();
                let q = qkv
                    .to_device(device)
                    .unwrap()
                    .qkv_rope_paged(Some(&b), None, h, kv, &c, &s, &kp, &vp, &batch)
                    .unwrap();
                out.push((q, kp, vp));
            }
            for (i, what) in ["queries", "key pool", "value pool"].iter().enumerate() {
                let pick = |o: &(Tensor, Tensor, Tensor)| [o.0.clone(), o.1.clone(), o.2.clone()][i].clone();
                same(&format!("{dt} into {pool_dt} pools: {what}"), &pick(&out[1]), &pick(&out[0]));
            }
            // The queries are the rotated first `heads` blocks of columns, after the bias.
            let biased = qkv.add(&bias.to_dtype(dt).unwrap()).unwrap();
            let want = biased.narrow(1, 0, h * d).unwrap().reshape((1, rows, h, d)).unwrap().rope(&cos, &sin).unwrap();
            same(&format!("{dt} queries against rope"), &out[0].0, &want.reshape((rows, h, d)).unwrap());
        }
        let batch = PagedBatch::new(&spec, bs, dev).unwrap();
        let pool = randn(&[blocks, bs, kv, d], 1).to_device(dev).unwrap();
        let bad = randn(&[rows, h * d], 2).to_device(dev).unwrap();
        let (c, s) = (cos.to_device(dev).unwrap(), sin.to_device(dev).unwrap());
        assert!(
            bad.qkv_rope_paged(None, None, h, kv, &c, &s, &pool, &pool, &batch)
                .unwrap_err()
                .to_string()
                .contains("does not hold")
        );
    }
}

/// With Qwen3's q/k norms the same launch normalises each query and key head before RoPE:
/// the bits of `add`, `rms_norm` per head and the plain fused write on the GPU, and the
/// CPU's composition within f32 (or bf16) rounding of its other summation order.
#[test]
fn qkv_rope_paged_with_qk_norms_equals_norm_then_rope() {
    let dev = gpu_or_skip!();
    let (h, kv, bs, blocks) = (4usize, 2usize, 4usize, 12usize);
    // Head dim 128 (Qwen3's: 16 chunks of 8, one per thread), 16, and 12 (a chunk and a tail).
    for d in [128usize, 16, 12] {
        let seqs: Vec<(usize, usize, Vec<u32>)> = vec![(0, 5, vec![4, 9]), (9, 1, vec![3, 7, 1]), (2, 3, vec![6, 0])];
        let spec: Vec<(usize, usize, &[u32])> = seqs.iter().map(|(a, t, b)| (*a, *t, b.as_slice())).collect();
        let rows: usize = seqs.iter().map(|s| s.1).sum();
        let pos: Vec<u32> = seqs.iter().flat_map(|(a, t, _)| (*a..a + t).map(|p| p as u32)).collect();
        let (cos, sin) = rope_tables(&pos, d, 10_000.0, Device::Cpu).unwrap();
        let width = (h + 2 * kv) * d;
        for (dt, pool_dt, with_bias) in [
            (DType::F32, DType::F32, false),
            (DType::F32, DType::F32, true),
            (DType::BF16, DType::BF16, true),
            (DType::F32, DType::BF16, false),
        ] {
            let qkv = randn(&[rows, width], 250).affine(3.0, 0.5).unwrap().to_dtype(dt).unwrap();
            let bias = randn(&[width], 251).to_dtype(dt).unwrap();
            let qw = Tensor::from_vec(rand_vec(d, 252, 0.5, 1.5), d, Device::Cpu).unwrap().to_dtype(dt).unwrap();
            let kw = Tensor::from_vec(rand_vec(d, 253, 0.5, 1.5), d, Device::Cpu).unwrap().to_dtype(dt).unwrap();
            let pools = [
                randn(&[blocks, bs, kv, d], 254).to_dtype(pool_dt).unwrap(),
                randn(&[blocks, bs, kv, d], 255).to_dtype(pool_dt).unwrap(),
            ];
            let what = format!("d {d}, {dt} into {pool_dt} pools, bias {with_bias}");
            // (fused, composed) on each device: queries, key pool, value pool.
            let mut runs = Vec::new();
            for device in [Device::Cpu, dev] {
                let on = |t: &Tensor| t.to_device(device).unwrap();
                let batch = PagedBatch::new(&spec, bs, device).unwrap();
                let (c, s, x, qw, kw) = (on(&cos), on(&sin), on(&qkv), on(&qw), on(&kw));
                let b = with_bias.then(|| on(&bias));
                let norm = QkNorm { q: &qw, k: &kw, eps: 1e-6 };
                let fresh = || (on(&pools[0].copy().unwrap()), on(&pools[1].copy().unwrap()));
                let (kp, vp) = fresh();
                let q = x.qkv_rope_paged(b.as_ref(), Some(norm), h, kv, &c, &s, &kp, &vp, &batch).unwrap();
                // The composition: bias, each head's RMSNorm, then the plain fused write.
                let x = match &b {
                    Some(b) => x.add(b).unwrap(),
                    None => x.clone(),
                };
                let head = |from: usize, n: usize, w: &Tensor| {
                    x.narrow(1, from * d, n * d)
                        .unwrap()
                        .reshape((rows, n, d))
                        .unwrap()
                        .rms_norm(w, 1e-6)
                        .unwrap()
                        .reshape((rows, n * d))
                        .unwrap()
                };
                let parts = [head(0, h, &qw), head(h, kv, &kw), x.narrow(1, (h + kv) * d, kv * d).unwrap()];
                let normed = Tensor::cat(&[&parts[0], &parts[1], &parts[2]], 1).unwrap();
                let (kp2, vp2) = fresh();
                let q2 = normed.qkv_rope_paged(None, None, h, kv, &c, &s, &kp2, &vp2, &batch).unwrap();
                runs.push(([q, kp, vp], [q2, kp2, vp2]));
            }
            let (rtol, atol) = match dt {
                DType::F32 if pool_dt == DType::F32 => (2e-5, 2e-6),
                _ => (1.6e-2, 1e-2),
            };
            for (i, part) in ["queries", "key pool", "value pool"].iter().enumerate() {
                same(&format!("{what}: GPU {part}, fused against composed"), &runs[1].0[i], &runs[1].1[i]);
                same(&format!("{what}: CPU {part}, fused against composed"), &runs[0].0[i], &runs[0].1[i]);
                close(&format!("{what}: {part}, GPU against CPU"), &runs[1].0[i], &runs[0].0[i], rtol, atol);
            }
        }
        // A weight of the wrong size is refused by name.
        let batch = PagedBatch::new(&spec, bs, dev).unwrap();
        let pool = randn(&[blocks, bs, kv, d], 1).to_device(dev).unwrap();
        let x = randn(&[rows, width], 2).to_device(dev).unwrap();
        let (c, s) = (cos.to_device(dev).unwrap(), sin.to_device(dev).unwrap());
        let w = Tensor::ones(d + 1, DType::F32, dev).unwrap();
        let norm = QkNorm { q: &w, k: &w, eps: 1e-6 };
        let e = x.qkv_rope_paged(None, Some(norm), h, kv, &c, &s, &pool, &pool, &batch).unwrap_err().to_string();
        assert!(e.contains("q norm's weight"), "{e}");
    }
}

/// The fused residual add and RMSNorm gives the bits of `add` then `rms_norm` on the GPU,
/// and the CPU's values within the norm's tolerance.
#[test]
fn add_rms_norm_equals_add_then_rms_norm() {
    let dev = gpu_or_skip!();
    for (rows, cols) in [(1usize, 64usize), (5, 896), (3, 1000), (7, 33)] {
        for dt in [DType::F32, DType::BF16] {
            let what = format!("add_rms_norm {rows}x{cols} {dt}");
            let x = randn(&[rows, cols], 250).to_dtype(dt).unwrap();
            let r = randn(&[rows, cols], 251).to_dtype(dt).unwrap();
            let w = randn(&[cols], 252).to_dtype(dt).unwrap();
            let (xg, rg, wg) = (x.to_device(dev).unwrap(), r.to_device(dev).unwrap(), w.to_device(dev).unwrap());
            let (sum, normed) = xg.add_rms_norm(&rg, &wg, 1e-6).unwrap();
            let sum2 = xg.add(&rg).unwrap();
            same(&format!("{what}: sum"), &sum, &sum2);
            same(&format!("{what}: normed"), &normed, &sum2.rms_norm(&wg, 1e-6).unwrap());
            let (sc, nc) = x.add_rms_norm(&r, &w, 1e-6).unwrap();
            same(&format!("{what}: sum against the CPU"), &sum, &sc);
            let (rt, at) = tol(dt);
            close(&format!("{what}: normed against the CPU"), &normed, &nc, rt * 4.0, at * 4.0);
        }
    }
    let x = randn(&[2, 8], 1).to_device(dev).unwrap();
    assert!(
        x.add_rms_norm(&randn(&[2, 7], 2).to_device(dev).unwrap(), &randn(&[8], 3).to_device(dev).unwrap(), 1e-6)
            .is_err()
    );
}

/// The CPU attention equals the textbook formula: softmax of masked scores times values.
#[test]
fn causal_attention_is_softmax_attention() {
    let (t, len, h, kv, d) = (4, 6, 4, 2, 8);
    let q = randn(&[t, h, d], 220);
    let k = randn(&[len, kv, d], 221);
    let v = randn(&[len, kv, d], 222);
    let scale = 0.3;
    let (out, lse) = q.causal_attention(&k, &v, scale).unwrap();
    let (qv, kv_, vv, ov, lv) = (
        q.to_vec3::<f32>().unwrap(),
        k.to_vec3::<f32>().unwrap(),
        v.to_vec3::<f32>().unwrap(),
        out.to_vec3::<f32>().unwrap(),
        lse.to_vec2::<f32>().unwrap(),
    );
    for i in 0..t {
        for hh in 0..h {
            let g = hh / (h / kv);
            let last = i + len - t;
            let s: Vec<f64> = (0..=last)
                .map(|j| (0..d).map(|e| qv[i][hh][e] as f64 * kv_[j][g][e] as f64).sum::<f64>() * scale as f64)
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            assert!((lv[hh][i] as f64 - (m + z.ln())).abs() < 1e-5, "lse ({i}, {hh})");
            for e in 0..d {
                let want: f64 = s.iter().enumerate().map(|(j, x)| (x - m).exp() / z * vv[j][g][e] as f64).sum();
                assert!((ov[i][hh][e] as f64 - want).abs() < 1e-5, "out ({i}, {hh}, {e}): {} vs {want}", ov[i][hh][e]);
            }
        }
    }
}

/// A captured graph replays the recorded kernels with one launch: new inputs written into
/// the tensors it reads give the eager results (the same bits: the same kernels run); the
/// capture itself runs nothing, refuses host copies, and its memory outlives the graph
/// while a tensor in it does.
#[test]
fn captured_graphs_replay_with_one_launch() {
    let dev = gpu_or_skip!();
    let (n, k) = (6usize, 40usize);
    let x = Tensor::from_vec(rand_vec(n * k, 1, -2.0, 2.0), (n, k), dev).unwrap();
    let w = Tensor::from_vec(rand_vec(k * k, 2, -0.5, 0.5), (k, k), dev).unwrap();
    let b = Tensor::from_vec(rand_vec(k, 3, -0.5, 0.5), k, dev).unwrap();
    let run = |x: &Tensor| -> artist_tensor::Result<Tensor> {
        let h = x.matmul(&w.t()?)?.add(&b)?.silu()?;
        h.rms_norm(&b, 1e-6)?.softmax(-1)
    };
    run(&x).unwrap(); // every kernel loaded before the capture
    let before = cuda::thread_launch_count();
    let (graph, out) = cuda::capture(0, || run(&x)).unwrap();
    let queued = cuda::thread_launch_count() - before;
    assert!(queued >= 5, "the capture queued {queued} operations");
    for step in 0..3u64 {
        let input = rand_vec(n * k, 10 + step, -2.0, 2.0);
        x.write_host(&input).unwrap();
        let before = cuda::thread_launch_count();
        graph.replay().unwrap();
        assert_eq!(cuda::thread_launch_count() - before, 1, "one launch per replay");
        let want = run(&Tensor::from_vec(input, (n, k), dev).unwrap()).unwrap();
        same(&format!("replay {step}"), &out, &want);
    }
    // Host copies are refused inside a capture, and the failed capture leaves the device usable.
    let err = cuda::capture(0, || Tensor::from_vec(vec![1f32; 4], 4, dev)).unwrap_err().to_string();
    assert!(err.contains("captur"), "{err}");
    let err = cuda::capture(0, || run(&x)?.to_vec::<f32>()).unwrap_err().to_string();
    assert!(err.contains("captur"), "{err}");
    // The output's memory stays the graph's while the output lives, after the graph is gone.
    let kept = out.to_vec::<f32>().unwrap();
    drop(graph);
    let noise: Vec<Tensor> =
        (0..8).map(|i| Tensor::from_vec(rand_vec(n * k, 50 + i, 5.0, 9.0), (n, k), dev).unwrap()).collect();
    assert_eq!(out.to_vec::<f32>().unwrap(), kept);
    drop(noise);
    // write_host checks what it is given.
    assert!(x.write_host(&[1f32; 3]).is_err());
    assert!(x.write_host(&vec![half::bf16::ONE; n * k]).is_err());
    assert!(x.t().unwrap().write_host(&vec![0f32; n * k]).is_err());
}

/// Ids already on the GPU are read there by index-select (no copy to the host, which would
/// wait for the GPU and is refused inside a graph): an id out of range selects zeros there,
/// and is an error when the ids come from the host.
#[test]
fn index_select_reads_device_ids_in_place() {
    let dev = gpu_or_skip!();
    let t = Tensor::from_vec((1..=6).map(|v| v as f32).collect::<Vec<_>>(), (3, 2), dev).unwrap();
    let ids = Tensor::from_vec(vec![2u32, 7, 0], 3, dev).unwrap();
    let before = cuda::thread_launch_count();
    let (_, got) = cuda::capture(0, || t.index_select(&ids, 0)).unwrap();
    assert_eq!(cuda::thread_launch_count() - before, 1, "one kernel, no copy");
    drop(got);
    assert_eq!(t.index_select(&ids, 0).unwrap().to_vec::<f32>().unwrap(), vec![5.0, 6.0, 0.0, 0.0, 1.0, 2.0]);
    let host_ids = Tensor::from_vec(vec![2u32, 7, 0], 3, Device::Cpu).unwrap();
    assert!(t.index_select(&host_ids, 0).is_err());
}

/// Work on the side stream (NCCL's) is ordered with the main stream by the two waits only:
/// a copy queued there after `side_waits_for_main` reads what a long matrix product on the
/// main stream wrote, and the main stream reads the copy after `main_waits_for_side`.
#[test]
fn side_stream_work_is_ordered_with_the_main_stream_by_events() {
    let dev = gpu_or_skip!();
    if cuda::backend() == cuda::Backend::Emulator {
        // Every operation runs as it is queued: there is no stream to share, nothing to order.
        let e = cuda::side_stream(0).unwrap_err().to_string();
        assert!(e.contains("no stream to share"), "{e}");
        cuda::side_waits_for_main(0).unwrap();
        cuda::main_waits_for_side(0).unwrap();
        return;
    }
    let n = 2048;
    let a = Tensor::from_vec(rand_vec(n * n, 11, -1.0, 1.0), (n, n), dev).unwrap();
    for round in 0..3 {
        let c = a.matmul(&a).unwrap().matmul(&a).unwrap(); // milliseconds of main-stream work
        let copy = Tensor::zeros((n, n), DType::F32, dev).unwrap();
        let side = cuda::side_stream(0).unwrap();
        cuda::side_waits_for_main(0).unwrap();
        // SAFETY: both hold n * n f32 on device 0 and live until the reads below.
        let r = unsafe {
            cudarc::driver::sys::cuMemcpyDtoDAsync_v2(
                copy.cuda_ptr().unwrap(),
                c.cuda_ptr().unwrap(),
                n * n * 4,
                side as cudarc::driver::sys::CUstream,
            )
        };
        assert_eq!(r, cudarc::driver::sys::CUresult::CUDA_SUCCESS);
        cuda::main_waits_for_side(0).unwrap();
        let (want, got) = (c.to_vec::<f32>().unwrap(), copy.to_vec::<f32>().unwrap());
        assert!(want == got, "round {round}: the side stream's copy differs from what it copied");
    }
}

/// The tensor-core forward (`attn_fwd_mma_d{64,128}_bf16`: bf16, head dim 64 or 128) against
/// the CPU: prefills that are not multiples of the 64-row tiles, queries that are the last
/// rows of a longer cache view (strided keys and values), GQA, MQA and MHA. Its
/// probabilities are rounded to bf16 for the P V product (as flash attention does), so the
/// output gets a bf16 tolerance; the log-sum-exp comes from f32 scores. The backward
/// (`attn_bwd_{dq,dkv}_mma_*`, dout, P and dS rounded to bf16 as operands) gives the CPU's
/// gradients within 3e-2.
#[test]
fn tensor_core_attention_matches_the_cpu() {
    let dev = gpu_or_skip!();
    if std::env::var("ARTIST_ATTN_MMA").as_deref() == Ok("0") {
        eprintln!("skipping: ARTIST_ATTN_MMA=0 keeps attention off the tensor cores");
        return;
    }
    if cuda::info(0).unwrap().compute_capability < (8, 0) {
        eprintln!("skipping: tensor-core attention needs compute capability 8.0");
        return;
    }
    // On the emulator, cp.async copies land at their waits, then at once: a GPU lands them in
    // between, so the pipelined kernels must be right both ways (a GPU runs them once).
    let modes: &[bool] = if cuda::backend() == cuda::Backend::Emulator { &[false, true] } else { &[false] };
    // The mma.sync forward, whatever ARTIST_ATTN_WGMMA says (the Hopper one has its own test).
    cuda::set_thread_wgmma_attention(Some(false));
    for &eager in modes {
        cuda::emulator_eager_copies(eager);
        // (t, len, heads, kv_heads, d)
        for (t, len, h, kv, d) in [(100, 100, 4, 2, 64), (37, 130, 2, 1, 128), (64, 64, 2, 2, 128), (1, 70, 4, 4, 64)] {
            let dt = DType::BF16;
            let ([q, k, v], [qg, kg, vg]) = attention_inputs([t, len, h, kv, d], dt, 310, dev);
            let scale = (d as f32).powf(-0.5);
            let what = format!("tensor-core attention t {t} len {len} heads {h}/{kv} d {d} (eager copies {eager})");
            let kernel = format!("attn_fwd_mma_d{d}_bf16");
            let before = cuda::thread_kernel_launches(&kernel);
            let (og, lg) = qg.causal_attention(&kg, &vg, scale).unwrap();
            assert_eq!(cuda::thread_kernel_launches(&kernel), before + 1, "{what}: {kernel} did not run");
            let (oc, lc) = q.causal_attention(&k, &v, scale).unwrap();
            close(&format!("{what}: out"), &og, &oc, 1.6e-2, 1e-2);
            close(&format!("{what}: lse"), &lg, &lc, 1e-5, 1e-4);
            let dout = randn(&[t, h, d], 313);
            let (dqc, dkc, dvc) = q.causal_attention_backward(&k, &v, &oc, &lc, &dout, scale).unwrap();
            let backward = [format!("attn_bwd_dq_mma_d{d}_bf16"), format!("attn_bwd_dkv_mma_d{d}_bf16")];
            let before: Vec<u64> = backward.iter().map(|k| cuda::thread_kernel_launches(k)).collect();
            let (dqg, dkg, dvg) =
                qg.causal_attention_backward(&kg, &vg, &og, &lg, &dout.to_device(dev).unwrap(), scale).unwrap();
            for (k, b) in backward.iter().zip(before) {
                assert_eq!(cuda::thread_kernel_launches(k), b + 1, "{what}: {k} did not run");
            }
            close(&format!("{what}: dq"), &dqg, &dqc, 3e-2, 3e-2);
            close(&format!("{what}: dk"), &dkg, &dkc, 3e-2, 3e-2);
            close(&format!("{what}: dv"), &dvg, &dvc, 3e-2, 3e-2);
        }
    }
    cuda::emulator_eager_copies(false);
    cuda::set_thread_wgmma_attention(None);
}

/// Whether Hopper's warpgroup MMA is missing here (kernels not built for sm_90a), saying so.
fn no_wgmma() -> bool {
    let missing = !cuda::info(0).unwrap().wgmma;
    if missing {
        eprintln!("skipping: kernels are not built for sm_90a here (a Hopper GPU, NVRTC 12.0 or later)");
    }
    missing
}

/// The Hopper forward and dQ pass (`attn_fwd_wgmma_d{64,128}_bf16`, `attn_bwd_dq_wgmma_*`:
/// warpgroup MMA, 128 query rows per block, tiles in the 128-byte swizzled layout) against
/// the CPU with the tolerances of the `mma.sync` kernels, and against those kernels: on the
/// emulator to the bit (the same 16-deep products summed in the same order; a product reading
/// a wrong element of a swizzled tile, or running before its wait, changes bits), on a GPU
/// within bf16 rounding.
/// Prefills shorter and longer than a block, queries that are the last rows of a longer
/// cache view, GQA, MQA and MHA; cp.async copies landing at their waits and at once.
#[test]
fn wgmma_attention_matches_the_cpu_and_mma() {
    let dev = gpu_or_skip!();
    if no_wgmma() {
        return;
    }
    let emulated = cuda::backend() == cuda::Backend::Emulator;
    let modes: &[bool] = if emulated { &[false, true] } else { &[false] };
    for &eager in modes {
        cuda::emulator_eager_copies(eager);
        // (t, len, heads, kv_heads, d)
        for (t, len, h, kv, d) in
            [(100, 100, 4, 2, 64), (37, 130, 2, 1, 128), (200, 200, 2, 2, 128), (130, 300, 3, 1, 64)]
        {
            let dt = DType::BF16;
            let ([q, k, v], [qg, kg, vg]) = attention_inputs([t, len, h, kv, d], dt, 320, dev);
            let scale = (d as f32).powf(-0.5);
            let what = format!("wgmma attention t {t} len {len} heads {h}/{kv} d {d} (eager copies {eager})");
            let run = |wgmma: bool| {
                cuda::set_thread_wgmma_attention(Some(wgmma));
                let kernel = format!("attn_fwd_{}_d{d}_bf16", if wgmma { "wgmma" } else { "mma" });
                let before = cuda::thread_kernel_launches(&kernel);
                let out = qg.causal_attention(&kg, &vg, scale).unwrap();
                assert_eq!(cuda::thread_kernel_launches(&kernel), before + 1, "{what}: {kernel} did not run");
                cuda::set_thread_wgmma_attention(None);
                out
            };
            let (og, lg) = run(true);
            let (om, lm) = run(false);
            let (oc, lc) = q.causal_attention(&k, &v, scale).unwrap();
            close(&format!("{what}: out"), &og, &oc, 1.6e-2, 1e-2);
            close(&format!("{what}: lse"), &lg, &lc, 1e-5, 1e-4);
            // The backward from the same output: its dQ and dK/dV passes on wgmma, or on mma.sync.
            let dout = randn(&[t, h, d], 323).to_device(dev).unwrap();
            let backward = |wgmma: bool| {
                cuda::set_thread_wgmma_attention(Some(wgmma));
                let kind = if wgmma { "wgmma" } else { "mma" };
                let kernels = [format!("attn_bwd_dq_{kind}_d{d}_bf16"), format!("attn_bwd_dkv_{kind}_d{d}_bf16")];
                let before = kernels.each_ref().map(|k| cuda::thread_kernel_launches(k));
                let grads = qg.causal_attention_backward(&kg, &vg, &om, &lm, &dout, scale).unwrap();
                for (kernel, n) in kernels.iter().zip(before) {
                    assert_eq!(cuda::thread_kernel_launches(kernel), n + 1, "{what}: {kernel} did not run");
                }
                cuda::set_thread_wgmma_attention(None);
                grads
            };
            let (dqw, dkw, dvw) = backward(true);
            let (dqm, dkm, dvm) = backward(false);
            let (om_c, lm_c) = (om.to_device(Device::Cpu).unwrap(), lm.to_device(Device::Cpu).unwrap());
            let dout_c = dout.to_device(Device::Cpu).unwrap();
            let (dqc, dkc, dvc) = q.causal_attention_backward(&k, &v, &om_c, &lm_c, &dout_c, scale).unwrap();
            close(&format!("{what}: dq"), &dqw, &dqc, 3e-2, 3e-2);
            close(&format!("{what}: dk"), &dkw, &dkc, 3e-2, 3e-2);
            close(&format!("{what}: dv"), &dvw, &dvc, 3e-2, 3e-2);
            let pairs =
                [("out", &og, &om), ("lse", &lg, &lm), ("dq", &dqw, &dqm), ("dk", &dkw, &dkm), ("dv", &dvw, &dvm)];
            for (name, a, b) in pairs {
                if emulated {
                    let same = a.to_f32_vec().unwrap() == b.to_f32_vec().unwrap();
                    assert!(same, "{what}: {name} differs from mma.sync's");
                } else {
                    close(&format!("{what}: {name} against mma.sync"), a, b, 1e-2, 1e-2);
                }
            }
        }
    }
    cuda::emulator_eager_copies(false);
}

/// Hopper's warpgroup MMA reads the swizzled tiles where the attention kernels expect
/// (`cuda::wgmma_probe`): for K as the scores read it, V as P V reads it, and K and V as the
/// dK/dV pass reads them (A from shared memory too), at head dims 64 and 128 and every
/// 16-deep step, each output element comes from the tile element the layout names. On the
/// emulator this checks the probe against the emulator's reading; on a GPU it checks the
/// hardware's, and a failure lists which element was read instead (a misread shared A shows
/// as sums or zeros: the one-hot scattered or lost).
#[test]
fn wgmma_reads_the_swizzled_tiles_where_the_kernels_expect() {
    use cuda::ProbeLayout;
    let _dev = gpu_or_skip!();
    if no_wgmma() {
        return;
    }
    let mut wrong = Vec::new();
    for d in [64usize, 128] {
        for layout in [ProbeLayout::KMajor, ProbeLayout::NMajor, ProbeLayout::KMajorSharedA] {
            let trans = layout == ProbeLayout::NMajor;
            let (n, steps) = if trans { (d, 4) } else { (64, d / 16) };
            for step in 0..steps {
                let rows = cuda::wgmma_probe(0, d, layout, 0, step).unwrap();
                let cols = cuda::wgmma_probe(0, d, layout, 1, step).unwrap();
                for m in 0..64 {
                    for j in 0..n {
                        let k = 16 * step + m % 16;
                        let want = if trans { (k, j) } else { (j, k) };
                        let got = (rows[m * n + j] as usize, cols[m * n + j] as usize);
                        if got != want {
                            wrong.push(format!(
                                "d {d} {layout:?} step {step}: D[{m}][{j}] read tile[{}][{}], not tile[{}][{}]",
                                got.0, got.1, want.0, want.1
                            ));
                        }
                    }
                }
            }
        }
    }
    let shown: Vec<&String> = wrong.iter().take(24).collect();
    assert!(wrong.is_empty(), "{} elements read elsewhere; the first:\n{shown:#?}", wrong.len());
}

/// Keys split across warps (flash decoding): 1, 3 and 16 shares per (row, head), over
/// decode rows of 1 to 300 positions beside a prefill, give the one-warp-per-pair kernel's
/// output and log-sum-exp within f32 reassociation (bf16: its rounding), with shares left
/// empty where a row sees fewer positions than there are shares; the split kernel and the
/// merge are what ran.
#[test]
fn paged_attention_split_over_keys_equals_one_warp_per_pair() {
    let dev = gpu_or_skip!();
    let (h, kv, d, bs) = (4usize, 2usize, 32usize, 16usize);
    // (start, t): positions cached, new rows; each sequence gets its own run of blocks.
    let shapes = [(0usize, 1usize), (299, 1), (40, 7), (130, 1)];
    let (tables, blocks) = reversed_tables(&shapes, bs);
    let spec: Vec<(usize, usize, &[u32])> = shapes.iter().zip(&tables).map(|(&(a, t), b)| (a, t, &b[..])).collect();
    let rows: usize = shapes.iter().map(|s| s.1).sum();
    let scale = (d as f32).powf(-0.5);
    for dt in [DType::F32, DType::BF16] {
        let q = randn(&[rows, h, d], 240).to_dtype(dt).unwrap().to_device(dev).unwrap();
        let kp = randn(&[blocks, bs, kv, d], 241).to_dtype(dt).unwrap().to_device(dev).unwrap();
        let vp = randn(&[blocks, bs, kv, d], 242).to_dtype(dt).unwrap().to_device(dev).unwrap();
        let one = PagedBatch::new(&spec, bs, dev).unwrap().with_grouped_heads(false);
        let (want_out, want_lse) = q.paged_attention_batch(&kp, &vp, &one, scale).unwrap();
        let (rt, at) = if dt == DType::F32 { (1e-5, 1e-5) } else { tol(dt) };
        for splits in [3usize, 16] {
            let batch = PagedBatch::new(&spec, bs, dev).unwrap().with_key_splits(splits).with_grouped_heads(false);
            let kernel = format!("attn_fwd_paged_split_{}", if dt == DType::F32 { "f32" } else { "bf16" });
            let before = cuda::thread_kernel_launches(&kernel);
            let (out, lse) = q.paged_attention_batch(&kp, &vp, &batch, scale).unwrap();
            assert_eq!(cuda::thread_kernel_launches(&kernel), before + 1, "{dt} splits {splits}: {kernel}");
            close(&format!("{dt} splits {splits}: out"), &out, &want_out, rt * 2.0, at * 2.0);
            close(&format!("{dt} splits {splits}: lse"), &lse, &want_lse, 1e-5, 1e-5);
        }
    }
}

/// Grouped-query decode (`PagedBatch::with_grouped_heads`): one warp per (row, KV head)
/// serving the whole head group gives the per-head kernels' output and log-sum-exp to the bit
/// on the emulator (the same terms in the same order; within 1e-6 on a GPU, whose compiler
/// may contract the two loops' multiply-adds differently), for groups of 2, 3, 6 and 8 heads
/// (MQA), head dims 32 to 128 (96: a lane's last chunk half used), f32, bf16 and a bf16
/// cache under f32 queries, one warp per row or split over 3 and 16 shares, decode rows
/// beside a prefill; the grouped kernel is what ran. Groups of 1 or 9 heads and head dim 256
/// keep the per-head kernels. Both agree with the CPU.
#[test]
fn grouped_decode_attention_equals_one_warp_per_head() {
    let dev = gpu_or_skip!();
    let exact = cuda::test_backend() == Ok(cuda::Backend::Emulator);
    let bs = 16usize;
    // (start, t): positions cached, new rows; blocks in reverse order per sequence.
    let shapes = [(0usize, 1usize), (140, 1), (20, 5), (63, 1)];
    let (tables, blocks) = reversed_tables(&shapes, bs);
    let spec: Vec<(usize, usize, &[u32])> = shapes.iter().zip(&tables).map(|(&(a, t), b)| (a, t, &b[..])).collect();
    let rows: usize = shapes.iter().map(|s| s.1).sum();
    // (heads, kv heads, head dim, grouped kernel's dim or None, dtypes: (queries, cache)).
    let f32_both = (DType::F32, DType::F32);
    let cases: Vec<(usize, usize, usize, Option<usize>, Vec<(DType, DType)>)> = vec![
        (12, 2, 128, Some(128), vec![f32_both, (DType::BF16, DType::BF16), (DType::F32, DType::BF16)]),
        (8, 1, 64, Some(64), vec![f32_both, (DType::F32, DType::BF16)]),
        (6, 2, 96, Some(128), vec![f32_both, (DType::F16, DType::F16)]),
        (4, 2, 32, Some(64), vec![f32_both]),
        (4, 4, 32, None, vec![f32_both]),
        (9, 1, 32, None, vec![f32_both]),
        (4, 2, 256, None, vec![f32_both]),
    ];
    for (h, kv, d, group_dim, dtypes) in cases {
        for (qt, ct) in dtypes {
            let scale = (d as f32).powf(-0.5);
            let q = randn(&[rows, h, d], 260).to_dtype(qt).unwrap();
            let kp = randn(&[blocks, bs, kv, d], 261).to_dtype(ct).unwrap();
            let vp = randn(&[blocks, bs, kv, d], 262).to_dtype(ct).unwrap();
            let cpu_batch = PagedBatch::new(&spec, bs, Device::Cpu).unwrap();
            let (want, want_lse) = q.paged_attention_batch(&kp, &vp, &cpu_batch, scale).unwrap();
            let (qg, kg, vg) = (q.to_device(dev).unwrap(), kp.to_device(dev).unwrap(), vp.to_device(dev).unwrap());
            let sk = match (qt, ct) {
                (DType::F32, DType::BF16) => "f32_bf16kv".to_string(),
                _ => format!("{qt}").to_lowercase(),
            };
            for splits in [1usize, 3, 16] {
                let what = format!("heads {h}/{kv}, d {d}, {qt} over {ct}, {splits} shares");
                let run = |grouped: bool| {
                    let batch = PagedBatch::new(&spec, bs, dev).unwrap().with_key_splits(splits);
                    qg.paged_attention_batch(&kg, &vg, &batch.with_grouped_heads(grouped), scale).unwrap()
                };
                let kernel = match group_dim {
                    Some(gd) => format!("attn_fwd_paged_group_d{gd}_{sk}"),
                    None if splits > 1 => format!("attn_fwd_paged_split_{sk}"),
                    None => format!("attn_fwd_paged_batch_{sk}"),
                };
                let before = cuda::thread_kernel_launches(&kernel);
                let (out, lse) = run(true);
                assert_eq!(cuda::thread_kernel_launches(&kernel), before + 1, "{what}: {kernel} did not run");
                let (per_head, per_head_lse) = run(false);
                if exact {
                    same(&format!("{what}: out, grouped against per head"), &out, &per_head);
                    same(&format!("{what}: lse, grouped against per head"), &lse, &per_head_lse);
                } else {
                    let t = if qt == DType::F32 { 1e-6 } else { tol(qt).0 };
                    close(
                        &format!("{what}: out, grouped against per head"),
                        &out,
                        &per_head.to_device(Device::Cpu).unwrap(),
                        t,
                        t,
                    );
                    close(&format!("{what}: lse"), &lse, &per_head_lse.to_device(Device::Cpu).unwrap(), 1e-6, 1e-6);
                }
                let (rt, at) = if qt == DType::F32 { (1e-5, 1e-5) } else { tol(qt) };
                close(&format!("{what}: against the CPU"), &out, &want, rt * 2.0, at * 2.0);
                close(&format!("{what}: lse against the CPU"), &lse, &want_lse, 1e-5, 1e-5);
            }
        }
    }
}

/// The fused RMSNorm backward on the GPU against the CPU's: dx and dw within f32
/// reassociation (dw is summed in the same chunks of 64 rows), for f32, bf16 and f16
/// inputs, rows below, at and above a chunk, an odd width; without dw only dx.
#[test]
fn rms_norm_backward_matches_the_cpu() {
    let dev = gpu_or_skip!();
    for (rows, h) in [(3usize, 40usize), (64, 96), (150, 37)] {
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let x = randn(&[rows, h], 300).to_dtype(dt).unwrap();
            let w = randn(&[h], 301).to_dtype(dt).unwrap();
            let g = randn(&[rows, h], 302);
            let (want_dx, want_dw) = x.rms_norm_backward(&w, &g, 1e-6, true).unwrap();
            let on = |t: &Tensor| t.to_device(dev).unwrap();
            let (dx, dw) = on(&x).rms_norm_backward(&on(&w), &on(&g), 1e-6, true).unwrap();
            let what = format!("{rows}x{h} {dt}");
            close(&format!("{what}: dx"), &dx, &want_dx, 1e-5, 1e-5);
            close(&format!("{what}: dw"), &dw.unwrap(), &want_dw.unwrap(), 1e-5, 1e-4);
            let (dx2, none) = on(&x).rms_norm_backward(&on(&w), &on(&g), 1e-6, false).unwrap();
            assert!(none.is_none());
            same(&format!("{what}: dx without dw"), &dx2, &dx);
        }
    }
}

/// Rows moved whole (index-select, embeddings, paged-cache writes) go as 16-byte units when
/// every row is a whole number of them and element by element otherwise: the same bytes.
#[test]
fn row_moves_in_16_byte_units_or_by_element() {
    let dev = gpu_or_skip!();
    for (dt, inner, units) in [
        (DType::BF16, 64usize, true),
        (DType::BF16, 12, false),
        (DType::F32, 4, true),
        (DType::F32, 5, false),
        (DType::U8, 32, true),
        (DType::U8, 24, false),
    ] {
        let what = format!("{dt} rows of {inner}");
        let units = units && std::env::var("ARTIST_VEC").as_deref() != Ok("0");
        let kind = if units { "b16".to_string() } else { format!("b{}", dt.size_in_bytes()) };
        let w = randn(&[9, inner], 330).abs().unwrap().mul_scalar(10.0).unwrap().to_dtype(dt).unwrap();
        let ids = Tensor::from_vec(vec![3u32, 0, 8, 3, 5], 5, Device::Cpu).unwrap();
        let kernel = format!("index_select_{kind}");
        let before = cuda::thread_kernel_launches(&kernel);
        same(
            &format!("index_select {what}"),
            &w.to_device(dev).unwrap().index_select(&ids.to_device(dev).unwrap(), 0).unwrap(),
            &w.index_select(&ids, 0).unwrap(),
        );
        assert_eq!(cuda::thread_kernel_launches(&kernel), before + 1, "{what}: {kernel} ran");
        if dt == DType::U8 {
            continue;
        }
        // Three new positions of one sequence into a pool of 4 blocks of 2.
        let table = [2u32, 0];
        let spec: Vec<(usize, usize, &[u32])> = vec![(0, 3, &table)];
        let pool = randn(&[4, 2, 1, inner], 331).to_dtype(dt).unwrap();
        let src = randn(&[3, 1, inner], 332).to_dtype(dt).unwrap();
        let kernel = format!("copy_rows_{kind}");
        let before = cuda::thread_kernel_launches(&kernel);
        let mut pools = Vec::new();
        for device in [Device::Cpu, dev] {
            let p = pool.copy().unwrap().to_device(device).unwrap();
            p.write_paged(&PagedBatch::new(&spec, 2, device).unwrap(), &src.to_device(device).unwrap()).unwrap();
            pools.push(p);
        }
        same(&format!("write_paged {what}"), &pools[1], &pools[0]);
        assert_eq!(cuda::thread_kernel_launches(&kernel), before + 1, "{what}: {kernel} ran");
    }
}

/// The row kernels (RMSNorm, its fused residual add, its backward, softmax and log-softmax)
/// read aligned rows as whole vectors and misaligned ones element by element, in the same
/// order: the same bits.
#[test]
fn row_kernels_give_the_same_bits_whatever_the_alignment() {
    let dev = gpu_or_skip!();
    // A contiguous tensor whose first element is one past an aligned address.
    let shifted = |t: &Tensor| {
        let flat = t.flatten_all().unwrap();
        let n = flat.elem_count();
        let padded = Tensor::cat(&[&flat.narrow(0, 0, 1).unwrap(), &flat], 0).unwrap().to_device(dev).unwrap();
        let v = padded.narrow(0, 1, n).unwrap().reshape(t.dims()).unwrap();
        assert!(v.is_contiguous() && v.layout().start() == 1);
        v
    };
    for (rows, cols) in [(3usize, 64usize), (5, 896), (2, 8200)] {
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let what = format!("{rows}x{cols} {dt}");
            let (rt, at) = tol(dt);
            let x = randn(&[rows, cols], 320).to_dtype(dt).unwrap();
            let r = randn(&[rows, cols], 321).to_dtype(dt).unwrap();
            let w = randn(&[cols], 322).to_dtype(dt).unwrap();
            let g = randn(&[rows, cols], 323);
            let on = |t: &Tensor| t.to_device(dev).unwrap();
            same(
                &format!("rms_norm {what}"),
                &shifted(&x).rms_norm(&on(&w), 1e-6).unwrap(),
                &on(&x).rms_norm(&on(&w), 1e-6).unwrap(),
            );
            let (s1, n1) = shifted(&x).add_rms_norm(&on(&r), &on(&w), 1e-6).unwrap();
            let (s2, n2) = on(&x).add_rms_norm(&on(&r), &on(&w), 1e-6).unwrap();
            same(&format!("add_rms_norm sum {what}"), &s1, &s2);
            same(&format!("add_rms_norm {what}"), &n1, &n2);
            let (d1, _) = shifted(&x).rms_norm_backward(&on(&w), &shifted(&g), 1e-6, false).unwrap();
            let (d2, _) = on(&x).rms_norm_backward(&on(&w), &on(&g), 1e-6, false).unwrap();
            same(&format!("rms_norm_backward {what}"), &d1, &d2);
            same(&format!("softmax {what}"), &shifted(&x).softmax(-1).unwrap(), &on(&x).softmax(-1).unwrap());
            let ls = on(&x).log_softmax(-1).unwrap();
            same(&format!("log_softmax {what}"), &shifted(&x).log_softmax(-1).unwrap(), &ls);
            close(&format!("log_softmax {what} against the CPU"), &ls, &x.log_softmax(-1).unwrap(), rt * 2.0, at * 4.0);
            close(
                &format!("rms_norm_backward {what} against the CPU"),
                &d2,
                &x.rms_norm_backward(&w, &g, 1e-6, false).unwrap().0,
                1e-5,
                1e-5,
            );
            close(
                &format!("add_rms_norm {what} against the CPU"),
                &n2,
                &x.add_rms_norm(&r, &w, 1e-6).unwrap().1,
                rt * 4.0,
                at * 4.0,
            );
        }
    }
}

/// The fused SwiGLU backward on the GPU gives the bits of the GPU's own composition
/// (`mul`, `silu_backward`, `silu`) on the emulator (within 1e-6 on a GPU, whose compiler
/// may contract the two kernels differently) and the CPU's values within f32 or bf16
/// tolerance.
#[test]
fn silu_mul_backward_matches_its_composition() {
    let dev = gpu_or_skip!();
    let exact = cuda::test_backend() == Ok(cuda::Backend::Emulator);
    for dt in [DType::F32, DType::BF16, DType::F16] {
        let gate = randn(&[37, 130], 310).affine(3.0, 0.0).unwrap().to_dtype(dt).unwrap();
        let up = randn(&[37, 130], 311).to_dtype(dt).unwrap();
        let g = randn(&[37, 130], 312).to_dtype(dt).unwrap();
        let on = |t: &Tensor| t.to_device(dev).unwrap();
        let (dgate, dup) = on(&gate).silu_mul_backward(&on(&up), &on(&g)).unwrap();
        let composed_dgate = on(&g).mul(&on(&up)).unwrap().silu_backward(&on(&gate)).unwrap();
        let composed_dup = on(&g).mul(&on(&gate).silu().unwrap()).unwrap();
        if exact {
            same(&format!("{dt}: dgate against the GPU's composition"), &dgate, &composed_dgate);
            same(&format!("{dt}: dup against the GPU's composition"), &dup, &composed_dup);
        }
        let (cpu_dgate, cpu_dup) = gate.silu_mul_backward(&up, &g).unwrap();
        let (rt, at) = tol(dt);
        close(&format!("{dt}: dgate against the CPU"), &dgate, &cpu_dgate, rt * 2.0, at * 2.0);
        close(&format!("{dt}: dup against the CPU"), &dup, &cpu_dup, rt * 2.0, at * 2.0);
    }
}

/// The fused SwiGLU backward over `[gate | up]` on the GPU: the bits of the GPU's
/// `silu_mul_backward` of the two halves side by side, on whole vectors (64 columns) and
/// element by element (35 columns, and a gradient one element off alignment); the CPU's
/// values within the dtype's tolerance.
#[test]
fn swiglu_backward_matches_the_halves_and_the_cpu() {
    let dev = gpu_or_skip!();
    for dt in [DType::F32, DType::BF16, DType::F16] {
        for (cols, shift) in [(64usize, 0usize), (35, 0), (64, 1)] {
            let gu = randn(&[9, 2 * cols], 320).affine(3.0, 0.0).unwrap().to_dtype(dt).unwrap();
            let g_wide = randn(&[9 * cols + 1], 321).to_dtype(dt).unwrap();
            let g = g_wide.narrow(0, shift, 9 * cols).unwrap().reshape((9, cols)).unwrap();
            let (gd, gg) = (gu.to_device(dev).unwrap(), g.to_device(dev).unwrap());
            let got = gd.swiglu_backward(&gg).unwrap();
            let what = format!("{dt}, {cols} columns, gradient shifted by {shift}");
            let (dgate, dup) =
                gd.narrow(1, 0, cols).unwrap().silu_mul_backward(&gd.narrow(1, cols, cols).unwrap(), &gg).unwrap();
            let halves =
                Tensor::cat(&[&dgate.to_dtype(DType::F32).unwrap(), &dup.to_dtype(DType::F32).unwrap()], 1).unwrap();
            assert!(got.to_bytes().unwrap() == halves.to_bytes().unwrap(), "{what}: not the bits of the halves");
            let (rt, at) = tol(dt);
            close(&what, &got, &gu.swiglu_backward(&g).unwrap(), rt * 2.0, at * 2.0);
        }
    }
}

/// Block tables for sequences of `(cached, new)` positions: each sequence its own run of
/// blocks, in reverse order (so no table is a view of consecutive blocks); and the blocks
/// in all.
fn reversed_tables(shapes: &[(usize, usize)], bs: usize) -> (Vec<Vec<u32>>, usize) {
    let mut next = 0u32;
    let tables = shapes
        .iter()
        .map(|&(a, t)| {
            let n = (a + t).div_ceil(bs) as u32;
            let table = (next..next + n).rev().collect();
            next += n;
            table
        })
        .collect();
    (tables, next as usize)
}
