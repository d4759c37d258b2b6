//! The image half of the Idefics3 / SmolVLM processor, bit-exact with transformers 5's PIL path
//! (`Idefics3ImageProcessorPil`, equally `SmolVLMImageProcessorPil`; not the torchvision one).
//!
//! Order of operations in the reference (transformers 5.x, `PilBackend`):
//! 1. `process_image`: `convert_to_rgb` FIRST, on the PIL image: a mode with alpha (`LA`, `RGBA`,
//!    `P`/`L`/`RGB` with a `transparency` entry) becomes `RGBA` and is alpha-composited onto
//!    opaque white (Pillow's integer `alpha_composite`), anything else is `convert("RGB")`.
//!    So every resize below runs on 3-channel `RGB` data: no `P`-mode NEAREST and no
//!    premultiplied `RGBa` path is reached (those belonged to transformers 4's order).
//! 2. `resize` so the longest edge is `size.longest_edge` (up or down; the other side is
//!    `int(long / aspect)`, rounded up to even; capped at 4096), with the configured filter.
//! 3. With splitting: resize to multiples of `max_image_size` (`resize_for_vision_encoder`), cut
//!    `rows x cols` tiles row-major and append the whole image squashed to `max x max`; without
//!    splitting: squash the image to `max x max`. Every resize is Pillow's `Image.resize` (see
//!    [`super::resample`]); a resize to the same size is a copy.
//! 4. `rescale`: `f32(f64(u8) * rescale_factor)`; `normalize`: `(x - f32(mean)) / f32(std)` in
//!    `f32`.
//!
//! Every tile has the same size (`max_image_size` squared), so `pixel_attention_mask` is all ones
//! for real tiles; when a batch mixes images with different tile counts the reference pads each
//! image's tile list with all-zero tiles whose mask is all zeros (the model drops them).

use std::borrow::Cow;
use std::io::Cursor;
use std::path::Path;

use ::image::{DynamicImage, ImageDecoder, ImageReader};
use serde_json::Value;

use super::resample::{resize_u8, Filter};
use crate::error::{Error, Result};

/// The reference's absolute cap on the resized longest edge (`MAX_IMAGE_SIZE`).
const MAX_IMAGE_SIZE: usize = 4096;

/// The image-processor settings of `preprocessor_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessorConfig {
    /// Resize so the longest edge equals `size_longest_edge` first.
    pub do_resize: bool,
    /// `size.longest_edge`.
    pub size_longest_edge: u32,
    /// `max_image_size.longest_edge`: the tile side.
    pub max_image_size: u32,
    /// Split into tiles plus a global image.
    pub do_image_splitting: bool,
    /// PIL resampling filter (0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING,
    /// 6 MKS2013, 7 MKS2021).
    pub resample: u32,
    /// Multiply by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Subtract `image_mean` and divide by `image_std`.
    pub do_normalize: bool,
    /// Per-channel mean (as `f32`, like the reference's `np.float32` array).
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation.
    pub image_std: [f32; 3],
    /// Convert to RGB (compositing transparency on white) before anything else.
    pub do_convert_rgb: bool,
    /// Batch padding with `pixel_attention_mask` (the caller's business; recorded here).
    pub do_pad: bool,
}

impl Default for ImageProcessorConfig {
    /// The class defaults of transformers' `Idefics3ImageProcessor`.
    fn default() -> Self {
        ImageProcessorConfig {
            do_resize: true,
            size_longest_edge: 4 * 364,
            max_image_size: 364,
            do_image_splitting: true,
            resample: 1,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            do_convert_rgb: true,
            do_pad: true,
        }
    }
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`; missing fields take the transformers defaults.
    pub fn from_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = crate::fsio::read_text_limited(path, crate::fsio::MAX_JSON_BYTES)?;
        Self::from_json_str(&text, path)
    }

    /// Parses the JSON text of a `preprocessor_config.json`; `path` is only used in errors.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::format(path, "expected a JSON object"))?;
        let d = ImageProcessorConfig::default();
        let bad = |field: &str, want: &str| {
            Error::format(path, format!("field `{field}`: expected {want}"))
        };
        let get_bool = |key: &str, default: bool| -> Result<bool> {
            match obj.get(key) {
                None => Ok(default),
                // `None` in the reference is falsy.
                Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(bad(key, "a boolean")),
            }
        };
        let get_edge = |key: &str, default: u32| -> Result<u32> {
            let field = format!("{key}.longest_edge");
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Object(m)) => match m.get("longest_edge") {
                    Some(Value::Number(n)) => n
                        .as_u64()
                        .filter(|&e| e >= 1)
                        .and_then(|e| u32::try_from(e).ok())
                        .ok_or_else(|| bad(&field, "a positive integer")),
                    Some(_) => Err(bad(&field, "a positive integer")),
                    None => Err(bad(
                        &field,
                        "a `longest_edge` key (height/width sizes are not supported)",
                    )),
                },
                Some(_) => Err(bad(key, "an object with `longest_edge`")),
            }
        };
        let get_triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match obj.get(key) {
                None => Ok(default),
                Some(Value::Number(n)) => {
                    let x = n
                        .as_f64()
                        .ok_or_else(|| bad(key, "a number or 3 numbers"))?;
                    Ok([x as f32; 3])
                }
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x
                            .as_f64()
                            .ok_or_else(|| bad(key, "a number or 3 numbers"))?
                            as f32;
                    }
                    Ok(out)
                }
                Some(_) => Err(bad(key, "a number or 3 numbers")),
            }
        };
        let resample = match obj.get("resample") {
            None => d.resample,
            // PilBackend.resize falls back to BILINEAR for `None`.
            Some(Value::Null) => 2,
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|&r| r <= 7)
                .map(|r| r as u32)
                .ok_or_else(|| bad("resample", "a PIL filter number 0..=7"))?,
            Some(_) => return Err(bad("resample", "a PIL filter number 0..=7")),
        };
        let rescale_factor = match obj.get("rescale_factor") {
            None => d.rescale_factor,
            Some(Value::Number(n)) => n
                .as_f64()
                .ok_or_else(|| bad("rescale_factor", "a number"))?,
            Some(_) => return Err(bad("rescale_factor", "a number")),
        };
        Ok(ImageProcessorConfig {
            do_resize: get_bool("do_resize", d.do_resize)?,
            size_longest_edge: get_edge("size", d.size_longest_edge)?,
            max_image_size: get_edge("max_image_size", d.max_image_size)?,
            do_image_splitting: get_bool("do_image_splitting", d.do_image_splitting)?,
            resample,
            do_rescale: get_bool("do_rescale", d.do_rescale)?,
            rescale_factor,
            do_normalize: get_bool("do_normalize", d.do_normalize)?,
            image_mean: get_triple("image_mean", d.image_mean)?,
            image_std: get_triple("image_std", d.image_std)?,
            do_convert_rgb: get_bool("do_convert_rgb", d.do_convert_rgb)?,
            do_pad: get_bool("do_pad", d.do_pad)?,
        })
    }
}

/// Limits checked before any pixel buffer is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Maximum `width * height` (default 64 Mpx = 2^26).
    pub max_pixels: u64,
    /// Maximum size of the encoded file (default 64 MiB).
    pub max_encoded_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 64 << 20,
            max_encoded_bytes: 64 << 20,
        }
    }
}

impl DecodeLimits {
    pub(crate) fn check_pixels(&self, width: u64, height: u64) -> Result<()> {
        if width == 0 || height == 0 {
            return Err(Error::Image(format!(
                "image has zero size ({width}x{height})"
            )));
        }
        let px = width.saturating_mul(height);
        if px > self.max_pixels {
            return Err(Error::Limit(format!(
                "image {width}x{height} has {px} pixels, more than the limit of {}",
                self.max_pixels
            )));
        }
        Ok(())
    }

    pub(crate) fn check_bytes(&self, len: u64) -> Result<()> {
        if len > self.max_encoded_bytes {
            return Err(Error::Limit(format!(
                "encoded image is {len} bytes, more than the limit of {}",
                self.max_encoded_bytes
            )));
        }
        Ok(())
    }
}

/// Pixel layout of a caller-supplied raw buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawLayout {
    /// 3 bytes per pixel: R, G, B.
    Rgb8,
    /// 4 bytes per pixel: R, G, B, A (straight, not premultiplied, alpha). The alpha is used:
    /// transparent pixels become white, as in the reference.
    Rgba8,
}

/// A decoded image kept in its native channel count (1 = L, 2 = LA, 3 = RGB, 4 = RGBA) as u8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceImage {
    width: usize,
    height: usize,
    channels: usize,
    data: Vec<u8>,
}

impl SourceImage {
    /// Wraps interleaved rows of `width * channels` bytes (no padding), checking the length.
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidArgument(format!(
                "image has zero size ({width}x{height})"
            )));
        }
        if !(1..=4).contains(&channels) {
            return Err(Error::InvalidArgument(format!(
                "{channels} channels (expected 1..=4)"
            )));
        }
        let need = width
            .checked_mul(height)
            .and_then(|p| p.checked_mul(channels))
            .ok_or_else(|| Error::Limit(format!("image {width}x{height} too large")))?;
        if data.len() != need {
            return Err(Error::InvalidArgument(format!(
                "{width}x{height}x{channels} image needs {need} bytes, got {}",
                data.len()
            )));
        }
        Ok(SourceImage {
            width,
            height,
            channels,
            data,
        })
    }

    /// Decodes JPEG/PNG/WebP/GIF (first frame)/BMP/TIFF bytes and applies the EXIF orientation,
    /// as transformers' `load_image` and `datasets`' image feature do (`ImageOps.exif_transpose`).
    ///
    /// Samples are reduced to 8 bits the way Pillow opens them: 16-bit colour (RGB, RGBA, LA)
    /// keeps the high byte; 16-bit grayscale is Pillow mode `I;16`, whose conversion to RGB
    /// saturates at 255 (so `min(v, 255)`). Palette images are expanded (to RGBA when the palette
    /// has transparency), and a `tRNS` colour key becomes an alpha channel: Pillow's
    /// `convert("RGBA")` of the same file gives the same pixels. Low-bit grayscale is scaled to
    /// 0..=255 as Pillow does.
    pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Self> {
        Self::decode_impl(bytes, limits, true)
    }

    /// Like [`SourceImage::decode`] but ignores EXIF orientation (plain `PIL.Image.open`).
    pub fn decode_unoriented(bytes: &[u8], limits: &DecodeLimits) -> Result<Self> {
        Self::decode_impl(bytes, limits, false)
    }

    fn decode_impl(bytes: &[u8], limits: &DecodeLimits, orient: bool) -> Result<Self> {
        limits.check_bytes(bytes.len() as u64)?;
        if super::jpeg::is_jpeg(bytes) {
            return Self::decode_jpeg(bytes, limits, orient);
        }
        let img_err = |e: ::image::ImageError| match e {
            ::image::ImageError::Limits(l) => Error::Limit(format!(
                "decoding needs more memory than max_pixels {} allows ({l})",
                limits.max_pixels
            )),
            e => Error::Image(e.to_string()),
        };
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::Image(e.to_string()))?;
        if reader.format().is_none() {
            return Err(Error::Image("unrecognised image format".into()));
        }
        if reader.format() == Some(::image::ImageFormat::Jpeg) && jpeg_is_truncated(bytes) {
            // The decoder would fill the missing rows with grey; Pillow refuses the file.
            return Err(Error::Image(
                "image file is truncated (the JPEG data ends before its end-of-image marker)"
                    .into(),
            ));
        }
        let mut lim = ::image::Limits::default();
        // 16-bit RGBA at the pixel limit, plus decoder scratch space.
        lim.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
        reader.limits(lim);
        let mut decoder = reader.into_decoder().map_err(img_err)?;
        let (w, h) = decoder.dimensions();
        limits.check_pixels(u64::from(w), u64::from(h))?;
        let orientation = if orient {
            decoder
                .orientation()
                .unwrap_or(::image::metadata::Orientation::NoTransforms)
        } else {
            ::image::metadata::Orientation::NoTransforms
        };
        let mut img = DynamicImage::from_decoder(decoder).map_err(img_err)?;
        img.apply_orientation(orientation);
        Self::from_dynamic(img)
    }

    /// JPEG through libjpeg-turbo, bit-exact with Pillow (see [`super::jpeg`]).
    fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits, orient: bool) -> Result<Self> {
        let px = super::jpeg::decode(bytes, limits)?;
        let orientation = if orient {
            super::jpeg::exif_orientation(bytes)
        } else {
            ::image::metadata::Orientation::NoTransforms
        };
        if orientation == ::image::metadata::Orientation::NoTransforms {
            return Self::new(px.width, px.height, px.channels, px.data);
        }
        let (w, h) = (px.width as u32, px.height as u32);
        let bad = || Error::Image("JPEG buffer size mismatch".into());
        let mut img = if px.channels == 1 {
            DynamicImage::ImageLuma8(::image::GrayImage::from_raw(w, h, px.data).ok_or_else(bad)?)
        } else {
            DynamicImage::ImageRgb8(::image::RgbImage::from_raw(w, h, px.data).ok_or_else(bad)?)
        };
        img.apply_orientation(orientation);
        Self::from_dynamic(img)
    }

    fn from_dynamic(img: DynamicImage) -> Result<Self> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let hi = |v: Vec<u16>| v.into_iter().map(|x| (x >> 8) as u8).collect::<Vec<u8>>();
        let (channels, data) = match img {
            DynamicImage::ImageLuma8(b) => (1, b.into_raw()),
            DynamicImage::ImageLumaA8(b) => (2, b.into_raw()),
            DynamicImage::ImageRgb8(b) => (3, b.into_raw()),
            DynamicImage::ImageRgba8(b) => (4, b.into_raw()),
            DynamicImage::ImageLuma16(b) => (
                1,
                b.into_raw().into_iter().map(|x| x.min(255) as u8).collect(),
            ),
            DynamicImage::ImageLumaA16(b) => (2, hi(b.into_raw())),
            DynamicImage::ImageRgb16(b) => (3, hi(b.into_raw())),
            DynamicImage::ImageRgba16(b) => (4, hi(b.into_raw())),
            // Float images (TIFF) have no Pillow counterpart: clamp to 0..=1 and scale.
            other if other.color().has_alpha() => (4, other.to_rgba8().into_raw()),
            other => (3, other.to_rgb8().into_raw()),
        };
        Self::new(w, h, channels, data)
    }

    /// Reads and decodes an image file (see [`SourceImage::decode`]); only a regular file of
    /// at most `limits.max_encoded_bytes` is read.
    pub fn open(path: impl AsRef<Path>, limits: &DecodeLimits) -> Result<Self> {
        let path = path.as_ref();
        let bytes = crate::fsio::read_limited(path, limits.max_encoded_bytes)?;
        Self::decode(&bytes, limits)
    }

    /// Copies a caller's RGB8/RGBA8 buffer whose rows start `stride_bytes` apart.
    pub fn from_raw(
        data: &[u8],
        width: u32,
        height: u32,
        stride_bytes: usize,
        layout: RawLayout,
        limits: &DecodeLimits,
    ) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidArgument(format!(
                "image has zero size ({width}x{height})"
            )));
        }
        limits.check_pixels(u64::from(width), u64::from(height))?;
        let bpp = match layout {
            RawLayout::Rgb8 => 3,
            RawLayout::Rgba8 => 4,
        };
        let (w, h) = (width as usize, height as usize);
        let row = w
            .checked_mul(bpp)
            .ok_or_else(|| Error::Limit(format!("width {width} too large")))?;
        if stride_bytes < row {
            return Err(Error::InvalidArgument(format!(
                "stride {stride_bytes} is smaller than width * {bpp} = {row}"
            )));
        }
        let need = stride_bytes
            .checked_mul(h - 1)
            .and_then(|s| s.checked_add(row))
            .ok_or_else(|| {
                Error::Limit(format!(
                    "{width}x{height} with stride {stride_bytes} too large"
                ))
            })?;
        if data.len() < need {
            return Err(Error::InvalidArgument(format!(
                "buffer has {} bytes, {width}x{height} with stride {stride_bytes} needs {need}",
                data.len()
            )));
        }
        let mut out = Vec::with_capacity(row * h);
        for y in 0..h {
            out.extend_from_slice(&data[y * stride_bytes..y * stride_bytes + row]);
        }
        Self::new(w, h, bpp, out)
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Channels per pixel (1 = L, 2 = LA, 3 = RGB, 4 = RGBA).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Interleaved pixels, rows top to bottom, no padding.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The RGB pixels transformers' `convert_to_rgb` produces from the equivalent PIL image:
    /// gray is replicated, and alpha is composited onto opaque white with Pillow's integer
    /// `alpha_composite`.
    pub fn to_rgb(&self) -> Cow<'_, [u8]> {
        match self.channels {
            3 => Cow::Borrowed(&self.data),
            1 => Cow::Owned(self.data.iter().flat_map(|&v| [v, v, v]).collect()),
            2 => Cow::Owned(
                self.data
                    .chunks_exact(2)
                    .flat_map(|p| {
                        let v = over_white(p[0], p[1]);
                        [v, v, v]
                    })
                    .collect(),
            ),
            _ => Cow::Owned(
                self.data
                    .chunks_exact(4)
                    .flat_map(|p| {
                        [
                            over_white(p[0], p[3]),
                            over_white(p[1], p[3]),
                            over_white(p[2], p[3]),
                        ]
                    })
                    .collect(),
            ),
        }
    }
}

/// One channel of Pillow's `ImagingAlphaComposite(white, src)` (AlphaComposite.c, 7-bit
/// precision); with an opaque white destination it only depends on the value and its alpha.
#[inline]
fn over_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    let (c, a) = (u32::from(c), u32::from(a));
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * 128 / outa255;
    let coef2 = 255 * 128 - coef1;
    let tmp = c * coef1 + 255 * coef2 + (0x80 << 7);
    ((((tmp >> 8) + tmp) >> 8) >> 7) as u8
}

/// `_resize_output_size_rescale_to_max_len` then `_resize_output_size_scale_below_upper_bound`.
fn longest_edge_size(height: usize, width: usize, max_len: usize) -> (usize, usize) {
    let (mut h, mut w) = (height as i64, width as i64);
    let aspect = width as f64 / height as f64;
    let max_len = max_len as i64;
    if w >= h {
        w = max_len;
        h = (w as f64 / aspect) as i64;
        if h % 2 != 0 {
            h += 1;
        }
    } else {
        h = max_len;
        w = (h as f64 * aspect) as i64;
        if w % 2 != 0 {
            w += 1;
        }
    }
    h = h.max(1);
    w = w.max(1);
    let aspect = w as f64 / h as f64;
    let cap = MAX_IMAGE_SIZE as i64;
    if w >= h && w > cap {
        w = cap;
        h = (w as f64 / aspect) as i64;
    } else if h > w && h > cap {
        h = cap;
        w = (h as f64 * aspect) as i64;
    }
    (h.max(1) as usize, w.max(1) as usize)
}

/// `resize_for_vision_encoder`'s target: both sides multiples of `m` (0 when the reference would
/// ask Pillow for an empty image).
fn vision_encoder_size(height: usize, width: usize, m: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let mf = m as f64;
    let ceil_m = |v: f64| ((v / mf).ceil() as usize) * m;
    if width >= height {
        let w = ceil_m(width as f64);
        let h = (w as f64 / aspect) as i64;
        (ceil_m(h as f64), w)
    } else {
        let h = ceil_m(height as f64);
        let w = (h as f64 * aspect) as i64;
        (h, ceil_m(w as f64))
    }
}

/// The resized, split `u8` RGB tiles before rescaling and normalisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileSet {
    /// Tiles in model order (row-major crops, then the global image), each
    /// `tile_height * tile_width * 3` bytes of interleaved RGB.
    pub tiles: Vec<Vec<u8>>,
    /// Tile height in pixels.
    pub tile_height: usize,
    /// Tile width in pixels.
    pub tile_width: usize,
    /// Split rows (`image_rows`); 0 when the image was not split.
    pub rows: usize,
    /// Split columns (`image_cols`); 0 when the image was not split.
    pub cols: usize,
}

/// The model input of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessedImage {
    /// `[num_tiles, 3, tile_height, tile_width]`, row-major.
    pub pixel_values: Vec<f32>,
    /// Number of tiles: `rows * cols + 1` when split, else 1.
    pub num_tiles: usize,
    /// Tile height in pixels (`max_image_size`).
    pub tile_height: usize,
    /// Tile width in pixels (`max_image_size`).
    pub tile_width: usize,
    /// Split rows, as the reference's `image_rows` (0 when not split: prompt gets only the
    /// global-image block).
    pub rows: usize,
    /// Split columns, as the reference's `image_cols` (0 when not split).
    pub cols: usize,
}

/// An RGB working image.
struct Rgb<'a> {
    w: usize,
    h: usize,
    data: Cow<'a, [u8]>,
}

impl Rgb<'_> {
    /// PIL `Image.resize((w, h), filter)` on an RGB image.
    fn resized(&self, h: usize, w: usize, filter: Filter) -> Result<Rgb<'static>> {
        if h == 0 || w == 0 {
            return Err(Error::InvalidArgument(format!(
                "image {}x{} would be resized to {w}x{h}",
                self.w, self.h
            )));
        }
        let data = resize_u8(&self.data, self.w, self.h, 3, w, h, filter)?;
        Ok(Rgb {
            w,
            h,
            data: Cow::Owned(data),
        })
    }

    fn crop(&self, x0: usize, y0: usize, w: usize, h: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(w * h * 3);
        for y in y0..y0 + h {
            let start = (y * self.w + x0) * 3;
            out.extend_from_slice(&self.data[start..start + w * 3]);
        }
        out
    }
}

/// The number of tiles [`resize_and_split`] makes of a `width`×`height` image, computed from
/// the sizes alone (no pixel is touched), so limits can be checked before allocating.
pub fn plan_tiles(
    width: usize,
    height: usize,
    cfg: &ImageProcessorConfig,
    longest_edge_override: Option<u32>,
) -> usize {
    let m = cfg.max_image_size as usize;
    if m == 0 || width == 0 || height == 0 {
        return 1;
    }
    let (mut h, mut w) = (height, width);
    if cfg.do_resize {
        let longest = longest_edge_override.unwrap_or(cfg.size_longest_edge) as usize;
        if longest == 0 {
            return 1;
        }
        (h, w) = longest_edge_size(h, w, longest);
    }
    if !cfg.do_image_splitting {
        return 1;
    }
    let (h, w) = vision_encoder_size(h, w, m);
    if h <= m && w <= m {
        return 1;
    }
    let rows = h.saturating_sub(m) / m + 1;
    let cols = w.saturating_sub(m) / m + 1;
    rows.saturating_mul(cols).saturating_add(1)
}

/// Steps 1–3 of the reference: RGB conversion, resizes and split, giving `u8` RGB tiles.
pub fn resize_and_split(
    img: &SourceImage,
    cfg: &ImageProcessorConfig,
    longest_edge_override: Option<u32>,
) -> Result<TileSet> {
    let filter = Filter::from_pil(cfg.resample)?;
    let m = cfg.max_image_size as usize;
    if m == 0 {
        return Err(Error::InvalidArgument(
            "max_image_size must be positive".into(),
        ));
    }
    let longest = longest_edge_override.unwrap_or(cfg.size_longest_edge) as usize;
    if cfg.do_resize && longest == 0 {
        return Err(Error::InvalidArgument(
            "size.longest_edge must be positive".into(),
        ));
    }
    let data = if cfg.do_convert_rgb {
        img.to_rgb()
    } else if img.channels() == 3 {
        Cow::Borrowed(img.data())
    } else {
        return Err(Error::InvalidArgument(format!(
            "do_convert_rgb is false and the image has {} channels; the model needs RGB",
            img.channels()
        )));
    };
    let mut cur = Rgb {
        w: img.width(),
        h: img.height(),
        data,
    };
    if cfg.do_resize {
        let (h, w) = longest_edge_size(cur.h, cur.w, longest);
        cur = cur.resized(h, w, filter)?;
    }
    if !cfg.do_image_splitting {
        let g = cur.resized(m, m, filter)?;
        return Ok(TileSet {
            tiles: vec![g.data.into_owned()],
            tile_height: m,
            tile_width: m,
            rows: 0,
            cols: 0,
        });
    }
    let (h, w) = vision_encoder_size(cur.h, cur.w, m);
    cur = cur.resized(h, w, filter)?;
    if cur.h <= m && cur.w <= m {
        return Ok(TileSet {
            tile_height: cur.h,
            tile_width: cur.w,
            tiles: vec![cur.data.into_owned()],
            rows: 0,
            cols: 0,
        });
    }
    // Both sides are multiples of m here; the reference computes (side - m) // m + 1.
    let rows = (cur.h - m) / m + 1;
    let cols = (cur.w - m) / m + 1;
    let mut tiles = Vec::with_capacity(rows * cols + 1);
    for r in 0..rows {
        for c in 0..cols {
            tiles.push(cur.crop(c * m, r * m, m, m));
        }
    }
    tiles.push(cur.resized(m, m, filter)?.data.into_owned());
    Ok(TileSet {
        tiles,
        tile_height: m,
        tile_width: m,
        rows,
        cols,
    })
}

/// Step 4 of the reference: rescale and normalise `u8` tiles into `[n, 3, H, W]` floats.
pub fn normalize_tiles(tiles: &TileSet, cfg: &ImageProcessorConfig) -> Result<ProcessedImage> {
    let (th, tw) = (tiles.tile_height, tiles.tile_width);
    let plane = th * tw;
    for t in &tiles.tiles {
        if t.len() != plane * 3 {
            return Err(Error::InvalidArgument(format!(
                "tile has {} bytes, expected {}",
                t.len(),
                plane * 3
            )));
        }
    }
    // The value depends only on (channel, byte): a lookup table is exact.
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, slot) in table.iter_mut().enumerate() {
            let mut x = if cfg.do_rescale {
                (v as f64 * cfg.rescale_factor) as f32
            } else {
                v as f32
            };
            if cfg.do_normalize {
                x = (x - cfg.image_mean[c]) / cfg.image_std[c];
            }
            *slot = x;
        }
    }
    let mut pixel_values = vec![0f32; tiles.tiles.len() * 3 * plane];
    for (t, out) in tiles
        .tiles
        .iter()
        .zip(pixel_values.chunks_exact_mut(3 * plane))
    {
        let (r, gb) = out.split_at_mut(plane);
        let (g, b) = gb.split_at_mut(plane);
        for (((px, r), g), b) in t.chunks_exact(3).zip(r).zip(g).zip(b) {
            *r = lut[0][px[0] as usize];
            *g = lut[1][px[1] as usize];
            *b = lut[2][px[2] as usize];
        }
    }
    Ok(ProcessedImage {
        pixel_values,
        num_tiles: tiles.tiles.len(),
        tile_height: th,
        tile_width: tw,
        rows: tiles.rows,
        cols: tiles.cols,
    })
}

/// Runs the whole image processor on one image; `longest_edge_override` replaces
/// `size.longest_edge` (as passing `size={"longest_edge": n}` to the reference does).
///
/// The prompt builder expands the image's `<image>` with `rows`/`cols`: a grid of
/// `<row_r_col_c>` blocks plus the global image when both are nonzero, only the global block
/// when they are 0.
pub fn preprocess(
    img: &SourceImage,
    cfg: &ImageProcessorConfig,
    longest_edge_override: Option<u32>,
) -> Result<ProcessedImage> {
    let tiles = resize_and_split(img, cfg, longest_edge_override)?;
    normalize_tiles(&tiles, cfg)
}

/// Helpers shared by this module's tests and `resample`'s.
#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;

    /// `tests/fixtures/imgproc` of the crate under test.
    pub(crate) fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imgproc")
    }

    /// The parsed `cases.json`.
    pub(crate) fn cases() -> serde_json::Value {
        let p = fixture_dir().join("cases.json");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).expect("cases.json parses")
    }

    /// `wsum64` of tools/reference/image_cases.py: `sum_i word_i * (splitmix64(i) | 1)` over
    /// little-endian u64 words (zero-padded) xor the byte length, as 16 hex digits.
    pub(crate) fn wsum64(data: &[u8]) -> String {
        let mut h = 0u64;
        for (i, chunk) in data.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            h = h.wrapping_add(u64::from_le_bytes(w).wrapping_mul(z | 1));
        }
        format!("{:016x}", h ^ data.len() as u64)
    }

    /// `wsum64` of the little-endian bytes of `v` (two floats per word), without copying.
    pub(crate) fn wsum64_f32(v: &[f32]) -> String {
        let mut h = 0u64;
        let mut i = 0u64;
        let mut j = 0;
        while j < v.len() {
            let lo = u64::from(v[j].to_bits());
            let hi = if j + 1 < v.len() {
                u64::from(v[j + 1].to_bits())
            } else {
                0
            };
            let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            h = h.wrapping_add((lo | (hi << 32)).wrapping_mul(z | 1));
            i += 1;
            j += 2;
        }
        format!("{:016x}", h ^ (v.len() as u64 * 4))
    }
}

/// Whether a JPEG stream ends before its end-of-image marker (EOI), which Pillow reports as
/// "image file is truncated". Walks the marker segments to the first scan, then the
/// entropy-coded data (where `FF` is followed by `00` or a restart marker) and any later
/// segments and scans; bytes after EOI are ignored, as Pillow ignores them.
pub fn jpeg_is_truncated(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return true;
    }
    let mut i = 2;
    let mut in_scan = false;
    loop {
        if in_scan {
            // Entropy-coded data: find the next real marker.
            while i + 1 < b.len()
                && !(b[i] == 0xFF
                    && b[i + 1] != 0
                    && !(0xD0..=0xD7).contains(&b[i + 1])
                    && b[i + 1] != 0xFF)
            {
                i += 1;
            }
            in_scan = false;
        }
        // Fill bytes (FF FF ...) may precede a marker.
        while i + 1 < b.len() && b[i] == 0xFF && b[i + 1] == 0xFF {
            i += 1;
        }
        if i + 1 >= b.len() || b[i] != 0xFF {
            return true;
        }
        let m = b[i + 1];
        i += 2;
        match m {
            0xD9 => return false,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {
                if i + 1 >= b.len() {
                    return true;
                }
                let len = usize::from(u16::from_be_bytes([b[i], b[i + 1]]));
                if len < 2 {
                    return true;
                }
                i += len;
                if i > b.len() {
                    return true;
                }
                in_scan = m == 0xDA;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{cases, fixture_dir, wsum64, wsum64_f32};
    use super::*;

    fn open(name: &str) -> SourceImage {
        let p = fixture_dir().join("inputs").join(name);
        SourceImage::open(&p, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn cfg_of(c: &Value) -> ImageProcessorConfig {
        let f = |k: &str| c[k].as_f64();
        let triple = |k: &str, d: [f32; 3]| -> [f32; 3] {
            c.get(k).and_then(|v| v.as_array()).map_or(d, |a| {
                [0, 1, 2].map(|i| a[i].as_f64().unwrap_or(f64::NAN) as f32)
            })
        };
        ImageProcessorConfig {
            do_resize: c.get("do_resize").and_then(Value::as_bool).unwrap_or(true),
            size_longest_edge: f("longest_edge").unwrap_or(0.0) as u32,
            max_image_size: f("max_image_size").unwrap_or(0.0) as u32,
            do_image_splitting: c["split"].as_bool().unwrap_or(true),
            resample: f("resample").unwrap_or(1.0) as u32,
            do_rescale: c.get("do_rescale").and_then(Value::as_bool).unwrap_or(true),
            rescale_factor: f("rescale_factor").unwrap_or(1.0 / 255.0),
            do_normalize: c
                .get("do_normalize")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            image_mean: triple("image_mean", [0.5; 3]),
            image_std: triple("image_std", [0.5; 3]),
            do_convert_rgb: true,
            do_pad: true,
        }
    }

    #[test]
    fn wsum64_known_answer() {
        // from the Python implementation
        assert_eq!(wsum64(b"abc"), "3d005b6f99b4ed4c");
        assert_eq!(wsum64(b""), "0000000000000000");
        let v = [1.5f32, -2.25, 3.0];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(wsum64_f32(&v), wsum64(&bytes));
        assert_eq!(wsum64_f32(&v[..2]), wsum64(&bytes[..8]));
    }

    /// Every input (JPEG included: libjpeg-turbo as in Pillow) decodes to the RGB bytes
    /// `convert_to_rgb` gives in the reference, with and without EXIF orientation.
    #[test]
    fn decode_matches_pil_convert_to_rgb() {
        let all = cases();
        let mut checked = 0;
        for d in all["decode"].as_array().into_iter().flatten() {
            let name = d["input"].as_str().unwrap_or_default();
            let bytes = std::fs::read(fixture_dir().join("inputs").join(name)).expect("read input");
            let lim = DecodeLimits::default();
            let img = if d["orient"].as_bool() == Some(true) {
                SourceImage::decode(&bytes, &lim)
            } else {
                SourceImage::decode_unoriented(&bytes, &lim)
            }
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (img.width() as u64, img.height() as u64),
                (
                    d["width"].as_u64().unwrap_or(0),
                    d["height"].as_u64().unwrap_or(0)
                ),
                "{name} orient={}",
                d["orient"]
            );
            let rgb = img.to_rgb();
            assert_eq!(
                wsum64(&rgb),
                d["rgb_wsum64"].as_str().unwrap_or_default(),
                "{name} (PIL mode {}, orient={}) decodes differently",
                d["pil_mode"],
                d["orient"]
            );
            checked += 1;
        }
        assert!(checked >= 50, "only {checked} decode cases");
    }

    /// JPEG: the raw RGB bytes Pillow decodes, byte for byte.
    #[test]
    fn jpeg_decode_bit_exact() {
        let all = cases();
        let mut n = 0;
        for d in all["decode"].as_array().into_iter().flatten() {
            let Some(file) = d["rgb_file"].as_str() else {
                continue;
            };
            let name = d["input"].as_str().unwrap_or_default();
            let want = std::fs::read(fixture_dir().join(file)).expect("read rgb");
            let bytes = std::fs::read(fixture_dir().join("inputs").join(name)).expect("read input");
            let lim = DecodeLimits::default();
            let img = if d["orient"].as_bool() == Some(true) {
                SourceImage::decode(&bytes, &lim)
            } else {
                SourceImage::decode_unoriented(&bytes, &lim)
            }
            .expect("decode jpeg");
            let got = img.to_rgb();
            assert_eq!(got.len(), want.len(), "{file}");
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{file}: {differ} bytes differ from Pillow's");
            n += 1;
        }
        assert!(n >= 4, "{n}");
    }

    fn check_processor_cases(heavy: bool) -> usize {
        let all = cases();
        let mut n = 0;
        for case in all["processor"].as_array().into_iter().flatten() {
            if case["heavy"].as_bool().unwrap_or(false) != heavy {
                continue;
            }
            let name = case["input"].as_str().unwrap_or_default();
            let cfg = cfg_of(&case["config"]);
            let img = open(name);
            let what = format!("{name} {}", case["config"]);
            let ts = resize_and_split(&img, &cfg, None).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                ts.rows as u64,
                case["rows"].as_u64().unwrap_or(99),
                "{what}: rows"
            );
            assert_eq!(
                ts.cols as u64,
                case["cols"].as_u64().unwrap_or(99),
                "{what}: cols"
            );
            assert_eq!(
                ts.tiles.len() as u64,
                case["num_tiles"].as_u64().unwrap_or(0),
                "{what}"
            );
            assert_eq!(
                ts.tile_height as u64,
                case["tile_height"].as_u64().unwrap_or(0),
                "{what}"
            );
            assert_eq!(
                ts.tile_width as u64,
                case["tile_width"].as_u64().unwrap_or(0),
                "{what}"
            );
            let want_tiles = case["tiles_wsum64"].as_array().cloned().unwrap_or_default();
            assert_eq!(want_tiles.len(), ts.tiles.len(), "{what}");
            for (i, (t, want)) in ts.tiles.iter().zip(&want_tiles).enumerate() {
                assert_eq!(
                    wsum64(t),
                    want.as_str().unwrap_or_default(),
                    "{what}: tile {i}"
                );
            }
            let p = normalize_tiles(&ts, &cfg).expect("normalize");
            assert_eq!(
                (p.rows, p.cols, p.num_tiles),
                (ts.rows, ts.cols, ts.tiles.len())
            );
            assert_eq!(
                wsum64_f32(&p.pixel_values),
                case["pixel_values_wsum64"].as_str().unwrap_or_default(),
                "{what}: pixel values"
            );
            let mut sum = 0f64;
            for &x in &p.pixel_values {
                sum += f64::from(x);
            }
            let want = case["pixel_values_sum"].as_f64().unwrap_or(f64::NAN);
            assert!(
                (sum - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{what}: sum {sum} vs {want}"
            );
            n += 1;
        }
        n
    }

    /// The processor on every light case (all small settings, all inputs, all filters, and
    /// SmolVLM-256M's settings on the 640x480 photo): u8 tiles identical, f32 bit-identical.
    #[test]
    fn preprocess_matches_reference() {
        let n = check_processor_cases(false);
        assert!(n >= 60, "only {n} processor cases");
    }

    /// The remaining SmolVLM-256M-setting cases (17-tile images); slow without optimisation.
    #[test]
    #[ignore = "slow in unoptimised builds; run with --ignored (or --release)"]
    fn preprocess_matches_reference_heavy() {
        assert!(check_processor_cases(true) >= 6);
    }

    /// A JPEG through the whole pipeline: pixel values within a stated tolerance.
    #[test]
    fn jpeg_pipeline_bit_exact() {
        let all = cases();
        let case = &all["jpeg"];
        let cfg = cfg_of(&case["config"]);
        let img = open(case["input"].as_str().unwrap_or_default());
        let p = preprocess(&img, &cfg, None).expect("preprocess jpeg");
        assert_eq!((p.rows, p.cols, p.num_tiles), (3, 3, 10));
        let raw =
            std::fs::read(fixture_dir().join(case["pixel_values_file"].as_str().unwrap_or("-")))
                .expect("read f32");
        let want: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(want.len(), p.pixel_values.len());
        let diffs: Vec<f32> = p
            .pixel_values
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max = diffs.iter().cloned().fold(0f32, f32::max);
        // Bit-exact decode (libjpeg-turbo) and resize (Pillow's resampler): equal floats.
        assert_eq!(max, 0.0, "jpeg pipeline: max abs diff {max}");
        assert_eq!(
            wsum64_f32(&p.pixel_values),
            case["pixel_values_wsum64"].as_str().unwrap_or("-")
        );
    }

    #[test]
    fn longest_edge_override_equals_config_change() {
        let img = open("portrait_90x200.png");
        let cfg = ImageProcessorConfig {
            size_longest_edge: 96,
            max_image_size: 32,
            ..Default::default()
        };
        let a = preprocess(&img, &cfg, Some(150)).expect("override");
        let b = preprocess(
            &img,
            &ImageProcessorConfig {
                size_longest_edge: 150,
                ..cfg.clone()
            },
            None,
        )
        .expect("config");
        assert_eq!(a, b);
        assert!(preprocess(&img, &cfg, Some(0)).is_err());
    }

    #[test]
    fn from_raw_validates_and_copies_rows() {
        let lim = DecodeLimits::default();
        // 2x2 RGBA with 3 padding bytes per row
        let data: Vec<u8> = (0..22).collect();
        let img = SourceImage::from_raw(&data, 2, 2, 11, RawLayout::Rgba8, &lim).expect("raw");
        assert_eq!(img.channels(), 4);
        assert_eq!(
            img.data(),
            &[0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
        );
        assert!(SourceImage::from_raw(&data, 2, 2, 7, RawLayout::Rgba8, &lim).is_err());
        assert!(SourceImage::from_raw(&data[..18], 2, 2, 11, RawLayout::Rgba8, &lim).is_err());
        assert!(SourceImage::from_raw(&data, 0, 2, 11, RawLayout::Rgb8, &lim).is_err());
        let tiny = DecodeLimits {
            max_pixels: 3,
            ..lim
        };
        assert!(matches!(
            SourceImage::from_raw(&data, 2, 2, 11, RawLayout::Rgba8, &tiny),
            Err(Error::Limit(_))
        ));
        let rgb = SourceImage::from_raw(&data, 2, 1, 6, RawLayout::Rgb8, &lim).expect("rgb");
        assert_eq!(rgb.data(), &[0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn decode_limits_are_checked_before_decoding() {
        let bytes = std::fs::read(fixture_dir().join("inputs/photo_640x480.png")).expect("read");
        let few_px = DecodeLimits {
            max_pixels: 640 * 480 - 1,
            ..Default::default()
        };
        assert!(matches!(
            SourceImage::decode(&bytes, &few_px),
            Err(Error::Limit(_))
        ));
        let few_bytes = DecodeLimits {
            max_encoded_bytes: 1000,
            ..Default::default()
        };
        assert!(matches!(
            SourceImage::decode(&bytes, &few_bytes),
            Err(Error::Limit(_))
        ));
        assert!(matches!(
            SourceImage::decode(b"not an image", &DecodeLimits::default()),
            Err(Error::Image(_))
        ));
        assert!(matches!(
            SourceImage::decode(&bytes[..200], &DecodeLimits::default()),
            Err(Error::Image(_))
        ));
        // A valid PNG header claiming 100000 x 100000 px (and no data) is refused as a limit.
        let huge = std::fs::read(fixture_dir().join("huge_header.png")).expect("read");
        match SourceImage::decode(&huge, &DecodeLimits::default()) {
            Err(Error::Limit(msg)) => assert!(msg.contains("100000x100000"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_from_json() {
        let text = r#"{"do_convert_rgb": true, "do_image_splitting": true, "do_normalize": true,
            "do_pad": true, "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Idefics3ImageProcessor", "image_std": [0.5, 0.5, 0.5],
            "max_image_size": {"longest_edge": 512}, "processor_class": "Idefics3Processor",
            "resample": 1, "rescale_factor": 0.00392156862745098, "size": {"longest_edge": 2048}}"#;
        let c = ImageProcessorConfig::from_json_str(text, "p.json").expect("parse");
        assert_eq!(c.size_longest_edge, 2048);
        assert_eq!(c.max_image_size, 512);
        assert_eq!(c.rescale_factor, 1.0 / 255.0);
        assert_eq!(
            ImageProcessorConfig::from_json_str("{}", "p").expect("empty"),
            ImageProcessorConfig::default()
        );
        let c =
            ImageProcessorConfig::from_json_str(r#"{"image_mean": 0.25, "resample": null}"#, "p")
                .expect("scalar");
        assert_eq!((c.image_mean, c.resample), ([0.25; 3], 2));
        for (bad, field) in [
            (r#"{"do_resize": 1}"#, "do_resize"),
            (
                r#"{"size": {"height": 3, "width": 4}}"#,
                "size.longest_edge",
            ),
            (r#"{"size": 2048}"#, "size"),
            (
                r#"{"max_image_size": {"longest_edge": 0}}"#,
                "max_image_size.longest_edge",
            ),
            (r#"{"resample": 9}"#, "resample"),
            (r#"{"image_std": [1, 2]}"#, "image_std"),
            (r#"{"rescale_factor": "x"}"#, "rescale_factor"),
        ] {
            match ImageProcessorConfig::from_json_str(bad, "p.json") {
                Err(Error::Format { msg, .. }) => {
                    assert!(msg.contains(&format!("`{field}`")), "{bad}: {msg}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            ImageProcessorConfig::from_json_str("[", "p"),
            Err(Error::Format { .. })
        ));
        assert!(matches!(
            ImageProcessorConfig::from_json("/nonexistent/p.json"),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn composite_and_sizes() {
        // Opaque pixels are unchanged, transparent ones white.
        for v in 0..=255u8 {
            assert_eq!(over_white(v, 255), v);
            assert_eq!(over_white(v, 0), 255);
        }
        assert_eq!(longest_edge_size(480, 640, 2048), (1536, 2048));
        assert_eq!(longest_edge_size(700, 3, 2048), (2048, 8));
        assert_eq!(longest_edge_size(1, 1, 8000), (4096, 4096));
        assert_eq!(vision_encoder_size(1536, 2048, 512), (1536, 2048));
    }
}
