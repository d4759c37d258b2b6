//! The tensors of a llama.cpp SmolVLM pair under their checkpoint names: what the model loader
//! asks of a safetensors checkpoint (shapes, f32 values), plus each matrix in the GGML format it
//! is stored in, so a quantised file is used as is, never dequantised and quantised again.

use std::collections::HashMap;

use super::file::{ggml_type_name, GgufFile, TensorInfo};
use super::names::{from_gguf, order_heads, source_row, Part, RowOrder};
use crate::error::{Error, Result};
use crate::quant::{GgmlKind, GgmlTensor, QuantTensor};

/// The ggml type id of a format this crate stores.
pub fn ggml_type_id(k: GgmlKind) -> u32 {
    match k {
        GgmlKind::F16 => 1,
        GgmlKind::Q4_0 => 2,
        GgmlKind::Q5_0 => 6,
        GgmlKind::Q8_0 => 8,
        GgmlKind::Q4K => 12,
        GgmlKind::Q6K => 14,
        GgmlKind::Bf16 => 30,
    }
}

/// The format of a ggml type id, if this crate stores it (f32 is dense, not a format).
pub fn kind_of_type(id: u32) -> Option<GgmlKind> {
    crate::quant::ggml::ALL_KINDS
        .into_iter()
        .find(|&k| ggml_type_id(k) == id)
}

/// Where one checkpoint tensor lives in the pair.
#[derive(Debug, Clone)]
struct Entry {
    part: Part,
    gguf: String,
    order: RowOrder,
}

/// A text GGUF and its `mmproj`, indexed by checkpoint tensor name.
pub struct GgufWeights {
    text: GgufFile,
    mmproj: GgufFile,
    map: HashMap<String, Entry>,
    n_head: usize,
    n_kv_head: usize,
}

impl GgufWeights {
    /// Indexes the tensors of the pair; a tensor whose name is not one of SmolVLM's is an error
    /// naming it (a file for another model must not load half-used).
    pub fn new(text: GgufFile, mmproj: GgufFile, n_head: usize, n_kv_head: usize) -> Result<Self> {
        let mut map = HashMap::new();
        for (f, part) in [(&text, Part::Text), (&mmproj, Part::Mmproj)] {
            for t in &f.header().tensors {
                let (hf, order) = from_gguf(&t.name, part).ok_or_else(|| {
                    Error::format(
                        f.path(),
                        format!("tensor {} is not part of a SmolVLM model", t.name),
                    )
                })?;
                map.insert(
                    hf,
                    Entry {
                        part,
                        gguf: t.name.clone(),
                        order,
                    },
                );
            }
        }
        Ok(Self {
            text,
            mmproj,
            map,
            n_head,
            n_kv_head,
        })
    }

    /// The text model file.
    pub fn text(&self) -> &GgufFile {
        &self.text
    }

    /// The projector file.
    pub fn mmproj(&self) -> &GgufFile {
        &self.mmproj
    }

    /// Whether the pair holds checkpoint tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Checkpoint names of every tensor.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    fn locate(&self, name: &str) -> Result<(&GgufFile, &TensorInfo, RowOrder)> {
        let e = self.map.get(name).ok_or_else(|| {
            Error::format(
                self.text.path(),
                format!("missing tensor {name} (in neither file of the pair)"),
            )
        })?;
        let f = match e.part {
            Part::Text => &self.text,
            Part::Mmproj => &self.mmproj,
        };
        let t = f
            .tensor(&e.gguf)
            .ok_or_else(|| Error::Internal(format!("indexed tensor {} vanished", e.gguf)))?;
        Ok((f, t, e.order))
    }

    /// The shape of `name` in PyTorch order.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.locate(name).ok().map(|(_, t, _)| t.torch_shape())
    }

    /// The stored bytes of `name` as `(rows, cols, ggml type, bytes)`, rows back in checkpoint
    /// order (undoing llama.cpp's query/key permutation, a move of whole rows).
    fn rows(&self, name: &str) -> Result<(usize, usize, u32, Vec<u8>)> {
        let (f, info, order) = self.locate(name)?;
        let cols = info.dims[0] as usize;
        let rows = info.dims[1..].iter().product::<u64>() as usize;
        let (_, bytes) = f.read(&info.name)?;
        let Some(heads) = order_heads(order, self.n_head, self.n_kv_head) else {
            return Ok((rows, cols, info.ggml_type, bytes));
        };
        if heads == 0 || !rows.is_multiple_of(2 * heads) {
            return Err(Error::format(
                f.path(),
                format!(
                    "tensor {}: {rows} rows do not split into {heads} heads",
                    info.name
                ),
            ));
        }
        let rb = bytes.len() / rows.max(1);
        let mut out = vec![0u8; bytes.len()];
        for r in 0..rows {
            let s = source_row(r, rows, heads);
            out[s * rb..(s + 1) * rb].copy_from_slice(&bytes[r * rb..(r + 1) * rb]);
        }
        Ok((rows, cols, info.ggml_type, out))
    }

    /// The format `name` is stored in (`None`: f32); a type smolcap does not read is an error
    /// naming the tensor, given before any of its bytes are read.
    fn stored_kind(&self, name: &str) -> Result<Option<GgmlKind>> {
        let (f, info, _) = self.locate(name)?;
        if info.ggml_type == 0 {
            return Ok(None);
        }
        kind_of_type(info.ggml_type).map(Some).ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: tensor {} is stored as {}, which smolcap does not read (f32, f16, bf16, q8_0, q6_k, q5_0, q4_k and q4_0 are read)",
                f.path().display(),
                info.name,
                ggml_type_name(info.ggml_type)
            ))
        })
    }

    /// `name` as f32 values (dequantised if stored in a GGML format) with its PyTorch shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let kind = self.stored_kind(name)?;
        let shape = self.shape(name).unwrap_or_default();
        let (rows, cols, _, bytes) = self.rows(name)?;
        let Some(kind) = kind else {
            let v = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            return Ok((v, shape));
        };
        let q = GgmlTensor::from_bytes(kind, rows, cols, &bytes)?;
        let mut out = vec![0f32; rows * cols];
        q.dequantize_rows_into(0, rows, &mut out)?;
        Ok((out, shape))
    }

    /// The `[rows, cols]` matrix `name` in its stored GGML format; `None` when stored as f32.
    pub fn quantized(&self, name: &str) -> Result<Option<QuantTensor>> {
        let Some(kind) = self.stored_kind(name)? else {
            return Ok(None);
        };
        let (f, info, _) = self.locate(name)?;
        if info.dims.len() != 2 {
            return Err(Error::format(
                f.path(),
                format!(
                    "tensor {}: a matrix has 2 dimensions, not {}",
                    info.name,
                    info.dims.len()
                ),
            ));
        }
        let (rows, cols, _, bytes) = self.rows(name)?;
        Ok(Some(QuantTensor::Ggml(GgmlTensor::from_bytes(
            kind, rows, cols, &bytes,
        )?)))
    }
}
