//! Matrix products on the `gemm` crate. Operands are read through their strides, so
//! transposed and sliced views cost no copy; batch dimensions broadcast.

use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;

use super::GRAIN;
use super::simd::{dot, dot4};
use crate::WithDType;

/// One operand: data, per-batch start offsets, and (row, column) strides in elements.
pub(crate) struct Operand<'a> {
    pub data: &'a [f32],
    pub batch_offsets: &'a [usize],
    pub row_stride: usize,
    pub col_stride: usize,
}

/// Batches run in parallel, each product on one thread, when there are at least as many as
/// threads or each is below this many multiply-adds; otherwise they run in turn and gemm
/// spreads each product over the threads.
const PER_MATRIX_PARALLEL: usize = 1 << 21;

/// `out[b] = lhs[b] @ rhs[b]` for every batch `b`, with `lhs[b]: [m, k]`, `rhs[b]: [k, n]`
/// and `out` contiguous `[batch, m, n]`.
pub(crate) fn matmul(lhs: &Operand, rhs: &Operand, m: usize, k: usize, n: usize) -> Vec<f32> {
    let batch = lhs.batch_offsets.len();
    debug_assert_eq!(batch, rhs.batch_offsets.len());
    let total = batch * m * n;
    if m * n == 0 || k == 0 {
        return vec![0f32; total];
    }
    // gemm overwrites the output (beta = 0, read_dst = false): no need to zero it first.
    let mut out: Vec<f32> = Vec::with_capacity(total);
    let one = |dst: &mut [MaybeUninit<f32>], b: usize, par: Parallelism| {
        // SAFETY: `dst` holds m*n elements written row-major with strides (1, n), never read.
        // The operand views were validated against their storage when the tensors' layouts
        // were built: for every i < m, j < n, p < k, offset + i*rs + p*cs (and the rhs
        // analogue) lies inside `data`, which outlives the call.
        unsafe {
            gemm_overwrite(
                (m, n, k),
                (dst.as_mut_ptr() as *mut f32, n, 1),
                (lhs.data.as_ptr().add(lhs.batch_offsets[b]), lhs.row_stride, lhs.col_stride),
                (rhs.data.as_ptr().add(rhs.batch_offsets[b]), rhs.row_stride, rhs.col_stride),
                par,
            )
        }
    };
    let spare = &mut out.spare_capacity_mut()[..total];
    if batch > 1 && (batch >= rayon::current_num_threads() || m * n * k < PER_MATRIX_PARALLEL) {
        spare.par_chunks_mut(m * n).enumerate().for_each(|(b, dst)| one(dst, b, Parallelism::None));
    } else {
        let par = Parallelism::Rayon(rayon::current_num_threads());
        for (b, dst) in spare.chunks_mut(m * n).enumerate() {
            one(dst, b, par);
        }
    }
    // SAFETY: every batch's m*n block was written by gemm above.
    unsafe { out.set_len(total) };
    out
}

/// Rows of `x` up to which `linear` reads each weight row once for all of them (a
/// matrix-vector product: [`gemv`]), memory-bound on the weights. Above it [`linear_tasks`]
/// is faster: on 2 cores at Qwen2.5-0.5B's shapes, with bf16 weights, about equal at 12 rows
/// and 1.2-1.7x faster at 16 (docs/BENCHMARKS.md).
pub(crate) const GEMV_MAX_ROWS: usize = 8;

/// Rows of `x` up to which `linear` with f32 weights runs [`linear_tasks`]; above it one
/// gemm over all of the weights, its threads sharing the work, is as fast or faster.
pub(crate) const TASKS_MAX_ROWS: usize = 128;

/// The same for half-precision weights, whose alternative ([`linear_widening`]) also widens
/// the weights block by block before each gemm: the tasks stay faster up to 256 rows.
pub(crate) const TASKS_MAX_ROWS_HALF: usize = 256;

/// Weights per task of [`linear_tasks`]: 2 MiB of f32, what a core's L2 holds.
const TASK_ELEMS: usize = 1 << 19;

/// Weight rows [`gemv`] takes at a time through every row of `x`.
const GEMV_BLOCK_ROWS: usize = 8;

/// `x @ w^T` for `x: [m, k]` f32 and `w: [n, k]` of any float type, both contiguous, with
/// few rows ([`GEMV_MAX_ROWS`]). Memory-bound on `w`: each weight row is read once, widened
/// in registers, and dotted with every row of `x`; weight rows are split across threads.
pub(crate) fn gemv<T: WithDType>(x: &[f32], w: &[T], m: usize, k: usize, n: usize) -> Vec<f32> {
    // Computed as [n, m] so each task owns a contiguous block, then transposed (m is small).
    let mut out_t = vec![0f32; n * m];
    if k == 0 || m == 0 {
        return out_t;
    }
    // Tasks of about 32k weights: small enough to balance, large enough that rayon's cost
    // per task stays far below the time to stream the rows.
    let rows_per_task = (GRAIN / k).max(4);
    out_t.par_chunks_mut(rows_per_task * m).enumerate().for_each(|(b, out)| {
        let j0 = b * rows_per_task;
        // A few weight rows at a time, each group of four rows of x against all of them, so
        // that both stay in L1 between uses (16 rows of x at k = 896 are 57 KB). The products
        // are the same calls as row by row, so the same bits.
        for (jb, block) in out.chunks_mut(GEMV_BLOCK_ROWS * m).enumerate() {
            let jb0 = j0 + jb * GEMV_BLOCK_ROWS;
            let wr = |jj: usize| &w[(jb0 + jj) * k..(jb0 + jj + 1) * k];
            // Rows of x four at a time: each chunk of a weight row is widened once for four.
            let mut i = 0;
            while i + 4 <= m {
                let xs = [0, 1, 2, 3].map(|r| &x[(i + r) * k..(i + r + 1) * k]);
                for (jj, out_row) in block.chunks_mut(m).enumerate() {
                    out_row[i..i + 4].copy_from_slice(&dot4(xs, wr(jj)));
                }
                i += 4;
            }
            for ii in i..m {
                for (jj, out_row) in block.chunks_mut(m).enumerate() {
                    out_row[ii] = dot(&x[ii * k..(ii + 1) * k], wr(jj));
                }
            }
        }
    });
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; m * n];
    for (j, row) in out_t.chunks(m).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            out[i * n + j] = v;
        }
    }
    out
}

/// `x @ w^T` for `x: [m, k]` f32 and `w: [n, k]` of any float type, both contiguous, with a
/// few dozen rows (batched decoding, short prompts): the weight rows are split into tasks of
/// about [`TASK_ELEMS`], and each task widens its rows into a buffer of its thread's (f32
/// weights are read in place) and runs a single-threaded gemm of all of `x` against them,
/// writing its own columns of the output. Widened rows stay in the core's cache while gemm
/// reads them, and the threads never wait on each other within a call, which a
/// multi-threaded gemm per block of rows does at every block.
///
/// gemm would pack all of `x` again in every task (nine times per call for the down
/// projection's k = 4,864). So the first multiple of [`UNPACKED_ROWS`] rows of `x` is
/// transposed once per call into the column-major layout gemm's kernel reads, and each task
/// multiplies it by at most [`UNPACKED_COLS`] weight rows at a time, which gemm then takes
/// as it is; the remaining rows (fewer than 16) go through gemm's packing, which is cheap
/// for so few.
pub(crate) fn linear_tasks<T: WithDType>(x: &[f32], w: &[T], m: usize, k: usize, n: usize) -> Vec<f32> {
    if k == 0 || m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    // At least four tasks per thread, so that threads finishing early find work.
    let rows = (TASK_ELEMS / k).min(n.div_ceil(4 * rayon::current_num_threads())).max(16);
    let m16 = m - m % UNPACKED_ROWS;
    let xt = super::transpose(&x[..m16 * k], m16, k, k); // [m16, k] in column major
    // Every element is written by exactly one task below, so the output is not zeroed first.
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let dst = OutColumns(out.spare_capacity_mut().as_mut_ptr());
    (0..n.div_ceil(rows)).into_par_iter().for_each(|t| {
        let (j0, r) = (t * rows, rows.min(n - t * rows));
        let ws = &w[j0 * k..(j0 + r) * k];
        let product = |wide: &[f32]| {
            SCRATCH.with_borrow_mut(|block| {
                block.clear();
                block.resize(r * m, 0.0);
                // `block` is [r, m] row-major, written as the [m, r] product in column major
                // (strides (1, m)), which gemm writes faster than rows of `out`. `wide` is
                // [r, k] read as its transpose [k, r] (strides (1, k)).
                let per = r.div_ceil(r.div_ceil(UNPACKED_COLS));
                for c0 in (0..r).step_by(per).filter(|_| m16 > 0) {
                    let c = per.min(r - c0);
                    // SAFETY: rows 0..m16 of columns c0..c0+c of the [m, r] block; `xt` is
                    // [m16, k] in column major (strides (1, m16)); weight rows c0..c0+c.
                    // All in bounds.
                    unsafe {
                        gemm_overwrite(
                            (m16, c, k),
                            (block.as_mut_ptr().add(c0 * m), 1, m),
                            (xt.as_ptr(), 1, m16),
                            (wide.as_ptr().add(c0 * k), 1, k),
                            Parallelism::None,
                        )
                    }
                }
                if m16 < m {
                    // SAFETY: rows m16..m of the block; those rows of x, row-major (strides
                    // (k, 1)). All in bounds.
                    unsafe {
                        gemm_overwrite(
                            (m - m16, r, k),
                            (block.as_mut_ptr().add(m16), 1, m),
                            (x.as_ptr().add(m16 * k), k, 1),
                            (wide.as_ptr(), 1, k),
                            Parallelism::None,
                        )
                    }
                }
                for i in 0..m {
                    // SAFETY: row i's columns j0..j0+r of the [m, n] output, which this task
                    // alone touches.
                    let row = unsafe { dst.slice(i * n + j0, r) };
                    for (j, v) in row.iter_mut().enumerate() {
                        v.write(block[j * m + i]);
                    }
                }
            })
        };
        if T::DTYPE == crate::DType::F32 {
            product(bytemuck::cast_slice(ws));
        } else {
            WIDE.with_borrow_mut(|wide| {
                wide.clear();
                wide.extend(ws.iter().map(|v| v.to_f32()));
                product(wide);
            });
        }
    });
    // SAFETY: the tasks cover columns 0..n of every row, so all m * n elements are written.
    unsafe { out.set_len(m * n) };
    out
}

/// Rows of `x` that [`linear_tasks`] hands gemm unpacked come in multiples of this: gemm
/// packs a column-major operand whose row count is not a multiple of its vector width (8
/// f32 with AVX2, 16 with AVX-512).
const UNPACKED_ROWS: usize = 16;

/// Weight rows (output columns) per gemm call of [`linear_tasks`] on the unpacked rows of
/// `x`: above 8 widths of its 6-column kernels (48, AVX2 and AVX-512 alike) gemm packs the
/// rows of `x` after all.
const UNPACKED_COLS: usize = 48;

thread_local! {
    /// [`linear_tasks`]' widened weights, one buffer per thread, kept between calls: at most
    /// [`TASK_ELEMS`] f32, or 16 weight rows where those are more.
    static WIDE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// [`linear_tasks`]' product of a task, before it goes into its columns of the output.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output of [`linear_tasks`] (and of `dpbf16::linear`), shared by tasks that write
/// disjoint blocks of it.
pub(crate) struct OutColumns(pub(crate) *mut MaybeUninit<f32>);

// SAFETY: every task writes only its own block, and the buffer outlives the parallel loop.
unsafe impl Sync for OutColumns {}

impl OutColumns {
    /// `len` values of the buffer from `offset`.
    ///
    /// # Safety
    /// The range lies inside the buffer, and nothing else reads or writes it while the slice
    /// lives.
    #[allow(clippy::mut_from_ref)] // disjoint ranges of a buffer shared by tasks
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [MaybeUninit<f32>] {
        // SAFETY: forwarded from the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

/// `x @ w^T` for `x: [m, k]` f32 and `w: [n, k]` of a half type, both contiguous: blocks of
/// weight rows are widened to f32 (small enough to stay in cache) and multiplied by gemm,
/// so no f32 copy of the whole weight is ever made.
pub(crate) fn linear_widening<T: WithDType>(x: &[f32], w: &[T], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    if k == 0 || m == 0 || n == 0 {
        return out;
    }
    // At least 512 weight rows per gemm call: fewer make a wide k (the down projection's
    // 4,864) slow, 2x at 128 rows of x; 4 MiB of f32 at k = 896.
    let block = ((1 << 20) / k).max(512).min(n);
    let mut wide = vec![0f32; block * k];
    let par = Parallelism::Rayon(rayon::current_num_threads());
    for j0 in (0..n).step_by(block) {
        let rows = block.min(n - j0);
        let wide = &mut wide[..rows * k];
        wide.par_chunks_mut(GRAIN).zip(w[j0 * k..(j0 + rows) * k].par_chunks(GRAIN)).for_each(|(d, s)| {
            for (d, &s) in d.iter_mut().zip(s) {
                *d = s.to_f32();
            }
        });
        // SAFETY: out is [m, n] row-major; the block writes columns j0..j0+rows of every
        // row (strides (n, 1) from column j0). x is [m, k] (strides (k, 1)); `wide` is
        // [rows, k] read as its transpose [k, rows] (strides (1, k)). All in bounds.
        unsafe {
            gemm_overwrite(
                (m, rows, k),
                (out.as_mut_ptr().add(j0), n, 1),
                (x.as_ptr(), k, 1),
                (wide.as_ptr(), 1, k),
                par,
            )
        }
    }
    out
}

/// `dst = lhs @ rhs` for `dst: [m, n]`, `lhs: [m, k]` and `rhs: [k, n]`, each given as
/// (pointer, row stride, column stride); `dst` is written and never read.
///
/// # Safety
/// Every element the strides address must lie inside its allocation, for `dst` writable.
unsafe fn gemm_overwrite(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    par: Parallelism,
) {
    // SAFETY: forwarded from the caller. alpha = 0 and read_dst = false: dst is only written.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            false,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}
