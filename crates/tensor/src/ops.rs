//! Element-wise ops: unary maps, binary ops and comparisons with NumPy broadcasting,
//! `where`, and scalar affine maps. Floats compute in f32 and round once on write.

use crate::cpu::nn::{fast_exp, silu};
use crate::cpu::{CpuStorage, dispatch_all, dispatch_float, elementwise};
use crate::tensor::check_cpu;
use crate::{DType, Error, Layout, Result, Shape, Tensor, WithDType};

/// Comparison of two elements, giving a U8 tensor of 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    #[inline(always)]
    fn apply<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }
}

macro_rules! unary_ops {
    ($($(#[$doc:meta])* $name:ident => $f:expr;)*) => {
        impl Tensor {
            $($(#[$doc])* pub fn $name(&self) -> Result<Tensor> {
                self.map_f32(stringify!($name), $f)
            })*
        }
    };
}

unary_ops! {
    neg => |x| -x;
    abs => f32::abs;
    exp => f32::exp;
    /// Natural logarithm.
    log => f32::ln;
    sqrt => f32::sqrt;
    /// `1 / sqrt(x)`.
    rsqrt => |x| 1.0 / x.sqrt();
    recip => |x| 1.0 / x;
    sqr => |x| x * x;
    sin => f32::sin;
    cos => f32::cos;
    tanh => f32::tanh;
    relu => |x| x.max(0.0);
    /// `1 / (1 + exp(-x))`.
    sigmoid => |x| 1.0 / (1.0 + fast_exp(-x));
    /// `x * sigmoid(x)`, Qwen2's MLP activation.
    silu => silu;
    /// GELU, tanh approximation.
    gelu => |x| 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh());
}

macro_rules! binary_ops {
    ($($(#[$doc:meta])* $name:ident => $f:expr;)*) => {
        impl Tensor {
            $($(#[$doc])* pub fn $name(&self, rhs: &Tensor) -> Result<Tensor> {
                self.zip_f32(stringify!($name), rhs, $f)
            })*
        }
    };
}

binary_ops! {
    /// `self + rhs`, broadcasting.
    add => |a, b| a + b;
    sub => |a, b| a - b;
    mul => |a, b| a * b;
    div => |a, b| a / b;
    /// Element-wise maximum (NaN wins).
    maximum => |a: f32, b: f32| if a.is_nan() || a > b { a } else { b };
    minimum => |a: f32, b: f32| if a.is_nan() || a < b { a } else { b };
    pow => f32::powf;
}

impl Tensor {
    /// `f` on every element, in f32; float dtypes only.
    pub fn map_f32(&self, op: &'static str, f: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
        let s = self.cpu();
        let out = dispatch_float!(op, &*s, |v| CpuStorage::from(map_float(v, self.layout(), &f)));
        Ok(Tensor::from_storage(out, self.shape().clone()))
    }

    /// `x * mul + add`.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        self.map_f32("affine", move |x| x.mul_add(mul, add))
    }

    pub fn add_scalar(&self, v: f32) -> Result<Tensor> {
        self.map_f32("add_scalar", move |x| x + v)
    }

    pub fn mul_scalar(&self, v: f32) -> Result<Tensor> {
        self.map_f32("mul_scalar", move |x| x * v)
    }

    pub fn powf(&self, e: f32) -> Result<Tensor> {
        self.map_f32("powf", move |x| x.powf(e))
    }

    pub fn clamp(&self, lo: f32, hi: f32) -> Result<Tensor> {
        self.map_f32("clamp", move |x| x.clamp(lo, hi))
    }

    /// Both operands broadcast to their common shape.
    fn broadcast_pair(&self, op: &'static str, rhs: &Tensor) -> Result<(Shape, Layout, Layout)> {
        if self.device() != rhs.device() {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: rhs.device() });
        }
        check_cpu(op, self.device())?;
        if self.dtype() != rhs.dtype() {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: rhs.dtype() });
        }
        let shape = self.shape().broadcast_with(op, rhs.shape())?;
        Ok((shape.clone(), self.layout().broadcast_as(&shape)?, rhs.layout().broadcast_as(&shape)?))
    }

    /// `f(self, rhs)` element-wise in f32 with broadcasting; float dtypes only.
    pub fn zip_f32(&self, op: &'static str, rhs: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
        let (shape, ll, rl) = self.broadcast_pair(op, rhs)?;
        let (a, b) = (self.cpu(), rhs.cpu());
        let out = dispatch_float!(op, &*a, |va| {
            let vb = WithDType::slice(&b).expect("dtypes checked equal");
            CpuStorage::from(zip_float((va, &ll), (vb, &rl), &shape, &f))
        });
        Ok(Tensor::from_storage(out, shape))
    }

    /// Element-wise comparison with broadcasting, any dtype: U8 of 0 and 1.
    pub fn cmp(&self, op: CmpOp, rhs: &Tensor) -> Result<Tensor> {
        let (shape, ll, rl) = self.broadcast_pair("cmp", rhs)?;
        let (a, b) = (self.cpu(), rhs.cpu());
        let out: Vec<u8> = dispatch_all!(&*a, |va| {
            let vb = WithDType::slice(&b).expect("dtypes checked equal");
            elementwise::zip_strided((va, &ll), (vb, &rl), &shape, |x, y| op.apply(x, y) as u8)
        });
        Ok(Tensor::from_storage(out.into(), shape))
    }

    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(CmpOp::Eq, rhs)
    }

    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(CmpOp::Ne, rhs)
    }

    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(CmpOp::Lt, rhs)
    }

    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(CmpOp::Le, rhs)
    }

    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(CmpOp::Gt, rhs)
    }

    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(CmpOp::Ge, rhs)
    }

    /// `self` is a U8 condition: picks `on_true` where it is non-zero, `on_false` elsewhere;
    /// all three broadcast together.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        const OP: &str = "where_cond";
        if self.dtype() != DType::U8 {
            return Err(Error::UnsupportedDType { op: OP, dtype: self.dtype() });
        }
        let (_, tl, fl) = on_true.broadcast_pair(OP, on_false)?;
        let shape = self.shape().broadcast_with(OP, tl.shape())?;
        if self.device() != on_true.device() {
            return Err(Error::DeviceMismatch { op: OP, lhs: self.device(), rhs: on_true.device() });
        }
        let (cl, tl, fl) = (self.layout().broadcast_as(&shape)?, tl.broadcast_as(&shape)?, fl.broadcast_as(&shape)?);
        let (c, t, f) = (self.cpu(), on_true.cpu(), on_false.cpu());
        let cond = u8::slice(&c).expect("checked U8");
        let out = dispatch_all!(&*t, |vt| {
            let vf = WithDType::slice(&f).expect("dtypes checked equal");
            CpuStorage::from(elementwise::where_strided((cond, &cl), (vt, &tl), (vf, &fl), &shape))
        });
        Ok(Tensor::from_storage(out, shape))
    }

    /// `value` where `mask` (U8, broadcast to this shape) is non-zero, this tensor elsewhere.
    pub fn masked_fill(&self, mask: &Tensor, value: f32) -> Result<Tensor> {
        let fill = Tensor::full(value, (), self.dtype(), self.device())?;
        mask.broadcast_as(self.shape())
            .map_err(|_| Error::ShapeMismatch {
                op: "masked_fill",
                lhs: self.shape().clone(),
                rhs: mask.shape().clone(),
            })?
            .where_cond(&fill, self)
    }
}

fn map_float<T: WithDType>(v: &[T], l: &Layout, f: &(impl Fn(f32) -> f32 + Sync)) -> Vec<T> {
    elementwise::map_strided(v, l, |x| T::from_f32(f(x.to_f32())))
}

fn zip_float<T: WithDType>(
    a: (&[T], &Layout),
    b: (&[T], &Layout),
    shape: &Shape,
    f: &(impl Fn(f32, f32) -> f32 + Sync),
) -> Vec<T> {
    elementwise::zip_strided(a, b, shape, |x, y| T::from_f32(f(x.to_f32(), y.to_f32())))
}

impl std::ops::Neg for &Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(self)
    }
}

macro_rules! operator {
    ($trait:ident, $method:ident) => {
        impl std::ops::$trait<&Tensor> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                Tensor::$method(self, rhs)
            }
        }
        impl std::ops::$trait<&Tensor> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                Tensor::$method(&self, rhs)
            }
        }
        impl std::ops::$trait<f32> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: f32) -> Result<Tensor> {
                let r = Tensor::full(rhs, (), self.dtype(), self.device())?;
                Tensor::$method(self, &r)
            }
        }
    };
}
operator!(Add, add);
operator!(Sub, sub);
operator!(Mul, mul);
operator!(Div, div);
