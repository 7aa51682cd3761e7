//! An external judge: a program the user writes that decides whether a completion is right,
//! for tasks whose answers [`crate::equivalent`] cannot compare (code that must pass tests,
//! answers in words, anything a script can check), as veRL's `custom_reward_function`.
//!
//! The judge is started once and kept: for each completion it reads one JSON line
//! `{"problem": ..., "completion": ..., "answer": ...}` on its stdin (`answer` is the
//! dataset's gold field, which may hold whatever the judge needs: a number, test cases, a
//! rubric) and writes one line `{"correct": true|false}` on its stdout, in order. Its
//! stderr is the trainer's. Nothing
//! it does makes this panic: a judge that cannot start, exits, answers something else, or
//! takes longer than the timeout is an error that names it and what it said, and the run
//! stops there, since a reward that silently turned to 0 would train the model on nothing.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to start a judge (`[judge]` in a GRPO config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    /// The program, then its arguments; empty: no judge (math equivalence).
    pub command: Vec<String>,
    /// Seconds one verdict may take.
    pub timeout_s: f64,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig { command: Vec::new(), timeout_s: 60.0 }
    }
}

/// What went wrong with a judge, its command line included.
#[derive(Debug, thiserror::Error)]
#[error("judge {command:?}: {msg}")]
pub struct JudgeError {
    pub command: String,
    pub msg: String,
}

struct Pipe {
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
    /// Set once the judge failed: every later verdict fails with it.
    broken: Option<String>,
}

/// A running judge: see the module doc. Verdicts are asked one at a time (a lock keeps a
/// question and its answer together).
pub struct Judge {
    config: JudgeConfig,
    pipe: Mutex<Pipe>,
    child: Mutex<Child>,
}

/// The lock's value even if a holder panicked (none does while holding it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Judge {
    /// Starts the judge program.
    pub fn spawn(config: JudgeConfig) -> Result<Judge, JudgeError> {
        let command = config.command.join(" ");
        let fail = |msg: String| JudgeError { command: command.clone(), msg };
        let (program, args) = config.command.split_first().ok_or_else(|| fail("the command is empty".into()))?;
        if !(config.timeout_s > 0.0 && config.timeout_s.is_finite()) {
            return Err(fail(format!("timeout_s must be a positive number, got {}", config.timeout_s)));
        }
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| fail(format!("cannot start it: {e}")))?;
        let (stdin, stdout) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
        let (tx, lines) = channel();
        std::thread::Builder::new()
            .name("judge-reader".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| fail(format!("cannot start its reader thread: {e}")))?;
        Ok(Judge { config, pipe: Mutex::new(Pipe { stdin, lines, broken: None }), child: Mutex::new(child) })
    }

    /// Whether `completion`, written for `problem`, is right, given the dataset's `answer`.
    pub fn correct(&self, problem: &str, completion: &str, answer: &str) -> Result<bool, JudgeError> {
        let fail = |msg: String| JudgeError { command: self.config.command.join(" "), msg };
        let mut pipe = lock(&self.pipe);
        if let Some(why) = &pipe.broken {
            return Err(fail(why.clone()));
        }
        let question = serde_json::json!({"problem": problem, "completion": completion, "answer": answer});
        let verdict = Self::ask(&mut pipe, &question, Duration::from_secs_f64(self.config.timeout_s));
        verdict.map_err(|why| {
            // A judge that failed once is not asked again: its next line would answer the
            // wrong question.
            pipe.broken = Some(why.clone());
            fail(why)
        })
    }

    fn ask(pipe: &mut Pipe, question: &serde_json::Value, timeout: Duration) -> Result<bool, String> {
        let mut line = question.to_string();
        line.push('\n');
        pipe.stdin
            .write_all(line.as_bytes())
            .and_then(|_| pipe.stdin.flush())
            .map_err(|e| format!("writing to it: {e} (has it exited?)"))?;
        let reply = match pipe.lines.recv_timeout(timeout) {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Err(format!("reading from it: {e}")),
            Err(RecvTimeoutError::Timeout) => return Err(format!("no verdict within {} s", timeout.as_secs_f64())),
            Err(RecvTimeoutError::Disconnected) => return Err("it exited without a verdict".into()),
        };
        let value: serde_json::Value = serde_json::from_str(&reply)
            .map_err(|e| format!("answered {reply:?}, not JSON ({e}); expected {{\"correct\": true|false}}"))?;
        value
            .get("correct")
            .and_then(serde_json::Value::as_bool)
            .ok_or_else(|| format!("answered {reply}, which has no boolean \"correct\""))
    }
}

impl Drop for Judge {
    fn drop(&mut self) {
        // A judge keeps nothing worth saving: one still running is killed (its input would
        // close only when the fields drop, after this).
        let mut child = lock(&self.child);
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}
