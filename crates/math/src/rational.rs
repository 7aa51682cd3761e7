//! Exact rationals over `i128`. Every operation is checked: an overflow is `None`, and the
//! evaluator answers it by carrying on in `f64` (answers in math datasets are small, so the
//! exact path covers nearly everything and a bignum crate would not pay for itself).

use std::cmp::Ordering;
use std::fmt;
use std::ops::Neg;

/// `num / den` in lowest terms with `den > 0`. `i128::MIN` never appears, so negation and
/// `abs` cannot overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rational {
    num: i128,
    den: i128,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Rational {
    pub const ZERO: Rational = Rational { num: 0, den: 1 };
    pub const ONE: Rational = Rational { num: 1, den: 1 };
    pub const HALF: Rational = Rational { num: 1, den: 2 };
    pub const HUNDRED: Rational = Rational { num: 100, den: 1 };

    /// `num / den` reduced; `None` for a zero denominator or an `i128::MIN` operand.
    pub fn new(num: i128, den: i128) -> Option<Rational> {
        if den == 0 || num == i128::MIN || den == i128::MIN {
            return None;
        }
        let g = gcd(num.unsigned_abs(), den.unsigned_abs()) as i128; // <= i128::MAX: both operands are
        let (mut num, mut den) = (num / g, den / g);
        if den < 0 {
            (num, den) = (-num, -den);
        }
        Some(Rational { num, den })
    }

    pub fn int(n: i128) -> Option<Rational> {
        Rational::new(n, 1)
    }

    pub fn numer(self) -> i128 {
        self.num
    }

    pub fn denom(self) -> i128 {
        self.den
    }

    pub fn is_integer(self) -> bool {
        self.den == 1
    }

    pub fn is_zero(self) -> bool {
        self.num == 0
    }

    pub fn signum(self) -> i128 {
        self.num.signum()
    }

    pub fn abs(self) -> Rational {
        Rational { num: self.num.abs(), den: self.den }
    }

    pub fn checked_add(self, o: Rational) -> Option<Rational> {
        // Over the lcm of the denominators, so sums of small fractions stay small.
        let g = gcd(self.den as u128, o.den as u128) as i128;
        let (a, b) = (self.den / g, o.den / g);
        let num = self.num.checked_mul(b)?.checked_add(o.num.checked_mul(a)?)?;
        Rational::new(num, self.den.checked_mul(b)?)
    }

    pub fn checked_sub(self, o: Rational) -> Option<Rational> {
        self.checked_add(-o)
    }

    pub fn checked_mul(self, o: Rational) -> Option<Rational> {
        // Cross-reduce first: (a/b)(c/d) with gcd(a,d) and gcd(c,b) divided out.
        let g1 = gcd(self.num.unsigned_abs(), o.den as u128).max(1) as i128;
        let g2 = gcd(o.num.unsigned_abs(), self.den as u128).max(1) as i128;
        let num = (self.num / g1).checked_mul(o.num / g2)?;
        let den = (self.den / g2).checked_mul(o.den / g1)?;
        Rational::new(num, den)
    }

    pub fn recip(self) -> Option<Rational> {
        Rational::new(self.den, self.num)
    }

    pub fn checked_div(self, o: Rational) -> Option<Rational> {
        self.checked_mul(o.recip()?)
    }

    /// `self^e` for an integer exponent; `None` on overflow or `0^-n`.
    pub fn pow(self, e: i128) -> Option<Rational> {
        let base = if e < 0 { self.recip()? } else { self };
        let e = u32::try_from(e.unsigned_abs()).ok()?;
        Rational::new(base.num.checked_pow(e)?, base.den.checked_pow(e)?)
    }

    /// The exact real `q`-th root when there is one (`(8/27)^(1/3) = 2/3`, `(-8)^(1/3) = -2`);
    /// `None` when the root is irrational or not real.
    pub fn root(self, q: u32) -> Option<Rational> {
        if q == 0 {
            return None;
        }
        if self.num < 0 && q.is_multiple_of(2) {
            return None;
        }
        let n = int_root(self.num.unsigned_abs(), q)?;
        let d = int_root(self.den as u128, q)?;
        Rational::new(if self.num < 0 { -n } else { n }, d)
    }

    pub fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// `self * 10^digits` rounded half away from zero: how a decimal answer is compared at a
    /// fixed number of places.
    pub fn round_scaled(self, digits: u32) -> Option<i128> {
        let scaled = self.num.checked_mul(10i128.checked_pow(digits)?)?;
        let (q, r) = (scaled / self.den, scaled % self.den);
        // |r| < den, so 2|r| fits in u128.
        Some(if 2 * r.unsigned_abs() >= self.den as u128 { q + scaled.signum() } else { q })
    }

    /// A plain decimal literal: `12`, `0.5`, `.25`, `3.`. `None` when it does not fit.
    pub fn parse_decimal(s: &str) -> Option<Rational> {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut num: i128 = 0;
        let mut den: i128 = 1;
        for c in int.chars() {
            num = num.checked_mul(10)?.checked_add(c.to_digit(10)? as i128)?;
        }
        for c in frac.chars() {
            num = num.checked_mul(10)?.checked_add(c.to_digit(10)? as i128)?;
            den = den.checked_mul(10)?;
        }
        Rational::new(num, den)
    }
}

/// The integer `q`-th root of `n` when `n` is a perfect power, by bisection (at most ~128
/// steps, each a checked power).
fn int_root(n: u128, q: u32) -> Option<i128> {
    if n > i128::MAX as u128 {
        return None;
    }
    if n < 2 || q == 1 {
        return Some(n as i128);
    }
    let (mut lo, mut hi) = (0u128, 1u128 << (128 / q).min(127));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        match mid.checked_pow(q) {
            Some(p) if p <= n => lo = mid,
            _ => hi = mid - 1,
        }
    }
    (lo.checked_pow(q) == Some(n)).then_some(lo as i128)
}

impl Neg for Rational {
    type Output = Rational;

    /// Cannot overflow: `i128::MIN` is never a numerator.
    fn neg(self) -> Rational {
        Rational { num: -self.num, den: self.den }
    }
}

impl PartialOrd for Rational {
    fn partial_cmp(&self, o: &Rational) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Rational {
    fn cmp(&self, o: &Rational) -> Ordering {
        match (self.num.checked_mul(o.den), o.num.checked_mul(self.den)) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self.to_f64().total_cmp(&o.to_f64()),
        }
    }
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 { write!(f, "{}", self.num) } else { write!(f, "{}/{}", self.num, self.den) }
    }
}

#[cfg(test)]
mod tests {
    use super::Rational;

    fn r(n: i128, d: i128) -> Rational {
        Rational::new(n, d).unwrap()
    }

    #[test]
    fn arithmetic_reduces_and_checks_overflow() {
        assert_eq!(r(2, -4), r(-1, 2));
        assert_eq!(r(1, 6).checked_add(r(1, 3)), Some(r(1, 2)));
        assert_eq!(r(2, 3).checked_mul(r(9, 4)), Some(r(3, 2)));
        assert_eq!(r(1, 2).checked_div(Rational::ZERO), None);
        assert_eq!(Rational::int(i128::MAX).unwrap().checked_add(Rational::ONE), None);
        assert_eq!(r(2, 1).pow(-3), Some(r(1, 8)));
        assert_eq!(r(10, 1).pow(40), None);
        assert_eq!(r(2, 1).pow(1 << 40), None);
    }

    #[test]
    fn roots_are_exact_or_absent() {
        assert_eq!(r(8, 27).root(3), Some(r(2, 3)));
        assert_eq!(r(-8, 1).root(3), Some(r(-2, 1)));
        assert_eq!(r(2, 1).root(2), None);
        assert_eq!(r(-4, 1).root(2), None);
        assert_eq!(Rational::int(i128::MAX).unwrap().root(2), None);
    }

    #[test]
    fn decimals_and_rounding() {
        assert_eq!(Rational::parse_decimal("0.25"), Some(r(1, 4)));
        assert_eq!(Rational::parse_decimal(".5"), Some(r(1, 2)));
        assert_eq!(Rational::parse_decimal("."), None);
        assert_eq!(r(1, 3).round_scaled(6), Some(333_333));
        assert_eq!(r(-2, 3).round_scaled(6), Some(-666_667));
    }
}
