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
use crate::quant::QuantSpec;
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
        Self::load_with(w, cfg, &QuantSpec::default())
    }

    /// [`Idefics3::load`], with each part's weights quantised as they are read where `quant`
    /// says (no f32 copy of a quantised weight is ever kept).
    pub fn load_with(w: &Weights, cfg: &ModelConfig, quant: &QuantSpec) -> Result<Self> {
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
        let vision = VisionModel::load(w, vp, &cfg.vision, quant.vision)?;
        let connector = Connector::load(
            w,
            cp,
            (cfg.vision.hidden_size, cfg.text.hidden_size),
            cfg.scale_factor,
            quant.connector,
        )?;
        let text = TextModel::load(w, tp, &cfg.text, cfg.tie_word_embeddings, quant)?;
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
        let mut seen_quant = std::collections::HashSet::new();
        let mut quant = |q: &std::sync::Arc<crate::quant::QuantTensor>| {
            if seen_quant.insert(std::sync::Arc::as_ptr(q)) {
                q.resident_bytes()
            } else {
                0
            }
        };
        if let text::Embedding::Quantized { q, .. } = &self.text.embed {
            n += quant(q);
        }
        for l in self.linears() {
            match &l.weight {
                linear::Weight::Dense(t) => {
                    if seen.insert(t.id()) {
                        n += l.weight.resident_bytes();
                    }
                }
                linear::Weight::Quantized { q, .. } => n += quant(q),
            }
            if let Some(b) = &l.bias {
                n += bytes(b);
            }
        }
        n
    }

    /// What the weights are really stored as, e.g. `q5_0 ×180, q4_k ×42, q8_0 ×1 (+ dense
    /// tensors)`: the linear layers' and the embedding's storage formats with counts, most
    /// common first (a requested K-quant falls back per tensor; see [`crate::quant::GgmlKind::for_cols`]).
    pub fn stored_formats(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut add = |f: String| match counts.iter_mut().find(|(g, _)| *g == f) {
            Some((_, n)) => *n += 1,
            None => counts.push((f, 1)),
        };
        let embed = match &self.text.embed {
            text::Embedding::Quantized { q, .. } => Some(q.clone()),
            text::Embedding::Dense(_) => None,
        };
        match &embed {
            Some(q) => add(q.format_name().to_string()),
            None => add(self.dtype.as_str().to_string()),
        }
        for l in self.linears() {
            match &l.weight {
                // A head tied to a quantised embedding is the same table, counted once.
                linear::Weight::Quantized { q, .. }
                    if embed.as_ref().is_some_and(|e| std::sync::Arc::ptr_eq(e, q)) => {}
                linear::Weight::Quantized { q, .. } => add(q.format_name().to_string()),
                linear::Weight::Dense(t) => add(t.dtype().as_str().to_string()),
            }
        }
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        counts
            .iter()
            .map(|(f, n)| format!("{f} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
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
    use crate::quant::Nf4Config;
    use std::path::Path;

    /// Replaces every quantised weight of `m` (linears and embedding) by its dequantised dense
    /// copy, returning how many were replaced.
    fn dequantise_in_place(m: &mut Idefics3) -> usize {
        let mut n = 0;
        let mut fix = |l: &mut linear::Linear| {
            if matches!(l.weight, Weight::Quantized { .. }) {
                let d = l.weight.to_dense().unwrap();
                l.weight = Weight::Dense(crate::kernels::cpu::store_transposed(d).unwrap());
                n += 1;
            }
        };
        for layer in &mut m.vision.layers {
            let (a, f) = (&mut layer.attn, &mut layer.mlp);
            for l in [
                &mut a.q, &mut a.k, &mut a.v, &mut a.out, &mut f.fc1, &mut f.fc2,
            ] {
                fix(l);
            }
        }
        fix(&mut m.connector.proj);
        for layer in &mut m.text.layers {
            let (a, f) = (&mut layer.attn, &mut layer.mlp);
            for l in [
                &mut a.q,
                &mut a.k,
                &mut a.v,
                &mut a.o,
                &mut f.gate,
                &mut f.up,
                &mut f.down,
            ] {
                fix(l);
            }
        }
        fix(&mut m.text.lm_head);
        if matches!(m.text.embed, text::Embedding::Quantized { .. }) {
            m.text.embed = text::Embedding::Dense(m.text.embed.dense().unwrap());
            n += 1;
        }
        n
    }

    /// Image features and all-position logits of a text-and-image forward pass.
    /// Image features, all-position logits of a 20-token prefill of 2 sequences, and the logits
    /// of one decode step after it (2 rows: the products' few-rows path).
    fn features_and_logits(
        m: &Idefics3,
        cfg: &ModelConfig,
        lora: &LoraSet,
    ) -> (Tensor, Tensor, Tensor) {
        let s = cfg.vision.image_size;
        let px: Vec<f32> = (0..2 * 3 * s * s)
            .map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0)
            .collect();
        let px = Tensor::from_vec(px, (2, 3, s, s), &Device::Cpu).unwrap();
        let feats = m.image_features(&px, lora).unwrap();
        let ids: Vec<u32> = (0..40).map(|i| (i * 37 % 590) as u32).collect();
        let ids = Tensor::from_vec(ids, (2, 20), &Device::Cpu).unwrap();
        let pos: Vec<u32> = (0..2).flat_map(|_| 0..20u32).collect();
        let pos = Tensor::from_vec(pos, (2, 20), &Device::Cpu).unwrap();
        let mut cache = KvCache::new(&cfg.text, 2, 32, DType::F32, &Device::Cpu).unwrap();
        let e = m.text.embed(&ids).unwrap();
        let logits = m
            .text
            .forward(&e, &pos, None, &mut cache, Logits::All, lora)
            .unwrap();
        let next = Tensor::from_vec(vec![5u32, 77], (2, 1), &Device::Cpu).unwrap();
        let pos = Tensor::from_vec(vec![20u32, 20], (2, 1), &Device::Cpu).unwrap();
        let e = m.text.embed(&next).unwrap();
        let step = m
            .text
            .forward(&e, &pos, None, &mut cache, Logits::All, lora)
            .unwrap();
        (feats, logits, step)
    }

    fn largest(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Each quantised storage gives the features and logits of its own dequantised weights
    /// (the kernels are exact up to summation order), and holds fewer bytes.
    #[test]
    fn a_quantised_model_gives_the_outputs_of_its_dequantised_weights() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-idefics3");
        let cfg =
            ModelConfig::from_file(&dir.join("config.json"), &ConfigLimits::default()).unwrap();
        let w = Weights::open(&dir, DType::F32, &Device::Cpu).unwrap();
        let dense_bytes = Idefics3::load(&w, &cfg).unwrap().resident_weight_bytes();
        let nf4 = QuantSpec::nf4_decoder(Nf4Config {
            blocksize: 64,
            double_quant: true,
        });
        let mut specs = vec![(
            "nf4 decoder".to_string(),
            nf4,
            7 * cfg.text.num_hidden_layers,
        )];
        let all = 6 * cfg.vision.num_hidden_layers + 1 + 7 * cfg.text.num_hidden_layers + 2;
        for f in ["q8_0", "q6_k", "q5_0", "q4_k", "q4_0", "f16", "bf16"] {
            specs.push((f.to_string(), QuantSpec::parse(f).unwrap(), all));
        }
        for (name, spec, count) in specs {
            let quant = Idefics3::load_with(&w, &cfg, &spec).unwrap();
            let mut dense = Idefics3::load_with(&w, &cfg, &spec).unwrap();
            assert_eq!(dequantise_in_place(&mut dense), count, "{name}");
            assert!(dense.stored_formats().starts_with("f32 ×"), "{name}");
            assert!(quant.resident_weight_bytes() < dense_bytes, "{name}");
            // Without and with a LoRA adapter applied unmerged on top (loaded against the
            // quantised model: its shapes are the checkpoint's).
            let adapter = crate::lora::peft::Adapter::load(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adapters/text_r4_a8"),
                &quant,
            )
            .unwrap();
            let mut with = LoraSet::empty();
            adapter.add_to(&mut with, 1.0, DType::F32).unwrap();
            let mut plain: Option<Tensor> = None;
            for lora in [LoraSet::empty(), with] {
                let (fq, lq, sq) = features_and_logits(&quant, &cfg, &lora);
                let (fd, ld, sd) = features_and_logits(&dense, &cfg, &lora);
                if let Some(p) = &plain {
                    let moved = crate::kernels::tests::max_diff(p, &ld);
                    assert!(
                        moved > 1e-2,
                        "{name}: the adapter moves the logits by {moved}"
                    );
                }
                plain = Some(ld.clone());
                assert!(
                    largest(&ld) > 0.1 && largest(&fd) > 0.1,
                    "{name}: outputs too flat"
                );
                let df = crate::kernels::tests::max_diff(&fq, &fd);
                let dl = crate::kernels::tests::max_diff(&lq, &ld);
                let ds = crate::kernels::tests::max_diff(&sq, &sd);
                assert!(largest(&sd) > 0.1, "{name}: decode-step logits too flat");
                let what = if lora.is_empty() {
                    ""
                } else {
                    " with an adapter"
                };
                assert!(
                    df <= 1e-4 && dl <= 1e-4 && ds <= 1e-4,
                    "{name}{what}: features differ by {df}, logits by {dl}, decode step by {ds}"
                );
            }
        }
    }
}
