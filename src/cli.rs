//! Pieces the binaries share: parsing token-id lists, opening a model directory, the
//! `--device` flag.

use std::path::Path;

use anyhow::{Context, Result, bail};
use artist_model::Qwen2;
use artist_tensor::Device;
use artist_tokenizer::Tokenizer;

/// `"1,2, 3"` -> `[1, 2, 3]`.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let ids = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().with_context(|| format!("{t:?} is not a token id (expected e.g. 1,2,3)")))
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        bail!("no token ids given");
    }
    Ok(ids)
}

/// The device named by `--device` (`auto`, `cpu`, `cuda`, `cuda:N`), opened; a GPU is
/// described on stderr. Asking for CUDA where none can be used is an error naming why.
pub fn device(name: &str) -> Result<Device> {
    let d = Device::parse(name).with_context(|| format!("--device {name}"))?;
    if let Device::Cuda(n) = d {
        let info = artist_tensor::cuda::info(n)?;
        eprintln!(
            "device cuda:{n}: {} (sm_{}{}, {} multiprocessors, {:.1} GiB; {})",
            info.name,
            info.compute_capability.0,
            info.compute_capability.1,
            info.multiprocessors,
            info.total_memory as f64 / (1u64 << 30) as f64,
            info.toolchain
        );
    }
    Ok(d)
}

/// The model on `device` (with the PEFT LoRA adapters of the directory `lora`, as
/// `--lora` asks) and, when the model directory has one, its tokenizer.
pub fn open_model(dir: &Path, lora: Option<&Path>, device: Device) -> Result<(Qwen2, Option<Tokenizer>)> {
    if !dir.is_dir() {
        bail!("{}: not a model directory", dir.display());
    }
    let mut model =
        Qwen2::load_on(dir, device).with_context(|| format!("loading the model in {} onto {device}", dir.display()))?;
    if let Some(adapters) = lora {
        model.load_lora(adapters).with_context(|| format!("--lora {}", adapters.display()))?;
    }
    let tokenizer = if dir.join(artist_tokenizer::TOKENIZER_FILE).exists() {
        Some(Tokenizer::from_dir(dir).with_context(|| format!("loading the tokenizer in {}", dir.display()))?)
    } else {
        None
    };
    Ok((model, tokenizer))
}

/// Whether the tokenizer has a token for `id`. A model's output layer is often wider than its
/// tokenizer (Qwen2.5: 151,936 rows, 151,665 tokens); transformers' `decode` drops such ids.
pub fn known(tokenizer: &Tokenizer, id: u32) -> bool {
    tokenizer.id_to_token(id).is_some()
}

/// Checks ids against the model's vocabulary before anything runs.
pub fn check_ids(ids: &[u32], vocab_size: usize) -> Result<()> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab_size) {
        bail!("token id {bad} is out of range: the model's vocab_size is {vocab_size}");
    }
    Ok(())
}

/// EOS ids from `config.json` and, when present, `generation_config.json`.
pub fn eos_ids(dir: &Path, model: &Qwen2) -> Result<Vec<u32>> {
    let mut ids = model.config.eos_token_ids.clone();
    let path = dir.join("generation_config.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
        match v.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => ids.extend(n.as_u64().map(|x| x as u32)),
            Some(serde_json::Value::Array(a)) => ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32)),
            _ => {}
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// A command line given as one argument (`--mcp-command "python3 'my server.py' --flag"`),
/// split as a POSIX shell splits words: at spaces, with quotes and backslashes keeping
/// spaces inside one word (nothing is expanded, no shell runs). `flag` names the argument
/// in the error.
pub fn split_command(command: &str, flag: &str) -> Result<Vec<String>> {
    let words = shlex::split(command)
        .with_context(|| format!("{flag} {command:?}: a quote is not closed (or a backslash ends it)"))?;
    anyhow::ensure!(!words.is_empty(), "{flag} is empty: give the program to run and its arguments");
    Ok(words)
}

/// The MCP server of `--tools mcp` (`generate`, `eval`): the GRPO config's `[mcp]` as flags.
#[derive(clap::Args, Debug, Clone)]
#[command(group = clap::ArgGroup::new("mcp_server").multiple(true))]
pub struct McpArgs {
    /// With --tools mcp: the MCP server's command line, split into words as a shell would
    /// (quotes keep spaces: "python3 'my server.py' --flag"; nothing is expanded); its
    /// functions are listed in ARTIST's system prompt.
    #[arg(long, value_name = "COMMAND", group = "mcp_server")]
    pub mcp_command: Option<String>,
    /// With --tools mcp: the endpoint of an MCP server over Streamable HTTP
    /// (`http://127.0.0.1:8000/mcp`), one already running or, with --mcp-command too, the
    /// one that command starts (once; stopped at the end); each sample's own server
    /// (--mcp-sessions rollout) is then a session of its own with it.
    #[arg(long, value_name = "URL", group = "mcp_server")]
    pub mcp_url: Option<String>,
    /// With --mcp-url: a header sent with every message, `Name: value` (repeatable; each
    /// `${NAME}` in the value is replaced by environment variable NAME).
    #[arg(long, value_name = "HEADER", requires = "mcp_url")]
    pub mcp_header: Vec<String>,
    /// `shared`, one server for every sample, or `rollout`, a server per sample, started
    /// at its first call and closed when it ends (a stateful server starts fresh for each).
    #[arg(long, default_value = "shared", value_parser = ["shared", "rollout"], requires = "mcp_server")]
    pub mcp_sessions: String,
    /// With --mcp-sessions rollout: servers kept started ahead of the samples that will take
    /// them, so a sample's first call need not wait for a start.
    #[arg(long, default_value_t = 0, value_name = "N", requires = "mcp_server")]
    pub mcp_spare_servers: usize,
    /// With --mcp-sessions rollout: a tool of the server (hidden from the model) read when a
    /// sample ends; its text is the sample's final state, which the judge is given.
    #[arg(long, value_name = "NAME", requires = "mcp_server")]
    pub mcp_state_tool: Option<String>,
    /// With --mcp-sessions rollout, multi-turn entries (`eval --answers`): a tool of the
    /// server (hidden from the model) called with an entry's initial_config when the
    /// entry's server starts.
    #[arg(long, value_name = "NAME", requires = "mcp_server")]
    pub mcp_setup_tool: Option<String>,
}

impl McpArgs {
    /// Starts the server for single-turn samples and lists its functions.
    pub fn start(&self) -> Result<artist_tools::McpTool> {
        anyhow::ensure!(
            self.mcp_setup_tool.is_none(),
            "--mcp-setup-tool sets up multi-turn entries (eval --answers): a sample has no initial_config"
        );
        self.start_episodes()
    }

    /// Starts the server for multi-turn entries (`--mcp-setup-tool` allowed) and lists its
    /// functions.
    pub fn start_episodes(&self) -> Result<artist_tools::McpTool> {
        let command = match (&self.mcp_command, &self.mcp_url) {
            (Some(command), _) => split_command(command, "--mcp-command")?,
            (None, Some(_)) => Vec::new(),
            (None, None) => bail!(
                "--tools mcp needs --mcp-command, the server's command line, or --mcp-url, the endpoint of one running"
            ),
        };
        let mut headers = std::collections::HashMap::new();
        for header in &self.mcp_header {
            let (name, value) =
                header.split_once(':').with_context(|| format!("--mcp-header {header:?}: expected `Name: value`"))?;
            anyhow::ensure!(!name.trim().is_empty(), "--mcp-header {header:?}: the header's name is empty");
            headers.insert(name.trim().to_string(), value.trim().to_string());
        }
        let sessions = match self.mcp_sessions.as_str() {
            "rollout" => artist_tools::McpSessions::Rollout,
            "shared" => artist_tools::McpSessions::Shared,
            other => bail!("--mcp-sessions {other:?}: expected shared or rollout"),
        };
        let config = artist_tools::McpConfig {
            command,
            url: self.mcp_url.clone(),
            headers,
            sessions,
            spare_servers: self.mcp_spare_servers,
            state_tool: self.mcp_state_tool.clone(),
            setup_tool: self.mcp_setup_tool.clone(),
            ..Default::default()
        };
        let flag = if self.mcp_url.is_some() { "--mcp-url" } else { "--mcp-command" };
        artist_tools::McpTool::spawn(config).with_context(|| format!("starting the MCP server of {flag}"))
    }
}
