//! An external judge: a program the user writes that decides whether a completion is right,
//! for tasks whose answers [`crate::equivalent`] cannot compare (code that must pass tests,
//! answers in words, anything a script can check), as veRL's `custom_reward_function`.
//!
//! The judge is started once and kept: for each completion it reads one JSON line
//! `{"problem": ..., "completion": ..., "answer": ...}` on its stdin (`answer` is the
//! dataset's gold field, which may hold whatever the judge needs: a number, test cases, a
//! rubric) and writes one line on its stdout, in order: `{"correct": true|false}`, or
//! partial credit `{"score": s}` with `s` from 0 to 1 (the fraction of tests passed, a
//! rubric's grade; the answer reward is scaled by it, and the answer counts as correct at 1),
//! or both (`{"score": 0.5, "correct": true}`: the judge says where "correct" begins). When
//! the rollout's tool left a final state (an MCP environment's `state_tool`), the question
//! carries it too, as `"state"` (text, often JSON), so the judge can grade where the rollout
//! left the environment. Its stderr is the trainer's. With `workers = N` N copies are
//! started (each told its number in `ARTIST_JUDGE_WORKER`, 0 to N - 1) and asked at once,
//! each one question at a time, so a slow judge (an LLM behind an API, tests that take
//! seconds) grades a step's rollouts N at a time ([`Judge::verdicts`]). Nothing it does
//! makes this panic: a judge that cannot start, exits, answers something else, or takes
//! longer than the timeout is an error that names it and what it said, and the run stops
//! there, since a reward that silently turned to 0 would train the model on nothing.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Condvar, Mutex, MutexGuard};
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
    /// Copies of the judge asked at once (1, the default: one question at a time).
    pub workers: usize,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig { command: Vec::new(), timeout_s: 60.0, workers: 1 }
    }
}

/// One answer to grade: the problem, the completion written for it, the dataset's gold
/// `answer`, and what a tool left when the rollout ended (an environment's final state,
/// `Tool::final_state`), sent as `"state"` when there is one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Question<'a> {
    pub problem: &'a str,
    pub completion: &'a str,
    pub answer: &'a str,
    pub state: Option<&'a str>,
}

/// A judge's verdict on one answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Whether the answer counts as right (accuracy, pass@k).
    pub correct: bool,
    /// The credit it earns, from 0 to 1 (the answer reward is scaled by it).
    pub score: f64,
}

impl From<bool> for Verdict {
    /// Right (score 1) or wrong (score 0).
    fn from(correct: bool) -> Verdict {
        Verdict { correct, score: if correct { 1.0 } else { 0.0 } }
    }
}

impl Verdict {
    /// A judge's answer line read as a verdict: see the module doc.
    pub fn parse(reply: &str) -> Result<Verdict, String> {
        let value: serde_json::Value = serde_json::from_str(reply).map_err(|e| {
            format!("answered {reply:?}, not JSON ({e}); expected {{\"correct\": true|false}} or {{\"score\": 0..1}}")
        })?;
        let correct = match value.get("correct") {
            None => None,
            Some(c) => {
                Some(c.as_bool().ok_or_else(|| format!("answered {reply}, whose \"correct\" is not a boolean"))?)
            }
        };
        let score = match value.get("score") {
            None => None,
            Some(s) => match s.as_f64() {
                Some(s) if (0.0..=1.0).contains(&s) => Some(s),
                _ => return Err(format!("answered {reply}, whose \"score\" is not a number from 0 to 1")),
            },
        };
        match (correct, score) {
            (Some(correct), Some(score)) => Ok(Verdict { correct, score }),
            (Some(correct), None) => Ok(Verdict::from(correct)),
            (None, Some(score)) => Ok(Verdict { correct: score >= 1.0, score }),
            (None, None) => Err(format!("answered {reply}, which has no boolean \"correct\" and no \"score\"")),
        }
    }
}

/// The most judge processes one `Judge` starts.
pub const MAX_JUDGE_WORKERS: usize = 256;

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
}

/// One judge process.
struct Worker {
    pipe: Mutex<Pipe>,
    child: Mutex<Child>,
}

/// A running judge: see the module doc. Each worker is asked one question at a time (its
/// lock keeps a question and its answer together); a caller takes whichever is free.
pub struct Judge {
    config: JudgeConfig,
    workers: Vec<Worker>,
    /// The workers no caller holds.
    free: Mutex<Vec<usize>>,
    freed: Condvar,
    /// Set once a verdict failed: every later one fails with it.
    broken: Mutex<Option<String>>,
}

/// The lock's value even if a holder panicked (none does while holding it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Judge {
    /// Starts the judge program, `config.workers` times.
    pub fn spawn(config: JudgeConfig) -> Result<Judge, JudgeError> {
        let command = config.command.join(" ");
        let fail = |msg: String| JudgeError { command: command.clone(), msg };
        let (program, args) = config.command.split_first().ok_or_else(|| fail("the command is empty".into()))?;
        if !(config.timeout_s > 0.0 && config.timeout_s.is_finite()) {
            return Err(fail(format!("timeout_s must be a positive number, got {}", config.timeout_s)));
        }
        if !(1..=MAX_JUDGE_WORKERS).contains(&config.workers) {
            return Err(fail(format!("workers must be from 1 to {MAX_JUDGE_WORKERS}, got {}", config.workers)));
        }
        let n = config.workers;
        // Built as the workers start, so that a failure drops it and ends those started.
        let mut judge = Judge {
            config: config.clone(),
            workers: Vec::with_capacity(n),
            free: Mutex::new((0..n).rev().collect()),
            freed: Condvar::new(),
            broken: Mutex::new(None),
        };
        for i in 0..n {
            let mut child = Command::new(program)
                .args(args)
                .env("ARTIST_JUDGE_WORKER", i.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| fail(format!("cannot start it: {e}")))?;
            let (stdin, stdout) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
            let (tx, lines) = channel();
            judge.workers.push(Worker { pipe: Mutex::new(Pipe { stdin, lines }), child: Mutex::new(child) });
            std::thread::Builder::new()
                .name(format!("judge-reader-{i}"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| fail(format!("cannot start its reader thread: {e}")))?;
        }
        Ok(judge)
    }

    /// How many questions it answers at once (`workers`).
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Whether `completion`, written for `problem`, is right, given the dataset's `answer`
    /// ([`Judge::verdict`]'s `correct`).
    pub fn correct(&self, problem: &str, completion: &str, answer: &str) -> Result<bool, JudgeError> {
        self.verdict(&Question { problem, completion, answer, state: None }).map(|v| v.correct)
    }

    /// The judge's verdict on a question. Waits for a free worker when all are busy.
    pub fn verdict(&self, q: &Question<'_>) -> Result<Verdict, JudgeError> {
        let fail = |msg: String| JudgeError { command: self.config.command.join(" "), msg };
        let i = {
            let mut free = lock(&self.free);
            loop {
                if let Some(why) = lock(&self.broken).clone() {
                    return Err(fail(why));
                }
                match free.pop() {
                    Some(i) => break i,
                    None => free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner()),
                }
            }
        };
        let mut question = serde_json::json!({"problem": q.problem, "completion": q.completion, "answer": q.answer});
        if let Some(state) = q.state {
            question["state"] = state.into();
        }
        let verdict =
            Self::ask(&mut lock(&self.workers[i].pipe), &question, Duration::from_secs_f64(self.config.timeout_s));
        let verdict = verdict.map_err(|why| {
            // A judge that failed once is not asked again: a worker's next line could
            // answer the wrong question, and the run stops on the first failure anyway.
            let why = match self.workers.len() {
                1 => why,
                _ => format!("worker {i}: {why}"),
            };
            lock(&self.broken).get_or_insert(why).clone()
        });
        lock(&self.free).push(i);
        match verdict {
            Ok(v) => {
                self.freed.notify_one();
                Ok(v)
            }
            Err(why) => {
                // Every waiter returns the failure.
                self.freed.notify_all();
                Err(fail(why))
            }
        }
    }

    /// Verdicts on `(problem, completion, answer)` questions, in their order, asked of the
    /// workers at once; the first failure, in that order, if any failed.
    pub fn verdicts(&self, questions: &[Question<'_>]) -> Result<Vec<Verdict>, JudgeError> {
        in_parallel(self.workers(), questions.len(), |i| self.verdict(&questions[i])).into_iter().collect()
    }

    fn ask(pipe: &mut Pipe, question: &serde_json::Value, timeout: Duration) -> Result<Verdict, String> {
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
        Verdict::parse(&reply)
    }
}

/// `f(0), ..., f(n - 1)` on up to `threads` threads (the calling one among them), in
/// order: for work that waits (a judge's verdict) rather than computes.
pub fn in_parallel<R: Send>(threads: usize, n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return done;
            }
            done.push((i, f(i)));
        }
    };
    let mut all: Vec<(usize, R)> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in helpers {
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    all.sort_by_key(|&(i, _)| i);
    all.into_iter().map(|(_, r)| r).collect()
}

impl Drop for Judge {
    fn drop(&mut self) {
        // A judge keeps nothing worth saving: one still running is killed (its input would
        // close only when the fields drop, after this).
        for w in &self.workers {
            let mut child = lock(&w.child);
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
