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

    /// The entropy `-sum_j p_j ln p_j` of `softmax(self)` along the last dimension: one
    /// value per row, on the host, in f32. One pass over each row on either backend (the
    /// GPU kernel keeps the statistics online, kernels/softmax.cu).
    pub fn softmax_entropy(&self) -> Result<Vec<f32>> {
        const OP: &str = "softmax_entropy";
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType { op: OP, dtype: self.dtype() });
        }
        if self.rank() == 0 {
            return Err(crate::invalid!(OP, "a scalar has no rows"));
        }
        if self.device().is_cuda() {
            return crate::cuda::ops::softmax_entropy(self);
        }
        let cols = self.dim(-1)?;
        let s = self.cpu();
        Ok(dispatch_float!(OP, &*s, |v| nn::softmax_entropy_rows(&contiguous(v, self.layout()), cols)))
    }

    /// `self + residual` and the RMSNorm of that sum, `(sum, normed)`: a layer's residual
    /// add and the norm after it, one pass on a GPU (the bits of `add` then `rms_norm`).
    pub fn add_rms_norm(&self, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
        const OP: &str = "add_rms_norm";
        if residual.dims() != self.dims() {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().clone(), rhs: residual.shape().clone() });
        }
        self.check_like(residual, OP)?;
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
        self.check_like(weight, OP)?;
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

    /// The gradients of [`Tensor::silu_mul`] (`self` is the gate) from the output gradient
    /// `grad`: `(dgate, dup)` = `((grad up) silu'(gate), grad silu(gate))`, in one pass over
    /// the three inputs where `mul`, `silu_backward` and `silu` take four, with the same
    /// roundings, so the same values. All three of one shape, dtype and device.
    pub fn silu_mul_backward(&self, up: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        const OP: &str = "silu_mul_backward";
        for t in [up, grad] {
            if t.dims() != self.dims() {
                return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().clone(), rhs: t.shape().clone() });
            }
            self.check_like(t, OP)?;
        }
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType { op: OP, dtype: self.dtype() });
        }
        if self.device().is_cuda() {
            return crate::cuda::ops::silu_mul_backward(self, up, grad);
        }
        let (gs, us, ds) = (self.cpu(), up.cpu(), grad.cpu());
        let (dg, du) = dispatch_float!(OP, &*gs, |v| {
            let u = contiguous(WithDType::slice(&us).expect("dtype checked"), up.layout());
            let d = contiguous(WithDType::slice(&ds).expect("dtype checked"), grad.layout());
            let (a, b) = nn::silu_mul_backward(&contiguous(v, self.layout()), &u, &d);
            (CpuStorage::from(a), CpuStorage::from(b))
        });
        Ok((Tensor::from_storage(dg, self.shape().clone()), Tensor::from_storage(du, self.shape().clone())))
    }

    /// The gradient of `silu(gate) * up` with respect to the fused `self = [gate | up]`
    /// along the last dim (`[.., 2 i]`, the output of a fused gate-and-up projection) from
    /// the output gradient `grad` (`[.., i]`, self's dtype and device): f32 `[.., 2 i]`
    /// holding `dgate | dup`, each rounded to self's dtype as [`Tensor::silu_mul_backward`]
    /// rounds it. One pass, where the backward of two `narrow`s and `silu_mul` fills two
    /// zeroed gradients of the whole width, copies into each and adds them.
    pub fn swiglu_backward(&self, grad: &Tensor) -> Result<Tensor> {
        const OP: &str = "swiglu_backward";
        self.check_like(grad, OP)?;
        let dims = self.dims();
        let last = dims.last().copied().unwrap_or(0);
        let cols = last / 2;
        let halves = !dims.is_empty()
            && last % 2 == 0
            && grad.rank() == dims.len()
            && grad.dims()[..dims.len() - 1] == dims[..dims.len() - 1]
            && grad.dims()[dims.len() - 1] == cols;
        if !halves {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().clone(), rhs: grad.shape().clone() });
        }
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType { op: OP, dtype: self.dtype() });
        }
        if self.device().is_cuda() {
            return crate::cuda::ops::swiglu_backward(self, grad);
        }
        let (xs, gs) = (self.cpu(), grad.cpu());
        let out = dispatch_float!(OP, &*xs, |v| {
            let g = contiguous(WithDType::slice(&gs).expect("dtype checked"), grad.layout());
            nn::swiglu_backward_rows(&contiguous(v, self.layout()), &g, cols)
        });
        Tensor::from_vec(out, self.shape().clone(), Device::Cpu)
    }

    /// The gradients of [`Tensor::rms_norm`] (`self` is its input `x`) from the output
    /// gradient `grad` (x's shape): `dx` (f32, x's shape) and, with `want_dw`, `dw` (f32,
    /// `[h]`), fused: per row one pass for the statistics and one for `dx` (`r (g w - xh
    /// mean(g w xh))`, `r = rsqrt(mean(x^2) + eps)`, `xh = x r`), and `dw = sum over rows
    /// of g xh`. The composition of tensor ops it replaces reads and writes the activations
    /// about a dozen times. On the CPU the sums run in that composition's order, so the
    /// values are its own; the GPU sums dW over fixed chunks of rows, then the chunks in
    /// order (no atomics: the same bits every run).
    pub fn rms_norm_backward(
        &self,
        weight: &Tensor,
        grad: &Tensor,
        eps: f32,
        want_dw: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        const OP: &str = "rms_norm_backward";
        let h = self.dim(-1)?;
        if weight.dims() != [h] || grad.dims() != self.dims() {
            return Err(crate::invalid!(
                OP,
                "x {}, weight {} and grad {} do not fit",
                self.shape(),
                weight.shape(),
                grad.shape()
            ));
        }
        if weight.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: self.dtype(), rhs: weight.dtype() });
        }
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType { op: OP, dtype: self.dtype() });
        }
        for t in [weight, grad] {
            if t.device() != self.device() {
                return Err(Error::DeviceMismatch { op: OP, lhs: self.device(), rhs: t.device() });
            }
        }
        let grad = grad.to_dtype(crate::DType::F32)?;
        if self.device().is_cuda() {
            return crate::cuda::ops::rms_norm_backward(self, weight, &grad, eps, want_dw);
        }
        let (s, w, gs) = (self.cpu(), weight.cpu(), grad.cpu());
        let gv = contiguous(f32::slice(&gs).expect("f32 grad"), grad.layout());
        let (dx, dw) = dispatch_float!(OP, &*s, |v| {
            let wv = contiguous(WithDType::slice(&w).expect("dtype checked"), weight.layout());
            nn::rms_norm_backward_rows(&contiguous(v, self.layout()), &wv, &gv, eps, want_dw)
        });
        let dx = Tensor::from_vec(dx, self.shape().clone(), Device::Cpu)?;
        let dw = dw.map(|d| Tensor::from_vec(d, h, Device::Cpu)).transpose()?;
        Ok((dx, dw))
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
    rope_tables_scaled(positions, &rope_inv_freq(head_dim, theta), 1.0, device)
}

/// Plain RoPE's inverse frequencies, `1 / theta^(2i / head_dim)` for each pair of
/// dimensions, in f32 as transformers computes them.
pub fn rope_inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// [`rope_tables`] for any inverse frequencies (one per pair of dimensions, as scaled RoPE
/// such as YaRN stretches them), cos and sin multiplied by `scale`:
/// `cos[p, i] = cos(p inv_freq[i]) scale`, in f32 as transformers computes them.
pub fn rope_tables_scaled(positions: &[u32], inv_freq: &[f32], scale: f32, device: Device) -> Result<(Tensor, Tensor)> {
    if inv_freq.is_empty() {
        return Err(crate::invalid!("rope_tables", "no frequencies"));
    }
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for &f in inv_freq {
            let a = p as f32 * f;
            cos.push(a.cos() * scale);
            sin.push(a.sin() * scale);
        }
    }
    let n = positions.len();
    Ok((Tensor::from_vec(cos, (n, half), device)?, Tensor::from_vec(sin, (n, half), device)?))
}
