//! LoRA / QLoRA fine-tuning of the text decoder (optionally the vision tower and the connector)
//! on image–caption pairs, with explicit backward passes, AdamW, a linear warm-up schedule,
//! gradient accumulation and clipping, and checkpoints that resume the exact run.

pub mod collate;
pub(crate) mod net;
pub mod optim;
pub mod run;
pub mod tensorboard;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::lora::peft::{Adapter, AdapterConfig, AdapterModule};
use crate::session::Model;
pub use collate::{CollateOptions, Example, Sample};
use net::{Ctx, Grads, LoraSpec, Net, NetOptions, ParamSet, TextBatch};

/// The seed's LoRA targets in the text decoder.
pub const DEFAULT_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Gives the trainer access to a loaded model (a `Model`, or a handle that owns one).
pub trait ModelRef: Send + Sync {
    /// The model.
    fn model(&self) -> &Model;
}

impl ModelRef for Model {
    fn model(&self) -> &Model {
        self
    }
}

/// What gets LoRA and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraOptions {
    /// Rank.
    pub r: usize,
    /// Alpha (scale alpha/r, or alpha/√r with rslora).
    pub alpha: f64,
    /// Dropout on the LoRA input.
    pub dropout: f32,
    /// Scale by alpha/√r.
    pub use_rslora: bool,
    /// Module short names (e.g. `q_proj`) that get LoRA.
    pub targets: Vec<String>,
    /// Also put LoRA on matching vision-tower modules.
    pub train_vision: bool,
    /// Train the connector projection in full (saved as `modules_to_save`).
    pub train_connector: bool,
}

impl Default for LoraOptions {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            use_rslora: false,
            targets: DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect(),
            train_vision: false,
            train_connector: false,
        }
    }
}

/// Largest LoRA rank accepted for a new adapter (as `ConfigLimits::max_adapter_rank`).
pub const MAX_LORA_RANK: usize = 4096;

impl LoraOptions {
    /// Checks every field on its own: rank 1..=4096, alpha finite and > 0, dropout in [0, 1);
    /// the message names the field and its value.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 || self.r > MAX_LORA_RANK {
            return Err(Error::InvalidArgument(format!(
                "lora r {} must be in 1..={MAX_LORA_RANK}",
                self.r
            )));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "lora alpha {} must be finite and > 0",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::InvalidArgument(format!(
                "lora dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }

    /// The fields where `self` and `other` differ, as `name: ours vs theirs` (empty when equal).
    pub fn differences(&self, other: &LoraOptions) -> Vec<String> {
        let mut d = Vec::new();
        let mut f = |name: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{name} {a} vs {b}"));
            }
        };
        f("r", self.r.to_string(), other.r.to_string());
        f("alpha", self.alpha.to_string(), other.alpha.to_string());
        f(
            "dropout",
            self.dropout.to_string(),
            other.dropout.to_string(),
        );
        f(
            "use_rslora",
            self.use_rslora.to_string(),
            other.use_rslora.to_string(),
        );
        f("targets", self.targets.join(","), other.targets.join(","));
        f(
            "train_vision",
            self.train_vision.to_string(),
            other.train_vision.to_string(),
        );
        f(
            "train_connector",
            self.train_connector.to_string(),
            other.train_connector.to_string(),
        );
        d
    }

    /// The peft `adapter_config.json` describing these options.
    pub fn adapter_config(&self, base: &str, qlora: bool) -> Result<AdapterConfig> {
        self.validate()?;
        for t in &self.targets {
            if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Error::InvalidArgument(format!(
                    "lora target {t:?}: expected a module name such as q_proj"
                )));
            }
        }
        if self.targets.is_empty() {
            return Err(Error::InvalidArgument("no lora targets".into()));
        }
        if self.r == 0 || !self.alpha.is_finite() || !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::InvalidArgument(format!(
                "lora r {} / alpha {} / dropout {}: need r ≥ 1, finite alpha, 0 ≤ dropout < 1",
                self.r, self.alpha, self.dropout
            )));
        }
        let towers = if self.train_vision {
            "(text_model|vision_model)"
        } else {
            "text_model"
        };
        let re = format!(".*{towers}.*\\.({})", self.targets.join("|"));
        let mut v = json!({
            "peft_type": "LORA",
            "task_type": null,
            "base_model_name_or_path": base,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "use_rslora": self.use_rslora,
            "target_modules": re,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_dora": false,
            "modules_to_save": if self.train_connector { json!(["connector"]) } else { Value::Null },
            "revision": null,
        });
        if qlora {
            // Read back by `merge` to warn that the adapter was trained against NF4 weights.
            v["smolcap_base_quantization"] = json!("nf4-4bit-block64-double-quant");
        }
        AdapterConfig::from_json(v, Path::new("adapter_config.json"))
    }
}

/// Optimisation settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainOptions {
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay (HF Trainer's default 0).
    pub weight_decay: f64,
    /// AdamW betas.
    pub betas: (f64, f64),
    /// AdamW epsilon.
    pub eps: f64,
    /// Fraction of `total_steps` spent warming up linearly from 0.
    pub warmup_ratio: f64,
    /// Optimizer steps of the whole run (the schedule decays to 0 there).
    pub total_steps: u64,
    /// Gradient clipping norm (0 = off).
    pub max_grad_norm: f64,
    /// Examples per forward pass (an optimizer step may take several).
    pub micro_batch: usize,
    /// Seed of LoRA initialisation and dropout.
    pub seed: u64,
    /// Recompute layer activations in the backward pass instead of keeping them.
    pub recompute: bool,
    /// Stop after this many non-finite steps in a row.
    pub max_bad_steps: u32,
    /// Store frozen decoder weights as NF4 (QLoRA).
    pub qlora: bool,
    /// Sample building.
    pub collate: CollateOptions,
    /// Memory for image features kept by image key when the vision tower and connector are
    /// frozen (0 = off): examples with the same key reuse them instead of re-encoding.
    #[serde(default)]
    pub feature_cache_mb: usize,
    /// Longest caption accepted, in bytes, checked before tokenizing: a longer example is
    /// rejected (counted in `StepStats::rejected`) instead of tokenized in full.
    #[serde(default = "default_max_caption_bytes")]
    pub max_caption_bytes: usize,
}

/// Default of [`TrainOptions::max_caption_bytes`] (64 KiB; COCO captions are under 1 KiB).
pub const DEFAULT_MAX_CAPTION_BYTES: usize = 64 << 10;

fn default_max_caption_bytes() -> usize {
    DEFAULT_MAX_CAPTION_BYTES
}

/// Largest `max_seq_len` accepted (tokens of one training sample).
pub const MAX_SEQ_LEN: usize = 1 << 20;

impl TrainOptions {
    /// Checks every field at the boundary (range, finiteness); the message names the field
    /// and its value.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(format!("lr {} must be finite and >= 0", self.lr));
        }
        if !(self.warmup_ratio.is_finite() && (0.0..=1.0).contains(&self.warmup_ratio)) {
            return bad(format!(
                "warmup_ratio {} must be in [0, 1] (a fraction of all steps)",
                self.warmup_ratio
            ));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(format!(
                "max_grad_norm {} must be finite and >= 0 (0 = off)",
                self.max_grad_norm
            ));
        }
        if self.total_steps == 0 {
            return bad("total_steps must be at least 1".into());
        }
        if self.micro_batch == 0 {
            return bad("micro_batch must be at least 1".into());
        }
        if self.max_bad_steps == 0 {
            return bad("max_bad_steps must be at least 1".into());
        }
        if self.collate.max_seq_len == 0 || self.collate.max_seq_len > MAX_SEQ_LEN {
            return bad(format!(
                "max_seq_len {} must be in 1..={MAX_SEQ_LEN}",
                self.collate.max_seq_len
            ));
        }
        if self.max_caption_bytes == 0 {
            return bad("max_caption_bytes must be at least 1".into());
        }
        let max_prompt = crate::session::DEFAULT_MAX_PROMPT_BYTES;
        if self.collate.prompt.len() > max_prompt {
            return Err(Error::Limit(format!(
                "training prompt of {} bytes exceeds the limit of {max_prompt}",
                self.collate.prompt.len()
            )));
        }
        optim::check_config(&optim::AdamWConfig {
            beta1: self.betas.0,
            beta2: self.betas.1,
            eps: self.eps,
            weight_decay: self.weight_decay,
        })
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
            warmup_ratio: 0.0,
            total_steps: 1,
            max_grad_norm: 1.0,
            micro_batch: 1,
            seed: 42,
            recompute: false,
            max_bad_steps: 10,
            qlora: false,
            collate: CollateOptions {
                prompt: crate::session::DEFAULT_PROMPT.to_string(),
                longest_edge: None,
                max_seq_len: 2048,
            },
            feature_cache_mb: 1024,
            max_caption_bytes: DEFAULT_MAX_CAPTION_BYTES,
        }
    }
}

/// Image features by image key, oldest evicted first past a byte budget.
#[derive(Default)]
struct FeatureCache {
    map: std::collections::HashMap<u64, Tensor>,
    order: std::collections::VecDeque<u64>,
    bytes: usize,
}

impl FeatureCache {
    fn insert(&mut self, key: u64, t: Tensor, budget: usize) {
        let n = t.elem_count() * 4;
        if n > budget {
            return;
        }
        while self.bytes + n > budget {
            match self.order.pop_front() {
                Some(k) => {
                    if let Some(old) = self.map.remove(&k) {
                        self.bytes -= old.elem_count() * 4;
                    }
                }
                None => break,
            }
        }
        if self.map.insert(key, t).is_none() {
            self.order.push_back(key);
            self.bytes += n;
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StepStats {
    /// Optimizer steps taken so far (after this one).
    pub step: u64,
    /// Token-mean cross-entropy over the step's label tokens.
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Label tokens.
    pub tokens: usize,
    /// Examples used.
    pub examples: usize,
    /// Examples rejected as too long.
    pub rejected: usize,
    /// Examples whose caption was shortened.
    pub truncated: usize,
    /// The step was skipped (non-finite loss or gradients); parameters are unchanged.
    pub skipped: bool,
}

/// Fine-tunes LoRA factors (and optionally the connector) of one model.
pub struct Trainer {
    model: Arc<dyn ModelRef>,
    net: Net,
    params: ParamSet,
    opt: optim::AdamW,
    adapter_cfg: AdapterConfig,
    lora: LoraOptions,
    opts: TrainOptions,
    warmup: u64,
    step: u64,
    bad_in_row: u32,
    skipped_total: u64,
    cancel: Arc<AtomicBool>,
    features: std::sync::Mutex<FeatureCache>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("params", &self.params.numel())
            .finish()
    }
}

/// Kaiming-uniform(a=√5) bound of peft's LoRA A initialisation: 1/√in.
fn kaiming_bound(fan_in: usize) -> f64 {
    1.0 / (fan_in as f64).sqrt()
}

impl Trainer {
    /// A new run: LoRA A drawn as peft does (kaiming-uniform), B zero; or, with `init`, the
    /// factors (and connector) of an existing PEFT adapter, whose configuration then applies.
    pub fn new(
        model: Arc<dyn ModelRef>,
        lora: LoraOptions,
        opts: TrainOptions,
        init: Option<&Path>,
    ) -> Result<Self> {
        opts.validate()?;
        let m = model.model();
        let base = m.dir().display().to_string();
        let (adapter_cfg, init_adapter) = match init {
            Some(dir) => {
                let a = Adapter::load(dir, m.network())?;
                (a.config.clone(), Some(a))
            }
            None => (lora.adapter_config(&base, opts.qlora)?, None),
        };
        let by_name: BTreeMap<String, &AdapterModule> = init_adapter
            .as_ref()
            .map(|a| a.modules.iter().map(|m| (m.name.clone(), m)).collect())
            .unwrap_or_default();
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let mut params = ParamSet::default();
        let cfg = &adapter_cfg;
        let mut make = |l: &crate::model::linear::Linear| -> Result<Option<LoraSpec>> {
            if let Some(a) = by_name.get(&l.name) {
                return Ok(Some(LoraSpec {
                    a: a.a.to_dtype(DType::F32)?,
                    b: a.b.to_dtype(DType::F32)?,
                    scale: a.scale,
                }));
            }
            if init_adapter.is_some() || !cfg.targets(&l.name)? {
                return Ok(None);
            }
            let (r, _) = cfg.rank_alpha(&l.name)?;
            let (out, inp) = l.weight.dims();
            let bound = kaiming_bound(inp);
            let a: Vec<f32> = (0..r * inp)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            let dev = l.weight.device();
            Ok(Some(LoraSpec {
                a: Tensor::from_vec(a, (r, inp), dev)?,
                b: Tensor::zeros((out, r), DType::F32, dev)?,
                scale: cfg.scale(&l.name)?,
            }))
        };
        let train_connector = adapter_cfg
            .modules_to_save
            .iter()
            .any(|s| s == "connector" || s.ends_with(".connector"));
        let connector_init = init_adapter.as_ref().and_then(|a| {
            a.saved
                .get(&m.network().connector.proj.name)
                .map(|(w, _)| w.clone())
        });
        let net = Net::build(
            m.network(),
            &NetOptions {
                nf4_block: opts.qlora.then_some(64),
            },
            &mut params,
            &mut make,
            train_connector,
            connector_init,
        )?;
        if params.values.is_empty() {
            return Err(Error::InvalidArgument(
                "the LoRA configuration matches no module of this model".into(),
            ));
        }
        let sizes: Vec<usize> = params.values.iter().map(Tensor::elem_count).collect();
        let opt = optim::AdamW::new(
            &sizes,
            optim::AdamWConfig {
                beta1: opts.betas.0,
                beta2: opts.betas.1,
                eps: opts.eps,
                weight_decay: opts.weight_decay,
            },
        )?;
        let warmup = optim::warmup_steps_from_ratio(opts.warmup_ratio, opts.total_steps);
        let lora = LoraOptions {
            r: adapter_cfg.r,
            alpha: adapter_cfg.lora_alpha,
            dropout: if init.is_some() {
                lora.dropout
            } else {
                adapter_cfg.lora_dropout as f32
            },
            use_rslora: adapter_cfg.use_rslora,
            train_connector,
            ..lora
        };
        Ok(Self {
            model,
            net,
            params,
            opt,
            adapter_cfg,
            lora,
            opts,
            warmup,
            step: 0,
            bad_in_row: 0,
            skipped_total: 0,
            cancel: Arc::new(AtomicBool::new(false)),
            features: std::sync::Mutex::new(FeatureCache::default()),
        })
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Trainable scalars.
    pub fn trainable_parameters(&self) -> usize {
        self.params.numel()
    }

    /// Bytes of frozen weights resident for this run: the model's own (NF4 codes for the
    /// decoder layers of a model loaded as a QLoRA base) plus any copies the trainer made
    /// (f32 conversions of a 16-bit model, NF4 codes of a dense model trained with QLoRA).
    pub fn resident_weight_bytes(&self) -> usize {
        self.model.model().network().resident_weight_bytes() + self.net.extra_weight_bytes()
    }

    /// Steps skipped because of non-finite values.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped_total
    }

    /// The options of this run.
    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    /// A flag that, once set (from any thread), makes the running step stop with `Cancelled`.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Makes `flag` the cancel flag (e.g. one shared with other work of the caller).
    pub fn set_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = flag;
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        optim::linear_schedule_with_warmup(self.opts.lr, step, self.warmup, self.opts.total_steps)
    }

    /// Tokenizes examples; rejected ones are counted and left out.
    pub fn samples(&self, examples: &[Example]) -> Result<(Vec<Sample>, usize)> {
        let m = self.model.model();
        let mut out = Vec::with_capacity(examples.len());
        let mut rejected = 0;
        for ex in examples {
            // Bytes first: a huge caption is never tokenized.
            if ex.caption.len() > self.opts.max_caption_bytes {
                rejected += 1;
                continue;
            }
            match collate::build_sample(m, ex, &self.opts.collate)? {
                Ok(s) => out.push(s),
                Err(collate::Rejected::TooLong { .. }) => rejected += 1,
            }
        }
        Ok((out, rejected))
    }

    /// Sum of label cross-entropies and label tokens of `samples` (micro-batched), adding
    /// gradients scaled by `grad_scale` into `grads` when given.
    fn run(
        &self,
        samples: &[Sample],
        grad_scale: f64,
        mut grads: Option<&mut Grads>,
    ) -> Result<(f64, usize)> {
        let m = self.model.model();
        let dev = m.network().device().clone();
        let mb = self.opts.micro_batch.max(1);
        let mut total = 0f64;
        let mut tokens = 0usize;
        for (mi, chunk) in samples.chunks(mb).enumerate() {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let refs: Vec<&Sample> = chunk.iter().collect();
            let b = collate::batch(
                &refs,
                m.pad_token(),
                m.network().config().image_token_id,
                &dev,
            )?;
            let seed = self.opts.seed ^ (self.step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let dropout = if grads.is_some() {
                self.lora.dropout
            } else {
                0.0
            };
            let mut img_rng = StdRng::seed_from_u64(seed ^ ((mi as u64) << 32) ^ 0xFFFF);
            let mut ctx = Ctx {
                params: &self.params,
                dropout,
                rng: Some(&mut img_rng),
            };
            let (feats, icache) = match &b.pixels {
                Some(p) => match self.cached_features(chunk)? {
                    Some(f) => (Some(f), Some(net::ImageCache::Frozen)),
                    None => {
                        let (f, c) = self.net.image_forward(m.network(), p, &mut ctx)?;
                        (Some(f), Some(c))
                    }
                },
                None => (None, None),
            };
            if let Some(f) = &feats {
                if f.dim(0)? != b.image_pos.len() {
                    return Err(Error::InvalidArgument(format!(
                        "the prompts have {} image tokens but the images give {} features",
                        b.image_pos.len(),
                        f.dim(0)?
                    )));
                }
            }
            let embeds = self.net.text.embed(&b.ids, &b.image_pos, feats.as_ref())?;
            let tb = TextBatch {
                label_pos: &b.label_pos,
                labels: &b.labels,
            };
            let mut ctx = Ctx {
                params: &self.params,
                dropout,
                rng: None,
            };
            let loss = match grads.as_deref_mut() {
                Some(g) => {
                    let need_embed_grad = self.net.image_trainable() && feats.is_some();
                    let mut layer_rng = |li: usize| {
                        Some(StdRng::seed_from_u64(
                            seed ^ ((mi as u64) << 32) ^ li as u64,
                        ))
                    };
                    let (loss, demb) = self.net.text.loss_and_backward(
                        &embeds,
                        &tb,
                        grad_scale,
                        &mut ctx,
                        g,
                        need_embed_grad,
                        self.opts.recompute,
                        &mut layer_rng,
                    )?;
                    if let (Some(d), Some(c)) = (demb, &icache) {
                        let (bb, l, h) = d.dims3()?;
                        let idx = Tensor::new(b.image_pos.as_slice(), &dev)?;
                        let dfeat = d.reshape((bb * l, h))?.index_select(&idx, 0)?;
                        self.net.image_backward(&dfeat, c, &self.params, g)?;
                    }
                    loss
                }
                None => self.net.text.loss_only(&embeds, &tb, &mut ctx)?,
            };
            total += loss;
            tokens += b.labels.len();
        }
        Ok((total, tokens))
    }

    /// Image features of `chunk` through the feature cache, when every sample has an image key
    /// and nothing upstream of the decoder is trained; `None` when the cache does not apply.
    fn cached_features(&self, chunk: &[Sample]) -> Result<Option<Tensor>> {
        let budget = self.opts.feature_cache_mb << 20;
        if budget == 0
            || self.net.image_trainable()
            || chunk
                .iter()
                .any(|s| s.image_key.is_none() || s.num_tiles == 0)
        {
            return Ok(None);
        }
        let m = self.model.model();
        let dev = m.network().device().clone();
        let empty = crate::lora::LoraSet::empty();
        let mut cache = match self.features.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let mut parts = Vec::with_capacity(chunk.len());
        for s in chunk {
            let key = s.image_key.unwrap_or_default();
            if let Some(f) = cache.map.get(&key) {
                parts.push(f.clone());
                continue;
            }
            let px = Tensor::from_slice(
                &s.pixel_values,
                (s.num_tiles, 3, s.tile_size, s.tile_size),
                &dev,
            )?;
            let f = m
                .network()
                .image_features(&px, &empty)?
                .to_dtype(DType::F32)?;
            let h = f.dim(2)?;
            let f = f.reshape(((), h))?;
            cache.insert(key, f.clone(), budget);
            parts.push(f);
        }
        Ok(Some(Tensor::cat(&parts, 0)?))
    }

    /// One optimizer step over `examples` (micro-batched by `micro_batch`; the loss is the
    /// token mean over all of them, as transformers' Trainer normalises accumulated steps).
    pub fn step(&mut self, examples: &[Example]) -> Result<StepStats> {
        let (samples, rejected) = self.samples(examples)?;
        self.step_samples(&samples, rejected)
    }

    /// [`Trainer::step`] on already tokenized samples.
    pub fn step_samples(&mut self, samples: &[Sample], rejected: usize) -> Result<StepStats> {
        let truncated = samples.iter().filter(|s| s.truncated).count();
        let tokens: usize = samples.iter().map(|s| s.ids.len() - s.prompt_len).sum();
        let lr = self.lr_at(self.step);
        let mut stats = StepStats {
            step: self.step,
            lr,
            tokens,
            examples: samples.len(),
            rejected,
            truncated,
            ..StepStats::default()
        };
        if tokens == 0 {
            return Err(Error::InvalidArgument(
                "no usable example in this step (all rejected as too long?)".into(),
            ));
        }
        let mut grads = Grads::new(self.params.values.len());
        let (sum, n) = self.run(samples, 1.0 / tokens as f64, Some(&mut grads))?;
        if n != tokens {
            return Err(Error::Internal(format!("label count {n} != {tokens}")));
        }
        stats.loss = sum / tokens as f64;
        let mut flat: Vec<Vec<f32>> = Vec::with_capacity(grads.0.len());
        for (g, p) in grads.0.iter().zip(&self.params.values) {
            flat.push(match g {
                Some(g) => g.flatten_all()?.to_vec1()?,
                None => vec![0f32; p.elem_count()],
            });
        }
        let norm = {
            let mut refs: Vec<&mut [f32]> = flat.iter_mut().map(Vec::as_mut_slice).collect();
            if self.opts.max_grad_norm > 0.0 {
                f64::from(optim::clip_grad_norm(&mut refs, self.opts.max_grad_norm))
            } else {
                let r: Vec<&[f32]> = refs.iter().map(|g| &**g).collect();
                f64::from(optim::grad_norm(&r))
            }
        };
        stats.grad_norm = norm;
        if !stats.loss.is_finite() || !norm.is_finite() {
            self.bad_in_row += 1;
            self.skipped_total += 1;
            stats.skipped = true;
            // The schedule still advances, as the step was consumed.
            self.step += 1;
            stats.step = self.step;
            if self.bad_in_row >= self.opts.max_bad_steps.max(1) {
                return Err(Error::Numeric(format!(
                    "{} non-finite steps in a row (last loss {}, grad norm {norm})",
                    self.bad_in_row, stats.loss
                )));
            }
            return Ok(stats);
        }
        self.bad_in_row = 0;
        let mut values: Vec<Vec<f32>> = Vec::with_capacity(flat.len());
        for p in &self.params.values {
            values.push(p.flatten_all()?.to_vec1()?);
        }
        {
            let mut prefs: Vec<&mut [f32]> = values.iter_mut().map(Vec::as_mut_slice).collect();
            let grefs: Vec<&[f32]> = flat.iter().map(Vec::as_slice).collect();
            self.opt.step(&mut prefs, &grefs, lr)?;
        }
        for (p, v) in self.params.values.iter_mut().zip(values) {
            *p = Tensor::from_vec(v, p.dims(), p.device())?;
        }
        self.step += 1;
        stats.step = self.step;
        Ok(stats)
    }

    /// Token-mean loss of `examples` without changing anything (dropout off).
    pub fn eval(&self, examples: &[Example]) -> Result<(f64, usize)> {
        let (samples, _) = self.samples(examples)?;
        let (sum, n) = self.run(&samples, 0.0, None)?;
        Ok((if n > 0 { sum / n as f64 } else { f64::NAN }, n))
    }

    /// The trained factors as a PEFT adapter.
    pub fn adapter(&self) -> Result<Adapter> {
        let mut modules = Vec::new();
        for (name, l, _) in self.net.lora_modules() {
            modules.push(AdapterModule {
                name: name.to_string(),
                a: self.params.values[l.a].clone(),
                b: self.params.values[l.b].clone(),
                scale: l.scale,
            });
        }
        let mut saved = BTreeMap::new();
        if let Some(i) = self.net.connector.full {
            saved.insert(
                self.net.connector.name.clone(),
                (self.params.values[i].clone(), None),
            );
        }
        Ok(Adapter {
            dir: Default::default(),
            config: self.adapter_cfg.clone(),
            modules,
            saved,
        })
    }

    /// Writes the adapter in PEFT's layout, atomically.
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        self.adapter()?.save(dir)
    }

    /// Writes the adapter's two files into the existing directory `dir` (no directory swap:
    /// for callers that publish them as part of a larger unit).
    pub fn save_adapter_files(&self, dir: &Path) -> Result<()> {
        self.adapter()?.save_files(dir)
    }

    /// Writes a checkpoint (adapter, optimizer moments, step and schedule, counters, and the
    /// caller's `data_state`, e.g. the data position) atomically: temp dir, fsync, rename.
    pub fn save_checkpoint(&self, dir: &Path, data_state: &Value) -> Result<()> {
        let adapter = self.adapter()?;
        let st = self.opt.export_state();
        let state = CheckpointState {
            format: 1,
            step: self.step,
            bad_in_row: self.bad_in_row,
            skipped_total: self.skipped_total,
            optimizer_step: st.step,
            param_names: self.params.names.clone(),
            lora: self.lora.clone(),
            options: self.opts.clone(),
            data: data_state.clone(),
        };
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|e| Error::Internal(format!("checkpoint state: {e}")))?;
        let dev = candle_core::Device::Cpu;
        let mut moments = std::collections::HashMap::new();
        for (i, name) in self.params.names.iter().enumerate() {
            moments.insert(
                format!("{name}.exp_avg"),
                Tensor::from_slice(&st.exp_avg[i], st.exp_avg[i].len(), &dev)?,
            );
            moments.insert(
                format!("{name}.exp_avg_sq"),
                Tensor::from_slice(&st.exp_avg_sq[i], st.exp_avg_sq[i].len(), &dev)?,
            );
        }
        crate::fsio::write_dir_atomic(dir, |tmp| {
            adapter.save(&tmp.join("adapter"))?;
            let opt = tmp.join("optimizer.safetensors");
            candle_core::safetensors::save(&moments, &opt)
                .map_err(|e| Error::io(&opt, std::io::Error::other(e.to_string())))?;
            crate::fsio::fsync_file(&opt)?;
            crate::fsio::write_file_synced(&tmp.join("trainer_state.json"), &json)
        })
    }

    /// Resumes the run saved in `dir` by [`Trainer::save_checkpoint`]; returns the trainer and
    /// the caller's data state.
    pub fn resume(model: Arc<dyn ModelRef>, dir: &Path) -> Result<(Self, Value)> {
        let path = dir.join("trainer_state.json");
        let st = read_checkpoint_state(dir)?;
        let mut t = Self::new(
            model,
            st.lora.clone(),
            st.options.clone(),
            Some(&dir.join("adapter")),
        )?;
        if t.params.names != st.param_names {
            return Err(Error::format(
                &path,
                "the adapter's parameters differ from the ones the state describes",
            ));
        }
        let opt_path = dir.join("optimizer.safetensors");
        // Two f32 moments per trainable scalar, plus a header.
        let max_bytes = 8 * t.params.numel() as u64 + crate::fsio::MAX_JSON_BYTES;
        let bytes = crate::fsio::read_limited(&opt_path, max_bytes)?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)
            .map_err(|e| Error::format(&opt_path, e.to_string()))?;
        drop(bytes);
        let mut m = Vec::new();
        let mut v = Vec::new();
        for (name, p) in t.params.names.iter().zip(&t.params.values) {
            for (suffix, out) in [("exp_avg", &mut m), ("exp_avg_sq", &mut v)] {
                let key = format!("{name}.{suffix}");
                let x = tensors
                    .get(&key)
                    .ok_or_else(|| Error::format(&opt_path, format!("missing tensor {key}")))?;
                if x.elem_count() != p.elem_count() {
                    return Err(Error::format(&opt_path, format!("{key}: wrong size")));
                }
                out.push(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        t.opt.import_state(optim::AdamWState {
            step: st.optimizer_step,
            exp_avg: m,
            exp_avg_sq: v,
        })?;
        t.step = st.step;
        t.bad_in_row = st.bad_in_row;
        t.skipped_total = st.skipped_total;
        Ok((t, st.data))
    }
}

/// Reads and checks `dir/trainer_state.json`: the counters must be consistent with each other
/// and with the run the checkpoint belongs to, and the options valid.
fn read_checkpoint_state(dir: &Path) -> Result<CheckpointState> {
    let path = dir.join("trainer_state.json");
    let text = crate::fsio::read_text_limited(&path, crate::fsio::MAX_JSON_BYTES)?;
    let st: CheckpointState = serde_json::from_str(&text)
        .map_err(|e| Error::format(&path, format!("invalid trainer state: {e}")))?;
    if st.format != 1 {
        return Err(Error::format(
            &path,
            format!("format: unknown value {}", st.format),
        ));
    }
    let bad = |m: String| Err(Error::format(&path, m));
    if st.step > st.options.total_steps {
        return bad(format!(
            "step {} is past the run's options.total_steps {}",
            st.step, st.options.total_steps
        ));
    }
    if st.optimizer_step > st.step {
        return bad(format!(
            "optimizer_step {} is larger than step {}",
            st.optimizer_step, st.step
        ));
    }
    if st.skipped_total > st.step || u64::from(st.bad_in_row) > st.skipped_total {
        return bad(format!(
            "skipped_total {} / bad_in_row {} are inconsistent with step {}",
            st.skipped_total, st.bad_in_row, st.step
        ));
    }
    st.options
        .validate()
        .and_then(|()| st.lora.validate())
        .map_err(|e| Error::format(&path, format!("options: {e}")))?;
    Ok(st)
}

/// The LoRA and optimisation options a checkpoint directory was saved with (checked as
/// [`Trainer::resume`] checks them), for callers that resume with options of their own.
pub fn checkpoint_options(dir: &Path) -> Result<(LoraOptions, TrainOptions)> {
    let st = read_checkpoint_state(dir)?;
    Ok((st.lora, st.options))
}

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    format: u32,
    step: u64,
    bad_in_row: u32,
    skipped_total: u64,
    optimizer_step: u64,
    param_names: Vec<String>,
    lora: LoraOptions,
    options: TrainOptions,
    data: Value,
}
