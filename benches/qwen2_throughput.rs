//! Prefill and decode throughput of a Qwen2.5-0.5B-shaped model (or Qwen3-0.6B's, with
//! `--model qwen3-0.6b`) with random weights.
//!
//!     cargo bench --bench qwen2_throughput -- [--model qwen2.5-0.5b|qwen3-0.6b] [--dtype bf16|f32] [--matmul-dtype f32|bf16] [--prompt 512] [--decode 32]
//!
//! `--matmul-dtype bf16` multiplies bf16 weights by activations rounded to bf16 (summed in
//! f32), as PyTorch's bf16 model does and as `generate --matmul-dtype bf16` does; the
//! default widens the weights and multiplies in f32.
//!
//! Prints one JSON line; `scripts/bench_qwen2_cpu.py` runs it beside PyTorch on the same
//! shapes and thread count. Decode is memory-bound: every token reads every weight once,
//! so the bound printed beside it is (weight bytes) / (the read bandwidth of every thread,
//! measured here); the one-thread copy bandwidth of earlier figures is printed too. Each
//! step also reads the KV cache of every earlier position, which for wide-KV models (Qwen3's
//! 8 KV heads of 128) is no longer small beside the weights at a long prompt:
//! `decode_bound_with_kv_tokens_per_s` counts it too (the cache's own dtype, averaged over
//! the decode steps' context lengths).

use std::time::Instant;

use artist_model::{Qwen2, Qwen2Config, RandomWeights, Rows, SeqInput};
use artist_tensor::DType;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
}

/// Read + write bandwidth of a plain copy of 256 MiB, best of 5, in bytes/s.
fn copy_bandwidth() -> f64 {
    let n = 64 << 20;
    let src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (2 * n * 4) as f64 / best
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> BenchResult<()> {
    artist_tensor::cpu::retain_freed_memory();
    artist_tensor::cpu::on_worker(run)
}

fn run() -> BenchResult<()> {
    let dtype: DType = arg("--dtype", "bf16").parse()?;
    let prompt: usize = arg("--prompt", "512").parse()?;
    let decode: usize = arg("--decode", "32").parse()?;
    let matmul: DType = arg("--matmul-dtype", "f32").parse()?;
    let model_name = arg("--model", "qwen2.5-0.5b");
    let config = match model_name.as_str() {
        "qwen2.5-0.5b" => Qwen2Config::qwen2_5_0_5b(),
        "qwen3-0.6b" => Qwen2Config::qwen3_0_6b(),
        other => return Err(format!("--model {other:?}: expected qwen2.5-0.5b or qwen3-0.6b").into()),
    };
    let weight_bytes = config.num_parameters() * dtype.size_in_bytes();
    let t = Instant::now();
    let model = Qwen2::from_weights(config.clone(), &RandomWeights { dtype, std: 0.02, seed: 0 })?;
    let build_s = t.elapsed().as_secs_f64();
    let mut cache = model.new_cache(1, prompt + decode)?;
    cache.set_matmul_dtype(Some(matmul));
    let tokens: Vec<u32> = (0..prompt as u32).map(|i| (i * 7919) % 151_000).collect();

    let t = Instant::now();
    let logits = model.forward(&[SeqInput { slot: 0, tokens: &tokens }], &mut cache, Rows::Last)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut next = artist_engine::argmax(&logits.to_vec::<f32>()?);
    let t = Instant::now();
    for _ in 0..decode {
        let logits = model.forward(&[SeqInput { slot: 0, tokens: &[next] }], &mut cache, Rows::Last)?;
        next = artist_engine::argmax(&logits.to_vec::<f32>()?);
    }
    let decode_s = t.elapsed().as_secs_f64();
    let kv_bytes_per_position =
        config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * cache.dtype().size_in_bytes();
    // Step i attends over prompt + i + 1 positions.
    let mean_context = prompt as f64 + (decode as f64 + 1.0) / 2.0;
    let step_bytes = weight_bytes as f64 + kv_bytes_per_position as f64 * mean_context;
    let bw = copy_bandwidth();
    let read = artist_tensor::cpu::read_bandwidth_gbs() * 1e9;
    println!(
        "{}",
        serde_json::json!({
            "engine": "artist",
            "model": model_name,
            "dtype": dtype.to_string(),
            "matmul_dtype": matmul.to_string(),
            "threads": rayon::current_num_threads(),
            "prompt_tokens": prompt,
            "decode_tokens": decode,
            "build_s": build_s,
            "prefill_tokens_per_s": prompt as f64 / prefill_s,
            "decode_tokens_per_s": decode as f64 / decode_s,
            "weight_bytes": weight_bytes,
            "copy_bandwidth_gb_s": bw / 1e9,
            "copy_bound_tokens_per_s": bw / weight_bytes as f64,
            "read_bandwidth_gb_s": read / 1e9,
            "decode_bound_tokens_per_s": read / weight_bytes as f64,
            "kv_dtype": cache.dtype().to_string(),
            "kv_bytes_per_position": kv_bytes_per_position,
            "decode_bytes_per_token": step_bytes,
            "decode_bound_with_kv_tokens_per_s": read / step_bytes,
        })
    );
    Ok(())
}
