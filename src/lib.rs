//! artist: agentic reasoning and tool integration trained with GRPO, in Rust.
//!
//! The workspace crates do the work; this crate holds the binaries (`train`, `generate`,
//! `score`, `eval`, `tool`), the end-to-end tests and the benchmarks.
//!
//! ```
//! use artist::tensor::{rope_tables, DType, Device, Tensor};
//! let x = Tensor::from_vec(vec![0.5f32; 2 * 4 * 2 * 8], (2, 4, 2, 8), Device::Cpu)?; // [b, t, heads, head_dim]
//! let (cos, sin) = rope_tables(&[0, 1, 2, 3], 8, 1e6, Device::Cpu)?;
//! let q = x.rope(&cos, &sin)?.transpose(1, 2)?; // [b, heads, t, head_dim], a view
//! let scores = q.matmul(&q.t()?)?.mul_scalar(8f32.powf(-0.5))?;
//! let mask = Tensor::causal_mask(4, 4, Device::Cpu)?;
//! let probs = scores.masked_fill(&mask, f32::NEG_INFINITY)?.softmax(-1)?;
//! assert_eq!(probs.to_dtype(DType::BF16)?.dims(), &[2, 2, 4, 4]);
//! # Ok::<(), artist::tensor::Error>(())
//! ```

pub use artist_autograd as autograd;
pub use artist_model as model;
pub use artist_optim as optim;
pub use artist_tensor as tensor;
pub use artist_train as train;

pub mod bfcl_eval;
pub mod cli;
pub mod pass_k;

/// `--version` of every binary: the package version and the commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ARTIST_GIT_COMMIT"), ")");
