//! The MCP client against a real server process (tests/fixtures/mcp/server.py, standard
//! library Python): the handshake and tool list, calls one at a time and as a list, every
//! kind of failure as a failed result in words, calls in flight together from many
//! threads, a timeout, a server that dies, a server that asks the client something,
//! servers that cannot be used refused at start with a message naming them, and a server
//! per rollout, fresh for each and gone when it ends.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use artist_tools::{McpConfig, McpSessions, McpTool, Tool, ToolCall};

fn server() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mcp/server.py")
}

fn python_available() -> bool {
    Command::new("python3").arg("-c").arg("pass").status().is_ok_and(|s| s.success())
}

fn config(mode: &str) -> McpConfig {
    let mut command = vec!["python3".to_string(), server().to_string_lossy().into_owned()];
    if !mode.is_empty() {
        command.push(mode.into());
    }
    McpConfig { command, timeout_s: 10.0, ..Default::default() }
}

fn call(tool: &McpTool, text: &str) -> artist_tools::ToolResult {
    tool.execute(&ToolCall { text: text.into(), rollout: 0, ..Default::default() })
}

macro_rules! need_python {
    () => {
        if !python_available() {
            eprintln!("skipped: python3 is not installed");
            return;
        }
    };
}

#[test]
fn lists_the_tools_and_calls_them() {
    need_python!();
    let tool = McpTool::spawn(config("")).unwrap();
    assert_eq!(tool.server_name(), "artist-test-server");
    let names: Vec<&str> = tool.tools().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["add", "echo", "fail", "sleep", "crash", "big", "counter", "ask", "whoami", "state", "setup"]);
    assert_eq!((tool.name(), tool.tag()), ("mcp", "tool"));
    let described: serde_json::Value = serde_json::from_str(&tool.describe().unwrap()).unwrap();
    assert_eq!(described[0]["name"], "add");
    assert_eq!(described[0]["parameters"]["properties"]["a"]["type"], "number");

    let r = call(&tool, r#"{"name": "add", "arguments": {"a": 6, "b": 7}}"#);
    assert_eq!((r.output.as_str(), r.success, r.timed_out, r.truncated), ("13", true, false, false));
    // A list of calls: a JSON list of their texts, in order; one failure fails the block.
    let r = call(
        &tool,
        r#"[{"name": "echo", "arguments": {"text": "hi"}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]"#,
    );
    assert_eq!((r.output.as_str(), r.success), (r#"["hi","3"]"#, true));
    let r = call(&tool, r#"[{"name": "echo", "arguments": {"text": "hi"}}, {"name": "fail"}]"#);
    assert_eq!((r.output.as_str(), r.success), (r#"["hi","error: it failed on purpose"]"#, false));
    // The server's state is one for every caller.
    assert_eq!(call(&tool, r#"{"name": "counter"}"#).output, "1");
    assert_eq!(call(&tool, r#"{"name": "counter", "arguments": {}}"#).output, "2");
}

#[test]
fn bad_calls_fail_in_words() {
    need_python!();
    let tool = McpTool::spawn(McpConfig { max_output_bytes: 100, max_calls: 3, ..config("") }).unwrap();
    for (text, needle) in [
        ("add(1, 2)", "not JSON"),
        ("42", "expected a JSON call"),
        ("[]", "0 calls in one block"),
        (r#"[{"name":"counter"},{"name":"counter"},{"name":"counter"},{"name":"counter"}]"#, "4 calls in one block"),
        (r#"{"arguments": {}}"#, "needs a \"name\""),
        (r#"{"name": "rm", "arguments": {}}"#, "no tool named \"rm\" (the tools: add, echo"),
        (r#"{"name": "add", "arguments": [1, 2]}"#, "must be an object"),
        (r#"{"name": "add", "arguments": {"a": 1}}"#, "the server answered error -32602: bad arguments"),
        (r#"{"name": "fail"}"#, "error: it failed on purpose"),
    ] {
        let r = call(&tool, text);
        assert!(!r.success && !r.timed_out && r.output.contains(needle), "{text}: {r:?}");
    }
    // Output past the cap is cut, on a character boundary, with a marker.
    let r = call(&tool, r#"{"name": "big", "arguments": {"n": 5000}}"#);
    assert!(r.success && r.truncated && r.output.starts_with(&"x".repeat(100)), "{r:?}");
    assert!(r.output.ends_with("[output cut at 100 bytes]") && r.output.len() < 140, "{}", r.output);
    let r = call(
        &tool,
        r#"{"name": "echo", "arguments": {"text": "ééééééééééééééééééééééééééééééééééééééééééééééééééééé"}}"#,
    );
    assert!(r.truncated && r.output.starts_with(&"é".repeat(50)), "{r:?}");
    // The server is still there.
    assert_eq!(call(&tool, r#"{"name": "add", "arguments": {"a": 1, "b": 1}}"#).output, "2");
}

/// Calls from 16 threads are in flight together (each sleeps 0.4 s on the server, which
/// answers in whatever order they finish) and each gets its own answer.
#[test]
fn concurrent_calls_each_get_their_answer() {
    need_python!();
    let tool = Arc::new(McpTool::spawn(config("")).unwrap());
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let tool = Arc::clone(&tool);
            std::thread::spawn(move || {
                let text = format!(
                    r#"[{{"name": "sleep", "arguments": {{"seconds": 0.4}}}}, {{"name": "echo", "arguments": {{"text": "call {i}"}}}}]"#
                );
                call(&tool, &text)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        assert_eq!((r.output, r.success), (format!(r#"["slept","call {i}"]"#), true));
    }
    let took = start.elapsed().as_secs_f64();
    assert!(took < 16.0 * 0.4 / 2.0, "the calls ran one after another: {took} s");
}

#[test]
fn a_slow_call_times_out_and_the_server_goes_on() {
    need_python!();
    let tool = McpTool::spawn(McpConfig { timeout_s: 0.5, ..config("") }).unwrap();
    let r = call(&tool, r#"{"name": "sleep", "arguments": {"seconds": 2}}"#);
    assert!(!r.success && r.timed_out && r.output.contains("no answer within 0.5 s"), "{r:?}");
    // Its late answer is dropped, not taken for the next call's.
    let r = call(&tool, r#"{"name": "echo", "arguments": {"text": "next"}}"#);
    assert_eq!((r.output.as_str(), r.success), ("next", true));
    std::thread::sleep(std::time::Duration::from_millis(1800));
    assert_eq!(call(&tool, r#"{"name": "echo", "arguments": {"text": "later"}}"#).output, "later");
}

#[test]
fn a_server_that_dies_fails_every_call_after() {
    need_python!();
    let tool = McpTool::spawn(config("")).unwrap();
    let r = call(&tool, r#"{"name": "crash"}"#);
    assert!(!r.success && !r.timed_out && r.output.contains("the server exited"), "{r:?}");
    for _ in 0..2 {
        let r = call(&tool, r#"{"name": "add", "arguments": {"a": 1, "b": 2}}"#);
        assert!(!r.success && r.output.contains("the server exited"), "{r:?}");
    }
}

/// A server's request to the client (a ping in the middle of a call) is answered, and
/// lines that are not JSON are skipped.
#[test]
fn server_requests_are_answered_and_noise_is_skipped() {
    need_python!();
    let tool = McpTool::spawn(config("")).unwrap();
    let r = call(&tool, r#"{"name": "ask"}"#);
    assert_eq!((r.output.as_str(), r.success), ("pong received", true));
    let noisy = McpTool::spawn(config("noise")).unwrap();
    assert_eq!(call(&noisy, r#"{"name": "add", "arguments": {"a": 2, "b": 2}}"#).output, "4");
    let paged = McpTool::spawn(config("paged")).unwrap();
    assert_eq!(paged.tools().len(), 11, "both pages of tools/list");
}

#[test]
fn unusable_servers_are_refused_by_name() {
    need_python!();
    let err = |c: McpConfig| McpTool::spawn(c).err().expect("refused").to_string();
    let e = err(McpConfig { command: vec!["/nonexistent/mcp-server".into()], ..Default::default() });
    assert!(e.contains("/nonexistent/mcp-server") && e.contains("cannot start it"), "{e}");
    let e = err(config("bad-init"));
    assert!(e.contains("server.py bad-init") && e.contains("initialize") && e.contains("not today"), "{e}");
    let e = err(config("no-tools"));
    assert!(e.contains("tools/list gave no tools"), "{e}");
    // A program that is not an MCP server: it exits at once.
    let e = err(McpConfig { command: vec!["python3".into(), "-c".into(), "pass".into()], ..config("") });
    assert!(e.contains("initialize") && e.contains("the server exited"), "{e}");
    // One that never answers: the handshake times out.
    let silent = vec!["python3".into(), "-c".into(), "import time; time.sleep(30)".into()];
    let e = err(McpConfig { command: silent, timeout_s: 0.5, ..config("") });
    assert!(e.contains("no answer within 0.5 s"), "{e}");
    assert!(err(McpConfig::default()).contains("mcp.command is empty"));
    assert!(err(McpConfig { tag: "a b".into(), ..config("") }).contains("mcp.tag"));
    assert!(err(McpConfig { timeout_s: 0.0, ..config("") }).contains("timeout_s"));
}

fn call_from(tool: &McpTool, rollout: u64, text: &str) -> artist_tools::ToolResult {
    tool.execute(&ToolCall { text: text.into(), rollout, ..Default::default() })
}

/// Whether process `pid` still runs (Linux's /proc; zombies count as gone).
fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// `sessions = "rollout"`: each rollout's calls go to a server of its own, started at its
/// first call and told its number, so a counter starts at 1 for every rollout (shared, it
/// counts every rollout's calls); rollouts start theirs at the same time; ending a rollout
/// ends its server's process, and a failed start is the call's failure, in words.
#[test]
fn a_server_per_rollout() {
    need_python!();
    const COUNT: &str = r#"{"name": "counter"}"#;
    const WHO: &str = r#"{"name": "whoami"}"#;
    let shared = McpTool::spawn(config("")).unwrap();
    let counts: Vec<String> = [1, 2, 1].iter().map(|&r| call_from(&shared, r, COUNT).output).collect();
    assert_eq!(counts, ["1", "2", "3"], "one server, one count");
    assert_eq!((shared.open_sessions(), shared.sessions_started()), (0, 0));

    let tool = Arc::new(McpTool::spawn(McpConfig { sessions: McpSessions::Rollout, ..config("") }).unwrap());
    assert!(tool.describe().unwrap().contains("\"whoami\""), "the prompt's tools come from the first server");
    assert_eq!(tool.open_sessions(), 0, "the first server closed once listed");
    let counts: Vec<String> = [1, 2, 1, 1].iter().map(|&r| call_from(&tool, r, COUNT).output).collect();
    assert_eq!(counts, ["1", "1", "2", "3"]);
    assert_eq!((tool.open_sessions(), tool.sessions_started()), (2, 2));
    let who = |r: u64| -> serde_json::Value { serde_json::from_str(&call_from(&tool, r, WHO).output).unwrap() };
    let (one, two) = (who(1), who(2));
    assert_eq!((one["session"].as_str(), two["session"].as_str()), (Some("1"), Some("2")), "in order of start");
    let pid = one["pid"].as_u64().unwrap();
    assert!(pid != two["pid"].as_u64().unwrap() && running(pid));
    tool.end_rollout(1);
    assert_eq!(tool.open_sessions(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while running(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!running(pid), "rollout 1's server still runs after the rollout ended");
    assert_eq!(who(2)["pid"], two["pid"], "rollout 2 keeps its server");
    tool.end_rollout(7);

    // Sixteen rollouts at once, each with its own count.
    let handles: Vec<_> = (100..116u64)
        .map(|r| {
            let tool = Arc::clone(&tool);
            std::thread::spawn(move || (0..3).map(|_| call_from(&tool, r, COUNT).output).collect::<Vec<_>>())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), ["1", "2", "3"]);
    }
    assert_eq!((tool.open_sessions(), tool.sessions_started()), (17, 18));
    let pids: Vec<u64> = (100..116).map(|r| who(r)["pid"].as_u64().unwrap()).collect();
    drop(Arc::into_inner(tool).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(pids.iter().all(|&p| !running(p)), "the servers outlived the tool");

    // A server that can no longer start (its script removed after the first start): the
    // rollout's call fails, saying why.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("server.py");
    std::fs::copy(server(), &script).unwrap();
    let command = vec!["python3".to_string(), script.to_string_lossy().into_owned()];
    let tool = McpTool::spawn(McpConfig { command, sessions: McpSessions::Rollout, ..config("") }).unwrap();
    std::fs::remove_file(&script).unwrap();
    let r = call_from(&tool, 5, COUNT);
    assert!(!r.success && r.output.starts_with("error: starting this rollout's server:"), "{}", r.output);
    assert_eq!(tool.open_sessions(), 0);
}

/// `state_tool`: when a rollout ends its server's state tool is read (hidden from the model:
/// not in the prompt's list, refused if called) and handed over once as the rollout's final
/// state; a rollout that made no call gets the initial state from a server of its own; a
/// state tool needs a server per rollout and must be one of the server's tools.
#[test]
fn a_rollout_s_final_state() {
    need_python!();
    let state = || McpConfig { sessions: McpSessions::Rollout, state_tool: Some("state".into()), ..config("") };
    let tool = McpTool::spawn(state()).unwrap();
    let listed: serde_json::Value = serde_json::from_str(&tool.describe().unwrap()).unwrap();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"counter") && !names.contains(&"state"), "{names:?}");
    let r = call_from(&tool, 1, r#"{"name": "state"}"#);
    assert!(
        !r.success && r.output.contains("no tool named \"state\"") && !r.output.contains(" state,"),
        "{}",
        r.output
    );
    call_from(&tool, 1, r#"{"name": "counter"}"#);
    call_from(&tool, 1, r#"{"name": "add", "arguments": {"a": 6, "b": 36}}"#);
    call_from(&tool, 2, r#"{"name": "counter"}"#);
    for r in [1, 2, 3] {
        tool.end_rollout(r);
    }
    assert_eq!(tool.final_state(1).as_deref(), Some(r#"{"count": 1, "last": 42}"#), "the refused call never ran");
    assert_eq!(tool.final_state(2).as_deref(), Some(r#"{"count": 1, "last": null}"#));
    assert_eq!(tool.final_state(3).as_deref(), Some(r#"{"count": 0, "last": null}"#), "no call: the initial state");
    assert_eq!(tool.final_state(1), None, "handed over once");
    assert_eq!(tool.final_state(4), None, "a rollout that has not ended");
    assert_eq!(tool.open_sessions(), 0);

    let shared = McpConfig { sessions: McpSessions::Shared, ..state() };
    let e = McpTool::spawn(shared).err().unwrap().to_string();
    assert!(e.contains("state_tool") && e.contains("sessions = \"rollout\""), "{e}");
    let e = McpTool::spawn(McpConfig { state_tool: Some("snapshot".into()), ..state() }).err().unwrap().to_string();
    assert!(e.contains("\"snapshot\" is not among its tools") && e.contains("counter"), "{e}");
}

/// `spare_servers`: servers started ahead of need, taken oldest first by rollouts' first
/// calls and replaced in the background, each fresh; closed with the tool.
#[test]
fn spare_servers_wait_for_rollouts() {
    need_python!();
    let wait_for = |tool: &McpTool, spares: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while tool.spare_servers() < spares && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(tool.spare_servers(), spares);
    };
    let tool = McpTool::spawn(McpConfig { sessions: McpSessions::Rollout, spare_servers: 2, ..config("") }).unwrap();
    wait_for(&tool, 2);
    assert_eq!((tool.sessions_started(), tool.open_sessions()), (2, 0));
    let who = |r: u64| -> serde_json::Value {
        serde_json::from_str(&call_from(&tool, r, r#"{"name": "whoami"}"#).output).unwrap()
    };
    // Rollouts 1 and 2 take the spares (sessions 1 and 2, started before them, ready in
    // either order); their places refill with sessions 3 and 4.
    let mut taken = [who(1)["session"].clone(), who(2)["session"].clone()];
    taken.sort_by_key(|s| s.to_string());
    assert_eq!(taken, ["1", "2"]);
    assert_eq!(call_from(&tool, 1, r#"{"name": "counter"}"#).output, "1");
    wait_for(&tool, 2);
    assert_eq!(tool.sessions_started(), 4);
    assert_eq!(call_from(&tool, 3, r#"{"name": "counter"}"#).output, "1", "a spare is fresh");
    let pids: Vec<u64> = (1..=3).map(|r| who(r)["pid"].as_u64().unwrap()).collect();
    wait_for(&tool, 2);
    drop(tool);
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(pids.iter().all(|&p| !running(p)), "servers outlived the tool");

    let e = McpTool::spawn(McpConfig { spare_servers: 1, ..config("") }).err().unwrap().to_string();
    assert!(e.contains("spare_servers needs sessions = \"rollout\""), "{e}");
}

/// An episode's own server (`open_session`): set up through the setup tool with the given
/// arguments, its calls and state its own, the grader's tools hidden from the model's calls
/// and list; a refused setup, a setup tool the server lacks, or one without per-rollout
/// servers is an error that says so.
#[test]
fn an_episode_s_session_is_set_up_and_read() {
    need_python!();
    let episodes = McpConfig {
        sessions: McpSessions::Rollout,
        state_tool: Some("state".into()),
        setup_tool: Some("setup".into()),
        ..config("")
    };
    let tool = McpTool::spawn(episodes.clone()).unwrap();
    let described = tool.describe().unwrap();
    assert!(!described.contains("\"setup\"") && !described.contains("\"state\""), "{described}");
    let a = tool.open_session(&serde_json::json!({"count": 5})).unwrap();
    let b = tool.open_session(&serde_json::Value::Null).unwrap();
    assert_eq!(a.state().unwrap().unwrap(), r#"{"count": 5, "last": null}"#);
    assert_eq!(a.call("counter", serde_json::json!({})), ("6".to_string(), true));
    assert_eq!(a.call("add", serde_json::json!({"a": 1, "b": 2})), ("3".to_string(), true));
    assert_eq!(a.state().unwrap().unwrap(), r#"{"count": 6, "last": 3}"#);
    assert_eq!(b.state().unwrap().unwrap(), r#"{"count": 0, "last": null}"#, "another server, set up with {{}}");
    // A state tool that fails is an error, not a state.
    let failing = McpTool::spawn(McpConfig { state_tool: Some("fail".into()), ..episodes.clone() }).unwrap();
    let e = failing.open_session(&serde_json::Value::Null).unwrap().state().unwrap().unwrap_err();
    assert!(e.contains("state tool \"fail\"") && e.contains("it failed on purpose"), "{e}");
    for hidden in ["setup", "state", "nosuch"] {
        let (text, ok) = a.call(hidden, serde_json::json!({}));
        assert!(!ok && text.contains("no tool named"), "{hidden}: {text}");
    }
    let (text, ok) = a.call("fail", serde_json::json!({}));
    assert!(!ok && text.contains("it failed on purpose"), "{text}");
    assert_eq!(tool.sessions_started(), 2);
    // The model's own calls through the tool refuse the grader's tools too.
    let r = call(&tool, r#"{"name": "setup", "arguments": {"count": 1}}"#);
    assert!(!r.success && r.output.contains("no tool named \"setup\""), "{}", r.output);
    let e = tool.open_session(&serde_json::json!({"fail": true})).err().unwrap().to_string();
    assert!(e.contains("setup tool \"setup\" failed: error: cannot set that up"), "{e}");
    let e = tool.open_session(&serde_json::json!([1])).err().unwrap().to_string();
    assert!(e.contains("must be an object"), "{e}");
    let e = McpTool::spawn(McpConfig { setup_tool: Some("prepare".into()), ..episodes.clone() }).err().unwrap();
    assert!(e.to_string().contains("mcp.setup_tool \"prepare\" is not among its tools"), "{e}");
    let e = McpTool::spawn(McpConfig { sessions: McpSessions::Shared, state_tool: None, ..episodes }).err().unwrap();
    assert!(e.to_string().contains("sessions = \"rollout\""), "{e}");
    let shared = McpTool::spawn(config("")).unwrap();
    let e = shared.open_session(&serde_json::Value::Null).err().unwrap().to_string();
    assert!(e.contains("mcp.sessions = \"rollout\""), "{e}");
}
