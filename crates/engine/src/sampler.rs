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

use crate::exp64;

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
    /// Candidates (probability, id) and their log-probabilities before exponentiation.
    scratch: Vec<(f32, u32)>,
    exps: Vec<f64>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Sampler { params, rng, scratch: Vec::new(), exps: Vec::new() }
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
        let lse = max as f64 * inv_t as f64 + exp64::sum_exp(logits, max, inv_t as f64).ln();
        let logprob = |id: u32| (logits[id as usize] as f64 * inv_t as f64 - lse) as f32;
        if greedy {
            let id = argmax(logits);
            return (id, logprob(id));
        }
        // Candidates by probability, most likely first. Tokens below 1e-12 of the top one
        // cannot change a draw at f32 precision; dropping them keeps the selection short.
        let floor = max as f64 * inv_t as f64 + (1e-12f64).ln();
        // Written without a branch per token (a tenth of a peaked row passes, at random):
        // every token is stored in the next free slot, which only a candidate keeps.
        // The buffers only grow: a row never writes past its own length.
        let (c, xs) = (&mut self.scratch, &mut self.exps);
        if c.len() < logits.len() {
            c.resize(logits.len(), (0.0, 0));
            xs.resize(logits.len(), 0.0);
        }
        let (cs, xss) = (&mut c[..logits.len()], &mut xs[..logits.len()]);
        let mut n = 0;
        for (i, &l) in logits.iter().enumerate() {
            let x = l as f64 * inv_t as f64;
            xss[n] = x - lse;
            cs[n].1 = i as u32;
            n += (x >= floor) as usize;
        }
        let (c, xs) = (&mut c[..n], &mut xs[..n]);
        exp64::exp_in_place(xs);
        for (c, &p) in c.iter_mut().zip(xs.iter()) {
            c.0 = p as f32;
        }
        if c.is_empty() {
            // Only when every logit is NaN: token 0, as on the GPU, with a NaN logprob.
            return (0, logprob(0));
        }
        // The rule is defined on the candidates in order (most likely first, the lower id
        // first on ties): keep a prefix (top-k, min-p, top-p), then take the first candidate
        // whose running sum passes the draw. Each prefix is found by selection, in time
        // linear in the candidates, without sorting them.
        let mut keep = c.len();
        if p.top_k > 0 && p.top_k < keep {
            c.select_nth_unstable_by(p.top_k - 1, before);
            keep = p.top_k;
        }
        if p.min_p > 0.0 {
            let top = c[..keep].iter().fold(0f32, |m, x| m.max(x.0));
            let bar = top * p.min_p;
            keep = partition_in_place(&mut c[..keep], |x| x.0 >= bar).max(1);
        }
        if p.top_p < 1.0 {
            let reach = (p.top_p as f64 * FIXED_ONE).ceil() as u64;
            if let Some(at) = first_passing(&mut c[..keep], reach, true) {
                keep = at + 1;
            }
        }
        let total: u64 = c[..keep].iter().map(|x| fixed_point(x.0)).sum();
        let target = draw_target(self.rng.random::<f64>(), total);
        let id = match first_passing(&mut c[..keep], target, false) {
            Some(at) => c[at].1,
            // No running sum passes the target (only at u = 1): the last kept candidate.
            None => {
                c[..keep].iter().copied().reduce(|a, b| if before(&a, &b).is_lt() { b } else { a }).expect("one kept").1
            }
        };
        (id, logprob(id))
    }
}

/// The candidates' order: the more likely first, the lower id first on ties (ids differ, so
/// it is total).
fn before(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Moves the items that satisfy `keep` to the front, returning how many there are.
fn partition_in_place<T>(v: &mut [T], keep: impl Fn(&T) -> bool) -> usize {
    let mut n = 0;
    for i in 0..v.len() {
        if keep(&v[i]) {
            v.swap(n, i);
            n += 1;
        }
    }
    n
}

/// `f32::total_cmp`'s order as an unsigned integer's: `before(a, b)` is `a`'s key (then the
/// larger `u32::MAX - id`) above `b`'s.
fn total_order_key(p: f32) -> u32 {
    let b = p.to_bits();
    if b >> 31 == 1 { !b } else { b | 1 << 31 }
}

/// Sorting is cheaper than partitioning below this many candidates.
const SELECT_SMALL: usize = 32;

/// The first candidate, in [`before`]'s order, at which the running sum of fixed-point
/// probabilities reaches `bound` (`reach`) or passes it (`!reach`): its index, with `v`
/// reordered so that the candidates before it in that order are exactly `v[..index]`
/// (unordered). `None` when the whole sum stays short, `v` then reordered in some way.
/// Weighted quickselect: expected time linear in `v.len()`.
fn first_passing(v: &mut [(f32, u32)], bound: u64, reach: bool) -> Option<usize> {
    let passes = |acc: u64| if reach { acc >= bound } else { acc > bound };
    // v[..lo] precede every candidate of v[lo..hi], and sum to `sum`; the answer, if any,
    // lies in v[lo..hi].
    let (mut lo, mut hi, mut sum) = (0usize, v.len(), 0u64);
    while hi - lo > SELECT_SMALL {
        // Median of three as the pivot, moved to the end of the range.
        let (a, m, z) = (lo, lo + (hi - lo) / 2, hi - 1);
        let mut three = [a, m, z];
        three.sort_by(|&i, &j| before(&v[i], &v[j]));
        v.swap(three[1], z);
        let pivot = v[z];
        // Lomuto's partition without a branch per candidate (on a flat row each comparison
        // is a coin toss): every candidate is swapped into slot n, which advances past it
        // only if it precedes the pivot, so v[lo..n] precede it and v[n..=i] do not.
        let key = |x: &(f32, u32)| (total_order_key(x.0), u32::MAX - x.1);
        let pk = key(&pivot);
        let (mut n, mut part) = (lo, 0u64);
        for i in lo..z {
            let t = v[i];
            let lt = key(&t) > pk;
            v[i] = v[n];
            v[n] = t;
            part += fixed_point(t.0) & 0u64.wrapping_sub(lt as u64);
            n += lt as usize;
        }
        v.swap(n, z);
        if passes(sum + part) {
            hi = n;
        } else if passes(sum + part + fixed_point(pivot.0)) {
            return Some(n);
        } else {
            sum += part + fixed_point(pivot.0);
            lo = n + 1;
        }
    }
    v[lo..hi].sort_unstable_by(before);
    for (i, x) in v[lo..hi].iter().enumerate() {
        sum += fixed_point(x.0);
        if passes(sum) {
            return Some(lo + i);
        }
    }
    None
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
                let v = t.dim(-1)?;
                let flat = t.to_dtype(artist_tensor::DType::F32)?.to_vec::<f32>()?;
                Ok(sample_rows(picks, |row| &flat[row * v..(row + 1) * v]))
            }
            Logits::Host(rows) => Ok(sample_rows(picks, |row| &rows[row])),
        }
    }
}

/// The host's draws, the samplers in parallel: each has its own generator, so the draws are
/// the same in any order. A flat row of Qwen2.5's 152k vocabulary costs two f64 exponentials
/// per token (four at a time, `exp64`) and a selection over all of them (docs/BENCHMARKS.md
/// has what drawing rows in parallel saved).
fn sample_rows<'a>(picks: &mut [(usize, &mut Sampler)], row: impl Fn(usize) -> &'a [f32] + Sync) -> Vec<(u32, f32)> {
    use rayon::prelude::*;
    picks.par_iter_mut().map(|(r, s)| s.sample(row(*r))).collect()
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

    /// The rule as first written: sort every candidate, walk the prefixes.
    fn sample_by_sorting(p: &SamplingParams, rng: &mut ChaCha8Rng, logits: &[f32]) -> u32 {
        let inv_t = 1.0 / p.temperature as f64;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max as f64 * inv_t + logits.iter().map(|&l| ((l - max) as f64 * inv_t).exp()).sum::<f64>().ln();
        let floor = max as f64 * inv_t + (1e-12f64).ln();
        let mut c: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l as f64 * inv_t >= floor)
            .map(|(i, &l)| ((l as f64 * inv_t - lse).exp() as f32, i as u32))
            .collect();
        c.sort_by(before);
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
            let (mut acc, mut n) = (0u64, 0);
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
        let target = draw_target(rng.random::<f64>(), total);
        let mut acc = 0u64;
        for x in &c[..keep] {
            acc += fixed_point(x.0);
            if acc > target {
                return x.1;
            }
        }
        c[keep - 1].1
    }

    /// Selection gives the draws sorting gives, over rows long and short, flat and peaked,
    /// with many tied probabilities, and every filter: the same token every time.
    #[test]
    fn selection_draws_what_sorting_draws() {
        let mut values = ChaCha8Rng::seed_from_u64(99);
        let mut draws = 0;
        for case in 0..240 {
            let vocab = [1usize, 2, 5, 33, 100, 1000, 5000][case % 7];
            // Quantised logits tie often; the scale makes rows flat or peaked.
            let scale = [0.05f32, 1.0, 8.0][case % 3];
            let step = [0.0f32, 0.25, 1.0][(case / 3) % 3];
            let logits: Vec<f32> = (0..vocab)
                .map(|_| {
                    let x = values.random::<f32>() * 4.0 - 2.0;
                    scale * if step > 0.0 { (x / step).round() * step } else { x }
                })
                .collect();
            let p = SamplingParams {
                temperature: [1.0, 0.7, 1.3][case % 3],
                top_k: [0, 0, 1, 3, 50][case % 5],
                top_p: [1.0, 0.9, 0.5, 0.05, 1.0, 0.999][case % 6],
                min_p: [0.0, 0.0, 0.1, 0.5][(case / 5) % 4],
                seed: case as u64,
            };
            let mut ours = Sampler::new(p.clone());
            let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
            for _ in 0..25 {
                let want = sample_by_sorting(&p, &mut rng, &logits);
                assert_eq!(ours.sample(&logits).0, want, "case {case}: {p:?}, vocab {vocab}");
                draws += 1;
            }
        }
        assert_eq!(draws, 6000);
        // Bounds exactly at each running sum (tied probabilities among them): reaching it
        // stops at that candidate, passing it at the next; past the total, none.
        let probs = [0.2f32, 0.05, 0.1, 0.05, 0.3, 0.05, 0.15, 0.1];
        for big in [false, true] {
            // 40 copies of the probabilities, so the quickselect partitions before sorting.
            let copies = if big { 40 } else { 1 };
            let all: Vec<(f32, u32)> =
                (0..copies * probs.len()).map(|i| (probs[i % 8] / copies as f32, i as u32)).collect();
            let mut order = all.clone();
            order.sort_by(before);
            let mut acc = 0u64;
            for (i, x) in order.iter().enumerate() {
                acc += fixed_point(x.0);
                let mut v = all.clone();
                let at = first_passing(&mut v, acc, true).unwrap();
                assert_eq!((at, v[at]), (i, *x), "reach {acc}");
                assert!(v[..at].iter().all(|y| before(y, x).is_lt()));
                let mut v = all.clone();
                match first_passing(&mut v, acc, false) {
                    Some(at) => assert_eq!(v[at], order[i + 1], "pass {acc}"),
                    None => assert_eq!(i, order.len() - 1),
                }
            }
            assert_eq!(first_passing(&mut all.clone(), acc + 1, true), None);
        }
    }

    #[test]
    fn nan_logits_do_not_panic() {
        let mut s = Sampler::new(SamplingParams { top_p: 0.9, min_p: 0.1, ..Default::default() });
        let (id, lp) = s.sample(&[f32::NAN; 5]);
        assert_eq!(id, 0);
        assert!(lp.is_nan());
    }

    #[test]
    fn the_partitions_key_orders_as_before_does() {
        let ps =
            [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e-45, -1e-45, 0.5, 0.25, -2.0, 1.0];
        for &a in &ps {
            for &b in &ps {
                for (ia, ib) in [(3u32, 7u32), (7, 3), (0, u32::MAX)] {
                    let (x, y) = ((a, ia), (b, ib));
                    let keyed = (total_order_key(a), u32::MAX - ia) > (total_order_key(b), u32::MAX - ib);
                    assert_eq!(keyed, before(&x, &y).is_lt(), "{x:?} {y:?}");
                }
            }
        }
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

    #[test]
    fn a_batch_draws_what_each_sampler_draws_alone() {
        // Rows peaked at different tokens, six samplers (two sharing row 0, one greedy),
        // drawn together (in parallel) from host rows and from a CPU tensor, five steps.
        let vocab = 500;
        let rows: Vec<Vec<f32>> =
            (0..3).map(|r| (0..vocab).map(|i| -(((i + 97 * r) % vocab) as f32) / 4.0).collect()).collect();
        let params = |i: u64| SamplingParams {
            temperature: if i == 5 { 0.0 } else { 0.8 + 0.1 * i as f32 },
            top_k: if i == 3 { 20 } else { 0 },
            seed: 7 + i,
            ..Default::default()
        };
        let on_row = [0usize, 1, 0, 2, 1, 2];
        let fresh = || (0..6).map(|i| Sampler::new(params(i))).collect::<Vec<_>>();
        let (mut alone, mut host, mut tensor) = (fresh(), fresh(), fresh());
        let flat: Vec<f32> = rows.concat();
        let t = Tensor::from_vec(flat, (3, vocab), artist_tensor::Device::Cpu).unwrap();
        for _ in 0..5 {
            let want: Vec<(u32, f32)> = alone.iter_mut().zip(on_row).map(|(s, r)| s.sample(&rows[r])).collect();
            let mut picks: Vec<(usize, &mut Sampler)> = on_row.iter().copied().zip(host.iter_mut()).collect();
            assert_eq!(Logits::Host(rows.clone()).sample(&mut picks).unwrap(), want);
            let mut picks: Vec<(usize, &mut Sampler)> = on_row.iter().copied().zip(tensor.iter_mut()).collect();
            assert_eq!(Logits::Tensor(t.clone()).sample(&mut picks).unwrap(), want);
            // The rows' peaks differ, so a pick reading the wrong row would draw elsewhere.
            assert!(want.iter().zip(on_row).all(|(&(id, _), r)| (id as usize + 97 * r) % vocab < 60));
        }
    }
}
