//! Shapes, dimension indices (negative counts from the end) and broadcasting rules.

use crate::{Error, Result};

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }

    /// Row-major strides of a contiguous tensor of this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.rank()];
        let mut acc = 1;
        for (s, &d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc *= d;
        }
        strides
    }

    /// Resolves `dim` (negative counts from the end) to an index below `rank`.
    pub fn dim(&self, op: &'static str, dim: isize) -> Result<usize> {
        resolve_dim(op, dim, self.rank())
    }

    /// The size of dimension `dim`.
    pub fn size(&self, op: &'static str, dim: isize) -> Result<usize> {
        Ok(self.0[self.dim(op, dim)?])
    }

    /// NumPy broadcasting: align trailing dimensions, sizes must match or be 1.
    pub fn broadcast_with(&self, op: &'static str, rhs: &Shape) -> Result<Shape> {
        let rank = self.rank().max(rhs.rank());
        let mut out = vec![0; rank];
        for (i, o) in out.iter_mut().enumerate() {
            let l = dim_from_end(&self.0, rank - i);
            let r = dim_from_end(&rhs.0, rank - i);
            *o = match (l, r) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => {
                    return Err(Error::BroadcastIncompatible { op, lhs: self.clone(), rhs: rhs.clone() });
                }
            };
        }
        Ok(Shape(out))
    }
}

fn dim_from_end(dims: &[usize], k: usize) -> usize {
    if k <= dims.len() { dims[dims.len() - k] } else { 1 }
}

pub(crate) fn resolve_dim(op: &'static str, dim: isize, rank: usize) -> Result<usize> {
    let r = rank as isize;
    let d = if dim < 0 { dim + r } else { dim };
    if d < 0 || d >= r {
        return Err(Error::DimOutOfRange { op, dim, rank });
    }
    Ok(d as usize)
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}

impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}

impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}

impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}

impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}

macro_rules! shape_from_tuple {
    ($($name:ident),+) => {
        impl From<($(shape_from_tuple!(@usize $name),)+)> for Shape {
            #[allow(non_snake_case)]
            fn from(($($name,)+): ($(shape_from_tuple!(@usize $name),)+)) -> Self {
                Shape(vec![$($name),+])
            }
        }
    };
    (@usize $name:ident) => { usize };
}
shape_from_tuple!(A);
shape_from_tuple!(A, B);
shape_from_tuple!(A, B, C);
shape_from_tuple!(A, B, C, D);
shape_from_tuple!(A, B, C, D, E);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let a = Shape::from((3, 1, 5));
        let b = Shape::from((4, 1));
        assert_eq!(a.broadcast_with("t", &b).unwrap(), Shape::from((3, 4, 5)));
        let c = Shape::from((3, 2));
        let err = a.broadcast_with("add", &c).unwrap_err().to_string();
        assert!(err.contains("add") && err.contains("[3, 1, 5]") && err.contains("[3, 2]"), "{err}");
    }

    #[test]
    fn negative_dims_count_from_the_end() {
        let s = Shape::from((2, 3, 4));
        assert_eq!(s.dim("t", -1).unwrap(), 2);
        assert_eq!(s.dim("t", 0).unwrap(), 0);
        assert!(s.dim("t", 3).is_err());
        assert!(s.dim("t", -4).is_err());
        assert_eq!(s.contiguous_strides(), vec![12, 4, 1]);
    }
}
