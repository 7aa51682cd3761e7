//! The GRPO trainer end to end on a tiny model: two steps with the calculator in the loop
//! write metrics and a checkpoint, a resumed run continues from it, and the paper's
//! preset parses; configuration errors name the key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use artist_model::Qwen2;
use artist_tokenizer::{ChatTemplate, Tokenizer};
use artist_train::grpo::{GrpoRunConfig, GrpoTrainer, Problem, train};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn answer_of(text: &str) -> Option<&str> {
    let start = text.rfind("<answer>")? + "<answer>".len();
    let end = start + text[start..].find("</answer>")?;
    Some(text[start..end].trim())
}

fn verify(completion: &str, gold: &str) -> bool {
    answer_of(completion) == Some(gold)
}

fn trainer(config: GrpoRunConfig) -> GrpoTrainer<'static> {
    let dir = &config.model;
    let train: Vec<Problem> =
        (0..6).map(|i| Problem { problem: format!("{i}+{i}?"), answer: (2 * i).to_string() }).collect();
    GrpoTrainer {
        model: Qwen2::load(dir).unwrap(),
        tokenizer: Tokenizer::from_dir(dir).unwrap(),
        template: ChatTemplate::from_dir(dir).unwrap(),
        tool: Some(Arc::new(artist_tools::Calculator)),
        train,
        verify: &verify,
        config,
    }
}

fn tiny_config() -> GrpoRunConfig {
    let text = std::fs::read_to_string(root().join("configs/artist-math.toml")).unwrap();
    let c = GrpoRunConfig::from_toml(&text, Path::new("configs/artist-math.toml")).unwrap();
    let model = root().join("tests/fixtures/qwen2/tiny-gqa");
    c.with_overrides(&[
        format!("model={:?}", model.to_str().unwrap()),
        "tool=calculator".into(),
        "system_prompt=\"Use <calculator>.\"".into(),
        "steps=2".into(),
        "prompts_per_step=2".into(),
        "rollout.group_size=3".into(),
        "rollout.max_turn_tokens=12".into(),
        "rollout.max_response_tokens=24".into(),
        "rollout.max_context=120".into(),
        "rollout.max_batch=6".into(),
        "micro_batch_rollouts=2".into(),
        "optim.lr=1e-3".into(),
        "save_every=1".into(),
    ])
    .unwrap()
}

#[test]
fn two_steps_then_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut t = trainer(tiny_config());
    let before: Vec<f32> = t.model.params()[1].value().to_f32_vec().unwrap();
    let m = train(&run, &mut t, false).unwrap();
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
        "clip_fraction",
        "tokens_per_s",
    ] {
        assert!(lines[1].get(key).is_some(), "metrics lack {key}");
    }
    assert!(artist_train::checkpoint::latest(&run).unwrap().unwrap().ends_with("step-00000002"));
    // Resume to step 3.
    let mut t2 = trainer(GrpoRunConfig { steps: 3, ..tiny_config() });
    let m2 = train(&run, &mut t2, true).unwrap();
    assert_eq!(m2.len(), 1);
    assert_eq!(m2[0].step, 3);
    assert_eq!(artist_train::metrics::read(&run.join("metrics.jsonl")).unwrap().len(), 3);
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
}
