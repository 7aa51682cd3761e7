//! Hand-vectorised inner loops where the compiler's auto-vectorisation falls short. Each
//! kernel has a portable fallback and is chosen at run time by CPU feature detection.

use half::{bf16, f16};

use crate::{DType, WithDType};

/// `sum(a[i] * b[i])` in f32 with `b` widened from its storage type on the fly.
#[inline]
pub(crate) fn dot<T: WithDType>(a: &[f32], b: &[T]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above); `T::DTYPE` names T's layout, so
        // the casts reinterpret the slice as the type it is.
        unsafe {
            match T::DTYPE {
                DType::F32 => return x86::dot_f32(a, bytemuck::cast_slice(b)),
                DType::BF16 => return x86::dot_bf16(a, bytemuck::cast_slice::<T, bf16>(b)),
                DType::F16 if std::arch::is_x86_feature_detected!("f16c") => {
                    return x86::dot_f16(a, bytemuck::cast_slice::<T, f16>(b));
                }
                _ => {}
            }
        }
    }
    dot_portable(a, b)
}

/// Four dot products against one `b`: `[sum(a[r][i] * b[i]) for r in 0..4]`. Each chunk of
/// `b` is loaded and widened once for all four rows (decoding a batch of sequences reads
/// every weight row once and multiplies it with every sequence's activations).
#[inline]
pub(crate) fn dot4<T: WithDType>(a: [&[f32]; 4], b: &[T]) -> [f32; 4] {
    debug_assert!(a.iter().all(|r| r.len() == b.len()));
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: as in `dot`.
        unsafe {
            match T::DTYPE {
                DType::F32 => return x86::dot4_f32(a, bytemuck::cast_slice(b)),
                DType::BF16 => return x86::dot4_bf16(a, bytemuck::cast_slice::<T, bf16>(b)),
                _ => {}
            }
        }
    }
    a.map(|r| dot_portable(r, b))
}

/// `dst[i] = exp(src[i] - shift)` (as `nn::fast_exp`), returning the sum of `dst`.
pub(crate) fn exp_shifted<T: WithDType>(dst: &mut [f32], src: &[T], shift: f32) -> f32 {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == DType::F32 && avx2_fma() {
        // SAFETY: AVX2 and FMA are present; T is f32.
        return unsafe { x86::exp_shifted(dst, bytemuck::cast_slice(src), shift) };
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = super::nn::fast_exp(x.to_f32() - shift);
    }
    super::reduce::row_sum(dst, |e| e)
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether the CPU has AVX-512F (the build targets AVX2; kernels that use it check here).
pub(crate) fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Eight independent accumulators; what the x86 kernels compute, in plain Rust.
pub(crate) fn dot_portable<T: WithDType>(a: &[f32], b: &[T]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y.to_f32()).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l].to_f32(), acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::{bf16, f16};

    /// Four 8-lane accumulators over 32 elements per step: enough independent FMAs to hide
    /// their latency. `load(i)` gives 8 widened elements of `b` starting at `i`.
    #[inline(always)]
    unsafe fn dot_with(a: &[f32], n: usize, prefetch: impl Fn(usize), load: impl Fn(usize) -> __m256) -> (f32, usize) {
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                prefetch(i);
                for (j, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(a.as_ptr().add(i + 8 * j));
                    *acc = _mm256_fmadd_ps(x, load(i + 8 * j), *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), load(i), acc[0]);
                i += 8;
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
            (_mm_cvtss_f32(h), i)
        }
    }

    /// `nn::fast_exp` on 8 lanes: the same clamp, reduction and polynomial.
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        unsafe {
            let lo = _mm256_set1_ps(-87.336_55);
            let xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0));
            let n = _mm256_floor_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(0.5)));
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), xc);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
            let mut p = _mm256_set1_ps(1.987_569_1e-4);
            for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0));
            let scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
            let e = _mm256_mul_ps(y, _mm256_castsi256_ps(scale));
            let e = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), e);
            _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q))
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted(dst: &mut [f32], src: &[f32], shift: f32) -> f32 {
        let n = dst.len().min(src.len());
        let mut i = 0;
        // SAFETY: every access is to 8 elements starting below n - 7.
        unsafe {
            let m = _mm256_set1_ps(shift);
            let mut acc = [_mm256_setzero_ps(); 2];
            while i + 16 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(src.as_ptr().add(i + 8 * j)), m));
                    _mm256_storeu_ps(dst.as_mut_ptr().add(i + 8 * j), e);
                    *acc = _mm256_add_ps(*acc, e);
                }
                i += 16;
            }
            let s = _mm256_add_ps(acc[0], acc[1]);
            let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let mut sum = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
            for k in i..n {
                dst[k] = super::super::nn::fast_exp(src[k] - shift);
                sum += dst[k];
            }
            sum
        }
    }

    /// Elements of a half-type weight row fetched ahead of use (1 KiB).
    const PREFETCH_AHEAD: usize = 512;

    #[inline(always)]
    fn prefetch<T>(p: *const T) {
        // SAFETY: a prefetch is a hint; it never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: every load reads 8 elements starting below n - 7.
        let (s, i) = unsafe { dot_with(a, n, |_| {}, |i| _mm256_loadu_ps(b.as_ptr().add(i))) };
        s + a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum::<f32>()
    }

    /// Four rows against one `b`, two 8-lane accumulators per row (16 elements a step).
    #[inline(always)]
    unsafe fn dot4_with(a: [&[f32]; 4], n: usize, load: impl Fn(usize) -> __m256) -> ([f32; 4], usize) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; 4];
            let mut i = 0;
            while i + 16 <= n {
                for h in 0..2 {
                    let w = load(i + 8 * h);
                    for (row, acc) in a.iter().zip(acc.iter_mut()) {
                        acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(row.as_ptr().add(i + 8 * h)), w, acc[h]);
                    }
                }
                i += 16;
            }
            let mut out = [0f32; 4];
            for (o, acc) in out.iter_mut().zip(&acc) {
                let s = _mm256_add_ps(acc[0], acc[1]);
                let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
                let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
                *o = _mm_cvtss_f32(h);
            }
            (out, i)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4_f32(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
        let n = b.len();
        // SAFETY: every load reads 8 elements starting below n - 7; each row of `a` has n.
        let (mut s, i) = unsafe { dot4_with(a, n, |i| _mm256_loadu_ps(b.as_ptr().add(i))) };
        for r in 0..4 {
            s[r] += a[r][i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum::<f32>();
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4_bf16(a: [&[f32]; 4], b: &[bf16]) -> [f32; 4] {
        let n = b.len();
        // SAFETY: as above; bf16 widens exactly by a 16-bit left shift.
        let (mut s, i) = unsafe {
            dot4_with(a, n, |i| {
                prefetch(b.as_ptr().wrapping_add(i + PREFETCH_AHEAD));
                let w = _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(w), 16))
            })
        };
        for r in 0..4 {
            s[r] += a[r][i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y.to_f32()).sum::<f32>();
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_bf16(a: &[f32], b: &[bf16]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: as above; bf16 widens exactly by a 16-bit left shift.
        let (s, i) = unsafe {
            dot_with(
                a,
                n,
                |i| prefetch(b.as_ptr().wrapping_add(i + PREFETCH_AHEAD)),
                |i| {
                    let w = _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i);
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(w), 16))
                },
            )
        };
        s + a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y.to_f32()).sum::<f32>()
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: as above; F16C widens 8 halves at a time.
        let (s, i) = unsafe {
            dot_with(a, n, |_| {}, |i| _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i)))
        };
        s + a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y.to_f32()).sum::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_row_dots_match_single_dots() {
        for n in [0usize, 5, 16, 37, 896] {
            let rows: Vec<Vec<f32>> =
                (0..4).map(|r| (0..n).map(|i| ((i * 7 + r * 3) % 11) as f32 * 0.1 - 0.5).collect()).collect();
            let w32: Vec<f32> = (0..n).map(|i| ((i * 5) % 13) as f32 * 0.07 - 0.4).collect();
            let w16: Vec<bf16> = w32.iter().map(|&x| bf16::from_f32(x)).collect();
            let a = [rows[0].as_slice(), rows[1].as_slice(), rows[2].as_slice(), rows[3].as_slice()];
            let (got32, got16) = (dot4(a, &w32), dot4(a, &w16));
            for r in 0..4 {
                let (e32, e16) = (dot_portable(a[r], &w32), dot_portable(a[r], &w16));
                assert!((got32[r] - e32).abs() <= 1e-4 * e32.abs().max(1.0), "n {n} row {r}: {} vs {e32}", got32[r]);
                assert!((got16[r] - e16).abs() <= 1e-4 * e16.abs().max(1.0), "n {n} row {r}: {} vs {e16}", got16[r]);
            }
        }
    }

    #[test]
    fn vector_exp_matches_the_scalar_one() {
        let src: Vec<f32> = (0..1003).map(|i| (i as f32 - 900.0) * 0.11).chain([f32::NEG_INFINITY, -90.0]).collect();
        let mut dst = vec![0f32; src.len()];
        let sum = exp_shifted(&mut dst, &src, 1.5);
        let mut want_sum = 0f64;
        for (&x, &d) in src.iter().zip(&dst) {
            let want = super::super::nn::fast_exp(x - 1.5);
            want_sum += want as f64;
            assert!((d - want).abs() <= 3e-7 * want.abs().max(1e-30), "exp({x} - 1.5): {d} vs {want}");
        }
        assert!(((sum as f64) - want_sum).abs() <= 1e-5 * want_sum);
    }

    #[test]
    fn kernels_agree_with_f64() {
        for n in [0usize, 1, 7, 8, 31, 32, 33, 100, 896, 4864] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 31.0).collect();
            let exact = |w: &dyn Fn(usize) -> f64| (0..n).map(|i| a[i] as f64 * w(i)).sum::<f64>();
            let bb: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
            let bh: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
            let cases = [
                (dot(&a, &b) as f64, exact(&|i| b[i] as f64)),
                (dot(&a, &bb) as f64, exact(&|i| bb[i].to_f64())),
                (dot(&a, &bh) as f64, exact(&|i| bh[i].to_f64())),
                (dot_portable(&a, &bb) as f64, exact(&|i| bb[i].to_f64())),
            ];
            for (k, (got, want)) in cases.iter().enumerate() {
                assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "n={n} case {k}: {got} vs {want}");
            }
        }
    }
}
