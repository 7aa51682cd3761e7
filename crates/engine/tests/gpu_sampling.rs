//! Sampling on the GPU draws what the host sampler draws: the same tokens and logprobs for
//! the same seeds, over greedy, temperature, top-k, top-p and min-p, on peaked, flat and
//! tied rows, several samplers sharing a row, a long run of draws from one sampler.
//!
//! On a GPU when the driver finds one, else on the CPU emulator of the CUDA backend.

use artist_engine::{Logits, Sampler, SamplingParams};
use artist_tensor::{Device, Tensor, cuda};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gpu() -> Option<Device> {
    match cuda::test_backend() {
        Ok(_) => Some(Device::cuda(0).unwrap()),
        Err(why) => {
            eprintln!("skipping GPU sampling: {why}");
            None
        }
    }
}

fn rows(seed: u64, n: usize, vocab: usize) -> Vec<Vec<f32>> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|k| {
            let scale = [0.5f32, 2.0, 6.0, 0.01][k % 4]; // flat to peaked
            let mut row: Vec<f32> = (0..vocab).map(|_| r.random_range(-1.0..1.0f32) * scale).collect();
            if k % 5 == 1 {
                // ties, also at the top
                for j in (0..vocab).step_by(7) {
                    row[j] = 1.5 * scale;
                }
            }
            row
        })
        .collect()
}

#[test]
fn gpu_draws_equal_host_draws() {
    let Some(dev) = gpu() else { return };
    let vocab = 700;
    let data = rows(1, 10, vocab);
    let flat: Vec<f32> = data.iter().flatten().copied().collect();
    let t = Tensor::from_vec(flat, (data.len(), vocab), dev).unwrap();
    let gpu_logits = Logits::Tensor(t);
    let host_logits = Logits::Host(data.clone());
    let settings = [
        SamplingParams::greedy(),
        SamplingParams { temperature: 1.0, ..Default::default() },
        SamplingParams { temperature: 0.7, top_k: 5, ..Default::default() },
        SamplingParams { temperature: 1.3, top_p: 0.9, ..Default::default() },
        SamplingParams { temperature: 0.9, top_p: 0.5, min_p: 0.05, ..Default::default() },
        SamplingParams { temperature: 1.0, min_p: 0.3, ..Default::default() },
        SamplingParams { temperature: 2.0, top_k: 50, top_p: 0.95, ..Default::default() },
        SamplingParams { temperature: 0.05, top_k: 1, ..Default::default() },
    ];
    let mut compared = 0;
    for (si, base) in settings.iter().enumerate() {
        // Every row once per sampler, and two samplers sharing row 0; several rounds, so each
        // sampler's generator advances as it does in decoding.
        let seeds: Vec<u64> = (0..12).map(|k| 1000 * si as u64 + k).collect();
        let mk = || seeds.iter().map(|&s| Sampler::new(SamplingParams { seed: s, ..base.clone() })).collect::<Vec<_>>();
        let (mut a, mut b) = (mk(), mk());
        for round in 0..2 {
            let row_of = |k: usize| if k >= data.len() { 0 } else { (k + round) % data.len() };
            let mut pa: Vec<(usize, &mut Sampler)> = a.iter_mut().enumerate().map(|(k, s)| (row_of(k), s)).collect();
            let mut pb: Vec<(usize, &mut Sampler)> = b.iter_mut().enumerate().map(|(k, s)| (row_of(k), s)).collect();
            let got = gpu_logits.sample(&mut pa).unwrap();
            let want = host_logits.sample(&mut pb).unwrap();
            for (k, ((gi, gl), (wi, wl))) in got.iter().zip(&want).enumerate() {
                assert_eq!(gi, wi, "setting {si} ({base:?}), round {round}, sampler {k}: token");
                assert!((gl - wl).abs() <= 1e-6 * wl.abs().max(1.0), "setting {si}, sampler {k}: logprob {gl} vs {wl}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, settings.len() * 12 * 2);
}

/// Rows shaped like a language model's: most of a wide vocabulary far below a few likely
/// tokens, logits rounded to bf16 so that many probabilities tie (the searches then go down
/// to index bits), one row flat (all logits equal: greedy takes index 0 across the row's
/// three chunks). The searches take several passes here.
/// `x` rounded to the nearest bf16 (ties to even), as a model computing in bf16 gives it.
fn to_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits((b + 0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

#[test]
fn gpu_draws_equal_host_draws_on_wide_tied_rows() {
    let Some(dev) = gpu() else { return };
    let vocab = 20_000;
    let mut r = ChaCha8Rng::seed_from_u64(11);
    let data: Vec<Vec<f32>> = (0..4)
        .map(|k| {
            (0..vocab)
                .map(|j| {
                    let base = r.random_range(-1.0..1.0f32) * [2.5f32, 0.3, 4.0, 0.0][k];
                    let top = if j % 997 == 5 { [12.0f32, 3.0, 6.0, 0.0][k] } else { 0.0 };
                    to_bf16(base + top)
                })
                .collect()
        })
        .collect();
    let flat: Vec<f32> = data.iter().flatten().copied().collect();
    let gpu_logits = Logits::Tensor(Tensor::from_vec(flat, (data.len(), vocab), dev).unwrap());
    let host_logits = Logits::Host(data.clone());
    let settings = [
        SamplingParams::greedy(),
        SamplingParams { temperature: 1.0, ..Default::default() },
        SamplingParams { temperature: 0.6, top_p: 0.8, ..Default::default() },
        SamplingParams { temperature: 1.0, top_k: 300, ..Default::default() },
        SamplingParams { temperature: 1.2, top_p: 0.97, min_p: 0.001, ..Default::default() },
    ];
    for (si, base) in settings.iter().enumerate() {
        let mk = || (0..8).map(|k| Sampler::new(SamplingParams { seed: 77 + k, ..base.clone() })).collect::<Vec<_>>();
        let (mut a, mut b) = (mk(), mk());
        for round in 0..3 {
            let mut pa: Vec<(usize, &mut Sampler)> =
                a.iter_mut().enumerate().map(|(k, s)| ((k + round) % 4, s)).collect();
            let mut pb: Vec<(usize, &mut Sampler)> =
                b.iter_mut().enumerate().map(|(k, s)| ((k + round) % 4, s)).collect();
            let got = gpu_logits.sample(&mut pa).unwrap();
            let want = host_logits.sample(&mut pb).unwrap();
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.0, w.0, "setting {si} ({base:?}), round {round}, sampler {k}: token");
                assert!((g.1 - w.1).abs() <= 1e-6 * w.1.abs().max(1.0), "setting {si}, sampler {k}: logprob");
            }
        }
    }
}

#[test]
fn a_long_run_from_one_row_follows_the_distribution() {
    let Some(dev) = gpu() else { return };
    // p = 0.1, 0.2, 0.3, 0.4 over four tokens of a wider row whose rest is negligible.
    let mut row = vec![-40.0f32; 64];
    for (j, p) in [0.1f32, 0.2, 0.3, 0.4].iter().enumerate() {
        row[j * 9] = p.ln();
    }
    let t = Logits::Tensor(Tensor::from_vec(row.clone(), (1, 64), dev).unwrap());
    let h = Logits::Host(vec![row]);
    let params = SamplingParams { temperature: 1.0, seed: 7, ..Default::default() };
    let (mut sa, mut sb) = (Sampler::new(params.clone()), Sampler::new(params));
    let mut counts = [0usize; 4];
    for _ in 0..200 {
        let g = t.sample(&mut [(0, &mut sa)]).unwrap()[0];
        let w = h.sample(&mut [(0, &mut sb)]).unwrap()[0];
        assert_eq!(g.0, w.0);
        counts[g.0 as usize / 9] += 1;
    }
    for (j, want) in [0.1, 0.2, 0.3, 0.4].iter().enumerate() {
        let got = counts[j] as f64 / 200.0;
        assert!((got - want).abs() < 0.1, "token {j}: {got} vs {want} ({counts:?})");
    }
}

/// A uniform number at the top of [0, 1), and 1 itself, where u * total is the total (no
/// running sum exceeds it: the kernel's "else the N-th" branch): the draw is the last kept
/// candidate (the smallest probability, the largest index among equals), with and without
/// top-k and top-p truncating the candidates.
#[test]
fn a_draw_at_the_top_of_the_unit_interval_takes_the_last_kept_candidate() {
    let Some(dev) = gpu() else { return };
    let vocab = 300usize;
    // The smallest logit at several indices, so the last candidate is decided by index.
    let row: Vec<f32> = (0..vocab).map(|j| if j % 50 == 3 { -4.0 } else { ((j * 37) % 101) as f32 * 0.04 }).collect();
    let t = Tensor::from_vec(row.clone(), (1, vocab), dev).unwrap();
    for (u, top_k, top_p) in [1.0 - f64::EPSILON / 2.0, 1.0]
        .into_iter()
        .flat_map(|u| [(0usize, 1.0f32), (20, 1.0), (0, 0.9)].map(|(k, p)| (u, k, p)))
    {
        // The host's order and kept prefix (crates/engine/src/sampler.rs), temperature 1.
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max as f64 + row.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln();
        let mut c: Vec<(f32, u32)> =
            row.iter().enumerate().map(|(i, &l)| (((l as f64) - lse).exp() as f32, i as u32)).collect();
        c.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut keep = if top_k > 0 { top_k } else { c.len() };
        if top_p < 1.0 {
            // In the samplers' fixed point: units of 2^-62, rounded down.
            let unit = (1u64 << 62) as f64;
            let (mut acc, mut n) = (0u64, 0);
            for x in c.iter().take(keep) {
                acc += (x.0 as f64 * unit) as u64;
                n += 1;
                if acc >= (top_p as f64 * unit).ceil() as u64 {
                    break;
                }
            }
            keep = n;
        }
        let pick = artist_tensor::SamplePick { row: 0, temperature: 1.0, top_k, top_p, min_p: 0.0, u };
        let (id, _) = t.sample_rows(&[pick]).unwrap()[0];
        assert_eq!(id, c[keep - 1].1, "u {u}, top_k {top_k}, top_p {top_p}: the last kept candidate");
    }
}

/// Draws a hair either side of every boundary between kept candidates: u just below and
/// just above the point where u * total reaches a running sum, with top-k keeping 3 to 6 of
/// the 7 candidates (so the total is not a power of two). The kernel must draw what the exact
/// rule draws (the host's: sums in units of 2^-62, the target floor(u * total) in integers),
/// where f64 arithmetic on u * total would round across some of these boundaries (checked
/// below, so the test can tell the two apart).
#[test]
fn draws_next_to_every_boundary_follow_the_exact_rule() {
    let Some(dev) = gpu() else { return };
    let vocab = 64usize;
    let mut row = vec![-60.0f32; vocab]; // below 1e-12 of the top: not candidates
    for (j, l) in [(3, 0.9f32), (10, 0.5), (17, 0.45), (30, 0.1), (41, -0.3), (60, -0.7), (62, 0.1)] {
        row[j] = l;
    }
    let t = Tensor::from_vec(row.clone(), (1, vocab), dev).unwrap();
    // The host's candidates, order and fixed-point sums (crates/engine/src/sampler.rs).
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64 + row.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln();
    let floor = max as f64 + (1e-12f64).ln();
    let mut c: Vec<(f32, u32)> = row
        .iter()
        .enumerate()
        .filter(|&(_, &l)| l as f64 >= floor)
        .map(|(i, &l)| (((l as f64) - lse).exp() as f32, i as u32))
        .collect();
    c.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    assert_eq!(c.len(), 7);
    let all: Vec<u64> = c.iter().map(|x| (x.0 as f64 * (1u64 << 62) as f64) as u64).collect();
    let mut rounding_differs = 0;
    for top_k in 3..=6 {
        let q = &all[..top_k];
        let total: u64 = q.iter().sum();
        let exact = |u53: u64| {
            let target = ((u53 as u128 * total as u128) >> 53) as u64;
            let mut s = 0;
            q.iter().position(|&x| {
                s += x;
                s > target
            })
        };
        let rounded = |u: f64| {
            let target = (u * total as f64) as u64;
            let mut s = 0;
            q.iter().position(|&x| {
                s += x;
                s > target
            })
        };
        let mut s = 0u64;
        for (k, &qk) in q[..q.len() - 1].iter().enumerate() {
            s += qk;
            // The largest u53 whose target stays below s: candidate k; one more: candidate k + 1.
            let below = ((s as u128) << 53).div_ceil(total as u128) as u64 - 1;
            for (u53, want) in [(below - 1, k), (below, k), (below + 1, k + 1), (below + 2, k + 1)] {
                assert_eq!(exact(u53), Some(want));
                let u = u53 as f64 / (1u64 << 53) as f64;
                rounding_differs += (rounded(u) != Some(want)) as usize;
                let pick = artist_tensor::SamplePick { row: 0, temperature: 1.0, top_k, top_p: 1.0, min_p: 0.0, u };
                let (id, _) = t.sample_rows(&[pick]).unwrap()[0];
                assert_eq!(id, c[want].1, "top-k {top_k}, boundary after candidate {k}, u = {u53} / 2^53");
            }
        }
    }
    assert!(rounding_differs > 0, "these boundaries do not tell exact from f64 arithmetic");
}

/// A row of NaN logits (a broken model) gives token 0 and a NaN logprob, on both sides,
/// instead of a panic or a hang.
#[test]
fn a_nan_row_gives_token_zero() {
    let Some(dev) = gpu() else { return };
    let t = Logits::Tensor(Tensor::from_vec(vec![f32::NAN; 40], (1, 40), dev).unwrap());
    let h = Logits::Host(vec![vec![f32::NAN; 40]]);
    for params in [SamplingParams::default(), SamplingParams { top_p: 0.9, top_k: 3, ..Default::default() }] {
        let (mut a, mut b) = (Sampler::new(params.clone()), Sampler::new(params));
        let (g, w) = (t.sample(&mut [(0, &mut a)]).unwrap()[0], h.sample(&mut [(0, &mut b)]).unwrap()[0]);
        assert_eq!((g.0, w.0), (0, 0));
        assert!(g.1.is_nan() && w.1.is_nan());
    }
}

/// A row's draw and logprob do not depend on the rows drawn beside it: the same bits alone
/// and in a batch of nine (the kernels' chunks follow the vocabulary, not the batch).
#[test]
fn a_draw_does_not_depend_on_the_batch() {
    let Some(dev) = gpu() else { return };
    let vocab = 20_000;
    let data = rows(5, 9, vocab);
    let flat: Vec<f32> = data.iter().flatten().copied().collect();
    let all = Logits::Tensor(Tensor::from_vec(flat, (data.len(), vocab), dev).unwrap());
    let params = SamplingParams { temperature: 0.8, top_p: 0.9, seed: 3, ..Default::default() };
    for row in [0, 4, 8] {
        let one = Logits::Tensor(Tensor::from_vec(data[row].clone(), (1, vocab), dev).unwrap());
        let mut alone = Sampler::new(params.clone());
        let got = one.sample(&mut [(0, &mut alone)]).unwrap()[0];
        let mut batch: Vec<Sampler> = (0..data.len()).map(|_| Sampler::new(params.clone())).collect();
        let mut picks: Vec<(usize, &mut Sampler)> = batch.iter_mut().enumerate().collect();
        let want = all.sample(&mut picks).unwrap()[row];
        assert_eq!((got.0, got.1.to_bits()), (want.0, want.1.to_bits()), "row {row}");
    }
}
