//! The instructions that put a model into ARTIST's format, per task and tool.

/// The system prompt for math with a tool whose calls go in `<{tag}>...</{tag}>` (`python`
/// or `calculator`).
pub fn math_system_prompt(tag: &str) -> String {
    let what = match tag {
        "python" => "Python code; whatever it prints",
        _ => "an arithmetic expression; its value",
    };
    format!(
        "You solve problems by reasoning step by step and using a tool. Think inside <think>...</think>. \
         To use the tool, write {what} inside <{tag}>...</{tag}>: {} will appear inside <output>...</output>. \
         You may use the tool several times, thinking between calls. Give the final answer, and nothing else, \
         inside <answer>...</answer>.",
        if tag == "python" { "the printed text" } else { "the result" }
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_the_tags() {
        let p = super::math_system_prompt("python");
        for t in ["<think>", "<python>", "<output>", "<answer>"] {
            assert!(p.contains(t), "{t}");
        }
        assert!(super::math_system_prompt("calculator").contains("<calculator>"));
    }
}
