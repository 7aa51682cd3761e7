//! The collectives of a data-parallel step: identical initial weights, mean gradients.

use std::ops::Range;

use artist_autograd::{Gradients, Param};
use artist_tensor::{DType, Tensor};

use crate::{Communicator, Error, Result};

/// Gradient values per all-reduce bucket by default: 25 MiB of f32, as PyTorch DDP's
/// `bucket_cap_mb`.
pub const DEFAULT_BUCKET_ELEMS: usize = 25 * (1 << 20) / 4;

/// Replaces every rank's gradients by their mean over ranks, as DDP does.
///
/// `params` are the model's parameters in the model's order, the same order on every
/// rank (`Qwen2::params()`); frozen ones are skipped. Gradients travel packed into
/// buckets of about `bucket_elems` values (a larger parameter gets a bucket of its own),
/// in that order, so every rank adds the same values in the same order and ends with the
/// same bits. A parameter that has a gradient on some rank but not on this one gets a
/// zero gradient here first (rank 0 to `n-1` agree on which parameters take part by a
/// small all-reduce of flags); one without a gradient anywhere stays without.
///
/// For the result to be the gradient of the global batch, each rank's loss must be its
/// shard's part of the global loss times the world size: with a loss normalised by a
/// count (target tokens), divide the shard's sum by `global_count / world_size`.
pub fn all_reduce_gradients<C: Communicator + ?Sized>(
    comm: &mut C,
    params: &[&Param],
    grads: &mut Gradients,
    bucket_elems: usize,
) -> Result<()> {
    reduce_gradients(comm, params, grads, bucket_elems, true)
}

/// Replaces every rank's gradients by their sum over ranks: [`all_reduce_gradients`]
/// without the division by the world size. The sum is the global batch's gradient when
/// each rank's loss is its shard's part of the global loss (a sum over the shard's
/// tokens divided by the global token count), with no rescaling on either side.
pub fn all_reduce_gradients_sum<C: Communicator + ?Sized>(
    comm: &mut C,
    params: &[&Param],
    grads: &mut Gradients,
    bucket_elems: usize,
) -> Result<()> {
    reduce_gradients(comm, params, grads, bucket_elems, false)
}

fn reduce_gradients<C: Communicator + ?Sized>(
    comm: &mut C,
    params: &[&Param],
    grads: &mut Gradients,
    bucket_elems: usize,
    mean: bool,
) -> Result<()> {
    let params: Vec<&Param> = params.iter().copied().filter(|p| p.trainable()).collect();
    let mut present: Vec<f32> = params.iter().map(|p| if grads.get(p.id()).is_some() { 1.0 } else { 0.0 }).collect();
    comm.all_reduce_sum(&mut present)?;
    let mut taking = Vec::new();
    for (p, &flag) in params.iter().zip(&present) {
        if flag == 0.0 {
            continue;
        }
        match grads.get(p.id()) {
            Some(g) if g.elem_count() != p.value().elem_count() => {
                return Err(Error::Invalid(format!(
                    "the gradient of {} has shape {}, the parameter {}",
                    p.name(),
                    g.shape(),
                    p.value().shape()
                )));
            }
            Some(_) => {}
            None => grads.add(p.id(), Tensor::zeros(p.value().shape().clone(), DType::F32, p.value().device())?)?,
        }
        taking.push(*p);
    }
    let tensors: Vec<&Tensor> = taking.iter().map(|p| grads.get(p.id()).expect("added above")).collect();
    for bucket in buckets(&tensors, bucket_elems) {
        let mut buf = Vec::with_capacity(bucket.iter().map(|t| t.elem_count()).sum());
        for t in &bucket {
            buf.extend_from_slice(&t.to_vec::<f32>()?);
        }
        if mean {
            comm.all_reduce_mean(&mut buf)?;
        } else {
            comm.all_reduce_sum(&mut buf)?;
        }
        let mut at = 0;
        for t in &bucket {
            let n = t.elem_count();
            if t.device().is_cpu() {
                t.update_f32(|v| v.copy_from_slice(&buf[at..at + n]))?;
            } else {
                t.copy_from(&Tensor::from_vec(buf[at..at + n].to_vec(), t.shape().clone(), t.device())?)?;
            }
            at += n;
        }
    }
    Ok(())
}

/// Makes every rank's parameters equal to rank `root`'s (rank 0 at the start of a run:
/// identical initial weights whatever each rank loaded or initialised). `params` in the
/// same order on every rank; frozen ones are included (a reference model must match
/// too). Half-precision weights travel widened to f32, which is exact.
pub fn broadcast_params<C: Communicator + ?Sized>(comm: &mut C, params: &[&Param], root: usize) -> Result<()> {
    let values: Vec<&Tensor> = params.iter().map(|p| p.value()).collect();
    for bucket in buckets(&values, DEFAULT_BUCKET_ELEMS) {
        let mut buf = Vec::with_capacity(bucket.iter().map(|t| t.elem_count()).sum());
        for t in &bucket {
            buf.extend_from_slice(&t.to_dtype(DType::F32)?.to_vec::<f32>()?);
        }
        comm.broadcast(&mut buf, root)?;
        let mut at = 0;
        for t in &bucket {
            let n = t.elem_count();
            let src = Tensor::from_vec(buf[at..at + n].to_vec(), t.shape().clone(), t.device())?;
            t.copy_from(&src.to_dtype(t.dtype())?)?;
            at += n;
        }
    }
    Ok(())
}

/// Consecutive runs of `tensors` holding about `cap` values each (at least one tensor).
fn buckets<'a>(tensors: &[&'a Tensor], cap: usize) -> Vec<Vec<&'a Tensor>> {
    let mut out: Vec<Vec<&Tensor>> = Vec::new();
    let mut size = 0;
    for &t in tensors {
        if out.is_empty() || (size > 0 && size + t.elem_count() > cap.max(1)) {
            out.push(Vec::new());
            size = 0;
        }
        out.last_mut().expect("pushed").push(t);
        size += t.elem_count();
    }
    out
}

/// The part of `0..len` that `rank` of `world_size` takes: contiguous, the first
/// `len % world_size` ranks one item more. Split whole groups (GRPO: prompts, not
/// samples) so that a group never spans ranks.
pub fn shard_range(len: usize, rank: usize, world_size: usize) -> Range<usize> {
    let (q, r) = (len / world_size, len % world_size);
    let start = rank * q + rank.min(r);
    start..start + q + usize::from(rank < r)
}
