//! `kl_reward`: the KL to the reference taken off each rollout's reward before the
//! advantages (veRL's `use_kl_in_reward`). The first step, rebuilt by hand from the same
//! rollouts with the reference's logprobs computed here, trains to the same bits; the
//! metric is the mean summed KL; the penalty changes what is trained.

use artist_autograd::Ctx;
use artist_model::Qwen2;
use artist_rl::{TrainRollout, group_advantages};
use artist_train::grpo::{GrpoRunConfig, GrpoTrainer, train, update};
use artist_train::sft::RunOptions;

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
        let batch = common::first_step_rollouts(&by_hand);
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
        let per_token = (all.iter().zip(&kls))
            .map(|(r, k)| k / r.mask.iter().filter(|&&x| x == 1).count().max(1) as f64)
            .sum::<f64>()
            / n;
        let got = m[0].kl_reward_per_token.unwrap();
        assert!((got - per_token).abs() <= 1e-9 * per_token.abs().max(1e-3), "{estimator}: {got} vs {per_token}");
        assert_eq!(m[0].kl_reward_coef, Some(0.05), "a fixed coefficient");
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

/// With `grpo.beta > 0` too, the loss's KL term reads the reference logprobs the penalty
/// computed: the first step rebuilt by hand from rollouts carrying them trains to the same
/// bits with no reference model passed to the update.
#[test]
fn the_loss_kl_term_reuses_the_penalty_reference_logprobs() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(&["grpo.beta=0.1"]);
    let mut t = trainer(c.clone());
    let m = train(&tmp.path().join("run"), &mut t, &quiet()).unwrap();
    assert!(m[0].kl > 1e-3, "a KL term near 0 shows nothing: {}", m[0].kl);

    let by_hand = trainer(c.clone());
    let reference = Qwen2::load(c.reference_model.as_ref().unwrap()).unwrap();
    let batch = common::first_step_rollouts(&by_hand);
    assert!(batch.rollouts.iter().all(|ro| ro.sampled_tokens() > 0), "the penalty and the loss see other rollouts");
    let mut all: Vec<TrainRollout> = batch.rollouts.iter().map(|ro| train_rollout(ro, 0.0)).collect();
    let refs: Vec<&TrainRollout> = all.iter().collect();
    let ref_lps = artist_rl::grpo::rollout_logprobs(&reference, &Ctx::inference(), &refs, 1.0, 2).unwrap();
    let kls: Vec<f64> = (all.iter().zip(&ref_lps))
        .map(|(r, rl)| {
            (0..r.ids.len()).filter(|&j| r.mask[j] == 1).map(|j| r.old_logprobs[j] as f64 - rl[j] as f64).sum()
        })
        .collect();
    let scores: Vec<f64> = batch.rewards.iter().zip(&kls).map(|(r, k)| r.total - 0.05 * k).collect();
    let adv = group_advantages(&scores, 3, &c.advantages);
    for ((r, a), lp) in all.iter_mut().zip(adv).zip(ref_lps) {
        r.advantage = a as f32;
        r.ref_logprobs = Some(lp);
    }
    let mut optimizer = adamw(&c, &by_hand.model);
    let u = update(&by_hand.model, None, all, &c, &mut optimizer, c.optim.lr, 0).unwrap();
    assert_eq!((u.loss, u.grad_norm, u.kl), (m[0].loss, m[0].grad_norm, m[0].kl));
    assert_eq!(weights(&by_hand.model), weights(&t.model));
}

/// `kl_reward.target`: after each step the coefficient is multiplied by
/// `1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon` (the adaptive controller of TRL,
/// OpenRLHF and veRL), written out here from the logged per-token KL; it grows while the KL
/// is above the target and shrinks below it; a target just above the first step's KL
/// moves it by an unclipped error; and a run stopped and resumed carries it on.
#[test]
fn an_adaptive_coefficient_follows_the_kl_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = |target: f64, dir: &str| {
        let sets = ["steps=3".to_string(), format!("kl_reward.target={target}"), "kl_reward.horizon=12".into()];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let c = config(&sets);
        let mut t = trainer(c.clone());
        (train(&tmp.path().join(dir), &mut t, &quiet()).unwrap(), t, c)
    };
    // n = 2 prompts x 3 rollouts, horizon 12: a step's factor is 1 + e / 2.
    let expect = |m: &[artist_train::grpo::StepMetrics], target: f64| {
        assert_eq!(m[0].kl_reward_coef, Some(0.05));
        for w in m.windows(2) {
            let (kl, coef) = (w[0].kl_reward_per_token.unwrap(), w[0].kl_reward_coef.unwrap());
            let e = (kl / target - 1.0).clamp(-0.2, 0.2);
            let next = coef * (1.0 + e * 6.0 / 12.0);
            let got = w[1].kl_reward_coef.unwrap();
            assert!((got - next).abs() <= 1e-15, "step {}: coefficient {got}, expected {next}", w[1].step);
        }
    };
    let (high, _, _) = steps(1e-6, "above");
    expect(&high, 1e-6);
    assert!((high[2].kl_reward_coef.unwrap() - 0.05 * 1.1 * 1.1).abs() < 1e-15, "{:?}", high[2].kl_reward_coef);
    let (low, _, _) = steps(1e6, "below");
    expect(&low, 1e6);
    assert!((low[1].kl_reward_coef.unwrap() - 0.05 * 0.9).abs() < 1e-15);
    // The first step's KL is the same at any target (the coefficient moves after it).
    let first = high[0].kl_reward_per_token.unwrap();
    assert_eq!(low[0].kl_reward_per_token, Some(first));
    let near = first * 1.05;
    let (m, whole, c) = steps(near, "near");
    expect(&m, near);
    let moved = m[1].kl_reward_coef.unwrap() / 0.05 - 1.0;
    assert!(moved < -0.02 && moved > -0.03, "an unclipped error of 1/1.05 - 1, halved: {moved}");

    let run = tmp.path().join("parts");
    let first = train(&run, &mut trainer(c.clone()), &RunOptions { stop_after: Some(2), ..quiet() }).unwrap();
    let state = artist_train::checkpoint::read_state(&run.join("checkpoints/step-00000002")).unwrap();
    assert_eq!(state.kl_reward_coef, m[2].kl_reward_coef, "the checkpoint holds the next step's coefficient");
    let mut resumed = trainer(c.clone());
    let rest = train(&run, &mut resumed, &RunOptions { resume: true, ..quiet() }).unwrap();
    assert_eq!(first.len() + rest.len(), 3);
    assert_eq!(rest[0].kl_reward_coef, m[2].kl_reward_coef);
    assert_eq!((rest[0].loss, rest[0].grad_norm), (m[2].loss, m[2].grad_norm));
    assert_eq!(weights(&resumed.model), weights(&whole.model));

    for (sets, needle) in [
        (&["kl_reward.coef=0", "kl_reward.target=0.1"][..], "set kl_reward.coef > 0"),
        (&["kl_reward.target=0.1", "kl_reward.horizon=1.2"][..], "kl_reward.horizon"),
        (&["kl_reward.target=-1"][..], "kl_reward.target"),
    ] {
        let e = config(sets).validate(artist_tensor::Device::Cpu).unwrap_err().to_string();
        assert!(e.contains(needle), "{sets:?}: {e}");
    }
}

/// Where the run recomputes pi_old (bf16 rollouts, an f32 loss), the penalty's KL is from
/// the recomputed logprobs, as the loss's ratio is (veRL's penalty reads its recomputed
/// `old_log_prob`), not from the sampler's: the step rebuilt by hand from rollouts carrying
/// both trains to the same bits with the same gap metric.
#[test]
fn the_penalty_reads_pi_old_recomputed() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(&["rollout.matmul_dtype=\"bf16\""]);
    assert!(c.recomputes_old_logprobs(artist_tensor::Device::Cpu));
    let mut t = trainer(c.clone());
    let m = train(&tmp.path().join("run"), &mut t, &quiet()).unwrap();

    let by_hand = trainer(c.clone());
    let reference = Qwen2::load(c.reference_model.as_ref().unwrap()).unwrap();
    let batch = common::first_step_rollouts(&by_hand);
    assert!(batch.rollouts.iter().all(|ro| ro.sampled_tokens() > 0));
    let mut all: Vec<TrainRollout> = batch.rollouts.iter().map(|ro| train_rollout(ro, 0.0)).collect();
    let refs: Vec<&TrainRollout> = all.iter().collect();
    let ref_lps = artist_rl::grpo::rollout_logprobs(&reference, &Ctx::inference(), &refs, 1.0, 2).unwrap();
    let old_lps = artist_rl::grpo::rollout_logprobs(&by_hand.model, &Ctx::inference(), &refs, 1.0, 2).unwrap();
    let kl = |old: &[Vec<f32>]| -> Vec<f64> {
        (all.iter().zip(old).zip(&ref_lps))
            .map(|((r, ol), rl)| {
                (0..r.ids.len()).filter(|&j| r.mask[j] == 1).map(|j| ol[j] as f64 - rl[j] as f64).sum::<f64>()
            })
            .collect()
    };
    let kls = kl(&old_lps);
    let sampler: Vec<Vec<f32>> = all.iter().map(|r| r.old_logprobs.clone()).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let got = m[0].kl_reward.unwrap();
    assert!((got - mean(&kls)).abs() <= 1e-9, "kl_reward {got} vs {}", mean(&kls));
    let off = (got - mean(&kl(&sampler))).abs();
    assert!(off > 1e-4, "the sampler's logprobs give the same KL ({off}): the test shows nothing");
    let scores: Vec<f64> = batch.rewards.iter().zip(&kls).map(|(r, k)| r.total - 0.05 * k).collect();
    let adv = group_advantages(&scores, 3, &c.advantages);
    let mut gap = (0.0, 0);
    for (((r, a), old), s) in all.iter_mut().zip(adv).zip(old_lps).zip(&sampler) {
        for j in (0..r.ids.len()).filter(|&j| r.mask[j] == 1) {
            gap = (gap.0 + (old[j] - s[j]).abs(), gap.1 + 1);
        }
        r.advantage = a as f32;
        r.old_logprobs = old;
        r.sampler_logprobs = Some(s.clone());
    }
    let gap = gap.0 as f64 / gap.1 as f64;
    let got = m[0].sampler_logprob_gap.unwrap();
    assert!((got - gap).abs() <= 1e-6 * gap, "sampler_logprob_gap {got} vs {gap}");
    let mut optimizer = adamw(&c, &by_hand.model);
    let u = update(&by_hand.model, None, all, &c, &mut optimizer, c.optim.lr, 0).unwrap();
    assert_eq!((u.loss, u.grad_norm), (m[0].loss, m[0].grad_norm));
    assert_eq!(weights(&by_hand.model), weights(&t.model));
}

/// With `filter_flat_groups`, a group whose task rewards are all equal leaves the step
/// whatever its rollouts' KL (as DAPO filters on accuracy, veRL on `seq_reward`), and its
/// KL is never computed: the step (a seed whose batch holds one flat group of two) counts
/// one flat group, logs no `kl` for its rollouts, reports the mean KL of the other
/// group's, and trains to the bits of that group alone rebuilt by hand.
#[test]
fn flat_groups_leave_before_the_penalty() {
    let tmp = tempfile::tempdir().unwrap();
    let found = (0..64u64).find_map(|seed| {
        let c =
            config(&["filter_flat_groups=true", "log_rollouts=6"]).with_overrides(&[format!("seed={seed}")]).unwrap();
        let by_hand = trainer(c.clone());
        let batch = common::first_step_rollouts(&by_hand);
        let totals: Vec<f64> = batch.rewards.iter().map(|r| r.total).collect();
        let flat: Vec<bool> = totals.chunks(3).map(artist_rl::advantages::group_is_flat).collect();
        let live = batch.rollouts.iter().all(|ro| ro.sampled_tokens() > 0);
        (flat.iter().filter(|&&f| f).count() == 1 && live).then_some((c, by_hand, batch, totals, flat))
    });
    let (c, by_hand, batch, totals, flat) = found.expect("a seed whose first batch holds one flat group of two");
    let kept = flat.iter().position(|&f| !f).unwrap();
    let mut t = trainer(c.clone());
    let m = train(&tmp.path().join("run"), &mut t, &quiet()).unwrap();
    assert_eq!(m[0].flat_groups, 1, "the penalty's KL made the flat group differ");
    let log = artist_train::metrics::read(&tmp.path().join("run").join(artist_train::metrics::ROLLOUTS_FILE)).unwrap();
    assert_eq!(log.len(), 6);
    for (i, line) in log.iter().enumerate() {
        assert_eq!(line.get("kl").is_some(), i / 3 == kept, "rollout {i}: {line}");
    }

    let reference = Qwen2::load(c.reference_model.as_ref().unwrap()).unwrap();
    let mut group: Vec<TrainRollout> =
        batch.rollouts[kept * 3..kept * 3 + 3].iter().map(|ro| train_rollout(ro, 0.0)).collect();
    let refs: Vec<&TrainRollout> = group.iter().collect();
    let ref_lps = artist_rl::grpo::rollout_logprobs(&reference, &Ctx::inference(), &refs, 1.0, 2).unwrap();
    let kls: Vec<f64> = (group.iter().zip(&ref_lps))
        .map(|(r, rl)| {
            (0..r.ids.len()).filter(|&j| r.mask[j] == 1).map(|j| r.old_logprobs[j] as f64 - rl[j] as f64).sum()
        })
        .collect();
    let mean = kls.iter().sum::<f64>() / 3.0;
    let got = m[0].kl_reward.unwrap();
    assert!((got - mean).abs() <= 1e-9 * mean.abs().max(1.0), "kl_reward {got} vs the kept group's {mean}");
    let scores: Vec<f64> = (totals[kept * 3..kept * 3 + 3].iter().zip(&kls)).map(|(t, k)| t - 0.05 * k).collect();
    for (r, a) in group.iter_mut().zip(group_advantages(&scores, 3, &c.advantages)) {
        r.advantage = a as f32;
    }
    let mut optimizer = adamw(&c, &by_hand.model);
    let u = update(&by_hand.model, None, group, &c, &mut optimizer, c.optim.lr, 0).unwrap();
    assert_eq!((u.loss, u.grad_norm), (m[0].loss, m[0].grad_norm));
    assert_eq!(weights(&by_hand.model), weights(&t.model));
}

/// Under dynamic sampling, a group with a signal past the step's quota leaves the step
/// like a flat one, and its KL is not computed either: a step (a seed whose first round
/// holds one flat group and one other, its second round two groups that differ, a quota
/// of two) trains on the first round's group and the second round's first, logs `kl` for
/// their rollouts alone, and reports the mean of those six KLs.
#[test]
fn groups_past_the_quota_leave_before_the_penalty() {
    let tmp = tempfile::tempdir().unwrap();
    let found = (0..48u64).find_map(|seed| {
        let c = config(&["filter_flat_groups=true", "max_sampling_rounds=2", "log_rollouts=12"])
            .with_overrides(&[format!("seed={seed}")])
            .unwrap();
        let dir = tmp.path().join(format!("run{seed}"));
        let m = train(&dir, &mut trainer(c), &quiet()).unwrap();
        let log = artist_train::metrics::read(&dir.join(artist_train::metrics::ROLLOUTS_FILE)).unwrap();
        let flat: Vec<bool> = (log.chunks(3))
            .map(|g| {
                artist_rl::advantages::group_is_flat(
                    &g.iter().map(|l| l["reward"].as_f64().unwrap()).collect::<Vec<_>>(),
                )
            })
            .collect();
        (log.len() == 12 && flat == [true, false, false, false]
            || log.len() == 12 && flat == [false, true, false, false])
        .then_some((m, log, flat))
    });
    let (m, log, flat) = found.expect("a seed whose first round holds one flat group and whose second holds none");
    assert_eq!((m[0].sampling_rounds, m[0].trained_groups, m[0].flat_groups), (Some(2), Some(2), 1));
    // Trained: the first round's group with a signal and the second round's first group.
    let trained = [!flat[0], !flat[1], true, false];
    let mut kls = vec![];
    for (i, line) in log.iter().enumerate() {
        assert_eq!(line["round"].as_u64(), Some((i / 6) as u64), "{line}");
        assert_eq!(line.get("kl").is_some(), trained[i / 3], "rollout {i}: {line}");
        kls.extend(line.get("kl").and_then(|k| k.as_f64()));
    }
    let mean = kls.iter().sum::<f64>() / 6.0;
    let got = m[0].kl_reward.unwrap();
    assert!((got - mean).abs() <= 1e-9 * mean.abs().max(1.0), "kl_reward {got} vs the trained groups' {mean}");
}
