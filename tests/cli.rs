//! The `smolcap` binary on the tiny fixture: caption JSON, seed flag aliases, inspect, errors.

mod common;

use common::{cases, fixture, ids, smolcap};

fn greedy_reference(case: &str) -> Vec<u32> {
    let c = cases("tiny-idefics3");
    let eos = c["eos_token_id"].as_u64().unwrap() as u32;
    let case = c["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == case)
        .unwrap();
    let mut v = ids(&case["greedy"]["sequences_raw"]);
    if let Some(i) = v.iter().position(|&t| t == eos) {
        v.truncate(i + 1);
    }
    v
}

#[test]
fn caption_json_matches_reference_tokens() {
    let out = smolcap()
        .args(["caption", "--model"])
        .arg(fixture("tiny-idefics3"))
        .arg("--image")
        .arg(fixture("images/photo_640x480.png"))
        .arg("--image")
        .arg(fixture("images/pano_400x60.png"))
        .args(["--max_new_tokens", "12", "--batch-size", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let caps = v["captions"].as_array().unwrap();
    assert_eq!(caps.len(), 2);
    assert_eq!(
        ids(&caps[0]["token_ids"]),
        greedy_reference("photo_640x480")
    );
    assert_eq!(ids(&caps[1]["token_ids"]), greedy_reference("pano_400x60"));
    assert!(caps[0]["image"]
        .as_str()
        .unwrap()
        .ends_with("photo_640x480.png"));
}

#[test]
fn seed_spellings_and_longest_edge_override() {
    let out = smolcap()
        .args(["caption", "--base_model_id"])
        .arg(fixture("tiny-idefics3"))
        .arg("--image")
        .arg(fixture("images/photo_640x480.png"))
        .args([
            "--image_longest_edge",
            "32",
            "--max_new_tokens",
            "12",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        ids(&v["captions"][0]["token_ids"]),
        greedy_reference("photo_longest32")
    );
}

#[test]
fn inspect_reports_processor_and_logits() {
    let out = smolcap()
        .args(["inspect", "--json", "--model"])
        .arg(fixture("tiny-idefics3"))
        .arg("--image")
        .arg(fixture("images/portrait_90x200.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = cases("tiny-idefics3");
    let case = c["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "portrait_90x200")
        .unwrap();
    assert_eq!(v["input_ids"], case["input_ids"]);
    assert_eq!(v["num_tiles"], case["num_tiles"]);
    let t = common::tensors("tiny-idefics3", "portrait_90x200");
    let want_sum: f64 = t["pixel_values"].1.iter().map(|&x| x as f64).sum();
    assert!((v["pixel_values"]["sum"].as_f64().unwrap() - want_sum).abs() < 1e-3);
    let logits = &t["logits_last"].1;
    let top = v["logits_last"]["ids"][0].as_u64().unwrap() as usize;
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(top, best);
}

#[test]
fn bad_inputs_fail_with_a_message() {
    let out = smolcap()
        .args(["caption", "--model"])
        .arg(fixture("tiny-idefics3"))
        .args(["--image", "/nonexistent/cat.jpg"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cat.jpg"));
    let out = smolcap()
        .args(["caption", "--model", "/nonexistent/model-dir", "--image"])
        .arg(fixture("images/photo_640x480.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model-dir"));
    let out = smolcap()
        .args(["caption", "--model"])
        .arg(fixture("tiny-idefics3"))
        .arg("--image")
        .arg(fixture("images/photo_640x480.png"))
        .args(["--max-image-pixels", "1000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limit") || err.contains("pixels"), "{err}");
}

#[test]
fn offline_hub_id_without_cache_is_a_clear_error() {
    let tmp = std::env::temp_dir().join(format!("smolcap-cli-hub-{}", std::process::id()));
    let out = smolcap()
        .args([
            "caption",
            "--model",
            "HuggingFaceTB/SmolVLM-256M-Instruct",
            "--image",
        ])
        .arg(fixture("images/photo_640x480.png"))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &tmp)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HuggingFaceTB/SmolVLM-256M-Instruct")
            && err.contains(&tmp.display().to_string()),
        "{err}"
    );
}

#[test]
fn score_prints_the_seed_scorecard_and_json() {
    let dir = std::env::temp_dir().join(format!("smolcap-cli-score-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let refs = dir.join("refs.json");
    let cands = dir.join("cands.json");
    std::fs::write(
        &refs,
        r#"{"annotations":[{"image_id":1,"caption":"a dog runs on the grass"},{"image_id":1,"caption":"a brown dog running"},{"image_id":2,"caption":"two people ride bikes"}]}"#,
    )
    .unwrap();
    std::fs::write(
        &cands,
        r#"[{"image_id":1,"caption":"a dog running on grass"},{"image_id":2,"caption":"people riding bikes"}]"#,
    )
    .unwrap();
    let out = smolcap()
        .args(["score", "--refs"])
        .arg(&refs)
        .arg("--cands")
        .arg(&cands)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for m in ["CIDEr", "BLEU-4", "METEOR", "ROUGE-L"] {
        assert!(text.contains(m), "{text}");
    }
    let out = smolcap()
        .args(["score", "--suite", "coco", "--json", "--refs"])
        .arg(&refs)
        .arg("--cands")
        .arg(&cands)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.to_string().contains("CIDEr"));
    let out = smolcap()
        .args(["score", "--suite", "nope", "--refs"])
        .arg(&refs)
        .arg("--cands")
        .arg(&cands)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
