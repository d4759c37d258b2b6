//! `--shard I/N`, `--resume` and combining shard outputs (`smolcap eval --merge-shards`,
//! `smolcap score` over several files): the union of the shards equals the unsharded run byte
//! for byte, and a run resumed after a kill equals one that was never interrupted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixture, ok, smolcap};
use serde_json::Value;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-shard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const IMAGES: [&str; 5] = [
    "photo_640x480.png",
    "pano_400x60.png",
    "gray_120x90.png",
    "rgba_100x80.png",
    "portrait_90x200.png",
];

fn caption_cmd(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = smolcap();
    cmd.args(["caption", "--model"])
        .arg(fixture("tiny-idefics3"));
    for i in IMAGES {
        cmd.arg("--image").arg(fixture(&format!("images/{i}")));
    }
    cmd.args(["--max-new-tokens", "10", "--batch-size", "2", "--output"])
        .arg(out)
        .args(extra);
    cmd
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn caption_shards_concatenate_to_the_unsharded_output_and_resume_after_a_kill() {
    let d = temp("caption");
    let full = d.join("full.jsonl");
    ok(caption_cmd(&full, &[]).output().unwrap());
    let full_bytes = read(&full);
    let lines: Vec<Value> = String::from_utf8(full_bytes.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert!(l["image"].as_str().unwrap().ends_with(IMAGES[i]));
        assert!(!l["token_ids"].as_array().unwrap().is_empty());
    }

    // Three shards (2, 1 and 2 images), each batched on its own.
    let mut union = Vec::new();
    for i in 0..3 {
        let p = d.join(format!("shard{i}.jsonl"));
        ok(caption_cmd(&p, &["--shard", &format!("{i}/3")])
            .output()
            .unwrap());
        union.extend(read(&p));
    }
    assert_eq!(
        union, full_bytes,
        "the union of the shards differs from the full run"
    );

    // A run killed while writing its second batch: one whole line and a torn one survive.
    let resumed = d.join("resumed.jsonl");
    let first_end = full_bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    std::fs::write(&resumed, &full_bytes[..first_end + 17]).unwrap();
    let out = ok(caption_cmd(&resumed, &["--resume"]).output().unwrap());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 already there"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&resumed), full_bytes);
    // Resuming a finished run captions nothing and changes nothing.
    ok(caption_cmd(&resumed, &["--resume"]).output().unwrap());
    assert_eq!(read(&resumed), full_bytes);

    // Resuming with other inputs is refused rather than mixing two runs.
    let mut other = smolcap();
    other
        .args(["caption", "--model"])
        .arg(fixture("tiny-idefics3"))
        .arg("--image")
        .arg(fixture("images/square_32x32.png"))
        .arg("--output")
        .arg(&resumed)
        .arg("--resume");
    let out = other.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not one of this run's inputs"));
    for bad in ["3/3", "1/0", "a/b"] {
        let out = caption_cmd(&d.join("x.jsonl"), &["--shard", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--shard {bad} accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("expected I/N"));
    }
    std::fs::remove_dir_all(&d).ok();
}

fn eval_cmd(out_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = smolcap();
    cmd.args(["eval", "--base-model-id"])
        .arg(fixture("tiny-idefics3"))
        .arg("--dataset-id")
        .arg(fixture("datasets/coco_captions"))
        .args([
            "--split",
            "test",
            "--max-new-tokens",
            "10",
            "--batch-size",
            "2",
            "--thumbnail-size",
            "0",
            "--output-dir",
        ])
        .arg(out_dir)
        .args(extra);
    cmd
}

fn json(p: &Path) -> Value {
    serde_json::from_slice(&read(p)).unwrap()
}

#[test]
fn eval_shards_merge_to_the_unsharded_scores() {
    let d = temp("eval");
    let full = d.join("full");
    ok(eval_cmd(&full, &[]).output().unwrap());
    let full_jsonl = read(&full.join("predictions.jsonl"));

    let mut union = Vec::new();
    let mut shard_dirs = Vec::new();
    for i in 0..2 {
        let dir = d.join(format!("shard{i}"));
        let out = ok(eval_cmd(&dir, &["--shard", &format!("{i}/2")])
            .output()
            .unwrap());
        assert!(String::from_utf8_lossy(&out.stdout).contains("--merge-shards"));
        // A shard writes its predictions only: corpus scores need the union.
        assert!(!dir.join("metrics.json").exists());
        union.extend(read(&dir.join("predictions.jsonl")));
        shard_dirs.push(dir);
    }
    assert_eq!(union, full_jsonl);

    let merged = d.join("merged");
    let mut cmd = eval_cmd(&merged, &[]);
    cmd.arg("--merge-shards").args(&shard_dirs);
    let out = ok(cmd.output().unwrap());
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 images"));
    for f in ["predictions.jsonl", "predictions.json", "references.json"] {
        assert_eq!(read(&merged.join(f)), read(&full.join(f)), "{f} differs");
    }
    let (m, f) = (
        json(&merged.join("metrics.json")),
        json(&full.join("metrics.json")),
    );
    assert_eq!(m["corpus"], f["corpus"]);
    assert_eq!(m["per_image"], f["per_image"]);

    // `smolcap score` over the shard files scores the union as well.
    let score = |cands: &[PathBuf]| -> Value {
        let mut cmd = smolcap();
        cmd.args(["score", "--json", "--refs"])
            .arg(full.join("references.json"))
            .arg("--cands")
            .args(cands);
        serde_json::from_slice(&ok(cmd.output().unwrap()).stdout).unwrap()
    };
    let shards: Vec<PathBuf> = shard_dirs
        .iter()
        .map(|d| d.join("predictions.jsonl"))
        .collect();
    let whole = score(&[full.join("predictions.json")]);
    assert_eq!(score(&shards)["corpus"], whole["corpus"]);
    assert_eq!(whole["corpus"], f["corpus"]);

    // Resume: a run killed after its first batch finishes to the same predictions and scores.
    let resumed = d.join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    let first_two: Vec<&[u8]> = full_jsonl
        .split_inclusive(|&b| b == b'\n')
        .take(2)
        .collect();
    std::fs::write(resumed.join("predictions.jsonl"), first_two.concat()).unwrap();
    ok(eval_cmd(&resumed, &["--resume"]).output().unwrap());
    assert_eq!(read(&resumed.join("predictions.jsonl")), full_jsonl);
    assert_eq!(
        read(&resumed.join("predictions.json")),
        read(&full.join("predictions.json"))
    );
    assert_eq!(json(&resumed.join("metrics.json"))["corpus"], f["corpus"]);

    // The same image in two shards is refused.
    let mut cmd = eval_cmd(&d.join("dup"), &[]);
    cmd.arg("--merge-shards")
        .arg(&shard_dirs[0])
        .arg(&shard_dirs[0]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than one shard"));
    std::fs::remove_dir_all(&d).ok();
}
