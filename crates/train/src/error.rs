use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },

    #[error("{}:{line}: {msg}", path.display())]
    Data { path: PathBuf, line: usize, msg: String },

    #[error("{0}")]
    Config(String),

    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    #[error("{0}")]
    NonFinite(String),

    /// The external judge could not give a verdict (`[judge]`).
    #[error("{0}")]
    Judge(String),

    #[error(transparent)]
    Model(#[from] artist_model::Error),

    #[error(transparent)]
    Tensor(#[from] artist_tensor::Error),

    #[error(transparent)]
    Tokenizer(#[from] artist_tokenizer::Error),

    /// A collective of a data-parallel run failed (the message names the rank at fault).
    #[error("data parallel: {0}")]
    Dist(#[from] artist_dist::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Attaches a path to an I/O error.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
