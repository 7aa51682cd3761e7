//! Supervised fine-tuning data: JSONL, one example per line, either a chat
//! (`{"messages": [{"role", "content"}, ...]}`, loss on the assistant turns) or token ids
//! (`{"input_ids": [...], "loss_mask": [...]}`, loss where the mask is 1).
//!
//! `loss_mask[i] = 1` makes token `i` a target predicted from the tokens before it, so
//! `loss_mask[0]` never counts. Bad lines are errors that name the file and line;
//! examples that cannot train (too long under `Overlong::Skip`, no target left, no
//! assistant turn) are skipped and counted in [`DataStats`].

use std::path::{Path, PathBuf};

use artist_tokenizer::{ChatTemplate, Message, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// 1 where the token is a target (`mask[0]` is ignored).
    pub mask: Vec<u8>,
    /// The 1-based line of the file it came from.
    pub line: usize,
}

impl Example {
    /// The number of target tokens (positions 1.. with mask 1).
    pub fn targets(&self) -> usize {
        self.mask.iter().skip(1).filter(|&&m| m == 1).count()
    }
}

/// What to do with a sequence longer than the maximum length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Keep the first `max_len` tokens.
    #[default]
    Truncate,
    /// Leave the example out.
    Skip,
}

impl std::str::FromStr for Overlong {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "truncate" => Ok(Overlong::Truncate),
            "skip" => Ok(Overlong::Skip),
            o => Err(format!("unknown overlong policy {o:?} (expected truncate or skip)")),
        }
    }
}

/// Counts of what loading did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataStats {
    pub lines: usize,
    pub examples: usize,
    pub blank_lines: usize,
    pub truncated: usize,
    pub skipped_too_long: usize,
    pub skipped_no_targets: usize,
    pub skipped_no_assistant: usize,
    pub target_tokens: usize,
}

impl std::fmt::Display for DataStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} examples from {} lines ({} target tokens; {} blank, {} truncated; skipped: {} too long, {} without targets, {} without an assistant turn)",
            self.examples,
            self.lines,
            self.target_tokens,
            self.blank_lines,
            self.truncated,
            self.skipped_too_long,
            self.skipped_no_targets,
            self.skipped_no_assistant
        )
    }
}

/// How chat lines become tokens.
pub struct ChatFormat<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: &'a ChatTemplate,
}

/// Other keys (an `id`, a `source` column of a Hugging Face export) are ignored.
#[derive(Deserialize)]
struct Line {
    messages: Option<Vec<Message>>,
    input_ids: Option<Vec<u32>>,
    loss_mask: Option<Vec<u8>>,
}

/// Loads a JSONL file. `vocab_size` bounds token ids; `chat` is needed only when the file
/// has chat lines.
pub fn load_jsonl(
    path: &Path,
    chat: Option<&ChatFormat>,
    vocab_size: usize,
    max_len: usize,
    overlong: Overlong,
) -> Result<(Vec<Example>, DataStats)> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
    parse_jsonl(&text, path, chat, vocab_size, max_len, overlong)
}

/// [`load_jsonl`] over text already read; `path` names the source in errors.
pub fn parse_jsonl(
    text: &str,
    path: &Path,
    chat: Option<&ChatFormat>,
    vocab_size: usize,
    max_len: usize,
    overlong: Overlong,
) -> Result<(Vec<Example>, DataStats)> {
    if max_len < 2 {
        return Err(Error::Config(format!("max_seq_len {max_len} leaves no room for a target (at least 2)")));
    }
    let mut stats = DataStats::default();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        stats.lines += 1;
        if raw.trim().is_empty() {
            stats.blank_lines += 1;
            continue;
        }
        let bad = |msg: String| Error::Data { path: PathBuf::from(path), line: n, msg };
        let line: Line = serde_json::from_str(raw).map_err(|e| bad(format!("not a valid example: {e}")))?;
        let (mut ids, mut mask) = match (line.messages, line.input_ids, line.loss_mask) {
            (Some(messages), None, None) => {
                let Some(chat) = chat else {
                    return Err(bad("a chat line needs the model's tokenizer (tokenizer.json) to tokenize it".into()));
                };
                match tokenize_chat(&messages, chat).map_err(&bad)? {
                    Some(x) => x,
                    None => {
                        stats.skipped_no_assistant += 1;
                        continue;
                    }
                }
            }
            (None, Some(ids), mask) => {
                let mask = match mask {
                    Some(m) if m.len() != ids.len() => {
                        return Err(bad(format!("loss_mask has {} entries for {} input_ids", m.len(), ids.len())));
                    }
                    Some(m) => {
                        if let Some(v) = m.iter().find(|&&v| v > 1) {
                            return Err(bad(format!("loss_mask entries must be 0 or 1, found {v}")));
                        }
                        m
                    }
                    // No mask: every token after the first is a target.
                    None => (0..ids.len()).map(|i| (i > 0) as u8).collect(),
                };
                (ids, mask)
            }
            (Some(_), Some(_), _) => return Err(bad("give either messages or input_ids, not both".into())),
            (None, None, Some(_)) => return Err(bad("loss_mask without input_ids".into())),
            (Some(_), None, Some(_)) => return Err(bad("loss_mask goes with input_ids, not messages".into())),
            (None, None, None) => {
                return Err(bad(
                    "expected {\"messages\": [...]} or {\"input_ids\": [...], \"loss_mask\": [...]}".into()
                ));
            }
        };
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(bad(format!("token id {id} is outside the model's vocabulary of {vocab_size}")));
        }
        if ids.len() > max_len {
            match overlong {
                Overlong::Skip => {
                    stats.skipped_too_long += 1;
                    continue;
                }
                Overlong::Truncate => {
                    ids.truncate(max_len);
                    mask.truncate(max_len);
                    stats.truncated += 1;
                }
            }
        }
        let ex = Example { ids, mask, line: n };
        if ex.targets() == 0 {
            stats.skipped_no_targets += 1;
            continue;
        }
        stats.target_tokens += ex.targets();
        out.push(ex);
    }
    stats.examples = out.len();
    if out.is_empty() {
        return Err(Error::Config(format!("{}: no usable example: {stats}", path.display())));
    }
    Ok((out, stats))
}

/// Token ids and their loss mask.
type Tokens = (Vec<u32>, Vec<u8>);

/// Token ids and the assistant mask of a conversation, `None` when it has no assistant
/// turn. Each assistant turn is what the template adds between the conversation before it
/// (with the generation prompt) and the conversation through it: the content and the
/// end-of-turn tokens, the part the model must learn to produce.
fn tokenize_chat(messages: &[Message], chat: &ChatFormat) -> std::result::Result<Option<Tokens>, String> {
    if !messages.iter().any(|m| m.role == "assistant") {
        return Ok(None);
    }
    let render = |upto: usize, gen_prompt: bool| {
        chat.template.render(&messages[..upto], None, gen_prompt).map_err(|e| format!("chat template: {e}"))
    };
    let mut pieces: Vec<(String, u8)> = Vec::new();
    let mut done = String::new();
    let mut take = |text: String, mask: u8, pieces: &mut Vec<(String, u8)>| -> std::result::Result<(), String> {
        let Some(rest) = text.strip_prefix(done.as_str()) else {
            return Err("the chat template does not render a conversation's beginning as a prefix of the whole, \
                        so its assistant tokens cannot be located"
                .into());
        };
        if !rest.is_empty() {
            pieces.push((rest.to_string(), mask));
        }
        done = text;
        Ok(())
    };
    for (k, m) in messages.iter().enumerate() {
        if m.role == "assistant" {
            take(render(k, true)?, 0, &mut pieces)?;
            take(render(k + 1, false)?, 1, &mut pieces)?;
        } else {
            take(render(k + 1, false)?, 0, &mut pieces)?;
        }
    }
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for (text, m) in pieces {
        let t = chat.tokenizer.encode(&text).map_err(|e| format!("tokenizing: {e}"))?;
        mask.extend(std::iter::repeat_n(m, t.len()));
        ids.extend(t);
    }
    Ok(Some((ids, mask)))
}

/// The order examples are visited in: epoch after epoch, each a permutation drawn from
/// `(seed, epoch)` (or file order), cut into batches of `batch_size` (the last batch of an
/// epoch may be smaller; batches never straddle epochs). A pure function of the step, so
/// a resumed run needs only the step to continue where it stopped.
#[derive(Debug, Clone)]
pub struct DataOrder {
    pub n: usize,
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
}

impl DataOrder {
    fn batch(&self) -> usize {
        self.batch_size.clamp(1, self.n.max(1))
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch())
    }

    /// `(epoch, example indices)` of step `step` (0-based).
    pub fn step(&self, step: u64) -> (u64, Vec<usize>) {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let per = self.batches_per_epoch() as u64;
        let (epoch, k) = (step / per, (step % per) as usize);
        let mut order: Vec<usize> = (0..self.n).collect();
        if self.shuffle {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            order.shuffle(&mut rng);
        }
        let b = self.batch();
        (epoch, order[k * b..((k + 1) * b).min(self.n)].to_vec())
    }
}

/// A 64-bit FNV-1a fingerprint of the examples, so a resumed run can tell that its
/// dataset changed under it.
pub fn fingerprint(examples: &[Example]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for e in examples {
        for &id in &e.ids {
            id.to_le_bytes().into_iter().for_each(&mut eat);
        }
        e.mask.iter().copied().for_each(&mut eat);
        0xffu8.to_le_bytes().into_iter().for_each(&mut eat);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, max_len: usize, overlong: Overlong) -> Result<(Vec<Example>, DataStats)> {
        parse_jsonl(text, Path::new("d.jsonl"), None, 100, max_len, overlong)
    }

    #[test]
    fn token_lines_masks_and_counts() {
        let text = "{\"input_ids\":[1,2,3],\"loss_mask\":[1,0,1]}\n\n{\"input_ids\":[4,5,6,7,8]}\n{\"input_ids\":[9,9],\"loss_mask\":[1,0]}\n";
        let (ex, st) = parse(text, 4, Overlong::Truncate).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!((ex[0].targets(), ex[0].line), (1, 1)); // mask[0] never counts
        assert_eq!((ex[1].ids.clone(), ex[1].mask.clone()), (vec![4, 5, 6, 7], vec![0, 1, 1, 1]));
        assert_eq!((st.blank_lines, st.truncated, st.skipped_no_targets, st.target_tokens), (1, 1, 1, 4));
        let (ex, st) = parse(text, 4, Overlong::Skip).unwrap();
        assert_eq!((ex.len(), st.skipped_too_long), (1, 1));
    }

    #[test]
    fn bad_lines_name_their_line() {
        for (text, want) in [
            ("{\"input_ids\":[1,2]}\n{\"input_ids\":[1,2\n", "d.jsonl:2"),
            ("{\"input_ids\":[1,2],\"loss_mask\":[1]}", "1 entries for 2"),
            ("{\"input_ids\":[1,200]}", "outside the model's vocabulary"),
            ("{\"input_ids\":[1,2],\"loss_mask\":[0,2]}", "0 or 1"),
            (
                "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]}",
                "tokenizer",
            ),
            ("{\"text\":\"hello\"}", "expected {\"messages\""),
            ("{}", "expected"),
            ("[1,2]", "d.jsonl:1"),
        ] {
            let e = parse(text, 10, Overlong::Truncate).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(
            parse("{\"input_ids\":[1,2],\"loss_mask\":[1,0]}", 10, Overlong::Truncate)
                .unwrap_err()
                .to_string()
                .contains("no usable")
        );
    }

    #[test]
    fn data_order_covers_each_epoch_once() {
        let o = DataOrder { n: 5, batch_size: 2, shuffle: true, seed: 3 };
        assert_eq!(o.batches_per_epoch(), 3);
        for epoch in 0..3u64 {
            let mut seen: Vec<usize> = (0..3).flat_map(|k| o.step(epoch * 3 + k).1).collect();
            assert_eq!(o.step(epoch * 3).0, epoch);
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        }
        assert_ne!(o.step(0).1, o.step(3).1, "epochs are shuffled differently");
        let whole = DataOrder { n: 4, batch_size: 10, shuffle: false, seed: 0 };
        assert_eq!(whole.step(7), (7, vec![0, 1, 2, 3]));
    }
}
