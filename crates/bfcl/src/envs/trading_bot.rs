//! `TradingBot`: not ported yet.

use crate::env::Environment;

/// A fresh `TradingBot`; `None` until the class is ported.
pub fn new() -> Option<Box<dyn Environment>> {
    None
}
