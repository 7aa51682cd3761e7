//! Finding the final answer in a model's completion.
//!
//! The answer is the content of the last complete `<answer>...</answer>` block; within it
//! (or, with no block, anywhere in the text) the last `\boxed{...}` / `\fbox{...}` /
//! `\boxed x` wins. Optionally the last number in the text is the answer when there is
//! neither. Every search is linear in the completion, whatever it contains.

use std::collections::HashMap;

/// How to read an answer out of a completion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtractOptions {
    /// With no `<answer>` block and no `\boxed`, take the last number in the text. Off by
    /// default: a reward should not credit a number that merely appears last.
    pub last_number_fallback: bool,
}

/// The answer in `completion` with the default options (no last-number fallback).
pub fn extract_answer(completion: &str) -> Option<String> {
    extract_answer_with(completion, ExtractOptions::default())
}

pub fn extract_answer_with(completion: &str, opts: ExtractOptions) -> Option<String> {
    if let Some(block) = last_answer_block(completion).map(str::trim).filter(|b| !b.is_empty()) {
        let inner = last_boxed(block).unwrap_or(block).trim();
        return (!inner.is_empty()).then(|| inner.to_string());
    }
    if let Some(b) = last_boxed(completion).map(str::trim).filter(|b| !b.is_empty()) {
        return Some(b.to_string());
    }
    if opts.last_number_fallback {
        return last_number(completion).map(str::to_string);
    }
    None
}

/// The text between the last `<answer>` and the `</answer>` that closes it. An `<answer>`
/// never closed (a completion cut by the length limit) is no answer.
pub fn last_answer_block(text: &str) -> Option<&str> {
    let close = text.rfind("</answer>")?;
    let open = text[..close].rfind("<answer>")?;
    Some(&text[open + "<answer>".len()..close])
}

/// The content of the last well-formed `\boxed{...}` or `\fbox{...}` (braces nested to any
/// depth), or of `\boxed x` (up to the next space or `$`).
pub fn last_boxed(text: &str) -> Option<&str> {
    let starts: Vec<(usize, usize)> =
        ["\\boxed", "\\fbox"].iter().flat_map(|cmd| text.match_indices(cmd).map(|(i, m)| (i, i + m.len()))).collect();
    // Opening braces right after a command, and where each one closes: found in one pass.
    let opens: Vec<usize> =
        starts.iter().map(|&(_, end)| end).filter(|&e| text.as_bytes().get(e) == Some(&b'{')).collect();
    let closes = closing_braces(text, &opens);
    let mut best: Option<(usize, &str)> = None;
    for &(start, end) in &starts {
        let content = match text.as_bytes().get(end) {
            Some(b'{') => closes.get(&end).map(|&c| &text[end + 1..c]),
            Some(b' ') => {
                let rest = text[end..].trim_start();
                let stop = rest.find(|c: char| c.is_whitespace() || c == '$').unwrap_or(rest.len());
                Some(rest[..stop].trim_end_matches(['.', ',']))
            }
            _ => None,
        };
        if let Some(c) = content
            && best.is_none_or(|(s, _)| start > s)
        {
            best = Some((start, c));
        }
    }
    best.map(|(_, c)| c)
}

/// For each brace position in `opens`, the index of the `}` that closes it (escaped `\{`,
/// `\}` and `\\` do not count).
fn closing_braces(text: &str, opens: &[usize]) -> HashMap<usize, usize> {
    let mut out = HashMap::new();
    if opens.is_empty() {
        return out;
    }
    let wanted: std::collections::HashSet<usize> = opens.iter().copied().collect();
    let bytes = text.as_bytes();
    let mut stack: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'{' => stack.push(i),
            b'}' => {
                if let Some(open) = stack.pop()
                    && wanted.contains(&open)
                {
                    out.insert(open, i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The last number in the text: an optional minus, digits with optional `,` thousands
/// groups, an optional decimal part (`-1,234.5`).
pub fn last_number(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut end = b.len();
    while end > 0 && !b[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    loop {
        while start > 0 && b[start - 1].is_ascii_digit() {
            start -= 1;
        }
        // Step over a decimal point or a thousands comma with digits before it.
        if start >= 2 && matches!(b[start - 1], b'.' | b',') && b[start - 2].is_ascii_digit() {
            start -= 1;
            continue;
        }
        break;
    }
    if start > 0 && b[start - 1] == b'-' {
        start -= 1;
    }
    Some(&text[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_unbraced_boxes() {
        assert_eq!(last_boxed("so \\boxed{\\frac{1}{\\sqrt{2}}}."), Some("\\frac{1}{\\sqrt{2}}"));
        assert_eq!(last_boxed("\\boxed 5. done"), Some("5"));
        assert_eq!(last_boxed("\\boxed{1} then \\fbox{2}"), Some("2"));
        assert_eq!(last_boxed("\\boxed{\\{1,2\\}}"), Some("\\{1,2\\}"));
        assert_eq!(last_boxed("\\boxed{2} and \\boxed{3"), Some("2"));
        assert_eq!(last_boxed("\\boxedx"), None);
    }

    #[test]
    fn last_numbers() {
        assert_eq!(last_number("costs 1,234.50 dollars."), Some("1,234.50"));
        assert_eq!(last_number("x = -7"), Some("-7"));
        assert_eq!(last_number("none"), None);
    }
}
