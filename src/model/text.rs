//! Llama decoder of Idefics3 (`model.text_model` + `lm_head`) with a preallocated KV cache.

use candle_core::{DType, Device, Tensor};

use crate::config::{Activation, TextConfig};
use crate::error::{Error, Result};
use crate::kernels::{self, softmax_scaled};
use crate::lora::LoraSet;
use crate::model::linear::{Linear, RmsNorm};
use crate::model::vision::activate;
use crate::model::weights::Weights;
use crate::quant::nf4::Nf4Config;

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

/// The Llama decoder with its output head.
pub struct TextModel {
    cfg: TextConfig,
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: RmsNorm,
    pub(crate) lm_head: Linear,
    pub(crate) rope: Rope,
}

impl TextModel {
    /// Loads `{prefix}.*` and `lm_head` (or ties it to the embedding); with `nf4`, the decoder
    /// layers' linear weights are kept as NF4 only (the QLoRA base; the head stays dense).
    pub fn load(
        w: &Weights,
        prefix: &str,
        cfg: &TextConfig,
        tied: bool,
        nf4: Option<Nf4Config>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let qd = cfg.num_attention_heads * cfg.head_dim;
        let kvd = cfg.num_key_value_heads * cfg.head_dim;
        let embed_name = format!("{prefix}.embed_tokens.weight");
        let embed = w.get(&embed_name, &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lp = format!("{prefix}.layers.{i}");
            let ab = cfg.attention_bias;
            let mb = cfg.mlp_bias;
            let lin = |n: &str, i_dim, o_dim, b| {
                Linear::load(w, &format!("{lp}.{n}"), (i_dim, o_dim), b, nf4)
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
        // A checkpoint without `lm_head.weight` is tied (some exports drop the duplicate).
        let lm_head = if tied || !w.contains("lm_head.weight") {
            Linear::dense(embed.clone(), "lm_head")
        } else {
            Linear::load(w, "lm_head", (h, cfg.vocab_size), false, None)?
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

    /// The decoder's tensors other than its linear layers (embedding, norms).
    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.embed, &self.norm.weight];
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
        let e = self.embed.index_select(&ids.flatten_all()?, 0)?;
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
            let (b, l, _) = embeds.dims3()?;
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
            // The CPU f32 path applies RoPE and masks on raw buffers (positions and key mask read
            // once); other devices and dtypes gather RoPE tables and build an additive mask.
            let inputs = if self.cpu_path(embeds, cache) {
                AttnInputs::Host(HostInputs {
                    positions: pos_flat.to_vec1::<u32>()?,
                    key_mask: match key_mask {
                        Some(m) => Some(m.to_dtype(DType::U8)?.flatten_all()?.to_vec1::<u8>()?),
                        None => None,
                    },
                })
            } else {
                let gather = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.index_select(&pos_flat, 0)?.reshape((b, l, ()))?)
                };
                AttnInputs::Tensors {
                    cos: gather(&self.rope.cos)?,
                    sin: gather(&self.rope.sin)?,
                    mask: self.build_mask(b, l, past, key_mask, embeds.device())?,
                }
            };
            let mut h = embeds.clone();
            // With only the last position's logits wanted, the last layer needs every position's
            // keys and values (for the cache) but queries, attention and MLP for the last row only.
            let trim_last =
                matches!(logits, Logits::Last) && l > 1 && matches!(inputs, AttnInputs::Host(_));
            for (i, layer) in self.layers.iter().enumerate() {
                let x = layer.input_ln.forward(&h)?;
                let o = match &inputs {
                    AttnInputs::Host(host) => {
                        let last_only = trim_last && i + 1 == self.layers.len();
                        let o = self.attention_cpu(layer, &x, host, cache, i, last_only, lora)?;
                        if last_only {
                            h = h.narrow(1, l - 1, 1)?.contiguous()?;
                        }
                        o
                    }
                    AttnInputs::Tensors { cos, sin, mask } => {
                        self.attention(layer, &x, cos, sin, mask.as_ref(), cache, i, lora)?
                    }
                };
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

    /// Additive mask `[b, 1, 1, L, total]` in f32 or None when plain causal attention over a
    /// single query needs none.
    fn build_mask(
        &self,
        b: usize,
        l: usize,
        past: usize,
        key_mask: Option<&Tensor>,
        dev: &Device,
    ) -> Result<Option<Tensor>> {
        if l == 1 && key_mask.is_none() {
            return Ok(None);
        }
        let total = past + l;
        let keys: Option<Vec<u8>> = match key_mask {
            Some(m) => {
                let (mb, mt) = m.dims2()?;
                if mb != b || mt != total {
                    return Err(Error::Internal(format!(
                        "key mask shape [{mb}, {mt}] != [{b}, {total}]"
                    )));
                }
                Some(m.to_dtype(DType::U8)?.flatten_all()?.to_vec1::<u8>()?)
            }
            None => None,
        };
        let neg = f32::MIN;
        let mut data = vec![0f32; b * l * total];
        for r in 0..b {
            for i in 0..l {
                let row = &mut data[(r * l + i) * total..(r * l + i + 1) * total];
                for (j, v) in row.iter_mut().enumerate() {
                    let causal_ok = j <= past + i;
                    let key_ok = keys.as_ref().is_none_or(|k| k[r * total + j] != 0);
                    if !(causal_ok && key_ok) {
                        *v = neg;
                    }
                }
            }
        }
        Ok(Some(Tensor::from_vec(data, (b, 1, 1, l, total), dev)?))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        li: usize,
        lora: &LoraSet,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, l, _) = x.dims3()?;
        let (nh, kvh, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rep = nh / kvh;
        let q = layer
            .attn
            .q
            .forward(x, lora)?
            .reshape((b, l, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = layer
            .attn
            .k
            .forward(x, lora)?
            .reshape((b, l, kvh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = layer
            .attn
            .v
            .forward(x, lora)?
            .reshape((b, l, kvh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let past = cache.len;
        cache.k[li].slice_set(&k, 2, past)?;
        cache.v[li].slice_set(&v, 2, past)?;
        let total = past + l;
        let k_all = cache.k[li].narrow(2, 0, total)?;
        let v_all = cache.v[li].narrow(2, 0, total)?;
        // Grouped-query attention without copying K/V: query heads sharing a KV head are stacked
        // along the query axis ([b, kvh, rep·L, d]).
        let qg = q.reshape((b, kvh, rep * l, hd))?;
        let scale = (hd as f64).powf(-0.5);
        let scores = qg.matmul(&k_all.t()?)?;
        let probs = match mask {
            // The mask is added after scaling, as in the reference.
            Some(m) => {
                let s = (scores.to_dtype(DType::F32)? * scale)?
                    .reshape((b, kvh, rep, l, total))?
                    .broadcast_add(m)?
                    .reshape((b, kvh, rep * l, total))?;
                softmax_scaled(&s, 1.0)?.to_dtype(x.dtype())?
            }
            None => softmax_scaled(&scores, scale)?,
        };
        let o = probs.matmul(&v_all)?; // [b, kvh, rep·L, d]
        Ok(o.reshape((b, nh, l, hd))?
            .transpose(1, 2)?
            .reshape((b, l, nh * hd))?)
    }

    /// Whether the raw CPU f32 kernels apply (inputs, cache and RoPE tables on the CPU in f32).
    fn cpu_path(&self, embeds: &Tensor, cache: &KvCache) -> bool {
        let ok = kernels::fast;
        ok(embeds)
            && ok(&self.rope.cos)
            && ok(&self.rope.sin)
            && cache.k.iter().chain(&cache.v).all(ok)
    }

    /// Self-attention of layer `li` on the CPU in f32, before the output projection: RoPE and
    /// the cache layout written in one pass, attention read straight from the projections and
    /// the cache. Returns `[b, L, heads·head_dim]`, or `[b, 1, …]` for the last row alone with
    /// `last_only` (every row's keys and values still go to the cache).
    #[allow(clippy::too_many_arguments)]
    fn attention_cpu(
        &self,
        layer: &Layer,
        x: &Tensor,
        host: &HostInputs,
        cache: &mut KvCache,
        li: usize,
        last_only: bool,
        lora: &LoraSet,
    ) -> Result<Tensor> {
        use crate::kernels::attention::{attention_raw, AttentionShape, HeadLayout};
        use crate::kernels::cpu::{self as ops, f32_slice};
        use std::borrow::Cow;
        let c = &self.cfg;
        let (b, l, _) = x.dims3()?;
        let (nh, kvh, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        // Query rows: all, or only the last of each batch row.
        let (lq, q_pos, q, k, v) = if last_only {
            let pos: Vec<u32> = (0..b).map(|bi| host.positions[bi * l + l - 1]).collect();
            let xq = x.narrow(1, l - 1, 1)?.contiguous()?;
            let q = layer.attn.q.forward(&xq, lora)?;
            let k = layer.attn.k.forward(x, lora)?;
            let v = layer.attn.v.forward(x, lora)?;
            (1, Cow::Owned(pos), q, k, v)
        } else {
            let pos = Cow::Borrowed(host.positions.as_slice());
            let a = &layer.attn;
            let [q, k, v]: [Tensor; 3] = Linear::forward_many(&[&a.q, &a.k, &a.v], x, lora)?
                .try_into()
                .map_err(|_| Error::Internal("q/k/v projections".into()))?;
            (l, pos, q, k, v)
        };
        let dev = x.device();
        let (qr, kr, vt) = {
            let (cg, cl) = self.rope.cos.storage_and_layout();
            let (sg, sl) = self.rope.sin.storage_and_layout();
            let (cos, sin) = (f32_slice(&cg, cl)?, f32_slice(&sg, sl)?);
            let (qg, ql) = q.storage_and_layout();
            let (kg, kl) = k.storage_and_layout();
            let (vg, vl) = v.storage_and_layout();
            let pos = &host.positions;
            (
                ops::rope(
                    f32_slice(&qg, ql)?,
                    &q_pos,
                    cos,
                    sin,
                    (b, lq, nh, hd),
                    false,
                )?,
                ops::rope(f32_slice(&kg, kl)?, pos, cos, sin, (b, l, kvh, hd), true)?,
                ops::heads_first(f32_slice(&vg, vl)?, (b, l, kvh, hd)),
            )
        };
        let past = cache.len;
        let total = past + l;
        cache.k[li].slice_set(&Tensor::from_vec(kr, (b, kvh, l, hd), dev)?, 2, past)?;
        cache.v[li].slice_set(&Tensor::from_vec(vt, (b, kvh, l, hd), dev)?, 2, past)?;
        let (kg, kl) = cache.k[li].storage_and_layout();
        let (vg, vl) = cache.v[li].storage_and_layout();
        let cache_layout = HeadLayout::heads_rows(cache.capacity, kvh, hd);
        let sh = AttentionShape {
            batch: b,
            q_heads: nh,
            kv_heads: kvh,
            rows: lq,
            keys: total,
            d: hd,
            scale: (hd as f64).powf(-0.5) as f32,
            // The query rows are the last lq of the l new ones.
            causal: Some(past + l - lq),
        };
        let out = attention_raw(
            &sh,
            &qr,
            HeadLayout::rows_heads(lq, nh, hd),
            f32_slice(&kg, kl)?,
            cache_layout,
            f32_slice(&vg, vl)?,
            cache_layout,
            host.key_mask.as_deref(),
        )?;
        Ok(Tensor::from_vec(out, (b, lq, nh * hd), dev)?)
    }
}

/// Per-forward inputs of the attention layers, by path.
enum AttnInputs {
    /// The raw CPU f32 kernels.
    Host(HostInputs),
    /// Candle ops: RoPE tables gathered at the positions, optional additive mask.
    Tensors {
        cos: Tensor,
        sin: Tensor,
        mask: Option<Tensor>,
    },
}

/// What the CPU path reads on the host once per forward pass.
struct HostInputs {
    /// RoPE position of each `[b, L]` token.
    positions: Vec<u32>,
    /// `[b, past + L]` key mask (1 = attend), when some row is padded.
    key_mask: Option<Vec<u8>>,
}
