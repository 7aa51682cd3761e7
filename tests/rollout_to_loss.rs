//! Rollouts from the engine meet the GRPO loss: at the first optimiser step the trainer's
//! logprobs (temperature-scaled, recomputed in one training forward) equal the ones the
//! sampler drew with, so every ratio is 1 up to float noise.

use std::path::{Path, PathBuf};

use artist::autograd::{Ctx, Tape};
use artist::model::Qwen2;
use artist_engine::{RolloutConfig, RolloutEngine, SamplingParams};
use artist_rl::grpo::rollout_logprobs;
use artist_rl::{GrpoConfig, TrainRollout, grpo_loss, token_weights};
use artist_tensor::DType;
use artist_tokenizer::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2").join(name)
}

#[test]
fn first_step_ratios_are_one() {
    let dir = fixture("tiny-gqa");
    let (model, tok) = (Qwen2::load(&dir).unwrap(), Tokenizer::from_dir(&dir).unwrap());
    for temperature in [1.0f32, 0.7] {
        let engine = RolloutEngine {
            policy: &model,
            tokenizer: &tok,
            tools: vec![],
            config: RolloutConfig {
                group_size: 4,
                sampling: SamplingParams { temperature, top_p: 0.9, seed: 3, ..Default::default() },
                max_turn_tokens: 20,
                max_batch: 8,
                ..Default::default()
            },
        };
        let prompts = vec![tok.encode("Twelve times seven").unwrap(), tok.encode("A short story:").unwrap()];
        let (rollouts, _) = engine.run(&prompts).unwrap();
        let train = as_train(&rollouts);
        let refs: Vec<&TrainRollout> = train.iter().collect();
        let w = token_weights(&refs, Default::default(), 1);
        let ws: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
        let tape = Tape::new();
        let c = GrpoConfig { temperature, ..Default::default() };
        let (_, stats) = grpo_loss(&model, &Ctx::training(&tape), &refs, &ws, &c).unwrap();
        assert_eq!(stats.tokens, train.iter().map(|r| r.generated()).sum::<usize>());
        assert!(stats.max_abs_log_ratio < 1e-4, "T = {temperature}: |log ratio| up to {}", stats.max_abs_log_ratio);
        assert_eq!(stats.clipped, 0);
    }
}

/// A sampler in bf16 (products and KV cache) draws tokens with logprobs a little off the
/// f32 trainer's, so the first ratio is not 1; pi_old recomputed by the trainer
/// (`rollout_logprobs`) brings it back to 1 up to float noise, and truncated importance
/// sampling then weights each token by min(pi_old / pi_sampler, cap): at ratio 1 and
/// advantage 1 the loss is minus the weighted sum of those weights.
#[test]
fn recomputed_pi_old_closes_a_bf16_samplers_gap() {
    let dir = fixture("tiny-gqa");
    let (model, tok) = (Qwen2::load(&dir).unwrap(), Tokenizer::from_dir(&dir).unwrap());
    let temperature = 1.0f32;
    let engine = RolloutEngine {
        policy: &model,
        tokenizer: &tok,
        tools: vec![],
        config: RolloutConfig {
            group_size: 4,
            sampling: SamplingParams { temperature, seed: 5, ..Default::default() },
            max_turn_tokens: 20,
            max_batch: 8,
            matmul_dtype: Some(DType::BF16),
            kv_cache_dtype: DType::BF16,
            ..Default::default()
        },
    };
    let prompts = vec![tok.encode("Twelve times seven").unwrap(), tok.encode("A short story:").unwrap()];
    let (rollouts, _) = engine.run(&prompts).unwrap();
    let mut train = as_train(&rollouts);
    let refs: Vec<&TrainRollout> = train.iter().collect();
    let w = token_weights(&refs, Default::default(), 1);
    let ws: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
    let c = GrpoConfig { temperature, ..Default::default() };
    let tape = Tape::new();
    let (_, sampled) = grpo_loss(&model, &Ctx::training(&tape), &refs, &ws, &c).unwrap();
    let recomputed = rollout_logprobs(&model, &Ctx::inference(), &refs, temperature, usize::MAX).unwrap();
    for (r, lp) in train.iter_mut().zip(recomputed) {
        r.sampler_logprobs = Some(std::mem::replace(&mut r.old_logprobs, lp));
    }
    let refs: Vec<&TrainRollout> = train.iter().collect();
    let tape = Tape::new();
    let (_, fixed) = grpo_loss(&model, &Ctx::training(&tape), &refs, &ws, &c).unwrap();
    eprintln!(
        "bf16 sampler: first-step |log ratio| up to {:.1e} with its logprobs, {:.1e} recomputed",
        sampled.max_abs_log_ratio, fixed.max_abs_log_ratio
    );
    assert!(sampled.max_abs_log_ratio > 1e-3, "bf16 sampling moved no logprob: {}", sampled.max_abs_log_ratio);
    assert!(fixed.max_abs_log_ratio < 1e-5, "recomputed pi_old: |log ratio| up to {}", fixed.max_abs_log_ratio);
    let cap = 1.001f32;
    let c = GrpoConfig { tis_cap: cap as f64, ..c };
    let tape = Tape::new();
    let (loss, _) = grpo_loss(&model, &Ctx::training(&tape), &refs, &ws, &c).unwrap();
    let mut want = 0f64;
    let mut capped = 0;
    for (r, w) in train.iter().zip(&w) {
        let sampled = r.sampler_logprobs.as_ref().unwrap();
        for (((&m, &old), &s), &wt) in r.mask.iter().zip(&r.old_logprobs).zip(sampled).zip(w) {
            if m == 1 {
                let weight = (old - s).exp();
                capped += usize::from(weight > cap);
                want -= f64::from(wt) * f64::from(weight.min(cap));
            }
        }
    }
    let got = f64::from(loss.to_scalar().unwrap());
    assert!(capped > 0, "no weight reached the cap");
    assert!((got - want).abs() <= 3e-5 * want.abs(), "TIS loss {got}, want {want}");
}

/// The engine's rollouts as the loss takes them: advantage 1, pi_old the sampler's.
fn as_train(rollouts: &[artist_engine::Rollout]) -> Vec<TrainRollout> {
    rollouts
        .iter()
        .map(|r| TrainRollout {
            prompt_ids: r.prompt_ids.clone(),
            ids: r.ids.clone(),
            mask: r.mask.clone(),
            old_logprobs: r.logprobs.clone(),
            sampler_logprobs: None,
            ref_logprobs: None,
            advantage: 1.0,
            score: 0.0,
            pg_mask: None,
            group: 0,
        })
        .collect()
}
