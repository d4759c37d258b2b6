//! Freezes the C ABI's struct layouts: `tests/c/abi_layout.inc` records `sizeof` and every
//! field's `offsetof` of each struct in `include/smolcap.h`, as a C compiler lays them out.
//! This test compiles a program that prints the layouts and compares them with the record;
//! `tests/c/test_abi_layout.c` (run by tests/run_native.sh) checks the record against the
//! compiler directly, and the Rust structs' sizes are checked here too.
//!
//! `SMOLCAP_BLESS=1` rewrites the record, but only for compatible changes: a new struct, or new
//! fields at the end of a struct that starts with `struct_size` (older callers pass a smaller
//! size and get defaults). Moving, removing or retyping a recorded field, or growing a struct
//! without `struct_size`, is refused unless `SMOLCAP_ABI_BREAK=1` says the break is meant (and
//! the ABI version is bumped; docs/C_API.md, "Compatibility").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(struct, fields in order)` of every `typedef struct smolcap_* { ... } smolcap_*;`.
fn header_structs() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(root().join("include/smolcap.h")).unwrap();
    let mut out = Vec::new();
    let mut cur: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("typedef struct ") {
            if let Some(name) = rest.strip_suffix(" {") {
                cur = Some((name.to_string(), Vec::new()));
                continue;
            }
        }
        let Some((name, fields)) = cur.as_mut() else {
            continue;
        };
        if t.starts_with('}') {
            assert_eq!(t, format!("}} {name};"), "unexpected struct end");
            out.push(cur.take().unwrap());
            continue;
        }
        if t.is_empty() || t.starts_with("/*") || t.starts_with('*') {
            continue;
        }
        let decl = t
            .strip_suffix(';')
            .unwrap_or_else(|| panic!("field line {t:?}"));
        let field = decl.rsplit([' ', '*']).next().unwrap().to_string();
        assert!(
            field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "field {field:?} in {t:?}"
        );
        fields.push(field);
    }
    assert!(out.len() >= 10, "found only {} structs", out.len());
    out
}

/// The layout lines a C compiler gives the header's structs, in the record's format.
fn compiled_layout(structs: &[(String, Vec<String>)]) -> String {
    let dir = std::env::temp_dir().join(format!("smolcap-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <smolcap.h>\nint main(void) {\n",
    );
    for (s, fields) in structs {
        c += &format!("    printf(\"ABI_STRUCT({s}, %lu)\\n\", (unsigned long)sizeof({s}));\n");
        for f in fields {
            c += &format!(
                "    printf(\"ABI_FIELD({s}, {f}, %lu)\\n\", (unsigned long)offsetof({s}, {f}));\n"
            );
        }
    }
    c += "    return 0;\n}\n";
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, c).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Werror", "-I"])
        .arg(root().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("{cc}: {e}"));
    assert!(st.success(), "compiling the layout printer failed");
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stdout).unwrap()
}

/// struct → (size, [(field, offset)]) from layout lines.
type Layout = BTreeMap<String, (u64, Vec<(String, u64)>)>;

fn parse(lines: &str) -> Layout {
    let mut m: Layout = BTreeMap::new();
    for l in lines.lines().map(str::trim) {
        let args = |p: &str| -> Option<Vec<String>> {
            let inner = l.strip_prefix(p)?.strip_suffix(')')?;
            Some(inner.split(',').map(|s| s.trim().to_string()).collect())
        };
        if let Some(a) = args("ABI_STRUCT(") {
            m.insert(a[0].clone(), (a[1].parse().unwrap(), Vec::new()));
        } else if let Some(a) = args("ABI_FIELD(") {
            m.get_mut(&a[0])
                .unwrap()
                .1
                .push((a[1].clone(), a[2].parse().unwrap()));
        }
    }
    m
}

/// Why `new` is not a compatible successor of `old`, if it is not.
fn incompatible(old: &Layout, new: &Layout, versioned: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut why = Vec::new();
    for (s, (osize, ofields)) in old {
        let Some((nsize, nfields)) = new.get(s) else {
            why.push(format!("{s} was removed"));
            continue;
        };
        if nfields.len() < ofields.len() || nfields[..ofields.len()] != ofields[..] {
            why.push(format!("{s}: a recorded field moved, changed or went away"));
        }
        if nsize != osize && !versioned(s) {
            why.push(format!(
                "{s} changed size ({osize} -> {nsize}) and has no struct_size"
            ));
        }
    }
    why
}

const RECORD: &str = "tests/c/abi_layout.inc";

#[test]
fn struct_layouts_match_the_record() {
    let structs = header_structs();
    let now_text = compiled_layout(&structs);
    let now = parse(&now_text);
    let path = root().join(RECORD);
    let recorded_text = std::fs::read_to_string(&path).unwrap_or_default();
    let recorded = parse(&recorded_text);
    let versioned = |s: &str| {
        structs
            .iter()
            .any(|(n, f)| n == s && f.first().map(String::as_str) == Some("struct_size"))
    };
    let breaks = incompatible(&recorded, &now, &versioned);
    if std::env::var_os("SMOLCAP_BLESS").is_some() {
        assert!(
            breaks.is_empty() || std::env::var_os("SMOLCAP_ABI_BREAK").is_some(),
            "ABI break; set SMOLCAP_ABI_BREAK=1 (and bump the ABI version) if it is meant:\n{}",
            breaks.join("\n")
        );
        let text = format!(
            "/* The C ABI's struct layouts (sizeof, offsetof of each field) on x86-64 and aarch64\n \
             * Linux (LP64). Written by `SMOLCAP_BLESS=1 cargo test --test abi_layout`, which only\n \
             * accepts compatible changes (see tests/abi_layout.rs); checked by that test and by\n \
             * tests/c/test_abi_layout.c. */\n{now_text}"
        );
        std::fs::write(&path, text).unwrap();
        return;
    }
    assert!(
        breaks.is_empty(),
        "ABI break against {RECORD}:\n{}",
        breaks.join("\n")
    );
    assert_eq!(
        recorded, now,
        "{RECORD} is stale; run `SMOLCAP_BLESS=1 cargo test --test abi_layout`"
    );
}

#[test]
fn rust_structs_have_the_recorded_sizes() {
    use smolcap::ffi::{adapter, model, session, train};
    let recorded = parse(&std::fs::read_to_string(root().join(RECORD)).unwrap());
    let rust: [(&str, usize); 14] = [
        (
            "smolcap_adapter_info",
            size_of::<adapter::smolcap_adapter_info>(),
        ),
        (
            "smolcap_merge_params",
            size_of::<adapter::smolcap_merge_params>(),
        ),
        (
            "smolcap_adapter_spec",
            size_of::<adapter::smolcap_adapter_spec>(),
        ),
        (
            "smolcap_merge_report",
            size_of::<adapter::smolcap_merge_report>(),
        ),
        (
            "smolcap_load_params",
            size_of::<model::smolcap_load_params>(),
        ),
        ("smolcap_model_info", size_of::<model::smolcap_model_info>()),
        (
            "smolcap_generate_params",
            size_of::<session::smolcap_generate_params>(),
        ),
        ("smolcap_image", size_of::<session::smolcap_image>()),
        (
            "smolcap_caption_stats",
            size_of::<session::smolcap_caption_stats>(),
        ),
        ("smolcap_nll", size_of::<session::smolcap_nll>()),
        (
            "smolcap_train_params",
            size_of::<train::smolcap_train_params>(),
        ),
        (
            "smolcap_train_example",
            size_of::<train::smolcap_train_example>(),
        ),
        ("smolcap_step_stats", size_of::<train::smolcap_step_stats>()),
        (
            "smolcap_trainer_info",
            size_of::<train::smolcap_trainer_info>(),
        ),
    ];
    assert_eq!(
        rust.len(),
        recorded.len(),
        "a struct is missing from this list"
    );
    for (name, size) in rust {
        assert_eq!(
            Some(size as u64),
            recorded.get(name).map(|r| r.0),
            "{name}: Rust size vs the record"
        );
    }
}

#[test]
fn the_compatibility_rule_refuses_breaks() {
    let old = parse("ABI_STRUCT(a, 16)\nABI_FIELD(a, struct_size, 0)\nABI_FIELD(a, x, 8)\nABI_STRUCT(b, 8)\nABI_FIELD(b, y, 0)\n");
    let versioned = |s: &str| s == "a";
    // Appending to a versioned struct and adding a struct: fine.
    let ok = parse("ABI_STRUCT(a, 24)\nABI_FIELD(a, struct_size, 0)\nABI_FIELD(a, x, 8)\nABI_FIELD(a, z, 16)\nABI_STRUCT(b, 8)\nABI_FIELD(b, y, 0)\nABI_STRUCT(c, 4)\n");
    assert!(incompatible(&old, &ok, &versioned).is_empty());
    // A moved field, a grown unversioned struct, a removed struct: each refused.
    let moved = parse("ABI_STRUCT(a, 16)\nABI_FIELD(a, struct_size, 0)\nABI_FIELD(a, x, 4)\nABI_STRUCT(b, 8)\nABI_FIELD(b, y, 0)\n");
    assert_eq!(incompatible(&old, &moved, &versioned).len(), 1);
    let grown = parse("ABI_STRUCT(a, 16)\nABI_FIELD(a, struct_size, 0)\nABI_FIELD(a, x, 8)\nABI_STRUCT(b, 16)\nABI_FIELD(b, y, 0)\nABI_FIELD(b, w, 8)\n");
    assert_eq!(incompatible(&old, &grown, &versioned).len(), 1);
    let gone = parse("ABI_STRUCT(a, 16)\nABI_FIELD(a, struct_size, 0)\nABI_FIELD(a, x, 8)\n");
    assert_eq!(incompatible(&old, &gone, &versioned).len(), 1);
}
