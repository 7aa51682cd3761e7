//! The TCP rendezvous and collectives across real processes on localhost: this test
//! binary starts copies of itself, each running only `worker` as one rank.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use artist_dist::{Communicator, DistEnv, TcpComm};

const BLOB: &[u8] = b"a 128-byte NCCL unique id travels like this";

/// One rank, when started by `launch` (a no-op in a normal test run).
#[test]
fn worker() {
    let Ok(mode) = std::env::var("ARTIST_DIST_TEST_MODE") else { return };
    let timeout = Duration::from_millis(std::env::var("ARTIST_DIST_TEST_TIMEOUT_MS").unwrap().parse().unwrap());
    let env = DistEnv::from_env().unwrap();
    let mut c = TcpComm::connect(&env, timeout).unwrap();
    // Ring all-reduces from RING_MIN values on, in chunks of RING_CHUNK, 4 on their way at once.
    c.set_ring_threshold(Some(RING_MIN));
    c.set_ring_chunking(RING_CHUNK, 4);
    let (rank, n) = (c.rank(), c.world_size());
    let culprit = std::env::var("ARTIST_DIST_TEST_CULPRIT").map_or(n - 1, |v| v.parse().unwrap());
    let blob = c.share_blob(if rank == 0 { BLOB } else { b"ignored" }).unwrap();
    println!("BLOB {}", String::from_utf8(blob).unwrap());
    match mode.as_str() {
        "ok" => {
            let mut v = vec![rank as f32 + 1.0, 0.1 * rank as f32, 1e8 * (rank % 2) as f32 - 0.5e8];
            c.all_reduce_sum(&mut v).unwrap();
            println!("SUM {}", bits(&v));
            let mut m = vec![rank as f32; 2];
            c.all_reduce_mean(&mut m).unwrap();
            println!("MEAN {}", bits(&m));
            let mut b = vec![rank as f32; 3];
            c.broadcast(&mut b, n - 1).unwrap();
            println!("BCAST {}", bits(&b));
            let g = c.all_gather(&[rank as f32, -(rank as f32)]).unwrap();
            println!("GATHER {}", bits(&g));
            c.barrier().unwrap();
            assert!(!c.has_ring(), "small collectives stay on the star");
            // Around the ring: twice (the second reuses it), with star collectives between
            // and after, which the last rank reaches while rank 0 is still in the ring.
            // Back to back as well, where the last rank announces the next one early.
            for round in 0..2 {
                let mut v = big(rank, BIG + round);
                c.all_reduce_sum(&mut v).unwrap();
                println!("RING{round} {}", digest(&v));
                assert!(c.has_ring());
                if round == 0 {
                    let mut b = vec![rank as f32; 3];
                    c.broadcast(&mut b, 0).unwrap();
                    println!("RBCAST {}", bits(&b));
                }
            }
            let mut m = big(rank, RING_MIN);
            c.all_reduce_mean(&mut m).unwrap();
            println!("RMEAN {}", digest(&m));
            // Broadcasts around the ring, from the last rank and from rank 0, back to back.
            for root in [n - 1, 0] {
                let mut b = big(rank, BIG);
                c.broadcast(&mut b, root).unwrap();
                println!("RBCAST{root} {}", digest(&b));
            }
            c.barrier().unwrap();
        }
        "hang" | "die" | "ring-hang" | "ring-die" => {
            if mode.starts_with("ring") {
                // The ring is up before anything goes wrong.
                c.all_reduce_sum(&mut big(rank, BIG)).unwrap();
                assert!(c.has_ring());
                // Every rank is done with it (the last rank's writer may still be sending).
                c.barrier().unwrap();
            }
            let mut v = if mode.starts_with("ring") { big(rank, BIG) } else { vec![1.0] };
            if rank == culprit {
                if mode.ends_with("die") {
                    std::process::exit(3);
                }
                std::thread::sleep(timeout * 3);
                return;
            }
            let t0 = Instant::now();
            let e = c.all_reduce_sum(&mut v).unwrap_err();
            println!("ERR {} {} {}", e.rank().map_or(-1, |r| r as i64), t0.elapsed().as_millis(), e);
        }
        m => panic!("unknown mode {m}"),
    }
}

const RING_MIN: usize = 3000;
const RING_CHUNK: usize = 700;
/// A ring all-reduce's length: 15 chunks, the last one short.
const BIG: usize = 10_007;

/// Rank `r`'s values for a ring all-reduce: magnitudes that differ by rank, so that
/// adding in another order than rank order would change bits.
fn big(r: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7 + r * 13) as f32 * 0.37).sin() * 10f32.powi((r % 3) as i32 * 3 - 3)).collect()
}

/// The rank-order sum over `n` ranks of `big`, as the in-process communicator adds.
fn big_sum(n: usize, len: usize) -> Vec<f32> {
    let mut s = big(0, len);
    for r in 1..n {
        s.iter_mut().zip(big(r, len)).for_each(|(a, b)| *a += b);
    }
    s
}

/// Every value's bits, hashed (FNV-1a), and the length.
fn digest(v: &[f32]) -> String {
    let h = v.iter().fold(0xcbf29ce484222325u64, |h, x| (h ^ x.to_bits() as u64).wrapping_mul(0x100000001b3));
    format!("{}:{h:016x}", v.len())
}

fn bits(v: &[f32]) -> String {
    v.iter().map(|x| format!("{:08x}", x.to_bits())).collect::<Vec<_>>().join(",")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `n` ranks of `worker` and returns each one's output, in rank order.
fn launch(n: usize, mode: &str, timeout_ms: u64) -> Vec<Output> {
    launch_blaming(n, mode, timeout_ms, n - 1)
}

/// As `launch`, with `culprit` the rank that hangs or dies in those modes.
fn launch_blaming(n: usize, mode: &str, timeout_ms: u64, culprit: usize) -> Vec<Output> {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..n)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", "worker", "--nocapture", "--test-threads=1"])
                .env("ARTIST_DIST_TEST_MODE", mode)
                .env("ARTIST_DIST_TEST_TIMEOUT_MS", timeout_ms.to_string())
                .env("ARTIST_DIST_TEST_CULPRIT", culprit.to_string())
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", n.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn line<'a>(out: &'a Output, tag: &str) -> &'a str {
    let text = std::str::from_utf8(&out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.split_once(&format!("{tag} ")).map(|(_, rest)| rest)) // may follow "test worker ... "
        .unwrap_or_else(|| panic!("no {tag} line in {text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn rendezvous_and_all_reduce_across_processes() {
    for n in [2usize, 3] {
        let outs = launch(n, "ok", 20_000);
        let mut sum = vec![0f32; 3];
        let mut mean = [0f32; 2];
        for r in 0..n {
            let v = [r as f32 + 1.0, 0.1 * r as f32, 1e8 * (r % 2) as f32 - 0.5e8];
            sum.iter_mut().zip(v).for_each(|(s, x)| *s += x); // rank order
            mean.iter_mut().for_each(|m| *m += r as f32);
        }
        mean.iter_mut().for_each(|m| *m /= n as f32);
        let gather: Vec<f32> = (0..n).flat_map(|r| [r as f32, -(r as f32)]).collect();
        for (r, out) in outs.iter().enumerate() {
            assert!(out.status.success(), "rank {r}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(line(out, "BLOB").as_bytes(), BLOB);
            assert_eq!(line(out, "SUM"), bits(&sum), "rank {r}");
            assert_eq!(line(out, "MEAN"), bits(&mean), "rank {r}");
            assert_eq!(line(out, "BCAST"), bits(&[(n - 1) as f32; 3]), "rank {r}");
            assert_eq!(line(out, "GATHER"), bits(&gather), "rank {r}");
            for round in 0..2 {
                assert_eq!(line(out, &format!("RING{round}")), digest(&big_sum(n, BIG + round)), "rank {r}");
            }
            assert_eq!(line(out, "RBCAST"), bits(&[0.0; 3]), "rank {r}");
            let mean: Vec<f32> = big_sum(n, RING_MIN).iter().map(|x| x / n as f32).collect();
            assert_eq!(line(out, "RMEAN"), digest(&mean), "rank {r}");
            for root in [n - 1, 0] {
                assert_eq!(line(out, &format!("RBCAST{root}")), digest(&big(root, BIG)), "rank {r}, root {root}");
            }
        }
    }
}

#[test]
fn ring_all_reduce_sums_in_rank_order_across_four_processes() {
    let n = 4;
    let outs = launch(n, "ok", 20_000);
    // Another order of the same sum gives other bits, so rank order is what is checked.
    let mut other = big(n - 1, BIG);
    for r in (0..n - 1).rev() {
        other.iter_mut().zip(big(r, BIG)).for_each(|(a, b)| *a += b);
    }
    assert_ne!(digest(&other), digest(&big_sum(n, BIG)));
    for (r, out) in outs.iter().enumerate() {
        assert!(out.status.success(), "rank {r}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(line(out, "RING0"), digest(&big_sum(n, BIG)), "rank {r}");
    }
}

/// Checks that every rank but the culprit (the last) failed naming it, in time.
fn check_blamed(outs: &[Output], within_ms: u128) {
    check_blamed_rank(outs, within_ms, outs.len() - 1);
}

fn check_blamed_rank(outs: &[Output], within_ms: u128, culprit: usize) {
    for (r, out) in outs.iter().enumerate().filter(|(r, _)| *r != culprit) {
        let l = line(out, "ERR");
        let mut it = l.splitn(3, ' ');
        let (blamed, ms, msg) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        assert_eq!(blamed, culprit.to_string(), "rank {r}: {l}");
        assert!(msg.contains(&format!("rank {culprit}")), "rank {r}: {msg}");
        assert!(ms.parse::<u128>().unwrap() <= within_ms, "rank {r} took {ms} ms: {msg}");
    }
}

#[test]
fn a_hung_process_is_named_within_the_timeout() {
    let outs = launch(3, "hang", 1000);
    // Rank 0 gives up after its 1 s and tells rank 1 at once.
    check_blamed(&outs, 1800);
    assert!(line(&outs[0], "ERR").contains("rank 2 did not join all_reduce"));
}

#[test]
fn a_dead_process_is_named_at_once() {
    let outs = launch(3, "die", 10_000);
    check_blamed(&outs, 3000);
    assert!(line(&outs[0], "ERR").contains("rank 2 left the group"));
}

#[test]
fn a_rank_that_hangs_in_the_ring_is_named_within_the_timeout() {
    // The last rank (rank 0's source of finished chunks) and a rank in the middle.
    for (n, culprit) in [(3, 2), (4, 1)] {
        let outs = launch_blaming(n, "ring-hang", 1000, culprit);
        check_blamed_rank(&outs, 1800, culprit);
        assert!(line(&outs[0], "ERR").contains(&format!("rank {culprit} did not join all_reduce")));
    }
}

#[test]
fn a_rank_that_dies_in_the_ring_is_named_at_once() {
    for (n, culprit) in [(3, 2), (4, 1), (4, 2)] {
        let outs = launch_blaming(n, "ring-die", 10_000, culprit);
        check_blamed_rank(&outs, 3000, culprit);
        assert!(line(&outs[0], "ERR").contains(&format!("rank {culprit} left the group")), "n {n}, culprit {culprit}");
    }
}

fn env(rank: usize, world_size: usize, port: u16) -> DistEnv {
    DistEnv { rank, world_size, local_rank: rank, master_port: port, ..DistEnv::single() }
}

#[test]
fn a_rank_that_never_connects_is_named() {
    let timeout = Duration::from_millis(300);
    let t0 = Instant::now();
    // Rank 0 waits for ranks 1 and 2; only rank 1 comes.
    let port = free_port();
    let (root, one) = std::thread::scope(|s| {
        let root = s.spawn(|| TcpComm::connect(&env(0, 3, port), timeout).err().unwrap());
        let one = s.spawn(|| TcpComm::connect(&env(1, 3, port), timeout).err().unwrap());
        (root.join().unwrap(), one.join().unwrap())
    });
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(root.rank(), Some(2), "{root}");
    assert!(root.to_string().contains("rank 2 did not join rendezvous"), "{root}");
    assert_eq!(one.rank(), Some(2), "{one}");
    // A rank whose rank 0 never listens names rank 0.
    let e = TcpComm::connect(&env(1, 2, free_port()), timeout).err().unwrap();
    assert_eq!(e.rank(), Some(0), "{e}");
}

#[test]
fn one_process_needs_no_connection() {
    let mut c = TcpComm::connect(&DistEnv::single(), Duration::from_secs(1)).unwrap();
    let mut v = [1.0f32, 2.0];
    c.all_reduce_mean(&mut v).unwrap();
    assert_eq!(v, [1.0, 2.0]);
    assert_eq!(c.share_blob(b"id").unwrap(), b"id");
    assert_eq!(c.all_gather(&[3.0]).unwrap(), vec![3.0]);
    c.barrier().unwrap();
}
