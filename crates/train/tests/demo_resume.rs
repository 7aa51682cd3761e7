//! The embedded demo stopped part-way through GRPO and resumed ends exactly where an
//! uninterrupted run ends: the same weights, byte for byte, and the same per-step metrics.

use artist_train::demo::{self, DemoConfig};
use artist_train::sft::RunOptions;

fn config() -> DemoConfig {
    DemoConfig {
        sft_steps: 6,
        grpo_steps: 4,
        prompts_per_step: 2,
        group_size: 3,
        eval_problems: 4,
        ..DemoConfig::default()
    }
}

/// The quantities of metrics.jsonl that do not depend on timing: each step's, and the
/// held-out evaluations' (step 0, before the first step, has only those).
fn learning_curve(dir: &std::path::Path) -> Vec<Vec<f64>> {
    artist_train::metrics::read(&dir.join("grpo/metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|l| {
            let keys: &[&str] = if l["step"] == 0 {
                &["step", "eval_accuracy", "eval_reward"]
            } else {
                &["step", "reward", "accuracy", "loss", "grad_norm", "response_tokens"]
            };
            let eval = l.get("eval_accuracy").and_then(|v| v.as_f64());
            keys.iter().map(|k| l[k].as_f64().unwrap()).chain(eval).collect()
        })
        .collect()
}

#[test]
fn stopped_and_resumed_equals_straight() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    let quiet = RunOptions { resume: false, progress: false, stop_after: None, device: Default::default() };
    let straight = demo::run(&a, &config(), &quiet).unwrap();
    assert!(straight.complete && straight.steps == 4);

    let first = demo::run(&b, &config(), &RunOptions { stop_after: Some(2), ..quiet.clone() }).unwrap();
    assert!(!first.complete && first.steps == 2);
    // Resuming reads the saved settings (the config passed in is ignored).
    let wrong = DemoConfig { grpo_steps: 99, ..config() };
    let resumed = demo::run(&b, &wrong, &RunOptions { resume: true, ..quiet }).unwrap();
    assert!(resumed.complete && resumed.resumed && resumed.steps == 4);

    let weights = |d: &std::path::Path| {
        let ckpt = artist_train::checkpoint::latest(&d.join("grpo")).unwrap().unwrap();
        std::fs::read(ckpt.join("model.safetensors")).unwrap()
    };
    assert!(weights(&a) == weights(&b), "resumed weights differ from the straight run's");
    let curve = learning_curve(&a);
    assert_eq!(curve.len(), 5, "a line for the evaluation before GRPO and one per step");
    assert_eq!(curve[4].len(), 7, "the last step's line holds its held-out evaluation");
    assert_eq!(curve, learning_curve(&b));
    assert_eq!(straight.accuracy_end, resumed.accuracy_end);
    assert_eq!(straight.accuracy_start, resumed.accuracy_start);
    assert!(b.join("grpo/curves.svg").is_file());
}
