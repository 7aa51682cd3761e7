//! What the rollout engine decodes with: a model and its KV cache, behind a trait so the
//! engine's bookkeeping can be tested against a scripted stand-in as well as Qwen2.

use std::collections::HashMap;

use artist_model::{KvCache, Qwen2, Rows, SeqInput};

use crate::{Error, Result};

pub trait Policy {
    type Cache;

    fn vocab_size(&self) -> usize;

    /// A cache of `slots` sequences of up to `max_len` tokens each.
    fn new_cache(&self, slots: usize, max_len: usize) -> Result<Self::Cache>;

    /// Appends each input's tokens to its slot and returns the logits after each input's
    /// last token, in input order.
    fn step(&self, inputs: &[SeqInput], cache: &mut Self::Cache) -> Result<Vec<Vec<f32>>>;

    /// Makes slot `to` hold what slot `from` holds (a shared prompt, prefilled once).
    fn fork(&self, cache: &mut Self::Cache, from: usize, to: usize) -> Result<()>;

    /// Empties `slot` for the next sequence.
    fn clear(&self, cache: &mut Self::Cache, slot: usize);
}

impl Policy for Qwen2 {
    type Cache = KvCache;

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn new_cache(&self, slots: usize, max_len: usize) -> Result<KvCache> {
        Ok(Qwen2::new_cache(self, slots, max_len)?)
    }

    fn step(&self, inputs: &[SeqInput], cache: &mut KvCache) -> Result<Vec<Vec<f32>>> {
        let logits = self.forward(inputs, cache, Rows::Last)?.to_vec::<f32>()?;
        let v = self.config.vocab_size;
        Ok(logits.chunks(v).map(<[f32]>::to_vec).collect())
    }

    fn fork(&self, cache: &mut KvCache, from: usize, to: usize) -> Result<()> {
        Ok(cache.fork(from, to)?)
    }

    fn clear(&self, cache: &mut KvCache, slot: usize) {
        cache.clear(slot);
    }
}

/// A stand-in model for tests: every forward call on a slot emits the next token of a
/// fixed script (chosen by the first token of the slot's prompt), with logprob 0; past the
/// end of its script it emits `eos`. Forced tokens fed back count as a call, so a script
/// reads as the model's side of the conversation.
pub struct ScriptedPolicy {
    pub vocab_size: usize,
    pub eos: u32,
    /// Script per first prompt token.
    pub scripts: HashMap<u32, Vec<u32>>,
}

/// Per slot: the script key, how many calls the slot has had, and its length in tokens.
#[derive(Debug, Clone, Default)]
pub struct ScriptedCache {
    slots: Vec<Option<(u32, usize, usize)>>,
    max_len: usize,
}

impl Policy for ScriptedPolicy {
    type Cache = ScriptedCache;

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn new_cache(&self, slots: usize, max_len: usize) -> Result<ScriptedCache> {
        Ok(ScriptedCache { slots: vec![None; slots], max_len })
    }

    fn step(&self, inputs: &[SeqInput], cache: &mut ScriptedCache) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(inputs.len());
        for s in inputs {
            let max_len = cache.max_len;
            let slot = cache.slots.get_mut(s.slot).ok_or_else(|| Error::Input(format!("no slot {}", s.slot)))?;
            let (key, calls, len) = slot.get_or_insert((s.tokens[0], 0, 0));
            *len += s.tokens.len();
            if *len > max_len {
                return Err(Error::Input(format!("slot {} holds {len} tokens, more than {max_len}", s.slot)));
            }
            let next = self.scripts.get(key).and_then(|sc| sc.get(*calls)).copied().unwrap_or(self.eos);
            *calls += 1;
            let mut logits = vec![-1e9f32; self.vocab_size];
            logits[next as usize] = 0.0;
            out.push(logits);
        }
        Ok(out)
    }

    fn fork(&self, cache: &mut ScriptedCache, from: usize, to: usize) -> Result<()> {
        let s = cache.slots.get(from).cloned().ok_or_else(|| Error::Input(format!("no slot {from}")))?;
        *cache.slots.get_mut(to).ok_or_else(|| Error::Input(format!("no slot {to}")))? = s;
        Ok(())
    }

    fn clear(&self, cache: &mut ScriptedCache, slot: usize) {
        if let Some(s) = cache.slots.get_mut(slot) {
            *s = None;
        }
    }
}
