//! `generate`: continue a prompt with a Hugging Face Qwen2 / Qwen2.5 checkpoint.
//!
//!     cargo run --release --bin generate -- --model DIR --prompt "2+2=" [--chat] [--json]
//!     cargo run --release --bin generate -- --model DIR --prompts FILE.jsonl [--n 4] [--out OUT.jsonl]
//!
//! `--prompts` generates a file of prompts together (continuous batching, each prompt's
//! prefill shared by its `--n` samples), as vLLM's offline `generate` does: one JSON line
//! per sample, in file order, `{"index", "sample", "id" (when the input line has one),
//! "text", "token_ids", "logprobs", "finish_reason", "prompt_tokens", "new_tokens"}` (with
//! --tools also `"mask"` and `"tool_calls"`), and a throughput line on stderr. A line that
//! cannot be used is named (`FILE:LINE: skipped: why`) and the others go on.
//!
//! With `--json`, prints one object (a stable interface):
//! `{"prompt_ids", "token_ids", "text", "logprobs", "finish_reason", "prompt_tokens",
//!   "new_tokens", "seconds", "tokens_per_s"}`; `token_ids` are the new tokens only,
//! `logprobs[i]` is the log-probability `token_ids[i]` was sampled with (after temperature,
//! before top-k/top-p/min-p), `finish_reason` is "eos", "stop" or "length", and `text` is
//! the decoded new tokens (special tokens skipped; null without a tokenizer). Temperature 0
//! (the default) is greedy decoding.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use artist::cli;
use artist_engine::{GenerateOptions, SamplingParams, generate};
use artist_tokenizer::{ChatTemplate, Message};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(version = artist::VERSION, about = "Generate text with a Qwen2 / Qwen2.5 checkpoint")]
struct Args {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// PEFT LoRA adapters (a directory with adapter_config.json and
    /// adapter_model.safetensors) added to --model.
    #[arg(long, value_name = "DIR")]
    lora: Option<PathBuf>,
    /// Prompt text (needs the model's tokenizer.json).
    #[arg(long, conflicts_with_all = ["prompt_ids", "prompts"], required_unless_present_any = ["prompt_ids", "prompts"])]
    prompt: Option<String>,
    /// Prompt as token ids: 1,2,3.
    #[arg(long, conflicts_with = "prompts")]
    prompt_ids: Option<String>,
    /// Many prompts, one JSON object a line: `{"prompt": TEXT}` (in the chat template with
    /// --chat), `{"messages": [{"role", "content"}, ...]}` (always in the chat template) or
    /// `{"prompt_ids": [IDS]}`; an `"id"` is copied to the output. They are generated
    /// together with continuous batching; each sample becomes one JSON line (see --out).
    /// `-` reads standard input.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// With --prompts: samples per prompt (they share the prompt's prefill).
    #[arg(long, default_value_t = 1, requires = "prompts")]
    n: usize,
    /// With --prompts: where the JSON lines go (default: stdout).
    #[arg(long, requires = "prompts")]
    out: Option<PathBuf>,
    /// With --prompts: sequences decoded at once.
    #[arg(long, default_value_t = 64, requires = "prompts")]
    max_batch: usize,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop once the generated text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Do not stop at the model's EOS tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// auto (a GPU when there is one, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Run with a tool live, in ARTIST's format: `python` (the sandboxed interpreter),
    /// `calculator`, or `mcp` (the functions of the server --mcp-command starts, called as
    /// `<tool>` JSON). Generation pauses at the tool's closing tag, the call runs, and its
    /// output is forced in as `<output>...</output>`. With --chat and no --system, the
    /// system prompt asks for ARTIST's format (listing an MCP server's functions).
    #[arg(long, value_parser = ["python", "calculator", "mcp"])]
    tools: Option<String>,
    #[command(flatten)]
    mcp: artist::cli::McpArgs,
    /// Most tool calls with --tools.
    #[arg(long, default_value_t = 8)]
    max_tool_calls: usize,
    /// Wall-clock limit of one Python call in seconds, with --tools python.
    #[arg(long, default_value_t = 10.0)]
    tool_timeout_s: f64,
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

fn main() -> Result<()> {
    artist::tensor::cpu::retain_freed_memory();
    artist::tensor::cpu::on_worker(run)
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = cli::device(&args.device)?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        seed: args.seed,
    };
    sampling.validate().map_err(anyhow::Error::msg)?;
    if args.chat && args.prompt_ids.is_some() {
        bail!("--chat wraps text: give --prompt (or --prompts), not --prompt-ids");
    }
    let (model, tokenizer) = cli::open_model(&args.model, args.lora.as_deref(), device)?;
    // Started before any prompt is rendered: an MCP server's functions go in the system prompt.
    let tool = args.tools.as_deref().map(|t| start_tool(&args, t)).transpose()?;
    if let Some(path) = &args.prompts {
        let eos_ids = if args.ignore_eos { vec![] } else { cli::eos_ids(&args.model, &model)? };
        return run_batch(&args, path, &model, tokenizer.as_ref(), sampling, eos_ids, tool);
    }
    let prompt_ids = match (&args.prompt, &args.prompt_ids) {
        (Some(text), _) => {
            let tok = tokenizer.as_ref().with_context(|| {
                format!("--prompt needs {}/tokenizer.json (or pass --prompt-ids)", args.model.display())
            })?;
            let text = if args.chat {
                let template = ChatTemplate::from_dir(&args.model)?;
                render_chat(&args, &template, vec![Message::user(text.clone())], tool.as_deref())?
            } else {
                text.clone()
            };
            tok.encode(&text)?
        }
        (None, Some(ids)) => cli::parse_ids(ids)?,
        (None, None) => unreachable!("clap requires one of --prompt, --prompt-ids, --prompts"),
    };
    if prompt_ids.is_empty() {
        bail!("the prompt is empty: it encodes to no tokens");
    }
    cli::check_ids(&prompt_ids, model.config.vocab_size)?;
    let eos_ids = if args.ignore_eos { vec![] } else { cli::eos_ids(&args.model, &model)? };
    if let Some(tool) = tool {
        let tok = tokenizer.as_ref().context("--tools needs the model's tokenizer.json")?;
        return run_with_tool(&args, tool, &model, tok, prompt_ids, sampling, eos_ids);
    }
    let opts = GenerateOptions {
        matmul_dtype: args.matmul_dtype.dtype(device),
        kv_cache_dtype: args.kv_dtype.storage(device),
        ..GenerateOptions::new(args.max_new_tokens, sampling, eos_ids)
    };

    let mut stream = tokenizer.as_ref().map(|t| (t, t.stream_decoder(true)));
    let mut text = String::new();
    let mut stdout = std::io::stdout();
    let start = Instant::now();
    let out = generate(&model, &prompt_ids, &opts, |id| {
        let Some((tok, s)) = stream.as_mut() else { return false };
        let piece = if cli::known(tok, id) { s.step(id).unwrap_or_default() } else { String::new() };
        if !args.json {
            print!("{piece}");
            let _ = stdout.flush();
        }
        text.push_str(&piece);
        args.stop.iter().any(|stop| text.contains(stop.as_str()))
    })?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some((_, s)) = stream.as_mut() {
        let rest = s.finish()?;
        if !args.json {
            println!("{rest}");
        }
    }
    let text = match &tokenizer {
        Some(t) => Some(t.decode_lossy(&out.token_ids, true)),
        None => None,
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "prompt_ids": prompt_ids,
                "token_ids": out.token_ids,
                "text": text,
                "logprobs": out.logprobs,
                "finish_reason": out.finish.as_str(),
                "prompt_tokens": prompt_ids.len(),
                "new_tokens": out.token_ids.len(),
                "seconds": seconds,
                "tokens_per_s": out.token_ids.len() as f64 / seconds.max(1e-9),
            })
        );
    } else if tokenizer.is_none() {
        println!("{:?}", out.token_ids);
    }
    Ok(())
}

/// The rollout engine's settings for `args`, one sample of each prompt a batch of one:
/// prompts up to `longest` tokens; with `tools`, up to `--max-tool-calls` calls, each turn
/// up to `--max-new-tokens`, stopping at `</answer>` unless `--stop` says otherwise.
fn engine_config(
    args: &Args,
    model: &artist::model::Qwen2,
    sampling: SamplingParams,
    eos_ids: Vec<u32>,
    longest: usize,
    tools: bool,
) -> artist_engine::RolloutConfig {
    let response = if tools { args.max_new_tokens * (args.max_tool_calls + 1) * 2 } else { args.max_new_tokens };
    artist_engine::RolloutConfig {
        group_size: 1,
        sampling,
        max_turn_tokens: args.max_new_tokens,
        max_response_tokens: response,
        max_tool_calls: args.max_tool_calls,
        max_context: model.config.max_position_embeddings.min(longest + response + 1),
        max_batch: 1,
        eos_ids,
        stop_texts: if args.stop.is_empty() && tools { vec!["</answer>".into()] } else { args.stop.clone() },
        matmul_dtype: args.matmul_dtype.dtype(model.device()),
        kv_cache_dtype: args.kv_dtype.storage(model.device()),
        ..Default::default()
    }
}

/// The tool `--tools` names, started.
fn start_tool(args: &Args, tool: &str) -> Result<std::sync::Arc<dyn artist_tools::Tool>> {
    Ok(match tool {
        "python" => {
            let config = artist_tools::SandboxConfig { timeout_s: args.tool_timeout_s, ..Default::default() };
            std::sync::Arc::new(artist_tools::PythonTool::new(config).context("starting the Python sandbox")?)
        }
        "mcp" => std::sync::Arc::new(args.mcp.start()?),
        _ => std::sync::Arc::new(artist_tools::Calculator),
    })
}

/// `messages` in the chat template, ready for the assistant's turn, after `--system` (or,
/// with --tools, ARTIST's system prompt for `tool`) unless they bring a system message of
/// their own.
fn render_chat(
    args: &Args,
    template: &ChatTemplate,
    messages: Vec<Message>,
    tool: Option<&dyn artist_tools::Tool>,
) -> Result<String> {
    let mut all = Vec::new();
    let artist = tool.map(|t| artist_rl::prompts::math_prompt_for(t.tag(), t.describe().as_deref()));
    let system = args.system.clone().or(artist);
    if let (Some(s), false) = (system, messages.iter().any(|m| m.role == "system")) {
        all.push(Message::system(s));
    }
    all.extend(messages);
    Ok(template.render(&all, None, true)?)
}

/// The prompt of one `--prompts` line, as token ids, with its `"id"` if it has one.
fn batch_prompt(
    line: &str,
    args: &Args,
    tok: Option<&artist_tokenizer::Tokenizer>,
    template: &mut Option<ChatTemplate>,
    model: &artist::model::Qwen2,
    tool: Option<&dyn artist_tools::Tool>,
) -> Result<(Vec<u32>, Option<serde_json::Value>)> {
    let vocab = model.config.vocab_size;
    let v: serde_json::Value = serde_json::from_str(line).context("not JSON")?;
    let o = v.as_object().context("not a JSON object")?;
    let given = ["prompt", "messages", "prompt_ids"].iter().filter(|k| o.contains_key(**k)).count();
    if given != 1 {
        bail!("needs exactly one of \"prompt\", \"messages\" and \"prompt_ids\"");
    }
    let mut chat = |messages: Vec<Message>| -> Result<String> {
        if template.is_none() {
            *template = Some(ChatTemplate::from_dir(&args.model)?);
        }
        render_chat(args, template.as_ref().expect("set above"), messages, tool)
    };
    let ids = if let Some(ids) = o.get("prompt_ids") {
        let ids: Vec<u32> = serde_json::from_value(ids.clone()).context("\"prompt_ids\" must be token ids")?;
        cli::check_ids(&ids, vocab)?;
        ids
    } else {
        let tok = tok.with_context(|| format!("text prompts need {}/tokenizer.json", args.model.display()))?;
        let text = match (o.get("prompt"), o.get("messages")) {
            (Some(p), _) => {
                let p = p.as_str().context("\"prompt\" must be a string")?;
                if args.chat { chat(vec![Message::user(p)])? } else { p.to_string() }
            }
            (_, Some(m)) => {
                let m: Vec<Message> =
                    serde_json::from_value(m.clone()).context("\"messages\" must be [{\"role\", \"content\"}, ...]")?;
                chat(m)?
            }
            _ => unreachable!("one key is present"),
        };
        tok.encode(&text)?
    };
    if ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let context = model.config.max_position_embeddings;
    if ids.len() >= context {
        bail!("a prompt of {} tokens leaves no room in the model's context of {context}", ids.len());
    }
    Ok((ids, o.get("id").cloned()))
}

/// `--prompts`: every prompt of the file, `--n` samples each, through the rollout engine
/// (continuous batching, a shared prefill per prompt, the tool live with --tools), one
/// JSON line per sample in file order.
fn run_batch(
    args: &Args,
    path: &std::path::Path,
    model: &artist::model::Qwen2,
    tok: Option<&artist_tokenizer::Tokenizer>,
    sampling: SamplingParams,
    eos_ids: Vec<u32>,
    tool: Option<std::sync::Arc<dyn artist_tools::Tool>>,
) -> Result<()> {
    use std::io::BufRead;

    use artist_engine::{RolloutConfig, RolloutEngine};

    if args.n == 0 || args.max_batch == 0 {
        bail!("--n and --max-batch must be at least 1");
    }
    let input: Box<dyn BufRead> = if path == std::path::Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let (mut prompts, mut ids, mut template) = (Vec::new(), Vec::new(), None);
    for (i, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: reading", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        match batch_prompt(&line, args, tok, &mut template, model, tool.as_deref()) {
            Ok((p, id)) => {
                prompts.push(p);
                ids.push(id);
            }
            Err(e) => eprintln!("{}:{}: skipped: {e:#}", path.display(), i + 1),
        }
    }
    if prompts.is_empty() {
        bail!("{}: no usable prompt", path.display());
    }
    let tools: Vec<_> = tool.into_iter().collect();
    let tok = tok.context("--prompts decodes its samples: it needs the model's tokenizer.json")?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let config = engine_config(args, model, sampling, eos_ids, longest, !tools.is_empty());
    let config = RolloutConfig { group_size: args.n, max_batch: args.max_batch.max(args.n), ..config };
    let engine = RolloutEngine { policy: model, tokenizer: tok, tools, config };
    let start = Instant::now();
    let (mut rollouts, _) = engine.run(&prompts)?;
    let seconds = start.elapsed().as_secs_f64();
    rollouts.sort_by_key(|r| (r.prompt_index, r.sample_index));
    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut new_tokens = 0;
    for r in &rollouts {
        new_tokens += r.sampled_tokens();
        let mut line = serde_json::json!({
            "index": r.prompt_index,
            "sample": r.sample_index,
            "text": tok.decode_lossy(&r.ids, true),
            "token_ids": r.ids,
            "logprobs": r.logprobs,
            "finish_reason": r.finish.reason(),
            "prompt_tokens": r.prompt_ids.len(),
            "new_tokens": r.ids.len(),
        });
        if let Some(id) = &ids[r.prompt_index] {
            line["id"] = id.clone();
        }
        if !r.tool_calls.is_empty() || args.tools.is_some() {
            line["mask"] = serde_json::json!(r.mask);
            line["tool_calls"] = serde_json::json!(r.tool_calls);
        }
        if let Some(state) = &r.final_state {
            line["final_state"] = state.as_str().into();
        }
        writeln!(out, "{line}").context("writing the samples")?;
    }
    out.flush().context("writing the samples")?;
    eprintln!(
        "{} prompts x {} samples: {new_tokens} tokens sampled in {seconds:.2} s ({:.1} tokens/s)",
        prompts.len(),
        args.n,
        new_tokens as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// One rollout through the rollout engine with `tool` live.
fn run_with_tool(
    args: &Args,
    tool: std::sync::Arc<dyn artist_tools::Tool>,
    model: &artist::model::Qwen2,
    tok: &artist_tokenizer::Tokenizer,
    prompt_ids: Vec<u32>,
    sampling: SamplingParams,
    eos_ids: Vec<u32>,
) -> Result<()> {
    use artist_engine::RolloutEngine;

    let config = engine_config(args, model, sampling, eos_ids, prompt_ids.len(), true);
    let engine = RolloutEngine { policy: model, tokenizer: tok, tools: vec![tool], config };
    let start = Instant::now();
    let (mut rollouts, stats) = engine.run(std::slice::from_ref(&prompt_ids))?;
    let r = rollouts.remove(0);
    let text = tok.decode_lossy(&r.ids, true);
    if args.json {
        let mut line = serde_json::json!({
            "prompt_ids": prompt_ids,
            "token_ids": r.ids,
            "text": text,
            "logprobs": r.logprobs,
            "mask": r.mask,
            "finish_reason": r.finish,
            "tool_calls": r.tool_calls,
            "prompt_tokens": prompt_ids.len(),
            "new_tokens": r.ids.len(),
            "seconds": start.elapsed().as_secs_f64(),
            "tool_wait_s": stats.tool_wait_s,
        });
        if let Some(state) = &r.final_state {
            line["final_state"] = state.as_str().into();
        }
        println!("{line}");
    } else {
        println!("{text}");
        eprintln!("[{} tokens, {} tool calls, finish: {:?}]", r.ids.len(), r.tool_calls.len(), r.finish);
    }
    Ok(())
}
