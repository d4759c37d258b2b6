//! A bit-exact port of Pillow's `Image.resize` for 8-bit images.
//!
//! Sources mirrored (Pillow 13): `libImaging/Resample.c` (separable convolution: coefficients
//! computed in `f64`, normalised, converted to 22-bit fixed point; two passes with a clamp to
//! `u8` in between, horizontal first (over only the source rows the vertical pass reads) except
//! when the height shrinks by more than twice as many pixels as the width (Pillow 13); a pass is
//! skipped when its dimension is unchanged), the NEAREST path of `_imaging.c` /
//! `libImaging/Geometry.c` (`ImagingScaleAffine`, an accumulated `f64` source position), and
//! `Image.resize` itself (same size: copy; `LA`/`RGBA` with a non-NEAREST filter: premultiply,
//! resize, unpremultiply, as `convert("RGBa")` / `convert("RGBA")` do).

use crate::error::{Error, Result};

/// A Pillow resampling filter (the values of `PIL.Image.Resampling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Filter {
    /// `NEAREST` (0): nearest neighbour at the pixel centre.
    Nearest,
    /// `LANCZOS` (1): windowed sinc, support 3.
    Lanczos,
    /// `BILINEAR` (2): triangle, support 1.
    Bilinear,
    /// `BICUBIC` (3): cubic convolution with a = -0.5, support 2.
    Bicubic,
    /// `BOX` (4): box, support 0.5.
    Box,
    /// `HAMMING` (5): Hamming-windowed sinc, support 1.
    Hamming,
    /// `MKS2013` (6): Magic Kernel Sharp 2013, support 2.5 (Pillow 13).
    Mks2013,
    /// `MKS2021` (7): Magic Kernel Sharp 2021, support 4.5 (Pillow 13).
    Mks2021,
}

impl Filter {
    /// Maps a `PIL.Image.Resampling` integer (as stored in `preprocessor_config.json`) to a filter.
    pub fn from_pil(value: u32) -> Result<Self> {
        Ok(match value {
            0 => Filter::Nearest,
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            6 => Filter::Mks2013,
            7 => Filter::Mks2021,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown PIL resampling filter {other} (expected 0..=7)"
                )))
            }
        })
    }

    /// The `PIL.Image.Resampling` integer of this filter.
    pub fn to_pil(self) -> u32 {
        match self {
            Filter::Nearest => 0,
            Filter::Lanczos => 1,
            Filter::Bilinear => 2,
            Filter::Bicubic => 3,
            Filter::Box => 4,
            Filter::Hamming => 5,
            Filter::Mks2013 => 6,
            Filter::Mks2021 => 7,
        }
    }

    /// The kernel's support radius at scale 1 (`filter->support` in Resample.c).
    fn support(self) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Mks2013 => 2.5,
            Filter::Lanczos => 3.0,
            Filter::Mks2021 => 4.5,
        }
    }

    /// The kernel, evaluated with the same operation order as Pillow's C code.
    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes the window constants as float literals (0.54f, 0.46f).
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
            Filter::Mks2013 => {
                let x = x.abs();
                if x >= 2.5 {
                    0.0
                } else if x >= 1.5 {
                    -0.125 * (x - 2.5) * (x - 2.5)
                } else if x >= 0.5 {
                    0.25 * (4.0 * x * x - 11.0 * x + 7.0)
                } else {
                    1.0625 - 1.75 * x * x
                }
            }
            Filter::Mks2021 => {
                let x = x.abs();
                if x >= 4.5 {
                    0.0
                } else if x >= 3.5 {
                    -1.0 / 288.0 * (x - 4.5) * (x - 4.5)
                } else if x >= 2.5 {
                    1.0 / 36.0 * (x - 3.0) * (x - 3.75)
                } else if x >= 1.5 {
                    1.0 / 6.0 * (x - 2.0) * (65.0 / 24.0 - x)
                } else if x >= 0.5 {
                    35.0 / 36.0 * (x - 1.0) * (x - 239.0 / 140.0)
                } else {
                    577.0 / 576.0 - 239.0 / 144.0 * x * x
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Fixed-point precision of the 8-bit resampler (`PRECISION_BITS` = 32 - 8 - 2).
const PRECISION_BITS: u32 = 22;
/// The rounding term every accumulator starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Per-output-pixel filter taps for one axis, in Pillow's fixed point.
struct Coeffs {
    /// Maximum taps per output pixel (row stride of `k`).
    ksize: usize,
    /// `(first source index, number of taps)` per output pixel.
    bounds: Vec<(usize, usize)>,
    /// `out_size * ksize` fixed-point weights.
    k: Vec<i32>,
    /// Whether `HALF + 255 * sum|k|` can leave `i32` for some output pixel; then the passes
    /// use wrapping arithmetic, as the C code's `int` accumulators do in practice.
    wrap: bool,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the full source range (box = 0..in_size).
fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Result<Coeffs> {
    // Pillow's box is float[4]; (double)(in1 - in0) is exact below 2^24.
    let in1 = in_size as f32;
    let scale = f64::from(in1 - 0.0f32) / out_size as f64;
    let mut filterscale = scale;
    if filterscale < 1.0 {
        filterscale = 1.0;
    }
    let support = filter.support() * filterscale;
    let ksize = (support.ceil() as usize) * 2 + 1;
    let total = out_size.checked_mul(ksize).ok_or_else(|| {
        Error::Limit(format!(
            "resize to {out_size} px: coefficient table too large"
        ))
    })?;
    let mut kk = vec![0f64; total];
    let mut bounds = Vec::with_capacity(out_size);
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = 0.0 + (xx as f64 + 0.5) * scale;
        let mut ww = 0.0;
        let mut xmin = (center - support + 0.5) as i64;
        if xmin < 0 {
            xmin = 0;
        }
        let mut xmax = (center + support + 0.5) as i64;
        if xmax > in_size as i64 {
            xmax = in_size as i64;
        }
        let n = ((xmax - xmin).max(0) as usize).min(ksize);
        let k = &mut kk[xx * ksize..xx * ksize + ksize];
        for (x, slot) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *slot = w;
            ww += w;
        }
        if ww != 0.0 {
            for slot in k.iter_mut().take(n) {
                *slot /= ww;
            }
        }
        bounds.push((xmin as usize, n));
    }
    let unit = f64::from(1u32 << PRECISION_BITS);
    let k: Vec<i32> = kk
        .iter()
        .map(|&v| {
            if v < 0.0 {
                (-0.5 + v * unit) as i32
            } else {
                (0.5 + v * unit) as i32
            }
        })
        .collect();
    let max_abs = k
        .chunks_exact(ksize)
        .map(|row| row.iter().map(|&w| i64::from(w).abs()).sum::<i64>())
        .max()
        .unwrap_or(0);
    let wrap = i64::from(HALF) + 255 * max_abs > i64::from(i32::MAX);
    Ok(Coeffs {
        ksize,
        bounds,
        k,
        wrap,
    })
}

#[inline(always)]
fn clip8(v: i32) -> u8 {
    let s = v >> PRECISION_BITS;
    if s < 0 {
        0
    } else if s > 255 {
        255
    } else {
        s as u8
    }
}

/// `acc + p * w`, wrapping when the coefficients allow overflow (plain loops and operators keep
/// unoptimised builds fast; `WRAP` is false for every real filter).
#[inline(always)]
fn mac<const WRAP: bool>(acc: i32, p: u8, w: i32) -> i32 {
    if WRAP {
        acc.wrapping_add((p as i32).wrapping_mul(w))
    } else {
        acc + p as i32 * w
    }
}

/// Horizontal pass over source rows `y0..y0 + rows` of a `C`-channel image.
fn horizontal<const C: usize>(
    src: &[u8],
    in_w: usize,
    y0: usize,
    rows: usize,
    out_w: usize,
    co: &Coeffs,
) -> Vec<u8> {
    if co.wrap {
        horizontal_impl::<C, true>(src, in_w, y0, rows, out_w, co)
    } else {
        horizontal_impl::<C, false>(src, in_w, y0, rows, out_w, co)
    }
}

fn horizontal_impl<const C: usize, const WRAP: bool>(
    src: &[u8],
    in_w: usize,
    y0: usize,
    rows: usize,
    out_w: usize,
    co: &Coeffs,
) -> Vec<u8> {
    let mut out = vec![0u8; rows * out_w * C];
    let in_stride = in_w * C;
    let out_stride = out_w * C;
    let mut yy = 0;
    while yy < rows {
        let srow = &src[(y0 + yy) * in_stride..(y0 + yy + 1) * in_stride];
        let orow = &mut out[yy * out_stride..(yy + 1) * out_stride];
        let mut xx = 0;
        while xx < out_w {
            let (xmin, n) = co.bounds[xx];
            let k = &co.k[xx * co.ksize..xx * co.ksize + n];
            let px = &srow[xmin * C..(xmin + n) * C];
            let mut acc = [HALF; C];
            // Plain index loops (cheap without optimisation too); the loop condition lets the
            // optimiser drop the bounds checks.
            let (mut i, mut b) = (0, 0);
            while i < k.len() && b + C <= px.len() {
                let w = k[i];
                let mut c = 0;
                while c < C {
                    acc[c] = mac::<WRAP>(acc[c], px[b + c], w);
                    c += 1;
                }
                i += 1;
                b += C;
            }
            let mut c = 0;
            while c < C {
                orow[xx * C + c] = clip8(acc[c]);
                c += 1;
            }
            xx += 1;
        }
        yy += 1;
    }
    out
}

/// Vertical pass: every output row is a weighted sum of contiguous source rows.
fn vertical(src: &[u8], row_len: usize, out_h: usize, co: &Coeffs, row_shift: usize) -> Vec<u8> {
    if co.wrap {
        vertical_impl::<true>(src, row_len, out_h, co, row_shift)
    } else {
        vertical_impl::<false>(src, row_len, out_h, co, row_shift)
    }
}

fn vertical_impl<const WRAP: bool>(
    src: &[u8],
    row_len: usize,
    out_h: usize,
    co: &Coeffs,
    row_shift: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; out_h * row_len];
    let mut acc = vec![0i32; row_len];
    let acc = &mut acc[..row_len];
    let mut yy = 0;
    while yy < out_h {
        let (ymin, n) = co.bounds[yy];
        let ymin = ymin - row_shift;
        let k = &co.k[yy * co.ksize..yy * co.ksize + n];
        acc.fill(HALF);
        let mut t = 0;
        while t < n {
            let w = k[t];
            let srow = &src[(ymin + t) * row_len..][..row_len];
            let mut i = 0;
            while i < row_len {
                acc[i] = mac::<WRAP>(acc[i], srow[i], w);
                i += 1;
            }
            t += 1;
        }
        let orow = &mut out[yy * row_len..][..row_len];
        let mut i = 0;
        while i < row_len {
            orow[i] = clip8(acc[i]);
            i += 1;
        }
        yy += 1;
    }
    out
}

/// Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
/// pixels as the width does (python-pillow/Pillow#9549); otherwise horizontal first. Found by
/// comparing `Image.resize` with explicit one-axis resizes over random sizes and all filters.
fn vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let (dw, dh) = (in_w as i64 - out_w as i64, in_h as i64 - out_h as i64);
    out_h < in_h && dh > 2 * dw
}

/// `ImagingResampleInner` for a `C`-channel 8-bit image.
fn resample<const C: usize>(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Result<Vec<u8>> {
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    let vert = precompute(in_h, out_h, filter)?;
    if need_h && need_v && vertical_first(in_w, in_h, out_w, out_h) {
        let tmp = vertical(src, in_w * C, out_h, &vert, 0);
        let horiz = precompute(in_w, out_w, filter)?;
        return Ok(horizontal::<C>(&tmp, in_w, 0, out_h, out_w, &horiz));
    }
    // First and one-past-last source rows the vertical pass reads.
    let ybox_first = vert.bounds.first().map_or(0, |b| b.0);
    let ybox_last = vert.bounds.last().map_or(0, |b| b.0 + b.1);
    let mut cur: Option<Vec<u8>> = None;
    let mut shift = 0;
    if need_h {
        let horiz = precompute(in_w, out_w, filter)?;
        let rows = ybox_last.saturating_sub(ybox_first);
        cur = Some(horizontal::<C>(src, in_w, ybox_first, rows, out_w, &horiz));
        shift = ybox_first;
    }
    if need_v {
        let (data, w) = match &cur {
            Some(t) => (t.as_slice(), out_w),
            None => (src, in_w),
        };
        return Ok(vertical(data, w * C, out_h, &vert, shift));
    }
    Ok(match cur {
        Some(t) => t,
        None => src.to_vec(),
    })
}

/// `ImagingScaleAffine` as used by `resize(..., NEAREST)`.
fn nearest(src: &[u8], ch: usize, in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let a0 = f64::from(in_w as f32) / out_w as f64;
    let a4 = f64::from(in_h as f32) / out_h as f64;
    let coord = |v: f64| -> i64 {
        if v < 0.0 {
            -1
        } else {
            v as i64
        }
    };
    let mut xintab = Vec::with_capacity(out_w);
    let mut xo = 0.0 + a0 * 0.5;
    for _ in 0..out_w {
        let xin = coord(xo);
        xintab.push(if xin >= 0 && (xin as usize) < in_w {
            Some(xin as usize)
        } else {
            None
        });
        xo += a0;
    }
    let mut out = vec![0u8; out_w * out_h * ch];
    let mut yo = 0.0 + a4 * 0.5;
    for orow in out.chunks_exact_mut(out_w * ch) {
        let yi = coord(yo);
        if yi >= 0 && (yi as usize) < in_h {
            let srow = &src[yi as usize * in_w * ch..(yi as usize + 1) * in_w * ch];
            for (opx, xin) in orow.chunks_exact_mut(ch).zip(&xintab) {
                if let Some(x) = xin {
                    opx.copy_from_slice(&srow[x * ch..(x + 1) * ch]);
                }
            }
        }
        yo += a4;
    }
    out
}

#[inline(always)]
fn muldiv255(a: u32, b: u32) -> u8 {
    let t = a * b + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// `RGBA -> RGBa` / `LA -> La` (Convert.c `rgbA2rgba` / `lA2la`), in place.
fn premultiply(data: &mut [u8], ch: usize) {
    for px in data.chunks_exact_mut(ch) {
        let a = u32::from(px[ch - 1]);
        for v in &mut px[..ch - 1] {
            *v = muldiv255(u32::from(*v), a);
        }
    }
}

/// `RGBa -> RGBA` / `La -> LA` (Convert.c `rgba2rgbA` / `la2lA`), in place.
fn unpremultiply(data: &mut [u8], ch: usize) {
    for px in data.chunks_exact_mut(ch) {
        let a = u32::from(px[ch - 1]);
        if a == 0 || a == 255 {
            continue;
        }
        for v in &mut px[..ch - 1] {
            *v = (255 * u32::from(*v) / a).min(255) as u8;
        }
    }
}

/// Resizes an interleaved 8-bit image exactly as Pillow's `Image.resize(size, filter)` does for
/// mode `L` (1 channel), `LA` (2), `RGB` (3) or `RGBA` (4).
///
/// `src` holds `width * height * channels` bytes, rows top to bottom; the result holds
/// `out_width * out_height * channels` bytes.
pub fn resize_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
    filter: Filter,
) -> Result<Vec<u8>> {
    if !(1..=4).contains(&channels) {
        return Err(Error::InvalidArgument(format!(
            "resize: {channels} channels (expected 1..=4)"
        )));
    }
    if width == 0 || height == 0 || out_width == 0 || out_height == 0 {
        return Err(Error::InvalidArgument(format!(
            "resize {width}x{height} -> {out_width}x{out_height}: sizes must be nonzero"
        )));
    }
    let need = width
        .checked_mul(height)
        .and_then(|p| p.checked_mul(channels))
        .ok_or_else(|| Error::Limit(format!("image {width}x{height} too large")))?;
    if src.len() != need {
        return Err(Error::InvalidArgument(format!(
            "resize: buffer has {} bytes, {width}x{height}x{channels} needs {need}",
            src.len()
        )));
    }
    out_width
        .checked_mul(out_height)
        .and_then(|p| p.checked_mul(channels))
        .ok_or_else(|| Error::Limit(format!("resize target {out_width}x{out_height} too large")))?;
    // The intermediate image of the first pass is at most this large.
    width
        .max(out_width)
        .checked_mul(height.max(out_height))
        .and_then(|p| p.checked_mul(channels))
        .ok_or_else(|| {
            Error::Limit(format!(
                "resize {width}x{height} -> {out_width}x{out_height} too large"
            ))
        })?;
    if (out_width, out_height) == (width, height) {
        return Ok(src.to_vec());
    }
    if filter == Filter::Nearest {
        return Ok(nearest(src, channels, width, height, out_width, out_height));
    }
    let (w, h, ow, oh) = (width, height, out_width, out_height);
    match channels {
        1 => resample::<1>(src, w, h, ow, oh, filter),
        3 => resample::<3>(src, w, h, ow, oh, filter),
        _ => {
            let mut pre = src.to_vec();
            premultiply(&mut pre, channels);
            let mut out = if channels == 2 {
                resample::<2>(&pre, w, h, ow, oh, filter)?
            } else {
                resample::<4>(&pre, w, h, ow, oh, filter)?
            };
            unpremultiply(&mut out, channels);
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::image::test_util::{cases, fixture_dir, wsum64};
    use crate::processor::image::{DecodeLimits, SourceImage};

    /// `Image.resize` for every filter, mode (L, LA, RGB, RGBA) and a spread of sizes
    /// (down, up, mixed, one axis, 1x1), against Pillow 13.
    #[test]
    fn resize_matches_pillow() {
        let all = cases();
        let mut sources = std::collections::HashMap::new();
        let mut n = 0;
        for case in all["resize"].as_array().into_iter().flatten() {
            let name = case["input"].as_str().unwrap_or_default().to_string();
            let img = sources.entry(name.clone()).or_insert_with(|| {
                let p = fixture_dir().join("inputs").join(&name);
                SourceImage::open(&p, &DecodeLimits::default()).expect("decode source")
            });
            let want_ch = match case["mode"].as_str() {
                Some("L") => 1,
                Some("LA") => 2,
                Some("RGB") => 3,
                _ => 4,
            };
            assert_eq!(img.channels(), want_ch, "{name}");
            let get = |k: &str| case[k].as_u64().unwrap_or(0);
            let filter = Filter::from_pil(get("filter") as u32).expect("filter");
            let (ow, oh) = (get("width") as usize, get("height") as usize);
            let out = resize_u8(
                img.data(),
                img.width(),
                img.height(),
                want_ch,
                ow,
                oh,
                filter,
            )
            .expect("resize");
            assert_eq!(
                wsum64(&out),
                case["wsum64"].as_str().unwrap_or_default(),
                "{name} {:?} -> {ow}x{oh}",
                filter
            );
            n += 1;
        }
        assert!(n >= 200, "only {n} resize cases");
    }

    #[test]
    fn arguments_are_validated() {
        assert!(Filter::from_pil(8).is_err());
        for v in 0..8 {
            assert_eq!(Filter::from_pil(v).map(Filter::to_pil).ok(), Some(v));
        }
        let px = [1u8, 2, 3, 4, 5, 6];
        assert!(resize_u8(&px, 2, 1, 3, 4, 4, Filter::Lanczos).is_ok());
        assert!(resize_u8(&px, 2, 1, 5, 4, 4, Filter::Lanczos).is_err());
        assert!(resize_u8(&px, 2, 2, 3, 4, 4, Filter::Lanczos).is_err());
        assert!(resize_u8(&px, 2, 1, 3, 0, 4, Filter::Lanczos).is_err());
        assert!(resize_u8(&px, 0, 1, 3, 1, 1, Filter::Box).is_err());
        assert_eq!(
            resize_u8(&px, 2, 1, 3, 2, 1, Filter::Bicubic).ok(),
            Some(px.to_vec())
        );
        assert!(resize_u8(&px, 2, 1, 3, usize::MAX / 2, 4, Filter::Nearest).is_err());
    }

    #[test]
    fn pass_order_rule() {
        // Pillow 13: vertical first iff the height shrinks by more than twice the width's loss.
        assert!(vertical_first(90, 200, 44, 96));
        assert!(vertical_first(90, 200, 200, 50));
        assert!(!vertical_first(90, 200, 30, 400));
        assert!(!vertical_first(640, 480, 2048, 1536));
        assert!(!vertical_first(40, 80, 20, 40)); // 40 == 2 * 20
        assert!(vertical_first(40, 81, 20, 40));
    }

    #[test]
    fn every_filter_is_a_partition_of_unity_on_flat_images() {
        // (RGBA goes through premultiplication, which is lossy, so RGB and L only)
        let flat = vec![77u8; 13 * 9 * 3];
        for v in 0..8 {
            let f = Filter::from_pil(v).expect("filter");
            for (ow, oh) in [(5, 4), (40, 31), (13, 2), (1, 1)] {
                for ch in [1, 3] {
                    let out =
                        resize_u8(&flat[..13 * 9 * ch], 13, 9, ch, ow, oh, f).expect("resize");
                    assert!(out.iter().all(|&x| x == 77), "{f:?} {ow}x{oh}");
                }
            }
        }
    }
}
