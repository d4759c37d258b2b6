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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigLimits;
    use crate::model::linear::Weight;
    use crate::model::text::{KvCache, Logits};
    use std::path::Path;

    #[test]
    fn an_nf4_decoder_gives_the_logits_of_its_dequantised_weights() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-idefics3");
        let cfg =
            ModelConfig::from_file(&dir.join("config.json"), &ConfigLimits::default()).unwrap();
        let w = Weights::open(&dir, DType::F32, &Device::Cpu).unwrap();
        let nf4 = Nf4Config {
            blocksize: 64,
            double_quant: true,
        };
        let quant = Idefics3::load_with(&w, &cfg, Some(nf4)).unwrap();
        let mut dense = Idefics3::load_with(&w, &cfg, Some(nf4)).unwrap();
        let mut n = 0;
        for layer in &mut dense.text.layers {
            let a = &mut layer.attn;
            let m = &mut layer.mlp;
            for l in [
                &mut a.q,
                &mut a.k,
                &mut a.v,
                &mut a.o,
                &mut m.gate,
                &mut m.up,
                &mut m.down,
            ] {
                let d = l.weight.to_dense().unwrap();
                assert!(matches!(l.weight, Weight::Nf4 { .. }));
                l.weight = Weight::Dense(crate::kernels::cpu::store_transposed(d).unwrap());
                n += 1;
            }
        }
        assert_eq!(n, 7 * cfg.text.num_hidden_layers);
        assert!(quant.resident_weight_bytes() < dense.resident_weight_bytes());
        let ids: Vec<u32> = (0..40).map(|i| (i * 37 % 590) as u32).collect();
        let ids = Tensor::from_vec(ids, (2, 20), &Device::Cpu).unwrap();
        let pos: Vec<u32> = (0..2).flat_map(|_| 0..20u32).collect();
        let pos = Tensor::from_vec(pos, (2, 20), &Device::Cpu).unwrap();
        let logits = |m: &Idefics3| {
            let mut cache = KvCache::new(&cfg.text, 2, 32, DType::F32, &Device::Cpu).unwrap();
            let e = m.text.embed(&ids).unwrap();
            m.text
                .forward(&e, &pos, None, &mut cache, Logits::All, &LoraSet::empty())
                .unwrap()
        };
        let (a, b) = (logits(&quant), logits(&dense));
        let diff = crate::kernels::tests::max_diff(&a, &b);
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(scale > 0.1, "logits too flat to compare: {scale}");
        assert!(diff <= 1e-4, "NF4 vs dequantised logits differ by {diff}");
    }
}
