// Shared helpers of the fuzz targets (included with `#[path]`/`mod`).
#![allow(dead_code)]

use std::path::PathBuf;

/// `tests/fixtures/<rel>` of the smolcap checkout.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(rel)
}

/// A scratch directory private to this fuzzing process.
pub fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}
