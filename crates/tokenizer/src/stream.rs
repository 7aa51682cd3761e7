//! [`StreamDecoder`]: text from ids fed one at a time, as a sampler produces them.
//!
//! Decoding each id on its own is wrong in two ways. A byte-level BPE token can hold part of a
//! character's UTF-8 bytes (a Chinese character or an emoji is often two or three tokens), so on
//! its own it decodes to U+FFFD; and some decoders change a token's text depending on what comes
//! before it (SentencePiece's leading-space rule). So the decoder keeps a short window: the last
//! ids that produced text (context) and the ids whose text is not complete yet (pending). Each
//! step decodes context + pending and emits what lies beyond the context's text, up to (not
//! including) a trailing run of U+FFFD, which is what an incomplete UTF-8 tail decodes to. Once the
//! pending text is complete, the pending ids become the new context. Concatenating everything
//! `step` and `finish` return gives exactly `decode(all ids)`.

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

const REPLACEMENT: char = '\u{FFFD}';

/// Incremental detokeniser. Make one with [`Tokenizer::stream_decoder`].
#[derive(Debug, Clone)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    /// `ids[..read]` is the context, `ids[read..]` the pending ids.
    ids: Vec<u32>,
    read: usize,
    /// `decode(ids[..read])`.
    context_text: String,
    /// Bytes of the pending ids' text already returned (the part before an incomplete tail).
    emitted: usize,
}

impl<'a> StreamDecoder<'a> {
    pub(crate) fn new(tokenizer: &'a Tokenizer, skip_special: bool) -> Self {
        Self { tokenizer, skip_special, ids: Vec::new(), read: 0, context_text: String::new(), emitted: 0 }
    }

    /// Feeds one id; returns the text it completes (often empty, e.g. while a character's bytes
    /// are still arriving). An id outside the vocabulary is an error and leaves the state as it
    /// was.
    pub fn step(&mut self, id: u32) -> Result<String> {
        self.tokenizer.check_ids(&[id])?;
        self.ids.push(id);
        let result = self.advance();
        if result.is_err() {
            self.ids.pop();
        }
        result
    }

    /// Emits what the pending ids complete; on error nothing has changed but the pushed id.
    fn advance(&mut self) -> Result<String> {
        let text = self.decode_window()?;
        let tail = self.pending_text(&text);
        let stable = tail.trim_end_matches(REPLACEMENT).len();
        let out = tail.get(self.emitted..stable).unwrap_or_default().to_owned();
        if stable < tail.len() {
            self.emitted = self.emitted.max(stable);
            return Ok(out);
        }
        // The pending text is complete: slide the window. The new context's text is decoded on
        // its own, as the next step will see it (a SentencePiece decoder drops the leading space
        // of a window's first token). When the pending ids produced no text (a skipped special
        // token), the old context stays: it is still what precedes.
        if !tail.is_empty() {
            let pending = &self.ids[self.read..];
            self.context_text = self.tokenizer.inner().decode(pending, self.skip_special).map_err(Error::Decode)?;
            self.ids.drain(..self.read);
        }
        self.read = self.ids.len();
        self.emitted = 0;
        Ok(out)
    }

    /// Feeds several ids; returns the text they complete.
    pub fn step_all(&mut self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        for &id in ids {
            out.push_str(&self.step(id)?);
        }
        Ok(out)
    }

    /// Ends the stream: returns whatever text is still held back (an incomplete UTF-8 tail
    /// decodes to U+FFFD here, as `decode` would give it) and resets the decoder.
    pub fn finish(&mut self) -> Result<String> {
        let text = self.decode_window()?;
        let out = self.pending_text(&text).get(self.emitted..).unwrap_or_default().to_owned();
        self.reset();
        Ok(out)
    }

    /// Forgets all ids fed so far.
    pub fn reset(&mut self) {
        self.ids.clear();
        self.read = 0;
        self.context_text.clear();
        self.emitted = 0;
    }

    /// Whether text is being held back waiting for more ids.
    pub fn has_pending(&self) -> bool {
        self.read < self.ids.len()
    }

    fn decode_window(&self) -> Result<String> {
        self.tokenizer.inner().decode(&self.ids, self.skip_special).map_err(Error::Decode)
    }

    /// The part of `decode(context + pending)` beyond the context's own text.
    fn pending_text<'t>(&self, text: &'t str) -> &'t str {
        text.strip_prefix(self.context_text.as_str())
            // A decoder whose output for the context changes once more ids follow: fall back to
            // the text past the context's length (at a character boundary).
            .or_else(|| (self.context_text.len()..=text.len()).find_map(|i| text.get(i..)))
            .unwrap_or_default()
    }
}
