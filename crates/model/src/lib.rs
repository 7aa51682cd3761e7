//! Qwen2 / Qwen2.5 and Qwen3, exact to Hugging Face transformers, loaded from a checkpoint directory
//! as downloaded: `config.json` and safetensors weights (bf16, f16 or f32; single file or
//! sharded). Activations are f32; weights stay in their stored dtype and are widened on the
//! fly. Linear layers can multiply in bf16 instead (`Ctx::with_matmul_dtype` in training,
//! `KvCache::set_matmul_dtype` in inference), as autocast and vLLM do. The KV cache belongs
//! to the caller and is paged: fixed-size blocks shared
//! copy-on-write between the rollouts of a prompt.

mod config;
mod error;
mod kv_cache;
mod lora;
mod qwen2;
mod weights;

pub use config::{Family, Qwen2Config, RopeScaling, Yarn};
pub use error::{Error, Result};
pub use kv_cache::{DEFAULT_BLOCK_SIZE, DecodeSteps, KvCache, KvUsage, MAX_GRAPH_BATCH, graph_batch_size};
pub use lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, LORA_MODULES, LoraSpec};
pub use qwen2::{Qwen2, Rows, SeqInput};
pub use weights::{RandomWeights, WeightSource, Weights, save_safetensors};
