//! The CPU emulator as a runtime: "device memory" is host memory, kernels are the same
//! `kernels/*.cu` sources compiled as C++ at build time (crates/tensor/emulator/) and run by
//! its fiber scheduler, and matrix products follow cuBLAS's column-major definition in plain
//! Rust. Every CUDA op's host code (launch configurations, argument lists, strides, the
//! mapping of row-major tensors onto cuBLAS) and kernel logic is exercised this way on
//! machines without a GPU; only the GPU's own compiler and hardware are left for a GPU run.

use std::alloc::{Layout, alloc, dealloc};
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

const ALIGN: usize = 256;

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
        let inside =
            blocks.range(..=ptr).next_back().is_some_and(|(&base, &size)| ptr + bytes as u64 <= base + size as u64);
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

    fn malloc(&self, bytes: usize) -> Result<u64> {
        let layout = Layout::from_size_align(bytes.max(1), ALIGN)
            .map_err(|e| Error::Cuda { op: "malloc", msg: e.to_string() })?;
        // SAFETY: a non-zero size with a valid alignment.
        let p = unsafe { alloc(layout) };
        if p.is_null() {
            return Err(Error::Cuda { op: "malloc", msg: format!("out of memory for {bytes} bytes") });
        }
        self.blocks.lock().unwrap_or_else(|e| e.into_inner()).insert(p as u64, bytes.max(1));
        Ok(p as u64)
    }

    fn free(&self, ptr: u64) {
        if let Some(size) = self.blocks.lock().unwrap_or_else(|e| e.into_inner()).remove(&ptr) {
            // SAFETY: allocated above with this size and alignment.
            unsafe { dealloc(ptr as *mut u8, Layout::from_size_align_unchecked(size, ALIGN)) };
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

    fn run_launch(&self, kernel: &Kernel, cfg: LaunchCfg, mut args: Args) -> Result<()> {
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

    /// One warp runs ahead of another between block barriers.
    #[test]
    fn a_warp_runs_ahead_of_the_next_between_barriers() {
        let Some(dev) = device() else { return };
        let out = Tensor::full(7.0, 1, DType::U32, Device::Cuda(0)).unwrap();
        let args = Args::new().arg(ptr(&out));
        dev.launch("selftest", "emu_selftest_warp_ahead".into(), LaunchCfg::linear(1, 64), args).unwrap();
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
