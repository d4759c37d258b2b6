//! `smolcap eval` end to end on the tiny model and the tiny `jxie/coco_captions`-schema parquet
//! fixture: predictions equal `smolcap caption` (same images, same batching), metrics equal
//! `smolcap score` on the written files, the report lists every image; adapters; offline hub.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, ok, smolcap};
use serde_json::Value;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// The good test-split images of the fixture, in first-seen order.
const IMAGES: [(i64, &str); 4] = [
    (101, "gray_120x90.png"),
    (102, "square_32x32.png"),
    (103, "portrait_90x200.png"),
    (104, "rgba_100x80.png"),
];

/// `smolcap caption --json` texts (trimmed) for `images`.
fn captions(images: &[&str], batch: usize, extra: &[&str]) -> Vec<String> {
    let mut cmd = smolcap();
    cmd.args(["caption", "--model"])
        .arg(fixture("tiny-idefics3"));
    for i in images {
        cmd.arg("--image").arg(fixture(&format!("images/{i}")));
    }
    cmd.args(["--max-new-tokens", "12", "--json", "--batch-size"])
        .arg(batch.to_string())
        .args(extra);
    let v: Value = serde_json::from_slice(&ok(cmd.output().unwrap()).stdout).unwrap();
    v["captions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().trim().to_string())
        .collect()
}

fn predictions(dir: &Path) -> (Vec<i64>, Vec<String>) {
    let p = read_json(&dir.join("predictions.json"));
    let arr = p.as_array().unwrap();
    (
        arr.iter()
            .map(|x| x["image_id"].as_i64().unwrap())
            .collect(),
        arr.iter()
            .map(|x| x["caption"].as_str().unwrap().to_string())
            .collect(),
    )
}

#[test]
fn eval_equals_caption_and_score_and_reports_every_image() {
    let out_dir = temp("main");
    let out = ok(smolcap()
        .args(["eval", "--base_model_id"])
        .arg(fixture("tiny-idefics3"))
        .arg("--dataset_id")
        .arg(fixture("datasets/coco_captions"))
        .args([
            "--split",
            "test",
            "--max_new_tokens",
            "12",
            "--batch_size",
            "2",
            "--output_dir",
        ])
        .arg(&out_dir)
        .output()
        .unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for m in ["CIDEr", "BLEU-4", "METEOR", "ROUGE-L", "4 images"] {
        assert!(stdout.contains(m), "{stdout}");
    }
    assert!(stdout.contains("report.html"), "{stdout}");
    // The null caption (row 7) and the corrupt image (cocoid 105) are reported, not fatal.
    assert!(
        stderr.contains("1 bad rows") && stderr.contains("row 7"),
        "{stderr}"
    );
    assert!(stderr.contains("skipped image 105"), "{stderr}");

    // Predictions: the good images in first-seen order, equal to `smolcap caption` with the same
    // batching (the corrupt image is skipped, so 103 and 104 share the second batch).
    let (ids, preds) = predictions(&out_dir);
    assert_eq!(ids, IMAGES.map(|(i, _)| i));
    let names: Vec<&str> = IMAGES.iter().map(|(_, n)| *n).collect();
    assert_eq!(preds, captions(&names, 2, &[]));

    // References in COCO annotation format: every caption of each image (null ones dropped).
    let refs = read_json(&out_dir.join("references.json"));
    let anns = refs["annotations"].as_array().unwrap();
    let count = |id: i64| anns.iter().filter(|a| a["image_id"] == id).count();
    assert_eq!(
        [count(101), count(102), count(103), count(104)],
        [3, 3, 3, 3]
    );
    assert_eq!(refs["images"].as_array().unwrap().len(), 4);
    assert_eq!(refs["images"][0]["file_name"], "gray_120x90.png");

    // metrics.json holds exactly what `smolcap score --json` computes from the written files.
    let metrics = read_json(&out_dir.join("metrics.json"));
    let score = ok(smolcap()
        .args(["score", "--json", "--refs"])
        .arg(out_dir.join("references.json"))
        .arg("--cands")
        .arg(out_dir.join("predictions.json"))
        .output()
        .unwrap());
    let scored: Value = serde_json::from_slice(&score.stdout).unwrap();
    for k in ["suite", "images", "corpus", "per_image"] {
        assert_eq!(metrics[k], scored[k], "{k}");
    }
    // One reference of 104 shares words with the tiny model's caption: the comparison above is
    // not between two all-zero score sets.
    assert!(
        metrics["corpus"]["CIDEr"].as_f64().unwrap() > 0.0,
        "{metrics}"
    );
    assert!(
        metrics["corpus"]["ROUGE-L"].as_f64().unwrap() > 0.0,
        "{metrics}"
    );
    let run = &metrics["run"];
    assert_eq!(run["images"], 4);
    assert_eq!(run["images_selected"], 5);
    assert_eq!(run["dataset_bad_rows"], 1);
    assert_eq!(run["max_new_tokens"], 12);
    assert_eq!(run["batch_size"], 2);
    assert_eq!(run["strategy"], "greedy");
    assert!(run["images_skipped"][0]["location"]
        .as_str()
        .unwrap()
        .contains("105"));
    assert!(run["timings"]["caption_s"].as_f64().unwrap() > 0.0);

    // The report: one row and one thumbnail per image, user text escaped.
    let html = std::fs::read_to_string(out_dir.join("report.html")).unwrap();
    for (k, (id, name)) in IMAGES.iter().enumerate() {
        assert!(html.contains(&format!("<tr id=\"r{k}\">")), "row {k}");
        assert!(html.contains(&format!("data-v=\"{id}\"")), "{id}");
        assert!(html.contains(&format!("alt=\"{name}\"")), "{name}");
    }
    assert!(!html.contains("<tr id=\"r4\">"));
    assert_eq!(html.matches("data:image/jpeg;base64,").count(), 4);
    assert!(html
        .contains("a &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &amp; &#39;single&#39; caption"));
    assert!(!html.contains("<b>bold</b>"));
    assert!(html.trim_end().ends_with("</html>"));
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn eval_with_an_adapter_equals_caption_with_it() {
    let out_dir = temp("adapter");
    let adapter = format!("{}:0.5", fixture("adapters/text_r4_a8").display());
    ok(smolcap()
        .args(["eval", "--model"])
        .arg(fixture("tiny-idefics3"))
        .arg("--dataset-id")
        .arg(fixture(
            "datasets/coco_captions/data/test-00000-of-00001.parquet",
        ))
        .args(["--adapter_dir", &adapter])
        .args([
            "--max-images",
            "2",
            "--batch-size",
            "1",
            "--max-new-tokens",
            "12",
            "--thumbnail-size",
            "0",
            "--suite",
            "coco",
            "--output-dir",
        ])
        .arg(&out_dir)
        .output()
        .unwrap());
    let (ids, preds) = predictions(&out_dir);
    assert_eq!(ids, [101, 102]);
    let names = [IMAGES[0].1, IMAGES[1].1];
    assert_eq!(preds, captions(&names, 1, &["--adapter", &adapter]));
    assert_ne!(
        preds,
        captions(&names, 1, &[]),
        "the adapter changes a caption"
    );
    let metrics = read_json(&out_dir.join("metrics.json"));
    assert_eq!(metrics["suite"], "coco");
    assert_eq!(metrics["run"]["adapters"][0]["scale"], 0.5);
    let html = std::fs::read_to_string(out_dir.join("report.html")).unwrap();
    assert!(!html.contains("data:image/jpeg"), "no thumbnails asked for");
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn eval_reads_a_hub_dataset_from_the_offline_cache() {
    let cache = temp("hub-cache");
    let repo = cache.join("datasets--smolcap-test--tiny_coco");
    let snap = repo.join("snapshots/0123abcd/data");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    std::fs::copy(
        fixture("datasets/coco_captions/data/test-00000-of-00001.parquet"),
        snap.join("test-00000-of-00001.parquet"),
    )
    .unwrap();
    let out_dir = temp("hub-out");
    ok(smolcap()
        .args(["eval", "--model"])
        .arg(fixture("tiny-idefics3"))
        .args([
            "--dataset_id",
            "smolcap-test/tiny_coco",
            "--max_images",
            "1",
        ])
        .args(["--max_new_tokens", "4", "--output_dir"])
        .arg(&out_dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap());
    assert_eq!(predictions(&out_dir).0, [101]);
    // A split the cache does not hold is a clear error naming the repo and the cached splits.
    let out = smolcap()
        .args(["eval", "--model"])
        .arg(fixture("tiny-idefics3"))
        .args(["--dataset_id", "smolcap-test/tiny_coco", "--split", "train"])
        .arg("--output_dir")
        .arg(&out_dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("smolcap-test/tiny_coco") && err.contains("test"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&cache);
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn eval_errors_are_clear() {
    let out_dir = temp("errors");
    let out = smolcap()
        .args(["eval", "--model"])
        .arg(fixture("tiny-idefics3"))
        .args(["--dataset_id", "./no/such/dataset", "--output_dir"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/dataset"));
    let out = smolcap()
        .args(["eval", "--suite", "nope", "--dataset_id"])
        .arg(fixture("datasets/manifest.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    assert!(!out_dir.exists(), "nothing written on failure");
}
