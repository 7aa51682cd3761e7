//! Fused in-place updates for training: the AdamW step, gradient scaling and norms, and the
//! backward of chunked token log-probabilities. Each is one pass over memory on either
//! device, with the same arithmetic on both (the GPU kernels round every operation on its
//! own, so AdamW gives the CPU's bits).

use rayon::prelude::*;

use crate::{DType, Error, Result, Tensor};

/// The per-step scalars of one AdamW update (see [`Tensor::adamw_step`]), computed by the
/// optimiser in f64 and rounded to f32 as torch does.
#[derive(Debug, Clone, Copy)]
pub struct AdamWScalars {
    /// `1 - lr * weight_decay`.
    pub decay: f32,
    /// `1 - beta1`.
    pub beta1_complement: f32,
    pub beta2: f32,
    /// `1 - beta2`.
    pub beta2_complement: f32,
    pub eps: f32,
    /// `sqrt(1 - beta2^step)`.
    pub bias_correction2_sqrt: f32,
    /// `-lr / (1 - beta1^step)`.
    pub step_size: f32,
}

/// One draw of [`Tensor::sample_rows`]: which row of logits, the sampler's settings, and the
/// uniform number in [0, 1) the sampler drew from its own seeded generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplePick {
    pub row: usize,
    /// 0: greedy.
    pub temperature: f32,
    /// 0: off.
    pub top_k: usize,
    /// 1: off.
    pub top_p: f32,
    /// 0: off.
    pub min_p: f32,
    pub u: f64,
}

const CHUNK: usize = 1 << 14;

fn f32_contiguous(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::DTypeMismatch { op, lhs: t.dtype(), rhs: DType::F32 });
    }
    if !t.is_contiguous() {
        return Err(crate::invalid!(op, "tensor {} is not contiguous", t.shape()));
    }
    Ok(())
}

impl Tensor {
    /// One AdamW update in place, element for element as `torch.optim.AdamW(foreach=False)`:
    /// `p *= decay; m += (1-b1)(g - m); v = v b2 + (1-b2) g g;
    /// p += step_size * m / (sqrt(v) / bc2_sqrt + eps)`. `self` (the f32 weights), `m`,
    /// `v` and `g` are contiguous f32 tensors of one shape on one device.
    pub fn adamw_step(&self, m: &Tensor, v: &Tensor, g: &Tensor, s: &AdamWScalars) -> Result<()> {
        const OP: &str = "adamw_step";
        for t in [self, m, v, g] {
            f32_contiguous(OP, t)?;
            if t.shape() != self.shape() {
                return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().clone(), rhs: t.shape().clone() });
            }
            if t.device() != self.device() {
                return Err(Error::DeviceMismatch { op: OP, lhs: self.device(), rhs: t.device() });
            }
        }
        if self.device().is_cuda() {
            return crate::cuda::ops::adamw(self, m, v, g, s);
        }
        let s = *s;
        let g = g.copy_if_shared(self)?;
        g.update_f32(|g| {
            m.update_f32(|m| {
                v.update_f32(|v| {
                    self.update_f32(|p| {
                        p.par_chunks_mut(CHUNK)
                            .zip(m.par_chunks_mut(CHUNK))
                            .zip(v.par_chunks_mut(CHUNK))
                            .zip(g.par_chunks(CHUNK))
                            .for_each(|(((p, m), v), g)| {
                                for i in 0..p.len() {
                                    let gi = g[i];
                                    p[i] *= s.decay;
                                    m[i] += s.beta1_complement * (gi - m[i]);
                                    v[i] = v[i] * s.beta2 + s.beta2_complement * gi * gi;
                                    let denom = v[i].sqrt() / s.bias_correction2_sqrt + s.eps;
                                    p[i] += s.step_size * (m[i] / denom);
                                }
                            })
                    })
                })
            })
        })????;
        Ok(())
    }

    /// `self` when it does not share storage with `other`, else a copy (so two in-place
    /// views never take the same lock twice).
    fn copy_if_shared(&self, other: &Tensor) -> Result<Tensor> {
        if self.same_storage(other) { self.copy() } else { Ok(self.clone()) }
    }

    /// `self *= s` in place (a contiguous f32 tensor).
    pub fn scale_in_place(&self, s: f32) -> Result<()> {
        f32_contiguous("scale_in_place", self)?;
        if self.device().is_cuda() {
            return crate::cuda::ops::scale_in_place(self, s);
        }
        self.update_f32(|v| v.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= s)))
    }

    /// The sum of the squares of an f32 tensor's elements, accumulated in f64 (gradient
    /// norms). Always the same bits for the same tensor on the same device.
    pub fn sum_squares_f64(&self) -> Result<f64> {
        if self.dtype() != DType::F32 {
            return Err(Error::DTypeMismatch { op: "sum_squares_f64", lhs: self.dtype(), rhs: DType::F32 });
        }
        if self.device().is_cuda() {
            return crate::cuda::ops::sum_squares(self);
        }
        let c = self.contiguous()?;
        c.update_f32(|v| v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
    }

    /// One token and its logprob for each pick from the f32 logits `self: [rows, vocab]` on a
    /// GPU, with the host sampler's rules (engine's `Sampler`: temperature, top-k, min-p,
    /// top-p, inverse-CDF draw in probability order, logprob of the tempered distribution)
    /// given the same uniform number: only the ids and logprobs leave the GPU. On the CPU
    /// the engine samples rows directly, so this is for CUDA tensors.
    pub fn sample_rows(&self, picks: &[SamplePick]) -> Result<Vec<(u32, f32)>> {
        const OP: &str = "sample_rows";
        f32_contiguous(OP, self)?;
        let [rows, vocab] = self.dims_n(OP)?;
        if let Some(p) = picks.iter().find(|p| p.row >= rows) {
            return Err(Error::IndexOutOfRange { op: OP, index: p.row, size: rows });
        }
        if vocab == 0 || vocab >= 1 << 24 {
            return Err(crate::invalid!(OP, "a vocabulary of {vocab} (1 to 2^24 - 1 supported)"));
        }
        if picks.len() > 65_535 {
            return Err(crate::invalid!(OP, "{} picks in one call (at most 65,535: a grid dimension)", picks.len()));
        }
        if !self.device().is_cuda() {
            return Err(crate::invalid!(OP, "CUDA tensors only: on the CPU the engine's sampler reads rows directly"));
        }
        crate::cuda::ops::sample_rows(self, picks, vocab)
    }

    /// In place over f32 logits `self: [rows, vocab]` (the unscaled projection of each row):
    /// the gradient of `log softmax(scale * z)[target]` weighted by `g`,
    /// `dz[i, j] = -g_i s exp(s z[i, j] - lse_i) + [j == t_i] g_i s`, with `lse` each row's
    /// log-sum-exp of the scaled logits.
    pub fn token_logprob_grad_in_place(&self, g: &[f32], lse: &[f32], targets: &[u32], scale: f32) -> Result<()> {
        self.token_logprob_entropy_grad_in_place(g, lse, targets, scale, None)
    }

    /// [`Tensor::token_logprob_grad_in_place`] plus, when `entropy` is `(g_h, h)`, the
    /// gradient of each row's entropy `h_i = -sum_j p_ij log p_ij` (its value, from the
    /// forward pass) weighted by `g_h`: with `p = softmax(s z)` and `log p_ij = s z_ij - lse_i`,
    /// `d h_i / d z_ij = -s p_ij (log p_ij + h_i)`, so
    /// `dz[i, j] = -s p_ij (g_i + g_h_i (log p_ij + h_i)) + [j == t_i] g_i s`.
    pub fn token_logprob_entropy_grad_in_place(
        &self,
        g: &[f32],
        lse: &[f32],
        targets: &[u32],
        scale: f32,
        entropy: Option<(&[f32], &[f32])>,
    ) -> Result<()> {
        const OP: &str = "token_logprob_grad_in_place";
        f32_contiguous(OP, self)?;
        let [rows, vocab] = self.dims_n(OP)?;
        if g.len() != rows || lse.len() != rows || targets.len() != rows {
            return Err(crate::invalid!(
                OP,
                "{rows} rows but {} gradients, {} log-sum-exps, {} targets",
                g.len(),
                lse.len(),
                targets.len()
            ));
        }
        if let Some((gh, h)) = entropy
            && (gh.len() != rows || h.len() != rows)
        {
            return Err(crate::invalid!(
                OP,
                "{rows} rows but {} entropy gradients and {} entropies",
                gh.len(),
                h.len()
            ));
        }
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::IndexOutOfRange { op: OP, index: t as usize, size: vocab });
        }
        if self.device().is_cuda() {
            return crate::cuda::ops::logprob_grad(self, g, lse, targets, scale, entropy);
        }
        self.update_f32(|v| {
            v.par_chunks_mut(vocab.max(1)).enumerate().for_each(|(i, row)| {
                let (gi, li) = (g[i] * scale, lse[i]);
                match entropy {
                    None => {
                        for x in row.iter_mut() {
                            *x = -gi * (*x * scale - li).exp();
                        }
                    }
                    Some((gh, h)) => {
                        let (ghi, hi) = (gh[i] * scale, h[i]);
                        for x in row.iter_mut() {
                            let lp = *x * scale - li;
                            *x = -lp.exp() * (gi + ghi * (lp + hi));
                        }
                    }
                }
                row[targets[i] as usize] += gi;
            })
        })
    }
}
