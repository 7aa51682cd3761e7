//! Transformer building blocks with Hugging Face Qwen2 semantics: softmax, log-softmax,
//! RMSNorm, rotary embeddings, SwiGLU, causal masks, embedding lookup.

use crate::cpu::{CpuStorage, contiguous, dispatch_float, nn};
use crate::{Device, Error, Result, Tensor, WithDType};

impl Tensor {
    fn softmax_impl(&self, op: &'static str, dim: isize, log: bool) -> Result<Tensor> {
        let d = self.shape().dim(op, dim)?;
        let last = self.rank() - 1;
        // Bring `dim` last, run rows, and view the result back in the original order.
        let x = if d == last { self.clone() } else { self.transpose(d as isize, -1)? };
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType { op, dtype: self.dtype() });
        }
        if self.device().is_cuda() {
            let y = crate::cuda::ops::softmax_last(&x, log)?;
            return if d == last { Ok(y) } else { y.transpose(d as isize, -1) };
        }
        let cols = x.dims()[last];
        let s = x.cpu();
        let out =
            dispatch_float!(op, &*s, |v| CpuStorage::from(nn::softmax_rows(&contiguous(v, x.layout()), cols, log)));
        let y = Tensor::from_storage(out, x.shape().clone());
        if d == last { Ok(y) } else { y.transpose(d as isize, -1) }
    }

    /// `exp(x - max) / sum(exp(x - max))` along `dim`, stable for any input; a row that is
    /// all -inf gives NaN, as in torch.
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl("softmax", dim, false)
    }

    /// `x - max - log(sum(exp(x - max)))` along `dim`.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl("log_softmax", dim, true)
    }

    /// `self + residual` and the RMSNorm of that sum, `(sum, normed)`: a layer's residual
    /// add and the norm after it, one pass on a GPU (the bits of `add` then `rms_norm`).
    pub fn add_rms_norm(&self, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
        const OP: &str = "add_rms_norm";
        if residual.dims() != self.dims() {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().clone(), rhs: residual.shape().clone() });
        }
        if residual.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: self.dtype(), rhs: residual.dtype() });
        }
        if residual.device() != self.device() {
            return Err(Error::DeviceMismatch { op: OP, lhs: self.device(), rhs: residual.device() });
        }
        if self.device().is_cuda()
            && self.dtype().is_float()
            && weight.dims() == [self.dim(-1)?]
            && weight.dtype() == self.dtype()
            && weight.device() == self.device()
        {
            return crate::cuda::ops::add_rms_norm(self, residual, weight, eps);
        }
        let sum = self.add(residual)?;
        let normed = sum.rms_norm(weight, eps)?;
        Ok((sum, normed))
    }

    /// RMSNorm over the last dimension with a per-feature `weight` of the same dtype.
    pub fn rms_norm(&self, weight: &Tensor, eps: f32) -> Result<Tensor> {
        const OP: &str = "rms_norm";
        let h = self.dim(-1)?;
        if weight.dims() != [h] {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().clone(), rhs: weight.shape().clone() });
        }
        if weight.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: self.dtype(), rhs: weight.dtype() });
        }
        if weight.device() != self.device() {
            return Err(Error::DeviceMismatch { op: OP, lhs: self.device(), rhs: weight.device() });
        }
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType { op: OP, dtype: self.dtype() });
        }
        if self.device().is_cuda() {
            return crate::cuda::ops::rms_norm(self, weight, eps);
        }
        let (s, w) = (self.cpu(), weight.cpu());
        let out = dispatch_float!(OP, &*s, |v| {
            let wv = contiguous(WithDType::slice(&w).expect("dtype checked"), weight.layout());
            CpuStorage::from(nn::rms_norm_rows(&contiguous(v, self.layout()), &wv, eps))
        });
        Ok(Tensor::from_storage(out, self.shape().clone()))
    }

    /// Rotary position embedding, rotate-half form (Hugging Face Qwen2/Llama), on
    /// `self: [b, t, heads, head_dim]` with `cos`, `sin: [t, head_dim/2]` (positions shared by
    /// the batch) or `[b, t, head_dim/2]` (a position per sequence), from [`rope_tables`].
    pub fn rope(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        const OP: &str = "rope";
        let [b, t, h, d] = self.dims_n(OP)?;
        if !d.is_multiple_of(2) {
            return Err(crate::invalid!(OP, "head_dim {d} is odd"));
        }
        let shape_ok = |c: &Tensor| c.dims() == [t, d / 2] || c.dims() == [b, t, d / 2] || c.dims() == [1, t, d / 2];
        if !shape_ok(cos) || cos.shape() != sin.shape() {
            return Err(crate::invalid!(
                OP,
                "cos {} and sin {} must both be [{t}, {}] or [{b}, {t}, {}] for x {}",
                cos.shape(),
                sin.shape(),
                d / 2,
                d / 2,
                self.shape()
            ));
        }
        let cb = if cos.rank() == 3 { cos.dims()[0] } else { 1 };
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType { op: OP, dtype: self.dtype() });
        }
        if self.device().is_cuda() {
            return crate::cuda::ops::rope(self, cos, sin, [b, t, h, d], cb);
        }
        let (c, sn) = (cos.to_f32_vec()?, sin.to_f32_vec()?);
        let s = self.cpu();
        let out = dispatch_float!(OP, &*s, |v| CpuStorage::from(nn::rope(
            &contiguous(v, self.layout()),
            &c,
            &sn,
            [b, t, h, d],
            cb
        )));
        Ok(Tensor::from_storage(out, self.shape().clone()))
    }

    /// Rows of `weight: [vocab, hidden]` picked by the U32 `ids` of any shape:
    /// the result has shape `ids.shape + [hidden]`.
    pub fn embedding(ids: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(weight.dim(-1)?);
        weight.index_select(&ids.flatten_all()?, 0)?.reshape(dims)
    }

    /// U8 `[q_len, kv_len]` with 1 where key `j` lies in the future of query `i`, the
    /// queries being the last `q_len` of `kv_len` positions (`j > i + kv_len - q_len`):
    /// the entries `masked_fill(.., -inf)` hides before a softmax.
    pub fn causal_mask(q_len: usize, kv_len: usize, device: Device) -> Result<Tensor> {
        if q_len > kv_len {
            return Err(crate::invalid!("causal_mask", "{q_len} queries cannot follow from {kv_len} keys"));
        }
        let off = kv_len - q_len;
        let v: Vec<u8> = (0..q_len).flat_map(|i| (0..kv_len).map(move |j| (j > i + off) as u8)).collect();
        Tensor::from_vec(v, (q_len, kv_len), device)
    }
}

/// `(cos, sin)`, each `[positions, head_dim/2]` in f32, for Hugging Face's default RoPE:
/// `inv_freq[i] = 1 / theta^(2i / head_dim)` computed in f32, angle = position * inv_freq.
pub fn rope_tables(positions: &[u32], head_dim: usize, theta: f32, device: Device) -> Result<(Tensor, Tensor)> {
    if !head_dim.is_multiple_of(2) || head_dim == 0 {
        return Err(crate::invalid!("rope_tables", "head_dim {head_dim} must be even and positive"));
    }
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for &f in &inv_freq {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let n = positions.len();
    Ok((Tensor::from_vec(cos, (n, half), device)?, Tensor::from_vec(sin, (n, half), device)?))
}
