//! The GRPO loss's PyTorch fixtures (scripts/make_grpo_fixtures.py): the batch, each case's
//! settings and loss, and the check of a loss and its gradients against them. Shared by the
//! CPU test (crates/rl/tests/grpo.rs) and the GPU one (tests/cuda_model.rs).

use std::path::{Path, PathBuf};

use artist_autograd::{Ctx, Gradients, Tape};
use artist_model::{Qwen2, Weights};
use artist_rl::{GrpoConfig, TrainRollout, grpo_loss, token_weights};

pub struct Case {
    pub name: String,
    pub config: GrpoConfig,
    /// PyTorch's loss.
    pub loss: f64,
}

/// `tests/fixtures/training/grpo` from the repository root.
pub fn root(repo: &Path) -> PathBuf {
    repo.join("tests/fixtures/training/grpo")
}

/// The fixed batch and every case.
pub fn load(root: &Path) -> (Vec<TrainRollout>, Vec<Case>) {
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(root.join(name)).unwrap()).unwrap()
    };
    let (batch_json, reference) = (read("batch.json"), read("reference.json"));
    let nums =
        |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let batch = batch_json["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| TrainRollout {
            prompt_ids: nums(&r["prompt_ids"]).iter().map(|&x| x as u32).collect(),
            ids: nums(&r["ids"]).iter().map(|&x| x as u32).collect(),
            mask: nums(&r["mask"]).iter().map(|&x| x as u8).collect(),
            old_logprobs: nums(&r["old_logprobs"]).iter().map(|&x| x as f32).collect(),
            sampler_logprobs: None,
            ref_logprobs: Some(nums(&r["ref_logprobs"]).iter().map(|&x| x as f32).collect()),
            advantage: r["advantage"].as_f64().unwrap() as f32,
            score: 0.0,
            pg_mask: None,
            group: 0,
        })
        .collect();
    let optional = |case: &serde_json::Value, key: &str| case.get(key).map_or(0.0, |v| v.as_f64().unwrap());
    let cases = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| Case {
            name: case["name"].as_str().unwrap().to_string(),
            config: GrpoConfig {
                aggregation: serde_json::from_value(case["aggregation"].clone()).unwrap(),
                clip_low: case["clip_low"].as_f64().unwrap(),
                clip_high: case["clip_high"].as_f64().unwrap(),
                beta: case["beta"].as_f64().unwrap(),
                kl: serde_json::from_value(case["kl"].clone()).unwrap(),
                temperature: case["temperature"].as_f64().unwrap() as f32,
                norm_length: case["norm_length"].as_u64().unwrap() as usize,
                tis_cap: 0.0,
                importance_sampling_level: serde_json::from_value(
                    case.get("importance_sampling_level").cloned().unwrap_or_else(|| "token".into()),
                )
                .unwrap(),
                clip_ratio_c: optional(case, "clip_ratio_c"),
                entropy_coeff: optional(case, "entropy_coeff"),
                top_entropy_quantile: 1.0,
                ..Default::default()
            },
            loss: case["loss"].as_f64().unwrap(),
        })
        .collect();
    (batch, cases)
}

/// The loss of the whole batch in one pass, and its gradients.
pub fn loss_and_grads(model: &Qwen2, batch: &[TrainRollout], c: &GrpoConfig) -> (f64, Gradients) {
    let refs: Vec<&TrainRollout> = batch.iter().collect();
    let w = token_weights(&refs, c.aggregation, c.norm_length);
    let ws: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
    let tape = Tape::new();
    let (l, _) = grpo_loss(model, &Ctx::training(&tape), &refs, &ws, c).unwrap();
    (l.to_scalar().unwrap() as f64, tape.backward(&l).unwrap())
}

/// The loss within 1e-4 relative of PyTorch's; every gradient tensor within 1e-4 of its
/// norm (L2 of the difference over L2 of PyTorch's), on the model's device.
pub fn check(root: &Path, model: &Qwen2, case: &Case, loss: f64, grads: &Gradients) {
    let name = &case.name;
    assert!((loss - case.loss).abs() <= 1e-4 * case.loss.abs(), "{name}: loss {loss} vs PyTorch {}", case.loss);
    let ours = model.hf_named(|p| grads.get(p.id()).cloned()).unwrap();
    let torch = Weights::open_file(&root.join(format!("grads-{name}.safetensors"))).unwrap();
    assert_eq!(ours.len(), torch.names().count(), "{name}: gradient count");
    for (n, g) in &ours {
        assert_eq!(g.device(), model.device(), "{name} {n}: gradient device");
        let (a, b) = (g.to_f32_vec().unwrap(), torch.get(n, g.dims()).unwrap().to_f32_vec().unwrap());
        let diff = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
        let norm = b.iter().map(|&y| (y as f64).powi(2)).sum::<f64>().sqrt();
        assert!(diff <= 1e-4 * norm.max(1e-12), "{name} {n}: |diff| {diff:e} vs |grad| {norm:e}");
    }
}
