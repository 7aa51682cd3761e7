//! [`ChatTemplate`]: a model's chat template, rendered the way transformers'
//! `apply_chat_template` renders it, so prompts we build tokenise to the ids the model was
//! trained on.
//!
//! transformers compiles the template with a Jinja2 `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True)` with the `loopcontrols` extension, globals `raise_exception(msg)` and
//! `strftime_now(fmt)`, and its own `tojson` filter (`json.dumps(x, ensure_ascii=False, ...)`).
//! We reproduce that on minijinja: the same whitespace settings, loop controls, those globals, the
//! Python-compatible `tojson` and `str()` formatting of [`crate::python`], and Python string and
//! dict methods (`.strip()`, `.items()`, ...) through minijinja-contrib's pycompat callback.
//! `{% generation %}` blocks (transformers' assistant-mask extension) render their body, as they
//! do when no mask is asked for.
//!
//! The template comes from `tokenizer_config.json` (`chat_template`: a string, or a list of
//! `{name, template}`), or from `chat_template.jinja` beside it, which newer transformers writes
//! instead and which takes precedence. A model without one gets ChatML.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::value::{Rest, Serde, Value};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file [`ChatTemplate::from_dir`] reads.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// A standalone template file (transformers >= 4.43 saves the template here).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// ChatML, the template for models that ship none (what transformers used as its default
/// before templates became mandatory).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One chat message. Deserialises from `{"role": ..., "content": ...}` (other keys ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// The environment's name for a config's only template (it appears in error messages).
const SINGLE: &str = "chat_template";

/// The special tokens transformers passes to every template (`special_tokens_map`).
const SPECIAL_TOKEN_KEYS: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// A compiled chat template with the special tokens it is rendered with.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Template names in the environment: [`SINGLE`] for a single template, otherwise the
    /// names from the config (`"default"`, `"tool_use"`, ...).
    names: Vec<String>,
    /// Variables every render gets: `bos_token`, `eos_token`, ... (those the config sets).
    special_tokens: Vec<(String, Value)>,
    source: Option<PathBuf>,
    is_chatml_fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("names", &self.names)
            .field("source", &self.source)
            .field("is_chatml_fallback", &self.is_chatml_fallback)
            .finish_non_exhaustive()
    }
}

/// A special token in `tokenizer_config.json`: a string, or an AddedToken object
/// `{"content": ..., "__type": "AddedToken", ...}`.
fn token_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(map) => map.get("content").and_then(|c| c.as_str()).map(str::to_owned),
        _ => None,
    }
}

impl ChatTemplate {
    /// Reads a model directory's template: `chat_template.jinja` if present, else
    /// `tokenizer_config.json`'s `chat_template`, else ChatML. Special tokens come from
    /// `tokenizer_config.json`, which must exist.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config = read_json(&config_path)?;
        let jinja_path = dir.join(CHAT_TEMPLATE_FILE);
        let override_template = if jinja_path.is_file() {
            Some(
                std::fs::read_to_string(&jinja_path)
                    .map_err(|source| Error::Io { path: jinja_path.clone(), source })?,
            )
        } else {
            None
        };
        let from_jinja = override_template.is_some();
        let mut template = Self::from_config_value(&config, &config_path, override_template)?;
        if from_jinja {
            template.source = Some(jinja_path);
        }
        Ok(template)
    }

    /// Reads the template and special tokens of a `tokenizer_config.json`; ChatML when it has
    /// no `chat_template`.
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let config = read_json(path)?;
        Self::from_config_value(&config, path, None)
    }

    /// Builds from a parsed `tokenizer_config.json`; `path` names it in errors.
    /// `override_template` replaces the config's (default) template.
    fn from_config_value(config: &serde_json::Value, path: &Path, override_template: Option<String>) -> Result<Self> {
        let config_error = |message: String| Error::Config { path: path.to_owned(), message };
        let Some(config) = config.as_object() else {
            return Err(config_error("expected a JSON object".to_owned()));
        };
        let mut special_tokens = Vec::new();
        for key in SPECIAL_TOKEN_KEYS {
            match config.get(key) {
                None | Some(serde_json::Value::Null) => {}
                Some(value) => match token_text(value) {
                    Some(text) => special_tokens.push((key.to_owned(), Value::from(text))),
                    None => {
                        return Err(config_error(format!(
                            "{key} must be a string or an object with a \"content\" string, not {value}"
                        )));
                    }
                },
            }
        }
        if let Some(list) = config.get("additional_special_tokens").and_then(|v| v.as_array()) {
            let tokens: Vec<Value> = list.iter().filter_map(token_text).map(Value::from).collect();
            special_tokens.push(("additional_special_tokens".to_owned(), Value::from(tokens)));
        }

        let mut templates: Vec<(String, String)> = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => vec![(String::new(), s.clone())],
            Some(serde_json::Value::Array(items)) => {
                let mut named = Vec::new();
                for item in items {
                    let name = item.get("name").and_then(|v| v.as_str());
                    let template = item.get("template").and_then(|v| v.as_str());
                    match (name, template) {
                        (Some(name), Some(template)) => named.push((name.to_owned(), template.to_owned())),
                        _ => {
                            return Err(config_error(format!(
                                "chat_template list entries must be {{\"name\": string, \"template\": string}}, got {item}"
                            )));
                        }
                    }
                }
                named
            }
            Some(other) => {
                return Err(config_error(format!(
                    "chat_template must be a string or a list of {{name, template}}, not {other}"
                )));
            }
        };
        if let Some(text) = override_template {
            if let Some(slot) = templates.iter_mut().find(|(name, _)| name.is_empty() || name == "default") {
                slot.1 = text;
            } else if templates.is_empty() {
                templates.push((String::new(), text));
            } else {
                templates.push(("default".to_owned(), text));
            }
        }
        let is_chatml_fallback = templates.is_empty();
        if is_chatml_fallback {
            templates.push((String::new(), CHATML_TEMPLATE.to_owned()));
        }
        let mut template = Self::build(templates, special_tokens)?;
        template.is_chatml_fallback = is_chatml_fallback;
        template.source = (!is_chatml_fallback).then(|| path.to_owned());
        Ok(template)
    }

    /// A template from its source text, rendered with the given special tokens.
    pub fn new(template: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut special_tokens = Vec::new();
        for (key, token) in [("bos_token", bos_token), ("eos_token", eos_token)] {
            if let Some(token) = token {
                special_tokens.push((key.to_owned(), Value::from(token)));
            }
        }
        Self::build(vec![(String::new(), template.to_owned())], special_tokens)
    }

    /// The ChatML fallback template (no special tokens).
    pub fn chatml() -> Self {
        let mut template = Self::build(vec![(String::new(), CHATML_TEMPLATE.to_owned())], Vec::new())
            .expect("ChatML template compiles");
        template.is_chatml_fallback = true;
        template
    }

    fn build(templates: Vec<(String, String)>, special_tokens: Vec<(String, Value)>) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(Error::TemplateSyntax)?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(crate::python::format_value);
        env.add_filter("tojson", crate::python::tojson);
        env.add_filter("string", crate::python::string_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        let mut names = Vec::with_capacity(templates.len());
        for (name, text) in templates {
            let name = if name.is_empty() { SINGLE.to_owned() } else { name };
            env.add_template_owned(name.clone(), jinja2_source(&text)).map_err(Error::TemplateSyntax)?;
            names.push(name);
        }
        Ok(Self { env, names, special_tokens, source: None, is_chatml_fallback: false })
    }

    /// Whether this is the ChatML fallback (the model has no template of its own).
    pub fn is_chatml_fallback(&self) -> bool {
        self.is_chatml_fallback
    }

    /// The file the template came from, if any.
    pub fn source_path(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Names of the templates when the config has several (`"default"`, `"tool_use"`, ...);
    /// empty for a single template.
    pub fn template_names(&self) -> Vec<&str> {
        if self.is_single() { Vec::new() } else { self.names.iter().map(String::as_str).collect() }
    }

    fn is_single(&self) -> bool {
        matches!(self.names.as_slice(), [only] if only == SINGLE)
    }

    /// The text of the template `render` would use (with or without tools), as compiled: line
    /// endings normalised and `{% generation %}` tags rewritten (see the module docs).
    pub fn template_source(&self, with_tools: bool) -> Result<String> {
        let name = self.pick(with_tools)?;
        Ok(self.env.get_template(name).map_err(Error::TemplateRender)?.source().to_owned())
    }

    /// Renders `messages` as transformers' `apply_chat_template(messages, tools=tools,
    /// add_generation_prompt=..., tokenize=False)` would.
    pub fn render(
        &self,
        messages: &[Message],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_with(Value::from(Serde(messages)), tools, add_generation_prompt, &serde_json::Map::new())
    }

    /// Like [`render`](Self::render) for messages of any shape (e.g. assistant turns with
    /// `tool_calls`, `tool` messages) and extra template variables (e.g. `enable_thinking`),
    /// which transformers passes as keyword arguments.
    ///
    /// As transformers does, keys whose value is `null` are dropped from each message, and a
    /// message's reasoning (`reasoning_content`, `thinking` or `reasoning`) is also passed as
    /// `thinking` and `reasoning_content`, the names templates read.
    pub fn render_json(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let messages = messages.iter().map(normalize_message).collect::<Result<Vec<_>>>()?;
        self.render_with(Value::from(Serde(messages)), tools, add_generation_prompt, extra)
    }

    fn render_with(
        &self,
        messages: Value,
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        if messages.len() == Some(0) {
            return Err(Error::EmptyConversation);
        }
        let template = self.env.get_template(self.pick(tools.is_some())?).map_err(Error::TemplateRender)?;
        // transformers: render(messages=..., tools=..., documents=..., add_generation_prompt=...,
        // **special_tokens_map, **kwargs); later keys win.
        let mut ctx: BTreeMap<String, Value> = self.special_tokens.iter().cloned().collect();
        ctx.insert("messages".to_owned(), messages);
        ctx.insert("tools".to_owned(), tools.map_or(Value::from(()), |t| Value::from(Serde(t))));
        ctx.insert("documents".to_owned(), Value::from(()));
        ctx.insert("add_generation_prompt".to_owned(), Value::from(add_generation_prompt));
        for (key, value) in extra {
            ctx.insert(key.clone(), Value::from(Serde(value)));
        }
        template.render(Value::from(ctx)).map_err(render_error)
    }

    /// Which template to render: the only one, or (for named templates, as transformers picks)
    /// `tool_use` when tools are given and it exists, else `default`.
    fn pick(&self, with_tools: bool) -> Result<&str> {
        if self.is_single() {
            return Ok(SINGLE);
        }
        let wanted = if with_tools && self.names.iter().any(|n| n == "tool_use") { "tool_use" } else { "default" };
        self.names.iter().find(|n| *n == wanted).map(String::as_str).ok_or_else(|| Error::NoSuchTemplate {
            name: wanted.to_owned(),
            available: self.template_names().join(", "),
        })
    }
}

/// The names a message's reasoning goes by; transformers passes it under the first two.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// transformers' `_normalize_chat_messages` + `_alias_reasoning_fields` for one message.
fn normalize_message(message: &serde_json::Value) -> Result<serde_json::Value> {
    let Some(fields) = message.as_object() else {
        return Err(Error::InvalidMessage(format!("chat messages must be JSON objects, got {message}")));
    };
    let fields: serde_json::Map<String, serde_json::Value> =
        fields.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
    let Some(reasoning) = REASONING_FIELDS.iter().find_map(|key| fields.get(*key)).cloned() else {
        return Ok(serde_json::Value::Object(fields));
    };
    // Python: {"thinking": reasoning, **message, "reasoning_content": reasoning}
    let mut aliased = serde_json::Map::new();
    aliased.insert("thinking".to_owned(), reasoning.clone());
    for (key, value) in fields {
        aliased.insert(key, value);
    }
    aliased.insert("reasoning_content".to_owned(), reasoning);
    Ok(serde_json::Value::Object(aliased))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_owned(), source })
}

/// The marker `raise_exception` attaches, so a render failure it caused is reported as
/// [`Error::TemplateRaised`] with the template's own message.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

fn raise_exception(message: Rest<Value>) -> std::result::Result<Value, minijinja::Error> {
    let message = message.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" ");
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedException(message)))
}

fn render_error(err: minijinja::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return Error::TemplateRaised { message: raised.0.clone() };
        }
        source = e.source();
    }
    Error::TemplateRender(err)
}

/// `strftime_now(format)`: Python's `datetime.now().strftime(format)`, local time.
fn strftime_now(format: &str) -> std::result::Result<String, minijinja::Error> {
    crate::python::strftime_now(format)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now({format:?}): {e}")))
}

/// The template source as Jinja2 would read it: line endings normalised to `\n` (Jinja2's lexer
/// does this for template data and string literals), and transformers' `{% generation %}` /
/// `{% endgeneration %}` tags turned into an always-true `if` block with the same whitespace
/// control, which renders the body as the tag does.
fn jinja2_source(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match generation_tag(tag) {
            Some((len, replacement)) => {
                out.push_str(&replacement);
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `tag` starts with `{%[-+]? (end)?generation [-+]?%}`, its length and replacement.
fn generation_tag(tag: &str) -> Option<(usize, String)> {
    let body = tag.strip_prefix("{%")?;
    let (open, body) = match body.chars().next() {
        Some(c @ ('-' | '+')) => (c.to_string(), &body[1..]),
        _ => (String::new(), body),
    };
    let trimmed = body.trim_start();
    let (word, replacement) = if let Some(after) = trimmed.strip_prefix("endgeneration") {
        (after, "endif")
    } else if let Some(after) = trimmed.strip_prefix("generation") {
        (after, "if true")
    } else {
        return None;
    };
    let after = word.trim_start();
    if !(after.len() < word.len() || after.starts_with(['-', '+', '%'])) {
        return None; // e.g. `{% generation_foo %}`
    }
    let (close, after) = match after.chars().next() {
        Some(c @ ('-' | '+')) => (c.to_string(), &after[1..]),
        _ => (String::new(), after),
    };
    let after = after.strip_prefix("%}")?;
    let len = tag.len() - after.len();
    Some((len, format!("{{%{open} {replacement} {close}%}}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_if_blocks() {
        assert_eq!(
            jinja2_source("a{% generation %}b{%- endgeneration -%}c{%generation%}"),
            "a{% if true %}b{%- endif -%}c{% if true %}"
        );
        assert_eq!(jinja2_source("{% generations %}{% if x %}"), "{% generations %}{% if x %}");
        assert_eq!(jinja2_source("x\r\ny\rz"), "x\ny\nz");
    }
}
