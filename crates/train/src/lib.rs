//! Training for the artist stack: supervised fine-tuning on JSONL data, the pieces every
//! trainer shares (atomic, resumable checkpoints in Hugging Face format, metrics), and the
//! loss that both SFT and GRPO build on.
//!
//! A run directory holds:
//!
//! ```text
//! RUN_DIR/run_config.json          the run's settings (what --resume continues with)
//! RUN_DIR/metrics.jsonl            one line per optimiser step
//! RUN_DIR/checkpoints/step-00000100/  a Hugging Face model directory + optimizer.safetensors
//!                                     + trainer_state.json
//! RUN_DIR/checkpoints/latest       the name of the newest complete checkpoint
//! RUN_DIR/final/                   the trained model, a Hugging Face model directory
//! ```

pub mod checkpoint;
pub mod data;
pub mod demo;
mod dp;
mod error;
pub mod fc;
pub mod grpo;
pub mod metrics;
pub mod plots;
pub mod sft;

pub use error::{Error, Result};
