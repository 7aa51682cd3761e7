//! Element-wise ops: unary maps, binary ops and comparisons with NumPy broadcasting,
//! `where`, and scalar affine maps. Floats compute in f32 and round once on write.

use crate::cpu::nn::{fast_exp, silu};
use crate::cpu::{CpuStorage, dispatch_all, dispatch_float, elementwise};
use crate::tensor::check_cpu;
use crate::{DType, Error, Layout, Result, Shape, Tensor, WithDType};

/// Comparison of two elements, giving a U8 tensor of 0 and 1. The discriminants are the
/// codes of kernels/elementwise.cu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Ne = 1,
    Lt = 2,
    Le = 3,
    Gt = 4,
    Ge = 5,
}

/// Element-wise maps with a GPU kernel, by the codes of kernels/elementwise.cu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnaryOp {
    Neg = 0,
    Abs = 1,
    Exp = 2,
    Log = 3,
    Sqrt = 4,
    Rsqrt = 5,
    Recip = 6,
    Sqr = 7,
    Sin = 8,
    Cos = 9,
    Tanh = 10,
    Relu = 11,
    Sigmoid = 12,
    Silu = 13,
    Gelu = 14,
    /// `x * a + b` (one rounding).
    Affine = 15,
    /// `x ^ a`.
    Powf = 16,
    /// `x` clamped into `[a, b]`, NaN kept.
    Clamp = 17,
}

impl UnaryOp {
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Sqr => "sqr",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Relu => "relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Affine => "affine",
            UnaryOp::Powf => "powf",
            UnaryOp::Clamp => "clamp",
        }
    }
}

/// Element-wise binary ops with a GPU kernel, by the codes of kernels/elementwise.cu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
    Maximum = 4,
    Minimum = 5,
    Pow = 6,
    SiluMul = 7,
    SiluBackward = 8,
    SigmoidBackward = 9,
    TanhBackward = 10,
    ClampBackward = 11,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Pow => "pow",
            BinaryOp::SiluMul => "silu_mul",
            BinaryOp::SiluBackward => "silu_backward",
            BinaryOp::SigmoidBackward => "sigmoid_backward",
            BinaryOp::TanhBackward => "tanh_backward",
            BinaryOp::ClampBackward => "clamp_backward",
        }
    }
}

/// `d/dx silu(x) = s (1 + x (1 - s))`, `s = sigmoid(x)`.
pub(crate) fn dsilu(x: f32) -> f32 {
    let s = 1.0 / (1.0 + (-x).exp());
    s * (1.0 + x * (1.0 - s))
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
    ($($(#[$doc:meta])* $name:ident($op:ident) => $f:expr;)*) => {
        impl Tensor {
            $($(#[$doc])* pub fn $name(&self) -> Result<Tensor> {
                self.unary(UnaryOp::$op, 0.0, 0.0, $f)
            })*
        }
    };
}

unary_ops! {
    neg(Neg) => |x| -x;
    abs(Abs) => f32::abs;
    exp(Exp) => f32::exp;
    /// Natural logarithm.
    log(Log) => f32::ln;
    sqrt(Sqrt) => f32::sqrt;
    /// `1 / sqrt(x)`.
    rsqrt(Rsqrt) => |x| 1.0 / x.sqrt();
    recip(Recip) => |x| 1.0 / x;
    sqr(Sqr) => |x| x * x;
    sin(Sin) => f32::sin;
    cos(Cos) => f32::cos;
    tanh(Tanh) => f32::tanh;
    relu(Relu) => |x| x.max(0.0);
    /// `1 / (1 + exp(-x))`.
    sigmoid(Sigmoid) => |x| 1.0 / (1.0 + fast_exp(-x));
    /// `x * sigmoid(x)`, Qwen2's MLP activation.
    silu(Silu) => silu;
    /// GELU, tanh approximation.
    gelu(Gelu) => |x| 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh());
}

macro_rules! binary_ops {
    ($($(#[$doc:meta])* $name:ident($op:ident) => $f:expr;)*) => {
        impl Tensor {
            $($(#[$doc])* pub fn $name(&self, rhs: &Tensor) -> Result<Tensor> {
                self.binary(rhs, BinaryOp::$op, (0.0, 0.0), $f)
            })*
        }
    };
}

binary_ops! {
    /// `self + rhs`, broadcasting.
    add(Add) => |a, b| a + b;
    sub(Sub) => |a, b| a - b;
    mul(Mul) => |a, b| a * b;
    div(Div) => |a, b| a / b;
    /// Element-wise maximum (NaN wins).
    maximum(Maximum) => |a: f32, b: f32| if a.is_nan() || a > b { a } else { b };
    minimum(Minimum) => |a: f32, b: f32| if a.is_nan() || a < b { a } else { b };
    pow(Pow) => f32::powf;
    /// `silu(self) * rhs`, the SwiGLU gate of Qwen2's MLP, in one pass.
    silu_mul(SiluMul) => |g, u| silu(g) * u;
    /// `self * silu'(rhs)`: the gradient `self` through a SiLU whose input was `rhs`.
    silu_backward(SiluBackward) => |g, x| g * dsilu(x);
    /// `self * y (1 - y)`: the gradient through a sigmoid whose output was `rhs = y`.
    sigmoid_backward(SigmoidBackward) => |g, s| g * s * (1.0 - s);
    /// `self * (1 - y^2)`: the gradient through a tanh whose output was `rhs = y`.
    tanh_backward(TanhBackward) => |g, t| g * (1.0 - t * t);
}

impl Tensor {
    /// A named map: the GPU kernel for `op` on CUDA tensors, `f` on the CPU.
    fn unary(&self, op: UnaryOp, a: f32, b: f32, f: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
        if self.device().is_cuda() {
            if !self.dtype().is_float() {
                return Err(Error::UnsupportedDType { op: op.name(), dtype: self.dtype() });
            }
            return crate::cuda::ops::unary(self, op, a, b);
        }
        self.map_f32(op.name(), f)
    }

    /// A named binary op with broadcasting: the GPU kernel on CUDA tensors, `f` on the CPU.
    fn binary(&self, rhs: &Tensor, op: BinaryOp, p: (f32, f32), f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
        if self.device().is_cuda() {
            let (shape, ll, rl) = self.broadcast_pair(op.name(), rhs)?;
            if !self.dtype().is_float() {
                return Err(Error::UnsupportedDType { op: op.name(), dtype: self.dtype() });
            }
            return crate::cuda::ops::binary(self, rhs, op, p, &shape, &ll, &rl);
        }
        self.zip_f32(op.name(), rhs, f)
    }

    /// `f` on every element, in f32; float dtypes only. CPU tensors only (a Rust closure
    /// cannot run on a GPU): GPU code uses the named ops.
    pub fn map_f32(&self, op: &'static str, f: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
        check_cpu(op, self.device())?;
        let s = self.cpu();
        let out = dispatch_float!(op, &*s, |v| CpuStorage::from(map_float(v, self.layout(), &f)));
        Ok(Tensor::from_storage(out, self.shape().clone()))
    }

    /// `x * mul + add`.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Affine, mul, add, move |x| x.mul_add(mul, add))
    }

    pub fn add_scalar(&self, v: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Affine, 1.0, v, move |x| x + v)
    }

    pub fn mul_scalar(&self, v: f32) -> Result<Tensor> {
        // x * v + (-0.0) is exactly x * v, signed zeros included.
        self.unary(UnaryOp::Affine, v, -0.0, move |x| x * v)
    }

    pub fn powf(&self, e: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Powf, e, 0.0, move |x| x.powf(e))
    }

    pub fn clamp(&self, lo: f32, hi: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Clamp, lo, hi, move |x| x.clamp(lo, hi))
    }

    /// The gradient `self` through `clamp(lo, hi)` of `x`: passed where `lo <= x <= hi`
    /// (ends included, as in PyTorch), zero elsewhere.
    pub fn clamp_backward(&self, x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
        self.binary(x, BinaryOp::ClampBackward, (lo, hi), move |g, x| if x >= lo && x <= hi { g } else { 0.0 })
    }

    /// Both operands broadcast to their common shape.
    fn broadcast_pair(&self, op: &'static str, rhs: &Tensor) -> Result<(Shape, Layout, Layout)> {
        if self.device() != rhs.device() {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: rhs.device() });
        }
        if self.dtype() != rhs.dtype() {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: rhs.dtype() });
        }
        let shape = self.shape().broadcast_with(op, rhs.shape())?;
        Ok((shape.clone(), self.layout().broadcast_as(&shape)?, rhs.layout().broadcast_as(&shape)?))
    }

    /// `f(self, rhs)` element-wise in f32 with broadcasting; float dtypes only. CPU tensors
    /// only, as [`Tensor::map_f32`].
    pub fn zip_f32(&self, op: &'static str, rhs: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
        check_cpu(op, self.device())?;
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
        if self.device().is_cuda() {
            return crate::cuda::ops::cmp(self, rhs, op, &shape, &ll, &rl);
        }
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
        if self.device().is_cuda() {
            return crate::cuda::ops::where_cond(self, on_true, on_false, &shape, &cl, &tl, &fl);
        }
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
