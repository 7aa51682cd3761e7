//! A small arbitrary-size unsigned integer, enough for exact decimal and binary
//! conversions, correctly rounded division and fixed-point series at a few thousand bits.

use std::cmp::Ordering;

/// An unsigned integer as little-endian 64-bit limbs, with no high zero limbs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nat(Vec<u64>);

impl Nat {
    pub fn zero() -> Nat {
        Nat(Vec::new())
    }

    pub fn from_u128(v: u128) -> Nat {
        let mut n = Nat(vec![v as u64, (v >> 64) as u64]);
        n.trim();
        n
    }

    pub fn one() -> Nat {
        Nat::from_u128(1)
    }

    fn trim(&mut self) {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of significant bits (0 for zero).
    pub fn bits(&self) -> u64 {
        match self.0.last() {
            None => 0,
            Some(top) => (self.0.len() as u64 - 1) * 64 + (64 - top.leading_zeros() as u64),
        }
    }

    pub fn bit(&self, i: u64) -> bool {
        let limb = (i / 64) as usize;
        limb < self.0.len() && (self.0[limb] >> (i % 64)) & 1 == 1
    }

    pub fn is_odd(&self) -> bool {
        self.bit(0)
    }

    /// Whether any of the lowest `n` bits is set.
    pub fn low_bits_nonzero(&self, n: u64) -> bool {
        let full = (n / 64) as usize;
        if self.0.iter().take(full).any(|&l| l != 0) {
            return true;
        }
        let rest = n % 64;
        rest > 0 && full < self.0.len() && self.0[full] & ((1u64 << rest) - 1) != 0
    }

    /// The value, when it fits in 128 bits.
    pub fn to_u128(&self) -> Option<u128> {
        match self.0.len() {
            0 => Some(0),
            1 => Some(self.0[0] as u128),
            2 => Some(self.0[0] as u128 | (self.0[1] as u128) << 64),
            _ => None,
        }
    }

    pub fn shl(&self, n: u64) -> Nat {
        if self.is_zero() {
            return Nat::zero();
        }
        let (limbs, bits) = ((n / 64) as usize, (n % 64) as u32);
        let mut out = vec![0u64; limbs];
        out.reserve(self.0.len() + 1);
        if bits == 0 {
            out.extend_from_slice(&self.0);
        } else {
            let mut carry = 0u64;
            for &l in &self.0 {
                out.push((l << bits) | carry);
                carry = l >> (64 - bits);
            }
            out.push(carry);
        }
        let mut r = Nat(out);
        r.trim();
        r
    }

    pub fn shr(&self, n: u64) -> Nat {
        let (limbs, bits) = ((n / 64) as usize, (n % 64) as u32);
        if limbs >= self.0.len() {
            return Nat::zero();
        }
        let src = &self.0[limbs..];
        let mut out = Vec::with_capacity(src.len());
        for i in 0..src.len() {
            let lo = src[i] >> bits;
            let hi = if bits == 0 { 0 } else { src.get(i + 1).map_or(0, |h| h << (64 - bits)) };
            out.push(lo | hi);
        }
        let mut r = Nat(out);
        r.trim();
        r
    }

    pub fn add(&self, o: &Nat) -> Nat {
        let (a, b) = if self.0.len() >= o.0.len() { (self, o) } else { (o, self) };
        let mut out = Vec::with_capacity(a.0.len() + 1);
        let mut carry = false;
        for i in 0..a.0.len() {
            let (s1, c1) = a.0[i].overflowing_add(b.0.get(i).copied().unwrap_or(0));
            let (s2, c2) = s1.overflowing_add(carry as u64);
            out.push(s2);
            carry = c1 || c2;
        }
        if carry {
            out.push(1);
        }
        Nat(out)
    }

    /// `self - o`; `o` must not exceed `self`.
    pub fn sub(&self, o: &Nat) -> Nat {
        debug_assert!(*self >= *o);
        let mut out = Vec::with_capacity(self.0.len());
        let mut borrow = false;
        for i in 0..self.0.len() {
            let (d1, b1) = self.0[i].overflowing_sub(o.0.get(i).copied().unwrap_or(0));
            let (d2, b2) = d1.overflowing_sub(borrow as u64);
            out.push(d2);
            borrow = b1 || b2;
        }
        let mut r = Nat(out);
        r.trim();
        r
    }

    pub fn mul(&self, o: &Nat) -> Nat {
        if self.is_zero() || o.is_zero() {
            return Nat::zero();
        }
        let mut out = vec![0u64; self.0.len() + o.0.len()];
        for (i, &a) in self.0.iter().enumerate() {
            let mut carry = 0u128;
            for (j, &b) in o.0.iter().enumerate() {
                let t = a as u128 * b as u128 + out[i + j] as u128 + carry;
                out[i + j] = t as u64;
                carry = t >> 64;
            }
            out[i + o.0.len()] = carry as u64;
        }
        let mut r = Nat(out);
        r.trim();
        r
    }

    pub fn mul_small(&self, m: u64) -> Nat {
        self.mul(&Nat::from_u128(m as u128))
    }

    /// Quotient and remainder by a non-zero `u64`.
    pub fn divrem_small(&self, d: u64) -> (Nat, u64) {
        assert!(d != 0, "division by zero");
        let mut out = vec![0u64; self.0.len()];
        let mut rem = 0u128;
        for i in (0..self.0.len()).rev() {
            let cur = (rem << 64) | self.0[i] as u128;
            out[i] = (cur / d as u128) as u64;
            rem = cur % d as u128;
        }
        let mut q = Nat(out);
        q.trim();
        (q, rem as u64)
    }

    /// Quotient and remainder by a non-zero divisor (binary long division).
    pub fn divrem(&self, d: &Nat) -> (Nat, Nat) {
        assert!(!d.is_zero(), "division by zero");
        if d.0.len() == 1 {
            let (q, r) = self.divrem_small(d.0[0]);
            return (q, Nat::from_u128(r as u128));
        }
        if self < d {
            return (Nat::zero(), self.clone());
        }
        let shift = self.bits() - d.bits();
        let mut rem = self.clone();
        let mut q = vec![0u64; (shift / 64 + 1) as usize];
        let mut sub = d.shl(shift);
        for i in (0..=shift).rev() {
            if rem >= sub {
                rem = rem.sub(&sub);
                q[(i / 64) as usize] |= 1 << (i % 64);
            }
            sub = sub.shr(1);
        }
        let mut q = Nat(q);
        q.trim();
        (q, rem)
    }

    pub fn pow(base: u64, mut e: u64) -> Nat {
        let mut result = Nat::one();
        let mut b = Nat::from_u128(base as u128);
        while e > 0 {
            if e & 1 == 1 {
                result = result.mul(&b);
            }
            e >>= 1;
            if e > 0 {
                b = b.mul(&b);
            }
        }
        result
    }

    pub fn pow10(e: u64) -> Nat {
        Nat::pow(10, e)
    }

    /// `floor(sqrt(self))`.
    pub fn isqrt(&self) -> Nat {
        if self.is_zero() {
            return Nat::zero();
        }
        // Newton's iteration from a power of two above the root decreases monotonically
        // to the floor of the root.
        let mut x = Nat::one().shl(self.bits().div_ceil(2));
        loop {
            let (q, _) = self.divrem(&x);
            let y = x.add(&q).shr(1);
            if y >= x {
                return x;
            }
            x = y;
        }
    }

    /// The decimal digits.
    pub fn to_decimal(&self) -> String {
        if self.is_zero() {
            return "0".into();
        }
        const CHUNK: u64 = 10_000_000_000_000_000_000;
        let mut parts = Vec::new();
        let mut n = self.clone();
        while !n.is_zero() {
            let (q, r) = n.divrem_small(CHUNK);
            parts.push(r);
            n = q;
        }
        let mut out = parts.pop().expect("non-zero").to_string();
        for p in parts.iter().rev() {
            out.push_str(&format!("{p:019}"));
        }
        out
    }
}

impl PartialOrd for Nat {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Nat {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.len().cmp(&other.0.len()).then_with(|| {
            for i in (0..self.0.len()).rev() {
                match self.0[i].cmp(&other.0[i]) {
                    Ordering::Equal => continue,
                    o => return o,
                }
            }
            Ordering::Equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let a = Nat::pow(2, 100);
        assert_eq!(a.to_decimal(), "1267650600228229401496703205376");
        assert_eq!(a.bits(), 101);
        let b = Nat::pow10(25).add(&Nat::from_u128(12345));
        let (q, r) = a.divrem(&b);
        assert_eq!(q.to_decimal(), "126765");
        assert_eq!(q.mul(&b).add(&r), a);
        assert_eq!(Nat::pow10(40).isqrt(), Nat::pow10(20));
        assert_eq!(Nat::pow10(41).isqrt().to_decimal(), "316227766016837933199");
        assert_eq!(a.shr(99).to_decimal(), "2");
        assert_eq!(a.shl(3).shr(103).to_decimal(), "1");
        assert!(Nat::from_u128(8).low_bits_nonzero(4) && !Nat::from_u128(8).low_bits_nonzero(3));
        assert_eq!(Nat::pow10(30).sub(&Nat::one()).to_decimal(), "9".repeat(30));
    }
}
