//! CPython's `random.Random`, bit for bit, for the parts the environments use.
//!
//! Four environments draw IDs, tokens and sensor readings from `random.Random(seed)`; the
//! model's instance and the ground truth's instance agree only when both draw the same
//! numbers in the same order, and a booking ID the model read must equal the one the
//! reference produced. So this is CPython's MT19937 with its seeding (`init_by_array` over
//! the seed's 32-bit words), `random()` (53 bits from two draws), `getrandbits`,
//! `randint` (rejection sampling on `n.bit_length()` bits) and `uniform`.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl std::fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PyRandom {{ index: {} }}", self.index)
    }
}

impl PyRandom {
    /// `random.Random(seed)` for an integer seed (its absolute value, as CPython uses).
    pub fn new(seed: i64) -> Self {
        let mut n = seed.unsigned_abs();
        let mut key = Vec::new();
        while n > 0 {
            key.push(n as u32);
            n >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        let mut r = PyRandom { mt: [0; N], index: N };
        r.init_genrand(19_650_218);
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    fn genrand_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.mt[k] & UPPER_MASK) | (self.mt[(k + 1) % N] & LOWER_MASK);
                let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
                self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random.random()`: a float in [0, 1) with 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = (self.genrand_u32() >> 5) as f64;
        let b = (self.genrand_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `random.getrandbits(k)` for k <= 64: little-endian 32-bit words, the last one
    /// shifted down to its remaining bits.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits supports at most 64 bits here");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return (self.genrand_u32() >> (32 - k)) as u64;
        }
        let low = self.genrand_u32() as u64;
        let high = (self.genrand_u32() >> (64 - k)) as u64;
        low | (high << 32)
    }

    /// `random.randint(a, b)`: an integer in [a, b], both ends included.
    pub fn randint(&mut self, a: i64, b: i64) -> i64 {
        assert!(b >= a, "randint: empty range");
        let n = (b - a) as u64 + 1;
        let k = 64 - n.leading_zeros();
        let mut r = self.getrandbits(k);
        while r >= n {
            r = self.getrandbits(k);
        }
        a + r as i64
    }

    /// `random.uniform(a, b)`.
    pub fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3.11:
    //   r = random.Random(200191); [r.randint(10000, 99999) for _ in range(3)]
    //   r = random.Random(141053); r.randint(100000000000, 999999999999); r.uniform(-10.0, 40.0)
    //   r = random.Random(1053520); r.random()
    //   r = random.Random(0); r.getrandbits(64)
    #[test]
    fn matches_cpython() {
        let mut r = PyRandom::new(200191);
        let got: Vec<i64> = (0..3).map(|_| r.randint(10000, 99999)).collect();
        assert_eq!(got, EXPECT_MESSAGE_IDS);
        let mut r = PyRandom::new(141053);
        assert_eq!(r.randint(100_000_000_000, 999_999_999_999), EXPECT_CARD);
        assert_eq!(r.uniform(-10.0, 40.0).to_bits(), EXPECT_UNIFORM.to_bits());
        let mut r = PyRandom::new(1053520);
        assert_eq!(r.random().to_bits(), EXPECT_RANDOM.to_bits());
        let mut r = PyRandom::new(0);
        assert_eq!(r.getrandbits(64), EXPECT_BITS64);
    }

    include!("pyrandom_expected.rs");
}
