//! `MessageAPI`: a workspace of users who log in, send messages to each other's IDs,
//! and search, list, count and delete the messages in one shared inbox.
//!
//! The inbox is a list of one-entry dicts `{receiver_id: text}`. Sending draws a message
//! ID from `random.Random(random_seed)` (default seed 200191), redrawing any ID already in
//! `generated_ids`. A class listed without a scenario starts from a fixed default
//! workspace (four users, three messages).

use crate::call::Call;
use crate::env::{Environment, LongContext, Param, req, scenario_field};
use crate::pyrandom::PyRandom;
use crate::value::{Dict, Key, Value};
use crate::{dict, vdict};

const CLASS: &str = "MessageAPI";
const DEFAULT_SEED: i64 = 200_191;

const FUNCTIONS: &[&str] = &[
    "list_users",
    "get_user_id",
    "message_login",
    "message_get_login_status",
    "send_message",
    "delete_message",
    "view_messages_sent",
    "add_contact",
    "search_messages",
    "get_message_stats",
];

/// A fresh `MessageAPI`, in its default state.
pub fn new() -> Option<Box<dyn Environment>> {
    Some(Box::new(MessageApi::default()))
}

/// The `MessageAPI` state; attributes hold Python values as the scenario gave them.
#[derive(Debug, Clone)]
pub struct MessageApi {
    rng: PyRandom,
    generated_ids: Value,
    user_count: Value,
    user_map: Dict,
    inbox: Vec<Value>,
    message_count: Value,
    current_user: Value,
}

impl Default for MessageApi {
    fn default() -> Self {
        let mut api = MessageApi {
            rng: PyRandom::new(DEFAULT_SEED),
            generated_ids: Value::Set(Vec::new()),
            user_count: Value::Int(0),
            user_map: Dict::new(),
            inbox: Vec::new(),
            message_count: Value::Int(0),
            current_user: Value::None,
        };
        api.load_scenario(&Dict::new(), None).expect("the default scenario loads");
        api
    }
}

/// The built-in workspace used for any attribute the scenario lacks.
fn default_user_map() -> Dict {
    dict! { "Alice" => "USR001", "Bob" => "USR002", "Catherine" => "USR003", "Daniel" => "USR004" }
}

fn default_inbox() -> Vec<Value> {
    vec![
        vdict! { "USR002" => "My name is Alice. I want to connect." },
        vdict! { "USR003" => "Could you upload the file?" },
        vdict! { "USR004" => "Could you upload the file?" },
    ]
}

/// The dict key Python would look `v` up by: `Ok(None)` when `v` is hashable but can equal
/// no `str` or `int` key, `Err` (Python's `TypeError`) when it is unhashable.
pub(crate) fn py_key(v: &Value) -> Result<Option<Key>, String> {
    Ok(match v {
        Value::Str(s) => Some(Key::Str(s.clone())),
        Value::Int(i) => Some(Key::Int(*i)),
        Value::Bool(b) => Some(Key::Int(*b as i64)),
        Value::Float(x) if x.fract() == 0.0 && x.abs() < 9.2e18 => Some(Key::Int(*x as i64)),
        Value::List(_) | Value::Dict(_) | Value::Set(_) => {
            return Err(format!("unhashable type: '{}'", v.type_name()));
        }
        _ => None,
    })
}

/// A key under which `v` can be stored (`Err` for the values this port cannot key by).
pub(crate) fn py_store_key(v: &Value) -> Result<Key, String> {
    py_key(v)?.ok_or_else(|| format!("cannot use a {} value as a dict key", v.type_name()))
}

/// `s.lower()`, with Python's `AttributeError` for a non-string.
pub(crate) fn py_lower(v: &Value) -> Result<String, String> {
    match v {
        Value::Str(s) => Ok(s.to_lowercase()),
        other => Err(format!("'{}' object has no attribute 'lower'", other.type_name())),
    }
}

/// `x in container` for a list, tuple, set or dict (its keys).
pub(crate) fn py_contains(container: &Value, x: &Value) -> Result<bool, String> {
    match container {
        Value::List(v) | Value::Tuple(v) | Value::Set(v) => Ok(v.contains(x)),
        Value::Dict(d) => Ok(py_key(x)?.is_some_and(|k| d.contains_key(&k))),
        Value::Str(s) => match x {
            Value::Str(sub) => Ok(s.contains(sub.as_str())),
            other => Err(format!("'in <string>' requires string as left operand, not {}", other.type_name())),
        },
        other => Err(format!("argument of type '{}' is not iterable", other.type_name())),
    }
}

/// `x += 1` on an `int` or `float`.
pub(crate) fn py_increment(x: &Value) -> Result<Value, String> {
    match x {
        Value::Int(i) => Ok(Value::Int(i + 1)),
        Value::Bool(b) => Ok(Value::Int(*b as i64 + 1)),
        Value::Float(f) => Ok(Value::Float(f + 1.0)),
        other => Err(format!("unsupported operand type(s) for +=: '{}' and 'int'", other.type_name())),
    }
}

/// `str.zfill(width)`: zeros after any leading sign, up to `width` characters.
fn zfill(s: &str, width: usize) -> String {
    let len = s.chars().count();
    if len >= width {
        return s.to_owned();
    }
    let pad = "0".repeat(width - len);
    match s.chars().next() {
        Some(sign @ ('+' | '-')) => format!("{sign}{pad}{}", &s[1..]),
        _ => format!("{pad}{s}"),
    }
}

/// `list(message.items())[0]` for one inbox entry: its receiver and text.
fn first_item(message: &Value) -> Result<(&Key, &Value), String> {
    match message {
        Value::Dict(d) => d.first().ok_or_else(|| "list index out of range".to_owned()),
        other => Err(format!("'{}' object has no attribute 'items'", other.type_name())),
    }
}

fn not_logged_in() -> Value {
    vdict! { "error" => "No user is currently logged in." }
}

const NO_ARGS: &[Param] = &[];
const SIG_USER: &[Param] = &[req("user")];
const SIG_USER_ID: &[Param] = &[req("user_id")];
const SIG_SEND: &[Param] = &[req("receiver_id"), req("message")];
const SIG_RECEIVER: &[Param] = &[req("receiver_id")];
const SIG_USER_NAME: &[Param] = &[req("user_name")];
const SIG_KEYWORD: &[Param] = &[req("keyword")];

impl MessageApi {
    fn logged_in(&self) -> bool {
        self.current_user.truthy()
    }

    fn user_ids(&self) -> impl Iterator<Item = &Value> {
        self.user_map.values()
    }

    /// Draws a message ID not yet in `generated_ids` and records it.
    fn generate_id(&mut self) -> Result<Value, String> {
        let mut id = self.rng.randint(10000, 99999);
        while py_contains(&self.generated_ids, &Value::Int(id))? {
            id = self.rng.randint(10000, 99999);
        }
        match &mut self.generated_ids {
            Value::Set(members) => members.push(Value::Int(id)),
            other => return Err(format!("'{}' object has no attribute 'add'", other.type_name())),
        }
        Ok(vdict! { "new_id" => id })
    }

    fn list_users(&self) -> Value {
        let users: Vec<Value> = self.user_map.keys().map(Key::to_value).collect();
        vdict! { "user_list" => users }
    }

    fn get_user_id(&self, user: &Value) -> Result<Value, String> {
        match py_key(user)?.and_then(|k| self.user_map.get(&k)) {
            Some(id) => Ok(vdict! { "user_id" => id.clone() }),
            None => Ok(vdict! { "error" => format!("User '{}' not found in the workspace.", user.py_str()) }),
        }
    }

    fn message_login(&mut self, user_id: &Value) -> Value {
        if !self.user_ids().any(|id| id == user_id) {
            return vdict! { "login_status" => false, "message" => format!("User ID '{}' not found.", user_id.py_str()) };
        }
        self.current_user = user_id.clone();
        vdict! { "login_status" => true, "message" => format!("User '{}' logged in successfully.", user_id.py_str()) }
    }

    fn send_message(&mut self, receiver_id: &Value, message: &Value) -> Result<Value, String> {
        if !self.logged_in() {
            return Ok(not_logged_in());
        }
        if !self.user_ids().any(|id| id == receiver_id) {
            return Ok(vdict! { "error" => format!("Receiver ID '{}' not found.", receiver_id.py_str()) });
        }
        let message_id = self.generate_id()?;
        let mut entry = Dict::new();
        entry.insert(py_store_key(receiver_id)?, message.clone());
        self.inbox.push(Value::Dict(entry));
        self.message_count = py_increment(&self.message_count)?;
        Ok(vdict! {
            "sent_status" => true,
            "message_id" => message_id,
            "message" => format!("Message sent to '{}' successfully.", receiver_id.py_str()),
        })
    }

    fn delete_message(&mut self, receiver_id: &Value) -> Result<Value, String> {
        if !self.logged_in() {
            return Ok(not_logged_in());
        }
        let mut found = None;
        for message in self.inbox.iter().rev() {
            let (receiver, _) = first_item(message)?;
            if receiver.to_value() == *receiver_id {
                found = Some((receiver.to_value(), message.clone()));
                break;
            }
        }
        let Some((receiver, message)) = found else {
            return Ok(vdict! { "error" => format!("Receiver ID {} not found.", receiver_id.py_str()) });
        };
        // `list.remove` drops the first entry equal to the one found, not necessarily it.
        let pos = self.inbox.iter().position(|m| *m == message).expect("the entry is in the inbox");
        self.inbox.remove(pos);
        Ok(vdict! {
            "deleted_status" => true,
            "receiver_id" => receiver,
            "message" => format!("Receiver {}'s latest message deleted successfully.", receiver_id.py_str()),
        })
    }

    fn view_messages_sent(&self) -> Result<Value, String> {
        if !self.logged_in() {
            return Ok(not_logged_in());
        }
        let mut sent = Dict::new();
        for message in &self.inbox {
            let (receiver, content) = first_item(message)?;
            match sent.get_mut(receiver) {
                Some(Value::List(list)) => list.push(content.clone()),
                _ => {
                    sent.insert(receiver.clone(), Value::List(vec![content.clone()]));
                }
            }
        }
        Ok(vdict! { "messages" => Value::Dict(sent) })
    }

    fn add_contact(&mut self, user_name: &Value) -> Result<Value, String> {
        if py_key(user_name)?.is_some_and(|k| self.user_map.contains_key(&k)) {
            return Ok(vdict! { "error" => format!("User name '{}' already exists.", user_name.py_str()) });
        }
        self.user_count = py_increment(&self.user_count)?;
        let user_id = format!("USR{}", zfill(&self.user_count.py_str(), 3));
        if self.user_ids().any(|id| id.as_str() == Some(user_id.as_str())) {
            return Ok(vdict! { "error" => format!("User ID '{user_id}' already exists.") });
        }
        self.user_map.insert(py_store_key(user_name)?, Value::from(&user_id));
        Ok(vdict! {
            "added_status" => true,
            "user_id" => user_id,
            "message" => format!("Contact '{}' added successfully.", user_name.py_str()),
        })
    }

    fn search_messages(&self, keyword: &Value) -> Result<Value, String> {
        if !self.logged_in() {
            return Ok(not_logged_in());
        }
        let keyword = py_lower(keyword)?;
        let mut results = Vec::new();
        for message in &self.inbox {
            let (receiver, content) = first_item(message)?;
            if py_lower(content)?.contains(&keyword) {
                results.push(vdict! { "receiver_id" => receiver.to_value(), "message" => content.clone() });
            }
        }
        Ok(vdict! { "results" => results })
    }

    fn get_message_stats(&self) -> Result<Value, String> {
        if !self.logged_in() {
            return Ok(not_logged_in());
        }
        let mut received = 0i64;
        let mut contacts: Vec<&Key> = Vec::new();
        for message in &self.inbox {
            let (receiver, _) = first_item(message)?;
            received += 1;
            if !contacts.contains(&receiver) {
                contacts.push(receiver);
            }
        }
        Ok(vdict! { "stats" => vdict! { "received_count" => received, "total_contacts" => contacts.len() } })
    }
}

impl Environment for MessageApi {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn load_scenario(&mut self, scenario: &Dict, _long_context: Option<&LongContext>) -> Result<(), String> {
        let field = |key: &str, default: Value| scenario_field(scenario, key).cloned().unwrap_or(default);
        self.rng = match field("random_seed", Value::Int(DEFAULT_SEED)) {
            Value::Int(seed) => PyRandom::new(seed),
            Value::Bool(b) => PyRandom::new(b as i64),
            other => return Err(format!("random_seed must be an integer, got {}", other.type_name())),
        };
        self.generated_ids = field("generated_ids", Value::Set(Vec::new()));
        self.user_count = field("user_count", Value::Int(4));
        self.user_map = match field("user_map", Value::Dict(default_user_map())) {
            Value::Dict(d) => d,
            other => return Err(format!("user_map must be a dict, got {}", other.type_name())),
        };
        self.inbox = match field("inbox", Value::List(default_inbox())) {
            Value::List(v) => v,
            other => return Err(format!("inbox must be a list, got {}", other.type_name())),
        };
        self.message_count = field("message_count", Value::Int(3));
        self.current_user = field("current_user", Value::None);
        Ok(())
    }

    fn functions(&self) -> &'static [&'static str] {
        FUNCTIONS
    }

    fn call(&mut self, call: &Call) -> Result<Value, String> {
        match call.name.as_str() {
            "list_users" => {
                crate::env::bind(CLASS, call, NO_ARGS)?;
                Ok(self.list_users())
            }
            "get_user_id" => {
                let b = crate::env::bind(CLASS, call, SIG_USER)?;
                self.get_user_id(b.get("user"))
            }
            "message_login" => {
                let b = crate::env::bind(CLASS, call, SIG_USER_ID)?;
                Ok(self.message_login(b.get("user_id")))
            }
            "message_get_login_status" => {
                crate::env::bind(CLASS, call, NO_ARGS)?;
                Ok(vdict! { "login_status" => self.logged_in() })
            }
            "send_message" => {
                let b = crate::env::bind(CLASS, call, SIG_SEND)?;
                self.send_message(b.get("receiver_id"), b.get("message"))
            }
            "delete_message" => {
                let b = crate::env::bind(CLASS, call, SIG_RECEIVER)?;
                self.delete_message(b.get("receiver_id"))
            }
            "view_messages_sent" => {
                crate::env::bind(CLASS, call, NO_ARGS)?;
                self.view_messages_sent()
            }
            "add_contact" => {
                let b = crate::env::bind(CLASS, call, SIG_USER_NAME)?;
                self.add_contact(b.get("user_name"))
            }
            "search_messages" => {
                let b = crate::env::bind(CLASS, call, SIG_KEYWORD)?;
                self.search_messages(b.get("keyword"))
            }
            "get_message_stats" => {
                crate::env::bind(CLASS, call, NO_ARGS)?;
                self.get_message_stats()
            }
            other => Err(format!("'{CLASS}' object has no attribute '{other}'")),
        }
    }

    fn state(&self) -> Dict {
        dict! {
            "generated_ids" => self.generated_ids.clone(),
            "user_count" => self.user_count.clone(),
            "user_map" => Value::Dict(self.user_map.clone()),
            "inbox" => Value::List(self.inbox.clone()),
            "message_count" => self.message_count.clone(),
            "current_user" => self.current_user.clone(),
        }
    }

    fn box_clone(&self) -> Box<dyn Environment> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::parse_calls;

    fn run(api: &mut MessageApi, text: &str) -> String {
        let call = parse_calls(text).unwrap().remove(0);
        match api.call(&call) {
            Ok(v) => v.to_result_string(),
            Err(e) => format!("Error during execution: {e}"),
        }
    }

    fn loaded(json: &str) -> MessageApi {
        let mut api = MessageApi::default();
        let scenario = Value::from_json(&serde_json::from_str(json).unwrap());
        api.load_scenario(scenario.as_dict().unwrap(), None).unwrap();
        api
    }

    #[test]
    fn default_state_matches_python() {
        let api = MessageApi::default();
        assert_eq!(
            Value::Dict(api.state()).repr(),
            "{'generated_ids': set(), 'user_count': 4, 'user_map': {'Alice': 'USR001', 'Bob': 'USR002', \
             'Catherine': 'USR003', 'Daniel': 'USR004'}, 'inbox': [{'USR002': 'My name is Alice. I want to connect.'}, \
             {'USR003': 'Could you upload the file?'}, {'USR004': 'Could you upload the file?'}], \
             'message_count': 3, 'current_user': None}"
        );
    }

    #[test]
    fn send_draws_ids_from_the_seed() {
        // Python: random.Random(200191) gives the IDs below for three sends.
        let mut api = MessageApi::default();
        assert_eq!(
            run(&mut api, "send_message(receiver_id='USR002', message='hi')"),
            r#"{"error": "No user is currently logged in."}"#
        );
        assert_eq!(
            run(&mut api, "message_login(user_id='USR009')"),
            r#"{"login_status": false, "message": "User ID 'USR009' not found."}"#
        );
        assert_eq!(
            run(&mut api, "message_login(user_id='USR001')"),
            r#"{"login_status": true, "message": "User 'USR001' logged in successfully."}"#
        );
        assert_eq!(
            run(&mut api, "send_message(receiver_id='USR002', message='hi')"),
            r#"{"sent_status": true, "message_id": {"new_id": 67410}, "message": "Message sent to 'USR002' successfully."}"#
        );
        assert_eq!(
            run(&mut api, "send_message(receiver_id='USR003', message='yo')"),
            r#"{"sent_status": true, "message_id": {"new_id": 41772}, "message": "Message sent to 'USR003' successfully."}"#
        );
        assert_eq!(
            run(&mut api, "send_message(receiver_id='USR099', message='x')"),
            r#"{"error": "Receiver ID 'USR099' not found."}"#
        );
        assert_eq!(api.state()[&Key::from("message_count")], Value::Int(5));
        assert_eq!(api.state()[&Key::from("generated_ids")], Value::Set(vec![Value::Int(41772), Value::Int(67410)]));
    }

    #[test]
    fn delete_removes_the_first_equal_entry() {
        let mut api = loaded(
            r#"{"current_user": "USR001", "user_map": {"A": "USR001", "B": "USR002"},
                "inbox": [{"USR002": "x"}, {"USR001": "y"}, {"USR002": "x"}, {"USR001": "z"}]}"#,
        );
        assert_eq!(
            run(&mut api, "delete_message(receiver_id='USR002')"),
            r#"{"deleted_status": true, "receiver_id": "USR002", "message": "Receiver USR002's latest message deleted successfully."}"#
        );
        assert_eq!(Value::List(api.inbox.clone()).repr(), "[{'USR001': 'y'}, {'USR002': 'x'}, {'USR001': 'z'}]");
        assert_eq!(
            run(&mut api, "delete_message(receiver_id='USR007')"),
            r#"{"error": "Receiver ID USR007 not found."}"#
        );
        assert_eq!(run(&mut api, "view_messages_sent()"), r#"{"messages": {"USR001": ["y", "z"], "USR002": ["x"]}}"#);
        assert_eq!(run(&mut api, "get_message_stats()"), r#"{"stats": {"received_count": 3, "total_contacts": 2}}"#);
        assert_eq!(
            run(&mut api, "search_messages(keyword='Y')"),
            r#"{"results": [{"receiver_id": "USR001", "message": "y"}]}"#
        );
    }

    #[test]
    fn contacts_and_lookups() {
        let mut api = MessageApi::default();
        assert_eq!(run(&mut api, "list_users()"), r#"{"user_list": ["Alice", "Bob", "Catherine", "Daniel"]}"#);
        assert_eq!(run(&mut api, "get_user_id(user='Bob')"), r#"{"user_id": "USR002"}"#);
        assert_eq!(run(&mut api, "get_user_id(user='Zed')"), r#"{"error": "User 'Zed' not found in the workspace."}"#);
        assert_eq!(run(&mut api, "add_contact(user_name='Bob')"), r#"{"error": "User name 'Bob' already exists."}"#);
        assert_eq!(
            run(&mut api, "add_contact(user_name='Eve')"),
            r#"{"added_status": true, "user_id": "USR005", "message": "Contact 'Eve' added successfully."}"#
        );
        assert_eq!(run(&mut api, "message_get_login_status()"), r#"{"login_status": false}"#);
        assert_eq!(run(&mut api, "view_messages_sent()"), r#"{"error": "No user is currently logged in."}"#);
        assert_eq!(
            run(&mut api, "get_user_id()"),
            "Error during execution: MessageAPI.get_user_id() missing 1 required positional argument: 'user'"
        );
    }

    #[test]
    fn add_contact_collision_still_counts() {
        let mut api = loaded(r#"{"user_count": 1, "user_map": {"A": "USR002"}}"#);
        assert_eq!(run(&mut api, "add_contact(user_name='B')"), r#"{"error": "User ID 'USR002' already exists."}"#);
        assert_eq!(api.user_count, Value::Int(2));
        assert_eq!(zfill("-5", 3), "-05");
        assert_eq!(zfill("1234", 3), "1234");
    }

    #[test]
    fn generated_ids_as_a_list_cannot_grow() {
        let mut api = loaded(r#"{"current_user": "USR001", "generated_ids": [1]}"#);
        assert_eq!(
            run(&mut api, "send_message(receiver_id='USR002', message='hi')"),
            "Error during execution: 'list' object has no attribute 'add'"
        );
    }
}
