//! The external judge against a standard-library Python judge (tests/fixtures/judge):
//! verdicts in order, many questions one after another and from several threads, several
//! workers asked at once, and every way a judge can fail an error that names it and what it
//! did, after which it is not asked again.

use std::path::PathBuf;
use std::process::Command;

use artist_math::{Judge, JudgeConfig, Verdict};

fn judge(mode: &str, timeout_s: f64) -> Result<Judge, artist_math::JudgeError> {
    judges(&[mode], timeout_s, 1)
}

fn judges(mode: &[&str], timeout_s: f64, workers: usize) -> Result<Judge, artist_math::JudgeError> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/judge/judge.py");
    let mut command = vec!["python3".into(), script.to_string_lossy().into_owned()];
    command.extend(mode.iter().map(|m| m.to_string()));
    Judge::spawn(JudgeConfig { command, timeout_s, workers })
}

/// The verdicts' `correct`s, asked of the workers at once.
fn corrects(j: &Judge, questions: &[(&str, &str, &str)]) -> Result<Vec<bool>, artist_math::JudgeError> {
    let questions: Vec<artist_math::Question<'_>> = (questions.iter())
        .map(|&(problem, completion, answer)| artist_math::Question { problem, completion, answer, state: None })
        .collect();
    Ok(j.verdicts(&questions)?.iter().map(|v| v.correct).collect())
}

fn python_available() -> bool {
    Command::new("python3").arg("-c").arg("pass").status().is_ok_and(|s| s.success())
}

#[test]
fn verdicts_come_back_in_order() {
    if !python_available() {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let j = judge("contains", 10.0).unwrap();
    assert!(j.correct("q", "so it is 42.", "42").unwrap());
    assert!(!j.correct("q", "so it is 41.", "42").unwrap());
    // Text that needs escaping travels as JSON.
    assert!(j.correct("q", "line one\n\"quoted\" \\ é and 7", "7").unwrap());
    for i in 0..200 {
        assert_eq!(j.correct("q", &format!("answer {i}"), "7").unwrap(), format!("answer {i}").contains('7'));
    }
    // Several threads share one judge; each gets its own verdict.
    let j = std::sync::Arc::new(j);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let j = std::sync::Arc::clone(&j);
            std::thread::spawn(move || {
                (0..20).all(|i| j.correct("q", &format!("{t}-{i}"), &format!("{t}-{i}")).unwrap())
            })
        })
        .collect();
    assert!(handles.into_iter().all(|h| h.join().unwrap()));
    // The problem travels with each question.
    let j = judge("echo-problem", 10.0).unwrap();
    assert!(j.correct("What is 6 * 7?", "What is 6 * 7?", "42").unwrap());
    assert!(!j.correct("What is 6 * 7?", "42", "42").unwrap());
}

#[test]
fn a_failing_judge_is_an_error_naming_it() {
    if !python_available() {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let e = judge("garbage", 10.0).unwrap().correct("q", "x", "1").unwrap_err().to_string();
    assert!(e.contains("judge.py garbage") && e.contains("answered \"hello\", not JSON"), "{e}");
    let e = judge("wrong-shape", 10.0).unwrap().correct("q", "x", "1").unwrap_err().to_string();
    assert!(e.contains("no boolean \"correct\""), "{e}");
    let once = judge("once", 10.0).unwrap();
    assert!(once.correct("q", "1", "1").unwrap());
    let e = once.correct("q", "1", "1").unwrap_err().to_string();
    assert!(e.contains("exited"), "{e}");
    // Not asked again once broken.
    assert_eq!(once.correct("q", "1", "1").unwrap_err().to_string(), e);
    let slow = judge("slow", 0.3).unwrap();
    let e = slow.correct("q", "1", "1").unwrap_err().to_string();
    assert!(e.contains("no verdict within 0.3 s"), "{e}");
    // Its late verdict is never taken for the next question's.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(slow.correct("q", "2", "3").unwrap_err().to_string().contains("no verdict within 0.3 s"));

    let e = Judge::spawn(JudgeConfig { command: vec!["/nonexistent/judge".into()], timeout_s: 1.0, workers: 1 })
        .err()
        .unwrap();
    assert!(e.to_string().contains("/nonexistent/judge") && e.to_string().contains("cannot start it"), "{e}");
    let e = Judge::spawn(JudgeConfig::default()).err().unwrap().to_string();
    assert!(e.contains("the command is empty"), "{e}");
    let e = judge("contains", 0.0).err().unwrap().to_string();
    assert!(e.contains("timeout_s"), "{e}");
}

/// Four workers are asked at once: the "meet" judge answers only when all four have a
/// question (one worker asked four times in turn would wait for the others and time out),
/// each told its own number; verdicts of many questions come back in their order; a worker
/// that fails names itself and fails every question after it.
#[test]
fn workers_answer_at_once() {
    if !python_available() {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let meet = tempfile::tempdir().unwrap();
    let dir = meet.path().to_str().unwrap();
    let j = judges(&["meet", dir, "4"], 30.0, 4).unwrap();
    assert_eq!(j.workers(), 4);
    let questions: Vec<(&str, &str, &str)> = (0..4).map(|i| ("q", if i % 2 == 0 { "7" } else { "8" }, "7")).collect();
    assert_eq!(corrects(&j, &questions).unwrap(), [true, false, true, false]);
    let mut met: Vec<String> =
        std::fs::read_dir(meet.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    met.sort();
    assert_eq!(met, ["worker-0", "worker-1", "worker-2", "worker-3"]);
    // One worker would have waited alone.
    let alone = tempfile::tempdir().unwrap();
    let one = judges(&["meet", alone.path().to_str().unwrap(), "2"], 1.0, 1).unwrap();
    assert!(corrects(&one, &questions[..2]).unwrap_err().to_string().contains("no verdict within 1 s"));

    let j = judges(&["contains"], 10.0, 3).unwrap();
    let texts: Vec<String> = (0..300).map(|i| format!("answer {i}")).collect();
    let questions: Vec<(&str, &str, &str)> = texts.iter().map(|t| ("q", t.as_str(), "7")).collect();
    let want: Vec<bool> = texts.iter().map(|t| t.contains('7')).collect();
    assert_eq!(corrects(&j, &questions).unwrap(), want);

    let once = judges(&["once"], 10.0, 2).unwrap();
    let e = corrects(&once, &questions[..6]).unwrap_err().to_string();
    assert!(e.contains("judge.py once") && e.contains("worker ") && e.contains("exited"), "{e}");
    assert_eq!(once.correct("q", "1", "1").unwrap_err().to_string(), e, "not asked again");

    for bad in [0, artist_math::MAX_JUDGE_WORKERS + 1] {
        let e = judges(&["contains"], 10.0, bad).err().unwrap().to_string();
        assert!(e.contains("workers must be from 1 to 256"), "{e}");
    }
}

/// A verdict line: a boolean, a score from 0 to 1 (correct at 1), or both (the judge's
/// "correct" stands); anything else is an error that quotes it.
#[test]
fn verdict_lines() {
    let ok = |line: &str| Verdict::parse(line).unwrap();
    assert_eq!(ok(r#"{"correct": true}"#), Verdict { correct: true, score: 1.0 });
    assert_eq!(ok(r#"{"correct": false}"#), Verdict { correct: false, score: 0.0 });
    assert_eq!(ok(r#"{"score": 0.75}"#), Verdict { correct: false, score: 0.75 });
    assert_eq!(ok(r#"{"score": 1}"#), Verdict { correct: true, score: 1.0 });
    assert_eq!(ok(r#"{"score": 0}"#), Verdict { correct: false, score: 0.0 });
    assert_eq!(ok(r#"{"score": 0.5, "correct": true}"#), Verdict { correct: true, score: 0.5 });
    assert_eq!(ok(r#"{"score": 1.0, "correct": false, "why": "style"}"#), Verdict { correct: false, score: 1.0 });
    for (line, needle) in [
        (r#"{"score": 1.5}"#, "not a number from 0 to 1"),
        (r#"{"score": -0.1}"#, "not a number from 0 to 1"),
        (r#"{"score": "1"}"#, "not a number from 0 to 1"),
        (r#"{"correct": "yes"}"#, "not a boolean"),
        (r#"{"ok": true}"#, "no boolean \"correct\" and no \"score\""),
        ("[true]", "no boolean"),
        ("yes", "not JSON"),
    ] {
        let e = Verdict::parse(line).unwrap_err();
        assert!(e.contains(needle) && e.contains(line.trim_matches('"')), "{line}: {e}");
    }
}
