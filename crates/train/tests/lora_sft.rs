//! SFT with LoRA adapters: the base weights stay frozen, the adapters train; `final/`
//! holds the base and PEFT's adapter files and loads as the trained model, `merged/` as a
//! plain model computing the same; a run stopped and resumed ends where a straight one does;
//! checkpointed layers train the same adapters to the bit; a model loaded from `final/`
//! keeps its adapters where `[lora]` asks for them (or for none) and refuses others.

use std::path::{Path, PathBuf};

use artist_model::{LoraSpec, Qwen2};
use artist_train::sft::{RunOptions, SftConfig, train};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn config() -> SftConfig {
    SftConfig {
        model: fixtures().join("qwen2/tiny-gqa"),
        data: fixtures().join("training/sft/gqa-cosine/data.jsonl"),
        steps: 3,
        batch_size: 4,
        micro_batch_size: 2,
        lr: 1e-2,
        save_every: 1,
        seed: 3,
        lora: LoraSpec {
            rank: 2,
            alpha: 4.0,
            target_modules: vec!["q_proj".into(), "down_proj".into()],
            rslora: false,
        },
        ..SftConfig::default()
    }
}

fn quiet() -> RunOptions {
    RunOptions { resume: false, progress: false, stop_after: None, device: Default::default() }
}

fn values(model: &Qwen2) -> Vec<(String, Vec<f32>)> {
    model.params().iter().map(|p| (p.name().to_string(), p.value().to_vec::<f32>().unwrap())).collect()
}

#[test]
fn sft_trains_adapters_and_exports_them() {
    let tmp = tempfile::tempdir().unwrap();
    let base = Qwen2::load(&config().model).unwrap();
    let s = train(&tmp.path().join("run"), config(), &quiet()).unwrap();
    assert!(s.last_loss.unwrap().is_finite());
    let trained = Qwen2::load(&s.final_model).unwrap();
    assert_eq!(trained.lora(), Some(&config().lora));
    let (adapters, frozen): (Vec<_>, Vec<_>) = values(&trained).into_iter().partition(|(n, _)| n.contains(".lora_"));
    assert_eq!(frozen, values(&base), "a base weight moved");
    assert_eq!(adapters.len(), 2 * 2 * 2, "two layers, q_proj and down_proj, A and B");
    assert!(adapters.iter().filter(|(n, _)| n.contains("lora_B")).all(|(_, v)| v.iter().any(|&x| x != 0.0)));

    // The base weights are written once and hard-linked into later checkpoints and final/;
    // without adapters every checkpoint's weights are a file of their own.
    use std::os::unix::fs::MetadataExt;
    let inode = |run: &str, dir: &str| {
        std::fs::metadata(tmp.path().join(run).join(dir).join("model.safetensors")).unwrap().ino()
    };
    assert_eq!(inode("run", "checkpoints/step-00000003"), inode("run", "final"));
    assert_eq!(inode("run", "checkpoints/step-00000002"), inode("run", "final"));
    let full = SftConfig { lora: LoraSpec::default(), ..config() };
    train(&tmp.path().join("full"), full, &quiet()).unwrap();
    assert_ne!(inode("full", "checkpoints/step-00000002"), inode("full", "checkpoints/step-00000003"));
    assert_ne!(inode("full", "checkpoints/step-00000003"), inode("full", "final"));

    let ids: Vec<u32> = (0..30).map(|i| (i * 11 % 300) as u32).collect();
    let want = trained.logits(&ids).unwrap().to_vec::<f32>().unwrap();
    let merged = Qwen2::load(&tmp.path().join("run/merged")).unwrap();
    assert!(merged.lora().is_none());
    let got = merged.logits(&ids).unwrap().to_vec::<f32>().unwrap();
    let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 1e-4, "merged logits {worst} from the adapted model's");

    // Stopped after step 1 and resumed from its checkpoint: the straight run's adapters.
    let run = tmp.path().join("parts");
    train(&run, config(), &RunOptions { stop_after: Some(1), ..quiet() }).unwrap();
    let r = train(&run, config(), &RunOptions { resume: true, ..quiet() }).unwrap();
    assert_eq!(values(&Qwen2::load(&r.final_model).unwrap()), values(&trained));

    // Checkpointed layers recompute the adapters too: the same adapters to the bit.
    let ckpt = SftConfig { grad_checkpointing: true, ..config() };
    let c = train(&tmp.path().join("checkpointed"), ckpt, &quiet()).unwrap();
    assert_eq!(values(&Qwen2::load(&c.final_model).unwrap()), values(&trained));

    // GRPO from final/: its adapters are kept when asked for, others refused.
    let mut g = artist_train::grpo::GrpoRunConfig::default()
        .with_overrides(&[format!("model={:?}", s.final_model.to_str().unwrap())])
        .unwrap();
    g.lora = LoraSpec { rank: 8, ..config().lora };
    let mut m = Qwen2::load(&s.final_model).unwrap();
    let e = artist_train::grpo::attach_lora(&mut m, &g.lora, 0).unwrap_err().to_string();
    assert!(e.contains("LoRA adapters already"), "{e}");
    artist_train::grpo::attach_lora(&mut m, &config().lora, 0).unwrap();
    assert_eq!(values(&m), values(&trained));
}
