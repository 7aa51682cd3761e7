//! Python values, as the BFCL environments see and return them.
//!
//! BFCL's scoring is defined in Python terms: a call's result becomes a string by
//! `json.dumps` (dicts) or `str()` (everything else), and two environments have the same
//! state when their public attributes are `==`. [`Value`] carries exactly the distinctions
//! those rules can observe: `int` against `float` (`str(3)` is `3`, `str(3.0)` is `3.0`),
//! list against tuple, insertion-ordered dicts, and objects (a `File` is never equal to a
//! `Directory`), and implements Python's `==`, `repr`, `str` and `json.dumps` on them.

use indexmap::IndexMap;
use std::fmt::Write as _;

/// A dict key. Python dicts here are keyed by strings or ints (`1 == 1.0` never arises:
/// float keys do not occur in the environments).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Int(i64),
    Str(String),
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key::Str(s.to_owned())
    }
}
impl From<String> for Key {
    fn from(s: String) -> Self {
        Key::Str(s)
    }
}
impl From<i64> for Key {
    fn from(i: i64) -> Self {
        Key::Int(i)
    }
}

impl Key {
    pub fn to_value(&self) -> Value {
        match self {
            Key::Int(i) => Value::Int(*i),
            Key::Str(s) => Value::Str(s.clone()),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Key::Str(s) => Some(s),
            Key::Int(_) => None,
        }
    }
}

/// An insertion-ordered dict, as Python's.
pub type Dict = IndexMap<Key, Value>;

/// A Python value.
#[derive(Debug, Clone, Default)]
pub enum Value {
    #[default]
    None,
    /// Python's `...` (upstream's long-context watch list really holds one).
    Ellipsis,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// A `set`: equal to another set with the same members in any order.
    Set(Vec<Value>),
    Dict(Dict),
    /// An instance of a class whose `__eq__` compares the fields listed here (the
    /// file system's `File` and `Directory`). Equal when the class and every field are.
    Object {
        class: &'static str,
        fields: Dict,
    },
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i as i64)
    }
}
impl From<usize> for Value {
    fn from(i: usize) -> Self {
        Value::Int(i as i64)
    }
}
impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Value::Str(s.clone())
    }
}
impl From<Dict> for Value {
    fn from(d: Dict) -> Self {
        Value::Dict(d)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::List(v.into_iter().map(Into::into).collect())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::None, Into::into)
    }
}

/// Builds a [`Dict`] from `key => value` pairs, in order:
/// `dict! { "status" => true, "count" => 3 }`.
#[macro_export]
macro_rules! dict {
    () => { $crate::value::Dict::new() };
    ($($k:expr => $v:expr),+ $(,)?) => {{
        let mut d = $crate::value::Dict::new();
        $( d.insert($crate::value::Key::from($k), $crate::value::Value::from($v)); )+
        d
    }};
}

/// `Value::Dict(dict! { .. })`.
#[macro_export]
macro_rules! vdict {
    ($($t:tt)*) => { $crate::value::Value::Dict($crate::dict!($($t)*)) };
}

impl PartialEq for Value {
    /// Python's `==`: `1 == 1.0 == True`, lists equal element-wise (never equal to a
    /// tuple), dicts equal whatever their order, `nan != nan`.
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (None, None) | (Ellipsis, Ellipsis) => true,
            (Str(a), Str(b)) => a == b,
            (List(a), List(b)) | (Tuple(a), Tuple(b)) => a == b,
            (Dict(a), Dict(b)) => dict_eq(a, b),
            (Set(a), Set(b)) => a.len() == b.len() && a.iter().all(|x| b.contains(x)),
            (Object { class: ca, fields: fa }, Object { class: cb, fields: fb }) => ca == cb && dict_eq(fa, fb),
            (a, b) => match (a.as_number(), b.as_number()) {
                (Some(x), Some(y)) => x.eq(y),
                _ => false,
            },
        }
    }
}

fn dict_eq(a: &Dict, b: &Dict) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v == w))
}

/// A number, for Python's mixed int/float comparisons.
#[derive(Debug, Clone, Copy)]
pub enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn eq(self, other: Number) -> bool {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a == b,
            (Number::Int(a), Number::Float(b)) | (Number::Float(b), Number::Int(a)) => {
                // Exact, as Python compares int with float.
                b.is_finite() && b.fract() == 0.0 && (b as i128) == a as i128 && b.abs() < 9.3e18
            }
            (Number::Float(a), Number::Float(b)) => a == b,
        }
    }
    pub fn to_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(x) => x,
        }
    }
}

impl Value {
    /// `int`, `float` or `bool` as a number (Python's `bool` is an `int`).
    pub fn as_number(&self) -> Option<Number> {
        match self {
            Value::Bool(b) => Some(Number::Int(*b as i64)),
            Value::Int(i) => Some(Number::Int(*i)),
            Value::Float(x) => Some(Number::Float(*x)),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        self.as_number().map(Number::to_f64)
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => Some(v),
            _ => None,
        }
    }
    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }

    /// Python's type name, for error messages (`str`, `int`, `NoneType`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Ellipsis => "ellipsis",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Set(_) => "set",
            Value::Dict(_) => "dict",
            Value::Object { class, .. } => class,
        }
    }

    /// Python truthiness.
    pub fn truthy(&self) -> bool {
        match self {
            Value::None => false,
            Value::Ellipsis => true,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(x) => *x != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => !v.is_empty(),
            Value::Dict(d) => !d.is_empty(),
            Value::Object { .. } => true,
        }
    }

    /// `repr(value)`.
    pub fn repr(&self) -> String {
        let mut out = String::new();
        write_repr(&mut out, self);
        out
    }

    /// `str(value)`: a string is itself, everything else its `repr`.
    pub fn py_str(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Float(x) => float_repr(*x),
            other => other.repr(),
        }
    }

    /// How BFCL turns a call's result into the text the model reads and the checker
    /// compares: a `str` as it is, a `dict` through `json.dumps` (falling back to `str()`
    /// when it holds an object), anything else through `str()`.
    pub fn to_result_string(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Dict(_) => json_dumps(self).unwrap_or_else(|| self.py_str()),
            other => other.py_str(),
        }
    }

    /// A JSON view of the value for readers outside Python (a user program reading an
    /// environment's state): tuples and sets as arrays, dict keys as text, an object as its
    /// fields with its class under `"__class__"`, `...` as `"..."`, and a float JSON cannot
    /// hold (`nan`, `inf`) as its repr.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        let dict = |d: &Dict| -> serde_json::Map<String, J> {
            d.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Key::Str(s) => s.clone(),
                        Key::Int(i) => i.to_string(),
                    };
                    (key, v.to_json())
                })
                .collect()
        };
        match self {
            Value::None => J::Null,
            Value::Ellipsis => J::String("...".into()),
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(x) => serde_json::Number::from_f64(*x).map_or_else(|| J::String(float_repr(*x)), J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::List(items) | Value::Tuple(items) | Value::Set(items) => {
                J::Array(items.iter().map(Value::to_json).collect())
            }
            Value::Dict(d) => J::Object(dict(d)),
            Value::Object { class, fields } => {
                let mut m = serde_json::Map::new();
                m.insert("__class__".into(), J::String((*class).into()));
                m.extend(dict(fields));
                J::Object(m)
            }
        }
    }

    /// Converts parsed JSON (a scenario, a tool call's arguments) as Python's `json.loads`
    /// does: integers stay `int`, numbers with a fraction or exponent become `float`.
    pub fn from_json(json: &serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::None,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else if let Some(u) = n.as_u64() {
                    // Beyond i64: Python keeps it exact; the environments never meet one.
                    Value::Float(u as f64)
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => {
                Value::Dict(o.iter().map(|(k, v)| (Key::Str(k.clone()), Value::from_json(v))).collect())
            }
        }
    }

    /// Parses the tagged JSON that `scripts/make_bfcl_traces.py` writes for environment
    /// state: plain JSON for `None`/bool/int/float/str/list/str-keyed dict, and
    /// `{"$tuple": [..]}`, `{"$set": [..]}`, `{"$ellipsis": true}`, `{"$dict": [[k, v], ..]}` (non-string keys),
    /// `{"$float": "nan"|"inf"|"-inf"}`, `{"$object": class, "fields": {..}}`.
    pub fn from_tagged_json(json: &serde_json::Value) -> Result<Value, String> {
        Ok(match json {
            serde_json::Value::Array(a) => {
                Value::List(a.iter().map(Value::from_tagged_json).collect::<Result<_, _>>()?)
            }
            serde_json::Value::Object(o) => {
                if o.contains_key("$ellipsis") {
                    Value::Ellipsis
                } else if let Some(t) = o.get("$set") {
                    match Value::from_tagged_json(t)? {
                        Value::List(v) => Value::Set(v),
                        _ => return Err("$set must hold a list".into()),
                    }
                } else if let Some(t) = o.get("$tuple") {
                    match Value::from_tagged_json(t)? {
                        Value::List(v) => Value::Tuple(v),
                        _ => return Err("$tuple must hold a list".into()),
                    }
                } else if let Some(f) = o.get("$float") {
                    match f.as_str() {
                        Some("nan") => Value::Float(f64::NAN),
                        Some("inf") => Value::Float(f64::INFINITY),
                        Some("-inf") => Value::Float(f64::NEG_INFINITY),
                        _ => return Err(format!("bad $float {f}")),
                    }
                } else if let Some(pairs) = o.get("$dict") {
                    let mut d = Dict::new();
                    for pair in pairs.as_array().ok_or("$dict must hold a list")? {
                        let pair = pair.as_array().filter(|p| p.len() == 2).ok_or("bad $dict pair")?;
                        let key = match Value::from_tagged_json(&pair[0])? {
                            Value::Int(i) => Key::Int(i),
                            Value::Str(s) => Key::Str(s),
                            other => return Err(format!("unsupported dict key {}", other.repr())),
                        };
                        d.insert(key, Value::from_tagged_json(&pair[1])?);
                    }
                    Value::Dict(d)
                } else if let Some(class) = o.get("$object") {
                    let class = class.as_str().ok_or("$object must name a class")?;
                    let class: &'static str = Box::leak(class.to_owned().into_boxed_str());
                    let fields = match Value::from_tagged_json(o.get("fields").ok_or("$object without fields")?)? {
                        Value::Dict(d) => d,
                        _ => return Err("$object fields must be a dict".into()),
                    };
                    Value::Object { class, fields }
                } else {
                    Value::Dict(
                        o.iter()
                            .map(|(k, v)| Ok((Key::Str(k.clone()), Value::from_tagged_json(v)?)))
                            .collect::<Result<_, String>>()?,
                    )
                }
            }
            other => Value::from_json(other),
        })
    }
}

/// `repr(float)`: the shortest digits that round-trip, in fixed notation when the decimal
/// exponent is in -4..16 (`0.0001`, `1e-05`, `1e+16`), always with a `.0` or an exponent.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digit count: "-1.2345e-5". Where two
    // strings of that length are equally close, Python takes the even one; formatting to
    // that many digits rounds the exact value half-to-even, so prefer it when it reads back.
    let shortest = format!("{x:e}");
    let digits_len = shortest.split_once('e').map_or(1, |(m, _)| m.chars().filter(char::is_ascii_digit).count());
    let exact = format!("{:.*e}", digits_len.saturating_sub(1), x);
    let sci = if exact.parse::<f64>().ok() == Some(x) { exact } else { shortest };
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1; // value = 0.DIGITS x 10^decpt
    if (-3..=16).contains(&decpt) {
        let n = digits.len() as i32;
        let body = if decpt <= 0 {
            format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
        } else if decpt >= n {
            format!("{}{}.0", digits, "0".repeat((decpt - n) as usize))
        } else {
            format!("{}.{}", &digits[..decpt as usize], &digits[decpt as usize..])
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let e = decpt - 1;
        format!("{sign}{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    }
}

/// `repr(str)`: single quotes unless the text has a `'` and no `"`; printable Unicode kept.
pub fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_printable(c) => out.push(c),
            c => {
                let u = c as u32;
                if u < 0x100 {
                    let _ = write!(out, "\\x{u:02x}");
                } else if u < 0x10000 {
                    let _ = write!(out, "\\u{u:04x}");
                } else {
                    let _ = write!(out, "\\U{u:08x}");
                }
            }
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable` for one character, closely enough for the text these
/// environments hold: control characters, the Latin-1 gap, separators other than the
/// space, format characters and surrogates are not printable.
fn is_printable(c: char) -> bool {
    let u = c as u32;
    !(u < 0x20
        || (0x7f..0xa1).contains(&u)
        || u == 0xad
        || (0x2000..=0x200f).contains(&u)
        || (0x2028..=0x202f).contains(&u)
        || (0x205f..=0x206f).contains(&u)
        || u == 0x3000
        || u == 0xfeff
        || (0xfff9..=0xfffb).contains(&u)
        || (0xe000..=0xf8ff).contains(&u))
}

fn write_repr(out: &mut String, v: &Value) {
    match v {
        Value::None => out.push_str("None"),
        Value::Ellipsis => out.push_str("Ellipsis"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(x) => out.push_str(&float_repr(*x)),
        Value::Str(s) => out.push_str(&str_repr(s)),
        Value::List(items) => {
            out.push('[');
            write_items(out, items);
            out.push(']');
        }
        Value::Tuple(items) => {
            out.push('(');
            write_items(out, items);
            if items.len() == 1 {
                out.push(',');
            }
            out.push(')');
        }
        Value::Set(items) if items.is_empty() => out.push_str("set()"),
        Value::Set(items) => {
            out.push('{');
            write_items(out, items);
            out.push('}');
        }
        Value::Dict(d) => {
            out.push('{');
            for (i, (k, v)) in d.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &k.to_value());
                out.push_str(": ");
                write_repr(out, v);
            }
            out.push('}');
        }
        Value::Object { class, fields } => object_repr(out, class, fields),
    }
}

/// The `__repr__` of the file system's objects; other classes get Python's default shape.
fn object_repr(out: &mut String, class: &str, fields: &Dict) {
    let field = |name: &str| fields.get(&Key::from(name)).map(Value::py_str).unwrap_or_default();
    match class {
        "File" => {
            let _ = write!(out, "<<File: {}, Content: {}>>", field("name"), field("content"));
        }
        "Directory" => {
            // The parent is not part of the state; `contents` is a dict of objects.
            let _ = write!(out, "<Directory: {}, Contents: ", field("name"));
            match fields.get(&Key::from("contents")) {
                Some(c) => write_repr(out, c),
                None => out.push_str("{}"),
            }
            out.push('>');
        }
        _ => {
            let _ = write!(out, "<{class} object>");
        }
    }
}

fn write_items(out: &mut String, items: &[Value]) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(out, item);
    }
}

/// `json.dumps(value)` with Python's defaults (`", "` and `": "` separators, non-ASCII
/// escaped, `NaN`/`Infinity` allowed). `None` when the value holds an object, where Python
/// raises `TypeError`.
pub fn json_dumps(v: &Value) -> Option<String> {
    let mut out = String::new();
    write_json(&mut out, v).then_some(out)
}

fn write_json(out: &mut String, v: &Value) -> bool {
    match v {
        Value::None => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(x) => out.push_str(&json_float(*x)),
        Value::Str(s) => json_str(out, s),
        Value::List(items) | Value::Tuple(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                if !write_json(out, item) {
                    return false;
                }
            }
            out.push(']');
        }
        Value::Dict(d) => {
            out.push('{');
            for (i, (k, v)) in d.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                match k {
                    Key::Str(s) => json_str(out, s),
                    Key::Int(n) => {
                        let _ = write!(out, "\"{n}\"");
                    }
                }
                out.push_str(": ");
                if !write_json(out, v) {
                    return false;
                }
            }
            out.push('}');
        }
        Value::Object { .. } | Value::Set(_) | Value::Ellipsis => return false,
    }
    true
}

fn json_float(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else {
        float_repr(x)
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        // Each right-hand side is what CPython 3.11 prints for `repr(x)`.
        let cases: &[(f64, &str)] = &[
            (0.1, "0.1"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (100.0, "100.0"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e17, "1.2345e+17"),
            (123456.789, "123456.789"),
            (0.30000000000000004, "0.30000000000000004"),
            (2.0 / 3.0, "0.6666666666666666"),
            // Ties between two shortest strings go to the even digit, as in CPython.
            (2.9802322387695312e-08, "2.9802322387695312e-08"),
            (821268519255032.0 + 0.25, "821268519255032.2"),
            (-0.0, "-0.0"),
            (f64::INFINITY, "inf"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(*x), *want, "repr({x:e})");
        }
    }

    #[test]
    fn repr_and_json_match_python() {
        let v = vdict! {
            "name" => "it's",
            "n" => 3,
            "x" => 2.0,
            "ok" => true,
            "none" => Value::None,
            "list" => vec![Value::from("a\nb"), Value::from(1)],
            "uni" => "café ✓",
        };
        assert_eq!(
            v.repr(),
            r#"{'name': "it's", 'n': 3, 'x': 2.0, 'ok': True, 'none': None, 'list': ['a\nb', 1], 'uni': 'café ✓'}"#
        );
        assert_eq!(
            v.to_result_string(),
            r#"{"name": "it's", "n": 3, "x": 2.0, "ok": true, "none": null, "list": ["a\nb", 1], "uni": "caf\u00e9 \u2713"}"#
        );
        assert_eq!(Value::Tuple(vec![Value::from(1)]).repr(), "(1,)");
        assert_eq!(str_repr("a'b\"c"), r#"'a\'b"c'"#);
        assert_eq!(str_repr("\u{1}"), r"'\x01'");
        // str() of a list reprs its items; of a str, the text itself.
        assert_eq!(Value::from(vec!["x"]).to_result_string(), "['x']");
        assert_eq!(Value::from("x").to_result_string(), "x");
        assert_eq!(Value::Float(3.0).to_result_string(), "3.0");
        // Emoji outside the BMP: a surrogate pair in JSON.
        assert_eq!(json_dumps(&Value::from("😀")).unwrap(), r#""\ud83d\ude00""#);
    }

    #[test]
    fn equality_is_pythons() {
        assert_eq!(Value::Int(1), Value::Float(1.0));
        assert_eq!(Value::Bool(true), Value::Int(1));
        assert_ne!(Value::Int(1), Value::Float(1.5));
        assert_ne!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert_ne!(Value::List(vec![]), Value::Tuple(vec![]));
        assert_ne!(Value::Str("1".into()), Value::Int(1));
        let a = vdict! { "a" => 1, "b" => 2 };
        let b = vdict! { "b" => 2, "a" => 1.0 };
        assert_eq!(a, b);
        let file = |n: &str| Value::Object { class: "File", fields: dict! { "name" => n, "content" => "" } };
        let dir = Value::Object { class: "Directory", fields: dict! { "name" => "a", "content" => "" } };
        assert_eq!(file("a"), file("a"));
        assert_ne!(file("a"), file("b"));
        assert_ne!(file("a"), dir);
    }

    #[test]
    fn tagged_json_round_trip() {
        let json: serde_json::Value = serde_json::from_str(
            r#"{"t": {"$tuple": [1, 2.0]}, "d": {"$dict": [[1, "x"]]}, "f": {"$float": "nan"},
                "o": {"$object": "File", "fields": {"name": "a", "content": "b"}}}"#,
        )
        .unwrap();
        let v = Value::from_tagged_json(&json).unwrap();
        let d = v.as_dict().unwrap();
        assert!(matches!(d[&Key::from("t")], Value::Tuple(ref t) if matches!(t[1], Value::Float(_))));
        assert!(matches!(d[&Key::from("d")], Value::Dict(ref m) if m.contains_key(&Key::Int(1))));
        assert!(matches!(d[&Key::from("o")], Value::Object { class: "File", .. }));
        // The same value as plain JSON for outside readers.
        let plain = v.to_json();
        assert_eq!(plain["t"], serde_json::json!([1, 2.0]));
        assert_eq!(plain["d"], serde_json::json!({"1": "x"}));
        assert_eq!(plain["f"], "nan");
        assert_eq!(plain["o"], serde_json::json!({"__class__": "File", "name": "a", "content": "b"}));
        assert_eq!(Value::Set(vec![Value::None, Value::Ellipsis]).to_json(), serde_json::json!([null, "..."]));
    }
}
