//! CPU throughput of the tensor ops the Qwen2.5-0.5B forward and backward passes lean on.
//!
//! `cargo bench --bench tensor_ops`. Two kinds of groups:
//!
//! * `matmul_*`: matrix products at Qwen2.5-0.5B shapes (hidden 896, intermediate 4864,
//!   14 query heads and 2 KV heads of 64, vocab 151936). Throughput is declared as
//!   `Throughput::Elements(2*m*n*k)`, so criterion's "elem/s" reads as FLOP/s ("Gelem/s" =
//!   GFLOP/s). Every shape has, in the same group, `ours` (the `Tensor` API, allocating its
//!   output on every call, as it does in a model) and `gemm` (the `gemm` crate called
//!   directly with the same strides into a preallocated output), so the ratio ours/gemm is
//!   the overhead of the wrapper; `gemm_alloc` (the same call into a fresh zeroed `Vec` each
//!   time) splits that overhead into allocation and the rest. The attention group adds
//!   `gemm_par_heads` (heads in parallel, one thread each), the strategy `ours` picks for
//!   small per-head products.
//! * `mem_*`: memory-bound ops. Throughput is `Throughput::BytesDecimal(bytes read + bytes
//!   written)` counting each operand once (the compulsory traffic), so "GB/s" compares
//!   directly with `copy_ref`, a `copy_from_slice` between two preallocated `Vec<f32>` of
//!   the same element count in the same group (`par_copy_ref`: the same on every rayon
//!   thread). `alloc_copy_ref` (`to_vec`: allocate, copy, free) shows what a fresh output
//!   buffer costs on its own, since every op here allocates its output.
//!
//! * `linear_rows_bf16`: `linear` with bf16 weights at the row counts of batched decoding,
//!   and `linear_in` with the activations rounded to bf16 (`in_bf16`).
//! * `matmul_f32_bf16`: the backward products of `linear_in` in bf16 (`matmul_f32` of bf16
//!   operands) at the down projection's shape.
//! * `causal_attention_cpu`: one sequence's causal attention, forward and backward, through
//!   the fused CPU kernels (`fused`) and through the composition of matrix products
//!   (`reference`), at the embedded demo's shape (85 positions, 4 heads over 2 KV heads of
//!   32), Qwen2.5-0.5B's heads at 256 and 1024 positions and Qwen3-0.6B's (16 heads of 128
//!   over 8 KV heads) at 512. Throughput counts the causal
//!   half's multiply-adds, 2 products of t (t + 1) / 2 scores x d per head forward and 4
//!   backward (as FLOP: 2 per multiply-add), so "Gelem/s" is GFLOP/s done usefully.
//! * `host_sampler`: one draw (`Sampler::sample`: log-sum-exp in f64, the candidates'
//!   probabilities, the selection and the draw) from a row of Qwen2.5's 151,936 logits at
//!   temperature 1 and with top-p 0.9: `flat` (random weights' logits, every token a
//!   candidate) and `peaked` (one logit 30 above N(0, 2) noise, about a tenth of the tokens
//!   within the 1e-12 floor). Throughput in logits per second.
//! * `peak_cpu`: the multiply-add ceiling of the CPU (f32 FMA, bf16 dot products) on every
//!   thread, operands in registers: what the FLOP/s of the products compare against.
//!
//! Settings keep the whole run to about 5 minutes on a 2-core machine (plus the build):
//! 10 samples, 1 s warm-up, 2 s measurement per benchmark. The machine must be otherwise
//! idle: a concurrent build halves every number here.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use artist::tensor::{DType, Device, Tensor, rope_tables};
use criterion::{Criterion, Throughput, criterion_group};
use gemm::Parallelism;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const HIDDEN: usize = 896;
const INTERMEDIATE: usize = 4864;
const HEADS: usize = 14;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const VOCAB: usize = 151_936;
const ROPE_THETA: f32 = 1_000_000.0;

/// Element count of the large memory-bound benchmarks: 16 Mi f32 = 64 MiB per operand.
const BIG_ROWS: usize = 16_384;
const BIG_COLS: usize = 1024;
const BIG: usize = BIG_ROWS * BIG_COLS;

const F32: usize = size_of::<f32>();
const BF16: usize = 2;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn randn(dims: &[usize], seed: u64) -> Tensor {
    Tensor::randn(dims.to_vec(), 0.0, 1.0, DType::F32, Device::Cpu, &mut rng(seed)).expect("randn")
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().expect("f32 tensor")
}

/// The embedding / LM-head matrix `[VOCAB, HIDDEN]` (544 MB), built once and shared by the
/// LM-head matmul and the embedding lookup.
fn vocab_matrix() -> &'static (Tensor, Vec<f32>) {
    static E: OnceLock<(Tensor, Vec<f32>)> = OnceLock::new();
    E.get_or_init(|| {
        let e = Tensor::randn((VOCAB, HIDDEN), 0.0, 0.02, DType::F32, Device::Cpu, &mut rng(7)).expect("randn");
        let raw = f32s(&e);
        (e, raw)
    })
}

/// `dst[m, n] = lhs[m, k] @ w[n, k]^T` through `gemm` directly, every operand row-major:
/// `w^T` is read as a transposed view (column stride `k`, row stride 1), as `linear` does.
fn gemm_nt(dst: &mut [f32], lhs: &[f32], w: &[f32], (m, k, n): (usize, usize, usize), par: Parallelism) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && w.len() >= n * k);
    // SAFETY: the asserts above keep every index the strides reach inside its slice:
    // dst (i, j) at i*n + j, lhs (i, p) at i*k + p, rhs (p, j) at j*k + p.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn rayon_all() -> Parallelism {
    Parallelism::Rayon(rayon::current_num_threads())
}

fn assert_close(ours: &Tensor, reference: &[f32], what: &str) {
    let got = f32s(ours);
    assert_eq!(got.len(), reference.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, |m, x| if x.is_nan() || x > m { x } else { m });
    assert!(worst < 1e-3, "{what}: ours and gemm differ by {worst}");
}

/// `x[t, k] @ w[n, k]^T` for each `t` in `ts`: `linear` against `gemm` called directly.
fn bench_linear(c: &mut Criterion, group: &str, (k, n): (usize, usize), ts: &[usize], w: &Tensor, w_raw: &[f32]) {
    let mut g = c.benchmark_group(group);
    for &t in ts {
        let x = randn(&[t, k], 1 + t as u64);
        let x_raw = f32s(&x);
        let mut dst = vec![0f32; t * n];
        gemm_nt(&mut dst, &x_raw, w_raw, (t, k, n), rayon_all());
        assert_close(&x.linear(w, None).unwrap(), &dst, group);

        // 2*m*n*k FLOP per call: criterion's "elem/s" below is FLOP/s.
        g.throughput(Throughput::Elements((2 * t * n * k) as u64));
        g.bench_function(format!("ours/T={t}"), |b| b.iter(|| x.linear(w, None).unwrap()));
        g.bench_function(format!("gemm/T={t}"), |b| {
            b.iter(|| gemm_nt(black_box(&mut dst), &x_raw, w_raw, (t, k, n), rayon_all()))
        });
        // The same with a fresh zeroed output per call, as `ours` allocates: the difference
        // from `gemm` is the allocation, the rest of the gap to `ours` is the wrapper.
        g.bench_function(format!("gemm_alloc/T={t}"), |b| {
            b.iter(|| {
                let mut dst = vec![0f32; t * n];
                gemm_nt(&mut dst, &x_raw, w_raw, (t, k, n), rayon_all());
                dst
            })
        });
    }
    g.finish();
}

fn matmul_mlp(c: &mut Criterion) {
    // Qwen2 MLP: gate/up project 896 -> 4864, down projects 4864 -> 896; weights [out, in].
    let w_up = randn(&[INTERMEDIATE, HIDDEN], 11);
    let w_up_raw = f32s(&w_up);
    bench_linear(c, "matmul_mlp_up_896x4864", (HIDDEN, INTERMEDIATE), &[128, 512], &w_up, &w_up_raw);
    drop((w_up, w_up_raw));
    let w_down = randn(&[HIDDEN, INTERMEDIATE], 12);
    let w_down_raw = f32s(&w_down);
    bench_linear(c, "matmul_mlp_down_4864x896", (INTERMEDIATE, HIDDEN), &[128, 512], &w_down, &w_down_raw);
}

fn matmul_lm_head(c: &mut Criterion) {
    // Logits = h[T, 896] @ E^T with the tied embedding E [151936, 896]: 544 MB of weight
    // streamed per call, 8.7 GFLOP at T = 32.
    let (e, e_raw) = vocab_matrix();
    bench_linear(c, "matmul_lm_head_896x151936", (HIDDEN, VOCAB), &[32, 128], e, e_raw);
}

/// `linear` with bf16 weights (a bf16 checkpoint) at the row counts of batched decoding and
/// short prompts: the matrix-vector path (up to 8 rows), the tasks of weight rows (9 to
/// 256) and the blocked gemm (more), at Qwen2.5-0.5B's fused gate + up, down and LM-head
/// shapes (the LM head only to 128: a prefill projects its last row alone). FLOP/s as
/// above; no gemm peer (gemm has no bf16 operands: `matmul_*` above compares f32).
/// `in_bf16`: `linear_in` with `x` rounded to bf16, on the CPU's bf16 dot products where it
/// has them (AMX tiles from 32 rows, else AVX512-BF16; `ARTIST_CPU_AMX=0` measures the
/// AVX512-BF16 kernel, `ARTIST_CPU_DPBF16=0` the widening path).
fn linear_rows_bf16(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear_rows_bf16");
    for (name, k, n) in
        [("gate_up", HIDDEN, 2 * INTERMEDIATE), ("down", INTERMEDIATE, HIDDEN), ("lm_head", HIDDEN, VOCAB)]
    {
        let w = Tensor::randn((n, k), 0.0, 0.02, DType::BF16, Device::Cpu, &mut rng(31)).expect("randn");
        let most = if name == "lm_head" { 128 } else { 512 };
        for m in [8usize, 16, 32, 64, 128, 192, 256, 512].into_iter().filter(|&m| m <= most) {
            let x = randn(&[m, k], 32 + m as u64);
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(format!("{name}_{k}x{n}/T={m}"), |b| b.iter(|| x.linear(&w, None).unwrap()));
            if m > 8 {
                // The same product with x rounded to bf16 (`matmul_dtype = "bf16"`).
                g.bench_function(format!("{name}_{k}x{n}/in_bf16/T={m}"), |b| {
                    b.iter(|| x.linear_in(&w, None, DType::BF16).unwrap())
                });
            }
        }
    }
    g.finish();
}

/// The CPU's multiply-add limit, the ceiling for the `matmul_*` and `linear_*` rates:
/// independent f32 FMAs (`fma_f32`) and bf16 pair dot products (`dpbf16`, where the CPU
/// has AVX512-BF16) on every rayon thread, operands in registers; and AMX's `tdpbf16ps`
/// (`amx_bf16`, where the tiles run) on four accumulator tiles, loading its two tiles of
/// each operand from L1 every step as a product's kernel does. FLOP/s as above.
fn peak_cpu(c: &mut Criterion) {
    const STEPS: usize = 1 << 18;
    let mut g = c.benchmark_group("peak_cpu");
    let threads = rayon::current_num_threads();
    // (name, steps, FLOP a step, whether it runs here, the stream of `steps` steps); a tile
    // step is 65,536 FLOP against an FMA step's 768, so it takes fewer steps.
    type Kind = (&'static str, usize, usize, bool, fn(usize) -> f32);
    let kinds: [Kind; 3] = [
        ("fma_f32", STEPS, peak::CHAINS * 32, peak::fma_available(), peak::fma),
        ("dpbf16", STEPS, peak::CHAINS * 64, peak::dpbf16_available(), peak::dpbf16),
        ("amx_bf16", STEPS / 16, 4 * 16 * 16 * 32 * 2, artist_tensor::cpu::amx_available(), peak::amx),
    ];
    for (name, steps, flops_per_step, available, run) in kinds {
        if !available {
            eprintln!("peak_cpu/{name}: skipped, this CPU lacks the instructions");
            continue;
        }
        g.throughput(Throughput::Elements((threads * steps * flops_per_step) as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                rayon::broadcast(|_| run(steps));
            })
        });
    }
    g.finish();
}

/// Register-only instruction streams for [`peak_cpu`].
mod peak {
    /// Independent accumulators: enough to cover the instructions' latency at full rate.
    pub const CHAINS: usize = 24;

    #[cfg(target_arch = "x86_64")]
    pub fn fma_available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    #[cfg(target_arch = "x86_64")]
    pub fn dpbf16_available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn fma_available() -> bool {
        false
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn dpbf16_available() -> bool {
        false
    }

    #[cfg(target_arch = "x86_64")]
    pub fn fma(steps: usize) -> f32 {
        // SAFETY: called only where `fma_available`.
        unsafe { x86::fma(steps) }
    }

    #[cfg(target_arch = "x86_64")]
    pub fn dpbf16(steps: usize) -> f32 {
        // SAFETY: called only where `dpbf16_available`.
        unsafe { x86::dpbf16(steps) }
    }

    /// `steps` rounds of four `tdpbf16ps`, each round loading its four tiles from L1.
    pub fn amx(steps: usize) -> f32 {
        artist_tensor::cpu::amx_peak(steps).expect("called only where the tiles run")
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn fma(_: usize) -> f32 {
        unreachable!()
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn dpbf16(_: usize) -> f32 {
        unreachable!()
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        use super::CHAINS;

        #[target_feature(enable = "avx512f")]
        pub unsafe fn fma(steps: usize) -> f32 {
            let mut acc = [_mm512_setzero_ps(); CHAINS];
            let (a, b) = (_mm512_set1_ps(1.0), _mm512_set1_ps(1e-30));
            for _ in 0..steps {
                for v in acc.iter_mut() {
                    *v = _mm512_fmadd_ps(a, b, *v);
                }
                std::hint::black_box(());
            }
            acc.iter().fold(0.0, |s, v| s + _mm512_reduce_add_ps(*v))
        }

        #[target_feature(enable = "avx512f,avx512bf16")]
        pub unsafe fn dpbf16(steps: usize) -> f32 {
            let mut acc = [_mm512_setzero_ps(); CHAINS];
            // SAFETY: 64 bytes of bf16 pairs reinterpreted.
            let (a, b) = unsafe {
                (
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f80_3f80)),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x0001_0001)),
                )
            };
            for _ in 0..steps {
                for v in acc.iter_mut() {
                    *v = _mm512_dpbf16_ps(*v, a, b);
                }
                std::hint::black_box(());
            }
            acc.iter().fold(0.0, |s, v| s + _mm512_reduce_add_ps(*v))
        }
    }
}

/// The backward products of `linear_in` in bf16 at the down projection's shape: `dx = g @ w`
/// (`g: [T, 896]`, `w: [896, 4864]`) and `dw = g^T @ x` (`x: [T, 4864]`), bf16 operands
/// with f32 sums (`matmul_f32`), operands as backward has them (`w` the weight itself, `g^T`
/// a transposed view). `ARTIST_CPU_DPBF16=0` measures the widening path.
fn matmul_f32_bf16(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul_f32_bf16");
    let w = Tensor::randn((HIDDEN, INTERMEDIATE), 0.0, 0.02, DType::BF16, Device::Cpu, &mut rng(41)).expect("randn");
    for t in [128usize, 512] {
        let gr = randn(&[t, HIDDEN], 42).to_dtype(DType::BF16).unwrap();
        let x = randn(&[t, INTERMEDIATE], 43).to_dtype(DType::BF16).unwrap();
        g.throughput(Throughput::Elements((2 * t * HIDDEN * INTERMEDIATE) as u64));
        g.bench_function(format!("dx_down/T={t}"), |b| b.iter(|| gr.matmul_f32(&w).unwrap()));
        let gt = gr.t().unwrap();
        g.bench_function(format!("dw_down/T={t}"), |b| b.iter(|| gt.matmul_f32(&x).unwrap()));
    }
    g.finish();
}

fn matmul_attention_scores(c: &mut Criterion) {
    // q [1, 14, T, 64] @ k^T with grouped-query attention: the 14 query heads are viewed as
    // [1, 2, 7, T, 64] and the 2 KV heads as [1, 2, 1, T, 64], so the batch dimension
    // broadcasts k over its 7 query heads instead of copying it (repeat_kv as a view).
    let group = HEADS / KV_HEADS;
    let mut g = c.benchmark_group("matmul_attn_scores_14h_64d");
    for t in [128usize, 512] {
        let q = randn(&[1, HEADS, t, HEAD_DIM], 21);
        let k = randn(&[1, KV_HEADS, t, HEAD_DIM], 22);
        let (q_raw, k_raw) = (f32s(&q), f32s(&k));
        let scores = |q: &Tensor, k: &Tensor| -> Tensor {
            let q5 = q.reshape((1, KV_HEADS, group, t, HEAD_DIM)).unwrap();
            let k5 = k.unsqueeze(2).unwrap();
            q5.matmul(&k5.t().unwrap()).unwrap().reshape((1, HEADS, t, t)).unwrap()
        };
        let mut dst = vec![0f32; HEADS * t * t];
        let (qs, ks) = (t * HEAD_DIM, t * t);
        let one = |dst: &mut [f32], h: usize, par: Parallelism| {
            let kv = h / group;
            gemm_nt(dst, &q_raw[h * qs..(h + 1) * qs], &k_raw[kv * qs..(kv + 1) * qs], (t, HEAD_DIM, t), par);
        };
        for (h, d) in dst.chunks_mut(ks).enumerate() {
            one(d, h, rayon_all());
        }
        assert_close(&scores(&q, &k), &dst, "attention scores");

        // 2*m*n*k FLOP per head: criterion's "elem/s" below is FLOP/s.
        g.throughput(Throughput::Elements((2 * HEADS * t * t * HEAD_DIM) as u64));
        g.bench_function(format!("ours/T={t}"), |b| b.iter(|| scores(&q, &k)));
        // The heads in turn, gemm spreading each product over the threads.
        g.bench_function(format!("gemm/T={t}"), |b| {
            b.iter(|| {
                for (h, d) in black_box(&mut dst).chunks_mut(ks).enumerate() {
                    one(d, h, rayon_all());
                }
            })
        });
        // The same with a fresh zeroed output per call, as `ours` allocates.
        g.bench_function(format!("gemm_alloc/T={t}"), |b| {
            b.iter(|| {
                let mut dst = vec![0f32; HEADS * t * t];
                for (h, d) in dst.chunks_mut(ks).enumerate() {
                    one(d, h, rayon_all());
                }
                dst
            })
        });
        // The heads in parallel, each product on one thread.
        g.bench_function(format!("gemm_par_heads/T={t}"), |b| {
            b.iter(|| {
                black_box(&mut dst).par_chunks_mut(ks).enumerate().for_each(|(h, d)| one(d, h, Parallelism::None));
            })
        });
    }
    g.finish();
}

fn causal_attention_cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("causal_attention_cpu");
    for (t, heads, kv_heads, d) in
        // The last: Qwen3-0.6B's 16 heads of 128 over 8 KV heads at a 512-token prompt.
        [
            (85usize, 4usize, 2usize, 32usize),
            (256, HEADS, KV_HEADS, HEAD_DIM),
            (1024, HEADS, KV_HEADS, HEAD_DIM),
            (512, 16, 8, 128),
        ]
    {
        let (q, k, v) = (randn(&[t, heads, d], 31), randn(&[t, kv_heads, d], 32), randn(&[t, kv_heads, d], 33));
        let dout = randn(&[t, heads, d], 34);
        let scale = (d as f32).powf(-0.5);
        let (out, lse) = q.causal_attention_fused(&k, &v, scale).unwrap();
        let (reference, _) = q.causal_attention_reference(&k, &v, scale).unwrap();
        assert_close(&out, &f32s(&reference), "fused attention");
        let shape = format!("T={t}/{heads}h{kv_heads}kv/d={d}");
        let flop = |products: usize| (2 * products * heads * t * (t + 1) / 2 * d) as u64;
        g.throughput(Throughput::Elements(flop(2)));
        g.bench_function(format!("fused_fwd/{shape}"), |b| b.iter(|| q.causal_attention_fused(&k, &v, scale).unwrap()));
        g.bench_function(format!("reference_fwd/{shape}"), |b| {
            b.iter(|| q.causal_attention_reference(&k, &v, scale).unwrap())
        });
        g.throughput(Throughput::Elements(flop(4)));
        g.bench_function(format!("fused_bwd/{shape}"), |b| {
            b.iter(|| q.causal_attention_backward_fused(&k, &v, &out, &lse, &dout, scale).unwrap())
        });
        g.bench_function(format!("reference_bwd/{shape}"), |b| {
            b.iter(|| q.causal_attention_backward_reference(&k, &v, &dout, scale).unwrap())
        });
    }
    g.finish();
}

fn host_sampler(c: &mut Criterion) {
    use artist_engine::{Sampler, SamplingParams};
    let mut g = c.benchmark_group("host_sampler");
    let flat: Vec<f32> = f32s(&randn(&[VOCAB], 41)).iter().map(|x| x * 0.05).collect();
    let mut peaked: Vec<f32> = f32s(&randn(&[VOCAB], 42)).iter().map(|x| x * 2.0).collect();
    peaked[1234] = 30.0;
    g.throughput(Throughput::Elements(VOCAB as u64));
    for (name, row) in [("flat", &flat), ("peaked", &peaked)] {
        for (filter, top_p) in [("t1", 1.0), ("top_p0.9", 0.9)] {
            let mut s = Sampler::new(SamplingParams { top_p, seed: 5, ..Default::default() });
            g.bench_function(format!("{name}/{filter}"), |b| b.iter(|| s.sample(black_box(row))));
        }
    }
    g.finish();
}

/// Adds the reference copies of `n` f32 elements to `g`: into a preallocated buffer on one
/// thread and on all of them, and into a fresh allocation.
fn copy_refs(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, n: usize) {
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    g.throughput(Throughput::BytesDecimal((2 * n * F32) as u64));
    g.bench_function("copy_ref", |b| b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src))));
    // The same copy spread over the rayon threads, as the ops below are.
    g.bench_function("par_copy_ref", |b| {
        b.iter(|| {
            let chunks = black_box(&mut dst).par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16));
            chunks.for_each(|(d, s)| d.copy_from_slice(s))
        })
    });
    g.bench_function("alloc_copy_ref", |b| b.iter(|| black_box(&src).to_vec()));
}

fn mem_elementwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("mem_16M_f32");
    copy_refs(&mut g, BIG);
    let bytes = |n: usize| Throughput::BytesDecimal(n as u64);

    let x = randn(&[BIG_ROWS, BIG_COLS], 31);
    let y = randn(&[BIG_ROWS, BIG_COLS], 32);
    let bias = randn(&[BIG_COLS], 33);
    let square = x.reshape((4096, 4096)).unwrap();
    let x_bf16 = x.to_dtype(DType::BF16).unwrap();

    g.throughput(bytes(2 * BIG * F32));
    g.bench_function("copy_contiguous", |b| b.iter(|| x.copy().unwrap()));
    let xt = square.t().unwrap();
    g.bench_function("contiguous_of_transpose_4096x4096", |b| b.iter(|| xt.contiguous().unwrap()));

    g.throughput(bytes(3 * BIG * F32));
    g.bench_function("add", |b| b.iter(|| x.add(&y).unwrap()));
    g.bench_function("mul", |b| b.iter(|| x.mul(&y).unwrap()));
    g.bench_function("silu_mul", |b| b.iter(|| x.silu_mul(&y).unwrap()));

    g.throughput(bytes((2 * BIG + BIG_COLS) * F32));
    g.bench_function("add_bias_row_16384x1024", |b| b.iter(|| x.add(&bias).unwrap()));

    g.throughput(bytes(BIG * (F32 + BF16)));
    g.bench_function("cast_f32_to_bf16", |b| b.iter(|| x.to_dtype(DType::BF16).unwrap()));
    g.bench_function("cast_bf16_to_f32", |b| b.iter(|| x_bf16.to_dtype(DType::F32).unwrap()));

    g.throughput(bytes((BIG + BIG_ROWS) * F32));
    g.bench_function("sum_keepdim_last_16384x1024", |b| b.iter(|| x.sum_keepdim(-1).unwrap()));
    g.finish();
}

fn mem_softmax(c: &mut Criterion) {
    // Log-probabilities over the vocabulary, 32 rows of 151936 (19 MB).
    let (rows, n) = (32, 32 * VOCAB);
    let mut g = c.benchmark_group("mem_softmax_32x151936");
    copy_refs(&mut g, n);
    let x = randn(&[rows, VOCAB], 41).mul_scalar(4.0).unwrap();
    g.throughput(Throughput::BytesDecimal((2 * n * F32) as u64));
    g.bench_function("softmax", |b| b.iter(|| x.softmax(-1).unwrap()));
    g.bench_function("log_softmax", |b| b.iter(|| x.log_softmax(-1).unwrap()));
    g.bench_function("softmax_entropy", |b| b.iter(|| x.softmax_entropy().unwrap()));
    // The token logprobs' backward pass over the recomputed logits, in place (the values
    // it reads stay finite: each pass replaces them by gradients of a few units at most),
    // without and with an entropy bonus's gradient.
    let lse: Vec<f32> = (0..rows).map(|_| 12.0).collect();
    let (gl, gh, h) = (vec![0.5f32; rows], vec![0.25f32; rows], vec![3.0f32; rows]);
    let targets: Vec<u32> = (0..rows as u32).map(|k| k * 31 % VOCAB as u32).collect();
    let z = x.copy().unwrap();
    g.bench_function("token_logprob_grad", |b| {
        b.iter(|| z.token_logprob_grad_in_place(&gl, &lse, &targets, 1.0).unwrap())
    });
    g.bench_function("token_logprob_entropy_grad", |b| {
        b.iter(|| z.token_logprob_entropy_grad_in_place(&gl, &lse, &targets, 1.0, Some((&gh, &h))).unwrap())
    });
    g.finish();
}

fn mem_rows_4096x896(c: &mut Criterion) {
    // RMSNorm of 4096 token states, and the embedding lookup that makes them (15 MB out).
    let (rows, n) = (4096, 4096 * HIDDEN);
    let mut g = c.benchmark_group("mem_4096x896");
    copy_refs(&mut g, n);
    let x = randn(&[rows, HIDDEN], 51);
    let w = Tensor::rand_uniform(HIDDEN, 0.5, 1.5, DType::F32, Device::Cpu, &mut rng(52)).unwrap();
    g.throughput(Throughput::BytesDecimal(((2 * n + HIDDEN) * F32) as u64));
    g.bench_function("rms_norm", |b| b.iter(|| x.rms_norm(&w, 1e-6).unwrap()));

    let (e, _) = vocab_matrix();
    let ids: Vec<u32> = (0..rows as u32).map(|i| i.wrapping_mul(2_654_435_761) % VOCAB as u32).collect();
    let ids = Tensor::from_vec(ids, rows, Device::Cpu).unwrap();
    g.throughput(Throughput::BytesDecimal((2 * n * F32 + rows * 4) as u64));
    g.bench_function("embedding_index_select", |b| b.iter(|| e.index_select(&ids, 0).unwrap()));
    g.finish();
}

fn mem_rope(c: &mut Criterion) {
    // RoPE on the queries of a 2048-token sequence: [1, 2048, 14, 64] (7.3 MB).
    let (t, n) = (2048, 2048 * HEADS * HEAD_DIM);
    let mut g = c.benchmark_group("mem_rope_1x2048x14x64");
    copy_refs(&mut g, n);
    let x = randn(&[1, t, HEADS, HEAD_DIM], 61);
    let positions: Vec<u32> = (0..t as u32).collect();
    let (cos, sin) = rope_tables(&positions, HEAD_DIM, ROPE_THETA, Device::Cpu).unwrap();
    g.throughput(Throughput::BytesDecimal(((2 * n + 2 * t * HEAD_DIM / 2) * F32) as u64));
    g.bench_function("rope", |b| b.iter(|| x.rope(&cos, &sin).unwrap()));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = peak_cpu, matmul_mlp, matmul_lm_head, linear_rows_bf16, matmul_f32_bf16, matmul_attention_scores,
        causal_attention_cpu, host_sampler,
        mem_elementwise, mem_softmax, mem_rows_4096x896, mem_rope
}
// criterion_main!, with freed memory kept for reuse as the binaries do.
fn main() {
    artist_tensor::cpu::retain_freed_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
