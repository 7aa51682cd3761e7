//! One sequence, prefilled then decoded a token at a time against a preallocated KV cache.
//! The rollout engine (many sequences, tools in the loop) builds on the same pieces.

use artist_model::{KvCache, Qwen2, Rows, SeqInput};
use artist_tensor::DType;

use crate::{Error, Logits, Result, Sampler, SamplingParams};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends after any of these ids (the id itself is kept).
    pub eos_ids: Vec<u32>,
    /// The dtype the projections multiply in (`KvCache::set_matmul_dtype`); `None`: f32.
    pub matmul_dtype: Option<DType>,
    /// What the KV cache stores: f32 or bf16 (`Qwen2::new_cache_in`).
    pub kv_cache_dtype: DType,
}

impl GenerateOptions {
    /// f32 products and cache: exact to the reference model.
    pub fn new(max_new_tokens: usize, sampling: SamplingParams, eos_ids: Vec<u32>) -> GenerateOptions {
        GenerateOptions { max_new_tokens, sampling, eos_ids, matmul_dtype: None, kv_cache_dtype: DType::F32 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS id was sampled.
    Eos,
    /// The caller's stop check fired (a stop string, a tool's closing tag, ...).
    Stop,
    /// `max_new_tokens` were generated.
    Length,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// The new tokens, including the EOS or stop token that ended generation.
    pub token_ids: Vec<u32>,
    /// The logprob each token was sampled with (see `sampler`).
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
}

/// Generates up to `max_new_tokens` after `prompt`. `stop(new_token)` is called after every
/// token (a stream decoder can look for stop strings there) and ends generation when it
/// returns true.
pub fn generate(
    model: &Qwen2,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut stop: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    opts.sampling.validate().map_err(Error::Input)?;
    let mut cache: KvCache = model.new_cache_in(1, prompt.len() + opts.max_new_tokens, opts.kv_cache_dtype)?;
    cache.set_matmul_dtype(opts.matmul_dtype);
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut out = Generation { token_ids: vec![], logprobs: vec![], finish: FinishReason::Length };
    let mut next: Vec<u32> = prompt.to_vec();
    for _ in 0..opts.max_new_tokens {
        let logits = model.forward(&[SeqInput { slot: 0, tokens: &next }], &mut cache, Rows::Last)?;
        let (id, lp) = Logits::Tensor(logits).sample(&mut [(0, &mut sampler)])?[0];
        out.token_ids.push(id);
        out.logprobs.push(lp);
        if opts.eos_ids.contains(&id) {
            out.finish = FinishReason::Eos;
            break;
        }
        if stop(id) {
            out.finish = FinishReason::Stop;
            break;
        }
        next.clear();
        next.push(id);
    }
    Ok(out)
}
