//! GPU throughput of the CUDA backend's kernels at Qwen2.5-7B shapes (hidden 3584,
//! intermediate 18944, 28 query heads and 4 KV heads of 128, vocab 152064; 4096 tokens).
//!
//!     cargo bench --bench cuda_kernels                  # on a machine with an NVIDIA GPU
//!     python3 scripts/bench_cuda.py                     # the same, beside PyTorch, as a table
//!
//! Groups `mem_*` declare `Throughput::BytesDecimal(bytes read + bytes written)`, each
//! operand counted once, so criterion's GB/s compares with the copy in `mem_copy` and the
//! GPU's memory bandwidth (H100 SXM 3.35 TB/s, H200 4.8 TB/s). Groups `flops_*` declare
//! `Throughput::Elements(FLOPs)`, so "Gelem/s" reads as GFLOP/s (H100/H200 dense bf16:
//! 989 TFLOP/s). Each sample queues its iterations and waits once for the GPU
//! (`iter_custom`), so launch latency is counted only as the GPU sees it.
//!
//! `mem/paged_decode_*` times one decode step's attention over a paged KV cache (32 sequences
//! of 4096 positions): the heads grouped by KV head and one warp per head. `mem/gemv_1p5b_*`
//! times batch-1 decode's products at Qwen2.5-1.5B shapes (`ARTIST_GEMV_SPLIT=1` turns off
//! the split of k over several warps, for the ratio). `mem/sample_*` times the GPU sampler
//! over a vocabulary row, 1 and 64 rows, with and without top-p.
//!
//! Without a GPU it says so and exits; `ARTIST_CUDA=emulator` runs it on the CPU emulator at
//! tiny sizes (a smoke test of the harness, not a measurement).

use std::hint::black_box;
use std::time::{Duration, Instant};

use artist::tensor::{AdamWScalars, DType, Device, SamplePick, Tensor, cuda, rope_tables};
use criterion::{Criterion, Throughput, criterion_group};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Sizes: Qwen2.5-7B on a GPU, divided down on the emulator.
struct Sizes {
    tokens: usize,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    logit_rows: usize,
    adam: usize,
    attn_len: usize,
    /// A decode step's sequences and each one's context, for paged attention.
    decode_rows: usize,
    decode_len: usize,
}

fn sizes() -> Sizes {
    if cuda::backend() == cuda::Backend::Emulator {
        Sizes {
            tokens: 64,
            hidden: 256,
            intermediate: 512,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            vocab: 2048,
            logit_rows: 4,
            adam: 1 << 16,
            attn_len: 64,
            decode_rows: 4,
            decode_len: 64,
        }
    } else {
        Sizes {
            tokens: 4096,
            hidden: 3584,
            intermediate: 18944,
            heads: 28,
            kv_heads: 4,
            head_dim: 128,
            vocab: 152_064,
            logit_rows: 1024,
            adam: 1 << 28,
            attn_len: 4096,
            decode_rows: 32,
            decode_len: 4096,
        }
    }
}

fn device() -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("cuda_kernels: no GPU to measure ({e}); run on a machine with an NVIDIA GPU");
            None
        }
    }
}

fn randn(dims: &[usize], dtype: DType, dev: Device, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Tensor::randn(dims.to_vec(), 0.0, 1.0, DType::F32, Device::Cpu, &mut rng)
        .and_then(|t| t.to_dtype(dtype))
        .and_then(|t| t.to_device(dev))
        .expect("input tensor")
}

/// Times `iters` runs of `f` queued back to back, waiting for the GPU once at the end.
fn timed(iters: u64, f: &mut dyn FnMut()) -> Duration {
    cuda::synchronize(0).expect("synchronize");
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    cuda::synchronize(0).expect("synchronize");
    t.elapsed()
}

fn bench_mem(c: &mut Criterion, dev: Device) {
    let s = sizes();
    let (t, h, i) = (s.tokens, s.hidden, s.intermediate);
    let bf = DType::BF16;
    let mut g = c.benchmark_group("mem");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));

    let x = randn(&[t * 16, h], bf, dev, 1); // 470 MB bf16 on a GPU
    g.throughput(Throughput::BytesDecimal((2 * x.elem_count() * 2) as u64));
    g.bench_function("copy_bf16", |b| b.iter_custom(|n| timed(n, &mut || drop(black_box(x.copy().unwrap())))));

    let (a, bb) = (randn(&[t, h], bf, dev, 2), randn(&[t, h], bf, dev, 3));
    g.throughput(Throughput::BytesDecimal((3 * t * h * 2) as u64));
    g.bench_function("add_bf16", |b| b.iter_custom(|n| timed(n, &mut || drop(black_box(a.add(&bb).unwrap())))));

    let af = randn(&[t, h], DType::F32, dev, 4);
    g.throughput(Throughput::BytesDecimal((t * h * 6) as u64));
    g.bench_function("cast_f32_bf16", |b| {
        b.iter_custom(|n| timed(n, &mut || drop(black_box(af.to_dtype(bf).unwrap()))))
    });

    let w = randn(&[h], bf, dev, 5);
    g.throughput(Throughput::BytesDecimal((2 * t * h * 2 + h * 2) as u64));
    g.bench_function("rms_norm_bf16", |b| {
        b.iter_custom(|n| timed(n, &mut || drop(black_box(a.rms_norm(&w, 1e-6).unwrap()))))
    });

    let q = randn(&[1, t, s.heads, s.head_dim], bf, dev, 6);
    let pos: Vec<u32> = (0..t as u32).collect();
    let (cos, sin) = rope_tables(&pos, s.head_dim, 1e6, dev).unwrap();
    g.throughput(Throughput::BytesDecimal((2 * q.elem_count() * 2 + 2 * cos.elem_count() * 4) as u64));
    g.bench_function("rope_bf16", |b| {
        b.iter_custom(|n| timed(n, &mut || drop(black_box(q.rope(&cos, &sin).unwrap()))))
    });

    // The gate and up halves of a fused projection's output, as the model reads them.
    let gu = randn(&[t, 2 * i], bf, dev, 7);
    let (gate, up) = (gu.narrow(1, 0, i).unwrap(), gu.narrow(1, i, i).unwrap());
    g.throughput(Throughput::BytesDecimal((3 * t * i * 2) as u64));
    g.bench_function("silu_mul_bf16", |b| {
        b.iter_custom(|n| timed(n, &mut || drop(black_box(gate.silu_mul(&up).unwrap()))))
    });

    let logits = randn(&[s.logit_rows, s.vocab], DType::F32, dev, 8);
    g.throughput(Throughput::BytesDecimal((2 * logits.elem_count() * 4) as u64));
    g.bench_function("softmax_f32_vocab", |b| {
        b.iter_custom(|n| timed(n, &mut || drop(black_box(logits.softmax(-1).unwrap()))))
    });
    g.bench_function("log_softmax_f32_vocab", |b| {
        b.iter_custom(|n| timed(n, &mut || drop(black_box(logits.log_softmax(-1).unwrap()))))
    });
    // One read of the logits, a float per row back (the GRPO loss's entropy metric).
    g.throughput(Throughput::BytesDecimal((logits.elem_count() * 4) as u64));
    g.bench_function("softmax_entropy_f32_vocab", |b| {
        b.iter_custom(|n| timed(n, &mut || drop(black_box(logits.softmax_entropy().unwrap()))))
    });

    let table = randn(&[s.vocab, h], bf, dev, 9);
    let ids = Tensor::from_vec((0..t as u32).map(|k| (k * 7919) % s.vocab as u32).collect(), t, Device::Cpu).unwrap();
    g.throughput(Throughput::BytesDecimal((2 * t * h * 2 + t * 4) as u64));
    g.bench_function("embedding_bf16", |b| {
        b.iter_custom(|n| timed(n, &mut || drop(black_box(Tensor::embedding(&ids, &table).unwrap()))))
    });

    let rows = s.logit_rows;
    let gvals = vec![0.5f32; rows];
    let lse = vec![10.0f32; rows];
    let targets: Vec<u32> = (0..rows as u32).map(|k| k * 31 % s.vocab as u32).collect();
    let z = randn(&[rows, s.vocab], DType::F32, dev, 10);
    g.throughput(Throughput::BytesDecimal((2 * z.elem_count() * 4) as u64));
    g.bench_function("token_logprob_grad_f32", |b| {
        b.iter_custom(|n| timed(n, &mut || z.token_logprob_grad_in_place(&gvals, &lse, &targets, 1.0).unwrap()))
    });
    // With an entropy bonus: the same one read and one write of the logits.
    let (gh, h) = (vec![0.25f32; rows], vec![3.0f32; rows]);
    g.bench_function("token_logprob_entropy_grad_f32", |b| {
        b.iter_custom(|n| {
            timed(n, &mut || {
                z.token_logprob_entropy_grad_in_place(&gvals, &lse, &targets, 1.0, Some((&gh, &h))).unwrap()
            })
        })
    });

    let n = s.adam;
    let (p, m, v, gr) = (
        randn(&[n], DType::F32, dev, 11),
        Tensor::zeros(n, DType::F32, dev).unwrap(),
        Tensor::zeros(n, DType::F32, dev).unwrap(),
        randn(&[n], DType::F32, dev, 12),
    );
    let sc = AdamWScalars {
        decay: 1.0 - 1e-6,
        beta1_complement: 0.1,
        beta2: 0.999,
        beta2_complement: 1e-3,
        eps: 1e-8,
        bias_correction2_sqrt: 0.03,
        step_size: -1e-5,
    };
    g.throughput(Throughput::BytesDecimal((n * 4 * 7) as u64)); // read p m v g, write p m v
    g.bench_function("adamw_f32", |b| b.iter_custom(|k| timed(k, &mut || p.adamw_step(&m, &v, &gr, &sc).unwrap())));
    g.throughput(Throughput::BytesDecimal((n * 4) as u64));
    g.bench_function("sum_squares_f32", |b| {
        b.iter_custom(|k| timed(k, &mut || _ = black_box(gr.sum_squares_f64().unwrap())))
    });
    bench_paged_decode(&mut g, dev);
    bench_gemv(&mut g, dev);
    bench_sampling(&mut g, dev);
    g.finish();
}

/// One decode step's draws from f32 logits on the GPU (`Tensor::sample_rows`, the rollout
/// engine's sampler: ids and logprobs back on the host), at temperature 1 alone and with
/// top-p 0.95, for 1 row (batch-1 decode) and 64. Bytes: the logits read once, the floor
/// that any sampler pays. PyTorch's peers: softmax, `torch.multinomial` and the logprob
/// gather; with top-p, a descending sort, cumulative sum and mask first (as vLLM's and
/// transformers' top-p do).
fn bench_sampling(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, dev: Device) {
    let vocab = sizes().vocab;
    for rows in [1usize, 64] {
        let logits = randn(&[rows, vocab], DType::F32, dev, 50).affine(2.5, 0.0).unwrap();
        g.throughput(Throughput::BytesDecimal((rows * vocab * 4) as u64));
        for (name, top_p) in [("temperature", 1.0f32), ("top_p", 0.95)] {
            let picks: Vec<SamplePick> = (0..rows)
                .map(|row| SamplePick { row, temperature: 1.0, top_k: 0, top_p, min_p: 0.0, u: 0.37 })
                .collect();
            g.bench_function(format!("sample_{name}_{rows}"), |b| {
                b.iter_custom(|it| timed(it, &mut || drop(black_box(logits.sample_rows(&picks).unwrap()))))
            });
        }
    }
}

/// Batch-1 decode products of a Qwen2.5-1.5B shape (hidden 1536, intermediate 8960, 12 query
/// and 2 KV heads of 128): f32 activations against a bf16 weight, the weight read once
/// (kernels/gemv.cu). Bytes: the weight, the activations and the outputs. The sum of the
/// four per layer is what batch-1 decode's bandwidth bound rests on. PyTorch's peer:
/// `F.linear` of a bf16 row (cuBLAS's own gemv).
fn bench_gemv(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, dev: Device) {
    let div = if cuda::backend() == cuda::Backend::Emulator { 8 } else { 1 };
    let (h, i, qkv) = (1536 / div, 8960 / div, (12 + 2 * 2) * 128 / div);
    for (name, k, n) in [("qkv", h, qkv), ("o", h, h), ("gate_up", h, 2 * i), ("down", i, h)] {
        let x = randn(&[1, k], DType::F32, dev, 40);
        let w = randn(&[n, k], DType::BF16, dev, 41);
        g.throughput(Throughput::BytesDecimal((n * k * 2 + k * 4 + n * 4) as u64));
        g.bench_function(format!("gemv_1p5b_{name}"), |b| {
            b.iter_custom(|it| timed(it, &mut || drop(black_box(x.linear(&w, None).unwrap()))))
        });
    }
}

/// Attention of one decode step over a paged KV cache: `decode_rows` sequences of
/// `decode_len` positions in blocks of 16, each row's keys split as the model splits them
/// (one share per 128 positions, at most 32). Bytes: the keys and values read once, the
/// queries and outputs. bf16 queries and cache (PyTorch's peer: SDPA over a dense cache)
/// and f32 queries over a bf16 cache (rollouts' `kv_cache_dtype = "bf16"`), each with
/// the heads grouped by KV head (the default) and one warp per head (`_per_head`).
fn bench_paged_decode(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, dev: Device) {
    let s = sizes();
    let (rows, len, bs, d) = (s.decode_rows, s.decode_len, 16usize, s.head_dim);
    let per_seq = len.div_ceil(bs);
    let tables: Vec<Vec<u32>> =
        (0..rows).map(|r| ((r * per_seq) as u32..((r + 1) * per_seq) as u32).collect()).collect();
    // Each sequence holds len - 1 positions and decodes one.
    let spec: Vec<(usize, usize, &[u32])> = tables.iter().map(|t| (len - 1, 1, &t[..])).collect();
    let splits = (len / 128).clamp(1, 32);
    let scale = (d as f32).powf(-0.5);
    for (name, qt, ct) in [("bf16", DType::BF16, DType::BF16), ("f32_bf16kv", DType::F32, DType::BF16)] {
        let q = randn(&[rows, s.heads, d], qt, dev, 30);
        let kp = randn(&[rows * per_seq, bs, s.kv_heads, d], ct, dev, 31);
        let vp = randn(&[rows * per_seq, bs, s.kv_heads, d], ct, dev, 32);
        let kv_bytes = 2 * rows * len * s.kv_heads * d * ct.size_in_bytes();
        g.throughput(Throughput::BytesDecimal((kv_bytes + 2 * q.elem_count() * qt.size_in_bytes()) as u64));
        for grouped in [true, false] {
            let batch = artist::tensor::PagedBatch::new(&spec, bs, dev)
                .expect("decode batch")
                .with_key_splits(splits)
                .with_grouped_heads(grouped);
            let label = format!("paged_decode_{name}{}", if grouped { "" } else { "_per_head" });
            g.bench_function(label, |b| {
                b.iter_custom(|n| {
                    timed(n, &mut || drop(black_box(q.paged_attention_batch(&kp, &vp, &batch, scale).unwrap())))
                })
            });
        }
    }
}

fn bench_flops(c: &mut Criterion, dev: Device) {
    let s = sizes();
    let (t, h, i) = (s.tokens, s.hidden, s.intermediate);
    let mut g = c.benchmark_group("flops");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let qkv = (s.heads + 2 * s.kv_heads) * s.head_dim;
    for (name, (m, k, n)) in [("linear_qkv", (t, h, qkv)), ("linear_up", (t, h, 2 * i)), ("linear_down", (t, i, h))] {
        let x = randn(&[m, k], DType::BF16, dev, 20);
        let w = randn(&[n, k], DType::BF16, dev, 21);
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(format!("{name}_bf16"), |b| {
            b.iter_custom(|it| timed(it, &mut || drop(black_box(x.linear(&w, None).unwrap()))))
        });
    }
    // The model's products: f32 activations against bf16 weights, widened for an f32 GEMM
    // (the default, CPU-exact) and rounded for a bf16 GEMM into f32 (`linear_in`,
    // matmul_dtype = "bf16"; the rounding of the activations is timed with it).
    for (name, (m, k, n)) in [("linear_up", (t, h, 2 * i)), ("linear_down", (t, i, h))] {
        let x = randn(&[m, k], DType::F32, dev, 28);
        let w = randn(&[n, k], DType::BF16, dev, 29);
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(format!("{name}_f32x_bf16w_widened"), |b| {
            b.iter_custom(|it| timed(it, &mut || drop(black_box(x.linear(&w, None).unwrap()))))
        });
        g.bench_function(format!("{name}_f32x_bf16w_linear_in"), |b| {
            b.iter_custom(|it| timed(it, &mut || drop(black_box(x.linear_in(&w, None, DType::BF16).unwrap()))))
        });
    }
    // f32 without TF32, the CPU-exact path.
    let (m, k, n) = (t, h, h);
    let (x, w) = (randn(&[m, k], DType::F32, dev, 22), randn(&[n, k], DType::F32, dev, 23));
    g.throughput(Throughput::Elements((2 * m * n * k) as u64));
    g.bench_function("linear_square_f32", |b| {
        b.iter_custom(|it| timed(it, &mut || drop(black_box(x.linear(&w, None).unwrap()))))
    });

    // Causal attention of one sequence of attn_len tokens: 2 t^2 d heads multiply-adds for
    // the scores and as many for the values, halved by the mask.
    let (len, d) = (s.attn_len, s.head_dim);
    let q = randn(&[len, s.heads, d], DType::BF16, dev, 24);
    let kk = randn(&[len, s.kv_heads, d], DType::BF16, dev, 25);
    let vv = randn(&[len, s.kv_heads, d], DType::BF16, dev, 26);
    let scale = (d as f32).powf(-0.5);
    let fwd_flops = 2 * len * len * d * s.heads; // (2 products x 2 FLOPs) x half the matrix
    g.throughput(Throughput::Elements(fwd_flops as u64));
    g.bench_function("attention_fwd_bf16", |b| {
        b.iter_custom(|it| timed(it, &mut || drop(black_box(q.causal_attention(&kk, &vv, scale).unwrap()))))
    });
    // The same on Hopper's warpgroup MMA, where kernels are built for sm_90a (opt-in until
    // timed: ARTIST_ATTN_WGMMA=1 makes it the default forward).
    if cuda::info(0).is_ok_and(|i| i.wgmma && !i.emulated) {
        cuda::set_thread_wgmma_attention(Some(true));
        g.bench_function("attention_fwd_wgmma_bf16", |b| {
            b.iter_custom(|it| timed(it, &mut || drop(black_box(q.causal_attention(&kk, &vv, scale).unwrap()))))
        });
        cuda::set_thread_wgmma_attention(None);
    }
    let (out, lse) = q.causal_attention(&kk, &vv, scale).unwrap();
    let dout = randn(&[len, s.heads, d], DType::F32, dev, 27);
    g.throughput(Throughput::Elements((2 * fwd_flops + fwd_flops / 2 * 3) as u64)); // recompute + 4 products
    let mut bwd = || drop(black_box(q.causal_attention_backward(&kk, &vv, &out, &lse, &dout, scale).unwrap()));
    g.bench_function("attention_bwd_bf16", |b| b.iter_custom(|it| timed(it, &mut bwd)));
    // Its dQ pass on Hopper's warpgroup MMA (opt-in as the forward above).
    if cuda::info(0).is_ok_and(|i| i.wgmma && !i.emulated) {
        cuda::set_thread_wgmma_attention(Some(true));
        g.bench_function("attention_bwd_wgmma_bf16", |b| b.iter_custom(|it| timed(it, &mut bwd)));
        cuda::set_thread_wgmma_attention(None);
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let Some(dev) = device() else { return };
    if let Ok(info) = cuda::info(0) {
        eprintln!(
            "cuda_kernels on {} (sm_{}{}; {})",
            info.name, info.compute_capability.0, info.compute_capability.1, info.toolchain
        );
    }
    bench_mem(c, dev);
    bench_flops(c, dev);
}

criterion_group!(group, benches);

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
}
