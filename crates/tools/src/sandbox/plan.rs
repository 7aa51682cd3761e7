//! The root filesystem a namespaced program sees, as a list of mount steps.
//!
//! The caller builds the list (it may allocate and check paths); process B runs it after the
//! fork, in its new mount namespace. The new root is an empty tmpfs holding only read-only
//! binds of `ro_paths` (and the interpreter's prefix), a fresh `/proc` for the new PID
//! namespace, a minimal `/dev`, the private `/tmp` and the read-only code at `/sandbox`. After
//! `pivot_root` the host's tree is detached, so nothing else of it (`/root`, `/home`, the repo,
//! `/run`, `/sys`, the host's `/tmp` and `/dev/shm`) exists inside.

use std::collections::HashSet;
use std::ffi::{CString, c_int};
use std::path::{Path, PathBuf};

use super::{CODE_DIR, SandboxError, WORK_DIR, cstring};

/// One step. Paths are absolute host paths at the time the step runs.
#[derive(Debug)]
pub(crate) enum Op {
    /// Stop mount events propagating back to the host (`mount --make-rprivate /`).
    PrivateRoot,
    Tmpfs {
        dst: CString,
        opts: CString,
    },
    /// `mkdir`, where an existing directory is fine.
    Mkdir {
        path: CString,
    },
    Symlink {
        target: CString,
        path: CString,
    },
    /// An empty file to bind a file onto.
    Touch {
        path: CString,
    },
    /// A recursive bind (a non-recursive one is refused in a user namespace when the source has
    /// locked submounts).
    Bind {
        src: CString,
        dst: CString,
    },
    /// Read-only, nosuid and nodev, for the mount at `path` (and those below it if recursive).
    ReadOnly {
        path: CString,
        recursive: bool,
    },
    Proc {
        dst: CString,
    },
    /// `pivot_root` into `new_root`, then detach the old root.
    PivotRoot {
        new_root: CString,
    },
    Chdir {
        path: CString,
    },
}

fn errno() -> c_int {
    // SAFETY: the thread's errno location is always valid.
    unsafe { *libc::__errno_location() }
}

fn check(r: c_int) -> Result<(), c_int> {
    if r < 0 { Err(errno()) } else { Ok(()) }
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

impl Op {
    /// Runs the step. Async-signal-safe: system calls on strings built before the fork.
    pub(crate) fn run(&self) -> Result<(), c_int> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: every pointer is a NUL-terminated string owned by `self` or a static literal,
        // or null where the call accepts null.
        unsafe {
            match self {
                Op::PrivateRoot => {
                    check(libc::mount(null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))
                }
                Op::Tmpfs { dst, opts } => check(libc::mount(
                    c"tmpfs".as_ptr(),
                    dst.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    opts.as_ptr().cast(),
                )),
                Op::Mkdir { path } => match check(libc::mkdir(path.as_ptr(), 0o755)) {
                    Err(libc::EEXIST) => Ok(()),
                    r => r,
                },
                Op::Symlink { target, path } => check(libc::symlink(target.as_ptr(), path.as_ptr())),
                Op::Touch { path } => {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC, 0o644);
                    check(fd)?;
                    libc::close(fd);
                    Ok(())
                }
                Op::Bind { src, dst } => {
                    check(libc::mount(src.as_ptr(), dst.as_ptr(), null, libc::MS_BIND | libc::MS_REC, std::ptr::null()))
                }
                Op::ReadOnly { path, recursive } => read_only(path, *recursive),
                Op::Proc { dst } => check(libc::mount(
                    c"proc".as_ptr(),
                    dst.as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                )),
                Op::PivotRoot { new_root } => {
                    // pivot_root(".", ".") stacks the old root on top of the new one; detaching
                    // "." then removes it, without needing a directory to put it in.
                    check(libc::chdir(new_root.as_ptr()))?;
                    check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as c_int)?;
                    check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
                    check(libc::chdir(c"/".as_ptr()))
                }
                Op::Chdir { path } => check(libc::chdir(path.as_ptr())),
            }
        }
    }
}

/// mount_setattr(2) (Linux 5.12) can add flags to a whole subtree at once and never needs the
/// flags a mount already has; older kernels get a remount of the top mount, which must repeat
/// the flags the kernel locked on it (nosuid, noexec, atime) or be refused.
fn read_only(path: &CString, recursive: bool) -> Result<(), c_int> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: a NUL-terminated path and a struct of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    if errno() != libc::ENOSYS {
        return Err(errno());
    }
    // SAFETY: statvfs into a zeroed local (glibc fills it from statfs(2) on kernels since
    // 2.6.36, without allocating); mount with a NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        check(libc::statvfs(path.as_ptr(), &mut st))?;
        let mut keep = 0;
        for (st_flag, ms_flag) in [
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ] {
            if st.f_flag & st_flag != 0 {
                keep |= ms_flag;
            }
        }
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | keep;
        check(libc::mount(std::ptr::null(), path.as_ptr(), std::ptr::null(), flags, std::ptr::null()))
    }
}

/// The steps, and a description of each for error messages.
pub(crate) struct Plan {
    pub ops: Vec<Op>,
    pub notes: Vec<String>,
}

struct Builder<'a> {
    root: &'a Path,
    plan: Plan,
    made: HashSet<PathBuf>,
}

impl Builder<'_> {
    fn push(&mut self, op: Op, note: String) {
        self.plan.ops.push(op);
        self.plan.notes.push(note);
    }

    /// `inside` (absolute, as seen in the sandbox) under the new root, on the host.
    fn host(&self, inside: &Path) -> PathBuf {
        self.root.join(inside.strip_prefix("/").unwrap_or(inside))
    }

    fn c(&self, p: &Path) -> Result<CString, SandboxError> {
        cstring(p.as_os_str().as_encoded_bytes(), &format!("path {}", p.display()))
    }

    /// `mkdir -p` of `inside` in the new root.
    fn mkdirs(&mut self, inside: &Path) -> Result<(), SandboxError> {
        let mut chain: Vec<&Path> = inside.ancestors().filter(|a| *a != Path::new("/")).collect();
        chain.reverse();
        for dir in chain {
            if self.made.insert(dir.to_path_buf()) {
                let path = self.c(&self.host(dir))?;
                self.push(Op::Mkdir { path }, format!("mkdir {}", dir.display()));
            }
        }
        Ok(())
    }

    fn touch(&mut self, inside: &Path) -> Result<(), SandboxError> {
        if let Some(parent) = inside.parent() {
            self.mkdirs(parent)?;
        }
        let path = self.c(&self.host(inside))?;
        self.push(Op::Touch { path }, format!("create {}", inside.display()));
        Ok(())
    }

    fn bind(&mut self, src: &Path, inside: &Path) -> Result<(), SandboxError> {
        let (s, d) = (self.c(src)?, self.c(&self.host(inside))?);
        self.push(Op::Bind { src: s, dst: d }, format!("bind {} on {}", src.display(), inside.display()));
        Ok(())
    }

    fn read_only(&mut self, inside: &Path, recursive: bool) -> Result<(), SandboxError> {
        let path = self.c(&self.host(inside))?;
        self.push(Op::ReadOnly { path, recursive }, format!("make {} read-only", inside.display()));
        Ok(())
    }

    fn tmpfs(&mut self, inside: &Path, opts: &str) -> Result<(), SandboxError> {
        let (dst, o) = (self.c(&self.host(inside))?, cstring(opts, "tmpfs options")?);
        self.push(Op::Tmpfs { dst, opts: o }, format!("mount a tmpfs ({opts}) on {}", inside.display()));
        Ok(())
    }
}

/// The plan for one call: `root` is an empty host directory to build the new root on, `code`
/// the host directory shown read-only at `/sandbox`.
pub(crate) fn build(
    root: &Path,
    code: &Path,
    ro_paths: &[PathBuf],
    masked: &[PathBuf],
    tmpfs_bytes: u64,
) -> Result<Plan, SandboxError> {
    let mut b = Builder { root, plan: Plan { ops: vec![], notes: vec![] }, made: HashSet::new() };
    b.push(Op::PrivateRoot, "make all mounts private".into());
    let dst = b.c(root)?;
    b.push(
        Op::Tmpfs { dst, opts: cstring("size=1m,nr_inodes=4096,mode=0755", "tmpfs options")? },
        "mount the new root's tmpfs".into(),
    );

    let mut bound: Vec<&Path> = vec![];
    for p in ro_paths {
        if bound.iter().any(|q| p.starts_with(q)) {
            continue;
        }
        let Ok(meta) = p.symlink_metadata() else { continue };
        if meta.file_type().is_symlink() {
            // /bin -> usr/bin on merged-/usr systems: the same link inside.
            let target = std::fs::read_link(p)
                .map_err(|e| SandboxError::Io { what: format!("readlink {}", p.display()), source: e })?;
            if let Some(parent) = p.parent() {
                b.mkdirs(parent)?;
            }
            let (t, l) = (b.c(&target)?, b.c(&b.host(p))?);
            b.push(Op::Symlink { target: t, path: l }, format!("symlink {} -> {}", p.display(), target.display()));
            b.made.insert(p.clone());
            continue;
        }
        if meta.is_dir() {
            b.mkdirs(p)?;
        } else {
            b.touch(p)?;
        }
        b.bind(p, p)?;
        b.read_only(p, true)?;
        bound.push(p);
    }

    for m in masked {
        // Only what is visible needs hiding, and only what exists can be mounted over.
        if !bound.iter().any(|q| m.starts_with(q)) {
            continue;
        }
        match m.symlink_metadata() {
            Ok(meta) if meta.is_dir() => {
                b.tmpfs(m, "size=4k,nr_inodes=16,mode=0755")?;
                b.read_only(m, false)?;
            }
            Ok(meta) if meta.is_file() => b.bind(Path::new("/dev/null"), m)?,
            _ => {}
        }
    }

    let proc_dir = Path::new("/proc");
    b.mkdirs(proc_dir)?;
    let dst = b.c(&b.host(proc_dir))?;
    b.push(Op::Proc { dst }, "mount /proc for the new PID namespace".into());

    let dev = Path::new("/dev");
    b.mkdirs(dev)?;
    b.tmpfs(dev, "size=64k,nr_inodes=64,mode=0755")?;
    for name in ["null", "zero", "full", "random", "urandom"] {
        let node = dev.join(name);
        if node.exists() {
            b.touch(&node)?;
            b.bind(&node, &node)?;
        }
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let (t, l) = (b.c(Path::new(target))?, b.c(&b.host(&dev.join(name)))?);
        b.push(Op::Symlink { target: t, path: l }, format!("symlink /dev/{name}"));
    }
    b.read_only(dev, false)?;

    let work = Path::new(WORK_DIR);
    b.mkdirs(work)?;
    b.tmpfs(work, &format!("size={tmpfs_bytes},nr_inodes=65536,mode=1777"))?;

    let code_inside = Path::new(CODE_DIR);
    b.mkdirs(code_inside)?;
    b.bind(code, code_inside)?;
    b.read_only(code_inside, true)?;

    let new_root = b.c(root)?;
    b.push(Op::PivotRoot { new_root }, "pivot_root into the new root".into());
    // The root tmpfs itself goes read-only last, once every mount point on it exists.
    b.push(Op::ReadOnly { path: cstring("/", "path")?, recursive: false }, "make / read-only".into());
    let path = b.c(work)?;
    b.push(Op::Chdir { path }, format!("chdir {WORK_DIR}"));
    Ok(b.plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_binds_what_exists_and_masks_what_is_visible() {
        let root = Path::new("/tmp/r");
        let ro = vec![PathBuf::from("/usr"), PathBuf::from("/etc"), PathBuf::from("/usr/lib"), PathBuf::from("/nope")];
        let masked = vec![PathBuf::from("/etc/passwd"), PathBuf::from("/root/secret")];
        let plan = build(root, Path::new("/tmp/code"), &ro, &masked, 1 << 20).unwrap();
        assert_eq!(plan.ops.len(), plan.notes.len());
        let notes = plan.notes.join("\n");
        assert!(notes.contains("bind /usr on /usr"), "{notes}");
        assert!(notes.contains("bind /etc on /etc"), "{notes}");
        // /usr/lib is already visible through /usr; /nope does not exist.
        assert!(!notes.contains("bind /usr/lib") && !notes.contains("/nope"), "{notes}");
        assert!(notes.contains("bind /dev/null on /etc/passwd"), "{notes}");
        assert!(!notes.contains("/root/secret"), "{notes}");
        assert!(notes.contains("bind /tmp/code on /sandbox"), "{notes}");
        assert!(notes.contains("size=1048576"), "{notes}");
        // The pivot comes after every mount under the new root, and the last step is the chdir.
        let pivot = plan.notes.iter().position(|n| n.starts_with("pivot_root")).unwrap();
        assert!(plan.notes[..pivot].iter().all(|n| !n.contains("make / read-only")));
        assert_eq!(plan.notes.last().unwrap(), "chdir /tmp");
        assert!(matches!(plan.ops[0], Op::PrivateRoot));
    }

    #[test]
    fn nested_paths_get_their_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        let plan = build(Path::new("/r"), Path::new("/code"), std::slice::from_ref(&deep), &[], 4096).unwrap();
        let mkdirs: Vec<&String> = plan.notes.iter().filter(|n| n.starts_with("mkdir")).collect();
        let want = format!("mkdir {}", deep.display());
        let pos = mkdirs.iter().position(|n| **n == want).unwrap();
        assert_eq!(*mkdirs[pos - 1], format!("mkdir {}", deep.parent().unwrap().display()));
    }
}
