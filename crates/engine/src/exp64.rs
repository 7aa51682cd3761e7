//! The sampler's f64 exponentials, four at a time.
//!
//! A draw from a row of Qwen2.5's 152k logits takes the log-sum-exp of the whole row in f64
//! and, for a flat row, an exponential per candidate: with libm's scalar `exp` (some 20
//! cycles each) that was a tenth of a CPU rollout's time. [`exp`] is the same function as a
//! fixed sequence of IEEE operations, which the AVX2 path runs on four lanes and the
//! portable path on one, so both give the same bits; within one ulp of the correctly
//! rounded value for `-708 <= x <= 709.78` (the tests compare it with libm at a million
//! points), 0 below -708 (where a sampler's terms cannot move a sum that holds the row's
//! largest term, 1), infinity above, NaN for NaN.
//!
//! Method: `x = k ln 2 + r` with `k = round(x / ln 2)` and `|r| <= ln(2) / 2` (ln 2 in two
//! parts, the first exact in `k * ln2_hi` for |k| < 2^21), `e^r` by its Taylor series to
//! degree 13 in Horner form with fused multiply-adds (truncation below 6e-18 relative), and
//! `2^k` as `2 * 2^(k-1)`, the 2 applied to `e^r` first, so that every product stays a
//! normal number at both ends of the range and the scaling is exact.

const LOG2_E: f64 = std::f64::consts::LOG2_E;
/// ln 2 = LN2_HI + LN2_LO: the first with 32 significant bits (its last 20 are zero, so
/// `k * LN2_HI` is exact), the second the rest (fdlibm's split).
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
/// 1/13!, 1/12!, ..., 1/1!, 1/0!.
const TAYLOR: [f64; 14] = [
    1.0 / 6_227_020_800.0,
    1.0 / 479_001_600.0,
    1.0 / 39_916_800.0,
    1.0 / 3_628_800.0,
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];
/// Below this, 0.
const LOW: f64 = -708.0;
/// Inputs are clamped to this before the reduction; e^710 overflows to infinity.
const HIGH: f64 = 710.0;
/// `k + 1022` lands in the low mantissa bits of `k + MAGIC` (k is an integer, in [-1021,
/// 1024] wherever the result is kept), from where a shift makes it the exponent of 2^(k-1).
const MAGIC: f64 = (1u64 << 52) as f64 + 1022.0;

/// e^x (see the module doc); the reference for the vector paths.
#[inline]
pub(crate) fn exp(x: f64) -> f64 {
    let c = x.clamp(LOW - 1.0, HIGH);
    let k = (c * LOG2_E).round_ties_even();
    let r = (-k).mul_add(LN2_HI, c);
    let r = (-k).mul_add(LN2_LO, r);
    let mut p = TAYLOR[0];
    for &t in &TAYLOR[1..] {
        p = p.mul_add(r, t);
    }
    let scale = f64::from_bits((k + MAGIC).to_bits() << 52);
    let e = (p * 2.0) * scale;
    if x.is_nan() {
        x
    } else if x < LOW {
        0.0
    } else {
        e
    }
}

/// `sum(e^((l - shift) * scale))` over `row` (`l - shift` taken in f32, as the sampler's
/// log-sum-exp always has), summed in eight lanes (element i into lane i % 8, the lanes
/// then added in order) and the last `len % 8` terms one by one after them.
pub(crate) fn sum_exp(row: &[f32], shift: f32, scale: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { x86::sum_exp(row, shift, scale) };
    }
    let mut lanes = [0f64; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (acc, &l) in lanes.iter_mut().zip(c) {
            *acc += exp((l - shift) as f64 * scale);
        }
    }
    finish(lanes, tail, shift, scale)
}

fn finish(lanes: [f64; 8], tail: &[f32], shift: f32, scale: f64) -> f64 {
    let mut s = lanes.iter().sum::<f64>();
    for &l in tail {
        s += exp((l - shift) as f64 * scale);
    }
    s
}

/// `e^x` of each element, in place.
pub(crate) fn exp_in_place(xs: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { x86::exp_in_place(xs) };
    }
    for x in xs {
        *x = exp(*x);
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// [`super::exp`] on four lanes: the same operations in the same order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp4(x: __m256d) -> __m256d {
        let c = _mm256_min_pd(_mm256_max_pd(x, _mm256_set1_pd(LOW - 1.0)), _mm256_set1_pd(HIGH));
        let k = _mm256_round_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_pd(
            c,
            _mm256_set1_pd(LOG2_E),
        ));
        let nk = _mm256_xor_pd(k, _mm256_set1_pd(-0.0));
        let r = _mm256_fmadd_pd(nk, _mm256_set1_pd(LN2_HI), c);
        let r = _mm256_fmadd_pd(nk, _mm256_set1_pd(LN2_LO), r);
        let mut p = _mm256_set1_pd(TAYLOR[0]);
        for &t in &TAYLOR[1..] {
            p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(t));
        }
        let bits = _mm256_slli_epi64::<52>(_mm256_castpd_si256(_mm256_add_pd(k, _mm256_set1_pd(MAGIC))));
        let e = _mm256_mul_pd(_mm256_mul_pd(p, _mm256_set1_pd(2.0)), _mm256_castsi256_pd(bits));
        let e = _mm256_andnot_pd(_mm256_cmp_pd::<_CMP_LT_OQ>(x, _mm256_set1_pd(LOW)), e);
        // NaN in, NaN out (the clamp above would have made it a number).
        _mm256_blendv_pd(e, x, _mm256_cmp_pd::<_CMP_UNORD_Q>(x, x))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn sum_exp(row: &[f32], shift: f32, scale: f64) -> f64 {
        let (sh, sc) = (_mm_set1_ps(shift), _mm256_set1_pd(scale));
        let mut acc = [_mm256_setzero_pd(); 2];
        let chunks = row.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: c holds 8 elements; this reads 4 of them from 4 * j.
                let l = unsafe { _mm_loadu_ps(c.as_ptr().add(4 * j)) };
                let x = _mm256_mul_pd(_mm256_cvtps_pd(_mm_sub_ps(l, sh)), sc);
                *acc = _mm256_add_pd(*acc, exp4(x));
            }
        }
        let mut lanes = [0f64; 8];
        // SAFETY: lanes holds 8 f64.
        unsafe {
            _mm256_storeu_pd(lanes.as_mut_ptr(), acc[0]);
            _mm256_storeu_pd(lanes.as_mut_ptr().add(4), acc[1]);
        }
        finish(lanes, tail, shift, scale)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_in_place(xs: &mut [f64]) {
        let mut chunks = xs.chunks_exact_mut(4);
        for c in &mut chunks {
            // SAFETY: c holds 4 f64.
            unsafe { _mm256_storeu_pd(c.as_mut_ptr(), exp4(_mm256_loadu_pd(c.as_ptr()))) };
        }
        for x in chunks.into_remainder() {
            *x = exp(*x);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Distance in units in the last place between two finite f64 of one sign.
    fn ulps(a: f64, b: f64) -> u64 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    #[test]
    fn within_one_ulp_of_libm() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut xs: Vec<f64> = (0..1_000_000)
            .map(|i| match i % 3 {
                // Across the whole range, near zero (most of a sampler's terms), and at
                // the reduction's boundaries (k flips at odd multiples of ln(2) / 2).
                0 => rng.random::<f64>() * (709.78 - LOW) + LOW,
                1 => rng.random::<f64>() * 40.0 - 40.0,
                _ => {
                    (rng.random_range(-1021i32..1024) as f64 + 0.5) * std::f64::consts::LN_2
                        + rng.random::<f64>() * 1e-9
                }
            })
            .collect();
        xs.extend([0.0, -0.0, 1.0, -1.0, LOW, 709.78, 1e-300, -1e-300, f64::MIN_POSITIVE]);
        let mut vec = xs.clone();
        exp_in_place(&mut vec);
        let mut worst = (0, 0.0);
        for (&x, &v) in xs.iter().zip(&vec) {
            let e = exp(x);
            assert_eq!(e.to_bits(), v.to_bits(), "e^{x}: the vector path differs from the scalar one");
            let u = ulps(e, x.exp());
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 1, "e^{} is {} ulps from libm's", worst.1, worst.0);
    }

    #[test]
    fn ends_of_the_range() {
        let mut xs =
            vec![f64::NAN, f64::NEG_INFINITY, f64::INFINITY, -708.5, -745.2, -1e6, 709.9, 710.0, 1e6, -f64::NAN];
        let want = [f64::NAN, 0.0, f64::INFINITY, 0.0, 0.0, 0.0, f64::INFINITY, f64::INFINITY, f64::INFINITY, f64::NAN];
        for (&x, &w) in xs.iter().zip(&want) {
            let e = exp(x);
            assert!(e.to_bits() == w.to_bits() || (w.is_nan() && e.is_nan()), "e^{x} = {e}, want {w}");
        }
        let mut four = xs.split_off(6);
        exp_in_place(&mut xs);
        exp_in_place(&mut four);
        xs.extend(four);
        for ((&e, &w), x) in xs.iter().zip(&want).zip(0..) {
            assert!(e.to_bits() == w.to_bits() || (w.is_nan() && e.is_nan()), "input {x}: {e}, want {w}");
        }
    }

    #[test]
    fn sums_agree_across_paths_and_with_libm() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for len in [0usize, 1, 7, 8, 9, 31, 1000, 151_936] {
            let row: Vec<f32> = (0..len).map(|_| rng.random::<f32>() * 30.0 - 20.0).collect();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let got = sum_exp(&row, max, 1.0 / 0.7);
            let mut lanes = [0f64; 8];
            let chunks = row.chunks_exact(8);
            let tail = chunks.remainder();
            for c in chunks {
                for (acc, &l) in lanes.iter_mut().zip(c) {
                    *acc += exp((l - max) as f64 * (1.0 / 0.7));
                }
            }
            assert_eq!(got.to_bits(), finish(lanes, tail, max, 1.0 / 0.7).to_bits(), "len {len}");
            // Against libm's terms summed with compensation (Neumaier): the lanes' error
            // bound, len / 8 + 10 roundings of the sum (positive terms), plus one ulp per term.
            let (mut libm, mut comp) = (0f64, 0f64);
            for &l in &row {
                let t = ((l - max) as f64 * (1.0 / 0.7)).exp();
                let s = libm + t;
                comp += if libm.abs() >= t.abs() { (libm - s) + t } else { (t - s) + libm };
                libm = s;
            }
            let libm = libm + comp;
            let bound = (len as f64 / 8.0 + 11.0) * f64::EPSILON * libm;
            assert!((got - libm).abs() <= bound, "len {len}: {got} vs {libm}");
        }
    }
}
