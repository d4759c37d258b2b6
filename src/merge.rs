//! Merging LoRA adapters into base weights: `W' = W + Σ s·scale·B·A` in f32, cast back to the
//! stored dtype, written as a complete HF model directory (atomically: temp dir, fsync, rename).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, View};

use crate::error::{Error, Result};
use crate::lora::peft::Adapter;
use crate::model::weights::{st_to_candle, Weights};

/// Files copied from the base directory besides the weights.
const COPIED: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
];

/// Merge settings.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Largest safetensors file written; above it the weights are sharded with an index.
    pub max_shard_bytes: u64,
    /// Replace an existing output directory.
    pub overwrite: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            max_shard_bytes: 5 * 1024 * 1024 * 1024,
            overwrite: false,
        }
    }
}

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeReport {
    /// Modules that received a LoRA update.
    pub merged_modules: usize,
    /// Modules replaced whole (`modules_to_save`).
    pub replaced_modules: usize,
    /// Tensors written.
    pub tensors: usize,
    /// Safetensors files written.
    pub shards: usize,
    /// Warnings for the user (e.g. an adapter trained on a 4-bit base).
    pub warnings: Vec<String>,
}

/// Loads an adapter for merging, validated against the base checkpoint's shapes.
pub fn load_adapter_for(base_dir: &Path, adapter_dir: &Path) -> Result<Adapter> {
    let w = Weights::open(base_dir, DType::F32, &Device::Cpu)?;
    Adapter::load_with_shapes(adapter_dir, &w.linear_shapes(), &Device::Cpu)
}

struct Out {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Out {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        d => return Err(Error::Internal(format!("cannot serialise dtype {d:?}"))),
    })
}

/// Merges `adapters` (each with its multiplier) into the model in `base_dir` and writes a
/// complete model directory to `out_dir`. `progress(done, total)` is called per tensor.
pub fn merge_save(
    base_dir: &Path,
    adapters: &[(&Adapter, f64)],
    out_dir: &Path,
    opts: &MergeOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<MergeReport> {
    if opts.max_shard_bytes == 0 {
        return Err(Error::InvalidArgument(
            "max_shard_bytes must be positive".into(),
        ));
    }
    crate::fsio::check_output_dir(out_dir)?;
    let base_c = std::fs::canonicalize(base_dir).map_err(|e| Error::io(base_dir, e))?;
    if let Ok(m) = std::fs::symlink_metadata(out_dir) {
        if !m.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "output directory {} exists and is not a directory",
                out_dir.display()
            )));
        }
    }
    if let Ok(out_c) = std::fs::canonicalize(out_dir) {
        // The base directory is the input: never write over it.
        if out_c == base_c {
            return Err(Error::InvalidArgument(format!(
                "output directory {} is the base model directory",
                out_dir.display()
            )));
        }
        if !opts.overwrite
            && std::fs::read_dir(out_dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        {
            return Err(Error::InvalidArgument(format!(
                "output directory {} exists and is not empty (use overwrite)",
                out_dir.display()
            )));
        }
    }
    let w = Weights::open(base_dir, DType::F32, &Device::Cpu)?;
    let mut report = MergeReport::default();
    let mut deltas: HashMap<String, Vec<(&Tensor, &Tensor, f64)>> = HashMap::new();
    let mut replace: HashMap<String, &Tensor> = HashMap::new();
    for (a, weight) in adapters {
        if !weight.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "adapter weight {weight} is not finite"
            )));
        }
        if a.config.trained_on_4bit {
            report.warnings.push(format!(
                "{}: trained on a 4-bit quantized base; merging into full-precision weights changes what the adapter was trained against",
                a.dir.display()
            ));
        }
        for m in &a.modules {
            deltas
                .entry(format!("{}.weight", m.name))
                .or_default()
                .push((&m.a, &m.b, m.scale * weight));
        }
        for (name, (wt, bias)) in &a.saved {
            replace.insert(format!("{name}.weight"), wt);
            if let Some(b) = bias {
                replace.insert(format!("{name}.bias"), b);
            }
        }
    }
    for k in deltas.keys().chain(replace.keys()) {
        if !w.contains(k) {
            return Err(Error::format(
                base_dir,
                format!("adapter targets {k}, which the base checkpoint lacks"),
            ));
        }
    }
    report.merged_modules = deltas.len();
    report.replaced_modules = replace.keys().filter(|k| k.ends_with(".weight")).count();

    crate::fsio::write_dir_atomic(out_dir, |tmp| {
        write_all(
            &w,
            &deltas,
            &replace,
            base_dir,
            tmp,
            opts,
            &mut report,
            progress,
        )
    })?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn write_all(
    w: &Weights,
    deltas: &HashMap<String, Vec<(&Tensor, &Tensor, f64)>>,
    replace: &HashMap<String, &Tensor>,
    base_dir: &Path,
    tmp: &Path,
    opts: &MergeOptions,
    report: &mut MergeReport,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let mut names: Vec<String> = w.names().map(String::from).collect();
    names.sort();
    let total = names.len();
    // Group tensors into shards by stored size.
    let mut shards: Vec<Vec<String>> = vec![Vec::new()];
    let mut size = 0u64;
    for n in &names {
        let len = w.byte_len(n)? as u64;
        if size > 0 && size + len > opts.max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = shards.last_mut() {
            last.push(n.clone());
        }
    }
    let n_shards = shards.len();
    let file_name = |i: usize| {
        if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n_shards)
        }
    };
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0u64;
    let mut done = 0;
    for (si, shard) in shards.iter().enumerate() {
        let mut outs: Vec<(String, Out)> = Vec::with_capacity(shard.len());
        for n in shard {
            let (dt, shape) = match (w.stored_dtype(n), w.shape(n)) {
                (Some(d), Some(s)) => (d, s),
                _ => return Err(Error::format(base_dir, format!("missing tensor {n}"))),
            };
            let data = if let Some(rep) = replace.get(n) {
                let target = st_to_candle(dt)
                    .filter(|d| d.is_float())
                    .ok_or_else(|| Error::Unsupported(format!("merge into {n} of dtype {dt:?}")))?;
                if rep.dims() != shape {
                    return Err(Error::format(
                        base_dir,
                        format!(
                            "modules_to_save tensor {n} has shape {:?}, base {shape:?}",
                            rep.dims()
                        ),
                    ));
                }
                let rep = rep.to_dtype(target)?;
                if !all_finite(&rep)? {
                    return Err(Error::format(
                        base_dir,
                        format!(
                            "modules_to_save tensor {n} has non-finite values in {}; \
                             nothing was written",
                            target.as_str()
                        ),
                    ));
                }
                tensor_bytes(&rep)?
            } else if let Some(ds) = deltas.get(n) {
                let target = st_to_candle(dt)
                    .filter(|d| d.is_float())
                    .ok_or_else(|| Error::Unsupported(format!("merge into {n} of dtype {dt:?}")))?;
                let base = w.get_as(n, DType::F32)?;
                let mut acc = base.clone();
                for (a, b, s) in ds {
                    let d = b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)?;
                    acc = (acc + (d * *s)?)?;
                }
                let merged = acc.to_dtype(target)?;
                // A finite but huge scale overflows the stored dtype: refuse rather than write
                // infinite weights (a base that was already non-finite is left as it is).
                if !all_finite(&merged)? && all_finite(&base)? {
                    return Err(Error::InvalidArgument(format!(
                        "merging into {n} gives non-finite weights in {} (the adapter scale \
                         x B·A overflows); nothing was written",
                        target.as_str()
                    )));
                }
                tensor_bytes(&merged)?
            } else {
                w.raw(n)?.2
            };
            total_size += data.len() as u64;
            weight_map.insert(n.clone(), file_name(si));
            outs.push((
                n.clone(),
                Out {
                    dtype: dt,
                    shape: shape.to_vec(),
                    data,
                },
            ));
            done += 1;
            progress(done, total);
        }
        let path = tmp.join(file_name(si));
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        let views: Vec<(&str, &Out)> = outs.iter().map(|(n, o)| (n.as_str(), o)).collect();
        safetensors::serialize_to_file(views, Some(meta), &path)
            .map_err(|e| Error::io(&path, std::io::Error::other(e.to_string())))?;
        crate::fsio::fsync_file(&path)?;
        report.tensors += outs.len();
    }
    report.shards = n_shards;
    if n_shards > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
        crate::fsio::write_file_synced(
            &tmp.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index)
                .unwrap_or_default()
                .as_bytes(),
        )?;
    }
    for f in COPIED {
        let src = base_dir.join(f);
        if crate::fsio::regular_file_exists(&src)? {
            let bytes = crate::fsio::read_limited(&src, crate::fsio::MAX_TOKENIZER_BYTES)?;
            crate::fsio::write_file_synced(&tmp.join(f), &bytes)?;
        }
    }
    Ok(())
}
/// Whether every element of `t` is finite.
fn all_finite(t: &Tensor) -> Result<bool> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}
