//! Where a tensor's elements sit in its storage: shape, strides (in elements) and a start
//! offset. Views (transpose, permute, narrow, broadcast, reshape of contiguous data,
//! squeeze, unsqueeze) only change the layout; no data moves.

use crate::shape::resolve_dim;
use crate::{Error, Result, Shape};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    start: usize,
}

impl Layout {
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout { shape, strides, start: 0 }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn start(&self) -> usize {
        self.start
    }

    /// Row-major contiguous, ignoring the strides of size-1 dimensions.
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc *= d;
        }
        true
    }

    /// The `[start, end)` range of storage this layout reads when it is contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous().then(|| self.start..self.start + self.shape.elem_count())
    }

    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Layout> {
        let d = resolve_dim("narrow", dim, self.shape.rank())?;
        let size = self.dims()[d];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(crate::invalid!(
                "narrow",
                "range {start}..{} is out of bounds for dimension {d} of size {size} in shape {}",
                start.saturating_add(len),
                self.shape
            ));
        }
        let mut dims = self.dims().to_vec();
        dims[d] = len;
        Ok(Layout { shape: dims.into(), strides: self.strides.clone(), start: self.start + start * self.strides[d] })
    }

    pub fn permute(&self, order: &[usize]) -> Result<Layout> {
        let rank = self.shape.rank();
        let mut seen = vec![false; rank];
        if order.len() != rank || order.iter().any(|&i| i >= rank || std::mem::replace(&mut seen[i], true)) {
            return Err(crate::invalid!(
                "permute",
                "{order:?} is not a permutation of the {rank} dimensions of {}",
                self.shape
            ));
        }
        Ok(Layout {
            shape: order.iter().map(|&i| self.dims()[i]).collect::<Vec<_>>().into(),
            strides: order.iter().map(|&i| self.strides[i]).collect(),
            start: self.start,
        })
    }

    pub fn transpose(&self, a: isize, b: isize) -> Result<Layout> {
        let rank = self.shape.rank();
        let (a, b) = (resolve_dim("transpose", a, rank)?, resolve_dim("transpose", b, rank)?);
        let mut order: Vec<usize> = (0..rank).collect();
        order.swap(a, b);
        self.permute(&order)
    }

    /// Broadcast to `shape` by giving new or size-1 dimensions a stride of 0.
    pub fn broadcast_as(&self, shape: &Shape) -> Result<Layout> {
        let err = || Error::BroadcastIncompatible { op: "broadcast_as", lhs: self.shape.clone(), rhs: shape.clone() };
        let (rank, own) = (shape.rank(), self.shape.rank());
        if own > rank {
            return Err(err());
        }
        let mut strides = vec![0; rank];
        for i in 0..own {
            let (d, target) = (self.dims()[own - 1 - i], shape.dims()[rank - 1 - i]);
            strides[rank - 1 - i] = match d {
                _ if d == target => self.strides[own - 1 - i],
                1 => 0,
                _ => return Err(err()),
            };
        }
        Ok(Layout { shape: shape.clone(), strides, start: self.start })
    }

    /// A new shape over the same elements; only a view when the layout is contiguous.
    pub fn reshape(&self, shape: &Shape) -> Option<Layout> {
        let start = self.contiguous_range()?.start;
        let mut l = Layout::contiguous(shape.clone());
        l.start = start;
        Some(l)
    }

    pub fn unsqueeze(&self, dim: isize) -> Result<Layout> {
        let rank = self.shape.rank();
        let d = resolve_dim("unsqueeze", dim, rank + 1)?;
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        let stride = if d < rank { self.strides[d] * self.dims()[d] } else { 1 };
        dims.insert(d, 1);
        strides.insert(d, stride);
        Ok(Layout { shape: dims.into(), strides, start: self.start })
    }

    pub fn squeeze(&self, dim: isize) -> Result<Layout> {
        let d = resolve_dim("squeeze", dim, self.shape.rank())?;
        if self.dims()[d] != 1 {
            return Err(crate::invalid!(
                "squeeze",
                "dimension {d} of {} has size {}, not 1",
                self.shape,
                self.dims()[d]
            ));
        }
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        dims.remove(d);
        strides.remove(d);
        Ok(Layout { shape: dims.into(), strides, start: self.start })
    }

    /// The largest storage index this layout touches, plus one (0 when empty).
    pub fn storage_extent(&self) -> usize {
        if self.shape.elem_count() == 0 {
            return 0;
        }
        self.start + self.dims().iter().zip(&self.strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>() + 1
    }
}

/// Iteration over an index space shared by `N` operands with their own strides, as rows:
/// dimensions are coalesced where every operand is contiguous across them, so the inner
/// row is as long as possible and the per-row bookkeeping is paid rarely.
#[derive(Debug)]
pub(crate) struct RowPlan<const N: usize> {
    outer_dims: Vec<usize>,
    outer_strides: [Vec<usize>; N],
    starts: [usize; N],
    pub inner: usize,
    pub inner_strides: [usize; N],
    pub rows: usize,
}

impl<const N: usize> RowPlan<N> {
    /// `layouts` must all have `shape` (broadcast them first).
    pub fn new(shape: &Shape, layouts: [&Layout; N]) -> Self {
        let mut dims: Vec<usize> = Vec::new();
        let mut strides: [Vec<usize>; N] = std::array::from_fn(|_| Vec::new());
        for (i, &d) in shape.dims().iter().enumerate() {
            if d == 1 {
                continue;
            }
            let mergeable =
                !dims.is_empty() && (0..N).all(|k| *strides[k].last().unwrap() == layouts[k].strides[i] * d);
            if mergeable {
                *dims.last_mut().unwrap() *= d;
                for k in 0..N {
                    *strides[k].last_mut().unwrap() = layouts[k].strides[i];
                }
            } else {
                dims.push(d);
                for k in 0..N {
                    strides[k].push(layouts[k].strides[i]);
                }
            }
        }
        let starts = std::array::from_fn(|k| layouts[k].start);
        let count = shape.elem_count();
        let (inner, inner_strides) = match dims.pop() {
            Some(d) => (d, std::array::from_fn(|k| strides[k].pop().unwrap())),
            None => (1, [0; N]),
        };
        let rows = if count == 0 { 0 } else { dims.iter().product() };
        RowPlan { outer_dims: dims, outer_strides: strides, starts, inner, inner_strides, rows }
    }

    /// The innermost outer dimension and operand `k`'s stride along it, if any.
    pub fn last_outer(&self, k: usize) -> Option<(usize, usize)> {
        Some((*self.outer_dims.last()?, *self.outer_strides[k].last()?))
    }

    /// Storage offsets of the first element of `row` for each operand.
    #[inline]
    pub fn offsets(&self, mut row: usize) -> [usize; N] {
        let mut off = self.starts;
        for (i, &d) in self.outer_dims.iter().enumerate().rev() {
            let idx = row % d;
            row /= d;
            for (o, s) in off.iter_mut().zip(&self.outer_strides) {
                *o += idx * s[i];
            }
        }
        off
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_change_strides_not_data() {
        let l = Layout::contiguous((2, 3, 4));
        let t = l.transpose(0, 2).unwrap();
        assert_eq!(t.dims(), &[4, 3, 2]);
        assert_eq!(t.strides(), &[1, 4, 12]);
        assert!(!t.is_contiguous());
        let n = l.narrow(1, 1, 2).unwrap();
        assert_eq!((n.start(), n.dims()), (4, &[2usize, 2, 4][..]));
        assert!(l.narrow(1, 2, 2).is_err());
        let b = Layout::contiguous((3, 1)).broadcast_as(&Shape::from((2, 3, 5))).unwrap();
        assert_eq!(b.strides(), &[0, 1, 0]);
        assert!(Layout::contiguous(3).broadcast_as(&Shape::from(4)).is_err());
        assert!(l.permute(&[0, 0, 1]).is_err());
        let u = l.unsqueeze(-1).unwrap();
        assert_eq!((u.dims(), u.is_contiguous()), (&[2usize, 3, 4, 1][..], true));
        assert_eq!(u.squeeze(3).unwrap(), l);
    }

    #[test]
    fn row_plan_coalesces_contiguous_dims() {
        let l = Layout::contiguous((2, 3, 4));
        let p = RowPlan::new(l.shape(), [&l]);
        assert_eq!((p.rows, p.inner), (1, 24));
        let t = l.transpose(1, 2).unwrap();
        let c = Layout::contiguous(t.shape().clone());
        let p = RowPlan::new(t.shape(), [&c, &t]);
        assert_eq!((p.rows, p.inner, p.inner_strides), (8, 3, [1, 4]));
        assert_eq!(p.offsets(5), [15, 12 + 1]);
    }
}
