//! Parity with transformers on the tiny fixtures: processor output, vision/connector features,
//! logits, greedy and beam tokens, batching. Expected values come from tools/reference.

mod common;

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;

use common::{cases, fixture, ids, max_abs_diff, tensors};
use serde_json::Value;
use smolcap::generate::{BeamParams, EarlyStopping, GenerateParams, Strategy};
use smolcap::model::text::Logits;
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::{CaptionOptions, LoadOptions, Model};

fn load(model: &str) -> Model {
    Model::load_dir(&fixture(model), &LoadOptions::default()).expect("load fixture model")
}

fn open(name: &str) -> SourceImage {
    SourceImage::open(fixture(&format!("images/{name}")), &DecodeLimits::default()).unwrap()
}

fn options(case: &Value) -> CaptionOptions {
    let mut o = CaptionOptions::default();
    if let Some(le) = case["processor_kwargs"]["images_kwargs"]["size"]["longest_edge"].as_u64() {
        o.longest_edge = Some(le as u32);
    }
    o
}

/// New tokens up to and including the first stop token.
fn trim(mut v: Vec<u32>, eos: u32) -> Vec<u32> {
    if let Some(i) = v.iter().position(|&t| t == eos) {
        v.truncate(i + 1);
    }
    v
}

fn single_cases(model: &str) -> Vec<Value> {
    let c = cases(model);
    c["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["images"].as_array().unwrap().len() == 1 && c["input_ids"][0].is_u64())
        .cloned()
        .collect()
}

fn check_processor_and_logits(model_name: &str) {
    let model = load(model_name);
    let mut checked = 0;
    for case in single_cases(model_name) {
        let name = case["name"].as_str().unwrap();
        let img = open(case["images"][0].as_str().unwrap());
        let opts = options(&case);
        let p = model.prepare(&[&img], &opts).unwrap();
        let want_text = case["prompt_text"].as_str().unwrap();
        let got_text = model
            .processor()
            .prompt_text(&opts.prompt, 1, opts.mode)
            .unwrap();
        assert_eq!(got_text, want_text, "{model_name}/{name}: chat template");
        assert_eq!(
            p.input_ids,
            ids(&case["input_ids"]),
            "{model_name}/{name}: input_ids"
        );
        assert_eq!(
            p.grids,
            vec![(
                case["rows"].as_u64().unwrap() as usize,
                case["cols"].as_u64().unwrap() as usize
            )],
            "{model_name}/{name}: grid"
        );
        let t = tensors(model_name, name);
        let (pshape, pv) = &t["pixel_values"];
        assert_eq!(p.num_tiles, pshape[1], "{model_name}/{name}: tiles");
        let px_err = max_abs_diff(&p.pixel_values, pv);
        // JPEG included: libjpeg-turbo decodes the bytes Pillow decodes (docs/FIDELITY.md).
        let px_tol = 1e-5;
        assert!(
            px_err <= px_tol,
            "{model_name}/{name}: pixel_values max err {px_err}"
        );

        let feats = model.image_features(&[&p], 4).unwrap()[0].clone().unwrap();
        let f: Vec<f32> = feats.flatten_all().unwrap().to_vec1().unwrap();
        let f_err = max_abs_diff(&f, &t["image_features"].1);
        let logits: Vec<f32> = model
            .prompt_logits(&p, Logits::Last, 4)
            .unwrap()
            .to_vec1()
            .unwrap();
        let l_err = max_abs_diff(&logits, &t["logits_last"].1);
        let (f_tol, l_tol) = (1e-4, 1e-4);
        assert!(
            f_err <= f_tol,
            "{model_name}/{name}: image_features max err {f_err}"
        );
        assert!(
            l_err <= l_tol,
            "{model_name}/{name}: logits_last max err {l_err}"
        );
        {
            let all: Vec<f32> = model
                .prompt_logits(&p, Logits::All, 4)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let a_err = max_abs_diff(&all, &t["logits_all"].1);
            eprintln!("{model_name}/{name}: logits_all {a_err:.2e}");
            assert!(
                a_err <= 1e-4,
                "{model_name}/{name}: logits_all max err {a_err}"
            );
        }
        eprintln!(
            "{model_name}/{name}: pixel {px_err:.2e} features {f_err:.2e} logits {l_err:.2e}"
        );
        checked += 1;
    }
    assert!(checked >= 3, "too few cases");
}

#[test]
fn idefics3_processor_features_logits() {
    check_processor_and_logits("tiny-idefics3");
}

#[test]
fn smolvlm_processor_features_logits() {
    check_processor_and_logits("tiny-smolvlm");
}

fn caption_tokens(model: &Model, imgs: &[&SourceImage], opts: &CaptionOptions) -> Vec<Vec<u32>> {
    let inputs: Vec<Vec<&SourceImage>> = imgs.iter().map(|i| vec![*i]).collect();
    let cancel = AtomicBool::new(false);
    model
        .caption(
            &inputs,
            opts,
            &cancel,
            &mut |_, _| ControlFlow::Continue(()),
        )
        .unwrap()
        .into_iter()
        .map(|c| c.token_ids)
        .collect()
}

fn check_generation(model_name: &str) {
    let model = load(model_name);
    let all = cases(model_name);
    let eos = all["eos_token_id"].as_u64().unwrap() as u32;
    for case in single_cases(model_name) {
        let name = case["name"].as_str().unwrap();
        let img = open(case["images"][0].as_str().unwrap());
        let mut opts = options(&case);
        opts.params = GenerateParams {
            max_new_tokens: 12,
            ..Default::default()
        };
        let greedy = caption_tokens(&model, &[&img], &opts).remove(0);
        let want = trim(ids(&case["greedy"]["sequences_raw"]), eos);
        assert_eq!(greedy, want, "{model_name}/{name}: greedy tokens");

        // Logits at every greedy step, teacher-forced through one forward pass.
        let mut p = model.prepare(&[&img], &opts).unwrap();
        let l0 = p.input_ids.len();
        p.input_ids.extend_from_slice(&greedy[..greedy.len() - 1]);
        let all_logits = model.prompt_logits(&p, Logits::All, 4).unwrap();
        let t = tensors(model_name, name);
        let (_, steps) = &t["greedy_step_logits"];
        let vocab = all_logits.dims()[1];
        let ours: Vec<f32> = all_logits
            .narrow(0, l0 - 1, greedy.len())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let s_err = max_abs_diff(&ours, &steps[..greedy.len() * vocab]);
        assert!(
            s_err <= 1e-4,
            "{model_name}/{name}: step logits max err {s_err}"
        );

        for (key, bp) in [
            (
                "beam3",
                BeamParams {
                    num_beams: 3,
                    length_penalty: 1.0,
                    early_stopping: EarlyStopping::Heuristic,
                },
            ),
            (
                "beam2_lp05_es",
                BeamParams {
                    num_beams: 2,
                    length_penalty: 0.5,
                    early_stopping: EarlyStopping::True,
                },
            ),
        ] {
            if case.get(key).is_none() {
                continue;
            }
            opts.params.strategy = Strategy::Beam(bp);
            let got = caption_tokens(&model, &[&img], &opts).remove(0);
            let want = trim(ids(&case[key]["sequences_raw"]), eos);
            assert_eq!(got, want, "{model_name}/{name}: {key} tokens");
        }
    }
}

#[test]
fn idefics3_greedy_and_beam_tokens() {
    check_generation("tiny-idefics3");
}

#[test]
fn smolvlm_greedy_and_beam_tokens() {
    check_generation("tiny-smolvlm");
}

#[test]
fn batched_equals_sequential_and_reference() {
    let model = load("tiny-idefics3");
    let all = cases("tiny-idefics3");
    let eos = all["eos_token_id"].as_u64().unwrap() as u32;
    let batch = all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "batch2")
        .unwrap()
        .clone();
    let imgs: Vec<SourceImage> = batch["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| open(n.as_str().unwrap()))
        .collect();
    let refs: Vec<&SourceImage> = imgs.iter().collect();
    let mut opts = CaptionOptions::default();
    opts.params.max_new_tokens = 12;
    let batched = caption_tokens(&model, &refs, &opts);
    for (i, img) in refs.iter().enumerate() {
        let single = caption_tokens(&model, &[img], &opts).remove(0);
        assert_eq!(batched[i], single, "row {i}: batched != sequential");
    }
    // The reference batch uses left padding only in batch2_left; compare with that one.
    if let Some(left) = all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "batch2_left" && c["padding_side"] == "left")
    {
        for (i, row) in left["greedy"]["sequences_raw"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            assert_eq!(
                batched[i],
                trim(ids(row), eos),
                "row {i}: reference left-padded batch"
            );
        }
    }
    opts.params.strategy = Strategy::Beam(BeamParams::default());
    let batched = caption_tokens(&model, &refs, &opts);
    for (i, img) in refs.iter().enumerate() {
        let single = caption_tokens(&model, &[img], &opts).remove(0);
        assert_eq!(
            batched[i], single,
            "row {i}: batched beam != sequential beam"
        );
    }
}
