//! `config.json` of a Qwen2 / Qwen2.5 or Qwen3 checkpoint, with Hugging Face's field names.
//! Both the classic keys (`rope_theta`, `torch_dtype`) and transformers 5's
//! (`rope_parameters`, `dtype`) are accepted.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// Which of the two decoder families a checkpoint is. They share everything but the
/// attention block: Qwen2 / Qwen2.5 give q/k/v a bias; Qwen3 gives them none (unless
/// `attention_bias` says so, then o too) and normalises each head of q and k (RMSNorm
/// over `head_dim`, `q_norm` / `k_norm`) before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Qwen2,
    Qwen3,
}

impl Family {
    /// `model_type` in `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// The transformers class that loads it.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2Config {
    pub family: Family,
    /// Whether q/k/v have a bias (always for Qwen2; `attention_bias` for Qwen3, where o
    /// has one too).
    pub attention_bias: bool,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// The dtype the checkpoint says its weights are in (`"bfloat16"`, ...), if it says.
    pub dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The file as written: optional fields, both naming styles.
#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    hidden_act: Option<String>,
    #[serde(default)]
    use_sliding_window: bool,
    attention_bias: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

fn default_max_pos() -> usize {
    32768
}

impl Qwen2Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
        Self::from_json(&text, path)
    }

    /// Parses and checks a config; `path` only names the source in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: Raw = serde_json::from_str(text).map_err(|source| Error::Json { path: path.into(), source })?;
        let bad = |msg: String| Error::Config { path: path.into(), msg };
        let family = match raw.model_type.as_deref() {
            Some("qwen2") => Family::Qwen2,
            Some("qwen3") => Family::Qwen3,
            Some(other) => {
                return Err(bad(format!("model_type {other:?} is not supported (expected \"qwen2\" or \"qwen3\")")));
            }
            None => return Err(bad("model_type is missing (expected \"qwen2\" or \"qwen3\")".into())),
        };
        // transformers' Qwen2 gives q/k/v a bias whatever the config says.
        let attention_bias = match family {
            Family::Qwen2 => true,
            Family::Qwen3 => raw.attention_bias.unwrap_or(false),
        };
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(bad(format!("hidden_act {act:?} is not supported (Qwen2 uses \"silu\")")));
        }
        if raw.use_sliding_window {
            return Err(bad("use_sliding_window = true is not supported".into()));
        }
        let rope_type = raw.rope_parameters.as_ref().and_then(|r| r.rope_type.clone()).or_else(|| {
            raw.rope_scaling.as_ref().filter(|v| !v.is_null()).map(|v| {
                v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("unknown").to_string()
            })
        });
        if let Some(t) = rope_type.filter(|t| t != "default") {
            return Err(bad(format!("rope type {t:?} is not supported (only the default RoPE)")));
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(bad(format!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(heads) => raw.hidden_size / heads,
            None => return Err(bad(format!("hidden_size {} is not divisible by {heads} heads", raw.hidden_size))),
        };
        if !head_dim.is_multiple_of(2) {
            return Err(bad(format!("head_dim {head_dim} must be even for RoPE")));
        }
        for (name, v) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
        ] {
            if v == 0 {
                return Err(bad(format!("{name} must be positive")));
            }
        }
        let rope_theta = raw.rope_parameters.and_then(|r| r.rope_theta).or(raw.rope_theta).unwrap_or(10_000.0);
        Ok(Qwen2Config {
            family,
            attention_bias,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            dtype: raw.dtype.or(raw.torch_dtype),
            bos_token_id: raw.bos_token_id,
            eos_token_ids: match raw.eos_token_id {
                Some(OneOrMany::One(i)) => vec![i],
                Some(OneOrMany::Many(v)) => v,
                None => vec![],
            },
        })
    }

    /// The shape of Qwen2.5-0.5B(-Instruct): 24 layers, hidden 896, 14 heads over 2 KV
    /// heads, vocab 151,936, tied embeddings.
    pub fn qwen2_5_0_5b() -> Qwen2Config {
        Qwen2Config {
            family: Family::Qwen2,
            attention_bias: true,
            vocab_size: 151_936,
            hidden_size: 896,
            intermediate_size: 4864,
            num_hidden_layers: 24,
            num_attention_heads: 14,
            num_key_value_heads: 2,
            head_dim: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            max_position_embeddings: 32_768,
            tie_word_embeddings: true,
            dtype: Some("bfloat16".into()),
            bos_token_id: Some(151_643),
            eos_token_ids: vec![151_645, 151_643],
        }
    }

    /// The shape of Qwen2.5-1.5B(-Instruct): 28 layers, hidden 1536, 12 heads over 2 KV
    /// heads of 128, vocab 151,936, tied embeddings.
    pub fn qwen2_5_1_5b() -> Qwen2Config {
        Qwen2Config {
            hidden_size: 1536,
            intermediate_size: 8960,
            num_hidden_layers: 28,
            num_attention_heads: 12,
            num_key_value_heads: 2,
            head_dim: 128,
            ..Qwen2Config::qwen2_5_0_5b()
        }
    }

    /// The shape of Qwen3-0.6B: 28 layers, hidden 1024, 16 heads of 128 (wider than
    /// hidden / heads) over 8 KV heads, vocab 151,936, tied embeddings, q/k norms.
    pub fn qwen3_0_6b() -> Qwen2Config {
        Qwen2Config {
            family: Family::Qwen3,
            attention_bias: false,
            hidden_size: 1024,
            intermediate_size: 3072,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: 128,
            max_position_embeddings: 40_960,
            ..Qwen2Config::qwen2_5_0_5b()
        }
    }

    /// Whether each head of q and k goes through its own RMSNorm before RoPE (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.family == Family::Qwen3
    }

    /// Whether o has a bias (Qwen3 with `attention_bias`).
    pub fn o_bias(&self) -> bool {
        self.family == Family::Qwen3 && self.attention_bias
    }

    /// A `config.json` transformers loads (`Qwen2ForCausalLM` or `Qwen3ForCausalLM`,
    /// classic key names), for models that were not loaded from one (random
    /// initialisation) and for exports.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.family.architecture()],
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_sliding_window": false,
            "sliding_window": null,
            "attention_dropout": 0.0,
            "use_cache": true,
        });
        let o = v.as_object_mut().expect("an object");
        if self.family == Family::Qwen3 {
            o.insert("attention_bias".into(), self.attention_bias.into());
        }
        if let Some(d) = &self.dtype {
            o.insert("torch_dtype".into(), d.clone().into());
        }
        if let Some(b) = self.bos_token_id {
            o.insert("bos_token_id".into(), b.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                o.insert("eos_token_id".into(), (*one).into());
            }
            many => {
                o.insert("eos_token_id".into(), many.to_vec().into());
            }
        }
        v
    }

    /// Parameters in the model (embedding counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * d, self.num_key_value_heads * d);
        let bias = if self.attention_bias { q + 2 * kv } else { 0 } + if self.o_bias() { h } else { 0 };
        let norms = if self.qk_norm() { 2 * d } else { 0 };
        let attn = h * q + 2 * h * kv + q * h + bias + norms;
        let layer = attn + 3 * h * i + 2 * h;
        let embed = self.vocab_size * h;
        embed + self.num_hidden_layers * layer + h + if self.tie_word_embeddings { 0 } else { embed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":896,"intermediate_size":4864,
        "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"rms_norm_eps":1e-6,
        "tie_word_embeddings":true,"eos_token_id":151645"#;

    fn parse(extra: &str) -> Result<Qwen2Config> {
        Qwen2Config::from_json(&format!("{BASE}{extra}}}"), Path::new("config.json"))
    }

    #[test]
    fn both_key_styles() {
        let a = parse(r#","rope_theta":1000000.0,"torch_dtype":"bfloat16""#).unwrap();
        let b =
            parse(r#","rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},"dtype":"bfloat16""#).unwrap();
        assert_eq!(a, b);
        let preset = Qwen2Config {
            eos_token_ids: vec![151645],
            bos_token_id: None,
            max_position_embeddings: 32768,
            ..Qwen2Config::qwen2_5_0_5b()
        };
        assert_eq!(a, preset);
        assert_eq!((a.head_dim, a.rope_theta, a.eos_token_ids.clone()), (64, 1e6, vec![151645]));
        // Qwen2.5-0.5B has 494M parameters.
        assert_eq!(a.num_parameters() / 1_000_000, 494);
    }

    #[test]
    fn hf_json_round_trips() {
        let c = Qwen2Config::qwen2_5_0_5b();
        let back = Qwen2Config::from_json(&c.to_hf_json().to_string(), Path::new("config.json")).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn qwen3() {
        let c = Qwen2Config::from_json(
            r#"{"model_type":"qwen3","vocab_size":151936,"hidden_size":1024,"intermediate_size":3072,
            "num_hidden_layers":28,"num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,
            "rms_norm_eps":1e-6,"rope_theta":1000000,"max_position_embeddings":40960,"attention_bias":false,
            "tie_word_embeddings":true,"torch_dtype":"bfloat16","bos_token_id":151643,"eos_token_id":151645,
            "use_sliding_window":false,"sliding_window":null,"max_window_layers":28}"#,
            Path::new("config.json"),
        )
        .unwrap();
        let preset = Qwen2Config { eos_token_ids: vec![151645], ..Qwen2Config::qwen3_0_6b() };
        assert_eq!(c, preset);
        assert!(c.qk_norm() && !c.attention_bias && !c.o_bias());
        // Qwen3-0.6B has 596M parameters (440M without the embedding).
        assert_eq!(c.num_parameters() / 1_000_000, 596);
        let back = Qwen2Config::from_json(&c.to_hf_json().to_string(), Path::new("config.json")).unwrap();
        assert_eq!(back, c);
        // A Qwen2 config's attention_bias is ignored, as transformers ignores it.
        let q2 = parse(r#","attention_bias":false"#).unwrap();
        assert!(q2.attention_bias && !q2.qk_norm());
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let e =
            Qwen2Config::from_json(r#"{"model_type":"llama"}"#, Path::new("x/config.json")).unwrap_err().to_string();
        assert!(e.contains("x/config.json"), "{e}");
        let llama = format!("{}}}", BASE.replace("qwen2", "llama"));
        let e = Qwen2Config::from_json(&llama, Path::new("config.json")).unwrap_err().to_string();
        assert!(e.contains("llama") && e.contains("not supported"), "{e}");
        assert!(parse(r#","rope_scaling":{"type":"yarn","factor":4.0}"#).unwrap_err().to_string().contains("yarn"));
        assert!(parse(r#","rope_scaling":null"#).is_ok());
        assert!(parse(r#","num_key_value_heads":3"#).is_err());
        assert!(parse(r#","use_sliding_window":true"#).is_err());
        assert!(Qwen2Config::from_json("{", Path::new("c.json")).unwrap_err().to_string().contains("invalid JSON"));
    }
}
