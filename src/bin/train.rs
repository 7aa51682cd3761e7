//! `cargo run --release --bin train`: the trainers.
//!
//! `--mode sft` fine-tunes a Hugging Face checkpoint on JSONL data (chat messages or token
//! ids with a loss mask) and writes metrics, resumable checkpoints and a Hugging Face
//! export into the run directory.
//!
//! `--config FILE.toml [--set key.path=value ...] --out RUN_DIR` runs GRPO with a tool in
//! the loop (ARTIST on math; `configs/artist-math.toml` is the paper's setup), and
//! `--resume RUN_DIR` continues either kind of run.
//!
//! `--mode sft --nproc-per-node N` trains data parallel on this node: the program starts
//! itself N times as ranks 0..N-1 (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`, as torchrun sets them) and waits for them. A process started with those
//! variables already set (by torchrun, `srun`, or by hand on several nodes) is one rank.
//!
//! With no arguments, the embedded demo runs: ARTIST in miniature on the CPU (a
//! Qwen2.5-architecture model of a million parameters, an SFT warm-up on synthetic
//! calculator traces, then GRPO; see crates/train/src/demo.rs), into `runs/demo` (or
//! `--out`), ending with `summary.json`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use artist_dist::{Communicator, DistEnv, EnvSource, Nccl, TcpComm};
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
#[command(version = artist::VERSION, about = "Train a model to reason with tools (ARTIST): supervised fine-tuning and GRPO")]
struct Args {
    /// What to train (default grpo; with --resume, the mode of the run being resumed).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// TOML configuration of a GRPO run (see configs/artist-math.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// [grpo] Override one configuration key: `--set rollout.group_size=4` (repeatable;
    /// values in TOML syntax, a bare word is a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Device to train on: auto (a GPU when there is one, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
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
    /// [sft] Tokens per forward/backward pass, at least --max-seq-len (default: no bound).
    #[arg(long)]
    micro_batch_tokens: Option<usize>,
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
    /// [sft] Seed of the data order (default 0); [demo] seed of the weights, the warm-up
    /// traces and the problems (default 0).
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
    /// [sft] LoRA adapters of this rank on the projections (default 0: full fine-tuning).
    /// GRPO: the config's `[lora]` table.
    #[arg(long, value_name = "R")]
    lora_rank: Option<usize>,
    /// [sft] The adapters' scale numerator: updates are alpha / R times B A (default 16).
    #[arg(long, value_name = "ALPHA")]
    lora_alpha: Option<f64>,
    /// [sft] The projections adapted, comma-separated (q_proj, k_proj, v_proj, o_proj,
    /// gate_proj, up_proj, down_proj; default all-linear).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    lora_target_modules: Option<Vec<String>>,
    /// [sft] The dtype attention computes in: f32 (exact) or bf16 (rounded inputs; on a GPU
    /// with head dim 64 or 128, the tensor-core kernels); auto, the default: bf16 on a GPU,
    /// f32 on the CPU. GRPO: the config key `attention_dtype`.
    #[arg(long, value_name = "auto|f32|bf16")]
    attention_dtype: Option<artist_train::ComputeDtype>,
    /// [sft] The dtype linear layers and the LM head multiply in: f32 (exact) or bf16
    /// (activations, weights and output gradients rounded, f32 sums; on a GPU, the tensor
    /// cores); auto, the default: bf16 on a GPU, f32 on the CPU. GRPO: the config keys
    /// `matmul_dtype` and `[rollout] matmul_dtype`.
    #[arg(long, value_name = "auto|f32|bf16")]
    matmul_dtype: Option<artist_train::ComputeDtype>,
    /// [sft] Held-out JSONL (the format of --data): its mean loss per target token,
    /// `eval_loss` in metrics.jsonl, before the first step, every --eval-every steps and
    /// after the last. GRPO: the config's `[eval]` table.
    #[arg(long, value_name = "FILE")]
    eval_data: Option<PathBuf>,
    /// [sft] Steps between held-out evaluations (default 0: before the first and after the last only).
    #[arg(long, value_name = "N")]
    eval_every: Option<u64>,
    /// Stop after this step (checkpointing it) without finishing; --resume continues. For the
    /// demo, counts GRPO steps.
    #[arg(long)]
    stop_after: Option<u64>,
    /// [sft] No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// [sft] Data parallel on this node: run N processes (ranks) that split each batch.
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// [sft] Seconds a rank waits for the others (rendezvous, each collective) before it
    /// gives up, naming the rank it waited for.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    dist_timeout: u64,
    /// [sft, grpo] The data-parallel communicator: nccl (GPU ranks), tcp (through rank 0's
    /// host memory), or auto: NCCL when every rank is on a GPU and finds libnccl.
    #[arg(long, value_enum, default_value_t = CommKind::Auto)]
    comm: CommKind,
    /// [sft, grpo] With the tcp communicator: all-reduces and broadcasts of at least N values
    /// go around a ring of direct connections between the ranks (each listens on a port the system
    /// picks), smaller ones through rank 0; 0 keeps everything on rank 0.
    #[arg(long, value_name = "N", default_value_t = artist_dist::DEFAULT_RING_MIN_ELEMS)]
    tcp_ring_min: usize,
    /// [demo] A few steps of each phase only: checks the demo runs end to end.
    #[arg(long, hide = true)]
    demo_quick: bool,
}

impl Args {
    /// The run's settings: saved ones when resuming (else the defaults), overridden by
    /// every flag given.
    fn sft_config(&self, mut c: SftConfig) -> SftConfig {
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = self.$f.clone() { c.$f = v; })* };
        }
        set!(model, data, steps, batch_size, micro_batch_size, micro_batch_tokens, lr, weight_decay);
        set!(beta1, beta2, eps, grad_clip);
        set!(warmup_steps, lr_schedule, seed, save_every, keep_last, max_seq_len, overlong, attention_dtype);
        set!(matmul_dtype, eval_every);
        if let Some(path) = &self.eval_data {
            c.eval_data = Some(path.clone());
        }
        if self.no_shuffle {
            c.shuffle = false;
        }
        if self.grad_checkpointing {
            c.grad_checkpointing = true;
        }
        if self.decay_matrices_only {
            c.decay_matrices_only = true;
        }
        if let Some(r) = self.lora_rank {
            c.lora.rank = r;
        }
        if let Some(a) = self.lora_alpha {
            c.lora.alpha = a;
        }
        if let Some(m) = &self.lora_target_modules {
            c.lora.target_modules = m.clone();
        }
        c
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CommKind {
    Auto,
    Nccl,
    Tcp,
}

/// This rank's communicator for a group of `env.world_size` ranks: the TCP rendezvous
/// first, then NCCL over it where chosen (`--comm`). Ranks agree on the choice: with
/// `auto`, NCCL only when every rank can use it; with `nccl`, an error naming the ranks
/// that cannot.
fn join_group(
    env: &DistEnv,
    device: artist::tensor::Device,
    kind: CommKind,
    timeout: Duration,
    ring_min: usize,
) -> Result<Box<dyn Communicator>> {
    let mut tcp = TcpComm::connect(env, timeout)
        .with_context(|| format!("rank {} joining {}:{}", env.rank, env.master_addr, env.master_port))?;
    tcp.set_ring_threshold((ring_min > 0).then_some(ring_min));
    // Test hook: this rank fails once the group has formed.
    if std::env::var("ARTIST_FAULT_FAIL_RANK").ok().and_then(|v| v.parse::<usize>().ok()) == Some(env.rank) {
        bail!("ARTIST_FAULT_FAIL_RANK: rank {} fails on purpose", env.rank);
    }
    if kind == CommKind::Tcp {
        return Ok(Box::new(tcp));
    }
    let usable = Nccl::usable(device);
    let lacking: Vec<usize> = tcp
        .all_gather(&[if usable { 1.0 } else { 0.0 }])?
        .iter()
        .enumerate()
        .filter(|(_, u)| **u == 0.0)
        .map(|(r, _)| r)
        .collect();
    if !lacking.is_empty() {
        if kind == CommKind::Nccl {
            let why = if usable { String::new() } else { format!(" (here: {})", nccl_unusable_reason(device)) };
            bail!("--comm nccl: rank(s) {lacking:?} cannot use NCCL{why}");
        }
        return Ok(Box::new(tcp));
    }
    let ordinal = match device {
        artist::tensor::Device::Cuda(n) => n,
        artist::tensor::Device::Cpu => unreachable!("NCCL is usable only on a GPU"),
    };
    let comm =
        Nccl::connect(tcp, ordinal).with_context(|| format!("rank {} starting NCCL on cuda:{ordinal}", env.rank))?;
    if env.rank == 0 {
        eprintln!("data parallel: {} ranks on {}", env.world_size, Nccl::library()?);
    }
    Ok(Box::new(comm))
}

fn nccl_unusable_reason(device: artist::tensor::Device) -> String {
    match device {
        artist::tensor::Device::Cpu => "the rank runs on the CPU".into(),
        artist::tensor::Device::Cuda(n) => match (artist::tensor::cuda::raw_stream(n), Nccl::library()) {
            (Err(e), _) => e.to_string(),
            (_, Err(e)) => e.to_string(),
            _ => "unknown".into(),
        },
    }
}

fn run_sft(args: &Args, env: &DistEnv, device: artist::tensor::Device) -> Result<()> {
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
        device,
    };
    let summary = if env.world_size > 1 {
        let mut comm = join_group(env, device, args.comm, Duration::from_secs(args.dist_timeout), args.tcp_ring_min)?;
        sft::train_data_parallel(&run_dir, config, &opts, &mut *comm)?
    } else {
        sft::train(&run_dir, config, &opts)?
    };
    if env.rank != 0 {
        return Ok(());
    }
    eprintln!("data: {}", summary.data);
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// The exit status of a rank that stopped because another rank failed (the launcher
/// blames the rank that failed by itself).
const PEER_FAILED_EXIT: i32 = 3;

fn main() {
    artist::tensor::cpu::retain_freed_memory();
    let result = artist::tensor::cpu::on_worker(run);
    if let Err(e) = &result {
        let env = DistEnv::from_env().ok().filter(|env| env.world_size > 1);
        let own_rank = env.as_ref().map_or(0, |env| env.rank);
        let who = env.map_or_else(String::new, |env| format!("rank {}: ", env.rank));
        eprintln!("{who}Error: {e:?}");
        let blamed = e.chain().find_map(|c| {
            c.downcast_ref::<artist_dist::Error>().or(match c.downcast_ref::<artist_train::Error>() {
                Some(artist_train::Error::Dist(d)) => Some(d),
                _ => None,
            })
        });
        let code = match blamed.and_then(|d| d.rank()) {
            Some(r) if r != own_rank => PEER_FAILED_EXIT,
            _ => 1,
        };
        std::process::exit(code);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let env = DistEnv::from_env().context("reading the data-parallel environment")?;
    if let Some(n) = args.nproc_per_node
        && env.source == EnvSource::Single
    {
        return launch(n, Duration::from_secs(args.dist_timeout));
    }
    let device = rank_device(artist::cli::device(&args.device)?, &env)?;
    // A resumed run is of the kind its directory holds.
    let grpo_dir = args.resume.as_ref().is_some_and(|d| d.join(GRPO_CONFIG_FILE).exists());
    let demo_dir = args.resume.as_ref().is_some_and(|d| artist_train::demo::is_demo_run(d));
    let mode =
        args.mode.unwrap_or(if args.resume.is_some() && !grpo_dir && !demo_dir { Mode::Sft } else { Mode::Grpo });
    let grpo_run = mode == Mode::Grpo && (args.config.is_some() || grpo_dir);
    if env.world_size > 1 && mode != Mode::Sft && !grpo_run {
        bail!("data parallel ({} ranks) runs SFT and GRPO runs (--config), not the embedded demo", env.world_size);
    }
    match mode {
        Mode::Sft => run_sft(&args, &env, device),
        Mode::Grpo if grpo_run => run_grpo(&args, &env, device),
        Mode::Grpo => run_demo(&args, device),
    }
}

/// Each rank of a data-parallel job on a GPU machine takes the GPU of its local rank (as
/// torchrun's `LOCAL_RANK` convention has it); a single process keeps the device asked for.
fn rank_device(device: artist::tensor::Device, env: &DistEnv) -> Result<artist::tensor::Device> {
    match device {
        artist::tensor::Device::Cuda(n) if env.world_size > 1 => {
            let count = artist::tensor::cuda::device_count()?;
            let ordinal = n + env.local_rank;
            if ordinal >= count {
                bail!(
                    "rank {} (local rank {}) needs cuda:{ordinal}, and this machine has {count} GPU(s)",
                    env.rank,
                    env.local_rank
                );
            }
            Ok(artist::tensor::Device::cuda(ordinal)?)
        }
        d => Ok(d),
    }
}

const GRPO_CONFIG_FILE: &str = "grpo_config.toml";

fn run_grpo(args: &Args, env: &DistEnv, device: artist::tensor::Device) -> Result<()> {
    use artist_train::grpo::{self, GrpoRunConfig, GrpoTrainer, Problem};

    let (run_dir, base, resume) = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            let path = dir.join(GRPO_CONFIG_FILE);
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            (dir.clone(), GrpoRunConfig::from_toml(&text, &path)?, true)
        }
        (None, Some(file)) => {
            let Some(out) = &args.out else { bail!("a GRPO run needs --out RUN_DIR (or --resume RUN_DIR)") };
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            (out.clone(), GrpoRunConfig::from_toml(&text, file)?, false)
        }
        (None, None) => bail!("a GRPO run needs --config FILE.toml"),
    };
    let config = base.with_overrides(&args.sets)?;
    if !resume && artist_train::checkpoint::latest(&run_dir)?.is_some() {
        bail!(
            "{} already holds a run with checkpoints: resume it with --resume, or choose another --out",
            run_dir.display()
        );
    }
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let saved = toml::to_string_pretty(&config).context("writing the configuration")?;
    artist_train::checkpoint::write_atomic(&run_dir.join(GRPO_CONFIG_FILE), saved.as_bytes())?;

    let opts = RunOptions {
        resume,
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        stop_after: args.stop_after,
        device,
    };
    if config.task == grpo::Task::Bfcl {
        return run_fc(
            &run_dir,
            config,
            &opts,
            env,
            (args.comm, Duration::from_secs(args.dist_timeout), args.tcp_ring_min),
        );
    }
    // Before the data is read and the tool and judge start: a bad value is reported first.
    config.validate(device)?;
    let format: artist_math::DatasetFormat = config.data_preset.parse()?;
    let data = artist_math::MathDataset::load(&config.data, &format)?;
    for bad in &data.bad_rows {
        eprintln!("{}:{}: skipped: {}", config.data.display(), bad.line, bad.reason);
    }
    if data.problems.is_empty() {
        bail!("{}: no usable problem", config.data.display());
    }
    let held_out = match &config.eval.data {
        None => Vec::new(),
        Some(path) => {
            let format: artist_math::DatasetFormat =
                config.eval.data_preset.as_deref().unwrap_or(&config.data_preset).parse()?;
            let set = artist_math::MathDataset::load(path, &format)?;
            for bad in &set.bad_rows {
                eprintln!("{}:{}: skipped: {}", path.display(), bad.line, bad.reason);
            }
            let limit = if config.eval.limit == 0 { usize::MAX } else { config.eval.limit };
            let problems: Vec<Problem> = set
                .problems
                .iter()
                .take(limit)
                .map(|p| Problem { problem: p.problem.clone(), answer: p.answer.clone() })
                .collect();
            if problems.is_empty() {
                bail!("{}: no usable problem for eval.data", path.display());
            }
            problems
        }
    };
    let (model, tokenizer) = artist::cli::open_model(&config.model, None, device)?;
    let tokenizer = tokenizer.with_context(|| format!("{}: GRPO needs tokenizer.json", config.model.display()))?;
    let template = artist_tokenizer::ChatTemplate::from_dir(&config.model)
        .unwrap_or_else(|_| artist_tokenizer::ChatTemplate::chatml());
    let tool: Option<std::sync::Arc<dyn artist_tools::Tool>> = match config.tool.as_str() {
        "python" => Some(std::sync::Arc::new(
            artist_tools::PythonTool::new(config.sandbox.clone()).context("starting the Python sandbox")?,
        )),
        "calculator" => Some(std::sync::Arc::new(artist_tools::Calculator)),
        "mcp" => Some(std::sync::Arc::new(
            artist_tools::McpTool::spawn(config.mcp.clone()).context("starting the MCP server of [mcp]")?,
        )),
        _ => None,
    };
    let judge = match config.judge.command.is_empty() {
        true => None,
        false => Some(artist_math::Judge::spawn(config.judge.clone()).context("starting the judge of [judge]")?),
    };
    let verify = move |q: &artist_math::Question<'_>| match &judge {
        Some(judge) => judge.verdict(q).map_err(|e| e.to_string()),
        None => {
            Ok(artist_math::extract_answer(q.completion).is_some_and(|a| artist_math::equivalent(q.answer, &a)).into())
        }
    };
    let train: Vec<Problem> =
        data.problems.iter().map(|p| Problem { problem: p.problem.clone(), answer: p.answer.clone() }).collect();
    let mut trainer =
        GrpoTrainer { config, model, reference: None, tokenizer, template, tool, train, held_out, verify: &verify };
    let steps = if env.world_size > 1 {
        let mut comm = join_group(env, device, args.comm, Duration::from_secs(args.dist_timeout), args.tcp_ring_min)?;
        grpo::train_data_parallel(&run_dir, &mut trainer, &opts, &mut *comm)?
    } else {
        grpo::train(&run_dir, &mut trainer, &opts)?
    };
    if env.rank != 0 {
        return Ok(());
    }
    let last = steps.last();
    println!(
        "{}",
        serde_json::json!({
            "run_dir": run_dir,
            "steps_run": steps.len(),
            "reward": last.map(|m| m.reward),
            "accuracy": last.map(|m| m.accuracy),
            "bad_rows": data.bad_rows.len(),
        })
    );
    Ok(())
}

/// GRPO on BFCL multi-turn episodes (`task = "bfcl"`), in one process or as one rank of a
/// data-parallel group (each rank plays its share of the entries).
fn run_fc(
    run_dir: &std::path::Path,
    config: artist_train::grpo::GrpoRunConfig,
    opts: &RunOptions,
    env: &DistEnv,
    (comm, timeout, ring_min): (CommKind, Duration, usize),
) -> Result<()> {
    use artist_train::fc::{FcData, FcTrainer};

    config.validate(opts.device)?;
    // BFCL's environments, or an MCP server's tools (a server per episode).
    let server = match config.bfcl.environment {
        artist_train::fc::FcEnvironment::Builtin => None,
        artist_train::fc::FcEnvironment::Mcp => Some(std::sync::Arc::new(
            artist_tools::McpTool::spawn(config.mcp.clone()).context("starting the MCP server of [mcp]")?,
        )),
    };
    // Held-out entries play as the training entries do (the same user program, if any).
    let load = |s: &artist_train::fc::BfclSettings| {
        let s = artist_train::fc::BfclSettings { user_command: config.bfcl.user_command.clone(), ..s.clone() };
        FcData::load_on(&s, server.as_ref())
    };
    let mut data = load(&config.bfcl)?;
    // The user program of bfcl.user_command, for the training and held-out entries alike.
    let users = artist_train::fc::Users::spawn(&config.bfcl)?.map(std::sync::Arc::new);
    data.users = users.clone();
    let (model, tokenizer) = artist::cli::open_model(&config.model, None, opts.device)?;
    let tokenizer = tokenizer.with_context(|| format!("{}: GRPO needs tokenizer.json", config.model.display()))?;
    let template = artist_tokenizer::ChatTemplate::from_dir(&config.model)
        .unwrap_or_else(|_| artist_tokenizer::ChatTemplate::chatml());
    let entries = data.entries.len();
    let mut held_out = config.eval.bfcl.as_ref().map(load).transpose()?;
    if let Some(held_out) = &mut held_out {
        held_out.users = users;
    }
    let mut trainer = FcTrainer { config, model, reference: None, tokenizer, template, data, held_out };
    let steps = if env.world_size > 1 {
        let mut comm = join_group(env, opts.device, comm, timeout, ring_min)?;
        artist_train::grpo::train_data_parallel(run_dir, &mut trainer, opts, &mut *comm)?
    } else {
        artist_train::grpo::train(run_dir, &mut trainer, opts)?
    };
    if env.rank != 0 {
        return Ok(());
    }
    let last = steps.last();
    println!(
        "{}",
        serde_json::json!({
            "run_dir": run_dir,
            "task": "bfcl",
            "entries": entries,
            "steps_run": steps.len(),
            "reward": last.map(|m| m.reward),
            "accuracy": last.map(|m| m.accuracy),
        })
    );
    Ok(())
}

fn run_demo(args: &Args, device: artist::tensor::Device) -> Result<()> {
    use artist_train::demo::{self, DemoConfig};

    let out = args.resume.clone().or_else(|| args.out.clone()).unwrap_or_else(|| PathBuf::from("runs/demo"));
    let mut config = DemoConfig { seed: args.seed.unwrap_or(0), ..DemoConfig::default() };
    if args.demo_quick {
        config =
            DemoConfig { sft_steps: 4, grpo_steps: 2, prompts_per_step: 2, group_size: 2, eval_problems: 4, ..config };
    }
    eprintln!(
        "artist train: the embedded demo on the {device}: a Qwen2.5-architecture model of about a million \
         parameters learns to multiply two-digit numbers with the calculator (SFT warm-up, then GRPO); \
         writing {}",
        out.display()
    );
    let opts =
        RunOptions { resume: args.resume.is_some(), progress: !args.no_progress, stop_after: args.stop_after, device };
    let summary = demo::run(&out, &config, &opts)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// This program's arguments without `--nproc-per-node`: what each rank runs.
fn rank_args() -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == "--nproc-per-node" {
            args.next();
        } else if !a.to_string_lossy().starts_with("--nproc-per-node=") {
            out.push(a);
        }
    }
    out
}

/// Runs `n` ranks of this program on this node (rank 0 listening on a free local port)
/// and waits for all of them. When one fails, the others stop by themselves (their next
/// collective fails); any still running `timeout` later are killed. The error names the
/// rank that failed by itself, not those that stopped because of it.
fn launch(n: usize, timeout: Duration) -> Result<()> {
    if n == 0 {
        bail!("--nproc-per-node must be at least 1");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for rank 0")?
        .port();
    let exe = std::env::current_exe().context("finding this program")?;
    let args = rank_args();
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for rank in 0..n {
        let spawned = Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match spawned {
            Ok(c) => children.push(c),
            Err(e) => {
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e).with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        }
    }
    let mut status: Vec<Option<ExitStatus>> = vec![None; n];
    // Failed ranks in the order their exits were seen.
    let mut failed: Vec<usize> = Vec::new();
    let mut first_failure: Option<Instant> = None;
    let mut killed = false;
    while status.iter().any(Option::is_none) {
        for (rank, child) in children.iter_mut().enumerate() {
            if status[rank].is_none()
                && let Some(s) = child.try_wait().with_context(|| format!("waiting for rank {rank}"))?
            {
                status[rank] = Some(s);
                if !s.success() {
                    failed.push(rank);
                    first_failure.get_or_insert_with(Instant::now);
                }
            }
        }
        if !killed && first_failure.is_some_and(|t| t.elapsed() > timeout) {
            for (rank, child) in children.iter_mut().enumerate() {
                if status[rank].is_none() {
                    eprintln!("rank {rank} still runs {timeout:?} after a rank failed: killing it");
                    let _ = child.kill();
                }
            }
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if failed.is_empty() {
        return Ok(());
    }
    let peer_failed = |r: &usize| status[*r].and_then(|s| s.code()) == Some(PEER_FAILED_EXIT);
    let culprit = failed.iter().copied().find(|r| !peer_failed(r)).unwrap_or(failed[0]);
    let others: Vec<String> = failed.iter().filter(|&&r| r != culprit).map(|r| r.to_string()).collect();
    let also = if others.is_empty() { String::new() } else { format!("; ranks also stopped: {}", others.join(", ")) };
    bail!(
        "rank {culprit} of {n} failed ({}){also}",
        status[culprit].map_or_else(|| "no status".to_string(), |s| s.to_string())
    )
}
