//! `Trainer`: LoRA / QLoRA fine-tuning steps, evaluation and saving.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use smolcap::processor::image::DecodeLimits;
use smolcap::train::{CollateOptions, Example, LoraOptions, ModelRef, TrainOptions};

use crate::errors::{invalid, to_pyerr};
use crate::images::{pending, Pending};
use crate::model::Model;
use crate::run_detached;

/// A LoRA fine-tuning run over a loaded model (one optimizer step per `step` call).
#[pyclass(frozen, module = "smolcap._smolcap")]
pub struct Trainer {
    inner: Mutex<smolcap::train::Trainer>,
    limits: DecodeLimits,
}

/// `[(image, caption), ...]` to pending examples (decoded later, off the GIL).
fn batch(items: &Bound<'_, PyAny>, lim: &DecodeLimits) -> PyResult<Vec<(Pending, String)>> {
    let mut out = Vec::new();
    for item in items.try_iter()? {
        let item = item?;
        let t = item
            .cast::<PyTuple>()
            .map_err(|_| invalid("a training example is an (image, caption) pair"))?;
        if t.len() != 2 {
            return Err(invalid("a training example is an (image, caption) pair"));
        }
        out.push((pending(&t.get_item(0)?, lim)?, t.get_item(1)?.extract()?));
    }
    if out.is_empty() {
        return Err(invalid("empty batch"));
    }
    Ok(out)
}

fn examples(b: Vec<(Pending, String)>, lim: &DecodeLimits) -> smolcap::Result<Vec<Example>> {
    b.into_iter()
        .map(|(p, c)| Ok(Example::new(p.load(lim)?, c)))
        .collect()
}

#[pymethods]
impl Trainer {
    /// A new run with fresh LoRA factors (or those of `init_adapter`).
    #[new]
    #[pyo3(signature = (model, *, r=16, alpha=32.0, dropout=0.05, use_rslora=false, targets=None,
                        train_vision=false, train_connector=false, lr=1e-4, weight_decay=0.0,
                        warmup_ratio=0.0, total_steps=1, max_grad_norm=1.0, micro_batch=1,
                        seed=42, qlora=false, gradient_checkpointing=false, prompt=None,
                        longest_edge=None, max_seq_len=2048, init_adapter=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: &Model,
        r: usize,
        alpha: f64,
        dropout: f32,
        use_rslora: bool,
        targets: Option<Vec<String>>,
        train_vision: bool,
        train_connector: bool,
        lr: f64,
        weight_decay: f64,
        warmup_ratio: f64,
        total_steps: u64,
        max_grad_norm: f64,
        micro_batch: usize,
        seed: u64,
        qlora: bool,
        gradient_checkpointing: bool,
        prompt: Option<String>,
        longest_edge: Option<u32>,
        max_seq_len: usize,
        init_adapter: Option<PathBuf>,
    ) -> PyResult<Self> {
        let mut lora = LoraOptions {
            r,
            alpha,
            dropout,
            use_rslora,
            train_vision,
            train_connector,
            ..LoraOptions::default()
        };
        if let Some(t) = targets {
            lora.targets = t;
        }
        let opts = TrainOptions {
            lr,
            weight_decay,
            warmup_ratio,
            total_steps,
            max_grad_norm,
            micro_batch,
            seed,
            qlora,
            recompute: gradient_checkpointing,
            collate: CollateOptions {
                prompt: prompt.unwrap_or_else(|| smolcap::session::DEFAULT_PROMPT.to_string()),
                longest_edge,
                max_seq_len,
            },
            ..TrainOptions::default()
        };
        let m: Arc<dyn ModelRef> = model.inner.clone();
        let cancel = AtomicBool::new(false);
        let t = run_detached(py, &cancel, || {
            smolcap::train::Trainer::new(m, lora, opts, init_adapter.as_deref())
        })?;
        Ok(Self {
            inner: Mutex::new(t),
            limits: DecodeLimits::default(),
        })
    }

    /// One optimizer step over `batch` (`[(image, caption), ...]`); returns its statistics.
    fn step(&self, py: Python<'_>, batch: &Bound<'_, PyAny>) -> PyResult<Py<PyDict>> {
        let b = self::batch(batch, &self.limits)?;
        let lim = self.limits;
        let flag = Arc::new(AtomicBool::new(false));
        let st = run_detached(py, &flag.clone(), || {
            let mut t = self
                .inner
                .lock()
                .map_err(|_| smolcap::Error::Internal("trainer poisoned by a panic".into()))?;
            t.set_cancel_flag(flag);
            let ex = examples(b, &lim)?;
            t.step(&ex)
        })?;
        let d = PyDict::new(py);
        d.set_item("step", st.step)?;
        d.set_item("loss", st.loss)?;
        d.set_item("grad_norm", st.grad_norm)?;
        d.set_item("lr", st.lr)?;
        d.set_item("tokens", st.tokens)?;
        d.set_item("examples", st.examples)?;
        d.set_item("rejected", st.rejected)?;
        d.set_item("truncated", st.truncated)?;
        d.set_item("skipped", st.skipped)?;
        Ok(d.unbind())
    }

    /// Token-mean loss of `batch` (`[(image, caption), ...]`) without training; returns
    /// `(loss, tokens)`.
    fn evaluate(&self, py: Python<'_>, batch: &Bound<'_, PyAny>) -> PyResult<(f64, usize)> {
        let b = self::batch(batch, &self.limits)?;
        let lim = self.limits;
        let cancel = AtomicBool::new(false);
        run_detached(py, &cancel, || {
            let t = self
                .inner
                .lock()
                .map_err(|_| smolcap::Error::Internal("trainer poisoned by a panic".into()))?;
            t.eval(&examples(b, &lim)?)
        })
    }

    /// Writes the trained factors as a PEFT adapter directory.
    fn save_adapter(&self, py: Python<'_>, dir: PathBuf) -> PyResult<()> {
        let cancel = AtomicBool::new(false);
        run_detached(py, &cancel, || {
            self.inner
                .lock()
                .map_err(|_| smolcap::Error::Internal("trainer poisoned by a panic".into()))?
                .save_adapter(&dir)
        })
    }

    /// Writes a checkpoint that `Trainer.resume` continues exactly; `data_state` is any
    /// JSON-serialisable value stored with it (e.g. your data loader's position).
    #[pyo3(signature = (dir, data_state=None))]
    fn save_checkpoint(
        &self,
        py: Python<'_>,
        dir: PathBuf,
        data_state: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let state: serde_json::Value = match data_state {
            Some(v) if !v.is_none() => {
                let s: String = py.import("json")?.call_method1("dumps", (v,))?.extract()?;
                serde_json::from_str(&s).map_err(|e| invalid(format!("data_state: {e}")))?
            }
            _ => serde_json::Value::Null,
        };
        let cancel = AtomicBool::new(false);
        run_detached(py, &cancel, || {
            self.inner
                .lock()
                .map_err(|_| smolcap::Error::Internal("trainer poisoned by a panic".into()))?
                .save_checkpoint(&dir, &state)
        })
    }

    /// Continues a run from a checkpoint directory; returns `(trainer, data_state)`.
    #[staticmethod]
    fn resume(py: Python<'_>, model: &Model, dir: PathBuf) -> PyResult<(Self, Py<PyAny>)> {
        let m: Arc<dyn ModelRef> = model.inner.clone();
        let cancel = AtomicBool::new(false);
        let (t, state) = run_detached(py, &cancel, || smolcap::train::Trainer::resume(m, &dir))?;
        let state = py
            .import("json")?
            .call_method1("loads", (state.to_string(),))?
            .unbind();
        Ok((
            Self {
                inner: Mutex::new(t),
                limits: DecodeLimits::default(),
            },
            state,
        ))
    }

    /// Optimizer steps taken.
    #[getter]
    fn step_count(&self) -> PyResult<u64> {
        Ok(self
            .inner
            .lock()
            .map_err(|_| to_pyerr(smolcap::Error::Internal("trainer poisoned".into())))?
            .step_count())
    }

    /// Trainable scalars.
    #[getter]
    fn trainable_parameters(&self) -> PyResult<usize> {
        Ok(self
            .inner
            .lock()
            .map_err(|_| to_pyerr(smolcap::Error::Internal("trainer poisoned".into())))?
            .trainable_parameters())
    }
}
