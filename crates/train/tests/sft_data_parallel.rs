//! Data-parallel SFT equals one process on the same global batches: 2, 3 and 4 in-process
//! ranks (threads) train 3 steps and end with the weights, losses and gradient norms of a
//! single-process run; a data-parallel run stopped and resumed equals a straight one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use artist_dist::InProcess;
use artist_model::Qwen2;
use artist_train::sft::{RunOptions, SftConfig, SftSummary, train, train_data_parallel};

/// Largest difference allowed between a data-parallel weight and the single-process one.
/// The runs differ only in the order floats are added (per-shard forward passes, the sum
/// of the shards' gradients over ranks): about 1e-7 relative in a gradient, 1e-6 in its
/// norm. AdamW moves a weight by `lr m / (sqrt(v) + eps)`, whose slope in the gradient is at
/// most `lr / eps`: with torch's eps of 1e-8 a gradient near zero turns that noise into a
/// move of up to `lr` a step, as large as training's own (measured: 1.4e-3 on an AVX2
/// machine, 2.5e-4 on an AVX-512 one, after three steps of lr 3e-3). These runs take eps =
/// 1e-3, so a weight moves at most 3 times its gradient's noise a step, while gradients
/// above 1e-3 still move weights by about lr: a data-parallel gradient wrong anywhere shows
/// (measured here: at most 1.5e-7, where weights moved up to 9.5e-3).
const TOLERANCE: f32 = 2e-6;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Six examples, shuffled batches of four (the second step straddles an epoch), single
/// examples per forward pass, clipping active.
fn config() -> SftConfig {
    micro_config(1)
}

fn micro_config(micro_batch_size: usize) -> SftConfig {
    SftConfig {
        model: fixtures().join("qwen2/tiny-gqa"),
        data: fixtures().join("training/sft/gqa-cosine/data.jsonl"),
        steps: 3,
        batch_size: 4,
        micro_batch_size,
        lr: 3e-3,
        eps: 1e-3,
        grad_clip: 1.0,
        weight_decay: 0.1,
        seed: 7,
        ..SftConfig::default()
    }
}

fn quiet() -> RunOptions {
    RunOptions { resume: false, progress: false, stop_after: None, device: Default::default() }
}

/// `world` ranks as threads training into one run directory; every rank's summary.
fn run_ranks(dir: &Path, world: usize, opts: &RunOptions) -> Vec<SftSummary> {
    run_ranks_with(dir, world, opts, &config())
}

fn run_ranks_with(dir: &Path, world: usize, opts: &RunOptions, config: &SftConfig) -> Vec<SftSummary> {
    std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::group_with_timeout(world, Duration::from_secs(120))
            .into_iter()
            .map(|mut comm| s.spawn(move || train_data_parallel(dir, config.clone(), opts, &mut comm).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn weights(dir: &Path) -> Vec<Vec<f32>> {
    Qwen2::load(dir).unwrap().params().iter().map(|p| p.value().to_vec::<f32>().unwrap()).collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, x| if x.is_nan() || x > m { x } else { m })
}

fn metric(dir: &Path, key: &str) -> Vec<f64> {
    artist_train::metrics::read(&dir.join("metrics.jsonl")).unwrap().iter().map(|l| l[key].as_f64().unwrap()).collect()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| ((x - y) / y).abs()).fold(0.0, |m, x| if x.is_nan() || x > m { x } else { m })
}

/// Both with one example per forward pass (each rank's shard in several) and with the
/// whole batch or shard in one packed forward pass.
#[test]
fn ranks_equal_one_process_on_the_global_batch() {
    for micro in [1, 0] {
        ranks_equal_one_process(micro);
    }
    // The tolerance is the noise of packing the same batch differently in one process.
    let tmp = tempfile::tempdir().unwrap();
    let whole = train(&tmp.path().join("whole"), micro_config(0), &quiet()).unwrap();
    let single = train(&tmp.path().join("single"), micro_config(1), &quiet()).unwrap();
    let (ww, ws) = (weights(&whole.final_model), weights(&single.final_model));
    let noise = max_diff(&ww, &ws);
    eprintln!("one process, whole batch vs one example per pass: max |weight difference| {noise:e}");
    assert!(noise <= TOLERANCE, "{noise:e}");
}

fn ranks_equal_one_process(micro: usize) {
    let config = || micro_config(micro);
    let tmp = tempfile::tempdir().unwrap();
    let single_dir = tmp.path().join("single");
    let single = train(&single_dir, config(), &quiet()).unwrap();
    let (w1, norms1, losses1) =
        (weights(&single.final_model), metric(&single_dir, "grad_norm"), metric(&single_dir, "loss"));
    assert!(norms1.iter().all(|&n| n > 1.0), "clipping should be active: {norms1:?}");
    let moved = max_diff(&w1, &weights(&config().model));
    assert!(moved > 1e-3, "training moved the weights by only {moved}");
    for world in [2, 3, 4] {
        let dir = tmp.path().join(format!("ranks-{world}"));
        let summaries = run_ranks_with(&dir, world, &quiet(), &config());
        for s in &summaries {
            assert_eq!((s.end_step, s.refused_steps, &s.final_model), (3, 0, &dir.join("final")));
            assert_eq!(s.last_loss, summaries[0].last_loss, "every rank sees the global loss");
        }
        let w = weights(&dir.join("final"));
        let diff = max_diff(&w, &w1);
        let (norm_diff, loss_diff) =
            (max_rel(&metric(&dir, "grad_norm"), &norms1), max_rel(&metric(&dir, "loss"), &losses1));
        eprintln!(
            "micro-batch {micro}, {world} ranks vs one process: max |weight difference| {diff:e} (weights moved up to {moved:e}); \
             max relative difference of gradient norms {norm_diff:e}, of losses {loss_diff:e}"
        );
        assert!(diff <= TOLERANCE, "{world} ranks: max weight difference {diff:e} > {TOLERANCE:e}");
        assert!(norm_diff < 1e-5 && loss_diff < 1e-5, "{world} ranks: {norm_diff:e} {loss_diff:e}");
        // Rank 0 alone wrote: one line per step, one final checkpoint.
        assert_eq!(metric(&dir, "step"), vec![1.0, 2.0, 3.0]);
        let ck = artist_train::checkpoint::latest(&dir).unwrap().unwrap();
        assert!(ck.ends_with("step-00000003"), "{}", ck.display());
    }
}

/// The all-reduce overlapped with the last micro-batch's backward gives the bits of the
/// all-reduce after it (2 and 3 ranks, one example per pass, checkpointing on and off).
#[test]
fn overlapped_all_reduce_changes_no_bit() {
    let tmp = tempfile::tempdir().unwrap();
    for world in [2, 3] {
        for grad_checkpointing in [false, true] {
            let run = |overlap: bool| {
                let dir = tmp.path().join(format!("{world}-{grad_checkpointing}-{overlap}"));
                let c = SftConfig { overlap_allreduce: Some(overlap), grad_checkpointing, ..config() };
                run_ranks_with(&dir, world, &quiet(), &c);
                (weights(&dir.join("final")), metric(&dir, "grad_norm"))
            };
            let (after, during) = (run(false), run(true));
            assert_eq!(after.1, during.1, "{world} ranks, checkpointing {grad_checkpointing}: gradient norms");
            assert_eq!(max_diff(&after.0, &during.0), 0.0, "{world} ranks, checkpointing {grad_checkpointing}");
        }
    }
}

#[test]
fn stopped_and_resumed_ranks_equal_a_straight_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    run_ranks(&a, 2, &quiet());
    let stopped = run_ranks(&b, 2, &RunOptions { stop_after: Some(2), ..quiet() });
    assert!(stopped.iter().all(|s| s.end_step == 2 && s.final_model.ends_with("step-00000002")));
    assert!(!b.join("final").exists());
    run_ranks(&b, 2, &RunOptions { resume: true, ..quiet() });
    assert_eq!(max_diff(&weights(&a.join("final")), &weights(&b.join("final"))), 0.0);
    assert_eq!(metric(&a, "loss"), metric(&b, "loss"));
}

#[test]
fn ranks_with_other_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::group_with_timeout(2, Duration::from_secs(60))
            .into_iter()
            .enumerate()
            .map(|(r, mut comm)| {
                let dir = &dir;
                s.spawn(move || {
                    let c = SftConfig { seed: 7 + r as u64, ..config() };
                    train_data_parallel(dir, c, &quiet(), &mut comm).unwrap_err().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(errors[0].contains("rank 1 has other settings than rank 0"), "{}", errors[0]);
    assert!(errors[1].contains("rank 0 has other settings than rank 1"), "{}", errors[1]);
}

/// Three held-out lines, none of them training data.
fn held_out_file(dir: &Path) -> PathBuf {
    let path = dir.join("held-out.jsonl");
    std::fs::write(
        &path,
        "{\"input_ids\": [5, 77, 12, 190, 33, 8, 251], \"loss_mask\": [0, 0, 1, 1, 0, 1, 1]}\n\
         {\"input_ids\": [300, 2, 2, 41, 199, 64, 17, 88, 120], \"loss_mask\": [0, 1, 1, 1, 1, 0, 0, 1, 1]}\n\
         {\"input_ids\": [9, 10, 11, 12], \"loss_mask\": [0, 0, 0, 1]}\n",
    )
    .unwrap();
    path
}

/// The held-out loss of the weights in `model_dir`, independently: each example's logits
/// from the inference forward pass (the KV-cache path), log-softmax in f64 on the host,
/// averaged over the target tokens.
fn reference_held_out_loss(model_dir: &Path, held_out: &Path) -> f64 {
    use artist_model::{Rows, SeqInput};
    let model = Qwen2::load(model_dir).unwrap();
    let (mut nll, mut count) = (0f64, 0usize);
    for line in std::fs::read_to_string(held_out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ids: Vec<u32> = v["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let mask: Vec<u64> = v["loss_mask"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        let mut cache = model.new_cache(1, ids.len() + 1).unwrap();
        let logits = model.forward(&[SeqInput { slot: 0, tokens: &ids }], &mut cache, Rows::All).unwrap();
        let vocab = logits.dims()[1];
        let logits = logits.to_vec::<f32>().unwrap();
        for i in 1..ids.len() {
            if mask[i] == 1 {
                let row = &logits[(i - 1) * vocab..i * vocab];
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
                let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
                nll += lse - row[ids[i] as usize] as f64;
                count += 1;
            }
        }
    }
    nll / count as f64
}

/// `eval_data` every 2 steps of 3: the held-out loss of the starting weights (a line of step
/// 0), after step 2 and after step 3, the first and last equal to an independent
/// computation; 2 ranks split the held-out examples and report the single process's figures.
#[test]
fn held_out_loss_is_logged_and_equals_the_inference_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let held_out = held_out_file(tmp.path());
    let config = SftConfig { eval_data: Some(held_out.clone()), eval_every: 2, ..micro_config(2) };
    let dir = tmp.path().join("single");
    let single = train(&dir, config.clone(), &quiet()).unwrap();
    let lines = artist_train::metrics::read(&dir.join("metrics.jsonl")).unwrap();
    let evals: Vec<(f64, f64)> =
        lines.iter().filter_map(|l| Some((l["step"].as_f64()?, l.get("eval_loss")?.as_f64()?))).collect();
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [0.0, 2.0, 3.0], "{lines:?}");
    assert_eq!(lines[0].get("loss"), None, "the step-0 line holds the evaluation alone");
    assert_eq!(lines[0]["eval_target_tokens"].as_u64(), Some(11));
    let (start, end) =
        (reference_held_out_loss(&config.model, &held_out), reference_held_out_loss(&single.final_model, &held_out));
    eprintln!("held-out loss: {start} -> {end} (logged {} -> {})", evals[0].1, evals[2].1);
    assert!((evals[0].1 - start).abs() <= 1e-5 * start, "step 0: {} vs {start}", evals[0].1);
    assert!((evals[2].1 - end).abs() <= 1e-5 * end, "step 3: {} vs {end}", evals[2].1);
    assert!((start - end).abs() > 1e-3, "training did not move the held-out loss: {start} {end}");
    assert_eq!(single.eval_loss, Some(evals[2].1));

    let ranks = tmp.path().join("ranks");
    let summaries = run_ranks_with(&ranks, 2, &quiet(), &config);
    let logged: Vec<f64> = artist_train::metrics::read(&ranks.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter_map(|l| l.get("eval_loss")?.as_f64())
        .collect();
    let want: Vec<f64> = evals.iter().map(|e| e.1).collect();
    assert!(max_rel(&logged, &want) < 1e-5, "2 ranks: {logged:?} vs {want:?}");
    assert!(summaries.iter().all(|s| s.eval_loss == Some(logged[2])), "every rank reports the global figure");

    // A missing file is an error that names it.
    let bad = SftConfig { eval_data: Some(tmp.path().join("nope.jsonl")), ..micro_config(2) };
    let e = train(&tmp.path().join("bad"), bad, &quiet()).unwrap_err().to_string();
    assert!(e.contains("nope.jsonl"), "{e}");
}

/// `micro_batch_tokens`: passes of at most 44 tokens (the longest example) train as the
/// whole batch in one pass does, within the packing noise above, on one process and on two
/// ranks; a bound below `max_seq_len` is refused by name.
#[test]
fn a_token_budget_trains_as_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = SftConfig { max_seq_len: 44, micro_batch_tokens: 44, ..micro_config(0) };
    let whole = train(&tmp.path().join("whole"), SftConfig { max_seq_len: 44, ..micro_config(0) }, &quiet()).unwrap();
    let cut = train(&tmp.path().join("cut"), budget.clone(), &quiet()).unwrap();
    let (ww, wc) = (weights(&whole.final_model), weights(&cut.final_model));
    let noise = max_diff(&ww, &wc);
    assert!(noise <= TOLERANCE, "{noise:e}");
    assert!(max_rel(&metric(&tmp.path().join("cut"), "loss"), &metric(&tmp.path().join("whole"), "loss")) < 1e-5);

    let ranks = run_ranks_with(&tmp.path().join("ranks"), 2, &quiet(), &budget);
    let noise = max_diff(&weights(&ranks[0].final_model), &wc);
    assert!(noise <= TOLERANCE, "{noise:e}");

    let short = SftConfig { micro_batch_tokens: 43, ..budget };
    let e = train(&tmp.path().join("short"), short, &quiet()).unwrap_err().to_string();
    assert!(e.contains("micro_batch_tokens (43)") && e.contains("max_seq_len = 44"), "{e}");
}
