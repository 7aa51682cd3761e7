//! One set of environment instances for an episode, and BFCL's call dispatch.

use crate::call::Call;
use crate::env::{Environment, LongContext};
use crate::envs::{STATELESS, new_environment};
use crate::value::{Dict, Key, Value};

/// Names BFCL's harness refuses to run whatever class defines them.
pub const BLOCKED: &[&str] = &["kill", "exit", "quit", "remove", "unlink", "popen", "Popen", "run"];

/// The instances of an entry's `involved_classes`, created once and kept across all its
/// turns (as BFCL keeps them), with calls dispatched by bare method name.
#[derive(Debug, Clone)]
pub struct Session {
    envs: Vec<Box<dyn Environment>>,
}

impl Session {
    /// Creates and loads every involved class from `initial_config` (a JSON object keyed
    /// by class name; a class without an entry starts from its default state).
    pub fn new(
        involved_classes: &[String],
        initial_config: &serde_json::Value,
        long_context: Option<&LongContext>,
    ) -> Result<Session, String> {
        Self::build(involved_classes, initial_config, long_context, false)
    }

    /// As [`Session::new`], but classes that are not available are left out instead of
    /// being an error (used by tests that check one class at a time).
    pub fn new_partial(
        involved_classes: &[String],
        initial_config: &serde_json::Value,
        long_context: Option<&LongContext>,
    ) -> Result<Session, String> {
        Self::build(involved_classes, initial_config, long_context, true)
    }

    fn build(
        involved_classes: &[String],
        initial_config: &serde_json::Value,
        long_context: Option<&LongContext>,
        partial: bool,
    ) -> Result<Session, String> {
        let mut envs = Vec::new();
        for class in involved_classes {
            let Some(mut env) = new_environment(class) else {
                if partial {
                    continue;
                }
                return Err(format!("unknown or unavailable environment class `{class}`"));
            };
            if !STATELESS.contains(&class.as_str()) {
                let scenario = match initial_config.get(class) {
                    None | Some(serde_json::Value::Null) => Dict::new(),
                    Some(json) => match Value::from_json(json) {
                        Value::Dict(d) => d,
                        other => {
                            return Err(format!("initial_config.{class} must be an object, got {}", other.type_name()));
                        }
                    },
                };
                env.load_scenario(&scenario, long_context).map_err(|e| format!("initial_config.{class}: {e}"))?;
            }
            envs.push(env);
        }
        Ok(Session { envs })
    }

    /// The instances, in `involved_classes` order.
    pub fn environments(&self) -> &[Box<dyn Environment>] {
        &self.envs
    }

    /// The instance that defines `function`, if any.
    pub fn owner(&self, function: &str) -> Option<&dyn Environment> {
        self.envs.iter().find(|e| e.functions().contains(&function)).map(|e| e.as_ref())
    }

    /// Runs one call and returns the string BFCL makes of its outcome: the result
    /// (`str` as is, `dict` as JSON, else `str()`), or `Error during execution: <msg>`.
    pub fn execute(&mut self, call: &Call) -> String {
        match self.try_execute(call) {
            Ok(v) => v.to_result_string(),
            Err(msg) => format!("Error during execution: {msg}"),
        }
    }

    /// Runs one call: the value, or the exception's message.
    pub fn try_execute(&mut self, call: &Call) -> Result<Value, String> {
        if BLOCKED.contains(&call.name.as_str()) {
            return Err(format!("Function call {} is not allowed.", call.name));
        }
        let env = self
            .envs
            .iter_mut()
            .find(|e| e.functions().contains(&call.name.as_str()))
            .ok_or_else(|| format!("name '{}' is not defined", call.name))?;
        env.call(call)
    }

    /// Every stateful instance's public attributes, by class name.
    pub fn state(&self) -> Vec<(&'static str, Dict)> {
        self.envs.iter().filter(|e| !STATELESS.contains(&e.class_name())).map(|e| (e.class_name(), e.state())).collect()
    }

    /// BFCL's state check: for each class, the attributes of `reference` whose values
    /// differ here (Python `==`), as `(class, attribute)`.
    pub fn state_differences(&self, reference: &Session) -> Vec<(&'static str, String)> {
        let mine = self.state();
        let mut diffs = Vec::new();
        for (class, theirs) in reference.state() {
            let Some((_, ours)) = mine.iter().find(|(c, _)| *c == class) else {
                diffs.push((class, "<instance missing>".to_owned()));
                continue;
            };
            for (attr, value) in &theirs {
                if ours.get(attr) != Some(value) {
                    let name = match attr {
                        Key::Str(s) => s.clone(),
                        Key::Int(i) => i.to_string(),
                    };
                    diffs.push((class, name));
                }
            }
        }
        diffs
    }
}
