//! Frozen linear projection `y = x Wᵀ + b` with a stable module name (for adapters and errors).

use candle_core::Tensor;

use crate::error::Result;
use crate::lora::{self, LoraSet};
use crate::model::weights::Weights;

/// A frozen linear layer loaded from the checkpoint.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]` weight.
    pub weight: Tensor,
    /// Optional `[out]` bias.
    pub bias: Option<Tensor>,
    /// Checkpoint module path, e.g. `model.text_model.layers.0.self_attn.q_proj`.
    pub name: String,
}

impl Linear {
    /// Loads `{name}.weight` (and `{name}.bias` when `bias`) with the given sizes.
    pub fn load(
        w: &Weights,
        name: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = w.get_linear_weight(&format!("{name}.weight"), out_dim, in_dim)?;
        let bias = if bias {
            Some(w.get(&format!("{name}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            name: name.to_string(),
        })
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Applies the layer (plus any LoRA update for it in `lora`) to `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor, lora: &LoraSet) -> Result<Tensor> {
        self.forward_impl(x, None, lora)
    }

    /// `[layer(x) for layer in layers]` (plus their LoRA updates), for projections of the same
    /// input: a few rows (decode) on the CPU in f32 run as one parallel pass over all the
    /// weights, anything else one layer at a time.
    pub fn forward_many(layers: &[&Linear], x: &Tensor, lora: &LoraSet) -> Result<Vec<Tensor>> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let mut weights = Vec::with_capacity(layers.len());
        for l in layers {
            match l.weight_and_bias(lora) {
                (w, None) => weights.push(w),
                (_, Some(_)) => break,
            }
        }
        let fused = if weights.len() == layers.len() {
            crate::model::ops::linear_many(&x2, &weights)?
        } else {
            None
        };
        let Some(ys) = fused else {
            return layers.iter().map(|l| l.forward(x, lora)).collect();
        };
        layers
            .iter()
            .zip(ys)
            .map(|(l, y)| l.finish(&x2, y, &dims, lora))
            .collect()
    }

    /// The weight and bias in use: a merged LoRA replacement's, else this layer's own.
    fn weight_and_bias<'a>(&'a self, lora: &'a LoraSet) -> (&'a Tensor, Option<&'a Tensor>) {
        match lora.replacement(&self.name) {
            Some((w, b)) => (w, b.as_ref()),
            None => (&self.weight, self.bias.as_ref()),
        }
    }

    /// Adds the LoRA updates to the product `y` of the 2-D input `x2` and restores the input's
    /// leading dimensions `dims`.
    fn finish(&self, x2: &Tensor, mut y: Tensor, dims: &[usize], lora: &LoraSet) -> Result<Tensor> {
        let pairs = lora.pairs(&self.name);
        if !pairs.is_empty() {
            y = lora::apply(x2, y, pairs)?;
        }
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = self.out_dim();
        Ok(y.reshape(out_dims)?)
    }

    /// `residual + layer(x)`, the sum formed inside the product on the CPU (one pass fewer).
    pub fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
        lora: &LoraSet,
    ) -> Result<Tensor> {
        self.forward_impl(x, Some(residual), lora)
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        lora: &LoraSet,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let (weight, bias) = self.weight_and_bias(lora);
        // A 2-D matmul against the transposed weight avoids a broadcasted batch matmul.
        let x2 = x.reshape((rows, in_dim))?;
        let res2 = match residual {
            Some(r) => Some(r.reshape((rows, self.out_dim()))?),
            None => None,
        };
        let y = match crate::model::ops::linear(&x2, weight, bias, res2.as_ref())? {
            Some(y) => y,
            None => {
                let mut y = x2.matmul(&weight.t()?)?;
                if let Some(b) = bias {
                    y = y.broadcast_add(b)?;
                }
                if let Some(r) = &res2 {
                    y = (y + r)?;
                }
                y
            }
        };
        self.finish(&x2, y, &dims, lora)
    }
}

/// LayerNorm with weight and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f32,
}

impl LayerNorm {
    /// Loads `{name}.weight` and `{name}.bias` of size `dim`.
    pub fn load(w: &Weights, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{name}.weight"), &[dim])?,
            bias: w.get(&format!("{name}.bias"), &[dim])?,
            eps: eps as f32,
        })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

/// RMSNorm (Llama) with weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub(crate) weight: Tensor,
    pub(crate) eps: f32,
}

impl RmsNorm {
    /// Loads `{name}.weight` of size `dim`.
    pub fn load(w: &Weights, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{name}.weight"), &[dim])?,
            eps: eps as f32,
        })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}
