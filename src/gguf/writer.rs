//! Writing GGUF files as llama.cpp lays them out: the header (metadata, tensor directory) then
//! each tensor's data, 32-byte aligned so llama.cpp can map it, one tensor in memory at a time.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::file::{ggml_type_size, Value, DEFAULT_ALIGNMENT, MAGIC, MAX_TENSOR_NAME, VERSION};
use crate::error::{Error, Result};
/// A tensor to be written: name, ggml dimensions (innermost first) and type.
#[derive(Debug, Clone)]
pub struct TensorPlan {
    /// Tensor name (at most [`MAX_TENSOR_NAME`] bytes).
    pub name: String,
    /// ggml dimensions, innermost first.
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ggml_type: u32,
}

impl TensorPlan {
    fn nbytes(&self) -> Result<u64> {
        let (blk, bsz) = ggml_type_size(self.ggml_type)
            .ok_or_else(|| Error::InvalidArgument(format!("{}: unknown ggml type", self.name)))?;
        let elems: u64 = self.dims.iter().product();
        Ok(elems / blk * bsz)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_scalar(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::Str(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(items) => {
            let et = items.first().map_or(4, Value::type_id);
            out.extend_from_slice(&et.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_scalar(out, it);
            }
        }
    }
}

/// The header bytes (up to the aligned data section) of a file with `metadata` and `tensors`.
pub fn encode_header(metadata: &[(String, Value)], tensors: &[TensorPlan]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        if let Value::Array(items) = v {
            if items
                .iter()
                .any(|i| i.type_id() != items[0].type_id() || i.type_id() == 9)
            {
                return Err(Error::InvalidArgument(format!(
                    "metadata {k}: array elements of mixed or array types"
                )));
            }
        }
        put_str(&mut out, k);
        out.extend_from_slice(&v.type_id().to_le_bytes());
        put_scalar(&mut out, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        if t.name.len() > MAX_TENSOR_NAME {
            return Err(Error::InvalidArgument(format!(
                "tensor name {} is longer than llama.cpp's {MAX_TENSOR_NAME} bytes",
                t.name
            )));
        }
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset += t.nbytes()?.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    }
    out.resize(
        out.len().div_ceil(DEFAULT_ALIGNMENT as usize) * DEFAULT_ALIGNMENT as usize,
        0,
    );
    Ok(out)
}

/// Writes a GGUF file to `path` (through a temporary file renamed into place), one tensor at a
/// time: `data(i)` gives the bytes of `tensors[i]`, so only one tensor is held at once.
pub fn write(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorPlan],
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    let header = encode_header(metadata, tensors)?;
    let tmp = path.with_extension("gguf.partial");
    let result = (|| -> Result<()> {
        let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let io = |e| Error::io(&tmp, e);
        w.write_all(&header).map_err(io)?;
        let pad = [0u8; DEFAULT_ALIGNMENT as usize];
        for (i, t) in tensors.iter().enumerate() {
            let bytes = data(i)?;
            let n = t.nbytes()?;
            if bytes.len() as u64 != n {
                return Err(Error::Internal(format!(
                    "tensor {}: {} bytes for a {n}-byte tensor",
                    t.name,
                    bytes.len()
                )));
            }
            w.write_all(&bytes).map_err(io)?;
            let rem = (n % DEFAULT_ALIGNMENT) as usize;
            if rem != 0 {
                w.write_all(&pad[..DEFAULT_ALIGNMENT as usize - rem])
                    .map_err(io)?;
            }
        }
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::file::{parse_bytes, GgufFile, GgufLimits};

    fn sample() -> Vec<u8> {
        let meta = vec![
            (
                "general.architecture".to_string(),
                Value::Str("llama".into()),
            ),
            ("llama.block_count".to_string(), Value::U32(2)),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(vec![Value::Str("a".into()), Value::Str("b".into())]),
            ),
            ("x.f".to_string(), Value::F32(1.5)),
            ("x.b".to_string(), Value::Bool(true)),
        ];
        let tensors = vec![
            TensorPlan {
                name: "a".into(),
                dims: vec![3, 2],
                ggml_type: 0,
            },
            TensorPlan {
                name: "b".into(),
                dims: vec![32],
                ggml_type: 8,
            },
        ];
        let mut out = encode_header(&meta, &tensors).unwrap();
        out.extend((0..24u8).chain(std::iter::repeat_n(0, 8)));
        out.extend(std::iter::repeat_n(7u8, 34));
        out
    }

    #[test]
    fn written_header_parses_back() {
        let b = sample();
        let h = parse_bytes(&b, GgufLimits::default()).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.get("llama.block_count").and_then(Value::as_u64), Some(2));
        assert_eq!(h.get("x.f").and_then(Value::as_f64), Some(1.5));
        assert_eq!(h.get("x.b").and_then(Value::as_bool), Some(true));
        assert_eq!(
            h.get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(|a| a.len()),
            Some(2)
        );
        assert_eq!(h.tensors[0].torch_shape(), vec![2, 3]);
        assert_eq!(h.tensors[0].nbytes, 24);
        assert_eq!(h.tensors[1].offset, 32);
        assert_eq!(h.tensors[1].nbytes, 34);
        assert_eq!(h.data_start % 32, 0);
        assert_eq!(h.data_start as usize + 32 + 34, b.len());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let b = sample();
        for n in 0..b.len() {
            assert!(parse_bytes(&b[..n], GgufLimits::default()).is_err(), "{n}");
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut b = sample();
        // tensor_count at byte 8.
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = parse_bytes(&b, GgufLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor_count"), "{e}");
        let mut b = sample();
        b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let e = parse_bytes(&b, GgufLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("metadata_kv_count"), "{e}");
        // The first key's length.
        let mut b = sample();
        b[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let e = parse_bytes(&b, GgufLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("past the end"), "{e}");
        // A metadata budget smaller than the vocabulary.
        let small = GgufLimits {
            max_metadata_bytes: 40,
            ..GgufLimits::default()
        };
        assert!(parse_bytes(&sample(), small).is_err());
        let short = GgufLimits {
            max_array_len: 1,
            ..GgufLimits::default()
        };
        let e = parse_bytes(&sample(), short).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
    }

    #[test]
    fn bad_layouts_are_named() {
        let good = sample();
        let h = parse_bytes(&good, GgufLimits::default()).unwrap();
        // Data cut short: the last tensor runs past the end.
        let e = parse_bytes(&good[..good.len() - 1], GgufLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor b"), "{e}");
        // Second tensor's offset moved onto the first: overlap.
        let mut b = good.clone();
        let pos = b
            .windows(8)
            .rposition(|w| w == 32u64.to_le_bytes())
            .unwrap();
        assert!(pos < h.data_start as usize);
        b[pos..pos + 8].copy_from_slice(&0u64.to_le_bytes());
        let e = parse_bytes(&b, GgufLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlap"), "{e}");
        // Bad magic and version.
        let mut b = good.clone();
        b[0] = b'X';
        assert!(parse_bytes(&b, GgufLimits::default()).is_err());
        let mut b = good;
        b[4] = 9;
        let e = parse_bytes(&b, GgufLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 9"), "{e}");
    }

    #[test]
    fn file_round_trip_reads_tensor_bytes() {
        let dir = std::env::temp_dir().join(format!("smolcap-gguf-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.gguf");
        let plans = vec![
            TensorPlan {
                name: "w".into(),
                dims: vec![4, 2],
                ggml_type: 0,
            },
            TensorPlan {
                name: "v".into(),
                dims: vec![3],
                ggml_type: 1,
            },
        ];
        let meta = vec![(
            "general.architecture".to_string(),
            Value::Str("clip".into()),
        )];
        write(&p, &meta, &plans, |i| Ok(vec![i as u8 + 1; [32, 6][i]])).unwrap();
        let f = GgufFile::open(&p, GgufLimits::default()).unwrap();
        assert_eq!(f.read("w").unwrap().1, vec![1u8; 32]);
        assert_eq!(f.read("v").unwrap().1, vec![2u8; 6]);
        assert!(f.read("nope").is_err());
        assert_eq!(std::fs::metadata(&p).unwrap().len() % 32, 0);
        // A wrong byte count is an error and leaves no file behind.
        let q = dir.join("u.gguf");
        assert!(write(&q, &meta, &plans, |_| Ok(vec![0u8; 5])).is_err());
        assert!(!q.exists() && !q.with_extension("gguf.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
