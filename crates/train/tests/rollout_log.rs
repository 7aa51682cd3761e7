//! `rollouts.jsonl`: the rollouts a GRPO step played, as text with their rewards and
//! counts. A tiny model first taught to call the calculator plays two steps with every
//! rollout logged; the log's rollouts add up to the step's metrics (tool calls per rollout,
//! tokens per call among them), each logged call count is the number of tool outputs in the
//! text, and a resumed run drops the lines of steps it redoes.

use artist_autograd::{Ctx, Tape};
use artist_optim::{AdamW, AdamWConfig};
use artist_train::data::Example;
use artist_train::grpo::{GrpoTrainer, train};
use artist_train::metrics::{ROLLOUTS_FILE, read};
use artist_train::sft::{RunOptions, sft_loss};

mod common;

fn answer_is_gold(q: &artist_math::Question<'_>) -> Result<artist_math::Verdict, String> {
    Ok(q.completion.contains(&format!("<answer>{}</answer>", q.answer)).into())
}

/// Forty AdamW steps on one trace per problem: the chat prompt, then a calculator call, its
/// output (not a target) and the answer.
fn teach_the_calculator(t: &GrpoTrainer<'_>) {
    let mut examples = Vec::new();
    for p in &t.train {
        let (mut ids, mut mask) = (t.prompt_ids(&p.problem).unwrap(), Vec::new());
        mask.resize(ids.len(), 0u8);
        let n = p.answer.parse::<u32>().unwrap() / 2;
        for (text, m) in [
            (format!("<calculator>{n}+{n}</calculator>"), 1u8),
            (format!("<output>\n{}\n</output>\n", p.answer), 0),
            (format!("<answer>{}</answer>", p.answer), 1),
        ] {
            let piece = t.tokenizer.encode(&text).unwrap();
            mask.extend(std::iter::repeat_n(m, piece.len()));
            ids.extend(piece);
        }
        examples.push(Example { ids, mask, line: 0 });
    }
    let batch: Vec<&Example> = examples.iter().collect();
    let targets: usize = batch.iter().map(|e| e.targets()).sum();
    let config = AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() };
    let mut opt = AdamW::new(&t.model.params(), config).unwrap();
    for _ in 0..40 {
        let tape = Tape::new();
        let (loss, _) = sft_loss(&t.model, &Ctx::training(&tape), &batch, targets).unwrap();
        opt.step(&tape.backward(&loss).unwrap(), 1e-2).unwrap();
    }
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no number {key} in {v}"))
}

#[test]
fn logged_rollouts_add_up_to_the_step_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let config = |steps: u64| {
        common::tiny_grpo_config(&[
            &format!("steps={steps}"),
            "save_every=1",
            "log_rollouts=1000",
            "rollout.max_turn_tokens=24",
            "rollout.max_response_tokens=80",
            "rollout.max_context=200",
        ])
    };
    let mut t = common::math_trainer(config(2), &answer_is_gold);
    teach_the_calculator(&t);
    let opts = RunOptions { resume: false, progress: false, stop_after: None, device: Default::default() };
    let metrics = train(&run, &mut t, &opts).unwrap();
    let lines = read(&run.join(ROLLOUTS_FILE)).unwrap();
    let per_step = t.config.prompts_per_step * t.config.rollout.group_size;
    assert_eq!(lines.len(), 2 * per_step, "every rollout of both steps");
    let mut calls_seen = 0.0;
    for m in &metrics {
        let step: Vec<&serde_json::Value> = lines.iter().filter(|l| l["step"].as_u64() == Some(m.step)).collect();
        assert_eq!(step.len(), per_step, "step {}", m.step);
        for (i, l) in step.iter().enumerate() {
            assert_eq!((l["prompt"].as_u64(), l["sample"].as_u64()), (Some((i / 3) as u64), Some((i % 3) as u64)));
            let text = l["completion"].as_str().unwrap();
            // Each call ran and its output was forced in: as many outputs as calls.
            let outputs = text.matches("<output>").count() as f64;
            assert_eq!(outputs, num(l, "tool_calls"), "{text}");
            // An answer comes in a turn of its own after the last output.
            assert_eq!(l["answered"].as_bool().unwrap(), artist_math::extract_answer(text).is_some());
            if l["answered"] == true {
                assert_eq!(num(l, "model_turns"), outputs + 1.0, "{text}");
            }
            assert!(num(l, "sampled_tokens") <= num(l, "response_tokens"));
            let rewards = &l["rewards"];
            assert!((num(rewards, "total") - num(l, "reward")).abs() < 1e-12, "no overlong penalty here: {l}");
            assert_eq!(
                l["correct"].as_bool().unwrap(),
                answer_is_gold(&artist_math::Question {
                    completion: text,
                    answer: l["gold"].as_str().unwrap(),
                    ..Default::default()
                })
                .unwrap()
                .correct
            );
        }
        let n = per_step as f64;
        let sum = |f: &dyn Fn(&serde_json::Value) -> f64| step.iter().map(|l| f(l)).sum::<f64>();
        let calls = sum(&|l| num(l, "tool_calls"));
        calls_seen += calls;
        let close = |what: &str, a: f64, b: f64| assert!((a - b).abs() < 1e-9, "step {} {what}: {a} vs {b}", m.step);
        close("reward", sum(&|l| num(l, "reward")) / n, m.reward);
        close("accuracy", sum(&|l| l["correct"].as_bool().unwrap() as u8 as f64) / n, m.accuracy);
        close("response tokens", sum(&|l| num(l, "response_tokens")) / n, m.response_tokens);
        close("tool calls per rollout", calls / n, m.tool_calls_per_rollout);
        let answered: Vec<&&serde_json::Value> = step.iter().filter(|l| l["answered"] == true).collect();
        match m.steps_to_answer {
            Some(s) => {
                let turns = answered.iter().map(|l| num(l, "model_turns")).sum::<f64>();
                close("steps to the answer", turns / answered.len() as f64, s);
            }
            None => assert!(answered.is_empty()),
        }
        if calls > 0.0 {
            let calling = sum(&|l| if num(l, "tool_calls") > 0.0 { num(l, "sampled_tokens") } else { 0.0 });
            close("tokens per tool call", calling / calls, m.tokens_per_tool_call.unwrap());
            close("tool success", sum(&|l| num(l, "tool_successes")) / calls, m.tool_success);
        } else {
            assert_eq!(m.tokens_per_tool_call, None);
        }
    }
    let figures: Vec<_> = metrics.iter().map(|m| (m.tokens_per_tool_call, m.steps_to_answer)).collect();
    eprintln!("{calls_seen} calls in 2 steps; tokens per call and steps to the answer {figures:?}");
    assert!(calls_seen >= 6.0, "the taught model should call the calculator: {calls_seen} calls in 2 steps");
    assert!(metrics.iter().any(|m| m.steps_to_answer.is_some_and(|s| s >= 2.0)), "no answer after a call");

    // A run that died after logging step 3 but before its checkpoint: resuming from step 2
    // drops the line and logs step 3 once.
    let stale = serde_json::json!({"step": 3, "completion": "stale"});
    let text = std::fs::read_to_string(run.join(ROLLOUTS_FILE)).unwrap();
    std::fs::write(run.join(ROLLOUTS_FILE), format!("{text}{stale}\n")).unwrap();
    let mut t2 = common::math_trainer(config(3), &answer_is_gold);
    train(&run, &mut t2, &RunOptions { resume: true, ..opts }).unwrap();
    let lines = read(&run.join(ROLLOUTS_FILE)).unwrap();
    assert_eq!(lines.len(), 3 * per_step);
    assert!(lines.iter().all(|l| l["completion"] != "stale"));
    assert_eq!(lines.iter().filter(|l| l["step"].as_u64() == Some(3)).count(), per_step);
}
