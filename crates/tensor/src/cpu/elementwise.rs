//! Strided element-wise kernels: one operand (map, copy, cast), two (binary ops and
//! comparisons, broadcast by stride 0), three (`where`), and writes into a view.

use super::for_each_row;
use crate::layout::RowPlan;
use crate::{Layout, Shape, WithDType};

/// `f` applied to every element of `layout`, written contiguously.
pub(crate) fn map_strided<T: WithDType, U: WithDType>(
    data: &[T],
    layout: &Layout,
    f: impl Fn(T) -> U + Sync,
) -> Vec<U> {
    let mut out = vec![U::default(); layout.shape().elem_count()];
    let plan = RowPlan::new(layout.shape(), [layout]);
    let stride = plan.inner_strides[0];
    for_each_row(&plan, &mut out, |o, [off]| {
        if stride == 1 {
            let n = o.len();
            for (o, &x) in o.iter_mut().zip(&data[off..off + n]) {
                *o = f(x);
            }
        } else {
            for (i, o) in o.iter_mut().enumerate() {
                *o = f(data[off + i * stride]);
            }
        }
    });
    out
}

/// `f(lhs, rhs)` over `shape`; both layouts are already broadcast to `shape`.
pub(crate) fn zip_strided<T: WithDType, U: WithDType>(
    lhs: (&[T], &Layout),
    rhs: (&[T], &Layout),
    shape: &Shape,
    f: impl Fn(T, T) -> U + Sync,
) -> Vec<U> {
    let (a, b) = (lhs.0, rhs.0);
    let mut out = vec![U::default(); shape.elem_count()];
    let plan = RowPlan::new(shape, [lhs.1, rhs.1]);
    let [sa, sb] = plan.inner_strides;
    for_each_row(&plan, &mut out, |o, [oa, ob]| {
        let n = o.len();
        match (sa, sb) {
            (1, 1) => {
                for ((o, &x), &y) in o.iter_mut().zip(&a[oa..oa + n]).zip(&b[ob..ob + n]) {
                    *o = f(x, y);
                }
            }
            (1, 0) => {
                let y = b[ob];
                for (o, &x) in o.iter_mut().zip(&a[oa..oa + n]) {
                    *o = f(x, y);
                }
            }
            (0, 1) => {
                let x = a[oa];
                for (o, &y) in o.iter_mut().zip(&b[ob..ob + n]) {
                    *o = f(x, y);
                }
            }
            _ => {
                for (i, o) in o.iter_mut().enumerate() {
                    *o = f(a[oa + i * sa], b[ob + i * sb]);
                }
            }
        }
    });
    out
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
    if let Some(range) = dst_layout.contiguous_range() {
        let plan = RowPlan::new(src_layout.shape(), [src_layout]);
        let stride = plan.inner_strides[0];
        for_each_row(&plan, &mut dst[range], |o, [off]| {
            if stride == 1 {
                let n = o.len();
                o.copy_from_slice(&src[off..off + n]);
            } else {
                for (i, o) in o.iter_mut().enumerate() {
                    *o = src[off + i * stride];
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
            dst[od + i * sd] = src[os + i * ss];
        }
    }
}

/// Element-type conversion through f32 (exact between floats and for integers below 2^24).
#[inline(always)]
pub(crate) fn convert<A: WithDType, B: WithDType>(x: A) -> B {
    B::from_f32(x.to_f32())
}
