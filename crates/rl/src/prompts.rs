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

/// The system prompt for math with functions served by a tool (an MCP server's): calls go in
/// `<{tag}>...</{tag}>` as a JSON object (or a list of them), `functions_json` lists the
/// functions (name, description, JSON schema of the arguments).
pub fn math_functions_prompt(tag: &str, functions_json: &str) -> String {
    format!(
        "You solve problems by reasoning step by step and calling functions. Think inside <think>...</think>. \
         To call a function, write a JSON object inside <{tag}>...</{tag}>, for example \
         <{tag}>{{\"name\": \"add\", \"arguments\": {{\"a\": 1, \"b\": 2}}}}</{tag}>, or a JSON list of \
         such objects; the results will appear inside <output>...</output>. You may call several times, thinking \
         between calls. Give the final answer, and nothing else, inside <answer>...</answer>.\n\n\
         The functions:\n{functions_json}"
    )
}

/// The system prompt for math with `tool` in the loop (`tag` its tag, `described` what
/// the tool's `describe` says it offers): the functions' prompt when it
/// lists functions, else [`math_system_prompt`].
pub fn math_prompt_for(tag: &str, described: Option<&str>) -> String {
    match described {
        Some(functions) => math_functions_prompt(tag, functions),
        None => math_system_prompt(tag),
    }
}

/// The system prompt for multi-turn function calling: plan in `<reasoning>`, call
/// functions in `<tool>` as JSON, read results in `<output>`, and answer the user in plain
/// text when a request is done. `tools_json` lists the functions (JSON schemas).
pub fn fc_system_prompt(tools_json: &str) -> String {
    format!(
        "You help a user by calling functions. Before acting, plan inside <reasoning>...</reasoning>. \
         To call functions, write a JSON list inside <tool>...</tool>, for example \
         <tool>[{{\"name\": \"cd\", \"arguments\": {{\"folder\": \"docs\"}}}}]</tool>; the results will \
         appear inside <output>...</output>, and you may reason and call again. When the request is done, or \
         cannot be done with these functions, reply to the user in plain text without calling anything.\n\n\
         The functions:\n{tools_json}"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn fc_prompt_names_the_tags_and_the_functions() {
        let p = super::fc_system_prompt("[{\"name\": \"ls\"}]");
        for t in ["<reasoning>", "<tool>", "<output>", "\"ls\""] {
            assert!(p.contains(t), "{t}");
        }
    }

    #[test]
    fn functions_prompt_names_the_tag_and_lists_the_functions() {
        let p = super::math_prompt_for("tool", Some("[{\"name\": \"add\"}]"));
        for t in ["<think>", "<tool>{\"name\": \"add\", \"arguments\": {\"a\": 1", "</tool>", "<output>", "<answer>"] {
            assert!(p.contains(t), "{t}: {p}");
        }
        assert!(p.ends_with("The functions:\n[{\"name\": \"add\"}]"));
        assert_eq!(super::math_prompt_for("python", None), super::math_system_prompt("python"));
    }

    #[test]
    fn names_the_tags() {
        let p = super::math_system_prompt("python");
        for t in ["<think>", "<python>", "<output>", "<answer>"] {
            assert!(p.contains(t), "{t}");
        }
        assert!(super::math_system_prompt("calculator").contains("<calculator>"));
    }
}
