//! JPEG decoding is bit-exact with Pillow 13 (its bundled libjpeg-turbo) on the corpus written by
//! tools/reference/make_jpeg_corpus.py: every subsampling, progressive, restart intervals,
//! arithmetic coding, lossless, grayscale, CMYK/YCCK, Adobe RGB, EXIF orientation and odd sizes
//! decode to the same bytes as `convert_to_rgb(Image.open(f))` (and with `exif_transpose`), and
//! every file Pillow refuses (12-bit, truncated) is an error.

use std::path::PathBuf;

use serde_json::Value;
use smolcap::processor::image::{DecodeLimits, SourceImage};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg")
}

/// `wsum64` of tools/reference/image_cases.py.
fn wsum64(data: &[u8]) -> String {
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

#[test]
fn corpus_decodes_bit_exact_with_pillow() {
    let text = std::fs::read_to_string(dir().join("expected.json")).expect("expected.json");
    let meta: Value = serde_json::from_str(&text).expect("json");
    let lim = DecodeLimits::default();
    let (mut exact, mut errors, mut bad) = (0, 0, Vec::new());
    for c in meta["cases"].as_array().expect("cases") {
        let name = c["file"].as_str().expect("file");
        let bytes = std::fs::read(dir().join(name)).expect("read");
        if let Some(err) = c.get("error") {
            match SourceImage::decode_unoriented(&bytes, &lim) {
                Err(_) => errors += 1,
                Ok(_) => bad.push(format!("{name}: decoded, but Pillow raises {err}")),
            }
            continue;
        }
        let img = match SourceImage::decode_unoriented(&bytes, &lim) {
            Ok(i) => i,
            Err(e) => {
                bad.push(format!("{name}: {e}"));
                continue;
            }
        };
        let size = (img.width() as u64, img.height() as u64);
        let want = (c["width"].as_u64().unwrap(), c["height"].as_u64().unwrap());
        if size != want || wsum64(&img.to_rgb()) != c["rgb_wsum64"].as_str().unwrap() {
            bad.push(format!("{name} ({}): pixels differ", c["mode"]));
            continue;
        }
        let o = SourceImage::decode(&bytes, &lim).expect("oriented decode");
        let osize = [o.width() as u64, o.height() as u64];
        let want: Vec<u64> = c["oriented_size"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        if osize[..] != want[..]
            || wsum64(&o.to_rgb()) != c["oriented_rgb_wsum64"].as_str().unwrap()
        {
            bad.push(format!("{name}: EXIF-oriented pixels differ"));
            continue;
        }
        exact += 1;
    }
    eprintln!("{exact} files bit-exact, {errors} refused as Pillow refuses them");
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(
        exact >= 100 && errors >= 5,
        "corpus too small: {exact} + {errors}"
    );
}

#[test]
fn limits_are_checked_before_decoding() {
    let bytes = std::fs::read(dir().join("prog_301x257_s0.jpg")).expect("read");
    let small = DecodeLimits {
        max_pixels: 300 * 257,
        ..DecodeLimits::default()
    };
    let e = SourceImage::decode(&bytes, &small).unwrap_err();
    assert!(e.to_string().contains("pixels"), "{e}");
    let tiny = DecodeLimits {
        max_encoded_bytes: 100,
        ..DecodeLimits::default()
    };
    assert!(SourceImage::decode(&bytes, &tiny).is_err());
}

/// Decode speed beside Pillow's (`make_jpeg_corpus.py --bench` prints Pillow's on the same
/// files): `SMOLCAP_JPEG_BENCH="a.jpg b.jpg" cargo test --test jpeg_corpus -- --ignored`.
#[test]
#[ignore]
fn decode_speed() {
    let lim = DecodeLimits::default();
    let med = |f: &dyn Fn(), reps: usize| {
        let mut ts: Vec<f64> = (0..reps)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect();
        ts.sort_by(f64::total_cmp);
        ts[reps / 2]
    };
    let text = std::fs::read_to_string(dir().join("expected.json")).expect("expected.json");
    let meta: Value = serde_json::from_str(&text).expect("json");
    let files: Vec<Vec<u8>> = meta["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| c.get("error").is_none())
        .map(|c| std::fs::read(dir().join(c["file"].as_str().unwrap())).expect("read"))
        .collect();
    let t = med(
        &|| {
            for f in &files {
                SourceImage::decode_unoriented(f, &lim).expect("decode");
            }
        },
        7,
    );
    eprintln!("smolcap corpus ({} files): {:.2} ms", files.len(), t * 1e3);
    for p in std::env::var("SMOLCAP_JPEG_BENCH")
        .unwrap_or_default()
        .split_whitespace()
    {
        let b = std::fs::read(p).expect("read");
        let t = med(
            &|| {
                SourceImage::decode_unoriented(&b, &lim).expect("decode");
            },
            9,
        );
        eprintln!("smolcap {p}: {:.2} ms", t * 1e3);
    }
}
