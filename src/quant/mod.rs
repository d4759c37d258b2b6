//! Quantised storage for frozen base weights: NF4 (the QLoRA base) and llama.cpp's GGML formats
//! (quantised inference), behind one type the linear layer and the kernels take.

pub mod ggml;
pub mod nf4;
pub mod spec;

use candle_core::{Device, Tensor};

pub use ggml::{GgmlKind, GgmlTensor};
pub use nf4::{Nf4Absmax, Nf4Config, Nf4Tensor, NF4_LEVELS};
pub use spec::{QuantChoice, QuantSpec};

use crate::error::Result;

/// A `[rows, cols]` weight in a quantised storage, dequantised a few rows at a time.
#[derive(Debug, Clone)]
pub enum QuantTensor {
    /// bitsandbytes' NF4 (QLoRA).
    Nf4(Nf4Tensor),
    /// A GGML block format.
    Ggml(GgmlTensor),
}

impl QuantTensor {
    /// Quantises the row-major `[rows, cols]` matrix `data` as `choice` says (a GGML format that
    /// does not divide the rows falls back as llama.cpp's does, see [`GgmlKind::for_cols`]).
    pub fn quantize(data: &[f32], rows: usize, cols: usize, choice: QuantChoice) -> Result<Self> {
        Ok(match choice {
            QuantChoice::Nf4(cfg) => QuantTensor::Nf4(Nf4Tensor::quantize(data, rows, cols, cfg)?),
            QuantChoice::Ggml(k) => {
                QuantTensor::Ggml(GgmlTensor::quantize(data, rows, cols, k.for_cols(cols))?)
            }
        })
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            QuantTensor::Nf4(q) => q.shape(),
            QuantTensor::Ggml(q) => q.shape(),
        }
    }

    /// The storage's name (`nf4`, `q4_0`, …).
    pub fn format_name(&self) -> &'static str {
        match self {
            QuantTensor::Nf4(_) => "nf4",
            QuantTensor::Ggml(q) => q.kind().name(),
        }
    }

    /// Bytes held for the weight.
    pub fn resident_bytes(&self) -> usize {
        match self {
            QuantTensor::Nf4(q) => q.resident_bytes(),
            QuantTensor::Ggml(q) => q.resident_bytes(),
        }
    }

    /// Dequantises rows `[r0, r1)` into `out`, which must hold `(r1 - r0) * cols` values.
    pub fn dequantize_rows_into(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        match self {
            QuantTensor::Nf4(q) => q.dequantize_rows_into(r0, r1, out),
            QuantTensor::Ggml(q) => q.dequantize_rows_into(r0, r1, out),
        }
    }

    /// The whole matrix as a float32 `[rows, cols]` tensor on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        match self {
            QuantTensor::Nf4(q) => q.dequantize(device),
            QuantTensor::Ggml(q) => q.dequantize(device),
        }
    }
}
