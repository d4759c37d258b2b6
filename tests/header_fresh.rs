//! Fails when the checked-in `include/smolcap.h` is stale.
//!
//! With cbindgen installed (or `CBINDGEN` naming it), the header is regenerated into a temporary
//! file and compared byte for byte. Without it (CI does not install cbindgen), a structural check
//! still catches drift: every `#[no_mangle]` function and every `SMOLCAP_*` constant in src/ffi
//! must appear in the header, and the header must declare nothing else. Set
//! `SMOLCAP_REQUIRE_CBINDGEN=1` to make a missing cbindgen an error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn header() -> String {
    std::fs::read_to_string(root().join("include/smolcap.h")).expect("include/smolcap.h")
}

fn ffi_sources() -> Vec<(PathBuf, String)> {
    let dir = root().join("src/ffi");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            (p, t)
        })
        .collect();
    v.sort();
    v
}

/// Names of `#[no_mangle]` functions in one source file.
fn exported_fns(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = src.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() != "#[no_mangle]" {
            continue;
        }
        let sig = lines[i + 1..]
            .iter()
            .find(|l| l.contains("fn "))
            .expect("fn after #[no_mangle]");
        let name = sig.split("fn ").nth(1).unwrap().split('(').next().unwrap();
        out.push(name.trim().to_string());
    }
    out
}

/// Names of `pub const SMOLCAP_*` items in one source file.
fn exported_consts(src: &str) -> Vec<String> {
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .map(|r| r.split(':').next().unwrap().trim().to_string())
        .filter(|n| n.starts_with("SMOLCAP_"))
        .collect()
}

#[test]
fn header_declares_exactly_the_ffi_surface() {
    let h = header();
    let mut fns = BTreeSet::new();
    let mut consts = BTreeSet::new();
    for (path, src) in ffi_sources() {
        for f in exported_fns(&src) {
            assert!(
                f.starts_with("smolcap_"),
                "{}: {f} lacks the smolcap_ prefix",
                path.display()
            );
            fns.insert(f);
        }
        consts.extend(exported_consts(&src));
    }
    assert!(
        fns.len() >= 25,
        "found only {} exported functions",
        fns.len()
    );
    for f in &fns {
        assert!(
            h.contains(&format!("{f}(")),
            "include/smolcap.h lacks {f}: regenerate it (command in cbindgen.toml)"
        );
    }
    for c in &consts {
        assert!(
            h.contains(&format!("#define {c} ")),
            "include/smolcap.h lacks {c}: regenerate it (command in cbindgen.toml)"
        );
    }
    // Nothing else: every #define is SMOLCAP_*, every declared function is an export.
    for l in h.lines() {
        if let Some(r) = l.strip_prefix("#define ") {
            let name = r.split_whitespace().next().unwrap();
            assert!(
                name == "SMOLCAP_H" || consts.contains(name),
                "include/smolcap.h defines {name}, which src/ffi does not export (stale header \
                 or a pub const leaking from elsewhere in the crate)"
            );
        }
    }
    for w in h.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        if w.starts_with("smolcap_") && h.contains(&format!("{w}(")) && !w.ends_with("_callback") {
            assert!(
                fns.contains(w),
                "include/smolcap.h declares {w}, not exported by src/ffi"
            );
        }
    }
}

#[test]
fn versions_agree() {
    let h = header();
    let v: Vec<&str> = env!("CARGO_PKG_VERSION").split('.').collect();
    for (name, want) in ["MAJOR", "MINOR", "PATCH"].iter().zip(&v) {
        let line = format!("#define SMOLCAP_VERSION_{name} {want}");
        assert!(
            h.contains(&line),
            "header lacks `{line}` (Cargo.toml version changed?)"
        );
    }
    let abi = h
        .lines()
        .find_map(|l| l.strip_prefix("#define SMOLCAP_ABI_VERSION "))
        .expect("SMOLCAP_ABI_VERSION")
        .trim()
        .to_string();
    // The SONAME's number is read from the same constant (build.rs), not written twice.
    let build = std::fs::read_to_string(root().join("build.rs")).unwrap();
    assert!(
        build.contains("src/ffi/version.rs") && build.contains("SMOLCAP_ABI_VERSION"),
        "build.rs must take the SONAME's ABI number from src/ffi/version.rs"
    );
    let version = std::fs::read_to_string(root().join("src/ffi/version.rs")).unwrap();
    assert!(
        version.contains(&format!("pub const SMOLCAP_ABI_VERSION: u32 = {abi};")),
        "the header's SMOLCAP_ABI_VERSION {abi} differs from src/ffi/version.rs"
    );
    let pc = std::fs::read_to_string(root().join("pkgconfig/smolcap.pc.in")).unwrap();
    assert!(pc.contains("@VERSION@"));
}

fn cbindgen() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CBINDGEN") {
        return Some(PathBuf::from(p));
    }
    let ok = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let candidates = [
        PathBuf::from("cbindgen"),
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cargo/bin/cbindgen"))
            .unwrap_or_default(),
    ];
    candidates.into_iter().find(|p| ok(p))
}

#[test]
fn header_matches_cbindgen() {
    let Some(cb) = cbindgen() else {
        assert!(
            std::env::var("SMOLCAP_REQUIRE_CBINDGEN").is_err(),
            "SMOLCAP_REQUIRE_CBINDGEN is set but cbindgen is not installed"
        );
        eprintln!("cbindgen not installed: only the structural header check ran");
        return;
    };
    let out = std::env::temp_dir().join(format!("smolcap-header-{}.h", std::process::id()));
    let st = Command::new(&cb)
        .current_dir(root())
        .args(["-q", "--config", "cbindgen.toml", "--output"])
        .arg(&out)
        .arg("src/ffi/mod.rs")
        .status()
        .expect("run cbindgen");
    assert!(st.success(), "cbindgen failed");
    let fresh = std::fs::read_to_string(&out).unwrap();
    assert!(
        fresh == header(),
        "include/smolcap.h is stale (fresh output in {}): run `cbindgen --config cbindgen.toml \
         --output include/smolcap.h src/ffi/mod.rs`",
        out.display()
    );
    let _ = std::fs::remove_file(&out);
}
