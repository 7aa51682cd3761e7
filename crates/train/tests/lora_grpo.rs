//! GRPO with `[lora]`: the base weights stay frozen to the bit and the adapters alone
//! train; the first step, on a model its fresh adapters leave unchanged, plays the rollouts
//! and scores the loss of full fine-tuning to the bit; checkpoints hold the adapters as
//! PEFT writes them and load back as the trained model; a stopped run resumes to the
//! uninterrupted run's weights; the merged model computes what the adapted one does.

use artist_model::Qwen2;
use artist_train::grpo::{GrpoRunConfig, GrpoTrainer, MERGED_DIR, train};
use artist_train::sft::RunOptions;

mod common;
use common::{quiet, weights};

fn trainer(config: GrpoRunConfig) -> GrpoTrainer<'static> {
    common::math_trainer(config, &common::parity)
}

fn config(sets: &[&str]) -> GrpoRunConfig {
    let mut all = vec!["steps=3", "save_every=1", "lora.rank=4", "lora.alpha=8", "optim.lr=1e-2"];
    all.extend_from_slice(sets);
    common::tiny_grpo_config(&all)
}

/// The largest |a - b| over the largest |b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn lora_trains_the_adapters_alone_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(&[]);
    let mut t = trainer(c.clone());
    let base = weights(&t.model);
    let m = train(&tmp.path().join("run"), &mut t, &quiet()).unwrap();
    assert!(m.iter().all(|s| s.grad_norm > 0.0), "every step trains");

    // The base weights are frozen to the bit; every adapter has moved (B from zero).
    let params = t.model.params();
    let (adapters, frozen): (Vec<&&artist_autograd::Param>, Vec<_>) =
        params.iter().partition(|p| p.name().contains(".lora_"));
    assert_eq!(adapters.len(), 2 * 7 * 2, "two layers, seven projections, A and B");
    let frozen_now: Vec<Vec<f32>> = frozen.iter().map(|p| p.value().to_vec::<f32>().unwrap()).collect();
    assert_eq!(frozen_now, base, "a base weight moved");
    for p in &adapters {
        assert!(p.trainable());
        if p.name().contains("lora_B") {
            assert!(p.value().to_vec::<f32>().unwrap().iter().any(|&x| x != 0.0), "{} did not train", p.name());
        }
    }

    // Step 1 on fresh adapters: the same rollouts, rewards and loss as full fine-tuning.
    let full = config(&["steps=1", "lora.rank=0"]);
    let f = train(&tmp.path().join("full"), &mut trainer(full), &quiet()).unwrap();
    assert_eq!((m[0].reward, m[0].loss, m[0].response_tokens), (f[0].reward, f[0].loss, f[0].response_tokens));
    assert_ne!(m[0].grad_norm, f[0].grad_norm, "the adapters' gradient is not the full model's");

    // The last checkpoint: base weights and PEFT adapter files, loading as the trained model.
    let ckpt = tmp.path().join("run/checkpoints/step-00000003");
    for name in ["model.safetensors", "adapter_config.json", "adapter_model.safetensors"] {
        assert!(ckpt.join(name).exists(), "{name} missing from the checkpoint");
    }
    let config_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config_json["peft_type"].as_str(), config_json["r"].as_u64()), (Some("LORA"), Some(4)));
    // The frozen base weights are one file on disk, hard-linked into each later checkpoint.
    use std::os::unix::fs::MetadataExt;
    let inode = |step: u64| {
        let path = tmp.path().join(format!("run/checkpoints/step-{step:08}/model.safetensors"));
        std::fs::metadata(path).unwrap().ino()
    };
    assert_eq!(inode(2), inode(3), "the base weights were written again");
    let loaded = Qwen2::load(&ckpt).unwrap();
    assert_eq!(weights(&loaded), weights(&t.model));
    let ids: Vec<u32> = (1..40).map(|i| (i * 7 % 300) as u32).collect();
    let trained_logits = t.model.logits(&ids).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(loaded.logits(&ids).unwrap().to_vec::<f32>().unwrap(), trained_logits);
    // The merged export: plain weights computing the same logits (f32 rounding apart).
    let merged = Qwen2::load(&tmp.path().join("run").join(MERGED_DIR)).unwrap();
    assert!(merged.lora().is_none() && !tmp.path().join("run/merged/adapter_config.json").exists());
    let d = rel_diff(&merged.logits(&ids).unwrap().to_vec::<f32>().unwrap(), &trained_logits);
    let plain = Qwen2::load(&c.model).unwrap().logits(&ids).unwrap().to_vec::<f32>().unwrap();
    let moved = rel_diff(&plain, &trained_logits);
    assert!(d < 1e-5 && moved > 100.0 * d, "merged {d:e} from the adapted model, which moved {moved:e}");

    // Stopped after step 1 and resumed: the uninterrupted run's figures and weights.
    let run = tmp.path().join("parts");
    let first = train(&run, &mut trainer(c.clone()), &RunOptions { stop_after: Some(1), ..quiet() }).unwrap();
    let mut resumed = trainer(c.clone());
    let rest = train(&run, &mut resumed, &RunOptions { resume: true, ..quiet() }).unwrap();
    let figures = |s: &artist_train::grpo::StepMetrics| (s.loss, s.grad_norm, s.reward);
    let parts: Vec<_> = first.iter().chain(&rest).map(figures).collect();
    assert_eq!(parts, m.iter().map(figures).collect::<Vec<_>>());
    assert_eq!(weights(&resumed.model), weights(&t.model));

    // A full fine-tuning run cannot resume from a LoRA checkpoint, nor the other way.
    let e = train(&run, &mut trainer(config(&["steps=4", "lora.rank=0"])), &RunOptions { resume: true, ..quiet() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("LoRA adapters already") || e.contains("not the model's"), "{e}");
}

/// With a KL term the reference is the policy's own base, shared: the KL is exactly 0 at
/// step 1 (fresh adapters change nothing) and grows as the adapters train.
#[test]
fn the_reference_is_the_shared_base() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = trainer(config(&["grpo.beta=0.04"]));
    let m = train(&tmp.path().join("run"), &mut t, &quiet()).unwrap();
    assert_eq!(m[0].kl, 0.0);
    assert!(m[1].kl > 0.0 && m[2].kl > 0.0, "{:?}", m.iter().map(|s| s.kl).collect::<Vec<_>>());
    let reference = t.reference.as_ref().unwrap();
    assert!(reference.lora().is_none());
    let policy = t.model.params();
    let base: Vec<_> = policy.iter().filter(|p| !p.name().contains(".lora_")).collect();
    assert_eq!(reference.params().len(), base.len());
    for (r, p) in reference.params().iter().zip(base) {
        assert_eq!(r.name(), p.name());
        assert!(r.value().same_storage(p.value()), "{} was copied", r.name());
    }
}

/// Two in-process ranks, each with its share of the prompts, train the adapters one process
/// trains (the ranks add the same seeded adapters; only float sums are reordered).
#[test]
fn two_ranks_train_the_adapters_one_process_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(&["prompts_per_step=3", "grpo.beta=0.04"]);
    let mut single = trainer(c.clone());
    let m1 = train(&tmp.path().join("single"), &mut single, &quiet()).unwrap();
    let dir = tmp.path().join("ranks");
    let runs = common::ranks(2, |comm| {
        let mut t = trainer(c.clone());
        let m = artist_train::grpo::train_data_parallel(&dir, &mut t, &quiet(), comm).unwrap();
        (m, weights(&t.model))
    });
    let w1 = weights(&single.model);
    for (r, (m, w)) in runs.iter().enumerate() {
        assert_eq!(w.len(), w1.len());
        let d = w.iter().flatten().zip(w1.iter().flatten()).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(d < 1e-4, "rank {r}: weights {d:e} from one process's");
        for (a, b) in m.iter().zip(&m1) {
            assert_eq!((a.reward, a.response_tokens), (b.reward, b.response_tokens), "rank {r}, step {}", a.step);
            assert!((a.kl - b.kl).abs() < 1e-5, "rank {r}, step {}: KL {} against {}", a.step, a.kl, b.kl);
        }
    }
}

#[test]
fn lora_settings_are_checked() {
    let cpu = artist_tensor::Device::Cpu;
    let e = config(&["lora.target_modules=[\"q_proj\", \"lm_head\"]"]).validate(cpu).unwrap_err().to_string();
    assert!(e.contains("lm_head"), "{e}");
    let e = config(&["lora.alpha=0"]).validate(cpu).unwrap_err().to_string();
    assert!(e.contains("lora.alpha"), "{e}");
    let e = config(&["grpo.beta=0.1", "reference_sync.every=2"]).validate(cpu).unwrap_err().to_string();
    assert!(e.contains("reference_sync") && e.contains("lora"), "{e}");
    let e = GrpoRunConfig::from_toml("[lora]\nrank = 4\ndropout = 0.1\n", std::path::Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("dropout"), "{e}");
}
