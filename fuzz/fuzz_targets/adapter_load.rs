//! PEFT adapter directories checked against the tiny fixture model's modules.
//! Input: u16 length of adapter_config.json, the config, then adapter_model.safetensors.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;
use smolcap::lora::peft::{Adapter, ModuleShapes};
use smolcap::model::weights::Weights;

fn shapes() -> &'static ModuleShapes {
    static S: OnceLock<ModuleShapes> = OnceLock::new();
    S.get_or_init(|| {
        Weights::open(&common::fixture("tiny-idefics3"), DType::F32, &Device::Cpu)
            .expect("fixture")
            .linear_shapes()
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
    let (cfg, st) = data[2..].split_at(n);
    let d = common::scratch().join("adapter");
    let _ = std::fs::create_dir_all(&d);
    if std::fs::write(d.join("adapter_config.json"), cfg).is_err()
        || std::fs::write(d.join("adapter_model.safetensors"), st).is_err()
    {
        return;
    }
    if let Ok(a) = Adapter::load_with_shapes(&d, shapes(), &Device::Cpu) {
        let mut set = smolcap::lora::LoraSet::empty();
        let _ = a.add_to(&mut set, 0.5, DType::F32);
    }
});
