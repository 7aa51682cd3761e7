//! Running model-written programs as hostile input.
//!
//! Every call is a fresh process tree, and all of it is gone when the call returns:
//!
//! ```text
//! caller ──fork──▶ A  own session; subreaper; at the timeout (SIGTERM from the caller) or
//!                  │  if the caller dies, kills its child, then every orphan, and reaps them
//!                  │  (namespaces) unshare mount, PID, network, IPC, UTS (+ user when not root)
//!                  └─fork─▶ B  PID 1 of the new PID namespace: builds the read-only root,
//!                           │  reaps orphans, and when C exits, exits, which makes the
//!                           │  kernel SIGKILL everything left in the namespace
//!                           └─fork─▶ C  own user namespace, unprivileged uid, rlimits → exec
//! ```
//!
//! Under bubblewrap or with rlimits only, A forks C directly (bubblewrap builds its own
//! namespaces). A exits only once everything below it is gone, and the caller waits for A.
//! The layers, what each stops and what none of them does, are in `docs/SANDBOX.md`.

mod bwrap;
mod child;
mod plan;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use child::{Prepared, Record};

/// Limits and isolation for sandboxed calls. Every field has a default (`SandboxConfig::default()`),
/// so a config file names only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// The interpreter: a name looked up in `PATH` or a path. It is asked once for its real
    /// executable and prefix, which are made visible inside the sandbox.
    pub python: String,
    /// Which isolation to use; `auto` takes the first of bwrap, namespaces, rlimits-only that
    /// works here (each is tried once, at construction).
    pub isolation: Isolation,
    /// Wall-clock limit of one call, in seconds. Set here, never by the model.
    pub timeout_s: f64,
    /// RLIMIT_CPU: CPU seconds per process (SIGXCPU at the limit, SIGKILL one second later).
    pub cpu_s: u64,
    /// RLIMIT_AS: bytes of address space per process; an allocation past it is a MemoryError.
    pub memory_bytes: u64,
    /// RLIMIT_FSIZE: the largest file a process may write, in bytes.
    pub file_size_bytes: u64,
    /// Size of the private tmpfs that is the working directory, `TMPDIR` and `HOME` (its pages
    /// are memory that RLIMIT_AS does not count, hence a cap of its own).
    pub tmpfs_bytes: u64,
    /// RLIMIT_NOFILE: open file descriptors per process.
    pub open_files: u64,
    /// RLIMIT_NPROC: processes (and threads). The kernel counts them per user and user
    /// namespace, so with namespaces each call counts its own; with rlimits only, all processes
    /// of the sandbox uid count together (see docs/SANDBOX.md).
    pub processes: u64,
    /// Bytes of output (stdout and stderr merged) kept; the rest is read and dropped.
    pub output_bytes: usize,
    /// When true, a rollout's later calls see the names its earlier successful calls defined:
    /// each call first re-runs those earlier cells, output discarded. `end_rollout` forgets them.
    pub persistent: bool,
    /// The unprivileged uid and gid the code runs as (inside its user namespace, and on the
    /// host when the caller is root).
    pub uid: u32,
    pub gid: u32,
    /// Host paths visible read-only inside (when they exist); nothing else of the host is.
    pub ro_paths: Vec<PathBuf>,
    /// Paths under `ro_paths` hidden inside: a file reads as empty, a directory as empty.
    pub masked_paths: Vec<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let paths = |v: &[&str]| v.iter().map(PathBuf::from).collect();
        Self {
            python: "python3".into(),
            isolation: Isolation::Auto,
            timeout_s: 10.0,
            cpu_s: 10,
            memory_bytes: 1 << 30,
            file_size_bytes: 16 << 20,
            tmpfs_bytes: 64 << 20,
            open_files: 64,
            processes: 64,
            output_bytes: 16 << 10,
            persistent: false,
            uid: 65534,
            gid: 65534,
            ro_paths: paths(&["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"]),
            masked_paths: paths(&[
                "/etc/shadow",
                "/etc/shadow-",
                "/etc/gshadow",
                "/etc/gshadow-",
                "/etc/ssh",
                "/etc/sudoers",
                "/etc/sudoers.d",
            ]),
        }
    }
}

/// Which isolation to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    Auto,
    Bwrap,
    Namespaces,
    RlimitsOnly,
}

/// Which isolation a sandbox actually has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxKind {
    /// bubblewrap: namespaces, read-only binds, private /tmp, as built by `bwrap`.
    Bwrap,
    /// The same layers built here with unshare(2), mount(2) and pivot_root(2).
    Namespaces,
    /// No namespaces: rlimits, an unprivileged uid when started as root, the timeout, and A as
    /// subreaper killing whatever the program leaves. The code sees the host's files and network.
    RlimitsOnly,
}

impl SandboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bwrap => "bwrap",
            Self::Namespaces => "namespaces",
            Self::RlimitsOnly => "rlimits-only",
        }
    }
}

impl std::fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox config: {0}")]
    Config(String),
    #[error("interpreter `{python}`: {reason}")]
    Interpreter { python: String, reason: String },
    #[error("no isolation works here: {0}")]
    Unavailable(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |source| SandboxError::Io { what: what.into(), source }
}

/// One program to run: an absolute executable (as seen inside), its arguments, files put in
/// the read-only code directory (`/sandbox` inside), and environment variables beyond the
/// ones the sandbox sets (`HOME`, `TMPDIR`).
#[derive(Debug, Clone, Default)]
pub struct Job {
    pub program: PathBuf,
    pub args: Vec<Arg>,
    pub files: Vec<(String, Vec<u8>)>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Text(String),
    /// The path of one of the job's files, wherever the code directory is for this kind.
    File(String),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// The sandbox could not be set up (or the program could not be started); the text says
    /// which step failed and why.
    Setup(String),
    /// Killed at the timeout before it reported a status.
    Killed,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    /// Merged stdout and stderr, at most `output_bytes` of it.
    pub output: Vec<u8>,
    /// Bytes the program wrote in all (more than `output.len()` when truncated).
    pub output_total: u64,
    pub truncated: bool,
    pub timed_out: bool,
    pub exit: Exit,
    pub elapsed: Duration,
}

/// Where the code directory is inside the sandbox (namespaces and bwrap).
pub const CODE_DIR: &str = "/sandbox";
/// The working directory, `HOME` and `TMPDIR` inside (a private tmpfs).
pub const WORK_DIR: &str = "/tmp";

/// A configured sandbox whose isolation was tried and works.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    kind: SandboxKind,
    /// `ro_paths` plus the job-specific ones (the interpreter's prefix), canonical.
    ro_paths: Vec<PathBuf>,
    bwrap: Option<bwrap::Bwrap>,
    /// The caller's ids: root drops to `config.uid` itself; others map through a user namespace.
    host_uid: u32,
    host_gid: u32,
}

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

impl Sandbox {
    /// Checks the config, then runs `probe` (which should exit 0 quickly) under each candidate
    /// isolation in turn and keeps the first that works.
    pub fn new(config: SandboxConfig, extra_ro: &[PathBuf], probe: &Job) -> Result<Self, SandboxError> {
        validate(&config)?;
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (host_uid, host_gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut ro_paths = Vec::new();
        for p in config.ro_paths.iter().chain(extra_ro) {
            // Missing defaults (no /lib32 here) are fine; symlinks are kept as links inside.
            if p.symlink_metadata().is_ok() && !ro_paths.contains(p) {
                ro_paths.push(p.clone());
            }
        }
        let bwrap = matches!(config.isolation, Isolation::Auto | Isolation::Bwrap).then(bwrap::Bwrap::find).flatten();
        let candidates: Vec<SandboxKind> = match config.isolation {
            Isolation::Auto => {
                let mut v = vec![];
                // Auto only takes a bwrap that can cap the size of /tmp (0.9 and later).
                if bwrap.as_ref().is_some_and(|b| b.supports_size) {
                    v.push(SandboxKind::Bwrap);
                }
                v.extend([SandboxKind::Namespaces, SandboxKind::RlimitsOnly]);
                v
            }
            Isolation::Bwrap if bwrap.is_none() => {
                return Err(SandboxError::Unavailable(
                    "isolation = bwrap, but `bwrap` (or util-linux's `prlimit`) is not in PATH".into(),
                ));
            }
            Isolation::Bwrap => vec![SandboxKind::Bwrap],
            Isolation::Namespaces => vec![SandboxKind::Namespaces],
            Isolation::RlimitsOnly => vec![SandboxKind::RlimitsOnly],
        };
        let mut failures = vec![];
        for kind in candidates {
            let sb = Self {
                config: config.clone(),
                kind,
                ro_paths: ro_paths.clone(),
                bwrap: bwrap.clone(),
                host_uid,
                host_gid,
            };
            let out = sb.run(probe);
            if out.exit == Exit::Code(0) && !out.timed_out {
                if kind == SandboxKind::RlimitsOnly && !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                    let why = if failures.is_empty() { "as configured".to_string() } else { failures.join("; ") };
                    eprintln!(
                        "artist-tools: sandbox without namespaces ({why}): model code runs with rlimits and a \
                         timeout only, and can see the host's files and network"
                    );
                }
                return Ok(sb);
            }
            let text = String::from_utf8_lossy(&out.output);
            failures.push(format!("{kind}: {}", describe_failure(&out.exit, text.trim())));
        }
        Err(SandboxError::Unavailable(failures.join("; ")))
    }

    pub fn kind(&self) -> SandboxKind {
        self.kind
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Whether the private /tmp has the size cap `tmpfs_bytes` (not under bubblewrap before 0.9,
    /// nor with rlimits only, where the work directory is on the host's disk).
    pub fn tmpfs_capped(&self) -> bool {
        match self.kind {
            SandboxKind::Namespaces => true,
            SandboxKind::Bwrap => self.bwrap.as_ref().is_some_and(|b| b.supports_size),
            SandboxKind::RlimitsOnly => false,
        }
    }

    /// Runs one job to its end, its timeout, or a setup failure. Never panics; problems
    /// setting up are an `Exit::Setup`.
    pub fn run(&self, job: &Job) -> Outcome {
        let start = Instant::now();
        match self.run_inner(job, start) {
            Ok(out) => out,
            Err(e) => Outcome {
                output: vec![],
                output_total: 0,
                truncated: false,
                timed_out: false,
                exit: Exit::Setup(e.to_string()),
                elapsed: start.elapsed(),
            },
        }
    }

    fn run_inner(&self, job: &Job, start: Instant) -> Result<Outcome, SandboxError> {
        let dir =
            tempfile::Builder::new().prefix("artist-sandbox-").tempdir().map_err(io_err("temporary directory"))?;
        let code = dir.path().join("code");
        std::fs::create_dir(&code).map_err(io_err("code directory"))?;
        for (name, bytes) in &job.files {
            if name.contains('/') || name.starts_with('.') || name.is_empty() {
                return Err(SandboxError::Config(format!("job file name {name:?} must be a plain name")));
            }
            std::fs::write(code.join(name), bytes).map_err(io_err(format!("writing {name}")))?;
            set_mode(&code.join(name), 0o644)?;
        }
        // The unprivileged uid must reach the code (bwrap and rlimits-only read it as that uid).
        set_mode(dir.path(), 0o711)?;
        set_mode(&code, 0o755)?;
        let (code_inside, work) = match self.kind {
            SandboxKind::Namespaces | SandboxKind::Bwrap => (PathBuf::from(CODE_DIR), PathBuf::from(WORK_DIR)),
            SandboxKind::RlimitsOnly => {
                let work = dir.path().join("work");
                std::fs::create_dir(&work).map_err(io_err("work directory"))?;
                set_mode(&work, 0o700)?;
                if self.host_uid == 0 {
                    std::os::unix::fs::chown(&work, Some(self.config.uid), Some(self.config.gid))
                        .map_err(io_err("chown work directory"))?;
                }
                (code.clone(), work)
            }
        };
        let mut argv = vec![job.program.to_string_lossy().into_owned()];
        for a in &job.args {
            argv.push(match a {
                Arg::Text(t) => t.clone(),
                Arg::File(name) => code_inside.join(name).to_string_lossy().into_owned(),
            });
        }
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), work.to_string_lossy().into_owned()),
            ("TMPDIR".into(), work.to_string_lossy().into_owned()),
        ];
        env.extend(job.env.iter().cloned());

        let mut notes = vec![];
        let (exe, argv, ops) = match self.kind {
            SandboxKind::Namespaces => {
                let root = dir.path().join("root");
                std::fs::create_dir(&root).map_err(io_err("root directory"))?;
                let p = plan::build(&root, &code, &self.ro_paths, &self.config.masked_paths, self.config.tmpfs_bytes)?;
                notes = p.notes;
                (job.program.clone(), argv, p.ops)
            }
            SandboxKind::Bwrap => {
                let b = self.bwrap.as_ref().ok_or_else(|| SandboxError::Unavailable("bwrap vanished".into()))?;
                let mut full = vec![b.path.to_string_lossy().into_owned()];
                full.extend(b.args(&self.ro_paths, &self.config, &code));
                full.extend(argv);
                (b.path.clone(), full, vec![])
            }
            SandboxKind::RlimitsOnly => (job.program.clone(), argv, vec![]),
        };
        let prepared = Prepared::new(self, &exe, &argv, &env, ops, &work)?;
        let run = spawn_and_watch(&prepared, self.config.timeout_s, self.config.output_bytes, start)?;
        let exit = match run.setup_error {
            Some((stage, errno)) => Exit::Setup(child::describe_stage(stage, errno, &notes)),
            None => match run.status {
                // bwrap's init reports a program killed by a signal as exit status 128 + signal.
                Some(st)
                    if self.kind == SandboxKind::Bwrap
                        && libc::WIFEXITED(st)
                        && (129..=128 + 31).contains(&libc::WEXITSTATUS(st)) =>
                {
                    Exit::Signal(libc::WEXITSTATUS(st) - 128)
                }
                Some(st) if libc::WIFEXITED(st) => Exit::Code(libc::WEXITSTATUS(st)),
                Some(st) if libc::WIFSIGNALED(st) => Exit::Signal(libc::WTERMSIG(st)),
                _ => Exit::Killed,
            },
        };
        drop(dir);
        Ok(Outcome {
            output: run.output,
            output_total: run.total,
            truncated: run.total > self.config.output_bytes as u64,
            timed_out: run.timed_out,
            exit,
            elapsed: start.elapsed(),
        })
    }
}

fn validate(c: &SandboxConfig) -> Result<(), SandboxError> {
    let bad = |field: &str, want: &str| Err(SandboxError::Config(format!("`{field}` must be {want}")));
    if !(c.timeout_s.is_finite() && c.timeout_s > 0.0 && c.timeout_s <= 86_400.0) {
        return bad("timeout_s", "a number of seconds in (0, 86400]");
    }
    if c.cpu_s == 0 {
        return bad("cpu_s", "at least 1");
    }
    if c.memory_bytes < 16 << 20 {
        return bad("memory_bytes", "at least 16 MiB (an interpreter needs that much to start)");
    }
    if c.open_files < 8 {
        return bad("open_files", "at least 8");
    }
    if c.processes == 0 {
        return bad("processes", "at least 1");
    }
    if c.tmpfs_bytes < 4096 {
        return bad("tmpfs_bytes", "at least 4096");
    }
    if c.uid == 0 || c.gid == 0 {
        return bad("uid/gid", "non-zero (the point is to not be root)");
    }
    for p in c.ro_paths.iter().chain(&c.masked_paths) {
        if !p.is_absolute() {
            return bad("ro_paths/masked_paths", &format!("absolute paths, not {}", p.display()));
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

pub(crate) fn describe_failure(exit: &Exit, output: &str) -> String {
    let tail: String = output.chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
    match exit {
        Exit::Setup(s) => s.clone(),
        Exit::Code(c) => format!("exited with status {c}: {tail}"),
        Exit::Signal(s) => format!("killed by {}: {tail}", signal_name(*s)),
        Exit::Killed => "did not finish in time".into(),
    }
}

/// The conventional name of a signal (`SIGKILL`), or its number.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// What the watcher saw.
struct Watched {
    output: Vec<u8>,
    total: u64,
    timed_out: bool,
    status: Option<i32>,
    setup_error: Option<(i32, i32)>,
}

/// After the child tree has exited, output still held by an escaped writer (only possible
/// without a PID namespace) is waited for this long before the call ends without it.
const ESCAPED_WRITER_GRACE: Duration = Duration::from_millis(200);
/// At the timeout A is asked to stop (SIGTERM): it kills the program and waits until the
/// namespace is empty. If that takes longer than this, the whole group is SIGKILLed instead.
const STOP_GRACE: Duration = Duration::from_secs(5);

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io_err("pipe")(std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// Forks the tree, streams its output under the cap until it ends or the deadline passes,
/// kills its process group and reaps it.
fn spawn_and_watch(p: &Prepared, timeout_s: f64, cap: usize, start: Instant) -> Result<Watched, SandboxError> {
    let (out_r, out_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    // A bigger pipe means fewer wake-ups for a chatty program; failure only costs speed.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(out_w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    set_nonblocking(&out_r);
    set_nonblocking(&rep_r);
    // SAFETY: getpid cannot fail.
    let parent = unsafe { libc::getpid() };
    // A must start with SIGCHLD and SIGTERM blocked (it takes them with sigwaitinfo), so they
    // are blocked in this thread across the fork; the old mask comes back right after.
    let block = child::sigset(&child::SUPERVISOR_SIGNALS);
    // SAFETY: an uninitialised-then-filled mask local; pthread_sigmask affects this thread only.
    let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old_mask) };
    // SAFETY: the child runs only `child::run_a`, which makes async-signal-safe calls on memory
    // prepared before the fork and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: this is the freshly forked child; see `run_a`.
        unsafe { child::run_a(p, parent, out_w.as_raw_fd(), rep_w.as_raw_fd()) }
    }
    // SAFETY: restoring this thread's own mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(io_err("fork")(std::io::Error::last_os_error()));
    }
    drop(out_w);
    drop(rep_w);
    let deadline = start + Duration::from_secs_f64(timeout_s);
    // SAFETY: pidfd_open on our own unreaped child; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // SAFETY: a non-negative result is a new descriptor we now own.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });

    let mut output = Vec::with_capacity(cap.min(1 << 16));
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 18];
    let mut eof = false;
    let mut exited_at: Option<Instant> = None;
    let mut stopped_at: Option<Instant> = None;
    loop {
        if !eof {
            eof = drain(&out_r, &mut buf, &mut output, &mut total, cap);
        }
        if exited_at.is_none() && child_exited(pid) {
            exited_at = Some(Instant::now());
        }
        let now = Instant::now();
        match exited_at {
            Some(t) if eof || now - t >= ESCAPED_WRITER_GRACE => break,
            _ => {}
        }
        if stopped_at.is_none() && now >= deadline {
            // SAFETY: signalling our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            stopped_at = Some(now);
        }
        if stopped_at.is_some_and(|t| now - t >= STOP_GRACE) {
            break;
        }
        // Sleep until output, A's exit, or the next of: the deadline, the end of a grace.
        let mut until = match (stopped_at, exited_at) {
            (_, Some(t)) => t + ESCAPED_WRITER_GRACE,
            (Some(t), None) => t + STOP_GRACE,
            (None, None) => deadline,
        };
        if pidfd.is_none() {
            // No pidfd (kernel < 5.3): notice the exit by polling.
            until = until.min(now + Duration::from_millis(10));
        }
        let mut fds = [
            libc::pollfd { fd: if eof { -1 } else { out_r.as_raw_fd() }, events: libc::POLLIN, revents: 0 },
            libc::pollfd {
                fd: match (&pidfd, exited_at) {
                    (Some(f), None) => f.as_raw_fd(),
                    _ => -1,
                },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = until.saturating_duration_since(now).as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: poll over a two-element array we own; negative fds are ignored by the kernel.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    }
    // Normally everything is already gone; this is the backstop. The group id stays valid while
    // A is unreaped, so it cannot hit a stranger.
    // SAFETY: signalling and reaping our own child and its group.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        let mut st = 0;
        while libc::waitpid(pid, &mut st, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
    }
    let timed_out = stopped_at.is_some();
    // Whatever the dead writers left in the pipe.
    if !eof {
        drain(&out_r, &mut buf, &mut output, &mut total, cap);
    }
    let mut status = None;
    let mut setup_error = None;
    for r in read_records(&rep_r) {
        match r {
            Record::Exit(st) => status = Some(st),
            Record::Setup { stage, errno } => {
                setup_error.get_or_insert((stage, errno));
            }
        }
    }
    Ok(Watched { output, total, timed_out, status, setup_error })
}

/// Reads what is available; true at end of file.
fn drain(fd: &OwnedFd, buf: &mut [u8], output: &mut Vec<u8>, total: &mut u64, cap: usize) -> bool {
    loop {
        // SAFETY: reading into a buffer we own, at most its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return true;
        }
        if n < 0 {
            // EAGAIN: nothing more for now. Anything else: treat as the end.
            return std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN);
        }
        let n = n as usize;
        *total += n as u64;
        let room = cap.saturating_sub(output.len());
        output.extend_from_slice(&buf[..n.min(room)]);
    }
}

fn child_exited(pid: i32) -> bool {
    // SAFETY: waitid with WNOWAIT leaves the child unreaped, so its pid (and group id) stay ours.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        r == 0 && info.si_pid() == pid
    }
}

fn read_records(fd: &OwnedFd) -> Vec<Record> {
    let mut bytes = vec![];
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into a stack buffer, at most its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n as usize]);
    }
    bytes.chunks_exact(child::RECORD_LEN).filter_map(Record::decode).collect()
}

/// Paths made visible for a job (an interpreter's prefix), canonical and minimal: a path under
/// another one in the list, or under a configured read-only path, is dropped.
pub fn minimal_paths(paths: impl IntoIterator<Item = PathBuf>, covered: &[PathBuf]) -> Vec<PathBuf> {
    let canon: BTreeSet<PathBuf> = paths.into_iter().filter_map(|p| p.canonicalize().ok()).collect();
    let covered: Vec<PathBuf> = covered.iter().filter_map(|p| p.canonicalize().ok()).collect();
    let mut out: Vec<PathBuf> = vec![];
    // BTreeSet order puts a parent before its children.
    for p in canon {
        if !out.iter().chain(&covered).any(|q| p.starts_with(q)) {
            out.push(p);
        }
    }
    out
}

pub(crate) fn cstring(s: impl AsRef<[u8]>, what: &str) -> Result<CString, SandboxError> {
    CString::new(s.as_ref()).map_err(|_| SandboxError::Config(format!("{what} contains a NUL byte")))
}
