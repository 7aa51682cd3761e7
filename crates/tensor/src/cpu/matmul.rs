//! Matrix products on the `gemm` crate. Operands are read through their strides, so
//! transposed and sliced views cost no copy; batch dimensions broadcast.

use gemm::Parallelism;
use rayon::prelude::*;

/// One operand: data, per-batch start offsets, and (row, column) strides in elements.
pub(crate) struct Operand<'a> {
    pub data: &'a [f32],
    pub batch_offsets: &'a [usize],
    pub row_stride: usize,
    pub col_stride: usize,
}

/// Below this many multiply-adds per matrix, batches run in parallel, each product on one
/// thread; above it, batches run in turn and gemm spreads each product over the threads.
const PER_MATRIX_PARALLEL: usize = 1 << 21;

/// `out[b] = lhs[b] @ rhs[b]` for every batch `b`, with `lhs[b]: [m, k]`, `rhs[b]: [k, n]`
/// and `out` contiguous `[batch, m, n]`.
pub(crate) fn matmul(lhs: &Operand, rhs: &Operand, m: usize, k: usize, n: usize) -> Vec<f32> {
    let batch = lhs.batch_offsets.len();
    debug_assert_eq!(batch, rhs.batch_offsets.len());
    let mut out = vec![0f32; batch * m * n];
    if m * n == 0 || k == 0 {
        return out;
    }
    let one = |dst: &mut [f32], b: usize, par: Parallelism| {
        // SAFETY: `dst` holds m*n elements written row-major with strides (1, n). The
        // operand views were validated against their storage when the tensors' layouts were
        // built: for every i < m, j < n, p < k, offset + i*rs + p*cs (and the rhs analogue)
        // lies inside `data`, which outlives the call.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.data.as_ptr().add(lhs.batch_offsets[b]),
                lhs.col_stride as isize,
                lhs.row_stride as isize,
                rhs.data.as_ptr().add(rhs.batch_offsets[b]),
                rhs.col_stride as isize,
                rhs.row_stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    };
    if batch > 1 && m * n * k < PER_MATRIX_PARALLEL {
        out.par_chunks_mut(m * n).enumerate().for_each(|(b, dst)| one(dst, b, Parallelism::None));
    } else {
        let par = Parallelism::Rayon(rayon::current_num_threads());
        for (b, dst) in out.chunks_mut(m * n).enumerate() {
            one(dst, b, par);
        }
    }
    out
}
