//! NVTX ranges: named spans of host time that Nsight Systems draws on its timeline above the
//! GPU work they launched (forward, backward, optimiser step, rollout, tool calls).
//!
//! Ranges are recorded only while a profiler listens: Nsight Systems sets
//! `NVTX_INJECTION64_PATH` in the profiled process, and `ARTIST_NVTX=1` forces them on. Then
//! `libnvToolsExt.so.1` or `libnvtx3interop.so.1` is loaded (from the loader's paths or where
//! the CUDA libraries are looked for: pip's `nvidia-nvtx` carries the latter), and each
//! [`range`] is an `nvtxRangePushA`/`nvtxRangePop` pair on the calling thread. Otherwise a
//! range costs one atomic load.

use std::ffi::{CString, c_char, c_int};
use std::sync::OnceLock;

type PushFn = unsafe extern "C" fn(*const c_char) -> c_int;
type PopFn = unsafe extern "C" fn() -> c_int;

struct Nvtx {
    push: PushFn,
    pop: PopFn,
}

fn nvtx() -> Option<&'static Nvtx> {
    static NVTX: OnceLock<Option<Nvtx>> = OnceLock::new();
    NVTX.get_or_init(|| {
        let wanted =
            std::env::var_os("NVTX_INJECTION64_PATH").is_some() || std::env::var("ARTIST_NVTX").is_ok_and(|v| v == "1");
        if !wanted {
            return None;
        }
        // libnvToolsExt (CUDA toolkits, older wheels) or libnvtx3interop (NVTX 3 as a
        // shared library: pip's nvidia-nvtx); both export the same calls.
        const LIBS: [&str; 2] = ["libnvToolsExt.so.1", "libnvtx3interop.so.1"];
        let mut names: Vec<String> = LIBS.iter().map(|s| s.to_string()).collect();
        for dir in crate::cuda::libs::search_dirs() {
            names.extend(LIBS.iter().map(|l| dir.join(l).to_string_lossy().into_owned()));
        }
        for name in names {
            let Ok(c) = CString::new(name) else { continue };
            // SAFETY: dlopen/dlsym with valid C strings; the library stays loaded for the
            // life of the process, so the function pointers stay valid.
            unsafe {
                let h = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
                if h.is_null() {
                    continue;
                }
                let push = libc::dlsym(h, c"nvtxRangePushA".as_ptr());
                let pop = libc::dlsym(h, c"nvtxRangePop".as_ptr());
                if push.is_null() || pop.is_null() {
                    continue;
                }
                return Some(Nvtx {
                    push: std::mem::transmute::<*mut libc::c_void, PushFn>(push),
                    pop: std::mem::transmute::<*mut libc::c_void, PopFn>(pop),
                });
            }
        }
        eprintln!("NVTX ranges requested but neither {} was found: the timeline will have none", LIBS.join(" nor "));
        None
    })
    .as_ref()
}

/// Whether ranges are being recorded.
pub fn enabled() -> bool {
    nvtx().is_some()
}

/// A range that ends when dropped (on the thread that opened it).
#[must_use = "the range ends when this guard is dropped"]
pub struct Range {
    open: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Range {
    fn drop(&mut self) {
        if self.open
            && let Some(n) = nvtx()
        {
            // SAFETY: pops the range this guard pushed, on the same thread.
            unsafe { (n.pop)() };
        }
    }
}

/// Opens a range named `name` until the guard is dropped:
/// `let _r = artist_tensor::nvtx::range("backward");`.
pub fn range(name: &str) -> Range {
    let open = match nvtx() {
        Some(n) => match CString::new(name) {
            Ok(c) => {
                // SAFETY: a valid C string, copied by NVTX before the call returns.
                unsafe { (n.push)(c.as_ptr()) };
                true
            }
            Err(_) => false,
        },
        None => false,
    };
    Range { open, _not_send: std::marker::PhantomData }
}
