//! Records which commit a binary was built from, for `--version`: binaries are built on one
//! machine and carried to GPU machines that have no checkout, and their output should say
//! what code produced it. ("unknown" outside a git checkout.)

use std::process::Command;

fn main() {
    // The commit moves when HEAD or a branch does (not on every edit: that would rebuild the
    // binaries each time the index changes).
    for p in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        println!("cargo::rerun-if-changed={p}");
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=ARTIST_GIT_COMMIT={commit}");
}
