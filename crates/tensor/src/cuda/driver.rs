//! The runtime on a real GPU: cudarc's CUDA driver API for the context, the stream, memory
//! and launches; our NVRTC wrapper for kernels (compiled once per file, on first use); cuBLAS
//! for matrix products (created on first use, so element-wise work needs no cuBLAS).

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys as blas;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction, CUfunction_attribute, CUmodule};
use cudarc::driver::{CudaContext, CudaStream, result};

use crate::cuda::libs;
use crate::cuda::nvrtc;
use crate::cuda::runtime::{Args, DeviceInfo, Gemm, Kernel, LaunchCfg, Runtime};
use crate::{DType, Error, Result};

fn cuda_err(op: &'static str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda { op, msg: format!("{e:?}") }
}

/// An instantiated CUDA graph; the driver's graph objects are not internally synchronised.
struct DriverGraph(Mutex<cudarc::driver::CudaGraph>);
// SAFETY: the graph is only touched under its mutex, with the context bound by cudarc.
unsafe impl Send for DriverGraph {}
unsafe impl Sync for DriverGraph {}

struct Blas(blas::cublasHandle_t);
// SAFETY: the handle is only used under the runtime's mutex, on the runtime's stream.
unsafe impl Send for Blas {}

#[derive(Default)]
struct Loaded {
    modules: HashMap<&'static str, CUmodule>,
    functions: HashMap<String, CUfunction>,
    /// The dynamic shared memory each function has been allowed past the default 48 KB.
    smem_opt_in: HashMap<String, u32>,
}
// SAFETY: module and function handles are plain driver handles, valid in any thread that
// binds the context.
unsafe impl Send for Loaded {}

pub(crate) struct Driver {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    target: Mutex<Option<String>>,
    loaded: Mutex<Loaded>,
    blas: Mutex<Option<Blas>>,
    /// The side stream ([`Runtime::side_stream`]), made on first use.
    side: Mutex<Option<Arc<CudaStream>>>,
}

impl Driver {
    /// The side stream, made on first use, with the context bound.
    fn side(&self) -> Result<Arc<CudaStream>> {
        self.bind()?;
        let mut side = self.side.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = side.as_ref() {
            return Ok(s.clone());
        }
        let s = self.ctx.new_stream().map_err(|e| cuda_err("side stream", e))?;
        *side = Some(s.clone());
        Ok(s)
    }

    pub fn new(ordinal: usize) -> Result<Driver> {
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::CudaDevice { ordinal, msg: format!("{e:?}") })?;
        let attr = |a| ctx.attribute(a).map_err(|e| cuda_err("device attribute", e));
        let cc = (
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? as u32,
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)? as u32,
        );
        let sms = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let target = nvrtc::target_for(cc);
        let wgmma = target.as_deref().is_ok_and(|t| t == "sm_90a");
        let toolchain = match (nvrtc::version(), target) {
            (Ok((major, minor)), Ok(t)) => format!("NVRTC {major}.{minor}, {t}"),
            (Err(e), _) | (_, Err(e)) => format!("kernels cannot be built: {e}"),
        };
        let info = DeviceInfo {
            name: ctx.name().map_err(|e| cuda_err("device name", e))?,
            compute_capability: cc,
            multiprocessors: sms,
            total_memory: ctx.total_mem().map_err(|e| cuda_err("device memory", e))?,
            emulated: false,
            wgmma,
            toolchain,
        };
        let stream = ctx.new_stream().map_err(|e| cuda_err("stream", e))?;
        Ok(Driver {
            ctx,
            stream,
            info,
            target: Mutex::new(None),
            loaded: Mutex::new(Loaded::default()),
            blas: Mutex::new(None),
            side: Mutex::new(None),
        })
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| cuda_err("bind context", e))
    }

    /// The NVRTC target for this GPU, found once.
    fn target(&self) -> Result<String> {
        let mut t = self.target.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = &*t {
            return Ok(t.clone());
        }
        let target = nvrtc::target_for(self.info.compute_capability)?;
        *t = Some(target.clone());
        Ok(target)
    }

    fn function(&self, k: &Kernel) -> Result<CUfunction> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&f) = loaded.functions.get(&k.name) {
            return Ok(f);
        }
        let module = match loaded.modules.get(k.module) {
            Some(&m) => m,
            None => {
                let image = nvrtc::compile_cached(k.module, &self.target()?)?;
                let mut bytes = image.bytes;
                if !image.cubin && bytes.last() != Some(&0) {
                    bytes.push(0);
                }
                // SAFETY: a complete CUBIN or NUL-terminated PTX image from NVRTC.
                let m = unsafe { result::module::load_data(bytes.as_ptr() as *const c_void) }
                    .map_err(|e| cuda_err("load kernel module", format!("kernels/{}.cu: {e:?}", k.module)))?;
                loaded.modules.insert(k.module, m);
                m
            }
        };
        let name = CString::new(k.name.as_str()).expect("kernel names have no NUL");
        // SAFETY: `module` is loaded and never unloaded while the runtime lives.
        let f = unsafe { result::module::get_function(module, name) }
            .map_err(|e| cuda_err("kernel lookup", format!("{} in kernels/{}.cu: {e:?}", k.name, k.module)))?;
        loaded.functions.insert(k.name.clone(), f);
        Ok(f)
    }

    /// Lets `f` take `bytes` of dynamic shared memory, past the 48 KB a launch gets without
    /// asking (Hopper allows up to 227 KB per block), once per function and size.
    fn allow_smem(&self, k: &Kernel, f: CUfunction, bytes: u32) -> Result<()> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.smem_opt_in.get(&k.name).is_some_and(|&b| b >= bytes) {
            return Ok(());
        }
        let attr = CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        // SAFETY: `f` is a loaded function of this context.
        unsafe { result::function::set_function_attribute(f, attr, bytes as i32) }
            .map_err(|e| cuda_err("shared memory opt-in", format!("{}: {bytes} bytes: {e:?}", k.name)))?;
        loaded.smem_opt_in.insert(k.name.clone(), bytes);
        Ok(())
    }

    fn blas_handle(&self) -> Result<std::sync::MutexGuard<'_, Option<Blas>>> {
        let mut guard = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            libs::ensure("cublasLt");
            // SAFETY: only tries to dlopen the library.
            if libs::ensure("cublas").is_none() || !unsafe { blas::is_culib_present() } {
                return Err(Error::Cuda {
                    op: "cublas",
                    msg: "libcublas was not found (see docs/CUDA.md on where it is looked for)".into(),
                });
            }
            let h = cudarc::cublas::result::create_handle().map_err(|e| cuda_err("cublas", e))?;
            // SAFETY: a fresh handle and this runtime's live stream.
            unsafe { cudarc::cublas::result::set_stream(h, self.stream.cu_stream() as _) }
                .map_err(|e| cuda_err("cublas", e))?;
            // A workspace of our own (32 MiB, what cuBLAS recommends on Hopper), so that a
            // product inside a CUDA graph capture never makes cuBLAS allocate. It lives as
            // long as the handle: the runtime's.
            const WORKSPACE: usize = 32 << 20;
            // SAFETY: a plain device allocation, handed to the handle for its lifetime.
            let ws = unsafe { result::malloc_sync(WORKSPACE) }.map_err(|e| cuda_err("cublas workspace", e))?;
            // SAFETY: a live handle and a 256-byte-aligned block of WORKSPACE bytes.
            let status = unsafe { blas::cublasSetWorkspace_v2(h, ws as *mut c_void, WORKSPACE) };
            if status != blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(cuda_err("cublasSetWorkspace", status));
            }
            *guard = Some(Blas(h));
        }
        Ok(guard)
    }
}

fn blas_type(d: DType) -> Result<blas::cudaDataType> {
    Ok(match d {
        DType::F32 => blas::cudaDataType::CUDA_R_32F,
        DType::BF16 => blas::cudaDataType::CUDA_R_16BF,
        DType::F16 => blas::cudaDataType::CUDA_R_16F,
        other => return Err(Error::UnsupportedDType { op: "matmul", dtype: other }),
    })
}

impl Runtime for Driver {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn malloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        // SAFETY: a plain device allocation, freed through `free`.
        unsafe { result::malloc_sync(bytes) }.map_err(|e| cuda_err("cudaMalloc", format!("{bytes} bytes: {e:?}")))
    }

    fn free(&self, ptr: u64) {
        if self.bind().is_ok() {
            // The stream may still use the block: wait, then free.
            let _ = self.stream.synchronize();
            // SAFETY: `ptr` came from `malloc` and is freed once.
            let _ = unsafe { result::free_sync(ptr) };
        }
    }

    fn htod(&self, src: &[u8], dst: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` holds at least `src.len()` bytes; pageable sources are staged before
        // the call returns, so `src` may go right after.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| cuda_err("copy to device", e))
    }

    fn dtoh(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: `src` holds at least `dst.len()` bytes; we wait before `dst` is read.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| cuda_err("copy to host", e))?;
        self.synchronize()
    }

    fn dtod(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both blocks hold `bytes`.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(|e| cuda_err("copy on device", e))
    }

    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` holds `bytes`.
        unsafe { result::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }.map_err(|e| cuda_err("memset", e))
    }

    fn launch(&self, kernel: &Kernel, cfg: LaunchCfg, mut args: Args) -> Result<()> {
        self.bind()?;
        let f = self.function(kernel)?;
        if cfg.smem > 48 << 10 {
            self.allow_smem(kernel, f, cfg.smem)?;
        }
        let mut ptrs = args.pointers();
        let (g, b) = (cfg.grid, cfg.block);
        // SAFETY: the argument list matches the kernel's parameters (the emulator checks the
        // same lists against the kernels' signatures in CI); buffers are live device memory.
        unsafe {
            result::launch_kernel(
                f,
                (g[0], g[1], g[2]),
                (b[0], b[1], b[2]),
                cfg.smem,
                self.stream.cu_stream(),
                &mut ptrs,
            )
        }
        .map_err(|e| cuda_err("launch", format!("{}: {e:?}", kernel.name)))
    }

    fn gemm(&self, g: &Gemm) -> Result<()> {
        self.bind()?;
        let guard = self.blas_handle()?;
        let h = guard.as_ref().expect("created above").0;
        let op = |t: bool| if t { blas::cublasOperation_t::CUBLAS_OP_T } else { blas::cublasOperation_t::CUBLAS_OP_N };
        let (alpha, beta) = (g.alpha, g.beta);
        let int = |v: usize, what: &str| -> Result<i32> {
            i32::try_from(v).map_err(|_| Error::Cuda { op: "cublas", msg: format!("{what} = {v} exceeds i32") })
        };
        // SAFETY: pointers, leading dimensions and strides describe live device buffers
        // (checked by the caller); alpha and beta are host scalars (the default pointer mode).
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                h,
                op(g.trans_a),
                op(g.trans_b),
                int(g.m, "m")?,
                int(g.n, "n")?,
                int(g.k, "k")?,
                &alpha as *const f32 as *const c_void,
                g.a as *const c_void,
                blas_type(g.ab_dtype)?,
                int(g.lda, "lda")?,
                g.stride_a as i64,
                g.b as *const c_void,
                blas_type(g.ab_dtype)?,
                int(g.ldb, "ldb")?,
                g.stride_b as i64,
                &beta as *const f32 as *const c_void,
                g.c as *mut c_void,
                blas_type(g.c_dtype)?,
                int(g.ldc, "ldc")?,
                g.stride_c as i64,
                int(g.batch, "batch")?,
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| cuda_err("cublasGemmStridedBatchedEx", e))
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.stream.synchronize().map_err(|e| cuda_err("synchronize", e))
    }

    fn raw_stream(&self) -> Option<Result<u64>> {
        Some(self.bind().map(|()| self.stream.cu_stream() as u64))
    }

    fn side_stream(&self) -> Option<Result<u64>> {
        Some(self.side().map(|s| s.cu_stream() as u64))
    }

    fn side_waits_for_main(&self) -> Result<()> {
        self.side()?.join(&self.stream).map_err(|e| cuda_err("side stream waits for the main one", e))
    }

    fn main_waits_for_side(&self) -> Result<()> {
        let side = self.side.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match side {
            Some(side) => {
                self.bind()?;
                self.stream.join(&side).map_err(|e| cuda_err("main stream waits for the side one", e))
            }
            None => Ok(()), // nothing was ever queued beside the main stream
        }
    }

    fn begin_capture(&self) -> Result<()> {
        use cudarc::driver::sys::CUstreamCaptureMode;
        // Thread-local mode: other threads may keep using the driver meanwhile (their work
        // must not go to this stream: it would be captured).
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| cuda_err("begin graph capture", e))
    }

    fn end_capture(&self) -> Result<Box<dyn std::any::Any + Send + Sync>> {
        use cudarc::driver::sys::CUgraphInstantiate_flags;
        let graph = self
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(|e| cuda_err("end graph capture", e))?
            .ok_or_else(|| cuda_err("end graph capture", "nothing was captured"))?;
        Ok(Box::new(DriverGraph(Mutex::new(graph))))
    }

    fn launch_graph(&self, graph: &(dyn std::any::Any + Send + Sync)) -> Result<()> {
        let g = graph
            .downcast_ref::<DriverGraph>()
            .ok_or_else(|| cuda_err("launch graph", "the graph was recorded by another runtime"))?;
        g.0.lock().unwrap_or_else(|e| e.into_inner()).launch().map_err(|e| cuda_err("launch graph", e))
    }

    fn stream_idle(&self) -> Result<bool> {
        use cudarc::driver::sys::{CUresult, cuStreamQuery};
        self.bind()?;
        // SAFETY: a live stream of the bound context.
        match unsafe { cuStreamQuery(self.stream.cu_stream()) } {
            CUresult::CUDA_SUCCESS => Ok(true),
            CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            e => Err(cuda_err("query stream", e)),
        }
    }
}
