//! config.json, preprocessor_config.json and adapter_config.json parsing.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use smolcap::config::{ConfigLimits, ModelConfig};
use smolcap::lora::peft::AdapterConfig;
use smolcap::processor::image::ImageProcessorConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ImageProcessorConfig::from_json_str(text, "preprocessor_config.json");
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    if let Ok(c) = ModelConfig::from_json(&v, Path::new("config.json"), &ConfigLimits::default()) {
        let _ = c.image_seq_len();
    }
    if let Ok(a) = AdapterConfig::from_json(v, Path::new("adapter_config.json")) {
        for m in [
            "model.text_model.layers.0.self_attn.q_proj",
            "model.vision_model.encoder.layers.1.mlp.fc1",
        ] {
            let _ = a.targets(m);
            let _ = a.scale(m);
        }
    }
});
