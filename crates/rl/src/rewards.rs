//! ARTIST's rewards, with the paper's weights as defaults (see shared ARTIST.md).
//!
//! Math: answer (+2 when correct), relaxed format (0.125 for each of `<think>`,
//! `<python>`, `<output>`, `<answer>` present as a complete block), strict format (0.5
//! when the whole response is a well-formed sequence of blocks: a `<think>` first, every
//! `<python>` followed at once by its `<output>`, one `<answer>` last, all four present,
//! no tag inside another, nothing but whitespace outside the blocks), tool execution
//! (successful calls / calls; 0 with no call).
//!
//! Function calling: state and function matching (0..0.5 each, fractions given by the
//! environment), relaxed format (0.025 for each complete `<reasoning>` or `<tool>` block,
//! at most 0.1), strict format (0.1 when every block is well formed, a `<reasoning>`
//! comes first and every `<tool>` directly follows a `<reasoning>`).

use serde::{Deserialize, Serialize};

use crate::format::{Segment, blocks, events, has_block};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MathRewardWeights {
    pub answer: f64,
    /// Per tag present.
    pub relaxed_format: f64,
    pub strict_format: f64,
    /// Multiplies the fraction of successful tool calls.
    pub tool_execution: f64,
}

impl Default for MathRewardWeights {
    fn default() -> Self {
        MathRewardWeights { answer: 2.0, relaxed_format: 0.125, strict_format: 0.5, tool_execution: 1.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct MathRewards {
    pub answer: f64,
    pub relaxed_format: f64,
    pub strict_format: f64,
    pub tool_execution: f64,
    pub total: f64,
}

/// The math rewards of one rollout: its segments, whether each tool call succeeded, and
/// whether its answer is correct. The tool is Python (`<python>`); see
/// [`math_rewards_with_tool`] for another tag.
pub fn math_rewards(segments: &[Segment], tool_success: &[bool], correct: bool, w: &MathRewardWeights) -> MathRewards {
    math_rewards_with_tool("python", segments, tool_success, if correct { 1.0 } else { 0.0 }, w)
}

/// [`math_rewards`] with the tool's calls in `<tool_tag>` blocks (`calculator`, ...) and the
/// answer's credit as a score from 0 (wrong) to 1 (right): the answer reward is `score`
/// times its weight (a judge's partial credit; 0 or 1 for equivalence).
pub fn math_rewards_with_tool(
    tool_tag: &str,
    segments: &[Segment],
    tool_success: &[bool],
    answer_score: f64,
    w: &MathRewardWeights,
) -> MathRewards {
    let tags = ["think", tool_tag, "output", "answer"];
    let ev = events(segments, &tags);
    let relaxed = tags.iter().filter(|t| has_block(&ev, t)).count() as f64 * w.relaxed_format;
    let strict = match blocks(&ev) {
        Some(b) if strict_math(&b, tool_tag) => w.strict_format,
        _ => 0.0,
    };
    let tool = if tool_success.is_empty() {
        0.0
    } else {
        tool_success.iter().filter(|&&s| s).count() as f64 / tool_success.len() as f64 * w.tool_execution
    };
    let answer = answer_score.clamp(0.0, 1.0) * w.answer;
    MathRewards {
        answer,
        relaxed_format: relaxed,
        strict_format: strict,
        tool_execution: tool,
        total: answer + relaxed + strict + tool,
    }
}

fn strict_math(b: &[String], tool: &str) -> bool {
    let all = ["think", tool, "output", "answer"].iter().all(|t| b.iter().any(|x| x == t));
    let think_first = b.first().is_some_and(|x| x == "think");
    let one_answer_last = b.last().is_some_and(|x| x == "answer") && b.iter().filter(|x| *x == "answer").count() == 1;
    let paired = b.iter().enumerate().all(|(i, x)| match x.as_str() {
        t if t == tool => b.get(i + 1).is_some_and(|n| n == "output"),
        "output" => i > 0 && b[i - 1] == tool,
        _ => true,
    });
    all && think_first && one_answer_last && paired
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcRewardWeights {
    /// Multiplies the fraction of turns after which the state is correct.
    pub state: f64,
    /// Multiplies the fraction of expected calls matched.
    pub function: f64,
    /// Per complete `<reasoning>` or `<tool>` block.
    pub relaxed_format: f64,
    pub relaxed_format_max: f64,
    pub strict_format: f64,
}

impl Default for FcRewardWeights {
    fn default() -> Self {
        FcRewardWeights {
            state: 0.5,
            function: 0.5,
            relaxed_format: 0.025,
            relaxed_format_max: 0.1,
            strict_format: 0.1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct FcRewards {
    pub state: f64,
    pub function: f64,
    pub relaxed_format: f64,
    pub strict_format: f64,
    pub total: f64,
}

/// DAPO's soft overlong punishment (Yu et al., 2025): 0 for a response of `len` tokens up
/// to `max_len - buffer`, then falling linearly to `-penalty` at `max_len` (and below it
/// past `max_len`, clamped to `-penalty`). 0 when `buffer` or `penalty` is 0.
pub fn overlong_penalty(len: usize, max_len: usize, buffer: usize, penalty: f64) -> f64 {
    let start = max_len.saturating_sub(buffer);
    if buffer == 0 || penalty == 0.0 || len <= start {
        return 0.0;
    }
    -penalty * ((len - start) as f64 / buffer as f64).min(1.0)
}

const FC_TAGS: [&str; 2] = ["reasoning", "tool"];

/// Function-calling rewards from the model's turns and the environment's fractions of
/// correct states and matched calls (both in 0..=1).
pub fn fc_format_rewards(
    segments: &[Segment],
    state_fraction: f64,
    function_fraction: f64,
    w: &FcRewardWeights,
) -> FcRewards {
    let ev = events(segments, &FC_TAGS);
    let complete = blocks_loose(&ev);
    let relaxed = (complete as f64 * w.relaxed_format).min(w.relaxed_format_max);
    let strict = if strict_fc(&ev) { w.strict_format } else { 0.0 };
    let state = state_fraction.clamp(0.0, 1.0) * w.state;
    let function = function_fraction.clamp(0.0, 1.0) * w.function;
    FcRewards {
        state,
        function,
        relaxed_format: relaxed,
        strict_format: strict,
        total: state + function + relaxed + strict,
    }
}

/// Complete `<reasoning>` / `<tool>` blocks, counted even when the rest is malformed.
fn blocks_loose(ev: &[crate::format::TagEvent]) -> usize {
    use crate::format::TagEvent;
    let mut open: Option<&str> = None;
    let mut n = 0;
    for e in ev {
        match e {
            TagEvent::Open(t) => open = Some(t),
            TagEvent::Close(t) if open == Some(t.as_str()) => {
                n += 1;
                open = None;
            }
            _ => {}
        }
    }
    n
}

/// The strict function-calling format over a whole episode: every tag closed, no
/// `<output>` written by the model, the first block `<reasoning>`, every `<tool>` right
/// after a `<reasoning>`, and plain text (the reply to the user) only where a turn ends,
/// that is right before forced text (a tool's output or the next user turn) or at the end.
fn strict_fc(ev: &[crate::format::TagEvent]) -> bool {
    use crate::format::TagEvent;
    let mut open: Option<&str> = None;
    let mut last: Option<&str> = None;
    let (mut reasoning, mut tool) = (false, false);
    for e in ev {
        match e {
            TagEvent::Open(t) => {
                if t == "output" || open.is_some() || last == Some("text") {
                    return false;
                }
                open = Some(t);
            }
            TagEvent::Close(t) => {
                if open != Some(t.as_str()) {
                    return false;
                }
                match t.as_str() {
                    "reasoning" => reasoning = true,
                    "tool" if last == Some("reasoning") => tool = true,
                    "tool" => return false,
                    _ => {}
                }
                if last.is_none() && t != "reasoning" {
                    return false;
                }
                last = Some(if t == "reasoning" { "reasoning" } else { "tool" });
                open = None;
            }
            TagEvent::Text if open.is_some() => {}
            TagEvent::Text => last = Some("text"),
            TagEvent::Output if open.is_some() => return false,
            TagEvent::Output => last = Some("output"),
        }
    }
    open.is_none() && reasoning && tool
}
