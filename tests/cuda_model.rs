//! Whole models on the CUDA backend: Qwen2 logprobs and logits of the tiny checkpoints
//! against transformers' recorded values (the CPU parity test's fixtures and tolerance),
//! greedy continuations, KV-cache decoding, and training: whole-model gradients against
//! PyTorch's, and AdamW steps on the GPU against the same steps on the CPU.
//!
//! Runs on a GPU when the driver finds one, else on the CPU emulator of the CUDA backend;
//! without either it says why and passes.

use std::path::{Path, PathBuf};

use artist_autograd::{Ctx, Gradients, Tape};
use artist_engine::{GenerateOptions, SamplingParams, generate};
use artist_model::{Qwen2, Rows, SeqInput, Weights};
use artist_optim::{AdamW, AdamWConfig};
use artist_tensor::{Device, cuda};
use artist_train::data::{Example, Overlong, load_jsonl};
use artist_train::sft::sft_loss;
use serde::Deserialize;

#[path = "../crates/rl/tests/support/pytorch_grpo.rs"]
mod pytorch_grpo;
#[path = "support/rope_scaling.rs"]
mod rope_scaling;

const FIXTURES: [&str; 6] = ["tiny-gqa", "tiny-tied-mqa", "tiny-mha-odd", "tiny-bf16", "tiny-f16", "tiny-sharded"];
/// The Qwen3 fixtures (scripts/make_qwen3_fixtures.py): q/k norms, head_dim wider than
/// hidden / heads; the second with q/k/v/o biases, tied, in bf16.
const QWEN3: [&str; 2] = ["qwen3/tiny-qwen3", "qwen3/tiny-qwen3-bias-tied"];
const TOL: f32 = 1e-4;

fn gpu() -> Option<Device> {
    match cuda::test_backend() {
        Ok(_) => Some(Device::cuda(0).expect("the chosen CUDA runtime opens device 0")),
        Err(why) => {
            eprintln!("skipping the CUDA model tests: {why}");
            None
        }
    }
}

macro_rules! gpu_or_skip {
    () => {
        match gpu() {
            Some(d) => d,
            None => return,
        }
    };
}

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
    greedy: Vec<Greedy>,
}

#[derive(Deserialize)]
struct Case {
    input_ids: Vec<u32>,
    logprobs: Vec<f32>,
    last_logits: Vec<f32>,
}

#[derive(Deserialize)]
struct Greedy {
    prompt_ids: Vec<u32>,
    new_ids: Vec<u32>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fixture under `tests/fixtures/qwen2` by name, or under `tests/fixtures` by path.
fn load(name: &str, device: Device) -> (Qwen2, Reference) {
    let dir = if name.contains('/') { fixtures().join(name) } else { fixtures().join("qwen2").join(name) };
    let model = Qwen2::load_on(&dir, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    (model, serde_json::from_str(&text).unwrap())
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    // NaN-propagating, so a NaN anywhere fails (`f32::max` would skip it).
    let worst =
        got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, |m, x| if x.is_nan() || x > m { x } else { m });
    assert!(worst <= tol, "{what}: max abs difference {worst} > {tol}");
}

#[test]
fn logprobs_and_logits_match_transformers_on_the_gpu() {
    let dev = gpu_or_skip!();
    for name in FIXTURES.into_iter().chain(QWEN3) {
        let (model, r) = load(name, dev);
        assert_eq!(model.device(), dev);
        for (i, case) in r.cases.iter().enumerate() {
            let lp = model.token_logprobs(&case.input_ids).unwrap();
            assert_close(&format!("{name} case {i} logprobs"), &lp, &case.logprobs, TOL);
            let logits = model.logits(&case.input_ids).unwrap();
            assert_eq!(logits.device(), dev);
            let n = case.input_ids.len();
            let last = logits.narrow(0, n - 1, 1).unwrap().to_vec::<f32>().unwrap();
            assert_close(&format!("{name} case {i} last logits"), &last, &case.last_logits, TOL);
        }
    }
}

/// Long-context RoPE (YaRN, linear) on the GPU: the stretched tables reach the fused
/// cache write, so logprobs and last logits match transformers' within 1e-4 and decoding
/// one token at a time through the paged cache equals the full forward.
#[test]
fn scaled_rope_on_the_gpu_matches_transformers() {
    let dev = gpu_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    for name in rope_scaling::CASES {
        let (dir, fx) = rope_scaling::materialize::<Case>(&fixtures(), name, tmp.path());
        let model = Qwen2::load_on(&dir, dev).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, case) in fx.cases.iter().enumerate() {
            let lp = model.token_logprobs(&case.input_ids).unwrap();
            assert_close(&format!("{name} case {i} logprobs"), &lp, &case.logprobs, TOL);
            let n = case.input_ids.len();
            let last = model.logits(&case.input_ids).unwrap().narrow(0, n - 1, 1).unwrap().to_vec::<f32>().unwrap();
            assert_close(&format!("{name} case {i} last logits"), &last, &case.last_logits, TOL);
        }
        let tokens = &fx.cases.iter().max_by_key(|c| c.input_ids.len()).unwrap().input_ids;
        let full = model.logits(tokens).unwrap().to_vec2::<f32>().unwrap();
        let mut cache = model.new_cache(1, tokens.len()).unwrap();
        for (p, t) in tokens.iter().enumerate() {
            let row = model.forward(&[SeqInput { slot: 0, tokens: &[*t] }], &mut cache, Rows::Last).unwrap();
            assert_close(&format!("{name} step {p}"), &row.to_vec::<f32>().unwrap(), &full[p], TOL);
        }
    }
}

#[test]
fn greedy_decoding_and_the_kv_cache_on_the_gpu() {
    let dev = gpu_or_skip!();
    for name in ["tiny-gqa", "tiny-bf16", "qwen3/tiny-qwen3"] {
        let (model, r) = load(name, dev);
        for (i, g) in r.greedy.iter().enumerate() {
            let opts = GenerateOptions::new(32, SamplingParams::greedy(), vec![]);
            let out = generate(&model, &g.prompt_ids, &opts, |_| false).unwrap();
            assert_eq!(out.token_ids, g.new_ids, "{name} greedy {i}");
        }
        // One token at a time through the cache equals one full forward.
        let tokens = &r.cases.iter().max_by_key(|c| c.input_ids.len()).unwrap().input_ids;
        let full = model.logits(tokens).unwrap().to_vec2::<f32>().unwrap();
        let mut cache = model.new_cache(2, tokens.len() + 1).unwrap();
        for (p, t) in tokens.iter().enumerate() {
            let row = model.forward(&[SeqInput { slot: 1, tokens: &[*t] }], &mut cache, Rows::Last).unwrap();
            assert_close(&format!("{name} step {p}"), &row.to_vec::<f32>().unwrap(), &full[p], TOL);
        }
        // A forked slot continues as the original would.
        cache.fork(1, 0).unwrap();
        let a = model.forward(&[SeqInput { slot: 0, tokens: &[1] }], &mut cache, Rows::Last).unwrap();
        let b = model.forward(&[SeqInput { slot: 1, tokens: &[1] }], &mut cache, Rows::Last).unwrap();
        assert_close(&format!("{name} forked slot"), &a.to_vec::<f32>().unwrap(), &b.to_vec::<f32>().unwrap(), 0.0);
    }
}

/// `(from, to)` slot forks before a call, and the call's `(slot, tokens)`.
type Forks = Vec<(usize, usize)>;
type Inputs = Vec<(usize, Vec<u32>)>;

/// Many sequences per forward call, as rollouts run them: prompts of different lengths
/// prefilled together, decode steps of every slot at once, a prefill beside decoding
/// slots, and forked slots sharing blocks. The GPU (one cache write and one attention
/// launch per layer for all of them) gives the CPU's logits.
#[test]
fn batched_prefill_and_decode_on_the_gpu_follow_the_cpu() {
    let dev = gpu_or_skip!();
    for name in ["tiny-gqa", "tiny-bf16", "tiny-tied-mqa"].into_iter().chain(QWEN3) {
        let (gpu_model, _) = load(name, dev);
        let (cpu_model, _) = load(name, Device::Cpu);
        let mut caches = [cpu_model.new_cache(5, 64).unwrap(), gpu_model.new_cache(5, 64).unwrap()];
        let prompts: [&[u32]; 3] =
            [&[3, 17, 5, 9, 22, 40, 1, 8, 13, 2, 7, 30, 11, 4, 6, 19, 25, 27], &[5, 6], &[9, 1, 2, 3, 4, 5, 6]];
        // Each call: (slot, tokens); forks before some calls.
        let calls: Vec<(Forks, Inputs)> = vec![
            (vec![], (0..3).map(|s| (s, prompts[s].to_vec())).collect()),
            (vec![(0, 3)], (0..4).map(|s| (s, vec![10 + s as u32])).collect()),
            (vec![], (0..4).map(|s| (s, vec![20 + s as u32])).collect()),
            (vec![], vec![(0, vec![31]), (4, vec![2, 4, 6, 8, 10, 12, 14, 16, 18]), (2, vec![32]), (3, vec![33])]),
            (vec![(4, 1)], (0..5).map(|s| (s, vec![40 + s as u32])).collect()),
        ];
        for (step, (forks, inputs)) in calls.iter().enumerate() {
            let mut logits = Vec::new();
            for (model, cache) in [&cpu_model, &gpu_model].into_iter().zip(caches.iter_mut()) {
                for &(from, to) in forks {
                    cache.fork(from, to).unwrap();
                }
                let seqs: Vec<SeqInput> = inputs.iter().map(|(slot, t)| SeqInput { slot: *slot, tokens: t }).collect();
                logits.push(model.forward(&seqs, cache, Rows::All).unwrap().to_vec::<f32>().unwrap());
            }
            assert_close(&format!("{name} call {step}"), &logits[1], &logits[0], TOL);
        }
        // A decode step costs the same launches for two sequences as for five: each layer
        // writes every sequence's keys and values and attends for all of them at once.
        let mut launches = Vec::new();
        for slots in [2usize, 5] {
            let seqs: Vec<SeqInput> = (0..slots).map(|slot| SeqInput { slot, tokens: &[7] }).collect();
            let before = cuda::thread_launch_count();
            gpu_model.forward(&seqs, &mut caches[1], Rows::All).unwrap();
            launches.push(cuda::thread_launch_count() - before);
        }
        assert_eq!(launches[0], launches[1], "{name}: launches for a decode step of 2 and of 5 sequences");
        let per_layer = launches[0] as f64 / gpu_model.config.num_hidden_layers as f64;
        eprintln!("{name}: {} launches per decode step ({per_layer:.1} per layer), for 2 or 5 sequences", launches[0]);
    }
}

fn batch(name: &str, model: &Qwen2) -> Vec<Example> {
    let dir = fixtures().join("training/grads").join(name);
    load_jsonl(&dir.join("batch.jsonl"), None, model.config.vocab_size, 1 << 20, Overlong::Truncate).unwrap().0
}

fn loss_and_grads(model: &Qwen2, examples: &[Example], checkpointing: bool) -> (f64, Gradients) {
    loss_and_grads_in(model, examples, checkpointing, None)
}

/// The SFT loss and gradients with linear layers multiplying in `matmul` (None: f32).
fn loss_and_grads_in(
    model: &Qwen2,
    examples: &[Example],
    checkpointing: bool,
    matmul: Option<artist_tensor::DType>,
) -> (f64, Gradients) {
    let batch: Vec<&Example> = examples.iter().collect();
    let n: usize = batch.iter().map(|e| e.targets()).sum();
    let tape = Tape::new();
    let ctx = Ctx::training(&tape).with_checkpointing(checkpointing).with_matmul_dtype(matmul);
    let (l, _) = sft_loss(model, &ctx, &batch, n).unwrap();
    let loss = l.to_scalar().unwrap() as f64;
    (loss, tape.backward(&l).unwrap())
}

/// The PyTorch parity test of crates/train, with the model on the GPU: the loss within
/// 1e-5 relative, each gradient within 1e-4 of its largest element.
#[test]
fn whole_model_gradients_match_pytorch_on_the_gpu() {
    let dev = gpu_or_skip!();
    let cases = [("tiny-gqa", false), ("tiny-tied-mqa", true), ("tiny-mha-odd", false), ("tiny-qwen3", true)];
    for (name, checkpointing) in cases {
        let dir = fixtures().join("training/grads").join(name);
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let model_dir = reference["model_dir"].as_str().map(String::from).unwrap_or(format!("qwen2/{name}"));
        let model = Qwen2::load_on(&fixtures().join(model_dir), dev).unwrap();
        let (loss, grads) = loss_and_grads(&model, &batch(name, &model), checkpointing);
        let want_loss = reference["loss"].as_f64().unwrap();
        assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "{name}: loss {loss} vs {want_loss}");
        let ours = model.hf_named(|p| grads.get(p.id()).cloned()).unwrap();
        let torch = Weights::open_file(&dir.join("grads.safetensors")).unwrap();
        assert_eq!(ours.len(), torch.names().count(), "{name}: gradient count");
        for (n, g) in &ours {
            assert_eq!(g.device(), dev, "{name} {n}: gradient device");
            let want = torch.get(n, g.dims()).unwrap().to_f32_vec().unwrap();
            let got = g.to_f32_vec().unwrap();
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
            assert_close(&format!("{name} {n}"), &got, &want, 1e-4 * scale);
        }
    }
}

/// The GRPO loss's PyTorch parity test (crates/rl/tests/grpo.rs), with the model on the
/// GPU: every case (aggregations, KL, GSPO, dual clip, the entropy bonus through the logprob
/// kernel's entropy term) within the CPU test's tolerances.
#[test]
fn grpo_loss_and_gradients_match_pytorch_on_the_gpu() {
    let dev = gpu_or_skip!();
    let root = pytorch_grpo::root(Path::new(env!("CARGO_MANIFEST_DIR")));
    let model = Qwen2::load_on(&fixtures().join("qwen2/tiny-gqa"), dev).unwrap();
    let (batch, cases) = pytorch_grpo::load(&root);
    for case in &cases {
        let (loss, grads) = pytorch_grpo::loss_and_grads(&model, &batch, &case.config);
        pytorch_grpo::check(&root, &model, case, loss, &grads);
    }
}

/// The high-entropy selection's parts on the GPU: pi_old's logprobs and entropies from the
/// shared passes, and the loss with a policy-gradient mask and its gradients, as the CPU
/// computes them.
#[test]
fn entropies_and_a_policy_gradient_mask_on_the_gpu_follow_the_cpu() {
    let dev = gpu_or_skip!();
    let root = pytorch_grpo::root(Path::new(env!("CARGO_MANIFEST_DIR")));
    let path = fixtures().join("qwen2/tiny-gqa");
    let (cpu, gpu) = (Qwen2::load(&path).unwrap(), Qwen2::load_on(&path, dev).unwrap());
    let (mut batch, cases) = pytorch_grpo::load(&root);
    let refs: Vec<&artist_rl::TrainRollout> = batch.iter().collect();
    let on = |m: &Qwen2| artist_rl::grpo::rollout_logprobs_and_entropies(m, &Ctx::inference(), &refs, 0.7, 2).unwrap();
    let ((lc, hc), (lg, hg)) = (on(&cpu), on(&gpu));
    assert_close("logprobs", &lg.concat(), &lc.concat(), 1e-4);
    assert_close("entropies", &hg.concat(), &hc.concat(), 1e-4);
    // Half the tokens, by the median of the CPU's entropies.
    let mut live_h: Vec<f32> =
        batch.iter().zip(&hc).flat_map(|(r, h)| h.iter().zip(&r.mask).filter(|p| *p.1 == 1).map(|p| *p.0)).collect();
    live_h.sort_by(f32::total_cmp);
    let median = live_h[live_h.len() / 2];
    for (r, h) in batch.iter_mut().zip(&hc) {
        r.pg_mask = Some(h.iter().zip(&r.mask).map(|(&h, &m)| u8::from(m == 1 && h >= median)).collect());
    }
    let kept = batch.iter().flat_map(|r| r.pg_mask.as_ref().unwrap()).filter(|&&m| m == 1).count();
    let live = batch.iter().map(|r| r.generated()).sum::<usize>();
    assert!(kept > 0 && kept < live, "{kept} of {live} tokens kept");
    let c = &cases.iter().find(|c| c.config.beta > 0.0).unwrap().config;
    let ((loss_c, grads_c), (loss_g, grads_g)) =
        (pytorch_grpo::loss_and_grads(&cpu, &batch, c), pytorch_grpo::loss_and_grads(&gpu, &batch, c));
    assert!((loss_c - loss_g).abs() <= 1e-5 * loss_c.abs().max(1e-3), "loss cpu {loss_c} gpu {loss_g}");
    for (pc, pg) in cpu.params().iter().zip(gpu.params()) {
        let (a, b) = (grads_c.get(pc.id()).unwrap(), grads_g.get(pg.id()).unwrap());
        assert_eq!(b.device(), dev);
        let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        assert_close(&format!("gradient {}", pc.name()), &b, &a, 1e-4 * scale);
    }
}

/// Five AdamW steps with clipping, on the GPU and on the CPU from the same weights: the
/// same losses and final weights within f32 reassociation (the GPU sums in another order).
#[test]
fn training_steps_on_the_gpu_follow_the_cpu() {
    let dev = gpu_or_skip!();
    let name = "tiny-gqa";
    let path = fixtures().join("qwen2").join(name);
    let (cpu, gpu) = (Qwen2::load(&path).unwrap(), Qwen2::load_on(&path, dev).unwrap());
    let examples = batch(name, &cpu);
    let config = AdamWConfig::default();
    let mut opt_c = AdamW::new(&cpu.params(), config).unwrap();
    let mut opt_g = AdamW::new(&gpu.params(), config).unwrap();
    for step in 0..5 {
        let (lc, mut gc) = loss_and_grads(&cpu, &examples, false);
        let (lg, mut gg) = loss_and_grads(&gpu, &examples, false);
        assert!((lc - lg).abs() <= 1e-5 * lc.abs(), "step {step}: loss cpu {lc} gpu {lg}");
        let (nc, ng) =
            (artist_optim::clip_grad_norm(&mut gc, 0.5).unwrap(), artist_optim::clip_grad_norm(&mut gg, 0.5).unwrap());
        assert!((nc - ng).abs() <= 1e-5 * nc, "step {step}: grad norm cpu {nc} gpu {ng}");
        opt_c.step(&gc, 1e-3).unwrap();
        opt_g.step(&gg, 1e-3).unwrap();
    }
    for (pc, pg) in cpu.params().iter().zip(gpu.params()) {
        assert_eq!(pg.value().device(), dev);
        let (c, g) = (pc.value().to_f32_vec().unwrap(), pg.value().to_f32_vec().unwrap());
        assert_close(&format!("weights {}", pc.name()), &g, &c, 2e-5);
    }
}

/// Training with attention in bf16 (`attention_dtype = "bf16"`), on a model with head dim 64
/// (random weights, two packed sequences longer than one 64-token tile): forward and backward
/// run on the tensor-core kernels, with and without checkpointing, and the loss and
/// gradients follow f32 attention to bf16 rounding (loss within 1e-3 relative, each
/// gradient within 2e-2 of its largest element).
#[test]
fn bf16_attention_in_training_runs_on_the_tensor_cores() {
    let dev = gpu_or_skip!();
    if std::env::var("ARTIST_ATTN_MMA").as_deref() == Ok("0") || cuda::info(0).unwrap().compute_capability < (8, 0) {
        eprintln!("skipping: tensor-core attention is off or needs compute capability 8.0");
        return;
    }
    let config = artist_model::Qwen2Config {
        vocab_size: 256,
        hidden_size: 128,
        intermediate_size: 256,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 64,
        tie_word_embeddings: true,
        ..artist_model::Qwen2Config::qwen2_5_0_5b()
    };
    let weights = artist_model::RandomWeights { dtype: artist_tensor::DType::F32, std: 0.05, seed: 7 };
    let model = Qwen2::from_weights_on(config, &weights, dev).unwrap();
    let example = |len: usize, seed: u32| Example {
        ids: (0..len as u32).map(|i| (i * 37 + seed * 11) % 256).collect(),
        mask: vec![1; len],
        line: 1,
    };
    let examples = [example(70, 1), example(100, 2)];
    let batch: Vec<&Example> = examples.iter().collect();
    let n: usize = batch.iter().map(|e| e.targets()).sum();
    let run = |dtype: Option<artist_tensor::DType>, checkpointing: bool| {
        let tape = Tape::new();
        let ctx = Ctx::training(&tape).with_checkpointing(checkpointing).with_attention_dtype(dtype);
        let (l, _) = sft_loss(&model, &ctx, &batch, n).unwrap();
        (l.to_scalar().unwrap() as f64, tape.backward(&l).unwrap())
    };
    let (want_loss, want) = run(None, false);
    // The forward and both backward passes on Hopper's wgmma where ARTIST_ATTN_WGMMA=1 asks
    // for it (the GPU suite runs this test both ways on a Hopper GPU), else on mma.sync.
    let wgmma = std::env::var("ARTIST_ATTN_WGMMA").as_deref() == Ok("1") && cuda::info(0).unwrap().wgmma;
    let kind = if wgmma { "wgmma" } else { "mma" };
    let kernels = ["attn_fwd", "attn_bwd_dq", "attn_bwd_dkv"].map(|k| format!("{k}_{kind}_d64_bf16"));
    for checkpointing in [false, true] {
        let before: Vec<u64> = kernels.iter().map(|k| cuda::thread_kernel_launches(k)).collect();
        let (loss, grads) = run(Some(artist_tensor::DType::BF16), checkpointing);
        for (k, b) in kernels.iter().zip(before) {
            // Two layers, two sequences: four attention calls (a checkpointed forward runs twice).
            assert!(cuda::thread_kernel_launches(k) >= b + 4, "checkpointing {checkpointing}: {k} did not run");
        }
        assert!((loss - want_loss).abs() <= 1e-3 * want_loss.abs(), "loss {loss} with bf16 attention, {want_loss} f32");
        for p in model.params() {
            let (g, w) =
                (grads.get(p.id()).unwrap().to_f32_vec().unwrap(), want.get(p.id()).unwrap().to_f32_vec().unwrap());
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
            assert_close(&format!("{} (checkpointing {checkpointing})", p.name()), &g, &w, 2e-2 * scale);
        }
    }
}

/// Training with bf16 products (`matmul_dtype = "bf16"`) on the GPU: every linear layer and
/// the LM head multiply bf16 operands into f32 (cuBLAS's tensor-core GEMM), forward and
/// backward, against PyTorch under the same rule (the CPU parity test's fixtures; each
/// gradient within 3e-2 of its largest element, the slack being activations on a bf16
/// rounding boundary), with and without checkpointing; and the loss is not the f32
/// products' loss. The loss bound is 1e-4 relative where the CPU's is 3e-5: an activation
/// rounds to bf16 after RMSNorm, whose f32 sum of squares the GPU adds in another order
/// than PyTorch (and than the CPU), and one flipped rounding moves the loss. tiny-mha-odd
/// measured 1.0e-5 with the RMSNorm summed by strided threads and 5.3e-5 with it summed by
/// chunks of eight (the vector loads), everything else equal; bf16 against f32 products
/// moves its loss by 1.6e-4.
#[test]
fn bf16_product_gradients_match_pytorch_on_the_gpu() {
    let dev = gpu_or_skip!();
    let bf16 = Some(artist_tensor::DType::BF16);
    for (name, checkpointing) in [("tiny-gqa", false), ("tiny-tied-mqa", true), ("tiny-mha-odd", false)] {
        let dir = fixtures().join("training/grads").join(name);
        let model = Qwen2::load_on(&fixtures().join("qwen2").join(name), dev).unwrap();
        let examples = batch(name, &model);
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("bf16_products.json")).unwrap()).unwrap();
        let (loss, grads) = loss_and_grads_in(&model, &examples, checkpointing, bf16);
        let want_loss = reference["loss"].as_f64().unwrap();
        assert!((loss - want_loss).abs() <= 1e-4 * want_loss.abs(), "{name}: loss {loss} vs {want_loss}");
        let (f32_loss, _) = loss_and_grads_in(&model, &examples, false, None);
        assert_ne!(loss, f32_loss, "{name}: bf16 products gave the f32 loss");
        let torch = Weights::open_file(&dir.join("grads_bf16_products.safetensors")).unwrap();
        for (n, g) in &model.hf_named(|p| grads.get(p.id()).cloned()).unwrap() {
            let want = torch.get(n, g.dims()).unwrap().to_f32_vec().unwrap();
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
            assert_close(&format!("{name} {n}"), &g.to_f32_vec().unwrap(), &want, 3e-2 * scale);
        }
    }
}

/// LoRA adapters (PEFT's, `tests/fixtures/lora/r4-partial`: q/k/v and gate/up fused with
/// parts unadapted) on the GPU: the paged, cached forward's logits against PEFT's (float64),
/// as a batch and one graphed decode step at a time; greedy decoding against the CPU's
/// tokens; and the adapters' training gradients against the CPU's.
#[test]
fn lora_adapters_on_the_gpu_follow_peft_and_the_cpu() {
    let dev = gpu_or_skip!();
    let lora = fixtures().join("lora/r4-partial");
    let text = std::fs::read_to_string(fixtures().join("lora/sequences.json")).unwrap();
    let seqs: Vec<Vec<u32>> =
        serde_json::from_value(serde_json::from_str::<serde_json::Value>(&text).unwrap()["sequences"].clone()).unwrap();
    let expected = Weights::open_file(&lora.join("expected.safetensors")).unwrap();
    let total: usize = seqs.iter().map(Vec::len).sum();
    let want_logits = expected.get("logits", &[total, 311]).unwrap().to_vec::<f32>().unwrap();
    let models: Vec<Qwen2> = [Device::Cpu, dev]
        .into_iter()
        .map(|d| {
            let mut m = Qwen2::load_on(&fixtures().join("qwen2/tiny-gqa"), d).unwrap();
            m.load_lora(&lora).unwrap();
            m
        })
        .collect();
    let mut grads = Vec::new();
    for model in &models {
        let mut cache = model.new_cache(2, 64).unwrap();
        let inputs: Vec<SeqInput> = seqs.iter().enumerate().map(|(slot, t)| SeqInput { slot, tokens: t }).collect();
        let logits = model.forward(&inputs, &mut cache, Rows::All).unwrap().to_vec::<f32>().unwrap();
        assert_close(&format!("LoRA logits on {:?}", model.device()), &logits, &want_logits, TOL);
        let tape = Tape::new();
        let ctx = Ctx::training(&tape);
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let rows: Vec<u32> = (0..seqs[0].len() as u32 - 1).collect();
        let hidden = model.hidden_states(&ctx, &refs, Some(&rows)).unwrap();
        let targets: Vec<u32> = seqs[0][1..].to_vec();
        let lp =
            artist_autograd::token_logprobs_in(&hidden, &ctx.param(model.lm_head_param()), &targets, 1.0, None, None)
                .unwrap();
        let g = tape.backward(&lp.sum_all().unwrap()).unwrap();
        grads.push(
            model
                .params()
                .iter()
                .filter(|p| p.trainable())
                .map(|p| (p.name().to_string(), g.get(p.id()).unwrap().to_vec::<f32>().unwrap()))
                .collect::<Vec<_>>(),
        );
    }
    // Decode steps through the cache (graphed where the backend captures them), and greedy
    // decoding: PEFT's logits and the CPU's tokens.
    let vocab = 311;
    let mut cache = models[1].new_cache(1, 32).unwrap();
    cache.set_cuda_graphs(true);
    for (p, t) in seqs[0].iter().enumerate() {
        let row = models[1].forward(&[SeqInput { slot: 0, tokens: &[*t] }], &mut cache, Rows::Last).unwrap();
        let want = &want_logits[p * vocab..(p + 1) * vocab];
        assert_close(&format!("LoRA decode step {p}"), &row.to_vec::<f32>().unwrap(), want, TOL);
    }
    let (captures, replays) = cache.graph_counts();
    assert!(captures >= 1 && replays >= 1, "LoRA decode steps: {captures} graph captures, {replays} replays");
    let opts = GenerateOptions::new(16, SamplingParams::greedy(), vec![]);
    let tokens: Vec<Vec<u32>> =
        models.iter().map(|m| generate(m, &seqs[1], &opts, |_| false).unwrap().token_ids).collect();
    assert_eq!(tokens[1], tokens[0], "LoRA greedy decoding on the GPU");
    assert_eq!(grads[0].len(), 20, "two layers: q, v, o, gate, down; A and B");
    for ((name, cpu), (_, gpu)) in grads[0].iter().zip(&grads[1]) {
        let scale = cpu.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_close(&format!("LoRA gradient {name}"), gpu, cpu, 1e-4 * scale.max(1.0));
    }
}
