//! Embeds the CUDA C sources under `kernels/` into the binary (`artist::kernels::SOURCES`),
//! so a binary built on a machine without CUDA carries every kernel to a GPU machine, where
//! NVRTC compiles them for the device it finds (see docs/ARCHITECTURE.md, "Kernels").

use std::{env, fs, path::Path};

fn main() {
    println!("cargo::rerun-if-changed=kernels");
    let mut entries: Vec<_> =
        fs::read_dir("kernels").map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    entries.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    entries.sort();
    let mut out = String::from("/// `(file stem, CUDA C source)` of every `kernels/*.cu`, sorted by name.\n");
    out.push_str("pub const SOURCES: &[(&str, &str)] = &[\n");
    for p in &entries {
        let stem = p.file_stem().and_then(|s| s.to_str()).expect("kernel file names are UTF-8");
        let abs = fs::canonicalize(p).expect("kernel file exists");
        out.push_str(&format!("    ({stem:?}, include_str!({:?})),\n", abs.display().to_string()));
    }
    out.push_str("];\n");
    let dest = Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.rs");
    fs::write(dest, out).expect("OUT_DIR is writable");
}
