//! Log-probabilities of chosen tokens over a large vocabulary, without ever holding
//! `[tokens x vocab]` for the whole batch: the projection, log-softmax and gather run
//! over chunks of rows, and backward recomputes each chunk's softmax instead of saving it.

use artist_tensor::{DType, Result, Tensor, invalid};

use crate::tape::Var;

/// Rows per chunk: about 16M logits (64 MiB of f32) at a time.
fn default_chunk(vocab: usize) -> usize {
    ((1usize << 24) / vocab.max(1)).max(1)
}

/// `log softmax(scale * hidden @ weight^T)[i, targets[i]]` for each row `i`: shape `[n]`.
///
/// `hidden: [n, h]` (f32), `weight: [vocab, h]` (any float dtype, e.g. a bf16 LM head).
/// `scale` is `1 / temperature` when the tokens were sampled at a temperature. `chunk`
/// rows go through the vocabulary at a time (`None`: about 16M logits per chunk).
pub fn token_logprobs(hidden: &Var, weight: &Var, targets: &[u32], scale: f32, chunk: Option<usize>) -> Result<Var> {
    token_logprobs_in(hidden, weight, targets, scale, chunk, None)
}

/// [`token_logprobs`] with the projection's products (forward and backward) in `compute`
/// (`Some(BF16)`: hidden states, weight and logit gradients rounded to bf16, sums in f32,
/// as [`Var::linear_in`] does); the log-softmax and everything after it stay f32. The
/// weight is rounded once per call, not once per chunk.
pub fn token_logprobs_in(
    hidden: &Var,
    weight: &Var,
    targets: &[u32],
    scale: f32,
    chunk: Option<usize>,
    compute: Option<DType>,
) -> Result<Var> {
    logprobs_and_entropy(hidden, weight, targets, scale, chunk, compute, false)
}

/// [`token_logprobs_in`], and with it the entropy `-sum_j p_ij log p_ij` of each row's
/// distribution `p_i = softmax(scale * hidden_i @ weight^T)`, in nats: the policy's entropy
/// at the sampling temperature, the quantity RL runs watch collapse (and an entropy bonus
/// in the loss keeps up). Both are differentiable: a gradient reaching the entropy flows
/// back through the same recomputed chunks as the logprobs' (one pass over each chunk's
/// logits, kernels/logprob.cu), and when none reaches it the backward is
/// [`token_logprobs_in`]'s to the bit.
pub fn token_logprobs_with_entropy_in(
    hidden: &Var,
    weight: &Var,
    targets: &[u32],
    scale: f32,
    chunk: Option<usize>,
    compute: Option<DType>,
) -> Result<(Var, Var)> {
    let n = targets.len();
    let both = logprobs_and_entropy(hidden, weight, targets, scale, chunk, compute, true)?;
    Ok((both.narrow(0, 0, n)?, both.narrow(0, n, n)?))
}

fn logprobs_and_entropy(
    hidden: &Var,
    weight: &Var,
    targets: &[u32],
    scale: f32,
    chunk: Option<usize>,
    compute: Option<DType>,
    entropy: bool,
) -> Result<Var> {
    const OP: &str = "token_logprobs";
    let [n, h] = hidden.value().dims_n(OP)?;
    let [vocab, wh] = weight.value().dims_n(OP)?;
    if h != wh {
        return Err(invalid!(
            OP,
            "hidden {} and weight {} disagree on the hidden size",
            hidden.shape(),
            weight.shape()
        ));
    }
    if targets.len() != n {
        return Err(invalid!(OP, "{} targets for {n} rows", targets.len()));
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(invalid!(OP, "target {t} is outside the vocabulary of {vocab}"));
    }
    let chunk = chunk.unwrap_or_else(|| default_chunk(vocab)).max(1);
    let device = hidden.value().device();
    let targets = Tensor::from_vec(targets.to_vec(), (n, 1), device)?;
    let (hv, wv) = (hidden.value().clone(), weight.value().clone());
    let compute = compute.filter(|&dt| dt != DType::F32);
    // The weight as the products read it: rounded once when a compute dtype asks for it.
    let wc = match compute {
        Some(dt) => wv.to_dtype(dt)?,
        None => wv.clone(),
    };

    let project = move |h: &Tensor, w: &Tensor| -> Result<Tensor> {
        match compute {
            Some(dt) => h.linear_in(w, None, dt),
            None => h.linear(w, None),
        }
    };
    let logits_of = move |h: &Tensor, w: &Tensor| -> Result<Tensor> {
        let z = project(h, w)?;
        if scale == 1.0 { Ok(z) } else { z.mul_scalar(scale) }
    };
    // Forward keeps only log-sum-exp per row: backward rebuilds the softmax from it in the
    // same pass that forms the logit gradient.
    let (mut out, mut lse) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut entropies = entropy.then(|| Vec::with_capacity(n));
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let t = targets.narrow(0, start, len)?;
        let z = logits_of(&hv.narrow(0, start, len)?, &wc)?;
        let ls = z.log_softmax(-1)?;
        if let Some(e) = entropies.as_mut() {
            e.extend(z.softmax_entropy()?);
        }
        let lp = ls.gather(1, &t)?.to_vec::<f32>()?;
        let zt = z.gather(1, &t)?.to_vec::<f32>()?;
        lse.extend(zt.iter().zip(&lp).map(|(z, l)| z - l));
        out.extend(lp);
    }
    // `[lp; entropy]` when the entropy is asked for: the caller narrows it into two.
    let entropies = entropies.unwrap_or_default();
    out.extend(&entropies);
    let value = Tensor::from_vec(out, n + entropies.len(), device)?;
    let target_ids: Vec<u32> = targets.to_vec()?;

    Var::record(OP, &[hidden, weight], value, move |g, needs| {
        let mut g = g.to_dtype(DType::F32)?.to_vec::<f32>()?;
        // The entropy's gradient, unless none reached it (then the backward is the plain one).
        let g_entropy = g.split_off(n);
        let g_entropy = if g_entropy.iter().any(|&x| x != 0.0) { Some(g_entropy) } else { None };
        // dh = dz @ W needs W as f32 rows of an [h, vocab] linear; widen half weights once.
        let w_t =
            if needs[0] && compute.is_none() && wv.dtype() != DType::F32 { Some(wv.t()?.contiguous()?) } else { None };
        let mut dw: Option<Tensor> = None;
        let mut dh_parts = Vec::new();
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let hc = hv.narrow(0, start, len)?;
            // d lp_i / d z_ij = scale * (onehot_ij - p_ij), p_ij = exp(scale z_ij - lse_i), and
            // d h_i / d z_ij = -scale p_ij (log p_ij + h_i); the unscaled logits' buffer is
            // overwritten with the gradient row by row.
            let dz = project(&hc, &wc)?;
            let rows = start..start + len;
            dz.token_logprob_entropy_grad_in_place(
                &g[rows.clone()],
                &lse[rows.clone()],
                &target_ids[rows.clone()],
                scale,
                g_entropy.as_ref().map(|gh| (&gh[rows.clone()], &entropies[rows.clone()])),
            )?;
            // Under a compute dtype both products read the logit gradient rounded to it.
            let dzc = compute.map(|dt| dz.to_dtype(dt)).transpose()?;
            if needs[0] {
                dh_parts.push(match (&dzc, &w_t) {
                    (Some(dzc), _) => dzc.matmul_f32(&wc)?,
                    (None, None) => dz.matmul(&wv)?,
                    (None, Some(wt)) => dz.linear(wt, None)?,
                });
            }
            if needs[1] {
                let part = match (&dzc, compute) {
                    (Some(dzc), Some(dt)) => dzc.t()?.matmul_f32(&hc.to_dtype(dt)?)?,
                    _ => dz.t()?.matmul(&hc.to_dtype(DType::F32)?)?,
                };
                match &dw {
                    None => dw = Some(part),
                    Some(acc) => acc.add_assign(&part)?,
                }
            }
        }
        let dh = if needs[0] { Some(Tensor::cat(&dh_parts.iter().collect::<Vec<_>>(), 0)?) } else { None };
        Ok(vec![dh, dw])
    })
}
