//! smolcap: SmolVLM (Idefics3) captioning, LoRA fine-tuning, merging and caption metrics.

// Weights are read with Unix `pread` (std::os::unix::fs::FileExt in src/model/weights.rs): say so
// up front instead of failing deep inside that file.
#[cfg(not(unix))]
compile_error!(
    "smolcap supports Unix targets only (Linux; macOS untested): weights are read with pread. \
     Windows is not supported yet (see docs/DESIGN.md, \"Platforms and toolchain\")."
);

pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
#[allow(non_camel_case_types)]
pub mod ffi;
pub mod fsio;
pub mod generate;
pub mod gguf;
pub mod hub;
pub mod kernels;
pub mod lora;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod model_files;
pub mod processor;
pub mod quant;
pub mod session;
pub mod shard;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use session::{
    ActiveAdapter, Caption, CaptionNll, CaptionOptions, LoadOptions, Model, Timings,
};
