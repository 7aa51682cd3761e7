//! [`Tokenizer`]: a model directory's `tokenizer.json`, read by Hugging Face's `tokenizers` crate.
//!
//! The whole pipeline (normaliser, pre-tokeniser split, BPE, added/special tokens, decoder) comes
//! from the file, so ids match what transformers produces for the same file. This wrapper fixes
//! the choices the rest of the stack relies on: `encode` never adds special tokens of its own but
//! recognises those written in the text (`<|im_start|>`), and `decode` refuses ids the vocabulary
//! does not have instead of silently dropping them.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::stream::StreamDecoder;

/// The file name `from_dir` looks for.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A tokenizer loaded from a `tokenizer.json`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: Option<PathBuf>,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("path", &self.path).field("vocab_size", &self.vocab_size).finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from a model directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join(TOKENIZER_FILE))
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        let mut tokenizer =
            Self::from_bytes_inner(&bytes).map_err(|source| Error::Load { path: path.to_owned(), source })?;
        tokenizer.path = Some(path.to_owned());
        Ok(tokenizer)
    }

    /// Loads a tokenizer from the contents of a `tokenizer.json`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_inner(bytes).map_err(|source| Error::Load { path: PathBuf::from("<bytes>"), source })
    }

    fn from_bytes_inner(bytes: &[u8]) -> std::result::Result<Self, tokenizers::Error> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)?;
        Ok(Self::from_inner(inner))
    }

    /// Wraps an already built `tokenizers::Tokenizer`.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        let vocab_size = inner.get_vocab_size(true);
        Self { inner, path: None, vocab_size }
    }

    /// The file this tokenizer was loaded from, if it came from a file.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The underlying `tokenizers::Tokenizer`, for anything this wrapper does not expose.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes `text` to ids. No special tokens are added (no BOS/EOS from a post-processor);
    /// special tokens written in the text, like `<|im_start|>`, become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode_fast(text, false).map_err(Error::Encode)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes ids to text. With `skip_special`, special tokens (`<|im_end|>`, ...) are left
    /// out. An id outside the vocabulary is an error ([`Error::UnknownId`]).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.inner.decode(ids, skip_special).map_err(Error::Decode)
    }

    /// [`Tokenizer::decode`] that leaves out ids the tokenizer has no token for, as Hugging
    /// Face's decoders do, instead of failing: a model's vocabulary is often padded past the
    /// tokenizer's (Qwen2.5: 151,936 rows for 151,665 tokens) and a sampler may draw a padding
    /// row. For judging and logging sampled text; [`Tokenizer::decode`] names such an id.
    pub fn decode_lossy(&self, ids: &[u32], skip_special: bool) -> String {
        let known: Vec<u32> = ids.iter().copied().filter(|&id| self.inner.id_to_token(id).is_some()).collect();
        self.inner.decode(&known, skip_special).unwrap_or_default()
    }

    /// A decoder that turns ids, fed one at a time, into text as soon as it is complete.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, skip_special)
    }

    /// The id of a token string (vocabulary entry or added token), if it has one.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id, as stored in the vocabulary (byte-level BPE tokens are in the
    /// GPT-2 byte-to-unicode alphabet, e.g. `Ġworld`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a special added token (skipped by `decode(.., skip_special = true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.get_added_vocabulary().get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }

    /// Number of ids, added tokens included (151,665 for Qwen2.5; its checkpoints pad the
    /// embedding matrix to more rows than this).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub(crate) fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            Some(&id) => Err(Error::UnknownId { id, vocab_size: self.vocab_size }),
            None => Ok(()),
        }
    }
}
