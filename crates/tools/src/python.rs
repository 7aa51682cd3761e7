//! A Python interpreter the model calls with `<python>print(2 + 2)</python>`.
//!
//! Every call runs in the [`Sandbox`](crate::sandbox::Sandbox) as a new process: the cell is a
//! file, `/sandbox/cell.py`, run by `python -I -B -u` (isolated: no user site-packages, no
//! `PYTHON*` variables; no bytecode files; unbuffered, so output written before a timeout or a
//! crash is not lost in a buffer).
//!
//! Persistence (`persistent = true`), as ARTIST's sessions have it, is by replay: a call first
//! re-runs its rollout's earlier successful cells with their output discarded, then runs the
//! new one in the same namespace. Replay was chosen over a long-lived interpreter per rollout
//! because it keeps the one-process-tree-per-call guarantee (nothing of a rollout outlives a
//! call, a hung cell cannot wedge later ones) at the cost of repeating earlier work inside
//! each call's time limit. Replayed cells that print random or time-dependent values see new
//! ones; side effects outside the interpreter (files in `/tmp`) are rebuilt by the replay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use parking_lot::Mutex;

use crate::sandbox::{Arg, Exit, Job, Outcome, Sandbox, SandboxConfig, SandboxError, SandboxKind, signal_name};
use crate::{Tool, ToolCall, ToolResult};

/// Runs earlier cells silently, then the new one, in one namespace; the new cell's traceback
/// leaves this driver's frame out, so it reads as if the cell ran alone.
const REPLAY_DRIVER: &str = r#"import os, sys, traceback

def _main():
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    here = os.path.dirname(os.path.abspath(__file__))
    count = int(sys.argv[1])
    sys.argv = [os.path.join(here, "cell.py")]
    saved = (os.dup(1), os.dup(2))
    null = os.open(os.devnull, os.O_WRONLY)
    for i in range(count):
        path = os.path.join(here, "history_%d.py" % i)
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(null, 1); os.dup2(null, 2)
        try:
            with open(path) as f:
                exec(compile(f.read(), path, "exec"), ns)
        except BaseException:
            pass
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            except BaseException:
                pass
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    for fd in (null,) + saved:
        os.close(fd)
    path = os.path.join(here, "cell.py")
    ns["__file__"] = path
    try:
        with open(path) as f:
            code = compile(f.read(), path, "exec")
        exec(code, ns)
    except SystemExit:
        raise
    except BaseException as e:
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        sys.exit(1)

_main()
"#;

/// What the configured interpreter said about itself.
#[derive(Debug, Clone)]
struct Interpreter {
    executable: PathBuf,
    /// Directories the interpreter needs (its prefixes), to be made visible inside.
    dirs: Vec<PathBuf>,
}

const ASK: &str = "import sys\nfor v in (sys.executable, sys.prefix, sys.base_prefix, sys.exec_prefix, \
                   sys.base_exec_prefix): print(v)";

fn resolve(python: &str) -> Result<Interpreter, SandboxError> {
    let err = |reason: String| SandboxError::Interpreter { python: python.to_string(), reason };
    // The configured interpreter (not model code) runs once on the host to say where it lives:
    // a name like `python3` may be a shim or a venv link, and only the real files get bound.
    let out = Command::new(python).args(["-I", "-c", ASK]).output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!("exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    let text = String::from_utf8(out.stdout).map_err(|_| err("printed non-UTF-8 paths".into()))?;
    let lines: Vec<&str> = text.lines().collect();
    let executable = PathBuf::from(lines.first().copied().unwrap_or(""));
    if !executable.is_absolute() {
        return Err(err(format!("sys.executable is {:?}, not an absolute path", executable)));
    }
    let mut dirs: Vec<PathBuf> = lines[1..].iter().map(PathBuf::from).filter(|p| p.is_absolute()).collect();
    if let Some(parent) = executable.parent() {
        dirs.push(parent.to_path_buf());
    }
    if let Some(parent) = executable.canonicalize().ok().as_deref().and_then(Path::parent) {
        dirs.push(parent.to_path_buf());
    }
    Ok(Interpreter { executable, dirs })
}

pub struct PythonTool {
    sandbox: Sandbox,
    interpreter: Interpreter,
    /// Persistent mode: each rollout's successful cells, in order.
    history: Mutex<HashMap<u64, Vec<String>>>,
}

impl PythonTool {
    /// Finds the interpreter and settles the isolation (trying each candidate once with an
    /// empty program). An error here means no call could work: a missing interpreter, a bad
    /// config, or no isolation at all.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let interpreter = resolve(&config.python)?;
        let extra = crate::sandbox::minimal_paths(interpreter.dirs.iter().cloned(), &config.ro_paths);
        let probe = Job {
            program: interpreter.executable.clone(),
            args: vec![Arg::Text("-I".into()), Arg::Text("-c".into()), Arg::Text("pass".into())],
            env: env(&interpreter),
            files: vec![],
        };
        let sandbox = Sandbox::new(config, &extra, &probe)?;
        Ok(Self { sandbox, interpreter, history: Mutex::new(HashMap::new()) })
    }

    pub fn sandbox_kind(&self) -> SandboxKind {
        self.sandbox.kind()
    }

    pub fn config(&self) -> &SandboxConfig {
        self.sandbox.config()
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The interpreter's real executable.
    pub fn interpreter(&self) -> &Path {
        &self.interpreter.executable
    }

    fn job(&self, code: &str, history: &[String]) -> Job {
        let flags = ["-I", "-B", "-u"].map(|f| Arg::Text(f.into()));
        let mut files = vec![("cell.py".to_string(), code.as_bytes().to_vec())];
        let mut args: Vec<Arg> = flags.into();
        if history.is_empty() {
            args.push(Arg::File("cell.py".into()));
        } else {
            for (i, cell) in history.iter().enumerate() {
                files.push((format!("history_{i}.py"), cell.as_bytes().to_vec()));
            }
            files.push(("replay.py".into(), REPLAY_DRIVER.as_bytes().to_vec()));
            args.extend([Arg::File("replay.py".into()), Arg::Text(history.len().to_string())]);
        }
        Job { program: self.interpreter.executable.clone(), args, files, env: env(&self.interpreter) }
    }

    fn result(&self, out: Outcome) -> ToolResult {
        let c = self.sandbox.config();
        let mut bytes = out.output;
        if out.truncated {
            // Cut at a character boundary rather than leave half a character.
            if let Err(e) = std::str::from_utf8(&bytes)
                && e.error_len().is_none()
            {
                bytes.truncate(e.valid_up_to());
            }
        }
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        let mut notes = vec![];
        if out.truncated {
            notes.push(format!(
                "... [output truncated at {} bytes; the program wrote {} bytes]",
                c.output_bytes, out.output_total
            ));
        }
        if out.timed_out {
            notes.push(format!("[the call exceeded {} s and was stopped]", c.timeout_s));
        } else {
            match &out.exit {
                Exit::Code(0) => {}
                Exit::Code(code) if text.trim().is_empty() => {
                    notes.push(format!("[the program exited with status {code}]"))
                }
                Exit::Code(_) => {}
                Exit::Signal(sig) => {
                    let why = match *sig {
                        libc::SIGXCPU => format!(": it used its {} s of CPU time", c.cpu_s),
                        libc::SIGXFSZ => format!(": it wrote past the {}-byte file size limit", c.file_size_bytes),
                        libc::SIGSEGV => ": it crashed (a segmentation fault, e.g. recursion too deep)".into(),
                        _ => String::new(),
                    };
                    notes.push(format!("[the program was killed by {}{why}]", signal_name(*sig)));
                }
                Exit::Killed => notes.push("[the program ended without reporting a status]".into()),
                Exit::Setup(msg) => notes.push(format!("[{msg}]")),
            }
        }
        if !notes.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&notes.join("\n"));
        }
        ToolResult {
            output: text,
            success: !out.timed_out && out.exit == Exit::Code(0),
            timed_out: out.timed_out,
            truncated: out.truncated,
            elapsed_ms: out.elapsed.as_millis() as u64,
        }
    }
}

/// The whole environment the program starts with.
fn env(interp: &Interpreter) -> Vec<(String, String)> {
    let bin = interp.executable.parent().map(|p| format!("{}:", p.display())).unwrap_or_default();
    let mut v: Vec<(String, String)> = vec![("PATH".into(), format!("{bin}/usr/local/bin:/usr/bin:/bin"))];
    for (k, val) in [
        ("LANG", "C.UTF-8"),
        // -I ignores PYTHON* variables for this interpreter; they still reach the ones it starts.
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONUNBUFFERED", "1"),
        ("PYTHONIOENCODING", "utf-8"),
        // One thread per math library: many calls share the machine.
        ("OMP_NUM_THREADS", "1"),
        ("OPENBLAS_NUM_THREADS", "1"),
        ("MKL_NUM_THREADS", "1"),
        ("MPLBACKEND", "Agg"),
    ] {
        v.push((k.into(), val.into()));
    }
    v
}

impl Tool for PythonTool {
    fn name(&self) -> &str {
        "python"
    }

    fn tag(&self) -> &str {
        "python"
    }

    fn execute(&self, call: &ToolCall) -> ToolResult {
        let start = Instant::now();
        let persistent = self.sandbox.config().persistent;
        let history =
            if persistent { self.history.lock().get(&call.rollout).cloned().unwrap_or_default() } else { vec![] };
        let mut result = self.result(self.sandbox.run(&self.job(&call.text, &history)));
        result.elapsed_ms = start.elapsed().as_millis() as u64;
        if persistent && result.success {
            self.history.lock().entry(call.rollout).or_default().push(call.text.clone());
        }
        result
    }

    fn end_rollout(&self, rollout: u64) {
        self.history.lock().remove(&rollout);
    }
}
