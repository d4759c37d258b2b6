//! The Idefics3 processor: images → tiles (`image`), prompt → chat text with expanded image
//! tokens (`prompt`) → token ids.

pub mod image;
mod jpeg;
pub mod prompt;
pub mod resample;

use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model_files::ModelFiles;
use crate::tokenizer::TextTokenizer;
use image::{ImageProcessorConfig, SourceImage};
use prompt::ImageTokens;

/// Processor files of a model directory, loaded once.
pub struct Processor {
    /// preprocessor_config.json.
    pub image: ImageProcessorConfig,
    /// Image tokens per tile.
    pub image_seq_len: usize,
    /// The model's chat template, if it ships one.
    pub chat_template: Option<String>,
    /// Special strings for image expansion.
    pub tokens: ImageTokens,
    /// The text tokenizer.
    pub tokenizer: TextTokenizer,
    /// Values such as `bos_token` exposed to the chat template.
    special: Vec<(String, String)>,
}

/// One prompt with its images, ready for the model.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Token ids of the expanded prompt.
    pub input_ids: Vec<u32>,
    /// `[tiles, 3, S, S]` pixel values of all images of this prompt, in order.
    pub pixel_values: Vec<f32>,
    /// Number of tiles in `pixel_values`.
    pub num_tiles: usize,
    /// Side S of a tile.
    pub tile_size: usize,
    /// (rows, cols) split grid per image; (0, 0) when not split.
    pub grids: Vec<(usize, usize)>,
}

/// How the caller's text becomes the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptMode {
    /// The text is a user message; one image slot per image goes before it, rendered with the
    /// model's chat template and the assistant prefix (the seed's inference script).
    Chat,
    /// The text is the full prompt and already contains one `<image>` per image.
    Raw,
}

impl Processor {
    /// Loads tokenizer and processor files from `dir` and checks them against the model config.
    pub fn load(files: &ModelFiles, cfg: &ModelConfig) -> Result<Self> {
        let pre = "preprocessor_config.json";
        let image = ImageProcessorConfig::from_json_str(
            &files.require_text(pre, crate::fsio::MAX_JSON_BYTES)?,
            files.path(pre),
        )?;
        let tokenizer = TextTokenizer::from_bytes(
            files
                .require_text("tokenizer.json", crate::fsio::MAX_TOKENIZER_BYTES)?
                .as_bytes(),
            &files.path("tokenizer.json"),
        )?;
        let proc_cfg = files.read_json("processor_config.json")?;
        let tok_cfg = files.read_json("tokenizer_config.json")?;
        let dir = files;

        if image.max_image_size as usize != cfg.vision.image_size {
            return Err(Error::format(
                dir.path("preprocessor_config.json"),
                format!(
                    "max_image_size.longest_edge {} is not the vision tower's image_size {}",
                    image.max_image_size, cfg.vision.image_size
                ),
            ));
        }
        let expected = cfg.image_seq_len();
        let image_seq_len = match proc_cfg.as_ref().and_then(|v| v.get("image_seq_len")) {
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| {
                    Error::format(
                        dir.path("processor_config.json"),
                        "image_seq_len: expected an integer",
                    )
                })? as usize;
                if n != expected {
                    return Err(Error::format(
                        dir.path("processor_config.json"),
                        format!("image_seq_len {n} disagrees with the model's {expected} tokens per tile"),
                    ));
                }
                n
            }
            None => expected,
        };

        let chat_template = find_template(dir, proc_cfg.as_ref(), tok_cfg.as_ref())?;
        let tokens = ImageTokens::default();
        for t in [&tokens.image, &tokens.fake_around, &tokens.global] {
            if tokenizer.token_id(t).is_none() {
                return Err(Error::format(
                    dir.path("tokenizer.json"),
                    format!("the tokenizer has no {t} token"),
                ));
            }
        }
        if tokenizer.token_id(&tokens.image) != Some(cfg.image_token_id) {
            return Err(Error::format(
                dir.path("config.json"),
                format!(
                    "image_token_id {} is not the id of the tokenizer's {} token ({})",
                    cfg.image_token_id,
                    tokens.image,
                    tokenizer
                        .token_id(&tokens.image)
                        .map_or_else(|| "absent".to_string(), |id| id.to_string())
                ),
            ));
        }
        let mut special = Vec::new();
        if let Some(tc) = &tok_cfg {
            for k in ["bos_token", "eos_token", "pad_token", "unk_token"] {
                if let Some(s) = token_string(tc.get(k)) {
                    special.push((k.to_string(), s));
                }
            }
        }
        Ok(Self {
            image,
            image_seq_len,
            chat_template,
            tokens,
            tokenizer,
            special,
        })
    }

    /// Builds the prompt text for `n_images` images from the caller's text.
    pub fn prompt_text(&self, text: &str, n_images: usize, mode: PromptMode) -> Result<String> {
        match mode {
            PromptMode::Raw => Ok(text.to_string()),
            PromptMode::Chat => {
                let tmpl = self.chat_template.as_deref().ok_or_else(|| {
                    Error::Unsupported(
                        "the model ships no chat template (chat_template.json / .jinja / tokenizer_config.json); use a raw prompt".into(),
                    )
                })?;
                let special: Vec<(&str, &str)> = self
                    .special
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                prompt::render_user_prompt(tmpl, text, n_images, &special)
            }
        }
    }

    /// Preprocesses `images` and tokenizes `prompt` (which holds one `<image>` per image).
    pub fn prepare(
        &self,
        prompt: &str,
        images: &[&SourceImage],
        longest_edge: Option<u32>,
    ) -> Result<Prepared> {
        self.prepare_limited(prompt, images, longest_edge, usize::MAX)
    }

    /// [`Processor::prepare`], failing with `Limit` before any tile is allocated when the
    /// images alone would need more than `max_prompt_tokens` image tokens.
    pub fn prepare_limited(
        &self,
        prompt: &str,
        images: &[&SourceImage],
        longest_edge: Option<u32>,
        max_prompt_tokens: usize,
    ) -> Result<Prepared> {
        let mut planned = 0usize;
        for img in images {
            let tiles = image::plan_tiles(img.width(), img.height(), &self.image, longest_edge);
            planned = planned.saturating_add(tiles.saturating_mul(self.image_seq_len));
        }
        if planned > max_prompt_tokens {
            return Err(Error::Limit(format!(
                "the images need {planned} image tokens, more than max_prompt_tokens {max_prompt_tokens}"
            )));
        }
        let mut pixel_values = Vec::new();
        let mut grids = Vec::with_capacity(images.len());
        let mut num_tiles = 0;
        let mut tile_size = self.image.max_image_size as usize;
        for img in images {
            let p = image::preprocess(img, &self.image, longest_edge)?;
            if p.tile_height != p.tile_width {
                return Err(Error::Internal(format!(
                    "non-square tile {}x{}",
                    p.tile_width, p.tile_height
                )));
            }
            tile_size = p.tile_height;
            num_tiles += p.num_tiles;
            grids.push((p.rows, p.cols));
            pixel_values.extend_from_slice(&p.pixel_values);
        }
        let text = prompt::expand_images(prompt, &grids, self.image_seq_len, &self.tokens)?;
        let input_ids = self.tokenizer.encode(&text)?;
        Ok(Prepared {
            input_ids,
            pixel_values,
            num_tiles,
            tile_size,
            grids,
        })
    }
}

/// A special token given as a string or as `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// The chat template, looked up where transformers looks: chat_template.jinja,
/// chat_template.json, processor_config.json, tokenizer_config.json.
fn find_template(
    dir: &ModelFiles,
    proc_cfg: Option<&Value>,
    tok_cfg: Option<&Value>,
) -> Result<Option<String>> {
    if let Some(t) = dir.read_text("chat_template.jinja", crate::fsio::MAX_JSON_BYTES)? {
        return Ok(Some(t));
    }
    if let Some(v) = dir.read_json("chat_template.json")? {
        return match v.get("chat_template") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::format(
                dir.path("chat_template.json"),
                "chat_template: expected a string",
            )),
        };
    }
    for v in [proc_cfg, tok_cfg].into_iter().flatten() {
        if let Some(Value::String(s)) = v.get("chat_template") {
            return Ok(Some(s.clone()));
        }
    }
    Ok(None)
}
