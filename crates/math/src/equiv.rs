//! Whether two answers are the same, judged like Hugging Face's Math-Verify.
//!
//! Order of checks for a pair (gold, prediction):
//! 1. identical parsed forms are equal;
//! 2. `\pm` expands to the set of both values; a percentage `x%` equals `x/100` and `x`;
//! 3. relations: `x = 3` (one variable on the left) stands for `3`; two equations (or
//!    inequalities) are equal when `lhs - rhs` of one is a constant multiple of the other's
//!    (positive for inequalities, after turning `>` into `<`);
//! 4. structures: tuples and intervals in order with the same brackets, sets and bare
//!    lists in any order, matrices entry by entry, choice letters, text exactly;
//! 5. scalars: same free variables; constants evaluated exactly where rational (a decimal
//!    on either side allows rounding at 6 places), else as floats with a relative tolerance;
//!    with variables, evaluated at fixed pseudo-random rational points.

use std::collections::BTreeSet;

use crate::AnswerError;
use crate::eval::{Budget, EvalError, Value, eval};
use crate::expr::{Node, RelOp};
use crate::normalize::{choice_letter, is_words, normalize};
use crate::parse::{ParseError, parse};
use crate::rational::Rational;

/// Node visits one comparison may spend evaluating: far above any real answer pair
/// (a few hundred), low enough that a pathological pair ends in milliseconds.
const BUDGET: u64 = 2_000_000;
/// Points at which expressions with variables are compared, and how many must evaluate.
const POINTS: usize = 8;
const MIN_VALID_POINTS: usize = 3;
/// Decimal places a decimal answer is compared at (Math-Verify's `float_rounding`).
const DECIMAL_PLACES: u32 = 6;
/// Relative tolerance between float values, and the tighter one when a side was written
/// as a decimal (so that `2.718281828` is not `e`, as in Math-Verify).
const REL_TOL: f64 = 1e-9;
const DECIMAL_REL_TOL: f64 = 1e-13;
const ABS_TOL: f64 = 1e-12;
/// A `\pm` answer expands to at most this many values.
const PM_LIMIT: usize = 8;
/// Sets longer than this compare in order (an unordered match is quadratic).
const MAX_UNORDERED: usize = 256;

/// An answer string read into its parsed form. Words and text the parser cannot read
/// become [`Node::Text`]; only empty, oversized and over-nested answers are errors.
pub fn parse_answer(s: &str) -> Result<Node, AnswerError> {
    let cleaned = normalize(s)?;
    if cleaned.is_empty() {
        return Err(AnswerError::Empty);
    }
    if let Some(c) = choice_letter(&cleaned) {
        return Ok(Node::Choice(c));
    }
    if is_words(&cleaned) {
        return Ok(Node::Text(cleaned.to_ascii_lowercase()));
    }
    match parse(&cleaned) {
        Ok(node) => Ok(node),
        Err(ParseError::TooDeep) => Err(AnswerError::TooDeep),
        Err(ParseError::Syntax(_)) => Ok(Node::Text(cleaned.split_whitespace().collect())),
    }
}

/// Whether `pred` is a correct answer for `gold`. Never panics; an answer that cannot be
/// read (empty, longer than [`crate::MAX_ANSWER_BYTES`], nested too deep) is equal to
/// nothing.
pub fn equivalent(gold: &str, pred: &str) -> bool {
    match (parse_answer(gold), parse_answer(pred)) {
        (Ok(g), Ok(p)) => answers_equal(&g, &p),
        _ => false,
    }
}

/// [`equivalent`] on parsed answers.
pub fn answers_equal(gold: &Node, pred: &Node) -> bool {
    Comparer { budget: Budget::new(BUDGET) }.equal(gold, pred)
}

struct Comparer {
    budget: Budget,
}

fn hundredth(x: &Node) -> Node {
    Node::Div(Box::new(x.clone()), Box::new(Node::int(100)))
}

/// `first = ... = last` whose first side is only variables (`x`, `f(x)`, read as the
/// product `f*x`): an assignment, standing for its last side. Returns the name and value.
fn assignment(n: &Node) -> Option<(String, &Node)> {
    let Node::Relation { first, rest } = n else { return None };
    let names_only = match first.as_ref() {
        Node::Sym(_) => true,
        Node::Mul(v) => v.iter().all(|x| matches!(x, Node::Sym(_))),
        _ => false,
    };
    if !names_only || rest.iter().any(|(op, _)| *op != RelOp::Eq) {
        return None;
    }
    rest.last().map(|(_, last)| (first.to_string(), last))
}

fn is_equation(n: &Node) -> bool {
    matches!(n, Node::Relation { rest, .. } if rest.iter().all(|(op, _)| *op == RelOp::Eq))
}

fn last_side(n: &Node) -> Option<&Node> {
    match n {
        Node::Relation { rest, .. } => rest.last().map(|(_, x)| x),
        _ => None,
    }
}

/// A relation's sides and operators with `>` and `>=` turned around, so that `x > 1`
/// and `1 < x` read the same.
fn canonical_relation(n: &Node) -> Option<(Vec<&Node>, Vec<RelOp>)> {
    let Node::Relation { first, rest } = n else { return None };
    let mut sides: Vec<&Node> = std::iter::once(first.as_ref()).chain(rest.iter().map(|(_, x)| x)).collect();
    let mut ops: Vec<RelOp> = rest.iter().map(|(op, _)| *op).collect();
    let greater = ops.iter().any(|op| matches!(op, RelOp::Gt | RelOp::Ge));
    let less = ops.iter().any(|op| matches!(op, RelOp::Lt | RelOp::Le));
    if greater && !less {
        sides.reverse();
        ops.reverse();
        ops.iter_mut().for_each(|op| *op = op.flipped());
    }
    Some((sides, ops))
}

/// Fixed pseudo-random positive rationals, different for each variable of a point.
fn sample(point: usize, var: usize) -> Rational {
    const NUMS: [i128; 11] = [7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43];
    const DENS: [i128; 7] = [3, 5, 7, 4, 9, 2, 11];
    let num = NUMS[(point * 3 + var * 5) % NUMS.len()];
    let den = DENS[(point + var * 2) % DENS.len()];
    Rational::new(num, den).unwrap_or(Rational::ONE)
}

fn environment(point: usize, vars: &BTreeSet<String>) -> Vec<(String, Rational)> {
    vars.iter().enumerate().map(|(j, v)| (v.clone(), sample(point, j))).collect()
}

fn floats_close(a: f64, b: f64, rel: f64) -> bool {
    if a == b {
        return true; // also equal infinities
    }
    a.is_finite() && b.is_finite() && (a - b).abs() <= rel * a.abs().max(b.abs()) + ABS_TOL
}

fn values_equal(a: Value, b: Value, rounding: bool) -> bool {
    match (a, b) {
        (Value::Exact(x), Value::Exact(y)) => {
            if x == y {
                return true;
            }
            if !rounding {
                return false;
            }
            match (x.round_scaled(DECIMAL_PLACES), y.round_scaled(DECIMAL_PLACES)) {
                (Some(p), Some(q)) => p == q,
                _ => {
                    let scale = 10f64.powi(DECIMAL_PLACES as i32);
                    (x.to_f64() * scale).round() == (y.to_f64() * scale).round()
                }
            }
        }
        _ => floats_close(a.to_f64(), b.to_f64(), if rounding { DECIMAL_REL_TOL } else { REL_TOL }),
    }
}

impl Comparer {
    fn equal(&mut self, g: &Node, p: &Node) -> bool {
        if self.budget.exhausted() {
            return false;
        }
        if g == p {
            return true;
        }
        for (x, other, gold_side) in [(g, p, true), (p, g, false)] {
            if x.is_scalar()
                && x.has_plus_minus()
                && let Some(values) = x.expand_plus_minus(PM_LIMIT)
            {
                let list = Node::List(values);
                return if gold_side { self.equal(&list, other) } else { self.equal(other, &list) };
            }
        }
        match (g, p) {
            (Node::Percent(a), Node::Percent(b)) => return self.equal(a, b),
            (Node::Percent(a), other) => return self.equal(&hundredth(a), other) || self.equal(a, other),
            (other, Node::Percent(b)) => return self.equal(other, &hundredth(b)) || self.equal(other, b),
            _ => {}
        }
        if let Some(answer) = self.relations(g, p) {
            return answer;
        }
        match (g, p) {
            (Node::Text(a), Node::Text(b)) => a == b,
            (Node::Choice(a), Node::Choice(b)) => a == b,
            (Node::Choice(c), Node::Sym(s)) | (Node::Sym(s), Node::Choice(c)) => {
                s.len() == 1 && s.eq_ignore_ascii_case(&c.to_string())
            }
            (Node::Tuple { open: o1, close: c1, items: a }, Node::Tuple { open: o2, close: c2, items: b }) => {
                o1 == o2 && c1 == c2 && self.in_order(a, b)
            }
            (Node::Set(a) | Node::List(a), Node::Set(b) | Node::List(b)) | (Node::Union(a), Node::Union(b)) => {
                self.any_order(a, b)
            }
            // `1, 2` written without brackets against the pair `(1, 2)`.
            (Node::List(a), Node::Tuple { open: '(', close: ')', items: b })
            | (Node::Tuple { open: '(', close: ')', items: a }, Node::List(b)) => self.in_order(a, b),
            (Node::Matrix(a), Node::Matrix(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(r, s)| r.len() == s.len() && r.iter().zip(s).all(|(x, y)| self.equal(x, y)))
            }
            // `\{3\}` against `3`.
            (Node::Set(a), x) if a.len() == 1 && x.is_scalar() => self.equal(&a[0], x),
            (x, Node::Set(b)) if b.len() == 1 && x.is_scalar() => self.equal(x, &b[0]),
            (a, b) if a.is_scalar() && b.is_scalar() => self.scalars_equal(a, b),
            _ => false,
        }
    }

    /// `None` when neither side is a relation.
    fn relations(&mut self, g: &Node, p: &Node) -> Option<bool> {
        let (g_rel, p_rel) = (matches!(g, Node::Relation { .. }), matches!(p, Node::Relation { .. }));
        Some(match (g_rel, p_rel) {
            (false, false) => return None,
            // Gold `x = 3`, prediction `3`.
            (true, false) => match assignment(g) {
                Some((_, value)) => self.equal(value, p),
                None => false,
            },
            // Gold `3`, prediction `x = 3` or `k = 1 + 2 = 3`: the last value counts.
            (false, true) => match last_side(p) {
                Some(value) if is_equation(p) => self.equal(g, value),
                _ => false,
            },
            (true, true) => match (assignment(g), assignment(p)) {
                (Some((x, a)), Some((y, b))) => x == y && self.equal(a, b),
                _ => self.relations_equal(g, p),
            },
        })
    }

    fn relations_equal(&mut self, g: &Node, p: &Node) -> bool {
        let (Some((gs, gops)), Some((ps, pops))) = (canonical_relation(g), canonical_relation(p)) else {
            return false;
        };
        let all_eq = |ops: &[RelOp]| ops.iter().all(|op| *op == RelOp::Eq);
        if all_eq(&gops) && all_eq(&pops) {
            // An equation chain stands for its first and last sides (Math-Verify's reading).
            let (Some(gl), Some(pl)) = (gs.last(), ps.last()) else { return false };
            return self.proportional(gs[0], gl, ps[0], pl, false);
        }
        if gops != pops {
            return false;
        }
        if gops.len() == 1 {
            return self.proportional(gs[0], gs[1], ps[0], ps[1], gops[0] != RelOp::Ne);
        }
        gs.iter().zip(&ps).all(|(a, b)| self.equal(a, b))
    }

    /// Whether `l1 - r1 = k (l2 - r2)` for one constant `k != 0` (`k > 0` when `positive`).
    fn proportional(&mut self, l1: &Node, r1: &Node, l2: &Node, r2: &Node, positive: bool) -> bool {
        let vars: BTreeSet<String> = l1.symbols().into_iter().chain(r1.symbols()).collect();
        let vars2: BTreeSet<String> = l2.symbols().into_iter().chain(r2.symbols()).collect();
        if vars != vars2 {
            return false;
        }
        let points = if vars.is_empty() { 1 } else { POINTS };
        // (d1, scale1, d2, scale2) per point: the differences and the sizes they came from.
        let mut samples = Vec::new();
        for k in 0..points {
            let env = environment(k, &vars);
            let mut side = |n: &Node| eval(n, &env, &mut self.budget).map(Value::to_f64);
            match (side(l1), side(r1), side(l2), side(r2)) {
                (Ok(a), Ok(b), Ok(c), Ok(d)) => {
                    samples.push((a - b, a.abs().max(b.abs()), c - d, c.abs().max(d.abs())))
                }
                (Err(EvalError::Budget), ..) | (_, Err(EvalError::Budget), ..) => return false,
                _ => {}
            }
        }
        if samples.len() < points.min(MIN_VALID_POINTS) || samples.iter().any(|s| !s.0.is_finite() || !s.2.is_finite())
        {
            return false;
        }
        let zero = |d: f64, scale: f64| d.abs() <= REL_TOL * scale + ABS_TOL;
        let Some(&(d1, _, d2, _)) =
            samples.iter().filter(|s| !zero(s.2, s.3)).max_by(|a, b| a.2.abs().total_cmp(&b.2.abs()))
        else {
            // The second difference is zero everywhere: so must the first be.
            return samples.iter().all(|s| zero(s.0, s.1));
        };
        let k = d1 / d2;
        if !k.is_finite() || k == 0.0 || (positive && k < 0.0) {
            return false;
        }
        samples.iter().all(|&(a, sa, b, sb)| (a - k * b).abs() <= REL_TOL * (sa + k.abs() * sb) + ABS_TOL)
    }

    fn in_order(&mut self, a: &[Node], b: &[Node]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| self.equal(x, y))
    }

    /// Set equality: every element of each side equals some element of the other.
    fn any_order(&mut self, a: &[Node], b: &[Node]) -> bool {
        let (a, b) = (expand_elements(a), expand_elements(b));
        if a.len() > MAX_UNORDERED || b.len() > MAX_UNORDERED {
            return self.in_order(&a, &b);
        }
        a.iter().all(|x| b.iter().any(|y| self.equal(x, y))) && b.iter().all(|y| a.iter().any(|x| self.equal(x, y)))
    }

    fn scalars_equal(&mut self, a: &Node, b: &Node) -> bool {
        let vars = a.symbols();
        if vars != b.symbols() {
            return false;
        }
        if vars.is_empty() {
            let rounding = a.has_decimal() || b.has_decimal();
            return match (eval(a, &[], &mut self.budget), eval(b, &[], &mut self.budget)) {
                (Ok(x), Ok(y)) => values_equal(x, y, rounding),
                _ => false,
            };
        }
        let mut valid = 0;
        for k in 0..POINTS {
            let env = environment(k, &vars);
            match (eval(a, &env, &mut self.budget), eval(b, &env, &mut self.budget)) {
                (Ok(x), Ok(y)) => {
                    if !values_equal(x, y, false) {
                        return false;
                    }
                    valid += 1;
                }
                (Err(EvalError::Budget), _) | (_, Err(EvalError::Budget)) => return false,
                // Outside the domain at this point (a pole, a log of a negative): skip it.
                _ => {}
            }
        }
        valid >= MIN_VALID_POINTS
    }
}

/// Set elements with each `\pm` element split into its two values.
fn expand_elements(items: &[Node]) -> Vec<Node> {
    let mut out = Vec::with_capacity(items.len());
    for x in items {
        match x.is_scalar() && x.has_plus_minus() {
            true => match x.expand_plus_minus(PM_LIMIT) {
                Some(values) => out.extend(values),
                None => out.push(x.clone()),
            },
            false => out.push(x.clone()),
        }
    }
    out
}
