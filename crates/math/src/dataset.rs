//! Math problems with gold answers, from JSONL files (one JSON object per line) or Parquet
//! files as Hugging Face `datasets` exports them (a `.parquet` extension; each row is read
//! as the JSON object of its columns, and "line" in error reports is the row number).
//!
//! Field names differ between datasets; a [`DatasetFormat`] says where the problem and the
//! gold answer are. Presets:
//!
//! | preset | problem | gold answer |
//! |---|---|---|
//! | `numina` | `problem` | the last `\boxed{...}` of `solution` |
//! | `math500` | `problem` | `answer` |
//! | `aime`, `amc` | `problem`, else `question` | `answer` (a string or a JSON number) |
//! | `olympiad` | `question` | `final_answer`: a list, joined with `", "` |
//!
//! Anything else takes a field map: `problem=question,answer=final_answer` (or
//! `solution=FIELD` to take the last `\boxed{}` of a worked solution).
//!
//! OlympiadBench's `final_answer` is a list, almost always of one element; a list of
//! several (a problem with several answers) is joined with `", "` into one answer, which
//! [`crate::equivalent`] reads as a bare list and so compares in any order.
//!
//! A malformed row (bad JSON, a missing field, a field of the wrong type, a solution with
//! no `\boxed{}`) is skipped and recorded with its line number in
//! [`MathDataset::bad_rows`]; loading fails only when no row is usable. Blank lines are
//! skipped silently.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::str::FromStr;

use serde_json::Value;
use thiserror::Error;

use crate::extract::last_boxed;

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "dataset format {0:?}: expected numina, math500, aime, amc, olympiad or a field map like \
         problem=question,answer=final_answer"
    )]
    Format(String),
    #[error("reading {path}: not a Parquet file we can read: {msg}")]
    Parquet { path: String, msg: String },
    #[error("{dataset}: no usable rows ({bad} malformed{})", first_note(.first))]
    NoUsableRows { dataset: String, bad: usize, first: Option<BadRow> },
}

fn first_note(first: &Option<BadRow>) -> String {
    first.as_ref().map(|f| format!("; first: {f}")).unwrap_or_default()
}

/// Where a row's gold answer comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnswerField {
    /// A field holding the answer: a string, a number, or a list of them (joined with `", "`).
    Answer(String),
    /// A field holding a worked solution: the answer is its last `\boxed{...}`.
    Solution(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetFormat {
    /// Fields tried in order for the problem text.
    pub problem: Vec<String>,
    pub answer: AnswerField,
}

impl DatasetFormat {
    fn new(problem: &[&str], answer: AnswerField) -> DatasetFormat {
        DatasetFormat { problem: problem.iter().map(|s| s.to_string()).collect(), answer }
    }

    pub fn numina() -> DatasetFormat {
        DatasetFormat::new(&["problem"], AnswerField::Solution("solution".into()))
    }

    pub fn math500() -> DatasetFormat {
        DatasetFormat::new(&["problem"], AnswerField::Answer("answer".into()))
    }

    pub fn aime() -> DatasetFormat {
        DatasetFormat::new(&["problem", "question"], AnswerField::Answer("answer".into()))
    }

    pub fn amc() -> DatasetFormat {
        DatasetFormat::aime()
    }

    pub fn olympiad() -> DatasetFormat {
        DatasetFormat::new(&["question"], AnswerField::Answer("final_answer".into()))
    }
}

/// A preset name or a field map (`problem=question,answer=final_answer`).
impl FromStr for DatasetFormat {
    type Err = DatasetError;

    fn from_str(s: &str) -> Result<DatasetFormat, DatasetError> {
        match s.trim() {
            "numina" => return Ok(DatasetFormat::numina()),
            "math500" => return Ok(DatasetFormat::math500()),
            "aime" => return Ok(DatasetFormat::aime()),
            "amc" => return Ok(DatasetFormat::amc()),
            "olympiad" => return Ok(DatasetFormat::olympiad()),
            _ => {}
        }
        let bad = || DatasetError::Format(s.to_string());
        let (mut problem, mut answer) = (None, None);
        for pair in s.split(',') {
            let (key, field) = pair.split_once('=').ok_or_else(bad)?;
            let field = field.trim();
            if field.is_empty() {
                return Err(bad());
            }
            match key.trim() {
                "problem" if problem.is_none() => problem = Some(field.to_string()),
                "answer" if answer.is_none() => answer = Some(AnswerField::Answer(field.to_string())),
                "solution" if answer.is_none() => answer = Some(AnswerField::Solution(field.to_string())),
                _ => return Err(bad()),
            }
        }
        match (problem, answer) {
            (Some(p), Some(a)) => Ok(DatasetFormat { problem: vec![p], answer: a }),
            _ => Err(bad()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MathProblem {
    /// 1-based line in the file.
    pub line: usize,
    pub problem: String,
    pub answer: String,
}

/// A skipped row and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MathDataset {
    pub problems: Vec<MathProblem>,
    pub bad_rows: Vec<BadRow>,
}

impl MathDataset {
    /// Reads a JSONL file, or a Parquet file when the name ends in `.parquet`.
    pub fn load(path: &Path, format: &DatasetFormat) -> Result<MathDataset, DatasetError> {
        let io = |source| DatasetError::Io { path: path.display().to_string(), source };
        let file = File::open(path).map_err(io)?;
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet")) {
            return MathDataset::from_parquet(file, &path.display().to_string(), format);
        }
        MathDataset::from_reader(BufReader::new(file), &path.display().to_string(), format)
    }

    /// Reads a Parquet file's rows (any compression the `parquet` crate is built with:
    /// Snappy, what `datasets` writes, and none).
    pub fn from_parquet(file: File, source: &str, format: &DatasetFormat) -> Result<MathDataset, DatasetError> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let bad =
            |e: parquet::errors::ParquetError| DatasetError::Parquet { path: source.to_string(), msg: e.to_string() };
        let reader = SerializedFileReader::new(file).map_err(bad)?;
        let mut out = MathDataset::default();
        for (i, r) in reader.get_row_iter(None).map_err(bad)?.enumerate() {
            let line = i + 1;
            match r {
                Ok(r) => match row_value(&r.to_json_value(), format) {
                    Ok((problem, answer)) => out.problems.push(MathProblem { line, problem, answer }),
                    Err(reason) => out.bad_rows.push(BadRow { line, reason }),
                },
                Err(e) => out.bad_rows.push(BadRow { line, reason: e.to_string() }),
            }
        }
        out.usable(source)
    }

    /// Reads JSONL from any reader; `source` names it in errors.
    pub fn from_reader(mut reader: impl BufRead, source: &str, format: &DatasetFormat) -> Result<Self, DatasetError> {
        let mut out = MathDataset::default();
        let mut buf = Vec::new();
        let mut line = 0;
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| DatasetError::Io { path: source.to_string(), source: e })?;
            if n == 0 {
                break;
            }
            line += 1;
            let Ok(text) = std::str::from_utf8(&buf) else {
                out.bad_rows.push(BadRow { line, reason: "not UTF-8".into() });
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            match row(text, format) {
                Ok((problem, answer)) => out.problems.push(MathProblem { line, problem, answer }),
                Err(reason) => out.bad_rows.push(BadRow { line, reason }),
            }
        }
        out.usable(source)
    }

    /// This dataset, or an error when no row was usable.
    fn usable(self, source: &str) -> Result<MathDataset, DatasetError> {
        if self.problems.is_empty() {
            return Err(DatasetError::NoUsableRows {
                dataset: source.to_string(),
                bad: self.bad_rows.len(),
                first: self.bad_rows.first().cloned(),
            });
        }
        Ok(self)
    }

    /// Reads JSONL text.
    pub fn from_jsonl_str(text: &str, source: &str, format: &DatasetFormat) -> Result<MathDataset, DatasetError> {
        MathDataset::from_reader(text.as_bytes(), source, format)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// One row's problem and gold answer, or why the row is unusable.
fn row(text: &str, format: &DatasetFormat) -> Result<(String, String), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    row_value(&value, format)
}

/// [`row`] for a value already parsed (a JSONL line or a Parquet row).
fn row_value(value: &Value, format: &DatasetFormat) -> Result<(String, String), String> {
    let Value::Object(obj) = value else {
        return Err(format!("expected a JSON object, found {}", type_name(value)));
    };
    let Some((pname, pvalue)) = format.problem.iter().find_map(|k| obj.get(k).map(|v| (k, v))) else {
        return Err(format!("missing field {}", quoted_fields(&format.problem)));
    };
    let problem = match pvalue {
        Value::String(s) if !s.trim().is_empty() => s.clone(),
        Value::String(_) => return Err(format!("field {pname:?} is empty")),
        other => return Err(format!("field {pname:?} is {}, expected a string", type_name(other))),
    };
    let answer = match &format.answer {
        AnswerField::Answer(name) => {
            let v = obj.get(name).ok_or_else(|| format!("missing field {name:?}"))?;
            answer_text(v).map_err(|what| format!("field {name:?} is {what}"))?
        }
        AnswerField::Solution(name) => match obj.get(name) {
            Some(Value::String(s)) => match last_boxed(s).map(str::trim).filter(|b| !b.is_empty()) {
                Some(b) => b.to_string(),
                None => return Err(format!("field {name:?} has no \\boxed{{...}} answer")),
            },
            Some(other) => return Err(format!("field {name:?} is {}, expected a string", type_name(other))),
            None => return Err(format!("missing field {name:?}")),
        },
    };
    Ok((problem, answer))
}

fn quoted_fields(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(" or ")
}

/// An answer field as text: a string, a number (`204`, `2.5`), or a non-empty list of
/// those joined with `", "`. The error says what the field was instead.
fn answer_text(v: &Value) -> Result<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Value::String(_) => Err("empty".to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("{}, expected a string, a number or a list of them", type_name(other))),
    };
    match v {
        Value::Array(items) if items.is_empty() => Err("an empty list".into()),
        Value::Array(items) => Ok(items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?.join(", ")),
        other => scalar(other),
    }
}
