//! `metrics.jsonl`: one JSON object per optimiser step, flushed as it is written, so a
//! run that dies loses no line it reported; each line also goes to TensorBoard's event
//! file under `RUN_DIR/tensorboard/` ([`crate::tensorboard`]). `rollouts.jsonl` and
//! `eval_rollouts.jsonl`: the rollouts a GRPO run samples and the answers of its held-out
//! evaluations, as text with their rewards, in the same kind of file ([`JsonLines`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Result;
use crate::error::io;
use crate::tensorboard::{EventWriter, TENSORBOARD_DIR};

pub const METRICS_FILE: &str = "metrics.jsonl";
/// The sampled rollouts a GRPO run logs (`log_rollouts` per step): [`JsonLines`].
pub const ROLLOUTS_FILE: &str = "rollouts.jsonl";
/// The answers of each held-out evaluation a GRPO run logs (`eval.log_samples`).
pub const EVAL_ROLLOUTS_FILE: &str = "eval_rollouts.jsonl";

pub struct Metrics {
    lines: JsonLines,
    events: EventWriter,
}

impl Metrics {
    /// Opens `RUN_DIR/metrics.jsonl` ([`JsonLines::open`]) and a new TensorBoard event file.
    pub fn open(run_dir: &Path, resumed_at: Option<u64>) -> Result<Metrics> {
        let lines = JsonLines::open(&run_dir.join(METRICS_FILE), resumed_at)?;
        let events = EventWriter::create(&run_dir.join(TENSORBOARD_DIR))?;
        Ok(Metrics { lines, events })
    }

    pub fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        self.lines.write(line)?;
        self.events.line(line)
    }
}

/// A file of JSON objects, one per line, each with a `"step"`, flushed as written.
pub struct JsonLines {
    path: PathBuf,
    file: File,
}

impl JsonLines {
    /// Opens `path` afresh, or, for a run resumed from step `s`, keeps the lines of steps up
    /// to `s` and drops later ones (they are about to be redone).
    pub fn open(path: &Path, resumed_at: Option<u64>) -> Result<JsonLines> {
        if let Some(s) = resumed_at
            && path.exists()
        {
            let text = std::fs::read_to_string(path).map_err(io(path))?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|x| x.as_u64()))
                        .is_some_and(|step| step <= s)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(path, kept).map_err(io(path))?;
        }
        let mut opts = OpenOptions::new();
        opts.create(true);
        if resumed_at.is_some() {
            opts.append(true)
        } else {
            opts.write(true).truncate(true)
        };
        let file = opts.open(path).map_err(io(path))?;
        Ok(JsonLines { path: path.to_path_buf(), file })
    }

    pub fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{line}").and_then(|_| self.file.flush()).map_err(io(&self.path))
    }
}

/// Every line of a metrics file.
pub fn read(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|source| crate::Error::Json { path: path.into(), source }))
        .collect()
}
