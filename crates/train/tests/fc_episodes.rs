//! BFCL episodes end to end. A stand-in model that writes the ground truth's calls in
//! `<tool>` blocks, turn by turn, plays entries through the episode runner: every call
//! runs on the entry's live environments, the results come back as masked `<output>`,
//! user turns are appended in ChatML, held-back functions appear at miss_func's
//! hand-over, and BFCL's checker passes the episode with full state and function rewards.
//! A bad call gives the model an error and the episode goes on. Then two GRPO steps of a
//! tiny Qwen2 on `configs/artist-fc.toml` write metrics and a checkpoint, and two ranks
//! training data-parallel end where one process does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use artist_bfcl::Call;
use artist_engine::Policy;
use artist_model::{Qwen2, SeqInput};
use artist_tokenizer::{ChatTemplate, Tokenizer};
use artist_train::fc::{BfclSettings, EpisodeSettings, FcData, FcTrainer, run_episodes, score_episode};
use artist_train::grpo::{GrpoRunConfig, train};
use artist_train::sft::RunOptions;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bfcl_dir() -> Option<PathBuf> {
    let dir = root().join("../shared/bfcl");
    if dir.join("questions").is_dir() {
        return Some(dir);
    }
    assert!(std::env::var("ARTIST_REQUIRE_SHARED").is_err(), "ARTIST_REQUIRE_SHARED=1 but no {}", dir.display());
    eprintln!("skipped: no BFCL data at {}", dir.display());
    None
}

fn tiny() -> PathBuf {
    root().join("tests/fixtures/qwen2/tiny-gqa")
}

/// Writes, per turn of the conversation, a fixed script of tokens: the turn is read from
/// the number of `<|im_start|>` tokens the slot has seen (system, user, assistant, then
/// two per later turn). Forced tokens fed back count as one call, as the engine feeds them.
struct TurnScripted {
    vocab: usize,
    eos: u32,
    im_start: u32,
    turns: Vec<Vec<u32>>,
}

#[derive(Default)]
struct Slots(HashMap<usize, (usize, usize)>); // slot -> (turn, calls)

impl Policy for TurnScripted {
    type Cache = Slots;
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn new_cache(&self, _: usize, _: usize) -> artist_engine::Result<Slots> {
        Ok(Slots::default())
    }
    fn step(&self, inputs: &[SeqInput], cache: &mut Slots) -> artist_engine::Result<artist_engine::Logits> {
        Ok(artist_engine::Logits::Host(
            inputs
                .iter()
                .map(|s| {
                    let starts = s.tokens.iter().filter(|&&t| t == self.im_start).count();
                    let (turn, calls) = cache.0.entry(s.slot).or_insert(((starts.max(3) - 3) / 2, 0));
                    let next = self.turns.get(*turn).and_then(|t| t.get(*calls)).copied().unwrap_or(self.eos);
                    *calls += 1;
                    let mut logits = vec![-1e9f32; self.vocab];
                    logits[next as usize] = 0.0;
                    logits
                })
                .collect(),
        ))
    }
    fn fork(&self, cache: &mut Slots, from: usize, to: usize) -> artist_engine::Result<()> {
        let v = cache.0.get(&from).copied().unwrap_or_default();
        cache.0.insert(to, v);
        Ok(())
    }
    fn clear(&self, cache: &mut Slots, slot: usize) {
        cache.0.remove(&slot);
    }
}

fn settings(eos: u32) -> EpisodeSettings {
    EpisodeSettings {
        group_size: 1,
        sampling: artist_engine::SamplingParams { temperature: 0.0, ..Default::default() },
        max_turn_tokens: 4000,
        max_context: 200_000,
        max_steps_per_turn: 20,
        max_batch: 4,
        eos_ids: vec![eos],
        matmul_dtype: None,
        kv_cache_dtype: artist_tensor::DType::F32,
        first_episode: 0,
        share_first_turn: false,
    }
}

/// The model's side of each turn: plan, call the turn's expected functions, reply.
fn oracle_text(calls: &[Call]) -> String {
    if calls.is_empty() {
        return "<reasoning>Nothing to call.</reasoning>I cannot do that with these functions.<|im_end|>".into();
    }
    let list: Vec<String> = calls.iter().map(Call::to_python).collect();
    format!("<reasoning>Plan.</reasoning><tool>[{}]</tool>Done.<|im_end|>", list.join(", "))
}

type Played = (FcData, Vec<artist_train::fc::Episode>, Tokenizer);

fn play(file: &str, index: usize, turn_text: impl Fn(usize, &[Call]) -> String) -> Option<Played> {
    play_within(file, index, 200_000, turn_text)
}

fn play_within(
    file: &str,
    index: usize,
    max_context: usize,
    turn_text: impl Fn(usize, &[Call]) -> String,
) -> Option<Played> {
    let bfcl = bfcl_dir()?;
    let data = FcData::load(&BfclSettings {
        questions: vec![bfcl.join("questions").join(file)],
        skip: index,
        first: 1,
        ..Default::default()
    })
    .unwrap();
    let tok = Tokenizer::from_dir(tiny()).unwrap();
    let template = ChatTemplate::from_dir(tiny()).unwrap();
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    let turns: Vec<Vec<u32>> =
        data.truths[0].turns.iter().enumerate().map(|(t, c)| tok.encode(&turn_text(t, c)).unwrap()).collect();
    let policy = TurnScripted { vocab: 311, eos, im_start: tok.token_to_id("<|im_start|>").unwrap(), turns };
    let eps =
        run_episodes(&policy, &tok, &template, &data, &[0], &EpisodeSettings { max_context, ..settings(eos) }).unwrap();
    Some((data, eps, tok))
}

#[test]
fn the_ground_truth_played_by_a_model_passes() {
    let Some((data, eps, tok)) = play("BFCL_v4_multi_turn_base.json", 1, |_, c| oracle_text(c)) else { return };
    let ep = &eps[0];
    assert_eq!(ep.turns_played, 4);
    assert_eq!(ep.calls.len(), 4);
    for (steps, truth) in ep.calls.iter().zip(&data.truths[0].turns) {
        let made: Vec<&str> = steps.iter().flatten().map(|c| c.name.as_str()).collect();
        let want: Vec<&str> = truth.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(made, want);
    }
    let weights = artist_rl::FcRewardWeights::default();
    let s = score_episode(&tok, &data, ep, &weights, Default::default()).unwrap();
    assert!(s.check.valid, "{:?}", s.check.error);
    assert_eq!((s.check.state_fraction, s.check.function_fraction), (1.0, 1.0));
    assert!((s.rewards.total - 1.2).abs() < 1e-12, "{:?}", s.rewards);
    // What the model read: the results, masked; the later user turns, masked too.
    let text = tok.decode(&ep.ids, false).unwrap();
    assert!(text.contains("<output>\n{\"current_directory_content\": [\"workspace\"]}\n</output>"), "{text}");
    assert!(text.contains("<|im_start|>user\nGo to workspace directory"), "{text}");
    let model_text: Vec<u32> = ep.ids.iter().zip(&ep.mask).filter(|(_, m)| **m == 1).map(|(i, _)| *i).collect();
    let model_text = tok.decode(&model_text, false).unwrap();
    assert!(!model_text.contains("<output>") && !model_text.contains("Go to workspace"), "{model_text}");
    assert_eq!(ep.tool_errors, 0);
}

#[test]
fn bad_calls_are_explained_and_the_episode_goes_on() {
    let Some((data, eps, tok)) = play("BFCL_v4_multi_turn_base.json", 1, |t, c| {
        if t == 0 {
            "<tool>[ls(a='yes'), nosuch(x=1)]</tool><tool>cd(folder=</tool><tool>{not json</tool><tool>[ls(a=True)]</tool>Ok.<|im_end|>"
                .into()
        } else {
            oracle_text(c)
        }
    }) else {
        return;
    };
    let ep = &eps[0];
    let text = tok.decode(&ep.ids, false).unwrap();
    assert!(text.contains("argument 'a' must be a boolean"), "{text}");
    assert!(text.contains("Error: could not read the call"), "{text}");
    assert!(text.contains("unknown function") || text.contains("nosuch"), "{text}");
    // The bad blocks ran nothing; the good one ran; the later turns went on.
    assert_eq!(ep.calls[0].len(), 1);
    assert_eq!(ep.turns_played, 4);
    assert!(ep.tool_errors >= 2);
    let s = score_episode(&tok, &data, ep, &Default::default(), Default::default()).unwrap();
    assert!(s.check.valid, "{:?}", s.check.error);
}

#[test]
fn held_back_functions_appear_at_the_handover() {
    let Some((data, eps, tok)) = play("BFCL_v4_multi_turn_miss_func.json", 0, |_, c| oracle_text(c)) else { return };
    let entry = &data.entries[0];
    let (&k, names) = entry.missed_function.iter().next().unwrap();
    let text = tok.decode(&eps[0].ids, false).unwrap();
    let at = text.find(artist_train::fc::HANDOVER_MESSAGE).expect("the hand-over message");
    assert!(text[at..].contains(&format!("\"name\":\"{}\"", names[0])), "{}", &text[at..]);
    // Before the hand-over the function is not offered.
    let system = tok.decode(&eps[0].prompt_ids, false).unwrap();
    assert!(!system.contains(&format!("\"name\":\"{}\"", names[0])));
    let s = score_episode(&tok, &data, &eps[0], &Default::default(), Default::default()).unwrap();
    assert!(s.check.valid, "{} (hand-over at turn {k}): {:?}", entry.id, s.check.error);
}

/// `configs/artist-fc.toml` on a tiny Qwen2 with shortened function docs (its context is
/// small), on the first `entries` base entries, with `sets` on top.
fn fc_trainer(bfcl: &Path, tmp: &Path, entries: usize, sets: &[&str]) -> FcTrainer {
    // Four functions per class, without descriptions, keep the prompt short for the tiny
    // model (calls to the others are refused as unknown, which is fine here).
    // (Written once per folder: data-parallel ranks share the first trainer's.)
    let docs = tmp.join("func_doc");
    let written = docs.is_dir();
    std::fs::create_dir_all(&docs).unwrap();
    for f in std::fs::read_dir(bfcl.join("func_doc")).unwrap().filter(|_| !written) {
        let f = f.unwrap().path();
        let lines: Vec<String> = std::fs::read_to_string(&f)
            .unwrap()
            .lines()
            .take(4)
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["description"] = "".into();
                v["response"] = serde_json::json!({});
                strip(&mut v["parameters"]);
                v.to_string()
            })
            .collect();
        std::fs::write(docs.join(f.file_name().unwrap()), lines.join("\n")).unwrap();
    }
    let text = std::fs::read_to_string(root().join("configs/artist-fc.toml")).unwrap();
    let c = GrpoRunConfig::from_toml(&text, Path::new("configs/artist-fc.toml")).unwrap();
    let q = bfcl.join("questions/BFCL_v4_multi_turn_base.json");
    let mut all = vec![
        format!("model={:?}", tiny().to_str().unwrap()),
        format!("bfcl.questions=[{:?}]", q.to_str().unwrap()),
        format!("bfcl.func_doc={:?}", docs.to_str().unwrap()),
        format!("bfcl.first={entries}"),
        "bfcl.max_steps_per_turn=2".into(),
        "rollout.group_size=2".into(),
        "rollout.max_turn_tokens=6".into(),
        "rollout.max_context=6000".into(),
        "micro_batch_rollouts=1".into(),
        "optim.lr=1e-3".into(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    let c = c.with_overrides(&all).unwrap();
    let data = FcData::load(&c.bfcl).unwrap();
    assert_eq!(data.entries.len(), entries);
    tiny_trainer(c, data)
}

/// The tiny Qwen2 as a trainer of `data` under `config`.
fn tiny_trainer(config: GrpoRunConfig, data: FcData) -> FcTrainer {
    FcTrainer {
        model: Qwen2::load(&tiny()).unwrap(),
        reference: None,
        tokenizer: Tokenizer::from_dir(tiny()).unwrap(),
        template: ChatTemplate::from_dir(tiny()).unwrap(),
        data,
        held_out: None,
        config,
    }
}

/// The `--set` that makes another tiny model (tiny-bf16, the same vocabulary) the KL
/// reference: the tiny model's episodes all score alike, so the KL term is what gives a
/// step a gradient.
fn kl_reference() -> String {
    format!("reference_model={:?}", root().join("tests/fixtures/qwen2/tiny-bf16").to_str().unwrap())
}

fn weights(m: &Qwen2) -> Vec<Vec<f32>> {
    m.params().iter().map(|p| p.value().to_f32_vec().unwrap()).collect()
}

fn quiet() -> RunOptions {
    RunOptions { resume: false, progress: false, stop_after: None, device: Default::default() }
}

/// Two GRPO steps on BFCL episodes write metrics and checkpoints.
#[test]
fn two_grpo_steps_on_episodes() {
    let Some(bfcl) = bfcl_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut t = fc_trainer(&bfcl, tmp.path(), 2, &["steps=2", "prompts_per_step=1", "save_every=1"]);
    let run = tmp.path().join("run");
    let m = train(&run, &mut t, &quiet()).unwrap();
    assert_eq!(m.len(), 2);
    for s in &m {
        assert!(s.reward.is_finite() && s.response_tokens > 0.0 && s.reward_state.is_some());
    }
    let lines = artist_train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert!(lines[1].get("reward_state").is_some() && lines[1].get("reward_answer").is_none());
    assert!(artist_train::checkpoint::latest(&run).unwrap().unwrap().ends_with("step-00000002"));
    // rollouts.jsonl: the first `log_rollouts` (4) episodes of each step, whose rewards are
    // the step's when they are all of them.
    let g = t.config.rollout.group_size;
    let logged = artist_train::metrics::read(&run.join(artist_train::metrics::ROLLOUTS_FILE)).unwrap();
    assert_eq!(logged.len(), 2 * g.min(4));
    for s in &m {
        let step: Vec<_> = logged.iter().filter(|l| l["step"].as_u64() == Some(s.step)).collect();
        assert_eq!(step.len(), g.min(4));
        for (k, l) in step.iter().enumerate() {
            assert_eq!((l["prompt"].as_u64(), l["sample"].as_u64()), (Some(0), Some(k as u64)), "{l}");
            assert_eq!(l["id"], step[0]["id"], "one entry's group");
            assert!(t.data.entries.iter().any(|e| l["id"] == e.id.as_str()), "{l}");
            assert!(l["completion"].as_str().unwrap().contains("<|im_end|>"), "ChatML turns: {l}");
            assert!(l["turns_played"].as_u64().unwrap() >= 1 && l["valid"].is_boolean());
        }
        if g <= 4 {
            let sum = |key: &str| step.iter().map(|l| l[key].as_f64().unwrap()).sum::<f64>();
            let mean = sum("reward") / g as f64;
            assert!((mean - s.reward).abs() < 1e-9, "step {}: logged reward {mean} vs {}", s.step, s.reward);
            let steps = sum("model_turns") / sum("turns_played");
            assert_eq!(s.steps_per_turn, Some(steps), "step {}", s.step);
        }
    }
}

/// Data-parallel GRPO on episodes: 2 in-process ranks, each playing one of a step's two
/// entries (its whole group), end 2 steps with the weights (within float reassociation;
/// see grpo_data_parallel.rs) and the per-step metrics of one process on the same batches.
/// The tiny model's episodes all score alike, so the advantages come from the KL to another
/// tiny model (tiny-bf16, same vocabulary) taken off the rewards (`kl_reward`), and the
/// loss's KL term to it moves the weights too, through the same sharded loss and gradient
/// sums.
#[test]
fn two_ranks_play_and_train_as_one_process() {
    let Some(bfcl) = bfcl_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let reference = kl_reference();
    // The KL in the reward too, so its per-rank sums are checked against one process.
    let sets = ["steps=2", "prompts_per_step=2", "grpo.beta=0.5", "kl_reward.coef=0.01", reference.as_str()];
    two_ranks_train_as_one_process(tmp.path(), || fc_trainer(&bfcl, tmp.path(), 4, &sets));
}

/// Trains `make()` for its steps in one process and as two in-process ranks, and checks
/// that both end with the same weights (within float reassociation) and metrics.
fn two_ranks_train_as_one_process(tmp: &Path, make: impl Fn() -> FcTrainer + Sync) {
    let max_diff = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, |m, x| if x.is_nan() || x > m { x } else { m })
    };
    let mut single = make();
    let start = weights(&single.model);
    let m1 = train(&tmp.join("single"), &mut single, &quiet()).unwrap();
    let w1 = weights(&single.model);
    let moved = max_diff(&w1, &start);
    assert!(moved > 1e-4, "training moved the weights by only {moved:e}");
    let dir = tmp.join("ranks");
    let runs: Vec<(Vec<artist_train::grpo::StepMetrics>, Vec<Vec<f32>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = artist_dist::InProcess::group_with_timeout(2, std::time::Duration::from_secs(300))
            .into_iter()
            .map(|mut comm| {
                let (dir, make) = (&dir, &make);
                s.spawn(move || {
                    let mut t = make();
                    let m = artist_train::grpo::train_data_parallel(dir, &mut t, &quiet(), &mut comm).unwrap();
                    (m, weights(&t.model))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(runs[0].1, runs[1].1, "the ranks' weights diverged");
    let diff = max_diff(&runs[0].1, &w1);
    eprintln!("2 ranks vs one process on episodes: max |weight difference| {diff:e} (moved {moved:e})");
    assert!(diff <= 1e-4, "max weight difference {diff:e}");
    for (m, x) in m1.iter().zip(&runs[0].0) {
        assert_eq!(x.step, m.step);
        assert!((x.reward - m.reward).abs() < 1e-5, "step {}: reward {} vs {}", m.step, x.reward, m.reward);
        assert!((x.response_tokens - m.response_tokens).abs() < 1e-3);
        assert!((x.tool_calls_per_rollout - m.tool_calls_per_rollout).abs() < 1e-6);
        assert!((x.loss - m.loss).abs() <= 1e-6 * m.loss.abs().max(1.0), "loss {} vs {}", x.loss, m.loss);
        assert!(x.kl > 0.0 && (x.kl - m.kl).abs() <= 1e-6 * m.kl.abs().max(1.0), "kl {} vs {}", x.kl, m.kl);
        let (a, b) = (x.kl_reward.unwrap(), m.kl_reward.unwrap());
        assert!(b.abs() > 1e-3 && (a - b).abs() <= 1e-5 * b.abs(), "kl_reward {a} vs {b}");
    }
    assert_eq!(artist_train::metrics::read(&dir.join("metrics.jsonl")).unwrap().len(), 2);
}

/// `[eval.bfcl]`: two held-out entries (the two after the training's two) played greedily
/// before the first step and after the last; the step-0 figures are those of playing and
/// scoring the entries directly, and 2 ranks (one entry each) report one process's figures.
#[test]
fn held_out_entries_are_evaluated() {
    let Some(bfcl) = bfcl_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let q = bfcl.join("questions/BFCL_v4_multi_turn_base.json");
    let docs = tmp.path().join("func_doc");
    let eval = [
        format!("eval.bfcl.questions=[{:?}]", q.to_str().unwrap()),
        format!("eval.bfcl.func_doc={:?}", docs.to_str().unwrap()),
        "eval.bfcl.skip=2".into(),
        "eval.bfcl.first=2".into(),
        "eval.bfcl.max_steps_per_turn=2".into(),
        "steps=1".into(),
        "prompts_per_step=1".into(),
    ];
    let sets: Vec<&str> = eval.iter().map(String::as_str).collect();
    let trainer = || {
        let mut t = fc_trainer(&bfcl, tmp.path(), 2, &sets);
        t.held_out = Some(FcData::load(t.config.eval.bfcl.as_ref().unwrap()).unwrap());
        t
    };
    let mut t = trainer();
    let held_out = t.held_out.as_ref().unwrap();
    assert_eq!(held_out.entries.len(), 2);
    assert!(
        held_out.entries.iter().all(|e| !t.data.entries.iter().any(|d| d.id == e.id)),
        "held-out entries trained on"
    );
    // Played and scored directly: BFCL's verdict, the reward, whether a call was made.
    let s = EpisodeSettings {
        max_steps_per_turn: 2,
        ..t.episode_settings(1, 0.0, t.config.seed.wrapping_add(0x5EED_0000_E7A1))
    };
    let eps = run_episodes(&t.model, &t.tokenizer, &t.template, held_out, &[0, 1], &s).unwrap();
    let scored: Vec<_> = eps
        .iter()
        .map(|ep| score_episode(&t.tokenizer, held_out, ep, &t.config.fc_rewards, Default::default()).unwrap())
        .collect();
    let want_reward = scored.iter().map(|x| x.rewards.total).sum::<f64>() / 2.0;
    let want_accuracy = scored.iter().filter(|x| x.check.valid).count() as f64 / 2.0;
    let ids: Vec<String> = eps.iter().map(|ep| held_out.entries[ep.entry].id.clone()).collect();
    let run = tmp.path().join("run");
    let m = train(&run, &mut t, &quiet()).unwrap();
    let lines = artist_train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["step"].as_u64(), Some(0));
    assert_eq!(lines[0]["eval_accuracy"].as_f64(), Some(want_accuracy));
    assert!((lines[0]["eval_reward"].as_f64().unwrap() - want_reward).abs() < 1e-12, "{:?} vs {want_reward}", lines[0]);
    // eval_rollouts.jsonl: both held-out episodes of the step-0 evaluation, as played above.
    let logged = artist_train::metrics::read(&run.join("eval_rollouts.jsonl")).unwrap();
    let at_start: Vec<_> = logged.iter().filter(|l| l["step"].as_u64() == Some(0)).collect();
    assert_eq!(at_start.len(), 2);
    for ((l, id), (ep, s)) in at_start.iter().zip(&ids).zip(eps.iter().zip(&scored)) {
        assert_eq!(l["id"], id.as_str());
        assert_eq!((l["valid"].as_bool(), l["reward"].as_f64()), (Some(s.check.valid), Some(s.rewards.total)));
        assert_eq!(l["response_tokens"].as_u64(), Some(ep.ids.len() as u64));
    }
    assert!(m[0].eval_accuracy.is_some() && m[0].eval_tool_use.is_some());

    let dir = tmp.path().join("ranks");
    let runs: Vec<Vec<artist_train::grpo::StepMetrics>> = std::thread::scope(|s| {
        let handles: Vec<_> = artist_dist::InProcess::group_with_timeout(2, std::time::Duration::from_secs(300))
            .into_iter()
            .map(|mut comm| {
                let (dir, trainer) = (&dir, &trainer);
                s.spawn(move || {
                    artist_train::grpo::train_data_parallel(dir, &mut trainer(), &quiet(), &mut comm).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ranks = artist_train::metrics::read(&dir.join("metrics.jsonl")).unwrap();
    for key in ["eval_accuracy", "eval_reward", "eval_tool_use"] {
        let (a, b) = (ranks[0][key].as_f64().unwrap(), lines[0][key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-6, "{key}: 2 ranks {a}, one process {b}");
    }
    for r in &runs {
        assert!((r[0].eval_reward.unwrap() - m[0].eval_reward.unwrap()).abs() < 1e-6);
    }

    // The held-out entries of a math run, or math problems in a BFCL run, are refused.
    let e = t.config.clone().with_overrides(&["eval.data=\"x.jsonl\"".into()]).unwrap();
    assert!(e.validate(Default::default()).unwrap_err().to_string().contains("[eval.bfcl]"));
}

/// `overlong.mask_truncated` on episodes: with the context cut to half of what the step's
/// shortest episode needs, every episode is truncated, and masking them leaves the weights
/// where they were, while the same step unmasked moves them (a KL term to another tiny model
/// gives the gradient; the tiny model's episodes all score alike).
#[test]
fn truncated_episodes_can_be_left_out_of_the_loss() {
    let Some(bfcl) = bfcl_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let reference = kl_reference();
    let base = ["steps=1", "prompts_per_step=1", "grpo.beta=0.5", reference.as_str()];
    // The episodes of step 0, played as the step plays them.
    let t = fc_trainer(&bfcl, tmp.path(), 1, &base);
    let c = &t.config;
    let eps = run_episodes(
        &t.model,
        &t.tokenizer,
        &t.template,
        &t.data,
        &[0],
        &t.episode_settings(c.rollout.group_size, c.rollout.temperature, c.seed),
    )
    .unwrap();
    assert!(eps.iter().all(|e| !e.truncated), "the full context should hold every episode");
    let cut = eps.iter().map(|e| e.prompt_ids.len() + e.ids.len() / 2).min().unwrap();
    let context = format!("rollout.max_context={cut}");
    let run = |name: &str, mask: bool| {
        let mask = format!("overlong.mask_truncated={mask}");
        let mut sets = base.to_vec();
        sets.extend([context.as_str(), mask.as_str()]);
        let mut t = fc_trainer(&bfcl, tmp.path(), 1, &sets);
        let before = weights(&t.model);
        let m = train(&tmp.path().join(name), &mut t, &quiet()).unwrap().remove(0);
        (m, before != weights(&t.model))
    };
    let (masked, moved) = run("masked", true);
    assert_eq!(masked.truncated, eps.len(), "every episode should be cut at {cut} tokens");
    assert!(!moved && masked.loss == 0.0, "truncated episodes trained: loss {}", masked.loss);
    let (unmasked, moved) = run("unmasked", false);
    assert!(moved && unmasked.kl > 0.0 && unmasked.truncated == eps.len());
}

fn strip(v: &mut serde_json::Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("description");
        for (_, x) in o.iter_mut() {
            strip(x);
        }
    }
}

/// Calling a held-back function before the hand-over is refused with a message; the
/// episode goes on, and after the hand-over the same call runs.
#[test]
fn held_back_functions_are_refused_until_released() {
    let Some(bfcl) = bfcl_dir() else { return };
    let q = artist_bfcl::checker::load_questions(&bfcl.join("questions/BFCL_v4_multi_turn_miss_func.json")).unwrap();
    let (k, name) = {
        let (k, names) = q[0].missed_function.iter().next().unwrap();
        (*k, names[0].clone())
    };
    let early =
        format!("<reasoning>try</reasoning><tool>[{{\"name\": \"{name}\", \"arguments\": {{}}}}]</tool>Hm.<|im_end|>");
    let Some((_, eps, tok)) =
        play("BFCL_v4_multi_turn_miss_func.json", 0, |t, c| if t == 0 { early.clone() } else { oracle_text(c) })
    else {
        return;
    };
    let ep = &eps[0];
    let text = tok.decode(&ep.ids, false).unwrap();
    let first_output = &text[text.find("<output>").unwrap()..text.find("</output>").unwrap()];
    assert!(first_output.contains("Error:") && first_output.contains(&name), "{first_output}");
    assert!(ep.calls[0].is_empty(), "a refused call was recorded as run");
    assert_eq!(ep.turns_played, q[0].turns.len());
    assert!(k > 0 && ep.calls[k].iter().flatten().count() > 0, "the calls after the hand-over ran");
}

/// A conversation that outgrows the context ends there, marked truncated, without an
/// error; one whose first prompt does not fit is not played at all.
#[test]
fn the_context_limit_ends_an_episode() {
    let Some((data, eps, tok)) = play("BFCL_v4_multi_turn_base.json", 1, |_, c| oracle_text(c)) else { return };
    let full = eps[0].prompt_ids.len() + eps[0].ids.len();
    let half = eps[0].prompt_ids.len() + eps[0].ids.len() / 2;
    let (_, cut, _) = play_within("BFCL_v4_multi_turn_base.json", 1, half, |_, c| oracle_text(c)).unwrap();
    let c = &cut[0];
    assert!(c.truncated && (1..4).contains(&c.turns_played), "{}", c.turns_played);
    assert!(c.prompt_ids.len() + c.ids.len() <= half && half < full);
    let (_, none, _) = play_within("BFCL_v4_multi_turn_base.json", 1, 100, |_, c| oracle_text(c)).unwrap();
    assert!(none[0].truncated && none[0].turns_played == 0 && none[0].ids.is_empty());
    let s = score_episode(&tok, &data, &none[0], &Default::default(), Default::default()).unwrap();
    assert!(!s.check.valid);
}

/// Dynamic sampling on episodes: the tiny model's episodes all score alike, so every
/// group is flat; a step plays its three batches (every entry once), trains on nothing and
/// moves no weight, KL term or not.
#[test]
fn dynamic_sampling_plays_every_round_when_all_groups_are_flat() {
    let Some(bfcl) = bfcl_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let reference = kl_reference();
    let sets = [
        "steps=1",
        "prompts_per_step=1",
        "filter_flat_groups=true",
        "max_sampling_rounds=3",
        "grpo.beta=0.5",
        &reference,
    ];
    let mut t = fc_trainer(&bfcl, tmp.path(), 3, &sets);
    let before = weights(&t.model);
    let m = train(&tmp.path().join("run"), &mut t, &quiet()).unwrap().remove(0);
    assert_eq!((m.sampling_rounds, m.trained_groups, m.flat_groups), (Some(3), Some(0), 3));
    assert!(m.loss == 0.0 && before == weights(&t.model), "flat groups trained: loss {}", m.loss);
    let state = artist_train::checkpoint::read_state(&tmp.path().join("run/checkpoints/step-00000001")).unwrap();
    assert_eq!(state.batches_drawn, Some(3));
}

// ---- Episodes on an MCP server (`bfcl.environment = "mcp"`) -----------------------------
//
// tests/fixtures/mcp/episodes holds three entries in BFCL's format for the fixture server
// (tests/fixtures/mcp/server.py): its `setup` tool takes an entry's initial_config, its
// `state` tool gives {"count", "last"}; `add` sets "last", `counter` adds one to "count".

fn python3() -> bool {
    let ok = std::process::Command::new("python3").arg("-c").arg("pass").status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: python3 is not installed");
    }
    ok
}

fn mcp_config() -> artist_tools::McpConfig {
    let server = root().join("tests/fixtures/mcp/server.py");
    artist_tools::McpConfig {
        command: vec!["python3".into(), server.to_str().unwrap().into()],
        timeout_s: 20.0,
        sessions: artist_tools::McpSessions::Rollout,
        state_tool: Some("state".into()),
        setup_tool: Some("setup".into()),
        ..Default::default()
    }
}

fn mcp_settings() -> BfclSettings {
    let dir = root().join("tests/fixtures/mcp/episodes");
    BfclSettings {
        questions: vec![dir.join("questions.jsonl")],
        answers: vec![dir.join("answers.jsonl")],
        environment: artist_train::fc::FcEnvironment::Mcp,
        ..Default::default()
    }
}

/// Plays every fixture entry `g` times on the fixture server, each turn written by
/// `turn_text(entry, turn, expected calls)`.
fn play_mcp(
    g: usize,
    turn_text: impl Fn(usize, usize, &[Call]) -> String,
) -> (FcData, Vec<artist_train::fc::Episode>, Tokenizer, std::sync::Arc<artist_tools::McpTool>) {
    play_mcp_on(mcp_config(), g, turn_text)
}

/// [`play_mcp`] on the server `config` names.
fn play_mcp_on(
    config: artist_tools::McpConfig,
    g: usize,
    turn_text: impl Fn(usize, usize, &[Call]) -> String,
) -> (FcData, Vec<artist_train::fc::Episode>, Tokenizer, std::sync::Arc<artist_tools::McpTool>) {
    let server = std::sync::Arc::new(artist_tools::McpTool::spawn(config).unwrap());
    let data = FcData::load_mcp(&mcp_settings(), server.clone()).unwrap();
    let tok = Tokenizer::from_dir(tiny()).unwrap();
    let template = ChatTemplate::from_dir(tiny()).unwrap();
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    let mut eps = Vec::new();
    // One entry at a time: the scripted model reads its turns from the entry's script.
    for i in 0..data.entries.len() {
        let turns: Vec<Vec<u32>> =
            (data.truths[i].turns.iter().enumerate()).map(|(t, c)| tok.encode(&turn_text(i, t, c)).unwrap()).collect();
        let policy = TurnScripted { vocab: 311, eos, im_start: tok.token_to_id("<|im_start|>").unwrap(), turns };
        let s = EpisodeSettings { group_size: g, ..settings(eos) };
        eps.extend(run_episodes(&policy, &tok, &template, &data, &[i], &s).unwrap());
    }
    (data, eps, tok, server)
}

fn state(count: i64, last: Option<i64>) -> String {
    // The fixture server's `json.dumps(state, sort_keys=True)`.
    format!("{{\"count\": {count}, \"last\": {}}}", last.map_or("null".to_string(), |l| l.to_string()))
}

/// The ground truth written by a model, on a server of each episode's own: every call runs
/// there (set up from the entry's initial_config), the results come back as `<output>`,
/// the state after each turn is recorded, and the episode passes with full rewards. The
/// grader's tools are not shown; a held-back function appears at the hand-over.
#[test]
fn the_ground_truth_played_on_an_mcp_server_passes() {
    if !python3() {
        return;
    }
    let (data, eps, tok, server) = play_mcp(2, |_, _, c| oracle_text(c));
    assert_eq!(eps.len(), 6);
    // Each episode's own server, and one for each entry's ground truth once scored.
    assert_eq!(server.sessions_started(), 6);
    let weights = artist_rl::FcRewardWeights::default();
    for ep in &eps {
        let id = &data.entries[ep.entry].id;
        let s = score_episode(&tok, &data, ep, &weights, Default::default()).unwrap();
        assert!(s.check.valid, "{id}: {:?}", s.check);
        assert_eq!((s.check.state_fraction, s.check.function_fraction), (1.0, 1.0), "{id}");
        assert!((s.rewards.total - 1.2).abs() < 1e-12, "{id}: {:?}", s.rewards);
        assert_eq!((ep.turns_played, ep.tool_errors), (2, 0), "{id}");
    }
    assert_eq!(server.sessions_started(), 6 + 3, "the ground truth is played once per entry");
    // What the servers were in, by hand: counter_0 starts at count 5 (its setup), adds 2
    // and 3, then counts; counter_1 starts at count 0 and last 1.
    let (a, b) = (&eps[0], &eps[2]);
    assert_eq!(a.initial_state.as_deref(), Some(state(5, None).as_str()));
    let states: Vec<&str> = a.records.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(states, [state(5, Some(5)), state(6, Some(5))]);
    assert_eq!(a.records[1].results, ["6"]);
    assert_eq!(b.initial_state.as_deref(), Some(state(0, Some(1)).as_str()));
    assert_eq!(b.records[0].results, ["hi"]);
    assert_eq!(b.records[1].results, ["2", "1"]);
    assert_eq!(data.truth_record(1).unwrap().turns, b.records);
    let text = tok.decode(&a.ids, false).unwrap();
    assert!(text.contains("<output>\n5\n</output>") && text.contains("<output>\n6\n</output>"), "{text}");
    let system = tok.decode(&a.prompt_ids, false).unwrap();
    assert!(system.contains("\"name\":\"add\"") && system.contains("\"name\":\"counter\""), "{system}");
    assert!(!system.contains("\"name\":\"state\"") && !system.contains("\"name\":\"setup\""), "{system}");
    // counter_miss_0 holds `counter` back until its hand-over turn.
    let miss = &eps[4];
    let system = tok.decode(&miss.prompt_ids, false).unwrap();
    assert!(!system.contains("\"name\":\"counter\""), "{system}");
    let text = tok.decode(&miss.ids, false).unwrap();
    let at = text.find(artist_train::fc::HANDOVER_MESSAGE).expect("the hand-over message");
    assert!(text[at..].contains("\"name\":\"counter\""), "{}", &text[at..]);
    assert_eq!(miss.records[1].state, state(3, Some(8)));
}

/// The same episodes on one server reached over HTTP (the fixture server with `http`): each
/// episode plays in a session of its own, set up, called and read as over stdio, and every
/// one passes; the states are the same as on a process of the episode's own.
#[test]
fn episodes_on_an_mcp_server_over_http_pass() {
    if !python3() {
        return;
    }
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .arg(root().join("tests/fixtures/mcp/server.py"))
        .arg("http")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut url).unwrap();
    let config = artist_tools::McpConfig { command: Vec::new(), url: Some(url.trim().into()), ..mcp_config() };
    let (data, eps, tok, server) = play_mcp_on(config, 2, |_, _, c| oracle_text(c));
    let (_, on_processes, _, _) = play_mcp(2, |_, _, c| oracle_text(c));
    for (ep, twin) in eps.iter().zip(&on_processes) {
        let id = &data.entries[ep.entry].id;
        let s = score_episode(&tok, &data, ep, &Default::default(), Default::default()).unwrap();
        assert!(s.check.valid, "{id}: {:?}", s.check);
        assert_eq!(ep.records, twin.records, "{id}");
        assert_eq!(ep.initial_state, twin.initial_state, "{id}");
    }
    assert_eq!(server.sessions_started(), 6 + 3, "a session per episode and per entry's ground truth");
    let _ = child.kill();
    let _ = child.wait();
}

/// A wrong call costs what BFCL's checker says it should, worked out by hand; calls to the
/// grader's tools, to unknown functions or with arguments of the wrong type are refused
/// with a message and never reach the server.
#[test]
fn wrong_calls_on_an_mcp_server_lose_their_rewards() {
    if !python3() {
        return;
    }
    let (data, eps, tok, _server) = play_mcp(1, |i, t, c| match (i, t) {
        (0, 0) => "<reasoning>r</reasoning><tool>[state()]</tool><tool>[setup(count=100)]</tool>\
                   <tool>[add(a='x', b=1)]</tool><tool>[nosuch()]</tool><tool>[add(a=2, b=4)]</tool>Ok.<|im_end|>"
            .into(),
        _ => oracle_text(c),
    });
    let ep = &eps[0];
    let text = tok.decode(&ep.ids, false).unwrap();
    assert_eq!(ep.tool_errors, 4, "{text}");
    assert!(text.contains("argument 'a' must be a number"), "{text}");
    assert_eq!(ep.calls[0].len(), 1, "only add(a=2, b=4) ran");
    // Turn 0 left last = 6 (the ground truth: 5); turn 1 counted as it should, but last
    // still differs. States right: 0 of 2 turns. Calls matched: counter() of add and
    // counter, 1 of 2. Turn 0's expected result "5" is not among the model's ("6").
    assert_eq!(ep.records[0].state, state(5, Some(6)));
    assert_eq!(ep.records[1].state, state(6, Some(6)));
    let s = score_episode(&tok, &data, ep, &Default::default(), Default::default()).unwrap();
    assert!(!s.check.valid);
    assert_eq!(s.check.error_type.as_deref(), Some("multi_turn:instance_state_mismatch"));
    assert_eq!(s.check.turns[0].state_differences, ["last"]);
    assert_eq!(s.check.turns[0].missing_results, ["5"]);
    assert_eq!((s.check.state_fraction, s.check.function_fraction), (0.0, 0.5));
    // 0.5 x 0 + 0.5 x 0.5 + the relaxed format's 0.1 (complete blocks, capped); no strict
    // format reward, as the first turn's tool blocks follow one another without a
    // `<reasoning>` before each.
    assert_eq!((s.rewards.relaxed_format, s.rewards.strict_format), (0.1, 0.0));
    assert!((s.rewards.total - 0.35).abs() < 1e-12, "{:?}", s.rewards);
    // The other entries, played right, still pass.
    for ep in &eps[1..] {
        assert!(score_episode(&tok, &data, ep, &Default::default(), Default::default()).unwrap().check.valid);
    }
}

/// What the fixture server needs to serve episodes.
const EPISODE_SERVERS: [&str; 3] = ["mcp.sessions=\"rollout\"", "mcp.state_tool=\"state\"", "mcp.setup_tool=\"setup\""];

/// configs/artist-fc.toml for a tiny Qwen2 on tests/fixtures/mcp/episodes/`{name}`'s
/// questions and answers (`questions` -> questions.jsonl and answers.jsonl, `talk` ->
/// talk_questions.jsonl and talk_answers.jsonl) on the fixture server, with `extra` on top.
fn mcp_fc_config(name: &str, extra: &[&str]) -> GrpoRunConfig {
    let dir = root().join("tests/fixtures/mcp/episodes");
    let (q, a) = match name {
        "questions" => ("questions.jsonl".to_string(), "answers.jsonl".to_string()),
        other => (format!("{other}_questions.jsonl"), format!("{other}_answers.jsonl")),
    };
    let text = std::fs::read_to_string(root().join("configs/artist-fc.toml")).unwrap();
    let base = GrpoRunConfig::from_toml(&text, Path::new("configs/artist-fc.toml")).unwrap();
    let server = root().join("tests/fixtures/mcp/server.py");
    let mut all = vec![
        format!("model={:?}", tiny().to_str().unwrap()),
        format!("bfcl.questions=[{:?}]", dir.join(q).to_str().unwrap()),
        format!("bfcl.answers=[{:?}]", dir.join(a).to_str().unwrap()),
        "bfcl.environment=\"mcp\"".into(),
        format!("mcp.command=[\"python3\", {:?}]", server.to_str().unwrap()),
        "mcp.timeout_s=20".into(),
        "bfcl.max_steps_per_turn=2".into(),
        "rollout.group_size=2".into(),
        "rollout.max_turn_tokens=6".into(),
        "rollout.max_context=3000".into(),
        "prompts_per_step=1".into(),
    ];
    all.extend(extra.iter().map(|s| s.to_string()));
    base.with_overrides(&all).unwrap()
}

/// A tiny trainer on `config`, its data on a fresh fixture server (and user program).
fn mcp_trainer(config: GrpoRunConfig) -> FcTrainer {
    let server = std::sync::Arc::new(artist_tools::McpTool::spawn(config.mcp.clone()).unwrap());
    let mut data = FcData::load_mcp(&config.bfcl, server).unwrap();
    data.users = artist_train::fc::Users::spawn(&config.bfcl).unwrap().map(std::sync::Arc::new);
    tiny_trainer(config, data)
}

/// Data-parallel GRPO on MCP episodes: two ranks, each with its own servers and ground-truth
/// replays, end where one process does (the KL to another tiny model gives the steps a
/// gradient, as in `two_ranks_play_and_train_as_one_process`).
#[test]
fn two_ranks_on_an_mcp_environment_train_as_one_process() {
    if !python3() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reference = kl_reference();
    let mut sets = vec![
        "steps=2",
        "prompts_per_step=2",
        "optim.lr=1e-3",
        "grpo.beta=0.5",
        "kl_reward.coef=0.01",
        reference.as_str(),
    ];
    sets.extend(EPISODE_SERVERS);
    two_ranks_train_as_one_process(tmp.path(), || mcp_trainer(mcp_fc_config("questions", &sets)));
}

/// GRPO on MCP episodes through `train`: a tiny Qwen2 plays two steps, and the metrics
/// carry the state reward. A config that leaves out what the environment needs is refused
/// by name; a setup tool that fails names the entry.
#[test]
fn grpo_on_an_mcp_environment() {
    if !python3() {
        return;
    }
    let sets = |extra: &[&str]| mcp_fc_config("questions", &[&["steps=2"], extra].concat());
    let text = std::fs::read_to_string(root().join("configs/artist-fc.toml")).unwrap();
    let dev = artist_tensor::Device::Cpu;
    let e = sets(&["mcp.state_tool=\"state\""]).validate(dev).unwrap_err().to_string();
    assert!(e.contains("mcp.sessions = \"rollout\""), "{e}");
    let e = sets(&["mcp.sessions=\"rollout\""]).validate(dev).unwrap_err().to_string();
    assert!(e.contains("mcp.state_tool"), "{e}");
    let e = sets(&["task=\"math\"", "mcp.setup_tool=\"setup\""]).validate(dev).unwrap_err().to_string();
    assert!(e.contains("mcp.setup_tool"), "{e}");
    let c = sets(&EPISODE_SERVERS);
    c.validate(dev).unwrap();
    // docs/TRAINING.md's config block, laid over the preset, is one too.
    let doc = std::fs::read_to_string(root().join("docs/TRAINING.md")).unwrap();
    let start = doc.find("### Multi-turn environments of your own").expect("the section");
    let section = &doc[start..start + doc[start..].find("\n## ").unwrap()];
    let block = section.split("```toml\n").nth(1).map(|b| &b[..b.find("```").unwrap()]).expect("a TOML block");
    let mut table: toml::Table = toml::from_str(&text).unwrap();
    for (k, v) in toml::from_str::<toml::Table>(block).unwrap() {
        match (table.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => a.extend(b),
            (_, v) => {
                table.insert(k, v);
            }
        }
    }
    let documented = GrpoRunConfig::from_toml(&toml::to_string(&table).unwrap(), Path::new("doc.toml")).unwrap();
    documented.validate(dev).unwrap();
    assert_eq!(documented.bfcl.environment, artist_train::fc::FcEnvironment::Mcp);
    assert_eq!(documented.mcp.setup_tool.as_deref(), Some("load_scenario"));
    let server = std::sync::Arc::new(artist_tools::McpTool::spawn(c.mcp.clone()).unwrap());
    let data = FcData::load_mcp(&c.bfcl, server.clone()).unwrap();
    let mut t = tiny_trainer(c.clone(), data);
    // The same entries held out: evaluated before the first step and after the last.
    t.held_out = Some(FcData::load_mcp(&c.bfcl, server.clone()).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let m = train(&run, &mut t, &quiet()).unwrap();
    assert_eq!(m.len(), 2);
    for s in &m {
        assert!(s.reward.is_finite() && s.reward_state.is_some() && s.response_tokens > 0.0, "{s:?}");
    }
    let lines = artist_train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    let evals = lines.iter().filter(|l| l["eval_reward"].as_f64().is_some_and(f64::is_finite)).count();
    assert_eq!((evals, lines[0]["eval_accuracy"].as_f64()), (2, Some(0.0)), "{lines:?}");
    // Servers: two steps of one entry's two episodes and that entry's ground truth (once,
    // or twice when the steps drew different entries); two evaluations of the three
    // entries once each, and their ground truth once.
    let started = server.sessions_started();
    assert!((4 + 1 + 2 * 3 + 3..=4 + 2 + 2 * 3 + 3).contains(&started), "{started}");
    // A setup the server refuses: the episode cannot start, and the error names the entry.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        r#"{"id": "broken_0", "initial_config": {"fail": 1}, "question": [[{"role": "user", "content": "Hi."}]]}"#,
    )
    .unwrap();
    let answers = tmp.path().join("bad_answers.jsonl");
    std::fs::write(&answers, r#"{"id": "broken_0", "ground_truth": [[]]}"#).unwrap();
    let s = BfclSettings { questions: vec![bad], answers: vec![answers], ..mcp_settings() };
    let data = FcData::load_mcp(&s, server).unwrap();
    let tok = &t.tokenizer;
    let e = match run_episodes(&t.model, tok, &t.template, &data, &[0], &settings(0)) {
        Ok(_) => panic!("a failed setup should stop the episode"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("broken_0") && e.contains("cannot set that up"), "{e}");
    // A state that cannot be read stops the episodes too: it must not pass for a state.
    let failing = artist_tools::McpConfig { state_tool: Some("fail".into()), ..c.mcp.clone() };
    let failing = std::sync::Arc::new(artist_tools::McpTool::spawn(failing).unwrap());
    let data = FcData::load_mcp(&c.bfcl, failing).unwrap();
    let e = match run_episodes(&t.model, tok, &t.template, &data, &[0], &settings(0)) {
        Ok(_) => panic!("a state that cannot be read should stop the episode"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("counter_0") && e.contains("state tool \"fail\"") && e.contains("failed on purpose"), "{e}");
}

// ---- A user program (`bfcl.user_command`) ------------------------------------------------
//
// tests/fixtures/mcp/user.py plays the user: an entry's "user_script" (with the model's last
// message and the environment's state filled in), or, without one, the entry's own turns.

/// The fixture user's command line in `mode`, logging its requests to `log`.
fn user_command(mode: &str, log: Option<&Path>) -> Vec<String> {
    let mut command = vec!["python3".to_string(), root().join("tests/fixtures/mcp/user.py").to_str().unwrap().into()];
    if !mode.is_empty() {
        command.push(mode.into());
    }
    if let Some(log) = log {
        command = [vec!["env".to_string(), format!("ARTIST_USER_LOG={}", log.display())], command].concat();
    }
    command
}

fn users(s: &BfclSettings) -> std::sync::Arc<artist_train::fc::Users> {
    std::sync::Arc::new(artist_train::fc::Users::spawn(s).unwrap().unwrap())
}

/// The talk_0 entry on the fixture server, its turns written by `turn_text(turn)`, the user
/// played by the fixture user in `mode`. Its ground truth gives one list of calls per
/// turn the user's script leads to, though its question has one turn: under a user
/// program the calls are taken together.
fn talk(
    mode: &str,
    timeout_s: f64,
    log: Option<&Path>,
    turn_text: impl Fn(usize) -> String,
) -> (FcData, Result<Vec<artist_train::fc::Episode>, String>, Tokenizer) {
    let dir = root().join("tests/fixtures/mcp/episodes");
    let s = BfclSettings {
        questions: vec![dir.join("talk_questions.jsonl")],
        answers: vec![dir.join("talk_answers.jsonl")],
        user_command: user_command(mode, log),
        user_workers: 2,
        user_timeout_s: timeout_s,
        ..mcp_settings()
    };
    let server = std::sync::Arc::new(artist_tools::McpTool::spawn(mcp_config()).unwrap());
    let mut data = FcData::load_mcp(&s, server).unwrap();
    data.users = Some(users(&s));
    let tok = Tokenizer::from_dir(tiny()).unwrap();
    let template = ChatTemplate::from_dir(tiny()).unwrap();
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    let turns: Vec<Vec<u32>> = (0..4).map(|t| tok.encode(&turn_text(t)).unwrap()).collect();
    let policy = TurnScripted { vocab: 311, eos, im_start: tok.token_to_id("<|im_start|>").unwrap(), turns };
    let eps = run_episodes(&policy, &tok, &template, &data, &[0], &EpisodeSettings { group_size: 2, ..settings(eos) })
        .map_err(|e| e.to_string());
    (data, eps, tok)
}

/// The user program writes the turns after the first, reading the model's last message
/// and the server's state, and ends the conversation when its script does; the episode is
/// scored as one turn (final state, every call) and passes with full rewards.
#[test]
fn a_user_program_leads_the_conversation() {
    if !python3() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("user.jsonl");
    let (data, eps, tok) = talk("", 20.0, Some(&log), |t| match t {
        0 => oracle_text(&[Call::new("add").kwarg("a", 2).kwarg("b", 3)]),
        1 => oracle_text(&[Call::new("counter")]),
        _ => "<reasoning>Nothing left.</reasoning>The count is 6, all done.<|im_end|>".into(),
    });
    let eps = eps.unwrap();
    for ep in &eps {
        // Three turns: the entry's, then the script's two; the third request ends it.
        assert_eq!(ep.turns_played, 3);
        let text = tok.decode(&ep.ids, false).unwrap();
        assert!(
            text.contains("You said: <reasoning>Plan.</reasoning><tool>[add(a=2, b=3)]</tool>Done. Now count once."),
            "{text}"
        );
        assert!(text.contains("State: {\"count\": 6, \"last\": 5}. Thanks."), "{text}");
        let s = score_episode(&tok, &data, ep, &Default::default(), Default::default()).unwrap();
        assert!(s.check.valid, "{:?}", s.check);
        assert_eq!((s.check.turns.len(), s.check.state_fraction, s.check.function_fraction), (1, 1.0, 1.0));
        assert!((s.rewards.total - 1.2).abs() < 1e-12, "{:?}", s.rewards);
    }
    // What the user program read: turns 1, 2 and 3 of both episodes, the conversation so
    // far (the model's own text, without the tool's output), the state, the whole entry.
    let seen: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(seen.len(), 6);
    for r in &seen {
        let t = r["turn"].as_u64().unwrap() as usize;
        assert_eq!(r["messages"].as_array().unwrap().len(), 2 * t, "{r}");
        assert_eq!(r["entry"]["id"], "talk_0");
        assert!(!r["messages"].to_string().contains("<output>"), "{r}");
        assert!(r["worker"] == "0" || r["worker"] == "1", "{r}");
    }
    let last = seen.iter().find(|r| r["turn"] == 3).unwrap();
    assert_eq!(last["state"], "{\"count\": 6, \"last\": 5}");
}

/// Under a user program, the conversation is scored as a whole, by hand: a model that never
/// counts ends in the wrong state (state 0), matches one of the two expected calls
/// (function 0.5) and fails the verdict.
#[test]
fn a_user_led_conversation_is_scored_by_its_end() {
    if !python3() {
        return;
    }
    let (data, eps, tok) = talk("", 20.0, None, |t| match t {
        0 => oracle_text(&[Call::new("add").kwarg("a", 2).kwarg("b", 3)]),
        _ => "<reasoning>No.</reasoning>I will not count.<|im_end|>".into(),
    });
    let ep = &eps.unwrap()[0];
    assert_eq!(ep.records.last().unwrap().state, state(5, Some(5)));
    let s = score_episode(&tok, &data, ep, &Default::default(), Default::default()).unwrap();
    assert!(!s.check.valid);
    assert_eq!(s.check.turns[0].state_differences, ["count"]);
    assert_eq!((s.check.state_fraction, s.check.function_fraction), (0.0, 0.5));
}

/// tau-bench's outputs: talk_0 requires the model to tell the user "count is 6". A model
/// whose calls and final state are right but never says it fails the verdict (its state
/// and function rewards stay whole); saying it in other case and with a comma passes.
#[test]
fn an_entry_s_outputs_must_be_said() {
    if !python3() {
        return;
    }
    for (last, valid) in [("All done.", false), ("COUNT, IS 6 now.", true)] {
        let (data, eps, tok) = talk("", 20.0, None, |t| match t {
            0 => oracle_text(&[Call::new("add").kwarg("a", 2).kwarg("b", 3)]),
            1 => oracle_text(&[Call::new("counter")]),
            _ => format!("<reasoning>Nothing left.</reasoning>{last}<|im_end|>"),
        });
        let s = score_episode(&tok, &data, &eps.unwrap()[0], &Default::default(), Default::default()).unwrap();
        assert_eq!(s.check.valid, valid, "{last}: {:?}", s.check);
        assert_eq!((s.check.state_fraction, s.check.function_fraction), (1.0, 1.0));
        if !valid {
            assert_eq!(s.check.error_type.as_deref(), Some("multi_turn:missing_output"));
            assert!(s.check.error.as_deref().unwrap().contains("count is 6"));
        }
    }
    // Outputs that are not a list of texts are refused at load, naming the entry.
    let tmp = tempfile::tempdir().unwrap();
    let (q, a) = (tmp.path().join("q.jsonl"), tmp.path().join("a.jsonl"));
    std::fs::write(&q, r#"{"id": "bad_0", "question": [[{"role": "user", "content": "Hi."}]], "outputs": [6]}"#)
        .unwrap();
    std::fs::write(&a, r#"{"id": "bad_0", "ground_truth": [[]]}"#).unwrap();
    let s = BfclSettings { questions: vec![q], answers: vec![a], ..mcp_settings() };
    let server = std::sync::Arc::new(artist_tools::McpTool::spawn(mcp_config()).unwrap());
    let e = FcData::load_mcp(&s, server).err().unwrap().to_string();
    assert!(e.contains("bad_0") && e.contains("\"outputs\" must be a list of texts"), "{e}");
}

/// A user program that answers nonsense, answers without a message, or does not answer in
/// time stops the episodes with an error that names it and what went wrong.
#[test]
fn a_bad_user_program_is_named() {
    if !python3() {
        return;
    }
    let turn = |_: usize| "<reasoning>r</reasoning>Hello.<|im_end|>".to_string();
    for (mode, timeout, needle) in [
        ("garbage", 20.0, "answered \"hello\", not JSON"),
        ("no-message", 20.0, "neither a string \"message\" nor \"done\": true"),
        ("silent", 0.5, "no reply within 0.5 s"),
    ] {
        let (_, eps, _) = talk(mode, timeout, None, turn);
        let e = eps.err().unwrap();
        assert!(e.contains("bfcl.user_command") && e.contains("user.py") && e.contains(needle), "{mode}: {e}");
    }
    let bad = BfclSettings { user_command: vec!["python3".into()], max_user_turns: 0, ..Default::default() };
    let e = artist_train::fc::Users::spawn(&bad).err().unwrap().to_string();
    assert!(e.contains("max_user_turns"), "{e}");
}

/// On BFCL's own environments, a user program that replays an entry's turns leads the same
/// conversation as the entry's scripted turns, and the model that writes the ground truth
/// passes it scored as a whole.
#[test]
fn a_user_program_replaying_bfcl_turns_passes() {
    if !python3() {
        return;
    }
    let Some(bfcl) = bfcl_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("user.jsonl");
    let s = BfclSettings {
        questions: vec![bfcl.join("questions").join("BFCL_v4_multi_turn_miss_func.json")],
        first: 1,
        user_command: user_command("", Some(&log)),
        ..Default::default()
    };
    let (_, scripted, tok) = play("BFCL_v4_multi_turn_miss_func.json", 0, |_, c| oracle_text(c)).unwrap();
    let mut led = FcData::load(&s).unwrap();
    led.users = Some(users(&s));
    let template = ChatTemplate::from_dir(tiny()).unwrap();
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    let turns: Vec<Vec<u32>> = led.truths[0].turns.iter().map(|c| tok.encode(&oracle_text(c)).unwrap()).collect();
    let policy = TurnScripted { vocab: 311, eos, im_start: tok.token_to_id("<|im_start|>").unwrap(), turns };
    let eps = run_episodes(&policy, &tok, &template, &led, &[0], &settings(eos)).unwrap();
    assert_eq!(eps[0].ids, scripted[0].ids, "the same conversation");
    let s = score_episode(&tok, &led, &eps[0], &Default::default(), Default::default()).unwrap();
    assert!(s.check.valid && s.check.turns.len() == 1, "{:?}", s.check);
    // The user program read BFCL's state as JSON, by class.
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().lines().next().unwrap()).unwrap();
    let state: serde_json::Value = serde_json::from_str(first["state"].as_str().unwrap()).unwrap();
    for class in &led.entries[0].involved_classes {
        assert!(state.get(class).is_some_and(serde_json::Value::is_object), "{class} not in {state}");
    }
}

/// GRPO with a user program: its settings are checked by name, and a tiny Qwen2 trains a
/// step on the conversations it leads.
#[test]
fn grpo_with_a_user_program() {
    if !python3() {
        return;
    }
    let user = format!("bfcl.user_command=[\"python3\", {:?}]", root().join("tests/fixtures/mcp/user.py"));
    let sets =
        |extra: &[&str]| mcp_fc_config("talk", &[&EPISODE_SERVERS[..], &[user.as_str(), "steps=1"], extra].concat());
    let dev = artist_tensor::Device::Cpu;
    for (bad, needle) in [
        ("bfcl.user_workers=0", "bfcl.user_workers must be from 1 to 256"),
        ("bfcl.user_timeout_s=0", "bfcl.user_timeout_s"),
        ("bfcl.max_user_turns=0", "bfcl.max_user_turns"),
    ] {
        let e = sets(&[bad]).validate(dev).unwrap_err().to_string();
        assert!(e.contains(needle), "{bad}: {e}");
    }
    let c = sets(&[]);
    c.validate(dev).unwrap();
    let mut t = mcp_trainer(c);
    let tmp = tempfile::tempdir().unwrap();
    let m = train(&tmp.path().join("run"), &mut t, &quiet()).unwrap();
    // The tiny model writes no calls: the user's script still runs its two more turns.
    assert_eq!(m[0].steps_per_turn, Some(1.0));
    assert!(m[0].reward.is_finite() && m[0].reward_state.is_some(), "{:?}", m[0]);
    let logged =
        artist_train::metrics::read(&tmp.path().join("run").join(artist_train::metrics::ROLLOUTS_FILE)).unwrap();
    assert!(logged.iter().all(|l| l["turns_played"] == 3), "{logged:?}");
}

/// A model whose call ends its own server loses the state reward, and the run goes on: the
/// later calls and state reads fail in words, recorded as errors, which match no state of
/// the ground truth's.
#[test]
fn a_model_that_ends_its_server_loses_the_state() {
    if !python3() {
        return;
    }
    let (data, eps, tok, _server) = play_mcp(1, |i, t, c| match (i, t) {
        (0, 0) => "<reasoning>r</reasoning><tool>[crash()]</tool>Oops.<|im_end|>".into(),
        _ => oracle_text(c),
    });
    let ep = &eps[0];
    assert_eq!(ep.turns_played, 2);
    assert!(ep.records.iter().all(|r| r.state.starts_with("error: ")), "{:?}", ep.records);
    let text = tok.decode(&ep.ids, false).unwrap();
    assert!(text.contains("error:"), "{text}");
    let s = score_episode(&tok, &data, ep, &Default::default(), Default::default()).unwrap();
    assert_eq!((s.check.valid, s.check.state_fraction), (false, 0.0));
    assert!(score_episode(&tok, &data, &eps[1], &Default::default(), Default::default()).unwrap().check.valid);
}

/// The first turn's prompt prefilled once per entry and forked into its episodes
/// (`rollout.share_prefix`) plays the same episodes, to the bit, as prefilling it for each:
/// a tiny Qwen2 sampling at temperature 1 (so an entry's episodes differ), three episodes
/// of each fixture entry, every turn.
#[test]
fn a_shared_first_turn_plays_the_same_episodes() {
    if !python3() {
        return;
    }
    let server = std::sync::Arc::new(artist_tools::McpTool::spawn(mcp_config()).unwrap());
    let data = FcData::load_mcp(&mcp_settings(), server).unwrap();
    let model = Qwen2::load(&tiny()).unwrap();
    let tok = Tokenizer::from_dir(tiny()).unwrap();
    let template = ChatTemplate::from_dir(tiny()).unwrap();
    let play = |share: bool| {
        let s = EpisodeSettings {
            group_size: 3,
            sampling: artist_engine::SamplingParams { temperature: 1.0, seed: 7, ..Default::default() },
            max_turn_tokens: 12,
            max_batch: 16,
            first_episode: 6,
            share_first_turn: share,
            ..settings(tok.token_to_id("<|im_end|>").unwrap())
        };
        let counting = Counting { inner: &model, fed: Default::default() };
        let eps = run_episodes(&counting, &tok, &template, &data, &[0, 1, 2], &s).unwrap();
        (eps, counting.fed.into_inner())
    };
    let ((alone, fed_alone), (shared, fed_shared)) = (play(false), play(true));
    // Each entry's first prompt fed once instead of three times; nothing else changes.
    let first: usize = alone.iter().step_by(3).map(|e| e.prompt_ids.len()).sum();
    assert_eq!(fed_alone - fed_shared, 2 * first);
    assert_eq!(alone.len(), 9);
    assert!(alone[0].ids != alone[1].ids, "an entry's episodes should differ at temperature 1");
    for (a, b) in alone.iter().zip(&shared) {
        assert_eq!((a.entry, a.sample, a.turns_played), (b.entry, b.sample, b.turns_played));
        assert_eq!((&a.prompt_ids, &a.ids, &a.mask), (&b.prompt_ids, &b.ids, &b.mask));
        let bits = |e: &artist_train::fc::Episode| e.logprobs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "entry {} sample {}", a.entry, a.sample);
        assert_eq!(a.records, b.records);
    }
}

/// A policy that counts the tokens fed to it (prefills and decode steps alike).
struct Counting<'m> {
    inner: &'m Qwen2,
    fed: std::sync::atomic::AtomicUsize,
}

impl Policy for Counting<'_> {
    type Cache = artist_model::KvCache;
    fn vocab_size(&self) -> usize {
        <Qwen2 as Policy>::vocab_size(self.inner)
    }
    fn new_cache(&self, slots: usize, max_len: usize) -> artist_engine::Result<Self::Cache> {
        <Qwen2 as Policy>::new_cache(self.inner, slots, max_len)
    }
    fn new_cache_in(
        &self,
        slots: usize,
        max_len: usize,
        dtype: artist_tensor::DType,
    ) -> artist_engine::Result<Self::Cache> {
        <Qwen2 as Policy>::new_cache_in(self.inner, slots, max_len, dtype)
    }
    fn step(&self, inputs: &[SeqInput], cache: &mut Self::Cache) -> artist_engine::Result<artist_engine::Logits> {
        let n: usize = inputs.iter().map(|s| s.tokens.len()).sum();
        self.fed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        <Qwen2 as Policy>::step(self.inner, inputs, cache)
    }
    fn fork(&self, cache: &mut Self::Cache, from: usize, to: usize) -> artist_engine::Result<()> {
        <Qwen2 as Policy>::fork(self.inner, cache, from, to)
    }
    fn clear(&self, cache: &mut Self::Cache, slot: usize) {
        <Qwen2 as Policy>::clear(self.inner, cache, slot)
    }
    fn truncate(&self, cache: &mut Self::Cache, slot: usize, len: usize) -> artist_engine::Result<bool> {
        <Qwen2 as Policy>::truncate(self.inner, cache, slot, len)
    }
    fn set_matmul_dtype(&self, cache: &mut Self::Cache, dtype: Option<artist_tensor::DType>) {
        <Qwen2 as Policy>::set_matmul_dtype(self.inner, cache, dtype)
    }
}

/// examples/bank, the template for an environment of one's own: its config validates, and a
/// model that writes the ground truth's calls and tells the user what `outputs` asks for
/// passes both entries with full state and function rewards on its server.
#[test]
fn the_bank_example_passes_its_own_ground_truth() {
    if !python3() {
        return;
    }
    let text = std::fs::read_to_string(root().join("examples/bank/config.toml")).unwrap();
    let c = GrpoRunConfig::from_toml(&text, Path::new("examples/bank/config.toml")).unwrap();
    let at_root = |p: &std::path::PathBuf| root().join(p);
    let mut c =
        c.with_overrides(&[format!("model={:?}", tiny().to_str().unwrap()), "mcp.spare_servers=0".into()]).unwrap();
    c.validate(artist_tensor::Device::Cpu).unwrap();
    c.bfcl.questions = c.bfcl.questions.iter().map(at_root).collect();
    c.bfcl.answers = c.bfcl.answers.iter().map(at_root).collect();
    c.mcp.command[1] = root().join(&c.mcp.command[1]).to_str().unwrap().into();
    let server = std::sync::Arc::new(artist_tools::McpTool::spawn(c.mcp.clone()).unwrap());
    let data = FcData::load_mcp(&c.bfcl, server).unwrap();
    let tok = Tokenizer::from_dir(tiny()).unwrap();
    let template = ChatTemplate::from_dir(tiny()).unwrap();
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    for i in 0..data.entries.len() {
        let turns: Vec<Vec<u32>> = (data.truths[i].turns.iter())
            .map(|calls| {
                let list: Vec<String> = calls.iter().map(Call::to_python).collect();
                let text =
                    format!("<reasoning>Plan.</reasoning><tool>[{}]</tool>Alice has 100.<|im_end|>", list.join(", "));
                tok.encode(&text).unwrap()
            })
            .collect();
        let policy = TurnScripted { vocab: 311, eos, im_start: tok.token_to_id("<|im_start|>").unwrap(), turns };
        let eps = run_episodes(&policy, &tok, &template, &data, &[i], &settings(eos)).unwrap();
        let s = score_episode(&tok, &data, &eps[0], &c.fc_rewards, Default::default()).unwrap();
        assert!(s.check.valid, "{}: {:?}", data.entries[i].id, s.check);
        // State 0.5, function 0.5, strict format 0.1, and 0.025 per complete block up to
        // 0.1: two blocks a turn.
        let blocks = 2 * data.truths[i].turns.len();
        let want = 1.1 + (0.025 * blocks as f64).min(0.1);
        assert!((s.rewards.total - want).abs() < 1e-12, "{:?} vs {want}", s.rewards);
        let text = tok.decode(&eps[0].ids, false).unwrap();
        assert!(!text.contains("error:"), "{text}");
    }
}
