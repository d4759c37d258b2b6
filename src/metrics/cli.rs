//! `smolcap score`: scores a COCO results file against COCO caption annotations.
//!
//! REFS: `{"annotations": [{"image_id": ..., "caption": "..."}, ...]}` (other keys ignored).
//! CANDS: `[{"image_id": ..., "caption": "..."}, ...]`. As in pycocoevalcap's COCOEvalCap, the
//! images scored are those of the results file (one caption each; every id must have
//! references); image ids may be numbers or strings. Images keep the results file's order.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::{MetricsError, Result, Scores, Suite};
use crate::data::json::{Bounded, Lean};

/// Largest results / annotations file read (COCO's captions_train2014.json is ~70 MB).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// One `{"image_id", "caption"}` entry; only scalar values are kept (see `Lean`).
#[derive(serde::Deserialize)]
struct Entry {
    image_id: Option<Lean>,
    caption: Option<Lean>,
}

/// A COCO annotations file (other keys are skipped while parsing).
#[derive(serde::Deserialize)]
struct RefsFile {
    annotations: Option<Bounded<Entry>>,
}

/// Parses `path` into `T`: regular files only, at most [`MAX_FILE_BYTES`], arrays of at most
/// `MAX_ENTRIES` entries, ids and captions scalar — so no file expands into gigabytes.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = read_text(path)?;
    crate::data::json::parse_bounded(&text).map_err(|e| MetricsError::Format {
        path: path.display().to_string(),
        msg: format!("expected {what}: {e}"),
    })
}

/// The text of `path`: regular files only, at most [`MAX_FILE_BYTES`] (a FIFO or /dev/zero
/// must not hang or fill memory).
fn read_text(path: &Path) -> Result<String> {
    let p = path.display().to_string();
    crate::fsio::read_text_limited(path, MAX_FILE_BYTES).map_err(|e| match e {
        crate::Error::Io { source, .. } => MetricsError::Io {
            path: p.clone(),
            source,
        },
        crate::Error::Limit(m) => MetricsError::Limit(m),
        other => MetricsError::Format {
            path: p.clone(),
            msg: other.to_string(),
        },
    })
}

/// The entries of a candidates file: a COCO results JSON array, or JSON Lines of objects (as
/// `smolcap eval` and `smolcap caption --output` write shard outputs), parsed with the same
/// bounds as [`read_json`].
fn read_cands(path: &Path) -> Result<Vec<Entry>> {
    const WHAT: &str = "an array of {\"image_id\", \"caption\"} objects or JSON Lines of them";
    let text = read_text(path)?;
    let bad = |msg: String| MetricsError::Format {
        path: path.display().to_string(),
        msg,
    };
    if text.trim_start().starts_with('[') {
        let all: Bounded<Entry> = crate::data::json::parse_bounded(&text)
            .map_err(|e| bad(format!("expected {WHAT}: {e}")))?;
        return Ok(all.0);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() >= crate::data::json::MAX_ENTRIES {
            return Err(MetricsError::Limit(format!(
                "{}: more than {} candidate lines",
                path.display(),
                crate::data::json::MAX_ENTRIES
            )));
        }
        let e: Entry = crate::data::json::parse_bounded(line)
            .map_err(|e| bad(format!("expected {WHAT} (line {}: {e})", i + 1)))?;
        out.push(e);
    }
    Ok(out)
}

/// Largest integer a JSON number read as `f64` holds exactly (2^53).
const F64_EXACT: f64 = 9_007_199_254_740_992.0;

/// The key of an image id: integers exactly (`5.0` and `5` are the same image, as in Python);
/// a number that went through `f64` without being exact (an integer beyond 64 bits, or a
/// float of 2^53 or more) is refused, since two different ids would share one key.
fn id_key(v: &Value) -> std::result::Result<String, &'static str> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i.to_string());
            }
            if let Some(u) = n.as_u64() {
                return Ok(u.to_string());
            }
            let f = n.as_f64().unwrap_or(f64::NAN);
            if !f.is_finite() || f.abs() >= F64_EXACT {
                return Err(
                    "\"image_id\" is a number too large to be exact (beyond 64-bit \
                            integers or 2^53 as a float): write it as a string",
                );
            }
            if f.fract() == 0.0 {
                Ok((f as i64).to_string())
            } else {
                Ok(n.to_string())
            }
        }
        Value::String(s) => Ok(s.clone()),
        _ => Err("\"image_id\" must be a number or a string"),
    }
}

fn entries<'a>(items: &'a [Entry], path: &Path) -> Result<Vec<(String, &'a Value, &'a str)>> {
    items
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let bad = |msg: &str| MetricsError::Format {
                path: path.display().to_string(),
                msg: format!("entry {i}: {msg}"),
            };
            let id: &Value = a
                .image_id
                .as_deref()
                .ok_or_else(|| bad("missing \"image_id\""))?;
            let key = id_key(id).map_err(bad)?;
            let cap = a
                .caption
                .as_deref()
                .and_then(Value::as_str)
                .ok_or_else(|| bad("missing string \"caption\""))?;
            Ok((key, id, cap))
        })
        .collect()
}

/// Loaded inputs: image ids (as in the results file), candidates and references.
pub struct Inputs {
    /// Image ids in results-file order.
    pub image_ids: Vec<Value>,
    /// One candidate caption per image.
    pub cands: Vec<String>,
    /// Reference captions per image.
    pub refs: Vec<Vec<String>>,
}

/// Reads and matches a COCO annotation file and a COCO results file.
pub fn load_files(refs: &Path, cands: &Path) -> Result<Inputs> {
    load_files_many(refs, &[cands])
}

/// [`load_files`] with the candidates of several files (e.g. shard outputs) taken together:
/// the images scored are the union, in file order; an image in two files is an error.
pub fn load_files_many(refs: &Path, cands_files: &[&Path]) -> Result<Inputs> {
    let rv: RefsFile = read_json(refs, "an object with an \"annotations\" array")?;
    let anns = rv.annotations.ok_or_else(|| MetricsError::Format {
        path: refs.display().to_string(),
        msg: "expected an object with an \"annotations\" array".into(),
    })?;
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for (key, _, cap) in entries(&anns, refs)? {
        by_id.entry(key).or_default().push(cap.to_string());
    }
    let mut seen = HashMap::new();
    let mut out = Inputs {
        image_ids: Vec::new(),
        cands: Vec::new(),
        refs: Vec::new(),
    };
    for &cands in cands_files {
        let res = read_cands(cands)?;
        for (key, id, cap) in entries(&res, cands)? {
            if seen.insert(key.clone(), ()).is_some() {
                return Err(MetricsError::Format {
                    path: cands.display().to_string(),
                    msg: format!("image_id {key} has more than one caption"),
                });
            }
            let r = by_id
                .get(&key)
                .ok_or_else(|| MetricsError::NoReferences { image: key.clone() })?;
            out.image_ids.push(id.clone());
            out.cands.push(cap.to_string());
            out.refs.push(r.clone());
        }
    }
    if out.cands.is_empty() {
        return Err(MetricsError::Empty);
    }
    Ok(out)
}

/// All corpus and per-image scores as the JSON object `smolcap score --json` prints
/// (`suite`, `images`, `corpus`, `per_image: [{image_id, <metric>: value}]`).
pub fn scores_json(image_ids: &[Value], s: &Scores) -> Value {
    let per: Vec<Value> = (0..s.len())
        .map(|i| {
            let mut m = serde_json::Map::new();
            m.insert(
                "image_id".into(),
                image_ids.get(i).cloned().unwrap_or(Value::Null),
            );
            for (k, v) in &s.per_image {
                m.insert(k.clone(), Value::from(v[i]));
            }
            Value::Object(m)
        })
        .collect();
    serde_json::json!({
        "suite": s.suite.name(),
        "images": s.len(),
        "corpus": s.corpus,
        "per_image": per,
    })
}

/// The seed-style scorecard text: CIDEr as is, the others ×100.
pub fn scorecard(s: &Scores) -> String {
    let mut out = format!("{} suite, {} images\n", s.suite.name(), s.len());
    for name in [
        "CIDEr", "BLEU-4", "METEOR", "ROUGE-L", "BLEU-1", "BLEU-2", "BLEU-3",
    ] {
        if let Some(v) = s.get(name) {
            let shown = if name == "CIDEr" {
                format!("{v:.3}")
            } else {
                format!("{:.2}", v * 100.0)
            };
            let _ = writeln!(out, "{name:<8} {shown:>7}");
        }
    }
    if s.suite == Suite::Coco {
        out.push_str("(METEOR here is NLTK's on PTB tokens, not the Meteor 1.5 jar's)\n");
    }
    out
}

/// The scorecard text ([`scorecard`]) or, with `json`, all corpus and per-image scores as JSON
/// ([`scores_json`]).
pub fn render(inputs: &Inputs, s: &Scores, json: bool) -> String {
    if json {
        return format!("{}\n", scores_json(&inputs.image_ids, s));
    }
    scorecard(s)
}

/// `smolcap score --refs REFS --cands CANDS [--suite] [--json]`: the text it prints.
pub fn score_files(refs: &Path, cands: &Path, suite: Suite, json: bool) -> Result<String> {
    score_files_limited(refs, cands, suite, json, super::DEFAULT_MAX_CAPTION_BYTES)
}

/// [`score_files`] with a caption byte limit (`--max-caption-bytes`).
pub fn score_files_limited(
    refs: &Path,
    cands: &Path,
    suite: Suite,
    json: bool,
    max_caption_bytes: usize,
) -> Result<String> {
    score_files_many(refs, &[cands], suite, json, max_caption_bytes)
}

/// [`score_files_limited`] over the union of several candidates files (shard outputs).
pub fn score_files_many(
    refs: &Path,
    cands: &[&Path],
    suite: Suite,
    json: bool,
    max_caption_bytes: usize,
) -> Result<String> {
    let inputs = load_files_many(refs, cands)?;
    let s = super::score_limited(&inputs.cands, &inputs.refs, suite, max_caption_bytes)?;
    Ok(render(&inputs, &s, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn scorecard_and_json() {
        let dir = std::env::temp_dir().join(format!("smolcap-metrics-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let refs = write(
            &dir,
            "refs.json",
            r#"{"annotations":[{"image_id":1,"caption":"a dog on a bench"},{"image_id":1,"caption":"a dog sitting"},{"image_id":"b","caption":"two cats sleeping"}]}"#,
        );
        let cands = write(
            &dir,
            "cands.json",
            r#"[{"image_id":1,"caption":"a dog on a bench"},{"image_id":"b","caption":"a cat"}]"#,
        );
        let text = score_files(&refs, &cands, Suite::Seed, false).unwrap();
        assert!(
            text.contains("CIDEr") && text.contains("BLEU-4") && text.contains("2 images"),
            "{text}"
        );
        let j: Value =
            serde_json::from_str(&score_files(&refs, &cands, Suite::Coco, true).unwrap()).unwrap();
        assert_eq!(j["per_image"][1]["image_id"], "b");
        assert_eq!(j["images"], 2);
        let bad = write(&dir, "bad.json", r#"[{"image_id":7,"caption":"x"}]"#);
        assert!(matches!(
            score_files(&refs, &bad, Suite::Seed, false),
            Err(MetricsError::NoReferences { .. })
        ));
        let dup = write(
            &dir,
            "dup.json",
            r#"[{"image_id":1,"caption":"x"},{"image_id":1,"caption":"y"}]"#,
        );
        assert!(matches!(
            score_files(&refs, &dup, Suite::Seed, false),
            Err(MetricsError::Format { .. })
        ));
        assert!(matches!(
            score_files(&dir.join("none.json"), &cands, Suite::Seed, false),
            Err(MetricsError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
