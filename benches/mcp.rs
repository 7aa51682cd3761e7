//! What an MCP call costs through the client: calls one after another against the test
//! server (tests/fixtures/mcp/server.py, Python's standard library: a JSON-RPC round trip
//! through two pipes and a thread per request on the server), and calls from many threads
//! at once against a function that sleeps, which shows whether they overlap. The floor
//! beside it: the same round trips written and read by hand on the server's pipes (no
//! reader thread, no id map, no channel), so the difference is what the client adds. Then
//! a server per rollout (`sessions = "rollout"`): a rollout's first call, which starts its
//! server, its later calls, and rollouts starting theirs from many threads at once; then the
//! same first calls with four spare servers kept started; then a step's multi-turn episodes
//! opening their servers (set up, state read) all at once, with and without spares. Last,
//! the same server over Streamable HTTP (`server.py http`, Python's `http.server`): calls
//! one after another answered as JSON and as event streams, calls overlapping, a session
//! per rollout (no process to start: a first call opens a session), and the episodes'
//! sessions opened at once; the floor beside the JSON calls: the same POSTs written and read
//! by hand on one kept-alive connection.
//!
//!     cargo bench --bench mcp -- [--calls 2000] [--threads 16] [--sleep-ms 50] [--rollouts 32] [--episodes 16]
//!
//! Prints one JSON line per measurement.

use std::sync::Arc;
use std::time::Instant;

use artist_tools::{McpConfig, McpSessions, McpTool, Tool, ToolCall};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
}

fn main() {
    let calls: usize = arg("--calls", "2000").parse().expect("--calls");
    let threads: usize = arg("--threads", "16").parse().expect("--threads");
    let sleep_ms: f64 = arg("--sleep-ms", "50").parse().expect("--sleep-ms");
    let rollouts: u64 = arg("--rollouts", "32").parse().expect("--rollouts");
    let episodes: usize = arg("--episodes", "16").parse().expect("--episodes");
    let server = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/server.py");
    let config =
        McpConfig { command: vec!["python3".into(), server.to_string_lossy().into_owned()], ..Default::default() };
    let start = Instant::now();
    let tool = Arc::new(McpTool::spawn(config.clone()).expect("the test server starts (python3 is needed)"));
    let startup_ms = start.elapsed().as_secs_f64() * 1e3;
    let call = |tool: &McpTool, text: &str| {
        let r = tool.execute(&ToolCall { text: text.into(), rollout: 0, ..Default::default() });
        assert!(r.success, "{r:?}");
    };
    let echo = r#"{"name": "echo", "arguments": {"text": "hello"}}"#;
    for _ in 0..50 {
        call(&tool, echo);
    }
    let start = Instant::now();
    for _ in 0..calls {
        call(&tool, echo);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"bench": "mcp_sequential", "calls": calls, "startup_ms": startup_ms,
            "us_per_call": secs * 1e6 / calls as f64, "calls_per_s": calls as f64 / secs})
    );
    // The floor: the same server, the same requests, written and read by hand.
    let mut child = std::process::Command::new("python3")
        .arg(&server)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut round_trip = |id: usize, method: &str, params: serde_json::Value| {
        use std::io::{BufRead, Write};
        let line = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(stdin, "{line}").and_then(|_| stdin.flush()).expect("write");
        let mut reply = String::new();
        stdout.read_line(&mut reply).expect("read");
        assert!(reply.contains("\"result\""), "{reply}");
    };
    round_trip(0, "initialize", serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {}}));
    let args = serde_json::json!({"name": "echo", "arguments": {"text": "hello"}});
    for i in 0..50 {
        round_trip(i + 1, "tools/call", args.clone());
    }
    let start = Instant::now();
    for i in 0..calls {
        round_trip(i + 100, "tools/call", args.clone());
    }
    let raw = start.elapsed().as_secs_f64();
    drop(stdin);
    let _ = child.wait();
    println!(
        "{}",
        serde_json::json!({"bench": "mcp_raw_pipes", "calls": calls, "us_per_call": raw * 1e6 / calls as f64,
            "client_over_raw": secs / raw})
    );
    let sleep = format!(r#"{{"name": "sleep", "arguments": {{"seconds": {}}}}}"#, sleep_ms / 1e3);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (tool, sleep) = (Arc::clone(&tool), sleep.clone());
            s.spawn(move || call(&tool, &sleep));
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let serial = threads as f64 * sleep_ms / 1e3;
    println!(
        "{}",
        serde_json::json!({"bench": "mcp_concurrent", "threads": threads, "sleep_ms": sleep_ms,
            "wall_ms": secs * 1e3, "one_after_another_ms": serial * 1e3, "overlap": serial / secs})
    );

    // A server per rollout: each rollout's first call starts one; ended rollouts close theirs.
    let own = Arc::new(McpTool::spawn(McpConfig { sessions: McpSessions::Rollout, ..config.clone() }).expect("starts"));
    let (mut first, mut later) = (0.0, 0.0);
    for r in 0..rollouts {
        let t = Instant::now();
        assert!(own.execute(&ToolCall { text: echo.into(), rollout: r, ..Default::default() }).success);
        first += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..10 {
            assert!(own.execute(&ToolCall { text: echo.into(), rollout: r, ..Default::default() }).success);
        }
        later += t.elapsed().as_secs_f64() / 10.0;
        own.end_rollout(r);
    }
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let own = Arc::clone(&own);
            s.spawn(move || {
                let r = 1_000 + t;
                assert!(own.execute(&ToolCall { text: echo.into(), rollout: r, ..Default::default() }).success);
                own.end_rollout(r);
            });
        }
    });
    let together = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"bench": "mcp_rollout_sessions", "rollouts": rollouts,
            "first_call_ms": first * 1e3 / rollouts as f64, "later_call_us": later * 1e6 / rollouts as f64,
            "threads": threads, "starts_at_once_ms": together * 1e3})
    );
    drop(own);
    // Multi-turn episodes (`bfcl.environment = "mcp"`): a step's `--episodes` servers
    // opened at once, each set up and its state read, as the episode runner opens them;
    // without spares, and with as many spares as episodes, started before the step.
    for spare_servers in [0, episodes] {
        let episode_config = McpConfig {
            sessions: McpSessions::Rollout,
            spare_servers,
            state_tool: Some("state".into()),
            setup_tool: Some("setup".into()),
            ..config.clone()
        };
        let pool = McpTool::spawn(episode_config).expect("starts");
        while pool.spare_servers() < spare_servers {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let start = Instant::now();
        let sessions = open_episodes(&pool, episodes);
        let open_ms = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        std::thread::scope(|s| {
            for session in &sessions {
                s.spawn(move || session.state().expect("a state tool").expect("a state"));
            }
        });
        let state_ms = start.elapsed().as_secs_f64() * 1e3;
        println!(
            "{}",
            serde_json::json!({"bench": "mcp_episode_sessions", "episodes": episodes, "spare_servers": spare_servers,
                "open_all_ms": open_ms, "read_all_states_ms": state_ms})
        );
    }
    // With spares: rollouts one after another, a pause between them (a rollout's decoding)
    // long enough for the pool to refill, and without one.
    let spares = McpConfig { sessions: McpSessions::Rollout, spare_servers: 4, ..config };
    let pooled = McpTool::spawn(spares).expect("starts");
    while pooled.spare_servers() < 4 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for pause_ms in [300u64, 0] {
        let mut first = 0.0;
        for r in 0..rollouts {
            let r = 10_000 + pause_ms * 1_000 + r;
            std::thread::sleep(std::time::Duration::from_millis(pause_ms));
            let t = Instant::now();
            assert!(pooled.execute(&ToolCall { text: echo.into(), rollout: r, ..Default::default() }).success);
            first += t.elapsed().as_secs_f64();
            pooled.end_rollout(r);
        }
        println!(
            "{}",
            serde_json::json!({"bench": "mcp_rollout_spares", "spare_servers": 4, "rollouts": rollouts,
                "pause_ms": pause_ms, "first_call_ms": first * 1e3 / rollouts as f64})
        );
    }
    drop(pooled);
    for mode in ["json", "sse"] {
        http(&server, mode, calls, threads, sleep_ms, rollouts, episodes);
    }
}

/// The HTTP measurements against `server.py http` answering as JSON bodies or (`sse`) event
/// streams.
fn http(
    script: &std::path::Path,
    mode: &str,
    calls: usize,
    threads: usize,
    sleep_ms: f64,
    rollouts: u64,
    episodes: usize,
) {
    use std::io::BufRead;
    let mut command = std::process::Command::new("python3");
    command.arg(script).arg("http");
    if mode == "sse" {
        command.arg("sse");
    }
    let mut child = command.stdout(std::process::Stdio::piped()).spawn().expect("python3");
    let mut url = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut url).expect("the server's URL");
    let config = McpConfig { url: Some(url.trim().to_string()), ..Default::default() };
    let tool = Arc::new(McpTool::spawn(config.clone()).expect("the HTTP server answers"));
    let echo = r#"{"name": "echo", "arguments": {"text": "hello"}}"#;
    let call = |tool: &McpTool, rollout: u64, text: &str| {
        let r = tool.execute(&ToolCall { text: text.into(), rollout, ..Default::default() });
        assert!(r.success, "{r:?}");
    };
    for _ in 0..50 {
        call(&tool, 0, echo);
    }
    let start = Instant::now();
    for _ in 0..calls {
        call(&tool, 0, echo);
    }
    let secs = start.elapsed().as_secs_f64();
    // The floor (JSON answers): the same POSTs written and read by hand on one kept-alive
    // connection, in the session the tool opened.
    let raw = (mode == "json").then(|| {
        let session = serde_json::from_str::<serde_json::Value>(
            &tool.execute(&ToolCall { text: r#"{"name": "whoami"}"#.into(), ..Default::default() }).output,
        )
        .expect("whoami")["session"]
            .as_str()
            .expect("a session")
            .to_string();
        let address = url.trim().trim_start_matches("http://").split('/').next().expect("host:port").to_string();
        let mut stream = std::net::TcpStream::connect(&address).expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "hello"}}})
        .to_string();
        let request = format!(
            "POST /mcp HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nMcp-Session-Id: {session}\r\n\
             MCP-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut round_trip = || {
            use std::io::{Read, Write};
            stream.write_all(request.as_bytes()).expect("write");
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("read");
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().expect("a length");
                }
            }
            let mut reply = vec![0; length];
            reader.read_exact(&mut reply).expect("the body");
            assert!(reply.windows(5).any(|w| w == b"hello"));
        };
        for _ in 0..50 {
            round_trip();
        }
        let start = Instant::now();
        for _ in 0..calls {
            round_trip();
        }
        start.elapsed().as_secs_f64()
    });
    let sleep = format!(r#"{{"name": "sleep", "arguments": {{"seconds": {}}}}}"#, sleep_ms / 1e3);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (tool, sleep) = (Arc::clone(&tool), sleep.clone());
            s.spawn(move || call(&tool, 0, &sleep));
        }
    });
    let together = start.elapsed().as_secs_f64();
    let serial = threads as f64 * sleep_ms / 1e3;
    println!(
        "{}",
        serde_json::json!({"bench": "mcp_http", "answers": mode, "calls": calls,
            "us_per_call": secs * 1e6 / calls as f64, "calls_per_s": calls as f64 / secs,
            "raw_us_per_call": raw.map(|r| r * 1e6 / calls as f64), "client_over_raw": raw.map(|r| secs / r),
            "threads": threads, "sleep_ms": sleep_ms, "overlap": serial / together})
    );
    let own = McpTool::spawn(McpConfig { sessions: McpSessions::Rollout, ..config.clone() }).expect("opens");
    let mut first = 0.0;
    for r in 0..rollouts {
        let t = Instant::now();
        call(&own, r, echo);
        first += t.elapsed().as_secs_f64();
        own.end_rollout(r);
    }
    drop(own);
    let episode_config = McpConfig {
        sessions: McpSessions::Rollout,
        state_tool: Some("state".into()),
        setup_tool: Some("setup".into()),
        ..config
    };
    let pool = McpTool::spawn(episode_config).expect("opens");
    let start = Instant::now();
    drop(open_episodes(&pool, episodes));
    let open_ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "{}",
        serde_json::json!({"bench": "mcp_http_sessions", "answers": mode, "rollouts": rollouts,
            "first_call_ms": first * 1e3 / rollouts as f64, "episodes": episodes, "open_all_ms": open_ms})
    );
    drop(pool);
    let _ = child.kill();
    let _ = child.wait();
}

/// A step's `episodes` multi-turn episodes opening their sessions at once, as the episode
/// runner opens them: each set up with its own count through `setup`, its state read back.
fn open_episodes(pool: &McpTool, episodes: usize) -> Vec<artist_tools::McpSession> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..episodes)
            .map(|i| {
                s.spawn(move || {
                    let session = pool.open_session(&serde_json::json!({"count": i})).expect("a session");
                    let state = session.state().expect("a state tool").expect("a state");
                    assert_eq!(state, format!("{{\"count\": {i}, \"last\": null}}"));
                    session
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("opens")).collect()
    })
}
