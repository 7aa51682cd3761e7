//! The GRPO trainer for ARTIST: rollouts with a tool in the loop, ARTIST's rewards, group
//! advantages, the clipped masked loss (with a KL term to a frozen reference when
//! `grpo.beta > 0`), AdamW; repeat. [`GrpoTrainer`] trains on math problems, and
//! [`crate::fc::FcTrainer`] on BFCL episodes, both through [`train`]. Settings come from
//! TOML ([`GrpoRunConfig`]), every field documented and overridable with `--set`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use artist_autograd::{Ctx, Tape};
use artist_dist::{Communicator, broadcast_params, shard_range};

use crate::dp::StepGrads;
use artist_engine::{Rollout, RolloutConfig, RolloutEngine, SamplingParams};
use artist_model::Qwen2;
use artist_optim::{AdamW, AdamWConfig, LrSchedule, Schedule, clip_grad_norm};
use artist_rl::grpo::rollout_logprobs;
use artist_rl::{
    AdvantageConfig, GrpoConfig, MathRewardWeights, MathRewards, MicroBatching, Segment, TrainRollout,
    group_advantages, grpo_loss_measuring, math_rewards_with_tool, token_weights_global,
};
use artist_tokenizer::{ChatTemplate, Message, Tokenizer};
use artist_tools::{McpConfig, SandboxConfig, Tool};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainerState};
use crate::error::io;
use crate::metrics::Metrics;
use crate::sft::RunOptions;
use crate::{Error, Result};

/// One problem: the text the user asks, and the gold answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub problem: String,
    pub answer: String,
}

/// Whether a completion is right, and the credit it earns, given the question (the
/// problem, the completion, the gold answer, and the final state a tool reported):
/// `Err` (why, in words) when it cannot be told (an external judge that failed), which
/// stops the step. `Verdict::from(bool)` for a plain right or wrong.
pub type Verifier = dyn Fn(&artist_math::Question<'_>) -> std::result::Result<artist_math::Verdict, String> + Sync;

/// How rollouts are sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSettings {
    /// Rollouts per prompt (G).
    pub group_size: usize,
    pub temperature: f32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    /// Model tokens per turn (between tool outputs).
    pub max_turn_tokens: usize,
    /// Response tokens in all, model and tool.
    pub max_response_tokens: usize,
    pub max_tool_calls: usize,
    /// Prompt plus response.
    pub max_context: usize,
    /// Rollouts decoding at once.
    pub max_batch: usize,
    /// Prefill each prompt once for its whole group.
    pub share_prefix: bool,
    /// Runs repeat to the bit: a rollout that calls a tool rejoins the batch at the next
    /// step (the engine waits for the call; see `RolloutConfig::deterministic`).
    pub deterministic: bool,
    /// The dtype the policy's linear layers multiply in while sampling (`auto`: bf16 on a
    /// GPU, f32 on the CPU; `f32`; or `bf16`: tensor-core GEMMs for prefills and decode
    /// batches of more than 8 rollouts; see `KvCache::set_matmul_dtype`).
    pub matmul_dtype: crate::ComputeDtype,
    /// What the rollouts' KV cache stores keys and values as (`auto`: bf16 on a GPU, f32 on
    /// the CPU; `f32`; or `bf16`: half the memory and the bytes each decode step reads; see
    /// `KvCache::paged_in`).
    pub kv_cache_dtype: crate::ComputeDtype,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            group_size: 6,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_turn_tokens: 1024,
            max_response_tokens: 8000,
            max_tool_calls: 8,
            max_context: 10_000,
            max_batch: 48,
            share_prefix: true,
            deterministic: false,
            matmul_dtype: crate::ComputeDtype::Auto,
            kv_cache_dtype: crate::ComputeDtype::Auto,
        }
    }
}

/// Held-out evaluation during a run (`[eval]`): the policy answers each held-out problem
/// (math, `data`) or plays each held-out BFCL entry (`[eval.bfcl]`) as the rollouts do,
/// tools in the loop, and `metrics.jsonl` gets `eval_accuracy`, `eval_reward`,
/// `eval_tool_use` (and `eval_s`), as veRL's validation every `test_freq` steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSettings {
    /// Held-out problems (JSONL, the fields of `data_preset`); unset: no evaluation.
    pub data: Option<PathBuf>,
    /// Field names of `data` when they differ from the training data's `data_preset`.
    pub data_preset: Option<String>,
    /// Evaluate after every N steps, and after the run's last step; 0: only after the last.
    pub every: u64,
    /// Also evaluate the policy as it starts (a run that starts at step 0), in a metrics
    /// line of step 0.
    pub before_training: bool,
    /// Only the first N problems of `data` (0: all of them).
    pub limit: usize,
    /// Sampling temperature (0: greedy, one answer per problem whatever `samples` says).
    pub temperature: f32,
    /// Answers per problem at a temperature above 0; the accuracy is their mean (pass@1),
    /// and with more than one `eval_pass_at_k` is logged too, and for math `eval_maj_at_k`
    /// (the majority answer's accuracy).
    pub samples: usize,
    /// `task = "bfcl"`: held-out entries, e.g. the `bfcl.questions` a run does not train on
    /// (`skip` = the training's `first`); played with these settings' `max_steps_per_turn`
    /// and checked with their `irrelevance`. Accuracy is BFCL's verdict.
    pub bfcl: Option<crate::fc::BfclSettings>,
    /// Answers of each evaluation written to `RUN_DIR/eval_rollouts.jsonl` (the first ones,
    /// in problem order whatever the ranks, with the step they follow; veRL's
    /// `log_val_generations`). 0: none.
    pub log_samples: usize,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            data: None,
            data_preset: None,
            every: 0,
            before_training: true,
            limit: 0,
            temperature: 0.0,
            samples: 1,
            bfcl: None,
            log_samples: 4,
        }
    }
}

impl EvalSettings {
    /// Whether the policy is evaluated after step `done` (1-based) of a run of `steps`.
    pub fn due_after(&self, done: u64, steps: u64) -> bool {
        done == steps || (self.every > 0 && done.is_multiple_of(self.every))
    }

    /// Answers per problem: one when greedy.
    pub fn answers_per_problem(&self) -> usize {
        if self.temperature == 0.0 { 1 } else { self.samples }
    }
}

/// Rollouts that run long (`[overlong]`), after DAPO (Yu et al., 2025).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OverlongSettings {
    /// Leave rollouts that a limit ended (response, turn or context tokens, tool calls:
    /// the `truncated` metric) out of the loss; they still count in their group's
    /// advantages. DAPO's overlong filtering.
    pub mask_truncated: bool,
    /// Math: soft overlong punishment over the last `buffer` tokens before
    /// `rollout.max_response_tokens` (0: off): the reward falls linearly to `-penalty`
    /// at the limit (`reward_overlong` in the metrics).
    pub buffer: usize,
    pub penalty: f64,
}

/// AdamW and its schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSettings {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 = off.
    pub grad_clip: f64,
    pub warmup_steps: u64,
    pub lr_schedule: Schedule,
}

impl Default for OptimSettings {
    fn default() -> Self {
        OptimSettings {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            warmup_steps: 0,
            lr_schedule: Schedule::Constant,
        }
    }
}

/// What a GRPO run trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    #[default]
    Math,
    Bfcl,
}

/// Moving the KL term's reference along with the policy (TRL's `sync_ref_model`, ProRL's
/// reference resets): every `every` steps, `reference = alpha * policy + (1 - alpha) *
/// reference`, so a long run is held near where it has got to rather than where it started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReferenceSync {
    /// Steps between updates of the reference (0: never; the reference stays frozen).
    pub every: u64,
    /// The policy's share in the new reference: 1 replaces it with the policy (ProRL's hard
    /// reset); TRL's default mix-up is 0.6. In (0, 1].
    pub alpha: f64,
    /// Also forget AdamW's moments at each move (ProRL resets them with the reference).
    pub reset_optimizer: bool,
}

impl Default for ReferenceSync {
    fn default() -> Self {
        ReferenceSync { every: 0, alpha: 1.0, reset_optimizer: false }
    }
}

/// The KL to the reference as a penalty on each rollout's reward (veRL's
/// `use_kl_in_reward`; REINFORCE++'s form): the reward the advantages are computed from is
/// `r - coef * sum_t KL_t`, summed over the rollout's generated tokens, with `KL_t` the
/// estimator's value from pi_old's logprob (the sampler's, or the policy's recomputed where
/// the run recomputes pi_old) and the reference's. Outcome estimators
/// sum a token-level penalty this way (veRL's GRPO and REINFORCE++-baseline do), so it is
/// a sequence-level one.
///
/// The coefficient is fixed, or with `target > 0` adaptive (veRL's `kl_ctrl.type =
/// "adaptive"`, TRL's and OpenRLHF's `AdaptiveKLController`, from Ziegler et al. 2019):
/// after each step it is multiplied by `1 + e * n / horizon`, where `e` is the step's mean
/// per-token KL over `target`, less 1, clipped to [-0.2, 0.2], and `n` the rollouts the
/// step played ([`KlReward::adapted`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KlReward {
    /// 0 (the default): off. With `target > 0`, the first step's coefficient.
    pub coef: f64,
    pub estimator: artist_rl::KlEstimator,
    /// The mean per-token KL the adaptive coefficient steers toward (veRL's `target_kl`);
    /// 0 (the default): the coefficient stays `coef`.
    pub target: f64,
    /// Rollouts over which the adaptive coefficient may change by a factor of about
    /// e^0.2 (veRL's `kl_ctrl.horizon`; default 10000).
    pub horizon: f64,
}

impl Default for KlReward {
    fn default() -> Self {
        KlReward { coef: 0.0, estimator: artist_rl::KlEstimator::K1, target: 0.0, horizon: 10_000.0 }
    }
}

impl KlReward {
    /// The largest relative error of the KL the adaptive controller acts on.
    pub const MAX_ERROR: f64 = 0.2;

    /// Whether the coefficient adapts (`target > 0`).
    pub fn adaptive(&self) -> bool {
        self.target > 0.0
    }

    /// The coefficient after a step whose `rollouts` rollouts had a mean per-token KL of
    /// `per_token_kl`: `coef` itself when fixed, else `coef * (1 + e * rollouts / horizon)`
    /// with `e = clip(per_token_kl / target - 1, -0.2, 0.2)`.
    pub fn adapted(&self, per_token_kl: f64, rollouts: usize) -> f64 {
        if !self.adaptive() {
            return self.coef;
        }
        let e = (per_token_kl / self.target - 1.0).clamp(-Self::MAX_ERROR, Self::MAX_ERROR);
        self.coef * (1.0 + e * rollouts as f64 / self.horizon)
    }
}

/// A GRPO run: math problems with a tool, or BFCL function-calling episodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoRunConfig {
    /// What is trained: `math` (problems from `data`, `tool` in the loop) or `bfcl`
    /// (multi-turn function-calling episodes from `[bfcl]`, rewarded by `[fc_rewards]`).
    pub task: Task,
    /// The Hugging Face model directory training starts from.
    pub model: PathBuf,
    /// The reference model of the KL terms (only loaded when one uses it: `grpo.beta > 0`
    /// or `kl_reward.coef > 0`); unset: `model`, the policy as it starts (with fresh `[lora]`
    /// adapters, the policy's own frozen base weights, shared rather than loaded again).
    pub reference_model: Option<PathBuf>,
    /// Updating the reference from the policy during the run (off by default).
    pub reference_sync: ReferenceSync,
    /// Training problems (JSONL; see `data_preset`).
    pub data: PathBuf,
    /// Field names of `data`: numina, math500, aime, amc, olympiad, or a field map
    /// `problem=question,answer=final_answer`.
    pub data_preset: String,
    /// The tool in the loop: python, calculator, mcp (the functions of the MCP server
    /// `[mcp]` starts), or none.
    pub tool: String,
    /// The Python sandbox (with `tool = "python"`).
    pub sandbox: SandboxConfig,
    /// The MCP server (with `tool = "mcp"`): its command line, the tag calls go in, the
    /// call timeout.
    pub mcp: McpConfig,
    /// An external judge of the answers (`[judge] command = [...]`; empty, the default:
    /// math equivalence): a program that reads `{"problem", "completion", "answer"}` lines
    /// and writes `{"correct": bool}` lines (artist_math::Judge); `workers = N` grades a
    /// step's rollouts N at a time.
    pub judge: artist_math::JudgeConfig,
    /// Overrides ARTIST's system prompt for the tool.
    pub system_prompt: Option<String>,
    /// Optimiser steps of the whole run.
    pub steps: u64,
    /// Prompts per rollout batch (each gives `group_size` rollouts).
    pub prompts_per_step: usize,
    /// Passes over each rollout batch (veRL's `ppo_epochs`, TRL's `num_iterations`); pi_old
    /// stays what it was before the first.
    pub optimizer_steps_per_batch: usize,
    /// AdamW steps per pass, each on its share of the batch's groups (group `q`, in the
    /// order one process plays them, in mini-batch `q % mini_batches`), normalised over
    /// that share: TRL's `steps_per_generation`, veRL's `train_batch_size /
    /// ppo_mini_batch_size`. 1 (the default): one step on the whole batch.
    pub mini_batches: usize,
    /// Where pi_old comes from: `sampler` (the logprobs the rollouts were drawn with),
    /// `recompute` (one forward pass of the policy over the batch before the updates, with
    /// the loss's attention and matmul dtypes, as veRL computes old_log_prob), or `auto`
    /// (the default): recompute when the sampler's numerics differ from the loss's
    /// ([`GrpoRunConfig::recomputes_old_logprobs`]).
    pub old_logprobs: OldLogprobs,
    /// Rollouts per forward/backward pass; gradients accumulate over the batch (0: all).
    pub micro_batch_rollouts: usize,
    /// Tokens per forward/backward pass (prompt and response of each rollout, as packed; 0:
    /// no bound): the rollouts are packed into passes within it and `micro_batch_rollouts`
    /// ([`MicroBatching::passes`], veRL's `use_dynamic_bsz` with
    /// `ppo_max_token_len_per_gpu`), so a pass's activation memory follows the tokens it
    /// holds rather than the count of rollouts. The forward passes computing pi_old and the
    /// reference's logprobs are cut the same way. At least `rollout.max_context`.
    pub micro_batch_tokens: usize,
    /// LoRA adapters (`[lora]`, PEFT's settings; `rank = 0`, the default: full
    /// fine-tuning): the base weights frozen, the adapters alone trained, checkpoints
    /// holding them as PEFT writes them and the run ending with the merged model in
    /// `RUN_DIR/merged/`.
    pub lora: artist_model::LoraSpec,
    /// Recompute each decoder layer's activations in the loss's backward instead of storing
    /// them (veRL's `enable_gradient_checkpointing`): one saved tensor per layer, for a
    /// second forward pass of the layers.
    pub grad_checkpointing: bool,
    /// Data parallel: all-reduce gradient buckets during the last micro-batch's backward
    /// (true) or after it (false); unset, overlapped on a GPU and not on a CPU (as SFT's).
    pub overlap_allreduce: Option<bool>,
    /// Leave out groups whose task rewards are all equal (their advantage is 0 but for a
    /// `kl_reward` penalty, which is then not computed for them).
    pub filter_flat_groups: bool,
    /// DAPO's dynamic sampling (with `filter_flat_groups`): a step plays up to this many
    /// batches of `prompts_per_step` prompts, one after another, until `prompts_per_step`
    /// groups whose rewards differ are found, and trains on the first that many (veRL's
    /// `max_num_gen_batches`). 1 (the default): one batch a step, however many are flat;
    /// at most [`MAX_SAMPLING_ROUNDS`].
    pub max_sampling_rounds: usize,
    /// The dtype attention computes in for the loss's forward and backward (`auto`, `f32`
    /// or `bf16`; see [`crate::ComputeDtype`]).
    pub attention_dtype: crate::ComputeDtype,
    /// The dtype the loss's linear layers and LM head multiply in, forward and backward
    /// (`auto`, `f32` or `bf16`; the rollouts' own is `rollout.matmul_dtype`).
    pub matmul_dtype: crate::ComputeDtype,
    pub rollout: RolloutSettings,
    pub grpo: GrpoConfig,
    pub advantages: AdvantageConfig,
    /// The KL to the reference taken off each rollout's reward before the advantages
    /// (off by default; the loss's own KL term is `grpo.beta`).
    pub kl_reward: KlReward,
    /// Math rewards (`task = "math"`).
    pub rewards: MathRewardWeights,
    /// BFCL episodes (`task = "bfcl"`).
    pub bfcl: crate::fc::BfclSettings,
    /// Function-calling rewards (`task = "bfcl"`).
    pub fc_rewards: artist_rl::FcRewardWeights,
    pub optim: OptimSettings,
    /// Held-out evaluation during the run (math: `eval.data`; BFCL: `[eval.bfcl]`).
    pub eval: EvalSettings,
    /// Long rollouts: masked out of the loss, or their reward lowered near the limit.
    pub overlong: OverlongSettings,
    pub seed: u64,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: u64,
    pub keep_last: usize,
    /// Rollouts of each step written to `RUN_DIR/rollouts.jsonl` (the first ones in round,
    /// prompt and sample order, gathered from every rank, so the file is one process's):
    /// the text with its rewards, tool calls and token counts (0: none).
    pub log_rollouts: usize,
}

impl Default for GrpoRunConfig {
    fn default() -> Self {
        GrpoRunConfig {
            task: Task::Math,
            model: PathBuf::new(),
            reference_model: None,
            reference_sync: ReferenceSync::default(),
            data: PathBuf::new(),
            data_preset: "math500".into(),
            tool: "python".into(),
            sandbox: SandboxConfig::default(),
            mcp: McpConfig::default(),
            judge: artist_math::JudgeConfig::default(),
            system_prompt: None,
            steps: 100,
            prompts_per_step: 8,
            optimizer_steps_per_batch: 1,
            mini_batches: 1,
            old_logprobs: OldLogprobs::Auto,
            micro_batch_rollouts: 0,
            micro_batch_tokens: 0,
            grad_checkpointing: false,
            lora: Default::default(),
            overlap_allreduce: None,
            filter_flat_groups: false,
            max_sampling_rounds: 1,
            attention_dtype: crate::ComputeDtype::Auto,
            matmul_dtype: crate::ComputeDtype::Auto,
            rollout: RolloutSettings::default(),
            grpo: GrpoConfig::default(),
            advantages: AdvantageConfig::default(),
            kl_reward: KlReward::default(),
            rewards: MathRewardWeights::default(),
            bfcl: Default::default(),
            fc_rewards: Default::default(),
            optim: OptimSettings::default(),
            eval: EvalSettings::default(),
            overlong: OverlongSettings::default(),
            seed: 0,
            save_every: 0,
            keep_last: 2,
            log_rollouts: 4,
        }
    }
}

impl GrpoRunConfig {
    /// Parses TOML; an unknown key is an error that names it.
    pub fn from_toml(text: &str, source: &Path) -> Result<GrpoRunConfig> {
        toml::from_str(text).map_err(|e| Error::Config(format!("{}: {e}", source.display())))
    }

    /// Applies `key.path=value` overrides (the value in TOML syntax; a bare word is a
    /// string), each checked against the schema.
    pub fn with_overrides(self, sets: &[String]) -> Result<GrpoRunConfig> {
        let mut doc = toml::Value::try_from(&self).map_err(|e| Error::Config(e.to_string()))?;
        for s in sets {
            let (key, raw) =
                s.split_once('=').ok_or_else(|| Error::Config(format!("--set {s:?}: expected key=value")))?;
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            let mut node = &mut doc;
            let parts: Vec<&str> = key.split('.').collect();
            for (i, p) in parts.iter().enumerate() {
                let table =
                    node.as_table_mut().ok_or_else(|| Error::Config(format!("--set {key}: {p} is not a table")))?;
                if i + 1 == parts.len() {
                    table.insert(p.to_string(), value.clone());
                    break;
                }
                node = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
            }
        }
        doc.try_into().map_err(|e: toml::de::Error| Error::Config(format!("--set: {e}")))
    }

    /// Whether pi_old is recomputed by the trainer (see `old_logprobs`) for a model on
    /// `device`: always with `recompute`, never with `sampler`; with `auto` when the sampler
    /// computes otherwise than the loss: its products in another dtype, its keys and values
    /// stored as bf16, or the loss's attention in bf16 (so on a GPU, where `auto` dtypes
    /// are bf16, it is recomputed).
    pub fn recomputes_old_logprobs(&self, device: artist_tensor::Device) -> bool {
        let f32 = crate::ComputeDtype::F32;
        match self.old_logprobs {
            OldLogprobs::Sampler => false,
            OldLogprobs::Recompute => true,
            OldLogprobs::Auto => {
                self.rollout.matmul_dtype.on(device) != self.matmul_dtype.on(device)
                    || self.rollout.kv_cache_dtype.on(device) != f32
                    || self.attention_dtype.on(device) != f32
            }
        }
    }

    /// `ctx` with the loss's numerics on `device` (its attention and matmul dtypes): for the
    /// loss itself and for everything it compares with (pi_old recomputed, the reference's
    /// logprobs).
    pub fn loss_numerics(&self, ctx: Ctx, device: artist_tensor::Device) -> Ctx {
        ctx.with_attention_dtype(self.attention_dtype.dtype(device)).with_matmul_dtype(self.matmul_dtype.dtype(device))
    }

    /// How a batch is cut into forward/backward passes (`micro_batch_rollouts`,
    /// `micro_batch_tokens`).
    pub fn micro_batching(&self) -> MicroBatching {
        MicroBatching { sequences: self.micro_batch_rollouts, tokens: self.micro_batch_tokens }
    }

    /// Whether a KL term needs the reference model (`grpo.beta > 0` or `kl_reward.coef > 0`).
    pub fn uses_reference(&self) -> bool {
        self.grpo.beta > 0.0 || self.kl_reward.coef > 0.0
    }

    /// Checks the settings for a model on `device`.
    pub fn validate(&self, device: artist_tensor::Device) -> Result<()> {
        let r = &self.rollout;
        if !(self.grpo.beta >= 0.0 && self.grpo.beta.is_finite()) {
            return Err(Error::Config(format!("grpo.beta must be a finite number >= 0, got {}", self.grpo.beta)));
        }
        if !(self.grpo.tis_cap >= 0.0 && self.grpo.tis_cap.is_finite()) {
            return Err(Error::Config(format!("grpo.tis_cap must be a finite number >= 0, got {}", self.grpo.tis_cap)));
        }
        let low = self.grpo.tis_cap_low;
        if low != 0.0 && !(self.grpo.tis_mode == artist_rl::TisMode::Mask && low > 0.0 && low < self.grpo.tis_cap) {
            return Err(Error::Config(format!(
                "grpo.tis_cap_low ({low}) is the lower bound of tis_mode = \"mask\": 0 (none) or between 0 and \
                 tis_cap ({})",
                self.grpo.tis_cap
            )));
        }
        let veto = self.grpo.tis_veto;
        if !(veto == 0.0 || (veto > 0.0 && veto < 1.0)) {
            return Err(Error::Config(format!(
                "grpo.tis_veto ({veto}) is the token ratio below which a rollout's importance weights are \
                 zeroed: 0 (none) or between 0 and 1 (veRL suggests 1e-4)"
            )));
        }
        if veto > 0.0 && self.grpo.tis_cap == 0.0 {
            return Err(Error::Config("grpo.tis_veto needs importance weights: set grpo.tis_cap".into()));
        }
        if self.grpo.tis_drop_rejected
            && !(self.grpo.tis_cap > 0.0 && (self.grpo.tis_mode == artist_rl::TisMode::Mask || veto > 0.0))
        {
            return Err(Error::Config(
                "grpo.tis_drop_rejected drops the tokens importance sampling rejects: set grpo.tis_cap with \
                 tis_mode = \"mask\" or a tis_veto"
                    .into(),
            ));
        }
        if !(self.grpo.entropy_coeff >= 0.0 && self.grpo.entropy_coeff.is_finite()) {
            return Err(Error::Config(format!(
                "grpo.entropy_coeff (entropy bonus) must be a finite number >= 0, got {}",
                self.grpo.entropy_coeff
            )));
        }
        let kr = &self.kl_reward;
        if !(kr.coef >= 0.0 && kr.coef.is_finite()) {
            return Err(Error::Config(format!("kl_reward.coef must be a finite number >= 0, got {}", kr.coef)));
        }
        if !(kr.target >= 0.0 && kr.target.is_finite()) {
            return Err(Error::Config(format!(
                "kl_reward.target (the adaptive coefficient's KL per token) must be a finite number >= 0, got {}",
                kr.target
            )));
        }
        if kr.adaptive() {
            if kr.coef == 0.0 {
                return Err(Error::Config(
                    "kl_reward.target adapts kl_reward.coef, which is 0 (off): set kl_reward.coef > 0 to start from"
                        .into(),
                ));
            }
            // A step's factor, 1 - 0.2 n / horizon at the least, must stay positive.
            let n = self.prompts_per_step * self.rollout.group_size * self.max_sampling_rounds.max(1);
            if !(kr.horizon.is_finite() && KlReward::MAX_ERROR * n as f64 / kr.horizon < 1.0) {
                return Err(Error::Config(format!(
                    "kl_reward.horizon must be a finite number above 0.2 times the rollouts a step may play ({n}), \
                     got {}",
                    kr.horizon
                )));
            }
        }
        let sync = &self.reference_sync;
        if sync.every > 0 && !self.uses_reference() {
            return Err(Error::Config(
                "reference_sync.every moves the KL reference, and with grpo.beta = 0 and kl_reward.coef = 0 there \
                 is none: set grpo.beta > 0 or kl_reward.coef > 0"
                    .into(),
            ));
        }
        if self.lora.rank > 0 {
            self.lora.validate().map_err(|e| Error::Config(e.to_string()))?;
            if sync.every > 0 {
                return Err(Error::Config(
                    "reference_sync with [lora] is not supported: the reference is the frozen base model (set \
                     reference_sync.every = 0 or lora.rank = 0)"
                        .into(),
                ));
            }
        }
        if !(sync.alpha > 0.0 && sync.alpha <= 1.0) {
            return Err(Error::Config(format!("reference_sync.alpha must be in (0, 1], got {}", sync.alpha)));
        }
        let cc = self.grpo.clip_ratio_c;
        if !(cc == 0.0 || (cc > 1.0 && cc.is_finite())) {
            return Err(Error::Config(format!(
                "grpo.clip_ratio_c (dual-clip PPO) must be 0 (off) or a finite number above 1, got {cc}"
            )));
        }
        if self.grpo.tis_cap > 0.0 && !self.recomputes_old_logprobs(device) {
            return Err(Error::Config(
                "grpo.tis_cap weighs pi_old recomputed by the trainer against the sampler's logprobs: \
                 set old_logprobs = \"recompute\" (or \"auto\" with bf16 rollouts)"
                    .into(),
            ));
        }
        if self.steps == 0 || self.prompts_per_step == 0 || r.group_size == 0 || self.optimizer_steps_per_batch == 0 {
            return Err(Error::Config(
                "steps, prompts_per_step, rollout.group_size and optimizer_steps_per_batch must be >= 1".into(),
            ));
        }
        self.advantages.check().map_err(Error::Config)?;
        if !(1..=MAX_SAMPLING_ROUNDS).contains(&self.max_sampling_rounds) {
            return Err(Error::Config(format!(
                "max_sampling_rounds must be 1 (one batch of prompts a step) to {MAX_SAMPLING_ROUNDS}, got {}",
                self.max_sampling_rounds
            )));
        }
        if self.max_sampling_rounds > 1 && !self.filter_flat_groups {
            return Err(Error::Config(format!(
                "max_sampling_rounds = {} samples more prompts to replace groups whose rewards are all equal: \
                 it needs filter_flat_groups = true",
                self.max_sampling_rounds
            )));
        }
        if r.max_batch < r.group_size {
            return Err(Error::Config(format!(
                "rollout.max_batch ({}) must hold a group of {}",
                r.max_batch, r.group_size
            )));
        }
        let top = self.grpo.top_entropy_quantile;
        if !(top > 0.0 && top <= 1.0) {
            return Err(Error::Config(format!(
                "grpo.top_entropy_quantile must lie in (0, 1] (the fraction of tokens whose policy gradient counts), got {top}"
            )));
        }
        if self.mini_batches == 0 || self.optimizer_steps_per_batch == 0 {
            return Err(Error::Config(format!(
                "mini_batches and optimizer_steps_per_batch must be at least 1, got {} and {}",
                self.mini_batches, self.optimizer_steps_per_batch
            )));
        }
        if self.micro_batch_tokens > 0 && self.micro_batch_tokens < r.max_context {
            return Err(Error::Config(format!(
                "micro_batch_tokens ({}) must hold the longest rollout, rollout.max_context = {} tokens",
                self.micro_batch_tokens, r.max_context
            )));
        }
        if !(self.overlong.penalty >= 0.0 && self.overlong.penalty.is_finite()) {
            return Err(Error::Config(format!(
                "overlong.penalty must be a finite number >= 0, got {}",
                self.overlong.penalty
            )));
        }
        if self.task == Task::Bfcl && self.overlong.buffer > 0 {
            return Err(Error::Config(
                "overlong.buffer (soft overlong punishment) is for math rollouts; BFCL runs can set overlong.mask_truncated"
                    .into(),
            ));
        }
        let e = &self.eval;
        if !(e.temperature >= 0.0 && e.temperature.is_finite()) || e.samples == 0 {
            return Err(Error::Config(format!(
                "eval.temperature must be a finite number >= 0 and eval.samples >= 1, got {} and {}",
                e.temperature, e.samples
            )));
        }
        if self.task == Task::Bfcl && e.data.is_some() {
            return Err(Error::Config("eval.data holds math problems: BFCL held-out entries go in [eval.bfcl]".into()));
        }
        if self.task == Task::Math && e.bfcl.is_some() {
            return Err(Error::Config(
                "[eval.bfcl] is for task = \"bfcl\": math held-out problems go in eval.data".into(),
            ));
        }
        if self.task == Task::Bfcl {
            if self.bfcl.questions.is_empty() {
                return Err(Error::Config("task = \"bfcl\" needs bfcl.questions (BFCL multi-turn files)".into()));
            }
            if self.bfcl.max_steps_per_turn == 0 {
                return Err(Error::Config("bfcl.max_steps_per_turn must be >= 1".into()));
            }
            let b = &self.bfcl;
            if !b.user_command.is_empty() {
                if !(1..=artist_tools::workers::MAX_WORKERS).contains(&b.user_workers) {
                    return Err(Error::Config(format!(
                        "bfcl.user_workers must be from 1 to {}, got {}",
                        artist_tools::workers::MAX_WORKERS,
                        b.user_workers
                    )));
                }
                if !(b.user_timeout_s > 0.0 && b.user_timeout_s.is_finite()) {
                    return Err(Error::Config(format!(
                        "bfcl.user_timeout_s must be a positive number, got {}",
                        b.user_timeout_s
                    )));
                }
                if b.max_user_turns == 0 {
                    return Err(Error::Config("bfcl.max_user_turns must be >= 1".into()));
                }
            }
            let mcp_env = |b: &crate::fc::BfclSettings| b.environment == crate::fc::FcEnvironment::Mcp;
            // Held-out entries play where the training entries do.
            if let Some(held_out) = &e.bfcl
                && mcp_env(held_out)
                && !mcp_env(&self.bfcl)
            {
                return Err(Error::Config(
                    "eval.bfcl.environment = \"mcp\" but bfcl.environment is not: held-out entries play where \
                     the training entries do"
                        .into(),
                ));
            }
            if mcp_env(&self.bfcl) {
                if !self.mcp.has_server() {
                    return Err(Error::Config(
                        "bfcl.environment = \"mcp\" needs mcp.command, the server's command line (or mcp.url, the \
                         endpoint of one running)"
                            .into(),
                    ));
                }
                if self.mcp.sessions != artist_tools::McpSessions::Rollout {
                    return Err(Error::Config(
                        "bfcl.environment = \"mcp\" gives every episode a server of its own: set mcp.sessions = \"rollout\""
                            .into(),
                    ));
                }
                if self.mcp.state_tool.is_none() {
                    return Err(Error::Config(
                        "bfcl.environment = \"mcp\" needs mcp.state_tool, the tool whose answer is the environment's \
                         state (compared with the ground truth's after every turn)"
                            .into(),
                    ));
                }
            }
        } else if self.mcp.setup_tool.is_some() {
            return Err(Error::Config(
                "mcp.setup_tool is for task = \"bfcl\" with bfcl.environment = \"mcp\" (it takes an entry's initial_config)"
                    .into(),
            ));
        } else if !["python", "calculator", "mcp", "none"].contains(&self.tool.as_str()) {
            return Err(Error::Config(format!("tool {:?}: expected python, calculator, mcp or none", self.tool)));
        } else if !self.judge.command.is_empty()
            && (self.judge.timeout_s.is_nan() || self.judge.timeout_s <= 0.0 || self.judge.timeout_s.is_infinite())
        {
            return Err(Error::Config(format!(
                "judge.timeout_s must be a positive number, got {}",
                self.judge.timeout_s
            )));
        } else if !(1..=artist_math::MAX_JUDGE_WORKERS).contains(&self.judge.workers) {
            return Err(Error::Config(format!(
                "judge.workers must be from 1 to {}, got {}",
                artist_math::MAX_JUDGE_WORKERS,
                self.judge.workers
            )));
        } else if self.tool == "mcp" && !self.mcp.has_server() {
            return Err(Error::Config(
                "tool = \"mcp\" needs mcp.command, the server's command line (e.g. [\"python3\", \"server.py\"]), \
                 or mcp.url, the endpoint of one running (e.g. \"http://127.0.0.1:8000/mcp\")"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The most batches a step may play with dynamic sampling: the loop draws them all up front
/// (veRL's runs use 10 to 20).
pub const MAX_SAMPLING_ROUNDS: usize = 1000;

/// Where GRPO's pi_old comes from (`old_logprobs` in a config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OldLogprobs {
    /// Recompute when the sampler's numerics differ from the loss's.
    #[default]
    Auto,
    /// The logprobs the sampler drew each token with.
    Sampler,
    /// The policy's, recomputed by the trainer before its updates.
    Recompute,
}

/// What one rollout batch and its updates measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    /// The step's first `log_rollouts` rollouts on this rank, one JSON object each, for
    /// `rollouts.jsonl` (not a metrics key).
    #[serde(skip)]
    pub rollouts: Vec<serde_json::Value>,
    pub reward: f64,
    /// Math: the answer reward.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_answer: Option<f64>,
    /// Function calling: the state and function rewards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_state: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_function: Option<f64>,
    pub reward_relaxed_format: f64,
    pub reward_strict_format: f64,
    /// Math with `overlong.buffer > 0`: the mean soft overlong punishment (at most 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_overlong: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_tool_execution: Option<f64>,
    pub accuracy: f64,
    pub response_tokens: f64,
    pub tool_calls_per_rollout: f64,
    /// Tokens the model wrote per tool call, over the rollouts that made one (ARTIST's
    /// "reasoning length per tool call": how much thinking and code goes into a call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_tool_call: Option<f64>,
    /// Math: the model's turns (runs of its own tokens between tool outputs) per rollout,
    /// over the rollouts that gave an answer (ARTIST's "steps to the answer").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_to_answer: Option<f64>,
    /// BFCL: the model's turns (each a call or a reply) per user turn played.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_per_turn: Option<f64>,
    pub tool_success: f64,
    pub kl: f64,
    /// With `kl_reward`: the mean over rollouts of their summed KL to the reference (the
    /// penalty is `kl_reward.coef` times it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_reward: Option<f64>,
    /// With `kl_reward`: the mean over rollouts of their KL per generated token (what an
    /// adaptive coefficient steers to `kl_reward.target`; veRL's `reward_kl_penalty`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_reward_per_token: Option<f64>,
    /// With `kl_reward`: the coefficient this step's penalty used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_reward_coef: Option<f64>,
    /// With `grpo.top_entropy_quantile < 1`: the entropy at or above which a token's
    /// policy gradient counted this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy_threshold: Option<f64>,
    /// The policy's mean token entropy (nats, at the sampling temperature) over the
    /// trained tokens, before the step's first update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy: Option<f64>,
    pub clip_fraction: f64,
    /// With pi_old recomputed: the mean |recomputed - sampler's| logprob of the generated
    /// tokens (how far the sampler's numerics are from the trainer's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler_logprob_gap: Option<f64>,
    /// With pi_old recomputed: k3's estimate of KL(pi_sampler || pi_old), the mean of
    /// `exp(d) - d - 1`, `d = recomputed - sampler's`, over the generated tokens (veRL's
    /// `mismatch_k3_kl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler_kl: Option<f64>,
    /// With `grpo.tis_cap > 0`: the mean truncated importance weight over the generated
    /// tokens, after its bounds (veRL's `rollout_is_mean`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tis_weight_mean: Option<f64>,
    /// With `grpo.tis_cap > 0`: the fraction of generated tokens whose weight the bounds
    /// changed, capped (`truncate`) or zeroed (`mask`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tis_bounded_fraction: Option<f64>,
    /// With `grpo.tis_cap > 0`: the effective sample size of the weights the loss applies,
    /// as a fraction of the generated tokens, `(sum w)^2 / (n sum w^2)` (1: all equal; near
    /// 0: a few tokens carry the gradient). veRL's `rollout_is_eff_sample_size` is the same
    /// formula on weights clamped to its bounds rather than zeroed by them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tis_ess: Option<f64>,
    /// With `grpo.tis_veto > 0`: the fraction of rollouts (with generated tokens) the veto
    /// zeroed (veRL's `rollout_is_veto_fraction`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tis_veto_fraction: Option<f64>,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub flat_groups: usize,
    /// With `max_sampling_rounds > 1`: the batches of prompts played this step, and the
    /// groups trained on (`prompts_per_step` when enough had differing rewards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_rounds: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trained_groups: Option<usize>,
    pub truncated: usize,
    pub rollout_s: f64,
    pub train_s: f64,
    pub tokens_per_s: f64,
    /// Held-out evaluation after this step (`[eval]`): accuracy, mean reward, the fraction
    /// of answers that called the tool, and its seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_reward: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_tool_use: Option<f64>,
    /// With `eval.samples = k > 1` at a temperature above 0: the held-out problems with a
    /// correct answer among their k, and (math) those whose majority answer is correct.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_pass_at_k: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_maj_at_k: Option<f64>,
    /// With `eval.samples = k > 1`: the held-out problems whose k answers are all correct
    /// (pass^k, tau-bench's consistency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_pass_hat_k: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_s: Option<f64>,
}

impl StepMetrics {
    /// The update's figures on the sampler's numerics: its logprob gap and KL to pi_old and
    /// the importance weights'.
    pub(crate) fn set_importance_metrics(&mut self, u: &UpdateStats) {
        (self.sampler_logprob_gap, self.sampler_kl) = (u.sampler_logprob_gap, u.sampler_kl);
        (self.tis_weight_mean, self.tis_bounded_fraction) = (u.tis_weight_mean, u.tis_bounded_fraction);
        (self.tis_ess, self.tis_veto_fraction) = (u.tis_ess, u.tis_veto_fraction);
    }

    /// The KL penalty's figures from a step's sums over the `n` rollouts it measured (none
    /// when off, or when every group played was flat).
    pub(crate) fn set_kl_reward(&mut self, k: &KlReward, kl_sum: f64, kl_per_token: f64, n: f64) {
        if k.coef > 0.0 && n > 0.0 {
            self.kl_reward = Some(kl_sum / n);
            self.kl_reward_per_token = Some(kl_per_token / n);
            self.kl_reward_coef = Some(k.coef);
        }
    }

    fn set_eval(&mut self, e: &Evaluation, k: usize, secs: f64) {
        self.eval_pass_at_k = (k > 1).then_some(e.pass_at_k);
        self.eval_maj_at_k = e.maj_at_k.filter(|_| k > 1);
        self.eval_pass_hat_k = (k > 1).then_some(e.pass_hat_k);
        self.eval_accuracy = Some(e.accuracy);
        self.eval_reward = Some(e.reward);
        self.eval_tool_use = Some(e.tool_use);
        self.eval_s = Some(secs);
    }
}

/// A rollout as the KL penalty reads it: prompt ids, ids, mask and the sampler's logprobs.
pub(crate) type RolloutView<'a> = (&'a [u32], &'a [u32], &'a [u8], &'a [f32]);

/// A round's KL penalty: per rollout the summed KL to the reference, its mean per
/// generated token, the score its advantage is computed from (the task's total less
/// `kl_reward.coef` times the summed KL), whether it was measured (the rollouts of groups
/// that train), and the logprobs it computed that the update would compute again
/// ([`Known`]).
pub(crate) struct KlPenalty {
    pub kls: Vec<f64>,
    pub per_token: Vec<f64>,
    pub scores: Vec<f64>,
    pub measured: Vec<bool>,
    pub known: Known,
}

impl KlPenalty {
    /// How many rollouts were measured (the KL metrics' denominator).
    pub fn count(&self) -> f64 {
        self.measured.iter().filter(|&&m| m).count() as f64
    }
}

/// Whether rollout `i`'s group leaves the step under `filter_flat_groups`: its task rewards
/// `totals` (before any KL penalty, as DAPO filters on accuracy and veRL on `seq_reward`)
/// are all equal.
pub(crate) fn in_flat_group(c: &GrpoRunConfig, totals: &[f64], i: usize) -> bool {
    let g = c.rollout.group_size;
    c.filter_flat_groups && artist_rl::advantages::group_is_flat(&totals[i / g * g..(i / g + 1) * g])
}

/// How many of a round's groups (rollouts in groups of G whose task rewards are `totals`)
/// have a learning signal: all of them unless `filter_flat_groups` leaves the flat ones out
/// ([`in_flat_group`]).
pub(crate) fn signal_groups(c: &GrpoRunConfig, totals: &[f64]) -> usize {
    let g = c.rollout.group_size;
    (0..totals.len().div_ceil(g)).filter(|&k| !in_flat_group(c, totals, k * g)).count()
}

/// A round's record with the step's [`GroupQuota`]: given this rank's count of groups with
/// a signal ([`signal_groups`]), how many of them the step keeps. Every rank calls it once
/// a round, before any work that only kept groups need.
pub(crate) type RecordRound<'r> = &'r mut dyn FnMut(usize) -> Result<usize>;

/// Per rollout, logprobs of its tokens where they were computed before the update.
pub(crate) type PerRollout = Vec<Option<Vec<f32>>>;

/// Logprobs computed while scoring a round that the update reads instead of computing
/// them again: the reference's (kept when `grpo.beta > 0`) and pi_old recomputed (when the
/// run recomputes it).
#[derive(Debug, Default)]
pub(crate) struct Known {
    pub reference: PerRollout,
    pub old: PerRollout,
}

/// [`KlPenalty`] of `rollouts` of `policy` whose task rewards are `totals` (zeros and the
/// totals themselves without a KL penalty), measured for the first `kept` groups with a
/// learning signal only ([`signal_groups`]; `usize::MAX`: all): under `filter_flat_groups`
/// the groups whose task rewards are all equal leave the step whatever their KL, and under
/// dynamic sampling the groups past the step's quota leave it too, so theirs is not
/// computed.
///
/// Each rollout's KL is summed over its generated tokens, with `kl_reward.estimator`, from
/// pi_old and the reference's logprobs (both computed with the loss's numerics, at the
/// sampling temperature, nothing recorded for backward). pi_old is what the loss will read
/// as it (veRL's penalty reads its recomputed `old_log_prob` too): the sampler's logprobs,
/// or the policy's recomputed where the run recomputes them
/// ([`GrpoRunConfig::recomputes_old_logprobs`]).
pub(crate) fn kl_scores(
    policy: &Qwen2,
    reference: Option<&Qwen2>,
    c: &GrpoRunConfig,
    totals: &[f64],
    rollouts: &[RolloutView<'_>],
    kept: usize,
) -> Result<KlPenalty> {
    let n = rollouts.len();
    let g = c.rollout.group_size;
    // Per group, whether it is among the first `kept` with a signal.
    let mut signal = 0usize;
    let kept_group: Vec<bool> = (0..n.div_ceil(g))
        .map(|k| {
            let live = !in_flat_group(c, totals, k * g);
            signal += usize::from(live);
            live && signal <= kept
        })
        .collect();
    let mut out = KlPenalty {
        kls: vec![0.0; n],
        per_token: vec![0.0; n],
        scores: totals.to_vec(),
        measured: (0..n).map(|i| kept_group[i / g]).collect(),
        known: Known { reference: vec![None; n], old: vec![None; n] },
    };
    if c.kl_reward.coef == 0.0 {
        return Ok(out);
    }
    let _range = artist_tensor::nvtx::range("kl reward");
    let reference = reference.ok_or_else(|| {
        Error::Config("kl_reward.coef > 0 but no reference model is loaded (grpo::train loads one)".into())
    })?;
    let live: Vec<usize> = (0..n).filter(|&i| out.measured[i] && rollouts[i].2.contains(&1)).collect();
    let train: Vec<TrainRollout> = live
        .iter()
        .map(|&i| {
            let (prompt_ids, ids, mask, logprobs) = rollouts[i];
            TrainRollout {
                prompt_ids: prompt_ids.to_vec(),
                ids: ids.to_vec(),
                mask: mask.to_vec(),
                old_logprobs: logprobs.to_vec(),
                ..Default::default()
            }
        })
        .collect();
    let refs: Vec<&TrainRollout> = train.iter().collect();
    let (temperature, micro) = (c.rollout.temperature, c.micro_batching());
    let ctx = c.loss_numerics(Ctx::inference(), reference.device());
    let ref_lps = rollout_logprobs(reference, &ctx, &refs, temperature, micro)?;
    let old_lps = if c.recomputes_old_logprobs(policy.device()) {
        let _range = artist_tensor::nvtx::range("pi_old recompute");
        let ctx = c.loss_numerics(Ctx::inference(), policy.device());
        rollout_logprobs(policy, &ctx, &refs, temperature, micro)?.into_iter().map(Some).collect()
    } else {
        vec![None; live.len()]
    };
    for (((&i, r), rl), ol) in live.iter().zip(&train).zip(ref_lps).zip(old_lps) {
        let old = ol.as_deref().unwrap_or(&r.old_logprobs);
        let generated: Vec<usize> = (0..r.ids.len()).filter(|&j| r.mask[j] == 1).collect();
        out.kls[i] = generated.iter().map(|&j| c.kl_reward.estimator.estimate(old[j] as f64, rl[j] as f64)).sum();
        out.per_token[i] = out.kls[i] / generated.len() as f64;
        out.scores[i] -= c.kl_reward.coef * out.kls[i];
        if c.grpo.beta > 0.0 {
            out.known.reference[i] = Some(rl);
        }
        out.known.old[i] = ol;
    }
    Ok(out)
}

/// The model's turns in a response: the runs of its own tokens (mask 1), which tool
/// outputs and other forced text (mask 0) separate.
pub fn model_turns(mask: &[u8]) -> usize {
    (0..mask.len()).filter(|&j| mask[j] == 1 && (j == 0 || mask[j - 1] != 1)).count()
}

/// Whether a limit ended `r` (tokens, context, tool calls) rather than EOS or the stop text.
fn ended_by_a_limit(r: &Rollout) -> bool {
    !matches!(r.finish, artist_engine::Finish::Eos | artist_engine::Finish::Stop)
}

/// The segments of a rollout for reward parsing: model text and forced outputs.
pub fn segments(tok: &Tokenizer, r: &Rollout) -> Vec<Segment> {
    segments_of(tok, &r.ids, &r.mask)
}

/// The runs of `ids` with the same mask, decoded: model text (1) and forced text (0).
pub fn segments_of(tok: &Tokenizer, ids: &[u32], mask: &[u8]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut start = 0;
    for j in 1..=ids.len() {
        if j == ids.len() || mask[j] != mask[start] {
            let text = tok.decode_lossy(&ids[start..j], true);
            out.push(if mask[start] == 1 { Segment::Model(text) } else { Segment::Forced(text) });
            start = j;
        }
    }
    out
}

/// The trainer: a model, its tokenizer and template, the tool, the data.
pub struct GrpoTrainer<'a> {
    pub config: GrpoRunConfig,
    pub model: Qwen2,
    /// The frozen reference of the KL term. [`train`] loads it when `grpo.beta > 0` and
    /// it is unset.
    pub reference: Option<Qwen2>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub tool: Option<Arc<dyn Tool>>,
    pub train: Vec<Problem>,
    /// Held-out problems for `[eval]` (empty: no evaluation).
    pub held_out: Vec<Problem>,
    pub verify: &'a Verifier,
}

impl GrpoTrainer<'_> {
    /// The prompt of `problem`: the system prompt and the problem as a user turn, in the
    /// model's chat template, ready for the assistant's answer.
    pub fn prompt_ids(&self, problem: &str) -> Result<Vec<u32>> {
        let tag = self.tool.as_ref().map_or("python", |t| t.tag());
        let described = self.tool.as_ref().and_then(|t| t.describe());
        let system = (self.config.system_prompt.clone())
            .unwrap_or_else(|| artist_rl::prompts::math_prompt_for(tag, described.as_deref()));
        // An empty system prompt means none.
        let mut messages = vec![Message::user(problem)];
        if !system.is_empty() {
            messages.insert(0, Message::system(system));
        }
        let text = self.template.render(&messages, None, true)?;
        Ok(self.tokenizer.encode(&text)?)
    }

    /// Rollouts of `problems` at `seed`, with their rewards and correctness.
    pub fn rollouts(&self, problems: &[&Problem], seed: u64) -> Result<RolloutBatch> {
        self.rollouts_with(problems, seed, self.config.rollout.temperature, self.config.rollout.group_size)
    }

    fn rollouts_with(
        &self,
        problems: &[&Problem],
        seed: u64,
        temperature: f32,
        group_size: usize,
    ) -> Result<RolloutBatch> {
        let c = &self.config;
        let r = &c.rollout;
        let prompts = problems.iter().map(|p| self.prompt_ids(&p.problem)).collect::<Result<Vec<_>>>()?;
        let engine = RolloutEngine {
            policy: &self.model,
            tokenizer: &self.tokenizer,
            tools: self.tool.iter().cloned().collect(),
            config: RolloutConfig {
                group_size,
                sampling: SamplingParams { temperature, top_p: r.top_p, top_k: r.top_k, min_p: 0.0, seed },
                max_turn_tokens: r.max_turn_tokens,
                max_response_tokens: r.max_response_tokens,
                max_tool_calls: r.max_tool_calls,
                max_context: r.max_context,
                max_batch: r.max_batch.max(group_size),
                share_prefix: r.share_prefix,
                deterministic: r.deterministic,
                eos_ids: self.model.config.eos_token_ids.clone(),
                stop_texts: vec!["</answer>".into()],
                matmul_dtype: r.matmul_dtype.dtype(self.model.device()),
                kv_cache_dtype: r.kv_cache_dtype.storage(self.model.device()),
                ..Default::default()
            },
        };
        let t = Instant::now();
        let (rollouts, _) = engine.run(&prompts).map_err(|e| Error::Config(format!("rollouts: {e}")))?;
        let secs = t.elapsed().as_secs_f64();
        let texts: Vec<String> = rollouts.iter().map(|ro| self.tokenizer.decode_lossy(&ro.ids, true)).collect();
        // An external judge's workers grade at once; equivalence is quick enough in turn.
        let threads = if c.judge.command.is_empty() { 1 } else { c.judge.workers };
        let verdicts = artist_math::judge::in_parallel(threads, rollouts.len(), |i| {
            let (ro, problem) = (&rollouts[i], problems[rollouts[i].prompt_index]);
            (self.verify)(&artist_math::Question {
                problem: &problem.problem,
                completion: &texts[i],
                answer: &problem.answer,
                state: ro.final_state.as_deref(),
            })
        })
        .into_iter()
        .collect::<std::result::Result<Vec<artist_math::Verdict>, String>>()
        .map_err(Error::Judge)?;
        let mut rewards = Vec::with_capacity(rollouts.len());
        for (ro, v) in rollouts.iter().zip(&verdicts) {
            let successes: Vec<bool> = ro.tool_calls.iter().map(|t| t.result.success).collect();
            let tag = self.tool.as_ref().map_or("python", |t| t.tag());
            rewards.push(math_rewards_with_tool(tag, &segments(&self.tokenizer, ro), &successes, v.score, &c.rewards));
        }
        let correct = verdicts.iter().map(|v| v.correct).collect();
        Ok(RolloutBatch { rollouts, rewards, correct, texts, seconds: secs })
    }

    /// One GRPO step on `problems`: rollouts, rewards, advantages, updates.
    pub fn step(&mut self, step: u64, problems: &[&Problem], optimizer: &mut AdamW, lr: f64) -> Result<StepMetrics> {
        self.step_sharded(step, problems, optimizer, lr, None)
    }

    /// [`GrpoTrainer::step`] with `problems` the global batch split over the ranks of
    /// `comm` ([`shard_range`]; a prompt's whole group on one rank). Each rank samples its
    /// prompts with the seeds one process would give them, normalises the loss over the
    /// global batch and sums gradients over ranks; the metrics are those of the global
    /// batch (`rollout_s` the mean over ranks).
    pub fn step_sharded(
        &mut self,
        step: u64,
        problems: &[&Problem],
        optimizer: &mut AdamW,
        lr: f64,
        comm: Option<&mut (dyn Communicator + '_)>,
    ) -> Result<StepMetrics> {
        self.step_rounds(step, &[problems.to_vec()], optimizer, lr, comm)
    }

    /// One round's rollouts scored: per group with a learning signal (every group unless
    /// `filter_flat_groups`), the rollouts to train on, and the round's sums for the
    /// step's metrics (in the order `step_rounds` reads them).
    ///
    /// Rollouts of the round are added to `log` (the step's, each tagged with `step`, `round`
    /// and its prompt's place in the step) until it holds `log_rollouts`.
    fn score_round(
        &self,
        batch: RolloutBatch,
        problems: &[&Problem],
        at: LogPlace,
        log: &mut Vec<serde_json::Value>,
        record: RecordRound<'_>,
    ) -> Result<(Vec<Vec<TrainRollout>>, [f64; 21])> {
        let c = &self.config;
        let o = &c.overlong;
        let RolloutBatch { rollouts, rewards, correct, texts, seconds: rollout_s } = batch;
        let overlong: Vec<f64> = rollouts
            .iter()
            .map(|r| artist_rl::overlong_penalty(r.ids.len(), c.rollout.max_response_tokens, o.buffer, o.penalty))
            .collect();
        let totals: Vec<f64> = rewards.iter().zip(&overlong).map(|(r, p)| r.total + p).collect();
        let items: Vec<_> = rollouts
            .iter()
            .map(|r| (r.prompt_ids.as_slice(), r.ids.as_slice(), r.mask.as_slice(), r.logprobs.as_slice()))
            .collect();
        let kept = record(signal_groups(c, &totals))?;
        let penalty = kl_scores(&self.model, self.reference.as_ref(), c, &totals, &items, kept)?;
        let kl_count = penalty.count();
        let KlPenalty { kls, per_token, scores, measured, known } = penalty;
        // Rollouts that gave an answer, for the steps it took.
        let answered: Vec<bool> = texts.iter().map(|t| artist_math::extract_answer(t).is_some()).collect();
        for (i, ro) in rollouts.iter().enumerate().take(c.log_rollouts.saturating_sub(log.len())) {
            let p = problems[ro.prompt_index];
            let mut line = at.line(ro.prompt_index, ro.sample_index);
            line.extend([
                ("problem".into(), p.problem.clone().into()),
                ("gold".into(), p.answer.clone().into()),
                ("completion".into(), texts[i].clone().into()),
                ("reward".into(), totals[i].into()),
                ("rewards".into(), serde_json::to_value(rewards[i]).expect("JSON")),
                ("reward_overlong".into(), overlong[i].into()),
                ("correct".into(), correct[i].into()),
                ("finish".into(), serde_json::to_value(ro.finish).expect("JSON")),
                ("tool_calls".into(), ro.tool_calls.len().into()),
                ("tool_successes".into(), ro.tool_calls.iter().filter(|t| t.result.success).count().into()),
                ("sampled_tokens".into(), ro.sampled_tokens().into()),
                ("response_tokens".into(), ro.ids.len().into()),
                ("model_turns".into(), model_turns(&ro.mask).into()),
                ("answered".into(), answered[i].into()),
            ]);
            if c.kl_reward.coef > 0.0 && measured[i] {
                line.insert("kl".into(), kls[i].into());
            }
            if let Some(state) = &ro.final_state {
                line.insert("final_state".into(), state.clone().into());
            }
            log.push(line.into());
        }
        let (groups, flat) = groups_to_train(
            c,
            &rollouts,
            (&totals, &scores),
            known,
            |ro| ro.sampled_tokens() > 0 && !(o.mask_truncated && ended_by_a_limit(ro)),
            |ro| (&ro.prompt_ids, &ro.ids, &ro.mask, &ro.logprobs),
        );
        let calls: usize = rollouts.iter().map(|r| r.tool_calls.len()).sum();
        let sums = [
            rollouts.len() as f64,
            totals.iter().sum::<f64>(),
            rewards.iter().map(|r| r.answer).sum::<f64>(),
            rewards.iter().map(|r| r.relaxed_format).sum::<f64>(),
            rewards.iter().map(|r| r.strict_format).sum::<f64>(),
            rewards.iter().map(|r| r.tool_execution).sum::<f64>(),
            correct.iter().filter(|&&x| x).count() as f64,
            rollouts.iter().map(|r| r.ids.len()).sum::<usize>() as f64,
            calls as f64,
            rollouts.iter().flat_map(|r| &r.tool_calls).filter(|t| t.result.success).count() as f64,
            rollouts.iter().filter(|r| ended_by_a_limit(r)).count() as f64,
            flat as f64,
            rollouts.iter().map(|r| r.sampled_tokens()).sum::<usize>() as f64,
            overlong.iter().sum::<f64>(),
            rollouts.iter().filter(|r| !r.tool_calls.is_empty()).map(|r| r.sampled_tokens()).sum::<usize>() as f64,
            answered.iter().filter(|&&a| a).count() as f64,
            rollouts.iter().zip(&answered).filter(|(_, a)| **a).map(|(r, _)| model_turns(&r.mask)).sum::<usize>()
                as f64,
            kls.iter().sum::<f64>(),
            per_token.iter().sum::<f64>(),
            kl_count,
            rollout_s,
        ];
        Ok((groups, sums))
    }

    /// [`GrpoTrainer::step_sharded`] with DAPO's dynamic sampling: `rounds` are the global
    /// batches the step may play (`max_sampling_rounds` of them), one after another until
    /// [`GroupQuota`] is met. Round r's rollouts sample with the seeds of prompts
    /// `r * prompts_per_step + p`, so the first round samples as a step without rounds.
    fn step_rounds(
        &mut self,
        step: u64,
        rounds: &[Vec<&Problem>],
        optimizer: &mut AdamW,
        lr: f64,
        mut comm: Option<&mut (dyn Communicator + '_)>,
    ) -> Result<StepMetrics> {
        let c = self.config.clone();
        let g = c.rollout.group_size;
        let lens: Vec<usize> = rounds.iter().map(Vec::len).collect();
        let mut log = Vec::new();
        let (mut train, mut sums, quota) = play_rounds(&c, &lens, comm.as_deref_mut(), |r, shard, first, record| {
            // Rollout k of prompt p samples with seed `seed + p * G + k`: offset by the
            // shard's first global prompt.
            let seed = c.seed.wrapping_add(step.wrapping_mul(1_000_003)).wrapping_add((first * g) as u64);
            let problems = &rounds[r][shard.clone()];
            let at = LogPlace { step: step + 1, round: r, first_prompt: shard.start };
            self.score_round(self.rollouts(problems, seed)?, problems, at, &mut log, record)
        })?;
        whiten_advantages(&mut train, &c, comm.as_deref_mut())?;
        let log = gather_log(log, c.log_rollouts, comm.as_deref_mut())?;
        let t = Instant::now();
        combine_step_sums(&mut sums, comm.as_deref_mut())?;
        let [
            n,
            reward,
            answer,
            relaxed,
            strict,
            tool_execution,
            correct,
            response,
            calls,
            successes,
            truncated,
            flat,
            sampled,
            overlong,
            calling_tokens,
            answered,
            answer_steps,
            kl_sum,
            kl_per_token,
            kl_count,
            rollout_s,
        ] = sums;
        let mut m = StepMetrics {
            step: step + 1,
            flat_groups: flat as usize,
            lr,
            rollout_s,
            rollouts: log,
            ..Default::default()
        };
        (m.sampling_rounds, m.trained_groups) = quota.counts();
        m.reward_overlong = (c.overlong.buffer > 0).then_some(overlong / n);
        m.reward = reward / n;
        m.reward_answer = Some(answer / n);
        m.reward_relaxed_format = relaxed / n;
        m.reward_strict_format = strict / n;
        m.reward_tool_execution = Some(tool_execution / n);
        m.accuracy = correct / n;
        m.response_tokens = response / n;
        m.tool_calls_per_rollout = calls / n;
        m.tokens_per_tool_call = (calls > 0.0).then(|| calling_tokens / calls);
        m.steps_to_answer = (answered > 0.0).then(|| answer_steps / answered);
        m.set_kl_reward(&c.kl_reward, kl_sum, kl_per_token, kl_count);
        m.tool_success = if calls == 0.0 { 0.0 } else { successes / calls };
        m.truncated = truncated as usize;
        if train.is_empty() && comm.is_none() {
            m.train_s = t.elapsed().as_secs_f64();
            return Ok(m);
        }
        let u = update_sharded(&self.model, self.reference.as_ref(), train, &c, optimizer, lr, step, comm)?;
        (m.loss, m.grad_norm, m.clip_fraction, m.kl) = (u.loss, u.grad_norm, u.clip_fraction, u.kl);
        m.set_importance_metrics(&u);
        m.entropy = u.trained.then_some(u.entropy);
        m.entropy_threshold = u.entropy_threshold;
        m.train_s = t.elapsed().as_secs_f64();
        if u.trained {
            m.tokens_per_s = sampled / rollout_s.max(1e-9);
        }
        Ok(m)
    }

    /// One rollout per problem at `temperature` (0: greedy): accuracy, mean reward, and
    /// the fraction of rollouts that called the tool.
    pub fn evaluate(&self, problems: &[Problem], temperature: f32, seed: u64) -> Result<Evaluation> {
        let refs: Vec<&Problem> = problems.iter().collect();
        let (sums, _) = self.evaluation_sums(&refs, temperature, seed, 1, 0, 0)?;
        Ok(Evaluation::from_sums(sums, true))
    }

    /// `k` rollouts of each problem (rollout j of problem p samples with seed
    /// `seed + p * k + j`), summed as [`EvalSums`]. A problem's majority answer
    /// ([`artist_math::majority`] over the answers extracted from its rollouts) is correct
    /// when the verifier judged the rollout it came from correct. Also the first `log`
    /// answers as `eval_rollouts.jsonl` lines, problems numbered from `first`.
    fn evaluation_sums(
        &self,
        problems: &[&Problem],
        temperature: f32,
        seed: u64,
        k: usize,
        log: usize,
        first: usize,
    ) -> Result<(EvalSums, Vec<serde_json::Value>)> {
        if problems.is_empty() {
            return Ok(([0.0; EVAL_SUMS], Vec::new()));
        }
        let RolloutBatch { rollouts, rewards, correct, texts, .. } =
            self.rollouts_with(problems, seed, temperature, k)?;
        let answers: Vec<Option<String>> = texts.iter().map(|t| artist_math::extract_answer(t)).collect();
        let samples = (rollouts.iter().enumerate().take(log))
            .map(|(i, ro)| {
                let p = problems[ro.prompt_index];
                serde_json::json!({
                    "problem_index": first + ro.prompt_index, "sample": ro.sample_index, "problem": p.problem,
                    "gold": p.answer, "completion": texts[i], "extracted": answers[i], "correct": correct[i],
                    "reward": rewards[i].total, "tool_calls": ro.tool_calls.len(),
                    "response_tokens": ro.ids.len(), "finish": ro.finish,
                })
            })
            .collect();
        let rewards: Vec<f64> = rewards.iter().map(|r| r.total).collect();
        let tools: Vec<bool> = rollouts.iter().map(|r| !r.tool_calls.is_empty()).collect();
        let sums = Evaluation::sums(&correct, &rewards, &tools, k, Some(&majority_correct(&answers, &correct, k)));
        Ok((sums, samples))
    }

    /// [`GrpoTrainer::evaluate`] of the held-out problems with `[eval]`'s settings, split
    /// over the ranks of `comm` as a step's prompts are (each problem's answers on one
    /// rank, sampled with the seeds one process would use) and summed: every rank returns
    /// the same figures, those of one process.
    pub fn evaluate_held_out_sharded(&self, comm: Option<&mut (dyn Communicator + '_)>) -> Result<Evaluation> {
        let e = &self.config.eval;
        let answers = e.answers_per_problem();
        let (rank, world) = comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world_size()));
        let shard = shard_range(self.held_out.len(), rank, world);
        let refs: Vec<&Problem> = self.held_out[shard.clone()].iter().collect();
        let seed = self.config.seed.wrapping_add(EVAL_SEED).wrapping_add((shard.start * answers) as u64);
        let (mut sums, samples) =
            self.evaluation_sums(&refs, e.temperature, seed, answers, e.log_samples, shard.start)?;
        let mut comm = comm;
        let samples = gather_log(samples, e.log_samples, comm.as_deref_mut())?;
        sum_over_ranks(&mut sums, comm)?;
        Ok(Evaluation { samples, ..Evaluation::from_sums(sums, true) })
    }
}

/// The held-out evaluation's seeds start here (plus the run's `seed`), apart from the
/// steps' (`seed + step * 1_000_003`), and the same at every evaluation of a run, so that
/// sampled evaluations compare the policies on the same draws.
pub(crate) const EVAL_SEED: u64 = 0x5EED_0000_E7A1;

/// What the updates on one rollout batch measured (the last update's loss and norm).
#[derive(Debug, Clone, Copy, Default)]
pub struct UpdateStats {
    pub loss: f64,
    pub grad_norm: f64,
    pub clip_fraction: f64,
    pub kl: f64,
    /// The policy's mean entropy over the trained tokens before the first update.
    pub entropy: f64,
    /// With pi_old recomputed: the mean |recomputed - sampler's| logprob, and k3's
    /// KL(pi_sampler || pi_old) (see [`StepMetrics`]).
    pub sampler_logprob_gap: Option<f64>,
    pub sampler_kl: Option<f64>,
    /// With `grpo.tis_cap > 0`: the mean truncated importance weight over the generated
    /// tokens, the fraction of them whose weight the bounds changed (capped or masked), the
    /// weights' effective sample size, and (with `tis_veto`) the fraction of rollouts vetoed
    /// (see [`StepMetrics`]).
    pub tis_weight_mean: Option<f64>,
    pub tis_bounded_fraction: Option<f64>,
    pub tis_ess: Option<f64>,
    pub tis_veto_fraction: Option<f64>,
    /// Whether any rollout was trained on.
    pub trained: bool,
    /// The most autograd ops one micro-batch recorded (fewer with `grad_checkpointing`,
    /// whose layers record one op each).
    pub tape_ops: usize,
    /// Forward/backward passes over the batch (all its mini-batches, once) on this rank
    /// (`micro_batch_rollouts`, `micro_batch_tokens`).
    pub passes: usize,
    /// The most tokens one of those passes packed (prompts and responses).
    pub max_pass_tokens: usize,
    /// With `grpo.top_entropy_quantile < 1`: the entropy at or above which a token's
    /// policy-gradient term counted.
    pub entropy_threshold: Option<f64>,
}

/// A round's rollouts (math rollouts or BFCL episodes, in groups of G) as what to train
/// on: advantages from `scores` (the task's rewards `totals`, less a KL penalty); under
/// `filter_flat_groups` the groups whose task rewards are all equal left out and counted;
/// the rest, one entry a group, holding the rollouts that `trainable` accepts. `parts`
/// gives a rollout's prompt, ids, loss mask and logprobs; `known` the logprobs computed
/// for them already (see [`KlPenalty`]).
pub(crate) fn groups_to_train<R>(
    c: &GrpoRunConfig,
    played: &[R],
    (totals, scores): (&[f64], &[f64]),
    mut known: Known,
    trainable: impl Fn(&R) -> bool,
    parts: impl Fn(&R) -> (&Vec<u32>, &Vec<u32>, &Vec<u8>, &Vec<f32>),
) -> (Vec<Vec<TrainRollout>>, usize) {
    let g = c.rollout.group_size;
    let adv = group_advantages(scores, g, &c.advantages);
    let mut flat = 0;
    let mut groups = Vec::new();
    for (k, group) in played.chunks(g).enumerate() {
        if in_flat_group(c, totals, k * g) {
            flat += 1;
            continue;
        }
        let train = group.iter().enumerate().filter(|(_, r)| trainable(r)).map(|(i, r)| {
            let (prompt_ids, ids, mask, logprobs) = parts(r);
            let take = |v: &mut PerRollout| v.get_mut(k * g + i).and_then(Option::take);
            let recomputed = take(&mut known.old);
            TrainRollout {
                prompt_ids: prompt_ids.clone(),
                ids: ids.clone(),
                mask: mask.clone(),
                sampler_logprobs: recomputed.is_some().then(|| logprobs.clone()),
                old_logprobs: recomputed.unwrap_or_else(|| logprobs.clone()),
                ref_logprobs: take(&mut known.reference),
                advantage: adv[k * g + i] as f32,
                score: scores[k * g + i],
                pg_mask: None,
                group: 0,
            }
        });
        groups.push(train.collect());
    }
    (groups, flat)
}

/// Where a logged rollout was played: the step (as metrics number it, from 1), the sampling
/// round, and the step batch's index of the shard's first prompt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogPlace {
    pub step: u64,
    pub round: usize,
    pub first_prompt: usize,
}

impl LogPlace {
    /// The start of a `rollouts.jsonl` line for sample `sample` of the shard's prompt `prompt`.
    pub fn line(&self, prompt: usize, sample: usize) -> serde_json::Map<String, serde_json::Value> {
        let mut line = serde_json::Map::new();
        line.insert("step".into(), self.step.into());
        line.insert("round".into(), self.round.into());
        line.insert("prompt".into(), (self.first_prompt + prompt).into());
        line.insert("sample".into(), sample.into());
        line
    }
}

/// A step's rounds (global batches of `lens[r]` items) played until [`GroupQuota`] is
/// met: `play(r, shard, first, record)` plays this rank's `shard` of round r, whose first
/// item is global item `first` (counting the earlier rounds as `prompts_per_step` each,
/// for the seeds), calls `record` once with its count of groups with a learning signal
/// (learning how many the step keeps), and returns those groups and its metric sums.
/// Returns the rollouts to train on, the sums of the rounds played and the quota (rounds,
/// groups).
pub(crate) fn play_rounds<const N: usize>(
    c: &GrpoRunConfig,
    lens: &[usize],
    mut comm: Option<&mut (dyn Communicator + '_)>,
    mut play: impl FnMut(usize, Range<usize>, usize, RecordRound<'_>) -> Result<(Vec<Vec<TrainRollout>>, [f64; N])>,
) -> Result<(Vec<TrainRollout>, [f64; N], GroupQuota)> {
    let (rank, world) = comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world_size()));
    let mut quota = GroupQuota::new(c.prompts_per_step, lens.len() > 1, c.mini_batches > 1);
    let mut sums = [0f64; N];
    let mut signal = Vec::new();
    for (r, &len) in lens.iter().enumerate() {
        let shard = shard_range(len, rank, world);
        let first = r * c.prompts_per_step + shard.start;
        let mut recorded = None;
        let (groups, round) = play(r, shard, first, &mut |found| {
            if recorded.is_some() {
                return Err(Error::Config(format!("round {r} recorded twice")));
            }
            let met = quota.record(found, comm.as_deref_mut())?;
            recorded = Some((found, met));
            Ok(quota.keep(r, rank))
        })?;
        let Some((found, met)) = recorded else {
            return Err(Error::Config(format!("round {r} was played without recording its groups")));
        };
        if found != groups.len() {
            return Err(Error::Config(format!("round {r} recorded {found} groups and returned {}", groups.len())));
        }
        sums.iter_mut().zip(round).for_each(|(s, x)| *s += x);
        signal.push(groups);
        if met {
            break;
        }
    }
    let mut train = Vec::new();
    for (r, groups) in signal.into_iter().enumerate() {
        let first = quota.first_place(r, rank);
        for (i, group) in groups.into_iter().take(quota.keep(r, rank)).enumerate() {
            train.extend(group.into_iter().map(|ro| TrainRollout { group: first + i, ..ro }));
        }
    }
    Ok((train, sums, quota))
}

/// REINFORCE++ with a baseline (`advantages.estimator = "reinforce_plus_plus_baseline"`):
/// the advantages of the rollouts to train on whitened over the generated tokens of the
/// global batch ([`artist_rl::whiten`]), before any update. Data-parallel ranks gather each
/// other's f64 sums exactly ([`f64_as_f32s`]) and add them in rank order, so the whitening
/// is what one process computes up to the order of f64 additions.
///
/// `advantages.std_level = "batch"` takes the same path: each advantage (the group's mean
/// already subtracted) divided by the deviation of the scores of every rollout trained on
/// in the step, over all ranks ([`artist_rl::batch_std_scale`]). Otherwise nothing
/// changes. Every rank calls it.
pub(crate) fn whiten_advantages(
    train: &mut [TrainRollout],
    c: &GrpoRunConfig,
    comm: Option<&mut (dyn Communicator + '_)>,
) -> Result<()> {
    let whitening = c.advantages.estimator == artist_rl::AdvantageEstimator::ReinforcePlusPlusBaseline;
    if !whitening && !c.advantages.scales_by_batch() {
        return Ok(());
    }
    let mut sums = if whitening {
        artist_rl::whitening_sums(train.iter().map(|r| (r.advantage, r.generated())))
    } else {
        artist_rl::reward_sums(train.iter().map(|r| r.score))
    };
    if let Some(comm) = comm {
        let mine: Vec<f32> = sums.iter().flat_map(|&x| f64_as_f32s(x)).collect();
        let all = comm.all_gather(&mine)?;
        sums = [0.0; 3];
        for rank in all.chunks(9) {
            for (s, parts) in sums.iter_mut().zip(rank.chunks(3)) {
                *s += parts.iter().map(|&p| f64::from(p)).sum::<f64>();
            }
        }
    }
    for r in train {
        r.advantage = if whitening {
            artist_rl::whiten(r.advantage, sums)
        } else {
            artist_rl::batch_std_scale(r.advantage, sums, c.advantages.eps)
        };
    }
    Ok(())
}

/// `x` as three f32s whose sum (in f64, in order) is `x` exactly, for finite `x` from
/// about 1e-21 in magnitude up (or 0): each part the rounding of what the earlier ones left.
/// The communicators carry f32; this carries an f64.
pub(crate) fn f64_as_f32s(x: f64) -> [f32; 3] {
    let hi = x as f32;
    let rest = x - f64::from(hi);
    let mid = rest as f32;
    [hi, mid, (rest - f64::from(mid)) as f32]
}

/// DAPO's dynamic sampling (Yu et al., 2025), across ranks: how many groups with a
/// learning signal (rewards that differ) each rank found in each round played so far, so
/// that every rank stops after the same round and the step trains on the first
/// `target` such groups in round, rank and group order, wherever they were played.
pub(crate) struct GroupQuota {
    target: usize,
    /// Off: one round, every group kept.
    on: bool,
    /// Whether the ranks' counts are exchanged: when on, or when the groups' places in the
    /// step's batch are needed ([`GroupQuota::first_place`]).
    exchange: bool,
    /// Per round, per rank: groups with a signal (other ranks' counts are 0 unless
    /// exchanged).
    found: Vec<Vec<usize>>,
}

impl GroupQuota {
    pub(crate) fn new(target: usize, on: bool, places: bool) -> GroupQuota {
        GroupQuota { target, on, exchange: on || places, found: Vec::new() }
    }

    /// Records this rank's `groups` with a signal in the round just played (every rank
    /// calls it, in step) and says whether the step has enough; always yes when off.
    pub(crate) fn record(&mut self, groups: usize, comm: Option<&mut (dyn Communicator + '_)>) -> Result<bool> {
        let (rank, world) = comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world_size()));
        let mut counts = vec![0f32; world];
        counts[rank] = groups as f32;
        if let Some(comm) = comm
            && self.exchange
        {
            comm.all_reduce_sum(&mut counts)?;
        }
        self.found.push(counts.iter().map(|&n| n as usize).collect());
        Ok(!self.on || self.found.iter().flatten().sum::<usize>() >= self.target)
    }

    /// The place in the step's trained groups (round, rank and group order: one process's
    /// order) of `rank`'s first group kept from `round`; meaningful where the counts were
    /// exchanged or there is one rank.
    pub(crate) fn first_place(&self, round: usize, rank: usize) -> usize {
        let kept = |r: usize, k: usize| self.keep(r, k).min(self.found[r][k]);
        let earlier: usize = (0..round).map(|r| (0..self.found[r].len()).map(|k| kept(r, k)).sum::<usize>()).sum();
        earlier + (0..rank).map(|k| kept(round, k)).sum::<usize>()
    }

    /// How many of `rank`'s groups with a signal in `round` are trained on: the first ones,
    /// until `target` is reached in round, rank and group order.
    pub(crate) fn keep(&self, round: usize, rank: usize) -> usize {
        if !self.on {
            return usize::MAX;
        }
        let earlier =
            self.found[..round].iter().flatten().sum::<usize>() + self.found[round][..rank].iter().sum::<usize>();
        self.found[round][rank].min(self.target.saturating_sub(earlier))
    }

    /// When on: the rounds played and the groups trained on, over all ranks.
    pub(crate) fn counts(&self) -> (Option<usize>, Option<usize>) {
        if !self.on {
            return (None, None);
        }
        (Some(self.found.len()), Some(self.found.iter().flatten().sum::<usize>().min(self.target)))
    }
}

/// A step's per-rank sums (counts, reward sums, ..., and last the rollout seconds) made
/// global: summed over the ranks of `comm` (carried as f32), the seconds then averaged.
/// Nothing changes without a communicator.
pub(crate) fn combine_step_sums<const N: usize>(
    sums: &mut [f64; N],
    comm: Option<&mut (dyn Communicator + '_)>,
) -> Result<()> {
    let Some(comm) = comm else { return Ok(()) };
    let world = comm.world_size() as f64;
    sum_over_ranks(sums, Some(comm))?;
    sums[N - 1] /= world;
    Ok(())
}

/// Per-rank sums (counts, exact in f32 up to 2^24, and sums of rewards) summed over the
/// ranks of `comm`, carried as f32; nothing changes without a communicator.
pub(crate) fn sum_over_ranks<const N: usize>(
    sums: &mut [f64; N],
    comm: Option<&mut (dyn Communicator + '_)>,
) -> Result<()> {
    let Some(comm) = comm else { return Ok(()) };
    let mut buf: Vec<f32> = sums.iter().map(|&x| x as f32).collect();
    comm.all_reduce_sum(&mut buf)?;
    sums.iter_mut().zip(buf).for_each(|(s, b)| *s = f64::from(b));
    Ok(())
}

/// `optimizer_steps_per_batch` passes over the batch of `mini_batches` AdamW steps each on
/// the masked GRPO loss (mini-batch `j`: the rollouts whose `group % mini_batches == j`,
/// normalised over its own rollouts and tokens on every rank), gradients accumulated over
/// micro-batches cut by `micro_batch_rollouts` and packed under `micro_batch_tokens`. A
/// non-finite loss or norm refuses the update (steps already taken on earlier mini-batches
/// stand). Logprobs the rollouts carry are not computed again: with `grpo.beta > 0`, their
/// `ref_logprobs` (`reference` computes the others'), and where pi_old is recomputed, the
/// `old_logprobs` of those that carry `sampler_logprobs`. Shared by the math and the
/// function-calling trainers.
pub fn update(
    model: &Qwen2,
    reference: Option<&Qwen2>,
    train: Vec<TrainRollout>,
    c: &GrpoRunConfig,
    optimizer: &mut AdamW,
    lr: f64,
    step: u64,
) -> Result<UpdateStats> {
    update_sharded(model, reference, train, c, optimizer, lr, step, None)
}

/// [`update`] on this rank's shard of a batch split over the ranks of `comm`: the loss
/// weights count the whole batch, gradients, loss and statistics are summed over ranks,
/// so every rank clips and steps identically. A rank with an empty shard still takes
/// part; nothing is updated when the whole batch is empty.
#[allow(clippy::too_many_arguments)]
pub fn update_sharded(
    model: &Qwen2,
    reference: Option<&Qwen2>,
    mut train: Vec<TrainRollout>,
    c: &GrpoRunConfig,
    optimizer: &mut AdamW,
    lr: f64,
    step: u64,
    mut comm: Option<&mut (dyn Communicator + '_)>,
) -> Result<UpdateStats> {
    let _range = artist_tensor::nvtx::range("policy update");
    let mut out = UpdateStats::default();
    // Per mini-batch, over all ranks: rollouts with generated tokens, generated tokens,
    // rollouts.
    let minis = c.mini_batches.max(1);
    let count = |train: &[TrainRollout], comm: Option<&mut (dyn Communicator + '_)>| -> Result<Vec<f32>> {
        let mut counts = vec![0f32; 3 * minis];
        for r in train {
            let j = 3 * (r.group % minis);
            counts[j] += (r.generated() > 0) as u8 as f32;
            counts[j + 1] += r.generated() as f32;
            counts[j + 2] += 1.0;
        }
        if let Some(comm) = comm {
            comm.all_reduce_sum(&mut counts)?;
        }
        Ok(counts)
    };
    let mut counts = count(&train, comm.as_deref_mut())?;
    if counts.chunks(3).all(|c| c[2] == 0.0) {
        return Ok(out);
    }
    out.trained = true;
    let micro = c.micro_batching();
    // The loss's numerics, for everything it compares with: pi_old recomputed and the
    // reference's logprobs.
    let dev = model.device();
    let numerics = |ctx: Ctx| c.loss_numerics(ctx, dev);
    // Summed |recomputed - sampler's| over generated tokens, their count, and summed k3
    // (`exp(d) - d - 1`, d = recomputed - sampler's).
    let mut gap = [0f32; 3];
    // pi_old's entropies at the generated tokens, for `grpo.top_entropy_quantile`.
    let wants_entropies = c.grpo.top_entropy_quantile < 1.0;
    let mut entropies = None;
    if c.recomputes_old_logprobs(dev) && !train.is_empty() {
        // Rollouts that carry their sampler's logprobs had pi_old recomputed already (by
        // the KL penalty on the rewards).
        let missing: Vec<usize> = (0..train.len()).filter(|&i| train[i].sampler_logprobs.is_none()).collect();
        if !missing.is_empty() {
            let _range = artist_tensor::nvtx::range("pi_old recompute");
            let refs: Vec<&TrainRollout> = missing.iter().map(|&i| &train[i]).collect();
            let (t, ctx) = (c.rollout.temperature, numerics(Ctx::inference()));
            // The same passes give the entropies when every rollout is in them.
            let lps = if wants_entropies && missing.len() == train.len() {
                let (lps, h) = artist_rl::grpo::rollout_logprobs_and_entropies(model, &ctx, &refs, t, micro)?;
                entropies = Some(h);
                lps
            } else {
                rollout_logprobs(model, &ctx, &refs, t, micro)?
            };
            for (&i, lp) in missing.iter().zip(lps) {
                let r = &mut train[i];
                r.sampler_logprobs = Some(std::mem::replace(&mut r.old_logprobs, lp));
            }
        }
        for r in &train {
            let sampled = r.sampler_logprobs.as_deref().unwrap_or_default();
            for ((&m, a), b) in r.mask.iter().zip(&r.old_logprobs).zip(sampled) {
                if m == 1 {
                    let d = f64::from(a - b);
                    gap[0] += (a - b).abs();
                    gap[1] += 1.0;
                    gap[2] += (d.exp() - d - 1.0) as f32;
                }
            }
        }
    }
    // The truncated importance weights the loss will apply: their sum, how many the bounds
    // changed (against the same weights unbounded, the veto kept), the sum of their
    // squares, the rollouts vetoed and the rollouts weighed.
    let mut tis = [0f64; 5];
    if c.grpo.tis_cap > 0.0 {
        let unbounded =
            artist_rl::GrpoConfig { tis_cap: f64::INFINITY, tis_mode: artist_rl::TisMode::Truncate, ..c.grpo };
        for r in train.iter().filter(|r| r.generated() > 0) {
            if let (Some(w), Some(raw)) = (c.grpo.tis_weights(r), unbounded.tis_weights(r)) {
                tis[0] += w.iter().map(|&x| f64::from(x)).sum::<f64>();
                tis[1] += w.iter().zip(&raw).filter(|(a, b)| a != b).count() as f64;
                tis[2] += w.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
                tis[3] += f64::from(u8::from(c.grpo.tis_vetoed(r)));
                tis[4] += 1.0;
            }
        }
    }
    // `tis_drop_rejected`: the rejected tokens leave every term and count of the loss, once
    // the weights' figures above have counted them.
    if c.grpo.tis_cap > 0.0 && c.grpo.tis_drop_rejected {
        for r in &mut train {
            c.grpo.drop_rejected(r);
        }
        counts = count(&train, comm.as_deref_mut())?;
    }
    // The reference's logprobs, but where the KL penalty on the rewards computed them.
    let missing: Vec<usize> = (0..train.len()).filter(|&i| train[i].ref_logprobs.is_none()).collect();
    if c.grpo.beta > 0.0 && !missing.is_empty() {
        let reference = reference.ok_or_else(|| {
            Error::Config("grpo.beta > 0 but no reference model is loaded (grpo::train loads one)".into())
        })?;
        let refs: Vec<&TrainRollout> = missing.iter().map(|&i| &train[i]).collect();
        let lps = rollout_logprobs(reference, &numerics(Ctx::inference()), &refs, c.rollout.temperature, micro)?;
        for (&i, lp) in missing.iter().zip(lps) {
            train[i].ref_logprobs = Some(lp);
        }
    }
    // The high-entropy tokens (`grpo.top_entropy_quantile`): pi_old's entropy at every
    // generated token (the policy before its first update is pi_old), one threshold over
    // the whole batch and every rank.
    if wants_entropies {
        let _range = artist_tensor::nvtx::range("token entropies");
        let h = match entropies {
            Some(h) => h,
            None => {
                let refs: Vec<&TrainRollout> = train.iter().collect();
                let ctx = numerics(Ctx::inference());
                artist_rl::grpo::rollout_logprobs_and_entropies(model, &ctx, &refs, c.rollout.temperature, micro)?.1
            }
        };
        let mine: Vec<f32> = (train.iter().zip(&h))
            .flat_map(|(r, h)| (0..r.ids.len()).filter(|&j| r.mask[j] == 1).map(|j| h[j]))
            .collect();
        let all = crate::dp::gather_f32s(mine, comm.as_deref_mut())?;
        if let Some(threshold) = artist_rl::grpo::entropy_threshold(&all, c.grpo.top_entropy_quantile) {
            out.entropy_threshold = Some(threshold);
            for (r, h) in train.iter_mut().zip(&h) {
                r.pg_mask =
                    Some((0..r.ids.len()).map(|j| u8::from(r.mask[j] == 1 && f64::from(h[j]) >= threshold)).collect());
            }
        }
    }
    let mut grpo = c.grpo;
    grpo.temperature = c.rollout.temperature;
    // Each mini-batch (the rollouts of its groups, in batch order, and the global counts it
    // is normalised by; empty on every rank: none), its loss weights and its passes.
    let mini_batches: Vec<_> = (counts.chunks(3).enumerate())
        .filter(|(_, n)| n[2] > 0.0)
        .map(|(j, n)| {
            let refs: Vec<&TrainRollout> = train.iter().filter(|r| r.group % minis == j).collect();
            let weights = token_weights_global(&refs, grpo.aggregation, grpo.norm_length, n[0] as usize, n[1] as usize);
            let lens: Vec<usize> = refs.iter().map(|r| r.packed_len()).collect();
            let passes = micro.passes(&lens);
            out.passes += passes.len();
            let most = passes.iter().map(|p| p.iter().map(|&i| lens[i]).sum::<usize>()).max().unwrap_or(0);
            out.max_pass_tokens = out.max_pass_tokens.max(most);
            (refs, weights, passes)
        })
        .collect();
    let params = model.params();
    let (mut clipped, mut tokens, mut kl) = (0usize, 0usize, 0f64);
    // Summed entropy and tokens of the first update's passes (the policy that sampled).
    let mut entropy = [0f64; 2];
    for (update, (refs, weights, passes)) in
        (0..c.optimizer_steps_per_batch).flat_map(|e| mini_batches.iter().map(move |m| (e, m)))
    {
        let mut step_grads =
            StepGrads::new(comm.as_deref_mut().map(|c| c as &mut dyn Communicator), &params, c.overlap_allreduce);
        let mut loss = 0f64;
        let n_micro = passes.len();
        for (j, pass) in passes.iter().enumerate() {
            let tape = Tape::new();
            let rs: Vec<&TrainRollout> = pass.iter().map(|&i| refs[i]).collect();
            let ws: Vec<&[f32]> = pass.iter().map(|&i| weights[i].as_slice()).collect();
            let ctx = numerics(Ctx::training(&tape)).with_checkpointing(c.grad_checkpointing);
            let (l, stats) = grpo_loss_measuring(model, &ctx, &rs, &ws, &grpo, update == 0)?;
            loss += l.to_scalar()? as f64;
            clipped += stats.clipped;
            tokens += stats.tokens;
            kl += stats.kl_mean * stats.tokens as f64;
            if update == 0 {
                entropy[0] += stats.entropy_mean * stats.tokens as f64;
                entropy[1] += stats.tokens as f64;
            }
            out.tape_ops = out.tape_ops.max(tape.len());
            step_grads.backward(&tape, &l, j + 1 == n_micro)?;
        }
        let mut grads = step_grads.finish()?;
        if let Some(comm) = comm.as_deref_mut() {
            let mut total = [loss as f32];
            comm.all_reduce_sum(&mut total)?;
            loss = f64::from(total[0]);
        }
        let norm = clip_grad_norm(&mut grads, c.optim.grad_clip)?;
        if !(loss.is_finite() && norm.is_finite()) {
            return Err(Error::NonFinite(format!(
                "step {}: loss {loss} / gradient norm {norm}; update refused",
                step + 1
            )));
        }
        optimizer.step(&grads, lr)?;
        out.loss = loss;
        out.grad_norm = norm;
    }
    if let Some(comm) = comm {
        let mut buf = [
            clipped as f32,
            tokens as f32,
            kl as f32,
            gap[0],
            gap[1],
            entropy[0] as f32,
            entropy[1] as f32,
            tis[0] as f32,
            tis[1] as f32,
            tis[2] as f32,
            tis[3] as f32,
            tis[4] as f32,
            gap[2],
        ];
        comm.all_reduce_sum(&mut buf)?;
        tis = [buf[7], buf[8], buf[9], buf[10], buf[11]].map(f64::from);
        (clipped, tokens, kl) = (buf[0] as usize, buf[1] as usize, f64::from(buf[2]));
        gap = [buf[3], buf[4], buf[12]];
        entropy = [f64::from(buf[5]), f64::from(buf[6])];
    }
    out.clip_fraction = clipped as f64 / tokens.max(1) as f64;
    out.kl = kl / tokens.max(1) as f64;
    out.entropy = entropy[0] / entropy[1].max(1.0);
    if c.recomputes_old_logprobs(dev) {
        out.sampler_logprob_gap = Some(f64::from(gap[0]) / f64::from(gap[1]).max(1.0));
        out.sampler_kl = Some(f64::from(gap[2]) / f64::from(gap[1]).max(1.0));
    }
    if c.grpo.tis_cap > 0.0 {
        // Every generated token of the batch has a weight: the gap's count is theirs.
        let n = f64::from(gap[1]).max(1.0);
        (out.tis_weight_mean, out.tis_bounded_fraction) = (Some(tis[0] / n), Some(tis[1] / n));
        // All weights zero (every rollout masked or vetoed): no effective sample at all.
        out.tis_ess = Some(if tis[2] > 0.0 { tis[0] * tis[0] / (n * tis[2]) } else { 0.0 });
        if c.grpo.tis_veto > 0.0 {
            out.tis_veto_fraction = Some(tis[3] / tis[4].max(1.0));
        }
    }
    Ok(out)
}

/// Rollouts with their rewards, whether each answer is correct, each response's decoded
/// text (special tokens skipped), and the seconds taken.
pub struct RolloutBatch {
    pub rollouts: Vec<Rollout>,
    pub rewards: Vec<MathRewards>,
    pub correct: Vec<bool>,
    pub texts: Vec<String>,
    pub seconds: f64,
}

/// What [`GrpoTrainer::evaluate`] measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evaluation {
    /// The first `eval.log_samples` answers this rank played, one JSON object each, for
    /// `eval_rollouts.jsonl` (not summed over ranks).
    #[serde(skip)]
    pub samples: Vec<serde_json::Value>,
    /// Correct answers over answers (pass@1, the mean over a problem's answers).
    pub accuracy: f64,
    pub reward: f64,
    pub tool_use: f64,
    /// Problems with at least one correct answer among their `k` (pass@k; with one
    /// answer a problem, the accuracy).
    pub pass_at_k: f64,
    /// Problems whose majority answer among their `k` is correct (maj@k, self-consistency;
    /// [`artist_math::majority`]); `None` where answers do not vote (BFCL episodes).
    pub maj_at_k: Option<f64>,
    /// Problems whose `k` answers are all correct (pass^k, tau-bench's consistency; with one
    /// answer a problem, the accuracy).
    pub pass_hat_k: f64,
}

impl Evaluation {
    /// From [`EvalSums`] (summed over ranks); `voted` says whether they count majority
    /// answers.
    pub(crate) fn from_sums(
        [correct, reward, tool_use, n, passed, problems, majority, all]: EvalSums,
        voted: bool,
    ) -> Evaluation {
        let (n, problems) = (n.max(1.0), problems.max(1.0));
        Evaluation {
            samples: Vec::new(),
            accuracy: correct / n,
            reward: reward / n,
            tool_use: tool_use / n,
            pass_at_k: passed / problems,
            maj_at_k: voted.then_some(majority / problems),
            pass_hat_k: all / problems,
        }
    }

    /// The sums of answers `correct` (whether each is right), `reward` and `tool_use` (each
    /// made a call), in groups of `k` answers a problem, with `majority` whether each
    /// problem's majority answer is correct.
    pub(crate) fn sums(
        correct: &[bool],
        reward: &[f64],
        tool_use: &[bool],
        k: usize,
        majority: Option<&[bool]>,
    ) -> EvalSums {
        let count = |v: &[bool]| v.iter().filter(|&&x| x).count() as f64;
        let passed = correct.chunks(k.max(1)).filter(|c| c.contains(&true)).count() as f64;
        let all = correct.chunks(k.max(1)).filter(|c| c.iter().all(|&x| x)).count() as f64;
        let problems = correct.len().div_ceil(k.max(1)) as f64;
        let voted = majority.map_or(0.0, count);
        [count(correct), reward.iter().sum(), count(tool_use), correct.len() as f64, passed, problems, voted, all]
    }
}

/// For each problem of `k` answers in a row, whether its majority answer
/// ([`artist_math::majority`]) is correct: whether the answer that stands for its group was
/// judged correct. A problem with no readable answer has none.
fn majority_correct(answers: &[Option<String>], correct: &[bool], k: usize) -> Vec<bool> {
    let k = k.max(1);
    answers.chunks(k).zip(correct.chunks(k)).map(|(a, c)| artist_math::majority(a).is_some_and(|i| c[i])).collect()
}

/// How many figures [`EvalSums`] holds.
pub(crate) const EVAL_SUMS: usize = 8;

/// An evaluation's figures as sums, to add over ranks: correct answers, their rewards,
/// answers with a tool call, answers, problems with a correct answer, problems, problems
/// whose majority answer is correct, problems whose answers are all correct.
pub(crate) type EvalSums = [f64; EVAL_SUMS];

/// What [`train`] drives: a policy, its frozen reference, the run's settings, and one
/// GRPO step on a batch of training items (math problems, BFCL entries).
pub trait GrpoTask {
    fn config(&self) -> &GrpoRunConfig;
    fn model(&self) -> &Qwen2;
    fn model_mut(&mut self) -> &mut Qwen2;
    fn reference_mut(&mut self) -> &mut Option<Qwen2>;
    /// The KL term's reference, when one is loaded.
    fn reference(&self) -> Option<&Qwen2>;
    /// Sets the `kl_reward` coefficient of the steps to come (the adaptive controller's).
    fn set_kl_reward_coef(&mut self, coef: f64);
    /// How many training items there are.
    fn items(&self) -> usize;
    /// One step (rollouts, rewards, advantages, updates) on the items `batches[0]`
    /// indexes; with `max_sampling_rounds > 1`, `batches` holds that many batches, played
    /// in turn until enough groups have a learning signal (`StepMetrics::sampling_rounds`
    /// says how many were).
    fn step(&mut self, step: u64, batches: &[Vec<usize>], optimizer: &mut AdamW, lr: f64) -> Result<StepMetrics>;
    /// [`GrpoTask::step`] on the global batches `batches`, each split over the ranks of
    /// `comm`. Tasks that do not train data-parallel refuse more than one rank.
    fn step_sharded(
        &mut self,
        step: u64,
        batches: &[Vec<usize>],
        optimizer: &mut AdamW,
        lr: f64,
        comm: Option<&mut (dyn Communicator + '_)>,
    ) -> Result<StepMetrics> {
        match comm {
            Some(c) if c.world_size() > 1 => Err(Error::Config("this task does not train data-parallel".into())),
            _ => self.step(step, batches, optimizer, lr),
        }
    }
    /// A fingerprint of the training items, which every rank must share.
    fn items_fingerprint(&self) -> u64 {
        self.items() as u64
    }
    /// The held-out evaluation of `[eval]` (split over the ranks of `comm`, the same
    /// figures on every rank); `None` where the task has nothing to evaluate.
    fn evaluate_held_out(&mut self, comm: Option<&mut (dyn Communicator + '_)>) -> Result<Option<Evaluation>> {
        let _ = comm;
        Ok(None)
    }
}

impl GrpoTask for GrpoTrainer<'_> {
    fn config(&self) -> &GrpoRunConfig {
        &self.config
    }
    fn model(&self) -> &Qwen2 {
        &self.model
    }
    fn model_mut(&mut self) -> &mut Qwen2 {
        &mut self.model
    }
    fn reference_mut(&mut self) -> &mut Option<Qwen2> {
        &mut self.reference
    }
    fn reference(&self) -> Option<&Qwen2> {
        self.reference.as_ref()
    }
    fn set_kl_reward_coef(&mut self, coef: f64) {
        self.config.kl_reward.coef = coef;
    }
    fn items(&self) -> usize {
        self.train.len()
    }
    fn step(&mut self, step: u64, batches: &[Vec<usize>], optimizer: &mut AdamW, lr: f64) -> Result<StepMetrics> {
        GrpoTask::step_sharded(self, step, batches, optimizer, lr, None)
    }
    fn step_sharded(
        &mut self,
        step: u64,
        batches: &[Vec<usize>],
        optimizer: &mut AdamW,
        lr: f64,
        comm: Option<&mut (dyn Communicator + '_)>,
    ) -> Result<StepMetrics> {
        let problems: Vec<Vec<Problem>> =
            batches.iter().map(|b| b.iter().map(|&i| self.train[i].clone()).collect()).collect();
        let refs: Vec<Vec<&Problem>> = problems.iter().map(|b| b.iter().collect()).collect();
        self.step_rounds(step, &refs, optimizer, lr, comm)
    }
    fn items_fingerprint(&self) -> u64 {
        let mut text = serde_json::to_string(&self.train).expect("JSON");
        if !self.held_out.is_empty() {
            text += &serde_json::to_string(&self.held_out).expect("JSON");
        }
        crate::sft::fnv1a(text.as_bytes())
    }
    fn evaluate_held_out(&mut self, comm: Option<&mut (dyn Communicator + '_)>) -> Result<Option<Evaluation>> {
        if self.held_out.is_empty() {
            return Ok(None);
        }
        self.evaluate_held_out_sharded(comm).map(Some)
    }
}

/// `reference = alpha * policy + (1 - alpha) * reference`, parameter by parameter, in f32 and
/// stored in the reference's dtype; `alpha = 1` copies the policy's weights exactly.
pub fn move_reference(policy: &Qwen2, reference: &Qwen2, alpha: f64) -> Result<()> {
    let (p, r) = (policy.params(), reference.params());
    if p.len() != r.len() {
        return Err(Error::Config(format!(
            "reference_sync: the reference has {} parameters and the policy {}",
            r.len(),
            p.len()
        )));
    }
    for (p, r) in p.iter().zip(r) {
        let (pv, rv) = (p.value(), r.value());
        if pv.dims() != rv.dims() {
            return Err(Error::Config(format!(
                "reference_sync: {} is {:?} in the policy and {:?} in the reference",
                p.name(),
                pv.dims(),
                rv.dims()
            )));
        }
        let mixed = if alpha == 1.0 {
            pv.to_dtype(rv.dtype())?
        } else {
            let wide = artist_tensor::DType::F32;
            let a = pv.to_dtype(wide)?.mul_scalar(alpha as f32)?;
            a.add(&rv.to_dtype(wide)?.mul_scalar((1.0 - alpha) as f32)?)?.to_dtype(rv.dtype())?
        };
        rv.copy_from(&mixed)?;
    }
    Ok(())
}

/// Runs GRPO into `run_dir`: `opts.resume` continues from its newest checkpoint,
/// `opts.stop_after` ends early with a checkpoint a later resume continues from. Writes
/// `metrics.jsonl`, checkpoints, and `curves.svg` (the metrics plotted).
pub fn train<T: GrpoTask>(run_dir: &Path, trainer: &mut T, opts: &RunOptions) -> Result<Vec<StepMetrics>> {
    run(run_dir, trainer, opts, None)
}

/// [`train`] as one rank of a data-parallel group, equal to one process on the same
/// global batches: every rank holds the same trainer (settings and training items are
/// checked), the weights are broadcast from rank 0, each step's `prompts_per_step`
/// prompts are split over the ranks ([`GrpoTask::step_sharded`]), gradients are summed
/// and every rank clips and steps identically. Every rank returns the global metrics;
/// rank 0 alone writes metrics, checkpoints and curves.
pub fn train_data_parallel<T: GrpoTask>(
    run_dir: &Path,
    trainer: &mut T,
    opts: &RunOptions,
    comm: &mut dyn Communicator,
) -> Result<Vec<StepMetrics>> {
    run(run_dir, trainer, opts, Some(comm))
}

fn run<T: GrpoTask>(
    run_dir: &Path,
    trainer: &mut T,
    opts: &RunOptions,
    comm: Option<&mut (dyn Communicator + '_)>,
) -> Result<Vec<StepMetrics>> {
    let mut dist = comm.filter(|c| c.world_size() > 1);
    let lead = dist.as_ref().is_none_or(|c| c.rank() == 0);
    let c = trainer.config().clone();
    let resume = opts.resume;
    c.validate(trainer.model().device())?;
    if lead {
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    }
    // Fresh adapters leave the policy as it starts: its base weights, which they never
    // change, are then the reference, shared rather than loaded again.
    let fresh_lora = c.lora.rank > 0 && trainer.model().lora().is_none();
    attach_lora(trainer.model_mut(), &c.lora, c.seed)?;
    if c.uses_reference() && trainer.reference_mut().is_none() {
        let path = c.reference_model.as_ref().unwrap_or(&c.model);
        if path.as_os_str().is_empty() {
            return Err(Error::Config(
                "grpo.beta > 0 or kl_reward.coef > 0 needs a reference model: set reference_model (or model)".into(),
            ));
        }
        let reference = if fresh_lora && c.reference_model.is_none() {
            trainer.model().without_lora()
        } else {
            Qwen2::load_on(path, trainer.model().device())?
        };
        *trainer.reference_mut() = Some(reference);
    }
    let params = trainer.model().params();
    if let Some(comm) = dist.as_deref_mut() {
        crate::sft::check_agreement(
            comm,
            &[
                ("settings", crate::sft::fnv1a(serde_json::to_string(&c).expect("JSON").as_bytes())),
                ("training data", trainer.items_fingerprint()),
            ],
        )?;
        // Before the optimiser copies the weights into its f32 master weights.
        broadcast_params(comm, &params, 0)?;
    }
    let mut optimizer = AdamW::new(
        &params,
        AdamWConfig {
            beta1: c.optim.beta1,
            beta2: c.optim.beta2,
            eps: c.optim.eps,
            weight_decay: c.optim.weight_decay,
            decay_matrices_only: false,
        },
    )?;
    let mut start = 0;
    // Batches of training items drawn so far: one a step, more with dynamic sampling.
    let mut drawn = 0;
    if resume {
        let dir = checkpoint::latest(run_dir)?
            .ok_or_else(|| Error::Config(format!("{}: no checkpoint to resume from", run_dir.display())))?;
        let state = checkpoint::read_state(&dir)?;
        let saved = Qwen2::load_on(&dir, trainer.model().device())?;
        let (mine, theirs) = (trainer.model().params(), saved.params());
        let names = |ps: &[&artist_autograd::Param]| ps.iter().map(|p| p.name().to_string()).collect::<Vec<_>>();
        if names(&mine) != names(&theirs) {
            return Err(Error::Config(format!(
                "{}: the checkpoint's parameters are not the model's ({} against {}; LoRA adapters in one and not \
                 the other?)",
                dir.display(),
                theirs.len(),
                mine.len()
            )));
        }
        for (p, s) in mine.iter().zip(theirs) {
            p.value().copy_from(s.value())?;
        }
        checkpoint::load_optimizer(&dir, &mut optimizer, &state)?;
        start = state.step;
        drawn = state.batches_drawn.unwrap_or(state.step);
        if c.kl_reward.adaptive()
            && let Some(coef) = state.kl_reward_coef
        {
            trainer.set_kl_reward_coef(coef);
        }
        // A reference the run has moved was saved with the checkpoint.
        let moved = dir.join(checkpoint::REFERENCE_DIR);
        if c.reference_sync.every > 0 && moved.is_dir() {
            *trainer.reference_mut() = Some(Qwen2::load_on(&moved, trainer.model().device())?);
        }
    }
    let schedule = LrSchedule {
        base_lr: c.optim.lr,
        schedule: c.optim.lr_schedule,
        warmup_steps: c.optim.warmup_steps,
        total_steps: c.steps,
    };
    let order =
        crate::data::DataOrder { n: trainer.items(), batch_size: c.prompts_per_step, shuffle: true, seed: c.seed };
    let mut metrics = if lead { Some(Metrics::open(run_dir, resume.then_some(start))?) } else { None };
    let mut rollout_log = if lead && c.log_rollouts > 0 {
        Some(crate::metrics::JsonLines::open(&run_dir.join(crate::metrics::ROLLOUTS_FILE), resume.then_some(start))?)
    } else {
        None
    };
    let mut eval_log = if lead && c.eval.log_samples > 0 {
        let path = run_dir.join(crate::metrics::EVAL_ROLLOUTS_FILE);
        Some(crate::metrics::JsonLines::open(&path, resume.then_some(start))?)
    } else {
        None
    };
    // An evaluation's logged answers, each tagged with the step it follows.
    let log_eval = |log: &mut Option<crate::metrics::JsonLines>, e: &Evaluation, step: u64| -> Result<()> {
        let Some(log) = log.as_mut() else { return Ok(()) };
        for sample in &e.samples {
            let mut line = serde_json::Map::new();
            line.insert("step".into(), step.into());
            if let Some(fields) = sample.as_object() {
                line.extend(fields.clone());
            }
            log.write(&line.into())?;
        }
        Ok(())
    };
    let mut all = Vec::new();
    // The last checkpoint this process saved: a LoRA run links its frozen base weights.
    let last_saved = std::cell::RefCell::new(None::<PathBuf>);
    let save = |trainer: &T, optimizer: &AdamW, step: u64, drawn: u64| -> Result<PathBuf> {
        let state = TrainerState {
            step,
            epoch: order.step(drawn).0,
            batches_drawn: Some(drawn),
            kl_reward_coef: c.kl_reward.adaptive().then(|| trainer.config().kl_reward.coef),
            seed: c.seed,
            data_fingerprint: String::new(),
            optimizer_steps: Default::default(),
            config: serde_json::to_value(&c).expect("JSON"),
        };
        let _range = artist_tensor::nvtx::range("checkpoint");
        // Once the run has moved the reference, it travels with the checkpoint.
        let sync = c.reference_sync.every;
        let reference = trainer.reference().filter(|_| sync > 0 && step >= sync);
        let prev = last_saved.borrow().clone();
        let extras = checkpoint::SaveExtras { reference, frozen_base_from: prev.as_deref() };
        let dir =
            checkpoint::save_with(run_dir, trainer.model(), optimizer, &state, Some(&c.model), c.keep_last, extras)?;
        *last_saved.borrow_mut() = Some(dir.clone());
        Ok(dir)
    };
    let end = opts.stop_after.map_or(c.steps, |s| s.min(c.steps));
    let bar = crate::sft::progress_bar(opts.progress && lead, start, c.steps);
    // Held-out evaluation: rank 0 reports it above the progress bar.
    let evaluate = |trainer: &mut T, dist: Option<&mut (dyn Communicator + '_)>, done: u64| {
        let t = Instant::now();
        let e = {
            let _range = artist_tensor::nvtx::range("eval");
            trainer.evaluate_held_out(dist)?
        };
        let secs = t.elapsed().as_secs_f64();
        if let Some(e) = e.as_ref().filter(|_| lead) {
            let k = c.eval.answers_per_problem();
            let mut pass = String::new();
            if k > 1 {
                pass = format!(", pass@{k} {:.1}%, pass^{k} {:.1}%", 100.0 * e.pass_at_k, 100.0 * e.pass_hat_k);
                if let Some(m) = e.maj_at_k {
                    pass += &format!(", maj@{k} {:.1}%", 100.0 * m);
                }
            }
            bar.suspend(|| {
                eprintln!(
                    "held-out after step {done}: accuracy {:.1}%{pass}, reward {:.3}, tool use {:.0}% ({secs:.1} s)",
                    100.0 * e.accuracy,
                    e.reward,
                    100.0 * e.tool_use
                )
            });
        }
        Result::Ok(e.map(|e| (e, secs)))
    };
    if start == 0
        && start < end
        && c.eval.before_training
        && let Some((e, secs)) = evaluate(trainer, dist.as_deref_mut(), 0)?
        && let Some(metrics) = metrics.as_mut()
    {
        log_eval(&mut eval_log, &e, 0)?;
        let mut m = StepMetrics::default();
        m.set_eval(&e, c.eval.answers_per_problem(), secs);
        let mut line = serde_json::to_value(&m).expect("JSON");
        // A line of the evaluation alone: keep its step and eval_* keys.
        if let Some(o) = line.as_object_mut() {
            o.retain(|k, _| k == "step" || k.starts_with("eval_"));
        }
        metrics.write(&line)?;
    }
    for step in start..end {
        let batches: Vec<Vec<usize>> = (0..c.max_sampling_rounds as u64).map(|r| order.step(drawn + r).1).collect();
        let mut m = trainer.step_sharded(step, &batches, &mut optimizer, schedule.lr(step), dist.as_deref_mut())?;
        drawn += m.sampling_rounds.unwrap_or(1) as u64;
        if c.kl_reward.adaptive()
            && let Some(kl) = m.kl_reward_per_token
        {
            let rounds = m.sampling_rounds.unwrap_or(1);
            let played = batches.iter().take(rounds).map(Vec::len).sum::<usize>() * c.rollout.group_size;
            let k = trainer.config().kl_reward;
            trainer.set_kl_reward_coef(k.adapted(kl, played));
        }
        let sync = c.reference_sync;
        if sync.every > 0
            && (step + 1) % sync.every == 0
            && let Some(reference) = trainer.reference()
        {
            let _range = artist_tensor::nvtx::range("reference sync");
            move_reference(trainer.model(), reference, sync.alpha)?;
            if sync.reset_optimizer {
                optimizer.reset_moments()?;
            }
        }
        if c.eval.due_after(step + 1, c.steps)
            && let Some((e, secs)) = evaluate(trainer, dist.as_deref_mut(), step + 1)?
        {
            log_eval(&mut eval_log, &e, step + 1)?;
            m.set_eval(&e, c.eval.answers_per_problem(), secs);
        }
        if let Some(metrics) = metrics.as_mut() {
            metrics.write(&serde_json::to_value(&m).expect("JSON"))?;
        }
        if let Some(log) = rollout_log.as_mut() {
            m.rollouts.iter().try_for_each(|line| log.write(line))?;
        }
        bar.set_position(step + 1);
        bar.set_message(format!(
            "reward {:.2} acc {:.0}% tools/rollout {:.1} kl {:.4}",
            m.reward,
            100.0 * m.accuracy,
            m.tool_calls_per_rollout,
            m.kl
        ));
        all.push(m);
        if lead && c.save_every > 0 && (step + 1) % c.save_every == 0 && step + 1 < end {
            save(trainer, &optimizer, step + 1, drawn)?;
            crate::plots::write_curves(run_dir)?;
        }
    }
    bar.finish_and_clear();
    if lead {
        if start < end {
            save(trainer, &optimizer, end, drawn)?;
            if trainer.model().lora().is_some() {
                checkpoint::export_merged(run_dir, MERGED_DIR, trainer.model(), Some(&c.model))?;
            }
        }
        crate::plots::write_curves(run_dir)?;
    }
    // Every rank returns once rank 0's files are written.
    if let Some(comm) = dist {
        comm.barrier()?;
    }
    Ok(all)
}

/// Logged lines (a step's rollouts, an evaluation's answers) from every rank, in the order
/// one process logs them: by round where the lines have one, then by prompt or problem (the
/// ranks' shards in rank order); the first `limit`, none gathered when `limit` is 0.
pub(crate) fn gather_log(
    log: Vec<serde_json::Value>,
    limit: usize,
    comm: Option<&mut (dyn Communicator + '_)>,
) -> Result<Vec<serde_json::Value>> {
    // Every rank has the same limit: none gathers when nothing is logged.
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut all = crate::dp::gather_json_lines(log, comm)?;
    all.sort_by_key(|l| l["round"].as_u64());
    all.truncate(limit);
    Ok(all)
}

/// Where a LoRA run writes its merged model when it ends (`RUN_DIR/merged/`).
pub const MERGED_DIR: &str = "merged";

/// Gives `model` the adapters `spec` asks for (`rank > 0`), seeded by `seed`; a model that
/// has adapters already (loaded from a LoRA checkpoint) keeps them when they are the ones
/// asked for, or when none are.
pub fn attach_lora(model: &mut Qwen2, spec: &artist_model::LoraSpec, seed: u64) -> Result<()> {
    match model.lora() {
        Some(have) if spec.rank > 0 && have != spec => Err(Error::Config(format!(
            "the model has LoRA adapters already ({have:?}), not those [lora] asks for ({spec:?})"
        ))),
        Some(_) => Ok(()),
        None if spec.rank > 0 => Ok(model.add_lora(spec, seed)?),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The logprobs the KL penalty computed (the reference's, pi_old recomputed) go with
    /// their own rollouts into the groups trained on, past flat groups and rollouts left
    /// out; a rollout with pi_old recomputed keeps its sampler's logprobs beside it.
    #[test]
    fn reference_logprobs_travel_with_their_rollouts() {
        let c = GrpoRunConfig::default()
            .with_overrides(&["rollout.group_size=2".into(), "filter_flat_groups=true".into()])
            .unwrap();
        let ids: Vec<Vec<u32>> = (0..6).map(|i| vec![i]).collect();
        let played: Vec<_> = ids.iter().map(|i| (vec![9u32], i.clone(), vec![1u8], vec![-1f32])).collect();
        // Group 0 is flat; rollout 3 is not trainable.
        let totals = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        let known = Known {
            reference: (0..6).map(|i| Some(vec![-(i as f32)])).collect(),
            // pi_old recomputed for all but rollout 4.
            old: (0..6).map(|i| (i != 4).then(|| vec![-(i as f32) - 0.5])).collect(),
        };
        // Scores penalised by a KL (group 0 among them) leave the filter to the task's rewards.
        let scores = [0.9, 0.8, -0.1, 0.9, 0.7, -0.2];
        let (groups, flat) =
            groups_to_train(&c, &played, (&totals, &scores), known, |r| r.1 != [3], |r| (&r.0, &r.1, &r.2, &r.3));
        assert_eq!(flat, 1);
        let got: Vec<_> = (groups.iter().flatten())
            .map(|r| (r.ids[0], r.ref_logprobs.clone().unwrap(), r.old_logprobs[0], r.sampler_logprobs.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (2, vec![-2.0], -2.5, Some(vec![-1.0])),
                (4, vec![-4.0], -1.0, None),
                (5, vec![-5.0], -5.5, Some(vec![-1.0]))
            ]
        );
    }

    #[test]
    fn evaluation_sums_count_answers_and_problems() {
        // Three problems of two answers: one right once, one never, one twice.
        let correct = [false, true, false, false, true, true];
        let rewards = [0.5, 2.5, 0.0, 0.25, 2.0, 3.0];
        let tools = [true, true, false, false, true, false];
        // The majority answer of the first problem is right, of the others wrong.
        let voted = [true, false, false];
        let sums = Evaluation::sums(&correct, &rewards, &tools, 2, Some(&voted));
        assert_eq!(sums, [3.0, 8.25, 3.0, 6.0, 2.0, 3.0, 1.0, 1.0]);
        let e = Evaluation::from_sums(sums, true);
        assert_eq!((e.accuracy, e.reward, e.tool_use, e.pass_at_k), (0.5, 8.25 / 6.0, 0.5, 2.0 / 3.0));
        assert_eq!(e.pass_hat_k, 1.0 / 3.0, "only the third problem has both answers right");
        assert_eq!(e.maj_at_k, Some(1.0 / 3.0));
        // Episodes that do not vote.
        let sums = Evaluation::sums(&correct, &rewards, &tools, 2, None);
        assert_eq!((sums[6], Evaluation::from_sums(sums, false).maj_at_k), (0.0, None));
        // One answer a problem: pass@1 is the accuracy.
        let e = Evaluation::from_sums(Evaluation::sums(&correct, &rewards, &tools, 1, Some(&correct)), true);
        assert_eq!((e.pass_at_k, e.maj_at_k, e.pass_hat_k), (e.accuracy, Some(e.accuracy), e.accuracy));
        assert_eq!(Evaluation::from_sums([0.0; EVAL_SUMS], false), Evaluation::default());
    }

    #[test]
    fn an_f64_travels_exactly_as_three_f32s() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mantissa = (x >> 11) as f64 / (1u64 << 53) as f64;
            let v = (mantissa - 0.5) * 10f64.powi((x % 40) as i32 - 20);
            let [a, b, c] = f64_as_f32s(v);
            assert_eq!(f64::from(a) + f64::from(b) + f64::from(c), v, "{v:e}");
        }
        assert_eq!(f64_as_f32s(0.0), [0.0; 3]);
        let big = 123_456_789.123_456_78;
        assert_eq!(f64_as_f32s(big).iter().map(|&p| f64::from(p)).sum::<f64>(), big);
    }

    #[test]
    fn the_group_quota_keeps_the_first_groups_in_round_and_rank_order() {
        // Three ranks, a quota of 5: 3 groups after the first round, 9 after the second.
        let mut q = GroupQuota::new(5, true, false);
        q.found = vec![vec![1, 2, 0]];
        assert_eq!(q.counts(), (Some(1), Some(3)));
        q.found.push(vec![2, 1, 3]);
        let keep: Vec<Vec<usize>> = (0..2).map(|r| (0..3).map(|k| q.keep(r, k)).collect()).collect();
        assert_eq!(keep, [vec![1, 2, 0], vec![2, 0, 0]]);
        assert_eq!(q.counts(), (Some(2), Some(5)));
        // The kept groups' places: round 0's 1 + 2, then round 1's first rank's 2.
        let first: Vec<Vec<usize>> = (0..2).map(|r| (0..3).map(|k| q.first_place(r, k)).collect()).collect();
        assert_eq!(first, [vec![0, 1, 3], vec![3, 5, 5]]);
        // One process records and stops as the ranks do.
        let mut one = GroupQuota::new(5, true, false);
        assert!(!one.record(3, None).unwrap());
        assert!(one.record(2, None).unwrap());
        assert_eq!((one.keep(0, 0), one.keep(1, 0), one.counts()), (3, 2, (Some(2), Some(5))));
        assert_eq!((one.first_place(0, 0), one.first_place(1, 0)), (0, 3));
        // Off: one round, everything kept, nothing logged; places from the ranks' counts.
        let mut off = GroupQuota::new(5, false, true);
        assert!(off.record(0, None).unwrap());
        assert_eq!((off.keep(0, 0), off.counts()), (usize::MAX, (None, None)));
        off.found = vec![vec![2, 4, 1]];
        assert_eq!((0..3).map(|k| off.first_place(0, k)).collect::<Vec<_>>(), [0, 2, 6]);
    }

    #[test]
    fn the_majority_answer_is_judged_by_the_rollout_it_came_from() {
        let some = |v: &[&str]| v.iter().map(|a| (!a.is_empty()).then(|| a.to_string())).collect::<Vec<_>>();
        // Problem 1: 0.5 in three spellings (one judged wrong, say by a stricter judge)
        // against 7 once; the group's first answer decides. Problem 2: the right answer
        // once against 4 three times. Problem 3: no answer. Problem 4: a tie goes to the
        // group seen first, 9, judged wrong.
        let answers = some(&["0.5", "7", "\\frac12", "1/2", "3", "4", "4", "4", "", "", "", "", "9", "8", "8", "9"]);
        let correct =
            [true, false, false, true, true, false, false, false, false, false, false, false, false, true, true, false];
        assert_eq!(majority_correct(&answers, &correct, 4), [true, false, false, false]);
        // Judged by the first of the group, not by any member: 0.5's first answer wrong.
        let wrong_first = [false, false, true, true];
        assert_eq!(majority_correct(&answers[..4], &wrong_first, 4), [false]);
        // One answer a problem: the majority is the answer.
        assert_eq!(majority_correct(&answers[..4], &correct[..4], 1), [true, false, false, true]);
    }
}
