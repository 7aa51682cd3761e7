//! Every kernel file compiles with NVRTC, with no warnings, to machine code for the GPUs we
//! train on (sm_80: A100, sm_90: H100/H200), and exports every kernel the backend launches.
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
    for file in files {
        for target in ["sm_80", "sm_90"] {
            let image = nvrtc::compile(file, target).unwrap_or_else(|e| panic!("{e}"));
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
        // And PTX, the fallback for GPUs newer than this NVRTC knows.
        let ptx = nvrtc::compile(file, "compute_80").unwrap_or_else(|e| panic!("{e}"));
        assert!(!ptx.cubin && ptx.bytes.starts_with(b"//"), "kernels/{file}.cu: PTX output expected");
    }
}

#[test]
fn compile_errors_name_the_file() {
    if !nvrtc::available() {
        return;
    }
    let err = nvrtc::compile("no_such_file", "sm_90").unwrap_err().to_string();
    assert!(err.contains("no_such_file"), "{err}");
}
