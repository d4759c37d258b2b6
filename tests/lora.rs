//! PEFT adapters against peft 0.21 on the tiny fixture: logits and greedy tokens with each
//! adapter, two adapters at once, base restored after removal, merge vs `merge_and_unload`,
//! save/load round trip, and clear errors for broken adapters.

mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::{fixture, ids, max_abs_diff};
use serde_json::Value;
use smolcap::lora::peft::Adapter;
use smolcap::merge::{merge_save, MergeOptions};
use smolcap::model::text::Logits;
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::{ActiveAdapter, CaptionOptions, Error, LoadOptions, Model};

fn model() -> Model {
    Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap()
}

fn photo() -> SourceImage {
    SourceImage::open(
        fixture("images/photo_640x480.png"),
        &DecodeLimits::default(),
    )
    .unwrap()
}

fn cases() -> Value {
    let p = fixture("expected/adapters/cases.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn expected(file: &str) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    common::tensors("adapters", file.trim_end_matches(".safetensors"))
}

fn active(m: &Model, specs: &[(&str, f32)]) -> Vec<ActiveAdapter> {
    specs
        .iter()
        .map(|(name, w)| ActiveAdapter {
            adapter: Arc::new(
                m.load_adapter(&fixture(&format!("adapters/{name}")))
                    .unwrap(),
            ),
            weight: *w,
        })
        .collect()
}

/// (logits_last, logits_all, image_features, greedy tokens) with `adapters` active.
fn run(m: &Model, adapters: Vec<ActiveAdapter>) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<u32>) {
    let img = photo();
    let mut opts = CaptionOptions {
        adapters,
        ..Default::default()
    };
    opts.params.max_new_tokens = 12;
    let p = m.prepare(&[&img], &opts).unwrap();
    let lora = m.lora_set(&opts.adapters).unwrap();
    let last = m
        .prompt_logits_lora(&p, Logits::Last, 4, &lora)
        .unwrap()
        .to_vec1()
        .unwrap();
    let all = m
        .prompt_logits_lora(&p, Logits::All, 4, &lora)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let feats = m.image_features_lora(&[&p], 4, &lora).unwrap()[0]
        .clone()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let cancel = AtomicBool::new(false);
    let toks = m
        .caption(&[vec![&img]], &opts, &cancel, &mut |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .remove(0)
        .token_ids;
    (last, all, feats, toks)
}

const ADAPTERS: &[&str] = &[
    "text_r4_a8",
    "seed_style_r2_a5",
    "rslora_r4_a6",
    "connector_save",
    "rank_pattern",
    "text_r2_a3_b",
];

#[test]
fn each_adapter_matches_peft() {
    let m = model();
    let c = cases();
    for name in ADAPTERS {
        let case = c["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == *name)
            .unwrap();
        let (last, all, feats, toks) = run(&m, active(&m, &[(name, 1.0)]));
        let t = expected(name);
        let e_last = max_abs_diff(&last, &t["logits_last"].1);
        let e_all = max_abs_diff(&all, &t["logits_all"].1);
        let e_feat = max_abs_diff(&feats, &t["image_features"].1);
        eprintln!("{name}: logits_last {e_last:.2e} logits_all {e_all:.2e} features {e_feat:.2e}");
        assert!(
            e_last <= 1e-4 && e_all <= 1e-4 && e_feat <= 1e-4,
            "{name}: {e_last} {e_all} {e_feat}"
        );
        assert_eq!(
            toks,
            ids(&case["greedy"]["token_ids"]),
            "{name}: greedy tokens"
        );
    }
}

#[test]
fn two_adapters_with_scales_match_peft() {
    let m = model();
    let c = cases();
    let (last, all, _, toks) = run(
        &m,
        active(&m, &[("text_r4_a8", 1.0), ("text_r2_a3_b", 0.5)]),
    );
    let t = expected("combo_text_r4_a8_x1_text_r2_a3_b_x0.5");
    let e = max_abs_diff(&last, &t["logits_last"].1).max(max_abs_diff(&all, &t["logits_all"].1));
    eprintln!("combination: logits {e:.2e}");
    assert!(e <= 1e-4, "combination max err {e}");
    assert_eq!(toks, ids(&c["combination"]["greedy"]["token_ids"]));
}

#[test]
fn removing_adapters_restores_the_base_exactly() {
    let m = model();
    let (base_last, base_all, _, base_toks) = run(&m, Vec::new());
    let _ = run(
        &m,
        active(&m, &[("connector_save", 1.0), ("seed_style_r2_a5", 1.0)]),
    );
    let (last, all, _, toks) = run(&m, Vec::new());
    assert_eq!(last, base_last);
    assert_eq!(all, base_all);
    assert_eq!(toks, base_toks);
    let t = expected("base");
    assert!(max_abs_diff(&base_last, &t["logits_last"].1) <= 1e-4);
}

#[test]
fn dora_and_broken_adapters_are_rejected_with_the_key() {
    let m = model();
    let e = m.load_adapter(&fixture("adapters/dora_r2")).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    let tmp = tmpdir("broken");
    // A LoRA key for a module the model lacks.
    let src = fixture("adapters/text_r2_a3_b");
    let tensors = candle_core::safetensors::load(
        src.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut renamed = std::collections::HashMap::new();
    for (k, v) in &tensors {
        renamed.insert(
            k.replace("layers.0.self_attn.o_proj", "layers.7.self_attn.o_proj"),
            v.clone(),
        );
    }
    write_adapter(&tmp, &src, &renamed);
    let e = m.load_adapter(&tmp).unwrap_err().to_string();
    assert!(e.contains("layers.7.self_attn.o_proj"), "{e}");
    // A rank that disagrees with adapter_config.json.
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg["r"] = serde_json::json!(3);
    write_adapter(&tmp, &src, &tensors);
    std::fs::write(tmp.join("adapter_config.json"), cfg.to_string()).unwrap();
    let e = m.load_adapter(&tmp).unwrap_err().to_string();
    assert!(e.contains("lora_A.weight") && e.contains("rank 3"), "{e}");
    // A B factor whose shape does not fit the module.
    let mut bad = tensors.clone();
    let key = bad
        .keys()
        .find(|k| k.ends_with("o_proj.lora_B.weight"))
        .unwrap()
        .clone();
    bad.insert(
        key.clone(),
        candle_core::Tensor::zeros((65, 2), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap(),
    );
    write_adapter(&tmp, &src, &bad);
    let e = m.load_adapter(&tmp).unwrap_err().to_string();
    assert!(e.contains(&key) && e.contains("shape"), "{e}");
    let _ = std::fs::remove_dir_all(&tmp);
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-lora-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_adapter(
    dir: &std::path::Path,
    src: &std::path::Path,
    t: &std::collections::HashMap<String, candle_core::Tensor>,
) {
    std::fs::copy(
        src.join("adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    candle_core::safetensors::save(t, dir.join("adapter_model.safetensors")).unwrap();
}

#[test]
fn merge_matches_merge_and_unload_and_the_unmerged_path() {
    let m = model();
    let base = fixture("tiny-idefics3");
    let out_root = tmpdir("merge");
    for name in [
        "text_r4_a8",
        "rslora_r4_a6",
        "connector_save",
        "rank_pattern",
        "seed_style_r2_a5",
    ] {
        let adapter = Adapter::load(&fixture(&format!("adapters/{name}")), m.network()).unwrap();
        let out = out_root.join(name);
        let report = merge_save(
            &base,
            &[(&adapter, 1.0)],
            &out,
            &MergeOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(report.shards, 1);
        let merged = candle_core::safetensors::load(
            out.join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let want_file = if name == "seed_style_r2_a5" {
            fixture("expected/adapters/merged_seed_style/model.safetensors")
        } else {
            fixture(&format!("expected/adapters/{name}_merged.safetensors"))
        };
        let want = candle_core::safetensors::load(want_file, &candle_core::Device::Cpu).unwrap();
        let mut worst = 0f32;
        for (k, v) in &want {
            let got = merged
                .get(k)
                .unwrap_or_else(|| panic!("{name}: merged dir lacks {k}"));
            let a: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            worst = worst.max(max_abs_diff(&a, &b));
        }
        eprintln!(
            "{name}: merged tensors max err {worst:.2e} over {} tensors",
            want.len()
        );
        assert!(worst <= 1e-6, "{name}: merged weights max err {worst}");
        // The merged directory loads and equals the unmerged path.
        let mm = Model::load_dir(&out, &LoadOptions::default()).unwrap();
        let (merged_last, ..) = run_logits(&mm, Vec::new());
        let (unmerged_last, ..) = run_logits(&m, active(&m, &[(name, 1.0)]));
        let e = max_abs_diff(&merged_last, &unmerged_last);
        assert!(e <= 1e-4, "{name}: merged vs unmerged logits {e}");
    }
    // Sharding with an index, and refusing to overwrite.
    let adapter = Adapter::load(&fixture("adapters/text_r4_a8"), m.network()).unwrap();
    let out = out_root.join("sharded");
    let opts = MergeOptions {
        max_shard_bytes: 300_000,
        overwrite: false,
    };
    let r = merge_save(&base, &[(&adapter, 1.0)], &out, &opts, &mut |_, _| {}).unwrap();
    assert!(r.shards > 1 && out.join("model.safetensors.index.json").is_file());
    let sharded = Model::load_dir(&out, &LoadOptions::default()).unwrap();
    let single = Model::load_dir(&out_root.join("text_r4_a8"), &LoadOptions::default()).unwrap();
    assert_eq!(
        run_logits(&sharded, Vec::new()).0,
        run_logits(&single, Vec::new()).0
    );
    assert!(merge_save(&base, &[(&adapter, 1.0)], &out, &opts, &mut |_, _| {}).is_err());
    assert!(merge_save(
        &base,
        &[(&adapter, 1.0)],
        &base,
        &MergeOptions {
            overwrite: true,
            ..opts
        },
        &mut |_, _| {}
    )
    .is_err());
    // No temporary directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&out_root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
    let _ = std::fs::remove_dir_all(&out_root);
}

fn run_logits(m: &Model, adapters: Vec<ActiveAdapter>) -> (Vec<f32>,) {
    let img = photo();
    let opts = CaptionOptions {
        adapters,
        ..Default::default()
    };
    let p = m.prepare(&[&img], &opts).unwrap();
    let lora = m.lora_set(&opts.adapters).unwrap();
    (m.prompt_logits_lora(&p, Logits::Last, 4, &lora)
        .unwrap()
        .to_vec1()
        .unwrap(),)
}

#[test]
fn saved_adapter_round_trips_with_the_same_keys() {
    let m = model();
    let src = fixture("adapters/connector_save");
    let a = m.load_adapter(&src).unwrap();
    let out = tmpdir("save").join("copy");
    a.save(&out).unwrap();
    let orig = candle_core::safetensors::load(
        src.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let saved = candle_core::safetensors::load(
        out.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut ok: Vec<&String> = orig.keys().collect();
    let mut sk: Vec<&String> = saved.keys().collect();
    ok.sort();
    sk.sort();
    assert_eq!(ok, sk);
    for (k, v) in &orig {
        let a: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = saved[k].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "{k}");
    }
    let again = m.load_adapter(&out).unwrap();
    assert_eq!(again.config.r, a.config.r);
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}
