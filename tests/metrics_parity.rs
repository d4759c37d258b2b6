//! Parity of `smolcap::metrics` with the Python packages (fixtures written by
//! `tools/reference/metrics_ref.py`): corpus and per-image scores within 1e-9 (BLEU, ROUGE-L,
//! CIDEr) and 1e-6 (METEOR); PTB tokens identical to the Stanford jar's.

use std::path::PathBuf;

use serde_json::Value;
use smolcap::metrics::{ptb, score, Suite};

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/metrics")
        .join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn input(set: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let v = fixture(&format!("{set}_input.json"));
    let cands = strings(&v["cands"]);
    let refs = v["refs"]
        .as_array()
        .expect("refs")
        .iter()
        .map(strings)
        .collect();
    (cands, refs)
}

fn tolerance(metric: &str) -> f64 {
    if metric == "METEOR" {
        1e-6
    } else {
        1e-9
    }
}

/// Returns the worst absolute error per metric (corpus, per image) and asserts the tolerances.
fn check(set: &str, suite: Suite) {
    let (cands, refs) = input(set);
    let want = fixture(&format!("{set}_{}.json", suite.name()));
    let got = score(&cands, &refs, suite).expect("score");
    let mut report = Vec::new();
    for (metric, w) in want["corpus"].as_object().expect("corpus") {
        let w = w.as_f64().expect("f64");
        let g = got
            .get(metric)
            .unwrap_or_else(|| panic!("missing {metric}"));
        let per_w = want["per_image"][metric].as_array().expect("per_image");
        let per_g = &got.per_image[metric];
        assert_eq!(per_w.len(), per_g.len(), "{set}/{metric}: image count");
        let mut worst = (0.0f64, 0usize);
        for (i, (a, b)) in per_w.iter().zip(per_g).enumerate() {
            let d = (a.as_f64().expect("f64") - b).abs();
            if d > worst.0 {
                worst = (d, i);
            }
        }
        let tol = tolerance(metric);
        report.push(format!(
            "{set}/{}/{metric}: corpus |d| {:.3e}, per-image max |d| {:.3e}",
            suite.name(),
            (w - g).abs(),
            worst.0
        ));
        assert!(
            (w - g).abs() <= tol && worst.0 <= tol,
            "{set}/{}/{metric}: corpus {g} vs {w}; image {} {} vs {} (cand {:?}, refs {:?})",
            suite.name(),
            worst.1,
            per_g[worst.1],
            per_w[worst.1],
            cands[worst.1],
            refs[worst.1]
        );
    }
    for line in report {
        println!("{line}");
    }
}

#[test]
fn seed_generated() {
    check("generated", Suite::Seed);
}

#[test]
fn seed_realistic() {
    check("realistic", Suite::Seed);
}

#[test]
fn coco_generated() {
    check("generated", Suite::Coco);
}

#[test]
fn coco_realistic() {
    check("realistic", Suite::Coco);
}

// Wider corpora (issue 25, tools/reference/metrics_ref.py): random-token captions (small
// vocabulary, very uneven lengths, repeats), mixed-script captions (accented Latin, CJK, emoji,
// odd punctuation and quotes, unusual spaces) and multi-sentence captions with non-ASCII
// sentence starters and ends.

#[test]
fn seed_random_tokens() {
    check("random", Suite::Seed);
}

#[test]
fn coco_random_tokens() {
    check("random", Suite::Coco);
}

#[test]
fn seed_unicode() {
    check("unicode", Suite::Seed);
}

#[test]
fn seed_sentences() {
    check("sentences", Suite::Seed);
}

/// Mixed-script captions through the coco suite: the native PTB tokenizer follows the jar's own
/// character classes (tools/reference/ptb_chars.py) but not its e-mail/URL-like rules, which
/// swallow U+3000-separated runs around `@` and a few `$`/`:`-led tokens. The residue is stated
/// and bounded here so that any regression fails.
#[test]
fn coco_unicode_known_gap() {
    known_gap("unicode", 27);
}

/// Multi-sentence captions through the coco suite: the jar looks past the end of a caption
/// (pycocoevalcap tokenizes all captions as one file): a lower-case letter + period at the end
/// of a caption ("over a.") loses its period when the *next* caption starts with a capital,
/// which a per-caption tokenizer cannot know; and emoticons after letters (`a:]`).
#[test]
fn coco_sentences_known_gap() {
    known_gap("sentences", 6);
}

/// At most `max_differ` captions tokenized differently from the jar, corpus scores within 5e-4.
fn known_gap(set: &str, max_differ: usize) {
    let (cands, refs) = input(set);
    let want = fixture(&format!("{set}_coco.json"));
    let wc = strings(&want["ptb"]["cands"]);
    let mut total = 0;
    let mut differ = 0;
    for (c, w) in cands.iter().zip(&wc) {
        total += 1;
        differ += usize::from(&ptb::coco_tokenize(c) != w);
    }
    for (rs, ws) in refs
        .iter()
        .zip(want["ptb"]["refs"].as_array().expect("refs"))
    {
        for (r, w) in rs.iter().zip(strings(ws)) {
            total += 1;
            differ += usize::from(ptb::coco_tokenize(r) != w);
        }
    }
    println!("{set}: {differ} of {total} captions tokenized differently from the jar");
    assert!(
        differ <= max_differ,
        "{set}: {differ} of {total} PTB mismatches"
    );
    let got = score(&cands, &refs, Suite::Coco).expect("score");
    for (metric, w) in want["corpus"].as_object().expect("corpus") {
        let d = (w.as_f64().expect("f64") - got.get(metric).expect("metric")).abs();
        println!("{set}/coco/{metric}: corpus |d| {d:.3e}");
        assert!(d <= 5e-4, "{set}/coco/{metric}: corpus |d| {d}");
    }
}

#[test]
fn ptb_tokens_equal_the_jar() {
    for set in ["generated", "realistic", "random"] {
        let (cands, refs) = input(set);
        let want = &fixture(&format!("{set}_coco.json"))["ptb"];
        let wc = strings(&want["cands"]);
        let mut bad = Vec::new();
        for (c, w) in cands.iter().zip(&wc) {
            if &ptb::coco_tokenize(c) != w {
                bad.push(format!("{c:?}: got {:?} want {w:?}", ptb::coco_tokenize(c)));
            }
        }
        for (rs, ws) in refs.iter().zip(want["refs"].as_array().expect("refs")) {
            for (r, w) in rs.iter().zip(strings(ws)) {
                if ptb::coco_tokenize(r) != w {
                    bad.push(format!("{r:?}: got {:?} want {w:?}", ptb::coco_tokenize(r)));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{set}: {} PTB mismatches, e.g.\n{}",
            bad.len(),
            bad[..bad.len().min(80)].join("\n")
        );
    }
}
