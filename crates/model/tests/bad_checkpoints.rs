//! Broken checkpoints and inputs get errors that name what is wrong, never a panic.

use std::path::{Path, PathBuf};

use artist_model::{Error, Qwen2, Rows, SeqInput};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2").join(name)
}

/// A scratch copy of a fixture that a test may break.
fn copy(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    match Qwen2::load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

#[test]
fn missing_files() {
    let d = copy("tiny-gqa");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    assert!(load_err(d.path()).contains("no model.safetensors"));
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json"), "{e}");
    // A shard named by the index but absent.
    let d = copy("tiny-sharded");
    std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn truncated_weights() {
    let d = copy("tiny-gqa");
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");
    std::fs::write(&p, &bytes[..5]).unwrap();
    assert!(load_err(d.path()).contains("not a valid safetensors"));
}

#[test]
fn config_that_disagrees_with_the_weights() {
    let d = copy("tiny-gqa");
    edit_config(d.path(), |v| v["model_type"] = "llama".into());
    assert!(load_err(d.path()).contains("\"llama\" is not supported"));
    edit_config(d.path(), |v| {
        v["model_type"] = "qwen2".into();
        v["intermediate_size"] = 128.into();
    });
    let e = load_err(d.path());
    assert!(e.contains("gate_proj.weight") && e.contains("[160, 64]") && e.contains("[128, 64]"), "{e}");
    edit_config(d.path(), |v| {
        v["intermediate_size"] = 160.into();
        v["num_hidden_layers"] = 3.into();
    });
    let e = load_err(d.path());
    assert!(e.contains("\"model.layers.2.") && e.contains("is missing from the checkpoint"), "{e}");
    edit_config(d.path(), |v| v["num_hidden_layers"] = serde_json::Value::String("two".into()));
    assert!(load_err(d.path()).contains("invalid JSON"));
}

/// A Qwen2 checkpoint relabelled Qwen3 (or the reverse) fails on the first tensor the other
/// family has and this one lacks, by name.
#[test]
fn a_checkpoint_of_the_other_family() {
    let d = copy("tiny-gqa");
    edit_config(d.path(), |v| v["model_type"] = "qwen3".into());
    let e = load_err(d.path());
    assert!(e.contains("model.layers.0.self_attn.q_norm.weight") && e.contains("missing"), "{e}");
    let d = tempfile::tempdir().unwrap();
    let qwen3 = fixture("../qwen3/tiny-qwen3");
    for e in std::fs::read_dir(&qwen3).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
    }
    edit_config(d.path(), |v| v["model_type"] = "qwen2".into());
    let e = load_err(d.path());
    assert!(e.contains("model.layers.0.self_attn.q_proj.bias") && e.contains("missing"), "{e}");
    // A Qwen3 config that says its attention is biased when the weights are not.
    edit_config(d.path(), |v| {
        v["model_type"] = "qwen3".into();
        v["attention_bias"] = true.into();
    });
    assert!(load_err(d.path()).contains("q_proj.bias"));
}

#[test]
fn bad_inputs() {
    let model = Qwen2::load(&fixture("tiny-gqa")).unwrap();
    let mut cache = model.new_cache(2, 8).unwrap();
    let mut run = |inputs: &[SeqInput]| model.forward(inputs, &mut cache, Rows::Last).unwrap_err();
    assert!(matches!(
        run(&[SeqInput { slot: 0, tokens: &[1, 311] }]),
        Error::TokenOutOfRange { id: 311, vocab_size: 311 }
    ));
    assert!(run(&[SeqInput { slot: 0, tokens: &[] }]).to_string().contains("no tokens"));
    assert!(run(&[]).to_string().contains("at least one"));
    assert!(run(&[SeqInput { slot: 2, tokens: &[1] }]).to_string().contains("slot 2 does not exist"));
    assert!(run(&[SeqInput { slot: 0, tokens: &[1; 9] }]).to_string().contains("more than the cache"));
    let twice = [SeqInput { slot: 1, tokens: &[1] }, SeqInput { slot: 1, tokens: &[2] }];
    assert!(run(&twice).to_string().contains("twice"));
    // Nothing was cached by the failed calls.
    assert_eq!(cache.len(0) + cache.len(1), 0);
}
