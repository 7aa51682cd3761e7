//! `x @ w^T` with bf16 weights and the activations rounded to bf16, products summed in f32
//! (`Tensor::linear_in` with `compute = BF16`, what autocast runs), on the AVX512-BF16 dot
//! products of recent x86 CPUs (Zen 4 and later, Cooper Lake, Sapphire Rapids and later).
//!
//! `vdpbf16ps` multiplies 16 pairs of bf16 by 16 pairs and adds both products to 16 f32
//! accumulators: twice the multiply-adds of an f32 FMA per instruction, from half the
//! bytes. The kernel keeps 32 rows of `x` in the lanes of two vectors and broadcasts one
//! pair of a weight row at a time, read in place from the checkpoint's row-major `[n, k]`
//! (no copy or packing of the weights); only `x` is rounded and packed, once per call, into
//! blocks of 32 (or 16) rows laid out pair by pair. The accumulators hold columns of the
//! output; they reach its rows through 16 x 16 tiles transposed in registers. 2-D products
//! of bf16 matrices (`matmul_f32`, the backward of `linear_in`) use the same kernel once
//! their operands are in these layouts (`cpu::transpose`).
//!
//! The products of bf16 values are exact in f32, so results differ from the rounded
//! operands' f32 product (`linear` on the widened values) only in the order of the sums,
//! except that `vdpbf16ps` reads subnormal inputs as zero and flushes subnormal results
//! (below 1.2e-38).

use half::bf16;
use rayon::prelude::*;

use super::matmul::OutColumns;

/// Pairs of `k` per pass over a block of rows: a block's 128 pairs of 32 rows (16 KiB) and
/// 12 weight rows' 128 pairs (6 KiB) stay in L1 while the kernel reads them.
const KC: usize = 128;

/// Weight rows (output columns) per kernel call: 12 x 2 accumulators of 16 lanes, two
/// vectors of `x` and a broadcast, 27 of the 32 vector registers.
const NR: usize = 12;

/// Rows of `x` per block: two vectors of 16 lanes (one where 16 or fewer rows are left).
const BLOCK_ROWS: usize = 32;

/// At most this many weight rows per task (20 kernel calls' columns).
const TASK_MAX_ROWS: usize = 20 * NR;

/// At most this many blocks of rows (256 rows) per task: its output, at most 240 KiB, stays
/// in the core's L2 while the kernel adds to it pass after pass of `k`.
const CHUNK_BLOCKS: usize = 8;

/// Whether [`linear`] runs here: an x86-64 CPU with AVX-512F and AVX512-BF16, unless the
/// environment sets `ARTIST_CPU_DPBF16=0` (to compare against the widening path).
pub(crate) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let wanted = std::env::var("ARTIST_CPU_DPBF16").map(|v| v != "0").unwrap_or(true);
        wanted && detected()
    })
}

#[cfg(target_arch = "x86_64")]
fn detected() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> bool {
    false
}

/// An activation that [`linear`] rounds to bf16: f32 (rounded to nearest even, as
/// `to_dtype` does) or bf16 (as it is).
pub(crate) trait ToBf16Bits: Copy + Send + Sync {
    fn bf16_bits(self) -> u16;
}

impl ToBf16Bits for f32 {
    #[inline]
    fn bf16_bits(self) -> u16 {
        bf16::from_f32(self).to_bits()
    }
}

impl ToBf16Bits for bf16 {
    #[inline]
    fn bf16_bits(self) -> u16 {
        self.to_bits()
    }
}

/// `x @ w^T` for `x: [m, k]` (rounded to bf16) and `w: [n, k]` bf16, both contiguous, into
/// a row-major `[m, n]` f32. `None` where the kernel does not run: no AVX512-BF16 (see
/// [`available`]) or an odd `k` (pairs of a weight row must not straddle two rows).
pub(crate) fn linear<X: ToBf16Bits>(x: &[X], w: &[bf16], m: usize, k: usize, n: usize) -> Option<Vec<f32>> {
    if !available() || !k.is_multiple_of(2) {
        return None;
    }
    debug_assert!(x.len() >= m * k && w.len() >= n * k);
    if m == 0 || n == 0 || k == 0 {
        return Some(vec![0f32; m * n]);
    }
    let kp = k / 2;
    let blocks = row_blocks(m, kp);
    let xa = pack_rows(x, m, k, &blocks);
    // Tasks of whole kernel calls' columns, at least four per thread, and of at most
    // `CHUNK_BLOCKS` blocks of rows (so that a task's output stays in its core's L2).
    let per = n.div_ceil(4 * rayon::current_num_threads()).div_ceil(NR) * NR;
    let rows = per.clamp(NR, TASK_MAX_ROWS);
    let chunks = blocks.len().div_ceil(CHUNK_BLOCKS);
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let dst = OutColumns(out.spare_capacity_mut().as_mut_ptr());
    // Task t: weight rows of column task t / chunks, blocks of chunk t % chunks; a thread's
    // run of tasks goes through the row chunks of the same weight rows.
    (0..n.div_ceil(rows) * chunks).into_par_iter().for_each(|t| {
        let (j0, r) = (t / chunks * rows, rows.min(n - t / chunks * rows));
        let chunk = &blocks[t % chunks * CHUNK_BLOCKS..((t % chunks + 1) * CHUNK_BLOCKS).min(blocks.len())];
        let (row0, m_pad) = (chunk[0].row0, chunk.iter().map(|b| b.width).sum::<usize>());
        // Pair p of weight row j is the u32 at j * kp + p (k is even, so rows start on pairs).
        let wp = w.as_ptr() as *const u32;
        SCRATCH.with_borrow_mut(|ct| {
            // `ct` is [r, m_pad]: column j of the task's output, all its rows, contiguous.
            // Not cleared: the first pass over `k` overwrites every value the task reads.
            if ct.len() < r * m_pad {
                ct.resize(r * m_pad, 0.0);
            }
            for kb in (0..kp).step_by(KC) {
                let steps = KC.min(kp - kb);
                for jb in (0..r).step_by(NR) {
                    let cols = NR.min(r - jb);
                    // Columns past `cols` read the last real one again; never stored.
                    // SAFETY: weight rows j0+jb..j0+jb+cols < n, pairs kb..kb+steps <= kp.
                    let b: [*const u32; NR] =
                        std::array::from_fn(|c| unsafe { wp.add((j0 + jb + c.min(cols - 1)) * kp + kb) });
                    for blk in chunk {
                        // SAFETY: the block's pairs kb..kb+steps lie in `xa`; its columns
                        // jb..jb+cols and rows lie in `ct`; the CPU has AVX-512F and
                        // AVX512-BF16 (`available`).
                        unsafe {
                            let call = KernelCall {
                                steps,
                                a: xa.as_ptr().add(blk.offset + kb * blk.width),
                                b,
                                c: ct.as_mut_ptr().add(jb * m_pad + blk.row0 - row0),
                                ldc: m_pad,
                                cols,
                                accumulate: kb > 0,
                            };
                            kernel_for(blk.width, &call);
                        }
                    }
                }
            }
            // Into the output by tiles of 16 rows x 16 columns, transposed in registers;
            // the edges value by value.
            let rows_here = m_pad.min(m - row0);
            for i0 in (0..rows_here).step_by(16) {
                let h = 16.min(rows_here - i0);
                for jc in (0..r).step_by(16) {
                    let wdt = 16.min(r - jc);
                    if h == 16 && wdt == 16 {
                        // SAFETY: columns jc..jc+16 of `ct` hold rows i0..i0+16 at
                        // j * m_pad + i0; the 16 output rows' columns j0+jc..j0+jc+16 are this
                        // task's alone; AVX-512F is present (`available`).
                        unsafe {
                            let out_rows: [*mut f32; 16] = std::array::from_fn(|ii| {
                                dst.slice((row0 + i0 + ii) * n + j0 + jc, 16).as_mut_ptr() as *mut f32
                            });
                            store_transposed(ct.as_ptr().add(jc * m_pad + i0), m_pad, out_rows);
                        }
                        continue;
                    }
                    for ii in 0..h {
                        // SAFETY: as above, `wdt` columns.
                        let row = unsafe { dst.slice((row0 + i0 + ii) * n + j0 + jc, wdt) };
                        for (j, v) in row.iter_mut().enumerate() {
                            v.write(ct[(jc + j) * m_pad + i0 + ii]);
                        }
                    }
                }
            }
        })
    });
    // SAFETY: the tasks cover columns 0..n of every row, so all m * n elements are written.
    unsafe { out.set_len(m * n) };
    Some(out)
}

thread_local! {
    /// A task's output of [`linear`], column by column, kept between calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A block of rows of `x` as [`pack_rows`] lays it out.
struct RowBlock {
    /// Its first row.
    row0: usize,
    /// Lanes per pair: 32, or 16 for a last block of at most 16 rows.
    width: usize,
    /// Where its `[k / 2, width]` pairs start in the packed buffer.
    offset: usize,
}

/// Blocks of 32 rows of `m`, the last of 16 where at most 16 are left, for `kp` pairs.
fn row_blocks(m: usize, kp: usize) -> Vec<RowBlock> {
    let mut blocks = Vec::with_capacity(m.div_ceil(BLOCK_ROWS));
    let mut row0 = 0;
    while row0 < m {
        let width = if m - row0 <= 16 { 16 } else { BLOCK_ROWS };
        blocks.push(RowBlock { row0, width, offset: row0 * kp });
        row0 += width;
    }
    blocks
}

/// `x` rounded to bf16 and packed block by block: pair `p` of row `row0 + l` of a block at
/// `offset + p * width + l`, as one `u32` (the even element in the low half, as `vdpbf16ps`
/// pairs them); rows past `m` are zero.
fn pack_rows<X: ToBf16Bits>(x: &[X], m: usize, k: usize, blocks: &[RowBlock]) -> Vec<u32> {
    let kp = k / 2;
    let mut xa = vec![0u32; blocks.iter().map(|b| b.width * kp).sum()];
    let mut rest = &mut xa[..];
    let mut parts = Vec::with_capacity(blocks.len());
    for b in blocks {
        let (part, tail) = rest.split_at_mut(b.width * kp);
        parts.push((b, part));
        rest = tail;
    }
    parts.into_par_iter().for_each(|(b, part)| {
        for l in 0..b.width.min(m - b.row0) {
            let row = &x[(b.row0 + l) * k..(b.row0 + l + 1) * k];
            for (p, pair) in row.chunks_exact(2).enumerate() {
                part[p * b.width + l] = pair[0].bf16_bits() as u32 | (pair[1].bf16_bits() as u32) << 16;
            }
        }
    });
    xa
}

/// One call of the kernel: `c[j * ldc + l] (+)= sum over p < steps of a[p * 16V + l] .
/// b[j][p]` for `j < cols` and `l < 16V` (`V` vectors of rows), each term a pair of bf16
/// products. With `accumulate`, adds to what `c` holds; otherwise overwrites it.
#[derive(Clone, Copy)]
struct KernelCall {
    steps: usize,
    /// `steps * 16V` packed pairs of `x`.
    a: *const u32,
    /// `NR` weight rows' pairs, `steps` from each (any alignment).
    b: [*const u32; NR],
    /// Columns `0..cols` of `16V` values at stride `ldc`.
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
}

/// `call` for a block of `width` rows (32 or 16).
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16, and `call`'s pointers hold what its fields say.
#[inline]
unsafe fn kernel_for(width: usize, call: &KernelCall) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from the caller.
    unsafe {
        if width == BLOCK_ROWS { x86::kernel::<2>(call) } else { x86::kernel::<1>(call) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (width, call);
        unreachable!("`available` is false off x86-64");
    }
}

/// `rows[i][j] = src[j * ld + i]` for a 16 x 16 tile.
///
/// # Safety
/// AVX-512F is present; `src` holds 16 columns of 16 values at stride `ld`; each of `rows`
/// 16 writable values.
#[inline]
unsafe fn store_transposed(src: *const f32, ld: usize, rows: [*mut f32; 16]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from the caller.
    unsafe {
        x86::store_transposed(src, ld, rows)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (src, ld, rows);
        unreachable!("`available` is false off x86-64");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{KernelCall, NR};

    /// `call` with `V` vectors of 16 rows against `NR` weight rows (`vdpbf16ps`),
    /// accumulators in registers.
    ///
    /// # Safety
    /// As `super::kernel_for`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn kernel<const V: usize>(call: &KernelCall) {
        let KernelCall { steps, a, b, c, ldc, cols, accumulate } = *call;
        let mut acc = [[_mm512_setzero_ps(); NR]; V];
        // SAFETY: every read below is in the bounds the caller guarantees.
        unsafe {
            for p in 0..steps {
                let mut av = [_mm512_setzero_si512(); V];
                for (v, av) in av.iter_mut().enumerate() {
                    *av = _mm512_loadu_si512(a.add((p * V + v) * 16) as *const _);
                }
                for j in 0..NR {
                    let bv = _mm512_set1_epi32(b[j].add(p).read_unaligned() as i32);
                    for v in 0..V {
                        acc[v][j] = _mm512_dpbf16_ps(acc[v][j], bh(av[v]), bh(bv));
                    }
                }
            }
            for j in 0..cols.min(NR) {
                for (v, acc) in acc.iter().enumerate() {
                    let dst = c.add(j * ldc + v * 16);
                    let sum = if accumulate { _mm512_add_ps(_mm512_loadu_ps(dst), acc[j]) } else { acc[j] };
                    _mm512_storeu_ps(dst, sum);
                }
            }
        }
    }

    /// `rows[i][j] = src[j * ld + i]` for a 16 x 16 tile: 16 column vectors transposed in
    /// registers (pairs, quads, then 128- and 256-bit lanes interleaved) into 16 row vectors.
    ///
    /// # Safety
    /// As `super::store_transposed`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store_transposed(src: *const f32, ld: usize, rows: [*mut f32; 16]) {
        // SAFETY: the reads and writes are in the bounds the caller guarantees.
        unsafe {
            let mut c = [_mm512_setzero_ps(); 16];
            for (j, c) in c.iter_mut().enumerate() {
                *c = _mm512_loadu_ps(src.add(j * ld));
            }
            // Stage 1: 32-bit elements of column pairs (2j, 2j+1) interleaved.
            let mut t = [_mm512_setzero_ps(); 16];
            for j in 0..8 {
                t[2 * j] = _mm512_unpacklo_ps(c[2 * j], c[2 * j + 1]);
                t[2 * j + 1] = _mm512_unpackhi_ps(c[2 * j], c[2 * j + 1]);
            }
            // Stage 2: 64-bit elements of the pairs of pairs.
            for q in 0..4 {
                let (a, b, x, y) = (t[4 * q], t[4 * q + 2], t[4 * q + 1], t[4 * q + 3]);
                c[4 * q] = pd(_mm512_unpacklo_pd(ps(a), ps(b)));
                c[4 * q + 1] = pd(_mm512_unpackhi_pd(ps(a), ps(b)));
                c[4 * q + 2] = pd(_mm512_unpacklo_pd(ps(x), ps(y)));
                c[4 * q + 3] = pd(_mm512_unpackhi_pd(ps(x), ps(y)));
            }
            // Stages 3 and 4: 128-bit lanes across groups of four columns.
            for q in 0..4 {
                t[q] = _mm512_shuffle_f32x4::<0x88>(c[q], c[q + 4]);
                t[q + 4] = _mm512_shuffle_f32x4::<0xdd>(c[q], c[q + 4]);
                t[q + 8] = _mm512_shuffle_f32x4::<0x88>(c[q + 8], c[q + 12]);
                t[q + 12] = _mm512_shuffle_f32x4::<0xdd>(c[q + 8], c[q + 12]);
            }
            for q in 0..8 {
                c[q] = _mm512_shuffle_f32x4::<0x88>(t[q], t[q + 8]);
                c[q + 8] = _mm512_shuffle_f32x4::<0xdd>(t[q], t[q + 8]);
            }
            for (i, row) in rows.iter().enumerate() {
                _mm512_storeu_ps(*row, c[i]);
            }
        }
    }

    /// The same 512 bits as 8 f64.
    #[inline(always)]
    fn ps(v: __m512) -> __m512d {
        // SAFETY: both are 64 bytes of plain data.
        unsafe { std::mem::transmute::<__m512, __m512d>(v) }
    }

    /// The same 512 bits as 16 f32.
    #[inline(always)]
    fn pd(v: __m512d) -> __m512 {
        // SAFETY: both are 64 bytes of plain data.
        unsafe { std::mem::transmute::<__m512d, __m512>(v) }
    }

    /// The same 512 bits as 32 bf16.
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 64 bytes of plain data; every bit pattern is a valid bf16 vector.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use half::bf16;

    /// A deterministic spread of values in about [-2, 2].
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// A kernel of `x @ w^T` with `x` rounded to bf16, for f32 and for bf16 activations.
    pub(crate) type Products<'a> = (
        &'a dyn Fn(&[f32], &[bf16], usize, usize, usize) -> Option<Vec<f32>>,
        &'a dyn Fn(&[bf16], &[bf16], usize, usize, usize) -> Option<Vec<f32>>,
    );

    /// `linear` at each `(m, k, n)` against f64 sums of the bf16-rounded operands: every
    /// result within the worst case of `k` f32 additions of those products,
    /// `k * eps * sum |x_p w_p|`; bf16 activations give the bits of the f32 ones they round.
    pub(crate) fn check_rounded_products(shapes: &[(usize, usize, usize)], (linear, linear_bf16): Products) {
        for &(m, k, n) in shapes {
            let x = values(m * k, 1 + m as u64);
            let w: Vec<bf16> = values(n * k, 2 + n as u64).into_iter().map(bf16::from_f32).collect();
            let y = linear(&x, &w, m, k, n).unwrap_or_else(|| panic!("({m}, {k}, {n}) did not run"));
            let xb: Vec<f64> = x.iter().map(|&v| bf16::from_f32(v).to_f64()).collect();
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut abs) = (0f64, 0f64);
                    for p in 0..k {
                        let t = xb[i * k + p] * w[j * k + p].to_f64();
                        exact += t;
                        abs += t.abs();
                    }
                    let got = y[i * n + j] as f64;
                    let bound = k as f64 * f32::EPSILON as f64 * abs + 1e-30;
                    assert!(
                        (got - exact).abs() <= bound,
                        "({m}, {k}, {n}) [{i}, {j}]: {got} vs {exact} (bound {bound})"
                    );
                }
            }
            let xh: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            assert_eq!(linear_bf16(&xh, &w, m, k, n).unwrap(), y, "({m}, {k}, {n}): bf16 activations");
        }
    }

    #[test]
    fn products_of_rounded_operands_summed_in_f32() {
        if !super::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16 (or ARTIST_CPU_DPBF16=0)");
            return;
        }
        // Rows across one and several blocks of 32 and a last block of 16; weight rows
        // across one and several kernel calls and tasks; k across one and several passes;
        // rows across two chunks of tasks (256 rows each).
        let shapes =
            [(9, 2, 1), (16, 30, 13), (17, 256, 12), (33, 258, 25), (48, 896, 100), (70, 1000, 300), (300, 64, 30)];
        check_rounded_products(
            &shapes,
            (&|x, w, m, k, n| super::linear(x, w, m, k, n), &|x, w, m, k, n| super::linear(x, w, m, k, n)),
        );
        assert!(super::linear(&[0f32; 9 * 3], &[bf16::ZERO; 3], 9, 3, 1).is_none(), "odd k");
    }

    #[test]
    fn a_tile_transposed_in_registers() {
        if !super::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16 (or ARTIST_CPU_DPBF16=0)");
            return;
        }
        let ld = 19;
        let src: Vec<f32> = (0..16 * ld).map(|v| v as f32).collect();
        let mut out = vec![-1f32; 16 * 20];
        let rows: [*mut f32; 16] = std::array::from_fn(|i| out[i * 20 + 2..].as_mut_ptr());
        // SAFETY: 16 columns of 16 at stride 19 in `src`; 16 values from each row pointer.
        unsafe { super::store_transposed(src.as_ptr(), ld, rows) };
        for i in 0..16 {
            for j in 0..20 {
                let want = if (2..18).contains(&j) { src[(j - 2) * ld + i] } else { -1.0 };
                assert_eq!(out[i * 20 + j], want, "[{i}, {j}]");
            }
        }
    }

    #[test]
    fn transpose_of_a_strided_matrix() {
        for &(rows, cols, stride) in &[(1, 1, 1), (3, 5, 7), (33, 70, 70), (64, 31, 40), (100, 65, 65)] {
            let src: Vec<u32> = (0..(rows - 1) * stride + cols).map(|v| v as u32).collect();
            let t = crate::cpu::transpose(&src, rows, cols, stride);
            for j in 0..cols {
                for i in 0..rows {
                    assert_eq!(t[j * rows + i], src[i * stride + j], "({rows}, {cols}, {stride}) [{j}, {i}]");
                }
            }
        }
    }
}
