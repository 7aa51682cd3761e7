//! Where the BFCL data and the reference traces are.
//!
//! The BFCL multi-turn data is not committed; it lives in `shared/bfcl` beside the
//! repository (or `ARTIST_BFCL_DIR`). Tests that need it skip with a message when it is
//! absent, unless `ARTIST_REQUIRE_SHARED=1` (as CI sets), where its absence is a failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use artist_bfcl::LongContext;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/bfcl")
}

fn require_shared() -> bool {
    std::env::var("ARTIST_REQUIRE_SHARED").is_ok_and(|v| v == "1")
}

/// The BFCL data directory, or `None` after printing why the calling test is skipped.
pub fn bfcl_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("ARTIST_BFCL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("../shared/bfcl"),
    };
    if dir.join("questions").is_dir() {
        return Some(dir);
    }
    let msg = format!("the BFCL data was not found at {} (set ARTIST_BFCL_DIR)", dir.display());
    assert!(!require_shared(), "ARTIST_REQUIRE_SHARED=1 but {msg}");
    eprintln!("skipped: {msg}");
    None
}

/// The long-context filler (`ARTIST_BFCL_LONG_CONTEXT`, else
/// `tests/fixtures/bfcl/long_context.json`, made by `scripts/make_bfcl_long_context.py`),
/// or `None` with a message.
pub fn long_context() -> Option<LongContext> {
    let path = match std::env::var_os("ARTIST_BFCL_LONG_CONTEXT") {
        Some(p) => PathBuf::from(p),
        None => fixtures().join("long_context.json"),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(LongContext::from_json_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))),
        Err(_) => {
            let msg = format!("no long-context filler at {} (run scripts/bfcl_long_context.sh)", path.display());
            assert!(!require_shared(), "ARTIST_REQUIRE_SHARED=1 but {msg}");
            eprintln!("skipped long-context entries: {msg}");
            None
        }
    }
}

/// Reads a JSON Lines file.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1)))
        .collect()
}

/// Classes to check, from `BFCL_CLASS` (comma-separated); all when unset.
pub fn class_filter() -> Option<Vec<String>> {
    std::env::var("BFCL_CLASS").ok().map(|s| s.split(',').map(|c| c.trim().to_owned()).collect())
}
