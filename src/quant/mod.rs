//! Quantised storage for frozen base weights (QLoRA).

pub mod nf4;

pub use nf4::{Nf4Absmax, Nf4Config, Nf4Tensor, NF4_LEVELS};
