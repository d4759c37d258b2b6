//! A whole training run over a caption dataset (the seed's `train` command): epochs of shuffled
//! rows, optimizer steps of `batch_size × grad_accum` examples, periodic evaluation and
//! checkpoints, TensorBoard and JSONL logs, the final PEFT adapter in the output directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::data::{self, Dataset, DatasetSpec, Sample as Row, Select};
use crate::error::{Error, Result};
use crate::processor::image::DecodeLimits;
use crate::train::tensorboard::{EventWriter, ScalarLog};
use crate::train::{Example, LoraOptions, ModelRef, StepStats, TrainOptions, Trainer};

/// Settings of a run beyond the trainer's.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The training data.
    pub train: DatasetSpec,
    /// Split of the same dataset for evaluation (`None` = no evaluation).
    pub eval_split: Option<String>,
    /// Where checkpoints, logs and the final adapter go.
    pub output_dir: PathBuf,
    /// Use at most this many training rows.
    pub max_samples: Option<usize>,
    /// Evaluate on at most this many rows of the eval split.
    pub eval_max_samples: usize,
    /// Passes over the data (ignored when `max_steps` is set).
    pub epochs: f64,
    /// Examples per forward pass.
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    pub grad_accum: usize,
    /// Stop after this many optimizer steps.
    pub max_steps: Option<u64>,
    /// Evaluate every this many steps (and at the end); 0 = only at the end.
    pub eval_steps: u64,
    /// Write a checkpoint every this many steps; 0 = only the final adapter.
    pub save_steps: u64,
    /// Shuffle rows each epoch (seeded by the run's seed and the epoch).
    pub shuffle: bool,
    /// Order each epoch by image (images shuffled, an image's captions consecutive): each image
    /// is decoded and, with the tower and connector frozen, encoded once per epoch.
    pub group_by_image: bool,
    /// Resume from this checkpoint directory.
    pub resume: Option<PathBuf>,
    /// Start from this PEFT adapter.
    pub adapter_init: Option<PathBuf>,
    /// Print a progress line on stderr.
    pub progress: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Optimizer steps taken in total.
    pub steps: u64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Last evaluation loss, if any.
    pub eval_loss: Option<f64>,
    /// Rows skipped because their image could not be read or decoded, or the dataset marked
    /// them bad.
    pub bad_rows: usize,
    /// Examples rejected as too long.
    pub rejected: usize,
    /// Examples whose caption was shortened.
    pub truncated: usize,
    /// Steps skipped because of non-finite values.
    pub skipped_steps: u64,
    /// Seconds spent.
    pub seconds: f64,
    /// Trainable scalars.
    pub trainable_parameters: usize,
    /// Bytes of frozen decoder weights the trainer kept (NF4 codes with QLoRA).
    pub resident_weight_bytes: usize,
    /// Where the final adapter is.
    pub adapter_dir: PathBuf,
    /// The run was cancelled: the adapter and `checkpoint-<steps>/` hold the steps completed
    /// before it (a step in flight is abandoned), and `--resume` continues exactly.
    pub cancelled: bool,
}

/// What a run reports while it goes, for progress displays.
#[derive(Debug, Clone, Copy)]
pub enum RunEvent<'a> {
    /// The loop starts at optimizer step `start` of `total`.
    Started {
        /// Steps already done (resumed runs).
        start: u64,
        /// Steps of the whole run.
        total: u64,
    },
    /// An optimizer step finished.
    Step {
        /// The step's figures.
        stats: &'a StepStats,
        /// Steps of the whole run.
        total: u64,
        /// Label tokens per second since the loop started.
        tokens_per_s: f64,
    },
    /// An evaluation finished after step `step`.
    Eval {
        /// Steps done.
        step: u64,
        /// Token-mean loss on the eval rows.
        loss: f64,
    },
    /// The cancel flag was seen; the adapter and a checkpoint of `step` are being written.
    Cancelling {
        /// Steps completed (the one in flight is abandoned).
        step: u64,
    },
    /// The loop ended; the adapter and the final checkpoint are being written.
    Finished {
        /// Steps completed.
        step: u64,
    },
}

/// Where the run is in the data: saved with checkpoints so a resume continues there.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct DataPos {
    epoch: u64,
    next: usize,
}

/// The row order of one epoch: rows shuffled, or (grouped) images shuffled with each image's
/// rows kept together in dataset order.
fn epoch_order(rows: &[Row], epoch: u64, seed: u64, shuffle: bool, grouped: bool) -> Vec<usize> {
    let s = seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407);
    if !grouped {
        let mut idx: Vec<usize> = (0..rows.len()).collect();
        if shuffle {
            data::shuffle(&mut idx, s);
        }
        return idx;
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut at: std::collections::HashMap<&data::ImageId, usize> = Default::default();
    for (i, r) in rows.iter().enumerate() {
        let g = *at.entry(&r.id).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    if shuffle {
        data::shuffle(&mut groups, s);
    }
    groups.into_iter().flatten().collect()
}

/// A stable 64-bit key of an image id (FNV-1a over its text form).
fn image_key(id: &data::ImageId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Rows in a row without a usable image after which a run stops (or one pass, if shorter):
/// a dataset whose images cannot be read fails in well under a second, not after a pass over
/// millions of rows.
const MAX_UNUSABLE_ROWS: usize = 1000;

/// Most "skipping <image>" warnings printed in one run; later ones are only counted.
const MAX_SKIP_WARNINGS: usize = 20;

/// Images skipped because they could not be read or decoded: counted, the first few printed.
#[derive(Default)]
struct Skips {
    warned: usize,
    first: Option<String>,
}

impl Skips {
    fn note(&mut self, msg: String) {
        if self.warned < MAX_SKIP_WARNINGS {
            warn(&msg);
        } else if self.warned == MAX_SKIP_WARNINGS {
            warn("further unreadable images are skipped without a warning (see bad_rows)");
        }
        self.warned += 1;
        if self.first.is_none() {
            self.first = Some(msg);
        }
    }
}

/// Reads and decodes the images of `rows` (each distinct image once); rows whose image fails
/// are left out and counted.
fn examples(
    ds: &Dataset,
    rows: &[&Row],
    bad: &mut usize,
    skips: &mut Skips,
) -> Result<Vec<Example>> {
    let mut unique: Vec<&Row> = Vec::new();
    let mut slot: Vec<usize> = Vec::with_capacity(rows.len());
    for r in rows {
        match unique.iter().position(|u| u.image == r.image) {
            Some(j) => slot.push(j),
            None => {
                slot.push(unique.len());
                unique.push(r);
            }
        }
    }
    let mut decoded: Vec<Option<crate::processor::image::SourceImage>> = vec![None; unique.len()];
    for item in ds.images(&unique, DecodeLimits::default(), 8) {
        let (i, img) = item?;
        match img {
            Ok(image) => decoded[i] = Some(image),
            Err(e) => skips.note(format!("skipping {}: {e}", ds.locate(&unique[i].image))),
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for (r, &j) in rows.iter().zip(&slot) {
        match &decoded[j] {
            Some(image) => out.push(Example {
                image: image.clone(),
                caption: r.caption.clone(),
                key: Some(image_key(&r.id)),
            }),
            None => *bad += 1,
        }
    }
    Ok(out)
}

/// Warnings go to stderr: the run's only side channel besides its files.
fn warn(msg: &str) {
    eprintln!("warning: {msg}");
}

/// Runs training from `opts` with `lora` and `train` (whose `total_steps` and `micro_batch` are
/// derived here). `cancel` stops the run at the next micro-batch: the step in flight is
/// abandoned, the adapter and a checkpoint of the completed steps are written, and the report
/// says `cancelled`. With `opts.progress` a progress line goes to stderr.
pub fn run(
    model: Arc<dyn ModelRef>,
    opts: &RunOptions,
    lora: LoraOptions,
    train: TrainOptions,
    cancel: Option<Arc<AtomicBool>>,
) -> Result<RunReport> {
    let progress = opts.progress;
    run_with(model, opts, lora, train, cancel, &mut |ev| {
        if progress {
            print_event(&ev)
        }
    })
}

/// The plain progress line of [`run`].
fn print_event(ev: &RunEvent) {
    match *ev {
        RunEvent::Started { .. } => {}
        RunEvent::Step {
            stats: st,
            total,
            tokens_per_s,
        } => {
            eprint!(
                "\rstep {}/{} loss {:.4} lr {:.3e} {:.0} tok/s{}   ",
                st.step,
                total,
                st.loss,
                st.lr,
                tokens_per_s,
                if st.skipped { " (skipped)" } else { "" }
            );
            let _ = std::io::stderr().flush();
        }
        RunEvent::Eval { step, loss } => eprintln!("\nstep {step}: eval loss {loss:.4}"),
        RunEvent::Cancelling { step } => {
            eprintln!("\ncancelled: saving the adapter and checkpoint-{step}")
        }
        RunEvent::Finished { .. } => eprintln!(),
    }
}

/// [`run`] reporting its progress to `on_event` instead of stderr.
pub fn run_with(
    model: Arc<dyn ModelRef>,
    opts: &RunOptions,
    lora: LoraOptions,
    mut train: TrainOptions,
    cancel: Option<Arc<AtomicBool>>,
    on_event: &mut dyn FnMut(RunEvent),
) -> Result<RunReport> {
    let t0 = Instant::now();
    if opts.batch_size == 0 || opts.grad_accum == 0 {
        return Err(Error::InvalidArgument(
            "batch_size and grad_accum must be at least 1".into(),
        ));
    }
    // Before any work: the output directory must be usable, and what killed saves left in it
    // (temporary directories, the adapter staging directory of older versions) goes.
    crate::fsio::ensure_dir(&opts.output_dir)?;
    crate::fsio::remove_stale_all(&opts.output_dir);
    let _ = std::fs::remove_dir_all(opts.output_dir.join(".adapter.tmp"));
    lora.validate()?;
    train.validate()?;
    let ds = Dataset::open(&opts.train)?;
    let mut report = RunReport {
        bad_rows: ds.bad_rows().len(),
        ..RunReport::default()
    };
    for b in ds.bad_rows().iter().take(5) {
        warn(&format!("bad row {b}"));
    }
    let rows = ds.rows(&Select {
        shuffle_seed: None,
        max_images: None,
        max_samples: opts.max_samples,
    });
    if rows.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no usable row in {} (split {})",
            opts.train.id, opts.train.split
        )));
    }
    let per_step = opts.batch_size * opts.grad_accum;
    let total = match opts.max_steps {
        Some(s) => s.max(1),
        None => {
            if !(opts.epochs.is_finite() && opts.epochs > 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "epochs {} must be positive",
                    opts.epochs
                )));
            }
            ((rows.len() as f64 * opts.epochs) / per_step as f64)
                .ceil()
                .max(1.0) as u64
        }
    };
    train.total_steps = total;
    train.micro_batch = opts.batch_size;
    let (mut trainer, mut pos) = match &opts.resume {
        Some(dir) => {
            // The checkpoint decides the LoRA layout: options that contradict it are an error,
            // not silently ignored.
            let (saved_lora, _) = crate::train::checkpoint_options(dir)?;
            let diff = lora.differences(&saved_lora);
            if !diff.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "the LoRA options given contradict the checkpoint {} (given vs saved: {}); \
                     omit them or pass the checkpoint's values",
                    dir.display(),
                    diff.join(", ")
                )));
            }
            let (t, state) = Trainer::resume(model.clone(), dir)?;
            if t.step_count() > total {
                return Err(Error::InvalidArgument(format!(
                    "the checkpoint {} is at step {}, past this run's {total} steps (raise \
                     max_steps or epochs)",
                    dir.display(),
                    t.step_count()
                )));
            }
            let pos: DataPos = serde_json::from_value(state)
                .map_err(|e| Error::format(dir.join("trainer_state.json"), format!("data: {e}")))?;
            (t, pos)
        }
        None => (
            Trainer::new(
                model.clone(),
                lora,
                train.clone(),
                opts.adapter_init.as_deref(),
            )?,
            DataPos::default(),
        ),
    };
    if let Some(c) = &cancel {
        trainer.set_cancel_flag(c.clone());
    }
    let mut skips = Skips::default();
    let eval_ex: Vec<Example> = match &opts.eval_split {
        Some(split) => {
            let spec = DatasetSpec {
                split: split.clone(),
                ..opts.train.clone()
            };
            match Dataset::open(&spec) {
                Ok(eds) => {
                    let r = eds.rows(&Select {
                        shuffle_seed: None,
                        max_images: None,
                        max_samples: Some(opts.eval_max_samples),
                    });
                    let mut bad = 0;
                    let refs: Vec<&Row> = r.iter().collect();
                    // Decoded once, reused at every evaluation.
                    let ex = examples(&eds, &refs, &mut bad, &mut skips)?;
                    report.bad_rows += bad;
                    ex
                }
                Err(e) => {
                    warn(&format!("no evaluation: {e}"));
                    Vec::new()
                }
            }
        }
        None => Vec::new(),
    };
    let logs = opts.output_dir.join("logs");
    let mut tb = EventWriter::create(&logs)?;
    let mut jl = ScalarLog::create(logs.join("scalars.jsonl"))?;
    let mut order = epoch_order(
        &rows,
        pos.epoch,
        train.seed,
        opts.shuffle,
        opts.group_by_image,
    );
    let mut tokens_seen = 0usize;
    let t_loop = Instant::now();
    let start_step = trainer.step_count();
    let mut unusable_rows = 0usize;
    on_event(RunEvent::Started {
        start: start_step,
        total,
    });
    let cancelled = || cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));
    while trainer.step_count() < total {
        if cancelled() {
            report.cancelled = true;
            break;
        }
        // Where the data stood before this step: a cancelled step gives its rows back.
        let pos_before = pos;
        let mut picked: Vec<&Row> = Vec::with_capacity(per_step);
        while picked.len() < per_step {
            if pos.next >= order.len() {
                pos.epoch += 1;
                pos.next = 0;
                order = epoch_order(
                    &rows,
                    pos.epoch,
                    train.seed,
                    opts.shuffle,
                    opts.group_by_image,
                );
            }
            picked.push(&rows[order[pos.next]]);
            pos.next += 1;
        }
        let mut bad = 0;
        let ex = examples(&ds, &picked, &mut bad, &mut skips)?;
        report.bad_rows += bad;
        if ex.is_empty() {
            // Bounded: a whole pass over the rows, or MAX_UNUSABLE_ROWS rows in a row, without
            // one usable image ends the run.
            unusable_rows += picked.len();
            if unusable_rows >= rows.len().min(MAX_UNUSABLE_ROWS) {
                return Err(Error::Image(format!(
                    "{} rows in a row of {} (split {}, {} rows) have no image that can be read \
                     and decoded; first failure: {}",
                    unusable_rows,
                    opts.train.id,
                    opts.train.split,
                    rows.len(),
                    skips.first.as_deref().unwrap_or("none recorded")
                )));
            }
            continue;
        }
        unusable_rows = 0;
        let st: StepStats = match trainer.step(&ex) {
            Err(Error::Cancelled) => {
                pos = pos_before;
                report.cancelled = true;
                break;
            }
            r => r?,
        };
        report.rejected += st.rejected;
        report.truncated += st.truncated;
        report.last_loss = st.loss;
        tokens_seen += st.tokens;
        let step = st.step as i64;
        for (tag, v) in [
            ("train/loss", st.loss),
            ("train/learning_rate", st.lr),
            ("train/grad_norm", st.grad_norm),
        ] {
            tb.add_scalar(tag, v as f32, step)?;
            jl.add_scalar(tag, v as f32, step)?;
        }
        on_event(RunEvent::Step {
            stats: &st,
            total,
            tokens_per_s: tokens_seen as f64 / t_loop.elapsed().as_secs_f64().max(1e-9),
        });
        let last = trainer.step_count() >= total;
        if !eval_ex.is_empty()
            && (last || (opts.eval_steps > 0 && st.step.is_multiple_of(opts.eval_steps)))
        {
            match trainer.eval(&eval_ex) {
                Ok((l, _)) => {
                    report.eval_loss = Some(l);
                    tb.add_scalar("eval/loss", l as f32, step)?;
                    jl.add_scalar("eval/loss", l as f32, step)?;
                    on_event(RunEvent::Eval {
                        step: st.step,
                        loss: l,
                    });
                }
                // The step itself is complete: keep it, skip the evaluation.
                Err(Error::Cancelled) => {
                    report.cancelled = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if opts.save_steps > 0 && st.step.is_multiple_of(opts.save_steps) && !last {
            let dir = opts.output_dir.join(format!("checkpoint-{}", st.step));
            trainer.save_checkpoint(&dir, &json!(pos))?;
        }
        tb.flush()?;
        jl.flush()?;
    }
    tb.flush()?;
    jl.flush()?;
    let step = trainer.step_count();
    on_event(if report.cancelled {
        RunEvent::Cancelling { step }
    } else {
        RunEvent::Finished { step }
    });
    // The seed's layout: the adapter at the top of the output directory, plus a final
    // checkpoint so the run can be extended.
    write_adapter_files(&trainer, &opts.output_dir)?;
    trainer.save_checkpoint(
        &opts
            .output_dir
            .join(format!("checkpoint-{}", trainer.step_count())),
        &json!(pos),
    )?;
    report.steps = trainer.step_count();
    report.trainable_parameters = trainer.trainable_parameters();
    report.resident_weight_bytes = trainer.resident_weight_bytes();
    report.skipped_steps = trainer.skipped_steps();
    report.seconds = t0.elapsed().as_secs_f64();
    report.adapter_dir = opts.output_dir.clone();
    Ok(report)
}

/// Subdirectory of a run's output directory that holds the final adapter.
pub const FINAL_ADAPTER_DIR: &str = "final_adapter";

/// Publishes the final adapter at the top of `dir` (the seed's layout) as one unit: the
/// adapter is saved into `dir/final_adapter` with one directory swap, and
/// `dir/adapter_config.json` / `dir/adapter_model.safetensors` are symlinks into it
/// ([`crate::fsio::publish_set`]), so a kill never leaves new weights beside an old config.
fn write_adapter_files(t: &Trainer, dir: &Path) -> Result<()> {
    crate::fsio::publish_set(dir, FINAL_ADAPTER_DIR, |tmp| t.save_adapter_files(tmp))?;
    Ok(())
}
