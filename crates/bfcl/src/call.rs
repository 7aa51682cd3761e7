//! Function calls as a model writes them, parsed and never evaluated.
//!
//! Two notations reach the environments:
//! - BFCL's Python-call syntax, as the ground truth writes it: `cd(folder='workspace')`,
//!   `sort('final_report.pdf')`, `edit_ticket(ticket_id=0, updates={'priority': 5})`, or a
//!   list of such calls `[ls(a=True), cd(folder='x')]`. Literals only: strings (single,
//!   double or triple quoted, with escapes), ints, floats, `True`/`False`/`None`, lists,
//!   tuples and dicts. A nested call, a name, an operator or an attribute access is a
//!   parse error, so nothing the model writes is ever run as code.
//! - JSON: `{"name": "cd", "arguments": {"folder": "workspace"}}` (`arguments` may also be
//!   a JSON string, as OpenAI-style APIs send it, or be called `parameters`), or a list
//!   of such objects.

use crate::value::{Dict, Key, Value};
use indexmap::IndexMap;

/// One call: a bare function name (a `Class.` prefix is dropped), positional and keyword
/// arguments in the order written.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    pub args: Vec<Value>,
    pub kwargs: IndexMap<String, Value>,
}

impl Call {
    pub fn new(name: impl Into<String>) -> Self {
        Call { name: name.into(), args: Vec::new(), kwargs: IndexMap::new() }
    }

    pub fn kwarg(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.kwargs.insert(key.to_owned(), value.into());
        self
    }

    /// BFCL's string form, `name(a, k=repr(v), ...)`, as upstream writes a model's JSON
    /// call before scoring it.
    pub fn to_python(&self) -> String {
        let mut parts: Vec<String> = self.args.iter().map(Value::repr).collect();
        parts.extend(self.kwargs.iter().map(|(k, v)| format!("{k}={}", v.repr())));
        format!("{}({})", self.name, parts.join(", "))
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_python())
    }
}

/// Why a call could not be read; `offset` is a byte offset into the text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (at byte {offset})")]
pub struct ParseError {
    pub message: String,
    pub offset: usize,
}

/// Parses what a model wrote inside its tool tag: JSON if it starts with `{` or with a
/// `[` followed by `{`, else Python-call syntax. Empty text is an empty list.
pub fn parse_calls(text: &str) -> Result<Vec<Call>, ParseError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let looks_json =
        trimmed.starts_with('{') || (trimmed.starts_with('[') && trimmed[1..].trim_start().starts_with('{'));
    if looks_json { parse_json_calls(trimmed) } else { parse_python_calls(trimmed) }
}

/// Parses one or more calls in JSON form.
pub fn parse_json_calls(text: &str) -> Result<Vec<Call>, ParseError> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ParseError { message: format!("invalid JSON: {e}"), offset: 0 })?;
    let items = match json {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    items.iter().map(json_call).collect()
}

fn json_call(item: &serde_json::Value) -> Result<Call, ParseError> {
    let err = |message: String| ParseError { message, offset: 0 };
    let obj = item.as_object().ok_or_else(|| err(format!("a call must be a JSON object, got {item}")))?;
    // `{"function": {"name", "arguments"}}` as chat APIs nest it.
    let obj = match obj.get("function").and_then(|f| f.as_object()) {
        Some(inner) if !obj.contains_key("name") => inner,
        _ => obj,
    };
    let name = obj.get("name").and_then(|n| n.as_str()).ok_or_else(|| err("a call needs a string \"name\"".into()))?;
    let args = obj.get("arguments").or_else(|| obj.get("parameters"));
    let args = match args {
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(m)) => m.clone(),
        Some(serde_json::Value::String(s)) => match serde_json::from_str(s) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => return Err(err(format!("\"arguments\" of {name} is not a JSON object: {s}"))),
        },
        Some(other) => return Err(err(format!("\"arguments\" of {name} must be an object, got {other}"))),
    };
    let mut call = Call::new(strip_class(name));
    for (k, v) in &args {
        call.kwargs.insert(k.clone(), Value::from_json(v));
    }
    Ok(call)
}

fn strip_class(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// Parses `f(a=1)` or `[f(a=1), g()]` (commas or newlines between calls also accepted).
pub fn parse_python_calls(text: &str) -> Result<Vec<Call>, ParseError> {
    let mut p = Parser { src: text, pos: 0 };
    p.skip_ws();
    let bracketed = p.eat('[');
    let mut calls = Vec::new();
    loop {
        p.skip_ws();
        if p.at_end() || (bracketed && p.peek() == Some(']')) {
            break;
        }
        calls.push(p.call()?);
        let before = p.pos;
        p.skip_ws();
        if p.eat(',') || p.eat(';') {
            continue;
        }
        if bracketed && p.peek() == Some(']') {
            break;
        }
        // Calls on separate lines.
        if !p.at_end() && text[before..p.pos].contains('\n') {
            continue;
        }
        if !p.at_end() {
            return Err(p.error(format!("expected `,` between calls, found {:?}", p.rest_preview())));
        }
    }
    if bracketed && !p.eat(']') {
        return Err(p.error("unclosed `[`".into()));
    }
    p.skip_ws();
    if !p.at_end() {
        return Err(p.error(format!("unexpected text after the calls: {:?}", p.rest_preview())));
    }
    Ok(calls)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn error(&self, message: String) -> ParseError {
        ParseError { message, offset: self.pos }
    }
    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }
    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
    }
    fn rest_preview(&self) -> String {
        self.src[self.pos..].chars().take(20).collect()
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.pos;
        let mut chars = self.src[self.pos..].char_indices();
        match chars.next() {
            Some((_, c)) if c.is_alphabetic() || c == '_' => {}
            _ => return None,
        }
        let mut end = self.src.len();
        for (i, c) in chars {
            if !(c.is_alphanumeric() || c == '_') {
                end = self.pos + i;
                break;
            }
        }
        self.pos = end;
        Some(self.src[start..end].to_owned())
    }

    /// `name(args)` with `name` possibly dotted (`GorillaFileSystem.ls`).
    fn call(&mut self) -> Result<Call, ParseError> {
        let start = self.pos;
        let mut name = self
            .ident()
            .ok_or_else(|| self.error(format!("expected a function name, found {:?}", self.rest_preview())))?;
        while self.eat('.') {
            name = self.ident().ok_or_else(|| self.error("expected a name after `.`".into()))?;
        }
        self.skip_ws();
        if !self.eat('(') {
            self.pos = start;
            return Err(self.error(format!("expected `(` after `{name}`")));
        }
        let mut call = Call::new(name);
        loop {
            self.skip_ws();
            if self.eat(')') {
                break;
            }
            // `key=value` or a positional value.
            let save = self.pos;
            let mut keyword = None;
            if let Some(id) = self.ident() {
                self.skip_ws();
                if self.peek() == Some('=') && !self.src[self.pos..].starts_with("==") {
                    self.pos += 1;
                    keyword = Some(id);
                } else {
                    self.pos = save;
                }
            }
            self.skip_ws();
            let value = self.value(0)?;
            match keyword {
                Some(k) => {
                    if call.kwargs.contains_key(&k) {
                        return Err(self.error(format!("keyword argument repeated: {k}")));
                    }
                    call.kwargs.insert(k, value);
                }
                None if !call.kwargs.is_empty() => {
                    return Err(self.error("positional argument follows keyword argument".into()));
                }
                None => call.args.push(value),
            }
            self.skip_ws();
            if self.eat(',') {
                continue;
            }
            self.skip_ws();
            if self.eat(')') {
                break;
            }
            return Err(self.error(format!(
                "expected `,` or `)` in the arguments of {}, found {:?}",
                call.name,
                self.rest_preview()
            )));
        }
        Ok(call)
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.error("literal nested too deeply".into()));
        }
        self.skip_ws();
        let Some(c) = self.peek() else {
            return Err(self.error("expected a value, found the end of the text".into()));
        };
        match c {
            '\'' | '"' => {
                let mut s = self.string(false)?;
                // Adjacent literals concatenate: 'a' 'b'.
                loop {
                    let save = self.pos;
                    self.skip_ws();
                    if matches!(self.peek(), Some('\'' | '"')) {
                        s.push_str(&self.string(false)?);
                    } else {
                        self.pos = save;
                        break;
                    }
                }
                Ok(Value::Str(s))
            }
            '[' => {
                self.pos += 1;
                Ok(Value::List(self.items(']', depth)?.0))
            }
            '(' => {
                self.pos += 1;
                let (items, trailing_comma) = self.items(')', depth)?;
                if items.len() == 1 && !trailing_comma {
                    Ok(items.into_iter().next().expect("one item"))
                } else {
                    Ok(Value::Tuple(items))
                }
            }
            '{' => {
                self.pos += 1;
                self.dict(depth)
            }
            '-' | '+' | '0'..='9' | '.' => self.number(),
            _ => {
                let start = self.pos;
                let id = self.ident();
                let quote_next = matches!(self.peek(), Some('\'' | '"'));
                match id.as_deref() {
                    Some("True") => Ok(Value::Bool(true)),
                    Some("False") => Ok(Value::Bool(false)),
                    Some("None") => Ok(Value::None),
                    Some(id) if matches!(id, "r" | "R" | "u" | "U") && quote_next => {
                        let raw = id.eq_ignore_ascii_case("r");
                        Ok(Value::Str(self.string(raw)?))
                    }
                    Some(id) => {
                        let id = id.to_owned();
                        self.skip_ws();
                        let what = if self.peek() == Some('(') { "a nested call" } else { "a name" };
                        self.pos = start;
                        Err(self.error(format!("arguments must be literals; found {what} `{id}`")))
                    }
                    None => Err(self.error(format!("unexpected {c:?} where a value should be"))),
                }
            }
        }
    }

    /// Items up to `close`; also says whether the last item had a trailing comma.
    fn items(&mut self, close: char, depth: usize) -> Result<(Vec<Value>, bool), ParseError> {
        let mut items = Vec::new();
        let mut trailing = false;
        loop {
            self.skip_ws();
            if self.eat(close) {
                return Ok((items, trailing));
            }
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            trailing = self.eat(',');
            if !trailing {
                self.skip_ws();
                if self.eat(close) {
                    return Ok((items, false));
                }
                return Err(self.error(format!("expected `,` or `{close}`, found {:?}", self.rest_preview())));
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, ParseError> {
        let mut d = Dict::new();
        loop {
            self.skip_ws();
            if self.eat('}') {
                return Ok(Value::Dict(d));
            }
            let key_pos = self.pos;
            let key = match self.value(depth + 1)? {
                Value::Str(s) => Key::Str(s),
                Value::Int(i) => Key::Int(i),
                Value::Bool(b) => Key::Int(b as i64),
                other => {
                    self.pos = key_pos;
                    return Err(self.error(format!("unsupported dict key {}", other.repr())));
                }
            };
            self.skip_ws();
            if !self.eat(':') {
                return Err(self.error("expected `:` in a dict".into()));
            }
            let value = self.value(depth + 1)?;
            d.insert(key, value);
            self.skip_ws();
            if !self.eat(',') {
                self.skip_ws();
                if self.eat('}') {
                    return Ok(Value::Dict(d));
                }
                return Err(self.error(format!("expected `,` or `}}`, found {:?}", self.rest_preview())));
            }
        }
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        let negative = if self.eat('-') {
            true
        } else {
            self.eat('+');
            false
        };
        self.skip_ws();
        let body_start = self.pos;
        let bytes = self.src.as_bytes();
        let mut end = self.pos;
        let mut is_float = false;
        while end < bytes.len() {
            let b = bytes[end];
            match b {
                b'0'..=b'9' | b'_' => {}
                b'.' => is_float = true,
                b'e' | b'E' => {
                    is_float = true;
                    if end + 1 < bytes.len() && matches!(bytes[end + 1], b'+' | b'-') {
                        end += 1;
                    }
                }
                _ => break,
            }
            end += 1;
        }
        let text: String = self.src[body_start..end].chars().filter(|c| *c != '_').collect();
        self.pos = end;
        let bad =
            |p: &Self| ParseError { message: format!("malformed number {:?}", &p.src[start..end]), offset: start };
        if text.is_empty() {
            return Err(bad(self));
        }
        if is_float {
            let x: f64 = text.parse().map_err(|_| bad(self))?;
            Ok(Value::Float(if negative { -x } else { x }))
        } else {
            if text.len() > 1 && text.starts_with('0') && text.bytes().any(|b| b != b'0') {
                return Err(bad(self)); // Python rejects 012.
            }
            let x: i64 = text.parse().map_err(|_| bad(self))?;
            Ok(Value::Int(if negative { -x } else { x }))
        }
    }

    fn quote(&mut self) -> Result<(char, bool), ParseError> {
        let q = self.bump().expect("caller saw a quote");
        let triple = self.src[self.pos..].starts_with(&format!("{q}{q}"));
        if triple {
            self.pos += 2;
        }
        Ok((q, triple))
    }

    fn closes(&self, q: char, triple: bool) -> bool {
        if triple { self.src[self.pos..].starts_with(&format!("{q}{q}{q}")) } else { self.peek() == Some(q) }
    }

    /// A quoted string; `raw` (an `r'...'` literal) keeps backslashes as written.
    fn string(&mut self, raw: bool) -> Result<String, ParseError> {
        let start = self.pos;
        let (q, triple) = self.quote()?;
        let mut out = String::new();
        loop {
            if self.closes(q, triple) {
                self.pos += if triple { 3 } else { 1 };
                return Ok(out);
            }
            let Some(c) = self.bump() else {
                return Err(ParseError { message: "unterminated string".into(), offset: start });
            };
            if c == '\n' && !triple {
                return Err(ParseError { message: "unterminated string (newline inside)".into(), offset: start });
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            if raw {
                // A backslash keeps the next character, which then cannot close the string.
                out.push('\\');
                if let Some(n) = self.bump() {
                    out.push(n);
                }
                continue;
            }
            let esc_pos = self.pos - 1;
            let Some(e) = self.bump() else {
                return Err(ParseError { message: "unterminated string".into(), offset: start });
            };
            match e {
                '\n' => {}
                '\\' => out.push('\\'),
                '\'' => out.push('\''),
                '"' => out.push('"'),
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'v' => out.push('\u{b}'),
                'a' => out.push('\u{7}'),
                '0'..='7' => {
                    let mut n = e.to_digit(8).expect("octal digit");
                    for _ in 0..2 {
                        match self.peek().and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                n = n * 8 + d;
                                self.pos += 1;
                            }
                            None => break,
                        }
                    }
                    out.push(char::from_u32(n).unwrap_or('\u{fffd}'));
                }
                'x' | 'u' | 'U' => {
                    let len = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex = self.src.get(self.pos..self.pos + len).unwrap_or("");
                    let code = u32::from_str_radix(hex, 16).ok().filter(|_| hex.len() == len);
                    let Some(code) = code else {
                        return Err(ParseError { message: format!("bad \\{e} escape"), offset: esc_pos });
                    };
                    self.pos += len;
                    // A surrogate pair written as two \u escapes.
                    if (0xd800..0xdc00).contains(&code) && self.src[self.pos..].starts_with("\\u") {
                        let low =
                            self.src.get(self.pos + 2..self.pos + 6).and_then(|h| u32::from_str_radix(h, 16).ok());
                        if let Some(low @ 0xdc00..=0xdfff) = low {
                            self.pos += 6;
                            let c = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                            out.push(char::from_u32(c).unwrap_or('\u{fffd}'));
                            continue;
                        }
                    }
                    out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                other => {
                    // Python keeps unknown escapes as written.
                    out.push('\\');
                    out.push(other);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Call {
        let mut calls = parse_calls(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(calls.len(), 1, "{text}");
        calls.remove(0)
    }

    #[test]
    fn ground_truth_syntax() {
        let c = one("cd(folder='workspace')");
        assert_eq!(c.name, "cd");
        assert_eq!(c.kwargs["folder"], Value::from("workspace"));
        let c = one("sort('final_report.pdf')");
        assert_eq!(c.args, vec![Value::from("final_report.pdf")]);
        let c = one("edit_ticket(ticket_id=0, updates={'status':'Urgent', 'priority':5})");
        assert_eq!(c.kwargs["updates"], crate::vdict! { "status" => "Urgent", "priority" => 5 });
        let c = one("mean([37])");
        assert_eq!(c.args[0], Value::List(vec![Value::Int(37)]));
        let c = one("f(a = 1.5,b=True , c=None, d=-3, e=1e-3, f=(1, 2))");
        assert!(matches!(c.kwargs["a"], Value::Float(x) if x == 1.5));
        assert_eq!(c.kwargs["b"], Value::Bool(true));
        assert!(c.kwargs["c"].is_none());
        assert!(matches!(c.kwargs["d"], Value::Int(-3)));
        assert!(matches!(c.kwargs["e"], Value::Float(_)));
        assert!(matches!(c.kwargs["f"], Value::Tuple(_)));
        let c = one(r#"echo(content='It\'s a \"test\"\nline \u00e9', file_name="a.txt")"#);
        assert_eq!(c.kwargs["content"], Value::from("It's a \"test\"\nline é"));
        let c = one("GorillaFileSystem.ls(a=True)");
        assert_eq!(c.name, "ls");
    }

    #[test]
    fn lists_of_calls() {
        let calls = parse_calls("[cd(folder='a'), ls()]").unwrap();
        assert_eq!(calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["cd", "ls"]);
        let calls = parse_calls("cd(folder='a')\nls()").unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(parse_calls("[]").unwrap(), vec![]);
        assert_eq!(parse_calls("  ").unwrap(), vec![]);
    }

    #[test]
    fn json_calls() {
        let c = one(r#"{"name": "cd", "arguments": {"folder": "a", "n": 2, "x": 2.0}}"#);
        assert_eq!(c.kwargs["folder"], Value::from("a"));
        assert!(matches!(c.kwargs["n"], Value::Int(2)));
        assert!(matches!(c.kwargs["x"], Value::Float(_)));
        let calls = parse_calls(r#"[{"name": "ls", "arguments": "{\"a\": true}"}, {"name": "pwd"}]"#).unwrap();
        assert_eq!(calls[0].kwargs["a"], Value::Bool(true));
        assert_eq!(calls[1].name, "pwd");
        let c = one(r#"{"function": {"name": "pwd", "arguments": {}}}"#);
        assert_eq!(c.name, "pwd");
    }

    #[test]
    fn never_evaluates() {
        for bad in [
            "cd(folder=__import__('os').system('rm -rf /'))",
            "cd(folder=ls())",
            "cd(folder=x)",
            "cd(folder='a' + 'b')",
            "cd(folder='unterminated)",
            "cd(folder='a'",
            "cd folder='a'",
            "cd(folder='a', folder='b')",
            "cd(folder='a', 'b')",
            r#"{"name": 3}"#,
            r#"{"name": "cd", "arguments": [1]}"#,
            "{not json",
            "cd(x=012)",
        ] {
            assert!(parse_calls(bad).is_err(), "{bad} should not parse");
        }
        let deep = format!("f(x={}{})", "[".repeat(200), "]".repeat(200));
        assert!(parse_calls(&deep).is_err());
    }

    #[test]
    fn round_trips_through_python_form() {
        let c = one("f('a', b=[1, 2.0], c={'k': None}, d=\"it's\")");
        assert_eq!(c.to_python(), "f('a', b=[1, 2.0], c={'k': None}, d=\"it's\")");
        assert_eq!(one(&c.to_python()), c);
    }
}
