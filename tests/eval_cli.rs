//! `eval` as a user runs it: `verify` gives one JSON verdict per input line, in order, bad
//! lines reported and skipped; model evaluation runs end to end on a tiny fixture model
//! over a bundled MATH-style file, with pass@k and one JSON line per sample.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eval")).args(args).output().expect("eval runs")
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone())
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Every line of a JSON Lines file the binary wrote.
fn read_jsonl(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[track_caller]
fn fails_cleanly(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should have failed");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

const PAIRS: &str = r#"{"gold": "\\frac{1}{2}", "pred": "0.5"}
{"gold": "(1,2)", "pred": "[1,2)"}
{"gold": "x = 3", "pred": "$3$", "id": 7}
not json

{"gold": "5"}
{"gold": 204, "pred": "204"}
{"gold": ["a"], "pred": "a"}
{"gold": "1", "pred": ""}
{"gold": "50\\%", "pred": "\\frac{1}{2}"}
"#;

#[test]
fn verify_prints_one_verdict_per_line_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    std::fs::write(&path, PAIRS).unwrap();
    let out = lines(&eval(&["verify", "--jsonl", path.to_str().unwrap()]));
    assert_eq!(out.len(), PAIRS.lines().count());

    assert_eq!(out[0], serde_json::json!({"equal": true, "gold_normalized": "1/2", "pred_normalized": "0.5"}));
    assert_eq!(out[1]["equal"], false);
    assert_eq!(out[1]["gold_normalized"], "(1, 2)");
    assert_eq!(out[1]["pred_normalized"], "[1, 2)");
    assert_eq!(out[2]["equal"], true);
    assert_eq!(out[2]["gold_normalized"], "x = 3");
    assert_eq!(out[6]["equal"], true);
    assert_eq!(out[9]["equal"], true);
    // An unreadable answer: not equal, normalized to null.
    assert_eq!(out[8], serde_json::json!({"equal": false, "gold_normalized": "1", "pred_normalized": null}));

    let error =
        |i: usize| out[i]["error"].as_str().unwrap_or_else(|| panic!("line {} has no error: {}", i + 1, out[i]));
    assert!(error(3).starts_with("line 4: not JSON"), "{}", error(3));
    assert_eq!(error(4), "line 5: empty line");
    assert_eq!(error(5), "line 6: missing field \"pred\"");
    assert_eq!(error(7), "line 8: field \"gold\" is not a string");
    for i in [3, 4, 5, 7] {
        assert_eq!(out[i]["equal"], false);
        assert_eq!(out[i].as_object().unwrap().len(), 2, "{}", out[i]);
    }
}

#[test]
fn verify_reads_stdin_and_survives_hostile_answers() {
    let hostile = format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000));
    let input = format!(
        "{}\n{}\n",
        serde_json::json!({"gold": "2", "pred": hostile}),
        serde_json::json!({"gold": "2^2^2^2^2^2^2", "pred": "4"})
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(["verify", "--jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = lines(&child.wait_with_output().unwrap());
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["equal"], false);
    assert_eq!(out[0]["pred_normalized"], Value::Null);
    assert_eq!(out[1]["equal"], false);
}

#[test]
fn bad_invocations_fail_cleanly() {
    fails_cleanly(&eval(&["verify", "--jsonl", "/nonexistent/pairs.jsonl"]), "/nonexistent/pairs.jsonl");
    fails_cleanly(&eval(&["--model", "m", "--dataset", "/nonexistent/d.jsonl"]), "/nonexistent/d.jsonl");
    fails_cleanly(&eval(&["--model", "m", "--dataset", "d.jsonl", "--format", "nope"]), "dataset format");
    fails_cleanly(&eval(&[]), "eval verify --jsonl");
    fails_cleanly(&eval(&["verify"]), "--jsonl");
    fails_cleanly(&eval(&["--model", "m", "--dataset", "d.jsonl", "--kv-dtype", "fp8"]), "none of auto, f32 and bf16");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (model, data) =
        (root.join("tests/fixtures/qwen2/tiny-gqa"), root.join("tests/fixtures/math/mini-math500.jsonl"));
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());
    fails_cleanly(&eval(&["--model", model, "--dataset", data, "--tools", "mcp"]), "--tools mcp needs --mcp-command");
    let absent = ["--model", model, "--dataset", data, "--tools", "mcp", "--mcp-command", "/nonexistent/server"];
    fails_cleanly(&eval(&absent), "/nonexistent/server");
    let url = ["--model", model, "--dataset", data, "--tools", "mcp", "--mcp-url", "http://127.0.0.1:9/mcp"];
    fails_cleanly(&eval(&[&url[..], &["--mcp-header", "no colon"]].concat()), "expected `Name: value`");
    fails_cleanly(&eval(&url), "connection refused");
    fails_cleanly(&eval(&[&url[..], &["--mcp-command", "python3 -c pass"]].concat()), "before anything listened");
}

#[test]
fn evaluates_a_model_end_to_end() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    // The bundled file plus a malformed row and a row without an answer.
    let data = tmp.path().join("mini.jsonl");
    let mut text = std::fs::read_to_string(root.join("tests/fixtures/math/mini-math500.jsonl")).unwrap();
    text.push_str("{\"problem\": \"broken\"\n{\"problem\": \"no answer here\"}\n");
    std::fs::write(&data, text).unwrap();
    let model = root.join("tests/fixtures/qwen2/tiny-gqa");
    let (samples, kept) = (tmp.path().join("samples.jsonl"), tmp.path().join("kept.jsonl"));
    let out = eval(&[
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--preset",
        "math500",
        "--k",
        "2",
        "--samples",
        "3",
        "--temperature",
        "1.0",
        "--tools",
        "calculator",
        "--max-new-tokens",
        "8",
        "--out",
        samples.to_str().unwrap(),
        "--keep",
        kept.to_str().unwrap(),
        "--keep-above",
        "-0.5",
        "--keep-below",
        "0.5",
        "--json",
    ]);
    let summary = &lines(&out)[0];
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mini.jsonl:9") && err.contains("mini.jsonl:10"), "bad rows are named: {err}");
    assert_eq!((summary["problems"].as_u64(), summary["bad_rows"].as_u64()), (Some(8), Some(2)));
    let (p1, pk) = (summary["pass_at_1"].as_f64().unwrap(), summary["pass_at_k"].as_f64().unwrap());
    assert!((0.0..=1.0).contains(&p1) && pk >= p1 && pk <= 1.0, "{summary}");
    let rows = read_jsonl(&samples);
    assert_eq!(rows.len(), 24);
    for r in &rows {
        for key in ["problem", "completion", "extracted", "correct", "gold"] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
        assert!(r["response_tokens"].as_u64().unwrap() <= 8 * 9);
    }
    // maj@3 from the samples written out: per problem, the extracted answer with the most
    // equal answers among the three (the lowest sample on a tie), graded as its sample was.
    let mut voted = 0;
    for p in 0..8 {
        let mut mine: Vec<&Value> = rows.iter().filter(|r| r["problem_index"] == p).collect();
        mine.sort_by_key(|r| r["sample"].as_u64());
        let votes = |a: &str| {
            mine.iter().filter_map(|r| r["extracted"].as_str()).filter(|b| artist_math::equivalent(a, b)).count()
        };
        let best = mine.iter().filter(|r| r["extracted"].is_string()).fold(None::<(&Value, usize)>, |best, r| {
            let v = votes(r["extracted"].as_str().unwrap());
            if best.is_none_or(|(_, b)| v > b) { Some((r, v)) } else { best }
        });
        voted += best.is_some_and(|(r, _)| r["correct"] == true) as usize;
    }
    assert_eq!(summary["maj_at_n"].as_f64(), Some(voted as f64 / 8.0), "{summary}");
    // --keep: the problems whose samples were right less than half the time, as the
    // samples written out say, readable as a math500 data set with their pass rates.
    let rate = |p: u64| {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["problem_index"] == p).collect();
        mine.iter().filter(|r| r["correct"] == true).count() as f64 / mine.len() as f64
    };
    let want: Vec<u64> = (0..8).filter(|&p| rate(p) < 0.5).collect();
    let written = artist_math::MathDataset::load(&kept, &"math500".parse().unwrap()).unwrap();
    assert_eq!(written.problems.len(), want.len());
    assert_eq!(summary["kept"].as_u64(), Some(want.len() as u64));
    let kept_rows = std::fs::read_to_string(&kept).unwrap();
    for ((p, line), row) in want.iter().zip(kept_rows.lines()).zip(&written.problems) {
        let first = rows.iter().find(|r| r["problem_index"] == *p).unwrap();
        assert_eq!(
            (row.problem.as_str(), row.answer.as_str()),
            (first["problem"].as_str().unwrap(), first["gold"].as_str().unwrap())
        );
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["pass_rate"].as_f64(), Some(rate(*p)));
    }
    let bounds = eval(&[
        "--model",
        "m",
        "--dataset",
        "d.jsonl",
        "--keep",
        "k.jsonl",
        "--keep-above",
        "0.5",
        "--keep-below",
        "0.5",
    ]);
    fails_cleanly(&bounds, "--keep-above");
}

/// pass@k against its definition on small cases, through the binary's summary: with
/// greedy decoding every sample of a problem is the same, so pass@k equals pass@1.
#[test]
fn greedy_pass_at_k_equals_pass_at_1() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = eval(&[
        "--model",
        root.join("tests/fixtures/qwen2/tiny-gqa").to_str().unwrap(),
        "--dataset",
        root.join("tests/fixtures/math/mini-math500.jsonl").to_str().unwrap(),
        "--k",
        "2",
        "--temperature",
        "0",
        "--tools",
        "none",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    let s = &lines(&out)[0];
    assert_eq!(s["pass_at_1"], s["pass_at_k"]);
}

/// bf16 products and a bf16 KV cache (`--matmul-dtype bf16 --kv-dtype bf16`): the same
/// evaluation runs and reports.
#[test]
fn evaluates_with_bf16_products_and_cache() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = eval(&[
        "--model",
        root.join("tests/fixtures/qwen2/tiny-gqa").to_str().unwrap(),
        "--dataset",
        root.join("tests/fixtures/math/mini-math500.jsonl").to_str().unwrap(),
        "--temperature",
        "0",
        "--tools",
        "none",
        "--max-new-tokens",
        "4",
        "--matmul-dtype",
        "bf16",
        "--kv-dtype",
        "bf16",
        "--json",
    ]);
    let s = &lines(&out)[0];
    assert_eq!(s["problems"].as_u64(), Some(8), "{s}");
}

/// The BFCL data beside the repository, or `None` (skipped) unless CI requires it.
fn bfcl_dir() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bfcl");
    if dir.join("questions").is_dir() {
        return Some(dir);
    }
    assert!(std::env::var("ARTIST_REQUIRE_SHARED").is_err(), "ARTIST_REQUIRE_SHARED=1 but no {}", dir.display());
    eprintln!("skipped: no BFCL data at {}", dir.display());
    None
}

/// `eval --dataset Q --answers A --replay-ground-truth --json`: the stable interface
/// (`accuracy`, `entries[].{id, correct}`); `--replay-from` scores another file's calls.
#[test]
fn bfcl_replay_interface() {
    let Some(bfcl) = bfcl_dir() else { return };
    let q = bfcl.join("questions/BFCL_v4_multi_turn_miss_func.json");
    let a = bfcl.join("possible_answer/BFCL_v4_multi_turn_miss_func.json");
    let (q, a) = (q.to_str().unwrap(), a.to_str().unwrap());
    let out = lines(&eval(&["--dataset", q, "--answers", a, "--replay-ground-truth", "--json"]));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["accuracy"], 1.0);
    let entries = out[0]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 200);
    assert!(
        entries.iter().all(|e| e["correct"] == true && e["id"].as_str().unwrap().starts_with("multi_turn_miss_func_"))
    );

    // The same calls from a file, with one argument changed in entry 0 and entry 1 left out.
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(a).unwrap();
    let mut lines_out: Vec<String> = text.lines().map(str::to_owned).collect();
    let first: Value = serde_json::from_str(&lines_out[0]).unwrap();
    let changed = first.to_string().replacen("='", "='x", 1);
    assert_ne!(changed, first.to_string());
    lines_out[0] = changed;
    lines_out.remove(1);
    let file = tmp.path().join("calls.json");
    std::fs::write(&file, lines_out.join("\n")).unwrap();
    let out = lines(&eval(&[
        "--dataset",
        q,
        "--answers",
        a,
        "--replay-ground-truth",
        "--replay-from",
        file.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(out[0]["correct"], 198);
    assert_eq!(out[0]["entries"][0]["correct"], false);
    assert_eq!(out[0]["entries"][1]["correct"], false);

    // No source of calls is a clear error.
    fails_cleanly(&eval(&["--dataset", q, "--answers", a]), "--replay-ground-truth");

    // A malformed line is named.
    std::fs::write(&file, "{\"id\": \"multi_turn_miss_func_0\", \"ground_truth\": [[\"ls()\"]]}\n{bad\n").unwrap();
    let out = eval(&["--dataset", q, "--answers", a, "--replay-ground-truth", "--replay-from", file.to_str().unwrap()]);
    fails_cleanly(&out, "calls.json:2: invalid JSON");
}

/// A model that answers `\boxed{4}` or `\boxed{5}`, 3 : 2, whatever it is asked, written
/// into `dir` from tiny-gqa's files: every layer's output projections are zero, so the last
/// position's hidden state is its token's embedding; the embeddings are one-hot, each token
/// of the chain `\ b o x e d { 4|5 }` on a dimension of its own and every other token on one
/// shared "start" dimension; the LM head gives the next token of the chain a logit of 40
/// (the end of turn after `}`) and every other token 0.
fn scripted_model(dir: &std::path::Path) {
    use artist_model::Weights;
    use artist_tensor::{Device, Tensor};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/fixtures/qwen2/tiny-gqa");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let tok = artist_tokenizer::Tokenizer::from_file(src.join("tokenizer.json")).unwrap();
    let id = |s: &str| {
        let ids = tok.encode(s).unwrap();
        assert_eq!(ids.len(), 1, "{s:?} is one token");
        ids[0] as usize
    };
    let chain: Vec<usize> = ["\\", "b", "o", "x", "e", "d", "{", "4", "5", "}"].iter().map(|s| id(s)).collect();
    let end_of_turn = 290; // <|im_end|>, the fixture's eos_token_id
    let (vocab, hidden) = (311, 64);
    // Dimension 0: every token off the chain; chain token i: dimension i + 1.
    let dim = |t: usize| chain.iter().position(|&c| c == t).map_or(0, |i| i + 1);
    let mut embed = vec![0f32; vocab * hidden];
    for t in 0..vocab {
        embed[t * hidden + dim(t)] = 1.0;
    }
    // RMSNorm makes a one-hot row sqrt(64) = 8 times the unit vector: a weight of 5 is a logit of 40.
    let mut head = vec![0f32; vocab * hidden];
    let mut next = |from_dim: usize, to: usize, logit: f32| head[to * hidden + from_dim] = logit / 8.0;
    next(0, chain[0], 40.0);
    for i in 0..6 {
        next(i + 1, chain[i + 1], 40.0); // \ b o x e d -> b o x e d {
    }
    next(7, chain[7], 40.0 + 1.5f32.ln()); // { -> 4 (3 in 5) or 5 (2 in 5)
    next(7, chain[8], 40.0);
    next(8, chain[9], 40.0); // 4 -> }
    next(9, chain[9], 40.0); // 5 -> }
    next(10, end_of_turn, 40.0); // } -> end of turn
    let w = Weights::open(&src).unwrap();
    let tensors: Vec<(String, Tensor)> = w
        .names()
        .map(|name| {
            let shape = w.shape(name).unwrap();
            let t = match name {
                "model.embed_tokens.weight" => Tensor::from_vec(embed.clone(), shape, Device::Cpu).unwrap(),
                "lm_head.weight" => Tensor::from_vec(head.clone(), shape, Device::Cpu).unwrap(),
                "model.norm.weight" => Tensor::from_vec(vec![1f32; hidden], shape, Device::Cpu).unwrap(),
                n if n.ends_with("o_proj.weight") || n.ends_with("down_proj.weight") => {
                    let len = shape.iter().product();
                    Tensor::from_vec(vec![0f32; len], shape, Device::Cpu).unwrap()
                }
                _ => w.get(name, &shape).unwrap(),
            };
            (name.to_string(), t)
        })
        .collect();
    artist_model::save_safetensors(&tensors, &dir.join("model.safetensors")).unwrap();
}

/// `--keep` on a model whose pass rates differ: the scripted model above answers 4 or 5,
/// so problems whose answer is 4 or 5 are solved sometimes and the others never. The
/// problems kept (solved sometimes, not always, by default) are those the samples written
/// out say (some are and some are not), each with its line and rate, and pass@1 and
/// pass@k are those of the same samples.
#[test]
fn keeps_the_problems_solved_sometimes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    scripted_model(&model);
    let golds = ["4", "5", "7", "4", "9", "5", "4", "5"];
    let data = tmp.path().join("data.jsonl");
    let text: String = (golds.iter().enumerate())
        .map(|(i, g)| format!("{{\"problem\": \"What is {i} + 1?\", \"answer\": \"{g}\"}}\n"))
        .collect();
    std::fs::write(&data, text).unwrap();
    let (samples, kept) = (tmp.path().join("samples.jsonl"), tmp.path().join("kept.jsonl"));
    let out = eval(&[
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--preset",
        "math500",
        "--samples",
        "4",
        "--k",
        "2",
        "--temperature",
        "1.0",
        "--tools",
        "none",
        "--max-new-tokens",
        "16",
        "--out",
        samples.to_str().unwrap(),
        "--keep",
        kept.to_str().unwrap(),
        "--json",
    ]);
    let summary = &lines(&out)[0];
    let rows = read_jsonl(&samples);
    assert_eq!(rows.len(), 32);
    for r in &rows {
        let answer = r["extracted"].as_str().unwrap_or_default();
        assert!(answer == "4" || answer == "5", "the scripted model answers 4 or 5: {r}");
    }
    let correct = |p: usize| rows.iter().filter(|r| r["problem_index"] == p && r["correct"] == true).count();
    let rates: Vec<f64> = (0..8).map(|p| correct(p) as f64 / 4.0).collect();
    for (p, g) in golds.iter().enumerate() {
        assert!((*g == "4" || *g == "5") || rates[p] == 0.0, "problem {p}: {rates:?}");
    }
    let want: Vec<usize> = (0..8).filter(|&p| 0.0 < rates[p] && rates[p] < 1.0).collect();
    assert!(!want.is_empty() && want.len() < 8, "the samples make the test show nothing: {rates:?}");
    let kept_rows = read_jsonl(&kept);
    assert_eq!(kept_rows.len(), want.len(), "{rates:?}: {kept_rows:?}");
    for (row, &p) in kept_rows.iter().zip(&want) {
        assert_eq!(row["problem"].as_str(), Some(format!("What is {p} + 1?").as_str()));
        assert_eq!((row["pass_rate"].as_f64(), row["line"].as_u64()), (Some(rates[p]), Some(p as u64 + 1)));
    }
    assert_eq!(summary["kept"].as_u64(), Some(want.len() as u64));
    // pass@1 is the mean rate; pass@2 of c right in 4 is 1 - C(4 - c, 2) / C(4, 2).
    let pass2 = |c: usize| 1.0 - [6.0, 3.0, 1.0, 0.0, 0.0][c] / 6.0;
    let (p1, p2): (f64, f64) = (rates.iter().sum::<f64>() / 8.0, (0..8).map(|p| pass2(correct(p))).sum::<f64>() / 8.0);
    assert!((summary["pass_at_1"].as_f64().unwrap() - p1).abs() < 1e-12, "{summary} vs {p1}");
    assert!((summary["pass_at_k"].as_f64().unwrap() - p2).abs() < 1e-12, "{summary} vs {p2}");
    assert!(p1 > 0.0 && p2 > p1, "{p1} {p2}");
}

/// `--judge-command`: an external judge grades instead of math equivalence. The scripted
/// model answers 4 or 5; a judge that passes any completion holding a 5 makes problems
/// whose answer is 7 or 9 pass exactly on the samples that answered 5 (math equivalence
/// passes none of them), and a judge that answers nonsense is an error naming it.
#[test]
fn an_external_judge_grades_the_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    scripted_model(&model);
    let data = tmp.path().join("data.jsonl");
    std::fs::write(&data, "{\"problem\": \"a\", \"answer\": \"7\"}\n{\"problem\": \"b\", \"answer\": \"9\"}\n")
        .unwrap();
    let judge = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/judge/judge.py");
    let samples = tmp.path().join("samples.jsonl");
    let run_on = |data: &std::path::Path, judge_mode: Option<&str>, tools: &[&str]| {
        let mut args = vec![
            "--model".to_string(),
            model.to_str().unwrap().into(),
            "--dataset".into(),
            data.to_str().unwrap().into(),
            "--preset".into(),
            "math500".into(),
            "--samples".into(),
            "6".into(),
            "--temperature".into(),
            "1.0".into(),
            "--max-new-tokens".into(),
            "16".into(),
            "--out".into(),
            samples.to_str().unwrap().into(),
            "--json".into(),
        ];
        if let Some(mode) = judge_mode {
            // Quoted as a shell would quote it; two copies grade at once.
            args.extend(["--judge-command".into(), format!("python3 '{}' {mode}", judge.display())]);
            args.extend(["--judge-workers".into(), "2".into()]);
        }
        args.extend(tools.iter().map(|s| s.to_string()));
        eval(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let run = |judge_mode: Option<&str>| run_on(&data, judge_mode, &["--tools", "none"]);
    let plain = &lines(&run(None))[0];
    assert_eq!(plain["pass_at_1"].as_f64(), Some(0.0));
    let judged = &lines(&run(Some("five")))[0];
    let rows = read_jsonl(&samples);
    assert_eq!(rows.len(), 12);
    let fives = rows.iter().filter(|r| r["extracted"] == "5").count();
    for r in &rows {
        assert_eq!(r["correct"].as_bool(), Some(r["extracted"] == "5"), "{r}");
    }
    assert!(fives > 0 && fives < 12, "{fives} of 12 answered 5: the test shows nothing");
    assert_eq!(judged["pass_at_1"].as_f64(), Some(fives as f64 / 12.0), "{judged}");
    assert_eq!(judged["mean_score"].as_f64(), Some(fives as f64 / 12.0), "{judged}");
    // Partial credit: each sample's score written, their mean in the summary; "correct" as
    // the judge said (0.5 with "correct": true counts, 0.25 alone does not).
    let partial = &lines(&run(Some("partial")))[0];
    let rows = read_jsonl(&samples);
    for r in &rows {
        let five = r["extracted"] == "5";
        assert_eq!((r["correct"].as_bool(), r["score"].as_f64()), (Some(five), Some(if five { 0.5 } else { 0.25 })));
    }
    assert_eq!(partial["pass_at_1"].as_f64(), Some(fives as f64 / 12.0), "{partial}");
    let mean = (0.5 * fives as f64 + 0.25 * (12 - fives) as f64) / 12.0;
    assert!((partial["mean_score"].as_f64().unwrap() - mean).abs() < 1e-12, "{partial} vs {mean}");
    fails_cleanly(&run(Some("bad-score")), "\"score\" is not a number from 0 to 1");
    let out = run(Some("garbage"));
    fails_cleanly(&out, "judge.py garbage");
    fails_cleanly(&out, "not JSON");

    // An MCP server per sample with a state tool: each sample's final state (the initial
    // one: the model makes no call) is written and given to the judge, which passes the
    // answers it holds.
    let stated = tmp.path().join("stated.jsonl");
    std::fs::write(&stated, "{\"problem\": \"a\", \"answer\": \"count\"}\n{\"problem\": \"b\", \"answer\": \"7\"}\n")
        .unwrap();
    let server = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/server.py");
    let server = format!("python3 {}", server.display());
    let mcp = ["--tools", "mcp", "--mcp-command", &server, "--mcp-sessions", "rollout", "--mcp-state-tool", "state"];
    let summary = &lines(&run_on(&stated, Some("state"), &mcp))[0];
    assert_eq!(summary["pass_at_1"].as_f64(), Some(0.5), "{summary}");
    let rows = read_jsonl(&samples);
    assert_eq!(rows.len(), 12);
    for r in &rows {
        assert_eq!(r["final_state"], r#"{"count": 0, "last": null}"#, "{r}");
        assert_eq!(r["correct"], r["gold"] == "count", "{r}");
    }
}

/// `eval --answers` with `--mcp-command`: BFCL-format entries played on an MCP server's
/// tools (tests/fixtures/mcp/episodes on the fixture server), one server per entry, scored
/// by the states the servers were in after each turn against the ground truth's. The tiny
/// model calls nothing, so no entry passes, and each fails for its empty first turn; the
/// flags the environment needs are asked for by name.
#[test]
fn bfcl_format_entries_on_an_mcp_server() {
    if !std::process::Command::new("python3").arg("-c").arg("pass").status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fixtures/mcp/episodes");
    let (q, a) = (dir.join("questions.jsonl"), dir.join("answers.jsonl"));
    let model = root.join("tests/fixtures/qwen2/tiny-gqa");
    let server = format!("python3 {}", root.join("tests/fixtures/mcp/server.py").display());
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("entries.jsonl");
    let mut args = vec![
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        q.to_str().unwrap(),
        "--answers",
        a.to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "--mcp-command",
        &server,
    ];
    fails_cleanly(&eval(&args), "--mcp-sessions rollout");
    args.extend(["--mcp-sessions", "rollout"]);
    fails_cleanly(&eval(&args), "--mcp-state-tool");
    args.extend([
        "--mcp-state-tool",
        "state",
        "--mcp-setup-tool",
        "setup",
        "--json",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    let out = lines(&eval(&args));
    assert_eq!(out[0]["accuracy"], 0.0);
    let ids: Vec<&str> = out[0]["entries"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["counter_0", "counter_1", "counter_miss_0"]);
    let written: Vec<Value> =
        std::fs::read_to_string(&out_file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for e in &written {
        assert_eq!(e["error_type"], "multi_turn:empty_turn_model_response", "{e}");
        assert_eq!(e["tool_calls"], 0, "{e}");
    }
    // Three episodes of each entry at temperature 1: pass@2 and pass^2 beside accuracy,
    // every episode a row with its sample number.
    let mut sampled = args.clone();
    sampled.extend(["--samples", "3", "--k", "2", "--temperature", "1"]);
    let out = lines(&eval(&sampled));
    assert_eq!(
        (out[0]["samples"].as_u64(), out[0]["k"].as_u64(), out[0]["total"].as_u64()),
        (Some(3), Some(2), Some(9))
    );
    assert_eq!((out[0]["pass_at_k"].as_f64(), out[0]["pass_hat_k"].as_f64()), (Some(0.0), Some(0.0)));
    let rows: Vec<(String, u64)> = (out[0]["entries"].as_array().unwrap().iter())
        .map(|e| (e["id"].as_str().unwrap().to_string(), e["sample"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        rows[..4],
        [("counter_0".into(), 0), ("counter_0".into(), 1), ("counter_0".into(), 2), ("counter_1".into(), 0)]
    );
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(written.lines().count(), 9);
    let k = sampled.iter().position(|a| *a == "--k").unwrap();
    sampled[k + 1] = "4";
    fails_cleanly(&eval(&sampled), "--samples (3) at least --k (4)");
    // A user program writes the turns after the first (tests/fixtures/mcp/user.py, with
    // talk_0's two-message script): three turns played, scored as one.
    let user = format!("python3 {}", root.join("tests/fixtures/mcp/user.py").display());
    let (tq, ta) = (dir.join("talk_questions.jsonl"), dir.join("talk_answers.jsonl"));
    let mut talk = args.clone();
    talk[3] = tq.to_str().unwrap();
    talk[5] = ta.to_str().unwrap();
    talk.extend(["--user-command", &user, "--user-workers", "2"]);
    let out = lines(&eval(&talk));
    assert_eq!(out[0]["entries"][0]["id"], "talk_0");
    let written: Value = serde_json::from_str(std::fs::read_to_string(&out_file).unwrap().trim()).unwrap();
    assert_eq!((written["turns_played"].as_u64(), written["calls"].as_array().map(Vec::len)), (Some(3), Some(3)));
    // A setup tool has nothing to set up for single-turn samples.
    let math = root.join("tests/fixtures/math/mini-math500.jsonl");
    let out = eval(&[
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        math.to_str().unwrap(),
        "--tools",
        "mcp",
        "--mcp-command",
        &server,
        "--mcp-sessions",
        "rollout",
        "--mcp-setup-tool",
        "setup",
    ]);
    fails_cleanly(&out, "--mcp-setup-tool");
}
