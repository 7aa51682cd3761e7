//! The pieces together, as a user runs them: a tiny model fine-tuned (`train --mode sft`)
//! on one ARTIST-format trace learns to open a `<python>` call; `generate --tools python`
//! then pauses at the closing tag, runs the code in the sandbox, forces the output in with
//! mask 0, and carries on.

use std::path::{Path, PathBuf};
use std::process::Command;

use artist_tokenizer::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2").join(name)
}

fn python_available() -> bool {
    Command::new("python3").arg("-c").arg("pass").status().is_ok_and(|s| s.success())
}

const PROMPT: &str = "Q: 6*7? A:";

/// tiny-gqa fine-tuned (`train --mode sft`, `steps` steps) on one trace: [`PROMPT`], the
/// model's `call` block, the tool's output 42 (mask 0), the answer; returns the final model.
fn fine_tuned_to_call(dir: &Path, call: &str, steps: &str) -> PathBuf {
    let base = fixture("tiny-gqa");
    let tok = Tokenizer::from_dir(&base).unwrap();
    let (output, answer) = ("<output>\n42\n</output>\n", "<answer>42</answer>");
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for (text, m) in [(PROMPT, 0u8), (call, 1), (output, 0), (answer, 1)] {
        let t = tok.encode(text).unwrap();
        mask.extend(std::iter::repeat_n(m, t.len()));
        ids.extend(t);
    }
    let data = dir.join("trace.jsonl");
    std::fs::write(&data, serde_json::json!({"input_ids": ids, "loss_mask": mask}).to_string()).unwrap();
    let run = dir.join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["--mode", "sft", "--model", base.to_str().unwrap(), "--data", data.to_str().unwrap()])
        .args([
            "--out",
            run.to_str().unwrap(),
            "--steps",
            steps,
            "--lr",
            "1e-2",
            "--weight-decay",
            "0",
            "--no-progress",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "train: {}", String::from_utf8_lossy(&out.stderr));
    run.join("final")
}

/// `generate --json`'s first tool call, after checking that its output was forced in with
/// mask 0 exactly where the call record says, after model tokens only.
fn first_forced_call(v: &serde_json::Value) -> &serde_json::Value {
    let calls = v["tool_calls"].as_array().unwrap();
    assert!(!calls.is_empty(), "no tool call: {}", v["text"]);
    let (start, len) =
        (calls[0]["output_start"].as_u64().unwrap() as usize, calls[0]["output_len"].as_u64().unwrap() as usize);
    let mask: Vec<u64> = v["mask"].as_array().unwrap().iter().map(|m| m.as_u64().unwrap()).collect();
    assert!(mask[start..start + len].iter().all(|&m| m == 0) && mask[..start].iter().all(|&m| m == 1));
    &calls[0]
}

#[test]
fn a_fine_tuned_model_calls_python_through_generate() {
    if !python_available() {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = fine_tuned_to_call(tmp.path(), "<python>print(6*7)</python>", "40");
    let out = Command::new(env!("CARGO_BIN_EXE_generate"))
        .args(["--model", model.to_str().unwrap(), "--prompt", PROMPT, "--tools", "python"])
        .args(["--max-new-tokens", "40", "--tool-timeout-s", "10", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "generate: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let call = first_forced_call(&v);
    assert_eq!(call["call"], "print(6*7)");
    assert_eq!(call["result"]["success"], true, "{call}");
    assert_eq!(call["result"]["output"].as_str().unwrap().trim(), "42");
    let text = v["text"].as_str().unwrap();
    assert!(text.starts_with("<python>print(6*7)</python><output>\n42"), "{text}");
}

/// The same with an MCP server's function: a tiny model fine-tuned on one trace that calls
/// `add` in `<tool>` JSON; `generate --tools mcp --mcp-command "python3 server.py"` starts
/// the server, runs the model's call there and forces its result in with mask 0; `tool mcp`
/// runs one call from the command line and lists the server's functions.
#[test]
fn a_fine_tuned_model_calls_an_mcp_server_through_generate() {
    if !python_available() {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = format!("python3 {}", root.join("tests/fixtures/mcp/server.py").display());
    let tmp = tempfile::tempdir().unwrap();
    let call = r#"{"name": "add", "arguments": {"a": 6, "b": 36}}"#;
    let tool_text = format!("<tool>{call}</tool>");
    let model = fine_tuned_to_call(tmp.path(), &tool_text, "60");
    let out = Command::new(env!("CARGO_BIN_EXE_generate"))
        .args(["--model", model.to_str().unwrap(), "--prompt", PROMPT, "--tools", "mcp"])
        .args(["--mcp-command", &server, "--max-new-tokens", "60", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "generate: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = first_forced_call(&v);
    assert_eq!(first["call"], call);
    assert_eq!((first["result"]["success"].as_bool(), first["result"]["output"].as_str()), (Some(true), Some("42")));
    assert!(v["text"].as_str().unwrap().starts_with(&format!("{tool_text}<output>\n42\n</output>")), "{}", v["text"]);
    // The same call to a server of the rollout's own (`--mcp-sessions rollout`), whose state
    // is read when the rollout ends: the sum the model's call left there.
    let out = Command::new(env!("CARGO_BIN_EXE_generate"))
        .args(["--model", model.to_str().unwrap(), "--prompt", PROMPT, "--tools", "mcp"])
        .args(["--mcp-command", &server, "--mcp-sessions", "rollout", "--mcp-state-tool", "state"])
        .args(["--max-new-tokens", "60", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "generate: {}", String::from_utf8_lossy(&out.stderr));
    let own: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let result = &first_forced_call(&own)["result"];
    assert_eq!((result["success"].as_bool(), result["output"].as_str()), (Some(true), Some("42")), "{own}");
    assert_eq!(own["final_state"], r#"{"count": 0, "last": 42}"#, "{own}");
    assert!(v.get("final_state").is_none(), "no state tool, no state");

    // `tool mcp`: one call, the function list, and a server that cannot start.
    let tool = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_tool"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = tool(&["mcp", "--command", &server], r#"{"name": "echo", "arguments": {"text": "hi"}}"#);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["output"].as_str(), v["success"].as_bool(), v["sandbox"].as_str()),
        (Some("hi"), Some(true), Some("none"))
    );
    let out = tool(&["mcp", "--command", &server, "--list"], "");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "add");
    let out = tool(&["mcp", "--command", &format!("{server} bad-init")], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not today") && !err.contains("panicked"), "{err}");
    // The command line is split as a shell splits it: a quoted path keeps its space, and an
    // unclosed quote is an error that says so.
    let spaced = tempfile::tempdir().unwrap();
    let script = spaced.path().join("my tools/server.py");
    std::fs::create_dir(script.parent().unwrap()).unwrap();
    std::fs::copy(root.join("tests/fixtures/mcp/server.py"), &script).unwrap();
    let quoted = format!("python3 '{}'", script.display());
    let out = tool(&["mcp", "--command", &quoted, "--list"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tool(&["mcp", "--command", &format!("python3 '{}", script.display())], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("a quote is not closed") && !err.contains("panicked"), "{err}");
    // A server already running, over Streamable HTTP (`--url`).
    let mut http = Command::new("python3")
        .arg(root.join("tests/fixtures/mcp/server.py"))
        .arg("http")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(http.stdout.take().unwrap()), &mut url).unwrap();
    let url = url.trim();
    let out = tool(&["mcp", "--url", url], r#"{"name": "add", "arguments": {"a": 2, "b": 40}}"#);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["output"].as_str(), v["success"].as_bool()), (Some("42"), Some(true)), "{v}");
    let out = tool(&["mcp", "--url", url, "--list"], "");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "add");
    // --command beside --url: the command's server would not be the one answering there.
    let out = tool(&["mcp", "--url", url, "--command", "python3 -c pass", "--timeout-s", "5"], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("something already listens") && !err.contains("panicked"), "{err}");
    let _ = http.kill();
    let _ = http.wait();
    let out = tool(&["mcp", "--url", url], r#"{"name": "echo"}"#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("connection refused") && !err.contains("panicked"), "{err}");
}
