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

/// The dtype a part of the model computes in (config keys `attention_dtype` and
/// `matmul_dtype`, `[rollout] matmul_dtype`; flags `--attention-dtype`, `--matmul-dtype`),
/// or the rollouts' KV cache stores (`[rollout] kv_cache_dtype`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// The activations' own (f32): exact to transformers.
    #[default]
    F32,
    /// Inputs rounded to bf16, sums and outputs in f32 (autocast's choice, less its output
    /// rounding). Attention: queries, keys and values rounded; on a GPU with head dim 64 or
    /// 128, forward and backward run on the tensor cores. Linear layers: activations,
    /// weights and (in backward) output gradients rounded, on a GPU a tensor-core GEMM.
    /// Losses and gradients then agree with f32 to bf16 rounding, and the policy's
    /// logprobs in the loss differ from the sampler's by as much (GRPO's `old_logprobs =
    /// "auto"` then recomputes pi_old).
    Bf16,
}

impl std::str::FromStr for ComputeDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(ComputeDtype::F32),
            "bf16" => Ok(ComputeDtype::Bf16),
            other => Err(format!("compute dtype {other:?} is neither f32 nor bf16")),
        }
    }
}

impl ComputeDtype {
    /// As a storage dtype (f32 or bf16).
    pub fn storage(self) -> artist_tensor::DType {
        self.dtype().unwrap_or(artist_tensor::DType::F32)
    }

    /// What [`artist_autograd::Ctx::with_attention_dtype`] and
    /// [`artist_autograd::Ctx::with_matmul_dtype`] take.
    pub fn dtype(self) -> Option<artist_tensor::DType> {
        match self {
            ComputeDtype::F32 => None,
            ComputeDtype::Bf16 => Some(artist_tensor::DType::BF16),
        }
    }
}
