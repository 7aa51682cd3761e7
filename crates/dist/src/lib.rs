//! Data parallel for artist: the [`Communicator`] every rank trains through, the
//! rendezvous that finds the ranks, and the two collectives a data-parallel trainer needs
//! on top of it, [`all_reduce_gradients`] and [`broadcast_params`].
//!
//! * [`InProcess`]: N ranks as threads of one process (CPU training, tests).
//! * [`TcpComm`]: ranks as processes, found like `torchrun` finds them ([`DistEnv`]:
//!   `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, or Slurm's
//!   `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`). Rank 0 listens on
//!   `MASTER_ADDR:MASTER_PORT` and the others connect to it; the connection carries an
//!   opaque blob from rank 0 to everyone ([`TcpComm::share_blob`]) and CPU collectives
//!   through rank 0 (a star), except large all-reduces and broadcasts, which go around a
//!   ring of direct connections between the ranks ([`TcpComm::set_ring_threshold`]).
//! * [`Nccl`]: GPU ranks, one process per GPU, on NCCL: found through a [`TcpComm`]
//!   (rank 0's unique id travels over it), collectives queued on the tensor crate's stream,
//!   gradients summed where they are on the GPU ([`Communicator::all_reduce_tensor`]).
//!   Non-blocking, so a dead or hung rank is an error within the timeout, with the
//!   communicator aborted, and the failed rank named.
//!
//! Every collective of the host communicators sums in rank order (`((r0 + r1) + r2) + ...`),
//! so a run gives the same bits every time, and [`InProcess`] and [`TcpComm`] give the
//! same bits as each other; NCCL adds in an order of its own. Every call returns within its
//! timeout: a rank that dies or hangs makes the others fail with an [`Error`] that names it
//! ([`Error::rank`]); after a failure a group refuses further work ([`Error::Aborted`])
//! instead of hanging.

mod env;
mod error;
mod grads;
mod inprocess;
mod nccl;
mod ring;
mod tcp;

pub use env::{DistEnv, EnvSource};
pub use error::{Error, Result};
pub use grads::{
    DEFAULT_BUCKET_ELEMS, ReduceStats, all_reduce_gradients, all_reduce_gradients_overlapped, all_reduce_gradients_sum,
    broadcast_params, shard_range,
};
pub use inprocess::InProcess;
pub use nccl::Nccl;
pub use tcp::{DEFAULT_RING_MIN_ELEMS, TcpComm};

use std::time::Duration;

use artist_tensor::Tensor;

/// How long a collective waits for the other ranks unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Collective operations over a group of ranks, each holding one `Communicator`. Every
/// rank must make the same calls in the same order with buffers of the same length
/// (a rank that does not is reported as an [`Error::Mismatch`] where it can be seen).
pub trait Communicator: Send {
    /// This rank, `0..world_size()`.
    fn rank(&self) -> usize;

    fn world_size(&self) -> usize;

    /// `buf` becomes the elementwise sum over ranks, added in rank order.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;

    /// `buf` becomes the elementwise mean over ranks: the sum in rank order, divided by
    /// the world size (exact scaling when it is a power of two).
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce_sum(buf)?;
        let n = self.world_size() as f32;
        if n != 1.0 {
            buf.iter_mut().for_each(|x| *x /= n);
        }
        Ok(())
    }

    /// `buf` becomes `root`'s `buf` on every rank.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()>;

    /// Every rank's `buf` (all of one length), concatenated in rank order.
    fn all_gather(&mut self, buf: &[f32]) -> Result<Vec<f32>>;

    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<()>;

    /// `t` (F32, contiguous, on any device) becomes its sum or mean over ranks, in place,
    /// as [`Communicator::all_reduce_sum`] / [`Communicator::all_reduce_mean`] make a host
    /// buffer. The default goes through host memory; [`Nccl`] reduces GPU tensors where
    /// they are, queued on a stream of its own and finished by
    /// [`Communicator::synchronize`]: until then `t` must stay alive, and no other work
    /// may read or write it.
    fn all_reduce_tensor(&mut self, t: &Tensor, reduce: Reduce) -> Result<()> {
        all_reduce_through_host(self, t, reduce)
    }

    /// Every tensor of `ts` becomes `root`'s, whatever its dtype and device. The default
    /// packs them into host buffers of about [`DEFAULT_BUCKET_ELEMS`] values, widened to
    /// f32 (exact for bf16 and f16), one broadcast per buffer. As with
    /// [`Communicator::all_reduce_tensor`], GPU communicators finish the broadcasts only
    /// at [`Communicator::synchronize`], and the tensors must live and rest until then.
    fn broadcast_tensors(&mut self, ts: &[&Tensor], root: usize) -> Result<()> {
        grads::broadcast_through_host(self, ts, root)
    }

    /// Waits until every collective queued so far has finished, within the timeout. Host
    /// collectives finish before they return, so by default there is nothing to wait for;
    /// [`Nccl`] waits for the device's stream and aborts the group at the deadline.
    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }
}

/// How values combine over ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
}

/// [`Communicator::all_reduce_tensor`] through host memory: a contiguous host tensor is
/// summed where it sits, any other makes a round trip through a host buffer.
pub(crate) fn all_reduce_through_host<C: Communicator + ?Sized>(
    comm: &mut C,
    t: &Tensor,
    reduce: Reduce,
) -> Result<()> {
    let all = |comm: &mut C, buf: &mut [f32]| match reduce {
        Reduce::Sum => comm.all_reduce_sum(buf),
        Reduce::Mean => comm.all_reduce_mean(buf),
    };
    if t.device().is_cpu() && t.is_contiguous() {
        return t.update_f32(|v| all(comm, v))?;
    }
    let mut buf = t.to_vec::<f32>()?;
    all(comm, &mut buf)?;
    t.copy_from(&Tensor::from_vec(buf, t.shape().clone(), t.device())?)?;
    Ok(())
}

/// Checks a root rank against the group size.
pub(crate) fn check_root(root: usize, world_size: usize) -> Result<()> {
    if root >= world_size {
        return Err(Error::Invalid(format!("broadcast root {root} is not a rank of a group of {world_size}")));
    }
    Ok(())
}

/// A collective as both communicators run it: every rank contributes a buffer and gets
/// back the combination of all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Sum,
    Broadcast(usize),
    Gather,
    Barrier,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Sum => write!(f, "all_reduce"),
            Op::Broadcast(root) => write!(f, "broadcast from rank {root}"),
            Op::Gather => write!(f, "all_gather"),
            Op::Barrier => write!(f, "barrier"),
        }
    }
}

/// What every rank receives from the contributions `parts[rank]`: a sum in rank order,
/// the root's buffer, or the concatenation. Lengths must agree (rank 0's is the
/// reference; the first rank that differs is blamed).
pub(crate) fn combine(op: Op, seq: u64, parts: &[&[f32]]) -> Result<Vec<f32>> {
    let len = parts[0].len();
    if let Some(r) = parts.iter().position(|p| p.len() != len) {
        return Err(Error::Mismatch {
            rank: r,
            op: format!("{op} (collective #{seq})"),
            detail: format!("its buffer holds {} values where rank 0's holds {len}", parts[r].len()),
        });
    }
    Ok(match op {
        Op::Sum => {
            let mut out = parts[0].to_vec();
            for p in &parts[1..] {
                out.iter_mut().zip(p.iter()).for_each(|(o, x)| *o += *x);
            }
            out
        }
        Op::Broadcast(root) => parts[root].to_vec(),
        Op::Gather => parts.concat(),
        Op::Barrier => Vec::new(),
    })
}
