//! The rollout engine: many sequences decoding together, tools called in the middle.
//!
//! Each prompt becomes a group of G rollouts. The prompt is prefilled once and its KV
//! cache forked into the G slots (or, with `share_prefix` off, prefilled G times), and
//! each rollout draws its first token from the prompt's logits with its own seeded
//! sampler. Then every step runs one forward over the rollouts that are decoding; a
//! rollout that closes a tool's tag (`</python>`) leaves the batch while its call runs on
//! a thread of its own, and comes back with the tool's output forced into it (mask 0).
//! Finished rollouts free their slot at once, and the next group takes it.
//!
//! Token ids flow end to end: what the model sampled is kept as sampled (never decoded and
//! re-encoded); only the tool's output is tokenized. Every response token carries the
//! logprob it was sampled with (0 for forced tokens) and its mask.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use artist_model::SeqInput;
use artist_tensor::DType;
use artist_tokenizer::{StreamDecoder, Tokenizer};
use artist_tools::{Tool, ToolCall, ToolResult};
use serde::Serialize;

use crate::policy::Policy;
use crate::{Error, Logits, Result, Sampler, SamplingParams};

#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// Rollouts per prompt (G).
    pub group_size: usize,
    /// Sampling; rollout `k` of prompt `p` uses seed `seed + p * G + k`.
    pub sampling: SamplingParams,
    /// Model tokens in one turn (from the start, or from the last tool output).
    pub max_turn_tokens: usize,
    /// Response tokens in all, model and forced.
    pub max_response_tokens: usize,
    /// Tool calls per rollout; the call past it ends the rollout instead of running.
    pub max_tool_calls: usize,
    /// Prompt plus response.
    pub max_context: usize,
    /// Rollouts decoding at once (KV-cache slots); at least `group_size`.
    pub max_batch: usize,
    /// Prefill each prompt once and fork it into its group's slots.
    pub share_prefix: bool,
    /// Every run forms the same batches: a rollout that calls a tool rejoins at the very
    /// next step (the engine waits for the call). A row's logits can change in the last bits
    /// with the rows batched beside it, so without this a tool's timing can nudge logprobs
    /// (and, over a long RL run, which tokens are drawn); with it, runs repeat to the bit
    /// and tools no longer overlap decoding.
    pub deterministic: bool,
    /// Token ids that end a rollout (kept in it).
    pub eos_ids: Vec<u32>,
    /// Texts that end a rollout once generated (`</answer>`), kept in it: any of them (as
    /// vLLM's `stop`).
    pub stop_texts: Vec<String>,
    /// How a tool's output is forced into the sequence; `{output}` is replaced.
    pub output_template: String,
    /// The dtype the policy's linear layers multiply in while rolling out (`Some(BF16)`:
    /// tensor-core GEMMs for prefills and large decode batches; see
    /// `KvCache::set_matmul_dtype`); `None`: f32.
    pub matmul_dtype: Option<DType>,
    /// What the KV cache stores keys and values as: f32 (exact), or bf16 (half the memory
    /// and the bytes each decode step reads; see `KvCache::paged_in`).
    pub kv_cache_dtype: DType,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            group_size: 1,
            sampling: SamplingParams::default(),
            max_turn_tokens: 1024,
            max_response_tokens: 8000,
            max_tool_calls: 8,
            max_context: 16_384,
            max_batch: 16,
            share_prefix: true,
            deterministic: false,
            eos_ids: vec![],
            stop_texts: vec!["</answer>".into()],
            output_template: "<output>\n{output}\n</output>\n".into(),
            matmul_dtype: None,
            kv_cache_dtype: DType::F32,
        }
    }
}

/// Why a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// An EOS id was sampled.
    Eos,
    /// The stop text (`</answer>`) was generated.
    Stop,
    /// `max_turn_tokens` model tokens in one turn.
    TurnTokens,
    /// `max_response_tokens` in all.
    ResponseTokens,
    /// A tool call past `max_tool_calls`.
    ToolCalls,
    /// `max_context` tokens of prompt and response.
    Context,
}

impl Finish {
    /// The finish reason as vLLM and OpenAI's API name it: `eos`, `stop`, `tool_calls`, or
    /// `length` for every token limit.
    pub fn reason(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Stop => "stop",
            Finish::ToolCalls => "tool_calls",
            Finish::TurnTokens | Finish::ResponseTokens | Finish::Context => "length",
        }
    }
}

/// One tool call of a rollout: the call text, the result, and where the forced output
/// sits in the response (`output_start..output_start + output_len`).
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallRecord {
    pub tool: String,
    pub call: String,
    pub result: ToolResult,
    pub output_start: usize,
    pub output_len: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rollout {
    /// Index of the prompt, and of this rollout in the prompt's group.
    pub prompt_index: usize,
    pub sample_index: usize,
    pub prompt_ids: Vec<u32>,
    /// The response: sampled and forced tokens in order.
    pub ids: Vec<u32>,
    /// The logprob each sampled token was drawn with; 0 for forced tokens.
    pub logprobs: Vec<f32>,
    /// 1 = sampled by the model (trained on), 0 = forced (tool output).
    pub mask: Vec<u8>,
    pub finish: Finish,
    pub tool_calls: Vec<ToolCallRecord>,
    /// What a tool reported when the rollout ended ([`Tool::final_state`]: an MCP
    /// environment's final state), for the verifier; never shown to the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_state: Option<String>,
}

impl Rollout {
    /// Tokens the model sampled.
    pub fn sampled_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 1).count()
    }
}

/// What a call of [`RolloutEngine::run`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RolloutStats {
    pub rollouts: usize,
    pub sampled_tokens: usize,
    pub forced_tokens: usize,
    pub prefill_tokens: usize,
    pub forward_calls: usize,
    pub tool_calls: usize,
    /// Seconds the engine had nothing to decode and waited on tools.
    pub tool_wait_s: f64,
    /// Seconds inside tool calls, summed over calls (they overlap).
    pub tool_busy_s: f64,
    pub wall_s: f64,
    /// The paged KV cache: positions per block, the most bytes held at once, and shared
    /// blocks copied on write (0 where the policy keeps no such count).
    pub kv_block_size: usize,
    pub kv_peak_bytes: usize,
    pub kv_cow_copies: usize,
    /// Prompt tokens not prefilled because a kept slot held them ([`RolloutEngine::run_keeping`]).
    pub reused_tokens: usize,
}

/// The cache [`RolloutEngine::run_keeping`] keeps between calls, and what each slot holds.
pub struct KeptCache<C> {
    cache: Option<C>,
    /// `(slots, max_len, dtype)` the cache was made for; another shape starts afresh.
    shape: (usize, usize, DType),
    /// Per slot: the tokens its cache holds since its last rollout ended.
    resident: Vec<Vec<u32>>,
    /// Per slot: when it was last handed out (for least-recently-used eviction).
    last_used: Vec<u64>,
    clock: u64,
}

impl<C> Default for KeptCache<C> {
    fn default() -> Self {
        KeptCache { cache: None, shape: (0, 0, DType::F32), resident: vec![], last_used: vec![], clock: 0 }
    }
}

impl<C> KeptCache<C> {
    /// The cache itself, if a call has made one.
    pub fn cache(&self) -> Option<&C> {
        self.cache.as_ref()
    }

    /// Takes `g` free slots for `prompt`: first the one whose kept tokens share the longest
    /// prefix with it (how many of them to reuse, short of the prompt's last token, which
    /// must be fed for its logits), then empty slots, then the least recently used.
    fn take_slots(&mut self, free: &mut Vec<usize>, prompt: &[u32], g: usize, keep: bool) -> (Vec<usize>, usize) {
        let common = |held: &[u32]| held.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let mut best: Option<(usize, usize)> = None; // (index in free, reuse)
        if keep {
            for (i, &s) in free.iter().enumerate() {
                let n = common(&self.resident[s]).min(prompt.len() - 1);
                if n > 0 && best.is_none_or(|(_, b)| n > b) {
                    best = Some((i, n));
                }
            }
        }
        let mut slots = Vec::with_capacity(g);
        let mut reuse = 0;
        if let Some((i, n)) = best {
            slots.push(free.swap_remove(i));
            reuse = n;
        }
        // Empty slots first, then the longest unused; the lowest-numbered among equals.
        free.sort_by_key(|&s| std::cmp::Reverse((!self.resident[s].is_empty(), self.last_used[s], s)));
        while slots.len() < g {
            slots.push(free.pop().expect("admitted with g free slots"));
        }
        for &s in &slots {
            self.clock += 1;
            self.last_used[s] = self.clock;
            self.resident[s].clear();
        }
        (slots, reuse)
    }
}

static NEXT_ROLLOUT_ID: AtomicU64 = AtomicU64::new(1);

enum State {
    /// Feeds `pending` at the next step.
    Decode,
    /// A tool call is running.
    Tool,
}

struct Seq<'t> {
    out: Rollout,
    id: u64,
    slot: usize,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    /// The response's text as decoded so far, and where to look for tags from.
    text: String,
    scan_from: usize,
    turn_tokens: usize,
    pending: Vec<u32>,
    /// Response tokens fed to the model so far (`out.ids[..fed]` are in the cache).
    fed: usize,
    state: State,
}

struct ToolDone {
    seq: usize,
    tool: String,
    call: String,
    result: ToolResult,
}

pub struct RolloutEngine<'a, P: Policy> {
    pub policy: &'a P,
    pub tokenizer: &'a Tokenizer,
    pub tools: Vec<Arc<dyn Tool>>,
    pub config: RolloutConfig,
}

impl<'a, P: Policy> RolloutEngine<'a, P> {
    fn check(&self, prompts: &[Vec<u32>]) -> Result<()> {
        let c = &self.config;
        c.sampling.validate().map_err(Error::Input)?;
        if c.group_size == 0 || c.max_batch < c.group_size {
            return Err(Error::Input(format!(
                "max_batch ({}) must hold at least one group of group_size ({}) rollouts",
                c.max_batch, c.group_size
            )));
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(Error::Input(format!("prompt {i} is empty")));
            }
            if p.len() >= c.max_context {
                return Err(Error::Input(format!(
                    "prompt {i} has {} tokens, leaving no room under max_context {}",
                    p.len(),
                    c.max_context
                )));
            }
            if let Some(&t) = p.iter().find(|&&t| t as usize >= self.policy.vocab_size()) {
                return Err(Error::Input(format!("prompt {i} has token {t}, outside the vocabulary")));
            }
        }
        Ok(())
    }

    /// G rollouts of every prompt, in prompt order (`prompt_index * G + sample_index`). Each
    /// rollout's cache blocks are handed back the moment it ends.
    pub fn run(&self, prompts: &[Vec<u32>]) -> Result<(Vec<Rollout>, RolloutStats)> {
        self.run_inner(prompts, None, &mut KeptCache::default(), false)
    }

    /// As [`RolloutEngine::run`], keeping the cache in `kept` between calls: a finished
    /// rollout's slot keeps the keys and values of its prompt and response, and a later
    /// prompt that starts with those tokens (the next turn of a conversation) prefills only
    /// what follows them. The caller holds the memory until `kept` is dropped.
    pub fn run_keeping(
        &self,
        prompts: &[Vec<u32>],
        kept: &mut KeptCache<P::Cache>,
    ) -> Result<(Vec<Rollout>, RolloutStats)> {
        self.run_inner(prompts, None, kept, true)
    }

    /// [`RolloutEngine::run_keeping`] with each prompt's own seed: rollout `k` of prompt `p`
    /// samples with `seeds[p] + k` instead of `sampling.seed + p * G + k`, so a prompt draws
    /// the same tokens whatever else is in the batch (episodes that end early, a batch split
    /// over ranks).
    pub fn run_keeping_seeded(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        kept: &mut KeptCache<P::Cache>,
    ) -> Result<(Vec<Rollout>, RolloutStats)> {
        if seeds.len() != prompts.len() {
            return Err(Error::Input(format!("{} seeds for {} prompts", seeds.len(), prompts.len())));
        }
        self.run_inner(prompts, Some(seeds), kept, true)
    }

    fn run_inner(
        &self,
        prompts: &[Vec<u32>],
        seeds: Option<&[u64]>,
        kept: &mut KeptCache<P::Cache>,
        keep: bool,
    ) -> Result<(Vec<Rollout>, RolloutStats)> {
        let _range = artist_tensor::nvtx::range("rollout");
        self.check(prompts)?;
        let c = &self.config;
        let g = c.group_size;
        let t0 = Instant::now();
        let mut stats = RolloutStats::default();
        let mut cache = match kept.cache.take() {
            Some(cache) if kept.shape == (c.max_batch, c.max_context, c.kv_cache_dtype) => cache,
            _ => {
                kept.resident = vec![vec![]; c.max_batch];
                kept.last_used = vec![0; c.max_batch];
                kept.shape = (c.max_batch, c.max_context, c.kv_cache_dtype);
                self.policy.new_cache_in(c.max_batch, c.max_context, c.kv_cache_dtype)?
            }
        };
        self.policy.set_matmul_dtype(&mut cache, c.matmul_dtype);
        let mut free: Vec<usize> = (0..c.max_batch).rev().collect();
        let mut queue: VecDeque<usize> = (0..prompts.len()).collect();
        let mut seqs: Vec<Option<Seq>> = Vec::new();
        // Each rollout with its id (the one its tool calls carried).
        let mut done: Vec<Option<(u64, Rollout)>> = (0..prompts.len() * g).map(|_| None).collect();
        let (tx, rx) = mpsc::channel::<ToolDone>();
        let mut in_tool = 0usize;

        loop {
            // Admit whole groups while their slots are free.
            while free.len() >= g
                && let Some(p) = queue.pop_front()
            {
                let (slots, reuse) = kept.take_slots(&mut free, &prompts[p], g, keep);
                let logits = self.prefill(&prompts[p], &slots, reuse, &mut cache, &mut stats)?;
                let mut group: Vec<Seq> = Vec::with_capacity(g);
                for (k, &slot) in slots.iter().enumerate() {
                    let mut params = c.sampling.clone();
                    params.seed = match seeds {
                        Some(seeds) => seeds[p].wrapping_add(k as u64),
                        None => params.seed.wrapping_add((p * g + k) as u64),
                    };
                    group.push(Seq {
                        out: Rollout {
                            prompt_index: p,
                            sample_index: k,
                            prompt_ids: prompts[p].clone(),
                            ids: vec![],
                            logprobs: vec![],
                            mask: vec![],
                            finish: Finish::Eos,
                            tool_calls: vec![],
                            final_state: None,
                        },
                        id: NEXT_ROLLOUT_ID.fetch_add(1, Ordering::Relaxed),
                        slot,
                        sampler: Sampler::new(params),
                        decoder: self.tokenizer.stream_decoder(false),
                        text: String::new(),
                        scan_from: 0,
                        turn_tokens: 0,
                        pending: vec![],
                        fed: 0,
                        state: State::Decode,
                    });
                }
                // All G draw their first tokens from the prompt's logits (one row when the
                // prefill was shared) in one call.
                let shared = logits.rows() == 1;
                let mut picks: Vec<(usize, &mut Sampler)> =
                    group.iter_mut().enumerate().map(|(k, s)| (if shared { 0 } else { k }, &mut s.sampler)).collect();
                let drawn = logits.sample(&mut picks)?;
                for (mut seq, (id, lp)) in group.into_iter().zip(drawn) {
                    let finished = self.take_sample(&mut seq, id, lp, seqs.len(), &tx, &mut stats)?;
                    if matches!(seq.state, State::Tool) {
                        in_tool += 1;
                    }
                    seqs.push(Some(seq));
                    if finished {
                        let at = seqs.len() - 1;
                        self.retire(&mut seqs, at, &mut cache, &mut free, &mut done, kept, keep);
                    }
                }
            }

            // Tool results that are back rejoin the batch (all of them, in order, when
            // deterministic).
            let mut results: Vec<ToolDone> = rx.try_iter().collect();
            if c.deterministic && results.len() < in_tool {
                let w = Instant::now();
                while results.len() < in_tool {
                    results.push(rx.recv().map_err(|_| Error::Input("a tool thread vanished".into()))?);
                }
                stats.tool_wait_s += w.elapsed().as_secs_f64();
            }
            if c.deterministic {
                results.sort_by_key(|r| r.seq);
            }
            let decoding = seqs.iter().flatten().filter(|s| matches!(s.state, State::Decode)).count();
            if decoding == 0 && results.is_empty() {
                if in_tool == 0 {
                    if queue.is_empty() {
                        break;
                    }
                    continue;
                }
                let w = Instant::now();
                results.push(rx.recv().map_err(|_| Error::Input("a tool thread vanished".into()))?);
                stats.tool_wait_s += w.elapsed().as_secs_f64();
            }
            for r in results {
                in_tool -= 1;
                stats.tool_busy_s += r.result.elapsed_ms as f64 / 1e3;
                let i = r.seq;
                let seq = seqs[i].as_mut().expect("a sequence waiting on a tool is live");
                if self.force_output(seq, r, &mut stats)? {
                    self.retire(&mut seqs, i, &mut cache, &mut free, &mut done, kept, keep);
                }
            }

            // One step for everything that is decoding.
            let live: Vec<usize> = seqs
                .iter()
                .enumerate()
                .filter(|(_, s)| s.as_ref().is_some_and(|s| matches!(s.state, State::Decode) && !s.pending.is_empty()))
                .map(|(i, _)| i)
                .collect();
            if live.is_empty() {
                continue;
            }
            let inputs: Vec<SeqInput> = live
                .iter()
                .map(|&i| {
                    let s = seqs[i].as_ref().expect("live");
                    SeqInput { slot: s.slot, tokens: &s.pending }
                })
                .collect();
            let logits = {
                let _range = artist_tensor::nvtx::range("decode step");
                self.policy.step(&inputs, &mut cache)?
            };
            stats.forward_calls += 1;
            let drawn = {
                let mut picks: Vec<(usize, &mut Sampler)> = Vec::with_capacity(live.len());
                let mut rest: &mut [Option<Seq>] = &mut seqs;
                let mut base = 0;
                for (row, &i) in live.iter().enumerate() {
                    let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - base);
                    let (head, tail) = tail.split_first_mut().expect("live index in range");
                    picks.push((row, &mut head.as_mut().expect("live").sampler));
                    rest = tail;
                    base = i + 1;
                }
                logits.sample(&mut picks)?
            };
            for (&i, (id, lp)) in live.iter().zip(drawn) {
                let seq = seqs[i].as_mut().expect("live");
                seq.fed += seq.pending.len();
                seq.pending.clear();
                let finished = self.take_sample(seq, id, lp, i, &tx, &mut stats)?;
                if matches!(seq.state, State::Tool) {
                    in_tool += 1;
                }
                if finished {
                    self.retire(&mut seqs, i, &mut cache, &mut free, &mut done, kept, keep);
                }
            }
        }
        let mut rollouts = Vec::with_capacity(done.len());
        for (id, mut r) in done.into_iter().map(|r| r.expect("every rollout finished")) {
            // Every rollout has ended, so each tool's report on it is in or on its way.
            r.final_state = self.tools.iter().find_map(|t| t.final_state(id));
            rollouts.push(r);
        }
        stats.rollouts = rollouts.len();
        if let Some(u) = self.policy.cache_usage(&cache) {
            (stats.kv_block_size, stats.kv_peak_bytes, stats.kv_cow_copies) =
                (u.block_size, u.peak_bytes(), u.cow_copies);
        }
        if keep {
            kept.cache = Some(cache);
        }
        stats.wall_s = t0.elapsed().as_secs_f64();
        Ok((rollouts, stats))
    }

    /// Prefills `prompt` for the slots of one group; the logits after the prompt, once
    /// (shared) or per slot. The first slot already holds the prompt's first `reuse` tokens
    /// (kept from an earlier call) when the policy can cut its cache back to them.
    fn prefill(
        &self,
        prompt: &[u32],
        slots: &[usize],
        reuse: usize,
        cache: &mut P::Cache,
        stats: &mut RolloutStats,
    ) -> Result<Logits> {
        let reuse = if reuse > 0 && self.policy.truncate(cache, slots[0], reuse)? { reuse } else { 0 };
        for (k, &s) in slots.iter().enumerate() {
            if k > 0 || reuse == 0 {
                self.policy.clear(cache, s);
            }
        }
        stats.forward_calls += 1;
        stats.reused_tokens += reuse;
        if self.config.share_prefix {
            let logits = self.policy.step(&[SeqInput { slot: slots[0], tokens: &prompt[reuse..] }], cache)?;
            for &s in &slots[1..] {
                self.policy.fork(cache, slots[0], s)?;
            }
            stats.prefill_tokens += prompt.len() - reuse;
            Ok(logits)
        } else {
            let inputs: Vec<SeqInput> = slots
                .iter()
                .enumerate()
                .map(|(k, &slot)| SeqInput { slot, tokens: if k == 0 { &prompt[reuse..] } else { prompt } })
                .collect();
            stats.prefill_tokens += prompt.len() * slots.len() - reuse;
            self.policy.step(&inputs, cache)
        }
    }

    /// Records the token `id` just sampled for `seq` (with its logprob `lp`) and acts on it:
    /// ends the rollout (returns true), starts a tool call, or queues the token for the next
    /// step.
    fn take_sample(
        &self,
        seq: &mut Seq<'a>,
        id: u32,
        lp: f32,
        index: usize,
        tx: &mpsc::Sender<ToolDone>,
        stats: &mut RolloutStats,
    ) -> Result<bool> {
        let c = &self.config;
        seq.out.ids.push(id);
        seq.out.logprobs.push(lp);
        seq.out.mask.push(1);
        seq.turn_tokens += 1;
        stats.sampled_tokens += 1;
        // Text is only looked at, never re-encoded; ids the tokenizer lacks add no text.
        let piece = seq.decoder.step(id).unwrap_or_default();
        seq.text.push_str(&piece);
        let finish = |seq: &mut Seq, f: Finish| {
            seq.out.finish = f;
            Ok(true)
        };
        if c.eos_ids.contains(&id) {
            return finish(seq, Finish::Eos);
        }
        // A tag can only have been completed by this token: look at the new text and the
        // few bytes before it, not the whole turn again.
        let mut tail = seq.text.len().saturating_sub(piece.len() + self.longest_marker()).max(seq.scan_from);
        while !seq.text.is_char_boundary(tail) {
            tail -= 1;
        }
        if c.stop_texts.iter().any(|stop| seq.text[tail..].contains(stop.as_str())) {
            return finish(seq, Finish::Stop);
        }
        if let Some((tool, call, end)) = self.find_call(&seq.text, seq.scan_from, tail) {
            if seq.out.tool_calls.len() >= c.max_tool_calls {
                return finish(seq, Finish::ToolCalls);
            }
            seq.scan_from = end;
            seq.state = State::Tool;
            // The closing token goes into the cache with the output that follows it.
            seq.pending.push(id);
            stats.tool_calls += 1;
            let (tx, rollout, prompt, sample) = (tx.clone(), seq.id, seq.out.prompt_index, seq.out.sample_index);
            std::thread::spawn(move || {
                let _range = artist_tensor::nvtx::range("tool call");
                let started = Instant::now();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    tool.execute(&ToolCall { text: call.clone(), rollout, prompt, sample })
                }))
                .unwrap_or_else(|_| ToolResult {
                    output: "the tool failed internally".into(),
                    success: false,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    ..Default::default()
                });
                let _ = tx.send(ToolDone { seq: index, tool: tool.name().to_string(), call, result });
            });
            return Ok(false);
        }
        if let Some(f) = self.limit(seq) {
            return finish(seq, f);
        }
        seq.pending.push(id);
        Ok(false)
    }

    /// The limit `seq` has reached, if any.
    fn limit(&self, seq: &Seq) -> Option<Finish> {
        let c = &self.config;
        let n = seq.out.ids.len();
        if seq.out.prompt_ids.len() + n >= c.max_context {
            Some(Finish::Context)
        } else if n >= c.max_response_tokens {
            Some(Finish::ResponseTokens)
        } else if seq.turn_tokens >= c.max_turn_tokens {
            Some(Finish::TurnTokens)
        } else {
            None
        }
    }

    /// The longest text the engine looks for (a closing tag, a stop text), in bytes.
    fn longest_marker(&self) -> usize {
        let tags = self.tools.iter().map(|t| t.tag().len() + 3);
        tags.chain(self.config.stop_texts.iter().map(String::len)).max().unwrap_or(0)
    }

    /// A call completed in `text[tail..]`: its tool, the text after the last opening tag
    /// (at or after `from`), and the byte just past the closing tag.
    fn find_call(&self, text: &str, from: usize, tail: usize) -> Option<(Arc<dyn Tool>, String, usize)> {
        self.tools
            .iter()
            .filter_map(|t| {
                let close = format!("</{}>", t.tag());
                let end = tail + text[tail..].find(&close)?;
                let open = format!("<{}>", t.tag());
                let start = text[from..end].rfind(&open).map_or(from, |i| from + i + open.len());
                Some((t.clone(), text[start..end].to_string(), end + close.len()))
            })
            .min_by_key(|(_, _, end)| *end)
    }

    /// Forces a tool's output into `seq` (mask 0), cut to the limits; returns true when a
    /// limit ends the rollout there.
    fn force_output(&self, seq: &mut Seq<'a>, r: ToolDone, stats: &mut RolloutStats) -> Result<bool> {
        let c = &self.config;
        let text = c.output_template.replace("{output}", &r.result.output);
        let mut ids =
            self.tokenizer.encode(&text).map_err(|e| Error::Input(format!("tokenizing a tool output: {e}")))?;
        let room = (c.max_context - seq.out.prompt_ids.len() - seq.out.ids.len())
            .min(c.max_response_tokens.saturating_sub(seq.out.ids.len()));
        let cut = ids.len() > room || ids.len() == room;
        ids.truncate(room);
        seq.out.tool_calls.push(ToolCallRecord {
            tool: r.tool,
            call: r.call,
            result: r.result,
            output_start: seq.out.ids.len(),
            output_len: ids.len(),
        });
        stats.forced_tokens += ids.len();
        seq.out.ids.extend_from_slice(&ids);
        seq.out.logprobs.extend(std::iter::repeat_n(0.0, ids.len()));
        seq.out.mask.extend(std::iter::repeat_n(0, ids.len()));
        // The output's text is not searched for tags: only what the model writes next is.
        seq.text.push_str(&seq.decoder.step_all(&ids).unwrap_or_default());
        seq.scan_from = seq.text.len();
        seq.turn_tokens = 0;
        if cut {
            seq.out.finish = self.limit(seq).unwrap_or(Finish::Context);
            return Ok(true);
        }
        seq.pending.extend_from_slice(&ids);
        seq.state = State::Decode;
        Ok(false)
    }

    /// Moves a finished rollout out, frees its slot and tells the tools it is over.
    #[allow(clippy::too_many_arguments)]
    fn retire(
        &self,
        seqs: &mut [Option<Seq<'a>>],
        i: usize,
        cache: &mut P::Cache,
        free: &mut Vec<usize>,
        done: &mut [Option<(u64, Rollout)>],
        kept: &mut KeptCache<P::Cache>,
        keep: bool,
    ) {
        let seq = seqs[i].take().expect("retired once");
        if keep {
            // What the slot's cache now holds: the prompt and the response tokens fed.
            let held = &mut kept.resident[seq.slot];
            held.clear();
            held.extend_from_slice(&seq.out.prompt_ids);
            held.extend_from_slice(&seq.out.ids[..seq.fed]);
        } else {
            self.policy.clear(cache, seq.slot);
        }
        free.push(seq.slot);
        for t in &self.tools {
            t.end_rollout(seq.id);
        }
        let at = seq.out.prompt_index * self.config.group_size + seq.out.sample_index;
        done[at] = Some((seq.id, seq.out));
    }
}
