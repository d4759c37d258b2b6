//! Model hyper-parameters read from an HF `config.json` (Idefics3 / SmolVLM layout).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// Upper bounds on what a model or adapter directory may declare (config.json values,
/// safetensors headers, adapter ranks), checked before any allocation sized by them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLimits {
    /// Largest accepted hidden size (vision or text); intermediate sizes may be 8× this.
    pub max_hidden: usize,
    /// Largest accepted layer count.
    pub max_layers: usize,
    /// Largest accepted vocabulary.
    pub max_vocab: usize,
    /// Largest accepted head count.
    pub max_heads: usize,
    /// Largest accepted `text_config.max_position_embeddings` (sizes the RoPE tables).
    pub max_positions: usize,
    /// Largest accepted `vision_config.image_size` in pixels.
    pub max_image_size: usize,
    /// Largest accepted safetensors JSON header, in bytes (the safetensors crate's own cap).
    pub max_header_bytes: u64,
    /// Largest accepted LoRA rank (`r` and `rank_pattern` of adapter_config.json).
    pub max_adapter_rank: usize,
}

/// Default of [`ConfigLimits::max_hidden`].
pub const DEFAULT_MAX_HIDDEN: usize = 65_536;
/// Default of [`ConfigLimits::max_layers`].
pub const DEFAULT_MAX_LAYERS: usize = 1_024;
/// Default of [`ConfigLimits::max_vocab`].
pub const DEFAULT_MAX_VOCAB: usize = 4_000_000;
/// Default of [`ConfigLimits::max_heads`].
pub const DEFAULT_MAX_HEADS: usize = 1_024;
/// Default of [`ConfigLimits::max_positions`].
pub const DEFAULT_MAX_POSITIONS: usize = 1 << 20;
/// Default of [`ConfigLimits::max_image_size`].
pub const DEFAULT_MAX_IMAGE_SIZE: usize = 16_384;
/// Default of [`ConfigLimits::max_header_bytes`] (100 MB, as the safetensors crate).
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 100_000_000;
/// Default of [`ConfigLimits::max_adapter_rank`].
pub const DEFAULT_MAX_ADAPTER_RANK: usize = 4_096;
/// Most RoPE table entries (`max_position_embeddings * head_dim / 2`) built at load time.
pub const MAX_ROPE_ENTRIES: usize = 1 << 27;

impl Default for ConfigLimits {
    fn default() -> Self {
        Self {
            max_hidden: DEFAULT_MAX_HIDDEN,
            max_layers: DEFAULT_MAX_LAYERS,
            max_vocab: DEFAULT_MAX_VOCAB,
            max_heads: DEFAULT_MAX_HEADS,
            max_positions: DEFAULT_MAX_POSITIONS,
            max_image_size: DEFAULT_MAX_IMAGE_SIZE,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_adapter_rank: DEFAULT_MAX_ADAPTER_RANK,
        }
    }
}

/// SigLIP vision tower hyper-parameters (`vision_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Width of the encoder.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Side of a square patch in pixels.
    pub patch_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// MLP activation.
    pub hidden_act: Activation,
}

impl VisionConfig {
    /// Patches along one side of the image.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Llama decoder hyper-parameters (`text_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// Width of the decoder.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Size of one attention head.
    pub head_dim: usize,
    /// Vocabulary size of the embedding and output head.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Linear RoPE position scaling factor (1.0 = none).
    pub rope_linear_factor: f64,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// Whether q/k/v/o projections carry a bias.
    pub attention_bias: bool,
    /// Whether MLP projections carry a bias.
    pub mlp_bias: bool,
    /// MLP activation.
    pub hidden_act: Activation,
}

/// Activation functions used by the supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (Llama MLP).
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, SigLIP).
    GeluTanh,
    /// Exact erf GELU.
    Gelu,
}

/// Whole-model configuration of an Idefics3 / SmolVLM checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `idefics3` or `smolvlm`.
    pub model_type: String,
    /// Vision tower parameters.
    pub vision: VisionConfig,
    /// Text decoder parameters.
    pub text: TextConfig,
    /// Pixel-shuffle factor of the connector.
    pub scale_factor: usize,
    /// Token id of `<image>`.
    pub image_token_id: u32,
    /// Whether `lm_head` shares the input embedding matrix.
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// Image tokens produced per tile by vision tower + connector.
    pub fn image_seq_len(&self) -> usize {
        let p = self.vision.patches_per_side();
        p * p / (self.scale_factor * self.scale_factor)
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path, limits: &ConfigLimits) -> Result<Self> {
        let text = crate::fsio::read_text_limited(path, crate::fsio::MAX_JSON_BYTES)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        Self::from_json(&v, path, limits)
    }

    /// Builds the config from parsed JSON; `path` only names the file in errors.
    pub fn from_json(v: &Value, path: &Path, limits: &ConfigLimits) -> Result<Self> {
        let r = Reader {
            path: path.to_path_buf(),
        };
        let root = r.object(v, "")?;
        let model_type = r.str_or(root, "", "model_type", "idefics3")?;
        if model_type != "idefics3" && model_type != "smolvlm" {
            return Err(Error::Unsupported(format!(
                "{}: model_type {model_type:?} (expected \"idefics3\" or \"smolvlm\")",
                path.display()
            )));
        }
        let vc = r.object(r.required(root, "", "vision_config")?, "vision_config")?;
        let tc = r.object(r.required(root, "", "text_config")?, "text_config")?;

        let vp = "vision_config";
        let vision = VisionConfig {
            hidden_size: r.usize_req(vc, vp, "hidden_size")?,
            // Hub configs omit fields equal to Idefics3VisionConfig's defaults (SmolVLM-256M has
            // no vision num_hidden_layers), so those two default as transformers does.
            intermediate_size: r.usize_or(vc, vp, "intermediate_size", 3072)?,
            num_hidden_layers: r.usize_or(vc, vp, "num_hidden_layers", 12)?,
            num_attention_heads: r.usize_req(vc, vp, "num_attention_heads")?,
            num_channels: r.usize_or(vc, vp, "num_channels", 3)?,
            image_size: r.usize_req(vc, vp, "image_size")?,
            patch_size: r.usize_req(vc, vp, "patch_size")?,
            layer_norm_eps: r.f64_or(vc, vp, "layer_norm_eps", 1e-6)?,
            hidden_act: r.activation(vc, vp, "gelu_pytorch_tanh")?,
        };

        let tp = "text_config";
        let hidden_size = r.usize_req(tc, tp, "hidden_size")?;
        let num_attention_heads = r.usize_req(tc, tp, "num_attention_heads")?;
        let num_key_value_heads = r.usize_or(tc, tp, "num_key_value_heads", num_attention_heads)?;
        let default_head_dim = hidden_size.checked_div(num_attention_heads).unwrap_or(0);
        let (rope_theta, rope_linear_factor) = r.rope(tc, tp)?;
        // Both the top-level and the text-level vocab_size exist in the hub layout; the text one wins.
        let vocab_size = match tc.get("vocab_size") {
            Some(_) => r.usize_req(tc, tp, "vocab_size")?,
            None => r.usize_req(root, "", "vocab_size")?,
        };
        let text = TextConfig {
            hidden_size,
            intermediate_size: r.usize_req(tc, tp, "intermediate_size")?,
            num_hidden_layers: r.usize_req(tc, tp, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim: r.usize_or(tc, tp, "head_dim", default_head_dim)?,
            vocab_size,
            rms_norm_eps: r.f64_or(tc, tp, "rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_linear_factor,
            max_position_embeddings: r.usize_or(tc, tp, "max_position_embeddings", 2048)?,
            attention_bias: r.bool_or(tc, tp, "attention_bias", false)?,
            mlp_bias: r.bool_or(tc, tp, "mlp_bias", false)?,
            hidden_act: r.activation(tc, tp, "silu")?,
        };
        let tie_default = r.bool_or(tc, tp, "tie_word_embeddings", false)?;
        let cfg = ModelConfig {
            model_type,
            vision,
            text,
            scale_factor: r.usize_or(root, "", "scale_factor", 2)?,
            image_token_id: u32::try_from(r.usize_or(root, "", "image_token_id", 128_257)?)
                .map_err(|_| r.err("image_token_id".into(), "larger than 2^32 - 1"))?,
            tie_word_embeddings: r.bool_or(root, "", "tie_word_embeddings", tie_default)?,
        };
        cfg.validate(path, limits)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path, l: &ConfigLimits) -> Result<()> {
        let bad = |field: &str, why: String| Error::format(path, format!("{field}: {why}"));
        let v = &self.vision;
        let t = &self.text;
        let checks: [(&str, usize, usize); 13] = [
            ("vision_config.hidden_size", v.hidden_size, l.max_hidden),
            (
                "vision_config.intermediate_size",
                v.intermediate_size,
                l.max_hidden * 8,
            ),
            (
                "vision_config.num_hidden_layers",
                v.num_hidden_layers,
                l.max_layers,
            ),
            (
                "vision_config.num_attention_heads",
                v.num_attention_heads,
                l.max_heads,
            ),
            ("vision_config.image_size", v.image_size, l.max_image_size),
            ("vision_config.patch_size", v.patch_size, l.max_image_size),
            ("text_config.hidden_size", t.hidden_size, l.max_hidden),
            (
                "text_config.intermediate_size",
                t.intermediate_size,
                l.max_hidden * 8,
            ),
            (
                "text_config.num_hidden_layers",
                t.num_hidden_layers,
                l.max_layers,
            ),
            (
                "text_config.num_attention_heads",
                t.num_attention_heads,
                l.max_heads,
            ),
            ("text_config.vocab_size", t.vocab_size, l.max_vocab),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
                l.max_positions,
            ),
            (
                "text_config.num_key_value_heads",
                t.num_key_value_heads,
                l.max_heads,
            ),
        ];
        for (name, val, max) in checks {
            if val == 0 || val > max {
                return Err(bad(name, format!("{val} is outside 1..={max}")));
            }
        }
        // A patch size need not divide the image size: the patch embedding is a stride-p
        // convolution without padding, which drops the last `image_size % p` rows and columns
        // (SmolVLM-Instruct: 384 px tiles, 14 px patches, 27 per side).
        if v.patch_size == 0 || v.patch_size > v.image_size {
            return Err(bad(
                "vision_config.patch_size",
                format!(
                    "{} is not within 1..=image_size {}",
                    v.patch_size, v.image_size
                ),
            ));
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(bad(
                "vision_config.num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    v.num_attention_heads, v.hidden_size
                ),
            ));
        }
        if v.num_channels != 3 {
            return Err(bad(
                "vision_config.num_channels",
                format!("{} (expected 3)", v.num_channels),
            ));
        }
        let p = v.patches_per_side();
        if self.scale_factor == 0 || !p.is_multiple_of(self.scale_factor) {
            return Err(bad(
                "scale_factor",
                format!(
                    "{} does not divide the {p} patches per side",
                    self.scale_factor
                ),
            ));
        }
        if t.num_key_value_heads == 0
            || !t.num_attention_heads.is_multiple_of(t.num_key_value_heads)
        {
            return Err(bad(
                "text_config.num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    t.num_key_value_heads, t.num_attention_heads
                ),
            ));
        }
        if t.head_dim == 0 || !t.head_dim.is_multiple_of(2) || t.head_dim > 4096 {
            return Err(bad(
                "text_config.head_dim",
                format!("{} is not a positive even size", t.head_dim),
            ));
        }
        let rope = t.max_position_embeddings.saturating_mul(t.head_dim / 2);
        if rope > MAX_ROPE_ENTRIES {
            return Err(bad(
                "text_config.max_position_embeddings",
                format!(
                    "{} positions × head_dim {} need a RoPE table of {rope} entries, more than \
                     the limit of {MAX_ROPE_ENTRIES}",
                    t.max_position_embeddings, t.head_dim
                ),
            ));
        }
        for (name, eps) in [
            ("vision_config.layer_norm_eps", v.layer_norm_eps),
            ("text_config.rms_norm_eps", t.rms_norm_eps),
        ] {
            if !(eps.is_finite() && eps >= 0.0) {
                return Err(bad(
                    name,
                    format!("{eps} is not a finite non-negative number"),
                ));
            }
        }
        if !(t.rope_linear_factor.is_finite() && t.rope_linear_factor > 0.0) {
            return Err(bad(
                "text_config.rope_scaling.factor",
                format!("{} is not a positive number", t.rope_linear_factor),
            ));
        }
        if !(t.rope_theta.is_finite() && t.rope_theta > 0.0) {
            return Err(bad("text_config.rope_theta", format!("{}", t.rope_theta)));
        }
        if (self.image_token_id as usize) >= t.vocab_size {
            return Err(bad(
                "image_token_id",
                format!(
                    "{} is outside the vocabulary of {}",
                    self.image_token_id, t.vocab_size
                ),
            ));
        }
        Ok(())
    }
}

/// Typed field access that names the file and the key on failure.
struct Reader {
    path: PathBuf,
}

type Obj = serde_json::Map<String, Value>;

fn key(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

impl Reader {
    fn err(&self, field: String, msg: &str) -> Error {
        Error::format(&self.path, format!("{field}: {msg}"))
    }
    fn object<'a>(&self, v: &'a Value, at: &str) -> Result<&'a Obj> {
        v.as_object().ok_or_else(|| {
            self.err(
                if at.is_empty() {
                    "(root)".into()
                } else {
                    at.into()
                },
                "expected a JSON object",
            )
        })
    }
    fn required<'a>(&self, o: &'a Obj, p: &str, k: &str) -> Result<&'a Value> {
        o.get(k).ok_or_else(|| self.err(key(p, k), "missing"))
    }
    fn usize_req(&self, o: &Obj, p: &str, k: &str) -> Result<usize> {
        let v = self.required(o, p, k)?;
        self.as_usize(v, p, k)
    }
    fn as_usize(&self, v: &Value, p: &str, k: &str) -> Result<usize> {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| {
                self.err(
                    key(p, k),
                    &format!("expected a non-negative integer, got {v}"),
                )
            })
    }
    fn usize_or(&self, o: &Obj, p: &str, k: &str, d: usize) -> Result<usize> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(v) => self.as_usize(v, p, k),
        }
    }
    fn f64_or(&self, o: &Obj, p: &str, k: &str, d: f64) -> Result<f64> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(key(p, k), &format!("expected a number, got {v}"))),
        }
    }
    fn bool_or(&self, o: &Obj, p: &str, k: &str, d: bool) -> Result<bool> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key(p, k), &format!("expected true/false, got {v}"))),
        }
    }
    fn str_or(&self, o: &Obj, p: &str, k: &str, d: &str) -> Result<String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(d.to_string()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.err(key(p, k), &format!("expected a string, got {v}"))),
        }
    }
    fn activation(&self, o: &Obj, p: &str, d: &str) -> Result<Activation> {
        let name = self.str_or(o, p, "hidden_act", d)?;
        match name.as_str() {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::Gelu),
            other => Err(Error::Unsupported(format!(
                "{}: {}: activation {other:?}",
                self.path.display(),
                key(p, "hidden_act")
            ))),
        }
    }
    /// rope_theta and linear scaling, from either the hub layout (`rope_theta`, `rope_scaling`)
    /// or the transformers-5 layout (`rope_parameters`).
    fn rope(&self, o: &Obj, p: &str) -> Result<(f64, f64)> {
        let params = o.get("rope_parameters").filter(|v| !v.is_null());
        let scaling = o.get("rope_scaling").filter(|v| !v.is_null());
        let mut theta = self.f64_or(o, p, "rope_theta", 10_000.0)?;
        let mut factor = 1.0;
        for (name, v) in [("rope_parameters", params), ("rope_scaling", scaling)] {
            let Some(v) = v else { continue };
            let field = key(p, name);
            let obj = v
                .as_object()
                .ok_or_else(|| self.err(field.clone(), "expected an object"))?;
            if let Some(t) = obj.get("rope_theta") {
                theta = t
                    .as_f64()
                    .ok_or_else(|| self.err(format!("{field}.rope_theta"), "expected a number"))?;
            }
            let kind = obj
                .get("rope_type")
                .or_else(|| obj.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            match kind {
                "default" => {}
                "linear" => {
                    factor = obj.get("factor").and_then(Value::as_f64).ok_or_else(|| {
                        self.err(format!("{field}.factor"), "linear scaling needs a number")
                    })?;
                }
                other => {
                    return Err(Error::Unsupported(format!(
                        "{}: {field}: rope type {other:?}",
                        self.path.display()
                    )))
                }
            }
        }
        Ok((theta, factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of SmolVLM-256M-Instruct's hub config.json (vision fields equal to the
    /// defaults are absent there).
    fn hub_256m() -> Value {
        serde_json::json!({
            "architectures": ["Idefics3ForConditionalGeneration"],
            "image_token_id": 49190,
            "model_type": "idefics3",
            "scale_factor": 4,
            "text_config": {
                "hidden_size": 576, "intermediate_size": 1536, "max_position_embeddings": 8192,
                "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
                "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "rope_theta": 100000,
                "tie_word_embeddings": false, "vocab_size": 49280, "head_dim": 64
            },
            "tie_word_embeddings": false,
            "vision_config": {
                "hidden_size": 768, "image_size": 512, "max_image_size": {"longest_edge": 512},
                "model_type": "idefics3_vision", "num_attention_heads": 12, "patch_size": 16
            },
            "vocab_size": 49280
        })
    }

    #[test]
    fn hub_layout_with_default_vision_fields() {
        let c = ModelConfig::from_json(
            &hub_256m(),
            Path::new("config.json"),
            &ConfigLimits::default(),
        )
        .unwrap();
        assert_eq!(c.vision.num_hidden_layers, 12);
        assert_eq!(c.vision.intermediate_size, 3072);
        assert_eq!(c.image_seq_len(), 64);
        assert_eq!(c.text.head_dim, 64);
        assert_eq!(c.text.rope_theta, 100000.0);
    }

    #[test]
    fn transformers5_rope_parameters_layout() {
        let mut v = hub_256m();
        let t = v["text_config"].as_object_mut().unwrap();
        t.remove("rope_theta");
        t.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": 273768.0, "rope_type": "default"}),
        );
        let c =
            ModelConfig::from_json(&v, Path::new("config.json"), &ConfigLimits::default()).unwrap();
        assert_eq!(c.text.rope_theta, 273768.0);
        v["text_config"]["rope_parameters"] =
            serde_json::json!({"rope_type": "yarn", "factor": 2.0});
        assert!(matches!(
            ModelConfig::from_json(&v, Path::new("config.json"), &ConfigLimits::default()),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn instruct_tiles_are_no_multiple_of_the_patch() {
        // SmolVLM-Instruct (2.2B): 384 px tiles, 14 px patches -> 27 per side, 81 tokens a tile.
        let mut v = hub_256m();
        v["scale_factor"] = serde_json::json!(3);
        v["vision_config"] = serde_json::json!({
            "hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
            "max_image_size": {"longest_edge": 384}, "model_type": "idefics3_vision",
            "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14
        });
        let c =
            ModelConfig::from_json(&v, Path::new("config.json"), &ConfigLimits::default()).unwrap();
        assert_eq!(c.vision.patches_per_side(), 27);
        assert_eq!(c.image_seq_len(), 81);
        v["vision_config"]["patch_size"] = serde_json::json!(385);
        let e = ModelConfig::from_json(&v, Path::new("config.json"), &ConfigLimits::default())
            .unwrap_err();
        assert!(e.to_string().contains("patch_size"), "{e}");
    }

    #[test]
    fn inconsistent_heads_are_rejected() {
        let mut v = hub_256m();
        v["text_config"]["num_key_value_heads"] = serde_json::json!(4);
        let e = ModelConfig::from_json(&v, Path::new("config.json"), &ConfigLimits::default())
            .unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
        let mut v = hub_256m();
        v["image_token_id"] = serde_json::json!(60000);
        assert!(
            ModelConfig::from_json(&v, Path::new("config.json"), &ConfigLimits::default()).is_err()
        );
    }
}
