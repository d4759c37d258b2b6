//! bitsandbytes-compatible NF4 (4-bit NormalFloat) block quantisation with optional double
//! quantisation of the per-block scales, as QLoRA stores frozen base weights.
//!
//! The layout and arithmetic follow `bitsandbytes.functional.quantize_4bit(quant_type="nf4")`
//! (version 0.50.2, float32 input): the matrix is flattened row-major and cut into blocks of
//! `blocksize` elements; each block keeps its float32 absolute maximum and one 4-bit code per
//! element, two codes per byte with the first element in the high nibble. With double
//! quantisation the absmax vector minus its mean is itself quantised to 8 bits with
//! bitsandbytes' signed dynamic map in blocks of 256. `tools/reference/nf4.py` is the reference.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The 16 NF4 levels, ascending, exactly as bitsandbytes' `get_4bit_type("nf4")` (float32).
// Literals copied from bitsandbytes (float64 text, rounded to float32 by the compiler).
#[allow(clippy::excessive_precision)]
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Block size bitsandbytes uses for the double quantisation of the absmax vector.
const DQ_BLOCKSIZE: usize = 256;

/// Floor bitsandbytes applies to a block's absmax before dividing by it (`clamp(min=1e-38)`).
const ABSMAX_FLOOR: f32 = 1e-38;

/// Settings for NF4 quantisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nf4Config {
    /// Elements per quantisation block: a power of two from 32 to 4096 (bitsandbytes' set).
    pub blocksize: usize,
    /// Quantise the per-block absmax to 8 bits (QLoRA's `bnb_4bit_use_double_quant`).
    pub double_quant: bool,
}

impl Default for Nf4Config {
    /// bitsandbytes' `quantize_4bit` defaults: block 64, no double quantisation.
    fn default() -> Self {
        Nf4Config {
            blocksize: 64,
            double_quant: false,
        }
    }
}

/// How the per-block scales of an [`Nf4Tensor`] are stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Nf4Absmax {
    /// One float32 absmax per block.
    F32(Vec<f32>),
    /// bitsandbytes' double quantisation: `absmax[b] = DYN[codes[b]] * absmax2[b / 256] + offset`.
    Double {
        /// One 8-bit dynamic-map code per block.
        codes: Vec<u8>,
        /// Float32 absmax of each group of 256 centred block scales.
        absmax2: Vec<f32>,
        /// Mean of the original absmax vector, subtracted before quantising.
        offset: f32,
    },
}

/// A [rows, cols] float32 matrix stored as bitsandbytes NF4 codes plus per-block scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    rows: usize,
    cols: usize,
    blocksize: usize,
    codes: Vec<u8>,
    absmax: Nf4Absmax,
}

/// Decision thresholds between neighbouring levels, computed in float32 as bitsandbytes does.
fn midpoints<const N: usize, const M: usize>(levels: &[f32; N]) -> [f32; M] {
    let mut out = [0.0f32; M];
    for (i, m) in out.iter_mut().enumerate() {
        *m = (levels[i] + levels[i + 1]) / 2.0;
    }
    out
}

/// Index of the nearest level: the number of thresholds strictly below `x`, so a value exactly on
/// a threshold takes the lower level (`torch.bucketize(right=False)`, CUDA's `x > t` tests).
fn nearest(thresholds: &[f32], x: f32) -> u8 {
    // At most 255 thresholds, so the count fits in a byte.
    thresholds.partition_point(|&t| t < x) as u8
}

fn dynamic_map() -> [f32; 256] {
    DYNAMIC_MAP_SIGNED_BITS.map(f32::from_bits)
}

fn check_blocksize(blocksize: usize) -> Result<()> {
    if !(32..=4096).contains(&blocksize) || !blocksize.is_power_of_two() {
        return Err(Error::InvalidArgument(format!(
            "NF4 blocksize {blocksize}: must be a power of two from 32 to 4096"
        )));
    }
    Ok(())
}

/// Per-block absmax and codes for `data`, mirroring bitsandbytes' default `quantize_4bit` kernel.
fn quantize_blocks(data: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let thresholds: [f32; 15] = midpoints(&NF4_LEVELS);
    let n = data.len();
    let mut codes = vec![0u8; n.div_ceil(2)];
    let mut absmax = Vec::with_capacity(n.div_ceil(blocksize));
    for (b, block) in data.chunks(blocksize).enumerate() {
        let am = block.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        let floored = am.max(ABSMAX_FLOOR);
        let full = block.len() == blocksize;
        // bitsandbytes multiplies full blocks by the reciprocal but divides the short tail block,
        // and stores the floored absmax only for the tail; both are kept for bit equality.
        let inv = 1.0f32 / floored;
        absmax.push(if full { am } else { floored });
        for (j, &x) in block.iter().enumerate() {
            let scaled = if full { x * inv } else { x / floored };
            let q = nearest(&thresholds, scaled.clamp(-1.0, 1.0));
            let i = b * blocksize + j;
            codes[i / 2] |= if i.is_multiple_of(2) { q << 4 } else { q };
        }
    }
    if n % 2 == 1 {
        // bitsandbytes pads an odd count with 0.0, whose code sits in the last low nibble.
        codes[n / 2] |= nearest(&thresholds, 0.0);
    }
    (codes, absmax)
}

/// Double quantisation of the absmax vector (offset = float32 of the float64 mean).
fn double_quantize(absmax: &[f32]) -> Nf4Absmax {
    let dyn_map = dynamic_map();
    let thresholds: [f32; 255] = midpoints(&dyn_map);
    let sum: f64 = absmax.iter().map(|&a| f64::from(a)).sum();
    let offset = (sum / absmax.len() as f64) as f32;
    let mut codes = Vec::with_capacity(absmax.len());
    let mut absmax2 = Vec::with_capacity(absmax.len().div_ceil(DQ_BLOCKSIZE));
    for block in absmax.chunks(DQ_BLOCKSIZE) {
        let am = block.iter().fold(0.0f32, |m, &a| m.max((a - offset).abs()));
        absmax2.push(am);
        let inv = 1.0f32 / am.max(ABSMAX_FLOOR);
        for &a in block {
            let scaled = ((a - offset) * inv).clamp(-1.0, 1.0);
            codes.push(nearest(&thresholds, scaled));
        }
    }
    Nf4Absmax::Double {
        codes,
        absmax2,
        offset,
    }
}

impl Nf4Tensor {
    /// Quantises a row-major [rows, cols] float32 matrix.
    pub fn quantize(data: &[f32], rows: usize, cols: usize, cfg: Nf4Config) -> Result<Self> {
        check_blocksize(cfg.blocksize)?;
        let n = rows.checked_mul(cols).ok_or_else(|| {
            Error::InvalidArgument(format!("NF4 shape [{rows}, {cols}] overflows"))
        })?;
        if n == 0 || n != data.len() {
            return Err(Error::InvalidArgument(format!(
                "NF4 shape [{rows}, {cols}] needs {n} > 0 values, got {}",
                data.len()
            )));
        }
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "NF4 input element {i} (row {}, col {}) is not finite: {}",
                i / cols,
                i % cols,
                data[i]
            )));
        }
        let (codes, absmax) = quantize_blocks(data, cfg.blocksize);
        let absmax = if cfg.double_quant {
            double_quantize(&absmax)
        } else {
            Nf4Absmax::F32(absmax)
        };
        Ok(Nf4Tensor {
            rows,
            cols,
            blocksize: cfg.blocksize,
            codes,
            absmax,
        })
    }

    /// Quantises a rank-2 tensor of any float dtype on any device.
    pub fn from_tensor(t: &Tensor, cfg: Nf4Config) -> Result<Self> {
        let (rows, cols) = t.dims2().map_err(|_| {
            Error::InvalidArgument(format!(
                "NF4 needs a rank-2 weight, got shape {:?}",
                t.dims()
            ))
        })?;
        let data = t
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Self::quantize(&data, rows, cols, cfg)
    }

    /// Rebuilds a tensor from stored parts (e.g. a checkpoint), validating their sizes.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        blocksize: usize,
        codes: Vec<u8>,
        absmax: Nf4Absmax,
    ) -> Result<Self> {
        check_blocksize(blocksize)?;
        let n = rows
            .checked_mul(cols)
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::InvalidArgument(format!("NF4 shape [{rows}, {cols}]")))?;
        let blocks = n.div_ceil(blocksize);
        let bad = |what: &str, want: usize, got: usize| {
            Error::InvalidArgument(format!(
                "NF4 [{rows}, {cols}] block {blocksize}: {what} needs {want} entries, got {got}"
            ))
        };
        if codes.len() != n.div_ceil(2) {
            return Err(bad("codes", n.div_ceil(2), codes.len()));
        }
        match &absmax {
            Nf4Absmax::F32(a) if a.len() != blocks => return Err(bad("absmax", blocks, a.len())),
            Nf4Absmax::Double { codes: c, .. } if c.len() != blocks => {
                return Err(bad("double-quant codes", blocks, c.len()))
            }
            Nf4Absmax::Double { absmax2, .. } if absmax2.len() != blocks.div_ceil(DQ_BLOCKSIZE) => {
                return Err(bad(
                    "double-quant absmax",
                    blocks.div_ceil(DQ_BLOCKSIZE),
                    absmax2.len(),
                ))
            }
            _ => {}
        }
        Ok(Nf4Tensor {
            rows,
            cols,
            blocksize,
            codes,
            absmax,
        })
    }

    /// The matrix shape `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Elements per quantisation block.
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }

    /// Packed 4-bit codes, two per byte, first element in the high nibble.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The stored per-block scales.
    pub fn absmax(&self) -> &Nf4Absmax {
        &self.absmax
    }

    /// The float32 scale of every block (dequantised when double-quantised).
    pub fn block_scales(&self) -> Vec<f32> {
        let blocks = (self.rows * self.cols).div_ceil(self.blocksize);
        match &self.absmax {
            Nf4Absmax::F32(a) => a.clone(),
            Nf4Absmax::Double { .. } => (0..blocks).map(|b| self.block_scale(b)).collect(),
        }
    }

    fn block_scale(&self, b: usize) -> f32 {
        match &self.absmax {
            Nf4Absmax::F32(a) => a[b],
            Nf4Absmax::Double {
                codes,
                absmax2,
                offset,
            } => {
                // Separate multiply and add (no fused multiply-add), as bitsandbytes computes it.
                f32::from_bits(DYNAMIC_MAP_SIGNED_BITS[usize::from(codes[b])])
                    * absmax2[b / DQ_BLOCKSIZE]
                    + offset
            }
        }
    }

    /// Bytes held for the weight: packed codes plus the scale storage.
    pub fn resident_bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        self.codes.len()
            + match &self.absmax {
                Nf4Absmax::F32(a) => a.len() * f,
                Nf4Absmax::Double { codes, absmax2, .. } => codes.len() + absmax2.len() * f + f,
            }
    }

    /// Dequantises rows `[r0, r1)` into `out`, which must hold `(r1 - r0) * cols` values.
    pub fn dequantize_rows_into(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        if r0 > r1 || r1 > self.rows {
            return Err(Error::InvalidArgument(format!(
                "NF4 row range [{r0}, {r1}) outside [0, {})",
                self.rows
            )));
        }
        let start = r0 * self.cols;
        let end = r1 * self.cols;
        if out.len() != end - start {
            return Err(Error::InvalidArgument(format!(
                "NF4 rows [{r0}, {r1}) x {} cols need a buffer of {}, got {}",
                self.cols,
                end - start,
                out.len()
            )));
        }
        let mut i = start;
        while i < end {
            let b = i / self.blocksize;
            let scale = self.block_scale(b);
            let stop = ((b + 1) * self.blocksize).min(end);
            for (k, o) in (i..stop).zip(out[i - start..stop - start].iter_mut()) {
                let byte = self.codes[k / 2];
                let q = if k % 2 == 0 { byte >> 4 } else { byte & 0x0f };
                *o = NF4_LEVELS[usize::from(q)] * scale;
            }
            i = stop;
        }
        Ok(())
    }

    /// Dequantises the whole matrix into a float32 `[rows, cols]` tensor on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        self.dequantize_rows_into(0, self.rows, &mut out)?;
        Ok(Tensor::from_vec(out, (self.rows, self.cols), device)?)
    }
}

/// bitsandbytes' `create_dynamic_map(signed=True)` (256 float32 levels, ascending) as bits.
/// Generated by `tools/reference/nf4.py --rust-table`; do not edit.
const DYNAMIC_MAP_SIGNED_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nf4/nf4_cases.safetensors"
    );

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        rows: usize,
        cols: usize,
        blocksize: usize,
        double_quant: bool,
    }

    fn u32s(st: &SafeTensors, name: &str) -> Vec<u32> {
        let t = st.tensor(name).unwrap();
        t.data()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
        u32s(st, name).into_iter().map(f32::from_bits).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn load() -> (Vec<u8>, Vec<Case>) {
        let bytes = std::fs::read(FIXTURE).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let cases = meta.metadata().as_ref().unwrap()["cases"].clone();
        let cases: Vec<Case> = serde_json::from_str(&cases).unwrap();
        (bytes, cases)
    }

    #[test]
    fn level_tables_match_reference() {
        let (bytes, _) = load();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(bits(&NF4_LEVELS), u32s(&st, "nf4_levels"));
        assert_eq!(DYNAMIC_MAP_SIGNED_BITS.to_vec(), u32s(&st, "dynamic_map"));
    }

    #[test]
    fn quantize_and_dequantize_match_reference_bit_exact() {
        let (bytes, cases) = load();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert!(cases.len() >= 8);
        for c in &cases {
            let p = |s: &str| format!("{}.{s}", c.name);
            let input = f32s(&st, &p("input"));
            let cfg = Nf4Config {
                blocksize: c.blocksize,
                double_quant: c.double_quant,
            };
            let q = Nf4Tensor::quantize(&input, c.rows, c.cols, cfg).unwrap();
            assert_eq!(
                q.codes(),
                st.tensor(&p("codes")).unwrap().data(),
                "{}",
                c.name
            );
            match q.absmax() {
                Nf4Absmax::F32(a) => {
                    assert!(!c.double_quant);
                    assert_eq!(bits(a), u32s(&st, &p("absmax")), "{}", c.name);
                }
                Nf4Absmax::Double {
                    codes,
                    absmax2,
                    offset,
                } => {
                    assert!(c.double_quant);
                    let dq_codes = st.tensor(&p("dq_codes")).unwrap();
                    assert_eq!(codes.as_slice(), dq_codes.data(), "{}", c.name);
                    assert_eq!(bits(absmax2), u32s(&st, &p("dq_absmax")), "{}", c.name);
                    assert_eq!(vec![offset.to_bits()], u32s(&st, &p("dq_offset")));
                    let scales = q.block_scales();
                    assert_eq!(bits(&scales), u32s(&st, &p("absmax_dequant")), "{}", c.name);
                }
            }
            let deq = q.dequantize(&Device::Cpu).unwrap();
            assert_eq!(deq.dims(), &[c.rows, c.cols]);
            let deq = deq.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(bits(&deq), u32s(&st, &p("dequant")), "{}", c.name);

            // Tile-by-tile dequantisation gives the same values as the whole matrix.
            let mut tile = vec![0.0f32; 3 * c.cols];
            for r0 in (0..c.rows).step_by(3) {
                let r1 = (r0 + 3).min(c.rows);
                let buf = &mut tile[..(r1 - r0) * c.cols];
                q.dequantize_rows_into(r0, r1, buf).unwrap();
                assert_eq!(bits(buf), bits(&deq[r0 * c.cols..r1 * c.cols]));
            }
        }
    }

    #[test]
    fn resident_bytes_counts_codes_and_scales() {
        let data = vec![0.5f32; 10 * 100];
        let plain = Nf4Tensor::quantize(&data, 10, 100, Nf4Config::default()).unwrap();
        // 500 code bytes + 16 blocks of f32 absmax.
        assert_eq!(plain.resident_bytes(), 500 + 16 * 4);
        let cfg = Nf4Config {
            blocksize: 64,
            double_quant: true,
        };
        let dq = Nf4Tensor::quantize(&data, 10, 100, cfg).unwrap();
        // 500 code bytes + 16 one-byte scale codes + one f32 absmax2 + the f32 offset.
        assert_eq!(dq.resident_bytes(), 500 + 16 + 4 + 4);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cfg = Nf4Config::default();
        assert!(Nf4Tensor::quantize(&[0.0; 6], 2, 4, cfg).is_err());
        assert!(Nf4Tensor::quantize(&[], 0, 4, cfg).is_err());
        assert!(Nf4Tensor::quantize(&[0.0, f32::NAN], 1, 2, cfg).is_err());
        assert!(Nf4Tensor::quantize(&[0.0, f32::INFINITY], 1, 2, cfg).is_err());
        for blocksize in [0, 16, 48, 8192] {
            let c = Nf4Config {
                blocksize,
                double_quant: false,
            };
            assert!(Nf4Tensor::quantize(&[0.0; 4], 2, 2, c).is_err());
        }
        assert!(Nf4Tensor::quantize(&[0.0; 4], usize::MAX, 2, cfg).is_err());
        let q = Nf4Tensor::quantize(&[1.0; 8], 2, 4, cfg).unwrap();
        let mut buf = [0.0f32; 4];
        assert!(q.dequantize_rows_into(1, 3, &mut buf).is_err());
        assert!(q.dequantize_rows_into(2, 1, &mut buf).is_err());
        assert!(q.dequantize_rows_into(0, 2, &mut buf).is_err());
        assert!(q.dequantize_rows_into(1, 2, &mut buf).is_ok());
        assert!(Nf4Tensor::from_parts(2, 4, 64, vec![0; 3], Nf4Absmax::F32(vec![1.0])).is_err());
        assert!(Nf4Tensor::from_parts(2, 4, 64, vec![0; 4], Nf4Absmax::F32(vec![])).is_err());
        let t = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(Nf4Tensor::from_tensor(&t, cfg).is_err());
    }

    #[test]
    fn from_tensor_and_from_parts_round_trip() {
        let (bytes, cases) = load();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let c = &cases[0];
        let input = f32s(&st, &format!("{}.input", c.name));
        let t = Tensor::from_vec(input.clone(), (c.rows, c.cols), &Device::Cpu).unwrap();
        let cfg = Nf4Config {
            blocksize: c.blocksize,
            double_quant: c.double_quant,
        };
        let a = Nf4Tensor::from_tensor(&t, cfg).unwrap();
        assert_eq!(a, Nf4Tensor::quantize(&input, c.rows, c.cols, cfg).unwrap());
        let b = Nf4Tensor::from_parts(
            c.rows,
            c.cols,
            c.blocksize,
            a.codes().to_vec(),
            a.absmax().clone(),
        )
        .unwrap();
        assert_eq!(a, b);
    }
}
