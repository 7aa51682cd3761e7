//! Programs asked one JSON line at a time: an external judge (`artist_math::Judge`), the
//! user of a multi-turn episode (`bfcl.user_command`). The program is started `workers`
//! times and kept; each copy is told its number in an environment variable the caller
//! names (0 to N - 1), reads one JSON line on its stdin and writes one line on its stdout
//! per request, in order, and is asked one request at a time (its lock keeps a request and
//! its reply together); a caller takes whichever copy is free, so N requests are answered
//! at once. Its stderr is the trainer's.
//!
//! Nothing a program does makes this panic: one that cannot start, exits, answers something
//! the caller cannot read, or takes longer than the timeout is an error saying so (naming
//! the copy when there are several), and every later request fails with the same error:
//! a copy's next line could answer the wrong request, and callers stop at the first failure
//! anyway.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The most copies of a program one pool starts.
pub const MAX_WORKERS: usize = 256;

struct Pipe {
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
}

/// One copy of the program.
struct Worker {
    pipe: Mutex<Pipe>,
    child: Mutex<Child>,
}

/// Copies of a program, each answering one JSON line with one line: see the module doc.
pub struct LineWorkers {
    command: Vec<String>,
    timeout: Duration,
    /// What a reply is called in messages ("verdict", "reply").
    reply: &'static str,
    workers: Vec<Worker>,
    /// The copies no caller holds.
    free: Mutex<Vec<usize>>,
    freed: Condvar,
    /// Set once a request failed: every later one fails with it.
    broken: Mutex<Option<String>>,
}

/// The lock's value even if a holder panicked (none does while holding it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LineWorkers {
    /// Starts `command` `workers` times, each with `worker_env` set to its number. `reply`
    /// names what it answers, in error messages. The error says what went wrong, without
    /// the command (the caller names the program).
    pub fn spawn(
        command: &[String],
        workers: usize,
        worker_env: &str,
        timeout_s: f64,
        reply: &'static str,
    ) -> Result<LineWorkers, String> {
        let (program, args) = command.split_first().ok_or("the command is empty")?;
        if !(timeout_s > 0.0 && timeout_s.is_finite()) {
            return Err(format!("timeout_s must be a positive number, got {timeout_s}"));
        }
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(format!("workers must be from 1 to {MAX_WORKERS}, got {workers}"));
        }
        // Built as the copies start, so that a failure drops it and ends those started.
        let mut pool = LineWorkers {
            command: command.to_vec(),
            timeout: Duration::from_secs_f64(timeout_s),
            reply,
            workers: Vec::with_capacity(workers),
            free: Mutex::new((0..workers).rev().collect()),
            freed: Condvar::new(),
            broken: Mutex::new(None),
        };
        for i in 0..workers {
            let mut child = Command::new(program)
                .args(args)
                .env(worker_env, i.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start it: {e}"))?;
            let (stdin, stdout) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
            let (tx, lines) = channel();
            pool.workers.push(Worker { pipe: Mutex::new(Pipe { stdin, lines }), child: Mutex::new(child) });
            std::thread::Builder::new()
                .name(format!("line-reader-{i}"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| format!("cannot start its reader thread: {e}"))?;
        }
        Ok(pool)
    }

    /// How many requests it answers at once.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The command line, as words joined by spaces (for messages).
    pub fn command(&self) -> String {
        self.command.join(" ")
    }

    /// Sends `request` to a free copy (waiting for one when all are busy) and reads its
    /// reply line with `read`.
    pub fn ask<T>(
        &self,
        request: &serde_json::Value,
        read: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, String> {
        let i = {
            let mut free = lock(&self.free);
            loop {
                if let Some(why) = lock(&self.broken).clone() {
                    return Err(why);
                }
                match free.pop() {
                    Some(i) => break i,
                    None => free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner()),
                }
            }
        };
        let reply = self.exchange(&mut lock(&self.workers[i].pipe), request).and_then(|line| read(&line));
        let reply = reply.map_err(|why| {
            let why = match self.workers.len() {
                1 => why,
                _ => format!("worker {i}: {why}"),
            };
            lock(&self.broken).get_or_insert(why).clone()
        });
        lock(&self.free).push(i);
        match reply {
            Ok(v) => {
                self.freed.notify_one();
                Ok(v)
            }
            Err(why) => {
                // Every waiter returns the failure.
                self.freed.notify_all();
                Err(why)
            }
        }
    }

    /// Writes the request and waits for one line.
    fn exchange(&self, pipe: &mut Pipe, request: &serde_json::Value) -> Result<String, String> {
        let mut line = request.to_string();
        line.push('\n');
        pipe.stdin
            .write_all(line.as_bytes())
            .and_then(|_| pipe.stdin.flush())
            .map_err(|e| format!("writing to it: {e} (has it exited?)"))?;
        match pipe.lines.recv_timeout(self.timeout) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(format!("reading from it: {e}")),
            Err(RecvTimeoutError::Timeout) => Err(format!("no {} within {} s", self.reply, self.timeout.as_secs_f64())),
            Err(RecvTimeoutError::Disconnected) => Err(format!("it exited without a {}", self.reply)),
        }
    }
}

impl Drop for LineWorkers {
    fn drop(&mut self) {
        // A copy still running is killed (its input would close only when the fields drop,
        // after this): it keeps nothing worth saving.
        for w in &self.workers {
            let mut child = lock(&w.child);
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// `f(0), ..., f(n - 1)` on up to `threads` threads (the calling one among them), in
/// order: for work that waits (a program's reply) rather than computes.
pub fn in_parallel<R: Send>(threads: usize, n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return done;
            }
            done.push((i, f(i)));
        }
    };
    let mut all: Vec<(usize, R)> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in helpers {
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    all.sort_by_key(|&(i, _)| i);
    all.into_iter().map(|(_, r)| r).collect()
}
