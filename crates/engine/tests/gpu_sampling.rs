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
            let (mut acc, mut n) = (0f64, 0);
            for x in c.iter().take(keep) {
                acc += x.0 as f64;
                n += 1;
                if acc >= top_p as f64 {
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
