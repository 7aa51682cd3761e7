//! Reductions along one dimension of contiguous data viewed as `[outer, k, inner]`.

use rayon::prelude::*;

use super::{GRAIN, min_items};
use crate::WithDType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReduceOp {
    Sum,
    Max,
    Min,
}

impl ReduceOp {
    #[inline(always)]
    fn combine(self, acc: f32, x: f32) -> f32 {
        match self {
            ReduceOp::Sum => acc + x,
            // NaN wins, as in torch.
            ReduceOp::Max => {
                if x > acc || x.is_nan() {
                    x
                } else {
                    acc
                }
            }
            ReduceOp::Min => {
                if x < acc || x.is_nan() {
                    x
                } else {
                    acc
                }
            }
        }
    }
}

/// Sum of a contiguous row in f32 with eight independent accumulators: vectorisable, and
/// the rounding error grows with `len / 8` rather than `len`.
#[inline]
pub(crate) fn row_sum<T: WithDType>(row: &[T], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x.to_f32());
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &x in tail {
        s += f(x.to_f32());
    }
    s
}

/// Largest element of a row (NaN if any is NaN), with eight accumulators so it vectorises.
#[inline]
pub(crate) fn row_max<T: WithDType>(row: &[T]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut nan = false;
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let x = x.to_f32();
            nan |= x.is_nan();
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in tail {
        let x = x.to_f32();
        nan |= x.is_nan();
        m = if x > m { x } else { m };
    }
    if nan { f32::NAN } else { m }
}

/// Reduces `data` (`[outer, k, inner]`, contiguous) over `k`, giving `[outer, inner]`.
pub(crate) fn reduce<T: WithDType>(data: &[T], outer: usize, k: usize, inner: usize, op: ReduceOp) -> Vec<T> {
    let mut out = vec![T::default(); outer * inner];
    if out.is_empty() {
        return out;
    }
    if k == 0 {
        let empty = match op {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max => f32::NEG_INFINITY,
            ReduceOp::Min => f32::INFINITY,
        };
        out.fill(T::from_f32(empty));
        return out;
    }
    if inner == 1 {
        out.par_iter_mut().with_min_len(min_items(k)).enumerate().for_each(|(o, out)| {
            let row = &data[o * k..(o + 1) * k];
            *out = T::from_f32(match op {
                ReduceOp::Sum => row_sum(row, |x| x),
                _ => row.iter().skip(1).fold(row[0].to_f32(), |a, &x| op.combine(a, x.to_f32())),
            });
        });
        return out;
    }
    // Accumulate whole rows of `inner` elements: contiguous and vectorisable. Pieces of the
    // output are independent tasks, so one long `inner` still uses every thread.
    let piece = (GRAIN / k).clamp(64, inner.max(64));
    out.par_chunks_mut(inner).enumerate().for_each(|(o, out_row)| {
        let block = &data[o * k * inner..(o + 1) * k * inner];
        out_row.par_chunks_mut(piece).enumerate().for_each(|(p, out)| {
            let start = p * piece;
            let mut acc: Vec<f32> = block[start..start + out.len()].iter().map(|x| x.to_f32()).collect();
            for j in 1..k {
                let row = &block[j * inner + start..j * inner + start + out.len()];
                for (a, &x) in acc.iter_mut().zip(row) {
                    *a = op.combine(*a, x.to_f32());
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                *o = T::from_f32(a);
            }
        });
    });
    out
}

/// Index of the largest (or smallest) element along `k`; the first one on ties, NaN wins.
pub(crate) fn arg_reduce<T: WithDType>(data: &[T], outer: usize, k: usize, inner: usize, max: bool) -> Vec<u32> {
    let op = if max { ReduceOp::Max } else { ReduceOp::Min };
    let mut out = vec![0u32; outer * inner];
    out.par_iter_mut().with_min_len(min_items(k)).enumerate().for_each(|(idx, out)| {
        let (o, i) = (idx / inner, idx % inner);
        let base = o * k * inner + i;
        let (mut best, mut best_j) = (data[base].to_f32(), 0);
        for j in 1..k {
            let x = data[base + j * inner].to_f32();
            if best.is_nan() {
                break;
            }
            if op.combine(best, x) != best || (x.is_nan()) {
                best = x;
                best_j = j;
            }
        }
        *out = best_j as u32;
    });
    out
}
