//! `train --mode sft` as a user runs it: a resumed run equals a straight one bit for bit,
//! a run killed in the middle of a save leaves the previous checkpoint whole, the export
//! scores like the trained weights, and bad input ends in a clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use artist::train::checkpoint;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A bf16 model (so f32 master weights are in play), six examples, batches of four that
/// straddle epochs, shuffled, two micro-batches per step, a warmup + cosine schedule.
fn sft_args(out: &Path) -> Vec<String> {
    let model = fixtures().join("qwen2/tiny-bf16");
    let data = fixtures().join("training/sft/gqa-cosine/data.jsonl");
    [
        "--mode",
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "2",
        "--lr-schedule",
        "cosine",
        "--seed",
        "7",
        "--save-every",
        "2",
        "--keep-last",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn train(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train"));
    cmd.args(args).arg("--no-progress");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("train runs")
}

#[track_caller]
fn ok(out: &Output) {
    assert!(out.status.success(), "train failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[track_caller]
fn fails_cleanly(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should have failed");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[track_caller]
fn same_bytes(a: &Path, b: &Path) {
    assert!(bytes(a) == bytes(b), "{} and {} differ", a.display(), b.display());
}

fn resume(dir: &Path) -> Output {
    train(&["--resume".into(), dir.to_str().unwrap().into()], &[])
}

#[test]
fn stopped_and_resumed_equals_straight_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    ok(&train(&sft_args(&a), &[]));
    let mut first = sft_args(&b);
    first.extend(["--stop-after".into(), "3".into()]);
    ok(&train(&first, &[]));
    assert!(!b.join("final").exists(), "a stopped run exports no final model");
    let latest = checkpoint::latest(&b).unwrap().unwrap();
    assert!(latest.ends_with("step-00000003"), "{}", latest.display());
    ok(&resume(&b));
    same_bytes(&a.join("final/model.safetensors"), &b.join("final/model.safetensors"));
    let ck = "checkpoints/step-00000006";
    same_bytes(&a.join(ck).join("optimizer.safetensors"), &b.join(ck).join("optimizer.safetensors"));
    let (ma, mb) = metrics_of(&a, &b);
    assert_eq!(mb.len(), 6);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(
            (&x["step"], &x["loss"], &x["grad_norm"], &x["lr"]),
            (&y["step"], &y["loss"], &y["grad_norm"], &y["lr"])
        );
    }
    // The export is a Hugging Face model directory our loader (and `score`) reads back.
    let exported = artist::train::checkpoint::read_state(&a.join(ck)).unwrap();
    assert_eq!(exported.step, 6);
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
        assert!(a.join("final").join(f).exists(), "final/{f}");
    }
}

#[test]
fn killed_mid_save_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, c) = (tmp.path().join("straight"), tmp.path().join("killed"));
    ok(&train(&sft_args(&a), &[]));
    let out = train(&sft_args(&c), &[("ARTIST_FAULT_ABORT_IN_SAVE", "4")]);
    assert!(!out.status.success(), "the run should have died");
    let root = c.join("checkpoints");
    let partial: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".tmp-step-00000004"))
        .collect();
    assert_eq!(partial.len(), 1, "the half-written checkpoint is left under a temporary name");
    assert!(root.join(&partial[0]).join("model.safetensors").exists());
    assert!(!root.join(&partial[0]).join(checkpoint::STATE_FILE).exists());
    let latest = checkpoint::latest(&c).unwrap().unwrap();
    assert!(latest.ends_with("step-00000002"), "{}", latest.display());
    // The previous checkpoint loads: model, trainer state, optimiser state.
    let model = artist::model::Qwen2::load(&latest).unwrap();
    let state = checkpoint::read_state(&latest).unwrap();
    assert_eq!(state.step, 2);
    let params = model.params();
    let mut opt = artist::optim::AdamW::new(&params, Default::default()).unwrap();
    checkpoint::load_optimizer(&latest, &mut opt, &state).unwrap();
    // Resuming finishes the run exactly as if nothing had happened.
    ok(&resume(&c));
    same_bytes(&a.join("final/model.safetensors"), &c.join("final/model.safetensors"));
    assert!(!root.read_dir().unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(".tmp-")));
}

#[test]
fn exported_model_scores_like_the_trained_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let model = fixtures().join("qwen2/tiny-gqa");
    let data = fixtures().join("training/sft/gqa-cosine/data.jsonl");
    let args: Vec<String> = ["--mode", "sft", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()]
        .into_iter()
        .chain(["--out", run.to_str().unwrap(), "--steps", "3", "--lr", "1e-2", "--no-shuffle"])
        .map(String::from)
        .collect();
    ok(&train(&args, &[]));
    let ids = "19,137,256,180,158,28,50,253";
    let score = |dir: &Path| -> Vec<f64> {
        let out = Command::new(env!("CARGO_BIN_EXE_score"))
            .args(["--model", dir.to_str().unwrap(), "--token-ids", ids, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (before, after, ckpt) =
        (score(&model), score(&run.join("final")), score(&run.join("checkpoints/step-00000003")));
    assert_eq!(after, ckpt, "the final export and the last checkpoint hold the same weights");
    assert_ne!(before, after, "three steps at lr 1e-2 change the model");
    // The same logprobs as the weights in memory at the end of training.
    let trained = artist::model::Qwen2::load(&run.join("final")).unwrap();
    let ids: Vec<u32> = artist::cli::parse_ids(ids).unwrap();
    let lp = trained.token_logprobs(&ids).unwrap();
    for (a, b) in lp.iter().zip(&after) {
        assert!((*a as f64 - b).abs() < 1e-6);
    }
}

/// SFT on a Qwen3 checkpoint (q/k norms trained with the rest): the export is a Qwen3
/// checkpoint again, holding the last checkpoint's weights, and the q/k norms moved.
#[test]
fn sft_on_a_qwen3_model_exports_qwen3() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let model = fixtures().join("qwen3/tiny-qwen3");
    let data = fixtures().join("training/sft/gqa-cosine/data.jsonl");
    let args: Vec<String> = ["--mode", "sft", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()]
        .into_iter()
        .chain(["--out", run.to_str().unwrap(), "--steps", "2", "--lr", "1e-2", "--no-shuffle"])
        .map(String::from)
        .collect();
    ok(&train(&args, &[]));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("final/config.json")).unwrap()).unwrap();
    assert_eq!((config["model_type"].as_str(), config["head_dim"].as_u64()), (Some("qwen3"), Some(32)), "{config}");
    let (before, after) =
        (artist::model::Qwen2::load(&model).unwrap(), artist::model::Qwen2::load(&run.join("final")).unwrap());
    let ckpt = artist::model::Qwen2::load(&run.join("checkpoints/step-00000002")).unwrap();
    let tensors = |m: &artist::model::Qwen2| -> Vec<(String, Vec<f32>)> {
        m.hf_tensors().unwrap().into_iter().map(|(n, t)| (n, t.to_f32_vec().unwrap())).collect()
    };
    assert_eq!(tensors(&after), tensors(&ckpt), "the export and the last checkpoint");
    let norm = "model.layers.1.self_attn.k_norm.weight";
    let pick = |m: &artist::model::Qwen2| tensors(m).into_iter().find(|(n, _)| n == norm).unwrap().1;
    assert_ne!(pick(&before), pick(&after), "{norm} is trained");
}

#[test]
fn bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("qwen2/tiny-gqa");
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"input_ids\":[1,2,3]}\n{\"input_ids\": [1, 2,\n").unwrap();
    let base = |data: &Path, out: &Path| -> Vec<String> {
        ["--mode", "sft", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()]
            .into_iter()
            .chain(["--out", out.to_str().unwrap(), "--steps", "2"])
            .map(String::from)
            .collect()
    };
    fails_cleanly(&train(&base(&bad, &tmp.path().join("r1")), &[]), "bad.jsonl:2");
    std::fs::write(&bad, "{\"input_ids\":[1,2,3,400]}\n").unwrap();
    fails_cleanly(&train(&base(&bad, &tmp.path().join("r2")), &[]), "vocabulary of 311");
    fails_cleanly(&resume(&tmp.path().join("nothing-here")), "run_config.json");
    let good = fixtures().join("training/sft/gqa-cosine/data.jsonl");
    let out = tmp.path().join("r3");
    ok(&train(&base(&good, &out), &[]));
    fails_cleanly(&train(&base(&good, &out), &[]), "--resume");
    fails_cleanly(&train(&["--mode".into(), "sft".into(), "--out".into(), "x".into()], &[]), "--model");
    fails_cleanly(
        &train(
            &base(&good, &tmp.path().join("r4"))
                .into_iter()
                .chain(["--lr-schedule".into(), "cos".into()])
                .collect::<Vec<_>>(),
            &[],
        ),
        "cos",
    );
    let fp8: Vec<String> =
        base(&good, &tmp.path().join("r5")).into_iter().chain(["--attention-dtype".into(), "fp8".into()]).collect();
    fails_cleanly(&train(&fp8, &[]), "compute dtype \"fp8\" is none of auto, f32 and bf16");
    let budget: Vec<String> = base(&good, &tmp.path().join("r5b"))
        .into_iter()
        .chain(["--max-seq-len", "64", "--micro-batch-tokens", "32"].map(String::from))
        .collect();
    fails_cleanly(&train(&budget, &[]), "micro_batch_tokens (32) must hold the longest sequence, max_seq_len = 64");
    // bf16 products and attention: the run trains and its settings keep the choice.
    let out = tmp.path().join("r6");
    let bf16: Vec<String> = base(&good, &out)
        .into_iter()
        .chain(["--matmul-dtype", "bf16", "--attention-dtype", "bf16"].map(String::from))
        .collect();
    ok(&train(&bf16, &[]));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run_config.json")).unwrap()).unwrap();
    assert_eq!((saved["matmul_dtype"].as_str(), saved["attention_dtype"].as_str()), (Some("bf16"), Some("bf16")));
    // A held-out file: its loss before the first step and after the last, in the summary;
    // a bad line of it is named like one of the training data.
    let out = tmp.path().join("r7");
    let eval: Vec<String> =
        base(&good, &out).into_iter().chain(["--eval-data".into(), good.to_str().unwrap().into()]).collect();
    let o = train(&eval, &[]);
    ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let lines = artist::train::metrics::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 3);
    assert_eq!(summary["eval_loss"], lines[2]["eval_loss"]);
    assert!(lines[0]["eval_loss"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert!(svg.contains("held-out loss") && svg.contains("gradient norm"));
    std::fs::write(&bad, "{\"input_ids\":[1,2,3]}\n{\"input_ids\": [1, 2,\n").unwrap();
    let eval: Vec<String> = base(&good, &tmp.path().join("r8"))
        .into_iter()
        .chain(["--eval-data".into(), bad.to_str().unwrap().into()])
        .collect();
    fails_cleanly(&train(&eval, &[]), "bad.jsonl:2");
}

/// `--config configs/artist-math.toml` on the tiny fixture and the bundled MATH-style file,
/// with `--set` overrides, into `run`.
fn grpo_args(run: &Path, extra: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = fixtures().join("qwen2/tiny-gqa");
    let data = fixtures().join("math/mini-math500.jsonl");
    let set = |kv: String| ["--set".to_string(), kv];
    let mut args: Vec<String> = vec![
        "--config".into(),
        root.join("configs/artist-math.toml").to_str().unwrap().into(),
        "--out".into(),
        run.to_str().unwrap().into(),
    ];
    for kv in [
        format!("model={:?}", model.to_str().unwrap()),
        format!("data={:?}", data.to_str().unwrap()),
        "data_preset=math500".into(),
        "steps=2".into(),
        "prompts_per_step=2".into(),
        "micro_batch_rollouts=2".into(),
        "rollout.group_size=2".into(),
        "rollout.max_turn_tokens=8".into(),
        "rollout.max_response_tokens=16".into(),
        "rollout.max_context=800".into(),
        "rollout.max_batch=4".into(),
        "save_every=1".into(),
    ] {
        args.extend(set(kv));
    }
    for kv in extra {
        args.extend(set(kv.to_string()));
    }
    args
}

/// The paper's math preset, pointed at the tiny fixture and the bundled MATH-style file:
/// two GRPO steps with the Python sandbox live, then a resumed third step.
#[test]
fn grpo_with_the_paper_preset_on_a_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("grpo");
    let set = |kv: String| ["--set".to_string(), kv];
    let args = grpo_args(&run, &[]);
    ok(&train(&args, &[]));
    let lines = artist::train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["reward"].is_number() && l["accuracy"].is_number()));
    assert!(run.join("grpo_config.toml").exists());
    // Resume with a longer run: one more step.
    ok(&train(&["--resume".into(), run.to_str().unwrap().into(), "--set".into(), "steps=3".into()], &[]));
    assert_eq!(artist::train::metrics::read(&run.join("metrics.jsonl")).unwrap().len(), 3);
    // A misspelt key is an error that names it.
    let mut bad = args.clone();
    bad.extend(set("rollout.group_sise=2".into()));
    bad[3] = tmp.path().join("other").to_str().unwrap().into();
    fails_cleanly(&train(&bad, &[]), "group_sise");
    // bf16 products in the loss and the rollouts, bf16 attention in the loss.
    let bf16_run = tmp.path().join("bf16");
    let bf16 = [
        "steps=1",
        "matmul_dtype=\"bf16\"",
        "attention_dtype=\"bf16\"",
        "rollout.matmul_dtype=\"bf16\"",
        "rollout.kv_cache_dtype=\"bf16\"",
    ];
    ok(&train(&grpo_args(&bf16_run, &bf16), &[]));
    let saved = std::fs::read_to_string(bf16_run.join("grpo_config.toml")).unwrap();
    for key in ["matmul_dtype = \"bf16\"", "attention_dtype = \"bf16\"", "kv_cache_dtype = \"bf16\""] {
        assert!(saved.contains(key), "grpo_config.toml lacks {key}:\n{saved}");
    }
    assert_eq!(saved.matches("matmul_dtype = \"bf16\"").count(), 2, "{saved}");
    // Held-out evaluation from a file: before the first step and after the last.
    let eval_run = tmp.path().join("eval");
    let data = fixtures().join("math/mini-math500.jsonl");
    let eval = [format!("eval.data={:?}", data.to_str().unwrap()), "eval.limit=2".into(), "steps=1".into()];
    ok(&train(&grpo_args(&eval_run, &eval.each_ref().map(String::as_str)), &[]));
    let lines = artist::train::metrics::read(&eval_run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["eval_accuracy"].is_number()), "{lines:?}");
    let missing = ["eval.data=\"/nonexistent/held-out.jsonl\"", "steps=1"];
    fails_cleanly(&train(&grpo_args(&tmp.path().join("eval2"), &missing), &[]), "/nonexistent/held-out.jsonl");
}

/// `[judge]`: an external judge grades the rollouts instead of math equivalence; the step's
/// accuracy is the fraction it passed, each logged rollout's `correct` its verdict: a judge
/// passing completions that hold a "5" (random text sometimes does), and one passing every
/// completion (accuracy 1, where math equivalence passes no random text); a judge that
/// answers nonsense stops the run with an error naming it.
#[test]
fn grpo_with_an_external_judge() {
    let tmp = tempfile::tempdir().unwrap();
    let judge = fixtures().join("judge/judge.py");
    let command = |mode: &str| format!("judge.command=[\"python3\", {:?}, \"{mode}\"]", judge.to_str().unwrap());
    let run = tmp.path().join("judged");
    let five = command("five");
    let sets = [five.as_str(), "steps=1", "log_rollouts=4", "rollout.max_turn_tokens=16", "rollout.temperature=1.0"];
    ok(&train(&grpo_args(&run, &sets), &[]));
    let lines = artist::train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    let rollouts = artist::train::metrics::read(&run.join(artist::train::metrics::ROLLOUTS_FILE)).unwrap();
    assert_eq!(rollouts.len(), 4);
    let judged: Vec<bool> = rollouts.iter().map(|r| r["completion"].as_str().unwrap().contains('5')).collect();
    for (r, &want) in rollouts.iter().zip(&judged) {
        assert_eq!(r["correct"].as_bool(), Some(want), "{r}");
    }
    let accuracy = judged.iter().filter(|&&j| j).count() as f64 / 4.0;
    assert_eq!(lines[0]["accuracy"].as_f64(), Some(accuracy), "{}", lines[0]);
    // Partial credit: the answer reward is 2 x the judge's score, the accuracy its "correct".
    let partial = command("partial");
    let run = tmp.path().join("partial");
    ok(&train(&grpo_args(&run, &[partial.as_str(), "steps=1", "log_rollouts=4", "rollout.max_turn_tokens=16"]), &[]));
    let lines = artist::train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    let rollouts = artist::train::metrics::read(&run.join(artist::train::metrics::ROLLOUTS_FILE)).unwrap();
    let fives: Vec<bool> = rollouts.iter().map(|r| r["completion"].as_str().unwrap().contains('5')).collect();
    let n5 = fives.iter().filter(|&&f| f).count() as f64;
    let reward_answer = (2.0 * 0.5 * n5 + 2.0 * 0.25 * (4.0 - n5)) / 4.0;
    assert_eq!(lines[0]["accuracy"].as_f64(), Some(n5 / 4.0), "{}", lines[0]);
    assert!((lines[0]["reward_answer"].as_f64().unwrap() - reward_answer).abs() < 1e-9, "{}", lines[0]);
    // A rollout's final state reaches the judge: with the MCP server's state tool read as
    // each rollout ends (a fresh server each, since the tiny model makes no call), every
    // answer carries one; without it, none does.
    let server = fixtures().join("mcp/server.py");
    let mcp = format!("mcp.command=[\"python3\", {:?}]", server.to_str().unwrap());
    let has_state = command("has-state");
    let with_state = |run: &str, state: bool| {
        let mut sets = vec![has_state.as_str(), "tool=\"mcp\"", mcp.as_str(), "steps=1", "log_rollouts=4"];
        sets.extend(["mcp.sessions=\"rollout\"", "rollout.max_turn_tokens=16", "rollout.max_context=2400"]);
        if state {
            sets.push("mcp.state_tool=\"state\"");
        }
        let run = tmp.path().join(run);
        ok(&train(&grpo_args(&run, &sets), &[]));
        let lines = artist::train::metrics::read(&run.join("metrics.jsonl")).unwrap();
        let rollouts = artist::train::metrics::read(&run.join(artist::train::metrics::ROLLOUTS_FILE)).unwrap();
        (lines[0]["accuracy"].as_f64(), rollouts)
    };
    let (accuracy, rollouts) = with_state("state", true);
    assert_eq!(accuracy, Some(1.0));
    for r in &rollouts {
        assert_eq!(r["final_state"], r#"{"count": 0, "last": null}"#, "{r}");
    }
    let (accuracy, rollouts) = with_state("no-state", false);
    assert_eq!(accuracy, Some(0.0));
    assert!(rollouts.iter().all(|r| r.get("final_state").is_none()));
    let always = command("always");
    let run = tmp.path().join("always");
    ok(&train(&grpo_args(&run, &[always.as_str(), "steps=1", "log_rollouts=4"]), &[]));
    let lines = artist::train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        (lines[0]["accuracy"].as_f64(), lines[0]["reward_answer"].as_f64()),
        (Some(1.0), Some(2.0)),
        "{}",
        lines[0]
    );
    // Four workers grade the step's rollouts at once: the "meet" judge answers only when
    // four are asked together, long before its 10 s timeout.
    let meet = tmp.path().join("meet");
    std::fs::create_dir(&meet).unwrap();
    let meeting = format!(
        "judge.command=[\"python3\", {:?}, \"meet\", {:?}, \"4\"]",
        judge.to_str().unwrap(),
        meet.to_str().unwrap()
    );
    let sets = [meeting.as_str(), "judge.workers=4", "judge.timeout_s=10", "steps=1"];
    ok(&train(&grpo_args(&tmp.path().join("met"), &sets), &[]));
    assert_eq!(std::fs::read_dir(&meet).unwrap().count(), 4);
    let out = train(&grpo_args(&tmp.path().join("none"), &[five.as_str(), "judge.workers=0", "steps=1"]), &[]);
    fails_cleanly(&out, "judge.workers must be from 1 to 256, got 0");
    let garbage = command("garbage");
    let out = train(&grpo_args(&tmp.path().join("bad"), &[garbage.as_str(), "steps=1"]), &[]);
    fails_cleanly(&out, "judge.py garbage");
    fails_cleanly(&out, "not JSON");
}

/// `train --config configs/artist-fc.toml`: a BFCL run without data, or with a file that
/// is not there, is a clear error naming what is wrong.
#[test]
fn function_calling_config_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let config = fixtures().join("../../configs/artist-fc.toml");
    let model = fixtures().join("qwen2/tiny-gqa");
    let base = |extra: &str| -> Vec<String> {
        vec![
            "--config".into(),
            config.to_str().unwrap().into(),
            "--set".into(),
            format!("model={:?}", model.to_str().unwrap()),
            "--set".into(),
            extra.into(),
            "--out".into(),
            tmp.path().join(format!("run{}", extra.len())).to_str().unwrap().into(),
        ]
    };
    fails_cleanly(&train(&base("bfcl.questions=[]"), &[]), "bfcl.questions");
    fails_cleanly(&train(&base("bfcl.questions=[\"/nonexistent/q.json\"]"), &[]), "/nonexistent/q.json");
    fails_cleanly(&train(&base("bfcl.max_steps_per_turn=0"), &[]), "max_steps_per_turn");
    fails_cleanly(&train(&base("bfcl.firsst=3"), &[]), "firsst");
}

/// `sft_args` on the f32 model for 3 steps (checkpoints at steps 2 and 3).
fn dp_args(out: &Path) -> Vec<String> {
    let mut args = sft_args(out);
    let set = |args: &mut Vec<String>, flag: &str, value: &str| {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.into();
    };
    set(&mut args, "--model", fixtures().join("qwen2/tiny-gqa").to_str().unwrap());
    set(&mut args, "--steps", "3");
    args
}

fn final_weights(run: &Path) -> Vec<Vec<f32>> {
    let model = artist::model::Qwen2::load(&run.join("final")).unwrap();
    model.params().iter().map(|p| p.value().to_vec::<f32>().unwrap()).collect()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    names.sort();
    names
}

/// Two ranks started by `--nproc-per-node 2` reach the single process's weights (the
/// batches of four split two and two); rank 0 alone printed the summary and wrote the
/// metrics and checkpoints. Gradients of 4096 values or more (the embeddings, the
/// projections) go around the TCP ring, the smaller ones through rank 0.
#[test]
fn nproc_per_node_equals_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("single"), tmp.path().join("ranks"));
    ok(&train(&dp_args(&a), &[]));
    let mut args = dp_args(&b);
    args.extend(["--nproc-per-node", "2", "--dist-timeout", "60", "--tcp-ring-min", "4096"].map(String::from));
    let out = train(&args, &[]);
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one summary, rank 0's: {stdout}");
    let diff = max_abs_diff(&final_weights(&a), &final_weights(&b));
    eprintln!("2 processes vs one: max |weight difference| {diff:e}");
    assert!(diff <= 1e-5, "max weight difference {diff:e}");
    let (ma, mb) = metrics_of(&a, &b);
    assert_eq!(mb.len(), 3, "one line per step");
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!((&x["step"], &x["target_tokens"], &x["lr"]), (&y["step"], &y["target_tokens"], &y["lr"]));
        let (gx, gy) = (x["grad_norm"].as_f64().unwrap(), y["grad_norm"].as_f64().unwrap());
        assert!((gx - gy).abs() <= 1e-5 * gx, "gradient norms {gx} vs {gy}");
    }
    let names = dir_names(&b.join("checkpoints"));
    assert_eq!(names, dir_names(&a.join("checkpoints")));
    assert_eq!(names, ["latest", "step-00000002", "step-00000003"]);
}

/// A rank that fails once the group has formed stops the others, and the launcher exits
/// non-zero naming it (not the ranks that stopped because of it).
#[test]
fn a_failing_rank_is_named_by_the_launcher() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = dp_args(&tmp.path().join("run"));
    args.extend(["--nproc-per-node", "2", "--dist-timeout", "60"].map(String::from));
    let t0 = std::time::Instant::now();
    let out = train(&args, &[("ARTIST_FAULT_FAIL_RANK", "1")]);
    fails_cleanly(&out, "rank 1 of 2 failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ranks also stopped: 0"), "{err}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(50), "took {:?}", t0.elapsed());
}

/// `--comm nccl` where the ranks cannot use NCCL (CPU ranks) is refused by every rank,
/// naming the ranks and why, instead of training over TCP or hanging.
#[test]
fn comm_nccl_on_ranks_without_it_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = dp_args(&tmp.path().join("run"));
    args.extend(
        ["--nproc-per-node", "2", "--dist-timeout", "60", "--device", "cpu", "--comm", "nccl"].map(String::from),
    );
    let out = train(&args, &[]);
    fails_cleanly(&out, "--comm nccl: rank(s) [0, 1] cannot use NCCL (here: the rank runs on the CPU)");
    assert!(!tmp.path().join("run/final").exists());
}

/// A rank started by an outside launcher with an incomplete environment says which
/// variable is missing.
#[test]
fn an_incomplete_rank_environment_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = train(&dp_args(&tmp.path().join("run")), &[("RANK", "1"), ("WORLD_SIZE", "2")]);
    fails_cleanly(&out, "LOCAL_RANK");
}

/// Runs `train` with `args` and `--device cuda`: on the GPU where the driver finds one, else
/// on the CPU emulator of the CUDA backend; it must succeed on that device.
fn train_on_cuda(mut args: Vec<String>) {
    args.extend(["--device".into(), "cuda".into()]);
    let env: &[(&str, &str)] =
        if artist::tensor::cuda::driver_present() { &[] } else { &[("ARTIST_CUDA", "emulator")] };
    let out = train(&args, env);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("device cuda:0"));
}

/// The metrics lines of two runs.
fn metrics_of(a: &Path, b: &Path) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let read = |run: &Path| artist::train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    (read(a), read(b))
}

/// `--device cuda`: the same SFT run on the CUDA backend (the CPU emulator of it here, a GPU
/// where the suite runs on one) follows the CPU run: per-step losses and gradient norms
/// within 1e-4 relative, final weights within 1e-4.
#[test]
fn sft_on_the_cuda_backend_follows_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("cpu"), tmp.path().join("cuda"));
    let mut cpu = dp_args(&a);
    cpu.extend(["--device".into(), "cpu".into()]);
    ok(&train(&cpu, &[]));
    let mut gpu = dp_args(&b);
    // f32 products and attention, as on the CPU (a GPU's default, `auto`, is bf16).
    gpu.extend(["--matmul-dtype", "f32", "--attention-dtype", "f32"].map(Into::into));
    train_on_cuda(gpu);
    let (ma, mb) = metrics_of(&a, &b);
    assert_eq!(mb.len(), 3);
    for (x, y) in ma.iter().zip(&mb) {
        for key in ["loss", "grad_norm"] {
            let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!((p - q).abs() <= 1e-4 * p.abs(), "step {}: {key} {p} on the CPU, {q} on CUDA", x["step"]);
        }
    }
    let diff = max_abs_diff(&final_weights(&a), &final_weights(&b));
    eprintln!("CUDA vs CPU after 3 SFT steps: max |weight difference| {diff:e}");
    assert!(diff <= 1e-4, "max weight difference {diff:e}");
}

/// `--set` overrides for GRPO runs on the tiny model, which earns no reward: the calculator
/// as the tool, and a KL term (beta 0.5) against a copy of the model perturbed by up to
/// 0.15 per weight, written under `dir`, so that the runs make real updates to compare.
fn kl_to_a_perturbed_copy(dir: &Path) -> Vec<String> {
    let reference = dir.join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    let src = fixtures().join("qwen2/tiny-gqa");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), reference.join(f)).unwrap();
        }
    }
    let m = artist::model::Qwen2::load(&src).unwrap();
    for p in m.params() {
        p.value()
            .update_f32(|v| v.iter_mut().enumerate().for_each(|(i, x)| *x += 0.05 * ((i % 7) as f32 - 3.0)))
            .unwrap();
    }
    m.save_safetensors(&reference.join("model.safetensors")).unwrap();
    vec![
        "tool=\"calculator\"".to_string(),
        "grpo.beta=0.5".into(),
        format!("reference_model={:?}", reference.to_str().unwrap()),
    ]
}

/// The weights of a run's latest checkpoint, as f32.
fn last_checkpoint_weights(run: &Path) -> Vec<Vec<f32>> {
    let dir = checkpoint::latest(run).unwrap().expect("a checkpoint");
    let model = artist::model::Qwen2::load(&dir).unwrap();
    model
        .params()
        .iter()
        .map(|p| p.value().to_dtype(artist::tensor::DType::F32).unwrap().to_vec::<f32>().unwrap())
        .collect()
}

/// The largest |x - y| over two models' weights (NaN if any difference is NaN).
fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), b.iter().map(Vec::len).collect::<Vec<_>>());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, |m, x| if x.is_nan() || x > m { x } else { m })
}

/// Math GRPO over two ranks started by `--nproc-per-node 2` reaches one process's weights on
/// the same global batches (each rank plays one prompt's group of the two per step). The
/// tiny model earns no reward, so gradients come from a KL term against a perturbed copy of
/// itself: the ranks must agree on real updates, not only on weight decay.
#[test]
fn grpo_nproc_per_node_equals_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("single"), tmp.path().join("ranks"));
    let extra = kl_to_a_perturbed_copy(tmp.path());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    ok(&train(&grpo_args(&a, &extra), &[]));
    let mut args = grpo_args(&b, &extra);
    args.extend(["--nproc-per-node", "2", "--dist-timeout", "120"].map(String::from));
    let out = train(&args, &[]);
    ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "rank 0 alone prints the summary");
    let diff = max_abs_diff(&last_checkpoint_weights(&a), &last_checkpoint_weights(&b));
    eprintln!("GRPO on 2 processes vs one: max |weight difference| {diff:e}");
    assert!(diff <= 1e-5, "max weight difference {diff:e}");
    let (ma, mb) = metrics_of(&a, &b);
    assert_eq!(mb.len(), 2);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x["reward"], y["reward"], "step {}", x["step"]);
        assert!(x["grad_norm"].as_f64().unwrap() > 0.0, "step {}: gradients flow", x["step"]);
        let (p, q) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((p - q).abs() <= 1e-5 * p.abs().max(1e-6), "step {}: loss {p} vs {q}", x["step"]);
    }
}

/// `--device cuda` for GRPO: rollouts decoded and sampled on the CUDA backend (the CPU
/// emulator of it here, a GPU where the suite runs on one), the loss, its backward and
/// AdamW there too, all in f32, follow the CPU run. The GPU sampler draws as the host one
/// does from the same logits, so the rollouts are the same tokens (same lengths, tool calls
/// and rewards); the per-step KL, loss and gradient norm agree within 1e-4 relative, and the
/// final weights within 1e-4.
#[test]
fn grpo_on_the_cuda_backend_follows_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("cpu"), tmp.path().join("cuda"));
    let mut extra = kl_to_a_perturbed_copy(tmp.path());
    extra.extend(
        ["matmul_dtype", "attention_dtype", "rollout.matmul_dtype", "rollout.kv_cache_dtype"]
            .map(|k| format!("{k}=\"f32\"")),
    );
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut cpu = grpo_args(&a, &extra);
    cpu.extend(["--device".into(), "cpu".into()]);
    ok(&train(&cpu, &[]));
    train_on_cuda(grpo_args(&b, &extra));
    let (ma, mb) = metrics_of(&a, &b);
    assert_eq!((ma.len(), mb.len()), (2, 2));
    for (x, y) in ma.iter().zip(&mb) {
        for key in ["reward", "response_tokens", "tool_calls_per_rollout", "truncated"] {
            assert_eq!(x[key], y[key], "step {}: {key} on the CPU and on CUDA", x["step"]);
        }
        assert!(x["grad_norm"].as_f64().unwrap() > 0.0, "step {}: gradients flow", x["step"]);
        for key in ["kl", "loss", "grad_norm"] {
            let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!((p - q).abs() <= 1e-4 * p.abs().max(1e-6), "step {}: {key} {p} on the CPU, {q} on CUDA", x["step"]);
        }
    }
    let diff = max_abs_diff(&last_checkpoint_weights(&a), &last_checkpoint_weights(&b));
    eprintln!("CUDA vs CPU after 2 GRPO steps: max |weight difference| {diff:e}");
    assert!(diff <= 1e-4, "max weight difference {diff:e}");
}

/// GRPO on `--device cuda` with every dtype left at `auto`, a GPU's defaults: bf16 products,
/// attention and KV cache in the rollouts and the loss, pi_old recomputed. One step must run
/// through (rollouts, the tensor-core attention forward and backward, AdamW), with finite
/// figures, gradients that flow, and the sampler's logprobs close to the trainer's: a mean
/// gap below 0.1 nats (bf16 rounding puts it near 0.01).
#[test]
fn grpo_with_a_gpus_default_dtypes_on_the_cuda_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("cuda");
    let mut extra = kl_to_a_perturbed_copy(tmp.path());
    extra.push("steps=1".into());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    train_on_cuda(grpo_args(&run, &extra));
    let saved = std::fs::read_to_string(run.join("grpo_config.toml")).unwrap();
    assert!(saved.contains("matmul_dtype = \"auto\""), "{saved}");
    let m = &artist::train::metrics::read(&run.join("metrics.jsonl")).unwrap()[0];
    for key in ["kl", "loss", "grad_norm", "sampler_logprob_gap"] {
        assert!(m[key].as_f64().is_some_and(f64::is_finite), "{key}: {}", m[key]);
    }
    assert!(m["grad_norm"].as_f64().unwrap() > 0.0, "gradients flow");
    let gap = m["sampler_logprob_gap"].as_f64().unwrap();
    eprintln!("bf16 on CUDA: sampler vs trainer mean |logprob gap| {gap:e}");
    assert!(gap < 0.1, "sampler vs trainer logprob gap {gap}");
}

/// `--lora-rank`: the run trains adapters on a bf16 model and exports them as PEFT does
/// (`final/`) beside the merged model (`merged/`); a target that is not a projection is
/// refused by name.
#[test]
fn sft_with_lora_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = sft_args(&out);
    args.extend(["--lora-rank", "2", "--lora-alpha", "4", "--lora-target-modules", "q_proj,v_proj"].map(String::from));
    ok(&train(&args, &[]));
    let config: serde_json::Value = serde_json::from_slice(&bytes(&out.join("final/adapter_config.json"))).unwrap();
    assert_eq!(config["target_modules"], serde_json::json!(["q_proj", "v_proj"]));
    assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(2), Some(4.0)));
    assert!(out.join("final/adapter_model.safetensors").exists() && out.join("merged/model.safetensors").exists());
    assert!(!out.join("merged/adapter_config.json").exists());
    let mut bad = sft_args(&tmp.path().join("bad"));
    bad.extend(["--lora-rank", "2", "--lora-target-modules", "lm_head"].map(String::from));
    fails_cleanly(&train(&bad, &[]), "lm_head");
}
