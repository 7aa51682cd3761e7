//! The GRPO loss on a tiny Qwen2: its value against the formula computed in f64 from the
//! model's logits, masked tokens contributing nothing (not even a NaN), micro-batches
//! adding up to the batch, and the weights of each aggregation.

use std::path::{Path, PathBuf};

use artist_autograd::{Ctx, Gradients, Tape};
use artist_model::Qwen2;
use artist_rl::{
    Aggregation, GrpoConfig, ImportanceLevel, KlEstimator, TisLevel, TisMode, TrainRollout, grpo_loss, token_weights,
};

mod support;
use support::pytorch_grpo;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2").join(name)
}

/// Rollouts with forced stretches, old logprobs near the model's (so some ratios clip),
/// advantages of both signs and reference logprobs.
fn batch(model: &Qwen2, temperature: f32) -> Vec<TrainRollout> {
    let specs: [(&[u32], usize, f32); 3] = [(&[5, 17, 42], 9, 1.3), (&[7, 8], 14, -0.6), (&[100, 3, 9, 11], 6, 0.4)];
    specs
        .iter()
        .enumerate()
        .map(|(i, &(prompt, n, adv))| {
            let ids: Vec<u32> = (0..n).map(|j| ((i * 31 + j * 17 + 3) % 300) as u32).collect();
            let mask: Vec<u8> = (0..n).map(|j| if (3..6).contains(&j) && i != 2 { 0 } else { 1 }).collect();
            let lp = exact_logprobs(model, prompt, &ids, temperature);
            let old = lp.iter().enumerate().map(|(j, &x)| (x + 0.3 * ((j % 5) as f64 - 2.0) / 2.0) as f32).collect();
            let reference = lp.iter().enumerate().map(|(j, &x)| (x - 0.05 * (j % 3) as f64) as f32).collect();
            TrainRollout {
                prompt_ids: prompt.to_vec(),
                ids,
                mask,
                old_logprobs: old,
                sampler_logprobs: None,
                ref_logprobs: Some(reference),
                advantage: adv,
                score: 0.0,
                pg_mask: None,
                group: 0,
            }
        })
        .collect()
}

/// log softmax(logits / T)[token] of every response token, in f64 from the logits.
fn exact_logprobs(model: &Qwen2, prompt: &[u32], ids: &[u32], t: f32) -> Vec<f64> {
    exact_logprobs_and_entropies(model, prompt, ids, t).0
}

/// [`exact_logprobs`], and the entropy `-sum p log p` of each response token's
/// distribution at temperature `t`, in f64 from the logits.
fn exact_logprobs_and_entropies(model: &Qwen2, prompt: &[u32], ids: &[u32], t: f32) -> (Vec<f64>, Vec<f64>) {
    let full: Vec<u32> = prompt.iter().chain(ids).copied().collect();
    let logits = model.logits(&full).unwrap().to_vec2::<f32>().unwrap();
    (0..ids.len())
        .map(|j| {
            let row: Vec<f64> = logits[prompt.len() + j - 1].iter().map(|&z| z as f64 / t as f64).collect();
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
            let entropy = -row.iter().map(|z| (z - lse).exp() * (z - lse)).sum::<f64>();
            (row[ids[j] as usize] - lse, entropy)
        })
        .unzip()
}

/// The loss in f64, straight from the formula.
fn reference_loss(model: &Qwen2, b: &[TrainRollout], c: &GrpoConfig) -> f64 {
    let refs: Vec<&TrainRollout> = b.iter().collect();
    let w = token_weights(&refs, c.aggregation, c.norm_length);
    let mut loss = 0.0;
    for (r, w) in b.iter().zip(&w) {
        let (lp, entropy) = exact_logprobs_and_entropies(model, &r.prompt_ids, &r.ids, c.temperature);
        // GSPO: the geometric mean of the rollout's token ratios, on every token.
        let live: Vec<usize> = (0..r.ids.len()).filter(|&j| r.mask[j] == 1).collect();
        let log_s = live.iter().map(|&j| lp[j] - r.old_logprobs[j] as f64).sum::<f64>() / live.len() as f64;
        for j in 0..r.ids.len() {
            if r.mask[j] == 0 {
                continue;
            }
            let ratio = match c.importance_sampling_level {
                ImportanceLevel::Token => (lp[j] - r.old_logprobs[j] as f64).exp(),
                ImportanceLevel::Sequence => log_s.min(10.0).exp(),
            };
            let a = r.advantage as f64;
            let clipped = ratio.clamp(1.0 - c.clip_low, 1.0 + c.clip_high);
            let mut l = -(ratio * a).min(clipped * a);
            if c.clip_ratio_c > 0.0 && a < 0.0 {
                l = l.min(-c.clip_ratio_c * a);
            }
            if c.tis_cap > 0.0 {
                // pi_old over the sampler, of this token or of the rollout as a whole.
                let sampled = r.sampler_logprobs.as_ref().unwrap();
                let d: Vec<f64> = live.iter().map(|&i| r.old_logprobs[i] as f64 - sampled[i] as f64).collect();
                let log_w = match c.tis_level {
                    TisLevel::Token => r.old_logprobs[j] as f64 - sampled[j] as f64,
                    TisLevel::Sequence => d.iter().sum(),
                    TisLevel::Geometric => d.iter().sum::<f64>() / d.len() as f64,
                };
                let w = log_w.exp();
                // One token far less likely to the trainer than to the sampler vetoes all.
                let vetoed = c.tis_veto > 0.0 && d.iter().any(|&x| x.exp() < c.tis_veto);
                l *= match c.tis_mode {
                    _ if vetoed => 0.0,
                    TisMode::Truncate => w.min(c.tis_cap),
                    TisMode::Mask if w > c.tis_cap || w < c.tis_cap_low => 0.0,
                    TisMode::Mask => w,
                };
            }
            if r.pg_mask.as_ref().is_some_and(|m| m[j] == 0) {
                l = 0.0;
            }
            if c.beta > 0.0 {
                let rf = r.ref_logprobs.as_ref().unwrap()[j] as f64;
                let kl = match c.kl {
                    KlEstimator::K3 => (rf - lp[j]).exp() - (rf - lp[j]) - 1.0,
                    KlEstimator::K1 => lp[j] - rf,
                    KlEstimator::K2 => 0.5 * (lp[j] - rf).powi(2),
                };
                l += c.beta * kl;
            }
            l -= c.entropy_coeff * entropy[j];
            loss += w[j] as f64 * l;
        }
    }
    loss
}

fn run(model: &Qwen2, b: &[TrainRollout], c: &GrpoConfig, micro: usize) -> (f64, Gradients, usize) {
    let refs: Vec<&TrainRollout> = b.iter().collect();
    let w = token_weights(&refs, c.aggregation, c.norm_length);
    let mut grads = Gradients::default();
    let (mut loss, mut clipped) = (0.0, 0);
    for (rs, ws) in refs.chunks(micro).zip(w.chunks(micro)) {
        let tape = Tape::new();
        let ws: Vec<&[f32]> = ws.iter().map(Vec::as_slice).collect();
        let (l, stats) = grpo_loss(model, &Ctx::training(&tape), rs, &ws, c).unwrap();
        loss += l.to_scalar().unwrap() as f64;
        clipped += stats.clipped;
        grads.merge(tape.backward(&l).unwrap()).unwrap();
    }
    (loss, grads, clipped)
}

#[test]
fn loss_matches_the_formula_in_every_mode() {
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let (token, sequence) = (ImportanceLevel::Token, ImportanceLevel::Sequence);
    let tis = (TisLevel::Token, TisMode::Truncate, 0.0, 0.0);
    for (
        agg,
        beta,
        kl,
        t,
        (clip_low, clip_high),
        (tis_cap, (tis_level, tis_mode, tis_cap_low, tis_veto)),
        level,
        clip_ratio_c,
        entropy_coeff,
    ) in [
        (Aggregation::SeqMeanTokenMean, 0.0, KlEstimator::K3, 1.0, (0.2, 0.2), (0.0, tis), token, 0.0, 0.0),
        (Aggregation::TokenMean, 0.04, KlEstimator::K3, 0.7, (0.2, 0.28), (0.0, tis), token, 0.0, 0.0),
        (Aggregation::SeqMeanTokenSumNorm, 0.1, KlEstimator::K1, 1.0, (0.2, 0.2), (0.0, tis), token, 0.0, 0.0),
        (Aggregation::SeqMeanTokenMean, 0.5, KlEstimator::K2, 1.0, (0.2, 0.2), (0.0, tis), token, 0.0, 0.0),
        // Truncated importance sampling: weights from 0.67 to 1.49, capped at 1.2.
        (Aggregation::TokenMean, 0.04, KlEstimator::K3, 0.7, (0.2, 0.28), (1.2, tis), token, 0.0, 0.0),
        // GSPO: sequence ratios 1.078, 1.042 and 1.051 on advantages 1.3, -0.6 and 0.4, so a
        // range of 0.05 clips the first and the last rollout.
        (Aggregation::SeqMeanTokenMean, 0.04, KlEstimator::K3, 1.0, (0.05, 0.05), (0.0, tis), sequence, 0.0, 0.0),
        // Dual clip: ratios reach 1.35, so a bound of 1.1 caps the negative rollout's largest.
        (Aggregation::TokenMean, 0.04, KlEstimator::K3, 1.0, (0.05, 0.05), (0.0, tis), token, 1.1, 0.0),
        // An entropy bonus (entropies of about 5.7 nats: -0.29 per token at 0.05), with TIS.
        (Aggregation::SeqMeanTokenMean, 0.04, KlEstimator::K3, 0.7, (0.2, 0.2), (1.2, tis), token, 0.0, 0.05),
        // Masked importance sampling on tokens: of the weights 0.67, 0.88, 1.14 and 1.49, the
        // first and the last are zeroed by the bounds [0.8, 1.2].
        (
            Aggregation::TokenMean,
            0.04,
            KlEstimator::K3,
            0.7,
            (0.2, 0.28),
            (1.2, (TisLevel::Token, TisMode::Mask, 0.8, 0.0)),
            token,
            0.0,
            0.0,
        ),
        // The rollouts' whole ratios are 0.77, 0.67 and 0.59: capped at 0.7, the first is.
        (
            Aggregation::SeqMeanTokenMean,
            0.04,
            KlEstimator::K3,
            1.0,
            (0.2, 0.2),
            (0.7, (TisLevel::Sequence, TisMode::Truncate, 0.0, 0.0)),
            token,
            0.0,
            0.0,
        ),
        // Their geometric means are 0.957, 0.964 and 0.915: below 0.95, the last is masked.
        (
            Aggregation::SeqMeanTokenMean,
            0.0,
            KlEstimator::K3,
            1.0,
            (0.2, 0.2),
            (1.2, (TisLevel::Geometric, TisMode::Mask, 0.95, 0.0)),
            token,
            0.0,
            0.0,
        ),
        // A veto of 1e-4 on the token weights capped at 1.2: the first rollout has one token
        // the trainer finds e^12 times less likely than the sampler did, so it gives no
        // policy gradient; the others keep their weights.
        (
            Aggregation::TokenMean,
            0.04,
            KlEstimator::K3,
            0.7,
            (0.2, 0.28),
            (1.2, (TisLevel::Token, TisMode::Truncate, 0.0, 1e-4)),
            token,
            0.0,
            0.0,
        ),
    ] {
        let c = GrpoConfig {
            aggregation: agg,
            beta,
            kl,
            temperature: t,
            clip_low,
            clip_high,
            norm_length: 32,
            tis_cap,
            tis_level,
            tis_mode,
            tis_cap_low,
            tis_veto,
            tis_drop_rejected: false,
            importance_sampling_level: level,
            clip_ratio_c,
            entropy_coeff,
            top_entropy_quantile: 1.0,
        };
        let mut b = batch(&model, t);
        if tis_cap > 0.0 {
            let plain = GrpoConfig { tis_cap: 0.0, ..c };
            let loss = |b: &[TrainRollout]| run(&model, b, &c, usize::MAX).0;
            let refs: Vec<&TrainRollout> = b.iter().collect();
            let w = token_weights(&refs, agg, 32);
            let ws: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
            let err = grpo_loss(&model, &Ctx::inference(), &refs, &ws, &c).unwrap_err();
            assert!(err.to_string().contains("sampler's logprobs"), "{err}");
            for r in &mut b {
                let sampled = r.old_logprobs.iter().enumerate().map(|(j, &o)| o - 0.4 * ((j % 4) as f32 - 1.5) / 1.5);
                r.sampler_logprobs = Some(sampled.collect());
            }
            if tis_veto > 0.0 {
                let r = &mut b[0];
                let j = r.mask.iter().position(|&m| m == 1).unwrap();
                r.sampler_logprobs.as_mut().unwrap()[j] = r.old_logprobs[j] + 12.0;
                assert!(c.tis_vetoed(r) && c.tis_weights(r).unwrap().iter().all(|&w| w == 0.0));
                assert!(b[1..].iter().all(|r| !c.tis_vetoed(r) && c.tis_weights(r).unwrap().iter().any(|&w| w > 0.0)));
            }
            // Weights of 1 (sampler and trainer agree) give the plain loss, within the bounds.
            let agree: Vec<TrainRollout> = b
                .iter()
                .map(|r| TrainRollout { sampler_logprobs: Some(r.old_logprobs.clone()), ..r.clone() })
                .collect();
            if c.tis_cap >= 1.0 && c.tis_cap_low <= 1.0 {
                let (a, p) = (loss(&agree), run(&model, &agree, &plain, usize::MAX).0);
                assert!((a - p).abs() <= 1e-6 * p.abs(), "TIS weights of 1: {a} vs {p}");
            }
            // The bounds change some weights and not others.
            let unbounded = GrpoConfig { tis_cap: f64::INFINITY, tis_mode: TisMode::Truncate, ..c };
            let (w, raw): (Vec<f32>, Vec<f32>) = b
                .iter()
                .flat_map(|r| c.tis_weights(r).unwrap().into_iter().zip(unbounded.tis_weights(r).unwrap()))
                .unzip();
            let changed = w.iter().zip(&raw).filter(|(a, b)| a != b).count();
            assert!(changed > 0 && changed < w.len(), "{c:?}: the bounds change {changed} of {} weights", w.len());
        }
        let want = reference_loss(&model, &b, &c);
        let (got, grads, clipped) = run(&model, &b, &c, usize::MAX);
        assert!((got - want).abs() <= 1e-4 * want.abs().max(1e-3), "{agg:?}: loss {got} vs {want}");
        assert!(clipped > 0, "{agg:?}: the batch should clip some tokens");
        // Micro-batches add up to the batch: the same loss and gradients.
        let (got2, grads2, _) = run(&model, &b, &c, 1);
        assert!((got - got2).abs() <= 1e-6, "{agg:?}: {got} vs {got2} in micro-batches");
        for p in model.params() {
            let (a, b) =
                (grads.get(p.id()).unwrap().to_f32_vec().unwrap(), grads2.get(p.id()).unwrap().to_f32_vec().unwrap());
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
            let worst =
                a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, |m, x| if x.is_nan() || x > m { x } else { m });
            assert!(worst <= 1e-4 * scale, "{agg:?} {}: micro-batch gradients differ by {worst}", p.name());
        }
    }
}

/// GSPO clips a rollout as a whole: the clipped tokens are exactly those of the rollouts
/// whose sequence ratio (computed here in f64) leaves the range on its advantage's side.
/// A rollout whose log ratio passes the cap of 10 gives the loss a constant and the
/// gradient nothing: the same gradients as with its advantage set to 0.
#[test]
fn gspo_clips_whole_rollouts_and_caps_the_log_ratio() {
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let c = GrpoConfig {
        beta: 0.04,
        clip_low: 0.05,
        clip_high: 0.05,
        importance_sampling_level: ImportanceLevel::Sequence,
        ..Default::default()
    };
    let b = batch(&model, 1.0);
    let mut want = 0;
    for r in &b {
        let lp = exact_logprobs(&model, &r.prompt_ids, &r.ids, 1.0);
        let live: Vec<usize> = (0..r.ids.len()).filter(|&j| r.mask[j] == 1).collect();
        let s = (live.iter().map(|&j| lp[j] - r.old_logprobs[j] as f64).sum::<f64>() / live.len() as f64).exp();
        eprintln!("advantage {}: sequence ratio {s}", r.advantage);
        if (r.advantage > 0.0 && s > 1.05) || (r.advantage < 0.0 && s < 0.95) {
            want += live.len();
        }
    }
    let (_, _, clipped) = run(&model, &b, &c, usize::MAX);
    assert!(want > 0 && want < b.iter().map(TrainRollout::generated).sum(), "the batch should clip some rollouts");
    assert_eq!(clipped, want);

    // Rollout 1 (advantage -0.6, so unclipped below the cap) made 12 nats more likely.
    let mut far = b.clone();
    far[1].old_logprobs.iter_mut().for_each(|x| *x -= 12.0);
    let (loss, g_far, _) = run(&model, &far, &c, usize::MAX);
    let want_loss = reference_loss(&model, &far, &c);
    assert!((loss - want_loss).abs() <= 1e-4 * want_loss.abs(), "loss {loss} vs {want_loss}");
    let mut zero = far.clone();
    zero[1].advantage = 0.0;
    let (_, g_zero, _) = run(&model, &zero, &c, usize::MAX);
    for p in model.params() {
        let (a, z) =
            (g_far.get(p.id()).unwrap().to_f32_vec().unwrap(), g_zero.get(p.id()).unwrap().to_f32_vec().unwrap());
        let scale = z.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        let worst = a.iter().zip(&z).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5 * scale, "{}: a capped rollout moved the gradient by {worst}", p.name());
    }
}

/// The loss's statistics carry the policy's entropy: the mean over generated tokens (forced
/// ones left out) of `-sum p log p` at the sampling temperature, against f64 from the
/// logits.
#[test]
fn the_entropy_is_the_mean_over_generated_tokens() {
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let t = 0.7;
    let b = batch(&model, t);
    let (mut sum, mut n) = (0.0, 0);
    for r in &b {
        let entropy = exact_logprobs_and_entropies(&model, &r.prompt_ids, &r.ids, t).1;
        for j in (0..r.ids.len()).filter(|&j| r.mask[j] == 1) {
            sum += entropy[j];
            n += 1;
        }
    }
    let want = sum / n as f64;
    let c = GrpoConfig { temperature: t, ..Default::default() };
    let refs: Vec<&TrainRollout> = b.iter().collect();
    let w = token_weights(&refs, c.aggregation, c.norm_length);
    let ws: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
    let (_, stats) = grpo_loss(&model, &Ctx::inference(), &refs, &ws, &c).unwrap();
    assert_eq!(stats.tokens, n);
    assert!((stats.entropy_mean - want).abs() < 1e-5 * want, "entropy {} vs {want}", stats.entropy_mean);
    assert!(want > 1.0, "a random tiny model is far from certain: {want}");
}

/// Forced tokens take no part: garbage (NaN) in their logprobs, advantages or reference
/// values changes neither the loss nor any gradient by a single bit.
#[test]
fn masked_tokens_get_exactly_zero_gradient() {
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let c = GrpoConfig { beta: 0.04, ..Default::default() };
    let clean = batch(&model, 1.0);
    let mut dirty = clean.clone();
    for r in &mut dirty {
        for j in 0..r.ids.len() {
            if r.mask[j] == 0 {
                r.old_logprobs[j] = f32::NAN;
                r.ref_logprobs.as_mut().unwrap()[j] = f32::INFINITY;
            }
        }
    }
    let ((l1, g1, _), (l2, g2, _)) = (run(&model, &clean, &c, usize::MAX), run(&model, &dirty, &c, usize::MAX));
    assert_eq!(l1.to_bits(), l2.to_bits());
    for p in model.params() {
        let (a, b) = (g1.get(p.id()).unwrap().to_f32_vec().unwrap(), g2.get(p.id()).unwrap().to_f32_vec().unwrap());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{}", p.name());
    }
    // And a rollout whose every token is forced has zero weight.
    let all_forced = TrainRollout { mask: vec![0; clean[0].ids.len()], ..clean[0].clone() };
    let refs = [&all_forced, &clean[1]];
    let w = token_weights(&refs, Aggregation::SeqMeanTokenMean, 1);
    assert!(w[0].iter().all(|&x| x == 0.0));
    assert!((w[1].iter().sum::<f32>() - 1.0).abs() < 1e-6, "one rollout with tokens: its mean");
}

#[test]
fn aggregation_weights() {
    let r = |n: usize, forced: usize| TrainRollout {
        prompt_ids: vec![1],
        ids: vec![1; n],
        mask: (0..n).map(|j| (j >= forced) as u8).collect(),
        old_logprobs: vec![0.0; n],
        sampler_logprobs: None,
        ..Default::default()
    };
    let (a, b) = (r(4, 0), r(10, 2));
    let refs = [&a, &b];
    let sum = |w: &Vec<Vec<f32>>| w.iter().flatten().map(|&x| x as f64).sum::<f64>();
    let seq = token_weights(&refs, Aggregation::SeqMeanTokenMean, 0);
    assert!((seq[0][0] - 1.0 / 8.0).abs() < 1e-7 && (seq[1][5] - 1.0 / 16.0).abs() < 1e-7 && seq[1][0] == 0.0);
    assert!((sum(&seq) - 1.0).abs() < 1e-6);
    let tok = token_weights(&refs, Aggregation::TokenMean, 0);
    assert!((tok[0][0] - 1.0 / 12.0).abs() < 1e-7 && (sum(&tok) - 1.0).abs() < 1e-6);
    let dr = token_weights(&refs, Aggregation::SeqMeanTokenSumNorm, 100);
    assert!((dr[1][9] - 1.0 / 200.0).abs() < 1e-9 && (sum(&dr) - 12.0 / 200.0).abs() < 1e-6);
}

/// Loss and gradients against PyTorch (scripts/make_grpo_fixtures.py) for each case: the
/// loss within 1e-4 relative; every gradient tensor within 1e-4 of its norm (L2 of the
/// difference over L2 of PyTorch's).
#[test]
fn loss_and_gradients_match_pytorch() {
    let root = pytorch_grpo::root(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let (batch, cases) = pytorch_grpo::load(&root);
    assert!(cases.len() >= 6, "{} cases", cases.len());
    for case in &cases {
        let (loss, grads) = pytorch_grpo::loss_and_grads(&model, &batch, &case.config);
        pytorch_grpo::check(&root, &model, case, loss, &grads);
    }
}

/// Draws below `n` from a xorshift64 stream seeded with `state`.
fn xorshift(mut state: u64) -> impl FnMut(u64) -> usize {
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n) as usize
    }
}

/// `MicroBatching::in_order`: passes in order that cover the batch, each within both bounds
/// (a sequence longer than the token bound alone), each ended only by the sequence that
/// would break a bound.
#[test]
fn micro_batches_follow_both_bounds_in_order() {
    use artist_rl::MicroBatching;
    let split = |sequences, tokens, lens: &[usize]| MicroBatching { sequences, tokens }.in_order(lens);
    assert_eq!(split(0, 0, &[]), vec![]);
    assert_eq!(split(0, 0, &[5, 5, 5]), vec![0..3]);
    assert_eq!(split(2, 0, &[5, 5, 5]), vec![0..2, 2..3]);
    assert_eq!(split(0, 10, &[5, 5, 5]), vec![0..2, 2..3]);
    assert_eq!(split(0, 10, &[4, 6, 1]), vec![0..2, 2..3]);
    assert_eq!(split(0, 10, &[3, 20, 3]), vec![0..1, 1..2, 2..3]);
    assert_eq!(split(2, 3, &[1, 1, 1, 1, 1]), vec![0..2, 2..4, 4..5]);
    assert_eq!(split(3, 3, &[2, 1, 1, 1, 1]), vec![0..2, 2..5]);
    assert_eq!(MicroBatching::from(2), MicroBatching { sequences: 2, tokens: 0 });

    // Pseudo-random batches against the rules themselves.
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
    for _ in 0..2000 {
        let lens: Vec<usize> = (0..next(12)).map(|_| 1 + next(40)).collect();
        let (sequences, tokens) = (next(5), if next(3) == 0 { 0 } else { 1 + next(80) });
        let passes = split(sequences, tokens, &lens);
        let fits = |r: &std::ops::Range<usize>| {
            (sequences == 0 || r.len() <= sequences) && (tokens == 0 || lens[r.clone()].iter().sum::<usize>() <= tokens)
        };
        let mut at = 0;
        for p in &passes {
            assert_eq!(p.start, at, "{lens:?} {sequences} {tokens}: {passes:?}");
            assert!(!p.is_empty() && (fits(p) || p.len() == 1), "{lens:?} {sequences} {tokens}: {passes:?}");
            if p.end < lens.len() {
                assert!(!fits(&(p.start..p.end + 1)), "{lens:?} {sequences} {tokens}: {passes:?} ended early");
            }
            at = p.end;
        }
        assert_eq!(at, lens.len());
    }
}

/// `MicroBatching::passes`: with a count bound alone, the in-order cut; with a token bound,
/// packed passes (cases worked out by hand), and on 3,000 pseudo-random batches: every
/// sequence in exactly one pass, each pass within both bounds (a sequence over the token
/// bound alone), indices increasing within a pass and passes ordered by their first,
/// never more passes than the in-order cut nor a fuller one; against the fewest passes any
/// packing has (found by search, up to 13 sequences), at most one more, and the fewest on
/// 99% of batches or more.
#[test]
fn token_bounded_passes_are_packed() {
    use artist_rl::MicroBatching;
    let passes = |sequences, tokens, lens: &[usize]| MicroBatching { sequences, tokens }.passes(lens);
    let ranges = |v: Vec<std::ops::Range<usize>>| v.into_iter().map(Vec::from_iter).collect::<Vec<_>>();
    assert_eq!(passes(0, 0, &[]), Vec::<Vec<usize>>::new());
    assert_eq!(passes(2, 0, &[9, 1, 9, 1, 9]), vec![vec![0, 1], vec![2, 3], vec![4]]);
    // In order: [7], [5, 7], [5]; packed: two full passes.
    assert_eq!(passes(0, 12, &[7, 5, 7, 5]), vec![vec![0, 1], vec![2, 3]]);
    // In order: [8, 2], [6, 4] is already even and stays; [2, 6, 4, 8] packs as [2, 8], [6, 4].
    assert_eq!(passes(0, 10, &[8, 2, 6, 4]), vec![vec![0, 1], vec![2, 3]]);
    assert_eq!(passes(0, 10, &[2, 6, 4, 8]), vec![vec![0, 3], vec![1, 2]]);
    // Spread: first-fit gives [9, 5, 4, 2] as [9, 5], [4, 2] (14 and 6); longest-first into
    // the least-filled of two gives [9, 2], [5, 4] (11 and 9).
    assert_eq!(passes(0, 14, &[9, 5, 4, 2]), vec![vec![0, 3], vec![1, 2]]);
    // A sequence over the bound alone, and the count bound still holds.
    assert_eq!(passes(0, 10, &[3, 20, 3]), vec![vec![0, 2], vec![1]]);
    assert_eq!(passes(2, 100, &[1, 1, 1, 1, 1]), vec![vec![0, 1], vec![2, 3], vec![4]]);

    let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
    // The fewest passes any packing of `lens` within the bounds has, by search.
    fn fewest(lens: &[usize], seqs: usize, tokens: usize) -> usize {
        fn go(i: usize, lens: &[usize], bins: &mut Vec<(usize, usize)>, seqs: usize, tokens: usize, best: &mut usize) {
            if bins.len() >= *best {
                return;
            }
            if i == lens.len() {
                *best = bins.len();
                return;
            }
            for b in 0..bins.len() {
                let (n, t) = bins[b];
                if n < seqs && t + lens[i] <= tokens {
                    bins[b] = (n + 1, t + lens[i]);
                    go(i + 1, lens, bins, seqs, tokens, best);
                    bins[b] = (n, t);
                }
            }
            bins.push((1, lens[i]));
            go(i + 1, lens, bins, seqs, tokens, best);
            bins.pop();
        }
        let mut best = usize::MAX;
        go(0, lens, &mut Vec::new(), seqs, tokens, &mut best);
        best
    }
    let (mut fewer, mut searched, mut optimal) = (0, 0, 0);
    for round in 0..3000 {
        let lens: Vec<usize> = (0..next(14)).map(|_| 1 + next(40)).collect();
        let (sequences, tokens) = (next(5), if next(4) == 0 { 0 } else { 1 + next(90) });
        let mb = MicroBatching { sequences, tokens };
        let got = mb.passes(&lens);
        let in_order = ranges(mb.in_order(&lens));
        if tokens == 0 {
            assert_eq!(got, in_order);
            continue;
        }
        let what = format!("{lens:?} {sequences} {tokens}: {got:?}");
        let load = |p: &Vec<usize>| p.iter().map(|&i| lens[i]).sum::<usize>();
        let mut seen = vec![false; lens.len()];
        for p in &got {
            assert!(!p.is_empty() && p.windows(2).all(|w| w[0] < w[1]), "{what}");
            assert!(p.len() == 1 || ((sequences == 0 || p.len() <= sequences) && load(p) <= tokens), "{what}");
            for &i in p {
                assert!(!std::mem::replace(&mut seen[i], true), "{what}");
            }
        }
        assert!(seen.iter().all(|&s| s), "{what}");
        assert!(got.windows(2).all(|w| w[0][0] < w[1][0]), "{what}");
        let fullest = |plan: &[Vec<usize>]| plan.iter().map(load).max().unwrap_or(0);
        assert!((got.len(), fullest(&got)) <= (in_order.len(), fullest(&in_order)), "{what} vs {in_order:?}");
        fewer += usize::from(got.len() < in_order.len());
        // The sequences over the bound each take a pass alone.
        if lens.len() <= 13 {
            let over = lens.iter().filter(|&&l| l > tokens).count();
            let rest: Vec<usize> = lens.iter().copied().filter(|&l| l <= tokens).collect();
            let seqs = if sequences == 0 { usize::MAX } else { sequences };
            let best = over + fewest(&rest, seqs, tokens);
            assert!(got.len() <= best + 1, "round {round}: {what}, {best} possible");
            searched += 1;
            optimal += usize::from(got.len() == best);
        }
    }
    // Measured: 477 of the 2,250 token-bounded batches packed into fewer passes than in
    // order; 2,239 of the 2,247 searched had the fewest passes possible, 8 one more.
    assert!(fewer > 300, "packing saved a pass on {fewer} batches only");
    assert!(optimal * 100 >= searched * 99, "the fewest passes on {optimal} of {searched} batches only");
}

/// `pg_mask` (the high-entropy token selection): a masked token loses its policy-gradient
/// term and keeps its KL and entropy terms and its place in the aggregation, against the
/// f64 formula, in one pass or one rollout a pass; every term masked is the loss of zero
/// advantages; a mask of the wrong length is refused.
#[test]
fn a_policy_gradient_mask_keeps_the_other_terms() {
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let c = GrpoConfig { beta: 0.04, entropy_coeff: 0.05, aggregation: Aggregation::TokenMean, ..Default::default() };
    let mut b = batch(&model, 1.0);
    for (i, r) in b.iter_mut().enumerate() {
        r.pg_mask = Some((0..r.ids.len()).map(|j| u8::from((i + j) % 3 != 0)).collect());
    }
    let want = reference_loss(&model, &b, &c);
    let unmasked =
        reference_loss(&model, &b.iter().map(|r| TrainRollout { pg_mask: None, ..r.clone() }).collect::<Vec<_>>(), &c);
    assert!((want - unmasked).abs() > 1e-3, "the mask changes nothing: {want} vs {unmasked}");
    let (got, grads, _) = run(&model, &b, &c, usize::MAX);
    assert!((got - want).abs() <= 1e-4 * want.abs().max(1e-3), "loss {got} vs {want}");
    let (got1, grads1, _) = run(&model, &b, &c, 1);
    assert!((got - got1).abs() <= 1e-6, "{got} vs {got1} one rollout a pass");
    let close = |a: &Gradients, b: &Gradients, what: &str| {
        for p in model.params() {
            let (x, y) = (a.get(p.id()).unwrap().to_f32_vec().unwrap(), b.get(p.id()).unwrap().to_f32_vec().unwrap());
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let worst =
                x.iter().zip(&y).map(|(u, v)| (u - v).abs()).fold(0f32, |m, v| if v.is_nan() || v > m { v } else { m });
            assert!(worst <= 1e-4 * scale, "{what} {}: gradients differ by {worst}", p.name());
        }
    };
    close(&grads, &grads1, "one rollout a pass");

    let off: Vec<TrainRollout> =
        b.iter().map(|r| TrainRollout { pg_mask: Some(vec![0; r.ids.len()]), ..r.clone() }).collect();
    let zero: Vec<TrainRollout> =
        b.iter().map(|r| TrainRollout { pg_mask: None, advantage: 0.0, ..r.clone() }).collect();
    let ((l_off, g_off, _), (l_zero, g_zero, _)) =
        (run(&model, &off, &c, usize::MAX), run(&model, &zero, &c, usize::MAX));
    assert!((l_off - l_zero).abs() <= 1e-7 * l_zero.abs().max(1e-3), "{l_off} vs {l_zero}");
    close(&g_off, &g_zero, "every term masked");

    let short = TrainRollout { pg_mask: Some(vec![1]), ..b[0].clone() };
    let refs = [&short];
    let w = token_weights(&refs, c.aggregation, c.norm_length);
    let ws: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
    let err = grpo_loss(&model, &Ctx::inference(), &refs, &ws, &c).unwrap_err().to_string();
    assert!(err.contains("policy-gradient mask"), "{err}");
}

/// The high-entropy threshold is `torch.quantile`'s (linear between neighbours) at
/// `1 - top`: values worked out by hand, whatever the order of the entropies.
#[test]
fn the_entropy_threshold_is_torch_quantile() {
    use artist_rl::grpo::entropy_threshold;
    let e = [0.5f32, 3.0, 1.0, 2.0, 0.0];
    // Sorted 0, 0.5, 1, 2, 3; q = 0.8 sits at 3.2: 2 + 0.2 * 1.
    assert!((entropy_threshold(&e, 0.2).unwrap() - 2.2).abs() < 1e-12);
    // q = 0.5 at 2.0: 1; q = 0 at the least, q = 1 at the most.
    assert_eq!(entropy_threshold(&e, 0.5), Some(1.0));
    assert_eq!((entropy_threshold(&e, 1.0), entropy_threshold(&e, 0.0)), (Some(0.0), Some(3.0)));
    assert_eq!(entropy_threshold(&[], 0.2), None);
    // Kept: at or above it, so top = 0.2 of five distinct values keeps one.
    let t = entropy_threshold(&e, 0.2).unwrap();
    assert_eq!(e.iter().filter(|&&x| f64::from(x) >= t).count(), 1);
}

/// `tis_drop_rejected`: the tokens the mask mode rejects leave the rollout's mask, so the
/// aggregation divides by the tokens kept (counted here from the weights in f64) and the
/// loss is the formula's over them, KL terms included only for them; a rollout the veto
/// rejects leaves whole; without the option nothing changes.
#[test]
fn rejected_tokens_can_leave_the_loss() {
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let c = GrpoConfig {
        aggregation: Aggregation::TokenMean,
        beta: 0.04,
        tis_cap: 1.2,
        tis_mode: TisMode::Mask,
        tis_cap_low: 0.8,
        tis_drop_rejected: true,
        ..Default::default()
    };
    let mut b = batch(&model, 1.0);
    for r in &mut b {
        let sampled = r.old_logprobs.iter().enumerate().map(|(j, &o)| o - 0.4 * ((j % 4) as f32 - 1.5) / 1.5);
        r.sampler_logprobs = Some(sampled.collect());
    }
    // The tokens kept: generated, with exp(old - sampler) within the bounds.
    let keep = |r: &TrainRollout, j: usize| {
        let w = (r.old_logprobs[j] as f64 - r.sampler_logprobs.as_ref().unwrap()[j] as f64).exp();
        r.mask[j] == 1 && (0.8..=1.2).contains(&w)
    };
    let kept: Vec<Vec<bool>> = b.iter().map(|r| (0..r.ids.len()).map(|j| keep(r, j)).collect()).collect();
    let n_kept = kept.iter().flatten().filter(|&&k| k).count();
    let generated: usize = b.iter().map(TrainRollout::generated).sum();
    assert!(n_kept > 0 && n_kept < generated, "{n_kept} of {generated} kept: the test shows nothing");
    assert_eq!(GrpoConfig { tis_drop_rejected: false, ..c }.drop_rejected(&mut b[0].clone()), 0);
    let mut dropped = b.clone();
    let taken: usize = dropped.iter_mut().map(|r| c.drop_rejected(r)).sum();
    assert_eq!(taken, generated - n_kept);
    let refs: Vec<&TrainRollout> = dropped.iter().collect();
    let w = token_weights(&refs, c.aggregation, c.norm_length);
    for (wr, kr) in w.iter().zip(&kept) {
        for (&wt, &k) in wr.iter().zip(kr) {
            assert_eq!(wt, if k { (1.0 / n_kept as f64) as f32 } else { 0.0 });
        }
    }
    let want = reference_loss(&model, &dropped, &c);
    let (got, _, _) = run(&model, &dropped, &c, usize::MAX);
    assert!((got - want).abs() <= 1e-4 * want.abs().max(1e-3), "loss {got} vs {want}");
    let (kept_loss, _, _) = run(&model, &b, &GrpoConfig { tis_drop_rejected: false, ..c }, usize::MAX);
    assert!((got - kept_loss).abs() > 1e-6, "dropping changed nothing: {got} vs {kept_loss}");

    // The veto rejects a rollout whole.
    let veto = GrpoConfig { tis_mode: TisMode::Truncate, tis_cap_low: 0.0, tis_veto: 1e-4, ..c };
    let mut r = b[1].clone();
    let j = r.mask.iter().position(|&m| m == 1).unwrap();
    r.sampler_logprobs.as_mut().unwrap()[j] = r.old_logprobs[j] + 12.0;
    let before = r.generated();
    assert_eq!(veto.drop_rejected(&mut r), before);
    assert_eq!(r.generated(), 0);
}
