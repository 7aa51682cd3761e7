//! Sampling and generation: the seeded sampler, a single-sequence decoding loop, and the
//! rollout engine (many sequences at once, shared prompt prefill, tools in the loop).

mod exp64;
mod generate;
mod policy;
mod rollout;
mod sampler;

pub use generate::{FinishReason, GenerateOptions, Generation, generate};
pub use policy::{Policy, ScriptedCache, ScriptedPolicy, SteeredPolicy};
pub use rollout::{Finish, KeptCache, Rollout, RolloutConfig, RolloutEngine, RolloutStats, ToolCallRecord};
pub use sampler::{Logits, Sampler, SamplingParams, argmax};

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
