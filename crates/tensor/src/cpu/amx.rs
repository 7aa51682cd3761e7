//! `x @ w^T` with bf16 weights and the activations rounded to bf16, products summed in f32,
//! on the AMX tiles of Intel CPUs from Sapphire Rapids on (`tdpbf16ps`): what PyTorch's
//! oneDNN runs for a bf16 model there. Where AMX runs, the bf16 products of
//! `Tensor::linear_in` (and the backward products that reach [`super::dpbf16`]) come here
//! first, from [`MIN_ROWS`] (9) rows up: fewer take the matrix-vector path.
//!
//! A tile is 16 rows of 64 bytes. `tdpbf16ps` adds to a 16 x 16 f32 tile the products of a
//! 16 x 32 bf16 tile of `x` and a 32 x 16 one of `w^T` laid out pair by pair (row `p`
//! holds, for each of 16 columns, the pair `k = 2p, 2p + 1`): 16,384 multiply-adds in one
//! instruction, against 32 for an f32 FMA of 16 lanes, so on Sapphire Rapids (where
//! `vdpbf16ps` issues at half an FMA's rate and gains nothing over f32) this is the only
//! way the bf16 products run faster than widened ones.
//!
//! The kernel keeps a 32 x 32 block of the output in four accumulator tiles, loads two
//! tiles of `x` and two of `w` per 32 terms of the sum, and stores the block straight into
//! the output when the sum is done. `x` is packed once per call, rounded to bf16 row-major
//! with rows and the sum's length padded with zeros (to 32). Each task packs the weights of
//! its own 32 output columns into their pair-by-pair tiles (two panels of 16 columns by the
//! whole sum, 57 KiB at 896 terms: a 16 x 16 transpose of u32 pairs in AVX-512 registers),
//! so the packed weights never leave the core's caches, and runs them against every 32 rows
//! of its range of `x`. The whole sum runs in the tiles: splitting it in chunks, to keep the
//! packed weights in L1, stored and reloaded the accumulators and ran slower.

//! Linux hands a process the tiles' 8 KiB of state only when asked
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), which [`available`] does once.
//! Each task loads its tile configuration (`ldtilecfg`) and releases the tiles when done.
//! Like `vdpbf16ps`, `tdpbf16ps` reads subnormal inputs as zero and flushes subnormal
//! results; the products of bf16 values are exact in f32, so results differ from the
//! rounded operands' f32 product only in the order of the sums.

use half::bf16;
use rayon::prelude::*;

use super::dpbf16::ToBf16Bits;

/// Fewer rows than this stay off the tiles. Above the matrix-vector path's 8 rows (bound by
/// reading the weights, whichever kernel multiplies) the tiles win from the first row: at
/// Qwen2.5-0.5B's shapes 9 rows ran at 103-177 GFLOP/s on them against 81-92 on AVX512-BF16
/// (docs/BENCHMARKS.md).
pub(crate) const MIN_ROWS: usize = 9;

/// Rows of `x` per task at most: 512 rows of Qwen2.5-0.5B's hidden size are 896 KiB of
/// bf16, which stay in a core's L2 while its tasks run through the weights.
const RANGE_ROWS: usize = 512;

/// The most packed `x` a thread keeps between calls.
const KEEP_BYTES: usize = 64 << 20;

/// Whether [`linear`] runs here: an x86-64 Linux with AMX-BF16, the tiles enabled by the
/// OS and granted to this process, unless the environment sets `ARTIST_CPU_AMX=0` (to
/// compare against the AVX512-BF16 kernel).
pub(crate) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let wanted = std::env::var("ARTIST_CPU_AMX").map(|v| v != "0").unwrap_or(true);
        // AVX-512F packs the weights (every AMX CPU has it).
        wanted && imp::detected() && super::simd::avx512f() && imp::request_permission()
    })
}

/// `x @ w^T` for `x: [m, k]` (rounded to bf16) and `w: [n, k]` bf16, both contiguous, into
/// a row-major `[m, n]` f32. `None` where the tiles do not run: no AMX (see [`available`])
/// or fewer than [`MIN_ROWS`] rows.
pub(crate) fn linear<X: ToBf16Bits>(x: &[X], w: &[bf16], m: usize, k: usize, n: usize) -> Option<Vec<f32>> {
    if m < MIN_ROWS || n == 0 || k == 0 || !available() {
        return None;
    }
    debug_assert!(x.len() >= m * k && w.len() >= n * k);
    let kk = k.div_ceil(32) * 32; // the sum's length, padded
    let (m_pad, n_pad) = (m.div_ceil(32) * 32, n.div_ceil(32) * 32);
    // x: [m_pad, kk] bf16 bits, zeros past row m and column k, in a buffer kept from call to
    // call (taken out of the thread's slot, so a call nested in another's wait allocates
    // its own), every value rewritten.
    let mut xa = PACKED_X.with_borrow_mut(std::mem::take);
    xa.resize(m_pad * kk, 0);
    xa.par_chunks_mut(kk).enumerate().for_each(|(i, row)| {
        let src = if i < m { &x[i * k..(i + 1) * k] } else { &x[..0] };
        for (d, s) in row.iter_mut().zip(src) {
            *d = s.bf16_bits();
        }
        row[src.len()..].fill(0);
    });
    // The tiles write whole 32 x 32 blocks: into the output itself (its capacity holding
    // m_pad rows) where n is a multiple of 32, else into a padded one copied out after.
    let mut out: Vec<f32> = Vec::with_capacity(m_pad * n_pad);
    let dst = Out(out.as_mut_ptr());
    // Task t: 32 output columns (block t % blocks_n) of a range of rows (t / blocks_n): it
    // packs its two panels of weights (32 columns by the whole sum, 57 KiB at 896 terms)
    // once, and runs them against every 32 rows of its range, the panels from L1 and L2,
    // the rows from L2. Rows split into ranges of at most RANGE_ROWS, and into as many as
    // it takes for 4 tasks a thread (each range packs the weights again, so no more); range
    // by range, so that a thread's run of tasks shares its rows of `x`.
    let (blocks_m, blocks_n) = (m_pad / 32, n_pad / 32);
    let ranges = (4 * rayon::current_num_threads()).div_ceil(blocks_n).max(m_pad.div_ceil(RANGE_ROWS)).min(blocks_m);
    let range_blocks = blocks_m.div_ceil(ranges);
    let ranges = blocks_m.div_ceil(range_blocks);
    (0..blocks_n * ranges).into_par_iter().for_each(|t| {
        let (c0, rb0) = (t % blocks_n * 32, t / blocks_n * range_blocks * 32);
        let rows = (range_blocks * 32).min(m_pad - rb0);
        PACKED_W.with_borrow_mut(|wb| {
            pack_w(w, k, n, c0, kk, wb);
            // SAFETY: the CPU has AMX-BF16 with the tiles granted (`available`); every tile
            // read lies inside `xa` (rows rb0..rb0 + rows of m_pad, kk terms) or `wb` (two
            // panels of kk / 2 pairs); every tile written lies inside the output's m_pad
            // rows of n_pad columns, in this task's rows and columns.
            unsafe {
                imp::configure();
                for rb in (rb0..rb0 + rows).step_by(32) {
                    imp::block(xa.as_ptr().add(rb * kk), wb.as_ptr() as *const u16, kk, dst.at(rb * n_pad + c0), n_pad);
                }
                imp::release();
            }
        });
    });
    if n_pad != n {
        // SAFETY: the tasks wrote every value of the m_pad x n_pad buffer; rows move down
        // in place (row i's n values to i * n, never past where row i starts).
        unsafe {
            for i in 0..m {
                std::ptr::copy(out.as_ptr().add(i * n_pad), out.as_mut_ptr().add(i * n), n);
            }
        }
    }
    // SAFETY: the tasks wrote every row below m of every column below n.
    unsafe { out.set_len(m * n) };
    if xa.capacity() * 2 <= KEEP_BYTES {
        PACKED_X.with_borrow_mut(|slot| *slot = xa);
    }
    Some(out)
}

/// `steps` rounds of the kernel's inner step on every thread it is called from: two tiles of
/// each operand loaded from L1 and four `tdpbf16ps` (65,536 FLOP a round), for benchmarks
/// that measure the tiles' own limit. Returns one of the sums (so the work is kept), or
/// `None` where the tiles do not run.
pub(crate) fn peak(steps: usize) -> Option<f32> {
    if !available() {
        return None;
    }
    // Four 1 KiB tiles of bf16 ones.
    let tiles = vec![0x3f80u16; 4 * 512];
    // SAFETY: AMX present and granted (`available`); the four tiles lie in `tiles`.
    Some(unsafe { imp::peak(tiles.as_ptr(), steps) })
}

/// Packs columns `c0..c0 + 32` of `w^T` into two panels of `[kk / 2 pairs][16 columns]`
/// (u32: the two bf16 of terms 2p, 2p + 1), zeros past column n and term k.
fn pack_w(w: &[bf16], k: usize, n: usize, c0: usize, kk: usize, wb: &mut Vec<u32>) {
    let pairs = kk / 2;
    wb.resize(32 * pairs, 0);
    for (panel, p) in wb.chunks_exact_mut(16 * pairs).enumerate() {
        // Columns past n read as empty rows, so as zeros.
        let rows: [&[bf16]; 16] = std::array::from_fn(|col| {
            let j = c0 + panel * 16 + col;
            if j < n { &w[j * k..(j + 1) * k] } else { &[] }
        });
        // The whole 32-term groups of full rows transposed 16 x 16 pairs at a time, the
        // rest (terms past the last whole group, columns past n) value by value.
        let whole = if rows.iter().all(|r| r.len() == k) { k / 32 * 32 } else { 0 };
        // SAFETY: AVX-512F is present where AMX is (`available`); 16 rows of at least
        // `whole` values in, `8 * whole` pairs out.
        unsafe { imp::transpose_pairs(&rows, whole, &mut p[..8 * whole]) };
        for (q, dst) in p.chunks_exact_mut(16).enumerate().skip(whole / 2) {
            for (d, r) in dst.iter_mut().zip(&rows) {
                let lo = r.get(2 * q).map_or(0, |v| v.to_bits() as u32);
                *d = lo | r.get(2 * q + 1).map_or(0, |v| (v.to_bits() as u32) << 16);
            }
        }
    }
}

thread_local! {
    /// The packed `x` of the thread's last call, for the next to reuse.
    static PACKED_X: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A task's packed weights.
    static PACKED_W: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output, shared by tasks that write disjoint blocks of it.
struct Out(*mut f32);

// SAFETY: every task writes only its own rows of its own columns, and the buffer outlives
// the parallel loop.
unsafe impl Sync for Out {}

impl Out {
    /// The value at `offset` (a method, so that closures capture the whole `Sync` wrapper).
    ///
    /// # Safety
    /// `offset` lies inside the buffer.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::arch::asm;

    /// Palette 1, tiles 0-7 each 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    static CONFIG: TileConfig = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// CPUID says AMX-TILE and AMX-BF16, and the OS saves the tile state (XCR0 bits 17, 18).
    pub(super) fn detected() -> bool {
        use std::arch::x86_64::__cpuid_count;
        // Leaf 7 only where leaf 0 says it exists.
        if __cpuid_count(0, 0).eax < 7 {
            return false;
        }
        let (l1, l7) = (__cpuid_count(1, 0), __cpuid_count(7, 0));
        let (amx_bf16, amx_tile, osxsave) = ((l7.edx >> 22) & 1, (l7.edx >> 24) & 1, (l1.ecx >> 27) & 1);
        if amx_bf16 & amx_tile & osxsave == 0 {
            return false;
        }
        let (lo, _hi): (u32, u32);
        // SAFETY: XGETBV with ECX = 0 is valid where CPUID reports OSXSAVE.
        unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") _hi, options(nomem, nostack)) };
        (lo >> 17) & 3 == 3
    }

    /// Asks Linux for the tile data state (`ARCH_REQ_XCOMP_PERM`); false where refused
    /// (kernels before 5.16, or a seccomp policy).
    pub(super) fn request_permission() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes the process's permissions.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    /// The first `terms` (a multiple of 32) bf16 of 16 weight rows into a panel of
    /// `[terms / 2][16]` pairs: a transpose of the rows read as u32, 16 x 16 at a time.
    ///
    /// # Safety
    /// AVX-512F is present; every row holds `terms` values or more, `out` `8 * terms`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_pairs(rows: &[&[half::bf16]; 16], terms: usize, out: &mut [u32]) {
        use std::arch::x86_64::*;
        debug_assert!(terms.is_multiple_of(32) && rows.iter().all(|r| r.len() >= terms) && out.len() == 8 * terms);
        for g in 0..terms / 32 {
            // SAFETY: 32 values (64 bytes) from term 32 g of each row; 16 x 64 bytes out.
            unsafe {
                let r: [__m512i; 16] =
                    std::array::from_fn(|i| _mm512_loadu_si512(rows[i].as_ptr().add(32 * g) as *const _));
                // Pairs of rows interleaved by pair, then by two pairs, then 128-bit lanes.
                let a: [__m512i; 16] = std::array::from_fn(|i| {
                    let (x, y) = (r[i & !1], r[i | 1]);
                    if i & 1 == 0 { _mm512_unpacklo_epi32(x, y) } else { _mm512_unpackhi_epi32(x, y) }
                });
                let b: [__m512i; 16] = std::array::from_fn(|i| {
                    let (j, h) = ((i & !3) | (i & 1), i & 2);
                    let (x, y) = (a[j], a[j | 2]);
                    if h == 0 { _mm512_unpacklo_epi64(x, y) } else { _mm512_unpackhi_epi64(x, y) }
                });
                let c: [__m512i; 16] = std::array::from_fn(|i| {
                    let (j, h) = ((i & !7) | (i & 3), i & 4);
                    let (x, y) = (b[j], b[j | 4]);
                    if h == 0 { _mm512_shuffle_i32x4::<0x88>(x, y) } else { _mm512_shuffle_i32x4::<0xdd>(x, y) }
                });
                let d: [__m512i; 16] = std::array::from_fn(|i| {
                    let (j, h) = (i & 7, i & 8);
                    let (x, y) = (c[j], c[j | 8]);
                    if h == 0 { _mm512_shuffle_i32x4::<0x88>(x, y) } else { _mm512_shuffle_i32x4::<0xdd>(x, y) }
                });
                // d[i] holds pair i of the 16 with bits 0 and 1 swapped (the first stage's
                // halves went to the second's odd registers).
                let dst = out.as_mut_ptr().add(256 * g);
                for (i, v) in d.iter().enumerate() {
                    let q = (i & !3) | (i & 1) << 1 | (i >> 1) & 1;
                    _mm512_storeu_si512(dst.add(16 * q) as *mut _, *v);
                }
            }
        }
    }

    /// One step of the kernel: tiles 4, 5 from the two `x` tiles at `a` (rows `sx` bytes
    /// apart), 6, 7 from the two panels' tiles at `b` (rows 64 bytes apart), and their four
    /// products added to tiles 0-3.
    ///
    /// # Safety
    /// [`configure`] ran on this thread; each pointer starts 16 rows of 64 bytes.
    #[inline(always)]
    unsafe fn step(a: [*const u16; 2], b: [*const u16; 2], sx: usize) {
        // SAFETY: the caller's bounds.
        unsafe {
            asm!(
                "tileloadd tmm4, [{a0} + {sx} * 1]",
                "tileloadd tmm6, [{b0} + {sw} * 1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {sw} * 1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sx} * 1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a[0],
                a1 = in(reg) a[1],
                b0 = in(reg) b[0],
                b1 = in(reg) b[1],
                sx = in(reg) sx,
                sw = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
    }

    /// `steps` rounds of four tile loads from `tiles` (four 1 KiB tiles) and four
    /// `tdpbf16ps`, as [`block`]'s inner loop; returns the first sum.
    ///
    /// # Safety
    /// The CPU has AMX and the process holds the tile permission; `tiles` holds 2,048 values.
    pub(super) unsafe fn peak(tiles: *const u16, steps: usize) -> f32 {
        let mut out = [0f32; 256];
        // SAFETY: the caller's AMX; every tile read lies in `tiles`, the stored one in `out`.
        unsafe {
            configure();
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for _ in 0..steps {
                step([tiles, tiles.add(512)], [tiles.add(1024), tiles.add(1536)], 64);
            }
            asm!("tilestored [{o} + {s} * 1], tmm0", o = in(reg) out.as_mut_ptr(), s = in(reg) 64usize, options(nostack));
            release();
        }
        out[0]
    }

    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// The CPU has AMX and the process holds the tile permission.
    pub(super) unsafe fn configure() {
        // SAFETY: CONFIG is a valid 64-byte palette-1 configuration (caller: AMX present).
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly)) };
    }

    /// Releases this thread's tiles (their state is then not saved on context switches).
    ///
    /// # Safety
    /// As [`configure`].
    pub(super) unsafe fn release() {
        // SAFETY: caller: AMX present.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// `c[32 x 32] = x[32 rows of kk] @ w^T` over the padded sum of `kk` terms (a multiple
    /// of 32), `w` the two pair-by-pair panels of 16 columns (each `kk * 16` values), `c` f32
    /// rows `ldc` apart.
    ///
    /// # Safety
    /// [`configure`] ran on this thread; `x` holds 32 rows of `kk` values, `w` two panels,
    /// `c` 32 rows of 32 values `ldc` apart.
    pub(super) unsafe fn block(x: *const u16, w: *const u16, kk: usize, c: *mut f32, ldc: usize) {
        let (sx, sc) = (kk * 2, ldc * 4); // bytes between tile rows
        let w1 = unsafe { w.add(kk * 16) };
        let (c0, c1, c2, c3) = unsafe { (c, c.add(16), c.add(16 * ldc), c.add(16 * ldc + 16)) };
        // SAFETY (all blocks below): the caller's bounds; tiles 0-3 accumulate, 4-7 load.
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for kb in (0..kk).step_by(32) {
                // Rows 0-15 and 16-31 of x's 32 terms; 16 pairs of each panel.
                step([x.add(kb), x.add(16 * kk + kb)], [w.add(kb * 16), w1.add(kb * 16)], sx);
            }
            asm!(
                "tilestored [{c0} + {sc} * 1], tmm0",
                "tilestored [{c1} + {sc} * 1], tmm1",
                "tilestored [{c2} + {sc} * 1], tmm2",
                "tilestored [{c3} + {sc} * 1], tmm3",
                c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, sc = in(reg) sc,
                options(nostack),
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    pub(super) fn detected() -> bool {
        false
    }
    pub(super) fn request_permission() -> bool {
        false
    }
    pub(super) unsafe fn configure() {}
    pub(super) unsafe fn release() {}
    pub(super) unsafe fn peak(_: *const u16, _: usize) -> f32 {
        unreachable!("AMX is never available here")
    }
    pub(super) unsafe fn transpose_pairs(_: &[&[half::bf16]; 16], _: usize, _: &mut [u32]) {
        unreachable!("AMX is never available here")
    }
    pub(super) unsafe fn block(_: *const u16, _: *const u16, _: usize, _: *mut f32, _: usize) {
        unreachable!("AMX is never available here")
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    /// Against f64 sums of the rounded operands (`dpbf16`'s check): rows, columns and terms
    /// on and off the tiles' multiples, across tasks of rows.
    #[test]
    fn products_of_rounded_operands_summed_in_f32() {
        if !super::available() {
            eprintln!("skipped: this CPU has no AMX-BF16 granted to the process (or ARTIST_CPU_AMX=0)");
            return;
        }
        // Rows: one block, a partial one, ranges of rows (more than 512); terms: whole groups
        // of 32 (transposed 16 x 16 pairs), a tail, only a tail; columns: partial panels,
        // past the last whole block, several blocks.
        let shapes = [
            (9, 64, 40),
            (32, 64, 40),
            (64, 32, 32),
            (65, 2, 1),
            (100, 30, 13),
            (40, 100, 48),
            (257, 258, 47),
            (300, 896, 100),
            (1100, 64, 80),
        ];
        crate::cpu::dpbf16::tests::check_rounded_products(
            &shapes,
            (&|x, w, m, k, n| super::linear(x, w, m, k, n), &|x, w, m, k, n| super::linear(x, w, m, k, n)),
        );
        let m = super::MIN_ROWS - 1;
        assert!(super::linear(&vec![0f32; m * 4], &[bf16::ZERO; 4], m, 4, 1).is_none(), "too few rows");
    }
}
