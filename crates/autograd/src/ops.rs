//! Differentiable ops: each computes its value with the tensor op and records the
//! gradient rule, capturing only what that rule reads.

use artist_tensor::{DType, Result, Shape, Tensor, invalid};

use crate::tape::Var;

fn zeros_f32(shape: &Shape, like: &Tensor) -> Result<Tensor> {
    Tensor::zeros(shape.clone(), DType::F32, like.device())
}

/// `g` broadcast back to `shape` (the inverse of a sum over the broadcast axes).
fn expand(g: &Tensor, shape: &Shape) -> Result<Tensor> {
    g.broadcast_as(shape.clone())
}

macro_rules! unary {
    ($($(#[$doc:meta])* $name:ident($saved:ident = $which:ident) |$g:ident| $grad:expr;)*) => {
        impl Var {
            $($(#[$doc])* pub fn $name(&self) -> Result<Var> {
                let value = self.value.$name()?;
                let $saved = unary!(@pick $which, self, value);
                Var::record(stringify!($name), &[self], value, move |$g, _| Ok(vec![Some($grad)]))
            })*
        }
    };
    (@pick input, $s:ident, $v:ident) => { $s.value.clone() };
    (@pick output, $s:ident, $v:ident) => { $v.clone() };
}

unary! {
    exp(y = output) |g| g.mul(&y)?;
    /// Natural logarithm.
    log(x = input) |g| g.div(&x)?;
    sqr(x = input) |g| g.mul(&x)?.mul_scalar(2.0)?;
    sqrt(y = output) |g| g.div(&y)?.mul_scalar(0.5)?;
    silu(x = input) |g| g.silu_backward(&x)?;
    sigmoid(y = output) |g| g.sigmoid_backward(&y)?;
    tanh(y = output) |g| g.tanh_backward(&y)?;
}

macro_rules! binary {
    ($($(#[$doc:meta])* $name:ident, |$g:ident, $a:ident, $b:ident| ($da:expr, $db:expr);)*) => {
        impl Var {
            $($(#[$doc])* pub fn $name(&self, rhs: &Var) -> Result<Var> {
                let value = self.value.$name(&rhs.value)?;
                let ($a, $b) = (self.value.clone(), rhs.value.clone());
                Var::record(stringify!($name), &[self, rhs], value, move |$g, needs| {
                    let (sa, sb) = ($a.shape().clone(), $b.shape().clone());
                    let da = if needs[0] { Some(($da).sum_to(sa)?) } else { None };
                    let db = if needs[1] { Some(($db).sum_to(sb)?) } else { None };
                    Ok(vec![da, db])
                })
            })*
        }
    };
}

binary! {
    /// `self + rhs`, broadcasting.
    add, |g, a, b| (g.clone(), g.clone());
    sub, |g, a, b| (g.clone(), g.neg()?);
    mul, |g, a, b| (g.mul(&b)?, g.mul(&a)?);
    div, |g, a, b| (g.div(&b)?, g.mul(&a)?.div(&b.sqr()?)?.neg()?);
    /// Element-wise minimum; the gradient goes to the smaller input (to `self` on ties).
    minimum, |g, a, b| (a.le(&b)?.where_cond(&g, &g.zeros_like()?)?, a.le(&b)?.where_cond(&g.zeros_like()?, &g)?);
    /// Element-wise maximum; the gradient goes to the larger input (to `self` on ties).
    maximum, |g, a, b| (a.ge(&b)?.where_cond(&g, &g.zeros_like()?)?, a.ge(&b)?.where_cond(&g.zeros_like()?, &g)?);
}

trait ZerosLike {
    fn zeros_like(&self) -> Result<Tensor>;
}

impl ZerosLike for Tensor {
    fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape().clone(), DType::F32, self.device())
    }
}

impl Var {
    pub fn neg(&self) -> Result<Var> {
        self.affine(-1.0, 0.0)
    }

    /// `self * mul + add`.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Var> {
        let value = self.value.affine(mul, add)?;
        Var::record("affine", &[self], value, move |g, _| Ok(vec![Some(g.mul_scalar(mul)?)]))
    }

    pub fn mul_scalar(&self, v: f32) -> Result<Var> {
        self.affine(v, 0.0)
    }

    pub fn add_scalar(&self, v: f32) -> Result<Var> {
        self.affine(1.0, v)
    }

    /// Clamped into `[lo, hi]`; the gradient passes where the input lies inside (ends
    /// included), as in PyTorch.
    pub fn clamp(&self, lo: f32, hi: f32) -> Result<Var> {
        let value = self.value.clamp(lo, hi)?;
        let x = self.value.clone();
        Var::record("clamp", &[self], value, move |g, _| Ok(vec![Some(g.clamp_backward(&x, lo, hi)?)]))
    }

    /// Sum of every element: a one-element tensor of shape `[]`.
    pub fn sum_all(&self) -> Result<Var> {
        let value = self.value.sum_all()?;
        let shape = self.value.shape().clone();
        Var::record("sum_all", &[self], value, move |g, _| {
            let ones = vec![1; shape.rank()];
            Ok(vec![Some(expand(&g.reshape(ones)?, &shape)?)])
        })
    }

    pub fn mean_all(&self) -> Result<Var> {
        let n = self.value.elem_count().max(1);
        self.sum_all()?.mul_scalar(1.0 / n as f32)
    }

    /// Sum over `dim`, kept with size 1.
    pub fn sum_keepdim(&self, dim: isize) -> Result<Var> {
        let value = self.value.sum_keepdim(dim)?;
        let shape = self.value.shape().clone();
        Var::record("sum_keepdim", &[self], value, move |g, _| Ok(vec![Some(expand(&g, &shape)?)]))
    }

    /// Batched matrix product with broadcast batch dimensions.
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        let value = self.value.matmul(&rhs.value)?;
        let (a, b) = (self.value.clone(), rhs.value.clone());
        Var::record("matmul", &[self, rhs], value, move |g, needs| {
            // Half-precision operands meet the (f32) gradient widened.
            let (a, b) = (a.to_dtype(g.dtype())?, b.to_dtype(g.dtype())?);
            let da = if needs[0] { Some(g.matmul(&b.transpose(-2, -1)?)?.sum_to(a.shape().clone())?) } else { None };
            let db = if needs[1] { Some(a.transpose(-2, -1)?.matmul(&g)?.sum_to(b.shape().clone())?) } else { None };
            Ok(vec![da, db])
        })
    }

    /// `self @ weight^T + bias` (PyTorch's `nn.Linear`); `weight` may be bf16 or f16 while
    /// `self` is f32: its gradient is f32 all the same.
    pub fn linear(&self, weight: &Var, bias: Option<&Var>) -> Result<Var> {
        let value = self.value.linear(&weight.value, bias.map(|b| &b.value))?;
        let (x, w) = (self.value.clone(), weight.value.clone());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Var::record("linear", &inputs, value, move |g, needs| {
            let [n, k] = w.dims_n("linear backward")?;
            let g2 = g.reshape((g.elem_count() / n.max(1), n))?;
            let dx = if needs[0] {
                let dx = if w.dtype() == DType::F32 { g2.matmul(&w)? } else { g2.linear(&w.t()?, None)? };
                Some(dx.reshape(x.shape().clone())?)
            } else {
                None
            };
            let dw = if needs[1] {
                let x2 = x.reshape((x.elem_count() / k.max(1), k))?;
                Some(g2.t()?.matmul(&x2.to_dtype(DType::F32)?)?)
            } else {
                None
            };
            let mut out = vec![dx, dw];
            if needs.len() == 3 {
                out.push(if needs[2] { Some(g2.sum(0)?) } else { None });
            }
            Ok(out)
        })
    }

    /// [`Var::linear`] with the product in `compute` (`Tensor::linear_in`: activations and
    /// weights rounded to a half type, sums in f32, an f32 result), as autocast runs
    /// `nn.Linear`. Backward runs its two products the same way (the output gradient
    /// rounded to `compute`, f32 sums) and returns f32 gradients, which autocast would
    /// round to bf16. Saves the rounded activations (half the bytes of f32 ones) and the
    /// weight as it is, rounding it again in backward rather than keeping a copy.
    /// `compute = F32` is [`Var::linear`].
    pub fn linear_in(&self, weight: &Var, bias: Option<&Var>, compute: DType) -> Result<Var> {
        if compute == DType::F32 {
            return self.linear(weight, bias);
        }
        let xh = self.value.to_dtype(compute)?;
        let value = xh.linear_in(&weight.value, bias.map(|b| &b.value), compute)?;
        let w = weight.value.clone();
        let x_shape = self.value.shape().clone();
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Var::record("linear_in", &inputs, value, move |g, needs| {
            let [n, k] = w.dims_n("linear_in backward")?;
            let g2 = g.reshape((g.elem_count() / n.max(1), n))?;
            let gh = g2.to_dtype(compute)?;
            let dx =
                if needs[0] { Some(gh.matmul_f32(&w.to_dtype(compute)?)?.reshape(x_shape.clone())?) } else { None };
            let dw = if needs[1] {
                let x2 = xh.reshape((xh.elem_count() / k.max(1), k))?;
                Some(gh.t()?.matmul_f32(&x2)?)
            } else {
                None
            };
            let mut out = vec![dx, dw];
            if needs.len() == 3 {
                out.push(if needs[2] { Some(g2.to_dtype(DType::F32)?.sum(0)?) } else { None });
            }
            Ok(out)
        })
    }

    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Var> {
        let value = self.value.reshape(shape)?;
        let shape = self.value.shape().clone();
        Var::record("reshape", &[self], value, move |g, _| Ok(vec![Some(g.reshape(shape)?)]))
    }

    pub fn permute(&self, order: &[usize]) -> Result<Var> {
        let value = self.value.permute(order)?;
        let mut inverse = vec![0; order.len()];
        for (i, &o) in order.iter().enumerate() {
            inverse[o] = i;
        }
        Var::record("permute", &[self], value, move |g, _| Ok(vec![Some(g.permute(&inverse)?)]))
    }

    pub fn transpose(&self, a: isize, b: isize) -> Result<Var> {
        let value = self.value.transpose(a, b)?;
        Var::record("transpose", &[self], value, move |g, _| Ok(vec![Some(g.transpose(a, b)?)]))
    }

    /// `len` entries of `dim` from `start`, as a view.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Var> {
        let value = self.value.narrow(dim, start, len)?;
        let d = self.value.shape().dim("narrow", dim)?;
        // The tape adds the gradient into the slice of the input's gradient.
        Var::record_slice(self, value, d, start)
    }

    /// Concatenation along `dim`.
    pub fn cat(parts: &[&Var], dim: isize) -> Result<Var> {
        if parts.len() == 1 {
            return Ok(parts[0].clone());
        }
        let values: Vec<&Tensor> = parts.iter().map(|p| &p.value).collect();
        let value = Tensor::cat(&values, dim)?;
        let sizes = parts.iter().map(|p| p.value.dim(dim)).collect::<Result<Vec<_>>>()?;
        Var::record("cat", parts, value, move |g, needs| {
            let mut start = 0;
            let mut out = Vec::with_capacity(sizes.len());
            for (&len, &need) in sizes.iter().zip(needs) {
                out.push(if need { Some(g.narrow(dim, start, len)?) } else { None });
                start += len;
            }
            Ok(out)
        })
    }

    /// Entries of `dim` picked by the U32 `ids` (repeats allowed; their gradients add).
    pub fn index_select(&self, ids: &Tensor, dim: isize) -> Result<Var> {
        let value = self.value.index_select(ids, dim)?;
        let (shape, ids) = (self.value.shape().clone(), ids.clone());
        Var::record("index_select", &[self], value, move |g, _| {
            Ok(vec![Some(zeros_f32(&shape, &g)?.index_add(dim, &ids, &g.to_dtype(DType::F32)?)?)])
        })
    }

    /// Rows of `weight: [vocab, hidden]` for the U32 `ids`: shape `ids.shape + [hidden]`.
    pub fn embedding(ids: &Tensor, weight: &Var) -> Result<Var> {
        let mut dims = ids.dims().to_vec();
        dims.push(weight.value.dim(-1)?);
        weight.index_select(&ids.flatten_all()?, 0)?.reshape(dims)
    }

    /// A dtype conversion. Gradients stay f32.
    pub fn to_dtype(&self, dtype: DType) -> Result<Var> {
        if dtype == self.value.dtype() {
            return Ok(self.clone());
        }
        let value = self.value.to_dtype(dtype)?;
        Var::record("to_dtype", &[self], value, move |g, _| Ok(vec![Some(g)]))
    }

    /// Entries where the U8 `mask` is 1 replaced by `value`; no gradient flows to them.
    pub fn masked_fill(&self, mask: &Tensor, value: f32) -> Result<Var> {
        let out = self.value.masked_fill(mask, value)?;
        let mask = mask.clone();
        Var::record("masked_fill", &[self], out, move |g, _| Ok(vec![Some(g.masked_fill(&mask, 0.0)?)]))
    }

    pub fn softmax(&self, dim: isize) -> Result<Var> {
        let y = self.value.softmax(dim)?;
        let saved = y.clone();
        Var::record("softmax", &[self], y, move |g, _| {
            // dx = y * (g - sum(g * y))
            let gy = g.mul(&saved)?;
            Ok(vec![Some(gy.sub(&saved.mul(&gy.sum_keepdim(dim)?)?)?)])
        })
    }

    pub fn log_softmax(&self, dim: isize) -> Result<Var> {
        let y = self.value.log_softmax(dim)?;
        let saved = y.clone();
        Var::record("log_softmax", &[self], y, move |g, _| {
            // dx = g - softmax * sum(g)
            Ok(vec![Some(g.sub(&saved.exp()?.mul(&g.sum_keepdim(dim)?)?)?)])
        })
    }

    /// RMSNorm over the last dimension, scaled by `weight`.
    pub fn rms_norm(&self, weight: &Var, eps: f32) -> Result<Var> {
        let value = self.value.rms_norm(&weight.value, eps)?;
        let (x, w) = (self.value.clone(), weight.value.clone());
        Var::record("rms_norm", &[self, weight], value, move |g, needs| {
            // r = 1 / sqrt(mean(x^2) + eps), xhat = x r, y = w xhat: dx = r (g w - xhat
            // mean(g w xhat)), dw = sum over rows of g xhat, fused (`rms_norm_backward`).
            let (dx, dw) = x.rms_norm_backward(&w, &g, eps, needs[1])?;
            Ok(vec![needs[0].then_some(dx), dw])
        })
    }

    /// Rotary embedding of `[b, t, heads, d]` (see `Tensor::rope`); `cos`/`sin` are
    /// constants. Its backward is the inverse rotation.
    pub fn rope(&self, cos: &Tensor, sin: &Tensor) -> Result<Var> {
        let value = self.value.rope(cos, sin)?;
        let (cos, neg_sin) = (cos.clone(), sin.neg()?);
        Var::record("rope", &[self], value, move |g, _| Ok(vec![Some(g.rope(&cos, &neg_sin)?)]))
    }

    /// `silu(self) * up` (the SwiGLU gate).
    pub fn silu_mul(&self, up: &Var) -> Result<Var> {
        let value = self.value.silu_mul(&up.value)?;
        let (gate, upv) = (self.value.clone(), up.value.clone());
        Var::record("silu_mul", &[self, up], value, move |g, needs| {
            if gate.dims() == upv.dims()
                && g.dims() == gate.dims()
                && g.dtype() == gate.dtype()
                && upv.dtype() == gate.dtype()
            {
                // The model's case: one fused pass, the composition's values.
                let (dgate, dup) = gate.silu_mul_backward(&upv, &g)?;
                return Ok(vec![needs[0].then_some(dgate), needs[1].then_some(dup)]);
            }
            let dgate =
                if needs[0] { Some(g.mul(&upv)?.silu_backward(&gate)?.sum_to(gate.shape().clone())?) } else { None };
            let dup = if needs[1] { Some(g.mul(&gate.silu()?)?.sum_to(upv.shape().clone())?) } else { None };
            Ok(vec![dgate, dup])
        })
    }

    /// `silu(gate) * up` of the fused `self = [gate | up]` along the last dim (`[.., 2 i]`,
    /// the output of a fused gate-and-up projection) : `[.., i]`. The same values and
    /// gradients as `narrow`, `narrow` and [`Var::silu_mul`], but backward writes the fused
    /// gradient in one pass ([`Tensor::swiglu_backward`]) instead of filling two zeroed
    /// gradients of the whole width, copying into each and adding them.
    pub fn swiglu(&self) -> Result<Var> {
        let width = self.value.dims().last().copied().unwrap_or(0);
        if width % 2 != 0 {
            return Err(invalid!("swiglu", "the last dim ({width}) is not the two halves gate and up"));
        }
        let i = width / 2;
        let value = self.value.narrow(-1, 0, i)?.silu_mul(&self.value.narrow(-1, i, i)?)?;
        let gu = self.value.clone();
        Var::record("swiglu", &[self], value, move |g, _| {
            if g.dtype() == gu.dtype() {
                return Ok(vec![Some(gu.swiglu_backward(&g)?)]);
            }
            // A gradient of another dtype (the tape passes an f32 gradient through a cast
            // as it is): both widened to f32, as the composition over a widened input.
            Ok(vec![Some(gu.to_dtype(DType::F32)?.swiglu_backward(&g.to_dtype(DType::F32)?)?)])
        })
    }

    /// Causal attention with grouped-query heads (see `Tensor::causal_attention`):
    /// `q: [t, heads, d]` holds the last `t` of `len` positions, `k`, `v: [len, kv_heads,
    /// d]`. Returns `[t, heads, d]`. Backward recomputes the probabilities from the saved
    /// log-sum-exp instead of keeping the `[heads, t, len]` matrix.
    ///
    /// On the GPU this is the fused op with its own backward, and on the CPU from
    /// `CPU_FUSED_MIN_KEYS` keys (cpu/attention.rs). Below that the CPU records it as its
    /// pieces (products, mask, softmax), as torch's eager attention runs, so backward reuses
    /// the saved probabilities: its numbers match transformers and PyTorch to the ulp.
    pub fn causal_attention(q: &Var, k: &Var, v: &Var, scale: f32) -> Result<Var> {
        if !q.value.device().is_cuda() {
            let dt = q.value.dtype();
            if dt != DType::F32 {
                // Half inputs: attention in f32 over their exact widening (the GPU kernels'
                // f32 scores and softmax), so that the gradients are the widened values' and
                // a fused backward reads the f32 output; the output in the inputs' type.
                let (q, k, v) = (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
                return Var::causal_attention(&q, &k, &v, scale)?.to_dtype(dt);
            }
            if artist_tensor::attention_composes(&k.value) {
                return Var::causal_attention_composed(q, k, v, scale);
            }
        }
        let (out, lse) = q.value.causal_attention(&k.value, &v.value, scale)?;
        let (qv, kv, vv, ov) = (q.value.clone(), k.value.clone(), v.value.clone(), out.clone());
        Var::record("causal_attention", &[q, k, v], out, move |g, needs| {
            let (dq, dk, dv) = qv.causal_attention_backward(&kv, &vv, &ov, &lse, &g, scale)?;
            Ok(vec![needs[0].then_some(dq), needs[1].then_some(dk), needs[2].then_some(dv)])
        })
    }

    fn causal_attention_composed(q: &Var, k: &Var, v: &Var, scale: f32) -> Result<Var> {
        let [t, heads, d] = q.value.dims_n("causal_attention")?;
        let [len, kv_heads, _] = k.value.dims_n("causal_attention")?;
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || t > len {
            // The fused op names what is wrong with the shapes.
            q.value.causal_attention(&k.value, &v.value, scale)?;
        }
        let rep = heads / kv_heads;
        // [t, kv, rep, d] -> [kv, rep * t, d]: each KV head's queries as one matrix.
        let qg = q.reshape((t, kv_heads, rep, d))?.permute(&[1, 2, 0, 3])?.reshape((kv_heads, rep * t, d))?;
        let scores = qg.matmul(&k.permute(&[1, 2, 0])?)?.mul_scalar(scale)?; // [kv, rep*t, len]
        let scores = if t > 1 {
            let mask = Tensor::causal_mask(t, len, q.value.device())?;
            scores.reshape((kv_heads, rep, t, len))?.masked_fill(&mask, f32::NEG_INFINITY)?.reshape((
                kv_heads,
                rep * t,
                len,
            ))?
        } else {
            scores
        };
        let out = scores.softmax(-1)?.matmul(&v.permute(&[1, 0, 2])?)?; // [kv, rep*t, d]
        out.reshape((kv_heads, rep, t, d))?.permute(&[2, 0, 1, 3])?.reshape((t, heads, d))
    }

    /// `self.value` with a single element, as f32.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.value.elem_count() != 1 {
            return Err(invalid!("to_scalar", "shape {} is not a scalar", self.value.shape()));
        }
        Ok(self.value.to_f32_vec()?[0])
    }
}
