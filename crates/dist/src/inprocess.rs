//! Ranks as threads of one process, meeting at a shared rendezvous.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{Communicator, DEFAULT_TIMEOUT, Error, Op, Result, check_root, combine};

/// One rank of a group of threads ([`InProcess::group`]); move each into its own thread.
/// Dropping it (the thread ends or panics) tells the others: a collective waiting for it
/// fails at once with [`Error::PeerGone`] instead of waiting out the timeout.
pub struct InProcess {
    rank: usize,
    shared: Arc<Shared>,
    /// The number of collectives this rank has started: rounds are matched by it.
    seq: u64,
}

struct Shared {
    n: usize,
    timeout: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

struct State {
    rounds: BTreeMap<u64, Round>,
    gone: Vec<bool>,
    /// The failure that ended the group; every later call returns it.
    aborted: Option<Error>,
}

struct Round {
    op: Op,
    parts: Vec<Option<Vec<f32>>>,
    arrived: usize,
    result: Option<Arc<Result<Vec<f32>>>>,
    taken: usize,
}

impl InProcess {
    /// `n` ranks whose collectives wait at most [`DEFAULT_TIMEOUT`] for each other.
    pub fn group(n: usize) -> Vec<InProcess> {
        InProcess::group_with_timeout(n, DEFAULT_TIMEOUT)
    }

    /// `n` ranks (`n >= 1`) whose collectives fail after waiting `timeout` for a rank.
    pub fn group_with_timeout(n: usize, timeout: Duration) -> Vec<InProcess> {
        assert!(n >= 1, "a group needs at least one rank");
        let shared = Arc::new(Shared {
            n,
            timeout,
            state: Mutex::new(State { rounds: BTreeMap::new(), gone: vec![false; n], aborted: None }),
            cv: Condvar::new(),
        });
        (0..n).map(|rank| InProcess { rank, shared: shared.clone(), seq: 0 }).collect()
    }

    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn collective(&mut self, op: Op, data: Vec<f32>) -> Result<Vec<f32>> {
        let (n, rank, seq) = (self.shared.n, self.rank, self.seq);
        self.seq += 1;
        let deadline = Instant::now() + self.shared.timeout;
        let what = || format!("{op} (collective #{seq})");
        let mut st = self.lock();
        if let Some(e) = &st.aborted {
            return Err(e.clone());
        }
        let round = st.rounds.entry(seq).or_insert_with(|| Round {
            op,
            parts: vec![None; n],
            arrived: 0,
            result: None,
            taken: 0,
        });
        if round.op != op {
            let e = Error::Mismatch {
                rank,
                op: what(),
                detail: format!("it called {op} where the ranks before it called {}", round.op),
            };
            return Err(self.abort(st, e));
        }
        round.parts[rank] = Some(data);
        round.arrived += 1;
        if round.arrived == n {
            let parts: Vec<&[f32]> = round.parts.iter().map(|p| p.as_deref().expect("all arrived")).collect();
            let result = combine(op, seq, &parts);
            round.parts.clear();
            round.result = Some(Arc::new(result));
            self.shared.cv.notify_all();
        }
        loop {
            let round = st.rounds.get_mut(&seq).expect("a round lives until every rank has taken its result");
            if let Some(result) = round.result.clone() {
                round.taken += 1;
                if round.taken == n {
                    st.rounds.remove(&seq);
                }
                return match &*result {
                    Ok(v) => Ok(v.clone()),
                    Err(e) => Err(self.abort(st, e.clone())),
                };
            }
            let missing: Vec<usize> = (0..n).filter(|&r| round.parts[r].is_none()).collect();
            if let Some(e) = &st.aborted {
                return Err(e.clone());
            }
            if let Some(&r) = missing.iter().find(|&&r| st.gone[r]) {
                let detail = "its communicator was dropped (the thread ended or panicked)".to_string();
                return Err(self.abort(st, Error::PeerGone { rank: r, op: what(), detail }));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.abort(st, Error::Timeout { ranks: missing, op: what(), timeout: self.shared.timeout }));
            }
            st = self.shared.cv.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Ends the group with `e` (the first failure wins) and wakes every waiting rank.
    fn abort(&self, mut st: MutexGuard<'_, State>, e: Error) -> Error {
        let e = st.aborted.get_or_insert(e).clone();
        self.shared.cv.notify_all();
        e
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let mut st = self.lock();
        st.gone[self.rank] = true;
        self.shared.cv.notify_all();
    }
}

impl Communicator for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.n
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        let out = self.collective(Op::Sum, buf.to_vec())?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.shared.n)?;
        let out = self.collective(Op::Broadcast(root), buf.to_vec())?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn all_gather(&mut self, buf: &[f32]) -> Result<Vec<f32>> {
        self.collective(Op::Gather, buf.to_vec())
    }

    fn barrier(&mut self) -> Result<()> {
        self.collective(Op::Barrier, Vec::new()).map(drop)
    }
}
