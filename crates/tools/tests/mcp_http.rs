//! The MCP client over Streamable HTTP against a real server (tests/fixtures/mcp/server.py
//! `http`, Python's standard library `http.server`): answers as JSON and as event streams,
//! a server's request met on a stream and answered by a POST, calls in flight together, a
//! timeout, a session per rollout (its state its own, ended by a DELETE), spare sessions, an
//! episode's session set up and read, headers, and servers that cannot be used refused at
//! start (or failing a call) with a message that names them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use artist_tools::{McpConfig, McpSessions, McpTool, Tool, ToolCall, ToolResult};
use serde_json::{Value, json};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mcp/server.py")
}

fn python_available() -> bool {
    Command::new("python3").arg("-c").arg("pass").status().is_ok_and(|s| s.success())
}

macro_rules! need_python {
    () => {
        if !python_available() {
            eprintln!("skipped: python3 is not installed");
            return;
        }
    };
}

/// The test server listening over HTTP in `mode`, killed when dropped.
struct HttpServer {
    child: Child,
    url: String,
}

impl HttpServer {
    fn start(mode: &str) -> HttpServer {
        let mut command = Command::new("python3");
        command.arg(script()).arg("http");
        if !mode.is_empty() {
            command.arg(mode);
        }
        let mut child = command.stdout(Stdio::piped()).spawn().expect("python3 starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("http://127.0.0.1:"), "the server printed {line:?}");
        HttpServer { child, url: line.trim().to_string() }
    }

    fn config(&self) -> McpConfig {
        McpConfig { url: Some(self.url.clone()), timeout_s: 10.0, ..Default::default() }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(tool: &McpTool, rollout: u64, text: &str) -> ToolResult {
    tool.execute(&ToolCall { text: text.into(), rollout, ..Default::default() })
}

fn who(tool: &McpTool, rollout: u64) -> Value {
    serde_json::from_str(&call(tool, rollout, r#"{"name": "whoami"}"#).output).unwrap()
}

/// The same calls answered as JSON bodies and as event streams: tools listed, results,
/// tool errors, JSON-RPC errors, a ping from the server in the middle of a call (on the
/// stream, answered by a POST), and one state for every caller of a shared session.
#[test]
fn calls_over_http_as_json_and_as_event_streams() {
    need_python!();
    for mode in ["", "sse"] {
        let server = HttpServer::start(mode);
        let tool = McpTool::spawn(server.config()).unwrap();
        assert_eq!(tool.server_name(), "artist-test-server");
        assert_eq!(tool.tools().len(), 11, "{mode}");
        let r = call(&tool, 0, r#"{"name": "add", "arguments": {"a": 6, "b": 7}}"#);
        assert_eq!((r.output.as_str(), r.success, r.timed_out), ("13", true, false), "{mode}");
        let r = call(&tool, 0, r#"[{"name": "echo", "arguments": {"text": "hi"}}, {"name": "fail"}]"#);
        assert_eq!((r.output.as_str(), r.success), (r#"["hi","error: it failed on purpose"]"#, false), "{mode}");
        let r = call(&tool, 0, r#"{"name": "add", "arguments": {"a": 1}}"#);
        assert!(!r.success && r.output.contains("error -32602: bad arguments"), "{mode}: {r:?}");
        let r = call(&tool, 0, r#"{"name": "ask"}"#);
        assert_eq!((r.output.as_str(), r.success), ("pong received", true), "{mode}");
        let counts: Vec<String> = [1, 2, 1].iter().map(|&r| call(&tool, r, r#"{"name": "counter"}"#).output).collect();
        assert_eq!(counts, ["1", "2", "3"], "{mode}: one shared session, one count");
        let me = who(&tool, 0);
        assert!(me["session"].as_str().is_some_and(|s| s.len() == 32), "{me}");
        assert_eq!(me["live"], 1);
        let r = call(&tool, 0, r#"{"name": "big", "arguments": {"n": 100000}}"#);
        assert!(r.success && r.truncated && r.output.starts_with("xxxx"), "{mode}");
    }
}

/// Calls from 16 threads overlap (each sleeps 0.4 s on the server), each gets its own
/// answer; a call past the timeout fails as timed out and the next call is unaffected.
#[test]
fn http_calls_overlap_and_time_out() {
    need_python!();
    let server = HttpServer::start("sse");
    let tool = Arc::new(McpTool::spawn(server.config()).unwrap());
    let start = Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let tool = Arc::clone(&tool);
            std::thread::spawn(move || {
                let text = format!(
                    r#"[{{"name": "sleep", "arguments": {{"seconds": 0.4}}}}, {{"name": "echo", "arguments": {{"text": "call {i}"}}}}]"#
                );
                call(&tool, 0, &text)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        assert_eq!((r.output, r.success), (format!(r#"["slept","call {i}"]"#), true));
    }
    let took = start.elapsed().as_secs_f64();
    assert!(took < 16.0 * 0.4 / 2.0, "the calls ran one after another: {took} s");

    let quick = McpTool::spawn(McpConfig { timeout_s: 0.5, ..server.config() }).unwrap();
    let r = call(&quick, 0, r#"{"name": "sleep", "arguments": {"seconds": 2}}"#);
    assert!(!r.success && r.timed_out && r.output.contains("no answer within 0.5 s"), "{r:?}");
    assert_eq!(call(&quick, 0, r#"{"name": "echo", "arguments": {"text": "next"}}"#).output, "next");
}

/// `sessions = "rollout"` over HTTP: each rollout gets a session of its own (its counter
/// starts at 1), ended by a DELETE when the rollout ends; final states read through the
/// state tool; spare sessions opened ahead; all ended when the tool is dropped.
#[test]
fn a_session_per_rollout_over_http() {
    need_python!();
    let server = HttpServer::start("");
    let config = McpConfig { sessions: McpSessions::Rollout, state_tool: Some("state".into()), ..server.config() };
    let tool = Arc::new(McpTool::spawn(config.clone()).unwrap());
    let counts: Vec<String> = [1, 2, 1, 1].iter().map(|&r| call(&tool, r, r#"{"name": "counter"}"#).output).collect();
    assert_eq!(counts, ["1", "1", "2", "3"]);
    let (one, two) = (who(&tool, 1), who(&tool, 2));
    assert_ne!(one["session"], two["session"]);
    assert_eq!(two["live"], 2, "the session that listed the tools was ended: {two}");
    call(&tool, 2, r#"{"name": "add", "arguments": {"a": 40, "b": 2}}"#);
    tool.end_rollout(1);
    tool.end_rollout(2);
    tool.end_rollout(3);
    assert_eq!(tool.final_state(1).as_deref(), Some(r#"{"count": 3, "last": null}"#));
    assert_eq!(tool.final_state(2).as_deref(), Some(r#"{"count": 1, "last": 42}"#));
    assert_eq!(tool.final_state(3).as_deref(), Some(r#"{"count": 0, "last": null}"#), "no call: the initial state");
    // Ended sessions are DELETEd (in the background: wait for it).
    let live = |tool: &McpTool, rollout: u64| who(tool, rollout)["live"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while live(&tool, 9) != 1 && Instant::now() < deadline {
        tool.end_rollout(9);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(live(&tool, 9), 1, "only rollout 9's session is left");
    // Sixteen rollouts at once, each with its own count.
    let handles: Vec<_> = (100..116u64)
        .map(|r| {
            let tool = Arc::clone(&tool);
            std::thread::spawn(move || {
                (0..3).map(|_| call(&tool, r, r#"{"name": "counter"}"#).output).collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), ["1", "2", "3"]);
    }
    drop(Arc::into_inner(tool).unwrap());
    let probe = McpTool::spawn(server.config()).unwrap();
    assert_eq!(who(&probe, 0)["live"], 1, "the tool's sessions outlived it");

    // Spares are sessions opened ahead; an episode's session is set up and read.
    let spares = McpConfig { spare_servers: 2, setup_tool: Some("setup".into()), ..config };
    let tool = McpTool::spawn(spares).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tool.spare_servers() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(tool.spare_servers(), 2);
    let episode = tool.open_session(&json!({"count": 5, "last": "x"})).unwrap();
    assert_eq!(episode.call("counter", json!({})), ("6".to_string(), true));
    assert_eq!(episode.state().unwrap().unwrap(), r#"{"count": 6, "last": "x"}"#);
    let (text, ok) = episode.call("setup", json!({}));
    assert!(!ok && text.contains("no tool named"), "{text}");
}

/// A port nothing listens on (one just freed).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether process `pid` still runs (Linux's /proc; zombies count as gone).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// `command` beside `url`: the client starts the HTTP server once, waits until it listens,
/// gives each rollout a session of it, and stops it with the tool; a server that exits or
/// never listens, or a URL where another server listens already, is refused at start.
#[test]
fn the_client_starts_the_http_server_it_names() {
    need_python!();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let config = McpConfig {
        command: vec!["python3".into(), script().to_string_lossy().into_owned(), "http".into()],
        env: [("MCP_PORT".to_string(), port.to_string())].into(),
        url: Some(url.clone()),
        sessions: McpSessions::Rollout,
        timeout_s: 10.0,
        ..Default::default()
    };
    let tool = McpTool::spawn(config.clone()).unwrap();
    let pid = tool.launched_pid().expect("started by the client");
    let counts: Vec<String> = [1, 2, 1].iter().map(|&r| call(&tool, r, r#"{"name": "counter"}"#).output).collect();
    assert_eq!(counts, ["1", "1", "2"], "a session per rollout");
    let (one, two) = (who(&tool, 1), who(&tool, 2));
    assert_eq!(one["pid"].as_u64(), Some(pid as u64), "one process for every session");
    assert_eq!((two["pid"].as_u64(), two["live"].as_u64()), (Some(pid as u64), Some(2)));
    drop(tool);
    assert!(!running(pid), "the server outlived the tool");

    let err = |c: McpConfig| McpTool::spawn(c).err().expect("refused").to_string();
    let quits = vec!["python3".into(), "-c".into(), "import sys; sys.exit(3)".into()];
    let e = err(McpConfig { command: quits, ..config.clone() });
    assert!(e.contains("sys.exit(3)") && e.contains("exited (exit status: 3) before anything listened"), "{e}");
    let running_already = HttpServer::start("");
    let e = err(McpConfig { url: Some(running_already.url.clone()), ..config.clone() });
    assert!(e.contains(&format!("something already listens at {}", running_already.url)), "{e}");
    let idle = vec!["python3".into(), "-c".into(), "import time; time.sleep(30)".into()];
    let e = err(McpConfig { command: idle, timeout_s: 0.5, ..config });
    assert!(e.contains(&format!("nothing listened at {url} within 0.5 s")), "{e}");
}

/// Headers go with every message (`${VAR}` filled in); servers that cannot be used are
/// refused at start, naming the URL and what was wrong.
#[test]
fn unusable_http_servers_are_refused_by_name() {
    need_python!();
    let err = |c: McpConfig| McpTool::spawn(c).err().expect("refused").to_string();
    // Nothing listening (a port just freed).
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let e = err(McpConfig { url: Some(url.clone()), ..Default::default() });
    assert!(e.contains(&url) && e.contains("initialize") && e.contains("connection refused"), "{e}");
    let e = err(McpConfig { url: Some("ftp://example.com/mcp".into()), ..Default::default() });
    assert!(e.contains("must start with http:// or https://"), "{e}");
    if !cfg!(feature = "https") {
        let e = err(McpConfig { url: Some("https://example.com/mcp".into()), ..Default::default() });
        assert!(e.contains("`https` feature"), "{e}");
    }
    let e = err(McpConfig {
        command: vec!["python3".into()],
        headers: [("A".into(), "b".into())].into(),
        ..Default::default()
    });
    assert!(e.contains("mcp.headers go with mcp.url"), "{e}");
    let env = [("A".to_string(), "b".to_string())].into();
    let e = err(McpConfig { url: Some(url.clone()), env, ..Default::default() });
    assert!(e.contains("mcp.env sets the environment of a server the client starts"), "{e}");
    let unset = McpConfig {
        url: Some(url),
        headers: [("Authorization".into(), "Bearer ${ARTIST_NO_SUCH_TOKEN}".into())].into(),
        ..Default::default()
    };
    let e = err(unset);
    assert!(e.contains("mcp.headers.Authorization") && e.contains("ARTIST_NO_SUCH_TOKEN is not set"), "{e}");

    // A stateless server (no Mcp-Session-Id) serves shared calls, but not a session per
    // rollout, whose state it could not keep apart.
    let stateless = HttpServer::start("stateless");
    let tool = McpTool::spawn(stateless.config()).unwrap();
    assert_eq!(call(&tool, 0, r#"{"name": "echo", "arguments": {"text": "ok"}}"#).output, "ok");
    let e = err(McpConfig { sessions: McpSessions::Rollout, ..stateless.config() });
    assert!(e.contains("no Mcp-Session-Id") && e.contains("sessions = \"shared\""), "{e}");
    // A server whose answers fail: the status and the body, in words.
    let broken = HttpServer::start("broken");
    let e = err(broken.config());
    assert!(e.contains(&broken.url) && e.contains("HTTP 500") && e.contains("broken on purpose"), "{e}");

    // An answer that is not JSON: said so, with its start only.
    let garbage = HttpServer::start("garbage");
    let tool = McpTool::spawn(garbage.config()).unwrap();
    let r = call(&tool, 0, r#"{"name": "echo", "arguments": {"text": "hi"}}"#);
    assert!(!r.success && r.output.contains("the server's answer is not JSON"), "{}", &r.output[..200]);
    assert!(r.output.ends_with("x...") && r.output.len() < 500, "{} bytes", r.output.len());

    // A server that forgot the session (ended by someone else): the call says so; one
    // that is gone: connection refused.
    let mut server = HttpServer::start("");
    let tool = McpTool::spawn(server.config()).unwrap();
    let session = who(&tool, 0)["session"].as_str().unwrap().to_string();
    let direct: ureq::Agent = ureq::Agent::config_builder().proxy(None).build().into();
    let ended = direct.delete(&server.url).header("Mcp-Session-Id", &session).call().unwrap();
    assert_eq!(ended.status(), 200);
    let r = call(&tool, 0, r#"{"name": "whoami"}"#);
    assert!(!r.success && r.output.contains(&format!("no longer knows session {session} (HTTP 404)")), "{r:?}");
    let _ = server.child.kill();
    let _ = server.child.wait();
    let r = call(&tool, 0, r#"{"name": "whoami"}"#);
    assert!(!r.success && !r.timed_out && r.output.contains("connection refused"), "{r:?}");
}
