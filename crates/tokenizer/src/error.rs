//! The crate's one error type. Every failure (a missing or malformed file, an id the vocabulary
//! does not have, a chat template that does not compile or that calls `raise_exception`) is a
//! value that names what went wrong and, for files, which file; nothing here panics on input.

use std::path::PathBuf;

/// Errors from loading tokenizers and chat templates, encoding, decoding and rendering.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `tokenizer.json` was read but the `tokenizers` crate rejected it.
    #[error("cannot load tokenizer {}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
    /// A JSON file (e.g. `tokenizer_config.json`) is not valid JSON.
    #[error("invalid JSON in {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A configuration file is valid JSON but does not have the expected shape.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// The tokenizer failed to encode the text.
    #[error("cannot encode text: {0}")]
    Encode(#[source] tokenizers::Error),
    /// The tokenizer failed to decode the ids.
    #[error("cannot decode ids: {0}")]
    Decode(#[source] tokenizers::Error),
    /// A token id outside the tokenizer's vocabulary (for example one of the padding rows a
    /// model's embedding matrix has beyond the tokenizer's last id).
    #[error("token id {id} is not in the tokenizer's vocabulary ({vocab_size} ids)")]
    UnknownId { id: u32, vocab_size: usize },
    /// The chat template has a syntax error.
    #[error("chat template does not compile: {0:#}")]
    TemplateSyntax(#[source] minijinja::Error),
    /// The chat template called `raise_exception(message)` (how templates reject input, e.g.
    /// roles that do not alternate).
    #[error("chat template raised an exception: {message}")]
    TemplateRaised { message: String },
    /// Rendering the chat template failed (an undefined filter, a type error, ...).
    #[error("chat template failed to render: {0:#}")]
    TemplateRender(#[source] minijinja::Error),
    /// transformers refuses to render an empty conversation, and so do we.
    #[error("cannot apply a chat template to an empty conversation")]
    EmptyConversation,
    /// A message passed to `render_json` is not a JSON object.
    #[error("{0}")]
    InvalidMessage(String),
    /// The tokenizer config has several named chat templates and none fits the call.
    #[error("no chat template named {name:?} (the model has: {available})")]
    NoSuchTemplate { name: String, available: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
