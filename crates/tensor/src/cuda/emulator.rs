//! The CPU emulator as a runtime: "device memory" is host memory, kernels are the same
//! `kernels/*.cu` sources compiled as C++ at build time (crates/tensor/emulator/) and run by
//! its fiber scheduler, and matrix products follow cuBLAS's column-major definition in plain
//! Rust. Every CUDA op's host code (launch configurations, argument lists, strides, the
//! mapping of row-major tensors onto cuBLAS) and kernel logic is exercised this way on
//! machines without a GPU; only the GPU's own compiler and hardware are left for a GPU run.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::Mutex;

use half::{bf16, f16};

use crate::cuda::runtime::{Args, DeviceInfo, Gemm, Kernel, LaunchCfg, Runtime};
use crate::{DType, Error, Result};

unsafe extern "C" {
    fn artist_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        smem: u32,
        args: *mut *mut c_void,
        sizes: *const usize,
        nargs: usize,
        reverse: i32,
        timeout_s: f64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn artist_emu_set_eager_copies(eager: i32);
    fn artist_emu_kernel_count() -> usize;
    fn artist_emu_kernel_name(i: usize) -> *const c_char;
}

/// Every kernel of `kernels/*.cu` the emulator build holds, sorted by name (its own test
/// kernels, `emu_selftest_*`, left out).
pub fn kernel_names() -> Vec<String> {
    // SAFETY: the registry is filled by static initialisers before main and never changes;
    // names are NUL-terminated strings it owns.
    unsafe {
        (0..artist_emu_kernel_count())
            .filter_map(|i| {
                let p = artist_emu_kernel_name(i);
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            })
            .filter(|name| !name.starts_with("emu_selftest_"))
            .collect()
    }
}

/// Where the `cp.async` copies of kernels launched from this thread land: at once (`true`),
/// or at the wait that covers them (`false`, the default). A GPU lands them anywhere between,
/// so a pipelined kernel is right only if it is right both ways: the first catches a copy
/// issued into a buffer other warps still read, the second a tile read before its wait.
pub fn set_eager_copies(eager: bool) {
    // SAFETY: sets a thread-local flag of the emulator runtime.
    unsafe { artist_emu_set_eager_copies(eager as i32) }
}

/// The order the emulator runs the blocks of a grid, the warps of a block (between block
/// barriers) and the lanes of a warp (between warp barriers) in, one after another. A GPU
/// runs them in any order, or at once, so a kernel with a race (a read of what another
/// thread writes, or two writes to one place, with no barrier between) can give different
/// results in different orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// By ascending index (the default).
    Forward,
    /// By descending index.
    Reverse,
    /// Both: each launch runs forward, then again in reverse from the same memory, and the
    /// two must leave every buffer its arguments point into with the same bits, or the
    /// launch fails naming the kernel, the argument and the first byte that differs. Every
    /// kernel of the backend is deterministic (integer atomics only), so any difference is
    /// a race.
    Both,
}

impl std::str::FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Order, String> {
        match s {
            "forward" => Ok(Order::Forward),
            "reverse" => Ok(Order::Reverse),
            "both" => Ok(Order::Both),
            other => Err(format!("ARTIST_EMU_ORDER is {other:?}: it must be \"forward\", \"reverse\" or \"both\"")),
        }
    }
}

thread_local! {
    static THREAD_ORDER: std::cell::Cell<Option<Order>> = const { std::cell::Cell::new(None) };
}

/// The order of kernels launched from this thread, or `None` for the process's:
/// `ARTIST_EMU_ORDER` (`forward`, the default, `reverse` or `both`), read once.
pub fn set_order(order: Option<Order>) {
    THREAD_ORDER.with(|o| o.set(order));
}

/// How long one launch may run, in seconds (0: no limit): `ARTIST_EMU_TIMEOUT`, 300 when
/// unset. A kernel still running then (one that loops forever through barriers) fails at its
/// next barrier, instead of hanging the process; one that spins without a barrier still hangs.
fn launch_timeout() -> Result<f64> {
    static PROCESS: std::sync::OnceLock<std::result::Result<f64, String>> = std::sync::OnceLock::new();
    from_env(&PROCESS, "ARTIST_EMU_TIMEOUT", 300.0, |v| {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| format!("ARTIST_EMU_TIMEOUT is {v:?}: it must be a number of seconds (0: no limit)"))
    })
}

/// This thread's order, or the process's; an error for a bad `ARTIST_EMU_ORDER`.
fn order() -> Result<Order> {
    if let Some(o) = THREAD_ORDER.with(|o| o.get()) {
        return Ok(o);
    }
    static PROCESS: std::sync::OnceLock<std::result::Result<Order, String>> = std::sync::OnceLock::new();
    from_env(&PROCESS, "ARTIST_EMU_ORDER", Order::Forward, str::parse)
}

/// The process's setting from environment variable `var`, read and parsed once into `cell`
/// (`default` when unset or empty); a value `parse` refuses is an error at every launch.
fn from_env<T: Clone>(
    cell: &'static std::sync::OnceLock<std::result::Result<T, String>>,
    var: &str,
    default: T,
    parse: impl FnOnce(&str) -> std::result::Result<T, String>,
) -> Result<T> {
    cell.get_or_init(|| match std::env::var(var) {
        Ok(v) if !v.is_empty() => parse(&v),
        _ => Ok(default),
    })
    .clone()
    .map_err(|msg| Error::Cuda { op: "launch (emulator)", msg })
}

const ALIGN: usize = 256;

/// The live allocation `(base, size)` that address `ptr` falls in, if any.
fn containing(blocks: &BTreeMap<u64, usize>, ptr: u64) -> Option<(u64, usize)> {
    blocks.range(..=ptr).next_back().map(|(&base, &size)| (base, size)).filter(|&(base, size)| ptr < base + size as u64)
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

/// Where a block of `size` bytes at `ptr` sits in its mapping: `(mapping start, mapping
/// length, ptr)`. The mapping is a guard page, the block's pages, a guard page; the block
/// (rounded up to 256 bytes) ends where the second guard page starts. With `ptr` 0, the
/// offsets within a mapping at address 0.
fn guarded_layout(size: usize, ptr: usize) -> (usize, usize, usize) {
    let page = page_size();
    let rounded = size.next_multiple_of(ALIGN);
    let body = rounded.next_multiple_of(page);
    let total = body + 2 * page;
    if ptr == 0 { (0, total, page + body - rounded) } else { (ptr + rounded - body - page, total, ptr) }
}

pub(crate) struct Emulator {
    info: DeviceInfo,
    /// Live allocations: pointer -> size, to free them with the right layout and to catch
    /// copies through pointers that were never allocated.
    blocks: Mutex<BTreeMap<u64, usize>>,
    /// The thread capturing a graph and the operations it has queued so far (which do not
    /// run). Other threads' work runs as usual, as on a stream of their own: tests share the
    /// emulated device across threads, where a GPU run keeps to one thread while capturing.
    capture: Mutex<Option<(std::thread::ThreadId, Vec<EmuOp>)>>,
}

/// One recorded operation of an emulated graph.
#[derive(Clone)]
enum EmuOp {
    Launch(Kernel, LaunchCfg, Args),
    Gemm(Gemm),
    Memset(u64, usize),
    Dtod(u64, u64, usize),
}

/// A captured graph: its operations, run again in order at each replay (with the same
/// checks as when run directly, so a replay through freed memory is an error).
struct EmuGraph(Vec<EmuOp>);

impl Emulator {
    pub fn new(ordinal: usize) -> Emulator {
        Emulator {
            info: DeviceInfo {
                name: format!("CPU emulator {ordinal}"),
                compute_capability: (9, 0),
                multiprocessors: 1,
                total_memory: 16 << 30,
                emulated: true,
                wgmma: true,
                toolchain: "kernels compiled as C++ for the emulator".into(),
            },
            blocks: Mutex::new(BTreeMap::new()),
            capture: Mutex::new(None),
        }
    }

    /// Records `op` when a capture is under way (and says so); otherwise leaves it to run.
    fn recorded(&self, op: impl FnOnce() -> EmuOp) -> bool {
        match &mut *self.capture.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((thread, ops)) if *thread == std::thread::current().id() => {
                ops.push(op());
                true
            }
            _ => false,
        }
    }

    /// CUDA refuses host copies and waits on a capturing stream; so does the emulator.
    fn refuse_while_capturing(&self, what: &'static str) -> Result<()> {
        let capturing = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        if capturing.as_ref().is_some_and(|(thread, _)| *thread == std::thread::current().id()) {
            return Err(Error::Cuda { op: what, msg: "not permitted while a graph is being captured".into() });
        }
        Ok(())
    }

    fn run(&self, op: &EmuOp) -> Result<()> {
        match op {
            EmuOp::Launch(k, cfg, args) => self.run_launch(k, *cfg, args.clone()),
            EmuOp::Gemm(g) => self.run_gemm(g),
            EmuOp::Memset(dst, bytes) => self.run_memset(*dst, *bytes),
            EmuOp::Dtod(src, dst, bytes) => self.run_dtod(*src, *dst, *bytes),
        }
    }

    /// Checks that `[ptr, ptr + bytes)` lies inside one live allocation.
    fn check(&self, what: &'static str, ptr: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let inside = containing(&blocks, ptr).is_some_and(|(base, size)| ptr + bytes as u64 <= base + size as u64);
        if inside {
            Ok(())
        } else {
            Err(Error::Cuda { op: what, msg: format!("{bytes} bytes at {ptr:#x} are not inside any allocation") })
        }
    }
}

impl Runtime for Emulator {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Each allocation has pages of its own between two inaccessible guard pages, and ends
    /// where the second one starts (its start stays 256-byte aligned): a kernel that reads or
    /// writes past the end of a block faults at once (the fault names the kernel, see
    /// runtime.cpp), where on a GPU it would read or corrupt whatever lies there; before its
    /// start, once past the rest of its first page. New memory is all-ones bytes (NaN as
    /// floats), as unpredictable as cudaMalloc's. (Three memory mappings per block: the
    /// kernel's limit, 65,530 by default, allows some 21,000 live blocks.)
    fn malloc(&self, bytes: usize) -> Result<u64> {
        let size = bytes.max(1);
        let (_, total, offset) = guarded_layout(size, 0);
        // SAFETY: an anonymous private mapping; no address is given.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Cuda { op: "malloc", msg: format!("out of memory for {bytes} bytes") });
        }
        let ptr = p as usize + offset;
        let page = page_size();
        // SAFETY: the first and last pages of the mapping just made; then its body.
        unsafe {
            if libc::mprotect(p, page, libc::PROT_NONE) != 0
                || libc::mprotect((p as usize + total - page) as *mut libc::c_void, page, libc::PROT_NONE) != 0
            {
                libc::munmap(p, total);
                return Err(Error::Cuda { op: "malloc", msg: "could not protect the guard pages".into() });
            }
            std::ptr::write_bytes(ptr as *mut u8, 0xff, size);
        }
        self.blocks.lock().unwrap_or_else(|e| e.into_inner()).insert(ptr as u64, size);
        Ok(ptr as u64)
    }

    fn free(&self, ptr: u64) {
        if let Some(size) = self.blocks.lock().unwrap_or_else(|e| e.into_inner()).remove(&ptr) {
            let (base, total, _) = guarded_layout(size, ptr as usize);
            // SAFETY: the mapping made for this block in `malloc`.
            unsafe { libc::munmap(base as *mut libc::c_void, total) };
        }
    }

    fn reused(&self, ptr: u64, bytes: usize) {
        if self.check("poison", ptr, bytes).is_ok() {
            // SAFETY: inside a live allocation, handed to its new owner and not yet used.
            unsafe { std::ptr::write_bytes(ptr as *mut u8, 0xff, bytes) };
        }
    }

    fn htod(&self, src: &[u8], dst: u64) -> Result<()> {
        self.refuse_while_capturing("copy to device")?;
        self.check("copy to device", dst, src.len())?;
        // SAFETY: `dst` is inside a live allocation of at least `src.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn dtoh(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.refuse_while_capturing("copy to host")?;
        self.check("copy to host", src, dst.len())?;
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn dtod(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        if self.recorded(|| EmuOp::Dtod(src, dst, bytes)) {
            return Ok(());
        }
        self.run_dtod(src, dst, bytes)
    }

    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        if self.recorded(|| EmuOp::Memset(dst, bytes)) {
            return Ok(());
        }
        self.run_memset(dst, bytes)
    }

    fn launch(&self, kernel: &Kernel, cfg: LaunchCfg, args: Args) -> Result<()> {
        if self.recorded(|| EmuOp::Launch(kernel.clone(), cfg, args.clone())) {
            return Ok(());
        }
        self.run_launch(kernel, cfg, args)
    }

    fn gemm(&self, g: &Gemm) -> Result<()> {
        if self.recorded(|| EmuOp::Gemm(*g)) {
            return Ok(());
        }
        self.run_gemm(g)
    }

    fn synchronize(&self) -> Result<()> {
        self.refuse_while_capturing("synchronize")
    }

    fn stream_idle(&self) -> Result<bool> {
        self.refuse_while_capturing("query stream").map(|()| true)
    }

    fn begin_capture(&self) -> Result<()> {
        let mut c = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_some() {
            return Err(Error::Cuda { op: "begin graph capture", msg: "a capture is already under way".into() });
        }
        *c = Some((std::thread::current().id(), Vec::new()));
        Ok(())
    }

    fn end_capture(&self) -> Result<Box<dyn std::any::Any + Send + Sync>> {
        let ops = self
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| Error::Cuda { op: "end graph capture", msg: "no capture is under way".into() })?
            .1;
        Ok(Box::new(EmuGraph(ops)))
    }

    fn launch_graph(&self, graph: &(dyn std::any::Any + Send + Sync)) -> Result<()> {
        self.refuse_while_capturing("launch graph")?;
        let g = graph.downcast_ref::<EmuGraph>().ok_or_else(|| Error::Cuda {
            op: "launch graph",
            msg: "the graph was recorded by another runtime".into(),
        })?;
        g.0.iter().try_for_each(|op| self.run(op))
    }
}

impl Emulator {
    fn run_dtod(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.check("copy on device", src, bytes)?;
        self.check("copy on device", dst, bytes)?;
        // SAFETY: both ranges are inside live allocations; `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    fn run_memset(&self, dst: u64, bytes: usize) -> Result<()> {
        self.check("memset", dst, bytes)?;
        // SAFETY: inside a live allocation.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        Ok(())
    }

    fn run_launch(&self, kernel: &Kernel, cfg: LaunchCfg, args: Args) -> Result<()> {
        match order()? {
            Order::Forward => self.run_launch_in(kernel, cfg, args, false),
            Order::Reverse => self.run_launch_in(kernel, cfg, args, true),
            Order::Both => self.run_launch_both_ways(kernel, cfg, args),
        }
    }

    /// The live allocations the arguments point into: `(argument, base, size)`, each once.
    fn reachable(&self, args: &Args) -> Vec<(usize, u64, usize)> {
        let blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<(usize, u64, usize)> = Vec::new();
        for (i, w) in args.words() {
            if let Some((base, size)) = containing(&blocks, w)
                && !found.iter().any(|&(_, b, _)| b == base)
            {
                found.push((i, base, size));
            }
        }
        found
    }

    /// [`Order::Both`]: forward, then reverse from the memory the launch started from, and
    /// the same bits left in every buffer the arguments reach.
    fn run_launch_both_ways(&self, kernel: &Kernel, cfg: LaunchCfg, args: Args) -> Result<()> {
        let regions = self.reachable(&args);
        // SAFETY (all three): each region is a live allocation of `size` bytes, which the
        // launch's owner keeps alive for the launch; no other thread writes it meanwhile
        // (a tensor's memory belongs to the thread launching on it).
        let read = |&(_, base, size): &(usize, u64, usize)| unsafe {
            std::slice::from_raw_parts(base as *const u8, size).to_vec()
        };
        let before: Vec<Vec<u8>> = regions.iter().map(read).collect();
        self.run_launch_in(kernel, cfg, args.clone(), false)?;
        let forward: Vec<Vec<u8>> = regions.iter().map(read).collect();
        for ((_, base, size), (b, f)) in regions.iter().zip(before.iter().zip(&forward)) {
            if b != f {
                unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), *base as *mut u8, *size) };
            }
        }
        self.run_launch_in(kernel, cfg, args, true)?;
        for (region, f) in regions.iter().zip(&forward) {
            let r = read(region);
            if let Some(at) = r.iter().zip(f).position(|(a, b)| a != b) {
                let differ = r.iter().zip(f).filter(|(a, b)| a != b).count();
                return Err(Error::Cuda {
                    op: "launch (emulator)",
                    msg: format!(
                        "{}: a race: the memory argument {} points into differs between blocks, warps and \
                         lanes run forward and in reverse ({differ} of {} bytes, the first at byte {at}: \
                         {:#04x} forward, {:#04x} reversed)",
                        kernel.name, region.0, region.2, f[at], r[at]
                    ),
                });
            }
        }
        Ok(())
    }

    fn run_launch_in(&self, kernel: &Kernel, cfg: LaunchCfg, mut args: Args, reverse: bool) -> Result<()> {
        let timeout = launch_timeout()?;
        let name = CString::new(kernel.name.as_str()).expect("kernel names have no NUL");
        let sizes = args.sizes().to_vec();
        let mut ptrs = args.pointers();
        let mut err = vec![0 as c_char; 512];
        // SAFETY: the argument pointers stay valid for the call; the emulator checks their
        // number and sizes against the kernel's parameters before running it.
        let r = unsafe {
            artist_emu_launch(
                name.as_ptr(),
                cfg.grid.as_ptr(),
                cfg.block.as_ptr(),
                cfg.smem,
                ptrs.as_mut_ptr(),
                sizes.as_ptr(),
                sizes.len(),
                reverse as i32,
                timeout,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if r != 0 {
            // SAFETY: the emulator wrote a NUL-terminated message into `err`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            return Err(Error::Cuda { op: "launch (emulator)", msg });
        }
        Ok(())
    }

    fn run_gemm(&self, g: &Gemm) -> Result<()> {
        let span = |ld: usize, rows: usize, cols: usize, stride: usize| {
            if rows == 0 || cols == 0 || g.batch == 0 { 0 } else { (g.batch - 1) * stride + (cols - 1) * ld + rows }
        };
        let (ar, ac) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let es = g.ab_dtype.size_in_bytes();
        self.check("gemm A", g.a, span(g.lda, ar, ac, g.stride_a) * es)?;
        self.check("gemm B", g.b, span(g.ldb, br, bc, g.stride_b) * es)?;
        self.check("gemm C", g.c, span(g.ldc, g.m, g.n, g.stride_c) * g.c_dtype.size_in_bytes())?;
        if g.lda < ar.max(1) || g.ldb < br.max(1) || g.ldc < g.m.max(1) {
            return Err(Error::Cuda { op: "gemm (emulator)", msg: format!("leading dimension too small: {g:?}") });
        }
        reference_gemm(g)
    }
}

fn read(ptr: u64, dtype: DType, i: usize) -> f32 {
    // SAFETY (callers): `ptr` plus `i` elements lies inside an allocation checked in `gemm`.
    unsafe {
        match dtype {
            DType::F32 => *(ptr as *const f32).add(i),
            DType::BF16 => (*(ptr as *const bf16).add(i)).to_f32(),
            DType::F16 => (*(ptr as *const f16).add(i)).to_f32(),
            _ => f32::NAN,
        }
    }
}

/// `len` elements from `ptr` as f32 (widened when half precision).
fn widen(ptr: u64, dtype: DType, len: usize) -> Vec<f32> {
    (0..len).map(|i| read(ptr, dtype, i)).collect()
}

/// cuBLAS's `gemmStridedBatchedEx` as its documentation defines it, column-major, f32
/// accumulation: the reference the CUDA backend's row-major mapping is tested against.
/// Each matrix is handed to the `gemm` crate with the strides the column-major definition
/// gives it (op(A)(i, p) = A[i + p lda], or A[p + i lda] when transposed; likewise B; C(i, j)
/// = C[i + j ldc]), so only cuBLAS's conventions, not our mapping onto them, are assumed.
fn reference_gemm(g: &Gemm) -> Result<()> {
    if !matches!(g.ab_dtype, DType::F32 | DType::BF16 | DType::F16) || !g.c_dtype.is_float() {
        return Err(Error::UnsupportedDType { op: "gemm (emulator)", dtype: g.ab_dtype });
    }
    let g = *g;
    let span = |ld: usize, rows: usize, cols: usize, stride: usize| {
        if rows == 0 || cols == 0 || g.batch == 0 { 0 } else { (g.batch - 1) * stride + (cols - 1) * ld + rows }
    };
    let (ar, ac) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
    let (br, bc) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
    let a = widen(g.a, g.ab_dtype, span(g.lda, ar, ac, g.stride_a));
    let b = widen(g.b, g.ab_dtype, span(g.ldb, br, bc, g.stride_b));
    // (row stride, column stride) of op(A) [m, k] and op(B) [k, n].
    let (a_rs, a_cs) = if g.trans_a { (g.lda, 1) } else { (1, g.lda) };
    let (b_rs, b_cs) = if g.trans_b { (g.ldb, 1) } else { (1, g.ldb) };
    let mut prod = vec![0f32; g.m * g.n]; // column-major [m, n]
    for batch in 0..g.batch {
        if g.k > 0 && g.m > 0 && g.n > 0 {
            // SAFETY: every index the product reads lies inside `a` and `b` (their spans
            // were computed from the same description), and `prod` holds m x n.
            unsafe {
                gemm::gemm(
                    g.m,
                    g.n,
                    g.k,
                    prod.as_mut_ptr(),
                    g.m as isize,
                    1,
                    false,
                    a.as_ptr().add(batch * g.stride_a),
                    a_cs as isize,
                    a_rs as isize,
                    b.as_ptr().add(batch * g.stride_b),
                    b_cs as isize,
                    b_rs as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(rayon::current_num_threads()),
                );
            }
        } else {
            prod.fill(0.0);
        }
        let c0 = batch * g.stride_c;
        for j in 0..g.n {
            for i in 0..g.m {
                let at = c0 + i + j * g.ldc;
                let mut v = g.alpha * prod[i + j * g.m];
                if g.beta != 0.0 {
                    v += g.beta * read(g.c, g.c_dtype, at);
                }
                // SAFETY: inside C (checked in `gemm`).
                unsafe {
                    match g.c_dtype {
                        DType::F32 => *(g.c as *mut f32).add(at) = v,
                        DType::BF16 => *(g.c as *mut bf16).add(at) = bf16::from_f32(v),
                        DType::F16 => *(g.c as *mut f16).add(at) = f16::from_f32(v),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cuda::runtime::{Args, LaunchCfg};
    use crate::{DType, Device, Tensor};

    /// The emulated device, or `None` where the tests run on a GPU (these test the emulator).
    fn device() -> Option<std::sync::Arc<crate::cuda::GpuDevice>> {
        let backend = crate::cuda::test_backend().expect("the emulator is built in for tests");
        if backend != crate::cuda::Backend::Emulator {
            eprintln!("skipped: this process runs on a GPU, and these tests are the emulator's");
            return None;
        }
        Some(crate::cuda::device(0).unwrap())
    }

    fn ptr(t: &Tensor) -> u64 {
        t.cuda_storage().ptr()
    }

    /// cp.async groups land in commit order at the waits that cover them (zeros for a copy
    /// of no source bytes), or at once in eager mode.
    #[test]
    fn cp_async_groups_land_at_their_waits() {
        let Some(dev) = device() else { return };
        let src: Vec<u32> = (0..3 * 32 * 4).map(|i| 1000 + i).collect();
        let fill = 0xdead_beefu32;
        for eager in [false, true] {
            super::set_eager_copies(eager);
            let s = Tensor::from_vec(src.clone(), src.len(), Device::Cuda(0)).unwrap();
            let out = Tensor::zeros(32 * 16, DType::U32, Device::Cuda(0)).unwrap();
            let args = Args::new().arg(ptr(&s)).arg(fill).arg(ptr(&out));
            dev.launch("selftest", "emu_selftest_cp_async".into(), LaunchCfg::linear(1, 32), args).unwrap();
            let got = out.to_vec::<u32>().unwrap();
            for t in 0..32 {
                let at = |moment: usize| &got[(t * 4 + moment) * 4..(t * 4 + moment) * 4 + 4];
                let row = |r: usize| &src[(r * 32 + t) * 4..(r * 32 + t) * 4 + 4];
                assert_eq!(at(0), row(0), "eager {eager}: row 0 after wait<2>");
                if eager {
                    assert_eq!(at(1), row(1), "eager: row 1 landed at once");
                } else {
                    assert_eq!(at(1), [fill; 4], "row 1 is in flight after wait<2>");
                }
                assert_eq!(at(2), row(1), "eager {eager}: row 1 after wait<1>");
                assert_eq!(at(3), [0; 4], "eager {eager}: a copy of no source bytes writes zeros");
            }
        }
        super::set_eager_copies(false);
    }

    /// One warp runs ahead of another between block barriers (warp 0 first, forward).
    #[test]
    fn a_warp_runs_ahead_of_the_next_between_barriers() {
        let Some(dev) = device() else { return };
        let out = Tensor::full(7.0, 1, DType::U32, Device::Cuda(0)).unwrap();
        let args = Args::new().arg(ptr(&out));
        super::set_order(Some(super::Order::Forward));
        dev.launch("selftest", "emu_selftest_warp_ahead".into(), LaunchCfg::linear(1, 64), args).unwrap();
        super::set_order(None);
        assert_eq!(out.to_vec::<u32>().unwrap(), [0], "warp 0 saw warp 1's write: the warps ran in lockstep");
    }

    /// The one-exchange butterfly behind `warp_sum`, `warp_max` and the u64 reductions gives
    /// every lane what five shuffles give it, to the bit: sums of floats whose order matters,
    /// a NaN among the maxima, over 4 blocks of 3 warps.
    #[test]
    fn the_butterfly_equals_five_shuffles() {
        let Some(dev) = device() else { return };
        let n = 4 * 96;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let xf: Vec<f32> = (0..n)
            .map(|i| if i == 100 { f32::NAN } else { (next() % 2001) as f32 * 10f32.powi((i % 9) as i32 - 4) - 0.5 })
            .collect();
        let xu: Vec<u32> = (0..n)
            .flat_map(|_| {
                let x = next();
                [x as u32, (x >> 32) as u32]
            })
            .collect();
        let f = Tensor::from_vec(xf.clone(), n, Device::Cuda(0)).unwrap();
        let u = Tensor::from_vec(xu, 2 * n, Device::Cuda(0)).unwrap();
        let out = Tensor::zeros(8 * n, DType::U32, Device::Cuda(0)).unwrap();
        let args = Args::new().arg(ptr(&f)).arg(ptr(&u)).arg(ptr(&out));
        dev.launch("selftest", "emu_selftest_butterfly".into(), LaunchCfg::linear(4, 96), args).unwrap();
        let got = out.to_vec::<u32>().unwrap();
        for (t, r) in got.chunks(8).enumerate() {
            assert_eq!(r[0], r[1], "thread {t}: warp_sum");
            assert_eq!(r[2], r[3], "thread {t}: warp_max");
            assert_eq!(r[4..6], r[6..8], "thread {t}: warp_max_u64");
        }
        // The warp holding thread 100 sees its NaN, the others do not; sums differ by warp.
        let warp_of = |w: usize| &got[8 * 32 * w..8 * 32 * (w + 1)];
        assert!(f32::from_bits(warp_of(3)[2]).is_nan());
        assert!(!f32::from_bits(warp_of(2)[2]).is_nan());
        assert_ne!(warp_of(0)[0], warp_of(1)[0]);
    }

    /// The two orders run blocks, warps and lanes as they say: a racy kernel's reads see the
    /// writes of the threads (and the block) that ran before them, and only those.
    #[test]
    fn the_orders_show_a_race_both_ways() {
        let Some(dev) = device() else { return };
        let mut seen = Vec::new();
        for order in [super::Order::Forward, super::Order::Reverse] {
            super::set_order(Some(order));
            let flags = Tensor::zeros(2, DType::U32, Device::Cuda(0)).unwrap();
            let out = Tensor::zeros(258, DType::U32, Device::Cuda(0)).unwrap();
            let args = Args::new().arg(ptr(&flags)).arg(ptr(&out));
            dev.launch("selftest", "emu_selftest_race".into(), LaunchCfg::linear(2, 64), args).unwrap();
            super::set_order(None);
            let got = out.to_vec::<u32>().unwrap();
            let rev = order == super::Order::Reverse;
            for b in 0..2 {
                for t in 0..64u32 {
                    let next = (t & 32) + ((t + 1) & 31);
                    // Forward, a lane sees the next lane's write only where it wraps to lane 0
                    // (which ran first); reversed, everywhere but there.
                    let ran_before = (next < t) != rev;
                    let want = if ran_before { next + 1 } else { 0 };
                    assert_eq!(got[b * 128 + t as usize], want, "{order:?}: block {b} thread {t}, next lane");
                    let other = t ^ 32;
                    let want = if (other < t) != rev { other + 1 } else { 0 };
                    assert_eq!(got[b * 128 + 64 + t as usize], want, "{order:?}: block {b} thread {t}, other warp");
                }
            }
            assert_eq!(got[256..], if rev { [1, 0] } else { [0, 1] }, "{order:?}: the blocks' flags");
            seen.push(got);
        }
        assert_ne!(seen[0], seen[1]);
    }

    /// Run both ways, a racy launch fails naming the kernel and where its results differ; a
    /// launch without a race (five shuffles and butterflies per warp, three warps per block)
    /// runs, and leaves what it leaves run once.
    #[test]
    fn both_orders_catch_a_race_and_pass_a_clean_kernel() {
        let Some(dev) = device() else { return };
        super::set_order(Some(super::Order::Both));
        let flags = Tensor::zeros(2, DType::U32, Device::Cuda(0)).unwrap();
        let out = Tensor::zeros(258, DType::U32, Device::Cuda(0)).unwrap();
        let args = Args::new().arg(ptr(&flags)).arg(ptr(&out));
        let err = dev.launch("selftest", "emu_selftest_race".into(), LaunchCfg::linear(2, 64), args);
        let n = 3 * 96;
        let xf: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 10f32.powi(i as i32 % 7 - 3)).collect();
        let xu: Vec<u32> = (0..2 * n as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        let f = Tensor::from_vec(xf, n, Device::Cuda(0)).unwrap();
        let u = Tensor::from_vec(xu, 2 * n, Device::Cuda(0)).unwrap();
        let run = |order| {
            super::set_order(Some(order));
            let out = Tensor::full(7.0, 8 * n, DType::U32, Device::Cuda(0)).unwrap();
            let args = Args::new().arg(ptr(&f)).arg(ptr(&u)).arg(ptr(&out));
            let r = dev.launch("selftest", "emu_selftest_butterfly".into(), LaunchCfg::linear(3, 96), args);
            super::set_order(None);
            r.map(|()| out.to_vec::<u32>().unwrap())
        };
        let (both, forward) = (run(super::Order::Both), run(super::Order::Forward));
        let err = err.unwrap_err().to_string();
        assert!(err.contains("emu_selftest_race: a race") && err.contains("argument 1"), "{err}");
        assert_eq!(both.unwrap(), forward.unwrap());
    }

    /// Static `__shared__` arrays are neither guarded nor poisoned: they keep the values of
    /// the block that ran before on the thread. A kernel that reads one before writing it
    /// therefore reads other values in each order, and `both` reports it as a race.
    #[test]
    fn both_orders_catch_a_read_of_unwritten_static_shared_memory() {
        let Some(dev) = device() else { return };
        let run = |order| {
            super::set_order(Some(order));
            let out = Tensor::zeros(64, DType::U32, Device::Cuda(0)).unwrap();
            let args = Args::new().arg(ptr(&out));
            let r = dev.launch("selftest", "emu_selftest_stale_shared".into(), LaunchCfg::linear(2, 32), args);
            super::set_order(None);
            r.map(|()| out.to_vec::<u32>().unwrap())
        };
        // Forward, block 1 reads what block 0 wrote.
        let forward = run(super::Order::Forward).unwrap();
        assert_eq!(forward[32..], (1..=32).collect::<Vec<u32>>());
        let err = run(super::Order::Both).unwrap_err().to_string();
        assert!(err.contains("emu_selftest_stale_shared: a race") && err.contains("argument 0"), "{err}");
    }

    /// Runs test `name` of this binary again in a child process with `env` set (the
    /// emulator reads its variables once per process): whether it passed, and what it
    /// printed; `None` in the child itself.
    fn child(name: &str, env: &[(&str, &str)]) -> Option<(bool, String)> {
        if std::env::var_os("ARTIST_EMU_TEST_CHILD").is_some() {
            return None;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", &format!("cuda::emulator::tests::{name}"), "--nocapture", "--test-threads", "1"])
            .env("ARTIST_EMU_TEST_CHILD", "1")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        Some((out.status.success(), text))
    }

    /// Runs test `name` again in a child process, which must print "inside: ok" and then
    /// die of a fault reported for thread 0 of block 0 of `kernel`: `true` once checked (or
    /// where the child skipped), `false` in the child itself, which goes on to fault.
    fn dies_naming(name: &str, kernel: &str) -> bool {
        let Some((ok, text)) = child(name, &[]) else { return false };
        if text.contains("skipped") {
            return true;
        }
        assert!(!ok, "the child survived its access past the end: {text}");
        let want = format!("CUDA emulator: kernel {kernel}, block (0, 0, 0), thread 0: segmentation fault");
        assert!(text.contains(&want) && text.contains("outside every buffer"), "{text}");
        assert!(text.contains("inside: ok"), "{text}");
        true
    }

    /// [`child`], which must pass.
    fn in_child(name: &str, env: &[(&str, &str)]) -> Option<String> {
        let (ok, text) = child(name, env)?;
        assert!(ok && text.contains("1 passed"), "{text}");
        Some(text)
    }

    /// A block the pool hands out again holds all-ones bytes, not its last tensor.
    #[test]
    fn a_reused_block_comes_back_as_all_ones() {
        let Some(dev) = device() else { return };
        let n = 3 * 1000 + 7;
        let first = dev.alloc(n * 4).unwrap();
        let ptr = first.ptr;
        dev.rt.htod(&vec![0x5a; first.size], ptr).unwrap();
        drop(first);
        // The same block comes back (unless another test took it meanwhile: then a new one,
        // which must be all ones too).
        let again = dev.alloc(n * 4).unwrap();
        let mut back = vec![0u8; again.size];
        dev.rt.dtoh(again.ptr, &mut back).unwrap();
        let reused = if again.ptr == ptr { "the reused block" } else { "a new block" };
        assert!(back.iter().all(|&b| b == 0xff), "{reused} kept old bytes");
    }

    /// A write past the end of the dynamic shared memory a kernel was launched with faults
    /// at once and names the kernel (in a child process, which it kills).
    #[test]
    fn a_write_past_dynamic_shared_memory_faults() {
        if dies_naming("a_write_past_dynamic_shared_memory_faults", "emu_selftest_smem_at") {
            return;
        }
        let Some(dev) = device() else { return };
        let write = |at: i64| {
            let out = Tensor::zeros(1, DType::U32, Device::Cuda(0)).unwrap();
            let args = Args::new().arg(at).arg(ptr(&out));
            let cfg = LaunchCfg { smem: 64, ..LaunchCfg::linear(1, 1) };
            dev.launch("selftest", "emu_selftest_smem_at".into(), cfg, args).unwrap();
            out.to_vec::<u32>().unwrap()[0]
        };
        assert_eq!(write(0), 7);
        assert_eq!(write(15), 7);
        eprintln!("inside: ok");
        write(16);
    }

    /// A read past the end of a buffer's block faults at once, and the process ends with a
    /// message naming the kernel, block and thread (in a child process, which it kills);
    /// reads inside the block, past the tensor's own end, see all-ones bytes.
    #[test]
    fn a_read_past_a_block_faults_and_names_the_kernel() {
        if dies_naming("a_read_past_a_block_faults_and_names_the_kernel", "emu_selftest_read_at") {
            return;
        }
        let Some(dev) = device() else { return };
        let x = Tensor::from_vec(vec![1.5f32; 100], 100, Device::Cuda(0)).unwrap();
        let read = |at: i64| {
            let out = Tensor::zeros(1, DType::F32, Device::Cuda(0)).unwrap();
            let args = Args::new().arg(ptr(&x)).arg(at).arg(ptr(&out));
            dev.launch("selftest", "emu_selftest_read_at".into(), LaunchCfg::linear(1, 1), args).unwrap();
            out.to_vec::<f32>().unwrap()[0]
        };
        assert_eq!(read(99), 1.5);
        // The pool rounds the block to 512 bytes: floats 100..128 are its padding.
        assert_eq!(read(127).to_bits(), u32::MAX);
        eprintln!("inside: ok");
        read(128);
    }

    /// An order other than `forward`, `reverse` or `both` in `ARTIST_EMU_ORDER` is refused by
    /// name.
    #[test]
    fn a_bad_order_is_an_error() {
        if in_child("a_bad_order_is_an_error", &[("ARTIST_EMU_ORDER", "sideways")]).is_some() {
            return;
        }
        let Some(dev) = device() else { return };
        let out = Tensor::zeros(32, DType::U32, Device::Cuda(0)).unwrap();
        let args = Args::new().arg(ptr(&out));
        let err = dev.launch("selftest", "emu_selftest_warp_ahead".into(), LaunchCfg::linear(1, 32), args).unwrap_err();
        let want = "ARTIST_EMU_ORDER is \"sideways\": it must be \"forward\", \"reverse\" or \"both\"";
        assert!(err.to_string().contains(want), "{err}");
    }

    /// A kernel that loops forever through block barriers, or through shuffles, fails when
    /// `ARTIST_EMU_TIMEOUT` runs out instead of hanging; a bad value is refused by name.
    #[test]
    fn a_kernel_that_does_not_end_times_out() {
        if in_child("a_kernel_that_does_not_end_times_out", &[("ARTIST_EMU_TIMEOUT", "0.2")]).is_some() {
            in_child("a_kernel_that_does_not_end_times_out", &[("ARTIST_EMU_TIMEOUT", "soon")]);
            return;
        }
        let Some(dev) = device() else { return };
        let want = match std::env::var("ARTIST_EMU_TIMEOUT").as_deref() {
            Ok("soon") => "ARTIST_EMU_TIMEOUT is \"soon\": it must be a number of seconds (0: no limit)",
            _ => "emu_selftest_forever: block (0, 0, 0) still running when the launch's time ran out",
        };
        let stop = Tensor::zeros(1, DType::U32, Device::Cuda(0)).unwrap();
        for mode in [0u32, 1] {
            let args = Args::new().arg(ptr(&stop)).arg(mode);
            let start = std::time::Instant::now();
            let err =
                dev.launch("selftest", "emu_selftest_forever".into(), LaunchCfg::linear(2, 64), args).unwrap_err();
            assert!(start.elapsed().as_secs_f64() < 30.0, "mode {mode}: {:?}", start.elapsed());
            assert!(err.to_string().contains(want), "mode {mode}: {err}");
        }
    }

    /// A barrier that not every thread can reach is an error that says so, not a hang.
    #[test]
    fn a_divergent_barrier_is_an_error() {
        let Some(dev) = device() else { return };
        let out = Tensor::zeros(32, DType::U32, Device::Cuda(0)).unwrap();
        let args = Args::new().arg(ptr(&out));
        let err = dev
            .launch("selftest", "emu_selftest_divergent_barrier".into(), LaunchCfg::linear(1, 32), args)
            .unwrap_err();
        assert!(err.to_string().contains("a barrier not reached by every thread"), "{err}");
    }
}
