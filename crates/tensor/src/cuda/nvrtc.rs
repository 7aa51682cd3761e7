//! Compiling `kernels/*.cu` with NVRTC at run time, for the GPU found then.
//!
//! Each file is compiled with `kernels/common.cuh` in front of it (see that header). For a
//! GPU whose architecture this NVRTC knows, the result is machine code (CUBIN) for exactly
//! that architecture, which the driver loads without a JIT step; otherwise PTX for the
//! newest architecture NVRTC knows that the GPU can run, which the driver compiles on load.
//! Compiled images are cached on disk (see [`cache_dir`]) keyed by source, architecture and
//! NVRTC version, so only the first run on a machine pays for compilation.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::PathBuf;

use cudarc::nvrtc::sys;

use crate::cuda::kernels::{COMMON, SOURCES};
use crate::cuda::libs;
use crate::{Error, Result};

/// A compiled kernel file.
#[derive(Debug, Clone)]
pub struct Image {
    /// CUBIN bytes, or PTX text with a trailing NUL.
    pub bytes: Vec<u8>,
    pub cubin: bool,
    /// What the compiler printed (warnings), if anything.
    pub log: String,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Cuda { op: "nvrtc", msg: msg.into() }
}

/// Whether NVRTC can be loaded (from the loader's paths or a known place; see `libs`).
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    libs::ensure("nvrtc").is_some() && unsafe { sys::is_culib_present() }
}

/// NVRTC's `(major, minor)` version.
pub fn version() -> Result<(i32, i32)> {
    if !available() {
        return Err(err("libnvrtc was not found (see docs/CUDA.md on where it is looked for)"));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    check(unsafe { sys::nvrtcVersion(&mut major, &mut minor) }, "nvrtcVersion")?;
    Ok((major, minor))
}

/// The architectures this NVRTC can compile for, as numbers (`90` for sm_90).
pub fn supported_archs() -> Result<Vec<i32>> {
    version()?;
    let mut n: c_int = 0;
    // SAFETY: out-parameter, then a buffer of the size it reported.
    unsafe {
        check(sys::nvrtcGetNumSupportedArchs(&mut n), "nvrtcGetNumSupportedArchs")?;
        let mut archs = vec![0 as c_int; n.max(0) as usize];
        check(sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()), "nvrtcGetSupportedArchs")?;
        Ok(archs)
    }
}

fn check(r: sys::nvrtcResult, what: &str) -> Result<()> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        return Ok(());
    }
    // SAFETY: nvrtcGetErrorString returns a static C string.
    let s = unsafe { CStr::from_ptr(sys::nvrtcGetErrorString(r)) }.to_string_lossy().into_owned();
    Err(err(format!("{what}: {s}")))
}

/// The full text NVRTC compiles for `module`: the common header, then the file.
pub fn full_source(module: &str) -> Result<String> {
    let src = SOURCES
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, s)| *s)
        .ok_or_else(|| err(format!("no kernel file kernels/{module}.cu")))?;
    Ok(format!("{COMMON}\n#line 1 \"{module}.cu\"\n{src}"))
}

/// Compiles kernel file `module` for `target`: `"sm_90"` gives CUBIN, `"compute_90"` PTX.
pub fn compile(module: &str, target: &str) -> Result<Image> {
    version()?;
    let source = CString::new(full_source(module)?).map_err(|_| err("kernel source holds a NUL byte"))?;
    let name = CString::new(format!("{module}.cu")).expect("no NUL in a file name");
    let opts: Vec<CString> = [format!("--gpu-architecture={target}"), "-std=c++17".into(), "-lineinfo".into()]
        .into_iter()
        .map(|o| CString::new(o).expect("no NUL in options"))
        .collect();
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings that outlive the program; the program is destroyed below.
    unsafe {
        check(
            sys::nvrtcCreateProgram(&mut prog, source.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()),
            "nvrtcCreateProgram",
        )?;
        let compiled = sys::nvrtcCompileProgram(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
        let log = program_log(prog);
        let result = if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
            let status = check(compiled, "nvrtcCompileProgram").err().map(|e| e.to_string()).unwrap_or_default();
            Err(err(format!("kernels/{module}.cu for {target}: {status}\n{log}")))
        } else if target.starts_with("sm_") {
            let mut size = 0usize;
            check(sys::nvrtcGetCUBINSize(prog, &mut size), "nvrtcGetCUBINSize").and_then(|_| {
                let mut bytes = vec![0u8; size];
                check(sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr() as *mut c_char), "nvrtcGetCUBIN").map(|_| Image {
                    bytes,
                    cubin: true,
                    log: log.clone(),
                })
            })
        } else {
            let mut size = 0usize;
            check(sys::nvrtcGetPTXSize(prog, &mut size), "nvrtcGetPTXSize").and_then(|_| {
                let mut bytes = vec![0u8; size];
                check(sys::nvrtcGetPTX(prog, bytes.as_mut_ptr() as *mut c_char), "nvrtcGetPTX").map(|_| Image {
                    bytes,
                    cubin: false,
                    log: log.clone(),
                })
            })
        };
        sys::nvrtcDestroyProgram(&mut prog);
        result
    }
}

unsafe fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut size = 0usize;
    // SAFETY (caller): `prog` is a live program.
    unsafe {
        if sys::nvrtcGetProgramLogSize(prog, &mut size) != sys::nvrtcResult::NVRTC_SUCCESS || size <= 1 {
            return String::new();
        }
        let mut buf = vec![0u8; size];
        if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut c_char) != sys::nvrtcResult::NVRTC_SUCCESS {
            return String::new();
        }
        String::from_utf8_lossy(&buf[..size - 1]).trim().to_string()
    }
}

/// How to build kernels for a GPU of compute capability `cc`: CUBIN for it when NVRTC knows
/// the architecture, else PTX for the newest one NVRTC knows below it. Compute capability
/// 9.0 gets `sm_90a`, Hopper's architecture-specific target, which adds the warpgroup MMA
/// (`wgmma`) the Hopper attention kernel uses; its CUBIN runs on 9.0 GPUs only, which is
/// all it is built for.
pub fn target_for(cc: (u32, u32)) -> Result<String> {
    let want = (cc.0 * 10 + cc.1) as i32;
    let archs = supported_archs()?;
    if archs.contains(&want) {
        // sm_90a came with NVRTC 12.0 (11.8 knows sm_90 only).
        let hopper = want == 90 && version()?.0 >= 12;
        return Ok(if hopper { "sm_90a".into() } else { format!("sm_{want}") });
    }
    match archs.iter().copied().filter(|&a| a <= want).max() {
        Some(a) => Ok(format!("compute_{a}")),
        None => Err(err(format!("this NVRTC supports none of the architectures up to sm_{want}: {archs:?}"))),
    }
}

/// Where compiled images are kept: `ARTIST_KERNEL_CACHE`, else `$XDG_CACHE_HOME/artist/kernels`,
/// else `~/.cache/artist/kernels`. `ARTIST_KERNEL_CACHE=off` turns the cache off.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var("ARTIST_KERNEL_CACHE") {
        Ok(v) if v == "off" || v.is_empty() => return None,
        Ok(v) => return Some(PathBuf::from(v)),
        Err(_) => {}
    }
    if let Ok(x) = std::env::var("XDG_CACHE_HOME")
        && !x.is_empty()
    {
        return Some(PathBuf::from(x).join("artist/kernels"));
    }
    std::env::var("HOME").ok().filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cache/artist/kernels"))
}

/// 64-bit FNV-1a: a stable key for the disk cache.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// [`compile`] through the disk cache.
pub fn compile_cached(module: &str, target: &str) -> Result<Image> {
    let (major, minor) = version()?;
    let source = full_source(module)?;
    let key = fnv1a(&[source.as_bytes(), target.as_bytes(), format!("{major}.{minor}").as_bytes()]);
    let file = cache_dir().map(|d| {
        d.join(format!("{module}-{target}-{key:016x}.{}", if target.starts_with("sm_") { "cubin" } else { "ptx" }))
    });
    if let Some(f) = &file
        && let Ok(bytes) = std::fs::read(f)
        && !bytes.is_empty()
    {
        return Ok(Image { bytes, cubin: target.starts_with("sm_"), log: String::new() });
    }
    let image = compile(module, target)?;
    if let Some(f) = &file
        && let Some(dir) = f.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        // Written under a temporary name and renamed: a concurrent reader never sees half a file.
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &image.bytes).is_ok() {
            let _ = std::fs::rename(&tmp, f);
        }
    }
    Ok(image)
}
