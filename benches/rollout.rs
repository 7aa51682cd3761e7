//! Rollout throughput of a GRPO-shaped workload on the CPU: B prompts x G rollouts of a
//! Qwen2.5-0.5B-shaped model (random bf16 weights), a prompt of P tokens, up to N new
//! tokens each, with and without sharing each prompt's prefill across its group.
//!
//!     cargo bench --bench rollout -- [--prompts 1] [--group 8] [--prompt-len 256] [--new 32] [--tool-ms 0]
//!
//! With `--tool-ms T`, every rollout is steered (a logit bonus, the model's own numbers
//! otherwise) to open with a `<python>...</python>` call that a stand-in tool answers after
//! T ms, so the time the engine spends waiting on tools is measured too. Prints one JSON
//! line per setting.

use std::sync::Arc;
use std::time::Duration;

use artist_engine::{RolloutConfig, RolloutEngine, SamplingParams, SteeredPolicy};
use artist_model::{Qwen2, Qwen2Config, RandomWeights};
use artist_tensor::DType;
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    artist_tensor::cpu::retain_freed_memory();
    let prompts: usize = arg("--prompts", "1").parse()?;
    let group: usize = arg("--group", "8").parse()?;
    let prompt_len: usize = arg("--prompt-len", "256").parse()?;
    let new: usize = arg("--new", "32").parse()?;
    let tool_ms: u64 = arg("--tool-ms", "0").parse()?;
    let tok_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tokenizers/qwen2.5/tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| format!("{}: {e} (the Qwen2.5 tokenizer from the shared data)", tok_path.display()))?;
    let config = Qwen2Config::qwen2_5_0_5b();
    let model = Qwen2::from_weights(config.clone(), &RandomWeights { dtype: DType::BF16, std: 0.02, seed: 0 })?;
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
                stop_text: None,
                ..Default::default()
            },
        };
        let (rollouts, stats) = engine.run(&batch)?;
        let sampled: usize = rollouts.iter().map(|r| r.sampled_tokens()).sum();
        println!(
            "{}",
            serde_json::json!({
                "share_prefix": share,
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
            })
        );
    }
    Ok(())
}
