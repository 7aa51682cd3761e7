//! Tools served by an MCP server (the Model Context Protocol), over its stdio transport (a
//! program the client starts, `mcp.command`) or its Streamable HTTP one (a server already
//! running at `mcp.url`; see the `http` module): the model writes
//! `<tool>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool>` (or a JSON list of such
//! calls), and each call goes to the server as `tools/call`.
//!
//! [`McpTool::spawn`] starts the server as a child process (or, over HTTP, opens a session
//! with it; the last paragraph), makes the protocol's handshake (`initialize`, then the
//! `notifications/initialized` notification) and reads its tools (`tools/list`, every page),
//! which [`Tool::describe`] hands to the system prompt. Over stdio, messages are JSON-RPC 2.0
//! objects, one per line, in both directions. One reader thread takes the
//! server's lines and hands each response to the call waiting on its id, so calls from
//! several rollouts are in flight at once and a slow one does not hold up the others; a
//! call not answered within the timeout fails as timed out (its late answer is dropped).
//! Requests from the server (`ping`, or anything a client may be asked) get an answer
//! (`{}` to a ping, "method not found" otherwise); its notifications are ignored.
//!
//! Nothing a server or a model does makes this panic: a call that is not JSON, names a tool
//! the server did not list, gets an error back, or outlives the server is a failed
//! [`ToolResult`] that says so in words. The server is not sandboxed: it is the user's own
//! program, run with the trainer's rights (docs/SANDBOX.md).
//!
//! `sessions = "shared"` (the default): every rollout calls one server, so a stateful
//! server's state is shared too. `sessions = "rollout"`: each rollout gets its own server at
//! its first call, closed when the rollout ends ([`Tool::end_rollout`]), so a server that
//! keeps state (a file system, a database, a game) starts fresh for every rollout, as a BFCL
//! environment does. `spare_servers = N` keeps N more started and past their handshake,
//! so that a rollout's first call takes one at once rather than waiting for a start (each
//! taken is replaced in the background). Each server is told its number in
//! `ARTIST_MCP_SESSION` (0 for the first, the one [`McpTool::spawn`] starts to list the
//! tools for the prompt and then closes; 1, 2, ... in order of start).
//! With `state_tool = "name"` as well, that tool of the server (hidden from the model) is
//! called with no arguments when a rollout ends, before its server closes, and its text is
//! the rollout's [`Tool::final_state`], which an external judge reads beside the answer
//! (veRL's tool `calc_reward`): a stateful environment graded by where the rollout left it.
//! A rollout that made no call gets a server for that call alone (the initial state).
//!
//! Multi-turn episodes hold a server across several engine runs, one per user turn: they
//! take one with [`McpTool::open_session`] (from the same pool and spares), set up through
//! `setup_tool` (hidden from the model too) with the entry's `initial_config`, and call it
//! and read its state through the [`McpSession`] until they drop it.
//!
//! Over HTTP (`mcp.url`; with `mcp.command` too, the client starts that server once and
//! stops it at the end) a "server" above is a session of the one server at `mcp.url`: `initialize`
//! opens it (the server names it in `Mcp-Session-Id`), a DELETE ends it, and a spare is a
//! session opened ahead. `sessions = "rollout"` then needs a server that opens sessions
//! (one that gives no `Mcp-Session-Id` is refused at start, as its state would be shared).

mod http;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Tool, ToolCall, ToolResult};

/// The most spare servers `mcp.spare_servers` may keep.
pub const MAX_SPARE_SERVERS: usize = 256;

/// The protocol revision this client asks for (servers answer with the one they speak).
pub const PROTOCOL_VERSION: &str = "2025-06-18";

/// How to start and use an MCP server (`[mcp]` in a GRPO config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// The server's command line: the program, then its arguments. Alone: a server over
    /// stdio, started by the client (per rollout with `sessions = "rollout"`). With `url`: an
    /// HTTP server the client starts once and stops at the end, reached at `url`.
    pub command: Vec<String>,
    /// Extra environment variables for the server (with `command`).
    pub env: HashMap<String, String>,
    /// The endpoint of a server over Streamable HTTP (`http://127.0.0.1:8000/mcp`;
    /// `https://` with the `https` feature): one already running, or the one `command`
    /// starts.
    pub url: Option<String>,
    /// Headers sent with every message to `url` (`Authorization = "Bearer ${TOKEN}"`): each
    /// `${NAME}` is replaced by environment variable NAME.
    pub headers: HashMap<String, String>,
    /// The tag the model writes its calls in.
    pub tag: String,
    /// Seconds a call (and the handshake) may take.
    pub timeout_s: f64,
    /// Output kept per call, in bytes; the rest is cut with a marker.
    pub max_output_bytes: usize,
    /// Calls in one `<tool>` block (a longer JSON list is refused).
    pub max_calls: usize,
    /// `shared` (one server for every rollout) or `rollout` (a server per rollout).
    pub sessions: McpSessions,
    /// With `sessions = "rollout"`: servers kept started ahead of the rollouts that will
    /// take them (0, the default: each starts at its rollout's first call).
    pub spare_servers: usize,
    /// With `sessions = "rollout"`: a tool of the server called with no arguments when a
    /// rollout ends, whose text is the rollout's final state for grading (hidden from the
    /// model). `None` (the default): none.
    pub state_tool: Option<String>,
    /// Multi-turn episodes (`bfcl.environment = "mcp"`): a tool of the server (hidden from
    /// the model) called once when an episode's server starts, with the entry's
    /// `initial_config` as its arguments, to set the environment up. `None`: none.
    pub setup_tool: Option<String>,
}

/// Which rollouts a server serves (`mcp.sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum McpSessions {
    /// One server for the whole run: its state is every rollout's.
    #[default]
    Shared,
    /// A server per rollout, started at its first call and closed when it ends.
    Rollout,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            command: Vec::new(),
            env: HashMap::new(),
            url: None,
            headers: HashMap::new(),
            tag: "tool".into(),
            timeout_s: 30.0,
            max_output_bytes: 4096,
            max_calls: 8,
            sessions: McpSessions::Shared,
            spare_servers: 0,
            state_tool: None,
            setup_tool: None,
        }
    }
}

impl McpConfig {
    /// The server in words, for messages: its command line or its URL.
    pub fn server_label(&self) -> String {
        match &self.url {
            Some(url) => url.clone(),
            None => self.command.join(" "),
        }
    }

    /// `command` as a process to start, with `env`, its stderr on the trainer's (the caller
    /// wires its stdin and stdout).
    fn server_command(&self) -> Result<Command, McpError> {
        let (program, args) =
            self.command.split_first().ok_or_else(|| McpError::Config("mcp.command is empty".into()))?;
        let mut command = Command::new(program);
        command.args(args).envs(&self.env).stderr(Stdio::inherit());
        Ok(command)
    }

    /// Whether a server is named (`command` or `url`).
    pub fn has_server(&self) -> bool {
        !self.command.is_empty() || self.url.is_some()
    }

    /// Whether `name` is one of the grader's tools (`state_tool`, `setup_tool`), which the
    /// model is neither shown nor allowed to call.
    pub fn hides(&self, name: &str) -> bool {
        self.state_tool.as_deref() == Some(name) || self.setup_tool.as_deref() == Some(name)
    }
}

/// Why a server could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("mcp: {0}")]
    Config(String),
    #[error("mcp server {command:?}: {msg}")]
    Server { command: String, msg: String },
}

/// One of the server's tools, as `tools/list` gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpToolInfo {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(rename = "inputSchema", default)]
    pub input_schema: Value,
}

/// A response, or why none will come.
type Reply = std::result::Result<Value, String>;

/// What the reader thread and the callers share.
struct Link {
    stdin: Mutex<Option<ChildStdin>>,
    /// Calls waiting, by request id.
    pending: Mutex<HashMap<u64, Sender<Reply>>>,
    /// Set when the server's stdout closed: every later call fails with it.
    gone: Mutex<Option<String>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Link {
    fn send(&self, message: &Value) -> std::result::Result<(), String> {
        let mut line = serde_json::to_string(message).expect("JSON");
        line.push('\n');
        let mut stdin = self.stdin.lock();
        let pipe = stdin.as_mut().ok_or("the server's input is closed")?;
        pipe.write_all(line.as_bytes()).and_then(|_| pipe.flush()).map_err(|e| format!("writing to the server: {e}"))
    }

    /// Sends request `method` and waits up to `timeout` for its response's `result`
    /// (`Err` with the server's error, a timeout or the server's end).
    fn request(&self, method: &str, params: Value, timeout: Duration) -> std::result::Result<Value, CallError> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx): (Sender<Reply>, Receiver<Reply>) = channel();
        {
            // Registered under the same lock the reader takes to mark the server gone, so a
            // call is either refused here or answered there.
            let mut pending = self.pending.lock();
            if let Some(why) = self.gone.lock().clone() {
                return Err(CallError::Failed(why));
            }
            pending.insert(id, tx);
        }
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let Err(e) = self.send(&message) {
            self.pending.lock().remove(&id);
            return Err(CallError::Failed(e));
        }
        match rx.recv_timeout(timeout) {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(CallError::Failed(e)),
            Err(RecvTimeoutError::Timeout) => {
                self.pending.lock().remove(&id);
                Err(CallError::TimedOut)
            }
            Err(RecvTimeoutError::Disconnected) => Err(CallError::Failed("the server's reply was lost".into())),
        }
    }
}

enum CallError {
    Failed(String),
    TimedOut,
}

impl CallError {
    /// Why the call failed, in words.
    fn into_words(self) -> String {
        match self {
            CallError::Failed(why) => why,
            CallError::TimedOut => "no answer in time".into(),
        }
    }
}

/// How messages reach a server.
enum Transport {
    /// A child process's stdin and stdout, with the reader thread behind `link`.
    Stdio { link: Arc<Link>, child: Mutex<Child> },
    /// POSTs to a URL, a session of their own.
    Http(http::HttpLink),
}

/// One running server (over HTTP, one session with it): its transport, what it listed.
struct Server {
    transport: Transport,
    tools: Vec<McpToolInfo>,
    /// What the server said it is (`serverInfo`), for messages.
    name: String,
}

impl Server {
    /// Starts the server (with `env` besides the config's) or opens a session with the one
    /// at `url`, and makes the handshake.
    fn start(config: &McpConfig, env: &[(&str, String)]) -> Result<Server, McpError> {
        let label = config.server_label();
        let fail = |msg: String| McpError::Server { command: label.clone(), msg };
        // Built before anything else can fail, so that dropping it ends the process (or
        // the session).
        let mut server = Server { transport: Self::connect(config, env)?, tools: Vec::new(), name: String::new() };
        let timeout = Duration::from_secs_f64(config.timeout_s);
        let request = |method: &str, params: Value| {
            server.request(method, params, timeout).map_err(|e| match e {
                CallError::Failed(m) => fail(format!("{method}: {m}")),
                CallError::TimedOut => fail(format!("{method}: no answer within {} s", config.timeout_s)),
            })
        };
        let hello = request(
            "initialize",
            json!({
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "artist", "version": env!("CARGO_PKG_VERSION")},
            }),
        )?;
        if hello.get("capabilities").and_then(|c| c.get("tools")).is_none() {
            return Err(fail(format!("it offers no tools (initialize answered {hello})")));
        }
        if let Transport::Http(link) = &server.transport
            && link.session().is_none()
            && config.sessions == McpSessions::Rollout
        {
            return Err(fail(
                "mcp.sessions = \"rollout\" gives each rollout a session of its own, but the server opened none \
                 (its answer to initialize had no Mcp-Session-Id header): its state would be every rollout's; \
                 use sessions = \"shared\""
                    .into(),
            ));
        }
        let name = hello.get("serverInfo").and_then(|s| s.get("name")).and_then(Value::as_str).unwrap_or("?");
        let name = name.to_string();
        server
            .notify("notifications/initialized", timeout)
            .map_err(|e| fail(format!("notifications/initialized: {e}")))?;
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params = cursor.as_ref().map_or_else(|| json!({}), |c| json!({ "cursor": c }));
            let page = request("tools/list", params)?;
            let listed = page.get("tools").cloned().unwrap_or(Value::Null);
            let listed: Vec<McpToolInfo> = serde_json::from_value(listed)
                .map_err(|e| fail(format!("tools/list: not a list of tools ({e}): {page}")))?;
            tools.extend(listed);
            cursor = page.get("nextCursor").and_then(Value::as_str).map(str::to_string);
            if cursor.is_none() || tools.len() > 10_000 {
                break;
            }
        }
        if tools.is_empty() {
            return Err(fail("tools/list gave no tools".into()));
        }
        (server.tools, server.name) = (tools, name);
        Ok(server)
    }

    /// The server's transport: its process started (stdio), or a link to its URL.
    fn connect(config: &McpConfig, env: &[(&str, String)]) -> Result<Transport, McpError> {
        if let Some(url) = &config.url {
            let mut headers = Vec::with_capacity(config.headers.len());
            for (name, value) in &config.headers {
                let value =
                    http::expand_env(value).map_err(|e| McpError::Config(format!("mcp.headers.{name}: {e}")))?;
                headers.push((name.clone(), value));
            }
            return Ok(Transport::Http(http::HttpLink::new(url, headers)));
        }
        let fail = |msg: String| McpError::Server { command: config.server_label(), msg };
        let mut child = (config.server_command()?)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot start it: {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let link = Arc::new(Link {
            stdin: Mutex::new(child.stdin.take()),
            pending: Mutex::new(HashMap::new()),
            gone: Mutex::new(None),
            next_id: std::sync::atomic::AtomicU64::new(1),
        });
        let reader = Arc::clone(&link);
        let transport = Transport::Stdio { link, child: Mutex::new(child) };
        // On failure `transport` is dropped, which ends the process.
        std::thread::Builder::new()
            .name("mcp-reader".into())
            .spawn(move || read_server(stdout, &reader))
            .map_err(|e| fail(format!("cannot start its reader thread: {e}")))?;
        Ok(transport)
    }

    /// Sends request `method` and waits up to `timeout` for its response's `result`.
    fn request(&self, method: &str, params: Value, timeout: Duration) -> std::result::Result<Value, CallError> {
        match &self.transport {
            Transport::Stdio { link, .. } => link.request(method, params, timeout),
            Transport::Http(link) => link.request(method, params, timeout),
        }
    }

    /// Sends notification `method`.
    fn notify(&self, method: &str, timeout: Duration) -> std::result::Result<(), String> {
        match &self.transport {
            Transport::Stdio { link, .. } => link.send(&json!({"jsonrpc": "2.0", "method": method})),
            Transport::Http(link) => link.notify(method, timeout),
        }
    }

    /// `tools/call` of `name`: the text the model reads (an error's explained), whether it
    /// succeeded, and whether it timed out.
    fn call(&self, name: &str, arguments: Value, timeout_s: f64) -> (String, bool, bool) {
        let params = json!({"name": name, "arguments": arguments});
        match self.request("tools/call", params, Duration::from_secs_f64(timeout_s)) {
            Ok(result) => {
                let text = content_text(&result);
                let failed = result.get("isError").and_then(Value::as_bool).unwrap_or(false);
                (if failed { format!("error: {text}") } else { text }, !failed, false)
            }
            Err(CallError::Failed(why)) => (format!("error: {why}"), false, false),
            Err(CallError::TimedOut) => (format!("error: {name} gave no answer within {timeout_s} s"), false, true),
        }
    }

    /// Closes a stdio server's input, its cue to exit (an HTTP session ends when dropped,
    /// which may wait for the server: that is left to whoever drops it).
    fn close_input(&self) {
        if let Transport::Stdio { link, .. } = &self.transport {
            link.stdin.lock().take();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        let (link, child) = match self {
            Transport::Http(link) => return link.end(),
            Transport::Stdio { link, child } => (link, child),
        };
        // Closing its input asks a stdio server to exit; it is killed if it does not.
        link.stdin.lock().take();
        let mut child = child.lock();
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Rollouts' final states by rollout id, `None` while being read, and the signal that one
/// came in.
type States = (Mutex<HashMap<u64, Option<String>>>, parking_lot::Condvar);

/// A rollout's server once started, or why it could not be.
type Session = Arc<OnceLock<Result<Arc<Server>, String>>>;

/// The servers for rollouts (`sessions = "rollout"`): started on demand or kept spare.
struct Pool {
    config: McpConfig,
    /// Started and idle, oldest first.
    idle: Mutex<std::collections::VecDeque<Arc<Server>>>,
    /// Spares being started in the background (changed only under `idle`'s lock, so that
    /// idle and starting ones are counted together).
    starting: AtomicUsize,
    /// The next server's `ARTIST_MCP_SESSION` (the first, listing the tools, was 0).
    next: std::sync::atomic::AtomicU64,
    /// Servers started for rollouts (spares included).
    started: AtomicUsize,
    /// Set when the tool is dropped: no more spares.
    closed: std::sync::atomic::AtomicBool,
}

impl Pool {
    fn start(&self) -> Result<Server, McpError> {
        self.started.fetch_add(1, Ordering::Relaxed);
        let session = self.next.fetch_add(1, Ordering::Relaxed);
        Server::start(&self.config, &[("ARTIST_MCP_SESSION", session.to_string())])
    }

    /// A server for a rollout: the oldest spare, or one started now; then the spares are
    /// topped up in the background.
    fn take(self: &Arc<Self>) -> Result<Arc<Server>, McpError> {
        let spare = self.idle.lock().pop_front();
        let server = match spare {
            Some(server) => Ok(server),
            None => self.start().map(Arc::new),
        };
        self.refill();
        server
    }

    /// Starts spares, each on a thread of its own, until idle and starting ones make
    /// `spare_servers`. A spare that fails to start is dropped: the next rollout that finds
    /// none starts its own and meets the error there.
    fn refill(self: &Arc<Self>) {
        let idle = self.idle.lock();
        while !self.closed.load(Ordering::Relaxed)
            && idle.len() + self.starting.load(Ordering::Relaxed) < self.config.spare_servers
        {
            self.starting.fetch_add(1, Ordering::Relaxed);
            let pool = Arc::clone(self);
            let spawned = std::thread::Builder::new().name("mcp-spare".into()).spawn(move || {
                let started = pool.start();
                let unwanted = {
                    let mut idle = pool.idle.lock();
                    pool.starting.fetch_sub(1, Ordering::Relaxed);
                    match started {
                        Ok(server) if !pool.closed.load(Ordering::Relaxed) => {
                            idle.push_back(Arc::new(server));
                            None
                        }
                        started => started.ok(),
                    }
                };
                // Closed after the lock is let go: its exit may take a moment.
                drop(unwanted);
            });
            if spawned.is_err() {
                self.starting.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// An MCP server's tools as one [`Tool`]: see the module doc.
pub struct McpTool {
    config: Arc<McpConfig>,
    tools: Vec<McpToolInfo>,
    /// The tools for the system prompt (made once: every prompt reads it).
    description: String,
    /// What the server said it is (`serverInfo`), for messages.
    server: String,
    /// The server every rollout calls (`sessions = "shared"`).
    shared: Option<Server>,
    /// Each live rollout's own server (`sessions = "rollout"`), by rollout id.
    sessions: Mutex<HashMap<u64, Session>>,
    /// Where rollouts' servers come from.
    pool: Arc<Pool>,
    /// Rollouts' final states (`state_tool`).
    states: Arc<States>,
    /// The HTTP server the client started (`command` and `url` both set): the last field,
    /// so that it ends after every session with it.
    launched: Option<Launched>,
}

/// An HTTP server started by the client (`command` beside `url`), stopped when dropped.
struct Launched {
    child: Child,
}

impl Launched {
    /// Starts `config.command` and waits, up to `timeout_s`, until something accepts
    /// connections at `url`'s host and port (where nothing may listen before it starts).
    /// Its output goes to the trainer's stderr.
    fn start(config: &McpConfig, url: &str) -> Result<Launched, McpError> {
        let fail = |msg: String| McpError::Server { command: config.command.join(" "), msg };
        let uri: ureq::http::Uri = url.parse().map_err(|e| McpError::Config(format!("mcp.url = {url:?}: {e}")))?;
        let host = uri.host().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_string();
        let https = uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let listening = || {
            let addresses = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port));
            addresses
                .into_iter()
                .flatten()
                .any(|address| std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok())
        };
        // Another server there would answer in its place.
        if listening() {
            return Err(fail(format!(
                "something already listens at {url}: leave out mcp.command to use that server, or give the \
                 command a free port"
            )));
        }
        let stdout = std::io::stderr().as_fd().try_clone_to_owned().map(Stdio::from).unwrap_or_else(|_| Stdio::null());
        let child = (config.server_command()?)
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .map_err(|e| fail(format!("cannot start it: {e}")))?;
        let mut launched = Launched { child };
        let deadline = Instant::now() + Duration::from_secs_f64(config.timeout_s);
        loop {
            if let Ok(Some(status)) = launched.child.try_wait() {
                return Err(fail(format!("it exited ({status}) before anything listened at {url}")));
            }
            if listening() {
                return Ok(launched);
            }
            if Instant::now() > deadline {
                return Err(fail(format!("nothing listened at {url} within {} s of its start", config.timeout_s)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Launched {
    /// SIGTERM, two seconds to exit, then SIGKILL.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signals the child this struct started and has not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl McpTool {
    /// Starts the server and makes the handshake; fails with the server's command and what
    /// went wrong (it would not start, closed, answered something else, took too long).
    /// With `sessions = "rollout"` that server is closed once it has listed its tools.
    pub fn spawn(config: McpConfig) -> Result<McpTool, McpError> {
        match (&config.url, config.command.is_empty()) {
            (None, true) => {
                return Err(McpError::Config(
                    "mcp.command is empty: give the server's command line (mcp.command) or the URL of one \
                     running (mcp.url)"
                        .into(),
                ));
            }
            (Some(url), false) => check_url(url)?,
            (Some(url), true) => {
                check_url(url)?;
                if !config.env.is_empty() {
                    return Err(McpError::Config(format!(
                        "mcp.env sets the environment of a server the client starts (mcp.command); the one at \
                         mcp.url = {url:?} runs on its own"
                    )));
                }
            }
            (None, false) => {
                if !config.headers.is_empty() {
                    return Err(McpError::Config("mcp.headers go with mcp.url (an HTTP server)".into()));
                }
            }
        }
        if !(config.timeout_s > 0.0 && config.timeout_s.is_finite()) {
            return Err(McpError::Config(format!("mcp.timeout_s must be a positive number, got {}", config.timeout_s)));
        }
        if config.tag.is_empty() || !config.tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(McpError::Config(format!("mcp.tag {:?} must be letters, digits, '_' or '-'", config.tag)));
        }
        if config.max_calls == 0 {
            return Err(McpError::Config("mcp.max_calls must be >= 1".into()));
        }
        if let Some(state) = &config.state_tool
            && config.sessions != McpSessions::Rollout
        {
            return Err(McpError::Config(format!(
                "mcp.state_tool = {state:?} reads a rollout's own server: it needs sessions = \"rollout\""
            )));
        }
        if let Some(setup) = &config.setup_tool
            && config.sessions != McpSessions::Rollout
        {
            return Err(McpError::Config(format!(
                "mcp.setup_tool = {setup:?} sets up an episode's own server: it needs sessions = \"rollout\""
            )));
        }
        if config.spare_servers > 0 && config.sessions != McpSessions::Rollout {
            return Err(McpError::Config("mcp.spare_servers needs sessions = \"rollout\"".into()));
        }
        if config.spare_servers > MAX_SPARE_SERVERS {
            return Err(McpError::Config(format!(
                "mcp.spare_servers must be at most {MAX_SPARE_SERVERS}, got {}",
                config.spare_servers
            )));
        }
        // `command` and `url` both: the client starts the HTTP server itself, once.
        let launched = match &config.url {
            Some(url) if !config.command.is_empty() => Some(Launched::start(&config, url)?),
            _ => None,
        };
        let first = Server::start(&config, &[("ARTIST_MCP_SESSION", "0".into())])?;
        for (key, tool) in [("state_tool", &config.state_tool), ("setup_tool", &config.setup_tool)] {
            if let Some(tool) = tool
                && !first.tools.iter().any(|t| &t.name == tool)
            {
                let known: Vec<&str> = first.tools.iter().map(|t| t.name.as_str()).collect();
                return Err(McpError::Server {
                    command: config.server_label(),
                    msg: format!("mcp.{key} {tool:?} is not among its tools ({})", known.join(", ")),
                });
            }
        }
        // A JSON list, one function a line: compact, and still readable. The state and setup
        // tools are the grader's, not the model's.
        let lines: Vec<String> = (first.tools.iter())
            .filter(|t| !config.hides(&t.name))
            .map(|t| json!({"name": t.name, "description": t.description, "parameters": t.input_schema}).to_string())
            .collect();
        let (tools, server) = (first.tools.clone(), first.name.clone());
        let shared = (config.sessions == McpSessions::Shared).then_some(first);
        let pool = Arc::new(Pool {
            config: config.clone(),
            idle: Mutex::new(Default::default()),
            starting: AtomicUsize::new(0),
            next: std::sync::atomic::AtomicU64::new(1),
            started: AtomicUsize::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        pool.refill();
        Ok(McpTool {
            config: Arc::new(config),
            tools,
            description: format!("[\n{}\n]", lines.join(",\n")),
            server,
            shared,
            sessions: Mutex::new(HashMap::new()),
            pool,
            states: Arc::new((Mutex::new(HashMap::new()), parking_lot::Condvar::new())),
            launched,
        })
    }

    /// The process id of the HTTP server the client started (`command` beside `url`).
    pub fn launched_pid(&self) -> Option<u32> {
        self.launched.as_ref().map(|l| l.child.id())
    }

    /// Spare servers started and idle now (`spare_servers`).
    pub fn spare_servers(&self) -> usize {
        self.pool.idle.lock().len()
    }

    /// Rollout servers running now (`sessions = "rollout"`; 0 otherwise).
    pub fn open_sessions(&self) -> usize {
        self.sessions.lock().values().filter(|s| s.get().is_some_and(Result::is_ok)).count()
    }

    /// Rollout servers started since [`McpTool::spawn`] (`sessions = "rollout"`; spares
    /// included).
    pub fn sessions_started(&self) -> usize {
        self.pool.started.load(Ordering::Relaxed)
    }

    /// The server `rollout`'s calls go to: the shared one, or its own, started now if this
    /// is its first call (other rollouts' starts go on at the same time).
    fn server_for(&self, rollout: u64) -> Result<ServerRef<'_>, String> {
        if let Some(shared) = &self.shared {
            return Ok(ServerRef::Shared(shared));
        }
        let slot = Arc::clone(self.sessions.lock().entry(rollout).or_default());
        let started = slot.get_or_init(|| self.pool.take().map_err(|e| format!("starting this rollout's server: {e}")));
        started.clone().map(ServerRef::Own)
    }

    /// A server of its own for one multi-turn episode (`sessions = "rollout"`): a spare, or
    /// one started now, set up with `setup` as the arguments of `setup_tool` when there is
    /// one. It is closed when the session is dropped.
    pub fn open_session(&self, setup: &Value) -> Result<McpSession, McpError> {
        if self.config.sessions != McpSessions::Rollout {
            return Err(McpError::Config("an episode's own server needs mcp.sessions = \"rollout\"".into()));
        }
        let session = McpSession { server: Some(self.pool.take()?), config: Arc::clone(&self.config) };
        if let Some(tool) = &self.config.setup_tool {
            let arguments = match setup {
                Value::Null => json!({}),
                Value::Object(_) => setup.clone(),
                other => {
                    return Err(McpError::Config(format!(
                        "the arguments of setup tool {tool:?} must be an object, got {other}"
                    )));
                }
            };
            let (text, ok, _) = session.server().call(tool, arguments, self.config.timeout_s);
            if !ok {
                return Err(McpError::Server {
                    command: self.config.server_label(),
                    msg: format!("setup tool {tool:?} failed: {text}"),
                });
            }
        }
        Ok(session)
    }

    /// The server's tools, as listed.
    pub fn tools(&self) -> &[McpToolInfo] {
        &self.tools
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &McpConfig {
        &self.config
    }

    /// The server's name (`serverInfo.name`).
    pub fn server_name(&self) -> &str {
        &self.server
    }

    /// One `{"name", "arguments"}` call: the text the model reads, and whether it succeeded.
    fn call_one(&self, server: &Server, call: &Value) -> (String, bool, bool) {
        let Some(name) = call.get("name").and_then(Value::as_str) else {
            return (format!("error: a call needs a \"name\": {call}"), false, false);
        };
        if !server.tools.iter().any(|t| t.name == name) || self.config.hides(name) {
            let known: Vec<&str> =
                server.tools.iter().map(|t| t.name.as_str()).filter(|&t| !self.config.hides(t)).collect();
            return (format!("error: no tool named {name:?} (the tools: {})", known.join(", ")), false, false);
        }
        let arguments = match call.get("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(a @ Value::Object(_)) => a.clone(),
            Some(other) => return (format!("error: \"arguments\" must be an object, got {other}"), false, false),
        };
        server.call(name, arguments, self.config.timeout_s)
    }
}

impl Drop for McpTool {
    fn drop(&mut self) {
        // Every rollout server and spare is asked to exit at once, then each is waited for
        // (a spare still starting closes when its start is done).
        self.pool.closed.store(true, Ordering::Relaxed);
        let sessions: Vec<Session> = self.sessions.lock().drain().map(|(_, s)| s).collect();
        let spares: Vec<Arc<Server>> = self.pool.idle.lock().drain(..).collect();
        for s in &sessions {
            if let Some(Ok(server)) = s.get() {
                server.close_input();
            }
        }
        for server in &spares {
            server.close_input();
        }
        // Then each is waited for (an HTTP session's DELETE sent) together: one that takes
        // its time does not hold up the others.
        let servers = (sessions.iter().filter_map(|s| s.get().and_then(|r| r.as_ref().ok()).cloned())).chain(spares);
        let servers: Vec<Arc<Server>> = servers.collect();
        drop(sessions);
        std::thread::scope(|scope| {
            for server in servers {
                let builder = std::thread::Builder::new().name("mcp-close".into());
                // Without a thread, it is closed here.
                let _ = builder.spawn_scoped(scope, move || drop(server));
            }
        });
    }
}

/// One episode's own server ([`McpTool::open_session`]): its calls, its state, and its
/// end when dropped (on a thread of its own, so the caller does not wait for the exit).
pub struct McpSession {
    server: Option<Arc<Server>>,
    config: Arc<McpConfig>,
}

impl McpSession {
    fn server(&self) -> &Server {
        self.server.as_ref().expect("held until dropped")
    }

    /// `tools/call` of `name` with `arguments` (an object): the text the model reads (an
    /// error's explained) and whether the call succeeded. The grader's tools are refused.
    pub fn call(&self, name: &str, arguments: Value) -> (String, bool) {
        if self.config.hides(name) || !self.server().tools.iter().any(|t| t.name == name) {
            return (format!("error: no tool named {name:?}"), false);
        }
        let (text, ok, _) = self.server().call(name, arguments, self.config.timeout_s);
        let (text, _) = cut(text, self.config.max_output_bytes);
        (text, ok)
    }

    /// The text of `state_tool` called with no arguments (`None` without one), or why the
    /// call failed: a state that cannot be read must not pass for one.
    pub fn state(&self) -> Option<Result<String, String>> {
        let tool = self.config.state_tool.as_ref()?;
        let (text, ok, _) = self.server().call(tool, json!({}), self.config.timeout_s);
        Some(if ok { Ok(text) } else { Err(format!("state tool {tool:?}: {text}")) })
    }
}

impl Drop for McpSession {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.close_input();
            let _ = std::thread::Builder::new().name("mcp-close".into()).spawn(move || drop(server));
        }
    }
}

/// A server a call goes to: borrowed (shared) or held for the call (a rollout's).
enum ServerRef<'a> {
    Shared(&'a Server),
    Own(Arc<Server>),
}

impl std::ops::Deref for ServerRef<'_> {
    type Target = Server;
    fn deref(&self) -> &Server {
        match self {
            ServerRef::Shared(s) => s,
            ServerRef::Own(s) => s,
        }
    }
}

impl Tool for McpTool {
    fn name(&self) -> &str {
        "mcp"
    }

    fn tag(&self) -> &str {
        &self.config.tag
    }

    fn describe(&self) -> Option<String> {
        Some(self.description.clone())
    }

    fn end_rollout(&self, rollout: u64) {
        let session = self.sessions.lock().remove(&rollout);
        let server = session.as_ref().and_then(|s| s.get()).and_then(|r| r.as_ref().ok()).cloned();
        drop(session);
        let Some(state_tool) = self.config.state_tool.clone() else {
            // Waiting for the server to exit is left to a thread of its own: the engine
            // that ended the rollout goes on decoding.
            if let Some(server) = server {
                server.close_input();
                let _ = std::thread::Builder::new().name("mcp-close".into()).spawn(move || drop(server));
            }
            return;
        };
        // The state is read on a thread of its own too, then the server closes; the rollout
        // that made no call gets a server for this call (the initial state).
        self.states.0.lock().insert(rollout, None);
        let (states, config, pool) = (Arc::clone(&self.states), Arc::clone(&self.config), Arc::clone(&self.pool));
        let read = move || {
            let state = match server.map(Ok).unwrap_or_else(|| pool.take()) {
                Ok(server) => {
                    let (state, _, _) = server.call(&state_tool, json!({}), config.timeout_s);
                    server.close_input();
                    state
                }
                Err(e) => format!("error: starting a server to read the state: {e}"),
            };
            states.0.lock().insert(rollout, Some(state));
            states.1.notify_all();
        };
        if let Err(e) = std::thread::Builder::new().name("mcp-state".into()).spawn(read) {
            self.states.0.lock().insert(rollout, Some(format!("error: cannot start a thread to read the state: {e}")));
        }
    }

    fn final_state(&self, rollout: u64) -> Option<String> {
        self.config.state_tool.as_ref()?;
        // At most a server's start (two requests) and the call, each within the timeout.
        let wait = 3.0 * self.config.timeout_s + 1.0;
        let deadline = Instant::now() + Duration::from_secs_f64(wait);
        let (lock, changed) = &*self.states;
        let mut states = lock.lock();
        loop {
            match states.get(&rollout) {
                None => return None,
                Some(Some(_)) => return states.remove(&rollout).flatten(),
                Some(None) => {}
            }
            if changed.wait_until(&mut states, deadline).timed_out() {
                states.remove(&rollout);
                return Some(format!("error: no final state within {wait} s"));
            }
        }
    }

    fn execute(&self, call: &ToolCall) -> ToolResult {
        let start = Instant::now();
        let (calls, list) = match serde_json::from_str::<Value>(call.text.trim()) {
            Ok(Value::Array(calls)) => (calls, true),
            Ok(one @ Value::Object(_)) => (vec![one], false),
            Ok(other) => {
                return failed(start, format!("error: expected a JSON call or a list of calls, got {other}"));
            }
            Err(e) => return failed(start, format!("error: the call is not JSON ({e})")),
        };
        if calls.is_empty() || calls.len() > self.config.max_calls {
            return failed(
                start,
                format!("error: {} calls in one block; 1 to {} allowed", calls.len(), self.config.max_calls),
            );
        }
        let server = match self.server_for(call.rollout) {
            Ok(server) => server,
            Err(why) => return failed(start, format!("error: {why}")),
        };
        let mut texts = Vec::with_capacity(calls.len());
        let (mut success, mut timed_out) = (true, false);
        for c in &calls {
            let (text, ok, late) = self.call_one(&server, c);
            texts.push(text);
            success &= ok;
            timed_out |= late;
        }
        // One call: its text; a list: a JSON list of the texts, in order.
        let output = if list { serde_json::to_string(&texts).expect("JSON") } else { texts.pop().unwrap_or_default() };
        let (output, truncated) = cut(output, self.config.max_output_bytes);
        ToolResult { output, success, timed_out, truncated, elapsed_ms: start.elapsed().as_millis() as u64 }
    }
}

/// Refuses a `url` the client cannot reach.
fn check_url(url: &str) -> Result<(), McpError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        if !cfg!(feature = "https") {
            return Err(McpError::Config(format!(
                "mcp.url = {url:?}: https:// needs artist built with the `https` feature \
                 (cargo build --release --features https)"
            )));
        }
    } else if !lower.starts_with("http://") {
        return Err(McpError::Config(format!("mcp.url = {url:?} must start with http:// or https://")));
    }
    if let Err(e) = url.parse::<ureq::http::Uri>() {
        return Err(McpError::Config(format!("mcp.url = {url:?} is not a URL: {e}")));
    }
    Ok(())
}

fn failed(start: Instant, output: String) -> ToolResult {
    ToolResult { output, success: false, elapsed_ms: start.elapsed().as_millis() as u64, ..Default::default() }
}

/// `text` cut to at most `max` bytes (on a character boundary) with a marker saying so.
fn cut(text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (format!("{}\n[output cut at {max} bytes]", &text[..end]), true)
}

/// The text a `tools/call` result carries: its text items in order, other items named by
/// their type, or its structured content when it has no items.
fn content_text(result: &Value) -> String {
    let items = result.get("content").and_then(Value::as_array).cloned().unwrap_or_default();
    if items.is_empty() {
        return result.get("structuredContent").map(Value::to_string).unwrap_or_default();
    }
    let parts: Vec<String> = items
        .iter()
        .map(|item| match item.get("type").and_then(Value::as_str) {
            Some("text") => item.get("text").and_then(Value::as_str).unwrap_or_default().to_string(),
            Some(other) => format!("[{other} content]"),
            None => item.to_string(),
        })
        .collect();
    parts.join("\n")
}

/// The client's answer to request `method` (number `id`) from the server: `{}` to a ping,
/// "method not found" to anything else.
fn answer_to(method: &str, id: &Value) -> Value {
    if method == "ping" {
        json!({"jsonrpc": "2.0", "id": id, "result": {}})
    } else {
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("method not found: {method}")}})
    }
}

/// A response's `result`, or its error in words.
fn reply_of(message: &Value) -> Reply {
    match (message.get("result"), message.get("error")) {
        (Some(result), _) => Ok(result.clone()),
        (None, Some(error)) => {
            let text = error.get("message").and_then(Value::as_str).unwrap_or("an error without a message");
            let code = error.get("code").map(Value::to_string).unwrap_or_default();
            Err(format!("the server answered error {code}: {text}"))
        }
        (None, None) => Err(format!("the server answered neither a result nor an error: {message}")),
    }
}

/// The reader thread: each line from the server is a response (handed to the call waiting
/// on its id), a request (answered), or a notification (ignored). When the server's output
/// ends, every waiting call and every later one fails with that.
fn read_server(stdout: std::process::ChildStdout, link: &Link) {
    let mut lines = BufReader::new(stdout).lines();
    let why = loop {
        let line = match lines.next() {
            None => break "the server exited".to_string(),
            Some(Err(e)) => break format!("reading from the server: {e}"),
            Some(Ok(line)) => line,
        };
        if line.trim().is_empty() {
            continue;
        }
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            // Not JSON-RPC (a server printing to stdout by mistake): skipped.
            continue;
        };
        let id = message.get("id").cloned();
        if let Some(method) = message.get("method").and_then(Value::as_str) {
            if let Some(id) = id {
                let _ = link.send(&answer_to(method, &id));
            }
            continue;
        }
        let Some(id) = id.as_ref().and_then(Value::as_u64) else { continue };
        let reply = reply_of(&message);
        if let Some(waiting) = link.pending.lock().remove(&id) {
            let _ = waiting.send(reply);
        }
    };
    let mut pending = link.pending.lock();
    *link.gone.lock() = Some(why.clone());
    for (_, waiting) in pending.drain() {
        let _ = waiting.send(Err(why.clone()));
    }
}
