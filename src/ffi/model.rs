//! Model handles: load, info, free.

use std::ffi::{c_char, CString};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use candle_core::DType;

use super::handles::{self, PoisonOnUnwind};
use super::log::{emit, SMOLCAP_LOG_INFO};
use super::params::{self, Versioned};
use super::status::{entry, smolcap_status, FfiError, FfiResult};
use crate::config::ConfigLimits;
use crate::ffi_field_end;
use crate::session::{LoadOptions, Model};

/// `smolcap_load_params.dtype`: f32 on CPU (the checkpoint's dtype is not used yet).
pub const SMOLCAP_DTYPE_DEFAULT: u32 = 0;
/// `smolcap_load_params.dtype`: 32-bit float.
pub const SMOLCAP_DTYPE_F32: u32 = 1;
/// `smolcap_load_params.dtype`: bfloat16.
pub const SMOLCAP_DTYPE_BF16: u32 = 2;
/// `smolcap_load_params.dtype`: float16.
pub const SMOLCAP_DTYPE_F16: u32 = 3;

/// How to load a model. Initialise with `smolcap_load_params_init(&p, sizeof p)`, then set
/// fields. Strings are borrowed for the duration of `smolcap_model_load` only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_load_params {
    /// `sizeof(smolcap_load_params)` as compiled by the caller.
    pub struct_size: u32,
    /// Compute dtype, a `SMOLCAP_DTYPE_*` value (default `SMOLCAP_DTYPE_DEFAULT`).
    pub dtype: u32,
    /// Compute device: "cpu" (NULL or "" mean "cpu"), "cuda", "cuda:N" or "metal".
    pub device: *const c_char,
    /// Hub revision (branch, tag or commit) when the model is a hub repo id; NULL = "main".
    pub revision: *const c_char,
    /// Limit: largest safetensors JSON header of any weights or adapter file, in bytes
    /// (default 100000000). A larger header is `SMOLCAP_STATUS_LIMIT` before it is read.
    pub max_header_bytes: u64,
    /// Limit: most layers in config.json, vision or text (default 1024).
    pub max_layers: u32,
    /// Limit: largest hidden size in config.json, vision or text; intermediate sizes may be 8x
    /// this (default 65536).
    pub max_hidden_size: u32,
    /// Limit: most attention heads (query or key/value) in config.json (default 1024).
    pub max_heads: u32,
    /// Limit: largest text vocabulary in config.json (default 4000000).
    pub max_vocab: u32,
    /// Limit: largest `text_config.max_position_embeddings` (default 1048576).
    pub max_positions: u32,
    /// Limit: largest `vision_config.image_size` in pixels (default 16384).
    pub max_image_size: u32,
    /// Limit: largest LoRA rank of adapters loaded for this model (default 4096).
    pub max_adapter_rank: u32,
    /// Weight storage, quantised as the weights are read: NULL or "" keeps them dense; a
    /// format ("q8_0", "q6_k", "q5_0", "q4_k", "q4_0", "f16", "bf16", "nf4") for every part, then
    /// optional "part=format" overrides ("q4_0,vision=q8_0"; parts: vision, connector, text,
    /// embed, lm_head; "f32" keeps a part dense). See docs/QUANTIZATION.md. For a GGUF model,
    /// NULL or "" keeps each tensor in the format the file stores.
    pub quantize: *const c_char,
    /// The vision projector (`mmproj*.gguf`) when the model path is a GGUF text model; NULL
    /// finds the one `mmproj*.gguf` beside it.
    pub mmproj: *const c_char,
}

// SAFETY: repr(C), starts with `struct_size: u32`, fields are integers and raw pointers.
unsafe impl Versioned for smolcap_load_params {
    const NAME: &'static str = "smolcap_load_params";
    const V1_SIZE: usize = ffi_field_end!(smolcap_load_params, revision, *const c_char);
    fn defaults() -> Self {
        let l = ConfigLimits::default();
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            dtype: SMOLCAP_DTYPE_DEFAULT,
            device: std::ptr::null(),
            revision: std::ptr::null(),
            max_header_bytes: l.max_header_bytes,
            max_layers: l.max_layers as u32,
            max_hidden_size: l.max_hidden as u32,
            max_heads: l.max_heads as u32,
            max_vocab: l.max_vocab as u32,
            max_positions: l.max_positions as u32,
            max_image_size: l.max_image_size as u32,
            max_adapter_rank: l.max_adapter_rank as u32,
            quantize: std::ptr::null(),
            mmproj: std::ptr::null(),
        }
    }
}

/// Facts about a loaded model. Set `struct_size = sizeof(smolcap_model_info)` before calling
/// `smolcap_model_get_info`. The strings belong to the model and stay valid until
/// `smolcap_model_free`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_model_info {
    /// `sizeof(smolcap_model_info)` as compiled by the caller (left unchanged).
    pub struct_size: u32,
    /// Text vocabulary size (rows of the output head).
    pub vocab_size: u32,
    /// Image tokens per tile.
    pub image_seq_len: u32,
    /// Tile side in pixels (`max_image_size.longest_edge`).
    pub tile_size: u32,
    /// Default `size.longest_edge` images are resized to before tiling.
    pub longest_edge: u32,
    /// Text hidden size.
    pub hidden_size: u32,
    /// Text decoder layers.
    pub num_layers: u32,
    /// Longest sequence (prompt + generated tokens) the text model supports.
    pub max_position_embeddings: u32,
    /// The first stop token id.
    pub eos_token_id: u32,
    /// `model_type` from config.json ("idefics3", ...).
    pub model_type: *const c_char,
    /// Compute dtype ("f32", "bf16", "f16").
    pub dtype: *const c_char,
    /// Compute device ("cpu", "cuda:0", ...).
    pub device: *const c_char,
    /// The resolved model directory.
    pub dir: *const c_char,
}

// SAFETY: repr(C), starts with `struct_size: u32`, fields are integers and raw pointers.
unsafe impl Versioned for smolcap_model_info {
    const NAME: &'static str = "smolcap_model_info";
    const V1_SIZE: usize = ffi_field_end!(smolcap_model_info, dir, *const c_char);
    fn defaults() -> Self {
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            vocab_size: 0,
            image_seq_len: 0,
            tile_size: 0,
            longest_edge: 0,
            hidden_size: 0,
            num_layers: 0,
            max_position_embeddings: 0,
            eos_token_id: 0,
            model_type: std::ptr::null(),
            dtype: std::ptr::null(),
            device: std::ptr::null(),
            dir: std::ptr::null(),
        }
    }
}

/// What a model handle and every session made from it share.
pub struct ModelShared {
    /// The loaded model.
    pub model: Model,
    /// Set by a panic in a call on this model.
    pub poisoned: AtomicBool,
    info_strings: [CString; 4],
}

impl ModelShared {
    /// Checks the poison flag.
    pub fn check(&self) -> FfiResult<()> {
        handles::check_poison(&self.poisoned, "the model")
    }

    /// The largest `max_new_tokens` accepted.
    pub fn max_positions(&self) -> usize {
        self.model.network().config().text.max_position_embeddings
    }
}

/// A loaded model: immutable, usable from many threads at once through `const smolcap_model*`.
/// Sessions keep what they need alive, so the model may be freed before its sessions.
pub struct smolcap_model {
    pub(crate) shared: Arc<ModelShared>,
}

fn cstring(s: impl Into<String>) -> CString {
    CString::new(s.into().replace('\0', "\u{FFFD}")).unwrap_or_default()
}

/// The load-time limits of `p`; each must be at least 1.
fn config_limits(p: &smolcap_load_params) -> FfiResult<ConfigLimits> {
    let pos = |v: u32, what: &str| -> FfiResult<usize> {
        if v == 0 {
            return Err(FfiError::invalid(format!(
                "params.{what} must be at least 1"
            )));
        }
        Ok(v as usize)
    };
    if p.max_header_bytes == 0 {
        return Err(FfiError::invalid(
            "params.max_header_bytes must be at least 1",
        ));
    }
    Ok(ConfigLimits {
        max_hidden: pos(p.max_hidden_size, "max_hidden_size")?,
        max_layers: pos(p.max_layers, "max_layers")?,
        max_vocab: pos(p.max_vocab, "max_vocab")?,
        max_heads: pos(p.max_heads, "max_heads")?,
        max_positions: pos(p.max_positions, "max_positions")?,
        max_image_size: pos(p.max_image_size, "max_image_size")?,
        max_header_bytes: p.max_header_bytes,
        max_adapter_rank: pos(p.max_adapter_rank, "max_adapter_rank")?,
    })
}

fn load(spec: &str, p: &smolcap_load_params) -> FfiResult<ModelShared> {
    let dtype = match p.dtype {
        SMOLCAP_DTYPE_DEFAULT => None,
        SMOLCAP_DTYPE_F32 => Some(DType::F32),
        SMOLCAP_DTYPE_BF16 => Some(DType::BF16),
        SMOLCAP_DTYPE_F16 => Some(DType::F16),
        v => {
            return Err(FfiError::invalid(format!(
                "params.dtype {v} is not a SMOLCAP_DTYPE_* value"
            )))
        }
    };
    // SAFETY: params strings are borrowed for this call (documented contract).
    let device_name = unsafe { handles::opt_str(p.device, "params.device") }?
        .filter(|s| !s.trim().is_empty())
        .unwrap_or("cpu");
    // SAFETY: as above.
    let revision = unsafe { handles::opt_str(p.revision, "params.revision") }?;
    let device = crate::device::parse_device(device_name)
        .map_err(|e| FfiError::from(e).context("params.device"))?;
    // SAFETY: as above.
    let quantize = unsafe { handles::opt_str(p.quantize, "params.quantize") }?.unwrap_or("");
    let quantize = crate::quant::QuantSpec::parse(quantize)
        .map_err(|e| FfiError::from(e).context("params.quantize"))?;
    // SAFETY: as above.
    let mmproj = unsafe { handles::opt_str(p.mmproj, "params.mmproj") }?
        .filter(|s| !s.is_empty())
        .map(std::path::PathBuf::from);
    let opts = LoadOptions {
        dtype,
        device,
        revision: revision.map(str::to_string),
        config_limits: config_limits(p)?,
        nf4_decoder: false,
        quantize,
        mmproj,
    };
    let t0 = Instant::now();
    let model = Model::load(spec, &opts).map_err(|e| FfiError::from(e).context(spec))?;
    let net = model.network();
    let info_strings = [
        cstring(net.config().model_type.clone()),
        cstring(net.dtype().as_str()),
        cstring(device_name.trim().to_ascii_lowercase()),
        cstring(model.dir().to_string_lossy()),
    ];
    emit(SMOLCAP_LOG_INFO, || {
        format!(
            "loaded {} ({}, {}, {}) in {:.2} s",
            model.dir().display(),
            net.config().model_type,
            net.dtype().as_str(),
            device_name,
            t0.elapsed().as_secs_f64()
        )
    });
    Ok(ModelShared {
        model,
        poisoned: AtomicBool::new(false),
        info_strings,
    })
}

/// Fills `params` with defaults. Pass `sizeof(smolcap_load_params)` as `struct_size`.
///
/// # Safety
/// `params` must be NULL or point to `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn smolcap_load_params_init(
    params: *mut smolcap_load_params,
    struct_size: usize,
) -> smolcap_status {
    entry("smolcap_load_params_init", || {
        // SAFETY: forwarded contract.
        unsafe { params::init(params, struct_size) }
    })
}

/// Loads a model from a local directory in the Hugging Face layout, or from a hub repo id
/// ("owner/name", fetched into the Hugging Face cache; HF_HOME, HF_HUB_CACHE, HF_TOKEN and
/// HF_HUB_OFFLINE are honoured). `params` may be NULL (defaults). On success `*out` receives a
/// new model; free it with `smolcap_model_free`.
///
/// # Safety
/// `dir_or_repo` must be NULL or NUL-terminated; `params` NULL or a valid params struct; `out`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_model_load(
    dir_or_repo: *const c_char,
    params: *const smolcap_load_params,
    out: *mut *mut smolcap_model,
) -> smolcap_status {
    entry("smolcap_model_load", || {
        handles::check_out(out, "out")?;
        // SAFETY: caller contract.
        let spec = unsafe { handles::req_str(dir_or_repo, "dir_or_repo") }?;
        if spec.is_empty() {
            return Err(FfiError::invalid("dir_or_repo is empty"));
        }
        // SAFETY: caller contract.
        let p = unsafe { params::read(params) }?;
        let shared = load(spec, &p)?;
        let h = handles::into_handle(smolcap_model {
            shared: Arc::new(shared),
        });
        // SAFETY: `out` checked non-NULL and writable per the contract.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Describes a model. `out->struct_size` must be set by the caller; only the fields that fit
/// are written.
///
/// # Safety
/// `model` must be NULL or a live model; `out` NULL or point to `out->struct_size` writable
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn smolcap_model_get_info(
    model: *const smolcap_model,
    out: *mut smolcap_model_info,
) -> smolcap_status {
    entry("smolcap_model_get_info", || {
        // SAFETY: caller contract.
        let m = unsafe { handles::handle(model, "model") }?;
        handles::check_out(out, "out")?;
        let s = &m.shared;
        s.check()?;
        let _poison = PoisonOnUnwind(&s.poisoned);
        let net = s.model.network();
        let cfg = net.config();
        let proc = s.model.processor();
        let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let info = smolcap_model_info {
            struct_size: 0,
            vocab_size: u(cfg.text.vocab_size),
            image_seq_len: u(proc.image_seq_len),
            tile_size: proc.image.max_image_size,
            longest_edge: proc.image.size_longest_edge,
            hidden_size: u(cfg.text.hidden_size),
            num_layers: u(cfg.text.num_hidden_layers),
            max_position_embeddings: u(cfg.text.max_position_embeddings),
            eos_token_id: s.model.stop_tokens().first().copied().unwrap_or(0),
            model_type: s.info_strings[0].as_ptr(),
            dtype: s.info_strings[1].as_ptr(),
            device: s.info_strings[2].as_ptr(),
            dir: s.info_strings[3].as_ptr(),
        };
        // SAFETY: `out` non-NULL with `struct_size` writable bytes per the contract.
        unsafe { params::write(out, &info) }.map_err(|e| e.context("out"))
    })
}

/// Frees a model; NULL is a no-op. Sessions made from it stay usable (they keep the weights
/// alive until the last of them is freed). Must not race with other calls on this handle.
///
/// # Safety
/// `model` must be NULL or a live model not used by another thread during this call.
#[no_mangle]
pub unsafe extern "C" fn smolcap_model_free(model: *mut smolcap_model) {
    let _ = entry("smolcap_model_free", || {
        // SAFETY: forwarded contract.
        unsafe { handles::free_handle(model) };
        Ok(())
    });
}
