//! Supervised fine-tuning: mean cross-entropy over the target tokens of each batch,
//! AdamW, global-norm clipping, a warmup schedule, checkpoints and metrics.
//!
//! [`train_data_parallel`] runs the same training on several ranks: every rank holds the
//! whole model, takes its contiguous share ([`shard_range`]) of each step's global batch,
//! and the gradients are summed over ranks, so each step applies the gradient of the
//! whole global batch, as one process would.

use std::path::{Path, PathBuf};
use std::time::Instant;

use artist_autograd::{Ctx, Tape, Var, token_logprobs_in};
use artist_dist::{Communicator, broadcast_params, shard_range};

use crate::dp::StepGrads;
use artist_model::Qwen2;
use artist_optim::{AdamW, AdamWConfig, LrSchedule, Schedule, clip_grad_norm};
use artist_tensor::Device;
use artist_tokenizer::{ChatTemplate, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainerState};
use crate::data::{self, ChatFormat, DataOrder, DataStats, Example, Overlong};
use crate::error::io;
use crate::metrics::Metrics;
use crate::{Error, Result};

/// The settings of an SFT run (also what `run_config.json` holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// The Hugging Face model directory training starts from.
    pub model: PathBuf,
    /// The JSONL training data.
    pub data: PathBuf,
    /// Optimiser steps of the whole run (a resumed run continues up to it).
    pub steps: u64,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Examples per forward/backward pass (gradients accumulate over a batch); 0 = the
    /// whole batch at once.
    pub micro_batch_size: usize,
    /// Tokens per forward/backward pass (0: no bound): a rank's examples are packed into
    /// passes within it and `micro_batch_size` ([`artist_rl::MicroBatching::passes`]), so
    /// a pass's activation memory follows the tokens it holds. At least `max_seq_len`.
    pub micro_batch_tokens: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip gradients to this global L2 norm; 0 turns clipping off.
    pub grad_clip: f64,
    pub warmup_steps: u64,
    pub lr_schedule: Schedule,
    /// Leave norm weights and biases out of weight decay.
    pub decay_matrices_only: bool,
    pub seed: u64,
    /// Visit examples in a fresh random order each epoch (else in file order).
    pub shuffle: bool,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub save_every: u64,
    /// Complete checkpoints kept (0: all).
    pub keep_last: usize,
    /// Longest sequence trained on, in tokens.
    pub max_seq_len: usize,
    /// Longer sequences are truncated or skipped.
    pub overlong: Overlong,
    /// Recompute each decoder layer's activations in backward instead of storing them.
    pub grad_checkpointing: bool,
    /// LoRA adapters (rank 0, the default: full fine-tuning): the base frozen, the adapters
    /// alone trained; `final/` holds the base and the adapters (PEFT's files), `merged/`
    /// the merged model.
    pub lora: artist_model::LoraSpec,
    /// The dtype attention computes in (`auto`: bf16 on a GPU, f32 on the CPU; `f32`; `bf16`).
    pub attention_dtype: crate::ComputeDtype,
    /// The dtype linear layers and the LM head multiply in (`auto`, `f32` or `bf16`).
    pub matmul_dtype: crate::ComputeDtype,
    /// Give up after this many steps in a row whose loss or gradient was not finite.
    pub max_bad_steps: u32,
    /// Data parallel: all-reduce gradient buckets while the last micro-batch's backward
    /// still runs (true), or after it (false). Unset: overlapped when the model is on a
    /// GPU; after backward on a CPU, whose cores backward already keeps busy (measured
    /// in docs/BENCHMARKS.md). The bits are the same either way.
    pub overlap_allreduce: Option<bool>,
    /// Held-out JSONL in the format of `data`: the mean loss of its target tokens is logged
    /// as `eval_loss` before the first step, after every `eval_every` steps and after the
    /// last (unset: none).
    pub eval_data: Option<PathBuf>,
    /// Steps between held-out evaluations (0: only before the first step and after the last).
    pub eval_every: u64,
}

impl SftConfig {
    /// How a batch is cut into forward/backward passes (`micro_batch_size`,
    /// `micro_batch_tokens`).
    pub fn micro_batching(&self) -> artist_rl::MicroBatching {
        artist_rl::MicroBatching { sequences: self.micro_batch_size, tokens: self.micro_batch_tokens }
    }
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            model: PathBuf::new(),
            data: PathBuf::new(),
            steps: 100,
            batch_size: 8,
            micro_batch_size: 0,
            micro_batch_tokens: 0,
            lr: 1e-5,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: 1.0,
            warmup_steps: 0,
            lr_schedule: Schedule::Constant,
            decay_matrices_only: false,
            seed: 0,
            shuffle: true,
            save_every: 0,
            keep_last: 2,
            max_seq_len: 4096,
            overlong: Overlong::Truncate,
            grad_checkpointing: false,
            lora: Default::default(),
            attention_dtype: crate::ComputeDtype::Auto,
            matmul_dtype: crate::ComputeDtype::Auto,
            max_bad_steps: 10,
            overlap_allreduce: None,
            eval_data: None,
            eval_every: 0,
        }
    }
}

pub const RUN_CONFIG_FILE: &str = "run_config.json";

/// The settings a run directory was started with.
pub fn saved_config(run_dir: &Path) -> Result<SftConfig> {
    let path = run_dir.join(RUN_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
}

/// `-(sum of log p(target)) / denominator` over the target tokens of `batch`, packed into
/// one forward pass, and the number of targets. The vocabulary projection runs in chunks
/// ([`token_logprobs_in`]), so `[targets x vocab]` is never held at once.
pub fn sft_loss(model: &Qwen2, ctx: &Ctx, batch: &[&Example], denominator: usize) -> Result<(Var, usize)> {
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    let mut offset = 0u32;
    for ex in batch {
        for i in 1..ex.ids.len() {
            if ex.mask[i] == 1 {
                rows.push(offset + i as u32 - 1);
                targets.push(ex.ids[i]);
            }
        }
        offset += ex.ids.len() as u32;
    }
    if targets.is_empty() {
        return Err(Error::Config("a batch has no target tokens".into()));
    }
    let seqs: Vec<&[u32]> = batch.iter().map(|e| e.ids.as_slice()).collect();
    let hidden = model.hidden_states(ctx, &seqs, Some(&rows))?;
    let lp = token_logprobs_in(&hidden, &ctx.param(model.lm_head_param()), &targets, 1.0, None, ctx.matmul_dtype())?;
    let loss = lp.sum_all()?.mul_scalar(-1.0 / denominator.max(1) as f32)?;
    Ok((loss, targets.len()))
}

/// The held-out loss: `-(sum of log p(target))` over the target tokens of `examples` and
/// how many there are, in forward passes cut as training's (a batch at most) with nothing recorded for
/// backward, with the training's attention and matmul dtypes. With `comm`, each rank takes
/// its share of the examples and the sums are combined (the count exactly, the loss in f32).
fn held_out_nll(
    model: &Qwen2,
    c: &SftConfig,
    examples: &[Example],
    comm: Option<&mut (dyn Communicator + '_)>,
) -> Result<(f64, usize)> {
    let (rank, world) = comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world_size()));
    let mine: Vec<&Example> = examples[shard_range(examples.len(), rank, world)].iter().collect();
    let ctx = Ctx::inference()
        .with_attention_dtype(c.attention_dtype.dtype(model.device()))
        .with_matmul_dtype(c.matmul_dtype.dtype(model.device()));
    let (mut nll, mut count) = (0f64, 0usize);
    // Passes as training's, a batch's worth at most when training takes a batch at once.
    let mut passes = c.micro_batching();
    if passes.sequences == 0 {
        passes.sequences = c.batch_size;
    }
    for pass in passes.passes(&mine.iter().map(|e| e.ids.len()).collect::<Vec<_>>()) {
        let mb: Vec<&Example> = pass.iter().map(|&i| mine[i]).collect();
        let (l, n) = sft_loss(model, &ctx, &mb, 1)?;
        nll += l.to_scalar()? as f64;
        count += n;
    }
    if let Some(comm) = comm {
        let mut sums = [nll as f32, (count >> 24) as f32, (count & 0xff_ffff) as f32];
        comm.all_reduce_sum(&mut sums)?;
        nll = f64::from(sums[0]);
        count = ((sums[1] as usize) << 24) + sums[2] as usize;
    }
    Ok((nll, count))
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct SftSummary {
    pub run_dir: PathBuf,
    pub start_step: u64,
    pub steps: u64,
    /// The step this invocation stopped at (`steps` unless `stop_after` cut it short).
    pub end_step: u64,
    pub last_loss: Option<f64>,
    pub refused_steps: u64,
    /// The last held-out loss measured (`eval_data`).
    pub eval_loss: Option<f64>,
    pub data: DataStats,
    /// `RUN_DIR/final`, or the checkpoint written when the run stopped early.
    pub final_model: PathBuf,
}

/// How a run is driven (not part of its settings).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue the run in `run_dir` from its newest complete checkpoint.
    pub resume: bool,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
    /// Stop after this many steps of the run (saving a checkpoint there) without
    /// finishing it: a time-limited job that a later `resume` continues.
    pub stop_after: Option<u64>,
    /// Where the model is trained. Checkpoints are the same on every device, so a run may
    /// be resumed on another.
    pub device: Device,
}

/// Runs (or continues) SFT into `run_dir`.
pub fn train(run_dir: &Path, config: SftConfig, opts: &RunOptions) -> Result<SftSummary> {
    run(run_dir, config, opts, None)
}

/// Runs (or continues) SFT into `run_dir` as one rank of `comm`'s group; every rank calls
/// it with the same `run_dir`, `config` and `opts`.
///
/// * Rank 0's weights are broadcast to every rank before the optimiser starts, so the
///   ranks begin identical whatever each loaded.
/// * Each step's global batch is the one a single process draws (`batch_size` examples,
///   a function of the seed and the step); rank `r` takes `shard_range(batch_size, r, W)`
///   of it, in micro-batches cut by `micro_batch_size` and `micro_batch_tokens`. Its loss is its shard's sum of target
///   log-probabilities divided by the global batch's target count, so the gradients
///   summed over ranks are the global batch's gradient. Clipping and AdamW then run on
///   identical gradients on every rank, which stay bit-identical.
/// * The reported loss is summed over ranks too, so whether a step is refused as not
///   finite is decided on the same numbers everywhere.
/// * Rank 0 alone writes `run_config.json`, metrics, checkpoints and the export; the run
///   directory must be visible to every rank at the same path for `opts.resume` (each
///   rank reads the optimiser state from the checkpoint).
/// * Every rank checks that the others loaded the same training data and settings.
///
/// A rank that fails or hangs makes the others fail within the communicator's timeout,
/// with an error naming it.
pub fn train_data_parallel(
    run_dir: &Path,
    config: SftConfig,
    opts: &RunOptions,
    comm: &mut dyn Communicator,
) -> Result<SftSummary> {
    run(run_dir, config, opts, Some(comm))
}

/// FNV-1a, 64 bits: a fingerprint of the settings that must agree across ranks.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Fails unless every rank holds the same `values` (each exact in f32 as 16-bit pieces).
pub(crate) fn check_agreement(comm: &mut dyn Communicator, what: &[(&str, u64)]) -> Result<()> {
    let mine: Vec<f32> =
        what.iter().flat_map(|&(_, v)| (0..4).map(move |i| ((v >> (16 * i)) & 0xffff) as f32)).collect();
    let all = comm.all_gather(&mine)?;
    for (r, theirs) in all.chunks(mine.len()).enumerate() {
        for (k, (name, _)) in what.iter().enumerate() {
            if theirs[4 * k..4 * k + 4] != mine[4 * k..4 * k + 4] {
                return Err(Error::Config(format!(
                    "rank {r} has other {name} than rank {}: every rank must train on the same",
                    comm.rank()
                )));
            }
        }
    }
    Ok(())
}

fn run(
    run_dir: &Path,
    config: SftConfig,
    opts: &RunOptions,
    comm: Option<&mut dyn Communicator>,
) -> Result<SftSummary> {
    let mut dist = comm.filter(|c| c.world_size() > 1);
    let (rank, world) = dist.as_ref().map_or((0, 1), |c| (c.rank(), c.world_size()));
    let lead = rank == 0;
    let c = &config;
    let resume = opts.resume;
    if c.steps == 0 || c.batch_size == 0 {
        return Err(Error::Config("steps and batch_size must be at least 1".into()));
    }
    if c.micro_batch_tokens > 0 && c.micro_batch_tokens < c.max_seq_len {
        return Err(Error::Config(format!(
            "micro_batch_tokens ({}) must hold the longest sequence, max_seq_len = {} tokens",
            c.micro_batch_tokens, c.max_seq_len
        )));
    }
    for (name, v) in [("lr", c.lr), ("eps", c.eps), ("weight_decay", c.weight_decay), ("grad_clip", c.grad_clip)] {
        if !v.is_finite() || v < 0.0 {
            return Err(Error::Config(format!("{name} must be a finite number >= 0, not {v}")));
        }
    }
    for (name, v) in [("beta1", c.beta1), ("beta2", c.beta2)] {
        if !(0.0..1.0).contains(&v) {
            return Err(Error::Config(format!("{name} must lie in [0, 1), not {v}")));
        }
    }
    let resume_from =
        if resume {
            Some(checkpoint::latest(run_dir)?.ok_or_else(|| {
                Error::Config(format!("{}: no complete checkpoint to resume from", run_dir.display()))
            })?)
        } else {
            if checkpoint::latest(run_dir)?.is_some() {
                return Err(Error::Config(format!(
                    "{} already holds a run with checkpoints: resume it with --resume, or choose another --out",
                    run_dir.display()
                )));
            }
            None
        };
    let config_json = serde_json::to_string_pretty(c).expect("JSON");
    if lead {
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        checkpoint::write_atomic(&run_dir.join(RUN_CONFIG_FILE), config_json.as_bytes())?;
    }

    let source = c.model.clone();
    let mut model = match &resume_from {
        Some(dir) => Qwen2::load_on(dir, opts.device)?,
        None => Qwen2::load_on(&source, opts.device)?,
    };
    // A checkpoint of a LoRA run loads with its adapters; a fresh run gets them here.
    crate::grpo::attach_lora(&mut model, &c.lora, c.seed)?;
    let tokenizer_dir =
        if source.join(artist_tokenizer::TOKENIZER_FILE).exists() { Some(source.clone()) } else { None };
    let tokenizer = tokenizer_dir.as_ref().map(Tokenizer::from_dir).transpose()?;
    // A model without tokenizer_config.json gets ChatML, as transformers' old default.
    let template = match &tokenizer_dir {
        Some(d) if d.join(artist_tokenizer::TOKENIZER_CONFIG_FILE).exists() => Some(ChatTemplate::from_dir(d)?),
        Some(_) => Some(ChatTemplate::chatml()),
        None => None,
    };
    let chat =
        tokenizer.as_ref().zip(template.as_ref()).map(|(tokenizer, template)| ChatFormat { tokenizer, template });
    let (examples, stats) =
        data::load_jsonl(&c.data, chat.as_ref(), model.config.vocab_size, c.max_seq_len, c.overlong)?;
    let fingerprint = format!("{:016x}", data::fingerprint(&examples));
    let held_out = match &c.eval_data {
        Some(path) => data::load_jsonl(path, chat.as_ref(), model.config.vocab_size, c.max_seq_len, c.overlong)?.0,
        None => Vec::new(),
    };

    let params = model.params();
    if let Some(comm) = dist.as_deref_mut() {
        check_agreement(
            comm,
            &[
                ("settings", fnv1a(config_json.as_bytes())),
                ("training data", data::fingerprint(&examples)),
                ("held-out data", data::fingerprint(&held_out)),
                ("resume checkpoint", fnv1a(format!("{resume_from:?}").as_bytes())),
            ],
        )?;
        // Before the optimiser copies the weights into its f32 master weights.
        broadcast_params(comm, &params, 0)?;
    }
    let mut optimizer = AdamW::new(
        &params,
        AdamWConfig {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            decay_matrices_only: c.decay_matrices_only,
        },
    )?;
    let mut start = 0;
    if let Some(dir) = &resume_from {
        let state = checkpoint::read_state(dir)?;
        if state.data_fingerprint != fingerprint {
            return Err(Error::Checkpoint {
                path: dir.clone(),
                msg: format!(
                    "the training data changed since this checkpoint ({} then, {fingerprint} now)",
                    state.data_fingerprint
                ),
            });
        }
        if state.seed != c.seed {
            return Err(Error::Checkpoint {
                path: dir.clone(),
                msg: format!("seed {} was saved, {} given", state.seed, c.seed),
            });
        }
        checkpoint::load_optimizer(dir, &mut optimizer, &state)?;
        start = state.step;
    }
    let schedule =
        LrSchedule { base_lr: c.lr, schedule: c.lr_schedule, warmup_steps: c.warmup_steps, total_steps: c.steps };
    let order = DataOrder { n: examples.len(), batch_size: c.batch_size, shuffle: c.shuffle, seed: c.seed };
    let mut metrics = if lead { Some(Metrics::open(run_dir, resume_from.as_ref().map(|_| start))?) } else { None };
    let bar = progress_bar(opts.progress && lead, start, c.steps);
    let end = opts.stop_after.map_or(c.steps, |s| s.min(c.steps));
    // The last checkpoint this process saved: a LoRA run links its frozen base weights.
    let last_saved = std::cell::RefCell::new(None::<PathBuf>);
    let save = |step: u64, epoch: u64, optimizer: &AdamW| -> Result<PathBuf> {
        let state = TrainerState {
            step,
            epoch,
            batches_drawn: None,
            kl_reward_coef: None,
            seed: c.seed,
            data_fingerprint: fingerprint.clone(),
            optimizer_steps: Default::default(),
            config: serde_json::to_value(c).expect("JSON"),
        };
        let _range = artist_tensor::nvtx::range("checkpoint");
        let prev = last_saved.borrow().clone();
        let extras = checkpoint::SaveExtras { frozen_base_from: prev.as_deref(), ..Default::default() };
        let dir = checkpoint::save_with(run_dir, &model, optimizer, &state, Some(&source), c.keep_last, extras)?;
        *last_saved.borrow_mut() = Some(dir.clone());
        Ok(dir)
    };

    // The held-out loss after step `done` (0: the starting weights), as metrics fields.
    let evaluate = |dist: Option<&mut (dyn Communicator + '_)>, done: u64| -> Result<serde_json::Value> {
        let t = Instant::now();
        let (nll, count) = {
            let _range = artist_tensor::nvtx::range("eval");
            held_out_nll(&model, c, &held_out, dist)?
        };
        let loss = nll / count.max(1) as f64;
        let secs = t.elapsed().as_secs_f64();
        if lead {
            bar.suspend(|| eprintln!("held-out loss after step {done}: {loss:.4} ({count} tokens, {secs:.1} s)"));
        }
        Ok(serde_json::json!({ "eval_loss": loss, "eval_target_tokens": count, "eval_s": secs }))
    };
    let mut eval_loss = None;
    if !held_out.is_empty() && start == 0 && start < end {
        let e = evaluate(dist.as_deref_mut(), 0)?;
        eval_loss = e["eval_loss"].as_f64();
        if let Some(metrics) = metrics.as_mut() {
            let mut line = serde_json::json!({ "step": 0 });
            line.as_object_mut().expect("an object").extend(e.as_object().expect("an object").clone());
            metrics.write(&line)?;
        }
    }
    let (mut last_loss, mut refused, mut bad_run) = (None, 0u64, 0u32);
    for step in start..end {
        let t0 = Instant::now();
        let (epoch, idx) = order.step(step);
        let batch: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let n_targets: usize = batch.iter().map(|e| e.targets()).sum();
        let tokens: usize = batch.iter().map(|e| e.ids.len()).sum();
        let mine = &batch[shard_range(batch.len(), rank, world)];
        let mut step_grads =
            StepGrads::new(dist.as_deref_mut().map(|c| c as &mut dyn Communicator), &params, c.overlap_allreduce);
        let mut loss = 0f64;
        let passes = c.micro_batching().passes(&mine.iter().map(|e| e.ids.len()).collect::<Vec<_>>());
        let n_micro = passes.len();
        for (j, pass) in passes.into_iter().enumerate() {
            let mb: Vec<&Example> = pass.iter().map(|&i| mine[i]).collect();
            let tape = Tape::new();
            let ctx = Ctx::training(&tape)
                .with_checkpointing(c.grad_checkpointing)
                .with_attention_dtype(c.attention_dtype.dtype(model.device()))
                .with_matmul_dtype(c.matmul_dtype.dtype(model.device()));
            let (l, _) = sft_loss(&model, &ctx, &mb, n_targets)?;
            loss += l.to_scalar()? as f64;
            step_grads.backward(&tape, &l, j + 1 == n_micro)?;
        }
        let mut grads = step_grads.finish()?;
        if let Some(comm) = dist.as_deref_mut() {
            let mut total = [loss as f32];
            comm.all_reduce_sum(&mut total)?;
            loss = f64::from(total[0]);
        }
        let grad_norm = clip_grad_norm(&mut grads, c.grad_clip)?;
        let lr = schedule.lr(step);
        let ok = loss.is_finite() && grad_norm.is_finite();
        if ok {
            optimizer.step(&grads, lr)?;
            last_loss = Some(loss);
            bad_run = 0;
        } else {
            refused += 1;
            bad_run += 1;
            if lead {
                bar.suspend(|| {
                    eprintln!(
                        "step {}: loss {loss} / gradient norm {grad_norm} is not finite; the update was refused",
                        step + 1
                    )
                });
            }
        }
        drop(grads);
        let secs = t0.elapsed().as_secs_f64();
        let finite = |x: f64| if x.is_finite() { serde_json::json!(x) } else { serde_json::json!(x.to_string()) };
        let done = step + 1;
        let eval = if !held_out.is_empty() && (done == c.steps || (c.eval_every > 0 && done % c.eval_every == 0)) {
            let e = evaluate(dist.as_deref_mut(), done)?;
            eval_loss = e["eval_loss"].as_f64();
            Some(e)
        } else {
            None
        };
        if let Some(metrics) = metrics.as_mut() {
            let mut line = serde_json::json!({
            "step": step + 1,
            "epoch": epoch,
            "loss": finite(loss),
            "grad_norm": finite(grad_norm),
            "lr": lr,
            "tokens": tokens,
            "target_tokens": n_targets,
            "tokens_per_s": tokens as f64 / secs.max(1e-9),
            "step_s": secs,
            "refused": !ok,
            });
            if let Some(e) = eval {
                line.as_object_mut().expect("an object").extend(e.as_object().expect("an object").clone());
            }
            metrics.write(&line)?;
        }
        bar.set_position(step + 1);
        if !ok && bad_run >= c.max_bad_steps.max(1) {
            return Err(Error::NonFinite(format!(
                "{bad_run} steps in a row had a loss or gradient that is not finite (last: step {}); \
                 stopping. No update from such a step was applied; checkpoints hold finite weights only.",
                step + 1
            )));
        }
        bar.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {:.0} tok/s", tokens as f64 / secs.max(1e-9)));
        if lead && c.save_every > 0 && done % c.save_every == 0 && done < c.steps {
            let next_epoch = order.step(done).0;
            bar.suspend(|| save(done, next_epoch, &optimizer))?;
            crate::plots::write_curves(run_dir)?;
        }
    }
    bar.finish_and_clear();
    let saved_at_end = c.save_every > 0 && end.is_multiple_of(c.save_every) && end < c.steps;
    let final_model = if lead {
        if (start < end || resume_from.is_none()) && !saved_at_end {
            save(end, order.step(end).0, &optimizer)?;
        }
        crate::plots::write_curves(run_dir)?;
        if end == c.steps {
            if model.lora().is_some() {
                checkpoint::export_merged(run_dir, crate::grpo::MERGED_DIR, &model, Some(&source))?;
            }
            let prev = last_saved.borrow().clone();
            checkpoint::export_atomic(run_dir, "final", &model, Some(&source), prev.as_deref())?
        } else {
            checkpoint::latest(run_dir)?.expect("a checkpoint was just saved")
        }
    } else if end == c.steps {
        run_dir.join("final")
    } else {
        run_dir.join("checkpoints").join(checkpoint::step_name(end))
    };
    // Every rank returns once rank 0's files are written (or learns that they were not).
    if let Some(comm) = dist {
        comm.barrier()?;
    }
    Ok(SftSummary {
        run_dir: run_dir.into(),
        start_step: start,
        steps: c.steps,
        end_step: end,
        last_loss,
        refused_steps: refused,
        eval_loss,
        data: stats,
        final_model,
    })
}

pub(crate) fn progress_bar(show: bool, start: u64, total: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_position(start);
    bar
}
