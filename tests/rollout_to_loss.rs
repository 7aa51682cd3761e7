//! Rollouts from the engine meet the GRPO loss: at the first optimiser step the trainer's
//! logprobs (temperature-scaled, recomputed in one training forward) equal the ones the
//! sampler drew with, so every ratio is 1 up to float noise.

use std::path::{Path, PathBuf};

use artist::autograd::{Ctx, Tape};
use artist::model::Qwen2;
use artist_engine::{RolloutConfig, RolloutEngine, SamplingParams};
use artist_rl::{GrpoConfig, TrainRollout, grpo_loss, token_weights};
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
        let train: Vec<TrainRollout> = rollouts
            .iter()
            .map(|r| TrainRollout {
                prompt_ids: r.prompt_ids.clone(),
                ids: r.ids.clone(),
                mask: r.mask.clone(),
                old_logprobs: r.logprobs.clone(),
                ref_logprobs: None,
                advantage: 1.0,
            })
            .collect();
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
