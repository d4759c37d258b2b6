//! smolcap: SmolVLM (Idefics3) captioning, LoRA fine-tuning, merging and caption metrics.

pub mod config;
pub mod device;
pub mod error;
pub mod generate;
pub mod hub;
pub mod model;
pub mod processor;
pub mod session;
pub mod tokenizer;

pub use error::{Error, Result};
pub use session::{Caption, CaptionNll, CaptionOptions, LoadOptions, Model, Timings};
