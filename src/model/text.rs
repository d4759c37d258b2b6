//! Llama decoder of Idefics3 (`model.text_model` + `lm_head`) with a preallocated KV cache.

use candle_core::{DType, Device, Tensor};

use crate::config::{Activation, TextConfig};
use crate::error::{Error, Result};
use crate::kernels;
use crate::kernels::cached_attention::{attend, CacheSlot, Heads, PassInputs};
use crate::lora::LoraSet;
use crate::model::linear::{load_storage, Weight};
use crate::model::linear::{Linear, RmsNorm};
use crate::model::vision::activate;
use crate::model::weights::Weights;
use crate::quant::{QuantSpec, QuantTensor};

use std::sync::Arc;

pub(crate) struct Attention {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
}

pub(crate) struct Mlp {
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

pub(crate) struct Layer {
    pub(crate) input_ln: RmsNorm,
    pub(crate) attn: Attention,
    pub(crate) post_ln: RmsNorm,
    pub(crate) mlp: Mlp,
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position of each row: `[b, vocab]`.
    Last,
    /// Every position: `[b, L, vocab]`.
    All,
}

/// Per-layer key/value cache of shape `[b, kv_heads, capacity, head_dim]`, filled up to `len`.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// Allocates a cache for `batch` rows and `capacity` positions.
    pub fn new(
        cfg: &TextConfig,
        batch: usize,
        capacity: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim);
        let mut k = Vec::with_capacity(cfg.num_hidden_layers);
        let mut v = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            k.push(Tensor::zeros(shape, dtype, dev)?);
            v.push(Tensor::zeros(shape, dtype, dev)?);
        }
        Ok(Self {
            k,
            v,
            len: 0,
            capacity,
        })
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps rows `rows` (in that order) of the batch, e.g. to follow beam reordering.
    pub fn select_rows(&mut self, rows: &[u32]) -> Result<()> {
        let dev = self
            .k
            .first()
            .map(|t| t.device().clone())
            .unwrap_or(Device::Cpu);
        let idx = Tensor::new(rows, &dev)?;
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            *t = t.index_select(&idx, 0)?;
        }
        Ok(())
    }
}

/// Rotary embedding tables indexed by position.
pub(crate) struct Rope {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
}

impl Rope {
    fn new(cfg: &TextConfig, dtype: DType, dev: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let n = cfg.max_position_embeddings.max(1);
        // Computed in f32 like the reference: inv_freq = 1 / theta^(2i/d), angle = pos * inv_freq.
        let theta = cfg.rope_theta as f32;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / cfg.head_dim as f32))
            .collect();
        let factor = cfg.rope_linear_factor as f32;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            let pos = p as f32 / factor;
            for f in &inv {
                let a = pos * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, half), dev)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (n, half), dev)?.to_dtype(dtype)?,
        })
    }
}

/// The token embedding table `[vocab, hidden]`: dense, or quantised with the looked-up rows
/// dequantised (llama.cpp's `get_rows`).
#[derive(Debug, Clone)]
pub enum Embedding {
    /// In the compute dtype on the compute device.
    Dense(Tensor),
    /// Quantised on the host (shared with a tied output head), rows made on `device`.
    Quantized {
        /// The table.
        q: Arc<QuantTensor>,
        /// Where the rows go.
        device: Device,
        /// Their dtype.
        dtype: DType,
    },
}

impl Embedding {
    /// The rows of `ids` (checked against the vocabulary by the caller): `[ids.len(), hidden]`.
    fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t.index_select(ids, 0)?),
            Embedding::Quantized { q, device, dtype } => {
                let h = q.shape().1;
                let ids = ids.to_vec1::<u32>()?;
                let mut out = vec![0f32; ids.len() * h];
                for (&id, o) in ids.iter().zip(out.chunks_exact_mut(h.max(1))) {
                    let r = id as usize;
                    q.dequantize_rows_into(r, r + 1, o)?;
                }
                Ok(Tensor::from_vec(out, (ids.len(), h), device)?.to_dtype(*dtype)?)
            }
        }
    }

    /// The whole table in the compute dtype (a dequantised copy when quantised).
    pub fn dense(&self) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t.clone()),
            Embedding::Quantized { q, device, dtype } => {
                Ok(q.dequantize(device)?.to_dtype(*dtype)?)
            }
        }
    }
}

/// The Llama decoder with its output head.
pub struct TextModel {
    cfg: TextConfig,
    pub(crate) embed: Embedding,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: RmsNorm,
    pub(crate) lm_head: Linear,
    pub(crate) rope: Rope,
}

impl TextModel {
    /// Loads `{prefix}.*` and `lm_head` (or ties it to the embedding), each part quantised as
    /// it is read where `quant` says (a tied head and embedding are one table, stored as
    /// `quant.lm_head` says, or `quant.embed` when that is dense).
    pub fn load(
        w: &Weights,
        prefix: &str,
        cfg: &TextConfig,
        tied: bool,
        quant: &QuantSpec,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let qd = cfg.num_attention_heads * cfg.head_dim;
        let kvd = cfg.num_key_value_heads * cfg.head_dim;
        let embed_name = format!("{prefix}.embed_tokens.weight");
        // A checkpoint without `lm_head.weight` is tied (some exports drop the duplicate).
        let tied = tied || !w.contains("lm_head.weight");
        let embed_choice = if tied {
            quant.lm_head.or(quant.embed)
        } else {
            quant.embed
        };
        let embed = match load_storage(w, &embed_name, (cfg.vocab_size, h), embed_choice)? {
            None => Embedding::Dense(w.get(&embed_name, &[cfg.vocab_size, h])?),
            Some((q, device, dtype)) => Embedding::Quantized {
                q: Arc::new(q),
                device,
                dtype,
            },
        };
        let choice = quant.text;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lp = format!("{prefix}.layers.{i}");
            let ab = cfg.attention_bias;
            let mb = cfg.mlp_bias;
            let lin = |n: &str, i_dim, o_dim, b| {
                Linear::load(w, &format!("{lp}.{n}"), (i_dim, o_dim), b, choice)
            };
            layers.push(Layer {
                input_ln: RmsNorm::load(w, &format!("{lp}.input_layernorm"), h, cfg.rms_norm_eps)?,
                attn: Attention {
                    q: lin("self_attn.q_proj", h, qd, ab)?,
                    k: lin("self_attn.k_proj", h, kvd, ab)?,
                    v: lin("self_attn.v_proj", h, kvd, ab)?,
                    o: lin("self_attn.o_proj", qd, h, ab)?,
                },
                post_ln: RmsNorm::load(
                    w,
                    &format!("{lp}.post_attention_layernorm"),
                    h,
                    cfg.rms_norm_eps,
                )?,
                mlp: Mlp {
                    gate: lin("mlp.gate_proj", h, cfg.intermediate_size, mb)?,
                    up: lin("mlp.up_proj", h, cfg.intermediate_size, mb)?,
                    down: lin("mlp.down_proj", cfg.intermediate_size, h, mb)?,
                },
            });
        }
        let norm = RmsNorm::load(w, &format!("{prefix}.norm"), h, cfg.rms_norm_eps)?;
        let lm_head = match (&embed, tied) {
            (Embedding::Dense(t), true) => Linear::dense(t.clone(), "lm_head"),
            (Embedding::Quantized { q, device, dtype }, true) => Linear {
                weight: Weight::Quantized {
                    q: q.clone(),
                    device: device.clone(),
                    dtype: *dtype,
                },
                bias: None,
                name: "lm_head".into(),
            },
            (_, false) => Linear::load(w, "lm_head", (h, cfg.vocab_size), false, quant.lm_head)?,
        };
        Ok(Self {
            cfg: cfg.clone(),
            rope: Rope::new(cfg, w.dtype(), w.device())?,
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// The decoder's tensors other than its linear layers (a dense embedding, norms).
    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.norm.weight];
        if let Embedding::Dense(t) = &self.embed {
            v.push(t);
        }
        for l in &self.layers {
            v.extend([&l.input_ln.weight, &l.post_ln.weight]);
        }
        v
    }

    /// Every linear layer of the decoder, output head included.
    pub fn linears(&self) -> Vec<&Linear> {
        let mut v = Vec::with_capacity(self.layers.len() * 7 + 1);
        for l in &self.layers {
            v.extend([&l.attn.q, &l.attn.k, &l.attn.v, &l.attn.o]);
            v.extend([&l.mlp.gate, &l.mlp.up, &l.mlp.down]);
        }
        v.push(&self.lm_head);
        v
    }

    /// The text configuration.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// Looks up token embeddings: `[b, L]` ids → `[b, L, hidden]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let vocab = self.cfg.vocab_size as u32;
        if let Some(bad) = ids
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .find(|&t| t >= vocab)
        {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let e = self.embed.rows(&ids.flatten_all()?)?;
        Ok(e.reshape((b, l, self.cfg.hidden_size))?)
    }

    /// Runs the decoder on `embeds` `[b, L, hidden]` appended after the cache contents.
    ///
    /// `positions` `[b, L]` (u32) are the RoPE positions; `key_mask` `[b, cache.len()+L]` (u8, 1 =
    /// attend) hides padding and may be `None` when no row is padded.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        key_mask: Option<&Tensor>,
        cache: &mut KvCache,
        logits: Logits,
        lora: &LoraSet,
    ) -> Result<Tensor> {
        // On the CPU this runs on a pool thread: the parallel kernels below are not each handed
        // over from a blocked caller thread, and the other workers stay awake between them.
        kernels::forward_pass(embeds, || {
            let l = embeds.dim(1)?;
            let past = cache.len;
            let total = past + l;
            if total > cache.capacity {
                return Err(Error::Limit(format!(
                    "sequence of {total} tokens exceeds the cache capacity {}",
                    cache.capacity
                )));
            }
            let max_pos = self.cfg.max_position_embeddings as u32;
            let pos_flat = positions.flatten_all()?;
            if pos_flat.max(0)?.to_scalar::<u32>()? >= max_pos {
                return Err(Error::Limit(format!(
                    "position exceeds max_position_embeddings {max_pos}"
                )));
            }
            let cache_tensors: Vec<&Tensor> = cache.k.iter().chain(&cache.v).collect();
            let inputs = PassInputs::new(
                embeds,
                positions,
                key_mask,
                past,
                (&self.rope.cos, &self.rope.sin),
                &cache_tensors,
            )?;
            let mut h = embeds.clone();
            // With only the last position's logits wanted, the last layer needs every position's
            // keys and values (for the cache) but queries, attention and MLP for the last row only.
            let trim_last = matches!(logits, Logits::Last) && l > 1 && inputs.is_host();
            for (i, layer) in self.layers.iter().enumerate() {
                let x = layer.input_ln.forward(&h)?;
                let last_only = trim_last && i + 1 == self.layers.len();
                let o = self.attention(layer, &x, &inputs, cache, i, last_only, lora)?;
                if last_only {
                    h = h.narrow(1, l - 1, 1)?.contiguous()?;
                }
                let h1 = layer.attn.o.forward_residual(&o, &h, lora)?;
                let x = layer.post_ln.forward(&h1)?;
                let [g, u]: [Tensor; 2] =
                    Linear::forward_many(&[&layer.mlp.gate, &layer.mlp.up], &x, lora)?
                        .try_into()
                        .map_err(|_| Error::Internal("gate/up projections".into()))?;
                let a = match self.cfg.hidden_act {
                    Activation::Silu => kernels::silu_mul(&g, &u)?,
                    act => (activate(&g, act)? * u)?,
                };
                h = layer.mlp.down.forward_residual(&a, &h1, lora)?;
            }
            cache.len = total;
            let h = match logits {
                Logits::Last if !trim_last => h.narrow(1, l - 1, 1)?.contiguous()?,
                _ => h,
            };
            let h = self.norm.forward(&h)?;
            let out = self.lm_head.forward(&h, lora)?;
            Ok(match logits {
                Logits::Last => out.squeeze(1)?,
                Logits::All => out,
            })
        })
    }

    /// Self-attention of layer `li` before the output projection: the projections here, RoPE,
    /// the cache write and the attention in the kernels. With `last_only` (CPU kernels only),
    /// the query of the last row alone; every row's keys and values still go to the cache.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        inputs: &PassInputs,
        cache: &mut KvCache,
        li: usize,
        last_only: bool,
        lora: &LoraSet,
    ) -> Result<Tensor> {
        let a = &layer.attn;
        let (q, k, v) = if last_only {
            let l = x.dim(1)?;
            let xq = x.narrow(1, l - 1, 1)?.contiguous()?;
            (
                a.q.forward(&xq, lora)?,
                a.k.forward(x, lora)?,
                a.v.forward(x, lora)?,
            )
        } else if inputs.is_host() {
            let [q, k, v]: [Tensor; 3] = Linear::forward_many(&[&a.q, &a.k, &a.v], x, lora)?
                .try_into()
                .map_err(|_| Error::Internal("q/k/v projections".into()))?;
            (q, k, v)
        } else {
            (
                a.q.forward(x, lora)?,
                a.k.forward(x, lora)?,
                a.v.forward(x, lora)?,
            )
        };
        let c = &self.cfg;
        let past = cache.len;
        attend(
            inputs,
            (&q, &k, &v),
            Heads {
                q: c.num_attention_heads,
                kv: c.num_key_value_heads,
                d: c.head_dim,
            },
            (&self.rope.cos, &self.rope.sin),
            CacheSlot {
                k: &mut cache.k[li],
                v: &mut cache.v[li],
                past,
            },
        )
    }
}
