//! Python image inputs: paths, encoded bytes, numpy arrays and PIL images.
//!
//! Paths and encoded bytes are decoded on the worker thread (GIL released) by the same decoder
//! the CLI uses. A numpy array is read in place through `__array_interface__` (no intermediate
//! Python object) and copied once into the pixel buffer the pipeline owns, while the GIL is held
//! so no Python thread can change it meanwhile; a PIL image is read through `tobytes()`.

use std::path::PathBuf;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString, PyTuple};
use smolcap::processor::image::{DecodeLimits, SourceImage};

use crate::errors::{invalid, to_pyerr};

/// An input not yet decoded.
pub(crate) enum Pending {
    /// A file to read and decode.
    Path(PathBuf),
    /// Encoded bytes (JPEG, PNG, ...).
    Bytes(Vec<u8>),
    /// Pixels already in memory.
    Ready(SourceImage),
}

impl Pending {
    /// Decodes (off the GIL), with the CLI's checks: file size, then pixels.
    pub(crate) fn load(self, lim: &DecodeLimits) -> smolcap::Result<SourceImage> {
        match self {
            Pending::Path(p) => SourceImage::open(&p, lim).map_err(|e| name_err(&p, e)),
            Pending::Bytes(b) => SourceImage::decode(&b, lim),
            Pending::Ready(img) => Ok(img),
        }
    }
}

/// Prefixes an image error with its file name, as the CLI does.
fn name_err(p: &std::path::Path, e: smolcap::Error) -> smolcap::Error {
    use smolcap::Error as E;
    let name = p.display();
    match e {
        E::Image(m) => E::Image(format!("{name}: {m}")),
        E::Limit(m) => E::Limit(format!("{name}: {m}")),
        other => other,
    }
}

/// Converts one Python object to a pending image.
pub(crate) fn pending(obj: &Bound<'_, PyAny>, lim: &DecodeLimits) -> PyResult<Pending> {
    if obj.is_instance_of::<PyString>() {
        return Ok(Pending::Path(PathBuf::from(obj.extract::<String>()?)));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Pending::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Pending::Bytes(b.to_vec()));
    }
    if obj.hasattr("__fspath__")? {
        return Ok(Pending::Path(obj.extract::<PathBuf>()?));
    }
    if obj.hasattr("__array_interface__")? {
        return Ok(Pending::Ready(from_array(obj, lim, true)?));
    }
    if obj.hasattr("tobytes")? && obj.hasattr("mode")? && obj.hasattr("size")? {
        return Ok(Pending::Ready(from_pil(obj, lim)?));
    }
    if obj.get_type().name()? == "memoryview" {
        let b: Vec<u8> = obj.call_method0("tobytes")?.extract()?;
        return Ok(Pending::Bytes(b));
    }
    Err(PyTypeError::new_err(format!(
        "an image must be a path (str or os.PathLike), encoded bytes, a numpy HxWx3 uint8 array \
         or a PIL image, not {}",
        obj.get_type().name()?
    )))
}

fn check_pixels(w: usize, h: usize, lim: &DecodeLimits) -> PyResult<()> {
    if w == 0 || h == 0 {
        return Err(invalid(format!("image has zero size ({w}x{h})")));
    }
    let px = (w as u64).saturating_mul(h as u64);
    if px > lim.max_pixels {
        return Err(to_pyerr(smolcap::Error::Limit(format!(
            "image {w}x{h} has {px} pixels, more than the limit of {}",
            lim.max_pixels
        ))));
    }
    Ok(())
}

/// A numpy (or any `__array_interface__`) uint8 array of shape (H, W), (H, W, C) with C in 1..=4.
/// Rows may be any positive distance apart (crops of a larger array are read in place); other
/// layouts are made contiguous with `numpy.ascontiguousarray` first.
fn from_array(obj: &Bound<'_, PyAny>, lim: &DecodeLimits, retry: bool) -> PyResult<SourceImage> {
    let ai = obj.getattr("__array_interface__")?;
    let ai = ai
        .cast::<PyDict>()
        .map_err(|_| invalid("__array_interface__ is not a dict"))?;
    let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        ai.get_item(k)?
            .ok_or_else(|| invalid(format!("__array_interface__ has no {k:?}")))
    };
    let typestr: String = get("typestr")?.extract()?;
    if typestr != "|u1" {
        return Err(invalid(format!(
            "image arrays must have dtype uint8, got typestr {typestr:?}"
        )));
    }
    let shape: Vec<usize> = get("shape")?.extract()?;
    let (h, w, c) = match shape.as_slice() {
        [h, w] => (*h, *w, 1),
        [h, w, c] if (1..=4).contains(c) => (*h, *w, *c),
        _ => {
            return Err(invalid(format!(
                "image arrays must have shape (H, W) or (H, W, C) with C in 1..4, got {shape:?}"
            )))
        }
    };
    check_pixels(w, h, lim)?;
    let row = w * c;
    // "strides" is optional: absent (or None) means C-contiguous.
    let strides: Option<Vec<isize>> = match ai.get_item("strides")? {
        Some(v) => v.extract()?,
        None => None,
    };
    let row_stride = match strides.as_deref() {
        None => Some(row),
        Some([rs, ps]) if *ps == 1 && *rs >= row as isize => Some(*rs as usize),
        Some([rs, ps, cs]) if *cs == 1 && *ps == c as isize && *rs >= row as isize => {
            Some(*rs as usize)
        }
        _ => None,
    };
    let data = get("data")?;
    let ptr = match data.cast::<PyTuple>() {
        Ok(t) if t.len() == 2 => t.get_item(0)?.extract::<usize>()?,
        _ => 0,
    };
    let Some(row_stride) = row_stride.filter(|_| ptr != 0) else {
        if !retry {
            return Err(invalid("could not read the array's pixels"));
        }
        let np = obj.py().import("numpy")?;
        let c = np.call_method1("ascontiguousarray", (obj,))?;
        return from_array(&c, lim, false);
    };
    let mut out = Vec::with_capacity(row * h);
    for y in 0..h {
        // SAFETY: the array interface promises `h` rows of `row` bytes starting `row_stride`
        // bytes apart at `ptr` (strides checked above); `obj` keeps the array alive and the GIL
        // is held, so no Python code can free or resize it during the copy.
        let r = unsafe { std::slice::from_raw_parts((ptr + y * row_stride) as *const u8, row) };
        out.extend_from_slice(r);
    }
    SourceImage::new(w, h, c, out).map_err(to_pyerr)
}

/// A PIL image: L, LA, RGB and RGBA are taken as they are (grayscale stays one channel, as the
/// reference processor treats it); other modes are converted the way Pillow converts them.
fn from_pil(obj: &Bound<'_, PyAny>, lim: &DecodeLimits) -> PyResult<SourceImage> {
    let mode: String = obj.getattr("mode")?.extract()?;
    let target = match mode.as_str() {
        "L" | "LA" | "RGB" | "RGBA" => None,
        "1" => Some("L"),
        "P" => {
            let info = obj.getattr("info")?;
            if info.contains("transparency")? {
                Some("RGBA")
            } else {
                Some("RGB")
            }
        }
        "PA" | "La" | "RGBa" => Some("RGBA"),
        _ => Some("RGB"),
    };
    let img = match target {
        Some(t) => obj.call_method1("convert", (t,))?,
        None => obj.clone(),
    };
    let mode: String = img.getattr("mode")?.extract()?;
    let c = match mode.as_str() {
        "L" => 1,
        "LA" => 2,
        "RGB" => 3,
        _ => 4,
    };
    let (w, h): (usize, usize) = img.getattr("size")?.extract()?;
    check_pixels(w, h, lim)?;
    let bytes = img.call_method0("tobytes")?;
    let bytes = bytes.cast::<PyBytes>()?;
    SourceImage::new(w, h, c, bytes.as_bytes().to_vec()).map_err(to_pyerr)
}
