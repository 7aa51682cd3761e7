use std::time::Duration;

/// What went wrong in a collective or the rendezvous. Failures caused by another rank
/// name it ([`Error::rank`]), so a hung or dead rank can be found from any survivor's log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A launcher variable is missing or holds a bad value.
    #[error("{var}: {msg}")]
    Env { var: &'static str, msg: String },

    /// These ranks did not join the collective within the timeout.
    #[error("{} did not join {op} within {timeout:?}", ranks_text(ranks))]
    Timeout { ranks: Vec<usize>, op: String, timeout: Duration },

    /// This rank left the group (its communicator was dropped, its process died or closed
    /// its connection) while others still needed it.
    #[error("rank {rank} left the group during {op}: {detail}")]
    PeerGone { rank: usize, op: String, detail: String },

    /// A rank called a different collective, or passed a buffer of another length, than
    /// the others at the same point: the ranks no longer run the same program.
    #[error("rank {rank} does not match the group at {op}: {detail}")]
    Mismatch { rank: usize, op: String, detail: String },

    /// Rank `reporter` ended the group because of the failure described in `msg`, which
    /// it blames on `rank`.
    #[error("rank {reporter} ended the group: {msg}")]
    Remote { reporter: usize, rank: Option<usize>, msg: String },

    /// An earlier collective of this group failed; the group cannot be used any more.
    #[error("the group was aborted: {0}")]
    Aborted(String),

    /// A bad argument (root out of range, parameter without a gradient shape, ...).
    #[error("{0}")]
    Invalid(String),

    /// A tensor operation failed (reading or writing gradients and parameters).
    #[error("tensor: {0}")]
    Tensor(String),

    /// NCCL failed or timed out in `op`; `rank` is the rank that did not come back to the
    /// rendezvous connection afterwards, when one did not (NCCL itself cannot tell).
    #[error("{op}: {msg}")]
    Nccl { op: String, msg: String, rank: Option<usize> },

    /// A socket operation failed for a reason not attributable to a peer.
    #[error("{context}: {msg}")]
    Io { context: String, msg: String },
}

impl Error {
    /// The rank this failure is blamed on, where it is another rank's fault.
    pub fn rank(&self) -> Option<usize> {
        match self {
            Error::Timeout { ranks, .. } => ranks.first().copied(),
            Error::PeerGone { rank, .. } | Error::Mismatch { rank, .. } => Some(*rank),
            Error::Remote { rank, .. } | Error::Nccl { rank, .. } => *rank,
            _ => None,
        }
    }
}

fn ranks_text(ranks: &[usize]) -> String {
    match ranks {
        [r] => format!("rank {r}"),
        _ => format!("ranks {}", ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

impl From<artist_tensor::Error> for Error {
    fn from(e: artist_tensor::Error) -> Self {
        Error::Tensor(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
