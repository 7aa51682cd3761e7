//! The fixtures of `tests/fixtures/rope_scaling` (scripts/make_rope_scaling_fixtures.py): a
//! tiny checkpoint's weights under a config that stretches RoPE, with transformers'
//! frequencies and outputs. Shared by the CPU parity test and the GPU one.

#![allow(dead_code)] // each test reads its own fields

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The cases of RoPE scaling the fixtures hold.
pub const CASES: [&str; 3] = ["qwen2-yarn", "qwen3-yarn-mscale", "qwen2-linear"];

#[derive(Deserialize)]
#[serde(bound = "C: DeserializeOwned")]
pub struct RopeScalingFixture<C> {
    /// The fixture whose weights and tokenizer it runs (`qwen2/tiny-gqa`, ...).
    pub base: String,
    pub config: serde_json::Value,
    pub inv_freq: Vec<f32>,
    pub attention_scaling: f32,
    pub cases: Vec<C>,
}

/// Reads fixture `name` and writes its model directory under `tmp`: the base fixture's
/// files (not its config or references) beside the fixture's `config.json`.
pub fn materialize<C: DeserializeOwned>(fixtures: &Path, name: &str, tmp: &Path) -> (PathBuf, RopeScalingFixture<C>) {
    let path = fixtures.join(format!("rope_scaling/{name}.json"));
    let fx: RopeScalingFixture<C> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(fixtures.join(&fx.base)).unwrap() {
        let f = f.unwrap().path();
        let file = f.file_name().unwrap().to_str().unwrap();
        if file != "config.json" && !file.starts_with("reference") {
            std::fs::copy(&f, dir.join(file)).unwrap();
        }
    }
    std::fs::write(dir.join("config.json"), fx.config.to_string()).unwrap();
    (dir, fx)
}
