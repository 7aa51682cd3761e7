//! `config.json` of a Qwen2 / Qwen2.5 or Qwen3 checkpoint, with Hugging Face's field names.
//! Both the classic keys (`rope_theta`, `rope_scaling`, `torch_dtype`) and transformers
//! 5's (`rope_parameters`, `dtype`) are accepted.

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

/// How RoPE's frequencies are stretched for contexts longer than pretraining's
/// (`rope_parameters` / `rope_scaling` in `config.json`), computed as transformers
/// computes them. Dynamic NTK, Llama 3's and LongRoPE's schemes are refused at load.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RopeScaling {
    /// Plain RoPE: `theta^(-2i/d)`.
    #[default]
    None,
    /// Position interpolation (Chen et al., 2023): every frequency divided by `factor`.
    Linear { factor: f64 },
    /// YaRN (Peng et al., 2023), the scheme Qwen2.5's and Qwen3's model cards give for
    /// long contexts.
    Yarn(Yarn),
}

/// YaRN's parameters as `config.json` holds them; `None` is a key left out (written back
/// out as it came in). The frequencies whose wavelength fits more than `beta_fast`
/// rotations in `original_max_position_embeddings` keep their value, those fitting fewer
/// than `beta_slow` are divided by `factor`, and a linear ramp over the dimensions joins
/// the two; cos and sin are multiplied by `attention_factor` (by default
/// `0.1 ln(factor) + 1`, or the ratio of that with `mscale` and with `mscale_all_dim`).
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub attention_factor: Option<f64>,
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    /// Whether the ramp's ends are rounded to whole dimensions (default true).
    pub truncate: Option<bool>,
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
    pub rope_scaling: RopeScaling,
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
    rope_parameters: Option<serde_json::Value>,
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
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

fn default_max_pos() -> usize {
    32768
}

impl RopeScaling {
    /// The `rope_scaling` value of a classic `config.json` (`null` for plain RoPE), with
    /// the type under both its keys, as transformers 4 and 5 read it.
    pub fn to_json(&self) -> serde_json::Value {
        let (kind, mut keys) = match self {
            RopeScaling::None => return serde_json::Value::Null,
            RopeScaling::Linear { factor } => ("linear", serde_json::json!({ "factor": factor })),
            RopeScaling::Yarn(y) => {
                let mut v = serde_json::json!({
                    "factor": y.factor,
                    "original_max_position_embeddings": y.original_max_position_embeddings,
                });
                let o = v.as_object_mut().expect("an object");
                for (key, x) in [
                    ("attention_factor", y.attention_factor),
                    ("beta_fast", y.beta_fast),
                    ("beta_slow", y.beta_slow),
                    ("mscale", y.mscale),
                    ("mscale_all_dim", y.mscale_all_dim),
                ] {
                    if let Some(x) = x {
                        o.insert(key.into(), x.into());
                    }
                }
                if let Some(t) = y.truncate {
                    o.insert("truncate".into(), t.into());
                }
                ("yarn", v)
            }
        };
        let o = keys.as_object_mut().expect("an object");
        o.insert("rope_type".into(), kind.into());
        o.insert("type".into(), kind.into());
        keys
    }
}

/// RoPE's scaling from a `rope_parameters` or `rope_scaling` object; `max_pos` stands in
/// for a missing `original_max_position_embeddings`, as transformers does.
fn rope_scaling(
    map: &serde_json::Map<String, serde_json::Value>,
    max_pos: usize,
) -> std::result::Result<RopeScaling, String> {
    use serde_json::Value;
    let present = |key: &str| map.get(key).filter(|v| !v.is_null());
    let num = |key: &str| -> std::result::Result<Option<f64>, String> {
        match present(key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| format!("rope {key} {v} is not a number"))
            }
        }
    };
    if let Some((key, _)) = map.iter().find(|(_, v)| v.is_object()) {
        return Err(format!("RoPE parameters per layer type ({key:?}) are not supported"));
    }
    let kind = match present("rope_type").or_else(|| present("type")) {
        None => "default",
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(format!("rope type {v} is not a string")),
    };
    if let Some(p) = num("partial_rotary_factor")?.filter(|p| *p != 1.0) {
        return Err(format!("partial_rotary_factor {p} is not supported (RoPE turns whole heads)"));
    }
    let factor = num("factor")?;
    if let Some(f) = factor.filter(|f| *f <= 0.0) {
        return Err(format!("rope factor {f} must be positive"));
    }
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: factor.ok_or("linear RoPE scaling needs a factor")? }),
        "yarn" => {
            let original =
                match present("original_max_position_embeddings") {
                    None => max_pos,
                    Some(v) => v.as_u64().filter(|n| *n > 0).map(|n| n as usize).ok_or_else(|| {
                        format!("rope original_max_position_embeddings {v} is not a positive integer")
                    })?,
                };
            let truncate = match present("truncate") {
                None => None,
                Some(v) => Some(v.as_bool().ok_or_else(|| format!("rope truncate {v} is not true or false"))?),
            };
            Ok(RopeScaling::Yarn(Yarn {
                factor: factor.unwrap_or(max_pos as f64 / original as f64),
                original_max_position_embeddings: original,
                attention_factor: num("attention_factor")?,
                beta_fast: num("beta_fast")?,
                beta_slow: num("beta_slow")?,
                mscale: num("mscale")?,
                mscale_all_dim: num("mscale_all_dim")?,
                truncate,
            }))
        }
        other => Err(format!("rope type {other:?} is not supported (default, linear and yarn are)")),
    }
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
        // transformers 5 keeps RoPE's type, theta and scaling together in
        // `rope_parameters`; older files have `rope_theta` and `rope_scaling` (with `type`
        // or `rope_type`).
        let rope =
            [&raw.rope_parameters, &raw.rope_scaling].into_iter().find_map(|v| v.as_ref().and_then(|v| v.as_object()));
        let rope_scaling = match rope {
            Some(map) => rope_scaling(map, raw.max_position_embeddings).map_err(bad)?,
            None => RopeScaling::None,
        };
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
        let rope_theta = match rope.and_then(|m| m.get("rope_theta")).filter(|v| !v.is_null()) {
            Some(v) => v.as_f64().ok_or_else(|| bad(format!("rope_theta {v} is not a number")))?,
            None => raw.rope_theta.unwrap_or(10_000.0),
        };
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(bad(format!("rope_theta {rope_theta} must be a finite number above 1")));
        }
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
            rope_scaling,
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
            rope_scaling: RopeScaling::None,
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

    /// RoPE's inverse frequency for each pair of dimensions, `[head_dim / 2]`, and the
    /// factor cos and sin are multiplied by: transformers' `inv_freq` and
    /// `attention_scaling`, computed in the same precisions (f32 where it uses f32).
    pub fn rope_frequencies(&self) -> (Vec<f32>, f32) {
        let (d, theta) = (self.head_dim, self.rope_theta as f32);
        let plain = || artist_tensor::rope_inv_freq(d, theta);
        match &self.rope_scaling {
            RopeScaling::None => (plain(), 1.0),
            RopeScaling::Linear { factor } => (plain().into_iter().map(|f| f / *factor as f32).collect(), 1.0),
            RopeScaling::Yarn(y) => {
                // YaRN scales the powers before their reciprocal (1 / (s p)), as transformers does.
                let pos_freqs = (0..d / 2).map(|i| theta.powf((2 * i) as f32 / d as f32));
                let s = y.factor;
                let mscale = |m: f64| if s <= 1.0 { 1.0 } else { 0.1 * m * s.ln() + 1.0 };
                let attention = match (y.attention_factor, y.mscale, y.mscale_all_dim) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(m) / mscale(all),
                    _ => mscale(1.0),
                };
                // The dimension whose wavelength fits `r` rotations in the original context.
                let dim_of = |r: f64| {
                    d as f64 * (y.original_max_position_embeddings as f64 / (r * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * self.rope_theta.ln())
                };
                let fast = y.beta_fast.filter(|b| *b != 0.0).unwrap_or(32.0);
                let slow = y.beta_slow.filter(|b| *b != 0.0).unwrap_or(1.0);
                let (mut lo, mut hi) = (dim_of(fast), dim_of(slow));
                if y.truncate.unwrap_or(true) {
                    (lo, hi) = (lo.floor(), hi.ceil());
                }
                let (lo, mut hi) = (lo.max(0.0), hi.min(d as f64 - 1.0));
                if lo == hi {
                    hi += 0.001;
                }
                let inv = pos_freqs
                    .enumerate()
                    .map(|(i, p)| {
                        // 0 keeps the frequency (extrapolation), 1 divides it by the factor.
                        let ramp = ((i as f32 - lo as f32) / (hi - lo) as f32).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        1.0 / (s as f32 * p) * (1.0 - keep) + 1.0 / p * keep
                    })
                    .collect();
                (inv, attention as f32)
            }
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
            "rope_scaling": self.rope_scaling.to_json(),
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

    /// Both places a config keeps RoPE's scaling, both names of its type; what is left out
    /// stays out when written back, and a missing original length is the model's own.
    #[test]
    fn rope_scaling() {
        let classic = parse(
            r#","rope_theta":1000000.0,"rope_scaling":{"type":"yarn","factor":4.0,"original_max_position_embeddings":32768}"#,
        )
        .unwrap();
        let yarn = Yarn {
            factor: 4.0,
            original_max_position_embeddings: 32768,
            attention_factor: None,
            beta_fast: None,
            beta_slow: None,
            mscale: None,
            mscale_all_dim: None,
            truncate: None,
        };
        assert_eq!((classic.rope_theta, &classic.rope_scaling), (1e6, &RopeScaling::Yarn(yarn.clone())));
        let v5 = parse(
            r#","rope_parameters":{"rope_type":"yarn","rope_theta":1e6,"factor":4,"original_max_position_embeddings":32768,"beta_fast":16,"truncate":false}"#,
        )
        .unwrap();
        let want = Yarn { beta_fast: Some(16.0), truncate: Some(false), ..yarn.clone() };
        assert_eq!((v5.rope_theta, &v5.rope_scaling), (1e6, &RopeScaling::Yarn(want)));
        let linear = parse(r#","rope_scaling":{"rope_type":"linear","factor":2}"#).unwrap();
        assert_eq!(linear.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        for c in [&classic, &v5, &linear] {
            let back = Qwen2Config::from_json(&c.to_hf_json().to_string(), Path::new("config.json")).unwrap();
            assert_eq!(&back, c);
        }
        // No factor: the ratio of the lengths; no original length: max_position_embeddings.
        let implicit = parse(
            r#","max_position_embeddings":131072,"rope_scaling":{"type":"yarn","original_max_position_embeddings":32768}"#,
        );
        assert!(matches!(implicit.unwrap().rope_scaling, RopeScaling::Yarn(Yarn { factor: 4.0, .. })));
        let own = parse(r#","max_position_embeddings":4096,"rope_scaling":{"type":"yarn","factor":2}"#).unwrap();
        assert!(matches!(own.rope_scaling, RopeScaling::Yarn(Yarn { original_max_position_embeddings: 4096, .. })));
        assert_eq!(
            parse(r#","rope_parameters":{"rope_type":"default","rope_theta":5e5}"#).unwrap().rope_scaling,
            RopeScaling::None
        );
        // YaRN keeps the fastest frequency and scales cos and sin by 0.1 ln 4 + 1.
        let (inv, scale) = classic.rope_frequencies();
        assert_eq!((inv.len(), inv[0], scale), (classic.head_dim / 2, 1.0, (1.0 + 0.1 * 4f64.ln()) as f32));
        // Plain RoPE's tables are rope_tables' own, to the bit.
        let plain = parse("").unwrap();
        let (inv, scale) = plain.rope_frequencies();
        let cpu = artist_tensor::Device::Cpu;
        let a = artist_tensor::rope_tables(&[0, 7, 4095], 64, plain.rope_theta as f32, cpu).unwrap();
        let b = artist_tensor::rope_tables_scaled(&[0, 7, 4095], &inv, scale, cpu).unwrap();
        assert_eq!(
            (a.0.to_f32_vec().unwrap(), a.1.to_f32_vec().unwrap()),
            (b.0.to_f32_vec().unwrap(), b.1.to_f32_vec().unwrap())
        );
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let e =
            Qwen2Config::from_json(r#"{"model_type":"llama"}"#, Path::new("x/config.json")).unwrap_err().to_string();
        assert!(e.contains("x/config.json"), "{e}");
        let llama = format!("{}}}", BASE.replace("qwen2", "llama"));
        let e = Qwen2Config::from_json(&llama, Path::new("config.json")).unwrap_err().to_string();
        assert!(e.contains("llama") && e.contains("not supported"), "{e}");
        for (bad, names) in [
            (r#","rope_scaling":{"type":"dynamic","factor":4.0}"#, "\"dynamic\""),
            (r#","rope_parameters":{"rope_type":"llama3","factor":8.0}"#, "\"llama3\""),
            (r#","rope_scaling":{"type":"linear"}"#, "needs a factor"),
            (r#","rope_scaling":{"type":"yarn","factor":-2}"#, "factor -2"),
            (r#","rope_scaling":{"type":"yarn","factor":4,"original_max_position_embeddings":0.5}"#, "original_max"),
            (r#","rope_scaling":{"type":"yarn","factor":4,"beta_fast":"x"}"#, "beta_fast"),
            (r#","rope_scaling":{"type":"yarn","factor":4,"truncate":1}"#, "truncate"),
            (r#","rope_scaling":{"type":"linear","factor":2,"partial_rotary_factor":0.5}"#, "partial_rotary"),
            (r#","rope_theta":-1"#, "rope_theta"),
            (r#","rope_parameters":{"full_attention":{"rope_type":"default"}}"#, "per layer type"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(names), "{bad}: {e}");
        }
        assert!(parse(r#","rope_scaling":null"#).is_ok());
        assert!(parse(r#","num_key_value_heads":3"#).is_err());
        assert!(parse(r#","use_sliding_window":true"#).is_err());
        assert!(Qwen2Config::from_json("{", Path::new("c.json")).unwrap_err().to_string().contains("invalid JSON"));
    }
}
