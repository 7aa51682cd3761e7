//! Chat templates against transformers' own renderings: `tests/fixtures/qwen2_5_chat.json`
//! (Qwen2.5-Instruct's template with the real tokenizer: plain, generation prompt, tools,
//! default system prompt) and the tiny fixture model directories; then the config variants
//! (no template, a named list, AddedToken objects) and the errors.

mod common;

use artist_tokenizer::{ChatTemplate, Error, Message, Tokenizer};
use common::{fixtures, qwen, scratch_dir, tiny_dirs};
use serde_json::{Value, json};

fn qwen_chat_fixture() -> Option<Value> {
    let path = fixtures().join("qwen2_5_chat.json");
    if !path.is_file() {
        eprintln!("skipped: {} not found", path.display());
        return None;
    }
    let text = std::fs::read_to_string(&path).unwrap();
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn messages(value: &Value) -> Vec<Message> {
    serde_json::from_value(value.clone()).unwrap()
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_else(|| panic!("fixture has no string {key:?}"))
}

fn ids_of(value: &Value, key: &str) -> Vec<u32> {
    serde_json::from_value(value[key].clone()).unwrap_or_else(|e| panic!("fixture {key:?}: {e}"))
}

/// The Qwen2.5 template from the fixture, with Qwen2.5's special tokens.
fn qwen_template(fixture: &Value) -> ChatTemplate {
    ChatTemplate::new(str_of(fixture, "chat_template"), None, Some("<|im_end|>")).unwrap()
}

#[test]
fn qwen2_5_renders_as_transformers() {
    let Some(fixture) = qwen_chat_fixture() else { return };
    let template = qwen_template(&fixture);
    let chat = &fixture["chat"];
    let msgs = messages(&chat["messages"]);
    assert_eq!(msgs.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["system", "user", "assistant"]);

    assert_eq!(template.render(&msgs, None, false).unwrap(), str_of(chat, "rendered"));
    assert_eq!(template.render(&msgs[..2], None, true).unwrap(), str_of(chat, "rendered_generation_prompt"));
    assert_eq!(template.render(&msgs[1..2], None, true).unwrap(), str_of(chat, "rendered_default_system"));

    let tools: Vec<Value> = serde_json::from_value(chat["tools"].clone()).unwrap();
    assert_eq!(template.render(&msgs[..2], Some(&tools), true).unwrap(), str_of(chat, "rendered_with_tools"));
    assert_eq!(
        template.render(&msgs[1..2], Some(&tools), true).unwrap(),
        str_of(chat, "rendered_with_tools_default_system")
    );
}

#[test]
fn qwen2_5_rendered_prompts_encode_to_reference_ids() {
    let Some(fixture) = qwen_chat_fixture() else { return };
    let Some(tok) = qwen() else { return };
    let chat = &fixture["chat"];
    for (text, ids) in [
        ("rendered", "ids"),
        ("rendered_generation_prompt", "generation_prompt_ids"),
        ("rendered_with_tools", "ids_with_tools"),
    ] {
        assert_eq!(tok.encode(str_of(chat, text)).unwrap(), ids_of(chat, ids), "{text} -> {ids}");
    }
    // And the whole path: our rendering, our tokenizer.
    let template = qwen_template(&fixture);
    let msgs = messages(&chat["messages"]);
    assert_eq!(tok.encode(&template.render(&msgs, None, false).unwrap()).unwrap(), ids_of(chat, "ids"));
}

/// `render_json`: assistant turns with `tool_calls` and `content: null`, `tool` turns, and a
/// reasoning field, against transformers 5.24.0 with the Qwen2.5 template (which drops null
/// keys and aliases `reasoning` to `thinking` / `reasoning_content`, as the `tojson` dump shows).
#[test]
fn render_json_matches_transformers_for_tool_calls() {
    let Some(fixture) = qwen_chat_fixture() else { return };
    let messages: Vec<Value> = serde_json::from_str(r#"[{"role": "user", "content": "weather in Zürich?"}, {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"loc": "Zürich", "unit": "c"}}}, {"type": "function", "function": {"name": "get_time", "arguments": {}}}]}, {"role": "tool", "content": "{\"temp\": 3}"}, {"role": "tool", "content": "12:00"}, {"role": "assistant", "content": "It is 3 °C at noon.", "reasoning": "read the tools"}]"#).unwrap();
    let tools: Vec<Value> = serde_json::from_str(r#"[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"loc": {"type": "string"}}}}}]"#).unwrap();
    let none = serde_json::Map::new();
    let qwen = qwen_template(&fixture);
    assert_eq!(
        qwen.render_json(&messages, Some(&tools), true, &none).unwrap(),
        r#"<|im_start|>system
You are Qwen, created by Alibaba Cloud. You are a helpful assistant.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"loc": {"type": "string"}}}}}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
<|im_start|>user
weather in Zürich?<|im_end|>
<|im_start|>assistant
<tool_call>
{"name": "get_weather", "arguments": {"loc": "Zürich", "unit": "c"}}
</tool_call>
<tool_call>
{"name": "get_time", "arguments": {}}
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
{"temp": 3}
</tool_response>
<tool_response>
12:00
</tool_response><|im_end|>
<|im_start|>assistant
It is 3 °C at noon.<|im_end|>
<|im_start|>assistant
"#
    );
    let dump =
        ChatTemplate::new("{% for m in messages %}{{ m.role }}:{{ m | tojson }}\n{% endfor %}", None, None).unwrap();
    assert_eq!(
        dump.render_json(&messages, None, false, &none).unwrap(),
        r#"user:{"role": "user", "content": "weather in Zürich?"}
assistant:{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"loc": "Zürich", "unit": "c"}}}, {"type": "function", "function": {"name": "get_time", "arguments": {}}}]}
tool:{"role": "tool", "content": "{\"temp\": 3}"}
tool:{"role": "tool", "content": "12:00"}
assistant:{"thinking": "read the tools", "role": "assistant", "content": "It is 3 °C at noon.", "reasoning": "read the tools", "reasoning_content": "read the tools"}
"#
    );
    assert!(matches!(dump.render_json(&[json!("not an object")], None, false, &none), Err(Error::InvalidMessage(_))));
    assert!(matches!(dump.render_json(&[], None, false, &none), Err(Error::EmptyConversation)));
}

#[test]
fn tiny_fixture_dirs_render_and_encode_as_transformers() {
    let dirs = tiny_dirs();
    if dirs.is_empty() {
        eprintln!("skipped: no tiny fixture directories under {}", fixtures().join("qwen2").display());
        return;
    }
    for dir in dirs {
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let chat = &reference["chat"];
        let template = ChatTemplate::from_dir(&dir).unwrap();
        assert!(!template.is_chatml_fallback());
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let msgs = messages(&chat["messages"]);
        let rendered = template.render(&msgs, None, false).unwrap();
        assert_eq!(rendered, str_of(chat, "rendered"), "{}", dir.display());
        let prompt = template.render(&msgs[..2], None, true).unwrap();
        assert_eq!(prompt, str_of(chat, "rendered_generation_prompt"), "{}", dir.display());
        assert_eq!(tok.encode(&rendered).unwrap(), ids_of(chat, "ids"), "{}", dir.display());
        assert_eq!(tok.encode(&prompt).unwrap(), ids_of(chat, "generation_prompt_ids"), "{}", dir.display());
        assert_eq!(tok.decode(&ids_of(chat, "ids"), false).unwrap(), rendered);
        // The tiny vocabulary has single-byte tokens, so é, 世界 and 🦀 arrive a byte at a time.
        let (streamed, chunks) = common::stream(&tok, &ids_of(chat, "ids"), false);
        assert_eq!(streamed, rendered);
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')));
        let (streamed, _) = common::stream(&tok, &ids_of(chat, "ids"), true);
        assert_eq!(streamed, tok.decode(&ids_of(chat, "ids"), true).unwrap());
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn chat3() -> Vec<Message> {
    vec![Message::system("Be brief."), Message::user("Hi"), Message::assistant("Hello!")]
}

#[test]
fn chatml_fallback_without_template() {
    let dir = scratch_dir("chatml");
    write(&dir, "tokenizer_config.json", r#"{"eos_token": "<|im_end|>", "bos_token": null}"#);
    let template = ChatTemplate::from_dir(&dir).unwrap();
    assert!(template.is_chatml_fallback());
    let want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n";
    assert_eq!(template.render(&chat3(), None, false).unwrap(), want);
    assert_eq!(
        template.render(&chat3()[..2], None, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(ChatTemplate::chatml().render(&chat3(), None, false).unwrap(), want);
    // `"chat_template": null` is the same as none.
    let path = write(&dir, "null.json", r#"{"chat_template": null}"#);
    assert!(ChatTemplate::from_config_file(path).unwrap().is_chatml_fallback());
}

#[test]
fn template_list_uses_default_and_tool_use() {
    let dir = scratch_dir("list");
    let config = json!({
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS {{ tools | length }}"},
            {"name": "default", "template": "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"},
            {"name": "rag", "template": "RAG"},
        ],
    });
    let path = write(&dir, "tokenizer_config.json", &config.to_string());
    let template = ChatTemplate::from_config_file(&path).unwrap();
    assert!(!template.is_chatml_fallback());
    assert_eq!(template.template_names(), ["tool_use", "default", "rag"]);
    assert_eq!(template.render(&chat3()[..2], None, false).unwrap(), "[system] Be brief.\n[user] Hi\n");
    // As transformers: `tool_use` when tools are passed.
    assert_eq!(template.render(&chat3(), Some(&[json!({"name": "f"})]), false).unwrap(), "TOOLS 1");

    let path = write(&dir, "no_default.json", r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#);
    let template = ChatTemplate::from_config_file(&path).unwrap();
    match template.render(&chat3(), None, false) {
        Err(Error::NoSuchTemplate { name, available }) => {
            assert_eq!((name.as_str(), available.as_str()), ("default", "rag"))
        }
        other => panic!("expected NoSuchTemplate, got {other:?}"),
    }
}

#[test]
fn special_tokens_as_strings_or_added_token_objects() {
    let dir = scratch_dir("added_token");
    let config = json!({
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false},
        "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false},
        "pad_token": "<pad>",
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}|{{ pad_token }}|{{ unk_token is defined }}",
    });
    write(&dir, "tokenizer_config.json", &config.to_string());
    let template = ChatTemplate::from_dir(&dir).unwrap();
    assert_eq!(template.render(&chat3()[1..], None, false).unwrap(), "<s>Hi</s>Hello!</s>|<pad>|False");

    // chat_template.jinja beside the config takes precedence, as in transformers.
    write(&dir, "chat_template.jinja", "{{ bos_token }}jinja file{{ eos_token }}\n");
    let template = ChatTemplate::from_dir(&dir).unwrap();
    assert_eq!(template.render(&chat3(), None, false).unwrap(), "<s>jinja file</s>");
    assert_eq!(template.source_path(), Some(dir.join("chat_template.jinja").as_path()));
}

#[test]
fn messages_deserialize_from_json_lines() {
    let line = r#"{"messages": [{"role": "user", "content": "2+2?", "name": "ignored"}], "answer": "4"}"#;
    #[derive(serde::Deserialize)]
    struct Row {
        messages: Vec<Message>,
    }
    let row: Row = serde_json::from_str(line).unwrap();
    assert_eq!(row.messages, vec![Message::user("2+2?")]);
}

#[test]
fn transformers_environment_features() {
    let render = |src: &str, msgs: &[Message]| {
        ChatTemplate::new(src, Some("<s>"), Some("</s>")).unwrap().render(msgs, None, true)
    };
    let msgs = chat3();
    // trim_blocks + lstrip_blocks: block lines leave no blank lines or indentation.
    let src =
        "{% for m in messages %}\n    {% if m.role == 'user' %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
    assert_eq!(render(src, &msgs).unwrap(), "Hi\n");
    // Loop controls.
    let src = "{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}{% if m.role == 'assistant' %}{% break %}{% endif %}{{ m.role }};{% endfor %}";
    assert_eq!(render(src, &msgs).unwrap(), "system;");
    // Python string and dict methods.
    let src = "{{ '  x  '.strip() }}|{{ messages[0].content.upper() }}|{{ 'a,b'.split(',') | join('+') }}|{{ messages[1].get('role') }}|{{ messages[1].content.startswith('H') }}";
    assert_eq!(render(src, &msgs).unwrap(), "x|BE BRIEF.|a+b|user|True");
    // Python's str(): None, True, lists, floats.
    let src = "{{ none }} {{ true }} {{ [1, 'a', none] }} {{ {'k': 1.5} }} {{ 1e20 }} {{ 2.0 }} {{ 7 // 2 }} {{ false | string }}";
    assert_eq!(render(src, &msgs).unwrap(), "None True [1, 'a', None] {'k': 1.5} 1e+20 2.0 3 False");
    // `{% generation %}` (transformers' assistant-mask tag) renders its body.
    let src = "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% endif %}{% endfor %}";
    assert_eq!(render(src, &msgs).unwrap(), "Hello!");
    // strftime_now is local time; just check its shape.
    let year = render("{{ strftime_now('%Y-%m-%d') }}", &msgs).unwrap();
    assert!(year.len() == 10 && year.as_bytes()[4] == b'-', "{year}");
    // Undefined variables print nothing; extra keyword variables reach the template.
    let template = ChatTemplate::new("{{ nothing }}[{{ enable_thinking }}]", None, None).unwrap();
    let extra = json!({"enable_thinking": false});
    let out = template.render_json(&[json!({"role": "user", "content": "x"})], None, false, extra.as_object().unwrap());
    assert_eq!(out.unwrap(), "[False]");
}

/// One-line templates rendered by transformers 5.24.0 (`apply_chat_template(messages,
/// chat_template=..., tokenize=False)`, jinja2 3.1.6) with these messages; our output must be
/// the same bytes. They cover Python's `str()`/`repr()` of values, floats, `tojson`, filters,
/// tests, loop variables, slicing and Python string/dict methods.
#[test]
fn python_semantics_match_transformers() {
    let msgs = [Message::system("Sys \"q\" 'a' é"), Message::user("Hi"), Message::assistant("")];
    let cases: &[(&str, &str)] = &[
        (
            r#"{{ messages }}"#,
            r#"[{'role': 'system', 'content': 'Sys "q" \'a\' é'}, {'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': ''}]"#,
        ),
        (
            r#"{{ ['it\'s', "a\"b", 'é\n', '\x7f\xa0\u200b', 'tab\there'] }}"#,
            r#"["it's", 'a"b', 'é\n', '\x7f\xa0\u200b', 'tab\there']"#,
        ),
        (
            r#"{{ 1e16 }} {{ 12345678901234567890 }} {{ -1.5e-7 }} {{ 1.0 }} {{ 100.0 }} {{ 2.5e15 }}"#,
            r#"1e+16 12345678901234567890 -1.5e-07 1.0 100.0 2500000000000000.0"#,
        ),
        (r#"{{ [1.0, 1e-7, 12345678901234567890, 1e16] | tojson }}"#, r#"[1.0, 1e-07, 12345678901234567890, 1e+16]"#),
        (r#"{{ messages[0].content | tojson }}"#, r#""Sys \"q\" 'a' é""#),
        (
            r#"{% for m in messages %}{{ loop.previtem.role if loop.previtem else '-' }}>{{ loop.nextitem.role if loop.nextitem else '-' }};{% endfor %}"#,
            r#"->user;system>assistant;user>-;"#,
        ),
        (r#"{% set blk %}block {{ messages|length }}{% endset %}{{ blk }}"#, r#"block 3"#),
        (
            r#"{{ [3,1,2] | sort }} {{ [3,1,2] | first }} {{ [3,1,2] | last }} {{ [3,1,2] | reverse | list }} {{ [1,1,2] | unique | list }} {{ [3,1,2] | max }} {{ [3,1,2] | min }} {{ [3,1,2] | sum }}"#,
            r#"[1, 2, 3] 3 2 [2, 1, 3] [1, 2] 3 1 6"#,
        ),
        (
            r#"{{ '42' | int }} {{ '4.5' | float }} {{ -3 | abs }} {{ 2.567 | round(2) }} {{ 2.5 | round }} {{ 'hello world' | capitalize }}"#,
            r#"42 4.5 3 2.57 2.0 Hello world"#,
        ),
        (
            r#"{{ '{} and {}'.format('a', 1) }} | {{ 'a b  c'.split() }} | {{ 'l1\nl2'.splitlines() }} | {{ 'banana'.count('a') }} | {{ 'abc'.find('c') }} | {{ 'x\n\n'.rstrip('\n') }}"#,
            r#"a and 1 | ['a', 'b', 'c'] | ['l1', 'l2'] | 3 | 2 | x"#,
        ),
        (
            r#"{{ range(1, 10, 3) | list }} {{ dict(a=1, b='x') }} {{ [1,2,3][::-1] }} {{ '-' * 3 }} {{ 'a' in 'abc' }} {{ 'z' not in 'abc' }}"#,
            r#"[1, 4, 7] {'a': 1, 'b': 'x'} [3, 2, 1] --- True True"#,
        ),
        (
            r#"{% set d = {'z': 1, 'a': 2, 'm': 3} %}{% for k in d %}{{ k }}{% endfor %} {{ d.keys() | list }} {{ d.values() | list }} {{ d | items | list }}"#,
            r#"zam ['z', 'a', 'm'] [1, 2, 3] [('z', 1), ('a', 2), ('m', 3)]"#,
        ),
        (r#"{{ 'abc'[1] }} {{ 'abcdef'[-2:] }} {{ 'abcdef'[1:4] }}"#, r#"b ef bcd"#),
        (
            r#"{{ true and 'x' }} {{ none or 'dflt' }} {{ 0 or [] }} {{ 5 / 2 }} {{ 4 / 2 }} {{ 2 ** 0.5 }}"#,
            r#"x dflt [] 2.5 2.0 1.4142135623730951"#,
        ),
        (r#"{{ 'xax' | replace('x', 'y', 1) }} {{ 'xxhixx' | trim('x') }}"#, r#"yax hi"#),
        (r#"{{ "%s-%d" | format("a", 3) }}"#, r#"a-3"#),
        (r#"{% filter upper %}filtered {{ messages[1].role }}{% endfilter %}"#, r#"FILTERED USER"#),
        (
            r#"{{ 9 is divisibleby(3) }} {{ 3 is odd }} {{ 3 is even }} {{ 'abc' | list }} {{ messages is sequence }}"#,
            r#"True True False ['a', 'b', 'c'] True"#,
        ),
        (r#"{{ 'a' ~ true }} {{ 'n' ~ none }} {{ 'f' ~ 1.0 }} {{ 'l' ~ [1] }}"#, r#"aTrue nNone f1.0 l[1]"#),
        (r#"{{ 'Hello'.endswith(('lo', 'x')) }} {{ 'hi'.upper() }}{{ ' '.join(['a','b']) }}"#, r#"True HIa b"#),
        (
            r#"{{ messages[0].get('missing', 'fallback') }} {{ messages[0].missing }} {{ messages[0]['missing'] is defined }}"#,
            r#"fallback  False"#,
        ),
        (
            r#"{{ (1, 2) }} {{ (1,) }} {{ 1 == 1.0 }} {{ [1, 2] == [1, 2] }} {{ 'b' > 'a' }}"#,
            r#"(1, 2) (1,) True True True"#,
        ),
        (
            r#"{{ messages | selectattr('content') | map(attribute='role') | list }} {{ messages | rejectattr('role', 'equalto', 'user') | list | length }}"#,
            r#"['system', 'user'] 2"#,
        ),
        (
            r#"{{ [{'k': 2}, {'k': 1}] | sort(attribute='k') }} {{ messages | map('upper') | list if false else '' }}"#,
            r#"[{'k': 1}, {'k': 2}] "#,
        ),
        (
            r#"{{ "line1\nline2" | indent(2) }}"#,
            r#"line1
  line2"#,
        ),
        (
            r#"{{ messages | batch(2) | list | length }} {{ 'Ab' | lower }} {{ "x" | length }} {{ none | default('d', true) }} {{ '' | default('e', true) }}"#,
            r#"2 ab 1 d e"#,
        ),
        (
            r#"{{ {'a': {'b': 1}} | tojson(indent=1, sort_keys=True) }}"#,
            r#"{
 "a": {
  "b": 1
 }
}"#,
        ),
        (
            r#"{{ 1 if 2 > 1 else 0 }} {{ -0.0 }} {{ 0.1 * 3 }} {{ 1e22 }} {{ 1.5e300 * 1e10 }} {{ (1e300 * 1e10) | tojson }}"#,
            r#"1 -0.0 0.30000000000000004 1e+22 inf Infinity"#,
        ),
    ];
    let mut failures = Vec::new();
    for (src, want) in cases {
        let got = ChatTemplate::new(src, None, None).and_then(|t| t.render(&msgs, None, false));
        match got {
            Ok(got) if got == *want => {}
            other => failures.push(format!("{src}\n  got  {other:?}\n  want {want:?}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn tojson_is_pythons_json_dumps() {
    let template = ChatTemplate::new(
        "{% for t in tools %}{{ t | tojson }}\n{{ t | tojson(indent=2) }}\n{{ t | tojson(sort_keys=true, separators=(',', ':')) }}\n{{ t | tojson(ensure_ascii=true) }}\n{% endfor %}",
        None,
        None,
    )
    .unwrap();
    let tool =
        json!({"z": "é \"q\" <b>&</b>\n\u{1}🙂", "a": [1, 2.5, 1e16, true, null, {}], "m": {"y": [], "x": -0.0}});
    let out = template.render(&[Message::user("x")], Some(&[tool]), false).unwrap();
    let want = concat!(
        r#"{"z": "é \"q\" <b>&</b>\n\u0001🙂", "a": [1, 2.5, 1e+16, true, null, {}], "m": {"y": [], "x": -0.0}}"#,
        "\n",
        "{\n  \"z\": \"é \\\"q\\\" <b>&</b>\\n\\u0001🙂\",\n  \"a\": [\n    1,\n    2.5,\n    1e+16,\n    true,\n    null,\n    {}\n  ],\n  \"m\": {\n    \"y\": [],\n    \"x\": -0.0\n  }\n}",
        "\n",
        r#"{"a":[1,2.5,1e+16,true,null,{}],"m":{"x":-0.0,"y":[]},"z":"é \"q\" <b>&</b>\n\u0001🙂"}"#,
        "\n",
        r#"{"z": "\u00e9 \"q\" <b>&</b>\n\u0001\ud83d\ude42", "a": [1, 2.5, 1e+16, true, null, {}], "m": {"y": [], "x": -0.0}}"#,
        "\n",
    );
    assert_eq!(out, want);
}

#[test]
fn errors_are_values() {
    let dir = scratch_dir("errors");
    // Missing files name the file.
    let missing = dir.join("nope").join("tokenizer_config.json");
    match ChatTemplate::from_config_file(&missing) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("nope"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(matches!(ChatTemplate::from_dir(dir.join("nope")), Err(Error::Io { .. })));
    match Tokenizer::from_dir(dir.join("nope")) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("tokenizer.json"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
    // Invalid JSON.
    let path = write(&dir, "tokenizer_config.json", "{\"chat_template\": ");
    match ChatTemplate::from_config_file(&path) {
        Err(e @ Error::Json { .. }) => assert!(e.to_string().contains("tokenizer_config.json"), "{e}"),
        other => panic!("expected Json, got {other:?}"),
    }
    let path = write(&dir, "tokenizer.json", "{\"model\": 3}");
    match Tokenizer::from_file(&path) {
        Err(e @ Error::Load { .. }) => assert!(e.to_string().contains("tokenizer.json"), "{e}"),
        other => panic!("expected Load, got {other:?}"),
    }
    // Wrong shapes.
    let path = write(&dir, "shape.json", r#"{"chat_template": 3}"#);
    assert!(matches!(ChatTemplate::from_config_file(&path), Err(Error::Config { .. })));
    let path = write(&dir, "shape2.json", r#"{"chat_template": [{"name": "default"}]}"#);
    assert!(matches!(ChatTemplate::from_config_file(&path), Err(Error::Config { .. })));
    let path = write(&dir, "shape3.json", r#"{"eos_token": 7}"#);
    assert!(matches!(ChatTemplate::from_config_file(&path), Err(Error::Config { .. })));
    // A syntax error.
    assert!(matches!(ChatTemplate::new("{% for m in messages %}", None, None), Err(Error::TemplateSyntax(_))));
    // raise_exception, as templates use it to reject conversations.
    let src = "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ m.content }}{% endfor %}";
    let template = ChatTemplate::new(src, None, None).unwrap();
    assert_eq!(template.render(&[Message::user("a"), Message::assistant("b")], None, false).unwrap(), "ab");
    match template.render(&[Message::user("a"), Message::user("b")], None, false) {
        Err(e @ Error::TemplateRaised { .. }) => {
            assert_eq!(
                e.to_string(),
                "chat template raised an exception: Conversation roles must alternate user/assistant/user/assistant/..."
            )
        }
        other => panic!("expected TemplateRaised, got {other:?}"),
    }
    // Other render failures.
    let template = ChatTemplate::new("{{ messages | no_such_filter }}", None, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(template.render(&chat3(), None, false), Err(Error::TemplateRender(_))));
    let template = ChatTemplate::new("{{ nothing | tojson }}", None, None).unwrap();
    assert!(matches!(template.render(&chat3(), None, false), Err(Error::TemplateRender(_))));
}

/// Qwen3's template (`tests/fixtures/qwen3_chat.json`, scripts/make_qwen3_fixtures.py)
/// against transformers' renderings: reasoning split out of an assistant's content and
/// dropped from history turns, `reasoning_content`, tool calls with object and string
/// arguments, consecutive tool responses, tools, and `enable_thinking=False`.
#[test]
fn qwen3_renders_as_transformers() {
    let path = fixtures().join("qwen3_chat.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let template = ChatTemplate::new(str_of(&fixture, "chat_template"), None, Some("<|im_end|>")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = str_of(case, "name");
        let messages = case["messages"].as_array().unwrap();
        let tools = case["tools"].as_array().map(Vec::as_slice);
        let generation = case["add_generation_prompt"].as_bool().unwrap();
        let extra = case["extra"].as_object().unwrap();
        let got = template.render_json(messages, tools, generation, extra).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, str_of(case, "rendered"), "{name}");
    }
}
