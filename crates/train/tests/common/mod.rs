//! Shared pieces of the GRPO tests: the tiny Qwen2 fixture with the calculator, six
//! `i+i?` problems, the paper's math preset with overrides, and what the tests that
//! rebuild a step by hand or run several ranks share.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use artist_dist::InProcess;
use artist_engine::Rollout;
use artist_model::Qwen2;
use artist_optim::{AdamW, AdamWConfig};
use artist_rl::TrainRollout;
use artist_tokenizer::{ChatTemplate, Tokenizer};
use artist_train::data::DataOrder;
use artist_train::grpo::{GrpoRunConfig, GrpoTrainer, Problem, RolloutBatch, Verifier};
use artist_train::sft::RunOptions;

/// A fresh run: no resume, no progress bar.
pub fn quiet() -> RunOptions {
    RunOptions { resume: false, progress: false, stop_after: None, device: Default::default() }
}

/// Random tiny-model text never holds an answer: this judge passes about half the
/// completions, so a group's rewards differ (with two rollouts, about half the groups are
/// flat).
pub fn parity(q: &artist_math::Question<'_>) -> Result<artist_math::Verdict, String> {
    Ok(q.completion.len().is_multiple_of(2).into())
}

/// Every parameter's values.
pub fn weights(model: &Qwen2) -> Vec<Vec<f32>> {
    model.params().iter().map(|p| p.value().to_f32_vec().unwrap()).collect()
}

/// The largest |a - b| over two models' weights (NaN wins).
pub fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, x| if x.is_nan() || x > m { x } else { m })
}

/// The rollouts `t`'s first step plays: its first batch of the data order, sampled with the
/// run's seed, as `train` plays them.
pub fn first_step_rollouts(t: &GrpoTrainer) -> RolloutBatch {
    let c = &t.config;
    let order = DataOrder { n: t.train.len(), batch_size: c.prompts_per_step, shuffle: true, seed: c.seed };
    let problems: Vec<&Problem> = order.step(0).1.iter().map(|&i| &t.train[i]).collect();
    t.rollouts(&problems, c.seed).unwrap()
}

/// A rollout as the trainer trains on it, with `advantage` (its group: its prompt's place).
pub fn train_rollout(ro: &Rollout, advantage: f32) -> TrainRollout {
    TrainRollout {
        prompt_ids: ro.prompt_ids.clone(),
        ids: ro.ids.clone(),
        mask: ro.mask.clone(),
        old_logprobs: ro.logprobs.clone(),
        sampler_logprobs: None,
        ref_logprobs: None,
        advantage,
        score: 0.0,
        pg_mask: None,
        group: ro.prompt_index,
    }
}

/// The AdamW the training loop makes from `c.optim`, over `model`'s parameters.
pub fn adamw(c: &GrpoRunConfig, model: &Qwen2) -> AdamW {
    let o = &c.optim;
    let config = AdamWConfig {
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weight_decay: o.weight_decay,
        decay_matrices_only: false,
    };
    AdamW::new(&model.params(), config).unwrap()
}

/// `n` in-process ranks, each running `f` with its communicator on a thread of its own;
/// their results in rank order.
pub fn ranks<T: Send>(n: usize, f: impl Fn(&mut InProcess) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::group_with_timeout(n, Duration::from_secs(300))
            .into_iter()
            .map(|mut comm| {
                let f = &f;
                s.spawn(move || f(&mut comm))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A trainer on `config.model` with the calculator and the problems `i+i?` (i = 0..6).
pub fn math_trainer(config: GrpoRunConfig, verify: &'static Verifier) -> GrpoTrainer<'static> {
    let dir = &config.model;
    let train: Vec<Problem> =
        (0..6).map(|i| Problem { problem: format!("{i}+{i}?"), answer: (2 * i).to_string() }).collect();
    GrpoTrainer {
        model: Qwen2::load(dir).unwrap(),
        reference: None,
        tokenizer: Tokenizer::from_dir(dir).unwrap(),
        template: ChatTemplate::from_dir(dir).unwrap(),
        tool: Some(Arc::new(artist_tools::Calculator)),
        train,
        held_out: Vec::new(),
        verify,
        config,
    }
}

/// `configs/artist-math.toml` on the tiny-gqa fixture with the calculator, then `sets`.
pub fn tiny_math_config(sets: &[&str]) -> GrpoRunConfig {
    let text = std::fs::read_to_string(root().join("configs/artist-math.toml")).unwrap();
    let c = GrpoRunConfig::from_toml(&text, Path::new("configs/artist-math.toml")).unwrap();
    let model = root().join("tests/fixtures/qwen2/tiny-gqa");
    let mut all = vec![
        format!("model={:?}", model.to_str().unwrap()),
        "tool=calculator".into(),
        "system_prompt=\"Use <calculator>.\"".into(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    c.with_overrides(&all).unwrap()
}

/// [`tiny_math_config`] shrunk to steps of two prompts in groups of three, short responses,
/// two rollouts a pass and lr 1e-3; then `sets`.
pub fn tiny_grpo_config(sets: &[&str]) -> GrpoRunConfig {
    let mut all = vec![
        "prompts_per_step=2",
        "rollout.group_size=3",
        "rollout.max_turn_tokens=12",
        "rollout.max_response_tokens=24",
        "rollout.max_context=120",
        "rollout.max_batch=6",
        "micro_batch_rollouts=2",
        "optim.lr=1e-3",
    ];
    all.extend_from_slice(sets);
    tiny_math_config(&all)
}
