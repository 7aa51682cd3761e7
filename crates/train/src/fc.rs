//! Multi-turn function calling (ARTIST on BFCL): episodes, their rewards, and GRPO on them.
//!
//! An episode is one BFCL entry played by the model. The system prompt lists the entry's
//! functions; each user turn is appended in ChatML after the model's previous turn, and
//! within a turn the model plans in `<reasoning>`, calls functions in `<tool>` (a JSON
//! list or BFCL's call syntax), and reads their results in `<output>` (forced, mask 0),
//! up to `max_steps_per_turn` calls; the turn ends when it stops without a call. The
//! entry's environments live across all turns. At miss_func's hand-over turn the held-back
//! functions are released and their docs shown in that user message.
//!
//! Only calls that parse and pass the schema run; each tool block that ran becomes one
//! "step" of the model's calls, which [`artist_bfcl::checker::check_entry`] replays on fresh
//! instances to score the episode as BFCL does. The rewards are ARTIST's: state (fraction
//! of checked turns with the right state) and function (fraction of expected calls
//! matched), 0.5 each, plus `<reasoning>`/`<tool>` format rewards.
//!
//! Every turn's prompt holds the whole conversation so far, kept as ids (the model's own
//! tokens are never re-tokenized); the engine's kept cache prefills only what is new.
//!
//! With `bfcl.environment = "mcp"` the functions are an MCP server's: each episode gets a
//! server of its own (set up with the entry's `initial_config` through `mcp.setup_tool`),
//! its calls' results and its state after every turn (`mcp.state_tool`) are recorded, and
//! the checker replays those records against the ground truth's, played once per entry on
//! a server of its own ([`checker::Recorded`]): the same verdict and fractions, with the
//! states compared as the server reports them.
//!
//! With `bfcl.user_command` a program writes the user's turns after the first ([`Users`],
//! tau-bench's simulated user), and a conversation is scored as one turn: the final state
//! and every call against the ground truth's calls of all turns.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use artist_bfcl::checker::{self, CheckOptions, CheckResult, Entry, GroundTruth, ModelCalls, TurnRecord};
use artist_bfcl::{Call, FunctionDoc, LongContext, Session, ToolSet, parse_calls};
use artist_engine::{KeptCache, Policy, RolloutConfig, RolloutEngine, SamplingParams};
use artist_model::Qwen2;
use artist_optim::AdamW;
use artist_rl::{FcRewardWeights, FcRewards, TrainRollout, fc_format_rewards};
use artist_tokenizer::{ChatTemplate, Message, Tokenizer};
use artist_tools::workers::LineWorkers;
use artist_tools::{McpSession, McpTool, Tool, ToolCall, ToolResult};
use serde::{Deserialize, Serialize};

use crate::grpo::{
    Evaluation, GrpoRunConfig, GrpoTask, LogPlace, StepMetrics, combine_step_sums, groups_to_train, play_rounds,
    update_sharded, whiten_advantages,
};
use crate::{Error, Result};
use artist_dist::{Communicator, shard_range};

/// What BFCL sends at miss_func's hand-over turn (its question turn is empty).
pub const HANDOVER_MESSAGE: &str = "I have updated some more functions you can choose from. What about now?";

/// The `[bfcl]` section of a run configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BfclSettings {
    /// BFCL multi-turn questions files (JSON Lines).
    pub questions: Vec<PathBuf>,
    /// Their possible_answer files, in the same order (default: the same file name in
    /// `possible_answer` beside each questions directory).
    pub answers: Vec<PathBuf>,
    /// The func_doc directory (default: `func_doc` beside the first questions directory).
    pub func_doc: Option<PathBuf>,
    /// Long-context filler (scripts/bfcl_long_context.sh); without it long-context
    /// entries run on their plain scenario.
    pub long_context: Option<PathBuf>,
    /// Entries taken from the start of each file (0: all); ARTIST trains on 100 tasks.
    pub first: usize,
    /// Entries skipped at the start of each file before `first` are taken (a held-out
    /// split takes the entries a training run skipped).
    pub skip: usize,
    /// Tool calls per user turn (BFCL's step limit is 20).
    pub max_steps_per_turn: usize,
    /// Calls where the ground truth expects none fail the turn.
    pub irrelevance: bool,
    /// Where the episodes' functions run: `builtin` (BFCL's environments, in Rust) or `mcp`
    /// (the `[mcp]` server's tools, a server of its own per episode; see the module doc).
    pub environment: FcEnvironment,
    /// A program that plays the user after the first turn (tau-bench's simulated user):
    /// asked after each of the model's turns for the next message, or for the end of the
    /// conversation (see [`Users`]). Empty (the default): the entry's own turns.
    pub user_command: Vec<String>,
    /// Copies of the user program started, each answering one episode at a time.
    pub user_workers: usize,
    /// Seconds the user program may take per message.
    pub user_timeout_s: f64,
    /// With `user_command`: the most user turns of an episode, the entry's first included.
    pub max_user_turns: usize,
}

/// Where an episode's function calls run (`bfcl.environment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FcEnvironment {
    /// BFCL's own environments (`involved_classes`, `func_doc`).
    #[default]
    Builtin,
    /// The tools of the `[mcp]` server: each episode (and each ground-truth replay) gets a
    /// server of its own, set up with the entry's `initial_config` (`mcp.setup_tool`), and
    /// its state is read after every turn (`mcp.state_tool`).
    Mcp,
}

impl Default for BfclSettings {
    fn default() -> Self {
        BfclSettings {
            questions: vec![],
            answers: vec![],
            func_doc: None,
            long_context: None,
            first: 0,
            skip: 0,
            max_steps_per_turn: 20,
            irrelevance: false,
            environment: FcEnvironment::Builtin,
            user_command: Vec::new(),
            user_workers: 1,
            user_timeout_s: 60.0,
            max_user_turns: 10,
        }
    }
}

/// Entries with their ground truth and docs, ready to play.
pub struct FcData {
    pub entries: Vec<Entry>,
    pub truths: Vec<GroundTruth>,
    /// Each entry's functions (held-back ones hidden), read from `func_doc` once at load, or
    /// from the MCP server's list.
    pub tools: Vec<ToolSet>,
    pub func_doc: PathBuf,
    pub long_context: Option<LongContext>,
    /// `bfcl.environment = "mcp"`: the server the episodes' sessions come from.
    pub mcp: Option<Arc<McpTool>>,
    /// `bfcl.user_command`: the program that writes the user's turns after the first.
    pub users: Option<Arc<Users>>,
    /// Each entry's `"outputs"` (tau-bench's): what the model must tell the user to pass.
    pub outputs: Vec<Vec<String>>,
    /// The ground truth played on the MCP server, per entry (played once, when an episode
    /// of the entry is first scored: the server is taken to be deterministic).
    truth_records: Mutex<HashMap<usize, Arc<TruthRecord>>>,
}

/// An entry's ground truth as played on an MCP server: the state before the first turn,
/// then each turn's results and the state after it.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthRecord {
    pub initial: String,
    pub turns: Vec<TurnRecord>,
}

impl FcData {
    /// BFCL's entries on its own environments (`bfcl.environment = "builtin"`): the
    /// functions from `func_doc`.
    pub fn load(s: &BfclSettings) -> Result<FcData> {
        if s.environment == FcEnvironment::Mcp {
            return Err(Error::Config(
                "bfcl.environment = \"mcp\": the entries are loaded with the server's tools (FcData::load_mcp)".into(),
            ));
        }
        let Entries { entries, truths, outputs } = load_entries(s)?;
        let func_doc = s.func_doc.clone().unwrap_or_else(|| sibling(&s.questions[0], "func_doc"));
        let long_context = match &s.long_context {
            None => None,
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(crate::error::io(p))?;
                Some(LongContext::from_json_str(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?)
            }
        };
        let tools = entries
            .iter()
            .map(|e| ToolSet::for_entry(&func_doc, &e.raw).map_err(|err| Error::Config(format!("{}: {err}", e.id))))
            .collect::<Result<_>>()?;
        Ok(FcData {
            entries,
            truths,
            tools,
            func_doc,
            long_context,
            mcp: None,
            users: None,
            outputs,
            truth_records: Default::default(),
        })
    }

    /// [`FcData::load`] or, with a server, [`FcData::load_mcp`].
    pub fn load_on(s: &BfclSettings, server: Option<&Arc<McpTool>>) -> Result<FcData> {
        match server {
            None => FcData::load(s),
            Some(server) => FcData::load_mcp(s, Arc::clone(server)),
        }
    }

    /// Entries in BFCL's format played on an MCP server's tools (`bfcl.environment =
    /// "mcp"`): every entry is shown the server's functions (less the grader's tools and
    /// those its `missed_function` holds back until their turn).
    pub fn load_mcp(s: &BfclSettings, server: Arc<McpTool>) -> Result<FcData> {
        if s.long_context.is_some() {
            return Err(Error::Config("bfcl.long_context is for BFCL's own environments, not an MCP server's".into()));
        }
        let Entries { entries, truths, outputs } = load_entries(s)?;
        let all = mcp_tool_set(&server)?;
        let tools = entries
            .iter()
            .map(|e| {
                let mut set = all.clone();
                for names in e.missed_function.values() {
                    set.hold_back(names).map_err(|err| Error::Config(format!("{}: missed_function: {err}", e.id)))?;
                }
                Ok(set)
            })
            .collect::<Result<_>>()?;
        Ok(FcData {
            entries,
            truths,
            tools,
            func_doc: PathBuf::new(),
            long_context: None,
            mcp: Some(server),
            users: None,
            outputs,
            truth_records: Default::default(),
        })
    }

    /// Entry `i`'s ground truth played on a server of its own (once; then kept).
    pub fn truth_record(&self, i: usize) -> Result<Arc<TruthRecord>> {
        self.play_truths(&[i])?;
        let records = self.truth_records.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Arc::clone(&records[&i]))
    }

    /// Plays the ground truth of those of `entries` not played yet, each on a server of
    /// its own, all at once (`bfcl.environment = "mcp"`; nothing to do otherwise).
    pub fn play_truths(&self, entries: &[usize]) -> Result<()> {
        let Some(server) = &self.mcp else { return Ok(()) };
        let mut missing: Vec<usize> = {
            let records = self.truth_records.lock().unwrap_or_else(|p| p.into_inner());
            entries.iter().copied().filter(|i| !records.contains_key(i)).collect()
        };
        missing.sort_unstable();
        missing.dedup();
        if let Some(&bad) = missing.iter().find(|&&i| i >= self.entries.len()) {
            return Err(Error::Config(format!("no entry {bad}")));
        }
        let played: Vec<Result<TruthRecord>> = std::thread::scope(|scope| {
            let handles: Vec<_> = missing.iter().map(|&i| scope.spawn(move || self.play_truth(server, i))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::Config("a ground-truth replay panicked".into()))))
                .collect()
        });
        let mut records = self.truth_records.lock().unwrap_or_else(|p| p.into_inner());
        for (i, record) in missing.into_iter().zip(played) {
            records.insert(i, Arc::new(record?));
        }
        Ok(())
    }

    /// Entry `i`'s ground truth, turn by turn, on a server of its own.
    fn play_truth(&self, server: &McpTool, i: usize) -> Result<TruthRecord> {
        let entry = &self.entries[i];
        let fail = |e: String| Error::Config(format!("{}: playing the ground truth on the MCP server: {e}", entry.id));
        let session = server.open_session(&entry.initial_config).map_err(|e| fail(e.to_string()))?;
        let initial = read_state(&session).map_err(fail)?;
        let mut turns = Vec::with_capacity(self.truths[i].turns.len());
        for calls in &self.truths[i].turns {
            let results = calls
                .iter()
                .map(|c| {
                    let c = self.tools[i].validate(c).unwrap_or_else(|_| c.clone());
                    match json_arguments(&c) {
                        Ok(args) => session.call(&c.name, args).0,
                        Err(e) => format!("error: {e}"),
                    }
                })
                .collect();
            turns.push(TurnRecord { results, state: read_state(&session).map_err(fail)? });
        }
        Ok(TruthRecord { initial, turns })
    }
}

/// The user of multi-turn episodes as a program (`bfcl.user_command`), as tau-bench's
/// simulated user: after each of the model's turns it reads one JSON line
/// `{"id", "turn", "entry", "messages", "state"}` (the entry's id and whole line, the turn
/// it is asked to write, the conversation so far as `{"role", "content"}` messages with the
/// model's own text of each turn, and the environment's state: an MCP server's last read,
/// or BFCL's instances' attributes as JSON by class) and
/// writes `{"message": "..."}` for the next user turn or `{"done": true}` to end the
/// conversation. The entry's first turn is its own. Scoring then compares the final state
/// and every call made against the ground truth's calls, all turns as one.
pub struct Users {
    workers: LineWorkers,
    /// The most user turns of an episode, the first included.
    pub max_turns: usize,
}

impl Users {
    /// Starts `bfcl.user_command` (`None` without one).
    pub fn spawn(s: &BfclSettings) -> Result<Option<Users>> {
        if s.user_command.is_empty() {
            return Ok(None);
        }
        if s.max_user_turns == 0 {
            return Err(Error::Config("bfcl.max_user_turns must be >= 1".into()));
        }
        let workers =
            LineWorkers::spawn(&s.user_command, s.user_workers, "ARTIST_USER_WORKER", s.user_timeout_s, "reply")
                .map_err(|e| Error::Config(format!("bfcl.user_command {:?}: {e}", s.user_command.join(" "))))?;
        Ok(Some(Users { workers, max_turns: s.max_user_turns }))
    }

    /// How many episodes it answers at once.
    pub fn workers(&self) -> usize {
        self.workers.workers()
    }

    /// The next user message of an episode, or `None` when the user ends it.
    pub fn next(&self, request: &serde_json::Value) -> Result<Option<String>> {
        let read = |line: &str| -> std::result::Result<Option<String>, String> {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|_| format!("answered {line:?}, not JSON"))?;
            if v.get("done").and_then(serde_json::Value::as_bool) == Some(true) {
                return Ok(None);
            }
            match v.get("message") {
                Some(serde_json::Value::String(m)) => Ok(Some(m.clone())),
                _ => Err(format!("answered {line}: neither a string \"message\" nor \"done\": true")),
            }
        };
        (self.workers.ask(request, read))
            .map_err(|e| Error::Config(format!("bfcl.user_command {:?}: {e}", self.workers.command())))
    }
}

/// The server's functions as a tool set (the grader's tools left out). A tool whose input
/// schema this checker cannot read is kept with its parameters' names and no types (the
/// server checks them).
fn mcp_tool_set(server: &McpTool) -> Result<ToolSet> {
    let docs = (server.tools().iter())
        .filter(|t| !server.config().hides(&t.name))
        .map(|t| {
            let doc = serde_json::json!({"name": t.name, "description": t.description.clone().unwrap_or_default(),
                "parameters": t.input_schema});
            FunctionDoc::from_json(&doc, "mcp").or_else(|_| {
                let names: Vec<String> = (t.input_schema.get("properties").and_then(|p| p.as_object()))
                    .map(|p| p.keys().cloned().collect())
                    .unwrap_or_default();
                let required: Vec<&String> = (t.input_schema.get("required").and_then(|r| r.as_array()))
                    .map(|r| {
                        r.iter().filter_map(|x| x.as_str()).filter_map(|x| names.iter().find(|n| *n == x)).collect()
                    })
                    .unwrap_or_default();
                let properties: serde_json::Map<String, serde_json::Value> =
                    names.iter().map(|n| (n.clone(), serde_json::json!({}))).collect();
                let loose = serde_json::json!({"name": t.name, "description": t.description.clone().unwrap_or_default(),
                    "parameters": {"type": "object", "properties": properties, "required": required}});
                FunctionDoc::from_json(&loose, "mcp").map_err(|e| Error::Config(format!("mcp tool {}: {e}", t.name)))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    ToolSet::new(docs).map_err(|e| Error::Config(format!("the MCP server's tools: {e}")))
}

/// A call's arguments as the JSON object an MCP server takes (every argument by name).
fn json_arguments(call: &Call) -> std::result::Result<serde_json::Value, String> {
    if !call.args.is_empty() {
        return Err(format!("{}: name every argument", call.name));
    }
    let mut map = serde_json::Map::new();
    for (k, v) in &call.kwargs {
        let text = artist_bfcl::value::json_dumps(v).and_then(|t| serde_json::from_str(&t).ok());
        let value = text.ok_or_else(|| format!("argument {k:?} of {} cannot be written as JSON", call.name))?;
        map.insert(k.clone(), value);
    }
    Ok(serde_json::Value::Object(map))
}

/// The entries and their ground truth from `bfcl.questions` and `bfcl.answers`.
/// What `bfcl.questions` and `bfcl.answers` give: the entries, their ground truth and their
/// `"outputs"`.
struct Entries {
    entries: Vec<Entry>,
    truths: Vec<GroundTruth>,
    outputs: Vec<Vec<String>>,
}

fn load_entries(s: &BfclSettings) -> Result<Entries> {
    if s.questions.is_empty() {
        return Err(Error::Config("bfcl.questions: no questions file given".into()));
    }
    if !s.answers.is_empty() && s.answers.len() != s.questions.len() {
        return Err(Error::Config(format!(
            "bfcl.answers: {} files for {} questions files",
            s.answers.len(),
            s.questions.len()
        )));
    }
    let data_err = |e: checker::DataError| Error::Config(e.to_string());
    let (mut entries, mut truths) = (vec![], vec![]);
    for (i, q) in s.questions.iter().enumerate() {
        let a = s.answers.get(i).cloned().unwrap_or_else(|| sibling(q, "possible_answer"));
        let es = checker::load_questions(q).map_err(data_err)?;
        let ts = checker::load_answers(&a).map_err(data_err)?;
        let take = if s.first == 0 { usize::MAX } else { s.first };
        for e in es.into_iter().skip(s.skip).take(take) {
            let t = ts.iter().find(|t| t.id == e.id).ok_or_else(|| {
                Error::Config(format!("{}: no ground truth for {} in {}", q.display(), e.id, a.display()))
            })?;
            // Under a user program the conversation has its own turns, scored as a whole.
            if t.turns.len() != e.turns.len() && s.user_command.is_empty() {
                return Err(Error::Config(format!("{}: turn counts differ in {}", e.id, a.display())));
            }
            truths.push(t.clone());
            entries.push(e);
        }
    }
    if entries.is_empty() {
        return Err(Error::Config("bfcl: no entries selected (check first/skip)".into()));
    }
    let outputs = entries.iter().map(required_outputs).collect::<Result<_>>()?;
    Ok(Entries { entries, truths, outputs })
}

/// `DIR/questions/X.json` -> `DIR/<name>/X.json` (or `DIR/<name>` for a directory name).
fn sibling(questions: &Path, name: &str) -> PathBuf {
    let root = questions.parent().and_then(Path::parent).unwrap_or(Path::new("."));
    if name == "func_doc" { root.join(name) } else { root.join(name).join(questions.file_name().unwrap_or_default()) }
}

/// How episodes are sampled.
#[derive(Debug, Clone)]
pub struct EpisodeSettings {
    pub group_size: usize,
    pub sampling: SamplingParams,
    pub max_turn_tokens: usize,
    /// The whole conversation.
    pub max_context: usize,
    pub max_steps_per_turn: usize,
    pub max_batch: usize,
    pub eos_ids: Vec<u32>,
    /// The dtype the policy's linear layers multiply in (see `RolloutConfig::matmul_dtype`).
    pub matmul_dtype: Option<artist_tensor::DType>,
    /// What the KV cache stores (see `RolloutConfig::kv_cache_dtype`).
    pub kv_cache_dtype: artist_tensor::DType,
    /// The global index of the first episode played (its entry's position in the whole
    /// batch times `group_size`): episode `i` samples every turn with a seed made from
    /// `first_episode + i`, so a batch split over ranks plays what one process would.
    pub first_episode: usize,
    /// Prefill the first turn's prompt (the system prompt, the functions and the first user
    /// message: the same for an entry's `group_size` episodes) once per entry and fork it
    /// into its episodes' slots (`rollout.share_prefix`); later turns differ per episode.
    pub share_first_turn: bool,
}

/// One played episode.
#[derive(Debug, Clone)]
pub struct Episode {
    /// Index into the data's entries, and of the sample in its group.
    pub entry: usize,
    pub sample: usize,
    /// The system prompt and the first user turn.
    pub prompt_ids: Vec<u32>,
    /// Everything after: the model's turns (mask 1), tool outputs and later user turns (0).
    pub ids: Vec<u32>,
    pub mask: Vec<u8>,
    /// The sampler's logprobs of `ids` (0 where forced).
    pub logprobs: Vec<f32>,
    /// The calls that ran, per turn and step.
    pub calls: ModelCalls,
    /// Turns the model played before the episode ended.
    pub turns_played: usize,
    /// The context limit ended the episode early.
    pub truncated: bool,
    pub tool_calls: usize,
    /// Calls refused (unparsable, unknown, bad arguments) or that raised.
    pub tool_errors: usize,
    /// On an MCP server (`bfcl.environment = "mcp"`): the state before the first turn,
    /// then per turn played the results of its calls and the state after it.
    pub initial_state: Option<String>,
    pub records: Vec<TurnRecord>,
}

impl Episode {
    /// The tokens the model wrote (mask 1), across all its turns.
    pub fn sampled_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 1).count()
    }
}

/// Where one episode's calls run.
enum Env {
    Bfcl(Session),
    Mcp(McpSession),
}

/// The live state of one episode's environments and tools.
struct Live {
    env: Env,
    tools: ToolSet,
    steps: Vec<Vec<artist_bfcl::Call>>,
    /// The results of this turn's calls that ran, in order.
    results: Vec<String>,
    calls: usize,
    errors: usize,
}

/// The `<tool>` tool: per rollout of the current engine run (prompt `p`'s sample `k` at
/// `p * group + k`), the episode it belongs to (each behind a lock of its own, so episodes'
/// calls to servers overlap).
struct BfclTool {
    live: Vec<Mutex<Option<Live>>>,
    group: usize,
}

impl Tool for BfclTool {
    fn name(&self) -> &str {
        "bfcl"
    }
    fn tag(&self) -> &str {
        "tool"
    }
    fn execute(&self, call: &ToolCall) -> ToolResult {
        let started = Instant::now();
        let Some(slot) = self.live.get(call.prompt * self.group + call.sample) else {
            return ToolResult { output: "no environment for this rollout".into(), ..Default::default() };
        };
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        let Some(live) = guard.as_mut() else {
            return ToolResult { output: "no environment for this rollout".into(), ..Default::default() };
        };
        let (output, success) = run_block(live, &call.text);
        ToolResult { output, success, elapsed_ms: started.elapsed().as_millis() as u64, ..Default::default() }
    }
}

/// Runs one `<tool>` block: the text the model reads, and whether every call ran cleanly.
fn run_block(live: &mut Live, text: &str) -> (String, bool) {
    let calls = match parse_calls(text) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            live.errors += 1;
            return ("Error: no function call found; write a JSON list of calls".into(), false);
        }
        Err(e) => {
            live.errors += 1;
            return (
                format!(
                    "Error: could not read the call ({e}); write [{{\"name\": ..., \"arguments\": {{...}}}}] \
                     or name(arg=value)"
                ),
                false,
            );
        }
    };
    let mut lines = Vec::with_capacity(calls.len());
    let mut ran = Vec::new();
    let mut ok = true;
    for c in &calls {
        live.calls += 1;
        let result = match live.tools.validate_shown(c) {
            Err(e) => {
                ok = false;
                live.errors += 1;
                format!("Error: {e}")
            }
            Ok(normal) => {
                let (r, failed) = match &mut live.env {
                    Env::Bfcl(session) => {
                        let r = session.execute(&normal);
                        let failed = r.starts_with("Error during execution") || r.starts_with("{\"error\"");
                        (r, failed)
                    }
                    Env::Mcp(session) => match json_arguments(&normal) {
                        Ok(args) => {
                            let (r, ok) = session.call(&normal.name, args);
                            (r, !ok)
                        }
                        Err(e) => (format!("error: {e}"), true),
                    },
                };
                if failed {
                    ok = false;
                    live.errors += 1;
                }
                live.results.push(r.clone());
                ran.push(normal);
                r
            }
        };
        lines.push(if calls.len() == 1 { result } else { format!("{}: {result}", c.name) });
    }
    if !ran.is_empty() {
        live.steps.push(ran);
    }
    (lines.join("\n"), ok)
}

/// Function schemas as the model reads them: one compact JSON object per line (as
/// Qwen2.5's template lists tools).
fn tool_lines(tools: &serde_json::Value) -> String {
    tools.as_array().map_or(&[][..], Vec::as_slice).iter().map(|t| t.to_string()).collect::<Vec<_>>().join("\n")
}

/// The ChatML text that closes the model's turn and opens the next user turn.
fn user_turn_text(content: &str) -> String {
    format!("\n<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n")
}

/// The user text of turn `t` of `entry` (or `written`, the user program's), releasing
/// held-back functions at the hand-over.
fn user_message(entry: &Entry, t: usize, written: Option<String>, tools: &mut ToolSet) -> Result<String> {
    let mut text = match written {
        Some(text) => text,
        None => entry.turns[t].join("\n"),
    };
    if let Some(names) = entry.missed_function.get(&t) {
        tools.release(names).map_err(|e| Error::Config(format!("{}: missed_function: {e}", entry.id)))?;
        let docs: Vec<serde_json::Value> = names.iter().filter_map(|n| tools.get(n)).map(|d| d.tool_json()).collect();
        if text.is_empty() {
            text = HANDOVER_MESSAGE.into();
        }
        text.push_str(&format!("\n\nNew functions:\n{}", tool_lines(&serde_json::Value::Array(docs))));
    }
    Ok(text)
}

struct Playing {
    entry: usize,
    sample: usize,
    prompt_ids: Vec<u32>,
    ids: Vec<u32>,
    mask: Vec<u8>,
    logprobs: Vec<f32>,
    calls: ModelCalls,
    live: Option<Live>,
    done: bool,
    truncated: bool,
    initial_state: Option<String>,
    records: Vec<TurnRecord>,
    /// The conversation as the user program reads it (`{"role", "content"}`).
    messages: Vec<serde_json::Value>,
    /// The user program's next message.
    next_user: Option<String>,
}

impl Playing {
    fn context(&self) -> usize {
        self.prompt_ids.len() + self.ids.len()
    }
    fn force(&mut self, ids: &[u32]) {
        self.ids.extend_from_slice(ids);
        self.mask.extend(std::iter::repeat_n(0, ids.len()));
        self.logprobs.extend(std::iter::repeat_n(0.0, ids.len()));
    }
}

/// Plays `group_size` episodes of each of `entries` (indexes into `data`).
pub fn run_episodes<P: Policy>(
    policy: &P,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    data: &FcData,
    entries: &[usize],
    s: &EpisodeSettings,
) -> Result<Vec<Episode>> {
    let im_end = tokenizer
        .token_to_id("<|im_end|>")
        .ok_or_else(|| Error::Config("multi-turn episodes need a ChatML tokenizer (no <|im_end|> token)".into()))?;
    let mut playing = Vec::with_capacity(entries.len() * s.group_size);
    // On an MCP server: every episode's own server, started (and set up) all at once.
    let mut sessions = match &data.mcp {
        None => None,
        Some(server) => Some(open_sessions(server, data, entries, s.group_size)?.into_iter()),
    };
    for &i in entries {
        let entry = data.entries.get(i).ok_or_else(|| Error::Config(format!("no entry {i}")))?;
        let session = match sessions {
            Some(_) => None,
            None => Some(
                Session::new(
                    &entry.involved_classes,
                    &entry.initial_config,
                    if entry.long_context() { data.long_context.as_ref() } else { None },
                )
                .map_err(|e| Error::Config(format!("{}: {e}", entry.id)))?,
            ),
        };
        let tools = data.tools[i].clone();
        let tools_json = tool_lines(&tools.tools_json());
        let system = artist_rl::prompts::fc_system_prompt(&tools_json);
        let mut first_tools = tools.clone();
        let first = user_message(entry, 0, None, &mut first_tools)?;
        let text = template.render(&[Message::system(system), Message::user(first.clone())], None, true)?;
        if !text.contains("<|im_start|>") {
            return Err(Error::Config("multi-turn episodes need a ChatML chat template".into()));
        }
        let prompt_ids = tokenizer.encode(&text)?;
        for sample in 0..s.group_size {
            let (env, initial_state) = match (&session, sessions.as_mut().and_then(Iterator::next)) {
                (Some(session), _) => (Env::Bfcl(session.clone()), None),
                (None, Some((mcp, state))) => (Env::Mcp(mcp), Some(state)),
                (None, None) => unreachable!("a session per episode"),
            };
            playing.push(Playing {
                entry: i,
                sample,
                prompt_ids: prompt_ids.clone(),
                ids: vec![],
                mask: vec![],
                logprobs: vec![],
                calls: vec![],
                live: Some(Live {
                    env,
                    tools: first_tools.clone(),
                    steps: vec![],
                    results: vec![],
                    calls: 0,
                    errors: 0,
                }),
                done: false,
                truncated: false,
                initial_state,
                records: vec![],
                messages: match &data.users {
                    Some(_) => vec![serde_json::json!({"role": "user", "content": first})],
                    None => Vec::new(),
                },
                next_user: None,
            });
        }
    }
    let (mut tool_calls, mut tool_errors) = (vec![0usize; playing.len()], vec![0usize; playing.len()]);
    // The entry's turns, or as many as the user program asks for (up to its limit).
    let turns = |p: &Playing| data.users.as_ref().map_or(data.entries[p.entry].turns.len(), |u| u.max_turns);
    let max_turns = playing.iter().map(turns).max().unwrap_or(0);
    // Across turns the cache keeps each conversation: a turn prefills only the new user
    // message (and the token that ended the last turn), not the whole conversation again.
    let mut kept = KeptCache::default();
    for t in 0..max_turns {
        // The prompts of this turn: the conversation so far and the new user message.
        let mut active = Vec::new();
        let mut prompts = Vec::new();
        let mut seeds = Vec::new();
        for (k, p) in playing.iter_mut().enumerate() {
            if p.done || t >= turns(p) {
                continue;
            }
            if t > 0 {
                if p.ids.last() != Some(&im_end) {
                    p.force(&[im_end]);
                }
                let written = match (&data.users, p.next_user.take()) {
                    (None, _) => None,
                    (Some(_), Some(m)) => Some(m),
                    // The user ended the conversation.
                    (Some(_), None) => {
                        p.done = true;
                        continue;
                    }
                };
                let live = p.live.as_mut().expect("live while playing");
                let msg = user_message(&data.entries[p.entry], t, written, &mut live.tools)?;
                let ids = tokenizer.encode(&user_turn_text(&msg))?;
                if p.context() + ids.len() + 8 > s.max_context {
                    p.done = true;
                    p.truncated = true;
                    continue;
                }
                p.force(&ids);
                if data.users.is_some() {
                    p.messages.push(serde_json::json!({"role": "user", "content": msg}));
                }
            }
            if t == 0 && p.context() + 8 > s.max_context {
                // The system prompt and first turn alone fill the context: nothing to play.
                p.done = true;
                p.truncated = true;
                continue;
            }
            let mut full = p.prompt_ids.clone();
            full.extend_from_slice(&p.ids);
            prompts.push(full);
            seeds.push(
                s.sampling
                    .seed
                    .wrapping_add((t as u64).wrapping_mul(1_000_003))
                    .wrapping_add((s.first_episode + k) as u64),
            );
            active.push(k);
        }
        if active.is_empty() {
            break;
        }
        // The first turn: an entry's episodes share one prompt, prefilled once and forked
        // (their seeds stay theirs: sample j of the group draws with its episode's seed).
        let g = s.group_size.max(1);
        let group = if t == 0
            && s.share_first_turn
            && g > 1
            && active.len() % g == 0
            && active
                .chunks(g)
                .all(|c| c.windows(2).all(|w| w[1] == w[0] + 1 && playing[w[0]].entry == playing[w[1]].entry))
        {
            prompts = prompts.into_iter().step_by(g).collect();
            seeds = seeds.into_iter().step_by(g).collect();
            g
        } else {
            1
        };
        let tool =
            Arc::new(BfclTool { live: active.iter().map(|&k| Mutex::new(playing[k].live.take())).collect(), group });
        let engine = RolloutEngine {
            policy,
            tokenizer,
            tools: vec![tool.clone() as Arc<dyn Tool>],
            config: RolloutConfig {
                group_size: group,
                sampling: s.sampling.clone(),
                max_turn_tokens: s.max_turn_tokens,
                max_response_tokens: s.max_context,
                max_tool_calls: s.max_steps_per_turn,
                max_context: s.max_context,
                // The same every turn, so the kept cache keeps its shape.
                max_batch: s.max_batch.max(g),
                share_prefix: group > 1,
                // BFCL's environments answer in microseconds: waiting for them costs
                // nothing and makes episodes repeat to the bit (an MCP server's answers
                // take longer, but are waited for alike, for the same reason).
                deterministic: true,
                eos_ids: s.eos_ids.clone(),
                stop_texts: Vec::new(),
                matmul_dtype: s.matmul_dtype,
                kv_cache_dtype: s.kv_cache_dtype,
                ..Default::default()
            },
        };
        let (rollouts, _) = engine
            .run_keeping_seeded(&prompts, &seeds, &mut kept)
            .map_err(|e| Error::Config(format!("episode turn {t}: {e}")))?;
        let mut lives: Vec<Option<Live>> =
            tool.live.iter().map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).take()).collect();
        // On an MCP server: each episode's state after the turn, read from every server at once.
        let states = turn_states(&lives);
        for r in rollouts {
            let at = r.prompt_index * group + r.sample_index;
            let k = active[at];
            let p = &mut playing[k];
            p.ids.extend_from_slice(&r.ids);
            p.mask.extend_from_slice(&r.mask);
            p.logprobs.extend(r.mask.iter().zip(&r.logprobs).map(|(&m, &l)| if m == 1 { l } else { 0.0 }));
            let mut live = lives[at].take().expect("each rollout's state comes back once");
            p.calls.push(std::mem::take(&mut live.steps));
            if let Some(state) = states[at].clone() {
                p.records.push(TurnRecord { results: std::mem::take(&mut live.results), state });
            }
            live.results.clear();
            (tool_calls[k], tool_errors[k]) = (live.calls, live.errors);
            p.live = Some(live);
            if matches!(r.finish, artist_engine::Finish::Context | artist_engine::Finish::ResponseTokens) {
                p.done = true;
                p.truncated = true;
            }
            if data.users.is_some() {
                // What the user reads of the turn: the model's own text, without the tools'
                // outputs and the token that ends the turn.
                let own: Vec<u32> =
                    r.ids.iter().zip(&r.mask).filter(|&(&id, &m)| m == 1 && id != im_end).map(|(&id, _)| id).collect();
                p.messages
                    .push(serde_json::json!({"role": "assistant", "content": tokenizer.decode_lossy(&own, false)}));
            }
        }
        if let Some(users) = &data.users
            && t + 1 < users.max_turns
        {
            // The user program writes each live conversation's next turn, or ends it.
            let asked: Vec<usize> = active.iter().copied().filter(|&k| !playing[k].done).collect();
            let requests: Vec<serde_json::Value> = (asked.iter())
                .map(|&k| {
                    let p = &playing[k];
                    let entry = &data.entries[p.entry];
                    // The environment's state: the MCP server's last read, or BFCL's
                    // instances' public attributes as JSON (`{"Class": {"attr": ...}}`).
                    let state = match p.live.as_ref().map(|l| &l.env) {
                        Some(Env::Bfcl(session)) => Some(bfcl_state_json(session)),
                        _ => p.records.last().map(|r| r.state.clone()).or_else(|| p.initial_state.clone()),
                    };
                    serde_json::json!({"id": entry.id, "turn": t + 1, "entry": entry.raw, "messages": p.messages,
                        "state": state})
                })
                .collect();
            let replies =
                artist_tools::workers::in_parallel(users.workers(), requests.len(), |i| users.next(&requests[i]));
            for (&k, reply) in asked.iter().zip(replies) {
                match reply? {
                    Some(m) => playing[k].next_user = Some(m),
                    None => playing[k].done = true,
                }
            }
        }
    }
    Ok(playing
        .into_iter()
        .enumerate()
        .map(|(k, p)| {
            let played = p.calls.len();
            let mut calls = p.calls;
            if data.users.is_none() {
                calls.resize(data.entries[p.entry].turns.len(), vec![]);
            }
            Episode {
                entry: p.entry,
                sample: p.sample,
                prompt_ids: p.prompt_ids,
                ids: p.ids,
                mask: p.mask,
                logprobs: p.logprobs,
                calls,
                turns_played: played,
                truncated: p.truncated,
                tool_calls: tool_calls[k],
                tool_errors: tool_errors[k],
                initial_state: p.initial_state,
                records: p.records,
            }
        })
        .collect())
}

/// A server of its own for each of `group_size` episodes of every entry, in that order,
/// set up with its entry's `initial_config`, with its state before the first turn; started
/// all at once.
fn open_sessions(server: &McpTool, data: &FcData, entries: &[usize], g: usize) -> Result<Vec<(McpSession, String)>> {
    let wanted: Vec<usize> = entries.iter().flat_map(|&i| std::iter::repeat_n(i, g)).collect();
    for &i in entries {
        data.entries.get(i).ok_or_else(|| Error::Config(format!("no entry {i}")))?;
    }
    std::thread::scope(|scope| {
        let started: Vec<_> = (wanted.iter())
            .map(|&i| {
                scope.spawn(move || {
                    let entry = &data.entries[i];
                    let session = server
                        .open_session(&entry.initial_config)
                        .map_err(|e| Error::Config(format!("{}: starting its MCP server: {e}", entry.id)))?;
                    let state = read_state(&session)
                        .map_err(|e| Error::Config(format!("{}: reading its MCP server's state: {e}", entry.id)))?;
                    Ok((session, state))
                })
            })
            .collect();
        started
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Config("a server start panicked".into()))))
            .collect()
    })
}

/// The state of each episode's MCP server (`None` for BFCL's environments), read from every
/// server at once. A state that cannot be read (the model's calls may have ended its server)
/// is recorded as `error: ...`, which matches no state the ground truth's replay gives (a
/// replay whose state cannot be read stops the run instead).
fn turn_states(lives: &[Option<Live>]) -> Vec<Option<String>> {
    std::thread::scope(|scope| {
        let reads: Vec<_> = (lives.iter())
            .map(|l| match l.as_ref().map(|l| &l.env) {
                Some(Env::Mcp(session)) => Some(scope.spawn(move || read_state(session))),
                _ => None,
            })
            .collect();
        (reads.into_iter())
            .map(|h| {
                h.map(|h| match h.join() {
                    Ok(Ok(state)) => state,
                    Ok(Err(e)) => format!("error: {e}"),
                    Err(_) => "error: reading the state panicked".into(),
                })
            })
            .collect()
    })
}

/// BFCL's instances' public attributes as a JSON object by class name
/// ([`artist_bfcl::Value::to_json`]'s view of each).
fn bfcl_state_json(session: &Session) -> String {
    let classes: serde_json::Map<String, serde_json::Value> = (session.state().into_iter())
        .map(|(class, attrs)| (class.to_string(), artist_bfcl::Value::Dict(attrs).to_json()))
        .collect();
    serde_json::Value::Object(classes).to_string()
}

/// A server's state (empty without a state tool), or why it could not be read.
fn read_state(session: &McpSession) -> std::result::Result<String, String> {
    session.state().unwrap_or(Ok(String::new()))
}

/// An episode scored: BFCL's verdict and ARTIST's rewards.
#[derive(Debug, Clone)]
pub struct Scored {
    pub check: CheckResult,
    pub rewards: FcRewards,
}

/// Scores an episode as BFCL does and computes ARTIST's function-calling rewards.
pub fn score_episode(
    tokenizer: &Tokenizer,
    data: &FcData,
    ep: &Episode,
    weights: &FcRewardWeights,
    opts: CheckOptions,
) -> Result<Scored> {
    let entry = &data.entries[ep.entry];
    let docs = &data.tools[ep.entry];
    // A conversation the user program led has its own turns: it is scored as one turn, the
    // final state and every call made against the ground truth's calls, all together.
    let whole = data.users.is_some();
    let truth = &data.truths[ep.entry];
    let (truth, calls): (Cow<GroundTruth>, Cow<ModelCalls>) = if whole {
        let one = GroundTruth { id: truth.id.clone(), turns: vec![truth.turns.concat()] };
        (Cow::Owned(one), Cow::Owned(vec![ep.calls.concat()]))
    } else {
        (Cow::Borrowed(truth), Cow::Borrowed(&ep.calls))
    };
    let check = if data.mcp.is_some() {
        // The records of both sides, replayed: the model's calls' results and the states
        // its server was in after each turn, against the ground truth's on a server of its
        // own.
        let record = data.truth_record(ep.entry)?;
        let initial = ep.initial_state.as_deref().unwrap_or(&record.initial);
        let (model_records, truth_records): (Cow<[TurnRecord]>, Cow<[TurnRecord]>) = if whole {
            (
                Cow::Owned(vec![one_record(&ep.records, initial)]),
                Cow::Owned(vec![one_record(&record.turns, &record.initial)]),
            )
        } else {
            (Cow::Borrowed(&ep.records), Cow::Borrowed(&record.turns))
        };
        let mut records = checker::Recorded::new(initial, &model_records, &truth_records);
        checker::check_turns(&entry.id, &truth, &calls, Some(docs), opts, &mut records)
    } else {
        checker::check_entry(entry, &truth, &calls, data.long_context.as_ref(), Some(docs), opts)
            .map_err(|e| Error::Config(format!("{}: {e}", entry.id)))?
    };
    // tau-bench's outputs: what the model must have told the user, found in its own text
    // (both lowercased, commas dropped).
    let mut check = check;
    let outputs = &data.outputs[ep.entry];
    if !outputs.is_empty() && check.valid {
        let own: Vec<u32> = ep.ids.iter().zip(&ep.mask).filter(|&(_, &m)| m == 1).map(|(&id, _)| id).collect();
        let said = tokenizer.decode_lossy(&own, false).to_lowercase().replace(',', "");
        if let Some(missing) = outputs.iter().find(|o| !said.contains(&o.to_lowercase().replace(',', ""))) {
            check.valid = false;
            check.error_type = Some("multi_turn:missing_output".into());
            check.error = Some(format!("the model never said {missing:?}"));
        }
    }
    let segments = crate::grpo::segments_of(tokenizer, &ep.ids, &ep.mask);
    let rewards = fc_format_rewards(&segments, check.state_fraction, check.function_fraction, weights);
    Ok(Scored { check, rewards })
}

/// An entry's `"outputs"`: the texts the model must say to the user for the episode to pass
/// (tau-bench's outputs; none when absent).
fn required_outputs(entry: &Entry) -> Result<Vec<String>> {
    match entry.raw.get("outputs") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| Error::Config(format!("{}: \"outputs\" must be a list of texts, got {v}", entry.id))),
    }
}

/// Turns' records as one: every result, in order, and the last state (`initial` if none).
fn one_record(turns: &[TurnRecord], initial: &str) -> TurnRecord {
    TurnRecord {
        results: turns.iter().flat_map(|t| t.results.iter().cloned()).collect(),
        state: turns.last().map_or(initial, |t| t.state.as_str()).to_string(),
    }
}

/// Scores episodes ([`score_episode`]), their entries' ground truth played first where an
/// MCP server needs it (all at once).
pub fn score_episodes(
    tokenizer: &Tokenizer,
    data: &FcData,
    eps: &[Episode],
    weights: &FcRewardWeights,
    opts: CheckOptions,
) -> Result<Vec<Scored>> {
    let entries: Vec<usize> = eps.iter().map(|e| e.entry).collect();
    data.play_truths(&entries)?;
    eps.iter().map(|ep| score_episode(tokenizer, data, ep, weights, opts)).collect()
}

/// GRPO on BFCL episodes: the function-calling counterpart of
/// [`GrpoTrainer`](crate::grpo::GrpoTrainer), driven by [`crate::grpo::train`].
pub struct FcTrainer {
    pub config: GrpoRunConfig,
    pub model: Qwen2,
    pub reference: Option<Qwen2>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub data: FcData,
    /// Held-out entries for `[eval.bfcl]` (none: no evaluation).
    pub held_out: Option<FcData>,
}

impl FcTrainer {
    pub fn episode_settings(&self, group_size: usize, temperature: f32, seed: u64) -> EpisodeSettings {
        let r = &self.config.rollout;
        EpisodeSettings {
            group_size,
            sampling: SamplingParams { temperature, top_p: r.top_p, top_k: r.top_k, min_p: 0.0, seed },
            max_turn_tokens: r.max_turn_tokens,
            max_context: r.max_context,
            max_steps_per_turn: self.config.bfcl.max_steps_per_turn,
            max_batch: r.max_batch,
            eos_ids: self.model.config.eos_token_ids.clone(),
            matmul_dtype: r.matmul_dtype.dtype(self.model.device()),
            kv_cache_dtype: r.kv_cache_dtype.storage(self.model.device()),
            first_episode: 0,
            share_first_turn: r.share_prefix,
        }
    }

    /// The G episodes of each entry of `entries` (global episode numbers from
    /// `first_entry * G`, their seeds), scored: per group with a learning signal (every
    /// group unless `filter_flat_groups`), the episodes to train on, and the round's sums
    /// for the step's metrics.
    ///
    /// Episodes are added to `log` ([`crate::grpo::GrpoTrainer`]'s `score_round` does the
    /// same for math) until it holds `log_rollouts`.
    fn play_round(
        &self,
        step: u64,
        first_entry: usize,
        entries: &[usize],
        at: LogPlace,
        log: &mut Vec<serde_json::Value>,
        record: crate::grpo::RecordRound<'_>,
    ) -> Result<(Vec<Vec<TrainRollout>>, [f64; 20])> {
        let c = &self.config;
        let g = c.rollout.group_size;
        let t0 = Instant::now();
        let seed = c.seed.wrapping_add(step.wrapping_mul(1_000_003));
        let s =
            EpisodeSettings { first_episode: first_entry * g, ..self.episode_settings(g, c.rollout.temperature, seed) };
        let eps = run_episodes(&self.model, &self.tokenizer, &self.template, &self.data, entries, &s)?;
        let rollout_s = t0.elapsed().as_secs_f64();
        let opts = CheckOptions { irrelevance: c.bfcl.irrelevance };
        let scored = score_episodes(&self.tokenizer, &self.data, &eps, &c.fc_rewards, opts)?;
        let totals: Vec<f64> = scored.iter().map(|x| x.rewards.total).collect();
        let items: Vec<_> = eps
            .iter()
            .map(|e| (e.prompt_ids.as_slice(), e.ids.as_slice(), e.mask.as_slice(), e.logprobs.as_slice()))
            .collect();
        let kept = record(crate::grpo::signal_groups(c, &totals))?;
        let penalty = crate::grpo::kl_scores(&self.model, self.reference.as_ref(), c, &totals, &items, kept)?;
        let kl_count = penalty.count();
        let crate::grpo::KlPenalty { kls, per_token, scores, measured, known } = penalty;
        // Episodes come in entry order, `group_size` of each.
        for (i, (ep, s)) in eps.iter().zip(&scored).enumerate().take(c.log_rollouts.saturating_sub(log.len())) {
            let mut line = at.line(i / g, ep.sample);
            line.extend([
                ("id".into(), self.data.entries[ep.entry].id.clone().into()),
                ("prompt_text".into(), self.tokenizer.decode_lossy(&ep.prompt_ids, false).into()),
                ("completion".into(), self.tokenizer.decode_lossy(&ep.ids, false).into()),
                ("reward".into(), s.rewards.total.into()),
                ("rewards".into(), serde_json::to_value(s.rewards).expect("JSON")),
                ("valid".into(), s.check.valid.into()),
                ("error_type".into(), s.check.error_type.clone().into()),
                ("turns_played".into(), ep.turns_played.into()),
                ("truncated".into(), ep.truncated.into()),
                ("tool_calls".into(), ep.tool_calls.into()),
                ("tool_errors".into(), ep.tool_errors.into()),
                ("sampled_tokens".into(), ep.sampled_tokens().into()),
                ("response_tokens".into(), ep.ids.len().into()),
                ("model_turns".into(), crate::grpo::model_turns(&ep.mask).into()),
            ]);
            if c.kl_reward.coef > 0.0 && measured[i] {
                line.insert("kl".into(), kls[i].into());
            }
            log.push(line.into());
        }
        let (groups, flat) = groups_to_train(
            c,
            &eps,
            (&totals, &scores),
            known,
            |ep| ep.mask.iter().any(|&m| m != 0) && !(c.overlong.mask_truncated && ep.truncated),
            |ep| (&ep.prompt_ids, &ep.ids, &ep.mask, &ep.logprobs),
        );
        let sum = |f: &dyn Fn(&Scored) -> f64| scored.iter().map(f).sum::<f64>();
        let calls: usize = eps.iter().map(|e| e.tool_calls).sum();
        let errors: usize = eps.iter().map(|e| e.tool_errors).sum();
        let sums = [
            eps.len() as f64,
            sum(&|x| x.rewards.total),
            sum(&|x| x.rewards.state),
            sum(&|x| x.rewards.function),
            sum(&|x| x.rewards.relaxed_format),
            sum(&|x| x.rewards.strict_format),
            sum(&|x| x.check.valid as u8 as f64),
            eps.iter().map(|e| e.ids.len()).sum::<usize>() as f64,
            calls as f64,
            (calls - errors) as f64,
            eps.iter().filter(|e| e.truncated).count() as f64,
            flat as f64,
            eps.iter().map(Episode::sampled_tokens).sum::<usize>() as f64,
            eps.iter().filter(|e| e.tool_calls > 0).map(Episode::sampled_tokens).sum::<usize>() as f64,
            eps.iter().map(|e| e.turns_played).sum::<usize>() as f64,
            eps.iter().map(|e| crate::grpo::model_turns(&e.mask)).sum::<usize>() as f64,
            kls.iter().sum::<f64>(),
            per_token.iter().sum::<f64>(),
            kl_count,
            rollout_s,
        ];
        Ok((groups, sums))
    }
}

impl GrpoTask for FcTrainer {
    fn config(&self) -> &GrpoRunConfig {
        &self.config
    }
    fn model(&self) -> &Qwen2 {
        &self.model
    }
    fn model_mut(&mut self) -> &mut Qwen2 {
        &mut self.model
    }
    fn reference_mut(&mut self) -> &mut Option<Qwen2> {
        &mut self.reference
    }
    fn reference(&self) -> Option<&Qwen2> {
        self.reference.as_ref()
    }
    fn set_kl_reward_coef(&mut self, coef: f64) {
        self.config.kl_reward.coef = coef;
    }
    fn items(&self) -> usize {
        self.data.entries.len()
    }

    fn items_fingerprint(&self) -> u64 {
        let held_out = self.held_out.iter().flat_map(|d| d.entries.iter().map(|e| e.id.as_str()));
        let ids: Vec<&str> = self.data.entries.iter().map(|e| e.id.as_str()).chain(held_out).collect();
        crate::sft::fnv1a(ids.join("\n").as_bytes())
    }

    fn step(&mut self, step: u64, batches: &[Vec<usize>], optimizer: &mut AdamW, lr: f64) -> Result<StepMetrics> {
        self.step_sharded(step, batches, optimizer, lr, None)
    }

    /// Each held-out entry played `eval.samples` times at `eval.temperature` (once when
    /// greedy), the entries split over the ranks with one process's seeds: BFCL's verdict,
    /// the mean reward, and the fraction of episodes that made a call.
    fn evaluate_held_out(&mut self, comm: Option<&mut (dyn Communicator + '_)>) -> Result<Option<Evaluation>> {
        let Some(data) = &self.held_out else { return Ok(None) };
        let (c, e) = (&self.config, &self.config.eval);
        let settings = e.bfcl.clone().unwrap_or_default();
        let answers = e.answers_per_problem();
        let (rank, world) = comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world_size()));
        let shard = shard_range(data.entries.len(), rank, world);
        let mut sums = [0f64; crate::grpo::EVAL_SUMS];
        let mut samples = Vec::new();
        if !shard.is_empty() {
            let seed = c.seed.wrapping_add(crate::grpo::EVAL_SEED);
            let s = EpisodeSettings {
                first_episode: shard.start * answers,
                max_steps_per_turn: settings.max_steps_per_turn,
                ..self.episode_settings(answers, e.temperature, seed)
            };
            let entries: Vec<usize> = shard.collect();
            let eps = run_episodes(&self.model, &self.tokenizer, &self.template, data, &entries, &s)?;
            let opts = CheckOptions { irrelevance: settings.irrelevance };
            let scored = score_episodes(&self.tokenizer, data, &eps, &c.fc_rewards, opts)?;
            let valid: Vec<bool> = scored.iter().map(|x| x.check.valid).collect();
            let rewards: Vec<f64> = scored.iter().map(|x| x.rewards.total).collect();
            let tools: Vec<bool> = eps.iter().map(|ep| ep.tool_calls > 0).collect();
            sums = Evaluation::sums(&valid, &rewards, &tools, answers, None);
            samples = (eps.iter().zip(&scored).take(e.log_samples))
                .map(|(ep, s)| {
                    serde_json::json!({
                        "id": data.entries[ep.entry].id, "sample": ep.sample,
                        "completion": self.tokenizer.decode_lossy(&ep.ids, false), "valid": s.check.valid,
                        "error_type": s.check.error_type, "reward": s.rewards.total, "tool_calls": ep.tool_calls,
                        "turns_played": ep.turns_played, "response_tokens": ep.ids.len(),
                    })
                })
                .collect();
        }
        let mut comm = comm;
        let samples = crate::grpo::gather_log(samples, e.log_samples, comm.as_deref_mut())?;
        crate::grpo::sum_over_ranks(&mut sums, comm)?;
        Ok(Some(Evaluation { samples, ..Evaluation::from_sums(sums, false) }))
    }

    /// The entries of `batch` split over the ranks of `comm` (an entry's whole group on one
    /// rank), each episode sampled as one process would (`first_episode`); the loss is
    /// normalised over the global batch, gradients and statistics are summed over ranks.
    fn step_sharded(
        &mut self,
        step: u64,
        batches: &[Vec<usize>],
        optimizer: &mut AdamW,
        lr: f64,
        mut comm: Option<&mut (dyn Communicator + '_)>,
    ) -> Result<StepMetrics> {
        let c = self.config.clone();
        let lens: Vec<usize> = batches.iter().map(Vec::len).collect();
        // Round r's episodes are numbered after the earlier rounds' (their seeds).
        let mut log = Vec::new();
        let (mut train, mut sums, quota) = play_rounds(&c, &lens, comm.as_deref_mut(), |r, shard, first, record| {
            let at = LogPlace { step: step + 1, round: r, first_prompt: shard.start };
            self.play_round(step, first, &batches[r][shard], at, &mut log, record)
        })?;
        whiten_advantages(&mut train, &c, comm.as_deref_mut())?;
        let log = crate::grpo::gather_log(log, c.log_rollouts, comm.as_deref_mut())?;
        let t = Instant::now();
        combine_step_sums(&mut sums, comm.as_deref_mut())?;
        let [
            n,
            total,
            state,
            function,
            relaxed,
            strict,
            valid,
            response,
            calls,
            successes,
            truncated,
            flat,
            sampled,
            calling_tokens,
            turns_played,
            model_steps,
            kl_sum,
            kl_per_token,
            kl_count,
            rollout_s,
        ] = sums;
        let n = n.max(1.0);
        let mut m = StepMetrics {
            step: step + 1,
            rollouts: log,
            reward: total / n,
            reward_state: Some(state / n),
            reward_function: Some(function / n),
            reward_relaxed_format: relaxed / n,
            reward_strict_format: strict / n,
            accuracy: valid / n,
            response_tokens: response / n,
            tool_calls_per_rollout: calls / n,
            tokens_per_tool_call: (calls > 0.0).then(|| calling_tokens / calls),
            steps_per_turn: (turns_played > 0.0).then(|| model_steps / turns_played),
            tool_success: if calls == 0.0 { 0.0 } else { successes / calls },
            flat_groups: flat as usize,
            truncated: truncated as usize,
            lr,
            rollout_s,
            tokens_per_s: sampled / rollout_s.max(1e-9),
            ..Default::default()
        };
        (m.sampling_rounds, m.trained_groups) = quota.counts();
        m.set_kl_reward(&c.kl_reward, kl_sum, kl_per_token, kl_count);
        let u = update_sharded(&self.model, self.reference.as_ref(), train, &c, optimizer, lr, step, comm)?;
        (m.loss, m.grad_norm, m.clip_fraction, m.kl) = (u.loss, u.grad_norm, u.clip_fraction, u.kl);
        m.set_importance_metrics(&u);
        m.entropy = u.trained.then_some(u.entropy);
        m.entropy_threshold = u.entropy_threshold;
        m.train_s = t.elapsed().as_secs_f64();
        Ok(m)
    }
}
