//! bubblewrap's command line for the same layout the namespaces plan builds (see `plan.rs`).

use std::path::{Path, PathBuf};

use super::{CODE_DIR, SandboxConfig, WORK_DIR};

#[derive(Debug, Clone)]
pub(crate) struct Bwrap {
    pub path: PathBuf,
    /// util-linux's `prlimit`, which sets RLIMIT_NPROC inside the sandbox (see `args`).
    pub prlimit: PathBuf,
    /// `--size` (a cap on a tmpfs) arrived in bubblewrap 0.9.0.
    pub supports_size: bool,
}

impl Bwrap {
    /// `bwrap` and `prlimit` from `PATH`, if both are there and bwrap answers `--version`.
    pub fn find() -> Option<Self> {
        let path = std::env::var_os("PATH")?;
        let find = |name: &str| std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file());
        let (exe, prlimit) = (find("bwrap")?, find("prlimit")?);
        let out = std::process::Command::new(&exe).arg("--version").output().ok()?;
        let version = String::from_utf8_lossy(&out.stdout).into_owned();
        Some(Self { path: exe, prlimit, supports_size: version_at_least(&version, (0, 9)) })
    }

    /// Everything after bwrap's argv[0] and before the program's own argv.
    ///
    /// RLIMIT_NPROC is set inside, by `prlimit`, not on bwrap: the kernel checks a process count
    /// at every user namespace level against the limit its creator had, so a limit on bwrap
    /// itself would count all of the uid's processes on the host, threads of the caller
    /// included, while a limit set inside the namespace counts this call's processes only.
    pub fn args(&self, ro_paths: &[PathBuf], c: &SandboxConfig, code: &Path) -> Vec<String> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut a: Vec<String> = [
            "--unshare-all",
            // --unshare-all only tries a user namespace; --uid needs one.
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandbox",
            "--cap-drop",
            "ALL",
            "--uid",
            &c.uid.to_string(),
            "--gid",
            &c.gid.to_string(),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        let mut bound: Vec<&Path> = vec![];
        for p in ro_paths {
            if bound.iter().any(|q| p.starts_with(q)) {
                continue;
            }
            match p.symlink_metadata() {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(p) {
                        a.extend(["--symlink".into(), s(&target), s(p)]);
                    }
                }
                Ok(_) => {
                    a.extend(["--ro-bind".into(), s(p), s(p)]);
                    bound.push(p);
                }
                Err(_) => {}
            }
        }
        for m in &c.masked_paths {
            if !bound.iter().any(|q| m.starts_with(q)) {
                continue;
            }
            match m.symlink_metadata() {
                Ok(meta) if meta.is_dir() => a.extend(["--tmpfs".into(), s(m), "--remount-ro".into(), s(m)]),
                Ok(meta) if meta.is_file() => a.extend(["--ro-bind".into(), "/dev/null".into(), s(m)]),
                _ => {}
            }
        }
        a.extend(["--proc".into(), "/proc".into(), "--dev".into(), "/dev".into()]);
        if self.supports_size {
            a.extend(["--size".into(), c.tmpfs_bytes.to_string()]);
        }
        a.extend(["--tmpfs".into(), WORK_DIR.into()]);
        a.extend(["--ro-bind".into(), s(code), CODE_DIR.into()]);
        // bwrap's own root and /dev are writable tmpfs by default; as in the plan, they are not.
        a.extend(["--remount-ro".into(), "/dev".into(), "--remount-ro".into(), "/".into()]);
        a.extend(["--chdir".into(), WORK_DIR.into(), "--".into()]);
        a.extend([s(&self.prlimit), format!("--nproc={}", c.processes), "--".into()]);
        a
    }
}

/// Whether `bubblewrap X.Y.Z` is at least `want` (major, minor).
fn version_at_least(text: &str, want: (u32, u32)) -> bool {
    let Some(v) = text.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit())) else {
        return false;
    };
    let mut parts = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(!version_at_least("bubblewrap 0.8.0\n", (0, 9)));
        assert!(version_at_least("bubblewrap 0.9.0\n", (0, 9)));
        assert!(version_at_least("bubblewrap 0.11.1", (0, 9)));
        assert!(version_at_least("bubblewrap 1.0", (0, 9)));
        assert!(!version_at_least("garbage", (0, 9)));
    }

    #[test]
    fn args_mirror_the_plan() {
        let b = Bwrap { path: "/usr/bin/bwrap".into(), prlimit: "/usr/bin/prlimit".into(), supports_size: true };
        let c = SandboxConfig::default();
        let args = b.args(&[PathBuf::from("/usr"), PathBuf::from("/etc")], &c, Path::new("/tmp/x/code")).join(" ");
        assert!(args.contains("--ro-bind /usr /usr"), "{args}");
        assert!(args.contains("--size 67108864 --tmpfs /tmp"), "{args}");
        assert!(args.contains("--ro-bind /tmp/x/code /sandbox"), "{args}");
        assert!(args.ends_with("--remount-ro / --chdir /tmp -- /usr/bin/prlimit --nproc=64 --"), "{args}");
        if Path::new("/etc/shadow").is_file() {
            assert!(args.contains("--ro-bind /dev/null /etc/shadow"), "{args}");
        }
    }
}
