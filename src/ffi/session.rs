//! Sessions: captioning (batched, with a token callback), caption scoring, cancel; the
//! captions result object; images and generation params.

use std::ffi::{c_char, c_void};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::handles::{self, Busy, PoisonOnUnwind};
use super::log::{emit, SMOLCAP_LOG_DEBUG};
use super::model::{smolcap_model, ModelShared};
use super::params::{self, Versioned};
use super::status::{entry, entry_value, smolcap_status, FfiError, FfiResult};
use crate::error::Error;
use crate::ffi_field_end;
use crate::generate::{BeamParams, EarlyStopping, GenerateParams, SampleParams, Strategy};
use crate::processor::image::{DecodeLimits, RawLayout, SourceImage};
use crate::processor::PromptMode;
use crate::session::{ActiveAdapter, Caption, CaptionOptions};

/// `smolcap_generate_params.strategy`: the most likely token at each step.
pub const SMOLCAP_STRATEGY_GREEDY: u32 = 0;
/// `smolcap_generate_params.strategy`: sampling with temperature / top-k / top-p and a seed.
pub const SMOLCAP_STRATEGY_SAMPLE: u32 = 1;
/// `smolcap_generate_params.strategy`: beam search (`num_beams`, `length_penalty`,
/// `early_stopping`); the token callback receives each caption once, when it is finished.
pub const SMOLCAP_STRATEGY_BEAM: u32 = 2;

/// `smolcap_generate_params.early_stopping`: transformers' default heuristic.
pub const SMOLCAP_EARLY_STOPPING_HEURISTIC: u32 = 0;
/// `smolcap_generate_params.early_stopping`: stop once `num_beams` hypotheses are finished.
pub const SMOLCAP_EARLY_STOPPING_TRUE: u32 = 1;
/// `smolcap_generate_params.early_stopping`: never stop before `max_new_tokens`.
pub const SMOLCAP_EARLY_STOPPING_NEVER: u32 = 2;

/// `smolcap_generate_params.prompt_mode`: `prompt` is the user message; the model's chat
/// template adds the image slot and the assistant prefix.
pub const SMOLCAP_PROMPT_CHAT: u32 = 0;
/// `smolcap_generate_params.prompt_mode`: `prompt` is the whole prompt and contains one
/// `<image>` per image.
pub const SMOLCAP_PROMPT_RAW: u32 = 1;

/// `smolcap_image.kind`: an encoded file (JPEG, PNG, WebP, GIF, BMP, TIFF) in `data[0..len]`.
pub const SMOLCAP_IMAGE_ENCODED: u32 = 0;
/// `smolcap_image.kind`: raw 8-bit RGB pixels, rows `stride` bytes apart.
pub const SMOLCAP_IMAGE_RGB8: u32 = 1;
/// `smolcap_image.kind`: raw 8-bit RGBA pixels (straight alpha), rows `stride` bytes apart.
pub const SMOLCAP_IMAGE_RGBA8: u32 = 2;

/// The most images one caption call accepts.
pub const SMOLCAP_MAX_IMAGES: usize = 1 << 16;
/// The largest `batch_size`.
pub const SMOLCAP_MAX_BATCH: u32 = 256;

/// Generation (and prompt / image processing) settings for `smolcap_caption`,
/// `smolcap_stream_begin` and `smolcap_session_score`. Initialise with
/// `smolcap_generate_params_init(&p, sizeof p)`, then set fields; NULL params mean defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_generate_params {
    /// `sizeof(smolcap_generate_params)` as compiled by the caller.
    pub struct_size: u32,
    /// A `SMOLCAP_STRATEGY_*` value (default greedy).
    pub strategy: u32,
    /// Most tokens generated per caption, stop token included (default 48; at most the model's
    /// `max_position_embeddings`).
    pub max_new_tokens: u32,
    /// Stop tokens are suppressed until this many tokens exist (default 0).
    pub min_new_tokens: u32,
    /// Sampling temperature, > 0 (default 1.0).
    pub temperature: f32,
    /// Sampling: keep the k most likely tokens; 0 = off (default).
    pub top_k: u32,
    /// Sampling: nucleus probability in (0, 1]; 1.0 = off (default).
    pub top_p: f32,
    /// Sampling seed (same seed, same tokens; default 0).
    pub seed: u64,
    /// Beam search: beams per image, 1..=64 (default 3).
    pub num_beams: u32,
    /// Beam search: length penalty exponent (default 1.0).
    pub length_penalty: f32,
    /// Beam search: a `SMOLCAP_EARLY_STOPPING_*` value (default heuristic).
    pub early_stopping: u32,
    /// Repetition penalty, > 0; 1.0 = off (default).
    pub repetition_penalty: f32,
    /// The prompt (UTF-8); NULL = "Describe this image in detail.". Borrowed for the call.
    pub prompt: *const c_char,
    /// A `SMOLCAP_PROMPT_*` value (default chat).
    pub prompt_mode: u32,
    /// Overrides the processor's `size.longest_edge` in pixels; 0 = the model's (default).
    pub longest_edge: u32,
    /// Longest accepted prompt in tokens, image tokens included (default 16384).
    pub max_prompt_tokens: u32,
    /// Images captioned together in one batch by `smolcap_caption`, 1..=256 (default 1).
    pub batch_size: u32,
    /// Most image tiles through the vision tower at once (default 4).
    pub vision_chunk: u32,
    /// Largest accepted image, in pixels (default 2^26).
    pub max_image_pixels: u64,
    /// Largest accepted encoded image, in bytes (default 64 MiB).
    pub max_image_bytes: u64,
    /// Limit: largest key/value cache allocated for one batch, in bytes (default 8 GiB);
    /// checked before allocating, from batch size × beams × (prompt + max_new_tokens).
    pub max_kv_cache_bytes: u64,
    /// Limit: longest `prompt`, in bytes, checked before it is rendered or tokenized
    /// (default 256 KiB).
    pub max_prompt_bytes: u64,
    /// Limit: longest caption `smolcap_session_score` accepts, in bytes, checked before it is
    /// tokenized (default 64 KiB).
    pub max_caption_bytes: u64,
}

// SAFETY: repr(C), starts with `struct_size: u32`, fields are integers, floats and pointers.
unsafe impl Versioned for smolcap_generate_params {
    const NAME: &'static str = "smolcap_generate_params";
    const V1_SIZE: usize = ffi_field_end!(smolcap_generate_params, max_image_bytes, u64);
    fn defaults() -> Self {
        let g = GenerateParams::default();
        let b = BeamParams::default();
        let c = CaptionOptions::default();
        let l = DecodeLimits::default();
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            strategy: SMOLCAP_STRATEGY_GREEDY,
            max_new_tokens: g.max_new_tokens as u32,
            min_new_tokens: g.min_new_tokens as u32,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            num_beams: b.num_beams as u32,
            length_penalty: b.length_penalty,
            early_stopping: SMOLCAP_EARLY_STOPPING_HEURISTIC,
            repetition_penalty: g.repetition_penalty,
            prompt: std::ptr::null(),
            prompt_mode: SMOLCAP_PROMPT_CHAT,
            longest_edge: 0,
            max_prompt_tokens: c.max_prompt_tokens as u32,
            batch_size: 1,
            vision_chunk: c.vision_chunk as u32,
            max_image_pixels: l.max_pixels,
            max_image_bytes: l.max_encoded_bytes,
            max_kv_cache_bytes: c.max_kv_cache_bytes,
            max_prompt_bytes: c.max_prompt_bytes as u64,
            max_caption_bytes: c.max_caption_bytes as u64,
        }
    }
}

/// Fills `params` with defaults. Pass `sizeof(smolcap_generate_params)` as `struct_size`.
///
/// # Safety
/// `params` must be NULL or point to `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn smolcap_generate_params_init(
    params: *mut smolcap_generate_params,
    struct_size: usize,
) -> smolcap_status {
    entry("smolcap_generate_params_init", || {
        // SAFETY: forwarded contract.
        unsafe { params::init(params, struct_size) }
    })
}

/// Validated, owned settings of one call.
#[derive(Clone)]
pub(crate) struct CallSettings {
    pub opts: CaptionOptions,
    pub limits: DecodeLimits,
    pub batch_size: usize,
}

fn nonzero(v: u32, what: &str) -> FfiResult<usize> {
    if v == 0 {
        return Err(FfiError::invalid(format!(
            "params.{what} must be at least 1"
        )));
    }
    Ok(v as usize)
}

/// Reads and validates generation params against a model.
///
/// # Safety
/// `p` must be NULL or a valid params struct whose strings are NUL-terminated.
pub(crate) unsafe fn settings(
    p: *const smolcap_generate_params,
    model: &ModelShared,
) -> FfiResult<CallSettings> {
    // SAFETY: forwarded contract.
    let p = unsafe { params::read(p) }?;
    let strategy = match p.strategy {
        SMOLCAP_STRATEGY_GREEDY => Strategy::Greedy,
        SMOLCAP_STRATEGY_SAMPLE => Strategy::Sample {
            params: SampleParams {
                temperature: p.temperature,
                top_k: p.top_k as usize,
                top_p: p.top_p,
            },
            seed: p.seed,
        },
        SMOLCAP_STRATEGY_BEAM => Strategy::Beam(BeamParams {
            num_beams: p.num_beams as usize,
            length_penalty: p.length_penalty,
            early_stopping: match p.early_stopping {
                SMOLCAP_EARLY_STOPPING_HEURISTIC => EarlyStopping::Heuristic,
                SMOLCAP_EARLY_STOPPING_TRUE => EarlyStopping::True,
                SMOLCAP_EARLY_STOPPING_NEVER => EarlyStopping::Never,
                v => {
                    return Err(FfiError::invalid(format!(
                        "params.early_stopping {v} is not a SMOLCAP_EARLY_STOPPING_* value"
                    )))
                }
            },
        }),
        v => {
            return Err(FfiError::invalid(format!(
                "params.strategy {v} is not a SMOLCAP_STRATEGY_* value"
            )))
        }
    };
    let mode = match p.prompt_mode {
        SMOLCAP_PROMPT_CHAT => PromptMode::Chat,
        SMOLCAP_PROMPT_RAW => PromptMode::Raw,
        v => {
            return Err(FfiError::invalid(format!(
                "params.prompt_mode {v} is not a SMOLCAP_PROMPT_* value"
            )))
        }
    };
    let max_new = nonzero(p.max_new_tokens, "max_new_tokens")?;
    let max_pos = model.max_positions();
    if max_new > max_pos {
        return Err(FfiError::limit(format!(
            "params.max_new_tokens {max_new} exceeds the model's max_position_embeddings \
             {max_pos}"
        )));
    }
    let batch_size = nonzero(p.batch_size, "batch_size")?;
    if p.batch_size > SMOLCAP_MAX_BATCH {
        return Err(FfiError::limit(format!(
            "params.batch_size {} exceeds the limit of {SMOLCAP_MAX_BATCH}",
            p.batch_size
        )));
    }
    let max_prompt_tokens = nonzero(p.max_prompt_tokens, "max_prompt_tokens")?;
    let vision_chunk = nonzero(p.vision_chunk, "vision_chunk")?;
    if p.max_kv_cache_bytes == 0 {
        return Err(FfiError::invalid(
            "params.max_kv_cache_bytes must be at least 1",
        ));
    }
    if p.max_image_pixels == 0 || p.max_image_bytes == 0 {
        return Err(FfiError::invalid(
            "params.max_image_pixels and params.max_image_bytes must be at least 1",
        ));
    }
    let max_prompt_bytes = usize::try_from(p.max_prompt_bytes).unwrap_or(usize::MAX);
    let max_caption_bytes = usize::try_from(p.max_caption_bytes).unwrap_or(usize::MAX);
    if max_prompt_bytes == 0 || max_caption_bytes == 0 {
        return Err(FfiError::invalid(
            "params.max_prompt_bytes and params.max_caption_bytes must be at least 1",
        ));
    }
    // The prompt's length is checked before it is copied (strlen only).
    if !p.prompt.is_null() {
        // SAFETY: caller contract: `prompt` is NULL or NUL-terminated.
        let len = unsafe { std::ffi::CStr::from_ptr(p.prompt) }
            .to_bytes()
            .len();
        if len > max_prompt_bytes {
            return Err(FfiError::limit(format!(
                "params.prompt of {len} bytes exceeds params.max_prompt_bytes {max_prompt_bytes}"
            )));
        }
    }
    // SAFETY: strings in params are NUL-terminated and borrowed for the call.
    let prompt = unsafe { handles::opt_str(p.prompt, "params.prompt") }?
        .map(str::to_string)
        .unwrap_or_else(|| CaptionOptions::default().prompt);
    let params = GenerateParams {
        max_new_tokens: max_new,
        strategy,
        repetition_penalty: p.repetition_penalty,
        min_new_tokens: p.min_new_tokens as usize,
    };
    params
        .validate()
        .map_err(|e| FfiError::from(e).context("params"))?;
    Ok(CallSettings {
        opts: CaptionOptions {
            prompt,
            mode,
            params,
            longest_edge: (p.longest_edge != 0).then_some(p.longest_edge),
            max_prompt_tokens,
            vision_chunk,
            adapters: Vec::new(),
            max_batch: SMOLCAP_MAX_BATCH as usize,
            max_kv_cache_bytes: p.max_kv_cache_bytes,
            max_prompt_bytes,
            max_caption_bytes,
        },
        limits: DecodeLimits {
            max_pixels: p.max_image_pixels,
            max_encoded_bytes: p.max_image_bytes,
        },
        batch_size,
    })
}

/// One input image, borrowed for the call: an encoded file (`SMOLCAP_IMAGE_ENCODED`: `data`,
/// `len`) or raw pixels (`SMOLCAP_IMAGE_RGB8` / `SMOLCAP_IMAGE_RGBA8`: `data`, `len` = bytes
/// available at `data`, `width`, `height`, `stride` = bytes between row starts, 0 meaning
/// `width * 3` or `width * 4`). Zero-initialise it, then set the fields of its kind.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_image {
    /// A `SMOLCAP_IMAGE_*` value.
    pub kind: u32,
    /// Raw images: width in pixels.
    pub width: u32,
    /// Raw images: height in pixels.
    pub height: u32,
    /// The bytes.
    pub data: *const u8,
    /// Number of bytes readable at `data`.
    pub len: usize,
    /// Raw images: bytes from one row start to the next (0 = packed).
    pub stride: usize,
}

/// Decodes / copies one caller image.
///
/// # Safety
/// `img.data` must point to `img.len` readable bytes.
pub(crate) unsafe fn source_image(
    img: &smolcap_image,
    limits: &DecodeLimits,
    what: &str,
) -> FfiResult<SourceImage> {
    let layout = match img.kind {
        SMOLCAP_IMAGE_ENCODED => None,
        SMOLCAP_IMAGE_RGB8 => Some(RawLayout::Rgb8),
        SMOLCAP_IMAGE_RGBA8 => Some(RawLayout::Rgba8),
        v => {
            return Err(FfiError::invalid(format!(
                "{what}.kind {v} is not a SMOLCAP_IMAGE_* value"
            )))
        }
    };
    let ctx = |e: Error| FfiError::from(e).context(what);
    match layout {
        None => {
            // SAFETY: caller contract; the length is bounded before the slice is made.
            let data = unsafe {
                handles::bytes(
                    img.data,
                    img.len,
                    limits.max_encoded_bytes,
                    &format!("{what}.data"),
                )
            }?;
            SourceImage::decode(data, limits).map_err(ctx)
        }
        Some(layout) => {
            let bpp: u64 = if layout == RawLayout::Rgb8 { 3 } else { 4 };
            if img.width == 0 || img.height == 0 {
                return Err(FfiError::invalid(format!(
                    "{what} has zero size ({}x{})",
                    img.width, img.height
                )));
            }
            let px = u64::from(img.width) * u64::from(img.height);
            if px > limits.max_pixels {
                return Err(FfiError::limit(format!(
                    "{what} is {}x{} = {px} pixels, more than the limit of {}",
                    img.width, img.height, limits.max_pixels
                )));
            }
            let row = u64::from(img.width) * bpp;
            let stride = if img.stride == 0 {
                row
            } else {
                img.stride as u64
            };
            if stride < row {
                return Err(FfiError::invalid(format!(
                    "{what}.stride {stride} is smaller than width * {bpp} = {row}"
                )));
            }
            let need = stride
                .checked_mul(u64::from(img.height) - 1)
                .and_then(|v| v.checked_add(row))
                .filter(|&v| v <= isize::MAX as u64)
                .ok_or_else(|| FfiError::limit(format!("{what}.stride {stride} is absurd")))?;
            if (img.len as u64) < need {
                return Err(FfiError::invalid(format!(
                    "{what}.len is {} bytes but {}x{} with stride {stride} needs {need}",
                    img.len, img.width, img.height
                )));
            }
            // SAFETY: the caller has `len >= need` readable bytes at `data`; we borrow `need`.
            let data =
                unsafe { handles::bytes(img.data, need as usize, need, &format!("{what}.data")) }?;
            SourceImage::from_raw(data, img.width, img.height, stride as usize, layout, limits)
                .map_err(ctx)
        }
    }
}

/// Called with each piece of text as it is generated: `index` is the image's position in the
/// call's `images` array, `piece` points to `len` bytes of UTF-8 followed by a NUL (valid only
/// during the call), `user` is the pointer given with the callback. Return 0 to continue,
/// nonzero to stop that caption (the call still succeeds, with the caption so far). It runs on
/// the thread that called `smolcap_caption`; it must not unwind or longjmp; calling back into the
/// same session returns `SMOLCAP_STATUS_BUSY`.
pub type smolcap_token_callback = Option<
    unsafe extern "C" fn(index: usize, piece: *const c_char, len: usize, user: *mut c_void) -> i32,
>;

/// State a session handle shares with its streams.
pub(crate) struct SessionState {
    pub busy: Arc<AtomicBool>,
    pub poisoned: AtomicBool,
    /// The cancel flag of the call in progress (a fresh one per call).
    pub cancel: Mutex<Arc<AtomicBool>>,
    /// The adapters applied by every call (`smolcap_session_set_adapters`).
    pub adapters: Mutex<Vec<ActiveAdapter>>,
}

impl SessionState {
    /// Installs and returns a fresh cancel flag for a new call.
    pub fn new_call(&self) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        let mut g = match self.cancel.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        *g = Arc::clone(&flag);
        flag
    }

    /// A copy of the active adapters (shared `Arc`s).
    pub fn adapters(&self) -> Vec<ActiveAdapter> {
        match self.adapters.lock() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    /// Replaces the active adapters.
    pub fn set_adapters(&self, v: Vec<ActiveAdapter>) {
        let mut g = match self.adapters.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        *g = v;
    }
}

/// A captioning context over a model: used by one thread at a time (concurrent use returns
/// `SMOLCAP_STATUS_BUSY`); `smolcap_session_cancel` may be called from any thread.
pub struct smolcap_session {
    pub(crate) model: Arc<ModelShared>,
    pub(crate) state: Arc<SessionState>,
}

impl smolcap_session {
    /// Checks both poison flags.
    pub(crate) fn check(&self) -> FfiResult<()> {
        handles::check_poison(&self.state.poisoned, "the session")?;
        self.model.check()
    }
}

/// One caption of a result.
struct CaptionItem {
    /// UTF-8 text followed by a NUL.
    text: Vec<u8>,
    tokens: Vec<u32>,
    stats: smolcap_caption_stats,
}

/// The captions of one call, in image order. Strings and token arrays stay valid until
/// `smolcap_captions_free`. Immutable: may be read from several threads at once.
pub struct smolcap_captions {
    items: Vec<CaptionItem>,
}

impl smolcap_captions {
    pub(crate) fn from_captions(caps: Vec<Caption>) -> Self {
        let items = caps
            .into_iter()
            .map(|c| {
                let mut text = c.text.into_bytes();
                text.push(0);
                CaptionItem {
                    text,
                    stats: smolcap_caption_stats {
                        struct_size: 0,
                        generated_tokens: c.token_ids.len() as u64,
                        prompt_tokens: c.prompt_tokens as u64,
                        num_tiles: c.num_tiles as u64,
                        decode_steps: c.timings.decode_steps as u64,
                        preprocess_s: c.timings.preprocess_s,
                        vision_s: c.timings.vision_s,
                        prefill_s: c.timings.prefill_s,
                        decode_s: c.timings.decode_s,
                    },
                    tokens: c.token_ids,
                }
            })
            .collect();
        Self { items }
    }

    fn item(&self, i: usize) -> FfiResult<&CaptionItem> {
        self.items.get(i).ok_or_else(|| {
            FfiError::invalid(format!(
                "index {i} is out of range (the object holds {} captions)",
                self.items.len()
            ))
        })
    }
}

/// Numbers about one caption. Set `struct_size = sizeof(smolcap_caption_stats)` before calling
/// `smolcap_captions_stats`. Timings cover the whole batch the caption was part of.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_caption_stats {
    /// `sizeof(smolcap_caption_stats)` as compiled by the caller (left unchanged).
    pub struct_size: u32,
    /// Generated token ids (a final stop token included).
    pub generated_tokens: u64,
    /// Prompt length in tokens, image tokens included.
    pub prompt_tokens: u64,
    /// Image tiles encoded.
    pub num_tiles: u64,
    /// Decoder steps after the prompt.
    pub decode_steps: u64,
    /// Seconds decoding, resizing and tokenizing.
    pub preprocess_s: f64,
    /// Seconds in the vision tower and connector.
    pub vision_s: f64,
    /// Seconds in the prompt forward pass.
    pub prefill_s: f64,
    /// Seconds generating after the first token.
    pub decode_s: f64,
}

// SAFETY: repr(C), starts with `struct_size: u32`, fields are integers and floats.
unsafe impl Versioned for smolcap_caption_stats {
    const NAME: &'static str = "smolcap_caption_stats";
    const V1_SIZE: usize = ffi_field_end!(smolcap_caption_stats, decode_s, f64);
    fn defaults() -> Self {
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            generated_tokens: 0,
            prompt_tokens: 0,
            num_tiles: 0,
            decode_steps: 0,
            preprocess_s: 0.0,
            vision_s: 0.0,
            prefill_s: 0.0,
            decode_s: 0.0,
        }
    }
}

/// Caption log-likelihood from `smolcap_session_score`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct smolcap_nll {
    /// Sum of -log p over the caption's tokens and the stop token.
    pub total: f64,
    /// `total / tokens`.
    pub mean: f64,
    /// Tokens scored (stop token included).
    pub tokens: u64,
}

/// Creates a session over `model`. Many sessions may share one model, from many threads.
///
/// # Safety
/// `model` must be NULL or a live model; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_session_new(
    model: *const smolcap_model,
    out: *mut *mut smolcap_session,
) -> smolcap_status {
    entry("smolcap_session_new", || {
        // SAFETY: caller contract.
        let m = unsafe { handles::handle(model, "model") }?;
        handles::check_out(out, "out")?;
        m.shared.check()?;
        let _poison = PoisonOnUnwind(&m.shared.poisoned);
        let h = handles::into_handle(smolcap_session {
            model: Arc::clone(&m.shared),
            state: Arc::new(SessionState {
                busy: Arc::new(AtomicBool::new(false)),
                poisoned: AtomicBool::new(false),
                cancel: Mutex::new(Arc::new(AtomicBool::new(false))),
                adapters: Mutex::new(Vec::new()),
            }),
        });
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Frees a session; NULL is a no-op. An unfinished stream of this session keeps working until
/// it is freed. Must not race with other calls on this session (except that a stream may still
/// be in use).
///
/// # Safety
/// `session` must be NULL or a live session with no call in progress on it.
#[no_mangle]
pub unsafe extern "C" fn smolcap_session_free(session: *mut smolcap_session) {
    let _ = entry("smolcap_session_free", || {
        // SAFETY: forwarded contract.
        unsafe { handles::free_handle(session) };
        Ok(())
    });
}

/// Asks the call in progress on `session` (a caption, or an unfinished stream) to stop; it
/// returns `SMOLCAP_STATUS_CANCELLED` after at most one more decoding step (or once the image
/// encoding in progress ends). May be called from any thread. With nothing in progress it has
/// no effect (a later call is not cancelled).
///
/// # Safety
/// `session` must be NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn smolcap_session_cancel(session: *mut smolcap_session) -> smolcap_status {
    entry("smolcap_session_cancel", || {
        // SAFETY: caller contract; only shared (atomic / mutex) state is touched.
        let s = unsafe { handles::handle(session.cast_const(), "session") }?;
        let g = match s.state.cancel.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        g.store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// Captions `n_images` images, one caption each, in `batch_size` batches. `callback` (may be
/// NULL) receives text pieces as they are generated. On success `*out` receives the captions;
/// free them with `smolcap_captions_free`. On error nothing is returned (a failure in a later
/// batch discards the earlier ones).
///
/// # Safety
/// `session` NULL or live; `images` NULL or `n_images` valid images whose buffers are readable;
/// `params` NULL or valid; `out` NULL or writable; `callback` safe to call with `user`.
#[no_mangle]
pub unsafe extern "C" fn smolcap_caption(
    session: *mut smolcap_session,
    images: *const smolcap_image,
    n_images: usize,
    params: *const smolcap_generate_params,
    callback: smolcap_token_callback,
    user: *mut c_void,
    out: *mut *mut smolcap_captions,
) -> smolcap_status {
    entry("smolcap_caption", || {
        // SAFETY: caller contract.
        let s = unsafe { handles::handle(session.cast_const(), "session") }?;
        handles::check_out(out, "out")?;
        s.check()?;
        let _poison = PoisonOnUnwind(&s.state.poisoned);
        let _busy = Busy::acquire(&s.state.busy, "the session")?;
        let cancel = s.state.new_call();
        if n_images == 0 {
            return Err(FfiError::invalid("n_images is 0 (nothing to caption)"));
        }
        if n_images > SMOLCAP_MAX_IMAGES {
            return Err(FfiError::limit(format!(
                "n_images {n_images} exceeds the limit of {SMOLCAP_MAX_IMAGES}"
            )));
        }
        // SAFETY: caller contract, count bounded.
        let imgs = unsafe { handles::slice(images, n_images, "images") }?;
        // SAFETY: caller contract.
        let mut set = unsafe { settings(params, &s.model) }?;
        set.opts.adapters = s.state.adapters();
        let mut all = Vec::with_capacity(n_images);
        let mut buf: Vec<u8> = Vec::new();
        for (b, chunk) in imgs.chunks(set.batch_size).enumerate() {
            let start = b * set.batch_size;
            let decoded = chunk
                .iter()
                .enumerate()
                .map(|(j, im)| {
                    // SAFETY: caller contract on image buffers.
                    unsafe { source_image(im, &set.limits, &format!("images[{}]", start + j)) }
                })
                .collect::<FfiResult<Vec<_>>>()?;
            let inputs: Vec<Vec<&SourceImage>> = decoded.iter().map(|i| vec![i]).collect();
            let mut on_piece = |r: usize, piece: &str| -> ControlFlow<()> {
                let Some(cb) = callback else {
                    return ControlFlow::Continue(());
                };
                buf.clear();
                buf.extend_from_slice(piece.as_bytes());
                buf.push(0);
                // SAFETY: the host promised `cb` is callable with `user`; `buf` is NUL-terminated
                // and lives across the call.
                let rc = unsafe { cb(start + r, buf.as_ptr().cast(), piece.len(), user) };
                if rc != 0 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let caps = s
                .model
                .model
                .caption(&inputs, &set.opts, &cancel, &mut on_piece)
                .map_err(|e| {
                    let ctx = if n_images == 1 {
                        "images[0]".to_string()
                    } else {
                        format!("images[{start}..{}]", start + chunk.len())
                    };
                    FfiError::from(e).context(ctx)
                })?;
            if let Some(c) = caps.first() {
                let t = c.timings;
                emit(SMOLCAP_LOG_DEBUG, || {
                    format!(
                        "caption batch of {}: preprocess {:.3} s, vision {:.3} s, prefill {:.3} s, \
                         decode {:.3} s ({} steps)",
                        caps.len(),
                        t.preprocess_s,
                        t.vision_s,
                        t.prefill_s,
                        t.decode_s,
                        t.decode_steps
                    )
                });
            }
            all.extend(caps);
        }
        let h = handles::into_handle(smolcap_captions::from_captions(all));
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Number of captions in `captions` (0 for NULL).
///
/// # Safety
/// `captions` must be NULL or a live captions object.
#[no_mangle]
pub unsafe extern "C" fn smolcap_captions_count(captions: *const smolcap_captions) -> usize {
    entry_value("smolcap_captions_count", 0, || {
        // SAFETY: caller contract.
        unsafe { captions.as_ref() }.map_or(0, |c| c.items.len())
    })
}

/// The text of caption `index`: `*text` receives a NUL-terminated UTF-8 string owned by
/// `captions`; `len` (may be NULL) receives its length in bytes.
///
/// # Safety
/// `captions` NULL or live; `text` NULL or writable; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_captions_text(
    captions: *const smolcap_captions,
    index: usize,
    text: *mut *const c_char,
    len: *mut usize,
) -> smolcap_status {
    entry("smolcap_captions_text", || {
        // SAFETY: caller contract.
        let c = unsafe { handles::handle(captions, "captions") }?;
        handles::check_out(text, "text")?;
        let it = c.item(index)?;
        // SAFETY: `text` checked non-NULL; `len` written only when non-NULL.
        unsafe {
            text.write(it.text.as_ptr().cast());
            if !len.is_null() {
                len.write(it.text.len() - 1);
            }
        }
        Ok(())
    })
}

/// The generated token ids of caption `index` (a final stop token included): `*ids` receives
/// an array of `*n` ids owned by `captions`.
///
/// # Safety
/// `captions` NULL or live; `ids` and `n` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_captions_tokens(
    captions: *const smolcap_captions,
    index: usize,
    ids: *mut *const u32,
    n: *mut usize,
) -> smolcap_status {
    entry("smolcap_captions_tokens", || {
        // SAFETY: caller contract.
        let c = unsafe { handles::handle(captions, "captions") }?;
        handles::check_out(ids, "ids")?;
        handles::check_out(n, "n")?;
        let it = c.item(index)?;
        // SAFETY: both checked non-NULL.
        unsafe {
            ids.write(it.tokens.as_ptr());
            n.write(it.tokens.len());
        }
        Ok(())
    })
}

/// Numbers about caption `index`; `out->struct_size` must be set by the caller.
///
/// # Safety
/// `captions` NULL or live; `out` NULL or `out->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn smolcap_captions_stats(
    captions: *const smolcap_captions,
    index: usize,
    out: *mut smolcap_caption_stats,
) -> smolcap_status {
    entry("smolcap_captions_stats", || {
        // SAFETY: caller contract.
        let c = unsafe { handles::handle(captions, "captions") }?;
        handles::check_out(out, "out")?;
        let it = c.item(index)?;
        // SAFETY: non-NULL with `struct_size` writable bytes per the contract.
        unsafe { params::write(out, &it.stats) }.map_err(|e| e.context("out"))
    })
}

/// Frees a captions object; NULL is a no-op.
///
/// # Safety
/// `captions` must be NULL or a live captions object.
#[no_mangle]
pub unsafe extern "C" fn smolcap_captions_free(captions: *mut smolcap_captions) {
    let _ = entry("smolcap_captions_free", || {
        // SAFETY: forwarded contract.
        unsafe { handles::free_handle(captions) };
        Ok(())
    });
}

/// Log-likelihood of `caption` (UTF-8) as the model's answer for `image` under the prompt of
/// `params` (generation fields are ignored): for reranking and scoring captions.
///
/// # Safety
/// `session` NULL or live; `image` NULL or a valid image; `caption` NULL or NUL-terminated;
/// `params` NULL or valid; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_session_score(
    session: *mut smolcap_session,
    image: *const smolcap_image,
    caption: *const c_char,
    params: *const smolcap_generate_params,
    out: *mut smolcap_nll,
) -> smolcap_status {
    entry("smolcap_session_score", || {
        // SAFETY: caller contract.
        let s = unsafe { handles::handle(session.cast_const(), "session") }?;
        // SAFETY: caller contract.
        let img = unsafe { handles::handle(image, "image") }?;
        // SAFETY: caller contract.
        let text = unsafe { handles::req_str(caption, "caption") }?;
        handles::check_out(out, "out")?;
        s.check()?;
        let _poison = PoisonOnUnwind(&s.state.poisoned);
        let _busy = Busy::acquire(&s.state.busy, "the session")?;
        // SAFETY: caller contract.
        let mut set = unsafe { settings(params, &s.model) }?;
        set.opts.adapters = s.state.adapters();
        // SAFETY: caller contract on the image buffer.
        let src = unsafe { source_image(img, &set.limits, "image") }?;
        let nll = s
            .model
            .model
            .caption_nll(&[&src], &set.opts, text)
            .map_err(FfiError::from)?;
        // SAFETY: checked non-NULL.
        unsafe {
            out.write(smolcap_nll {
                total: nll.total,
                mean: nll.mean,
                tokens: nll.tokens as u64,
            })
        };
        Ok(())
    })
}

/// FOR TESTS ONLY: panics inside the library while working on `session`, to exercise the panic
/// contract. Returns `SMOLCAP_STATUS_PANIC`; afterwards every call on the session returns
/// `SMOLCAP_STATUS_POISONED` (only `smolcap_session_free` remains useful).
///
/// # Safety
/// `session` must be NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn smolcap_debug_panic(session: *mut smolcap_session) -> smolcap_status {
    entry("smolcap_debug_panic", || {
        // SAFETY: caller contract.
        let s = unsafe { handles::handle(session.cast_const(), "session") }?;
        s.check()?;
        let _poison = PoisonOnUnwind(&s.state.poisoned);
        let _busy = Busy::acquire(&s.state.busy, "the session")?;
        panic!("forced panic (smolcap_debug_panic)");
    })
}
