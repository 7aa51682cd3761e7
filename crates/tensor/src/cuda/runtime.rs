//! What the CUDA backend asks of a GPU: memory, copies, kernel launches and cuBLAS-style
//! matrix products on one stream. Two runtimes implement it: the driver (cudarc: CUDA
//! driver API, NVRTC, cuBLAS) and, with the `emulator` feature, the CPU emulator, which runs
//! the very same kernel sources on the host so that every op's GPU path is tested in CI.

use std::ffi::c_void;

use crate::{DType, Result};

/// What the backend knows about a device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    /// `(major, minor)`, e.g. `(9, 0)` for Hopper.
    pub compute_capability: (u32, u32),
    pub multiprocessors: u32,
    pub total_memory: usize,
    /// The CPU emulator rather than a GPU.
    pub emulated: bool,
    /// Hopper's warpgroup MMA kernels can run: kernels are built for sm_90a (a compute
    /// capability 9.0 GPU and NVRTC 12.0 or later), or this is the emulator.
    pub wgmma: bool,
    /// How kernels were built for it, e.g. "NVRTC 12.9, sm_90 CUBIN".
    pub toolchain: String,
}

/// Grid, block and dynamic shared memory of a launch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaunchCfg {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
}

impl LaunchCfg {
    pub fn linear(blocks: u32, threads: u32) -> LaunchCfg {
        LaunchCfg { grid: [blocks.max(1), 1, 1], block: [threads, 1, 1], smem: 0 }
    }
}

/// A kernel: the file it lives in (`kernels/<module>.cu`) and its exported name.
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    pub module: &'static str,
    pub name: String,
}

/// Kernel arguments as cuLaunchKernel takes them: each value in 8-byte aligned storage of
/// its own, with its size (the emulator checks sizes against the kernel's parameters).
#[derive(Default, Clone)]
pub(crate) struct Args {
    vals: Vec<Vec<u64>>,
    sizes: Vec<usize>,
}

impl Args {
    pub fn new() -> Args {
        Args::default()
    }

    /// Appends one argument by value (`Copy` data only: numbers, device pointers as `u64`,
    /// `#[repr(C)]` structs).
    pub fn arg<T: Copy + 'static>(mut self, v: T) -> Args {
        let size = std::mem::size_of::<T>();
        let mut buf = vec![0u64; size.div_ceil(8).max(1)];
        // SAFETY: `buf` holds at least `size` bytes and is 8-byte aligned; T is Copy.
        unsafe { std::ptr::copy_nonoverlapping(&v as *const T as *const u8, buf.as_mut_ptr() as *mut u8, size) };
        self.vals.push(buf);
        self.sizes.push(size);
        self
    }

    #[cfg_attr(not(feature = "emulator"), allow(dead_code))]
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// Each argument's value as 8-byte words (the last one zero-padded), with its position:
    /// where a device pointer would be, in a scalar or a `#[repr(C)]` struct.
    #[cfg(feature = "emulator")]
    pub fn words(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.vals.iter().enumerate().flat_map(|(i, v)| v.iter().map(move |&w| (i, w)))
    }

    /// Pointers to each argument's value, valid while `self` lives unmoved.
    pub fn pointers(&mut self) -> Vec<*mut c_void> {
        self.vals.iter_mut().map(|v| v.as_mut_ptr() as *mut c_void).collect()
    }
}

/// One strided batched matrix product in cuBLAS's terms (column-major):
/// `C_i = alpha op(A_i) op(B_i) + beta C_i` for `i < batch`, `op(A)` being `m x k`,
/// `op(B)` `k x n`, `C` `m x n`, leading dimensions and batch strides in elements.
/// A and B share `ab_dtype`; accumulation is f32 whatever the types (no TF32).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: u64,
    pub lda: usize,
    pub stride_a: usize,
    pub b: u64,
    pub ldb: usize,
    pub stride_b: usize,
    pub beta: f32,
    pub c: u64,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    pub ab_dtype: DType,
    pub c_dtype: DType,
}

pub(crate) trait Runtime: Send + Sync {
    fn info(&self) -> &DeviceInfo;
    /// Raw device memory (the caching pool sits above this).
    fn malloc(&self, bytes: usize) -> Result<u64>;
    fn free(&self, ptr: u64);
    /// Called when the pool hands out a block it kept from an earlier tensor: the emulator
    /// fills it with all-ones bytes, as it does new memory in `malloc`, so that a kernel
    /// leaving part of its output unwritten shows it (instead of the block's last tensor,
    /// which a test may compare equal). Nothing on a GPU.
    fn reused(&self, _ptr: u64, _bytes: usize) {}
    fn htod(&self, src: &[u8], dst: u64) -> Result<()>;
    /// Copies to the host and waits for everything queued before it.
    fn dtoh(&self, src: u64, dst: &mut [u8]) -> Result<()>;
    fn dtod(&self, src: u64, dst: u64, bytes: usize) -> Result<()>;
    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()>;
    fn launch(&self, kernel: &Kernel, cfg: LaunchCfg, args: Args) -> Result<()>;
    fn gemm(&self, g: &Gemm) -> Result<()>;
    /// Waits for all queued work and reports any error it raised.
    fn synchronize(&self) -> Result<()>;
    /// The stream all work is queued on (a `CUstream`), with the context made current on
    /// the calling thread, for other CUDA libraries; `None` where there is no real stream.
    fn raw_stream(&self) -> Option<Result<u64>> {
        None
    }
    /// A second stream, created on first use, for another library's work beside ours
    /// (NCCL's collectives beside backward), with the context made current on the calling
    /// thread; `None` where there is no real stream. Work on it is ordered with the main
    /// stream only through [`Runtime::side_waits_for_main`] and
    /// [`Runtime::main_waits_for_side`].
    fn side_stream(&self) -> Option<Result<u64>> {
        None
    }
    /// Work queued on the side stream from now on waits for all work queued on the main
    /// stream so far (an event, no host wait).
    fn side_waits_for_main(&self) -> Result<()> {
        Ok(())
    }
    /// Work queued on the main stream from now on waits for all work queued on the side
    /// stream so far (an event, no host wait).
    fn main_waits_for_side(&self) -> Result<()> {
        Ok(())
    }
    /// Whether all queued work has finished, without waiting; errors it raised are
    /// reported.
    fn stream_idle(&self) -> Result<bool> {
        self.synchronize().map(|()| true)
    }
    /// Starts recording the stream's work into a graph instead of running it: until
    /// [`Runtime::end_capture`], launches, matrix products, memsets and device copies are
    /// recorded; host copies and waits are errors (CUDA's stream capture rules).
    fn begin_capture(&self) -> Result<()>;
    /// Ends the recording and returns the graph, ready to replay.
    fn end_capture(&self) -> Result<Box<dyn std::any::Any + Send + Sync>>;
    /// Queues one replay of a graph this runtime recorded.
    fn launch_graph(&self, graph: &(dyn std::any::Any + Send + Sync)) -> Result<()>;
}
