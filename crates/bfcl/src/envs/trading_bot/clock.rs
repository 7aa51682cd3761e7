//! The calendar arithmetic `TradingBot` needs: UTC civil dates from Unix seconds and
//! back, and Python's `datetime.strptime` for the `%Y %m %d %H %M %S` directives.

use crate::value::str_repr;

/// A naive date and time, ordered as Python's `datetime` (microseconds included, so that
/// `datetime.max` is representable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
    pub micro: i64,
}

impl DateTime {
    /// `datetime.min`.
    pub const MIN: DateTime = DateTime { year: 1, month: 1, day: 1, hour: 0, minute: 0, second: 0, micro: 0 };
    /// `datetime.max`.
    pub const MAX: DateTime =
        DateTime { year: 9999, month: 12, day: 31, hour: 23, minute: 59, second: 59, micro: 999_999 };

    pub const fn new(year: i64, month: i64, day: i64, hour: i64, minute: i64) -> DateTime {
        DateTime { year, month, day, hour, minute, second: 0, micro: 0 }
    }

    /// Seconds since the Unix epoch, reading the time as UTC (`.timestamp()` under TZ=UTC).
    pub fn timestamp(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400 + self.hour * 3600 + self.minute * 60 + self.second
    }

    /// `datetime.fromtimestamp(t)` under TZ=UTC.
    pub fn from_timestamp(t: i64) -> DateTime {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        DateTime { year, month, day, hour: secs / 3600, minute: secs % 3600 / 60, second: secs % 60, micro: 0 }
    }

    /// `strftime("%Y-%m-%d %H:%M:%S")`.
    pub fn format_ymd_hms(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `strftime("%I:%M %p")` (C locale).
    pub fn format_clock(&self) -> String {
        let h12 = if self.hour % 12 == 0 { 12 } else { self.hour % 12 };
        format!("{:02}:{:02} {}", h12, self.minute, if self.hour < 12 { "AM" } else { "PM" })
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// One element of a format: a directive, a literal character, or a run of whitespace
/// (which `strptime` turns into `\s+`).
#[derive(Debug, Clone, Copy)]
enum Token {
    Directive(char),
    Literal(char),
    Space,
}

fn tokenize(fmt: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some(d @ ('Y' | 'm' | 'd' | 'H' | 'M' | 'S')) => out.push(Token::Directive(d)),
                Some('%') => out.push(Token::Literal('%')),
                Some(d) => return Err(format!("'{d}' is a bad directive in format '%{d}'")),
                None => return Err(format!("stray % in format '{fmt}'")),
            }
        } else if is_space(c) {
            while chars.peek().is_some_and(|c| is_space(*c)) {
                chars.next();
            }
            out.push(Token::Space);
        } else {
            out.push(Token::Literal(c));
        }
    }
    Ok(out)
}

/// Python's `\s` on `str` (the characters for which `str.isspace()` holds).
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn digit(s: &[char], i: usize) -> Option<char> {
    s.get(i).copied().filter(char::is_ascii_digit)
}

fn within(s: &[char], i: usize, lo: char, hi: char) -> bool {
    s.get(i).is_some_and(|c| (lo..=hi).contains(c))
}

/// The lengths a directive's regex alternatives can match at `i`, in the order the regex
/// tries them (CPython's `_strptime.TimeRE`).
fn directive_lengths(d: char, s: &[char], i: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let at = |k: usize, c: char| s.get(i + k) == Some(&c);
    let dig = |k: usize| digit(s, i + k).is_some();
    match d {
        // \d\d\d\d
        'Y' if (0..4).all(dig) => out.push(4),
        // 1[0-2]|0[1-9]|[1-9]
        'm' => {
            if at(0, '1') && within(s, i + 1, '0', '2') {
                out.push(2);
            }
            if at(0, '0') && within(s, i + 1, '1', '9') {
                out.push(2);
            }
            if within(s, i, '1', '9') {
                out.push(1);
            }
        }
        // 3[0-1]|[1-2]\d|0[1-9]|[1-9]| [1-9]
        'd' => {
            if at(0, '3') && within(s, i + 1, '0', '1') {
                out.push(2);
            }
            if within(s, i, '1', '2') && dig(1) {
                out.push(2);
            }
            if at(0, '0') && within(s, i + 1, '1', '9') {
                out.push(2);
            }
            if within(s, i, '1', '9') {
                out.push(1);
            }
            if at(0, ' ') && within(s, i + 1, '1', '9') {
                out.push(2);
            }
        }
        // 2[0-3]|[0-1]\d|\d
        'H' => {
            if at(0, '2') && within(s, i + 1, '0', '3') {
                out.push(2);
            }
            if within(s, i, '0', '1') && dig(1) {
                out.push(2);
            }
            if dig(0) {
                out.push(1);
            }
        }
        // [0-5]\d|\d
        'M' => {
            if within(s, i, '0', '5') && dig(1) {
                out.push(2);
            }
            if dig(0) {
                out.push(1);
            }
        }
        // 6[0-1]|[0-5]\d|\d
        'S' => {
            if at(0, '6') && within(s, i + 1, '0', '1') {
                out.push(2);
            }
            if within(s, i, '0', '5') && dig(1) {
                out.push(2);
            }
            if dig(0) {
                out.push(1);
            }
        }
        _ => {}
    }
    out
}

/// Matches `tokens` from `i` as `re.match` does (first alternative first, backtracking),
/// recording each directive's text; returns where the match ends.
fn match_from(tokens: &[Token], s: &[char], i: usize, caps: &mut Vec<(char, String)>) -> Option<usize> {
    let Some((first, rest)) = tokens.split_first() else { return Some(i) };
    match *first {
        Token::Literal(c) => {
            if s.get(i) == Some(&c) {
                match_from(rest, s, i + 1, caps)
            } else {
                None
            }
        }
        Token::Space => {
            let mut n = 0;
            while s.get(i + n).is_some_and(|c| is_space(*c)) {
                n += 1;
            }
            (1..=n).rev().find_map(|k| match_from(rest, s, i + k, caps))
        }
        Token::Directive(d) => {
            for len in directive_lengths(d, s, i) {
                caps.push((d, s[i..i + len].iter().collect()));
                if let Some(end) = match_from(rest, s, i + len, caps) {
                    return Some(end);
                }
                caps.pop();
            }
            None
        }
    }
}

/// `datetime.strptime(text, fmt)` for formats built from `%Y %m %d %H %M %S`, literals and
/// whitespace, with Python's `ValueError` messages.
pub fn strptime(text: &str, fmt: &str) -> Result<DateTime, String> {
    let tokens = tokenize(fmt)?;
    let s: Vec<char> = text.chars().collect();
    let mut caps = Vec::new();
    let Some(end) = match_from(&tokens, &s, 0, &mut caps) else {
        return Err(format!("time data {} does not match format {}", str_repr(text), str_repr(fmt)));
    };
    if end != s.len() {
        return Err(format!("unconverted data remains: {}", s[end..].iter().collect::<String>()));
    }
    let mut dt = DateTime::new(1900, 1, 1, 0, 0);
    for (d, v) in caps {
        let n: i64 = v.trim().parse().expect("the directive matched digits");
        match d {
            'Y' => dt.year = n,
            'm' => dt.month = n,
            'd' => dt.day = n,
            'H' => dt.hour = n,
            'M' => dt.minute = n,
            _ => dt.second = n,
        }
    }
    if !(1..=9999).contains(&dt.year) {
        return Err(format!("year {} is out of range", dt.year));
    }
    if dt.day > days_in_month(dt.year, dt.month) {
        return Err("day is out of range for month".into());
    }
    if dt.second > 59 {
        return Err("second must be in 0..59".into());
    }
    Ok(dt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_round_trip() {
        let t = DateTime::new(2024, 9, 1, 10, 30);
        assert_eq!(t.timestamp(), 1_725_186_600);
        assert_eq!(DateTime::from_timestamp(1_725_186_600), t);
        assert_eq!(DateTime::from_timestamp(0).format_ymd_hms(), "1970-01-01 00:00:00");
        assert_eq!(DateTime::from_timestamp(951_825_600).format_ymd_hms(), "2000-02-29 12:00:00");
        assert_eq!(t.format_clock(), "10:30 AM");
        assert_eq!(DateTime::new(2024, 1, 1, 0, 5).format_clock(), "12:05 AM");
        assert_eq!(DateTime::new(2024, 1, 1, 13, 5).format_clock(), "01:05 PM");
    }

    #[test]
    fn strptime_matches_python() {
        // Each expectation is what CPython 3.11 gives.
        const D: &str = "%Y-%m-%d";
        const DT: &str = "%Y-%m-%d %H:%M:%S";
        assert_eq!(strptime("2024-9-1", D), Ok(DateTime::new(2024, 9, 1, 0, 0)));
        assert_eq!(strptime("2024-09- 1", D), Ok(DateTime::new(2024, 9, 1, 0, 0)));
        assert_eq!(strptime("2024-02-30", D).unwrap_err(), "day is out of range for month");
        assert_eq!(strptime("2024-13-01", D).unwrap_err(), "time data '2024-13-01' does not match format '%Y-%m-%d'");
        assert_eq!(strptime("2024-1-5x", D).unwrap_err(), "unconverted data remains: x");
        assert_eq!(strptime("0000-01-01", D).unwrap_err(), "year 0 is out of range");
        assert_eq!(strptime("2024-09-01 ", D).unwrap_err(), "unconverted data remains:  ");
        assert_eq!(strptime("2024-09-01\t1:2:3", DT), Ok(DateTime { second: 3, ..DateTime::new(2024, 9, 1, 1, 2) }));
        assert_eq!(strptime("2024-09-01  10:00:00", DT), Ok(DateTime::new(2024, 9, 1, 10, 0)));
        assert_eq!(strptime("2024-09-01 23:59:60", DT).unwrap_err(), "second must be in 0..59");
        assert_eq!(
            strptime("2024-09-01 24:00:00", DT).unwrap_err(),
            "time data '2024-09-01 24:00:00' does not match format '%Y-%m-%d %H:%M:%S'"
        );
        assert_eq!(strptime("2024-09-01 10:00:00.5", DT).unwrap_err(), "unconverted data remains: .5");
    }
}
