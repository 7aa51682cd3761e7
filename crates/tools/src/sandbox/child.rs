//! Everything between `fork` and `exec`.
//!
//! The caller is multi-threaded (the engine runs tool calls on threads), so a forked child may
//! only make async-signal-safe calls: no allocation, no locks, no panics, no formatting.
//! Everything the children need (argv, environment, the mount plan, id maps) is built as C
//! strings before the fork in [`Prepared`], and a failure is reported to the caller as a
//! fixed-size [`Record`] on descriptor 3, then the child exits.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::Path;

use libc::pid_t;

use super::plan::Op;
use super::{Sandbox, SandboxError, SandboxKind, cstring};

/// The report pipe's descriptor number in every child.
const REPORT_FD: c_int = 3;
pub(crate) const RECORD_LEN: usize = 12;
const TAG_SETUP: u32 = 1;
const TAG_EXIT: u32 = 2;

/// A message from a child: a failed step, or the sandboxed program's wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    Setup { stage: i32, errno: i32 },
    Exit(i32),
}

impl Record {
    fn encode(self) -> [u8; RECORD_LEN] {
        let (tag, a, b) = match self {
            Record::Setup { stage, errno } => (TAG_SETUP, stage, errno),
            Record::Exit(st) => (TAG_EXIT, st, 0),
        };
        let mut out = [0u8; RECORD_LEN];
        out[..4].copy_from_slice(&tag.to_ne_bytes());
        out[4..8].copy_from_slice(&a.to_ne_bytes());
        out[8..].copy_from_slice(&b.to_ne_bytes());
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let word = |i: usize| -> Option<[u8; 4]> { b.get(i..i + 4)?.try_into().ok() };
        let (tag, a, e) = (u32::from_ne_bytes(word(0)?), i32::from_ne_bytes(word(4)?), i32::from_ne_bytes(word(8)?));
        match tag {
            TAG_SETUP => Some(Record::Setup { stage: a, errno: e }),
            TAG_EXIT => Some(Record::Exit(a)),
            _ => None,
        }
    }
}

/// The steps a child can fail at; a mount-plan step is `OP_BASE + its index`.
#[derive(Debug, Clone, Copy)]
#[repr(i32)]
enum Stage {
    Fds = 1,
    Setsid,
    Unshare,
    OuterMap,
    Fork,
    Hostname,
    Pipe,
    InnerUserns,
    InnerMap,
    Setgroups,
    Setgid,
    Setuid,
    Rlimit,
    NoNewPrivs,
    Chdir,
    Exec,
}
const OP_BASE: i32 = 1000;

/// Words for a failed step, for the caller (who may allocate).
pub(crate) fn describe_stage(stage: i32, errno: i32, op_notes: &[String]) -> String {
    const WORDS: [(Stage, &str); 16] = [
        (Stage::Fds, "setting up descriptors"),
        (Stage::Setsid, "setsid"),
        (Stage::Unshare, "unshare (new mount, PID, network, IPC, UTS namespaces)"),
        (Stage::OuterMap, "writing the user namespace's id maps"),
        (Stage::Fork, "fork"),
        (Stage::Hostname, "sethostname"),
        (Stage::Pipe, "pipe"),
        (Stage::InnerUserns, "unshare (the program's user namespace)"),
        (Stage::InnerMap, "writing the program's uid/gid maps"),
        (Stage::Setgroups, "setgroups"),
        (Stage::Setgid, "setresgid"),
        (Stage::Setuid, "setresuid"),
        (Stage::Rlimit, "setrlimit"),
        (Stage::NoNewPrivs, "prctl(PR_SET_NO_NEW_PRIVS)"),
        (Stage::Chdir, "chdir to the working directory"),
        (Stage::Exec, "exec of the program"),
    ];
    let step = if stage >= OP_BASE {
        op_notes.get((stage - OP_BASE) as usize).map_or("a mount step", |s| s.as_str())
    } else {
        WORDS.iter().find(|(s, _)| *s as i32 == stage).map_or("an unknown step", |(_, w)| w)
    };
    format!("sandbox setup: {step}: {}", std::io::Error::from_raw_os_error(errno))
}

/// The ids to become: the sandbox uid and gid, with supplementary groups replaced where the
/// kernel lets us (it does not in a user namespace made by an unprivileged user).
struct Ids {
    uid: libc::uid_t,
    gid: libc::gid_t,
    setgroups: bool,
}

/// Everything the children use, built before the fork.
pub(crate) struct Prepared {
    kind: SandboxKind,
    exe: CString,
    _argv: Vec<CString>,
    argv: Vec<*const c_char>,
    _env: Vec<CString>,
    envp: Vec<*const c_char>,
    ops: Vec<Op>,
    /// Namespaces started by a non-root caller: A's own user namespace maps the caller's ids
    /// to themselves (`uid_map`, `gid_map` contents).
    outer_maps: Option<(Vec<u8>, Vec<u8>)>,
    /// Namespaces: the program's user namespace maps the sandbox ids onto unprivileged ids
    /// outside (written by B, which has the privilege to map ids other than its own).
    inner_maps: (Vec<u8>, Vec<u8>),
    drop_to: Option<Ids>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t)>,
    workdir: CString,
}

impl Prepared {
    pub(crate) fn new(
        sb: &Sandbox,
        exe: &Path,
        argv: &[String],
        env: &[(String, String)],
        ops: Vec<Op>,
        workdir: &Path,
    ) -> Result<Self, SandboxError> {
        let c = &sb.config;
        let root = sb.host_uid == 0;
        let argv_c = argv.iter().map(|a| cstring(a, "an argument")).collect::<Result<Vec<_>, _>>()?;
        let env_c = env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}"), "an environment variable"))
            .collect::<Result<Vec<_>, _>>()?;
        let ptrs = |v: &[CString]| v.iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect::<Vec<_>>();
        let map = |inside: u32, outside: u32| format!("{inside} {outside} 1\n").into_bytes();
        let (outer_maps, drop_to) = match sb.kind {
            SandboxKind::Namespaces => (
                (!root).then(|| (map(sb.host_uid, sb.host_uid), map(sb.host_gid, sb.host_gid))),
                Some(Ids { uid: c.uid, gid: c.gid, setgroups: root }),
            ),
            SandboxKind::Bwrap | SandboxKind::RlimitsOnly => {
                (None, root.then_some(Ids { uid: c.uid, gid: c.gid, setgroups: true }))
            }
        };
        // Root maps the sandbox ids to the same unprivileged ids on the host; anyone else can
        // only map their own ids, which the outer namespace shows as themselves.
        let (out_uid, out_gid) = if root { (c.uid, c.gid) } else { (sb.host_uid, sb.host_gid) };
        let lim = |v: u64| v as libc::rlim_t;
        Ok(Self {
            kind: sb.kind,
            exe: cstring(exe.as_os_str().as_encoded_bytes(), "the executable path")?,
            argv: ptrs(&argv_c),
            _argv: argv_c,
            envp: ptrs(&env_c),
            _env: env_c,
            ops,
            outer_maps,
            inner_maps: (map(c.uid, out_uid), map(c.gid, out_gid)),
            drop_to,
            rlimits: [
                // One second between SIGXCPU (catchable) and SIGKILL.
                (libc::RLIMIT_CPU, lim(c.cpu_s), lim(c.cpu_s + 1)),
                (libc::RLIMIT_AS, lim(c.memory_bytes), lim(c.memory_bytes)),
                (libc::RLIMIT_FSIZE, lim(c.file_size_bytes), lim(c.file_size_bytes)),
                (libc::RLIMIT_NOFILE, lim(c.open_files), lim(c.open_files)),
                (libc::RLIMIT_NPROC, lim(c.processes), lim(c.processes)),
                (libc::RLIMIT_CORE, 0, 0),
            ]
            .into_iter()
            // Under bwrap, prlimit sets it inside the sandbox (see `Bwrap::args`).
            .filter(|&(res, ..)| !(sb.kind == SandboxKind::Bwrap && res == libc::RLIMIT_NPROC))
            .collect(),
            workdir: cstring(workdir.as_os_str().as_encoded_bytes(), "the working directory")?,
        })
    }
}

fn errno() -> c_int {
    // SAFETY: the thread's errno location is always valid.
    unsafe { *libc::__errno_location() }
}

/// Best effort: if the report pipe is gone there is nobody to tell.
fn report(r: Record) {
    let bytes = r.encode();
    // SAFETY: writing a stack buffer; a write of RECORD_LEN < PIPE_BUF bytes is atomic.
    unsafe { libc::write(REPORT_FD, bytes.as_ptr().cast(), bytes.len()) };
}

fn fail_with(stage: i32, err: c_int) -> ! {
    report(Record::Setup { stage, errno: err });
    // SAFETY: _exit ends the child without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(1) }
}

fn fail(stage: Stage) -> ! {
    fail_with(stage as i32, errno())
}

/// Writes a whole small buffer to a file (a /proc control file).
fn write_file(path: *const c_char, data: &[u8]) -> Result<(), c_int> {
    // SAFETY: `path` is a NUL-terminated string and `data` a live slice; the fd is closed here.
    unsafe {
        let fd = libc::open(path, libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = errno();
        libc::close(fd);
        if n != data.len() as isize { Err(if n < 0 { err } else { libc::EIO }) } else { Ok(()) }
    }
}

/// `/proc/<pid>/<leaf>` in a stack buffer, without allocating.
fn proc_path<'a>(buf: &'a mut [u8; 64], pid: pid_t, leaf: &[u8]) -> &'a CStr {
    let mut digits = [0u8; 12];
    let (mut n, mut d) = (pid.unsigned_abs(), digits.len());
    loop {
        d -= 1;
        digits[d] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut len = 0;
    for part in [&b"/proc/"[..], &digits[d..], b"/", leaf] {
        for &byte in part {
            if len < buf.len() - 1 {
                buf[len] = byte;
                len += 1;
            }
        }
    }
    buf[len] = 0;
    CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/proc/self/nonexistent")
}

fn close_stdio() {
    // SAFETY: closing this process's own descriptors 0-2; nothing here uses them after.
    unsafe {
        libc::close(0);
        libc::close(1);
        libc::close(2);
    }
}

/// Descriptors: 0 /dev/null, 1 and 2 the output pipe, 3 the report pipe. Everything else
/// inherited from the caller (another call's pipes included) is closed, so that end of file
/// on this call's output depends on this call's processes only.
unsafe fn setup_fds(out_w: c_int, rep_w: c_int) {
    // SAFETY: descriptor calls on descriptors this process holds; failures exit.
    unsafe {
        // Out of the way of 0-3 first, whatever numbers the caller's pipes had.
        let r = libc::fcntl(rep_w, libc::F_DUPFD, 10);
        let o = libc::fcntl(out_w, libc::F_DUPFD, 10);
        if r < 0 || o < 0 || libc::dup2(r, REPORT_FD) < 0 {
            libc::_exit(126);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null < 0 || libc::dup2(null, 0) < 0 || libc::dup2(o, 1) < 0 || libc::dup2(o, 2) < 0 {
            fail(Stage::Fds);
        }
        // The syscall rather than glibc's wrapper, which older glibc versions lack.
        if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) < 0 {
            // Kernels before 5.9.
            for fd in 4..4096 {
                libc::close(fd);
            }
        }
    }
}

/// Every signal back to its default action (the caller's ignored signals, like Rust's SIGPIPE,
/// would otherwise reach the program, and a caller's SIGCHLD setting would change what waitpid
/// sees), and the mask set to exactly `blocked`.
unsafe fn reset_signals(blocked: &[c_int]) {
    // SAFETY: sigprocmask and signal are async-signal-safe and act on this process only.
    unsafe {
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let set = sigset(blocked);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

pub(crate) fn sigset(signals: &[c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// The signals A takes synchronously: its children's exits, and the caller's request to stop.
/// The caller blocks them before the fork, so A never runs with them unblocked.
pub(crate) const SUPERVISOR_SIGNALS: [c_int; 2] = [libc::SIGCHLD, libc::SIGTERM];

/// A's loop: reap until `child` has exited, killing it when the caller asks to stop (SIGTERM),
/// then kill and reap whatever else is left (orphans reparented to A). Returns `child`'s status.
///
/// Only when this returns is the call over: B's exit completes only once its PID namespace is
/// empty, and A is the subreaper of everything C started without one.
unsafe fn supervise(child: pid_t) -> c_int {
    let set = sigset(&SUPERVISOR_SIGNALS);
    let mut status = None;
    // SAFETY: waitpid, sigwaitinfo and kill on this process's own children.
    unsafe {
        loop {
            loop {
                let mut st = 0;
                let r = libc::waitpid(-1, &mut st, libc::WNOHANG);
                if r == child {
                    status = Some(st);
                }
                if r <= 0 {
                    break;
                }
            }
            if let Some(st) = status {
                sweep();
                return st;
            }
            if libc::sigwaitinfo(&set, std::ptr::null_mut()) == libc::SIGTERM {
                libc::kill(child, libc::SIGKILL);
            }
        }
    }
}

/// Kills and reaps every child until none is left. Children are listed by
/// `/proc/thread-self/children`; without it (no CONFIG_PROC_CHILDREN, or under namespaces,
/// where A's /proc is no longer its own and B's exit already emptied everything) this only
/// reaps, and the caller's group kill is what remains.
unsafe fn sweep() {
    // SAFETY: open/read/close on a stack buffer; kill and waitpid on this process's children.
    unsafe {
        loop {
            let fd = libc::open(c"/proc/thread-self/children".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                let mut buf = [0u8; 4096];
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                libc::close(fd);
                let mut pid: pid_t = 0;
                for &b in buf.iter().take(n.max(0) as usize).chain([b' '].iter()) {
                    if b.is_ascii_digit() {
                        pid = pid.saturating_mul(10).saturating_add((b - b'0') as pid_t);
                    } else if pid > 0 {
                        libc::kill(pid, libc::SIGKILL);
                        pid = 0;
                    }
                }
            }
            let mut st = 0;
            if libc::waitpid(-1, &mut st, 0) < 0 && errno() != libc::EINTR {
                return;
            }
        }
    }
}

/// Process A, forked by the caller. Never returns.
///
/// # Safety
/// Call only in the child of a fork, with `p` built before the fork.
pub(crate) unsafe fn run_a(p: &Prepared, parent: pid_t, out_w: c_int, rep_w: c_int) -> ! {
    // SAFETY: this is the child of a fork; every call below is async-signal-safe.
    unsafe {
        setup_fds(out_w, rep_w);
        reset_signals(&SUPERVISOR_SIGNALS);
        // A session and group of its own: the caller kills this group at the end.
        if libc::setsid() < 0 {
            fail(Stage::Setsid);
        }
        // If the caller dies, A gets the same SIGTERM as at a timeout, and cleans up as then.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        // A report to a caller that is gone must not kill A before its cleanup is done.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        // Orphans of the program (a double fork, a setsid child) come to A, which kills them.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        match p.kind {
            SandboxKind::Namespaces => {
                let mut flags = libc::CLONE_NEWNS
                    | libc::CLONE_NEWPID
                    | libc::CLONE_NEWNET
                    | libc::CLONE_NEWIPC
                    | libc::CLONE_NEWUTS;
                if p.outer_maps.is_some() {
                    flags |= libc::CLONE_NEWUSER;
                }
                if libc::unshare(flags) < 0 {
                    fail(Stage::Unshare);
                }
                if let Some((uid_map, gid_map)) = &p.outer_maps {
                    // An unprivileged process may write its gid_map only once setgroups is denied
                    // (the file is missing before Linux 3.19, where no denial is needed).
                    let _ = write_file(c"/proc/self/setgroups".as_ptr(), b"deny");
                    if let Err(e) = write_file(c"/proc/self/uid_map".as_ptr(), uid_map)
                        .and_then(|_| write_file(c"/proc/self/gid_map".as_ptr(), gid_map))
                    {
                        fail_with(Stage::OuterMap as i32, e);
                    }
                }
                let b = libc::fork();
                if b < 0 {
                    fail(Stage::Fork);
                }
                if b == 0 {
                    reset_signals(&[]);
                    run_b(p);
                }
                close_stdio();
                // B reports the program's status itself.
                supervise(b);
                libc::_exit(0);
            }
            SandboxKind::Bwrap | SandboxKind::RlimitsOnly => {
                let c = libc::fork();
                if c < 0 {
                    fail(Stage::Fork);
                }
                if c == 0 {
                    reset_signals(&[]);
                    exec_program(p);
                }
                close_stdio();
                report(Record::Exit(supervise(c)));
                libc::_exit(0);
            }
        }
    }
}

/// Process B: PID 1 of the new PID namespace. Builds the root, starts C, reaps everything,
/// and exits when C does, which makes the kernel kill whatever is left in the namespace.
unsafe fn run_b(p: &Prepared) -> ! {
    // SAFETY: a forked child making async-signal-safe calls; the ops' strings outlive it.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        for (i, op) in p.ops.iter().enumerate() {
            if let Err(e) = op.run() {
                fail_with(OP_BASE + i as i32, e);
            }
        }
        let host = b"sandbox";
        if libc::sethostname(host.as_ptr().cast(), host.len()) < 0 {
            fail(Stage::Hostname);
        }
        // C unshares its own user namespace and waits on `go` until B has written its id maps.
        let (mut ready, mut go) = ([0; 2], [0; 2]);
        if libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) < 0 || libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
            fail(Stage::Pipe);
        }
        let c = libc::fork();
        if c < 0 {
            fail(Stage::Fork);
        }
        if c == 0 {
            libc::close(ready[0]);
            libc::close(go[1]);
            run_c(p, ready[1], go[0]);
        }
        libc::close(ready[1]);
        libc::close(go[0]);
        close_stdio();
        let mut byte = 0u8;
        if libc::read(ready[0], (&mut byte as *mut u8).cast(), 1) == 1 {
            match write_inner_maps(p, c) {
                Ok(()) => {
                    libc::write(go[1], (&byte as *const u8).cast(), 1);
                }
                // C sees end of file on `go` and exits.
                Err(e) => report(Record::Setup { stage: Stage::InnerMap as i32, errno: e }),
            }
        }
        libc::close(go[1]);
        libc::close(ready[0]);
        loop {
            let mut st = 0;
            let r = libc::waitpid(-1, &mut st, 0);
            if r == c {
                report(Record::Exit(st));
                libc::_exit(0);
            }
            if r < 0 && errno() != libc::EINTR {
                libc::_exit(0);
            }
        }
    }
}

fn write_inner_maps(p: &Prepared, c: pid_t) -> Result<(), c_int> {
    let mut buf = [0u8; 64];
    write_file(proc_path(&mut buf, c, b"uid_map").as_ptr(), &p.inner_maps.0)?;
    write_file(proc_path(&mut buf, c, b"gid_map").as_ptr(), &p.inner_maps.1)
}

/// Process C under namespaces: a session of its own (so a signal to "my process group" stays
/// inside), a user namespace of its own (so RLIMIT_NPROC counts this call's processes only),
/// then the common tail.
unsafe fn run_c(p: &Prepared, ready_w: c_int, go_r: c_int) -> ! {
    // SAFETY: a forked child making async-signal-safe calls.
    unsafe {
        if libc::setsid() < 0 {
            fail(Stage::Setsid);
        }
        if libc::unshare(libc::CLONE_NEWUSER) < 0 {
            fail(Stage::InnerUserns);
        }
        let byte = 1u8;
        libc::write(ready_w, (&byte as *const u8).cast(), 1);
        libc::close(ready_w);
        let mut got = 0u8;
        if libc::read(go_r, (&mut got as *mut u8).cast(), 1) != 1 {
            // B could not map the ids and has said why.
            libc::_exit(1);
        }
        libc::close(go_r);
        exec_program(p);
    }
}

/// Drops privileges, sets the limits and execs the program (or bwrap). Never returns.
unsafe fn exec_program(p: &Prepared) -> ! {
    // SAFETY: a forked child making async-signal-safe calls on memory built before the fork.
    unsafe {
        if let Some(ids) = &p.drop_to {
            if ids.setgroups && libc::setgroups(1, &ids.gid) < 0 {
                fail(Stage::Setgroups);
            }
            if libc::setresgid(ids.gid, ids.gid, ids.gid) < 0 {
                fail(Stage::Setgid);
            }
            if libc::setresuid(ids.uid, ids.uid, ids.uid) < 0 {
                fail(Stage::Setuid);
            }
        }
        // If A dies (the caller was killed and took A with it), so does the program. Set after
        // the uid change, which clears it.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        for &(res, soft, hard) in &p.rlimits {
            if libc::setrlimit(res, &libc::rlimit { rlim_cur: soft, rlim_max: hard }) < 0 {
                fail(Stage::Rlimit);
            }
        }
        drop_capabilities();
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail(Stage::NoNewPrivs);
        }
        if libc::chdir(p.workdir.as_ptr()) < 0 {
            fail(Stage::Chdir);
        }
        libc::fcntl(REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::execve(p.exe.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
        fail_with(Stage::Exec as i32, errno());
    }
}

/// No capabilities survive into the program: exec would clear them for a non-root uid anyway,
/// but the bounding and ambient sets are emptied too, so nothing can bring them back.
unsafe fn drop_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // SAFETY: prctl and capset on this process, with structs laid out as the kernel expects
    // (_LINUX_CAPABILITY_VERSION_3 takes two Data entries).
    unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        for cap in 0..64 {
            // EINVAL past the last capability this kernel knows; EPERM when already unprivileged.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno() == libc::EINVAL {
                break;
            }
        }
        let header = Header { version: 0x2008_0522, pid: 0 };
        let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
        libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for r in [Record::Setup { stage: 1003, errno: libc::EPERM }, Record::Exit(9), Record::Exit(256)] {
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
        assert_eq!(Record::decode(&[0; 12]), None);
        assert_eq!(Record::decode(&[1, 0]), None);
    }

    #[test]
    fn proc_paths() {
        let mut buf = [0u8; 64];
        assert_eq!(proc_path(&mut buf, 0, b"uid_map").to_bytes(), b"/proc/0/uid_map");
        assert_eq!(proc_path(&mut buf, 4_194_304, b"gid_map").to_bytes(), b"/proc/4194304/gid_map");
    }

    #[test]
    fn stage_words() {
        let notes = vec!["bind /usr".to_string()];
        assert!(describe_stage(OP_BASE, libc::EPERM, &notes).contains("bind /usr: Operation not permitted"));
        assert!(describe_stage(Stage::Exec as i32, libc::ENOENT, &notes).contains("exec of the program: No such file"));
    }
}
