//! The GRPO loss: a clipped policy-gradient term per generated token, an optional KL
//! term against a frozen reference, aggregated in one of three ways. Forced tokens (mask
//! 0) and the prompt never enter it.
//!
//! Per generated token `t` of rollout `i`, with `rho = exp(lp_t - lp_old_t)`:
//! `l_t = -min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) + beta KL_t`, where
//! `KL_t` is `k3 = exp(ref - lp) - (ref - lp) - 1`, `k2 = (lp - ref)^2 / 2` or `k1 = lp - ref`. `lp` is computed
//! the way the sampler sampled: logits divided by the sampling temperature.
//!
//! With `clip_ratio_c = c > 1` (dual-clip PPO, Ye et al., 2020, as veRL applies it) a
//! token of negative advantage loses at most `-c A_i`: `l_t = min(l_t, -c A_i)` before the
//! KL term, so a ratio far above 1 on a token the policy should make rarer can no longer
//! take an unbounded step.
//!
//! With `tis_cap > 0` (truncated importance sampling) the policy-gradient term of each
//! token is weighted by `min(exp(lp_old_t - lp_sampler_t), tis_cap)`, a constant: pi_old
//! recomputed by the trainer over the probability the sampler drew the token with, which
//! corrects for a sampler whose numerics differ from the trainer's (bf16 products or KV
//! cache) while the ratio still starts at 1. `tis_level` forms the weight from the
//! rollout's whole ratio instead (`sequence`: `exp(sum_t d_t)`; `geometric`:
//! `exp(mean_t d_t)`, `d_t = lp_old_t - lp_sampler_t`, on every token of the rollout), and
//! `tis_mode = "mask"` zeroes a weight above `tis_cap` (or below `tis_cap_low`) instead of
//! capping it (masked importance sampling, IcePop's and the Qwen team's Seq-MIS): veRL's
//! `rollout_is_level` / `rollout_is_mode`, TRL's `vllm_importance_sampling_mode`. Log
//! weights are bounded to +-20 first (veRL's safety bound), so no weight is infinite.
//! `tis_veto = v > 0` (veRL's `rollout_is_veto_threshold`) zeroes every weight of a rollout
//! with any token whose own ratio is below `v`, in either mode and at any level: one token
//! the trainer finds thousands of times less likely than the sampler did marks a rollout
//! the sampler's numerics broke. A zeroed weight removes the token's policy gradient, and
//! the aggregation still counts it (TRL's convention); with `tis_drop_rejected` a rejected
//! token leaves the loss altogether instead, its KL and entropy terms and its place in the
//! aggregation's counts included (veRL's: its rejection edits the response mask), which
//! [`GrpoConfig::drop_rejected`] does by taking it out of the rollout's mask.
//!
//! GSPO (`importance_sampling_level = "sequence"`, Zheng et al., 2025) replaces each
//! token's ratio by its rollout's, the geometric mean of the token ratios
//! `s_i = exp(mean_t(lp_t - lp_old_t))` over the rollout's generated tokens, as veRL and
//! TRL write it: `rho_t = exp(lp_t - sg(lp_t) + sg(log s_i))`, with `log s_i` capped at 10
//! (`sg`: a constant). Every token then has the value `s_i`, so a rollout clips as a whole,
//! and the gradient of its own logprob scaled by `s_i`; under `seq_mean_token_mean` that is
//! the gradient of the sequence-level objective. GSPO's paper clips `s_i` far more tightly
//! than token ratios (3e-4 and 4e-4).
//!
//! With `entropy_coeff = e > 0` (an entropy bonus, veRL's `entropy_coeff`) each token's loss
//! is `l_t - e H_t`, `H_t` the policy's entropy at the token's position at the sampling
//! temperature, differentiated through the same chunked pass as `lp` (after the KL term and
//! outside the truncated importance weight, as veRL adds it).
//!
//! Aggregation is a weighted sum `sum_t w_t l_t` with constant weights from
//! [`token_weights`] over the whole batch, so micro-batches add up to the full loss:
//! * `seq_mean_token_mean` (GRPO): `w = 1 / (n_i S)`, `n_i` the rollout's generated
//!   tokens, `S` the rollouts that have any;
//! * `token_mean` (DAPO): `w = 1 / N`, `N` all generated tokens of the batch;
//! * `seq_mean_token_sum_norm` (Dr. GRPO): `w = 1 / (S L)`, `L` a constant (the maximum
//!   response length).

use artist_autograd::{Ctx, Var, token_logprobs_in, token_logprobs_with_entropy_in};
use artist_model::Qwen2;
use artist_tensor::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    #[default]
    SeqMeanTokenMean,
    TokenMean,
    SeqMeanTokenSumNorm,
}

/// Which ratio the clipped policy-gradient term uses (`importance_sampling_level`, as TRL
/// names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceLevel {
    /// Each token's own ratio (GRPO, DAPO).
    #[default]
    Token,
    /// The rollout's geometric-mean ratio on every token (GSPO).
    Sequence,
}

/// What a truncated importance weight is formed from (`tis_level`; veRL's
/// `rollout_is_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TisLevel {
    /// Each token's own ratio pi_old / pi_sampler (TRL's and veRL's default).
    #[default]
    Token,
    /// The rollout's ratio, the product of its tokens' (unbiased, high variance).
    Sequence,
    /// The geometric mean of the rollout's token ratios.
    Geometric,
}

/// What a truncated importance weight past its bounds becomes (`tis_mode`; veRL's
/// `rollout_is_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TisMode {
    /// Capped at `tis_cap` (TIS).
    #[default]
    Truncate,
    /// 0 above `tis_cap` or below `tis_cap_low`, so the token (or rollout) gives no policy
    /// gradient (MIS).
    Mask,
}

/// veRL's bound on a log importance weight: `exp(20)` is 4.9e8, beyond any cap.
const MAX_TIS_LOG_WEIGHT: f64 = 20.0;

/// Estimators of `KL(pi || ref)` from one sampled token, with `d = lp - ref` (Schulman's
/// k1, k2, k3; veRL's `kl`, `mse`, `low_var_kl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `d`: unbiased, can be negative.
    K1,
    /// `d^2 / 2`: biased, never negative, the gradient of k1's square.
    K2,
    /// `exp(-d) + d - 1`: unbiased and never negative (GRPO's).
    #[default]
    K3,
}

impl KlEstimator {
    /// The estimate from a token's logprob under the policy and under the reference.
    pub fn estimate(self, lp: f64, reference: f64) -> f64 {
        let d = lp - reference;
        match self {
            KlEstimator::K1 => d,
            KlEstimator::K2 => 0.5 * d * d,
            KlEstimator::K3 => (-d).exp() + d - 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    pub clip_low: f64,
    /// Clip-higher (DAPO) when above `clip_low`.
    pub clip_high: f64,
    /// KL coefficient; 0 needs no reference model.
    pub beta: f64,
    pub kl: KlEstimator,
    pub aggregation: Aggregation,
    /// `L` of `seq_mean_token_sum_norm`.
    pub norm_length: usize,
    /// The temperature the rollouts were sampled at.
    pub temperature: f32,
    /// Truncated importance sampling: weight each token's policy-gradient term by
    /// `min(pi_old / pi_sampler, tis_cap)` (0: off). Needs each rollout's
    /// [`TrainRollout::sampler_logprobs`] (pi_old recomputed by the trainer).
    pub tis_cap: f64,
    /// `token` (default), `sequence` or `geometric`: the ratio the weight is formed from.
    pub tis_level: TisLevel,
    /// `truncate` (default): cap the weight at `tis_cap`; `mask`: zero it outside
    /// `[tis_cap_low, tis_cap]`.
    pub tis_mode: TisMode,
    /// With `tis_mode = "mask"`: weights below it are zeroed too (0, the default: none,
    /// as TRL; veRL's lower threshold is typically `1 / tis_cap`).
    pub tis_cap_low: f64,
    /// Veto (veRL's `rollout_is_veto_threshold`, 1e-4 there): a rollout with any generated
    /// token whose ratio pi_old / pi_sampler is below it gets weight 0 on every token.
    /// 0 (the default): no veto.
    pub tis_veto: f64,
    /// Whether tokens whose weight the mask mode or the veto zeroed leave the loss and its
    /// aggregation's counts (veRL's) rather than only losing their policy gradient (TRL's,
    /// the default).
    pub tis_drop_rejected: bool,
    /// `token` (default) or `sequence` (GSPO): see the module doc.
    pub importance_sampling_level: ImportanceLevel,
    /// Dual-clip PPO's bound for negative advantages (veRL's `clip_ratio_c`, 3 there): a
    /// token's policy-gradient loss is at most `-clip_ratio_c * A`. 0: off; else above 1.
    pub clip_ratio_c: f64,
    /// Entropy bonus (veRL's `entropy_coeff`, OpenRLHF's `entropy_loss_coef`): each
    /// generated token's loss less `entropy_coeff` times the policy's entropy at that
    /// position (at the sampling temperature), aggregated with the same weights, so the
    /// gradient pushes the entropy up. 0: off (the default, as in veRL).
    pub entropy_coeff: f64,
    /// Policy gradient on the high-entropy tokens only ("Beyond the 80/20 Rule", Wang et
    /// al., 2025; TRL's `top_entropy_quantile`): the trainer keeps the policy-gradient term
    /// of the generated tokens whose entropy under pi_old is at or above the batch's
    /// `1 - top_entropy_quantile` quantile and drops the others' (their KL and entropy
    /// terms stay, and the aggregation still counts them), through
    /// [`TrainRollout::pg_mask`]. 1 (the default): every token; 0.2: the paper's.
    pub top_entropy_quantile: f64,
}

/// GSPO's cap on a rollout's log ratio (veRL's): beyond it the ratio is a constant.
const MAX_SEQUENCE_LOG_RATIO: f64 = 10.0;

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            clip_low: 0.2,
            clip_high: 0.2,
            beta: 0.0,
            kl: KlEstimator::K3,
            aggregation: Aggregation::SeqMeanTokenMean,
            norm_length: 8000,
            temperature: 1.0,
            tis_cap: 0.0,
            tis_level: TisLevel::Token,
            tis_mode: TisMode::Truncate,
            tis_cap_low: 0.0,
            tis_veto: 0.0,
            tis_drop_rejected: false,
            importance_sampling_level: ImportanceLevel::Token,
            clip_ratio_c: 0.0,
            entropy_coeff: 0.0,
            top_entropy_quantile: 1.0,
        }
    }
}

impl GrpoConfig {
    /// The truncated importance weights of `r`'s generated tokens, in order (`None` with
    /// `tis_cap = 0`, without the sampler's logprobs, or with lengths that disagree): see
    /// the module doc.
    pub fn tis_weights(&self, r: &TrainRollout) -> Option<Vec<f32>> {
        let n = r.ids.len();
        let sampled = r.sampler_logprobs.as_ref().filter(|_| self.tis_cap > 0.0)?;
        if sampled.len() != n || r.mask.len() != n || r.old_logprobs.len() != n {
            return None;
        }
        let d: Vec<f64> =
            (0..n).filter(|&j| r.mask[j] == 1).map(|j| f64::from(r.old_logprobs[j]) - f64::from(sampled[j])).collect();
        let whole = match self.tis_level {
            TisLevel::Token => None,
            TisLevel::Sequence => Some(d.iter().sum::<f64>()),
            TisLevel::Geometric => Some(d.iter().sum::<f64>() / d.len().max(1) as f64),
        };
        if self.tis_veto > 0.0 && d.iter().any(|&x| x < self.tis_veto.ln()) {
            return Some(vec![0.0; d.len()]);
        }
        let weight = |log_w: f64| {
            let w = log_w.clamp(-MAX_TIS_LOG_WEIGHT, MAX_TIS_LOG_WEIGHT).exp();
            let w = match self.tis_mode {
                TisMode::Truncate => w.min(self.tis_cap),
                TisMode::Mask if w > self.tis_cap || w < self.tis_cap_low => 0.0,
                TisMode::Mask => w,
            };
            w as f32
        };
        Some(d.iter().map(|&x| weight(whole.unwrap_or(x))).collect())
    }

    /// With [`GrpoConfig::tis_drop_rejected`]: takes the generated tokens whose weight the
    /// bounds or the veto zeroed out of the rollout's mask, so that no term of the loss and
    /// no count of the aggregation includes them; how many it took. The weights are formed
    /// first: a rollout-level weight (sequence, geometric, veto) rejects all of its tokens
    /// or none, and a token-level one depends on its token alone, so the tokens left keep
    /// the weights they had.
    pub fn drop_rejected(&self, r: &mut TrainRollout) -> usize {
        if !self.tis_drop_rejected {
            return 0;
        }
        let Some(w) = self.tis_weights(r) else { return 0 };
        let generated: Vec<usize> = (0..r.mask.len()).filter(|&j| r.mask[j] == 1).collect();
        let mut dropped = 0;
        for (&j, &w) in generated.iter().zip(&w) {
            if w == 0.0 {
                r.mask[j] = 0;
                dropped += 1;
            }
        }
        dropped
    }

    /// Whether [`GrpoConfig::tis_veto`] zeroes the rollout's weights: some generated token's
    /// ratio pi_old / pi_sampler is below it (`false` where no weights are formed).
    pub fn tis_vetoed(&self, r: &TrainRollout) -> bool {
        let Some(sampled) = r.sampler_logprobs.as_ref().filter(|_| self.tis_cap > 0.0 && self.tis_veto > 0.0) else {
            return false;
        };
        let n = r.ids.len();
        if sampled.len() != n || r.mask.len() != n || r.old_logprobs.len() != n {
            return false;
        }
        (0..n).any(|j| r.mask[j] == 1 && f64::from(r.old_logprobs[j]) - f64::from(sampled[j]) < self.tis_veto.ln())
    }
}

/// A rollout as the trainer sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainRollout {
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    /// 1 = generated (trained on), 0 = forced.
    pub mask: Vec<u8>,
    /// pi_old: the logprobs the sampler drew `ids` with, or the policy's recomputed by the
    /// trainer before its updates ([`rollout_logprobs`]).
    pub old_logprobs: Vec<f32>,
    /// The sampler's logprobs when `old_logprobs` were recomputed (truncated importance
    /// sampling reads them; `None` otherwise).
    pub sampler_logprobs: Option<Vec<f32>>,
    /// The reference model's logprobs of `ids` (needed when beta > 0).
    pub ref_logprobs: Option<Vec<f32>>,
    pub advantage: f32,
    /// The reward its advantage was computed from (the task's, less any KL penalty).
    pub score: f64,
    /// Per token, whether its policy-gradient term counts (1) or not (0; the KL and
    /// entropy terms count either way); `None`: every generated token's does. Set by the
    /// trainer under [`GrpoConfig::top_entropy_quantile`].
    pub pg_mask: Option<Vec<u8>>,
    /// Its group's place in the step's batch (0, 1, ... in the order one process plays
    /// them, whichever rank holds it): the trainer's `mini_batches` split by it.
    pub group: usize,
}

impl TrainRollout {
    pub fn generated(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 1).count()
    }

    /// Its tokens as a forward pass packs them: prompt and response.
    pub fn packed_len(&self) -> usize {
        self.prompt_ids.len() + self.ids.len()
    }
}

/// The aggregation weight of every response token of every rollout (0 where masked),
/// computed over the whole batch.
pub fn token_weights(batch: &[&TrainRollout], agg: Aggregation, norm_length: usize) -> Vec<Vec<f32>> {
    let seqs = batch.iter().filter(|r| r.generated() > 0).count();
    let total: usize = batch.iter().map(|r| r.generated()).sum();
    token_weights_global(batch, agg, norm_length, seqs, total)
}

/// [`token_weights`] for a shard of a batch split over ranks: `seqs` (rollouts with
/// generated tokens) and `total` (generated tokens) count the whole batch, so the
/// shards' weighted losses add up to the loss of the whole batch.
pub fn token_weights_global(
    batch: &[&TrainRollout],
    agg: Aggregation,
    norm_length: usize,
    seqs: usize,
    total: usize,
) -> Vec<Vec<f32>> {
    let seqs = seqs.max(1) as f64;
    batch
        .iter()
        .map(|r| {
            let w = match agg {
                Aggregation::SeqMeanTokenMean => 1.0 / (r.generated().max(1) as f64 * seqs),
                Aggregation::TokenMean => 1.0 / total.max(1) as f64,
                Aggregation::SeqMeanTokenSumNorm => 1.0 / (seqs * norm_length.max(1) as f64),
            };
            r.mask.iter().map(|&m| if m == 1 { w as f32 } else { 0.0 }).collect()
        })
        .collect()
}

/// What one loss evaluation saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GrpoStats {
    pub tokens: usize,
    /// Tokens whose ratio lay outside the clip range on the side that clips, or (dual
    /// clip) above `clip_ratio_c` with a negative advantage.
    pub clipped: usize,
    pub ratio_mean: f64,
    pub kl_mean: f64,
    /// The policy's mean entropy over the generated tokens, in nats, at the sampling
    /// temperature; 0 when not measured ([`grpo_loss_measuring`]; always measured with an
    /// entropy bonus).
    pub entropy_mean: f64,
    /// Largest |lp - lp_old|: 0 up to float noise at the first step of a batch.
    pub max_abs_log_ratio: f64,
    /// The new logprobs, per rollout (masked positions hold the old ones).
    #[serde(skip)]
    pub logprobs: Vec<Vec<f32>>,
}

/// The GRPO loss of `batch` (any subset of the batch `weights` were computed over).
pub fn grpo_loss(
    model: &Qwen2,
    ctx: &Ctx,
    batch: &[&TrainRollout],
    weights: &[&[f32]],
    c: &GrpoConfig,
) -> artist_model::Result<(Var, GrpoStats)> {
    grpo_loss_measuring(model, ctx, batch, weights, c, true)
}

/// [`grpo_loss`], measuring the policy's entropy only when `entropy` or when the loss has an
/// entropy bonus (otherwise [`GrpoStats::entropy_mean`] is 0 and the vocabulary's rows are
/// not read for it): a trainer that logs the entropy of the sampling policy needs it on the
/// first update of a batch, not on the later ones.
pub fn grpo_loss_measuring(
    model: &Qwen2,
    ctx: &Ctx,
    batch: &[&TrainRollout],
    weights: &[&[f32]],
    c: &GrpoConfig,
    entropy: bool,
) -> artist_model::Result<(Var, GrpoStats)> {
    let bad = |m: String| artist_model::Error::Input(m);
    let (mut rows, mut targets, mut old, mut adv, mut w, mut reference, mut tis, mut pg) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut offset = 0u32;
    for (r, wr) in batch.iter().zip(weights) {
        let n = r.ids.len();
        if r.mask.len() != n || r.old_logprobs.len() != n || wr.len() != n || r.prompt_ids.is_empty() {
            return Err(bad(format!(
                "a rollout's ids ({n}), mask, logprobs and weights must have one entry per token"
            )));
        }
        if c.beta > 0.0 && r.ref_logprobs.as_ref().is_none_or(|v| v.len() != n) {
            return Err(bad("beta > 0 needs the reference logprobs of every rollout".into()));
        }
        if r.pg_mask.as_ref().is_some_and(|v| v.len() != n) {
            return Err(bad(format!("a rollout's policy-gradient mask must have one entry per token ({n})")));
        }
        if c.tis_cap > 0.0 && r.sampler_logprobs.as_ref().is_none_or(|v| v.len() != n) {
            return Err(bad(
                "tis_cap > 0 needs the sampler's logprobs of every rollout (pi_old recomputed by the trainer)".into(),
            ));
        }
        if let Some(weights) = c.tis_weights(r) {
            tis.extend(weights);
        }
        let p = r.prompt_ids.len() as u32;
        for j in 0..n {
            if r.mask[j] == 1 {
                rows.push(offset + p + j as u32 - 1);
                targets.push(r.ids[j]);
                old.push(r.old_logprobs[j]);
                adv.push(r.advantage);
                w.push(wr[j]);
                if let Some(rf) = &r.ref_logprobs {
                    reference.push(rf[j]);
                }
                pg.push(r.pg_mask.as_ref().map_or(1.0, |m| f32::from(m[j])));
            }
        }
        offset += p + n as u32;
    }
    let n = targets.len();
    if n == 0 {
        return Err(bad("no generated token in this batch".into()));
    }
    let seqs: Vec<Vec<u32>> = batch.iter().map(|r| r.prompt_ids.iter().chain(&r.ids).copied().collect()).collect();
    let seq_refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let hidden = model.hidden_states(ctx, &seq_refs, Some(&rows))?;
    let scale = if c.temperature > 0.0 { 1.0 / c.temperature } else { 1.0 };
    let head = ctx.param(model.lm_head_param());
    let (lp, entropy) = if entropy || c.entropy_coeff > 0.0 {
        let (lp, h) = token_logprobs_with_entropy_in(&hidden, &head, &targets, scale, None, ctx.matmul_dtype())?;
        (lp, Some(h))
    } else {
        (token_logprobs_in(&hidden, &head, &targets, scale, None, ctx.matmul_dtype())?, None)
    };
    let konst = |v: &[f32]| -> artist_model::Result<Var> {
        Ok(Var::constant(Tensor::from_vec(v.to_vec(), v.len(), model.device())?))
    };
    let (adv_v, w_v) = (konst(&adv)?, konst(&w)?);
    let ratio = match c.importance_sampling_level {
        ImportanceLevel::Token => lp.sub(&konst(&old)?)?.exp()?,
        ImportanceLevel::Sequence => {
            // lp_t + (log s_i - lp_t): the value log s_i, the gradient lp_t's. A rollout
            // whose log ratio passes the cap gets a constant ratio (veRL's clamp).
            let lpv = lp.value().to_vec::<f32>()?;
            // Per token: the shift to its rollout's log ratio, whether that is below the cap
            // (1) or not (0), and the capped value (0 below it).
            let (mut shift, mut below, mut cap) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
            let mut t = 0;
            for r in batch {
                let k = r.generated();
                let log_s = (t..t + k).map(|i| lpv[i] as f64 - old[i] as f64).sum::<f64>() / k.max(1) as f64;
                let capped = log_s > MAX_SEQUENCE_LOG_RATIO;
                for &l in &lpv[t..t + k] {
                    shift.push((log_s.min(MAX_SEQUENCE_LOG_RATIO) - l as f64) as f32);
                    below.push(if capped { 0.0 } else { 1.0 });
                    cap.push(if capped { MAX_SEQUENCE_LOG_RATIO as f32 } else { 0.0 });
                }
                t += k;
            }
            let live = lp.add(&konst(&shift)?)?.mul(&konst(&below)?)?;
            live.add(&konst(&cap)?)?.exp()?
        }
    };
    let unclipped = ratio.mul(&adv_v)?;
    let clipped = ratio.clamp((1.0 - c.clip_low) as f32, (1.0 + c.clip_high) as f32)?.mul(&adv_v)?;
    let mut per_token = unclipped.minimum(&clipped)?.neg()?;
    if c.clip_ratio_c > 0.0 {
        let bound: Vec<f32> =
            adv.iter().map(|&a| if a < 0.0 { -(c.clip_ratio_c as f32) * a } else { f32::INFINITY }).collect();
        per_token = per_token.minimum(&konst(&bound)?)?;
    }
    if c.tis_cap > 0.0 {
        per_token = per_token.mul(&konst(&tis)?)?;
    }
    if pg.iter().any(|&m| m != 1.0) {
        per_token = per_token.mul(&konst(&pg)?)?;
    }
    let mut kl_values = vec![0f32; n];
    if c.beta > 0.0 {
        let ref_v = konst(&reference)?;
        let kl = match c.kl {
            KlEstimator::K3 => {
                let d = ref_v.sub(&lp)?;
                d.exp()?.sub(&d)?.add_scalar(-1.0)?
            }
            KlEstimator::K1 => lp.sub(&ref_v)?,
            KlEstimator::K2 => {
                let d = lp.sub(&ref_v)?;
                d.mul(&d)?.mul_scalar(0.5)?
            }
        };
        kl_values = kl.value().to_vec::<f32>()?;
        per_token = per_token.add(&kl.mul_scalar(c.beta as f32)?)?;
    }
    if let (true, Some(h)) = (c.entropy_coeff > 0.0, &entropy) {
        per_token = per_token.sub(&h.mul_scalar(c.entropy_coeff as f32)?)?;
    }
    let loss = per_token.mul(&w_v)?.sum_all()?;

    // Statistics from the values.
    let (lpv, rv) = (lp.value().to_vec::<f32>()?, ratio.value().to_vec::<f32>()?);
    let dual = if c.clip_ratio_c > 0.0 { c.clip_ratio_c as f32 } else { f32::INFINITY };
    let clipped_n = rv
        .iter()
        .zip(&adv)
        .filter(|(r, a)| {
            (**a > 0.0 && **r > (1.0 + c.clip_high) as f32)
                || (**a < 0.0 && (**r < (1.0 - c.clip_low) as f32 || **r > dual))
        })
        .count();
    let mut logprobs = Vec::with_capacity(batch.len());
    let mut k = 0;
    for r in batch {
        logprobs.push(
            r.mask
                .iter()
                .zip(&r.old_logprobs)
                .map(|(&m, &o)| {
                    if m == 1 {
                        k += 1;
                        lpv[k - 1]
                    } else {
                        o
                    }
                })
                .collect(),
        );
    }
    let stats = GrpoStats {
        tokens: n,
        clipped: clipped_n,
        ratio_mean: rv.iter().map(|&x| x as f64).sum::<f64>() / n as f64,
        kl_mean: kl_values.iter().map(|&x| x as f64).sum::<f64>() / n as f64,
        entropy_mean: match &entropy {
            Some(h) => h.value().to_vec::<f32>()?.iter().map(|&x| x as f64).sum::<f64>() / n as f64,
            None => 0.0,
        },
        max_abs_log_ratio: lpv
            .iter()
            .zip(&old)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, |m, x| if x.is_nan() || x > m { x } else { m }),
        logprobs,
    };
    Ok((loss, stats))
}

/// How a batch of packed sequences is cut into forward (and backward) passes: at most
/// `sequences` sequences and at most `tokens` tokens a pass, each bound off at 0. A
/// token bound keeps a pass's activations in proportion to what it holds whatever the
/// lengths (veRL's `use_dynamic_bsz` with `ppo_max_token_len_per_gpu`), where a count of
/// sequences lets one pass of long tool-use rollouts take many times another's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MicroBatching {
    /// Sequences a pass (0: any number).
    pub sequences: usize,
    /// Tokens a pass, each sequence counted whole as it is packed (prompt and response;
    /// 0: any number).
    pub tokens: usize,
}

impl From<usize> for MicroBatching {
    /// At most `sequences` sequences a pass, whatever their length.
    fn from(sequences: usize) -> MicroBatching {
        MicroBatching { sequences, tokens: 0 }
    }
}

impl MicroBatching {
    /// The passes over the sequences whose packed lengths are `lens`: per pass the indices
    /// of its sequences in increasing order, the passes ordered by their first index, every
    /// sequence in exactly one. A sequence longer than `tokens` takes a pass alone (the
    /// trainers' settings refuse a token bound below the longest sequence they can make).
    ///
    /// With a count bound alone, consecutive runs of `sequences` (fixed micro-batches, as
    /// TRL's and veRL's without dynamic batch sizes). With a token bound, the passes are
    /// packed, as veRL's dynamic batch sizes are: the fewest passes found by the in-order cut
    /// ([`MicroBatching::in_order`]), first-fit over the sequences longest first, or the
    /// sequences longest first each into the least-filled of k passes (tried from the least
    /// k any packing could have), and among those the plan whose fullest pass holds the
    /// fewest tokens (the in-order cut on a tie, so a batch that already cuts evenly keeps
    /// its order). So there are never more passes than in order nor a fuller one, nearly
    /// always the fewest possible (tests/grpo.rs), and the plan follows from `lens` alone:
    /// a run's bits depend on nothing else.
    pub fn passes(&self, lens: &[usize]) -> Vec<Vec<usize>> {
        let in_order: Vec<Vec<usize>> = self.in_order(lens).into_iter().map(Vec::from_iter).collect();
        if self.tokens == 0 || in_order.len() <= 1 {
            return in_order;
        }
        let (max_seqs, max_tokens) = self.bounds();
        let load = |pass: &[usize]| pass.iter().map(|&i| lens[i]).fold(0usize, usize::saturating_add);
        // Longest first, the earlier on a tie.
        let mut longest: Vec<usize> = (0..lens.len()).collect();
        longest.sort_by_key(|&i| (std::cmp::Reverse(lens[i]), i));
        let fits = |pass: &Vec<usize>, loads: usize, i: usize| {
            pass.is_empty() || (pass.len() < max_seqs && loads.saturating_add(lens[i]) <= max_tokens)
        };
        let mut first_fit: Vec<Vec<usize>> = Vec::new();
        let mut loads: Vec<usize> = Vec::new();
        for &i in &longest {
            match (0..first_fit.len()).find(|&p| fits(&first_fit[p], loads[p], i)) {
                Some(p) => {
                    first_fit[p].push(i);
                    loads[p] = loads[p].saturating_add(lens[i]);
                }
                None => {
                    first_fit.push(vec![i]);
                    loads.push(lens[i]);
                }
            }
        }
        // Longest first into the least-filled of k passes with room (the lowest on a tie),
        // for the fewest k it places every sequence at, from the least any packing needs.
        let spread = |k: usize| {
            let mut plan = vec![Vec::new(); k];
            let mut loads = vec![0usize; k];
            for &i in &longest {
                let p = (0..k).filter(|&p| fits(&plan[p], loads[p], i)).min_by_key(|&p| (loads[p], p))?;
                plan[p].push(i);
                loads[p] = loads[p].saturating_add(lens[i]);
            }
            Some(plan)
        };
        // Each sequence over the token bound takes a pass alone; the rest need their tokens'
        // worth of passes, and all of them their count's.
        let over = lens.iter().filter(|&&l| l > max_tokens).count();
        let rest = lens.iter().filter(|&&l| l <= max_tokens).fold(0usize, |t, &l| t.saturating_add(l));
        let least = (over + rest.div_ceil(max_tokens)).max(lens.len().div_ceil(max_seqs));
        let k = in_order.len().min(first_fit.len());
        let spread = (least.clamp(1, k)..=k).find_map(spread);
        let mut best = in_order;
        for mut plan in [Some(first_fit), spread].into_iter().flatten() {
            plan.retain(|pass| !pass.is_empty());
            for pass in &mut plan {
                pass.sort_unstable();
            }
            plan.sort_unstable_by_key(|pass| pass[0]);
            let fullest = |plan: &[Vec<usize>]| plan.iter().map(|p| load(p)).max().unwrap_or(0);
            if (plan.len(), fullest(&plan)) < (best.len(), fullest(&best)) {
                best = plan;
            }
        }
        best
    }

    /// Consecutive ranges of the sequences whose packed lengths are `lens`, in order and
    /// covering all of them: a pass ends before the sequence that would take it past either
    /// bound. Under a token bound `T` alone any two neighbouring passes hold more than `T`
    /// together, so there are at most `2 total / T + 1` of them.
    pub fn in_order(&self, lens: &[usize]) -> Vec<std::ops::Range<usize>> {
        let (max_seqs, max_tokens) = self.bounds();
        let mut out = vec![];
        let (mut start, mut tokens) = (0, 0usize);
        for (i, &len) in lens.iter().enumerate() {
            if i > start && (i - start == max_seqs || tokens.saturating_add(len) > max_tokens) {
                out.push(start..i);
                (start, tokens) = (i, 0);
            }
            tokens = tokens.saturating_add(len);
        }
        if start < lens.len() {
            out.push(start..lens.len());
        }
        out
    }

    fn bounds(&self) -> (usize, usize) {
        (
            if self.sequences == 0 { usize::MAX } else { self.sequences },
            if self.tokens == 0 { usize::MAX } else { self.tokens },
        )
    }
}

/// `model`'s logprobs of every rollout's generated tokens at the sampling temperature,
/// computed as `ctx` says (its attention and matmul dtypes; an inference context records
/// nothing for backward), in passes cut by `micro_batch` (a count of rollouts, or a
/// [`MicroBatching`]), packed as [`grpo_loss`] packs them. The frozen reference's logprobs for the KL term
/// ([`TrainRollout::ref_logprobs`]), or pi_old recomputed by the trainer. Masked positions
/// hold 0.
pub fn rollout_logprobs(
    model: &Qwen2,
    ctx: &Ctx,
    batch: &[&TrainRollout],
    temperature: f32,
    micro_batch: impl Into<MicroBatching>,
) -> artist_model::Result<Vec<Vec<f32>>> {
    Ok(rollout_passes(model, ctx, batch, temperature, micro_batch.into(), false)?.0)
}

/// [`rollout_logprobs`], and from the same passes `model`'s entropy (in nats, at the
/// sampling temperature) at every generated token's position; masked positions hold 0.
pub fn rollout_logprobs_and_entropies(
    model: &Qwen2,
    ctx: &Ctx,
    batch: &[&TrainRollout],
    temperature: f32,
    micro_batch: impl Into<MicroBatching>,
) -> artist_model::Result<(PerToken, PerToken)> {
    let (lp, h) = rollout_passes(model, ctx, batch, temperature, micro_batch.into(), true)?;
    Ok((lp, h.unwrap_or_default()))
}

/// Per rollout, a value for each of its tokens (0 where masked).
pub type PerToken = Vec<Vec<f32>>;

/// The entropy at or above which a token's policy-gradient term is kept under
/// [`GrpoConfig::top_entropy_quantile`] `top`: the `1 - top` quantile of `entropies` (every
/// generated token's in the batch), interpolated linearly between neighbours as
/// `torch.quantile` does (TRL's threshold). `None` for no tokens.
pub fn entropy_threshold(entropies: &[f32], top: f64) -> Option<f64> {
    if entropies.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = entropies.iter().map(|&x| f64::from(x)).collect();
    v.sort_by(f64::total_cmp);
    let at = (1.0 - top).clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, frac) = (at.floor() as usize, at - at.floor());
    let hi = (lo + 1).min(v.len() - 1);
    Some(v[lo] + frac * (v[hi] - v[lo]))
}

fn rollout_passes(
    model: &Qwen2,
    ctx: &Ctx,
    batch: &[&TrainRollout],
    temperature: f32,
    micro_batch: MicroBatching,
    entropies: bool,
) -> artist_model::Result<(PerToken, Option<PerToken>)> {
    let scale = if temperature > 0.0 { 1.0 / temperature } else { 1.0 };
    let n = batch.len();
    let (mut out, mut out_h) = (vec![Vec::new(); n], vec![Vec::new(); if entropies { n } else { 0 }]);
    // Per rollout of the pass, the values of its generated tokens in place, 0 elsewhere.
    let spread = |pass: &[usize], v: &[f32], out: &mut [Vec<f32>]| {
        let mut k = 0;
        for &i in pass {
            out[i] = batch[i]
                .mask
                .iter()
                .map(|&m| {
                    if m == 1 {
                        k += 1;
                        v[k - 1]
                    } else {
                        0.0
                    }
                })
                .collect();
        }
    };
    let lens: Vec<usize> = batch.iter().map(|r| r.packed_len()).collect();
    for pass in micro_batch.passes(&lens) {
        let chunk: Vec<&TrainRollout> = pass.iter().map(|&i| batch[i]).collect();
        let (mut rows, mut targets) = (vec![], vec![]);
        let mut offset = 0u32;
        for r in &chunk {
            let p = r.prompt_ids.len() as u32;
            if p == 0 || r.mask.len() != r.ids.len() {
                return Err(artist_model::Error::Input("a rollout needs a prompt and one mask entry per token".into()));
            }
            for (j, (&m, &id)) in r.mask.iter().zip(&r.ids).enumerate() {
                if m == 1 {
                    rows.push(offset + p + j as u32 - 1);
                    targets.push(id);
                }
            }
            offset += p + r.ids.len() as u32;
        }
        if targets.is_empty() {
            for &i in &pass {
                out[i] = vec![0.0; batch[i].ids.len()];
                if entropies {
                    out_h[i] = vec![0.0; batch[i].ids.len()];
                }
            }
            continue;
        }
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|r| r.prompt_ids.iter().chain(&r.ids).copied().collect()).collect();
        let seq_refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let hidden = model.hidden_states(ctx, &seq_refs, Some(&rows))?;
        let head = ctx.param(model.lm_head_param());
        if entropies {
            let (lp, h) = token_logprobs_with_entropy_in(&hidden, &head, &targets, scale, None, ctx.matmul_dtype())?;
            spread(&pass, &lp.value().to_vec::<f32>()?, &mut out);
            spread(&pass, &h.value().to_vec::<f32>()?, &mut out_h);
        } else {
            let lp = token_logprobs_in(&hidden, &head, &targets, scale, None, ctx.matmul_dtype())?;
            spread(&pass, &lp.value().to_vec::<f32>()?, &mut out);
        }
    }
    Ok((out, entropies.then_some(out_h)))
}
