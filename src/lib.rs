//! smolcap: SmolVLM (Idefics3) captioning, LoRA fine-tuning, merging and caption metrics.

pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
#[allow(non_camel_case_types)]
pub mod ffi;
pub mod fsio;
pub mod generate;
pub mod hub;
pub mod kernels;
pub mod lora;
pub mod merge;
pub mod metrics;
pub mod model;
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
