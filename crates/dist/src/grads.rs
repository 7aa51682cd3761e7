//! The collectives of a data-parallel step: identical initial weights, mean gradients.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::mpsc;

use artist_autograd::{Gradients, Param, ParamId};
use artist_tensor::{DType, Tensor};

use crate::{Communicator, Error, Reduce, Result};

/// Gradient values per all-reduce bucket by default: 25 MiB of f32, as PyTorch DDP's
/// `bucket_cap_mb`.
pub const DEFAULT_BUCKET_ELEMS: usize = 25 * (1 << 20) / 4;

/// Replaces every rank's gradients by their mean over ranks, as DDP does.
///
/// `params` are the model's parameters in the model's order, the same order on every
/// rank (`Qwen2::params()`); frozen ones are skipped. Gradients are grouped into buckets
/// of about `bucket_elems` values (a larger parameter gets a bucket of its own), the same
/// buckets on every rank, and summed in place, parameter by parameter, so every rank adds
/// the same values in the same order and ends with the same bits. A parameter that has a
/// gradient on some rank but not on this one gets one here (the others' sum); one without
/// a gradient anywhere stays without. Which ranks have which gradients is agreed once per
/// call, by one small collective after the last bucket, not once per bucket: a bucket is
/// summed with zeros standing for the gradients this rank lacks, and those sums are
/// dropped afterwards where no rank had the gradient.
///
/// For the result to be the gradient of the global batch, each rank's loss must be its
/// shard's part of the global loss times the world size: with a loss normalised by a
/// count (target tokens), divide the shard's sum by `global_count / world_size`.
///
/// [`all_reduce_gradients_overlapped`] does the same while backward runs.
pub fn all_reduce_gradients<C: Communicator + ?Sized>(
    comm: &mut C,
    params: &[&Param],
    grads: &mut Gradients,
    bucket_elems: usize,
) -> Result<()> {
    all_reduce_gradients_overlapped(comm, params, grads, bucket_elems, Reduce::Mean, |_, _| Ok::<(), Error>(()))
        .map(drop)
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
    all_reduce_gradients_overlapped(comm, params, grads, bucket_elems, Reduce::Sum, |_, _| Ok::<(), Error>(()))
        .map(drop)
}

/// What [`all_reduce_gradients_overlapped`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReduceStats {
    /// Buckets all-reduced.
    pub buckets: usize,
    /// Of those, the ones handed to the communication thread while backward was still
    /// running (the rest went after it returned).
    pub during_backward: usize,
}

/// [`all_reduce_gradients`] (or its sum) overlapped with the backward pass, as DDP
/// overlaps them: `backward` runs the last micro-batch's backward into the gradients it
/// is given, calling the hook it is given as each parameter's gradient becomes final
/// (`Tape::backward_with` does exactly that); a bucket whose gradients are all final is
/// handed to a communication thread and all-reduced while backward computes the layers
/// below. Buckets are filled in the reverse of the model's order, the order backward
/// finishes them, and are all-reduced strictly in bucket order on every rank. After
/// `backward` returns, parameters never reported (no gradient on this rank, or computed
/// without a hook) complete their buckets, and the sums are written back.
///
/// The result is the bits [`all_reduce_gradients`] gives after a plain backward: the
/// collectives add the same values in rank order, only sooner. An error from `backward`
/// is returned as it is (the other ranks then fail at the next collective, or at their
/// timeout, naming this rank).
pub fn all_reduce_gradients_overlapped<C, E, F>(
    comm: &mut C,
    params: &[&Param],
    grads: &mut Gradients,
    bucket_elems: usize,
    reduce: Reduce,
    backward: F,
) -> std::result::Result<ReduceStats, E>
where
    C: Communicator + ?Sized,
    E: From<Error>,
    F: FnOnce(&mut Gradients, &mut dyn FnMut(ParamId, &Gradients)) -> std::result::Result<(), E>,
{
    let params: Vec<&Param> = params.iter().copied().filter(|p| p.trainable()).rev().collect();
    let sizes: Vec<usize> = params.iter().map(|p| p.value().elem_count()).collect();
    let buckets = bucket_ranges(&sizes, bucket_elems);
    let index: HashMap<ParamId, usize> = params.iter().enumerate().map(|(i, p)| (p.id(), i)).collect();
    let mut bucket_of = vec![0; params.len()];
    for (k, r) in buckets.iter().enumerate() {
        bucket_of[r.clone()].iter_mut().for_each(|b| *b = k);
    }
    let mut pending: Vec<usize> = buckets.iter().map(|r| r.len()).collect();
    let mut ready = vec![false; params.len()];
    // The next bucket to send (a cell: read between the hook's calls).
    let next = std::cell::Cell::new(0);
    let mut during_backward = 0;

    let (results, outcome) = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(usize, Vec<Option<Tensor>>)>();
        let comm = &mut *comm;
        let buckets = &buckets;
        let params_ref = &params;
        let worker = s.spawn(move || -> Vec<Result<Vec<Option<Tensor>>>> {
            let _range = artist_tensor::nvtx::range("all-reduce gradients");
            let mut out = Vec::new();
            for (k, tensors) in rx {
                let r = reduce_bucket(comm, &params_ref[buckets[k].clone()], &tensors, reduce);
                let failed = r.is_err();
                out.push(r);
                if failed {
                    break;
                }
            }
            out
        });
        // Marks parameter `i` final and sends every bucket now complete, in order.
        let mut mark = |i: usize, grads: &Gradients| {
            if std::mem::replace(&mut ready[i], true) {
                return;
            }
            pending[bucket_of[i]] -= 1;
            while next.get() < buckets.len() && pending[next.get()] == 0 {
                let k = next.get();
                let tensors = buckets[k].clone().map(|j| grads.get(params[j].id()).cloned()).collect();
                // The worker only stops early after a failed collective, reported below.
                let _ = tx.send((k, tensors));
                next.set(k + 1);
            }
        };
        let outcome = backward(grads, &mut |id, grads| {
            if let Some(&i) = index.get(&id) {
                mark(i, grads);
            }
        });
        during_backward = next.get();
        if outcome.is_ok() {
            for i in 0..params.len() {
                mark(i, grads);
            }
        }
        drop(tx);
        let results =
            worker.join().unwrap_or_else(|_| vec![Err(Error::Invalid("the all-reduce thread panicked".into()))]);
        (results, outcome)
    });
    outcome?;
    let mut sums: Vec<Option<Tensor>> = Vec::with_capacity(params.len());
    for r in results {
        sums.extend(r?);
    }
    // GPU communicators queue the sums on a stream of their own: wait for them here, where a
    // dead or hung rank can still be reported within the timeout, and before any of the
    // tensors they read is dropped.
    comm.synchronize()?;
    // Which parameters have a gradient on some rank: one collective for the whole call.
    let mut present: Vec<f32> = sums.iter().map(|sum| if sum.is_none() { 1.0 } else { 0.0 }).collect();
    comm.all_reduce_sum(&mut present)?;
    for ((p, sum), &anywhere) in params.iter().zip(sums).zip(&present) {
        // A gradient this rank lacked arrives as a new tensor: others' sum, or zeros
        // where no rank had one, which stays without.
        if let Some(t) = sum
            && anywhere > 0.0
        {
            grads.add(p.id(), t).map_err(Error::from)?;
        }
    }
    Ok(ReduceStats { buckets: buckets.len(), during_backward })
}

/// All-reduces one bucket, gradient by gradient, in place in their own storage (no
/// packing: [`Communicator::all_reduce_tensor`] sums host gradients where they sit, and
/// NCCL sums GPU ones on the device). A gradient this rank lacks takes part as zeros; the
/// result holds, per parameter, that sum (`None` where this rank had the gradient).
fn reduce_bucket<C: Communicator + ?Sized>(
    comm: &mut C,
    params: &[&Param],
    tensors: &[Option<Tensor>],
    reduce: Reduce,
) -> Result<Vec<Option<Tensor>>> {
    for (p, t) in params.iter().zip(tensors) {
        if let Some(t) = t
            && t.elem_count() != p.value().elem_count()
        {
            return Err(Error::Invalid(format!(
                "the gradient of {} has shape {}, the parameter {}",
                p.name(),
                t.shape(),
                p.value().shape()
            )));
        }
    }
    let mut out = Vec::with_capacity(params.len());
    for (p, t) in params.iter().zip(tensors) {
        match t {
            Some(t) => {
                comm.all_reduce_tensor(t, reduce)?;
                out.push(None);
            }
            None => {
                let t = Tensor::zeros(p.value().shape().clone(), DType::F32, p.value().device())?;
                comm.all_reduce_tensor(&t, reduce)?;
                out.push(Some(t));
            }
        }
    }
    Ok(out)
}

/// Consecutive ranges of `sizes` holding about `cap` values each (at least one each).
fn bucket_ranges(sizes: &[usize], cap: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut size = 0;
    for (i, &n) in sizes.iter().enumerate() {
        match out.last_mut() {
            Some(r) if size == 0 || size + n <= cap.max(1) => {
                r.end = i + 1;
                size += n;
            }
            _ => {
                out.push(i..i + 1);
                size = n;
            }
        }
    }
    out
}

/// Makes every rank's parameters equal to rank `root`'s (rank 0 at the start of a run:
/// identical initial weights whatever each rank loaded or initialised). `params` in the
/// same order on every rank; frozen ones are included (a reference model must match
/// too). Half-precision weights travel widened to f32, which is exact.
pub fn broadcast_params<C: Communicator + ?Sized>(comm: &mut C, params: &[&Param], root: usize) -> Result<()> {
    let values: Vec<&Tensor> = params.iter().map(|p| p.value()).collect();
    comm.broadcast_tensors(&values, root)?;
    comm.synchronize()
}

/// [`Communicator::broadcast_tensors`] through host memory: buckets of about
/// [`DEFAULT_BUCKET_ELEMS`] values widened to f32, one broadcast each.
pub(crate) fn broadcast_through_host<C: Communicator + ?Sized>(
    comm: &mut C,
    values: &[&Tensor],
    root: usize,
) -> Result<()> {
    let sizes: Vec<usize> = values.iter().map(|t| t.elem_count()).collect();
    for range in bucket_ranges(&sizes, DEFAULT_BUCKET_ELEMS) {
        let bucket = &values[range];
        let mut buf = Vec::with_capacity(bucket.iter().map(|t| t.elem_count()).sum());
        for t in bucket {
            buf.extend_from_slice(&t.to_dtype(DType::F32)?.to_vec::<f32>()?);
        }
        comm.broadcast(&mut buf, root)?;
        let mut at = 0;
        for t in bucket {
            let n = t.elem_count();
            let src = Tensor::from_vec(buf[at..at + n].to_vec(), t.shape().clone(), t.device())?;
            t.copy_from(&src.to_dtype(t.dtype())?)?;
            at += n;
        }
    }
    Ok(())
}

/// The part of `0..len` that `rank` of `world_size` takes: contiguous, the first
/// `len % world_size` ranks one item more. Split whole groups (GRPO: prompts, not
/// samples) so that a group never spans ranks.
pub fn shard_range(len: usize, rank: usize, world_size: usize) -> Range<usize> {
    let (q, r) = (len / world_size, len % world_size);
    let start = rank * q + rank.min(r);
    start..start + q + usize::from(rank < r)
}
