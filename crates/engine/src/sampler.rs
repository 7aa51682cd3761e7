//! Turning one row of logits into a token: greedy, or temperature with top-k, top-p and
//! min-p filtering, from a seeded generator so runs repeat exactly.
//!
//! The logprob returned with a token is `log_softmax(logits / temperature)[token]` over the
//! whole vocabulary (plain `log_softmax(logits)` when greedy): the filters choose which
//! tokens may be drawn, but the logprob is the policy's, which is what the GRPO ratio
//! compares against the trainer's recomputation.

use artist_tensor::{SamplePick, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 = off.
    pub top_p: f32,
    /// Keep tokens at least `min_p` times as likely as the most likely one; 0 = off.
    pub min_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    /// Rejects settings that have no meaning.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be a finite number >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Sampler { params, rng, scratch: Vec::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// What the GPU needs to make this sampler's next draw: its settings and the uniform
    /// number [`Sampler::sample`] would draw (none when greedy, as there).
    fn pick(&mut self, row: usize) -> SamplePick {
        let u = if self.params.temperature == 0.0 { 0.0 } else { self.rng.random::<f64>() };
        let p = &self.params;
        SamplePick { row, temperature: p.temperature, top_k: p.top_k, top_p: p.top_p, min_p: p.min_p, u }
    }

    /// Picks a token from `logits` and returns it with its logprob (see the module doc).
    pub fn sample(&mut self, logits: &[f32]) -> (u32, f32) {
        let p = &self.params;
        let greedy = p.temperature == 0.0;
        let inv_t = if greedy { 1.0 } else { 1.0 / p.temperature };
        // log_softmax(logits * inv_t) pieces, in f64 for the normaliser.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max as f64 * inv_t as f64
            + logits.iter().map(|&l| ((l - max) as f64 * inv_t as f64).exp()).sum::<f64>().ln();
        let logprob = |id: u32| (logits[id as usize] as f64 * inv_t as f64 - lse) as f32;
        if greedy {
            let id = argmax(logits);
            return (id, logprob(id));
        }
        // Candidates by probability, most likely first. Tokens below 1e-12 of the top one
        // cannot change a draw at f32 precision; dropping them keeps the sort short.
        let floor = max as f64 * inv_t as f64 + (1e-12f64).ln();
        let c = &mut self.scratch;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l as f64 * inv_t as f64 >= floor)
                .map(|(i, &l)| (((l as f64 * inv_t as f64) - lse).exp() as f32, i as u32)),
        );
        if c.is_empty() {
            // Only when every logit is NaN: token 0, as on the GPU, with a NaN logprob.
            return (0, logprob(0));
        }
        c.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut keep = c.len();
        if p.top_k > 0 {
            keep = keep.min(p.top_k);
        }
        if p.min_p > 0.0 {
            let bar = c[0].0 * p.min_p;
            keep = keep.min(c.iter().take_while(|x| x.0 >= bar).count().max(1));
        }
        if p.top_p < 1.0 {
            let reach = (p.top_p as f64 * FIXED_ONE).ceil() as u64;
            let mut acc = 0u64;
            let mut n = 0;
            for x in c.iter().take(keep) {
                acc += fixed_point(x.0);
                n += 1;
                if acc >= reach {
                    break;
                }
            }
            keep = n.max(1);
        }
        let total: u64 = c[..keep].iter().map(|x| fixed_point(x.0)).sum();
        let target = draw_target(self.rng.random::<f64>(), total);
        let mut id = c[keep - 1].1;
        let mut acc = 0u64;
        for x in &c[..keep] {
            acc += fixed_point(x.0);
            if acc > target {
                id = x.1;
                break;
            }
        }
        (id, logprob(id))
    }
}

/// The probabilities' fixed point in the top-p and draw sums: units of 2^-62, rounded down
/// (a candidate's probability is at least 1e-12 / vocab, some 30 units at 152k tokens).
/// Integer sums are exact, so a running sum does not depend on the order of its additions:
/// the GPU (kernels/sampling.cu), which adds in any order, reaches the same sums to the unit.
/// The rounding moves a boundary by less than vocab * 2^-62 (3.3e-14 at 152k tokens). The
/// f32 probabilities sum to less than 2, so every sum fits in 63 bits.
const FIXED_ONE: f64 = (1u64 << 62) as f64;

fn fixed_point(p: f32) -> u64 {
    (p as f64 * FIXED_ONE) as u64
}

/// The running sum a draw passes: floor(u * total), with u taken to 53 bits (the
/// generator's values are multiples of 2^-53), computed exactly.
fn draw_target(u: f64, total: u64) -> u64 {
    let u53 = (u * (1u64 << 53) as f64) as u64;
    ((u53 as u128 * total as u128) >> 53) as u64
}

/// The logits of one decoding step, `[rows, vocab]`: rows on the host, or a tensor wherever
/// the model ran. On a GPU, [`Logits::sample`] draws there and brings back only ids and
/// logprobs (the same choices as on the host, given the same generators).
pub enum Logits {
    Host(Vec<Vec<f32>>),
    Tensor(Tensor),
}

impl Logits {
    pub fn rows(&self) -> usize {
        match self {
            Logits::Host(r) => r.len(),
            Logits::Tensor(t) => t.dims().first().copied().unwrap_or(0),
        }
    }

    /// Every row on the host (tests, steering; decoding uses [`Logits::sample`]).
    pub fn into_rows(self) -> crate::Result<Vec<Vec<f32>>> {
        match self {
            Logits::Host(r) => Ok(r),
            Logits::Tensor(t) => {
                let v = t.dim(-1)?;
                Ok(t.to_dtype(artist_tensor::DType::F32)?
                    .to_vec::<f32>()?
                    .chunks(v.max(1))
                    .map(<[f32]>::to_vec)
                    .collect())
            }
        }
    }

    /// One draw for each `(row, sampler)`; a row may serve several samplers (the G rollouts
    /// of a prompt draw their first tokens from its one prefill).
    pub fn sample(&self, picks: &mut [(usize, &mut Sampler)]) -> crate::Result<Vec<(u32, f32)>> {
        match self {
            Logits::Tensor(t) if t.device().is_cuda() => {
                let t = t.to_dtype(artist_tensor::DType::F32)?.contiguous()?;
                let ps: Vec<SamplePick> = picks.iter_mut().map(|(row, s)| s.pick(*row)).collect();
                Ok(t.sample_rows(&ps)?)
            }
            Logits::Tensor(t) => {
                let rows = Logits::Tensor(t.clone()).into_rows()?;
                Ok(picks.iter_mut().map(|(row, s)| s.sample(&rows[*row])).collect())
            }
            Logits::Host(rows) => Ok(picks.iter_mut().map(|(row, s)| s.sample(&rows[*row])).collect()),
        }
    }
}

/// Index of the largest logit; the lowest index on ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(params: SamplingParams, logits: &[f32], n: usize) -> Vec<usize> {
        let mut s = Sampler::new(params);
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits).0 as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_takes_the_argmax_with_its_logprob() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let (id, lp) = Sampler::new(SamplingParams::greedy()).sample(&logits);
        assert_eq!(id, 1);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((lp as f64 - (3.0 - z.ln())).abs() < 1e-6);
    }

    #[test]
    fn temperature_sampling_follows_the_distribution() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln(), -30.0];
        let n = 60_000;
        let c = draw(SamplingParams { seed: 1, ..Default::default() }, &logits, n);
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            let got = c[i] as f64 / n as f64;
            assert!((got - want).abs() < 0.01, "token {i}: {got} vs {want}");
        }
        // Temperature 0.5 squares the odds: 1:4:9.
        let c = draw(SamplingParams { temperature: 0.5, seed: 2, ..Default::default() }, &logits, n);
        assert!((c[2] as f64 / n as f64 - 9.0 / 14.0).abs() < 0.01);
        // The logprob is that of the tempered distribution over the whole vocabulary.
        let (id, lp) =
            Sampler::new(SamplingParams { temperature: 0.5, top_k: 1, ..Default::default() }).sample(&logits);
        assert_eq!(id, 2);
        assert!((lp as f64 - (9.0f64 / 14.0).ln()).abs() < 1e-4, "{lp}");
    }

    #[test]
    fn filters_restrict_the_support() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln(), (4.0f32).ln()]; // p = .1 .2 .3 .4
        let n = 20_000;
        let only = |c: &[usize], allowed: &[usize]| (0..4).all(|i| allowed.contains(&i) || c[i] == 0);
        let c = draw(SamplingParams { top_k: 2, seed: 3, ..Default::default() }, &logits, n);
        assert!(only(&c, &[2, 3]) && c[2] > 0 && c[3] > 0, "{c:?}");
        let c = draw(SamplingParams { top_p: 0.65, seed: 4, ..Default::default() }, &logits, n);
        assert!(only(&c, &[2, 3]) && c[2] > 0, "{c:?}"); // .4 + .3 reaches .65
        let c = draw(SamplingParams { top_p: 0.4, seed: 5, ..Default::default() }, &logits, n);
        assert!(only(&c, &[3]), "{c:?}");
        let c = draw(SamplingParams { min_p: 0.5, seed: 6, ..Default::default() }, &logits, n);
        assert!(only(&c, &[1, 2, 3]) && c[1] > 0, "{c:?}"); // .2 >= .5 * .4
        // Renormalised within the kept set: top-k 2 gives 3:4.
        let c = draw(SamplingParams { top_k: 2, seed: 7, ..Default::default() }, &logits, n);
        assert!((c[3] as f64 / n as f64 - 4.0 / 7.0).abs() < 0.015, "{c:?}");
    }

    #[test]
    fn nan_logits_do_not_panic() {
        let mut s = Sampler::new(SamplingParams { top_p: 0.9, min_p: 0.1, ..Default::default() });
        let (id, lp) = s.sample(&[f32::NAN; 5]);
        assert_eq!(id, 0);
        assert!(lp.is_nan());
    }

    #[test]
    fn the_draw_target_is_exact() {
        assert_eq!(draw_target(0.0, 1 << 62), 0);
        assert_eq!(draw_target(0.5, 10), 5);
        assert_eq!(draw_target(0.5, 11), 5);
        // u = 1 - 2^-53, the generator's largest value: floor((2^53 - 1) * 2^62 / 2^53).
        assert_eq!(draw_target(1.0 - f64::EPSILON / 2.0, 1 << 62), (1 << 62) - (1 << 9));
        // u = 1 reaches the total, which no running sum exceeds (the last kept is drawn).
        assert_eq!(draw_target(1.0, 12345), 12345);
        // A total whose product with u needs more than 64 bits.
        let t = (1u64 << 62) + 12345;
        let u = 0.7;
        // 0.7 is a multiple of 2^-53, so the target is floor(u53 * t / 2^53) with u53 = 0.7 * 2^53.
        let (u53, got) = ((u * (1u64 << 53) as f64) as u128, draw_target(u, t) as u128);
        let exact = u53 * t as u128;
        assert!(got << 53 <= exact && exact < (got + 1) << 53);
        assert!((got as f64 - u * t as f64).abs() < 2048.0);
        assert_eq!(fixed_point(1.0), 1 << 62);
        assert_eq!(fixed_point(0.75), 3 << 60);
        assert_eq!(fixed_point(1e-30), 0);
    }

    #[test]
    fn seeds_repeat() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
        let p = SamplingParams { temperature: 0.9, top_p: 0.95, seed: 42, ..Default::default() };
        let (mut a, mut b) = (Sampler::new(p.clone()), Sampler::new(p));
        let xa: Vec<u32> = (0..50).map(|_| a.sample(&logits).0).collect();
        let xb: Vec<u32> = (0..50).map(|_| b.sample(&logits).0).collect();
        assert_eq!(xa, xb);
        assert!(SamplingParams { temperature: -1.0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { top_p: 0.0, ..Default::default() }.validate().is_err());
    }
}
