//! Frozen linear projection `y = x Wᵀ + b` with a stable module name (for adapters and errors).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::kernels;
use crate::lora::{self, LoraSet};
use crate::model::weights::Weights;
use crate::quant::{QuantChoice, QuantTensor};

/// How a linear layer stores its frozen base weight; forward and backward run on any of them.
#[derive(Debug, Clone)]
pub enum Weight {
    /// A dense `[out, in]` tensor (on the CPU in f32 stored transposed for the products).
    Dense(Tensor),
    /// Quantised (NF4 for the QLoRA base, a GGML format for quantised inference), dequantised
    /// tile by tile inside each product; the f32 weight never exists whole. `device` is where
    /// the products run.
    Quantized {
        /// The quantised weight `[out, in]`.
        q: Arc<QuantTensor>,
        /// The compute device.
        device: Device,
        /// The compute dtype (of the inputs and outputs).
        dtype: DType,
    },
}

impl Weight {
    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Weight::Dense(t) => {
                let d = t.dims();
                (d[0], d.get(1).copied().unwrap_or(0))
            }
            Weight::Quantized { q, .. } => q.shape(),
        }
    }

    /// The compute device.
    pub fn device(&self) -> &Device {
        match self {
            Weight::Dense(t) => t.device(),
            Weight::Quantized { device, .. } => device,
        }
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Weight::Dense(t) => t.dtype(),
            Weight::Quantized { dtype, .. } => *dtype,
        }
    }

    /// Bytes this weight keeps resident.
    pub fn resident_bytes(&self) -> usize {
        match self {
            Weight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Weight::Quantized { q, .. } => q.resident_bytes(),
        }
    }

    /// The weight as a dense `[out, in]` tensor in the compute dtype (a dequantised copy for a
    /// quantised weight: for merging and for devices without a tiled kernel).
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.clone()),
            Weight::Quantized { q, device, dtype } => Ok(q.dequantize(device)?.to_dtype(*dtype)?),
        }
    }
}

/// The storage of the `[rows, cols]` matrix `name`, with the device and dtype the products run
/// in: with no `choice`, as the file stores it (`None`: dense; a GGUF's GGML format is kept);
/// with one, quantised as it says (a GGUF tensor already in that format is kept as stored).
pub(crate) fn load_storage(
    w: &Weights,
    name: &str,
    (rows, cols): (usize, usize),
    choice: Option<QuantChoice>,
) -> Result<Option<(QuantTensor, Device, DType)>> {
    let placed = |q| Some((q, w.device().clone(), w.dtype()));
    let stored = w.stored_quantized(name, rows, cols)?;
    match (choice, stored) {
        (None, stored) => Ok(stored.and_then(placed)),
        (Some(QuantChoice::Ggml(k)), Some(q)) if q.format_name() == k.for_cols(cols).name() => {
            Ok(placed(q))
        }
        (Some(c), _) => load_quantized(w, name, (rows, cols), c).map(Some),
    }
}

/// Reads the `[rows, cols]` tensor `name` and quantises it as `choice` says, returning it with
/// the device and dtype the products run in.
pub(crate) fn load_quantized(
    w: &Weights,
    name: &str,
    (rows, cols): (usize, usize),
    choice: QuantChoice,
) -> Result<(QuantTensor, Device, DType)> {
    let t = w.get(name, &[rows, cols])?;
    let (device, dtype) = (t.device().clone(), t.dtype());
    let f = t
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    drop(t);
    Ok((
        QuantTensor::quantize(&f, rows, cols, choice)?,
        device,
        dtype,
    ))
}

/// A frozen linear layer loaded from the checkpoint.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]` base weight.
    pub weight: Weight,
    /// Optional `[out]` bias.
    pub bias: Option<Tensor>,
    /// Checkpoint module path, e.g. `model.text_model.layers.0.self_attn.q_proj`.
    pub name: String,
}

impl Linear {
    /// Loads `{name}.weight` (and `{name}.bias` when `bias`) with the given sizes; with
    /// `quant`, the weight is quantised as it is read and only the quantised form is kept.
    pub fn load(
        w: &Weights,
        name: &str,
        (in_dim, out_dim): (usize, usize),
        bias: bool,
        quant: Option<QuantChoice>,
    ) -> Result<Self> {
        let wname = format!("{name}.weight");
        let weight = match load_storage(w, &wname, (out_dim, in_dim), quant)? {
            None => Weight::Dense(w.get_linear_weight(&wname, out_dim, in_dim)?),
            Some((q, device, dtype)) => Weight::Quantized {
                q: Arc::new(q),
                device,
                dtype,
            },
        };
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

    /// A layer over an existing dense weight (e.g. an output head tied to the embedding).
    pub fn dense(weight: Tensor, name: &str) -> Self {
        Self {
            weight: Weight::Dense(weight),
            bias: None,
            name: name.to_string(),
        }
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.weight.dims().0
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.weight.dims().1
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
                (Some(w), None) => weights.push(w),
                _ => break,
            }
        }
        if weights.len() != layers.len() {
            return layers.iter().map(|l| l.forward(x, lora)).collect();
        }
        let ys = kernels::linear_many(&x2, &weights)?;
        layers
            .iter()
            .zip(ys)
            .map(|(l, y)| l.finish(&x2, y, &dims, lora))
            .collect()
    }

    /// The dense weight and the bias in use: a merged LoRA replacement's, else this layer's own
    /// (`None` for the weight when it is not dense).
    fn weight_and_bias<'a>(
        &'a self,
        lora: &'a LoraSet,
    ) -> (Option<&'a Tensor>, Option<&'a Tensor>) {
        match lora.replacement(&self.name) {
            Some((w, b)) => (Some(w), b.as_ref()),
            None => match &self.weight {
                Weight::Dense(w) => (Some(w), self.bias.as_ref()),
                Weight::Quantized { .. } => (None, self.bias.as_ref()),
            },
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
        let y = match (weight, &self.weight) {
            (Some(w), _) => kernels::linear(&x2, w, bias, res2.as_ref())?,
            (None, Weight::Quantized { q, .. }) => {
                kernels::linear_quant(&x2, q, bias, res2.as_ref())?
            }
            (None, Weight::Dense(w)) => kernels::linear(&x2, w, bias, res2.as_ref())?,
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
        kernels::layer_norm(x, &self.weight, &self.bias, self.eps)
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
        kernels::rms_norm(x, &self.weight, self.eps)
    }
}
