//! GPU ranks on NCCL: [`Nccl`].

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use artist_tensor::{DType, Device, Tensor, cuda};
use cudarc::nccl::sys::{ncclConfig_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};

use crate::{Communicator, Error, Reduce, Result, TcpComm, check_root};

type CommHandle = *mut c_void;
type Stream = *mut c_void;

/// `ncclResult_t` values this module acts on (the rest are reported by name).
const SUCCESS: c_int = 0;
const IN_PROGRESS: c_int = 7;
/// `NCCL_CONFIG_UNDEF_INT`: "let NCCL decide".
const UNDEF_INT: c_int = i32::MIN;
/// `NCCL_VERSION(2, 30, 0)`: the header the config struct's layout comes from. NCCL copies
/// `min(size, its own size)` bytes of it, so older libraries read the fields they know.
const CONFIG_VERSION: u32 = 2 * 10000 + 30 * 100;

/// The entry points used, resolved once per process.
struct Api {
    path: String,
    version: c_int,
    get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> c_int,
    init_rank_config: unsafe extern "C" fn(*mut CommHandle, c_int, ncclUniqueId, c_int, *mut ncclConfig_t) -> c_int,
    get_async_error: unsafe extern "C" fn(CommHandle, *mut c_int) -> c_int,
    abort: unsafe extern "C" fn(CommHandle) -> c_int,
    finalize: unsafe extern "C" fn(CommHandle) -> c_int,
    destroy: unsafe extern "C" fn(CommHandle) -> c_int,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, CommHandle, Stream) -> c_int,
    broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, CommHandle, Stream) -> c_int,
    all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, CommHandle, Stream) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    last_error: unsafe extern "C" fn(CommHandle) -> *const c_char,
    /// Keeps the entry points above valid.
    _lib: libloading::Library,
}

fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|e| Error::Nccl { op: "load libnccl".into(), msg: e.clone(), rank: None })
}

fn candidates() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(p) = std::env::var("ARTIST_NCCL_LIB")
        && !p.is_empty()
    {
        out.push(p);
    }
    out.extend(["libnccl.so.2".to_string(), "libnccl.so".to_string()]);
    for dir in cuda::library_dirs() {
        for name in ["libnccl.so.2", "libnccl.so"] {
            let p = dir.join(name);
            if p.is_file() {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}

fn load() -> std::result::Result<Api, String> {
    let tried = candidates();
    let (lib, path) = tried
        .iter()
        .find_map(|c| {
            // SAFETY: loading NCCL runs only its library constructors.
            unsafe { libloading::Library::new(c) }.ok().map(|l| (l, c.clone()))
        })
        .ok_or_else(|| {
            format!(
                "libnccl was not found (tried {}); install NCCL or PyTorch's `nvidia-nccl-cu12`, or set \
                 ARTIST_NCCL_LIB to the library's path",
                tried.join(", ")
            )
        })?;
    // SAFETY: each symbol is looked up with the signature of NCCL's public header (enum
    // arguments are C `int`s; results are read as `int` so an unknown code is not UB).
    unsafe {
        macro_rules! sym {
            ($name:literal) => {
                *lib.get(concat!($name, "\0").as_bytes()).map_err(|e| format!("{path} has no {}: {e}", $name))?
            };
        }
        let get_version: unsafe extern "C" fn(*mut c_int) -> c_int = sym!("ncclGetVersion");
        let mut version = 0;
        if get_version(&mut version) != SUCCESS {
            return Err(format!("{path}: ncclGetVersion failed"));
        }
        if version < 21400 {
            return Err(format!(
                "{path} is NCCL {}; 2.14 or newer is needed (non-blocking communicators)",
                version_text(version)
            ));
        }
        Ok(Api {
            version,
            get_unique_id: sym!("ncclGetUniqueId"),
            init_rank_config: sym!("ncclCommInitRankConfig"),
            get_async_error: sym!("ncclCommGetAsyncError"),
            abort: sym!("ncclCommAbort"),
            finalize: sym!("ncclCommFinalize"),
            destroy: sym!("ncclCommDestroy"),
            all_reduce: sym!("ncclAllReduce"),
            broadcast: sym!("ncclBroadcast"),
            all_gather: sym!("ncclAllGather"),
            error_string: sym!("ncclGetErrorString"),
            last_error: sym!("ncclGetLastError"),
            path: path.clone(),
            _lib: lib,
        })
    }
}

fn version_text(v: c_int) -> String {
    format!("{}.{}.{}", v / 10000, v % 10000 / 100, v % 100)
}

fn nccl_dtype(d: DType) -> Option<c_int> {
    Some(match d {
        DType::F32 => ncclDataType_t::ncclFloat32 as c_int,
        DType::BF16 => ncclDataType_t::ncclBfloat16 as c_int,
        DType::F16 => ncclDataType_t::ncclFloat16 as c_int,
        _ => return None,
    })
}

/// One GPU rank's NCCL communicator: one process per GPU, collectives queued on the
/// tensor crate's side stream for the device ([`cuda::side_stream`]), so that they run
/// beside backward's kernels on the main stream rather than taking turns with them.
///
/// Each collective first makes the side stream wait for everything queued on the main
/// stream so far (an event: the gradients it sums are final), and
/// [`Communicator::synchronize`] makes the main stream wait for the side stream before it
/// waits for both. Until then the tensors handed over must stay alive and untouched by
/// other work, as [`crate::all_reduce_gradients_overlapped`] keeps them.
///
/// `libnccl` is loaded at run time (a build needs no NCCL, and a machine without it gets
/// an error naming where it was looked for); its types and constants are cudarc's
/// (`cudarc::nccl::sys`). The library is looked for as `ARTIST_NCCL_LIB` (a file),
/// `libnccl.so.2` and `libnccl.so` by the dynamic loader's rules, then in the folders
/// where the tensor crate finds cuBLAS and NVRTC (`ARTIST_CUDA_LIBS`, `CUDA_HOME`, the
/// `nvidia/nccl/lib` folder of a Python environment with PyTorch or
/// `nvidia-nccl-cu12`). cudarc's own loader is not used because it does not try
/// `libnccl.so.2`, the only name NCCL's wheels and its runtime package ship.
///
/// The communicator is non-blocking (`ncclCommInitRankConfig` with `blocking = 0`), so
/// no call can hang: initialisation and every wait poll `ncclCommGetAsyncError` and the
/// stream until a deadline, and at the deadline the communicator is aborted
/// (`ncclCommAbort`, which also stops kernels still waiting for a peer; destroying it
/// would wait for them). The TCP connection of the rendezvous stays open beside NCCL: after
/// a failure every survivor meets the others there once more, and whoever does not come
/// is the rank named in the error.
pub struct Nccl {
    comm: CommHandle,
    rank: usize,
    world_size: usize,
    ordinal: usize,
    timeout: Duration,
    /// Collectives queued so far (named in errors).
    seq: u64,
    /// The rendezvous connection, kept to find out which rank failed.
    tcp: Option<TcpComm>,
    failed: Option<Error>,
}

// SAFETY: an NCCL communicator may be used from any thread, one at a time (`&mut self`);
// every call first makes the device's context current on the calling thread.
unsafe impl Send for Nccl {}

impl Nccl {
    /// The NCCL library this process loads and its version, e.g. `NCCL 2.21.5
    /// (/…/libnccl.so.2)`, or why it cannot be loaded.
    pub fn library() -> Result<String> {
        let a = api()?;
        Ok(format!("NCCL {} ({})", version_text(a.version), a.path))
    }

    /// Whether NCCL can be used for ranks on `device`: a real GPU (not the emulator) and
    /// a loadable `libnccl`.
    pub fn usable(device: Device) -> bool {
        matches!(device, Device::Cuda(n) if cuda::raw_stream(n).is_ok()) && api().is_ok()
    }

    /// A fresh unique id (rank 0 makes it; every rank of the group needs the same one).
    pub fn unique_id() -> Result<[u8; 128]> {
        let a = api()?;
        let mut id = ncclUniqueId { internal: [0; 128] };
        // SAFETY: `id` is a valid out-pointer.
        check(a, None, "ncclGetUniqueId", unsafe { (a.get_unique_id)(&mut id) })?;
        Ok(id.internal.map(|c| c as u8))
    }

    /// Joins the group of the TCP rendezvous on GPU `ordinal` (usually `LOCAL_RANK`):
    /// rank 0 makes the unique id, the TCP connection carries it to the others, and every
    /// rank initialises NCCL within the TCP communicator's timeout. The connection is kept
    /// to name a failed rank later.
    pub fn connect(mut tcp: TcpComm, ordinal: usize) -> Result<Nccl> {
        // Rank 0 failing here drops its connections, and the others' exchange then fails
        // naming it.
        let id = if tcp.rank() == 0 { Nccl::unique_id()?.to_vec() } else { Vec::new() };
        let id = tcp.share_blob(&id)?;
        let (rank, world_size, timeout) = (tcp.rank(), tcp.world_size(), tcp.timeout());
        let mut comm = Nccl::with_id(&id, rank, world_size, ordinal, timeout)?;
        comm.tcp = Some(tcp);
        Ok(comm)
    }

    /// Rank `rank` of `world_size` joining the group of `id` (rank 0's
    /// [`Nccl::unique_id`]) on GPU `ordinal`, within `timeout`.
    pub fn with_id(id: &[u8], rank: usize, world_size: usize, ordinal: usize, timeout: Duration) -> Result<Nccl> {
        let Ok(bytes) = <[u8; 128]>::try_from(id) else {
            return Err(Error::Invalid(format!("an NCCL unique id has 128 bytes, this one {}", id.len())));
        };
        if world_size == 0 || rank >= world_size {
            return Err(Error::Invalid(format!("rank {rank} of a group of {world_size}")));
        }
        let a = api()?;
        // Creates the device's context (NCCL uses the current one) and makes it current.
        cuda::raw_stream(ordinal)?;
        // SAFETY: `ncclConfig_t` is plain data; every field is set below or left zero.
        let mut config: ncclConfig_t = unsafe { std::mem::zeroed() };
        config.size = std::mem::size_of::<ncclConfig_t>();
        config.magic = 0xcafe_beef;
        config.version = CONFIG_VERSION;
        config.blocking = 0;
        for f in [
            &mut config.cgaClusterSize,
            &mut config.minCTAs,
            &mut config.maxCTAs,
            &mut config.splitShare,
            &mut config.trafficClass,
            &mut config.collnetEnable,
            &mut config.CTAPolicy,
            &mut config.shrinkShare,
            &mut config.nvlsCTAs,
            &mut config.nChannelsPerNetPeer,
            &mut config.nvlinkCentricSched,
            &mut config.graphUsageMode,
            &mut config.numRmaCtx,
            &mut config.maxP2pPeers,
        ] {
            *f = UNDEF_INT;
        }
        let mut handle: CommHandle = std::ptr::null_mut();
        let uid = ncclUniqueId { internal: bytes.map(|b| b as c_char) };
        // SAFETY: valid out-pointer and config; ranks checked above.
        let r = unsafe { (a.init_rank_config)(&mut handle, world_size as c_int, uid, rank as c_int, &mut config) };
        let mut comm = Nccl { comm: handle, rank, world_size, ordinal, timeout, seq: 0, tcp: None, failed: None };
        if handle.is_null() {
            return Err(Error::Nccl { op: "ncclCommInitRankConfig".into(), msg: error_text(a, None, r), rank: None });
        }
        if r != SUCCESS && r != IN_PROGRESS {
            let e =
                Error::Nccl { op: "ncclCommInitRankConfig".into(), msg: error_text(a, Some(handle), r), rank: None };
            return Err(comm.fail(e));
        }
        comm.settle("initialising NCCL")?;
        Ok(comm)
    }

    /// The GPU this rank's collectives run on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Waits for the communicator's pending host-side work (a non-blocking call returns
    /// `ncclInProgress` until it is done) within the timeout.
    fn settle(&mut self, what: &str) -> Result<()> {
        let a = api()?;
        let deadline = Instant::now() + self.timeout;
        let mut nap = Duration::from_micros(50);
        loop {
            let mut state = SUCCESS;
            // SAFETY: a live communicator and a valid out-pointer.
            let r = unsafe { (a.get_async_error)(self.comm, &mut state) };
            let state = if r == SUCCESS { state } else { r };
            match state {
                SUCCESS => return Ok(()),
                IN_PROGRESS if Instant::now() < deadline => {
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(5));
                }
                IN_PROGRESS => return Err(self.timed_out(what)),
                r => {
                    let e = Error::Nccl { op: what.to_string(), msg: error_text(a, Some(self.comm), r), rank: None };
                    return Err(self.fail(e));
                }
            }
        }
    }

    /// Queues one collective on the device's side stream, after all the work queued on the
    /// main stream so far: `call` gets the stream.
    fn queue(&mut self, what: &str, call: impl FnOnce(&Api, Stream) -> c_int) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(Error::Aborted(e.to_string()));
        }
        let a = api()?;
        let stream = cuda::side_stream(self.ordinal)? as Stream;
        cuda::side_waits_for_main(self.ordinal)?;
        let what = format!("NCCL {what} (collective #{})", self.seq);
        self.seq += 1;
        match call(a, stream) {
            SUCCESS | IN_PROGRESS => self.settle(&what),
            r => {
                let e = Error::Nccl { op: what, msg: error_text(a, Some(self.comm), r), rank: None };
                Err(self.fail(e))
            }
        }
    }

    /// Aborts the communicator after `e` and remembers why; returns the error to report,
    /// naming the rank that did not come back to the rendezvous connection when one did
    /// not.
    fn fail(&mut self, e: Error) -> Error {
        if let Some(prev) = &self.failed {
            return prev.clone();
        }
        if let Ok(a) = api()
            && !self.comm.is_null()
        {
            // SAFETY: a live communicator, never used again.
            unsafe { (a.abort)(self.comm) };
        }
        self.comm = std::ptr::null_mut();
        // Every survivor comes here after its own failure; the rank that does not is the
        // one to blame.
        let e = match (e, self.tcp.as_mut().map(|t| t.barrier())) {
            (Error::Nccl { op, msg, rank: None }, Some(Err(t))) if t.rank().is_some() => {
                Error::Nccl { op, msg: format!("{msg}; afterwards {t}"), rank: t.rank() }
            }
            (e, _) => e,
        };
        self.failed = Some(e.clone());
        e
    }

    fn timed_out(&mut self, what: &str) -> Error {
        let e = Error::Nccl {
            op: what.to_string(),
            msg: format!(
                "did not finish within {:?} (a rank died, hung, or is still busy elsewhere); the communicator \
                 was aborted",
                self.timeout
            ),
            rank: None,
        };
        self.fail(e)
    }

    /// Whether `t` can be handed to NCCL as it is: on this rank's GPU, contiguous, of a
    /// type NCCL reduces.
    fn on_device(&self, t: &Tensor) -> Option<(u64, c_int)> {
        if t.device() != Device::Cuda(self.ordinal) {
            return None;
        }
        let dtype = nccl_dtype(t.dtype())?;
        t.cuda_ptr().ok().map(|p| (p, dtype))
    }

    fn all_reduce_device(&mut self, t: &Tensor, ptr: u64, dtype: c_int, reduce: Reduce) -> Result<()> {
        let n = t.elem_count();
        if n == 0 {
            return Ok(()); // nothing to sum (and no device address to hand over)
        }
        let comm = self.comm;
        // A mean is NCCL's own (`ncclAvg`, NCCL 2.10 and later): divided on the side stream,
        // with no kernel of ours queued behind the sum.
        let op = match reduce {
            Reduce::Sum => ncclRedOp_t::ncclSum,
            Reduce::Mean => ncclRedOp_t::ncclAvg,
        } as c_int;
        // SAFETY: `ptr` holds `n` elements of `dtype` on this rank's GPU; `t` stays alive
        // and untouched until `synchronize` (the contract of `all_reduce_tensor`), and the
        // side stream waits for the main one's work on it first.
        self.queue("all_reduce", |a, s| unsafe {
            (a.all_reduce)(ptr as *const c_void, ptr as *mut c_void, n, dtype, op, comm, s)
        })
    }

    fn broadcast_device(&mut self, t: &Tensor, ptr: u64, dtype: c_int, root: usize) -> Result<()> {
        let n = t.elem_count();
        if n == 0 {
            return Ok(());
        }
        let comm = self.comm;
        // SAFETY: as in `all_reduce_device`.
        self.queue(&format!("broadcast from rank {root}"), |a, s| unsafe {
            (a.broadcast)(ptr as *const c_void, ptr as *mut c_void, n, dtype, root as c_int, comm, s)
        })
    }

    /// `buf` on this rank's GPU, for the host-buffer collectives.
    fn upload(&self, buf: &[f32]) -> Result<Tensor> {
        Ok(Tensor::from_vec(buf.to_vec(), buf.len(), Device::Cuda(self.ordinal))?)
    }
}

/// NCCL's name for result `r` and, with a communicator, its last error message.
fn error_text(a: &Api, comm: Option<CommHandle>, r: c_int) -> String {
    let text = |p: *const c_char| {
        // SAFETY: NCCL returns NUL-terminated static strings (or null).
        if p.is_null() { String::new() } else { unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned() }
    };
    // SAFETY: both accept any value; `comm` is live or null.
    let name = text(unsafe { (a.error_string)(r) });
    let detail = text(unsafe { (a.last_error)(comm.unwrap_or(std::ptr::null_mut())) });
    if detail.is_empty() { format!("{name} (ncclResult {r})") } else { format!("{name} (ncclResult {r}): {detail}") }
}

fn check(a: &Api, comm: Option<CommHandle>, op: &str, r: c_int) -> Result<()> {
    if r == SUCCESS { Ok(()) } else { Err(Error::Nccl { op: op.to_string(), msg: error_text(a, comm, r), rank: None }) }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        let t = self.upload(buf)?;
        self.all_reduce_tensor(&t, Reduce::Sum)?;
        self.synchronize()?;
        buf.copy_from_slice(&t.to_vec::<f32>()?);
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.world_size)?;
        let t = self.upload(buf)?;
        self.broadcast_tensors(&[&t], root)?;
        self.synchronize()?;
        buf.copy_from_slice(&t.to_vec::<f32>()?);
        Ok(())
    }

    fn all_gather(&mut self, buf: &[f32]) -> Result<Vec<f32>> {
        let n = buf.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let src = self.upload(buf)?;
        let dst = Tensor::zeros(n * self.world_size, DType::F32, Device::Cuda(self.ordinal))?;
        let (s, d) = (src.cuda_ptr()?, dst.cuda_ptr()?);
        let comm = self.comm;
        let f32_ = ncclDataType_t::ncclFloat32 as c_int;
        // SAFETY: `src` holds `n` and `dst` `n * world_size` f32 on this GPU; both live
        // until the wait below (the side stream waits for the upload first).
        self.queue("all_gather", |a, st| unsafe {
            (a.all_gather)(s as *const c_void, d as *mut c_void, n, f32_, comm, st)
        })?;
        self.synchronize()?;
        Ok(dst.to_vec::<f32>()?)
    }

    fn barrier(&mut self) -> Result<()> {
        self.all_reduce_sum(&mut [0.0])
    }

    /// Sums (or averages, with NCCL's `ncclAvg`: exact scaling when the world size is a
    /// power of two) on the GPU, in place, on the side stream, when `t` is on this rank's
    /// GPU; through host memory otherwise. NCCL's ring and tree sums add in an order of
    /// their own, so more than two ranks agree with [`crate::InProcess`] to float
    /// reassociation, not to the bit.
    fn all_reduce_tensor(&mut self, t: &Tensor, reduce: Reduce) -> Result<()> {
        match self.on_device(t) {
            Some((ptr, dtype)) if t.dtype() == DType::F32 => self.all_reduce_device(t, ptr, dtype, reduce),
            _ => crate::all_reduce_through_host(self, t, reduce),
        }
    }

    /// One NCCL broadcast per tensor, in its own dtype, when all are on this rank's GPU;
    /// through host memory otherwise.
    fn broadcast_tensors(&mut self, ts: &[&Tensor], root: usize) -> Result<()> {
        check_root(root, self.world_size)?;
        let on: Vec<Option<(u64, c_int)>> = ts.iter().map(|t| self.on_device(t)).collect();
        if on.iter().any(Option::is_none) {
            return crate::grads::broadcast_through_host(self, ts, root);
        }
        for (t, (ptr, dtype)) in ts.iter().zip(on.into_iter().flatten()) {
            self.broadcast_device(t, ptr, dtype, root)?;
        }
        Ok(())
    }

    /// Makes the device's main stream wait for the collectives on the side stream, then
    /// polls it until everything queued on it has finished; aborts the group at the
    /// timeout.
    fn synchronize(&mut self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(Error::Aborted(e.to_string()));
        }
        cuda::main_waits_for_side(self.ordinal)?;
        let deadline = Instant::now() + self.timeout;
        let mut nap = Duration::from_micros(20);
        loop {
            if cuda::stream_idle(self.ordinal)? {
                return self.settle("waiting for NCCL");
            }
            self.settle("waiting for NCCL")?;
            if Instant::now() >= deadline {
                return Err(self.timed_out("waiting for NCCL collectives"));
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        let Ok(a) = api() else { return };
        if self.comm.is_null() {
            return;
        }
        // A healthy communicator is finalised (its queued work flushed) and destroyed; one
        // that cannot finish within the timeout is aborted instead.
        let _ = cuda::raw_stream(self.ordinal);
        // SAFETY: a live communicator; nothing uses it after this.
        let r = unsafe { (a.finalize)(self.comm) };
        let finished = (r == SUCCESS || r == IN_PROGRESS) && {
            let tcp = self.tcp.take(); // no rendezvous round at exit
            let ok = self.settle("finalising NCCL").is_ok();
            self.tcp = tcp;
            ok
        };
        if !self.comm.is_null() {
            // SAFETY: as above.
            unsafe {
                if finished {
                    (a.destroy)(self.comm);
                } else {
                    (a.abort)(self.comm);
                }
            }
        }
    }
}
