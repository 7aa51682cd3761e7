//! The in-process communicator: collectives with 1, 2 and 4 ranks, and failures that
//! name the rank at fault within the timeout.

use std::time::{Duration, Instant};

use artist_autograd::{Gradients, Param};
use artist_dist::{Communicator, Error, InProcess, Reduce, all_reduce_gradients, broadcast_params, shard_range};
use artist_tensor::{Device, Tensor};

/// Runs `f` on every rank of a fresh group, each in its own thread; results in rank order.
fn run<T: Send>(n: usize, timeout: Duration, f: impl Fn(InProcess) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::group_with_timeout(n, timeout).into_iter().map(|c| s.spawn(|| f(c))).collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
    })
}

const T: Duration = Duration::from_secs(10);

#[test]
fn collectives_with_1_2_4_ranks() {
    for n in [1, 2, 4] {
        let out = run(n, T, |mut c| {
            let r = c.rank() as f32;
            assert_eq!(c.world_size(), n);
            let mut sum = vec![r, 10.0 * r, 1.0];
            c.all_reduce_sum(&mut sum).unwrap();
            let mut mean = vec![r, 2.0];
            c.all_reduce_mean(&mut mean).unwrap();
            let root = n - 1;
            let mut b = vec![r; 3];
            c.broadcast(&mut b, root).unwrap();
            let g = c.all_gather(&[r, -r]).unwrap();
            c.barrier().unwrap();
            (sum, mean, b, g)
        });
        let total: f32 = (0..n).map(|r| r as f32).sum();
        for (sum, mean, b, g) in out {
            assert_eq!(sum, vec![total, 10.0 * total, n as f32]);
            assert_eq!(mean, vec![total / n as f32, 2.0]);
            assert_eq!(b, vec![(n - 1) as f32; 3]);
            let want: Vec<f32> = (0..n).flat_map(|r| [r as f32, -(r as f32)]).collect();
            assert_eq!(g, want);
        }
    }
}

#[test]
fn sums_in_rank_order() {
    // Values whose f32 sum depends on the order: ((1e8 + 1) + -1e8) + 1 = 1, while
    // other orders give 0 or 2.
    let parts = [1e8f32, 1.0, -1e8, 1.0];
    let want = ((parts[0] + parts[1]) + parts[2]) + parts[3];
    for _ in 0..20 {
        let out = run(4, T, |mut c| {
            // Ranks arrive in varying order.
            std::thread::sleep(Duration::from_micros(((3 - c.rank()) * 300) as u64));
            let mut v = [parts[c.rank()]];
            c.all_reduce_sum(&mut v).unwrap();
            v[0]
        });
        assert!(out.iter().all(|&x| x.to_bits() == want.to_bits()), "{out:?} != {want}");
    }
}

#[test]
fn long_sums_split_over_ranks_keep_rank_order_to_the_bit() {
    // Each rank sums a slice of every buffer: lengths that do not divide evenly, shorter
    // than the ranks, and longer than a tile, each against a plain sum in rank order.
    for n in [2, 3, 4] {
        for len in [0, 1, 3, 17, 4_099, 100_003] {
            let value =
                |r: usize, i: usize| ((i * 7919 + r * 104_729) % 1_000_003) as f32 * 1e-3 - 500.0 + r as f32 * 1e5;
            let out = run(n, T, |mut c| {
                let r = c.rank();
                let mut v: Vec<f32> = (0..len).map(|i| value(r, i)).collect();
                c.all_reduce_sum(&mut v).unwrap();
                v
            });
            let want: Vec<f32> = (0..len).map(|i| (1..n).fold(value(0, i), |acc, r| acc + value(r, i))).collect();
            for v in out {
                assert!(v.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "n {n} len {len}");
            }
        }
    }
}

#[test]
fn a_rank_that_never_arrives_is_named_within_the_timeout() {
    let timeout = Duration::from_millis(300);
    let t0 = Instant::now();
    let out = run(3, timeout, |mut c| {
        let mut v = [1.0f32];
        c.all_reduce_sum(&mut v).unwrap();
        if c.rank() == 2 {
            // Hangs (past everyone's timeout) while holding its communicator.
            std::thread::sleep(timeout * 3);
            return None;
        }
        let e = c.all_reduce_sum(&mut v).unwrap_err();
        let after = t0.elapsed();
        // Later calls fail at once with the same failure.
        let again = c.barrier().unwrap_err();
        Some((e, again, after))
    });
    for (e, again, after) in out.into_iter().flatten() {
        assert!(matches!(&e, Error::Timeout { ranks, .. } if ranks == &[2]), "{e}");
        assert_eq!(e.rank(), Some(2));
        assert!(e.to_string().contains("rank 2 did not join all_reduce"), "{e}");
        assert_eq!(again.to_string(), e.to_string());
        assert!(after < timeout + Duration::from_millis(700), "failed after {after:?}");
    }
}

#[test]
fn a_rank_that_dies_is_named_at_once() {
    let out = run(4, Duration::from_secs(30), |mut c| {
        if c.rank() == 1 {
            drop(c); // the thread ends without joining
            return None;
        }
        let t0 = Instant::now();
        let e = c.all_reduce_sum(&mut [1.0]).unwrap_err();
        Some((e, t0.elapsed()))
    });
    for (e, after) in out.into_iter().flatten() {
        assert!(matches!(e, Error::PeerGone { rank: 1, .. }), "{e}");
        assert!(after < Duration::from_secs(5), "{after:?}");
    }
}

#[test]
fn mismatched_calls_and_lengths_are_reported() {
    let out = run(2, T, |mut c| if c.rank() == 0 { c.barrier() } else { c.all_reduce_sum(&mut [1.0]) });
    for r in out {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Mismatch { .. }), "{e}");
    }
    let out = run(3, T, |mut c| {
        let mut v = vec![0.0; if c.rank() == 2 { 3 } else { 2 }];
        c.all_reduce_sum(&mut v)
    });
    for r in out {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Mismatch { rank: 2, .. }), "{e}");
        assert!(e.to_string().contains("3 values where rank 0's holds 2"), "{e}");
    }
    let mut g = InProcess::group(2);
    assert!(matches!(g[0].broadcast(&mut [0.0], 2), Err(Error::Invalid(_))));
}

fn param(name: &str, v: Vec<f32>) -> Param {
    let n = v.len();
    Param::new(name, Tensor::from_vec(v, n, Device::Cpu).unwrap())
}

/// An [`InProcess`] rank that counts its host collectives and its tensor all-reduces.
struct Counting {
    inner: InProcess,
    host_sums: usize,
    tensor_sums: usize,
}

impl Communicator for Counting {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> artist_dist::Result<()> {
        self.host_sums += 1;
        self.inner.all_reduce_sum(buf)
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> artist_dist::Result<()> {
        self.inner.broadcast(buf, root)
    }
    fn all_gather(&mut self, buf: &[f32]) -> artist_dist::Result<Vec<f32>> {
        self.inner.all_gather(buf)
    }
    fn barrier(&mut self) -> artist_dist::Result<()> {
        self.inner.barrier()
    }
    fn all_reduce_tensor(&mut self, t: &Tensor, reduce: Reduce) -> artist_dist::Result<()> {
        self.tensor_sums += 1;
        self.inner.all_reduce_tensor(t, reduce)
    }
}

#[test]
fn gradients_are_averaged_in_buckets_and_params_broadcast() {
    for bucket in [1, 3, 1000] {
        let out = run(4, T, |c| {
            let mut c = Counting { inner: c, host_sums: 0, tensor_sums: 0 };
            let r = c.rank() as f32;
            let params = [param("a", vec![r; 2]), param("b", vec![r; 3]), param("c", vec![0.0; 4]), {
                let mut p = param("frozen", vec![r; 1]);
                p.set_trainable(false);
                p
            }];
            let refs: Vec<&Param> = params.iter().collect();
            broadcast_params(&mut c, &refs, 0).unwrap();
            let mut grads = Gradients::default();
            grads.add(params[0].id(), Tensor::from_vec(vec![r, 1.0], 2, Device::Cpu).unwrap()).unwrap();
            // Only rank 3 has a gradient for "b"; nobody for "c".
            if c.rank() == 3 {
                grads.add(params[1].id(), Tensor::from_vec(vec![4.0, 8.0, 12.0], 3, Device::Cpu).unwrap()).unwrap();
            }
            c.host_sums = 0;
            all_reduce_gradients(&mut c, &refs, &mut grads, bucket).unwrap();
            let values: Vec<Vec<f32>> = params.iter().map(|p| p.value().to_vec::<f32>().unwrap()).collect();
            let g = |i: usize| grads.get(params[i].id()).map(|t| t.to_vec::<f32>().unwrap());
            (values, g(0), g(1), g(2), c.host_sums, c.tensor_sums)
        });
        for (values, a, b, c, host_sums, tensor_sums) in out {
            // One small collective agrees on which gradients exist, whatever the number of
            // buckets; then one sum per trainable parameter, where the gradients are.
            assert_eq!((host_sums, tensor_sums), (1, 3), "bucket {bucket}");
            assert_eq!(values, vec![vec![0.0; 2], vec![0.0; 3], vec![0.0; 4], vec![0.0]]);
            assert_eq!(a, Some(vec![1.5, 1.0]));
            assert_eq!(b, Some(vec![1.0, 2.0, 3.0]));
            assert_eq!(c, None);
        }
    }
}

#[test]
fn shards_cover_the_batch() {
    for (len, world) in [(8, 2), (8, 4), (10, 4), (3, 4)] {
        let ranges: Vec<_> = (0..world).map(|r| shard_range(len, r, world)).collect();
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges[world - 1].end, len);
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        assert!(ranges.iter().all(|r| r.len() == len / world || r.len() == len / world + 1));
    }
}
