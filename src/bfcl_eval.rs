//! `eval --dataset QUESTIONS --answers POSSIBLE_ANSWER ...`: BFCL multi-turn scoring.
//!
//! The calls scored come from one of:
//! * `--replay-ground-truth`: the ground truth itself (each turn's calls as one step);
//! * `--replay-ground-truth --replay-from FILE`: the calls of FILE, a file in
//!   possible_answer format (`{"id", "ground_truth": [[call, ..], ..]}` per line), scored
//!   against `--answers`; an entry FILE lacks is scored as a model that made no call, and a
//!   call string that does not parse is dropped as BFCL drops undecodable steps;
//! * `--model DIR`: episodes run with the model (see `artist_train::fc`).
//!
//! Output: a table of accuracy per category, or with `--json` one object:
//! `{"accuracy": 0..1, "correct": N, "total": N, "categories": {cat: {"accuracy",
//! "correct", "total"}}, "entries": [{"id", "correct", "error_type", "error",
//! "state_fraction", "function_fraction"}], "source": "ground_truth"|"file"|"model",
//! "long_context_filler": bool}`. `accuracy` and `entries[].{id, correct}` are a stable
//! interface.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use artist_bfcl::checker::{self, CheckOptions, CheckResult, Entry, GroundTruth, ModelCalls, as_model_calls};
use artist_bfcl::{LongContext, ToolSet, parse_calls};
use serde_json::json;

/// Where BFCL's data and the long-context filler are.
pub struct BfclPaths {
    pub questions: PathBuf,
    pub answers: PathBuf,
    /// The func_doc directory (default: `func_doc` beside the questions' directory).
    pub func_doc: Option<PathBuf>,
    /// JSON from `scripts/make_bfcl_long_context.py` (default: `ARTIST_BFCL_LONG_CONTEXT`).
    pub long_context: Option<PathBuf>,
}

impl BfclPaths {
    pub fn func_doc_dir(&self) -> PathBuf {
        self.func_doc.clone().unwrap_or_else(|| {
            self.questions.parent().and_then(Path::parent).unwrap_or(Path::new(".")).join("func_doc")
        })
    }

    pub fn load_long_context(&self) -> Result<Option<LongContext>> {
        let path =
            self.long_context.clone().or_else(|| std::env::var_os("ARTIST_BFCL_LONG_CONTEXT").map(PathBuf::from));
        let Some(path) = path else { return Ok(None) };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(LongContext::from_json_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?))
    }
}

/// The entries and ground truth of a questions/answers pair, checked to line up by id.
pub fn load(paths: &BfclPaths) -> Result<(Vec<Entry>, Vec<GroundTruth>)> {
    let entries = checker::load_questions(&paths.questions)?;
    let truths = checker::load_answers(&paths.answers)?;
    let by_id: BTreeMap<&str, &GroundTruth> = truths.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut ordered = Vec::with_capacity(entries.len());
    for e in &entries {
        let t = by_id.get(e.id.as_str()).with_context(|| {
            format!("{}: no ground truth for {} in {}", paths.questions.display(), e.id, paths.answers.display())
        })?;
        if t.turns.len() != e.turns.len() {
            bail!("{}: {} turns in the questions, {} in the ground truth", e.id, e.turns.len(), t.turns.len());
        }
        ordered.push((*t).clone());
    }
    Ok((entries, ordered))
}

/// Reads a possible_answer-format file of model calls: per entry id, per turn, one step
/// per call string that parses (the others are counted and dropped).
pub fn load_replay(path: &Path) -> Result<(BTreeMap<String, ModelCalls>, usize)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = BTreeMap::new();
    let mut undecodable = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| anyhow::anyhow!("{}:{}: {m}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
        let id = v.get("id").and_then(|x| x.as_str()).ok_or_else(|| bad("no string \"id\""))?;
        let turns = v.get("ground_truth").and_then(|g| g.as_array()).ok_or_else(|| bad("no \"ground_truth\" list"))?;
        let mut calls: ModelCalls = Vec::with_capacity(turns.len());
        for turn in turns {
            let strings = turn.as_array().ok_or_else(|| bad("a turn is not a list of call strings"))?;
            let mut steps = Vec::new();
            for s in strings {
                match s.as_str().map(parse_calls) {
                    Some(Ok(c)) if !c.is_empty() => steps.push(c),
                    _ => undecodable += 1,
                }
            }
            calls.push(steps);
        }
        out.insert(id.to_owned(), calls);
    }
    Ok((out, undecodable))
}

/// Scores every entry; `calls_for` gives the model calls of an entry.
pub fn score(
    paths: &BfclPaths,
    entries: &[Entry],
    truths: &[GroundTruth],
    mut calls_for: impl FnMut(&Entry, &GroundTruth) -> ModelCalls,
    opts: CheckOptions,
) -> Result<(Vec<CheckResult>, bool)> {
    let lc = paths.load_long_context()?;
    let docs_dir = paths.func_doc_dir();
    let needs_filler = entries.iter().any(Entry::long_context);
    if needs_filler && lc.is_none() {
        eprintln!(
            "warning: long-context entries are scored without the long-context filler (give --long-context-data, \
             made by scripts/make_bfcl_long_context.py); results can differ from BFCL's where the filler matters"
        );
    }
    let mut results = Vec::with_capacity(entries.len());
    for (e, t) in entries.iter().zip(truths) {
        let docs =
            ToolSet::for_entry(&docs_dir, &e.raw).with_context(|| format!("{}: loading its function docs", e.id))?;
        let calls = calls_for(e, t);
        let r = checker::check_entry(e, t, &calls, lc.as_ref(), Some(&docs), opts)
            .map_err(|m| anyhow::anyhow!("{}: {m}", e.id))?;
        results.push(r);
    }
    Ok((results, lc.is_some()))
}

/// With several episodes per entry: `samples` of each, in a row, and the k of pass@k and
/// pass^k.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub samples: usize,
    pub k: usize,
}

/// The report: JSON (the stable interface) or a table. With `sampling`, `accuracy` is over
/// every episode (pass@1) and each entry's `samples` episodes give its pass@k and pass^k.
pub fn report(
    results: &[CheckResult],
    source: &str,
    filler: bool,
    as_json: bool,
    sampling: Option<Sampling>,
) -> String {
    // pass@k and pass^k, averaged over entries.
    let passes = sampling.filter(|s| s.samples > 0).map(|s| {
        let counts: Vec<usize> = results.chunks(s.samples).map(|c| c.iter().filter(|r| r.valid).count()).collect();
        let mean = |f: &dyn Fn(usize) -> f64| counts.iter().map(|&c| f(c)).sum::<f64>() / counts.len().max(1) as f64;
        let at = mean(&|c| crate::pass_k::pass_at_k(s.samples, c, s.k));
        let hat = mean(&|c| crate::pass_k::pass_hat_k(s.samples, c, s.k));
        (s, at, hat)
    });
    let mut cats: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in results {
        let c = cats.entry(checker::category_of(&r.id)).or_default();
        c.1 += 1;
        if r.valid {
            c.0 += 1;
        }
    }
    let correct = results.iter().filter(|r| r.valid).count();
    let total = results.len();
    let accuracy = if total == 0 { 0.0 } else { correct as f64 / total as f64 };
    if as_json {
        let categories: serde_json::Map<String, serde_json::Value> = cats
            .iter()
            .map(|(c, (ok, n))| (c.to_string(), json!({"accuracy": *ok as f64 / *n as f64, "correct": ok, "total": n})))
            .collect();
        let entries: Vec<serde_json::Value> = results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut e = json!({"id": r.id, "correct": r.valid, "error_type": r.error_type, "error": r.error,
                       "state_fraction": r.state_fraction, "function_fraction": r.function_fraction});
                if let Some(s) = sampling {
                    e["sample"] = (i % s.samples.max(1)).into();
                }
                e
            })
            .collect();
        let mut out = json!({"accuracy": accuracy, "correct": correct, "total": total, "categories": categories,
                      "entries": entries, "source": source, "long_context_filler": filler});
        if let Some((s, at, hat)) = passes {
            out["samples"] = s.samples.into();
            out["k"] = s.k.into();
            out["pass_at_k"] = at.into();
            out["pass_hat_k"] = hat.into();
        }
        return out.to_string();
    }
    let mut out = format!("{:<32} {:>8} {:>7} {:>7}\n", "category", "accuracy", "correct", "total");
    for (c, (ok, n)) in &cats {
        out.push_str(&format!("{c:<32} {:>7.1}% {ok:>7} {n:>7}\n", 100.0 * *ok as f64 / *n as f64));
    }
    out.push_str(&format!("{:<32} {:>7.1}% {correct:>7} {total:>7}\n", "all", 100.0 * accuracy));
    if let Some((s, at, hat)) = passes {
        out.push_str(&format!(
            "{} samples an entry: pass@{k} {:.1}%, pass^{k} {:.1}%\n",
            s.samples,
            100.0 * at,
            100.0 * hat,
            k = s.k
        ));
    }
    out
}

/// `--replay-ground-truth [--replay-from FILE]`.
pub fn replay(paths: &BfclPaths, from: Option<&Path>, opts: CheckOptions, as_json: bool) -> Result<String> {
    let (entries, truths) = load(paths)?;
    let (source, results, filler) = match from {
        None => {
            let (r, f) = score(paths, &entries, &truths, |_, t| as_model_calls(t), opts)?;
            ("ground_truth", r, f)
        }
        Some(file) => {
            let (calls, undecodable) = load_replay(file)?;
            if undecodable > 0 {
                eprintln!("{}: {undecodable} call strings did not parse and were dropped", file.display());
            }
            let missing = entries.iter().filter(|e| !calls.contains_key(&e.id)).count();
            if missing > 0 {
                eprintln!("{}: {missing} entries have no calls there (scored as no calls)", file.display());
            }
            let (r, f) = score(
                paths,
                &entries,
                &truths,
                |e, _| calls.get(&e.id).cloned().unwrap_or_else(|| vec![vec![]; e.turns.len()]),
                opts,
            )?;
            ("file", r, f)
        }
    };
    Ok(report(&results, source, filler, as_json, None))
}

/// How `--model` plays the entries.
pub struct ModelRun<'a> {
    pub model_dir: &'a Path,
    /// PEFT LoRA adapters to add to the model (`--lora`).
    pub lora: Option<&'a Path>,
    pub device: artist_tensor::Device,
    pub temperature: f32,
    pub top_p: f32,
    pub max_turn_tokens: usize,
    pub max_context: usize,
    pub max_steps_per_turn: usize,
    pub batch: usize,
    pub seed: u64,
    /// The dtype the projections multiply in (None: f32; see `RolloutConfig::matmul_dtype`).
    pub matmul_dtype: Option<artist_tensor::DType>,
    /// What the KV cache stores (see `RolloutConfig::kv_cache_dtype`).
    pub kv_cache_dtype: artist_tensor::DType,
    /// Entries skipped, then taken, from the file (0: all).
    pub skip: usize,
    pub first: usize,
    /// One JSON line per entry: id, verdict, fractions, and the calls that ran.
    pub out: Option<&'a Path>,
    /// Play the entries on this MCP server's tools (a server per entry, its state compared
    /// with the ground truth's after every turn) instead of BFCL's environments.
    pub mcp: Option<std::sync::Arc<artist_tools::McpTool>>,
    /// A program that plays the user after each entry's first turn (empty: the entries'
    /// own turns), its copies, and the most user turns of an entry.
    pub user_command: Vec<String>,
    pub user_workers: usize,
    pub max_user_turns: usize,
    /// Episodes played per entry (at `temperature`), and the k of pass@k and pass^k.
    pub samples: usize,
    pub k: usize,
}

/// `--model DIR`: plays every selected entry once with the model and scores it.
pub fn run_model(paths: &BfclPaths, run: &ModelRun, opts: CheckOptions, as_json: bool) -> Result<String> {
    use artist_train::fc::{BfclSettings, EpisodeSettings, FcData, FcEnvironment, run_episodes};
    use std::io::Write;

    let settings = BfclSettings {
        questions: vec![paths.questions.clone()],
        answers: vec![paths.answers.clone()],
        func_doc: Some(paths.func_doc_dir()),
        long_context: paths
            .long_context
            .clone()
            .or_else(|| std::env::var_os("ARTIST_BFCL_LONG_CONTEXT").map(PathBuf::from)),
        first: run.first,
        skip: run.skip,
        max_steps_per_turn: run.max_steps_per_turn,
        irrelevance: opts.irrelevance,
        environment: if run.mcp.is_some() { FcEnvironment::Mcp } else { FcEnvironment::Builtin },
        user_command: run.user_command.clone(),
        user_workers: run.user_workers,
        max_user_turns: run.max_user_turns,
        ..Default::default()
    };
    let mut data = FcData::load_on(&settings, run.mcp.as_ref())?;
    data.users = artist_train::fc::Users::spawn(&settings)?.map(std::sync::Arc::new);
    let (model, tokenizer) = crate::cli::open_model(run.model_dir, run.lora, run.device)?;
    let tokenizer = tokenizer.with_context(|| format!("{}: no tokenizer.json", run.model_dir.display()))?;
    let template = artist_tokenizer::ChatTemplate::from_dir(run.model_dir)
        .unwrap_or_else(|_| artist_tokenizer::ChatTemplate::chatml());
    let s = EpisodeSettings {
        group_size: run.samples,
        sampling: artist_engine::SamplingParams {
            temperature: run.temperature,
            top_p: run.top_p,
            top_k: 0,
            min_p: 0.0,
            seed: run.seed,
        },
        max_turn_tokens: run.max_turn_tokens,
        max_context: run.max_context,
        max_steps_per_turn: run.max_steps_per_turn,
        max_batch: run.batch,
        eos_ids: model.config.eos_token_ids.clone(),
        matmul_dtype: run.matmul_dtype,
        kv_cache_dtype: run.kv_cache_dtype,
        first_episode: 0,
        // An entry's samples share its first turn's prefill (the same episodes to the bit).
        share_first_turn: true,
    };
    let indices: Vec<usize> = (0..data.entries.len()).collect();
    let episodes = run_episodes(&model, &tokenizer, &template, &data, &indices, &s)?;
    let (results, filler) = if data.mcp.is_some() || data.users.is_some() || run.samples > 1 {
        // Scored as training scores them: on the records of the entries' servers, against
        // the ground truth played on servers of its own, and a conversation the user
        // program led as one turn.
        let weights = artist_rl::FcRewardWeights::default();
        let scored = artist_train::fc::score_episodes(&tokenizer, &data, &episodes, &weights, opts)?;
        (scored.into_iter().map(|s| s.check).collect(), data.long_context.is_some())
    } else {
        let calls: BTreeMap<&str, &ModelCalls> =
            episodes.iter().map(|e| (data.entries[e.entry].id.as_str(), &e.calls)).collect();
        score(
            paths,
            &data.entries,
            &data.truths,
            |e, _| calls.get(e.id.as_str()).map_or_else(Vec::new, |c| (*c).clone()),
            opts,
        )?
    };
    if let Some(out) = run.out {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?);
        for (r, e) in results.iter().zip(&episodes) {
            let turns: Vec<Vec<String>> =
                e.calls.iter().map(|steps| steps.iter().flatten().map(|c| c.to_python()).collect()).collect();
            let line = json!({"id": r.id, "sample": e.sample, "correct": r.valid, "error_type": r.error_type,
                              "state_fraction": r.state_fraction, "function_fraction": r.function_fraction,
                              "turns_played": e.turns_played, "truncated": e.truncated,
                              "tool_calls": e.tool_calls, "tool_errors": e.tool_errors, "calls": turns});
            writeln!(f, "{line}")?;
        }
    }
    Ok(report(&results, "model", filler, as_json, Some(Sampling { samples: run.samples, k: run.k })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pass@k and pass^k over entries of several episodes, worked out by hand: entry a
    /// passes 2 of 3 (pass@2 1 - C(1,2)/C(3,2) = 1, pass^2 C(2,2)/C(3,2) = 1/3), entry b
    /// none (0 and 0).
    #[test]
    fn samples_give_pass_at_k_and_pass_hat_k() {
        let r = |id: &str, valid: bool| CheckResult { id: id.into(), valid, ..Default::default() };
        let results =
            [r("a_0", true), r("a_0", false), r("a_0", true), r("b_0", false), r("b_0", false), r("b_0", false)];
        let out: serde_json::Value =
            serde_json::from_str(&report(&results, "model", false, true, Some(Sampling { samples: 3, k: 2 }))).unwrap();
        assert!((out["accuracy"].as_f64().unwrap() - 2.0 / 6.0).abs() < 1e-12);
        assert!((out["pass_at_k"].as_f64().unwrap() - 0.5).abs() < 1e-12);
        assert!((out["pass_hat_k"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!((out["samples"].as_u64(), out["k"].as_u64()), (Some(3), Some(2)));
        let samples: Vec<u64> =
            out["entries"].as_array().unwrap().iter().map(|e| e["sample"].as_u64().unwrap()).collect();
        assert_eq!(samples, [0, 1, 2, 0, 1, 2]);
        let table = report(&results, "model", false, false, Some(Sampling { samples: 3, k: 2 }));
        assert!(table.contains("3 samples an entry: pass@2 50.0%, pass^2 16.7%"), "{table}");
        // Without samples the report is as it was.
        let plain: serde_json::Value = serde_json::from_str(&report(&results, "file", false, true, None)).unwrap();
        assert!(plain.get("pass_at_k").is_none() && plain["entries"][0].get("sample").is_none());
    }
}
