//! Shared by the sandbox tests: finding an interpreter, marking a call's processes so that
//! leftovers can be found on the host, and running a call with its limits checked.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use artist_tools::{Isolation, PythonTool, SandboxConfig, SandboxKind, Tool, ToolCall, ToolResult};

/// Wall-clock limit used by the tests.
pub const TIMEOUT_S: f64 = 3.0;

/// The interpreter to test with: `ARTIST_TOOLS_PYTHON`, else `python3`. `None` (and a message)
/// when it cannot be run.
pub fn python() -> Option<String> {
    let python = std::env::var("ARTIST_TOOLS_PYTHON").unwrap_or_else(|_| "python3".into());
    match std::process::Command::new(&python).args(["-c", "pass"]).status() {
        Ok(s) if s.success() => Some(python),
        _ => {
            eprintln!("skipped: no working `{python}` (set ARTIST_TOOLS_PYTHON)");
            None
        }
    }
}

/// The test config: `ARTIST_TOOLS_ISOLATION` (`auto`, `bwrap`, `namespaces`, `rlimits-only`)
/// picks the isolation, so the whole suite can be run under each.
pub fn config() -> Option<SandboxConfig> {
    let isolation = match std::env::var("ARTIST_TOOLS_ISOLATION") {
        Ok(name) => serde_json::from_value(serde_json::Value::String(name.clone()))
            .unwrap_or_else(|_| panic!("ARTIST_TOOLS_ISOLATION={name:?} is not an isolation")),
        Err(_) => Isolation::Auto,
    };
    Some(SandboxConfig { python: python()?, timeout_s: TIMEOUT_S, isolation, ..Default::default() })
}

pub fn tool_with(config: SandboxConfig) -> PythonTool {
    PythonTool::new(config).unwrap_or_else(|e| panic!("the python tool could not start: {e}"))
}

/// A tool with namespaces (or bwrap); `None`, with a message, where only rlimits are available.
pub fn isolated_with(config: SandboxConfig) -> Option<PythonTool> {
    let t = tool_with(config);
    if t.sandbox_kind() == SandboxKind::RlimitsOnly {
        eprintln!("skipped: this case needs namespaces, and only rlimits are available here");
        return None;
    }
    Some(t)
}

pub fn isolated() -> Option<PythonTool> {
    isolated_with(config()?)
}

/// A string unique to one test, put in the argv of every process the call starts.
pub fn marker(name: &str) -> String {
    format!("artist-sbx-{}-{name}", std::process::id())
}

/// `body` as a cell whose process first re-executes itself with `marker` as its last argument,
/// so that it and everything it forks can be found in /proc by command line.
pub fn marked(marker: &str, body: &str) -> String {
    format!(
        "import os, sys\nif sys.argv[-1] != {marker:?}:\n    os.execv(sys.executable, [sys.executable, '-I', '-B', \
         '-u', os.path.abspath(__file__), {marker:?}])\n{body}\n"
    )
}

/// Host processes whose command line contains `marker`.
pub fn leftovers(marker: &str) -> Vec<String> {
    let mut found = vec![];
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(format!("{}: {cmd}", name.to_string_lossy()));
            }
        }
    }
    found
}

/// Host processes whose command line is exactly `argv`.
pub fn processes_named(argv: &[&str]) -> Vec<String> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == want) {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// Runs one marked call and checks what every adversarial case must hold: it ended within
/// `limit`, and none of its processes is left on the host.
pub fn run_checked(tool: &PythonTool, name: &str, body: &str, limit: Duration) -> ToolResult {
    let mark = marker(name);
    let start = Instant::now();
    let r = tool.execute(&ToolCall { text: marked(&mark, body), rollout: 0, ..Default::default() });
    let took = start.elapsed();
    let left = leftovers(&mark);
    let head: String = r.output.chars().take(600).collect();
    eprintln!(
        "[{name}] {} ms, success={}, timed_out={}, truncated={}, sandbox={}\n{head}",
        took.as_millis(),
        r.success,
        r.timed_out,
        r.truncated,
        tool.sandbox_kind()
    );
    assert!(left.is_empty(), "{name}: processes left behind: {left:?}");
    assert!(took <= limit, "{name}: took {took:?}, limit {limit:?}");
    r
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The repository directory, which must stay untouched.
pub fn repo_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
