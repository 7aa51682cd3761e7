//! The `generate` and `score` binaries as a user runs them: their JSON output against the
//! transformers references, and clean non-zero exits on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2").join(name)
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("the binary runs")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[track_caller]
fn fails_cleanly(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should have failed");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

fn reference(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

#[test]
fn generate_greedy_matches_transformers() {
    let generate_bin = env!("CARGO_BIN_EXE_generate");
    for name in ["tiny-gqa", "tiny-bf16"] {
        let r = reference(name);
        let g = &r["greedy"][0];
        let prompt: Vec<String> = ids(&g["prompt_ids"]).iter().map(u64::to_string).collect();
        let dir = fixture(name);
        let out = run(
            generate_bin,
            &[
                "--model",
                dir.to_str().unwrap(),
                "--prompt-ids",
                &prompt.join(","),
                "--max-new-tokens",
                "32",
                "--ignore-eos",
                "--json",
            ],
        );
        let v = json(&out);
        assert_eq!(ids(&v["token_ids"]), ids(&g["new_ids"]), "{name}");
        assert_eq!(v["finish_reason"], "length");
        assert_eq!(v["logprobs"].as_array().unwrap().len(), 32);
        assert!(v["logprobs"].as_array().unwrap().iter().all(|l| l.as_f64().unwrap() <= 0.0));
        assert!(v["text"].is_string());
    }
}

/// `--matmul-dtype bf16 --kv-dtype bf16` reach the model: the greedy run's logprobs move by
/// bf16 rounding (not zero, not more than 0.05 nats on the first token, where both runs see
/// the same prompt).
#[test]
fn generate_with_bf16_products_and_cache() {
    let generate_bin = env!("CARGO_BIN_EXE_generate");
    let r = reference("tiny-gqa");
    let prompt: Vec<String> = ids(&r["greedy"][0]["prompt_ids"]).iter().map(u64::to_string).collect();
    let dir = fixture("tiny-gqa");
    let base = [
        "--model",
        dir.to_str().unwrap(),
        "--prompt-ids",
        &prompt.join(","),
        "--max-new-tokens",
        "8",
        "--ignore-eos",
        "--json",
        "--device",
        "cpu", // where the default, auto, is f32
    ];
    let f32_run = json(&run(generate_bin, &base));
    let bf16_args = [&base[..], &["--matmul-dtype", "bf16", "--kv-dtype", "bf16"]].concat();
    let bf16_run = json(&run(generate_bin, &bf16_args));
    assert_eq!(bf16_run["token_ids"].as_array().unwrap().len(), 8);
    let first = |v: &serde_json::Value| v["logprobs"][0].as_f64().unwrap();
    let gap = (first(&f32_run) - first(&bf16_run)).abs();
    assert!(gap > 0.0 && gap < 0.05, "first-token logprob moved by {gap}");
    fails_cleanly(&run(generate_bin, &[&base[..], &["--kv-dtype", "f16"]].concat()), "none of auto, f32 and bf16");
}

#[test]
fn generate_from_text_with_the_chat_template_and_sampling() {
    let generate_bin = env!("CARGO_BIN_EXE_generate");
    let dir = fixture("tiny-gqa");
    let d = dir.to_str().unwrap();
    let args = [
        "--model",
        d,
        "--prompt",
        "Hello, world",
        "--chat",
        "--temperature",
        "0.9",
        "--top-p",
        "0.9",
        "--seed",
        "7",
        "--max-new-tokens",
        "12",
        "--json",
    ];
    let (a, b) = (json(&run(generate_bin, &args)), json(&run(generate_bin, &args)));
    assert_eq!(a["token_ids"], b["token_ids"], "a seed repeats");
    // The chat prompt starts with <|im_start|> (id 289 in the fixture tokenizer).
    assert_eq!(a["prompt_ids"][0], 289);
    let n = a["token_ids"].as_array().unwrap().len();
    assert!((1..=12).contains(&n));
    // Stop strings end generation early.
    let plain = json(&run(
        generate_bin,
        &["--model", d, "--prompt", "abc", "--max-new-tokens", "20", "--ignore-eos", "--json"],
    ));
    let text = plain["text"].as_str().unwrap().to_string();
    if let Some(c) = text.chars().nth(2) {
        let stopped = json(&run(
            generate_bin,
            &[
                "--model",
                d,
                "--prompt",
                "abc",
                "--max-new-tokens",
                "20",
                "--ignore-eos",
                "--stop",
                &c.to_string(),
                "--json",
            ],
        ));
        assert_eq!(stopped["finish_reason"], "stop");
        assert!(stopped["text"].as_str().unwrap().contains(c));
    }
}

/// `--prompts`: a file of prompts generated together. The transformers references' greedy
/// prompts come out as transformers continues them (batched with each other and with a
/// text and a chat prompt, two samples each), the text and chat prompts as a single
/// `--prompt` run continues them, ids are carried through, bad lines are named and skipped.
#[test]
fn generate_a_file_of_prompts_together() {
    let generate_bin = env!("CARGO_BIN_EXE_generate");
    let dir = fixture("tiny-gqa");
    let d = dir.to_str().unwrap();
    let r = reference("tiny-gqa");
    let tmp = tempfile::tempdir().unwrap();
    let greedy = r["greedy"].as_array().unwrap();
    let mut lines: Vec<String> =
        greedy.iter().map(|g| serde_json::json!({"prompt_ids": g["prompt_ids"], "id": "ref"}).to_string()).collect();
    lines.push(r#"{"prompt": "Hello, world", "id": 7}"#.into());
    lines.push("not json".into());
    lines.push(r#"{"messages": [{"role": "user", "content": "abc"}]}"#.into());
    lines.push(r#"{"prompt": "x", "prompt_ids": [1]}"#.into());
    lines.push(r#"{"prompt_ids": [1, 999999]}"#.into());
    let file = tmp.path().join("prompts.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out_file = tmp.path().join("out.jsonl");
    let args = ["--model", d, "--max-new-tokens", "32", "--ignore-eos", "--n", "2", "--max-batch", "3"];
    let mut batch = args.to_vec();
    batch.extend(["--prompts", file.to_str().unwrap(), "--out", out_file.to_str().unwrap()]);
    let out = run(generate_bin, &batch);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {err}");
    for bad in [":4: skipped: not JSON", ":6: skipped: needs exactly one of", ":7: skipped: token id 999999"] {
        assert!(err.contains(bad), "stderr lacks {bad:?}: {err}");
    }
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(&out_file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 8, "4 usable prompts x 2 samples");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!((row["index"].as_u64(), row["sample"].as_u64()), (Some(i as u64 / 2), Some(i as u64 % 2)));
        assert_eq!(row["new_tokens"], 32);
        assert_eq!(row["finish_reason"], "length");
    }
    for (g, pair) in greedy.iter().zip(rows.chunks(2)) {
        for row in pair {
            assert_eq!(ids(&row["token_ids"]), ids(&g["new_ids"]), "a reference prompt in the batch");
            assert_eq!(row["id"], "ref");
        }
    }
    // The text and chat prompts as single runs give them.
    let single = |extra: &[&str]| {
        let mut a = args[..5].to_vec();
        a.extend(extra);
        a.push("--json");
        json(&run(generate_bin, &a))
    };
    let text = single(&["--prompt", "Hello, world"]);
    let chat = single(&["--prompt", "abc", "--chat"]);
    let k = greedy.len() * 2;
    assert_eq!(rows[k]["id"], 7);
    assert_eq!(rows[k]["token_ids"], text["token_ids"]);
    assert_eq!(rows[k + 2]["token_ids"], chat["token_ids"]);
    assert_eq!(rows[k + 2]["prompt_tokens"], chat["prompt_ids"].as_array().unwrap().len());
    assert!(rows[k + 2].get("id").is_none());

    // `-` reads the prompts from standard input.
    let mut child = std::process::Command::new(generate_bin)
        .args(["--model", d, "--max-new-tokens", "4", "--prompts", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"{\"prompt_ids\": [5, 6, 7]}\n").unwrap();
    let piped = child.wait_with_output().unwrap();
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));
    let row: serde_json::Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!((row["index"].as_u64(), row["prompt_tokens"].as_u64()), (Some(0), Some(3)));

    // A file with nothing usable is an error that names it.
    std::fs::write(&file, "{}\n").unwrap();
    fails_cleanly(&run(generate_bin, &["--model", d, "--prompts", file.to_str().unwrap()]), "no usable prompt");
    fails_cleanly(&run(generate_bin, &["--model", d, "--prompt-ids", "1,2", "--chat"]), "--chat");
}

#[test]
fn score_matches_transformers() {
    let score = env!("CARGO_BIN_EXE_score");
    let r = reference("tiny-mha-odd");
    let case = &r["cases"][2];
    let tokens: Vec<String> = ids(&case["input_ids"]).iter().map(u64::to_string).collect();
    let dir = fixture("tiny-mha-odd");
    let v = json(&run(score, &["--model", dir.to_str().unwrap(), "--token-ids", &tokens.join(","), "--json"]));
    let got: Vec<f64> = v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let want: Vec<f64> = case["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(got.len(), want.len());
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4));
    let ppl = (-want.iter().sum::<f64>() / want.len() as f64).exp();
    assert!((v["perplexity"].as_f64().unwrap() - ppl).abs() < 1e-3 * ppl);
    // A text file through the tokenizer.
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), "the cat sat on the mat").unwrap();
    let v =
        json(&run(score, &["--model", dir.to_str().unwrap(), "--text-file", tmp.path().to_str().unwrap(), "--json"]));
    assert_eq!(v["num_tokens"].as_u64().unwrap() as usize, v["logprobs"].as_array().unwrap().len() + 1);
}

#[test]
fn bad_input_exits_non_zero_with_a_message() {
    let (generate_bin, score) = (env!("CARGO_BIN_EXE_generate"), env!("CARGO_BIN_EXE_score"));
    let dir = fixture("tiny-gqa");
    let d = dir.to_str().unwrap();
    fails_cleanly(&run(generate_bin, &["--model", "/nonexistent/model", "--prompt-ids", "1"]), "not a model directory");
    fails_cleanly(&run(generate_bin, &["--model", d, "--prompt-ids", "1,311"]), "token id 311 is out of range");
    fails_cleanly(&run(generate_bin, &["--model", d, "--prompt", ""]), "empty");
    fails_cleanly(&run(generate_bin, &["--model", d, "--prompt-ids", "1,x"]), "\"x\" is not a token id");
    fails_cleanly(&run(generate_bin, &["--model", d, "--prompt-ids", "1", "--top-p", "0"]), "top_p");
    if !artist_tensor::cuda::driver_present() {
        fails_cleanly(&run(generate_bin, &["--model", d, "--prompt-ids", "1", "--device", "cuda"]), "CUDA driver");
    }
    fails_cleanly(&run(generate_bin, &["--model", d, "--prompt-ids", "1", "--device", "tpu"]), "unknown device");
    fails_cleanly(&run(score, &["--model", d, "--token-ids", "5"]), "at least 2 tokens");
    fails_cleanly(&run(score, &["--model", d, "--text-file", "/nonexistent.txt"]), "/nonexistent.txt");
    // A model directory with a truncated checkpoint.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
    }
    let w = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), &w[..w.len() - 100]).unwrap();
    fails_cleanly(&run(score, &["--model", tmp.path().to_str().unwrap(), "--token-ids", "1,2"]), "model.safetensors");
}

/// `--device cuda` runs the same computation on the GPU: on the CPU emulator of the CUDA
/// backend here (`ARTIST_CUDA=emulator`), on a GPU where the suite runs on one.
#[test]
fn generate_and_score_on_the_cuda_backend() {
    let (generate_bin, score) = (env!("CARGO_BIN_EXE_generate"), env!("CARGO_BIN_EXE_score"));
    let on_cuda = |bin: &str, args: &[&str]| -> Output {
        let mut c = Command::new(bin);
        c.args(args).args(["--device", "cuda"]);
        if bin.ends_with("generate") {
            // f32 products and KV cache, as on the CPU (a GPU's default, `auto`, is bf16).
            c.args(["--matmul-dtype", "f32", "--kv-dtype", "f32"]);
        }
        if !artist_tensor::cuda::driver_present() {
            c.env("ARTIST_CUDA", "emulator");
        }
        c.output().expect("the binary runs")
    };
    let r = reference("tiny-gqa");
    let g = &r["greedy"][0];
    let prompt: Vec<String> = ids(&g["prompt_ids"]).iter().map(u64::to_string).collect();
    let dir = fixture("tiny-gqa");
    let d = dir.to_str().unwrap();
    let args = ["--model", d, "--prompt-ids", &prompt.join(","), "--max-new-tokens", "32", "--ignore-eos", "--json"];
    let out = on_cuda(generate_bin, &args);
    let v = json(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("device cuda:0"), "the device is named on stderr");
    assert_eq!(ids(&v["token_ids"]), ids(&g["new_ids"]));
    let cpu = json(&run(generate_bin, &[&args[..], &["--device", "cpu"]].concat()));
    for (a, b) in v["logprobs"].as_array().unwrap().iter().zip(cpu["logprobs"].as_array().unwrap()) {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4, "logprob {a} on CUDA, {b} on the CPU");
    }
    let case = &r["cases"][2];
    let tokens: Vec<String> = ids(&case["input_ids"]).iter().map(u64::to_string).collect();
    let s = json(&on_cuda(score, &["--model", d, "--token-ids", &tokens.join(","), "--json"]));
    for (a, b) in s["logprobs"].as_array().unwrap().iter().zip(case["logprobs"].as_array().unwrap()) {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4, "score {a} vs transformers {b}");
    }
}

/// `--lora DIR`: PEFT's adapter files on top of `--model`; the logprobs are those of PEFT's
/// model (from its float64 logits, tests/fixtures/lora), and a directory that is not an
/// adapter is named.
#[test]
fn score_with_peft_adapters() {
    let score = env!("CARGO_BIN_EXE_score");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora");
    let seqs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("sequences.json")).unwrap()).unwrap();
    let seq = ids(&seqs["sequences"][0]);
    let tokens: Vec<String> = seq.iter().map(u64::to_string).collect();
    let (model, adapters) = (fixture("tiny-gqa"), root.join("r4-partial"));
    let args = ["--model", model.to_str().unwrap(), "--token-ids", &tokens.join(","), "--json"];
    let v = json(&run(score, &[&args[..], &["--lora", adapters.to_str().unwrap()]].concat()));
    let got: Vec<f64> = v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    // PEFT's logits of the sequence (its first rows of the packed batch), as log-softmax.
    let vocab = 311;
    let rows = ids(&seqs["sequences"][0]).len() + ids(&seqs["sequences"][1]).len();
    let expected = artist::model::Weights::open_file(&adapters.join("expected.safetensors")).unwrap();
    let logits = expected.get("logits", &[rows, vocab]).unwrap().to_vec::<f32>().unwrap();
    let want: Vec<f64> = (0..seq.len() - 1)
        .map(|t| {
            let row: Vec<f64> = logits[t * vocab..(t + 1) * vocab].iter().map(|&x| x as f64).collect();
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            row[seq[t + 1] as usize] - lse
        })
        .collect();
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 1e-4, "logprobs {worst:e} from PEFT's");
    let plain = json(&run(score, &args));
    assert_ne!(plain["logprobs"], v["logprobs"], "the adapters changed nothing");
    fails_cleanly(&run(score, &[&args[..], &["--lora", model.to_str().unwrap()]].concat()), "adapter_config.json");
}
