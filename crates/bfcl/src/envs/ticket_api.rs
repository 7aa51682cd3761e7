//! `TicketAPI`: a support-ticket queue with a logged-in user.
//!
//! Tickets are kept as the Python dicts they are (a scenario's tickets keep their own keys
//! and key order; a created ticket has `id, title, description, status, priority,
//! created_by`, and `resolution` is appended when a ticket is resolved), so results print
//! exactly as upstream's `json.dumps`/`str` print them.
//!
//! One known difference: when `edit_ticket` gets several invalid fields, upstream lists
//! them in the iteration order of a Python `set` of strings, which depends on the
//! process's hash seed; they are listed here in the order given.

use crate::call::Call;
use crate::env::{Default, Environment, LongContext, Param, bind, opt, req, scenario_field};
use crate::value::{Dict, Key, Value};
use crate::{dict, vdict};

const CLASS: &str = "TicketAPI";

const FUNCTIONS: &[&str] = &[
    "create_ticket",
    "get_ticket",
    "close_ticket",
    "resolve_ticket",
    "edit_ticket",
    "ticket_login",
    "ticket_get_login_status",
    "logout",
    "get_user_tickets",
];

/// A fresh `TicketAPI`.
pub fn new() -> Option<Box<dyn Environment>> {
    Some(Box::new(TicketApi::default()))
}

/// BFCL's `TicketAPI`: its three public attributes, as Python values.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketApi {
    /// A list of ticket dicts.
    ticket_queue: Value,
    /// The next ticket id.
    ticket_counter: Value,
    /// The logged-in user name, or `None`.
    current_user: Value,
}

impl std::default::Default for TicketApi {
    /// The built-in default state.
    fn default() -> Self {
        TicketApi { ticket_queue: Value::List(Vec::new()), ticket_counter: Value::Int(1), current_user: Value::None }
    }
}

fn error(msg: String) -> Value {
    vdict! { "error" => msg }
}

/// Python's `d[key]` on a ticket: the `KeyError` message (the key's repr) when missing.
fn item<'a>(ticket: &'a Value, key: &str) -> Result<&'a Value, String> {
    match ticket {
        Value::Dict(d) => d.get(&Key::from(key)).ok_or_else(|| Value::from(key).repr()),
        other => Err(format!("'{}' object is not subscriptable", other.type_name())),
    }
}

/// Python's `a < b` for the priority check: numbers only, else its `TypeError`.
fn less(a: &Value, b: i64) -> Result<bool, String> {
    match a.as_f64() {
        Some(x) => Ok(x < b as f64),
        None => Err(format!("'<' not supported between instances of '{}' and 'int'", a.type_name())),
    }
}

fn greater(a: &Value, b: i64) -> Result<bool, String> {
    match a.as_f64() {
        Some(x) => Ok(x > b as f64),
        None => Err(format!("'>' not supported between instances of '{}' and 'int'", a.type_name())),
    }
}

/// Python's `str.lower()`.
fn lower(v: &Value) -> Result<String, String> {
    match v {
        Value::Str(s) => Ok(s.to_lowercase()),
        other => Err(format!("'{}' object has no attribute 'lower'", other.type_name())),
    }
}

impl TicketApi {
    fn queue(&self) -> Result<&Vec<Value>, String> {
        match &self.ticket_queue {
            Value::List(items) => Ok(items),
            other => Err(format!("'{}' object is not iterable", other.type_name())),
        }
    }

    /// `_find_ticket`: the index of the first ticket whose `id` equals `ticket_id`.
    fn find(&self, ticket_id: &Value) -> Result<Option<usize>, String> {
        for (i, ticket) in self.queue()?.iter().enumerate() {
            if item(ticket, "id")? == ticket_id {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn ticket_mut(&mut self, i: usize) -> &mut Dict {
        match &mut self.ticket_queue {
            Value::List(items) => match &mut items[i] {
                Value::Dict(d) => d,
                _ => unreachable!("found tickets are dicts"),
            },
            _ => unreachable!("found tickets are in a list"),
        }
    }

    fn not_found(ticket_id: &Value) -> Value {
        error(format!("Ticket with ID {} not found.", ticket_id.py_str()))
    }

    fn create_ticket(&mut self, call: &Call) -> Result<Value, String> {
        const SIG: &[Param] = &[req("title"), opt("description", Default::Str("")), opt("priority", Default::Int(1))];
        let b = bind(CLASS, call, SIG)?;
        if !self.current_user.truthy() {
            return Ok(error("User not authenticated. Please log in to create a ticket.".into()));
        }
        let priority = b.get("priority");
        if less(priority, 1)? || greater(priority, 5)? {
            return Ok(error("Invalid priority. Priority must be between 1 and 5.".into()));
        }
        let ticket = vdict! {
            "id" => self.ticket_counter.clone(),
            "title" => b.get("title").clone(),
            "description" => b.get("description").clone(),
            "status" => "Open",
            "priority" => priority.clone(),
            "created_by" => self.current_user.clone(),
        };
        match &mut self.ticket_queue {
            Value::List(items) => items.push(ticket.clone()),
            other => return Err(format!("'{}' object has no attribute 'append'", other.type_name())),
        }
        self.ticket_counter = match &self.ticket_counter {
            Value::Int(i) => Value::Int(i + 1),
            Value::Bool(v) => Value::Int(*v as i64 + 1),
            Value::Float(x) => Value::Float(x + 1.0),
            other => {
                return Err(format!("unsupported operand type(s) for +=: '{}' and 'int'", other.type_name()));
            }
        };
        Ok(ticket)
    }

    fn get_ticket(&mut self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("ticket_id")])?;
        let id = b.get("ticket_id");
        Ok(match self.find(id)? {
            Some(i) => self.queue()?[i].clone(),
            None => Self::not_found(id),
        })
    }

    /// `close_ticket` and `resolve_ticket`.
    fn set_status(&mut self, call: &Call, status: &str) -> Result<Value, String> {
        let resolving = status == "Resolved";
        let b = if resolving {
            bind(CLASS, call, &[req("ticket_id"), req("resolution")])?
        } else {
            bind(CLASS, call, &[req("ticket_id")])?
        };
        let id = b.get("ticket_id");
        let Some(i) = self.find(id)? else {
            return Ok(Self::not_found(id));
        };
        let (verb, state) = if resolving { ("resolved", "resolved") } else { ("closed", "closed") };
        if item(&self.queue()?[i], "status")? == &Value::from(status) {
            return Ok(error(format!("Ticket with ID {} is already {state}.", id.py_str())));
        }
        let ticket = self.ticket_mut(i);
        ticket.insert(Key::from("status"), Value::from(status));
        if resolving {
            ticket.insert(Key::from("resolution"), b.get("resolution").clone());
        }
        Ok(vdict! { "status" => format!("Ticket {} has been {verb} successfully.", id.py_str()) })
    }

    fn edit_ticket(&mut self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("ticket_id"), req("updates")])?;
        let id = b.get("ticket_id");
        let Some(i) = self.find(id)? else {
            return Ok(Self::not_found(id));
        };
        let updates = match b.get("updates") {
            Value::Dict(d) => d.clone(),
            other => return Err(format!("'{}' object has no attribute 'keys'", other.type_name())),
        };
        const VALID: &[&str] = &["title", "description", "status", "priority"];
        let invalid: Vec<&Key> = updates.keys().filter(|k| !k.as_str().is_some_and(|k| VALID.contains(&k))).collect();
        if !invalid.is_empty() {
            let mut names = Vec::new();
            for (n, k) in invalid.iter().enumerate() {
                match k {
                    Key::Str(s) => names.push(s.as_str()),
                    Key::Int(_) => return Err(format!("sequence item {n}: expected str instance, int found")),
                }
            }
            return Ok(error(format!("Invalid fields for update: {}", names.join(", "))));
        }
        let ticket = self.ticket_mut(i);
        for (k, v) in updates {
            if !v.is_none() {
                ticket.insert(k, v);
            }
        }
        Ok(vdict! { "status" => format!("Ticket {} has been updated successfully.", id.py_str()) })
    }

    fn ticket_login(&mut self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[req("username"), req("password")])?;
        if b.get("username").truthy() && b.get("password").truthy() {
            self.current_user = b.get("username").clone();
            return Ok(vdict! { "success" => true });
        }
        Ok(vdict! { "success" => false })
    }

    fn ticket_get_login_status(&mut self, call: &Call) -> Result<Value, String> {
        bind(CLASS, call, &[])?;
        Ok(vdict! { "login_status" => self.current_user.truthy() })
    }

    fn logout(&mut self, call: &Call) -> Result<Value, String> {
        bind(CLASS, call, &[])?;
        if self.current_user.truthy() {
            self.current_user = Value::None;
            return Ok(vdict! { "success" => true });
        }
        Ok(vdict! { "success" => false })
    }

    fn get_user_tickets(&mut self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, &[opt("status", Default::None)])?;
        if !self.current_user.truthy() {
            return Ok(Value::List(vec![vdict! {
                "error" => "User not authenticated. Please log in to view tickets."
            }]));
        }
        let mut tickets = Vec::new();
        for ticket in self.queue()? {
            if item(ticket, "created_by")? == &self.current_user {
                tickets.push(ticket.clone());
            }
        }
        let status = b.get("status");
        if status.truthy() {
            let mut kept = Vec::new();
            for ticket in tickets {
                if lower(item(&ticket, "status")?)? == lower(status)? {
                    kept.push(ticket);
                }
            }
            tickets = kept;
        }
        Ok(Value::List(tickets))
    }
}

impl Environment for TicketApi {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn load_scenario(&mut self, scenario: &Dict, _long_context: Option<&LongContext>) -> Result<(), String> {
        let defaults = TicketApi::default();
        let field = |name: &str, default: Value| scenario_field(scenario, name).cloned().unwrap_or(default);
        self.ticket_queue = field("ticket_queue", defaults.ticket_queue);
        self.ticket_counter = field("ticket_counter", defaults.ticket_counter);
        self.current_user = field("current_user", defaults.current_user);
        Ok(())
    }

    fn functions(&self) -> &'static [&'static str] {
        FUNCTIONS
    }

    fn call(&mut self, call: &Call) -> Result<Value, String> {
        match call.name.as_str() {
            "create_ticket" => self.create_ticket(call),
            "get_ticket" => self.get_ticket(call),
            "close_ticket" => self.set_status(call, "Closed"),
            "resolve_ticket" => self.set_status(call, "Resolved"),
            "edit_ticket" => self.edit_ticket(call),
            "ticket_login" => self.ticket_login(call),
            "ticket_get_login_status" => self.ticket_get_login_status(call),
            "logout" => self.logout(call),
            "get_user_tickets" => self.get_user_tickets(call),
            other => Err(format!("'TicketAPI' object has no attribute '{other}'")),
        }
    }

    fn state(&self) -> Dict {
        dict! {
            "ticket_queue" => self.ticket_queue.clone(),
            "ticket_counter" => self.ticket_counter.clone(),
            "current_user" => self.current_user.clone(),
        }
    }

    fn box_clone(&self) -> Box<dyn Environment> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    //! Expected results recorded from BFCL's Python `TicketAPI`.

    use super::*;
    use crate::call::parse_calls;

    fn run(config: &str, calls: &[(&str, &str)], state: &str) {
        let mut api = TicketApi::default();
        let config: serde_json::Value = serde_json::from_str(config).unwrap();
        let Value::Dict(config) = Value::from_json(&config) else { panic!("config") };
        api.load_scenario(&config, None).unwrap();
        for (text, want) in calls {
            let call = parse_calls(text).unwrap().remove(0);
            let got = match api.call(&call) {
                Ok(v) => v.to_result_string(),
                Err(e) => format!("Error during execution: {e}"),
            };
            assert_eq!(got, *want, "{text}");
        }
        let state: serde_json::Value = serde_json::from_str(state).unwrap();
        assert_eq!(Value::Dict(api.state()), Value::from_json(&state));
    }

    #[test]
    fn default_state_flow() {
        run(
            "{}",
            &[
                ("ticket_get_login_status()", "{\"login_status\": false}"),
                (
                    "create_ticket(title='x')",
                    "{\"error\": \"User not authenticated. Please log in to create a ticket.\"}",
                ),
                ("get_user_tickets()", "[{'error': 'User not authenticated. Please log in to view tickets.'}]"),
                ("logout()", "{\"success\": false}"),
                ("ticket_login(username='alice', password='pw')", "{\"success\": true}"),
                ("ticket_get_login_status()", "{\"login_status\": true}"),
                (
                    "create_ticket(title='Printer', description='Jammed', priority=3)",
                    "{\"id\": 1, \"title\": \"Printer\", \"description\": \"Jammed\", \"status\": \"Open\", \"priority\": 3, \"created_by\": \"alice\"}",
                ),
                (
                    "create_ticket('Net', 'Down', 5)",
                    "{\"id\": 2, \"title\": \"Net\", \"description\": \"Down\", \"status\": \"Open\", \"priority\": 5, \"created_by\": \"alice\"}",
                ),
                (
                    "create_ticket(title='Bad', priority=0)",
                    "{\"error\": \"Invalid priority. Priority must be between 1 and 5.\"}",
                ),
                (
                    "create_ticket(title='Bad', priority=6)",
                    "{\"error\": \"Invalid priority. Priority must be between 1 and 5.\"}",
                ),
                (
                    "get_ticket(ticket_id=1)",
                    "{\"id\": 1, \"title\": \"Printer\", \"description\": \"Jammed\", \"status\": \"Open\", \"priority\": 3, \"created_by\": \"alice\"}",
                ),
                ("get_ticket(ticket_id=9)", "{\"error\": \"Ticket with ID 9 not found.\"}"),
                (
                    "get_user_tickets()",
                    "[{'id': 1, 'title': 'Printer', 'description': 'Jammed', 'status': 'Open', 'priority': 3, 'created_by': 'alice'}, {'id': 2, 'title': 'Net', 'description': 'Down', 'status': 'Open', 'priority': 5, 'created_by': 'alice'}]",
                ),
                (
                    "get_user_tickets(status='open')",
                    "[{'id': 1, 'title': 'Printer', 'description': 'Jammed', 'status': 'Open', 'priority': 3, 'created_by': 'alice'}, {'id': 2, 'title': 'Net', 'description': 'Down', 'status': 'Open', 'priority': 5, 'created_by': 'alice'}]",
                ),
                ("close_ticket(ticket_id=1)", "{\"status\": \"Ticket 1 has been closed successfully.\"}"),
                ("close_ticket(ticket_id=1)", "{\"error\": \"Ticket with ID 1 is already closed.\"}"),
                (
                    "get_user_tickets(status='CLOSED')",
                    "[{'id': 1, 'title': 'Printer', 'description': 'Jammed', 'status': 'Closed', 'priority': 3, 'created_by': 'alice'}]",
                ),
                (
                    "resolve_ticket(ticket_id=2, resolution='Rebooted')",
                    "{\"status\": \"Ticket 2 has been resolved successfully.\"}",
                ),
                (
                    "resolve_ticket(ticket_id=2, resolution='Again')",
                    "{\"error\": \"Ticket with ID 2 is already resolved.\"}",
                ),
                (
                    "get_ticket(ticket_id=2)",
                    "{\"id\": 2, \"title\": \"Net\", \"description\": \"Down\", \"status\": \"Resolved\", \"priority\": 5, \"created_by\": \"alice\", \"resolution\": \"Rebooted\"}",
                ),
                ("logout()", "{\"success\": true}"),
                ("logout()", "{\"success\": false}"),
                ("get_user_tickets()", "[{'error': 'User not authenticated. Please log in to view tickets.'}]"),
            ],
            "{\"ticket_queue\": [{\"id\": 1, \"title\": \"Printer\", \"description\": \"Jammed\", \"status\": \"Closed\", \"priority\": 3, \"created_by\": \"alice\"}, {\"id\": 2, \"title\": \"Net\", \"description\": \"Down\", \"status\": \"Resolved\", \"priority\": 5, \"created_by\": \"alice\", \"resolution\": \"Rebooted\"}], \"ticket_counter\": 3, \"current_user\": null}",
        );
    }

    #[test]
    fn scenario_tickets() {
        run(
            "{\"ticket_queue\": [{\"id\": 7423, \"status\": \"unresolved\", \"description\": \"Minor snag.\"}, {\"id\": 12, \"description\": \"Servers down.\", \"priority\": 3, \"created_by\": \"bob\", \"status\": \"Open\"}], \"ticket_counter\": 13, \"current_user\": \"bob\"}",
            &[
                (
                    "get_ticket(ticket_id=7423)",
                    "{\"id\": 7423, \"status\": \"unresolved\", \"description\": \"Minor snag.\"}",
                ),
                (
                    "resolve_ticket(ticket_id=7423, resolution='Fixed')",
                    "{\"status\": \"Ticket 7423 has been resolved successfully.\"}",
                ),
                (
                    "get_ticket(7423)",
                    "{\"id\": 7423, \"status\": \"Resolved\", \"description\": \"Minor snag.\", \"resolution\": \"Fixed\"}",
                ),
                (
                    "edit_ticket(ticket_id=12, updates={'status': 'Urgent', 'priority': 5})",
                    "{\"status\": \"Ticket 12 has been updated successfully.\"}",
                ),
                (
                    "edit_ticket(ticket_id=12, updates={'title': None, 'description': 'New'})",
                    "{\"status\": \"Ticket 12 has been updated successfully.\"}",
                ),
                (
                    "edit_ticket(ticket_id=12, updates={'owner': 'x'})",
                    "{\"error\": \"Invalid fields for update: owner\"}",
                ),
                ("edit_ticket(ticket_id=99, updates={'status': 'x'})", "{\"error\": \"Ticket with ID 99 not found.\"}"),
                ("get_user_tickets()", "Error during execution: 'created_by'"),
                ("get_user_tickets(status='urgent')", "Error during execution: 'created_by'"),
                (
                    "create_ticket(title='T', priority=2)",
                    "{\"id\": 13, \"title\": \"T\", \"description\": \"\", \"status\": \"Open\", \"priority\": 2, \"created_by\": \"bob\"}",
                ),
                ("close_ticket(ticket_id=13)", "{\"status\": \"Ticket 13 has been closed successfully.\"}"),
                ("get_user_tickets()", "Error during execution: 'created_by'"),
                ("close_ticket(ticket_id='12')", "{\"error\": \"Ticket with ID 12 not found.\"}"),
                (
                    "get_ticket(ticket_id=12.0)",
                    "{\"id\": 12, \"description\": \"New\", \"priority\": 5, \"created_by\": \"bob\", \"status\": \"Urgent\"}",
                ),
            ],
            "{\"ticket_queue\": [{\"id\": 7423, \"status\": \"Resolved\", \"description\": \"Minor snag.\", \"resolution\": \"Fixed\"}, {\"id\": 12, \"description\": \"New\", \"priority\": 5, \"created_by\": \"bob\", \"status\": \"Urgent\"}, {\"id\": 13, \"title\": \"T\", \"description\": \"\", \"status\": \"Closed\", \"priority\": 2, \"created_by\": \"bob\"}], \"ticket_counter\": 14, \"current_user\": \"bob\"}",
        );
    }

    #[test]
    fn missing_keys() {
        run(
            "{\"ticket_queue\": [{\"id\": 1, \"description\": \"no status\"}]}",
            &[
                ("close_ticket(ticket_id=1)", "Error during execution: 'status'"),
                ("ticket_login(username='u', password='p')", "{\"success\": true}"),
                ("get_user_tickets()", "Error during execution: 'created_by'"),
                ("get_ticket(ticket_id=2)", "{\"error\": \"Ticket with ID 2 not found.\"}"),
                ("ticket_login(username='', password='p')", "{\"success\": false}"),
                ("ticket_get_login_status()", "{\"login_status\": true}"),
            ],
            "{\"ticket_queue\": [{\"id\": 1, \"description\": \"no status\"}], \"ticket_counter\": 1, \"current_user\": \"u\"}",
        );
    }

    #[test]
    fn bad_arguments() {
        run(
            "{\"current_user\": \"carol\"}",
            &[
                (
                    "create_ticket(title='a', priority='high')",
                    "Error during execution: '<' not supported between instances of 'str' and 'int'",
                ),
                (
                    "create_ticket()",
                    "Error during execution: TicketAPI.create_ticket() missing 1 required positional argument: 'title'",
                ),
                (
                    "get_ticket()",
                    "Error during execution: TicketAPI.get_ticket() missing 1 required positional argument: 'ticket_id'",
                ),
                ("edit_ticket(ticket_id=1, updates={})", "{\"error\": \"Ticket with ID 1 not found.\"}"),
                (
                    "create_ticket(title='a', description='b', priority=1)",
                    "{\"id\": 1, \"title\": \"a\", \"description\": \"b\", \"status\": \"Open\", \"priority\": 1, \"created_by\": \"carol\"}",
                ),
                ("edit_ticket(ticket_id=1, updates={})", "{\"status\": \"Ticket 1 has been updated successfully.\"}"),
                ("edit_ticket(ticket_id=1, updates={'id': 5})", "{\"error\": \"Invalid fields for update: id\"}"),
                ("ticket_login(username='dave', password='')", "{\"success\": false}"),
                ("ticket_get_login_status()", "{\"login_status\": true}"),
                (
                    "create_ticket(title='b', priority=4.5)",
                    "{\"id\": 2, \"title\": \"b\", \"description\": \"\", \"status\": \"Open\", \"priority\": 4.5, \"created_by\": \"carol\"}",
                ),
                (
                    "get_user_tickets(status='Open')",
                    "[{'id': 1, 'title': 'a', 'description': 'b', 'status': 'Open', 'priority': 1, 'created_by': 'carol'}, {'id': 2, 'title': 'b', 'description': '', 'status': 'Open', 'priority': 4.5, 'created_by': 'carol'}]",
                ),
                (
                    "create_ticket('a', 'b', 1, 2)",
                    "Error during execution: TicketAPI.create_ticket() takes from 2 to 4 positional arguments but 5 were given",
                ),
                (
                    "get_user_tickets('a', 'b')",
                    "Error during execution: TicketAPI.get_user_tickets() takes from 1 to 2 positional arguments but 3 were given",
                ),
                (
                    "ticket_login('a', 'b', 'c')",
                    "Error during execution: TicketAPI.ticket_login() takes 3 positional arguments but 4 were given",
                ),
            ],
            "{\"ticket_queue\": [{\"id\": 1, \"title\": \"a\", \"description\": \"b\", \"status\": \"Open\", \"priority\": 1, \"created_by\": \"carol\"}, {\"id\": 2, \"title\": \"b\", \"description\": \"\", \"status\": \"Open\", \"priority\": 4.5, \"created_by\": \"carol\"}], \"ticket_counter\": 3, \"current_user\": \"carol\"}",
        );
    }

    #[test]
    fn filter_by_status() {
        run(
            "{\"ticket_queue\": [{\"id\": 1, \"title\": \"A\", \"status\": \"Open\", \"created_by\": \"bob\"}, {\"id\": 2, \"title\": \"B\", \"status\": \"Urgent\", \"created_by\": \"eve\"}, {\"id\": 3, \"title\": \"C\", \"status\": \"urgent\", \"created_by\": \"bob\"}], \"ticket_counter\": 4}",
            &[
                ("ticket_login(username='bob', password='x')", "{\"success\": true}"),
                (
                    "get_user_tickets(status='URGENT')",
                    "[{'id': 3, 'title': 'C', 'status': 'urgent', 'created_by': 'bob'}]",
                ),
                (
                    "get_user_tickets(status='')",
                    "[{'id': 1, 'title': 'A', 'status': 'Open', 'created_by': 'bob'}, {'id': 3, 'title': 'C', 'status': 'urgent', 'created_by': 'bob'}]",
                ),
                (
                    "get_user_tickets(status=None)",
                    "[{'id': 1, 'title': 'A', 'status': 'Open', 'created_by': 'bob'}, {'id': 3, 'title': 'C', 'status': 'urgent', 'created_by': 'bob'}]",
                ),
                ("get_user_tickets(status='closed')", "[]"),
                ("ticket_login(username='eve', password='y')", "{\"success\": true}"),
                ("get_user_tickets()", "[{'id': 2, 'title': 'B', 'status': 'Urgent', 'created_by': 'eve'}]"),
                (
                    "edit_ticket(ticket_id=3, updates={'title': 'C2', 'status': None})",
                    "{\"status\": \"Ticket 3 has been updated successfully.\"}",
                ),
                (
                    "get_ticket(ticket_id=3)",
                    "{\"id\": 3, \"title\": \"C2\", \"status\": \"urgent\", \"created_by\": \"bob\"}",
                ),
            ],
            "{\"ticket_queue\": [{\"id\": 1, \"title\": \"A\", \"status\": \"Open\", \"created_by\": \"bob\"}, {\"id\": 2, \"title\": \"B\", \"status\": \"Urgent\", \"created_by\": \"eve\"}, {\"id\": 3, \"title\": \"C2\", \"status\": \"urgent\", \"created_by\": \"bob\"}], \"ticket_counter\": 4, \"current_user\": \"eve\"}",
        );
    }

    #[test]
    fn default_state_and_functions() {
        let api = TicketApi::default();
        assert_eq!(api.functions().len(), 9);
        assert_eq!(api.state().len(), 3);
    }
}
