//! `TravelAPI`: not ported yet.

use crate::env::Environment;

/// A fresh `TravelAPI`; `None` until the class is ported.
pub fn new() -> Option<Box<dyn Environment>> {
    None
}
