//! `kl_reward`: the KL to the reference taken off each rollout's reward before the
//! advantages (veRL's `use_kl_in_reward`). The first step, rebuilt by hand from the same
//! rollouts with the reference's logprobs computed here, trains to the same bits; the
//! metric is the mean summed KL; the penalty changes what is trained.

use artist_autograd::Ctx;
use artist_model::Qwen2;
use artist_rl::{TrainRollout, group_advantages};
use artist_train::data::DataOrder;
use artist_train::grpo::{GrpoRunConfig, GrpoTrainer, Problem, train, update};

mod common;
use common::{adamw, quiet, train_rollout, weights};

fn trainer(config: GrpoRunConfig) -> GrpoTrainer<'static> {
    common::math_trainer(config, &common::parity)
}

/// A reference other than the policy (tiny-bf16: the same vocabulary), so the KL is large.
fn config(sets: &[&str]) -> GrpoRunConfig {
    let reference = common::root().join("tests/fixtures/qwen2/tiny-bf16");
    let mut all = vec!["steps=1", "rollout.deterministic=true", "kl_reward.coef=0.05"];
    let reference = format!("reference_model={:?}", reference.to_str().unwrap());
    all.push(&reference);
    all.extend_from_slice(sets);
    common::tiny_grpo_config(&all)
}

#[test]
fn the_first_step_trains_on_rewards_less_the_kl() {
    let tmp = tempfile::tempdir().unwrap();
    for (estimator, sets) in [("k1", ["kl_reward.estimator=\"k1\""]), ("k3", ["kl_reward.estimator=\"k3\""])] {
        let c = config(&sets);
        let mut t = trainer(c.clone());
        let m = train(&tmp.path().join(estimator), &mut t, &quiet()).unwrap();

        let by_hand = trainer(c.clone());
        let reference = Qwen2::load(c.reference_model.as_ref().unwrap()).unwrap();
        let order = DataOrder { n: by_hand.train.len(), batch_size: 2, shuffle: true, seed: c.seed };
        let problems: Vec<&Problem> = order.step(0).1.iter().map(|&i| &by_hand.train[i]).collect();
        let batch = by_hand.rollouts(&problems, c.seed).unwrap();
        // The reference's logprobs of every rollout, and the KL summed over its own tokens,
        // written out here from the estimators' definitions.
        let all: Vec<TrainRollout> = batch.rollouts.iter().map(|ro| train_rollout(ro, 0.0)).collect();
        let refs: Vec<&TrainRollout> = all.iter().collect();
        let micro = c.micro_batch_rollouts;
        let ref_lps = artist_rl::grpo::rollout_logprobs(&reference, &Ctx::inference(), &refs, 1.0, micro).unwrap();
        let kls: Vec<f64> = all
            .iter()
            .zip(&ref_lps)
            .map(|(r, rl)| {
                (0..r.ids.len())
                    .filter(|&j| r.mask[j] == 1)
                    .map(|j| {
                        let d = r.old_logprobs[j] as f64 - rl[j] as f64;
                        if estimator == "k1" { d } else { (-d).exp() + d - 1.0 }
                    })
                    .sum::<f64>()
            })
            .collect();
        assert!(kls.iter().all(|k| k.abs() > 1e-3), "{estimator}: a KL near 0 shows nothing: {kls:?}");
        let n = kls.len() as f64;
        let mean = kls.iter().sum::<f64>() / n;
        let got = m[0].kl_reward.unwrap();
        assert!((got - mean).abs() <= 1e-9 * mean.abs().max(1.0), "{estimator}: kl_reward {got} vs {mean}");
        let totals: Vec<f64> = batch.rewards.iter().map(|r| r.total).collect();
        assert!((m[0].reward - totals.iter().sum::<f64>() / n).abs() < 1e-12, "the reward metric is the task's");
        let scores: Vec<f64> = totals.iter().zip(&kls).map(|(t, k)| t - 0.05 * k).collect();
        let adv = group_advantages(&scores, 3, &c.advantages);
        let rollouts: Vec<TrainRollout> = (batch.rollouts.iter().enumerate())
            .filter(|(_, ro)| ro.sampled_tokens() > 0)
            .map(|(i, ro)| train_rollout(ro, adv[i] as f32))
            .collect();
        let mut optimizer = adamw(&c, &by_hand.model);
        let u = update(&by_hand.model, None, rollouts, &c, &mut optimizer, c.optim.lr, 0).unwrap();
        assert_eq!((u.loss, u.grad_norm), (m[0].loss, m[0].grad_norm), "{estimator}");
        assert_eq!(weights(&by_hand.model), weights(&t.model), "{estimator}: the step trained on other advantages");

        // Without the penalty the same rollouts train otherwise.
        let mut plain = trainer(c.with_overrides(&["kl_reward.coef=0".into()]).unwrap());
        let m0 = train(&tmp.path().join(format!("{estimator}-plain")), &mut plain, &quiet()).unwrap();
        assert_eq!(m0[0].kl_reward, None);
        assert_ne!(weights(&plain.model), weights(&t.model), "{estimator}: the penalty changed nothing");
    }
    let e = config(&["kl_reward.coef=-1"]).validate(artist_tensor::Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("kl_reward.coef"), "{e}");
}
