//! The GGUF container (llama.cpp's model file, versions 2 and 3): header, typed metadata and
//! tensor directory parsed with every count and length checked against the bytes left in the
//! file and against [`GgufLimits`] before anything is allocated; tensor data read with `pread`
//! (no memory map: a file truncated while loaded is an I/O error, not SIGBUS). Writing is
//! [`super::writer`].

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version this crate writes.
pub const VERSION: u32 = 3;
/// Tensor data alignment when `general.alignment` is absent (and what we write).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest tensor name llama.cpp accepts (`GGML_MAX_NAME` minus the terminator).
pub const MAX_TENSOR_NAME: usize = 63;

/// Bounds applied while parsing a GGUF header, so a hostile file cannot make us allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgufLimits {
    /// Bytes of metadata and tensor directory (strings, arrays) held after parsing.
    pub max_metadata_bytes: u64,
    /// Metadata entries.
    pub max_kv: u64,
    /// Tensors.
    pub max_tensors: u64,
    /// Elements of one metadata array (a vocabulary is ~50k–250k).
    pub max_array_len: u64,
}

impl Default for GgufLimits {
    fn default() -> Self {
        Self {
            max_metadata_bytes: crate::config::DEFAULT_MAX_HEADER_BYTES,
            max_kv: 1 << 16,
            max_tensors: 1 << 16,
            max_array_len: 1 << 24,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of one element type (never of arrays: llama.cpp writes none we read).
    Array(Vec<Value>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl Value {
    /// The GGUF type id.
    pub(crate) fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// A non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A number (integer or float).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// An array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// `(values per block, bytes per block)` of a ggml tensor type id, for every type llama.cpp
/// defines today (so a file of any type can be listed; loading takes fewer, see
/// [`crate::quant::GgmlKind`]).
pub fn ggml_type_size(id: u32) -> Option<(u64, u64)> {
    Some(match id {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        34 => (256, 54),  // TQ1_0
        35 => (256, 66),  // TQ2_0
        39 => (32, 17),   // MXFP4
        _ => return None,
    })
}

/// The name llama.cpp gives a ggml type id (for messages).
pub fn ggml_type_name(id: u32) -> String {
    let n = match id {
        0 => "f32",
        1 => "f16",
        2 => "q4_0",
        3 => "q4_1",
        6 => "q5_0",
        7 => "q5_1",
        8 => "q8_0",
        9 => "q8_1",
        10 => "q2_k",
        11 => "q3_k",
        12 => "q4_k",
        13 => "q5_k",
        14 => "q6_k",
        15 => "q8_k",
        30 => "bf16",
        _ => return format!("ggml type {id}"),
    };
    n.to_string()
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml dimensions, innermost first: a `[out, in]` matrix is `[in, out]`.
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub nbytes: u64,
}

impl TensorInfo {
    /// The shape in PyTorch order (outermost first), e.g. `[out, in]`.
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF header: metadata and tensor directory, with the file's layout checked.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor directory in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of each tensor's offset.
    pub alignment: u64,
    /// File offset of the data section.
    pub data_start: u64,
}

impl GgufHeader {
    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Reads little-endian fields from `r`, never past `remaining` bytes, and charges every
/// allocation to `budget`.
struct Parser<R: Read> {
    r: R,
    pos: u64,
    remaining: u64,
    budget: u64,
    limits: GgufLimits,
}

/// Parsing errors before the caller attaches the file's path.
type PResult<T> = std::result::Result<T, String>;

impl<R: Read> Parser<R> {
    fn take(&mut self, n: u64, what: &str) -> PResult<()> {
        if n > self.remaining {
            return Err(format!(
                "{what}: {n} bytes at offset {} run past the end of the file",
                self.pos
            ));
        }
        self.remaining -= n;
        self.pos += n;
        Ok(())
    }

    fn charge(&mut self, n: u64, what: &str) -> PResult<()> {
        if n > self.budget {
            return Err(format!(
                "{what}: metadata exceeds the limit of {} bytes",
                self.limits.max_metadata_bytes
            ));
        }
        self.budget -= n;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> PResult<[u8; N]> {
        self.take(N as u64, what)?;
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("{what}: {e}"))?;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    fn string(&mut self, what: &str) -> PResult<String> {
        let n = self.u64(what)?;
        self.take(n, what)?;
        self.charge(n, what)?;
        let mut b = vec![0u8; n as usize];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("{what}: {e}"))?;
        String::from_utf8(b).map_err(|_| format!("{what}: not UTF-8"))
    }

    fn scalar(&mut self, ty: u32, what: &str) -> PResult<Value> {
        Ok(match ty {
            0 => Value::U8(self.bytes::<1>(what)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.bytes(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.bytes(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes(what)?)),
            7 => match self.bytes::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{what}: {b} is not a boolean")),
            },
            8 => Value::Str(self.string(what)?),
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.bytes(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes(what)?)),
            9 => return Err(format!("{what}: arrays of arrays are not read")),
            t => return Err(format!("{what}: unknown value type {t}")),
        })
    }

    /// Smallest encoded size of one value of type `ty` (a string is at least its length).
    fn min_size(ty: u32) -> u64 {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            _ => 8,
        }
    }

    fn value(&mut self, ty: u32, what: &str) -> PResult<Value> {
        if ty != 9 {
            return self.scalar(ty, what);
        }
        let et = self.u32(what)?;
        let n = self.u64(what)?;
        if n > self.limits.max_array_len {
            return Err(format!(
                "{what}: array of {n} elements exceeds the limit of {}",
                self.limits.max_array_len
            ));
        }
        // Every element needs its bytes in the file: a count the file cannot hold is refused
        // before the vector is allocated.
        if n.saturating_mul(Self::min_size(et)) > self.remaining {
            return Err(format!(
                "{what}: array of {n} elements runs past the end of the file"
            ));
        }
        self.charge(n.saturating_mul(std::mem::size_of::<Value>() as u64), what)?;
        let mut v = Vec::with_capacity(n as usize);
        for _ in 0..n {
            v.push(self.scalar(et, what)?);
        }
        Ok(Value::Array(v))
    }
}

/// Parses a GGUF header from `r`, a file of `file_len` bytes read from its start.
fn parse<R: Read>(r: R, file_len: u64, limits: GgufLimits) -> PResult<GgufHeader> {
    let mut p = Parser {
        r,
        pos: 0,
        remaining: file_len,
        budget: limits.max_metadata_bytes,
        limits,
    };
    let magic = p.bytes::<4>("magic")?;
    if magic != MAGIC {
        return Err(format!("not a GGUF file (magic {magic:02x?})"));
    }
    let version = p.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not read (2 and 3 are)"));
    }
    let n_tensors = p.u64("tensor_count")?;
    let n_kv = p.u64("metadata_kv_count")?;
    if n_tensors > limits.max_tensors {
        return Err(format!(
            "tensor_count {n_tensors} exceeds the limit of {}",
            limits.max_tensors
        ));
    }
    if n_kv > limits.max_kv {
        return Err(format!(
            "metadata_kv_count {n_kv} exceeds the limit of {}",
            limits.max_kv
        ));
    }
    // A key is at least 12 bytes (length, type, one-byte value), a tensor entry at least 24.
    if n_kv
        .saturating_mul(13)
        .saturating_add(n_tensors.saturating_mul(24))
        > p.remaining
    {
        return Err(format!(
            "{n_kv} metadata entries and {n_tensors} tensors cannot fit in the file"
        ));
    }
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::new();
    for i in 0..n_kv {
        let key = p.string(&format!("metadata key #{i}"))?;
        if !keys.insert(key.clone()) {
            return Err(format!("metadata key {key:?} appears twice"));
        }
        let ty = p.u32(&key)?;
        let v = p.value(ty, &key)?;
        metadata.push((key, v));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(format!(
                    "general.alignment {v:?} is not a power of two ≤ 2^20"
                ))
            }
        },
    };
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = p.string(&format!("tensor #{i} name"))?;
        if !names.insert(name.clone()) {
            return Err(format!("tensor {name:?} appears twice"));
        }
        let nd = p.u32(&name)?;
        if !(1..=4).contains(&nd) {
            return Err(format!(
                "tensor {name}: {nd} dimensions (1 to 4 are allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            dims.push(p.u64(&name)?);
        }
        let ggml_type = p.u32(&name)?;
        let offset = p.u64(&name)?;
        let (blk, bsz) = ggml_type_size(ggml_type)
            .ok_or_else(|| format!("tensor {name}: unknown ggml type {ggml_type}"))?;
        if dims[0] % blk != 0 {
            return Err(format!(
                "tensor {name}: rows of {} values are no multiple of {}'s {blk}-value blocks",
                dims[0],
                ggml_type_name(ggml_type)
            ));
        }
        let elems = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&e| e < 1 << 50)
            .ok_or_else(|| format!("tensor {name}: dimensions {dims:?} overflow"))?;
        let nbytes = elems / blk * bsz;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor {name}: offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        p.charge(name.len() as u64 + 64, &name)?;
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            nbytes,
        });
    }
    let data_start = p.pos.div_ceil(alignment) * alignment;
    // Every tensor lies inside the file and no two overlap.
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.nbytes, t.name.as_str()))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("tensors {} and {} overlap", w[0].2, w[1].2));
        }
    }
    if let Some(&(_, end, name)) = spans.last() {
        if data_start.saturating_add(end) > file_len {
            return Err(format!(
                "tensor {name} ends at byte {}, past the end of the file ({file_len} bytes)",
                data_start.saturating_add(end)
            ));
        }
    }
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    })
}

/// Parses a GGUF file held in memory (the fuzz target's entry; tensor data is not copied).
pub fn parse_bytes(bytes: &[u8], limits: GgufLimits) -> Result<GgufHeader> {
    parse(bytes, bytes.len() as u64, limits).map_err(|m| Error::format("<memory>", m))
}

/// An open GGUF file: its checked header, tensor data read on demand.
pub struct GgufFile {
    path: PathBuf,
    file: File,
    file_len: u64,
    header: GgufHeader,
    index: HashMap<String, usize>,
}

impl GgufFile {
    /// Opens and checks `path` (a regular file) under `limits`.
    pub fn open(path: &Path, limits: GgufLimits) -> Result<Self> {
        let file = crate::fsio::open_regular(path)?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let reader = std::io::BufReader::with_capacity(1 << 16, &file);
        let header = parse(reader, file_len, limits).map_err(|m| Error::format(path, m))?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            file_len,
            header,
            index,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header.get(key)
    }

    /// The directory entry of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.header.tensors[i])
    }

    /// Reads the stored bytes of tensor `name`.
    pub fn read(&self, name: &str) -> Result<(&TensorInfo, Vec<u8>)> {
        let t = self
            .tensor(name)
            .ok_or_else(|| Error::format(&self.path, format!("missing tensor {name}")))?;
        let start = self.header.data_start + t.offset;
        if start + t.nbytes > self.file_len {
            return Err(Error::format(
                &self.path,
                format!("tensor {name} lies outside the file"),
            ));
        }
        let mut b = vec![0u8; t.nbytes as usize];
        self.file
            .read_exact_at(&mut b, start)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok((t, b))
    }
}
