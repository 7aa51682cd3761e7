//! The rollout engine against a scripted stand-in model (tool stops, forced outputs and
//! their masks, every limit, batching) and a tiny seeded Qwen2 (prefix sharing and the paged
//! cache's block size change no logprob; sampled logprobs equal a full recomputation).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use artist_engine::{Finish, Logits, Policy, Rollout, RolloutConfig, RolloutEngine, SamplingParams, ScriptedPolicy};
use artist_model::{DecodeSteps, KvCache, KvUsage, Qwen2, SeqInput};
use artist_tokenizer::Tokenizer;
use artist_tools::{Tool, ToolCall, ToolResult};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2").join(name)
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(fixture("tiny-gqa")).unwrap()
}

const EOS: u32 = 290; // <|im_end|> of the fixture tokenizer

/// Answers `<python>` calls with a fixed output after an optional delay; counts calls.
struct FakePython {
    output: String,
    delay: Duration,
    calls: AtomicUsize,
    ended: AtomicUsize,
}

impl FakePython {
    fn new(output: &str, delay_ms: u64) -> Arc<FakePython> {
        Arc::new(FakePython {
            output: output.into(),
            delay: Duration::from_millis(delay_ms),
            calls: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
        })
    }
}

impl Tool for FakePython {
    fn name(&self) -> &str {
        "python"
    }
    fn tag(&self) -> &str {
        "python"
    }
    fn execute(&self, call: &ToolCall) -> ToolResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        ToolResult {
            output: if call.text.contains("fail") { "Traceback: boom".into() } else { self.output.clone() },
            success: !call.text.contains("fail"),
            elapsed_ms: self.delay.as_millis() as u64,
            ..Default::default()
        }
    }
    fn end_rollout(&self, _rollout: u64) {
        self.ended.fetch_add(1, Ordering::SeqCst);
    }
}

/// A scripted policy: prompt `[key, ...]` makes the model write `script` (text, encoded).
fn scripted(tok: &Tokenizer, scripts: &[(u32, &str)]) -> ScriptedPolicy {
    let scripts: HashMap<u32, Vec<u32>> = scripts.iter().map(|(k, text)| (*k, tok.encode(text).unwrap())).collect();
    ScriptedPolicy { vocab_size: 311, eos: EOS, scripts }
}

fn config(g: usize) -> RolloutConfig {
    RolloutConfig {
        group_size: g,
        sampling: SamplingParams { temperature: 1.0, seed: 5, ..Default::default() },
        max_batch: 8,
        eos_ids: vec![EOS],
        ..Default::default()
    }
}

#[test]
fn tool_call_output_is_forced_with_mask_zero() {
    let tok = tokenizer();
    let before = "<think>six sevens</think><python>print(6*7)</python>";
    let after = "<answer>42</answer>";
    let policy = scripted(&tok, &[(7, &format!("{before}{after}"))]);
    let py = FakePython::new("42", 0);
    let engine = RolloutEngine { policy: &policy, tokenizer: &tok, tools: vec![py.clone()], config: config(2) };
    let (rollouts, stats) = engine.run(&[vec![7, 1, 2]]).unwrap();
    assert_eq!(rollouts.len(), 2);
    let forced = tok.encode("<output>\n42\n</output>\n").unwrap();
    let (a, b) = (tok.encode(before).unwrap(), tok.encode(after).unwrap());
    for r in &rollouts {
        assert_eq!(r.finish, Finish::Stop);
        let want: Vec<u32> = a.iter().chain(&forced).chain(&b).copied().collect();
        assert_eq!(r.ids, want);
        let mask: Vec<u8> = [vec![1; a.len()], vec![0; forced.len()], vec![1; b.len()]].concat();
        assert_eq!(r.mask, mask);
        assert!(r.logprobs.iter().zip(&r.mask).all(|(lp, m)| if *m == 0 { *lp == 0.0 } else { lp.abs() < 1e-6 }));
        assert_eq!(r.tool_calls.len(), 1);
        let c = &r.tool_calls[0];
        assert_eq!(
            (c.call.as_str(), c.output_start, c.output_len, c.result.success),
            ("print(6*7)", a.len(), forced.len(), true)
        );
        assert!(tok.decode(&r.ids, false).unwrap().contains("</python><output>\n42\n</output>\n<answer>"));
    }
    assert_eq!((rollouts[0].sample_index, rollouts[1].sample_index), (0, 1));
    assert_eq!(py.calls.load(Ordering::SeqCst), 2);
    assert_eq!(py.ended.load(Ordering::SeqCst), 2, "each rollout's end is announced to the tools");
    assert_eq!((stats.tool_calls, stats.forced_tokens, stats.prefill_tokens), (2, 2 * forced.len(), 3));
}

#[test]
fn every_limit_ends_a_rollout_and_is_recorded() {
    let tok = tokenizer();
    let long = "one two three four five six seven eight nine ten eleven twelve";
    let two_calls = "<python>a=1</python>then<python>b=2</python><answer>x</answer>";
    let policy = scripted(&tok, &[(1, long), (2, two_calls), (3, "done")]);
    let py = FakePython::new("ok", 0);
    let run = |cfg: RolloutConfig, prompt: Vec<u32>| {
        let engine = RolloutEngine { policy: &policy, tokenizer: &tok, tools: vec![py.clone()], config: cfg };
        engine.run(&[prompt]).unwrap().0.remove(0)
    };
    let r = run(RolloutConfig { max_turn_tokens: 5, ..config(1) }, vec![1]);
    assert_eq!((r.finish, r.ids.len()), (Finish::TurnTokens, 5));
    let r = run(RolloutConfig { max_response_tokens: 7, ..config(1) }, vec![1]);
    assert_eq!((r.finish, r.ids.len()), (Finish::ResponseTokens, 7));
    let r = run(RolloutConfig { max_context: 10, ..config(1) }, vec![1, 5, 6]);
    assert_eq!((r.finish, r.prompt_ids.len() + r.ids.len()), (Finish::Context, 10));
    let r = run(RolloutConfig { max_tool_calls: 1, ..config(1) }, vec![2]);
    assert_eq!((r.finish, r.tool_calls.len()), (Finish::ToolCalls, 1));
    assert!(tok.decode(&r.ids, false).unwrap().ends_with("<python>b=2</python>"));
    let r = run(config(1), vec![2]);
    assert_eq!((r.finish, r.tool_calls.len()), (Finish::Stop, 2));
    // Any of several stop texts ends it, as soon as it is written; none: only EOS or a limit.
    let r = run(RolloutConfig { stop_texts: vec!["never".into(), "then".into()], ..config(1) }, vec![2]);
    assert_eq!((r.finish, r.tool_calls.len()), (Finish::Stop, 1));
    assert!(tok.decode(&r.ids, false).unwrap().ends_with("</output>\nthen"));
    let r = run(RolloutConfig { stop_texts: vec!["three".into(), "never".into()], ..config(1) }, vec![1]);
    assert_eq!(r.finish, Finish::Stop);
    assert!(tok.decode(&r.ids, false).unwrap().ends_with("one two three"));
    let r = run(RolloutConfig { stop_texts: Vec::new(), ..config(1) }, vec![2]);
    assert_eq!((r.finish, r.tool_calls.len()), (Finish::Eos, 2));
    // The model's EOS (the scripted model emits it when its script runs out).
    let r = run(config(1), vec![3]);
    assert_eq!((r.finish, *r.ids.last().unwrap()), (Finish::Eos, EOS));
    // A tool output longer than the room left is cut there, and the limit recorded.
    let budget = tok.encode("<python>a=1</python>").unwrap().len() + 4;
    let r = run(RolloutConfig { max_response_tokens: budget, ..config(1) }, vec![2]);
    assert_eq!((r.finish, r.ids.len(), r.tool_calls[0].output_len), (Finish::ResponseTokens, budget, 4));
    assert_eq!(r.mask.iter().filter(|&&m| m == 0).count(), 4);
}

/// More prompts than slots, tools that take time: every rollout comes back in order, the
/// batch keeps decoding while calls run, and calls overlap.
#[test]
fn continuous_batching_with_slow_tools() {
    let tok = tokenizer();
    let policy = scripted(
        &tok,
        &[
            (1, "<python>slow</python><answer>1</answer>"),
            (2, "a b c d e f g h i j k l m n o p<answer>2</answer>"),
            (3, "<python>fail</python><answer>3</answer>"),
        ],
    );
    let py = FakePython::new("done", 300);
    let cfg = RolloutConfig { max_batch: 4, ..config(2) };
    let engine = RolloutEngine { policy: &policy, tokenizer: &tok, tools: vec![py.clone()], config: cfg };
    let prompts: Vec<Vec<u32>> = vec![vec![1], vec![2], vec![1], vec![3], vec![2]];
    let t = Instant::now();
    let (rollouts, stats) = engine.run(&prompts).unwrap();
    let wall = t.elapsed().as_secs_f64();
    assert_eq!(rollouts.len(), 10);
    for (i, r) in rollouts.iter().enumerate() {
        assert_eq!((r.prompt_index, r.sample_index), (i / 2, i % 2));
        assert_eq!(r.finish, Finish::Stop);
    }
    assert!(!rollouts[6].tool_calls[0].result.success, "a failing call is reported, not raised");
    assert!(tok.decode(&rollouts[6].ids, false).unwrap().contains("Traceback: boom"));
    // 6 calls of 0.3 s, at most 4 rollouts at once: overlapping calls finish well under 1.8 s.
    assert_eq!(py.calls.load(Ordering::SeqCst), 6);
    assert!(wall < 1.5, "tool calls did not overlap: {wall:.2} s");
    assert!(stats.tool_wait_s < stats.tool_busy_s, "{stats:?}");
}

#[test]
fn bad_settings_are_errors() {
    let tok = tokenizer();
    let policy = scripted(&tok, &[]);
    let engine = |cfg| RolloutEngine { policy: &policy, tokenizer: &tok, tools: vec![], config: cfg };
    assert!(engine(RolloutConfig { max_batch: 1, ..config(2) }).run(&[vec![1]]).is_err());
    assert!(engine(config(1)).run(&[vec![]]).is_err());
    assert!(engine(config(1)).run(&[vec![400]]).is_err());
    assert!(engine(RolloutConfig { max_context: 3, ..config(1) }).run(&[vec![1, 2, 3]]).is_err());
}

/// A real model: sharing the prompt's prefill changes no token and no logprob, and every
/// sampled logprob equals the model's own log-probability of that token given everything
/// before it, recomputed in one forward over the whole sequence.
#[test]
fn prefix_sharing_changes_no_logprob() {
    let tok = tokenizer();
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let prompts: Vec<Vec<u32>> = vec![tok.encode("Once upon a time").unwrap(), tok.encode("The cat").unwrap()];
    let cfg = RolloutConfig { max_turn_tokens: 24, max_batch: 8, ..config(4) };
    let run = |share: bool| {
        let engine = RolloutEngine {
            policy: &model,
            tokenizer: &tok,
            tools: vec![],
            config: RolloutConfig { share_prefix: share, ..cfg.clone() },
        };
        engine.run(&prompts).unwrap()
    };
    let ((shared, s1), (separate, s2)) = (run(true), run(false));
    assert_eq!((s1.prefill_tokens * 4, s2.prefill_tokens), (s2.prefill_tokens, s2.prefill_tokens));
    for (a, b) in shared.iter().zip(&separate) {
        assert_eq!(a.ids, b.ids);
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() <= 1e-5, "{x} vs {y}");
        }
    }
    let distinct: std::collections::HashSet<&Vec<u32>> = shared.iter().map(|r| &r.ids).collect();
    assert!(distinct.len() > 2, "the seeds give different rollouts");
    for r in &shared {
        let full: Vec<u32> = r.prompt_ids.iter().chain(&r.ids).copied().collect();
        let lp = model.token_logprobs(&full).unwrap();
        let p = r.prompt_ids.len();
        for (i, &sampled) in r.logprobs.iter().enumerate() {
            let want = lp[p + i - 1];
            assert!((sampled - want).abs() <= 1e-4, "token {i}: sampled with {sampled}, recomputed {want}");
        }
    }
}

/// Through a tool call, the KV cache holds exactly the rollout's tokens: the logits the
/// model produced at every step equal those of one forward over the finished sequence.
#[test]
fn cache_through_tool_calls_equals_a_full_forward() {
    let tok = tokenizer();
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let script = tok.encode("<python>x = 2</python> so <answer>1</answer>").unwrap();
    let guided = artist_engine::SteeredPolicy::new(&model, script, 1e4, true);
    let engine = RolloutEngine {
        policy: &guided,
        tokenizer: &tok,
        tools: vec![FakePython::new("42", 0)],
        config: RolloutConfig { max_batch: 1, ..config(1) },
    };
    let prompt = tok.encode("Compute:").unwrap();
    let (r, _) = engine.run(std::slice::from_ref(&prompt)).unwrap();
    let r = &r[0];
    assert_eq!((r.finish, r.tool_calls.len()), (Finish::Stop, 1));
    assert!(r.mask.contains(&0));
    let full: Vec<u32> = prompt.iter().chain(&r.ids).copied().collect();
    let logits = model.logits(&full).unwrap().to_vec2::<f32>().unwrap();
    let seen = guided.seen();
    let sampled: Vec<usize> = (0..r.ids.len()).filter(|&j| r.mask[j] == 1).collect();
    assert_eq!(seen.len(), sampled.len(), "one step per sampled token");
    for (row, &j) in seen.iter().zip(&sampled) {
        let want = &logits[prompt.len() + j - 1];
        let worst =
            row.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, |m, x| if x.is_nan() || x > m { x } else { m });
        assert!(worst <= 1e-4, "response token {j}: logits differ by {worst}");
    }
}

/// Device `cuda:0`: a GPU, or the CPU emulator of the CUDA backend where none is present;
/// `None` (saying why) where neither can run.
fn cuda_or_skip() -> Option<artist_tensor::Device> {
    match artist_tensor::cuda::test_backend() {
        Ok(_) => Some(artist_tensor::Device::cuda(0).unwrap()),
        Err(why) => {
            eprintln!("skipping: {why}");
            None
        }
    }
}

/// The rollout engine with the model on the CUDA backend (the CPU emulator of it where no GPU
/// is present): sampling on the device draws the tokens the CPU run draws, with the same
/// logprobs, and a tool call in the middle keeps the cache exact; attention splits each row's
/// keys over warps (flash decoding), as a long cache makes it.
#[test]
fn rollouts_on_the_cuda_backend_equal_the_cpu() {
    let Some(dev) = cuda_or_skip() else { return };
    let tok = tokenizer();
    let cpu = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let gpu = Qwen2::load_on(&fixture("tiny-gqa"), dev).unwrap();
    let prompts: Vec<Vec<u32>> = vec![tok.encode("Once upon a time").unwrap(), tok.encode("The cat").unwrap()];
    let cfg = RolloutConfig {
        max_turn_tokens: 16,
        max_batch: 8,
        sampling: SamplingParams { temperature: 0.9, top_p: 0.95, seed: 11, ..Default::default() },
        ..config(3)
    };
    let run = |model: &Qwen2| {
        RolloutEngine { policy: model, tokenizer: &tok, tools: vec![FakePython::new("42", 0)], config: cfg.clone() }
            .run(&prompts)
            .unwrap()
            .0
    };
    let a = run(&cpu);
    let launches = |k: &str| artist_tensor::cuda::thread_kernel_launches(k);
    let before = [launches("attn_combine_splits_f32"), launches("attn_fwd_paged_group_d64_f32")];
    let b = run(&gpu);
    // The default context (16,384 positions) splits each row's keys over 32 shares, and
    // the tiny model's pairs of heads share one warp per KV head.
    assert!(launches("attn_combine_splits_f32") > before[0], "keys were not split");
    assert!(launches("attn_fwd_paged_group_d64_f32") > before[1], "heads were not grouped");
    assert_eq!(a.len(), 6);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.ids, y.ids, "rollout {i}: tokens");
        assert_eq!(x.finish, y.finish);
        for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
            assert!((p - q).abs() <= 1e-4, "rollout {i}: logprob {p} on the CPU, {q} on CUDA");
        }
    }
}

/// Rollouts with bf16 products and a bf16 KV cache (`RolloutConfig::matmul_dtype`,
/// `kv_cache_dtype`): every projection rounds its activations and weights to bf16
/// (tensor-core GEMMs for prefills and large decode batches, the rounding gemv kernel for
/// small ones), and keys and values are stored as bf16 (the GPU's decode kernels read them
/// as they are). Where the CUDA run draws the CPU
/// run's tokens (at least 3 in 4), its logprobs are the CPU's to f32 reassociation (median
/// difference under 1e-5), except where another order of f32 sums rounds an activation to
/// the neighbouring bf16 value (all within 2e-2); and they are not the logprobs of f32
/// products (median difference over 1e-3 where the tokens agree).
#[test]
fn rollouts_with_bf16_products_and_cache_on_the_cuda_backend_equal_the_cpu() {
    let Some(dev) = cuda_or_skip() else { return };
    let tok = tokenizer();
    let cpu = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let gpu = Qwen2::load_on(&fixture("tiny-gqa"), dev).unwrap();
    let prompts: Vec<Vec<u32>> = ["Once upon a time there was", "The cat sat on the mat and", "A", "It was late"]
        .iter()
        .map(|p| tok.encode(p).unwrap())
        .collect();
    let run = |model: &Qwen2, bf16: bool| {
        let config = RolloutConfig {
            max_turn_tokens: 12,
            max_batch: 12,
            max_context: 256,
            sampling: SamplingParams { temperature: 0.9, seed: 5, ..Default::default() },
            matmul_dtype: bf16.then_some(artist_tensor::DType::BF16),
            kv_cache_dtype: if bf16 { artist_tensor::DType::BF16 } else { artist_tensor::DType::F32 },
            ..config(3)
        };
        RolloutEngine { policy: model, tokenizer: &tok, tools: vec![FakePython::new("42", 0)], config }
            .run(&prompts)
            .unwrap()
            .0
    };
    // (median, largest) difference of the logprobs of the tokens two runs share, and the
    // share of all tokens that the runs share.
    let gaps = |x: &[Rollout], y: &[Rollout]| {
        let mut all = vec![];
        for (r, s) in x.iter().zip(y) {
            let n = r.ids.iter().zip(&s.ids).take_while(|(p, q)| p == q).count();
            all.extend(r.logprobs[..n].iter().zip(&s.logprobs[..n]).map(|(p, q)| (p - q).abs()));
        }
        let total: usize = x.iter().map(|r| r.ids.len()).sum();
        all.sort_by(f32::total_cmp);
        (all[all.len() / 2], all[all.len() - 1], all.len() as f64 / total as f64)
    };
    let before = artist_tensor::cuda::thread_kernel_launches("attn_fwd_paged_group_d64_f32_bf16kv");
    let (a, b, f) = (run(&cpu, true), run(&gpu, true), run(&cpu, false));
    let read = artist_tensor::cuda::thread_kernel_launches("attn_fwd_paged_group_d64_f32_bf16kv") - before;
    assert!(read > 0, "the GPU did not read a bf16 cache");
    assert_eq!((a.len(), b.len()), (12, 12));
    // A logprob that moves by a flipped rounding can move a draw near a boundary of the
    // sampler's distribution: the runs may part after such a token, rarely.
    let (median, largest, shared) = gaps(&a, &b);
    eprintln!(
        "bf16 products: CPU and CUDA logprobs differ by {median:.1e} (median), {largest:.1e} (largest); \
         {:.0}% of the tokens shared",
        shared * 100.0
    );
    assert!(shared >= 0.75, "CPU and CUDA runs share only {:.0}% of their tokens", shared * 100.0);
    assert!(median <= 1e-5 && largest <= 2e-2, "CPU vs CUDA: median {median}, largest {largest}");
    let (median, ..) = gaps(&a, &f);
    assert!(median >= 1e-3, "bf16 products differ from f32 ones by only {median} (median)");
}

/// Qwen2 with decode steps as CUDA graphs or eager, counting the graphs' captures and
/// replays.
struct Graphed<'m> {
    model: &'m Qwen2,
    steps: DecodeSteps,
    counts: std::cell::Cell<(u64, u64)>,
    /// The numbers of sequences of the decode steps.
    sizes: std::cell::RefCell<std::collections::BTreeSet<usize>>,
    /// GPU launches of the latest step whose inputs were one token each.
    decode_launches: std::cell::Cell<u64>,
}

impl Policy for Graphed<'_> {
    type Cache = KvCache;
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }
    fn new_cache(&self, slots: usize, max_len: usize) -> artist_engine::Result<KvCache> {
        let mut c = Policy::new_cache(self.model, slots, max_len)?;
        c.set_decode_steps(self.steps);
        Ok(c)
    }
    fn step(&self, inputs: &[SeqInput], cache: &mut KvCache) -> artist_engine::Result<Logits> {
        let before = artist_tensor::cuda::thread_launch_count();
        let out = self.model.step(inputs, cache);
        if inputs.iter().all(|s| s.tokens.len() == 1) {
            self.decode_launches.set(artist_tensor::cuda::thread_launch_count() - before);
            self.sizes.borrow_mut().insert(inputs.len());
        }
        self.counts.set(cache.graph_counts());
        out
    }
    fn fork(&self, cache: &mut KvCache, from: usize, to: usize) -> artist_engine::Result<()> {
        self.model.fork(cache, from, to)
    }
    fn clear(&self, cache: &mut KvCache, slot: usize) {
        Policy::clear(self.model, cache, slot)
    }
}

/// Decode steps replayed from captured CUDA graphs give the padded eager steps' tokens and
/// logprobs to the bit (the same kernels on the same inputs), through tool calls, finished
/// rollouts (fewer sequences) and prefix sharing; the graphs are used (each capture size
/// is captured once and replayed from then on, so a rollout whose sequences finish one by
/// one captures a graph per size, not per count); and padding changes nothing a sequence
/// sees: on the emulator, whose kernels compute each row alone, not a bit, and on a GPU,
/// where cuBLAS may pick another algorithm for another number of rows, logprobs within
/// rounding.
#[test]
fn cuda_graph_decode_steps_equal_eager_ones_to_the_bit() {
    let Some(dev) = cuda_or_skip() else { return };
    let emulated = artist_tensor::cuda::backend() == artist_tensor::cuda::Backend::Emulator;
    let tok = tokenizer();
    let gpu = Qwen2::load_on(&fixture("tiny-gqa"), dev).unwrap();
    // Prompts of four lengths and one context limit: the groups finish one after another,
    // so the decode steps shrink from 8 sequences to 2.
    let prompts: Vec<Vec<u32>> =
        ["Once upon a time there", "Once upon a time", "The cat", "A"].iter().map(|p| tok.encode(p).unwrap()).collect();
    let cfg = RolloutConfig {
        max_turn_tokens: 32,
        max_context: 28,
        max_batch: 8,
        sampling: SamplingParams { temperature: 0.9, top_p: 0.95, seed: 3, ..Default::default() },
        ..config(2)
    };
    let run = |steps: DecodeSteps| {
        let policy = Graphed {
            model: &gpu,
            steps,
            counts: Default::default(),
            sizes: Default::default(),
            decode_launches: Default::default(),
        };
        let out = RolloutEngine {
            policy: &policy,
            tokenizer: &tok,
            tools: vec![FakePython::new("42", 0)],
            config: cfg.clone(),
        }
        .run(&prompts)
        .unwrap()
        .0;
        (out, policy.counts.get(), policy.decode_launches.get(), policy.sizes.take())
    };
    let (eager, none, eager_launches, _) = run(DecodeSteps::Eager);
    let (padded, none_padded, _, _) = run(DecodeSteps::Padded);
    let (graphed, (captures, replays), graph_launches, sizes) = run(DecodeSteps::Graphed);
    let buckets: std::collections::BTreeSet<usize> =
        sizes.iter().map(|&n| artist_model::graph_batch_size(n).unwrap()).collect();
    eprintln!(
        "graphs: {captures} captured, {replays} replays, for decode steps of {sizes:?} sequences (padded to \
         {buckets:?}); launches per decode step (model only): eager {eager_launches}, graphed {graph_launches}"
    );
    assert!(graph_launches < eager_launches / 3, "{graph_launches} launches graphed, {eager_launches} eager");
    assert_eq!((none, none_padded), ((0, 0), (0, 0)));
    assert!(captures >= 1 && replays > captures, "{captures} captures, {replays} replays");
    assert!(captures as usize <= buckets.len(), "{captures} captures for the sizes {buckets:?}");
    assert!(sizes.len() > buckets.len(), "the rollouts should decode more counts {sizes:?} than sizes {buckets:?}");
    let bits = |v: &[f32]| v.iter().map(|l| l.to_bits()).collect::<Vec<_>>();
    assert_eq!(padded.len(), graphed.len());
    for (i, (x, y)) in padded.iter().zip(&graphed).enumerate() {
        assert_eq!(x.ids, y.ids, "rollout {i}: tokens");
        assert_eq!(x.finish, y.finish);
        assert_eq!(bits(&x.logprobs), bits(&y.logprobs), "rollout {i}: logprobs");
    }
    assert_eq!(eager.len(), padded.len());
    for (i, (x, y)) in eager.iter().zip(&padded).enumerate() {
        if emulated {
            assert_eq!(x.ids, y.ids, "rollout {i}: tokens");
            assert_eq!(bits(&x.logprobs), bits(&y.logprobs), "rollout {i}: logprobs");
        } else {
            // Tokens may part at a near tie; up to there the logprobs agree within rounding.
            let same = x.ids.iter().zip(&y.ids).take_while(|(a, b)| a == b).count();
            for (k, (a, b)) in x.logprobs.iter().zip(&y.logprobs).take(same).enumerate() {
                assert!((a - b).abs() <= 1e-3, "rollout {i}, token {k}: logprob {a} eager, {b} padded");
            }
        }
    }
}

/// Qwen2 with a paged cache of a chosen block size.
struct Paged<'m> {
    model: &'m Qwen2,
    block: usize,
}

impl Policy for Paged<'_> {
    type Cache = KvCache;
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }
    fn new_cache(&self, slots: usize, max_len: usize) -> artist_engine::Result<KvCache> {
        Ok(KvCache::paged(&self.model.config, slots, max_len, self.block, self.model.device())?)
    }
    fn step(&self, inputs: &[SeqInput], cache: &mut KvCache) -> artist_engine::Result<Logits> {
        self.model.step(inputs, cache)
    }
    fn fork(&self, cache: &mut KvCache, from: usize, to: usize) -> artist_engine::Result<()> {
        self.model.fork(cache, from, to)
    }
    fn clear(&self, cache: &mut KvCache, slot: usize) {
        Policy::clear(self.model, cache, slot)
    }
    fn cache_usage(&self, cache: &KvCache) -> Option<KvUsage> {
        Some(cache.usage())
    }
}

/// The paged cache's layout is invisible in the numbers: blocks of 1, 3, 16 positions give
/// the tokens and, to the bit, the logprobs of one block per sequence, with and without
/// prefix sharing, through tool calls (which free and refill slots). Sharing holds
/// fewer blocks at its peak and copies the prompt's partly filled last block on write.
#[test]
fn paged_cache_block_size_and_sharing_change_no_logprob() {
    let tok = tokenizer();
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let prompts: Vec<Vec<u32>> =
        vec![tok.encode("Once upon a time there was").unwrap(), tok.encode("The cat sat").unwrap()];
    let cfg = RolloutConfig {
        max_turn_tokens: 20,
        max_batch: 4,
        max_context: 96,
        sampling: SamplingParams { temperature: 0.9, seed: 3, ..Default::default() },
        ..config(3)
    };
    let run = |block: usize, share: bool| {
        let policy = Paged { model: &model, block };
        let engine = RolloutEngine {
            policy: &policy,
            tokenizer: &tok,
            tools: vec![FakePython::new("42", 0)],
            config: RolloutConfig { share_prefix: share, ..cfg.clone() },
        };
        engine.run(&prompts).unwrap()
    };
    // One block per sequence (the unpaged layout) is the reference, shared and not.
    let (want_shared, _) = run(96, true);
    let (want_separate, _) = run(96, false);
    assert!(want_shared.iter().map(|r| &r.ids).collect::<std::collections::HashSet<_>>().len() > 2);
    let bits = |r: &artist_engine::Rollout| r.logprobs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // A prompt prefilled once or batched G times may differ in the last bits (other matrix
    // shapes), and so, rarely, in a sampled token: where two candidates' probabilities
    // nearly tie, their order decides which of them a draw lands on. Up to a rollout's
    // first such token the two agree to 1e-5 in every logprob; at most one rollout may
    // part, and most tokens come before any parting.
    let (mut agreed, mut total, mut parted) = (0, 0, 0);
    for (a, b) in want_shared.iter().zip(&want_separate) {
        let same = a.ids.iter().zip(&b.ids).take_while(|(x, y)| x == y).count();
        for (x, y) in a.logprobs[..same].iter().zip(&b.logprobs[..same]) {
            assert!((x - y).abs() <= 1e-5, "{x} vs {y}");
        }
        parted += usize::from(same < a.ids.len().max(b.ids.len()));
        (agreed, total) = (agreed + same, total + a.ids.len());
    }
    assert!(parted <= 1 && agreed * 10 >= total * 8, "{parted} rollouts parted; {agreed} of {total} tokens agree");
    for block in [1, 3, 16, 96] {
        let (shared, s) = run(block, true);
        let (separate, n) = run(block, false);
        for (what, got, want) in [("shared", &shared, &want_shared), ("separate", &separate, &want_separate)] {
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert_eq!(a.ids, b.ids, "block {block}, {what}: rollout {i} tokens");
                assert_eq!(bits(a), bits(b), "block {block}, {what}: rollout {i} logprobs");
            }
        }
        assert_eq!(s.kv_block_size, block);
        assert_eq!(n.kv_cow_copies, 0);
        if block < 96 {
            // One block per sequence can hold nothing shared past the first write.
            let (a, b) = (s.kv_peak_bytes, n.kv_peak_bytes);
            assert!(a < b, "block {block}: shared peak {a} bytes vs {b}");
        }
        if block == 16 {
            // Both prompts end inside their first block, which every rollout then writes.
            assert!(s.kv_cow_copies > 0, "block {block}: no shared block was copied");
        }
    }
}

/// Multi-turn conversations through a kept cache: each turn's prompt is the previous turn's
/// prompt and response plus a new user message, and the slot that ended the previous turn
/// already holds all but the message. Reusing it prefills only the new tokens and changes
/// no sampled token; logprobs agree with prefilling everything within float reassociation.
/// More conversations than slots evict kept slots, least recently used first, and stay
/// exact.
#[test]
fn kept_cache_reuses_earlier_turns() {
    let tok = tokenizer();
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    for (conversations, max_batch) in [(3, 4), (5, 2)] {
        let cfg = RolloutConfig {
            max_turn_tokens: 12,
            max_batch,
            max_context: 160,
            sampling: SamplingParams { temperature: 0.8, seed: 9, ..Default::default() },
            ..config(1)
        };
        let engine = RolloutEngine { policy: &model, tokenizer: &tok, tools: vec![], config: cfg };
        let mut kept = artist_engine::KeptCache::default();
        let mut fresh: Vec<Vec<u32>> =
            (0..conversations).map(|i| tok.encode(&format!("Story {i}: once upon a time")).unwrap()).collect();
        let mut reusing = fresh.clone();
        for turn in 0..3 {
            let (a, sa) = engine.run(&fresh).unwrap();
            let (b, sb) = engine.run_keeping(&reusing, &mut kept).unwrap();
            let what = format!("{conversations} conversations in {max_batch} slots, turn {turn}");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.ids, y.ids, "{what}: tokens");
                for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
                    assert!((p - q).abs() <= 1e-4, "{what}: logprob {p} fresh, {q} reusing");
                }
            }
            assert_eq!(sa.reused_tokens, 0);
            assert_eq!(sb.prefill_tokens + sb.reused_tokens, sa.prefill_tokens, "{what}");
            if turn > 0 && conversations <= max_batch {
                // Every conversation found its slot: only the last sampled token (never fed)
                // and the new message were prefilled.
                let message = tok.encode(&format!(" And then, part {}:", turn + 1)).unwrap().len();
                assert_eq!(sb.prefill_tokens, conversations * (1 + message), "{what}");
            }
            if turn > 0 && conversations > max_batch {
                assert!(sb.reused_tokens > 0, "{what}: the slots still held two conversations");
            }
            let next = |prompts: &mut Vec<Vec<u32>>, rollouts: &[artist_engine::Rollout]| {
                for (p, r) in prompts.iter_mut().zip(rollouts) {
                    p.extend_from_slice(&r.ids);
                    p.extend(tok.encode(&format!(" And then, part {}:", turn + 2)).unwrap());
                }
            };
            next(&mut fresh, &a);
            next(&mut reusing, &b);
        }
    }
}

/// Answers after a delay that varies from call to call and run to run.
struct JitteryPython;

impl Tool for JitteryPython {
    fn name(&self) -> &str {
        "python"
    }
    fn tag(&self) -> &str {
        "python"
    }
    fn execute(&self, _call: &ToolCall) -> ToolResult {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        std::thread::sleep(Duration::from_micros(u64::from(nanos % 4000)));
        ToolResult { output: "7".into(), success: true, ..Default::default() }
    }
}

/// With `deterministic`, tools that answer after random delays still give the same batches
/// every run: the same tokens and logprobs to the bit, over groups that call tools at
/// different steps.
#[test]
fn deterministic_runs_repeat_to_the_bit_whatever_the_tools_timing() {
    let tok = tokenizer();
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let prompts: Vec<Vec<u32>> =
        ["Compute:", "Now this one:", "And", "Last"].iter().map(|p| tok.encode(p).unwrap()).collect();
    let run = || {
        // Steered into a call; what follows is the model's own.
        let script = tok.encode("<python>x</python>").unwrap();
        let policy = artist_engine::SteeredPolicy::new(&model, script, 1e4, false);
        let cfg = RolloutConfig {
            max_turn_tokens: 40,
            max_batch: 6,
            deterministic: true,
            sampling: SamplingParams { temperature: 1.0, seed: 21, ..Default::default() },
            ..config(2)
        };
        let engine =
            RolloutEngine { policy: &policy, tokenizer: &tok, tools: vec![Arc::new(JitteryPython)], config: cfg };
        engine.run(&prompts).unwrap()
    };
    let (a, sa) = run();
    assert!(
        sa.tool_calls > 0,
        "no tool was called: {:?}",
        a.iter().map(|r| tok.decode(&r.ids, false).unwrap()).collect::<Vec<_>>()
    );
    for _ in 0..3 {
        let (b, _) = run();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.ids, y.ids);
            let bits = |r: &artist_engine::Rollout| r.logprobs.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(x), bits(y));
        }
    }
}
