//! Shared test helpers: where the repository's fixtures and the shared Qwen2.5 tokenizer are, and
//! scratch files for error-path tests.
//!
//! The real Qwen2.5 tokenizer (18 MB) is not committed; it lives in `shared/` beside the
//! repository. Tests that need it skip with a message when it is absent, unless
//! `ARTIST_REQUIRE_SHARED=1` (as CI sets), where its absence is a failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use artist_tokenizer::Tokenizer;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tests/fixtures` at the repository root.
pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// The tiny Qwen2-style model directories (byte-level BPE with 32 merges, Qwen2.5's template).
pub fn tiny_dirs() -> Vec<PathBuf> {
    ["tiny-gqa", "tiny-tied-mqa", "tiny-mha-odd", "tiny-bf16", "tiny-sharded"]
        .iter()
        .map(|d| fixtures().join("qwen2").join(d))
        .filter(|d| d.join("tokenizer.json").is_file())
        .collect()
}

fn require_shared() -> bool {
    std::env::var("ARTIST_REQUIRE_SHARED").is_ok_and(|v| v == "1")
}

/// The directory of the shared Qwen2.5 tokenizer (`ARTIST_QWEN_TOKENIZER_DIR`, else
/// `shared/tokenizers/qwen2.5` beside the repository), or `None` after printing why the
/// calling test is skipped.
pub fn qwen_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("ARTIST_QWEN_TOKENIZER_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("../shared/tokenizers/qwen2.5"),
    };
    if dir.join("tokenizer.json").is_file() {
        return Some(dir);
    }
    let msg = format!(
        "the Qwen2.5 tokenizer was not found at {} (set ARTIST_QWEN_TOKENIZER_DIR to its directory)",
        dir.join("tokenizer.json").display()
    );
    assert!(!require_shared(), "ARTIST_REQUIRE_SHARED=1 but {msg}");
    eprintln!("skipped: {msg}");
    None
}

/// The shared Qwen2.5 tokenizer, loaded once per test binary (it is 18 MB of JSON), or `None`
/// after printing why the calling test is skipped.
pub fn qwen() -> Option<&'static Tokenizer> {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    if let Some(tokenizer) = TOKENIZER.get() {
        return Some(tokenizer);
    }
    let dir = qwen_dir()?;
    Some(
        TOKENIZER
            .get_or_init(|| Tokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("loading the Qwen2.5 tokenizer: {e}"))),
    )
}

/// A fresh scratch directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("artist-tokenizer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Stream-decodes `ids` one at a time; returns the concatenated text and every chunk.
pub fn stream(tokenizer: &Tokenizer, ids: &[u32], skip_special: bool) -> (String, Vec<String>) {
    let mut decoder = tokenizer.stream_decoder(skip_special);
    let mut chunks = Vec::new();
    for &id in ids {
        chunks.push(decoder.step(id).unwrap());
    }
    chunks.push(decoder.finish().unwrap());
    (chunks.concat(), chunks)
}
