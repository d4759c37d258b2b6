//! `smolcap train` end to end on the tiny fixture and the committed datasets: adapter files,
//! TensorBoard + JSONL logs, checkpoints, an exact resume, and the adapter captioning.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn smolcap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smolcap"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-train-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn train(out: &Path, extra: &[&str]) -> String {
    let model = root().join("tests/fixtures/tiny-idefics3");
    let data = root().join("tests/fixtures/datasets/coco_captions");
    let o = smolcap()
        .args(["train", "--base_model_id"])
        .arg(&model)
        .arg("--dataset_id")
        .arg(&data)
        .args(["--eval_split", "test", "--output_dir"])
        .arg(out)
        .args([
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--batch_size",
            "2",
            "--grad_accum",
            "2",
            "--lr",
            "1e-2",
            "--warmup_ratio",
            "0.25",
            "--max_steps",
            "4",
            "--save_steps",
            "2",
            "--eval_steps",
            "2",
            "--seed",
            "5",
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "train failed: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn scalars(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("logs/scalars.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn train_writes_adapter_logs_checkpoints_and_resumes_exactly() {
    let a = scratch("a");
    let stdout = train(&a, &[]);
    assert!(stdout.contains("trained 4 steps"), "{stdout}");
    assert!(stdout.contains("trainable parameters"), "{stdout}");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    for c in ["checkpoint-2", "checkpoint-4"] {
        for f in [
            "trainer_state.json",
            "optimizer.safetensors",
            "adapter/adapter_model.safetensors",
        ] {
            assert!(a.join(c).join(f).is_file(), "{c}/{f} missing");
        }
    }
    let tf: Vec<_> = std::fs::read_dir(a.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(tf.len(), 1, "{tf:?}");
    let s = scalars(&a);
    let loss: Vec<f64> = s
        .iter()
        .filter(|r| r["tag"] == "train/loss")
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert_eq!(loss.len(), 4);
    assert!(loss.iter().all(|l| l.is_finite() && *l > 0.0));
    let evals = s.iter().filter(|r| r["tag"] == "eval/loss").count();
    assert_eq!(evals, 2, "eval at steps 2 and 4");
    for tag in ["train/learning_rate", "train/grad_norm"] {
        assert_eq!(s.iter().filter(|r| r["tag"] == tag).count(), 4, "{tag}");
    }

    // Resuming from checkpoint-2 gives the uninterrupted run's losses and adapter bytes.
    let b = scratch("b");
    let ck = a.join("checkpoint-2");
    train(&b, &["--resume", ck.to_str().unwrap()]);
    let lb: Vec<f64> = scalars(&b)
        .iter()
        .filter(|r| r["tag"] == "train/loss")
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert_eq!(lb, loss[2..].to_vec(), "resumed losses");
    assert_eq!(
        std::fs::read(a.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(b.join("adapter_model.safetensors")).unwrap(),
        "resumed adapter differs"
    );

    // The adapter captions.
    let o = smolcap()
        .args(["caption", "--model"])
        .arg(root().join("tests/fixtures/tiny-idefics3"))
        .arg("--image")
        .arg(root().join("tests/fixtures/images/photo_640x480.png"))
        .args(["--max-new-tokens", "4", "--adapter"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn train_reads_a_jsonl_manifest_with_qlora_and_vision_lora() {
    let out = scratch("jsonl");
    let model = root().join("tests/fixtures/tiny-idefics3");
    let o = smolcap()
        .args(["train", "--base_model_id"])
        .arg(&model)
        .arg("--dataset_id")
        .arg(root().join("tests/fixtures/datasets/manifest.jsonl"))
        .args(["--eval_split", "none", "--output_dir"])
        .arg(&out)
        .args([
            "--max_steps",
            "2",
            "--batch_size",
            "2",
            "--grad_accum",
            "1",
            "--use_qlora",
            "--train_vision",
            "--tune_projector",
            "--gradient_checkpointing",
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["connector"]));
    assert!(cfg["target_modules"]
        .as_str()
        .unwrap()
        .contains("vision_model"));
    let t = candle_core::safetensors::load(
        out.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(t
        .keys()
        .any(|k| k.contains("vision_model") && k.contains("lora_A")));
    assert!(t
        .keys()
        .any(|k| k.contains("connector.modality_projection.proj.weight")));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn train_errors_name_the_problem() {
    let out = scratch("err");
    let o = smolcap()
        .args(["train", "--base_model_id"])
        .arg(root().join("tests/fixtures/tiny-idefics3"))
        .args(["--dataset_id", "/nonexistent/data.parquet", "--output_dir"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/data.parquet"), "{err}");
    let o = smolcap()
        .args(["train", "--base_model_id"])
        .arg(root().join("tests/fixtures/tiny-idefics3"))
        .arg("--dataset_id")
        .arg(root().join("tests/fixtures/datasets/manifest.jsonl"))
        .args(["--lora_targets", "not_a_module", "--output_dir"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("matches no module"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn train_groups_rows_by_image() {
    let out = scratch("grouped");
    let stdout = train(&out, &["--group_by_image"]);
    assert!(stdout.contains("trained 4 steps"), "{stdout}");
    let n = scalars(&out)
        .iter()
        .filter(|r| r["tag"] == "train/loss" && r["value"].as_f64().unwrap().is_finite())
        .count();
    assert_eq!(n, 4);
    let _ = std::fs::remove_dir_all(&out);
}
