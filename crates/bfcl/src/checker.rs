//! BFCL's multi-turn scoring, and the fractions ARTIST's rewards are made of.
//!
//! An entry passes when every turn passes (`multi_turn_checker.py`):
//! * the model's result has as many turns as the ground truth;
//! * per turn, the model's calls run on the model's instances and the ground truth's calls
//!   on separate instances from the same initial state (each set lives across all turns);
//! * a turn whose ground truth has calls fails when the model made none;
//! * a turn whose ground truth is empty is not checked (the model's calls still ran and
//!   shape later state); with [`CheckOptions::irrelevance`] it fails if the model called
//!   anything (upstream defines that check but no longer runs it);
//! * state: every public attribute of every ground-truth instance equals the model's
//!   (Python `==`);
//! * response: the ground truth's results of this turn are a sub-multiset of the model's
//!   results of all turns so far.
//!
//! [`check_entry`] also reports, for the rewards, the fraction of checked turns after
//! which the state was right and the fraction of expected calls the model matched by name
//! and arguments, over all turns (it does not stop at the first failure).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::call::{Call, parse_calls};
use crate::docs::ToolSet;
use crate::env::LongContext;
use crate::session::Session;

/// One question entry of a BFCL multi-turn file.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// Per turn, the user text (the messages' contents joined); empty for the miss_func
    /// hand-over turn.
    pub turns: Vec<Vec<String>>,
    pub initial_config: serde_json::Value,
    pub involved_classes: Vec<String>,
    /// miss_func: turn index -> functions held back until that turn.
    pub missed_function: BTreeMap<usize, Vec<String>>,
    /// The whole line as read.
    pub raw: serde_json::Value,
}

impl Entry {
    /// `multi_turn_base_12` -> `multi_turn_base`.
    pub fn category(&self) -> &str {
        category_of(&self.id)
    }

    /// Whether the environments load the long-context filler for this entry.
    pub fn long_context(&self) -> bool {
        let c = self.category();
        c.contains("long_context") || c.contains("composite")
    }
}

/// The category of an entry id: everything before the last `_`.
pub fn category_of(id: &str) -> &str {
    id.rsplit_once('_').map_or(id, |(c, _)| c)
}

/// One ground-truth entry: per turn, the calls.
#[derive(Debug, Clone)]
pub struct GroundTruth {
    pub id: String,
    pub turns: Vec<Vec<Call>>,
}

/// A bad line in a data file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct DataError {
    pub path: String,
    pub line: usize,
    pub message: String,
}

fn read_lines(path: &Path) -> Result<Vec<(usize, serde_json::Value)>, DataError> {
    let err = |line, message: String| DataError { path: path.display().to_string(), line, message };
    let text = std::fs::read_to_string(path).map_err(|e| err(0, format!("cannot read: {e}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line).map_err(|e| err(i + 1, format!("invalid JSON: {e}")))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// Reads a questions file (JSON Lines).
pub fn load_questions(path: &Path) -> Result<Vec<Entry>, DataError> {
    read_lines(path)?
        .into_iter()
        .map(|(line, v)| {
            let err = |message: String| DataError { path: path.display().to_string(), line, message };
            let id = v.get("id").and_then(|x| x.as_str()).ok_or_else(|| err("no string \"id\"".into()))?.to_owned();
            let question = v
                .get("question")
                .and_then(|q| q.as_array())
                .ok_or_else(|| err(format!("{id}: no \"question\" list of turns")))?;
            let mut turns = Vec::with_capacity(question.len());
            for (t, turn) in question.iter().enumerate() {
                let msgs = turn.as_array().ok_or_else(|| err(format!("{id}: turn {t} is not a list of messages")))?;
                let mut texts = Vec::new();
                for m in msgs {
                    let content = m
                        .get("content")
                        .and_then(|c| c.as_str())
                        .ok_or_else(|| err(format!("{id}: turn {t} has a message without string content")))?;
                    texts.push(content.to_owned());
                }
                turns.push(texts);
            }
            // BFCL's own environments need it (their tool sets say so when it is missing);
            // an MCP server's episodes do not.
            let involved_classes: Vec<String> = match v.get("involved_classes") {
                None => Vec::new(),
                Some(c) => serde_json::from_value(c.clone())
                    .map_err(|_| err(format!("{id}: \"involved_classes\" is not a list of names")))?,
            };
            let mut missed_function = BTreeMap::new();
            if let Some(m) = v.get("missed_function") {
                let m = m.as_object().ok_or_else(|| err(format!("{id}: \"missed_function\" is not an object")))?;
                for (k, names) in m {
                    let turn: usize = k.parse().map_err(|_| err(format!("{id}: missed_function key {k:?}")))?;
                    let names: Vec<String> = serde_json::from_value(names.clone())
                        .map_err(|_| err(format!("{id}: missed_function[{k}] is not a list of names")))?;
                    missed_function.insert(turn, names);
                }
            }
            Ok(Entry {
                id,
                turns,
                initial_config: v.get("initial_config").cloned().unwrap_or(serde_json::json!({})),
                involved_classes,
                missed_function,
                raw: v,
            })
        })
        .collect()
}

/// Reads a possible_answer file (JSON Lines of `{"id", "ground_truth": [[call, ..], ..]}`),
/// parsing every call (`"f(a=1)"`, or `{"name": "f", "arguments": {"a": 1}}`).
pub fn load_answers(path: &Path) -> Result<Vec<GroundTruth>, DataError> {
    read_lines(path)?
        .into_iter()
        .map(|(line, v)| {
            let err = |message: String| DataError { path: path.display().to_string(), line, message };
            let id = v.get("id").and_then(|x| x.as_str()).ok_or_else(|| err("no string \"id\"".into()))?.to_owned();
            let gt = v
                .get("ground_truth")
                .and_then(|g| g.as_array())
                .ok_or_else(|| err(format!("{id}: no \"ground_truth\" list of turns")))?;
            let mut turns = Vec::with_capacity(gt.len());
            for (t, turn) in gt.iter().enumerate() {
                let calls = turn.as_array().ok_or_else(|| err(format!("{id}: turn {t} is not a list of calls")))?;
                let mut parsed = Vec::new();
                for c in calls {
                    // BFCL writes calls as Python text; a JSON call object is read as well.
                    let text = match c {
                        serde_json::Value::String(text) => text.clone(),
                        serde_json::Value::Object(_) => c.to_string(),
                        _ => return Err(err(format!("{id}: turn {t}: a call is neither text nor a JSON object: {c}"))),
                    };
                    let mut one = parse_calls(&text).map_err(|e| err(format!("{id}: turn {t}: {text}: {e}")))?;
                    if one.len() != 1 {
                        return Err(err(format!("{id}: turn {t}: {text:?} is not exactly one call")));
                    }
                    parsed.push(one.remove(0));
                }
                turns.push(parsed);
            }
            Ok(GroundTruth { id, turns })
        })
        .collect()
}

/// The model's calls for one entry: per turn, per step (one tool block or one message),
/// the calls decoded from it. Steps that decoded to nothing are left out, as BFCL does.
pub type ModelCalls = Vec<Vec<Vec<Call>>>;

#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Fail a turn whose ground truth is empty when the model made calls in it.
    pub irrelevance: bool,
}

/// What one turn showed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TurnReport {
    pub ground_truth_calls: usize,
    pub model_calls: usize,
    /// Expected calls the model made in this turn (name and arguments equal).
    pub matched_calls: usize,
    /// `None` for a turn that is not checked (empty ground truth).
    pub state_ok: Option<bool>,
    pub response_ok: Option<bool>,
    /// `Class.attribute` that differ after this turn.
    pub state_differences: Vec<String>,
    /// Ground-truth results the model's results did not contain.
    pub missing_results: Vec<String>,
}

/// The verdict on one entry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckResult {
    pub id: String,
    /// BFCL's verdict.
    pub valid: bool,
    /// BFCL's error type for the first failure (`multi_turn:instance_state_mismatch`, ...).
    pub error_type: Option<String>,
    pub error: Option<String>,
    pub turns: Vec<TurnReport>,
    /// Checked turns after which the state was right / checked turns (1 when none).
    pub state_fraction: f64,
    /// Expected calls matched / expected calls (1 when none).
    pub function_fraction: f64,
}

/// What the checker runs both sides' calls on and compares the states of: BFCL's own
/// environments ([`check_entry`]), or the record of episodes played elsewhere, on an MCP
/// server ([`Recorded`]).
pub trait TurnEnvironments {
    /// Runs one of the model's calls of turn `turn` on the model's side: its result.
    fn run_model(&mut self, turn: usize, call: &Call) -> String;
    /// Runs one of the ground truth's calls of turn `turn` on its side: its result.
    fn run_truth(&mut self, turn: usize, call: &Call) -> String;
    /// After turn `turn`'s calls on both sides: what differs between the model's state and
    /// the ground truth's (empty: the same).
    fn state_differences(&mut self, turn: usize) -> Vec<String>;
}

/// Both sides on BFCL's environments, from the same initial state.
struct Sessions {
    model: Session,
    truth: Session,
}

impl TurnEnvironments for Sessions {
    fn run_model(&mut self, _turn: usize, call: &Call) -> String {
        self.model.execute(call)
    }
    fn run_truth(&mut self, _turn: usize, call: &Call) -> String {
        self.truth.execute(call)
    }
    fn state_differences(&mut self, _turn: usize) -> Vec<String> {
        self.model.state_differences(&self.truth).into_iter().map(|(c, a)| format!("{c}.{a}")).collect()
    }
}

/// One side of an episode played on another environment (an MCP server): per turn, the
/// results of the calls that ran, in order, and the state after the turn as text.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TurnRecord {
    pub results: Vec<String>,
    pub state: String,
}

/// Both sides of an episode as recorded while they ran ([`TurnRecord`]s): the checker
/// replays the records instead of running the calls. `initial` is the state before any
/// turn, which a side keeps through turns it did not play. States are compared as JSON
/// where both parse (an object's differing top-level keys are named), else as text.
pub struct Recorded<'a> {
    pub initial: &'a str,
    pub model: &'a [TurnRecord],
    pub truth: &'a [TurnRecord],
    /// The next result of each side: (turn, index in the turn).
    model_at: (usize, usize),
    truth_at: (usize, usize),
}

impl<'a> Recorded<'a> {
    pub fn new(initial: &'a str, model: &'a [TurnRecord], truth: &'a [TurnRecord]) -> Self {
        Recorded { initial, model, truth, model_at: (0, 0), truth_at: (0, 0) }
    }

    /// A side's state after `turn`: its record's, or the last one (a side that stopped
    /// early), or the initial state.
    fn state_after(&self, side: &'a [TurnRecord], turn: usize) -> &'a str {
        side.get(turn).or(side.last()).map_or(self.initial, |r| r.state.as_str())
    }
}

/// The next recorded result of a side whose calls are being replayed in order; a call the
/// record does not hold (it never ran) gives an empty result.
fn next_result(side: &[TurnRecord], at: &mut (usize, usize), turn: usize) -> String {
    if at.0 != turn {
        *at = (turn, 0);
    }
    let r = side.get(turn).and_then(|r| r.results.get(at.1)).cloned().unwrap_or_default();
    at.1 += 1;
    r
}

impl TurnEnvironments for Recorded<'_> {
    fn run_model(&mut self, turn: usize, _call: &Call) -> String {
        next_result(self.model, &mut self.model_at, turn)
    }
    fn run_truth(&mut self, turn: usize, _call: &Call) -> String {
        next_result(self.truth, &mut self.truth_at, turn)
    }
    fn state_differences(&mut self, turn: usize) -> Vec<String> {
        state_text_differences(self.state_after(self.model, turn), self.state_after(self.truth, turn))
    }
}

/// Where two states given as text differ: the top-level keys whose values differ when both
/// are JSON objects, `["state"]` when they differ otherwise (JSON compared as values, where
/// `1` and `1.0` differ and key order does not; other text as text), nothing when they are
/// the same.
pub fn state_text_differences(model: &str, truth: &str) -> Vec<String> {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
    match (parse(model), parse(truth)) {
        (Some(serde_json::Value::Object(m)), Some(serde_json::Value::Object(t))) => {
            let mut keys: Vec<&String> = t.keys().chain(m.keys().filter(|k| !t.contains_key(*k))).collect();
            keys.retain(|k| m.get(*k) != t.get(*k));
            keys.into_iter().cloned().collect()
        }
        (Some(m), Some(t)) if m == t => vec![],
        (Some(_), Some(_)) => vec!["state".into()],
        _ if model == truth => vec![],
        _ => vec!["state".into()],
    }
}

/// Scores one entry's model calls against its ground truth. `docs` (the entry's tools)
/// normalises positional arguments before calls are compared for the function fraction.
/// `long_context` is used for long-context entries. Errors only for an entry the
/// environments cannot load.
pub fn check_entry(
    entry: &Entry,
    truth: &GroundTruth,
    model: &[Vec<Vec<Call>>],
    long_context: Option<&LongContext>,
    docs: Option<&ToolSet>,
    opts: CheckOptions,
) -> Result<CheckResult, String> {
    // Without the filler a long-context entry runs on its plain scenario (both sides
    // alike); callers say so.
    let lc = if entry.long_context() { long_context } else { None };
    let model_env = Session::new(&entry.involved_classes, &entry.initial_config, lc)?;
    let mut envs = Sessions { truth: model_env.clone(), model: model_env };
    Ok(check_turns(&entry.id, truth, model, docs, opts, &mut envs))
}

/// BFCL's verdict and the reward fractions (see the module doc) with the calls run on
/// `envs`.
pub fn check_turns(
    id: &str,
    truth: &GroundTruth,
    model: &[Vec<Vec<Call>>],
    docs: Option<&ToolSet>,
    opts: CheckOptions,
    envs: &mut dyn TurnEnvironments,
) -> CheckResult {
    let mut result = CheckResult { id: id.to_owned(), valid: true, ..Default::default() };
    let fail = |result: &mut CheckResult, kind: &str, msg: String| {
        if result.valid {
            result.valid = false;
            result.error_type = Some(format!("multi_turn:{kind}"));
            result.error = Some(msg);
        }
    };
    if model.len() != truth.turns.len() {
        fail(
            &mut result,
            "force_terminated",
            format!("the model gave {} turns, the ground truth has {}", model.len(), truth.turns.len()),
        );
    }
    let normalise = |c: &Call| docs.and_then(|d| d.validate(c).ok()).unwrap_or_else(|| c.clone());
    let mut all_model_results: Vec<String> = Vec::new();
    let (mut checked, mut states_ok, mut expected, mut matched) = (0usize, 0usize, 0usize, 0usize);
    for (t, truth_calls) in truth.turns.iter().enumerate() {
        let steps: &[Vec<Call>] = model.get(t).map_or(&[], Vec::as_slice);
        let mut report = TurnReport { ground_truth_calls: truth_calls.len(), ..Default::default() };
        let mut turn_model_calls = Vec::new();
        for step in steps {
            for call in step {
                all_model_results.push(envs.run_model(t, call));
                turn_model_calls.push(normalise(call));
            }
        }
        report.model_calls = turn_model_calls.len();
        let truth_results: Vec<String> = truth_calls.iter().map(|c| envs.run_truth(t, c)).collect();
        // Function matching: each model call of the turn can match one expected call.
        let mut unused: Vec<&Call> = turn_model_calls.iter().collect();
        for c in truth_calls {
            let c = normalise(c);
            if let Some(i) = unused.iter().position(|m| m.name == c.name && m.kwargs == c.kwargs && m.args == c.args) {
                unused.swap_remove(i);
                report.matched_calls += 1;
            }
        }
        expected += truth_calls.len();
        matched += report.matched_calls;

        if truth_calls.is_empty() {
            if opts.irrelevance && report.model_calls > 0 {
                fail(&mut result, "irrelevance_error", format!("turn {t}: calls made where none were expected"));
            }
            result.turns.push(report);
            continue;
        }
        checked += 1;
        if report.model_calls == 0 {
            fail(&mut result, "empty_turn_model_response", format!("Model response list is empty for turn {t}"));
        }
        report.state_differences = envs.state_differences(t);
        let state_ok = report.state_differences.is_empty();
        report.state_ok = Some(state_ok);
        if state_ok {
            states_ok += 1;
        } else {
            fail(
                &mut result,
                "instance_state_mismatch",
                format!("turn {t}: state differs in {}", report.state_differences.join(", ")),
            );
        }
        let mut pool: Vec<&String> = all_model_results.iter().collect();
        for r in &truth_results {
            match pool.iter().position(|m| *m == r) {
                Some(i) => {
                    pool.swap_remove(i);
                }
                None => report.missing_results.push(r.clone()),
            }
        }
        let response_ok = report.missing_results.is_empty();
        report.response_ok = Some(response_ok);
        if !response_ok {
            fail(
                &mut result,
                "execution_response_mismatch",
                format!("turn {t}: {} expected results missing from the model's", report.missing_results.len()),
            );
        }
        result.turns.push(report);
    }
    result.state_fraction = if checked == 0 { 1.0 } else { states_ok as f64 / checked as f64 };
    result.function_fraction = if expected == 0 { 1.0 } else { matched as f64 / expected as f64 };
    result
}

/// The ground truth's calls as model calls: one step per turn (the replay of
/// `--replay-ground-truth`).
pub fn as_model_calls(truth: &GroundTruth) -> ModelCalls {
    truth.turns.iter().map(|calls| if calls.is_empty() { vec![] } else { vec![calls.clone()] }).collect()
}
