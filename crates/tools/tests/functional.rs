//! What well-behaved calls get: output, tracebacks, persistence, the calculator, configs.

mod common;

use artist_tools::{Calculator, Isolation, PythonTool, SandboxConfig, Tool, ToolCall};
use common::*;

fn call(tool: &dyn Tool, text: &str, rollout: u64) -> artist_tools::ToolResult {
    tool.execute(&ToolCall { text: text.into(), rollout, ..Default::default() })
}

#[test]
fn print_works() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(cfg);
    let r = call(&tool, "print(6 * 7)\nprint('é, ünïcode ✓')", 0);
    assert_eq!(r.output, "42\né, ünïcode ✓\n");
    assert!(r.success && !r.timed_out && !r.truncated);
    assert!(r.elapsed_ms < 3000, "{} ms", r.elapsed_ms);
    eprintln!("print: {} ms under {}", r.elapsed_ms, tool.sandbox_kind());
}

#[test]
fn exception_gives_the_traceback() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(cfg);
    let r = call(&tool, "print('before')\nx = {}\nx['missing']", 0);
    assert!(!r.success && !r.timed_out);
    assert!(r.output.starts_with("before\nTraceback (most recent call last):"), "{}", r.output);
    assert!(r.output.contains("line 3") && r.output.contains("KeyError: 'missing'"), "{}", r.output);
    let r = call(&tool, "def f(:\n  pass", 0);
    assert!(!r.success && r.output.contains("SyntaxError"), "{}", r.output);
    let r = call(&tool, "import sys\nsys.exit(3)", 0);
    assert!(!r.success && r.output.contains("exited with status 3"), "{}", r.output);
}

#[test]
fn stdin_is_closed_and_environment_is_minimal() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(cfg);
    let r = call(&tool, "try:\n    input()\nexcept EOFError:\n    print('eof')", 0);
    assert_eq!(r.output, "eof\n");
    let r = call(&tool, "import os\nprint(sorted(os.environ))", 0);
    for host_only in ["CARGO", "RUST", "USER", "SSH"] {
        assert!(!r.output.contains(host_only), "{host_only} leaked: {}", r.output);
    }
    assert!(r.output.contains("'HOME'") && r.output.contains("'TMPDIR'"), "{}", r.output);
}

#[test]
fn the_working_directory_is_private_and_writable() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(cfg);
    let code = "import os, tempfile\nopen('data.txt', 'w').write('kept')\nprint(open('data.txt').read())\n\
                with tempfile.NamedTemporaryFile() as f:\n    print(os.path.dirname(f.name) == os.getcwd())";
    let r = call(&tool, code, 0);
    assert_eq!(r.output, "kept\nTrue\n");
    // A later call starts from an empty directory again.
    let r = call(&tool, "import os\nprint(os.path.exists('data.txt'))", 0);
    assert_eq!(r.output, "False\n");
}

#[test]
fn persistent_mode_keeps_a_rollouts_names() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(SandboxConfig { persistent: true, ..cfg });
    let r = call(&tool, "x = 20\nprint('defined')", 1);
    assert_eq!(r.output, "defined\n", "{r:?}");
    // A failing cell is not replayed, and its output is the model's only.
    assert!(!call(&tool, "y = 1\nraise ValueError('no')", 1).success);
    let r = call(&tool, "x += 1\nprint(x)", 1);
    assert_eq!(r.output, "21\n", "earlier output must not repeat: {r:?}");
    let r = call(&tool, "print(x, 'y' in globals())", 1);
    assert_eq!(r.output, "21 False\n");
    // Another rollout has its own names.
    let r = call(&tool, "print(x)", 2);
    assert!(!r.success && r.output.contains("NameError"), "{}", r.output);
    // A traceback in a persistent cell points at the cell, not the replay driver.
    let r = call(&tool, "def g():\n    return 1 / 0\ng()", 1);
    assert!(r.output.contains("cell.py\", line 3") && !r.output.contains("replay"), "{}", r.output);
    tool.end_rollout(1);
    let r = call(&tool, "print(x)", 1);
    assert!(r.output.contains("NameError"), "{}", r.output);
}

#[test]
fn non_persistent_mode_forgets() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(cfg);
    assert!(call(&tool, "x = 1", 5).success);
    assert!(call(&tool, "print(x)", 5).output.contains("NameError"));
}

#[test]
fn concurrent_calls() {
    let Some(cfg) = config() else { return };
    let tool = std::sync::Arc::new(tool_with(cfg));
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let tool = tool.clone();
            std::thread::spawn(move || call(&*tool, &format!("print({i} * {i})"), i).output)
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), format!("{}\n", i * i));
    }
}

#[test]
fn tool_names_and_kind() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(cfg);
    assert_eq!((tool.name(), tool.tag()), ("python", "python"));
    assert!(tool.interpreter().is_absolute());
    eprintln!("sandbox here: {}", tool.sandbox_kind());
}

#[test]
fn missing_interpreter_is_an_error() {
    let cfg = SandboxConfig { python: "/nonexistent/python3".into(), ..Default::default() };
    let err = PythonTool::new(cfg).err().expect("must fail");
    assert!(err.to_string().contains("/nonexistent/python3"), "{err}");
}

#[test]
fn configs_from_json() {
    let c: SandboxConfig = serde_json::from_str(r#"{"timeout_s": 2.5, "isolation": "rlimits-only"}"#).unwrap();
    assert_eq!((c.timeout_s, c.isolation, c.cpu_s), (2.5, Isolation::RlimitsOnly, 10));
    assert_eq!(c.output_bytes, 16384);
    let e = serde_json::from_str::<SandboxConfig>(r#"{"timeout": 2}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `timeout`"), "{e}");
    let bad = SandboxConfig { timeout_s: 0.0, python: "python3".into(), ..Default::default() };
    let err = PythonTool::new(bad).err();
    // Either the interpreter is missing here or the timeout is refused; never a working tool.
    assert!(err.is_some());
}

#[test]
fn calculator_cases() {
    let t = Calculator;
    assert_eq!((t.name(), t.tag()), ("calculator", "calculator"));
    for (expr, want) in [
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("2 ** 0.5 * 2 ** 0.5", "2.0000000000000004"),
        ("sqrt(2) ^ 2 - 2 < 1", ""),
        ("-(3 - 5)^2", "-4"),
        ("1e3 / 8", "125"),
        ("exp(ln(10))", "10.000000000000002"),
        ("abs(-7) + pi - pi", "7"),
        ("123456789 * 1000", "123456789000"),
    ] {
        let r = call(&t, expr, 0);
        if want.is_empty() {
            assert!(!r.success && r.output.starts_with("error:"), "{expr}: {r:?}");
        } else {
            assert!(r.success, "{expr}: {r:?}");
            assert_eq!(r.output, want, "{expr}");
        }
    }
    let r = call(&t, "1 / (2 - 2)", 0);
    assert_eq!((r.output.as_str(), r.success), ("error: division by zero", false));
}
