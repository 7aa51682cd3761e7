//! Causal attention of one sequence on the CPU, forward and backward, in one pass over the
//! keys per block of queries: the scores of a row against a block of keys live in a small
//! buffer, the softmax runs online (a running maximum and sum per row, flash attention's
//! rescaling), and keys past a query's position are never computed, where the composition
//! through matrix products (`Tensor::causal_attention_reference`) computes every score,
//! masks half of them and runs six ops over `[heads, t, len]` tensors.
//!
//! Heads sharing a KV head are one task's rows, so each block of keys and values is read
//! once for all of them. Every inner loop is one primitive, [`mul_add_rows`]
//! (`acc += w^T x` over rows of `x`), written so that the compiler keeps its accumulators in
//! vector registers. Each output row is summed by one task in a fixed order, so results do
//! not depend on the number of threads; the backward computes each (keys, queries) block's
//! probabilities once, from the forward's log-sum-exp, for the keys' and the queries'
//! gradients alike (flash attention 2's single pass), the query gradients summed per lane of
//! key blocks and the lanes added in a fixed order.

use rayon::prelude::*;

use super::nn::fast_exp;
use super::simd::{dot, exp_shifted};
use crate::attention::AttnDims;

/// Keys per block: a row's scores against a block are 64 floats, eight AVX registers.
const KEYS: usize = 64;

/// Queries per chunk of the backward, and per forward task at least (times the heads that
/// share a KV head).
const QUERIES: usize = 16;

/// `acc[c] += sum_i w[i] * x[i * stride + c]` for `c < acc.len()`: a weighted sum of rows of
/// `x`. Columns are taken in chunks of 64, 32 and 8 held in registers across all the rows;
/// the narrower chunks sum even and odd rows apart, so that eight chains of fused
/// multiply-adds are in flight at once rather than waiting on each other.
///
/// Where the CPU has AVX-512 the columns go 128 and 64 at a time through its 16-lane
/// registers (twice the lanes per load; the loads bound this loop), eight chains of
/// multiply-adds in flight either way: a 128-column chunk sums its rows in order, as above,
/// a 64-column one even and odd rows apart, as the narrower chunks do (so its results round
/// otherwise than the AVX2 build's 64-column chunk).
#[inline]
fn mul_add_rows(acc: &mut [f32], w: &[f32], x: &[f32], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512f() {
        // SAFETY: AVX-512F is present.
        return unsafe { mul_add_rows_avx512(acc, w, x, stride) };
    }
    mul_add_rows_from(acc, w, x, stride, 0)
}

/// [`mul_add_rows`] on AVX-512: chunks of 128 and 64 columns in registers, the rest as
/// [`mul_add_rows_from`] does.
///
/// # Safety
/// AVX-512F is present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn mul_add_rows_avx512(acc: &mut [f32], w: &[f32], x: &[f32], stride: usize) {
    use std::arch::x86_64::*;
    let rows = w.len();
    // Every row read below holds the chunk's columns: callers pass `x` with rows `stride`
    // apart and at least `acc.len()` columns each.
    assert!(rows == 0 || x.len() >= (rows - 1) * stride + acc.len(), "mul_add_rows: x too short");
    let mut c = 0;
    // SAFETY (all blocks below): columns c..c + 128 (or 64) of acc, and of rows i < rows of
    // x (asserted above).
    while c + 128 <= acc.len() {
        unsafe {
            let mut a: [__m512; 8] = std::array::from_fn(|l| _mm512_loadu_ps(acc.as_ptr().add(c + 16 * l)));
            for (i, &wi) in w.iter().enumerate() {
                let (b, r) = (_mm512_set1_ps(wi), x.as_ptr().add(i * stride + c));
                for (l, al) in a.iter_mut().enumerate() {
                    *al = _mm512_fmadd_ps(b, _mm512_loadu_ps(r.add(16 * l)), *al);
                }
            }
            for (l, al) in a.iter().enumerate() {
                _mm512_storeu_ps(acc.as_mut_ptr().add(c + 16 * l), *al);
            }
        }
        c += 128;
    }
    while c + 64 <= acc.len() {
        unsafe {
            let mut a: [__m512; 4] = std::array::from_fn(|l| _mm512_loadu_ps(acc.as_ptr().add(c + 16 * l)));
            let mut o = [_mm512_setzero_ps(); 4];
            for i in (0..rows).step_by(2) {
                let (b, r) = (_mm512_set1_ps(w[i]), x.as_ptr().add(i * stride + c));
                for (l, al) in a.iter_mut().enumerate() {
                    *al = _mm512_fmadd_ps(b, _mm512_loadu_ps(r.add(16 * l)), *al);
                }
                if i + 1 < rows {
                    let (b, r) = (_mm512_set1_ps(w[i + 1]), r.add(stride));
                    for (l, ol) in o.iter_mut().enumerate() {
                        *ol = _mm512_fmadd_ps(b, _mm512_loadu_ps(r.add(16 * l)), *ol);
                    }
                }
            }
            for l in 0..4 {
                _mm512_storeu_ps(acc.as_mut_ptr().add(c + 16 * l), _mm512_add_ps(a[l], o[l]));
            }
        }
        c += 64;
    }
    mul_add_rows_from(acc, w, x, stride, c)
}

/// [`mul_add_rows`] from column `c` on, as the build's target compiles it.
#[inline(always)]
fn mul_add_rows_from(acc: &mut [f32], w: &[f32], x: &[f32], stride: usize, mut c: usize) {
    while c + 64 <= acc.len() {
        let mut a: [f32; 64] = acc[c..c + 64].try_into().expect("64 columns");
        for (i, &wi) in w.iter().enumerate() {
            let xr: &[f32; 64] = x[i * stride + c..][..64].try_into().expect("64 columns");
            for l in 0..64 {
                a[l] = wi.mul_add(xr[l], a[l]);
            }
        }
        acc[c..c + 64].copy_from_slice(&a);
        c += 64;
    }
    c = paired::<32>(acc, w, x, stride, c);
    c = paired::<8>(acc, w, x, stride, c);
    for (cc, a) in acc.iter_mut().enumerate().skip(c) {
        for (i, &wi) in w.iter().enumerate() {
            *a = wi.mul_add(x[i * stride + cc], *a);
        }
    }
}

/// [`mul_add_rows`] for the columns `c..` in chunks of `W`, even and odd rows summed apart;
/// returns the first column left.
#[inline(always)]
fn paired<const W: usize>(acc: &mut [f32], w: &[f32], x: &[f32], stride: usize, mut c: usize) -> usize {
    while c + W <= acc.len() {
        let mut a: [f32; W] = acc[c..c + W].try_into().expect("W columns");
        let mut b = [0f32; W];
        let mut pairs = w.chunks_exact(2);
        for (n, pair) in (&mut pairs).enumerate() {
            let x0: &[f32; W] = x[2 * n * stride + c..][..W].try_into().expect("W columns");
            let x1: &[f32; W] = x[(2 * n + 1) * stride + c..][..W].try_into().expect("W columns");
            for l in 0..W {
                a[l] = pair[0].mul_add(x0[l], a[l]);
                b[l] = pair[1].mul_add(x1[l], b[l]);
            }
        }
        if let [wl] = pairs.remainder() {
            let xl: &[f32; W] = x[(w.len() - 1) * stride + c..][..W].try_into().expect("W columns");
            for l in 0..W {
                a[l] = wl.mul_add(xl[l], a[l]);
            }
        }
        for l in 0..W {
            acc[c + l] = a[l] + b[l];
        }
        c += W;
    }
    c
}

/// The largest of `x` (NaN ignored), in eight lanes: a chain of one comparison after
/// another would take longer than the row's scores.
#[inline]
fn max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] = lanes[l].max(c[l]);
        }
    }
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &y| m.max(y));
    lanes.iter().fold(tail, |m, &y| m.max(y))
}

/// Rows `j0..j0 + n` of KV head `g` of `x: [len, kv_heads, d]`, transposed into
/// `out: [d, KEYS]` (columns from `n` on zero).
fn transpose_block(x: &[f32], a: &AttnDims, g: usize, j0: usize, n: usize, out: &mut [f32]) {
    out.fill(0.0);
    for jj in 0..n {
        let row = &x[((j0 + jj) * a.kv_heads + g) * a.d..][..a.d];
        for (c, &v) in row.iter().enumerate() {
            out[c * KEYS + jj] = v;
        }
    }
}

/// The rows of one task: queries `i0..i1` of the heads of KV head `g`, row `(i - i0) * rep +
/// r` being query `i` of head `g * rep + r`, copied from `x: [t, heads, d]` (times `scale`).
fn gather_rows(x: &[f32], a: &AttnDims, g: usize, (i0, i1): (usize, usize), scale: f32) -> Vec<f32> {
    let rep = a.heads / a.kv_heads;
    let mut out = Vec::with_capacity((i1 - i0) * rep * a.d);
    for i in i0..i1 {
        let heads = &x[(i * a.heads + g * rep) * a.d..][..rep * a.d];
        out.extend(heads.iter().map(|&v| v * scale));
    }
    out
}

/// Copies a task's rows (as [`gather_rows`] orders them) into `dst: [t, heads, d]`.
fn scatter_rows(dst: &mut [f32], rows: &[f32], a: &AttnDims, g: usize, i0: usize) {
    let rep = a.heads / a.kv_heads;
    for (n, src) in rows.chunks(rep * a.d).enumerate() {
        dst[((i0 + n) * a.heads + g * rep) * a.d..][..rep * a.d].copy_from_slice(src);
    }
}

/// The L1 data cache the forward plans for (48 KiB on Sapphire Rapids, 32 on Zen 4).
const L1_BYTES: usize = 32 << 10;

/// Rows a forward task has at least: each block of keys is transposed once per task, for
/// all of them (with few heads per KV head, 16 queries were too few rows to pay for it).
const TASK_ROWS: usize = 64;

/// The forward's tasks over queries: `(kv head, first query, end)`, [`QUERIES`] queries or
/// more, enough for [`TASK_ROWS`] rows. Each row's sums do not depend on the split.
fn query_tasks(a: &AttnDims) -> Vec<(usize, usize, usize)> {
    let per = QUERIES.max(TASK_ROWS.div_ceil(a.heads / a.kv_heads));
    (0..a.kv_heads).flat_map(|g| (0..a.t).step_by(per).map(move |i0| (g, i0, (i0 + per).min(a.t)))).collect()
}

/// `softmax(scale q k^T, causal) v` of contiguous f32 `q: [t, heads, d]` (the last `t` of
/// `len` positions), `k`, `v: [len, kv_heads, d]`: the output `[t, heads, d]` and each
/// (head, query)'s log-sum-exp of the scaled scores, `[heads, t]`.
pub(crate) fn forward(q: &[f32], k: &[f32], v: &[f32], a: AttnDims, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let (rep, d, off) = (a.heads / a.kv_heads, a.d, a.len - a.t);
    let tasks = query_tasks(&a);
    let results: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(g, i0, i1)| {
            let qs = gather_rows(q, &a, g, (i0, i1), scale);
            let rows = (i1 - i0) * rep;
            let mut acc = vec![0f32; rows * d];
            let (mut m, mut l) = (vec![f32::NEG_INFINITY; rows], vec![0f32; rows]);
            let (mut kt, mut vb) = (vec![0f32; d * KEYS], vec![0f32; KEYS * d]);
            let (mut s, mut ps) = ([0f32; KEYS], vec![0f32; rows * KEYS]);
            // Rows that take their scores before any of them takes its values: one where a
            // block's keys and values fit in L1 together (a row's probabilities and output
            // then go straight from one product to the next), all of them where they do not
            // (head dim 128: 64 KiB; two passes over the rows made that shape 1.45x faster
            // in the bench, and head dim 64 0.83x).
            let group = if 2 * d * KEYS * std::mem::size_of::<f32>() <= L1_BYTES { 1 } else { rows };
            let keys = off + i1; // the last query sees keys 0..keys
            for j0 in (0..keys).step_by(KEYS) {
                let n = KEYS.min(keys - j0);
                transpose_block(k, &a, g, j0, n, &mut kt);
                // The block's values side by side: read in place, their rows lie kv_heads * d
                // floats apart (4 KiB for 8 heads of 128), and 64 of them fight over the same
                // few sets of L1.
                for (jj, dst) in vb.chunks_exact_mut(d).take(n).enumerate() {
                    dst.copy_from_slice(&v[((j0 + jj) * a.kv_heads + g) * d..][..d]);
                }
                // The rows that see the block, and how many of its keys each sees.
                let seen = |row: usize| (off + i0 + row / rep).checked_sub(j0).map(|p| n.min(p + 1));
                // A group's scores and probabilities against the block (its keys in L1)...
                for r0 in (0..rows).step_by(group) {
                    let group_rows = r0..(r0 + group).min(rows);
                    for row in group_rows.clone() {
                        let Some(valid) = seen(row) else { continue };
                        s.fill(0.0);
                        mul_add_rows(&mut s, &qs[row * d..(row + 1) * d], &kt, KEYS);
                        let top = max(&s[..valid]);
                        let m_new = m[row].max(top);
                        if m[row] != m_new {
                            let corr = fast_exp(m[row] - m_new);
                            l[row] *= corr;
                            acc[row * d..(row + 1) * d].iter_mut().for_each(|x| *x *= corr);
                        }
                        l[row] += exp_shifted(&mut ps[row * KEYS..][..valid], &s[..valid], m_new);
                        m[row] = m_new;
                    }
                    // ...then their weighted sums of its values (in L1 in their turn).
                    for row in group_rows {
                        let Some(valid) = seen(row) else { continue };
                        mul_add_rows(&mut acc[row * d..(row + 1) * d], &ps[row * KEYS..][..valid], &vb, d);
                    }
                }
            }
            for (row, acc_row) in acc.chunks_mut(d).enumerate() {
                let inv = 1.0 / l[row];
                acc_row.iter_mut().for_each(|x| *x *= inv);
                l[row] = m[row] + l[row].ln();
            }
            (acc, l)
        })
        .collect();
    let mut out = vec![0f32; a.t * a.heads * d];
    let mut lse = vec![0f32; a.heads * a.t];
    for (&(g, i0, _), (o, l)) in tasks.iter().zip(results) {
        scatter_rows(&mut out, &o, &a, g, i0);
        for (n, &x) in l.iter().enumerate() {
            lse[(g * rep + n % rep) * a.t + i0 + n / rep] = x;
        }
    }
    (out, lse)
}

/// Lanes a KV head's key blocks are dealt to in the backward: each sums its own share of
/// the query gradients, and the lanes' shares are added in lane order, so the result does
/// not depend on the number of threads.
const LANES: usize = 8;

/// The most bytes the lanes' query-gradient buffers may take together: fewer lanes for
/// long sequences (the count follows the shape alone, never the threads).
const LANE_BYTES: usize = 64 << 20;

/// The gradients `(dq, dk, dv)` of [`forward`] given its output `out`, log-sum-exp `lse` and
/// the output's gradient `dout`, all contiguous f32 as there.
///
/// One pass over the (block of keys, block of queries) pairs, flash attention 2's: each pair's
/// probabilities and score gradients are computed once and give the block's key and value
/// gradients and the queries' share of theirs. A task per (KV head, lane) takes every
/// `LANES`-th block of keys (blocks near the start see the most queries, so dealing them
/// round-robin evens the lanes out) and sums the query gradients of its blocks in a buffer
/// of its own; the buffers of a head are added in lane order afterwards.
pub(crate) fn backward(
    (q, k, v): (&[f32], &[f32], &[f32]),
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    a: AttnDims,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (rep, d, off, kvd) = (a.heads / a.kv_heads, a.d, a.len - a.t, a.kv_heads * a.d);
    // delta = sum(dout * out) per (query, head), in [t, heads] order.
    let delta: Vec<f32> = dout.par_chunks(d).zip(out.par_chunks(d)).map(|(x, y)| dot(x, y)).collect();
    // The log-sum-exp and delta of query `i` of head `g * rep + r`.
    let stats = |g: usize, i: usize, r: usize| (lse[(g * rep + r) * a.t + i], delta[i * a.heads + g * rep + r]);
    let blocks = a.len.div_ceil(KEYS);
    let per_lane = (a.t * a.heads * d * std::mem::size_of::<f32>()).max(1);
    let lanes = LANES.min(LANE_BYTES / per_lane).min(blocks).max(1);
    let tasks: Vec<(usize, usize)> = (0..a.kv_heads).flat_map(|g| (0..lanes).map(move |l| (g, l))).collect();
    // Per task: its query gradients (rows as `gather_rows` orders all of a head's queries)
    // and each of its blocks' key and value gradients.
    type Lane = (Vec<f32>, Vec<(usize, Vec<f32>, Vec<f32>)>);
    let results: Vec<Lane> = tasks
        .par_iter()
        .map(|&(g, lane)| {
            let mut dq = vec![0f32; a.t * rep * d];
            let mut done = Vec::new();
            let (mut kt, mut vt) = (vec![0f32; d * KEYS], vec![0f32; d * KEYS]);
            let (mut pt, mut dst) = (vec![0f32; KEYS * QUERIES * rep], vec![0f32; KEYS * QUERIES * rep]);
            for j0 in (lane * KEYS..a.len).step_by(lanes * KEYS) {
                let n = KEYS.min(a.len - j0);
                transpose_block(k, &a, g, j0, n, &mut kt);
                transpose_block(v, &a, g, j0, n, &mut vt);
                let (mut dk, mut dv) = (vec![0f32; n * d], vec![0f32; n * d]);
                // Queries from the first that sees key j0, QUERIES at a time; their rows' P
                // and dS kept transposed ([KEYS, rows]) so that each key's sums are rows of
                // it. The queries carry the scale, so dk = dS^T (scale q) needs none of its
                // own, and dq = dS k takes it at the end.
                let first = j0.saturating_sub(off);
                for i0 in (first..a.t).step_by(QUERIES) {
                    let i1 = (i0 + QUERIES).min(a.t);
                    let rows = (i1 - i0) * rep;
                    let qs = gather_rows(q, &a, g, (i0, i1), scale);
                    let dos = gather_rows(dout, &a, g, (i0, i1), 1.0);
                    // Each key's sums below read only rows that see it, whose entries this
                    // chunk writes; the rest of the buffers is stale and never read.
                    let (pt, dst) = (&mut pt[..KEYS * rows], &mut dst[..KEYS * rows]);
                    for row in 0..rows {
                        let (i, r) = (i0 + row / rep, row % rep);
                        let valid = n.min(off + i + 1 - j0);
                        let (p, ds) = probs_and_grads(
                            &qs[row * d..(row + 1) * d],
                            &dos[row * d..(row + 1) * d],
                            (&kt, &vt),
                            stats(g, i, r),
                        );
                        let dq_row = &mut dq[(i0 * rep + row) * d..][..d];
                        mul_add_rows(dq_row, &ds[..valid], &k[(j0 * a.kv_heads + g) * d..], kvd);
                        for jj in 0..valid {
                            pt[jj * rows + row] = p[jj];
                            dst[jj * rows + row] = ds[jj];
                        }
                    }
                    for jj in 0..n {
                        // Rows go by query, so those that see key j0 + jj are a suffix.
                        let from = (j0 + jj).saturating_sub(off + i0).min(i1 - i0) * rep;
                        let (p, ds) = (&pt[jj * rows + from..(jj + 1) * rows], &dst[jj * rows + from..(jj + 1) * rows]);
                        mul_add_rows(&mut dv[jj * d..(jj + 1) * d], p, &dos[from * d..], d);
                        mul_add_rows(&mut dk[jj * d..(jj + 1) * d], ds, &qs[from * d..], d);
                    }
                }
                done.push((j0, dk, dv));
            }
            (dq, done)
        })
        .collect();
    let (mut dk, mut dv) = (vec![0f32; a.len * kvd], vec![0f32; a.len * kvd]);
    let mut dq = vec![0f32; a.t * a.heads * d];
    for (g, head) in results.chunks(lanes).enumerate() {
        let mut sum = vec![0f32; a.t * rep * d];
        for (lane_dq, blocks) in head {
            sum.iter_mut().zip(lane_dq).for_each(|(s, x)| *s += x);
            for (j0, bk, bv) in blocks {
                for (jj, (rk, rv)) in bk.chunks(d).zip(bv.chunks(d)).enumerate() {
                    dk[(j0 + jj) * kvd + g * d..][..d].copy_from_slice(rk);
                    dv[(j0 + jj) * kvd + g * d..][..d].copy_from_slice(rv);
                }
            }
        }
        sum.iter_mut().for_each(|x| *x *= scale);
        scatter_rows(&mut dq, &sum, &a, g, 0);
    }
    (dq, dk, dv)
}

/// One row against one block of keys, the query `q` already times the scale: the
/// probabilities `p = exp(q.k - lse)` and the scores' gradients `ds = p * (dout.v - delta)`,
/// over all `KEYS` columns (the caller reads the valid ones).
#[inline]
fn probs_and_grads(
    q: &[f32],
    dout: &[f32],
    (kt, vt): (&[f32], &[f32]),
    (lse, delta): (f32, f32),
) -> ([f32; KEYS], [f32; KEYS]) {
    let mut s = [0f32; KEYS];
    mul_add_rows(&mut s, q, kt, KEYS);
    let mut p = [0f32; KEYS];
    exp_shifted(&mut p, &s, lse);
    let mut dp = [0f32; KEYS];
    mul_add_rows(&mut dp, dout, vt, KEYS);
    let mut ds = [0f32; KEYS];
    for ((dsj, &pj), &dpj) in ds.iter_mut().zip(&p).zip(&dp) {
        *dsj = pj * (dpj - delta);
    }
    (p, ds)
}
