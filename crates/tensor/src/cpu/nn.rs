//! Row kernels of the transformer: softmax, log-softmax, RMSNorm, RoPE, SiLU.
//! Each row is reduced in f32 whatever the storage type.

use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::elementwise::{assume_init, uninit};
use super::min_items;
use super::reduce::{row_max, row_sum};
use super::simd::exp_shifted;
use crate::WithDType;

/// `exp(x)` to about 2 ulp for `x <= 88`, written so that loops over it vectorise (libm's
/// `expf` does not). Underflows to 0 below -87.3. Used where arguments are bounded above:
/// softmax (`x - max <= 0`) and the sigmoid of SiLU.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.336_55, 88.0);
    let n = (xc * LOG2E + 0.5).floor();
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    // SAFETY: `n` is finite and within [-126, 128) because `xc` is clamped (NaN excepted,
    // whose result is discarded below). The unchecked conversion vectorises; `as` does not.
    let n_ok = if n.is_nan() { 0.0 } else { n };
    let ni: i32 = unsafe { n_ok.to_int_unchecked() };
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if x < -87.336_55 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y * scale
    }
}

#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + fast_exp(-x))
}

/// Softmax (or log-softmax) of each contiguous row of `cols` elements.
pub(crate) fn softmax_rows<T: WithDType>(data: &[T], cols: usize, log: bool) -> Vec<T> {
    if cols == 0 {
        return vec![T::default(); data.len()];
    }
    let mut out = uninit::<T>(data.len());
    out.par_chunks_mut(cols).zip(data.par_chunks(cols)).with_min_len(min_items(cols)).for_each_init(
        Vec::new,
        |scratch: &mut Vec<f32>, (out, row)| {
            let m = row_max(row);
            if m == f32::NEG_INFINITY || m.is_nan() {
                // All -inf (a fully masked row) or NaN: torch gives NaN everywhere.
                out.fill(MaybeUninit::new(T::from_f32(f32::NAN)));
                return;
            }
            scratch.resize(cols, 0.0);
            let sum = exp_shifted(scratch, row, m);
            if log {
                let lse = m + sum.ln();
                for (o, &x) in out.iter_mut().zip(row) {
                    o.write(T::from_f32(x.to_f32() - lse));
                }
            } else {
                let inv = 1.0 / sum;
                for (o, &e) in out.iter_mut().zip(scratch.iter()) {
                    o.write(T::from_f32(e * inv));
                }
            }
        },
    );
    // SAFETY: every row was written by one of the branches above.
    unsafe { assume_init(out) }
}

/// The entropy `-sum_j p_j ln p_j` of the softmax of each contiguous row of `cols`
/// elements, in one pass over the row and one over its exponentials: with `m` the row's
/// maximum, `e_j = exp(x_j - m)` and `S = sum e_j`, it is `ln S - sum e_j (x_j - m) / S`.
/// A row whose maximum is not finite gives NaN.
pub(crate) fn softmax_entropy_rows<T: WithDType>(data: &[T], cols: usize) -> Vec<f32> {
    if cols == 0 {
        return vec![0.0; data.len()];
    }
    data.par_chunks(cols)
        .with_min_len(min_items(cols))
        .map_init(Vec::new, |scratch: &mut Vec<f32>, row| {
            let m = row_max(row);
            if !m.is_finite() {
                return f32::NAN;
            }
            scratch.resize(cols, 0.0);
            let s = exp_shifted(scratch, row, m);
            // sum e_j (x_j - m) with eight independent sums (vectorised, fixed order); a -inf
            // entry (e_j = 0) adds 0, not 0 * -inf.
            let d = |x: &T| (x.to_f32() - m).max(f32::MIN);
            let mut acc = [0f32; 8];
            let (e8, x8) = (scratch.chunks_exact(8), row.chunks_exact(8));
            let tail: f32 = e8.remainder().iter().zip(x8.remainder()).map(|(e, x)| e * d(x)).sum();
            for (e, x) in e8.zip(x8) {
                for l in 0..8 {
                    acc[l] = e[l].mul_add(d(&x[l]), acc[l]);
                }
            }
            s.ln() - (acc.iter().sum::<f32>() + tail) / s
        })
        .collect()
}

/// Hugging Face `Qwen2RMSNorm`: `weight * (x * rsqrt(mean(x^2) + eps))`, statistics in
/// f32, the normalised value rounded to the input type before the weight multiplies it.
pub(crate) fn rms_norm_rows<T: WithDType>(data: &[T], weight: &[T], eps: f32) -> Vec<T> {
    let cols = weight.len();
    let mut out = vec![T::default(); data.len()];
    if cols == 0 {
        return out;
    }
    out.par_chunks_mut(cols).zip(data.par_chunks(cols)).with_min_len(min_items(cols)).for_each(|(out, row)| {
        let ms = row_sum(row, |x| x * x) / cols as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, &x), &w) in out.iter_mut().zip(row).zip(weight) {
            *o = T::from_f32(w.to_f32() * T::from_f32(x.to_f32() * r).to_f32());
        }
    });
    out
}

/// The gradients of `silu(gate) * up` from `g`, in one pass: `dgate = (g up) silu'(gate)`,
/// `dup = g silu(gate)`, each intermediate rounded to `T` where the composition of `mul`,
/// `silu_backward` and `silu` rounds it, so the values are that composition's.
pub(crate) fn silu_mul_backward<T: WithDType>(gate: &[T], up: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
    let mut dgate = vec![T::default(); gate.len()];
    let mut dup = vec![T::default(); gate.len()];
    const CHUNK: usize = 4096;
    dgate.par_chunks_mut(CHUNK).zip(dup.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, (dg, du))| {
        let at = c * CHUNK;
        for (i, (dg, du)) in dg.iter_mut().zip(du.iter_mut()).enumerate() {
            (*dg, *du) = silu_mul_grad(gate[at + i], up[at + i], g[at + i]);
        }
    });
    (dgate, dup)
}

/// `(dgate, dup)` of one element of `silu(gate) * up` from its gradient `g`, rounded to `T`
/// where the composition rounds.
#[inline]
fn silu_mul_grad<T: WithDType>(gate: T, up: T, g: T) -> (T, T) {
    let (x, u, gv) = (gate.to_f32(), up.to_f32(), g.to_f32());
    let gu = T::from_f32(gv * u).to_f32();
    (T::from_f32(gu * crate::ops::dsilu(x)), T::from_f32(gv * T::from_f32(silu(x)).to_f32()))
}

/// [`silu_mul_backward`] of the fused `gu` (rows of `[gate | up]`, `2 cols` wide) from `g`
/// (rows of `cols`), written as f32 rows of `[dgate | dup]`.
pub(crate) fn swiglu_backward_rows<T: WithDType>(gu: &[T], g: &[T], cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; gu.len()];
    if cols == 0 {
        return out;
    }
    let rows_per = (4096 / cols).max(1);
    out.par_chunks_mut(2 * cols * rows_per).enumerate().for_each(|(c, block)| {
        for (r, row) in block.chunks_mut(2 * cols).enumerate() {
            let at = (c * rows_per + r) * cols;
            let (x, gr) = (&gu[2 * at..2 * at + 2 * cols], &g[at..at + cols]);
            let (dg, du) = row.split_at_mut(cols);
            for j in 0..cols {
                let (a, b) = silu_mul_grad(x[j], x[cols + j], gr[j]);
                (dg[j], du[j]) = (a.to_f32(), b.to_f32());
            }
        }
    });
    out
}

/// The gradients of [`rms_norm_rows`] from the output gradient `g` (f32): `dx` (f32) and,
/// with `want_dw`, `dw` (f32, one per column). Per row, with `r = 1 / sqrt(mean(x^2) +
/// eps)`, `xh = x r` and `gw = g w`: `dx = r (gw - xh mean(gw xh))`; `dw` sums `g xh` over
/// the rows in order. Every sum runs in the order the composition of tensor ops runs it
/// (means as eight-lane row sums times `1 / cols`, dW one column at a time from the first
/// row), so the values are that composition's to the bit, in two passes instead of a dozen.
pub(crate) fn rms_norm_backward_rows<T: WithDType>(
    x: &[T],
    weight: &[T],
    g: &[f32],
    eps: f32,
    want_dw: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let cols = weight.len();
    let mut dx = vec![0f32; x.len()];
    if cols == 0 {
        return (dx, want_dw.then(Vec::new));
    }
    let rows = x.len() / cols;
    let inv_cols = 1.0 / cols as f32;
    let mut rinv = vec![0f32; rows];
    dx.par_chunks_mut(cols)
        .zip(x.par_chunks(cols).zip(g.par_chunks(cols)))
        .zip(rinv.par_iter_mut())
        .with_min_len(min_items(cols))
        .for_each(|((dx, (x, g)), r_out)| {
            let r = 1.0 / (row_sum(x, |v| v * v) * inv_cols + eps).sqrt();
            *r_out = r;
            let gw = |i: usize| g[i] * weight[i].to_f32();
            let xh = |i: usize| x[i].to_f32() * r;
            let m = lane_sum(cols, |i| gw(i) * xh(i)) * inv_cols;
            for (i, d) in dx.iter_mut().enumerate() {
                *d = r * (gw(i) - xh(i) * m);
            }
        });
    if !want_dw {
        return (dx, None);
    }
    let mut dw = vec![0f32; cols];
    let piece = 64;
    dw.par_chunks_mut(piece).enumerate().for_each(|(p, dw)| {
        let c0 = p * piece;
        for (row, &r) in rinv.iter().enumerate() {
            let (x, g) = (&x[row * cols + c0..], &g[row * cols + c0..]);
            for (j, d) in dw.iter_mut().enumerate() {
                let v = g[j] * (x[j].to_f32() * r);
                *d = if row == 0 { v } else { *d + v };
            }
        }
    });
    (dx, Some(dw))
}

/// `row_sum` over `f(0) .. f(n - 1)`: the same eight lanes, the same order.
#[inline]
fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let full = n / 8 * 8;
    for c in (0..full).step_by(8) {
        for (j, a) in acc.iter_mut().enumerate() {
            *a += f(c + j);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in full..n {
        s += f(i);
    }
    s
}

/// Rotate-half RoPE (Hugging Face Qwen2) on contiguous `x: [b, t, h, d]` with
/// `cos`, `sin: [cb, t, d/2]` where `cb` is 1 (shared positions) or `b`:
/// `out[i] = x[i] cos[i] - x[i+d/2] sin[i]`, `out[i+d/2] = x[i+d/2] cos[i] + x[i] sin[i]`.
pub(crate) fn rope<T: WithDType>(x: &[T], cos: &[f32], sin: &[f32], dims: [usize; 4], cb: usize) -> Vec<T> {
    let [_, t, h, d] = dims;
    let half = d / 2;
    let mut out = vec![T::default(); x.len()];
    if d == 0 {
        return out;
    }
    // One task item = all heads of one (batch, position).
    out.par_chunks_mut(h * d).zip(x.par_chunks(h * d)).with_min_len(min_items(h * d)).enumerate().for_each(
        |(bt, (out, x))| {
            let (bi, ti) = (bt / t, bt % t);
            let row = (if cb == 1 { 0 } else { bi }) * t + ti;
            let (c, s) = (&cos[row * half..(row + 1) * half], &sin[row * half..(row + 1) * half]);
            for (out, x) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                let (x1, x2) = x.split_at(half);
                let (o1, o2) = out.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i].to_f32(), x2[i].to_f32());
                    o1[i] = T::from_f32(a * c[i] - b * s[i]);
                    o2[i] = T::from_f32(b * c[i] + a * s[i]);
                }
            }
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64 from the definition on rows of every shape the kernel splits (eight
    /// lanes and a tail), peaked and flat; a uniform row gives ln(cols), a row with -inf
    /// entries ignores them, a row of -inf or NaN gives NaN.
    #[test]
    fn softmax_entropy_matches_f64() {
        let mut x = 7u64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 24) as f32
        };
        for (cols, spread) in [(1usize, 1.0f32), (7, 3.0), (8, 0.1), (33, 8.0), (1000, 20.0), (4099, 2.0)] {
            let data: Vec<f32> = (0..3 * cols).map(|_| (next() - 0.5) * spread + 40.0).collect();
            let got = softmax_entropy_rows(&data, cols);
            for (row, g) in data.chunks(cols).zip(&got) {
                let m = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
                let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
                let want = -row.iter().map(|&v| (v as f64 - lse).exp() * (v as f64 - lse)).sum::<f64>();
                assert!((*g as f64 - want).abs() <= 2e-5 * want.max(1.0), "cols {cols}: {g} vs {want}");
            }
        }
        assert!((softmax_entropy_rows(&[3.5f32; 50], 50)[0] - 50f32.ln()).abs() < 1e-5);
        let inf = f32::NEG_INFINITY;
        let partly = softmax_entropy_rows(&[0.0, inf, 0.0, inf], 4)[0];
        assert!((partly - 2f32.ln()).abs() < 1e-6, "{partly}");
        let bad = softmax_entropy_rows(&[inf, inf, f32::NAN, 1.0], 2);
        assert!(bad[0].is_nan() && bad[1].is_nan());
    }

    #[test]
    fn fast_exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (fast_exp(x), (x as f64).exp());
            let rel = ((got as f64 - want) / want).abs();
            assert!(rel < 2.5e-7, "exp({x}) = {got}, want {want}, rel {rel}");
            x += 0.0137;
        }
        assert_eq!(fast_exp(-100.0), 0.0);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
    }
}
