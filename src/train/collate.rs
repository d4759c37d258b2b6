//! Training samples: the chat prompt with the image, the caption as the assistant's answer, and
//! labels only on the answer; batches padded on the right.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::processor::image::SourceImage;
use crate::processor::PromptMode;
use crate::session::Model;

/// One image and its target caption.
#[derive(Debug, Clone)]
pub struct Example {
    /// The image.
    pub image: SourceImage,
    /// The target caption (without the end-of-utterance token).
    pub caption: String,
    /// Identifies the image (e.g. its dataset id): with the vision tower and connector frozen,
    /// the trainer reuses the image features of keys it saw recently instead of re-encoding.
    pub key: Option<u64>,
}

impl Example {
    /// An example without an image key.
    pub fn new(image: SourceImage, caption: impl Into<String>) -> Self {
        Self {
            image,
            caption: caption.into(),
            key: None,
        }
    }
}

/// A tokenized sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Prompt ids followed by the target ids.
    pub ids: Vec<u32>,
    /// Length of the prompt part (no labels there).
    pub prompt_len: usize,
    /// `[tiles, 3, S, S]` pixel values.
    pub pixel_values: Vec<f32>,
    /// Tiles in `pixel_values`.
    pub num_tiles: usize,
    /// Tile side.
    pub tile_size: usize,
    /// Whether the caption was shortened to fit `max_seq_len`.
    pub truncated: bool,
    /// The example's image key.
    pub image_key: Option<u64>,
}

/// How samples are built.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CollateOptions {
    /// The user instruction that goes with the image.
    pub prompt: String,
    /// Overrides the processor's longest edge.
    pub longest_edge: Option<u32>,
    /// Longest sample in tokens (image tokens included).
    pub max_seq_len: usize,
}

/// Why a sample was not built.
#[derive(Debug)]
pub enum Rejected {
    /// The prompt with its image tokens alone does not fit `max_seq_len`.
    TooLong {
        /// Tokens of the prompt.
        prompt_tokens: usize,
    },
}

/// The token that ends the assistant's answer: `<end_of_utterance>` when the tokenizer has it,
/// else the first stop token.
pub fn answer_end_token(model: &Model) -> Result<u32> {
    if let Some(id) = model.processor().tokenizer.token_id("<end_of_utterance>") {
        return Ok(id);
    }
    model
        .stop_tokens()
        .first()
        .copied()
        .ok_or_else(|| Error::Unsupported("the model defines no end-of-answer token".into()))
}

/// Builds the sample for `ex`. Over-long samples are never cut through image tokens: the
/// caption is shortened, or the sample is rejected when even the prompt does not fit.
pub fn build_sample(
    model: &Model,
    ex: &Example,
    opts: &CollateOptions,
) -> Result<std::result::Result<Sample, Rejected>> {
    let proc = model.processor();
    let text = proc.prompt_text(&opts.prompt, 1, PromptMode::Chat)?;
    let prep = proc.prepare(&text, &[&ex.image], opts.longest_edge)?;
    let mut target = proc.tokenizer.encode_plain(&format!(" {}", ex.caption))?;
    target.push(answer_end_token(model)?);
    let prompt_len = prep.input_ids.len();
    if prompt_len + 1 > opts.max_seq_len {
        return Ok(Err(Rejected::TooLong {
            prompt_tokens: prompt_len,
        }));
    }
    let room = opts.max_seq_len - prompt_len;
    let truncated = target.len() > room;
    target.truncate(room);
    let mut ids = prep.input_ids;
    ids.extend_from_slice(&target);
    Ok(Ok(Sample {
        ids,
        prompt_len,
        pixel_values: prep.pixel_values,
        num_tiles: prep.num_tiles,
        tile_size: prep.tile_size,
        truncated,
        image_key: ex.key,
    }))
}

/// Samples packed for one forward pass.
pub struct Batch {
    /// `[b, L]` ids, right-padded.
    pub ids: Tensor,
    /// Flat positions whose next token is a label.
    pub label_pos: Vec<u32>,
    /// The labels.
    pub labels: Vec<u32>,
    /// Flat positions of image tokens, in order.
    pub image_pos: Vec<u32>,
    /// `[tiles, 3, S, S]` tiles of all samples in order, if any.
    pub pixels: Option<Tensor>,
}

/// Packs `samples` into one right-padded batch.
pub fn batch(samples: &[&Sample], pad: u32, image_token: u32, dev: &Device) -> Result<Batch> {
    let b = samples.len();
    let l = samples.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    if b == 0 || l == 0 {
        return Err(Error::InvalidArgument("empty training batch".into()));
    }
    let mut ids = vec![pad; b * l];
    let mut label_pos = Vec::new();
    let mut labels = Vec::new();
    let mut image_pos = Vec::new();
    let mut pixels = Vec::new();
    let mut tiles = 0;
    let mut side = 0;
    for (r, s) in samples.iter().enumerate() {
        ids[r * l..r * l + s.ids.len()].copy_from_slice(&s.ids);
        for j in s.prompt_len.saturating_sub(1)..s.ids.len() - 1 {
            label_pos.push((r * l + j) as u32);
            labels.push(s.ids[j + 1]);
        }
        for (j, &t) in s.ids.iter().enumerate() {
            if t == image_token {
                image_pos.push((r * l + j) as u32);
            }
        }
        if s.num_tiles > 0 {
            if side != 0 && side != s.tile_size {
                return Err(Error::Internal(
                    "tiles of different sizes in one batch".into(),
                ));
            }
            side = s.tile_size;
            tiles += s.num_tiles;
            pixels.extend_from_slice(&s.pixel_values);
        }
    }
    let pixels = if tiles > 0 {
        Some(Tensor::from_vec(pixels, (tiles, 3, side, side), dev)?)
    } else {
        None
    };
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, l), dev)?,
        label_pos,
        labels,
        image_pos,
        pixels,
    })
}
