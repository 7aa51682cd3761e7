//! A paged KV cache owned by the caller.
//!
//! Keys and values live in fixed-size blocks of `block_size` positions, one pool per layer
//! (`[blocks, block_size, kv_heads, head_dim]`, f32 or bf16), and each sequence slot has a block
//! table: position `p` of a slot sits at row `p % block_size` of block `table[p /
//! block_size]`. Blocks are reference-counted, so [`KvCache::fork`] shares a prompt's
//! blocks with the G rollouts of its group without copying anything; the first write into
//! a shared, partly filled block copies that one block first (copy-on-write), so no
//! sequence ever sees another's tokens. [`KvCache::clear`] hands a finished sequence's
//! blocks back at once, and the next sequence reuses them.
//!
//! The pools grow on demand (doubling, up to what `slots` full-length sequences would
//! need), so memory follows the tokens actually cached rather than `slots x max_len`.
//! Attention reads a slot's keys and values as one `[len, kv_heads, head_dim]` tensor: a
//! view when its blocks are consecutive (no copy), otherwise one gather of its blocks. The
//! values read are the values written, so the layout never changes a logit.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use artist_tensor::{DType, Device, PagedBatch, Tensor};

use crate::{Error, Qwen2Config, Result};

/// Positions per block unless asked otherwise (vLLM's default).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// How a cache's decode steps (one new token for every sequence of the step) run on a GPU.
/// On the CPU they always run as [`DecodeSteps::Eager`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DecodeSteps {
    /// Each step's kernels are launched for its own number of sequences.
    #[default]
    Eager,
    /// Each step is padded to a capture size ([`graph_batch_size`]) with rows that write
    /// and read only a spare block of the cache, and launched eagerly: the shapes and bits
    /// of [`DecodeSteps::Graphed`], without graphs.
    Padded,
    /// Padded as [`DecodeSteps::Padded`], and captured as one CUDA graph per capture size
    /// (the first step of a size runs eagerly, the second is captured, later ones replay
    /// it), so that a step is one launch whatever the model's depth.
    Graphed,
}

/// The largest number of sequences a decode step is captured for; larger steps run eagerly
/// (their kernels keep the GPU busy enough that launching them costs little).
pub const MAX_GRAPH_BATCH: usize = 256;

/// The number of rows a decode step of `n` sequences is padded to, as vLLM pads: 1, 2, 4,
/// then multiples of 8 up to [`MAX_GRAPH_BATCH`] (35 sizes in all), so that a rollout whose
/// sequences finish one by one replays a few graphs instead of capturing one per count.
/// `None` for 0 and above [`MAX_GRAPH_BATCH`].
pub fn graph_batch_size(n: usize) -> Option<usize> {
    match n {
        0 => None,
        1..=4 => Some(n.next_power_of_two()),
        _ if n <= MAX_GRAPH_BATCH => Some(n.div_ceil(8) * 8),
        _ => None,
    }
}

/// What a cache holds and has held, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    pub block_size: usize,
    /// Blocks referenced by at least one slot now.
    pub blocks_in_use: usize,
    /// The most blocks in use at once.
    pub peak_blocks: usize,
    /// Blocks the pools have room for (grown on demand).
    pub capacity_blocks: usize,
    /// Bytes of one block across all layers, keys and values.
    pub bytes_per_block: usize,
    /// Block references saved by sharing: sum over slots of their table lengths, minus the
    /// blocks in use.
    pub shared_refs: usize,
    /// Shared blocks copied because a sequence wrote into them.
    pub cow_copies: usize,
}

impl KvUsage {
    pub fn bytes_in_use(&self) -> usize {
        self.blocks_in_use * self.bytes_per_block
    }
    pub fn peak_bytes(&self) -> usize {
        self.peak_blocks * self.bytes_per_block
    }
    pub fn capacity_bytes(&self) -> usize {
        self.capacity_blocks * self.bytes_per_block
    }
}

pub struct KvCache {
    /// Per layer: `[capacity, block_size, kv_heads, head_dim]` of `dtype`.
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    block_size: usize,
    kv_heads: usize,
    head_dim: usize,
    device: Device,
    /// Blocks that `slots` sequences of `max_len` tokens need: the pools never grow past it.
    max_blocks: usize,
    /// References per block (0 = free).
    refs: Vec<u32>,
    /// Free blocks, lowest first (so a lone sequence gets consecutive blocks).
    free: BinaryHeap<Reverse<u32>>,
    /// Blocks with a reference.
    in_use: usize,
    tables: Vec<Vec<u32>>,
    lens: Vec<usize>,
    max_len: usize,
    peak_blocks: usize,
    cow_copies: usize,
    /// A block in no table, allocated on first use: the padding rows of decode steps write
    /// their keys and values there and attend to them, touching no sequence.
    pad: Option<u32>,
    /// Decode steps captured as CUDA graphs (on a GPU).
    pub(crate) graphs: crate::qwen2::DecodeGraphs,
    /// The dtype forward passes through this cache multiply in (see
    /// [`KvCache::set_matmul_dtype`]).
    matmul_dtype: Option<DType>,
    /// What the pools hold: f32, or bf16 (see [`KvCache::paged_in`]).
    dtype: DType,
}

fn blocks_for(len: usize, block_size: usize) -> usize {
    len.div_ceil(block_size)
}

impl KvCache {
    /// Room for `slots` sequences of up to `max_len` tokens each, on the CPU.
    pub fn new(config: &Qwen2Config, slots: usize, max_len: usize) -> Result<KvCache> {
        KvCache::new_on(config, slots, max_len, Device::Cpu)
    }

    /// Room for `slots` sequences of up to `max_len` tokens each, on `device`, in blocks of
    /// [`DEFAULT_BLOCK_SIZE`].
    pub fn new_on(config: &Qwen2Config, slots: usize, max_len: usize, device: Device) -> Result<KvCache> {
        KvCache::paged(config, slots, max_len, DEFAULT_BLOCK_SIZE, device)
    }

    /// As [`KvCache::new_on`], in blocks of `block_size` positions.
    pub fn paged(
        config: &Qwen2Config,
        slots: usize,
        max_len: usize,
        block_size: usize,
        device: Device,
    ) -> Result<KvCache> {
        KvCache::paged_in(config, slots, max_len, block_size, device, DType::F32)
    }

    /// As [`KvCache::paged`], keys and values stored as `dtype`: f32 (exact), or bf16 (half
    /// the memory and the bytes each decode step reads, as vLLM keeps a bf16 model's
    /// cache): keys after RoPE and values are rounded to bf16 once, as they are stored, and
    /// widened exactly as attention reads them; activations stay f32.
    pub fn paged_in(
        config: &Qwen2Config,
        slots: usize,
        max_len: usize,
        block_size: usize,
        device: Device,
        dtype: DType,
    ) -> Result<KvCache> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(Error::Input(format!("a KV cache holds f32 or bf16, not {dtype}")));
        }
        if block_size == 0 {
            return Err(Error::Input("the KV cache's block size must be at least 1".into()));
        }
        if slots == 0 || max_len == 0 {
            return Err(Error::Input(format!(
                "a KV cache needs at least one slot and one position (got {slots} x {max_len})"
            )));
        }
        // One block more than the slots can fill: the padding rows' block.
        let max_blocks = slots
            .checked_mul(blocks_for(max_len, block_size))
            .and_then(|b| b.checked_add(1))
            .filter(|&b| b <= u32::MAX as usize)
            .ok_or_else(|| Error::Input(format!("a KV cache of {slots} slots x {max_len} positions is too large")))?;
        // Room for every slot's first 256 positions at the start; more as needed.
        let initial = max_blocks.min(slots.saturating_mul(blocks_for(max_len.min(256), block_size)));
        let mut cache = KvCache {
            k: vec![],
            v: vec![],
            block_size,
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            device,
            max_blocks,
            refs: vec![],
            free: BinaryHeap::new(),
            in_use: 0,
            tables: vec![vec![]; slots],
            lens: vec![0; slots],
            max_len,
            peak_blocks: 0,
            cow_copies: 0,
            pad: None,
            graphs: Default::default(),
            matmul_dtype: None,
            dtype,
        };
        let alloc = || cache.pool(initial);
        let k = (0..config.num_hidden_layers).map(|_| alloc()).collect::<Result<Vec<_>>>()?;
        let v = (0..config.num_hidden_layers).map(|_| alloc()).collect::<Result<Vec<_>>>()?;
        (cache.k, cache.v) = (k, v);
        cache.refs = vec![0; initial];
        cache.free = (0..initial as u32).map(Reverse).collect();
        Ok(cache)
    }

    fn pool(&self, blocks: usize) -> Result<Tensor> {
        Ok(Tensor::zeros((blocks, self.block_size, self.kv_heads, self.head_dim), self.dtype, self.device)?)
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Tokens cached for `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.lens.get(slot).copied().unwrap_or(0)
    }

    pub fn is_empty(&self, slot: usize) -> bool {
        self.len(slot) == 0
    }

    /// The blocks holding `slot`'s positions, in order.
    pub fn block_table(&self, slot: usize) -> &[u32] {
        self.tables.get(slot).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn usage(&self) -> KvUsage {
        let in_use = self.in_use;
        let refs: usize = self.tables.iter().map(Vec::len).sum();
        let per_layer = self.block_size * self.kv_heads * self.head_dim * self.dtype.size_in_bytes();
        KvUsage {
            block_size: self.block_size,
            blocks_in_use: in_use,
            peak_blocks: self.peak_blocks,
            capacity_blocks: self.refs.len(),
            bytes_per_block: per_layer * 2 * self.k.len(),
            shared_refs: refs - in_use,
            cow_copies: self.cow_copies,
        }
    }

    /// Forgets the tokens of `slot` and hands its blocks back.
    pub fn clear(&mut self, slot: usize) {
        self.truncate(slot, 0);
    }

    /// Keeps the first `len` tokens of `slot`, handing back the blocks past them.
    pub fn truncate(&mut self, slot: usize, len: usize) {
        let Some(l) = self.lens.get_mut(slot) else { return };
        *l = (*l).min(len);
        let keep = blocks_for(*l, self.block_size);
        let dropped: Vec<u32> = self.tables[slot].drain(keep..).collect();
        for b in dropped {
            self.release(b);
        }
    }

    /// Makes `to` hold what `from` holds by sharing its blocks (nothing is copied until one
    /// of them writes into a shared block): a prompt is prefilled once and forked into the
    /// slots of its rollouts.
    pub fn fork(&mut self, from: usize, to: usize) -> Result<()> {
        self.check_slot(from)?;
        self.check_slot(to)?;
        if from == to {
            return Ok(());
        }
        self.clear(to);
        let table = self.tables[from].clone();
        for &b in &table {
            self.refs[b as usize] += 1;
        }
        self.tables[to] = table;
        self.lens[to] = self.lens[from];
        Ok(())
    }

    pub(crate) fn check_slot(&self, slot: usize) -> Result<()> {
        if slot >= self.slots() {
            return Err(Error::Input(format!("KV cache slot {slot} does not exist ({} slots)", self.slots())));
        }
        Ok(())
    }

    fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        *r -= 1;
        if *r == 0 {
            self.free.push(Reverse(b));
            self.in_use -= 1;
        }
    }

    fn allocate(&mut self) -> Result<u32> {
        if self.free.is_empty() {
            self.grow()?;
        }
        let Reverse(b) = self.free.pop().ok_or_else(|| Error::Input("the KV cache is out of blocks".into()))?;
        self.refs[b as usize] = 1;
        self.in_use += 1;
        self.peak_blocks = self.peak_blocks.max(self.in_use);
        Ok(b)
    }

    /// Doubles the pools (up to `max_blocks`), keeping what they hold.
    fn grow(&mut self) -> Result<()> {
        let old = self.refs.len();
        let new = (old * 2).max(1).min(self.max_blocks);
        if new <= old {
            return Err(Error::Input(format!(
                "the KV cache is out of blocks ({old} of {} positions)",
                self.block_size
            )));
        }
        for layer in 0..self.k.len() {
            for pools in [&mut self.k, &mut self.v] {
                let grown =
                    Tensor::zeros((new, self.block_size, self.kv_heads, self.head_dim), self.dtype, self.device)?;
                if old > 0 {
                    grown.narrow(0, 0, old)?.copy_from(&pools[layer])?;
                }
                pools[layer] = grown;
            }
        }
        self.refs.resize(new, 0);
        self.free.extend((old as u32..new as u32).map(Reverse));
        Ok(())
    }

    /// The block padding rows use (see [`DecodeSteps::Padded`]), allocated on the first call
    /// and kept: it is in no table, and is not counted as in use.
    pub(crate) fn pad_block(&mut self) -> Result<u32> {
        if let Some(b) = self.pad {
            return Ok(b);
        }
        let peak = self.peak_blocks;
        let b = self.allocate()?;
        self.in_use -= 1;
        self.peak_blocks = peak;
        self.pad = Some(b);
        Ok(b)
    }

    /// Makes room for `slot` to grow to `new_len` positions: allocates the blocks it lacks and
    /// gives it its own copy of a shared block it is about to write into. Called before the
    /// model writes positions `len(slot)..new_len`.
    pub(crate) fn reserve(&mut self, slot: usize, new_len: usize) -> Result<()> {
        self.check_slot(slot)?;
        if new_len > self.max_len {
            return Err(Error::Input(format!(
                "slot {slot} would hold {new_len} tokens, more than the cache's {}",
                self.max_len
            )));
        }
        let len = self.lens[slot];
        // Only the block holding position `len` can be both written and shared: blocks past it
        // are new.
        let first = len / self.block_size;
        if len < new_len && first < self.tables[slot].len() {
            let b = self.tables[slot][first];
            if self.refs[b as usize] > 1 {
                let copy = self.allocate()?;
                for pool in self.k.iter().chain(&self.v) {
                    pool.get(copy as usize)?.copy_from(&pool.get(b as usize)?)?;
                }
                self.release(b);
                self.tables[slot][first] = copy;
                self.cow_copies += 1;
            }
        }
        while self.tables[slot].len() < blocks_for(new_len, self.block_size) {
            let b = self.allocate()?;
            self.tables[slot].push(b);
        }
        Ok(())
    }

    /// Writes keys and values `[t, kv_heads, head_dim]` of `slot`'s positions `start..start +
    /// t` into layer `layer` (after [`KvCache::reserve`]).
    pub(crate) fn write(&self, layer: usize, slot: usize, start: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let t = k.dims()[0];
        let (k, v) = (k.to_dtype(self.dtype)?, v.to_dtype(self.dtype)?);
        let table = &self.tables[slot];
        let mut done = 0;
        while done < t {
            let p = start + done;
            let (block, row) = (table[p / self.block_size] as usize, p % self.block_size);
            let n = (self.block_size - row).min(t - done);
            self.k[layer].get(block)?.narrow(0, row, n)?.copy_from(&k.narrow(0, done, n)?)?;
            self.v[layer].get(block)?.narrow(0, row, n)?.copy_from(&v.narrow(0, done, n)?)?;
            done += n;
        }
        Ok(())
    }

    /// Keys and values of `slot`'s first `len` positions in layer `layer`: `[len, kv_heads,
    /// head_dim]` f32 each, a view when its blocks are consecutive and a gather otherwise (a
    /// bf16 cache's widened).
    pub(crate) fn read(&self, layer: usize, slot: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let table = &self.tables[slot];
        let (k, v) = (self.k[layer].gather_blocks(table, len)?, self.v[layer].gather_blocks(table, len)?);
        Ok((k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?))
    }

    /// What the pools hold (see [`KvCache::paged_in`]).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `slot`'s block ids (covering its reserved positions).
    pub(crate) fn table(&self, slot: usize) -> &[u32] {
        &self.tables[slot]
    }

    /// From the fused projection `qkv: [rows, (heads + 2 kv_heads) * head_dim]` (before
    /// its `bias`) of every sequence of `batch` (after [`KvCache::reserve`]): Qwen3's q/k
    /// norms (`norm`) and RoPE on queries and keys, the keys
    /// and values written into layer `layer` (one launch on a GPU); returns the queries
    /// `[rows, heads, head_dim]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_qkv_batch(
        &self,
        layer: usize,
        batch: &PagedBatch,
        qkv: &Tensor,
        bias: Option<&Tensor>,
        norm: Option<artist_tensor::QkNorm>,
        heads: usize,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        Ok(qkv.qkv_rope_paged(bias, norm, heads, self.kv_heads, cos, sin, &self.k[layer], &self.v[layer], batch)?)
    }

    /// Attention of every sequence of `batch`, `q: [rows, heads, head_dim]`, over layer
    /// `layer`'s keys and values read in place through the block tables: `[rows, heads,
    /// head_dim]`.
    pub(crate) fn attend_batch(&self, layer: usize, batch: &PagedBatch, q: &Tensor, scale: f32) -> Result<Tensor> {
        Ok(q.paged_attention_batch(&self.k[layer], &self.v[layer], batch, scale)?.0)
    }

    /// Whether decode steps on a GPU run as captured CUDA graphs ([`DecodeSteps::Graphed`])
    /// or eagerly ([`DecodeSteps::Eager`], the default; the rollout engine turns graphs on).
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.set_decode_steps(if on { DecodeSteps::Graphed } else { DecodeSteps::Eager });
    }

    /// How decode steps run on a GPU (ignored on the CPU). Graphed steps give the bits of
    /// padded eager ones; whether padding changes a bit depends on the kernels (cuBLAS may
    /// pick another algorithm for another number of rows). While a graph is captured no
    /// other thread may use the device: its work would join the graph (CUDA's rule for a
    /// capturing stream, and all work on a device goes through one stream).
    pub fn set_decode_steps(&mut self, steps: DecodeSteps) {
        self.graphs.steps = if self.device.is_cuda() { steps } else { DecodeSteps::Eager };
        if self.graphs.steps != DecodeSteps::Graphed {
            self.graphs.captured.clear();
        }
    }

    pub fn decode_steps(&self) -> DecodeSteps {
        self.graphs.steps
    }

    /// Asks forward passes through this cache to run their linear layers and LM head in
    /// `dtype` (`Some(BF16)`: activations rounded to bf16 meet bf16 weights, products summed
    /// in f32 into f32 results, as vLLM serves a bf16 model; `Tensor::linear_in`), `None`
    /// (the default) in f32. On a GPU, steps of more than 8 rows run tensor-core GEMMs
    /// that read half the weight bytes of f32 ones, and smaller (decode) steps the gemv
    /// kernel, which rounds each activation as it loads it; either way a row's values do not
    /// depend on the rows beside it beyond f32 reassociation. A rollout's logprobs then
    /// differ from the trainer's f32 ones by bf16 rounding of the activations.
    pub fn set_matmul_dtype(&mut self, dtype: Option<DType>) {
        self.matmul_dtype = dtype.filter(|&d| d != DType::F32);
    }

    pub fn matmul_dtype(&self) -> Option<DType> {
        self.matmul_dtype
    }

    /// Decode-step graphs captured, and replays of them, so far.
    pub fn graph_counts(&self) -> (u64, u64) {
        (self.graphs.captures, self.graphs.replays)
    }

    /// The device addresses of every layer's key and value pool (a captured graph is valid
    /// for these only).
    pub(crate) fn pool_addresses(&self) -> Result<Vec<u64>> {
        Ok(self.k.iter().chain(&self.v).map(|t| t.cuda_ptr()).collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// Blocks one slot's `max_len` positions take.
    pub(crate) fn max_blocks_per_slot(&self) -> usize {
        blocks_for(self.max_len, self.block_size)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Marks `n` more tokens as cached in `slot` (after the model wrote them).
    pub(crate) fn advance(&mut self, slot: usize, n: usize) {
        self.lens[slot] += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Qwen2Config {
        Qwen2Config { num_hidden_layers: 2, num_key_value_heads: 2, head_dim: 4, ..Qwen2Config::qwen2_5_0_5b() }
    }

    /// Fills `slot` with `n` positions whose keys are `base + position` everywhere.
    fn fill(cache: &mut KvCache, slot: usize, n: usize, base: f32) {
        let start = cache.len(slot);
        cache.reserve(slot, start + n).unwrap();
        let (h, d) = (cache.kv_heads, cache.head_dim);
        let vals: Vec<f32> = (0..n).flat_map(|p| std::iter::repeat_n(base + (start + p) as f32, h * d)).collect();
        let t = Tensor::from_vec(vals, (n, h, d), Device::Cpu).unwrap();
        for l in 0..cache.k.len() {
            cache.write(l, slot, start, &t, &t).unwrap();
        }
        cache.advance(slot, n);
    }

    fn keys(cache: &KvCache, slot: usize) -> Vec<f32> {
        let (k, _) = cache.read(0, slot, cache.len(slot)).unwrap();
        let v = k.contiguous().unwrap().to_vec::<f32>().unwrap();
        v.chunks(cache.kv_heads * cache.head_dim).map(|c| c[0]).collect()
    }

    #[test]
    fn fork_shares_blocks_and_copies_on_write() {
        let mut c = KvCache::paged(&config(), 3, 40, 4, Device::Cpu).unwrap();
        fill(&mut c, 0, 10, 0.0); // blocks 0, 1, 2 (the last holds 2 of 4)
        assert_eq!(c.usage().blocks_in_use, 3);
        c.fork(0, 1).unwrap();
        c.fork(0, 2).unwrap();
        let u = c.usage();
        assert_eq!((u.blocks_in_use, u.shared_refs, u.cow_copies), (3, 6, 0));
        fill(&mut c, 1, 3, 100.0);
        fill(&mut c, 2, 1, 200.0);
        // Each writer got its own copy of the partly filled block; the full ones stay shared.
        assert_eq!(c.usage().cow_copies, 2);
        assert_eq!(&c.block_table(1)[..2], &c.block_table(0)[..2]);
        assert_ne!(c.block_table(1)[2], c.block_table(0)[2]);
        let prompt: Vec<f32> = (0..10).map(|p| p as f32).collect();
        assert_eq!(keys(&c, 0), prompt);
        assert_eq!(keys(&c, 1), [prompt.clone(), vec![110.0, 111.0, 112.0]].concat());
        assert_eq!(keys(&c, 2), [prompt.clone(), vec![210.0]].concat());
        // The source writes after its forks are done: it is now the only owner, so no copy.
        fill(&mut c, 0, 1, 300.0);
        assert_eq!(c.usage().cow_copies, 2);
        assert_eq!(keys(&c, 0), [prompt, vec![310.0]].concat());
    }

    /// A bf16 cache rounds keys and values as they are stored and widens them as they are
    /// read; its blocks hold half the bytes; forks and copy-on-write work as for f32.
    #[test]
    fn a_bf16_cache_rounds_as_it_stores() {
        let mut c = KvCache::paged_in(&config(), 2, 16, 4, Device::Cpu, DType::BF16).unwrap();
        assert_eq!(c.dtype(), DType::BF16);
        let f32_block = KvCache::paged(&config(), 2, 16, 4, Device::Cpu).unwrap().usage().bytes_per_block;
        assert_eq!(c.usage().bytes_per_block * 2, f32_block);
        fill(&mut c, 0, 6, 0.0);
        c.fork(0, 1).unwrap();
        c.reserve(1, 7).unwrap();
        let (h, d) = (c.kv_heads, c.head_dim);
        let x = 1.0 + 1.0 / 1024.0; // between two bf16 values: stored as 1.0
        let t = Tensor::from_vec(vec![x; h * d], (1, h, d), Device::Cpu).unwrap();
        for l in 0..c.k.len() {
            c.write(l, 1, 6, &t, &t).unwrap();
        }
        c.advance(1, 1);
        let (k, _) = c.read(0, 1, 7).unwrap();
        assert_eq!(k.dtype(), DType::F32);
        assert_eq!(keys(&c, 1), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 1.0]);
        assert_eq!(keys(&c, 0), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "the fork's write copied the shared block");
        assert_eq!(c.usage().cow_copies, 1);
        assert!(KvCache::paged_in(&config(), 1, 4, 4, Device::Cpu, DType::U8).is_err());
    }

    #[test]
    fn clear_hands_blocks_back_and_they_are_reused() {
        let mut c = KvCache::paged(&config(), 2, 64, 8, Device::Cpu).unwrap();
        fill(&mut c, 0, 20, 0.0);
        c.fork(0, 1).unwrap();
        fill(&mut c, 1, 10, 50.0);
        let peak = c.usage().blocks_in_use;
        assert_eq!(peak, 3 + 2); // 3 shared + the copied third block + one new
        c.clear(1);
        assert_eq!(c.usage().blocks_in_use, 3);
        c.clear(0);
        assert_eq!(c.usage().blocks_in_use, 0);
        assert_eq!(c.usage().peak_blocks, peak);
        fill(&mut c, 1, 16, 7.0);
        assert_eq!(c.block_table(1), &[0, 1], "the lowest free blocks come first");
        assert_eq!(keys(&c, 1), (0..16).map(|p| 7.0 + p as f32).collect::<Vec<_>>());
    }

    #[test]
    fn truncate_drops_whole_blocks_and_a_shared_tail_is_copied_before_rewrite() {
        let mut c = KvCache::paged(&config(), 2, 64, 4, Device::Cpu).unwrap();
        fill(&mut c, 0, 12, 0.0);
        c.fork(0, 1).unwrap();
        c.truncate(1, 6);
        assert_eq!(c.block_table(1).len(), 2);
        assert_eq!(c.usage().blocks_in_use, 3);
        fill(&mut c, 1, 3, 1000.0); // rewrites positions 6..9 of a block slot 0 still reads
        assert_eq!(keys(&c, 0), (0..12).map(|p| p as f32).collect::<Vec<_>>());
        let expect: Vec<f32> = (0..6).map(|p| p as f32).chain((6..9).map(|p| 1000.0 + p as f32)).collect();
        assert_eq!(keys(&c, 1), expect);
    }

    #[test]
    fn pools_grow_on_demand_and_keep_their_contents() {
        let mut c = KvCache::paged(&config(), 2, 1024, 4, Device::Cpu).unwrap();
        let start = c.usage().capacity_blocks;
        assert_eq!(start, 2 * 64);
        fill(&mut c, 0, 600, 0.0);
        fill(&mut c, 1, 300, 5000.0);
        let u = c.usage();
        assert!(u.capacity_blocks > start && u.capacity_blocks <= 2 * 256, "{u:?}");
        assert_eq!(u.blocks_in_use, 150 + 75);
        assert_eq!(keys(&c, 0), (0..600).map(|p| p as f32).collect::<Vec<_>>());
        assert_eq!(keys(&c, 1), (0..300).map(|p| 5000.0 + p as f32).collect::<Vec<_>>());
    }

    #[test]
    fn decode_steps_pad_to_vllm_capture_sizes() {
        let padded: Vec<Option<usize>> = [0, 1, 2, 3, 4, 5, 8, 9, 17, 255, 256, 257].map(graph_batch_size).to_vec();
        let want = [
            None,
            Some(1),
            Some(2),
            Some(4),
            Some(4),
            Some(8),
            Some(8),
            Some(16),
            Some(24),
            Some(256),
            Some(256),
            None,
        ];
        assert_eq!(padded, want);
        let sizes: std::collections::BTreeSet<usize> = (1..=MAX_GRAPH_BATCH).filter_map(graph_batch_size).collect();
        assert_eq!(sizes.len(), 35);
        assert!((1..=MAX_GRAPH_BATCH).all(|n| graph_batch_size(n).is_some_and(|b| b >= n)));
    }

    #[test]
    fn the_padding_block_is_in_no_table_and_not_counted() {
        // Two slots of two blocks each fill the pools; the padding block is one more.
        let mut c = KvCache::paged(&config(), 2, 8, 4, Device::Cpu).unwrap();
        fill(&mut c, 0, 8, 0.0);
        fill(&mut c, 1, 8, 100.0);
        let pad = c.pad_block().unwrap();
        assert_eq!(c.pad_block().unwrap(), pad, "allocated once");
        let u = c.usage();
        assert_eq!((u.blocks_in_use, u.peak_blocks, u.capacity_blocks), (4, 4, 5));
        assert!(!c.block_table(0).contains(&pad) && !c.block_table(1).contains(&pad));
        c.clear(0);
        c.clear(1);
        assert_eq!(c.usage().blocks_in_use, 0);
        fill(&mut c, 0, 8, 7.0);
        fill(&mut c, 1, 8, 9.0);
        assert!(!c.block_table(0).contains(&pad) && !c.block_table(1).contains(&pad));
        assert!(c.reserve(0, 9).is_err());
    }

    #[test]
    fn bad_sizes_and_slots_are_errors() {
        assert!(KvCache::paged(&config(), 2, 8, 0, Device::Cpu).is_err());
        assert!(KvCache::paged(&config(), 0, 8, 4, Device::Cpu).is_err());
        assert!(KvCache::paged(&config(), usize::MAX, usize::MAX, 1, Device::Cpu).is_err());
        let mut c = KvCache::paged(&config(), 2, 8, 4, Device::Cpu).unwrap();
        assert!(c.fork(0, 2).is_err());
        assert!(c.reserve(0, 9).unwrap_err().to_string().contains("more than the cache's 8"));
        c.clear(7); // a slot that does not exist is a no-op, as before
    }
}
