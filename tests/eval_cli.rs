//! `eval` as a user runs it: `verify` gives one JSON verdict per input line, in order, bad
//! lines reported and skipped; model evaluation runs end to end on a tiny fixture model
//! over a bundled MATH-style file, with pass@k and one JSON line per sample.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eval")).args(args).output().expect("eval runs")
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone())
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[track_caller]
fn fails_cleanly(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should have failed");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

const PAIRS: &str = r#"{"gold": "\\frac{1}{2}", "pred": "0.5"}
{"gold": "(1,2)", "pred": "[1,2)"}
{"gold": "x = 3", "pred": "$3$", "id": 7}
not json

{"gold": "5"}
{"gold": 204, "pred": "204"}
{"gold": ["a"], "pred": "a"}
{"gold": "1", "pred": ""}
{"gold": "50\\%", "pred": "\\frac{1}{2}"}
"#;

#[test]
fn verify_prints_one_verdict_per_line_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    std::fs::write(&path, PAIRS).unwrap();
    let out = lines(&eval(&["verify", "--jsonl", path.to_str().unwrap()]));
    assert_eq!(out.len(), PAIRS.lines().count());

    assert_eq!(out[0], serde_json::json!({"equal": true, "gold_normalized": "1/2", "pred_normalized": "0.5"}));
    assert_eq!(out[1]["equal"], false);
    assert_eq!(out[1]["gold_normalized"], "(1, 2)");
    assert_eq!(out[1]["pred_normalized"], "[1, 2)");
    assert_eq!(out[2]["equal"], true);
    assert_eq!(out[2]["gold_normalized"], "x = 3");
    assert_eq!(out[6]["equal"], true);
    assert_eq!(out[9]["equal"], true);
    // An unreadable answer: not equal, normalized to null.
    assert_eq!(out[8], serde_json::json!({"equal": false, "gold_normalized": "1", "pred_normalized": null}));

    let error =
        |i: usize| out[i]["error"].as_str().unwrap_or_else(|| panic!("line {} has no error: {}", i + 1, out[i]));
    assert!(error(3).starts_with("line 4: not JSON"), "{}", error(3));
    assert_eq!(error(4), "line 5: empty line");
    assert_eq!(error(5), "line 6: missing field \"pred\"");
    assert_eq!(error(7), "line 8: field \"gold\" is not a string");
    for i in [3, 4, 5, 7] {
        assert_eq!(out[i]["equal"], false);
        assert_eq!(out[i].as_object().unwrap().len(), 2, "{}", out[i]);
    }
}

#[test]
fn verify_reads_stdin_and_survives_hostile_answers() {
    let hostile = format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000));
    let input = format!(
        "{}\n{}\n",
        serde_json::json!({"gold": "2", "pred": hostile}),
        serde_json::json!({"gold": "2^2^2^2^2^2^2", "pred": "4"})
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(["verify", "--jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = lines(&child.wait_with_output().unwrap());
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["equal"], false);
    assert_eq!(out[0]["pred_normalized"], Value::Null);
    assert_eq!(out[1]["equal"], false);
}

#[test]
fn bad_invocations_fail_cleanly() {
    fails_cleanly(&eval(&["verify", "--jsonl", "/nonexistent/pairs.jsonl"]), "/nonexistent/pairs.jsonl");
    fails_cleanly(&eval(&["--model", "m", "--dataset", "/nonexistent/d.jsonl"]), "/nonexistent/d.jsonl");
    fails_cleanly(&eval(&["--model", "m", "--dataset", "d.jsonl", "--format", "nope"]), "dataset format");
    fails_cleanly(&eval(&[]), "eval verify --jsonl");
    fails_cleanly(&eval(&["verify"]), "--jsonl");
    fails_cleanly(&eval(&["--model", "m", "--dataset", "d.jsonl", "--kv-dtype", "fp8"]), "none of auto, f32 and bf16");
}

#[test]
fn evaluates_a_model_end_to_end() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    // The bundled file plus a malformed row and a row without an answer.
    let data = tmp.path().join("mini.jsonl");
    let mut text = std::fs::read_to_string(root.join("tests/fixtures/math/mini-math500.jsonl")).unwrap();
    text.push_str("{\"problem\": \"broken\"\n{\"problem\": \"no answer here\"}\n");
    std::fs::write(&data, text).unwrap();
    let model = root.join("tests/fixtures/qwen2/tiny-gqa");
    let (samples, kept) = (tmp.path().join("samples.jsonl"), tmp.path().join("kept.jsonl"));
    let out = eval(&[
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--preset",
        "math500",
        "--k",
        "2",
        "--samples",
        "3",
        "--temperature",
        "1.0",
        "--tools",
        "calculator",
        "--max-new-tokens",
        "8",
        "--out",
        samples.to_str().unwrap(),
        "--keep",
        kept.to_str().unwrap(),
        "--keep-above",
        "-0.5",
        "--keep-below",
        "0.5",
        "--json",
    ]);
    let summary = &lines(&out)[0];
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mini.jsonl:9") && err.contains("mini.jsonl:10"), "bad rows are named: {err}");
    assert_eq!((summary["problems"].as_u64(), summary["bad_rows"].as_u64()), (Some(8), Some(2)));
    let (p1, pk) = (summary["pass_at_1"].as_f64().unwrap(), summary["pass_at_k"].as_f64().unwrap());
    assert!((0.0..=1.0).contains(&p1) && pk >= p1 && pk <= 1.0, "{summary}");
    let rows: Vec<Value> =
        std::fs::read_to_string(&samples).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 24);
    for r in &rows {
        for key in ["problem", "completion", "extracted", "correct", "gold"] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
        assert!(r["response_tokens"].as_u64().unwrap() <= 8 * 9);
    }
    // maj@3 from the samples written out: per problem, the extracted answer with the most
    // equal answers among the three (the lowest sample on a tie), graded as its sample was.
    let mut voted = 0;
    for p in 0..8 {
        let mut mine: Vec<&Value> = rows.iter().filter(|r| r["problem_index"] == p).collect();
        mine.sort_by_key(|r| r["sample"].as_u64());
        let votes = |a: &str| {
            mine.iter().filter_map(|r| r["extracted"].as_str()).filter(|b| artist_math::equivalent(a, b)).count()
        };
        let best = mine.iter().filter(|r| r["extracted"].is_string()).fold(None::<(&Value, usize)>, |best, r| {
            let v = votes(r["extracted"].as_str().unwrap());
            if best.is_none_or(|(_, b)| v > b) { Some((r, v)) } else { best }
        });
        voted += best.is_some_and(|(r, _)| r["correct"] == true) as usize;
    }
    assert_eq!(summary["maj_at_n"].as_f64(), Some(voted as f64 / 8.0), "{summary}");
    // --keep: the problems whose samples were right less than half the time, as the
    // samples written out say, readable as a math500 data set with their pass rates.
    let rate = |p: u64| {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["problem_index"] == p).collect();
        mine.iter().filter(|r| r["correct"] == true).count() as f64 / mine.len() as f64
    };
    let want: Vec<u64> = (0..8).filter(|&p| rate(p) < 0.5).collect();
    let written = artist_math::MathDataset::load(&kept, &"math500".parse().unwrap()).unwrap();
    assert_eq!(written.problems.len(), want.len());
    assert_eq!(summary["kept"].as_u64(), Some(want.len() as u64));
    let kept_rows = std::fs::read_to_string(&kept).unwrap();
    for ((p, line), row) in want.iter().zip(kept_rows.lines()).zip(&written.problems) {
        let first = rows.iter().find(|r| r["problem_index"] == *p).unwrap();
        assert_eq!(
            (row.problem.as_str(), row.answer.as_str()),
            (first["problem"].as_str().unwrap(), first["gold"].as_str().unwrap())
        );
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["pass_rate"].as_f64(), Some(rate(*p)));
    }
    let bounds = eval(&[
        "--model",
        "m",
        "--dataset",
        "d.jsonl",
        "--keep",
        "k.jsonl",
        "--keep-above",
        "0.5",
        "--keep-below",
        "0.5",
    ]);
    fails_cleanly(&bounds, "--keep-above");
}

/// pass@k against its definition on small cases, through the binary's summary: with
/// greedy decoding every sample of a problem is the same, so pass@k equals pass@1.
#[test]
fn greedy_pass_at_k_equals_pass_at_1() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = eval(&[
        "--model",
        root.join("tests/fixtures/qwen2/tiny-gqa").to_str().unwrap(),
        "--dataset",
        root.join("tests/fixtures/math/mini-math500.jsonl").to_str().unwrap(),
        "--k",
        "2",
        "--temperature",
        "0",
        "--tools",
        "none",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    let s = &lines(&out)[0];
    assert_eq!(s["pass_at_1"], s["pass_at_k"]);
}

/// bf16 products and a bf16 KV cache (`--matmul-dtype bf16 --kv-dtype bf16`): the same
/// evaluation runs and reports.
#[test]
fn evaluates_with_bf16_products_and_cache() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = eval(&[
        "--model",
        root.join("tests/fixtures/qwen2/tiny-gqa").to_str().unwrap(),
        "--dataset",
        root.join("tests/fixtures/math/mini-math500.jsonl").to_str().unwrap(),
        "--temperature",
        "0",
        "--tools",
        "none",
        "--max-new-tokens",
        "4",
        "--matmul-dtype",
        "bf16",
        "--kv-dtype",
        "bf16",
        "--json",
    ]);
    let s = &lines(&out)[0];
    assert_eq!(s["problems"].as_u64(), Some(8), "{s}");
}

/// The BFCL data beside the repository, or `None` (skipped) unless CI requires it.
fn bfcl_dir() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bfcl");
    if dir.join("questions").is_dir() {
        return Some(dir);
    }
    assert!(std::env::var("ARTIST_REQUIRE_SHARED").is_err(), "ARTIST_REQUIRE_SHARED=1 but no {}", dir.display());
    eprintln!("skipped: no BFCL data at {}", dir.display());
    None
}

/// `eval --dataset Q --answers A --replay-ground-truth --json`: the stable interface
/// (`accuracy`, `entries[].{id, correct}`); `--replay-from` scores another file's calls.
#[test]
fn bfcl_replay_interface() {
    let Some(bfcl) = bfcl_dir() else { return };
    let q = bfcl.join("questions/BFCL_v4_multi_turn_miss_func.json");
    let a = bfcl.join("possible_answer/BFCL_v4_multi_turn_miss_func.json");
    let (q, a) = (q.to_str().unwrap(), a.to_str().unwrap());
    let out = lines(&eval(&["--dataset", q, "--answers", a, "--replay-ground-truth", "--json"]));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["accuracy"], 1.0);
    let entries = out[0]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 200);
    assert!(
        entries.iter().all(|e| e["correct"] == true && e["id"].as_str().unwrap().starts_with("multi_turn_miss_func_"))
    );

    // The same calls from a file, with one argument changed in entry 0 and entry 1 left out.
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(a).unwrap();
    let mut lines_out: Vec<String> = text.lines().map(str::to_owned).collect();
    let first: Value = serde_json::from_str(&lines_out[0]).unwrap();
    let changed = first.to_string().replacen("='", "='x", 1);
    assert_ne!(changed, first.to_string());
    lines_out[0] = changed;
    lines_out.remove(1);
    let file = tmp.path().join("calls.json");
    std::fs::write(&file, lines_out.join("\n")).unwrap();
    let out = lines(&eval(&[
        "--dataset",
        q,
        "--answers",
        a,
        "--replay-ground-truth",
        "--replay-from",
        file.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(out[0]["correct"], 198);
    assert_eq!(out[0]["entries"][0]["correct"], false);
    assert_eq!(out[0]["entries"][1]["correct"], false);

    // No source of calls is a clear error.
    fails_cleanly(&eval(&["--dataset", q, "--answers", a]), "--replay-ground-truth");

    // A malformed line is named.
    std::fs::write(&file, "{\"id\": \"multi_turn_miss_func_0\", \"ground_truth\": [[\"ls()\"]]}\n{bad\n").unwrap();
    let out = eval(&["--dataset", q, "--answers", a, "--replay-ground-truth", "--replay-from", file.to_str().unwrap()]);
    fails_cleanly(&out, "calls.json:2: invalid JSON");
}
