//! The Rust path of the C ABI tests: captions the tiny fixture through the Rust API, checks the
//! tokens against transformers (cases.json), and, when `SMOLCAP_EXPECTED_OUT` is set, writes
//! them to that file for the C, C++ and Go tests (tests/run_native.sh), which must produce the
//! same tokens and text byte for byte.
//!
//! File format, one line per case, tab-separated:
//! `caption <name> <space-separated token ids> <caption text as hex>` and
//! `nll <name> <total %.17g> <mean %.17g> <tokens>`.
//!
//! When `SMOLCAP_METRICS_OUT` is set, the second test writes the metrics reference of
//! tests/fixtures/metrics/realistic_input.json for tests/c/test_adapters.c, tab-separated:
//! `cand <caption as hex>`, `ref <image index> <reference as hex>` (in order), and
//! `score <seed|coco> <metric> <corpus {:e}> <per-image values {:e}, space-separated>`
//! (`{:e}` prints the shortest text that reads back as the same double).

mod common;

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;

use common::{cases, fixture, ids};
use smolcap::generate::{BeamParams, GenerateParams, SampleParams, Strategy};
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::{CaptionOptions, LoadOptions, Model};

/// The raw test image both sides build: 64x48 RGB, pixel (x, y) =
/// ((7x + 3y) % 256, (x * y) % 256, (x + 2y) % 256).
fn pattern() -> SourceImage {
    let (w, h) = (64usize, 48usize);
    let mut d = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            d.push(((7 * x + 3 * y) % 256) as u8);
            d.push(((x * y) % 256) as u8);
            d.push(((x + 2 * y) % 256) as u8);
        }
    }
    SourceImage::new(w, h, 3, d).unwrap()
}

fn opts(max_new: usize, strategy: Strategy) -> CaptionOptions {
    CaptionOptions {
        params: GenerateParams {
            max_new_tokens: max_new,
            strategy,
            ..GenerateParams::default()
        },
        ..CaptionOptions::default()
    }
}

fn hex(s: &str) -> String {
    s.bytes().fold(String::new(), |mut o, b| {
        let _ = write!(o, "{b:02x}");
        o
    })
}

/// Greedy / beam token ids of a single-image case, cut after the first stop token.
fn expected(case: &str, key: &str) -> Vec<u32> {
    let c = cases("tiny-idefics3");
    let eos = c["eos_token_id"].as_u64().unwrap() as u32;
    let case = c["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == case)
        .unwrap_or_else(|| panic!("case {case} missing"));
    let mut v = ids(&case[key]["sequences_raw"]);
    if let Some(i) = v.iter().position(|&t| t == eos) {
        v.truncate(i + 1);
    }
    v
}

/// The image files captioned greedily (12 tokens) by the C thread test, with their cases.
pub const FILES: &[(&str, &str)] = &[
    ("photo_640x480.png", "photo_640x480"),
    ("tiny_20x15.png", "tiny_20x15"),
    ("pano_400x60.png", "pano_400x60"),
    ("portrait_90x200.png", "portrait_90x200"),
    ("gray_120x90.png", "gray_120x90"),
    ("rgba_100x80.png", "rgba_100x80"),
    ("square_32x32.png", "square_32x32"),
    ("photo_640x480.jpg", "photo_640x480_jpg"),
];

#[test]
fn rust_reference_for_the_c_abi() {
    let model = Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap();
    let lim = DecodeLimits::default();
    let cancel = AtomicBool::new(false);
    let mut out = String::new();
    let mut run = |name: &str, img: &SourceImage, o: &CaptionOptions| -> Vec<u32> {
        let mut noop = |_: usize, _: &str| ControlFlow::Continue(());
        let c = model
            .caption(&[vec![img]], o, &cancel, &mut noop)
            .unwrap()
            .remove(0);
        let toks: Vec<String> = c.token_ids.iter().map(u32::to_string).collect();
        let _ = writeln!(out, "caption\t{name}\t{}\t{}", toks.join(" "), hex(&c.text));
        c.token_ids
    };
    let greedy = opts(12, Strategy::Greedy);
    for (file, case) in FILES {
        let bytes = std::fs::read(fixture(&format!("images/{file}"))).unwrap();
        let img = SourceImage::decode(&bytes, &lim).unwrap();
        let got = run(file, &img, &greedy);
        assert_eq!(
            got,
            expected(case, "greedy"),
            "{file}: greedy vs transformers"
        );
    }
    let photo = SourceImage::open(fixture("images/photo_640x480.png"), &lim).unwrap();
    let beam = opts(12, Strategy::Beam(BeamParams::default()));
    let got = run("beam3", &photo, &beam);
    assert_eq!(
        got,
        expected("photo_640x480", "beam3"),
        "beam3 vs transformers"
    );
    let sample = opts(
        12,
        Strategy::Sample {
            params: SampleParams {
                temperature: 0.8,
                top_k: 50,
                top_p: 0.9,
            },
            seed: 7,
        },
    );
    run("sample", &photo, &sample);
    run("raw", &pattern(), &greedy);
    let nll = model
        .caption_nll(&[&photo], &CaptionOptions::default(), "a photo of a cat")
        .unwrap();
    let _ = writeln!(
        out,
        "nll\tcat\t{:e}\t{:e}\t{}",
        nll.total, nll.mean, nll.tokens
    );
    // The same photo on the model quantised to q8_0 at load (smolcap_load_params.quantize).
    let q8 = LoadOptions {
        quantize: smolcap::quant::QuantSpec::parse("q8_0").unwrap(),
        ..LoadOptions::default()
    };
    let q8 = Model::load_dir(&fixture("tiny-idefics3"), &q8).unwrap();
    let mut noop = |_: usize, _: &str| ControlFlow::Continue(());
    let c = q8
        .caption(&[vec![&photo]], &greedy, &cancel, &mut noop)
        .unwrap()
        .remove(0);
    let toks: Vec<String> = c.token_ids.iter().map(u32::to_string).collect();
    let _ = writeln!(out, "caption\tq8_0\t{}\t{}", toks.join(" "), hex(&c.text));
    if let Ok(path) = std::env::var("SMOLCAP_EXPECTED_OUT") {
        std::fs::write(&path, out).unwrap();
        eprintln!("wrote {path}");
    }
}

#[test]
fn rust_metrics_reference_for_the_c_abi() {
    use smolcap::metrics::{score, Suite, METRIC_NAMES};
    let text = std::fs::read_to_string(fixture("metrics/realistic_input.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let strs = |x: &serde_json::Value| -> Vec<String> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let cands = strs(&v["cands"]);
    let refs: Vec<Vec<String>> = v["refs"].as_array().unwrap().iter().map(strs).collect();
    let mut out = String::new();
    for c in &cands {
        let _ = writeln!(out, "cand\t{}", hex(c));
    }
    for (i, rs) in refs.iter().enumerate() {
        for r in rs {
            let _ = writeln!(out, "ref\t{i}\t{}", hex(r));
        }
    }
    for suite in [Suite::Seed, Suite::Coco] {
        let s = score(&cands, &refs, suite).unwrap();
        assert_eq!(s.len(), cands.len());
        for m in METRIC_NAMES {
            let per: Vec<String> = s.per_image[m].iter().map(|x| format!("{x:e}")).collect();
            let _ = writeln!(
                out,
                "score\t{}\t{m}\t{:e}\t{}",
                suite.name(),
                s.get(m).unwrap(),
                per.join(" ")
            );
        }
    }
    if let Ok(path) = std::env::var("SMOLCAP_METRICS_OUT") {
        std::fs::write(&path, out).unwrap();
    }
}

/// The training reference for tests/c/test_train.c, written to `SMOLCAP_TRAIN_OUT`: the `text`
/// case of tests/fixtures/train (initial adapter, options and examples as torch + peft trained
/// it) for three steps through the Rust API, tab-separated:
/// `param <name> <value>`, `example <step> <image file> <caption as hex>`, `loss <step> <{:e}>`.
#[test]
fn rust_train_reference_for_the_c_abi() {
    use smolcap::train::{CollateOptions, Example, LoraOptions, TrainOptions, Trainer};
    let dir = fixture("train/text");
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let opts = TrainOptions {
        lr: exp["lr"].as_f64().unwrap(),
        weight_decay: exp["weight_decay"].as_f64().unwrap(),
        warmup_ratio: exp["warmup_ratio"].as_f64().unwrap(),
        total_steps: exp["total_steps"].as_u64().unwrap(),
        max_grad_norm: exp["max_grad_norm"].as_f64().unwrap(),
        micro_batch: exp["micro_batch"].as_u64().unwrap() as usize,
        collate: CollateOptions {
            prompt: exp["prompt"].as_str().unwrap().to_string(),
            longest_edge: None,
            max_seq_len: 2048,
        },
        ..TrainOptions::default()
    };
    let mut out = String::new();
    for (k, v) in [
        ("lr", opts.lr),
        ("weight_decay", opts.weight_decay),
        ("warmup_ratio", opts.warmup_ratio),
        ("total_steps", opts.total_steps as f64),
        ("max_grad_norm", opts.max_grad_norm),
        ("micro_batch", opts.micro_batch as f64),
    ] {
        let _ = writeln!(out, "param\t{k}\t{v:e}");
    }
    let model = std::sync::Arc::new(
        Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap(),
    );
    let lora = LoraOptions {
        dropout: 0.0,
        ..LoraOptions::default()
    };
    let mut t = Trainer::new(model, lora, opts, Some(&dir.join("init"))).unwrap();
    for (i, s) in exp["steps_log"]
        .as_array()
        .unwrap()
        .iter()
        .take(3)
        .enumerate()
    {
        let mut exs = Vec::new();
        for e in s["examples"].as_array().unwrap() {
            let img = e["image"].as_str().unwrap();
            let cap = e["caption"].as_str().unwrap();
            let _ = writeln!(out, "example\t{i}\t{img}\t{}", hex(cap));
            exs.push(Example {
                image: SourceImage::open(fixture("images").join(img), &DecodeLimits::default())
                    .unwrap(),
                caption: cap.to_string(),
                key: None,
            });
        }
        let st = t.step(&exs).unwrap();
        let want = s["loss"].as_f64().unwrap();
        assert!(
            ((st.loss - want) / want).abs() < 1e-5,
            "step {i}: {} vs torch {want}",
            st.loss
        );
        let _ = writeln!(out, "loss\t{i}\t{:e}", st.loss);
    }
    if let Ok(path) = std::env::var("SMOLCAP_TRAIN_OUT") {
        std::fs::write(path, out).unwrap();
    }
}
