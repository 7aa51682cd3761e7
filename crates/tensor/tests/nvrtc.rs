//! Every kernel file compiles with NVRTC, with no warnings, to machine code for the GPUs we
//! train on (sm_80: A100, sm_90 and sm_90a: H100/H200), and exports every kernel the backend launches.
//!
//! Needs no GPU, only libnvrtc (CI installs it from pip and sets `ARTIST_REQUIRE_NVRTC=1`, so
//! its absence fails there; elsewhere the test says why it skips).

use artist_tensor::cuda::{self, nvrtc};

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if !nvrtc::available() {
        let msg = "libnvrtc was not found (set ARTIST_CUDA_LIBS to the folder holding libnvrtc.so.12 or .13)";
        if std::env::var("ARTIST_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("skipping: {msg}");
        return;
    }
    let (major, minor) = nvrtc::version().unwrap();
    let archs = nvrtc::supported_archs().unwrap();
    eprintln!("NVRTC {major}.{minor}, architectures {archs:?}");
    let inventory = cuda::kernel_inventory();
    let files = cuda::kernel_files();
    for (file, _) in &inventory {
        assert!(files.contains(file), "the backend launches from kernels/{file}.cu, which does not exist");
    }
    // Every file for every target, and PTX (the fallback for GPUs newer than this NVRTC
    // knows), compiled on all cores: separate NVRTC programs compile independently.
    let jobs: Vec<(&str, &str)> =
        files.iter().flat_map(|f| ["sm_80", "sm_90", "sm_90a", "compute_80"].map(|t| (*f, t))).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len());
    let images: Vec<Vec<_>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(file, target)) = jobs.get(i) else { return done };
                        done.push((file, target, nvrtc::compile(file, target)));
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a compile thread panicked")).collect()
    });
    let mut images: Vec<_> = images.into_iter().flatten().collect();
    images.sort_by_key(|(file, target, _)| (*file, *target));
    assert_eq!(images.len(), jobs.len());
    for (file, target, image) in images {
        let image = image.unwrap_or_else(|e| panic!("{e}"));
        if target.starts_with("compute_") {
            assert!(!image.cubin && image.bytes.starts_with(b"//"), "kernels/{file}.cu: PTX output expected");
            continue;
        }
        assert!(image.cubin && !image.bytes.is_empty());
        assert!(image.log.is_empty(), "kernels/{file}.cu for {target} compiled with warnings:\n{}", image.log);
        // Each exported kernel's name is in the CUBIN's symbol table.
        for (_, name) in inventory.iter().filter(|(f, _)| *f == file) {
            let sym = format!("{name}\0");
            assert!(
                image.bytes.windows(sym.len()).any(|w| w == sym.as_bytes()),
                "kernels/{file}.cu built for {target} has no kernel {name}"
            );
        }
    }
}

/// The Hopper attention kernels hold warpgroup MMAs where the backend builds for Hopper
/// (sm_90a: both shapes, both operand layouts, A from registers and from shared memory, with
/// their fence, commit and wait), and only
/// a trap elsewhere, where the backend never launches them.
#[test]
fn wgmma_is_built_for_sm90a_only() {
    if !nvrtc::available() {
        assert!(!std::env::var("ARTIST_REQUIRE_NVRTC").is_ok_and(|v| v == "1"), "libnvrtc was not found");
        eprintln!("skipping: libnvrtc was not found");
        return;
    }
    let ptx = |target: &str| {
        let image = nvrtc::compile("attention", target).unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8(image.bytes).unwrap()
    };
    let hopper = ptx("compute_90a");
    for needle in [
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16",
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16",
        "wgmma.fence.sync.aligned",
        "wgmma.commit_group.sync.aligned",
        "wgmma.wait_group.sync.aligned",
        "fence.proxy.async.shared::cta",
    ] {
        assert!(hopper.contains(needle), "attention.cu for compute_90a has no `{needle}`");
    }
    // Both layouts of B: imm-trans-b 0 (K for the scores) and 1 (V).
    assert!(hopper.contains("p, 1, 1, 0;") && hopper.contains("p, 1, 1, 1;"), "one wgmma layout is missing");
    // A from shared memory too, both operands K-major (K and V in the dK/dV pass).
    assert!(hopper.contains("p, 1, 1, 0, 0;"), "the shared-memory A operand's wgmma is missing");
    assert!(!ptx("compute_90").contains("wgmma.mma_async"), "attention.cu for compute_90 holds wgmma");
}

#[test]
fn compile_errors_name_the_file() {
    if !nvrtc::available() {
        return;
    }
    let err = nvrtc::compile("no_such_file", "sm_90").unwrap_err().to_string();
    assert!(err.contains("no_such_file"), "{err}");
}
