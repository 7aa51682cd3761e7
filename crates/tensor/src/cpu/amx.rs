//! `x @ w^T` with bf16 weights and the activations rounded to bf16, products summed in f32,
//! on the AMX tiles of Intel CPUs from Sapphire Rapids on (`tdpbf16ps`): what PyTorch's
//! oneDNN runs for a bf16 model there. Where AMX runs, the bf16 products of
//! `Tensor::linear_in` (and the backward products that reach [`super::dpbf16`]) come here
//! first, from [`MIN_ROWS`] (32) rows up.
//!
//! A tile is 16 rows of 64 bytes. `tdpbf16ps` adds to a 16 x 16 f32 tile the products of a
//! 16 x 32 bf16 tile of `x` and a 32 x 16 one of `w^T` laid out pair by pair (row `p`
//! holds, for each of 16 columns, the pair `k = 2p, 2p + 1`): 16,384 multiply-adds in one
//! instruction, against 32 for an f32 FMA of 16 lanes, so on Sapphire Rapids (where
//! `vdpbf16ps` issues at half an FMA's rate and gains nothing over f32) this is the only
//! way the bf16 products run faster than widened ones.
//!
//! The kernel keeps a 32 x 32 block of the output in four accumulator tiles, loads two
//! tiles of `x` and two of `w` per 32 terms of the sum, and writes the block out when the
//! sum is done. Both operands are packed once per call: `x` rounded to bf16 row-major with
//! rows and the sum's length padded with zeros (to 32), `w` into its pair-by-pair tiles
//! (16 output columns by the whole sum, contiguous). Packing `w` is a pass over the weights
//! like a matrix-vector product's, so few-row products stay on the other kernels.
//!
//! Linux hands a process the tiles' 8 KiB of state only when asked
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), which [`available`] does once.
//! Each task loads its tile configuration (`ldtilecfg`) and releases the tiles when done.
//! Like `vdpbf16ps`, `tdpbf16ps` reads subnormal inputs as zero and flushes subnormal
//! results; the products of bf16 values are exact in f32, so results differ from the
//! rounded operands' f32 product only in the order of the sums.

use half::bf16;
use rayon::prelude::*;

use super::dpbf16::ToBf16Bits;

/// Fewer rows than this stay on the AVX512-BF16 kernel, which reads the weights in place:
/// below it, packing the weights costs more than the tiles save (at Qwen2.5-0.5B's gate/up
/// and down shapes, 16 rows ran at 112-113 GFLOP/s on the tiles against 121-142 in place,
/// 32 rows at 209-215 against 145-161; docs/BENCHMARKS.md).
pub(crate) const MIN_ROWS: usize = 32;

/// The most packed bytes a thread keeps between calls.
const KEEP_BYTES: usize = 64 << 20;

/// Rows of `x` per task: 8 blocks of 32.
const TASK_ROWS: usize = 256;

/// Whether [`linear`] runs here: an x86-64 Linux with AMX-BF16, the tiles enabled by the
/// OS and granted to this process, unless the environment sets `ARTIST_CPU_AMX=0` (to
/// compare against the AVX512-BF16 kernel).
pub(crate) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let wanted = std::env::var("ARTIST_CPU_AMX").map(|v| v != "0").unwrap_or(true);
        wanted && imp::detected() && imp::request_permission()
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
    // Both packed operands in buffers kept from call to call (taken out of the thread's
    // slot, so a call nested in another's wait allocates its own), every value rewritten.
    let (mut xa, mut wb) = PACKED.with_borrow_mut(std::mem::take);
    // x: [m_pad, kk] bf16 bits, zeros past row m and column k.
    xa.resize(m_pad * kk, 0);
    xa.par_chunks_mut(kk).enumerate().for_each(|(i, row)| {
        let src = if i < m { &x[i * k..(i + 1) * k] } else { &x[..0] };
        for (d, s) in row.iter_mut().zip(src) {
            *d = s.bf16_bits();
        }
        row[src.len()..].fill(0);
    });
    // w: n_pad / 16 panels of [kk / 2 pairs][16 columns] pairs (u32: the two bf16 of terms
    // 2p, 2p + 1), zeros past column n and term k. Pair by pair, a panel reads its 16
    // weight rows as 16 sequential streams and writes itself in order.
    let (pairs, panel) = (kk / 2, kk * 8);
    wb.resize(n_pad * kk / 2, 0);
    wb.par_chunks_mut(panel).enumerate().for_each(|(c, p)| {
        // Columns past n read as empty rows, so as zeros.
        let rows: [&[bf16]; 16] = std::array::from_fn(|col| {
            let j = c * 16 + col;
            if j < n { &w[j * k..(j + 1) * k] } else { &[] }
        });
        for (q, dst) in p.chunks_exact_mut(16).enumerate().take(pairs) {
            for (d, r) in dst.iter_mut().zip(&rows) {
                let lo = r.get(2 * q).map_or(0, |v| v.to_bits() as u32);
                *d = lo | r.get(2 * q + 1).map_or(0, |v| (v.to_bits() as u32) << 16);
            }
        }
    });
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let dst = Out(out.as_mut_ptr());
    let row_tasks = m_pad.div_ceil(TASK_ROWS);
    // Task t: the 32 output columns of pair t / row_tasks, rows of chunk t % row_tasks; a
    // thread's run of tasks reuses the same panels of `w` from its L2.
    (0..n_pad / 32 * row_tasks).into_par_iter().for_each(|t| {
        let (cb, r0) = (t / row_tasks, t % row_tasks * TASK_ROWS);
        let rows = TASK_ROWS.min(m_pad - r0);
        let mut block = [0f32; 32 * 32];
        // SAFETY: the CPU has AMX-BF16 with the tiles granted (`available`); every tile
        // read lies inside `xa` (rows r0.. of m_pad, kk columns) or `wb` (panels 2 cb and
        // 2 cb + 1 of n_pad / 16); `block` holds the 32 x 32 results.
        unsafe {
            imp::configure();
            for rb in (r0..r0 + rows).step_by(32) {
                imp::block(xa.as_ptr().add(rb * kk), wb.as_ptr().add(2 * cb * panel) as *const u16, kk, &mut block);
                // The valid part of the block into the output.
                let (cols, c0) = (32.min(n - (cb * 32).min(n)), cb * 32);
                for i in 0..32.min(m.saturating_sub(rb)) {
                    let d = dst.at((rb + i) * n + c0);
                    std::ptr::copy_nonoverlapping(block.as_ptr().add(i * 32), d, cols);
                }
            }
            imp::release();
        }
    });
    // SAFETY: the tasks wrote every row below m of every column below n.
    unsafe { out.set_len(m * n) };
    // Kept for the next call up to 64 MiB (a projection's; not an LM head's 270 MB).
    if xa.capacity() * 2 + wb.capacity() * 4 <= KEEP_BYTES {
        PACKED.with_borrow_mut(|slot| *slot = (xa, wb));
    }
    Some(out)
}

thread_local! {
    /// The packed `x` and `w` of the thread's last call, for the next to reuse.
    static PACKED: std::cell::RefCell<(Vec<u16>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
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

    /// `out[32 x 32] = x[32 rows, stride kk] @ w^T` for the two pair-by-pair panels of 16
    /// columns at `w` (each `kk * 16` values), over the padded sum of `kk` terms.
    ///
    /// # Safety
    /// [`configure`] ran on this thread; `x` holds 32 rows of `kk` values and `w` two panels.
    pub(super) unsafe fn block(x: *const u16, w: *const u16, kk: usize, out: &mut [f32; 1024]) {
        let (sx, sw) = (kk * 2, 64usize); // bytes between tile rows
        let w1 = unsafe { w.add(kk * 16) };
        // SAFETY (all blocks below): the caller's bounds; tiles 0-3 accumulate, 4-7 load.
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for kb in (0..kk).step_by(32) {
                // Rows 0-15 and 16-31 of x's 32 terms; 16 pairs of each panel.
                let (a0, a1) = (x.add(kb), x.add(16 * kk + kb));
                let (b0, b1) = (w.add(kb * 16), w1.add(kb * 16));
                asm!(
                    "tileloadd tmm4, [{a0} + {sx} * 1]",
                    "tileloadd tmm5, [{a1} + {sx} * 1]",
                    "tileloadd tmm6, [{b0} + {sw} * 1]",
                    "tileloadd tmm7, [{b1} + {sw} * 1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a1,
                    b0 = in(reg) b0,
                    b1 = in(reg) b1,
                    sx = in(reg) sx,
                    sw = in(reg) sw,
                    options(nostack, readonly),
                );
            }
            let o = out.as_mut_ptr();
            asm!(
                "tilestored [{o0} + {so} * 1], tmm0",
                "tilestored [{o1} + {so} * 1], tmm1",
                "tilestored [{o2} + {so} * 1], tmm2",
                "tilestored [{o3} + {so} * 1], tmm3",
                o0 = in(reg) o,
                o1 = in(reg) o.add(16),
                o2 = in(reg) o.add(16 * 32),
                o3 = in(reg) o.add(16 * 32 + 16),
                so = in(reg) 128usize,
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
    pub(super) unsafe fn block(_: *const u16, _: *const u16, _: usize, _: &mut [f32; 1024]) {
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
        let shapes = [(32, 64, 40), (64, 32, 32), (65, 2, 1), (100, 30, 13), (257, 258, 47), (300, 896, 100)];
        crate::cpu::dpbf16::tests::check_rounded_products(
            &shapes,
            (&|x, w, m, k, n| super::linear(x, w, m, k, n), &|x, w, m, k, n| super::linear(x, w, m, k, n)),
        );
        assert!(super::linear(&[0f32; 31 * 4], &[bf16::ZERO; 4], 31, 4, 1).is_none(), "too few rows");
    }
}
