//! Rollout throughput of a GRPO-shaped workload: B prompts x G rollouts of a Qwen2.5-shaped
//! model (random bf16 weights), a prompt of P tokens, up to N new tokens each, with and
//! without sharing each prompt's prefill (and its KV blocks) across its group; then
//! batch-1 decode against the memory-bandwidth bound (every weight read once per token).
//!
//!     cargo bench --bench rollout -- [--device cpu|cuda[:N]] [--model 0.5b|1.5b|qwen3-0.6b]
//!         [--prompts 1] [--group 8] [--prompt-len 256] [--new 32] [--tool-ms 0]
//!         [--decode 32] [--bandwidth-gbs B] [--matmul-dtype f32|bf16] [--kv-dtype f32|bf16]
//!         [--lora-rank R]
//!
//! `--matmul-dtype bf16` runs the projections as bf16 products into f32
//! (`RolloutConfig::matmul_dtype`: tensor-core GEMMs for prefills and decode batches), as
//! vLLM serves a bf16 model; the default f32 widens the bf16 weights for each product.
//! `--kv-dtype bf16` stores the KV cache as bf16 (`RolloutConfig::kv_cache_dtype`): half the
//! memory (`kv_peak_mib`) and half the bytes each decode step reads. `--lora-rank R` gives
//! every projection LoRA adapters of rank R, applied unmerged as a LoRA run's rollouts are.
//!
//! With `--tool-ms T`, every rollout is steered (a logit bonus, the model's own numbers
//! otherwise) to open with a `<python>...</python>` call that a stand-in tool answers after
//! T ms, so the time the engine spends waiting on tools is measured too. Prints one JSON
//! line per setting; `scripts/bench_rollout_hf.py` runs transformers' `generate` on the
//! same shapes. The bandwidth bound uses `--bandwidth-gbs`, or the GPU's datasheet figure
//! when its name is known (H100 SXM 3,350 GB/s, H200 4,800 GB/s), or on the CPU a read of
//! 1 GiB on every thread measured first (`bandwidth_source` says which). Last, the attention of
//! one prompt's prefill alone, in TFLOP/s (f32, and bf16 on a GPU).

use std::sync::Arc;
use std::time::Duration;

use artist_engine::{Logits, RolloutConfig, RolloutEngine, Sampler, SamplingParams, SteeredPolicy};
use artist_model::{Qwen2, Qwen2Config, RandomWeights, Rows, SeqInput};
use artist_tensor::{DType, Device};
use artist_tokenizer::Tokenizer;
use artist_tools::{Tool, ToolCall, ToolResult};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
}

/// Answers after a fixed delay, as a sandboxed interpreter would.
struct SleepTool(Duration);

impl Tool for SleepTool {
    fn name(&self) -> &str {
        "python"
    }
    fn tag(&self) -> &str {
        "python"
    }
    fn execute(&self, _call: &ToolCall) -> ToolResult {
        std::thread::sleep(self.0);
        ToolResult { output: "2".into(), success: true, elapsed_ms: self.0.as_millis() as u64, ..Default::default() }
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> BenchResult<()> {
    artist_tensor::cpu::retain_freed_memory();
    artist_tensor::cpu::on_worker(run)
}

fn run() -> BenchResult<()> {
    let prompts: usize = arg("--prompts", "1").parse()?;
    let group: usize = arg("--group", "8").parse()?;
    let prompt_len: usize = arg("--prompt-len", "256").parse()?;
    let new: usize = arg("--new", "32").parse()?;
    let tool_ms: u64 = arg("--tool-ms", "0").parse()?;
    // The Qwen2.5 tokenizer from the shared data; where that is absent (a GPU machine given
    // only the checkout) the fixture's, which only changes the text the engine looks at.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/tokenizers/qwen2.5/tokenizer.json");
    let tokenizer = match Tokenizer::from_file(&shared) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}; using the test fixture's tokenizer", shared.display());
            Tokenizer::from_dir(root.join("tests/fixtures/qwen2/tiny-gqa"))?
        }
    };
    let device = Device::parse(&arg("--device", "cpu"))?;
    let config = match arg("--model", "0.5b").as_str() {
        "0.5b" => Qwen2Config::qwen2_5_0_5b(),
        "1.5b" => Qwen2Config::qwen2_5_1_5b(),
        "qwen3-0.6b" => Qwen2Config::qwen3_0_6b(),
        other => return Err(format!("--model {other}: expected 0.5b, 1.5b or qwen3-0.6b").into()),
    };
    let decode: usize = arg("--decode", "32").parse()?;
    let matmul_dtype = match arg("--matmul-dtype", "f32").as_str() {
        "f32" => None,
        "bf16" => Some(DType::BF16),
        other => return Err(format!("--matmul-dtype {other}: expected f32 or bf16").into()),
    };
    let kv_cache_dtype = match arg("--kv-dtype", "f32").as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => return Err(format!("--kv-dtype {other}: expected f32 or bf16").into()),
    };
    let (bandwidth, bandwidth_source): (Option<f64>, &str) = match arg("--bandwidth-gbs", "").as_str() {
        "" if device == Device::Cpu => {
            (Some(artist_tensor::cpu::read_bandwidth_gbs()), "measured: 1 GiB read on every thread")
        }
        "" => (datasheet(device).map(|(gbs, _)| gbs), "datasheet"),
        b => (Some(b.parse()?), "--bandwidth-gbs"),
    };
    let mut model =
        Qwen2::from_weights_on(config.clone(), &RandomWeights { dtype: DType::BF16, std: 0.02, seed: 0 }, device)?;
    let lora_rank: usize = arg("--lora-rank", "0").parse()?;
    if lora_rank > 0 {
        let spec = artist_model::LoraSpec { rank: lora_rank, alpha: 2.0 * lora_rank as f64, ..Default::default() };
        model.add_lora(&spec, 0)?;
    }
    let batch: Vec<Vec<u32>> =
        (0..prompts).map(|p| (0..prompt_len).map(|i| ((i * 7919 + p * 104_729) % 150_000) as u32).collect()).collect();
    let script = if tool_ms > 0 { tokenizer.encode("<python>print(1+1)</python>")? } else { vec![] };
    let policy = SteeredPolicy::new(&model, script, 1e4, false);
    let tools: Vec<Arc<dyn Tool>> = vec![Arc::new(SleepTool(Duration::from_millis(tool_ms)))];
    for share in [true, false] {
        let engine = RolloutEngine {
            policy: &policy,
            tokenizer: &tokenizer,
            tools: tools.clone(),
            config: RolloutConfig {
                group_size: group,
                sampling: SamplingParams { temperature: 1.0, seed: 1, ..Default::default() },
                max_turn_tokens: new,
                max_response_tokens: new + 64,
                max_context: prompt_len + new + 64,
                max_batch: group * prompts,
                share_prefix: share,
                eos_ids: vec![],
                stop_texts: Vec::new(),
                matmul_dtype,
                kv_cache_dtype,
                ..Default::default()
            },
        };
        let launches_before = launches(device);
        let (rollouts, stats) = engine.run(&batch)?;
        let launched = launches(device).zip(launches_before).map(|(a, b)| a - b);
        let sampled: usize = rollouts.iter().map(|r| r.sampled_tokens()).sum();
        println!(
            "{}",
            serde_json::json!({
                "share_prefix": share,
                "matmul_dtype": arg("--matmul-dtype", "f32"),
                "kv_cache_dtype": arg("--kv-dtype", "f32"),
                "lora_rank": lora_rank,
                "threads": rayon::current_num_threads(),
                "prompts": prompts, "group": group, "prompt_len": prompt_len, "max_new": new, "tool_ms": tool_ms,
                "sampled_tokens": sampled,
                "forced_tokens": stats.forced_tokens,
                "prefill_tokens": stats.prefill_tokens,
                "forward_calls": stats.forward_calls,
                "wall_s": stats.wall_s,
                "sampled_tokens_per_s": sampled as f64 / stats.wall_s,
                "tool_calls": stats.tool_calls,
                "tool_wait_s": stats.tool_wait_s,
                "tool_busy_s": stats.tool_busy_s,
                "kv_block_size": stats.kv_block_size,
                "kv_peak_mib": stats.kv_peak_bytes as f64 / (1 << 20) as f64,
                "kv_cow_copies": stats.kv_cow_copies,
                "gpu_launches": launched,
                "gpu_launches_per_forward": launched.map(|n| n as f64 / stats.forward_calls.max(1) as f64),
                "device": device.to_string(),
            })
        );
    }
    if decode > 0 {
        batch1_decode(&model, &batch[0], decode, (bandwidth, bandwidth_source), device)?;
    }
    prefill_attention(&config, prompt_len, device)?;
    Ok(())
}

/// Waits for the GPU's queued work (nothing to wait for on the CPU).
fn sync(device: Device) -> BenchResult<()> {
    if let Device::Cuda(i) = device {
        artist_tensor::cuda::synchronize(i)?;
    }
    Ok(())
}

/// The attention of one prompt's prefill at the model's shape, alone: `[P, heads, d]`
/// queries against the P keys of the KV heads, causal. TFLOP/s counts two products of d
/// multiply-adds per score and P (P + 1) / 2 scores per head, against the dense bf16 peak
/// where the GPU is known. f32, and on a GPU bf16 too (the tensor-core kernels;
/// `ARTIST_ATTN_WGMMA=1` for Hopper's warpgroup MMA). The median of 5 runs after a warm-up.
fn prefill_attention(config: &Qwen2Config, p: usize, device: Device) -> BenchResult<()> {
    use rand::SeedableRng;
    let (heads, kv_heads, d) = (config.num_attention_heads, config.num_key_value_heads, config.head_dim);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let flops = 4.0 * (heads * d) as f64 * (p * (p + 1) / 2) as f64;
    let dtypes: &[DType] = if device.is_cuda() { &[DType::F32, DType::BF16] } else { &[DType::F32] };
    for &dt in dtypes {
        let q = artist_tensor::Tensor::randn((p, heads, d), 0.0, 1.0, dt, device, &mut rng)?;
        let k = artist_tensor::Tensor::randn((p, kv_heads, d), 0.0, 1.0, dt, device, &mut rng)?;
        let v = artist_tensor::Tensor::randn((p, kv_heads, d), 0.0, 1.0, dt, device, &mut rng)?;
        let scale = (d as f32).powf(-0.5);
        let mut times = Vec::new();
        for i in 0..6 {
            sync(device)?;
            let t0 = std::time::Instant::now();
            drop(q.causal_attention(&k, &v, scale)?);
            sync(device)?;
            if i > 0 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let s = times[times.len() / 2];
        let peak = datasheet(device).map(|(_, tflops)| tflops);
        println!(
            "{}",
            serde_json::json!({
                "prefill_attention_len": p,
                "heads": heads, "kv_heads": kv_heads, "head_dim": d,
                "dtype": format!("{dt:?}").to_lowercase(),
                "seconds": s,
                "attention_tflops": flops / s / 1e12,
                "peak_bf16_tflops": peak,
                "fraction_of_bf16_peak": peak.map(|pk| flops / s / 1e12 / pk),
                "device": device.to_string(),
            })
        );
    }
    Ok(())
}

/// Kernels and matrix products queued so far on a GPU (none on the CPU).
fn launches(device: Device) -> Option<u64> {
    let Device::Cuda(i) = device else { return None };
    artist_tensor::cuda::launch_count(i).ok()
}

/// Datasheet memory bandwidth (GB/s) and dense bf16 tensor-core peak (TFLOP/s) of a GPU
/// known by name.
fn datasheet(device: Device) -> Option<(f64, f64)> {
    let Device::Cuda(i) = device else { return None };
    let name = artist_tensor::cuda::info(i).ok()?.name;
    [("H200", 4800.0, 989.0), ("H100", 3350.0, 989.0), ("A100-SXM4-80GB", 2039.0, 312.0), ("A100", 1555.0, 312.0)]
        .iter()
        .find(|(k, _, _)| name.contains(k))
        .map(|&(_, gbs, tflops)| (gbs, tflops))
}

/// One sequence: the prompt prefilled, then `n` tokens decoded one at a time, sampled on
/// the model's device. Decode reads every weight once per token (the tied embedding as the
/// output projection), so tokens/s x weight bytes is the bandwidth it sustains.
fn batch1_decode(
    model: &Qwen2,
    prompt: &[u32],
    n: usize,
    (bandwidth, source): (Option<f64>, &str),
    device: Device,
) -> BenchResult<()> {
    let mut cache = model.new_cache(1, prompt.len() + n + 1)?;
    let mut sampler = Sampler::new(SamplingParams { temperature: 1.0, seed: 3, ..Default::default() });
    let mut next = prompt.to_vec();
    let mut step = |next: &mut Vec<u32>| -> BenchResult<()> {
        let logits = model.forward(&[SeqInput { slot: 0, tokens: next }], &mut cache, Rows::Last)?;
        let (id, _) = Logits::Tensor(logits).sample(&mut [(0, &mut sampler)])?[0];
        *next = vec![id];
        Ok(())
    };
    step(&mut next)?; // the prefill
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        step(&mut next)?;
    }
    let s = t0.elapsed().as_secs_f64();
    let weight_bytes = model.config.num_parameters() as f64 * 2.0; // bf16
    let tps = n as f64 / s;
    let gbs = tps * weight_bytes / 1e9;
    println!(
        "{}",
        serde_json::json!({
            "batch1_decode_tokens": n,
            "prompt_len": prompt.len(),
            "tokens_per_s": tps,
            "ms_per_token": 1e3 / tps,
            "weight_gb": weight_bytes / 1e9,
            "weight_gbs": gbs,
            "bandwidth_gbs": bandwidth,
            "bandwidth_source": bandwidth.map(|_| source),
            "fraction_of_bandwidth_bound": bandwidth.map(|b| gbs / b),
            "device": device.to_string(),
        })
    );
    Ok(())
}
