//! Where a model is loaded from: a directory in the HF layout, or a llama.cpp GGUF pair whose
//! metadata stands in for the directory's JSON files (so both are read by the same code).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufLimits, GgufWeights};
use crate::model::weights::Weights;

/// The files of one model.
pub enum ModelFiles {
    /// A directory with `config.json`, `model.safetensors`, `tokenizer.json`, ….
    Dir(PathBuf),
    /// A GGUF text model and its projector.
    Gguf {
        /// The HF files the metadata stands for, by file name.
        files: BTreeMap<String, String>,
        /// The tensors of both files.
        weights: Arc<GgufWeights>,
    },
}

impl ModelFiles {
    /// Opens `model` (a directory, a `.gguf` text model, or a directory holding a GGUF pair)
    /// with an optional explicit projector file; GGUF headers are checked under `max_header`.
    pub fn open(model: &Path, mmproj: Option<&Path>, max_header: u64) -> Result<Self> {
        match crate::gguf::find_pair(model, mmproj)? {
            None => Ok(ModelFiles::Dir(model.to_path_buf())),
            Some((text, proj)) => Self::open_gguf(&text, &proj, max_header),
        }
    }

    /// Opens the GGUF pair `text` + `mmproj`.
    pub fn open_gguf(text: &Path, mmproj: &Path, max_header: u64) -> Result<Self> {
        let limits = GgufLimits {
            max_metadata_bytes: max_header,
            ..GgufLimits::default()
        };
        let t = GgufFile::open(text, limits)?;
        let m = GgufFile::open(mmproj, limits)?;
        let files = crate::gguf::meta::hf_files(&t, &m)?;
        let cfg: serde_json::Value = serde_json::from_str(&files["config.json"])
            .map_err(|e| Error::Internal(format!("synthesised config.json: {e}")))?;
        let heads = |k: &str| cfg["text_config"][k].as_u64().unwrap_or(0) as usize;
        let weights = GgufWeights::new(
            t,
            m,
            heads("num_attention_heads"),
            heads("num_key_value_heads"),
        )?;
        Ok(ModelFiles::Gguf {
            files,
            weights: Arc::new(weights),
        })
    }

    /// The path a model is known by: the directory, or the text GGUF.
    pub fn root(&self) -> PathBuf {
        match self {
            ModelFiles::Dir(d) => d.clone(),
            ModelFiles::Gguf { weights, .. } => weights.text().path().to_path_buf(),
        }
    }

    /// The path used in messages about file `name` (`file.gguf:config.json` for a pair).
    pub fn path(&self, name: &str) -> PathBuf {
        match self {
            ModelFiles::Dir(d) => d.join(name),
            ModelFiles::Gguf { weights, .. } => {
                PathBuf::from(format!("{}:{name}", weights.text().path().display()))
            }
        }
    }

    /// The text of file `name`, `None` when absent; at most `max` bytes.
    pub fn read_text(&self, name: &str, max: u64) -> Result<Option<String>> {
        match self {
            ModelFiles::Dir(d) => {
                let p = d.join(name);
                if !crate::fsio::regular_file_exists(&p)? {
                    return Ok(None);
                }
                crate::fsio::read_text_limited(&p, max).map(Some)
            }
            ModelFiles::Gguf { files, .. } => Ok(files.get(name).cloned()),
        }
    }

    /// File `name` parsed as JSON, `None` when absent.
    pub fn read_json(&self, name: &str) -> Result<Option<serde_json::Value>> {
        match self.read_text(name, crate::fsio::MAX_JSON_BYTES)? {
            None => Ok(None),
            Some(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| Error::format(self.path(name), format!("invalid JSON: {e}"))),
        }
    }

    /// File `name`, which must exist.
    pub fn require_text(&self, name: &str, max: u64) -> Result<String> {
        match self {
            // A missing file is the I/O error naming it, as reading it directly gives.
            ModelFiles::Dir(d) => crate::fsio::read_text_limited(&d.join(name), max),
            ModelFiles::Gguf { .. } => self
                .read_text(name, max)?
                .ok_or_else(|| Error::format(self.path(name), "missing")),
        }
    }

    /// The model's tensors, converted to `dtype` on `device` as they are read.
    pub fn weights(&self, dtype: DType, device: &Device, max_header: u64) -> Result<Weights> {
        match self {
            ModelFiles::Dir(d) => Weights::open_limited(d, dtype, device, max_header),
            ModelFiles::Gguf { weights, .. } => {
                Ok(Weights::from_gguf(weights.clone(), dtype, device))
            }
        }
    }

    /// Whether this is a GGUF pair.
    pub fn is_gguf(&self) -> bool {
        matches!(self, ModelFiles::Gguf { .. })
    }
}
