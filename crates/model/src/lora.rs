//! Low-rank adapters (LoRA, Hu et al. 2021) on the decoder's projections, in PEFT's form:
//! a targeted projection computes `x W^T + b + s (x A^T) B^T` with `A: [r, in]`,
//! `B: [out, r]` and `s = alpha / r` (`alpha / sqrt(r)` with rsLoRA), the base weights
//! frozen. Fresh adapters start as PEFT's do (`A` uniform in `±1/sqrt(in)`, Kaiming's
//! bound for its default slope, and `B` zero), so the model is unchanged until trained.
//! Adapters are read and written as PEFT's `adapter_config.json` and
//! `adapter_model.safetensors`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The projections an adapter can target, by their Hugging Face module names.
pub const LORA_MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// PEFT's adapter file names.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Which projections get adapters, their rank and scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSpec {
    /// The adapters' rank r (0: no adapters).
    pub rank: usize,
    /// The scale's numerator: updates are `alpha / r` times `B A`.
    pub alpha: f64,
    /// The projections adapted, as PEFT names them: module names among [`LORA_MODULES`]
    /// (every layer's), module paths ending in one (`model.layers.3.self_attn.q_proj`: one
    /// layer's), or `"all-linear"` for every one.
    pub target_modules: Vec<String>,
    /// rsLoRA's scale `alpha / sqrt(r)` (PEFT's `use_rslora`).
    pub rslora: bool,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec { rank: 0, alpha: 16.0, target_modules: vec!["all-linear".into()], rslora: false }
    }
}

impl LoraSpec {
    /// The factor of `B A` in the update.
    pub fn scale(&self) -> f32 {
        let r = self.rank as f64;
        (if self.rslora { self.alpha / r.sqrt() } else { self.alpha / r }) as f32
    }

    /// Whether the projection at module path `path` (`model.layers.L.self_attn.q_proj`)
    /// gets an adapter: PEFT's rule for a list, a name equal to the path or ending it
    /// after a dot.
    pub fn targets(&self, path: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| t == "all-linear" || path == t || path.strip_suffix(t.as_str()).is_some_and(|p| p.ends_with('.')))
    }

    /// Checks the rank, the scale and the module names.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Input("lora.rank must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::Input(format!("lora.alpha must be a finite number above 0, got {}", self.alpha)));
        }
        if self.target_modules.is_empty() {
            return Err(Error::Input("lora.target_modules is empty: name projections or \"all-linear\"".into()));
        }
        for t in &self.target_modules {
            let module = t.rsplit('.').next().unwrap_or(t);
            if t != "all-linear" && !LORA_MODULES.contains(&module) {
                return Err(Error::Input(format!(
                    "lora.target_modules: {t:?} is not a projection of Qwen2 (expected \"all-linear\", or names or \
                     module paths ending in one of {})",
                    LORA_MODULES.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// PEFT's `adapter_config.json` for these adapters on `base` (the base model's path).
    pub fn peft_config(&self, base: &str) -> serde_json::Value {
        let modules: Vec<&str> = if self.target_modules.iter().any(|t| t == "all-linear") {
            LORA_MODULES.to_vec()
        } else {
            self.target_modules.iter().map(String::as_str).collect()
        };
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "target_modules": modules,
            "lora_dropout": 0.0,
            "bias": "none",
            "use_rslora": self.rslora,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "modules_to_save": null,
        })
    }

    /// The spec of a PEFT `adapter_config.json`: LoRA without dropout's effect (inference),
    /// biases, saved modules, per-module ranks or DoRA, which are refused by name.
    pub fn from_peft_config(path: &Path) -> Result<LoraSpec> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_path_buf(), source })?;
        let bad = |msg: String| Error::Config { path: path.to_path_buf(), msg };
        if v.get("peft_type").and_then(|t| t.as_str()) != Some("LORA") {
            return Err(bad(format!(
                "peft_type {} is not \"LORA\"",
                v.get("peft_type").unwrap_or(&serde_json::Value::Null)
            )));
        }
        let rank = v.get("r").and_then(|r| r.as_u64()).ok_or_else(|| bad("no integer r".into()))? as usize;
        let alpha = v.get("lora_alpha").and_then(|a| a.as_f64()).ok_or_else(|| bad("no number lora_alpha".into()))?;
        let target_modules: Vec<String> = match v.get("target_modules") {
            // A string is a regular expression to PEFT; only its "all-linear" is read here.
            Some(serde_json::Value::String(s)) if s == "all-linear" => vec![s.clone()],
            Some(serde_json::Value::String(s)) => {
                return Err(bad(format!("target_modules {s:?}: a pattern is not supported (list the modules)")));
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|m| m.as_str().map(String::from).ok_or_else(|| bad("a target module is not a string".into())))
                .collect::<Result<_>>()?,
            _ => return Err(bad("no target_modules".into())),
        };
        for (key, off) in [
            ("bias", serde_json::json!("none")),
            ("lora_bias", serde_json::json!(false)),
            ("use_dora", serde_json::json!(false)),
            ("use_qalora", serde_json::json!(false)),
            ("fan_in_fan_out", serde_json::json!(false)),
        ] {
            if let Some(x) = v.get(key).filter(|x| !x.is_null() && **x != off) {
                return Err(bad(format!("{key} = {x} is not supported (only {off})")));
            }
        }
        for key in [
            "modules_to_save",
            "rank_pattern",
            "alpha_pattern",
            "layers_to_transform",
            "exclude_modules",
            "target_parameters",
            "layer_replication",
            "trainable_token_indices",
        ] {
            let set = v.get(key).is_some_and(|x| !(x.is_null() || x.as_object().is_some_and(|o| o.is_empty())));
            if set {
                return Err(bad(format!("{key} is not supported")));
            }
        }
        let rslora = v.get("use_rslora").and_then(|x| x.as_bool()).unwrap_or(false);
        let spec = LoraSpec { rank, alpha, target_modules, rslora };
        spec.validate().map_err(|e| bad(e.to_string()))?;
        Ok(spec)
    }
}
