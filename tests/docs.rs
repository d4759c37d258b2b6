//! The documentation stays true: docs/CLI.md holds the `--help` text of every command as the
//! binary prints it, and every relative link in README.md and docs/ resolves (file and anchor).
//!
//! After changing a flag, regenerate docs/CLI.md with
//! `SMOLCAP_BLESS=1 cargo test --test docs` (it rewrites only the generated part).

use std::path::{Path, PathBuf};
use std::process::Command;

const BEGIN: &str = "<!-- BEGIN GENERATED: SMOLCAP_BLESS=1 cargo test --test docs -->";
const END: &str = "<!-- END GENERATED -->";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn help(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_smolcap"))
        .args(args)
        .arg("--help")
        .env_remove("COLUMNS")
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?} --help failed");
    String::from_utf8(o.stdout).unwrap()
}

/// The subcommands listed under "Commands:" in the top-level help (clap's own `help` left out).
fn subcommands(top: &str) -> Vec<String> {
    top.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The generated part of docs/CLI.md: each command's help in a text block.
fn generated() -> String {
    let top = help(&[]);
    let cmds = subcommands(&top);
    assert!(cmds.len() >= 7, "too few subcommands found in:\n{top}");
    let mut s = format!("{BEGIN}\n\n## `smolcap`\n\n```text\n{}```\n", top);
    for c in &cmds {
        s.push_str(&format!(
            "\n## `smolcap {c}`\n\n```text\n{}```\n",
            help(&[c.as_str()])
        ));
    }
    s.push_str(&format!("\n{END}\n"));
    s
}

#[test]
fn cli_md_matches_the_help_of_every_command() {
    let path = root().join("docs/CLI.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/CLI.md lacks the generated-section markers");
    };
    let current = &doc[b..e + END.len() + 1];
    let fresh = generated();
    if current == fresh {
        return;
    }
    if std::env::var_os("SMOLCAP_BLESS").is_some() {
        let new = format!("{}{fresh}{}", &doc[..b], &doc[e + END.len() + 1..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    let diff = current
        .lines()
        .zip(fresh.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| {
            format!("first difference in generated line {i}:\n  doc: {a}\n  now: {b}")
        })
        .unwrap_or_else(|| "the generated part differs in length".into());
    panic!("docs/CLI.md is stale; run `SMOLCAP_BLESS=1 cargo test --test docs`\n{diff}");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Markdown text outside fenced code blocks.
fn prose(md: &str) -> Vec<&str> {
    let mut fenced = false;
    md.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

fn anchors(md: &str) -> Vec<String> {
    prose(md)
        .into_iter()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// The targets of inline links `[text](target)` in `md`'s prose.
fn links(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(md) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(j) = rest.find(')') {
                out.push(
                    rest[..j]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string(),
                );
                rest = &rest[j..];
            }
        }
    }
    out
}

fn check_links(doc: &Path, bad: &mut Vec<String>) -> usize {
    let md = std::fs::read_to_string(doc).unwrap();
    let dir = doc.parent().unwrap();
    let mut n = 0;
    for l in links(&md) {
        if l.is_empty() || l.contains("://") || l.starts_with("mailto:") {
            continue;
        }
        n += 1;
        let (file, anchor) = match l.split_once('#') {
            Some((f, a)) => (f, Some(a)),
            None => (l.as_str(), None),
        };
        let target = if file.is_empty() {
            doc.to_path_buf()
        } else {
            dir.join(file)
        };
        if !target.exists() {
            bad.push(format!("{}: {l}: no such file", doc.display()));
            continue;
        }
        if let Some(a) = anchor {
            if target.extension().is_some_and(|e| e == "md") {
                let text = std::fs::read_to_string(&target).unwrap();
                if !anchors(&text).iter().any(|h| h == a) {
                    bad.push(format!(
                        "{}: {l}: no heading with that anchor",
                        doc.display()
                    ));
                }
            }
        }
    }
    n
}

#[test]
fn relative_links_in_readme_and_docs_resolve() {
    let mut docs = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            docs.push(p);
        }
    }
    let mut bad = Vec::new();
    let checked: usize = docs.iter().map(|d| check_links(d, &mut bad)).sum();
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
    assert!(
        checked >= 10,
        "only {checked} relative links found: is the parser broken?"
    );
}

#[test]
fn readme_is_a_front_door_not_a_diary() {
    let len = std::fs::metadata(root().join("README.md")).unwrap().len();
    assert!(
        len <= 15 * 1024,
        "README.md is {len} bytes; keep it under 15 KiB (details go to docs/)"
    );
}

#[test]
fn link_parser_and_slugs() {
    let md = "# A `smolcap` title: one\n[x](a.md#b) and [y](#c)\n```\n[z](no.md)\n```\n";
    assert_eq!(links(md), ["a.md#b", "#c"]);
    assert_eq!(anchors(md), ["a-smolcap-title-one"]);
    assert_eq!(
        slug(" Proof: parity with transformers"),
        "proof-parity-with-transformers"
    );
}
