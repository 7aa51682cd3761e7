//! `eval`: grading math answers, and later evaluating a model on a math dataset.
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
//! `eval --model DIR --dataset FILE [--format F]` will generate answers with a model and
//! grade them; it is not built yet and says so.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use artist_math::{answers_equal, parse_answer};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(version, about = "Grade math answers (verify); evaluate a model on a math dataset (not built yet)")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// [model evaluation, not built yet] Hugging Face model directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// [model evaluation, not built yet] Math problems with gold answers (JSONL).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// [model evaluation, not built yet] Dataset fields: numina, math500, aime, amc,
    /// olympiad, or a map like problem=question,answer=final_answer.
    #[arg(long, default_value = "math500")]
    format: String,
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
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Verify(args)) => verify(&args.jsonl),
        None => evaluate_model(&cli),
    }
}

/// The model-evaluation path: generate an answer per problem, grade it, report accuracy.
fn evaluate_model(cli: &Cli) -> Result<()> {
    let (Some(model), Some(dataset)) = (&cli.model, &cli.dataset) else {
        bail!(
            "nothing to do: `eval verify --jsonl PAIRS.jsonl` grades written answers; \
             `eval --model DIR --dataset FILE` will evaluate a model (not built yet)"
        );
    };
    // Checked now, so that a bad flag is reported before the missing feature.
    cli.format.parse::<artist_math::DatasetFormat>()?;
    bail!(
        "model evaluation is not built yet (--model {}, --dataset {}); \
         grade answers you already have with `eval verify --jsonl PAIRS.jsonl`",
        model.display(),
        dataset.display()
    )
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
