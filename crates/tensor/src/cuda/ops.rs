//! Tensor ops on CUDA storage. The public `Tensor` methods check shapes, dtypes and
//! devices and then call in here with validated operands; each function picks the kernel by
//! dtype, describes strided operands, and launches on the tensor's device.

use std::sync::Arc;

use crate::attention::AttnDims;
use crate::cpu::CpuStorage;
use crate::cuda::kernels::{Strided, bytes_suffix, suffix, vec_items, vec8_aligned, vec8_all};
use crate::cuda::{Args, CudaStorage, Gemm, GpuDevice, LaunchCfg, device};
use crate::ops::{BinaryOp, CmpOp, UnaryOp};
use crate::{DType, Device, Layout, Result, Shape, Tensor};

/// Threads per block of the grid-stride element-wise kernels.
const THREADS: u32 = 256;

/// The device and base pointer of a CUDA tensor's storage (elements start at the layout's
/// `start`). Work is queued on the device's one stream, so the storage may be dropped as soon
/// as the launch returns: its block is reused only by work queued after this.
fn raw(t: &Tensor) -> (Arc<GpuDevice>, u64) {
    let s = t.cuda_storage();
    (s.dev().clone(), s.ptr())
}

/// Pointer to element `start` of a tensor of dtype `d` at base `ptr`.
fn at(ptr: u64, d: DType, start: usize) -> u64 {
    ptr + (start * d.size_in_bytes()) as u64
}

/// A contiguous version of `t` (itself when already contiguous) and the pointer to its
/// first element.
fn contiguous(t: &Tensor) -> Result<(Tensor, u64)> {
    let c = if t.is_contiguous() { t.clone() } else { copy(t)? };
    let (_, ptr) = raw(&c);
    let p = at(ptr, c.dtype(), c.layout().start());
    Ok((c, p))
}

/// A fresh, uninitialised contiguous tensor.
fn empty(dev: &Arc<GpuDevice>, dtype: DType, shape: impl Into<Shape>) -> Result<(Tensor, u64)> {
    let shape = shape.into();
    let s = CudaStorage::alloc(dev, dtype, shape.elem_count())?;
    let ptr = s.ptr();
    Ok((Tensor::from_cuda(s, shape), ptr))
}

fn linear_cfg(dev: &GpuDevice, n: usize) -> LaunchCfg {
    LaunchCfg::linear(dev.blocks_for(n, THREADS), THREADS)
}

/// The launch of an element-wise kernel over `n` elements described by `s`.
fn strided_cfg(dev: &GpuDevice, n: usize, s: &Strided) -> LaunchCfg {
    linear_cfg(dev, s.work_items(n))
}

/// Threads for a one-block-per-row kernel over rows of `cols`: about eight elements each
/// (so short rows do not leave most of a block idle at its reductions), a multiple of 32,
/// at most 1024.
fn row_threads(cols: usize) -> u32 {
    (cols.div_ceil(8).div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// Whether the row kernels (kernels/rmsnorm.cu, softmax.cu) may read rows of `cols`
/// elements as whole vectors: `cols` a multiple of 8 and every operand's first element
/// (`ptrs`: address and element size) aligned for them. Either way they sum in the same
/// order.
fn rows_vec(cols: usize, ptrs: &[(u64, usize)]) -> i32 {
    (cols.is_multiple_of(8) && vec8_all(ptrs)) as i32
}

/// How the row-moving kernels (`index_select`, `copy_rows`) move rows of `inner` elements:
/// as 16-byte units (`b16`) when a row is a whole number of them and every pointer is
/// 16-byte aligned (and `ARTIST_VEC` is not `0`), else element by element. The kernel
/// suffix and the row's length in those units.
fn row_units(inner: usize, dtype: DType, ptrs: &[u64]) -> (&'static str, usize) {
    let bytes = inner * dtype.size_in_bytes();
    if bytes.is_multiple_of(16) && ptrs.iter().all(|&p| vec8_aligned(p, 2)) {
        ("b16", bytes / 16)
    } else {
        (bytes_suffix(dtype), inner)
    }
}

/// Whether the RoPE kernels may take 8 consecutive pairs per thread: half the head dim a
/// multiple of 8 and every pointer (address, element size) aligned for whole vectors.
fn rope_vec(d: usize, ptrs: &[(u64, usize)]) -> i32 {
    ((d / 2).is_multiple_of(8) && d > 0 && vec8_all(ptrs)) as i32
}

fn row_cfg(dev: &GpuDevice, rows: usize, cols: usize) -> LaunchCfg {
    let cap = dev.rt.info().multiprocessors.max(1) as usize * 64;
    LaunchCfg::linear(rows.clamp(1, cap) as u32, row_threads(cols))
}

fn ordinal_of(device: Device) -> usize {
    match device {
        Device::Cuda(n) => n,
        Device::Cpu => 0,
    }
}

// ---- moving data ----------------------------------------------------------------------

/// Host storage onto device `ordinal` as a contiguous tensor.
pub(crate) fn upload(host: &CpuStorage, shape: Shape, ordinal: usize) -> Result<Tensor> {
    let dev = device(ordinal)?;
    Ok(Tensor::from_cuda(CudaStorage::from_host(&dev, host)?, shape))
}

/// The elements of a CUDA tensor, contiguous, in host memory.
pub(crate) fn download(t: &Tensor) -> Result<CpuStorage> {
    let c = if t.is_contiguous() { t.clone() } else { copy(t)? };
    let start = c.layout().start();
    let s = c.cuda_storage();
    s.to_host(start..start + c.elem_count())
}

pub(crate) fn zeros(shape: Shape, dtype: DType, device: Device) -> Result<Tensor> {
    let dev = self::device(ordinal_of(device))?;
    let n = shape.elem_count();
    Ok(Tensor::from_cuda(CudaStorage::zeros(&dev, dtype, n)?, shape))
}

pub(crate) fn full(value: f32, shape: Shape, dtype: DType, device: Device) -> Result<Tensor> {
    let dev = self::device(ordinal_of(device))?;
    let n = shape.elem_count();
    let (t, ptr) = empty(&dev, dtype, shape)?;
    if n == 0 {
        return Ok(t);
    }
    // The value's bit pattern in the dtype, rounded as the CPU rounds it.
    let host = Tensor::full(value, (), dtype, Device::Cpu)?.to_bytes()?;
    let mut bits = [0u8; 4];
    bits[..host.len()].copy_from_slice(&host);
    let name = format!("fill_{}", bytes_suffix(dtype));
    let vec = vec8_aligned(ptr, dtype.size_in_bytes());
    let args = Args::new().arg(n as i64).arg(vec as i32);
    let args = match dtype.size_in_bytes() {
        1 => args.arg(bits[0]),
        2 => args.arg(u16::from_le_bytes([bits[0], bits[1]])),
        _ => args.arg(u32::from_le_bytes(bits)),
    };
    dev.launch("elementwise", name, linear_cfg(&dev, vec_items(n, vec)), args.arg(ptr))?;
    Ok(t)
}

/// A contiguous copy of any view.
pub(crate) fn copy(t: &Tensor) -> Result<Tensor> {
    let (dev, src) = raw(t);
    let n = t.elem_count();
    let (out, dst) = empty(&dev, t.dtype(), t.shape().clone())?;
    if n > 0 && t.is_contiguous() {
        let es = t.dtype().size_in_bytes();
        dev.rt.dtod(at(src, t.dtype(), t.layout().start()), dst, n * es)?;
    } else if n > 0 {
        let dst_layout = Layout::contiguous(t.shape().clone());
        let s = Strided::new("copy", t.shape(), &[&dst_layout, t.layout()])?;
        let name = format!("copy_{}", bytes_suffix(t.dtype()));
        dev.launch("elementwise", name, linear_cfg(&dev, n), Args::new().arg(n as i64).arg(s).arg(src).arg(dst))?;
    }
    Ok(out)
}

/// `dst[dst_layout] = src[src_layout]` (both over dst's shape; src broadcast already).
pub(crate) fn write_strided(dst: &Tensor, src: &Tensor, src_layout: &Layout) -> Result<()> {
    let (dev, dptr) = raw(dst);
    let (_, sptr) = raw(src);
    let n = dst.elem_count();
    if n == 0 {
        return Ok(());
    }
    let es = dst.dtype().size_in_bytes();
    let s =
        Strided::new("copy_from", dst.shape(), &[dst.layout(), src_layout])?.vectorized(&[(dptr, es), (sptr, es)], &[]);
    let name = format!("copy_{}", bytes_suffix(dst.dtype()));
    dev.launch("elementwise", name, strided_cfg(&dev, n, &s), Args::new().arg(n as i64).arg(s).arg(sptr).arg(dptr))
}

/// Element type conversion into a new contiguous tensor.
pub(crate) fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let (dev, src) = raw(t);
    let n = t.elem_count();
    let (out, dst) = empty(&dev, dtype, t.shape().clone())?;
    if n > 0 {
        let dst_layout = Layout::contiguous(t.shape().clone());
        let s = Strided::new("to_dtype", t.shape(), &[&dst_layout, t.layout()])?
            .vectorized(&[(dst, dtype.size_in_bytes()), (src, t.dtype().size_in_bytes())], &[]);
        let name = format!("cast_{}_{}", suffix(t.dtype()), suffix(dtype));
        dev.launch("elementwise", name, strided_cfg(&dev, n, &s), Args::new().arg(n as i64).arg(s).arg(src).arg(dst))?;
    }
    Ok(out)
}

/// A tensor on `device` with the same elements: a copy across the bus, or between GPUs
/// through the host.
pub(crate) fn to_device(t: &Tensor, device: Device) -> Result<Tensor> {
    match (t.device(), device) {
        (Device::Cuda(_), Device::Cpu) => {
            let host = download(t)?;
            Ok(Tensor::from_storage(host, t.shape().clone()))
        }
        (Device::Cpu, Device::Cuda(n)) => {
            let c = t.contiguous()?;
            let host = c.cpu_range_storage();
            upload(&host, t.shape().clone(), n)
        }
        (Device::Cuda(_), Device::Cuda(n)) => {
            let host = download(t)?;
            upload(&host, t.shape().clone(), n)
        }
        (Device::Cpu, Device::Cpu) => Ok(t.clone()),
    }
}

// ---- element-wise ---------------------------------------------------------------------

pub(crate) fn unary(t: &Tensor, op: UnaryOp, a: f32, b: f32) -> Result<Tensor> {
    let (dev, src) = raw(t);
    let n = t.elem_count();
    let (out, dst) = empty(&dev, t.dtype(), t.shape().clone())?;
    if n > 0 {
        let es = t.dtype().size_in_bytes();
        let s = Strided::new(op.name(), t.shape(), &[t.layout()])?.vectorized(&[(src, es)], &[(dst, es)]);
        let name = format!("unary_{}", suffix(t.dtype()));
        let args = Args::new().arg(n as i64).arg(op as i32).arg(a).arg(b).arg(s).arg(src).arg(dst);
        dev.launch("elementwise", name, strided_cfg(&dev, n, &s), args)?;
    }
    Ok(out)
}

/// `op(x, y)` over `shape` with both operands' layouts broadcast to it, written to `out`
/// (a contiguous buffer of `shape`'s size; may be one of the inputs for in-place updates).
#[allow(clippy::too_many_arguments)]
fn binary_into(
    dev: &Arc<GpuDevice>,
    op: BinaryOp,
    p: (f32, f32),
    shape: &Shape,
    x: (u64, &Layout),
    y: (u64, &Layout),
    dtype: DType,
    out: u64,
) -> Result<()> {
    let n = shape.elem_count();
    if n == 0 {
        return Ok(());
    }
    let es = dtype.size_in_bytes();
    let s = Strided::new(op.name(), shape, &[x.1, y.1])?.vectorized(&[(x.0, es), (y.0, es)], &[(out, es)]);
    let name = format!("binary_{}", suffix(dtype));
    let args = Args::new().arg(n as i64).arg(op as i32).arg(p.0).arg(p.1).arg(s).arg(x.0).arg(y.0).arg(out);
    dev.launch("elementwise", name, strided_cfg(dev, n, &s), args)
}

pub(crate) fn binary(
    x: &Tensor,
    y: &Tensor,
    op: BinaryOp,
    p: (f32, f32),
    shape: &Shape,
    xl: &Layout,
    yl: &Layout,
) -> Result<Tensor> {
    let (dev, xp) = raw(x);
    let (_, yp) = raw(y);
    let (out, dst) = empty(&dev, x.dtype(), shape.clone())?;
    binary_into(&dev, op, p, shape, (xp, xl), (yp, yl), x.dtype(), dst)?;
    Ok(out)
}

/// `dst += src` in place (dst f32 and contiguous, src f32 of the same shape).
pub(crate) fn add_assign(dst: &Tensor, src: &Tensor) -> Result<()> {
    let (dev, dp) = raw(dst);
    let (_, sp) = raw(src);
    let out = at(dp, DType::F32, dst.layout().start());
    binary_into(&dev, BinaryOp::Add, (0.0, 0.0), dst.shape(), (dp, dst.layout()), (sp, src.layout()), DType::F32, out)
}

/// `dst += src` over the view `dst` (f32, any layout whose elements do not alias; `src` f32
/// seen through `src_layout`, broadcast to dst's shape), in one pass.
pub(crate) fn add_into_view(dst: &Tensor, src: &Tensor, src_layout: &Layout) -> Result<()> {
    let (dev, dp) = raw(dst);
    let (_, sp) = raw(src);
    let n = dst.elem_count();
    if n == 0 {
        return Ok(());
    }
    let s = Strided::new("add_assign", dst.shape(), &[dst.layout(), src_layout])?.vectorized(&[(dp, 4), (sp, 4)], &[]);
    let args = Args::new().arg(n as i64).arg(s).arg(sp).arg(dp);
    dev.launch("elementwise", "accumulate_f32".into(), strided_cfg(&dev, n, &s), args)
}

/// `dst *= s` in place (dst f32 and contiguous).
pub(crate) fn scale_in_place(dst: &Tensor, s: f32) -> Result<()> {
    let (dev, dp) = raw(dst);
    let n = dst.elem_count();
    if n == 0 {
        return Ok(());
    }
    let out = at(dp, DType::F32, dst.layout().start());
    let st = Strided::new("scale", dst.shape(), &[dst.layout()])?.vectorized(&[(dp, 4)], &[(out, 4)]);
    let args = Args::new().arg(n as i64).arg(UnaryOp::Affine as i32).arg(s).arg(-0.0f32).arg(st).arg(dp).arg(out);
    dev.launch("elementwise", "unary_f32".into(), strided_cfg(&dev, n, &st), args)
}

pub(crate) fn cmp(x: &Tensor, y: &Tensor, op: CmpOp, shape: &Shape, xl: &Layout, yl: &Layout) -> Result<Tensor> {
    let (dev, xp) = raw(x);
    let (_, yp) = raw(y);
    let n = shape.elem_count();
    let (out, dst) = empty(&dev, DType::U8, shape.clone())?;
    if n > 0 {
        let s = Strided::new("cmp", shape, &[xl, yl])?;
        let name = format!("cmp_{}", suffix(x.dtype()));
        let args = Args::new().arg(n as i64).arg(op as i32).arg(s).arg(xp).arg(yp).arg(dst);
        dev.launch("elementwise", name, linear_cfg(&dev, n), args)?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn where_cond(
    cond: &Tensor,
    t: &Tensor,
    f: &Tensor,
    shape: &Shape,
    cl: &Layout,
    tl: &Layout,
    fl: &Layout,
) -> Result<Tensor> {
    let (dev, cp) = raw(cond);
    let (_, tp) = raw(t);
    let (_, fp) = raw(f);
    let n = shape.elem_count();
    let (out, dst) = empty(&dev, t.dtype(), shape.clone())?;
    if n > 0 {
        let s = Strided::new("where_cond", shape, &[cl, tl, fl])?;
        let name = format!("where_{}", bytes_suffix(t.dtype()));
        let args = Args::new().arg(n as i64).arg(s).arg(cp).arg(tp).arg(fp).arg(dst);
        dev.launch("elementwise", name, linear_cfg(&dev, n), args)?;
    }
    Ok(out)
}

// ---- row kernels ----------------------------------------------------------------------

/// Softmax or log-softmax over the last dimension of `x`.
pub(crate) fn softmax_last(x: &Tensor, log: bool) -> Result<Tensor> {
    let (x, xp) = contiguous(x)?;
    let (dev, _) = raw(&x);
    let cols = x.dims().last().copied().unwrap_or(1);
    let rows = x.elem_count().checked_div(cols).unwrap_or(0);
    let (out, dst) = empty(&dev, x.dtype(), x.shape().clone())?;
    if rows > 0 && cols > 0 {
        let name = format!("softmax_{}", suffix(x.dtype()));
        let es = x.dtype().size_in_bytes();
        let vec = rows_vec(cols, &[(xp, es), (dst, es)]);
        let args = Args::new().arg(rows as i64).arg(cols as i64).arg(log as i32).arg(vec).arg(xp).arg(dst);
        dev.launch("softmax", name, row_cfg(&dev, rows, cols), args)?;
    }
    Ok(out)
}

/// [`Tensor::softmax_entropy`] on the GPU: one pass over each row, one f32 per row back.
pub(crate) fn softmax_entropy(x: &Tensor) -> Result<Vec<f32>> {
    let (x, xp) = contiguous(x)?;
    let (dev, _) = raw(&x);
    let cols = x.dims().last().copied().unwrap_or(1);
    let rows = x.elem_count().checked_div(cols).unwrap_or(0);
    let (out, dst) = empty(&dev, DType::F32, crate::Shape::from(rows))?;
    if rows > 0 && cols > 0 {
        let name = format!("softmax_entropy_{}", suffix(x.dtype()));
        let vec = rows_vec(cols, &[(xp, x.dtype().size_in_bytes())]);
        let args = Args::new().arg(rows as i64).arg(cols as i64).arg(vec).arg(xp).arg(dst);
        dev.launch("softmax", name, row_cfg(&dev, rows, cols), args)?;
    } else if rows > 0 {
        return Ok(vec![0.0; rows]);
    }
    out.to_vec::<f32>()
}

pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let (x, xp) = contiguous(x)?;
    let (w, wp) = contiguous(w)?;
    let (dev, _) = raw(&x);
    let cols = w.elem_count();
    let rows = x.elem_count().checked_div(cols).unwrap_or(0);
    let (out, dst) = empty(&dev, x.dtype(), x.shape().clone())?;
    if rows > 0 && cols > 0 {
        let name = format!("rms_norm_{}", suffix(x.dtype()));
        let es = x.dtype().size_in_bytes();
        let vec = rows_vec(cols, &[(xp, es), (wp, es), (dst, es)]);
        let args = Args::new().arg(rows as i64).arg(cols as i64).arg(eps).arg(vec).arg(xp).arg(wp).arg(dst);
        dev.launch("rmsnorm", name, row_cfg(&dev, rows, cols), args)?;
    }
    Ok(out)
}

/// [`Tensor::silu_mul_backward`] on the GPU: one pass, the composition's roundings.
pub(crate) fn silu_mul_backward(gate: &Tensor, up: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let (gate, xp) = contiguous(gate)?;
    let (_up, up_p) = contiguous(up)?;
    let (_g, gp) = contiguous(g)?;
    let (dev, _) = raw(&gate);
    let n = gate.elem_count();
    let (dgate, dgp) = empty(&dev, gate.dtype(), gate.shape().clone())?;
    let (dup, dup_p) = empty(&dev, gate.dtype(), gate.shape().clone())?;
    if n > 0 {
        let es = gate.dtype().size_in_bytes();
        let vec = vec8_all(&[(xp, es), (up_p, es), (gp, es), (dgp, es), (dup_p, es)]);
        let args = Args::new().arg(n as i64).arg(vec as i32).arg(xp).arg(up_p).arg(gp).arg(dgp).arg(dup_p);
        let cfg = linear_cfg(&dev, vec_items(n, vec));
        dev.launch("elementwise", format!("silu_mul_bwd_{}", suffix(gate.dtype())), cfg, args)?;
    }
    Ok((dgate, dup))
}

/// [`Tensor::swiglu_backward`] on the GPU: one pass over the fused `[gate | up]` rows and
/// the output gradient, writing f32 rows of `[dgate | dup]`.
pub(crate) fn swiglu_backward(gu: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (gu, xp) = contiguous(gu)?;
    let (_g, gp) = contiguous(g)?;
    let (dev, _) = raw(&gu);
    let n = g.elem_count();
    let cols = g.dims().last().copied().unwrap_or(1);
    let (out, op) = empty(&dev, DType::F32, gu.shape().clone())?;
    if n > 0 {
        let es = gu.dtype().size_in_bytes();
        let vec = cols.is_multiple_of(8) && vec8_all(&[(xp, es), (gp, es), (op, 4)]);
        let args = Args::new().arg((n / cols) as i64).arg(cols as i64).arg(vec as i32).arg(xp).arg(gp).arg(op);
        dev.launch(
            "elementwise",
            format!("swiglu_bwd_{}", suffix(gu.dtype())),
            linear_cfg(&dev, vec_items(n, vec)),
            args,
        )?;
    }
    Ok(out)
}

/// Rows per partial sum of the RMSNorm backward's dW.
const RMS_DW_CHUNK: usize = 64;

/// [`Tensor::rms_norm_backward`] on the GPU: one block per row for the statistics and `dx`
/// (the row's `r` kept), then one thread per column and chunk of rows for dW's partial
/// sums, added over the chunks in order by the column reduction.
pub(crate) fn rms_norm_backward(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f32,
    want_dw: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (x, xp) = contiguous(x)?;
    let (w, wp) = contiguous(w)?;
    let (_g, gp) = contiguous(g)?;
    let (dev, _) = raw(&x);
    let cols = w.elem_count();
    let rows = x.elem_count().checked_div(cols).unwrap_or(0);
    let (dx, dxp) = empty(&dev, DType::F32, x.shape().clone())?;
    if rows == 0 || cols == 0 {
        return Ok((dx, want_dw.then(|| Tensor::zeros(cols, DType::F32, x.device())).transpose()?));
    }
    let (_rinv, rp) = empty(&dev, DType::F32, rows)?;
    let s = suffix(x.dtype());
    let es = x.dtype().size_in_bytes();
    let vec = rows_vec(cols, &[(xp, es), (wp, es), (gp, 4), (dxp, 4)]);
    let args = Args::new().arg(rows as i64).arg(cols as i64).arg(eps).arg(vec).arg(xp).arg(wp).arg(gp).arg(dxp).arg(rp);
    dev.launch("rmsnorm", format!("rms_norm_bwd_{s}"), row_cfg(&dev, rows, cols), args)?;
    if !want_dw {
        return Ok((dx, None));
    }
    let chunks = rows.div_ceil(RMS_DW_CHUNK);
    let (partial, pp) = empty(&dev, DType::F32, (chunks, cols))?;
    let cfg = LaunchCfg { grid: [cols.div_ceil(256) as u32, chunks as u32, 1], block: [256, 1, 1], smem: 0 };
    let args = Args::new().arg(rows as i64).arg(cols as i64).arg(RMS_DW_CHUNK as i64).arg(xp).arg(gp).arg(rp).arg(pp);
    dev.launch("rmsnorm", format!("rms_norm_bwd_dw_{s}"), cfg, args)?;
    Ok((dx, Some(partial.sum(0)?)))
}

pub(crate) fn add_rms_norm(x: &Tensor, res: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let (x, xp) = contiguous(x)?;
    let (res, rp) = contiguous(res)?;
    let (w, wp) = contiguous(w)?;
    let (dev, _) = raw(&x);
    let cols = w.elem_count();
    let rows = x.elem_count().checked_div(cols).unwrap_or(0);
    let (sum, sp) = empty(&dev, x.dtype(), x.shape().clone())?;
    let (out, dst) = empty(&dev, x.dtype(), x.shape().clone())?;
    if rows > 0 && cols > 0 {
        let name = format!("add_rms_norm_{}", suffix(x.dtype()));
        let es = x.dtype().size_in_bytes();
        let vec = rows_vec(cols, &[(xp, es), (rp, es), (wp, es), (sp, es), (dst, es)]);
        let args =
            Args::new().arg(rows as i64).arg(cols as i64).arg(eps).arg(vec).arg(xp).arg(rp).arg(wp).arg(sp).arg(dst);
        dev.launch("rmsnorm", name, row_cfg(&dev, rows, cols), args)?;
    }
    drop(res);
    Ok((sum, out))
}

pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, dims: [usize; 4], cb: usize) -> Result<Tensor> {
    let (x, xp) = contiguous(x)?;
    let (dev, _) = raw(&x);
    let cos = cos.to_dtype(DType::F32)?.to_device(x.device())?;
    let sin = sin.to_dtype(DType::F32)?.to_device(x.device())?;
    let (cos, cp) = contiguous(&cos)?;
    let (sin, sp) = contiguous(&sin)?;
    let [b, t, h, d] = dims;
    let (out, dst) = empty(&dev, x.dtype(), x.shape().clone())?;
    let n = b * t * h * (d / 2);
    if n > 0 {
        let name = format!("rope_{}", suffix(x.dtype()));
        let es = x.dtype().size_in_bytes();
        let vec = rope_vec(d, &[(xp, es), (dst, es), (cp, 4), (sp, 4)]);
        let args = Args::new()
            .arg(b as i64)
            .arg(t as i64)
            .arg(h as i64)
            .arg(d as i64)
            .arg(cb as i64)
            .arg(vec)
            .arg(xp)
            .arg(cp)
            .arg(sp)
            .arg(dst);
        dev.launch("rope", name, linear_cfg(&dev, vec_items(n, vec == 1)), args)?;
    }
    drop((cos, sin));
    Ok(out)
}

// ---- reductions -----------------------------------------------------------------------

/// Reduction codes shared with kernels/reduce.cu.
#[derive(Clone, Copy)]
pub(crate) enum Reduce {
    Sum = 0,
    Max = 1,
    Min = 2,
}

pub(crate) fn reduce(x: &Tensor, outer: usize, k: usize, inner: usize, op: Reduce, kept: Shape) -> Result<Tensor> {
    let (x, xp) = contiguous(x)?;
    let (dev, _) = raw(&x);
    let (out, dst) = empty(&dev, x.dtype(), kept)?;
    let n = outer * inner;
    if n == 0 {
        return Ok(out);
    }
    let s = suffix(x.dtype());
    if inner == 1 {
        let args = Args::new().arg(op as i32).arg(outer as i64).arg(k as i64).arg(xp).arg(dst);
        dev.launch("reduce", format!("reduce_rows_{s}"), row_cfg(&dev, outer, k), args)?;
    } else {
        let args = Args::new().arg(op as i32).arg(outer as i64).arg(k as i64).arg(inner as i64).arg(xp).arg(dst);
        dev.launch("reduce", format!("reduce_cols_{s}"), linear_cfg(&dev, n), args)?;
    }
    Ok(out)
}

pub(crate) fn arg_reduce(x: &Tensor, outer: usize, k: usize, inner: usize, max: bool, kept: Shape) -> Result<Tensor> {
    let (x, xp) = contiguous(x)?;
    let (dev, _) = raw(&x);
    let (out, dst) = empty(&dev, DType::U32, kept)?;
    let n = outer * inner;
    if n == 0 {
        return Ok(out);
    }
    let s = suffix(x.dtype());
    if inner == 1 {
        let args = Args::new().arg(max as i32).arg(outer as i64).arg(k as i64).arg(xp).arg(dst);
        dev.launch("reduce", format!("arg_rows_{s}"), row_cfg(&dev, outer, k), args)?;
    } else {
        let args = Args::new().arg(max as i32).arg(outer as i64).arg(k as i64).arg(inner as i64).arg(xp).arg(dst);
        dev.launch("reduce", format!("arg_cols_{s}"), linear_cfg(&dev, n), args)?;
    }
    Ok(out)
}

/// The sum of squares of an f32 tensor, accumulated in f64: per-block partial sums on the
/// GPU, added on the host in block order (the same tensor always gives the same bits).
pub(crate) fn sum_squares(x: &Tensor) -> Result<f64> {
    let (x, xp) = contiguous(x)?;
    let (dev, _) = raw(&x);
    let n = x.elem_count();
    if n == 0 {
        return Ok(0.0);
    }
    let cfg = linear_cfg(&dev, n);
    let blocks = cfg.grid[0] as usize;
    let partial = CudaStorage::alloc(&dev, DType::U32, blocks * 2)?; // f64 slots
    dev.launch("reduce", "sum_squares_f32".into(), cfg, Args::new().arg(n as i64).arg(xp).arg(partial.ptr()))?;
    let mut bytes = vec![0u8; blocks * 8];
    dev.rt.dtoh(partial.ptr(), &mut bytes)?;
    Ok(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).sum())
}

// ---- indexing -------------------------------------------------------------------------

fn upload_ids(dev: &Arc<GpuDevice>, ids: &[u32]) -> Result<CudaStorage> {
    CudaStorage::from_host(dev, &CpuStorage::U32(ids.to_vec()))
}

/// `out[o, j, c] = x[o, ids[j], c]` with the ids on the device (not checked against `size`
/// there: the kernel selects zeros for an id out of range; host ids are checked before
/// they are uploaded).
pub(crate) fn index_select_device(
    x: &Tensor,
    ids: &Tensor,
    outer: usize,
    size: usize,
    inner: usize,
    dims: Vec<usize>,
) -> Result<Tensor> {
    let (x, xp) = contiguous(x)?;
    let (ids, ip) = contiguous(ids)?;
    let (dev, _) = raw(&x);
    let (out, dst) = empty(&dev, x.dtype(), dims)?;
    if outer * ids.elem_count() * inner > 0 {
        let (kind, inner) = row_units(inner, x.dtype(), &[xp, dst]);
        let args = Args::new()
            .arg(outer as i64)
            .arg(ids.elem_count() as i64)
            .arg(size as i64)
            .arg(inner as i64)
            .arg(ip)
            .arg(xp)
            .arg(dst);
        let n = outer * ids.elem_count() * inner;
        dev.launch("index", format!("index_select_{kind}"), linear_cfg(&dev, n), args)?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn gather(
    x: &Tensor,
    index: &[u32],
    outer: usize,
    size: usize,
    k: usize,
    inner: usize,
    shape: Shape,
) -> Result<Tensor> {
    let (x, xp) = contiguous(x)?;
    let (dev, _) = raw(&x);
    let (out, dst) = empty(&dev, x.dtype(), shape)?;
    let n = outer * k * inner;
    if n > 0 {
        let idv = upload_ids(&dev, index)?;
        let args = Args::new()
            .arg(outer as i64)
            .arg(k as i64)
            .arg(size as i64)
            .arg(inner as i64)
            .arg(idv.ptr())
            .arg(xp)
            .arg(dst);
        dev.launch("index", format!("gather_{}", bytes_suffix(x.dtype())), linear_cfg(&dev, n), args)?;
    }
    Ok(out)
}

/// A copy of `base` with `src` accumulated at `index` (scatter-add, `k` entries per (o, i))
/// or at `ids` rows (index-add, `k` = ids.len()).
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate(
    base: &Tensor,
    src: &Tensor,
    index: &[u32],
    scatter: bool,
    outer: usize,
    size: usize,
    k: usize,
    inner: usize,
) -> Result<Tensor> {
    let out = copy(base)?;
    let (dev, dst) = raw(&out);
    let (src, sp) = contiguous(src)?;
    let n = outer * inner;
    if n > 0 && k > 0 {
        let idv = upload_ids(&dev, index)?;
        let kernel = if scatter { "scatter_add" } else { "index_add" };
        let args = Args::new()
            .arg(outer as i64)
            .arg(k as i64)
            .arg(size as i64)
            .arg(inner as i64)
            .arg(idv.ptr())
            .arg(sp)
            .arg(dst);
        dev.launch("index", format!("{kernel}_{}", suffix(out.dtype())), linear_cfg(&dev, n), args)?;
    }
    drop(src);
    Ok(out)
}

pub(crate) fn topk(x: &Tensor, k: usize, dims: Vec<usize>) -> Result<(Tensor, Tensor)> {
    let (x, xp) = contiguous(x)?;
    let (dev, _) = raw(&x);
    let cols = x.dims().last().copied().unwrap_or(1);
    let rows = x.elem_count().checked_div(cols).unwrap_or(0);
    let (values, vp) = empty(&dev, x.dtype(), dims.clone())?;
    let (indices, ip) = empty(&dev, DType::U32, dims)?;
    if rows > 0 && k > 0 {
        let args = Args::new().arg(rows as i64).arg(cols as i64).arg(k as i64).arg(xp).arg(vp).arg(ip);
        dev.launch("index", format!("topk_{}", suffix(x.dtype())), row_cfg(&dev, rows, cols), args)?;
    }
    Ok((values, indices))
}

// ---- matrix products ------------------------------------------------------------------

/// A matrix operand for cuBLAS: `ptr` to batch 0, leading dimension, whether its elements
/// run down columns (a transposed view), and the stride between batches.
#[derive(Clone, Copy, Debug)]
struct Mat {
    ptr: u64,
    ld: usize,
    col_major: bool,
    batch_stride: usize,
}

/// Describes `[batch.., rows, cols]` (broadcast layout `l` over storage at `base`) as a
/// cuBLAS operand, or `None` when its strides cannot be (the caller copies it first).
fn as_mat(base: u64, dtype: DType, l: &Layout) -> Option<Mat> {
    let r = l.rank();
    let (rows, cols) = (l.dims()[r - 2], l.dims()[r - 1]);
    let (rs, cs) = (l.strides()[r - 2], l.strides()[r - 1]);
    let (row_major, ld) = if (cs == 1 || cols == 1) && (rs >= cols.max(1) || rows == 1) {
        (true, if rows == 1 { cols.max(1) } else { rs })
    } else if (rs == 1 || rows == 1) && (cs >= rows.max(1) || cols == 1) {
        (false, if cols == 1 { rows.max(1) } else { cs })
    } else {
        return None;
    };
    // Batch offsets must form one arithmetic progression.
    let bd = &l.dims()[..r - 2];
    let bs = &l.strides()[..r - 2];
    let count: usize = bd.iter().product();
    let mut stride = None;
    let mut ok = true;
    let mut idx = vec![0usize; bd.len()];
    let mut prev = 0usize;
    for i in 0..count {
        let off: usize = idx.iter().zip(bs).map(|(a, b)| a * b).sum();
        if i == 1 {
            stride = Some(off.wrapping_sub(prev));
        } else if i > 1 && Some(off.wrapping_sub(prev)) != stride {
            ok = false;
            break;
        }
        prev = off;
        for d in (0..bd.len()).rev() {
            idx[d] += 1;
            if idx[d] < bd[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    if !ok || stride.is_some_and(|s| s > isize::MAX as usize) {
        return None;
    }
    Some(Mat { ptr: at(base, dtype, l.start()), ld, col_major: !row_major, batch_stride: stride.unwrap_or(0) })
}

/// `C[b] = A[b] @ B[b]` for row-major `C` (`[batch, m, n]`, contiguous at `c`, row stride
/// `ldc`, batch stride `stride_c`): in cuBLAS's column-major terms `C^T = B^T A^T`.
#[allow(clippy::too_many_arguments)]
fn gemm_rows(
    dev: &GpuDevice,
    a: Mat,
    b: Mat,
    (m, k, n): (usize, usize, usize),
    batch: usize,
    c: u64,
    ldc: usize,
    stride_c: usize,
    ab: DType,
    cd: DType,
) -> Result<()> {
    if m == 0 || n == 0 || batch == 0 {
        return Ok(());
    }
    let g = Gemm {
        // cuBLAS's A is our B: row-major B [k, n] is B^T [n, k] column-major (no transpose);
        // a transposed view of B needs cuBLAS to transpose it.
        trans_a: b.col_major,
        trans_b: a.col_major,
        m: n,
        n: m,
        k,
        alpha: 1.0,
        a: b.ptr,
        lda: b.ld,
        stride_a: b.batch_stride,
        b: a.ptr,
        ldb: a.ld,
        stride_b: a.batch_stride,
        beta: 0.0,
        c,
        ldc,
        stride_c,
        batch,
        ab_dtype: ab,
        c_dtype: cd,
    };
    if k == 0 {
        // An empty sum: cuBLAS would leave C alone; zero it ourselves.
        return dev.rt.memset_zero(c, batch * m * n * cd.size_in_bytes());
    }
    dev.count_launch();
    dev.rt.gemm(&g)
}

/// `lhs @ rhs` with both already broadcast to `[batch.., m, k]` and `[batch.., k, n]`
/// layouts `ll`, `rl`; same float dtype. The result is of dtype `out`: the operands', or
/// f32 for sums never rounded to a half type.
pub(crate) fn matmul(
    lhs: &Tensor,
    rhs: &Tensor,
    ll: &Layout,
    rl: &Layout,
    out_shape: Shape,
    out: DType,
) -> Result<Tensor> {
    let dtype = lhs.dtype();
    let r = ll.rank();
    let (m, k, n) = (ll.dims()[r - 2], ll.dims()[r - 1], rl.dims()[r - 1]);
    let batch: usize = ll.dims()[..r - 2].iter().product();
    let (dev, _) = raw(lhs);
    if m * n * batch == 0 || k == 0 {
        return zeros(out_shape, out, lhs.device());
    }
    // Operands cuBLAS cannot read through their strides are copied (materialising any
    // broadcast) into contiguous form first.
    let operand = |t: &Tensor, l: &Layout| -> Result<(Option<Tensor>, Mat)> {
        let (_, base) = raw(t);
        if let Some(mat) = as_mat(base, dtype, l) {
            return Ok((None, mat));
        }
        let view = t.view_with(l.clone());
        let c = copy(&view)?;
        let (_, cb) = raw(&c);
        let mat = as_mat(cb, dtype, c.layout()).expect("a contiguous tensor is a row-major operand");
        Ok((Some(c), mat))
    };
    let (_keep_a, a) = operand(lhs, ll)?;
    let (_keep_b, b) = operand(rhs, rl)?;
    let (y, c) = empty(&dev, out, out_shape)?;
    gemm_rows(&dev, a, b, (m, k, n), batch, c, n, m * n, dtype, out)?;
    Ok(y)
}

/// Rows of activations up to which a half-precision weight is multiplied by `gemv_*`
/// (kernels/gemv.cu) rather than widened for cuBLAS: decode steps of up to 8 sequences.
/// A multiple of 8, so that a decode step padded to a CUDA graph's size
/// (`graph_batch_size`) takes the kernel its unpadded step takes.
pub(crate) const GEMV_MAX_ROWS: usize = 8;

/// Warps that share each group of 4 weight rows in `gemv_*`, each taking a slice of k: 1,
/// 2, 4 or 8. Doubled while the product would occupy fewer than 2048 warps (about 16 per SM
/// of an H100, what keeps its memory busy) and each warp still has a full pass of its 32
/// lanes over 8-element chunks. A function of the shape alone, so the sums' order does not
/// depend on the GPU. Qwen2.5-1.5B: 8 for the down projection (n 1536, k 8960), 4 for the
/// fused q, k, v projection (n 2048) and for o, 1 for the fused gate and up (n 17920) and
/// the LM head. `ARTIST_GEMV_SPLIT=1` (or 2, 4, 8) forces it, for benchmarks.
pub(crate) fn gemv_split(k: usize, n: usize) -> usize {
    const TARGET_WARPS: usize = 2048;
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = FORCED.get_or_init(|| {
        std::env::var("ARTIST_GEMV_SPLIT").ok().and_then(|v| v.parse().ok()).filter(|s| [1, 2, 4, 8].contains(s))
    });
    if let Some(s) = forced {
        return *s;
    }
    let (groups, chunks) = (n.div_ceil(4), k / 8);
    let mut split = 1;
    while split < 8 && groups * split < TARGET_WARPS && chunks >= 32 * 2 * split {
        split *= 2;
    }
    split
}

/// `x @ w^T` for f32 `x: [rows, k]` and a half-precision `w: [n, k]`, exactly as the
/// weights' f32 widening would give (up to the order of the sums). Up to
/// [`GEMV_MAX_ROWS`] rows, one kernel reads each weight once and widens it in registers;
/// beyond, the weights are widened block by block into an f32 scratch (never all at once)
/// and multiplied in f32 by cuBLAS. `round_x` rounds the activations to the weights'
/// dtype first (`Tensor::linear_in` of a decode-sized step: the gemv kernel rounds them as
/// it loads them).
pub(crate) fn linear_widening(
    x: &Tensor,
    w: &Tensor,
    rows: usize,
    k: usize,
    n: usize,
    out_dims: Vec<usize>,
    round_x: bool,
) -> Result<Tensor> {
    let (x, xp) = contiguous(x)?;
    let (dev, _) = raw(&x);
    let (out, c) = empty(&dev, DType::F32, out_dims)?;
    if rows == 0 || n == 0 {
        return Ok(out);
    }
    if rows <= GEMV_MAX_ROWS
        && k.is_multiple_of(8)
        && matches!(w.dtype(), DType::BF16 | DType::F16)
        && w.is_contiguous()
    {
        let (w, wp) = contiguous(w)?;
        if xp % 16 == 0 && wp % 16 == 0 {
            // Decode-sized: the weights read once, widened in registers (kernels/gemv.cu).
            let split = gemv_split(k, n);
            let cfg = LaunchCfg::linear(dev.blocks_for(n.div_ceil(4) * split * 32, 256), 256);
            let args = Args::new()
                .arg(rows as i64)
                .arg(k as i64)
                .arg(n as i64)
                .arg(xp)
                .arg(wp)
                .arg(c)
                .arg(round_x as i32)
                .arg(split as i32);
            dev.launch("gemv", format!("gemv_{}", suffix(w.dtype())), cfg, args)?;
            return Ok(out);
        }
    }
    if round_x {
        let rounded = cast(&cast(&x, w.dtype())?, DType::F32)?;
        return linear_widening(&rounded, w, rows, k, n, out.dims().to_vec(), false);
    }
    let block = ((32usize << 20) / k.max(1)).clamp(1, n);
    let a = Mat { ptr: xp, ld: k.max(1), col_major: false, batch_stride: 0 };
    for start in (0..n).step_by(block) {
        let len = block.min(n - start);
        let wide = cast(&w.narrow(0, start, len)?, DType::F32)?; // [len, k]
        let (_, wp) = raw(&wide);
        // w_block^T [k, len] is the transposed view of a row-major [len, k].
        let b = Mat { ptr: wp, ld: k.max(1), col_major: true, batch_stride: 0 };
        gemm_rows(&dev, a, b, (rows, k, len), 1, at(c, DType::F32, start), n, 0, DType::F32, DType::F32)?;
    }
    Ok(out)
}

// ---- attention --------------------------------------------------------------------------

/// Host mirror of `struct AttnShape` in kernels/attention.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct AttnShape {
    t: i64,
    len: i64,
    heads: i32,
    kv_heads: i32,
    d: i32,
    scale: f32,
    k_row: i64,
    k_head: i64,
    v_row: i64,
    v_head: i64,
}

/// `x` as `[rows, heads, d]` whose last dimension is contiguous (copied when it is not):
/// the tensor kept alive, the pointer to its first element, its row and head strides.
fn rows_view(x: &Tensor) -> Result<(Tensor, u64, i64, i64)> {
    let x = if x.layout().strides()[2] == 1 || x.dims()[2] <= 1 { x.clone() } else { copy(x)? };
    let (_, base) = raw(&x);
    let st = x.layout().strides();
    let p = at(base, x.dtype(), x.layout().start());
    Ok((x.clone(), p, st[0] as i64, st[1] as i64))
}

fn attn_shape(a: AttnDims, scale: f32, k: (i64, i64), v: (i64, i64)) -> AttnShape {
    AttnShape {
        t: a.t as i64,
        len: a.len as i64,
        heads: a.heads as i32,
        kv_heads: a.kv_heads as i32,
        d: a.d as i32,
        scale,
        k_row: k.0,
        k_head: k.1,
        v_row: v.0,
        v_head: v.1,
    }
}

/// One warp per item, four warps per block.
fn warp_cfg(items: usize) -> LaunchCfg {
    LaunchCfg::linear(items.div_ceil(4).max(1) as u32, 128)
}

pub(crate) fn attention_fwd(q: &Tensor, k: &Tensor, v: &Tensor, a: AttnDims, scale: f32) -> Result<(Tensor, Tensor)> {
    if a.d > 256 {
        return Err(crate::invalid!("causal_attention", "head_dim {} exceeds the kernel's 256", a.d));
    }
    let (q, qp) = contiguous(q)?;
    let (_k, kp, kr, kh) = rows_view(k)?;
    let (_v, vp, vr, vh) = rows_view(v)?;
    let (dev, _) = raw(&q);
    let (out, op) = empty(&dev, q.dtype(), (a.t, a.heads, a.d))?;
    let (lse, lp) = empty(&dev, DType::F32, (a.heads, a.t))?;
    if a.t * a.heads > 0 && a.d > 0 {
        let shape = attn_shape(a, scale, (kr, kh), (vr, vh));
        let args = Args::new().arg(shape).arg(qp).arg(kp).arg(vp).arg(op).arg(lp);
        let dtypes = [q.dtype(), k.dtype(), v.dtype()];
        if tensor_core_attention(&dev, dtypes, a.d, [kr, kh, vr, vh], [kp, vp]) {
            if wgmma_attention(&dev) {
                dev.launch("attention", format!("attn_fwd_wgmma_d{}_bf16", a.d), wgmma_cfg(a), args)?;
            } else {
                let cfg = LaunchCfg { grid: [a.t.div_ceil(64) as u32, a.heads as u32, 1], block: [128, 1, 1], smem: 0 };
                dev.launch("attention", format!("attn_fwd_mma_d{}_bf16", a.d), cfg, args)?;
            }
        } else {
            dev.launch("attention", format!("attn_fwd_{}", suffix(q.dtype())), warp_cfg(a.t * a.heads), args)?;
        }
    }
    Ok((out, lse))
}

/// Whether attention runs on the tensor cores (`attn_fwd_mma_d{64,128}_bf16` forward,
/// `attn_bwd_{dq,dkv}_mma_d{64,128}_bf16` backward): bf16 q, k
/// and v, head dim 64 or 128, key and value rows at 16-byte aligned addresses, a GPU of
/// compute capability 8.0 or later (the emulator runs it too), and `ARTIST_ATTN_MMA` not
/// `0` (which keeps the one-warp-per-row kernel, for comparisons).
fn tensor_core_attention(dev: &GpuDevice, dtypes: [DType; 3], d: usize, strides: [i64; 4], ptrs: [u64; 2]) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("ARTIST_ATTN_MMA").as_deref() == Ok("0"));
    !off && dtypes.iter().all(|&t| t == DType::BF16)
        && (d == 64 || d == 128)
        && strides.iter().all(|s| s % 8 == 0)
        && ptrs.iter().all(|p| p % 16 == 0)
        && dev.rt.info().compute_capability >= (8, 0)
}

thread_local! {
    /// This thread's choice of the Hopper kernels over `mma.sync`
    /// ([`crate::cuda::set_thread_wgmma_attention`]).
    pub(crate) static WGMMA_ATTENTION: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether the tensor-core forward and backward run on Hopper's warpgroup MMA
/// (`attn_fwd_wgmma_d{64,128}_bf16`, `attn_bwd_dq_wgmma_*`, `attn_bwd_dkv_wgmma_*`) rather
/// than `mma.sync`: kernels built for sm_90a (or the emulator), and asked for, by
/// `ARTIST_ATTN_WGMMA=1` or for this thread by [`crate::cuda::set_thread_wgmma_attention`].
/// Off by default until they have been checked and timed on a Hopper GPU (docs/CUDA.md).
fn wgmma_attention(dev: &GpuDevice) -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let asked = WGMMA_ATTENTION
        .with(|w| w.get())
        .unwrap_or_else(|| *ENV.get_or_init(|| std::env::var("ARTIST_ATTN_WGMMA").as_deref() == Ok("1")));
    asked && dev.rt.info().wgmma
}

/// The launch of the Hopper kernels (forward and dQ pass): two warpgroups per 128 query rows
/// of a head; two K and two V tiles of 64 rows in dynamic shared memory, 1024-byte aligned
/// (65 KB at head dim 128: past 48 KB, which the launch opts into).
fn wgmma_cfg(a: AttnDims) -> LaunchCfg {
    let smem = (4 * 64 * a.d * 2 + 1024) as u32;
    LaunchCfg { grid: [a.t.div_ceil(128) as u32, a.heads as u32, 1], block: [256, 1, 1], smem }
}

/// Attention of `q` over a paged KV cache's pools `[blocks, block_size, kv_heads, d]` through
/// the block `table` of positions `0..a.len`.
pub(crate) fn attention_fwd_paged(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    table: &Tensor,
    a: AttnDims,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    if a.d > 256 {
        return Err(crate::invalid!("paged_attention", "head_dim {} exceeds the kernel's 256", a.d));
    }
    let block_size = k_pool.dims()[1] as i64;
    let (q, qp) = contiguous(q)?;
    let (_k, kp) = contiguous(k_pool)?;
    let (_v, vp) = contiguous(v_pool)?;
    let (dev, _) = raw(&q);
    let (_table, tp) = contiguous(table)?;
    let (out, op) = empty(&dev, q.dtype(), (a.t, a.heads, a.d))?;
    let (lse, lp) = empty(&dev, DType::F32, (a.heads, a.t))?;
    if a.t * a.heads > 0 && a.d > 0 {
        let row = (a.kv_heads * a.d) as i64;
        let shape = attn_shape(a, scale, (row, a.d as i64), (row, a.d as i64));
        let args = Args::new().arg(shape).arg(qp).arg(kp).arg(vp).arg(tp).arg(block_size).arg(op).arg(lp);
        dev.launch("attention", format!("attn_fwd_paged_{}", suffix(q.dtype())), warp_cfg(a.t * a.heads), args)?;
    }
    Ok((out, lse))
}

/// Attention of many sequences' query rows over a paged KV cache, one launch (two with
/// `splits` > 1: the shares, then their merge): `meta`, `seq_of`, `tables` as
/// [`crate::PagedBatch`] uploads them; `a.t` is the rows. `grouped`: one warp per (row, KV
/// head) for the whole query-head group where the shape allows it
/// ([`group_kernel_dim`]), else one per (row, head).
pub(crate) fn attention_fwd_paged_batch(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    (meta, seq_of, tables): (&Tensor, &Tensor, &Tensor),
    (block_size, splits, grouped): (usize, usize, bool),
    a: AttnDims,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    if a.d > 256 {
        return Err(crate::invalid!("paged_attention_batch", "head_dim {} exceeds the kernel's 256", a.d));
    }
    let (q, qp) = contiguous(q)?;
    let (_k, kp) = contiguous(k_pool)?;
    let (_v, vp) = contiguous(v_pool)?;
    let (dev, _) = raw(&q);
    let (_m, mp) = contiguous(meta)?;
    let (_s, sp) = contiguous(seq_of)?;
    let (_t, tp) = contiguous(tables)?;
    let (out, op) = empty(&dev, q.dtype(), (a.t, a.heads, a.d))?;
    let (lse, lp) = empty(&dev, DType::F32, (a.heads, a.t))?;
    if a.t * a.heads > 0 && a.d > 0 {
        let row = (a.kv_heads * a.d) as i64;
        let shape = attn_shape(a, scale, (row, a.d as i64), (row, a.d as i64));
        let args = Args::new().arg(shape).arg(qp).arg(kp).arg(vp).arg(mp).arg(sp).arg(tp).arg(block_size as i64);
        let s = suffix(q.dtype());
        // The kernels reading the pools: `_bf16kv` variants for a bf16 cache under f32 queries.
        let sk = if k_pool.dtype() == q.dtype() { s.to_string() } else { format!("{s}_{}kv", suffix(k_pool.dtype())) };
        let pairs = a.t * a.heads;
        if let Some(dk) = group_kernel_dim(a).filter(|_| grouped) {
            let units = a.t * a.kv_heads * splits;
            let kernel = format!("attn_fwd_paged_group_d{dk}_{sk}");
            if splits > 1 {
                let part_out = CudaStorage::alloc(&dev, DType::F32, splits * pairs * a.d)?;
                let part_ml = CudaStorage::alloc(&dev, DType::F32, splits * pairs * 2)?;
                let args = args.arg(splits as i32).arg(0u64).arg(0u64).arg(part_out.ptr()).arg(part_ml.ptr());
                dev.launch("attention", kernel, warp_cfg(units), args)?;
                let args =
                    Args::new().arg(shape).arg(splits as i32).arg(part_out.ptr()).arg(part_ml.ptr()).arg(op).arg(lp);
                dev.launch("attention", format!("attn_combine_splits_{s}"), warp_cfg(pairs), args)?;
            } else {
                let args = args.arg(1i32).arg(op).arg(lp).arg(0u64).arg(0u64);
                dev.launch("attention", kernel, warp_cfg(units), args)?;
            }
        } else if splits > 1 {
            // Flash decoding: partial results per share of the keys, then one merge.
            let part_out = CudaStorage::alloc(&dev, DType::F32, splits * pairs * a.d)?;
            let part_ml = CudaStorage::alloc(&dev, DType::F32, splits * pairs * 2)?;
            let args = args.arg(splits as i32).arg(part_out.ptr()).arg(part_ml.ptr());
            dev.launch("attention", format!("attn_fwd_paged_split_{sk}"), warp_cfg(pairs * splits), args)?;
            let args = Args::new().arg(shape).arg(splits as i32).arg(part_out.ptr()).arg(part_ml.ptr()).arg(op).arg(lp);
            dev.launch("attention", format!("attn_combine_splits_{s}"), warp_cfg(pairs), args)?;
        } else {
            dev.launch(
                "attention",
                format!("attn_fwd_paged_batch_{sk}"),
                warp_cfg(a.t * a.heads),
                args.arg(op).arg(lp),
            )?;
        }
    }
    Ok((out, lse))
}

/// The head dim of the grouped decode kernel for `a` (`attn_fwd_paged_group_d64`/`_d128`):
/// groups of 2 to `GROUP_MAX_REP` (8) query heads per KV head, head dim up to 128.
fn group_kernel_dim(a: AttnDims) -> Option<usize> {
    let rep = a.heads / a.kv_heads.max(1);
    if !(2..=8).contains(&rep) {
        return None;
    }
    match a.d {
        1..=64 => Some(64),
        65..=128 => Some(128),
        _ => None,
    }
}

/// RoPE on the queries and keys of `qkv: [rows, (heads + 2 kv_heads) * d]` (each head
/// through RMSNorm first with `norm`'s weights and eps); the keys and values written into
/// rows `slots` of the pools; the queries returned `[rows, heads, d]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn qkv_rope_cache(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    norm: Option<(&Tensor, &Tensor, f32)>,
    [heads, kv_heads, d]: [usize; 3],
    cos: &Tensor,
    sin: &Tensor,
    slots: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
) -> Result<Tensor> {
    let (qkv, xp) = contiguous(qkv)?;
    let (dev, _) = raw(&qkv);
    let rows = qkv.dims()[0];
    let cos = cos.to_dtype(DType::F32)?.to_device(qkv.device())?;
    let sin = sin.to_dtype(DType::F32)?.to_device(qkv.device())?;
    let (cos, cp) = contiguous(&cos)?;
    let (sin, sp) = contiguous(&sin)?;
    let (_s, slp) = contiguous(slots)?;
    let bias = bias.map(contiguous).transpose()?;
    let bp = bias.as_ref().map_or(0, |b| b.1);
    let (kb, vb) = (raw(k_pool).1, raw(v_pool).1);
    let kp = at(kb, k_pool.dtype(), k_pool.layout().start());
    let vp = at(vb, v_pool.dtype(), v_pool.layout().start());
    let (q, qp) = empty(&dev, qkv.dtype(), (rows, heads, d))?;
    let pools = if k_pool.dtype() == qkv.dtype() {
        suffix(qkv.dtype()).to_string()
    } else {
        format!("{}_{}kv", suffix(qkv.dtype()), suffix(k_pool.dtype()))
    };
    if let Some((qw, kw, eps)) = norm {
        // One block per (row, head), as many threads as rms_norm gives a row of d.
        let (qw, qwp) = contiguous(qw)?;
        let (kw, kwp) = contiguous(kw)?;
        let blocks = rows * (heads + 2 * kv_heads);
        if blocks > 0 && d > 0 {
            let args = Args::new()
                .arg(rows as i64)
                .arg(heads as i64)
                .arg(kv_heads as i64)
                .arg(d as i64)
                .arg(eps)
                .arg(xp)
                .arg(bp)
                .arg(qwp)
                .arg(kwp)
                .arg(cp)
                .arg(sp)
                .arg(slp)
                .arg(qp)
                .arg(kp)
                .arg(vp);
            dev.launch("rope", format!("qkv_norm_rope_cache_{pools}"), row_cfg(&dev, blocks, d), args)?;
        }
        drop((cos, sin, qw, kw));
        return Ok(q);
    }
    let n = rows * (heads + kv_heads) * (d / 2).max(1);
    if rows > 0 && d > 0 {
        let (es, ps) = (qkv.dtype().size_in_bytes(), k_pool.dtype().size_in_bytes());
        // A null bias is checked as the input's pointer (already in the list).
        let bias = if bp != 0 { bp } else { xp };
        let vec = rope_vec(d, &[(xp, es), (bias, es), (cp, 4), (sp, 4), (qp, es), (kp, ps), (vp, ps)]);
        let args = Args::new()
            .arg(rows as i64)
            .arg(heads as i64)
            .arg(kv_heads as i64)
            .arg(d as i64)
            .arg(vec)
            .arg(xp)
            .arg(bp)
            .arg(cp)
            .arg(sp)
            .arg(slp)
            .arg(qp)
            .arg(kp)
            .arg(vp);
        dev.launch("rope", format!("qkv_rope_cache_{pools}"), linear_cfg(&dev, vec_items(n, vec == 1)), args)?;
    }
    drop((cos, sin));
    Ok(q)
}

/// `dst` viewed as rows of `inner` elements: row `rows[r]` becomes `src`'s row `r`, in place.
pub(crate) fn copy_rows(dst: &Tensor, rows: &Tensor, src: &Tensor, inner: usize) -> Result<()> {
    let (dev, dbase) = raw(dst);
    let dp = at(dbase, dst.dtype(), dst.layout().start());
    let (src, sp) = contiguous(src)?;
    let (_r, rp) = contiguous(rows)?;
    let n = rows.elem_count();
    if n * inner > 0 {
        let (kind, inner) = row_units(inner, dst.dtype(), &[sp, dp]);
        let args = Args::new().arg(n as i64).arg(inner as i64).arg(rp).arg(sp).arg(dp);
        dev.launch("index", format!("copy_rows_{kind}"), linear_cfg(&dev, n * inner), args)?;
    }
    drop(src);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_bwd(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    a: AttnDims,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    if a.d > 256 {
        return Err(crate::invalid!("causal_attention_backward", "head_dim {} exceeds the kernel's 256", a.d));
    }
    let (q, qp) = contiguous(q)?;
    let (_k, kp, kr, kh) = rows_view(k)?;
    let (_v, vp, vr, vh) = rows_view(v)?;
    let (out, outp) = contiguous(&out.to_dtype(q.dtype())?)?;
    let (lse, lp) = contiguous(&lse.to_dtype(DType::F32)?)?;
    let (dout, dp) = contiguous(&dout.to_dtype(DType::F32)?)?;
    let (dev, _) = raw(&q);
    let (dq, dqp) = empty(&dev, DType::F32, (a.t, a.heads, a.d))?;
    let (dk, dkp) = empty(&dev, DType::F32, (a.len, a.kv_heads, a.d))?;
    let (dv, dvp) = empty(&dev, DType::F32, (a.len, a.kv_heads, a.d))?;
    let delta = CudaStorage::alloc(&dev, DType::F32, a.heads * a.t)?;
    let dtypes = [q.dtype(), k.dtype(), v.dtype()];
    if a.t > 0 && a.len > 0 && tensor_core_attention(&dev, dtypes, a.d, [kr, kh, vr, vh], [kp, vp]) {
        // The tensor-core passes (kernels/attention.cu): delta from the f32 dout, then dQ and
        // dK/dV from dout rounded to bf16.
        let shape = attn_shape(a, scale, (kr, kh), (vr, vh));
        let args = Args::new().arg(shape).arg(outp).arg(dp).arg(delta.ptr());
        dev.launch("attention", "attn_bwd_delta_bf16".into(), warp_cfg(a.t * a.heads), args)?;
        let (dout16, d16) = contiguous(&dout.to_dtype(DType::BF16)?)?;
        let block = |rows: usize, heads: usize| LaunchCfg {
            grid: [rows.div_ceil(64) as u32, heads as u32, 1],
            block: [128, 1, 1],
            smem: 0,
        };
        let args = Args::new().arg(shape).arg(qp).arg(kp).arg(vp).arg(d16).arg(lp).arg(delta.ptr()).arg(dqp);
        if wgmma_attention(&dev) {
            dev.launch("attention", format!("attn_bwd_dq_wgmma_d{}_bf16", a.d), wgmma_cfg(a), args)?;
        } else {
            // Two buffers of a K and a V tile of 64 padded rows (69 KB at d128).
            let dq_cfg = LaunchCfg { smem: (2 * 2 * 64 * (a.d + 8) * 2) as u32, ..block(a.t, a.heads) };
            dev.launch("attention", format!("attn_bwd_dq_mma_d{}_bf16", a.d), dq_cfg, args)?;
        }
        let args = Args::new().arg(shape).arg(qp).arg(kp).arg(vp).arg(d16).arg(lp).arg(delta.ptr()).arg(dkp).arg(dvp);
        if wgmma_attention(&dev) {
            // Two warpgroups per 128 keys: their K and V tiles, and two buffers of a Q and a
            // dO tile, 64 rows each, 1024-byte aligned (129 KB at head dim 128).
            let cfg = LaunchCfg {
                grid: [a.len.div_ceil(128) as u32, a.kv_heads as u32, 1],
                block: [256, 1, 1],
                smem: (8 * 64 * a.d * 2 + 1024) as u32,
            };
            dev.launch("attention", format!("attn_bwd_dkv_wgmma_d{}_bf16", a.d), cfg, args)?;
        } else {
            dev.launch("attention", format!("attn_bwd_dkv_mma_d{}_bf16", a.d), block(a.len, a.kv_heads), args)?;
        }
        drop((out, lse, dout, dout16));
        return Ok((dq, dk, dv));
    }
    if a.d > 0 {
        let shape = attn_shape(a, scale, (kr, kh), (vr, vh));
        let s = suffix(q.dtype());
        if a.t * a.heads > 0 {
            let args =
                Args::new().arg(shape).arg(qp).arg(kp).arg(vp).arg(outp).arg(dp).arg(lp).arg(delta.ptr()).arg(dqp);
            dev.launch("attention", format!("attn_bwd_dq_{s}"), warp_cfg(a.t * a.heads), args)?;
        }
        if a.len * a.kv_heads > 0 {
            let args =
                Args::new().arg(shape).arg(qp).arg(kp).arg(vp).arg(dp).arg(lp).arg(delta.ptr()).arg(dkp).arg(dvp);
            dev.launch("attention", format!("attn_bwd_dkv_{s}"), warp_cfg(a.len * a.kv_heads), args)?;
        }
    }
    drop((out, lse, dout));
    Ok((dq, dk, dv))
}

// ---- sampling ---------------------------------------------------------------------------

/// Host mirror of `struct SamplePick` in kernels/sampling.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct SamplePickRaw {
    row: i64,
    inv_t: f32,
    greedy: i32,
    top_k: i32,
    top_p: f32,
    min_p: f32,
    pad: i32,
    u: f64,
}

pub(crate) fn sample_rows(logits: &Tensor, picks: &[crate::SamplePick], vocab: usize) -> Result<Vec<(u32, f32)>> {
    if picks.is_empty() {
        return Ok(vec![]);
    }
    let (dev, lp) = raw(logits);
    let lp = at(lp, DType::F32, logits.layout().start());
    let mut bytes = Vec::with_capacity(picks.len() * std::mem::size_of::<SamplePickRaw>());
    for p in picks {
        let greedy = p.temperature == 0.0;
        let raw = SamplePickRaw {
            row: p.row as i64,
            inv_t: if greedy { 1.0 } else { 1.0 / p.temperature },
            greedy: greedy as i32,
            top_k: p.top_k.min(i32::MAX as usize) as i32,
            top_p: p.top_p,
            min_p: p.min_p,
            pad: 0,
            u: p.u,
        };
        // SAFETY: a plain repr(C) value viewed as its bytes.
        bytes.extend_from_slice(unsafe {
            std::slice::from_raw_parts(&raw as *const SamplePickRaw as *const u8, std::mem::size_of::<SamplePickRaw>())
        });
    }
    let pk = CudaStorage::from_host(&dev, &CpuStorage::U8(bytes))?;
    let probs = CudaStorage::alloc(&dev, DType::F32, picks.len() * vocab)?;
    // The ids, then the logprobs' bits: one copy back per decoding step.
    let out = CudaStorage::alloc(&dev, DType::U32, 2 * picks.len())?;
    // kernels/sampling.cu: the two passes that compute exponentials take a block per chunk of
    // SAMPLE_CHUNK logits of each row, then a block per pick draws. `part`: each chunk's
    // share (SampleChunk, 48 bytes).
    const SAMPLE_CHUNK: usize = 8192;
    let chunks = vocab.div_ceil(SAMPLE_CHUNK);
    let part = CudaStorage::alloc(&dev, DType::U8, picks.len() * chunks * 48)?;
    let per_chunk = LaunchCfg { grid: [chunks as u32, picks.len() as u32, 1], block: [256, 1, 1], smem: 0 };
    let args = Args::new().arg(vocab as i64).arg(lp).arg(pk.ptr()).arg(part.ptr());
    dev.launch("sampling", "sample_max_sum_f32".into(), per_chunk, args)?;
    let args = Args::new().arg(vocab as i64).arg(lp).arg(pk.ptr()).arg(part.ptr()).arg(probs.ptr());
    dev.launch("sampling", "sample_probs_f32".into(), per_chunk, args)?;
    let cfg = LaunchCfg::linear(picks.len() as u32, row_threads(vocab));
    let args = Args::new()
        .arg(vocab as i64)
        .arg(lp)
        .arg(pk.ptr())
        .arg(part.ptr())
        .arg(chunks as i32)
        .arg(probs.ptr())
        .arg(out.ptr())
        .arg(at(out.ptr(), DType::U32, picks.len()));
    dev.launch("sampling", "sample_pick_f32".into(), cfg, args)?;
    let CpuStorage::U32(v) = out.to_host(0..2 * picks.len())? else { unreachable!("allocated as u32") };
    let (ids, lps) = v.split_at(picks.len());
    Ok(ids.iter().zip(lps).map(|(&i, &l)| (i, f32::from_bits(l))).collect())
}

/// What `wgmma` read from a swizzled tile (kernels/attention.cu, `wgmma_probe_*`): the 64 x N
/// output of a one-hot A times a B described as the attention kernels describe it (`layout`),
/// over a tile whose elements hold their row (`what` 0) or column (`what` 1), at 16-deep
/// step `step`.
pub(crate) fn wgmma_probe(
    ordinal: usize,
    d: usize,
    layout: crate::cuda::ProbeLayout,
    what: i32,
    step: usize,
) -> Result<Vec<f32>> {
    use crate::cuda::ProbeLayout;
    let dev = crate::cuda::device(ordinal)?;
    if !dev.rt.info().wgmma {
        return Err(crate::invalid!("wgmma_probe", "kernels are not built for sm_90a here"));
    }
    let (mode, n, steps) = match layout {
        ProbeLayout::KMajor => (0, 64, d / 16),
        ProbeLayout::NMajor => (1, d, 4),
        ProbeLayout::KMajorSharedA => (2, 64, d / 16),
    };
    if !(d == 64 || d == 128) || step >= steps {
        return Err(crate::invalid!("wgmma_probe", "head dim {d} (64 or 128), step {step}"));
    }
    let out = CudaStorage::alloc(&dev, DType::F32, 64 * n)?;
    let cfg = LaunchCfg { grid: [1, 1, 1], block: [128, 1, 1], smem: (2 * 64 * d * 2 + 1024) as u32 };
    let name = format!("wgmma_probe_d{d}_t{mode}");
    dev.launch("attention", name, cfg, Args::new().arg(what).arg(step as i32).arg(out.ptr()))?;
    let CpuStorage::F32(v) = out.to_host(0..64 * n)? else { unreachable!("allocated as f32") };
    Ok(v)
}

// ---- fused training ops -----------------------------------------------------------------

/// One AdamW update of f32 `p`, `m`, `v` with gradient `g` (all contiguous, same length).
#[allow(clippy::too_many_arguments)]
pub(crate) fn adamw(p: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, s: &crate::fused::AdamWScalars) -> Result<()> {
    let n = p.elem_count();
    if n == 0 {
        return Ok(());
    }
    let (dev, pp) = raw(p);
    let ptr = |t: &Tensor| at(raw(t).1, DType::F32, t.layout().start());
    let ptrs = [at(pp, DType::F32, p.layout().start()), ptr(m), ptr(v), ptr(g)];
    let vec = vec8_all(&ptrs.map(|q| (q, 4)));
    let args = Args::new()
        .arg(n as i64)
        .arg(vec as i32)
        .arg(ptrs[0])
        .arg(ptrs[1])
        .arg(ptrs[2])
        .arg(ptrs[3])
        .arg(s.decay)
        .arg(s.beta1_complement)
        .arg(s.beta2)
        .arg(s.beta2_complement)
        .arg(s.eps)
        .arg(s.bias_correction2_sqrt)
        .arg(s.step_size);
    dev.launch("adamw", "adamw_f32".into(), linear_cfg(&dev, vec_items(n, vec)), args)
}

/// In place over f32 logits `z: [rows, vocab]`: the gradient of the chosen tokens'
/// log-probabilities, and of each row's entropy when `entropy` is `(g_h, h)` (see
/// kernels/logprob.cu).
pub(crate) fn logprob_grad(
    z: &Tensor,
    g: &[f32],
    lse: &[f32],
    targets: &[u32],
    scale: f32,
    entropy: Option<(&[f32], &[f32])>,
) -> Result<()> {
    let [rows, vocab] = z.dims_n("token_logprob_grad")?;
    let (dev, zp) = raw(z);
    if rows * vocab == 0 {
        return Ok(());
    }
    let gv = CudaStorage::from_host(&dev, &CpuStorage::F32(g.to_vec()))?;
    let lv = CudaStorage::from_host(&dev, &CpuStorage::F32(lse.to_vec()))?;
    let tv = upload_ids(&dev, targets)?;
    // The entropy's gradient and values in one buffer, `[g_h; h]` (unread without them).
    let ev = match entropy {
        Some((gh, h)) => Some(CudaStorage::from_host(&dev, &CpuStorage::F32([gh, h].concat()))?),
        None => None,
    };
    let zp = at(zp, DType::F32, z.layout().start());
    let vec = vocab.is_multiple_of(8) && vec8_aligned(zp, 4);
    let args = Args::new()
        .arg(rows as i64)
        .arg(vocab as i64)
        .arg(vec as i32)
        .arg(scale)
        .arg(gv.ptr())
        .arg(lv.ptr())
        .arg(tv.ptr())
        .arg(ev.is_some() as i32)
        .arg(ev.as_ref().map_or(gv.ptr(), |e| e.ptr()))
        .arg(zp);
    dev.launch("logprob", "logprob_grad_f32".into(), linear_cfg(&dev, vec_items(rows * vocab, vec)), args)
}

#[cfg(all(test, feature = "emulator"))]
mod tests {
    use super::*;

    /// The strided copy through 64-bit and 32-bit index arithmetic gives the CPU's result.
    #[test]
    fn wide_and_narrow_indexing_agree() {
        crate::cuda::test_backend().expect("the emulator is built in for tests");
        let dev = Device::cuda(0).unwrap();
        let v: Vec<f32> = (0..4 * 6 * 5).map(|i| i as f32).collect();
        let x = Tensor::from_vec(v, (4, 6, 5), Device::Cpu).unwrap();
        let view = x.permute(&[2, 0, 1]).unwrap().narrow(1, 1, 2).unwrap();
        let want = view.contiguous().unwrap().to_vec::<f32>().unwrap();
        let g = x.to_device(dev).unwrap().permute(&[2, 0, 1]).unwrap().narrow(1, 1, 2).unwrap();
        let dst = Layout::contiguous(g.shape().clone());
        let narrow = Strided::new("copy", g.shape(), &[&dst, g.layout()]).unwrap();
        assert_eq!(narrow.mode(), 2);
        for s in [narrow, narrow.wide()] {
            let (devc, src) = raw(&g);
            let (out, p) = empty(&devc, DType::F32, g.shape().clone()).unwrap();
            let n = g.elem_count();
            let args = Args::new().arg(n as i64).arg(s).arg(src).arg(p);
            devc.launch("elementwise", "copy_b4".into(), linear_cfg(&devc, n), args).unwrap();
            assert_eq!(out.to_vec::<f32>().unwrap(), want, "mode {}", s.mode());
        }
    }

    /// Whole vectors of eight elements (mode 3) give the one-element loop's bits, for every
    /// length's remainder and element size; misaligned operands keep the one-element loop.
    #[test]
    fn vector_and_element_paths_agree() {
        crate::cuda::test_backend().expect("the emulator is built in for tests");
        if !crate::cuda::kernels::vectors_enabled() {
            eprintln!("skipped: ARTIST_VEC=0 turns the vector paths off");
            return;
        }
        let dev = Device::cuda(0).unwrap();
        for n in [1usize, 7, 8, 9, 64, 203, 1029] {
            let a =
                Tensor::from_vec((0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect::<Vec<_>>(), n, dev).unwrap();
            let b = Tensor::from_vec((0..n).map(|i| (i as f32 * 0.11).cos() * 2.0 + 0.5).collect::<Vec<_>>(), n, dev)
                .unwrap();
            for d in [DType::F32, DType::BF16, DType::F16] {
                let (x, y) = (a.to_dtype(d).unwrap(), b.to_dtype(d).unwrap());
                let (dv, xp) = raw(&x);
                let (_, yp) = raw(&y);
                let es = d.size_in_bytes();
                let run =
                    |name: String, vec: bool, ops: &[(u64, &Layout, usize)], out_dtype: DType, op: Option<i32>| {
                        let (out, op_ptr) = empty(&dv, out_dtype, n).unwrap();
                        let layouts: Vec<&Layout> = ops.iter().map(|o| o.1).collect();
                        let bases: Vec<(u64, usize)> = ops.iter().map(|o| (o.0, o.2)).collect();
                        let (mut s, others) = if op.is_some() {
                            (Strided::new("t", x.shape(), &layouts).unwrap(), vec![(op_ptr, out_dtype.size_in_bytes())])
                        } else {
                            // casts and copies: operand 0 is the destination
                            let dst = Layout::contiguous(x.shape().clone());
                            let mut all = vec![&dst];
                            all.extend(layouts.iter().copied());
                            (Strided::new("t", x.shape(), &all).unwrap(), vec![])
                        };
                        let mut all_bases = bases.clone();
                        if op.is_none() {
                            all_bases.insert(0, (op_ptr, out_dtype.size_in_bytes()));
                        }
                        s = s.vectorized(&all_bases, &others);
                        assert_eq!(s.mode(), 3, "{name}: aligned contiguous operands take the vector path");
                        if !vec {
                            s = s.scalar();
                        }
                        let mut args = Args::new().arg(n as i64);
                        if let Some(code) = op {
                            args = args.arg(code).arg(0.75f32).arg(-0.25f32);
                        }
                        args = args.arg(s);
                        for o in ops {
                            args = args.arg(o.0);
                        }
                        dv.launch("elementwise", name, strided_cfg(&dv, n, &s), args.arg(op_ptr)).unwrap();
                        out.to_bytes().unwrap()
                    };
                let sfx = suffix(d);
                type Case<'a> = (String, Vec<(u64, &'a Layout, usize)>, DType, Option<i32>);
                let mut cases: Vec<Case> = vec![
                    (format!("unary_{sfx}"), vec![(xp, x.layout(), es)], d, Some(UnaryOp::Silu as i32)),
                    (format!("unary_{sfx}"), vec![(xp, x.layout(), es)], d, Some(UnaryOp::Affine as i32)),
                    (
                        format!("binary_{sfx}"),
                        vec![(xp, x.layout(), es), (yp, y.layout(), es)],
                        d,
                        Some(BinaryOp::SiluMul as i32),
                    ),
                    (
                        format!("binary_{sfx}"),
                        vec![(xp, x.layout(), es), (yp, y.layout(), es)],
                        d,
                        Some(BinaryOp::Div as i32),
                    ),
                    (format!("copy_{}", bytes_suffix(d)), vec![(xp, x.layout(), es)], d, None),
                ];
                for to in [DType::F32, DType::BF16, DType::F16, DType::U32, DType::U8] {
                    cases.push((format!("cast_{sfx}_{}", suffix(to)), vec![(xp, x.layout(), es)], to, None));
                }
                for (name, ops, out_dtype, op) in &cases {
                    let (v, e) =
                        (run(name.clone(), true, ops, *out_dtype, *op), run(name.clone(), false, ops, *out_dtype, *op));
                    assert_eq!(v, e, "{name} (op {op:?}) over {n} {d}: the vector path changed bits");
                }
            }
        }
        // A view that starts one element in is not aligned for vectors of 16-bit elements.
        let x = Tensor::zeros(64, DType::BF16, dev).unwrap();
        let v = x.narrow(0, 1, 40).unwrap();
        let (_, p) = raw(&v);
        let s = Strided::new("t", v.shape(), &[v.layout()]).unwrap().vectorized(&[(p, 2)], &[]);
        assert_eq!(s.mode(), 1);
        let w = x.narrow(0, 8, 40).unwrap();
        let s = Strided::new("t", w.shape(), &[w.layout()]).unwrap().vectorized(&[(p, 2)], &[]);
        assert_eq!(s.mode(), 3);
        assert!(vec8_aligned(8, 1) && !vec8_aligned(4, 1) && vec8_aligned(16, 4) && !vec8_aligned(8, 4));
    }

    /// Row-strided operands (mode 4: the gate and up halves of a fused projection, a bias
    /// row broadcast over the rows, a write into a column slice) move as whole vectors with
    /// the one-element loop's bits; rows that a vector would cross, or that start off a
    /// vector's alignment, keep the one-element loop.
    #[test]
    fn row_strided_views_take_whole_vectors() {
        crate::cuda::test_backend().expect("the emulator is built in for tests");
        if !crate::cuda::kernels::vectors_enabled() {
            eprintln!("skipped: ARTIST_VEC=0 turns the vector paths off");
            return;
        }
        let dev = Device::cuda(0).unwrap();
        let values = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin() * 3.0 + 0.1).collect::<Vec<f32>>();
        let (rows, cols) = (5usize, 24usize);
        let shape = Shape::from(vec![rows, cols]);
        for d in [DType::F32, DType::BF16, DType::F16] {
            let es = d.size_in_bytes();
            let fused = Tensor::from_vec(values(rows * 2 * cols, 0.37), vec![rows, 2 * cols], dev)
                .unwrap()
                .to_dtype(d)
                .unwrap();
            let (gate, up) = (fused.narrow(1, 0, cols).unwrap(), fused.narrow(1, cols, cols).unwrap());
            let bias = Tensor::from_vec(values(cols, 0.11), cols, dev).unwrap().to_dtype(d).unwrap();
            let bias_rows = bias.layout().broadcast_as(&shape).unwrap();
            let (dv, fp) = raw(&fused);
            let (_, bp) = raw(&bias);
            // Returns the output's bytes, and the mode the aligned description took.
            let binary = |op: BinaryOp, y: (u64, &Layout), vec: bool| {
                let (out, o) = empty(&dv, d, shape.clone()).unwrap();
                let mut s = Strided::new("t", &shape, &[gate.layout(), y.1])
                    .unwrap()
                    .vectorized(&[(fp, es), (y.0, es)], &[(o, es)]);
                let mode = s.mode();
                if !vec {
                    s = s.scalar();
                }
                let args = Args::new()
                    .arg((rows * cols) as i64)
                    .arg(op as i32)
                    .arg(0f32)
                    .arg(0f32)
                    .arg(s)
                    .arg(fp)
                    .arg(y.0)
                    .arg(o);
                dv.launch("elementwise", format!("binary_{}", suffix(d)), strided_cfg(&dv, rows * cols, &s), args)
                    .unwrap();
                (out.to_bytes().unwrap(), mode)
            };
            for (name, op, y) in
                [("silu_mul", BinaryOp::SiluMul, (fp, up.layout())), ("bias add", BinaryOp::Add, (bp, &bias_rows))]
            {
                let ((v, mode), (e, _)) = (binary(op, y, true), binary(op, y, false));
                assert_eq!(mode, 4, "{name} {d}: rows of whole vectors");
                assert_eq!(v, e, "{name} {d}: the vector path changed bits");
            }
            // A cast out of a column slice, and a write into one (operand 0 the destination).
            for vec in [true, false] {
                let dst = Tensor::zeros(vec![rows, cols + 16], d, dev).unwrap();
                let window = dst.narrow(1, 8, cols).unwrap();
                let (_, dp) = raw(&dst);
                let mut s = Strided::new("t", &shape, &[window.layout(), up.layout()])
                    .unwrap()
                    .vectorized(&[(dp, es), (fp, es)], &[]);
                assert_eq!(s.mode(), 4, "copy into a column slice, {d}");
                if !vec {
                    s = s.scalar();
                }
                let args = Args::new().arg((rows * cols) as i64).arg(s).arg(fp).arg(dp);
                dv.launch("elementwise", format!("copy_{}", bytes_suffix(d)), strided_cfg(&dv, rows * cols, &s), args)
                    .unwrap();
                assert_eq!(
                    window.to_f32_vec().unwrap(),
                    up.to_f32_vec().unwrap(),
                    "copy into a column slice, {d}, vec {vec}"
                );
            }
        }
        // 20 columns: a vector would cross rows. A slice starting 4 elements in: misaligned
        // for 16-bit vectors. Both keep the one-element loop.
        let t = Tensor::zeros(vec![4, 48], DType::BF16, dev).unwrap();
        let (_, p) = raw(&t);
        for (start, len) in [(0, 20), (4, 24)] {
            let v = t.narrow(1, start, len).unwrap();
            let s = Strided::new("t", v.shape(), &[v.layout()]).unwrap().vectorized(&[(p, 2)], &[]);
            assert!(!matches!(s.mode(), 3 | 4), "columns {start}..{}: mode {}", start + len, s.mode());
        }
    }
}

#[cfg(test)]
mod split_tests {
    use super::gemv_split;

    #[test]
    fn gemv_splits_k_where_the_rows_are_few() {
        if std::env::var_os("ARTIST_GEMV_SPLIT").is_some() {
            return;
        }
        // Qwen2.5-1.5B's decode projections: fused qkv, o, fused gate and up, down, the LM head.
        let got: Vec<usize> = [(1536, 2048), (1536, 1536), (1536, 17_920), (8960, 1536), (1536, 151_936)]
            .map(|(k, n)| gemv_split(k, n))
            .into();
        assert_eq!(got, [4, 4, 1, 8, 1]);
        // Never a slice shorter than one pass of the warp's lanes.
        assert_eq!(gemv_split(256, 1), 1);
        assert_eq!(gemv_split(512, 1), 2);
        assert_eq!(gemv_split(64, 1), 1);
    }
}
