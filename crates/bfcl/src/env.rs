//! The environment interface and Python-style argument binding.

use crate::call::Call;
use crate::value::{Dict, Key, Value};

/// One BFCL environment class (`GorillaFileSystem`, `TradingBot`, ...): its state, its
/// public functions, and the state comparison the checker makes.
///
/// `call` returns what the Python method returns (`Ok`) or the message of the exception it
/// raises (`Err`, which BFCL shows as `Error during execution: <msg>`). Functions that
/// report a failure by returning `{"error": ...}` do so with `Ok`, as upstream does.
pub trait Environment: Send + std::fmt::Debug {
    /// The Python class name.
    fn class_name(&self) -> &'static str;

    /// `_load_scenario(initial_config[class])`. `long_context` holds the long-context
    /// filler when the entry's category is `long_context` (see [`LongContext`]).
    fn load_scenario(&mut self, scenario: &Dict, long_context: Option<&LongContext>) -> Result<(), String>;

    /// The public method names, in the order the class defines them.
    fn functions(&self) -> &'static [&'static str];

    /// Runs one call (the name is a bare method name of this class).
    fn call(&mut self, call: &Call) -> Result<Value, String>;

    /// The public attributes (names not starting with `_`) and their values, as
    /// `vars(instance)` lists them: what BFCL's state check compares with `==`.
    fn state(&self) -> Dict;

    fn box_clone(&self) -> Box<dyn Environment>;
}

impl Clone for Box<dyn Environment> {
    fn clone(&self) -> Self {
        self.box_clone()
    }
}

/// The long-context filler (`FILE_CONTENT_EXTENSION`, `WATCH_LIST_EXTENSION`, ...) by
/// name, loaded from JSON written by `scripts/make_bfcl_long_context.py`. The filler is
/// upstream data and is not kept in this repository.
#[derive(Debug, Clone, Default)]
pub struct LongContext {
    pub constants: Dict,
}

impl LongContext {
    pub fn from_json_str(text: &str) -> Result<Self, String> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("long-context data: {e}"))?;
        match Value::from_tagged_json(&json)? {
            Value::Dict(constants) => Ok(LongContext { constants }),
            _ => Err("long-context data must be a JSON object of named constants".into()),
        }
    }

    /// A named constant; an error naming it when the file lacks it.
    pub fn get(&self, name: &str) -> Result<&Value, String> {
        self.constants.get(&Key::from(name)).ok_or_else(|| format!("long-context data has no `{name}`"))
    }
}

/// A parameter's default, as written in the Python signature.
#[derive(Debug, Clone, Copy)]
pub enum Default {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'static str),
}

impl Default {
    fn to_value(self) -> Value {
        match self {
            Default::None => Value::None,
            Default::Bool(b) => Value::Bool(b),
            Default::Int(i) => Value::Int(i),
            Default::Float(x) => Value::Float(x),
            Default::Str(s) => Value::Str(s.to_owned()),
        }
    }
}

/// One parameter of a method signature (after `self`).
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub default: Option<Default>,
}

/// A required parameter.
pub const fn req(name: &'static str) -> Param {
    Param { name, default: None }
}

/// An optional parameter with its default.
pub const fn opt(name: &'static str, default: Default) -> Param {
    Param { name, default: Some(default) }
}

/// Binds a call's arguments to a signature as Python does, with Python's `TypeError`
/// messages for a missing, unexpected, repeated or surplus argument.
pub fn bind(class: &str, call: &Call, params: &[Param]) -> Result<Bound, String> {
    let qual = format!("{class}.{}()", call.name);
    // CPython's order: positional arguments fill their slots, then keyword arguments are
    // checked (unexpected, repeated), then surplus positional ones, then missing ones.
    let mut values: Vec<Option<Value>> = vec![None; params.len()];
    for (slot, v) in values.iter_mut().zip(&call.args) {
        *slot = Some(v.clone());
    }
    for (k, v) in &call.kwargs {
        let Some(i) = params.iter().position(|p| p.name == k) else {
            return Err(format!("{qual} got an unexpected keyword argument '{k}'"));
        };
        if values[i].is_some() {
            return Err(format!("{qual} got multiple values for argument '{k}'"));
        }
        values[i] = Some(v.clone());
    }
    if call.args.len() > params.len() {
        // Counts include `self`, as Python's do.
        let most = params.len() + 1;
        let least = params.iter().filter(|p| p.default.is_none()).count() + 1;
        let takes = if least == most { format!("{most}") } else { format!("from {least} to {most}") };
        return Err(format!(
            "{qual} takes {takes} positional argument{} but {} were given",
            if most == 1 { "" } else { "s" },
            call.args.len() + 1
        ));
    }
    let missing: Vec<&str> =
        params.iter().zip(&values).filter(|(p, v)| v.is_none() && p.default.is_none()).map(|(p, _)| p.name).collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|m| format!("'{m}'")).collect();
        let list = match names.len() {
            1 => names[0].clone(),
            2 => format!("{} and {}", names[0], names[1]),
            n => format!("{}, and {}", names[..n - 1].join(", "), names[n - 1]),
        };
        return Err(format!(
            "{qual} missing {} required positional argument{}: {list}",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" }
        ));
    }
    let values = params
        .iter()
        .zip(values)
        .map(|(p, v)| (p.name, v.unwrap_or_else(|| p.default.expect("checked above").to_value())))
        .collect();
    Ok(Bound { func: call.name.clone(), values })
}

/// Bound arguments, read by name with a type check. Types are checked against the
/// function's schema before a call is dispatched, so these errors are a backstop; `int`
/// is accepted where a `float` is expected, as Python and JSON Schema's `number` do.
#[derive(Debug, Clone)]
pub struct Bound {
    func: String,
    values: Vec<(&'static str, Value)>,
}

impl Bound {
    pub fn get(&self, name: &str) -> &Value {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{}: `{name}` is not in its signature", self.func))
    }

    fn wrong(&self, name: &str, want: &str) -> String {
        format!(
            "{}: argument '{name}' must be {want}, got {} {}",
            self.func,
            self.get(name).type_name(),
            self.get(name).repr()
        )
    }

    pub fn str(&self, name: &str) -> Result<&str, String> {
        self.get(name).as_str().ok_or_else(|| self.wrong(name, "a string"))
    }
    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, String> {
        match self.get(name) {
            Value::None => Ok(None),
            v => v.as_str().map(Some).ok_or_else(|| self.wrong(name, "a string or None")),
        }
    }
    pub fn int(&self, name: &str) -> Result<i64, String> {
        match self.get(name) {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            _ => Err(self.wrong(name, "an integer")),
        }
    }
    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, String> {
        match self.get(name) {
            Value::None => Ok(None),
            _ => self.int(name).map(Some),
        }
    }
    pub fn float(&self, name: &str) -> Result<f64, String> {
        self.get(name).as_f64().ok_or_else(|| self.wrong(name, "a number"))
    }
    pub fn opt_float(&self, name: &str) -> Result<Option<f64>, String> {
        match self.get(name) {
            Value::None => Ok(None),
            _ => self.float(name).map(Some),
        }
    }
    pub fn bool(&self, name: &str) -> Result<bool, String> {
        match self.get(name) {
            Value::Bool(b) => Ok(*b),
            _ => Err(self.wrong(name, "a boolean")),
        }
    }
    pub fn list(&self, name: &str) -> Result<&[Value], String> {
        self.get(name).as_list().ok_or_else(|| self.wrong(name, "a list"))
    }
    pub fn dict(&self, name: &str) -> Result<&Dict, String> {
        self.get(name).as_dict().ok_or_else(|| self.wrong(name, "a dict"))
    }
    pub fn str_list(&self, name: &str) -> Result<Vec<String>, String> {
        self.list(name)?
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| self.wrong(name, "a list of strings")))
            .collect()
    }
    pub fn float_list(&self, name: &str) -> Result<Vec<f64>, String> {
        self.list(name)?.iter().map(|v| v.as_f64().ok_or_else(|| self.wrong(name, "a list of numbers"))).collect()
    }
}

/// Reads a field of a scenario dict (for `load_scenario`), with a clear error when it
/// has the wrong type. A missing key gives `None`.
pub fn scenario_field<'a>(scenario: &'a Dict, key: &str) -> Option<&'a Value> {
    scenario.get(&Key::from(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::parse_calls;

    const SIG: &[Param] = &[req("folder"), opt("a", Default::Bool(false)), opt("n", Default::None)];

    fn call(text: &str) -> Call {
        parse_calls(text).unwrap().remove(0)
    }

    #[test]
    fn binds_like_python() {
        let b = bind("FS", &call("cd('x', n=3)"), SIG).unwrap();
        assert_eq!(b.str("folder").unwrap(), "x");
        assert!(!b.bool("a").unwrap());
        assert_eq!(b.opt_int("n").unwrap(), Some(3));
        assert!(b.int("folder").unwrap_err().contains("must be an integer"));
        assert_eq!(
            bind("FS", &call("cd()"), SIG).unwrap_err(),
            "FS.cd() missing 1 required positional argument: 'folder'"
        );
        assert_eq!(bind("FS", &call("cd(x=1)"), SIG).unwrap_err(), "FS.cd() got an unexpected keyword argument 'x'");
        assert_eq!(
            bind("FS", &call("cd('a', folder='b')"), SIG).unwrap_err(),
            "FS.cd() got multiple values for argument 'folder'"
        );
        assert_eq!(
            bind("FS", &call("cd(1, 2, 3, 4)"), SIG).unwrap_err(),
            "FS.cd() takes from 2 to 4 positional arguments but 5 were given"
        );
        assert_eq!(
            bind("FS", &call("pwd(1)"), &[]).unwrap_err(),
            "FS.pwd() takes 1 positional argument but 2 were given"
        );
        // Keyword problems are reported before surplus positional arguments.
        assert_eq!(
            bind("FS", &call("cd(1, 2, 3, 4, x=1)"), SIG).unwrap_err(),
            "FS.cd() got an unexpected keyword argument 'x'"
        );
        const TWO: &[Param] = &[req("a"), req("b"), req("c")];
        assert_eq!(
            bind("M", &call("f()"), TWO).unwrap_err(),
            "M.f() missing 3 required positional arguments: 'a', 'b', and 'c'"
        );
    }
}
