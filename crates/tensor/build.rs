//! Embeds the CUDA sources under the workspace's `kernels/` (`common.cuh` and every `*.cu`)
//! for NVRTC, and, with the `emulator` feature, compiles them as C++ together with the
//! emulator's runtime (emulator/) into a static library, so the CUDA backend's kernels run
//! on the CPU in tests.

use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let kernels = manifest.join("../../kernels");
    println!("cargo::rerun-if-changed={}", kernels.display());
    println!("cargo::rerun-if-changed={}", manifest.join("emulator").display());
    let mut files: Vec<PathBuf> =
        fs::read_dir(&kernels).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    files.sort();
    let common = fs::canonicalize(kernels.join("common.cuh")).expect("kernels/common.cuh exists");

    let mut out = String::new();
    out.push_str("/// `kernels/common.cuh`, put in front of every kernel file.\n");
    out.push_str(&format!("pub const COMMON: &str = include_str!({:?});\n", common.display().to_string()));
    out.push_str("/// `(file stem, CUDA C source)` of every `kernels/*.cu`, sorted by name.\n");
    out.push_str("pub const SOURCES: &[(&str, &str)] = &[\n");
    for p in &files {
        let stem = p.file_stem().and_then(|s| s.to_str()).expect("kernel file names are UTF-8");
        let abs = fs::canonicalize(p).expect("kernel file exists");
        out.push_str(&format!("    ({stem:?}, include_str!({:?})),\n", abs.display().to_string()));
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out_dir.join("kernels.rs"), out).expect("OUT_DIR is writable");

    if env::var_os("CARGO_FEATURE_EMULATOR").is_some() {
        emulator(&manifest, &common, &files, &out_dir);
    }
}

#[cfg(feature = "emulator")]
fn emulator(manifest: &Path, common: &Path, files: &[PathBuf], out_dir: &Path) {
    // One translation unit: the emulator's CUDA surface, the common header, each kernel file
    // in a namespace of its own (their helpers may share names), then the runtime, whose
    // entry points pull the kernels' static registrations into the link.
    let emu = fs::canonicalize(manifest.join("emulator")).expect("emulator/ exists");
    let mut tu = String::new();
    tu.push_str(&format!("#include {:?}\n", emu.join("emu.hpp").display().to_string()));
    tu.push_str(&format!("#include {:?}\n", common.display().to_string()));
    for p in files {
        let stem = p.file_stem().and_then(|s| s.to_str()).expect("UTF-8 file name");
        let abs = fs::canonicalize(p).expect("kernel file exists");
        tu.push_str(&format!("namespace artist_kernel_{stem} {{\n#include {:?}\n}}\n", abs.display().to_string()));
    }
    // The emulator's own test kernels (`emu_selftest_*`).
    tu.push_str(&format!(
        "namespace artist_emulator_selftest {{\n#include {:?}\n}}\n",
        emu.join("selftest.cuh").display().to_string()
    ));
    tu.push_str(&format!("#include {:?}\n", emu.join("runtime.cpp").display().to_string()));
    let file = out_dir.join("artist_emulator.cpp");
    fs::write(&file, tu).expect("OUT_DIR is writable");
    cc::Build::new()
        .cpp(true)
        .file(&file)
        .define("ARTIST_EMULATOR", "1")
        .flag("-std=c++17")
        .flag("-ffp-contract=off")
        .flag("-fno-strict-aliasing")
        .warnings(true)
        .extra_warnings(false)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-unused-function")
        .flag_if_supported("-Wno-unused-variable")
        .flag_if_supported("-Wno-unknown-pragmas")
        .opt_level(2)
        .compile("artist_cuda_emulator");
}

#[cfg(not(feature = "emulator"))]
fn emulator(_: &Path, _: &Path, _: &[PathBuf], _: &Path) {}
