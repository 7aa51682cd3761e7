//! `MathAPI`: stateless arithmetic, statistics and unit conversions with Python's numeric
//! semantics (`int` against `float`, true division, `round`, `**`), `mpmath` logarithms
//! and `decimal` square roots.
//!
//! Results that Python cannot write as JSON (an `mpf`, an `mpc`, a `Decimal`, a `complex`,
//! an `int` beyond 64 bits) reach the model through `str(dict)` or with all their digits;
//! [`Value`] has no such types, so these results are returned as the finished result text
//! (a `str`, which BFCL passes through unchanged). The same is done for the rare float
//! whose shortest digits are a tie, which Python writes differently (see `py_float_repr`).
//!
//! Known limits: `logarithm` can differ from mpmath where the exact logarithm lies within
//! about 2^-18 ulp of a rounding boundary (mpmath keeps 20 guard bits, this rounds
//! correctly); precisions above 2000 digits (`logarithm`) or 5000 digits
//! (`square_root`) are refused rather than computed; integer sums and products are exact
//! up to 128 bits; `min_value`/`max_value` compare numbers and strings only.

mod decimal;
mod mpf;
mod nat;

use std::cmp::Ordering;

use crate::call::Call;
use crate::env::{Default, Environment, LongContext, Param, bind, opt, req};
use crate::value::{Dict, Value, float_repr};
use crate::vdict;

use decimal::Decimal;
use mpf::Mpf;
use nat::Nat;

const CLASS: &str = "MathAPI";

const FUNCTIONS: &[&str] = &[
    "logarithm",
    "mean",
    "standard_deviation",
    "si_unit_conversion",
    "imperial_si_conversion",
    "add",
    "subtract",
    "multiply",
    "divide",
    "power",
    "square_root",
    "absolute_value",
    "round_number",
    "percentage",
    "min_value",
    "max_value",
    "sum_values",
];

/// The largest `logarithm` precision (decimal digits) computed.
const MAX_LOG_DPS: i64 = 2000;
/// The largest `square_root` precision (decimal digits) computed.
const MAX_SQRT_PREC: i64 = 5000;
/// Python's `sys.get_int_max_str_digits()` default.
const INT_MAX_STR_DIGITS: usize = 4300;

/// A fresh `MathAPI`.
pub fn new() -> Option<Box<dyn Environment>> {
    Some(Box::new(MathApi))
}

/// BFCL's `MathAPI` (no state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MathApi;

/// A Python number: `int` (and `bool`) or `float`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn of(v: &Value) -> Option<Num> {
        match v {
            Value::Bool(b) => Some(Num::Int(*b as i128)),
            Value::Int(i) => Some(Num::Int(*i as i128)),
            Value::Float(x) => Some(Num::Float(*x)),
            _ => None,
        }
    }

    fn f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(x) => x,
        }
    }

    fn add(self, o: Num) -> Num {
        match (self, o) {
            (Num::Int(a), Num::Int(b)) => Num::Int(a + b),
            _ => Num::Float(self.f64() + o.f64()),
        }
    }

    fn sub(self, o: Num) -> Num {
        match (self, o) {
            (Num::Int(a), Num::Int(b)) => Num::Int(a - b),
            _ => Num::Float(self.f64() - o.f64()),
        }
    }

    fn mul(self, o: Num) -> Num {
        match (self, o) {
            (Num::Int(a), Num::Int(b)) => Num::Int(a.saturating_mul(b)),
            _ => Num::Float(self.f64() * o.f64()),
        }
    }

    /// Python's `/` (the caller has excluded a zero divisor).
    fn truediv(self, o: Num) -> f64 {
        match (self, o) {
            (Num::Int(a), Num::Int(b)) => int_truediv(a, b),
            _ => self.f64() / o.f64(),
        }
    }

    fn is_zero(self) -> bool {
        self.f64() == 0.0
    }

    /// Python's `<`/`==`/`>` between numbers (exact for `int` against `float`).
    fn cmp(self, o: Num) -> Option<Ordering> {
        match (self, o) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b),
            (Num::Int(a), Num::Float(b)) => int_float_cmp(a, b),
            (Num::Float(a), Num::Int(b)) => int_float_cmp(b, a).map(Ordering::reverse),
        }
    }
}

fn int_float_cmp(i: i128, f: f64) -> Option<Ordering> {
    let approx = (i as f64).partial_cmp(&f)?;
    if approx != Ordering::Equal {
        return Some(approx);
    }
    // `f` is then an integer within range of i128.
    Some(i.cmp(&(f as i128)))
}

/// `a / b` for Python ints: the correctly rounded quotient (`0 / -n` is `-0.0`).
fn int_truediv(a: i128, b: i128) -> f64 {
    if a == 0 {
        return if b < 0 { -0.0 } else { 0.0 };
    }
    match mpf::div(&Mpf::from_i128(a), &Mpf::from_i128(b), 53, mpf::Rnd::Nearest) {
        Ok(Mpf::Num { neg, man, exp }) => {
            let m = man.to_u128().expect("53-bit mantissa") as f64;
            let x = m * 2f64.powi(exp as i32);
            if neg { -x } else { x }
        }
        _ => 0.0,
    }
}

/// `{"result": n}` as BFCL prints it.
fn result(n: Num) -> Value {
    match n {
        Num::Int(i) => match i64::try_from(i) {
            Ok(i) => vdict! { "result" => i },
            Err(_) => Value::Str(format!("{{\"result\": {i}}}")),
        },
        Num::Float(x) => vdict! { "result" => x },
    }
}

/// `{"result": v}` for an argument returned as it is.
fn result_value(v: &Value) -> Value {
    match v {
        Value::Float(x) => result(Num::Float(*x)),
        other => vdict! { "result" => other.clone() },
    }
}

fn error(msg: &str) -> Value {
    vdict! { "error" => msg }
}

/// `{"result": <big int>}`, or the error Python raises when printing an int with more
/// than 4300 digits.
fn big_int_result(neg: bool, mag: &Nat) -> Result<Value, String> {
    if let Some(v) = mag.to_u128().and_then(|m| i128::try_from(m).ok()) {
        return Ok(result(Num::Int(if neg { -v } else { v })));
    }
    let digits = mag.to_decimal();
    if digits.len() > INT_MAX_STR_DIGITS {
        return Err(int_digits_error());
    }
    Ok(Value::Str(format!("{{\"result\": {}{digits}}}", if neg { "-" } else { "" })))
}

fn int_digits_error() -> String {
    format!(
        "Exceeds the limit ({INT_MAX_STR_DIGITS} digits) for integer string conversion; use \
         sys.set_int_max_str_digits() to increase the limit"
    )
}

/// Python's `sum(numbers)` (3.11: ints summed exactly until the first float, then plain
/// float addition). `None` when an item is not a number (`TypeError`).
fn py_sum(items: &[Value]) -> Option<Num> {
    let mut acc = Num::Int(0);
    for item in items {
        acc = acc.add(Num::of(item)?);
    }
    Some(acc)
}

/// The `numbers` argument as a list: a list or tuple as it is; anything else is treated
/// as Python would treat a non-iterable (a falsy value as empty).
fn numbers_arg(v: &Value) -> Result<&[Value], bool> {
    match v {
        Value::List(items) | Value::Tuple(items) => Ok(items),
        other => Err(other.truthy()),
    }
}

impl MathApi {
    fn logarithm(&self, call: &Call) -> Result<Value, String> {
        const SIG: &[Param] = &[req("value"), req("base"), req("precision")];
        let b = bind(CLASS, call, SIG)?;
        let dps = match b.get("precision") {
            Value::Bool(v) => *v as i64,
            Value::Int(i) => *i,
            Value::Float(x) if x.is_finite() => x.trunc().clamp(-1e18, 1e18) as i64,
            Value::Str(s) => match s.trim().parse::<i64>() {
                Ok(i) => i,
                Err(_) => {
                    return Ok(error(&format!(
                        "invalid literal for int() with base 10: {}",
                        Value::Str(s.clone()).repr()
                    )));
                }
            },
            other => {
                return Ok(error(&format!(
                    "int() argument must be a string, a bytes-like object or a real number, not '{}'",
                    other.type_name()
                )));
            }
        };
        if dps > MAX_LOG_DPS {
            return Err(format!("logarithm: precision above {MAX_LOG_DPS} digits is not supported"));
        }
        let exact = |name: &str| match Num::of(b.get(name)) {
            Some(Num::Int(i)) => Ok(Mpf::from_i128(i)),
            Some(Num::Float(x)) => Ok(Mpf::from_f64(x)),
            None => Err(format!("logarithm: argument '{name}' must be a number")),
        };
        let (value, base) = (exact("value")?, exact("base")?);
        let prec = mpf::dps_to_prec(dps);
        let q = mpf::num_div(&mpf::log(&value, prec), &mpf::log(&base, prec), prec);
        Ok(match q {
            Ok(q) => Value::Str(format!("{{'result': {}}}", mpf::num_repr(&q, prec))),
            Err(mpf::ZeroDivision) => error(""),
        })
    }

    fn mean(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("numbers")])?;
        let items = match numbers_arg(b.get("numbers")) {
            Ok(items) if !items.is_empty() => items,
            Err(true) => return Ok(error("All elements in the list must be numbers")),
            _ => return Ok(error("Cannot calculate mean of an empty list")),
        };
        Ok(match py_sum(items) {
            Some(s) => result(Num::Float(s.truediv(Num::Int(items.len() as i128)))),
            None => error("All elements in the list must be numbers"),
        })
    }

    fn standard_deviation(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("numbers")])?;
        let items = match numbers_arg(b.get("numbers")) {
            Ok(items) if !items.is_empty() => items,
            Err(true) => return Ok(error("All elements in the list must be numbers")),
            _ => return Ok(error("Cannot calculate standard deviation of an empty list")),
        };
        let Some(sum) = py_sum(items) else {
            return Ok(error("All elements in the list must be numbers"));
        };
        let n = Num::Int(items.len() as i128);
        let mean = sum.truediv(n);
        // `(x - mean) ** 2` is float power (libm's `pow`, which overflows to an error).
        let two = std::hint::black_box(2.0f64);
        let mut acc = Num::Int(0);
        for x in items {
            let d = Num::of(x).expect("checked by the sum").f64() - mean;
            let Pow::Real(sq) = py_float_pow(d, two)? else { unreachable!("an even power is real") };
            acc = acc.add(Num::Float(sq));
        }
        Ok(result(Num::Float(acc.truediv(n).sqrt())))
    }

    fn si_unit_conversion(&self, call: &Call) -> Result<Value, String> {
        const SIG: &[Param] = &[req("value"), req("unit_in"), req("unit_out")];
        let b = bind(CLASS, call, SIG)?;
        let Some(value) = Num::of(b.get("value")) else {
            return Ok(error("Value must be a number"));
        };
        let to_meters = |unit: &Value| -> Option<Num> {
            Some(match unit.as_str()? {
                "km" => Num::Int(1000),
                "m" => Num::Int(1),
                "cm" => Num::Float(0.01),
                "mm" => Num::Float(0.001),
                "um" => Num::Float(1e-6),
                "nm" => Num::Float(1e-9),
                _ => return None,
            })
        };
        let (unit_in, unit_out) = (b.get("unit_in"), b.get("unit_out"));
        let (Some(fin), Some(fout)) = (to_meters(unit_in), to_meters(unit_out)) else {
            return Ok(error(&format!(
                "Conversion from '{}' to '{}' is not supported",
                unit_in.py_str(),
                unit_out.py_str()
            )));
        };
        let from_meters = 1.0 / fout.f64();
        Ok(result(value.mul(fin).mul(Num::Float(from_meters))))
    }

    fn imperial_si_conversion(&self, call: &Call) -> Result<Value, String> {
        const SIG: &[Param] = &[req("value"), req("unit_in"), req("unit_out")];
        let b = bind(CLASS, call, SIG)?;
        let Some(value) = Num::of(b.get("value")) else {
            return Ok(error("Value must be a number"));
        };
        let (unit_in, unit_out) = (b.get("unit_in"), b.get("unit_out"));
        if unit_in == unit_out {
            return Ok(result_value(b.get("value")));
        }
        let key = format!("{}_to_{}", unit_in.py_str(), unit_out.py_str());
        let factor = match key.as_str() {
            "cm_to_in" => 0.393701,
            "in_to_cm" => 2.54,
            "m_to_ft" => 3.28084,
            "ft_to_m" => 0.3048,
            "m_to_yd" => 1.09361,
            "yd_to_m" => 0.9144,
            "km_to_miles" => 0.621371,
            "miles_to_km" => 1.60934,
            "kg_to_lb" => 2.20462,
            "lb_to_kg" => 0.453592,
            "celsius_to_fahrenheit" => 1.8,
            "fahrenheit_to_celsius" => 5.0 / 9.0,
            _ => {
                return Ok(error(&format!(
                    "Conversion from '{}' to '{}' is not supported",
                    unit_in.py_str(),
                    unit_out.py_str()
                )));
            }
        };
        let r = match key.as_str() {
            "celsius_to_fahrenheit" => value.mul(Num::Float(factor)).add(Num::Int(32)),
            "fahrenheit_to_celsius" => value.sub(Num::Int(32)).mul(Num::Float(factor)),
            _ => value.mul(Num::Float(factor)),
        };
        Ok(result(r))
    }

    fn binary(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("a"), req("b")])?;
        let (va, vb) = (b.get("a"), b.get("b"));
        let both = Num::of(va).zip(Num::of(vb));
        let numbers = "Both inputs must be numbers";
        Ok(match call.name.as_str() {
            "add" => match (both, va, vb) {
                (Some((x, y)), _, _) => result(x.add(y)),
                (None, Value::Str(x), Value::Str(y)) => vdict! { "result" => format!("{x}{y}") },
                (None, Value::List(x), Value::List(y)) => {
                    vdict! { "result" => Value::List(x.iter().chain(y).cloned().collect()) }
                }
                _ => error(numbers),
            },
            "subtract" => both.map_or_else(|| error(numbers), |(x, y)| result(x.sub(y))),
            "multiply" => both.map_or_else(|| error(numbers), |(x, y)| result(x.mul(y))),
            _ => {
                if Num::of(vb).is_some_and(Num::is_zero) {
                    return Ok(error("Cannot divide by zero"));
                }
                both.map_or_else(|| error(numbers), |(x, y)| result(Num::Float(x.truediv(y))))
            }
        })
    }

    fn power(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("base"), req("exponent")])?;
        let (Some(base), Some(exp)) = (Num::of(b.get("base")), Num::of(b.get("exponent"))) else {
            return Ok(error("Both inputs must be numbers"));
        };
        match (base, exp) {
            (Num::Int(x), Num::Int(e)) if e >= 0 => int_pow(x, e),
            _ => float_pow(base.f64(), exp.f64()),
        }
    }

    fn square_root(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("number"), req("precision")])?;
        let invalid = "Input must be a number or computation resulted in an invalid operation";
        let Some(number) = Num::of(b.get("number")) else {
            return Ok(error(invalid));
        };
        if number.cmp(Num::Int(0)) == Some(Ordering::Less) {
            return Ok(error("Cannot calculate square root of a negative number"));
        }
        let prec = match b.get("precision") {
            Value::Bool(v) => *v as i64,
            Value::Int(i) => *i,
            _ => return Ok(error(invalid)),
        };
        if !(1..=999_999_999_999_999_999).contains(&prec) {
            return Err("valid range for prec is [1, MAX_PREC]".into());
        }
        if prec > MAX_SQRT_PREC {
            return Err(format!("square_root: precision above {MAX_SQRT_PREC} digits is not supported"));
        }
        let d = match number {
            Num::Int(i) => Decimal::from_i128(i),
            Num::Float(x) if x.is_finite() => Decimal::from_f64(x),
            Num::Float(_) => return Ok(error(invalid)),
        };
        Ok(match d.sqrt(prec as u64) {
            Some(r) => Value::Str(format!("{{'result': Decimal('{}')}}", r.to_sci_string())),
            None => error(invalid),
        })
    }

    fn absolute_value(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("number")])?;
        Ok(match Num::of(b.get("number")) {
            Some(Num::Int(i)) => result(Num::Int(i.abs())),
            Some(Num::Float(x)) => result(Num::Float(x.abs())),
            None => error("Input must be a number"),
        })
    }

    fn round_number(&self, call: &Call) -> Result<Value, String> {
        const SIG: &[Param] = &[req("number"), opt("decimal_places", Default::Int(0))];
        let b = bind(CLASS, call, SIG)?;
        let types = "First input must be a number, second input must be an integer";
        let Some(number) = Num::of(b.get("number")) else {
            return Ok(error(types));
        };
        let places = match b.get("decimal_places") {
            Value::None => None,
            Value::Bool(v) => Some(*v as i64),
            Value::Int(i) => Some(*i),
            _ => return Ok(error(types)),
        };
        match (number, places) {
            (Num::Int(i), None) => Ok(result(Num::Int(i))),
            (Num::Int(i), Some(n)) if n >= 0 => Ok(result(Num::Int(i))),
            (Num::Int(i), Some(n)) => Ok(result(Num::Int(round_int(i, n.unsigned_abs())))),
            (Num::Float(x), None) => round_to_int(x),
            (Num::Float(x), Some(n)) => round_float(x, n).map(|r| result(Num::Float(r))),
        }
    }

    fn percentage(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("part"), req("whole")])?;
        if Num::of(b.get("whole")).is_some_and(Num::is_zero) {
            return Ok(error("Whole value cannot be zero"));
        }
        Ok(match (Num::of(b.get("part")), Num::of(b.get("whole"))) {
            (Some(p), Some(w)) => result(Num::Float(p.truediv(w)).mul(Num::Int(100))),
            _ => error("Both inputs must be numbers"),
        })
    }

    fn extremum(&self, call: &Call, want: Ordering, what: &str) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("numbers")])?;
        let items = match numbers_arg(b.get("numbers")) {
            Ok(items) if !items.is_empty() => items,
            Err(true) => return Ok(error("All elements in the list must be numbers")),
            _ => return Ok(error(&format!("Cannot find {what} of an empty list"))),
        };
        let mut best = &items[0];
        for item in &items[1..] {
            let ord = match (Num::of(item), Num::of(best), item, best) {
                (Some(x), Some(y), _, _) => x.cmp(y),
                (None, None, Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
                _ => return Ok(error("All elements in the list must be numbers")),
            };
            if ord == Some(want) {
                best = item;
            }
        }
        Ok(result_value(best))
    }

    fn sum_values(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("numbers")])?;
        let items = match numbers_arg(b.get("numbers")) {
            Ok(items) if !items.is_empty() => items,
            Err(true) => return Ok(error("All elements in the list must be numbers")),
            _ => return Ok(error("Cannot calculate sum of an empty list")),
        };
        Ok(match py_sum(items) {
            Some(s) => result(s),
            None => error("All elements in the list must be numbers"),
        })
    }
}

/// `x ** e` for Python ints with `e >= 0`.
fn int_pow(x: i128, e: i128) -> Result<Value, String> {
    let neg = x < 0 && e % 2 == 1;
    match x.unsigned_abs() {
        0 => return Ok(result(Num::Int((e == 0) as i128))),
        1 => return Ok(result(Num::Int(if neg { -1 } else { 1 }))),
        _ => {}
    }
    // More than 4300 digits (over 14300 bits) cannot be printed.
    let bits_floor = (x.unsigned_abs().ilog2() as u128).saturating_mul(e as u128);
    if bits_floor > 14400 {
        return Err(int_digits_error());
    }
    let mag = Nat::from_u128(x.unsigned_abs());
    let mut r = Nat::one();
    for _ in 0..e {
        r = r.mul(&mag);
    }
    big_int_result(neg, &r)
}

/// What Python's `float.__pow__` gives: a float, or a complex for a negative base and
/// a non-integer exponent.
enum Pow {
    Real(f64),
    Complex,
}

/// Python's `float.__pow__` (with libm's `pow`), its special cases and its errors.
fn py_float_pow(iv: f64, iw: f64) -> Result<Pow, String> {
    let odd = |w: f64| (w.abs() % 2.0) == 1.0;
    let real = |x: f64| Ok(Pow::Real(x));
    if iw == 0.0 {
        return real(1.0);
    }
    if iv.is_nan() {
        return real(iv);
    }
    if iw.is_nan() {
        return real(if iv == 1.0 { 1.0 } else { iw });
    }
    if iw.is_infinite() {
        let a = iv.abs();
        return real(if a == 1.0 {
            1.0
        } else if (iw > 0.0) == (a > 1.0) {
            iw.abs()
        } else {
            0.0
        });
    }
    if iv.is_infinite() {
        return real(if iw > 0.0 {
            if odd(iw) { iv } else { iv.abs() }
        } else if odd(iw) {
            0.0f64.copysign(iv)
        } else {
            0.0
        });
    }
    if iv == 0.0 {
        if iw < 0.0 {
            return Err("0.0 cannot be raised to a negative power".into());
        }
        return real(if odd(iw) { iv } else { 0.0 });
    }
    let mut v = iv;
    let mut negate = false;
    if iv < 0.0 {
        if iw != iw.floor() {
            return Ok(Pow::Complex);
        }
        v = -iv;
        negate = odd(iw);
    }
    if v == 1.0 {
        return real(if negate { -1.0 } else { 1.0 });
    }
    let r = v.powf(iw);
    if r.is_infinite() {
        return Err("(34, 'Numerical result out of range')".into());
    }
    real(if negate { -r } else { r })
}

/// `base ** exponent` for floats (or an int with a negative exponent).
fn float_pow(iv: f64, iw: f64) -> Result<Value, String> {
    match py_float_pow(iv, iw)? {
        Pow::Real(x) => Ok(result(Num::Float(x))),
        Pow::Complex => complex_pow(iv, iw),
    }
}

/// Python's `complex ** complex` for a negative real base and a non-integer real
/// exponent, and the `repr` of the result.
fn complex_pow(a: f64, b: f64) -> Result<Value, String> {
    let vabs = a.hypot(0.0);
    let len = vabs.powf(b);
    let at = 0.0f64.atan2(a);
    let phase = at * b;
    let (re, im) = (len * phase.cos(), len * phase.sin());
    if re.is_infinite() || im.is_infinite() {
        return Err("complex exponentiation".into());
    }
    // `repr(complex)` writes each part with `repr` but without a trailing `.0`.
    let part = |x: f64| {
        let r = float_repr(x);
        r.strip_suffix(".0").map(str::to_owned).unwrap_or(r)
    };
    let text = if re == 0.0 && re.is_sign_positive() {
        format!("{}j", part(im))
    } else {
        let sign = if im.is_sign_negative() && !im.is_nan() { "" } else { "+" };
        format!("({}{sign}{}j)", part(re), part(im))
    };
    Ok(Value::Str(format!("{{'result': {text}}}")))
}

/// `round(i, -k)` for a Python int: to a multiple of `10^k`, half to even.
fn round_int(i: i128, k: u64) -> i128 {
    if k > 38 {
        return 0;
    }
    let p = 10i128.pow(k as u32);
    let (q, r) = (i.div_euclid(p), i.rem_euclid(p));
    let q = match (2 * r).cmp(&p) {
        Ordering::Greater => q + 1,
        Ordering::Equal if q % 2 != 0 => q + 1,
        _ => q,
    };
    q * p
}

/// `round(x)` for a float: the nearest int, half to even.
fn round_to_int(x: f64) -> Result<Value, String> {
    if x.is_nan() {
        return Err("cannot convert float NaN to integer".into());
    }
    if x.is_infinite() {
        return Err("cannot convert float infinity to integer".into());
    }
    let r = x.round_ties_even();
    let d = Decimal::from_f64(r.abs());
    big_int_result(r < 0.0, &d.coeff)
}

/// `round(x, n)` for a float: the exact value rounded half to even at `n` decimal
/// places, read back as the nearest float.
fn round_float(x: f64, n: i64) -> Result<f64, String> {
    if !x.is_finite() || x == 0.0 || n > 323 {
        return Ok(x);
    }
    if n < -308 {
        return Ok(0.0 * x);
    }
    let d = Decimal::from_f64(x.abs());
    // |x| = coeff * 10^exp; the quotient below is |x| * 10^n.
    let shift = d.exp + n;
    let (num, den) = if shift >= 0 {
        (d.coeff.mul(&Nat::pow10(shift as u64)), Nat::one())
    } else {
        (d.coeff.clone(), Nat::pow10((-shift) as u64))
    };
    let (mut q, r) = num.divrem(&den);
    match r.shl(1).cmp(&den) {
        Ordering::Greater => q = q.add(&Nat::one()),
        Ordering::Equal if q.is_odd() => q = q.add(&Nat::one()),
        _ => {}
    }
    let rounded: f64 = format!("{}e{}", q.to_decimal(), -n).parse().expect("a decimal literal");
    if rounded.is_infinite() {
        return Err("rounded value too large to represent".into());
    }
    Ok(if x < 0.0 { -rounded } else { rounded })
}

impl Environment for MathApi {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn load_scenario(&mut self, _scenario: &Dict, _long_context: Option<&LongContext>) -> Result<(), String> {
        Ok(())
    }

    fn functions(&self) -> &'static [&'static str] {
        FUNCTIONS
    }

    fn call(&mut self, call: &Call) -> Result<Value, String> {
        match call.name.as_str() {
            "logarithm" => self.logarithm(call),
            "mean" => self.mean(call),
            "standard_deviation" => self.standard_deviation(call),
            "si_unit_conversion" => self.si_unit_conversion(call),
            "imperial_si_conversion" => self.imperial_si_conversion(call),
            "add" | "subtract" | "multiply" | "divide" => self.binary(call),
            "power" => self.power(call),
            "square_root" => self.square_root(call),
            "absolute_value" => self.absolute_value(call),
            "round_number" => self.round_number(call),
            "percentage" => self.percentage(call),
            "min_value" => self.extremum(call, Ordering::Less, "minimum"),
            "max_value" => self.extremum(call, Ordering::Greater, "maximum"),
            "sum_values" => self.sum_values(call),
            other => Err(format!("'MathAPI' object has no attribute '{other}'")),
        }
    }

    fn state(&self) -> Dict {
        Dict::new()
    }

    fn box_clone(&self) -> Box<dyn Environment> {
        Box::new(*self)
    }
}

#[cfg(test)]
mod tests;
