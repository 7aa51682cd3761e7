//! Inputs built to hurt: every one must come back within a second, without a stack
//! overflow or a panic, and (against an ordinary gold answer) as "not equal".
//!
//! The tests run on the test harness's threads (2 MiB stacks), smaller than a main
//! thread's, so a recursion the limits failed to bound would show here.

use std::time::{Duration, Instant};

use artist_math::{equivalent, extract_answer};

const LIMIT: Duration = Duration::from_secs(1);

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < LIMIT, "{what}: took {took:?}");
    out
}

fn nested(open: &str, inner: &str, close: &str, n: usize) -> String {
    format!("{}{inner}{}", open.repeat(n), close.repeat(n))
}

/// (name, answer) pairs compared against ordinary gold answers.
fn hostile_answers() -> Vec<(&'static str, String)> {
    vec![
        ("10,000 nested braces", nested("{", "1", "}", 10_000)),
        ("4,000 nested braces (under the size limit)", nested("{", "1", "}", 4_000)),
        ("10,000 nested \\sqrt", nested("\\sqrt{", "2", "}", 10_000)),
        ("1,500 nested \\frac", nested("\\frac{1}{", "2", "}", 1_500)),
        ("900 nested \\frac (under the size limit)", nested("\\frac{1}{", "2", "}", 900)),
        ("1,200 nested \\sqrt (under the size limit)", nested("\\sqrt{", "2", "}", 1_200)),
        ("deep parentheses", nested("(", "1", ")", 4_999)),
        ("deep brackets and bars", nested("[|", "1", "|]", 2_000)),
        ("a 1 MB answer", "1".repeat(1 << 20)),
        ("a 1 MB sum", "1+".repeat(1 << 19) + "1"),
        ("a 9,000-digit number", "9".repeat(9_000)),
        ("9,000 minus signs", format!("{}1", "-".repeat(9_000))),
        ("9,000 factorials", format!("3{}", "!".repeat(9_000))),
        ("power tower", "2^2^2^2^2^2^2".into()),
        ("exponent tower", "10^{10^{10}}".into()),
        ("huge exponent", "9^{9^{9^{9}}}".into()),
        ("tiny power", "2^{-10^{10}}".into()),
        ("huge factorial", "1000000!".into()),
        ("huge binomial", "\\binom{10^{30}}{10^{15}}".into()),
        ("division by zero", "\\frac{1}{0}".into()),
        ("zero to a negative power", "0^{-1}".into()),
        ("log of zero", "\\ln 0".into()),
        ("symbolic huge power", "(x+1)^{100000}".into()),
        ("a 2,500-element set", format!("\\{{{}\\}}", (0..2_500).map(|i| i.to_string()).collect::<Vec<_>>().join(","))),
        (
            "a 1,000-element set",
            format!("\\{{{}\\}}", (3..1_003).map(|i| format!("x+{i}")).collect::<Vec<_>>().join(",")),
        ),
        ("a 1,000-variable sum", (0..1_000).map(|i| format!("x_{{{i}}}")).collect::<Vec<_>>().join("+")),
        ("100 plus-minus signs", format!("1{}", "\\pm 1".repeat(100))),
        ("a 3,000-link equation chain", format!("x{}", (1..=3_000).map(|k| format!("={k}")).collect::<String>())),
        ("a 1,500-link equation chain", format!("x{}", (1..=1_500).map(|k| format!("={k}")).collect::<String>())),
        ("unbalanced wrappers", "\\text{".repeat(1_500)),
        ("wrappers nested 1,000 deep", nested("\\text{", "7", "}", 1_000)),
        ("a 1,000-row matrix", format!("\\begin{{pmatrix}}{}\\end{{pmatrix}}", "1 & 2 \\\\ ".repeat(1_000))),
        ("control characters", "\u{0}\u{1}\u{7f}\u{202e}1".into()),
        ("lone backslashes", "\\".repeat(5_000)),
        ("dollars", "$".repeat(20_000)),
    ]
}

#[test]
fn hostile_predictions_are_quick_and_not_equal() {
    for (name, answer) in hostile_answers() {
        for gold in ["1", "2", "x + 1", "(1, 2)", "\\{1, 2\\}"] {
            let equal = timed(name, || equivalent(gold, &answer));
            assert!(!equal, "{name} equals {gold:?}");
        }
    }
}

#[test]
fn hostile_golds_are_quick_and_not_equal() {
    for (name, answer) in hostile_answers() {
        let equal = timed(name, || equivalent(&answer, "1"));
        assert!(!equal, "{name} equals 1");
    }
}

#[test]
fn hostile_pairs_against_themselves_are_quick() {
    // The verdict does not matter here (an identical readable answer may equal itself);
    // only that it comes back.
    for (name, answer) in hostile_answers() {
        timed(name, || equivalent(&answer, &answer));
    }
}

#[test]
fn large_but_honest_answers_still_work() {
    let sum = vec!["1"; 3_000].join("+");
    assert!(timed("3,000-term sum", || equivalent("3000", &sum)));
    let forward: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    let backward: Vec<String> = forward.iter().rev().cloned().collect();
    let (a, b) = (format!("\\{{{}\\}}", forward.join(",")), format!("\\{{{}\\}}", backward.join(",")));
    assert!(timed("200-element sets in opposite orders", || equivalent(&a, &b)));
    assert!(timed("nested 20 deep", || equivalent(&nested("(", "7", ")", 20), "7")));
}

#[test]
fn hostile_completions_extract_quickly() {
    let cases = [
        ("100,000 unclosed boxes", "\\boxed{".repeat(100_000)),
        ("10,000 nested boxes", nested("\\boxed{", "7", "}", 10_000)),
        ("1 MB of braces", "{".repeat(1 << 20)),
        ("1 MB of answer tags", "<answer>".repeat(1 << 17)),
        ("1 MB of closing tags", "</answer>".repeat(1 << 17)),
        ("a 1 MB answer block", format!("<answer>{}</answer>", "x".repeat(1 << 20))),
    ];
    for (name, text) in cases {
        timed(name, || extract_answer(&text));
    }
    assert_eq!(extract_answer(&nested("\\boxed{", "7", "}", 10_000)).as_deref(), Some("7"));
}

/// Random strings of answer fragments: whatever they make, the verdict comes back without
/// a panic (a fixed seed, so a failure reproduces).
#[test]
fn random_fragment_soup_never_panics() {
    const FRAGMENTS: &[&str] = &[
        "\\frac",
        "\\dfrac",
        "\\sqrt",
        "\\sqrt[",
        "\\binom",
        "\\text{",
        "\\boxed{",
        "\\left(",
        "\\right)",
        "\\{",
        "\\}",
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        "|",
        "^",
        "_",
        "1",
        "23",
        "0",
        ".",
        "5.5",
        "e",
        "E",
        "x",
        "y",
        "\\pi",
        "\\infty",
        "\\pm",
        "+",
        "-",
        "*",
        "/",
        "=",
        "<",
        "\\le",
        "\\in",
        "\\cup",
        ",",
        ";",
        "&",
        "\\\\",
        "\\begin{pmatrix}",
        "\\end{pmatrix}",
        "%",
        "\\%",
        "!",
        "$",
        "\\$",
        " ",
        "~",
        "\\,",
        "\\!",
        "°",
        "^\\circ",
        "cm",
        " and ",
        "(A)",
        "\\sin",
        "\\log_",
        "é",
        "√",
        "π",
        "−",
        "\u{0}",
        "\\",
        "{,}",
        "1,000",
        "e-",
        "1e",
        "\\emptyset",
        "\\langle",
        "\\rangle",
        "\\cdot",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let golds = ["1", "x + 1", "(1, 2]", "\\{1, 2\\}", "x = 2", "50\\%", "(A)"];
    for _ in 0..3_000 {
        let len = 1 + next(24);
        let s: String = (0..len).map(|_| FRAGMENTS[next(FRAGMENTS.len())]).collect();
        let gold = golds[next(golds.len())];
        timed(&s, || (equivalent(gold, &s), equivalent(&s, gold), equivalent(&s, &s), extract_answer(&s)));
    }
}
