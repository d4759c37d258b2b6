//! JPEG decoding bit-exact with Pillow (issue 25).
//!
//! Pillow's wheels decode JPEG with libjpeg-turbo's defaults: the accurate integer IDCT
//! (`JDCT_ISLOW`), fancy (triangle-filter) chroma upsampling, block smoothing for incomplete
//! progressive coefficients. smolcap links the libjpeg-turbo that the `turbojpeg-sys` crate builds
//! from its vendored source (3.1; never the system library) and calls it with the same defaults,
//! then reproduces what Pillow does around the decoder (`JpegImagePlugin.py`, `Convert.c`):
//!
//! - 1 component is mode `L`, 3 are `RGB` (libjpeg's colour-space guess: JFIF/YCbCr, Adobe RGB),
//!   4 are `CMYK` decoded by libjpeg as CMYK (YCCK converted) and always read as Adobe-inverted
//!   (`CMYK;I`), then converted to RGB with Pillow's `cmyk2rgb`;
//! - only 8-bit samples: Pillow refuses 12- and 16-bit files ("cannot handle 12-bit layers");
//! - a file that ends before the decoder is done (missing EOI included) is an error, as
//!   Pillow's "image file is truncated"; libjpeg's recoverable warnings (corrupt data, extraneous
//!   bytes) are not, as in Pillow;
//! - EXIF orientation is the caller's business ([`exif_orientation`]).

use std::ffi::CStr;

use ::image::metadata::Orientation;
use turbojpeg_sys as tj;

use super::image::DecodeLimits;
use crate::error::{Error, Result};

/// `true` when `bytes` starts like a JPEG file (Pillow's `_accept`: `FF D8 FF`).
pub(crate) fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// A decompressor handle, destroyed on drop.
struct Handle(tj::tjhandle);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

impl Handle {
    fn new() -> Result<Self> {
        // SAFETY: plain constructor; a null result is checked.
        let h = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) };
        if h.is_null() {
            return Err(Error::Image("cannot initialise the JPEG decoder".into()));
        }
        Ok(Handle(h))
    }

    fn get(&self, param: tj::TJPARAM) -> i32 {
        // SAFETY: valid handle, a parameter id from the bindings.
        unsafe { tj::tj3Get(self.0, param as i32) }
    }

    fn set(&self, param: tj::TJPARAM, value: i32) -> Result<()> {
        // SAFETY: valid handle, a parameter id from the bindings.
        if unsafe { tj::tj3Set(self.0, param as i32, value) } != 0 {
            return Err(Error::Image(format!("JPEG decoder: {}", self.message())));
        }
        Ok(())
    }

    fn message(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the library (the
        // handle's or a thread-local buffer) that stays valid until the next call on it.
        unsafe {
            let p = tj::tj3GetErrorStr(self.0);
            if p.is_null() {
                return "unknown error".into();
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }

    fn is_warning(&self) -> bool {
        // SAFETY: valid handle.
        unsafe { tj::tj3GetErrorCode(self.0) == tj::TJERR_TJERR_WARNING as i32 }
    }
}

/// Decoded pixels as Pillow holds them after `convert_to_rgb`'s first step: 1 channel (L) or 3
/// (RGB; CMYK files are converted with Pillow's `cmyk2rgb`).
pub(crate) struct JpegPixels {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// 1 or 3.
    pub channels: usize,
    /// Interleaved rows, no padding.
    pub data: Vec<u8>,
}

/// Decodes a JPEG file as Pillow does; the size limits are checked on the header before any
/// pixel buffer is allocated.
pub(crate) fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<JpegPixels> {
    let (w, h, channels, raw) = decode_native(bytes, limits)?;
    if channels == 4 {
        return Ok(JpegPixels {
            width: w,
            height: h,
            channels: 3,
            data: cmyk_inverted_to_rgb(&raw),
        });
    }
    Ok(JpegPixels {
        width: w,
        height: h,
        channels,
        data: raw,
    })
}

/// The bytes libjpeg-turbo hands Pillow (for CMYK: before Pillow's `CMYK;I` inversion):
/// `(width, height, channels, pixels)`.
pub(crate) fn decode_native(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(usize, usize, usize, Vec<u8>)> {
    limits.check_bytes(bytes.len() as u64)?;
    let len = tj::size_t::try_from(bytes.len())
        .map_err(|_| Error::Limit("JPEG file too large".into()))?;
    let d = Handle::new()?;
    // libjpeg's own guard too (an int): the header check below gives the clearer message.
    d.set(
        tj::TJPARAM_TJPARAM_MAXPIXELS,
        i32::try_from(limits.max_pixels).unwrap_or(i32::MAX),
    )?;
    // SAFETY: `bytes` is a live slice of `len` bytes; the library only reads it.
    if unsafe { tj::tj3DecompressHeader(d.0, bytes.as_ptr(), len) } != 0 {
        let msg = d.message();
        return Err(if msg.contains("Premature end") {
            truncated()
        } else {
            Error::Image(format!("JPEG: {}", strip_fn(&msg)))
        });
    }
    let (w, h) = (
        d.get(tj::TJPARAM_TJPARAM_JPEGWIDTH),
        d.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT),
    );
    let precision = d.get(tj::TJPARAM_TJPARAM_PRECISION);
    if precision != 8 {
        return Err(Error::Image(format!(
            "{precision}-bit JPEG is not supported (Pillow: \"cannot handle {precision}-bit layers\")"
        )));
    }
    let (w, h) = (u64::try_from(w).unwrap_or(0), u64::try_from(h).unwrap_or(0));
    limits.check_pixels(w, h)?;
    let (channels, pf) = match d.get(tj::TJPARAM_TJPARAM_COLORSPACE) as u32 {
        tj::TJCS_TJCS_GRAY => (1usize, tj::TJPF_TJPF_GRAY),
        tj::TJCS_TJCS_RGB | tj::TJCS_TJCS_YCbCr => (3, tj::TJPF_TJPF_RGB),
        tj::TJCS_TJCS_CMYK | tj::TJCS_TJCS_YCCK => (4, tj::TJPF_TJPF_CMYK),
        cs => return Err(Error::Image(format!("JPEG colour space {cs} unsupported"))),
    };
    let (w, h) = (w as usize, h as usize);
    let n = w
        .checked_mul(h)
        .and_then(|p| p.checked_mul(channels))
        .ok_or_else(|| Error::Limit(format!("JPEG {w}x{h} too large")))?;
    let mut out = vec![0u8; n];
    // SAFETY: `out` holds exactly width * height * channels bytes, the size tj3Decompress8
    // writes for pitch 0 (= width * pixel size) and this pixel format; `bytes` is only read.
    let rc = unsafe { tj::tj3Decompress8(d.0, bytes.as_ptr(), len, out.as_mut_ptr(), 0, pf) };
    if rc != 0 {
        let msg = d.message();
        if !d.is_warning() {
            return Err(if msg.contains("Premature end") {
                truncated()
            } else {
                Error::Image(format!("JPEG: {}", strip_fn(&msg)))
            });
        }
        // libjpeg-turbo reports its first warning. Running out of data (JWRN_JPEG_EOF, also
        // for a missing EOI) is Pillow's "image file is truncated"; other warnings (corrupt
        // entropy data, extraneous bytes) decode in Pillow too. A file whose first warning was
        // something else but that also ends early has no EOI after its first scan.
        if msg.contains("Premature end of JPEG file") || !has_eoi_after_scan(bytes) {
            return Err(truncated());
        }
    }
    Ok((w, h, channels, out))
}

fn truncated() -> Error {
    Error::Image("JPEG image file is truncated".into())
}

/// Drops TurboJPEG's `"tj3Function(): "` prefix.
fn strip_fn(msg: &str) -> &str {
    msg.split_once("(): ").map_or(msg, |(_, m)| m).trim()
}

/// `true` when an EOI marker (`FF D9`) follows the first start-of-scan marker (`FF DA`).
fn has_eoi_after_scan(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).position(|m| m == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[sos..].windows(2).any(|m| m == [0xFF, 0xD9])
}

/// Pillow's `CMYK;I` unpacking (`255 - v`) followed by `Convert.c`'s `cmyk2rgb`.
fn cmyk_inverted_to_rgb(raw: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let clip = |v: i32| v.clamp(0, 255) as u8;
    let mut out = Vec::with_capacity(raw.len() / 4 * 3);
    for p in raw.chunks_exact(4) {
        let [c, m, y, k] = [p[0], p[1], p[2], p[3]].map(|v| 255 - i32::from(v));
        let nk = 255 - k;
        out.push(clip(nk - muldiv255(c, nk)));
        out.push(clip(nk - muldiv255(m, nk)));
        out.push(clip(nk - muldiv255(y, nk)));
    }
    out
}

/// The EXIF orientation of a JPEG file as Pillow reads it (the first `APP1` `Exif\0\0`
/// segment before the first scan); `NoTransforms` when absent or invalid.
pub(crate) fn exif_orientation(bytes: &[u8]) -> Orientation {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return Orientation::NoTransforms;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            break;
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let seg = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        let Some(end) = (i + 2)
            .checked_add(seg)
            .filter(|&e| e <= bytes.len() && seg >= 2)
        else {
            break;
        };
        let body = &bytes[i + 4..end];
        if marker == 0xE1 && body.starts_with(b"Exif\0\0") {
            return Orientation::from_exif_chunk(&body[6..]).unwrap_or(Orientation::NoTransforms);
        }
        i = end;
    }
    Orientation::NoTransforms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_white_and_black() {
        // Inverted storage: 255 = no ink.
        assert_eq!(cmyk_inverted_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(cmyk_inverted_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]);
        assert_eq!(cmyk_inverted_to_rgb(&[0, 255, 255, 255]), [0, 255, 255]);
    }

    #[test]
    fn not_a_jpeg_is_an_error() {
        let lim = DecodeLimits::default();
        assert!(decode(b"\xFF\xD8\xFF\xE0garbage", &lim).is_err());
        assert!(decode(b"", &lim).is_err());
        assert!(!is_jpeg(b"\x89PNG"));
    }
}

#[cfg(test)]
mod corpus_tests {
    use super::super::image::test_util::wsum64;
    use super::*;

    /// The bytes libjpeg-turbo returns are Pillow's native-mode bytes (`L`, `RGB`, or `CMYK`
    /// after Pillow's `CMYK;I` inversion) on every corpus file Pillow opens.
    #[test]
    fn native_bytes_equal_pillow() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg");
        let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
        let meta: serde_json::Value = serde_json::from_str(&text).expect("json");
        let mut n = 0;
        for c in meta["cases"].as_array().expect("cases") {
            let Some(want) = c["native_wsum64"].as_str() else {
                continue;
            };
            let name = c["file"].as_str().unwrap_or_default();
            let bytes = std::fs::read(dir.join(name)).expect("read");
            let (_, _, ch, mut px) =
                decode_native(&bytes, &DecodeLimits::default()).expect("decode");
            if ch == 4 {
                px.iter_mut().for_each(|v| *v = 255 - *v);
            }
            assert_eq!(wsum64(&px), want, "{name} ({})", c["mode"]);
            n += 1;
        }
        assert!(n >= 100, "{n}");
    }
}
