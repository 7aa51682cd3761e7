//! LoRA adapters against PEFT (`scripts/make_lora_fixtures.py`): PEFT's own adapter files
//! load, and the logits (training forward and cached inference), the gradients of every
//! adapter tensor and the merged model's logits match PEFT on transformers. Fresh adapters
//! leave the model's outputs unchanged to the bit and train alone; saved adapters read back
//! as they were; bad adapter files are refused by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use artist_autograd::{Ctx, Tape, token_logprobs_in};
use artist_model::{LoraSpec, Qwen2};
use artist_tensor::{DType, Device, Tensor};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn base() -> PathBuf {
    root().join("tests/fixtures/qwen2/tiny-gqa")
}

fn sequences() -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(root().join("tests/fixtures/lora/sequences.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(v["sequences"].clone()).unwrap()
}

fn expected(case: &str) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(root().join(format!("tests/fixtures/lora/{case}/expected.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    (st.tensors().into_iter())
        .map(|(name, v)| (name, v.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()))
        .collect()
}

/// The largest |a - b| over the largest |b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The fixture's loss: sum over both sequences of `w_t log p(token t+1)`, `w_t = 0.01
/// ((t % 5) - 2)`, recorded on a tape; and the packed logits of the training forward.
fn loss(model: &Qwen2, ctx: &Ctx, seqs: &[Vec<u32>]) -> (artist_autograd::Var, Vec<f32>) {
    let (mut rows, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    let mut offset = 0;
    for s in seqs {
        for t in 0..s.len() - 1 {
            rows.push((offset + t) as u32);
            targets.push(s[t + 1]);
            weights.push(0.01 * ((t % 5) as f32 - 2.0));
        }
        offset += s.len();
    }
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let all = model.hidden_states(ctx, &refs, None).unwrap();
    let logits = all.value().linear(model.lm_head_weight(), None).unwrap().to_vec::<f32>().unwrap();
    let hidden = model.hidden_states(ctx, &refs, Some(&rows)).unwrap();
    let lp = token_logprobs_in(&hidden, &ctx.param(model.lm_head_param()), &targets, 1.0, None, None).unwrap();
    let n = weights.len();
    let w = artist_autograd::Var::constant(Tensor::from_vec(weights, n, Device::Cpu).unwrap());
    (lp.mul(&w).unwrap().sum_all().unwrap(), logits)
}

#[test]
fn peft_adapters_match_peft() {
    let seqs = sequences();
    for case in ["r4-partial", "r2-rslora"] {
        let want = expected(case);
        let mut model = Qwen2::load(&base()).unwrap();
        model.load_lora(&root().join(format!("tests/fixtures/lora/{case}"))).unwrap();
        let tape = Tape::new();
        let (l, logits) = loss(&model, &Ctx::training(&tape), &seqs);
        // The fixture's values are float64's; PyTorch's own float32 run is this far from them.
        let (torch_logits, torch_grads) = (want["torch_f32_logits_err"][0], want["torch_f32_grad_err"][0]);
        let bound = (3.0 * torch_logits).max(1e-6);
        let d = rel_diff(&logits, &want["logits"]);
        eprintln!("{case}: training logits {d:e} of the largest from float64's (PyTorch float32: {torch_logits:e})");
        assert!(d < bound, "{case}: training logits differ from PEFT's by {d:e} of their largest");
        let got_loss = l.to_scalar().unwrap();
        assert!((got_loss - want["loss"][0]).abs() < 1e-5, "{case}: loss {got_loss} vs {}", want["loss"][0]);
        // The cached inference forward, one sequence at a time.
        let mut cached = Vec::new();
        for s in &seqs {
            cached.extend(model.logits(s).unwrap().to_vec::<f32>().unwrap());
        }
        let d = rel_diff(&cached, &want["logits"]);
        assert!(d < bound, "{case}: cached logits differ from PEFT's by {d:e}");
        let grads = tape.backward(&l).unwrap();
        let params = model.params();
        let trainable: Vec<_> = params.iter().filter(|p| p.trainable()).collect();
        let expected_grads = want.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(trainable.len(), expected_grads, "{case}: the adapters alone train");
        let mut worst = 0f32;
        for p in trainable {
            let g = grads.get(p.id()).unwrap().to_vec::<f32>().unwrap();
            let key = format!("grad.base_model.model.{}", p.name());
            let d = rel_diff(&g, &want[&key]);
            worst = worst.max(d);
            assert!(d < (3.0 * torch_grads).max(1e-5), "{case}: {key} differs from float64's by {d:e} of its largest");
        }
        eprintln!(
            "{case}: gradients at worst {worst:e} of the largest from float64's (PyTorch float32: {torch_grads:e})"
        );
        // Merged into plain weights, written as a Hugging Face model and read back.
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(base().join("config.json"), dir.path().join("config.json")).unwrap();
        artist_model::save_safetensors(&model.hf_tensors_merged().unwrap(), &dir.path().join("model.safetensors"))
            .unwrap();
        let merged = Qwen2::load(dir.path()).unwrap();
        assert!(merged.lora().is_none());
        let mut m = Vec::new();
        for s in &seqs {
            m.extend(merged.logits(s).unwrap().to_vec::<f32>().unwrap());
        }
        let d = rel_diff(&m, &want["merged_logits"]);
        assert!(d < bound, "{case}: merged logits differ from PEFT's merged model's by {d:e}");
    }
}

#[test]
fn fresh_adapters_change_nothing_and_train_alone() {
    let seqs = sequences();
    let plain = Qwen2::load(&base()).unwrap();
    let mut model = Qwen2::load(&base()).unwrap();
    let spec = LoraSpec { rank: 3, alpha: 6.0, target_modules: vec!["q_proj".into(), "up_proj".into()], rslora: false };
    model.add_lora(&spec, 7).unwrap();
    assert_eq!(
        model.logits(&seqs[0]).unwrap().to_vec::<f32>().unwrap(),
        plain.logits(&seqs[0]).unwrap().to_vec::<f32>().unwrap()
    );
    let names: Vec<String> = model.params().iter().filter(|p| p.trainable()).map(|p| p.name().to_string()).collect();
    // Two layers, q_proj and up_proj, A and B each.
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.iter().all(|n| n.contains("q_proj.lora_") || n.contains("up_proj.lora_")), "{names:?}");
    // A is uniform in +-1/sqrt(in), B zero.
    for p in model.params().iter().filter(|p| p.trainable()) {
        let v = p.value().to_vec::<f32>().unwrap();
        if p.name().contains("lora_B") {
            assert!(v.iter().all(|&x| x == 0.0));
        } else {
            let bound = 1.0 / (p.value().dims()[1] as f32).sqrt();
            assert!(v.iter().all(|x| x.abs() <= bound) && v.iter().any(|x| x.abs() > 0.5 * bound), "{}", p.name());
        }
    }
    // Gradients reach both halves of every adapter once B moves off zero.
    for p in model.params().iter().filter(|p| p.name().contains("lora_B")) {
        let n = p.value().elem_count();
        let v: Vec<f32> = (0..n).map(|i| 0.1 * ((i % 7) as f32 - 3.0)).collect();
        p.value().copy_from(&Tensor::from_vec(v, p.value().dims().to_vec(), Device::Cpu).unwrap()).unwrap();
    }
    let tape = Tape::new();
    let (l, _) = loss(&model, &Ctx::training(&tape), &seqs);
    let grads = tape.backward(&l).unwrap();
    assert_eq!(grads.len(), 8);
    for (_, g) in grads.iter() {
        assert!(g.to_vec::<f32>().unwrap().iter().any(|&x| x != 0.0));
    }

    // Saved as PEFT does, and read back into a fresh model: the same tensors.
    let dir = tempfile::tempdir().unwrap();
    model.save_lora(dir.path(), "tiny-gqa").unwrap();
    let mut again = Qwen2::load(&base()).unwrap();
    again.load_lora(dir.path()).unwrap();
    assert_eq!(again.lora(), model.lora());
    let t = |m: &Qwen2| -> Vec<(String, Vec<f32>)> {
        m.lora_tensors().into_iter().map(|(n, t)| (n, t.to_vec::<f32>().unwrap())).collect()
    };
    assert_eq!(t(&again), t(&model));
    assert_eq!(
        again.logits(&seqs[1]).unwrap().to_vec::<f32>().unwrap(),
        model.logits(&seqs[1]).unwrap().to_vec::<f32>().unwrap()
    );
    assert!(model.add_lora(&spec, 0).unwrap_err().to_string().contains("already"));
    // One layer's projection by its path; a path past the last layer is refused.
    let mut one = Qwen2::load(&base()).unwrap();
    let path = LoraSpec { target_modules: vec!["model.layers.1.mlp.down_proj".into()], ..spec.clone() };
    one.add_lora(&path, 0).unwrap();
    let names: Vec<String> = one.lora_tensors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight",
            "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
        ]
    );
    let mut none = Qwen2::load(&base()).unwrap();
    let past = LoraSpec { target_modules: vec!["model.layers.7.mlp.down_proj".into()], ..spec };
    let e = none.add_lora(&past, 0).unwrap_err().to_string();
    assert!(e.contains("matches no projection"), "{e}");
    assert!(none.lora().is_none() && none.params().iter().all(|p| p.trainable()));
}

#[test]
fn bad_adapters_are_refused_by_name() {
    let fixture = root().join("tests/fixtures/lora/r4-partial");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("adapter_config.json")).unwrap()).unwrap();
    let try_load = |edit: &dyn Fn(&mut serde_json::Value), weights: Option<Vec<(String, Tensor)>>| -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config.clone();
        edit(&mut c);
        std::fs::write(dir.path().join("adapter_config.json"), c.to_string()).unwrap();
        match weights {
            Some(w) => artist_model::save_safetensors(&w, &dir.path().join("adapter_model.safetensors")).unwrap(),
            None => {
                std::fs::copy(fixture.join("adapter_model.safetensors"), dir.path().join("adapter_model.safetensors"))
                    .unwrap();
            }
        }
        let mut model = Qwen2::load(&base()).unwrap();
        model.load_lora(dir.path()).unwrap_err().to_string()
    };
    let e = try_load(&|c| c["peft_type"] = "IA3".into(), None);
    assert!(e.contains("peft_type"), "{e}");
    let e = try_load(&|c| c["target_modules"] = serde_json::json!(["q_proj", "lm_head"]), None);
    assert!(e.contains("lm_head"), "{e}");
    let e = try_load(&|c| c["use_dora"] = true.into(), None);
    assert!(e.contains("use_dora"), "{e}");
    let e = try_load(&|c| c["r"] = 0.into(), None);
    assert!(e.contains("rank"), "{e}");
    // One tensor short, one of the wrong shape, one too many.
    let good = {
        let mut m = Qwen2::load(&base()).unwrap();
        m.load_lora(&fixture).unwrap();
        m.lora_tensors()
    };
    let e = try_load(&|_| {}, Some(good[1..].to_vec()));
    assert!(e.contains(&good[0].0), "{e}");
    let mut bad = good.clone();
    bad[0].1 = Tensor::zeros((3, 3), DType::F32, Device::Cpu).unwrap();
    let e = try_load(&|_| {}, Some(bad));
    assert!(e.contains(&good[0].0) && e.contains("shape"), "{e}");
    let mut extra = good.clone();
    extra.push((
        "base_model.model.lm_head.lora_A.weight".into(),
        Tensor::zeros((4, 64), DType::F32, Device::Cpu).unwrap(),
    ));
    let e = try_load(&|_| {}, Some(extra));
    assert!(e.contains("lm_head.lora_A"), "{e}");
    // A truncated weights file, a config that is not JSON, a directory without adapters.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture.join("adapter_config.json"), dir.path().join("adapter_config.json")).unwrap();
    let bytes = std::fs::read(fixture.join("adapter_model.safetensors")).unwrap();
    std::fs::write(dir.path().join("adapter_model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let mut model = Qwen2::load(&base()).unwrap();
    let e = model.load_lora(dir.path()).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    // The failed load left the model as it was: no adapters, every weight trainable.
    assert!(model.lora().is_none() && model.params().iter().all(|p| p.trainable() && !p.name().contains("lora_")));
    std::fs::write(dir.path().join("adapter_config.json"), "{ r: 4").unwrap();
    let e = Qwen2::load(&base()).unwrap().load_lora(dir.path()).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("JSON"), "{e}");
    let e = Qwen2::load(&base()).unwrap().load_lora(&base()).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
}
