//! `score`: per-token log-probabilities and perplexity of a text under a checkpoint.
//!
//!     cargo run --release --bin score -- --model DIR --text-file f.txt [--json]
//!
//! With `--json`, prints one object (a stable interface): `{"token_ids", "logprobs",
//! "perplexity", "mean_logprob", "num_tokens"}` where `logprobs[i]` is
//! `log p(token_ids[i+1] | token_ids[..=i])` (one per token after the first) and
//! `perplexity = exp(-mean(logprobs))`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use artist::cli;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(version = artist::VERSION, about = "Score a text with a Qwen2 / Qwen2.5 checkpoint: logprobs and perplexity")]
struct Args {
    /// Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// PEFT LoRA adapters (a directory with adapter_config.json and
    /// adapter_model.safetensors) added to --model.
    #[arg(long, value_name = "DIR")]
    lora: Option<PathBuf>,
    /// File whose text is scored (needs the model's tokenizer.json).
    #[arg(long, conflicts_with = "token_ids", required_unless_present = "token_ids")]
    text_file: Option<PathBuf>,
    /// Token ids to score: 1,2,3.
    #[arg(long)]
    token_ids: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// auto (a GPU when there is one, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

fn main() -> Result<()> {
    artist::tensor::cpu::retain_freed_memory();
    artist::tensor::cpu::on_worker(run)
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = cli::device(&args.device)?;
    let (model, tokenizer) = cli::open_model(&args.model, args.lora.as_deref(), device)?;
    let ids = match (&args.text_file, &args.token_ids) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let tok = tokenizer.as_ref().with_context(|| {
                format!("--text-file needs {}/tokenizer.json (or pass --token-ids)", args.model.display())
            })?;
            tok.encode(&text)?
        }
        (None, Some(ids)) => cli::parse_ids(ids)?,
        (None, None) => unreachable!("clap requires one of --text-file, --token-ids"),
    };
    if ids.len() < 2 {
        bail!("scoring needs at least 2 tokens, got {}", ids.len());
    }
    cli::check_ids(&ids, model.config.vocab_size)?;
    let logprobs = model.token_logprobs(&ids)?;
    let mean = logprobs.iter().map(|&l| l as f64).sum::<f64>() / logprobs.len() as f64;
    let perplexity = (-mean).exp();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "token_ids": ids,
                "logprobs": logprobs,
                "perplexity": perplexity,
                "mean_logprob": mean,
                "num_tokens": ids.len(),
            })
        );
        return Ok(());
    }
    println!("{:>6}  {:>8}  {:>10}  token", "pos", "id", "logprob");
    for (i, (&id, lp)) in ids.iter().skip(1).zip(&logprobs).enumerate() {
        let piece = tokenizer.as_ref().map(|t| t.decode_lossy(&[id], false)).unwrap_or_default();
        println!("{:>6}  {:>8}  {:>10.4}  {:?}", i + 1, id, lp, piece);
    }
    println!("tokens {}  mean logprob {:.4}  perplexity {:.4}", ids.len(), mean, perplexity);
    Ok(())
}
