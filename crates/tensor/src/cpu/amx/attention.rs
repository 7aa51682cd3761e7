//! Causal attention's forward on the AMX tiles for bf16 queries, keys and values (a bf16
//! model's attention, or one autocast to bf16): the scores `q k^T` and the weighted sums
//! `p v` as tile products, the softmax online in f32 between them, as PyTorch's CPU flash
//! attention runs a bf16 model on these machines.
//!
//! The keys and values of every KV head are packed once per call into the tiles' pair-by-pair
//! layout, 32 positions a block: keys as [`super::linear`] packs its weights (each position a
//! column of `k^T`), values with the pairs along positions. A task takes 32 rows (queries of
//! the heads that share a KV head, as in `cpu::attention`) and runs over blocks of
//! [`KEYS`] positions up to its last query: the rows' scores into a buffer (the four
//! accumulator tiles, `d / 32` rounds per 32 positions), scaled, the running maximum and sum
//! updated and the output rows rescaled where the maximum moved, the probabilities rounded
//! to bf16, and then, 32 output columns at a time, the output rows loaded into the
//! accumulators, the block's probabilities times its values added, and stored back.
//!
//! Numerics: the scores are exact products of the bf16 inputs summed in f32; the softmax,
//! its sum and the output stay f32; the probabilities meet the values rounded to bf16 (as
//! PyTorch's kernel does), so the output differs from the f32 kernels' by that rounding:
//! about 2^-9 of the values' size.

use half::bf16;
use rayon::prelude::*;

use super::{Out, imp, pack_pairs};
use crate::attention::AttnDims;
use crate::cpu::nn::fast_exp;
use crate::cpu::simd::exp_shifted;

/// Positions per block of the online softmax: a block's scores are 16 KiB for 32 rows, and
/// the output rows pass through the accumulators once per block.
const KEYS: usize = 128;

/// Rows per task: the two 16-row tiles of the products.
const ROWS: usize = 32;

/// Rows of attention (queries times heads) below which the f32 kernels run instead: a
/// decode step's one query fills a few rows of a tile.
pub(crate) const MIN_ROWS: usize = 32;

/// Whether [`forward`] runs attention of these sizes here.
pub(crate) fn runs(a: AttnDims) -> bool {
    a.d > 0 && a.d.is_multiple_of(32) && a.t * (a.heads / a.kv_heads) >= MIN_ROWS && super::available()
}

/// `softmax(scale q k^T, causal) v` of contiguous bf16 `q: [t, heads, d]` (the last `t` of
/// `len` positions), `k`, `v: [len, kv_heads, d]`: the output `[t, heads, d]` and each
/// (head, query)'s log-sum-exp of the scaled scores `[heads, t]`, both f32, as
/// `cpu::attention::forward` returns them. `None` where the tiles do not run: no AMX
/// (`super::available`), a head dim that is not a multiple of 32, or fewer than
/// [`MIN_ROWS`] rows.
pub(crate) fn forward(q: &[bf16], k: &[bf16], v: &[bf16], a: AttnDims, scale: f32) -> Option<(Vec<f32>, Vec<f32>)> {
    if !runs(a) {
        return None;
    }
    let (rep, d, off) = (a.heads / a.kv_heads, a.d, a.len - a.t);
    let rows = a.t * rep; // per KV head
    debug_assert!(q.len() >= a.t * a.heads * d && k.len() >= a.len * a.kv_heads * d && v.len() >= k.len());
    let blocks = a.len.div_ceil(32); // of 32 positions, per KV head
    let packed = 16 * d; // u32 per packed block of keys or values
    let (mut kp, mut vp) = (vec![0u32; a.kv_heads * blocks * packed], vec![0u32; a.kv_heads * blocks * packed]);
    kp.par_chunks_mut(packed).zip(vp.par_chunks_mut(packed)).enumerate().for_each(|(n, (kb, vb))| {
        let (g, j0) = (n / blocks, n % blocks * 32);
        let at = |j: usize| (j < a.len).then(|| (j * a.kv_heads + g) * d);
        // Keys: position j0 + c is column c of k^T, its d values the sum's terms.
        pack_pairs(|c| at(j0 + c).map(|o| &k[o..o + d]), d, d, kb);
        // Values: d / 16 panels of [16 pairs of positions][16 columns].
        let zeros = vec![0u16; d];
        let vrow = |j: usize| at(j).map_or(&zeros[..], |o| bytemuck::cast_slice(&v[o..o + d]));
        for p in 0..16 {
            let (lo, hi) = (vrow(j0 + 2 * p), vrow(j0 + 2 * p + 1));
            for (c, panel) in vb.chunks_exact_mut(256).enumerate() {
                let (lo, hi) = (&lo[16 * c..][..16], &hi[16 * c..][..16]);
                for ((o, &l), &h) in panel[16 * p..][..16].iter_mut().zip(lo).zip(hi) {
                    *o = l as u32 | (h as u32) << 16;
                }
            }
        }
    });
    let mut out: Vec<f32> = Vec::with_capacity(a.t * a.heads * d);
    let mut lse: Vec<f32> = Vec::with_capacity(a.heads * a.t);
    let (dst, dst_lse) = (Out(out.as_mut_ptr()), Out(lse.as_mut_ptr()));
    let tasks_per_head = rows.div_ceil(ROWS);
    (0..a.kv_heads * tasks_per_head).into_par_iter().for_each(|task| {
        let (g, r0) = (task / tasks_per_head, task % tasks_per_head * ROWS);
        let live = ROWS.min(rows - r0); // rows past `rows` are padding
        // Row r0 + r is query (r0 + r) / rep of head g * rep + (r0 + r) % rep.
        let at = |r: usize| ((r0 + r) / rep, g * rep + (r0 + r) % rep);
        let mut qa = vec![0u16; ROWS * d];
        for (r, dst) in qa.chunks_exact_mut(d).take(live).enumerate() {
            let (i, h) = at(r);
            dst.copy_from_slice(bytemuck::cast_slice(&q[(i * a.heads + h) * d..][..d]));
        }
        let mut s = vec![0f32; ROWS * KEYS];
        let mut e = [0f32; KEYS];
        let mut p = vec![0u16; ROWS * KEYS];
        let mut acc = vec![0f32; ROWS * d];
        let (mut m, mut l) = ([f32::NEG_INFINITY; ROWS], [0f32; ROWS]);
        let keys = off + at(live - 1).0 + 1; // the last row sees positions 0..keys
        // SAFETY: AMX present and granted (`available`).
        unsafe { imp::configure() };
        for j0 in (0..keys).step_by(KEYS) {
            let n = KEYS.min(keys - j0);
            let subs = n.div_ceil(32);
            for sb in 0..subs {
                let kb = kp[(g * blocks + j0 / 32 + sb) * packed..].as_ptr() as *const u16;
                // SAFETY: 32 rows of d values in qa, two panels of d / 2 pairs in the packed
                // block (inside kp: blocks past `len` are not reached, j0 + 32 sb < keys <=
                // len), 32 x 32 scores inside s (columns 32 sb.. of KEYS).
                unsafe { imp::block(qa.as_ptr(), kb, d, s.as_mut_ptr().add(32 * sb), KEYS) };
            }
            for r in 0..ROWS {
                let pr = &mut p[r * KEYS..][..32 * subs];
                // Positions of the block row r sees (none for padding rows).
                let seen = if r < live { (off + at(r).0 + 1).saturating_sub(j0).min(n) } else { 0 };
                if seen == 0 {
                    pr.fill(0);
                    continue;
                }
                let sr = &mut s[r * KEYS..][..seen];
                let top = scale_max(sr, scale);
                let m_new = m[r].max(top);
                if m_new != m[r] {
                    let corr = if m[r] == f32::NEG_INFINITY { 0.0 } else { fast_exp(m[r] - m_new) };
                    l[r] *= corr;
                    acc[r * d..][..d].iter_mut().for_each(|x| *x *= corr);
                    m[r] = m_new;
                }
                l[r] += exp_shifted(&mut e[..seen], sr, m_new);
                for (o, &x) in pr.iter_mut().zip(&e[..seen]) {
                    *o = round_bf16(x);
                }
                pr[seen..].fill(0);
            }
            let vb = vp[(g * blocks + j0 / 32) * packed..].as_ptr() as *const u16;
            for c in (0..d).step_by(32) {
                // SAFETY: the probabilities' 32 rows of KEYS values (subs rounds of 32), the
                // values' panels c / 16 and c / 16 + 1 of `subs` packed blocks (a block is
                // 32 d values, a panel 512), and 32 x 32 outputs inside acc.
                unsafe {
                    let b = vb.add(c / 16 * 512);
                    imp::tiles(
                        (p.as_ptr(), KEYS, 32),
                        ([b, b.add(512)], 32 * d),
                        subs,
                        (acc.as_mut_ptr().add(c), d, true),
                    );
                }
            }
        }
        // SAFETY: as configure.
        unsafe { imp::release() };
        for r in 0..live {
            let (i, h) = at(r);
            let inv = 1.0 / l[r];
            // SAFETY: row (i, h) of the output and its log-sum-exp belong to this task alone
            // (every row of every KV head is one task's), inside the buffers' capacities.
            unsafe {
                let o = std::slice::from_raw_parts_mut(dst.at((i * a.heads + h) * d), d);
                for (o, x) in o.iter_mut().zip(&acc[r * d..][..d]) {
                    *o = x * inv;
                }
                *dst_lse.at(h * a.t + i) = m[r] + l[r].ln();
            }
        }
    });
    // SAFETY: the tasks wrote every row of every head, and every log-sum-exp.
    unsafe {
        out.set_len(a.t * a.heads * d);
        lse.set_len(a.heads * a.t);
    }
    Some((out, lse))
}

/// Scales `x` in place and returns its largest value (NaN ignored), in 16 lanes.
#[inline]
fn scale_max(x: &mut [f32], scale: f32) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *v *= scale;
            *l = if *v > *l { *v } else { *l };
        }
    }
    let mut top = chunks.into_remainder().iter_mut().fold(f32::NEG_INFINITY, |m, v| {
        *v *= scale;
        if *v > m { *v } else { m }
    });
    for l in lanes {
        top = if l > top { l } else { top };
    }
    top
}

/// `x` rounded to the nearest bf16, ties to even (finite `x`: probabilities), as bits.
#[inline(always)]
fn round_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use crate::attention::AttnDims;

    /// Against the f32 kernel on the same bf16 values: the log-sum-exp to f32 rounding, the
    /// output within the probabilities' bf16 rounding.
    #[test]
    fn matches_the_f32_kernel_on_bf16_inputs() {
        if !super::super::available() {
            eprintln!("skipped: this CPU has no AMX-BF16 granted to the process (or ARTIST_CPU_AMX=0)");
            return;
        }
        // (t, len, heads, kv_heads, d): one task, a partial one, rows not a multiple of the
        // heads per KV head (7), several blocks of positions, cached positions before the
        // queries, positions not a multiple of 32.
        let shapes =
            [(32, 32, 1, 1, 32), (40, 40, 2, 1, 64), (70, 70, 14, 2, 64), (300, 300, 4, 2, 128), (50, 333, 16, 8, 128)];
        for (t, len, heads, kv_heads, d) in shapes {
            let a = AttnDims { t, len, heads, kv_heads, d };
            let mut seed = (t * 31 + len * 7 + d) as u64;
            let mut rand = |n: usize, amp: f32| -> Vec<bf16> {
                (0..n)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        bf16::from_f32(((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amp)
                    })
                    .collect()
            };
            let (q, k, v) = (rand(t * heads * d, 8.0), rand(len * kv_heads * d, 8.0), rand(len * kv_heads * d, 2.0));
            let scale = (d as f32).powf(-0.5);
            let (out, lse) = super::forward(&q, &k, &v, a, scale).expect("the tiles run this shape");
            let wide = |x: &[bf16]| x.iter().map(|v| v.to_f32()).collect::<Vec<f32>>();
            let (want, want_lse) = crate::cpu::attention::forward(&wide(&q), &wide(&k), &wide(&v), a, scale);
            for (i, (got, want)) in lse.iter().zip(&want_lse).enumerate() {
                assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{a:?}: lse {i}: {got} vs {want}");
            }
            // |v| <= 1: each probability rounded by at most 2^-9 of itself, so the output by
            // at most 2^-9 (plus f32 sums).
            for (i, (got, want)) in out.iter().zip(&want).enumerate() {
                assert!((got - want).abs() <= 2.5e-3, "{a:?}: out {i}: {got} vs {want}");
            }
        }
        let a = AttnDims { t: 1, len: 64, heads: 16, kv_heads: 8, d: 128 };
        let (q, kv) = (vec![bf16::ZERO; 16 * 128], vec![bf16::ZERO; 64 * 8 * 128]);
        assert!(super::forward(&q, &kv, &kv, a, 1.0).is_none(), "a decode step's two rows stay off the tiles");
        let a = AttnDims { t: 64, len: 64, heads: 1, kv_heads: 1, d: 48 };
        let (q, kv) = (vec![bf16::ZERO; 64 * 48], vec![bf16::ZERO; 64 * 48]);
        assert!(super::forward(&q, &kv, &kv, a, 1.0).is_none(), "head dim 48 is not a multiple of 32");
    }
}
