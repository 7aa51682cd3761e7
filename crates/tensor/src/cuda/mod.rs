//! The CUDA backend: tensor storage on NVIDIA GPUs, our own kernels (`kernels/*.cu`, compiled
//! with NVRTC for the GPU found at run time), cuBLAS for matrix products, and a caching
//! allocator, all on one stream per device.
//!
//! A device is served by one of two runtimes. The **driver** runtime talks to a real GPU
//! through cudarc (loaded at run time: the workspace builds, and binaries start, on machines
//! with no CUDA at all; asking for a GPU there is an error value, never a panic). The
//! **emulator** runtime (cargo feature `emulator`) runs the same kernel sources as C++ on
//! the CPU and follows cuBLAS's definition in Rust, so every GPU code path is tested in CI;
//! `ARTIST_CUDA=emulator` selects it for a whole process (`--device cuda` then runs on it).

mod alloc;
mod driver;
#[cfg(feature = "emulator")]
mod emulator;
pub(crate) mod kernels;
pub(crate) mod libs;
pub mod nvrtc;
pub(crate) mod ops;
mod runtime;

use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::CudaContext;

pub use alloc::MemoryStats;
pub use runtime::DeviceInfo;

use crate::cpu::CpuStorage;
use crate::{DType, Error, Result};
use alloc::Pool;
pub(crate) use runtime::{Args, Gemm, Kernel, LaunchCfg, Runtime};

/// Which runtime serves `Device::Cuda(_)` in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Real GPUs through the CUDA driver.
    Driver,
    /// The CPU emulator (tests, and debugging kernels without a GPU).
    Emulator,
}

static BACKEND: OnceLock<Backend> = OnceLock::new();

/// The runtime of this process: `ARTIST_CUDA=emulator` selects the emulator; otherwise the
/// driver, unless [`use_backend`] chose first.
pub fn backend() -> Backend {
    *BACKEND.get_or_init(|| match std::env::var("ARTIST_CUDA").as_deref() {
        Ok("emulator") | Ok("emulate") => Backend::Emulator,
        _ => Backend::Driver,
    })
}

/// Chooses the runtime for this process; an error once another was chosen or used.
pub fn use_backend(b: Backend) -> Result<()> {
    if b == Backend::Emulator && !emulator_available() {
        return Err(Error::Cuda {
            op: "emulator",
            msg: "this build has no emulator (cargo feature `emulator`)".into(),
        });
    }
    let chosen = *BACKEND.get_or_init(|| b);
    if chosen != b {
        return Err(Error::Cuda { op: "backend", msg: format!("this process already uses the {chosen:?} runtime") });
    }
    Ok(())
}

/// Whether this build carries the CPU emulator.
pub fn emulator_available() -> bool {
    cfg!(feature = "emulator")
}

/// For test suites: a real GPU when the driver sees one (or `ARTIST_CUDA` already chose),
/// else the emulator when built in; `None` (with the reason) when neither can run.
pub fn test_backend() -> std::result::Result<Backend, String> {
    if let Ok(v) = std::env::var("ARTIST_CUDA") {
        let b = backend();
        return if b == Backend::Emulator && !emulator_available() {
            Err(format!("ARTIST_CUDA={v} but this build has no emulator"))
        } else {
            Ok(b)
        };
    }
    if let Some(&b) = BACKEND.get() {
        return Ok(b);
    }
    let gpu = driver_present() && CudaContext::device_count().map(|n| n > 0).unwrap_or(false);
    let want = if gpu {
        Backend::Driver
    } else if emulator_available() {
        Backend::Emulator
    } else {
        return Err("no CUDA driver or GPU on this machine, and this build has no emulator".into());
    };
    use_backend(want).map_err(|e| e.to_string())?;
    Ok(backend())
}

/// Whether `libcuda` can be loaded. cudarc's dynamic loader panics on first use when it
/// cannot, so everything goes through here first.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library under its usual names and drops it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The number of CUDA devices (emulated ones under the emulator), or why there are none.
pub fn device_count() -> Result<usize> {
    if backend() == Backend::Emulator {
        return Ok(EMULATED_DEVICES);
    }
    if !driver_present() {
        return Err(Error::NoCudaDriver("libcuda.so was not found by the dynamic loader".into()));
    }
    let n = CudaContext::device_count().map_err(|e| Error::NoCudaDriver(format!("{e:?}")))?;
    Ok(n.max(0) as usize)
}

/// Emulated devices a process may use (data-parallel tests give each rank one).
const EMULATED_DEVICES: usize = 8;

/// Opens device `ordinal` (once per process) or says why it cannot be had.
pub fn probe(ordinal: usize) -> Result<()> {
    device(ordinal).map(|_| ())
}

/// Name, architecture and memory of device `ordinal`, and how its kernels are built.
pub fn info(ordinal: usize) -> Result<DeviceInfo> {
    Ok(device(ordinal)?.rt.info().clone())
}

/// Bytes allocated and cached on device `ordinal`.
pub fn memory_stats(ordinal: usize) -> Result<MemoryStats> {
    Ok(device(ordinal)?.pool().stats())
}

/// Returns every cached block of device `ordinal` to the driver.
pub fn empty_cache(ordinal: usize) -> Result<()> {
    let d = device(ordinal)?;
    d.pool().release_cached(d.rt.as_ref());
    Ok(())
}

/// Kernels and matrix products queued on device `ordinal` so far in this process: what a
/// step costs the CPU in launches (CUDA graphs or batching lower it).
pub fn launch_count(ordinal: usize) -> Result<u64> {
    Ok(device(ordinal)?.launches.load(std::sync::atomic::Ordering::Relaxed))
}

thread_local! {
    static THREAD_LAUNCHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Launches by kernel name, once [`thread_kernel_launches`] has asked on this thread
    /// (until then launches pay nothing for it).
    static THREAD_KERNELS: std::cell::RefCell<Option<std::collections::HashMap<String, u64>>> =
        const { std::cell::RefCell::new(None) };
}

/// How many times this thread has launched the kernel `name` (e.g. `attn_fwd_mma_d64_bf16`),
/// on any device, since its first call to this function: which of an op's kernels ran
/// (read it before the op, and again after).
pub fn thread_kernel_launches(name: &str) -> u64 {
    THREAD_KERNELS.with(|k| k.borrow_mut().get_or_insert_with(Default::default).get(name).copied().unwrap_or(0))
}

/// For attention launched from this thread: `Some(true)` runs the bf16 tensor-core forward and
/// the backward's dQ pass on Hopper's warpgroup MMA (`attn_fwd_wgmma_*`, `attn_bwd_dq_wgmma_*`)
/// where kernels are built for sm_90a or on the emulator, `Some(false)` keeps `mma.sync`,
/// `None` follows `ARTIST_ATTN_WGMMA` (`1`: on; off by default). For tests and comparisons.
pub fn set_thread_wgmma_attention(on: Option<bool>) {
    ops::WGMMA_ATTENTION.with(|w| w.set(on));
}

/// How a [`wgmma_probe`] reads its tile: as one of the attention kernels' operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeLayout {
    /// A K-major B operand, A in registers: K in the scores, Q and dO in the dK/dV pass's
    /// S^T and dP^T. Output [m][n] = tile[n][16 step + m % 16], n < 64.
    KMajor,
    /// An N-major B operand, A in registers: V in P V, K in the dQ pass's dS K, dO and Q in
    /// the dK/dV pass's dV and dK. Output [m][n] = tile[16 step + m % 16][n], n < d.
    NMajor,
    /// `KMajor` with the one-hot A read from shared memory too, from a swizzled K-major tile:
    /// K and V in the dK/dV pass's S^T and dP^T. The same output as `KMajor`.
    KMajorSharedA,
}

/// A diagnostic of Hopper's warpgroup MMA on device `ordinal`: the 64 x N output (row-major)
/// of a one-hot A (row m has its one at column m % 16) times a B read from a tile of 64 rows
/// and `d` (64 or 128) columns staged and described as the attention kernels stage and
/// describe their operands (`layout`), the tile holding each element's row (`what` 0) or
/// column (`what` 1), at 16-deep step `step` (d / 16 of them for the K-major layouts, 4 for
/// the N-major one). Where the attention kernels disagree with the CPU on a GPU, this shows
/// which element the hardware read instead. Needs kernels built for sm_90a (or the emulator).
pub fn wgmma_probe(ordinal: usize, d: usize, layout: ProbeLayout, what: i32, step: usize) -> Result<Vec<f32>> {
    ops::wgmma_probe(ordinal, d, layout, what, step)
}

/// Kernels and matrix products this thread has queued so far, on any device: unlike
/// [`launch_count`], not disturbed by other threads using the GPU meanwhile.
pub fn thread_launch_count() -> u64 {
    THREAD_LAUNCHES.with(|n| n.get())
}

/// Waits for all work queued on device `ordinal`, reporting any error it raised.
pub fn synchronize(ordinal: usize) -> Result<()> {
    device(ordinal)?.rt.synchronize()
}

/// The stream (a raw `CUstream`) this crate queues all work for device `ordinal` on, with
/// the device's context made current on the calling thread: for other CUDA libraries
/// (NCCL) working on this crate's tensors, whose work must go on this stream to stay
/// ordered with ours (the caching allocator reuses freed memory in stream order). An
/// error under the emulator, which has no stream to share.
pub fn raw_stream(ordinal: usize) -> Result<u64> {
    device(ordinal)?.rt.raw_stream().unwrap_or_else(|| {
        Err(Error::Cuda {
            op: "raw stream",
            msg: "the CUDA emulator has no stream to share with other libraries".into(),
        })
    })
}

/// A second stream on device `ordinal` (a raw `CUstream`, made on first use), with the
/// device's context made current on the calling thread: other libraries' work (NCCL's
/// collectives) runs there beside this crate's kernels instead of taking turns with them.
/// It is ordered with the main stream only by [`side_waits_for_main`] and
/// [`main_waits_for_side`]. Memory a side-stream operation uses must stay alive, and
/// untouched by other work, until the main stream waits for it: the caching allocator
/// reuses freed memory in the main stream's order. An error under the emulator.
pub fn side_stream(ordinal: usize) -> Result<u64> {
    device(ordinal)?.rt.side_stream().unwrap_or_else(|| {
        Err(Error::Cuda {
            op: "side stream",
            msg: "the CUDA emulator has no stream to share with other libraries".into(),
        })
    })
}

/// Work queued on device `ordinal`'s side stream from now on waits for all the work queued
/// on its main stream so far (an event: the host does not wait). Nothing to do on the
/// emulator, which runs every operation as it is queued.
pub fn side_waits_for_main(ordinal: usize) -> Result<()> {
    device(ordinal)?.rt.side_waits_for_main()
}

/// Work queued on device `ordinal`'s main stream from now on waits for all the work queued
/// on its side stream so far (an event: the host does not wait). After it,
/// [`stream_idle`] and every wait on the main stream cover the side stream's work too.
pub fn main_waits_for_side(ordinal: usize) -> Result<()> {
    device(ordinal)?.rt.main_waits_for_side()
}

/// Whether all work queued on device `ordinal` so far has finished, without waiting (to
/// wait with a deadline); an error queued work raised is reported.
pub fn stream_idle(ordinal: usize) -> Result<bool> {
    device(ordinal)?.rt.stream_idle()
}

/// Where CUDA libraries are looked for when the dynamic loader cannot find them by name,
/// most specific first (`ARTIST_CUDA_LIBS`, `CUDA_HOME`, `/usr/local/cuda`, the
/// `nvidia/*/lib` folders of Python environments): other crates find their libraries
/// (NCCL) where this crate finds cuBLAS and NVRTC.
pub fn library_dirs() -> Vec<std::path::PathBuf> {
    libs::search_dirs()
}

/// The kernel files (`kernels/<name>.cu`) built into this binary, by name.
pub fn kernel_files() -> Vec<&'static str> {
    kernels::SOURCES.iter().map(|(name, _)| *name).collect()
}

/// Every `(kernels/<file>.cu, kernel name)` the backend launches.
pub fn kernel_inventory() -> Vec<(&'static str, String)> {
    kernels::inventory()
}

/// Every kernel the emulator build holds (tests compare it with what the backend launches).
#[cfg(feature = "emulator")]
pub fn emulator_kernels() -> Vec<String> {
    emulator::kernel_names()
}

/// On the emulator, whether the `cp.async` copies of kernels launched from this thread land
/// at once (`true`) or at the wait that covers them (`false`, the default); see
/// crates/tensor/emulator/runtime.cpp. No effect on a GPU.
#[cfg(feature = "emulator")]
pub fn emulator_eager_copies(eager: bool) {
    emulator::set_eager_copies(eager)
}

/// On the emulator, the order kernels launched from this thread run their blocks, warps and
/// lanes in (`None`: the process's, from `ARTIST_EMU_ORDER`); see the emulator's `set_order`.
/// No effect on a GPU.
#[cfg(feature = "emulator")]
pub fn emulator_order(order: Option<EmulatorOrder>) {
    emulator::set_order(order)
}

#[cfg(feature = "emulator")]
pub use emulator::Order as EmulatorOrder;

// ---- devices ----------------------------------------------------------------------------

pub(crate) struct GpuDevice {
    pub ordinal: usize,
    pub rt: Box<dyn Runtime>,
    pool: Mutex<Pool>,
    /// Kernels and matrix products queued so far.
    launches: std::sync::atomic::AtomicU64,
    /// The thread capturing a graph on this device and the graph's memory, if one is.
    capturing: Mutex<Option<(std::thread::ThreadId, Arc<GraphMemory>)>>,
}

impl GpuDevice {
    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        if bytes == 0 {
            return Ok(DeviceBuffer { ptr: 0, size: 0, dev: self.clone(), graph: None });
        }
        let capturing = self.capturing.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((thread, g)) = capturing
            && thread == std::thread::current().id()
        {
            // A graph's blocks are its own: reused only within it, and back in the pool
            // once the graph and every tensor in them are gone.
            let size = alloc::rounded(bytes);
            let ptr = match g.take(size) {
                Some(ptr) => ptr,
                None => {
                    let (ptr, size) = self.pool().alloc(self.rt.as_ref(), bytes)?;
                    g.own(ptr, size);
                    return Ok(DeviceBuffer { ptr, size, dev: self.clone(), graph: Some(g) });
                }
            };
            return Ok(DeviceBuffer { ptr, size, dev: self.clone(), graph: Some(g) });
        }
        let (ptr, size) = self.pool().alloc(self.rt.as_ref(), bytes)?;
        Ok(DeviceBuffer { ptr, size, dev: self.clone(), graph: None })
    }

    pub fn launch(&self, module: &'static str, name: String, cfg: LaunchCfg, args: Args) -> Result<()> {
        self.count_launch();
        THREAD_KERNELS.with(|k| {
            if let Some(counts) = k.borrow_mut().as_mut() {
                *counts.entry(name.clone()).or_insert(0) += 1;
            }
        });
        self.rt.launch(&Kernel { module, name }, cfg, args)
    }

    pub fn count_launch(&self) {
        self.launches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        THREAD_LAUNCHES.with(|n| n.set(n.get() + 1));
    }

    /// Blocks for a grid-stride loop over `n` items with `threads` per block: enough to fill
    /// the GPU several times over, no more.
    pub fn blocks_for(&self, n: usize, threads: u32) -> u32 {
        let cap = self.rt.info().multiprocessors.max(1) as usize * 32;
        n.div_ceil(threads as usize).clamp(1, cap) as u32
    }
}

static DEVICES: Mutex<Vec<Option<Arc<GpuDevice>>>> = Mutex::new(Vec::new());

pub(crate) fn device(ordinal: usize) -> Result<Arc<GpuDevice>> {
    let mut devs = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(Some(d)) = devs.get(ordinal) {
        return Ok(d.clone());
    }
    let count = device_count()?;
    if ordinal >= count {
        return Err(Error::CudaDevice { ordinal, msg: format!("this machine has {count} CUDA device(s)") });
    }
    let rt: Box<dyn Runtime> = match backend() {
        Backend::Driver => Box::new(driver::Driver::new(ordinal)?),
        #[cfg(feature = "emulator")]
        Backend::Emulator => Box::new(emulator::Emulator::new(ordinal)),
        #[cfg(not(feature = "emulator"))]
        Backend::Emulator => {
            return Err(Error::Cuda {
                op: "emulator",
                msg: "this build has no emulator (cargo feature `emulator`)".into(),
            });
        }
    };
    let d = Arc::new(GpuDevice {
        ordinal,
        rt,
        pool: Mutex::new(Pool::default()),
        launches: Default::default(),
        capturing: Mutex::new(None),
    });
    if devs.len() <= ordinal {
        devs.resize(ordinal + 1, None);
    }
    devs[ordinal] = Some(d.clone());
    Ok(d)
}

/// A block of device memory from the pool; returned to it on drop (or to the graph whose
/// capture allocated it).
pub(crate) struct DeviceBuffer {
    pub ptr: u64,
    size: usize,
    pub dev: Arc<GpuDevice>,
    graph: Option<Arc<GraphMemory>>,
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.size == 0 {
            return;
        }
        match &self.graph {
            Some(g) => g.give_back(self.ptr, self.size),
            None => self.dev.pool().release(self.ptr, self.size),
        }
    }
}

// ---- graphs -----------------------------------------------------------------------------

/// The device memory a graph's capture allocated. The graph's kernels read and write these
/// addresses at every replay, so no block goes back to the device's pool while the graph,
/// or a tensor in one of its blocks, lives; a block freed during the capture is reused by
/// later allocations of the same capture only (the graph orders those uses as the stream
/// did).
pub(crate) struct GraphMemory {
    dev: Arc<GpuDevice>,
    blocks: Mutex<GraphBlocks>,
}

#[derive(Default)]
struct GraphBlocks {
    owned: Vec<(u64, usize)>,
    free: std::collections::BTreeMap<usize, Vec<u64>>,
    /// Whether the capture still runs (blocks freed after it stay unused).
    open: bool,
}

impl GraphMemory {
    fn lock(&self) -> std::sync::MutexGuard<'_, GraphBlocks> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, size: usize) -> Option<u64> {
        let mut b = self.lock();
        let list = b.free.get_mut(&size)?;
        let ptr = list.pop();
        if list.is_empty() {
            b.free.remove(&size);
        }
        ptr
    }

    fn own(&self, ptr: u64, size: usize) {
        self.lock().owned.push((ptr, size));
    }

    fn give_back(&self, ptr: u64, size: usize) {
        let mut b = self.lock();
        if b.open {
            b.free.entry(size).or_default().push(ptr);
        }
    }
}

impl Drop for GraphMemory {
    fn drop(&mut self) {
        let owned = std::mem::take(&mut self.lock().owned);
        let mut pool = self.dev.pool();
        for (ptr, size) in owned {
            pool.release(ptr, size);
        }
    }
}

/// Device work recorded once and replayed with one launch: a CUDA graph (the emulator
/// records the same operations and runs them again). Made by [`capture`].
pub struct Graph {
    dev: Arc<GpuDevice>,
    // Dropped before the memory it uses goes back to the pool (fields drop in order).
    exec: Box<dyn std::any::Any + Send + Sync>,
    _memory: Arc<GraphMemory>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Graph[cuda:{}]", self.dev.ordinal)
    }
}

impl Graph {
    /// Queues the recorded work once more: the same kernels on the same addresses, so new
    /// inputs must be written into the tensors the capture read (e.g. with
    /// [`crate::Tensor::write_host`]), and results read from the tensors it wrote, before
    /// the next replay overwrites them. One launch, whatever the graph holds.
    pub fn replay(&self) -> Result<()> {
        self.dev.count_launch();
        self.dev.rt.launch_graph(self.exec.as_ref())
    }
}

/// Records the work `f` queues on device `ordinal` into a [`Graph`] instead of running it:
/// nothing `f` queues has run when this returns (replay the graph once for the results).
/// While `f` runs, copies between host and device and waits are errors (CUDA's capture
/// rules), and no other thread may use the device. Tensors `f` allocates live in the
/// graph's own memory; everything else the graph reads or writes must outlive it. Every
/// kernel `f` uses should have run once before, outside a capture (modules are loaded on
/// first use).
pub fn capture<R>(ordinal: usize, f: impl FnOnce() -> Result<R>) -> Result<(Graph, R)> {
    let dev = device(ordinal)?;
    let memory = Arc::new(GraphMemory {
        dev: dev.clone(),
        blocks: Mutex::new(GraphBlocks { open: true, ..Default::default() }),
    });
    {
        let mut c = dev.capturing.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_some() {
            return Err(Error::Cuda { op: "capture", msg: format!("cuda:{ordinal} is already capturing a graph") });
        }
        dev.rt.begin_capture()?;
        *c = Some((std::thread::current().id(), memory.clone()));
    }
    let out = f();
    dev.capturing.lock().unwrap_or_else(|e| e.into_inner()).take();
    memory.lock().open = false;
    let exec = dev.rt.end_capture();
    let out = out?;
    Ok((Graph { dev, exec: exec?, _memory: memory }, out))
}

// ---- storage ----------------------------------------------------------------------------

/// Tensor elements in GPU memory: `len` elements of `dtype`, contiguous from the buffer's
/// start (views are layouts over it, as on the CPU).
pub struct CudaStorage {
    pub(crate) buf: DeviceBuffer,
    dtype: DType,
    len: usize,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage[cuda:{}, {} x {}]", self.buf.dev.ordinal, self.len, self.dtype)
    }
}

impl CudaStorage {
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn ordinal(&self) -> usize {
        self.buf.dev.ordinal
    }

    pub(crate) fn ptr(&self) -> u64 {
        self.buf.ptr
    }

    pub(crate) fn dev(&self) -> &Arc<GpuDevice> {
        &self.buf.dev
    }

    /// Uninitialised storage for `len` elements.
    pub(crate) fn alloc(dev: &Arc<GpuDevice>, dtype: DType, len: usize) -> Result<CudaStorage> {
        Ok(CudaStorage { buf: dev.alloc(len * dtype.size_in_bytes())?, dtype, len })
    }

    pub(crate) fn zeros(dev: &Arc<GpuDevice>, dtype: DType, len: usize) -> Result<CudaStorage> {
        let s = CudaStorage::alloc(dev, dtype, len)?;
        if len > 0 {
            dev.rt.memset_zero(s.ptr(), len * dtype.size_in_bytes())?;
        }
        Ok(s)
    }

    pub(crate) fn from_host(dev: &Arc<GpuDevice>, host: &CpuStorage) -> Result<CudaStorage> {
        let s = CudaStorage::alloc(dev, host.dtype(), host.len())?;
        if !host.is_empty() {
            dev.rt.htod(host.as_bytes(), s.ptr())?;
        }
        Ok(s)
    }

    /// Elements `range` (in elements) copied to the host.
    pub(crate) fn to_host(&self, range: std::ops::Range<usize>) -> Result<CpuStorage> {
        let mut host = CpuStorage::zeros(self.dtype, range.len());
        if !range.is_empty() {
            let es = self.dtype.size_in_bytes();
            self.buf.dev.rt.dtoh(self.ptr() + (range.start * es) as u64, host.as_bytes_mut())?;
        }
        Ok(host)
    }
}
