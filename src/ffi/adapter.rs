//! LoRA adapters: load (validated against a model), info, free; activating adapters on a
//! session; merging adapters into a checkpoint on disk.

use std::ffi::{c_char, CString};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use super::handles::{self, Busy, PoisonOnUnwind};
use super::log::{emit, SMOLCAP_LOG_INFO, SMOLCAP_LOG_WARN};
use super::model::{smolcap_model, ModelShared};
use super::params::{self, Versioned};
use super::session::smolcap_session;
use super::status::{entry, smolcap_status, FfiError, FfiResult};
use crate::ffi_field_end;
use crate::lora::peft::Adapter;
use crate::merge::{self, MergeOptions};
use crate::session::ActiveAdapter;

/// A PEFT LoRA adapter loaded for one model: immutable, usable from many threads at once
/// through `const smolcap_adapter*`. Sessions that activate it keep their own reference, so it
/// may be freed right after `smolcap_session_set_adapters`.
pub struct smolcap_adapter {
    pub(crate) adapter: Arc<Adapter>,
    /// The model it was validated against (identity only: it does not keep the weights alive).
    pub(crate) model: Weak<ModelShared>,
    poisoned: AtomicBool,
    dir: CString,
}

impl smolcap_adapter {
    fn check(&self) -> FfiResult<()> {
        handles::check_poison(&self.poisoned, "the adapter")
    }
}

/// Facts about a loaded adapter. Set `struct_size = sizeof(smolcap_adapter_info)` before
/// calling `smolcap_adapter_get_info`. The string belongs to the adapter and stays valid until
/// `smolcap_adapter_free`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_adapter_info {
    /// `sizeof(smolcap_adapter_info)` as compiled by the caller (left unchanged).
    pub struct_size: u32,
    /// Default rank `r` of `adapter_config.json` (`rank_pattern` may override it per module).
    pub rank: u32,
    /// Default `lora_alpha` (`alpha_pattern` may override it per module).
    pub alpha: f64,
    /// Modules with LoRA factors.
    pub num_lora_modules: u32,
    /// Of those, modules in the vision tower.
    pub num_vision_modules: u32,
    /// 1 when the adapter stores whole modules (`modules_to_save`), else 0.
    pub has_modules_to_save: u32,
    /// 1 when the adapter scales by alpha/sqrt(r) (rsLoRA), else 0.
    pub use_rslora: u32,
    /// The directory it was loaded from.
    pub dir: *const c_char,
}

// SAFETY: repr(C), starts with `struct_size: u32`, fields are integers, floats and pointers.
unsafe impl Versioned for smolcap_adapter_info {
    const NAME: &'static str = "smolcap_adapter_info";
    const V1_SIZE: usize = ffi_field_end!(smolcap_adapter_info, dir, *const c_char);
    fn defaults() -> Self {
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            rank: 0,
            alpha: 0.0,
            num_lora_modules: 0,
            num_vision_modules: 0,
            has_modules_to_save: 0,
            use_rslora: 0,
            dir: std::ptr::null(),
        }
    }
}

fn cstring(s: impl Into<String>) -> CString {
    CString::new(s.into().replace('\0', "\u{FFFD}")).unwrap_or_default()
}

/// Loads a PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`)
/// for `model`: every tensor is checked against the model (an unknown module, a wrong shape or
/// rank is `SMOLCAP_STATUS_FORMAT` naming the key). On success `*out` receives a new adapter;
/// free it with `smolcap_adapter_free`. It can be activated only on sessions of `model`.
///
/// # Safety
/// `model` NULL or a live model; `dir` NULL or NUL-terminated; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_adapter_load(
    model: *const smolcap_model,
    dir: *const c_char,
    out: *mut *mut smolcap_adapter,
) -> smolcap_status {
    entry("smolcap_adapter_load", || {
        // SAFETY: caller contract.
        let m = unsafe { handles::handle(model, "model") }?;
        // SAFETY: caller contract.
        let d = unsafe { handles::req_str(dir, "dir") }?;
        handles::check_out(out, "out")?;
        if d.is_empty() {
            return Err(FfiError::invalid("dir is empty"));
        }
        m.shared.check()?;
        let _poison = PoisonOnUnwind(&m.shared.poisoned);
        let a = m
            .shared
            .model
            .load_adapter(Path::new(d))
            .map_err(|e| FfiError::from(e).context(d))?;
        emit(SMOLCAP_LOG_INFO, || {
            format!(
                "loaded adapter {d} (r={}, alpha={}, {} LoRA modules, {} saved modules)",
                a.config.r,
                a.config.lora_alpha,
                a.modules.len(),
                a.saved.len()
            )
        });
        let h = handles::into_handle(smolcap_adapter {
            adapter: Arc::new(a),
            model: Arc::downgrade(&m.shared),
            poisoned: AtomicBool::new(false),
            dir: cstring(d),
        });
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Describes an adapter. `out->struct_size` must be set by the caller; only the fields that fit
/// are written.
///
/// # Safety
/// `adapter` NULL or a live adapter; `out` NULL or `out->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn smolcap_adapter_get_info(
    adapter: *const smolcap_adapter,
    out: *mut smolcap_adapter_info,
) -> smolcap_status {
    entry("smolcap_adapter_get_info", || {
        // SAFETY: caller contract.
        let a = unsafe { handles::handle(adapter, "adapter") }?;
        handles::check_out(out, "out")?;
        a.check()?;
        let _poison = PoisonOnUnwind(&a.poisoned);
        let ad = &a.adapter;
        let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let info = smolcap_adapter_info {
            struct_size: 0,
            rank: u(ad.config.r),
            alpha: ad.config.lora_alpha,
            num_lora_modules: u(ad.modules.len()),
            num_vision_modules: u(ad
                .modules
                .iter()
                .filter(|m| m.name.contains(".vision_model."))
                .count()),
            has_modules_to_save: u32::from(
                !ad.saved.is_empty() || !ad.config.modules_to_save.is_empty(),
            ),
            use_rslora: u32::from(ad.config.use_rslora),
            dir: a.dir.as_ptr(),
        };
        // SAFETY: `out` non-NULL with `struct_size` writable bytes per the contract.
        unsafe { params::write(out, &info) }.map_err(|e| e.context("out"))
    })
}

/// Frees an adapter; NULL is a no-op. Sessions that activated it keep using it (they hold their
/// own reference). Must not race with other calls on this handle.
///
/// # Safety
/// `adapter` must be NULL or a live adapter not used by another thread during this call.
#[no_mangle]
pub unsafe extern "C" fn smolcap_adapter_free(adapter: *mut smolcap_adapter) {
    let _ = entry("smolcap_adapter_free", || {
        // SAFETY: forwarded contract.
        unsafe { handles::free_handle(adapter) };
        Ok(())
    });
}

/// Sets the LoRA adapters every later caption, score and stream of `session` applies
/// (unmerged), `adapters[i]` with multiplier `scales[i]` (`scales` NULL = all 1.0). `n` = 0
/// clears them (the base model again). The adapters must have been loaded for the session's
/// model; the session keeps its own references, so the caller may free them afterwards. Fails
/// with `SMOLCAP_STATUS_BUSY` while a call or stream of the session is in progress; on failure
/// the previous set stays active.
///
/// # Safety
/// `session` NULL or live; `adapters` NULL or `n` pointers (each NULL or a live adapter);
/// `scales` NULL or `n` floats.
#[no_mangle]
pub unsafe extern "C" fn smolcap_session_set_adapters(
    session: *mut smolcap_session,
    adapters: *const *const smolcap_adapter,
    scales: *const f32,
    n: usize,
) -> smolcap_status {
    entry("smolcap_session_set_adapters", || {
        // SAFETY: caller contract.
        let s = unsafe { handles::handle(session.cast_const(), "session") }?;
        // SAFETY: caller contract, count bounded by `slice`.
        let list = unsafe { handles::slice(adapters, n, "adapters") }?;
        // SAFETY: as above; NULL scales mean 1.0.
        let scales = if scales.is_null() {
            None
        } else {
            Some(unsafe { handles::slice(scales, n, "scales") }?)
        };
        s.check()?;
        let _poison = PoisonOnUnwind(&s.state.poisoned);
        let _busy = Busy::acquire(&s.state.busy, "the session")?;
        let mut active = Vec::with_capacity(n);
        for (i, &p) in list.iter().enumerate() {
            // SAFETY: caller contract (each pointer NULL or live).
            let a = unsafe { handles::handle(p, &format!("adapters[{i}]")) }?;
            a.check().map_err(|e| e.context(format!("adapters[{i}]")))?;
            if !std::ptr::eq(a.model.as_ptr(), Arc::as_ptr(&s.model)) {
                return Err(FfiError::invalid(format!(
                    "adapters[{i}] ({}) was loaded for a different model than the session's \
                     (load it with smolcap_adapter_load on the session's model)",
                    a.dir.to_string_lossy()
                )));
            }
            let weight = scales.map_or(1.0, |v| v[i]);
            if !weight.is_finite() {
                return Err(FfiError::invalid(format!(
                    "scales[{i}] is {weight}, not a finite number"
                )));
            }
            active.push(ActiveAdapter {
                adapter: Arc::clone(&a.adapter),
                weight,
            });
        }
        s.state.set_adapters(active);
        Ok(())
    })
}

/// One adapter of `smolcap_merge_save`: a PEFT adapter directory and its multiplier.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_adapter_spec {
    /// The adapter directory (UTF-8, NUL-terminated).
    pub dir: *const c_char,
    /// Multiplier of its update (1.0 = as trained); must be finite.
    pub scale: f32,
}

/// Settings of `smolcap_merge_save`. Initialise with `smolcap_merge_params_init(&p, sizeof p)`;
/// NULL params mean defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_merge_params {
    /// `sizeof(smolcap_merge_params)` as compiled by the caller.
    pub struct_size: u32,
    /// 1 = replace a non-empty output directory, 0 = fail (default 0).
    pub overwrite: u32,
    /// Largest safetensors file written; above it the weights are sharded with an index
    /// (default 5 GiB; at least 1).
    pub max_shard_bytes: u64,
    /// Hub revision when the base is a repo id; NULL = "main". Borrowed for the call.
    pub revision: *const c_char,
}

// SAFETY: repr(C), starts with `struct_size: u32`, fields are integers and raw pointers.
unsafe impl Versioned for smolcap_merge_params {
    const NAME: &'static str = "smolcap_merge_params";
    const V1_SIZE: usize = ffi_field_end!(smolcap_merge_params, revision, *const c_char);
    fn defaults() -> Self {
        let d = MergeOptions::default();
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            overwrite: u32::from(d.overwrite),
            max_shard_bytes: d.max_shard_bytes,
            revision: std::ptr::null(),
        }
    }
}

/// What `smolcap_merge_save` did. Set `struct_size = sizeof(smolcap_merge_report)` before the
/// call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_merge_report {
    /// `sizeof(smolcap_merge_report)` as compiled by the caller (left unchanged).
    pub struct_size: u32,
    /// Modules that received a LoRA update.
    pub merged_modules: u64,
    /// Modules replaced whole (`modules_to_save`).
    pub replaced_modules: u64,
    /// Tensors written.
    pub tensors: u64,
    /// Safetensors files written.
    pub shards: u64,
    /// Warnings (e.g. an adapter trained on a 4-bit base); each is also logged at
    /// `SMOLCAP_LOG_WARN`.
    pub warnings: u64,
}

// SAFETY: repr(C), starts with `struct_size: u32`, fields are integers.
unsafe impl Versioned for smolcap_merge_report {
    const NAME: &'static str = "smolcap_merge_report";
    const V1_SIZE: usize = ffi_field_end!(smolcap_merge_report, warnings, u64);
    fn defaults() -> Self {
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            merged_modules: 0,
            replaced_modules: 0,
            tensors: 0,
            shards: 0,
            warnings: 0,
        }
    }
}

/// Fills `params` with defaults. Pass `sizeof(smolcap_merge_params)` as `struct_size`.
///
/// # Safety
/// `params` must be NULL or point to `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn smolcap_merge_params_init(
    params: *mut smolcap_merge_params,
    struct_size: usize,
) -> smolcap_status {
    entry("smolcap_merge_params_init", || {
        // SAFETY: forwarded contract.
        unsafe { params::init(params, struct_size) }
    })
}

/// Merges `n` (at least 1) adapters into the checkpoint `base_model_dir_or_repo` (a local model
/// directory or a hub repo id) and writes a complete model directory to `out_dir`, loadable by
/// `smolcap_model_load` and transformers: `W' = W + sum scale * (alpha/r) * B A` in f32, stored
/// in the checkpoint's dtype. Works on the files (no loaded model needed). The output is written
/// atomically; an existing non-empty `out_dir` is an error unless `params->overwrite`.
/// `out` (may be NULL) receives what was done (`out->struct_size` set by the caller).
///
/// # Safety
/// `base_model_dir_or_repo` and `out_dir` NULL or NUL-terminated; `specs` NULL or `n` specs
/// whose `dir` strings are NULL or NUL-terminated; `params` NULL or valid; `out` NULL or
/// `out->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn smolcap_merge_save(
    base_model_dir_or_repo: *const c_char,
    specs: *const smolcap_adapter_spec,
    n: usize,
    out_dir: *const c_char,
    params: *const smolcap_merge_params,
    out: *mut smolcap_merge_report,
) -> smolcap_status {
    entry("smolcap_merge_save", || {
        // SAFETY: caller contract.
        let base = unsafe { handles::req_str(base_model_dir_or_repo, "base_model_dir_or_repo") }?;
        if base.is_empty() {
            return Err(FfiError::invalid("base_model_dir_or_repo is empty"));
        }
        if n == 0 {
            return Err(FfiError::invalid("n is 0 (no adapter to merge)"));
        }
        // SAFETY: caller contract, count bounded by `slice`.
        let specs = unsafe { handles::slice(specs, n, "specs") }?;
        // SAFETY: caller contract.
        let out_s = unsafe { handles::req_str(out_dir, "out_dir") }?;
        if out_s.is_empty() {
            return Err(FfiError::invalid("out_dir is empty"));
        }
        // SAFETY: caller contract.
        let p = unsafe { params::read(params) }?;
        let overwrite = params::flag(p.overwrite, "overwrite")?;
        if p.max_shard_bytes == 0 {
            return Err(FfiError::invalid(
                "params.max_shard_bytes must be at least 1",
            ));
        }
        // SAFETY: params strings are borrowed for the call.
        let revision = unsafe { handles::opt_str(p.revision, "params.revision") }?;
        if !out.is_null() {
            // Check the report's size before doing any work.
            // SAFETY: a non-NULL `out` has its leading u32 readable per the contract.
            let size = unsafe { std::ptr::read_unaligned(out.cast::<u32>().cast_const()) };
            if (size as usize) < smolcap_merge_report::V1_SIZE {
                return Err(FfiError::invalid(format!(
                    "out.struct_size is {size}, smaller than the first version's {} bytes \
                     (set it to sizeof(smolcap_merge_report))",
                    smolcap_merge_report::V1_SIZE
                )));
            }
        }
        let mut dirs = Vec::with_capacity(n);
        for (i, sp) in specs.iter().enumerate() {
            // SAFETY: caller contract.
            let d = unsafe { handles::req_str(sp.dir, &format!("specs[{i}].dir")) }?;
            if d.is_empty() {
                return Err(FfiError::invalid(format!("specs[{i}].dir is empty")));
            }
            if !sp.scale.is_finite() {
                return Err(FfiError::invalid(format!(
                    "specs[{i}].scale is {}, not a finite number",
                    sp.scale
                )));
            }
            dirs.push((d, sp.scale));
        }
        let base_dir =
            crate::hub::resolve(base, revision).map_err(|e| FfiError::from(e).context(base))?;
        let loaded = dirs
            .iter()
            .enumerate()
            .map(|(i, (d, _))| {
                merge::load_adapter_for(&base_dir, Path::new(d))
                    .map_err(|e| FfiError::from(e).context(format!("specs[{i}].dir")))
            })
            .collect::<FfiResult<Vec<Adapter>>>()?;
        let pairs: Vec<(&Adapter, f64)> = loaded
            .iter()
            .zip(&dirs)
            .map(|(a, (_, s))| (a, f64::from(*s)))
            .collect();
        let opts = MergeOptions {
            max_shard_bytes: p.max_shard_bytes,
            overwrite,
        };
        let report = merge::merge_save(&base_dir, &pairs, Path::new(out_s), &opts, &mut |_, _| {})
            .map_err(|e| FfiError::from(e).context(out_s))?;
        for w in &report.warnings {
            emit(SMOLCAP_LOG_WARN, || w.clone());
        }
        emit(SMOLCAP_LOG_INFO, || {
            format!(
                "merged {n} adapter(s) into {out_s}: {} modules updated, {} replaced, {} tensors \
                 in {} file(s)",
                report.merged_modules, report.replaced_modules, report.tensors, report.shards
            )
        });
        if !out.is_null() {
            let r = smolcap_merge_report {
                struct_size: 0,
                merged_modules: report.merged_modules as u64,
                replaced_modules: report.replaced_modules as u64,
                tensors: report.tensors as u64,
                shards: report.shards as u64,
                warnings: report.warnings.len() as u64,
            };
            // SAFETY: non-NULL with `struct_size` writable bytes per the contract.
            unsafe { params::write(out, &r) }.map_err(|e| e.context("out"))?;
        }
        Ok(())
    })
}
