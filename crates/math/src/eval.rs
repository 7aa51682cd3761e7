//! Evaluating a scalar expression: exactly over rationals while the numbers stay rational
//! and fit, in `f64` after that. `2^{10}/4` is the rational 256; `\sqrt{8}` is a float.
//!
//! Every evaluation draws on a [`Budget`] of node visits shared by one whole comparison, so
//! no answer, however large or deeply built, keeps a comparison busy for long.

use thiserror::Error;

use crate::expr::{Constant, Func, Node};
use crate::rational::Rational;

/// The most integer exponent computed exactly; larger ones go through `f64` (where
/// `10^{10^{10}}` overflows and is rejected rather than ground out).
const MAX_EXACT_EXPONENT: i128 = 4096;
/// The largest root index computed exactly (`\sqrt[64]{x}`).
const MAX_EXACT_ROOT: i128 = 64;
/// `n!` past this is infinite in `f64`.
const MAX_FACTORIAL: i128 = 170;
/// `\binom{n}{k}` loops `min(k, n - k)` times at most this often.
const MAX_BINOM_STEPS: i128 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Exact(Rational),
    Approx(f64),
}

impl Value {
    pub fn to_f64(self) -> f64 {
        match self {
            Value::Exact(r) => r.to_f64(),
            Value::Approx(x) => x,
        }
    }

    fn exact(self) -> Option<Rational> {
        match self {
            Value::Exact(r) => Some(r),
            Value::Approx(_) => None,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EvalError {
    #[error("undefined value (division by zero, a root of a negative number, a log of zero...)")]
    Undefined,
    #[error("the value overflows")]
    Overflow,
    #[error("{0} is not a number")]
    NotScalar(&'static str),
    #[error("no value for the variable {0}")]
    Unbound(String),
    #[error("the comparison ran out of its work budget")]
    Budget,
}

/// Node visits left for one comparison.
#[derive(Debug)]
pub struct Budget(u64);

impl Budget {
    pub fn new(visits: u64) -> Budget {
        Budget(visits)
    }

    pub fn spend(&mut self, n: u64) -> Result<(), EvalError> {
        self.0 = self.0.checked_sub(n).ok_or(EvalError::Budget)?;
        Ok(())
    }

    pub fn exhausted(&self) -> bool {
        self.0 == 0
    }
}

/// Values of the free variables.
pub type Env<'a> = &'a [(String, Rational)];

pub fn eval(node: &Node, env: Env, budget: &mut Budget) -> Result<Value, EvalError> {
    budget.spend(1)?;
    match node {
        Node::Num(n) => Ok(match n.exact {
            Some(r) => Value::Exact(r),
            None => Value::Approx(n.approx),
        }),
        Node::Sym(s) => {
            env.iter().find(|(k, _)| k == s).map(|(_, v)| Value::Exact(*v)).ok_or_else(|| EvalError::Unbound(s.clone()))
        }
        Node::Const(Constant::Pi) => Ok(Value::Approx(std::f64::consts::PI)),
        Node::Const(Constant::E) => Ok(Value::Approx(std::f64::consts::E)),
        Node::Const(Constant::Infinity) => Ok(Value::Approx(f64::INFINITY)),
        Node::Neg(a) => Ok(match eval(a, env, budget)? {
            Value::Exact(r) => Value::Exact(-r),
            Value::Approx(x) => Value::Approx(-x),
        }),
        Node::Add(terms) => {
            let mut acc = Value::Exact(Rational::ZERO);
            for t in terms {
                let v = eval(t, env, budget)?;
                acc = binary(acc, v, Rational::checked_add, |a, b| a + b)?;
            }
            Ok(acc)
        }
        Node::Mul(factors) => {
            let mut acc = Value::Exact(Rational::ONE);
            for x in factors {
                let v = eval(x, env, budget)?;
                acc = binary(acc, v, Rational::checked_mul, |a, b| a * b)?;
            }
            Ok(acc)
        }
        Node::Div(a, b) => {
            let (x, y) = (eval(a, env, budget)?, eval(b, env, budget)?);
            if y.to_f64() == 0.0 && y.exact().is_none_or(Rational::is_zero) {
                return Err(EvalError::Undefined);
            }
            binary(x, y, Rational::checked_div, |a, b| a / b)
        }
        Node::Pow(a, b) => {
            let (x, y) = (eval(a, env, budget)?, eval(b, env, budget)?);
            power(x, y)
        }
        Node::Call(func, args) => {
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(a, env, budget)?);
            }
            call(*func, &vals)
        }
        Node::Factorial(a) => factorial(eval(a, env, budget)?),
        Node::Percent(a) => {
            binary(eval(a, env, budget)?, Value::Exact(Rational::HUNDRED), Rational::checked_div, |a, b| a / b)
        }
        Node::PlusMinus(..) => Err(EvalError::NotScalar("a \\pm expression inside a function")),
        Node::Tuple { .. } => Err(EvalError::NotScalar("a tuple")),
        Node::Set(_) | Node::List(_) | Node::Union(_) => Err(EvalError::NotScalar("a set")),
        Node::Matrix(_) => Err(EvalError::NotScalar("a matrix")),
        Node::Relation { .. } => Err(EvalError::NotScalar("a relation")),
        Node::Choice(_) | Node::Text(_) => Err(EvalError::NotScalar("text")),
    }
}

/// A float result: NaN is undefined, and infinity is an overflow unless an operand was
/// already infinite (`\infty + 1`).
fn float(x: f64, inputs: &[f64]) -> Result<Value, EvalError> {
    if x.is_nan() {
        Err(EvalError::Undefined)
    } else if x.is_infinite() && inputs.iter().all(|v| v.is_finite()) {
        Err(EvalError::Overflow)
    } else {
        Ok(Value::Approx(x))
    }
}

fn binary(
    a: Value,
    b: Value,
    exact: fn(Rational, Rational) -> Option<Rational>,
    approx: fn(f64, f64) -> f64,
) -> Result<Value, EvalError> {
    if let (Value::Exact(x), Value::Exact(y)) = (a, b)
        && let Some(r) = exact(x, y)
    {
        return Ok(Value::Exact(r));
    }
    let (x, y) = (a.to_f64(), b.to_f64());
    float(approx(x, y), &[x, y])
}

fn power(base: Value, exp: Value) -> Result<Value, EvalError> {
    if let (Value::Exact(b), Value::Exact(e)) = (base, exp) {
        if b.is_zero() && e.signum() < 0 {
            return Err(EvalError::Undefined);
        }
        if b == Rational::ONE || (b.is_zero() && e.signum() > 0) {
            return Ok(Value::Exact(b));
        }
        let (p, q) = (e.numer(), e.denom());
        if p.abs() <= MAX_EXACT_EXPONENT && q <= MAX_EXACT_ROOT {
            // q fits u32: it is at most MAX_EXACT_ROOT.
            if let Some(r) = b.root(q as u32).and_then(|r| r.pow(p)) {
                return Ok(Value::Exact(r));
            }
        }
        if b.signum() < 0 && q % 2 == 1 {
            // A real odd root of a negative number: (-8)^(1/3) = -2, as a student means it.
            let mag = power(Value::Exact(-b), exp)?.to_f64();
            let sign = if p % 2 == 0 { 1.0 } else { -1.0 };
            return float(sign * mag, &[b.to_f64()]);
        }
    }
    let (x, y) = (base.to_f64(), exp.to_f64());
    let r = x.powf(y);
    if r == 0.0 && x != 0.0 && x.is_finite() && y.is_finite() {
        // 2^{-10^{10}} underflows to 0; it is not 0.
        return Err(EvalError::Overflow);
    }
    float(r, &[x, y])
}

fn int_arg(v: Value) -> Option<i128> {
    v.exact().filter(|r| r.is_integer()).map(Rational::numer)
}

fn factorial(v: Value) -> Result<Value, EvalError> {
    let n = int_arg(v).ok_or(EvalError::Undefined)?;
    if n < 0 {
        return Err(EvalError::Undefined);
    }
    if n > MAX_FACTORIAL {
        return Err(EvalError::Overflow);
    }
    let mut exact = Some(1i128);
    let mut approx = 1f64;
    for k in 2..=n {
        exact = exact.and_then(|e| e.checked_mul(k));
        approx *= k as f64;
    }
    Ok(match exact.and_then(Rational::int) {
        Some(r) => Value::Exact(r),
        None => Value::Approx(approx),
    })
}

fn binom(n: Value, k: Value) -> Result<Value, EvalError> {
    let (n, k) = (int_arg(n).ok_or(EvalError::Undefined)?, int_arg(k).ok_or(EvalError::Undefined)?);
    if n < 0 || k < 0 {
        return Err(EvalError::Undefined);
    }
    if k > n {
        return Ok(Value::Exact(Rational::ZERO));
    }
    let k = k.min(n - k);
    if k > MAX_BINOM_STEPS {
        return Err(EvalError::Overflow);
    }
    // C(n, i) = C(n, i-1) * (n - i + 1) / i stays an integer at every step.
    let mut exact = Some(1i128);
    let mut approx = 1f64;
    for i in 1..=k {
        exact = exact.and_then(|e| e.checked_mul(n - i + 1)).map(|e| e / i);
        approx = approx * (n - i + 1) as f64 / i as f64;
    }
    match exact.and_then(Rational::int) {
        Some(r) => Ok(Value::Exact(r)),
        None => float(approx, &[n as f64, k as f64]),
    }
}

fn call(func: Func, args: &[Value]) -> Result<Value, EvalError> {
    let arg = |i: usize| args.get(i).copied().ok_or(EvalError::Undefined);
    let x = arg(0)?;
    let xf = x.to_f64();
    let r = match func {
        Func::Sqrt => return power(x, Value::Exact(Rational::HALF)),
        Func::Root => {
            let n = arg(1)?;
            let inv = match n.exact() {
                Some(r) if !r.is_zero() => Value::Exact(r.recip().ok_or(EvalError::Undefined)?),
                _ => Value::Approx(1.0 / n.to_f64()),
            };
            return power(x, inv);
        }
        Func::Abs => {
            return Ok(match x {
                Value::Exact(r) => Value::Exact(r.abs()),
                Value::Approx(f) => Value::Approx(f.abs()),
            });
        }
        Func::Binom => return binom(x, arg(1)?),
        Func::Exp if x.exact().is_some_and(Rational::is_zero) => return Ok(Value::Exact(Rational::ONE)),
        Func::Ln if x.exact() == Some(Rational::ONE) => return Ok(Value::Exact(Rational::ZERO)),
        Func::Sin | Func::Tan | Func::Asin | Func::Atan | Func::Sinh | Func::Tanh
            if x.exact().is_some_and(Rational::is_zero) =>
        {
            return Ok(Value::Exact(Rational::ZERO));
        }
        Func::Sin => xf.sin(),
        Func::Cos => xf.cos(),
        Func::Tan => xf.tan(),
        Func::Sec => 1.0 / xf.cos(),
        Func::Csc => 1.0 / xf.sin(),
        Func::Cot => 1.0 / xf.tan(),
        Func::Asin if xf.abs() <= 1.0 => xf.asin(),
        Func::Acos if xf.abs() <= 1.0 => xf.acos(),
        Func::Asin | Func::Acos => return Err(EvalError::Undefined),
        Func::Atan => xf.atan(),
        Func::Sinh => xf.sinh(),
        Func::Cosh => xf.cosh(),
        Func::Tanh => xf.tanh(),
        Func::Ln if xf > 0.0 => xf.ln(),
        Func::LogBase => {
            let b = arg(1)?.to_f64();
            if xf <= 0.0 || b <= 0.0 || b == 1.0 {
                return Err(EvalError::Undefined);
            }
            xf.ln() / b.ln()
        }
        Func::Ln => return Err(EvalError::Undefined),
        Func::Exp => xf.exp(),
    };
    float(r, &[xf])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: i128) -> Node {
        Node::int(n)
    }

    fn ev(n: &Node) -> Result<Value, EvalError> {
        eval(n, &[], &mut Budget::new(1000))
    }

    #[test]
    fn exact_while_rational() {
        let n = Node::Div(Box::new(Node::Pow(Box::new(num(2)), Box::new(num(10)))), Box::new(num(4)));
        assert_eq!(ev(&n), Ok(Value::Exact(Rational::int(256).unwrap())));
        let root = Node::Call(Func::Sqrt, vec![Node::Div(Box::new(num(9)), Box::new(num(4)))]);
        assert_eq!(ev(&root), Ok(Value::Exact(Rational::new(3, 2).unwrap())));
        assert!(matches!(ev(&Node::Call(Func::Sqrt, vec![num(8)])), Ok(Value::Approx(_))));
    }

    #[test]
    fn overflow_and_domain_errors() {
        let tower = Node::Pow(Box::new(num(10)), Box::new(Node::Pow(Box::new(num(10)), Box::new(num(10)))));
        assert_eq!(ev(&tower), Err(EvalError::Overflow));
        assert_eq!(ev(&Node::Div(Box::new(num(1)), Box::new(num(0)))), Err(EvalError::Undefined));
        assert_eq!(ev(&Node::Call(Func::Sqrt, vec![num(-4)])), Err(EvalError::Undefined));
        assert_eq!(ev(&Node::Factorial(Box::new(num(1000)))), Err(EvalError::Overflow));
        let mut tiny = Budget::new(2);
        assert_eq!(eval(&Node::Add(vec![num(1), num(2)]), &[], &mut tiny), Err(EvalError::Budget));
    }

    #[test]
    fn negative_odd_roots_are_real() {
        let cube = Node::Call(Func::Root, vec![num(-8), num(3)]);
        assert_eq!(ev(&cube), Ok(Value::Exact(Rational::int(-2).unwrap())));
        let p = Node::Pow(Box::new(num(-27)), Box::new(Node::Div(Box::new(num(2)), Box::new(num(3)))));
        assert_eq!(ev(&p), Ok(Value::Exact(Rational::int(9).unwrap())));
    }
}
