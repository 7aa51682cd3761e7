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
//!   through rank 0 (a star: fine for rendezvous, barriers and small CPU runs, not for
//!   large gradients).
//!
//! Every collective sums in rank order (`((r0 + r1) + r2) + ...`), so a run gives the
//! same bits every time, and [`InProcess`] and [`TcpComm`] give the same bits as each
//! other. Every call returns within its timeout: a rank that dies or hangs makes the
//! others fail with an [`Error`] that names it ([`Error::rank`]); after a failure a
//! group refuses further work ([`Error::Aborted`]) instead of hanging.
//!
//! # NCCL (GPU ranks)
//!
//! The GPU communicator is not here yet. It will implement [`Communicator`] over
//! `cudarc`'s `nccl` module (the `nccl` feature of the workspace's `cudarc`, loaded at
//! run time like its CUDA libraries, so a build without NCCL still works and a missing
//! `libnccl.so` becomes a clean error): rank 0 calls `ncclGetUniqueId`, the 128-byte id
//! travels to the other ranks through [`TcpComm::share_blob`], every rank calls
//! `ncclCommInitRank(world_size, id, rank)` on the device `LOCAL_RANK`, and the
//! collectives map to `ncclAllReduce` (sum; mean as sum then a scale, or `ncclAvg`),
//! `ncclBroadcast`, `ncclAllGather`, with a barrier as a one-element all-reduce. Timeouts
//! need a non-blocking communicator (`ncclCommInitRankConfig` with `blocking = 0`),
//! polling `ncclCommGetAsyncError` until a deadline and then `ncclCommAbort` (not
//! `ncclCommDestroy`, which waits for the hung peer); the TCP connection stays open
//! beside it so a survivor can learn, and report, which rank went away.

mod env;
mod error;
mod grads;
mod inprocess;
mod tcp;

pub use env::{DistEnv, EnvSource};
pub use error::{Error, Result};
pub use grads::{
    DEFAULT_BUCKET_ELEMS, Reduce, ReduceStats, all_reduce_gradients, all_reduce_gradients_overlapped,
    all_reduce_gradients_sum, broadcast_params, shard_range,
};
pub use inprocess::InProcess;
pub use tcp::TcpComm;

use std::time::Duration;

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
