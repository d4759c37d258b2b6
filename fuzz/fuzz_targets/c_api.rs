//! The C entry points with fuzzed arguments: params structs filled from the input bytes
//! (any struct_size, enum values, limits, floats), strings with arbitrary bytes (invalid UTF-8
//! included), images encoded or raw with any stride/length, CSR offsets for scoring.
#![no_main]

#[path = "common.rs"]
mod common;

use std::ffi::{c_char, CString};
use std::mem::{size_of, MaybeUninit};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smolcap::ffi::adapter::*;
use smolcap::ffi::metrics::*;
use smolcap::ffi::model::*;
use smolcap::ffi::session::*;
use smolcap::ffi::status::*;
use smolcap::ffi::stream::*;

struct Shared {
    model: usize,
    adapter: usize,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let dir = CString::new(common::fixture("tiny-idefics3").to_str().unwrap()).unwrap();
        let adir = CString::new(common::fixture("adapters/text_r4_a8").to_str().unwrap()).unwrap();
        let mut m = null_mut();
        let mut a = null_mut();
        // SAFETY: valid arguments.
        unsafe {
            assert_eq!(smolcap_model_load(dir.as_ptr(), null(), &mut m), 0);
            assert_eq!(smolcap_adapter_load(m, adir.as_ptr(), &mut a), 0);
        }
        Shared {
            model: m as usize,
            adapter: a as usize,
        }
    })
}

/// Takes `n` bytes from the front of `d` (fewer at the end).
fn take<'a>(d: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(d.len());
    let (a, b) = d.split_at(n);
    *d = b;
    a
}

/// A NUL-terminated string of arbitrary bytes (up to the next 0 byte).
fn cstring(d: &mut &[u8]) -> CString {
    let end = d.iter().position(|&b| b == 0).unwrap_or(d.len()).min(64);
    let s = take(d, end).to_vec();
    take(d, 1);
    CString::new(s).unwrap_or_default()
}

fn gparams(d: &mut &[u8]) -> smolcap_generate_params {
    let mut p = MaybeUninit::<smolcap_generate_params>::uninit();
    // SAFETY: init writes the whole struct.
    let mut p = unsafe {
        smolcap_generate_params_init(p.as_mut_ptr(), size_of::<smolcap_generate_params>());
        p.assume_init()
    };
    let raw = take(d, size_of::<smolcap_generate_params>());
    // SAFETY: any bytes are a valid value for this plain-data struct except the prompt pointer,
    // which is reset below.
    unsafe {
        std::ptr::copy_nonoverlapping(raw.as_ptr(), (&raw mut p).cast::<u8>(), raw.len());
    }
    p.prompt = null();
    // Keep each run short: few tokens, small images, few beams.
    p.max_new_tokens %= 4;
    p.min_new_tokens %= 4;
    p.num_beams %= 3;
    p.max_image_pixels %= 1 << 16;
    p.max_image_bytes %= 1 << 16;
    p.longest_edge %= 200;
    p.batch_size %= 4;
    p
}

fuzz_target!(|data: &[u8]| {
    let s = shared();
    let model = s.model as *const smolcap_model;
    let mut d = data;
    let Some(&op) = take(&mut d, 1).first() else {
        return;
    };
    let mut out_caps = null_mut();
    match op % 5 {
        0 | 1 => {
            // Caption one or two images with fuzzed params and prompt.
            let mut p = gparams(&mut d);
            let prompt = cstring(&mut d);
            if op & 0x10 != 0 {
                p.prompt = prompt.as_ptr();
            }
            let kind = u32::from(*take(&mut d, 1).first().unwrap_or(&0) % 4);
            let hdr = take(&mut d, 6);
            let (w, h, stride) = if hdr.len() == 6 {
                (
                    u32::from(hdr[0] % 64),
                    u32::from(hdr[1] % 64),
                    usize::from(u16::from_le_bytes([hdr[2], hdr[3]])),
                )
            } else {
                (0, 0, 0)
            };
            let img = smolcap_image {
                kind,
                width: w,
                height: h,
                data: d.as_ptr(),
                len: d.len(),
                stride,
            };
            let imgs = [img, img];
            let n = 1 + usize::from(op & 0x20 != 0);
            let mut sess = null_mut();
            // SAFETY: valid arguments; image buffers are `d`, readable for `len` bytes.
            unsafe {
                assert_eq!(smolcap_session_new(model, &mut sess), 0);
                if op & 0x40 != 0 {
                    let ads = [s.adapter as *const smolcap_adapter];
                    let scales = [f32::from_le_bytes([op, 0, 0x80, 0x3f])];
                    let _ = smolcap_session_set_adapters(sess, ads.as_ptr(), scales.as_ptr(), 1);
                }
                let st =
                    smolcap_caption(sess, imgs.as_ptr(), n, &p, None, null_mut(), &mut out_caps);
                assert_ne!(
                    st,
                    SMOLCAP_STATUS_PANIC,
                    "{:?}",
                    std::ffi::CStr::from_ptr(smolcap_last_error())
                );
                if st == 0 {
                    assert_eq!(smolcap_captions_count(out_caps), n);
                    smolcap_captions_free(out_caps);
                } else {
                    assert!(out_caps.is_null(), "out written on failure");
                }
                let mut nll = smolcap_nll::default();
                let cap = cstring(&mut d);
                let st = smolcap_session_score(sess, &img, cap.as_ptr(), &p, &mut nll);
                assert_ne!(st, SMOLCAP_STATUS_PANIC);
                smolcap_session_free(sess);
            }
        }
        2 => {
            // Scoring with arbitrary strings and CSR offsets.
            let n = usize::from(*take(&mut d, 1).first().unwrap_or(&1) % 6);
            let cands: Vec<CString> = (0..n).map(|_| cstring(&mut d)).collect();
            let nrefs = usize::from(*take(&mut d, 1).first().unwrap_or(&1) % 10);
            let refs: Vec<CString> = (0..nrefs).map(|_| cstring(&mut d)).collect();
            let offs: Vec<usize> = take(&mut d, n + 1)
                .iter()
                .map(|&b| usize::from(b % 12))
                .collect();
            if offs.len() != n + 1 {
                return;
            }
            let cp: Vec<*const c_char> = cands.iter().map(|c| c.as_ptr()).collect();
            let rp: Vec<*const c_char> = refs.iter().map(|c| c.as_ptr()).collect();
            // Offsets must not point past `refs` (that is the caller's contract, not ours):
            // keep them in range, any order.
            let offs: Vec<usize> = offs.iter().map(|&o| o.min(nrefs)).collect();
            let mut sc = null_mut();
            // SAFETY: arrays of the stated lengths.
            unsafe {
                let st = smolcap_score_captions(
                    cp.as_ptr(),
                    n,
                    rp.as_ptr(),
                    offs.as_ptr(),
                    u32::from(op >> 4),
                    &mut sc,
                );
                assert_ne!(st, SMOLCAP_STATUS_PANIC);
                if st == 0 {
                    let mut v = 0.0;
                    let _ = smolcap_scores_corpus(sc, c"CIDEr".as_ptr(), &mut v);
                    let name = cstring(&mut d);
                    let _ = smolcap_scores_image(sc, 0, name.as_ptr(), &mut v);
                    smolcap_scores_free(sc);
                } else {
                    assert!(sc.is_null());
                }
            }
        }
        3 => {
            // Model loading with fuzzed load params (limits, dtype, device string).
            let mut lp = MaybeUninit::<smolcap_load_params>::uninit();
            // SAFETY: init writes the struct; then plain bytes except the two pointers.
            let mut lp = unsafe {
                smolcap_load_params_init(lp.as_mut_ptr(), size_of::<smolcap_load_params>());
                lp.assume_init()
            };
            let raw = take(&mut d, size_of::<smolcap_load_params>());
            // SAFETY: as in `gparams`.
            unsafe {
                std::ptr::copy_nonoverlapping(raw.as_ptr(), (&raw mut lp).cast::<u8>(), raw.len())
            };
            let dev = cstring(&mut d);
            lp.device = if op & 0x10 != 0 { dev.as_ptr() } else { null() };
            lp.revision = null();
            let dir = CString::new(common::fixture("tiny-idefics3").to_str().unwrap()).unwrap();
            let mut m = null_mut();
            // SAFETY: valid pointers.
            unsafe {
                let st = smolcap_model_load(dir.as_ptr(), &lp, &mut m);
                assert_ne!(st, SMOLCAP_STATUS_PANIC);
                if st == 0 {
                    smolcap_model_free(m);
                } else {
                    assert!(m.is_null());
                }
            }
        }
        _ => {
            // A stream, pulled a few pieces, then freed (cancelled) early.
            let p = gparams(&mut d);
            let img = smolcap_image {
                kind: SMOLCAP_IMAGE_ENCODED,
                width: 0,
                height: 0,
                data: d.as_ptr(),
                len: d.len(),
                stride: 0,
            };
            let mut sess = null_mut();
            let mut st_h = null_mut();
            // SAFETY: valid pointers.
            unsafe {
                assert_eq!(smolcap_session_new(model, &mut sess), 0);
                let st = smolcap_stream_begin(sess, &img, &p, &mut st_h);
                assert_ne!(st, SMOLCAP_STATUS_PANIC);
                if st == 0 {
                    for _ in 0..(op >> 5) {
                        let (mut piece, mut len) = (null(), 0usize);
                        if smolcap_stream_next(st_h, &mut piece, &mut len) != 0 || piece.is_null() {
                            break;
                        }
                    }
                    smolcap_stream_free(st_h);
                }
                smolcap_session_free(sess);
            }
        }
    }
});
