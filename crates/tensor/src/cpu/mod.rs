//! The CPU backend: f32 arithmetic (half types widened per element), rayon across rows,
//! the `gemm` crate for matrix products, and bf16 dot products (`dpbf16`) for
//! `linear_in` in bf16 where the CPU has them.

pub(crate) mod amx;
pub(crate) mod attention;
pub(crate) mod dpbf16;
pub(crate) mod elementwise;
pub(crate) mod index;
pub(crate) mod matmul;
pub(crate) mod nn;
pub(crate) mod reduce;
pub(crate) mod simd;

use std::borrow::Cow;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::layout::RowPlan;
use crate::{DType, Layout, WithDType};

/// Whether this CPU's AMX tiles run the bf16 products of `linear_in` here (AMX-BF16, the
/// tiles granted to the process, `ARTIST_CPU_AMX` not `0`); asks Linux for the tiles the
/// first time. For benchmarks that measure the tiles' own limit.
pub fn amx_available() -> bool {
    amx::available()
}

/// `steps` rounds of four AMX tile loads from L1 and four `tdpbf16ps` (65,536 FLOP a round)
/// on the calling thread, as the bf16 product kernel's inner loop: the tiles' own limit, for
/// benchmarks. `None` where the tiles do not run ([`amx_available`]).
pub fn amx_peak(steps: usize) -> Option<f32> {
    amx::peak(steps)
}

/// Runs `$body` with `$v` bound to the typed vector of any dtype.
macro_rules! dispatch_all {
    ($s:expr, |$v:ident| $body:expr) => {
        match $s {
            $crate::cpu::CpuStorage::U8($v) => $body,
            $crate::cpu::CpuStorage::U32($v) => $body,
            $crate::cpu::CpuStorage::F16($v) => $body,
            $crate::cpu::CpuStorage::BF16($v) => $body,
            $crate::cpu::CpuStorage::F32($v) => $body,
        }
    };
}

/// Runs `$body` with `$v` bound to the typed vector of a float dtype; integer dtypes
/// return `UnsupportedDType` from the enclosing function.
macro_rules! dispatch_float {
    ($op:expr, $s:expr, |$v:ident| $body:expr) => {
        match $s {
            $crate::cpu::CpuStorage::F16($v) => $body,
            $crate::cpu::CpuStorage::BF16($v) => $body,
            $crate::cpu::CpuStorage::F32($v) => $body,
            other => {
                return Err($crate::Error::UnsupportedDType { op: $op, dtype: other.dtype() });
            }
        }
    };
}
pub(crate) use {dispatch_all, dispatch_float};

#[derive(Debug, Clone)]
pub enum CpuStorage {
    U8(Vec<u8>),
    U32(Vec<u32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F32(_) => DType::F32,
        }
    }

    pub fn len(&self) -> usize {
        dispatch_all!(self, |v| v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::U8 => CpuStorage::U8(vec![0; n]),
            DType::U32 => CpuStorage::U32(vec![0; n]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; n]),
            DType::F32 => CpuStorage::F32(vec![0.0; n]),
        }
    }

    /// The raw bytes, little-endian as in memory (what safetensors stores).
    pub fn as_bytes(&self) -> &[u8] {
        dispatch_all!(self, |v| bytemuck::cast_slice(v))
    }

    pub(crate) fn as_bytes_mut(&mut self) -> &mut [u8] {
        dispatch_all!(self, |v| bytemuck::cast_slice_mut(v))
    }
}

impl<T: WithDType> From<Vec<T>> for CpuStorage {
    fn from(v: Vec<T>) -> Self {
        T::into_storage(v)
    }
}

/// Keeps freed memory in the process for reuse instead of returning it to the OS.
///
/// glibc hands allocations above 32 MiB straight to `mmap` and unmaps them on free, so every
/// large tensor (a `[512, 151936]` logits matrix is 311 MB) is page-faulted in afresh, which
/// costs more than the op that fills it. Binaries call this once at startup, before rayon's
/// pool starts; it raises the `mmap` threshold to 1 GiB, stops heap trimming, and keeps
/// every thread on the main arena (`mallopt`): a thread's own arena grows in heaps of at
/// most 64 MiB, so tensors allocated on rayon's workers (where [`on_worker`] runs the
/// binaries) would go to `mmap` again. No effect off glibc.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Runs `f` on one of rayon's worker threads and waits for it, so that every parallel op `f`
/// starts splits its work from inside the pool. There handing out and joining tasks costs a
/// few atomic operations; from outside, each op is injected into the pool and the caller put
/// to sleep on a lock and woken again: two context switches an op, which on a small model
/// cost more than the ops themselves (the embedded demo runs 1.4x faster in the pool).
/// Binaries run their work through this.
///
/// While `f` waits on another thread (a tool call, a communicator's thread), the worker it
/// occupies waits too; such threads may still use rayon, as long as the pool has another
/// worker. A pool of one thread has none, so there `f` runs on the calling thread.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_num_threads() > 1 { rayon::scope(|_| f()) } else { f() }
}

/// The memory read bandwidth of this machine in GB/s: 1 GiB summed on every thread of rayon's
/// pool, the best of five. What a memory-bound decode step can at most stream its weights
/// at; the benchmarks print their bounds with it.
pub fn read_bandwidth_gbs() -> f64 {
    use rayon::prelude::*;
    let data = vec![1u64; (1 << 30) / 8];
    (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            let sum: u64 = data.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x))).sum();
            assert_eq!(sum, data.len() as u64);
            (1u64 << 30) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Work below this many elements runs on the calling thread; above, rows (or pieces of
/// long rows) of about this size become rayon tasks.
pub(crate) const GRAIN: usize = 1 << 15;

/// `src` as `rows` rows of stride `stride` with `cols` used columns (`src[i * stride + j]`),
/// transposed into a row-major `[cols, rows]`, in parallel bands of destination rows: each
/// source row gives a band one 64-byte line of consecutive values, and each of the band's
/// rows is written in order.
pub(crate) fn transpose<T: Copy + Send + Sync + Default>(src: &[T], rows: usize, cols: usize, stride: usize) -> Vec<T> {
    let mut out = vec![T::default(); rows * cols];
    if rows == 0 || cols == 0 {
        return out;
    }
    debug_assert!(src.len() >= (rows - 1) * stride + cols);
    let band = (64 / std::mem::size_of::<T>()).max(1);
    out.par_chunks_mut(band * rows).with_min_len((GRAIN / (band * rows)).max(1)).enumerate().for_each(|(b, out)| {
        // Destination rows j0..j0+h are source columns j0..j0+h.
        let (j0, h) = (b * band, out.len() / rows);
        for i in 0..rows {
            for (dj, &v) in src[i * stride + j0..i * stride + j0 + h].iter().enumerate() {
                out[dj * rows + i] = v;
            }
        }
    });
    out
}

/// Fills a contiguous `out` row by row. `f(out_piece, offsets)` gets a piece of an output
/// row and the storage offsets of its first element for each operand; within the piece,
/// operand `k` advances by `plan.inner_strides[k]`.
pub(crate) fn for_each_row<T: Send, const N: usize>(
    plan: &RowPlan<N>,
    out: &mut [T],
    f: impl Fn(&mut [T], [usize; N]) + Sync,
) {
    let inner = plan.inner;
    if plan.rows == 0 || inner == 0 {
        return;
    }
    if out.len() <= GRAIN {
        for (r, row) in out.chunks_mut(inner).enumerate() {
            f(row, plan.offsets(r));
        }
        return;
    }
    out.par_chunks_mut(inner).with_min_len((GRAIN / inner).max(1)).enumerate().for_each(|(r, row)| {
        let offs = plan.offsets(r);
        if inner <= GRAIN {
            f(row, offs);
        } else {
            row.par_chunks_mut(GRAIN).enumerate().for_each(|(p, piece)| {
                let skip = p * GRAIN;
                f(piece, std::array::from_fn(|k| offs[k] + skip * plan.inner_strides[k]));
            });
        }
    });
}

/// The elements of `layout` in row-major order: borrowed when already contiguous.
pub(crate) fn contiguous<'a, T: WithDType>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    match layout.contiguous_range() {
        Some(r) => Cow::Borrowed(&data[r]),
        None => Cow::Owned(elementwise::map_strided(data, layout, |x| x)),
    }
}

/// Splits `n` items into rayon tasks of about `GRAIN` elements when each item is `item_len`
/// elements long: the minimum number of items per task.
pub(crate) fn min_items(item_len: usize) -> usize {
    (GRAIN / item_len.max(1)).max(1)
}
