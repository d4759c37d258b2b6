//! Training parity: smolcap's trainer against torch + peft on the tiny fixture
//! (tests/fixtures/train/*, written by tools/reference/train_ref.py).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde_json::Value;
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::train::{CollateOptions, Example, LoraOptions, TrainOptions, Trainer};
use smolcap::{LoadOptions, Model};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> Arc<Model> {
    model_with(LoadOptions::default())
}

fn model_with(opts: LoadOptions) -> Arc<Model> {
    Arc::new(Model::load_dir(&root().join("tests/fixtures/tiny-idefics3"), &opts).unwrap())
}

fn examples(list: &Value) -> Vec<Example> {
    keyed_examples(list, false)
}

/// The examples of one step; with `keyed`, each carries its image's key (feature cache).
fn keyed_examples(list: &Value, keyed: bool) -> Vec<Example> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| Example {
            image: SourceImage::open(
                root()
                    .join("tests/fixtures/images")
                    .join(e["image"].as_str().unwrap()),
                &DecodeLimits::default(),
            )
            .unwrap(),
            caption: e["caption"].as_str().unwrap().to_string(),
            key: keyed.then(|| {
                e["image"]
                    .as_str()
                    .unwrap()
                    .bytes()
                    .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
            }),
        })
        .collect()
}

fn options(exp: &Value) -> TrainOptions {
    TrainOptions {
        lr: exp["lr"].as_f64().unwrap(),
        weight_decay: exp["weight_decay"].as_f64().unwrap(),
        warmup_ratio: exp["warmup_ratio"].as_f64().unwrap(),
        total_steps: exp["total_steps"].as_u64().unwrap(),
        max_grad_norm: exp["max_grad_norm"].as_f64().unwrap(),
        micro_batch: exp["micro_batch"].as_u64().unwrap() as usize,
        qlora: exp["qlora"].as_bool().unwrap(),
        collate: CollateOptions {
            prompt: exp["prompt"].as_str().unwrap().to_string(),
            longest_edge: None,
            max_seq_len: 4096,
        },
        ..TrainOptions::default()
    }
}

fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Runs one reference case; returns (worst relative loss error, worst abs LoRA weight error).
fn run_case(name: &str, recompute: bool) -> (f64, f32) {
    run_case_keyed(name, recompute, false)
}

fn run_case_keyed(name: &str, recompute: bool, keyed: bool) -> (f64, f32) {
    run_case_on(name, recompute, keyed, model()).0
}

/// Runs the case `name` on `model`; returns the worst errors and the trainer's resident bytes.
fn run_case_on(name: &str, recompute: bool, keyed: bool, model: Arc<Model>) -> ((f64, f32), usize) {
    let dir = root().join("tests/fixtures/train").join(name);
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut opts = options(&exp);
    opts.recompute = recompute;
    let lora = LoraOptions {
        dropout: 0.0,
        ..LoraOptions::default()
    };
    let mut t = Trainer::new(model, lora, opts, Some(&dir.join("init"))).unwrap();
    let mut worst_loss = 0f64;
    for (i, s) in exp["steps_log"].as_array().unwrap().iter().enumerate() {
        let stats = t.step(&keyed_examples(&s["examples"], keyed)).unwrap();
        let want = s["loss"].as_f64().unwrap();
        let rel = ((stats.loss - want) / want).abs();
        let norm_rel = ((stats.grad_norm - s["grad_norm"].as_f64().unwrap())
            / s["grad_norm"].as_f64().unwrap())
        .abs();
        eprintln!(
            "{name} step {i}: loss {:.7} vs {want:.7} (rel {rel:.2e}), grad norm rel {norm_rel:.2e}, lr {} vs {}",
            stats.loss,
            stats.lr,
            s["lr"].as_f64().unwrap()
        );
        assert_eq!(stats.tokens as u64, s["tokens"].as_u64().unwrap());
        assert!((stats.lr - s["lr"].as_f64().unwrap()).abs() < 1e-12);
        assert!(rel < 1e-5, "{name} step {i}: loss rel error {rel:e}");
        assert!(
            norm_rel < 1e-4,
            "{name} step {i}: grad norm rel error {norm_rel:e}"
        );
        worst_loss = worst_loss.max(rel);
    }
    let want = match std::env::var("SMOLCAP_TRAIN_FINAL") {
        Ok(p) => load_tensors(Path::new(&p)),
        Err(_) => load_tensors(&dir.join("final/adapter_model.safetensors")),
    };
    let tmp = tempdir(name);
    t.save_adapter(&tmp.join("adapter")).unwrap();
    let got = load_tensors(&tmp.join("adapter/adapter_model.safetensors"));
    assert_eq!(
        got.keys().collect::<std::collections::BTreeSet<_>>(),
        want.keys().collect::<std::collections::BTreeSet<_>>(),
        "saved adapter keys differ from peft's"
    );
    let mut worst_w = 0f32;
    for (k, w) in &want {
        let d = (got[k].clone() - w.to_dtype(candle_core::DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        if d > 5e-6 {
            eprintln!("  {k}: max abs diff {d:.2e}");
        }
        worst_w = worst_w.max(d);
    }
    eprintln!(
        "{name}: worst loss rel error {worst_loss:.2e}, worst weight abs error {worst_w:.2e}"
    );
    assert!(worst_w < 1e-5, "{name}: weights differ by {worst_w}");
    let _ = std::fs::remove_dir_all(&tmp);
    ((worst_loss, worst_w), t.resident_weight_bytes())
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn text_lora_matches_peft() {
    run_case("text", false);
}

#[test]
fn text_lora_with_recompute_matches_peft() {
    run_case("text", true);
}

#[test]
fn text_lora_with_cached_image_features_matches_peft() {
    // Images repeat across steps: later steps take their features from the cache.
    run_case_keyed("text", false, true);
}

#[test]
fn vision_lora_and_connector_match_peft() {
    run_case("vision_connector", false);
}

#[test]
fn qlora_matches_nf4_reference() {
    run_case("qlora", false);
}

#[test]
fn qlora_on_a_model_loaded_as_nf4_matches_the_reference_and_holds_less() {
    // Loaded straight to NF4, the decoder's f32 weights are never held: the same run, fewer
    // resident bytes than quantising a copy of a dense model's weights.
    let nf4 = model_with(LoadOptions {
        nf4_decoder: true,
        ..LoadOptions::default()
    });
    let (_, on_nf4) = run_case_on("qlora", false, false, nf4.clone());
    let (_, on_dense) = run_case_on("qlora", false, false, model());
    let dense_model = model().network().resident_weight_bytes();
    eprintln!("resident weight bytes: NF4-loaded {on_nf4}, dense + NF4 copy {on_dense}, dense model {dense_model}");
    assert!(on_nf4 < dense_model, "{on_nf4} >= {dense_model}");
    assert!(
        on_dense > dense_model,
        "the NF4 copy is not counted: {on_dense}"
    );
    assert_eq!(nf4.network().resident_weight_bytes(), on_nf4);
}

/// The examples of the `text` case, step by step.
fn text_steps() -> (Value, Vec<Vec<Example>>) {
    let dir = root().join("tests/fixtures/train/text");
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let steps = exp["steps_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| examples(&s["examples"]))
        .collect();
    (exp, steps)
}

fn adapter_bytes(t: &Trainer, tag: &str) -> Vec<u8> {
    let d = tempdir(tag);
    t.save_adapter(&d.join("a")).unwrap();
    let b = std::fs::read(d.join("a/adapter_model.safetensors")).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    b
}

#[test]
fn resume_continues_the_exact_run() {
    let (exp, steps) = text_steps();
    let init = root().join("tests/fixtures/train/text/init");
    // Dropout on, so the per-step random masks must be reproduced after resuming too.
    let lora = LoraOptions {
        dropout: 0.1,
        ..LoraOptions::default()
    };
    let m = model();
    let mut a = Trainer::new(m.clone(), lora.clone(), options(&exp), Some(&init)).unwrap();
    let full: Vec<f64> = steps.iter().map(|ex| a.step(ex).unwrap().loss).collect();

    let mut b = Trainer::new(m.clone(), lora, options(&exp), Some(&init)).unwrap();
    let mut part: Vec<f64> = steps[..2]
        .iter()
        .map(|ex| b.step(ex).unwrap().loss)
        .collect();
    let ck = tempdir("resume").join("ck");
    b.save_checkpoint(&ck, &serde_json::json!({"next_example": 8}))
        .unwrap();
    drop(b);
    let (mut c, data) = Trainer::resume(m, &ck).unwrap();
    assert_eq!(data["next_example"], 8);
    assert_eq!(c.step_count(), 2);
    part.extend(steps[2..].iter().map(|ex| c.step(ex).unwrap().loss));
    eprintln!("uninterrupted {full:?}\nresumed       {part:?}");
    assert_eq!(full, part, "a resumed run must give the same losses");
    assert_eq!(adapter_bytes(&a, "ra"), adapter_bytes(&c, "rc"));
    let _ = std::fs::remove_dir_all(ck.parent().unwrap());
}

#[test]
fn non_finite_steps_are_skipped_with_parameters_unchanged() {
    let (exp, steps) = text_steps();
    let init = root().join("tests/fixtures/train/text/init");
    let mut opts = options(&exp);
    // An absurd learning rate blows the weights up after the first real update.
    opts.lr = 1e30;
    opts.warmup_ratio = 0.0;
    opts.max_grad_norm = 0.0;
    opts.max_bad_steps = 2;
    let lora = LoraOptions {
        dropout: 0.0,
        ..LoraOptions::default()
    };
    let mut t = Trainer::new(model(), lora, opts, Some(&init)).unwrap();
    let s0 = t.step(&steps[0]).unwrap();
    assert!(!s0.skipped && s0.loss.is_finite());
    let before = adapter_bytes(&t, "nan0");
    let s1 = t.step(&steps[1]).unwrap();
    assert!(s1.skipped, "loss {} norm {}", s1.loss, s1.grad_norm);
    assert_eq!(t.skipped_steps(), 1);
    assert_eq!(
        before,
        adapter_bytes(&t, "nan1"),
        "a skipped step changed the parameters"
    );
    let e = t.step(&steps[2]).unwrap_err();
    assert!(matches!(e, smolcap::Error::Numeric(_)), "{e}");
    assert_eq!(before, adapter_bytes(&t, "nan2"));
}
