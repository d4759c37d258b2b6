//! Safetensors files: header parsing and validation, then reading every tensor.
#![no_main]

#[path = "common.rs"]
mod common;

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;
use smolcap::model::weights::Weights;

fuzz_target!(|data: &[u8]| {
    let p = common::scratch().join("model.safetensors");
    if std::fs::write(&p, data).is_err() {
        return;
    }
    if let Ok(w) = Weights::from_files_limited(&[p], DType::F32, &Device::Cpu, 1 << 20) {
        let names: Vec<String> = w.names().map(String::from).collect();
        for n in &names {
            let _ = w.get_any(n);
            let _ = w.raw(n);
            if let Some(s) = w.shape(n) {
                let _ = w.get(n, &s);
            }
        }
        let _ = w.linear_shapes();
    }
});
