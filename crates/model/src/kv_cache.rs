//! A KV cache owned by the caller: per layer, keys and values for a fixed number of
//! sequence slots, preallocated to a maximum length and written in place.

use artist_tensor::{DType, Device, Tensor};

use crate::{Error, Qwen2Config, Result};

pub struct KvCache {
    /// Per layer: `[slots, max_len, kv_heads, head_dim]` f32.
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    lens: Vec<usize>,
    max_len: usize,
}

impl KvCache {
    /// Room for `slots` sequences of up to `max_len` tokens each, on the CPU.
    pub fn new(config: &Qwen2Config, slots: usize, max_len: usize) -> Result<KvCache> {
        KvCache::new_on(config, slots, max_len, Device::Cpu)
    }

    /// Room for `slots` sequences of up to `max_len` tokens each, on `device`.
    pub fn new_on(config: &Qwen2Config, slots: usize, max_len: usize, device: Device) -> Result<KvCache> {
        let shape = (slots, max_len, config.num_key_value_heads, config.head_dim);
        let alloc = || Tensor::zeros(shape, DType::F32, device);
        let layers = config.num_hidden_layers;
        Ok(KvCache {
            k: (0..layers).map(|_| alloc()).collect::<std::result::Result<_, _>>()?,
            v: (0..layers).map(|_| alloc()).collect::<std::result::Result<_, _>>()?,
            lens: vec![0; slots],
            max_len,
        })
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokens cached for `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.lens.get(slot).copied().unwrap_or(0)
    }

    pub fn is_empty(&self, slot: usize) -> bool {
        self.len(slot) == 0
    }

    /// Forgets the tokens of `slot` (its memory is reused by the next sequence).
    pub fn clear(&mut self, slot: usize) {
        if let Some(l) = self.lens.get_mut(slot) {
            *l = 0;
        }
    }

    /// Keeps the first `len` tokens of `slot`.
    pub fn truncate(&mut self, slot: usize, len: usize) {
        if let Some(l) = self.lens.get_mut(slot) {
            *l = (*l).min(len);
        }
    }

    /// Copies the cached tokens of `from` into `to`: a shared prompt is prefilled once and
    /// forked into the slots of its rollouts.
    pub fn fork(&mut self, from: usize, to: usize) -> Result<()> {
        self.check_slot(from)?;
        self.check_slot(to)?;
        let n = self.lens[from];
        if from != to && n > 0 {
            for t in self.k.iter().chain(&self.v) {
                t.get(to)?.narrow(0, 0, n)?.copy_from(&t.get(from)?.narrow(0, 0, n)?)?;
            }
        }
        self.lens[to] = n;
        Ok(())
    }

    pub(crate) fn check_slot(&self, slot: usize) -> Result<()> {
        if slot >= self.slots() {
            return Err(Error::Input(format!("KV cache slot {slot} does not exist ({} slots)", self.slots())));
        }
        Ok(())
    }

    /// Marks `n` more tokens as cached in `slot` (after the model wrote them).
    pub(crate) fn advance(&mut self, slot: usize, n: usize) {
        self.lens[slot] += n;
    }
}
