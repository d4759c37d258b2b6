//! Model loading: dtypes, sharded checkpoints, and clear errors for broken model directories.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::DType;
use common::{fixture, max_abs_diff};
use smolcap::model::text::Logits;
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::{CaptionOptions, Error, LoadOptions, Model};

fn photo() -> SourceImage {
    SourceImage::open(
        fixture("images/photo_640x480.png"),
        &DecodeLimits::default(),
    )
    .unwrap()
}

fn last_logits(model: &Model) -> Vec<f32> {
    let img = photo();
    let p = model.prepare(&[&img], &CaptionOptions::default()).unwrap();
    model
        .prompt_logits(&p, Logits::Last, 4)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A scratch copy of the tiny model that a test may damage.
struct TempModel(PathBuf);

impl TempModel {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("smolcap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(fixture("tiny-idefics3")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn edit_config(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let p = self.0.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(dir: &Path) -> Error {
    match Model::load_dir(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let single = Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap();
    let sharded =
        Model::load_dir(&fixture("tiny-idefics3-sharded"), &LoadOptions::default()).unwrap();
    assert_eq!(last_logits(&single), last_logits(&sharded));
}

#[test]
fn bf16_checkpoint_and_bf16_compute() {
    let f32_model = Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap();
    let reference = last_logits(&f32_model);
    // bf16 weights upcast to f32: transformers' logits on the same checkpoint.
    let stored = Model::load_dir(&fixture("tiny-idefics3-bf16"), &LoadOptions::default()).unwrap();
    let want = &common::tensors("tiny-idefics3-bf16", "photo_640x480")["logits_last"].1;
    let err = max_abs_diff(&last_logits(&stored), want);
    assert!(
        err <= 1e-4,
        "bf16 checkpoint: max err {err} vs transformers"
    );
    // bf16 compute: same argmax on this well-separated prompt.
    let opts = LoadOptions {
        dtype: Some(DType::BF16),
        ..Default::default()
    };
    let bf = Model::load_dir(&fixture("tiny-idefics3"), &opts).unwrap();
    let got = last_logits(&bf);
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    assert_eq!(argmax(&got), argmax(&reference));
}

#[test]
fn missing_config_field_names_file_and_key() {
    let m = TempModel::new("nofield");
    m.edit_config(|v| {
        v["text_config"]
            .as_object_mut()
            .unwrap()
            .remove("hidden_size");
    });
    let e = load_err(m.path()).to_string();
    assert!(
        e.contains("config.json") && e.contains("text_config.hidden_size"),
        "{e}"
    );
}

#[test]
fn wrong_config_type_and_absurd_values() {
    let m = TempModel::new("badtype");
    m.edit_config(|v| v["vision_config"]["patch_size"] = serde_json::json!("eight"));
    let e = load_err(m.path()).to_string();
    assert!(e.contains("vision_config.patch_size"), "{e}");
    m.edit_config(|v| v["vision_config"]["patch_size"] = serde_json::json!(8));
    m.edit_config(|v| v["text_config"]["num_hidden_layers"] = serde_json::json!(1_000_000_000u64));
    let e = load_err(m.path()).to_string();
    assert!(e.contains("text_config.num_hidden_layers"), "{e}");
    m.edit_config(|v| v["model_type"] = serde_json::json!("llava"));
    assert!(matches!(load_err(m.path()), Error::Unsupported(_)));
}

#[test]
fn missing_tensor_and_wrong_shape_name_the_key() {
    let m = TempModel::new("shape");
    // More layers than the checkpoint has: the first missing tensor is named.
    m.edit_config(|v| v["text_config"]["num_hidden_layers"] = serde_json::json!(3));
    let e = load_err(m.path()).to_string();
    assert!(
        e.contains("missing tensor model.text_model.layers.2."),
        "{e}"
    );
    m.edit_config(|v| {
        v["text_config"]["num_hidden_layers"] = serde_json::json!(2);
        v["text_config"]["intermediate_size"] = serde_json::json!(96);
    });
    let e = load_err(m.path()).to_string();
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn pickle_only_and_corrupt_safetensors() {
    let m = TempModel::new("pickle");
    std::fs::remove_file(m.path().join("model.safetensors")).unwrap();
    std::fs::write(m.path().join("pytorch_model.bin"), b"PK\x03\x04").unwrap();
    let e = load_err(m.path());
    assert!(
        matches!(e, Error::Unsupported(_)) && e.to_string().contains("pytorch_model.bin"),
        "{e}"
    );
    std::fs::remove_file(m.path().join("pytorch_model.bin")).unwrap();
    let bytes = std::fs::read(fixture("tiny-idefics3/model.safetensors")).unwrap();
    std::fs::write(
        m.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = load_err(m.path()).to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn missing_tokenizer_is_an_io_error() {
    let m = TempModel::new("notok");
    std::fs::remove_file(m.path().join("tokenizer.json")).unwrap();
    let e = load_err(m.path());
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("tokenizer.json"),
        "{e}"
    );
}

#[test]
fn streaming_pieces_concatenate_to_the_caption_and_cancel_stops() {
    let model = Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap();
    let img = photo();
    let mut opts = CaptionOptions::default();
    opts.params.max_new_tokens = 24;
    opts.params.min_new_tokens = 24;
    let cancel = AtomicBool::new(false);
    let mut streamed = String::new();
    let caps = model
        .caption(&[vec![&img]], &opts, &cancel, &mut |_, piece| {
            streamed.push_str(piece);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(caps[0].token_ids.len(), 24);
    assert!(caps[0].text.starts_with(&streamed) && caps[0].text.len() - streamed.len() <= 4);
    // Stopping from the callback ends the caption early.
    let mut n = 0;
    let caps = model
        .caption(&[vec![&img]], &opts, &cancel, &mut |_, _| {
            n += 1;
            if n == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert!(caps[0].token_ids.len() < 24);
    // The cancel flag aborts the call.
    let mut seen = 0;
    let r = model.caption(&[vec![&img]], &opts, &cancel, &mut |_, _| {
        seen += 1;
        if seen == 2 {
            cancel.store(true, Ordering::Relaxed);
        }
        ControlFlow::Continue(())
    });
    assert!(matches!(r, Err(Error::Cancelled)));
}

#[test]
fn caption_nll_prefers_the_models_own_caption() {
    let model = Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap();
    let img = photo();
    let mut opts = CaptionOptions::default();
    opts.params.max_new_tokens = 8;
    let cancel = AtomicBool::new(false);
    let cap = model
        .caption(&[vec![&img]], &opts, &cancel, &mut |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .remove(0);
    let own = model.caption_nll(&[&img], &opts, &cap.text).unwrap();
    let other = model
        .caption_nll(&[&img], &opts, " a completely different sentence")
        .unwrap();
    assert!(own.mean.is_finite() && other.mean.is_finite());
    assert!(own.mean < other.mean, "own {own:?} vs other {other:?}");
}

#[test]
fn raw_rgb_and_rgba_buffers_with_stride_equal_the_decoded_image() {
    let model = Model::load_dir(&fixture("tiny-idefics3"), &LoadOptions::default()).unwrap();
    let img = photo();
    assert_eq!(img.channels(), 3);
    let (w, h) = (img.width(), img.height());
    let opts = CaptionOptions::default();
    let want = model.prepare(&[&img], &opts).unwrap();
    let limits = DecodeLimits::default();
    use smolcap::processor::image::RawLayout;
    for (layout, bpp) in [(RawLayout::Rgb8, 3usize), (RawLayout::Rgba8, 4usize)] {
        let stride = w * bpp + 13;
        let mut buf = vec![0u8; stride * h];
        for y in 0..h {
            for x in 0..w {
                let src = &img.data()[(y * w + x) * 3..(y * w + x) * 3 + 3];
                let dst = &mut buf[y * stride + x * bpp..y * stride + x * bpp + 3];
                dst.copy_from_slice(src);
                if bpp == 4 {
                    buf[y * stride + x * bpp + 3] = 255;
                }
            }
        }
        let raw = SourceImage::from_raw(&buf, w as u32, h as u32, stride, layout, &limits).unwrap();
        let got = model.prepare(&[&raw], &opts).unwrap();
        assert_eq!(got.pixel_values, want.pixel_values, "{layout:?}");
        // Too short a buffer and too small a stride are rejected.
        assert!(SourceImage::from_raw(
            &buf[..buf.len() - 20],
            w as u32,
            h as u32,
            stride,
            layout,
            &limits
        )
        .is_err());
        assert!(
            SourceImage::from_raw(&buf, w as u32, h as u32, w * bpp - 1, layout, &limits).is_err()
        );
    }
}
