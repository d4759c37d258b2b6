//! Learning end to end: a synthetic captioning set (coloured shapes rendered here, captions from
//! a template, held-out images) on which LoRA + connector training of the tiny random model must
//! raise held-out CIDEr from about 0 to a clearly higher value.
//!
//! CI runs the short version; `SMOLCAP_LEARN_STEPS=400 cargo test --release --test train_learn
//! -- --nocapture` gives the README figure.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use smolcap::metrics::{self, Suite};
use smolcap::processor::image::{DecodeLimits, RawLayout, SourceImage};
use smolcap::session::ActiveAdapter;
use smolcap::train::{CollateOptions, Example, LoraOptions, TrainOptions, Trainer};
use smolcap::{CaptionOptions, LoadOptions, Model};

const COLORS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [235, 210, 20]),
];
const SHAPES: [&str; 3] = ["circle", "square", "triangle"];

/// One 64×64 image: a shape of a colour at a random place and size on a noisy grey background.
fn render(color: usize, shape: usize, rng: &mut StdRng) -> SourceImage {
    let n = 64usize;
    let mut px = vec![0u8; n * n * 3];
    for p in px.chunks_mut(3) {
        let g = 150 + rng.random_range(0..40u8);
        p.copy_from_slice(&[g, g, g]);
    }
    let r = rng.random_range(12.0..22.0f32);
    let cx = rng.random_range(r..n as f32 - r);
    let cy = rng.random_range(r..n as f32 - r);
    let c = COLORS[color].1;
    for y in 0..n {
        for x in 0..n {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let inside = match shape {
                0 => dx * dx + dy * dy <= r * r,
                1 => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
                // Upward triangle: apex at the top, base at the bottom.
                _ => dy <= r * 0.8 && dy >= -r && dx.abs() <= (dy + r) * 0.55,
            };
            if inside {
                px[(y * n + x) * 3..(y * n + x) * 3 + 3].copy_from_slice(&c);
            }
        }
    }
    SourceImage::from_raw(
        &px,
        64,
        64,
        64 * 3,
        RawLayout::Rgb8,
        &DecodeLimits::default(),
    )
    .unwrap()
}

fn references(color: usize, shape: usize) -> Vec<String> {
    let (c, s) = (COLORS[color].0, SHAPES[shape]);
    vec![
        format!("a {c} {s}"),
        format!("a {c} {s} on a grey background"),
        format!("one {c} {s}"),
    ]
}

fn set(n: usize, seed: u64) -> Vec<(SourceImage, usize, usize)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let (c, s) = (i % COLORS.len(), (i / COLORS.len()) % SHAPES.len());
            (render(c, s, &mut rng), c, s)
        })
        .collect()
}

fn held_out_cider(
    model: &Model,
    adapter: Option<ActiveAdapter>,
    data: &[(SourceImage, usize, usize)],
) -> (f64, Vec<String>) {
    let mut opts = CaptionOptions::default();
    opts.params.max_new_tokens = 12;
    opts.adapters = adapter.into_iter().collect();
    let inputs: Vec<Vec<&SourceImage>> = data.iter().map(|d| vec![&d.0]).collect();
    let caps = model
        .caption(&inputs, &opts, &AtomicBool::new(false), &mut |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap();
    let cands: Vec<String> = caps.iter().map(|c| c.text.trim().to_string()).collect();
    let refs: Vec<Vec<String>> = data.iter().map(|d| references(d.1, d.2)).collect();
    let s = metrics::score(&cands, &refs, Suite::Seed).unwrap();
    (s.get("CIDEr").unwrap(), cands)
}

#[test]
fn training_raises_held_out_cider() {
    let steps: u64 = std::env::var("SMOLCAP_LEARN_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = Arc::new(
        Model::load_dir(
            &root.join("tests/fixtures/tiny-idefics3"),
            &LoadOptions::default(),
        )
        .unwrap(),
    );
    let train = set(96, 1);
    let held = set(24, 2);
    let (before, _) = held_out_cider(&model, None, &held);
    let lora = LoraOptions {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        train_connector: true,
        ..LoraOptions::default()
    };
    let opts = TrainOptions {
        lr: 5e-3,
        warmup_ratio: 0.1,
        total_steps: steps,
        micro_batch: 8,
        seed: 3,
        collate: CollateOptions {
            prompt: "Describe this image in detail.".into(),
            longest_edge: None,
            max_seq_len: 512,
        },
        ..TrainOptions::default()
    };
    let mut t = Trainer::new(model.clone(), lora, opts, None).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let t0 = std::time::Instant::now();
    let mut first = None;
    let mut last = 0.0;
    for step in 0..steps {
        let batch: Vec<Example> = (0..8)
            .map(|_| {
                let (img, c, s) = &train[rng.random_range(0..train.len())];
                let refs = references(*c, *s);
                Example {
                    image: img.clone(),
                    caption: refs[rng.random_range(0..refs.len())].clone(),
                    key: None,
                }
            })
            .collect();
        let st = t.step(&batch).unwrap();
        first.get_or_insert(st.loss);
        last = st.loss;
        if step % 10 == 0 || step + 1 == steps {
            eprintln!(
                "step {step}: loss {:.4} lr {:.5} grad_norm {:.3}",
                st.loss, st.lr, st.grad_norm
            );
        }
    }
    let train_s = t0.elapsed().as_secs_f64();
    let adapter = ActiveAdapter {
        adapter: Arc::new(t.adapter().unwrap()),
        weight: 1.0,
    };
    let (after, cands) = held_out_cider(&model, Some(adapter), &held);
    eprintln!(
        "{steps} steps of 8 in {train_s:.1} s: train loss {:.3} -> {last:.3}; held-out CIDEr {before:.3} -> {after:.3}",
        first.unwrap_or(f64::NAN)
    );
    eprintln!("held-out captions: {:?}", &cands[..6]);
    assert!(before < 0.05, "untrained CIDEr {before}");
    assert!(after > 0.5, "trained CIDEr only {after}");
}
