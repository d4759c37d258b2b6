//! Safetensors checkpoints (single file or sharded with an index), validated and read with `pread`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, TensorInfo};

use crate::config::DEFAULT_MAX_HEADER_BYTES;
use crate::error::{Error, Result};
use crate::gguf::GgufWeights;

/// One safetensors file with its parsed header. Tensors are read with `pread`, never through
/// a memory map: a file truncated or rewritten while loaded gives an I/O error, not SIGBUS.
struct Shard {
    path: PathBuf,
    file: File,
    /// Length of the file when its header was checked.
    file_len: u64,
    header_len: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// Reads and validates the header of the safetensors file at `path`: the 8-byte length is at
/// most `max_header_bytes` and inside the file, the JSON is a valid safetensors header (known
/// dtypes, shapes whose byte sizes match their offsets, offsets contiguous from 0 without
/// overlaps or gaps), and the data section ends exactly at the end of the file.
fn read_header(
    path: &Path,
    file: &File,
    max_header_bytes: u64,
) -> Result<(u64, usize, HashMap<String, TensorInfo>)> {
    let bad = |m: String| Error::format(path, m);
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len < 8 {
        return Err(bad(format!(
            "invalid safetensors file: {file_len} bytes, shorter than the 8-byte header length"
        )));
    }
    let mut n8 = [0u8; 8];
    file.read_exact_at(&mut n8, 0)
        .map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(n8);
    if n > max_header_bytes {
        return Err(Error::Limit(format!(
            "{}: safetensors header of {n} bytes exceeds the limit of {max_header_bytes}",
            path.display()
        )));
    }
    if n < 2 || n > file_len - 8 {
        return Err(bad(format!(
            "invalid safetensors file: header length {n} does not fit in the file of {file_len} bytes"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&header)
        .map_err(|e| bad(format!("invalid safetensors header: not UTF-8 ({e})")))?;
    let meta: safetensors::tensor::Metadata =
        serde_json::from_str(text).map_err(|e| bad(format!("invalid safetensors header: {e}")))?;
    let data_len = meta.data_len() as u64;
    let expected = 8 + n + data_len;
    if expected > file_len {
        return Err(bad(format!(
            "truncated safetensors file: the header describes {expected} bytes, the file has {file_len}"
        )));
    }
    if expected < file_len {
        return Err(bad(format!(
            "invalid safetensors file: {} trailing bytes after the last tensor",
            file_len - expected
        )));
    }
    let tensors = meta
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    Ok((file_len, n as usize, tensors))
}

/// The tensors of a checkpoint, loaded on demand into the compute dtype.
pub struct Weights {
    shards: Vec<Shard>,
    /// tensor name -> shard index
    index: HashMap<String, usize>,
    /// A llama.cpp GGUF pair instead of safetensors shards (then `shards` is empty).
    gguf: Option<Arc<GgufWeights>>,
    dtype: DType,
    device: Device,
}

impl Weights {
    /// Opens `model.safetensors` or `model.safetensors.index.json` in `dir`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::open_limited(dir, dtype, device, DEFAULT_MAX_HEADER_BYTES)
    }

    /// [`Weights::open`] with a bound on each file's safetensors header.
    pub fn open_limited(
        dir: &Path,
        dtype: DType,
        device: &Device,
        max_header_bytes: u64,
    ) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if crate::fsio::regular_file_exists(&single)? {
            vec![single]
        } else if crate::fsio::regular_file_exists(&index_path)? {
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
        Self::from_files_limited(&files, dtype, device, max_header_bytes)
    }

    /// Opens and validates the given safetensors files.
    pub fn from_files(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        Self::from_files_limited(files, dtype, device, DEFAULT_MAX_HEADER_BYTES)
    }

    /// [`Weights::from_files`] with a bound on each file's safetensors header.
    pub fn from_files_limited(
        files: &[PathBuf],
        dtype: DType,
        device: &Device,
        max_header_bytes: u64,
    ) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = crate::fsio::open_regular(path)?;
            let (file_len, header_len, tensors) = read_header(path, &file, max_header_bytes)?;
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
                file_len,
                header_len,
                tensors,
            });
        }
        Ok(Self {
            shards,
            index,
            gguf: None,
            dtype,
            device: device.clone(),
        })
    }

    /// The tensors of a GGUF pair under their checkpoint names.
    pub fn from_gguf(gguf: Arc<GgufWeights>, dtype: DType, device: &Device) -> Self {
        Self {
            shards: Vec::new(),
            index: HashMap::new(),
            gguf: Some(gguf),
            dtype,
            device: device.clone(),
        }
    }

    /// `name` in the GGML format a GGUF pair stores it in; `None` for safetensors (and for a
    /// tensor the pair stores as f32). `[rows, cols]` is checked first.
    pub fn stored_quantized(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<crate::quant::QuantTensor>> {
        let Some(g) = &self.gguf else {
            return Ok(None);
        };
        self.check_shape(name, &[rows, cols])?;
        g.quantized(name)
    }

    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let Some(g) = &self.gguf else {
            return Ok(());
        };
        match g.shape(name) {
            None => Err(Error::format(
                g.text().path(),
                format!("missing tensor {name}"),
            )),
            Some(s) if s != shape => Err(Error::format(
                g.text().path(),
                format!("tensor {name} has shape {s:?}, expected {shape:?}"),
            )),
            Some(_) => Ok(()),
        }
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
        match &self.gguf {
            Some(g) => g.contains(name),
            None => self.index.contains_key(name),
        }
    }

    /// All tensor names in the checkpoint.
    pub fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.gguf {
            Some(g) => Box::new(g.names()),
            None => Box::new(self.index.keys().map(String::as_str)),
        }
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
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if let Some(g) = &self.gguf {
            return g.shape(name);
        }
        let si = *self.index.get(name)?;
        Some(self.shards[si].tensors[name].shape.clone())
    }

    /// The byte range of `name` in its file, checked against the file's length.
    fn range(&self, name: &str) -> Result<(&Shard, &TensorInfo, u64, usize)> {
        let (shard, info) = self.locate(name)?;
        let start = 8 + shard.header_len as u64 + info.data_offsets.0 as u64;
        let len = info.data_offsets.1.saturating_sub(info.data_offsets.0);
        if start + len as u64 > shard.file_len {
            return Err(Error::format(
                &shard.path,
                format!("tensor {name} lies outside the file"),
            ));
        }
        Ok((shard, info, start, len))
    }

    /// Reads the stored bytes of `name` (an I/O error if the file shrank since it was opened).
    fn read_bytes(&self, shard: &Shard, start: u64, len: usize) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        shard
            .file
            .read_exact_at(&mut bytes, start)
            .map_err(|e| Error::io(&shard.path, e))?;
        Ok(bytes)
    }

    /// Stored size of `name` in bytes.
    pub fn byte_len(&self, name: &str) -> Result<usize> {
        Ok(self.range(name)?.3)
    }

    /// The stored dtype, shape and bytes of `name`, untouched (for copying into a new file).
    pub fn raw(&self, name: &str) -> Result<(StDtype, &[usize], Vec<u8>)> {
        let (shard, info, start, len) = self.range(name)?;
        let bytes = self.read_bytes(shard, start, len)?;
        Ok((info.dtype, info.shape.as_slice(), bytes))
    }

    /// Linear-module shapes `(in, out, has_bias)` of every 2-D `*.weight` tensor.
    pub fn linear_shapes(&self) -> HashMap<String, (usize, usize, bool)> {
        let mut out = HashMap::new();
        for name in self.names() {
            if let (Some(m), Some(s)) = (name.strip_suffix(".weight"), self.shape(name)) {
                if s.len() == 2 {
                    let bias = self.contains(&format!("{m}.bias"));
                    out.insert(m.to_string(), (s[1], s[0], bias));
                }
            }
        }
        out
    }

    /// The stored dtype of `name`.
    pub fn stored_dtype(&self, name: &str) -> Option<StDtype> {
        let si = *self.index.get(name)?;
        Some(self.shards[si].tensors[name].dtype)
    }

    /// Loads `name`, checks it has `shape` and a floating dtype (both from the header, before
    /// reading), and converts it to the compute dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if self.gguf.is_some() {
            self.check_shape(name, shape)?;
            return self.get_any(name);
        }
        let (shard, info) = self.locate(name)?;
        if info.shape != shape {
            return Err(Error::format(
                &shard.path,
                format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    info.shape
                ),
            ));
        }
        self.check_float(name)?;
        self.get_any(name)
    }

    /// Loads a linear layer's `[out, in]` weight like [`Weights::get`], stored transposed on
    /// the CPU in f32 (see [`crate::kernels::cpu::store_transposed`]); with `SMOLCAP_KERNELS=generic` as
    /// the checkpoint stores it.
    pub fn get_linear_weight(&self, name: &str, out_dim: usize, in_dim: usize) -> Result<Tensor> {
        if self.gguf.is_some() {
            return crate::kernels::cpu::store_transposed(self.get(name, &[out_dim, in_dim])?);
        }
        let (_, info) = self.locate(name)?;
        let direct = crate::kernels::backend() == crate::kernels::Backend::Auto
            && self.device.is_cpu()
            && self.dtype == DType::F32
            && info.dtype == StDtype::F32
            && info.shape == [out_dim, in_dim];
        if !direct {
            return crate::kernels::cpu::store_transposed(self.get(name, &[out_dim, in_dim])?);
        }
        let (shard, _, start, len) = self.range(name)?;
        if len != out_dim * in_dim * 4 {
            return Err(Error::format(
                &shard.path,
                format!("tensor {name}: {len} bytes for shape {:?}", info.shape),
            ));
        }
        // Transposed straight from the file's bytes: one copy of the weight fewer at load.
        let bytes = self.read_bytes(shard, start, len)?;
        let t = crate::kernels::cpu::transpose_f32(out_dim, in_dim, |i| {
            let b = &bytes[4 * i..4 * i + 4];
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        });
        drop(bytes);
        Ok(Tensor::from_vec(t, (in_dim, out_dim), &Device::Cpu)?.t()?)
    }

    /// Fails unless `name` is stored as a floating-point dtype, naming the tensor.
    pub fn check_float(&self, name: &str) -> Result<()> {
        if let Some(g) = &self.gguf {
            // Every GGUF tensor is read as floats (or refused, naming its type, when read).
            if !g.contains(name) {
                return Err(Error::format(
                    g.text().path(),
                    format!("missing tensor {name}"),
                ));
            }
            return Ok(());
        }
        let (shard, info) = self.locate(name)?;
        if !st_to_candle(info.dtype).is_some_and(|d| d.is_float()) {
            return Err(Error::format(
                &shard.path,
                format!(
                    "tensor {name} has dtype {:?}, expected a floating-point dtype",
                    info.dtype
                ),
            ));
        }
        Ok(())
    }

    /// Loads `name` with whatever shape it has, converted to the compute dtype.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        self.get_as(name, self.dtype)
    }

    /// Loads `name` converted to `dtype`.
    pub fn get_as(&self, name: &str, dtype: DType) -> Result<Tensor> {
        if let Some(g) = &self.gguf {
            let (v, shape) = g.f32(name)?;
            let t = Tensor::from_vec(v, shape, &Device::Cpu)?;
            let t = if dtype == DType::F32 {
                t
            } else {
                t.to_dtype(dtype)?
            };
            return Ok(t.to_device(&self.device)?);
        }
        let (shard, info) = self.locate(name)?;
        let src = st_to_candle(info.dtype).ok_or_else(|| {
            Error::format(
                &shard.path,
                format!("tensor {name} has unsupported dtype {:?}", info.dtype),
            )
        })?;
        let (shard, _, start, len) = self.range(name)?;
        // Read instead of mapping: mapped pages would count in the resident set on top of the
        // converted copy (peak RSS ≈ 2× the weights), and a shrunk file would raise SIGBUS.
        let bytes = self.read_bytes(shard, start, len)?;
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
    let text = crate::fsio::read_text_limited(index_path, crate::fsio::MAX_JSON_BYTES)?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(index_path, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index_path, "weight_map: missing or not an object"))?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    // A set, not `files.contains`: an index with many entries must not take quadratic time.
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
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
        if seen.insert(f) {
            files.push(dir.join(f));
        }
    }
    if files.is_empty() {
        return Err(Error::format(index_path, "weight_map is empty"));
    }
    Ok(files)
}
