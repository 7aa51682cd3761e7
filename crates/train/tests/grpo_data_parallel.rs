//! Data-parallel GRPO equals one process on the same global batches: 2 in-process ranks
//! (threads), each sampling its share of the prompts, end 3 steps with the weights and the
//! per-step metrics of a single-process run on the tiny model with the calculator.

use std::path::Path;
use std::time::Duration;

use artist_dist::InProcess;
use artist_model::Qwen2;
use artist_train::grpo::{GrpoRunConfig, GrpoTrainer, Problem, StepMetrics, train, train_data_parallel};
use artist_train::metrics::{EVAL_ROLLOUTS_FILE, ROLLOUTS_FILE};
use artist_train::sft::RunOptions;

/// Largest difference allowed between a data-parallel weight and the single-process one.
/// The rollouts are the same tokens (same seeds); the runs differ only in the order floats
/// are added (per-rank forward passes and micro-batches, the ranks' gradients summed), and
/// AdamW's first steps move a weight by about lr * sign(gradient) however small the
/// gradient, so near-zero gradients turn that noise into up to ~lr per step.
const TOLERANCE: f32 = 1e-4;

fn quiet() -> RunOptions {
    RunOptions { resume: false, progress: false, stop_after: None, device: Default::default() }
}

mod common;

/// With three held-out problems, two answers each at temperature 1 (ranks of 2 and 1),
/// judged by [`common::parity`] (random tiny-model text never holds the answer).
fn trainer(config: GrpoRunConfig) -> GrpoTrainer<'static> {
    let mut t = common::math_trainer(config, &common::parity);
    t.held_out = (0..3).map(|i| Problem { problem: format!("{i}*5?"), answer: (5 * i).to_string() }).collect();
    t
}

/// Three prompts a step (ranks of 2 and 1 prompts), groups of 3, two rollouts a pass.
fn config() -> GrpoRunConfig {
    common::tiny_grpo_config(&[
        "steps=3",
        "prompts_per_step=3",
        "eval.temperature=1.0",
        "eval.samples=2",
        "log_rollouts=8",
        "eval.log_samples=5",
    ])
}

fn weights(model: &Qwen2) -> Vec<Vec<f32>> {
    model.params().iter().map(|p| p.value().to_f32_vec().unwrap()).collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, x| if x.is_nan() || x > m { x } else { m })
}

#[test]
fn two_ranks_equal_one_process_on_the_global_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut single = trainer(config());
    let start = weights(&single.model);
    let m1 = train(&tmp.path().join("single"), &mut single, &quiet()).unwrap();
    let w1 = weights(&single.model);
    let moved = max_diff(&w1, &start);
    assert!(moved > 1e-4, "training moved the weights by only {moved:e}");
    assert!(m1.iter().any(|m| m.loss != 0.0), "no step trained");

    let ranks = |dir: &Path, overlap: bool| -> Vec<(Vec<StepMetrics>, Vec<Vec<f32>>)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = InProcess::group_with_timeout(2, Duration::from_secs(300))
                .into_iter()
                .map(|mut comm| {
                    s.spawn(move || {
                        let mut t = trainer(GrpoRunConfig { overlap_allreduce: Some(overlap), ..config() });
                        let m = train_data_parallel(dir, &mut t, &quiet(), &mut comm).unwrap();
                        (m, weights(&t.model))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let dir = tmp.path().join("ranks");
    let runs = ranks(&dir, false);
    assert_eq!(runs[0].1, runs[1].1, "the ranks' weights diverged");
    // The all-reduce overlapped with the last micro-batch's backward: the same bits.
    let overlapped = ranks(&tmp.path().join("overlapped"), true);
    assert_eq!(overlapped[0].1, runs[0].1, "overlapping the all-reduce changed the weights");
    let diff = max_diff(&runs[0].1, &w1);
    eprintln!("2 ranks vs one process: max |weight difference| {diff:e} (weights moved up to {moved:e})");
    assert!(diff <= TOLERANCE, "max weight difference {diff:e} > {TOLERANCE:e}");
    // The evaluation after the last step reads weights whose last bits differ from the
    // single process's (above), and answers sampled at temperature 1 on a random model may
    // part on them (seen on an AVX2 machine); so it is checked against one process holding
    // the ranks' own final weights, read back from their checkpoint.
    let checkpoint = artist_train::checkpoint::latest(&dir).unwrap().unwrap();
    let last =
        trainer(GrpoRunConfig { model: checkpoint.clone(), ..config() }).evaluate_held_out_sharded(None).unwrap();
    for (m, (a, b)) in m1.iter().zip(runs[0].0.iter().zip(&runs[1].0)) {
        eprintln!(
            "step {}: reward {} / {}, accuracy {} / {}, loss {} / {}, grad norm {} / {}",
            m.step, m.reward, a.reward, m.accuracy, a.accuracy, m.loss, a.loss, m.grad_norm, a.grad_norm
        );
        for x in [a, b] {
            assert_eq!(x.step, m.step);
            assert!((x.reward - m.reward).abs() < 1e-6, "step {}: reward {} vs {}", m.step, x.reward, m.reward);
            assert!((x.accuracy - m.accuracy).abs() < 1e-9 && (x.response_tokens - m.response_tokens).abs() < 1e-6);
            assert!((x.tool_calls_per_rollout - m.tool_calls_per_rollout).abs() < 1e-6);
            assert!((x.loss - m.loss).abs() <= 1e-6, "loss {} vs {}", x.loss, m.loss);
            let (xe, me) = (x.entropy.unwrap(), m.entropy.unwrap());
            assert!((xe - me).abs() <= 1e-6 * me, "entropy {xe} vs {me}");
            assert!((x.grad_norm - m.grad_norm).abs() <= 1e-4 * m.grad_norm.max(1e-3));
            // The held-out evaluation after the last step, split over the ranks: that of
            // one process holding the ranks' final weights.
            assert_eq!(x.eval_accuracy.is_some(), m.eval_accuracy.is_some());
            if x.eval_accuracy.is_some() {
                assert_eq!((x.eval_accuracy, x.eval_reward), (Some(last.accuracy), Some(last.reward)));
            }
        }
    }
    assert!(m1[2].eval_accuracy.is_some());
    // Rank 0 alone wrote: the evaluation before training, one metrics line per step, the
    // final checkpoint; its step-0 evaluation is the single process's.
    let lines = artist_train::metrics::read(&dir.join("metrics.jsonl")).unwrap();
    let single = artist_train::metrics::read(&tmp.path().join("single/metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 4);
    for key in ["step", "eval_accuracy", "eval_reward", "eval_tool_use"] {
        assert_eq!(lines[0].get(key), single[0].get(key), "{key}");
    }
    assert!(checkpoint.ends_with("step-00000003"));
    // rollouts.jsonl: the first 8 of each step's 9 rollouts, 6 played by rank 0 and 2 by
    // rank 1, gathered: the single process's lines (the same prompts, seeds and texts),
    // tagged with the same places. eval_rollouts.jsonl: the first 5 of the 6 held-out
    // answers (rank 0 played 4) at each of the two evaluations: the single process's
    // before training, those of one process on the ranks' final weights after it.
    let logged = |d: &Path, file: &str| artist_train::metrics::read(&d.join(file)).unwrap();
    let (ours, theirs) = (logged(&dir, ROLLOUTS_FILE), logged(&tmp.path().join("single"), ROLLOUTS_FILE));
    assert_eq!(ours.len(), 3 * 8);
    assert_eq!(ours, theirs, "the ranks logged other rollouts than one process");
    let (ours, theirs) = (logged(&dir, EVAL_ROLLOUTS_FILE), logged(&tmp.path().join("single"), EVAL_ROLLOUTS_FILE));
    assert_eq!(ours.len(), 2 * 5);
    assert_eq!(ours[..5], theirs[..5], "the ranks logged other answers than one process before training");
    let after: Vec<serde_json::Value> = (ours[5..].iter().cloned())
        .map(|mut line| {
            assert_eq!(line["step"], 3);
            line.as_object_mut().unwrap().remove("step");
            line
        })
        .collect();
    assert_eq!(after, last.samples, "the ranks logged other answers than one process on their weights");
}

/// `mini_batches = 3` over two ranks (groups 0 and 1 on rank 0, group 2 on rank 1; flat
/// groups left out, so a group's place in the batch, and so its mini-batch, comes from
/// both ranks' counts; a mini-batch empty on one rank): the same AdamW steps on the same
/// groups as one process, up to the order of float sums (measured: the same bits, each
/// mini-batch being one group). AdamW's eps is 1e-3 here, as in sft_data_parallel.rs, so
/// that a gradient's last bits cannot move a weight by a whole step and send later
/// rollouts elsewhere. Numbering each rank's groups from 0 instead fails it.
#[test]
fn mini_batches_hold_the_same_groups_on_two_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config()
        .with_overrides(&[
            "mini_batches=3".into(),
            "filter_flat_groups=true".into(),
            "steps=3".into(),
            "optim.eps=1e-3".into(),
        ])
        .unwrap();
    let mut single = trainer(c.clone());
    let m1 = train(&tmp.path().join("single"), &mut single, &quiet()).unwrap();
    assert!(m1.iter().any(|m| m.flat_groups > 0) && m1.iter().any(|m| m.loss != 0.0), "{m1:?}");
    let dir = tmp.path().join("ranks");
    let runs: Vec<(Vec<StepMetrics>, Vec<Vec<f32>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::group_with_timeout(2, Duration::from_secs(300))
            .into_iter()
            .map(|mut comm| {
                let (dir, c) = (&dir, c.clone());
                s.spawn(move || {
                    let mut t = trainer(c);
                    let m = train_data_parallel(dir, &mut t, &quiet(), &mut comm).unwrap();
                    (m, weights(&t.model))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (m, x) in m1.iter().zip(&runs[0].0) {
        eprintln!(
            "step {}: flat {} / {}, loss {} / {}, grad norm {} / {}",
            m.step, m.flat_groups, x.flat_groups, m.loss, x.loss, m.grad_norm, x.grad_norm
        );
    }
    let diff = max_diff(&runs[0].1, &weights(&single.model));
    eprintln!("mini-batches, 2 ranks vs one process: max |weight difference| {diff:e}");
    assert!(diff <= TOLERANCE, "max weight difference {diff:e} > {TOLERANCE:e}");
    for (m, x) in m1.iter().zip(&runs[0].0) {
        assert_eq!((x.flat_groups, x.reward), (m.flat_groups, m.reward), "step {}", m.step);
        assert!((x.grad_norm - m.grad_norm).abs() <= 1e-4 * m.grad_norm.max(1e-3), "step {}", m.step);
    }
    // Without mini-batches the same run ends elsewhere.
    let mut whole = trainer(config().with_overrides(&["filter_flat_groups=true".into()]).unwrap());
    train(&tmp.path().join("whole"), &mut whole, &quiet()).unwrap();
    assert!(max_diff(&weights(&whole.model), &weights(&single.model)) > 1e-5);
}
