//! A loaded model bundle (`Model`) and the captioning pipeline over it.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::config::{ConfigLimits, ModelConfig};
use crate::error::{Error, Result};
use crate::generate::{self, GenerateParams, StepModel};
use crate::lora::peft::Adapter;
use crate::lora::LoraSet;
use crate::model::text::{KvCache, Logits};
use crate::model::Idefics3;
use crate::model_files::ModelFiles;
use crate::processor::image::SourceImage;
use crate::processor::{Prepared, Processor, PromptMode};
use crate::quant::{QuantChoice, QuantSpec};
use crate::tokenizer::IncrementalDecoder;

/// The seed's default prompt.
pub const DEFAULT_PROMPT: &str = "Describe this image in detail.";

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype; `None` = f32 on CPU, the checkpoint's dtype elsewhere.
    pub dtype: Option<DType>,
    /// Compute device.
    pub device: Device,
    /// Hub revision when the model is a repo id.
    pub revision: Option<String>,
    /// Bounds on config values, safetensors headers and adapter ranks (also used by
    /// [`Model::load_adapter`]).
    pub config_limits: ConfigLimits,
    /// Keep the decoder layers' linear weights as NF4 only, quantised tensor by tensor as they
    /// are read (the QLoRA base of bitsandbytes' `load_in_4bit`: blocks of 64, double
    /// quantisation); no f32 copy of them is ever held. Overrides `quantize.text`.
    pub nf4_decoder: bool,
    /// Each part's weight storage (GGML formats for quantised inference), quantised tensor by
    /// tensor as the weights are read; the default keeps every part as stored (dense for
    /// safetensors, each tensor's own format for GGUF).
    pub quantize: QuantSpec,
    /// The vision projector (`mmproj*.gguf`) of a GGUF text model; found beside it when `None`.
    pub mmproj: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            device: Device::Cpu,
            revision: None,
            config_limits: ConfigLimits::default(),
            nf4_decoder: false,
            quantize: QuantSpec::default(),
            mmproj: None,
        }
    }
}

/// Per-call captioning options.
#[derive(Debug, Clone)]
pub struct CaptionOptions {
    /// The user text (chat mode) or the full prompt (raw mode).
    pub prompt: String,
    /// How `prompt` is used.
    pub mode: PromptMode,
    /// Generation settings.
    pub params: GenerateParams,
    /// Overrides the processor's `size.longest_edge`.
    pub longest_edge: Option<u32>,
    /// Longest accepted prompt, in tokens (image tokens included).
    pub max_prompt_tokens: usize,
    /// Most tiles encoded by the vision tower at once (bounds attention memory).
    pub vision_chunk: usize,
    /// LoRA adapters applied (unmerged) for this call, each with its multiplier.
    pub adapters: Vec<ActiveAdapter>,
    /// Most prompts captioned in one batch (beams are bounded by `max_kv_cache_bytes`).
    pub max_batch: usize,
    /// Largest key/value cache allocated for one batch, in bytes.
    pub max_kv_cache_bytes: u64,
    /// Longest accepted prompt text, in bytes, checked before the chat template is rendered or
    /// anything is tokenized (tokenizing costs ~190 bytes of memory per input byte).
    pub max_prompt_bytes: usize,
    /// Longest caption accepted by [`Model::caption_nll`], in bytes, checked before tokenizing.
    pub max_caption_bytes: usize,
}

/// Default of [`CaptionOptions::max_prompt_tokens`].
pub const DEFAULT_MAX_PROMPT_TOKENS: usize = 16_384;
/// Default of [`CaptionOptions::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Default of [`CaptionOptions::max_kv_cache_bytes`] (8 GiB).
pub const DEFAULT_MAX_KV_CACHE_BYTES: u64 = 8 << 30;
/// Default of [`CaptionOptions::max_prompt_bytes`] (256 KiB: 16× the default token limit's
/// worth of typical text; tokenizing it takes ~50 MB and well under a second).
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 256 << 10;
/// Default of [`CaptionOptions::max_caption_bytes`] (64 KiB).
pub const DEFAULT_MAX_CAPTION_BYTES: usize = 64 << 10;

/// A loaded adapter and the multiplier it is applied with (1.0 = as trained).
#[derive(Debug, Clone)]
pub struct ActiveAdapter {
    /// The adapter (shared, immutable).
    pub adapter: Arc<Adapter>,
    /// Multiplier of its update.
    pub weight: f32,
}

impl Default for CaptionOptions {
    fn default() -> Self {
        Self {
            prompt: DEFAULT_PROMPT.into(),
            mode: PromptMode::Chat,
            params: GenerateParams::default(),
            longest_edge: None,
            max_prompt_tokens: DEFAULT_MAX_PROMPT_TOKENS,
            vision_chunk: 4,
            adapters: Vec::new(),
            max_batch: DEFAULT_MAX_BATCH,
            max_kv_cache_bytes: DEFAULT_MAX_KV_CACHE_BYTES,
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
            max_caption_bytes: DEFAULT_MAX_CAPTION_BYTES,
        }
    }
}

/// One generated caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    /// Decoded text, special tokens removed.
    pub text: String,
    /// Generated ids (a final stop token included).
    pub token_ids: Vec<u32>,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Image tiles encoded for this caption.
    pub num_tiles: usize,
    /// Where the time went (for the whole batch this caption was part of).
    pub timings: Timings,
}

/// Caption log-likelihood: negative log-probabilities summed and averaged over its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptionNll {
    /// Sum of -log p over the caption tokens and the stop token.
    pub total: f64,
    /// `total / tokens`.
    pub mean: f64,
    /// Scored tokens (stop token included).
    pub tokens: usize,
}

/// Wall-clock seconds per stage of one `caption` call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Decoding, resizing, tokenizing.
    pub preprocess_s: f64,
    /// Vision tower + connector.
    pub vision_s: f64,
    /// Prompt forward pass.
    pub prefill_s: f64,
    /// Token-by-token generation after the first token.
    pub decode_s: f64,
    /// Decoder steps run after prefill.
    pub decode_steps: usize,
}

/// Everything loaded from a model directory; immutable and shareable across threads.
pub struct Model {
    net: Idefics3,
    processor: Processor,
    dir: PathBuf,
    stop_tokens: Vec<u32>,
    pad_token: u32,
    limits: ConfigLimits,
}

impl Model {
    /// Loads a local directory, a GGUF pair (a `.gguf` text model, or a directory holding one
    /// with its `mmproj*.gguf`) or a hub repo id.
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Self> {
        let local = Path::new(spec);
        let dir = if crate::gguf::is_gguf_path(local) && local.is_file() {
            local.to_path_buf()
        } else {
            crate::hub::resolve(spec, opts.revision.as_deref())?
        };
        Self::load_dir(&dir, opts)
    }

    /// Loads a model directory in the HF layout, or a GGUF pair (see [`Model::load`]).
    pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::open(
            dir,
            opts.mmproj.as_deref(),
            opts.config_limits.max_header_bytes,
        )?;
        Self::load_files(&files, opts)
    }

    /// Loads a model from its files.
    pub fn load_files(files: &ModelFiles, opts: &LoadOptions) -> Result<Self> {
        let cfg_text = files.require_text("config.json", crate::fsio::MAX_JSON_BYTES)?;
        let cfg_json: Value = serde_json::from_str(&cfg_text)
            .map_err(|e| Error::format(files.path("config.json"), format!("invalid JSON: {e}")))?;
        let cfg =
            ModelConfig::from_json(&cfg_json, &files.path("config.json"), &opts.config_limits)?;
        let dtype = match opts.dtype {
            Some(d) => d,
            None => DType::F32,
        };
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::Unsupported(format!("compute dtype {dtype:?}")));
        }
        let weights = files.weights(dtype, &opts.device, opts.config_limits.max_header_bytes)?;
        // The trainer's QLoRA quantisation (train::net), so a run gives the same codes either way.
        let mut quant = opts.quantize;
        if opts.nf4_decoder {
            quant.text = Some(QuantChoice::Nf4(crate::quant::Nf4Config {
                blocksize: 64,
                double_quant: true,
            }));
        }
        let net = Idefics3::load_with(&weights, &cfg, &quant)?;
        drop(weights);
        let processor = Processor::load(files, &cfg)?;
        let (stop_tokens, pad_token) = special_ids(files, &processor)?;
        Ok(Self {
            net,
            processor,
            dir: files.root(),
            stop_tokens,
            pad_token,
            limits: opts.config_limits.clone(),
        })
    }

    /// The load-time limits this model was loaded with (adapters are checked against them).
    pub fn limits(&self) -> &ConfigLimits {
        &self.limits
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The network.
    pub fn network(&self) -> &Idefics3 {
        &self.net
    }

    /// The processor.
    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// Generation stops on these ids.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// The id used to pad batches.
    pub fn pad_token(&self) -> u32 {
        self.pad_token
    }

    /// Renders and tokenizes one prompt with its images.
    pub fn prepare(&self, images: &[&SourceImage], opts: &CaptionOptions) -> Result<Prepared> {
        if opts.prompt.len() > opts.max_prompt_bytes {
            return Err(Error::Limit(format!(
                "prompt of {} bytes exceeds max_prompt_bytes {}",
                opts.prompt.len(),
                opts.max_prompt_bytes
            )));
        }
        let text = self
            .processor
            .prompt_text(&opts.prompt, images.len(), opts.mode)?;
        let p = self.processor.prepare_limited(
            &text,
            images,
            opts.longest_edge,
            opts.max_prompt_tokens,
        )?;
        if p.input_ids.len() > opts.max_prompt_tokens {
            return Err(Error::Limit(format!(
                "prompt of {} tokens exceeds max_prompt_tokens {}",
                p.input_ids.len(),
                opts.max_prompt_tokens
            )));
        }
        Ok(p)
    }

    /// Vision tower + connector over all tiles of `preps`, in chunks; one tensor per prompt.
    pub fn image_features(&self, preps: &[&Prepared], chunk: usize) -> Result<Vec<Option<Tensor>>> {
        self.image_features_lora(preps, chunk, &LoraSet::empty())
    }

    /// Loads a PEFT adapter directory for this model.
    pub fn load_adapter(&self, dir: &Path) -> Result<Adapter> {
        Adapter::load_limited(dir, &self.net, &self.limits)
    }

    /// The LoRA updates of `adapters`, in the compute dtype.
    pub fn lora_set(&self, adapters: &[ActiveAdapter]) -> Result<LoraSet> {
        let mut set = LoraSet::empty();
        for a in adapters {
            if !a.weight.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "adapter weight {} is not finite",
                    a.weight
                )));
            }
            a.adapter
                .add_to(&mut set, a.weight as f64, self.net.dtype())?;
        }
        Ok(set)
    }

    /// `image_features` with LoRA updates applied.
    pub fn image_features_lora(
        &self,
        preps: &[&Prepared],
        chunk: usize,
        lora: &LoraSet,
    ) -> Result<Vec<Option<Tensor>>> {
        let dev = self.net.device();
        let mut out = Vec::with_capacity(preps.len());
        for p in preps {
            if p.num_tiles == 0 {
                out.push(None);
                continue;
            }
            let s = p.tile_size;
            let all = Tensor::from_slice(&p.pixel_values, (p.num_tiles, 3, s, s), dev)?;
            let mut parts = Vec::new();
            let mut start = 0;
            while start < p.num_tiles {
                let n = chunk.max(1).min(p.num_tiles - start);
                parts.push(self.net.image_features(&all.narrow(0, start, n)?, lora)?);
                start += n;
            }
            out.push(Some(Tensor::cat(&parts, 0)?));
        }
        Ok(out)
    }

    /// Logits of a single prepared prompt: the last position or all positions.
    pub fn prompt_logits(&self, p: &Prepared, which: Logits, chunk: usize) -> Result<Tensor> {
        self.prompt_logits_lora(p, which, chunk, &LoraSet::empty())
    }

    /// `prompt_logits` with LoRA updates applied.
    pub fn prompt_logits_lora(
        &self,
        p: &Prepared,
        which: Logits,
        chunk: usize,
        lora: &LoraSet,
    ) -> Result<Tensor> {
        let feats = self.image_features_lora(&[p], chunk, lora)?;
        let dev = self.net.device();
        let ids = Tensor::new(p.input_ids.as_slice(), dev)?.unsqueeze(0)?;
        let emb = self.net.embed_with_images(&ids, feats[0].as_ref())?;
        let l = p.input_ids.len();
        let mut cache = KvCache::new(&self.net.config().text, 1, l, self.net.dtype(), dev)?;
        let pos = Tensor::arange(0u32, l as u32, dev)?.unsqueeze(0)?;
        let logits = self
            .net
            .text
            .forward(&emb, &pos, None, &mut cache, which, lora)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?)
    }

    /// Negative log-likelihood of `caption` (then the stop token) as the answer to the prompt
    /// built from `images` and `opts` — for reranking and scoring captions.
    pub fn caption_nll(
        &self,
        images: &[&SourceImage],
        opts: &CaptionOptions,
        caption: &str,
    ) -> Result<CaptionNll> {
        if caption.len() > opts.max_caption_bytes {
            return Err(Error::Limit(format!(
                "caption of {} bytes exceeds max_caption_bytes {}",
                caption.len(),
                opts.max_caption_bytes
            )));
        }
        let mut p = self.prepare(images, opts)?;
        let prompt_len = p.input_ids.len();
        let mut target = self.processor.tokenizer.encode_plain(caption)?;
        if let Some(&eos) = self.stop_tokens.first() {
            target.push(eos);
        }
        if target.is_empty() {
            return Err(Error::InvalidArgument("empty caption".into()));
        }
        p.input_ids.extend_from_slice(&target);
        let max_pos = self.net.config().text.max_position_embeddings;
        if p.input_ids.len() > max_pos {
            return Err(Error::Limit(format!(
                "prompt of {prompt_len} tokens + caption of {} tokens exceeds the model's \
                 max_position_embeddings {max_pos}",
                target.len()
            )));
        }
        let lora = self.lora_set(&opts.adapters)?;
        let logits = self.prompt_logits_lora(&p, Logits::All, opts.vision_chunk, &lora)?;
        // Position i predicts token i+1: the caption's tokens are predicted from prompt_len-1 on.
        let pred = logits.narrow(0, prompt_len - 1, target.len())?;
        let logp = candle_nn::ops::log_softmax(&pred, candle_core::D::Minus1)?;
        let idx = Tensor::new(target.as_slice(), logits.device())?.unsqueeze(1)?;
        let picked: Vec<f32> = logp.gather(&idx, 1)?.squeeze(1)?.to_vec1()?;
        let total: f64 = picked.iter().map(|&v| -(v as f64)).sum();
        Ok(CaptionNll {
            total,
            mean: total / target.len() as f64,
            tokens: target.len(),
        })
    }

    /// Captions each entry of `inputs` (the images of one prompt), batched with left padding.
    ///
    /// `on_piece(i, text)` receives streamed text of caption i (greedy and sampling; beam search
    /// reports each finished caption at the end) and may stop that caption.
    pub fn caption(
        &self,
        inputs: &[Vec<&SourceImage>],
        opts: &CaptionOptions,
        cancel: &AtomicBool,
        on_piece: &mut dyn FnMut(usize, &str) -> ControlFlow<()>,
    ) -> Result<Vec<Caption>> {
        opts.params.validate()?;
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let beams = match opts.params.strategy {
            generate::Strategy::Beam(b) => b.num_beams.max(1),
            _ => 1,
        };
        if inputs.len() > opts.max_batch {
            return Err(Error::Limit(format!(
                "batch of {} prompts exceeds max_batch {}",
                inputs.len(),
                opts.max_batch
            )));
        }
        let max_pos = self.net.config().text.max_position_embeddings;
        if opts.params.max_new_tokens > max_pos {
            return Err(Error::Limit(format!(
                "max_new_tokens {} exceeds the model's max_position_embeddings {max_pos}",
                opts.params.max_new_tokens
            )));
        }
        let t0 = Instant::now();
        let preps: Vec<Prepared> = inputs
            .iter()
            .map(|imgs| self.prepare(imgs, opts))
            .collect::<Result<_>>()?;
        let refs: Vec<&Prepared> = preps.iter().collect();
        let lora = self.lora_set(&opts.adapters)?;
        let t1 = Instant::now();
        let feats = self.image_features_lora(&refs, opts.vision_chunk, &lora)?;
        let t2 = Instant::now();
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let dev = self.net.device();
        let b = preps.len();
        let lmax = preps.iter().map(|p| p.input_ids.len()).max().unwrap_or(0);
        // Embed each prompt on its own, then left-pad the embeddings into one batch.
        let pad_emb = self
            .net
            .text
            .embed(&Tensor::new(&[[self.pad_token]], dev)?)?;
        let mut rows = Vec::with_capacity(b);
        let mut mask = vec![0u8; b * lmax];
        let mut pos = vec![1u32; b * lmax];
        for (r, (p, f)) in preps.iter().zip(&feats).enumerate() {
            let l = p.input_ids.len();
            let ids = Tensor::new(p.input_ids.as_slice(), dev)?.unsqueeze(0)?;
            let e = self.net.embed_with_images(&ids, f.as_ref())?;
            let e = if l < lmax {
                Tensor::cat(&[&pad_emb.repeat((1, lmax - l, 1))?, &e], 1)?
            } else {
                e
            };
            rows.push(e);
            for j in 0..l {
                mask[r * lmax + lmax - l + j] = 1;
                pos[r * lmax + lmax - l + j] = j as u32;
            }
        }
        let emb = Tensor::cat(&rows, 0)?;
        let padded = preps.iter().any(|p| p.input_ids.len() < lmax);
        let key_mask: Vec<Vec<u8>> = (0..b)
            .map(|r| mask[r * lmax..(r + 1) * lmax].to_vec())
            .collect();
        let next_pos: Vec<u32> = preps.iter().map(|p| p.input_ids.len() as u32).collect();
        let capacity = lmax + opts.params.max_new_tokens;
        if capacity > max_pos {
            return Err(Error::Limit(format!(
                "prompt of {lmax} tokens + max_new_tokens {} exceeds the model's \
                 max_position_embeddings {max_pos}",
                opts.params.max_new_tokens
            )));
        }
        let tc = &self.net.config().text;
        let kv_bytes = (tc.num_hidden_layers as u64)
            .saturating_mul(2)
            .saturating_mul((b * beams) as u64)
            .saturating_mul(tc.num_key_value_heads as u64)
            .saturating_mul(capacity as u64)
            .saturating_mul(tc.head_dim as u64)
            .saturating_mul(self.net.dtype().size_in_bytes() as u64);
        if kv_bytes > opts.max_kv_cache_bytes {
            return Err(Error::Limit(format!(
                "the key/value cache for {} sequences × {capacity} positions needs {kv_bytes} \
                 bytes, more than max_kv_cache_bytes {}",
                b * beams,
                opts.max_kv_cache_bytes
            )));
        }
        let mut state = BatchState {
            model: self,
            lora: &lora,
            cache: KvCache::new(&self.net.config().text, b, capacity, self.net.dtype(), dev)?,
            key_mask,
            next_pos,
            padded,
            steps: 0,
        };
        let first = {
            let pos_t = Tensor::from_vec(pos, (b, lmax), dev)?;
            let m = if padded {
                Some(Tensor::from_vec(mask, (b, lmax), dev)?)
            } else {
                None
            };
            let logits = self.net.text.forward(
                &emb,
                &pos_t,
                m.as_ref(),
                &mut state.cache,
                Logits::Last,
                &lora,
            )?;
            logits.to_dtype(DType::F32)?.to_vec2::<f32>()?
        };
        let t3 = Instant::now();
        let prompts: Vec<Vec<u32>> = preps.iter().map(|p| p.input_ids.clone()).collect();
        let tok = &self.processor.tokenizer;
        let mut decoders: Vec<IncrementalDecoder> =
            (0..b).map(|_| IncrementalDecoder::new(true)).collect();
        let mut cb_err: Option<Error> = None;
        let mut on_token = |r: usize, id: u32| -> ControlFlow<()> {
            match decoders[r].push(tok, id) {
                Ok(Some(piece)) => on_piece(r, &piece),
                Ok(None) => ControlFlow::Continue(()),
                Err(e) => {
                    cb_err = Some(e);
                    ControlFlow::Break(())
                }
            }
        };
        let out = generate::generate(
            &mut state,
            first,
            &prompts,
            &opts.params,
            &self.stop_tokens,
            self.pad_token,
            cancel,
            &mut on_token,
        )?;
        if let Some(e) = cb_err {
            return Err(e);
        }
        let timings = Timings {
            preprocess_s: (t1 - t0).as_secs_f64(),
            vision_s: (t2 - t1).as_secs_f64(),
            prefill_s: (t3 - t2).as_secs_f64(),
            decode_s: t3.elapsed().as_secs_f64(),
            decode_steps: state.steps,
        };
        out.into_iter()
            .zip(preps.iter())
            .map(|(ids, p)| {
                Ok(Caption {
                    text: tok.decode(&ids, true)?,
                    token_ids: ids,
                    prompt_tokens: p.input_ids.len(),
                    num_tiles: p.num_tiles,
                    timings,
                })
            })
            .collect()
    }
}

/// Decoding state of one batch: cache, per-row key masks and next positions.
struct BatchState<'a> {
    model: &'a Model,
    lora: &'a LoraSet,
    cache: KvCache,
    key_mask: Vec<Vec<u8>>,
    next_pos: Vec<u32>,
    padded: bool,
    steps: usize,
}

impl StepModel for BatchState<'_> {
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let net = &self.model.net;
        let dev = net.device();
        let b = tokens.len();
        let ids = Tensor::from_slice(tokens, (b, 1), dev)?;
        let emb = net.text.embed(&ids)?;
        let pos = Tensor::from_slice(&self.next_pos, (b, 1), dev)?;
        for m in &mut self.key_mask {
            m.push(1);
        }
        let mask = if self.padded {
            let flat: Vec<u8> = self.key_mask.iter().flatten().copied().collect();
            let t = self.key_mask.first().map_or(0, Vec::len);
            Some(Tensor::from_vec(flat, (b, t), dev)?)
        } else {
            None
        };
        let logits = net.text.forward(
            &emb,
            &pos,
            mask.as_ref(),
            &mut self.cache,
            Logits::Last,
            self.lora,
        )?;
        for p in &mut self.next_pos {
            *p += 1;
        }
        self.steps += 1;
        Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    fn select_rows(&mut self, rows: &[u32]) -> Result<()> {
        self.cache.select_rows(rows)?;
        self.key_mask = rows
            .iter()
            .map(|&r| self.key_mask[r as usize].clone())
            .collect();
        self.next_pos = rows.iter().map(|&r| self.next_pos[r as usize]).collect();
        Ok(())
    }
}

/// Stop ids and pad id: generation_config.json, then config.json, then the tokenizer's eos.
/// Every id is checked where it is read: an integer (not a float, string or negative number),
/// inside the tokenizer's vocabulary; an error names the file and the field.
pub(crate) fn special_ids(dir: &ModelFiles, p: &Processor) -> Result<(Vec<u32>, u32)> {
    let vocab = p.tokenizer.vocab_size() as u64;
    let mut stops: Vec<u32> = Vec::new();
    let mut pad: Option<u32> = None;
    for f in ["generation_config.json", "config.json"] {
        let path = dir.path(f);
        let Some(v) = dir.read_json(f)? else {
            continue;
        };
        // Only the fields that are used are read (and checked).
        if stops.is_empty() {
            stops = ids_of(&path, "eos_token_id", v.get("eos_token_id"), vocab)?;
        }
        if pad.is_none() {
            let pad_ids = ids_of(&path, "pad_token_id", v.get("pad_token_id"), vocab)?;
            if pad_ids.len() > 1 {
                return Err(Error::format(
                    &path,
                    "pad_token_id: expected one token id, not a list",
                ));
            }
            pad = pad_ids.first().copied();
        }
    }
    if stops.is_empty() {
        if let Some(id) = p.tokenizer.token_id("<end_of_utterance>") {
            stops.push(id);
        }
    }
    let pad = pad.or_else(|| stops.first().copied()).unwrap_or(0);
    Ok((stops, pad))
}

/// Token ids of `field` in `path`: absent or null gives none; otherwise an integer or a list
/// of integers, each in `0..vocab` (never narrowed with wrap-around).
fn ids_of(path: &Path, field: &str, v: Option<&Value>, vocab: u64) -> Result<Vec<u32>> {
    let one = |x: &Value, at: String| -> Result<u32> {
        let id = match x {
            Value::Number(n) => n.as_u64().ok_or_else(|| {
                Error::format(
                    path,
                    format!("{at}: {n} is not a token id (a non-negative integer)"),
                )
            })?,
            other => {
                return Err(Error::format(
                    path,
                    format!("{at}: expected a token id (an integer), found {other}"),
                ))
            }
        };
        if id >= vocab.max(1) {
            return Err(Error::format(
                path,
                format!("{at}: token id {id} is outside the tokenizer's vocabulary of {vocab}"),
            ));
        }
        Ok(id as u32)
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| one(x, format!("{field}[{i}]")))
            .collect(),
        Some(x) => Ok(vec![one(x, field.to_string())?]),
    }
}
