//! The NCCL communicator. Everywhere: libnccl is found or its absence is explained, bad
//! arguments and machines without a GPU are errors, never panics. Where a GPU and libnccl
//! are present (scripts/gpu_suite.sh): every collective against the in-process
//! communicator, a one-rank NCCL SFT run equal to the in-process one to the bit, a peer
//! that never comes timing out, and two GPUs summing when there are two.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use artist::tensor::cuda::{self, Backend};
use artist::tensor::{DType, Device, Tensor};
use artist_dist::{Communicator, InProcess, Nccl, Reduce};
use artist_model::Qwen2;
use artist_train::sft::{RunOptions, SftConfig, train_data_parallel};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Why the GPU tests cannot run here, or `None` when they can.
fn gpu_skip_reason() -> Option<String> {
    match cuda::test_backend() {
        Ok(Backend::Driver) => {}
        Ok(Backend::Emulator) => return Some("no GPU (the CUDA emulator cannot run NCCL)".into()),
        Err(e) => return Some(e),
    }
    Nccl::library().err().map(|e| e.to_string())
}

macro_rules! gpu_only {
    () => {
        if let Some(why) = gpu_skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        eprintln!("{}", Nccl::library().unwrap());
    };
}

#[test]
fn libnccl_loads_or_the_error_says_where_it_was_looked_for() {
    match Nccl::library() {
        Ok(lib) => {
            eprintln!("{lib}");
            assert!(lib.starts_with("NCCL 2."), "{lib}");
            let (a, b) = (Nccl::unique_id().unwrap(), Nccl::unique_id().unwrap());
            assert_ne!(a, b, "two unique ids are the same");
            assert!(a.iter().any(|&x| x != 0));
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.contains("libnccl was not found") && msg.contains("ARTIST_NCCL_LIB"), "{msg}");
            assert!(Nccl::unique_id().is_err());
            assert!(!Nccl::usable(Device::Cuda(0)));
        }
    }
}

#[test]
fn bad_arguments_and_missing_gpus_are_errors() {
    let t = Duration::from_secs(2);
    let e = Nccl::with_id(&[1; 5], 0, 1, 0, t).err().expect("a 5-byte id is refused").to_string();
    assert!(e.contains("128 bytes"), "{e}");
    let e = Nccl::with_id(&[1; 128], 2, 2, 0, t).err().expect("rank 2 of 2 is refused").to_string();
    assert!(e.contains("rank 2 of a group of 2"), "{e}");
    assert!(!Nccl::usable(Device::Cpu));
    if gpu_skip_reason().is_some() {
        // No GPU (or no NCCL): joining is an error that says so, however the id was made.
        let id = Nccl::unique_id().map(|i| i.to_vec()).unwrap_or_else(|_| vec![0; 128]);
        let e = Nccl::with_id(&id, 0, 1, 0, t).err().expect("NCCL without a GPU is refused").to_string();
        eprintln!("{e}");
        assert!(!e.is_empty());
        assert!(!Nccl::usable(Device::Cuda(0)));
    }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

#[test]
fn one_rank_collectives_equal_the_in_process_ones() {
    gpu_only!();
    let dev = Device::Cuda(0);
    let mut nccl = Nccl::with_id(&Nccl::unique_id().unwrap(), 0, 1, 0, Duration::from_secs(60)).unwrap();
    let mut local = InProcess::group(1).pop().unwrap();

    // Host buffers.
    for n in [0, 1, 1000, 1 << 20] {
        let v = random(n, n as u64);
        let (mut a, mut b) = (v.clone(), v.clone());
        nccl.all_reduce_sum(&mut a).unwrap();
        local.all_reduce_sum(&mut b).unwrap();
        assert_eq!(a, b);
        nccl.all_reduce_mean(&mut a).unwrap();
        local.all_reduce_mean(&mut b).unwrap();
        assert_eq!(a, b);
        nccl.broadcast(&mut a, 0).unwrap();
        assert_eq!(a, b);
        assert_eq!(nccl.all_gather(&a).unwrap(), local.all_gather(&b).unwrap());
    }
    nccl.barrier().unwrap();
    assert!(nccl.broadcast(&mut [1.0], 1).is_err(), "root 1 of a group of 1");

    // Tensors on the GPU, reduced where they are.
    let v = random(4097, 9);
    let t = Tensor::from_vec(v.clone(), (17, 241), dev).unwrap();
    let before = cuda::launch_count(0).unwrap();
    nccl.all_reduce_tensor(&t, Reduce::Mean).unwrap();
    nccl.synchronize().unwrap();
    assert_eq!(cuda::launch_count(0).unwrap(), before, "a one-rank mean needs no kernel of ours");
    assert_eq!(t.to_vec::<f32>().unwrap(), v);

    // Broadcast in each dtype, and of tensors not on this GPU (through the host).
    let bf = Tensor::from_vec(v.clone(), 4097, dev).unwrap().to_dtype(DType::BF16).unwrap();
    let host = Tensor::from_vec(v.clone(), 4097, Device::Cpu).unwrap();
    let want_bf = bf.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
    nccl.broadcast_tensors(&[&bf, &t], 0).unwrap();
    nccl.broadcast_tensors(&[&host], 0).unwrap();
    nccl.synchronize().unwrap();
    assert_eq!(bf.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(), want_bf);
    assert_eq!(host.to_vec::<f32>().unwrap(), v);
}

#[test]
fn a_peer_that_never_comes_times_out_and_aborts() {
    gpu_only!();
    let start = Instant::now();
    let e = Nccl::with_id(&Nccl::unique_id().unwrap(), 0, 2, 0, Duration::from_secs(3))
        .err()
        .expect("a group of 2 with one rank cannot form");
    let waited = start.elapsed();
    eprintln!("after {waited:?}: {e}");
    assert!(e.to_string().contains("did not finish within 3s"), "{e}");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

#[test]
fn two_gpus_sum_like_the_in_process_group() {
    gpu_only!();
    let n = cuda::device_count().unwrap();
    if n < 2 {
        eprintln!("skipped: this machine has {n} GPU");
        return;
    }
    let id = Nccl::unique_id().unwrap();
    let v: Vec<Vec<f32>> = (0..2).map(|r| random(1 << 16, r)).collect();
    let got: Vec<Vec<f32>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let (id, v) = (&id, &v);
                s.spawn(move || {
                    let mut c = Nccl::with_id(id, r, 2, r, Duration::from_secs(60)).unwrap();
                    let t = Tensor::from_vec(v[r].clone(), v[r].len(), Device::Cuda(r)).unwrap();
                    c.all_reduce_tensor(&t, Reduce::Sum).unwrap();
                    c.synchronize().unwrap();
                    t.to_vec::<f32>().unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Two addends: a + b whichever order NCCL takes.
    let want: Vec<f32> = v[0].iter().zip(&v[1]).map(|(a, b)| a + b).collect();
    assert_eq!(got[0], want);
    assert_eq!(got[1], want);
}

/// The check: a one-rank NCCL run matches the in-process run (the same bits: one
/// rank's all-reduce changes nothing, whichever communicator).
#[test]
fn one_rank_sft_on_nccl_equals_the_in_process_run() {
    gpu_only!();
    let tmp = tempfile::tempdir().unwrap();
    let config = SftConfig {
        model: fixtures().join("qwen2/tiny-gqa"),
        data: fixtures().join("training/sft/gqa-cosine/data.jsonl"),
        steps: 3,
        batch_size: 4,
        micro_batch_size: 1,
        lr: 3e-3,
        grad_clip: 1.0,
        weight_decay: 0.1,
        seed: 7,
        ..SftConfig::default()
    };
    let opts = RunOptions { resume: false, progress: false, stop_after: None, device: Device::Cuda(0) };
    let mut nccl = Nccl::with_id(&Nccl::unique_id().unwrap(), 0, 1, 0, Duration::from_secs(120)).unwrap();
    let a = train_data_parallel(&tmp.path().join("nccl"), config.clone(), &opts, &mut nccl).unwrap();
    let mut local = InProcess::group(1).pop().unwrap();
    let b = train_data_parallel(&tmp.path().join("local"), config, &opts, &mut local).unwrap();
    let w = |d: &Path| -> Vec<Vec<f32>> {
        Qwen2::load(d).unwrap().params().iter().map(|p| p.value().to_vec::<f32>().unwrap()).collect()
    };
    let (wa, wb) = (w(&a.final_model), w(&b.final_model));
    assert_eq!(wa.len(), wb.len());
    for (i, (x, y)) in wa.iter().zip(&wb).enumerate() {
        assert!(x == y, "parameter {i} differs between the NCCL and the in-process run");
    }
}
