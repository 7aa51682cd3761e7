//! One supervised training step (forward, backward, AdamW) of a small Qwen2 shape with
//! random f32 weights: 8 layers, hidden 512, 8 heads over 2 KV heads, MLP 1408, vocab
//! 32768 (56M parameters), a batch of 4 sequences of 128 tokens, loss on every token.
//!
//!     cargo bench --bench train_step -- [--batch 4] [--seq 128] [--steps 3] [--checkpointing]
//!         [--ranks N] [--device cpu|cuda[:N]] [--model small|1.5b] [--weights f32|bf16]
//!         [--matmul-dtype f32|bf16] [--attention-dtype f32|bf16] [--lora-rank R]
//!
//! `--model 1.5b` is the Qwen2.5-1.5B shape (1.54B parameters, tied embeddings), for a GPU;
//! `--weights bf16` keeps the parameters in bf16 (AdamW's f32 masters beside them), and the
//! two dtypes choose the products' and attention's precision as the trainers'
//! `matmul_dtype` and `attention_dtype` do. On a GPU each phase ends with a synchronize, and
//! the JSON adds the device memory's peak. `--lora-rank R` trains LoRA adapters of rank R
//! (alpha 2R) on all seven projections instead of every weight.
//!
//! With `--ranks N` (N > 1) it runs N in-process data-parallel ranks instead, each with
//! `--batch` sequences, and times a step with the gradient all-reduce after backward and
//! with it overlapped with backward (`all_reduce_gradients_overlapped`), plus the
//! all-reduce of a step's gradients alone; one JSON line from rank 0.
//!
//! Prints one JSON line; `scripts/bench_train_step.py` runs it beside PyTorch on the same
//! shape, batch and thread count. Model FLOPs per step are counted as 6 x parameters x
//! tokens (matrix products, forward and backward) plus attention's 6 x 2 x layers x
//! sum(t^2/2) x hidden; with LoRA, 4 x the frozen parameters (no weight gradients) and 6 x
//! the adapters'.

use std::time::Instant;

use artist_autograd::{Ctx, Tape};
use artist_dist::{Communicator, InProcess, Reduce, all_reduce_gradients_overlapped, all_reduce_gradients_sum};
use artist_model::{LoraSpec, Qwen2, Qwen2Config, RandomWeights};
use artist_optim::{AdamW, AdamWConfig, clip_grad_norm};
use artist_tensor::{DType, Device, cuda};
use artist_train::data::Example;
use artist_train::sft::sft_loss;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
}

pub fn small_config() -> Qwen2Config {
    Qwen2Config {
        vocab_size: 32_768,
        hidden_size: 512,
        intermediate_size: 1408,
        num_hidden_layers: 8,
        num_attention_heads: 8,
        num_key_value_heads: 2,
        head_dim: 64,
        tie_word_embeddings: false,
        dtype: Some("float32".into()),
        ..Qwen2Config::qwen2_5_0_5b()
    }
}

/// The process's peak resident memory (VmHWM), MiB.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A dtype flag: `f32` (none: the default precision) or `bf16`.
fn dtype_arg(name: &str) -> BenchResult<Option<DType>> {
    match arg(name, "f32").as_str() {
        "f32" => Ok(None),
        "bf16" => Ok(Some(DType::BF16)),
        other => Err(format!("{name} {other}: expected f32 or bf16").into()),
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> BenchResult<()> {
    artist_tensor::cpu::retain_freed_memory();
    // In-process ranks are threads of their own, each injecting its ops into the pool; a
    // worker waiting on them would leave the pool a thread short.
    if arg("--ranks", "1") != "1" { run() } else { artist_tensor::cpu::on_worker(run) }
}

fn run() -> BenchResult<()> {
    let batch: usize = arg("--batch", "4").parse()?;
    let seq: usize = arg("--seq", "128").parse()?;
    let steps: usize = arg("--steps", "3").parse()?;
    let checkpointing = std::env::args().any(|a| a == "--checkpointing");
    let ranks: usize = arg("--ranks", "1").parse()?;
    if ranks > 1 {
        return data_parallel(ranks, batch, seq, steps, checkpointing);
    }
    let device = Device::parse(&arg("--device", "cpu"))?;
    let config = match arg("--model", "small").as_str() {
        "small" => small_config(),
        "1.5b" => Qwen2Config { tie_word_embeddings: true, ..Qwen2Config::qwen2_5_1_5b() },
        other => return Err(format!("--model {other}: expected small or 1.5b").into()),
    };
    let weights = dtype_arg("--weights")?.unwrap_or(DType::F32);
    let (matmul_dtype, attention_dtype) = (dtype_arg("--matmul-dtype")?, dtype_arg("--attention-dtype")?);
    // Queued GPU work has finished when a phase's clock stops.
    let sync = || -> BenchResult<()> {
        if let Device::Cuda(n) = device {
            cuda::synchronize(n)?;
        }
        Ok(())
    };
    let mut model =
        Qwen2::from_weights_on(config.clone(), &RandomWeights { dtype: weights, std: 0.02, seed: 0 }, device)?;
    let lora_rank: usize = arg("--lora-rank", "0").parse()?;
    if lora_rank > 0 {
        let spec = LoraSpec { rank: lora_rank, alpha: 2.0 * lora_rank as f64, ..LoraSpec::default() };
        model.add_lora(&spec, 0)?;
    }
    let examples = examples(&config, batch, seq, 0);
    let refs: Vec<&Example> = examples.iter().collect();
    let n_targets: usize = examples.iter().map(|e| e.targets()).sum();
    let params = model.params();
    let mut opt = AdamW::new(&params, AdamWConfig::default())?;
    let mut times = Vec::new();
    let mut phases = (0.0, 0.0, 0.0);
    let mut loss = 0.0;
    for i in 0..steps + 1 {
        sync()?;
        let t0 = Instant::now();
        let tape = Tape::new();
        let ctx = Ctx::training(&tape)
            .with_checkpointing(checkpointing)
            .with_matmul_dtype(matmul_dtype)
            .with_attention_dtype(attention_dtype);
        let (l, _) = sft_loss(&model, &ctx, &refs, n_targets)?;
        loss = l.to_scalar()?;
        let t1 = Instant::now();
        let mut grads = tape.backward(&l)?;
        sync()?;
        let t2 = Instant::now();
        clip_grad_norm(&mut grads, 1.0)?;
        opt.step(&grads, 1e-4)?;
        sync()?;
        let t3 = Instant::now();
        if i > 0 {
            // The first step warms up allocations and thread pools.
            times.push((t3 - t0).as_secs_f64());
            phases.0 += (t1 - t0).as_secs_f64() / steps as f64;
            phases.1 += (t2 - t1).as_secs_f64() / steps as f64;
            phases.2 += (t3 - t2).as_secs_f64() / steps as f64;
        }
    }
    times.sort_by(f64::total_cmp);
    let step_s = times[times.len() / 2];
    let tokens = batch * seq;
    let c = &config;
    let attn = 6.0 * 2.0 * c.num_hidden_layers as f64 * batch as f64 * (seq * seq) as f64 / 2.0
        * (c.num_attention_heads * c.head_dim) as f64;
    // With LoRA the base weights are frozen: their forward and input-gradient products
    // only (4 x parameters x tokens), the adapters' all three (6 x theirs).
    let trainable = params.iter().filter(|p| p.trainable()).map(|p| p.value().elem_count()).sum::<usize>();
    let products = if lora_rank > 0 {
        4.0 * c.num_parameters() as f64 + 6.0 * trainable as f64
    } else {
        6.0 * c.num_parameters() as f64
    };
    let flops = products * tokens as f64 + attn;
    println!(
        "{}",
        serde_json::json!({
            "impl": "artist",
            "device": device.to_string(),
            "threads": rayon::current_num_threads(),
            "params": c.num_parameters(),
            "batch": batch, "seq": seq, "tokens": tokens,
            "weights": weights.to_string().to_lowercase(),
            "matmul_dtype": matmul_dtype.unwrap_or(DType::F32).to_string().to_lowercase(),
            "attention_dtype": attention_dtype.unwrap_or(DType::F32).to_string().to_lowercase(),
            "peak_device_mib": match device {
                Device::Cuda(n) => Some(cuda::memory_stats(n)?.peak_allocated as f64 / (1 << 20) as f64),
                Device::Cpu => None,
            },
            "checkpointing": checkpointing,
            "lora_rank": lora_rank,
            "trainable_params": trainable,
            "step_s": step_s,
            "forward_s": phases.0, "backward_s": phases.1, "optimizer_s": phases.2,
            "tokens_per_s": tokens as f64 / step_s,
            "gflops": flops / step_s / 1e9,
            "loss": loss,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}

fn examples(config: &Qwen2Config, batch: usize, seq: usize, salt: usize) -> Vec<Example> {
    (0..batch)
        .map(|b| Example {
            ids: (0..seq).map(|i| ((i * 7919 + (b + salt) * 104_729) % config.vocab_size) as u32).collect(),
            mask: (0..seq).map(|i| (i > 0) as u8).collect(),
            line: b + 1,
        })
        .collect()
}

/// Seconds of one data-parallel step on this rank: forward, backward and the all-reduce
/// (after backward, or during it), clipping and AdamW.
fn dp_step(
    comm: &mut InProcess,
    model: &Qwen2,
    opt: &mut AdamW,
    refs: &[&Example],
    n_targets: usize,
    overlap: bool,
    checkpointing: bool,
) -> Result<(f64, (usize, usize)), Box<dyn std::error::Error + Send + Sync>> {
    let params = model.params();
    comm.barrier()?;
    let t0 = Instant::now();
    let tape = Tape::new();
    let ctx = Ctx::training(&tape).with_checkpointing(checkpointing);
    let (l, _) = sft_loss(model, &ctx, refs, n_targets)?;
    let mut grads = artist_autograd::Gradients::default();
    let mut early = (0, 0);
    if overlap {
        let stats = all_reduce_gradients_overlapped(
            comm,
            &params,
            &mut grads,
            artist_dist::DEFAULT_BUCKET_ELEMS,
            Reduce::Sum,
            |g, ready| tape.backward_with(&l, g, ready).map_err(artist_dist::Error::from),
        )?;
        early = (stats.during_backward, stats.buckets);
    } else {
        grads = tape.backward(&l)?;
        all_reduce_gradients_sum(comm, &params, &mut grads, artist_dist::DEFAULT_BUCKET_ELEMS)?;
    }
    clip_grad_norm(&mut grads, 1.0)?;
    opt.step(&grads, 1e-4)?;
    Ok((t0.elapsed().as_secs_f64(), early))
}

fn data_parallel(ranks: usize, batch: usize, seq: usize, steps: usize, checkpointing: bool) -> BenchResult<()> {
    let config = small_config();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::group(ranks)
            .into_iter()
            .map(|mut comm| {
                let config = config.clone();
                s.spawn(move || -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
                    let model =
                        Qwen2::from_weights(config.clone(), &RandomWeights { dtype: DType::F32, std: 0.02, seed: 0 })?;
                    let mine = examples(&config, batch, seq, comm.rank() * batch);
                    let refs: Vec<&Example> = mine.iter().collect();
                    let n_targets = ranks * mine.iter().map(|e| e.targets()).sum::<usize>();
                    let params = model.params();
                    let mut opt = AdamW::new(&params, AdamWConfig::default())?;
                    let median = |mut v: Vec<f64>| {
                        v.sort_by(f64::total_cmp);
                        v[v.len() / 2]
                    };
                    let (mut after, mut during, mut early) = (Vec::new(), Vec::new(), (0, 0));
                    for i in 0..steps + 1 {
                        // Alternate, so that drift in the machine's speed hits both alike.
                        let (a, _) = dp_step(&mut comm, &model, &mut opt, &refs, n_targets, false, checkpointing)?;
                        let (d, e) = dp_step(&mut comm, &model, &mut opt, &refs, n_targets, true, checkpointing)?;
                        if i > 0 {
                            after.push(a);
                            during.push(d);
                            early = e;
                        }
                    }
                    // The all-reduce alone, on a step's worth of gradients.
                    let tape = Tape::new();
                    let (l, _) = sft_loss(&model, &Ctx::training(&tape), &refs, n_targets)?;
                    let mut grads = tape.backward(&l)?;
                    let mut alone = Vec::new();
                    for _ in 0..steps {
                        comm.barrier()?;
                        let t = Instant::now();
                        all_reduce_gradients_sum(&mut comm, &params, &mut grads, artist_dist::DEFAULT_BUCKET_ELEMS)?;
                        alone.push(t.elapsed().as_secs_f64());
                    }
                    let (after, during, alone) = (median(after), median(during), median(alone));
                    Ok(serde_json::json!({
                        "impl": "artist", "communicator": "in-process", "ranks": ranks,
                        "threads": rayon::current_num_threads(),
                        "params": config.num_parameters(), "batch_per_rank": batch, "seq": seq,
                        "checkpointing": checkpointing,
                        "step_allreduce_after_s": after, "step_allreduce_overlapped_s": during,
                        "allreduce_alone_s": alone,
                        "hidden_s": after - during, "hidden_fraction": (after - during) / alone,
                        "buckets": early.1, "buckets_sent_during_backward": early.0,
                    }))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect::<Vec<_>>()
    });
    for r in results {
        let v = r.map_err(|e| e.to_string())?;
        if v.is_object() {
            println!("{v}");
            break;
        }
    }
    Ok(())
}
