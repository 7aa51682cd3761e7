//! A plain reference: n-dimensional arrays of f64 indexed element by element, with every
//! op written as the loop its definition states. Slow and obviously right.
#![allow(dead_code)]

use artist_tensor::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug)]
pub struct Nd {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

pub fn count(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Every multi-index of `shape` in row-major order.
pub fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let n = count(shape);
    (0..n)
        .map(|mut flat| {
            let mut idx = vec![0; shape.len()];
            for d in (0..shape.len()).rev() {
                idx[d] = flat % shape[d];
                flat /= shape[d];
            }
            idx
        })
        .collect()
}

impl Nd {
    pub fn new(shape: &[usize], data: Vec<f64>) -> Nd {
        assert_eq!(count(shape), data.len());
        Nd { shape: shape.to_vec(), data }
    }

    pub fn from_fn(shape: &[usize], f: impl Fn(&[usize]) -> f64) -> Nd {
        Nd::new(shape, indices(shape).iter().map(|i| f(i)).collect())
    }

    pub fn random(shape: &[usize], seed: u64) -> Nd {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Nd::new(shape, (0..count(shape)).map(|_| rng.random_range(-2.0..2.0f32) as f64).collect())
    }

    pub fn at(&self, idx: &[usize]) -> f64 {
        let mut flat = 0;
        for (d, &i) in idx.iter().enumerate() {
            flat = flat * self.shape[d] + i;
        }
        self.data[flat]
    }

    /// The same values rounded through bf16, as a bf16 tensor would hold them: through f32,
    /// as `tensor()` builds one. (`half`'s direct f64 -> bf16 rounding is not round-to-nearest
    /// for every input: 0xbfd28004 as an f64 rounds down there, up through f32.)
    pub fn round_bf16(&self) -> Nd {
        Nd::new(&self.shape, self.data.iter().map(|&x| artist_tensor::bf16::from_f32(x as f32).to_f64()).collect())
    }

    pub fn tensor(&self, dtype: DType) -> Tensor {
        let v: Vec<f32> = self.data.iter().map(|&x| x as f32).collect();
        Tensor::from_vec(v, self.shape.clone(), Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    pub fn map(&self, f: impl Fn(f64) -> f64) -> Nd {
        Nd::new(&self.shape, self.data.iter().map(|&x| f(x)).collect())
    }

    pub fn permute(&self, order: &[usize]) -> Nd {
        let shape: Vec<usize> = order.iter().map(|&o| self.shape[o]).collect();
        Nd::from_fn(&shape, |i| {
            let mut src = vec![0; i.len()];
            for (k, &o) in order.iter().enumerate() {
                src[o] = i[k];
            }
            self.at(&src)
        })
    }

    pub fn transpose(&self, a: usize, b: usize) -> Nd {
        let mut order: Vec<usize> = (0..self.shape.len()).collect();
        order.swap(a, b);
        self.permute(&order)
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Nd {
        let mut shape = self.shape.clone();
        shape[dim] = len;
        Nd::from_fn(&shape, |i| {
            let mut src = i.to_vec();
            src[dim] += start;
            self.at(&src)
        })
    }

    /// NumPy broadcasting of two shapes, or None.
    pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
        let r = a.len().max(b.len());
        (0..r)
            .map(|i| {
                let x = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
                let y = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
                if x == y || y == 1 {
                    Some(x)
                } else if x == 1 {
                    Some(y)
                } else {
                    None
                }
            })
            .collect()
    }

    /// The element that broadcasting maps output index `i` to.
    pub fn at_broadcast(&self, i: &[usize]) -> f64 {
        let off = i.len() - self.shape.len();
        let idx: Vec<usize> =
            self.shape.iter().enumerate().map(|(d, &s)| if s == 1 { 0 } else { i[off + d] }).collect();
        self.at(&idx)
    }

    pub fn zip(&self, other: &Nd, f: impl Fn(f64, f64) -> f64) -> Nd {
        let shape = Nd::broadcast_shape(&self.shape, &other.shape).expect("broadcastable");
        Nd::from_fn(&shape, |i| f(self.at_broadcast(i), other.at_broadcast(i)))
    }

    /// Folds dimension `dim` away (keeping it with size 1).
    pub fn fold(&self, dim: usize, f: impl Fn(&[f64]) -> f64) -> Nd {
        let mut shape = self.shape.clone();
        shape[dim] = 1;
        Nd::from_fn(&shape, |i| {
            let mut idx = i.to_vec();
            let line: Vec<f64> = (0..self.shape[dim])
                .map(|k| {
                    idx[dim] = k;
                    self.at(&idx)
                })
                .collect();
            f(&line)
        })
    }

    /// Applies `f` to every line along `dim`, which returns a line of the same length.
    pub fn lines(&self, dim: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> Nd {
        let mut out = self.clone();
        let mut shape = self.shape.clone();
        shape[dim] = 1;
        for i in indices(&shape) {
            let mut idx = i.clone();
            let line: Vec<f64> = (0..self.shape[dim])
                .map(|k| {
                    idx[dim] = k;
                    self.at(&idx)
                })
                .collect();
            for (k, v) in f(&line).into_iter().enumerate() {
                idx[dim] = k;
                let mut flat = 0;
                for (d, &j) in idx.iter().enumerate() {
                    flat = flat * self.shape[d] + j;
                }
                out.data[flat] = v;
            }
        }
        out
    }

    pub fn matmul(&self, other: &Nd) -> Nd {
        let (r, s) = (self.shape.len(), other.shape.len());
        let (m, k, n) = (self.shape[r - 2], self.shape[r - 1], other.shape[s - 1]);
        let batch = Nd::broadcast_shape(&self.shape[..r - 2], &other.shape[..s - 2]).expect("batch broadcast");
        let mut shape = batch.clone();
        shape.extend([m, n]);
        Nd::from_fn(&shape, |i| {
            let b = &i[..i.len() - 2];
            let (row, col) = (i[i.len() - 2], i[i.len() - 1]);
            (0..k)
                .map(|p| {
                    let mut li: Vec<usize> = b.to_vec();
                    li.extend([row, p]);
                    let mut ri: Vec<usize> = b.to_vec();
                    ri.extend([p, col]);
                    self.at_broadcast(&li) * other.at_broadcast(&ri)
                })
                .sum()
        })
    }
}

/// Asserts `got` equals `want` elementwise within `atol + rtol * |want|`.
#[track_caller]
pub fn assert_close(got: &Tensor, want: &Nd, rtol: f64, atol: f64) {
    assert_eq!(got.dims(), &want.shape[..], "shape");
    let g = got.to_f32_vec().unwrap();
    for (i, (&a, &b)) in g.iter().zip(&want.data).enumerate() {
        let a = a as f64;
        let ok = (a - b).abs() <= atol + rtol * b.abs() || (a.is_nan() && b.is_nan()) || a == b;
        assert!(ok, "element {i} (of {}): got {a}, want {b}", g.len());
    }
}

/// f32 and bf16 tolerances for results computed in f32 from exact inputs.
pub const F32_TOL: (f64, f64) = (1e-5, 1e-6);
pub const BF16_TOL: (f64, f64) = (1e-2, 1e-2);
