//! Dataset evaluation (`smolcap eval`): caption each unique image of a dataset in batches, score
//! the captions against all the image's references, and write COCO-format predictions and
//! references, a metrics JSON and a self-contained HTML report.

pub mod report;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde_json::{json, Value};

use crate::data::{BadRow, Dataset, ImageGroup, ImageId};
use crate::error::{Error, Result};
use crate::metrics::{Scores, Suite};
use crate::processor::image::{DecodeLimits, SourceImage};
use crate::processor::resample::{resize_u8, Filter};
use crate::session::{CaptionOptions, Model};

/// How an evaluation runs.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Prompt, generation parameters and adapters used for every caption.
    pub caption: CaptionOptions,
    /// Images captioned together in one batch.
    pub batch_size: usize,
    /// Which metric implementations to score with.
    pub suite: Suite,
    /// Limits applied when decoding dataset images.
    pub limits: DecodeLimits,
    /// Longest edge of the report's thumbnails in pixels (0 = no thumbnails).
    pub thumbnail_px: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            caption: CaptionOptions::default(),
            batch_size: 4,
            suite: Suite::Seed,
            limits: DecodeLimits::default(),
            thumbnail_px: 160,
        }
    }
}

/// One evaluated image.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalImage {
    /// The image's id (the `image_id` of the COCO files written).
    pub id: ImageId,
    /// Its display name.
    pub name: String,
    /// The generated caption (trimmed).
    pub prediction: String,
    /// All its reference captions.
    pub references: Vec<String>,
    /// A small JPEG of the image for the report.
    pub thumbnail: Option<Vec<u8>>,
}

/// Where the time of an evaluation went (seconds; stage times summed over batches).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct EvalTimings {
    /// Reading, decoding and captioning, end to end.
    pub caption_s: f64,
    /// Preprocessing inside captioning (resize, tiles, tokenize).
    pub preprocess_s: f64,
    /// Vision tower + connector.
    pub vision_s: f64,
    /// Prompt forward passes.
    pub prefill_s: f64,
    /// Token-by-token decoding.
    pub decode_s: f64,
    /// Tokens generated over all captions (stop tokens included).
    pub generated_tokens: usize,
    /// Computing the metrics.
    pub score_s: f64,
}

/// The outcome of [`run`].
#[derive(Debug, Clone)]
pub struct EvalResult {
    /// The captioned images, in dataset order.
    pub images: Vec<EvalImage>,
    /// Corpus and per-image scores (index = index into `images`).
    pub scores: Scores,
    /// Images skipped because they could not be read, decoded or processed.
    pub skipped: Vec<BadRow>,
    /// Timings.
    pub timings: EvalTimings,
    /// The cancel flag stopped the run: `images` and `scores` cover the batches finished
    /// before it.
    pub cancelled: bool,
}

/// Progress reported after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Images captioned so far.
    pub done: usize,
    /// Images skipped so far.
    pub skipped: usize,
    /// Images to evaluate in all.
    pub total: usize,
}

/// Captions `groups` (images of `ds`) `opts.batch_size` at a time, in order, and scores them.
///
/// Images that cannot be read or decoded are skipped and listed in [`EvalResult::skipped`];
/// batches are filled with the next good images, so the batching equals captioning the good
/// images alone with the same batch size. `progress` is called after each batch and skip.
/// Once `cancel` is set, the batch in flight is dropped and the finished ones are scored
/// ([`EvalResult::cancelled`]).
pub fn run(
    model: &Model,
    ds: &Dataset,
    groups: &[ImageGroup],
    opts: &EvalOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<EvalResult> {
    let c = caption_groups(
        model,
        ds,
        groups,
        opts,
        cancel,
        progress,
        &mut |_, _| Ok(()),
    )?;
    let mut r = score_images(c.images, c.skipped, c.timings, opts.suite)?;
    r.cancelled = c.cancelled;
    Ok(r)
}

/// Captioned images before scoring: [`caption_groups`]' result.
#[derive(Debug, Clone)]
pub struct Captioned {
    /// Captioned images in `groups` order.
    pub images: Vec<EvalImage>,
    /// `images[k]` is `groups[indices[k]]`.
    pub indices: Vec<usize>,
    /// Images that could not be read, decoded or captioned.
    pub skipped: Vec<BadRow>,
    /// Time spent (no scoring yet).
    pub timings: EvalTimings,
    /// The cancel flag stopped the captioning: `images` are the batches finished before it.
    pub cancelled: bool,
}

/// Scores captioned images against their references (the second half of [`run`]).
pub fn score_images(
    images: Vec<EvalImage>,
    skipped: Vec<BadRow>,
    mut timings: EvalTimings,
    suite: Suite,
) -> Result<EvalResult> {
    let t1 = Instant::now();
    let preds: Vec<&str> = images.iter().map(|i| i.prediction.as_str()).collect();
    let refs: Vec<Vec<&str>> = images
        .iter()
        .map(|i| i.references.iter().map(String::as_str).collect())
        .collect();
    let scores = crate::metrics::score(&preds, &refs, suite).map_err(|e| match e {
        crate::metrics::MetricsError::Empty => Error::InvalidArgument(format!(
            "no image could be evaluated ({} skipped)",
            skipped.len()
        )),
        other => Error::from(other),
    })?;
    timings.score_s = t1.elapsed().as_secs_f64();
    Ok(EvalResult {
        images,
        scores,
        skipped,
        timings,
        cancelled: false,
    })
}

/// Receives each captioned batch: its images' positions in `groups` and the images.
pub type BatchSink<'a> = dyn FnMut(&[usize], &[EvalImage]) -> Result<()> + 'a;

/// The captioning half of [`run`]: `sink(indices, images)` receives each batch's new images
/// (and their positions in `groups`) as soon as they are captioned, e.g. to write them out.
pub fn caption_groups(
    model: &Model,
    ds: &Dataset,
    groups: &[ImageGroup],
    opts: &EvalOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
    sink: &mut BatchSink,
) -> Result<Captioned> {
    if opts.batch_size == 0 {
        return Err(Error::InvalidArgument(
            "batch_size must be at least 1".into(),
        ));
    }
    opts.caption.params.validate()?;
    let t0 = Instant::now();
    let mut images: Vec<EvalImage> = Vec::with_capacity(groups.len());
    let mut indices: Vec<usize> = Vec::with_capacity(groups.len());
    let mut skipped: Vec<BadRow> = Vec::new();
    let mut timings = EvalTimings::default();
    let mut pending: Vec<(usize, SourceImage)> = Vec::with_capacity(opts.batch_size);
    let total = groups.len();
    let skip = |i: usize, e: &Error| BadRow {
        location: format!("image {} ({})", groups[i].id, ds.locate(&groups[i].image)),
        reason: e.to_string(),
    };
    let mut stream = ds.images(groups, opts.limits, opts.batch_size.max(8));
    let mut cancelled = false;
    loop {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            cancelled = true;
            break;
        }
        let item = stream.next().transpose()?;
        let end = item.is_none();
        match item {
            Some((i, Err(e))) => {
                skipped.push(skip(i, &e));
                progress(&Progress {
                    done: images.len(),
                    skipped: skipped.len(),
                    total,
                });
                continue;
            }
            Some((i, Ok(img))) => pending.push((i, img)),
            None => {}
        }
        if pending.len() == opts.batch_size || (end && !pending.is_empty()) {
            let batch = std::mem::take(&mut pending);
            let before = images.len();
            match caption_batch(
                model,
                groups,
                batch,
                opts,
                cancel,
                (&mut images, &mut indices),
                &mut skipped,
                &mut timings,
                &skip,
            ) {
                Err(Error::Cancelled) => {
                    cancelled = true;
                    break;
                }
                r => r?,
            }
            sink(&indices[before..], &images[before..])?;
            progress(&Progress {
                done: images.len(),
                skipped: skipped.len(),
                total,
            });
        }
        if end {
            break;
        }
    }
    timings.caption_s = t0.elapsed().as_secs_f64();
    if cancelled && images.is_empty() {
        return Err(Error::Cancelled);
    }
    Ok(Captioned {
        images,
        indices,
        skipped,
        timings,
        cancelled,
    })
}

#[allow(clippy::too_many_arguments)]
fn caption_batch(
    model: &Model,
    groups: &[ImageGroup],
    batch: Vec<(usize, SourceImage)>,
    opts: &EvalOptions,
    cancel: &AtomicBool,
    (images, indices): (&mut Vec<EvalImage>, &mut Vec<usize>),
    skipped: &mut Vec<BadRow>,
    timings: &mut EvalTimings,
    skip: &dyn Fn(usize, &Error) -> BadRow,
) -> Result<()> {
    let mut batch = batch;
    let mut none = |_: usize, _: &str| ControlFlow::Continue(());
    let caps = {
        let inputs: Vec<Vec<&SourceImage>> = batch.iter().map(|(_, im)| vec![im]).collect();
        model.caption(&inputs, &opts.caption, cancel, &mut none)
    };
    let caps = match caps {
        Ok(c) => c,
        // An image the processor rejects (prompt too long, degenerate size): find it, skip it,
        // caption the rest together.
        Err(Error::Image(_) | Error::Limit(_)) => {
            let mut keep = Vec::with_capacity(batch.len());
            for (i, im) in batch {
                match model.prepare(&[&im], &opts.caption) {
                    Ok(_) => keep.push((i, im)),
                    Err(e) => skipped.push(skip(i, &e)),
                }
            }
            batch = keep;
            if batch.is_empty() {
                return Ok(());
            }
            let inputs: Vec<Vec<&SourceImage>> = batch.iter().map(|(_, im)| vec![im]).collect();
            model.caption(&inputs, &opts.caption, cancel, &mut none)?
        }
        Err(e) => return Err(e),
    };
    if let Some(c) = caps.first() {
        timings.preprocess_s += c.timings.preprocess_s;
        timings.vision_s += c.timings.vision_s;
        timings.prefill_s += c.timings.prefill_s;
        timings.decode_s += c.timings.decode_s;
    }
    for ((i, im), c) in batch.iter().zip(caps) {
        let g = &groups[*i];
        timings.generated_tokens += c.token_ids.len();
        indices.push(*i);
        images.push(EvalImage {
            id: g.id.clone(),
            name: g.name.clone(),
            prediction: c.text.trim().to_string(),
            references: g.references.clone(),
            thumbnail: if opts.thumbnail_px > 0 {
                thumbnail_jpeg(im, opts.thumbnail_px).ok()
            } else {
                None
            },
        });
    }
    Ok(())
}

/// A JPEG (quality 80) of `img` scaled so its longest edge is at most `px`.
pub fn thumbnail_jpeg(img: &SourceImage, px: usize) -> Result<Vec<u8>> {
    let (w, h) = (img.width(), img.height());
    let scale = (px as f64 / w.max(h) as f64).min(1.0);
    let tw = ((w as f64 * scale).round() as usize).max(1);
    let th = ((h as f64 * scale).round() as usize).max(1);
    let rgb = img.to_rgb();
    let small = if (tw, th) == (w, h) {
        rgb.into_owned()
    } else {
        resize_u8(&rgb, w, h, 3, tw, th, Filter::Bicubic)?
    };
    let mut out = Vec::new();
    let enc = ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
    ::image::ImageEncoder::write_image(
        enc,
        &small,
        tw as u32,
        th as u32,
        ::image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| Error::Image(format!("thumbnail: {e}")))?;
    Ok(out)
}

/// `[{"image_id", "caption"}]`: the COCO results format (`smolcap score --cands`).
pub fn predictions_json(images: &[EvalImage]) -> Value {
    Value::Array(
        images
            .iter()
            .map(|i| json!({"image_id": i.id.to_json(), "caption": i.prediction}))
            .collect(),
    )
}

/// The references in the COCO captions annotation format (`smolcap score --refs`).
pub fn references_json(images: &[EvalImage], description: &str) -> Value {
    let mut anns = Vec::new();
    for im in images {
        for r in &im.references {
            anns.push(json!({"id": anns.len() + 1, "image_id": im.id.to_json(), "caption": r}));
        }
    }
    json!({
        "info": {"description": description},
        "licenses": [],
        "type": "captions",
        "images": images.iter().map(|i| json!({"id": i.id.to_json(), "file_name": i.name})).collect::<Vec<_>>(),
        "annotations": anns,
    })
}

/// `smolcap score --json`'s object for these scores plus a `"run"` member.
pub fn metrics_json(result: &EvalResult, run: &Value) -> Value {
    let ids: Vec<Value> = result.images.iter().map(|i| i.id.to_json()).collect();
    let mut v = crate::metrics::cli::scores_json(&ids, &result.scores);
    if let Value::Object(m) = &mut v {
        m.insert("run".into(), run.clone());
    }
    v
}

/// Subdirectory of an eval output directory that holds the files of the latest run.
pub const OUTPUT_SET_DIR: &str = "eval_outputs";

/// Writes `predictions.json`, `references.json`, `metrics.json` and `report.html` into `dir`
/// as one unit ([`crate::fsio::publish_set`]: built in `dir/eval_outputs` and swapped in with
/// one directory exchange; `dir/<file>` are symlinks into it), so a failure (a full disk) or a
/// kill never leaves this run's predictions beside an older run's report. `run` describes the
/// run (model, dataset, parameters, timings) for `metrics.json` and the report. Returns the
/// paths written.
pub fn write_outputs(dir: &Path, result: &EvalResult, run: &Value) -> Result<Vec<PathBuf>> {
    let description = run
        .get("dataset")
        .and_then(Value::as_str)
        .unwrap_or("smolcap eval");
    let pretty = |v: &Value| -> Result<Vec<u8>> {
        let mut s =
            serde_json::to_string_pretty(v).map_err(|e| Error::Internal(format!("JSON: {e}")))?;
        s.push('\n');
        Ok(s.into_bytes())
    };
    let files: [(&str, Vec<u8>); 4] = [
        (
            "predictions.json",
            pretty(&predictions_json(&result.images))?,
        ),
        (
            "references.json",
            pretty(&references_json(&result.images, description))?,
        ),
        ("metrics.json", pretty(&metrics_json(result, run))?),
        ("report.html", report::render(result, run).into_bytes()),
    ];
    crate::fsio::publish_set(dir, OUTPUT_SET_DIR, |tmp| {
        for (name, bytes) in &files {
            crate::fsio::write_file_synced(&tmp.join(name), bytes)?;
        }
        Ok(())
    })
}
