//! The parsed form of an answer: scalar expressions (numbers, symbols, operators,
//! functions) and the structures answers come in (tuples and intervals, sets, lists,
//! unions, matrices, relations, multiple-choice letters, plain text).
//!
//! The tree's depth is bounded by the parser's nesting limit, so the recursive walks
//! here (printing, collecting symbols) cannot overflow the stack.

use std::collections::BTreeSet;
use std::fmt;

use crate::rational::Rational;

/// A number as written. `exact` is `None` only when the literal does not fit an `i128`
/// rational (then `approx` carries it). `decimal` records a decimal point or exponent:
/// Math-Verify compares such answers at 6 decimal places.
#[derive(Clone, Debug, PartialEq)]
pub struct Number {
    pub text: String,
    pub exact: Option<Rational>,
    pub approx: f64,
    pub decimal: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Constant {
    Pi,
    E,
    Infinity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    Sqrt,
    /// `\sqrt[n]{x}`: arguments `[x, n]`.
    Root,
    Sin,
    Cos,
    Tan,
    Sec,
    Csc,
    Cot,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    /// `\ln`, and `\log` without a base (SymPy's reading: natural log).
    Ln,
    /// `\log_b x`: arguments `[x, b]`.
    LogBase,
    Exp,
    Abs,
    /// `\binom{n}{k}`: arguments `[n, k]`.
    Binom,
}

impl Func {
    pub fn name(self) -> &'static str {
        match self {
            Func::Sqrt => "sqrt",
            Func::Root => "root",
            Func::Sin => "sin",
            Func::Cos => "cos",
            Func::Tan => "tan",
            Func::Sec => "sec",
            Func::Csc => "csc",
            Func::Cot => "cot",
            Func::Asin => "asin",
            Func::Acos => "acos",
            Func::Atan => "atan",
            Func::Sinh => "sinh",
            Func::Cosh => "cosh",
            Func::Tanh => "tanh",
            Func::Ln => "ln",
            Func::LogBase => "log",
            Func::Exp => "exp",
            Func::Abs => "abs",
            Func::Binom => "binom",
        }
    }

    /// The inverse of a trigonometric function, for `\sin^{-1}`.
    pub fn inverse(self) -> Option<Func> {
        match self {
            Func::Sin => Some(Func::Asin),
            Func::Cos => Some(Func::Acos),
            Func::Tan => Some(Func::Atan),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl RelOp {
    pub fn symbol(self) -> &'static str {
        match self {
            RelOp::Eq => "=",
            RelOp::Ne => "!=",
            RelOp::Lt => "<",
            RelOp::Le => "<=",
            RelOp::Gt => ">",
            RelOp::Ge => ">=",
        }
    }

    /// The same relation read right to left: `a < b` is `b > a`.
    pub fn flipped(self) -> RelOp {
        match self {
            RelOp::Lt => RelOp::Gt,
            RelOp::Le => RelOp::Ge,
            RelOp::Gt => RelOp::Lt,
            RelOp::Ge => RelOp::Le,
            other => other,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Num(Number),
    /// A variable: one letter, a Greek letter, or a subscripted name (`x_1`, `204_5`).
    Sym(String),
    Const(Constant),
    Neg(Box<Node>),
    Add(Vec<Node>),
    Mul(Vec<Node>),
    Div(Box<Node>, Box<Node>),
    Pow(Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
    Factorial(Box<Node>),
    /// `x%`: worth `x/100`, and also accepted as `x` (see `equiv`).
    Percent(Box<Node>),
    /// `a \pm b`; the top level turns it into the set of both values.
    PlusMinus(Box<Node>, Box<Node>),
    /// A tuple or an interval, with its brackets: `(1, 2]`.
    Tuple {
        open: char,
        close: char,
        items: Vec<Node>,
    },
    /// `\{1, 2\}`: order does not matter.
    Set(Vec<Node>),
    /// A bare comma-separated list (`1, 2`), read as a set of answers, as Math-Verify does.
    List(Vec<Node>),
    Union(Vec<Node>),
    Matrix(Vec<Vec<Node>>),
    /// `first op1 s1 op2 s2 ...`: an equation, an inequality or a chain of them.
    Relation {
        first: Box<Node>,
        rest: Vec<(RelOp, Node)>,
    },
    /// A multiple-choice letter: `(B)`, `B`.
    Choice(char),
    /// Words or text the parser could not read; equal only to the same text.
    Text(String),
}

impl Node {
    pub fn int(n: i128) -> Node {
        let exact = Rational::int(n);
        Node::Num(Number { text: n.to_string(), exact, approx: n as f64, decimal: false })
    }

    /// A scalar expression, as opposed to a structure (set, tuple, relation, text...).
    pub fn is_scalar(&self) -> bool {
        matches!(
            self,
            Node::Num(_)
                | Node::Sym(_)
                | Node::Const(_)
                | Node::Neg(_)
                | Node::Add(_)
                | Node::Mul(_)
                | Node::Div(..)
                | Node::Pow(..)
                | Node::Call(..)
                | Node::Factorial(_)
                | Node::Percent(_)
                | Node::PlusMinus(..)
        )
    }

    /// The integer a literal like `3` stands for (not `3.0`, not `-3`).
    pub fn as_int_literal(&self) -> Option<i128> {
        match self {
            Node::Num(n) if !n.decimal => n.exact.filter(|r| r.is_integer()).map(Rational::numer),
            _ => None,
        }
    }

    /// The free variables of a scalar expression.
    pub fn symbols(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect_symbols(&mut out);
        out
    }

    fn collect_symbols(&self, out: &mut BTreeSet<String>) {
        match self {
            Node::Sym(s) => {
                out.insert(s.clone());
            }
            _ => self.for_each_child(|c| c.collect_symbols(out)),
        }
    }

    /// Whether a decimal literal (`0.5`, `1.5e3`) appears anywhere.
    pub fn has_decimal(&self) -> bool {
        match self {
            Node::Num(n) => n.decimal,
            _ => {
                let mut any = false;
                self.for_each_child(|c| any = any || c.has_decimal());
                any
            }
        }
    }

    pub fn has_plus_minus(&self) -> bool {
        match self {
            Node::PlusMinus(..) => true,
            _ => {
                let mut any = false;
                self.for_each_child(|c| any = any || c.has_plus_minus());
                any
            }
        }
    }

    fn for_each_child(&self, mut f: impl FnMut(&Node)) {
        match self {
            Node::Num(_) | Node::Sym(_) | Node::Const(_) | Node::Choice(_) | Node::Text(_) => {}
            Node::Neg(a) | Node::Factorial(a) | Node::Percent(a) => f(a),
            Node::Div(a, b) | Node::Pow(a, b) | Node::PlusMinus(a, b) => {
                f(a);
                f(b);
            }
            Node::Add(v) | Node::Mul(v) | Node::Call(_, v) | Node::Set(v) | Node::List(v) | Node::Union(v) => {
                v.iter().for_each(f)
            }
            Node::Tuple { items, .. } => items.iter().for_each(f),
            Node::Matrix(rows) => rows.iter().flatten().for_each(f),
            Node::Relation { first, rest } => {
                f(first);
                rest.iter().for_each(|(_, n)| f(n));
            }
        }
    }

    /// Both values of every `\pm` (`1 \pm \sqrt{2}` -> `[1 + sqrt(2), 1 - sqrt(2)]`); `None`
    /// past `limit` results, so a string of `\pm` cannot blow up.
    pub fn expand_plus_minus(&self, limit: usize) -> Option<Vec<Node>> {
        let variants = |a: &Node, b: &Node, wrap: &dyn Fn(Node, Node) -> Node| -> Option<Vec<Node>> {
            let (xs, ys) = (a.expand_plus_minus(limit)?, b.expand_plus_minus(limit)?);
            if xs.len() * ys.len() > limit {
                return None;
            }
            Some(xs.iter().flat_map(|x| ys.iter().map(|y| wrap(x.clone(), y.clone()))).collect())
        };
        match self {
            Node::PlusMinus(a, b) => {
                let plus = variants(a, b, &|x, y| Node::Add(vec![x, y]))?;
                let minus = variants(a, b, &|x, y| Node::Add(vec![x, Node::Neg(Box::new(y))]))?;
                if plus.len() + minus.len() > limit {
                    return None;
                }
                Some(plus.into_iter().chain(minus).collect())
            }
            Node::Neg(a) => Some(a.expand_plus_minus(limit)?.into_iter().map(|x| Node::Neg(Box::new(x))).collect()),
            Node::Div(a, b) => variants(a, b, &|x, y| Node::Div(Box::new(x), Box::new(y))),
            Node::Pow(a, b) => variants(a, b, &|x, y| Node::Pow(Box::new(x), Box::new(y))),
            Node::Add(v) | Node::Mul(v) => {
                let mut acc: Vec<Vec<Node>> = vec![vec![]];
                for t in v {
                    let opts = t.expand_plus_minus(limit)?;
                    if acc.len() * opts.len() > limit {
                        return None;
                    }
                    acc = acc
                        .iter()
                        .flat_map(|p| opts.iter().map(move |o| [p.clone(), vec![o.clone()]].concat()))
                        .collect();
                }
                let add = matches!(self, Node::Add(_));
                Some(acc.into_iter().map(|v| if add { Node::Add(v) } else { Node::Mul(v) }).collect())
            }
            // Elsewhere (inside functions, structures) a `\pm` stays and the value is undefined.
            other => Some(vec![other.clone()]),
        }
    }

    fn precedence(&self) -> u8 {
        match self {
            Node::Add(_) | Node::PlusMinus(..) => 1,
            Node::Mul(_) | Node::Div(..) => 2,
            Node::Neg(_) => 3,
            Node::Pow(..) => 4,
            Node::Factorial(_) | Node::Percent(_) => 5,
            Node::Num(n) if n.text.starts_with('-') => 3,
            _ => 6,
        }
    }
}

fn paren(f: &mut fmt::Formatter<'_>, n: &Node, when: bool) -> fmt::Result {
    if when { write!(f, "({n})") } else { write!(f, "{n}") }
}

fn join(f: &mut fmt::Formatter<'_>, items: &[Node], sep: &str) -> fmt::Result {
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write!(f, "{x}")?;
    }
    Ok(())
}

/// A canonical, readable form: what `eval verify` prints as `*_normalized`.
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Num(n) => f.write_str(&n.text),
            Node::Sym(s) => f.write_str(s),
            Node::Const(Constant::Pi) => f.write_str("pi"),
            Node::Const(Constant::E) => f.write_str("e"),
            Node::Const(Constant::Infinity) => f.write_str("oo"),
            Node::Neg(a) => {
                f.write_str("-")?;
                paren(f, a, a.precedence() <= 1)
            }
            Node::Add(terms) => {
                for (i, t) in terms.iter().enumerate() {
                    match t {
                        Node::Neg(inner) if i > 0 => {
                            f.write_str(" - ")?;
                            paren(f, inner, inner.precedence() <= 1)?;
                        }
                        _ => {
                            if i > 0 {
                                f.write_str(" + ")?;
                            }
                            paren(f, t, t.precedence() <= 1)?;
                        }
                    }
                }
                Ok(())
            }
            Node::Mul(fs) => {
                for (i, x) in fs.iter().enumerate() {
                    if i > 0 {
                        f.write_str("*")?;
                    }
                    paren(f, x, x.precedence() <= 1 || (i > 0 && x.precedence() == 3))?;
                }
                Ok(())
            }
            Node::Div(a, b) => {
                paren(f, a, a.precedence() <= 1)?;
                f.write_str("/")?;
                paren(f, b, b.precedence() <= 3)
            }
            Node::Pow(a, b) => {
                paren(f, a, a.precedence() <= 5)?;
                f.write_str("^")?;
                paren(f, b, b.precedence() < 6)
            }
            Node::Call(func, args) => {
                write!(f, "{}(", func.name())?;
                join(f, args, ", ")?;
                f.write_str(")")
            }
            Node::Factorial(a) => {
                paren(f, a, a.precedence() < 6)?;
                f.write_str("!")
            }
            Node::Percent(a) => {
                paren(f, a, a.precedence() < 5)?;
                f.write_str("%")
            }
            Node::PlusMinus(a, b) => {
                write!(f, "{a} +- ")?;
                paren(f, b, b.precedence() <= 1)
            }
            Node::Tuple { open, close, items } => {
                write!(f, "{open}")?;
                join(f, items, ", ")?;
                write!(f, "{close}")
            }
            Node::Set(items) => {
                f.write_str("{")?;
                join(f, items, ", ")?;
                f.write_str("}")
            }
            Node::List(items) => join(f, items, ", "),
            Node::Union(parts) => join(f, parts, " U "),
            Node::Matrix(rows) => {
                f.write_str("[")?;
                for (i, row) in rows.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str("[")?;
                    join(f, row, ", ")?;
                    f.write_str("]")?;
                }
                f.write_str("]")
            }
            Node::Relation { first, rest } => {
                write!(f, "{first}")?;
                for (op, n) in rest {
                    write!(f, " {} {n}", op.symbol())?;
                }
                Ok(())
            }
            Node::Choice(c) => write!(f, "({c})"),
            Node::Text(t) => f.write_str(t),
        }
    }
}
