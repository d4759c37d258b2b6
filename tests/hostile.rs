//! The bad-input corpus (issue #7): hundreds of hostile inputs, generated where sensible, each
//! asserting the specific error kind / C status, that the message names the file or field, that
//! out-params are untouched and that no file is left behind.
//!
//! Entry points and what they get:
//! - `SourceImage::decode` + `preprocess`: every supported format truncated at many offsets,
//!   bytes flipped, huge and zero dimensions written into valid headers, pixel/byte limits;
//! - `SourceImage::from_raw`: wrong stride, length, zero and huge sizes;
//! - `Weights` (safetensors): oversized / inconsistent headers, overlapping and out-of-range
//!   offsets, wrong dtype/shape, trailing bytes, truncation at every region, a file that shrinks
//!   after it was opened (must be an I/O error, never SIGBUS);
//! - `ModelConfig` (config.json): every field missing, of the wrong type, and absurd;
//! - `TextTokenizer` (tokenizer.json): truncated, corrupted, wrong types;
//! - PEFT adapters: rank/shape mismatches, unknown keys, bad dtypes, bad configs;
//! - the C API: invalid UTF-8 in every string argument, absurd params, out-params untouched;
//!   NULL for every pointer of every function, generated from `include/smolcap.h`
//!   (`hostile/nullgen.rs`, compiled and run as a C program);
//! - merges that fail leave no file behind.
//!
//! Each test prints `hostile: <entry point>: N cases`; README "Hostile input" has the table.

#![allow(clippy::type_complexity)] // case tables

mod common;
#[path = "hostile/nullgen.rs"]
mod nullgen;

#[path = "hostile_common/mod.rs"]
mod hostile_common;
use hostile_common::kind;
use std::collections::BTreeMap;
use std::ffi::{c_char, CStr, CString};
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::Mutex;

use candle_core::{DType, Device};
use common::fixture;
use serde_json::{json, Value};
use smolcap::config::{ConfigLimits, ModelConfig};
use smolcap::error::Error;
use smolcap::model::weights::Weights;
use smolcap::processor::image::{
    preprocess, DecodeLimits, ImageProcessorConfig, RawLayout, SourceImage,
};

/// Case counts per entry point (tests run in parallel; each prints its own).
static COUNTS: Mutex<BTreeMap<&'static str, usize>> = Mutex::new(BTreeMap::new());

fn count(entry: &'static str) {
    *COUNTS.lock().unwrap().entry(entry).or_insert(0) += 1;
}

fn report(entries: &[&'static str], min_total: usize) {
    let c = COUNTS.lock().unwrap();
    let mut total = 0;
    for e in entries {
        let n = c.get(e).copied().unwrap_or(0);
        total += n;
        println!("hostile: {e}: {n} cases");
    }
    assert!(total >= min_total, "only {total} cases for {entries:?}");
}

/// Runs `f`, turning a panic into a test failure that names the case.
fn no_panic<T>(case: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{case}: the library panicked: {msg}");
        }
    }
}

/// Asserts `r` is an error of kind `want` whose message contains every needle.
#[track_caller]
fn expect_err<T>(case: &str, r: smolcap::Result<T>, want: &str, needles: &[&str]) {
    match r {
        Ok(_) => panic!("{case}: expected a {want} error, got Ok"),
        Err(e) => {
            let msg = e.to_string();
            assert_eq!(kind(&e), want, "{case}: wrong error kind: {msg}");
            for n in needles {
                assert!(
                    msg.contains(n),
                    "{case}: message {msg:?} does not name {n:?}"
                );
            }
        }
    }
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-hostile-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A few deterministic pseudo-random numbers (xorshift), so cases are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Images

const FORMATS: [image::ImageFormat; 6] = [
    image::ImageFormat::Png,
    image::ImageFormat::Jpeg,
    image::ImageFormat::Gif,
    image::ImageFormat::Bmp,
    image::ImageFormat::Tiff,
    image::ImageFormat::WebP,
];

/// A valid 37×23 RGB image encoded in `fmt`.
fn encode(fmt: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(37, 23, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 3) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    let dynimg = image::DynamicImage::ImageRgb8(img);
    match fmt {
        image::ImageFormat::Gif => dynimg.to_rgba8().write_to(&mut out, fmt).unwrap(),
        _ => dynimg.write_to(&mut out, fmt).unwrap(),
    }
    out.into_inner()
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Writes `w`×`h` into the header of a valid file of format `fmt` (clamped to what the format
/// can express); `None` when the format's header could not be located.
fn with_dims(fmt: image::ImageFormat, bytes: &[u8], w: u32, h: u32) -> Option<Vec<u8>> {
    let mut b = bytes.to_vec();
    match fmt {
        image::ImageFormat::Png => {
            b[16..20].copy_from_slice(&w.to_be_bytes());
            b[20..24].copy_from_slice(&h.to_be_bytes());
            let crc = crc32(&b[12..29]);
            b[29..33].copy_from_slice(&crc.to_be_bytes());
        }
        image::ImageFormat::Gif => {
            let (w, h) = (w.min(65535) as u16, h.min(65535) as u16);
            b[6..8].copy_from_slice(&w.to_le_bytes());
            b[8..10].copy_from_slice(&h.to_le_bytes());
        }
        image::ImageFormat::Bmp => {
            b[18..22].copy_from_slice(&(w as i32).to_le_bytes());
            b[22..26].copy_from_slice(&(h as i32).to_le_bytes());
        }
        image::ImageFormat::Jpeg => {
            let i = (2..b.len() - 9)
                .find(|&i| b[i] == 0xFF && (b[i + 1] == 0xC0 || b[i + 1] == 0xC2))?;
            let (w, h) = (w.min(65535) as u16, h.min(65535) as u16);
            b[i + 5..i + 7].copy_from_slice(&h.to_be_bytes());
            b[i + 7..i + 9].copy_from_slice(&w.to_be_bytes());
        }
        image::ImageFormat::Tiff => {
            let le = &b[0..2] == b"II";
            let rd16 = |b: &[u8], i: usize| {
                let a = [b[i], b[i + 1]];
                if le {
                    u16::from_le_bytes(a)
                } else {
                    u16::from_be_bytes(a)
                }
            };
            let rd32 = |b: &[u8], i: usize| {
                let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
                if le {
                    u32::from_le_bytes(a)
                } else {
                    u32::from_be_bytes(a)
                }
            };
            let ifd = rd32(&b, 4) as usize;
            let n = rd16(&b, ifd) as usize;
            for k in 0..n {
                let e = ifd + 2 + 12 * k;
                let tag = rd16(&b, e);
                let typ = rd16(&b, e + 2);
                let v = if tag == 256 {
                    w
                } else if tag == 257 {
                    h
                } else {
                    continue;
                };
                if typ == 3 {
                    let v = v.min(65535) as u16;
                    let bytes = if le { v.to_le_bytes() } else { v.to_be_bytes() };
                    b[e + 8..e + 10].copy_from_slice(&bytes);
                } else {
                    let bytes = if le { v.to_le_bytes() } else { v.to_be_bytes() };
                    b[e + 8..e + 12].copy_from_slice(&bytes);
                }
            }
        }
        image::ImageFormat::WebP => {
            let i = b.windows(4).position(|x| x == b"VP8L")?;
            let d = i + 8; // chunk data: signature 0x2f, then 14-bit (w-1), 14-bit (h-1)
            let (w1, h1) = (w.clamp(1, 16384) - 1, h.clamp(1, 16384) - 1);
            let mut bits = u32::from_le_bytes([b[d + 1], b[d + 2], b[d + 3], b[d + 4]]);
            bits = (bits & !0x0FFF_FFFF) | (w1 & 0x3FFF) | ((h1 & 0x3FFF) << 14);
            b[d + 1..d + 5].copy_from_slice(&bits.to_le_bytes());
        }
        _ => return None,
    }
    Some(b)
}

fn tiny_cfg() -> ImageProcessorConfig {
    ImageProcessorConfig {
        size_longest_edge: 96,
        max_image_size: 32,
        ..ImageProcessorConfig::default()
    }
}

/// A decode that must fail as `want`, or (for lenient decoders on truncated data) succeed with
/// the right size; either way preprocessing what was decoded must work.
fn decode_case(case: &str, bytes: &[u8], lim: &DecodeLimits, allowed: &[&str]) {
    count("SourceImage::decode");
    let r = no_panic(case, || SourceImage::decode(bytes, lim));
    match r {
        Ok(img) => {
            assert!(
                allowed.contains(&"ok"),
                "{case}: decoded a {}x{} image from bad input",
                img.width(),
                img.height()
            );
            let p = no_panic(case, || preprocess(&img, &tiny_cfg(), None));
            assert!(p.is_ok(), "{case}: preprocess failed: {:?}", p.err());
        }
        Err(e) => {
            assert!(
                allowed.contains(&kind(&e)),
                "{case}: error kind {} not in {allowed:?}: {e}",
                kind(&e)
            );
            assert!(!e.to_string().trim().is_empty(), "{case}: empty message");
        }
    }
}

#[test]
fn images() {
    let lim = DecodeLimits::default();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for fmt in FORMATS {
        let good = encode(fmt);
        let name = format!("{fmt:?}");
        let img = SourceImage::decode(&good, &lim).unwrap();
        assert_eq!((img.width(), img.height()), (37, 23), "{name}");
        // Truncated at 24 offsets spread over the file (every header byte early on).
        let mut offs: Vec<usize> = (0..16).collect();
        offs.extend((1..=8).map(|k| good.len() * k / 9));
        for &o in &offs {
            // Lenient decoders (JPEG, GIF, BMP, WebP) may fill the missing part of the pixel data;
            // what counts is an Image error or a correctly sized image, never a crash.
            let allowed: &[&str] = if o < 8 { &["image"] } else { &["image", "ok"] };
            decode_case(
                &format!("{name} truncated at {o}"),
                &good[..o],
                &lim,
                allowed,
            );
        }
        // 20 random byte flips each.
        for k in 0..20 {
            let mut b = good.clone();
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            decode_case(
                &format!("{name} flip #{k}"),
                &b,
                &lim,
                &["image", "limit", "ok"],
            );
        }
        // Huge dimensions in the header: refused as a limit before any pixel buffer.
        for (w, h) in [
            (100_000u32, 100_000u32),
            (65_535, 65_535),
            (16_384, 16_384),
            (1, 1 << 30),
            (1 << 30, 1),
        ] {
            // Formats with 16-bit (or 14-bit) sizes cannot express a side of 2^30.
            let wide = matches!(fmt, image::ImageFormat::Png | image::ImageFormat::Bmp);
            if (w == 1 || h == 1) && !wide {
                continue;
            }
            let Some(b) = with_dims(fmt, &good, w, h) else {
                continue;
            };
            count("SourceImage::decode");
            let case = format!("{name} {w}x{h}");
            let r = no_panic(&case, || SourceImage::decode(&b, &lim));
            match r {
                Err(Error::Limit(m)) => assert!(m.contains("pixels"), "{case}: {m}"),
                // Formats that cannot express the size reject the header themselves.
                Err(Error::Image(_)) if fmt != image::ImageFormat::Png => {}
                Err(e) => panic!("{case}: expected a limit error, got {e}"),
                Ok(i) => panic!(
                    "{case}: expected a limit error, decoded {}x{}",
                    i.width(),
                    i.height()
                ),
            }
        }
        // Zero sizes.
        for (w, h) in [(0u32, 23u32), (37, 0), (0, 0)] {
            if fmt == image::ImageFormat::WebP {
                continue; // VP8L stores size - 1: zero cannot be written
            }
            let Some(b) = with_dims(fmt, &good, w, h) else {
                continue;
            };
            let case = format!("{name} {w}x{h}");
            decode_case(&case, &b, &lim, &["image"]);
        }
        // The pixel limit is enforced for every format (one pixel short).
        let tight = DecodeLimits {
            max_pixels: 37 * 23 - 1,
            ..lim
        };
        count("SourceImage::decode");
        expect_err(
            &format!("{name} pixel limit"),
            SourceImage::decode(&good, &tight),
            "limit",
            &["37x23"],
        );
        let tight = DecodeLimits {
            max_encoded_bytes: good.len() as u64 - 1,
            ..lim
        };
        count("SourceImage::decode");
        expect_err(
            &format!("{name} byte limit"),
            SourceImage::decode(&good, &tight),
            "limit",
            &["bytes"],
        );
    }
    // Not an image at all.
    for (i, b) in [
        &b""[..],
        b"\0",
        b"GIF8",
        b"\x89PNG\r\n\x1a\n",
        b"RIFF\0\0\0\0WEBP",
        b"II*\0",
        b"BM",
        b"\xff\xd8\xff",
    ]
    .iter()
    .enumerate()
    {
        decode_case(&format!("stub #{i}"), b, &lim, &["image"]);
    }
    // An image whose aspect ratio would resize one side to nothing, and one huge in tiles.
    for (w, h) in [(4000usize, 1usize), (1, 4000), (2, 3)] {
        count("preprocess");
        let img = SourceImage::new(w, h, 3, vec![128; w * h * 3]).unwrap();
        let r = no_panic("extreme aspect", || preprocess(&img, &tiny_cfg(), None));
        if let Err(e) = r {
            assert_eq!(kind(&e), "invalid", "{w}x{h}: {e}");
        }
    }
    report(&["SourceImage::decode", "preprocess"], 300);
}

#[test]
fn raw_buffers() {
    let lim = DecodeLimits::default();
    let data = vec![7u8; 4096];
    // (width, height, stride, len, layout, kind, needle)
    let cases: Vec<(u32, u32, usize, usize, RawLayout, &str, &str)> = vec![
        (0, 4, 0, 64, RawLayout::Rgb8, "invalid", "zero size"),
        (4, 0, 0, 64, RawLayout::Rgb8, "invalid", "zero size"),
        (4, 4, 11, 64, RawLayout::Rgb8, "invalid", "stride 11"),
        (4, 4, 15, 64, RawLayout::Rgba8, "invalid", "stride 15"),
        (4, 4, 12, 47, RawLayout::Rgb8, "invalid", "needs 48"),
        (4, 4, 16, 63, RawLayout::Rgba8, "invalid", "needs 64"),
        (4, 4, 100, 311, RawLayout::Rgb8, "invalid", "needs 312"),
        (
            4,
            4,
            usize::MAX / 2,
            64,
            RawLayout::Rgb8,
            "limit",
            "too large",
        ),
        (100_000, 100_000, 0, 64, RawLayout::Rgb8, "limit", "pixels"),
        (u32::MAX, 2, 0, 64, RawLayout::Rgba8, "limit", "pixels"),
    ];
    for (w, h, stride, len, layout, want, needle) in cases {
        count("SourceImage::from_raw");
        let stride = if stride == 0 { w as usize * 3 } else { stride };
        let r = no_panic("raw", || {
            SourceImage::from_raw(&data[..len.min(data.len())], w, h, stride, layout, &lim)
        });
        expect_err(
            &format!("raw {w}x{h} stride {stride} len {len}"),
            r,
            want,
            &[needle],
        );
    }
    // Every short length of a valid 5x3 RGBA buffer with padding.
    for len in 0..(3 * 24 - 4) {
        count("SourceImage::from_raw");
        let r = SourceImage::from_raw(&data[..len], 5, 3, 24, RawLayout::Rgba8, &lim);
        let want = if len >= 2 * 24 + 20 { "ok" } else { "invalid" };
        match r {
            Ok(_) => assert_eq!(want, "ok", "len {len}"),
            Err(e) => assert_eq!(kind(&e), want, "len {len}: {e}"),
        }
    }
    report(&["SourceImage::from_raw"], 60);
}

// ---------------------------------------------------------------------------------------------
// Safetensors

/// A valid safetensors file: header JSON (padded to 8 bytes) + data.
fn st_file(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

fn good_header() -> Value {
    json!({
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
        "c": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [32, 40]}
    })
}

fn open_st(dir: &Path, bytes: &[u8]) -> smolcap::Result<Weights> {
    let p = dir.join("model.safetensors");
    std::fs::write(&p, bytes).unwrap();
    Weights::from_files(&[p], DType::F32, &Device::Cpu)
}

#[test]
fn safetensors() {
    let dir = scratch("st");
    let data = vec![0x3cu8; 40];
    let good = st_file(&good_header(), &data);
    let w = open_st(&dir, &good).unwrap();
    assert_eq!(w.get_any("a").unwrap().dims(), &[2, 3]);
    let e = |c: &str, b: &[u8], want: &str, needles: &[&str]| {
        count("Weights::from_files");
        let r = no_panic(c, || open_st(&dir, b));
        expect_err(c, r.map(|_| ()), want, needles);
    };
    // Header length field.
    for (n, want, needle) in [
        (u64::MAX, "limit", "exceeds the limit"),
        (100_000_001, "limit", "exceeds the limit"),
        (1 << 40, "limit", "exceeds the limit"),
        (good.len() as u64, "format", "does not fit"),
        (good.len() as u64 - 7, "format", "does not fit"),
        (0, "format", "does not fit"),
        (1, "format", "does not fit"),
    ] {
        let mut b = good.clone();
        b[..8].copy_from_slice(&n.to_le_bytes());
        e(
            &format!("header length {n}"),
            &b,
            want,
            &["model.safetensors", needle],
        );
    }
    // Shorter than the length field itself.
    for len in 0..8 {
        e(
            &format!("file of {len} bytes"),
            &good[..len],
            "format",
            &["model.safetensors", "shorter"],
        );
    }
    // A configurable header limit.
    {
        count("Weights::from_files");
        let p = dir.join("model.safetensors");
        std::fs::write(&p, &good).unwrap();
        let r = Weights::from_files_limited(&[p], DType::F32, &Device::Cpu, 16);
        expect_err(
            "max_header_bytes 16",
            r.map(|_| ()),
            "limit",
            &["header", "16"],
        );
    }
    // Truncated anywhere after the header length: inside the header, or in the data.
    let hlen = good.len() - data.len();
    for cut in (8..good.len()).step_by(3) {
        let needle = if cut < hlen {
            "does not fit"
        } else {
            "truncated"
        };
        e(
            &format!("truncated at {cut}"),
            &good[..cut],
            "format",
            &["model.safetensors", needle],
        );
    }
    // Trailing bytes.
    for extra in [1usize, 8, 4096] {
        let mut b = good.clone();
        b.extend(std::iter::repeat_n(0u8, extra));
        e(
            &format!("{extra} trailing bytes"),
            &b,
            "format",
            &["trailing"],
        );
    }
    // Inconsistent headers.
    let mutations: Vec<(&str, Box<dyn Fn(&mut Value)>, &str)> = vec![
        (
            "overlapping offsets",
            Box::new(|h| h["b"]["data_offsets"] = json!([20, 28])),
            "invalid safetensors header",
        ),
        (
            "gap between tensors",
            Box::new(|h| h["b"]["data_offsets"] = json!([28, 36])),
            "invalid safetensors header",
        ),
        (
            "end before start",
            Box::new(|h| h["c"]["data_offsets"] = json!([32, 30])),
            "invalid safetensors header",
        ),
        (
            "offsets past the data",
            Box::new(|h| h["c"]["data_offsets"] = json!([32, 4000])),
            "invalid safetensors header",
        ),
        (
            "huge offsets",
            Box::new(|h| h["c"]["data_offsets"] = json!([32, u64::MAX])),
            "invalid safetensors header",
        ),
        (
            "negative offset",
            Box::new(|h| h["a"]["data_offsets"] = json!([-1, 24])),
            "invalid safetensors header",
        ),
        (
            "string offset",
            Box::new(|h| h["a"]["data_offsets"] = json!(["0", 24])),
            "invalid safetensors header",
        ),
        (
            "three offsets",
            Box::new(|h| h["a"]["data_offsets"] = json!([0, 12, 24])),
            "invalid safetensors header",
        ),
        (
            "unknown dtype",
            Box::new(|h| h["a"]["dtype"] = json!("F99")),
            "invalid safetensors header",
        ),
        (
            "dtype not a string",
            Box::new(|h| h["a"]["dtype"] = json!(5)),
            "invalid safetensors header",
        ),
        (
            "shape too big",
            Box::new(|h| h["a"]["shape"] = json!([2, 4])),
            "invalid safetensors header",
        ),
        (
            "shape too small",
            Box::new(|h| h["a"]["shape"] = json!([2, 2])),
            "invalid safetensors header",
        ),
        (
            "shape overflow",
            Box::new(|h| h["a"]["shape"] = json!([u64::MAX, u64::MAX])),
            "invalid safetensors header",
        ),
        (
            "negative dim",
            Box::new(|h| h["a"]["shape"] = json!([-2, 3])),
            "invalid safetensors header",
        ),
        (
            "shape not a list",
            Box::new(|h| h["a"]["shape"] = json!("2x3")),
            "invalid safetensors header",
        ),
        (
            "missing dtype",
            Box::new(|h| {
                h["a"].as_object_mut().unwrap().remove("dtype");
            }),
            "invalid safetensors header",
        ),
        (
            "missing shape",
            Box::new(|h| {
                h["a"].as_object_mut().unwrap().remove("shape");
            }),
            "invalid safetensors header",
        ),
        (
            "missing offsets",
            Box::new(|h| {
                h["a"].as_object_mut().unwrap().remove("data_offsets");
            }),
            "invalid safetensors header",
        ),
        (
            "tensor not an object",
            Box::new(|h| h["a"] = json!([1, 2])),
            "invalid safetensors header",
        ),
        (
            "metadata not strings",
            Box::new(|h| h["__metadata__"] = json!({"format": 1})),
            "invalid safetensors header",
        ),
        (
            "root is a list",
            Box::new(|h| *h = json!([1, 2, 3])),
            "invalid safetensors header",
        ),
    ];
    for (name, m, needle) in &mutations {
        let mut h = good_header();
        m(&mut h);
        e(
            name,
            &st_file(&h, &data),
            "format",
            &["model.safetensors", needle],
        );
    }
    // Header bytes that are not JSON / not UTF-8.
    for (i, junk) in [
        &b"{\"a\":"[..],
        b"\xff\xfe{}   ",
        b"        ",
        b"nulllll ",
        b"{}}}}}}}",
    ]
    .iter()
    .enumerate()
    {
        let mut b = (junk.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(junk);
        e(
            &format!("junk header #{i}"),
            &b,
            "format",
            &["model.safetensors", "header"],
        );
    }
    // Valid file, wrong dtype / shape for what the model asks.
    {
        let h = json!({"i": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]},
                       "f": {"dtype": "F32", "shape": [6], "data_offsets": [24, 48]}});
        let w = open_st(&dir, &st_file(&h, &[0u8; 48])).unwrap();
        count("Weights::get");
        expect_err(
            "integer weight",
            w.get("i", &[3]),
            "format",
            &["tensor i", "dtype"],
        );
        count("Weights::get");
        expect_err(
            "wrong shape",
            w.get("f", &[2, 3]),
            "format",
            &["tensor f", "[2, 3]"],
        );
        count("Weights::get");
        expect_err(
            "missing tensor",
            w.get("nope", &[1]),
            "format",
            &["missing tensor nope"],
        );
        let h = json!({"u": {"dtype": "U16", "shape": [2], "data_offsets": [0, 4]}});
        let w = open_st(&dir, &st_file(&h, &[0u8; 4])).unwrap();
        count("Weights::get");
        expect_err(
            "unsupported dtype",
            w.get_any("u"),
            "format",
            &["tensor u", "dtype"],
        );
    }
    // A file that shrinks after it was opened: an I/O error, never SIGBUS.
    for keep in [0usize, 8, hlen, hlen + 20] {
        count("Weights::get");
        let p = dir.join(format!("shrink-{keep}.safetensors"));
        std::fs::write(&p, &good).unwrap();
        let w = Weights::from_files(std::slice::from_ref(&p), DType::F32, &Device::Cpu).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(keep as u64)
            .unwrap();
        let r = no_panic("shrunk file", || (w.get_any("c"), w.raw("a")));
        expect_err(&format!("file shrunk to {keep}"), r.0, "io", &["shrink"]);
        expect_err(
            &format!("file shrunk to {keep} (raw)"),
            r.1.map(|_| ()),
            "io",
            &["shrink"],
        );
    }
    // Sharded checkpoints: a tensor in two shards, a shard name escaping the directory.
    {
        let d = scratch("st-shards");
        std::fs::write(d.join("s1.safetensors"), &good).unwrap();
        std::fs::write(d.join("s2.safetensors"), &good).unwrap();
        count("Weights::open");
        let idx = json!({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}});
        std::fs::write(d.join("model.safetensors.index.json"), idx.to_string()).unwrap();
        expect_err(
            "duplicate across shards",
            Weights::open(&d, DType::F32, &Device::Cpu).map(|_| ()),
            "format",
            &["also present in"],
        );
        for (i, bad) in [
            json!({"weight_map": {"a": "../x.safetensors"}}),
            json!({"weight_map": {"a": "/etc/passwd"}}),
            json!({"weight_map": {}}),
            json!({"weight_map": []}),
            json!({"weight_map": {"a": 5}}),
            json!([]),
        ]
        .iter()
        .enumerate()
        {
            count("Weights::open");
            std::fs::write(d.join("model.safetensors.index.json"), bad.to_string()).unwrap();
            expect_err(
                &format!("bad index #{i}"),
                Weights::open(&d, DType::F32, &Device::Cpu).map(|_| ()),
                "format",
                &["model.safetensors.index.json", "weight_map"],
            );
        }
        count("Weights::open");
        std::fs::write(
            d.join("model.safetensors.index.json"),
            json!({"weight_map": {"a": "missing.safetensors"}}).to_string(),
        )
        .unwrap();
        expect_err(
            "missing shard",
            Weights::open(&d, DType::F32, &Device::Cpu).map(|_| ()),
            "io",
            &["missing.safetensors"],
        );
        let _ = std::fs::remove_dir_all(&d);
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(
        &["Weights::from_files", "Weights::get", "Weights::open"],
        100,
    );
}

// ---------------------------------------------------------------------------------------------
// config.json

fn fixture_config() -> Value {
    let p = fixture("tiny-idefics3/config.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn set_path(v: &mut Value, path: &str, x: Option<Value>) {
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = v;
    for p in &parts[..parts.len() - 1] {
        cur = cur.get_mut(*p).unwrap();
    }
    let last = parts[parts.len() - 1];
    let o = cur.as_object_mut().unwrap();
    match x {
        Some(x) => {
            o.insert(last.to_string(), x);
        }
        None => {
            o.remove(last);
        }
    }
}

#[test]
fn config_json() {
    let lim = ConfigLimits::default();
    let path = Path::new("/models/x/config.json");
    let base = fixture_config();
    ModelConfig::from_json(&base, path, &lim).unwrap();
    let required = [
        "vision_config.hidden_size",
        "vision_config.num_attention_heads",
        "vision_config.image_size",
        "vision_config.patch_size",
        "text_config.hidden_size",
        "text_config.num_attention_heads",
        "text_config.intermediate_size",
        "text_config.num_hidden_layers",
    ];
    let numeric = [
        "vision_config.hidden_size",
        "vision_config.intermediate_size",
        "vision_config.num_hidden_layers",
        "vision_config.num_attention_heads",
        "vision_config.image_size",
        "vision_config.patch_size",
        "vision_config.num_channels",
        "text_config.hidden_size",
        "text_config.intermediate_size",
        "text_config.num_hidden_layers",
        "text_config.num_attention_heads",
        "text_config.num_key_value_heads",
        "text_config.vocab_size",
        "text_config.head_dim",
        "text_config.max_position_embeddings",
        "scale_factor",
        "image_token_id",
    ];
    let check = |case: String, v: &Value, want: &str, field: &str| {
        count("ModelConfig::from_json");
        let r = no_panic(&case, || ModelConfig::from_json(v, path, &lim));
        let leaf = field.rsplit('.').next().unwrap_or(field);
        expect_err(&case, r.map(|_| ()), want, &["config.json", leaf]);
    };
    for f in required {
        let mut v = base.clone();
        set_path(&mut v, f, None);
        check(format!("missing {f}"), &v, "format", f);
    }
    for f in numeric {
        for (label, bad) in [
            ("string", json!("12")),
            ("negative", json!(-4)),
            ("float", json!(2.5)),
            ("bool", json!(true)),
            ("list", json!([1])),
            ("object", json!({"a": 1})),
        ] {
            let mut v = base.clone();
            set_path(&mut v, f, Some(bad));
            check(format!("{f} as {label}"), &v, "format", f);
        }
        for (label, bad) in [
            ("zero", json!(0)),
            ("absurd", json!(1u64 << 40)),
            ("u64 max", json!(u64::MAX)),
        ] {
            if f == "image_token_id" && label == "zero" {
                continue; // a legal id; the processor checks it against the tokenizer
            }
            let mut v = base.clone();
            set_path(&mut v, f, Some(bad));
            count("ModelConfig::from_json");
            let case = format!("{f} {label}");
            let r = no_panic(&case, || ModelConfig::from_json(&v, path, &lim));
            // Some zeros are legal defaults-by-other-means (head_dim 0 is still checked): every
            // case must be an error naming a config.json field.
            match r {
                Err(e) => {
                    assert_eq!(kind(&e), "format", "{case}: {e}");
                    assert!(e.to_string().contains("config.json"), "{case}: {e}");
                }
                Ok(_) => panic!("{case}: accepted"),
            }
        }
    }
    for f in [
        "vision_config.layer_norm_eps",
        "text_config.rms_norm_eps",
        "text_config.rope_theta",
    ] {
        for (label, bad) in [
            ("string", json!("x")),
            ("negative", json!(-1.0)),
            ("list", json!([1.0])),
        ] {
            let mut v = base.clone();
            set_path(&mut v, f, Some(bad));
            check(format!("{f} {label}"), &v, "format", f);
        }
    }
    for (f, bad) in [
        ("text_config.attention_bias", json!("yes")),
        ("text_config.mlp_bias", json!(1)),
        ("tie_word_embeddings", json!("false")),
        ("model_type", json!(5)),
        ("text_config.rope_scaling", json!("linear")),
        ("text_config.rope_scaling", json!({"type": "linear"})),
        (
            "text_config.rope_scaling",
            json!({"type": "linear", "factor": -2.0}),
        ),
        ("vision_config", json!([1, 2])),
        ("text_config", json!("llama")),
    ] {
        let mut v = base.clone();
        set_path(&mut v, f, Some(bad.clone()));
        check(
            format!("{f} = {bad}"),
            &v,
            "format",
            f.rsplit('.').next().unwrap(),
        );
    }
    for (f, bad) in [
        ("model_type", json!("llava")),
        ("text_config.hidden_act", json!("relu6")),
        (
            "text_config.rope_scaling",
            json!({"type": "yarn", "factor": 2.0}),
        ),
    ] {
        let mut v = base.clone();
        set_path(&mut v, f, Some(bad.clone()));
        count("ModelConfig::from_json");
        expect_err(
            &format!("{f} = {bad}"),
            ModelConfig::from_json(&v, path, &lim).map(|_| ()),
            "unsupported",
            &["config.json"],
        );
    }
    // Configurable bounds, each one below the fixture's value.
    let c = ModelConfig::from_json(&base, path, &lim).unwrap();
    for (field, l) in [
        (
            "text_config.num_hidden_layers",
            ConfigLimits {
                max_layers: c.text.num_hidden_layers - 1,
                ..lim.clone()
            },
        ),
        (
            "text_config.hidden_size",
            ConfigLimits {
                max_hidden: c.text.hidden_size.max(c.vision.hidden_size) - 1,
                ..lim.clone()
            },
        ),
        (
            "vocab_size",
            ConfigLimits {
                max_vocab: c.text.vocab_size - 1,
                ..lim.clone()
            },
        ),
        (
            "num_attention_heads",
            ConfigLimits {
                max_heads: c.text.num_attention_heads.max(c.vision.num_attention_heads) - 1,
                ..lim.clone()
            },
        ),
        (
            "max_position_embeddings",
            ConfigLimits {
                max_positions: c.text.max_position_embeddings - 1,
                ..lim.clone()
            },
        ),
        (
            "image_size",
            ConfigLimits {
                max_image_size: c.vision.image_size - 1,
                ..lim.clone()
            },
        ),
    ] {
        count("ModelConfig::from_json");
        let r = ModelConfig::from_json(&base, path, &l);
        expect_err(
            &format!("limit on {field}"),
            r.map(|_| ()),
            "format",
            &["config.json", field.rsplit('.').next().unwrap()],
        );
    }
    // Damaged files: truncated JSON at many offsets, not UTF-8, too large.
    let dir = scratch("config");
    let text = serde_json::to_string_pretty(&base).unwrap();
    for k in 0..30 {
        let cut = text.len() * k / 30;
        count("ModelConfig::from_file");
        let p = dir.join("config.json");
        std::fs::write(&p, &text.as_bytes()[..cut]).unwrap();
        expect_err(
            &format!("config truncated at {cut}"),
            ModelConfig::from_file(&p, &lim).map(|_| ()),
            "format",
            &["config.json"],
        );
    }
    {
        count("ModelConfig::from_file");
        let p = dir.join("config.json");
        std::fs::write(&p, b"{\"model_type\": \"idef\xffics3\"}").unwrap();
        expect_err(
            "config not UTF-8",
            ModelConfig::from_file(&p, &lim).map(|_| ()),
            "format",
            &["config.json", "UTF-8"],
        );
        count("ModelConfig::from_file");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(65 << 20).unwrap();
        expect_err(
            "config of 65 MiB",
            ModelConfig::from_file(&p, &lim).map(|_| ()),
            "limit",
            &["config.json"],
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(&["ModelConfig::from_json", "ModelConfig::from_file"], 150);
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json, and damaged files in a whole model directory

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

#[test]
fn tokenizer_and_model_dir() {
    use smolcap::tokenizer::TextTokenizer;
    let dir = scratch("tok");
    let good = std::fs::read(fixture("tiny-idefics3/tokenizer.json")).unwrap();
    let p = dir.join("tokenizer.json");
    let mut rng = Rng(0xfeed_beef_0000_0007);
    for k in 0..25 {
        let cut = good.len() * k / 25;
        count("TextTokenizer::from_file");
        std::fs::write(&p, &good[..cut]).unwrap();
        expect_err(
            &format!("tokenizer truncated at {cut}"),
            TextTokenizer::from_file(&p).map(|_| ()),
            "format",
            &["tokenizer.json"],
        );
    }
    for k in 0..25 {
        // Structural damage: replace a JSON punctuation character.
        let mut b = good.clone();
        let positions: Vec<usize> = b
            .iter()
            .enumerate()
            .filter(|(_, c)| b"{}[]:,\"".contains(c))
            .map(|(i, _)| i)
            .collect();
        let i = positions[rng.below(positions.len())];
        b[i] = b"x\x00\xff#"[k % 4];
        count("TextTokenizer::from_file");
        std::fs::write(&p, &b).unwrap();
        let r = no_panic("tokenizer flip", || TextTokenizer::from_file(&p));
        if let Err(e) = r {
            assert_eq!(kind(&e), "format", "flip #{k}: {e}");
            assert!(e.to_string().contains("tokenizer.json"), "flip #{k}: {e}");
        }
    }
    let v: Value = serde_json::from_slice(&good).unwrap();
    for (label, f) in [
        ("model", json!(5)),
        ("model", json!({"type": "Nope"})),
        ("added_tokens", json!("x")),
        ("pre_tokenizer", json!([1])),
        ("normalizer", json!({"type": 3})),
        ("model", json!({"type": "BPE", "vocab": "x", "merges": []})),
    ] {
        let mut v = v.clone();
        v[label] = f.clone();
        count("TextTokenizer::from_file");
        std::fs::write(&p, v.to_string()).unwrap();
        expect_err(
            &format!("tokenizer {label} = {f}"),
            TextTokenizer::from_file(&p).map(|_| ()),
            "format",
            &["tokenizer.json"],
        );
    }
    // Whole model directories with one damaged file each: loading fails naming the file.
    let src = fixture("tiny-idefics3");
    let opts = smolcap::LoadOptions::default();
    let model_cases: Vec<(&str, Box<dyn Fn(&Path)>, &str, &str)> = vec![
        (
            "tokenizer.json empty",
            Box::new(|d: &Path| std::fs::write(d.join("tokenizer.json"), b"").unwrap()),
            "format",
            "tokenizer.json",
        ),
        (
            "tokenizer.json missing",
            Box::new(|d: &Path| std::fs::remove_file(d.join("tokenizer.json")).unwrap()),
            "io",
            "tokenizer.json",
        ),
        (
            "config.json missing",
            Box::new(|d: &Path| std::fs::remove_file(d.join("config.json")).unwrap()),
            "io",
            "config.json",
        ),
        (
            "weights missing",
            Box::new(|d: &Path| std::fs::remove_file(d.join("model.safetensors")).unwrap()),
            "format",
            "no model.safetensors",
        ),
        (
            "weights truncated",
            Box::new(|d: &Path| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("model.safetensors"))
                    .unwrap();
                let n = f.metadata().unwrap().len();
                f.set_len(n - 100).unwrap();
            }),
            "format",
            "model.safetensors",
        ),
        (
            "weights with a pickle",
            Box::new(|d: &Path| {
                std::fs::remove_file(d.join("model.safetensors")).unwrap();
                std::fs::write(d.join("pytorch_model.bin"), b"PK").unwrap();
            }),
            "unsupported",
            "pickle",
        ),
        (
            "preprocessor tile size",
            Box::new(|d: &Path| {
                let p = d.join("preprocessor_config.json");
                let mut v: Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                v["max_image_size"] = json!({"longest_edge": 1 << 30});
                std::fs::write(p, v.to_string()).unwrap();
            }),
            "format",
            "max_image_size",
        ),
        (
            "preprocessor resample",
            Box::new(|d: &Path| {
                let p = d.join("preprocessor_config.json");
                let mut v: Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                v["resample"] = json!(99);
                std::fs::write(p, v.to_string()).unwrap();
            }),
            "format",
            "resample",
        ),
        (
            "preprocessor not JSON",
            Box::new(|d: &Path| std::fs::write(d.join("preprocessor_config.json"), b"{").unwrap()),
            "format",
            "preprocessor_config.json",
        ),
        (
            "processor image_seq_len",
            Box::new(|d: &Path| {
                std::fs::write(d.join("processor_config.json"), b"{\"image_seq_len\": 7}").unwrap()
            }),
            "format",
            "image_seq_len",
        ),
        (
            "generation eos outside vocab",
            Box::new(|d: &Path| {
                std::fs::write(
                    d.join("generation_config.json"),
                    b"{\"eos_token_id\": 99999999}",
                )
                .unwrap()
            }),
            "format",
            "eos_token_id",
        ),
        (
            "chat template not a string",
            Box::new(|d: &Path| {
                std::fs::write(d.join("chat_template.json"), b"{\"chat_template\": 5}").unwrap()
            }),
            "format",
            "chat_template",
        ),
        (
            "weight of the wrong shape",
            Box::new(|d: &Path| {
                // Rewrite the checkpoint with one tensor transposed.
                let p = d.join("model.safetensors");
                let bytes = std::fs::read(&p).unwrap();
                let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                let mut h: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
                let key = h
                    .as_object()
                    .unwrap()
                    .keys()
                    .find(|k| k.ends_with("gate_proj.weight"))
                    .unwrap()
                    .clone();
                let s = h[&key]["shape"].clone();
                let (a, b) = (s[0].as_u64().unwrap(), s[1].as_u64().unwrap());
                assert_ne!(a, b);
                h[&key]["shape"] = json!([b, a]);
                let mut out = Vec::new();
                let mut hb = serde_json::to_vec(&h).unwrap();
                while !hb.len().is_multiple_of(8) {
                    hb.push(b' ');
                }
                out.extend_from_slice(&(hb.len() as u64).to_le_bytes());
                out.extend_from_slice(&hb);
                out.extend_from_slice(&bytes[8 + n..]);
                std::fs::write(&p, out).unwrap();
            }),
            "format",
            "gate_proj.weight",
        ),
    ];
    for (name, damage, want, needle) in &model_cases {
        count("Model::load_dir");
        let d = dir.join("model");
        let _ = std::fs::remove_dir_all(&d);
        copy_dir(&src, &d);
        damage(&d);
        let r = no_panic(name, || smolcap::Model::load_dir(&d, &opts));
        expect_err(name, r.map(|_| ()), want, &[needle]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(&["TextTokenizer::from_file", "Model::load_dir"], 60);
}

// ---------------------------------------------------------------------------------------------
// PEFT adapters

#[test]
fn adapters() {
    use smolcap::lora::peft::Adapter;
    let w = Weights::open(&fixture("tiny-idefics3"), DType::F32, &Device::Cpu).unwrap();
    let shapes = w.linear_shapes();
    let (module, &(in_dim, out_dim, _)) = shapes
        .iter()
        .find(|(k, _)| k.ends_with("text_model.layers.0.self_attn.q_proj"))
        .unwrap();
    let module = module.clone();
    let dir = scratch("adapters");
    let cfg_ok =
        json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]});
    let a_key = format!("base_model.model.{module}.lora_A.weight");
    let b_key = format!("base_model.model.{module}.lora_B.weight");
    let write = |cfg: &Value, tensors: &[(&str, &str, Vec<usize>)]| -> PathBuf {
        let d = dir.join("a");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("adapter_config.json"), cfg.to_string()).unwrap();
        let mut h = serde_json::Map::new();
        let mut off = 0usize;
        for (name, dt, shape) in tensors {
            let size = match *dt {
                "U8" => 1,
                "F16" | "BF16" => 2,
                "I64" | "F64" => 8,
                _ => 4,
            };
            let n: usize = shape.iter().product::<usize>() * size;
            h.insert(
                name.to_string(),
                json!({"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}),
            );
            off += n;
        }
        std::fs::write(
            d.join("adapter_model.safetensors"),
            st_file(&Value::Object(h), &vec![0u8; off]),
        )
        .unwrap();
        d
    };
    let load = |d: &Path| Adapter::load_with_shapes(d, &shapes, &Device::Cpu);
    let good = write(
        &cfg_ok,
        &[
            (&a_key, "F32", vec![2, in_dim]),
            (&b_key, "F32", vec![out_dim, 2]),
        ],
    );
    load(&good).unwrap();
    let ak = a_key.as_str();
    let bk = b_key.as_str();
    let tensor_cases: Vec<(&str, Vec<(&str, &str, Vec<usize>)>, &str, &str)> = vec![
        (
            "rank mismatch A",
            vec![(ak, "F32", vec![4, in_dim]), (bk, "F32", vec![out_dim, 2])],
            "format",
            "lora_A",
        ),
        (
            "rank mismatch B",
            vec![(ak, "F32", vec![2, in_dim]), (bk, "F32", vec![out_dim, 4])],
            "format",
            "lora_B",
        ),
        (
            "in dim mismatch",
            vec![
                (ak, "F32", vec![2, in_dim + 1]),
                (bk, "F32", vec![out_dim, 2]),
            ],
            "format",
            "lora_A",
        ),
        (
            "out dim mismatch",
            vec![
                (ak, "F32", vec![2, in_dim]),
                (bk, "F32", vec![out_dim + 3, 2]),
            ],
            "format",
            "lora_B",
        ),
        (
            "A is 3-D",
            vec![
                (ak, "F32", vec![2, in_dim, 1]),
                (bk, "F32", vec![out_dim, 2]),
            ],
            "format",
            "lora_A",
        ),
        (
            "B is 1-D",
            vec![(ak, "F32", vec![2, in_dim]), (bk, "F32", vec![out_dim * 2])],
            "format",
            "lora_B",
        ),
        (
            "A missing",
            vec![(bk, "F32", vec![out_dim, 2])],
            "format",
            "lora_B",
        ),
        (
            "B missing",
            vec![(ak, "F32", vec![2, in_dim])],
            "format",
            "lora_B",
        ),
        (
            "integer A",
            vec![(ak, "I64", vec![2, in_dim]), (bk, "F32", vec![out_dim, 2])],
            "format",
            "dtype",
        ),
        (
            "u8 B",
            vec![(ak, "F32", vec![2, in_dim]), (bk, "U8", vec![out_dim, 2])],
            "format",
            "dtype",
        ),
        (
            "no prefix",
            vec![("model.x.lora_A.weight", "F32", vec![2, in_dim])],
            "format",
            "peft prefix",
        ),
        (
            "unknown module",
            vec![
                (
                    "base_model.model.model.nope.lora_A.weight",
                    "F32",
                    vec![2, 4],
                ),
                (
                    "base_model.model.model.nope.lora_B.weight",
                    "F32",
                    vec![4, 2],
                ),
            ],
            "format",
            "no linear module",
        ),
        (
            "unknown suffix",
            vec![("base_model.model.model.x.lora_C.other", "F32", vec![2])],
            "format",
            "not a LoRA factor",
        ),
        (
            "embedding LoRA",
            vec![("base_model.model.model.x.lora_embedding_A", "F32", vec![2])],
            "unsupported",
            "lora_embedding",
        ),
        (
            "duplicate default key",
            vec![
                (ak, "F32", vec![2, in_dim]),
                (
                    &*Box::leak(
                        a_key
                            .replace(".lora_A.weight", ".lora_A.default.weight")
                            .into_boxed_str(),
                    ),
                    "F32",
                    vec![2, in_dim],
                ),
                (bk, "F32", vec![out_dim, 2]),
            ],
            "format",
            "twice",
        ),
        ("empty adapter", vec![], "format", "no LoRA tensors"),
        (
            "saved module of the wrong shape",
            vec![(
                &*Box::leak(format!("base_model.model.{module}.weight").into_boxed_str()),
                "F32",
                vec![3, 3],
            )],
            "format",
            "shape",
        ),
    ];
    for (name, ts, want, needle) in &tensor_cases {
        count("Adapter::load");
        let d = write(&cfg_ok, ts);
        let r = no_panic(name, || load(&d));
        expect_err(name, r.map(|_| ()), want, &[needle]);
    }
    let two = [(ak, "F32", vec![2, in_dim]), (bk, "F32", vec![out_dim, 2])];
    const CFG: &str = "adapter_config.json";
    const ST: &str = "adapter_model.safetensors";
    let cfg_cases: Vec<(Value, &str, &str, &str)> = vec![
        (
            json!({"r": 0, "target_modules": ["q_proj"]}),
            "limit",
            CFG,
            "r:",
        ),
        (
            json!({"r": 5000, "target_modules": ["q_proj"]}),
            "limit",
            CFG,
            "r:",
        ),
        (
            json!({"r": u64::MAX, "target_modules": ["q_proj"]}),
            "limit",
            CFG,
            "r:",
        ),
        (
            json!({"r": -2, "target_modules": ["q_proj"]}),
            "format",
            CFG,
            "r:",
        ),
        (
            json!({"r": "2", "target_modules": ["q_proj"]}),
            "format",
            CFG,
            "r:",
        ),
        (
            json!({"r": 2.5, "target_modules": ["q_proj"]}),
            "format",
            CFG,
            "r:",
        ),
        (json!({"target_modules": ["q_proj"]}), "format", CFG, "r:"),
        (
            json!({"r": 2, "lora_alpha": "big", "target_modules": ["q_proj"]}),
            "format",
            CFG,
            "lora_alpha",
        ),
        (
            json!({"r": 2, "target_modules": 5}),
            "format",
            CFG,
            "target_modules",
        ),
        (
            json!({"r": 2, "target_modules": [5]}),
            "format",
            CFG,
            "target_modules",
        ),
        (
            json!({"r": 2, "target_modules": "("}),
            "format",
            CFG,
            "target_modules",
        ),
        (
            json!({"r": 2, "target_modules": ["k_proj"]}),
            "format",
            ST,
            "not selected",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": 0}}),
            "limit",
            CFG,
            "rank_pattern",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": 9999}}),
            "limit",
            CFG,
            "rank_pattern",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": "x"}}),
            "format",
            CFG,
            "rank_pattern",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": 4}}),
            "format",
            ST,
            "rank 4",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "rank_pattern": {"(": 4}}),
            "format",
            CFG,
            "rank_pattern",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "alpha_pattern": {"q_proj": "x"}}),
            "format",
            CFG,
            "alpha_pattern",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "alpha_pattern": {"[": 1.0}}),
            "format",
            CFG,
            "alpha_pattern",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "layers_to_transform": "0"}),
            "format",
            CFG,
            "layers_to_transform",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "layers_to_transform": [-1]}),
            "format",
            CFG,
            "layers_to_transform",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "layers_to_transform": [5]}),
            "format",
            ST,
            "not selected",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "modules_to_save": "x"}),
            "format",
            CFG,
            "modules_to_save",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "peft_type": "IA3"}),
            "unsupported",
            CFG,
            "peft_type",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "use_dora": true}),
            "unsupported",
            CFG,
            "use_dora",
        ),
        (
            json!({"r": 2, "target_modules": ["q_proj"], "bias": "all"}),
            "unsupported",
            CFG,
            "bias",
        ),
        (json!([1, 2]), "format", CFG, "(root)"),
        (json!("LORA"), "format", CFG, "(root)"),
    ];
    for (i, (cfg, want, file, needle)) in cfg_cases.iter().enumerate() {
        count("Adapter::load");
        let d = write(cfg, &two);
        let r = no_panic("adapter config", || load(&d));
        expect_err(
            &format!("adapter config #{i} {cfg}"),
            r.map(|_| ()),
            want,
            &[file, needle],
        );
    }
    // Damaged files.
    for (i, bytes) in [&b""[..], b"{", b"\xff\xfe", b"null"].iter().enumerate() {
        count("Adapter::load");
        let d = write(&cfg_ok, &two);
        std::fs::write(d.join("adapter_config.json"), bytes).unwrap();
        expect_err(
            &format!("adapter config file #{i}"),
            load(&d).map(|_| ()),
            "format",
            &["adapter_config.json"],
        );
    }
    for cut in [0usize, 4, 8, 20, 60] {
        count("Adapter::load");
        let d = write(&cfg_ok, &two);
        let p = d.join("adapter_model.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..cut.min(b.len() - 1)]).unwrap();
        expect_err(
            &format!("adapter weights truncated at {cut}"),
            load(&d).map(|_| ()),
            "format",
            &["adapter_model.safetensors"],
        );
    }
    {
        count("Adapter::load");
        let d = write(&cfg_ok, &two);
        std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap();
        std::fs::write(d.join("adapter_model.bin"), b"PK").unwrap();
        expect_err(
            "pickle adapter",
            load(&d).map(|_| ()),
            "unsupported",
            &["adapter_model.bin"],
        );
        count("Adapter::load");
        std::fs::remove_file(d.join("adapter_model.bin")).unwrap();
        expect_err(
            "no weights",
            load(&d).map(|_| ()),
            "io",
            &["adapter_model.safetensors"],
        );
        count("Adapter::load");
        expect_err(
            "no directory",
            load(&dir.join("nope")).map(|_| ()),
            "io",
            &["adapter_config.json"],
        );
        // A configurable rank limit.
        count("Adapter::load");
        let d = write(&cfg_ok, &two);
        let lim = ConfigLimits {
            max_adapter_rank: 1,
            ..ConfigLimits::default()
        };
        expect_err(
            "rank limit 1",
            Adapter::load_with_shapes_limited(&d, &shapes, &Device::Cpu, &lim).map(|_| ()),
            "limit",
            &["rank 2"],
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(&["Adapter::load"], 50);
}

// ---------------------------------------------------------------------------------------------
// Merges that fail leave nothing behind

#[test]
fn failed_merges_leave_no_file() {
    use smolcap::merge::{merge_save, MergeOptions};
    let base = fixture("tiny-idefics3");
    let adapter = smolcap::merge::load_adapter_for(&base, &fixture("adapters/text_r4_a8")).unwrap();
    let root = scratch("merge-fail");
    let cases: Vec<(&str, Box<dyn Fn(&Path) -> PathBuf>, MergeOptions, f64, &str)> = vec![
        (
            "out is a file",
            Box::new(|r: &Path| {
                let p = r.join("f");
                std::fs::write(&p, b"x").unwrap();
                p
            }),
            MergeOptions::default(),
            1.0,
            "invalid",
        ),
        (
            "out not empty",
            Box::new(|r: &Path| {
                let p = r.join("d");
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join("keep"), b"x").unwrap();
                p
            }),
            MergeOptions::default(),
            1.0,
            "invalid",
        ),
        (
            "NaN scale",
            Box::new(|r: &Path| r.join("o")),
            MergeOptions::default(),
            f64::NAN,
            "invalid",
        ),
        (
            "zero shard size",
            Box::new(|r: &Path| r.join("o")),
            MergeOptions {
                max_shard_bytes: 0,
                ..MergeOptions::default()
            },
            1.0,
            "invalid",
        ),
        (
            "out is the base",
            Box::new(|_: &Path| fixture("tiny-idefics3")),
            MergeOptions {
                overwrite: true,
                ..MergeOptions::default()
            },
            1.0,
            "invalid",
        ),
    ];
    for (name, mk, opts, scale, want) in &cases {
        count("merge_save");
        let out = mk(&root);
        let before = listing(&root);
        let base_before = listing(&base);
        let r = no_panic(name, || {
            merge_save(&base, &[(&adapter, *scale)], &out, opts, &mut |_, _| {})
        });
        expect_err(name, r.map(|_| ()), want, &[]);
        assert_eq!(listing(&root), before, "{name}: files left behind");
        assert_eq!(
            listing(&base),
            base_before,
            "{name}: base directory changed"
        );
    }
    // A base checkpoint that becomes unreadable half-way: the temp dir is removed.
    {
        count("merge_save");
        let b2 = root.join("base2");
        copy_dir(&base, &b2);
        let mut a2 = adapter.clone();
        a2.modules[0].name = "model.text_model.layers.99.self_attn.q_proj".into();
        let before = listing(&root);
        let r = merge_save(
            &b2,
            &[(&a2, 1.0)],
            &root.join("out2"),
            &MergeOptions::default(),
            &mut |_, _| {},
        );
        expect_err(
            "adapter targets a missing tensor",
            r.map(|_| ()),
            "format",
            &["layers.99"],
        );
        assert_eq!(listing(&root), before);
    }
    let _ = std::fs::remove_dir_all(&root);
    report(&["merge_save"], 6);
}

// ---------------------------------------------------------------------------------------------
// The C API: invalid UTF-8 everywhere, absurd params, out-params untouched

mod c {
    pub use smolcap::ffi::adapter::*;
    pub use smolcap::ffi::metrics::*;
    pub use smolcap::ffi::model::*;
    pub use smolcap::ffi::session::*;
    pub use smolcap::ffi::status::*;
}

fn last_error() -> String {
    // SAFETY: never NULL.
    unsafe { CStr::from_ptr(c::smolcap_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[track_caller]
fn expect_status(case: &str, st: c::smolcap_status, want: c::smolcap_status, needles: &[&str]) {
    let m = last_error();
    assert_eq!(st, want, "{case}: status {st}, wanted {want}: {m}");
    for n in needles {
        assert!(m.contains(n), "{case}: {m:?} does not name {n:?}");
    }
}

#[test]
fn c_api_utf8_and_params() {
    let bad: Vec<Vec<u8>> = vec![
        b"caf\xe9\0".to_vec(),
        b"\xff\0".to_vec(),
        b"\xc3\0".to_vec(),
        b"ok\xed\xa0\x80\0".to_vec(), // a UTF-16 surrogate
        b"\xf8\x88\x80\x80\x80\0".to_vec(),
        b"a\xe2\x82\0".to_vec(),
    ];
    let dir = CString::new(fixture("tiny-idefics3").to_str().unwrap()).unwrap();
    let adir = CString::new(fixture("adapters/text_r4_a8").to_str().unwrap()).unwrap();
    let sentinel = 0x5a5a_usize as *mut std::ffi::c_void;
    let mut m = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(
        unsafe { c::smolcap_model_load(dir.as_ptr(), null(), &mut m) },
        0,
        "{}",
        last_error()
    );
    let mut s = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(unsafe { c::smolcap_session_new(m, &mut s) }, 0);
    let png = std::fs::read(fixture("images/tiny_20x15.png")).unwrap();
    let img = c::smolcap_image {
        kind: c::SMOLCAP_IMAGE_ENCODED,
        width: 0,
        height: 0,
        data: png.as_ptr(),
        len: png.len(),
        stride: 0,
    };
    let gp = || {
        let mut p = std::mem::MaybeUninit::<c::smolcap_generate_params>::uninit();
        // SAFETY: init writes the whole struct.
        unsafe {
            c::smolcap_generate_params_init(
                p.as_mut_ptr(),
                std::mem::size_of::<c::smolcap_generate_params>(),
            );
            p.assume_init()
        }
    };
    for b in &bad {
        let sp = b.as_ptr().cast::<c_char>();
        let mut out = sentinel.cast::<c::smolcap_model>();
        count("C API (UTF-8)");
        // SAFETY: NUL-terminated byte strings.
        expect_status(
            "model_load dir",
            unsafe { c::smolcap_model_load(sp, null(), &mut out) },
            c::SMOLCAP_STATUS_UTF8,
            &["dir_or_repo"],
        );
        assert_eq!(out.cast(), sentinel);
        count("C API (UTF-8)");
        let mut lp = std::mem::MaybeUninit::<c::smolcap_load_params>::uninit();
        // SAFETY: as above.
        let mut lp = unsafe {
            c::smolcap_load_params_init(
                lp.as_mut_ptr(),
                std::mem::size_of::<c::smolcap_load_params>(),
            );
            lp.assume_init()
        };
        lp.device = sp;
        // SAFETY: as above.
        expect_status(
            "load_params.device",
            unsafe { c::smolcap_model_load(dir.as_ptr(), &lp, &mut out) },
            c::SMOLCAP_STATUS_UTF8,
            &["params.device"],
        );
        assert_eq!(out.cast(), sentinel);
        count("C API (UTF-8)");
        lp.device = null();
        lp.revision = sp;
        // SAFETY: as above.
        expect_status(
            "load_params.revision",
            unsafe { c::smolcap_model_load(dir.as_ptr(), &lp, &mut out) },
            c::SMOLCAP_STATUS_UTF8,
            &["params.revision"],
        );
        count("C API (UTF-8)");
        let mut a = sentinel.cast::<c::smolcap_adapter>();
        // SAFETY: as above.
        expect_status(
            "adapter_load dir",
            unsafe { c::smolcap_adapter_load(m, sp, &mut a) },
            c::SMOLCAP_STATUS_UTF8,
            &["dir"],
        );
        assert_eq!(a.cast(), sentinel);
        count("C API (UTF-8)");
        let mut p = gp();
        p.prompt = sp;
        p.max_new_tokens = 2;
        let mut caps = sentinel.cast::<c::smolcap_captions>();
        // SAFETY: as above.
        expect_status(
            "caption prompt",
            unsafe { c::smolcap_caption(s, &img, 1, &p, None, null_mut(), &mut caps) },
            c::SMOLCAP_STATUS_UTF8,
            &["params.prompt"],
        );
        assert_eq!(caps.cast(), sentinel);
        count("C API (UTF-8)");
        let mut nll = c::smolcap_nll {
            total: 7.0,
            mean: 7.0,
            tokens: 7,
        };
        // SAFETY: as above.
        expect_status(
            "score caption",
            unsafe { c::smolcap_session_score(s, &img, sp, null(), &mut nll) },
            c::SMOLCAP_STATUS_UTF8,
            &["caption"],
        );
        assert_eq!((nll.total, nll.tokens), (7.0, 7));
        count("C API (UTF-8)");
        let good = CString::new("a dog").unwrap();
        let cands = [sp];
        let refs = [good.as_ptr()];
        let offs = [0usize, 1];
        let mut sc = sentinel.cast::<c::smolcap_scores>();
        // SAFETY: as above.
        expect_status(
            "score cands",
            unsafe {
                c::smolcap_score_captions(
                    cands.as_ptr(),
                    1,
                    refs.as_ptr(),
                    offs.as_ptr(),
                    0,
                    &mut sc,
                )
            },
            c::SMOLCAP_STATUS_UTF8,
            &["cands[0]"],
        );
        count("C API (UTF-8)");
        let cands = [good.as_ptr()];
        let refs = [sp];
        // SAFETY: as above.
        expect_status(
            "score refs",
            unsafe {
                c::smolcap_score_captions(
                    cands.as_ptr(),
                    1,
                    refs.as_ptr(),
                    offs.as_ptr(),
                    0,
                    &mut sc,
                )
            },
            c::SMOLCAP_STATUS_UTF8,
            &["refs[0]"],
        );
        assert_eq!(sc.cast(), sentinel);
        count("C API (UTF-8)");
        let specs = [c::smolcap_adapter_spec {
            dir: sp,
            scale: 1.0,
        }];
        let out_dir = CString::new(
            std::env::temp_dir()
                .join("smolcap-hostile-never")
                .to_str()
                .unwrap(),
        )
        .unwrap();
        // SAFETY: as above.
        expect_status(
            "merge spec dir",
            unsafe {
                c::smolcap_merge_save(
                    dir.as_ptr(),
                    specs.as_ptr(),
                    1,
                    out_dir.as_ptr(),
                    null(),
                    null_mut(),
                )
            },
            c::SMOLCAP_STATUS_UTF8,
            &["specs[0].dir"],
        );
        count("C API (UTF-8)");
        let specs = [c::smolcap_adapter_spec {
            dir: adir.as_ptr(),
            scale: 1.0,
        }];
        // SAFETY: as above.
        expect_status(
            "merge out_dir",
            unsafe {
                c::smolcap_merge_save(dir.as_ptr(), specs.as_ptr(), 1, sp, null(), null_mut())
            },
            c::SMOLCAP_STATUS_UTF8,
            &["out_dir"],
        );
        count("C API (UTF-8)");
        // SAFETY: as above.
        expect_status(
            "merge base",
            unsafe {
                c::smolcap_merge_save(sp, specs.as_ptr(), 1, out_dir.as_ptr(), null(), null_mut())
            },
            c::SMOLCAP_STATUS_UTF8,
            &["base_model_dir_or_repo"],
        );
        assert!(!std::path::Path::new(out_dir.to_str().unwrap()).exists());
    }
    // Absurd generate params: each is refused with the field named, captions untouched.
    type Mut = fn(&mut c::smolcap_generate_params);
    let absurd: Vec<(&str, Mut, c::smolcap_status, &str)> = vec![
        (
            "max_new_tokens 0",
            |p| p.max_new_tokens = 0,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "max_new_tokens",
        ),
        (
            "max_new_tokens huge",
            |p| p.max_new_tokens = u32::MAX,
            c::SMOLCAP_STATUS_LIMIT,
            "max_new_tokens",
        ),
        (
            "batch 0",
            |p| p.batch_size = 0,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "batch_size",
        ),
        (
            "batch huge",
            |p| p.batch_size = 100_000,
            c::SMOLCAP_STATUS_LIMIT,
            "batch_size",
        ),
        (
            "prompt tokens 0",
            |p| p.max_prompt_tokens = 0,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "max_prompt_tokens",
        ),
        (
            "prompt tokens 5",
            |p| p.max_prompt_tokens = 5,
            c::SMOLCAP_STATUS_LIMIT,
            "max_prompt_tokens",
        ),
        (
            "vision chunk 0",
            |p| p.vision_chunk = 0,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "vision_chunk",
        ),
        (
            "pixels 0",
            |p| p.max_image_pixels = 0,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "max_image_pixels",
        ),
        (
            "pixels 10",
            |p| p.max_image_pixels = 10,
            c::SMOLCAP_STATUS_LIMIT,
            "pixels",
        ),
        (
            "bytes 10",
            |p| p.max_image_bytes = 10,
            c::SMOLCAP_STATUS_LIMIT,
            "bytes",
        ),
        (
            "kv 0",
            |p| p.max_kv_cache_bytes = 0,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "max_kv_cache_bytes",
        ),
        (
            "kv 1000",
            |p| p.max_kv_cache_bytes = 1000,
            c::SMOLCAP_STATUS_LIMIT,
            "max_kv_cache_bytes",
        ),
        (
            "strategy 9",
            |p| p.strategy = 9,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "strategy",
        ),
        (
            "prompt mode 7",
            |p| p.prompt_mode = 7,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "prompt_mode",
        ),
        (
            "beams 0",
            |p| {
                p.strategy = c::SMOLCAP_STRATEGY_BEAM;
                p.num_beams = 0
            },
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "num_beams",
        ),
        (
            "beams 1000",
            |p| {
                p.strategy = c::SMOLCAP_STRATEGY_BEAM;
                p.num_beams = 1000
            },
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "num_beams",
        ),
        (
            "early stopping 5",
            |p| {
                p.strategy = c::SMOLCAP_STRATEGY_BEAM;
                p.early_stopping = 5
            },
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "early_stopping",
        ),
        (
            "temperature NaN",
            |p| {
                p.strategy = c::SMOLCAP_STRATEGY_SAMPLE;
                p.temperature = f32::NAN
            },
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "temperature",
        ),
        (
            "temperature -1",
            |p| {
                p.strategy = c::SMOLCAP_STRATEGY_SAMPLE;
                p.temperature = -1.0
            },
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "temperature",
        ),
        (
            "top_p 2",
            |p| {
                p.strategy = c::SMOLCAP_STRATEGY_SAMPLE;
                p.top_p = 2.0
            },
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "top_p",
        ),
        (
            "top_p NaN",
            |p| {
                p.strategy = c::SMOLCAP_STRATEGY_SAMPLE;
                p.top_p = f32::NAN
            },
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "top_p",
        ),
        (
            "repetition penalty 0",
            |p| p.repetition_penalty = 0.0,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "repetition_penalty",
        ),
        (
            "repetition penalty inf",
            |p| p.repetition_penalty = f32::INFINITY,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "repetition_penalty",
        ),
        (
            "length penalty NaN",
            |p| {
                p.strategy = c::SMOLCAP_STRATEGY_BEAM;
                p.length_penalty = f32::NAN
            },
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "length_penalty",
        ),
        (
            "struct_size 3",
            |p| p.struct_size = 3,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "struct_size",
        ),
    ];
    for (name, f, want, needle) in &absurd {
        count("C API (params)");
        let mut p = gp();
        p.max_new_tokens = 2;
        f(&mut p);
        let mut caps = sentinel.cast::<c::smolcap_captions>();
        // SAFETY: valid pointers.
        let st = unsafe { c::smolcap_caption(s, &img, 1, &p, None, null_mut(), &mut caps) };
        expect_status(name, st, *want, &[needle]);
        assert_eq!(caps.cast(), sentinel, "{name}: out written");
    }
    // Absurd load params.
    type LMut = fn(&mut c::smolcap_load_params);
    let absurd_load: Vec<(&str, LMut, c::smolcap_status, &str)> = vec![
        (
            "max_layers 0",
            |p| p.max_layers = 0,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "max_layers",
        ),
        (
            "max_layers 1",
            |p| p.max_layers = 1,
            c::SMOLCAP_STATUS_FORMAT,
            "num_hidden_layers",
        ),
        (
            "max_hidden 1",
            |p| p.max_hidden_size = 1,
            c::SMOLCAP_STATUS_FORMAT,
            "hidden_size",
        ),
        (
            "max_heads 1",
            |p| p.max_heads = 1,
            c::SMOLCAP_STATUS_FORMAT,
            "heads",
        ),
        (
            "max_vocab 1",
            |p| p.max_vocab = 1,
            c::SMOLCAP_STATUS_FORMAT,
            "vocab_size",
        ),
        (
            "max_positions 1",
            |p| p.max_positions = 1,
            c::SMOLCAP_STATUS_FORMAT,
            "max_position_embeddings",
        ),
        (
            "max_image_size 1",
            |p| p.max_image_size = 1,
            c::SMOLCAP_STATUS_FORMAT,
            "image_size",
        ),
        (
            "max_header_bytes 8",
            |p| p.max_header_bytes = 8,
            c::SMOLCAP_STATUS_LIMIT,
            "header",
        ),
        (
            "max_header_bytes 0",
            |p| p.max_header_bytes = 0,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "max_header_bytes",
        ),
        (
            "max_adapter_rank 0",
            |p| p.max_adapter_rank = 0,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "max_adapter_rank",
        ),
        (
            "dtype 77",
            |p| p.dtype = 77,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "dtype",
        ),
        (
            "struct_size 2",
            |p| p.struct_size = 2,
            c::SMOLCAP_STATUS_INVALID_ARGUMENT,
            "struct_size",
        ),
    ];
    for (name, f, want, needle) in &absurd_load {
        count("C API (params)");
        let mut lp = std::mem::MaybeUninit::<c::smolcap_load_params>::uninit();
        // SAFETY: init writes the struct.
        let mut lp = unsafe {
            c::smolcap_load_params_init(
                lp.as_mut_ptr(),
                std::mem::size_of::<c::smolcap_load_params>(),
            );
            lp.assume_init()
        };
        f(&mut lp);
        let mut out = sentinel.cast::<c::smolcap_model>();
        // SAFETY: valid pointers.
        let st = unsafe { c::smolcap_model_load(dir.as_ptr(), &lp, &mut out) };
        expect_status(name, st, *want, &[needle]);
        assert_eq!(out.cast(), sentinel, "{name}: out written");
    }
    // An adapter above a model's rank limit (from load params).
    {
        count("C API (params)");
        let mut lp = std::mem::MaybeUninit::<c::smolcap_load_params>::uninit();
        // SAFETY: init writes the struct.
        let mut lp = unsafe {
            c::smolcap_load_params_init(
                lp.as_mut_ptr(),
                std::mem::size_of::<c::smolcap_load_params>(),
            );
            lp.assume_init()
        };
        lp.max_adapter_rank = 2;
        let mut m2 = null_mut();
        // SAFETY: valid pointers.
        assert_eq!(
            unsafe { c::smolcap_model_load(dir.as_ptr(), &lp, &mut m2) },
            0
        );
        let mut a = sentinel.cast::<c::smolcap_adapter>();
        // SAFETY: valid pointers.
        expect_status(
            "adapter rank 4 > limit 2",
            unsafe { c::smolcap_adapter_load(m2, adir.as_ptr(), &mut a) },
            c::SMOLCAP_STATUS_LIMIT,
            &["rank 4"],
        );
        assert_eq!(a.cast(), sentinel);
        // SAFETY: live handle.
        unsafe { c::smolcap_model_free(m2) };
    }
    // SAFETY: live handles.
    unsafe {
        c::smolcap_session_free(s);
        c::smolcap_model_free(m);
    }
    report(&["C API (UTF-8)", "C API (params)"], 80);
}

// ---------------------------------------------------------------------------------------------
// NULL for every pointer of every C function, generated from the header

/// The directory of the cdylib built with this test: `cargo test` leaves it in
/// target/<profile>/deps (beside the test binary), `cargo build` in target/<profile>.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    if deps.join("libsmolcap.so").is_file() {
        return deps;
    }
    deps.parent().unwrap_or(&deps).to_path_buf()
}

#[test]
fn c_api_null_for_every_pointer() {
    let header =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/smolcap.h"))
            .unwrap();
    let fns = nullgen::parse_header(&header);
    assert!(fns.len() >= 39, "parsed only {} functions", fns.len());
    let (prog, counts) = nullgen::generate(&fns);
    let total: usize = counts.values().sum();
    assert!(total >= 60, "only {total} NULL cases generated");
    let dir = scratch("nullgen");
    let src = nullgen::write(&dir, &prog);
    // Link against the cdylib through its SONAME, as a host would.
    let lib = lib_dir().join("libsmolcap.so");
    assert!(
        lib.is_file(),
        "{} missing (cargo builds it with the tests)",
        lib.display()
    );
    let ldir = dir.join("lib");
    std::fs::create_dir_all(&ldir).unwrap();
    for n in ["libsmolcap.so", "libsmolcap.so.0"] {
        std::os::unix::fs::symlink(&lib, ldir.join(n)).unwrap();
    }
    let exe = dir.join("null_args");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = std::process::Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Werror", "-g", "-O0", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg(format!(
            "-I{}",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("include")
                .display()
        ))
        .arg(format!("-L{}", ldir.display()))
        .arg(format!("-Wl,-rpath,{}", ldir.display()))
        .arg("-lsmolcap")
        .status()
        .unwrap_or_else(|e| panic!("{cc}: {e} (a C compiler is needed for this test)"));
    assert!(st.success(), "compiling {} failed", src.display());
    let scratch_out = dir.join("scratch");
    std::fs::create_dir_all(&scratch_out).unwrap();
    let model_before = listing(&fixture("tiny-idefics3"));
    let out = std::process::Command::new(&exe)
        .arg(fixture("tiny-idefics3"))
        .arg(fixture("adapters/text_r4_a8"))
        .arg(fixture("images/tiny_20x15.png"))
        .arg(&scratch_out)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for l in stdout.lines().filter(|l| l.starts_with("cases ")) {
        let mut it = l.split_whitespace().skip(1);
        let (f, n) = (it.next().unwrap(), it.next().unwrap());
        println!("hostile: C NULL {f}: {n} cases");
    }
    println!("hostile: C NULL (all functions): {total} cases");
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        out.status.success() && last.ends_with(" 0 failed"),
        "generated NULL test failed ({:?}): {last}\n{stderr}",
        out.status
    );
    // The trainer's setup checkpoint and the save that is allowed a NULL data_state are
    // meant to exist; anything else is a leftover.
    let left: Vec<_> = listing(&scratch_out)
        .into_iter()
        .filter(|n| n != "null_args_checkpoint" && n != "null_args_saved")
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
    assert_eq!(
        listing(&fixture("tiny-idefics3")),
        model_before,
        "the model directory changed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regenerates the committed fuzz seeds (`fuzz/corpus/<target>/seed-*`):
/// `cargo test --test hostile -- --ignored write_fuzz_seeds`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let d = root.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
    };
    let mut gp = std::mem::MaybeUninit::<c::smolcap_generate_params>::uninit();
    // SAFETY: init writes the whole struct; it is plain data, viewed as bytes below.
    let mut gp = unsafe {
        c::smolcap_generate_params_init(
            gp.as_mut_ptr(),
            std::mem::size_of::<c::smolcap_generate_params>(),
        );
        gp.assume_init()
    };
    gp.max_new_tokens = 2;
    gp.max_image_pixels = 60_000;
    gp.max_image_bytes = 60_000;
    // SAFETY: reading the bytes of a repr(C) plain-data struct.
    let gp_bytes = unsafe {
        std::slice::from_raw_parts((&raw const gp).cast::<u8>(), std::mem::size_of_val(&gp))
    }
    .to_vec();
    for fmt in FORMATS {
        let b = encode(fmt);
        put("image_decode", &format!("{fmt:?}").to_lowercase(), &b);
        put(
            "c_api",
            &format!("caption-{fmt:?}").to_lowercase(),
            &[&[0u8][..], &gp_bytes, b"a cat\0", &[0u8; 7], &b].concat(),
        );
    }
    put(
        "image_decode",
        "tiny-png",
        &std::fs::read(fixture("images/tiny_20x15.png")).unwrap(),
    );
    put(
        "image_decode",
        "raw",
        &[&b"R\x07\x05\x18\x00\x01"[..], &[9u8; 200]].concat(),
    );
    let st = std::fs::read(fixture("adapters/text_r2_a3_b/adapter_model.safetensors")).unwrap();
    put("safetensors_load", "adapter", &st);
    put(
        "safetensors_load",
        "small",
        &st_file(&good_header(), &[0x3c; 40]),
    );
    for f in ["config.json", "preprocessor_config.json"] {
        put(
            "config_json",
            f,
            &std::fs::read(fixture(&format!("tiny-idefics3/{f}"))).unwrap(),
        );
    }
    for a in ["text_r2_a3_b", "rank_pattern"] {
        let cfg = std::fs::read(fixture(&format!("adapters/{a}/adapter_config.json"))).unwrap();
        put("config_json", &format!("adapter-{a}"), &cfg);
        let st =
            std::fs::read(fixture(&format!("adapters/{a}/adapter_model.safetensors"))).unwrap();
        put(
            "adapter_load",
            a,
            &[&(cfg.len() as u16).to_le_bytes()[..], &cfg, &st].concat(),
        );
    }
    put(
        "tokenizer_input",
        "text",
        b"\0Describe this image in detail. <image><fake_token_around_image> caf\xc3\xa9 12",
    );
    put("tokenizer_input", "ids", &[1u8, 10, 0, 20, 0, 200, 1, 7, 0]);
    put("metrics_input", "lines", b"a dog on a couch|a dog sleeping on a couch|a brown dog\nA man riding a horse.|a man rides a horse\n");
    put(
        "c_api",
        "score",
        b"\x02\x02a dog\0a cat\0\x03a dog\0the cat\0a cat\0\x00\x01\x03",
    );
    put("c_api", "load", &[3u8; 80]);
}
