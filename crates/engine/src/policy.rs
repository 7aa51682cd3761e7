//! What the rollout engine decodes with: a model and its KV cache, behind a trait so the
//! engine's bookkeeping can be tested against a scripted stand-in as well as Qwen2.

use std::collections::HashMap;

use artist_model::{KvCache, KvUsage, Qwen2, Rows, SeqInput};
use artist_tensor::DType;

use crate::{Error, Logits, Result};

pub trait Policy {
    type Cache;

    fn vocab_size(&self) -> usize;

    /// A cache of `slots` sequences of up to `max_len` tokens each.
    fn new_cache(&self, slots: usize, max_len: usize) -> Result<Self::Cache>;

    /// [`Policy::new_cache`] storing keys and values as `dtype` (f32 or bf16; see
    /// `KvCache::paged_in`); a policy with one kind of cache ignores it.
    fn new_cache_in(&self, slots: usize, max_len: usize, _dtype: DType) -> Result<Self::Cache> {
        self.new_cache(slots, max_len)
    }

    /// Appends each input's tokens to its slot and returns the logits after each input's
    /// last token, in input order.
    fn step(&self, inputs: &[SeqInput], cache: &mut Self::Cache) -> Result<Logits>;

    /// Makes slot `to` hold what slot `from` holds (a shared prompt, prefilled once).
    fn fork(&self, cache: &mut Self::Cache, from: usize, to: usize) -> Result<()>;

    /// Empties `slot` for the next sequence.
    fn clear(&self, cache: &mut Self::Cache, slot: usize);

    /// What the cache holds and has held, where it keeps count (a paged KV cache does).
    fn cache_usage(&self, _cache: &Self::Cache) -> Option<KvUsage> {
        None
    }

    /// Keeps the first `len` tokens of `slot`; false when this policy cannot (the engine
    /// then prefills from scratch).
    fn truncate(&self, _cache: &mut Self::Cache, _slot: usize, _len: usize) -> Result<bool> {
        Ok(false)
    }

    /// Asks steps through `cache` to run their linear layers in `dtype` (see
    /// [`KvCache::set_matmul_dtype`]); a policy without the choice ignores it.
    fn set_matmul_dtype(&self, _cache: &mut Self::Cache, _dtype: Option<DType>) {}
}

impl Policy for Qwen2 {
    type Cache = KvCache;

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn new_cache(&self, slots: usize, max_len: usize) -> Result<KvCache> {
        Policy::new_cache_in(self, slots, max_len, DType::F32)
    }

    fn new_cache_in(&self, slots: usize, max_len: usize, dtype: DType) -> Result<KvCache> {
        let mut cache = Qwen2::new_cache_in(self, slots, max_len, dtype)?;
        // Decode steps on a GPU replay captured CUDA graphs (one launch for the decoder);
        // `ARTIST_CUDA_GRAPHS=0` keeps them eager.
        cache.set_cuda_graphs(std::env::var("ARTIST_CUDA_GRAPHS").as_deref() != Ok("0"));
        Ok(cache)
    }

    fn step(&self, inputs: &[SeqInput], cache: &mut KvCache) -> Result<Logits> {
        // Left where the model ran: on a GPU the sampler draws there.
        Ok(Logits::Tensor(self.forward(inputs, cache, Rows::Last)?))
    }

    fn fork(&self, cache: &mut KvCache, from: usize, to: usize) -> Result<()> {
        Ok(cache.fork(from, to)?)
    }

    fn clear(&self, cache: &mut KvCache, slot: usize) {
        cache.clear(slot);
    }

    fn cache_usage(&self, cache: &KvCache) -> Option<KvUsage> {
        Some(cache.usage())
    }

    fn truncate(&self, cache: &mut KvCache, slot: usize, len: usize) -> Result<bool> {
        cache.truncate(slot, len);
        Ok(cache.len(slot) == len)
    }

    fn set_matmul_dtype(&self, cache: &mut KvCache, dtype: Option<DType>) {
        cache.set_matmul_dtype(dtype);
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

    fn step(&self, inputs: &[SeqInput], cache: &mut ScriptedCache) -> Result<Logits> {
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
        Ok(Logits::Host(out))
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

/// A policy steered along a script: each slot's first steps get `bonus` added to the
/// logit of the script's next token, the inner model's numbers otherwise. Benchmarks use
/// it to make a random-weight model call a tool; tests use it (with `record`) to compare
/// the model's own logits at every step with a full forward.
pub struct SteeredPolicy<'m, P: Policy> {
    pub inner: &'m P,
    pub script: Vec<u32>,
    pub bonus: f32,
    /// Keep a copy of the inner model's logits of every row, in step order.
    pub record: bool,
    calls: std::sync::Mutex<HashMap<usize, usize>>,
    seen: std::sync::Mutex<Vec<Vec<f32>>>,
}

impl<'m, P: Policy> SteeredPolicy<'m, P> {
    pub fn new(inner: &'m P, script: Vec<u32>, bonus: f32, record: bool) -> Self {
        SteeredPolicy { inner, script, bonus, record, calls: Default::default(), seen: Default::default() }
    }

    /// The inner model's logits of every row so far (with `record`).
    pub fn seen(&self) -> Vec<Vec<f32>> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

impl<P: Policy> Policy for SteeredPolicy<'_, P> {
    type Cache = P::Cache;

    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn new_cache(&self, slots: usize, max_len: usize) -> Result<P::Cache> {
        self.inner.new_cache(slots, max_len)
    }

    fn new_cache_in(&self, slots: usize, max_len: usize, dtype: DType) -> Result<P::Cache> {
        self.inner.new_cache_in(slots, max_len, dtype)
    }

    fn set_matmul_dtype(&self, cache: &mut P::Cache, dtype: Option<DType>) {
        self.inner.set_matmul_dtype(cache, dtype);
    }

    fn step(&self, inputs: &[SeqInput], cache: &mut P::Cache) -> Result<Logits> {
        let mut rows = self.inner.step(inputs, cache)?.into_rows()?;
        let mut calls = self.calls.lock().expect("not poisoned");
        for (s, row) in inputs.iter().zip(&mut rows) {
            if self.record {
                self.seen.lock().expect("not poisoned").push(row.clone());
            }
            let n = calls.entry(s.slot).or_insert(0);
            if let Some(&t) = self.script.get(*n) {
                row[t as usize] += self.bonus;
            }
            *n += 1;
        }
        Ok(Logits::Host(rows))
    }

    fn fork(&self, cache: &mut P::Cache, from: usize, to: usize) -> Result<()> {
        let mut calls = self.calls.lock().expect("not poisoned");
        let n = calls.get(&from).copied().unwrap_or(0);
        calls.insert(to, n);
        self.inner.fork(cache, from, to)
    }

    fn clear(&self, cache: &mut P::Cache, slot: usize) {
        self.calls.lock().expect("not poisoned").remove(&slot);
        self.inner.clear(cache, slot);
    }

    fn cache_usage(&self, cache: &P::Cache) -> Option<KvUsage> {
        self.inner.cache_usage(cache)
    }

    fn truncate(&self, cache: &mut P::Cache, slot: usize, len: usize) -> Result<bool> {
        self.inner.truncate(cache, slot, len)
    }
}
