//! Module functions: corpus metrics, adapter merging and the CLI's shard split.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use smolcap::metrics::Suite;

use crate::errors::{invalid, to_pyerr};
use crate::run_detached;

/// Scores `cands[i]` against the references `refs[i]` with the seed's metrics (`suite="seed"`)
/// or pycocoevalcap's (`suite="coco"`). Returns `{"suite", "images", "corpus": {metric:
/// value}, "per_image": {metric: [value per image]}}`.
#[pyfunction]
#[pyo3(signature = (refs, cands, suite="seed"))]
pub fn score(
    py: Python<'_>,
    refs: Vec<Vec<String>>,
    cands: Vec<String>,
    suite: &str,
) -> PyResult<Py<PyDict>> {
    let suite: Suite = suite
        .parse()
        .map_err(|e: smolcap::metrics::MetricsError| to_pyerr(e.into()))?;
    let cancel = AtomicBool::new(false);
    let s = run_detached(py, &cancel, || {
        smolcap::metrics::score(&cands, &refs, suite).map_err(smolcap::Error::from)
    })?;
    let d = PyDict::new(py);
    d.set_item("suite", suite.name())?;
    d.set_item("images", s.len())?;
    let corpus = PyDict::new(py);
    for (k, v) in &s.corpus {
        corpus.set_item(k, v)?;
    }
    d.set_item("corpus", corpus)?;
    let per = PyDict::new(py);
    for (k, v) in &s.per_image {
        per.set_item(k, PyList::new(py, v)?)?;
    }
    d.set_item("per_image", per)?;
    Ok(d.unbind())
}

/// Merges LoRA adapters (`[path, (path, scale), ...]`) into the base model in `base` and writes
/// a complete model directory to `save_dir`. Returns the merge report as a dict.
#[pyfunction]
#[pyo3(signature = (base, adapters, save_dir, *, max_shard_bytes=5 * 1024 * 1024 * 1024, overwrite=false, revision=None))]
pub fn merge(
    py: Python<'_>,
    base: PathBuf,
    adapters: &Bound<'_, PyAny>,
    save_dir: PathBuf,
    max_shard_bytes: u64,
    overwrite: bool,
    revision: Option<String>,
) -> PyResult<Py<PyDict>> {
    let mut list: Vec<(PathBuf, f64)> = Vec::new();
    for item in adapters.try_iter()? {
        let item = item?;
        if let Ok((p, w)) = item.extract::<(PathBuf, f64)>() {
            list.push((p, w));
        } else {
            list.push((item.extract::<PathBuf>()?, 1.0));
        }
    }
    if list.is_empty() {
        return Err(invalid("merge needs at least one adapter"));
    }
    let cancel = AtomicBool::new(false);
    let report = run_detached(py, &cancel, || {
        let base = smolcap::hub::resolve(&base.to_string_lossy(), revision.as_deref())?;
        let mut loaded = Vec::with_capacity(list.len());
        for (dir, w) in &list {
            if !w.is_finite() {
                return Err(smolcap::Error::InvalidArgument(format!(
                    "adapter {}: scale must be finite",
                    dir.display()
                )));
            }
            loaded.push((smolcap::merge::load_adapter_for(&base, dir)?, *w));
        }
        let refs: Vec<(&smolcap::lora::peft::Adapter, f64)> =
            loaded.iter().map(|(a, w)| (a, *w)).collect();
        let opts = smolcap::merge::MergeOptions {
            max_shard_bytes,
            overwrite,
        };
        smolcap::merge::merge_save(&base, &refs, &save_dir, &opts, &mut |_, _| {})
    })?;
    let d = PyDict::new(py);
    d.set_item("merged_modules", report.merged_modules)?;
    d.set_item("replaced_modules", report.replaced_modules)?;
    d.set_item("tensors", report.tensors)?;
    d.set_item("shards", report.shards)?;
    d.set_item("warnings", report.warnings)?;
    Ok(d.unbind())
}

/// The `(start, stop)` index range of `items` that shard `shard` ("I/N") gets: the same
/// contiguous split as the CLI's `--shard I/N`.
#[pyfunction]
pub fn shard_of(items: usize, shard: &str) -> PyResult<(usize, usize)> {
    let s: smolcap::shard::Shard = shard.parse().map_err(to_pyerr)?;
    let r = s.range(items);
    Ok((r.start, r.end))
}
