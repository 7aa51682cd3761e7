//! BFCL's function docs: loading, conversion to strict JSON Schema, and checking a call
//! against its doc before it reaches an environment.
//!
//! A func_doc file is JSON Lines, one `{"name", "description", "parameters", "response"}`
//! object per function, in BFCL's loose schema dialect: `"dict"` for objects, `"float"`
//! for numbers, enum values written only as text in a description (`[Enum]: USD, RMB` or
//! `[Enum]: ["engage", "release"]`), and the string `"None"` as a default meaning Python
//! `None`. [`to_json_schema`] turns that into JSON Schema a strict tool API accepts.
//!
//! A [`ToolSet`] is what the model is shown for one entry: the docs of its
//! `involved_classes`, in that order, less the functions a miss_func entry holds back
//! until its hand-over turn. [`ToolSet::validate`] checks a parsed [`Call`] against the
//! shown docs and maps positional arguments onto parameter names.
//!
//! Validation rules, where a choice had to be made:
//! - `integer` takes an `int` only: not a `bool`, and not a `float` even when it is whole
//!   (`3.0`). The environments index, slice and count with these values, where Python
//!   raises on a float, and BFCL passes values through unchanged, so accepting `3.0` would
//!   hide an error upstream shows.
//! - `number` (`float` in the docs) takes an `int` or a `float`, never a `bool`. Values
//!   are not converted: `10000` stays an `int`, as it would upstream.
//! - `None` is accepted only where the parameter's default is `None`.
//! - Identifiers: a parameter named `id` or ending in `_id` whose doc type is `integer` or
//!   `string` takes either an integer or a string. IDs are opaque keys the functions look
//!   up with `==`, and upstream's own data disagrees with its docs about their type: the
//!   TicketAPI scenarios hold ticket IDs such as `'ticket_001'` while the docs say
//!   `integer`, and the ground truth passes them as they are (`close_ticket(ticket_id=
//!   'ticket_001')` closes that ticket). The converted schema still shows the doc's type.
//! - Enum membership is not enforced. The enum hints are put into the schema, but a value
//!   outside them reaches the function, which reports it in its own words, as it does in
//!   BFCL (where nothing checks calls against the docs at all).
//! - An object's properties are checked where the doc lists them (`edit_ticket.updates`);
//!   keys it does not list are left to the function, as JSON Schema's default allows.
//! - A function a miss_func entry holds back is hidden, not removed: it is missing from
//!   the tools shown, but [`ToolSet::validate`] accepts a call to it, because BFCL's
//!   environment still has the method and runs such a call, and the ground truth itself
//!   makes one (`multi_turn_miss_func_49` calls `tail` at turn 1; it is released at turn
//!   3). [`ToolSet::validate_shown`] is the stricter check that refuses it.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use crate::call::Call;
use crate::envs::CLASSES;
use crate::value::{Key, Value};

/// One function's doc, as its func_doc line gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDoc {
    pub name: String,
    pub description: String,
    /// The raw `parameters` schema, in BFCL's dialect (see [`FunctionDoc::schema`]).
    pub parameters: Json,
    /// The raw `response` schema (`null` when the line has none).
    pub response: Json,
    /// The class the function belongs to (`GorillaFileSystem`, ...).
    pub class: String,
}

/// A func_doc file or tool set that could not be loaded, or a hold-back/release naming a
/// function the set lacks. Shown as `path:line: message` where those are known.
#[derive(Debug, Clone, PartialEq)]
pub struct DocError {
    pub path: Option<PathBuf>,
    pub line: Option<usize>,
    pub message: String,
}

impl DocError {
    fn new(message: impl Into<String>) -> Self {
        DocError { path: None, line: None, message: message.into() }
    }
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.line) {
            (Some(p), Some(l)) => write!(f, "{}:{l}: {}", p.display(), self.message),
            (Some(p), None) => write!(f, "{}: {}", p.display(), self.message),
            (None, Some(l)) => write!(f, "line {l}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DocError {}

/// Why a call does not fit the docs. The message is written for the model to read.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    UnknownFunction {
        name: String,
        available: Vec<String>,
    },
    UnknownArgument {
        function: String,
        argument: String,
        accepted: Vec<String>,
    },
    TooManyArguments {
        function: String,
        takes: usize,
        given: usize,
    },
    RepeatedArgument {
        function: String,
        argument: String,
    },
    /// Each missing argument with its expected type (`string`, `integer`, ...).
    MissingArguments {
        function: String,
        missing: Vec<(String, String)>,
    },
    /// `argument` is a path into the value for a nested mismatch (`numbers[2]`,
    /// `updates['priority']`); `expected` reads "an integer", "a string", ...; `got` is the
    /// Python type name and a (shortened) repr of the value.
    WrongType {
        function: String,
        argument: String,
        expected: String,
        got: String,
    },
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::UnknownFunction { name, available } => {
                write!(f, "unknown function '{name}'. Available functions: {}", available.join(", "))
            }
            CallError::UnknownArgument { function, argument, accepted } => {
                let accepted = if accepted.is_empty() { "none".to_owned() } else { accepted.join(", ") };
                write!(f, "{function}() got an unexpected argument '{argument}'. Accepted arguments: {accepted}")
            }
            CallError::TooManyArguments { function, takes, given } => write!(
                f,
                "{function}() takes {takes} argument{} but {given} positional argument{} given",
                if *takes == 1 { "" } else { "s" },
                if *given == 1 { " was" } else { "s were" }
            ),
            CallError::RepeatedArgument { function, argument } => {
                write!(f, "{function}() got multiple values for argument '{argument}'")
            }
            CallError::MissingArguments { function, missing } => {
                let list: Vec<String> = missing.iter().map(|(n, t)| format!("'{n}' ({t})")).collect();
                write!(
                    f,
                    "{function}() is missing required argument{} {}",
                    if missing.len() == 1 { "" } else { "s" },
                    list.join(", ")
                )
            }
            CallError::WrongType { function, argument, expected, got } => {
                write!(f, "{function}(): argument '{argument}' must be {expected}, got {got}")
            }
        }
    }
}

impl std::error::Error for CallError {}

/// The func_doc file BFCL describes `class` in (`TwitterAPI` → `posting_api.json`).
pub fn doc_file(class: &str) -> Option<&'static str> {
    CLASSES.iter().find(|(c, _)| *c == class).map(|(_, f)| *f)
}

/// Loads one func_doc file; every function gets `class`.
pub fn load_func_docs(path: &Path, class: &str) -> Result<Vec<FunctionDoc>, DocError> {
    let text = std::fs::read_to_string(path).map_err(|e| DocError {
        path: Some(path.to_owned()),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    parse_func_docs(&text, class).map_err(|e| DocError { path: Some(path.to_owned()), ..e })
}

/// Parses func_doc JSON Lines text (blank lines are skipped; line numbers count them).
pub fn parse_func_docs(text: &str, class: &str) -> Result<Vec<FunctionDoc>, DocError> {
    let mut docs: Vec<FunctionDoc> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |message: String| DocError { path: None, line: Some(i + 1), message };
        let json: Json = serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
        let doc = FunctionDoc::from_json(&json, class).map_err(at)?;
        if docs.iter().any(|d| d.name == doc.name) {
            return Err(at(format!("function '{}' is documented twice", doc.name)));
        }
        docs.push(doc);
    }
    Ok(docs)
}

impl FunctionDoc {
    /// Reads one func_doc object, checking that its schema is one this module understands.
    pub fn from_json(json: &Json, class: &str) -> Result<FunctionDoc, String> {
        let obj = json.as_object().ok_or("a function doc must be a JSON object")?;
        let name = match obj.get("name") {
            Some(Json::String(s)) if !s.is_empty() => s.clone(),
            Some(Json::String(_)) => return Err("\"name\" is empty".into()),
            Some(other) => return Err(format!("\"name\" must be a string, got {other}")),
            None => return Err("missing \"name\"".into()),
        };
        let description = match obj.get("description") {
            Some(Json::String(s)) => s.clone(),
            None => String::new(),
            Some(other) => return Err(format!("{name}: \"description\" must be a string, got {other}")),
        };
        let parameters = obj.get("parameters").ok_or_else(|| format!("{name}: missing \"parameters\""))?.clone();
        check_schema(&parameters, "parameters").map_err(|e| format!("{name}: {e}"))?;
        match schema_type(&parameters) {
            Ok(Ty::Object) => {}
            _ => return Err(format!("{name}: \"parameters\" must have type \"dict\" (or \"object\")")),
        }
        let response = obj.get("response").cloned().unwrap_or(Json::Null);
        if !response.is_null() {
            check_schema(&response, "response").map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(FunctionDoc { name, description, parameters, response, class: class.to_owned() })
    }

    /// The parameters converted to strict JSON Schema (see [`to_json_schema`]).
    pub fn schema(&self) -> Json {
        to_json_schema(&self.parameters)
    }

    /// `{"type": "function", "function": {"name", "description", "parameters"}}`, the
    /// OpenAI/Qwen tool form.
    pub fn tool_json(&self) -> Json {
        serde_json::json!({
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.schema()},
        })
    }

    /// Parameter names, in the doc's order (the order positional arguments bind in).
    pub fn param_names(&self) -> Vec<&str> {
        properties(&self.parameters).map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default()
    }

    /// The required parameter names.
    pub fn required(&self) -> Vec<&str> {
        required(&self.parameters)
    }

    /// Checks `call` against this doc and returns it with every argument by keyword:
    /// positional arguments named in the doc's parameter order first, then the keyword
    /// arguments as written. Defaults are not filled in; values are not converted.
    pub fn validate(&self, call: &Call) -> Result<Call, CallError> {
        let func = &self.name;
        let params = properties(&self.parameters);
        let names = self.param_names();
        if call.args.len() > names.len() {
            return Err(CallError::TooManyArguments {
                function: func.clone(),
                takes: names.len(),
                given: call.args.len(),
            });
        }
        let mut out = Call::new(func.clone());
        for (name, value) in names.iter().zip(&call.args) {
            out.kwargs.insert((*name).to_owned(), value.clone());
        }
        for (key, value) in &call.kwargs {
            if !names.contains(&key.as_str()) {
                return Err(CallError::UnknownArgument {
                    function: func.clone(),
                    argument: key.clone(),
                    accepted: names.iter().map(|n| (*n).to_owned()).collect(),
                });
            }
            if out.kwargs.contains_key(key) {
                return Err(CallError::RepeatedArgument { function: func.clone(), argument: key.clone() });
            }
            out.kwargs.insert(key.clone(), value.clone());
        }
        let missing: Vec<(String, String)> = self
            .required()
            .into_iter()
            .filter(|r| !out.kwargs.contains_key(*r))
            .map(|r| {
                let schema = params.and_then(|p| p.get(r));
                let ty = schema.and_then(|s| schema_type(s).ok()).unwrap_or(Ty::Any);
                (r.to_owned(), ty.json_name().to_owned())
            })
            .collect();
        if !missing.is_empty() {
            return Err(CallError::MissingArguments { function: func.clone(), missing });
        }
        if let Some(params) = params {
            for (key, value) in &out.kwargs {
                if let Some(schema) = params.get(key) {
                    check_value(schema, key, value, key).map_err(|m| m.into_error(func))?;
                }
            }
        }
        Ok(out)
    }
}

/// The types BFCL's docs use, with JSON Schema's names for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
    Any,
}

impl Ty {
    fn parse(name: &str) -> Option<Ty> {
        Some(match name {
            "string" => Ty::String,
            "integer" => Ty::Integer,
            "float" | "number" => Ty::Number,
            "boolean" => Ty::Boolean,
            "array" | "tuple" => Ty::Array,
            "dict" | "object" => Ty::Object,
            "any" => Ty::Any,
            _ => return None,
        })
    }

    fn json_name(self) -> &'static str {
        match self {
            Ty::String => "string",
            Ty::Integer => "integer",
            Ty::Number => "number",
            Ty::Boolean => "boolean",
            Ty::Array => "array",
            Ty::Object => "object",
            Ty::Any => "any",
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Ty::String => "a string",
            Ty::Integer => "an integer",
            Ty::Number => "a number",
            Ty::Boolean => "a boolean",
            Ty::Array => "an array",
            Ty::Object => "an object",
            Ty::Any => "any value",
        }
    }
}

/// A schema node's type; a node without `type` takes any value.
fn schema_type(node: &Json) -> Result<Ty, String> {
    match node.get("type") {
        None => Ok(Ty::Any),
        Some(Json::String(t)) => Ty::parse(t).ok_or_else(|| format!("unknown type \"{t}\"")),
        Some(other) => Err(format!("\"type\" must be a string, got {other}")),
    }
}

fn properties(node: &Json) -> Option<&Map<String, Json>> {
    node.get("properties").and_then(Json::as_object)
}

fn required(node: &Json) -> Vec<&str> {
    node.get("required")
        .and_then(Json::as_array)
        .map(|r| r.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default()
}

/// Checks that a schema node (and everything under it) is well formed; `at` names it.
fn check_schema(node: &Json, at: &str) -> Result<(), String> {
    let obj = node.as_object().ok_or_else(|| format!("{at}: a schema must be a JSON object, got {node}"))?;
    schema_type(node).map_err(|e| format!("{at}: {e}"))?;
    if let Some(d) = obj.get("description")
        && !d.is_string()
    {
        return Err(format!("{at}: \"description\" must be a string, got {d}"));
    }
    if let Some(props) = obj.get("properties") {
        let props = props.as_object().ok_or_else(|| format!("{at}: \"properties\" must be an object"))?;
        for (name, schema) in props {
            check_schema(schema, &format!("{at}.{name}"))?;
        }
    }
    if let Some(items) = obj.get("items") {
        check_schema(items, &format!("{at}[]"))?;
    }
    if let Some(req) = obj.get("required") {
        let req = req.as_array().ok_or_else(|| format!("{at}: \"required\" must be an array"))?;
        for r in req {
            let r = r.as_str().ok_or_else(|| format!("{at}: \"required\" must list names, got {r}"))?;
            if !properties(node).is_some_and(|p| p.contains_key(r)) {
                return Err(format!("{at}: \"required\" names '{r}', which is not among its properties"));
            }
        }
    }
    Ok(())
}

/// True for a `default` that stands for Python `None` (the string `"None"`, or `null`).
fn default_is_none(schema: &Json) -> bool {
    matches!(schema.get("default"), Some(Json::Null)) || schema.get("default").and_then(Json::as_str) == Some("None")
}

fn is_id_name(name: &str) -> bool {
    name == "id" || name.ends_with("_id")
}

fn short_repr(v: &Value) -> String {
    const MAX: usize = 60;
    let r = v.repr();
    if r.chars().count() <= MAX { r } else { format!("{}...", r.chars().take(MAX - 3).collect::<String>()) }
}

/// A value that does not fit its schema, found at `path` inside the call.
enum Mismatch {
    Type { path: String, expected: String, got: String },
    Missing { path: String, ty: &'static str },
}

impl Mismatch {
    fn into_error(self, function: &str) -> CallError {
        let function = function.to_owned();
        match self {
            Mismatch::Type { path, expected, got } => CallError::WrongType { function, argument: path, expected, got },
            Mismatch::Missing { path, ty } => {
                CallError::MissingArguments { function, missing: vec![(path, ty.into())] }
            }
        }
    }
}

/// Checks `value` against `schema`. `name` is the property name (for the ID rule), `path`
/// where the value sits in the call.
fn check_value(schema: &Json, name: &str, value: &Value, path: &str) -> Result<(), Mismatch> {
    let ty = schema_type(schema).unwrap_or(Ty::Any);
    let wrong = |expected: &str| {
        Err(Mismatch::Type {
            path: path.to_owned(),
            expected: expected.to_owned(),
            got: format!("{} {}", value.type_name(), short_repr(value)),
        })
    };
    if value.is_none() && default_is_none(schema) {
        return Ok(());
    }
    if is_id_name(name) && matches!(ty, Ty::Integer | Ty::String) {
        return match value {
            Value::Int(_) | Value::Str(_) => Ok(()),
            _ => wrong("an integer or a string"),
        };
    }
    match (ty, value) {
        (Ty::Any, _)
        | (Ty::String, Value::Str(_))
        | (Ty::Integer, Value::Int(_))
        | (Ty::Number, Value::Int(_) | Value::Float(_))
        | (Ty::Boolean, Value::Bool(_)) => Ok(()),
        (Ty::Array, Value::List(items) | Value::Tuple(items)) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_value(item_schema, "", item, &format!("{path}[{i}]"))?;
                }
            }
            Ok(())
        }
        (Ty::Object, Value::Dict(dict)) => {
            let props = properties(schema);
            if let Some(r) = required(schema).into_iter().find(|r| !dict.contains_key(&Key::from(*r))) {
                let ty = props.and_then(|p| p.get(r)).and_then(|s| schema_type(s).ok()).unwrap_or(Ty::Any);
                return Err(Mismatch::Missing { path: format!("{path}['{r}']"), ty: ty.json_name() });
            }
            if let Some(props) = props {
                for (key, v) in dict {
                    if let Key::Str(k) = key
                        && let Some(s) = props.get(k)
                    {
                        check_value(s, k, v, &format!("{path}['{k}']"))?;
                    }
                }
            }
            Ok(())
        }
        _ => wrong(ty.expected()),
    }
}

/// The values of an enum hint in a description: `"... [Enum]: USD, RMB, EUR"` (a plain
/// comma list running to the end) or `"... [Enum]: [\"engage\", \"release\"]"` (a
/// JSON-like list). `None` when there is no hint or it lists nothing.
pub fn enum_hint(description: &str) -> Option<Vec<String>> {
    const MARK: &str = "[Enum]:";
    let rest = description[description.find(MARK)? + MARK.len()..].trim();
    let values: Vec<String> = if let Some(inner) = rest.strip_prefix('[') {
        let list = match inner.find(']') {
            Some(end) => &rest[..end + 2],
            None => rest,
        };
        match serde_json::from_str::<Vec<Json>>(list) {
            Ok(items) => items.iter().map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())).collect(),
            // Not JSON (single quotes, say): split it by hand.
            Err(_) => inner
                .split(']')
                .next()
                .unwrap_or("")
                .split(',')
                .map(|s| s.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
                .collect(),
        }
    } else {
        rest.split(',').map(|s| s.trim().to_owned()).collect()
    };
    let values: Vec<String> = values.into_iter().filter(|s| !s.is_empty()).collect();
    (!values.is_empty()).then_some(values)
}

/// Converts a BFCL schema node to strict JSON Schema: `dict`→`object`, `float`→`number`,
/// `tuple`→`array`, `any`→no `type`; an `[Enum]: ...` hint in the description becomes an
/// `enum` array (on `items` for an array, whose elements it lists); a `default` of the
/// string `"None"` becomes `null`. Key order and everything else are kept.
pub fn to_json_schema(node: &Json) -> Json {
    let Some(obj) = node.as_object() else {
        return node.clone();
    };
    let ty = obj.get("type").and_then(Json::as_str).and_then(Ty::parse);
    let hint = obj.get("description").and_then(Json::as_str).and_then(enum_hint);
    let own_enum = hint.as_ref().filter(|_| ty != Some(Ty::Array) && !obj.contains_key("enum"));
    let mut out = Map::new();
    for (key, value) in obj {
        match key.as_str() {
            "type" => match ty {
                Some(Ty::Any) => {}
                Some(t) => {
                    out.insert(key.clone(), Json::String(t.json_name().to_owned()));
                }
                None => {
                    out.insert(key.clone(), value.clone());
                }
            },
            "default" if value.as_str() == Some("None") => {
                out.insert(key.clone(), Json::Null);
            }
            "properties" => {
                let props = match value.as_object() {
                    Some(p) => Json::Object(p.iter().map(|(k, v)| (k.clone(), to_json_schema(v))).collect()),
                    None => value.clone(),
                };
                out.insert(key.clone(), props);
            }
            "items" => {
                let mut items = to_json_schema(value);
                if ty == Some(Ty::Array)
                    && let (Some(values), Some(items)) = (&hint, items.as_object_mut())
                    && !items.contains_key("enum")
                {
                    let item_ty = items.get("type").and_then(Json::as_str).and_then(Ty::parse);
                    items.insert("enum".into(), enum_json(values, item_ty));
                }
                out.insert(key.clone(), items);
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
        if key == "description"
            && let Some(values) = own_enum
        {
            out.insert("enum".into(), enum_json(values, ty));
        }
    }
    Json::Object(out)
}

/// Enum values as JSON: numbers for a numeric type when they all parse, else strings.
fn enum_json(values: &[String], ty: Option<Ty>) -> Json {
    if matches!(ty, Some(Ty::Integer | Ty::Number)) {
        let numbers: Option<Vec<Json>> = values
            .iter()
            .map(|v| match ty {
                Some(Ty::Integer) => v.parse::<i64>().ok().map(Json::from),
                _ => v.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Json::Number),
            })
            .collect();
        if let Some(numbers) = numbers {
            return Json::Array(numbers);
        }
    }
    Json::Array(values.iter().map(|v| Json::String(v.clone())).collect())
}

/// The docs shown to the model for one entry: every function of its `involved_classes`,
/// in that order, less those held back. Released functions go to the end of the list, as
/// BFCL appends them at the hand-over turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSet {
    docs: Vec<FunctionDoc>,
    /// Indices into `docs` of the functions shown, in the order shown.
    shown: Vec<usize>,
}

impl ToolSet {
    /// A set showing all of `docs`; a name documented twice is an error.
    pub fn new(docs: Vec<FunctionDoc>) -> Result<ToolSet, DocError> {
        let mut seen = HashSet::new();
        for d in &docs {
            if !seen.insert(d.name.as_str()) {
                return Err(DocError::new(format!("function '{}' is documented twice", d.name)));
            }
        }
        let shown = (0..docs.len()).collect();
        Ok(ToolSet { docs, shown })
    }

    /// Loads the docs of `classes` from a func_doc directory, in the order given.
    pub fn load<S: AsRef<str>>(func_doc_dir: &Path, classes: &[S]) -> Result<ToolSet, DocError> {
        let mut docs = Vec::new();
        for class in classes {
            let class = class.as_ref();
            let file = doc_file(class).ok_or_else(|| {
                let known: Vec<&str> = CLASSES.iter().map(|(c, _)| *c).collect();
                DocError::new(format!("unknown class '{class}'; known classes: {}", known.join(", ")))
            })?;
            docs.extend(load_func_docs(&func_doc_dir.join(file), class)?);
        }
        ToolSet::new(docs)
    }

    /// The tool set for a question entry: its `involved_classes`, with every function in
    /// its `missed_function` (miss_func entries) held back.
    pub fn for_entry(func_doc_dir: &Path, entry: &Json) -> Result<ToolSet, DocError> {
        let id = entry.get("id").and_then(Json::as_str).unwrap_or("entry");
        let classes: Vec<&str> = entry
            .get("involved_classes")
            .and_then(Json::as_array)
            .and_then(|c| c.iter().map(Json::as_str).collect())
            .ok_or_else(|| DocError::new(format!("{id}: \"involved_classes\" must be a list of class names")))?;
        let mut set = ToolSet::load(func_doc_dir, &classes)?;
        if let Some(missed) = entry.get("missed_function") {
            let missed = missed
                .as_object()
                .ok_or_else(|| DocError::new(format!("{id}: \"missed_function\" must be an object")))?;
            for names in missed.values() {
                let names: Vec<&str> = names
                    .as_array()
                    .and_then(|n| n.iter().map(Json::as_str).collect())
                    .ok_or_else(|| DocError::new(format!("{id}: \"missed_function\" must map turns to names")))?;
                set.hold_back(&names)?;
            }
        }
        Ok(set)
    }

    fn index(&self, name: &str) -> Result<usize, DocError> {
        self.docs
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| DocError::new(format!("no function '{name}' in this tool set")))
    }

    /// Removes functions from the list shown (miss_func, at the start of the entry).
    pub fn hold_back<S: AsRef<str>>(&mut self, names: &[S]) -> Result<(), DocError> {
        let idx: Vec<usize> = names.iter().map(|n| self.index(n.as_ref())).collect::<Result<_, _>>()?;
        self.shown.retain(|i| !idx.contains(i));
        Ok(())
    }

    /// Shows held-back functions again, appended in the order given (the hand-over turn).
    /// Releasing a function already shown changes nothing.
    pub fn release<S: AsRef<str>>(&mut self, names: &[S]) -> Result<(), DocError> {
        let idx: Vec<usize> = names.iter().map(|n| self.index(n.as_ref())).collect::<Result<_, _>>()?;
        for i in idx {
            if !self.shown.contains(&i) {
                self.shown.push(i);
            }
        }
        Ok(())
    }

    /// A shown function's doc.
    pub fn get(&self, name: &str) -> Option<&FunctionDoc> {
        self.iter().find(|d| d.name == name)
    }

    /// The shown docs, in the order shown.
    pub fn iter(&self) -> impl Iterator<Item = &FunctionDoc> {
        self.shown.iter().map(|&i| &self.docs[i])
    }

    /// The shown function names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.iter().map(|d| d.name.as_str()).collect()
    }

    /// The held-back docs, in load order.
    pub fn held_back(&self) -> impl Iterator<Item = &FunctionDoc> {
        self.docs.iter().enumerate().filter(|(i, _)| !self.shown.contains(i)).map(|(_, d)| d)
    }

    /// Every doc, shown or not, in load order.
    pub fn all(&self) -> &[FunctionDoc] {
        &self.docs
    }

    /// The shown functions as an OpenAI/Qwen `tools` array.
    pub fn tools_json(&self) -> Json {
        Json::Array(self.iter().map(FunctionDoc::tool_json).collect())
    }

    /// Checks a call against the docs (see [`FunctionDoc::validate`]), held-back ones
    /// included, as BFCL runs a call to a held-back function. An unknown function's error
    /// lists the functions shown.
    pub fn validate(&self, call: &Call) -> Result<Call, CallError> {
        match self.docs.iter().find(|d| d.name == call.name) {
            Some(doc) => doc.validate(call),
            None => Err(self.unknown(call)),
        }
    }

    /// As [`ToolSet::validate`], but a held-back function is unknown until released.
    pub fn validate_shown(&self, call: &Call) -> Result<Call, CallError> {
        match self.get(&call.name) {
            Some(doc) => doc.validate(call),
            None => Err(self.unknown(call)),
        }
    }

    fn unknown(&self, call: &Call) -> CallError {
        CallError::UnknownFunction {
            name: call.name.clone(),
            available: self.names().into_iter().map(str::to_owned).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::parse_calls;
    use serde_json::json;

    const DOCS: &str = r#"{"name": "tail", "description": "T. ", "parameters": {"type": "dict", "properties": {"file_name": {"type": "string", "description": "File."}, "lines": {"type": "integer", "description": "Lines.", "default": 10}}, "required": ["file_name"]}, "response": {"type": "dict", "properties": {"last_lines": {"type": "string"}}}}

{"name": "mean", "description": "M.", "parameters": {"type": "dict", "properties": {"numbers": {"type": "array", "items": {"type": "float"}, "description": "Numbers."}}, "required": ["numbers"]}, "response": {"type": "dict", "properties": {"result": {"type": "float", "description": "Mean. [Enum]: [\"a\", \"b\"]"}}}}
{"name": "rate", "description": "R.", "parameters": {"type": "dict", "properties": {"base": {"type": "string", "description": "Base. [Enum]: USD, RMB, EUR"}, "value": {"type": "float", "description": "V."}, "when": {"type": "string", "description": "W.", "default": "None"}, "flag": {"type": "boolean", "description": "F.", "default": false}, "extra": {"type": "any"}}, "required": ["base", "value"]}}
{"name": "lock", "description": "L.", "parameters": {"type": "dict", "properties": {"door": {"type": "array", "items": {"type": "string"}, "description": "Doors. [Enum]: [\"driver\", \"passenger\"]"}, "mode": {"type": "string", "description": "Mode. [Enum]: [\"on\", \"off\"]"}, "pair": {"type": "tuple", "items": {"type": "integer"}}}, "required": []}}
{"name": "edit", "description": "E.", "parameters": {"type": "dict", "properties": {"ticket_id": {"type": "integer", "description": "ID."}, "updates": {"type": "dict", "description": "U.", "properties": {"status": {"type": "string"}, "priority": {"type": "integer"}}}}, "required": ["ticket_id", "updates"]}}
{"name": "nest", "description": "N.", "parameters": {"type": "dict", "properties": {"inner": {"type": "dict", "properties": {"k": {"type": "integer"}}, "required": ["k"]}}, "required": ["inner"]}}"#;

    fn set() -> ToolSet {
        ToolSet::new(parse_func_docs(DOCS, "Test").unwrap()).unwrap()
    }

    fn call(text: &str) -> Call {
        parse_calls(text).unwrap().remove(0)
    }

    fn err(text: &str) -> String {
        set().validate(&call(text)).unwrap_err().to_string()
    }

    #[test]
    fn converts_to_json_schema() {
        let set = set();
        let rate = set.get("rate").unwrap().schema();
        assert_eq!(
            rate,
            json!({"type": "object", "properties": {
                "base": {"type": "string", "description": "Base. [Enum]: USD, RMB, EUR", "enum": ["USD", "RMB", "EUR"]},
                "value": {"type": "number", "description": "V."},
                "when": {"type": "string", "description": "W.", "default": null},
                "flag": {"type": "boolean", "description": "F.", "default": false},
                "extra": {}},
              "required": ["base", "value"]})
        );
        let keys: Vec<&String> = rate["properties"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["base", "value", "when", "flag", "extra"]);
        let lock = set.get("lock").unwrap().schema();
        assert_eq!(lock["properties"]["door"]["items"], json!({"type": "string", "enum": ["driver", "passenger"]}));
        assert!(lock["properties"]["door"].get("enum").is_none());
        assert_eq!(lock["properties"]["mode"]["enum"], json!(["on", "off"]));
        assert_eq!(lock["properties"]["pair"], json!({"type": "array", "items": {"type": "integer"}}));
        let mean = set.get("mean").unwrap();
        assert_eq!(mean.schema()["properties"]["numbers"]["items"], json!({"type": "number"}));
        let resp = to_json_schema(&mean.response);
        assert_eq!(resp["type"], "object");
        assert_eq!(resp["properties"]["result"]["enum"], json!(["a", "b"]));
        assert_eq!(
            set.tools_json()[0],
            json!({"type": "function", "function": {"name": "tail", "description": "T. ", "parameters": {
                "type": "object", "properties": {
                    "file_name": {"type": "string", "description": "File."},
                    "lines": {"type": "integer", "description": "Lines.", "default": 10}},
                "required": ["file_name"]}}})
        );
    }

    #[test]
    fn enum_hints() {
        assert_eq!(enum_hint("The base. [Enum]: USD, RMB, EUR").unwrap(), ["USD", "RMB", "EUR"]);
        assert_eq!(enum_hint("Mode. [Enum]: [\"engage\", \"release\"]").unwrap(), ["engage", "release"]);
        assert_eq!(enum_hint("Mode. [Enum]: ['a', 'b'] more").unwrap(), ["a", "b"]);
        assert_eq!(enum_hint("City. [Enum]: San Francisco, New York ").unwrap(), ["San Francisco", "New York"]);
        assert_eq!(enum_hint("No hint."), None);
        assert_eq!(enum_hint("Empty [Enum]: "), None);
        assert_eq!(enum_json(&["1".into(), "2".into()], Some(Ty::Integer)), json!([1, 2]));
    }

    #[test]
    fn accepts_and_normalises() {
        let set = set();
        let c = set.validate(&call("tail('a.txt', lines=3)")).unwrap();
        assert!(c.args.is_empty());
        assert_eq!(c.to_python(), "tail(file_name='a.txt', lines=3)");
        assert_eq!(
            set.validate(&call("tail(lines=3, file_name='a')")).unwrap().to_python(),
            "tail(lines=3, file_name='a')"
        );
        assert!(set.validate(&call("mean([1, 2.5, 3])")).is_ok());
        assert!(set.validate(&call("mean(numbers=(1, 2))")).is_ok());
        assert!(set.validate(&call("rate(base='XYZ', value=3)")).is_ok(), "enum membership is the function's to check");
        assert!(set.validate(&call("rate(base='USD', value=3.5, when=None, extra=[{}])")).is_ok());
        assert!(set.validate(&call("edit(ticket_id=1, updates={'status': 'x', 'priority': 2, 'other': 1})")).is_ok());
        assert!(set.validate(&call("edit(ticket_id='ticket_001', updates={})")).is_ok(), "IDs may be strings");
        assert!(set.validate(&call("lock()")).is_ok());
        assert!(set.validate(&call("nest(inner={'k': 1})")).is_ok());
        let json = parse_calls(r#"{"name": "tail", "arguments": {"file_name": "a", "lines": 2}}"#).unwrap();
        assert!(set.validate(&json[0]).is_ok());
    }

    #[test]
    fn rejects_with_messages_for_the_model() {
        assert_eq!(
            err("cat(file_name='a')"),
            "unknown function 'cat'. Available functions: tail, mean, rate, lock, edit, nest"
        );
        assert_eq!(
            err("tail(file='a')"),
            "tail() got an unexpected argument 'file'. Accepted arguments: file_name, lines"
        );
        assert_eq!(err("tail(lines=2)"), "tail() is missing required argument 'file_name' (string)");
        assert_eq!(err("rate()"), "rate() is missing required arguments 'base' (string), 'value' (number)");
        assert_eq!(err("tail('a', file_name='b')"), "tail() got multiple values for argument 'file_name'");
        assert_eq!(err("tail('a', 1, 2)"), "tail() takes 2 arguments but 3 positional arguments were given");
        assert_eq!(err("tail(file_name=3)"), "tail(): argument 'file_name' must be a string, got int 3");
        assert_eq!(err("tail(file_name='a', lines=3.0)"), "tail(): argument 'lines' must be an integer, got float 3.0");
        assert_eq!(
            err("tail(file_name='a', lines=True)"),
            "tail(): argument 'lines' must be an integer, got bool True"
        );
        assert_eq!(
            err("tail(file_name='a', lines=None)"),
            "tail(): argument 'lines' must be an integer, got NoneType None"
        );
        assert_eq!(err("rate(base='USD', value=True)"), "rate(): argument 'value' must be a number, got bool True");
        assert_eq!(err("rate(base='USD', value='1')"), "rate(): argument 'value' must be a number, got str '1'");
        assert_eq!(err("rate(base='USD', value=1, flag=1)"), "rate(): argument 'flag' must be a boolean, got int 1");
        assert_eq!(err("mean(numbers=5)"), "mean(): argument 'numbers' must be an array, got int 5");
        assert_eq!(err("mean([1, 'x'])"), "mean(): argument 'numbers[1]' must be a number, got str 'x'");
        assert_eq!(err("edit(1, [])"), "edit(): argument 'updates' must be an object, got list []");
        assert_eq!(
            err("edit(1, {'priority': 'high'})"),
            "edit(): argument 'updates['priority']' must be an integer, got str 'high'"
        );
        assert_eq!(
            err("edit(ticket_id=1.5, updates={})"),
            "edit(): argument 'ticket_id' must be an integer or a string, got float 1.5"
        );
        assert_eq!(err("lock(pair=[1, 2.0])"), "lock(): argument 'pair[1]' must be an integer, got float 2.0");
        assert_eq!(err("nest(inner={})"), "nest() is missing required argument 'inner['k']' (integer)");
        let long = format!("tail(file_name=[{}])", "'abcdef', ".repeat(20));
        let msg = err(&long);
        assert!(msg.ends_with("...") && msg.len() < 140, "{msg}");
    }

    #[test]
    fn hold_back_and_release() {
        let mut set = set();
        set.hold_back(&["mean", "tail"]).unwrap();
        assert_eq!(set.names(), ["rate", "lock", "edit", "nest"]);
        assert!(set.get("mean").is_none());
        assert_eq!(set.held_back().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["tail", "mean"]);
        assert!(matches!(set.validate_shown(&call("mean([1])")), Err(CallError::UnknownFunction { .. })));
        assert!(set.validate(&call("mean([1])")).is_ok(), "held back is hidden, not removed");
        assert_eq!(
            set.validate(&call("cat()")).unwrap_err().to_string(),
            "unknown function 'cat'. Available functions: rate, lock, edit, nest"
        );
        set.release(&["mean", "tail"]).unwrap();
        set.release(&["mean"]).unwrap();
        assert_eq!(set.names(), ["rate", "lock", "edit", "nest", "mean", "tail"]);
        assert!(set.validate_shown(&call("mean([1])")).is_ok());
        assert_eq!(set.tools_json().as_array().unwrap().len(), 6);
        assert_eq!(set.hold_back(&["nope"]).unwrap_err().to_string(), "no function 'nope' in this tool set");
        assert_eq!(set.all().len(), 6);
    }

    #[test]
    fn bad_doc_files_name_the_line() {
        let bad = |text: &str| parse_func_docs(text, "C").unwrap_err().to_string();
        assert!(bad("\n{not json").starts_with("line 2: invalid JSON"));
        assert_eq!(bad("[1]"), "line 1: a function doc must be a JSON object");
        assert_eq!(bad(r#"{"description": "x", "parameters": {"type": "dict"}}"#), "line 1: missing \"name\"");
        assert_eq!(bad(r#"{"name": "f"}"#), "line 1: f: missing \"parameters\"");
        assert_eq!(
            bad(r#"{"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "decimal"}}}}"#),
            "line 1: f: parameters.x: unknown type \"decimal\""
        );
        assert_eq!(
            bad(r#"{"name": "f", "parameters": {"type": "dict", "properties": {}, "required": ["x"]}}"#),
            "line 1: f: parameters: \"required\" names 'x', which is not among its properties"
        );
        assert_eq!(
            bad(r#"{"name": "f", "parameters": {"type": "string"}}"#),
            "line 1: f: \"parameters\" must have type \"dict\" (or \"object\")"
        );
        let twice = r#"{"name": "f", "parameters": {"type": "dict"}}"#;
        assert_eq!(bad(&format!("{twice}\n{twice}")), "line 2: function 'f' is documented twice");
        let e = load_func_docs(Path::new("/nonexistent/x.json"), "C").unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/x.json: cannot read"), "{e}");
        let e = ToolSet::load(Path::new("/nonexistent"), &["Nope"]).unwrap_err();
        assert!(e.to_string().starts_with("unknown class 'Nope'; known classes: GorillaFileSystem"), "{e}");
    }
}
