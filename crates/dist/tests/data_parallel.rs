//! Data parallel equals one big batch: 2 and 4 in-process ranks, each training a tiny
//! Qwen2 on its shard of every global batch (gradients averaged over ranks, clipped,
//! AdamW), end 3 steps with the weights one rank reaches on the whole global batches;
//! with the all-reduce overlapped with backward they end with the very same bits.

use std::path::PathBuf;
use std::time::Duration;

use artist_autograd::{Ctx, Gradients, Tape, Var, token_logprobs};
use artist_dist::{
    Communicator, InProcess, Reduce, all_reduce_gradients, all_reduce_gradients_overlapped, broadcast_params,
    shard_range,
};
use artist_model::Qwen2;
use artist_optim::{AdamW, AdamWConfig, clip_grad_norm};

const STEPS: u64 = 3;
const BATCH: usize = 8;
const LR: f64 = 1e-3;
/// Small buckets, so that the gradients travel in several.
const BUCKET: usize = 5000;
/// Largest difference allowed between a data-parallel weight and the one-rank weight: 1% of
/// the most three steps can move one (LR = 1e-3 each). The runs differ only in the order
/// floats are added (per-shard matmuls and the sum over ranks), about 1e-7 relative in a
/// gradient, and AdamW turns that into much less than a step for almost every weight; but
/// where a weight's gradient changes sign between steps its step is a ratio of nearly
/// cancelling moments, which a 1e-7 change moves by more (measured: 6.2e-6 at one weight of
/// 126,400, 3 of them above 1e-6, after a change of the CPU matmul's summation order).
const TOLERANCE: f32 = 3e-5;
/// Weights that may differ from the one-rank run by more than [`CLOSE`]: 0.1%. A gradient
/// wrong anywhere (a bucket reduced into the wrong place, a missing shard) moves thousands
/// of weights by about a step.
const FAR_FRACTION: f64 = 1e-3;
const CLOSE: f32 = 1e-6;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2/tiny-gqa")
}

struct Seq {
    ids: Vec<u32>,
    /// 1 where the token is a target (`mask[0]` ignored), as SFT examples have it.
    mask: Vec<u8>,
}

/// The global batch of a step: fixed pseudo-random sequences of 6 to 17 tokens whose
/// first 1 to 3 tokens are a prompt (not targets).
fn global_batch(step: u64, vocab: usize) -> Vec<Seq> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ step.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    (0..BATCH)
        .map(|_| {
            let len = 6 + next() % 12;
            let prompt = 1 + next() % 3;
            let ids = (0..len).map(|_| (next() % vocab) as u32).collect();
            let mask = (0..len).map(|i| u8::from(i >= prompt)).collect();
            Seq { ids, mask }
        })
        .collect()
}

fn targets(s: &Seq) -> usize {
    s.mask.iter().skip(1).filter(|&&m| m == 1).count()
}

/// `-(sum of log p(target)) * scale` over the targets of `seqs` in one packed forward:
/// `artist_train::sft::sft_loss`'s computation, with `scale` in place of its
/// `1 / denominator`.
fn loss(model: &Qwen2, ctx: &Ctx, seqs: &[Seq], scale: f32) -> Var {
    let (mut rows, mut tgt) = (Vec::new(), Vec::new());
    let mut offset = 0u32;
    for s in seqs {
        for i in 1..s.ids.len() {
            if s.mask[i] == 1 {
                rows.push(offset + i as u32 - 1);
                tgt.push(s.ids[i]);
            }
        }
        offset += s.ids.len() as u32;
    }
    let ids: Vec<&[u32]> = seqs.iter().map(|s| s.ids.as_slice()).collect();
    let hidden = model.hidden_states(ctx, &ids, Some(&rows)).unwrap();
    let lp = token_logprobs(&hidden, &ctx.param(model.lm_head_param()), &tgt, 1.0, None).unwrap();
    lp.sum_all().unwrap().mul_scalar(-scale).unwrap()
}

/// How a rank computes and all-reduces its gradients.
#[derive(Clone, Copy)]
struct Mode {
    /// Micro-batches per rank and step (gradient accumulation).
    micro_batches: usize,
    /// The all-reduce overlapped with the last micro-batch's backward.
    overlap: bool,
    checkpointing: bool,
}

const PLAIN: Mode = Mode { micro_batches: 1, overlap: false, checkpointing: false };

/// One rank's run: load, take rank 0's weights, then per step its shard's gradient
/// (accumulated over micro-batches), averaged over ranks, clipped, AdamW. Returns
/// the final weights and each step's gradient norm before clipping.
fn train(mut comm: InProcess, mode: Mode) -> (Vec<Vec<f32>>, Vec<f64>) {
    let (rank, world) = (comm.rank(), comm.world_size());
    let model = Qwen2::load(&fixture()).unwrap();
    let params = model.params();
    if rank != 0 {
        // Different weights on the other ranks: the broadcast must make them equal.
        params[0].value().update_f32(|v| v.iter_mut().for_each(|x| *x += 0.5 * rank as f32)).unwrap();
    }
    broadcast_params(&mut comm, &params, 0).unwrap();
    let mut opt = AdamW::new(&params, AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() }).unwrap();
    let mut norms = Vec::new();
    for step in 0..STEPS {
        let batch = global_batch(step, model.config.vocab_size);
        let shard = &batch[shard_range(batch.len(), rank, world)];
        // The global number of targets, as each rank would learn it.
        let mut count = [shard.iter().map(targets).sum::<usize>() as f32];
        comm.all_reduce_sum(&mut count).unwrap();
        // The mean over ranks must be the global loss: each rank's share, times the world size.
        let scale = world as f32 / count[0];
        let mut grads = Gradients::default();
        let micro = shard.len().div_ceil(mode.micro_batches).max(1);
        let chunks: Vec<&[Seq]> = shard.chunks(micro).collect();
        for (i, mb) in chunks.iter().enumerate() {
            let tape = Tape::new();
            let ctx = Ctx::training(&tape).with_checkpointing(mode.checkpointing);
            let l = loss(&model, &ctx, mb, scale);
            if mode.overlap && i + 1 == chunks.len() {
                let stats = all_reduce_gradients_overlapped(
                    &mut comm,
                    &params,
                    &mut grads,
                    BUCKET,
                    Reduce::Mean,
                    |g, ready| tape.backward_with(&l, g, ready).map_err(artist_dist::Error::from),
                )
                .unwrap();
                // Every bucket left while backward ran: the last one (the tied embedding,
                // used first in the forward) as backward undid that first use.
                assert!(stats.buckets > 5, "{stats:?}");
                assert_eq!(stats.during_backward, stats.buckets, "{stats:?}");
            } else {
                grads.merge(tape.backward(&l).unwrap()).unwrap();
            }
        }
        if !mode.overlap || chunks.is_empty() {
            all_reduce_gradients(&mut comm, &params, &mut grads, BUCKET).unwrap();
        }
        norms.push(clip_grad_norm(&mut grads, 1.0).unwrap());
        opt.step(&grads, LR).unwrap();
    }
    (params.iter().map(|p| p.value().to_vec::<f32>().unwrap()).collect(), norms)
}

fn run(world: usize, mode: Mode) -> Vec<(Vec<Vec<f32>>, Vec<f64>)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::group_with_timeout(world, Duration::from_secs(60))
            .into_iter()
            .map(|c| s.spawn(move || train(c, mode)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, x| if x.is_nan() || x > m { x } else { m })
}

/// How many weights of `a` differ from `b`'s by more than [`CLOSE`] (NaN counts), of how many.
fn count_far(a: &[Vec<f32>], b: &[Vec<f32>]) -> (usize, usize) {
    let pairs = || a.iter().flatten().zip(b.iter().flatten());
    (pairs().filter(|&(x, y)| (x - y).is_nan() || (x - y).abs() > CLOSE).count(), pairs().count())
}

#[test]
fn data_parallel_equals_one_big_batch() {
    let initial: Vec<Vec<f32>> =
        Qwen2::load(&fixture()).unwrap().params().iter().map(|p| p.value().to_vec::<f32>().unwrap()).collect();
    let (single, single_norms) = run(1, PLAIN).pop().unwrap();
    // Clipping (max norm 1) is active, so a gradient off by a constant factor would hardly
    // change AdamW's steps: the norms are compared as well.
    assert!(single_norms.iter().all(|&n| n > 1.0), "{single_norms:?}");
    let moved = max_diff(&single, &initial);
    assert!(moved > 1e-3, "training moved the weights by only {moved}");
    for world in [2, 4] {
        let ranks = run(world, PLAIN);
        for (r, (w, norms)) in ranks.iter().enumerate() {
            // Every rank applied the same averaged gradient: identical bits.
            assert_eq!(max_diff(w, &ranks[0].0), 0.0, "{world} ranks: rank {r} differs from rank 0");
            assert_eq!(norms, &ranks[0].1);
        }
        let (weights, norms) = &ranks[0];
        let norm_diff = norms
            .iter()
            .zip(&single_norms)
            .map(|(a, b)| ((a - b) / b).abs())
            .fold(0.0, |m, x| if x.is_nan() || x > m { x } else { m });
        assert!(norm_diff < 1e-5, "{world} ranks: gradient norms {norms:?}, one rank {single_norms:?}");
        let diff = max_diff(weights, &single);
        eprintln!(
            "{world} ranks vs one rank: max |weight difference| = {diff:e} (weights moved up to {moved:e}); \
             gradient norms {norms:?} vs {single_norms:?} (max relative difference {norm_diff:e})"
        );
        assert!(diff <= TOLERANCE, "{world} ranks: max weight difference {diff:e} > {TOLERANCE:e}");
        let (far, total) = count_far(weights, &single);
        eprintln!("{world} ranks: {far} of {total} weights differ from one rank's by more than {CLOSE:e}");
        assert!(
            far as f64 <= FAR_FRACTION * total as f64,
            "{world} ranks: {far} of {total} weights differ by more than {CLOSE:e}"
        );
    }
}

/// All-reducing buckets while backward runs changes when the sums happen, not what they
/// add: the same bits as all-reducing after backward, with and without checkpointed
/// layers (whose parameters are known only inside their recomputed block).
#[test]
fn overlapping_the_all_reduce_with_backward_changes_no_bit() {
    for checkpointing in [false, true] {
        for world in [1, 2, 3] {
            let after = run(world, Mode { micro_batches: 2, overlap: false, checkpointing });
            let during = run(world, Mode { micro_batches: 2, overlap: true, checkpointing });
            for (r, ((wa, na), (wd, nd))) in after.iter().zip(&during).enumerate() {
                assert_eq!(na, nd, "{world} ranks, checkpointing {checkpointing}: rank {r}'s gradient norms");
                assert_eq!(max_diff(wa, wd), 0.0, "{world} ranks, checkpointing {checkpointing}: rank {r}'s weights");
            }
        }
    }
}
