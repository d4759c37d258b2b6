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

use super::{score, MetricsError, Result, Scores, Suite};

fn read_json(path: &Path) -> Result<Value> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| MetricsError::Io {
        path: p.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| MetricsError::Format {
        path: p,
        msg: format!("invalid JSON: {e}"),
    })
}

fn id_key(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn entries<'a>(items: &'a [Value], path: &Path) -> Result<Vec<(String, &'a Value, &'a str)>> {
    items
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let bad = |msg: &str| MetricsError::Format {
                path: path.display().to_string(),
                msg: format!("entry {i}: {msg}"),
            };
            let id = a
                .get("image_id")
                .ok_or_else(|| bad("missing \"image_id\""))?;
            let key = id_key(id).ok_or_else(|| bad("\"image_id\" must be a number or a string"))?;
            let cap = a
                .get("caption")
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

/// The records of a candidates file: a COCO results JSON array, or JSON Lines of objects (as
/// `smolcap eval` and `smolcap caption --output` write shard outputs).
fn read_cands(path: &Path) -> Result<Vec<Value>> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| MetricsError::Io {
        path: p.clone(),
        source,
    })?;
    if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(&text) {
        return Ok(a);
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| match serde_json::from_str::<Value>(l) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(MetricsError::Format {
                path: p.clone(),
                msg: format!(
                    "expected an array of {{\"image_id\", \"caption\"}} objects or JSON Lines \
                     (line {} is not a JSON object)",
                    i + 1
                ),
            }),
        })
        .collect()
}

/// [`load_files`] with the candidates of several files (e.g. shard outputs) taken together:
/// the images scored are the union, in file order; an image in two files is an error.
pub fn load_files_many(refs: &Path, cands_files: &[&Path]) -> Result<Inputs> {
    let rv = read_json(refs)?;
    let anns = rv
        .get("annotations")
        .and_then(Value::as_array)
        .ok_or_else(|| MetricsError::Format {
            path: refs.display().to_string(),
            msg: "expected an object with an \"annotations\" array".into(),
        })?;
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for (key, _, cap) in entries(anns, refs)? {
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
    score_files_many(refs, &[cands], suite, json)
}

/// [`score_files`] over the union of several candidates files (shard outputs).
pub fn score_files_many(refs: &Path, cands: &[&Path], suite: Suite, json: bool) -> Result<String> {
    let inputs = load_files_many(refs, cands)?;
    let s = score(&inputs.cands, &inputs.refs, suite)?;
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
        // Shard outputs as JSON Lines: the union scores as the single file does.
        let s0 = write(
            &dir,
            "s0.jsonl",
            "{\"image_id\":1,\"caption\":\"a dog on a bench\"}\n",
        );
        let s1 = write(
            &dir,
            "s1.jsonl",
            "{\"image_id\":\"b\",\"caption\":\"a cat\"}\n",
        );
        assert_eq!(
            score_files_many(&refs, &[&s0, &s1], Suite::Seed, true).unwrap(),
            score_files(&refs, &cands, Suite::Seed, true).unwrap()
        );
        assert!(matches!(
            score_files_many(&refs, &[&s0, &s0], Suite::Seed, false),
            Err(MetricsError::Format { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
