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
    /// All-reduce only: each rank's buffer (address, length), summed in place.
    bufs: Vec<Option<(usize, usize)>>,
    /// All-reduce only: every rank has arrived; from here on no rank leaves before all
    /// have finished their share, since the others read and write its buffer.
    summing: bool,
    /// All-reduce only: ranks that have finished their share.
    done: usize,
}

impl Round {
    fn new(op: Op, n: usize) -> Round {
        Round {
            op,
            parts: vec![None; n],
            arrived: 0,
            result: None,
            taken: 0,
            bufs: vec![None; n],
            summing: false,
            done: 0,
        }
    }
}

/// Values a rank sums at a time: a tile stays in L1 while every rank's part is added.
const TILE: usize = 2048;

/// Adds every rank's `bufs[k][range]` in rank order and writes the sum back into each.
///
/// # Safety
/// Every `(address, len)` is a live `&mut [f32]` of length `len >= range.end` whose owner
/// is blocked until this call returns, and no other thread touches `range` of any of
/// them meanwhile (each rank sums its own, disjoint range).
unsafe fn sum_range(bufs: &[(usize, usize)], range: std::ops::Range<usize>) {
    let mut tile = [0f32; TILE];
    let mut at = range.start;
    while at < range.end {
        let m = TILE.min(range.end - at);
        let acc = &mut tile[..m];
        for (k, &(addr, _)) in bufs.iter().enumerate() {
            // SAFETY: in bounds (at + m <= range.end <= len) and unaliased, as the caller
            // promises.
            let part = unsafe { std::slice::from_raw_parts((addr as *const f32).add(at), m) };
            if k == 0 {
                acc.copy_from_slice(part);
            } else {
                acc.iter_mut().zip(part).for_each(|(a, x)| *a += *x);
            }
        }
        for &(addr, _) in bufs {
            // SAFETY: as above; this rank alone writes this range.
            unsafe { std::slice::from_raw_parts_mut((addr as *mut f32).add(at), m) }.copy_from_slice(acc);
        }
        at += m;
    }
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

    /// Locks the group and opens (or finds) round `seq` for `op`: fails with the group's
    /// earlier failure, or ends the group when the ranks before called another op.
    fn join(&self, op: Op, seq: u64) -> Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        if let Some(e) = &st.aborted {
            return Err(e.clone());
        }
        let n = self.shared.n;
        let first = st.rounds.entry(seq).or_insert_with(|| Round::new(op, n)).op;
        if first != op {
            let e = Error::Mismatch {
                rank: self.rank,
                op: format!("{op} (collective #{seq})"),
                detail: format!("it called {op} where the ranks before it called {first}"),
            };
            return Err(self.abort(st, e));
        }
        Ok(st)
    }

    fn collective(&mut self, op: Op, data: Vec<f32>) -> Result<Vec<f32>> {
        let (n, rank, seq) = (self.shared.n, self.rank, self.seq);
        self.seq += 1;
        let deadline = Instant::now() + self.shared.timeout;
        let what = || format!("{op} (collective #{seq})");
        let mut st = self.join(op, seq)?;
        let round = st.rounds.get_mut(&seq).expect("join opened the round");
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

    /// The all-reduce and the broadcast, without copies: every rank lends its buffer; once
    /// all have arrived, for a sum rank `r` adds the `r`-th of `n` slices of all buffers
    /// (in rank order, so the bits are those of [`combine`]) and writes the sum into every
    /// buffer, the ranks working in parallel (a reduce-scatter and all-gather in shared
    /// memory); for a broadcast every rank but the root copies the root's buffer.
    fn in_place(&mut self, op: Op, buf: &mut [f32]) -> Result<()> {
        let (n, rank, seq) = (self.shared.n, self.rank, self.seq);
        self.seq += 1;
        let deadline = Instant::now() + self.shared.timeout;
        let what = || format!("{op} (collective #{seq})");
        let mut st = self.join(op, seq)?;
        let round = st.rounds.get_mut(&seq).expect("join opened the round");
        round.bufs[rank] = Some((buf.as_mut_ptr() as usize, buf.len()));
        round.arrived += 1;
        if round.arrived == n {
            // Lengths must agree (rank 0's is the reference; the first rank that differs is
            // blamed), checked before anyone touches a buffer.
            let lens: Vec<usize> = round.bufs.iter().map(|b| b.expect("all arrived").1).collect();
            if let Some(r) = lens.iter().position(|&l| l != lens[0]) {
                round.bufs[rank] = None;
                let e = Error::Mismatch {
                    rank: r,
                    op: what(),
                    detail: format!("its buffer holds {} values where rank 0's holds {}", lens[r], lens[0]),
                };
                return Err(self.abort(st, e));
            }
            round.summing = true;
            self.shared.cv.notify_all();
        }
        // Until every rank has arrived, a rank may still give up (and take its buffer
        // back): nobody has touched the buffers yet.
        loop {
            let state = &mut *st;
            let round = state.rounds.get_mut(&seq).expect("a round lives until every rank has left it");
            if round.summing {
                break;
            }
            let missing: Vec<usize> = (0..n).filter(|&r| round.bufs[r].is_none()).collect();
            let fail = if let Some(e) = &state.aborted {
                Some(e.clone())
            } else if let Some(&r) = missing.iter().find(|&&r| state.gone[r]) {
                let detail = "its communicator was dropped (the thread ended or panicked)".to_string();
                Some(Error::PeerGone { rank: r, op: what(), detail })
            } else if Instant::now() >= deadline {
                Some(Error::Timeout { ranks: missing, op: what(), timeout: self.shared.timeout })
            } else {
                None
            };
            if let Some(e) = fail {
                // This rank takes its buffer back out of the round before it returns.
                round.bufs[rank] = None;
                return Err(self.abort(st, e));
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            st = self.shared.cv.wait_timeout(st, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
        let bufs: Vec<(usize, usize)> = st.rounds[&seq].bufs.iter().map(|b| b.expect("all arrived")).collect();
        drop(st);
        match op {
            Op::Broadcast(root) => {
                if rank != root {
                    let (ptr, len) = bufs[root];
                    // SAFETY: the root's buffer belongs to the root, blocked in this call until
                    // `done == n` below (that wait has no way out), which only reads it; this
                    // rank writes its own buffer, which no other rank touches in a broadcast.
                    let src = unsafe { std::slice::from_raw_parts(ptr as *const f32, len) };
                    buf.copy_from_slice(src);
                }
            }
            _ => {
                // Slices start on 16-value boundaries so that no two ranks share a cache line.
                let len = buf.len();
                let per = len.div_ceil(n).div_ceil(16) * 16;
                let range = (rank * per).min(len)..((rank + 1) * per).min(len);
                // SAFETY: every buffer belongs to a rank blocked in this call until `done == n`
                // below (that wait has no way out), the ranges of the ranks are disjoint, and
                // this rank's own `buf` is not touched through its reference meanwhile.
                unsafe { sum_range(&bufs, range) };
            }
        }
        let mut st = self.lock();
        let round = st.rounds.get_mut(&seq).expect("a round lives until every rank has left it");
        round.done += 1;
        if round.done == n {
            self.shared.cv.notify_all();
        }
        // The others are adding into this rank's buffer: wait for them, without a
        // timeout (what they do now is a bounded loop over memory; nothing can stop it).
        loop {
            let round = st.rounds.get_mut(&seq).expect("a round lives until every rank has left it");
            if round.done == n {
                round.taken += 1;
                if round.taken == n {
                    st.rounds.remove(&seq);
                }
                return Ok(());
            }
            st = self.shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
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
        self.in_place(Op::Sum, buf)
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.shared.n)?;
        self.in_place(Op::Broadcast(root), buf)
    }

    fn all_gather(&mut self, buf: &[f32]) -> Result<Vec<f32>> {
        self.collective(Op::Gather, buf.to_vec())
    }

    fn barrier(&mut self) -> Result<()> {
        self.collective(Op::Barrier, Vec::new()).map(drop)
    }
}
