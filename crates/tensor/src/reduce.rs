//! Reductions along a dimension: sum, mean, max, min, argmax, argmin; `_keepdim` variants
//! keep the reduced dimension with size 1.

use crate::cpu::reduce::{ReduceOp, arg_reduce, reduce};
use crate::cpu::{CpuStorage, contiguous, dispatch_float};
use crate::{Result, Shape, Tensor};

impl Tensor {
    /// `(outer, k, inner)` around `dim`, and the kept-dim output shape.
    fn split_at_dim(&self, op: &'static str, dim: isize) -> Result<(usize, usize, usize, Shape)> {
        let d = self.shape().dim(op, dim)?;
        let dims = self.dims();
        let mut kept = dims.to_vec();
        kept[d] = 1;
        Ok((dims[..d].iter().product(), dims[d], dims[d + 1..].iter().product(), kept.into()))
    }

    fn reduce_keepdim(&self, op: &'static str, dim: isize, kind: ReduceOp) -> Result<Tensor> {
        let (outer, k, inner, kept) = self.split_at_dim(op, dim)?;
        if self.device().is_cuda() {
            if !self.dtype().is_float() {
                return Err(crate::Error::UnsupportedDType { op, dtype: self.dtype() });
            }
            let code = match kind {
                ReduceOp::Sum => crate::cuda::ops::Reduce::Sum,
                ReduceOp::Max => crate::cuda::ops::Reduce::Max,
                ReduceOp::Min => crate::cuda::ops::Reduce::Min,
            };
            if k == 0 {
                let empty = match kind {
                    ReduceOp::Sum => 0.0,
                    ReduceOp::Max => f32::NEG_INFINITY,
                    ReduceOp::Min => f32::INFINITY,
                };
                return Tensor::full(empty, kept, self.dtype(), self.device());
            }
            return crate::cuda::ops::reduce(self, outer, k, inner, code, kept);
        }
        let s = self.cpu();
        let out = dispatch_float!(op, &*s, |v| {
            let data = contiguous(v, self.layout());
            CpuStorage::from(reduce(&data, outer, k, inner, kind))
        });
        Ok(Tensor::from_storage(out, kept))
    }

    pub fn sum_keepdim(&self, dim: isize) -> Result<Tensor> {
        self.reduce_keepdim("sum", dim, ReduceOp::Sum)
    }

    pub fn sum(&self, dim: isize) -> Result<Tensor> {
        self.sum_keepdim(dim)?.squeeze(dim)
    }

    pub fn mean_keepdim(&self, dim: isize) -> Result<Tensor> {
        let n = self.dim(dim)?;
        self.sum_keepdim(dim)?.mul_scalar(1.0 / n as f32)
    }

    pub fn mean(&self, dim: isize) -> Result<Tensor> {
        self.mean_keepdim(dim)?.squeeze(dim)
    }

    /// Maximum along `dim` (NaN wins; an empty dimension gives -inf).
    pub fn max_keepdim(&self, dim: isize) -> Result<Tensor> {
        self.reduce_keepdim("max", dim, ReduceOp::Max)
    }

    pub fn max(&self, dim: isize) -> Result<Tensor> {
        self.max_keepdim(dim)?.squeeze(dim)
    }

    pub fn min_keepdim(&self, dim: isize) -> Result<Tensor> {
        self.reduce_keepdim("min", dim, ReduceOp::Min)
    }

    pub fn min(&self, dim: isize) -> Result<Tensor> {
        self.min_keepdim(dim)?.squeeze(dim)
    }

    fn arg_keepdim(&self, op: &'static str, dim: isize, max: bool) -> Result<Tensor> {
        let (outer, k, inner, kept) = self.split_at_dim(op, dim)?;
        if k == 0 {
            return Err(crate::invalid!(op, "dimension {dim} of {} is empty", self.shape()));
        }
        if self.device().is_cuda() {
            if !self.dtype().is_float() {
                return Err(crate::Error::UnsupportedDType { op, dtype: self.dtype() });
            }
            return crate::cuda::ops::arg_reduce(self, outer, k, inner, max, kept);
        }
        let s = self.cpu();
        let out = dispatch_float!(op, &*s, |v| arg_reduce(&contiguous(v, self.layout()), outer, k, inner, max));
        Ok(Tensor::from_storage(out.into(), kept))
    }

    /// Index (U32) of the largest element along `dim`; the first on ties, NaN counts as largest.
    pub fn argmax_keepdim(&self, dim: isize) -> Result<Tensor> {
        self.arg_keepdim("argmax", dim, true)
    }

    pub fn argmax(&self, dim: isize) -> Result<Tensor> {
        self.argmax_keepdim(dim)?.squeeze(dim)
    }

    pub fn argmin_keepdim(&self, dim: isize) -> Result<Tensor> {
        self.arg_keepdim("argmin", dim, false)
    }

    pub fn argmin(&self, dim: isize) -> Result<Tensor> {
        self.argmin_keepdim(dim)?.squeeze(dim)
    }

    /// Sum of every element, as a scalar tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.flatten_all()?.sum(0)
    }

    /// Sums over the dimensions that broadcasting to this tensor's shape would have
    /// expanded from `shape`: the gradient of `broadcast_as` lands back on `shape`.
    pub fn sum_to(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let (rank, target) = (self.rank(), shape.rank());
        if target > rank {
            return Err(crate::Error::ShapeMismatch { op: "sum_to", lhs: self.shape().clone(), rhs: shape });
        }
        let mut x = self.clone();
        for d in 0..rank {
            let want = if d < rank - target { 1 } else { shape.dims()[d - (rank - target)] };
            if x.dims()[d] != want {
                if want != 1 {
                    return Err(crate::Error::ShapeMismatch { op: "sum_to", lhs: self.shape().clone(), rhs: shape });
                }
                x = x.sum_keepdim(d as isize)?;
            }
        }
        x.reshape(shape)
    }
}
