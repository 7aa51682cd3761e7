//! The Qwen2 decoder, layer by layer as in transformers' `modeling_qwen2.py`:
//! embedding -> N x [RMSNorm -> attention (q/k/v with bias, RoPE, GQA) -> residual ->
//! RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> LM head (tied or not).
//!
//! A forward call takes a packed batch: any number of sequences, each appending any number
//! of tokens to its own KV-cache slot. Projections and MLPs run over all tokens at once;
//! attention runs per sequence over that sequence's cache, so sequences of different
//! lengths need no padding.

use std::path::Path;

use artist_tensor::{DType, Device, Tensor, rope_tables};

use crate::{Error, KvCache, Qwen2Config, Result, WeightSource, Weights};

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

struct Linear {
    weight: Tensor, // [out, in], stored dtype
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.linear(&self.weight, self.bias.as_ref())?)
    }

    /// One projection computing all of `parts` (their outputs side by side).
    fn stack(parts: &[Linear]) -> Result<Linear> {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let bias = match parts.iter().map(|p| p.bias.as_ref()).collect::<Option<Vec<_>>>() {
            Some(b) => Some(Tensor::cat(&b, 0)?),
            None => None,
        };
        Ok(Linear { weight: Tensor::cat(&weights, 0)?, bias })
    }
}

/// One decoder layer. q/k/v and gate/up are stored fused (their weight rows stacked), so
/// each pair or triple is one pass over the activations and one matrix product.
struct Layer {
    input_layernorm: Tensor, // [hidden] f32
    qkv_proj: Linear,        // [(heads + 2 kv_heads) * head_dim, hidden] + bias: q, k, v rows
    o_proj: Linear,          // [hidden, heads * head_dim], no bias
    post_attention_layernorm: Tensor,
    gate_up_proj: Linear, // [2 * intermediate, hidden]: gate rows, then up rows
    down_proj: Linear,    // [hidden, intermediate]
}

pub struct Qwen2 {
    pub config: Qwen2Config,
    embed_tokens: Tensor, // [vocab, hidden], stored dtype
    layers: Vec<Layer>,
    norm: Tensor,            // [hidden] f32
    lm_head: Option<Tensor>, // [vocab, hidden]; None when tied to the embedding
}

impl Qwen2 {
    /// Loads a Hugging Face model directory (`config.json` + safetensors).
    pub fn load(dir: &Path) -> Result<Qwen2> {
        let config = Qwen2Config::from_file(&dir.join("config.json"))?;
        let weights = Weights::open(dir)?;
        Qwen2::from_weights(config, &weights)
    }

    /// Builds the model from any source of named tensors (a checkpoint, random init).
    pub fn from_weights(config: Qwen2Config, w: &impl WeightSource) -> Result<Qwen2> {
        let c = &config;
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        // Norm weights and biases are small: keep them in f32 so they meet f32 activations.
        let f32_param =
            |name: &str, shape: &[usize]| -> Result<Tensor> { Ok(w.get(name, shape)?.to_dtype(DType::F32)?) };
        let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            Ok(Linear {
                weight: w.get(&format!("{name}.weight"), &[out, inp])?,
                bias: if bias { Some(f32_param(&format!("{name}.bias"), &[out])?) } else { None },
            })
        };
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let (q_proj, k_proj, v_proj) = (
                    linear(&format!("{p}.self_attn.q_proj"), q, h, true)?,
                    linear(&format!("{p}.self_attn.k_proj"), kv, h, true)?,
                    linear(&format!("{p}.self_attn.v_proj"), kv, h, true)?,
                );
                let (gate, up) = (
                    linear(&format!("{p}.mlp.gate_proj"), i, h, false)?,
                    linear(&format!("{p}.mlp.up_proj"), i, h, false)?,
                );
                Ok(Layer {
                    input_layernorm: f32_param(&format!("{p}.input_layernorm.weight"), &[h])?,
                    qkv_proj: Linear::stack(&[q_proj, k_proj, v_proj])?,
                    o_proj: linear(&format!("{p}.self_attn.o_proj"), h, q, false)?,
                    post_attention_layernorm: f32_param(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                    gate_up_proj: Linear::stack(&[gate, up])?,
                    down_proj: linear(&format!("{p}.mlp.down_proj"), h, i, false)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = w.get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        // Some tied checkpoints still carry lm_head.weight; tying means the embedding is used.
        let lm_head = if c.tie_word_embeddings { None } else { Some(w.get("lm_head.weight", &[c.vocab_size, h])?) };
        let norm = f32_param("model.norm.weight", &[h])?;
        Ok(Qwen2 { config, embed_tokens, layers, norm, lm_head })
    }

    /// The output projection `[vocab, hidden]`.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// A cache sized for this model.
    pub fn new_cache(&self, slots: usize, max_len: usize) -> Result<KvCache> {
        KvCache::new(&self.config, slots, max_len)
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

    /// Runs the decoder over `inputs`, appending their keys and values to `cache`, and
    /// returns the final hidden states (after the last RMSNorm) of the requested rows:
    /// `[rows, hidden]` f32.
    pub fn forward_hidden(&self, inputs: &[SeqInput], cache: &mut KvCache, rows: Rows) -> Result<Tensor> {
        self.check_inputs(inputs, cache)?;
        let c = &self.config;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let eps = c.rms_norm_eps as f32;
        let starts: Vec<usize> = inputs.iter().map(|s| cache.len(s.slot)).collect();
        let ids: Vec<u32> = inputs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let total = ids.len();
        // RoPE tables per sequence: positions start..start + t.
        let ropes = inputs
            .iter()
            .zip(&starts)
            .map(|(s, &start)| {
                let pos: Vec<u32> = (start..start + s.tokens.len()).map(|p| p as u32).collect();
                Ok(rope_tables(&pos, d, c.rope_theta as f32, Device::Cpu)?)
            })
            .collect::<Result<Vec<_>>>()?;

        let ids = Tensor::from_vec(ids, total, Device::Cpu)?;
        let mut x = Tensor::embedding(&ids, &self.embed_tokens)?.to_dtype(DType::F32)?; // [total, hidden]
        for (l, layer) in self.layers.iter().enumerate() {
            let h = x.rms_norm(&layer.input_layernorm, eps)?;
            let qkv = layer.qkv_proj.forward(&h)?; // [total, (heads + 2 kv_heads) * d]
            let q = qkv.narrow(1, 0, heads * d)?;
            let k = qkv.narrow(1, heads * d, kv_heads * d)?;
            let v = qkv.narrow(1, (heads + kv_heads) * d, kv_heads * d)?;
            let mut outs = Vec::with_capacity(inputs.len());
            let mut row = 0;
            for ((s, &start), (cos, sin)) in inputs.iter().zip(&starts).zip(&ropes) {
                let t = s.tokens.len();
                let qi = q.narrow(0, row, t)?.reshape((1, t, heads, d))?.rope(cos, sin)?;
                let ki = k.narrow(0, row, t)?.reshape((1, t, kv_heads, d))?.rope(cos, sin)?;
                let vi = v.narrow(0, row, t)?.reshape((t, kv_heads, d))?;
                let (kc, vc) = (cache.k[l].get(s.slot)?, cache.v[l].get(s.slot)?); // [max_len, kv_heads, d]
                kc.narrow(0, start, t)?.copy_from(&ki.reshape((t, kv_heads, d))?)?;
                vc.narrow(0, start, t)?.copy_from(&vi)?;
                let len = start + t;
                outs.push(attention(&qi.reshape((t, heads, d))?, &kc.narrow(0, 0, len)?, &vc.narrow(0, 0, len)?)?);
                row += t;
            }
            let attn = if outs.len() == 1 {
                outs.pop().expect("one")
            } else {
                Tensor::cat(&outs.iter().collect::<Vec<_>>(), 0)?
            };
            x = x.add(&layer.o_proj.forward(&attn)?)?;
            let h = x.rms_norm(&layer.post_attention_layernorm, eps)?;
            let gate_up = layer.gate_up_proj.forward(&h)?; // [total, 2 * intermediate]
            let i = c.intermediate_size;
            let act = gate_up.narrow(1, 0, i)?.silu_mul(&gate_up.narrow(1, i, i)?)?;
            x = x.add(&layer.down_proj.forward(&act)?)?;
        }
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
                x.index_select(&Tensor::from_vec(last, inputs.len(), Device::Cpu)?, 0)?
            }
        };
        Ok(x.rms_norm(&self.norm, eps)?)
    }

    /// Logits `[rows, vocab]` (f32) for the requested rows of a forward call.
    pub fn forward(&self, inputs: &[SeqInput], cache: &mut KvCache, rows: Rows) -> Result<Tensor> {
        let h = self.forward_hidden(inputs, cache, rows)?;
        Ok(h.linear(self.lm_head_weight(), None)?)
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
        let targets = Tensor::from_vec(tokens[1..].to_vec(), (n, 1), Device::Cpu)?;
        let mut out = Vec::with_capacity(n);
        const CHUNK: usize = 64;
        for start in (0..n).step_by(CHUNK) {
            let len = CHUNK.min(n - start);
            let logits = h.narrow(0, start, len)?.linear(self.lm_head_weight(), None)?;
            let lp = logits.log_softmax(-1)?.gather(1, &targets.narrow(0, start, len)?)?;
            out.extend(lp.to_vec::<f32>()?);
        }
        Ok(out)
    }
}

/// Causal attention of one sequence. `q: [t, heads, d]` holds the last `t` positions of the
/// `len` cached ones; `k`, `v: [len, kv_heads, d]`. Head `h` reads KV head `h / (heads /
/// kv_heads)` (transformers' `repeat_kv`), computed here without repeating K or V.
/// Returns `[t, heads * d]`.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let [t, heads, d] = q.dims_n("attention")?;
    let [len, kv_heads, _] = k.dims_n("attention")?;
    let rep = heads / kv_heads;
    // [t, kv, rep, d] -> [kv, rep * t, d]: each KV head's queries as one matrix.
    let q = q.reshape((t, kv_heads, rep, d))?.permute(&[1, 2, 0, 3])?.reshape((kv_heads, rep * t, d))?;
    let scores = q.matmul(&k.permute(&[1, 2, 0])?)?.mul_scalar((d as f32).powf(-0.5))?; // [kv, rep*t, len]
    let scores = if t > 1 {
        let mask = Tensor::causal_mask(t, len, Device::Cpu)?;
        scores.reshape((kv_heads, rep, t, len))?.masked_fill(&mask, f32::NEG_INFINITY)?.reshape((
            kv_heads,
            rep * t,
            len,
        ))?
    } else {
        scores
    };
    let out = scores.softmax(-1)?.matmul(&v.permute(&[1, 0, 2])?)?; // [kv, rep*t, d]
    Ok(out.reshape((kv_heads, rep, t, d))?.permute(&[2, 0, 1, 3])?.reshape((t, heads * d))?)
}
