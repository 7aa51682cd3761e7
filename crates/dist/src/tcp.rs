//! Ranks as processes, connected over TCP through rank 0 (a star).
//!
//! Every message is a frame: a 24-byte header (kind `u8`, three zero bytes, `arg: u32`,
//! `seq: u64`, payload length `u64`, little-endian) and the payload. A collective is one
//! frame from each rank to rank 0 and one reply from rank 0 to each rank; rank 0 reads
//! the ranks in order and combines them in rank order. When rank 0 sees a rank fail
//! (closed connection, silence past the timeout, a different collective) it sends an
//! abort frame naming that rank to all others before returning the error itself.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

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
const ABORT: u8 = 0xff;

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
        let mut comm = TcpComm { rank, world_size: n, timeout, seq: 0, links: Links::Alone, aborted: None };
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
                    match read_frame(s, deadline) {
                        Ok(f) if f.kind == kind && f.arg == arg && f.seq == seq => parts.push(f.payload),
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
        let out = self.f32_collective(Op::Sum, buf)?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.world_size)?;
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
        ABORT => "abort".into(),
        k => format!("unknown message {k}"),
    }
}

/// Rank 0's combination of the payloads `parts[rank]`.
fn combine_bytes(kind: u8, arg: u32, seq: u64, parts: Vec<Vec<u8>>) -> Result<Vec<u8>> {
    let op = match kind {
        BLOB => return Ok(parts.into_iter().next().expect("rank 0's part")),
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
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
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
        let mut s = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(io_err("rank 0 accepting connections".into(), e)),
        };
        let hello = s
            .set_nonblocking(false)
            .and_then(|()| s.set_nodelay(true))
            .and_then(|()| read_frame(&mut s, deadline.min(Instant::now() + Duration::from_secs(10))));
        let f = match hello {
            Ok(f) if f.kind == HELLO && f.payload == MAGIC => f,
            _ => continue, // not one of ours
        };
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
