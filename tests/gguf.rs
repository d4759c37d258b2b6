//! GGUF in and out on the tiny fixture. `tests/fixtures/gguf-llama-cpp/` holds the pair that
//! llama.cpp's own `convert_hf_to_gguf.py --outtype q8_0` wrote for `tiny-idefics3`
//! (tools/reference/make_gguf_fixtures.sh): `smolcap quantize` must write the same tensors and
//! metadata, loading that pair must caption as quantise-at-load does, and each format's file
//! written and loaded back must give what quantise-at-load gives.

mod common;

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use common::fixture;
use smolcap::generate::{GenerateParams, Strategy};
use smolcap::gguf::{GgufFile, GgufLimits};
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::quant::QuantSpec;
use smolcap::{CaptionOptions, LoadOptions, Model};

const IMAGES: &[&str] = &[
    "photo_640x480.png",
    "tiny_20x15.png",
    "pano_400x60.png",
    "portrait_90x200.png",
];

fn load_dir(spec: &str) -> Model {
    let opts = LoadOptions {
        quantize: QuantSpec::parse(spec).unwrap(),
        ..LoadOptions::default()
    };
    Model::load_dir(&fixture("tiny-idefics3"), &opts).unwrap()
}

fn load_gguf(path: &Path, spec: &str) -> Model {
    let opts = LoadOptions {
        quantize: QuantSpec::parse(spec).unwrap(),
        ..LoadOptions::default()
    };
    Model::load(path.to_str().unwrap(), &opts).unwrap()
}

/// Greedy tokens and the caption log-likelihood of every fixture image.
fn behaviour(m: &Model) -> Vec<(Vec<u32>, f64)> {
    behaviour_with(m, Vec::new())
}

/// [`behaviour`] with adapters applied unmerged.
fn behaviour_with(m: &Model, adapters: Vec<smolcap::ActiveAdapter>) -> Vec<(Vec<u32>, f64)> {
    let o = CaptionOptions {
        adapters,
        params: GenerateParams {
            max_new_tokens: 10,
            min_new_tokens: 10,
            strategy: Strategy::Greedy,
            ..GenerateParams::default()
        },
        ..CaptionOptions::default()
    };
    IMAGES
        .iter()
        .map(|f| {
            let img = SourceImage::open(fixture(&format!("images/{f}")), &DecodeLimits::default())
                .unwrap();
            let mut noop = |_: usize, _: &str| ControlFlow::Continue(());
            let c = m
                .caption(&[vec![&img]], &o, &AtomicBool::new(false), &mut noop)
                .unwrap();
            let nll = m.caption_nll(&[&img], &o, "a photo of a cat 123").unwrap();
            (c[0].token_ids.clone(), nll.total)
        })
        .collect()
}

fn assert_same(a: &[(Vec<u32>, f64)], b: &[(Vec<u32>, f64)], what: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.0, y.0, "{what}: greedy tokens of image {i}");
        assert!(
            (x.1 - y.1).abs() <= 1e-4 * x.1.abs().max(1.0),
            "{what}: caption NLL of image {i}: {} vs {}",
            x.1,
            y.1
        );
    }
}

#[test]
fn llama_cpp_pair_loads_and_captions_as_quantize_at_load() {
    // The directory holds one text GGUF and one mmproj: found as a pair.
    let m = load_gguf(&fixture("gguf-llama-cpp"), "");
    assert!(m.network().stored_formats().contains("q8_0"));
    assert_same(
        &behaviour(&load_dir("q8_0")),
        &behaviour(&m),
        "llama.cpp q8_0 pair",
    );
}

#[test]
fn a_peft_adapter_applies_unmerged_on_a_gguf_base() {
    let with = |m: &Model| {
        let a = m.load_adapter(&fixture("adapters/text_r4_a8")).unwrap();
        behaviour_with(
            m,
            vec![smolcap::ActiveAdapter {
                adapter: std::sync::Arc::new(a),
                weight: 1.0,
            }],
        )
    };
    let gguf = load_gguf(&fixture("gguf-llama-cpp"), "");
    let direct = load_dir("q8_0");
    let (a, b) = (with(&direct), with(&gguf));
    assert_same(&a, &b, "adapter on the llama.cpp q8_0 pair");
    // The adapter changes the outputs (the comparison above is not of two base models).
    assert_ne!(a, behaviour(&gguf));
}

#[test]
fn quantize_writes_what_llama_cpp_writes() {
    let out = common::TempDir::new("gguf");
    let r = smolcap::gguf::export::export_pair(
        &fixture("tiny-idefics3"),
        out.path(),
        &QuantSpec::parse("q8_0").unwrap(),
        "q8_0",
    )
    .unwrap();
    let dir = fixture("gguf-llama-cpp");
    for (ours, theirs) in [
        (&r.text, dir.join("tiny-idefics3-q8_0.gguf")),
        (&r.mmproj, dir.join("mmproj-tiny-idefics3-q8_0.gguf")),
    ] {
        let a = GgufFile::open(ours, GgufLimits::default()).unwrap();
        let b = GgufFile::open(&theirs, GgufLimits::default()).unwrap();
        // Every key llama.cpp wrote, with the same value, but the free-text name and size label.
        for (k, v) in &b.header().metadata {
            if k == "general.name" || k == "general.size_label" {
                continue;
            }
            assert_eq!(a.get(k), Some(v), "{}: metadata {k}", theirs.display());
        }
        assert_eq!(a.header().tensors.len(), b.header().tensors.len());
        for t in &b.header().tensors {
            let (ta, da) = a.read(&t.name).unwrap();
            let (tb, db) = b.read(&t.name).unwrap();
            assert_eq!(
                (&ta.dims, ta.ggml_type),
                (&tb.dims, tb.ggml_type),
                "{}",
                t.name
            );
            assert!(da == db, "{}: tensor data differs from llama.cpp's", t.name);
        }
    }
}

#[test]
fn each_format_written_and_read_back_equals_quantize_at_load() {
    for spec in [
        "q4_k",
        "q4_0",
        "q6_k",
        "f16",
        "bf16",
        "q4_0,vision=q8_0,lm_head=f32",
        "f32",
    ] {
        let out = common::TempDir::new("gguf");
        let r = smolcap::gguf::export::export_pair(
            &fixture("tiny-idefics3"),
            out.path(),
            &QuantSpec::parse(spec).unwrap(),
            "t",
        )
        .unwrap();
        let direct = load_dir(spec);
        // Loaded as stored, and with the same spec asked again (kept, not requantised).
        for again in ["", spec] {
            let m = load_gguf(&r.text, again);
            assert_eq!(
                m.network().stored_formats(),
                direct.network().stored_formats(),
                "{spec}"
            );
            assert_eq!(
                m.network().resident_weight_bytes(),
                direct.network().resident_weight_bytes()
            );
            assert_same(&behaviour(&direct), &behaviour(&m), spec);
        }
    }
}

#[test]
fn a_gguf_model_can_be_requantized_at_load() {
    let out = common::TempDir::new("gguf");
    let r = smolcap::gguf::export::export_pair(
        &fixture("tiny-idefics3"),
        out.path(),
        &QuantSpec::parse("f32").unwrap(),
        "f32",
    )
    .unwrap();
    // An f32 file quantised as it loads is the f32 directory quantised as it loads.
    assert_same(
        &behaviour(&load_dir("q4_0")),
        &behaviour(&load_gguf(&r.text, "q4_0")),
        "f32 gguf -> q4_0",
    );
}

#[test]
fn the_tokenizer_rebuilt_from_gguf_metadata_encodes_as_tokenizer_json() {
    let a = load_dir("");
    let b = load_gguf(&fixture("gguf-llama-cpp"), "");
    let (ta, tb) = (&a.processor().tokenizer, &b.processor().tokenizer);
    for text in [
        "a photo of a cat",
        "Numbers 1234567 and 3.14159, mixed: x1y22z333",
        "<|im_start|>User:<image>Describe this image.<end_of_utterance>\nAssistant:",
        "  spaces\tand\nnewlines  ",
        "unicode: café naïve 日本語 🙂",
        "<fake_token_around_image><global-img><row_1_col_1>",
    ] {
        assert_eq!(
            ta.encode(text).unwrap(),
            tb.encode(text).unwrap(),
            "{text:?}"
        );
        let ids = ta.encode(text).unwrap();
        assert_eq!(
            ta.decode(&ids, true).unwrap(),
            tb.decode(&ids, true).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(a.stop_tokens(), b.stop_tokens());
    assert_eq!(a.pad_token(), b.pad_token());
    assert_eq!(a.processor().chat_template, b.processor().chat_template);
    assert_eq!(a.network().config(), b.network().config());
}

#[test]
fn broken_pairs_are_named_errors() {
    let dir = common::TempDir::new("gguf");
    let src = fixture("gguf-llama-cpp");
    let text = std::fs::read(src.join("tiny-idefics3-q8_0.gguf")).unwrap();
    let proj = std::fs::read(src.join("mmproj-tiny-idefics3-q8_0.gguf")).unwrap();
    let t = dir.path().join("m.gguf");
    let p = dir.path().join("mmproj-m.gguf");
    std::fs::write(&p, &proj).unwrap();
    let err = |path: &Path, mmproj: Option<&Path>| -> String {
        let opts = LoadOptions {
            mmproj: mmproj.map(Path::to_path_buf),
            ..LoadOptions::default()
        };
        match Model::load(path.to_str().unwrap(), &opts) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e) => e.to_string(),
        }
    };
    // Truncated text file: the last tensor runs past the end.
    std::fs::write(&t, &text[..text.len() - 100]).unwrap();
    let e = err(&t, None);
    assert!(e.contains("m.gguf") && e.contains("past the end"), "{e}");
    // The projector given as the text model, and the text model as the projector.
    std::fs::write(&t, &text).unwrap();
    let e = err(&p, Some(&t));
    assert!(e.contains("general.architecture"), "{e}");
    // No projector anywhere.
    std::fs::remove_file(&p).unwrap();
    let e = err(&t, None);
    assert!(e.contains("mmproj"), "{e}");
    // A text model whose metadata lacks a required key.
    let needle = b"llama.block_count";
    let at = text
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut bad = text.clone();
    bad[at..at + needle.len()].copy_from_slice(b"llama.block_cOunt");
    std::fs::write(&t, &bad).unwrap();
    std::fs::write(&p, &proj).unwrap();
    let e = err(&t, None);
    assert!(
        e.contains("llama.block_count") && e.contains("missing"),
        "{e}"
    );
}
