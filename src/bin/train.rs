//! `cargo run --release --bin train`: the trainers.
//!
//! `--mode sft` fine-tunes a Hugging Face checkpoint on JSONL data (chat messages or token
//! ids with a loss mask) and writes metrics, resumable checkpoints and a Hugging Face
//! export into the run directory. GRPO with tools (the default mode) is the next piece of
//! work; until it lands, the default mode says so and exits.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use artist_train::data::Overlong;
use artist_train::sft::{self, RunOptions, SftConfig};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// GRPO with tools (ARTIST).
    Grpo,
    /// Supervised fine-tuning.
    Sft,
}

#[derive(Parser, Debug)]
#[command(version, about = "Train a model to reason with tools (ARTIST): supervised fine-tuning and GRPO")]
struct Args {
    /// What to train (default grpo; with --resume, the mode of the run being resumed).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// TOML configuration of a GRPO run; without one, the embedded default demo runs.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Device to run on: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,

    /// [sft] The Hugging Face model directory to start from.
    #[arg(long)]
    model: Option<PathBuf>,
    /// [sft] Training data: JSONL of {"messages": [...]} or {"input_ids": [...], "loss_mask": [...]}.
    #[arg(long)]
    data: Option<PathBuf>,
    /// [sft] The run directory (metrics.jsonl, checkpoints/, final/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// [sft] Continue the run in this directory from its newest complete checkpoint. Its
    /// saved settings apply; flags given here override them (e.g. a larger --steps).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// [sft] Optimiser steps of the whole run (default 100).
    #[arg(long)]
    steps: Option<u64>,
    /// [sft] Examples per optimiser step (default 8).
    #[arg(long)]
    batch_size: Option<usize>,
    /// [sft] Examples per forward/backward pass; gradients accumulate over the batch (default: the batch).
    #[arg(long)]
    micro_batch_size: Option<usize>,
    /// [sft] Peak learning rate (default 1e-5).
    #[arg(long)]
    lr: Option<f64>,
    /// [sft] Decoupled weight decay (default 0.01, on every parameter).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// [sft] Leave norm weights and biases out of weight decay.
    #[arg(long)]
    decay_matrices_only: bool,
    #[arg(long)]
    beta1: Option<f64>,
    #[arg(long)]
    beta2: Option<f64>,
    #[arg(long)]
    eps: Option<f64>,
    /// [sft] Clip gradients to this global L2 norm; 0 = off (default 1.0).
    #[arg(long)]
    grad_clip: Option<f64>,
    /// [sft] Linear warmup steps from lr 0 (default 0).
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// [sft] constant, linear or cosine (after warmup; default constant).
    #[arg(long)]
    lr_schedule: Option<artist_optim::Schedule>,
    /// [sft] Seed of the data order (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// [sft] Visit the data in file order every epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// [sft] Checkpoint every N steps (default 0: only at the end).
    #[arg(long)]
    save_every: Option<u64>,
    /// [sft] Complete checkpoints to keep (default 2; 0 keeps all).
    #[arg(long)]
    keep_last: Option<usize>,
    /// [sft] Longest sequence in tokens (default 4096).
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// [sft] truncate or skip sequences longer than --max-seq-len (default truncate).
    #[arg(long)]
    overlong: Option<Overlong>,
    /// [sft] Recompute decoder layers in backward instead of storing their activations.
    #[arg(long)]
    grad_checkpointing: bool,
    /// [sft] Stop after this step (checkpointing it) without finishing; --resume continues.
    #[arg(long)]
    stop_after: Option<u64>,
    /// [sft] No progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl Args {
    /// The run's settings: saved ones when resuming (else the defaults), overridden by
    /// every flag given.
    fn sft_config(&self, mut c: SftConfig) -> SftConfig {
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = self.$f.clone() { c.$f = v; })* };
        }
        set!(model, data, steps, batch_size, micro_batch_size, lr, weight_decay, beta1, beta2, eps, grad_clip);
        set!(warmup_steps, lr_schedule, seed, save_every, keep_last, max_seq_len, overlong);
        if self.no_shuffle {
            c.shuffle = false;
        }
        if self.grad_checkpointing {
            c.grad_checkpointing = true;
        }
        if self.decay_matrices_only {
            c.decay_matrices_only = true;
        }
        c
    }
}

fn run_sft(args: &Args) -> Result<()> {
    let (run_dir, base) = match (&args.resume, &args.out) {
        (Some(dir), _) => (dir.clone(), sft::saved_config(dir).with_context(|| format!("resuming {}", dir.display()))?),
        (None, Some(out)) => (out.clone(), SftConfig::default()),
        (None, None) => bail!("--mode sft needs --out RUN_DIR (or --resume RUN_DIR)"),
    };
    let config = args.sft_config(base);
    if config.model.as_os_str().is_empty() {
        bail!("--mode sft needs --model DIR (a Hugging Face model directory)");
    }
    if config.data.as_os_str().is_empty() {
        bail!("--mode sft needs --data FILE.jsonl");
    }
    let opts = RunOptions {
        resume: args.resume.is_some(),
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        stop_after: args.stop_after,
    };
    let summary = sft::train(&run_dir, config, &opts)?;
    let d = &summary.data;
    eprintln!(
        "data: {} examples from {} lines ({} target tokens; truncated {}, skipped: {} too long, {} without targets, {} without an assistant turn)",
        d.examples,
        d.lines,
        d.target_tokens,
        d.truncated,
        d.skipped_too_long,
        d.skipped_no_targets,
        d.skipped_no_assistant
    );
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    artist::tensor::cpu::retain_freed_memory();
    let device = artist::cli::device(&args.device)?;
    // Only SFT runs write run directories so far, so a resumed run is an SFT run.
    let mode = args.mode.unwrap_or(if args.resume.is_some() { Mode::Sft } else { Mode::Grpo });
    match mode {
        Mode::Sft => run_sft(&args),
        Mode::Grpo => {
            eprintln!(
                "artist train: GRPO is not built yet. Ready: the {device} tensor backend, Qwen2.5 \
                 (`generate`, `score`), autograd and supervised fine-tuning (`train --mode sft`); the \
                 rollout engine and the GRPO trainer come next (see README.md, \"Status\")."
            );
            if let Some(c) = &args.config {
                eprintln!("(the config {} was not read)", c.display());
            }
            Ok(())
        }
    }
}
