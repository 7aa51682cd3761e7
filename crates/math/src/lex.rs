//! Tokens of a cleaned answer: numbers, names, TeX commands, operators, brackets.
//!
//! Unknown commands and characters become [`Tok::Unknown`], which the parser refuses (the
//! answer then compares as text). Whitespace is not a token but is remembered on the
//! next one: `2 1/3` is a mixed number, `21/3` is not.

use std::mem;

use crate::expr::{Func, RelOp};

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    Num(String),
    Ident(String),
    Func(Func),
    /// `\log`: natural unless it has a base subscript.
    Log,
    Frac,
    Sqrt,
    Binom,
    Pi,
    Infty,
    Plus,
    Minus,
    Star,
    Slash,
    Caret,
    Bang,
    Percent,
    Pm,
    Mp,
    LParen,
    RParen,
    LBrack,
    RBrack,
    LBrace,
    RBrace,
    LSet,
    RSet,
    LAngle,
    RAngle,
    Bar,
    Comma,
    Semi,
    Amp,
    RowSep,
    Underscore,
    Rel(RelOp),
    In,
    Cup,
    EmptySet,
    BeginMatrix,
    EndMatrix,
    Unknown(String),
}

#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    /// Whitespace came before it: `2 1/3` is a mixed number, `21/3` is not.
    pub(crate) space: bool,
}

const GREEK: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "rho",
    "varrho",
    "sigma",
    "varsigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Pi",
    "Sigma",
    "Upsilon",
    "Phi",
    "Psi",
    "Omega",
];

/// Commands that only style what follows; the tokenizer drops them.
const IGNORED: &[&str] = &[
    "left",
    "right",
    "big",
    "Big",
    "bigg",
    "Bigg",
    "bigl",
    "bigr",
    "Bigl",
    "Bigr",
    "biggl",
    "biggr",
    "Biggl",
    "Biggr",
    "displaystyle",
    "textstyle",
    "limits",
    "nolimits",
    "quad",
    "qquad",
    "text",
    "textrm",
    "textbf",
    "textit",
    "textnormal",
    "mbox",
    "mathrm",
    "mathbf",
    "mathit",
    "mathsf",
    "mathbb",
    "mathcal",
    "boldsymbol",
    "bm",
    "operatorname",
    "boxed",
    "fbox",
    "circ",
    "degree",
];

const MATRIX_ENVS: &[&str] = &["pmatrix", "bmatrix", "Bmatrix", "matrix", "smallmatrix", "array"];

/// Plain-text names read without a backslash (`sqrt(2)`, `sin x`, `pi`).
const WORDS: &[(&str, Tok)] = &[
    ("arcsin", Tok::Func(Func::Asin)),
    ("arccos", Tok::Func(Func::Acos)),
    ("arctan", Tok::Func(Func::Atan)),
    ("infinity", Tok::Infty),
    ("infty", Tok::Infty),
    ("sinh", Tok::Func(Func::Sinh)),
    ("cosh", Tok::Func(Func::Cosh)),
    ("tanh", Tok::Func(Func::Tanh)),
    ("sqrt", Tok::Sqrt),
    ("sin", Tok::Func(Func::Sin)),
    ("cos", Tok::Func(Func::Cos)),
    ("tan", Tok::Func(Func::Tan)),
    ("sec", Tok::Func(Func::Sec)),
    ("csc", Tok::Func(Func::Csc)),
    ("cot", Tok::Func(Func::Cot)),
    ("log", Tok::Log),
    ("exp", Tok::Func(Func::Exp)),
    ("ln", Tok::Func(Func::Ln)),
    ("pi", Tok::Pi),
];

fn command(name: &str) -> Option<Tok> {
    Some(match name {
        "frac" | "dfrac" | "tfrac" | "cfrac" => Tok::Frac,
        "sqrt" => Tok::Sqrt,
        "binom" | "dbinom" | "tbinom" => Tok::Binom,
        "pi" => Tok::Pi,
        "infty" | "infin" => Tok::Infty,
        "cdot" | "times" | "ast" => Tok::Star,
        "div" => Tok::Slash,
        "pm" => Tok::Pm,
        "mp" => Tok::Mp,
        "le" | "leq" | "leqslant" => Tok::Rel(RelOp::Le),
        "ge" | "geq" | "geqslant" => Tok::Rel(RelOp::Ge),
        "lt" => Tok::Rel(RelOp::Lt),
        "gt" => Tok::Rel(RelOp::Gt),
        "ne" | "neq" => Tok::Rel(RelOp::Ne),
        // Math-Verify reads `x \approx 11` as the answer 11.
        "approx" | "simeq" => Tok::Rel(RelOp::Eq),
        "in" => Tok::In,
        "cup" => Tok::Cup,
        "emptyset" | "varnothing" => Tok::EmptySet,
        "lvert" | "rvert" | "vert" => Tok::Bar,
        "langle" => Tok::LAngle,
        "rangle" => Tok::RAngle,
        "lbrace" => Tok::LSet,
        "rbrace" => Tok::RSet,
        "lbrack" => Tok::LBrack,
        "rbrack" => Tok::RBrack,
        "log" => Tok::Log,
        "ln" => Tok::Func(Func::Ln),
        "exp" => Tok::Func(Func::Exp),
        "sin" => Tok::Func(Func::Sin),
        "cos" => Tok::Func(Func::Cos),
        "tan" => Tok::Func(Func::Tan),
        "sec" => Tok::Func(Func::Sec),
        "csc" => Tok::Func(Func::Csc),
        "cot" => Tok::Func(Func::Cot),
        "arcsin" => Tok::Func(Func::Asin),
        "arccos" => Tok::Func(Func::Acos),
        "arctan" => Tok::Func(Func::Atan),
        "sinh" => Tok::Func(Func::Sinh),
        "cosh" => Tok::Func(Func::Cosh),
        "tanh" => Tok::Func(Func::Tanh),
        _ => return None,
    })
}

fn greek_name(c: char) -> Option<&'static str> {
    Some(match c {
        'α' => "alpha",
        'β' => "beta",
        'γ' => "gamma",
        'δ' => "delta",
        'ε' => "epsilon",
        'θ' => "theta",
        'λ' => "lambda",
        'μ' => "mu",
        'ρ' => "rho",
        'σ' => "sigma",
        'τ' => "tau",
        'φ' => "phi",
        'ω' => "omega",
        _ => return None,
    })
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
    out: Vec<Token>,
    space: bool,
}

impl Lexer {
    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }

    fn push(&mut self, tok: Tok) {
        self.out.push(Token { tok, space: mem::take(&mut self.space) });
    }

    fn number(&mut self) {
        let start = self.i;
        while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if self.peek(0) == Some('.') && self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
            while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
        }
        // Scientific notation: 1.5e3, 2E-4 (but `2e` alone is 2 times e).
        if matches!(self.peek(0), Some('e' | 'E')) {
            let sign = matches!(self.peek(1), Some('+' | '-')) as usize;
            if self.peek(1 + sign).is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1 + sign;
                while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
            }
        }
        let text: String = self.chars[start..self.i].iter().collect();
        self.push(Tok::Num(text));
    }

    fn letters(&mut self) {
        let prev_letter = self.i > 0 && self.chars[self.i - 1].is_ascii_alphabetic();
        if !prev_letter {
            for (word, tok) in WORDS {
                let n = word.len();
                if self.chars.len() >= self.i + n && self.chars[self.i..self.i + n].iter().copied().eq(word.chars()) {
                    self.i += n;
                    self.push(tok.clone());
                    return;
                }
            }
        }
        let c = self.chars[self.i];
        self.i += 1;
        self.push(Tok::Ident(c.to_string()));
    }

    /// `{name}` after `\begin` / `\end`.
    fn env_name(&mut self) -> String {
        while self.peek(0) == Some(' ') {
            self.i += 1;
        }
        if self.peek(0) != Some('{') {
            return String::new();
        }
        let start = self.i + 1;
        let end = self.chars[start..].iter().position(|&c| c == '}').map_or(self.chars.len(), |p| start + p);
        self.i = (end + 1).min(self.chars.len());
        self.chars[start..end].iter().collect()
    }

    fn backslash(&mut self) {
        self.i += 1;
        let Some(c) = self.peek(0) else {
            self.push(Tok::Unknown("\\".into()));
            return;
        };
        if !c.is_ascii_alphabetic() {
            self.i += 1;
            match c {
                '\\' => self.push(Tok::RowSep),
                '{' => self.push(Tok::LSet),
                '}' => self.push(Tok::RSet),
                '%' => self.push(Tok::Percent),
                '|' => self.push(Tok::Bar),
                ',' | ';' | ':' | '!' | ' ' | '>' | '$' | '(' | ')' | '[' | ']' => self.space = true,
                other => self.push(Tok::Unknown(format!("\\{other}"))),
            }
            return;
        }
        let start = self.i;
        while self.peek(0).is_some_and(|c| c.is_ascii_alphabetic()) {
            self.i += 1;
        }
        let name: String = self.chars[start..self.i].iter().collect();
        if let Some(tok) = command(&name) {
            self.push(tok);
        } else if GREEK.contains(&name.as_str()) {
            let base = name.strip_prefix("var").filter(|b| GREEK.contains(b)).unwrap_or(&name).to_string();
            self.push(Tok::Ident(base));
        } else if name == "begin" || name == "end" {
            let env = self.env_name();
            if !MATRIX_ENVS.contains(&env.as_str()) {
                self.push(Tok::Unknown(format!("\\{name}{{{env}}}")));
            } else if name == "end" {
                self.push(Tok::EndMatrix);
            } else {
                if env == "array" {
                    self.env_name(); // the column spec: {cc}
                }
                self.push(Tok::BeginMatrix);
            }
        } else if IGNORED.contains(&name.as_str()) {
            if matches!(name.as_str(), "left" | "right") && self.peek(0) == Some('.') {
                self.i += 1;
            }
            self.space = true;
        } else {
            self.push(Tok::Unknown(format!("\\{name}")));
        }
    }

    fn run(mut self) -> Vec<Token> {
        while let Some(c) = self.peek(0) {
            if c.is_whitespace() {
                self.space = true;
                self.i += 1;
                continue;
            }
            if c.is_ascii_digit() || (c == '.' && self.peek(1).is_some_and(|d| d.is_ascii_digit())) {
                self.number();
                continue;
            }
            if c.is_ascii_alphabetic() {
                self.letters();
                continue;
            }
            if c == '\\' {
                self.backslash();
                continue;
            }
            self.i += 1;
            let next = self.peek(0);
            let tok = match c {
                '+' => Tok::Plus,
                '-' | '−' | '–' => Tok::Minus,
                '*' if next == Some('*') => {
                    self.i += 1;
                    Tok::Caret
                }
                '*' | '×' | '·' | '⋅' => Tok::Star,
                '/' | '÷' => Tok::Slash,
                '^' => Tok::Caret,
                '_' => Tok::Underscore,
                '!' if next == Some('=') => {
                    self.i += 1;
                    Tok::Rel(RelOp::Ne)
                }
                '!' => Tok::Bang,
                '%' => Tok::Percent,
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                '[' => Tok::LBrack,
                ']' => Tok::RBrack,
                '{' => Tok::LBrace,
                '}' => Tok::RBrace,
                '|' => Tok::Bar,
                ',' => Tok::Comma,
                ';' => Tok::Semi,
                '&' => Tok::Amp,
                '=' => {
                    if next == Some('=') {
                        self.i += 1;
                    }
                    Tok::Rel(RelOp::Eq)
                }
                '<' if next == Some('=') => {
                    self.i += 1;
                    Tok::Rel(RelOp::Le)
                }
                '>' if next == Some('=') => {
                    self.i += 1;
                    Tok::Rel(RelOp::Ge)
                }
                '<' => Tok::Rel(RelOp::Lt),
                '>' => Tok::Rel(RelOp::Gt),
                '≤' | '⩽' => Tok::Rel(RelOp::Le),
                '≥' | '⩾' => Tok::Rel(RelOp::Ge),
                '≠' => Tok::Rel(RelOp::Ne),
                '≈' => Tok::Rel(RelOp::Eq),
                'π' => Tok::Pi,
                '∞' => Tok::Infty,
                '√' => Tok::Sqrt,
                '±' => Tok::Pm,
                '∓' => Tok::Mp,
                '∪' => Tok::Cup,
                '∈' => Tok::In,
                '∅' => Tok::EmptySet,
                '⟨' => Tok::LAngle,
                '⟩' => Tok::RAngle,
                other => match greek_name(other) {
                    Some(name) => Tok::Ident(name.into()),
                    None => Tok::Unknown(other.to_string()),
                },
            };
            self.push(tok);
        }
        self.out
    }
}

pub(crate) fn tokenize(s: &str) -> Vec<Token> {
    Lexer { chars: s.chars().collect(), i: 0, out: Vec::new(), space: false }.run()
}
