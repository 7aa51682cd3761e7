//! Shared pieces of the GRPO tests: the tiny Qwen2 fixture with the calculator, six
//! `i+i?` problems, and the paper's math preset with overrides.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use artist_model::Qwen2;
use artist_tokenizer::{ChatTemplate, Tokenizer};
use artist_train::grpo::{GrpoRunConfig, GrpoTrainer, Problem, Verifier};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A trainer on `config.model` with the calculator and the problems `i+i?` (i = 0..6).
pub fn math_trainer(config: GrpoRunConfig, verify: &'static Verifier) -> GrpoTrainer<'static> {
    let dir = &config.model;
    let train: Vec<Problem> =
        (0..6).map(|i| Problem { problem: format!("{i}+{i}?"), answer: (2 * i).to_string() }).collect();
    GrpoTrainer {
        model: Qwen2::load(dir).unwrap(),
        reference: None,
        tokenizer: Tokenizer::from_dir(dir).unwrap(),
        template: ChatTemplate::from_dir(dir).unwrap(),
        tool: Some(Arc::new(artist_tools::Calculator)),
        train,
        held_out: Vec::new(),
        verify,
        config,
    }
}

/// `configs/artist-math.toml` on the tiny-gqa fixture with the calculator, then `sets`.
pub fn tiny_math_config(sets: &[&str]) -> GrpoRunConfig {
    let text = std::fs::read_to_string(root().join("configs/artist-math.toml")).unwrap();
    let c = GrpoRunConfig::from_toml(&text, Path::new("configs/artist-math.toml")).unwrap();
    let model = root().join("tests/fixtures/qwen2/tiny-gqa");
    let mut all = vec![
        format!("model={:?}", model.to_str().unwrap()),
        "tool=calculator".into(),
        "system_prompt=\"Use <calculator>.\"".into(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    c.with_overrides(&all).unwrap()
}
