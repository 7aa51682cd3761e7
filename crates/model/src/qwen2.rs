//! The Qwen2 decoder, layer by layer as in transformers' `modeling_qwen2.py`:
//! embedding -> N x [RMSNorm -> attention (q/k/v with bias, RoPE, GQA) -> residual ->
//! RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> LM head (tied or not). Qwen3
//! (`modeling_qwen3.py`) is the same decoder with q/k/v unbiased and each head of q and k
//! through an RMSNorm of its own (`q_norm`, `k_norm`, over `head_dim`) before RoPE.
//!
//! A forward call takes a packed batch: any number of sequences, each appending any number
//! of tokens to its own KV-cache slot. Projections and MLPs run over all tokens at once;
//! attention runs per sequence over that sequence's cache, so sequences of different
//! lengths need no padding.

use std::path::Path;
use std::sync::Arc;

use artist_autograd::{Ctx, Param, Var, checkpoint};
use artist_tensor::{DType, Device, PagedBatch, Tensor, rope_tables_scaled};

use crate::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, LoraSpec};
use crate::{DecodeSteps, Error, KvCache, Qwen2Config, Result, WeightSource, Weights, graph_batch_size};

/// Tokens appended to the sequence held in cache slot `slot`.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    pub slot: usize,
    pub tokens: &'a [u32],
}

/// Which positions of a forward call produce output rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every input token, in input order.
    All,
    /// The last token of each sequence (what sampling needs).
    Last,
}

#[derive(Clone)]
struct Linear {
    weight: Param,       // [out, in], stored dtype
    bias: Option<Param>, // [out], stored dtype
    /// LoRA: each part of the projection (one, or q/k/v and gate/up where fused) in row
    /// order, with its adapter if it has one; empty without adapters.
    lora: Vec<LoraPart>,
    /// The adapters' factor `alpha / r`.
    lora_scale: f32,
}

/// One part of a (fused) projection: its output rows and
/// its adapter `(A: [r, in], B: [rows, r])`, f32, if targeted.
#[derive(Clone)]
struct LoraPart {
    rows: usize,
    adapter: Option<(Param, Param)>,
}

/// A part of a projection: its Hugging Face module name and output rows.
type Part = (&'static str, usize);

/// `x @ w^T` in the dtype `ctx` asks linear layers to multiply in.
fn project(ctx: &Ctx, x: &Var, w: &Var, bias: Option<&Var>) -> Result<Var> {
    Ok(match ctx.matmul_dtype() {
        Some(dt) => x.linear_in(w, bias, dt)?,
        None => x.linear(w, bias)?,
    })
}

impl Linear {
    fn new(weight: Param, bias: Option<Param>) -> Linear {
        Linear { weight, bias, lora: Vec::new(), lora_scale: 0.0 }
    }

    /// Whether any part of the projection has an adapter.
    fn has_lora(&self) -> bool {
        self.lora.iter().any(|p| p.adapter.is_some())
    }

    /// `x @ weight^T + bias` (plus the adapters' update), in the dtype `ctx` asks linear
    /// layers to multiply in.
    fn forward(&self, ctx: &Ctx, x: &Var) -> Result<Var> {
        let bias = self.bias.as_ref().map(|b| ctx.param(b).to_dtype(DType::F32)).transpose()?;
        let y = project(ctx, x, &ctx.param(&self.weight), bias.as_ref())?;
        Ok(match self.lora_delta(ctx, x)? {
            Some(d) => y.add(&d)?,
            None => y,
        })
    }

    /// The adapters' update `s (x A^T) B^T` of every part, side by side (zeros for parts
    /// without one); `None` without adapters.
    fn lora_delta(&self, ctx: &Ctx, x: &Var) -> Result<Option<Var>> {
        if !self.has_lora() {
            return Ok(None);
        }
        let total = x.dims()[0];
        let parts = (self.lora.iter())
            .map(|p| match &p.adapter {
                Some((a, b)) => project(ctx, &project(ctx, x, &ctx.param(a), None)?, &ctx.param(b), None),
                None => Ok(Var::constant(Tensor::zeros((total, p.rows), DType::F32, x.value().device())?)),
            })
            .collect::<Result<Vec<Var>>>()?;
        let delta = match parts.as_slice() {
            [one] => one.clone(),
            _ => Var::cat(&parts.iter().collect::<Vec<_>>(), 1)?,
        };
        Ok(Some(delta.mul_scalar(self.lora_scale)?))
    }

    /// The weight with the adapters merged in, `W + s B A` per part (computed in f32,
    /// stored in the weight's dtype); `None` without adapters.
    fn merged_weight(&self) -> Result<Option<Tensor>> {
        if !self.has_lora() {
            return Ok(None);
        }
        let w = self.weight.value();
        let mut rows = Vec::with_capacity(self.lora.len());
        let mut row = 0;
        for p in &self.lora {
            let base = w.narrow(0, row, p.rows)?.to_dtype(DType::F32)?;
            rows.push(match &p.adapter {
                Some((a, b)) => base.add(&b.value().matmul(a.value())?.mul_scalar(self.lora_scale)?)?,
                None => base,
            });
            row += p.rows;
        }
        let merged = Tensor::cat(&rows.iter().collect::<Vec<_>>(), 0)?;
        Ok(Some(merged.to_dtype(w.dtype())?))
    }

    /// One projection computing all of `parts` (their outputs side by side), named `name`.
    fn stack(name: &str, parts: &[(Tensor, Option<Tensor>)]) -> Result<Linear> {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.0).collect();
        let bias = match parts.iter().map(|p| p.1.as_ref()).collect::<Option<Vec<_>>>() {
            Some(b) => Some(Param::new(format!("{name}.bias"), Tensor::cat(&b, 0)?)),
            None => None,
        };
        Ok(Linear::new(Param::new(format!("{name}.weight"), Tensor::cat(&weights, 0)?), bias))
    }
}

/// A Hugging Face tensor name, the parameter holding it, and its rows there when fused.
type HfEntry<'a> = (String, &'a Param, Option<(usize, usize)>);

/// Hugging Face entries of a fused projection: each part's weight (and bias) rows.
fn split<'a>(out: &mut Vec<HfEntry<'a>>, prefix: &str, lin: &'a Linear, parts: &[(&str, usize)]) {
    let mut row = 0;
    for &(name, rows) in parts {
        out.push((format!("{prefix}.{name}.weight"), &lin.weight, Some((row, rows))));
        if let Some(b) = &lin.bias {
            out.push((format!("{prefix}.{name}.bias"), b, Some((row, rows))));
        }
        row += rows;
    }
}

/// The sizes a layer needs.
#[derive(Clone, Copy)]
struct Dims {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    eps: f32,
}

/// One sequence of a packed forward: its rows in the batch, where it starts in its
/// sequence (its cache length), and its RoPE tables.
struct Span {
    row: usize,
    len: usize,
    start: usize,
    slot: usize,
    cos: Tensor,
    sin: Tensor,
}

/// A cached forward pass on a GPU: every sequence's cache writes and attention go through
/// one [`PagedBatch`] (one launch per layer for all of them), and RoPE runs over all rows
/// at once with these tables (`[total, head_dim / 2]`).
struct Paged {
    batch: PagedBatch,
    cos: Tensor,
    sin: Tensor,
}

/// Decode steps captured as a CUDA graph, kept by the KV cache whose pools they write (a
/// graph reads and writes fixed addresses: it lives no longer than the cache's pools and
/// the model's weights do within one rollout).
#[derive(Default)]
pub(crate) struct DecodeGraphs {
    pub steps: DecodeSteps,
    /// Shapes run once eagerly (the next step of one captures it).
    pub seen: std::collections::HashSet<GraphKey>,
    /// The graphs captured, by shape.
    pub captured: std::collections::HashMap<GraphKey, CapturedDecode>,
    pub captures: u64,
    pub replays: u64,
}

/// The padded number of rows and the KV pools' addresses.
pub(crate) type GraphKey = (usize, Vec<u64>);

/// Warps per (row, head) of paged attention on a GPU (flash decoding,
/// [`PagedBatch::with_key_splits`]): one per 128 positions the cache can hold, from 1 to 32,
/// so that a decode step of a few sequences over a long context keeps the GPU busy. It
/// depends on the cache alone, so eager, padded and graphed steps split alike (and give the
/// same bits). `ARTIST_ATTN_SPLITS=N` sets it.
fn key_splits(max_len: usize) -> usize {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| std::env::var("ARTIST_ATTN_SPLITS").ok().and_then(|v| v.parse().ok()));
    forced.unwrap_or(max_len / 128).clamp(1, 32)
}

/// Graphs a cache keeps at most: one per capture size ([`graph_batch_size`]).
const MAX_DECODE_GRAPHS: usize = 35;

pub(crate) struct CapturedDecode {
    graph: artist_tensor::cuda::Graph,
    /// Token ids, then the batch's arrays ([`PagedBatch::device_arrays`]).
    ints: Tensor,
    /// RoPE tables `[2, rows, head_dim / 2]`: cos, then sin.
    rope: Tensor,
    _paged: Paged,
    out: Tensor,
}

/// One decoder layer. q/k/v and gate/up are stored fused (their weight rows stacked), so
/// each pair or triple is one pass over the activations and one matrix product.
#[derive(Clone)]
struct Layer {
    dims: Dims,
    input_layernorm: Param, // [hidden]
    qkv_proj: Linear,       // [(heads + 2 kv_heads) * head_dim, hidden] + bias: q, k, v rows
    o_proj: Linear,         // [hidden, heads * head_dim], no bias (Qwen3: `attention_bias`)
    /// Qwen3: the RMSNorm weights `[head_dim]` every head of q, and of k, goes through
    /// before RoPE.
    qk_norm: Option<(Param, Param)>,
    post_attention_layernorm: Param,
    gate_up_proj: Linear, // [2 * intermediate, hidden]: gate rows, then up rows
    down_proj: Linear,    // [hidden, intermediate]
}

/// A norm weight as f32 (it may be stored in a half type).
fn norm_weight(ctx: &Ctx, p: &Param) -> Result<Var> {
    Ok(ctx.param(p).to_dtype(DType::F32)?)
}

/// `x: [total, heads * d]` with each head's `d` values through RMSNorm with weight `w`.
fn head_norm(ctx: &Ctx, x: &Var, w: &Param, heads: usize, eps: f32) -> Result<Var> {
    let (total, width) = (x.value().dim(0)?, x.value().dim(1)?);
    let d = width / heads;
    Ok(x.reshape((total, heads, d))?.rms_norm(&norm_weight(ctx, w)?, eps)?.reshape((total, width))?)
}

impl Layer {
    /// `x: [total, hidden]` -> `[total, hidden]`. With a cache (inference), each sequence's
    /// keys and values are appended to its slot and attention reads the slot; without one
    /// (training), attention reads the sequence's own keys and values.
    /// A cached forward pass on a GPU, every sequence at once: `x` is the residual stream
    /// before this layer and `delta` what the previous layer's MLP adds to it (fused here
    /// with the input norm); returns the stream after attention and this layer's MLP
    /// output. Per layer: one launch splits the projection, applies RoPE and writes the
    /// new keys and values into the cache, one attends for every sequence through its
    /// block table, and each residual add shares a pass with the norm after it.
    fn forward_paged(
        &self,
        ctx: &Ctx,
        x: &Tensor,
        delta: Option<&Tensor>,
        cache: &mut KvCache,
        l: usize,
        p: &Paged,
    ) -> Result<(Tensor, Tensor)> {
        let Dims { heads, head_dim: d, intermediate: i, eps, .. } = self.dims;
        let total = p.batch.rows();
        let w_in = norm_weight(ctx, &self.input_layernorm)?.into_value();
        let (x, h) = match delta {
            Some(delta) => x.add_rms_norm(delta, &w_in, eps)?,
            None => (x.clone(), x.rms_norm(&w_in, eps)?),
        };
        // The projection's bias is added inside the fused split/RoPE/cache write.
        let mut qkv = match ctx.matmul_dtype() {
            Some(dt) => h.linear_in(self.qkv_proj.weight.value(), None, dt)?,
            None => h.linear(self.qkv_proj.weight.value(), None)?,
        };
        if let Some(d) = self.qkv_proj.lora_delta(ctx, &Var::constant(h.clone()))? {
            qkv = qkv.add(d.value())?;
        }
        let bias = self.qkv_proj.bias.as_ref().map(|b| b.value().to_dtype(DType::F32)).transpose()?;
        // Qwen3's q/k norms run inside the same launch, after the bias, before RoPE.
        let norms = match &self.qk_norm {
            Some((wq, wk)) => Some((norm_weight(ctx, wq)?.into_value(), norm_weight(ctx, wk)?.into_value())),
            None => None,
        };
        let norm = norms.as_ref().map(|(q, k)| artist_tensor::QkNorm { q, k, eps });
        let q = cache.write_qkv_batch(l, &p.batch, &qkv, bias.as_ref(), norm, heads, &p.cos, &p.sin)?;
        let attn = cache.attend_batch(l, &p.batch, &q, (d as f32).powf(-0.5))?.reshape((total, heads * d))?;
        let o = self.o_proj.forward(ctx, &Var::constant(attn))?.into_value();
        let w_post = norm_weight(ctx, &self.post_attention_layernorm)?.into_value();
        let (x, h) = x.add_rms_norm(&o, &w_post, eps)?;
        let gate_up = self.gate_up_proj.forward(ctx, &Var::constant(h))?.into_value();
        let act = gate_up.narrow(1, 0, i)?.silu_mul(&gate_up.narrow(1, i, i)?)?;
        let down = self.down_proj.forward(ctx, &Var::constant(act))?.into_value();
        Ok((x, down))
    }

    fn forward(&self, ctx: &Ctx, x: &Var, spans: &[Span], mut cache: Option<(&mut KvCache, usize)>) -> Result<Var> {
        let Dims { heads, kv_heads, head_dim: d, eps, .. } = self.dims;
        let h = x.rms_norm(&norm_weight(ctx, &self.input_layernorm)?, eps)?;
        let qkv = self.qkv_proj.forward(ctx, &h)?; // [total, (heads + 2 kv_heads) * d]
        let mut q = qkv.narrow(1, 0, heads * d)?;
        let mut k = qkv.narrow(1, heads * d, kv_heads * d)?;
        let v = qkv.narrow(1, (heads + kv_heads) * d, kv_heads * d)?;
        if let Some((wq, wk)) = &self.qk_norm {
            q = head_norm(ctx, &q, wq, heads, eps)?;
            k = head_norm(ctx, &k, wk, kv_heads, eps)?;
        }
        let mut outs = Vec::with_capacity(spans.len());
        for s in spans {
            let t = s.len;
            let qi = q.narrow(0, s.row, t)?.reshape((1, t, heads, d))?.rope(&s.cos, &s.sin)?;
            let ki =
                k.narrow(0, s.row, t)?.reshape((1, t, kv_heads, d))?.rope(&s.cos, &s.sin)?.reshape((t, kv_heads, d))?;
            let vi = v.narrow(0, s.row, t)?.reshape((t, kv_heads, d))?;
            let qi = qi.reshape((t, heads, d))?;
            let (keys, values) = match cache.as_mut() {
                Some((cache, l)) => {
                    cache.write(*l, s.slot, s.start, ki.value(), &vi.value().contiguous()?)?;
                    let len = s.start + t;
                    // The CPU gathers the slot's blocks and attends as training does (the
                    // composition below CPU_FUSED_MIN_KEYS keys, keeping its agreement with
                    // transformers to the ulp; the fused kernels from there). Queries a chunk
                    // at a time, so a long prefill never holds all its `[heads, t, len]`
                    // scores at once; each row's numbers are unchanged.
                    let (kc, vc) = cache.read(*l, s.slot, len)?; // [len, kv_heads, d], gathered once
                    let mut parts = Vec::with_capacity(t.div_ceil(QUERY_CHUNK));
                    for a in (0..t).step_by(QUERY_CHUNK) {
                        let b = (a + QUERY_CHUNK).min(t);
                        let (kb, vb) = (kc.narrow(0, 0, s.start + b)?, vc.narrow(0, 0, s.start + b)?);
                        parts.push(attention(ctx, &qi.narrow(0, a, b - a)?, &Var::constant(kb), &Var::constant(vb))?);
                    }
                    outs.push(if parts.len() == 1 {
                        parts.pop().expect("one part")
                    } else {
                        Var::cat(&parts.iter().collect::<Vec<_>>(), 0)?
                    });
                    continue;
                }
                None => (ki, vi),
            };
            outs.push(attention(ctx, &qi, &keys, &values)?);
        }
        let attn = Var::cat(&outs.iter().collect::<Vec<_>>(), 0)?;
        let x = x.add(&self.o_proj.forward(ctx, &attn)?)?;
        let h = x.rms_norm(&norm_weight(ctx, &self.post_attention_layernorm)?, eps)?;
        let gate_up = self.gate_up_proj.forward(ctx, &h)?; // [total, 2 * intermediate]
        let act = gate_up.swiglu()?;
        Ok(x.add(&self.down_proj.forward(ctx, &act)?)?)
    }

    fn params(&self) -> Vec<&Param> {
        let mut out = vec![&self.input_layernorm];
        for l in [&self.qkv_proj, &self.o_proj] {
            out.push(&l.weight);
            out.extend(&l.bias);
        }
        if let Some((q, k)) = &self.qk_norm {
            out.extend([q, k]);
        }
        out.push(&self.post_attention_layernorm);
        for l in [&self.gate_up_proj, &self.down_proj] {
            out.push(&l.weight);
            out.extend(&l.bias);
        }
        for l in self.linears() {
            for p in &l.lora {
                if let Some((a, b)) = &p.adapter {
                    out.extend([a, b]);
                }
            }
        }
        out
    }

    fn linears(&self) -> [&Linear; 4] {
        [&self.qkv_proj, &self.o_proj, &self.gate_up_proj, &self.down_proj]
    }

    fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [&mut self.qkv_proj, &mut self.o_proj, &mut self.gate_up_proj, &mut self.down_proj]
    }
}

pub struct Qwen2 {
    pub config: Qwen2Config,
    /// Where every parameter, activation and KV cache of this model lives.
    device: Device,
    /// The LoRA adapters' settings, when the model has adapters.
    lora: Option<LoraSpec>,
    embed_tokens: Param, // [vocab, hidden], stored dtype
    layers: Vec<Layer>,
    norm: Param,            // [hidden]
    lm_head: Option<Param>, // [vocab, hidden]; None when tied to the embedding
}

impl Qwen2 {
    /// Loads a Hugging Face model directory (`config.json` + safetensors) onto the CPU.
    pub fn load(dir: &Path) -> Result<Qwen2> {
        Qwen2::load_on(dir, Device::Cpu)
    }

    /// Loads a Hugging Face model directory onto `device`: each tensor goes from the
    /// memory-mapped file to the device as it is read. A directory that also holds PEFT
    /// adapters (`adapter_config.json`, as a LoRA run's checkpoints do) loads with them, as
    /// transformers loads such a directory.
    pub fn load_on(dir: &Path, device: Device) -> Result<Qwen2> {
        let config = Qwen2Config::from_file(&dir.join("config.json"))?;
        let weights = Weights::open(dir)?;
        let mut model = Qwen2::from_weights_on(config, &weights, device)?;
        if dir.join(ADAPTER_CONFIG_FILE).exists() {
            model.load_lora(dir)?;
        }
        Ok(model)
    }

    /// Builds the model on the CPU from any source of named tensors (a checkpoint, random
    /// init). Every tensor keeps its stored dtype; norm weights and biases are widened to
    /// f32 where they are used.
    pub fn from_weights(config: Qwen2Config, w: &impl WeightSource) -> Result<Qwen2> {
        Qwen2::from_weights_on(config, w, Device::Cpu)
    }

    /// [`Qwen2::from_weights`] with every parameter on `device`.
    pub fn from_weights_on(config: Qwen2Config, w: &impl WeightSource, device: Device) -> Result<Qwen2> {
        let c = &config;
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let dims = Dims {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: d,
            intermediate: i,
            eps: c.rms_norm_eps as f32,
        };
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> { Ok(w.get(name, shape)?.to_device(device)?) };
        let param = |name: String, shape: &[usize]| -> Result<Param> {
            let t = get(&name, shape)?;
            Ok(Param::new(name, t))
        };
        let part = |name: &str, out: usize, inp: usize, bias: bool| -> Result<(Tensor, Option<Tensor>)> {
            Ok((
                get(&format!("{name}.weight"), &[out, inp])?,
                if bias { Some(get(&format!("{name}.bias"), &[out])?) } else { None },
            ))
        };
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let b = c.attention_bias;
                let qkv = [
                    part(&format!("{p}.self_attn.q_proj"), q, h, b)?,
                    part(&format!("{p}.self_attn.k_proj"), kv, h, b)?,
                    part(&format!("{p}.self_attn.v_proj"), kv, h, b)?,
                ];
                let (o_weight, o_bias) = part(&format!("{p}.self_attn.o_proj"), h, q, c.o_bias())?;
                let o_bias = o_bias.map(|t| Param::new(format!("{p}.self_attn.o_proj.bias"), t));
                let qk_norm = match c.qk_norm() {
                    true => Some((
                        param(format!("{p}.self_attn.q_norm.weight"), &[d])?,
                        param(format!("{p}.self_attn.k_norm.weight"), &[d])?,
                    )),
                    false => None,
                };
                let gate_up = [
                    part(&format!("{p}.mlp.gate_proj"), i, h, false)?,
                    part(&format!("{p}.mlp.up_proj"), i, h, false)?,
                ];
                Ok(Layer {
                    dims,
                    input_layernorm: param(format!("{p}.input_layernorm.weight"), &[h])?,
                    qkv_proj: Linear::stack(&format!("{p}.self_attn.qkv_proj"), &qkv)?,
                    o_proj: Linear::new(Param::new(format!("{p}.self_attn.o_proj.weight"), o_weight), o_bias),
                    qk_norm,
                    post_attention_layernorm: param(format!("{p}.post_attention_layernorm.weight"), &[h])?,
                    gate_up_proj: Linear::stack(&format!("{p}.mlp.gate_up_proj"), &gate_up)?,
                    down_proj: Linear::new(param(format!("{p}.mlp.down_proj.weight"), &[h, i])?, None),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = param("model.embed_tokens.weight".into(), &[c.vocab_size, h])?;
        // Some tied checkpoints still carry lm_head.weight; tying means the embedding is used.
        let lm_head =
            if c.tie_word_embeddings { None } else { Some(param("lm_head.weight".into(), &[c.vocab_size, h])?) };
        let norm = param("model.norm.weight".into(), &[h])?;
        Ok(Qwen2 { config, device, lora: None, embed_tokens, layers, norm, lm_head })
    }

    /// The device this model's parameters live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Every parameter once (the tied embedding once), in a fixed order. Names are the
    /// model's own: q/k/v appear fused as `self_attn.qkv_proj`, gate/up as `mlp.gate_up_proj`.
    pub fn params(&self) -> Vec<&Param> {
        let mut out = vec![&self.embed_tokens];
        for l in &self.layers {
            out.extend(l.params());
        }
        out.push(&self.norm);
        out.extend(&self.lm_head);
        out
    }

    /// The LoRA adapters' settings, when the model has adapters.
    pub fn lora(&self) -> Option<&LoraSpec> {
        self.lora.as_ref()
    }

    /// Gives the projections `spec` targets fresh LoRA adapters and freezes every other
    /// parameter: `A` uniform in `±1/sqrt(in)` (seeded by `seed` and the adapter's name),
    /// `B` zero, as PEFT starts them, so the model computes what it did.
    pub fn add_lora(&mut self, spec: &LoraSpec, seed: u64) -> Result<()> {
        self.attach_lora(spec, Some(seed))
    }

    /// [`Qwen2::add_lora`]; without a seed `A` starts at zero too (to be filled from a file,
    /// so no random draws are spent on it).
    fn attach_lora(&mut self, spec: &LoraSpec, seed: Option<u64>) -> Result<()> {
        use rand::{Rng, SeedableRng};
        spec.validate()?;
        if self.lora.is_some() {
            return Err(Error::Input("the model has LoRA adapters already".into()));
        }
        let c = &self.config;
        let d = c.head_dim;
        let (h, q, kv, i) = (c.hidden_size, c.num_attention_heads * d, c.num_key_value_heads * d, c.intermediate_size);
        let r = spec.rank;
        let device = self.device;
        let fresh = |name: String, rows: usize, inp: usize| -> Result<(Param, Param)> {
            let a = match seed {
                Some(seed) => {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ crate::weights::fnv1a(name.as_bytes()));
                    let bound = 1.0 / (inp as f32).sqrt();
                    let a: Vec<f32> = (0..r * inp).map(|_| rng.random_range(-bound..bound)).collect();
                    Tensor::from_vec(a, (r, inp), device)?
                }
                None => Tensor::zeros((r, inp), DType::F32, device)?,
            };
            Ok((
                Param::new(format!("{name}.lora_A.weight"), a),
                Param::new(format!("{name}.lora_B.weight"), Tensor::zeros((rows, r), DType::F32, device)?),
            ))
        };
        for p in self.params_mut() {
            p.set_trainable(false);
        }
        for (l, layer) in self.layers.iter_mut().enumerate() {
            // Each projection: its block, input width, and parts (module name, rows).
            let parts: [(&str, usize, &[Part]); 4] = [
                ("self_attn", h, &[("q_proj", q), ("k_proj", kv), ("v_proj", kv)]),
                ("self_attn", q, &[("o_proj", h)]),
                ("mlp", h, &[("gate_proj", i), ("up_proj", i)]),
                ("mlp", i, &[("down_proj", h)]),
            ];
            for (lin, (block, inp, parts)) in layer.linears_mut().into_iter().zip(parts) {
                lin.lora_scale = spec.scale();
                lin.lora = (parts.iter())
                    .map(|&(module, rows)| {
                        let name = format!("model.layers.{l}.{block}.{module}");
                        let adapter = spec.targets(&name).then(|| fresh(name, rows, inp)).transpose()?;
                        Ok(LoraPart { rows, adapter })
                    })
                    .collect::<Result<_>>()?;
            }
        }
        self.lora = Some(spec.clone());
        if self.lora_named().is_empty() {
            self.remove_lora();
            return Err(Error::Input(format!(
                "lora.target_modules {:?} matches no projection of this {}-layer model",
                spec.target_modules, self.config.num_hidden_layers
            )));
        }
        Ok(())
    }

    /// The model without its adapters: the base weights, shared with this model (no copy),
    /// as PEFT's `disable_adapter` computes. A LoRA run's KL reference.
    pub fn without_lora(&self) -> Qwen2 {
        let strip = |l: &Linear| Linear { lora: Vec::new(), lora_scale: 0.0, ..l.clone() };
        Qwen2 {
            config: self.config.clone(),
            device: self.device,
            lora: None,
            embed_tokens: self.embed_tokens.clone(),
            layers: (self.layers.iter())
                .map(|l| Layer {
                    qkv_proj: strip(&l.qkv_proj),
                    o_proj: strip(&l.o_proj),
                    gate_up_proj: strip(&l.gate_up_proj),
                    down_proj: strip(&l.down_proj),
                    ..l.clone()
                })
                .collect(),
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
        }
    }

    /// Adds the adapters of a PEFT adapter directory (`adapter_config.json`,
    /// `adapter_model.safetensors`), as [`Qwen2::add_lora`] does fresh ones.
    /// On an error the model is left as it was.
    pub fn load_lora(&mut self, dir: &Path) -> Result<()> {
        let spec = LoraSpec::from_peft_config(&dir.join(ADAPTER_CONFIG_FILE))?;
        self.attach_lora(&spec, None)?;
        let filled = self.fill_lora(dir);
        if filled.is_err() {
            self.remove_lora();
        }
        filled
    }

    /// Takes the adapters off and makes every other parameter trainable again.
    fn remove_lora(&mut self) {
        for lin in self.layers.iter_mut().flat_map(Layer::linears_mut) {
            (lin.lora, lin.lora_scale) = (Vec::new(), 0.0);
        }
        for p in self.params_mut() {
            p.set_trainable(true);
        }
        self.lora = None;
    }

    /// Copies the adapters of `dir/adapter_model.safetensors` into the fresh ones.
    fn fill_lora(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        let bytes = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::Safetensors { path: path.clone(), msg: e.to_string() })?;
        let mut expected = std::collections::BTreeSet::new();
        for (name, p) in self.lora_named() {
            let view =
                st.tensor(&name).map_err(|_| Error::MissingTensor { name: format!("{}: {name}", path.display()) })?;
            let dims = p.value().dims().to_vec();
            if view.shape() != dims.as_slice() {
                return Err(Error::TensorShape { name, expected: dims, got: view.shape().to_vec() });
            }
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F16 => DType::F16,
                other => return Err(Error::TensorDType { name, dtype: format!("{other:?}") }),
            };
            let t = Tensor::from_bytes(view.data(), dtype, dims, Device::Cpu)?.to_dtype(DType::F32)?;
            p.value().copy_from(&t.to_device(self.device)?)?;
            expected.insert(name);
        }
        if let Some(extra) = st.names().into_iter().find(|n| !expected.contains(*n)) {
            return Err(Error::Config {
                path,
                msg: format!("tensor {extra:?} is not an adapter of this model under adapter_config.json"),
            });
        }
        Ok(())
    }

    /// Each adapter parameter under PEFT's name
    /// (`base_model.model.model.layers.L.self_attn.q_proj.lora_A.weight`).
    fn lora_named(&self) -> Vec<(String, &Param)> {
        let mut out = Vec::new();
        for layer in &self.layers {
            for lin in layer.linears() {
                for part in &lin.lora {
                    if let Some((a, b)) = &part.adapter {
                        out.extend([a, b].map(|p| (format!("base_model.model.{}", p.name()), p)));
                    }
                }
            }
        }
        out
    }

    /// The adapters' tensors under PEFT's names (none without adapters).
    pub fn lora_tensors(&self) -> Vec<(String, Tensor)> {
        self.lora_named().into_iter().map(|(n, p)| (n, p.value().clone())).collect()
    }

    /// Writes the adapters into `dir` as PEFT does (`adapter_config.json`, naming `base`
    /// as the base model, and `adapter_model.safetensors`).
    pub fn save_lora(&self, dir: &Path, base: &str) -> Result<()> {
        let spec = self.lora.as_ref().ok_or_else(|| Error::Input("the model has no LoRA adapters to save".into()))?;
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let text = serde_json::to_string_pretty(&spec.peft_config(base)).expect("JSON");
        std::fs::write(&path, text).map_err(|source| Error::Io { path, source })?;
        crate::weights::save_safetensors(&self.lora_tensors(), &dir.join(ADAPTER_WEIGHTS_FILE))
    }

    /// [`Qwen2::hf_tensors`] with the adapters merged into the weights they adapt
    /// (`W + s B A`, in the weight's dtype): a plain model that computes what this one does.
    pub fn hf_tensors_merged(&self) -> Result<Vec<(String, Tensor)>> {
        let mut merged = std::collections::HashMap::new();
        for layer in &self.layers {
            for lin in layer.linears() {
                if let Some(w) = lin.merged_weight()? {
                    merged.insert(lin.weight.id(), w);
                }
            }
        }
        self.hf_named(|p| Some(merged.get(&p.id()).cloned().unwrap_or_else(|| p.value().clone())))
    }

    /// Every parameter once, mutably (the adapters' too).
    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut out = vec![&mut self.embed_tokens];
        for l in &mut self.layers {
            out.extend([&mut l.input_layernorm, &mut l.post_attention_layernorm]);
            if let Some((q, k)) = &mut l.qk_norm {
                out.extend([q, k]);
            }
            // Field by field (not `linears_mut`): the norms above are borrowed too.
            for lin in [&mut l.qkv_proj, &mut l.o_proj, &mut l.gate_up_proj, &mut l.down_proj] {
                out.push(&mut lin.weight);
                out.extend(&mut lin.bias);
                for part in &mut lin.lora {
                    if let Some((a, b)) = &mut part.adapter {
                        out.extend([a, b]);
                    }
                }
            }
        }
        out.push(&mut self.norm);
        out.extend(&mut self.lm_head);
        out
    }

    /// The parameters as Hugging Face stores them: fused projections split back into
    /// q/k/v and gate/up, each tensor in its stored dtype. What `save` writes.
    pub fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.hf_named(|p| Some(p.value().clone()))
    }

    /// `f` of each parameter (its gradient, its optimiser state, ...) under Hugging Face's
    /// names, fused tensors split by rows. Parameters where `f` gives `None` are left out.
    pub fn hf_named(&self, f: impl Fn(&Param) -> Option<Tensor>) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, p, rows) in self.hf_layout() {
            if let Some(t) = f(p) {
                out.push((
                    name,
                    match rows {
                        Some((start, len)) => t.narrow(0, start, len)?,
                        None => t,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Each Hugging Face tensor name with the parameter holding it and, for fused
    /// parameters, its rows there.
    fn hf_layout(&self) -> Vec<HfEntry<'_>> {
        let c = &self.config;
        let d = c.head_dim;
        let (q, kv, i) = (c.num_attention_heads * d, c.num_key_value_heads * d, c.intermediate_size);
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed_tokens, None)];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), &layer.input_layernorm, None));
            split(
                &mut out,
                &p,
                &layer.qkv_proj,
                &[("self_attn.q_proj", q), ("self_attn.k_proj", kv), ("self_attn.v_proj", kv)],
            );
            out.push((format!("{p}.self_attn.o_proj.weight"), &layer.o_proj.weight, None));
            if let Some(b) = &layer.o_proj.bias {
                out.push((format!("{p}.self_attn.o_proj.bias"), b, None));
            }
            if let Some((q, k)) = &layer.qk_norm {
                out.push((format!("{p}.self_attn.q_norm.weight"), q, None));
                out.push((format!("{p}.self_attn.k_norm.weight"), k, None));
            }
            out.push((format!("{p}.post_attention_layernorm.weight"), &layer.post_attention_layernorm, None));
            split(&mut out, &p, &layer.gate_up_proj, &[("mlp.gate_proj", i), ("mlp.up_proj", i)]);
            out.push((format!("{p}.mlp.down_proj.weight"), &layer.down_proj.weight, None));
        }
        out.push(("model.norm.weight".into(), &self.norm, None));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".into(), h, None));
        }
        out
    }

    /// Writes the weights as one Hugging Face `model.safetensors` at `path`.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        crate::weights::save_safetensors(&self.hf_tensors()?, path)
    }

    /// The output projection as a parameter (the embedding when tied).
    pub fn lm_head_param(&self) -> &Param {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// The output projection `[vocab, hidden]`.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head_param().value()
    }

    /// A cache sized for this model, on its device.
    pub fn new_cache(&self, slots: usize, max_len: usize) -> Result<KvCache> {
        KvCache::new_on(&self.config, slots, max_len, self.device)
    }

    /// [`Qwen2::new_cache`] holding keys and values as `dtype` (f32 or bf16; see
    /// [`KvCache::paged_in`]).
    pub fn new_cache_in(&self, slots: usize, max_len: usize, dtype: DType) -> Result<KvCache> {
        KvCache::paged_in(&self.config, slots, max_len, crate::DEFAULT_BLOCK_SIZE, self.device, dtype)
    }

    fn check_inputs(&self, inputs: &[SeqInput], cache: &KvCache) -> Result<()> {
        if inputs.is_empty() {
            return Err(Error::Input("forward needs at least one sequence".into()));
        }
        let mut seen = vec![false; cache.slots()];
        for s in inputs {
            cache.check_slot(s.slot)?;
            if std::mem::replace(&mut seen[s.slot], true) {
                return Err(Error::Input(format!("slot {} appears twice in one forward call", s.slot)));
            }
            if s.tokens.is_empty() {
                return Err(Error::Input(format!("slot {} was given no tokens", s.slot)));
            }
            if let Some(&id) = s.tokens.iter().find(|&&id| id as usize >= self.config.vocab_size) {
                return Err(Error::TokenOutOfRange { id, vocab_size: self.config.vocab_size });
            }
            let need = cache.len(s.slot) + s.tokens.len();
            if need > cache.max_len() {
                return Err(Error::Input(format!(
                    "slot {} would hold {need} tokens, more than the cache's {}",
                    s.slot,
                    cache.max_len()
                )));
            }
        }
        Ok(())
    }

    /// The decoder over packed `ids`, before the final norm: `[total, hidden]` f32.
    fn decode(
        &self,
        ctx: &Ctx,
        ids: &Tensor,
        spans: Arc<Vec<Span>>,
        mut cache: Option<&mut KvCache>,
        paged: Option<&Paged>,
    ) -> Result<Var> {
        if ctx.is_training() && cache.is_some() {
            return Err(Error::Input("a training forward reads no KV cache".into()));
        }
        let mut x = Var::embedding(ids, &ctx.param(&self.embed_tokens))?.to_dtype(DType::F32)?; // [total, hidden]
        if let (Some(p), Some(cache)) = (paged, cache.as_deref_mut()) {
            let (mut stream, mut delta) = (x.into_value(), None);
            for (l, layer) in self.layers.iter().enumerate() {
                let (s, d) = layer.forward_paged(ctx, &stream, delta.as_ref(), cache, l, p)?;
                (stream, delta) = (s, Some(d));
            }
            return Ok(Var::constant(match delta {
                Some(d) => stream.add(&d)?,
                None => stream,
            }));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            x = match cache.as_deref_mut() {
                Some(c) => layer.forward(ctx, &x, &spans, Some((c, l)))?,
                None if ctx.checkpointing() => {
                    let (layer, spans) = (layer.clone(), spans.clone());
                    checkpoint(ctx, &[&x], move |ctx, xs| {
                        layer.forward(ctx, &xs[0], &spans, None).map_err(|e| match e {
                            Error::Tensor(t) => t,
                            other => artist_tensor::Error::Invalid { op: "decoder layer", msg: other.to_string() },
                        })
                    })?
                }
                None => layer.forward(ctx, &x, &spans, None)?,
            };
        }
        Ok(x)
    }

    /// The spans of packed sequences `(slot, start, len)`, and the RoPE tables of all their
    /// rows, `[total, head_dim / 2]` (each span's tables are views of them: one upload).
    fn spans(&self, seqs: &[(usize, usize, usize)]) -> Result<(Vec<Span>, Tensor, Tensor)> {
        let c = &self.config;
        let pos: Vec<u32> = seqs.iter().flat_map(|&(_, start, len)| (start..start + len).map(|p| p as u32)).collect();
        let (inv_freq, scale) = c.rope_frequencies();
        let (cos, sin) = rope_tables_scaled(&pos, &inv_freq, scale, self.device)?;
        let mut row = 0;
        let spans = seqs
            .iter()
            .map(|&(slot, start, len)| {
                let s = Span { row, len, start, slot, cos: cos.narrow(0, row, len)?, sin: sin.narrow(0, row, len)? };
                row += len;
                Ok(s)
            })
            .collect::<Result<Vec<Span>>>()?;
        Ok((spans, cos, sin))
    }

    /// Runs the decoder over `inputs`, appending their keys and values to `cache`, and
    /// returns the final hidden states (after the last RMSNorm) of the requested rows:
    /// `[rows, hidden]` f32.
    pub fn forward_hidden(&self, inputs: &[SeqInput], cache: &mut KvCache, rows: Rows) -> Result<Tensor> {
        let _range = artist_tensor::nvtx::range("forward");
        self.check_inputs(inputs, cache)?;
        if cache.graphs.steps != DecodeSteps::Eager && inputs.iter().all(|s| s.tokens.len() == 1) {
            return self.decode_step_padded(inputs, cache);
        }
        self.forward_hidden_eager(inputs, cache, rows)
    }

    /// A decode step (one token per sequence) on a GPU, padded to a capture size
    /// ([`graph_batch_size`]) and, for [`DecodeSteps::Graphed`], run as a captured CUDA
    /// graph: the whole decoder, final norm included, is one launch. The first step of a
    /// shape (the padded number of rows, and the KV pools' addresses) runs eagerly, loading
    /// every kernel; the second captures the graph; later ones write their inputs (token
    /// ids, RoPE tables, the batch's block tables) into the graph's input tensors and replay
    /// it. The kernels are those of the eager padded step, so the results are the same bits.
    /// Padding rows decode token 0 at position 0 into the cache's spare block
    /// ([`KvCache::pad_block`]), which no sequence reads.
    fn decode_step_padded(&self, inputs: &[SeqInput], cache: &mut KvCache) -> Result<Tensor> {
        let (Device::Cuda(ordinal), Some(rows)) = (cache.device(), graph_batch_size(inputs.len())) else {
            return self.forward_hidden_eager(inputs, cache, Rows::Last);
        };
        // Allocating and reserving may grow the pools (new addresses): the key comes after.
        let pad = cache.pad_block()?;
        for s in inputs {
            cache.reserve(s.slot, cache.len(s.slot) + 1)?;
        }
        let graphed = cache.graphs.steps == DecodeSteps::Graphed;
        let key = (rows, cache.pool_addresses()?);
        let ready = graphed && cache.graphs.captured.contains_key(&key);
        let eager = !graphed || (!ready && cache.graphs.seen.insert(key.clone()));
        // Every input a replay reads, in two host buffers, so that a step costs two copies
        // to the GPU and one launch: token ids and the batch's arrays (u32), and the RoPE
        // tables (f32, cos then sin).
        let c = &self.config;
        let n = inputs.len();
        let pad_table = [pad];
        let mut pos: Vec<u32> = inputs.iter().map(|s| cache.len(s.slot) as u32).collect();
        pos.resize(rows, 0);
        let mut tables: Vec<(usize, usize, &[u32])> =
            inputs.iter().map(|s| (cache.len(s.slot), 1, cache.table(s.slot))).collect();
        tables.resize(rows, (0, 1, &pad_table[..]));
        let capacity = rows * cache.max_blocks_per_slot();
        let batch = PagedBatch::with_table_capacity(&tables, cache.block_size(), Device::Cpu, capacity)?
            .with_key_splits(key_splits(cache.max_len()));
        let mut ints: Vec<u32> = inputs.iter().map(|s| s.tokens[0]).collect();
        ints.resize(rows, 0);
        ints.extend(batch.device_arrays());
        let (inv_freq, scale) = c.rope_frequencies();
        let (cos, sin) = rope_tables_scaled(&pos, &inv_freq, scale, Device::Cpu)?;
        let mut rope = cos.to_vec::<f32>()?;
        rope.extend(sin.to_vec::<f32>()?);
        let out = if ready {
            let g = &cache.graphs.captured[&key];
            g.ints.write_host(&ints)?;
            g.rope.write_host(&rope)?;
            g.graph.replay()?;
            cache.graphs.replays += 1;
            g.out.narrow(0, 0, n)?.copy()?
        } else {
            let len = ints.len();
            let ints_dev = Tensor::from_vec(ints, len, self.device)?;
            let rope_dev = Tensor::from_vec(rope, (2, rows, c.head_dim / 2), self.device)?;
            let paged = Paged {
                batch: batch.on_device_in(&ints_dev, rows)?,
                cos: rope_dev.narrow(0, 0, 1)?.reshape((rows, c.head_dim / 2))?,
                sin: rope_dev.narrow(0, 1, 1)?.reshape((rows, c.head_dim / 2))?,
            };
            let ids = ints_dev.narrow(0, 0, rows)?;
            if eager {
                self.decode_final(&ids, cache, &paged)?.narrow(0, 0, n)?.copy()?
            } else {
                // Graphs of pools that are gone, or too many, give their memory back first.
                let pools = &key.1;
                cache.graphs.captured.retain(|k, _| &k.1 == pools);
                if cache.graphs.captured.len() >= MAX_DECODE_GRAPHS {
                    cache.graphs.captured.clear();
                }
                let mut result = None;
                let captured = artist_tensor::cuda::capture(ordinal, || {
                    result = Some(self.decode_final(&ids, cache, &paged));
                    Ok(())
                });
                let (graph, out) = match (captured, result) {
                    (Ok((graph, ())), Some(Ok(out))) => (graph, out),
                    // A capture the driver refuses must not stop the rollouts: this cache
                    // decodes eagerly from now on (nothing of the step ran: it was recorded).
                    (Err(e), _) | (_, Some(Err(Error::Tensor(e)))) => {
                        eprintln!("CUDA graph capture failed ({e}); decode steps run eagerly");
                        cache.set_decode_steps(DecodeSteps::Eager);
                        return self.forward_hidden_eager(inputs, cache, Rows::Last);
                    }
                    (_, Some(Err(e))) => return Err(e),
                    (Ok(_), None) => {
                        return Err(Error::Input("the graph capture did not run the decode step".into()));
                    }
                };
                graph.replay()?;
                cache.graphs.captures += 1;
                let copy = out.narrow(0, 0, n)?.copy()?;
                // `paged` holds views of the two buffers: kept, they keep the graph's inputs alive.
                cache
                    .graphs
                    .captured
                    .insert(key, CapturedDecode { graph, ints: ints_dev, rope: rope_dev, _paged: paged, out });
                copy
            }
        };
        for s in inputs {
            cache.advance(s.slot, 1);
        }
        Ok(out)
    }

    /// The cached decoder on a GPU and the final norm: `[rows, hidden]`.
    fn decode_final(&self, ids: &Tensor, cache: &mut KvCache, paged: &Paged) -> Result<Tensor> {
        let ctx = Ctx::inference().with_matmul_dtype(cache.matmul_dtype());
        let x = self.decode(&ctx, ids, Arc::new(Vec::new()), Some(cache), Some(paged))?;
        Ok(x.rms_norm(&norm_weight(&ctx, &self.norm)?, self.config.rms_norm_eps as f32)?.into_value())
    }

    fn forward_hidden_eager(&self, inputs: &[SeqInput], cache: &mut KvCache, rows: Rows) -> Result<Tensor> {
        for s in inputs {
            cache.reserve(s.slot, cache.len(s.slot) + s.tokens.len())?;
        }
        let seqs: Vec<(usize, usize, usize)> =
            inputs.iter().map(|s| (s.slot, cache.len(s.slot), s.tokens.len())).collect();
        let (spans, cos, sin) = self.spans(&seqs)?;
        // On a GPU the layers take all sequences at once; the CPU keeps the per-sequence
        // composition that matches transformers to the ulp.
        let paged = if cache.device().is_cuda() {
            let batch: Vec<(usize, usize, &[u32])> =
                seqs.iter().map(|&(slot, start, len)| (start, len, cache.table(slot))).collect();
            let batch =
                PagedBatch::new(&batch, cache.block_size(), self.device)?.with_key_splits(key_splits(cache.max_len()));
            Some(Paged { batch, cos, sin })
        } else {
            None
        };
        let ids: Vec<u32> = inputs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let total_tokens = ids.len();
        let ctx = Ctx::inference().with_matmul_dtype(cache.matmul_dtype());
        let ids = Tensor::from_vec(ids, total_tokens, self.device)?;
        let x = self.decode(&ctx, &ids, Arc::new(spans), Some(cache), paged.as_ref())?;
        for s in inputs {
            cache.advance(s.slot, s.tokens.len());
        }
        let x = match rows {
            Rows::All => x,
            Rows::Last => {
                let mut end = 0u32;
                let last: Vec<u32> = inputs
                    .iter()
                    .map(|s| {
                        end += s.tokens.len() as u32;
                        end - 1
                    })
                    .collect();
                x.index_select(&Tensor::from_vec(last, inputs.len(), self.device)?, 0)?
            }
        };
        Ok(x.rms_norm(&norm_weight(&ctx, &self.norm)?, self.config.rms_norm_eps as f32)?.into_value())
    }

    /// The training forward: whole sequences packed into one batch (no padding, no cache),
    /// recorded on `ctx`'s tape. Returns the final hidden states `[rows, hidden]` of the
    /// packed positions `rows` (indices into the concatenated sequences; all when `None`).
    /// With `ctx.checkpointing()`, each decoder layer keeps only its input and recomputes
    /// the rest in backward.
    pub fn hidden_states(&self, ctx: &Ctx, seqs: &[&[u32]], rows: Option<&[u32]>) -> Result<Var> {
        let _range = artist_tensor::nvtx::range("forward (training)");
        if seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
            return Err(Error::Input("a training forward needs at least one non-empty sequence".into()));
        }
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(Error::TokenOutOfRange { id, vocab_size: self.config.vocab_size });
        }
        let total = ids.len();
        let (spans, _, _) = self.spans(&seqs.iter().map(|s| (0, 0, s.len())).collect::<Vec<_>>())?;
        let ids = Tensor::from_vec(ids, total, self.device)?;
        let x = self.decode(ctx, &ids, Arc::new(spans), None, None)?;
        let x = match rows {
            None => x,
            Some(r) => {
                if let Some(&bad) = r.iter().find(|&&r| r as usize >= total) {
                    return Err(Error::Input(format!("row {bad} is outside the {total} packed positions")));
                }
                x.index_select(&Tensor::from_vec(r.to_vec(), r.len(), self.device)?, 0)?
            }
        };
        Ok(x.rms_norm(&norm_weight(ctx, &self.norm)?, self.config.rms_norm_eps as f32)?)
    }

    /// Logits `[rows, vocab]` (f32) for the requested rows of a forward call.
    pub fn forward(&self, inputs: &[SeqInput], cache: &mut KvCache, rows: Rows) -> Result<Tensor> {
        let h = self.forward_hidden(inputs, cache, rows)?;
        Ok(match cache.matmul_dtype() {
            Some(dt) => h.linear_in(self.lm_head_weight(), None, dt)?,
            None => h.linear(self.lm_head_weight(), None)?,
        })
    }

    /// Logits `[tokens.len(), vocab]` of one whole sequence, without a cache kept.
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        let mut cache = self.new_cache(1, tokens.len().max(1))?;
        self.forward(&[SeqInput { slot: 0, tokens }], &mut cache, Rows::All)
    }

    /// `log p(token_i | tokens_<i)` for i = 1..n, from one forward pass. The vocabulary
    /// projection and log-softmax run over chunks of positions, so `[n, vocab]` is never
    /// held at once.
    pub fn token_logprobs(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.len() < 2 {
            return Ok(vec![]);
        }
        let mut cache = self.new_cache(1, tokens.len())?;
        let h = self.forward_hidden(&[SeqInput { slot: 0, tokens }], &mut cache, Rows::All)?;
        let n = tokens.len() - 1;
        // The same chunked projection the trainer uses, with nothing recorded.
        let lp = artist_autograd::token_logprobs(
            &Var::constant(h.narrow(0, 0, n)?),
            &Var::constant(self.lm_head_weight().clone()),
            &tokens[1..],
            1.0,
            Some(64),
        )?;
        Ok(lp.into_value().to_vec::<f32>()?)
    }
}

/// Queries per attention call when decoding against the CPU cache: a 12k-token prefill of
/// a 4-head model then peaks at 4 x 512 x 12k f32 scores (0.1 GB) rather than 2.3 GB.
const QUERY_CHUNK: usize = 512;

/// Causal attention of one sequence. `q: [t, heads, d]` holds the last `t` positions of the
/// `len` cached ones; `k`, `v: [len, kv_heads, d]`. Head `h` reads KV head `h / (heads /
/// kv_heads)` (transformers' `repeat_kv`), without repeating K or V: one fused op on either
/// device (`Tensor::causal_attention`). Returns `[t, heads * d]`.
fn attention(ctx: &Ctx, q: &Var, k: &Var, v: &Var) -> Result<Var> {
    let [t, heads, d] = q.value().dims_n("attention")?;
    let scale = (d as f32).powf(-0.5);
    let out = match ctx.attention_dtype() {
        // Autocast-style: the inputs rounded to `dt` (bf16: the tensor cores on a GPU), the
        // output widened back; gradients flow back through both casts.
        Some(dt) if dt != q.value().dtype() => {
            let own = q.value().dtype();
            let (q, k, v) = (q.to_dtype(dt)?, k.to_dtype(dt)?, v.to_dtype(dt)?);
            Var::causal_attention(&q, &k, &v, scale)?.to_dtype(own)?
        }
        _ => Var::causal_attention(q, k, v, scale)?,
    };
    Ok(out.reshape((t, heads * d))?)
}
