//! llama.cpp's GGML weight formats (Q8_0, Q5_0, Q4_0, Q4_K, Q6_K, and f16 / bf16) as storage of
//! a frozen linear weight or the token embedding: rows quantised with candle's ports of ggml's
//! block types (the same bytes as ggml's `quantize_row_*_ref`), dequantised a few rows at a time
//! into f32 for the products, so activations stay f32 and a product is exact up to summation
//! order against the dequantised weight.

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ4_0, BlockQ5_0, BlockQ6K, BlockQ8_0};
use candle_core::quantized::GgmlType;
use candle_core::{Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// A GGML storage format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlKind {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// 32 int8 values and one f16 scale per block (8.5 bits per weight).
    Q8_0,
    /// 256-value super-blocks of 6-bit values with 8-bit sub-block scales (6.5625 bits).
    Q6K,
    /// 32 5-bit values and one f16 scale per block (5.5 bits).
    Q5_0,
    /// 256-value super-blocks of 4-bit values with 6-bit sub-block scales and minimums (4.5 bits).
    Q4K,
    /// 32 4-bit values and one f16 scale per block (4.5 bits).
    Q4_0,
}

/// Every format, in the order of [`GgmlKind::name`]'s documentation.
pub const ALL_KINDS: [GgmlKind; 7] = [
    GgmlKind::F16,
    GgmlKind::Bf16,
    GgmlKind::Q8_0,
    GgmlKind::Q6K,
    GgmlKind::Q5_0,
    GgmlKind::Q4K,
    GgmlKind::Q4_0,
];

impl GgmlKind {
    /// The name used on the command line and in llama.cpp (`q4_k`, `f16`, …).
    pub fn name(self) -> &'static str {
        match self {
            GgmlKind::F16 => "f16",
            GgmlKind::Bf16 => "bf16",
            GgmlKind::Q8_0 => "q8_0",
            GgmlKind::Q6K => "q6_k",
            GgmlKind::Q5_0 => "q5_0",
            GgmlKind::Q4K => "q4_k",
            GgmlKind::Q4_0 => "q4_0",
        }
    }

    /// The format named `s` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        ALL_KINDS
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlKind::F16 | GgmlKind::Bf16 => 1,
            GgmlKind::Q8_0 | GgmlKind::Q5_0 | GgmlKind::Q4_0 => 32,
            GgmlKind::Q6K | GgmlKind::Q4K => 256,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlKind::F16 | GgmlKind::Bf16 => 2,
            GgmlKind::Q8_0 => 34,
            GgmlKind::Q6K => 210,
            GgmlKind::Q5_0 => 22,
            GgmlKind::Q4K => 144,
            GgmlKind::Q4_0 => 18,
        }
    }

    /// Bits stored per weight.
    pub fn bits_per_weight(self) -> f64 {
        8.0 * self.block_bytes() as f64 / self.block_len() as f64
    }

    /// The format llama.cpp really stores for rows of `cols` values when asked for `self`
    /// (`llama_tensor_get_type`): a K-quant whose 256-value block does not divide the row falls
    /// back to Q4_K → Q5_0, Q6_K → Q8_0; a row no multiple of the fallback's block is f16.
    pub fn for_cols(self, cols: usize) -> Self {
        let k = if cols.is_multiple_of(self.block_len()) {
            self
        } else {
            match self {
                GgmlKind::Q4K => GgmlKind::Q5_0,
                GgmlKind::Q6K => GgmlKind::Q8_0,
                other => other,
            }
        };
        if cols.is_multiple_of(k.block_len()) {
            k
        } else {
            GgmlKind::F16
        }
    }
}

/// The blocks of a matrix, row-major, in one of the formats.
#[derive(Debug, Clone)]
enum Blocks {
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    Q8_0(Vec<BlockQ8_0>),
    Q6K(Vec<BlockQ6K>),
    Q5_0(Vec<BlockQ5_0>),
    Q4K(Vec<BlockQ4K>),
    Q4_0(Vec<BlockQ4_0>),
}

/// Runs `$e` with `$v` bound to the typed block vector of `$b`.
macro_rules! with_blocks {
    ($b:expr, $v:ident => $e:expr) => {
        match $b {
            Blocks::F16($v) => $e,
            Blocks::Bf16($v) => $e,
            Blocks::Q8_0($v) => $e,
            Blocks::Q6K($v) => $e,
            Blocks::Q5_0($v) => $e,
            Blocks::Q4K($v) => $e,
            Blocks::Q4_0($v) => $e,
        }
    };
}

/// Quantises the rows of `data` (`cols` values each) in parallel.
fn quantize_rows<T: GgmlType + Send>(data: &[f32], cols: usize) -> Vec<T> {
    let per_row = cols / T::BLCK_SIZE;
    let mut out: Vec<T> = (0..data.len() / T::BLCK_SIZE).map(|_| T::zeros()).collect();
    out.par_chunks_mut(per_row.max(1))
        .zip(data.par_chunks(cols.max(1)))
        .for_each(|(b, x)| T::from_float(x, b));
    out
}

/// The bytes of a slice of blocks.
fn bytes_of<T>(v: &[T]) -> &[u8] {
    // SAFETY: T is f16, bf16 or one of candle's #[repr(C)] ggml block structs, made of u8/i8
    // arrays and f16 fields with no padding (their sizes equal ggml's type sizes, the sums of
    // their fields: checked in the tests), so every byte is initialised; u8 needs alignment 1
    // and the length is the slice's own size in bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// `n` blocks copied out of `bytes` (exactly `n` blocks long).
fn blocks_from<T: GgmlType>(bytes: &[u8], n: usize) -> Vec<T> {
    let mut v: Vec<T> = (0..n).map(|_| T::zeros()).collect();
    // SAFETY: as in `bytes_of`, T is a padding-free #[repr(C)] struct of u8/i8 arrays and f16
    // (or f16 / bf16 itself), for which every bit pattern is a valid value; the destination is
    // exactly `size_of_val(v)` bytes of initialised memory we own, and the caller checked that
    // `bytes` has that length.
    let dst = unsafe {
        std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(&v[..]))
    };
    dst.copy_from_slice(bytes);
    v
}

/// A `[rows, cols]` matrix stored in a GGML format.
#[derive(Debug, Clone)]
pub struct GgmlTensor {
    kind: GgmlKind,
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

impl GgmlTensor {
    /// Quantises the row-major `[rows, cols]` f32 matrix `data` to `kind`, which must divide
    /// the rows into whole blocks (see [`GgmlKind::for_cols`]).
    pub fn quantize(data: &[f32], rows: usize, cols: usize, kind: GgmlKind) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::InvalidArgument(format!(
                "{}: {} values for a [{rows}, {cols}] matrix",
                kind.name(),
                data.len()
            )));
        }
        if !cols.is_multiple_of(kind.block_len()) {
            return Err(Error::InvalidArgument(format!(
                "{}: rows of {cols} values are no multiple of its {}-value blocks",
                kind.name(),
                kind.block_len()
            )));
        }
        let blocks = match kind {
            GgmlKind::F16 => Blocks::F16(quantize_rows(data, cols)),
            GgmlKind::Bf16 => Blocks::Bf16(quantize_rows(data, cols)),
            GgmlKind::Q8_0 => Blocks::Q8_0(quantize_rows(data, cols)),
            GgmlKind::Q6K => Blocks::Q6K(quantize_rows(data, cols)),
            GgmlKind::Q5_0 => Blocks::Q5_0(quantize_rows(data, cols)),
            GgmlKind::Q4K => Blocks::Q4K(quantize_rows(data, cols)),
            GgmlKind::Q4_0 => Blocks::Q4_0(quantize_rows(data, cols)),
        };
        Ok(Self {
            kind,
            rows,
            cols,
            blocks,
        })
    }

    /// A matrix from its stored bytes in ggml's block layout (a GGUF tensor's data); the length
    /// must be exactly that of `rows` rows of `cols` values.
    pub fn from_bytes(kind: GgmlKind, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        let bad =
            |m: String| Error::InvalidArgument(format!("{} [{rows}, {cols}]: {m}", kind.name()));
        if !cols.is_multiple_of(kind.block_len()) {
            return Err(bad(format!(
                "rows are no multiple of {}-value blocks",
                kind.block_len()
            )));
        }
        let n_blocks = rows
            .checked_mul(cols / kind.block_len())
            .ok_or_else(|| bad("too large".into()))?;
        if n_blocks.checked_mul(kind.block_bytes()) != Some(bytes.len()) {
            return Err(bad(format!("{} bytes for {n_blocks} blocks", bytes.len())));
        }
        let blocks = match kind {
            GgmlKind::F16 => Blocks::F16(blocks_from(bytes, n_blocks)),
            GgmlKind::Bf16 => Blocks::Bf16(blocks_from(bytes, n_blocks)),
            GgmlKind::Q8_0 => Blocks::Q8_0(blocks_from(bytes, n_blocks)),
            GgmlKind::Q6K => Blocks::Q6K(blocks_from(bytes, n_blocks)),
            GgmlKind::Q5_0 => Blocks::Q5_0(blocks_from(bytes, n_blocks)),
            GgmlKind::Q4K => Blocks::Q4K(blocks_from(bytes, n_blocks)),
            GgmlKind::Q4_0 => Blocks::Q4_0(blocks_from(bytes, n_blocks)),
        };
        Ok(Self {
            kind,
            rows,
            cols,
            blocks,
        })
    }

    /// The storage format.
    pub fn kind(&self) -> GgmlKind {
        self.kind
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes held for the blocks.
    pub fn resident_bytes(&self) -> usize {
        self.rows * self.cols / self.kind.block_len() * self.kind.block_bytes()
    }

    /// Dequantises rows `[r0, r1)` into `out`, which must hold `(r1 - r0) * cols` values.
    pub fn dequantize_rows_into(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        if r0 > r1 || r1 > self.rows || out.len() != (r1 - r0) * self.cols {
            return Err(Error::InvalidArgument(format!(
                "{} rows [{r0}, {r1}) of {} x {} cols into a buffer of {}",
                self.kind.name(),
                self.rows,
                self.cols,
                out.len()
            )));
        }
        let per_row = self.cols / self.kind.block_len();
        with_blocks!(&self.blocks, b => {
            GgmlType::to_float(&b[r0 * per_row..r1 * per_row], out)
        });
        Ok(())
    }

    /// The stored bytes of rows `[r0, r1)`, in ggml's block layout (what a GGUF file holds).
    pub fn row_bytes(&self, r0: usize, r1: usize) -> Result<&[u8]> {
        if r0 > r1 || r1 > self.rows {
            return Err(Error::InvalidArgument(format!(
                "{} rows [{r0}, {r1}) of {}",
                self.kind.name(),
                self.rows
            )));
        }
        let per_row = self.cols / self.kind.block_len();
        Ok(with_blocks!(&self.blocks, b => bytes_of(&b[r0 * per_row..r1 * per_row])))
    }

    /// The whole matrix as a float32 `[rows, cols]` tensor on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        self.dequantize_rows_into(0, self.rows, &mut out)?;
        Ok(Tensor::from_vec(out, (self.rows, self.cols), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn names_parse_and_block_sizes_match_ggml() {
        for k in ALL_KINDS {
            assert_eq!(GgmlKind::parse(k.name()), Some(k));
            assert_eq!(GgmlKind::parse(&k.name().to_uppercase()), Some(k));
        }
        assert_eq!(GgmlKind::parse("q3_k"), None);
        // ggml's type sizes, as asserted by candle on its block structs.
        assert_eq!(
            std::mem::size_of::<BlockQ8_0>(),
            GgmlKind::Q8_0.block_bytes()
        );
        assert_eq!(std::mem::size_of::<BlockQ6K>(), GgmlKind::Q6K.block_bytes());
        assert_eq!(
            std::mem::size_of::<BlockQ5_0>(),
            GgmlKind::Q5_0.block_bytes()
        );
        assert_eq!(std::mem::size_of::<BlockQ4K>(), GgmlKind::Q4K.block_bytes());
        assert_eq!(
            std::mem::size_of::<BlockQ4_0>(),
            GgmlKind::Q4_0.block_bytes()
        );
        assert_eq!(std::mem::size_of::<f16>(), GgmlKind::F16.block_bytes());
        assert_eq!(std::mem::size_of::<bf16>(), GgmlKind::Bf16.block_bytes());
        assert_eq!(GgmlKind::Q4_0.bits_per_weight(), 4.5);
    }

    #[test]
    fn k_quants_fall_back_per_tensor_as_llama_cpp_does() {
        assert_eq!(GgmlKind::Q4K.for_cols(768), GgmlKind::Q4K);
        assert_eq!(GgmlKind::Q4K.for_cols(576), GgmlKind::Q5_0);
        assert_eq!(GgmlKind::Q6K.for_cols(576), GgmlKind::Q8_0);
        assert_eq!(GgmlKind::Q4_0.for_cols(576), GgmlKind::Q4_0);
        assert_eq!(GgmlKind::Q8_0.for_cols(50), GgmlKind::F16);
        assert_eq!(GgmlKind::Q4K.for_cols(48), GgmlKind::F16);
    }

    #[test]
    fn every_format_round_trips_within_its_precision() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (rows, cols) = (5, 512);
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        for k in ALL_KINDS {
            let q = GgmlTensor::quantize(&data, rows, cols, k).unwrap();
            assert_eq!(
                (q.resident_bytes() * 8) as f64,
                (rows * cols) as f64 * k.bits_per_weight()
            );
            let mut all = vec![0f32; rows * cols];
            q.dequantize_rows_into(0, rows, &mut all).unwrap();
            // Relative RMS error of the format on uniform values.
            let err = data
                .iter()
                .zip(&all)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / data.iter().map(|a| (*a as f64).powi(2)).sum::<f64>();
            // About half a quantisation step's RMS over the values' RMS (1/√3).
            let bound = match k {
                GgmlKind::F16 => 1e-3,
                GgmlKind::Bf16 => 5e-3,
                GgmlKind::Q8_0 => 1e-2,
                GgmlKind::Q6K => 3e-2,
                GgmlKind::Q5_0 => 6e-2,
                GgmlKind::Q4K | GgmlKind::Q4_0 => 0.12,
            };
            assert!(
                err.sqrt() < bound,
                "{}: relative error {}",
                k.name(),
                err.sqrt()
            );
            // A row range dequantises to the same values as the whole matrix.
            let mut two = vec![0f32; 2 * cols];
            q.dequantize_rows_into(2, 4, &mut two).unwrap();
            assert_eq!(two, all[2 * cols..4 * cols]);
            assert!(q.dequantize_rows_into(4, 6, &mut two).is_err());
        }
        assert!(GgmlTensor::quantize(&data, rows, cols, GgmlKind::Q4K).is_ok());
        assert!(GgmlTensor::quantize(&data[..rows * 96], rows, 96, GgmlKind::Q4K).is_err());
        assert!(GgmlTensor::quantize(&data, rows, 7, GgmlKind::Q8_0).is_err());
    }
}
