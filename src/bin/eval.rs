//! `eval`: grading math answers, evaluating a model on a math dataset, and BFCL
//! multi-turn scoring.
//!
//!     cargo run --release --bin eval -- verify --jsonl PAIRS.jsonl
//!
//! `verify` judges answers that are already written, with `artist_math::equivalent` (the
//! rules are in crates/math/README.md). Its input and output are a stable interface:
//!
//! * Input: JSONL, one `{"gold": ..., "pred": ...}` object per line, each a string (a JSON
//!   number is read as its text). Other fields are ignored. `--jsonl -` reads stdin.
//! * Output: for every input line, in order, exactly one JSON line on stdout:
//!   `{"equal": true|false, "gold_normalized": S, "pred_normalized": S}` where `S` is the
//!   answer as parsed, in a canonical text form (`\frac{1}{2}` -> `"1/2"`), or `null` for an
//!   answer that cannot be read at all (empty, over 10,000 bytes, nested too deep);
//!   or, for a line that is not such an object (bad JSON, a missing or mistyped field, a
//!   blank line, bytes that are not UTF-8), `{"equal": false, "error": "line N: ..."}`,
//!   and the next line is read.
//! * Exit status 0 once the input has been read, whatever the verdicts; non-zero (with a
//!   message on stderr) when the input cannot be opened or read, or stdout is closed.
//!
//! `eval --model DIR --dataset FILE [--preset NAME | --field-map problem=..,answer=..]
//! [--k K] [--samples N] [--temperature T] [--tools python|calculator|mcp|none]
//! [--mcp-command CMD [--mcp-sessions rollout [--mcp-state-tool NAME] [--mcp-setup-tool NAME]]]
//! [--judge-command CMD [--judge-workers N]] [--out FILE.jsonl] [--json]` generates `N`
//! answers per problem (default `K`) with the model in ARTIST's format, the tool live, and
//! grades them (by math equivalence, or by the external judge `--judge-command` starts:
//! `artist_math::Judge`). It prints pass@1 (the mean fraction correct),
//! the unbiased pass@k (`1 - C(n-c, k) / C(n, k)` averaged over problems), maj@N (the
//! problems whose answer most of the N samples agree on, grouped by the checker's
//! equality, is correct), the mean response length in tokens and the tool calls per
//! answer; with `--json`, one object
//! `{"pass_at_1", "pass_at_k", "maj_at_n", "k", "samples", "problems", "bad_rows", "mean_response_tokens",
//! "tool_calls_per_answer", "mean_score", "seconds"}` (`mean_score`: the judge's mean
//! credit, from 0 to 1; without a judge, the fraction correct). `--out` gets one JSON line
//! per sample: `{"problem_index", "problem", "gold", "sample", "completion", "extracted",
//! "correct", "score", "response_tokens", "tool_calls", "finish"}`. Malformed dataset rows are counted and
//! named (file:line) on stderr. `--keep FILE.jsonl [--keep-above A] [--keep-below B]`
//! filters the data set by difficulty, as RL recipes prepare theirs (DAPO, Polaris): the
//! problems whose pass rate `p` (correct samples over `N`) has `A < p < B` (by default 0
//! and 1: neither never nor always solved, the ones whose groups give GRPO a signal), one
//! `{"problem", "answer", "pass_rate", "line"}` line each in file order (readable with the
//! `math500` preset), and `"kept"` in the summary.
//!
//! `eval --dataset QUESTIONS.json --answers POSSIBLE_ANSWER.json (--replay-ground-truth
//! [--replay-from FILE] | --model DIR [--samples N --k K] [--mcp-command CMD ...]
//! [--user-command CMD]) [--json]` scores BFCL multi-turn entries as BFCL does (on BFCL's
//! environments or an MCP server's tools, the user's turns from the entries or a program,
//! with pass@k and pass^k over N episodes an entry); the interface is documented in
//! `artist::bfcl_eval` and docs/BFCL.md.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use artist_math::{answers_equal, parse_answer};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(version = artist::VERSION, about = "Evaluate a model on a math dataset (pass@k, tools live); grade written answers (verify)")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Hugging Face model directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// PEFT LoRA adapters (a directory with adapter_config.json and
    /// adapter_model.safetensors) added to --model.
    #[arg(long, value_name = "DIR", requires = "model")]
    lora: Option<PathBuf>,
    /// Device to run the model on: auto (a GPU when there is one, else the CPU), cpu, cuda
    /// or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Math problems with gold answers (JSONL).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Dataset fields: numina, math500, aime, amc, olympiad.
    #[arg(long, alias = "format", default_value = "math500")]
    preset: String,
    /// Dataset fields for anything else: problem=question,answer=final_answer.
    #[arg(long, conflicts_with = "preset")]
    field_map: Option<String>,
    /// The k of pass@k.
    #[arg(long, default_value_t = 1)]
    k: usize,
    /// Samples per problem (at least k; default k).
    #[arg(long)]
    samples: Option<usize>,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.6)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// The tool in the loop (mcp: the functions of the server --mcp-command starts).
    #[arg(long, default_value = "python", value_parser = ["python", "calculator", "mcp", "none"])]
    tools: String,
    #[command(flatten)]
    mcp: artist::cli::McpArgs,
    /// Grade with an external judge instead of math equivalence: its command line, split
    /// into words as a shell would; it reads `{"problem", "completion", "answer"}` lines and
    /// writes `{"correct": bool}` lines (the GRPO trainer's `[judge]`).
    #[arg(long, value_name = "COMMAND")]
    judge_command: Option<String>,
    /// Copies of the judge started and asked at once.
    #[arg(long, default_value_t = 1, value_name = "N", requires = "judge_command")]
    judge_workers: usize,
    /// Model tokens per turn.
    #[arg(long, default_value_t = 1024)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 8)]
    max_tool_calls: usize,
    /// Sequences decoding at once.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// One JSON line per sample.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Write the problems whose fraction of correct samples lies strictly between
    /// --keep-above and --keep-below (by default: solved sometimes, not always) as
    /// training data: one `{"problem", "answer", "pass_rate", "line"}` object per line.
    #[arg(long, value_name = "FILE.jsonl")]
    keep: Option<PathBuf>,
    #[arg(long, default_value_t = 0.0, requires = "keep", allow_negative_numbers = true)]
    keep_above: f64,
    #[arg(long, default_value_t = 1.0, requires = "keep", allow_negative_numbers = true)]
    keep_below: f64,

    /// BFCL: the possible_answer file of `--dataset` (a BFCL multi-turn questions file).
    #[arg(long)]
    answers: Option<PathBuf>,
    /// BFCL: score the ground truth's own calls (or, with --replay-from, a file's).
    #[arg(long, requires = "answers")]
    replay_ground_truth: bool,
    /// BFCL: a file in possible_answer format whose calls are scored against --answers.
    #[arg(long, requires = "replay_ground_truth")]
    replay_from: Option<PathBuf>,
    /// BFCL: the func_doc directory (default: func_doc beside the questions' directory).
    #[arg(long, requires = "answers")]
    func_doc: Option<PathBuf>,
    /// BFCL: the long-context filler (JSON from scripts/make_bfcl_long_context.py;
    /// default: $ARTIST_BFCL_LONG_CONTEXT).
    #[arg(long, requires = "answers")]
    long_context_data: Option<PathBuf>,
    /// BFCL: fail a turn whose ground truth is empty when the model calls anything.
    #[arg(long, requires = "answers")]
    irrelevance: bool,
    /// BFCL with --model: entries skipped at the start of the file.
    #[arg(long, default_value_t = 0, requires = "answers")]
    skip: usize,
    /// BFCL with --model: entries taken after --skip (0: all).
    #[arg(long, default_value_t = 0, requires = "answers")]
    first: usize,
    /// BFCL with --model: tokens of a whole conversation.
    #[arg(long, default_value_t = 16_384)]
    max_context: usize,
    /// BFCL with --model: tool calls per user turn (BFCL's step limit).
    #[arg(long, default_value_t = 20)]
    max_steps_per_turn: usize,
    /// BFCL with --model: a program that plays the user after each entry's first turn
    /// (split into words as a shell would; see docs/TRAINING.md, bfcl.user_command).
    #[arg(long, value_name = "COMMAND", requires = "answers")]
    user_command: Option<String>,
    /// With --user-command: copies of it started, each answering one entry at a time.
    #[arg(long, default_value_t = 1, value_name = "N", requires = "user_command")]
    user_workers: usize,
    /// With --user-command: the most user turns of an entry, its first included.
    #[arg(long, default_value_t = 10, value_name = "N", requires = "user_command")]
    max_user_turns: usize,
    /// The dtype the model's projections multiply in: f32 (exact) or bf16 (activations and
    /// weights rounded, f32 sums: tensor-core GEMMs on a GPU, as vLLM serves); auto: bf16
    /// on a GPU, f32 on the CPU.
    #[arg(long, value_name = "auto|f32|bf16", default_value = "auto")]
    matmul_dtype: artist::train::ComputeDtype,
    /// What the KV cache stores: f32 (exact) or bf16 (half the memory and decode bytes);
    /// auto: bf16 on a GPU, f32 on the CPU.
    #[arg(long, value_name = "auto|f32|bf16", default_value = "auto")]
    kv_dtype: artist::train::ComputeDtype,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Judge gold/prediction pairs: one JSON verdict per input line.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// JSONL of {"gold": "...", "pred": "..."}; `-` for stdin.
    #[arg(long)]
    jsonl: PathBuf,
}

fn main() -> Result<()> {
    artist::tensor::cpu::retain_freed_memory();
    artist::tensor::cpu::on_worker(run)
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Verify(args)) => verify(&args.jsonl),
        None if cli.answers.is_some() => evaluate_bfcl(&cli),
        None => evaluate_model(&cli),
    }
}

/// BFCL multi-turn scoring (`--answers`).
fn evaluate_bfcl(cli: &Cli) -> Result<()> {
    use artist::bfcl_eval::{self, BfclPaths};

    let (Some(questions), Some(answers)) = (&cli.dataset, &cli.answers) else {
        bail!("BFCL scoring needs --dataset QUESTIONS.json and --answers POSSIBLE_ANSWER.json");
    };
    let paths = BfclPaths {
        questions: questions.clone(),
        answers: answers.clone(),
        func_doc: cli.func_doc.clone(),
        long_context: cli.long_context_data.clone(),
    };
    let opts = artist_bfcl::checker::CheckOptions { irrelevance: cli.irrelevance };
    // --mcp-command / --mcp-url: the entries play on that server's tools instead of BFCL's
    // environments.
    let server = cli.mcp.mcp_command.as_ref().or(cli.mcp.mcp_url.as_ref());
    let mcp = match server {
        None => None,
        Some(_) if cli.replay_ground_truth => {
            bail!("--replay-ground-truth replays on BFCL's environments; leave out --mcp-command / --mcp-url")
        }
        Some(_) if cli.mcp.mcp_sessions != "rollout" => {
            bail!("--answers with an MCP server plays each entry on a server of its own: add --mcp-sessions rollout")
        }
        Some(_) if cli.mcp.mcp_state_tool.is_none() => bail!(
            "--answers with an MCP server compares the server's state with the ground truth's after every turn: \
             name the tool that gives it with --mcp-state-tool"
        ),
        Some(_) => Some(std::sync::Arc::new(cli.mcp.start_episodes()?)),
    };
    let out = if cli.replay_ground_truth {
        bfcl_eval::replay(&paths, cli.replay_from.as_deref(), opts, cli.json)?
    } else if let Some(model_dir) = &cli.model {
        let device = artist::cli::device(&cli.device)?;
        let run = bfcl_eval::ModelRun {
            model_dir,
            lora: cli.lora.as_deref(),
            device,
            temperature: cli.temperature,
            top_p: cli.top_p,
            max_turn_tokens: cli.max_new_tokens,
            max_context: cli.max_context,
            max_steps_per_turn: cli.max_steps_per_turn,
            batch: cli.batch,
            seed: cli.seed,
            matmul_dtype: cli.matmul_dtype.dtype(device),
            kv_cache_dtype: cli.kv_dtype.storage(device),
            skip: cli.skip,
            first: cli.first,
            out: cli.out.as_deref(),
            mcp,
            user_command: match &cli.user_command {
                Some(c) => artist::cli::split_command(c, "--user-command")?,
                None => Vec::new(),
            },
            user_workers: cli.user_workers,
            max_user_turns: cli.max_user_turns,
            samples: samples_per_problem(cli)?,
            k: cli.k,
        };
        bfcl_eval::run_model(&paths, &run, opts, cli.json)?
    } else {
        bail!("BFCL scoring needs --replay-ground-truth (or --model DIR to play the entries)")
    };
    println!("{}", out.trim_end());
    Ok(())
}

/// The model-evaluation path: `samples` answers per problem, graded; pass@1 and pass@k.
fn evaluate_model(cli: &Cli) -> Result<()> {
    use std::sync::Arc;

    use artist_engine::{RolloutConfig, RolloutEngine, SamplingParams};
    use artist_tokenizer::{ChatTemplate, Message};
    use artist_tools::Tool;

    let (Some(model_dir), Some(dataset)) = (&cli.model, &cli.dataset) else {
        bail!(
            "nothing to do: `eval verify --jsonl PAIRS.jsonl` grades written answers; \
             `eval --model DIR --dataset FILE` evaluates a model"
        );
    };
    let format: artist_math::DatasetFormat = cli.field_map.as_deref().unwrap_or(&cli.preset).parse()?;
    let samples = samples_per_problem(cli)?;
    if cli.keep_above.partial_cmp(&cli.keep_below) != Some(std::cmp::Ordering::Less) {
        bail!("--keep-above ({}) must be below --keep-below ({})", cli.keep_above, cli.keep_below);
    }
    let data = artist_math::MathDataset::load(dataset, &format)?;
    for bad in &data.bad_rows {
        eprintln!("{}:{}: skipped: {}", dataset.display(), bad.line, bad.reason);
    }
    if data.problems.is_empty() {
        bail!("{}: no usable problem", dataset.display());
    }
    let (model, tokenizer) =
        artist::cli::open_model(model_dir, cli.lora.as_deref(), artist::cli::device(&cli.device)?)?;
    let tok = tokenizer.with_context(|| format!("{}: evaluation needs tokenizer.json", model_dir.display()))?;
    let template = ChatTemplate::from_dir(model_dir).unwrap_or_else(|_| ChatTemplate::chatml());
    let tool: Option<Arc<dyn Tool>> = match cli.tools.as_str() {
        "python" => {
            Some(Arc::new(artist_tools::PythonTool::new(Default::default()).context("starting the Python sandbox")?))
        }
        "calculator" => Some(Arc::new(artist_tools::Calculator)),
        "mcp" => Some(Arc::new(cli.mcp.start()?)),
        _ => None,
    };
    let system = match &tool {
        Some(t) => artist_rl::prompts::math_prompt_for(t.tag(), t.describe().as_deref()),
        None => "Think step by step inside <think>...</think>, then give the final answer inside <answer>...</answer>."
            .into(),
    };
    let prompts = data
        .problems
        .iter()
        .map(|p| -> Result<Vec<u32>> {
            let text =
                template.render(&[Message::system(system.clone()), Message::user(p.problem.clone())], None, true)?;
            Ok(tok.encode(&text)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let response = cli.max_new_tokens * (cli.max_tool_calls + 1);
    let engine = RolloutEngine {
        policy: &model,
        tokenizer: &tok,
        tools: tool.into_iter().collect(),
        config: RolloutConfig {
            group_size: samples,
            sampling: SamplingParams {
                temperature: cli.temperature,
                top_p: cli.top_p,
                seed: cli.seed,
                ..Default::default()
            },
            max_turn_tokens: cli.max_new_tokens,
            max_response_tokens: response,
            max_tool_calls: cli.max_tool_calls,
            max_context: longest + response + 1,
            max_batch: cli.batch.max(samples),
            eos_ids: artist::cli::eos_ids(model_dir, &model)?,
            matmul_dtype: cli.matmul_dtype.dtype(model.device()),
            kv_cache_dtype: cli.kv_dtype.storage(model.device()),
            ..Default::default()
        },
    };
    let judge = match &cli.judge_command {
        Some(c) => Some(
            artist_math::Judge::spawn(artist_math::JudgeConfig {
                command: artist::cli::split_command(c, "--judge-command")?,
                workers: cli.judge_workers,
                ..Default::default()
            })
            .context("starting the judge of --judge-command")?,
        ),
        None => None,
    };
    let start = std::time::Instant::now();
    let (rollouts, _) = engine.run(&prompts)?;
    let mut out = match &cli.out {
        Some(p) => Some(BufWriter::new(File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => None,
    };
    let mut correct_per_problem = vec![0usize; prompts.len()];
    // Per problem, (sample, extracted answer, correct), for the majority vote.
    let mut answers: Vec<Vec<(usize, Option<String>, bool)>> = vec![Vec::new(); prompts.len()];
    let (mut tokens, mut calls) = (0usize, 0usize);
    let completions: Vec<String> = rollouts.iter().map(|r| tok.decode_lossy(&r.ids, true)).collect();
    let extracted: Vec<Option<String>> = completions.iter().map(|c| artist_math::extract_answer(c)).collect();
    let verdicts = match &judge {
        Some(judge) => {
            let questions: Vec<artist_math::Question<'_>> = (rollouts.iter().zip(&completions))
                .map(|(r, c)| {
                    let p = &data.problems[r.prompt_index];
                    artist_math::Question {
                        problem: &p.problem,
                        completion: c,
                        answer: &p.answer,
                        state: r.final_state.as_deref(),
                    }
                })
                .collect();
            judge.verdicts(&questions)?
        }
        None => (rollouts.iter().zip(&extracted))
            .map(|(r, e)| {
                e.as_deref().is_some_and(|a| artist_math::equivalent(&data.problems[r.prompt_index].answer, a)).into()
            })
            .collect(),
    };
    let mean_score = verdicts.iter().map(|v| v.score).sum::<f64>() / verdicts.len().max(1) as f64;
    for (((r, completion), extracted), verdict) in rollouts.iter().zip(completions).zip(extracted).zip(verdicts) {
        let (p, correct) = (&data.problems[r.prompt_index], verdict.correct);
        correct_per_problem[r.prompt_index] += correct as usize;
        answers[r.prompt_index].push((r.sample_index, extracted.clone(), correct));
        tokens += r.ids.len();
        calls += r.tool_calls.len();
        if let Some(w) = out.as_mut() {
            let mut line = json!({
                "problem_index": r.prompt_index, "problem": p.problem, "gold": p.answer, "sample": r.sample_index,
                "completion": completion, "extracted": extracted, "correct": correct, "score": verdict.score,
                "response_tokens": r.ids.len(), "tool_calls": r.tool_calls.len(), "finish": r.finish,
            });
            if let Some(state) = &r.final_state {
                line["final_state"] = state.as_str().into();
            }
            writeln!(w, "{line}").context("writing --out")?;
        }
    }
    if let Some(mut w) = out {
        w.flush().context("writing --out")?;
    }
    let n = rollouts.len().max(1) as f64;
    let problems = prompts.len() as f64;
    let pass_at_1 = correct_per_problem.iter().map(|&c| c as f64 / samples as f64).sum::<f64>() / problems;
    let pass_at_k =
        correct_per_problem.iter().map(|&c| artist::pass_k::pass_at_k(samples, c, cli.k)).sum::<f64>() / problems;
    // maj@N: the answer most samples agree on (artist_math::majority, ties to the lowest
    // sample), graded as that sample was.
    answers.iter_mut().for_each(|a| a.sort_by_key(|x| x.0));
    let majority_correct = answers.iter().filter(|a| {
        let extracted: Vec<Option<&str>> = a.iter().map(|x| x.1.as_deref()).collect();
        artist_math::majority(&extracted).is_some_and(|i| a[i].2)
    });
    let maj = majority_correct.count() as f64 / problems;
    let mut kept = None;
    if let Some(path) = &cli.keep {
        let rates: Vec<f64> = correct_per_problem.iter().map(|&c| c as f64 / samples as f64).collect();
        let chosen = keep_between(&rates, cli.keep_above, cli.keep_below);
        let mut w = BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
        for &i in &chosen {
            let p = &data.problems[i];
            let line = json!({"problem": p.problem, "answer": p.answer, "pass_rate": rates[i], "line": p.line});
            writeln!(w, "{line}").with_context(|| format!("writing {}", path.display()))?;
        }
        w.flush().with_context(|| format!("writing {}", path.display()))?;
        kept = Some(chosen.len());
    }
    let mut summary = json!({
        "pass_at_1": pass_at_1, "pass_at_k": pass_at_k, "maj_at_n": maj, "k": cli.k, "samples": samples,
        "problems": prompts.len(), "bad_rows": data.bad_rows.len(),
        "mean_response_tokens": tokens as f64 / n, "tool_calls_per_answer": calls as f64 / n,
        "mean_score": mean_score, "seconds": start.elapsed().as_secs_f64(),
    });
    if let Some(k) = kept {
        summary["kept"] = k.into();
    }
    if cli.json {
        println!("{summary}");
    } else {
        println!(
            "{} problems x {samples} samples: pass@1 {:.1}%, pass@{} {:.1}%, maj@{samples} {:.1}%, {:.0} tokens and {:.2} tool calls per answer",
            prompts.len(),
            100.0 * pass_at_1,
            cli.k,
            100.0 * pass_at_k,
            100.0 * maj,
            tokens as f64 / n,
            calls as f64 / n
        );
        if let (Some(k), Some(path)) = (kept, &cli.keep) {
            println!(
                "{k} of {} problems with {} < pass rate < {} written to {}",
                prompts.len(),
                cli.keep_above,
                cli.keep_below,
                path.display()
            );
        }
    }
    Ok(())
}

/// The indices of the pass rates strictly between `above` and `below`, in order.
fn keep_between(rates: &[f64], above: f64, below: f64) -> Vec<usize> {
    (0..rates.len()).filter(|&i| above < rates[i] && rates[i] < below).collect()
}

/// `--samples` (default `--k`), checked against `--k`.
fn samples_per_problem(cli: &Cli) -> Result<usize> {
    let samples = cli.samples.unwrap_or(cli.k);
    if cli.k == 0 || samples < cli.k {
        bail!("--k must be at least 1 and --samples ({samples}) at least --k ({})", cli.k);
    }
    Ok(samples)
}

fn verify(path: &Path) -> Result<()> {
    let input: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(BufReader::new(file))
    };
    let mut out = BufWriter::new(io::stdout().lock());
    verify_lines(input, &mut out).with_context(|| format!("verifying {}", path.display()))?;
    out.flush().context("writing to stdout")?;
    Ok(())
}

fn verify_lines(mut input: impl BufRead, out: &mut impl Write) -> Result<()> {
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf).context("reading the input")? == 0 {
            return Ok(());
        }
        line += 1;
        let verdict = match std::str::from_utf8(&buf) {
            Ok(text) => judge_line(text.trim_end_matches(['\n', '\r'])),
            Err(_) => Err("not UTF-8".to_string()),
        };
        let value = verdict.unwrap_or_else(|e| json!({"equal": false, "error": format!("line {line}: {e}")}));
        writeln!(out, "{value}").context("writing to stdout")?;
    }
}

/// One input line's verdict, or why the line is not a gold/prediction pair.
fn judge_line(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Err("empty line".into());
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("expected a JSON object with \"gold\" and \"pred\"".into());
    };
    let field = |name: &str| match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(format!("field {name:?} is not a string")),
        None => Err(format!("missing field {name:?}")),
    };
    let (gold, pred) = (field("gold")?, field("pred")?);
    let (g, p) = (parse_answer(&gold), parse_answer(&pred));
    let equal = match (&g, &p) {
        (Ok(g), Ok(p)) => answers_equal(g, p),
        _ => false,
    };
    let shown = |a: &Result<artist_math::Node, artist_math::AnswerError>| a.as_ref().ok().map(ToString::to_string);
    Ok(json!({"equal": equal, "gold_normalized": shown(&g), "pred_normalized": shown(&p)}))
}

#[cfg(test)]
mod keep_tests {
    /// The bounds are strict: the default keeps what is solved sometimes, not always.
    #[test]
    fn pass_rates_strictly_between_the_bounds() {
        let rates = [0.0, 0.25, 1.0, 0.5, 0.75, 1.0, 0.0];
        assert_eq!(super::keep_between(&rates, 0.0, 1.0), vec![1, 3, 4]);
        assert_eq!(super::keep_between(&rates, -0.5, 0.5), vec![0, 1, 6]);
        assert_eq!(super::keep_between(&rates, 0.5, 1.5), vec![2, 4, 5]);
        assert!(super::keep_between(&rates, 1.0, 0.0).is_empty());
    }
}
