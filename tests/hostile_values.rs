//! Bad input, round two (issue 27), by kind: silent wrong answers (kind 5: numbers that wrap
//! or collide, a truncated JPEG captioned, modules_to_save weights missing, merged weights
//! overflowing, nonsensical training options and checkpoints) and messages that do not name
//! the culprit (kind 7).

#[path = "hostile_common/mod.rs"]
mod hc;

use std::path::PathBuf;
use std::sync::Arc;

use hc::{count, expect_err, report, scratch};
use serde_json::{json, Value};
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::train::{LoraOptions, TrainOptions, Trainer};
use smolcap::{LoadOptions, Model};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn model() -> Arc<Model> {
    Arc::new(Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap())
}

#[test]
fn token_ids_out_of_range_name_the_file_and_field() {
    let root = scratch("ids");
    let cases: Vec<(&str, &str, Value, &[&str])> = vec![
        // Wraps to 1 when narrowed to 32 bits.
        (
            "generation_config.json",
            "eos_token_id",
            json!(4_294_967_297u64),
            &["eos_token_id", "4294967297", "vocabulary"],
        ),
        (
            "generation_config.json",
            "eos_token_id",
            json!(-1),
            &["eos_token_id", "-1"],
        ),
        (
            "generation_config.json",
            "eos_token_id",
            json!(1.5),
            &["eos_token_id", "1.5"],
        ),
        (
            "generation_config.json",
            "eos_token_id",
            json!("2"),
            &["eos_token_id", "integer"],
        ),
        (
            "generation_config.json",
            "eos_token_id",
            json!([2, 600]),
            &["eos_token_id[1]", "600"],
        ),
        (
            "generation_config.json",
            "eos_token_id",
            json!([2, 1e300]),
            &["eos_token_id[1]"],
        ),
        (
            "generation_config.json",
            "eos_token_id",
            json!(u64::MAX),
            &["eos_token_id", "18446744073709551615"],
        ),
        (
            "generation_config.json",
            "pad_token_id",
            json!(4_294_967_298u64),
            &["pad_token_id", "4294967298"],
        ),
        (
            "generation_config.json",
            "pad_token_id",
            json!([1, 2]),
            &["pad_token_id", "list"],
        ),
        (
            "generation_config.json",
            "pad_token_id",
            json!(true),
            &["pad_token_id"],
        ),
    ];
    for (i, (file, field, v, needles)) in cases.into_iter().enumerate() {
        let dir = root.join(format!("m{i}"));
        hc::copy_dir(&fixture("tiny-idefics3"), &dir);
        let p = dir.join(file);
        let mut j: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        j[field] = v.clone();
        std::fs::write(&p, j.to_string()).unwrap();
        let case = format!("{file} {field} = {v}");
        let r = Model::load_dir(&dir, &LoadOptions::default()).map(|_| ());
        count("Model::load_dir, token ids");
        let mut n = vec![file];
        n.extend_from_slice(needles);
        expect_err(&case, r, "format", &n);
    }
    // config.json's ids are checked when they are the ones used (no generation_config.json).
    let dir = root.join("cfg");
    hc::copy_dir(&fixture("tiny-idefics3"), &dir);
    std::fs::remove_file(dir.join("generation_config.json")).unwrap();
    let p = dir.join("config.json");
    let mut j: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    j["eos_token_id"] = json!(4_294_967_296u64);
    std::fs::write(&p, j.to_string()).unwrap();
    count("Model::load_dir, token ids");
    expect_err(
        "config.json eos_token_id 2^32",
        Model::load_dir(&dir, &LoadOptions::default()).map(|_| ()),
        "format",
        &["config.json", "eos_token_id", "4294967296"],
    );
    // A null id is "not set", not an error.
    let dir = root.join("null");
    hc::copy_dir(&fixture("tiny-idefics3"), &dir);
    let p = dir.join("generation_config.json");
    let mut j: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    j["pad_token_id"] = Value::Null;
    std::fs::write(&p, j.to_string()).unwrap();
    Model::load_dir(&dir, &LoadOptions::default()).unwrap();
    count("Model::load_dir, token ids");
    let _ = std::fs::remove_dir_all(&root);
    report(&["Model::load_dir, token ids"], 12);
}

#[test]
fn truncated_jpegs_are_refused_like_pillow() {
    let good = std::fs::read(fixture("images/photo_640x480.jpg")).unwrap();
    let lim = DecodeLimits::default();
    SourceImage::decode(&good, &lim).unwrap();
    // Cut anywhere after the headers: Pillow raises "image file is truncated".
    let mut cuts: Vec<usize> = (1..=9).map(|k| good.len() * k / 10).collect();
    cuts.extend([good.len() - 1, good.len() - 2]);
    for cut in cuts {
        let r = SourceImage::decode(&good[..cut], &lim).map(|_| ());
        count("SourceImage::decode, truncated JPEG");
        expect_err(
            &format!("JPEG cut at {cut} of {}", good.len()),
            r,
            "image",
            &["truncated"],
        );
    }
    // Bytes after the end-of-image marker are ignored, as Pillow ignores them.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"trailing garbage \xff\xd8\xff");
    SourceImage::decode(&trailing, &lim).unwrap();
    count("SourceImage::decode, truncated JPEG");
    report(&["SourceImage::decode, truncated JPEG"], 12);
}

#[test]
fn adapters_and_merges_that_would_be_silently_wrong() {
    let m = model();
    let root = scratch("adapters");
    // modules_to_save names a module whose weights the file lacks.
    for (label, entries) in [
        ("connector, file without it", json!(["connector"])),
        ("lm_head, file without it", json!(["lm_head"])),
        ("one of two missing", json!(["connector", "lm_head"])),
    ] {
        let src = if label.starts_with("one") {
            fixture("adapters/connector_save")
        } else {
            fixture("adapters/text_r2_a3_b")
        };
        let dir = root.join(label.replace([' ', ','], "-"));
        hc::copy_dir(&src, &dir);
        let p = dir.join("adapter_config.json");
        let mut j: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        j["modules_to_save"] = entries;
        std::fs::write(&p, j.to_string()).unwrap();
        count("Adapter::load, modules_to_save");
        expect_err(
            &format!("modules_to_save: {label}"),
            m.load_adapter(&dir).map(|_| ()),
            "format",
            &["modules_to_save", "adapter_model.safetensors"],
        );
    }
    // The fixture that has its connector weights still loads.
    m.load_adapter(&fixture("adapters/connector_save")).unwrap();

    // A finite scale that overflows the merged weights: refused, nothing written.
    let a = m.load_adapter(&fixture("adapters/text_r2_a3_b")).unwrap();
    for scale in [1e39, -1e300, f64::MAX] {
        let out = root.join(format!("merged-{scale:e}"));
        let r = smolcap::merge::merge_save(
            &fixture("tiny-idefics3"),
            &[(&a, scale)],
            &out,
            &smolcap::merge::MergeOptions::default(),
            &mut |_, _| {},
        );
        count("merge_save, overflow");
        expect_err(
            &format!("merge scale {scale:e}"),
            r.map(|_| ()),
            "invalid",
            &["non-finite", "weight"],
        );
        assert!(
            !out.exists(),
            "merge with scale {scale:e} left {}",
            out.display()
        );
    }
    let bf16 = smolcap::merge::merge_save(
        &fixture("tiny-idefics3-bf16"),
        &[(&a, 1e35)],
        &root.join("bf16"),
        &smolcap::merge::MergeOptions::default(),
        &mut |_, _| {},
    );
    count("merge_save, overflow");
    // bf16 holds up to ~3.4e38 like f32; a product of 1e35 with the factors overflows in f32 first.
    if let Err(e) = &bf16 {
        assert!(e.to_string().contains("non-finite"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&root);
    report(
        &["Adapter::load, modules_to_save", "merge_save, overflow"],
        7,
    );
}

/// An edit of a checkpoint's trainer_state.json.
type Edit = Box<dyn Fn(&mut Value)>;

#[test]
fn nonsensical_training_options_and_checkpoints() {
    let m = model();
    let lora = LoraOptions {
        r: 2,
        alpha: 4.0,
        ..LoraOptions::default()
    };
    let bad_train: Vec<(&str, TrainOptions)> = vec![
        (
            "warmup_ratio",
            TrainOptions {
                warmup_ratio: -0.1,
                ..Default::default()
            },
        ),
        (
            "warmup_ratio",
            TrainOptions {
                warmup_ratio: 1.5,
                ..Default::default()
            },
        ),
        (
            "warmup_ratio",
            TrainOptions {
                warmup_ratio: f64::NAN,
                ..Default::default()
            },
        ),
        (
            "lr",
            TrainOptions {
                lr: -1e-4,
                ..Default::default()
            },
        ),
        (
            "lr",
            TrainOptions {
                lr: f64::INFINITY,
                ..Default::default()
            },
        ),
        (
            "max_grad_norm",
            TrainOptions {
                max_grad_norm: -1.0,
                ..Default::default()
            },
        ),
        (
            "max_grad_norm",
            TrainOptions {
                max_grad_norm: f64::NAN,
                ..Default::default()
            },
        ),
        (
            "total_steps",
            TrainOptions {
                total_steps: 0,
                ..Default::default()
            },
        ),
        (
            "micro_batch",
            TrainOptions {
                micro_batch: 0,
                ..Default::default()
            },
        ),
        (
            "max_bad_steps",
            TrainOptions {
                max_bad_steps: 0,
                ..Default::default()
            },
        ),
        (
            "betas",
            TrainOptions {
                betas: (1.0, 0.999),
                ..Default::default()
            },
        ),
        (
            "eps",
            TrainOptions {
                eps: -1.0,
                ..Default::default()
            },
        ),
        (
            "weight_decay",
            TrainOptions {
                weight_decay: f64::NAN,
                ..Default::default()
            },
        ),
        (
            "max_caption_bytes",
            TrainOptions {
                max_caption_bytes: 0,
                ..Default::default()
            },
        ),
    ];
    for (field, opts) in bad_train {
        let r = Trainer::new(m.clone(), lora.clone(), opts, None).map(|_| ());
        count("Trainer::new, options");
        expect_err(&format!("train option {field}"), r, "invalid", &[field]);
    }
    let bad_lora: Vec<(&str, LoraOptions)> = vec![
        (
            "r",
            LoraOptions {
                r: 0,
                ..lora.clone()
            },
        ),
        (
            "r",
            LoraOptions {
                r: 1 << 20,
                ..lora.clone()
            },
        ),
        (
            "alpha",
            LoraOptions {
                alpha: f64::NAN,
                ..lora.clone()
            },
        ),
        (
            "alpha",
            LoraOptions {
                alpha: -2.0,
                ..lora.clone()
            },
        ),
        (
            "dropout",
            LoraOptions {
                dropout: 1.0,
                ..lora.clone()
            },
        ),
        (
            "dropout",
            LoraOptions {
                dropout: -0.5,
                ..lora.clone()
            },
        ),
    ];
    for (field, l) in bad_lora {
        let r = Trainer::new(m.clone(), l, TrainOptions::default(), None).map(|_| ());
        count("Trainer::new, options");
        expect_err(&format!("lora option {field}"), r, "invalid", &[field]);
    }

    // Checkpoints whose state is absurd or contradicts itself.
    let root = scratch("ckpt");
    let t = Trainer::new(
        m.clone(),
        lora.clone(),
        TrainOptions {
            total_steps: 10,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let good = root.join("good");
    t.save_checkpoint(&good, &json!({"epoch": 0, "next": 0}))
        .unwrap();
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(good.join("trainer_state.json")).unwrap())
            .unwrap();
    let edits: Vec<(&str, Edit, &[&str])> = vec![
        (
            "absurd step",
            Box::new(|v: &mut Value| v["step"] = json!(u64::MAX)),
            &["step", "total_steps"],
        ),
        (
            "step past total",
            Box::new(|v: &mut Value| v["step"] = json!(11)),
            &["step 11", "total_steps 10"],
        ),
        (
            "optimizer ahead",
            Box::new(|v: &mut Value| v["optimizer_step"] = json!(5)),
            &["optimizer_step 5"],
        ),
        (
            "skipped > step",
            Box::new(|v: &mut Value| v["skipped_total"] = json!(3)),
            &["skipped_total 3"],
        ),
        (
            "negative warmup",
            Box::new(|v: &mut Value| v["options"]["warmup_ratio"] = json!(-1.0)),
            &["warmup_ratio"],
        ),
        (
            "rank 0",
            Box::new(|v: &mut Value| v["lora"]["r"] = json!(0)),
            &["lora r 0"],
        ),
        (
            "format 2",
            Box::new(|v: &mut Value| v["format"] = json!(2)),
            &["format"],
        ),
    ];
    for (label, edit, needles) in edits {
        let dir = root.join(label.replace([' ', '>'], "-"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            good.join("optimizer.safetensors"),
            dir.join("optimizer.safetensors"),
        )
        .unwrap();
        hc::copy_dir(&good.join("adapter"), &dir.join("adapter"));
        let mut v = state.clone();
        edit(&mut v);
        std::fs::write(dir.join("trainer_state.json"), v.to_string()).unwrap();
        let r = Trainer::resume(m.clone(), &dir).map(|_| ());
        count("Trainer::resume, state");
        let mut n = vec!["trainer_state.json"];
        n.extend_from_slice(needles);
        expect_err(&format!("checkpoint: {label}"), r, "format", &n);
    }
    Trainer::resume(m.clone(), &good).unwrap();

    // --resume with LoRA options that contradict the checkpoint.
    use smolcap::data::DatasetSpec;
    use smolcap::train::run::{run, RunOptions};
    let opts = RunOptions {
        train: DatasetSpec::new(
            fixture("datasets/manifest.jsonl").to_string_lossy(),
            "train",
        ),
        eval_split: None,
        output_dir: root.join("out"),
        max_samples: Some(2),
        eval_max_samples: 0,
        epochs: 1.0,
        batch_size: 1,
        grad_accum: 1,
        max_steps: Some(5),
        eval_steps: 0,
        save_steps: 0,
        shuffle: false,
        group_by_image: false,
        resume: Some(good.clone()),
        adapter_init: None,
        progress: false,
    };
    for (label, l) in [
        (
            "r",
            LoraOptions {
                r: 8,
                ..lora.clone()
            },
        ),
        (
            "alpha",
            LoraOptions {
                alpha: 16.0,
                ..lora.clone()
            },
        ),
        (
            "targets",
            LoraOptions {
                targets: vec!["q_proj".into()],
                ..lora.clone()
            },
        ),
        (
            "train_vision",
            LoraOptions {
                train_vision: true,
                ..lora.clone()
            },
        ),
    ] {
        let r = run(m.clone(), &opts, l, TrainOptions::default(), None).map(|_| ());
        count("train::run, resume");
        expect_err(
            &format!("resume contradicting {label}"),
            r,
            "invalid",
            &["contradict", label],
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    report(
        &[
            "Trainer::new, options",
            "Trainer::resume, state",
            "train::run, resume",
        ],
        30,
    );
}

#[test]
fn image_ids_never_collide_through_floats() {
    let root = scratch("ids-metrics");
    let refs = root.join("refs.json");
    let cands = root.join("cands.json");
    // Two different integers beyond 64 bits: both parse to the same f64.
    std::fs::write(
        &refs,
        r#"{"annotations": [{"image_id": 123456789012345678901234, "caption": "a cat"},
                             {"image_id": 123456789012345678901235, "caption": "a dog"}]}"#,
    )
    .unwrap();
    std::fs::write(
        &cands,
        r#"[{"image_id": 123456789012345678901234, "caption": "a cat"}]"#,
    )
    .unwrap();
    let r = smolcap::metrics::cli::load_files(&refs, &cands)
        .map(|_| ())
        .map_err(smolcap::Error::from);
    count("metrics::cli::load_files, ids");
    expect_err(
        "ids beyond 64 bits",
        r,
        "format",
        &["refs.json", "image_id", "string"],
    );
    // Large but exact integers stay distinct; 7.0 and 7 are one image (as in Python).
    std::fs::write(
        &refs,
        r#"{"annotations": [{"image_id": 18446744073709551615, "caption": "a cat"},
                             {"image_id": 18446744073709551614, "caption": "a dog"},
                             {"image_id": 7.0, "caption": "a bird"}]}"#,
    )
    .unwrap();
    std::fs::write(
        &cands,
        r#"[{"image_id": 18446744073709551615, "caption": "a cat"},
            {"image_id": 18446744073709551614, "caption": "a dog"},
            {"image_id": 7, "caption": "a bird"}]"#,
    )
    .unwrap();
    let inp = smolcap::metrics::cli::load_files(&refs, &cands).unwrap();
    count("metrics::cli::load_files, ids");
    assert_eq!(inp.refs[0], vec!["a cat".to_string()]);
    assert_eq!(inp.refs[1], vec!["a dog".to_string()]);
    assert_eq!(inp.refs[2], vec!["a bird".to_string()]);
    let _ = std::fs::remove_dir_all(&root);
    report(&["metrics::cli::load_files, ids"], 2);
}
