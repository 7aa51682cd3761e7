//! The ring behind [`crate::TcpComm`]'s large all-reduces and broadcasts.
//!
//! Each rank holds one connection from the rank before it and one to the rank after it
//! (modulo the group size). A buffer travels in chunks, pipelined: rank 0 sends its chunk
//! to rank 1, which adds its own and passes the partial sum on, and so on up to the last
//! rank, which then holds the sum of the chunk and sends it around the ring (to rank 0,
//! then 1, ...) for everyone to store. Every element is thus summed in rank order,
//! `((r0 + r1) + r2) + ...`, the same bits as the star and the in-process communicator,
//! and no rank sends or receives more than twice the buffer, whatever the group size,
//! where rank 0 of the star receives and sends the buffer once per other rank.
//!
//! A rank reads only from the rank before it; its writes go through a thread of their
//! own, so that a rank never stops reading because it is waiting to write (the ring would
//! deadlock as soon as its sockets' buffers filled). Reads are sliced so that the caller
//! can look at the control connection (rank 0's star) between slices.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A chunk's header: kind `u8`, three zero bytes, chunk index `u32`, collective number
/// `u64`, payload bytes `u64`, little-endian (the star's frame layout).
const HEADER: usize = 24;
/// A partial sum (ranks `0..=r`) on its way up the ring.
pub(crate) const PART: u8 = 0x10;
/// The finished sum on its way around.
pub(crate) const FINAL: u8 = 0x11;
/// A broadcast's chunk, from its root around the ring.
pub(crate) const BROADCAST: u8 = 0x12;
/// How long a read waits before the caller may look elsewhere.
const SLICE: Duration = Duration::from_millis(50);

/// Values per chunk: 1 MiB of f32, small enough to fill the pipeline of a few ranks with a
/// buffer of some MiB, large enough that the per-chunk costs vanish.
pub(crate) const CHUNK_ELEMS: usize = 1 << 18;
/// Chunks rank 0 keeps on their way around the ring at once (32 MiB at the default size).
const WINDOW: usize = 32;

/// What a ring all-reduce failed on.
#[derive(Debug)]
pub(crate) enum RingError {
    /// The link to `rank` failed: it closed, timed out, or broke.
    Link { rank: usize, err: io::Error },
    /// `rank` sent something this collective does not expect.
    Protocol { rank: usize, detail: String },
    /// The caller's poll ended the collective (an abort seen on the control connection).
    Poll(crate::Error),
}

struct Chunk {
    kind: u8,
    index: u32,
    seq: u64,
    data: Vec<f32>,
}

pub(crate) struct Ring {
    rank: usize,
    n: usize,
    prev: TcpStream,
    /// A second handle on the connection to the next rank, to shut it down on failure.
    next: TcpStream,
    tx: Option<mpsc::Sender<Chunk>>,
    writer: Option<JoinHandle<()>>,
    write_error: Arc<Mutex<Option<io::Error>>>,
    chunk_elems: usize,
    window: usize,
}

impl Ring {
    /// A ring over the connections `prev` (from rank `(rank - 1) mod n`) and `next` (to
    /// `(rank + 1) mod n`), both already past their hello. Each write may block at most
    /// `write_timeout`.
    pub(crate) fn new(
        rank: usize,
        n: usize,
        prev: TcpStream,
        next: TcpStream,
        write_timeout: Duration,
    ) -> io::Result<Ring> {
        let (tx, rx) = mpsc::channel::<Chunk>();
        let write_error = Arc::new(Mutex::new(None));
        let mut out = next.try_clone()?;
        out.set_write_timeout(Some(write_timeout))?;
        let slot = Arc::clone(&write_error);
        let writer = std::thread::Builder::new().name(format!("ring-writer-{rank}")).spawn(move || {
            for c in rx {
                if slot.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    continue; // the link is broken: drop what is still queued
                }
                if let Err(e) = write_chunk(&mut out, &c) {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
            }
        })?;
        Ok(Ring {
            rank,
            n,
            prev,
            next,
            tx: Some(tx),
            writer: Some(writer),
            write_error,
            chunk_elems: CHUNK_ELEMS,
            window: WINDOW,
        })
    }

    /// Test hook: smaller chunks and window, so that small buffers take many of each.
    pub(crate) fn set_chunking(&mut self, elems: usize, window: usize) {
        self.chunk_elems = elems.max(1);
        self.window = window.max(1);
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.n
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.n - 1) % self.n
    }

    fn send(&self, c: Chunk) -> Result<(), RingError> {
        self.check_writer()?;
        let tx = self.tx.as_ref().expect("the writer lives as long as the ring");
        tx.send(c).map_err(|_| RingError::Link {
            rank: self.next_rank(),
            err: io::Error::new(io::ErrorKind::BrokenPipe, "the ring's writer stopped"),
        })
    }

    fn check_writer(&self) -> Result<(), RingError> {
        // The error stays in the slot: the link stays broken for the writer.
        match &*self.write_error.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(err) => {
                Err(RingError::Link { rank: self.next_rank(), err: io::Error::new(err.kind(), err.to_string()) })
            }
            None => Ok(()),
        }
    }

    /// `buf` becomes the sum over the ranks, in rank order. `seq` numbers the collective
    /// (every chunk carries it), `wait` bounds the wait for each chunk from the rank before,
    /// and `poll` runs whenever a read has waited a slice with nothing to read.
    pub(crate) fn all_reduce(
        &mut self,
        buf: &mut [f32],
        seq: u64,
        wait: Duration,
        poll: &mut dyn FnMut() -> Result<(), crate::Error>,
    ) -> Result<(), RingError> {
        let (rank, last, ce) = (self.rank, self.n - 1, self.chunk_elems);
        let (len, chunks) = (buf.len(), buf.len().div_ceil(ce));
        let range = |c: usize| c * ce..((c + 1) * ce).min(len);
        // Rank 0 keeps at most `window` chunks on their way, so that it never holds more
        // than that in copies: a new one leaves as each finished one comes back.
        let mut sent = 0;
        if rank == 0 {
            while sent < chunks.min(self.window) {
                self.send(Chunk { kind: PART, index: sent as u32, seq, data: buf[range(sent)].to_vec() })?;
                sent += 1;
            }
        }
        let mut parts_left = if rank == 0 { 0 } else { chunks };
        let mut finals_left = if rank == last { 0 } else { chunks };
        let mut seen = vec![0u8; chunks]; // bit 0: part seen, bit 1: final seen
        while parts_left + finals_left > 0 {
            self.check_writer()?;
            let (kind, index, got_seq, mut data) = self.read_chunk(Instant::now() + wait, poll)?;
            let prev = self.prev_rank();
            let c = index as usize;
            let bad = |detail: String| Err(RingError::Protocol { rank: prev, detail });
            if got_seq != seq {
                return bad(format!("it sent a chunk of collective #{got_seq} during #{seq}"));
            }
            if c >= chunks || data.len() != range(c).len() {
                return bad(format!(
                    "its chunk {c} holds {} values; this rank's buffer of {} values has {chunks} chunks of {ce}",
                    data.len(),
                    buf.len()
                ));
            }
            let bit = if kind == PART { 1 } else { 2 };
            let expected = match kind {
                PART => rank != 0,
                FINAL => rank != last,
                _ => false,
            };
            if !expected || seen[c] & bit != 0 {
                return bad(format!("unexpected message {kind:#x} for chunk {c}"));
            }
            seen[c] |= bit;
            let mine = &mut buf[range(c)];
            if kind == PART {
                // The partial sum of ranks before this one, plus this rank's values.
                data.iter_mut().zip(mine.iter()).for_each(|(s, x)| *s += *x);
                parts_left -= 1;
                if rank == last {
                    mine.copy_from_slice(&data);
                    self.send(Chunk { kind: FINAL, index, seq, data })?;
                } else {
                    self.send(Chunk { kind: PART, index, seq, data })?;
                }
            } else {
                mine.copy_from_slice(&data);
                finals_left -= 1;
                if self.next_rank() != last {
                    self.send(Chunk { kind: FINAL, index, seq, data })?;
                }
                if rank == 0 && sent < chunks {
                    self.send(Chunk { kind: PART, index: sent as u32, seq, data: buf[range(sent)].to_vec() })?;
                    sent += 1;
                }
            }
        }
        Ok(())
    }

    /// `buf` becomes rank `root`'s, its chunks passed around the ring from the root (each
    /// rank keeps them and passes them on, up to the rank before the root). The root only
    /// queues its chunks; the others wait at most `wait` for each.
    pub(crate) fn broadcast(
        &mut self,
        buf: &mut [f32],
        root: usize,
        seq: u64,
        wait: Duration,
        poll: &mut dyn FnMut() -> Result<(), crate::Error>,
    ) -> Result<(), RingError> {
        let ce = self.chunk_elems;
        let (len, chunks) = (buf.len(), buf.len().div_ceil(ce));
        let range = |c: usize| c * ce..((c + 1) * ce).min(len);
        if self.rank == root {
            for c in 0..chunks {
                self.send(Chunk { kind: BROADCAST, index: c as u32, seq, data: buf[range(c)].to_vec() })?;
            }
            return Ok(());
        }
        let forward = self.next_rank() != root;
        for c in 0..chunks {
            self.check_writer()?;
            let (kind, index, got_seq, data) = self.read_chunk(Instant::now() + wait, poll)?;
            // The link keeps the root's order: chunk c comes c-th.
            if kind != BROADCAST || got_seq != seq || index as usize != c || data.len() != range(c).len() {
                return Err(RingError::Protocol {
                    rank: self.prev_rank(),
                    detail: format!(
                        "it sent message {kind:#x} for chunk {index} of collective #{got_seq} ({} values) where \
                         chunk {c} of broadcast #{seq} ({} values) was due",
                        data.len(),
                        range(c).len()
                    ),
                });
            }
            buf[range(c)].copy_from_slice(&data);
            if forward {
                self.send(Chunk { kind: BROADCAST, index, seq, data })?;
            }
        }
        Ok(())
    }

    fn read_chunk(
        &mut self,
        deadline: Instant,
        poll: &mut dyn FnMut() -> Result<(), crate::Error>,
    ) -> Result<(u8, u32, u64, Vec<f32>), RingError> {
        let prev = self.prev_rank();
        let link = |err| RingError::Link { rank: prev, err };
        let mut header = [0u8; HEADER];
        self.read_sliced(&mut header, deadline, poll)?;
        let kind = header[0];
        let index = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let bytes = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
        // Never more than a chunk (every rank chunks alike): a larger header is not ours.
        if bytes % 4 != 0 || bytes > self.chunk_elems as u64 * 4 {
            return Err(link(io::Error::new(io::ErrorKind::InvalidData, format!("a ring chunk of {bytes} bytes"))));
        }
        let mut data = vec![0f32; bytes as usize / 4];
        self.read_sliced(bytemuck::cast_slice_mut(&mut data), deadline, poll)?;
        if cfg!(target_endian = "big") {
            data.iter_mut().for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
        }
        Ok((kind, index, seq, data))
    }

    /// Fills `buf` from the rank before, waiting at most until `deadline`; `poll` runs
    /// after each slice in which nothing came.
    fn read_sliced(
        &mut self,
        buf: &mut [u8],
        deadline: Instant,
        poll: &mut dyn FnMut() -> Result<(), crate::Error>,
    ) -> Result<(), RingError> {
        let prev = self.prev_rank();
        let mut at = 0;
        while at < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RingError::Link {
                    rank: prev,
                    err: io::Error::new(io::ErrorKind::TimedOut, "nothing came before the deadline"),
                });
            }
            let set = self.prev.set_read_timeout(Some(left.min(SLICE)));
            match set.and_then(|()| self.prev.read(&mut buf[at..])) {
                Ok(0) => return Err(RingError::Link { rank: prev, err: io::ErrorKind::UnexpectedEof.into() }),
                Ok(k) => at += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    poll().map_err(RingError::Poll)?;
                    self.check_writer()?;
                }
                Err(err) => return Err(RingError::Link { rank: prev, err }),
            }
        }
        Ok(())
    }

    /// Breaks both links at once, so that the writer stops and the neighbours see it.
    pub(crate) fn shut_down(&mut self) {
        let _ = self.next.shutdown(Shutdown::Both);
        let _ = self.prev.shutdown(Shutdown::Both);
    }
}

impl Drop for Ring {
    /// Lets the writer send what is queued (the rank after may still need it), then joins it.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn write_chunk(s: &mut TcpStream, c: &Chunk) -> io::Result<()> {
    let mut header = [0u8; HEADER];
    header[0] = c.kind;
    header[4..8].copy_from_slice(&c.index.to_le_bytes());
    header[8..16].copy_from_slice(&c.seq.to_le_bytes());
    header[16..24].copy_from_slice(&(c.data.len() as u64 * 4).to_le_bytes());
    s.write_all(&header)?;
    if cfg!(target_endian = "big") {
        let bytes: Vec<u8> = c.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        return s.write_all(&bytes);
    }
    s.write_all(bytemuck::cast_slice(&c.data))
}
