//! `Tensor`: shared storage plus a layout. Cloning a tensor or taking a view shares the
//! storage; ops return new tensors. The only in-place write is [`Tensor::copy_from`] (what
//! a preallocated KV cache or an optimiser needs), and it is seen through every view of the
//! same storage.

use std::sync::Arc;

use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::cpu::{CpuStorage, dispatch_all, elementwise};
use crate::cuda::{self, CudaStorage};
use crate::{DType, Device, Error, Layout, Result, Shape, WithDType};

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{}, {}, {}]", self.shape(), self.dtype, self.device)
    }
}

/// Refuses CUDA tensors, for the ops that run on the CPU only (those taking Rust closures).
pub(crate) fn check_cpu(op: &'static str, device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(_) => Err(Error::CpuOnly(op)),
    }
}

impl Tensor {
    // ---- construction -------------------------------------------------------------------

    /// A contiguous tensor over `storage`.
    pub(crate) fn from_storage(storage: CpuStorage, shape: impl Into<Shape>) -> Tensor {
        let layout = Layout::contiguous(shape);
        debug_assert_eq!(layout.shape().elem_count(), storage.len());
        Tensor {
            dtype: storage.dtype(),
            storage: Arc::new(RwLock::new(Storage::Cpu(storage))),
            layout,
            device: Device::Cpu,
        }
    }

    /// A contiguous tensor over CUDA storage.
    pub(crate) fn from_cuda(storage: CudaStorage, shape: impl Into<Shape>) -> Tensor {
        let layout = Layout::contiguous(shape);
        debug_assert_eq!(layout.shape().elem_count(), storage.len());
        Tensor {
            dtype: storage.dtype(),
            device: Device::Cuda(storage.ordinal()),
            storage: Arc::new(RwLock::new(Storage::Cuda(storage))),
            layout,
        }
    }

    /// Host storage as a tensor on `device` (uploaded when that is a GPU).
    fn from_host(storage: CpuStorage, shape: Shape, device: Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Ok(Tensor::from_storage(storage, shape)),
            Device::Cuda(n) => cuda::ops::upload(&storage, shape, n),
        }
    }

    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != data.len() {
            return Err(Error::ElementCount { op: "from_vec", expected: shape.elem_count(), got: data.len(), shape });
        }
        Tensor::from_host(T::into_storage(data), shape, device)
    }

    pub fn from_slice<T: WithDType>(data: &[T], shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }

    /// A tensor whose raw little-endian bytes are `bytes` (as safetensors stores them).
    pub fn from_bytes(bytes: &[u8], dtype: DType, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        let expected = shape.elem_count() * dtype.size_in_bytes();
        if bytes.len() != expected {
            return Err(crate::invalid!(
                "from_bytes",
                "{} bytes given for {dtype} shape {shape} ({expected} bytes)",
                bytes.len()
            ));
        }
        fn cast<T: WithDType>(b: &[u8]) -> Vec<T> {
            // Unaligned input is fine: pod_collect_to_vec copies byte-wise when needed.
            bytemuck::pod_collect_to_vec(b)
        }
        let storage = match dtype {
            DType::U8 => CpuStorage::U8(bytes.to_vec()),
            DType::U32 => CpuStorage::U32(cast(bytes)),
            DType::F16 => CpuStorage::F16(cast(bytes)),
            DType::BF16 => CpuStorage::BF16(cast(bytes)),
            DType::F32 => CpuStorage::F32(cast(bytes)),
        };
        Tensor::from_host(storage, shape, device)
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if device.is_cuda() {
            return cuda::ops::zeros(shape, dtype, device);
        }
        Ok(Tensor::from_storage(CpuStorage::zeros(dtype, shape.elem_count()), shape))
    }

    pub fn full(value: f32, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if device.is_cuda() {
            return cuda::ops::full(value, shape, dtype, device);
        }
        let mut s = CpuStorage::zeros(dtype, shape.elem_count());
        dispatch_all!(&mut s, |v| v.fill(WithDType::from_f32(value)));
        Ok(Tensor::from_storage(s, shape))
    }

    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }

    /// `[0, 1, ..., n-1]`.
    pub fn arange(n: usize, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::from_vec((0..n).map(|i| i as f32).collect(), n, device)?.to_dtype(dtype)
    }

    /// Samples of N(mean, std^2), drawn in row-major order from `rng` (deterministic given
    /// its seed), rounded to `dtype`.
    pub fn randn(
        shape: impl Into<Shape>,
        mean: f32,
        std: f32,
        dtype: DType,
        device: Device,
        rng: &mut impl Rng,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f32> = (0..shape.elem_count())
            .map(|_| mean + std * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, rng))
            .collect();
        Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
    }

    /// Samples of U[lo, hi), drawn in row-major order from `rng`, rounded to `dtype`.
    pub fn rand_uniform(
        shape: impl Into<Shape>,
        lo: f32,
        hi: f32,
        dtype: DType,
        device: Device,
        rng: &mut impl Rng,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f32> = (0..shape.elem_count()).map(|_| rng.random_range(lo..hi)).collect();
        Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
    }

    // ---- metadata -----------------------------------------------------------------------

    pub fn shape(&self) -> &Shape {
        self.layout.shape()
    }

    pub fn dims(&self) -> &[usize] {
        self.layout.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape().rank()
    }

    pub fn elem_count(&self) -> usize {
        self.shape().elem_count()
    }

    /// The size of dimension `dim` (negative counts from the end).
    pub fn dim(&self, dim: isize) -> Result<usize> {
        self.shape().size("dim", dim)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// The device address of the first element of a contiguous CUDA tensor, for handing to
    /// other CUDA libraries (NCCL). The memory stays valid while any view of the storage
    /// lives; work on it must be queued on [`cuda::raw_stream`] to stay ordered with this
    /// crate's. An error for a CPU or non-contiguous tensor.
    pub fn cuda_ptr(&self) -> Result<u64> {
        let range = self
            .layout
            .contiguous_range()
            .ok_or_else(|| crate::invalid!("cuda_ptr", "the tensor {} is not contiguous", self.shape()))?;
        if !self.device.is_cuda() {
            return Err(crate::invalid!("cuda_ptr", "the tensor {} is on the CPU", self.shape()));
        }
        Ok(self.cuda_storage().ptr() + (range.start * self.dtype.size_in_bytes()) as u64)
    }

    /// Writes `data` over the elements of a contiguous tensor of the same dtype and element
    /// count, in place (seen through every view of the storage): on a GPU one copy from the
    /// host straight into the tensor's memory, which is how inputs reach a captured
    /// [`cuda::Graph`] between replays.
    pub fn write_host<T: crate::WithDType>(&self, data: &[T]) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch { op: "write_host", lhs: self.dtype, rhs: T::DTYPE });
        }
        if data.len() != self.elem_count() {
            return Err(crate::invalid!(
                "write_host",
                "{} values for the {} elements of {}",
                data.len(),
                self.elem_count(),
                self.shape()
            ));
        }
        let range = self
            .layout
            .contiguous_range()
            .ok_or_else(|| crate::invalid!("write_host", "the tensor {} is not contiguous", self.shape()))?;
        if self.device.is_cuda() {
            if data.is_empty() {
                return Ok(());
            }
            let s = self.cuda_storage();
            let at = s.ptr() + (range.start * self.dtype.size_in_bytes()) as u64;
            return s.dev().rt.htod(bytemuck::cast_slice(data), at);
        }
        self.copy_from(&Tensor::from_vec(data.to_vec(), self.shape().clone(), Device::Cpu)?)
    }

    /// Whether both tensors are views of the same storage.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The CPU storage. Callers route CUDA tensors elsewhere first; reaching here with one
    /// is a bug in this crate.
    pub(crate) fn cpu(&self) -> MappedRwLockReadGuard<'_, CpuStorage> {
        RwLockReadGuard::map(self.storage.read(), |s| match s {
            Storage::Cpu(c) => c,
            Storage::Cuda(_) => unreachable!("CPU storage expected: CUDA tensors take the cuda::ops path"),
        })
    }

    /// The elements of a contiguous f32 CPU tensor, borrowed. Callers have made it so
    /// (`to_dtype(F32)`, `contiguous()`); anything else is a bug in this crate.
    pub(crate) fn cpu_f32(&self) -> MappedRwLockReadGuard<'_, [f32]> {
        let range = self.layout.contiguous_range().expect("a contiguous tensor");
        MappedRwLockReadGuard::map(self.cpu(), |s| match s {
            CpuStorage::F32(v) => &v[range],
            _ => unreachable!("an f32 tensor"),
        })
    }

    /// `other` has this tensor's dtype and device, or the error (dtype first) that names `op`.
    pub(crate) fn check_like(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if other.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: other.dtype() });
        }
        if other.device() != self.device() {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: other.device() });
        }
        Ok(())
    }

    /// The CUDA storage (see [`Tensor::cpu`]).
    pub(crate) fn cuda_storage(&self) -> MappedRwLockReadGuard<'_, CudaStorage> {
        RwLockReadGuard::map(self.storage.read(), |s| match s {
            Storage::Cuda(c) => c,
            Storage::Cpu(_) => unreachable!("CUDA storage expected"),
        })
    }

    /// The elements of a contiguous CPU tensor, as storage of their own.
    pub(crate) fn cpu_range_storage(&self) -> CpuStorage {
        let range = self.layout.contiguous_range().expect("contiguous");
        let s = self.cpu();
        dispatch_all!(&*s, |v| CpuStorage::from(v[range.clone()].to_vec()))
    }

    /// The storage of a tensor that owns all of it contiguously (a fresh op result or
    /// `copy()`), taken without copying when no other view shares it.
    pub(crate) fn into_cpu_storage(self) -> CpuStorage {
        debug_assert!(self.layout.start() == 0 && self.is_contiguous());
        match Arc::try_unwrap(self.storage) {
            Ok(lock) => match lock.into_inner() {
                Storage::Cpu(c) => c,
                Storage::Cuda(_) => unreachable!("CPU storage expected"),
            },
            Err(shared) => match &*shared.read() {
                Storage::Cpu(c) => c.clone(),
                Storage::Cuda(_) => unreachable!("CPU storage expected"),
            },
        }
    }

    /// A tensor sharing this one's storage with another layout.
    fn view(&self, layout: Layout) -> Tensor {
        Tensor { storage: self.storage.clone(), layout, dtype: self.dtype, device: self.device }
    }

    /// A view with `layout`, which must lie within the storage (broadcast layouts included).
    pub(crate) fn view_with(&self, layout: Layout) -> Tensor {
        self.view(layout)
    }

    /// The same elements on `device`: a copy across the bus, or this tensor when it is
    /// already there.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device {
            return Ok(self.clone());
        }
        if let Device::Cuda(n) = device {
            crate::cuda::probe(n)?;
        }
        cuda::ops::to_device(self, device)
    }

    // ---- reading data out ---------------------------------------------------------------

    /// All elements in row-major order; `T` must be the tensor's dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch { op: "to_vec", lhs: self.dtype, rhs: T::DTYPE });
        }
        if self.device.is_cuda() {
            let host = cuda::ops::download(self)?;
            return Ok(T::slice(&host).expect("storage dtype matches the tensor's").to_vec());
        }
        let s = self.cpu();
        let data = T::slice(&s).expect("storage dtype matches the tensor's");
        Ok(crate::cpu::contiguous(data, &self.layout).into_owned())
    }

    /// All elements as f32, whatever the dtype.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        self.to_dtype(DType::F32)?.to_vec()
    }

    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(crate::invalid!("to_scalar", "tensor of shape {} is not a scalar", self.shape()));
        }
        Ok(self.to_vec::<T>()?[0])
    }

    pub fn to_vec1<T: WithDType>(&self) -> Result<Vec<T>> {
        self.expect_rank("to_vec1", 1)?;
        self.to_vec()
    }

    pub fn to_vec2<T: WithDType>(&self) -> Result<Vec<Vec<T>>> {
        self.expect_rank("to_vec2", 2)?;
        let cols = self.dims()[1];
        Ok(self.to_vec::<T>()?.chunks(cols.max(1)).map(<[T]>::to_vec).collect())
    }

    pub fn to_vec3<T: WithDType>(&self) -> Result<Vec<Vec<Vec<T>>>> {
        self.expect_rank("to_vec3", 3)?;
        let (d1, d2) = (self.dims()[1], self.dims()[2]);
        let flat = self.to_vec::<T>()?;
        Ok(flat.chunks((d1 * d2).max(1)).map(|m| m.chunks(d2.max(1)).map(<[T]>::to_vec).collect()).collect())
    }

    /// The raw little-endian bytes of the elements in row-major order.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if self.device.is_cuda() {
            return Ok(cuda::ops::download(self)?.as_bytes().to_vec());
        }
        let c = self.contiguous()?;
        let s = c.cpu();
        let range = c.layout.contiguous_range().expect("contiguous");
        let size = c.dtype.size_in_bytes();
        Ok(s.as_bytes()[range.start * size..range.end * size].to_vec())
    }

    pub(crate) fn expect_rank(&self, op: &'static str, rank: usize) -> Result<()> {
        if self.rank() != rank {
            return Err(crate::invalid!(op, "expected a tensor of rank {rank}, got shape {}", self.shape()));
        }
        Ok(())
    }

    /// The dimensions of a rank-`N` tensor as an array: `let [b, t, h] = x.dims_n("attn")?;`.
    pub fn dims_n<const N: usize>(&self, op: &'static str) -> Result<[usize; N]> {
        self.expect_rank(op, N)?;
        Ok(std::array::from_fn(|i| self.dims()[i]))
    }

    // ---- views --------------------------------------------------------------------------

    /// `len` entries of dimension `dim` from `start`.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.view(self.layout.narrow(dim, start, len)?))
    }

    /// Entry `index` of dimension 0, with that dimension removed.
    pub fn get(&self, index: usize) -> Result<Tensor> {
        self.narrow(0, index, 1)?.squeeze(0)
    }

    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        Ok(self.view(self.layout.transpose(a, b)?))
    }

    /// Swaps the last two dimensions.
    pub fn t(&self) -> Result<Tensor> {
        self.transpose(-2, -1)
    }

    pub fn permute(&self, order: &[usize]) -> Result<Tensor> {
        Ok(self.view(self.layout.permute(order)?))
    }

    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        Ok(self.view(self.layout.broadcast_as(&shape.into())?))
    }

    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        Ok(self.view(self.layout.unsqueeze(dim)?))
    }

    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        Ok(self.view(self.layout.squeeze(dim)?))
    }

    /// Same elements, new shape: a view when contiguous, else a contiguous copy first.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ElementCount {
                op: "reshape",
                expected: shape.elem_count(),
                got: self.elem_count(),
                shape,
            });
        }
        match self.layout.reshape(&shape) {
            Some(l) => Ok(self.view(l)),
            None => Ok(self.contiguous()?.view(Layout::contiguous(shape))),
        }
    }

    /// Merges dimensions `from..=to` into one.
    pub fn flatten(&self, from: isize, to: isize) -> Result<Tensor> {
        let (a, b) = (self.shape().dim("flatten", from)?, self.shape().dim("flatten", to)?);
        if a > b {
            return Err(crate::invalid!("flatten", "start dimension {a} comes after end dimension {b}"));
        }
        let d = self.dims();
        let mut dims = d[..a].to_vec();
        dims.push(d[a..=b].iter().product());
        dims.extend_from_slice(&d[b + 1..]);
        self.reshape(dims)
    }

    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(self.elem_count())
    }

    /// This tensor when already contiguous (sharing storage), else a contiguous copy.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        self.copy()
    }

    /// A contiguous copy with storage of its own.
    pub fn copy(&self) -> Result<Tensor> {
        if self.device.is_cuda() {
            return cuda::ops::copy(self);
        }
        let s = self.cpu();
        let out = dispatch_all!(&*s, |v| CpuStorage::from(elementwise::map_strided(v, &self.layout, |x| x)));
        Ok(Tensor::from_storage(out, self.shape().clone()))
    }

    /// Element type conversion (round to nearest even into half types; floats into
    /// integers truncate and saturate).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        if self.device.is_cuda() {
            return cuda::ops::cast(self, dtype);
        }
        fn cast_to<A: WithDType>(v: &[A], l: &Layout, dtype: DType) -> CpuStorage {
            use elementwise::{convert, map_strided};
            use half::{bf16, f16};
            match dtype {
                DType::U8 => map_strided(v, l, convert::<A, u8>).into(),
                DType::U32 => map_strided(v, l, convert::<A, u32>).into(),
                DType::F16 => map_strided(v, l, convert::<A, f16>).into(),
                DType::BF16 => map_strided(v, l, convert::<A, bf16>).into(),
                DType::F32 => map_strided(v, l, convert::<A, f32>).into(),
            }
        }
        let s = self.cpu();
        let out = dispatch_all!(&*s, |v| cast_to(v, &self.layout, dtype));
        Ok(Tensor::from_storage(out, self.shape().clone()))
    }

    // ---- in-place -----------------------------------------------------------------------

    /// Writes `src` (broadcast to this tensor's shape) into the elements this tensor views:
    /// `cache.narrow(1, pos, n)?.copy_from(&new_kv)?` fills a preallocated KV cache.
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        if src.dtype != self.dtype {
            return Err(Error::DTypeMismatch { op: "copy_from", lhs: self.dtype, rhs: src.dtype });
        }
        if src.device != self.device {
            return Err(Error::DeviceMismatch { op: "copy_from", lhs: self.device, rhs: src.device });
        }
        if self.layout.strides().iter().zip(self.dims()).any(|(&s, &d)| s == 0 && d > 1) {
            return Err(crate::invalid!("copy_from", "the destination is a broadcast view: its elements alias"));
        }
        let src_layout = src.layout.broadcast_as(self.shape()).map_err(|_| Error::ShapeMismatch {
            op: "copy_from",
            lhs: self.shape().clone(),
            rhs: src.shape().clone(),
        })?;
        // Reading and writing the same storage would need both locks at once: copy first.
        let (src, src_layout) = if self.same_storage(src) {
            let c = src.copy()?;
            let l = c.layout.broadcast_as(self.shape())?;
            (c, l)
        } else {
            (src.clone(), src_layout)
        };
        if self.device.is_cuda() {
            return cuda::ops::write_strided(self, &src, &src_layout);
        }
        let from = src.cpu();
        let mut guard = self.storage.write();
        let dst = match &mut *guard {
            Storage::Cpu(d) => d,
            Storage::Cuda(_) => unreachable!("CUDA tensors were routed above"),
        };
        macro_rules! write {
            ($($v:ident),*) => {
                match (dst, &*from) {
                    $((CpuStorage::$v(d), CpuStorage::$v(s)) => elementwise::write_strided(d, &self.layout, s, &src_layout),)*
                    _ => unreachable!("dtypes were checked equal"),
                }
            };
        }
        write!(U8, U32, F16, BF16, F32);
        Ok(())
    }
}

impl Tensor {
    /// Runs `f` on the f32 elements of a contiguous F32 tensor, in place, and the change is
    /// seen through every view of the storage. On a GPU the elements make a round trip
    /// through host memory (a copy each way), which suits checks and tests, not hot loops:
    /// those have GPU ops of their own (`add_assign`, `scale_in_place`, `adamw_step`, ...).
    pub fn update_f32<R>(&self, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
        if self.dtype != DType::F32 {
            return Err(Error::DTypeMismatch { op: "update_f32", lhs: self.dtype, rhs: DType::F32 });
        }
        let range = self
            .layout
            .contiguous_range()
            .ok_or_else(|| crate::invalid!("update_f32", "the tensor {} is not contiguous", self.shape()))?;
        if self.device.is_cuda() {
            let mut host = match cuda::ops::download(self)? {
                CpuStorage::F32(v) => v,
                _ => unreachable!("dtype was checked"),
            };
            let r = f(&mut host);
            let back = Tensor::from_vec(host, self.shape().clone(), self.device)?;
            cuda::ops::write_strided(self, &back, back.layout())?;
            return Ok(r);
        }
        let mut guard = self.storage.write();
        match &mut *guard {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(f(&mut v[range])),
            Storage::Cpu(_) => unreachable!("dtype was checked"),
            Storage::Cuda(_) => unreachable!("CUDA tensors were routed above"),
        }
    }

    /// `self += other` in place (both F32, same shape). `self` may be a view, such as a slice
    /// of a larger gradient (`narrow`), as long as its elements do not alias (no broadcast
    /// view): the slice is added to in one pass.
    pub fn add_assign(&self, other: &Tensor) -> Result<()> {
        if other.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "add_assign",
                lhs: self.shape().clone(),
                rhs: other.shape().clone(),
            });
        }
        if other.device() != self.device {
            return Err(Error::DeviceMismatch { op: "add_assign", lhs: self.device, rhs: other.device() });
        }
        if self.dtype != DType::F32 {
            return Err(Error::DTypeMismatch { op: "add_assign", lhs: self.dtype, rhs: DType::F32 });
        }
        if self.layout.contiguous_range().is_none() {
            return self.add_assign_view(other);
        }
        let src = if self.same_storage(other) { other.copy()? } else { other.to_dtype(DType::F32)?.contiguous()? };
        if self.device.is_cuda() {
            return cuda::ops::add_assign(self, &src);
        }
        let range = src.layout.contiguous_range().expect("contiguous");
        let guard = src.cpu();
        let from = match &*guard {
            CpuStorage::F32(v) => &v[range],
            _ => unreachable!("converted to f32"),
        };
        self.update_f32(|dst| {
            use rayon::prelude::*;
            dst.par_chunks_mut(1 << 14).zip(from.par_chunks(1 << 14)).for_each(|(d, s)| {
                for (a, b) in d.iter_mut().zip(s) {
                    *a += b;
                }
            })
        })
    }

    /// [`Tensor::add_assign`] into a view that is not contiguous (shape, device and dtype
    /// checked by the caller).
    fn add_assign_view(&self, other: &Tensor) -> Result<()> {
        if self.layout.strides().iter().zip(self.dims()).any(|(&s, &d)| s == 0 && d > 1) {
            return Err(crate::invalid!("add_assign", "the destination is a broadcast view: its elements alias"));
        }
        // Reading and writing the same storage would need both locks at once: copy first.
        let src = if self.same_storage(other) { other.copy()? } else { other.to_dtype(DType::F32)? };
        if self.device.is_cuda() {
            return cuda::ops::add_into_view(self, &src, src.layout());
        }
        let from = src.cpu();
        let CpuStorage::F32(s) = &*from else { unreachable!("converted to f32") };
        let mut guard = self.storage.write();
        let Storage::Cpu(CpuStorage::F32(d)) = &mut *guard else { unreachable!("an f32 tensor on the CPU") };
        elementwise::add_strided(d, &self.layout, s, src.layout());
        Ok(())
    }
}
