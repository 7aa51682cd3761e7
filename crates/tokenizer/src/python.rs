//! Python's formatting of template values, so chat templates print what transformers prints.
//!
//! transformers renders with Jinja2, where `{{ x }}` is Python's `str(x)` (`None`, `True`,
//! `1e+16`, `['a', 1]`) and its `tojson` filter is `json.dumps(x, ensure_ascii=False, ...)`:
//! `", "` and `": "` separators, keys in insertion order, non-ASCII characters as they are, no
//! HTML escaping. minijinja's own output (`none`, `true`, compact JSON) differs, so the chat
//! template environment uses these instead: [`format_value`] as its formatter and for the
//! `string` filter, [`tojson`] as the `tojson` filter.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, ValueKind, ValueOrKwargs, from_args};
use minijinja::{Error, ErrorKind, Output, State, Value};

/// minijinja formatter: writes `str(value)` as Python would, for the kinds Python and minijinja
/// disagree on; everything else (strings, undefined, objects) goes to minijinja's formatter.
pub(crate) fn format_value(out: &mut Output, state: &mut State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            py_str(value, &mut s)?;
            out.write_str(&s).map_err(Error::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// The `string` filter: Python's `str(value)`.
pub(crate) fn string_filter(value: &Value) -> Result<Value, Error> {
    if value.kind() == ValueKind::String || value.is_undefined() {
        return Ok(if value.is_undefined() { Value::from("") } else { value.clone() });
    }
    let mut s = String::new();
    py_str(value, &mut s)?;
    Ok(Value::from(s))
}

/// Python's `str(value)`.
fn py_str(value: &Value, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        ValueKind::Undefined => {}
        _ => py_repr(value, out)?,
    }
    Ok(())
}

/// Python's `repr(value)` for the values a template sees.
fn py_repr(value: &Value, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => {
            if value.is_integer() {
                write!(out, "{value}").map_err(Error::from)?;
            } else {
                let x = f64::try_from(value.clone())?;
                if x.is_nan() {
                    out.push_str("nan");
                } else if x.is_infinite() {
                    out.push_str(if x > 0.0 { "inf" } else { "-inf" });
                } else {
                    out.push_str(&float_repr(x));
                }
            }
        }
        ValueKind::String => repr_str(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let (open, close) = if value.is_tuple() { ("(", ")") } else { ("[", "]") };
            out.push_str(open);
            let mut n = 0;
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out)?;
                n += 1;
            }
            if n == 1 && value.is_tuple() {
                out.push(',');
            }
            out.push_str(close);
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&key, out)?;
                out.push_str(": ");
                py_repr(&value.get_item(&key)?, out)?;
            }
            out.push('}');
        }
        _ => write!(out, "{value}").map_err(Error::from)?,
    }
    Ok(())
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`; backslash escapes for
/// the quote, `\\`, `\n`, `\r`, `\t` and characters Python does not consider printable.
fn repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
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
            c if !is_printable(c) => {
                let n = c as u32;
                let _ = if n < 0x100 {
                    write!(out, "\\x{n:02x}")
                } else if n < 0x10000 {
                    write!(out, "\\u{n:04x}")
                } else {
                    write!(out, "\\U{n:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable` for one character, approximately: control characters, line and
/// paragraph separators, non-ASCII spaces and the common format characters are not printable.
/// (Python also counts unassigned code points as unprintable; without Unicode tables we don't.)
fn is_printable(c: char) -> bool {
    !(c.is_control()
        || matches!(c,
            '\u{a0}' | '\u{ad}' | '\u{1680}' | '\u{2000}'..='\u{200f}' | '\u{2028}'..='\u{202f}'
            | '\u{205f}'..='\u{2064}' | '\u{3000}' | '\u{feff}' | '\u{e000}'..='\u{f8ff}'))
}

/// Python's `repr(float)` for a finite float: the shortest digits that round-trip, in
/// positional notation when the decimal exponent is in -4..16 (with `.0` for integral values),
/// otherwise `d.ddde+XX` (exponent signed, at least two digits).
pub(crate) fn float_repr(x: f64) -> String {
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "1e16", "0e0".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut s = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                s.push_str(&digits);
                s.extend(std::iter::repeat_n('0', int_len - digits.len()));
                s.push_str(".0");
            } else {
                s.push_str(&digits[..int_len]);
                s.push('.');
                s.push_str(&digits[int_len..]);
            }
        } else {
            s.push_str("0.");
            s.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            s.push_str(&digits);
        }
    } else {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs());
    }
    s
}

/// Options of Python's `json.dumps` that transformers' `tojson` exposes.
struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

/// The `tojson` filter of transformers' chat template environment:
/// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, returning
/// `json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
/// sort_keys=sort_keys)`. Arguments may be positional (in that order) or keywords.
pub(crate) fn tojson(value: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    let args = args.0.into_iter().map(Value::from).collect::<Vec<_>>();
    let (positional, kwargs): (&[Value], Kwargs) = from_args(&args)?;
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > NAMES.len() {
        return Err(Error::new(ErrorKind::TooManyArguments, "tojson takes at most 4 arguments"));
    }
    let mut params: [Value; 4] = Default::default();
    for (i, name) in NAMES.iter().enumerate() {
        if let Some(v) = positional.get(i) {
            if kwargs.has(name) {
                return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson got multiple values for {name}")));
            }
            params[i] = v.clone();
        } else if kwargs.has(name) {
            params[i] = kwargs.get::<Value>(name)?;
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = params;

    let indent = match indent.kind() {
        ValueKind::Undefined | ValueKind::None => None,
        ValueKind::String => Some(indent.as_str().unwrap_or_default().to_owned()),
        ValueKind::Bool => Some(if indent.is_true() { " " } else { "" }.to_owned()),
        ValueKind::Number if indent.is_integer() => {
            Some(" ".repeat(indent.as_i64().unwrap_or(0).clamp(0, 1 << 16) as usize))
        }
        _ => {
            return Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer, a string or none"));
        }
    };
    let (item_separator, key_separator) = match separators.kind() {
        ValueKind::Undefined | ValueKind::None => {
            (if indent.is_some() { "," } else { ", " }.to_owned(), ": ".to_owned())
        }
        _ => {
            let parts: Vec<Value> = separators.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    (a.as_str().unwrap_or_default().to_owned(), b.as_str().unwrap_or_default().to_owned())
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings (item_separator, key_separator)",
                    ));
                }
            }
        }
    };
    let opts = JsonOptions {
        ensure_ascii: ensure_ascii.is_true(),
        indent,
        item_separator,
        key_separator,
        sort_keys: sort_keys.is_true(),
    };
    let mut out = String::new();
    dump(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

fn not_serializable(value: &Value) -> Error {
    let kind = match value.kind() {
        ValueKind::Undefined => "Undefined".to_owned(),
        ValueKind::Bytes => "bytes".to_owned(),
        kind => kind.to_string(),
    };
    Error::new(ErrorKind::InvalidOperation, format!("tojson: object of type {kind} is not JSON serializable"))
}

fn dump(value: &Value, opts: &JsonOptions, level: usize, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&json_number(value)?),
        ValueKind::String => json_str(value.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                separate(i, opts, level + 1, out);
                dump(item, opts, level + 1, out)?;
            }
            close(opts, level, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::Number => json_number(&key)?,
                    ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_owned(),
                    ValueKind::None => "null".to_owned(),
                    _ => {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            format!("tojson: keys must be str, int, float, bool or None, not {}", key.kind()),
                        ));
                    }
                };
                entries.push((key, item));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                separate(i, opts, level + 1, out);
                json_str(key, opts.ensure_ascii, out);
                out.push_str(&opts.key_separator);
                dump(item, opts, level + 1, out)?;
            }
            close(opts, level, out);
            out.push('}');
        }
        _ => return Err(not_serializable(value)),
    }
    Ok(())
}

/// Before the `i`-th item of a container whose items sit at nesting `level`.
fn separate(i: usize, opts: &JsonOptions, level: usize, out: &mut String) {
    if i > 0 {
        out.push_str(&opts.item_separator);
    }
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

/// Before the closing bracket of a container at nesting `level`.
fn close(opts: &JsonOptions, level: usize, out: &mut String) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

fn json_number(value: &Value) -> Result<String, Error> {
    if value.is_integer() {
        return Ok(value.to_string());
    }
    let x = f64::try_from(value.clone())?;
    Ok(if x.is_nan() {
        "NaN".to_owned()
    } else if x.is_infinite() {
        (if x > 0.0 { "Infinity" } else { "-Infinity" }).to_owned()
    } else {
        float_repr(x)
    })
}

/// A JSON string literal as Python's `json` writes it.
fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
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
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `datetime.now().strftime(format)`. `datetime.now()` is naive local time, so Python
/// itself replaces `%f` (microseconds) and `%z` / `%Z` (empty without a time zone), and hands
/// the rest to the C library's `strftime`, as we do. (Python 3.12 also blanks `%:z`; 3.11, which
/// made our fixtures, passes it to the C library like any other directive.)
#[cfg(unix)]
pub(crate) fn strftime_now(format: &str) -> Result<String, String> {
    use std::time::{SystemTime, UNIX_EPOCH};

    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?;
    let mut c_format = String::with_capacity(format.len());
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            c_format.push(c);
            continue;
        }
        match chars.next() {
            Some('f') => {
                let _ = write!(c_format, "{:06}", now.subsec_micros());
            }
            Some('z' | 'Z') => {}
            Some(other) => {
                c_format.push('%');
                c_format.push(other);
            }
            None => c_format.push('%'),
        }
    }
    // The %f digits and plain text contain no '%', so escaping is unaffected.
    let c_format = std::ffi::CString::new(c_format).map_err(|_| "embedded null character".to_owned())?;
    let secs = libc::time_t::try_from(now.as_secs()).map_err(|e| e.to_string())?;
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers are valid for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return Err("localtime_r failed".to_owned());
    }
    // As CPython's time.strftime: grow the buffer until the result fits; a result that is still
    // empty at 256 bytes per format byte is taken to be empty.
    let limit = 256 * c_format.as_bytes().len().max(1);
    let mut size = 1024;
    loop {
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` has `size` writable bytes, `c_format` is NUL-terminated, `tm` is valid.
        let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), size, c_format.as_ptr(), &tm) };
        if n > 0 || size >= limit {
            buf.truncate(n);
            return String::from_utf8(buf).map_err(|e| e.to_string());
        }
        size *= 2;
    }
}

#[cfg(not(unix))]
pub(crate) fn strftime_now(_format: &str) -> Result<String, String> {
    Err("not supported on this platform".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (100.0, "100.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1e100, "1e+100"),
            (5e-324, "5e-324"),
            (std::f64::consts::PI, "3.141592653589793"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "{x:e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn strftime_now_is_pythons_naive_local_time() {
        assert_eq!(strftime_now("[%Z][%z]").unwrap(), "[][]");
        assert_eq!(strftime_now("100%%").unwrap(), "100%");
        assert_eq!(strftime_now("").unwrap(), "");
        assert_eq!(strftime_now("%f").unwrap().len(), 6);
        let year = strftime_now("%Y").unwrap();
        assert!(year.len() == 4 && year.bytes().all(|b| b.is_ascii_digit()), "{year}");
        assert!(strftime_now("a\0b").is_err());
    }
}
