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
pub mod tensorboard;

pub use error::{Error, Result};

/// The dtype a part of the model computes in (config keys `attention_dtype` and
/// `matmul_dtype`, `[rollout] matmul_dtype`; flags `--attention-dtype`, `--matmul-dtype`),
/// or the rollouts' KV cache stores (`[rollout] kv_cache_dtype`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// The default: bf16 where the model is on a GPU (what autocast and vLLM do there: the
    /// tensor cores), f32 on the CPU (exact to transformers). [`ComputeDtype::on`] decides.
    #[default]
    Auto,
    /// The activations' own (f32): exact to transformers.
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
            "auto" => Ok(ComputeDtype::Auto),
            "f32" => Ok(ComputeDtype::F32),
            "bf16" => Ok(ComputeDtype::Bf16),
            other => Err(format!("compute dtype {other:?} is none of auto, f32 and bf16")),
        }
    }
}

impl ComputeDtype {
    /// What this means for a model on `device`: `Auto` is bf16 on a GPU and f32 on the CPU.
    pub fn on(self, device: artist_tensor::Device) -> ComputeDtype {
        match self {
            ComputeDtype::Auto if device.is_cuda() => ComputeDtype::Bf16,
            ComputeDtype::Auto => ComputeDtype::F32,
            other => other,
        }
    }

    /// As a storage dtype (f32 or bf16) on `device`.
    pub fn storage(self, device: artist_tensor::Device) -> artist_tensor::DType {
        self.dtype(device).unwrap_or(artist_tensor::DType::F32)
    }

    /// What [`artist_autograd::Ctx::with_attention_dtype`] and
    /// [`artist_autograd::Ctx::with_matmul_dtype`] take, on `device`.
    pub fn dtype(self, device: artist_tensor::Device) -> Option<artist_tensor::DType> {
        match self.on(device) {
            ComputeDtype::Bf16 => Some(artist_tensor::DType::BF16),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ComputeDtype;
    use artist_tensor::{DType, Device};

    /// `auto`, the default everywhere, is bf16 for a model on a GPU and f32 on the CPU;
    /// explicit choices hold on both.
    #[test]
    fn auto_is_bf16_on_a_gpu_and_f32_on_the_cpu() {
        assert_eq!(ComputeDtype::default(), ComputeDtype::Auto);
        assert_eq!("auto".parse::<ComputeDtype>(), Ok(ComputeDtype::Auto));
        assert!("fp8".parse::<ComputeDtype>().unwrap_err().contains("auto"));
        let (cpu, gpu) = (Device::Cpu, Device::Cuda(0));
        assert_eq!(ComputeDtype::Auto.dtype(cpu), None);
        assert_eq!(ComputeDtype::Auto.dtype(gpu), Some(DType::BF16));
        assert_eq!(ComputeDtype::Auto.storage(gpu), DType::BF16);
        assert_eq!(ComputeDtype::F32.dtype(gpu), None);
        assert_eq!(ComputeDtype::Bf16.dtype(cpu), Some(DType::BF16));
        assert_eq!(crate::sft::SftConfig::default().matmul_dtype.on(gpu), ComputeDtype::Bf16);
        let grpo = crate::grpo::GrpoRunConfig::default();
        assert_eq!(grpo.rollout.kv_cache_dtype.on(gpu), ComputeDtype::Bf16);
        assert_eq!(grpo.attention_dtype.on(cpu), ComputeDtype::F32);
        // Saved as written: a run configured on a GPU resumes with `auto` on the CPU too.
        let text = toml::to_string(&grpo).unwrap();
        assert!(text.contains("matmul_dtype = \"auto\""), "{text}");
    }
}
