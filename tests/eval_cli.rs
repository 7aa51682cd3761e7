//! `eval verify` as a user runs it: one JSON verdict per input line, in order, bad lines
//! reported and skipped; the model-evaluation path refuses cleanly until it is built.

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
    fails_cleanly(&eval(&["--model", "m", "--dataset", "d.jsonl"]), "model evaluation is not built yet");
    fails_cleanly(&eval(&["--model", "m", "--dataset", "d.jsonl", "--format", "nope"]), "dataset format");
    fails_cleanly(&eval(&[]), "eval verify --jsonl");
    fails_cleanly(&eval(&["verify"]), "--jsonl");
}
