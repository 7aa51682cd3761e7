//! DAPO's dynamic sampling (`filter_flat_groups` with `max_sampling_rounds > 1`) on the
//! tiny model: a step plays more batches of prompts until it has `prompts_per_step` groups
//! whose rewards differ; the first step's update equals one computed by hand from the same
//! rollouts; a resumed run continues the data where it stopped; two ranks train as one
//! process.

use artist_rl::{TrainRollout, group_advantages};
use artist_train::data::DataOrder;
use artist_train::grpo::{GrpoRunConfig, GrpoTrainer, Problem, StepMetrics, train, train_data_parallel, update};
use artist_train::sft::RunOptions;

mod common;
use common::{adamw, max_diff, quiet, ranks, train_rollout, weights};

/// With two rollouts a group, about half the groups are flat under this judge.
fn trainer(config: GrpoRunConfig) -> GrpoTrainer<'static> {
    common::math_trainer(config, &common::parity)
}

/// Two prompts a step of the six, groups of two, up to three batches a step.
fn config(sets: &[&str]) -> GrpoRunConfig {
    let mut all = vec![
        "steps=4",
        "prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_turn_tokens=12",
        "rollout.max_response_tokens=24",
        "rollout.max_context=120",
        "rollout.max_batch=4",
        "rollout.deterministic=true",
        "micro_batch_rollouts=2",
        "optim.lr=1e-3",
        "filter_flat_groups=true",
        "max_sampling_rounds=3",
        "save_every=1",
    ];
    all.extend_from_slice(sets);
    common::tiny_math_config(&all)
}

/// The figures a step's metrics line must agree on whatever the timing.
fn figures(m: &StepMetrics) -> (u64, f64, f64, f64, usize, Option<usize>, Option<usize>, f64, f64) {
    (
        m.step,
        m.reward,
        m.accuracy,
        m.response_tokens,
        m.flat_groups,
        m.sampling_rounds,
        m.trained_groups,
        m.loss,
        m.grad_norm,
    )
}

#[test]
fn steps_sample_until_enough_groups_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = trainer(config(&[]));
    let m = train(&tmp.path().join("run"), &mut t, &quiet()).unwrap();
    for s in &m {
        eprintln!(
            "step {}: rounds {:?}, flat groups {}, trained groups {:?}, loss {}",
            s.step, s.sampling_rounds, s.flat_groups, s.trained_groups, s.loss
        );
        let rounds = s.sampling_rounds.expect("rounds are logged");
        assert!((1..=3).contains(&rounds));
        let differing = 2 * rounds - s.flat_groups;
        assert_eq!(s.trained_groups, Some(differing.min(2)), "step {}", s.step);
        assert!(rounds == 3 || differing >= 2, "step {} stopped after {rounds} rounds with {differing} groups", s.step);
    }
    assert!(m.iter().any(|s| s.sampling_rounds > Some(1)), "no step needed a second batch: the test shows nothing");
    let line = std::fs::read_to_string(tmp.path().join("run/metrics.jsonl")).unwrap();
    assert!(line.contains("\"sampling_rounds\"") && line.contains("\"trained_groups\""));

    // Without dynamic sampling nothing new is logged.
    let mut plain = trainer(config(&["max_sampling_rounds=1", "steps=1"]));
    let m = train(&tmp.path().join("plain"), &mut plain, &quiet()).unwrap();
    assert_eq!((m[0].sampling_rounds, m[0].trained_groups), (None, None));

    let e = config(&["filter_flat_groups=false"]).validate(artist_tensor::Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("max_sampling_rounds") && e.contains("filter_flat_groups"), "{e}");
    for bad in ["max_sampling_rounds=0", "max_sampling_rounds=1000000"] {
        let e = config(&[bad]).validate(artist_tensor::Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("max_sampling_rounds must be 1") && e.contains("1000"), "{e}");
    }
}

/// The first step replayed by hand: the batches of the data order in turn, each group's
/// rollouts with the seeds of prompts `round * prompts_per_step + p`, flat groups dropped,
/// the first two groups that differ trained on with one update.
#[test]
fn the_first_step_trains_on_the_first_groups_that_differ() {
    let tmp = tempfile::tempdir().unwrap();
    // A seed whose first step finds only one group that differs in its first batch.
    let c = config(&["steps=1", "seed=1"]);
    let mut t = trainer(c.clone());
    let m = train(&tmp.path().join("run"), &mut t, &quiet()).unwrap();

    let reference = trainer(c.clone());
    let order = DataOrder { n: reference.train.len(), batch_size: 2, shuffle: true, seed: c.seed };
    let (g, mut groups, mut rounds) = (2, Vec::new(), 0);
    while groups.len() < 2 && rounds < 3 {
        let problems: Vec<&Problem> = order.step(rounds).1.iter().map(|&i| &reference.train[i]).collect();
        let batch = reference.rollouts(&problems, c.seed + rounds * 2 * g as u64).unwrap();
        let totals: Vec<f64> = batch.rewards.iter().map(|r| r.total).collect();
        let adv = group_advantages(&totals, g, &c.advantages);
        for (k, group) in batch.rollouts.chunks(g).enumerate() {
            if artist_rl::advantages::group_is_flat(&totals[k * g..(k + 1) * g]) {
                continue;
            }
            let rollouts: Vec<TrainRollout> = (group.iter().enumerate())
                .filter(|(_, ro)| ro.sampled_tokens() > 0)
                .map(|(i, ro)| train_rollout(ro, adv[k * g + i] as f32))
                .collect();
            groups.push(rollouts);
        }
        rounds += 1;
    }
    assert_eq!(m[0].sampling_rounds, Some(rounds as usize));
    assert!(rounds > 1, "the first step needed one batch: pick a seed where it needs more");
    groups.truncate(2);
    let mut optimizer = adamw(&c, &reference.model);
    let u = update(&reference.model, None, groups.concat(), &c, &mut optimizer, c.optim.lr, 0).unwrap();
    assert_eq!((u.loss, u.grad_norm), (m[0].loss, m[0].grad_norm));
    assert_eq!(weights(&reference.model), weights(&t.model), "the step trained on other rollouts");
}

/// Stopped after step 2 and resumed, a run draws the batches the uninterrupted run draws
/// (the checkpoint keeps how many were drawn, more than the steps here).
#[test]
fn a_resumed_run_continues_the_data_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut whole = trainer(config(&[]));
    let m = train(&tmp.path().join("whole"), &mut whole, &quiet()).unwrap();
    let run = tmp.path().join("parts");
    let first = train(&run, &mut trainer(config(&[])), &RunOptions { stop_after: Some(2), ..quiet() }).unwrap();
    let drawn: usize = first.iter().map(|s| s.sampling_rounds.unwrap()).sum();
    let state = artist_train::checkpoint::read_state(&run.join("checkpoints/step-00000002")).unwrap();
    assert_eq!(state.batches_drawn, Some(drawn as u64));
    assert!(drawn > 2, "steps 1-2 drew one batch each: the test shows nothing");
    let mut resumed = trainer(config(&[]));
    let rest = train(&run, &mut resumed, &RunOptions { resume: true, ..quiet() }).unwrap();
    let parts: Vec<_> = first.iter().chain(&rest).map(figures).collect();
    assert_eq!(parts, m.iter().map(figures).collect::<Vec<_>>());
    assert_eq!(weights(&resumed.model), weights(&whole.model));
}

/// Two ranks, each playing its share of every round, stop after the same round and
/// train on the groups one process trains on.
#[test]
fn two_ranks_sample_and_train_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    // Every rollout of every round logged.
    let logged = ["log_rollouts=1000"];
    let mut single = trainer(config(&logged));
    let m1 = train(&tmp.path().join("single"), &mut single, &quiet()).unwrap();
    let w1 = weights(&single.model);
    let dir = tmp.path().join("ranks");
    let runs = ranks(2, |comm| {
        let mut t = trainer(config(&logged));
        let m = train_data_parallel(&dir, &mut t, &quiet(), comm).unwrap();
        (m, weights(&t.model))
    });
    for (m, w) in &runs {
        for (a, b) in m.iter().zip(&m1) {
            assert_eq!(
                (a.sampling_rounds, a.trained_groups, a.flat_groups),
                (b.sampling_rounds, b.trained_groups, b.flat_groups)
            );
            assert!((a.reward - b.reward).abs() < 1e-6 && (a.loss - b.loss).abs() <= 1e-6, "{a:?}\n{b:?}");
        }
        // As in grpo_data_parallel.rs: the same tokens, floats added in another order, and
        // AdamW's first steps move a weight by about lr * sign(gradient) however small.
        let diff = max_diff(w, &w1);
        assert!(diff <= 1e-4, "2 ranks vs one process: max |weight difference| {diff:e}");
    }
    assert_eq!(runs[0].1, runs[1].1, "the ranks' weights diverged");
    // rollouts.jsonl: the ranks' rollouts of every round, gathered, in one process's order.
    let read =
        |d: &std::path::Path| artist_train::metrics::read(&d.join(artist_train::metrics::ROLLOUTS_FILE)).unwrap();
    let (ours, theirs) = (read(&dir), read(&tmp.path().join("single")));
    let played: usize = m1.iter().map(|m| m.sampling_rounds.unwrap() * 2 * 2).sum();
    assert!(m1.iter().any(|m| m.sampling_rounds.unwrap() > 1), "no step played a second round");
    assert_eq!((ours.len(), theirs.len()), (played, played));
    assert_eq!(ours, theirs, "the ranks logged other lines, or in another order, than one process");
    let moved = max_diff(&w1, &weights(&trainer(config(&[])).model));
    assert!(moved > 1e-3, "training moved the weights by only {moved:e}");
}
