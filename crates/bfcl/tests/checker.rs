//! BFCL's multi-turn scoring: replaying the ground truth passes every entry of every
//! multi-turn file; changing one argument of one call, dropping a turn's calls, or cutting
//! a turn fails it, and the reward fractions move accordingly.

mod common;

use artist_bfcl::checker::{self, CheckOptions, Entry, GroundTruth, as_model_calls, check_entry};
use artist_bfcl::docs::ToolSet;
use artist_bfcl::{Call, LongContext, Value};
use common::*;

fn load(stem: &str) -> Option<(Vec<Entry>, Vec<GroundTruth>, std::path::PathBuf)> {
    let bfcl = bfcl_dir()?;
    let q = checker::load_questions(&bfcl.join("questions").join(format!("{stem}.json"))).unwrap();
    let a = checker::load_answers(&bfcl.join("possible_answer").join(format!("{stem}.json"))).unwrap();
    assert_eq!(q.len(), a.len());
    Some((q, a, bfcl))
}

fn tools(bfcl: &std::path::Path, e: &Entry) -> ToolSet {
    ToolSet::for_entry(&bfcl.join("func_doc"), &e.raw).unwrap()
}

fn replay_all(stem: &str, lc: Option<&LongContext>) {
    let Some((q, a, bfcl)) = load(stem) else { return };
    let mut failed = Vec::new();
    for (e, t) in q.iter().zip(&a) {
        assert_eq!(e.id, t.id);
        let docs = tools(&bfcl, e);
        let r = check_entry(e, t, &as_model_calls(t), lc, Some(&docs), CheckOptions::default()).unwrap();
        if !r.valid || r.state_fraction != 1.0 || r.function_fraction != 1.0 {
            failed.push(format!("{}: {:?} {:?}", e.id, r.error_type, r.error));
        }
    }
    assert!(
        failed.is_empty(),
        "{stem}: {} of {} entries fail on their own ground truth: {failed:?}",
        failed.len(),
        q.len()
    );
}

#[test]
fn replaying_the_ground_truth_scores_100_percent() {
    for stem in ["BFCL_v4_multi_turn_base", "BFCL_v4_multi_turn_miss_func", "BFCL_v4_multi_turn_miss_param"] {
        replay_all(stem, None);
    }
}

#[test]
fn replaying_long_context_scores_100_percent() {
    match long_context() {
        Some(lc) => replay_all("BFCL_v4_multi_turn_long_context", Some(&lc)),
        None => eprintln!("skipped: no long-context filler"),
    }
}

/// Changes the first string or number argument of the first call that has one.
fn mutate(truth: &GroundTruth) -> Option<GroundTruth> {
    let mut t = truth.clone();
    for turn in &mut t.turns {
        for call in turn.iter_mut() {
            let slot = call
                .kwargs
                .values_mut()
                .chain(call.args.iter_mut())
                .find(|v| matches!(v, Value::Str(_) | Value::Int(_) | Value::Float(_)));
            if let Some(v) = slot {
                *v = match v {
                    Value::Str(s) => Value::Str(format!("{s}_changed")),
                    Value::Int(i) => Value::Int(*i + 7),
                    Value::Float(x) => Value::Float(*x + 7.5),
                    _ => unreachable!(),
                };
                return Some(t);
            }
        }
    }
    None
}

#[test]
fn changing_one_argument_lowers_the_score() {
    let Some((q, a, bfcl)) = load("BFCL_v4_multi_turn_base") else { return };
    let (mut mutated, mut failed) = (0, 0);
    for (e, t) in q.iter().zip(&a) {
        let Some(m) = mutate(t) else { continue };
        mutated += 1;
        let docs = tools(&bfcl, e);
        let r = check_entry(e, t, &as_model_calls(&m), None, Some(&docs), CheckOptions::default()).unwrap();
        assert!(r.function_fraction < 1.0, "{}: a changed call still matched", e.id);
        if !r.valid {
            failed += 1;
        }
    }
    // Nearly every changed argument changes a result or the state; a few only touch
    // values nothing reads back (a message text nobody reads, say).
    eprintln!("{failed} of {mutated} entries fail with one argument changed");
    assert!(mutated >= 190 && failed as f64 >= 0.9 * mutated as f64, "{failed} of {mutated}");
    // Entry 1's first call is ls(a=True); changing cd's folder breaks it outright.
    let (e, t) = (&q[1], &a[1]);
    let mut m = t.clone();
    m.turns[1][0] = Call::new("cd").kwarg("folder", "no_such_dir");
    let r = check_entry(e, t, &as_model_calls(&m), None, None, CheckOptions::default()).unwrap();
    assert!(!r.valid);
    assert_eq!(r.error_type.as_deref(), Some("multi_turn:instance_state_mismatch"), "{:?}", r.error);
}

#[test]
fn turn_structure_rules() {
    let Some((q, a, _)) = load("BFCL_v4_multi_turn_base") else { return };
    let (e, t) = (&q[1], &a[1]);
    let full = as_model_calls(t);
    let opts = CheckOptions::default();
    // One turn short.
    let r = check_entry(e, t, &full[..full.len() - 1], None, None, opts).unwrap();
    assert_eq!(r.error_type.as_deref(), Some("multi_turn:force_terminated"));
    // A turn with no calls where some were expected.
    let mut empty = full.clone();
    empty[0].clear();
    let r = check_entry(e, t, &empty, None, None, opts).unwrap();
    assert_eq!(r.error_type.as_deref(), Some("multi_turn:empty_turn_model_response"));
    // Extra calls are allowed (a read-only one here), split over steps.
    let mut extra = full.clone();
    extra[0].insert(0, vec![Call::new("pwd")]);
    assert!(check_entry(e, t, &extra, None, None, opts).unwrap().valid);
    // The fractions: the first turn's calls missing. That turn only reads (ls), so the
    // state stays right while the response check fails.
    let r = check_entry(e, t, &empty, None, None, opts).unwrap();
    let total: usize = t.turns.iter().map(Vec::len).sum();
    assert!((r.function_fraction - (total - t.turns[0].len()) as f64 / total as f64).abs() < 1e-12);
    assert_eq!((r.turns[0].state_ok, r.turns[0].response_ok), (Some(true), Some(false)));
    assert_eq!(r.state_fraction, 1.0);
    // Skipping a turn that changes the state (turn 1: cd, mv) lowers the state fraction.
    let mut skip = full.clone();
    skip[1].clear();
    let r = check_entry(e, t, &skip, None, None, opts).unwrap();
    assert!(r.state_fraction < 1.0 && r.turns[1].state_ok == Some(false), "{:?}", r.turns[1]);
    // Empty ground-truth turns: calls there are not checked unless irrelevance is on.
    let Some((e, t)) = q.iter().zip(&a).find(|(_, t)| t.turns.iter().any(Vec::is_empty)) else { panic!() };
    let k = t.turns.iter().position(Vec::is_empty).unwrap();
    let mut calls = as_model_calls(t);
    calls[k] = vec![vec![Call::new("pwd")]];
    let harmless = ["pwd", "list_all_airports", "get_current_time", "message_get_login_status"]
        .iter()
        .find(|f| ToolSet::load(&bfcl_dir().unwrap().join("func_doc"), &e.involved_classes).unwrap().get(f).is_some())
        .copied();
    if let Some(f) = harmless {
        calls[k] = vec![vec![Call::new(f)]];
        assert!(check_entry(e, t, &calls, None, None, opts).unwrap().valid, "{}", e.id);
        let strict = CheckOptions { irrelevance: true };
        let r = check_entry(e, t, &calls, None, None, strict).unwrap();
        assert_eq!(r.error_type.as_deref(), Some("multi_turn:irrelevance_error"));
    }
}

#[test]
fn bad_data_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("q.json");
    std::fs::write(&p, "{\"id\": \"multi_turn_base_0\", \"question\": [], \"involved_classes\": []}\n{oops\n").unwrap();
    let e = checker::load_questions(&p).unwrap_err().to_string();
    assert!(e.ends_with(":2: invalid JSON: key must be a string at line 1 column 2"), "{e}");
    std::fs::write(&p, "{\"id\": \"x_1\", \"ground_truth\": [[\"cd(folder=os.system('x'))\"]]}\n").unwrap();
    let e = checker::load_answers(&p).unwrap_err().to_string();
    assert!(e.contains(":1: x_1: turn 0") && e.contains("literals"), "{e}");
}

/// The checker on recorded episodes (an MCP server's, [`checker::Recorded`]), worked out by
/// hand: a turn without expected calls is not checked, a side that stopped early keeps its
/// last state, states compare as JSON (key order aside) and results as a multiset over the
/// turns so far.
#[test]
fn recorded_episodes_are_checked_as_live_ones() {
    use checker::{Recorded, TurnRecord, check_turns, state_text_differences};
    let call = |text: &str| artist_bfcl::parse_calls(text).unwrap().remove(0);
    let truth =
        GroundTruth { id: "rec_0".into(), turns: vec![vec![call("add(a=1, b=1)")], vec![], vec![call("counter()")]] };
    let record = |results: &[&str], state: &str| TurnRecord {
        results: results.iter().map(|r| r.to_string()).collect(),
        state: state.into(),
    };
    let truth_records = [
        record(&["2"], r#"{"last": 2, "count": 0}"#),
        record(&[], r#"{"last": 2, "count": 0}"#),
        record(&["1"], r#"{"count": 1, "last": 2}"#),
    ];
    // The model played two turns: the right call, then one where none was expected.
    let model = vec![vec![vec![call("add(a=1, b=1)")]], vec![vec![call("echo(text='x')")]], vec![]];
    let model_records = [record(&["2"], r#"{"count": 0, "last": 2}"#), record(&["x"], r#"{"count": 0, "last": 2}"#)];
    let initial = r#"{"count": 0, "last": null}"#;
    let mut envs = Recorded::new(initial, &model_records, &truth_records);
    let r = check_turns("rec_0", &truth, &model, None, CheckOptions::default(), &mut envs);
    assert!(!r.valid);
    assert_eq!(r.error_type.as_deref(), Some("multi_turn:empty_turn_model_response"));
    assert_eq!((r.turns[0].state_ok, r.turns[1].state_ok, r.turns[2].state_ok), (Some(true), None, Some(false)));
    assert_eq!(r.turns[2].state_differences, ["count"]);
    assert_eq!(r.turns[2].missing_results, ["1"]);
    assert_eq!((r.state_fraction, r.function_fraction), (0.5, 0.5));
    // With irrelevance on, the call in turn 1 fails it first.
    let mut envs = Recorded::new(initial, &model_records, &truth_records);
    let r = check_turns("rec_0", &truth, &model, None, CheckOptions { irrelevance: true }, &mut envs);
    assert_eq!(r.error_type.as_deref(), Some("multi_turn:irrelevance_error"));
    // A model that played nothing is in its initial state.
    let mut envs = Recorded::new(initial, &[], &truth_records);
    let r = check_turns("rec_0", &truth, &[vec![], vec![], vec![]], None, CheckOptions::default(), &mut envs);
    assert_eq!(r.turns[0].state_differences, ["last"]);
    assert_eq!(r.turns[2].state_differences, ["count", "last"]);
    assert_eq!((r.state_fraction, r.function_fraction), (0.0, 0.0));

    assert!(state_text_differences("[1, 2]", "[1,2]").is_empty());
    assert_eq!(state_text_differences("[1, 2]", "[2, 1]"), ["state"]);
    assert!(state_text_differences("at home", "at home").is_empty());
    assert_eq!(state_text_differences("at home", "at work"), ["state"]);
    assert_eq!(state_text_differences(r#"{"a": 1}"#, r#"{"a": 1, "b": 2}"#), ["b"]);
    assert_eq!(state_text_differences(r#"{"a": 1, "c": 3}"#, r#"{"a": 1}"#), ["c"]);
}
