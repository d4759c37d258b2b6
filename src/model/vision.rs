//! SigLIP vision tower of Idefics3 (`model.vision_model`).

use candle_core::Tensor;

use crate::config::{Activation, VisionConfig};
use crate::error::{Error, Result};
use crate::kernels;
use crate::lora::LoraSet;
use crate::model::linear::{LayerNorm, Linear};
use crate::model::weights::Weights;
use crate::quant::QuantChoice;

/// Applies an activation function.
pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => candle_nn::ops::silu(x)?,
        Activation::GeluTanh => kernels::gelu_tanh(x)?,
        Activation::Gelu => x.gelu_erf()?,
    })
}

pub(crate) struct Attention {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) out: Linear,
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
}

pub(crate) struct Mlp {
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) act: Activation,
}

pub(crate) struct Layer {
    pub(crate) ln1: LayerNorm,
    pub(crate) attn: Attention,
    pub(crate) ln2: LayerNorm,
    pub(crate) mlp: Mlp,
}

/// The vision encoder: patch embedding, position embedding, encoder layers, final LayerNorm.
pub struct VisionModel {
    cfg: VisionConfig,
    /// Patch embedding as a `[hidden, 3·p·p]` matrix (a stride-p convolution is a matmul).
    patch_w: Tensor,
    patch_b: Tensor,
    pos: Tensor,
    pub(crate) layers: Vec<Layer>,
    pub(crate) post_ln: LayerNorm,
}

impl VisionModel {
    /// Loads the tower from `prefix` (e.g. `model.vision_model`), the encoder layers' linear
    /// weights quantised as they are read when `quant` is given.
    pub fn load(
        w: &Weights,
        prefix: &str,
        cfg: &VisionConfig,
        quant: Option<QuantChoice>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        let c = cfg.num_channels;
        let patch_w = w
            .get(
                &format!("{prefix}.embeddings.patch_embedding.weight"),
                &[h, c, p, p],
            )?
            .reshape((h, c * p * p))?;
        let patch_b = w.get(&format!("{prefix}.embeddings.patch_embedding.bias"), &[h])?;
        let n = cfg.patches_per_side() * cfg.patches_per_side();
        let pos = w.get(
            &format!("{prefix}.embeddings.position_embedding.weight"),
            &[n, h],
        )?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lp = format!("{prefix}.encoder.layers.{i}");
            let lin = |name: &str, i_dim, o_dim| {
                Linear::load(w, &format!("{lp}.{name}"), (i_dim, o_dim), true, quant)
            };
            layers.push(Layer {
                ln1: LayerNorm::load(w, &format!("{lp}.layer_norm1"), h, cfg.layer_norm_eps)?,
                attn: Attention {
                    q: lin("self_attn.q_proj", h, h)?,
                    k: lin("self_attn.k_proj", h, h)?,
                    v: lin("self_attn.v_proj", h, h)?,
                    out: lin("self_attn.out_proj", h, h)?,
                    heads: cfg.num_attention_heads,
                    head_dim: cfg.head_dim(),
                },
                ln2: LayerNorm::load(w, &format!("{lp}.layer_norm2"), h, cfg.layer_norm_eps)?,
                mlp: Mlp {
                    fc1: lin("mlp.fc1", h, cfg.intermediate_size)?,
                    fc2: lin("mlp.fc2", cfg.intermediate_size, h)?,
                    act: cfg.hidden_act,
                },
            });
        }
        let post_ln = LayerNorm::load(
            w,
            &format!("{prefix}.post_layernorm"),
            h,
            cfg.layer_norm_eps,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_w,
            patch_b,
            pos,
            layers,
            post_ln,
        })
    }

    /// The tower's tensors other than its linear layers (embeddings, norms).
    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.patch_w, &self.patch_b, &self.pos];
        for l in &self.layers {
            v.extend([&l.ln1.weight, &l.ln1.bias, &l.ln2.weight, &l.ln2.bias]);
        }
        v.extend([&self.post_ln.weight, &self.post_ln.bias]);
        v
    }

    /// Every linear layer of the tower.
    pub fn linears(&self) -> Vec<&Linear> {
        let mut v = Vec::with_capacity(self.layers.len() * 6);
        for l in &self.layers {
            v.extend([
                &l.attn.q,
                &l.attn.k,
                &l.attn.v,
                &l.attn.out,
                &l.mlp.fc1,
                &l.mlp.fc2,
            ]);
        }
        v
    }

    /// Encodes `[n, 3, S, S]` full tiles into `[n, patches, hidden]` (after the final LayerNorm).
    pub fn forward(&self, pixel_values: &Tensor, lora: &LoraSet) -> Result<Tensor> {
        let n = pixel_values.dim(0)?;
        // Tiles are independent. On the CPU they run one per task: each activation stays small
        // enough for the allocator to reuse memory (whole-batch buffers of hundreds of MB are
        // fresh mappings each op: page faults, TLB shootdowns), and threads working on different
        // tiles mostly run their kernels' tasks themselves instead of meeting at every matmul.
        if n > 1 && kernels::fast_device(pixel_values) {
            let outs = kernels::per_item(n, pixel_values, |i| {
                self.forward_batch(&pixel_values.narrow(0, i, 1)?, lora)
            })?;
            return Ok(Tensor::cat(&outs, 0)?);
        }
        self.forward_batch(pixel_values, lora)
    }

    fn forward_batch(&self, pixel_values: &Tensor, lora: &LoraSet) -> Result<Tensor> {
        let mut h = self.embed(pixel_values)?;
        for layer in &self.layers {
            let x = layer.ln1.forward(&h)?;
            let o = layer.attn.heads_output(&x, lora)?;
            let h1 = layer.attn.out.forward_residual(&o, &h, lora)?;
            let x = layer.ln2.forward(&h1)?;
            let x = layer.mlp.fc1.forward(&x, lora)?;
            let x = activate(&x, layer.mlp.act)?;
            h = layer.mlp.fc2.forward_residual(&x, &h1, lora)?;
        }
        self.post_ln.forward(&h)
    }

    /// Patch and position embeddings of `[n, 3, S, S]` full tiles: `[n, patches, hidden]`.
    pub fn embed(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (n, c, hgt, wid) = pixel_values.dims4()?;
        let s = self.cfg.image_size;
        if c != self.cfg.num_channels || hgt != s || wid != s {
            return Err(Error::InvalidArgument(format!(
                "vision tower expects [n, {}, {s}, {s}] tiles, got {:?}",
                self.cfg.num_channels,
                pixel_values.dims()
            )));
        }
        let p = self.cfg.patch_size;
        let g = s / p;
        let hidden = self.cfg.hidden_size;
        let mut x = pixel_values.to_dtype(self.patch_w.dtype())?;
        if g * p != s {
            // The convolution has no padding: the last s % p rows and columns meet no patch.
            x = x.narrow(2, 0, g * p)?.narrow(3, 0, g * p)?.contiguous()?;
        }
        // [n, c, g, p, g, p] -> [n, g, g, c, p, p]: each row is one patch in (c, ky, kx) order,
        // the order of the convolution kernel.
        let patches = x
            .reshape((n, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n * g * g, c * p * p))?;
        let emb = patches
            .matmul(&self.patch_w.t()?)?
            .broadcast_add(&self.patch_b)?
            .reshape((n, g * g, hidden))?;
        Ok(emb.broadcast_add(&self.pos.unsqueeze(0)?)?)
    }
}

impl Attention {
    /// Attention of `x` `[n, l, hidden]` before the output projection: `[n, l, heads·head_dim]`.
    fn heads_output(&self, x: &Tensor, lora: &LoraSet) -> Result<Tensor> {
        let (n, l, _) = x.dims3()?;
        let (h, hd) = (self.heads, self.head_dim);
        let q = self.q.forward(x, lora)?;
        let k = self.k.forward(x, lora)?;
        let v = self.v.forward(x, lora)?;
        kernels::full_attention(&q, &k, &v, (n, l, h, hd), (hd as f64).powf(-0.5))
    }
}
