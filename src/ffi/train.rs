//! LoRA / QLoRA training behind the C ABI: trainer new / resume, step, eval, save adapter,
//! save checkpoint, cancel, free.

use std::ffi::{c_char, CString};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

use super::handles::{self, PoisonOnUnwind};
use super::model::{smolcap_model, ModelShared};
use super::params::{self, Versioned};
use super::session::{smolcap_image, source_image};
use super::status::{entry, smolcap_status, FfiError, FfiResult, SMOLCAP_STATUS_BUSY};
use crate::ffi_field_end;
use crate::processor::image::DecodeLimits;
use crate::session::Model;
use crate::train::{
    CollateOptions, Example, LoraOptions, ModelRef, StepStats, TrainOptions, Trainer,
};

impl ModelRef for ModelShared {
    fn model(&self) -> &Model {
        &self.model
    }
}

/// Settings of a training run. Initialise with `smolcap_train_params_init(&p, sizeof p)`; NULL
/// params mean defaults. Strings are borrowed for the call that reads them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_train_params {
    /// `sizeof(smolcap_train_params)` as compiled by the caller.
    pub struct_size: u32,
    /// LoRA rank (default 8).
    pub lora_r: u32,
    /// LoRA alpha (default 16).
    pub lora_alpha: f64,
    /// Dropout on the LoRA input, in [0, 1) (default 0.05).
    pub lora_dropout: f64,
    /// 1 = scale by alpha/sqrt(r) (rsLoRA), 0 = alpha/r (default 0).
    pub use_rslora: u32,
    /// Comma-separated module names that get LoRA; NULL = the seed's
    /// "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj".
    pub lora_targets: *const c_char,
    /// 1 = also LoRA on matching vision-tower modules (default 0: the tower is frozen).
    pub train_vision: u32,
    /// 1 = train the connector projection in full, saved as modules_to_save (default 0).
    pub train_connector: u32,
    /// Peak learning rate (default 1e-4).
    pub lr: f64,
    /// AdamW decoupled weight decay (default 0, as transformers' Trainer).
    pub weight_decay: f64,
    /// Linear warm-up as a fraction of `total_steps` (default 0).
    pub warmup_ratio: f64,
    /// Optimizer steps of the whole run; the learning rate decays linearly to 0 there (default 1).
    pub total_steps: u64,
    /// Gradient clipping norm; 0 = no clipping (default 1.0).
    pub max_grad_norm: f64,
    /// Examples per forward pass; a step over more examples accumulates gradients (default 1).
    pub micro_batch: u32,
    /// Seed of LoRA initialisation and dropout (default 42).
    pub seed: u64,
    /// 1 = recompute activations in the backward pass (less memory, ~30% slower) (default 0).
    pub recompute: u32,
    /// 1 = QLoRA: frozen decoder weights stored as NF4 (block 64, double quantisation).
    pub qlora: u32,
    /// Longest sample in tokens, image tokens included (default 2048). Longer captions are
    /// shortened; a sample whose prompt alone does not fit is rejected and counted.
    pub max_seq_len: u32,
    /// Overrides the processor's longest image edge; 0 = the model's (default 0).
    pub image_longest_edge: u32,
    /// The instruction that goes with each image; NULL = "Describe this image in detail.".
    pub prompt: *const c_char,
    /// The step fails with `SMOLCAP_STATUS_NUMERIC` after this many non-finite steps in a row
    /// (default 10); each such step is skipped with the parameters unchanged.
    pub max_bad_steps: u32,
    /// Limit: longest caption of an example, in bytes, checked before it is tokenized; a
    /// longer example is rejected and counted in `smolcap_step_stats.rejected` (default 64 KiB).
    pub max_caption_bytes: u64,
}

// SAFETY: repr(C), starts with `struct_size: u32`, fields are numbers and raw pointers.
unsafe impl Versioned for smolcap_train_params {
    const NAME: &'static str = "smolcap_train_params";
    const V1_SIZE: usize = ffi_field_end!(smolcap_train_params, max_bad_steps, u32);
    fn defaults() -> Self {
        let l = LoraOptions::default();
        let t = TrainOptions::default();
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            lora_r: l.r as u32,
            lora_alpha: l.alpha,
            lora_dropout: f64::from(l.dropout),
            use_rslora: u32::from(l.use_rslora),
            lora_targets: std::ptr::null(),
            train_vision: 0,
            train_connector: 0,
            lr: t.lr,
            weight_decay: t.weight_decay,
            warmup_ratio: t.warmup_ratio,
            total_steps: t.total_steps,
            max_grad_norm: t.max_grad_norm,
            micro_batch: t.micro_batch as u32,
            seed: t.seed,
            recompute: 0,
            qlora: 0,
            max_seq_len: t.collate.max_seq_len as u32,
            image_longest_edge: 0,
            prompt: std::ptr::null(),
            max_bad_steps: t.max_bad_steps,
            max_caption_bytes: t.max_caption_bytes as u64,
        }
    }
}

/// One training example: an image (as for captioning) and its target caption (UTF-8).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_train_example {
    /// The image, borrowed for the call.
    pub image: smolcap_image,
    /// The caption, NUL-terminated UTF-8, borrowed for the call.
    pub caption: *const c_char,
}

/// What one optimizer step did. Set `struct_size = sizeof(smolcap_step_stats)` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_step_stats {
    /// `sizeof(smolcap_step_stats)` as compiled by the caller (left unchanged).
    pub struct_size: u32,
    /// Optimizer steps taken so far (after this one).
    pub step: u64,
    /// Token-mean cross-entropy of the step's caption tokens.
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Caption tokens (labels) in the step.
    pub tokens: u64,
    /// Examples used.
    pub examples: u32,
    /// Examples rejected: their prompt does not fit `max_seq_len`, or their caption is longer
    /// than `max_caption_bytes`.
    pub rejected: u32,
    /// Examples whose caption was shortened to fit `max_seq_len`.
    pub truncated: u32,
    /// 1 when the step was skipped (non-finite loss or gradients; parameters unchanged).
    pub skipped: u32,
}

// SAFETY: repr(C), starts with `struct_size: u32`, fields are numbers.
unsafe impl Versioned for smolcap_step_stats {
    const NAME: &'static str = "smolcap_step_stats";
    const V1_SIZE: usize = ffi_field_end!(smolcap_step_stats, skipped, u32);
    fn defaults() -> Self {
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            step: 0,
            loss: 0.0,
            grad_norm: 0.0,
            lr: 0.0,
            tokens: 0,
            examples: 0,
            rejected: 0,
            truncated: 0,
            skipped: 0,
        }
    }
}

impl From<&StepStats> for smolcap_step_stats {
    fn from(s: &StepStats) -> Self {
        Self {
            step: s.step,
            loss: s.loss,
            grad_norm: s.grad_norm,
            lr: s.lr,
            tokens: s.tokens as u64,
            examples: s.examples as u32,
            rejected: s.rejected as u32,
            truncated: s.truncated as u32,
            skipped: u32::from(s.skipped),
            ..Self::defaults()
        }
    }
}

/// Facts about a trainer. Set `struct_size = sizeof(smolcap_trainer_info)` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smolcap_trainer_info {
    /// `sizeof(smolcap_trainer_info)` as compiled by the caller (left unchanged).
    pub struct_size: u32,
    /// Optimizer steps taken.
    pub step: u64,
    /// Trainable scalars (LoRA factors and trainable modules).
    pub trainable_parameters: u64,
    /// Bytes of frozen decoder weights the trainer keeps (NF4 codes with QLoRA).
    pub resident_weight_bytes: u64,
    /// Steps skipped because of non-finite values.
    pub skipped_steps: u64,
}

// SAFETY: repr(C), starts with `struct_size: u32`, fields are numbers.
unsafe impl Versioned for smolcap_trainer_info {
    const NAME: &'static str = "smolcap_trainer_info";
    const V1_SIZE: usize = ffi_field_end!(smolcap_trainer_info, skipped_steps, u64);
    fn defaults() -> Self {
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            step: 0,
            trainable_parameters: 0,
            resident_weight_bytes: 0,
            skipped_steps: 0,
        }
    }
}

/// A LoRA training run over one model. Used by one thread at a time (a concurrent call returns
/// `SMOLCAP_STATUS_BUSY`); `smolcap_trainer_cancel` may be called from any thread. It keeps the
/// model alive, so the model may be freed first.
pub struct smolcap_trainer {
    model: Arc<ModelShared>,
    trainer: Mutex<Trainer>,
    cancel: Arc<AtomicBool>,
    poisoned: AtomicBool,
    /// The caller's data state of the checkpoint it was resumed from ("" otherwise).
    data_state: CString,
}

impl smolcap_trainer {
    fn check(&self) -> FfiResult<()> {
        handles::check_poison(&self.poisoned, "the trainer")?;
        self.model.check()
    }

    fn lock(&self) -> FfiResult<std::sync::MutexGuard<'_, Trainer>> {
        match self.trainer.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::WouldBlock) => Err(FfiError::new(
                SMOLCAP_STATUS_BUSY,
                "the trainer is in use by another call",
            )),
            // A panic inside a call poisons the handle first; this is only reached after it.
            Err(TryLockError::Poisoned(_)) => Err(FfiError::new(
                super::status::SMOLCAP_STATUS_POISONED,
                "the trainer was poisoned by an earlier panic; free it",
            )),
        }
    }
}

/// Fills `params` with defaults. Pass `sizeof(smolcap_train_params)` as `struct_size`.
///
/// # Safety
/// `params` must be NULL or point to `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn smolcap_train_params_init(
    params: *mut smolcap_train_params,
    struct_size: usize,
) -> smolcap_status {
    entry("smolcap_train_params_init", || {
        // SAFETY: forwarded contract.
        unsafe { params::init(params, struct_size) }
    })
}

/// Converts the C params into library options.
///
/// # Safety
/// String fields must be NULL or NUL-terminated.
unsafe fn options(p: &smolcap_train_params) -> FfiResult<(LoraOptions, TrainOptions)> {
    // SAFETY: caller contract.
    let targets = unsafe { handles::opt_str(p.lora_targets, "params.lora_targets") }?;
    // SAFETY: caller contract.
    let prompt = unsafe { handles::opt_str(p.prompt, "params.prompt") }?;
    let finite = |v: f64, what: &str| -> FfiResult<f64> {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(FfiError::invalid(format!(
                "params.{what} is {v}, not finite"
            )))
        }
    };
    if p.lora_r == 0 || p.lora_r > 4096 {
        return Err(FfiError::invalid(format!(
            "params.lora_r is {}, must be in 1..=4096",
            p.lora_r
        )));
    }
    if !(0.0..1.0).contains(&p.lora_dropout) {
        return Err(FfiError::invalid(format!(
            "params.lora_dropout is {}, must be in [0, 1)",
            p.lora_dropout
        )));
    }
    if !(0.0..=1.0).contains(&p.warmup_ratio) {
        return Err(FfiError::invalid(format!(
            "params.warmup_ratio is {}, must be in [0, 1]",
            p.warmup_ratio
        )));
    }
    if p.micro_batch == 0 || p.max_seq_len == 0 || p.total_steps == 0 {
        return Err(FfiError::invalid(
            "params.micro_batch, max_seq_len and total_steps must be at least 1",
        ));
    }
    let lr = finite(p.lr, "lr")?;
    let wd = finite(p.weight_decay, "weight_decay")?;
    let clip = finite(p.max_grad_norm, "max_grad_norm")?;
    if lr < 0.0 || wd < 0.0 || clip < 0.0 {
        return Err(FfiError::invalid(
            "params.lr, weight_decay and max_grad_norm must not be negative",
        ));
    }
    let mut lora = LoraOptions {
        r: p.lora_r as usize,
        alpha: finite(p.lora_alpha, "lora_alpha")?,
        dropout: p.lora_dropout as f32,
        use_rslora: params::flag(p.use_rslora, "use_rslora")?,
        train_vision: params::flag(p.train_vision, "train_vision")?,
        train_connector: params::flag(p.train_connector, "train_connector")?,
        ..LoraOptions::default()
    };
    if let Some(t) = targets {
        lora.targets = t
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    let d = TrainOptions::default();
    let opts = TrainOptions {
        lr,
        weight_decay: wd,
        warmup_ratio: p.warmup_ratio,
        total_steps: p.total_steps,
        max_grad_norm: clip,
        micro_batch: p.micro_batch as usize,
        seed: p.seed,
        recompute: params::flag(p.recompute, "recompute")?,
        max_bad_steps: p.max_bad_steps.max(1),
        qlora: params::flag(p.qlora, "qlora")?,
        max_caption_bytes: match usize::try_from(p.max_caption_bytes) {
            Ok(0) => {
                return Err(FfiError::invalid(
                    "params.max_caption_bytes must be at least 1",
                ))
            }
            Ok(n) => n,
            Err(_) => usize::MAX,
        },
        collate: CollateOptions {
            prompt: prompt.map_or(d.collate.prompt.clone(), str::to_string),
            longest_edge: (p.image_longest_edge > 0).then_some(p.image_longest_edge),
            max_seq_len: p.max_seq_len as usize,
        },
        ..d
    };
    Ok((lora, opts))
}

fn wrap(model: Arc<ModelShared>, t: Trainer, data_state: String) -> *mut smolcap_trainer {
    let cancel = t.cancel_flag();
    handles::into_handle(smolcap_trainer {
        model,
        trainer: Mutex::new(t),
        cancel,
        poisoned: AtomicBool::new(false),
        data_state: CString::new(data_state.replace('\0', "")).unwrap_or_default(),
    })
}

/// Starts a training run on `model`: new LoRA factors (A as peft initialises them, B zero), or
/// with `init_adapter_dir` (may be NULL) the factors of an existing PEFT adapter, whose
/// configuration then decides the targets, rank and alpha. `*out` receives the trainer; free
/// it with `smolcap_trainer_free`.
///
/// # Safety
/// `model` NULL or live; `params` NULL or valid; `init_adapter_dir` NULL or NUL-terminated;
/// `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_trainer_new(
    model: *const smolcap_model,
    params: *const smolcap_train_params,
    init_adapter_dir: *const c_char,
    out: *mut *mut smolcap_trainer,
) -> smolcap_status {
    entry("smolcap_trainer_new", || {
        // SAFETY: caller contract.
        let m = unsafe { handles::handle(model, "model") }?;
        handles::check_out(out, "out")?;
        m.shared.check()?;
        let _poison = PoisonOnUnwind(&m.shared.poisoned);
        // SAFETY: caller contract.
        let p = unsafe { params::read(params) }?;
        // SAFETY: caller contract.
        let (lora, opts) = unsafe { options(&p) }?;
        // SAFETY: caller contract.
        let init = unsafe { handles::opt_str(init_adapter_dir, "init_adapter_dir") }?;
        let shared: Arc<dyn ModelRef> = m.shared.clone();
        let t = Trainer::new(shared, lora, opts, init.map(Path::new)).map_err(|e| {
            let f = FfiError::from(e);
            match init {
                Some(d) => f.context(d),
                None => f,
            }
        })?;
        let h = wrap(Arc::clone(&m.shared), t, String::new());
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Resumes the run saved by `smolcap_trainer_save_checkpoint` in `checkpoint_dir`: same
/// parameters, optimizer moments, step, schedule and random streams, so later steps give the
/// losses an uninterrupted run would. `smolcap_trainer_data_state` returns the data state
/// saved with it.
///
/// # Safety
/// `model` NULL or live; `checkpoint_dir` NULL or NUL-terminated; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_trainer_resume(
    model: *const smolcap_model,
    checkpoint_dir: *const c_char,
    out: *mut *mut smolcap_trainer,
) -> smolcap_status {
    entry("smolcap_trainer_resume", || {
        // SAFETY: caller contract.
        let m = unsafe { handles::handle(model, "model") }?;
        // SAFETY: caller contract.
        let dir = unsafe { handles::req_str(checkpoint_dir, "checkpoint_dir") }?;
        handles::check_out(out, "out")?;
        m.shared.check()?;
        let _poison = PoisonOnUnwind(&m.shared.poisoned);
        let shared: Arc<dyn ModelRef> = m.shared.clone();
        let (t, data) =
            Trainer::resume(shared, Path::new(dir)).map_err(|e| FfiError::from(e).context(dir))?;
        let state = match data {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s,
            v => v.to_string(),
        };
        let h = wrap(Arc::clone(&m.shared), t, state);
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// The data state stored with the checkpoint this trainer was resumed from ("" for a new run,
/// never NULL; NULL only for a NULL trainer). Valid until the trainer is freed.
///
/// # Safety
/// `trainer` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn smolcap_trainer_data_state(
    trainer: *const smolcap_trainer,
) -> *const c_char {
    super::status::entry_value("smolcap_trainer_data_state", std::ptr::null(), || {
        // SAFETY: caller contract.
        match unsafe { handles::handle(trainer, "trainer") } {
            Ok(t) => t.data_state.as_ptr(),
            Err(_) => std::ptr::null(),
        }
    })
}

/// Decodes the caller's examples.
///
/// # Safety
/// `examples` NULL or `n` valid examples.
unsafe fn read_examples(
    examples: *const smolcap_train_example,
    n: usize,
) -> FfiResult<Vec<Example>> {
    if n == 0 {
        return Err(FfiError::invalid("n is 0 (no example)"));
    }
    // SAFETY: caller contract, count bounded by `slice`.
    let ex = unsafe { handles::slice(examples, n, "examples") }?;
    let limits = DecodeLimits::default();
    let mut out = Vec::with_capacity(n);
    for (i, e) in ex.iter().enumerate() {
        // SAFETY: caller contract.
        let caption = unsafe { handles::req_str(e.caption, &format!("examples[{i}].caption")) }?;
        // SAFETY: caller contract on image buffers.
        let image = unsafe { source_image(&e.image, &limits, &format!("examples[{i}].image")) }?;
        out.push(Example {
            image,
            caption: caption.to_string(),
            key: None,
        });
    }
    Ok(out)
}

/// One optimizer step over `n` examples (forward passes of `micro_batch` examples, gradients
/// accumulated; the loss is the token mean over all of them). A step with non-finite loss or
/// gradients is skipped with the parameters unchanged (`stats->skipped`). `stats` may be NULL.
///
/// # Safety
/// `trainer` NULL or live; `examples` NULL or `n` valid examples; `stats` NULL or
/// `stats->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn smolcap_trainer_step(
    trainer: *mut smolcap_trainer,
    examples: *const smolcap_train_example,
    n: usize,
    stats: *mut smolcap_step_stats,
) -> smolcap_status {
    entry("smolcap_trainer_step", || {
        // SAFETY: caller contract.
        let t = unsafe { handles::handle(trainer.cast_const(), "trainer") }?;
        t.check()?;
        let mut g = t.lock()?;
        let _poison = PoisonOnUnwind(&t.poisoned);
        // SAFETY: caller contract.
        let ex = unsafe { read_examples(examples, n) }?;
        t.cancel.store(false, Ordering::SeqCst);
        let s = g.step(&ex).map_err(FfiError::from)?;
        if !stats.is_null() {
            // SAFETY: non-NULL, `struct_size` writable bytes per the contract.
            unsafe { params::write(stats, &smolcap_step_stats::from(&s)) }?;
        }
        Ok(())
    })
}

/// Token-mean loss of `n` examples under the current parameters (no dropout, nothing changed):
/// `*mean_loss` and `*tokens` (either may be NULL).
///
/// # Safety
/// `trainer` NULL or live; `examples` NULL or `n` valid examples; outputs NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_trainer_eval(
    trainer: *mut smolcap_trainer,
    examples: *const smolcap_train_example,
    n: usize,
    mean_loss: *mut f64,
    tokens: *mut u64,
) -> smolcap_status {
    entry("smolcap_trainer_eval", || {
        // SAFETY: caller contract.
        let t = unsafe { handles::handle(trainer.cast_const(), "trainer") }?;
        t.check()?;
        let g = t.lock()?;
        let _poison = PoisonOnUnwind(&t.poisoned);
        // SAFETY: caller contract.
        let ex = unsafe { read_examples(examples, n) }?;
        t.cancel.store(false, Ordering::SeqCst);
        let (loss, n_tok) = g.eval(&ex).map_err(FfiError::from)?;
        if !mean_loss.is_null() {
            // SAFETY: non-NULL, writable per the contract.
            unsafe { mean_loss.write(loss) };
        }
        if !tokens.is_null() {
            // SAFETY: non-NULL, writable per the contract.
            unsafe { tokens.write(n_tok as u64) };
        }
        Ok(())
    })
}

/// Fills `out` (its `struct_size` set by the caller) with facts about the trainer.
///
/// # Safety
/// `trainer` NULL or live; `out` NULL or `out->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn smolcap_trainer_get_info(
    trainer: *mut smolcap_trainer,
    out: *mut smolcap_trainer_info,
) -> smolcap_status {
    entry("smolcap_trainer_get_info", || {
        // SAFETY: caller contract.
        let t = unsafe { handles::handle(trainer.cast_const(), "trainer") }?;
        handles::check_out(out, "out")?;
        t.check()?;
        let g = t.lock()?;
        let info = smolcap_trainer_info {
            step: g.step_count(),
            trainable_parameters: g.trainable_parameters() as u64,
            resident_weight_bytes: g.resident_weight_bytes() as u64,
            skipped_steps: g.skipped_steps(),
            ..smolcap_trainer_info::defaults()
        };
        // SAFETY: non-NULL, `struct_size` writable bytes per the contract.
        unsafe { params::write(out, &info) }
    })
}

/// Writes the trained adapter to `dir` in PEFT's layout (adapter_config.json +
/// adapter_model.safetensors), atomically: a failure leaves an existing `dir` untouched.
///
/// # Safety
/// `trainer` NULL or live; `dir` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn smolcap_trainer_save_adapter(
    trainer: *mut smolcap_trainer,
    dir: *const c_char,
) -> smolcap_status {
    entry("smolcap_trainer_save_adapter", || {
        // SAFETY: caller contract.
        let t = unsafe { handles::handle(trainer.cast_const(), "trainer") }?;
        // SAFETY: caller contract.
        let d = unsafe { handles::req_str(dir, "dir") }?;
        t.check()?;
        let g = t.lock()?;
        let _poison = PoisonOnUnwind(&t.poisoned);
        g.save_adapter(Path::new(d))
            .map_err(|e| FfiError::from(e).context(d))
    })
}

/// Writes a checkpoint to `dir` (the adapter, optimizer moments, step and schedule, and
/// `data_state`, any NUL-terminated UTF-8 text the caller wants back on resume, e.g. the data
/// position; NULL = none), atomically: temp dir, fsync, rename.
///
/// # Safety
/// `trainer` NULL or live; `dir` NULL or NUL-terminated; `data_state` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn smolcap_trainer_save_checkpoint(
    trainer: *mut smolcap_trainer,
    dir: *const c_char,
    data_state: *const c_char,
) -> smolcap_status {
    entry("smolcap_trainer_save_checkpoint", || {
        // SAFETY: caller contract.
        let t = unsafe { handles::handle(trainer.cast_const(), "trainer") }?;
        // SAFETY: caller contract.
        let d = unsafe { handles::req_str(dir, "dir") }?;
        // SAFETY: caller contract.
        let state = unsafe { handles::opt_str(data_state, "data_state") }?;
        t.check()?;
        let g = t.lock()?;
        let _poison = PoisonOnUnwind(&t.poisoned);
        let v = state.map_or(serde_json::Value::Null, |s| {
            serde_json::Value::String(s.to_string())
        });
        g.save_checkpoint(Path::new(d), &v)
            .map_err(|e| FfiError::from(e).context(d))
    })
}

/// Asks the step or eval in progress to stop; it returns `SMOLCAP_STATUS_CANCELLED` at the
/// next micro-batch (parameters unchanged). May be called from any thread; with nothing in
/// progress it has no effect.
///
/// # Safety
/// `trainer` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn smolcap_trainer_cancel(trainer: *mut smolcap_trainer) -> smolcap_status {
    entry("smolcap_trainer_cancel", || {
        // SAFETY: caller contract; only the atomic flag is touched.
        let t = unsafe { handles::handle(trainer.cast_const(), "trainer") }?;
        t.cancel.store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// Frees a trainer; NULL is a no-op. Must not race with other calls on it.
///
/// # Safety
/// `trainer` must be NULL or a live trainer with no call in progress.
#[no_mangle]
pub unsafe extern "C" fn smolcap_trainer_free(trainer: *mut smolcap_trainer) {
    let _ = entry("smolcap_trainer_free", || {
        // SAFETY: forwarded contract.
        unsafe { handles::free_handle(trainer) };
        Ok(())
    });
}
