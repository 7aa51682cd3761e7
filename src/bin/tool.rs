//! `tool`: one tool call from the command line, through the code the rollout engine uses.
//!
//!     cargo run --release --bin tool -- python [--timeout-s N] [--persistent] < code.py
//!     cargo run --release --bin tool -- calculator < expr.txt
//!     cargo run --release --bin tool -- mcp --command "python3 server.py" < call.json
//!     cargo run --release --bin tool -- mcp --command "python3 server.py" --list
//!     cargo run --release --bin tool -- mcp --url http://127.0.0.1:8000/mcp < call.json
//!
//! Prints one JSON object (a stable interface, see docs/SANDBOX.md):
//! `{"output", "success", "timed_out", "truncated", "elapsed_ms", "sandbox"}` where `sandbox`
//! is `bwrap`, `namespaces` or `rlimits-only` (`none` for the in-process calculator and for an
//! MCP server, which runs unsandboxed; `mcp --list` prints the server's tools instead). Exits 0
//! whenever a result was produced, whatever the code did; non-zero only when no call could be
//! made (bad arguments or config, no interpreter, no working isolation).
//!
//! With `--persistent`, stdin is split into cells at lines equal to `--cell-separator`; the
//! cells run in order as calls of one rollout and the object describes the last one.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use artist_tools::{Calculator, Isolation, PythonTool, SandboxConfig, Tool, ToolCall, ToolResult};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(version = artist::VERSION, about = "Run one tool call (code or expression on stdin) and print the result as JSON")]
struct Args {
    #[command(subcommand)]
    tool: Which,
}

#[derive(Subcommand, Debug)]
enum Which {
    /// Python in the sandbox.
    Python(PythonArgs),
    /// The arithmetic calculator.
    Calculator,
    /// A call (`{"name", "arguments"}` or a list of them) to an MCP server's tools.
    Mcp(McpArgs),
}

#[derive(clap::Args, Debug)]
struct McpArgs {
    /// The server's command line, split into words as a shell would (quotes keep spaces:
    /// "python3 'my server.py' --flag"; nothing is expanded).
    #[arg(long, required_unless_present = "url")]
    command: Option<String>,
    /// The endpoint of a server over Streamable HTTP (`http://127.0.0.1:8000/mcp`): one
    /// already running, or with --command, the one that command starts (and stops after).
    #[arg(long)]
    url: Option<String>,
    /// Seconds the call may take.
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,
    /// Print the server's tools (as the system prompt lists them) instead of calling one.
    #[arg(long)]
    list: bool,
}

#[derive(clap::Args, Debug)]
struct PythonArgs {
    /// A JSON file with `SandboxConfig` fields; flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Interpreter (name in PATH or path).
    #[arg(long)]
    python: Option<String>,
    /// Wall-clock limit in seconds.
    #[arg(long)]
    timeout_s: Option<f64>,
    /// CPU-time limit in seconds.
    #[arg(long)]
    cpu_s: Option<u64>,
    /// Address-space limit in bytes.
    #[arg(long)]
    memory_bytes: Option<u64>,
    /// Output kept, in bytes.
    #[arg(long)]
    output_bytes: Option<usize>,
    #[arg(long, value_enum)]
    isolation: Option<IsolationArg>,
    /// Run stdin as several cells of one rollout, each seeing the earlier ones' names.
    #[arg(long)]
    persistent: bool,
    /// The line that separates cells in --persistent mode.
    #[arg(long, default_value = "# %%")]
    cell_separator: String,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum IsolationArg {
    Auto,
    Bwrap,
    Namespaces,
    RlimitsOnly,
}

fn read_stdin() -> Result<String> {
    let mut bytes = vec![];
    std::io::stdin().read_to_end(&mut bytes).context("reading stdin")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn print(result: &ToolResult, sandbox: &str) -> Result<()> {
    let obj = serde_json::json!({
        "output": result.output,
        "success": result.success,
        "timed_out": result.timed_out,
        "truncated": result.truncated,
        "elapsed_ms": result.elapsed_ms,
        "sandbox": sandbox,
    });
    println!("{}", serde_json::to_string(&obj)?);
    Ok(())
}

fn python(args: PythonArgs) -> Result<()> {
    let mut config: SandboxConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not a sandbox config", path.display()))?
        }
        None => SandboxConfig::default(),
    };
    if let Some(p) = args.python {
        config.python = p;
    }
    if let Some(t) = args.timeout_s {
        config.timeout_s = t;
    }
    if let Some(c) = args.cpu_s {
        config.cpu_s = c;
    }
    if let Some(m) = args.memory_bytes {
        config.memory_bytes = m;
    }
    if let Some(o) = args.output_bytes {
        config.output_bytes = o;
    }
    if let Some(i) = args.isolation {
        config.isolation = match i {
            IsolationArg::Auto => Isolation::Auto,
            IsolationArg::Bwrap => Isolation::Bwrap,
            IsolationArg::Namespaces => Isolation::Namespaces,
            IsolationArg::RlimitsOnly => Isolation::RlimitsOnly,
        };
    }
    config.persistent |= args.persistent;
    let code = read_stdin()?;
    let cells: Vec<String> = if config.persistent {
        let mut cells = vec![String::new()];
        for line in code.split_inclusive('\n') {
            if line.trim_end_matches(['\n', '\r']) == args.cell_separator {
                cells.push(String::new());
            } else if let Some(last) = cells.last_mut() {
                last.push_str(line);
            }
        }
        cells
    } else {
        vec![code]
    };
    let tool = PythonTool::new(config).context("starting the python tool")?;
    let mut last = ToolResult::default();
    for cell in cells {
        last = tool.execute(&ToolCall { text: cell, rollout: 0, ..Default::default() });
    }
    tool.end_rollout(0);
    print(&last, tool.sandbox_kind().as_str())
}

fn main() -> Result<()> {
    match Args::parse().tool {
        Which::Python(args) => python(args),
        Which::Calculator => {
            let result = Calculator.execute(&ToolCall { text: read_stdin()?, rollout: 0, ..Default::default() });
            print(&result, "none")
        }
        Which::Mcp(args) => {
            let command = match &args.command {
                Some(command) => artist::cli::split_command(command, "--command")?,
                None => Vec::new(),
            };
            let url = args.url.clone();
            let flag = if url.is_some() { "--url" } else { "--command" };
            let config = artist_tools::McpConfig { command, url, timeout_s: args.timeout_s, ..Default::default() };
            let tool =
                artist_tools::McpTool::spawn(config).with_context(|| format!("starting the MCP server of {flag}"))?;
            if args.list {
                println!("{}", tool.describe().unwrap_or_default());
                return Ok(());
            }
            let result = tool.execute(&ToolCall { text: read_stdin()?, rollout: 0, ..Default::default() });
            print(&result, "none")
        }
    }
}
