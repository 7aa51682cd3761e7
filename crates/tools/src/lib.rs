//! Tools a model calls in the middle of generation: a sandboxed Python interpreter, a
//! calculator, and the tools of any MCP server ([`McpTool`]).
//!
//! The rollout engine stops a sequence when it closes a tool's tag (`</python>`), hands
//! the text between the tags to the tool as a [`ToolCall`], and forces the tool's output
//! back into the sequence (loss mask 0). Tools run on their own threads, so one slow call
//! does not stall the batch: implementations must be `Send + Sync`, and `execute` may
//! block.

use serde::{Deserialize, Serialize};

mod calculator;
pub mod mcp;
mod python;
pub mod sandbox;
pub mod workers;

pub use calculator::Calculator;
pub use mcp::{McpConfig, McpError, McpSession, McpSessions, McpTool};
pub use python::PythonTool;
pub use sandbox::{Isolation, SandboxConfig, SandboxError, SandboxKind};

/// One call: the text between the opening and closing tag, and the rollout it came from
/// (so a tool can keep per-rollout state, as ARTIST's Python sessions do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ToolCall {
    pub text: String,
    /// Unique per rollout for the life of the process.
    pub rollout: u64,
    /// The rollout's prompt: its index in the prompts of the engine run that made it (a
    /// tool whose state belongs to a prompt, such as a BFCL episode, looks it up here).
    #[serde(default)]
    pub prompt: usize,
    /// The rollout's place in its prompt's group (0 to G - 1).
    #[serde(default)]
    pub sample: usize,
}

/// What a call gave back. `output` is what the model will read (an error is explained
/// there in words, never raised); `success` feeds the tool-execution reward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ToolResult {
    pub output: String,
    pub success: bool,
    /// The wall-clock limit ended the call.
    pub timed_out: bool,
    /// The output was longer than the cap and was cut (a marker in `output` says so).
    pub truncated: bool,
    pub elapsed_ms: u64,
}

pub trait Tool: Send + Sync {
    /// A short name (`python`, `calculator`).
    fn name(&self) -> &str;
    /// The tag whose contents are calls to this tool: `python` answers `<python>...</python>`.
    fn tag(&self) -> &str;
    /// Runs one call. Never panics on any input.
    fn execute(&self, call: &ToolCall) -> ToolResult;
    /// The rollout is over: release anything kept for it.
    fn end_rollout(&self, _rollout: u64) {}
    /// What the rollout left behind, for its grading, once [`Tool::end_rollout`] was called
    /// for it (an environment's final state; waits for it if it is still being read); asked
    /// once per rollout. `None`: nothing (the default).
    fn final_state(&self, _rollout: u64) -> Option<String> {
        None
    }
    /// What it offers, for the system prompt (an MCP server's tools as a JSON list);
    /// `None`: the prompt describes the tool by its tag alone.
    fn describe(&self) -> Option<String> {
        None
    }
}
