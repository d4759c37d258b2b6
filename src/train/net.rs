//! The trainable view of an Idefics3 model: frozen base weights (dense or NF4), LoRA factors and
//! trainable modules, with forward passes that keep what their backward passes need.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

use crate::error::{Error, Result};
use crate::kernels::grad::{self, AttnCache};
use crate::model::linear::{Linear, Weight};
use crate::model::Idefics3;
use crate::quant::nf4::{Nf4Config, Nf4Tensor};
use crate::quant::QuantTensor;

/// Trainable tensors (f32) with their names, in a fixed order.
#[derive(Debug, Clone, Default)]
pub struct ParamSet {
    /// Names such as `model.text_model.layers.0.self_attn.q_proj.lora_A`.
    pub names: Vec<String>,
    /// Current values.
    pub values: Vec<Tensor>,
}

impl ParamSet {
    fn push(&mut self, name: String, t: Tensor) -> usize {
        self.names.push(name);
        self.values.push(t);
        self.values.len() - 1
    }

    /// Number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.values.iter().map(Tensor::elem_count).sum()
    }
}

/// Gradient accumulators, one slot per parameter.
#[derive(Debug, Clone)]
pub struct Grads(pub Vec<Option<Tensor>>);

impl Grads {
    /// Empty accumulators for `n` parameters.
    pub fn new(n: usize) -> Self {
        Self(vec![None; n])
    }

    fn add(&mut self, i: usize, g: Tensor) -> Result<()> {
        let slot = &mut self.0[i];
        *slot = Some(match slot.take() {
            Some(acc) => (acc + g)?,
            None => g,
        });
        Ok(())
    }
}

/// A frozen base weight `[out, in]`, stored dense (f32) or quantised (NF4, or a GGML format of a
/// model loaded quantised).
pub(crate) enum Frozen {
    Dense(Tensor),
    /// Quantised (shared with the model when it was loaded quantised), used through the tiled
    /// kernels: the f32 weight never exists whole.
    Quant(Arc<QuantTensor>),
}

impl Frozen {
    /// Bytes this weight keeps resident beyond the model's own (a weight shared with the model
    /// counts there, not here).
    pub(crate) fn extra_bytes(&self, model: &Linear) -> usize {
        match (self, &model.weight) {
            (Frozen::Quant(q), Weight::Quantized { q: mq, .. }) if Arc::ptr_eq(q, mq) => 0,
            (Frozen::Quant(q), _) => q.resident_bytes(),
            (Frozen::Dense(t), Weight::Dense(m)) => copy_bytes(t, m),
            (Frozen::Dense(t), _) => t.elem_count() * t.dtype().size_in_bytes(),
        }
    }

    /// `x Wᵀ`.
    fn product(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Frozen::Dense(w) => crate::kernels::linear(x, w, None, None),
            Frozen::Quant(q) => crate::kernels::linear_quant(x, q, None, None),
        }
    }

    /// `dy W`.
    fn input_grad(&self, dy: &Tensor) -> Result<Tensor> {
        match self {
            Frozen::Dense(w) => Ok(dy.matmul(w)?),
            Frozen::Quant(q) => crate::kernels::linear_quant_dx(dy, q),
        }
    }
}

/// Bytes of `t` when it is a copy of the model's `orig` (a conversion to f32), 0 when it shares
/// the model's storage.
fn copy_bytes(t: &Tensor, orig: &Tensor) -> usize {
    if t.id() == orig.id() {
        0
    } else {
        t.elem_count() * t.dtype().size_in_bytes()
    }
}

/// LoRA factors of one module: parameter indices of A `[r, in]` and B `[out, r]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoraRef {
    pub a: usize,
    pub b: usize,
    pub scale: f64,
}

/// A linear layer under training.
pub(crate) struct TLinear {
    pub name: String,
    pub w: Frozen,
    pub bias: Option<Tensor>,
    /// Parameter index of a trainable replacement weight (`modules_to_save`).
    pub full: Option<usize>,
    pub lora: Option<LoraRef>,
}

/// What a linear forward keeps for its backward.
pub(crate) struct LinCache {
    x: Tensor,
    lora: Option<LoraCache>,
}

impl LinCache {
    /// The cache without its input, for a caller that recomputes the input for the backward
    /// pass (a norm or an activation: cheaper to redo than to keep through the whole step).
    fn without_input(self) -> LoraPart {
        LoraPart(self.lora)
    }
}

/// A [`LinCache`] whose input the caller recomputes.
pub(crate) struct LoraPart(Option<LoraCache>);

impl LoraPart {
    fn with_input(&self, x: &Tensor) -> LinCache {
        LinCache {
            x: x.clone(),
            lora: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct LoraCache {
    /// `dropout(x) Aᵀ`.
    xa: Tensor,
    /// The dropout rate and mask seed when dropout is on: the backward pass redraws the mask
    /// instead of keeping it and the dropped input (two input-sized tensors per module).
    dropout: Option<(f32, u64)>,
}

/// Per-forward settings.
pub(crate) struct Ctx<'a> {
    pub params: &'a ParamSet,
    pub dropout: f32,
    pub rng: Option<&'a mut StdRng>,
}

impl TLinear {
    pub(crate) fn from_linear(l: &Linear, quantize: Option<usize>) -> Result<Self> {
        let w = match (&l.weight, quantize) {
            // A model loaded quantised (e.g. as a QLoRA base) already holds the codes: shared,
            // not copied.
            (Weight::Quantized { q, .. }, _) => Frozen::Quant(q.clone()),
            (Weight::Dense(t), Some(blocksize)) => {
                Frozen::Quant(Arc::new(QuantTensor::Nf4(Nf4Tensor::from_tensor(
                    &t.to_dtype(DType::F32)?,
                    Nf4Config {
                        blocksize,
                        double_quant: true,
                    },
                )?)))
            }
            (Weight::Dense(t), None) => Frozen::Dense(t.to_dtype(DType::F32)?),
        };
        Ok(Self {
            name: l.name.clone(),
            w,
            bias: match &l.bias {
                Some(b) => Some(b.to_dtype(DType::F32)?),
                None => None,
            },
            full: None,
            lora: None,
        })
    }

    /// `x` `[rows, in]` → `[rows, out]`.
    pub(crate) fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<(Tensor, LinCache)> {
        let mut y = match self.full {
            Some(i) => x.matmul(&ctx.params.values[i].t()?)?,
            None => self.w.product(x)?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let lora = match self.lora {
            Some(l) => {
                let a = &ctx.params.values[l.a];
                let b = &ctx.params.values[l.b];
                let dropout = match (ctx.dropout > 0.0, ctx.rng.as_deref_mut()) {
                    (true, Some(rng)) => Some((ctx.dropout, rng.random::<u64>())),
                    _ => None,
                };
                let xa = match dropout {
                    Some((p, seed)) => grad::dropout(x, p, seed)?.matmul(&a.t()?)?,
                    None => x.matmul(&a.t()?)?,
                };
                y = (y + (xa.matmul(&b.t()?)? * l.scale)?)?;
                Some(LoraCache { xa, dropout })
            }
            None => None,
        };
        Ok((y, LinCache { x: x.clone(), lora }))
    }

    /// Accumulates parameter gradients for `dy` `[rows, out]`; returns `dx` when `need_dx`.
    pub(crate) fn backward(
        &self,
        dy: &Tensor,
        c: &LinCache,
        p: &ParamSet,
        g: &mut Grads,
        need_dx: bool,
    ) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        if let Some(i) = self.full {
            g.add(i, dy.t()?.matmul(&c.x)?)?;
        }
        let mut dx = match (need_dx, self.full) {
            (false, _) => None,
            (true, Some(i)) => Some(dy.matmul(&p.values[i])?),
            (true, None) => Some(self.w.input_grad(&dy)?),
        };
        if let (Some(l), Some(lc)) = (self.lora, &c.lora) {
            let a = &p.values[l.a];
            let b = &p.values[l.b];
            let dyb = dy.matmul(b)?; // [rows, r]
            g.add(l.b, (dy.t()?.matmul(&lc.xa)? * l.scale)?)?;
            let xd = match lc.dropout {
                Some((p, seed)) => grad::dropout(&c.x, p, seed)?,
                None => c.x.clone(),
            };
            g.add(l.a, (dyb.t()?.matmul(&xd)? * l.scale)?)?;
            if let Some(d) = dx.take() {
                let mut dl = (dyb.matmul(a)? * l.scale)?;
                if let Some((p, seed)) = lc.dropout {
                    dl = grad::dropout(&dl, p, seed)?;
                }
                dx = Some((d + dl)?);
            }
        }
        Ok(dx)
    }

    fn in_out(&self) -> Result<(usize, usize)> {
        let (o, i) = match &self.w {
            Frozen::Dense(t) => t.dims2()?,
            Frozen::Quant(q) => q.shape(),
        };
        Ok((i, o))
    }
}

// ------------------------------------------------------------------------------------------
// Text decoder

struct TextLayer {
    ln1: Tensor,
    q: TLinear,
    k: TLinear,
    v: TLinear,
    o: TLinear,
    ln2: Tensor,
    gate: TLinear,
    up: TLinear,
    down: TLinear,
}

/// What one decoder layer's forward keeps. The two norms' outputs and the gated activation
/// are recomputed by the backward pass (from `x0`, `h1`, `g` and `u`), not kept: 30% of a
/// layer's activations at Llama's MLP width.
pub(crate) struct TextLayerCache {
    x0: Tensor,
    rstd1: Tensor,
    cq: LoraPart,
    ck: LoraPart,
    cv: LoraPart,
    attn: AttnCache,
    co: LinCache,
    h1: Tensor,
    rstd2: Tensor,
    cg: LoraPart,
    cu: LoraPart,
    g: Tensor,
    u: Tensor,
    cd: LoraPart,
}

/// The Llama decoder under training.
pub(crate) struct TextNet {
    layers: Vec<TextLayer>,
    embed: Tensor,
    norm: Tensor,
    eps: f64,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    hidden: usize,
    max_pos: usize,
}

// ------------------------------------------------------------------------------------------
// Vision tower and connector

struct VisionLayer {
    ln1_w: Tensor,
    ln1_b: Tensor,
    q: TLinear,
    k: TLinear,
    v: TLinear,
    out: TLinear,
    ln2_w: Tensor,
    ln2_b: Tensor,
    fc1: TLinear,
    fc2: TLinear,
}

/// What one vision layer's forward keeps.
pub(crate) struct VisionLayerCache {
    xhat1: Tensor,
    rstd1: Tensor,
    cq: LinCache,
    ck: LinCache,
    cv: LinCache,
    attn: AttnCache,
    co: LinCache,
    xhat2: Tensor,
    rstd2: Tensor,
    c1: LinCache,
    f1: Tensor,
    c2: LinCache,
}

/// The SigLIP tower under training (only built when it carries LoRA).
pub(crate) struct VisionNet {
    layers: Vec<VisionLayer>,
    post_w: Tensor,
    post_b: Tensor,
    eps: f64,
    heads: usize,
    head_dim: usize,
}

/// What the image path keeps for its backward.
pub(crate) enum ImageCache {
    /// Nothing upstream is trainable.
    Frozen,
    /// Only the connector projection is trainable: its cache.
    Connector(LinCache),
    /// The tower has LoRA: everything.
    Full {
        layers: Vec<VisionLayerCache>,
        post_xhat: Tensor,
        post_rstd: Tensor,
        conn: LinCache,
        n: usize,
        seq: usize,
    },
}

/// Which parts of the model are trained and how the frozen weights are stored.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Store frozen text-decoder linear weights as NF4 with this block size (QLoRA).
    pub nf4_block: Option<usize>,
}

/// The whole trainable network.
pub(crate) struct Net {
    pub text: TextNet,
    pub vision: Option<VisionNet>,
    pub connector: TLinear,
    pub scale_factor: usize,
    /// See [`Net::extra_weight_bytes`].
    extra_bytes: usize,
}

/// Describes the LoRA factors to create for one module.
pub(crate) struct LoraSpec {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl Net {
    /// Builds the trainable network from `model`; `lora(name)` gives the initial factors of
    /// each module that gets LoRA; `train_connector` makes the connector projection trainable
    /// starting from `connector_init` (or the base weight).
    pub(crate) fn build(
        model: &Idefics3,
        opts: &NetOptions,
        params: &mut ParamSet,
        lora: &mut dyn FnMut(&Linear) -> Result<Option<LoraSpec>>,
        train_connector: bool,
        connector_init: Option<Tensor>,
    ) -> Result<Self> {
        let cfg = model.config();
        // Bytes of frozen weights this network holds beyond the model's (f32 conversions of a
        // 16-bit model, NF4 codes quantised from a dense model).
        let extra = std::cell::Cell::new(0usize);
        let mut wrap = |l: &Linear, q: Option<usize>, params: &mut ParamSet| -> Result<TLinear> {
            let mut t = TLinear::from_linear(l, q)?;
            extra.set(extra.get() + t.w.extra_bytes(l));
            if let Some(spec) = lora(l)? {
                let a = params.push(format!("{}.lora_A", l.name), spec.a.to_dtype(DType::F32)?);
                let b = params.push(format!("{}.lora_B", l.name), spec.b.to_dtype(DType::F32)?);
                t.lora = Some(LoraRef {
                    a,
                    b,
                    scale: spec.scale,
                });
            }
            Ok(t)
        };
        let tm = &model.text;
        let tc = tm.config();
        let f32t = |t: &Tensor| -> Result<Tensor> {
            let c = t.to_dtype(DType::F32)?;
            extra.set(extra.get() + copy_bytes(&c, t));
            Ok(c)
        };
        let mut layers = Vec::with_capacity(tm.layers.len());
        for l in &tm.layers {
            let q = opts.nf4_block;
            layers.push(TextLayer {
                ln1: f32t(&l.input_ln.weight)?,
                q: wrap(&l.attn.q, q, params)?,
                k: wrap(&l.attn.k, q, params)?,
                v: wrap(&l.attn.v, q, params)?,
                o: wrap(&l.attn.o, q, params)?,
                ln2: f32t(&l.post_ln.weight)?,
                gate: wrap(&l.mlp.gate, q, params)?,
                up: wrap(&l.mlp.up, q, params)?,
                down: wrap(&l.mlp.down, q, params)?,
            });
        }
        let text = TextNet {
            layers,
            embed: f32t(&tm.embed.dense()?)?,
            norm: f32t(&tm.norm.weight)?,
            eps: tm.norm.eps as f64,
            lm_head: f32t(&tm.lm_head.weight.to_dense()?)?,
            cos: f32t(&tm.rope.cos)?,
            sin: f32t(&tm.rope.sin)?,
            heads: tc.num_attention_heads,
            kv_heads: tc.num_key_value_heads,
            head_dim: tc.head_dim,
            hidden: tc.hidden_size,
            max_pos: tc.max_position_embeddings,
        };
        // The tower is rebuilt for training only when one of its modules gets LoRA.
        let mut vlayers = Vec::with_capacity(model.vision.layers.len());
        let mut any = false;
        for l in &model.vision.layers {
            let vl = VisionLayer {
                ln1_w: f32t(&l.ln1.weight)?,
                ln1_b: f32t(&l.ln1.bias)?,
                q: wrap(&l.attn.q, None, params)?,
                k: wrap(&l.attn.k, None, params)?,
                v: wrap(&l.attn.v, None, params)?,
                out: wrap(&l.attn.out, None, params)?,
                ln2_w: f32t(&l.ln2.weight)?,
                ln2_b: f32t(&l.ln2.bias)?,
                fc1: wrap(&l.mlp.fc1, None, params)?,
                fc2: wrap(&l.mlp.fc2, None, params)?,
            };
            any |= [&vl.q, &vl.k, &vl.v, &vl.out, &vl.fc1, &vl.fc2]
                .iter()
                .any(|t| t.lora.is_some());
            vlayers.push(vl);
        }
        let vision = if any {
            Some(VisionNet {
                layers: vlayers,
                post_w: f32t(&model.vision.post_ln.weight)?,
                post_b: f32t(&model.vision.post_ln.bias)?,
                eps: f64::from(model.vision.post_ln.eps),
                heads: cfg.vision.num_attention_heads,
                head_dim: cfg.vision.head_dim(),
            })
        } else {
            None
        };
        let mut connector = TLinear::from_linear(&model.connector.proj, None)?;
        if train_connector {
            let init = match connector_init {
                Some(t) => t.to_dtype(DType::F32)?,
                None => model
                    .connector
                    .proj
                    .weight
                    .to_dense()?
                    .to_dtype(DType::F32)?
                    .copy()?,
            };
            connector.full = Some(params.push(format!("{}.weight", connector.name), init));
        }
        Ok(Self {
            text,
            vision,
            extra_bytes: extra.get() + connector.w.extra_bytes(&model.connector.proj),
            connector,
            scale_factor: model.connector.scale,
        })
    }

    /// Bytes of frozen weights this network holds beyond the model's own.
    pub(crate) fn extra_weight_bytes(&self) -> usize {
        self.extra_bytes
    }

    /// Image features `[n·seq, hidden]` of `[n, 3, S, S]` tiles and what their backward needs.
    pub(crate) fn image_forward(
        &self,
        model: &Idefics3,
        pixels: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<(Tensor, ImageCache)> {
        let empty = crate::lora::LoraSet::empty();
        let Some(vn) = &self.vision else {
            if self.connector.full.is_none() {
                let f = model.image_features(pixels, &empty)?.to_dtype(DType::F32)?;
                let h = f.dim(2)?;
                return Ok((f.reshape(((), h))?, ImageCache::Frozen));
            }
            let v = model.vision.forward(pixels, &empty)?.to_dtype(DType::F32)?;
            let s = crate::model::connector::pixel_shuffle(&v, self.scale_factor)?;
            let d = s.dim(2)?;
            let (y, c) = self.connector.forward(&s.reshape(((), d))?, ctx)?;
            return Ok((y, ImageCache::Connector(c)));
        };
        let mut h = model.vision.embed(pixels)?.to_dtype(DType::F32)?;
        let (n, seq, hid) = h.dims3()?;
        let mut caches = Vec::with_capacity(vn.layers.len());
        for l in &vn.layers {
            let (x1, xhat1, rstd1) = grad::layer_norm(&h, &l.ln1_w, &l.ln1_b, vn.eps)?;
            let x1 = x1.reshape((n * seq, hid))?;
            let split = |t: Tensor| -> Result<Tensor> {
                Ok(t.reshape((n, seq, vn.heads, vn.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (q, cq) = l.q.forward(&x1, ctx)?;
            let (k, ck) = l.k.forward(&x1, ctx)?;
            let (v, cv) = l.v.forward(&x1, ctx)?;
            let scale = (vn.head_dim as f64).powf(-0.5);
            let (o, attn) = grad::attention(&split(q)?, &split(k)?, &split(v)?, scale, false)?;
            let om = o.reshape((n * seq, hid))?;
            let (ao, co) = l.out.forward(&om, ctx)?;
            let h1 = (h + ao.reshape((n, seq, hid))?)?;
            let (x2, xhat2, rstd2) = grad::layer_norm(&h1, &l.ln2_w, &l.ln2_b, vn.eps)?;
            let (f1, c1) = l.fc1.forward(&x2.reshape((n * seq, hid))?, ctx)?;
            let a = grad::gelu_tanh(&f1)?;
            let (f2, c2) = l.fc2.forward(&a, ctx)?;
            h = (h1 + f2.reshape((n, seq, hid))?)?;
            caches.push(VisionLayerCache {
                xhat1,
                rstd1,
                cq,
                ck,
                cv,
                attn,
                co,
                xhat2,
                rstd2,
                c1,
                f1,
                c2,
            });
        }
        let (y, post_xhat, post_rstd) = grad::layer_norm(&h, &vn.post_w, &vn.post_b, vn.eps)?;
        let s = crate::model::connector::pixel_shuffle(&y, self.scale_factor)?;
        let d = s.dim(2)?;
        let (f, conn) = self.connector.forward(&s.reshape(((), d))?, ctx)?;
        Ok((
            f,
            ImageCache::Full {
                layers: caches,
                post_xhat,
                post_rstd,
                conn,
                n,
                seq,
            },
        ))
    }

    /// Backward of [`Net::image_forward`] from the gradient of the features `[n·seq', hidden]`.
    pub(crate) fn image_backward(
        &self,
        d_feat: &Tensor,
        cache: &ImageCache,
        p: &ParamSet,
        g: &mut Grads,
    ) -> Result<()> {
        match cache {
            ImageCache::Frozen => Ok(()),
            ImageCache::Connector(c) => {
                self.connector.backward(d_feat, c, p, g, false)?;
                Ok(())
            }
            ImageCache::Full {
                layers,
                post_xhat,
                post_rstd,
                conn,
                n,
                seq,
            } => {
                let vn = self
                    .vision
                    .as_ref()
                    .ok_or_else(|| Error::Internal("vision cache without a vision net".into()))?;
                let (n, seq) = (*n, *seq);
                let ds = self
                    .connector
                    .backward(d_feat, conn, p, g, true)?
                    .ok_or_else(|| Error::Internal("connector gave no input gradient".into()))?;
                let s = self.scale_factor;
                let hid = post_xhat.dim(2)?;
                let dy = pixel_unshuffle(&ds.reshape((n, seq / (s * s), hid * s * s))?, s)?;
                let mut dh = grad::layer_norm_bwd(&dy, post_xhat, &vn.post_w, post_rstd)?;
                for (l, c) in vn.layers.iter().zip(layers).rev() {
                    let rows = n * seq;
                    let d2 = dh.reshape((rows, hid))?;
                    let da = l.fc2.backward(&d2, &c.c2, p, g, true)?.ok_or_else(no_dx)?;
                    let df1 = grad::gelu_tanh_bwd(&da, &c.f1)?;
                    let dx2 = l.fc1.backward(&df1, &c.c1, p, g, true)?.ok_or_else(no_dx)?;
                    let dh1 = (&dh
                        + grad::layer_norm_bwd(
                            &dx2.reshape((n, seq, hid))?,
                            &c.xhat2,
                            &l.ln2_w,
                            &c.rstd2,
                        )?)?;
                    let dom = l
                        .out
                        .backward(&dh1.reshape((rows, hid))?, &c.co, p, g, true)?
                        .ok_or_else(no_dx)?;
                    let (dq, dk, dv) = grad::attention_bwd(&dom.reshape((n, seq, hid))?, &c.attn)?;
                    let merge = |t: Tensor| -> Result<Tensor> {
                        Ok(t.transpose(1, 2)?.contiguous()?.reshape((rows, hid))?)
                    };
                    let mut dx1 =
                        l.q.backward(&merge(dq)?, &c.cq, p, g, true)?
                            .ok_or_else(no_dx)?;
                    dx1 = (dx1
                        + l.k
                            .backward(&merge(dk)?, &c.ck, p, g, true)?
                            .ok_or_else(no_dx)?)?;
                    dx1 = (dx1
                        + l.v
                            .backward(&merge(dv)?, &c.cv, p, g, true)?
                            .ok_or_else(no_dx)?)?;
                    dh = (dh1
                        + grad::layer_norm_bwd(
                            &dx1.reshape((n, seq, hid))?,
                            &c.xhat1,
                            &l.ln1_w,
                            &c.rstd1,
                        )?)?;
                }
                Ok(())
            }
        }
    }

    /// Whether the image features need a gradient.
    pub(crate) fn image_trainable(&self) -> bool {
        self.vision.is_some() || self.connector.full.is_some()
    }

    /// Every linear layer under training with LoRA (for saving adapters).
    pub(crate) fn lora_modules(&self) -> Vec<(&str, LoraRef, (usize, usize))> {
        let mut all: Vec<&TLinear> = Vec::new();
        if let Some(v) = &self.vision {
            for l in &v.layers {
                all.extend([&l.q, &l.k, &l.v, &l.out, &l.fc1, &l.fc2]);
            }
        }
        for l in &self.text.layers {
            all.extend([&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]);
        }
        all.into_iter()
            .filter_map(|t| match (t.lora, t.in_out()) {
                (Some(l), Ok(io)) => Some((t.name.as_str(), l, io)),
                _ => None,
            })
            .collect()
    }
}

fn no_dx() -> Error {
    Error::Internal("missing input gradient".into())
}

/// Inverse of the connector's pixel shuffle (for gradients): `[n, seq/s², d·s²]` → `[n, seq, d]`.
pub(crate) fn pixel_unshuffle(x: &Tensor, s: usize) -> Result<Tensor> {
    let (n, seq_s, ds2) = x.dims3()?;
    let seq = seq_s * s * s;
    let d = ds2 / (s * s);
    let side = (seq as f64).sqrt() as usize;
    let x = x.reshape((n, side / s, side / s, d * s * s))?;
    let x = x.permute((0, 2, 1, 3))?.contiguous()?;
    let x = x.reshape((n, side / s, side, d * s))?;
    let x = x.permute((0, 2, 1, 3))?.contiguous()?;
    Ok(x.reshape((n, seq, d))?)
}

/// What the output head's forward keeps for its backward.
struct Head {
    idx: Tensor,
    hs: Tensor,
    rstd: Tensor,
    w: Tensor,
    logits: Tensor,
}

/// One padded batch for the decoder.
pub(crate) struct TextBatch<'a> {
    /// Flat positions (row·L + col) whose next token is a label, and those labels.
    pub label_pos: &'a [u32],
    pub labels: &'a [u32],
}

impl TextNet {
    fn check(&self, l: usize) -> Result<()> {
        if l > self.max_pos {
            return Err(Error::Limit(format!(
                "sequence of {l} tokens exceeds max_position_embeddings {}",
                self.max_pos
            )));
        }
        Ok(())
    }

    /// Input embeddings with image-token rows replaced, in order, by `features`.
    pub(crate) fn embed(
        &self,
        ids: &Tensor,
        img_pos: &[u32],
        features: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let e = self.embed.index_select(&flat, 0)?;
        let e = match features {
            Some(f) if !img_pos.is_empty() => {
                let mut keep = vec![1f32; b * l];
                for &p in img_pos {
                    keep[p as usize] = 0.0;
                }
                let keep = Tensor::from_vec(keep, (b * l, 1), e.device())?;
                let idx = Tensor::new(img_pos, e.device())?;
                e.broadcast_mul(&keep)?.index_add(&idx, f, 0)?
            }
            _ => e,
        };
        Ok(e.reshape((b, l, self.hidden))?)
    }

    /// Runs one layer and returns its output and cache.
    fn layer_forward(
        &self,
        li: usize,
        x0: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<(Tensor, TextLayerCache)> {
        let lay = &self.layers[li];
        let (b, l, h) = x0.dims3()?;
        let rows = b * l;
        let (nh, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let (n1, rstd1) = grad::rms_norm(x0, &lay.ln1, self.eps)?;
        let n1 = n1.reshape((rows, h))?;
        let (q, cq) = lay.q.forward(&n1, ctx)?;
        let (k, ck) = lay.k.forward(&n1, ctx)?;
        let (v, cv) = lay.v.forward(&n1, ctx)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, l, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = grad::rope(&heads(q, nh)?, cos, sin)?;
        let k = grad::rope(&heads(k, kvh)?, cos, sin)?;
        let v = heads(v, kvh)?;
        let scale = (hd as f64).powf(-0.5);
        let (o, attn) = grad::attention(&q, &k, &v, scale, true)?;
        let om = o.reshape((rows, nh * hd))?;
        let (ao, co) = lay.o.forward(&om, ctx)?;
        let h1 = (x0 + ao.reshape((b, l, h))?)?;
        let (n2, rstd2) = grad::rms_norm(&h1, &lay.ln2, self.eps)?;
        let n2 = n2.reshape((rows, h))?;
        let (g, cg) = lay.gate.forward(&n2, ctx)?;
        let (u, cu) = lay.up.forward(&n2, ctx)?;
        let a = crate::kernels::silu_mul(&g, &u)?;
        let (d, cd) = lay.down.forward(&a, ctx)?;
        let h2 = (&h1 + d.reshape((b, l, h))?)?;
        Ok((
            h2,
            TextLayerCache {
                x0: x0.clone(),
                rstd1,
                cq: cq.without_input(),
                ck: ck.without_input(),
                cv: cv.without_input(),
                attn,
                co,
                h1,
                rstd2,
                cg: cg.without_input(),
                cu: cu.without_input(),
                g,
                u,
                cd: cd.without_input(),
            },
        ))
    }

    /// Backward of one layer: gradient with respect to its input.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        li: usize,
        dh2: &Tensor,
        c: &TextLayerCache,
        cos: &Tensor,
        neg_sin: &Tensor,
        p: &ParamSet,
        g: &mut Grads,
    ) -> Result<Tensor> {
        let lay = &self.layers[li];
        let (b, l, h) = dh2.dims3()?;
        let rows = b * l;
        let (nh, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let dd = dh2.reshape((rows, h))?;
        let a = crate::kernels::silu_mul(&c.g, &c.u)?;
        let da = lay
            .down
            .backward(&dd, &c.cd.with_input(&a), p, g, true)?
            .ok_or_else(no_dx)?;
        drop(a);
        let dg = grad::silu_bwd(&(&da * &c.u)?, &c.g)?;
        let du = crate::kernels::silu_mul(&c.g, &da)?;
        let n2 = grad::rms_norm(&c.h1, &lay.ln2, self.eps)?
            .0
            .reshape((rows, h))?;
        let dn2 = lay
            .gate
            .backward(&dg, &c.cg.with_input(&n2), p, g, true)?
            .ok_or_else(no_dx)?;
        let dn2 = (dn2
            + lay
                .up
                .backward(&du, &c.cu.with_input(&n2), p, g, true)?
                .ok_or_else(no_dx)?)?;
        drop(n2);
        let dh1 = (dh2 + grad::rms_norm_bwd(&dn2.reshape((b, l, h))?, &c.h1, &lay.ln2, &c.rstd2)?)?;
        let dom = lay
            .o
            .backward(&dh1.reshape((rows, h))?, &c.co, p, g, true)?
            .ok_or_else(no_dx)?;
        let (dq, dk, dv) = grad::attention_bwd(&dom.reshape((b, l, nh * hd))?, &c.attn)?;
        let dq = grad::rope_bwd(&dq, cos, neg_sin)?;
        let dk = grad::rope_bwd(&dk, cos, neg_sin)?;
        let flat = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.transpose(1, 2)?.contiguous()?.reshape((rows, n * hd))?)
        };
        let n1 = grad::rms_norm(&c.x0, &lay.ln1, self.eps)?
            .0
            .reshape((rows, h))?;
        let mut dn1 = lay
            .q
            .backward(&flat(dq, nh)?, &c.cq.with_input(&n1), p, g, true)?
            .ok_or_else(no_dx)?;
        dn1 = (dn1
            + lay
                .k
                .backward(&flat(dk, kvh)?, &c.ck.with_input(&n1), p, g, true)?
                .ok_or_else(no_dx)?)?;
        dn1 = (dn1
            + lay
                .v
                .backward(&flat(dv, kvh)?, &c.cv.with_input(&n1), p, g, true)?
                .ok_or_else(no_dx)?)?;
        drop(n1);
        Ok((dh1 + grad::rms_norm_bwd(&dn1.reshape((b, l, h))?, &c.x0, &lay.ln1, &c.rstd1)?)?)
    }

    /// Summed label cross-entropy of the decoder on `embeds`, without gradients.
    pub(crate) fn loss_only(
        &self,
        embeds: &Tensor,
        batch: &TextBatch,
        ctx: &mut Ctx,
    ) -> Result<f64> {
        let (cos, sin) = self.tables(embeds)?;
        let mut x = embeds.clone();
        for li in 0..self.layers.len() {
            x = self.layer_forward(li, &x, &cos, &sin, ctx)?.0;
        }
        let head = self.head(&x, batch)?;
        Ok(grad::cross_entropy(&head.logits, batch.labels, 0.0)?.0)
    }

    /// RoPE tables for the sequence length of `embeds` `[b, L, hidden]`.
    fn tables(&self, embeds: &Tensor) -> Result<(Tensor, Tensor)> {
        let l = embeds.dim(1)?;
        self.check(l)?;
        Ok((self.cos.narrow(0, 0, l)?, self.sin.narrow(0, 0, l)?))
    }

    /// Final norm and output head, only at the positions that predict a label.
    fn head(&self, x: &Tensor, batch: &TextBatch) -> Result<Head> {
        let (b, l, h) = x.dims3()?;
        let idx = Tensor::new(batch.label_pos, x.device())?;
        let hs = x.reshape((b * l, h))?.index_select(&idx, 0)?;
        let (n, rstd) = grad::rms_norm(&hs, &self.norm, self.eps)?;
        let w = self.lm_head.clone();
        let logits = n.matmul(&w.t()?)?;
        Ok(Head {
            idx,
            hs,
            rstd,
            w,
            logits,
        })
    }

    /// Forward + backward of the decoder on `embeds` `[b, L, hidden]`.
    ///
    /// Returns the summed label cross-entropy, the number of label tokens and (when
    /// `need_embed_grad`) the gradient of the embeddings. Gradients are scaled by `grad_scale`.
    /// With `recompute`, only layer inputs are kept and each layer's forward is redone during
    /// the backward pass (activation checkpointing).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn loss_and_backward(
        &self,
        embeds: &Tensor,
        batch: &TextBatch,
        grad_scale: f64,
        ctx: &mut Ctx,
        g: &mut Grads,
        need_embed_grad: bool,
        recompute: bool,
        rngs: &mut dyn FnMut(usize) -> Option<StdRng>,
    ) -> Result<(f64, Option<Tensor>)> {
        let (b, l, h) = embeds.dims3()?;
        let (cos, sin) = self.tables(embeds)?;
        let neg_sin = sin.neg()?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut caches = Vec::with_capacity(self.layers.len());
        let mut x = embeds.clone();
        for li in 0..self.layers.len() {
            let mut rng = rngs(li);
            let mut lctx = Ctx {
                params: ctx.params,
                dropout: ctx.dropout,
                rng: rng.as_mut(),
            };
            let (y, c) = self.layer_forward(li, &x, &cos, &sin, &mut lctx)?;
            if recompute {
                inputs.push(x);
            } else {
                caches.push(c);
            }
            x = y;
        }
        let hd = self.head(&x, batch)?;
        let (loss, dlogits) = grad::cross_entropy(&hd.logits, batch.labels, grad_scale)?;
        let dn = dlogits.matmul(&hd.w)?;
        let dhs = grad::rms_norm_bwd(&dn, &hd.hs, &self.norm, &hd.rstd)?;
        let mut dh = Tensor::zeros((b * l, h), DType::F32, embeds.device())?
            .index_add(&hd.idx, &dhs, 0)?
            .reshape((b, l, h))?;
        for li in (0..self.layers.len()).rev() {
            let c = if recompute {
                let mut rng = rngs(li);
                let mut lctx = Ctx {
                    params: ctx.params,
                    dropout: ctx.dropout,
                    rng: rng.as_mut(),
                };
                self.layer_forward(li, &inputs[li], &cos, &sin, &mut lctx)?
                    .1
            } else {
                match caches.pop() {
                    Some(c) => c,
                    None => return Err(Error::Internal("layer cache missing".into())),
                }
            };
            dh = self.layer_backward(li, &dh, &c, &cos, &neg_sin, ctx.params, g)?;
        }
        Ok((loss, need_embed_grad.then_some(dh)))
    }
}
