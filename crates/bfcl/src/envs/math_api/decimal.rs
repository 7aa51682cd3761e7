//! Enough of Python's `decimal.Decimal` for `Decimal(x).sqrt()` under a context precision
//! and its `repr`: exact conversion from `int`/`float`, the correctly rounded square root
//! with the specification's ideal exponent, and the scientific string form.

use super::nat::Nat;

/// `(-1)^neg * coeff * 10^exp`.
#[derive(Clone, Debug, PartialEq)]
pub struct Decimal {
    pub neg: bool,
    pub coeff: Nat,
    pub exp: i64,
}

impl Decimal {
    /// `Decimal(int)`.
    pub fn from_i128(v: i128) -> Decimal {
        Decimal { neg: v < 0, coeff: Nat::from_u128(v.unsigned_abs()), exp: 0 }
    }

    /// `Decimal(float)` for a finite float: its exact value.
    pub fn from_f64(x: f64) -> Decimal {
        let neg = x.is_sign_negative();
        if x == 0.0 {
            return Decimal { neg, coeff: Nat::zero(), exp: 0 };
        }
        let bits = x.to_bits();
        let biased = ((bits >> 52) & 0x7ff) as i64;
        let frac = bits & ((1 << 52) - 1);
        let (mut man, mut e) = if biased == 0 { (frac, -1074) } else { (frac | 1 << 52, biased - 1075) };
        while man & 1 == 0 && e < 0 {
            man >>= 1;
            e += 1;
        }
        let man = Nat::from_u128(man as u128);
        if e >= 0 {
            Decimal { neg, coeff: man.shl(e as u64), exp: 0 }
        } else {
            Decimal { neg, coeff: man.mul(&Nat::pow(5, (-e) as u64)), exp: e }
        }
    }

    /// `self.sqrt()` under a context precision of `prec` digits (ROUND_HALF_EVEN);
    /// `None` for a negative operand (InvalidOperation).
    pub fn sqrt(&self, prec: u64) -> Option<Decimal> {
        if self.coeff.is_zero() {
            return Some(Decimal { neg: self.neg, coeff: Nat::zero(), exp: self.exp.div_euclid(2) });
        }
        if self.neg {
            return None;
        }
        let ndigits = self.coeff.to_decimal().len() as i64;
        let prec1 = prec as i64 + 1;
        let mut e = self.exp.div_euclid(2);
        let (mut c, l) = if self.exp.rem_euclid(2) == 1 {
            (self.coeff.mul_small(10), (ndigits >> 1) + 1)
        } else {
            (self.coeff.clone(), (ndigits + 1) >> 1)
        };
        let shift = prec1 - l;
        let mut exact;
        if shift >= 0 {
            c = c.mul(&Nat::pow(100, shift as u64));
            exact = true;
        } else {
            let (q, r) = c.divrem(&Nat::pow(100, (-shift) as u64));
            c = q;
            exact = r.is_zero();
        }
        e -= shift;
        let mut n = c.isqrt();
        exact = exact && n.mul(&n) == c;
        if exact {
            if shift >= 0 {
                n = n.divrem(&Nat::pow10(shift as u64)).0;
            } else {
                n = n.mul(&Nat::pow10((-shift) as u64));
            }
            e += shift;
        } else if n.divrem_small(5).1 == 0 {
            n = n.add(&Nat::one());
        }
        Some(fix(Decimal { neg: false, coeff: n, exp: e }, prec))
    }

    /// `str(self)`: the scientific string form.
    pub fn to_sci_string(&self) -> String {
        let digits = self.coeff.to_decimal();
        let n = digits.len() as i64;
        let leftdigits = self.exp + n;
        let dotplace = if self.exp <= 0 && leftdigits > -6 { leftdigits } else { 1 };
        let (intpart, fracpart) = if dotplace <= 0 {
            ("0".to_owned(), format!(".{}{}", "0".repeat((-dotplace) as usize), digits))
        } else if dotplace >= n {
            (format!("{}{}", digits, "0".repeat((dotplace - n) as usize)), String::new())
        } else {
            (digits[..dotplace as usize].to_owned(), format!(".{}", &digits[dotplace as usize..]))
        };
        let exp = if leftdigits == dotplace { String::new() } else { format!("E{:+}", leftdigits - dotplace) };
        format!("{}{intpart}{fracpart}{exp}", if self.neg { "-" } else { "" })
    }
}

/// `_fix`: rounds the coefficient to `prec` digits, half to even.
fn fix(d: Decimal, prec: u64) -> Decimal {
    let digits = d.coeff.to_decimal();
    let len = digits.len() as u64;
    if len <= prec {
        return d;
    }
    let exp_min = d.exp + (len - prec) as i64;
    let bytes = digits.as_bytes();
    let p = prec as usize;
    let rest_zero = bytes[p + 1..].iter().all(|&b| b == b'0');
    let up = match bytes[p] {
        b'6'..=b'9' => true,
        b'5' => !rest_zero || (p > 0 && (bytes[p - 1] - b'0') % 2 == 1),
        _ => false,
    };
    let mut coeff = d.coeff.divrem(&Nat::pow10(len - prec)).0;
    let mut exp = exp_min;
    if up {
        coeff = coeff.add(&Nat::one());
        if coeff.to_decimal().len() as u64 > prec {
            coeff = coeff.divrem_small(10).0;
            exp += 1;
        }
    }
    Decimal { neg: d.neg, coeff, exp }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqrt_str(x: f64, prec: u64) -> String {
        Decimal::from_f64(x).sqrt(prec).unwrap().to_sci_string()
    }

    #[test]
    fn square_roots_match_python() {
        // Right-hand sides from CPython 3.11's decimal module.
        assert_eq!(sqrt_str(2.0, 10), "1.414213562");
        assert_eq!(sqrt_str(4.0, 10), "2");
        assert_eq!(sqrt_str(0.25, 5), "0.5");
        assert_eq!(sqrt_str(-0.0, 5), "-0");
        assert_eq!(sqrt_str(1e40, 5), "1.0000E+20");
        assert_eq!(sqrt_str(123456789.0, 3), "1.11E+4");
        assert_eq!(sqrt_str(0.1, 30), "0.316227766016837941976973025885");
        assert_eq!(sqrt_str(1e-7, 3), "0.000316");
        assert_eq!(sqrt_str(99.99999, 3), "10.0");
        assert_eq!(Decimal::from_f64(0.1).to_sci_string(), "0.1000000000000000055511151231257827021181583404541015625");
        assert_eq!(Decimal::from_f64(1e22).to_sci_string(), "10000000000000000000000");
        assert!(Decimal::from_f64(-1.0).sqrt(5).is_none());
    }
}
