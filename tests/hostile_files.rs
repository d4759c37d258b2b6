//! Bad input, round two (issue 27), by kind: input paths that name something other than a
//! regular file (kind 1), output sets that could mix two runs (kind 6), and output paths that
//! are regular files (kind 7, the message). Each case runs under a watchdog: these used to
//! hang (a FIFO) or read without end (`/dev/zero`).

#[path = "hostile_common/mod.rs"]
mod hc;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hc::{count, expect_err, make_non_regular, report, scratch, within, NON_REGULAR};
use smolcap::data::{Dataset, DatasetSpec, Select};
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::{LoadOptions, Model};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The message of a non-regular input names the path and says what it is.
fn non_regular_needle(which: &str) -> &'static str {
    match which {
        "fifo" => "FIFO",
        "directory" => "directory",
        _ => "character device",
    }
}

#[test]
fn model_files_that_are_not_regular_files() {
    let base = fixture("tiny-idefics3");
    let files = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "generation_config.json",
        "chat_template.jinja",
        "chat_template.json",
        "model.safetensors",
    ];
    let root = scratch("model-files");
    for f in files {
        for which in NON_REGULAR {
            let case = format!("model dir with {f} = {which}");
            let dir = root.join(format!("{}-{}", f, which.replace('/', "_")));
            hc::copy_dir(&base, &dir);
            make_non_regular(&dir.join(f), which);
            let d = dir.clone();
            let r = within(&case, 20.0, move || {
                Model::load_dir(&d, &LoadOptions::default()).map(|_| ())
            });
            count("Model::load_dir, non-regular file");
            expect_err(&case, r, "io", &[f, non_regular_needle(which)]);
        }
    }
    // A sharded model whose index or a shard is not a regular file.
    let sharded = fixture("tiny-idefics3-sharded");
    for f in [
        "model.safetensors.index.json",
        "model-00002-of-00003.safetensors",
    ] {
        for which in NON_REGULAR {
            let case = format!("sharded model with {f} = {which}");
            let dir = root.join(format!("sh-{}-{}", f, which.replace('/', "_")));
            hc::copy_dir(&sharded, &dir);
            make_non_regular(&dir.join(f), which);
            let d = dir.clone();
            let r = within(&case, 20.0, move || {
                Model::load_dir(&d, &LoadOptions::default()).map(|_| ())
            });
            count("Model::load_dir, non-regular file");
            expect_err(&case, r, "io", &[f, non_regular_needle(which)]);
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    report(&["Model::load_dir, non-regular file"], 44);
}

#[test]
fn images_datasets_metrics_adapters_checkpoints_that_are_not_regular_files() {
    let root = scratch("inputs");
    let model =
        Arc::new(Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap());
    for which in NON_REGULAR {
        let tag = which.replace('/', "_");
        let needle = non_regular_needle(which);

        // An image file.
        let p = root.join(format!("img-{tag}.png"));
        make_non_regular(&p, which);
        let case = format!("SourceImage::open({which})");
        let pp = p.clone();
        let r = within(&case, 10.0, move || {
            SourceImage::open(&pp, &DecodeLimits::default()).map(|_| ())
        });
        count("SourceImage::open, non-regular file");
        expect_err(&case, r, "io", &[needle]);

        // A dataset file of each kind, and a dataset directory's index file.
        for name in ["data.jsonl", "data.json", "data.parquet"] {
            let p = root.join(format!("{tag}-{name}"));
            make_non_regular(&p, which);
            let case = format!("Dataset::open({name} = {which})");
            let spec = DatasetSpec::new(p.to_string_lossy(), "train");
            let r = within(&case, 10.0, move || Dataset::open(&spec).map(|_| ()));
            count("Dataset::open, non-regular file");
            if which == "directory" {
                // A directory is a dataset directory: empty, so nothing to open.
                assert!(r.is_err(), "{case}");
            } else {
                expect_err(&case, r, "io", &[needle]);
            }
        }
        for name in ["dataset_coco.json", "train.jsonl"] {
            let dir = root.join(format!("dsdir-{tag}-{name}"));
            std::fs::create_dir_all(&dir).unwrap();
            make_non_regular(&dir.join(name), which);
            let case = format!("Dataset::open(dir with {name} = {which})");
            let spec = DatasetSpec::new(dir.to_string_lossy(), "train");
            let r = within(&case, 10.0, move || Dataset::open(&spec).map(|_| ()));
            count("Dataset::open, non-regular file");
            expect_err(&case, r, "io", &[name, needle]);
        }

        // A manifest row whose image is not a regular file: a bad image, read without hanging.
        let img = root.join(format!("row-{tag}.png"));
        make_non_regular(&img, which);
        let manifest = root.join(format!("rows-{tag}.jsonl"));
        std::fs::write(
            &manifest,
            format!(
                "{{\"image\": \"{}\", \"caption\": \"a cat\"}}\n",
                img.file_name().unwrap().to_string_lossy()
            ),
        )
        .unwrap();
        let case = format!("Dataset::images(row image = {which})");
        let spec = DatasetSpec::new(manifest.to_string_lossy(), "train");
        let errs = within(&case, 10.0, move || {
            let ds = Dataset::open(&spec).unwrap();
            let rows = ds.rows(&Select::default());
            ds.images(&rows, DecodeLimits::default(), 4)
                .map(|item| item.map(|(_, r)| r.err().map(|e| e.to_string())))
                .collect::<Vec<_>>()
        });
        count("Dataset::images, non-regular file");
        assert_eq!(errs.len(), 1, "{case}");
        let msg = errs[0].as_ref().ok().cloned().flatten().unwrap_or_default();
        assert!(msg.contains(needle), "{case}: {msg}");

        // Metrics files.
        let good_refs = root.join("refs.json");
        std::fs::write(
            &good_refs,
            r#"{"annotations": [{"image_id": 1, "caption": "a cat"}]}"#,
        )
        .unwrap();
        let bad = root.join(format!("metrics-{tag}.json"));
        make_non_regular(&bad, which);
        for (label, refs, cands) in [
            ("refs", bad.clone(), good_refs.clone()),
            ("cands", good_refs.clone(), bad.clone()),
        ] {
            let case = format!("metrics::cli::load_files({label} = {which})");
            let r = within(&case, 10.0, move || {
                smolcap::metrics::cli::load_files(&refs, &cands)
                    .map(|_| ())
                    .map_err(smolcap::Error::from)
            });
            count("metrics::cli::load_files, non-regular file");
            expect_err(&case, r, "io", &[needle]);
        }

        // Adapter files.
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            let dir = root.join(format!("adapter-{tag}-{f}"));
            hc::copy_dir(&fixture("adapters/text_r2_a3_b"), &dir);
            make_non_regular(&dir.join(f), which);
            let case = format!("Adapter::load({f} = {which})");
            let m = model.clone();
            let r = within(&case, 10.0, move || m.load_adapter(&dir).map(|_| ()));
            count("Adapter::load, non-regular file");
            expect_err(&case, r, "io", &[f, needle]);
        }

        // A checkpoint's state file.
        let ck = root.join(format!("ck-{tag}"));
        std::fs::create_dir_all(&ck).unwrap();
        make_non_regular(&ck.join("trainer_state.json"), which);
        let case = format!("checkpoint trainer_state.json = {which}");
        let r = within(&case, 10.0, move || {
            smolcap::train::checkpoint_options(&ck).map(|_| ())
        });
        count("Trainer::resume, non-regular file");
        expect_err(&case, r, "io", &["trainer_state.json", needle]);
    }
    let _ = std::fs::remove_dir_all(&root);
    report(
        &[
            "SourceImage::open, non-regular file",
            "Dataset::open, non-regular file",
            "Dataset::images, non-regular file",
            "metrics::cli::load_files, non-regular file",
            "Adapter::load, non-regular file",
            "Trainer::resume, non-regular file",
        ],
        48,
    );
}

/// Reads `dir/name` through its symlink and says which set directory it points into.
fn link_target(dir: &Path, name: &str) -> PathBuf {
    std::fs::read_link(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn output_sets_are_published_as_one_unit() {
    let root = scratch("sets");
    let out = root.join("out");
    let files = |tag: &str| -> Vec<(&'static str, String)> {
        vec![
            ("predictions.json", format!("p-{tag}")),
            ("metrics.json", format!("m-{tag}")),
            ("report.html", format!("r-{tag}")),
        ]
    };
    let publish = |tag: &str, fail_after: Option<usize>| {
        let fs = files(tag);
        smolcap::fsio::publish_set(&out, "eval_outputs", move |tmp| {
            for (i, (n, body)) in fs.iter().enumerate() {
                if fail_after == Some(i) {
                    return Err(smolcap::Error::io(
                        tmp.join(n),
                        std::io::Error::other("No space left on device"),
                    ));
                }
                std::fs::write(tmp.join(n), body).unwrap();
            }
            Ok(())
        })
    };
    // An older layout: regular files at the top.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("predictions.json"), "legacy").unwrap();
    publish("one", None).unwrap();
    count("fsio::publish_set");
    for (n, body) in files("one") {
        assert_eq!(std::fs::read_to_string(out.join(n)).unwrap(), body, "{n}");
        assert_eq!(link_target(&out, n), Path::new("eval_outputs").join(n));
    }
    // A failure part-way (a full disk) leaves the previous set whole, and nothing else.
    for k in 0..3 {
        let e = publish("two", Some(k)).unwrap_err();
        count("fsio::publish_set");
        assert!(e.to_string().contains("No space"), "{e}");
        for (n, body) in files("one") {
            assert_eq!(
                std::fs::read_to_string(out.join(n)).unwrap(),
                body,
                "after failure {k}"
            );
        }
        let names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with('.')),
            "temporary left behind: {names:?}"
        );
    }
    // A save killed mid-way left a temporary directory (dead process id): the next one removes it.
    let stale = out.join(".eval_outputs.tmp-999999999-0");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("predictions.json"), "half").unwrap();
    publish("three", None).unwrap();
    count("fsio::publish_set");
    assert!(!stale.exists(), "stale temporary directory kept");
    for (n, body) in files("three") {
        assert_eq!(std::fs::read_to_string(out.join(n)).unwrap(), body);
    }
    // A set with fewer files drops the dangling links of the old one.
    smolcap::fsio::publish_set(&out, "eval_outputs", |tmp| {
        std::fs::write(tmp.join("metrics.json"), "m-four").unwrap();
        Ok(())
    })
    .unwrap();
    count("fsio::publish_set");
    assert!(std::fs::symlink_metadata(out.join("report.html")).is_err());
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.json")).unwrap(),
        "m-four"
    );

    // remove_stale_all: leftovers of any name from dead processes, never live ones.
    let dir = root.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    for n in [
        ".checkpoint-5.tmp-999999999-3",
        ".final_adapter.old-999999999-0",
    ] {
        std::fs::create_dir_all(dir.join(n)).unwrap();
    }
    std::fs::write(dir.join(".metrics.json.tmp-999999999"), "x").unwrap();
    let live = format!(".checkpoint-6.tmp-{}-0", std::process::id());
    std::fs::create_dir_all(dir.join(&live)).unwrap();
    smolcap::fsio::remove_stale_all(&dir);
    count("fsio::remove_stale_all");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![live], "only the live process's temporary stays");
    let _ = std::fs::remove_dir_all(&root);
    report(&["fsio::publish_set", "fsio::remove_stale_all"], 7);
}

#[test]
fn training_run_publishes_its_adapter_as_one_unit() {
    use smolcap::train::run::{run, RunOptions};
    use smolcap::train::{LoraOptions, TrainOptions};
    let root = scratch("run");
    let out = root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // What killed saves of an earlier run left: the old staging directory and a temporary
    // checkpoint of a dead process.
    std::fs::create_dir_all(out.join(".adapter.tmp")).unwrap();
    std::fs::create_dir_all(out.join(".checkpoint-9.tmp-999999999-0")).unwrap();
    let model =
        Arc::new(Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap());
    let opts = RunOptions {
        train: DatasetSpec::new(
            fixture("datasets/manifest.jsonl").to_string_lossy(),
            "train",
        ),
        eval_split: None,
        output_dir: out.clone(),
        max_samples: Some(2),
        eval_max_samples: 0,
        epochs: 1.0,
        batch_size: 1,
        grad_accum: 1,
        max_steps: Some(1),
        eval_steps: 0,
        save_steps: 0,
        shuffle: false,
        group_by_image: false,
        resume: None,
        adapter_init: None,
        progress: false,
    };
    let lora = LoraOptions {
        r: 2,
        alpha: 4.0,
        ..LoraOptions::default()
    };
    run(
        model.clone(),
        &opts,
        lora.clone(),
        TrainOptions::default(),
        None,
    )
    .unwrap();
    count("train::run output");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert_eq!(
            link_target(&out, f),
            Path::new(smolcap::train::run::FINAL_ADAPTER_DIR).join(f)
        );
    }
    assert!(!out.join(".adapter.tmp").exists());
    assert!(!out.join(".checkpoint-9.tmp-999999999-0").exists());
    // The published adapter loads through the links.
    model.load_adapter(&out).unwrap();

    // An output path that is a regular file is named as such, before any work.
    let file = root.join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let r = run(
        model.clone(),
        &RunOptions {
            output_dir: file.clone(),
            ..opts.clone()
        },
        lora,
        TrainOptions::default(),
        None,
    );
    count("train::run output");
    expect_err(
        "train output dir is a file",
        r,
        "invalid",
        &["not-a-dir", "regular file"],
    );

    // merge_save and eval outputs into a regular file.
    let adapter = model
        .load_adapter(&fixture("adapters/text_r2_a3_b"))
        .unwrap();
    let r = smolcap::merge::merge_save(
        &fixture("tiny-idefics3"),
        &[(&adapter, 1.0)],
        &file,
        &smolcap::merge::MergeOptions::default(),
        &mut |_, _| {},
    );
    count("merge_save output");
    expect_err(
        "merge output dir is a file",
        r.map(|_| ()),
        "invalid",
        &["not-a-dir", "regular file"],
    );
    let r = smolcap::fsio::publish_set(&file.join("sub"), "eval_outputs", |_| Ok(()));
    count("fsio::publish_set");
    expect_err(
        "eval output under a file",
        r,
        "io",
        &["not-a-dir", "regular file"],
    );
    let _ = std::fs::remove_dir_all(&root);
    report(&["train::run output", "merge_save output"], 3);
}
