//! GGUF pairs: header parsing with its limits, the metadata read as the HF files it stands for,
//! then the whole model load (tensors read, dequantised, un-permuted) under tight limits.
//! Input: a little-endian u32 `n`, then `n` bytes of text model and the rest as the projector.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use smolcap::config::ConfigLimits;
use smolcap::gguf::file::parse_bytes;
use smolcap::gguf::meta::{hf_files_of, Src};
use smolcap::gguf::GgufLimits;
use smolcap::model_files::ModelFiles;
use smolcap::{LoadOptions, Model};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let rest = &data[4..];
    let (text, proj) = rest.split_at(n.min(rest.len()));
    let limits = GgufLimits {
        max_metadata_bytes: 1 << 22,
        ..GgufLimits::default()
    };
    if let (Ok(t), Ok(m)) = (parse_bytes(text, limits), parse_bytes(proj, limits)) {
        let st = Src {
            path: Path::new("t.gguf"),
            header: &t,
        };
        let sm = Src {
            path: Path::new("mmproj-t.gguf"),
            header: &m,
        };
        let _ = hf_files_of(&st, &sm);
    } else {
        return;
    }
    let dir = common::scratch();
    let (tp, mp) = (dir.join("t.gguf"), dir.join("mmproj-t.gguf"));
    if std::fs::write(&tp, text).is_err() || std::fs::write(&mp, proj).is_err() {
        return;
    }
    let Ok(files) = ModelFiles::open_gguf(&tp, &mp, 1 << 22) else {
        return;
    };
    let opts = LoadOptions {
        config_limits: ConfigLimits {
            max_hidden: 256,
            max_layers: 4,
            max_vocab: 4096,
            max_heads: 16,
            max_positions: 4096,
            max_image_size: 128,
            ..ConfigLimits::default()
        },
        ..LoadOptions::default()
    };
    let _ = Model::load_files(&files, &opts);
});
