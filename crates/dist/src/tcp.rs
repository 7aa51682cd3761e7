//! Ranks as processes, connected over TCP.
//!
//! Rank 0 is the hub of a star: every other rank connects to it at the rendezvous. Every
//! message on the star is a frame: a 24-byte header (kind `u8`, three zero bytes, `arg:
//! u32`, `seq: u64`, payload length `u64`, little-endian) and the payload. A collective on
//! the star is one frame from each rank to rank 0 and one reply from rank 0 to each rank;
//! rank 0 reads the ranks in order and combines them in rank order. When rank 0 sees a
//! rank fail (closed connection, silence past the timeout, a different collective) it
//! sends an abort frame naming that rank to all others before returning the error itself.
//!
//! Large all-reduces and broadcasts go around a ring instead (src/ring.rs), set up at the
//! first one: it adds in the same order, and no rank moves more than twice the buffer, where
//! the star's rank 0 moves it once per other rank. The star stays the control path: each
//! rank announces its ring collective to rank 0 there (so that rank 0 can name a rank that
//! never came, or came to another collective), reports what broke its ring links there,
//! and hears rank 0's verdict there.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::ring::{Ring, RingError};
use crate::{Communicator, DistEnv, Error, Op, Result, check_root, combine};

const MAGIC: &[u8] = b"artist-dist/1";
const HEADER: usize = 24;
/// No frame is this large: a header that says so is not ours.
const MAX_PAYLOAD: u64 = 1 << 40;

const HELLO: u8 = 1;
const SUM: u8 = 2;
const BROADCAST: u8 = 3;
const GATHER: u8 = 4;
const BARRIER: u8 = 5;
const BLOB: u8 = 6;
/// Every rank's ring address, gathered at the ring's setup.
const RING_ADDRS: u8 = 7;
/// "I am in ring all-reduce `seq` with a buffer of `payload` values": to rank 0.
const RING_SUM: u8 = 8;
/// "My ring link to rank `arg` failed": to rank 0, which then ends the group.
const FAULT: u8 = 9;
/// "I am in ring broadcast `seq` from rank `arg` with a buffer of `payload` values": to rank 0.
const RING_BROADCAST: u8 = 10;
const ABORT: u8 = 0xff;

/// All-reduces of this many values or more go around the ring, unless told otherwise
/// ([`TcpComm::set_ring_threshold`]): 256 KiB, where the ring's extra hops stop mattering.
pub const DEFAULT_RING_MIN_ELEMS: usize = 1 << 16;

struct Frame {
    kind: u8,
    arg: u32,
    seq: u64,
    payload: Vec<u8>,
}

enum Links {
    Alone,
    /// Rank 0: the connection to rank `r` at `r - 1`.
    Root(Vec<TcpStream>),
    Peer(TcpStream),
}

/// One process's communicator over TCP, found by [`TcpComm::connect`].
pub struct TcpComm {
    rank: usize,
    world_size: usize,
    timeout: Duration,
    seq: u64,
    links: Links,
    aborted: Option<Error>,
    /// The ring for large all-reduces, once the first has set it up.
    ring: Option<Ring>,
    ring_min: Option<usize>,
    ring_chunking: Option<(usize, usize)>,
    /// Rank 0: a frame of a later collective that rank `i + 1` sent while rank 0 was still
    /// finishing a ring all-reduce, read early while looking for failure reports.
    early: Vec<Option<Frame>>,
}

impl TcpComm {
    /// Joins the group `env` describes: rank 0 listens on `MASTER_ADDR:MASTER_PORT` and
    /// waits for every other rank, which connect (retrying until rank 0 listens). Fails
    /// after `timeout` naming the ranks that never came. Each later collective waits at
    /// most `timeout` on rank 0 for the other ranks; the others wait for rank 0's reply
    /// up to twice that (rank 0 itself may be waiting its timeout for a slow rank) and
    /// then blame rank 0.
    pub fn connect(env: &DistEnv, timeout: Duration) -> Result<TcpComm> {
        let (rank, n) = (env.rank, env.world_size);
        if n == 0 || rank >= n {
            return Err(Error::Invalid(format!("rank {rank} of a group of {n}")));
        }
        let mut comm = TcpComm {
            rank,
            world_size: n,
            timeout,
            seq: 0,
            links: Links::Alone,
            aborted: None,
            ring: None,
            ring_min: Some(DEFAULT_RING_MIN_ELEMS),
            ring_chunking: None,
            early: (1..n).map(|_| None).collect(),
        };
        if n == 1 {
            return Ok(comm);
        }
        let addr = format!("{}:{}", env.master_addr, env.master_port);
        let deadline = Instant::now() + timeout;
        if rank == 0 {
            let listener = TcpListener::bind(&addr).map_err(|e| io_err(format!("rank 0 listening on {addr}"), e))?;
            let peers = accept_all(&listener, n, deadline, timeout)?;
            let mut links = Vec::with_capacity(n - 1);
            for (r, s) in peers.into_iter().enumerate() {
                links.push(s.expect("accept_all returns every rank"));
                let hello = Frame { kind: HELLO, arg: 0, seq: n as u64, payload: MAGIC.to_vec() };
                if let Err(e) = write_frame(&mut links[r], &hello, deadline) {
                    comm.links = Links::Root(links);
                    return Err(comm.fail(link_err(e, r + 1, "rendezvous", timeout)));
                }
            }
            comm.links = Links::Root(links);
        } else {
            let mut stream = connect_retrying(&addr, deadline, timeout)?;
            let hello = Frame { kind: HELLO, arg: rank as u32, seq: n as u64, payload: MAGIC.to_vec() };
            write_frame(&mut stream, &hello, deadline).map_err(|e| link_err(e, 0, "rendezvous", timeout))?;
            // Rank 0 answers once every rank has come: up to its own timeout from its start.
            match read_frame(&mut stream, deadline + timeout) {
                Ok(f) if f.kind == HELLO && f.payload == MAGIC => {}
                Ok(f) if f.kind == ABORT => return Err(remote(f)),
                Ok(_) => return Err(Error::Mismatch { rank: 0, op: "rendezvous".into(), detail: "bad reply".into() }),
                Err(e) => return Err(link_err(e, 0, "rendezvous", timeout)),
            }
            comm.links = Links::Peer(stream);
        }
        Ok(comm)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// All-reduces and broadcasts of at least `min_elems` values go around a ring of direct
    /// connections between the ranks (set up at the first of them), smaller ones and every
    /// other collective through rank 0; `None` keeps everything on rank 0's star. Every
    /// rank must set the same. Default: [`DEFAULT_RING_MIN_ELEMS`]. The ring needs each
    /// rank to accept one connection, on a port the system picks, at the address by which
    /// it reaches rank 0.
    pub fn set_ring_threshold(&mut self, min_elems: Option<usize>) {
        self.ring_min = min_elems.map(|m| m.max(1));
    }

    /// Test hook: the ring's chunk size in values, and how many chunks rank 0 keeps on
    /// their way at once (every rank must set the same).
    #[doc(hidden)]
    pub fn set_ring_chunking(&mut self, elems: usize, window: usize) {
        self.ring_chunking = Some((elems, window));
        if let Some(r) = &mut self.ring {
            r.set_chunking(elems, window);
        }
    }

    /// Whether a collective of `len` values goes around the ring.
    fn uses_ring(&self, len: usize) -> bool {
        self.world_size > 1 && self.ring_min.is_some_and(|m| len >= m)
    }

    /// Whether the ring has been set up.
    pub fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Connects each rank to the next (modulo the group size), a collective: every rank
    /// listens where it reaches rank 0, the addresses go round through rank 0, then each
    /// connects to the next and accepts the one before.
    fn setup_ring(&mut self) -> Result<()> {
        let (rank, n, timeout) = (self.rank, self.world_size, self.timeout);
        let local = match &self.links {
            Links::Root(peers) => peers[0].local_addr(),
            Links::Peer(s) => s.local_addr(),
            Links::Alone => return Ok(()),
        };
        let listener = local
            .and_then(|a| TcpListener::bind(SocketAddr::new(a.ip(), 0)))
            .map_err(|e| self.fail(io_err(format!("rank {rank} listening for the ring"), e)))?;
        let mine =
            listener.local_addr().map_err(|e| self.fail(io_err(format!("rank {rank} listening for the ring"), e)))?;
        let table = self.exchange(RING_ADDRS, 0, mine.to_string().into_bytes())?;
        let addrs: Vec<&[u8]> = table.split(|&b| b == b'\n').collect();
        let next_rank = (rank + 1) % n;
        let prev_rank = (rank + n - 1) % n;
        let next_addr: Option<SocketAddr> =
            addrs.get(next_rank).and_then(|a| std::str::from_utf8(a).ok()).and_then(|a| a.parse().ok());
        let Some(next_addr) = next_addr.filter(|_| addrs.len() == n) else {
            let e = Error::Mismatch { rank: 0, op: "ring setup".into(), detail: "a malformed address table".into() };
            return Err(self.fail(e));
        };
        let deadline = Instant::now() + timeout;
        let op = "ring setup";
        let ring = (|| {
            let mut next =
                TcpStream::connect_timeout(&next_addr, timeout).map_err(|e| link_err(e, next_rank, op, timeout))?;
            next.set_nodelay(true).map_err(|e| link_err(e, next_rank, op, timeout))?;
            let hello = Frame { kind: HELLO, arg: rank as u32, seq: n as u64, payload: MAGIC.to_vec() };
            write_frame(&mut next, &hello, deadline).map_err(|e| link_err(e, next_rank, op, timeout))?;
            let prev = accept_from(&listener, prev_rank, n, deadline, timeout)?;
            // The ranks wait for rank 0 up to twice the timeout; their writes may too.
            let write_timeout = if rank == 0 { timeout } else { 2 * timeout };
            let mut ring = Ring::new(rank, n, prev, next, write_timeout).map_err(|e| io_err("the ring".into(), e))?;
            if let Some((elems, window)) = self.ring_chunking {
                ring.set_chunking(elems, window);
            }
            Ok(ring)
        })();
        match ring {
            Ok(r) => {
                self.ring = Some(r);
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// `op` (a sum or a broadcast) of `buf` around the ring; rank 0's star watches.
    fn ring_collective(&mut self, op: Op, buf: &mut [f32]) -> Result<()> {
        if let Some(e) = &self.aborted {
            return Err(e.clone());
        }
        if self.ring.is_none() {
            self.setup_ring()?;
        }
        let seq = self.seq;
        self.seq += 1;
        let what = format!("{op} (collective #{seq})");
        let timeout = self.timeout;
        let len = buf.len() as u64;
        let (kind, arg) = match op {
            Op::Broadcast(root) => (RING_BROADCAST, root as u32),
            _ => (RING_SUM, 0),
        };
        let ring = self.ring.as_mut().expect("set up above");
        let run = |ring: &mut Ring, buf: &mut [f32], wait, poll: &mut dyn FnMut() -> Result<()>| match op {
            Op::Broadcast(root) => ring.broadcast(buf, root, seq, wait, poll),
            _ => ring.all_reduce(buf, seq, wait, poll),
        };
        let result = match &mut self.links {
            Links::Alone => Ok(()),
            Links::Peer(star) => {
                let hello = Frame { kind, arg, seq, payload: len.to_le_bytes().to_vec() };
                match write_frame(star, &hello, Instant::now() + timeout) {
                    Err(e) => Err(link_err(e, 0, &what, timeout)),
                    Ok(()) => {
                        let mut poll = || watch_root(star, &what, timeout);
                        match run(ring, buf, 2 * timeout, &mut poll) {
                            Ok(()) => Ok(()),
                            Err(RingError::Poll(e)) => Err(e),
                            Err(re) => {
                                // Tell rank 0 what broke, and take its verdict if one comes.
                                let e = ring_err(re, &what, timeout);
                                let report = Frame {
                                    kind: FAULT,
                                    arg: e.rank().map_or(u32::MAX, |r| r as u32),
                                    seq,
                                    payload: e.to_string().into_bytes(),
                                };
                                // Rank 0 may have ended the group already, its abort waiting here.
                                let _ = write_frame(star, &report, Instant::now() + timeout);
                                match read_frame(star, Instant::now() + timeout) {
                                    Ok(f) if f.kind == ABORT => Err(remote(f)),
                                    _ => Err(e),
                                }
                            }
                        }
                    }
                }
            }
            Links::Root(peers) => {
                let mut watch =
                    RootWatch { kind, arg, seq, len, arrived: vec![false; peers.len()], what: &what, timeout };
                let early = &mut self.early;
                match watch.adopt(early) {
                    Err(e) => Err(e),
                    Ok(()) => {
                        let mut poll = || watch.poll(peers, early);
                        match run(ring, buf, timeout, &mut poll) {
                            Ok(()) => watch.finish(peers, early),
                            Err(RingError::Poll(e)) => Err(e),
                            Err(re) => Err(watch.verdict(peers, early, ring_err(re, &what, timeout))),
                        }
                    }
                }
            }
        };
        result.map_err(|e| self.fail(e))
    }

    /// Rank 0's `blob` on every rank (the others' `blob` is ignored): how an NCCL unique
    /// id, or any setting rank 0 decides, reaches the group.
    pub fn share_blob(&mut self, blob: &[u8]) -> Result<Vec<u8>> {
        let mine = if self.rank == 0 { blob.to_vec() } else { Vec::new() };
        self.exchange(BLOB, 0, mine)
    }

    fn f32_collective(&mut self, op: Op, buf: &[f32]) -> Result<Vec<f32>> {
        let (kind, arg) = match op {
            Op::Sum => (SUM, 0),
            Op::Broadcast(root) => (BROADCAST, root as u32),
            Op::Gather => (GATHER, 0),
            Op::Barrier => (BARRIER, 0),
        };
        let out = self.exchange(kind, arg, to_bytes(buf))?;
        Ok(from_bytes(&out))
    }

    fn exchange(&mut self, kind: u8, arg: u32, mine: Vec<u8>) -> Result<Vec<u8>> {
        if let Some(e) = &self.aborted {
            return Err(e.clone());
        }
        let seq = self.seq;
        self.seq += 1;
        let what = format!("{} (collective #{seq})", kind_name(kind, arg));
        let timeout = self.timeout;
        let result = match &mut self.links {
            Links::Alone => return combine_bytes(kind, arg, seq, vec![mine]),
            Links::Root(peers) => {
                let deadline = Instant::now() + timeout;
                let mut parts = vec![mine];
                let mut failure = None;
                for (i, s) in peers.iter_mut().enumerate() {
                    let frame = match self.early[i].take() {
                        Some(f) => Ok(f),
                        None => read_frame(s, deadline),
                    };
                    match frame {
                        Ok(f) if f.kind == kind && f.arg == arg && f.seq == seq => parts.push(f.payload),
                        Ok(f) if f.kind == FAULT => failure = Some(fault(f, i + 1)),
                        Ok(f) => {
                            let detail = format!("it called {} (collective #{})", kind_name(f.kind, f.arg), f.seq);
                            failure = Some(Error::Mismatch { rank: i + 1, op: what.clone(), detail });
                        }
                        Err(e) => failure = Some(link_err(e, i + 1, &what, timeout)),
                    }
                    if failure.is_some() {
                        break;
                    }
                }
                let out = match failure {
                    Some(e) => Err(e),
                    None => combine_bytes(kind, arg, seq, parts),
                };
                match out {
                    Ok(out) => {
                        let reply = Frame { kind, arg, seq, payload: out };
                        let deadline = Instant::now() + timeout;
                        let mut failure = None;
                        for (i, s) in peers.iter_mut().enumerate() {
                            if let Err(e) = write_frame(s, &reply, deadline) {
                                failure = Some(link_err(e, i + 1, &what, timeout));
                                break;
                            }
                        }
                        match failure {
                            Some(e) => Err(e),
                            None => Ok(reply.payload),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Links::Peer(s) => {
                let deadline = Instant::now() + 2 * timeout;
                let frame = Frame { kind, arg, seq, payload: mine };
                match write_frame(s, &frame, deadline).and_then(|()| read_frame(s, deadline)) {
                    Ok(f) if f.kind == ABORT => Err(remote(f)),
                    Ok(f) if f.kind == kind && f.seq == seq => Ok(f.payload),
                    Ok(_) => {
                        Err(Error::Mismatch { rank: 0, op: what, detail: "its reply is another collective's".into() })
                    }
                    Err(e) => Err(link_err(e, 0, &what, timeout)),
                }
            }
        };
        result.map_err(|e| self.fail(e))
    }

    /// Ends the group with `e`: rank 0 tells every other rank (best effort, briefly).
    fn fail(&mut self, e: Error) -> Error {
        if let Some(ring) = &mut self.ring {
            ring.shut_down();
        }
        if let Links::Root(peers) = &mut self.links {
            let frame = Frame {
                kind: ABORT,
                arg: e.rank().map_or(u32::MAX, |r| r as u32),
                seq: self.seq,
                payload: e.to_string().into_bytes(),
            };
            let deadline = Instant::now() + Duration::from_secs(1).min(self.timeout);
            for s in peers.iter_mut() {
                let _ = write_frame(s, &frame, deadline);
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        self.aborted.get_or_insert(e).clone()
    }
}

impl Communicator for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        if self.uses_ring(buf.len()) {
            return self.ring_collective(Op::Sum, buf);
        }
        let out = self.f32_collective(Op::Sum, buf)?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.world_size)?;
        if self.uses_ring(buf.len()) {
            return self.ring_collective(Op::Broadcast(root), buf);
        }
        let out = self.f32_collective(Op::Broadcast(root), buf)?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn all_gather(&mut self, buf: &[f32]) -> Result<Vec<f32>> {
        self.f32_collective(Op::Gather, buf)
    }

    fn barrier(&mut self) -> Result<()> {
        self.f32_collective(Op::Barrier, &[]).map(drop)
    }
}

fn kind_name(kind: u8, arg: u32) -> String {
    match kind {
        HELLO => "rendezvous".into(),
        SUM => Op::Sum.to_string(),
        BROADCAST => Op::Broadcast(arg as usize).to_string(),
        GATHER => Op::Gather.to_string(),
        BARRIER => Op::Barrier.to_string(),
        BLOB => "share_blob".into(),
        RING_ADDRS => "ring setup".into(),
        RING_SUM => format!("{} (around the ring)", Op::Sum),
        RING_BROADCAST => format!("{} (around the ring)", Op::Broadcast(arg as usize)),
        FAULT => "a failure report".into(),
        ABORT => "abort".into(),
        k => format!("unknown message {k}"),
    }
}

/// Rank 0's combination of the payloads `parts[rank]`.
fn combine_bytes(kind: u8, arg: u32, seq: u64, parts: Vec<Vec<u8>>) -> Result<Vec<u8>> {
    let op = match kind {
        BLOB => return Ok(parts.into_iter().next().expect("rank 0's part")),
        RING_ADDRS => return Ok(parts.join(&b'\n')),
        SUM => Op::Sum,
        BROADCAST => Op::Broadcast(arg as usize),
        GATHER => Op::Gather,
        _ => Op::Barrier,
    };
    if let Op::Broadcast(root) = op {
        check_root(root, parts.len())?;
    }
    let floats: Vec<Vec<f32>> = parts.iter().map(|p| from_bytes(p)).collect();
    let views: Vec<&[f32]> = floats.iter().map(Vec::as_slice).collect();
    Ok(to_bytes(&combine(op, seq, &views)?))
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        return bytemuck::cast_slice(v).to_vec();
    }
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Rank 0's view of the other ranks during a ring all-reduce, through the star.
struct RootWatch<'a> {
    /// The announcement this collective's ranks send.
    kind: u8,
    arg: u32,
    seq: u64,
    len: u64,
    /// Whether rank `i + 1` has announced this all-reduce.
    arrived: Vec<bool>,
    what: &'a str,
    timeout: Duration,
}

impl RootWatch<'_> {
    /// Frames read early, while rank 0 finished the collective before: announcements of
    /// this one, or whatever else they are.
    fn adopt(&mut self, early: &mut [Option<Frame>]) -> Result<()> {
        for i in 0..early.len() {
            if let Some(f) = early[i].take() {
                self.take(i, f, early)?;
            }
        }
        Ok(())
    }

    /// Reads what the ranks have sent so far, without waiting: announcements, failure
    /// reports, closed connections, and frames of the next collective (kept in `early`).
    fn poll(&mut self, peers: &mut [TcpStream], early: &mut [Option<Frame>]) -> Result<()> {
        for i in 0..peers.len() {
            if early[i].is_some() || !readable(&peers[i]).map_err(|e| link_err(e, i + 1, self.what, self.timeout))? {
                continue;
            }
            let f = read_frame(&mut peers[i], Instant::now() + self.timeout)
                .map_err(|e| link_err(e, i + 1, self.what, self.timeout))?;
            self.take(i, f, early)?;
        }
        Ok(())
    }

    fn take(&mut self, i: usize, f: Frame, early: &mut [Option<Frame>]) -> Result<()> {
        if f.kind == FAULT {
            return Err(fault(f, i + 1));
        }
        if self.arrived[i] {
            early[i] = Some(f);
            return Ok(());
        }
        if f.kind != self.kind || f.arg != self.arg || f.seq != self.seq {
            let detail = format!("it called {} (collective #{})", kind_name(f.kind, f.arg), f.seq);
            return Err(Error::Mismatch { rank: i + 1, op: self.what.to_string(), detail });
        }
        let len = f.payload.get(..8).map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        if len != self.len {
            let detail = format!("its buffer holds {len} values where rank 0's holds {}", self.len);
            return Err(Error::Mismatch { rank: i + 1, op: self.what.to_string(), detail });
        }
        self.arrived[i] = true;
        Ok(())
    }

    /// After rank 0's part of the ring is done: every rank's announcement, which was sent
    /// before its part and must come.
    fn finish(&mut self, peers: &mut [TcpStream], early: &mut [Option<Frame>]) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        for (i, peer) in peers.iter_mut().enumerate() {
            if !self.arrived[i] {
                let f = read_frame(peer, deadline).map_err(|e| link_err(e, i + 1, self.what, self.timeout))?;
                self.take(i, f, early)?;
            }
        }
        Ok(())
    }

    /// Whom to blame for `e`, the failure rank 0 saw in its part of the ring: a rank whose
    /// connection to rank 0 closed, else (when rank 0 waited in vain) the ranks that never
    /// announced this all-reduce, else what rank 0 saw.
    fn verdict(&mut self, peers: &mut [TcpStream], early: &mut [Option<Frame>], e: Error) -> Error {
        let mut seen = None;
        for i in 0..peers.len() {
            if early[i].is_some() {
                continue;
            }
            match readable(&peers[i]) {
                Ok(false) => {}
                Ok(true) => {
                    match read_frame(&mut peers[i], Instant::now() + self.timeout.min(Duration::from_secs(1))) {
                        Ok(f) => {
                            if let Err(other) = self.take(i, f, early) {
                                seen.get_or_insert(other);
                            }
                        }
                        Err(err) => return link_err(err, i + 1, self.what, self.timeout),
                    }
                }
                Err(err) => return link_err(err, i + 1, self.what, self.timeout),
            }
        }
        if let Some(other) = seen {
            return other;
        }
        let missing: Vec<usize> = (0..peers.len()).filter(|&i| !self.arrived[i]).map(|i| i + 1).collect();
        if matches!(e, Error::Timeout { .. }) && !missing.is_empty() {
            return Error::Timeout { ranks: missing, op: self.what.to_string(), timeout: self.timeout };
        }
        e
    }
}

/// A rank other than 0, during a ring all-reduce: rank 0's abort, if it has sent one.
fn watch_root(star: &mut TcpStream, what: &str, timeout: Duration) -> Result<()> {
    if !readable(star).map_err(|e| link_err(e, 0, what, timeout))? {
        return Ok(());
    }
    match read_frame(star, Instant::now() + timeout) {
        Ok(f) if f.kind == ABORT => Err(remote(f)),
        Ok(f) => Err(Error::Mismatch {
            rank: 0,
            op: what.to_string(),
            detail: format!("it sent {} (collective #{})", kind_name(f.kind, f.arg), f.seq),
        }),
        Err(e) => Err(link_err(e, 0, what, timeout)),
    }
}

/// Whether a read would not block: data, or the peer's close, is waiting.
fn readable(s: &TcpStream) -> io::Result<bool> {
    s.set_nonblocking(true)?;
    let r = s.peek(&mut [0u8; 1]);
    s.set_nonblocking(false)?;
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// A ring failure as the group reports it, naming the neighbour it was seen on.
fn ring_err(e: RingError, what: &str, timeout: Duration) -> Error {
    match e {
        RingError::Link { rank, err } => link_err(err, rank, what, timeout),
        RingError::Protocol { rank, detail } => Error::Mismatch { rank, op: what.to_string(), detail },
        RingError::Poll(e) => e,
    }
}

/// A failure report from rank `reporter` (its frame's `arg` names whom it blames).
fn fault(f: Frame, reporter: usize) -> Error {
    Error::Remote {
        reporter,
        rank: (f.arg != u32::MAX).then_some(f.arg as usize),
        msg: String::from_utf8_lossy(&f.payload).into_owned(),
    }
}

fn remote(f: Frame) -> Error {
    Error::Remote {
        reporter: 0,
        rank: (f.arg != u32::MAX).then_some(f.arg as usize),
        msg: String::from_utf8_lossy(&f.payload).into_owned(),
    }
}

fn io_err(context: String, e: io::Error) -> Error {
    Error::Io { context, msg: e.to_string() }
}

/// A failed read or write on the link to `rank`: silence is a timeout, anything else
/// means the rank is gone.
fn link_err(e: io::Error, rank: usize, op: &str, timeout: Duration) -> Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            Error::Timeout { ranks: vec![rank], op: op.to_string(), timeout }
        }
        io::ErrorKind::UnexpectedEof => {
            Error::PeerGone { rank, op: op.to_string(), detail: "it closed the connection".into() }
        }
        _ => Error::PeerGone { rank, op: op.to_string(), detail: e.to_string() },
    }
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() { Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed")) } else { Ok(left) }
}

fn write_frame(s: &mut TcpStream, f: &Frame, deadline: Instant) -> io::Result<()> {
    let mut header = [0u8; HEADER];
    header[0] = f.kind;
    header[4..8].copy_from_slice(&f.arg.to_le_bytes());
    header[8..16].copy_from_slice(&f.seq.to_le_bytes());
    header[16..24].copy_from_slice(&(f.payload.len() as u64).to_le_bytes());
    s.set_write_timeout(Some(remaining(deadline)?))?;
    s.write_all(&header)?;
    for chunk in f.payload.chunks(1 << 20) {
        s.set_write_timeout(Some(remaining(deadline)?))?;
        s.write_all(chunk)?;
    }
    s.flush()
}

fn read_exact_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        s.set_read_timeout(Some(remaining(deadline)?))?;
        match s.read(&mut buf[at..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => at += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_frame(s: &mut TcpStream, deadline: Instant) -> io::Result<Frame> {
    let mut header = [0u8; HEADER];
    read_exact_by(s, &mut header, deadline)?;
    let len = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len as usize];
    read_exact_by(s, &mut payload, deadline)?;
    Ok(Frame {
        kind: header[0],
        arg: u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")),
        seq: u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
        payload,
    })
}

/// Rank 0: the connections of ranks `1..n`, each having said hello with the right world
/// size. Connections that do not speak the protocol are dropped.
fn accept_all(
    listener: &TcpListener,
    n: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<Option<TcpStream>>> {
    listener.set_nonblocking(true).map_err(|e| io_err("rank 0 listener".into(), e))?;
    let mut peers: Vec<Option<TcpStream>> = (1..n).map(|_| None).collect();
    let mut joined = 0;
    while joined < n - 1 {
        if Instant::now() >= deadline {
            let ranks: Vec<usize> = (1..n).filter(|r| peers[r - 1].is_none()).collect();
            let e = Error::Timeout { ranks, op: "rendezvous".into(), timeout };
            abort_all(&mut peers, &e);
            return Err(e);
        }
        let Some((mut s, f)) = next_hello(listener, deadline, "rank 0 accepting connections")? else { continue };
        let r = f.arg as usize;
        let e = if f.seq != n as u64 {
            Some(format!("it was started with a world size of {}, rank 0 with {n}", f.seq))
        } else if r == 0 || r >= n {
            Some(format!("rank {r} is not a rank of a group of {n} other than rank 0"))
        } else if peers[r - 1].is_some() {
            Some(format!("a second process says it is rank {r}"))
        } else {
            None
        };
        if let Some(detail) = e {
            let e = Error::Mismatch { rank: r, op: "rendezvous".into(), detail };
            let _ = write_frame(
                &mut s,
                &Frame { kind: ABORT, arg: r as u32, seq: 0, payload: e.to_string().into_bytes() },
                Instant::now() + Duration::from_secs(1),
            );
            abort_all(&mut peers, &e);
            return Err(e);
        }
        peers[r - 1] = Some(s);
        joined += 1;
    }
    Ok(peers)
}

/// The ring connection from rank `from`, which says hello like a rank meeting rank 0.
/// Connections that do not are dropped.
fn accept_from(
    listener: &TcpListener,
    from: usize,
    n: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream> {
    listener.set_nonblocking(true).map_err(|e| io_err("ring listener".into(), e))?;
    loop {
        if Instant::now() >= deadline {
            return Err(Error::Timeout { ranks: vec![from], op: "ring setup".into(), timeout });
        }
        match next_hello(listener, deadline, "accepting the ring connection")? {
            Some((s, f)) if f.arg as usize == from && f.seq == n as u64 => return Ok(s),
            _ => continue, // none yet, or not the rank before
        }
    }
}

/// One try at a connection on the (non-blocking) `listener` that says our hello: `None`
/// when none is waiting (after a short sleep) or the one that came does not speak the
/// protocol (it is dropped).
fn next_hello(listener: &TcpListener, deadline: Instant, what: &str) -> Result<Option<(TcpStream, Frame)>> {
    let mut s = match listener.accept() {
        Ok((s, _)) => s,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            std::thread::sleep(Duration::from_millis(2));
            return Ok(None);
        }
        Err(e) => return Err(io_err(what.into(), e)),
    };
    let hello = s
        .set_nonblocking(false)
        .and_then(|()| s.set_nodelay(true))
        .and_then(|()| read_frame(&mut s, deadline.min(Instant::now() + Duration::from_secs(10))));
    Ok(match hello {
        Ok(f) if f.kind == HELLO && f.payload == MAGIC => Some((s, f)),
        _ => None,
    })
}

fn abort_all(peers: &mut [Option<TcpStream>], e: &Error) {
    let frame = Frame {
        kind: ABORT,
        arg: e.rank().map_or(u32::MAX, |r| r as u32),
        seq: 0,
        payload: e.to_string().into_bytes(),
    };
    for s in peers.iter_mut().flatten() {
        let _ = write_frame(s, &frame, Instant::now() + Duration::from_secs(1));
    }
}

/// A rank other than 0: connects to rank 0, retrying while it is not listening yet.
fn connect_retrying(addr: &str, deadline: Instant, timeout: Duration) -> Result<TcpStream> {
    let mut last = String::new();
    loop {
        let addrs: Vec<_> = match addr.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => return Err(io_err(format!("resolving MASTER_ADDR:MASTER_PORT {addr}"), e)),
        };
        for a in &addrs {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match TcpStream::connect_timeout(a, left.min(Duration::from_secs(5))) {
                Ok(s) => {
                    s.set_nodelay(true).map_err(|e| io_err(format!("connecting to {addr}"), e))?;
                    return Ok(s);
                }
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                ranks: vec![0],
                op: format!("rendezvous (rank 0 at {addr} could not be reached: {last})"),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
