#![doc = include_str!("../README.md")]

use thiserror::Error;

pub mod dataset;
mod equiv;
pub mod eval;
pub mod expr;
pub mod extract;
pub mod judge;
mod lex;
pub mod normalize;
pub mod parse;
pub mod rational;
mod vote;

pub use dataset::{AnswerField, BadRow, DatasetError, DatasetFormat, MathDataset, MathProblem};
pub use equiv::{answers_equal, equivalent, parse_answer};
pub use expr::Node;
pub use extract::{ExtractOptions, extract_answer, extract_answer_with, last_boxed};
pub use judge::{Judge, JudgeConfig, JudgeError, MAX_JUDGE_WORKERS, Question, Verdict};
pub use normalize::MAX_ANSWER_BYTES;
pub use vote::majority;

/// Why an answer string could not be read at all (such an answer equals nothing).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AnswerError {
    #[error("empty answer")]
    Empty,
    #[error("answer of {len} bytes is longer than the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("answer nested more than {} levels deep", parse::MAX_DEPTH)]
    TooDeep,
}
