//! `cargo run --release --bin train`: GRPO training with tools.
//!
//! The tensor core and the Qwen2.5 model (loading, KV-cache decoding, sampling) are in
//! place; autograd, the rollout engine and the GRPO trainer are the next pieces of work.
//! Until they land, this binary says so and exits.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "Train a model to reason with tools (ARTIST, GRPO)")]
struct Args {
    /// TOML configuration; without one, the embedded default demo runs.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Device to run on: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    artist::tensor::cpu::retain_freed_memory();
    let device = artist::tensor::Device::parse(&args.device)?;
    eprintln!(
        "artist train: not built yet. The tensor core ({device} backend) and the Qwen2.5 model \
         (`generate`, `score`) are ready; autograd, the rollout engine and the GRPO trainer come next \
         (see README.md, \"Status\")."
    );
    if let Some(c) = args.config {
        eprintln!("(the config {} was not read)", c.display());
    }
    Ok(())
}
