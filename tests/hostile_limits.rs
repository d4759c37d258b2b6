//! Bad input, round two (issue 27), by kind: loops that never gave up (kind 2), limits checked
//! after the work they should prevent (kind 3: huge prompts and captions through every entry
//! point), and super-linear work on crafted input (kind 4: a shard index with many entries,
//! chat templates that never end, ROUGE-L on very long captions). Every case must be rejected
//! quickly: each runs under a watchdog.

#[path = "hostile_common/mod.rs"]
mod hc;

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};
use std::sync::Arc;
use std::time::Instant;

use hc::{count, expect_err, report, scratch, within};
use smolcap::data::{Dataset, DatasetSpec};
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::{CaptionOptions, LoadOptions, Model};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn model() -> Arc<Model> {
    Arc::new(Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap())
}

fn photo() -> SourceImage {
    SourceImage::open(fixture("images/tiny_20x15.png"), &DecodeLimits::default()).unwrap()
}

/// 20 MB of text (many short words: the worst case for a tokenizer).
fn huge_text(bytes: usize) -> String {
    "a b ".repeat(bytes / 4)
}

#[test]
fn training_on_rows_without_a_usable_image_stops() {
    use smolcap::train::run::{run, RunOptions};
    use smolcap::train::{LoraOptions, TrainOptions};
    let root = scratch("noimage");
    std::fs::write(root.join("junk.png"), b"not an image at all").unwrap();
    std::fs::write(root.join("half.jpg"), {
        let j = std::fs::read(fixture("images/photo_640x480.jpg")).unwrap();
        j[..j.len() / 2].to_vec()
    })
    .unwrap();
    let mut manifest = String::new();
    for i in 0..40 {
        let img = ["junk.png", "missing.png", "half.jpg", "/dev/null"][i % 4];
        manifest.push_str(&format!(
            "{{\"image\": \"{img}\", \"caption\": \"row {i}\"}}\n"
        ));
    }
    std::fs::write(root.join("train.jsonl"), manifest).unwrap();
    let m = model();
    for (label, max_steps, epochs) in [("max_steps", Some(1000), 1.0), ("epochs", None, 1e6)] {
        let opts = RunOptions {
            train: DatasetSpec::new(root.join("train.jsonl").to_string_lossy(), "train"),
            eval_split: None,
            output_dir: root.join(format!("out-{label}")),
            max_samples: None,
            eval_max_samples: 0,
            epochs,
            batch_size: 2,
            grad_accum: 2,
            max_steps,
            eval_steps: 0,
            save_steps: 0,
            shuffle: true,
            group_by_image: false,
            resume: None,
            adapter_init: None,
            progress: false,
        };
        let mm = m.clone();
        let case = format!("train run, every image bad ({label})");
        let r = within(&case, 60.0, move || {
            run(
                mm,
                &opts,
                LoraOptions {
                    r: 2,
                    alpha: 4.0,
                    ..LoraOptions::default()
                },
                TrainOptions::default(),
                None,
            )
            .map(|_| ())
        });
        count("train::run, no usable image");
        expect_err(&case, r, "image", &["40 rows in a row", "train.jsonl"]);
    }
    let _ = std::fs::remove_dir_all(&root);
    report(&["train::run, no usable image"], 2);
}

#[test]
fn huge_text_is_refused_before_tokenizing() {
    let m = model();
    let img = photo();
    let big = huge_text(20 << 20);
    // Rust API: prompt and scored caption.
    for (mode, label) in [
        (smolcap::processor::PromptMode::Chat, "chat"),
        (smolcap::processor::PromptMode::Raw, "raw"),
    ] {
        let opts = CaptionOptions {
            prompt: big.clone(),
            mode,
            ..CaptionOptions::default()
        };
        let t = Instant::now();
        expect_err(
            &format!("prepare, 20 MB {label} prompt"),
            m.prepare(&[&img], &opts).map(|_| ()),
            "limit",
            &["max_prompt_bytes", "20971520"],
        );
        assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
        count("Model::prepare, prompt bytes");
    }
    let t = Instant::now();
    expect_err(
        "caption_nll, 20 MB caption",
        m.caption_nll(&[&img], &CaptionOptions::default(), &big)
            .map(|_| ()),
        "limit",
        &["max_caption_bytes"],
    );
    assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
    count("Model::caption_nll, caption bytes");
    // The limits are adjustable: a 6-byte limit refuses the default prompt.
    let opts = CaptionOptions {
        max_prompt_bytes: 6,
        ..CaptionOptions::default()
    };
    expect_err(
        "prepare, max_prompt_bytes 6",
        m.prepare(&[&img], &opts).map(|_| ()),
        "limit",
        &["max_prompt_bytes 6"],
    );
    count("Model::prepare, prompt bytes");

    // Training: a 100 MB caption is rejected and counted, never tokenized.
    let mut t = smolcap::train::Trainer::new(
        m.clone(),
        smolcap::train::LoraOptions {
            r: 2,
            alpha: 4.0,
            ..Default::default()
        },
        smolcap::train::TrainOptions::default(),
        None,
    )
    .unwrap();
    let huge = huge_text(100 << 20);
    let ex = vec![
        smolcap::train::Example::new(img.clone(), huge),
        smolcap::train::Example::new(img.clone(), "a small photo"),
    ];
    let start = Instant::now();
    let st = t.step(&ex).unwrap();
    assert_eq!(st.rejected, 1, "the huge caption is rejected");
    assert!(
        start.elapsed().as_secs_f64() < 20.0,
        "{:?}",
        start.elapsed()
    );
    count("Trainer::step, caption bytes");
    // A training prompt past the limit is an option error.
    let r = smolcap::train::Trainer::new(
        m.clone(),
        smolcap::train::LoraOptions::default(),
        smolcap::train::TrainOptions {
            collate: smolcap::train::CollateOptions {
                prompt: huge_text(1 << 20),
                longest_edge: None,
                max_seq_len: 2048,
            },
            ..Default::default()
        },
        None,
    );
    expect_err(
        "trainer, 1 MB prompt",
        r.map(|_| ()),
        "limit",
        &["training prompt"],
    );
    count("Trainer::new, prompt bytes");

    // Datasets: a row with a 100 MB caption is a bad row.
    let root = scratch("bigcaption");
    let img_path = fixture("images/tiny_20x15.png");
    let manifest = root.join("train.jsonl");
    std::fs::write(
        &manifest,
        format!(
            "{{\"image\": \"{0}\", \"caption\": \"{1}\"}}\n{{\"image\": \"{0}\", \"caption\": \"fine\"}}\n",
            img_path.display(),
            huge_text(100 << 20)
        ),
    )
    .unwrap();
    let spec = DatasetSpec::new(manifest.to_string_lossy(), "train");
    let ds = within("dataset with a 100 MB caption", 30.0, move || {
        Dataset::open(&spec).unwrap()
    });
    assert_eq!(ds.samples().len(), 1);
    assert_eq!(ds.bad_rows().len(), 1);
    assert!(
        ds.bad_rows()[0].reason.contains("max_caption_bytes"),
        "{}",
        ds.bad_rows()[0]
    );
    count("Dataset::open, caption bytes");
    let _ = std::fs::remove_dir_all(&root);

    // Metrics: a caption past the limit is refused before tokenizing, naming it.
    for (label, cands, refs) in [
        (
            "candidate",
            vec![huge_text(1 << 20)],
            vec![vec!["a cat".to_string()]],
        ),
        (
            "reference",
            vec!["a cat".to_string()],
            vec![vec!["a cat".to_string(), huge_text(1 << 20)]],
        ),
    ] {
        for suite in [smolcap::metrics::Suite::Seed, smolcap::metrics::Suite::Coco] {
            let t = Instant::now();
            let r = smolcap::metrics::score(&cands, &refs, suite)
                .map(|_| ())
                .map_err(smolcap::Error::from);
            expect_err(
                &format!("score, 1 MB {label}"),
                r,
                "limit",
                &[label, "max_caption_bytes"],
            );
            assert!(t.elapsed().as_secs_f64() < 1.0);
            count("metrics::score, caption bytes");
        }
    }
    report(
        &[
            "Model::prepare, prompt bytes",
            "Model::caption_nll, caption bytes",
            "Trainer::step, caption bytes",
            "Trainer::new, prompt bytes",
            "Dataset::open, caption bytes",
            "metrics::score, caption bytes",
        ],
        11,
    );
}

mod c {
    pub use smolcap::ffi::model::*;
    pub use smolcap::ffi::session::*;
    pub use smolcap::ffi::status::*;
    pub use smolcap::ffi::train::*;
}

fn last_error() -> String {
    // SAFETY: never NULL.
    unsafe { CStr::from_ptr(c::smolcap_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn c_api_text_limits() {
    let dir = CString::new(fixture("tiny-idefics3").to_str().unwrap()).unwrap();
    let mut m = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(
        unsafe { c::smolcap_model_load(dir.as_ptr(), null(), &mut m) },
        0
    );
    let mut s = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(unsafe { c::smolcap_session_new(m, &mut s) }, 0);
    let png = std::fs::read(fixture("images/tiny_20x15.png")).unwrap();
    let img = c::smolcap_image {
        kind: c::SMOLCAP_IMAGE_ENCODED,
        width: 0,
        height: 0,
        data: png.as_ptr(),
        len: png.len(),
        stride: 0,
    };
    let mut gp = std::mem::MaybeUninit::<c::smolcap_generate_params>::uninit();
    // SAFETY: init writes the whole struct.
    let gp0 = unsafe {
        c::smolcap_generate_params_init(
            gp.as_mut_ptr(),
            std::mem::size_of::<c::smolcap_generate_params>(),
        );
        gp.assume_init()
    };
    assert_eq!(gp0.max_prompt_bytes, 256 << 10);
    assert_eq!(gp0.max_caption_bytes, 64 << 10);
    let big = CString::new(huge_text(20 << 20)).unwrap();
    let sentinel = 0x5a5a_usize as *mut c::smolcap_captions;

    // A 20 MB prompt: LIMIT before any work, out-param untouched.
    let mut p = gp0;
    p.prompt = big.as_ptr();
    let mut out = sentinel;
    let t = Instant::now();
    // SAFETY: valid arguments.
    let st = unsafe { c::smolcap_caption(s, &img, 1, &p, None, null_mut(), &mut out) };
    assert_eq!(st, c::SMOLCAP_STATUS_LIMIT, "{}", last_error());
    assert!(
        last_error().contains("max_prompt_bytes"),
        "{}",
        last_error()
    );
    assert_eq!(out, sentinel);
    assert!(t.elapsed().as_secs_f64() < 1.0);
    count("C smolcap_caption, prompt bytes");
    // The field works both ways: 8 bytes refuses the default prompt.
    let mut p = gp0;
    p.max_prompt_bytes = 8;
    // SAFETY: valid arguments.
    let st = unsafe { c::smolcap_caption(s, &img, 1, &p, None, null_mut(), &mut out) };
    assert_eq!(st, c::SMOLCAP_STATUS_LIMIT, "{}", last_error());
    count("C smolcap_caption, prompt bytes");
    let mut p = gp0;
    p.max_prompt_bytes = 0;
    // SAFETY: valid arguments.
    let st = unsafe { c::smolcap_caption(s, &img, 1, &p, None, null_mut(), &mut out) };
    assert_eq!(st, c::SMOLCAP_STATUS_INVALID_ARGUMENT, "{}", last_error());
    count("C smolcap_caption, prompt bytes");

    // A 20 MB caption to score.
    let mut nll = std::mem::MaybeUninit::<c::smolcap_nll>::zeroed();
    let t = Instant::now();
    // SAFETY: valid arguments.
    let st = unsafe { c::smolcap_session_score(s, &img, big.as_ptr(), &gp0, nll.as_mut_ptr()) };
    assert_eq!(st, c::SMOLCAP_STATUS_LIMIT, "{}", last_error());
    assert!(
        last_error().contains("max_caption_bytes"),
        "{}",
        last_error()
    );
    assert!(t.elapsed().as_secs_f64() < 1.0);
    count("C smolcap_session_score, caption bytes");

    // Training: a caption over params.max_caption_bytes is rejected and counted.
    let mut tp = std::mem::MaybeUninit::<c::smolcap_train_params>::uninit();
    // SAFETY: init writes the whole struct.
    let mut tp = unsafe {
        c::smolcap_train_params_init(
            tp.as_mut_ptr(),
            std::mem::size_of::<c::smolcap_train_params>(),
        );
        tp.assume_init()
    };
    assert_eq!(tp.max_caption_bytes, 64 << 10);
    tp.lora_r = 2;
    tp.max_caption_bytes = 16;
    let mut tr = null_mut();
    // SAFETY: valid arguments.
    let st = unsafe { c::smolcap_trainer_new(m, &tp, null(), &mut tr) };
    assert_eq!(st, 0, "{}", last_error());
    let long = CString::new("a caption longer than sixteen bytes").unwrap();
    let short = CString::new("a cat").unwrap();
    let ex = [
        c::smolcap_train_example {
            image: img,
            caption: long.as_ptr(),
        },
        c::smolcap_train_example {
            image: img,
            caption: short.as_ptr(),
        },
    ];
    let mut stats = std::mem::MaybeUninit::<c::smolcap_step_stats>::zeroed();
    // SAFETY: struct_size set before the call.
    unsafe {
        (*stats.as_mut_ptr()).struct_size = std::mem::size_of::<c::smolcap_step_stats>() as u32;
    }
    // SAFETY: valid arguments.
    let st = unsafe { c::smolcap_trainer_step(tr, ex.as_ptr(), 2, stats.as_mut_ptr()) };
    assert_eq!(st, 0, "{}", last_error());
    // SAFETY: written on success.
    let stats = unsafe { stats.assume_init() };
    assert_eq!((stats.examples, stats.rejected), (1, 1));
    count("C smolcap_trainer_step, caption bytes");
    tp.max_caption_bytes = 0;
    let mut tr2 = null_mut();
    // SAFETY: valid arguments.
    let st = unsafe { c::smolcap_trainer_new(m, &tp, null(), &mut tr2) };
    assert_eq!(st, c::SMOLCAP_STATUS_INVALID_ARGUMENT, "{}", last_error());
    assert!(last_error().contains("max_caption_bytes"));
    count("C smolcap_trainer_new, caption bytes");
    // SAFETY: handles from this test.
    unsafe {
        c::smolcap_trainer_free(tr);
        c::smolcap_session_free(s);
        c::smolcap_model_free(m);
    }
    let _: *const c_char = null();
    report(
        &[
            "C smolcap_caption, prompt bytes",
            "C smolcap_session_score, caption bytes",
            "C smolcap_trainer_step, caption bytes",
            "C smolcap_trainer_new, caption bytes",
        ],
        6,
    );
}

#[test]
fn crafted_input_that_used_to_take_super_linear_time() {
    let root = scratch("superlinear");
    // A shard index with 25,000 entries (distinct shard names, and all naming one shard).
    for (label, distinct) in [("distinct shards", true), ("one shard", false)] {
        let dir = root.join(label.replace(' ', "-"));
        hc::copy_dir(&fixture("tiny-idefics3-sharded"), &dir);
        let mut map = serde_json::Map::new();
        for i in 0..25_000 {
            let f = if distinct {
                format!("model-{i:05}-of-25000.safetensors")
            } else {
                "model-00001-of-00003.safetensors".to_string()
            };
            map.insert(format!("extra.tensor.{i}"), serde_json::Value::from(f));
        }
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
        )
        .unwrap();
        let case = format!("index with 25,000 entries ({label})");
        let r = within(&case, 5.0, move || {
            Model::load_dir(&dir, &LoadOptions::default()).map(|_| ())
        });
        count("Weights::open, big shard index");
        assert!(r.is_err(), "{case}");
    }

    // Chat templates that never end, or produce without end.
    let templates = [
        ("nested loops", "{% for a in range(100000) %}{% for b in range(100000) %}{{ '' }}{% endfor %}{% endfor %}"),
        ("output flood", "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"),
        ("huge repeat", "{% for a in range(1000) %}{{ 'y' * 50000000 }}{% endfor %}"),
        ("recursion", "{% macro f(n) %}{{ f(n + 1) }}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
        ("while-like", "{% for m in messages * 100000 %}{% for c in m['content'] * 1000 %}{{ c }}{% endfor %}{% endfor %}"),
    ];
    for (label, t) in templates {
        let dir = root.join(format!("tmpl-{}", label.replace(' ', "-")));
        hc::copy_dir(&fixture("tiny-idefics3"), &dir);
        std::fs::write(dir.join("chat_template.jinja"), t).unwrap();
        let case = format!("chat template: {label}");
        let r = within(&case, 15.0, move || {
            let m = Model::load_dir(&dir, &LoadOptions::default()).unwrap();
            m.prepare(&[&photo()], &CaptionOptions::default())
                .map(|_| ())
        });
        count("chat template, endless");
        let e = r.expect_err(&case);
        assert!(matches!(hc::kind(&e), "limit" | "invalid"), "{case}: {e}");
    }

    // ROUGE-L on captions of 10^5 words (a quadratic table took minutes).
    let words: String = (0..100_000).map(|i| ["a ", "b ", "c "][i % 3]).collect();
    let other: String = (0..100_000)
        .map(|i| ["b ", "c ", "a ", "a "][i % 4])
        .collect();
    for suite in [smolcap::metrics::Suite::Seed, smolcap::metrics::Suite::Coco] {
        let (w, o) = (words.clone(), other.clone());
        let case = format!("ROUGE-L on 10^5 words ({})", suite.name());
        let s = within(&case, 30.0, move || {
            smolcap::metrics::score_limited(&[w], &[vec![o]], suite, 1 << 20).unwrap()
        });
        let r = s.get("ROUGE-L").unwrap();
        assert!(r > 0.0 && r <= 1.0, "{case}: {r}");
        count("metrics, long captions");
    }
    let _ = std::fs::remove_dir_all(&root);
    report(
        &[
            "Weights::open, big shard index",
            "chat template, endless",
            "metrics, long captions",
        ],
        9,
    );
}
