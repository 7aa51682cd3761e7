//! Recursive-descent parser from answer tokens (see `lex.rs`) to a [`Node`].
//!
//! Grammar, loosest first:
//!
//! ```text
//! answer   := item ((',' | ';') item)*          several items: a bare list
//! item     := union (relop union)*              x = 3, 1 < x \le 2, x \in [0, 1)
//! union    := additive ('\cup' additive)*
//! additive := term (('+' | '-' | '\pm' | '\mp') term)*
//! term     := unary (('*' | '/') unary | power)*   a bare `power` is implicit multiplication
//! unary    := ('-' | '+' | '\pm') unary | power
//! power    := postfix ('^' exponent)*
//! postfix  := primary ('!' | '%')*
//! primary  := number | symbol | constant | (...) | [...) | {...} | \{...\} | |...|
//!           | \frac a b | \sqrt[n] a | \binom a b | function | matrix
//! ```
//!
//! LaTeX arguments without braces take one token, and one digit of a number
//! (`\frac12` = 1/2, `\sqrt3`). A plain `^` exponent takes the whole number (`2^10` =
//! 1024, friendlier to plain-text answers than TeX's `2^1 0`). Every recursive rule counts
//! nesting against [`MAX_DEPTH`], so `((((...))))` or `\sqrt{\sqrt{...}}` ends in an error
//! instead of a stack overflow.

use std::mem;

use crate::expr::{Constant, Func, Node, Number};
use crate::lex::{Tok, Token, tokenize};
use crate::rational::Rational;

/// Deeper nesting than this is refused. Real answers nest a handful of levels.
pub const MAX_DEPTH: usize = 200;

/// `1.5e3` is exact up to this exponent; past it the literal is a float.
const MAX_EXACT_SCI_EXPONENT: i128 = 4096;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
    #[error("{0}")]
    Syntax(String),
}

/// A numeric literal as a node; `None` when it is not a finite number.
fn number_node(text: &str) -> Option<Node> {
    let approx: f64 = text.parse().ok().filter(|x: &f64| x.is_finite())?;
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let mut exact = Rational::parse_decimal(mantissa);
    if let Some(e) = exp {
        let e: i128 = e.parse().ok()?;
        let ten = Rational::int(10)?;
        exact = exact.and_then(|m| {
            if e.abs() > MAX_EXACT_SCI_EXPONENT {
                return None;
            }
            m.checked_mul(ten.pow(e)?)
        });
    }
    let decimal = text.contains(['.', 'e', 'E']);
    Some(Node::Num(Number { text: text.to_string(), exact, approx, decimal }))
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
    /// Inside `|...|` a `|` closes instead of starting a product.
    in_abs: usize,
}

type PResult = Result<Node, ParseError>;

fn syntax<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError::Syntax(msg.into()))
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.toks.get(self.pos + k).map(|t| &t.tok)
    }

    fn bump(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|t| t.tok.clone());
        self.pos += 1;
        t
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &Tok) -> Result<(), ParseError> {
        if self.eat(tok) { Ok(()) } else { syntax(format!("expected {tok:?}, found {:?}", self.peek())) }
    }

    /// Runs `f` one nesting level deeper, refusing past [`MAX_DEPTH`].
    fn nested(&mut self, f: impl FnOnce(&mut Parser) -> PResult) -> PResult {
        if self.depth >= MAX_DEPTH {
            return Err(ParseError::TooDeep);
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn answer(&mut self) -> PResult {
        if self.toks.is_empty() {
            return syntax("empty answer");
        }
        let mut items = self.items()?;
        if let Some(t) = self.peek() {
            return syntax(format!("unexpected {t:?}"));
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Node::List(items) })
    }

    fn items(&mut self) -> Result<Vec<Node>, ParseError> {
        let mut items = vec![self.relation()?];
        while matches!(self.peek(), Some(Tok::Comma | Tok::Semi)) {
            self.pos += 1;
            items.push(self.relation()?);
        }
        Ok(items)
    }

    fn relation(&mut self) -> PResult {
        let first = self.union()?;
        if self.eat(&Tok::In) {
            // `x \in [0, 1)`: the answer is the set.
            return if matches!(first, Node::Sym(_)) { self.union() } else { syntax("\\in after a non-variable") };
        }
        let mut rest = Vec::new();
        while let Some(Tok::Rel(op)) = self.peek() {
            let op = *op;
            self.pos += 1;
            rest.push((op, self.union()?));
        }
        Ok(if rest.is_empty() { first } else { Node::Relation { first: Box::new(first), rest } })
    }

    fn union(&mut self) -> PResult {
        let first = self.additive()?;
        if self.peek() != Some(&Tok::Cup) {
            return Ok(first);
        }
        let mut parts = vec![first];
        while self.eat(&Tok::Cup) {
            parts.push(self.additive()?);
        }
        Ok(Node::Union(parts))
    }

    fn additive(&mut self) -> PResult {
        self.nested(|p| {
            let mut terms = vec![p.term()?];
            loop {
                match p.peek() {
                    Some(Tok::Plus) => {
                        p.pos += 1;
                        terms.push(p.term()?);
                    }
                    Some(Tok::Minus) => {
                        p.pos += 1;
                        terms.push(Node::Neg(Box::new(p.term()?)));
                    }
                    Some(Tok::Pm | Tok::Mp) => {
                        let minus = p.bump() == Some(Tok::Mp);
                        let rhs = p.term()?;
                        let rhs = if minus { Node::Neg(Box::new(rhs)) } else { rhs };
                        let lhs = if terms.len() == 1 { terms.remove(0) } else { Node::Add(mem::take(&mut terms)) };
                        terms = vec![Node::PlusMinus(Box::new(lhs), Box::new(rhs))];
                    }
                    _ => break,
                }
            }
            Ok(if terms.len() == 1 { terms.remove(0) } else { Node::Add(terms) })
        })
    }

    /// Whether the next token can start a factor written right after another (`2x`, `3\pi`).
    fn starts_implicit_factor(&self) -> bool {
        match self.peek() {
            Some(Tok::Bar) => self.in_abs == 0,
            Some(
                Tok::Num(_)
                | Tok::Ident(_)
                | Tok::Pi
                | Tok::Infty
                | Tok::LParen
                | Tok::LBrace
                | Tok::Frac
                | Tok::Sqrt
                | Tok::Binom
                | Tok::Func(_)
                | Tok::Log,
            ) => true,
            _ => false,
        }
    }

    fn term(&mut self) -> PResult {
        let mut acc = self.unary()?;
        // `2 1/3` and `2\frac{1}{3}` are mixed numbers only right after a lone integer
        // (`-2\frac13` is -(2 + 1/3)).
        let mut lone_integer = match &acc {
            Node::Neg(x) => x.as_int_literal().is_some(),
            x => x.as_int_literal().is_some(),
        };
        loop {
            match self.peek() {
                Some(Tok::Star) => {
                    self.pos += 1;
                    acc = mul(acc, self.unary()?);
                }
                Some(Tok::Slash) => {
                    self.pos += 1;
                    acc = Node::Div(Box::new(acc), Box::new(self.unary()?));
                }
                _ if self.starts_implicit_factor() => {
                    if lone_integer && let Some(frac) = self.mixed_fraction()? {
                        acc = match acc {
                            Node::Neg(whole) => Node::Neg(Box::new(Node::Add(vec![*whole, frac]))),
                            whole => Node::Add(vec![whole, frac]),
                        };
                    } else {
                        if matches!(self.peek(), Some(Tok::Num(_))) && ends_with_number(&acc) {
                            return syntax("two numbers side by side");
                        }
                        let rhs = self.power()?;
                        acc = mul(acc, rhs);
                    }
                }
                _ => break,
            }
            lone_integer = false;
        }
        Ok(acc)
    }

    /// After a lone integer: `\frac{1}{3}` with integer parts, or ` 1/3` after a space
    /// that ends the term. `None` (nothing consumed) when the tokens are not that.
    fn mixed_fraction(&mut self) -> Result<Option<Node>, ParseError> {
        if self.peek() == Some(&Tok::Frac) {
            let save = self.pos;
            let frac = self.power()?;
            if let Node::Div(a, b) = &frac
                && a.as_int_literal().is_some()
                && b.as_int_literal().is_some_and(|d| d > 0)
            {
                return Ok(Some(frac));
            }
            self.pos = save;
            return Ok(None);
        }
        let spaced = self.toks.get(self.pos).is_some_and(|t| t.space);
        let ends = matches!(
            self.peek_at(3),
            None | Some(Tok::Comma | Tok::Semi | Tok::Rel(_) | Tok::RParen | Tok::RBrack | Tok::RBrace)
        );
        if let (Some(Tok::Num(a)), Some(Tok::Slash), Some(Tok::Num(b))) =
            (self.peek(), self.peek_at(1), self.peek_at(2))
            && spaced
            && ends
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
        {
            let (a, b) = (a.clone(), b.clone());
            self.pos += 3;
            let (Some(a), Some(b)) = (number_node(&a), number_node(&b)) else {
                return syntax("bad number");
            };
            return Ok(Some(Node::Div(Box::new(a), Box::new(b))));
        }
        Ok(None)
    }

    fn unary(&mut self) -> PResult {
        self.nested(|p| match p.peek() {
            Some(Tok::Minus) => {
                p.pos += 1;
                Ok(Node::Neg(Box::new(p.unary()?)))
            }
            Some(Tok::Plus) => {
                p.pos += 1;
                p.unary()
            }
            Some(Tok::Pm | Tok::Mp) => {
                p.pos += 1;
                Ok(Node::PlusMinus(Box::new(Node::int(0)), Box::new(p.unary()?)))
            }
            _ => p.power(),
        })
    }

    fn power(&mut self) -> PResult {
        self.nested(|p| {
            let mut base = p.postfix()?;
            while p.eat(&Tok::Caret) {
                let exp = if p.peek() == Some(&Tok::LBrace) { p.primary()? } else { p.unary()? };
                base = Node::Pow(Box::new(base), Box::new(exp));
            }
            Ok(base)
        })
    }

    fn postfix(&mut self) -> PResult {
        let mut node = self.primary()?;
        let mut count = 0;
        loop {
            node = match self.peek() {
                Some(Tok::Bang) => Node::Factorial(Box::new(node)),
                Some(Tok::Percent) => Node::Percent(Box::new(node)),
                _ => return Ok(node),
            };
            self.pos += 1;
            count += 1;
            if count > MAX_DEPTH {
                return Err(ParseError::TooDeep);
            }
        }
    }

    /// A subscript after a name or number: `x_1`, `a_{n+1}`, `204_5` (a base-5 numeral,
    /// kept as a name so that it equals only itself).
    fn subscripted(&mut self, base: String) -> Result<String, ParseError> {
        if !self.eat(&Tok::Underscore) {
            return Ok(base);
        }
        let sub = self.arg()?;
        Ok(format!("{base}_{sub}").replace(' ', ""))
    }

    fn primary(&mut self) -> PResult {
        self.nested(|p| {
            let Some(tok) = p.bump() else {
                return syntax("unexpected end");
            };
            match tok {
                Tok::Num(text) => {
                    if p.peek() == Some(&Tok::Underscore) {
                        return Ok(Node::Sym(p.subscripted(text)?));
                    }
                    number_node(&text).ok_or_else(|| ParseError::Syntax(format!("bad number {text}")))
                }
                Tok::Ident(name) => {
                    if name == "e" && p.peek() != Some(&Tok::Underscore) {
                        return Ok(Node::Const(Constant::E));
                    }
                    Ok(Node::Sym(p.subscripted(name)?))
                }
                Tok::Pi => Ok(Node::Const(Constant::Pi)),
                Tok::Infty => Ok(Node::Const(Constant::Infinity)),
                Tok::EmptySet => Ok(Node::Set(vec![])),
                Tok::LParen => p.bracketed('('),
                Tok::LBrack => p.bracketed('['),
                Tok::LAngle => {
                    let items = p.items()?;
                    p.expect(&Tok::RAngle)?;
                    Ok(Node::Tuple { open: '(', close: ')', items })
                }
                Tok::LBrace => {
                    let mut items = p.items()?;
                    p.expect(&Tok::RBrace)?;
                    // `{x+1}` groups; `{1, 2}` (no backslashes) is a set.
                    Ok(if items.len() == 1 { items.remove(0) } else { Node::Set(items) })
                }
                Tok::LSet => {
                    if p.eat(&Tok::RSet) {
                        return Ok(Node::Set(vec![]));
                    }
                    let items = p.items()?;
                    p.expect(&Tok::RSet)?;
                    Ok(Node::Set(items))
                }
                Tok::Bar => {
                    p.in_abs += 1;
                    let inner = p.additive();
                    p.in_abs -= 1;
                    let inner = inner?;
                    p.expect(&Tok::Bar)?;
                    Ok(Node::Call(Func::Abs, vec![inner]))
                }
                Tok::Frac => {
                    let a = p.arg()?;
                    let b = p.arg()?;
                    Ok(Node::Div(Box::new(a), Box::new(b)))
                }
                Tok::Sqrt => {
                    if p.eat(&Tok::LBrack) {
                        let n = p.additive()?;
                        p.expect(&Tok::RBrack)?;
                        let x = p.arg()?;
                        return Ok(Node::Call(Func::Root, vec![x, n]));
                    }
                    Ok(Node::Call(Func::Sqrt, vec![p.arg()?]))
                }
                Tok::Binom => {
                    let n = p.arg()?;
                    let k = p.arg()?;
                    Ok(Node::Call(Func::Binom, vec![n, k]))
                }
                Tok::Func(f) => p.function(Some(f)),
                Tok::Log => p.function(None),
                Tok::BeginMatrix => p.matrix(),
                other => syntax(format!("unexpected {other:?}")),
            }
        })
    }

    /// After `(` or `[`: a group, or a tuple / interval with its closing bracket.
    fn bracketed(&mut self, open: char) -> PResult {
        let mut items = self.items()?;
        let close = match self.bump() {
            Some(Tok::RParen) => ')',
            Some(Tok::RBrack) => ']',
            other => return syntax(format!("expected a closing bracket, found {other:?}")),
        };
        if items.len() > 1 {
            return Ok(Node::Tuple { open, close, items });
        }
        if (open == '(') == (close == ')') {
            return Ok(items.remove(0));
        }
        syntax("a half-open bracket around one item")
    }

    /// A TeX argument: a `{...}` group, else one token (one digit of a number).
    fn arg(&mut self) -> PResult {
        match self.peek() {
            Some(Tok::LBrace) => {
                self.pos += 1;
                let inner = self.additive()?;
                self.expect(&Tok::RBrace)?;
                Ok(inner)
            }
            Some(Tok::Num(text)) if text.len() > 1 => {
                let (first, rest) = text.split_at(1);
                let (first, rest) = (first.to_string(), rest.to_string());
                // Leave the remaining digits as the next token, glued on (no space).
                self.toks[self.pos] = Token { tok: Tok::Num(rest), space: false };
                number_node(&first).ok_or_else(|| ParseError::Syntax(format!("bad number {first}")))
            }
            _ => self.primary(),
        }
    }

    /// A function name was read: `^2` / `^{-1}` and `_b` (for `\log`), then the argument:
    /// `(...)`, `{...}`, or a product of plain factors (`\sin 2x`).
    fn function(&mut self, func: Option<Func>) -> PResult {
        let mut power = None;
        let mut base = None;
        for _ in 0..2 {
            if self.eat(&Tok::Caret) {
                power = Some(self.arg()?);
            } else if func.is_none() && self.eat(&Tok::Underscore) {
                base = Some(self.arg()?);
            }
        }
        let arg = match self.peek() {
            Some(Tok::LParen) => {
                self.pos += 1;
                let inner = self.additive()?;
                self.expect(&Tok::RParen)?;
                inner
            }
            Some(Tok::LBrace) => self.arg()?,
            _ => {
                let mut acc = self.power()?;
                while matches!(self.peek(), Some(Tok::Num(_) | Tok::Ident(_) | Tok::Pi | Tok::Frac | Tok::Sqrt)) {
                    let rhs = self.power()?;
                    acc = mul(acc, rhs);
                }
                acc
            }
        };
        // `\sin^{-1}` is arcsin, not a reciprocal.
        let inverse = power.as_ref().is_some_and(|p| matches!(p, Node::Neg(x) if x.as_int_literal() == Some(1)));
        let call = match (func, base) {
            (Some(f), _) => match f.inverse().filter(|_| inverse) {
                Some(inv) => return Ok(Node::Call(inv, vec![arg])),
                None => Node::Call(f, vec![arg]),
            },
            (None, Some(b)) => Node::Call(Func::LogBase, vec![arg, b]),
            (None, None) => Node::Call(Func::Ln, vec![arg]),
        };
        Ok(match power {
            Some(p) => Node::Pow(Box::new(call), Box::new(p)),
            None => call,
        })
    }

    fn matrix(&mut self) -> PResult {
        let mut rows: Vec<Vec<Node>> = Vec::new();
        let mut row = Vec::new();
        loop {
            if self.eat(&Tok::EndMatrix) {
                break;
            }
            row.push(self.additive()?);
            match self.bump() {
                Some(Tok::Amp) => {}
                Some(Tok::RowSep) => rows.push(mem::take(&mut row)),
                Some(Tok::EndMatrix) => break,
                other => return syntax(format!("expected & or \\\\ in a matrix, found {other:?}")),
            }
        }
        if !row.is_empty() {
            rows.push(row);
        }
        let width = rows.first().map_or(0, Vec::len);
        if width == 0 || rows.iter().any(|r| r.len() != width) {
            return syntax("a matrix with ragged or empty rows");
        }
        Ok(Node::Matrix(rows))
    }
}

/// Whether a product so far ends in a written number, so that another number right after
/// it (`2 3`, `x^2 3`) is two numbers side by side rather than a product.
fn ends_with_number(acc: &Node) -> bool {
    match acc {
        Node::Num(_) => true,
        Node::Mul(v) => v.last().is_some_and(ends_with_number),
        Node::Pow(_, e) => ends_with_number(e),
        _ => false,
    }
}

fn mul(acc: Node, rhs: Node) -> Node {
    match acc {
        Node::Mul(mut v) => {
            v.push(rhs);
            Node::Mul(v)
        }
        other => Node::Mul(vec![other, rhs]),
    }
}

/// Parses cleaned answer text (see [`crate::normalize::normalize`]).
pub fn parse(s: &str) -> Result<Node, ParseError> {
    let toks = tokenize(s);
    if let Some(Token { tok: Tok::Unknown(u), .. }) = toks.iter().find(|t| matches!(t.tok, Tok::Unknown(_))) {
        return syntax(format!("unknown {u}"));
    }
    Parser { toks, pos: 0, depth: 0, in_abs: 0 }.answer()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        parse(s).map(|n| n.to_string()).unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn precedence_and_implicit_products() {
        assert_eq!(p("1+2*3"), "1 + 2*3");
        assert_eq!(p("-2^2"), "-2^2");
        assert_eq!(p("2x^2y"), "2*x^2*y");
        assert_eq!(p("2^3^2"), "2^(3^2)");
        assert_eq!(p("\\frac12x"), "1/2*x");
        assert_eq!(p("\\sqrt3 4"), "sqrt(3)*4");
        assert_eq!(p("\\sin^2 x + \\cos^2x"), "sin(x)^2 + cos(x)^2");
        assert_eq!(p("\\log_2 8"), "log(8, 2)");
        assert_eq!(p("\\sin 2x \\cos x"), "sin(2*x)*cos(x)");
    }

    #[test]
    fn structures() {
        assert_eq!(p("(1, 2]"), "(1, 2]");
        assert_eq!(p("\\{1, 2\\}"), "{1, 2}");
        assert_eq!(p("1, 2"), "1, 2");
        assert_eq!(p("x \\in [0, 1)"), "[0, 1)");
        assert_eq!(p("x = 3"), "x = 3");
        assert_eq!(p("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"), "[[1, 2], [3, 4]]");
        assert_eq!(p("[0,1) \\cup (2, \\infty)"), "[0, 1) U (2, oo)");
        assert_eq!(p("2 1/3"), "2 + 1/3");
        assert_eq!(p("2\\frac{1}{3}"), "2 + 1/3");
        assert_eq!(p("2\\frac{x}{3}"), "2*x/3");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in ["", "(", "1 +", "\\frac", "2 3", "[1)", "\\begin{pmatrix} 1 & 2 \\\\ 3 \\end{pmatrix}", "\\foo"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse(&"(".repeat(10_000)), Err(ParseError::TooDeep));
        assert_eq!(parse(&"-".repeat(10_000)), Err(ParseError::TooDeep));
        assert_eq!(parse(&format!("3{}", "!".repeat(10_000))), Err(ParseError::TooDeep));
    }
}
