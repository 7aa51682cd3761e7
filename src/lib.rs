//! artist: agentic reasoning and tool integration trained with GRPO, in Rust.
//!
//! The workspace crates do the work; this crate holds the binaries (`train`, and later
//! `generate`, `score`, `eval`), the end-to-end tests and the benchmarks.

pub use artist_tensor as tensor;

/// CUDA C sources under `kernels/`, embedded at build time.
pub mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}
