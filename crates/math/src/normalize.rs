//! String clean-up before parsing: math delimiters, `\boxed`, sizing and spacing commands,
//! `\text{}`-style wrappers, units, degree signs, thousands separators, trailing
//! punctuation. Each pass is a linear scan (or one scan per wrapper found), so the cost
//! stays proportional to the answer; answers longer than [`MAX_ANSWER_BYTES`] are refused.

use crate::AnswerError;

/// Answers longer than this are not answers (the 1 MB "answer" of a runaway rollout); they
/// are equal to nothing.
pub const MAX_ANSWER_BYTES: usize = 10_000;

/// Commands that only size or style what follows: dropped with any `.` after them
/// (`\left.`), their delimiter kept (`\left(` -> `(`).
const SIZING: &[&str] = &[
    "left",
    "right",
    "bigl",
    "bigr",
    "Bigl",
    "Bigr",
    "biggl",
    "biggr",
    "Biggl",
    "Biggr",
    "bigm",
    "big",
    "Big",
    "bigg",
    "Bigg",
    "displaystyle",
    "textstyle",
    "scriptstyle",
    "limits",
    "nolimits",
];

/// Wrappers whose content is text or styled math: unwrapped, or dropped as a unit.
const WRAPPERS: &[&str] = &[
    "text",
    "textrm",
    "textbf",
    "textit",
    "textnormal",
    "textup",
    "textsf",
    "texttt",
    "mbox",
    "hbox",
    "mathrm",
    "mathbf",
    "mathit",
    "mathsf",
    "mathtt",
    "mathnormal",
    "operatorname",
    "boldsymbol",
    "bm",
    "mathbb",
    "mathcal",
    "mathscr",
    "boxed",
    "fbox",
];

/// Words dropped after a number (`125 miles`, `15\text{ cm}^2`). Single letters are units
/// only inside a text wrapper (`5\text{ m}`), never bare (`5 m` could be `5m`).
const UNITS: &[&str] = &[
    "cm",
    "mm",
    "km",
    "dm",
    "nm",
    "meter",
    "meters",
    "metre",
    "metres",
    "centimeter",
    "centimeters",
    "centimetre",
    "centimetres",
    "millimeter",
    "millimeters",
    "kilometer",
    "kilometers",
    "inch",
    "inches",
    "ft",
    "foot",
    "feet",
    "yd",
    "yard",
    "yards",
    "mile",
    "miles",
    "unit",
    "units",
    "square",
    "sq",
    "cubic",
    "degree",
    "degrees",
    "deg",
    "radian",
    "radians",
    "rad",
    "dollar",
    "dollars",
    "cent",
    "cents",
    "second",
    "seconds",
    "minute",
    "minutes",
    "min",
    "mins",
    "hour",
    "hours",
    "hr",
    "hrs",
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "year",
    "years",
    "kg",
    "gram",
    "grams",
    "kilogram",
    "kilograms",
    "lb",
    "lbs",
    "pound",
    "pounds",
    "oz",
    "ounce",
    "ounces",
    "liter",
    "liters",
    "litre",
    "litres",
    "ml",
    "gallon",
    "gallons",
    "mph",
    "kph",
    "people",
    "students",
    "ways",
    "points",
];
const TEXT_ONLY_UNITS: &[&str] = &["m", "g", "s", "l", "h", "in", "mi"];

/// Names the parser reads as functions or constants: a letter run starting with one is
/// math, not a word (`sinx`, `pi`).
const MATH_WORDS: &[&str] = &[
    "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sqrt", "sin", "cos", "tan", "sec", "csc", "cot", "log",
    "ln", "exp", "pi", "infty", "infinity",
];

/// The cleaned answer text, ready for [`crate::parse::parse`].
pub fn normalize(s: &str) -> Result<String, AnswerError> {
    if s.len() > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLong { len: s.len(), max: MAX_ANSWER_BYTES });
    }
    let mut t = s.trim().replace("\\$", "").replace('$', "");
    for name in SIZING {
        t = remove_command(&t, name, true);
    }
    t = remove_math_delimiters(&t);
    // Thousands separators LaTeX-style: 1{,}000 and 10,\!000.
    t = t.replace("{,}", "").replace(",\\!", "");
    t = remove_degrees(&t);
    t = unwrap_wrappers(&t);
    t = replace_spacing(&t);
    for name in ["qquad", "quad"] {
        t = replace_command(&t, name, " ");
    }
    t = collapse_spaces(&t);
    t = trim_punctuation(&t);
    t = percent_words(&t);
    t = strip_trailing_units(&t);
    t = trim_punctuation(&t);
    Ok(strip_thousands(&t))
}

/// `(B)`, `B`, `B)`, and `(B) 12` name a multiple-choice letter (A to E, upper case, so a
/// variable `b` stays a variable).
pub fn choice_letter(t: &str) -> Option<char> {
    let b = t.as_bytes();
    let is_letter = |c: u8| (b'A'..=b'E').contains(&c);
    match b {
        [c] if is_letter(*c) => Some(*c as char),
        [c, b')'] if is_letter(*c) => Some(*c as char),
        [b'(', c, b')', rest @ ..] if is_letter(*c) && (rest.is_empty() || rest[0] == b' ') => Some(*c as char),
        _ => None,
    }
}

/// Whether the answer is words (`Evelyn`, `no solution`) rather than math: only letters,
/// spaces, hyphens and apostrophes, with a run of three or more letters that is not a
/// function name. Such answers compare as text, case-insensitively.
pub fn is_words(t: &str) -> bool {
    if !t.chars().all(|c| c.is_ascii_alphabetic() || c == ' ' || c == '-' || c == '\'') {
        return false;
    }
    t.split(|c: char| !c.is_ascii_alphabetic())
        .any(|run| run.len() >= 3 && !MATH_WORDS.iter().any(|w| run.to_ascii_lowercase().starts_with(w)))
}

fn is_letter_at(t: &str, i: usize) -> bool {
    t.as_bytes().get(i).is_some_and(|c| c.is_ascii_alphabetic())
}

/// Every `\name` not followed by a letter (so `\left` goes and `\leftarrow` stays), with a
/// following `.` when `dot` (`\left.`).
fn remove_command(t: &str, name: &str, dot: bool) -> String {
    let pat = format!("\\{name}");
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(i) = rest.find(&pat) {
        let after = i + pat.len();
        out.push_str(&rest[..i]);
        if is_letter_at(rest, after) {
            out.push_str(&pat);
            rest = &rest[after..];
            continue;
        }
        rest = &rest[after..];
        if dot && rest.starts_with('.') {
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

fn replace_command(t: &str, name: &str, with: &str) -> String {
    let pat = format!("\\{name}");
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(i) = rest.find(&pat) {
        let after = i + pat.len();
        out.push_str(&rest[..i]);
        out.push_str(if is_letter_at(rest, after) { &pat } else { with });
        rest = &rest[after..];
    }
    out.push_str(rest);
    out
}

/// `\(`, `\)`, `\[`, `\]` go; a row break `\\` followed by a bracket stays.
fn remove_math_delimiters(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('\\') => {
                out.push_str("\\\\");
                chars.next();
            }
            Some('(' | ')' | '[' | ']') => {
                chars.next();
            }
            _ => out.push('\\'),
        }
    }
    out
}

/// Degree signs (`^\circ`, `^{\circ}`, `\degree`, `°`) go, with a Celsius or Fahrenheit
/// letter after them (`30^\circ C`, `30°\text{F}`).
fn remove_degrees(t: &str) -> String {
    const MARKS: [&str; 6] = ["^{\\circ}", "^\\circ", "^{\\degree}", "\\circ", "\\degree", "°"];
    const SCALES: [&str; 6] = ["\\text{C}", "\\text{F}", "\\mathrm{C}", "\\mathrm{F}", "C", "F"];
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some((i, mark)) =
        MARKS.iter().filter_map(|m| rest.find(m).map(|i| (i, *m))).min_by_key(|(i, m)| (*i, usize::MAX - m.len()))
    {
        out.push_str(&rest[..i]);
        rest = &rest[i + mark.len()..];
        let after = rest.trim_start();
        if let Some(scale) = SCALES.iter().find(|sc| after.starts_with(**sc))
            && !is_letter_at(after, scale.len())
        {
            rest = &after[scale.len()..];
        }
    }
    out.push_str(rest);
    out
}

/// `\,` `\;` `\:` `\>` `\ ` and `~` become a space and `\!` nothing; a row break `\\`
/// followed by a space stays a row break.
fn replace_spacing(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('~', _) => out.push(' '),
            ('\\', Some('\\')) => {
                out.push_str("\\\\");
                chars.next();
            }
            ('\\', Some(',' | ';' | ':' | '>' | ' ')) => {
                out.push(' ');
                chars.next();
            }
            ('\\', Some('!')) => {
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// The index of the `}` closing the `{` at `open`, skipping escaped braces.
pub(crate) fn matching_brace(t: &str, open: usize) -> Option<usize> {
    let b = t.as_bytes();
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The next `\wrapper{` at or after `from`: (start of the command, index of its `{`).
fn next_wrapper(t: &str, from: usize) -> Option<(usize, usize)> {
    let mut search = from;
    while let Some(off) = t.get(search..)?.find('\\') {
        let start = search + off;
        let name_end = t[start + 1..].find(|c: char| !c.is_ascii_alphabetic()).map_or(t.len(), |e| start + 1 + e);
        let name = &t[start + 1..name_end];
        let brace = t[name_end..].find(|c: char| c != ' ').map(|e| name_end + e);
        if WRAPPERS.contains(&name)
            && let Some(b) = brace.filter(|&b| t.as_bytes()[b] == b'{')
        {
            return Some((start, b));
        }
        // Past the command name, or past the one character after the backslash (`\\`, `\{`).
        search = if name_end > start + 1 {
            name_end
        } else {
            start + 1 + t[start + 1..].chars().next().map_or(0, char::len_utf8)
        };
    }
    None
}

fn unwrap_wrappers(t: &str) -> String {
    let mut t = t.to_string();
    let mut from = 0;
    while let Some((start, open)) = next_wrapper(&t, from) {
        let Some(close) = matching_brace(&t, open) else {
            // Unbalanced: drop the command, keep the text.
            t.replace_range(start..open + 1, "");
            from = start;
            continue;
        };
        let content = &t[open + 1..close];
        let c = content.trim();
        let outside_empty = t[..start].trim().is_empty() && t[close + 1..].trim().is_empty();
        let lower = c.to_ascii_lowercase();
        let mut end = close + 1;
        let replacement = if matches!(lower.as_str(), "and" | "or" | "," | ", and") {
            ",".to_string()
        } else if !outside_empty && (is_unit_phrase(c, true) || (content.starts_with(' ') && is_plain_words(c))) {
            // A unit after a number: drop it, and its exponent (`\text{ cm}^2`).
            end += exponent_len(&t[end..]);
            String::new()
        } else {
            content.to_string()
        };
        t.replace_range(start..end, &replacement);
        from = start;
    }
    t
}

fn is_plain_words(c: &str) -> bool {
    !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphabetic() || ch == ' ')
}

/// The length of a `^2`, `^{2}`, `^3`, `^{3}` at the start of `t`.
fn exponent_len(t: &str) -> usize {
    ["^{2}", "^{3}", "^2", "^3", "²", "³"].iter().find(|e| t.starts_with(**e)).map_or(0, |e| e.len())
}

fn is_unit_word(w: &str, in_text: bool) -> bool {
    let w = w.trim_end_matches('.');
    let w = w.strip_suffix("^2").or_else(|| w.strip_suffix("^3")).unwrap_or(w);
    let w = w.trim_end_matches(['²', '³']).to_ascii_lowercase();
    UNITS.contains(&w.as_str()) || (in_text && TEXT_ONLY_UNITS.contains(&w.as_str()))
}

fn is_unit_phrase(c: &str, in_text: bool) -> bool {
    let mut words = c.split_whitespace().peekable();
    words.peek().is_some() && words.all(|w| is_unit_word(w, in_text))
}

fn collapse_spaces(t: &str) -> String {
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn trim_punctuation(t: &str) -> String {
    t.trim().trim_end_matches(['.', ',', ';', ':']).trim().to_string()
}

/// `28 percent`, `28 pct`, `28 percentage` -> `28%`.
fn percent_words(t: &str) -> String {
    for w in ["percentage", "percent", "pct"] {
        if let Some(head) = t.strip_suffix(w)
            && head.trim_end().ends_with(|c: char| c.is_ascii_digit() || c == '}')
        {
            return format!("{}%", head.trim_end());
        }
    }
    t.to_string()
}

/// Drops unit words after a number: `125 miles`, `15 cm^2`, `12 square units`, `5cm`.
fn strip_trailing_units(t: &str) -> String {
    let mut t = t.to_string();
    loop {
        if let Some((head, last)) = t.rsplit_once(' ')
            && is_unit_word(last, false)
            && head.ends_with(|c: char| c.is_ascii_alphanumeric() || matches!(c, '}' | ')' | '%'))
            && !head.trim().is_empty()
        {
            t = head.trim_end().to_string();
            continue;
        }
        // Glued to the number: `5cm`, `3ft^2`.
        let unit_start = t.trim_end_matches(|c: char| c.is_ascii_alphabetic() || "^23²³".contains(c)).len();
        if unit_start > 0
            && unit_start < t.len()
            && t[..unit_start].ends_with(|c: char| c.is_ascii_digit())
            && t[unit_start..].len() >= 2
            && is_unit_word(&t[unit_start..], false)
        {
            t.truncate(unit_start);
            continue;
        }
        return t;
    }
}

/// `7,425,000` and `1 000 000` (and `12.5` after them) are one number, when that is the
/// whole answer or the right side of its only `=`.
fn strip_thousands(t: &str) -> String {
    if let Some(n) = thousands_number(t) {
        return n;
    }
    if let Some((lhs, rhs)) = t.split_once('=')
        && !rhs.contains('=')
        && let Some(n) = thousands_number(rhs.trim())
    {
        return format!("{}= {n}", lhs);
    }
    t.to_string()
}

fn thousands_number(t: &str) -> Option<String> {
    let (sign, body) = match t.strip_prefix('-') {
        Some(b) => ("-", b),
        None => ("", t),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) if !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) => (i, Some(f)),
        Some(_) => return None,
        None => (body, None),
    };
    let sep = if int.contains(',') { ',' } else { ' ' };
    let groups: Vec<&str> = int.split(sep).collect();
    // `0,111` is not a thousands group (Math-Verify reads it as a decimal comma; here it
    // stays the list `0, 111`).
    let first_ok = (1..=3).contains(&groups[0].len()) && !groups[0].starts_with('0');
    let rest_ok = groups[1..].iter().all(|g| g.len() == 3);
    let digits = groups.iter().all(|g| g.bytes().all(|c| c.is_ascii_digit()));
    if groups.len() < 2 || !first_ok || !rest_ok || !digits {
        return None;
    }
    Some(format!("{sign}{}{}", groups.concat(), frac.map(|f| format!(".{f}")).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(s).unwrap()
    }

    #[test]
    fn delimiters_and_wrappers() {
        assert_eq!(n("$\\boxed{\\frac{1}{2}}$"), "\\frac{1}{2}");
        assert_eq!(n("\\( \\left( 3, 4 \\right) \\)"), "( 3, 4 )");
        assert_eq!(n("\\text{(B)}"), "(B)");
        assert_eq!(n("\\textbf{Evelyn}"), "Evelyn");
        assert_eq!(n("\\left\\{1,2\\right\\}"), "\\{1,2\\}");
        assert_eq!(n("\\leftarrow"), "\\leftarrow");
    }

    #[test]
    fn units_degrees_and_separators() {
        assert_eq!(n("15\\mbox{ cm}^2"), "15");
        assert_eq!(n("125\\textnormal{ miles}"), "125");
        assert_eq!(n("12 square units"), "12");
        assert_eq!(n("5cm"), "5");
        assert_eq!(n("30^\\circ"), "30");
        assert_eq!(n("30°"), "30");
        assert_eq!(n("1{,}000"), "1000");
        assert_eq!(n("\\$10,\\!000.50"), "10000.50");
        assert_eq!(n("7,425,000"), "7425000");
        assert_eq!(n("1\\,000"), "1000");
        assert_eq!(n("x = 1,000"), "x = 1000");
        assert_eq!(n("1,2"), "1,2");
        assert_eq!(n("12\\text{ and }13"), "12,13");
        assert_eq!(n("28 percent"), "28%");
        assert_eq!(n("5."), "5");
    }

    #[test]
    fn choices_and_words() {
        assert_eq!(choice_letter("(C)"), Some('C'));
        assert_eq!(choice_letter("C"), Some('C'));
        assert_eq!(choice_letter("(A) 15"), Some('A'));
        assert_eq!(choice_letter("c"), None);
        assert_eq!(choice_letter("(F)"), None);
        assert!(is_words("Evelyn"));
        assert!(is_words("no solution"));
        assert!(!is_words("sinx"));
        assert!(!is_words("xy"));
        assert!(!is_words("2x"));
    }

    #[test]
    fn refuses_long_answers() {
        assert!(normalize(&"1".repeat(MAX_ANSWER_BYTES + 1)).is_err());
    }
}
