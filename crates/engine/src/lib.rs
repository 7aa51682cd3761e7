//! Sampling and generation. Today: the seeded sampler and a single-sequence decoding loop;
//! the rollout engine with continuous batching and tool calls grows here.

mod generate;
mod sampler;

pub use generate::{FinishReason, GenerateOptions, Generation, generate};
pub use sampler::{Sampler, SamplingParams, argmax};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Model(#[from] artist_model::Error),
    #[error(transparent)]
    Tensor(#[from] artist_tensor::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
