//! Model-written code that attacks the sandbox or the machine, one case per test. Each checks
//! that the call ends within its limits, that nothing it started is left on the host, that the
//! attack had no effect outside, and that the model is told what happened.
//!
//! Cases needing an interpreter skip (with a message) without one; cases whose protection
//! comes from namespaces skip where only rlimits are available.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use artist_tools::{Isolation, PythonTool, SandboxConfig, SandboxKind, Tool, ToolCall};
use common::*;

/// The slack on top of the wall-clock limit: startup, teardown, a loaded 2-core machine.
const SLACK_S: f64 = 2.0;

fn limit() -> std::time::Duration {
    secs(TIMEOUT_S + SLACK_S)
}

#[test]
fn fork_bomb() {
    let Some(tool) = isolated() else { return };
    let r = run_checked(&tool, "forkbomb", "while True:\n    os.fork()", limit());
    assert!(!r.success);
    // The process limit stops it (fork fails), or the timeout does.
    assert!(r.output.contains("Resource temporarily unavailable") || r.timed_out, "{}", r.output);
}

#[test]
fn infinite_loop() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(cfg);
    let r = run_checked(&tool, "loop", "while True:\n    pass", limit());
    assert!(r.timed_out && !r.success);
    assert!(r.output.contains(&format!("exceeded {TIMEOUT_S} s and was stopped")), "{}", r.output);
}

#[test]
fn cpu_time_limit() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(SandboxConfig { cpu_s: 1, timeout_s: 5.0, ..cfg });
    let r = run_checked(&tool, "cpu", "while True:\n    pass", secs(5.0 + SLACK_S));
    assert!(!r.timed_out && !r.success, "{}", r.output);
    assert!(r.output.contains("SIGXCPU") && r.output.contains("1 s of CPU time"), "{}", r.output);
}

#[test]
fn allocate_100_gb() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(cfg);
    let r = run_checked(&tool, "alloc", "x = bytearray(100 * 10**9)\nprint('allocated')", limit());
    assert!(!r.success && !r.timed_out);
    assert!(r.output.contains("MemoryError") && !r.output.contains("allocated"), "{}", r.output);
}

#[test]
fn connect_to_host_loopback() {
    let Some(tool) = isolated() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = format!(
        "import socket\ns = socket.socket()\ns.settimeout(2)\ntry:\n    s.connect(('127.0.0.1', {port}))\n    \
         print('connected')\nexcept OSError as e:\n    print('refused:', e)"
    );
    let r = run_checked(&tool, "loopback", &body, limit());
    assert!(r.output.contains("refused:") && !r.output.contains("connected"), "{}", r.output);
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the host listener was reached: {other:?}"),
    }
}

#[test]
fn connect_outside() {
    let Some(tool) = isolated() else { return };
    let body = "import socket\nfor host in [('1.1.1.1', 53), ('8.8.8.8', 443)]:\n    s = socket.socket()\n    \
                s.settimeout(2)\n    try:\n        s.connect(host)\n        print('connected', host)\n    except \
                OSError as e:\n        print('refused:', e)\ntry:\n    print(socket.getaddrinfo('example.com', \
                80))\nexcept OSError as e:\n    print('no dns:', e)";
    let r = run_checked(&tool, "outside", body, limit());
    assert!(!r.output.contains("connected"), "{}", r.output);
    assert!(r.output.contains("Network is unreachable") && r.output.contains("no dns:"), "{}", r.output);
}

#[test]
fn write_outside_the_temporary_directory() {
    let Some(tool) = isolated() else { return };
    let mark = marker("write");
    let repo_file = repo_dir().join(format!("x-{mark}"));
    let targets = [
        format!("/tmp/x-{mark}"),
        repo_file.display().to_string(),
        format!("/usr/x-{mark}"),
        format!("/etc/x-{mark}"),
        format!("/x-{mark}"),
        format!("/sandbox/x-{mark}"),
        format!("/dev/x-{mark}"),
    ];
    let body = format!(
        "for path in {targets:?}:\n    try:\n        open(path, 'w').write('pwned')\n        print('wrote', \
         path)\n    except OSError as e:\n        print('refused', path, e)"
    );
    let r = run_checked(&tool, "write", &body, limit());
    // The private /tmp takes the write; it is gone with the call.
    assert!(r.output.contains(&format!("wrote /tmp/x-{mark}")), "{}", r.output);
    for t in &targets[1..] {
        assert!(r.output.contains(&format!("refused {t}")), "{t} was writable:\n{}", r.output);
    }
    for t in &targets {
        assert!(!Path::new(t).exists(), "{t} exists on the host");
    }
}

#[test]
fn read_secrets() {
    let Some(tool) = isolated() else { return };
    let body = "for path in ['/etc/shadow', '/etc/gshadow', '/root/.bashrc', '/root/.ssh/id_rsa', \
                '/proc/1/environ']:\n    try:\n        print(path, repr(open(path).read()[:40]))\n    except OSError \
                as e:\n        print(path, 'refused', e)\nfor d in ['/root', '/home', '/work', '/run']:\n    try:\n        \
                print(d, 'lists', os.listdir(d))\n    except OSError as e:\n        print(d, 'refused', e)";
    let r = run_checked(&tool, "secrets", body, limit());
    // Masked: empty under namespaces, unreadable under bwrap (its binds are nodev).
    assert!(r.output.contains("/etc/shadow ''") || r.output.contains("/etc/shadow refused"), "{}", r.output);
    assert!(r.output.contains("/root/.bashrc refused"), "{}", r.output);
    // PID 1 is the sandbox's own init: its environment, if readable at all, is the sandbox's.
    assert!(!r.output.contains("CARGO") && !r.output.contains("PWD="), "{}", r.output);
    for line in r.output.lines().filter(|l| l.contains(" lists ")) {
        for secret in [".bashrc", ".cargo", ".gitconfig", "main"] {
            assert!(!line.contains(secret), "{secret} is visible: {line}");
        }
    }
}

#[test]
fn print_1_gb() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(cfg);
    let body = "chunk = 'x' * (1 << 20) + '\\n'\nfor _ in range(1024):\n    sys.stdout.write(chunk)\nprint('done')";
    let r = run_checked(&tool, "print", body, limit());
    let cap = tool.config().output_bytes;
    assert!(r.truncated && r.success && !r.timed_out, "{r:?}");
    assert!(r.output.len() < cap + 200, "{} bytes", r.output.len());
    assert!(r.output.contains(&format!("[output truncated at {cap} bytes; the program wrote 1073742853 bytes]")));
}

#[test]
fn setsid_child_outlives_its_parent() {
    let Some(tool) = isolated() else { return };
    let mark = marker("setsid");
    let body = format!(
        "import subprocess, time\n\
         p = subprocess.Popen(['sh', '-c', 'sleep 3137; : {mark}'], start_new_session=True)\n\
         q = subprocess.Popen(['sleep', '3137'], start_new_session=True)\n\
         if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(300)\n    os._exit(0)\n\
         time.sleep(0.3)\n\
         os.kill(p.pid, 0); os.kill(q.pid, 0)\n\
         print('children running')"
    );
    let r = run_checked(&tool, "setsid", &body, limit());
    assert!(r.success && r.output.contains("children running"), "{}", r.output);
    // An unusual duration, so that no other process on the machine matches by chance.
    assert!(processes_named(&["sleep", "3137"]).is_empty(), "a `sleep 3137` survived");
}

#[test]
fn deep_recursion() {
    let Some(cfg) = config() else { return };
    let tool = tool_with(cfg);
    let body = "sys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1)\nf(0)";
    let r = run_checked(&tool, "recursion", body, limit());
    assert!(!r.success, "{}", r.output);
    // Python 3.11+ keeps Python frames off the C stack, so this grows until memory or time runs
    // out; older versions overflow the C stack. Any of those, reported, is a proper end.
    assert!(
        r.timed_out
            || ["MemoryError", "RecursionError", "SystemError", "killed by"].iter().any(|e| r.output.contains(e)),
        "{}",
        r.output
    );
}

#[test]
fn kill_the_parent() {
    let Some(tool) = isolated() else { return };
    let body = concat!(
        "import signal\n",
        "for target in [os.getppid(), 1, -1]:\n",
        "    try:\n",
        "        os.kill(target, signal.SIGKILL)\n",
        "        print('kill', target, 'sent')\n",
        "    except OSError as e:\n",
        "        print('kill', target, 'refused', e)\n",
        "print('still running')",
    );
    let r = run_checked(&tool, "killparent", body, limit());
    // Its parent is the namespace's init, which takes no signal from inside (refused, or sent
    // and dropped); kill(-1) reaches every process it may signal except itself: none.
    assert!(r.success && r.output.ends_with("still running\n"), "{}", r.output);
    assert!(r.output.contains("kill -1 refused"), "{}", r.output);
    // The caller is still here, and the tool still runs calls.
    let again = tool.execute(&ToolCall { text: "print('fine')".into(), rollout: 0, ..Default::default() });
    assert_eq!(again.output, "fine\n");
}

#[test]
fn fill_the_disk() {
    let Some(cfg) = config() else { return };
    let Some(tool) = isolated_with(SandboxConfig { tmpfs_bytes: 1 << 20, ..cfg }) else { return };
    if !tool.sandbox().tmpfs_capped() {
        eprintln!("skipped: this bubblewrap cannot cap the size of /tmp (0.9 can)");
        return;
    }
    let body = "try:\n    for i in range(100):\n        open('f%d' % i, 'wb').write(b'x' * 65536)\nexcept OSError as \
                e:\n    print('stopped:', e)\ntry:\n    open('big', 'wb').write(b'x' * (17 << 20))\nexcept OSError as \
                e:\n    print('big:', e)";
    let r = run_checked(&tool, "disk", body, limit());
    assert!(r.output.contains("stopped: [Errno 28] No space left on device"), "{}", r.output);
}

#[test]
fn process_limit_counts_each_call_alone() {
    let Some(cfg) = config() else { return };
    let Some(tool) = isolated_with(SandboxConfig { processes: 8, timeout_s: 10.0, ..cfg }) else { return };
    let tool = Arc::new(tool);
    // Four calls at once, each with 1 + 5 processes: within 8 apiece, far over 8 together.
    let ok = "import subprocess\nps = [subprocess.Popen(['sleep', '1']) for _ in range(5)]\nfor p in ps: p.wait()\n\
              print('ok')";
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let tool = Arc::clone(&tool);
            std::thread::spawn(move || tool.execute(&ToolCall { text: ok.into(), rollout: i, ..Default::default() }))
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert!(r.success && r.output == "ok\n", "{r:?}");
    }
    let over = "import subprocess\nps = [subprocess.Popen(['sleep', '1']) for _ in range(10)]";
    let r = tool.execute(&ToolCall { text: over.into(), rollout: 9, ..Default::default() });
    assert!(!r.success && r.output.contains("Resource temporarily unavailable"), "{}", r.output);
}

/// The fallback: no namespaces, but limits, the group kill and an unprivileged uid (as root).
#[test]
fn rlimits_only_fallback() {
    let Some(mut cfg) = config() else { return };
    cfg.isolation = Isolation::RlimitsOnly;
    // As root the program runs as `nobody`, which must be able to read the interpreter; a
    // per-user install under /root is not readable, the system one is.
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 && Path::new("/usr/bin/python3").exists() {
        cfg.python = "/usr/bin/python3".into();
    }
    let tool = match PythonTool::new(cfg) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("skipped: rlimits-only sandbox unavailable: {e}");
            return;
        }
    };
    assert_eq!(tool.sandbox_kind(), SandboxKind::RlimitsOnly);
    let r = run_checked(&tool, "fallback-ok", "print(os.getcwd().startswith('/tmp'), os.getuid() != 0)", limit());
    assert_eq!(r.output, "True True\n");
    // Children in the process group die with it at the timeout.
    let body = "import subprocess\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', \
                sys.argv[-1]])\nwhile True:\n    pass";
    let r = run_checked(&tool, "fallback-loop", body, limit());
    assert!(r.timed_out, "{}", r.output);
    // Without a PID namespace, A is the subreaper of everything the program starts, and kills
    // what is left when it ends: a setsid child and a double-forked one included.
    let body = concat!(
        "import subprocess, time\n",
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', sys.argv[-1]], start_new_session=True)\n",
        "if os.fork() == 0:\n",
        "    os.setsid()\n",
        "    if os.fork() == 0:\n",
        "        time.sleep(300)\n",
        "    os._exit(0)\n",
        "time.sleep(0.3)\n",
        "print('started')",
    );
    let r = run_checked(&tool, "fallback-setsid", body, limit());
    assert_eq!(r.output, "started\n");
    let r = run_checked(&tool, "fallback-mem", "x = bytearray(100 * 10**9)", limit());
    assert!(r.output.contains("MemoryError"), "{}", r.output);
    let r = run_checked(&tool, "fallback-kill", "os.kill(os.getppid(), 9)\nprint('survived')", limit());
    // As root, `nobody` may not signal the parent; otherwise it kills only the intermediate process.
    assert!(!r.success || r.output.contains("survived"), "{}", r.output);
}
