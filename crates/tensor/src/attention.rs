//! Causal attention with grouped-query heads as one op, forward and backward: on a GPU the
//! fused kernels of kernels/attention.cu (no `[queries x keys]` matrix in memory); on the CPU
//! the same function through matrix products, which is also the reference the GPU is
//! tested against.

use crate::{DType, Error, Result, Tensor};

/// The checked sizes of an attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnDims {
    pub t: usize,
    pub len: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
}

fn dims(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<AttnDims> {
    const OP: &str = "causal_attention";
    let [t, heads, d] = q.dims_n(OP)?;
    let [len, kv_heads, dk] = k.dims_n(OP)?;
    if v.dims() != k.dims() || dk != d {
        return Err(crate::invalid!(
            OP,
            "q {}, k {}, v {}: expected [t, heads, d], [len, kv_heads, d] twice",
            q.shape(),
            k.shape(),
            v.shape()
        ));
    }
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(crate::invalid!(OP, "{heads} query heads do not share {kv_heads} KV heads evenly"));
    }
    if t > len {
        return Err(crate::invalid!(OP, "{t} queries cannot be the last of {len} positions"));
    }
    for x in [k, v] {
        q.check_like(x, OP)?;
    }
    if !q.dtype().is_float() {
        return Err(Error::UnsupportedDType { op: OP, dtype: q.dtype() });
    }
    Ok(AttnDims { t, len, heads, kv_heads, d })
}

/// `[t, heads, d]` -> `[kv_heads, rep * t, d]` in f32: each KV head's queries as one matrix.
fn group(x: &Tensor, a: AttnDims) -> Result<Tensor> {
    let rep = a.heads / a.kv_heads;
    x.to_dtype(DType::F32)?.reshape((a.t, a.kv_heads, rep, a.d))?.permute(&[1, 2, 0, 3])?.reshape((
        a.kv_heads,
        rep * a.t,
        a.d,
    ))
}

/// The inverse of [`group`].
fn ungroup(x: &Tensor, a: AttnDims) -> Result<Tensor> {
    let rep = a.heads / a.kv_heads;
    x.reshape((a.kv_heads, rep, a.t, a.d))?.permute(&[2, 0, 1, 3])?.reshape((a.t, a.heads, a.d))
}

/// Masked, scaled scores `[kv_heads, rep * t, len]` in f32.
fn scores(qg: &Tensor, k: &Tensor, a: AttnDims, scale: f32) -> Result<Tensor> {
    let rep = a.heads / a.kv_heads;
    let s = qg.matmul(&k.to_dtype(DType::F32)?.permute(&[1, 2, 0])?)?.mul_scalar(scale)?;
    if a.t == 1 && a.len >= 1 {
        return Ok(s); // a single last query sees every key
    }
    let mask = Tensor::causal_mask(a.t, a.len, qg.device())?;
    s.reshape((a.kv_heads, rep, a.t, a.len))?.masked_fill(&mask, f32::NEG_INFINITY)?.reshape((
        a.kv_heads,
        rep * a.t,
        a.len,
    ))
}

/// A sequence's block table for [`Tensor::paged_attention`]: the block ids on the host (for
/// checks and the CPU) and, for a GPU, a copy on the device made once, so the layers of a
/// forward pass share one upload.
#[derive(Debug, Clone)]
pub struct BlockTable {
    ids: Vec<u32>,
    on_device: Option<Tensor>,
}

impl BlockTable {
    pub fn new(ids: Vec<u32>, device: crate::Device) -> Result<BlockTable> {
        let on_device = if device.is_cuda() { Some(Tensor::from_vec(ids.clone(), ids.len(), device)?) } else { None };
        Ok(BlockTable { ids, on_device })
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// Sequences of a paged KV cache that one forward pass runs together (a decode step's
/// rollouts, or prefills beside them), for [`Tensor::write_paged`] and
/// [`Tensor::paged_attention_batch`]: their query rows packed in order, each sequence's
/// block table, and for a GPU everything uploaded once, so a layer's cache writes and
/// attention are one launch each whatever the number of sequences.
#[derive(Debug, Clone)]
pub struct PagedBatch {
    block_size: usize,
    /// Per sequence: (first row, rows, positions after the step, offset of its table).
    meta: Vec<[u32; 4]>,
    tables: Vec<u32>,
    /// The pool row (`block * block_size + offset`) each query row's position goes to.
    slots: Vec<u32>,
    /// Warps per (row, head) on a GPU, each over a share of the positions the row sees
    /// ([`PagedBatch::with_key_splits`]).
    key_splits: usize,
    /// One warp per (row, KV head) for all the query heads of its group, on a GPU
    /// ([`PagedBatch::with_grouped_heads`]).
    grouped_heads: bool,
    on_device: Option<PagedBatchDevice>,
}

#[derive(Debug, Clone)]
struct PagedBatchDevice {
    meta: Tensor,
    seq_of: Tensor,
    tables: Tensor,
    slots: Tensor,
}

impl PagedBatch {
    /// `seqs`: per sequence `(start, t, table)`: it holds `start` positions and adds `t`
    /// (its query rows, packed in this order), and `table` lists the blocks of its
    /// `start + t` positions (at least).
    pub fn new(seqs: &[(usize, usize, &[u32])], block_size: usize, device: crate::Device) -> Result<PagedBatch> {
        PagedBatch::build(seqs, block_size, device, None)
    }

    /// [`PagedBatch::new`] with the block-table array padded with block 0 to `capacity`
    /// ids: batches of the same sequences and rows then have arrays of one size whatever
    /// their lengths, so a captured graph's kernels can read each step's batch from the same
    /// addresses ([`PagedBatch::on_device_in`]). An error when the tables need more.
    pub fn with_table_capacity(
        seqs: &[(usize, usize, &[u32])],
        block_size: usize,
        device: crate::Device,
        capacity: usize,
    ) -> Result<PagedBatch> {
        PagedBatch::build(seqs, block_size, device, Some(capacity))
    }

    /// The arrays the GPU kernels read, concatenated: the sequences' `[first row, rows,
    /// length, table offset]`, each row's sequence, the block tables, each row's pool row.
    /// With [`PagedBatch::on_device_in`] over a buffer holding them, a step's whole batch
    /// (and whatever else shares the buffer) reaches the GPU in one copy.
    pub fn device_arrays(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.meta.len() * 5 + self.tables.len() + self.slots.len());
        out.extend(self.meta.iter().flatten());
        for (n, m) in self.meta.iter().enumerate() {
            out.extend(std::iter::repeat_n(n as u32, m[1] as usize));
        }
        out.extend(&self.tables);
        out.extend(&self.slots);
        out
    }

    /// This batch with its device arrays read from `buf[at..]` (a U32 tensor on a GPU that
    /// holds [`PagedBatch::device_arrays`] there, or will before the kernels run): views,
    /// no copy. A captured graph reads them at these addresses, so writing the next step's
    /// arrays into `buf` is all a replay needs.
    pub fn on_device_in(mut self, buf: &Tensor, at: usize) -> Result<PagedBatch> {
        const OP: &str = "PagedBatch::on_device_in";
        if buf.dtype() != crate::DType::U32 || !buf.device().is_cuda() || buf.rank() != 1 {
            return Err(crate::invalid!(OP, "the buffer must be a 1-D U32 tensor on a GPU, not {:?}", buf));
        }
        let lens = [self.meta.len() * 4, self.slots.len(), self.tables.len(), self.slots.len()];
        let total: usize = lens.iter().sum();
        if at + total > buf.elem_count() {
            return Err(crate::invalid!(OP, "{total} values from {at} do not fit a buffer of {}", buf.elem_count()));
        }
        let mut views = Vec::with_capacity(4);
        let mut from = at;
        for n in lens {
            views.push(buf.narrow(0, from, n)?);
            from += n;
        }
        let mut v = views.into_iter();
        let mut next = || v.next().expect("four views");
        self.on_device = Some(PagedBatchDevice { meta: next(), seq_of: next(), tables: next(), slots: next() });
        Ok(self)
    }

    fn build(
        seqs: &[(usize, usize, &[u32])],
        block_size: usize,
        device: crate::Device,
        capacity: Option<usize>,
    ) -> Result<PagedBatch> {
        const OP: &str = "PagedBatch";
        if block_size == 0 {
            return Err(crate::invalid!(OP, "blocks of no positions"));
        }
        let (mut meta, mut tables, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        let mut row = 0usize;
        for (n, &(start, t, table)) in seqs.iter().enumerate() {
            let len = start + t;
            let nb = len.div_ceil(block_size);
            if table.len() < nb {
                return Err(crate::invalid!(
                    OP,
                    "sequence {n}: {len} positions need {nb} blocks of {block_size}; its table has {}",
                    table.len()
                ));
            }
            let as_u32 = |x: usize, what: &str| {
                u32::try_from(x).map_err(|_| crate::invalid!(OP, "sequence {n}: {what} {x} does not fit 32 bits"))
            };
            meta.push([
                as_u32(row, "row")?,
                as_u32(t, "rows")?,
                as_u32(len, "length")?,
                as_u32(tables.len(), "table offset")?,
            ]);
            for p in start..len {
                slots.push(as_u32(table[p / block_size] as usize * block_size + p % block_size, "pool row")?);
            }
            tables.extend_from_slice(&table[..nb]);
            row += t;
        }
        if let Some(cap) = capacity {
            if tables.len() > cap {
                return Err(crate::invalid!(
                    OP,
                    "the tables need {} block ids, more than the capacity {cap}",
                    tables.len()
                ));
            }
            tables.resize(cap, 0);
        }
        let grouped_heads = grouped_heads_default();
        let batch = PagedBatch { block_size, meta, tables, slots, key_splits: 1, grouped_heads, on_device: None };
        if !device.is_cuda() {
            return Ok(batch);
        }
        // Every array in one copy to the GPU; the batch reads views of it.
        let arrays = batch.device_arrays();
        let len = arrays.len();
        batch.on_device_in(&Tensor::from_vec(arrays, len, device)?, 0)
    }

    /// The query rows of all sequences together.
    pub fn rows(&self) -> usize {
        self.slots.len()
    }

    /// This batch with GPU attention split over the keys, flash-decoding style: `n` warps
    /// per (row, head), each over one contiguous share of the positions the row sees, then
    /// one merge (1, the default: one warp per pair). Splitting fills the GPU when a step has
    /// few rows and long contexts; it changes the order of the sums, not the maths. The
    /// shares follow each row's current length, so one split count serves every step of a
    /// captured graph. At most 64.
    pub fn with_key_splits(mut self, n: usize) -> PagedBatch {
        self.key_splits = n.clamp(1, 64);
        self
    }

    pub fn key_splits(&self) -> usize {
        self.key_splits
    }

    /// This batch with GPU attention grouped by KV head (`true`, the default unless
    /// `ARTIST_ATTN_GROUP=0`): one warp per (row, KV head, share of the keys) serves every
    /// query head of the group, so each key and value row is read once per group instead of
    /// once per head. It applies to groups of 2 to 8 heads and head dims up to 128 (Qwen2.5's
    /// shapes); other shapes, and `false`, run one warp per (row, head). Both give the same
    /// bits: each head's sums are the same terms in the same order.
    pub fn with_grouped_heads(mut self, on: bool) -> PagedBatch {
        self.grouped_heads = on;
        self
    }

    pub fn grouped_heads(&self) -> bool {
        self.grouped_heads
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Sequence `n`'s block ids.
    fn table(&self, n: usize) -> &[u32] {
        let from = self.meta[n][3] as usize;
        let to = self.meta.get(n + 1).map_or(self.tables.len(), |m| m[3] as usize);
        &self.tables[from..to]
    }

    /// Checks a pool `[blocks, block_size, kv_heads, d]` against the batch.
    fn check_pool(&self, pool: &Tensor, op: &'static str) -> Result<[usize; 4]> {
        let dims = pool.dims_n::<4>(op)?;
        if dims[1] != self.block_size {
            return Err(crate::invalid!(
                op,
                "the pool {} has blocks of {}, the batch {}",
                pool.shape(),
                dims[1],
                self.block_size
            ));
        }
        if let Some(&b) = self.tables.iter().find(|&&b| b as usize >= dims[0]) {
            return Err(crate::invalid!(op, "block {b} is outside the pool's {}", dims[0]));
        }
        Ok(dims)
    }
}

/// [`PagedBatch::with_grouped_heads`]'s default: on, unless `ARTIST_ATTN_GROUP=0` (to time
/// one warp per head against it).
fn grouped_heads_default() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !*OFF.get_or_init(|| std::env::var("ARTIST_ATTN_GROUP").as_deref() == Ok("0"))
}

/// Whether a paged KV cache of `pool` dtype can serve activations of `act` dtype: its own
/// dtype, or bf16 under f32 (keys and values rounded as they are stored, widened as they
/// are read).
fn cache_dtypes_fit(act: DType, pool: DType) -> bool {
    act == pool || (act == DType::F32 && pool == DType::BF16)
}

/// A pool written in place from `src`: the same dtype and device, and contiguous.
fn check_writable_pool(pool: &Tensor, src: &Tensor, op: &'static str) -> Result<()> {
    if src.dtype() != pool.dtype() {
        return Err(Error::DTypeMismatch { op, lhs: pool.dtype(), rhs: src.dtype() });
    }
    if src.device() != pool.device() {
        return Err(Error::DeviceMismatch { op, lhs: pool.device(), rhs: src.device() });
    }
    if !pool.is_contiguous() {
        return Err(crate::invalid!(op, "the pool {} is not contiguous", pool.shape()));
    }
    Ok(())
}

/// Checks a paged pool `[blocks, block_size, kv_heads, d]` and a block table for `len`
/// positions; returns the block size and the blocks `len` needs.
fn paged_dims(pool: &Tensor, table: &[u32], len: usize, op: &'static str) -> Result<(usize, usize)> {
    let [blocks, bs, _, _] = pool.dims_n(op)?;
    if bs == 0 {
        return Err(crate::invalid!(op, "a pool {} has blocks of no positions", pool.shape()));
    }
    let nb = len.div_ceil(bs);
    if table.len() < nb {
        return Err(crate::invalid!(op, "{len} positions need {nb} blocks of {bs}; the table has {}", table.len()));
    }
    if let Some(&b) = table[..nb].iter().find(|&&b| b as usize >= blocks) {
        return Err(crate::invalid!(op, "block {b} is outside the pool's {blocks}"));
    }
    Ok((bs, nb))
}

/// Qwen3's RMSNorm of each query and key head before RoPE, for
/// [`Tensor::qkv_rope_paged`]: the weights `[head_dim]` of `q_norm` and `k_norm`.
#[derive(Clone, Copy)]
pub struct QkNorm<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub eps: f32,
}

impl Tensor {
    /// Causal attention of one sequence: `self = q: [t, heads, d]` holds the last `t` of
    /// `len` positions, `k`, `v: [len, kv_heads, d]` (any strides, e.g. a KV-cache view);
    /// head `h` reads KV head `h / (heads / kv_heads)`. Returns the output `[t, heads, d]`
    /// in q's dtype and each (head, query)'s log-sum-exp of the scaled scores, `[heads, t]`
    /// f32, which the backward needs. On a GPU the fused kernels (kernels/attention.cu); on
    /// the CPU the fused kernels of cpu/attention.rs from [`CPU_FUSED_MIN_KEYS`] keys, below
    /// it the composition in torch's order ([`Tensor::causal_attention_reference`]).
    pub fn causal_attention(&self, k: &Tensor, v: &Tensor, scale: f32) -> Result<(Tensor, Tensor)> {
        if attention_composes(k) {
            return self.causal_attention_reference(k, v, scale);
        }
        self.causal_attention_fused(k, v, scale)
    }

    /// [`Tensor::causal_attention`] through the fused kernels at any length: on the CPU
    /// those of cpu/attention.rs (one pass over the keys per block of queries, an online
    /// softmax, no `[heads, t, len]` scores), in f32 whatever the inputs' dtype.
    pub fn causal_attention_fused(&self, k: &Tensor, v: &Tensor, scale: f32) -> Result<(Tensor, Tensor)> {
        let a = dims(self, k, v)?;
        if self.device().is_cuda() {
            return crate::cuda::ops::attention_fwd(self, k, v, a, scale);
        }
        if a.d == 0 {
            return self.causal_attention_reference(k, v, scale); // nothing to fuse
        }
        let (q, k, v) = (host_f32(self)?, host_f32(k)?, host_f32(v)?);
        let (out, lse) = crate::cpu::attention::forward(&q.cpu_f32(), &k.cpu_f32(), &v.cpu_f32(), a, scale);
        let out = Tensor::from_vec(out, (a.t, a.heads, a.d), crate::Device::Cpu)?.to_dtype(self.dtype())?;
        Ok((out, Tensor::from_vec(lse, (a.heads, a.t), crate::Device::Cpu)?))
    }

    /// [`Tensor::causal_attention`] through matrix products, in the order of torch's eager
    /// attention (scores, mask, softmax, the product with the values): the reference the
    /// fused kernels of both devices are tested against. Any device; `[heads, t, len]`
    /// scores are held at once.
    pub fn causal_attention_reference(&self, k: &Tensor, v: &Tensor, scale: f32) -> Result<(Tensor, Tensor)> {
        let a = dims(self, k, v)?;
        let qg = group(self, a)?;
        let s = scores(&qg, k, a, scale)?;
        let m = s.max_keepdim(-1)?;
        let lse = s.sub(&m)?.exp()?.sum_keepdim(-1)?.log()?.add(&m)?; // [kv, rep t, 1]
        let out = s.softmax(-1)?.matmul(&v.to_dtype(DType::F32)?.permute(&[1, 0, 2])?)?;
        let out = ungroup(&out, a)?.to_dtype(self.dtype())?;
        Ok((out, lse.reshape((a.heads, a.t))?))
    }

    /// Positions `0..len` of a paged KV cache's pool `self: [blocks, block_size, kv_heads, d]`
    /// whose blocks are `table` (position `p` at row `p % block_size` of block `table[p /
    /// block_size]`), as `[len, kv_heads, d]`: a view when the blocks are consecutive, one
    /// gather otherwise.
    pub fn gather_blocks(&self, table: &[u32], len: usize) -> Result<Tensor> {
        let (bs, nb) = paged_dims(self, table, len, "gather_blocks")?;
        let [_, _, kv_heads, d] = self.dims_n("gather_blocks")?;
        let table = &table[..nb];
        let blocks = if nb > 0 && table.windows(2).all(|w| w[1] == w[0] + 1) {
            self.narrow(0, table[0] as usize, nb)?
        } else {
            self.index_select(&Tensor::from_vec(table.to_vec(), nb, self.device())?, 0)?
        };
        blocks.reshape((nb * bs, kv_heads, d))?.narrow(0, 0, len)
    }

    /// [`Tensor::causal_attention`] of one sequence whose keys and values sit in a paged KV
    /// cache: `k_pool`, `v_pool: [blocks, block_size, kv_heads, d]`, positions `0..len` in
    /// the blocks of `table`, the queries `self: [t, heads, d]` being the last `t`. For
    /// inference (no backward): on a GPU one kernel reads the pools through the table; on the
    /// CPU the blocks are gathered ([`Tensor::gather_blocks`]) and the dense op runs.
    pub fn paged_attention(
        &self,
        k_pool: &Tensor,
        v_pool: &Tensor,
        table: &BlockTable,
        len: usize,
        scale: f32,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "paged_attention";
        let ids = table.ids();
        if v_pool.dims() != k_pool.dims() {
            return Err(crate::invalid!(OP, "k pool {} and v pool {} differ", k_pool.shape(), v_pool.shape()));
        }
        let (_, nb) = paged_dims(k_pool, ids, len, OP)?;
        if !self.device().is_cuda() {
            let (mut k, mut v) = (k_pool.gather_blocks(ids, len)?, v_pool.gather_blocks(ids, len)?);
            if cache_dtypes_fit(self.dtype(), k_pool.dtype()) && k.dtype() != self.dtype() {
                // A bf16 cache under f32 queries: the keys and values widened exactly.
                (k, v) = (k.to_dtype(self.dtype())?, v.to_dtype(self.dtype())?);
            }
            return self.causal_attention(&k, &v, scale);
        }
        // The dense checks on the pools seen as `[blocks * block_size, kv_heads, d]`.
        let flat = |p: &Tensor| -> Result<Tensor> {
            let [b, bs, kv, d] = p.dims_n(OP)?;
            p.contiguous()?.reshape((b * bs, kv, d))
        };
        let a = AttnDims { len, ..dims(self, &flat(k_pool)?, &flat(v_pool)?)? };
        if a.t > len {
            return Err(crate::invalid!(OP, "{} queries cannot be the last of {len} positions", a.t));
        }
        let on_device = match &table.on_device {
            Some(t) if t.device() == self.device() => t.narrow(0, 0, nb)?,
            _ => Tensor::from_vec(ids[..nb].to_vec(), nb, self.device())?,
        };
        crate::cuda::ops::attention_fwd_paged(self, k_pool, v_pool, &on_device, a, scale)
    }

    /// Writes `src: [rows, kv_heads, d]`, the keys (or values) of a [`PagedBatch`]'s new
    /// positions in row order, into this pool `[blocks, block_size, kv_heads, d]` in place:
    /// one launch on a GPU.
    pub fn write_paged(&self, batch: &PagedBatch, src: &Tensor) -> Result<()> {
        const OP: &str = "write_paged";
        let [blocks, bs, kv_heads, d] = batch.check_pool(self, OP)?;
        if src.dims() != [batch.rows(), kv_heads, d] {
            return Err(crate::invalid!(OP, "src {} should be [{}, {kv_heads}, {d}]", src.shape(), batch.rows()));
        }
        check_writable_pool(self, src, OP)?;
        if let Some(dev) = &batch.on_device
            && self.device().is_cuda()
        {
            return crate::cuda::ops::copy_rows(self, &dev.slots, src, kv_heads * d);
        }
        // Runs of consecutive pool rows, one copy each.
        let flat = self.reshape((blocks * bs, kv_heads, d))?;
        let mut r = 0;
        while r < batch.slots.len() {
            let mut n = 1;
            while r + n < batch.slots.len() && batch.slots[r + n] == batch.slots[r] + n as u32 {
                n += 1;
            }
            flat.narrow(0, batch.slots[r] as usize, n)?.copy_from(&src.narrow(0, r, n)?)?;
            r += n;
        }
        Ok(())
    }

    /// A cached forward pass's attention inputs from the fused projection `self = qkv:
    /// [rows, (heads + 2 kv_heads) * d]` (queries, keys, values side by side, as
    /// `batch`'s rows) plus its `bias` (`[(heads + 2 kv_heads) * d]`, if any): with `norm`,
    /// each query and key head through RMSNorm over its `d` values (Qwen3's q_norm and
    /// k_norm, weights `[d]` of `self`'s dtype); RoPE with `cos`, `sin: [rows, d / 2]` on
    /// the queries and keys, the keys and values written into the pools at the batch's new
    /// positions ([`Tensor::write_paged`]); returns the queries `[rows, heads, d]`. On a
    /// GPU one launch does it all, with the bits of `add`, `rms_norm`, `rope` and
    /// `write_paged` on the GPU; the CPU composes those.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope_paged(
        &self,
        bias: Option<&Tensor>,
        norm: Option<QkNorm>,
        heads: usize,
        kv_heads: usize,
        cos: &Tensor,
        sin: &Tensor,
        k_pool: &Tensor,
        v_pool: &Tensor,
        batch: &PagedBatch,
    ) -> Result<Tensor> {
        const OP: &str = "qkv_rope_paged";
        let [rows, width] = self.dims_n(OP)?;
        let [_, _, kv, d] = batch.check_pool(k_pool, OP)?;
        if kv != kv_heads || width != (heads + 2 * kv_heads) * d || rows != batch.rows() || !d.is_multiple_of(2) {
            return Err(crate::invalid!(
                OP,
                "qkv {} does not hold {heads} query and {kv_heads} KV heads of the pools' {} for {} rows",
                self.shape(),
                k_pool.shape(),
                batch.rows()
            ));
        }
        if v_pool.dims() != k_pool.dims() {
            return Err(crate::invalid!(OP, "k pool {} and v pool {} differ", k_pool.shape(), v_pool.shape()));
        }
        if let Some(b) = bias
            && (b.dims() != [width] || b.dtype() != self.dtype() || b.device() != self.device())
        {
            return Err(crate::invalid!(
                OP,
                "the bias {} {} should be [{width}] {}",
                b.shape(),
                b.dtype(),
                self.dtype()
            ));
        }
        if let Some(n) = &norm {
            for (what, w) in [("q", n.q), ("k", n.k)] {
                if w.dims() != [d] || w.dtype() != self.dtype() || w.device() != self.device() {
                    return Err(crate::invalid!(
                        OP,
                        "the {what} norm's weight {} {} should be [{d}] {}",
                        w.shape(),
                        w.dtype(),
                        self.dtype()
                    ));
                }
            }
        }
        if cos.dims() != [rows, d / 2] || sin.dims() != cos.dims() {
            return Err(crate::invalid!(
                OP,
                "cos {} and sin {} should be [{rows}, {}]",
                cos.shape(),
                sin.shape(),
                d / 2
            ));
        }
        for p in [k_pool, v_pool] {
            // The pools may be a bf16 cache under f32 activations: keys and values are rounded
            // as they are stored.
            if cache_dtypes_fit(self.dtype(), p.dtype()) && p.dtype() != self.dtype() {
                check_writable_pool(p, &self.narrow(0, 0, 0)?.to_dtype(p.dtype())?, OP)?;
            } else {
                check_writable_pool(p, self, OP)?;
            }
        }
        if let Some(dev) = &batch.on_device
            && self.device().is_cuda()
        {
            return crate::cuda::ops::qkv_rope_cache(
                self,
                bias,
                norm.map(|n| (n.q, n.k, n.eps)),
                [heads, kv_heads, d],
                cos,
                sin,
                &dev.slots,
                k_pool,
                v_pool,
            );
        }
        let qkv = match bias {
            Some(b) => self.add(b)?,
            None => self.clone(),
        };
        let part = |from: usize, n: usize, w: Option<&Tensor>| -> Result<Tensor> {
            let x = qkv.narrow(1, from * d, n * d)?.reshape((rows, n, d))?;
            let x = match (w, &norm) {
                (Some(w), Some(norm)) => x.rms_norm(w, norm.eps)?,
                _ => x,
            };
            x.reshape((1, rows, n, d))?.rope(cos, sin)?.reshape((rows, n, d))
        };
        let q = part(0, heads, norm.as_ref().map(|n| n.q))?;
        let k = part(heads, kv_heads, norm.as_ref().map(|n| n.k))?;
        let v = qkv.narrow(1, (heads + kv_heads) * d, kv_heads * d)?.reshape((rows, kv_heads, d))?;
        k_pool.write_paged(batch, &k.to_dtype(k_pool.dtype())?)?;
        v_pool.write_paged(batch, &v.to_dtype(v_pool.dtype())?)?;
        Ok(q)
    }

    /// [`Tensor::paged_attention`] of every sequence of `batch` at once: `self = q: [rows,
    /// heads, d]` holds their query rows packed in order. Returns `[rows, heads, d]` and the
    /// log-sum-exp `[heads, rows]`, each row's as `paged_attention` of its own sequence gives
    /// it. On a GPU one kernel reads the pools through every sequence's table; on the CPU
    /// the sequences run one by one.
    pub fn paged_attention_batch(
        &self,
        k_pool: &Tensor,
        v_pool: &Tensor,
        batch: &PagedBatch,
        scale: f32,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "paged_attention_batch";
        let [rows, heads, d] = self.dims_n(OP)?;
        if v_pool.dims() != k_pool.dims() {
            return Err(crate::invalid!(OP, "k pool {} and v pool {} differ", k_pool.shape(), v_pool.shape()));
        }
        let [blocks, bs, kv_heads, dk] = batch.check_pool(k_pool, OP)?;
        if rows != batch.rows() || dk != d {
            return Err(crate::invalid!(
                OP,
                "q {} does not fit the batch's {} rows of head dim {dk}",
                self.shape(),
                batch.rows()
            ));
        }
        match &batch.on_device {
            Some(dev) if self.device().is_cuda() => {
                // The dense checks (dtypes, devices, heads) on the pools seen as rows.
                let flat = |p: &Tensor| p.reshape((blocks * bs, kv_heads, d));
                let mut q0 = self.narrow(0, 0, 0)?;
                if cache_dtypes_fit(self.dtype(), k_pool.dtype()) {
                    q0 = q0.to_dtype(k_pool.dtype())?; // a bf16 cache under f32 queries
                }
                let a = dims(&q0, &flat(k_pool)?, &flat(v_pool)?)?;
                let a = AttnDims { t: rows, len: blocks * bs, heads, ..a };
                crate::cuda::ops::attention_fwd_paged_batch(
                    self,
                    k_pool,
                    v_pool,
                    (&dev.meta, &dev.seq_of, &dev.tables),
                    (bs, batch.key_splits, batch.grouped_heads),
                    a,
                    scale,
                )
            }
            _ => {
                let (mut outs, mut lses) = (Vec::new(), Vec::new());
                for (n, m) in batch.meta.iter().enumerate() {
                    let (row, t, len) = (m[0] as usize, m[1] as usize, m[2] as usize);
                    let table = BlockTable::new(batch.table(n).to_vec(), crate::Device::Cpu)?;
                    let (o, l) = self.narrow(0, row, t)?.paged_attention(k_pool, v_pool, &table, len, scale)?;
                    outs.push(o);
                    lses.push(l);
                }
                if outs.is_empty() {
                    return Ok((self.copy()?, Tensor::zeros((heads, 0), DType::F32, self.device())?));
                }
                let outs: Vec<&Tensor> = outs.iter().collect();
                let lses: Vec<&Tensor> = lses.iter().collect();
                Ok((Tensor::cat(&outs, 0)?, Tensor::cat(&lses, 1)?))
            }
        }
    }

    /// The gradients `(dq, dk, dv)` (f32, shaped as q, k, v) of [`Tensor::causal_attention`]
    /// given its output `out`, its log-sum-exp `lse` and the output's gradient `dout`: the
    /// fused kernels where the forward ran them, else the composition's backward (which
    /// recomputes the probabilities from q and k and reads neither `out` nor `lse`).
    pub fn causal_attention_backward(
        &self,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        scale: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if attention_composes(k) {
            // The same checks as the fused path, so both refuse the same inputs.
            check_backward(self, k, v, out, lse, dout)?;
            return self.causal_attention_backward_reference(k, v, dout, scale);
        }
        self.causal_attention_backward_fused(k, v, out, lse, dout, scale)
    }

    /// The fused kernels' gradients of [`Tensor::causal_attention_fused`] at any length:
    /// both devices recompute the probabilities from `lse` and use `sum(dout * out)` for the
    /// softmax term (flash attention's form); on the CPU the key gradients are summed per
    /// block of keys and the query gradients per block of queries, each by one task.
    pub fn causal_attention_backward_fused(
        &self,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        scale: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let a = check_backward(self, k, v, out, lse, dout)?;
        if self.device().is_cuda() {
            return crate::cuda::ops::attention_bwd(self, k, v, out, lse, dout, a, scale);
        }
        if a.d == 0 {
            return self.causal_attention_backward_reference(k, v, dout, scale);
        }
        let (q, k, v) = (host_f32(self)?, host_f32(k)?, host_f32(v)?);
        let (out, lse, dout) = (host_f32(out)?, host_f32(lse)?, host_f32(dout)?);
        let (dq, dk, dv) = crate::cpu::attention::backward(
            (&q.cpu_f32(), &k.cpu_f32(), &v.cpu_f32()),
            &out.cpu_f32(),
            &lse.cpu_f32(),
            &dout.cpu_f32(),
            a,
            scale,
        );
        let cpu = crate::Device::Cpu;
        Ok((
            Tensor::from_vec(dq, (a.t, a.heads, a.d), cpu)?,
            Tensor::from_vec(dk, (a.len, a.kv_heads, a.d), cpu)?,
            Tensor::from_vec(dv, (a.len, a.kv_heads, a.d), cpu)?,
        ))
    }

    /// The gradients of [`Tensor::causal_attention_reference`] through matrix products, in
    /// the order of torch's autograd through eager attention: the softmax recomputed as the
    /// forward formed it, its backward `dP * P - P * sum(dP * P)`, then the scale and the two
    /// products. The reference of the fused backward kernels; any device.
    pub fn causal_attention_backward_reference(
        &self,
        k: &Tensor,
        v: &Tensor,
        dout: &Tensor,
        scale: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let a = dims(self, k, v)?;
        if dout.dims() != self.dims() {
            return Err(crate::invalid!(
                "causal_attention_backward_reference",
                "dout {} does not fit q {}",
                dout.shape(),
                self.shape()
            ));
        }
        let qg = group(self, a)?;
        let p = scores(&qg, k, a, scale)?.softmax(-1)?;
        let dog = group(dout, a)?;
        let vf = v.to_dtype(DType::F32)?.permute(&[1, 0, 2])?; // [kv, len, d]
        let kf = k.to_dtype(DType::F32)?.permute(&[1, 0, 2])?;
        let dv = p.t()?.matmul(&dog)?; // [kv, len, d]
        let gp = dog.matmul(&vf.t()?)?.mul(&p)?; // dP * P, [kv, rep t, len]
        let ds = gp.sub(&p.mul(&gp.sum_keepdim(-1)?)?)?.mul_scalar(scale)?;
        let dq = ungroup(&ds.matmul(&kf)?, a)?;
        let dk = qg.t()?.matmul(&ds)?.permute(&[2, 0, 1])?.contiguous()?; // [kv, d, len] -> [len, kv, d]
        Ok((dq, dk, dv.permute(&[1, 0, 2])?.contiguous()?))
    }
}

/// Keys from which the CPU runs the fused attention kernels rather than the composition: a
/// prompt's prefill or a long decode. Below, the composition in torch's order is cheap and
/// keeps the CPU's numbers those of transformers and PyTorch's autograd to the ulp (the
/// parity tests, the embedded demo's course); from here its `[heads, t, len]` scores and six
/// passes over them cost about 3x the fused forward (docs/BENCHMARKS.md).
pub const CPU_FUSED_MIN_KEYS: usize = 512;

/// Whether causal attention over the keys `k: [len, kv_heads, d]` runs as the composition of
/// matrix products ([`Tensor::causal_attention_reference`]): on the CPU, below
/// [`CPU_FUSED_MIN_KEYS`] keys. `Var::causal_attention` records the same choice.
pub fn attention_composes(k: &Tensor) -> bool {
    !k.device().is_cuda() && k.dims().first().is_some_and(|&len| len < CPU_FUSED_MIN_KEYS)
}

/// The checks of a backward call's operands; their sizes.
fn check_backward(q: &Tensor, k: &Tensor, v: &Tensor, out: &Tensor, lse: &Tensor, dout: &Tensor) -> Result<AttnDims> {
    const OP: &str = "causal_attention_backward";
    let a = dims(q, k, v)?;
    if out.dims() != q.dims() || dout.dims() != q.dims() || lse.dims() != [a.heads, a.t] {
        return Err(crate::invalid!(
            OP,
            "out {}, dout {} and lse {} do not fit q {}",
            out.shape(),
            dout.shape(),
            lse.shape(),
            q.shape()
        ));
    }
    for x in [out, lse, dout] {
        if x.device() != q.device() {
            return Err(Error::DeviceMismatch { op: OP, lhs: q.device(), rhs: x.device() });
        }
    }
    Ok(a)
}

/// `x` as contiguous f32 on the host: itself when it already is, else a converted copy.
fn host_f32(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 && x.is_contiguous() { Ok(x.clone()) } else { x.to_dtype(DType::F32)?.contiguous() }
}
