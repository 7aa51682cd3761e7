//! The GRPO trainer end to end on a tiny model: two steps with the calculator in the loop
//! write metrics and a checkpoint, a resumed run continues from it, and the paper's
//! preset parses; configuration errors name the key.

use std::path::Path;

use artist_model::Qwen2;
use artist_tensor::Device;
use artist_train::grpo::{GrpoRunConfig, GrpoTrainer, Problem, train};
use artist_train::sft::RunOptions;

mod common;

fn answer_of(text: &str) -> Option<&str> {
    let start = text.rfind("<answer>")? + "<answer>".len();
    let end = start + text[start..].find("</answer>")?;
    Some(text[start..end].trim())
}

fn verify(q: &artist_math::Question<'_>) -> Result<artist_math::Verdict, String> {
    Ok((answer_of(q.completion) == Some(q.answer)).into())
}

fn trainer(config: GrpoRunConfig) -> GrpoTrainer<'static> {
    common::math_trainer(config, &verify)
}

fn tiny_config() -> GrpoRunConfig {
    common::tiny_grpo_config(&["steps=2", "save_every=1"])
}

#[test]
fn two_steps_then_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut t = trainer(tiny_config());
    let before: Vec<f32> = t.model.params()[1].value().to_f32_vec().unwrap();
    let m = train(&run, &mut t, &common::quiet()).unwrap();
    assert_eq!(m.len(), 2);
    for s in &m {
        assert!(s.reward.is_finite() && s.response_tokens > 0.0);
    }
    let after: Vec<f32> = t.model.params()[1].value().to_f32_vec().unwrap();
    assert!(before != after || m.iter().all(|s| s.loss == 0.0), "an update with a non-zero loss moved no weight");
    let lines = artist_train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 2);
    for key in [
        "reward",
        "reward_answer",
        "accuracy",
        "response_tokens",
        "tool_calls_per_rollout",
        "kl",
        "entropy",
        "clip_fraction",
        "tokens_per_s",
    ] {
        assert!(lines[1].get(key).is_some(), "metrics lack {key}");
    }
    assert!(artist_train::checkpoint::latest(&run).unwrap().unwrap().ends_with("step-00000002"));
    // Resume to step 3.
    let mut t2 = trainer(GrpoRunConfig { steps: 3, ..tiny_config() });
    let m2 = train(&run, &mut t2, &RunOptions { resume: true, ..common::quiet() }).unwrap();
    assert_eq!(m2.len(), 1);
    assert_eq!(m2[0].step, 3);
    assert_eq!(artist_train::metrics::read(&run.join("metrics.jsonl")).unwrap().len(), 3);
    // The curves are drawn from the whole run's metrics.
    let svg = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    assert!(svg.contains("reward (mean)") && svg.contains("KL to reference"));
    // TensorBoard's event files: one per invocation, each a header and a record per line.
    let events: Vec<_> = std::fs::read_dir(run.join("tensorboard")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|p| p.file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents.")));
    let sizes: u64 = events.iter().map(|p| p.metadata().unwrap().len()).sum();
    assert!(sizes > 3 * 200, "event files of {sizes} bytes for 3 steps of metrics");
}

/// beta > 0 loads the starting model as the frozen reference: the KL term is exactly 0
/// before the first update (policy and reference are the same weights, computed the same
/// way). Against a reference that differs, the KL is positive from the first step and its
/// gradient moves the policy, while the reference stays put.
#[test]
fn kl_to_a_frozen_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny_config().with_overrides(&["grpo.beta=0.04".into(), "grpo.kl=\"k3\"".into()]).unwrap();
    let mut t = trainer(c.clone());
    let m = train(&tmp.path().join("run"), &mut t, &common::quiet()).unwrap();
    assert_eq!(m[0].kl, 0.0, "KL before any update");

    // A reference with perturbed weights.
    let reference_dir = tmp.path().join("reference");
    let perturbed = Qwen2::load(&c.model).unwrap();
    for (i, p) in perturbed.params().iter().enumerate() {
        let v: Vec<f32> = p.value().to_f32_vec().unwrap();
        let v: Vec<f32> =
            v.iter().enumerate().map(|(j, x)| x + 0.05 * (((i * 31 + j * 17) % 13) as f32 / 6.0 - 1.0)).collect();
        let t = artist_tensor::Tensor::from_vec(v, p.value().dims().to_vec(), artist_tensor::Device::Cpu).unwrap();
        p.value().copy_from(&t.to_dtype(p.value().dtype()).unwrap()).unwrap();
    }
    std::fs::create_dir_all(&reference_dir).unwrap();
    artist_train::checkpoint::write_hf_model(&reference_dir, &perturbed, Some(&c.model)).unwrap();
    let reference_start: Vec<f32> = perturbed.params()[1].value().to_f32_vec().unwrap();
    let c2 = c.with_overrides(&[format!("reference_model={:?}", reference_dir.to_str().unwrap())]).unwrap();
    let mut t = trainer(c2);
    let start: Vec<f32> = t.model.params()[1].value().to_f32_vec().unwrap();
    let m = train(&tmp.path().join("run-perturbed"), &mut t, &common::quiet()).unwrap();
    assert!(m[0].kl > 0.0 && m[1].kl > 0.0, "KL to a different reference: {} {}", m[0].kl, m[1].kl);
    let reference = t.reference.as_ref().expect("the reference was loaded");
    assert_eq!(reference.params()[1].value().to_f32_vec().unwrap(), reference_start, "the reference moved");
    assert_ne!(t.model.params()[1].value().to_f32_vec().unwrap(), start, "the KL gradient moved nothing");

    // A missing reference path is a clear error.
    let c =
        tiny_config().with_overrides(&["grpo.beta=0.1".into(), "reference_model=\"/nonexistent/ref\"".into()]).unwrap();
    let e = train(&tmp.path().join("run2"), &mut trainer(c), &common::quiet()).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/ref"), "{e}");
    let c = tiny_config().with_overrides(&["grpo.beta=-1".into()]).unwrap();
    let e = train(&tmp.path().join("run3"), &mut trainer(c), &common::quiet()).unwrap_err().to_string();
    assert!(e.contains("grpo.beta"), "{e}");
}

/// bf16 rollouts under an f32 loss: `old_logprobs = "auto"` recomputes pi_old and reports
/// how far the sampler was from it; `"sampler"` keeps the sampler's and reports nothing;
/// truncated importance sampling trains on top of the recomputation and is refused without
/// it.
#[test]
fn pi_old_is_recomputed_when_the_sampler_computes_in_bf16() {
    let bf16 = |extra: &[&str]| {
        let mut sets: Vec<String> =
            ["steps=1", "rollout.matmul_dtype=\"bf16\"", "rollout.kv_cache_dtype=\"bf16\""].map(String::from).into();
        sets.extend(extra.iter().map(|s| s.to_string()));
        tiny_config().with_overrides(&sets).unwrap()
    };
    assert!(!tiny_config().recomputes_old_logprobs(Device::Cpu), "f32 sampling and loss need no recomputation");
    // On a GPU the auto dtypes are bf16 (products, attention, KV cache): pi_old is recomputed.
    assert!(tiny_config().recomputes_old_logprobs(Device::Cuda(0)), "auto dtypes on a GPU recompute pi_old");
    let tmp = tempfile::tempdir().unwrap();
    let auto = train(&tmp.path().join("auto"), &mut trainer(bf16(&[])), &common::quiet()).unwrap();
    let gap = auto[0].sampler_logprob_gap.expect("auto recomputes pi_old under bf16 sampling");
    assert!(gap > 0.0 && gap < 0.05, "mean |recomputed - sampler's| logprob {gap}");
    let line = std::fs::read_to_string(tmp.path().join("auto/metrics.jsonl")).unwrap();
    assert!(line.contains("sampler_logprob_gap"), "{line}");
    let sampler =
        train(&tmp.path().join("s"), &mut trainer(bf16(&["old_logprobs=\"sampler\""])), &common::quiet()).unwrap();
    assert_eq!(sampler[0].sampler_logprob_gap, None);
    let tis = train(&tmp.path().join("tis"), &mut trainer(bf16(&["grpo.tis_cap=2.0"])), &common::quiet()).unwrap();
    assert!(tis[0].loss.is_finite() && tis[0].sampler_logprob_gap.is_some());
    let e = bf16(&["old_logprobs=\"sampler\"", "grpo.tis_cap=2.0"]).validate(Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("tis_cap") && e.contains("recompute"), "{e}");
    let e = bf16(&["grpo.tis_cap=-1.0"]).validate(Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("tis_cap"), "{e}");
    let e = tiny_config().with_overrides(&["old_logprobs=\"trainer\"".into()]).unwrap_err().to_string();
    assert!(e.contains("trainer"), "{e}");
}

/// `[eval]` every 2 steps of 3: a line of step 0 with the starting policy's figures alone,
/// none after step 1, and after steps 2 and 3 (the last) the figures merged into the step's
/// line. The first and the last are what a separate greedy evaluation of those weights gives.
#[test]
fn held_out_evaluation_is_logged_as_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let config = tiny_config().with_overrides(&["steps=3".into(), "eval.every=2".into()]).unwrap();
    let mut t = common::math_trainer(config, &common::parity);
    t.held_out = (0..5).map(|i| Problem { problem: format!("{i}*3?"), answer: (3 * i).to_string() }).collect();
    let held_out = t.held_out.clone();
    let start = t.evaluate(&held_out, 0.0, 0).unwrap();
    let m = train(&run, &mut t, &common::quiet()).unwrap();
    let end = t.evaluate(&held_out, 0.0, 0).unwrap();
    eprintln!("held out: start {start:?}, end {end:?}");
    assert!(start.accuracy > 0.0 && start.accuracy < 1.0, "{start:?}: the judge should split the answers");
    let lines = artist_train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let get = |i: usize, key: &str| lines[i].get(key).and_then(|v| v.as_f64());
    assert_eq!(get(0, "step"), Some(0.0));
    assert_eq!(lines[0].get("reward"), None, "the step-0 line holds the evaluation alone");
    assert_eq!((get(0, "eval_accuracy"), get(0, "eval_reward")), (Some(start.accuracy), Some(start.reward)));
    assert_eq!(get(0, "eval_tool_use"), Some(start.tool_use));
    assert_eq!(get(1, "eval_accuracy"), None);
    assert!(get(2, "eval_accuracy").is_some() && get(2, "reward").is_some());
    assert_eq!((get(3, "eval_accuracy"), get(3, "eval_reward")), (Some(end.accuracy), Some(end.reward)));
    assert_eq!(m[2].eval_accuracy, Some(end.accuracy));
    assert!(m[0].eval_accuracy.is_none() && m[1].eval_accuracy.is_some());
    assert_eq!(
        (m[1].eval_pass_at_k, m[1].eval_maj_at_k, m[1].eval_pass_hat_k),
        (None, None, None),
        "greedy: one answer a problem"
    );
    let svg = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    assert!(svg.contains("held-out accuracy"));
    // eval_rollouts.jsonl: the first four answers of each evaluation, tagged with the step
    // they follow, judged as the judge says of their text.
    let eval_lines = |run: &Path| artist_train::metrics::read(&run.join("eval_rollouts.jsonl")).unwrap();
    let steps = |lines: &[serde_json::Value]| lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>();
    let logged = eval_lines(&run);
    assert_eq!(steps(&logged), [0, 0, 0, 0, 2, 2, 2, 2, 3, 3, 3, 3]);
    for (i, l) in logged.iter().enumerate() {
        let p = (i % 4) as u64;
        assert_eq!((l["problem_index"].as_u64(), l["sample"].as_u64()), (Some(p), Some(0)));
        assert_eq!(l["gold"], held_out[p as usize].answer.as_str());
        assert_eq!(
            l["correct"].as_bool(),
            common::parity(&artist_math::Question {
                completion: l["completion"].as_str().unwrap(),
                ..Default::default()
            })
            .ok()
            .map(|v| v.correct),
            "{l}"
        );
    }

    // Resuming at step 2 keeps the step-0 and step-2 evaluations and redoes step 3's.
    let mut t2 = common::math_trainer(
        tiny_config().with_overrides(&["steps=4".into(), "eval.every=2".into()]).unwrap(),
        &common::parity,
    );
    t2.held_out = held_out.clone();
    std::fs::remove_dir_all(run.join("checkpoints/step-00000003")).unwrap();
    std::fs::write(run.join("checkpoints/latest"), "step-00000002").unwrap();
    let m2 = train(&run, &mut t2, &RunOptions { resume: true, ..common::quiet() }).unwrap();
    assert_eq!(m2.iter().map(|m| (m.step, m.eval_accuracy.is_some())).collect::<Vec<_>>(), [(3, false), (4, true)]);
    let lines = artist_train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    let evals: Vec<f64> =
        lines.iter().filter(|l| l.get("eval_accuracy").is_some()).map(|l| l["step"].as_f64().unwrap()).collect();
    assert_eq!(evals, [0.0, 2.0, 4.0]);
    assert_eq!(steps(&eval_lines(&run)), [0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4], "step 3's answers were dropped");

    // Sampled, two answers a problem: the starting and the trained policy draw differently,
    // and each evaluation is what the trainer's own gives for those weights.
    let sets = ["steps=3".into(), "eval.temperature=1.0".into(), "eval.samples=2".into()];
    let mut t = common::math_trainer(tiny_config().with_overrides(&sets).unwrap(), &common::parity);
    t.held_out = held_out.clone();
    let start = t.evaluate_held_out_sharded(None).unwrap();
    let m = train(&tmp.path().join("sampled"), &mut t, &common::quiet()).unwrap();
    let end = t.evaluate_held_out_sharded(None).unwrap();
    eprintln!("sampled held out: start {start:?}, end {end:?}");
    assert_ne!(start, end, "training changed no sampled answer");
    assert!(end.pass_at_k >= end.accuracy && end.pass_at_k <= 1.0, "{end:?}");
    assert!(end.pass_hat_k <= end.accuracy, "{end:?}");
    assert_eq!((m[2].eval_pass_at_k, m[2].eval_pass_hat_k), (Some(end.pass_at_k), Some(end.pass_hat_k)));
    // Random text holds no answer to vote for: maj@2 is logged, and 0.
    assert_eq!((m[2].eval_maj_at_k, end.maj_at_k), (Some(0.0), Some(0.0)));
    let lines = artist_train::metrics::read(&tmp.path().join("sampled/metrics.jsonl")).unwrap();
    assert_eq!(lines[0].get("eval_reward").and_then(|v| v.as_f64()), Some(start.reward));
    assert_eq!(
        (m[2].eval_accuracy, m[2].eval_reward, m[2].eval_tool_use),
        (Some(end.accuracy), Some(end.reward), Some(end.tool_use))
    );

    // Settings that mean nothing are refused.
    for bad in ["eval.samples=0", "eval.temperature=-1.0"] {
        let e = tiny_config().with_overrides(&[bad.into()]).unwrap().validate(Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("eval."), "{bad}: {e}");
    }
}

/// `[overlong]` on the tiny model, whose every rollout a limit ends: masking them trains
/// nothing (and moves no weight), and the soft punishment over the whole response range
/// lowers each reward by `penalty * length / buffer`, on the same rollouts.
#[test]
fn overlong_rollouts_are_masked_or_punished() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, sets: &[&str]| {
        let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        sets.push("steps=1".into());
        let mut t = common::math_trainer(tiny_config().with_overrides(&sets).unwrap(), &common::parity);
        let before: Vec<Vec<f32>> = t.model.params().iter().map(|p| p.value().to_f32_vec().unwrap()).collect();
        let m = train(&tmp.path().join(name), &mut t, &common::quiet()).unwrap().remove(0);
        let after: Vec<Vec<f32>> = t.model.params().iter().map(|p| p.value().to_f32_vec().unwrap()).collect();
        (m, before != after)
    };
    let (plain, moved) = run("plain", &[]);
    assert_eq!(plain.truncated, 6, "every rollout of the tiny model should hit a limit");
    assert!(moved && plain.reward_overlong.is_none());
    let (masked, moved) = run("masked", &["overlong.mask_truncated=true"]);
    assert!(!moved && masked.loss == 0.0, "masked rollouts trained: loss {}", masked.loss);
    assert_eq!((masked.reward, masked.truncated), (plain.reward, 6));
    let (punished, _) = run("punished", &["overlong.buffer=24", "overlong.penalty=0.5"]);
    let p = punished.reward_overlong.unwrap();
    assert!((p + 0.5 * punished.response_tokens / 24.0).abs() < 1e-12, "{p} for {} tokens", punished.response_tokens);
    assert!(
        p < 0.0 && (punished.reward - (plain.reward + p)).abs() < 1e-12,
        "{} vs {} + {p}",
        punished.reward,
        plain.reward
    );
    let e = tiny_config().with_overrides(&["overlong.penalty=-1.0".into()]).unwrap().validate(Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("overlong.penalty"), "{e}");
}

#[test]
fn configuration_errors_name_the_key() {
    let e = GrpoRunConfig::from_toml("stepz = 3", Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.contains("stepz") && e.contains("c.toml"), "{e}");
    let e = GrpoRunConfig::from_toml("[rollout]\ngroup_sise = 2", Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.contains("group_sise"), "{e}");
    let e = GrpoRunConfig::default().with_overrides(&["rollout.temperature=hot".into()]).unwrap_err().to_string();
    assert!(e.contains("temperature") || e.contains("invalid type"), "{e}");
    let e = GrpoRunConfig::default().with_overrides(&["optim.lrr=1".into()]).unwrap_err().to_string();
    assert!(e.contains("lrr"), "{e}");
    let c = GrpoRunConfig::default()
        .with_overrides(&["rollout.group_size=4".into(), "grpo.aggregation=token_mean".into()])
        .unwrap();
    assert_eq!((c.rollout.group_size, c.grpo.aggregation), (4, artist_rl::Aggregation::TokenMean));
    // RLOO's baseline is not scaled by the group's deviation: asking for both is refused.
    let rloo = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        tiny_config().with_overrides(&sets).unwrap().validate(Device::Cpu)
    };
    let e = rloo(&["advantages.estimator=\"rloo\""]).unwrap_err().to_string();
    assert!(e.contains("rloo") && e.contains("scale_by_std"), "{e}");
    rloo(&["advantages.estimator=\"rloo\"", "advantages.scale_by_std=false"]).unwrap();
    let e = rloo(&["grpo.clip_ratio_c=0.5"]).unwrap_err().to_string();
    assert!(e.contains("clip_ratio_c") && e.contains("above 1"), "{e}");
    rloo(&["grpo.clip_ratio_c=3.0"]).unwrap();
    let e = rloo(&["grpo.entropy_coeff=-0.001"]).unwrap_err().to_string();
    assert!(e.contains("entropy_coeff") && e.contains(">= 0"), "{e}");
    rloo(&["grpo.entropy_coeff=0.001"]).unwrap();
    let e = tiny_config().with_overrides(&["grpo.importance_sampling_level=\"tokens\"".into()]).unwrap_err();
    assert!(e.to_string().contains("tokens"), "{e}");
}

/// The TOML blocks of the docs/TRAINING.md section headed `title`.
fn documented_blocks(title: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(common::root().join("docs/TRAINING.md")).unwrap();
    let start = doc.find(title).unwrap_or_else(|| panic!("the section {title:?}"));
    let section = &doc[start..start + doc[start..].find("\n## ").unwrap()];
    section.split("```toml\n").skip(1).map(|b| b[..b.find("```").unwrap()].to_string()).collect()
}

/// Every TOML block of docs/TRAINING.md's recipes, and the stateful environment's, laid
/// over the math preset, loads and validates (the keys exist, the values parse and agree
/// with each other).
#[test]
fn documented_recipes_are_valid_configs() {
    let mut blocks = documented_blocks("### Recipes");
    assert_eq!(
        blocks.len(),
        11,
        "Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++, entropy bonus, off-policy safeguards, Seq-MIS, mini-batches, \
         Lite PPO, high-entropy tokens"
    );
    let environment = documented_blocks("### A stateful environment of your own");
    assert_eq!(environment.len(), 1);
    blocks.extend(environment);
    let preset = std::fs::read_to_string(common::root().join("configs/artist-math.toml")).unwrap();
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    for block in &blocks {
        let mut table: toml::Table = toml::from_str(&preset).unwrap();
        let recipe: toml::Table = toml::from_str(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        merge(&mut table, recipe.clone());
        let c = GrpoRunConfig::from_toml(&toml::to_string(&table).unwrap(), Path::new("recipe.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{block}"));
        c.validate(Device::Cpu).unwrap_or_else(|e| panic!("{e}\n{block}"));
        // The recipe's values are the ones in force.
        let in_force = toml::Value::try_from(&c).unwrap();
        for (k, v) in &recipe {
            let got = &in_force[k.as_str()];
            match v {
                toml::Value::Table(t) => {
                    for (k2, v2) in t {
                        assert_eq!(&got[k2.as_str()], v2, "{k}.{k2} in\n{block}");
                    }
                }
                v => assert_eq!(got, v, "{k} in\n{block}"),
            }
        }
    }
}

/// An entropy bonus trains on the policy's entropy: with a large coefficient the entropy
/// each step measures before its update climbs, and stays above a run without the bonus
/// from the same start and the same samples at step 1.
#[test]
fn an_entropy_bonus_raises_the_entropy() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |coeff: f64, name: &str| {
        let c = common::tiny_grpo_config(&["steps=3", "save_every=0"])
            .with_overrides(&[format!("grpo.entropy_coeff={coeff}")])
            .unwrap();
        let m = train(&tmp.path().join(name), &mut trainer(c), &common::quiet()).unwrap();
        m.iter().map(|s| s.entropy.expect("every GRPO step measures the entropy")).collect::<Vec<f64>>()
    };
    let (plain, bonus) = (run(0.0, "plain"), run(1.0, "bonus"));
    eprintln!("entropy without the bonus {plain:?}, with it {bonus:?}");
    assert_eq!(plain[0], bonus[0], "step 1 measures the same policy on the same samples");
    assert!(bonus[2] > bonus[0] && bonus[2] > plain[2], "without {plain:?}, with {bonus:?}");
}

fn parity_trainer(config: GrpoRunConfig) -> GrpoTrainer<'static> {
    common::math_trainer(config, &common::parity)
}

/// `reference_sync`: every 2 steps the reference becomes the policy (alpha 1), so the KL,
/// exactly 0 at step 1, is exactly 0 again at step 3 and positive between; a run stopped at
/// step 3 resumes with the moved reference (saved in the checkpoint) and ends as the
/// uninterrupted run does. With alpha 0.5 the reference is the halfway mix. (The parity
/// judge gives the groups differing rewards, so every step trains.)
#[test]
fn the_reference_follows_the_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let config = |sets: &[&str]| {
        let mut all = vec!["steps=4", "save_every=1", "grpo.beta=0.04", "reference_sync.every=2"];
        all.extend_from_slice(sets);
        common::tiny_grpo_config(&all)
    };
    let mut t = parity_trainer(config(&[]));
    let m = train(&tmp.path().join("run"), &mut t, &common::quiet()).unwrap();
    let kl: Vec<f64> = m.iter().map(|s| s.kl).collect();
    assert!(kl[0] == 0.0 && kl[2] == 0.0 && kl[1] > 0.0 && kl[3] > 0.0, "KL per step {kl:?}");
    let weights = common::weights(&t.model);

    // Stopped after step 3 (the reference moved at step 2), then resumed.
    let run = tmp.path().join("stopped");
    let mut first = parity_trainer(config(&[]));
    train(&run, &mut first, &RunOptions { stop_after: Some(3), ..common::quiet() }).unwrap();
    let saved = artist_train::checkpoint::latest(&run).unwrap().unwrap();
    assert!(saved.join(artist_train::checkpoint::REFERENCE_DIR).join("model.safetensors").exists());
    let mut resumed = parity_trainer(config(&[]));
    let m2 = train(&run, &mut resumed, &RunOptions { resume: true, ..common::quiet() }).unwrap();
    assert_eq!((m2.len(), m2[0].kl), (1, m[3].kl), "the resumed step's KL");
    assert_eq!(common::weights(&resumed.model), weights, "the resumed run ended elsewhere");

    // alpha 0.5, one sync at the end of step 2: the reference is the mean of the start and
    // the policy after step 2.
    let mut half = parity_trainer(config(&["steps=2", "reference_sync.alpha=0.5"]));
    let start = common::weights(&half.model);
    train(&tmp.path().join("half"), &mut half, &common::quiet()).unwrap();
    let (policy, reference) = (common::weights(&half.model), common::weights(half.reference.as_ref().unwrap()));
    let want: Vec<Vec<f32>> =
        policy.iter().zip(&start).map(|(p, s)| p.iter().zip(s).map(|(p, s)| 0.5 * p + 0.5 * s).collect()).collect();
    assert!(common::max_diff(&reference, &want) <= 1e-7, "{}", common::max_diff(&reference, &want));
    assert!(common::max_diff(&policy, &start) > 1e-4, "the policy moved too little to show anything");

    // reset_optimizer: the checkpoint written just after the move holds fresh moments.
    let mut reset = parity_trainer(config(&["steps=2", "reference_sync.reset_optimizer=true"]));
    train(&tmp.path().join("reset"), &mut reset, &common::quiet()).unwrap();
    let saved = artist_train::checkpoint::latest(&tmp.path().join("reset")).unwrap().unwrap();
    let state = artist_train::checkpoint::read_state(&saved).unwrap();
    assert!(!state.optimizer_steps.is_empty() && state.optimizer_steps.values().all(|&s| s == 0), "{state:?}");
    let step1 = artist_train::checkpoint::read_state(&saved.with_file_name("step-00000001")).unwrap();
    assert!(step1.optimizer_steps.values().all(|&s| s == 1));

    let e = common::tiny_grpo_config(&["reference_sync.every=2"]).validate(Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("reference_sync") && e.contains("grpo.beta"), "{e}");
    let e = config(&["reference_sync.alpha=0"]).validate(Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("reference_sync.alpha"), "{e}");
}

/// `grad_checkpointing`: each decoder layer recomputed in the loss's backward from its
/// saved input gives the same losses, norms and weights, to the bit, as storing every
/// activation (two steps, two micro-batches a step, with the loss's KL and entropy terms,
/// on a GQA model), and the update's tapes record fewer ops.
#[test]
fn checkpointed_layers_train_to_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let config = |on: bool| {
        common::tiny_grpo_config(&["steps=2", "grpo.beta=0.04", "grpo.entropy_coeff=0.01"])
            .with_overrides(&[format!("grad_checkpointing={on}")])
            .unwrap()
    };
    let run = |on: bool| {
        let mut t = parity_trainer(config(on));
        let m = train(&tmp.path().join(format!("run-{on}")), &mut t, &common::quiet()).unwrap();
        let figures: Vec<(f64, f64, f64)> = m.iter().map(|s| (s.loss, s.grad_norm, s.kl)).collect();
        (figures, common::weights(&t.model))
    };
    let (stored, checkpointed) = (run(false), run(true));
    assert!(stored.0.iter().all(|f| f.1 > 0.0), "steps that train nothing show nothing: {:?}", stored.0);
    assert_eq!(stored.0, checkpointed.0);
    assert_eq!(stored.1, checkpointed.1);

    // One update on the same rollouts: the tape holds a layer as one op.
    let t = parity_trainer(config(false));
    let batch = t.rollouts(&[&t.train[0], &t.train[1]], 7).unwrap();
    let rollouts: Vec<_> = (batch.rollouts.iter().enumerate())
        .filter(|(_, ro)| ro.sampled_tokens() > 0)
        .map(|(i, ro)| common::train_rollout(ro, if i % 2 == 0 { 1.0 } else { -1.0 }))
        .collect();
    let reference = Qwen2::load(&config(false).model).unwrap();
    let ops = |on: bool| {
        let c = config(on);
        let model = Qwen2::load(&c.model).unwrap();
        let mut optimizer = common::adamw(&c, &model);
        let u = artist_train::grpo::update(&model, Some(&reference), rollouts.clone(), &c, &mut optimizer, 1e-3, 0)
            .unwrap();
        (u.tape_ops, u.loss, u.grad_norm)
    };
    let (plain, ckpt) = (ops(false), ops(true));
    assert_eq!((plain.1, plain.2), (ckpt.1, ckpt.2));
    assert!(ckpt.0 < plain.0, "ops recorded: {} checkpointed, {} stored", ckpt.0, plain.0);
}

/// `micro_batch_tokens`: a bound no two rollouts fit under makes a pass of each and trains
/// to the bits of `micro_batch_rollouts = 1` (pi_old recomputed and the reference's
/// logprobs in the same passes); a looser one packs several a pass as
/// `MicroBatching::passes` plans, never past the bound, and trains as one pass of the
/// whole batch does within f32's reassociation.
/// A bound below `rollout.max_context` is refused by name.
#[test]
fn a_token_budget_cuts_the_passes() {
    let config = |sets: &[&str]| {
        // AdamW's eps at 1e-3: a weight then moves at most lr / eps = 1 times its
        // gradient's noise, where torch's 1e-8 turns a near-zero gradient's last bits into
        // a move of up to lr (sft_data_parallel.rs).
        common::tiny_grpo_config(&["grpo.beta=0.04", "old_logprobs=\"recompute\"", "optim.eps=1e-3"])
            .with_overrides(&sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
    };
    let t = parity_trainer(config(&[]));
    let batch = t.rollouts(&[&t.train[0], &t.train[1]], 7).unwrap();
    let rollouts: Vec<_> = (batch.rollouts.iter().enumerate())
        .filter(|(_, ro)| ro.sampled_tokens() > 0)
        .map(|(i, ro)| common::train_rollout(ro, if i % 2 == 0 { 1.0 } else { -1.0 }))
        .collect();
    let lens: Vec<usize> = rollouts.iter().map(|r| r.packed_len()).collect();
    let total: usize = lens.iter().sum();
    assert!(lens.len() >= 4, "{lens:?}");
    let reference = Qwen2::load(&config(&[]).model).unwrap();
    let run = |sets: &[&str]| {
        let c = config(sets);
        let model = Qwen2::load(&c.model).unwrap();
        let mut optimizer = common::adamw(&c, &model);
        let u = artist_train::grpo::update(&model, Some(&reference), rollouts.clone(), &c, &mut optimizer, 1e-3, 0)
            .unwrap();
        (u, common::weights(&model))
    };

    let mut sorted = lens.clone();
    sorted.sort_unstable();
    let apart = sorted[0] + sorted[1] - 1;
    assert!(apart >= sorted[sorted.len() - 1], "{lens:?}");
    let (one_each, w1) = run(&["micro_batch_rollouts=1"]);
    let (budget, wb) = run(&["micro_batch_rollouts=0", &format!("micro_batch_tokens={apart}")]);
    assert_eq!((budget.passes, one_each.passes), (lens.len(), lens.len()));
    assert_eq!((budget.loss, budget.grad_norm, budget.kl), (one_each.loss, one_each.grad_norm, one_each.kl));
    assert_eq!(wb, w1);

    let (whole, ww) = run(&["micro_batch_rollouts=0"]);
    assert_eq!((whole.passes, whole.max_pass_tokens), (1, total));
    let bound = total / 2;
    let (packed, wp) = run(&["micro_batch_rollouts=0", &format!("micro_batch_tokens={bound}")]);
    assert!(
        packed.max_pass_tokens <= bound && packed.passes >= 2 && packed.passes < lens.len(),
        "{lens:?}: {packed:?}"
    );
    // The passes are the planner's.
    let plan = artist_rl::MicroBatching { sequences: 0, tokens: bound }.passes(&lens);
    let fullest = plan.iter().map(|p| p.iter().map(|&i| lens[i]).sum::<usize>()).max();
    assert_eq!((packed.passes, Some(packed.max_pass_tokens)), (plan.len(), fullest));
    assert!((packed.loss - whole.loss).abs() <= 1e-6 * whole.loss.abs().max(1.0), "{packed:?} {whole:?}");
    assert!((packed.grad_norm - whole.grad_norm).abs() <= 1e-5 * whole.grad_norm, "{packed:?} {whole:?}");
    let diff = common::max_diff(&wp, &ww);
    assert!(diff <= 1e-6, "{diff:e}");

    let e = config(&["micro_batch_tokens=119"]).validate(Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("micro_batch_tokens (119)") && e.contains("max_context = 120"), "{e}");
    config(&["micro_batch_tokens=120"]).validate(Device::Cpu).unwrap();
}

/// `mini_batches = 2`: a batch of four groups takes one AdamW step on groups 0 and 2, then
/// one on groups 1 and 3, each normalised over its own rollouts, to the bits of the two
/// updates made by hand on those halves; with `optimizer_steps_per_batch = 2`, four steps
/// (the halves twice, pi_old the sampler's throughout); one step on the whole batch trains
/// otherwise. Zero mini-batches are refused.
#[test]
fn mini_batches_step_on_each_share_in_turn() {
    let config = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        common::tiny_grpo_config(&["prompts_per_step=4"]).with_overrides(&sets).unwrap()
    };
    let t = parity_trainer(config(&[]));
    let problems: Vec<&Problem> = t.train[..4].iter().collect();
    let batch = t.rollouts(&problems, 7).unwrap();
    let rollouts: Vec<_> = (batch.rollouts.iter().enumerate())
        .filter(|(_, ro)| ro.sampled_tokens() > 0)
        .map(|(i, ro)| common::train_rollout(ro, if i % 2 == 0 { 1.0 } else { -0.5 }))
        .collect();
    let groups: Vec<usize> = rollouts.iter().map(|r| r.group).collect();
    assert!((0..4).all(|g| groups.contains(&g)), "every group has a live rollout: {groups:?}");
    let run = |sets: &[&str], updates: &[Vec<artist_rl::TrainRollout>]| {
        let c = config(sets);
        let model = Qwen2::load(&c.model).unwrap();
        let mut optimizer = common::adamw(&c, &model);
        let stats: Vec<_> = (updates.iter())
            .map(|u| artist_train::grpo::update(&model, None, u.clone(), &c, &mut optimizer, 1e-3, 0).unwrap())
            .collect();
        let last = *stats.last().unwrap();
        ((last.loss, last.grad_norm), common::weights(&model))
    };
    let half = |parity: usize| -> Vec<_> { rollouts.iter().filter(|r| r.group % 2 == parity).cloned().collect() };
    let (even, odd) = (half(0), half(1));

    let (mini, w_mini) = run(&["mini_batches=2"], std::slice::from_ref(&rollouts));
    let (by_hand, w_by_hand) = run(&[], &[even.clone(), odd.clone()]);
    assert_eq!(mini, by_hand);
    assert_eq!(w_mini, w_by_hand);

    let (twice, w_twice) = run(&["mini_batches=2", "optimizer_steps_per_batch=2"], std::slice::from_ref(&rollouts));
    let (by_hand, w_by_hand) = run(&[], &[even.clone(), odd.clone(), even, odd]);
    assert_eq!(twice, by_hand);
    assert_eq!(w_twice, w_by_hand);

    let (_, w_whole) = run(&[], std::slice::from_ref(&rollouts));
    assert_ne!(w_whole, w_mini, "one step on the whole batch");

    let e = config(&["mini_batches=0"]).validate(Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("mini_batches"), "{e}");
}

/// `grpo.top_entropy_quantile = 0.2`: the update keeps the policy-gradient term of the
/// generated tokens whose entropy under pi_old is at or above the batch's 0.8 quantile
/// (computed here by sorting), a fifth of them, and trains to the bits of the same
/// rollouts carrying those masks by hand; it trains otherwise than every token. Two ranks,
/// each thresholding the entropies of both, train as one process. A quantile outside
/// (0, 1] is refused.
#[test]
fn high_entropy_tokens_alone_carry_the_policy_gradient() {
    let config = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        common::tiny_grpo_config(&["grpo.beta=0.04", "optim.eps=1e-3"]).with_overrides(&sets).unwrap()
    };
    let c = config(&["grpo.top_entropy_quantile=0.2"]);
    let t = parity_trainer(c.clone());
    let batch = t.rollouts(&[&t.train[0], &t.train[1]], 7).unwrap();
    let rollouts: Vec<_> = (batch.rollouts.iter().enumerate())
        .filter(|(_, ro)| ro.sampled_tokens() > 0)
        .map(|(i, ro)| common::train_rollout(ro, if i % 2 == 0 { 1.0 } else { -1.0 }))
        .collect();
    let reference = Qwen2::load(&c.model).unwrap();
    let refs: Vec<&artist_rl::TrainRollout> = rollouts.iter().collect();
    let (lps, h) =
        artist_rl::grpo::rollout_logprobs_and_entropies(&t.model, &artist_autograd::Ctx::inference(), &refs, 1.0, 2)
            .unwrap();
    // The entropies' passes give the logprobs rollout_logprobs gives.
    let plain = artist_rl::grpo::rollout_logprobs(&t.model, &artist_autograd::Ctx::inference(), &refs, 1.0, 2).unwrap();
    assert_eq!(lps, plain);
    let mut all: Vec<f64> = (rollouts.iter().zip(&h))
        .flat_map(|(r, h)| (0..r.ids.len()).filter(|&j| r.mask[j] == 1).map(|j| f64::from(h[j])))
        .collect();
    all.sort_by(f64::total_cmp);
    let at = 0.8 * (all.len() - 1) as f64;
    let (lo, frac) = (at.floor() as usize, at.fract());
    let threshold = all[lo] + frac * (all[(lo + 1).min(all.len() - 1)] - all[lo]);
    let masked: Vec<_> = (rollouts.iter().zip(&h))
        .map(|(r, h)| artist_rl::TrainRollout {
            pg_mask: Some((0..r.ids.len()).map(|j| u8::from(r.mask[j] == 1 && f64::from(h[j]) >= threshold)).collect()),
            ..r.clone()
        })
        .collect();
    let kept = masked.iter().flat_map(|r| r.pg_mask.as_ref().unwrap()).filter(|&&m| m == 1).count();
    assert!(
        kept as f64 >= 0.2 * all.len() as f64 && (kept as f64) < 0.25 * all.len() as f64,
        "{kept} of {}",
        all.len()
    );

    let run = |c: &GrpoRunConfig, rollouts: &[artist_rl::TrainRollout]| {
        let model = Qwen2::load(&c.model).unwrap();
        let mut optimizer = common::adamw(c, &model);
        let u = artist_train::grpo::update(&model, Some(&reference), rollouts.to_vec(), c, &mut optimizer, 1e-3, 0)
            .unwrap();
        (u, common::weights(&model))
    };
    let (top, w_top) = run(&c, &rollouts);
    assert_eq!(top.entropy_threshold, Some(threshold));
    // pi_old recomputed: the entropies come from its passes, the same threshold.
    let recomputed = config(&["grpo.top_entropy_quantile=0.2", "old_logprobs=\"recompute\""]);
    assert_eq!(run(&recomputed, &rollouts).0.entropy_threshold, Some(threshold));
    let (by_hand, w_by_hand) = run(&config(&[]), &masked);
    assert_eq!((top.loss, top.grad_norm, top.kl), (by_hand.loss, by_hand.grad_norm, by_hand.kl));
    assert_eq!(w_top, w_by_hand);
    let (every, _) = run(&config(&[]), &rollouts);
    assert!((every.grad_norm - top.grad_norm).abs() > 1e-3 * every.grad_norm, "{every:?} {top:?}");

    let steps = |dir: &std::path::Path, ranks: usize| -> Vec<Vec<f32>> {
        let c = config(&["grpo.top_entropy_quantile=0.2", "steps=2", "prompts_per_step=3"]);
        if ranks == 1 {
            let mut t = parity_trainer(c);
            train(dir, &mut t, &common::quiet()).unwrap();
            return common::weights(&t.model);
        }
        std::thread::scope(|s| {
            let handles: Vec<_> =
                artist_dist::InProcess::group_with_timeout(ranks, std::time::Duration::from_secs(300))
                    .into_iter()
                    .map(|mut comm| {
                        let c = c.clone();
                        s.spawn(move || {
                            let mut t = parity_trainer(c);
                            artist_train::grpo::train_data_parallel(dir, &mut t, &common::quiet(), &mut comm).unwrap();
                            common::weights(&t.model)
                        })
                    })
                    .collect();
            handles.into_iter().map(|h| h.join().unwrap()).next().unwrap()
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let diff = common::max_diff(&steps(&tmp.path().join("one"), 1), &steps(&tmp.path().join("two"), 2));
    assert!(diff <= 1e-6, "2 ranks vs one process: {diff:e}");
    let logged = artist_train::metrics::read(&tmp.path().join("one/metrics.jsonl")).unwrap();
    assert!(logged.iter().all(|l| l["entropy_threshold"].as_f64().is_some_and(|t| t > 0.0)), "{logged:?}");

    for bad in ["0.0", "1.5", "-0.2"] {
        let e = config(&[&format!("grpo.top_entropy_quantile={bad}")]).validate(Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("top_entropy_quantile"), "{bad}: {e}");
    }
}

/// Masked importance sampling in a run (bf16 rollouts, pi_old recomputed in f32): the step
/// logs the mean weight, the fraction of tokens the bounds zeroed, the weights' effective
/// sample size and the sampler's k3 KL, as worked out here from the same rollouts (the
/// weights `exp(pi_old - sampler)`, bounds placed between them so that about a quarter of
/// the tokens fall outside); a veto placed between the rollouts' smallest token weights
/// zeroes the rollouts below it and logs their fraction; a lower bound without the mask
/// mode, or not below the cap, and a veto outside (0, 1) or without weights, are refused.
#[test]
fn masked_importance_sampling_logs_its_weights() {
    let sets = ["steps=1", "rollout.deterministic=true", "rollout.matmul_dtype=\"bf16\""];
    let c = common::tiny_grpo_config(&sets);
    assert!(c.recomputes_old_logprobs(Device::Cpu));
    let by_hand = trainer(c.clone());
    let batch = common::first_step_rollouts(&by_hand);
    let all: Vec<artist_rl::TrainRollout> = batch.rollouts.iter().map(|ro| common::train_rollout(ro, 0.0)).collect();
    let refs: Vec<&artist_rl::TrainRollout> = all.iter().collect();
    let ctx = artist_autograd::Ctx::inference();
    let old = artist_rl::grpo::rollout_logprobs(&by_hand.model, &ctx, &refs, 1.0, 2).unwrap();
    let per_rollout: Vec<Vec<f64>> = (all.iter().zip(&old))
        .map(|(r, o)| {
            (0..r.ids.len())
                .filter(|&j| r.mask[j] == 1)
                .map(|j| (o[j] as f64 - r.old_logprobs[j] as f64).exp())
                .collect()
        })
        .collect();
    let weights: Vec<f64> = per_rollout.concat();
    let kl = weights.iter().map(|w| w - w.ln() - 1.0).sum::<f64>() / weights.len() as f64;
    let mut sorted = weights.clone();
    sorted.sort_by(f64::total_cmp);
    let between = |q: f64| {
        let i = (q * sorted.len() as f64) as usize;
        (sorted[i - 1] + sorted[i]) / 2.0
    };
    let (low, cap) = (between(0.1), between(0.85));
    assert!(low < 1.0 && cap > 1.0 && sorted[0] < low, "{sorted:?}");
    let kept: Vec<f64> = weights.iter().map(|&w| if w < low || w > cap { 0.0 } else { w }).collect();
    let masked = kept.iter().filter(|&&w| w == 0.0).count() as f64 / kept.len() as f64;
    let mean = kept.iter().sum::<f64>() / kept.len() as f64;
    let ess = |w: &[f64]| w.iter().sum::<f64>().powi(2) / (w.len() as f64 * w.iter().map(|x| x * x).sum::<f64>());

    let tmp = tempfile::tempdir().unwrap();
    let tis = [format!("grpo.tis_cap={cap}"), format!("grpo.tis_cap_low={low}"), "grpo.tis_mode=\"mask\"".into()];
    let mut t = trainer(c.clone().with_overrides(&tis).unwrap());
    let m = train(&tmp.path().join("run"), &mut t, &common::quiet()).unwrap();
    let (got_mean, got_masked) = (m[0].tis_weight_mean.unwrap(), m[0].tis_bounded_fraction.unwrap());
    assert!((got_mean - mean).abs() <= 1e-6 * mean, "tis_weight_mean {got_mean} vs {mean}");
    assert!((got_masked - masked).abs() <= 1e-12 && masked > 0.1 && masked < 0.4, "{got_masked} vs {masked}");
    let (got_ess, got_kl) = (m[0].tis_ess.unwrap(), m[0].sampler_kl.unwrap());
    assert!((got_ess - ess(&kept)).abs() <= 1e-6 && got_ess < 0.99, "tis_ess {got_ess} vs {}", ess(&kept));
    assert!((got_kl - kl).abs() <= 1e-3 * kl && kl > 0.0, "sampler_kl {got_kl} vs {kl}");
    assert_eq!(m[0].tis_veto_fraction, None, "no veto, no veto fraction");
    let line = std::fs::read_to_string(tmp.path().join("run/metrics.jsonl")).unwrap();
    for key in ["tis_weight_mean", "tis_bounded_fraction", "tis_ess", "sampler_kl"] {
        assert!(line.contains(&format!("\"{key}\"")), "{key}: {line}");
    }
    // The rejected tokens dropped from the loss (veRL's): the same rollouts and weights'
    // figures, another gradient (the kept tokens' mean; the first update's loss is 0 either
    // way, the group's advantages summing to 0). The parity judge, so that groups differ and the gradient is not 0.
    let drop: Vec<String> = tis.iter().cloned().chain(["grpo.tis_drop_rejected=true".to_string()]).collect();
    let mut t = parity_trainer(c.clone().with_overrides(&tis).unwrap());
    let m = train(&tmp.path().join("kept"), &mut t, &common::quiet()).unwrap();
    let mut t = parity_trainer(c.clone().with_overrides(&drop).unwrap());
    let d = train(&tmp.path().join("drop"), &mut t, &common::quiet()).unwrap();
    assert_eq!((d[0].tis_bounded_fraction, d[0].tis_ess), (m[0].tis_bounded_fraction, m[0].tis_ess));
    assert_eq!(d[0].reward, m[0].reward);
    let (a, b) = (d[0].grad_norm, m[0].grad_norm);
    assert!(b > 0.0, "no gradient: the test shows nothing");
    assert!((a - b).abs() > 1e-6 * b, "dropping changed nothing: gradient norms {a} vs {b}");

    // The veto between the two smallest of the rollouts' least weights: every rollout
    // whose least weight is below it is zeroed, the others truncated at a cap above all.
    let mut least: Vec<f64> = per_rollout.iter().map(|w| w.iter().cloned().fold(f64::MAX, f64::min)).collect();
    let order = least.clone();
    least.sort_by(f64::total_cmp);
    let veto = (least[0] + least[1]) / 2.0;
    let vetoed: Vec<bool> = order.iter().map(|&l| l < veto).collect();
    let kept: Vec<f64> =
        per_rollout.iter().zip(&vetoed).flat_map(|(w, &v)| w.iter().map(move |&x| if v { 0.0 } else { x })).collect();
    let overrides = [format!("grpo.tis_cap={}", sorted[sorted.len() - 1] * 2.0), format!("grpo.tis_veto={veto}")];
    let mut t = trainer(c.clone().with_overrides(&overrides).unwrap());
    let m = train(&tmp.path().join("veto"), &mut t, &common::quiet()).unwrap();
    let fraction = vetoed.iter().filter(|&&v| v).count() as f64 / vetoed.len() as f64;
    assert_eq!(m[0].tis_veto_fraction, Some(fraction));
    assert!(fraction > 0.0 && fraction < 1.0, "{fraction}");
    let mean = kept.iter().sum::<f64>() / kept.len() as f64;
    let got = m[0].tis_weight_mean.unwrap();
    assert!((got - mean).abs() <= 1e-6 * mean, "tis_weight_mean under the veto {got} vs {mean}");
    assert!((m[0].tis_ess.unwrap() - ess(&kept)).abs() <= 1e-6, "{:?} vs {}", m[0].tis_ess, ess(&kept));
    assert_eq!(m[0].tis_bounded_fraction, Some(0.0), "the veto is not counted as the bounds'");

    for (bad, needle) in [
        (vec!["grpo.tis_cap=2.0", "grpo.tis_cap_low=0.5"], "tis_cap_low (0.5)"),
        (vec!["grpo.tis_cap=2.0", "grpo.tis_mode=\"mask\"", "grpo.tis_cap_low=2.0"], "tis_cap_low (2)"),
        (vec!["grpo.tis_cap=2.0", "grpo.tis_veto=1.0"], "tis_veto (1)"),
        (vec!["grpo.tis_cap=2.0", "grpo.tis_veto=-1e-4"], "tis_veto (-0.0001)"),
        (vec!["grpo.tis_veto=1e-4"], "tis_veto needs importance weights"),
        (vec!["grpo.tis_cap=2.0", "grpo.tis_drop_rejected=true"], "tis_drop_rejected drops"),
    ] {
        let bad: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
        let e = c.clone().with_overrides(&bad).unwrap().validate(Device::Cpu).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}

/// `tool = "mcp"`: the config needs the server's command line; with the server started,
/// the prompt lists its functions, one JSON object a line, and asks for calls as `<tool>`
/// JSON (tests/tools_e2e.rs runs a model's call through the server).
#[test]
fn an_mcp_server_s_functions_are_in_the_prompt() {
    if !std::process::Command::new("python3").arg("-c").arg("pass").status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let e = common::tiny_grpo_config(&["tool=\"mcp\""]).validate(Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("mcp.command"), "{e}");
    let server = common::root().join("tests/fixtures/mcp/server.py");
    let command = format!("mcp.command=[\"python3\", {:?}]", server.to_str().unwrap());
    let mut c = common::tiny_grpo_config(&["tool=\"mcp\"", &command, "mcp.timeout_s=10"]);
    c.system_prompt = None;
    c.validate(Device::Cpu).unwrap();
    let mut t = trainer(c.clone());
    t.tool = Some(std::sync::Arc::new(artist_tools::McpTool::spawn(c.mcp.clone()).unwrap()));
    let text = t.tokenizer.decode_lossy(&t.prompt_ids("What is 6 * 7?").unwrap(), false);
    for needle in [
        "<tool>{\"name\": \"add\"",
        "</tool>",
        "\n{\"name\":\"add\",\"description\":\"Adds two numbers.\"",
        "What is 6 * 7?",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    // A server per rollout lists the same functions (from the server started to list them).
    let own = c.clone().with_overrides(&["mcp.sessions=\"rollout\"".to_string()]).unwrap();
    assert_eq!(own.mcp.sessions, artist_tools::McpSessions::Rollout);
    t.tool = Some(std::sync::Arc::new(artist_tools::McpTool::spawn(own.mcp.clone()).unwrap()));
    assert_eq!(t.tokenizer.decode_lossy(&t.prompt_ids("What is 6 * 7?").unwrap(), false), text);
    let e = c.with_overrides(&["mcp.sessions=\"each\"".to_string()]).unwrap_err().to_string();
    assert!(e.contains("each") && e.contains("rollout"), "{e}");
}

/// `[judge]`'s timeout must be a positive number (the judge itself is tested in
/// crates/math/tests/judge.rs and, in a run, tests/train_cli.rs).
#[test]
fn a_judge_needs_a_positive_timeout() {
    for bad in ["0", "-1", "nan", "inf"] {
        let c =
            common::tiny_grpo_config(&["judge.command=[\"python3\", \"judge.py\"]", &format!("judge.timeout_s={bad}")]);
        let e = c.validate(Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("judge.timeout_s"), "{bad}: {e}");
    }
    common::tiny_grpo_config(&["judge.command=[\"python3\", \"judge.py\"]", "judge.timeout_s=5"])
        .validate(Device::Cpu)
        .unwrap();
}

/// GRPO on a Qwen3 checkpoint (unbiased attention, per-head q/k RMSNorms, heads wider than
/// hidden / heads) with the KL and entropy terms: the update reaches every parameter, the
/// q/k norms included, and a run stopped after step 1 and resumed ends on the uninterrupted
/// run's bits, its checkpoints loading as Qwen3 again.
#[test]
fn grpo_trains_a_qwen3_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::root().join("tests/fixtures/qwen3/tiny-qwen3");
    let config = || {
        common::tiny_grpo_config(&["steps=2", "save_every=1", "grpo.beta=0.04", "grpo.entropy_coeff=0.01"])
            .with_overrides(&[format!("model={:?}", model.to_str().unwrap())])
            .unwrap()
    };
    let mut t = parity_trainer(config());
    assert_eq!(t.model.config.family, artist_model::Family::Qwen3);
    let tensors = |m: &Qwen2| -> Vec<(String, Vec<f32>)> {
        m.hf_tensors().unwrap().into_iter().map(|(n, t)| (n, t.to_f32_vec().unwrap())).collect()
    };
    let start = tensors(&t.model);
    let norms = start.iter().filter(|(n, _)| n.ends_with("q_norm.weight") || n.ends_with("k_norm.weight"));
    assert_eq!(norms.count(), 4);
    let m = train(&tmp.path().join("run"), &mut t, &common::quiet()).unwrap();
    assert!(m.iter().all(|s| s.loss.is_finite()) && m.iter().any(|s| s.loss != 0.0), "{m:?}");
    for ((name, a), (_, b)) in start.iter().zip(&tensors(&t.model)) {
        assert!(a != b, "{name} did not move");
    }

    let run = tmp.path().join("stopped");
    let mut first = parity_trainer(config());
    train(&run, &mut first, &RunOptions { stop_after: Some(1), ..common::quiet() }).unwrap();
    let mut resumed = parity_trainer(config());
    let m2 = train(&run, &mut resumed, &RunOptions { resume: true, ..common::quiet() }).unwrap();
    assert_eq!((m2.len(), m2[0].loss), (1, m[1].loss), "the resumed step's loss");
    assert_eq!(common::weights(&resumed.model), common::weights(&t.model), "the resumed run ended elsewhere");
    let saved = artist_train::checkpoint::latest(&run).unwrap().unwrap();
    let reloaded = Qwen2::load(&saved).unwrap();
    assert_eq!(reloaded.config.family, artist_model::Family::Qwen3);
    assert_eq!(common::weights(&reloaded), common::weights(&t.model), "the last checkpoint");
}
