//! BFCL v3 multi-turn function calling, natively: the environments, the call parser, and
//! BFCL's way of scoring a multi-turn episode.
//!
//! - [`value`]: Python values with Python's `==`, `repr`, `str` and `json.dumps`, so
//!   results and state compare exactly as BFCL's checker compares them.
//! - [`call`]: function calls parsed (never evaluated) from BFCL's Python-call syntax or
//!   from JSON.
//! - [`env`](mod@env): the [`Environment`] trait and Python-style argument binding.
//! - [`envs`]: the eight classes (`GorillaFileSystem`, `MathAPI`, `MessageAPI`,
//!   `TwitterAPI`, `TicketAPI`, `TradingBot`, `TravelAPI`, `VehicleControlAPI`).
//! - [`pyrandom`]: CPython's Mersenne Twister, for the IDs the environments draw.

pub mod call;
pub mod checker;
pub mod docs;
pub mod env;
pub mod envs;
pub mod pyrandom;
pub mod session;
pub mod value;

pub use call::{Call, ParseError, parse_calls};
pub use docs::{CallError, DocError, FunctionDoc, ToolSet};
pub use env::{Environment, LongContext};
pub use envs::new_environment;
pub use session::Session;
pub use value::{Dict, Key, Value};
