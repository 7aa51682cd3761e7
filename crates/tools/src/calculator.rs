//! A calculator the model can call with `<calculator>2^10 / (3 + 1)</calculator>`.
//!
//! Pure Rust and in-process: a recursive-descent parser over f64, with a length and a
//! nesting limit so that no input can exhaust the stack. Grammar, loosest first:
//!
//! ```text
//! sum     = product (("+" | "-") product)*
//! product = unary (("*" | "/" | "%") unary)*
//! unary   = ("-" | "+") unary | power
//! power   = atom (("^" | "**") unary)?          right-associative; -2^2 = -4
//! atom    = number | name | name "(" sum ("," sum)* ")" | "(" sum ")"
//! ```
//!
//! Names: `pi`, `e`, `tau`, `inf` is not one (results must be finite); functions `sqrt`,
//! `sin`, `cos`, `tan`, `asin`, `acos`, `atan`, `exp`, `abs`, `floor`, `ceil`, `round`,
//! `ln` (natural), `log` (base 10, or `log(x, base)`), `log2`.

use std::time::Instant;

use crate::{Tool, ToolCall, ToolResult};

/// Longer expressions are refused rather than parsed.
const MAX_LEN: usize = 10_000;
/// Deeper nesting (parentheses, unary signs, exponents) is refused: the parser recurses once per level.
const MAX_DEPTH: usize = 200;
/// Integers up to 2^53 are exact in f64; beyond it an "integer" result is a rounded one.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

#[derive(Debug, Default, Clone, Copy)]
pub struct Calculator;

impl Tool for Calculator {
    fn name(&self) -> &str {
        "calculator"
    }

    fn tag(&self) -> &str {
        "calculator"
    }

    fn execute(&self, call: &ToolCall) -> ToolResult {
        let start = Instant::now();
        let (output, success) = match evaluate(&call.text) {
            Ok(v) => (format_number(v), true),
            Err(e) => (format!("error: {e}"), false),
        };
        ToolResult {
            output,
            success,
            timed_out: false,
            truncated: false,
            elapsed_ms: start.elapsed().as_millis() as u64,
        }
    }
}

/// Evaluates one expression. The error says what was wrong and where (a character offset).
pub fn evaluate(text: &str) -> Result<f64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty expression".into());
    }
    if text.len() > MAX_LEN {
        return Err(format!("expression longer than {MAX_LEN} characters"));
    }
    let mut p = Parser { s: text.as_bytes(), pos: 0, depth: 0 };
    let v = p.sum()?;
    p.skip_ws();
    if p.pos < p.s.len() {
        return Err(format!("unexpected {} at position {}", p.describe(), p.pos));
    }
    if !v.is_finite() {
        return Err("the result is not a finite number".into());
    }
    Ok(v)
}

/// Integers (exactly representable ones) without a decimal point, other values as the
/// shortest decimal that reads back to the same f64, in exponent form when very large or small.
pub fn format_number(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.fract() == 0.0 && v.abs() <= EXACT_INT {
        return format!("{}", v as i64);
    }
    let a = v.abs();
    if !(1e-5..1e16).contains(&a) { format!("{v:e}") } else { format!("{v}") }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.s[self.pos..].starts_with(tok.as_bytes()) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// The character at the cursor, for error messages (the input may be any UTF-8).
    fn describe(&self) -> String {
        match std::str::from_utf8(&self.s[self.pos..]).ok().and_then(|t| t.chars().next()) {
            Some(c) => format!("'{c}'"),
            None if self.pos >= self.s.len() => "end of input".into(),
            None => "character".into(),
        }
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH { Err(format!("expression nested deeper than {MAX_DEPTH} levels")) } else { Ok(()) }
    }

    fn sum(&mut self) -> Result<f64, String> {
        let mut acc = self.product()?;
        loop {
            if self.eat("+") {
                acc += self.product()?;
            } else if self.eat("-") {
                acc -= self.product()?;
            } else {
                return Ok(acc);
            }
        }
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut acc = self.unary()?;
        loop {
            // `**` is a power, read by `power` below; it must not be taken for two `*`.
            if self.peek() == Some(b'*') && self.s.get(self.pos + 1) != Some(&b'*') {
                self.pos += 1;
                acc *= self.unary()?;
            } else if self.eat("/") {
                let d = self.unary()?;
                if d == 0.0 {
                    return Err("division by zero".into());
                }
                acc /= d;
            } else if self.eat("%") {
                let d = self.unary()?;
                if d == 0.0 {
                    return Err("modulo by zero".into());
                }
                // Python's sign convention (result has the divisor's sign), which models expect.
                acc -= d * (acc / d).floor();
            } else {
                return Ok(acc);
            }
        }
    }

    fn unary(&mut self) -> Result<f64, String> {
        self.enter()?;
        let v = if self.eat("-") {
            self.unary().map(|v| -v)
        } else if self.eat("+") {
            self.unary()
        } else {
            self.power()
        };
        self.depth -= 1;
        v
    }

    fn power(&mut self) -> Result<f64, String> {
        let base = self.atom()?;
        if self.eat("^") || self.eat("**") {
            let exp = self.unary()?;
            if base == 0.0 && exp < 0.0 {
                return Err("zero raised to a negative power".into());
            }
            let v = base.powf(exp);
            if v.is_nan() {
                return Err(format!("{} ^ {} is not a real number", format_number(base), format_number(exp)));
            }
            return Ok(v);
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some(b'(') => {
                self.pos += 1;
                let v = self.sum()?;
                if !self.eat(")") {
                    return Err(format!("expected ')' at position {}, found {}", self.pos, self.describe()));
                }
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() => self.name(),
            _ => Err(format!("expected a number at position {}, found {}", self.pos, self.describe())),
        }
    }

    fn number(&mut self) -> Result<f64, String> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while p.pos < p.s.len() && p.s[p.pos].is_ascii_digit() {
                p.pos += 1;
            }
            p.pos > from
        };
        let mut any = digits(self);
        if self.s.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            any |= digits(self);
        }
        if !any {
            return Err(format!("malformed number at position {start}"));
        }
        // An exponent only when digits follow: `2e` is 2 times the constant e... which is refused
        // below as two atoms in a row, rather than silently read either way.
        if matches!(self.s.get(self.pos), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.s.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !digits(self) {
                self.pos = save;
            }
        }
        // The slice is ASCII digits, '.', 'e' and signs, so it is valid UTF-8.
        let lit = std::str::from_utf8(&self.s[start..self.pos]).map_err(|_| "malformed number".to_string())?;
        lit.parse::<f64>().map_err(|_| format!("malformed number '{lit}' at position {start}"))
    }

    fn name(&mut self) -> Result<f64, String> {
        let start = self.pos;
        while self.pos < self.s.len() && (self.s[self.pos].is_ascii_alphanumeric() || self.s[self.pos] == b'_') {
            self.pos += 1;
        }
        let name = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("").to_ascii_lowercase();
        if self.peek() != Some(b'(') {
            return match name.as_str() {
                "pi" => Ok(std::f64::consts::PI),
                "e" => Ok(std::f64::consts::E),
                "tau" => Ok(std::f64::consts::TAU),
                _ => Err(format!("unknown name '{name}' at position {start}")),
            };
        }
        self.pos += 1;
        self.enter()?;
        let mut args = vec![self.sum()?];
        while self.eat(",") {
            args.push(self.sum()?);
        }
        self.depth -= 1;
        if !self.eat(")") {
            return Err(format!("expected ')' at position {}, found {}", self.pos, self.describe()));
        }
        apply(&name, &args).map_err(|e| format!("{name}: {e}"))
    }
}

fn apply(name: &str, args: &[f64]) -> Result<f64, String> {
    let one = || match args {
        [x] => Ok(*x),
        _ => Err(format!("takes 1 argument, got {}", args.len())),
    };
    let domain = |ok: bool, v: f64, what: &str| if ok { Ok(v) } else { Err(format!("argument must be {what}")) };
    match name {
        "sqrt" => one().and_then(|x| domain(x >= 0.0, x.sqrt(), "non-negative")),
        "sin" => one().map(f64::sin),
        "cos" => one().map(f64::cos),
        "tan" => one().map(f64::tan),
        "asin" => one().and_then(|x| domain((-1.0..=1.0).contains(&x), x.asin(), "in [-1, 1]")),
        "acos" => one().and_then(|x| domain((-1.0..=1.0).contains(&x), x.acos(), "in [-1, 1]")),
        "atan" => one().map(f64::atan),
        "exp" => one().map(f64::exp),
        "abs" => one().map(f64::abs),
        "floor" => one().map(f64::floor),
        "ceil" => one().map(f64::ceil),
        "round" => one().map(f64::round),
        "ln" => one().and_then(|x| domain(x > 0.0, x.ln(), "positive")),
        "log2" => one().and_then(|x| domain(x > 0.0, x.log2(), "positive")),
        "log" => match args {
            [x] => domain(*x > 0.0, x.log10(), "positive"),
            [x, b] if *x > 0.0 && *b > 0.0 && *b != 1.0 => Ok(x.ln() / b.ln()),
            [_, _] => Err("needs a positive argument and a positive base other than 1".into()),
            _ => Err(format!("takes 1 or 2 arguments, got {}", args.len())),
        },
        _ => Err("unknown function".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        format_number(evaluate(s).unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    #[test]
    fn arithmetic_and_precedence() {
        assert_eq!(ok("1 + 2 * 3"), "7");
        assert_eq!(ok("(1 + 2) * 3"), "9");
        assert_eq!(ok("2^10"), "1024");
        assert_eq!(ok("2**10"), "1024");
        assert_eq!(ok("2^3^2"), "512");
        assert_eq!(ok("-2^2"), "-4");
        assert_eq!(ok("2^-1"), "0.5");
        assert_eq!(ok("2 * -3"), "-6");
        assert_eq!(ok("--3"), "3");
        assert_eq!(ok("7 / 2"), "3.5");
        assert_eq!(ok("-7 % 3"), "2");
        assert_eq!(ok(".5 + 1."), "1.5");
        assert_eq!(ok("1.5e3"), "1500");
        assert_eq!(ok("0.1 + 0.2"), "0.30000000000000004");
        assert_eq!(ok("10^20"), "1e20");
        assert_eq!(ok("1 - 1"), "0");
        assert_eq!(ok("-0"), "0");
    }

    #[test]
    fn functions_and_constants() {
        assert_eq!(ok("sqrt(16)"), "4");
        assert_eq!(ok("abs(-3.25)"), "3.25");
        assert_eq!(ok("ln(e)"), "1");
        assert_eq!(ok("log(1000)"), "3");
        assert_eq!(ok("log(8, 2)"), "3");
        assert_eq!(ok("exp(0)"), "1");
        assert_eq!(ok("cos(0) + sin(0)"), "1");
        assert_eq!(ok("floor(pi)"), "3");
        assert!((evaluate("tan(pi/4)").unwrap() - 1.0).abs() < 1e-12);
        assert!((evaluate("2*PI").unwrap() - std::f64::consts::TAU).abs() < 1e-12);
    }

    #[test]
    fn errors_are_messages() {
        for (s, want) in [
            ("1/0", "division by zero"),
            ("", "empty"),
            ("2 +", "expected a number"),
            ("(1 + 2", "expected ')'"),
            ("1 2", "unexpected '2'"),
            ("sqrt(-1)", "non-negative"),
            ("foo(1)", "unknown function"),
            ("x + 1", "unknown name 'x'"),
            ("(-8)^(1/3)", "not a real number"),
            ("10^400", "not a finite"),
            ("sqrt(1, 2)", "takes 1 argument"),
            ("1 + π", "'π'"),
        ] {
            let e = evaluate(s).expect_err(s);
            assert!(e.contains(want), "{s}: {e}");
        }
        let deep = "(".repeat(100_000);
        assert!(evaluate(&deep).unwrap_err().contains("longer than"));
        let deep = format!("{}1{}", "(".repeat(1000), ")".repeat(1000));
        assert!(evaluate(&deep).unwrap_err().contains("nested deeper"));
        assert!(evaluate(&"-".repeat(5000)).unwrap_err().contains("nested deeper"));
    }

    #[test]
    fn the_tool_reports_success_and_errors() {
        let t = Calculator;
        let r = t.execute(&ToolCall { text: " 6 * 7 \n".into(), rollout: 0, ..Default::default() });
        assert_eq!((r.output.as_str(), r.success), ("42", true));
        let r = t.execute(&ToolCall { text: "6 * ".into(), rollout: 0, ..Default::default() });
        assert!(!r.success && r.output.starts_with("error: "), "{r:?}");
    }

    /// Random strings over the grammar's alphabet (and some bytes outside it) never panic,
    /// and whatever evaluates is finite.
    #[test]
    fn fuzz_never_panics() {
        const ALPHABET: &[&str] = &[
            "0", "1", "9", ".", "e", "E", "+", "-", "*", "/", "%", "^", "**", "(", ")", ",", " ", "pi", "sqrt", "log",
            "ln", "sin", "exp", "abs", "x", "é", "π", "\u{0}", "1e308", "1e-320", "\n",
        ];
        // A fixed xorshift stream: reproducible without a dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let len = (next() % 40) as usize;
            let s: String = (0..len).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]).collect();
            if let Ok(v) = evaluate(&s) {
                assert!(v.is_finite(), "{s:?} -> {v}");
            }
        }
    }
}
