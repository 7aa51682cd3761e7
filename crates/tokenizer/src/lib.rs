//! Text in and out of the model: a model directory's `tokenizer.json` ([`Tokenizer`]), streaming
//! detokenisation that never splits a character ([`StreamDecoder`]), and its chat template
//! rendered byte for byte as transformers renders it ([`ChatTemplate`]).
//!
//! The ids a policy is trained and sampled on must be exactly the ones Hugging Face tooling gives
//! for the same text, or a checkpoint's behaviour and our rewards drift apart silently; so the
//! tokenizer is Hugging Face's own `tokenizers` crate driven by the model's file, and the chat
//! template runs on a Jinja engine configured to match transformers' environment.
//!
//! ```no_run
//! use artist_tokenizer::{ChatTemplate, Message, Tokenizer};
//!
//! let dir = "models/Qwen2.5-0.5B-Instruct";
//! let tokenizer = Tokenizer::from_dir(dir)?;
//! let template = ChatTemplate::from_dir(dir)?;
//! let prompt = template.render(&[Message::user("What is 12 * 7?")], None, true)?;
//! let ids = tokenizer.encode(&prompt)?;
//!
//! let mut stream = tokenizer.stream_decoder(true);
//! for &id in &ids {
//!     print!("{}", stream.step(id)?);
//! }
//! print!("{}", stream.finish()?);
//! # Ok::<(), artist_tokenizer::Error>(())
//! ```

mod chat;
mod error;
mod python;
mod stream;
mod tokenizer;

pub use chat::{CHAT_TEMPLATE_FILE, CHATML_TEMPLATE, ChatTemplate, Message, TOKENIZER_CONFIG_FILE};
pub use error::{Error, Result};
pub use stream::StreamDecoder;
pub use tokenizer::{TOKENIZER_FILE, Tokenizer};
