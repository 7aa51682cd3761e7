//! Loading and running a model: every error names the file, tensor or field at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },

    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    #[error("tensor {name:?} is missing from the checkpoint")]
    MissingTensor { name: String },

    #[error("tensor {name:?} has shape {got:?}, but the config implies {expected:?}")]
    TensorShape { name: String, expected: Vec<usize>, got: Vec<usize> },

    #[error("tensor {name:?} has dtype {dtype}, expected F32, BF16 or F16")]
    TensorDType { name: String, dtype: String },

    #[error("token id {id} is out of range: the model's vocab_size is {vocab_size}")]
    TokenOutOfRange { id: u32, vocab_size: usize },

    #[error("{0}")]
    Input(String),

    #[error(transparent)]
    Tensor(#[from] artist_tensor::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
