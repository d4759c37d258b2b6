//! Safetensors checkpoints (single file or sharded with an index), memory-mapped and validated.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, TensorInfo};

use crate::error::{Error, Result};

/// One mapped safetensors file with its parsed header.
struct Shard {
    path: PathBuf,
    file: File,
    map: Mmap,
    header_len: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// The tensors of a checkpoint, loaded on demand into the compute dtype.
pub struct Weights {
    shards: Vec<Shard>,
    /// tensor name -> shard index
    index: HashMap<String, usize>,
    dtype: DType,
    device: Device,
}

impl Weights {
    /// Opens `model.safetensors` or `model.safetensors.index.json` in `dir`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.is_file() {
            shard_files(&index_path)?
        } else {
            for pickle in [
                "pytorch_model.bin",
                "pytorch_model.bin.index.json",
                "model.pt",
            ] {
                if dir.join(pickle).exists() {
                    return Err(Error::Unsupported(format!(
                        "{}: pickle checkpoints are not loaded (they can execute code); convert it to safetensors",
                        dir.join(pickle).display()
                    )));
                }
            }
            return Err(Error::format(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        };
        Self::from_files(&files, dtype, device)
    }

    /// Maps and validates the given safetensors files.
    pub fn from_files(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the map is read-only and never written; the header check below verifies
            // the file length covers every tensor, so reads stay inside the mapping.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map)
                .map_err(|e| Error::format(path, format!("invalid safetensors file: {e}")))?;
            let tensors: HashMap<String, TensorInfo> = meta
                .tensors()
                .into_iter()
                .map(|(k, v)| (k, v.clone()))
                .collect();
            for name in tensors.keys() {
                if let Some(prev) = index.insert(name.clone(), i) {
                    return Err(Error::format(
                        path,
                        format!("tensor {name} also present in {}", files[prev].display()),
                    ));
                }
            }
            shards.push(Shard {
                path: path.clone(),
                file,
                map,
                header_len,
                tensors,
            });
        }
        Ok(Self {
            shards,
            index,
            dtype,
            device: device.clone(),
        })
    }

    /// The compute dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are placed on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The stored dtype of the checkpoint's first floating tensor (what `merge` writes back).
    pub fn stored_float_dtype(&self) -> Option<DType> {
        self.shards
            .iter()
            .flat_map(|s| s.tensors.values())
            .find_map(|t| st_to_candle(t.dtype).filter(|d| d.is_float()))
    }

    /// The shard holding `name` and its header entry; a missing tensor is an error naming it.
    fn locate(&self, name: &str) -> Result<(&Shard, &TensorInfo)> {
        let Some(&si) = self.index.get(name) else {
            let first = self
                .shards
                .first()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            return Err(Error::format(first, format!("missing tensor {name}")));
        };
        let shard = &self.shards[si];
        Ok((shard, &shard.tensors[name]))
    }

    /// Stored shape of `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        let si = *self.index.get(name)?;
        Some(self.shards[si].tensors[name].shape.as_slice())
    }

    /// The stored dtype, shape and bytes of `name`, untouched (for copying into a new file).
    pub fn raw(&self, name: &str) -> Result<(StDtype, &[usize], &[u8])> {
        let (shard, info) = self.locate(name)?;
        let start = 8 + shard.header_len + info.data_offsets.0;
        let end = 8 + shard.header_len + info.data_offsets.1;
        let bytes = shard.map.get(start..end).ok_or_else(|| {
            Error::format(&shard.path, format!("tensor {name} lies outside the file"))
        })?;
        Ok((info.dtype, info.shape.as_slice(), bytes))
    }

    /// Linear-module shapes `(in, out, has_bias)` of every 2-D `*.weight` tensor.
    pub fn linear_shapes(&self) -> HashMap<String, (usize, usize, bool)> {
        let mut out = HashMap::new();
        for name in self.index.keys() {
            if let (Some(m), Some(s)) = (name.strip_suffix(".weight"), self.shape(name)) {
                if s.len() == 2 {
                    let bias = self.index.contains_key(&format!("{m}.bias"));
                    out.insert(m.to_string(), (s[1], s[0], bias));
                }
            }
        }
        out
    }

    /// Loads `name`, checks it has `shape`, and converts it to the compute dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_any(name)?;
        if t.dims() != shape {
            let path = &self.shards[self.index[name]].path;
            return Err(Error::format(
                path,
                format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims()),
            ));
        }
        Ok(t)
    }

    /// Loads `name` with whatever shape it has, converted to the compute dtype.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        self.get_as(name, self.dtype)
    }

    /// Loads `name` converted to `dtype`.
    pub fn get_as(&self, name: &str, dtype: DType) -> Result<Tensor> {
        let (shard, info) = self.locate(name)?;
        let src = st_to_candle(info.dtype).ok_or_else(|| {
            Error::format(
                &shard.path,
                format!("tensor {name} has unsupported dtype {:?}", info.dtype),
            )
        })?;
        let start = 8 + shard.header_len + info.data_offsets.0;
        let len = info.data_offsets.1 - info.data_offsets.0;
        if start + len > shard.map.len() {
            return Err(Error::format(
                &shard.path,
                format!("tensor {name} lies outside the file"),
            ));
        }
        // Read instead of touching the mapping: mapped pages would count in the resident set
        // on top of the converted copy (peak RSS ≈ 2× the weights).
        let mut bytes = vec![0u8; len];
        shard
            .file
            .read_exact_at(&mut bytes, start as u64)
            .map_err(|e| Error::io(&shard.path, e))?;
        let t = Tensor::from_raw_buffer(&bytes, src, &info.shape, &Device::Cpu)
            .map_err(|e| Error::format(&shard.path, format!("tensor {name}: {e}")))?;
        drop(bytes);
        let t = if src == dtype { t } else { t.to_dtype(dtype)? };
        Ok(t.to_device(&self.device)?)
    }
}

/// The candle dtype of a safetensors dtype, if candle has one.
pub fn st_to_candle(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F32 => DType::F32,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::F64 => DType::F64,
        StDtype::U8 => DType::U8,
        StDtype::U32 => DType::U32,
        StDtype::I64 => DType::I64,
        _ => return None,
    })
}

/// The distinct shard files named by a `model.safetensors.index.json`, in first-seen order.
fn shard_files(index_path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(index_path, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index_path, "weight_map: missing or not an object"))?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (k, f) in map {
        let f = f.as_str().ok_or_else(|| {
            Error::format(index_path, format!("weight_map.{k}: expected a file name"))
        })?;
        // A shard name must stay inside the model directory.
        if f.contains('/') || f.contains('\\') || f.starts_with("..") {
            return Err(Error::format(
                index_path,
                format!("weight_map.{k}: bad file name {f:?}"),
            ));
        }
        let p = dir.join(f);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(Error::format(index_path, "weight_map is empty"));
    }
    Ok(files)
}
