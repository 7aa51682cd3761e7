//! The gradient all-reduce: measured for the communicators that exist (threads in one
//! process, TCP between ranks on localhost through rank 0's star and around the ring),
//! and modelled for NCCL on 8 GPUs, where a 7B
//! model's gradients meet NCCL's published ring bus bandwidth and the backward pass that
//! can hide them.
//!
//!     cargo bench --bench allreduce -- [--mib 64] [--ranks 2,4] [--iters 5]
//!         [--bus-gbs 370] [--gpus 8] [--params 7.62e9] [--tokens-per-gpu 16384] [--tflops 400]
//!
//! Prints one JSON line per measurement (an all-reduce, then a broadcast from rank 0, each
//! timed with a barrier after it) and one for the model. Bandwidths follow NCCL's
//! convention: algorithm bandwidth = bytes / time, bus bandwidth = algorithm bandwidth x
//! 2 (n - 1) / n for an all-reduce (what each rank's links carry in a ring) and x 1 for a
//! broadcast, so figures compare across n.

use std::time::{Duration, Instant};

use artist_dist::{Communicator, DEFAULT_BUCKET_ELEMS, DistEnv, EnvSource, InProcess, TcpComm};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
}

/// Seconds per all-reduce (then per broadcast from rank 0) of `elems` f32 on each of the
/// communicators, rank 0's view; each collective ends with a barrier, since a broadcast's
/// root may return before the others have its values.
fn time_ranks(comms: Vec<Box<dyn Communicator>>, elems: usize, iters: usize) -> (f64, f64) {
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut c| {
                s.spawn(move || {
                    let mut buf = vec![1.0f32; elems];
                    let mut time = |c: &mut Box<dyn Communicator>, broadcast: bool| {
                        let mut run = |c: &mut Box<dyn Communicator>| {
                            if broadcast { c.broadcast(&mut buf, 0) } else { c.all_reduce_sum(&mut buf) }
                                .expect("collective");
                            c.barrier().expect("barrier");
                        };
                        run(c); // warm-up
                        let t = Instant::now();
                        for _ in 0..iters {
                            run(c);
                        }
                        t.elapsed().as_secs_f64() / iters as f64
                    };
                    (time(&mut c, false), time(&mut c, true))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).next().unwrap_or((0.0, 0.0))
    })
}

/// NCCL's convention: algorithm bandwidth = bytes / time; bus bandwidth = algorithm
/// bandwidth x 2 (n - 1) / n for an all-reduce, x 1 for a broadcast.
fn report(kind: &str, n: usize, bytes: f64, (reduce, bcast): (f64, f64)) {
    for (collective, s, factor) in [("all_reduce", reduce, 2.0 * (n - 1) as f64 / n as f64), ("broadcast", bcast, 1.0)]
    {
        let alg = bytes / s / 1e9;
        println!(
            "{}",
            serde_json::json!({
                "communicator": kind, "collective": collective, "ranks": n, "mib": bytes / (1 << 20) as f64,
                "seconds": s, "algbw_gbs": alg, "busbw_gbs": alg * factor,
            })
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: f64 = arg("--mib", "64").parse()?;
    let iters: usize = arg("--iters", "5").parse()?;
    let ranks: Vec<usize> = arg("--ranks", "2,4").split(',').map(str::parse).collect::<Result<_, _>>()?;
    let elems = (mib * (1 << 20) as f64 / 4.0) as usize;
    let bytes = (elems * 4) as f64;
    for (i, &n) in ranks.iter().enumerate() {
        let comms: Vec<Box<dyn Communicator>> =
            InProcess::group(n).into_iter().map(|c| Box::new(c) as Box<dyn Communicator>).collect();
        report("in-process", n, bytes, time_ranks(comms, elems, iters));
        for (j, ring) in [false, true].into_iter().enumerate() {
            let port = 29_611 + (2 * i + j) as u16;
            let comms: Vec<Box<dyn Communicator>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..n)
                    .map(|rank| {
                        s.spawn(move || {
                            let env = DistEnv {
                                rank,
                                world_size: n,
                                local_rank: rank,
                                master_addr: "127.0.0.1".into(),
                                master_port: port,
                                source: EnvSource::Torchrun,
                            };
                            let mut c = TcpComm::connect(&env, Duration::from_secs(60))?;
                            if !ring {
                                c.set_ring_threshold(None);
                            }
                            Ok::<_, artist_dist::Error>(Box::new(c) as Box<dyn Communicator>)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("rank thread")).collect::<Result<_, _>>()
            })?;
            let kind = if ring { "tcp (ring, localhost)" } else { "tcp (star through rank 0, localhost)" };
            report(kind, n, bytes, time_ranks(comms, elems, iters));
        }
    }

    // The model: ring all-reduce of a 7B model's gradients on NCCL, against its backward.
    let bus: f64 = arg("--bus-gbs", "370").parse()?;
    let gpus: f64 = arg("--gpus", "8").parse()?;
    let params: f64 = arg("--params", "7.62e9").parse()?;
    let tokens: f64 = arg("--tokens-per-gpu", "16384").parse()?;
    let tflops: f64 = arg("--tflops", "400").parse()?;
    let ring = 2.0 * (gpus - 1.0) / gpus;
    let allreduce = |bytes_per: f64| params * bytes_per * ring / (bus * 1e9);
    let backward = 4.0 * params * tokens / (tflops * 1e12); // 2x the forward's 2 N per token
    let bucket = DEFAULT_BUCKET_ELEMS as f64 * 4.0;
    // With buckets all-reduced as backward produces them, all but the last bucket's
    // transfer overlaps compute (while the transfer is shorter than backward).
    let exposed = |total: f64| if total <= backward { bucket * ring / (bus * 1e9) } else { total - backward };
    let (f32_s, bf16_s) = (allreduce(4.0), allreduce(2.0));
    println!(
        "{}",
        serde_json::json!({
            "model": "ring all-reduce on NCCL (bus bandwidth as published), bucketed and overlapped with backward",
            "gpus": gpus, "bus_gbs": bus, "params": params, "tokens_per_gpu": tokens, "achieved_tflops": tflops,
            "allreduce_f32_s": f32_s, "allreduce_bf16_s": bf16_s, "backward_s": backward,
            "bucket_mib": bucket / (1 << 20) as f64,
            "exposed_f32_s": exposed(f32_s), "exposed_bf16_s": exposed(bf16_s),
            "hidden_fraction_f32": 1.0 - exposed(f32_s) / f32_s,
        })
    );
    Ok(())
}
