//! Text inputs of every entry point (issue 27): prompts (chat and raw) through the processor
//! with the byte limits, captions scored by the model, training captions, JSONL dataset rows,
//! metrics captions and results files, weight-format specs. Each must succeed or fail with an
//! error, never panic, and never run past the byte limits (small limits here keep each run
//! quick).
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::processor::PromptMode;
use smolcap::{CaptionOptions, LoadOptions, Model};

fn model() -> &'static (Model, SourceImage) {
    static M: OnceLock<(Model, SourceImage)> = OnceLock::new();
    M.get_or_init(|| {
        let m = Model::load_dir(&common::fixture("tiny-idefics3"), &LoadOptions::default())
            .expect("fixture model");
        let img = SourceImage::open(
            common::fixture("images/tiny_20x15.png"),
            &DecodeLimits::default(),
        )
        .expect("fixture image");
        (m, img)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let (m, img) = model();
    let limit = 1 + usize::from(mode >> 3) * 512;
    match mode % 5 {
        0 | 1 => {
            let opts = CaptionOptions {
                prompt: text.clone(),
                mode: if mode % 5 == 0 {
                    PromptMode::Chat
                } else {
                    PromptMode::Raw
                },
                max_prompt_bytes: limit,
                ..CaptionOptions::default()
            };
            let r = m.prepare(&[img], &opts);
            if text.len() > limit {
                assert!(matches!(r, Err(smolcap::Error::Limit(_))));
            }
        }
        2 => {
            let opts = CaptionOptions {
                max_caption_bytes: limit,
                ..CaptionOptions::default()
            };
            let r = m.caption_nll(&[img], &opts, &text);
            if text.len() > limit {
                assert!(matches!(r, Err(smolcap::Error::Limit(_))));
            }
        }
        3 => {
            // Metrics: the first line is the candidate, the rest references.
            let mut lines = text.lines();
            let cand = lines.next().unwrap_or("").to_string();
            let refs: Vec<String> = lines.map(str::to_string).collect();
            if !refs.is_empty() {
                for suite in [smolcap::metrics::Suite::Seed, smolcap::metrics::Suite::Coco] {
                    let _ = smolcap::metrics::score_limited(&[cand.clone()], &[refs.clone()], suite, limit);
                }
            }
        }
        _ => {
            // A weight-format spec (`--quantize`, `smolcap_load_params.quantize`).
            let _ = smolcap::quant::QuantSpec::parse(&text);
            // A JSONL manifest and a COCO results file made of the bytes.
            let dir = common::scratch();
            let p = dir.join("fuzz.jsonl");
            if std::fs::write(&p, &text).is_ok() {
                let mut spec = smolcap::data::DatasetSpec::new(p.to_string_lossy(), "train");
                spec.max_caption_bytes = limit;
                if let Ok(ds) = smolcap::data::Dataset::open(&spec) {
                    assert!(ds.samples().iter().all(|s| s.caption.len() <= limit));
                }
            }
            let r = dir.join("fuzz-refs.json");
            let c = dir.join("fuzz-cands.json");
            if std::fs::write(&r, &text).is_ok() && std::fs::write(&c, &text).is_ok() {
                let _ = smolcap::metrics::cli::load_files(&r, &c);
            }
        }
    }
});
