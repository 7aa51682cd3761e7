//! Strided element-wise kernels: one operand (map, copy, cast), two (binary ops and
//! comparisons, broadcast by stride 0), three (`where`), and writes into a view.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::for_each_row;
use crate::layout::RowPlan;
use crate::{Layout, Shape, WithDType};

/// A vector of `n` elements to be written before it is read.
pub(crate) fn uninit<T>(n: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: MaybeUninit needs no initialisation; the capacity is n.
    unsafe { v.set_len(n) };
    v
}

/// # Safety
/// Every element of `v` has been written.
pub(crate) unsafe fn assume_init<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: MaybeUninit<T> has T's layout; the caller guarantees initialisation; the
    // allocation is handed over whole (pointer, length, capacity).
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity()) }
}

/// Tiles of a transposing copy: TILE_I elements along each input run (sixteen cache lines of
/// f32, so each page visited at a large stride is used for 1 KiB), TILE_J along each output
/// run (two cache lines). Measured best of 64-256 x 16-64 on 4096 x 4096 f32.
const TILE_I: usize = 256;
const TILE_J: usize = 32;

/// `f` applied to every element of `layout`, written contiguously.
pub(crate) fn map_strided<T: WithDType, U: WithDType>(
    data: &[T],
    layout: &Layout,
    f: impl Fn(T) -> U + Sync,
) -> Vec<U> {
    let n = layout.shape().elem_count();
    let mut out = uninit::<U>(n);
    let plan = RowPlan::new(layout.shape(), [layout]);
    let stride = plan.inner_strides[0];
    match plan.last_outer(0) {
        // A transpose: output rows run along a strided input dimension while the next one out
        // is contiguous in the input. Copy in square tiles so both sides stay in cache.
        Some((r, 1)) if stride != 1 && r >= TILE_J && plan.inner >= TILE_J => {
            let c = plan.inner;
            // Each block (one matrix of the batch) is cut into stripes of TILE_I output rows,
            // the parallel tasks. A tile is read a whole input run at a time into a buffer,
            // then written a whole output line at a time: with power-of-two strides every
            // line of a tile falls in the same cache set, so none may be left half-used, and
            // reading TILE_I elements per input row amortises its TLB miss.
            out.par_chunks_mut(r * c).enumerate().for_each(|(b, block)| {
                let start = plan.offsets(b * r)[0];
                block.par_chunks_mut(TILE_I * c).enumerate().for_each(|(s, stripe)| {
                    let rows = stripe.len() / c;
                    let base = start + s * TILE_I;
                    let mut tile = [[U::default(); TILE_I]; TILE_J];
                    for j0 in (0..c).step_by(TILE_J) {
                        let cols = TILE_J.min(c - j0);
                        for (j, t) in tile.iter_mut().enumerate().take(cols) {
                            let src = &data[base + (j0 + j) * stride..];
                            for (i, v) in t.iter_mut().enumerate().take(rows) {
                                *v = f(src[i]);
                            }
                        }
                        for i in 0..rows {
                            for (j, t) in tile.iter().enumerate().take(cols) {
                                stripe[i * c + j0 + j].write(t[i]);
                            }
                        }
                    }
                });
            });
        }
        _ => for_each_row(&plan, &mut out, |o, [off]| {
            if stride == 1 {
                let len = o.len();
                for (o, &x) in o.iter_mut().zip(&data[off..off + len]) {
                    o.write(f(x));
                }
            } else {
                for (i, o) in o.iter_mut().enumerate() {
                    o.write(f(data[off + i * stride]));
                }
            }
        }),
    }
    // SAFETY: both paths write every one of the n elements (all rows of the plan).
    unsafe { assume_init(out) }
}

/// `f(lhs, rhs)` over `shape`; both layouts are already broadcast to `shape`.
pub(crate) fn zip_strided<T: WithDType, U: WithDType>(
    lhs: (&[T], &Layout),
    rhs: (&[T], &Layout),
    shape: &Shape,
    f: impl Fn(T, T) -> U + Sync,
) -> Vec<U> {
    let (a, b) = (lhs.0, rhs.0);
    let mut out = uninit::<U>(shape.elem_count());
    let plan = RowPlan::new(shape, [lhs.1, rhs.1]);
    let [sa, sb] = plan.inner_strides;
    for_each_row(&plan, &mut out, |o, [oa, ob]| {
        let n = o.len();
        match (sa, sb) {
            (1, 1) => {
                for ((o, &x), &y) in o.iter_mut().zip(&a[oa..oa + n]).zip(&b[ob..ob + n]) {
                    o.write(f(x, y));
                }
            }
            (1, 0) => {
                let y = b[ob];
                for (o, &x) in o.iter_mut().zip(&a[oa..oa + n]) {
                    o.write(f(x, y));
                }
            }
            (0, 1) => {
                let x = a[oa];
                for (o, &y) in o.iter_mut().zip(&b[ob..ob + n]) {
                    o.write(f(x, y));
                }
            }
            _ => {
                for (i, o) in o.iter_mut().enumerate() {
                    o.write(f(a[oa + i * sa], b[ob + i * sb]));
                }
            }
        }
    });
    // SAFETY: for_each_row writes every element of every row.
    unsafe { assume_init(out) }
}

/// `cond != 0 ? on_true : on_false` over `shape`; all layouts broadcast to `shape`.
pub(crate) fn where_strided<T: WithDType>(
    cond: (&[u8], &Layout),
    on_true: (&[T], &Layout),
    on_false: (&[T], &Layout),
    shape: &Shape,
) -> Vec<T> {
    let mut out = vec![T::default(); shape.elem_count()];
    let plan = RowPlan::new(shape, [cond.1, on_true.1, on_false.1]);
    let [sc, st, sf] = plan.inner_strides;
    for_each_row(&plan, &mut out, |o, [oc, ot, of]| {
        for (i, o) in o.iter_mut().enumerate() {
            *o = if cond.0[oc + i * sc] != 0 { on_true.0[ot + i * st] } else { on_false.0[of + i * sf] };
        }
    });
    out
}

/// Copies `src` (broadcast to the destination's shape) into the view `dst_layout` of `dst`.
pub(crate) fn write_strided<T: WithDType>(dst: &mut [T], dst_layout: &Layout, src: &[T], src_layout: &Layout) {
    update_strided(dst, dst_layout, src, src_layout, |d, s| *d = s, |d, s| d.copy_from_slice(s));
}

/// `dst += src` over the view `dst_layout` of `dst` (`src` broadcast to its shape).
pub(crate) fn add_strided(dst: &mut [f32], dst_layout: &Layout, src: &[f32], src_layout: &Layout) {
    let add_rows = |d: &mut [f32], s: &[f32]| d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
    update_strided(dst, dst_layout, src, src_layout, |d, s| *d += s, add_rows);
}

/// `f(d, s)` for each element d of the view `dst_layout` of `dst` and its element s of `src`
/// (broadcast to the view's shape); `rows` does the same for a contiguous run of both.
fn update_strided<T: WithDType>(
    dst: &mut [T],
    dst_layout: &Layout,
    src: &[T],
    src_layout: &Layout,
    f: impl Fn(&mut T, T) + Sync,
    rows: impl Fn(&mut [T], &[T]) + Sync,
) {
    if let Some(range) = dst_layout.contiguous_range() {
        let plan = RowPlan::new(src_layout.shape(), [src_layout]);
        let stride = plan.inner_strides[0];
        for_each_row(&plan, &mut dst[range], |o, [off]| {
            if stride == 1 {
                let n = o.len();
                rows(o, &src[off..off + n]);
            } else {
                for (i, o) in o.iter_mut().enumerate() {
                    f(o, src[off + i * stride]);
                }
            }
        });
        return;
    }
    let plan = RowPlan::new(dst_layout.shape(), [dst_layout, src_layout]);
    let [sd, ss] = plan.inner_strides;
    for r in 0..plan.rows {
        let [od, os] = plan.offsets(r);
        for i in 0..plan.inner {
            f(&mut dst[od + i * sd], src[os + i * ss]);
        }
    }
}

/// Element-type conversion through f32 (exact between floats and for integers below 2^24).
#[inline(always)]
pub(crate) fn convert<A: WithDType, B: WithDType>(x: A) -> B {
    B::from_f32(x.to_f32())
}
