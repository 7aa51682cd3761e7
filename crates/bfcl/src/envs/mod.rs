//! The eight BFCL multi-turn environment classes.
//!
//! Each module holds one class with the behaviour, names, arguments, return values and
//! error messages of BFCL's reference implementation, and its state in the form the
//! checker compares. `new_environment` makes a fresh instance by class name.

use crate::env::Environment;

pub mod gorilla_file_system;
pub mod math_api;
pub mod message_api;
pub mod posting_api;
pub mod ticket_api;
pub mod trading_bot;
pub mod travel_booking;
pub mod vehicle_control;

/// Every class, with the function-doc file BFCL describes it in.
pub const CLASSES: &[(&str, &str)] = &[
    ("GorillaFileSystem", "gorilla_file_system.json"),
    ("MathAPI", "math_api.json"),
    ("MessageAPI", "message_api.json"),
    ("TwitterAPI", "posting_api.json"),
    ("TicketAPI", "ticket_api.json"),
    ("TradingBot", "trading_bot.json"),
    ("TravelAPI", "travel_booking.json"),
    ("VehicleControlAPI", "vehicle_control.json"),
];

/// Classes with no state: BFCL never loads their scenario nor compares their state.
pub const STATELESS: &[&str] = &["MathAPI"];

/// A fresh instance of `class` (before `load_scenario`), or `None` for an unknown class.
pub fn new_environment(class: &str) -> Option<Box<dyn Environment>> {
    match class {
        "GorillaFileSystem" => gorilla_file_system::new(),
        "MathAPI" => math_api::new(),
        "MessageAPI" => message_api::new(),
        "TwitterAPI" => posting_api::new(),
        "TicketAPI" => ticket_api::new(),
        "TradingBot" => trading_bot::new(),
        "TravelAPI" => travel_booking::new(),
        "VehicleControlAPI" => vehicle_control::new(),
        _ => None,
    }
}
