//! The Idefics3 / SmolVLM network: vision tower, connector and text decoder.

pub mod connector;
pub mod linear;
pub mod text;
pub mod vision;
pub mod weights;

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::lora::LoraSet;
use crate::quant::nf4::Nf4Config;
use connector::Connector;
use text::TextModel;
use vision::VisionModel;
use weights::Weights;

/// Immutable weights of a loaded Idefics3 model; share it behind an `Arc`.
pub struct Idefics3 {
    cfg: ModelConfig,
    /// SigLIP encoder.
    pub vision: VisionModel,
    /// Pixel shuffle + projection.
    pub connector: Connector,
    /// Llama decoder + head.
    pub text: TextModel,
    dtype: DType,
    device: Device,
}

impl Idefics3 {
    /// Builds the network from checkpoint tensors named as in the HF hub layout.
    pub fn load(w: &Weights, cfg: &ModelConfig) -> Result<Self> {
        Self::load_with(w, cfg, None)
    }

    /// [`Idefics3::load`], with the decoder layers' linear weights quantised to NF4 as they are
    /// read when `text_nf4` is given (the QLoRA base: no f32 copy of them is ever kept).
    pub fn load_with(w: &Weights, cfg: &ModelConfig, text_nf4: Option<Nf4Config>) -> Result<Self> {
        crate::kernels::check_env()?;
        // Some exports store the decoder without the `model.` prefix (older Idefics3 naming).
        let (vp, cp, tp) = if w.contains("model.text_model.embed_tokens.weight") {
            ("model.vision_model", "model.connector", "model.text_model")
        } else if w.contains("text_model.embed_tokens.weight") {
            ("vision_model", "connector", "text_model")
        } else {
            return Err(Error::format(
                "model.safetensors",
                "missing tensor model.text_model.embed_tokens.weight (not an Idefics3 checkpoint?)",
            ));
        };
        let vision = VisionModel::load(w, vp, &cfg.vision)?;
        let connector = Connector::load(
            w,
            cp,
            cfg.vision.hidden_size,
            cfg.text.hidden_size,
            cfg.scale_factor,
        )?;
        let text = TextModel::load(w, tp, &cfg.text, cfg.tie_word_embeddings, text_nf4)?;
        Ok(Self {
            cfg: cfg.clone(),
            vision,
            connector,
            text,
            dtype: w.dtype(),
            device: w.device().clone(),
        })
    }

    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Bytes of every weight the network holds (each shared tensor once: a head tied to the
    /// embedding counts once).
    pub fn resident_weight_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let mut seen = std::collections::HashSet::new();
        let mut n = 0;
        for t in self.vision.tensors().into_iter().chain(self.text.tensors()) {
            if seen.insert(t.id()) {
                n += bytes(t);
            }
        }
        for l in self.linears() {
            let dense = match &l.weight {
                linear::Weight::Dense(t) => Some(t),
                linear::Weight::Nf4 { .. } => None,
            };
            if dense.is_none_or(|t| seen.insert(t.id())) {
                n += l.weight.resident_bytes();
            }
            if let Some(b) = &l.bias {
                n += bytes(b);
            }
        }
        n
    }

    /// Every linear layer (vision, connector, text), by checkpoint module name.
    pub fn linears(&self) -> Vec<&linear::Linear> {
        let mut v = self.vision.linears();
        v.push(&self.connector.proj);
        v.extend(self.text.linears());
        v
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Compute device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Vision tower + connector: `[n, 3, S, S]` tiles → `[n, image_seq_len, text_hidden]`.
    pub fn image_features(&self, pixel_values: &Tensor, lora: &LoraSet) -> Result<Tensor> {
        let v = self.vision.forward(pixel_values, lora)?;
        self.connector.forward(&v, lora)
    }

    /// Text embeddings of `ids` `[b, L]` with every image-token position replaced, in order, by
    /// the rows of `features` `[n, seq, hidden]`.
    pub fn embed_with_images(&self, ids: &Tensor, features: Option<&Tensor>) -> Result<Tensor> {
        let emb = self.text.embed(ids)?;
        let (b, l, hdim) = emb.dims3()?;
        let ids_v = ids.flatten_all()?.to_vec1::<u32>()?;
        let img = self.cfg.image_token_id;
        let positions: Vec<u32> = ids_v
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == img)
            .map(|(i, _)| i as u32)
            .collect();
        let feats = match features {
            Some(f) => f.reshape(((), hdim))?,
            None if positions.is_empty() => return Ok(emb),
            None => {
                return Err(Error::InvalidArgument(format!(
                    "the prompt has {} image tokens but no image was given",
                    positions.len()
                )))
            }
        };
        let n_feat = feats.dim(0)?;
        if n_feat != positions.len() {
            return Err(Error::InvalidArgument(format!(
                "the prompt has {} image tokens but the images give {n_feat} features",
                positions.len()
            )));
        }
        if positions.is_empty() {
            return Ok(emb);
        }
        let flat = emb.reshape((b * l, hdim))?;
        let idx = Tensor::new(positions.as_slice(), emb.device())?;
        // Zero the image slots, then add the features there: exact, unlike emb + (feat - emb).
        let keep: Vec<f32> = ids_v
            .iter()
            .map(|&t| if t == img { 0.0 } else { 1.0 })
            .collect();
        let keep = Tensor::from_vec(keep, (b * l, 1), emb.device())?.to_dtype(emb.dtype())?;
        let merged =
            flat.broadcast_mul(&keep)?
                .index_add(&idx, &feats.to_dtype(emb.dtype())?, 0)?;
        Ok(merged.reshape((b, l, hdim))?)
    }
}
