//! Dot products of a few f32 rows with weight rows stored in GGML blocks, each block decoded to
//! f32 in registers and used at once (the decode step's products: memory traffic is the
//! quantised bytes, and no dequantised tile is written and read back).
//!
//! Each block decodes to exactly the values candle's `to_float` gives (the same f32 operations
//! in the same order), so a product differs from one with the dequantised weight only by
//! summation order. Hand-written bodies: AVX2+FMA+F16C on x86-64 for every format, NEON on
//! aarch64 for Q8_0 and Q4_0; elsewhere plain loops vectorised by the compiler (NEON is the
//! aarch64 baseline).

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::quant::GgmlKind;

/// A block format: `LEN` values stored in `BYTES` bytes.
trait Block: 'static {
    const LEN: usize;
    const BYTES: usize;
    /// Decodes one block (`BYTES` bytes) into `out` (`LEN` values).
    fn decode(b: &[u8], out: &mut [f32]);
}

/// The f16 at byte `i` (the const conversion: no run-time feature check per block).
#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32_const()
}

struct Q8_0;
impl Block for Q8_0 {
    const LEN: usize = 32;
    const BYTES: usize = 34;
    #[inline(always)]
    fn decode(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 0);
        for (o, &q) in out[..32].iter_mut().zip(&b[2..34]) {
            *o = f32::from(q as i8) * d;
        }
    }
}

struct Q4_0;
impl Block for Q4_0 {
    const LEN: usize = 32;
    const BYTES: usize = 18;
    #[inline(always)]
    fn decode(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 0);
        let (lo, hi) = out[..32].split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..18]) {
            *l = f32::from(i16::from(q & 0x0f) - 8) * d;
            *h = f32::from(i16::from(q >> 4) - 8) * d;
        }
    }
}

struct Q5_0;
impl Block for Q5_0 {
    const LEN: usize = 32;
    const BYTES: usize = 22;
    #[inline(always)]
    fn decode(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let (lo, hi) = out[..32].split_at_mut(16);
        for (j, ((l, h), &q)) in lo.iter_mut().zip(hi).zip(&b[6..22]).enumerate() {
            let xh0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
            *l = (i32::from((q & 0x0f) | xh0) - 16) as f32 * d;
            *h = (i32::from((q >> 4) | xh1) - 16) as f32 * d;
        }
    }
}

/// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and minimum from Q4_K's 12 bytes.
#[inline(always)]
fn scale_min_k4(sc: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (sc[j] & 63, sc[j + 4] & 63)
    } else {
        (
            (sc[j + 4] & 0x0f) | ((sc[j - 4] >> 6) << 4),
            (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4),
        )
    }
}

struct Q4K;
impl Block for Q4K {
    const LEN: usize = 256;
    const BYTES: usize = 144;
    #[inline(always)]
    fn decode(b: &[u8], out: &mut [f32]) {
        let (d, min) = (f16_at(b, 0), f16_at(b, 2));
        let scales = &b[4..16];
        let qs = &b[16..144];
        for (c, (o, q)) in out[..256]
            .chunks_exact_mut(64)
            .zip(qs.chunks_exact(32))
            .enumerate()
        {
            let (s1, m1) = scale_min_k4(scales, 2 * c);
            let (s2, m2) = scale_min_k4(scales, 2 * c + 1);
            let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
            let (lo, hi) = o.split_at_mut(32);
            for ((l, h), &q) in lo.iter_mut().zip(hi).zip(q) {
                *l = d1 * f32::from(q & 0x0f) - m1;
                *h = d2 * f32::from(q >> 4) - m2;
            }
        }
    }
}

struct Q6K;
impl Block for Q6K {
    const LEN: usize = 256;
    const BYTES: usize = 210;
    #[inline(always)]
    fn decode(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 208);
        for half in 0..2 {
            let ql = &b[64 * half..64 * half + 64];
            let qh = &b[128 + 32 * half..128 + 32 * half + 32];
            let sc = &b[192 + 8 * half..192 + 8 * half + 8];
            let y = &mut out[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                let s = |i: usize| f32::from(sc[i] as i8);
                y[l] = d * s(is) * f32::from(q1);
                y[l + 32] = d * s(is + 2) * f32::from(q2);
                y[l + 64] = d * s(is + 4) * f32::from(q3);
                y[l + 96] = d * s(is + 6) * f32::from(q4);
            }
        }
    }
}

/// 32 half-precision values as one block.
struct F16x32;
impl Block for F16x32 {
    const LEN: usize = 32;
    const BYTES: usize = 64;
    #[inline(always)]
    fn decode(b: &[u8], out: &mut [f32]) {
        for (o, h) in out[..32].iter_mut().zip(b.chunks_exact(2)) {
            *o = f16::from_bits(u16::from_le_bytes([h[0], h[1]])).to_f32_const();
        }
    }
}

/// 32 bfloat16 values as one block.
struct Bf16x32;
impl Block for Bf16x32 {
    const LEN: usize = 32;
    const BYTES: usize = 64;
    #[inline(always)]
    fn decode(b: &[u8], out: &mut [f32]) {
        for (o, h) in out[..32].iter_mut().zip(b.chunks_exact(2)) {
            *o = bf16::from_bits(u16::from_le_bytes([h[0], h[1]])).to_f32();
        }
    }
}

/// `dots[i·rows + r] = x_i · w_r` for the `M` rows of `x` (`[M, k]`) and the `rows` weight rows
/// in `w`; two 8-lane accumulators per input row keep two FMA chains in flight.
#[inline(always)]
fn dots_body<B: Block, const M: usize, const FMA: bool>(
    dots: &mut [f32],
    x: &[f32],
    k: usize,
    w: &[u8],
) {
    let fma = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let row_bytes = k / B::LEN * B::BYTES;
    let rows = w.len() / row_bytes.max(1);
    let mut buf = [0f32; 256];
    for (r, wr) in w.chunks_exact(row_bytes.max(1)).enumerate() {
        let mut acc = [[0f32; 16]; M];
        for (bi, blk) in wr.chunks_exact(B::BYTES).enumerate() {
            let y = &mut buf[..B::LEN];
            B::decode(blk, y);
            for (i, a) in acc.iter_mut().enumerate() {
                let xs = &x[i * k + bi * B::LEN..i * k + (bi + 1) * B::LEN];
                for (xc, yc) in xs.chunks_exact(16).zip(y.chunks_exact(16)) {
                    for l in 0..16 {
                        a[l] = fma(xc[l], yc[l], a[l]);
                    }
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let mut s = [0f32; 8];
            for l in 0..8 {
                s[l] = a[l] + a[l + 8];
            }
            dots[i * rows + r] = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
        }
    }
}

/// [`dots_body`] as the target's baseline compiles it: vectorised by the compiler (NEON on
/// aarch64); the portable path where the AVX2 bodies below do not apply.
fn dots_for<B: Block, const M: usize>(dots: &mut [f32], x: &[f32], k: usize, w: &[u8]) {
    // aarch64 always has fused multiply-add (NEON); elsewhere a separate multiply and add.
    dots_body::<B, M, { cfg!(target_arch = "aarch64") }>(dots, x, k, w)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 + FMA + F16C bodies for every format: values decoded eight per vector (bytes
    //! widened, converted to f32 and scaled with the same f32 operations in the same order as
    //! the scalar decoders, so the same values), each used by every input row at once. Where
    //! they apply they replace the compiler-vectorised portable bodies, which decoded 2-3x
    //! slower.

    use std::arch::x86_64::*;

    use crate::quant::GgmlKind;

    /// Whether the CPU has what these bodies were compiled for.
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }

    /// `super::dots` for `kind` and `M` rows.
    ///
    /// # Safety
    /// [`available`] is true; `super::dots` checked the sizes.
    unsafe fn dots_kind<const M: usize>(
        kind: GgmlKind,
        dots: &mut [f32],
        x: &[f32],
        k: usize,
        w: &[u8],
    ) {
        match kind {
            GgmlKind::Q8_0 => self::dots::<M>(Kind::Q8_0, dots, x, k, w),
            GgmlKind::Q4_0 => self::dots::<M>(Kind::Q4_0, dots, x, k, w),
            GgmlKind::Q5_0 => self::dots::<M>(Kind::Q5_0, dots, x, k, w),
            GgmlKind::Q4K => dots_q4k::<M>(dots, x, k, w),
            GgmlKind::Q6K => dots_q6k::<M>(dots, x, k, w),
            GgmlKind::F16 => dots_half::<M, false>(dots, x, k, w),
            GgmlKind::Bf16 => dots_half::<M, true>(dots, x, k, w),
        }
    }

    /// `super::dots` for `m` (1 to 4) rows; false for any other count.
    ///
    /// # Safety
    /// As [`dots_kind`].
    pub(super) unsafe fn dots_rows(
        kind: GgmlKind,
        dots: &mut [f32],
        x: &[f32],
        m: usize,
        k: usize,
        w: &[u8],
    ) -> bool {
        match m {
            1 => dots_kind::<1>(kind, dots, x, k, w),
            2 => dots_kind::<2>(kind, dots, x, k, w),
            3 => dots_kind::<3>(kind, dots, x, k, w),
            4 => dots_kind::<4>(kind, dots, x, k, w),
            _ => return false,
        }
        true
    }

    /// Which format the bytes hold.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(super) enum Kind {
        Q8_0,
        Q4_0,
        Q5_0,
    }

    /// The 32 signed values of one block as 32 bytes (before scaling).
    #[inline(always)]
    unsafe fn block_bytes(kind: Kind, blk: *const u8) -> __m256i {
        match kind {
            Kind::Q8_0 => _mm256_loadu_si256(blk.add(2).cast()),
            Kind::Q4_0 => {
                let qs = _mm_loadu_si128(blk.add(2).cast());
                let m = _mm_set1_epi8(0x0f);
                let lo = _mm_and_si128(qs, m);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m);
                _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
            }
            Kind::Q5_0 => {
                let qh = u32::from_le_bytes([*blk.add(2), *blk.add(3), *blk.add(4), *blk.add(5)]);
                let qs = _mm_loadu_si128(blk.add(6).cast());
                let m = _mm_set1_epi8(0x0f);
                let lo = _mm_and_si128(qs, m);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m);
                let nib = _mm256_set_m128i(hi, lo);
                // Bit j of qh is the fifth bit of value j: spread to byte j (llama.cpp's
                // bytes_from_bits_32), 0xff where set.
                let shuf = _mm256_set_epi64x(
                    0x0303_0303_0303_0303,
                    0x0202_0202_0202_0202,
                    0x0101_0101_0101_0101,
                    0,
                );
                let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
                let probe = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
                let bits = _mm256_cmpeq_epi8(probe, _mm256_set1_epi64x(-1));
                let fifth = _mm256_and_si256(bits, _mm256_set1_epi8(0x10));
                _mm256_sub_epi8(_mm256_or_si256(nib, fifth), _mm256_set1_epi8(16))
            }
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `dots[i·rows + r] = x_i · w_r` (see `super::dots`).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `x` holds `M·k` values, `w` whole rows of `k / 32`
    /// blocks of `kind`, `dots` `M · rows` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots<const M: usize>(
        kind: Kind,
        dots: &mut [f32],
        x: &[f32],
        k: usize,
        w: &[u8],
    ) {
        let bytes = match kind {
            Kind::Q8_0 => 34,
            Kind::Q4_0 => 18,
            Kind::Q5_0 => 22,
        };
        each_block::<M>(dots, x, k, w, (32, bytes), |acc, chains, blk, off| {
            // The block's f16 scale, converted by F16C and broadcast; the values q·d, as the
            // scalar decoder computes them.
            let d = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes([*blk, *blk.add(1)])));
            let v = four(block_bytes(kind, blk), true, |_, f| _mm256_mul_ps(f, d));
            use_four(acc, chains, x.as_ptr(), k, off, &v);
        });
    }

    /// Runs `block(acc, chains, bytes, first value)` on every block of every weight row in `w`
    /// (`len` values in `bytes` bytes each) and writes each row's sums to `dots`. Four
    /// independent FMA chains per input row for one or two rows (a chain's latency would bound
    /// the loop), two for more (sixteen registers in all).
    #[inline(always)]
    unsafe fn each_block<const M: usize>(
        dots: &mut [f32],
        x: &[f32],
        k: usize,
        w: &[u8],
        (len, bytes): (usize, usize),
        block: impl Fn(&mut [[__m256; 4]; M], usize, *const u8, usize),
    ) {
        debug_assert!(x.len() >= M * k);
        let nb = k / len;
        let row_bytes = nb * bytes;
        let rows = w.len() / row_bytes;
        let chains = if M <= 2 { 4 } else { 2 };
        for r in 0..rows {
            let wr = w.as_ptr().add(r * row_bytes);
            let mut acc = [[_mm256_setzero_ps(); 4]; M];
            for b in 0..nb {
                block(&mut acc, chains, wr.add(b * bytes), b * len);
            }
            for (i, a) in acc.iter().enumerate() {
                let s = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
                dots[i * rows + r] = hsum(s);
            }
        }
    }

    /// The f16 at `p` as f32 (F16C).
    #[inline(always)]
    unsafe fn f16_at_ptr(p: *const u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes([
            *p,
            *p.add(1),
        ]))))
    }

    /// `acc[i][j % chains] += x_i[off + 8j ..] · v[j]` for the four vectors `v`.
    #[inline(always)]
    unsafe fn use_four<const M: usize>(
        acc: &mut [[__m256; 4]; M],
        chains: usize,
        x: *const f32,
        k: usize,
        off: usize,
        v: &[__m256; 4],
    ) {
        for (i, a) in acc.iter_mut().enumerate() {
            let xp = x.add(i * k + off);
            for (j, vj) in v.iter().enumerate() {
                let l = &mut a[j % chains];
                *l = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(8 * j)), *vj, *l);
            }
        }
    }

    /// Four vectors from the 32 bytes `q`: `f(widened byte as f32)` for bytes 0–7, 8–15, …
    #[inline(always)]
    unsafe fn four(q: __m256i, signed: bool, f: impl Fn(usize, __m256) -> __m256) -> [__m256; 4] {
        let h = [_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)];
        let parts = [h[0], _mm_srli_si128(h[0], 8), h[1], _mm_srli_si128(h[1], 8)];
        let mut out = [_mm256_setzero_ps(); 4];
        for (j, p) in parts.iter().enumerate() {
            let w = if signed {
                _mm256_cvtepi8_epi32(*p)
            } else {
                _mm256_cvtepu8_epi32(*p)
            };
            out[j] = f(j, _mm256_cvtepi32_ps(w));
        }
        out
    }

    /// [`dots`] for Q4_K: per 64 values, `d·scale·q − dmin·min` for the low then high nibbles.
    ///
    /// # Safety
    /// As [`dots`], for `k / 256` blocks of 144 bytes per row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots_q4k<const M: usize>(dots: &mut [f32], x: &[f32], k: usize, w: &[u8]) {
        let mask = _mm256_set1_epi8(0x0f);
        each_block::<M>(dots, x, k, w, (256, 144), |acc, chains, blk, off| {
            let (d, min) = (f16_at_ptr(blk), f16_at_ptr(blk.add(2)));
            let sc = std::slice::from_raw_parts(blk.add(4), 12);
            for c in 0..4 {
                let q = _mm256_loadu_si256(blk.add(16 + 32 * c).cast());
                let lo = _mm256_and_si256(q, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
                for (half, bytes) in [(0, lo), (1, hi)] {
                    let (s, m) = super::scale_min_k4(sc, 2 * c + half);
                    let dv = _mm256_set1_ps(d * f32::from(s));
                    let mv = _mm256_set1_ps(min * f32::from(m));
                    let v = four(bytes, false, |_, f| _mm256_sub_ps(_mm256_mul_ps(dv, f), mv));
                    use_four(acc, chains, x.as_ptr(), k, off + 64 * c + 32 * half, &v);
                }
            }
        });
    }

    /// [`dots`] for Q6_K: per 128 values, four 32-value groups of 6-bit values, each 16 values
    /// with their own 8-bit scale, times `d`.
    ///
    /// # Safety
    /// As [`dots`], for `k / 256` blocks of 210 bytes per row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots_q6k<const M: usize>(dots: &mut [f32], x: &[f32], k: usize, w: &[u8]) {
        let m4 = _mm256_set1_epi8(0x0f);
        let m2 = _mm256_set1_epi8(0x03);
        each_block::<M>(dots, x, k, w, (256, 210), |acc, chains, blk, off| {
            let d = f16_at_ptr(blk.add(208));
            for h in 0..2 {
                let ql0 = _mm256_loadu_si256(blk.add(64 * h).cast());
                let ql1 = _mm256_loadu_si256(blk.add(64 * h + 32).cast());
                let qh = _mm256_loadu_si256(blk.add(128 + 32 * h).cast());
                let sc = blk.add(192 + 8 * h);
                // Bits 2s..2s+1 of qh as bits 4-5 of each byte.
                let high = |s: i32| {
                    let v = match s {
                        0 => qh,
                        1 => _mm256_srli_epi16(qh, 2),
                        2 => _mm256_srli_epi16(qh, 4),
                        _ => _mm256_srli_epi16(qh, 6),
                    };
                    _mm256_slli_epi16(_mm256_and_si256(v, m2), 4)
                };
                let groups = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0)),
                    _mm256_or_si256(_mm256_and_si256(ql1, m4), high(1)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high(2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high(3)),
                ];
                for (g, q) in groups.iter().enumerate() {
                    let q = _mm256_sub_epi8(*q, _mm256_set1_epi8(32));
                    // Values 0-15 of the group use scale 2g, 16-31 scale 2g + 1.
                    let ds = [
                        _mm256_set1_ps(d * f32::from(*sc.add(2 * g) as i8)),
                        _mm256_set1_ps(d * f32::from(*sc.add(2 * g + 1) as i8)),
                    ];
                    let v = four(q, true, |j, f| _mm256_mul_ps(ds[j / 2], f));
                    use_four(acc, chains, x.as_ptr(), k, off + 128 * h + 32 * g, &v);
                }
            }
        });
    }

    /// [`dots`] for rows of f16 (F16C conversion) or bf16 (`BF16`: the 16 bits shifted into
    /// the top of an f32, exact) values, 32 per block.
    ///
    /// # Safety
    /// As [`dots`], for `k / 32` blocks of 64 bytes per row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots_half<const M: usize, const BF16: bool>(
        dots: &mut [f32],
        x: &[f32],
        k: usize,
        w: &[u8],
    ) {
        each_block::<M>(dots, x, k, w, (32, 64), |acc, chains, blk, off| {
            let mut v = [_mm256_setzero_ps(); 4];
            for (j, vj) in v.iter_mut().enumerate() {
                let h = _mm_loadu_si128(blk.add(16 * j).cast());
                *vj = if BF16 {
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                } else {
                    _mm256_cvtph_ps(h)
                };
            }
            use_four(acc, chains, x.as_ptr(), k, off, &v);
        });
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    //! Hand-written NEON bodies for the two formats most used for decode, Q8_0 and Q4_0: a
    //! block's 32 values widened from int8 to f32 in registers (`vmovl` twice, `vcvtq`), scaled
    //! by the block's f16 scale exactly as `to_float` does (`q as f32 * d`), and used at once
    //! for every input row with fused multiply-adds. Other formats take the portable bodies.

    use std::arch::aarch64::*;

    use super::f16_at;

    /// Eight f32x4 vectors of a block's 32 int8 values, each multiplied by `d`.
    #[inline(always)]
    unsafe fn widen(lo: int8x16_t, hi: int8x16_t, d: f32) -> [float32x4_t; 8] {
        let mut out = [vdupq_n_f32(0.0); 8];
        for (h, v) in [lo, hi].into_iter().enumerate() {
            let a = vmovl_s8(vget_low_s8(v));
            let b = vmovl_s8(vget_high_s8(v));
            for (q, w16) in [a, b].into_iter().enumerate() {
                let i32lo = vmovl_s16(vget_low_s16(w16));
                let i32hi = vmovl_s16(vget_high_s16(w16));
                out[h * 4 + q * 2] = vmulq_n_f32(vcvtq_f32_s32(i32lo), d);
                out[h * 4 + q * 2 + 1] = vmulq_n_f32(vcvtq_f32_s32(i32hi), d);
            }
        }
        out
    }

    /// `dots[i·rows + r] = x_i · w_r` for `M` input rows; `Q4` picks Q4_0 (18-byte blocks)
    /// over Q8_0 (34-byte blocks). Two accumulators per input row keep two FMA chains going.
    ///
    /// # Safety
    /// `x` holds `M·k` values, `k` is a multiple of 32 and `w` whole rows of `k / 32` blocks
    /// (checked by [`super::dots`]); NEON is the aarch64 baseline.
    pub(super) unsafe fn dots<const M: usize, const Q4: bool>(
        dots: &mut [f32],
        x: &[f32],
        k: usize,
        w: &[u8],
    ) {
        let bytes = if Q4 { 18 } else { 34 };
        let row_bytes = k / 32 * bytes;
        let rows = w.len() / row_bytes;
        for r in 0..rows {
            let mut acc = [[vdupq_n_f32(0.0); 2]; M];
            for bi in 0..k / 32 {
                let blk = &w[r * row_bytes + bi * bytes..r * row_bytes + (bi + 1) * bytes];
                let d = f16_at(blk, 0);
                let (lo, hi) = if Q4 {
                    // Low nibbles are values 0..16, high nibbles 16..32, each minus 8.
                    let q = vld1q_u8(blk.as_ptr().add(2));
                    let eight = vdupq_n_s8(8);
                    (
                        vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))), eight),
                        vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(q)), eight),
                    )
                } else {
                    (
                        vld1q_s8(blk.as_ptr().add(2).cast()),
                        vld1q_s8(blk.as_ptr().add(18).cast()),
                    )
                };
                let y = widen(lo, hi, d);
                for (i, a) in acc.iter_mut().enumerate() {
                    let xp = x.as_ptr().add(i * k + bi * 32);
                    for (j, yv) in y.iter().enumerate() {
                        let xv = vld1q_f32(xp.add(4 * j));
                        a[j & 1] = vfmaq_f32(a[j & 1], xv, *yv);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                dots[i * rows + r] = vaddvq_f32(vaddq_f32(a[0], a[1]));
            }
        }
    }

    /// [`dots`] for `m` rows of Q8_0 (`q4 = false`) or Q4_0; false for other `m`.
    ///
    /// # Safety
    /// As [`dots`].
    pub(super) unsafe fn dots_rows(
        q4: bool,
        out: &mut [f32],
        x: &[f32],
        m: usize,
        k: usize,
        w: &[u8],
    ) -> bool {
        match (m, q4) {
            (1, false) => dots::<1, false>(out, x, k, w),
            (2, false) => dots::<2, false>(out, x, k, w),
            (3, false) => dots::<3, false>(out, x, k, w),
            (4, false) => dots::<4, false>(out, x, k, w),
            (1, true) => dots::<1, true>(out, x, k, w),
            (2, true) => dots::<2, true>(out, x, k, w),
            (3, true) => dots::<3, true>(out, x, k, w),
            (4, true) => dots::<4, true>(out, x, k, w),
            _ => return false,
        }
        true
    }
}

fn dots_m<B: Block>(dots: &mut [f32], x: &[f32], m: usize, k: usize, w: &[u8]) -> Result<()> {
    match m {
        1 => dots_for::<B, 1>(dots, x, k, w),
        2 => dots_for::<B, 2>(dots, x, k, w),
        3 => dots_for::<B, 3>(dots, x, k, w),
        4 => dots_for::<B, 4>(dots, x, k, w),
        _ => {
            return Err(Error::Internal(format!(
                "quantised dot products of {m} rows"
            )))
        }
    }
    Ok(())
}

/// Most input rows [`dots`] takes.
pub const MAX_ROWS: usize = 4;

/// Whether [`dots`] handles rows of `k` values in `kind` (f16/bf16 rows need whole 32-value
/// blocks).
pub fn supports(kind: GgmlKind, k: usize) -> bool {
    k.is_multiple_of(32) && k.is_multiple_of(kind.block_len())
}

/// `dots[i·rows + r] = x_i · w_r` for the `m ≤ MAX_ROWS` rows of `x` (`[m, k]`) and the weight
/// rows whose `kind` blocks are the bytes `w` (`rows` of them).
pub fn dots(
    kind: GgmlKind,
    dots: &mut [f32],
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
) -> Result<()> {
    if !supports(kind, k) || !(1..=MAX_ROWS).contains(&m) || x.len() != m * k {
        return Err(Error::Internal(format!(
            "{} dot products: x {} for [{m}, {k}]",
            kind.name(),
            x.len()
        )));
    }
    let row_bytes = k / kind.block_len() * kind.block_bytes();
    if row_bytes == 0
        || !w.len().is_multiple_of(row_bytes)
        || dots.len() != m * (w.len() / row_bytes)
    {
        return Err(Error::Internal(format!(
            "{} dot products: {} weight bytes for rows of {row_bytes}, {} outputs",
            kind.name(),
            w.len(),
            dots.len()
        )));
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C; the sizes and `m` were checked above.
        if unsafe { avx2::dots_rows(kind, dots, x, m, k, w) } {
            return Ok(());
        }
    }
    #[cfg(target_arch = "aarch64")]
    if matches!(kind, GgmlKind::Q8_0 | GgmlKind::Q4_0) {
        // SAFETY: NEON is the aarch64 baseline; the sizes and `m` were checked above.
        if unsafe { neon::dots_rows(kind == GgmlKind::Q4_0, dots, x, m, k, w) } {
            return Ok(());
        }
    }
    dots_portable(kind, dots, x, m, k, w)
}

/// [`dots`] on the portable bodies (after the same checks).
fn dots_portable(
    kind: GgmlKind,
    dots: &mut [f32],
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
) -> Result<()> {
    match kind {
        GgmlKind::Q8_0 => dots_m::<Q8_0>(dots, x, m, k, w),
        GgmlKind::Q4_0 => dots_m::<Q4_0>(dots, x, m, k, w),
        GgmlKind::Q5_0 => dots_m::<Q5_0>(dots, x, m, k, w),
        GgmlKind::Q4K => dots_m::<Q4K>(dots, x, m, k, w),
        GgmlKind::Q6K => dots_m::<Q6K>(dots, x, m, k, w),
        GgmlKind::F16 => dots_m::<F16x32>(dots, x, m, k, w),
        GgmlKind::Bf16 => dots_m::<Bf16x32>(dots, x, m, k, w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::ggml::{GgmlTensor, ALL_KINDS};
    use rand::{Rng, SeedableRng};

    fn decode_all<B: Block>(w: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; w.len() / B::BYTES * B::LEN];
        for (b, o) in w.chunks_exact(B::BYTES).zip(out.chunks_exact_mut(B::LEN)) {
            B::decode(b, o);
        }
        out
    }

    #[test]
    fn blocks_decode_to_candles_values_and_dots_match_them() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (rows, k) = (9, 512);
        let data: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-2.0..2.0)).collect();
        for kind in ALL_KINDS {
            let q = GgmlTensor::quantize(&data, rows, k, kind).unwrap();
            let mut want = vec![0f32; rows * k];
            q.dequantize_rows_into(0, rows, &mut want).unwrap();
            let bytes = q.row_bytes(0, rows).unwrap();
            let got = match kind {
                GgmlKind::Q8_0 => decode_all::<Q8_0>(bytes),
                GgmlKind::Q4_0 => decode_all::<Q4_0>(bytes),
                GgmlKind::Q5_0 => decode_all::<Q5_0>(bytes),
                GgmlKind::Q4K => decode_all::<Q4K>(bytes),
                GgmlKind::Q6K => decode_all::<Q6K>(bytes),
                GgmlKind::F16 => decode_all::<F16x32>(bytes),
                GgmlKind::Bf16 => decode_all::<Bf16x32>(bytes),
            };
            assert_eq!(got, want, "{}: decoded values", kind.name());
            for m in 1..=MAX_ROWS {
                let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let mut d = vec![0f32; m * (rows - 2)];
                let bytes = q.row_bytes(1, rows - 1).unwrap();
                // The dispatched bodies (AVX2 where present) and the portable ones.
                let mut p = d.clone();
                dots(kind, &mut d, &x, m, k, bytes).unwrap();
                dots_portable(kind, &mut p, &x, m, k, bytes).unwrap();
                for i in 0..m {
                    for r in 0..rows - 2 {
                        let e: f64 = (0..k)
                            .map(|p| f64::from(x[i * k + p]) * f64::from(want[(r + 1) * k + p]))
                            .sum();
                        for g in [d[i * (rows - 2) + r], p[i * (rows - 2) + r]] {
                            let g = f64::from(g);
                            assert!((g - e).abs() < 1e-4, "{} m={m}: {g} vs {e}", kind.name());
                        }
                    }
                }
            }
        }
        let q = GgmlTensor::quantize(&data, rows, k, GgmlKind::Q8_0).unwrap();
        let mut d = vec![0f32; 5 * rows];
        let x = vec![0f32; 5 * k];
        assert!(dots(
            GgmlKind::Q8_0,
            &mut d,
            &x,
            5,
            k,
            q.row_bytes(0, rows).unwrap()
        )
        .is_err());
        assert!(!supports(GgmlKind::F16, 50));
    }
}
