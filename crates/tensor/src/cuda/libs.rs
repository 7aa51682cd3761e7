//! Finding NVRTC and cuBLAS on a machine that may have no CUDA toolkit: a binary built
//! elsewhere is carried to a GPU host whose libraries sit in Python wheels
//! (`site-packages/nvidia/*/lib`, as PyTorch installs them) or under `/usr/local/cuda`.
//!
//! cudarc loads libraries by name through the dynamic loader (`libnvrtc.so.13`, `.12`, ...),
//! which finds only what `LD_LIBRARY_PATH` and the system paths hold. When that fails, this
//! module looks in the usual places and loads the library by its full path with
//! `RTLD_GLOBAL`; the loader then answers cudarc's later request by name (it matches the
//! library's soname) from the copy already loaded.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Major versions tried, newest first (the GPU hosts carry CUDA 13).
const MAJORS: [&str; 2] = ["13", "12"];

/// Whether `lib` ("nvrtc", "cublas", "cublasLt") can be loaded, loading it from a known
/// place if the dynamic loader cannot find it by name. The path used is remembered.
pub(crate) fn ensure(lib: &str) -> Option<String> {
    static FOUND: Mutex<Vec<(String, Option<String>)>> = Mutex::new(Vec::new());
    let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = found.iter().find(|(l, _)| l == lib) {
        return r.clone();
    }
    let r = locate(lib);
    found.push((lib.to_string(), r.clone()));
    r
}

fn locate(lib: &str) -> Option<String> {
    for major in MAJORS {
        let name = format!("lib{lib}.so.{major}");
        if dlopen(&name) {
            return Some(name);
        }
    }
    if dlopen(&format!("lib{lib}.so")) {
        return Some(format!("lib{lib}.so"));
    }
    for dir in search_dirs() {
        for major in MAJORS {
            let p = dir.join(format!("lib{lib}.so.{major}"));
            if p.is_file() {
                preload_companions(&dir, lib);
                if dlopen(&p.to_string_lossy()) {
                    return Some(p.to_string_lossy().into_owned());
                }
            }
        }
    }
    None
}

/// Libraries that `lib` itself opens by name at run time, loaded from `dir` first: NVRTC
/// opens `libnvrtc-builtins.so.<major>.<minor>` on its first compile, which the loader finds
/// only if `dir` is on its path or in NVRTC's RUNPATH (some wheels have none).
fn preload_companions(dir: &Path, lib: &str) {
    let prefix = format!("lib{lib}-builtins.so");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            dlopen(&e.path().to_string_lossy());
        }
    }
}

fn dlopen(name: &str) -> bool {
    let Ok(c) = CString::new(name) else { return false };
    // SAFETY: dlopen with a valid C string; the handle is deliberately never closed so the
    // library stays loaded for cudarc to find by name.
    !unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.is_null()
}

/// Directories that may hold CUDA libraries, most specific first: `ARTIST_CUDA_LIBS`
/// (colon-separated), the toolkit named by `CUDA_HOME`/`CUDA_PATH`, `/usr/local/cuda`, and
/// the `nvidia/*/lib` folders of Python environments (virtualenvs, `PYTHONPATH`, the
/// system's and the user's site-packages, `/opt/*/.venv`, conda).
pub(crate) fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(v) = std::env::var("ARTIST_CUDA_LIBS") {
        dirs.extend(v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(v) = std::env::var(var) {
            dirs.push(Path::new(&v).join("lib64"));
            dirs.push(Path::new(&v).join("lib"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.push("/usr/local/cuda/targets/x86_64-linux/lib".into());
    let mut sites: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Ok(v) = std::env::var(var) {
            sites.extend(glob_dirs(&Path::new(&v).join("lib"), "python3", &["site-packages"]));
        }
    }
    if let Ok(v) = std::env::var("PYTHONPATH") {
        sites.extend(v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let mut roots: Vec<PathBuf> = vec!["/usr/lib".into(), "/usr/local/lib".into(), "/opt/conda/lib".into()];
    if !home.is_empty() {
        roots.push(Path::new(&home).join(".local/lib"));
    }
    if let Ok(opt) = std::fs::read_dir("/opt") {
        for e in opt.flatten() {
            roots.push(e.path().join(".venv/lib"));
            roots.push(e.path().join("lib"));
        }
    }
    for root in roots {
        sites.extend(glob_dirs(&root, "python3", &["site-packages", "dist-packages"]));
    }
    for site in sites {
        let nv = site.join("nvidia");
        if let Ok(entries) = std::fs::read_dir(&nv) {
            let mut libs: Vec<PathBuf> =
                entries.flatten().map(|e| e.path().join("lib")).filter(|p| p.is_dir()).collect();
            libs.sort();
            dirs.extend(libs);
        }
    }
    dirs
}

/// `root/<name starting with prefix>/<leaf>` for each leaf that exists.
fn glob_dirs(root: &Path, prefix: &str, leaves: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect();
        names.sort();
        for n in names.into_iter().rev() {
            for leaf in leaves {
                let p = n.join(leaf);
                if p.is_dir() {
                    out.push(p);
                }
            }
        }
    }
    out
}
