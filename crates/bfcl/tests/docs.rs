//! The function docs over the real BFCL data: every doc file loads and converts, every
//! ground-truth call validates against its entry's tools, and broken calls are refused
//! with the message a model would read.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use artist_bfcl::docs::{self, CallError, ToolSet};
use artist_bfcl::{Call, Value, envs, parse_calls};
use serde_json::Value as Json;

const CATEGORIES: &[&str] = &["base", "miss_func", "miss_param", "long_context"];

fn questions(dir: &Path, category: &str) -> Vec<Json> {
    common::jsonl(&dir.join(format!("questions/BFCL_v4_multi_turn_{category}.json")))
}

fn answers(dir: &Path, category: &str) -> Vec<Json> {
    common::jsonl(&dir.join(format!("possible_answer/BFCL_v4_multi_turn_{category}.json")))
}

fn count_types(node: &Json, counts: &mut BTreeMap<String, usize>) {
    if let Some(t) = node.get("type").and_then(Json::as_str) {
        *counts.entry(t.to_owned()).or_default() += 1;
    }
    if let Some(props) = node.get("properties").and_then(Json::as_object) {
        props.values().for_each(|p| count_types(p, counts));
    }
    if let Some(items) = node.get("items") {
        count_types(items, counts);
    }
}

/// Schema nodes with an `enum`, and whether any node still has a BFCL-only type.
fn walk_converted(node: &Json, path: &str, enums: &mut Vec<String>) {
    if let Some(t) = node.get("type").and_then(Json::as_str) {
        assert!(
            ["string", "integer", "number", "boolean", "array", "object"].contains(&t),
            "{path}: type {t} left after conversion"
        );
    }
    if node.get("enum").is_some() {
        enums.push(path.to_owned());
    }
    if let Some(props) = node.get("properties").and_then(Json::as_object) {
        for (k, p) in props {
            walk_converted(p, &format!("{path}.{k}"), enums);
        }
    }
    if let Some(items) = node.get("items") {
        walk_converted(items, &format!("{path}[]"), enums);
    }
}

#[test]
fn doc_files_load_and_convert() {
    let Some(dir) = common::bfcl_dir() else { return };
    let want_functions =
        [("GorillaFileSystem", 18), ("MathAPI", 17), ("MessageAPI", 10), ("TwitterAPI", 14), ("TicketAPI", 9)]
            .into_iter()
            .chain([("TradingBot", 20), ("TravelAPI", 18), ("VehicleControlAPI", 22)])
            .collect::<BTreeMap<_, _>>();
    let mut types = BTreeMap::new();
    let mut enums = Vec::new();
    let mut response_enums = Vec::new();
    let mut all = Vec::new();
    for (class, file) in envs::CLASSES {
        let loaded = docs::load_func_docs(&dir.join("func_doc").join(file), class).unwrap();
        assert_eq!(loaded.len(), want_functions[class], "{file}");
        for doc in &loaded {
            assert_eq!(doc.class, *class);
            count_types(&doc.parameters, &mut types);
            let schema = doc.schema();
            assert_eq!(schema["type"], "object", "{}", doc.name);
            assert_eq!(doc.param_names().len(), schema["properties"].as_object().map_or(0, |p| p.len()));
            walk_converted(&schema, &doc.name, &mut enums);
            walk_converted(&docs::to_json_schema(&doc.response), &doc.name, &mut response_enums);
            for name in doc.param_names() {
                assert_eq!(
                    schema["properties"][name].get("default"),
                    doc.parameters["properties"][name].get("default").map(|d| if d == "None" {
                        &Json::Null
                    } else {
                        d
                    })
                );
            }
        }
        all.extend(loaded);
    }
    let want: BTreeMap<String, usize> =
        [("string", 123), ("dict", 129), ("float", 41), ("integer", 20), ("array", 12), ("boolean", 4)]
            .into_iter()
            .map(|(t, n)| (t.to_owned(), n))
            .collect();
    assert_eq!(types, want);
    // 10 parameters carry an enum hint; lockDoors.door is an array, so its enum sits on the items.
    assert_eq!(enums.len(), 10, "{enums:?}");
    assert!(enums.contains(&"lockDoors.door[]".to_owned()), "{enums:?}");
    assert_eq!(response_enums.len(), 19, "{response_enums:?}");
    let set = ToolSet::new(all).expect("no function is in two doc files");
    let tools = set.tools_json();
    assert_eq!(tools.as_array().unwrap().len(), 128);
    let rate = set.get("compute_exchange_rate").unwrap().schema();
    assert_eq!(rate["properties"]["base_currency"]["enum"][1], "RMB");
    assert_eq!(rate["properties"]["base_currency"]["enum"].as_array().unwrap().len(), 11);
    let city = set.get("get_nearest_airport_by_city").unwrap().schema();
    assert!(city["properties"]["location"]["enum"].as_array().unwrap().contains(&Json::from("Sunset Valley")));
    let find = set.get("find").unwrap().schema();
    assert_eq!(find["properties"]["name"]["default"], Json::Null);
    assert_eq!(find["properties"]["path"]["default"], ".");
    println!(
        "{} functions, {} parameters with an enum, {} response fields with one",
        tools.as_array().unwrap().len(),
        enums.len(),
        response_enums.len()
    );
}

fn entry_classes(q: &Json) -> Vec<&str> {
    q["involved_classes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect()
}

#[test]
fn every_ground_truth_call_validates() {
    let Some(dir) = common::bfcl_dir() else { return };
    let func_doc = dir.join("func_doc");
    let mut total = 0;
    let mut positional = 0;
    let mut failures = Vec::new();
    let mut before_release = Vec::new();
    for category in CATEGORIES {
        let (qs, answers) = (questions(&dir, category), answers(&dir, category));
        assert_eq!(qs.len(), answers.len());
        for (q, a) in qs.iter().zip(&answers) {
            let id = q["id"].as_str().unwrap();
            assert_eq!(a["id"], id);
            // miss_func: the held-back functions are unknown until their hand-over turn.
            let mut set = ToolSet::for_entry(&func_doc, q).unwrap();
            let release: BTreeMap<usize, Vec<&str>> = q
                .get("missed_function")
                .and_then(Json::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (k.parse().unwrap(), v.as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect())
                        })
                        .collect()
                })
                .unwrap_or_default();
            for (turn, calls) in a["ground_truth"].as_array().unwrap().iter().enumerate() {
                if let Some(names) = release.get(&turn) {
                    set.release(names).unwrap();
                }
                for text in calls.as_array().unwrap() {
                    let text = text.as_str().unwrap();
                    let call = parse_calls(text).unwrap_or_else(|e| panic!("{id}: {text}: {e}")).remove(0);
                    total += 1;
                    positional += usize::from(!call.args.is_empty());
                    match set.validate(&call) {
                        Ok(norm) => {
                            assert!(norm.args.is_empty());
                            assert_eq!(norm.kwargs.len(), call.args.len() + call.kwargs.len(), "{id}: {text}");
                            // Validation is idempotent on its output.
                            assert_eq!(set.validate(&norm).as_ref(), Ok(&norm), "{id}: {text}");
                        }
                        Err(e) => failures.push(format!("{id} turn {turn}: {text}: {e}")),
                    }
                    if let Err(e) = set.validate_shown(&call) {
                        assert!(matches!(e, CallError::UnknownFunction { .. }), "{id}: {text}: {e}");
                        before_release.push(format!("{id} turn {turn}: {text}"));
                    }
                }
            }
        }
    }
    println!("{total} ground-truth calls validated ({positional} with positional arguments)");
    assert!(failures.is_empty(), "{} of {total} ground-truth calls failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(total, 1142 + 1140 + 1140 + 1203);
    assert_eq!(positional, 160);
    // Upstream's ground truth calls a held-back function once before its release; BFCL runs it.
    assert_eq!(before_release, ["multi_turn_miss_func_49 turn 1: tail(file_name='file3.txt')"]);
}

fn base_set(dir: &Path, classes: &[&str]) -> ToolSet {
    ToolSet::load(&dir.join("func_doc"), classes).unwrap()
}

fn one(text: &str) -> Call {
    parse_calls(text).unwrap().remove(0)
}

#[test]
fn mutated_calls_are_refused() {
    let Some(dir) = common::bfcl_dir() else { return };
    let set = base_set(&dir, &["GorillaFileSystem", "MathAPI", "TicketAPI"]);
    let err = |text: &str| set.validate(&one(text)).unwrap_err();
    assert_eq!(
        err("tail(file_name='log.txt', lines='20')").to_string(),
        "tail(): argument 'lines' must be an integer, got str '20'"
    );
    assert_eq!(
        err("tail(file_name='log.txt', lines=20.0)").to_string(),
        "tail(): argument 'lines' must be an integer, got float 20.0"
    );
    assert_eq!(err("ls(a='yes')").to_string(), "ls(): argument 'a' must be a boolean, got str 'yes'");
    assert_eq!(
        err("mean(numbers=[1, '2'])").to_string(),
        "mean(): argument 'numbers[1]' must be a number, got str '2'"
    );
    assert_eq!(
        err("cd(folder='a', recursive=True)").to_string(),
        "cd() got an unexpected argument 'recursive'. Accepted arguments: folder"
    );
    assert_eq!(err("mv(source='a')").to_string(), "mv() is missing required argument 'destination' (string)");
    assert_eq!(err("cd('a', folder='b')").to_string(), "cd() got multiple values for argument 'folder'");
    let e = err("post_tweet(content='hi')");
    assert!(
        matches!(&e, CallError::UnknownFunction { name, available } if name == "post_tweet" && available.len() == 18 + 17 + 9)
    );
    assert!(e.to_string().starts_with("unknown function 'post_tweet'. Available functions: cat, cd, cp, "), "{e}");
    assert_eq!(
        err("edit_ticket(ticket_id=1, updates={'priority': 'high'})").to_string(),
        "edit_ticket(): argument 'updates['priority']' must be an integer, got str 'high'"
    );
    // Accepted: an int for a number, a string ID, a value outside the enum hint, None for a None default.
    let ok = |text: &str| set.validate(&one(text)).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(ok("mean([1, 2.5])").kwargs["numbers"], Value::List(vec![Value::Int(1), Value::Float(2.5)]));
    ok("close_ticket(ticket_id='ticket_001')");
    ok("echo(content='x', file_name=None)");
    ok("wc(file_name='a', mode='sentences')");
    let travel = base_set(&dir, &["TravelAPI", "VehicleControlAPI"]);
    travel.validate(&one("compute_exchange_rate(base_currency='XYZ', target_currency='USD', value=3)")).unwrap();
    travel.validate(&one("lockDoors(unlock=True, door=['trunk'])")).unwrap();
    assert_eq!(
        travel.validate(&one("lockDoors(unlock=True, door='driver')")).unwrap_err().to_string(),
        "lockDoors(): argument 'door' must be an array, got str 'driver'"
    );
}

#[test]
fn miss_func_holds_back_and_releases() {
    let Some(dir) = common::bfcl_dir() else { return };
    let qs = questions(&dir, "miss_func");
    let answers = answers(&dir, "miss_func");
    let (q, a) = qs
        .iter()
        .zip(&answers)
        .find(|(q, _)| q["missed_function"].as_object().unwrap().values().any(|v| v.as_array().unwrap().len() == 2))
        .unwrap();
    let (turn, names) = q["missed_function"].as_object().unwrap().iter().next().unwrap();
    let turn: usize = turn.parse().unwrap();
    let names: Vec<&str> = names.as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let full = ToolSet::load(&dir.join("func_doc"), &entry_classes(q)).unwrap();
    let mut set = ToolSet::for_entry(&dir.join("func_doc"), q).unwrap();
    assert_eq!(set.iter().count(), full.iter().count() - names.len());
    for name in &names {
        assert!(set.get(name).is_none(), "{name} is held back");
        assert!(full.get(name).is_some());
        assert!(!set.tools_json().to_string().contains(&format!("\"name\":\"{name}\"")));
    }
    assert_eq!(set.held_back().count(), names.len());
    // The turn before the hand-over has no ground truth; the hand-over turn calls a held-back function.
    assert_eq!(q["question"][turn], Json::Array(vec![]));
    assert_eq!(a["ground_truth"][turn - 1], Json::Array(vec![]));
    let gt: Vec<Call> = a["ground_truth"][turn].as_array().unwrap().iter().map(|t| one(t.as_str().unwrap())).collect();
    let needs =
        gt.iter().find(|c| names.contains(&c.name.as_str())).expect("the hand-over turn uses a missed function");
    assert!(matches!(set.validate_shown(needs), Err(CallError::UnknownFunction { .. })));
    set.validate(needs).unwrap();
    set.release(&names).unwrap();
    assert_eq!(set.held_back().count(), 0);
    let shown = set.names();
    assert_eq!(&shown[shown.len() - names.len()..], names.as_slice(), "released docs come last");
    assert_eq!(set.tools_json().as_array().unwrap().len(), full.iter().count());
    for c in &gt {
        set.validate_shown(c).unwrap();
    }
    println!("{}: held back {names:?} until turn {turn}", q["id"]);
}
