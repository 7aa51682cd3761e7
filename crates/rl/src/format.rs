//! Reading a rollout's tags. A rollout is a list of segments: text the model wrote, and
//! tool outputs the engine forced in. Only the model's text is searched for tags; a forced
//! output is one `Output` event whatever it contains, so a tool that prints `<answer>`
//! earns nothing.

/// A piece of a rollout's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Written by the model.
    Model(String),
    /// A tool's output, forced in by the engine (its `<output>` wrapper included).
    Forced(String),
}

/// What the scanner sees, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagEvent {
    Open(String),
    Close(String),
    /// A forced tool output.
    Output,
    /// Model text outside or inside tags that is not whitespace.
    Text,
}

/// The events of `segments` for the tags in `tags` (names without brackets).
pub fn events(segments: &[Segment], tags: &[&str]) -> Vec<TagEvent> {
    // Adjacent model segments are one text: a tag split between them still counts.
    let mut out = Vec::new();
    let mut text = String::new();
    for s in segments {
        match s {
            Segment::Forced(_) => {
                scan(&std::mem::take(&mut text), tags, &mut out);
                out.push(TagEvent::Output);
            }
            Segment::Model(t) => text.push_str(t),
        }
    }
    scan(&text, tags, &mut out);
    out
}

/// Blocks whose contents are code, never scanned for tags.
const OPAQUE: [&str; 3] = ["python", "calculator", "tool"];

fn scan(text: &str, tags: &[&str], out: &mut Vec<TagEvent>) {
    let mut rest = text;
    loop {
        // The earliest tag of any kind.
        let next = tags
            .iter()
            .flat_map(|t| {
                [(format!("<{t}>"), TagEvent::Open(t.to_string())), (format!("</{t}>"), TagEvent::Close(t.to_string()))]
            })
            .filter_map(|(pat, ev)| rest.find(&pat).map(|i| (i, pat.len(), ev)))
            .min_by_key(|(i, _, _)| *i);
        let (before, after) = match &next {
            Some((i, len, _)) => (&rest[..*i], Some(&rest[i + len..])),
            None => (rest, None),
        };
        if !before.trim().is_empty() {
            out.push(TagEvent::Text);
        }
        match (next, after) {
            (Some((_, _, TagEvent::Open(t))), Some(after)) if OPAQUE.contains(&t.as_str()) => {
                // Code is opaque: a tag-like string inside it is the code's, not a tag.
                out.push(TagEvent::Open(t.clone()));
                let close = format!("</{t}>");
                match after.find(&close) {
                    Some(i) => {
                        out.push(TagEvent::Close(t));
                        rest = &after[i + close.len()..];
                    }
                    None => return,
                }
            }
            (Some((_, _, ev)), Some(after)) => {
                out.push(ev);
                rest = after;
            }
            _ => return,
        }
    }
}

/// A complete `<tag>...</tag>` block appears (for `output`: a forced output).
pub fn has_block(events: &[TagEvent], tag: &str) -> bool {
    if tag == "output" {
        return events.contains(&TagEvent::Output);
    }
    let mut open = false;
    for e in events {
        match e {
            TagEvent::Open(t) if t == tag => open = true,
            TagEvent::Close(t) if t == tag && open => return true,
            _ => {}
        }
    }
    false
}

/// The events as a list of block names, or `None` if the tags do not form a flat sequence
/// of blocks with nothing but whitespace between them: an unclosed or stray closing tag,
/// a tag inside another, text outside every block, or an `<output>` the model wrote.
pub fn blocks(events: &[TagEvent]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut open: Option<&str> = None;
    for e in events {
        match (e, open) {
            // Outputs come from tools; one the model wrote itself is malformed.
            (TagEvent::Open(t), _) if t == "output" => return None,
            (TagEvent::Open(t), None) => open = Some(t),
            (TagEvent::Close(t), Some(o)) if t == o => {
                out.push(t.clone());
                open = None;
            }
            (TagEvent::Output, None) => out.push("output".into()),
            (TagEvent::Text, Some(_)) => {}
            _ => return None,
        }
    }
    if open.is_some() { None } else { Some(out) }
}
