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

use artist_tools::workers::LineWorkers;
pub use artist_tools::workers::in_parallel;
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
pub const MAX_JUDGE_WORKERS: usize = artist_tools::workers::MAX_WORKERS;

/// What went wrong with a judge, its command line included.
#[derive(Debug, thiserror::Error)]
#[error("judge {command:?}: {msg}")]
pub struct JudgeError {
    pub command: String,
    pub msg: String,
}

/// A running judge: see the module doc. Each worker is asked one question at a time; a
/// caller takes whichever is free.
pub struct Judge {
    workers: LineWorkers,
}

impl Judge {
    /// Starts the judge program, `config.workers` times.
    pub fn spawn(config: JudgeConfig) -> Result<Judge, JudgeError> {
        let workers =
            LineWorkers::spawn(&config.command, config.workers, "ARTIST_JUDGE_WORKER", config.timeout_s, "verdict")
                .map_err(|msg| JudgeError { command: config.command.join(" "), msg })?;
        Ok(Judge { workers })
    }

    /// How many questions it answers at once (`workers`).
    pub fn workers(&self) -> usize {
        self.workers.workers()
    }

    /// Whether `completion`, written for `problem`, is right, given the dataset's `answer`
    /// ([`Judge::verdict`]'s `correct`).
    pub fn correct(&self, problem: &str, completion: &str, answer: &str) -> Result<bool, JudgeError> {
        self.verdict(&Question { problem, completion, answer, state: None }).map(|v| v.correct)
    }

    /// The judge's verdict on a question. Waits for a free worker when all are busy.
    pub fn verdict(&self, q: &Question<'_>) -> Result<Verdict, JudgeError> {
        let mut question = serde_json::json!({"problem": q.problem, "completion": q.completion, "answer": q.answer});
        if let Some(state) = q.state {
            question["state"] = state.into();
        }
        self.workers.ask(&question, Verdict::parse).map_err(|msg| JudgeError { command: self.workers.command(), msg })
    }

    /// Verdicts on `(problem, completion, answer)` questions, in their order, asked of the
    /// workers at once; the first failure, in that order, if any failed.
    pub fn verdicts(&self, questions: &[Question<'_>]) -> Result<Vec<Verdict>, JudgeError> {
        in_parallel(self.workers(), questions.len(), |i| self.verdict(&questions[i])).into_iter().collect()
    }
}
