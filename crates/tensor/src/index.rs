//! Indexing: index-select, gather, scatter-add, index-add, concatenation, top-k.

use crate::cpu::{CpuStorage, contiguous, dispatch_all, dispatch_float, index};
use crate::{DType, Error, Result, Tensor, WithDType};

impl Tensor {
    /// The U32 contents of an index tensor, each checked below `size`.
    fn indices(&self, op: &'static str, size: usize) -> Result<Vec<u32>> {
        if self.dtype() != DType::U32 {
            return Err(crate::invalid!(op, "indices must be U32, got {}", self.dtype()));
        }
        let ids = self.to_vec::<u32>()?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= size) {
            return Err(Error::IndexOutOfRange { op, index: bad as usize, size });
        }
        Ok(ids)
    }

    /// `(outer, size, inner)` around dimension `d`.
    fn around(&self, d: usize) -> (usize, usize, usize) {
        let dims = self.dims();
        (dims[..d].iter().product(), dims[d], dims[d + 1..].iter().product())
    }

    /// Entries of dimension `dim` picked by the 1-D U32 `ids` (repeats allowed). Indices
    /// out of range are an error, except for a GPU tensor indexed by ids on its own GPU:
    /// those are read by the kernel where they are (no copy to the host, which would wait
    /// for the GPU, and none inside a captured graph), and an id out of range selects zeros.
    pub fn index_select(&self, ids: &Tensor, dim: isize) -> Result<Tensor> {
        const OP: &str = "index_select";
        ids.expect_rank(OP, 1)?;
        let d = self.shape().dim(OP, dim)?;
        let (outer, size, inner) = self.around(d);
        if self.device().is_cuda() && ids.device() == self.device() {
            if ids.dtype() != DType::U32 {
                return Err(crate::invalid!(OP, "indices must be U32, got {}", ids.dtype()));
            }
            let mut dims = self.dims().to_vec();
            dims[d] = ids.elem_count();
            return crate::cuda::ops::index_select_device(self, ids, outer, size, inner, dims);
        }
        let ids = ids.indices(OP, size)?;
        let mut dims = self.dims().to_vec();
        dims[d] = ids.len();
        if self.device().is_cuda() {
            let ids = Tensor::from_vec(ids, dims[d], self.device())?;
            return crate::cuda::ops::index_select_device(self, &ids, outer, size, inner, dims);
        }
        let s = self.cpu();
        let out = dispatch_all!(&*s, |v| CpuStorage::from(index::index_select(
            &contiguous(v, self.layout()),
            &ids,
            outer,
            size,
            inner
        )));
        Ok(Tensor::from_storage(out, dims))
    }

    /// Checks that `index` matches this tensor's shape in every dimension but `d`.
    fn check_index_shape(&self, op: &'static str, index: &Tensor, d: usize) -> Result<()> {
        let same_rank = index.rank() == self.rank();
        if !same_rank || self.dims().iter().zip(index.dims()).enumerate().any(|(i, (a, b))| i != d && a != b) {
            return Err(crate::invalid!(
                op,
                "index shape {} must equal the input shape {} except in dimension {d}",
                index.shape(),
                self.shape()
            ));
        }
        Ok(())
    }

    /// `out[.., j, ..] = self[.., index[.., j, ..], ..]` along `dim` (torch.gather); `index`
    /// has this tensor's shape except in `dim`.
    pub fn gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "gather";
        let d = self.shape().dim(OP, dim)?;
        self.check_index_shape(OP, index, d)?;
        let (outer, size, inner) = self.around(d);
        let k = index.dims()[d];
        let ids = index.indices(OP, size)?;
        if self.device().is_cuda() {
            return crate::cuda::ops::gather(self, &ids, outer, size, k, inner, index.shape().clone());
        }
        let s = self.cpu();
        let out = dispatch_all!(&*s, |v| CpuStorage::from(index::gather(
            &contiguous(v, self.layout()),
            &ids,
            outer,
            size,
            k,
            inner
        )));
        Ok(Tensor::from_storage(out, index.shape().clone()))
    }

    /// A copy of this tensor with `src` added at `index` along `dim` (torch.scatter_add):
    /// `out[.., index[.., j, ..], ..] += src[.., j, ..]`; `index` and `src` share a shape
    /// equal to this one's except in `dim`. Repeated indices accumulate.
    pub fn scatter_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "scatter_add";
        let d = self.shape().dim(OP, dim)?;
        self.check_index_shape(OP, index, d)?;
        if src.shape() != index.shape() {
            return Err(Error::ShapeMismatch { op: OP, lhs: index.shape().clone(), rhs: src.shape().clone() });
        }
        if self.device().is_cuda() {
            self.check_accumulate(OP, src)?;
            let (outer, size, inner) = self.around(d);
            let ids = index.indices(OP, size)?;
            return crate::cuda::ops::accumulate(self, src, &ids, true, outer, size, index.dims()[d], inner);
        }
        self.accumulate(OP, src, |dst, s| {
            let (_, size, inner) = self.around(d);
            let ids = index.indices(OP, size)?;
            dispatch_float!(OP, dst, |v| {
                let sv = contiguous(WithDType::slice(s).expect("dtype checked"), src.layout());
                index::scatter_add(v, &ids, &sv, size, index.dims()[d], inner)
            });
            Ok(())
        })
    }

    /// A copy of this tensor with the entries of `src` along `dim` added at the positions
    /// `ids` (1-D U32): the backward of [`Tensor::index_select`] and of embedding.
    pub fn index_add(&self, dim: isize, ids: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_add";
        ids.expect_rank(OP, 1)?;
        let d = self.shape().dim(OP, dim)?;
        let mut want = self.dims().to_vec();
        want[d] = ids.elem_count();
        if src.dims() != want {
            return Err(crate::invalid!(OP, "src has shape {}, expected {want:?}", src.shape()));
        }
        if self.device().is_cuda() {
            self.check_accumulate(OP, src)?;
            let (outer, size, inner) = self.around(d);
            let ids = ids.indices(OP, size)?;
            return crate::cuda::ops::accumulate(self, src, &ids, false, outer, size, ids.len(), inner);
        }
        self.accumulate(OP, src, |dst, s| {
            let (_, size, inner) = self.around(d);
            let ids = ids.indices(OP, size)?;
            dispatch_float!(OP, dst, |v| {
                let sv = contiguous(WithDType::slice(s).expect("dtype checked"), src.layout());
                index::index_add(v, &ids, &sv, size, inner)
            });
            Ok(())
        })
    }

    /// What both accumulating ops need of `src`: this tensor's dtype and device, a float type.
    fn check_accumulate(&self, op: &'static str, src: &Tensor) -> Result<()> {
        if src.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: src.dtype() });
        }
        if src.device() != self.device() {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: src.device() });
        }
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType { op, dtype: self.dtype() });
        }
        Ok(())
    }

    /// Copies this tensor and lets `f` add `src`'s storage into the copy.
    fn accumulate(
        &self,
        op: &'static str,
        src: &Tensor,
        f: impl FnOnce(&mut CpuStorage, &CpuStorage) -> Result<()>,
    ) -> Result<Tensor> {
        if src.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: src.dtype() });
        }
        let mut data = self.copy()?.into_cpu_storage();
        f(&mut data, &src.cpu())?;
        Ok(Tensor::from_storage(data, self.shape().clone()))
    }

    /// Joins tensors along `dim`; every other dimension must agree.
    pub fn cat(parts: &[&Tensor], dim: isize) -> Result<Tensor> {
        const OP: &str = "cat";
        let first = parts.first().ok_or_else(|| crate::invalid!(OP, "no tensors to concatenate"))?;
        let d = first.shape().dim(OP, dim)?;
        for p in parts {
            if p.dtype() != first.dtype() {
                return Err(Error::DTypeMismatch { op: OP, lhs: first.dtype(), rhs: p.dtype() });
            }
            if p.device() != first.device() {
                return Err(Error::DeviceMismatch { op: OP, lhs: first.device(), rhs: p.device() });
            }
            if p.rank() != first.rank()
                || p.dims().iter().zip(first.dims()).enumerate().any(|(i, (a, b))| i != d && a != b)
            {
                return Err(Error::ShapeMismatch { op: OP, lhs: first.shape().clone(), rhs: p.shape().clone() });
            }
        }
        let (outer, _, inner) = first.around(d);
        let mut dims = first.dims().to_vec();
        dims[d] = parts.iter().map(|p| p.dims()[d]).sum();
        if first.device().is_cuda() {
            // Each part written through a narrowed view of the output.
            let out = Tensor::zeros(dims, first.dtype(), first.device())?;
            let mut at = 0;
            for p in parts {
                let len = p.dims()[d];
                if len > 0 {
                    out.narrow(d as isize, at, len)?.copy_from(p)?;
                }
                at += len;
            }
            return Ok(out);
        }
        let guards: Vec<_> = parts.iter().map(|p| p.contiguous()).collect::<Result<_>>()?;
        let storages: Vec<_> = guards.iter().map(|g| g.cpu()).collect();
        macro_rules! join {
            ($($v:ident),*) => {
                match &*storages[0] {
                    $(CpuStorage::$v(_) => {
                        let slices: Vec<_> = guards.iter().zip(&storages).map(|(g, s)| {
                            let CpuStorage::$v(v) = &**s else { unreachable!("dtypes checked equal") };
                            (&v[g.layout().contiguous_range().expect("contiguous")], g.dims()[d])
                        }).collect();
                        CpuStorage::from(index::concat(&slices, outer, inner))
                    })*
                }
            };
        }
        let out = join!(U8, U32, F16, BF16, F32);
        Ok(Tensor::from_storage(out, dims))
    }

    /// The `k` largest entries along the last dimension, in descending order, and their
    /// U32 indices. Ties keep the lower index first; NaN counts as the largest.
    pub fn topk(&self, k: usize) -> Result<(Tensor, Tensor)> {
        const OP: &str = "topk";
        let cols = self.dim(-1)?;
        if k > cols {
            return Err(crate::invalid!(OP, "k = {k} exceeds the last dimension of {}", self.shape()));
        }
        let mut dims = self.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = k;
        if self.device().is_cuda() {
            if !self.dtype().is_float() {
                return Err(Error::UnsupportedDType { op: OP, dtype: self.dtype() });
            }
            return crate::cuda::ops::topk(self, k, dims);
        }
        let s = self.cpu();
        let (values, indices) = dispatch_float!(OP, &*s, |v| {
            let (vals, idx) = index::topk(&contiguous(v, self.layout()), cols, k);
            (CpuStorage::from(vals), idx)
        });
        Ok((Tensor::from_storage(values, dims.clone()), Tensor::from_storage(indices.into(), dims)))
    }
}
