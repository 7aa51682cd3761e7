//! MCP's Streamable HTTP transport (`mcp.url`): each JSON-RPC message the client sends is
//! the body of a POST to the server's endpoint, and the server answers a request with a JSON
//! body or with an event stream (SSE) whose events are JSON-RPC messages, the response among
//! them; a request from the server met on such a stream (`ping`, ...) is answered by a POST
//! of its own. The server names the session `initialize` opened in the `Mcp-Session-Id`
//! header, which every later message carries (with `MCP-Protocol-Version`, the revision
//! agreed), and a DELETE with it ends the session. A notification is answered 202.
//!
//! Every message is a request of its own, so calls overlap with no reader thread; a call's
//! timeout bounds the whole exchange, its event stream included. The server's optional GET
//! stream (messages not tied to a request) is not opened: a tool call does not need it.

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};

use super::{CallError, answer_to, reply_of};

/// The most a response may hold, in bytes (a tool's text is cut much shorter later).
const MAX_BODY_BYTES: u64 = 64 << 20;

/// How long the DELETE that ends a session may take.
const END_TIMEOUT: Duration = Duration::from_secs(2);

/// One session with a server at a URL.
pub(super) struct HttpLink {
    agent: ureq::Agent,
    url: String,
    /// Sent with every message (`mcp.headers`, `${VAR}`s filled in).
    headers: Vec<(String, String)>,
    /// The `Mcp-Session-Id` `initialize` was answered with, if any.
    session: Mutex<Option<String>>,
    /// The protocol revision agreed at `initialize`, sent as `MCP-Protocol-Version` after it.
    version: Mutex<Option<String>>,
    next_id: AtomicU64,
    ended: AtomicBool,
}

impl HttpLink {
    pub(super) fn new(url: &str, headers: Vec<(String, String)>) -> HttpLink {
        let mut config = ureq::Agent::config_builder();
        if is_loopback(url) {
            // A server on this machine is reached directly, whatever HTTP_PROXY says.
            config = config.proxy(None);
        }
        let agent = config
            // Statuses are read, not turned into errors: a 404 means the session is gone.
            .http_status_as_error(false)
            .user_agent(concat!("artist/", env!("CARGO_PKG_VERSION")))
            // Calls of one session overlap: keep their connections for the next ones.
            .max_idle_connections_per_host(32)
            .build()
            .new_agent();
        HttpLink {
            agent,
            url: url.to_string(),
            headers,
            session: Mutex::new(None),
            version: Mutex::new(None),
            next_id: AtomicU64::new(1),
            ended: AtomicBool::new(false),
        }
    }

    /// The session the server opened (`None` for a stateless server or before `initialize`).
    pub(super) fn session(&self) -> Option<String> {
        self.session.lock().clone()
    }

    /// The headers every message after `initialize` carries.
    fn session_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        if let Some(id) = self.session.lock().clone() {
            headers.push(("Mcp-Session-Id", id));
        }
        if let Some(version) = self.version.lock().clone() {
            headers.push(("MCP-Protocol-Version", version));
        }
        headers
    }

    /// POSTs `message` within `timeout`: the response, or why none came.
    fn post(&self, message: &Value, timeout: Duration) -> Result<ureq::http::Response<ureq::Body>, CallError> {
        let mut request = (self.agent.post(&self.url))
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        for (name, value) in self.session_headers() {
            request = request.header(name, value);
        }
        request.send(serde_json::to_string(message).expect("JSON")).map_err(|e| self.failed(e))
    }

    /// A transport error in words (a timeout as such).
    fn failed(&self, e: ureq::Error) -> CallError {
        match e {
            ureq::Error::Timeout(_) => CallError::TimedOut,
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                CallError::Failed(format!("nothing answers at {} (connection refused)", self.url))
            }
            e => CallError::Failed(format!("{}: {e}", self.url)),
        }
    }

    /// The status of a response that is not the one expected, in words, with the start of
    /// its body.
    fn refused(&self, response: &mut ureq::http::Response<ureq::Body>) -> CallError {
        let status = response.status();
        let body = response.body_mut().with_config().limit(4096).lossy_utf8(true).read_to_string();
        let body = head(&body.unwrap_or_default());
        let session = self.session();
        CallError::Failed(match (status.as_u16(), session) {
            (404, Some(id)) => format!("the server no longer knows session {id} (HTTP 404): {body}"),
            (202, _) => "the server accepted the request without answering it (HTTP 202): answers sent on its \
                         GET stream are not read"
                .into(),
            (code, _) => format!("the server answered HTTP {code}: {body}"),
        })
    }

    /// Sends request `method` and waits up to `timeout` for its response's `result`.
    pub(super) fn request(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        // The answers to the server's own requests on the way count against the same time.
        let deadline = Instant::now() + timeout;
        let mut response = self.post(&message, timeout)?;
        if response.status() != 200 {
            return Err(self.refused(&mut response));
        }
        if method == "initialize" {
            let session = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok());
            *self.session.lock() = session.map(str::to_string);
        }
        let kind = response.body().mime_type().unwrap_or_default().to_ascii_lowercase();
        let result = match kind.as_str() {
            "application/json" => {
                let body = response.body_mut().with_config().limit(MAX_BODY_BYTES).read_to_string();
                let body = body.map_err(|e| self.failed(e))?;
                let value: Value = serde_json::from_str(&body).map_err(|e| {
                    CallError::Failed(format!("the server's answer is not JSON ({e}): {}", head(&body)))
                })?;
                // One message, or a batch of them.
                let messages = match value {
                    Value::Array(items) => items,
                    one => vec![one],
                };
                messages.into_iter().find_map(|m| self.take(&m, id, deadline)).unwrap_or_else(|| {
                    Err(CallError::Failed(format!("the server's answer holds no response to request {id}")))
                })
            }
            "text/event-stream" => self.read_stream(response, id, deadline),
            other => Err(CallError::Failed(format!(
                "the server answered with content type {other:?}, neither application/json nor text/event-stream"
            ))),
        }?;
        if method == "initialize" {
            let agreed = result.get("protocolVersion").and_then(Value::as_str).unwrap_or(super::PROTOCOL_VERSION);
            *self.version.lock() = Some(agreed.to_string());
        }
        Ok(result)
    }

    /// What message `m` means for request `id`: its reply (`Some`) when it is the response
    /// to it; a request from the server is answered, anything else passed over (`None`).
    fn take(&self, m: &Value, id: u64, deadline: Instant) -> Option<Result<Value, CallError>> {
        if let Some(method) = m.get("method").and_then(Value::as_str) {
            if let Some(asked) = m.get("id") {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Some(Err(CallError::TimedOut));
                }
                // Its answer goes back as a POST of its own, which is answered 202.
                if let Err(e) = self.post(&answer_to(method, asked), left) {
                    let why = e.into_words();
                    return Some(Err(CallError::Failed(format!("answering the server's {method}: {why}"))));
                }
            }
            return None;
        }
        (m.get("id").and_then(Value::as_u64) == Some(id)).then(|| reply_of(m).map_err(CallError::Failed))
    }

    /// Reads an event stream until the response to request `id` comes.
    fn read_stream(
        &self,
        response: ureq::http::Response<ureq::Body>,
        id: u64,
        deadline: Instant,
    ) -> Result<Value, CallError> {
        let reader = response.into_body().into_with_config().limit(MAX_BODY_BYTES).reader();
        let mut data = String::new();
        for line in BufReader::new(reader).lines() {
            let line = line.map_err(|e| self.failed(ureq::Error::from(e)))?;
            if line.is_empty() {
                // The end of an event: its data is one JSON-RPC message.
                if !data.is_empty() {
                    let message: Value = serde_json::from_str(&data).map_err(|e| {
                        CallError::Failed(format!("an event from the server is not JSON ({e}): {}", head(&data)))
                    })?;
                    data.clear();
                    if let Some(reply) = self.take(&message, id, deadline) {
                        return reply;
                    }
                }
                continue;
            }
            // `data:` lines make the event's data (one space after the colon dropped);
            // comments (`:`), `event:`, `id:` and `retry:` say nothing a call needs.
            if let Some(rest) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            }
        }
        Err(CallError::Failed(format!("the server's event stream ended before the response to request {id}")))
    }

    /// Sends notification `method` (answered 202, with nothing to read).
    pub(super) fn notify(&self, method: &str, timeout: Duration) -> Result<(), String> {
        let message = json!({"jsonrpc": "2.0", "method": method});
        match self.post(&message, timeout) {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(mut response) => Err(self.refused(&mut response).into_words()),
            Err(CallError::Failed(why)) => Err(why),
            Err(CallError::TimedOut) => Err(format!("no answer within {} s", timeout.as_secs_f64())),
        }
    }

    /// Ends the session (a DELETE naming it; once, and only when the server opened one).
    /// A server that does not allow clients to end sessions answers 405, which is fine.
    pub(super) fn end(&self) {
        if self.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        let Some(id) = self.session() else { return };
        let mut request = self.agent.delete(&self.url).config().timeout_global(Some(END_TIMEOUT)).build();
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let _ = request.header("Mcp-Session-Id", id).call();
    }
}

/// The start of `text` (300 characters, "..." after a longer one), for messages.
fn head(text: &str) -> String {
    let mut chars = text.chars();
    let start: String = chars.by_ref().take(300).collect();
    if chars.next().is_some() { format!("{start}...") } else { start }
}

/// Whether `url`'s host is this machine (`localhost`, `127.x.x.x`, `[::1]`).
fn is_loopback(url: &str) -> bool {
    let Some(host) = url.parse::<ureq::http::Uri>().ok().and_then(|u| u.host().map(str::to_ascii_lowercase)) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `value` with each `${NAME}` replaced by environment variable NAME (an unset one is an
/// error naming it): a header can carry a token without the config holding it.
pub(super) fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("{value:?}: \"${{\" is not closed"))?;
        let name = &after[..end];
        let var = std::env::var(name).map_err(|_| format!("{value:?}: environment variable {name} is not set"))?;
        out.push_str(&var);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{expand_env, is_loopback};

    #[test]
    fn loopback_hosts_are_known() {
        for url in ["http://127.0.0.1:8000/mcp", "http://localhost/mcp", "http://[::1]:9/mcp", "http://127.3.2.1/"] {
            assert!(is_loopback(url), "{url}");
        }
        for url in ["http://10.0.0.1/mcp", "https://example.com/mcp", "not a url"] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn headers_take_environment_variables() {
        // SAFETY: a variable no other test reads.
        unsafe { std::env::set_var("ARTIST_TEST_MCP_TOKEN", "s3cret") };
        assert_eq!(expand_env("Bearer ${ARTIST_TEST_MCP_TOKEN}").unwrap(), "Bearer s3cret");
        assert_eq!(expand_env("${ARTIST_TEST_MCP_TOKEN}/${ARTIST_TEST_MCP_TOKEN}").unwrap(), "s3cret/s3cret");
        assert_eq!(expand_env("plain $HOME").unwrap(), "plain $HOME");
        assert!(
            expand_env("Bearer ${ARTIST_TEST_MCP_UNSET}").unwrap_err().contains("ARTIST_TEST_MCP_UNSET is not set")
        );
        assert!(expand_env("Bearer ${OPEN").unwrap_err().contains("not closed"));
    }
}
