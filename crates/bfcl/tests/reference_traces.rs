//! The environments against BFCL's own Python classes: every ground-truth call of every
//! multi-turn entry, and hand-written probes of behaviour and error paths, must give the
//! exact result string and leave the exact public state that the reference gave
//! (`scripts/make_bfcl_traces.py` recorded them). Set `BFCL_CLASS=TradingBot` to check
//! one class; classes not ported yet are reported and skipped.

mod common;

use std::collections::BTreeMap;

use artist_bfcl::{Key, Session, Value, envs, parse_calls};
use common::*;

#[derive(Default)]
struct Report {
    calls: usize,
    states: usize,
    mismatches: Vec<String>,
    per_class: BTreeMap<String, usize>,
}

impl Report {
    fn mismatch(&mut self, class: &str, msg: String) {
        *self.per_class.entry(class.to_owned()).or_default() += 1;
        self.mismatches.push(msg);
    }
}

fn cut(s: &str) -> String {
    if s.chars().count() > 300 { format!("{}...", s.chars().take(300).collect::<String>()) } else { s.to_owned() }
}

fn wanted(class: &str) -> bool {
    class_filter().is_none_or(|f| f.iter().any(|c| c == class))
}

fn compare_state(report: &mut Report, session: &Session, expected: &serde_json::Value, what: &str) {
    for (class, got) in session.state() {
        if !wanted(class) {
            continue;
        }
        report.states += 1;
        let Some(exp) = expected.get(class) else {
            report.mismatch(class, format!("{what}: no reference state for {class}"));
            continue;
        };
        let exp = Value::from_tagged_json(exp).unwrap_or_else(|e| panic!("{what}: {e}"));
        let exp = exp.as_dict().expect("state is a dict");
        for (attr, want) in exp {
            let got_v = got.get(attr);
            if got_v != Some(want) {
                let name = match attr {
                    Key::Str(s) => s.clone(),
                    Key::Int(i) => i.to_string(),
                };
                report.mismatch(
                    class,
                    format!(
                        "{what}: {class}.{name}\n    want {}\n    got  {}",
                        cut(&want.repr()),
                        cut(&got_v.map(Value::repr).unwrap_or_else(|| "<missing>".into()))
                    ),
                );
            }
        }
        for attr in got.keys() {
            if !exp.contains_key(attr) {
                report.mismatch(class, format!("{what}: {class} has an attribute the reference lacks: {attr:?}"));
            }
        }
    }
}

fn run_calls(
    report: &mut Report,
    session: &mut Session,
    calls: &[serde_json::Value],
    expected: &[serde_json::Value],
    what: &str,
) {
    for (i, call_text) in calls.iter().enumerate() {
        let text = call_text.as_str().expect("call string");
        let calls = parse_calls(text).unwrap_or_else(|e| panic!("{what}: cannot parse {text}: {e}"));
        assert_eq!(calls.len(), 1, "{what}: {text}");
        let call = &calls[0];
        let owner = session.owner(&call.name).map(|e| e.class_name());
        let got = session.execute(call);
        let Some(class) = owner else { continue }; // a class not ported yet
        if !wanted(class) {
            continue;
        }
        report.calls += 1;
        let want = expected[i].as_str().expect("result string");
        if got != want {
            report.mismatch(class, format!("{what}: {text}\n    want {}\n    got  {}", cut(want), cut(&got)));
        }
    }
}

fn finish(report: Report, label: &str) {
    let ported: Vec<&str> =
        envs::CLASSES.iter().map(|(c, _)| *c).filter(|c| envs::new_environment(c).is_some()).collect();
    eprintln!("{label}: ported {ported:?}; compared {} call results and {} states", report.calls, report.states);
    if !report.mismatches.is_empty() {
        for m in report.mismatches.iter().take(40) {
            eprintln!("MISMATCH {m}");
        }
        panic!("{label}: {} mismatches ({:?})", report.mismatches.len(), report.per_class);
    }
}

fn trace_file(stem: &str) {
    let Some(bfcl) = bfcl_dir() else { return };
    let trace_path = fixtures().join("traces").join(format!("{stem}.jsonl"));
    let long_context = if stem.contains("long_context") {
        if !trace_path.is_file() {
            eprintln!("skipped: {} is not generated (see scripts/make_bfcl_traces.py)", trace_path.display());
            return;
        }
        match long_context() {
            Some(lc) => Some(lc),
            None => return,
        }
    } else {
        None
    };
    let questions = jsonl(&bfcl.join("questions").join(format!("{stem}.json")));
    let answers = jsonl(&bfcl.join("possible_answer").join(format!("{stem}.json")));
    let traces = jsonl(&trace_path);
    assert_eq!(questions.len(), traces.len());
    let mut report = Report::default();
    for ((q, a), t) in questions.iter().zip(&answers).zip(&traces) {
        let id = q["id"].as_str().unwrap();
        assert_eq!(t["id"].as_str(), Some(id));
        let classes: Vec<String> = serde_json::from_value(q["involved_classes"].clone()).unwrap();
        let mut session = Session::new_partial(&classes, &q["initial_config"], long_context.as_ref())
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        for (turn, (calls, tt)) in
            a["ground_truth"].as_array().unwrap().iter().zip(t["turns"].as_array().unwrap()).enumerate()
        {
            let what = format!("{id} turn {turn}");
            run_calls(&mut report, &mut session, calls.as_array().unwrap(), tt["results"].as_array().unwrap(), &what);
            compare_state(&mut report, &session, &tt["state"], &what);
        }
    }
    finish(report, stem);
}

#[test]
fn ground_truth_base() {
    trace_file("BFCL_v4_multi_turn_base");
}

#[test]
fn ground_truth_miss_func() {
    trace_file("BFCL_v4_multi_turn_miss_func");
}

#[test]
fn ground_truth_miss_param() {
    trace_file("BFCL_v4_multi_turn_miss_param");
}

#[test]
fn ground_truth_long_context() {
    trace_file("BFCL_v4_multi_turn_long_context");
}

/// Hand-written probes (`tests/fixtures/bfcl/probes/*.jsonl`) against the reference's
/// results for them (`*.expected.jsonl`).
#[test]
fn probes() {
    let dir = fixtures().join("probes");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("no probes at {}", dir.display());
        return;
    };
    let lc = long_context();
    let mut report = Report::default();
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".jsonl") || name.ends_with(".expected.jsonl") {
            continue;
        }
        let probes = jsonl(&path);
        let expected = jsonl(&path.with_file_name(name.replace(".jsonl", ".expected.jsonl")));
        assert_eq!(probes.len(), expected.len(), "{name}: run scripts/make_bfcl_traces.py --probes-only");
        for (p, e) in probes.iter().zip(&expected) {
            let what = format!("{name}: {}", p["name"].as_str().unwrap());
            assert_eq!(p["name"], e["name"], "{what}");
            let is_lc = p.get("long_context").and_then(|v| v.as_bool()).unwrap_or(false);
            if is_lc && lc.is_none() {
                continue;
            }
            let classes: Vec<String> = serde_json::from_value(p["involved_classes"].clone()).unwrap();
            let config = p.get("initial_config").cloned().unwrap_or(serde_json::json!({}));
            let mut session = Session::new_partial(&classes, &config, if is_lc { lc.as_ref() } else { None })
                .unwrap_or_else(|err| panic!("{what}: {err}"));
            run_calls(
                &mut report,
                &mut session,
                p["calls"].as_array().unwrap(),
                e["results"].as_array().unwrap(),
                &what,
            );
            compare_state(&mut report, &session, &e["state"], &what);
        }
    }
    finish(report, "probes");
}

/// Every ported class defines exactly the functions its BFCL doc file lists.
#[test]
fn functions_match_the_docs() {
    let Some(bfcl) = bfcl_dir() else { return };
    for (class, doc) in envs::CLASSES {
        let Some(env) = envs::new_environment(class) else {
            eprintln!("{class}: not ported yet");
            continue;
        };
        let mut documented: Vec<String> =
            jsonl(&bfcl.join("func_doc").join(doc)).iter().map(|d| d["name"].as_str().unwrap().to_owned()).collect();
        let mut defined: Vec<String> = env.functions().iter().map(|s| s.to_string()).collect();
        documented.sort();
        defined.sort();
        assert_eq!(defined, documented, "{class}");
    }
}
