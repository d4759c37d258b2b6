//! Idefics3 connector: pixel shuffle of the vision tokens, then a linear projection to the text width.

use candle_core::Tensor;

use crate::error::Result;
use crate::lora::LoraSet;
use crate::model::linear::Linear;
use crate::model::weights::Weights;
use crate::quant::QuantChoice;

/// `model.connector`: space-to-depth by `scale_factor`, then `modality_projection.proj`.
pub struct Connector {
    pub(crate) scale: usize,
    /// The projection (no bias).
    pub proj: Linear,
}

impl Connector {
    /// Loads `{prefix}.modality_projection.proj.weight` (quantised as it is read when `quant`
    /// is given).
    pub fn load(
        w: &Weights,
        prefix: &str,
        (vision_hidden, text_hidden): (usize, usize),
        scale: usize,
        quant: Option<QuantChoice>,
    ) -> Result<Self> {
        let proj = Linear::load(
            w,
            &format!("{prefix}.modality_projection.proj"),
            (vision_hidden * scale * scale, text_hidden),
            false,
            quant,
        )?;
        Ok(Self { scale, proj })
    }

    /// Maps `[n, seq, d]` vision states to `[n, seq/scale², text_hidden]`.
    pub fn forward(&self, x: &Tensor, lora: &LoraSet) -> Result<Tensor> {
        let x = pixel_shuffle(x, self.scale)?;
        self.proj.forward(&x, lora)
    }
}

/// The reference's pixel shuffle: `[n, h·w, d]` → `[n, h·w/s², d·s²]`, grouping s×s neighbours.
pub fn pixel_shuffle(x: &Tensor, s: usize) -> Result<Tensor> {
    let (n, seq, d) = x.dims3()?;
    let side = (seq as f64).sqrt() as usize;
    // Same sequence of views and permutes as transformers' Idefics3Connector.pixel_shuffle.
    let x = x.reshape((n, side, side / s, d * s))?;
    let x = x.permute((0, 2, 1, 3))?.contiguous()?;
    let x = x.reshape((n, side / s, side / s, d * s * s))?;
    let x = x.permute((0, 2, 1, 3))?.contiguous()?;
    Ok(x.reshape((n, seq / (s * s), d * s * s))?)
}
