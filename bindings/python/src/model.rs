//! `Model`: loading, captioning (batched and streamed) and caption scoring.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use pyo3::conversion::FromPyObjectOwned;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use smolcap::generate::{BeamParams, EarlyStopping, GenerateParams, SampleParams, Strategy};
use smolcap::lora::peft::Adapter;
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::processor::PromptMode;
use smolcap::{ActiveAdapter, CaptionOptions, LoadOptions};

use crate::errors::{invalid, panic_err, to_pyerr};
use crate::images::{pending, Pending};
use crate::run_detached;

/// A loaded model; immutable, so several threads may caption with it at once.
#[pyclass(frozen, module = "smolcap._smolcap")]
pub struct Model {
    pub(crate) inner: Arc<smolcap::Model>,
    limits: DecodeLimits,
    /// Adapters loaded so far, by directory.
    adapters: Mutex<HashMap<PathBuf, Arc<Adapter>>>,
}

/// One caption and how it was made.
#[pyclass(frozen, get_all, module = "smolcap._smolcap")]
#[derive(Clone)]
pub struct Caption {
    /// The decoded text (special tokens removed), as the CLI's `--json` prints it.
    pub text: String,
    /// Generated token ids (a final stop token included).
    pub token_ids: Vec<u32>,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Image tiles encoded.
    pub num_tiles: usize,
    /// Seconds decoding, resizing and tokenizing (for the whole batch).
    pub preprocess_s: f64,
    /// Seconds in the vision tower and connector (for the whole batch).
    pub vision_s: f64,
    /// Seconds in the prompt forward pass (for the whole batch).
    pub prefill_s: f64,
    /// Seconds generating after the first token (for the whole batch).
    pub decode_s: f64,
}

#[pymethods]
impl Caption {
    fn __str__(&self) -> String {
        self.text.trim().to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "Caption(text={:?}, tokens={}, prompt_tokens={}, num_tiles={})",
            self.text,
            self.token_ids.len(),
            self.prompt_tokens,
            self.num_tiles
        )
    }
}

impl From<smolcap::Caption> for Caption {
    fn from(c: smolcap::Caption) -> Self {
        Self {
            text: c.text,
            token_ids: c.token_ids,
            prompt_tokens: c.prompt_tokens,
            num_tiles: c.num_tiles,
            preprocess_s: c.timings.preprocess_s,
            vision_s: c.timings.vision_s,
            prefill_s: c.timings.prefill_s,
            decode_s: c.timings.decode_s,
        }
    }
}

/// Negative log-likelihood of a caption given an image and prompt.
#[pyclass(frozen, get_all, module = "smolcap._smolcap")]
pub struct CaptionNll {
    /// Sum of -log p over the caption's tokens and the stop token.
    pub total: f64,
    /// `total / tokens`.
    pub mean: f64,
    /// Tokens scored (stop token included).
    pub tokens: usize,
}

#[pymethods]
impl CaptionNll {
    fn __repr__(&self) -> String {
        format!(
            "CaptionNll(total={}, mean={}, tokens={})",
            self.total, self.mean, self.tokens
        )
    }
}

/// Keyword arguments of caption / caption_stream / score_caption, parsed.
struct Settings {
    opts: CaptionOptions,
    adapters: Vec<(PathBuf, f32)>,
    batch_size: usize,
}

const CAPTION_KEYS: &[&str] = &[
    "max_new_tokens",
    "min_new_tokens",
    "num_beams",
    "length_penalty",
    "early_stopping",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "repetition_penalty",
    "adapters",
    "batch_size",
    "longest_edge",
    "raw_prompt",
    "max_prompt_tokens",
    "max_kv_cache_bytes",
    "max_batch",
];
const SCORE_KEYS: &[&str] = &[
    "adapters",
    "longest_edge",
    "raw_prompt",
    "max_prompt_tokens",
];

fn kw<'py, T: FromPyObjectOwned<'py>>(
    d: Option<&Bound<'py, PyDict>>,
    key: &str,
    default: T,
) -> PyResult<T> {
    match d.map(|d| d.get_item(key)).transpose()?.flatten() {
        Some(v) if !v.is_none() => v.extract::<T>().map_err(|e| {
            let e: PyErr = e.into();
            PyTypeError::new_err(format!("{key}: {e}"))
        }),
        _ => Ok(default),
    }
}

/// `adapters=[path, (path, scale), ...]`.
fn adapter_list(v: Option<Bound<'_, PyAny>>) -> PyResult<Vec<(PathBuf, f32)>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in v.try_iter()? {
        let item = item?;
        if let Ok(t) = item.cast::<PyTuple>() {
            if t.len() != 2 {
                return Err(invalid("an adapter is a path or a (path, scale) pair"));
            }
            out.push((t.get_item(0)?.extract()?, t.get_item(1)?.extract()?));
        } else {
            out.push((item.extract()?, 1.0));
        }
    }
    Ok(out)
}

fn settings(
    prompt: Option<String>,
    d: Option<&Bound<'_, PyDict>>,
    allowed: &[&str],
) -> PyResult<Settings> {
    if let Some(d) = d {
        for k in d.keys() {
            let k: String = k.extract()?;
            if !allowed.contains(&k.as_str()) {
                return Err(PyTypeError::new_err(format!(
                    "unexpected keyword argument {k:?}"
                )));
            }
        }
    }
    let num_beams: usize = kw(d, "num_beams", 1)?;
    let temperature: f32 = kw(d, "temperature", 0.0)?;
    let strategy = if num_beams > 1 {
        Strategy::Beam(BeamParams {
            num_beams,
            length_penalty: kw(d, "length_penalty", 1.0)?,
            early_stopping: if kw(d, "early_stopping", false)? {
                EarlyStopping::True
            } else {
                EarlyStopping::Heuristic
            },
        })
    } else if temperature > 0.0 {
        Strategy::Sample {
            params: SampleParams {
                temperature,
                top_k: kw(d, "top_k", 0)?,
                top_p: kw(d, "top_p", 1.0)?,
            },
            seed: kw(d, "seed", 0)?,
        }
    } else {
        Strategy::Greedy
    };
    let mut opts = CaptionOptions {
        prompt: prompt.unwrap_or_else(|| smolcap::session::DEFAULT_PROMPT.to_string()),
        mode: if kw(d, "raw_prompt", false)? {
            PromptMode::Raw
        } else {
            PromptMode::Chat
        },
        longest_edge: kw(d, "longest_edge", None)?,
        max_prompt_tokens: kw(
            d,
            "max_prompt_tokens",
            smolcap::session::DEFAULT_MAX_PROMPT_TOKENS,
        )?,
        max_kv_cache_bytes: kw(
            d,
            "max_kv_cache_bytes",
            smolcap::session::DEFAULT_MAX_KV_CACHE_BYTES,
        )?,
        max_batch: kw(d, "max_batch", smolcap::session::DEFAULT_MAX_BATCH)?,
        ..Default::default()
    };
    opts.params = GenerateParams {
        max_new_tokens: kw(d, "max_new_tokens", 48)?,
        strategy,
        repetition_penalty: kw(d, "repetition_penalty", 1.0)?,
        min_new_tokens: kw(d, "min_new_tokens", 0)?,
    };
    opts.params.validate().map_err(to_pyerr)?;
    let batch_size: usize = kw(d, "batch_size", 1)?;
    if batch_size == 0 {
        return Err(invalid("batch_size must be at least 1"));
    }
    let adapters = adapter_list(d.map(|d| d.get_item("adapters")).transpose()?.flatten())?;
    for (p, w) in &adapters {
        if !w.is_finite() {
            return Err(invalid(format!(
                "adapter {}: scale must be finite",
                p.display()
            )));
        }
    }
    Ok(Settings {
        opts,
        adapters,
        batch_size,
    })
}

/// A list/tuple of images, or one image (then `single` is true).
fn image_inputs(images: &Bound<'_, PyAny>, lim: &DecodeLimits) -> PyResult<(Vec<Pending>, bool)> {
    if images.is_instance_of::<PyList>() || images.is_instance_of::<PyTuple>() {
        let v = images
            .try_iter()?
            .map(|o| pending(&o?, lim))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((v, false))
    } else {
        Ok((vec![pending(images, lim)?], true))
    }
}

impl Model {
    /// The adapters of `list`, loaded once per directory and then reused.
    fn active_adapters(&self, list: &[(PathBuf, f32)]) -> smolcap::Result<Vec<ActiveAdapter>> {
        let mut out = Vec::with_capacity(list.len());
        for (dir, weight) in list {
            let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            let cached = self
                .adapters
                .lock()
                .map_err(|_| smolcap::Error::Internal("adapter cache poisoned".into()))?
                .get(&key)
                .cloned();
            let adapter = match cached {
                Some(a) => a,
                None => {
                    let a = Arc::new(self.inner.load_adapter(dir).map_err(|e| match e {
                        smolcap::Error::Format { path, msg } => smolcap::Error::Format {
                            path,
                            msg: format!("adapter {}: {msg}", dir.display()),
                        },
                        other => other,
                    })?);
                    if let Ok(mut m) = self.adapters.lock() {
                        m.insert(key, a.clone());
                    }
                    a
                }
            };
            out.push(ActiveAdapter {
                adapter,
                weight: *weight,
            });
        }
        Ok(out)
    }
}

/// Captions `inputs` in batches of `batch_size`, checking `cancel` between batches.
fn caption_all(
    model: &smolcap::Model,
    inputs: Vec<Pending>,
    s: &Settings,
    lim: &DecodeLimits,
    cancel: &AtomicBool,
    on_piece: &mut dyn FnMut(usize, &str) -> ControlFlow<()>,
) -> smolcap::Result<Vec<smolcap::Caption>> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut it = inputs.into_iter().peekable();
    while it.peek().is_some() {
        if cancel.load(Ordering::Relaxed) {
            return Err(smolcap::Error::Cancelled);
        }
        let imgs: Vec<SourceImage> = it
            .by_ref()
            .take(s.batch_size)
            .map(|p| p.load(lim))
            .collect::<smolcap::Result<_>>()?;
        let batch: Vec<Vec<&SourceImage>> = imgs.iter().map(|i| vec![i]).collect();
        let base = out.len();
        let caps = model.caption(&batch, &s.opts, cancel, &mut |i, p| on_piece(base + i, p))?;
        out.extend(caps);
    }
    Ok(out)
}

#[pymethods]
impl Model {
    /// Loads a model directory (HF layout), a GGUF pair (`FILE.gguf` with `mmproj`, or a
    /// directory holding both) or a hub repo id.
    #[staticmethod]
    #[pyo3(signature = (path, *, device="cpu", dtype="f32", revision=None, quantize=None,
                        mmproj=None, max_image_pixels=64 * 1024 * 1024,
                        max_image_bytes=64 * 1024 * 1024))]
    #[allow(clippy::too_many_arguments)]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        dtype: &str,
        revision: Option<String>,
        quantize: Option<String>,
        mmproj: Option<PathBuf>,
        max_image_pixels: u64,
        max_image_bytes: u64,
    ) -> PyResult<Self> {
        let quantize = smolcap::quant::QuantSpec::parse(quantize.as_deref().unwrap_or(""))
            .map_err(to_pyerr)?;
        let opts = LoadOptions {
            dtype: Some(smolcap::device::parse_dtype(dtype).map_err(to_pyerr)?),
            device: smolcap::device::parse_device(device).map_err(to_pyerr)?,
            revision,
            quantize,
            mmproj,
            ..Default::default()
        };
        let spec = path.to_string_lossy().into_owned();
        let cancel = AtomicBool::new(false);
        let inner = run_detached(py, &cancel, || smolcap::Model::load(&spec, &opts))?;
        Ok(Self {
            inner: Arc::new(inner),
            limits: DecodeLimits {
                max_pixels: max_image_pixels,
                max_encoded_bytes: max_image_bytes,
            },
            adapters: Mutex::new(HashMap::new()),
        })
    }

    /// The model directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.dir().to_path_buf()
    }

    /// Captions one image (returns a `Caption`) or a list of images (returns a list).
    #[pyo3(signature = (images, prompt=None, **kwargs))]
    fn caption(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        prompt: Option<String>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let mut s = settings(prompt, kwargs, CAPTION_KEYS)?;
        let (inputs, single) = image_inputs(images, &self.limits)?;
        let cancel = AtomicBool::new(false);
        let lim = self.limits;
        let caps = run_detached(py, &cancel, || {
            s.opts.adapters = self.active_adapters(&s.adapters)?;
            caption_all(&self.inner, inputs, &s, &lim, &cancel, &mut |_, _| {
                ControlFlow::Continue(())
            })
        })?;
        let mut caps: Vec<Caption> = caps.into_iter().map(Caption::from).collect();
        if single {
            let c = caps.pop().ok_or_else(|| invalid("no caption"))?;
            Ok(Py::new(py, c)?.into_any())
        } else {
            let l = PyList::empty(py);
            for c in caps {
                l.append(Py::new(py, c)?)?;
            }
            Ok(l.into_any().unbind())
        }
    }

    /// Streams caption text as it is generated: an iterator of text pieces for one image, of
    /// `(index, piece)` pairs for a list. Closing or dropping it cancels the captioning.
    #[pyo3(signature = (images, prompt=None, **kwargs))]
    fn caption_stream(
        &self,
        images: &Bound<'_, PyAny>,
        prompt: Option<String>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<CaptionStream> {
        let mut s = settings(prompt, kwargs, CAPTION_KEYS)?;
        let (inputs, single) = image_inputs(images, &self.limits)?;
        s.opts.adapters = images
            .py()
            .detach(|| self.active_adapters(&s.adapters))
            .map_err(to_pyerr)?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Event>();
        let model = self.inner.clone();
        let lim = self.limits;
        let flag = cancel.clone();
        let handle = std::thread::spawn(move || {
            let tx2 = tx.clone();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                caption_all(&model, inputs, &s, &lim, &flag, &mut |i, p| {
                    let _ = tx2.send(Event::Piece(i, p.to_string()));
                    ControlFlow::Continue(())
                })
            }));
            let _ = tx.send(Event::Done(
                r.map_err(|p| crate::errors::panic_message(&*p)),
            ));
        });
        Ok(CaptionStream {
            rx: Mutex::new(Some(rx)),
            cancel,
            handle: Mutex::new(Some(handle)),
            single,
            captions: Mutex::new(None),
        })
    }

    /// Negative log-likelihood of `caption` as the answer to the prompt about `image`.
    #[pyo3(signature = (image, caption, prompt=None, **kwargs))]
    fn score_caption(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        caption: String,
        prompt: Option<String>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<CaptionNll> {
        let mut s = settings(prompt, kwargs, SCORE_KEYS)?;
        let p = pending(image, &self.limits)?;
        let lim = self.limits;
        let cancel = AtomicBool::new(false);
        let nll = run_detached(py, &cancel, || {
            s.opts.adapters = self.active_adapters(&s.adapters)?;
            let img = p.load(&lim)?;
            self.inner.caption_nll(&[&img], &s.opts, &caption)
        })?;
        Ok(CaptionNll {
            total: nll.total,
            mean: nll.mean,
            tokens: nll.tokens,
        })
    }

    fn __repr__(&self) -> String {
        format!("Model({:?})", self.inner.dir().display().to_string())
    }
}

/// What the streaming worker sends.
enum Event {
    Piece(usize, String),
    Done(Result<smolcap::Result<Vec<smolcap::Caption>>, String>),
}

/// Iterator over streamed caption pieces; `captions` holds the finished captions at the end.
#[pyclass(module = "smolcap._smolcap")]
pub struct CaptionStream {
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
    cancel: Arc<AtomicBool>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
    single: bool,
    captions: Mutex<Option<Vec<Caption>>>,
}

impl CaptionStream {
    fn finish(&self, py: Python<'_>) {
        self.cancel.store(true, Ordering::Relaxed);
        let h = self.handle.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = h {
            py.detach(|| {
                let _ = h.join();
            });
        }
        if let Ok(mut rx) = self.rx.lock() {
            rx.take();
        }
    }
}

#[pymethods]
impl CaptionStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        loop {
            // Checked on every call, not only when the wait times out: a consumer such as
            // `list(stream)` runs no bytecode between pieces, so Python's own handler would not
            // see Ctrl-C until the whole caption had streamed.
            if let Err(e) = py.check_signals() {
                self.finish(py);
                return Err(e);
            }
            let taken = self
                .rx
                .lock()
                .map_err(|_| invalid("stream lock poisoned"))?
                .take();
            let Some(rx) = taken else {
                return Ok(None);
            };
            // The receiver moves in and out: it may not be shared across threads.
            let (rx, ev) = py.detach(move || {
                let ev = rx.recv_timeout(crate::SIGNAL_POLL);
                (rx, ev)
            });
            if let Ok(mut g) = self.rx.lock() {
                *g = Some(rx);
            }
            match ev {
                Ok(Event::Piece(i, p)) => {
                    return Ok(Some(if self.single {
                        p.into_pyobject(py)?.into_any().unbind()
                    } else {
                        (i, p).into_pyobject(py)?.into_any().unbind()
                    }))
                }
                Ok(Event::Done(r)) => {
                    self.finish(py);
                    return match r {
                        Ok(Ok(caps)) => {
                            if let Ok(mut c) = self.captions.lock() {
                                *c = Some(caps.into_iter().map(Caption::from).collect());
                            }
                            Ok(None)
                        }
                        Ok(Err(e)) => Err(to_pyerr(e)),
                        Err(msg) => Err(panic_err(&msg)),
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.finish(py);
                    return Ok(None);
                }
            }
        }
    }

    /// Stops the captioning (if still running) and waits for it.
    fn close(&self, py: Python<'_>) {
        self.finish(py);
    }

    /// The finished captions (a list), once the iterator is exhausted; None before.
    #[getter]
    fn captions(&self) -> Option<Vec<Caption>> {
        self.captions.lock().ok().and_then(|c| c.clone())
    }
}

impl Drop for CaptionStream {
    fn drop(&mut self) {
        // The worker sees the flag at its next step and ends on its own.
        self.cancel.store(true, Ordering::Relaxed);
    }
}
