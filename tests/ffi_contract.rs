//! Contract tests of the C ABI, called through the Rust paths of the exported functions:
//! NULL for each pointer, bad UTF-8, unknown enum values, struct_size smaller and larger,
//! zero-length, truncated and absurd buffers, panics, BUSY, cancel, streams, frees.

mod common;

use std::ffi::{c_char, c_void, CStr, CString};
use std::mem::{size_of, MaybeUninit};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use common::{cases, fixture, ids};
use smolcap::ffi::adapter::*;
use smolcap::ffi::handles::smolcap_debug_live_objects;
use smolcap::ffi::log::*;
use smolcap::ffi::metrics::*;
use smolcap::ffi::model::*;
use smolcap::ffi::session::*;
use smolcap::ffi::status::*;
use smolcap::ffi::stream::*;
use smolcap::ffi::version::*;

/// Tests share the process-wide live-object counter and log callback: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn last() -> String {
    // SAFETY: smolcap_last_error never returns NULL.
    unsafe { CStr::from_ptr(smolcap_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts a status and that the message mentions every `needle`.
#[track_caller]
fn expect(st: smolcap_status, want: smolcap_status, needles: &[&str]) {
    let msg = last();
    assert_eq!(st, want, "status {st} (wanted {want}); last error: {msg}");
    for n in needles {
        assert!(msg.contains(n), "last error {msg:?} does not mention {n:?}");
    }
}

#[track_caller]
fn ok(st: smolcap_status) {
    assert_eq!(st, SMOLCAP_STATUS_OK, "last error: {}", last());
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// A string that is not UTF-8.
const BAD_UTF8: &[u8] = b"caf\xe9\0";

fn bad_utf8() -> *const c_char {
    BAD_UTF8.as_ptr().cast()
}

fn model_dir() -> CString {
    cstr(fixture("tiny-idefics3").to_str().unwrap())
}

fn load() -> *mut smolcap_model {
    let mut m = null_mut();
    // SAFETY: valid arguments.
    ok(unsafe { smolcap_model_load(model_dir().as_ptr(), null(), &mut m) });
    m
}

fn session(m: *const smolcap_model) -> *mut smolcap_session {
    let mut s = null_mut();
    // SAFETY: valid arguments.
    ok(unsafe { smolcap_session_new(m, &mut s) });
    s
}

fn file(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("images/{name}"))).unwrap()
}

fn encoded(bytes: &[u8]) -> smolcap_image {
    smolcap_image {
        kind: SMOLCAP_IMAGE_ENCODED,
        width: 0,
        height: 0,
        data: bytes.as_ptr(),
        len: bytes.len(),
        stride: 0,
    }
}

fn gparams() -> smolcap_generate_params {
    let mut p = MaybeUninit::<smolcap_generate_params>::uninit();
    // SAFETY: init writes the whole struct.
    ok(unsafe {
        smolcap_generate_params_init(p.as_mut_ptr(), size_of::<smolcap_generate_params>())
    });
    // SAFETY: initialised above.
    let mut p = unsafe { p.assume_init() };
    p.max_new_tokens = 12;
    p
}

fn greedy_png_tokens() -> Vec<u32> {
    let c = cases("tiny-idefics3");
    let case = c["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "photo_640x480")
        .unwrap();
    let eos = c["eos_token_id"].as_u64().unwrap() as u32;
    let mut v = ids(&case["greedy"]["sequences_raw"]);
    if let Some(i) = v.iter().position(|&t| t == eos) {
        v.truncate(i + 1);
    }
    v
}

/// Runs a caption and returns (status, captions).
fn caption(
    s: *mut smolcap_session,
    imgs: &[smolcap_image],
    p: Option<&smolcap_generate_params>,
) -> (smolcap_status, *mut smolcap_captions) {
    let mut out = null_mut();
    // SAFETY: valid arguments.
    let st = unsafe {
        smolcap_caption(
            s,
            imgs.as_ptr(),
            imgs.len(),
            p.map_or(null(), |p| p as *const _),
            None,
            null_mut(),
            &mut out,
        )
    };
    (st, out)
}

fn tokens(c: *const smolcap_captions, i: usize) -> Vec<u32> {
    let (mut p, mut n) = (null(), 0usize);
    // SAFETY: valid arguments.
    ok(unsafe { smolcap_captions_tokens(c, i, &mut p, &mut n) });
    // SAFETY: the library returned n ids at p.
    unsafe { std::slice::from_raw_parts(p, n) }.to_vec()
}

fn text(c: *const smolcap_captions, i: usize) -> String {
    let (mut p, mut n) = (null(), 0usize);
    // SAFETY: valid arguments.
    ok(unsafe { smolcap_captions_text(c, i, &mut p, &mut n) });
    // SAFETY: NUL-terminated string of n bytes.
    let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string();
    assert_eq!(s.len(), n);
    s
}

/// Checks that every handle made during a test was freed.
struct LiveCheck(usize);

impl LiveCheck {
    fn new() -> Self {
        LiveCheck(smolcap_debug_live_objects())
    }
}

impl Drop for LiveCheck {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(smolcap_debug_live_objects(), self.0, "handles leaked");
        }
    }
}

#[test]
fn version_status_strings_and_last_error() {
    let _g = serial();
    // SAFETY: static strings.
    let v = unsafe { CStr::from_ptr(smolcap_version()) }
        .to_str()
        .unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let want = format!("{SMOLCAP_VERSION_MAJOR}.{SMOLCAP_VERSION_MINOR}.{SMOLCAP_VERSION_PATCH}");
    assert_eq!(
        v, want,
        "SMOLCAP_VERSION_* constants out of step with Cargo.toml"
    );
    assert_eq!(smolcap_abi_version(), SMOLCAP_ABI_VERSION);
    // SAFETY: static string.
    let f = unsafe { CStr::from_ptr(smolcap_features()) }
        .to_str()
        .unwrap();
    assert!(f.split(',').any(|x| x == "cpu"), "{f}");
    let mut seen = std::collections::HashSet::new();
    for code in 0..=14 {
        // SAFETY: static string.
        let s = unsafe { CStr::from_ptr(smolcap_status_string(code)) };
        assert!(seen.insert(s.to_owned()), "duplicate status string {s:?}");
        assert_ne!(s.to_str().unwrap(), "unknown status");
    }
    for code in [-1, 15, 1000, i32::MIN] {
        // SAFETY: static string.
        let s = unsafe { CStr::from_ptr(smolcap_status_string(code)) };
        assert_eq!(s.to_str().unwrap(), "unknown status");
    }
    assert_eq!(SMOLCAP_STATUS_INTERNAL, 13);
    assert_eq!(SMOLCAP_STATUS_NUMERIC, 14);
    // A fresh thread has an empty, non-NULL last error; errors are per thread.
    std::thread::spawn(|| {
        assert_eq!(last(), "");
        // SAFETY: NULL out is rejected.
        let st = unsafe { smolcap_model_load(null(), null(), null_mut()) };
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["smolcap_model_load", "out"],
        );
    })
    .join()
    .unwrap();
}

#[test]
fn params_init_and_struct_size() {
    let _g = serial();
    // SAFETY: NULL is rejected.
    let st =
        unsafe { smolcap_generate_params_init(null_mut(), size_of::<smolcap_generate_params>()) };
    expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["params is NULL"]);
    // SAFETY: NULL is rejected.
    let st = unsafe { smolcap_load_params_init(null_mut(), 64) };
    expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["params is NULL"]);
    let mut p = MaybeUninit::<smolcap_generate_params>::zeroed();
    for small in [0usize, 3, 4, 16] {
        // SAFETY: the buffer is larger than `small`.
        let st = unsafe { smolcap_generate_params_init(p.as_mut_ptr(), small) };
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["struct_size", &small.to_string(), "smolcap_generate_params"],
        );
    }
    // A larger struct (a newer header): known fields get defaults, the tail is zeroed.
    let n = size_of::<smolcap_generate_params>();
    let mut big = vec![0xAAu8; n + 64];
    // SAFETY: `big` has n + 64 writable bytes (alignment: Vec<u8> from the global allocator is
    // 16-byte aligned in practice; read_unaligned is used below).
    ok(unsafe { smolcap_generate_params_init(big.as_mut_ptr().cast(), n + 64) });
    assert!(big[n..].iter().all(|&b| b == 0));
    // SAFETY: the buffer holds an initialised params struct.
    let p2: smolcap_generate_params = unsafe { std::ptr::read_unaligned(big.as_ptr().cast()) };
    assert_eq!(p2.struct_size as usize, n + 64);
    assert_eq!(p2.max_new_tokens, 48);
    assert_eq!(p2.batch_size, 1);
    assert_eq!(p2.strategy, SMOLCAP_STRATEGY_GREEDY);
    assert!(p2.prompt.is_null());
    let mut lp = MaybeUninit::<smolcap_load_params>::zeroed();
    // SAFETY: valid buffer.
    ok(unsafe { smolcap_load_params_init(lp.as_mut_ptr(), size_of::<smolcap_load_params>()) });
    // SAFETY: initialised.
    let lp = unsafe { lp.assume_init() };
    assert_eq!(lp.dtype, SMOLCAP_DTYPE_DEFAULT);
    assert!(lp.device.is_null() && lp.revision.is_null());
}

#[test]
fn model_load_errors() {
    let _g = serial();
    let _live = LiveCheck::new();
    let dir = model_dir();
    let sentinel = 0x1234usize as *mut smolcap_model;
    let mut out = sentinel;
    // SAFETY: each call passes at most one invalid argument, which the library rejects.
    unsafe {
        let st = smolcap_model_load(null(), null(), &mut out);
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["dir_or_repo is NULL"],
        );
        let st = smolcap_model_load(dir.as_ptr(), null(), null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out is NULL"]);
        let st = smolcap_model_load(bad_utf8(), null(), &mut out);
        expect(
            st,
            SMOLCAP_STATUS_UTF8,
            &["dir_or_repo", "UTF-8", "offset 3"],
        );
        let st = smolcap_model_load(cstr("").as_ptr(), null(), &mut out);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["empty"]);
        let st = smolcap_model_load(cstr("/nonexistent/model").as_ptr(), null(), &mut out);
        expect(st, SMOLCAP_STATUS_IO, &["/nonexistent/model"]);

        let mut lp = MaybeUninit::<smolcap_load_params>::zeroed();
        ok(smolcap_load_params_init(
            lp.as_mut_ptr(),
            size_of::<smolcap_load_params>(),
        ));
        let base = lp.assume_init();
        let mut p = base;
        p.dtype = 99;
        let st = smolcap_model_load(dir.as_ptr(), &p, &mut out);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["dtype 99"]);
        let mut p = base;
        p.device = c"tpu".as_ptr();
        let st = smolcap_model_load(dir.as_ptr(), &p, &mut out);
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["params.device", "tpu"],
        );
        if !cfg!(feature = "cuda") {
            p.device = c"cuda:0".as_ptr();
            let st = smolcap_model_load(dir.as_ptr(), &p, &mut out);
            expect(st, SMOLCAP_STATUS_UNSUPPORTED, &["cuda"]);
        }
        p.device = bad_utf8();
        let st = smolcap_model_load(dir.as_ptr(), &p, &mut out);
        expect(st, SMOLCAP_STATUS_UTF8, &["params.device"]);
        let mut p = base;
        p.revision = bad_utf8();
        let st = smolcap_model_load(dir.as_ptr(), &p, &mut out);
        expect(st, SMOLCAP_STATUS_UTF8, &["params.revision"]);
        let mut p = base;
        p.struct_size = 8;
        let st = smolcap_model_load(dir.as_ptr(), &p, &mut out);
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["smolcap_load_params.struct_size is 8"],
        );
        // A larger struct_size: the unknown tail is ignored.
        #[repr(C)]
        struct Bigger {
            p: smolcap_load_params,
            extra: [u64; 4],
        }
        let mut b = Bigger {
            p: base,
            extra: [u64::MAX; 4],
        };
        b.p.struct_size = size_of::<Bigger>() as u32;
        let mut m = null_mut();
        ok(smolcap_model_load(dir.as_ptr(), &b.p, &mut m));
        smolcap_model_free(m);

        // A malformed model directory.
        let tmp = std::env::temp_dir().join(format!("smolcap-ffi-bad-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        for f in ["tokenizer.json", "preprocessor_config.json"] {
            std::fs::copy(fixture("tiny-idefics3").join(f), tmp.join(f)).unwrap();
        }
        std::fs::write(tmp.join("config.json"), "{not json").unwrap();
        let t = cstr(tmp.to_str().unwrap());
        let st = smolcap_model_load(t.as_ptr(), null(), &mut out);
        expect(st, SMOLCAP_STATUS_FORMAT, &["config.json"]);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
    assert_eq!(out, sentinel, "out written on failure");
}

#[test]
fn model_info() {
    let _g = serial();
    let _live = LiveCheck::new();
    let m = load();
    // SAFETY: arguments valid except the one under test.
    unsafe {
        let mut info = MaybeUninit::<smolcap_model_info>::zeroed().assume_init();
        info.struct_size = size_of::<smolcap_model_info>() as u32;
        let st = smolcap_model_get_info(null(), &mut info);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["model is NULL"]);
        let st = smolcap_model_get_info(m, null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out is NULL"]);
        info.struct_size = 12;
        let st = smolcap_model_get_info(m, &mut info);
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["smolcap_model_info.struct_size is 12"],
        );
        assert_eq!(info.vocab_size, 0, "written on failure");
        // A larger struct: the bytes beyond ours are untouched.
        #[repr(C)]
        struct Bigger {
            i: smolcap_model_info,
            extra: [u64; 2],
        }
        let mut b = Bigger {
            i: MaybeUninit::zeroed().assume_init(),
            extra: [7, 7],
        };
        b.i.struct_size = size_of::<Bigger>() as u32;
        ok(smolcap_model_get_info(m, &mut b.i));
        assert_eq!(b.extra, [7, 7]);
        assert_eq!(b.i.struct_size as usize, size_of::<Bigger>());
        let i = b.i;
        assert_eq!(i.vocab_size, 600);
        assert_eq!(i.image_seq_len, 4);
        assert_eq!(i.tile_size, 32);
        assert_eq!(i.eos_token_id, 599);
        assert_eq!(CStr::from_ptr(i.model_type).to_str().unwrap(), "idefics3");
        assert_eq!(CStr::from_ptr(i.dtype).to_str().unwrap(), "f32");
        assert_eq!(CStr::from_ptr(i.device).to_str().unwrap(), "cpu");
        assert!(CStr::from_ptr(i.dir)
            .to_str()
            .unwrap()
            .ends_with("tiny-idefics3"));
        smolcap_model_free(m);
    }
}

#[test]
fn frees_accept_null() {
    let _g = serial();
    // SAFETY: NULL is documented as a no-op, twice.
    unsafe {
        for _ in 0..2 {
            smolcap_model_free(null_mut());
            smolcap_session_free(null_mut());
            smolcap_captions_free(null_mut());
            smolcap_stream_free(null_mut());
        }
        assert_eq!(smolcap_captions_count(null()), 0);
    }
}

#[test]
fn caption_matches_transformers_and_argument_errors() {
    let _g = serial();
    let _live = LiveCheck::new();
    let m = load();
    let s = session(m);
    let png = file("photo_640x480.png");
    let img = encoded(&png);
    let p = gparams();
    let want = greedy_png_tokens();

    let (st, c) = caption(s, &[img], Some(&p));
    ok(st);
    // SAFETY: valid captions object.
    unsafe {
        assert_eq!(smolcap_captions_count(c), 1);
        assert_eq!(tokens(c, 0), want);
        let _ = text(c, 0);
        // Accessor errors.
        let (mut tp, mut n) = (null(), 0usize);
        let st = smolcap_captions_text(c, 5, &mut tp, null_mut());
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["index 5", "1 captions"],
        );
        let st = smolcap_captions_text(null(), 0, &mut tp, null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["captions is NULL"]);
        let st = smolcap_captions_text(c, 0, null_mut(), null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["text is NULL"]);
        let mut ip = null();
        let st = smolcap_captions_tokens(c, 0, &mut ip, null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["n is NULL"]);
        let st = smolcap_captions_tokens(c, 0, null_mut(), &mut n);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["ids is NULL"]);
        let st = smolcap_captions_tokens(c, 1, &mut ip, &mut n);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["index 1"]);
        let mut stats = MaybeUninit::<smolcap_caption_stats>::zeroed().assume_init();
        stats.struct_size = 4;
        let st = smolcap_captions_stats(c, 0, &mut stats);
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["smolcap_caption_stats.struct_size is 4"],
        );
        stats.struct_size = size_of::<smolcap_caption_stats>() as u32;
        ok(smolcap_captions_stats(c, 0, &mut stats));
        assert_eq!(stats.generated_tokens as usize, want.len());
        assert_eq!(stats.num_tiles, 10);
        assert!(stats.prompt_tokens > 80);
        let st = smolcap_captions_stats(c, 0, null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out is NULL"]);
        smolcap_captions_free(c);
    }

    // NULL handles and outs; out untouched on failure.
    let sentinel = 0x99usize as *mut smolcap_captions;
    let mut out = sentinel;
    // SAFETY: each call passes one invalid argument which the library rejects.
    unsafe {
        let st = smolcap_caption(null_mut(), &img, 1, &p, None, null_mut(), &mut out);
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["smolcap_caption", "session is NULL"],
        );
        let st = smolcap_caption(s, &img, 1, &p, None, null_mut(), null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out is NULL"]);
        let st = smolcap_caption(s, null(), 1, &p, None, null_mut(), &mut out);
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["images is NULL", "count is 1"],
        );
        let st = smolcap_caption(s, &img, 0, &p, None, null_mut(), &mut out);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["n_images is 0"]);
        let st = smolcap_caption(s, &img, usize::MAX, &p, None, null_mut(), &mut out);
        expect(
            st,
            SMOLCAP_STATUS_LIMIT,
            &["n_images", "18446744073709551615"],
        );
    }
    assert_eq!(out, sentinel);

    // Image errors.
    let cases: Vec<(smolcap_image, smolcap_status, Vec<&str>)> = vec![
        (
            smolcap_image { kind: 9, ..img },
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            vec!["images[0].kind 9"],
        ),
        (
            smolcap_image {
                data: null(),
                ..img
            },
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            vec!["images[0].data is NULL"],
        ),
        (
            smolcap_image { len: 0, ..img },
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            vec!["images[0].data has length 0"],
        ),
        (
            smolcap_image { len: 100, ..img },
            SMOLCAP_STATUS_IMAGE,
            vec!["images[0]"],
        ),
        (
            // Absurd length: rejected before the buffer is touched.
            smolcap_image {
                len: 1 << 40,
                ..img
            },
            SMOLCAP_STATUS_LIMIT,
            vec!["images[0].data", "1099511627776"],
        ),
        (
            encoded(b"definitely not an image"),
            SMOLCAP_STATUS_IMAGE,
            vec!["images[0]", "unrecognised"],
        ),
        (
            smolcap_image {
                kind: SMOLCAP_IMAGE_RGB8,
                width: 0,
                height: 4,
                ..img
            },
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            vec!["zero size"],
        ),
        (
            smolcap_image {
                kind: SMOLCAP_IMAGE_RGB8,
                width: 16,
                height: 16,
                stride: 40,
                ..img
            },
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            vec!["images[0].stride 40", "48"],
        ),
        (
            smolcap_image {
                kind: SMOLCAP_IMAGE_RGBA8,
                width: 100,
                height: 100,
                len: 39_999,
                stride: 0,
                ..img
            },
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            vec!["images[0].len is 39999", "40000"],
        ),
        (
            smolcap_image {
                kind: SMOLCAP_IMAGE_RGB8,
                width: 100_000,
                height: 100_000,
                ..img
            },
            SMOLCAP_STATUS_LIMIT,
            vec!["10000000000 pixels"],
        ),
        (
            smolcap_image {
                kind: SMOLCAP_IMAGE_RGB8,
                width: 16,
                height: 1 << 20,
                stride: usize::MAX / 2,
                ..img
            },
            SMOLCAP_STATUS_LIMIT,
            vec!["stride", "absurd"],
        ),
    ];
    for (bad, status, needles) in cases {
        let (st, _) = caption(s, &[bad], Some(&p));
        expect(st, status, &needles);
    }
    // The second image of three is broken: its index is named.
    let (st, _) = caption(s, &[img, encoded(b"xx"), img], Some(&p));
    expect(st, SMOLCAP_STATUS_IMAGE, &["images[1]"]);

    // Params errors.
    type Edit = fn(&mut smolcap_generate_params);
    let bad: Vec<(Edit, smolcap_status, &str)> = vec![
        (
            |p| p.struct_size = 4,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "struct_size is 4",
        ),
        (
            |p| p.strategy = 7,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "params.strategy 7",
        ),
        (
            |p| {
                p.strategy = SMOLCAP_STRATEGY_BEAM;
                p.early_stopping = 9;
            },
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "params.early_stopping 9",
        ),
        (
            |p| p.prompt_mode = 5,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "params.prompt_mode 5",
        ),
        (
            |p| p.max_new_tokens = 0,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "max_new_tokens",
        ),
        (
            |p| p.max_new_tokens = u32::MAX,
            SMOLCAP_STATUS_LIMIT,
            "max_new_tokens 4294967295",
        ),
        (
            |p| p.batch_size = 0,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "batch_size",
        ),
        (
            |p| p.batch_size = 100_000,
            SMOLCAP_STATUS_LIMIT,
            "batch_size 100000",
        ),
        (
            |p| p.vision_chunk = 0,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "vision_chunk",
        ),
        (
            |p| p.max_prompt_tokens = 0,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "max_prompt_tokens",
        ),
        (
            |p| p.max_prompt_tokens = 10,
            SMOLCAP_STATUS_LIMIT,
            "max_prompt_tokens 10",
        ),
        (
            |p| p.max_image_pixels = 0,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "max_image_pixels",
        ),
        (
            |p| p.max_image_pixels = 1000,
            SMOLCAP_STATUS_LIMIT,
            "307200 pixels",
        ),
        (
            |p| p.max_image_bytes = 1000,
            SMOLCAP_STATUS_LIMIT,
            "limit of 1000",
        ),
        (
            |p| {
                p.strategy = SMOLCAP_STRATEGY_SAMPLE;
                p.temperature = 0.0;
            },
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "temperature",
        ),
        (
            |p| {
                p.strategy = SMOLCAP_STRATEGY_SAMPLE;
                p.top_p = 2.0;
            },
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "top_p",
        ),
        (
            |p| {
                p.strategy = SMOLCAP_STRATEGY_BEAM;
                p.num_beams = 0;
            },
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "num_beams",
        ),
        (
            |p| {
                p.strategy = SMOLCAP_STRATEGY_BEAM;
                p.num_beams = 1000;
            },
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "num_beams",
        ),
        (
            |p| p.repetition_penalty = -1.0,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "repetition_penalty",
        ),
        (
            |p| p.repetition_penalty = f32::NAN,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            "repetition_penalty",
        ),
        (
            |p| p.prompt = bad_utf8(),
            SMOLCAP_STATUS_UTF8,
            "params.prompt",
        ),
    ];
    for (edit, status, needle) in bad {
        let mut q = p;
        edit(&mut q);
        let (st, _) = caption(s, &[img], Some(&q));
        expect(st, status, &["smolcap_caption", needle]);
    }
    // Raw mode without an <image> placeholder is rejected by the processor.
    let mut q = p;
    q.prompt_mode = SMOLCAP_PROMPT_RAW;
    q.prompt = c"no placeholder here".as_ptr();
    let (st, _) = caption(s, &[img], Some(&q));
    assert_ne!(st, SMOLCAP_STATUS_OK);
    assert!(!last().is_empty());

    // A larger params struct (newer header) works; its tail is ignored.
    #[repr(C)]
    struct Bigger {
        p: smolcap_generate_params,
        extra: [u64; 8],
    }
    let mut b = Bigger {
        p,
        extra: [u64::MAX; 8],
    };
    b.p.struct_size = size_of::<Bigger>() as u32;
    let (st, c) = caption(s, &[img], Some(&b.p));
    ok(st);
    assert_eq!(tokens(c, 0), want);
    // SAFETY: valid handles.
    unsafe {
        smolcap_captions_free(c);
        smolcap_session_free(s);
        smolcap_model_free(m);
    }
}

#[test]
fn raw_images_batches_and_defaults() {
    let _g = serial();
    let _live = LiveCheck::new();
    let m = load();
    let s = session(m);
    let (w, h) = (40usize, 30usize);
    let mut rgb = Vec::new();
    for y in 0..h {
        for x in 0..w {
            rgb.extend_from_slice(&[(x * 6) as u8, (y * 8) as u8, ((x + y) * 3) as u8]);
        }
    }
    let rgba: Vec<u8> = rgb
        .chunks(3)
        .flat_map(|c| [c[0], c[1], c[2], 255])
        .collect();
    let stride = w * 3 + 5;
    let mut padded = vec![0u8; stride * h];
    for y in 0..h {
        padded[y * stride..y * stride + w * 3].copy_from_slice(&rgb[y * w * 3..(y + 1) * w * 3]);
    }
    let raw = |kind, data: &[u8], stride| smolcap_image {
        kind,
        width: w as u32,
        height: h as u32,
        data: data.as_ptr(),
        len: data.len(),
        stride,
    };
    let p = gparams();
    let imgs = [
        raw(SMOLCAP_IMAGE_RGB8, &rgb, 0),
        raw(SMOLCAP_IMAGE_RGBA8, &rgba, 0),
        raw(SMOLCAP_IMAGE_RGB8, &padded, stride),
    ];
    let (st, c) = caption(s, &imgs, Some(&p));
    ok(st);
    let t0 = tokens(c, 0);
    assert_eq!(tokens(c, 1), t0, "opaque RGBA != RGB");
    assert_eq!(tokens(c, 2), t0, "strided RGB != packed RGB");
    // Batched (2 per batch) equals one at a time.
    let png = file("photo_640x480.png");
    let pano = file("pano_400x60.png");
    let set = [encoded(&png), encoded(&pano), imgs[0]];
    let mut pb = p;
    pb.batch_size = 2;
    let (st, cb) = caption(s, &set, Some(&pb));
    ok(st);
    for (i, im) in set.iter().enumerate() {
        let (st, one) = caption(s, std::slice::from_ref(im), Some(&p));
        ok(st);
        assert_eq!(
            tokens(cb, i),
            tokens(one, 0),
            "image {i}: batched != single"
        );
        assert_eq!(text(cb, i), text(one, 0));
        // SAFETY: valid handle.
        unsafe { smolcap_captions_free(one) };
    }
    // NULL params = defaults (48 new tokens).
    let (st, cd) = caption(s, &set[..1], None);
    ok(st);
    assert!(tokens(cd, 0).len() <= 48);
    // The model may be freed before its session.
    // SAFETY: valid handles.
    unsafe {
        smolcap_model_free(m);
        let (st, c2) = caption(s, &set[..1], Some(&p));
        ok(st);
        assert_eq!(tokens(c2, 0), greedy_png_tokens());
        for x in [c, cb, cd, c2] {
            smolcap_captions_free(x);
        }
        smolcap_session_free(s);
    }
}

struct Pieces {
    text: String,
    calls: usize,
    stop_after: usize,
}

unsafe extern "C" fn collect(
    index: usize,
    piece: *const c_char,
    len: usize,
    user: *mut c_void,
) -> i32 {
    // SAFETY: `user` is a `Pieces` owned by the test; `piece` has `len` bytes + NUL.
    let p = unsafe { &mut *user.cast::<Pieces>() };
    assert_eq!(index, 0);
    // SAFETY: as above.
    let s = unsafe { CStr::from_ptr(piece) }.to_str().unwrap();
    assert_eq!(s.len(), len);
    p.text.push_str(s);
    p.calls += 1;
    i32::from(p.calls >= p.stop_after)
}

#[test]
fn token_callback_streams_and_stops() {
    let _g = serial();
    let _live = LiveCheck::new();
    let m = load();
    let s = session(m);
    let png = file("photo_640x480.png");
    let img = encoded(&png);
    let p = gparams();
    let mut pieces = Pieces {
        text: String::new(),
        calls: 0,
        stop_after: usize::MAX,
    };
    let mut c = null_mut();
    // SAFETY: valid arguments; `pieces` outlives the call.
    ok(unsafe {
        smolcap_caption(
            s,
            &img,
            1,
            &p,
            Some(collect),
            (&raw mut pieces).cast(),
            &mut c,
        )
    });
    assert!(pieces.calls > 0);
    assert_eq!(pieces.text, text(c, 0));
    // Stop after the first piece: still OK, with a shorter caption.
    let mut stop = Pieces {
        text: String::new(),
        calls: 0,
        stop_after: 1,
    };
    let mut c1 = null_mut();
    // SAFETY: as above.
    ok(unsafe {
        smolcap_caption(
            s,
            &img,
            1,
            &p,
            Some(collect),
            (&raw mut stop).cast(),
            &mut c1,
        )
    });
    assert_eq!(stop.calls, 1);
    assert!(tokens(c1, 0).len() < tokens(c, 0).len());
    assert_eq!(stop.text, text(c1, 0));
    // SAFETY: valid handles.
    unsafe {
        smolcap_captions_free(c);
        smolcap_captions_free(c1);
        smolcap_session_free(s);
        smolcap_model_free(m);
    }
}

#[test]
fn score_errors_and_value() {
    let _g = serial();
    let _live = LiveCheck::new();
    let m = load();
    let s = session(m);
    let png = file("photo_640x480.png");
    let img = encoded(&png);
    let mut nll = smolcap_nll::default();
    // SAFETY: each call has at most one invalid argument, which the library rejects.
    unsafe {
        let cap = c"a photo of a cat";
        let st = smolcap_session_score(null_mut(), &img, cap.as_ptr(), null(), &mut nll);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["session is NULL"]);
        let st = smolcap_session_score(s, null(), cap.as_ptr(), null(), &mut nll);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["image is NULL"]);
        let st = smolcap_session_score(s, &img, null(), null(), &mut nll);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["caption is NULL"]);
        let st = smolcap_session_score(s, &img, bad_utf8(), null(), &mut nll);
        expect(st, SMOLCAP_STATUS_UTF8, &["caption"]);
        let st = smolcap_session_score(s, &img, cap.as_ptr(), null(), null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out is NULL"]);
        let bad = smolcap_image { len: 10, ..img };
        let st = smolcap_session_score(s, &bad, cap.as_ptr(), null(), &mut nll);
        expect(st, SMOLCAP_STATUS_IMAGE, &["image"]);
        assert_eq!(nll.tokens, 0, "written on failure");
        ok(smolcap_session_score(
            s,
            &img,
            cap.as_ptr(),
            null(),
            &mut nll,
        ));
        assert!(nll.total.is_finite() && nll.total > 0.0);
        assert!(nll.tokens > 1);
        assert!((nll.mean - nll.total / nll.tokens as f64).abs() < 1e-9);
        smolcap_session_free(s);
        smolcap_model_free(m);
    }
}

/// A session pointer that may cross threads in tests.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: the library's session state is thread-safe (atomics); tests use it per the contract.
unsafe impl<T> Send for SendPtr<T> {}

static STEPS: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn count(_: usize, _: *const c_char, _: usize, _: *mut c_void) -> i32 {
    STEPS.fetch_add(1, Ordering::SeqCst);
    0
}

fn long_params() -> smolcap_generate_params {
    let mut p = gparams();
    p.max_new_tokens = 1500;
    p.min_new_tokens = 1500;
    p
}

fn wait_for_steps(n: usize) {
    let t0 = std::time::Instant::now();
    while STEPS.load(Ordering::SeqCst) < n {
        assert!(t0.elapsed().as_secs() < 120, "generation did not start");
        std::thread::yield_now();
    }
}

#[test]
fn busy_and_cancel_from_another_thread() {
    let _g = serial();
    let _live = LiveCheck::new();
    let m = load();
    let s = session(m);
    let png = file("photo_640x480.png");
    let p = gparams();
    // Cancel with nothing in progress has no effect on the next call.
    // SAFETY: valid handle; NULL is rejected.
    unsafe {
        ok(smolcap_session_cancel(s));
        let st = smolcap_session_cancel(null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["session is NULL"]);
    }
    let (st, c) = caption(s, &[encoded(&png)], Some(&p));
    ok(st);
    // SAFETY: valid handle.
    unsafe { smolcap_captions_free(c) };

    STEPS.store(0, Ordering::SeqCst);
    let sp = SendPtr(s);
    let png2 = png.clone();
    let worker = std::thread::spawn(move || {
        let sp = sp;
        let img = encoded(&png2);
        let lp = long_params();
        let mut out = null_mut();
        // SAFETY: valid arguments; the session outlives the thread (joined below).
        let st = unsafe { smolcap_caption(sp.0, &img, 1, &lp, Some(count), null_mut(), &mut out) };
        (st, out.is_null(), last())
    });
    wait_for_steps(3);
    // The session is busy: a second call fails with BUSY, not UB.
    let (st, _) = caption(s, &[encoded(&png)], Some(&p));
    expect(st, SMOLCAP_STATUS_BUSY, &["in use"]);
    let mut nll = smolcap_nll::default();
    // SAFETY: valid arguments.
    let st = unsafe { smolcap_session_score(s, &encoded(&png), c"x".as_ptr(), null(), &mut nll) };
    expect(st, SMOLCAP_STATUS_BUSY, &["in use"]);
    // SAFETY: valid handle; cancel is callable from any thread.
    ok(unsafe { smolcap_session_cancel(s) });
    let at_cancel = STEPS.load(Ordering::SeqCst);
    let (st, out_null, msg) = worker.join().unwrap();
    assert_eq!(st, SMOLCAP_STATUS_CANCELLED, "{msg}");
    assert!(out_null, "out written on cancel");
    let after = STEPS.load(Ordering::SeqCst) - at_cancel;
    assert!(after <= 1, "{after} steps ran after cancel");
    assert!(at_cancel < 1500);
    // Usable again afterwards.
    let (st, c) = caption(s, &[encoded(&png)], Some(&p));
    ok(st);
    // SAFETY: valid handles.
    unsafe {
        smolcap_captions_free(c);
        smolcap_session_free(s);
        smolcap_model_free(m);
    }
}

fn drain(st: *mut smolcap_stream) -> (smolcap_status, String) {
    let mut text = String::new();
    loop {
        let (mut p, mut n) = (null(), 0usize);
        // SAFETY: valid stream.
        let rc = unsafe { smolcap_stream_next(st, &mut p, &mut n) };
        if rc != SMOLCAP_STATUS_OK {
            return (rc, text);
        }
        if p.is_null() {
            return (rc, text);
        }
        // SAFETY: NUL-terminated piece of n bytes.
        let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap();
        assert_eq!(s.len(), n);
        text.push_str(s);
    }
}

#[test]
fn streams() {
    let _g = serial();
    let _live = LiveCheck::new();
    let m = load();
    let s = session(m);
    let png = file("photo_640x480.png");
    let img = encoded(&png);
    let p = gparams();
    let (st, c) = caption(s, &[img], Some(&p));
    ok(st);
    let mut stream = null_mut();
    // SAFETY: each call has at most one invalid argument, which the library rejects.
    unsafe {
        let st = smolcap_stream_begin(null_mut(), &img, &p, &mut stream);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["session is NULL"]);
        let st = smolcap_stream_begin(s, null(), &p, &mut stream);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["image is NULL"]);
        let st = smolcap_stream_begin(s, &img, &p, null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out is NULL"]);
        let st = smolcap_stream_begin(s, &encoded(b"junk"), &p, &mut stream);
        expect(st, SMOLCAP_STATUS_IMAGE, &["image"]);
        let mut q = p;
        q.strategy = 42;
        let st = smolcap_stream_begin(s, &img, &q, &mut stream);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["strategy 42"]);
        assert!(stream.is_null());
        let mut piece = null();
        let st = smolcap_stream_next(null_mut(), &mut piece, null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["stream is NULL"]);
        let mut r = null_mut();
        let st = smolcap_stream_result(null_mut(), &mut r);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["stream is NULL"]);

        // A full stream equals the caption.
        ok(smolcap_stream_begin(s, &img, &p, &mut stream));
        let st = smolcap_stream_next(stream, null_mut(), null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["piece is NULL"]);
        let (rc, streamed) = drain(stream);
        ok(rc);
        assert_eq!(streamed, text(c, 0));
        // After the end: OK + NULL again, and the session is free.
        let (rc, more) = drain(stream);
        ok(rc);
        assert!(more.is_empty());
        let st = smolcap_stream_result(stream, null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out is NULL"]);
        ok(smolcap_stream_result(stream, &mut r));
        assert_eq!(tokens(r, 0), tokens(c, 0));
        let (st2, c2) = caption(s, &[img], Some(&p));
        ok(st2);
        smolcap_captions_free(c2);
        smolcap_captions_free(r);
        smolcap_stream_free(stream);

        // While a stream runs the session is busy; result before the end is refused; freeing a
        // running stream stops it.
        let lp = long_params();
        ok(smolcap_stream_begin(s, &img, &lp, &mut stream));
        let mut piece = null();
        ok(smolcap_stream_next(stream, &mut piece, null_mut()));
        assert!(!piece.is_null());
        let (st2, _) = caption(s, &[img], Some(&p));
        expect(st2, SMOLCAP_STATUS_BUSY, &["in use"]);
        let mut r = null_mut();
        let st = smolcap_stream_result(stream, &mut r);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["not ended"]);
        let t0 = std::time::Instant::now();
        smolcap_stream_free(stream);
        assert!(t0.elapsed().as_secs() < 10);
        let (st2, c2) = caption(s, &[img], Some(&p));
        ok(st2);
        smolcap_captions_free(c2);

        // Cancel through the session: next returns CANCELLED, then again.
        ok(smolcap_stream_begin(s, &img, &lp, &mut stream));
        ok(smolcap_stream_next(stream, &mut piece, null_mut()));
        ok(smolcap_session_cancel(s));
        let (rc, _) = drain(stream);
        expect(
            rc,
            SMOLCAP_STATUS_CANCELLED,
            &["smolcap_stream_next", "cancelled"],
        );
        let (rc, _) = drain(stream);
        assert_eq!(rc, SMOLCAP_STATUS_CANCELLED);
        smolcap_stream_free(stream);

        // A stream outlives its session and model handles.
        ok(smolcap_stream_begin(s, &img, &p, &mut stream));
        smolcap_session_free(s);
        smolcap_model_free(m);
        let (rc, streamed) = drain(stream);
        ok(rc);
        assert_eq!(streamed, text(c, 0));
        smolcap_stream_free(stream);
        smolcap_captions_free(c);
    }
}

#[test]
fn panic_poisons_the_session() {
    let _g = serial();
    let _live = LiveCheck::new();
    let m = load();
    let s = session(m);
    let png = file("photo_640x480.png");
    let img = encoded(&png);
    let p = gparams();
    // SAFETY: valid handles; NULL is rejected.
    unsafe {
        let st = smolcap_debug_panic(null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["session is NULL"]);
        let st = smolcap_debug_panic(s);
        expect(
            st,
            SMOLCAP_STATUS_PANIC,
            &["smolcap_debug_panic", "forced panic", "poisoned"],
        );
        let (st, _) = caption(s, &[img], Some(&p));
        expect(
            st,
            SMOLCAP_STATUS_POISONED,
            &["smolcap_caption", "poisoned"],
        );
        let mut stream = null_mut();
        let st = smolcap_stream_begin(s, &img, &p, &mut stream);
        expect(st, SMOLCAP_STATUS_POISONED, &["poisoned"]);
        let mut nll = smolcap_nll::default();
        let st = smolcap_session_score(s, &img, c"x".as_ptr(), null(), &mut nll);
        expect(st, SMOLCAP_STATUS_POISONED, &["poisoned"]);
        let st = smolcap_debug_panic(s);
        expect(st, SMOLCAP_STATUS_POISONED, &["poisoned"]);
        // The session was not left busy, and the model is unaffected.
        let s2 = session(m);
        let (st, c) = caption(s2, &[img], Some(&p));
        ok(st);
        smolcap_captions_free(c);
        smolcap_session_free(s2);
        smolcap_session_free(s);
        smolcap_model_free(m);
    }
}

static LOGS: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

unsafe extern "C" fn log_sink(level: u32, msg: *const c_char, user: *mut c_void) {
    assert_eq!(user as usize, 42);
    // SAFETY: NUL-terminated message.
    let s = unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned();
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((level, s));
}

#[test]
fn log_callback() {
    let _g = serial();
    let _live = LiveCheck::new();
    let st = smolcap_set_log_callback(Some(log_sink), 42usize as *mut c_void, 0);
    expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["max_level 0"]);
    let st = smolcap_set_log_callback(Some(log_sink), 42usize as *mut c_void, 5);
    expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["max_level 5"]);
    ok(smolcap_set_log_callback(
        Some(log_sink),
        42usize as *mut c_void,
        SMOLCAP_LOG_DEBUG,
    ));
    let m = load();
    let s = session(m);
    let png = file("photo_640x480.png");
    let (st, c) = caption(s, &[encoded(&png)], Some(&gparams()));
    ok(st);
    ok(smolcap_set_log_callback(
        None,
        null_mut(),
        SMOLCAP_LOG_ERROR,
    ));
    let _ = load_and_free();
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        logs.iter()
            .any(|(l, m)| *l == SMOLCAP_LOG_INFO && m.contains("tiny-idefics3")),
        "{logs:?}"
    );
    assert!(logs
        .iter()
        .any(|(l, m)| *l == SMOLCAP_LOG_DEBUG && m.contains("decode")));
    assert_eq!(
        logs.iter().filter(|(l, _)| *l == SMOLCAP_LOG_INFO).count(),
        1,
        "logged after removal"
    );
    // SAFETY: valid handles.
    unsafe {
        smolcap_captions_free(c);
        smolcap_session_free(s);
        smolcap_model_free(m);
    }
}

fn load_and_free() -> usize {
    let m = load();
    // SAFETY: valid handle.
    unsafe { smolcap_model_free(m) };
    smolcap_debug_live_objects()
}

// ---- adapters (issue 4) ----

fn adapter_dir(name: &str) -> CString {
    cstr(fixture(&format!("adapters/{name}")).to_str().unwrap())
}

fn load_adapter(m: *const smolcap_model, name: &str) -> *mut smolcap_adapter {
    let mut a = null_mut();
    // SAFETY: valid arguments.
    ok(unsafe { smolcap_adapter_load(m, adapter_dir(name).as_ptr(), &mut a) });
    a
}

/// `greedy.token_ids` of one adapter in expected/adapters/cases.json.
fn adapter_tokens(name: &str) -> Vec<u32> {
    let c = cases("adapters");
    if name == "combination" {
        return ids(&c["combination"]["greedy"]["token_ids"]);
    }
    let a = c["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap();
    ids(&a["greedy"]["token_ids"])
}

fn adapter_info(a: *const smolcap_adapter) -> smolcap_adapter_info {
    let mut i = MaybeUninit::<smolcap_adapter_info>::zeroed();
    // SAFETY: zeroed is a valid bit pattern; struct_size set before the call.
    unsafe {
        (*i.as_mut_ptr()).struct_size = size_of::<smolcap_adapter_info>() as u32;
        ok(smolcap_adapter_get_info(a, i.as_mut_ptr()));
        i.assume_init()
    }
}

fn set_adapters(
    s: *mut smolcap_session,
    list: &[*const smolcap_adapter],
    scales: Option<&[f32]>,
) -> smolcap_status {
    // SAFETY: valid arrays of list.len() elements.
    unsafe {
        smolcap_session_set_adapters(
            s,
            if list.is_empty() {
                null()
            } else {
                list.as_ptr()
            },
            scales.map_or(null(), <[f32]>::as_ptr),
            list.len(),
        )
    }
}

fn greedy_tokens(s: *mut smolcap_session, img: &smolcap_image) -> Vec<u32> {
    let p = gparams();
    let (st, c) = caption(s, std::slice::from_ref(img), Some(&p));
    ok(st);
    let t = tokens(c, 0);
    // SAFETY: valid handle.
    unsafe { smolcap_captions_free(c) };
    t
}

#[test]
fn adapters_load_info_errors() {
    let _g = serial();
    let _live = LiveCheck::new();
    let m = load();
    let dir = adapter_dir("text_r4_a8");
    let sentinel = std::ptr::dangling_mut::<smolcap_adapter>();
    let mut a = sentinel;
    // SAFETY: each call has at most one invalid argument, which the library rejects.
    unsafe {
        let st = smolcap_adapter_load(null(), dir.as_ptr(), &mut a);
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["smolcap_adapter_load", "model is NULL"],
        );
        let st = smolcap_adapter_load(m, null(), &mut a);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["dir is NULL"]);
        let st = smolcap_adapter_load(m, bad_utf8(), &mut a);
        expect(st, SMOLCAP_STATUS_UTF8, &["dir", "UTF-8"]);
        let st = smolcap_adapter_load(m, c"".as_ptr(), &mut a);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["dir is empty"]);
        let st = smolcap_adapter_load(m, dir.as_ptr(), null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out is NULL"]);
        let st = smolcap_adapter_load(m, c"/no/such/adapter".as_ptr(), &mut a);
        expect(st, SMOLCAP_STATUS_IO, &["/no/such/adapter"]);
        // A model directory is not an adapter directory.
        let st = smolcap_adapter_load(m, model_dir().as_ptr(), &mut a);
        assert_ne!(st, SMOLCAP_STATUS_OK);
        assert!(last().contains("smolcap_adapter_load"), "{}", last());
        assert_eq!(a, sentinel, "out written on failure");
    }
    let a = load_adapter(m, "text_r4_a8");
    let i = adapter_info(a);
    assert_eq!((i.rank, i.alpha), (4, 8.0));
    assert_eq!((i.num_lora_modules, i.num_vision_modules), (14, 0));
    assert_eq!((i.has_modules_to_save, i.use_rslora), (0, 0));
    // SAFETY: NUL-terminated string owned by the adapter.
    let d = unsafe { CStr::from_ptr(i.dir) }.to_str().unwrap();
    assert!(d.ends_with("adapters/text_r4_a8"), "{d}");
    let c = cases("adapters");
    let seed = &c["adapters"].as_array().unwrap()[1];
    assert_eq!(seed["name"], "seed_style_r2_a5");
    let b = load_adapter(m, "seed_style_r2_a5");
    let i = adapter_info(b);
    assert_eq!(
        i.num_lora_modules as u64,
        seed["num_lora_modules"].as_u64().unwrap()
    );
    assert_eq!(
        i.num_vision_modules as usize,
        seed["vision_lora_modules"].as_array().unwrap().len()
    );
    assert!(i.num_vision_modules > 0);
    let cs = load_adapter(m, "connector_save");
    assert_eq!(adapter_info(cs).has_modules_to_save, 1);
    let rs = load_adapter(m, "rslora_r4_a6");
    assert_eq!(adapter_info(rs).use_rslora, 1);
    // struct_size: too small is rejected; larger leaves the tail alone.
    let mut big = vec![0xAAu8; size_of::<smolcap_adapter_info>() + 32];
    // SAFETY: the buffer has the announced size; unaligned-safe writes are used by the library.
    unsafe {
        std::ptr::write_unaligned(big.as_mut_ptr().cast::<u32>(), 2);
        let st = smolcap_adapter_get_info(a, big.as_mut_ptr().cast());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["struct_size is 2"]);
        std::ptr::write_unaligned(big.as_mut_ptr().cast::<u32>(), big.len() as u32);
        ok(smolcap_adapter_get_info(a, big.as_mut_ptr().cast()));
        assert!(big[size_of::<smolcap_adapter_info>()..]
            .iter()
            .all(|&x| x == 0xAA));
        let st = smolcap_adapter_get_info(null(), big.as_mut_ptr().cast());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["adapter is NULL"]);
        let st = smolcap_adapter_get_info(a, null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out is NULL"]);
        smolcap_adapter_free(null_mut());
        smolcap_adapter_free(a);
        smolcap_adapter_free(b);
        smolcap_adapter_free(cs);
        smolcap_adapter_free(rs);
        smolcap_model_free(m);
    }
}

#[test]
fn adapters_on_sessions() {
    let _g = serial();
    let _live = LiveCheck::new();
    let m = load();
    let m2 = load();
    let s = session(m);
    let png = file("photo_640x480.png");
    let img = encoded(&png);
    let base = greedy_tokens(s, &img);
    assert_eq!(base, ids(&cases("adapters")["base"]["greedy_token_ids"]));
    let a = load_adapter(m, "text_r4_a8");
    let b = load_adapter(m, "text_r2_a3_b");
    let other = load_adapter(m2, "text_r4_a8");

    // Argument errors leave the active set alone.
    let st = set_adapters(null_mut(), &[a], None);
    expect(
        st,
        SMOLCAP_STATUS_INVALID_ARGUMENT,
        &["smolcap_session_set_adapters", "session is NULL"],
    );
    // SAFETY: NULL array with n > 0 is rejected.
    let st = unsafe { smolcap_session_set_adapters(s, null(), null(), 2) };
    expect(
        st,
        SMOLCAP_STATUS_INVALID_ARGUMENT,
        &["adapters is NULL but its count is 2"],
    );
    let st = set_adapters(s, &[a, null()], None);
    expect(
        st,
        SMOLCAP_STATUS_INVALID_ARGUMENT,
        &["adapters[1] is NULL"],
    );
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let st = set_adapters(s, &[a, b], Some(&[1.0, bad]));
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["scales[1]", "finite"],
        );
    }
    let st = set_adapters(s, &[a, other], None);
    expect(
        st,
        SMOLCAP_STATUS_INVALID_ARGUMENT,
        &["adapters[1]", "different model"],
    );
    assert_eq!(
        greedy_tokens(s, &img),
        base,
        "a failed set changed the session"
    );

    // Two adapters at once; the handles may be freed right away.
    ok(set_adapters(s, &[a, b], Some(&[1.0, 0.5])));
    // SAFETY: valid handles; the session holds its own references.
    unsafe {
        smolcap_adapter_free(a);
        smolcap_adapter_free(b);
    }
    assert_eq!(greedy_tokens(s, &img), adapter_tokens("combination"));
    // Scores and streams use them too.
    let mut with = smolcap_nll::default();
    // SAFETY: valid arguments.
    ok(unsafe { smolcap_session_score(s, &img, c"a photo".as_ptr(), null(), &mut with) });
    let p = gparams();
    let mut stream = null_mut();
    // SAFETY: valid arguments.
    ok(unsafe { smolcap_stream_begin(s, &img, &p, &mut stream) });
    // BUSY while the stream runs (or until it is drained).
    let st = set_adapters(s, &[], None);
    assert!(st == SMOLCAP_STATUS_BUSY || st == SMOLCAP_STATUS_OK, "{st}");
    if st == SMOLCAP_STATUS_BUSY {
        assert!(last().contains("in use"), "{}", last());
        let (rc, _) = drain(stream);
        ok(rc);
        let mut r = null_mut();
        // SAFETY: valid arguments.
        ok(unsafe { smolcap_stream_result(stream, &mut r) });
        assert_eq!(tokens(r, 0), adapter_tokens("combination"));
        // SAFETY: valid handles.
        unsafe { smolcap_captions_free(r) };
        ok(set_adapters(s, &[], None));
    }
    // SAFETY: valid handle.
    unsafe { smolcap_stream_free(stream) };

    // n = 0 restores the base model.
    assert_eq!(greedy_tokens(s, &img), base);
    let mut without = smolcap_nll::default();
    // SAFETY: valid arguments.
    ok(unsafe { smolcap_session_score(s, &img, c"a photo".as_ptr(), null(), &mut without) });
    assert_ne!(with.total, without.total);

    // One adapter, default scale; another session of the same model is unaffected.
    let seed = load_adapter(m, "seed_style_r2_a5");
    ok(set_adapters(s, &[seed], None));
    let s2 = session(m);
    assert_eq!(greedy_tokens(s, &img), adapter_tokens("seed_style_r2_a5"));
    assert_eq!(greedy_tokens(s2, &img), base);
    // The session keeps the weights alive after the model and adapter are freed.
    // SAFETY: valid handles.
    unsafe {
        smolcap_adapter_free(seed);
        smolcap_adapter_free(other);
        smolcap_model_free(m);
        smolcap_model_free(m2);
    }
    assert_eq!(greedy_tokens(s, &img), adapter_tokens("seed_style_r2_a5"));
    // SAFETY: valid handles.
    unsafe {
        smolcap_session_free(s);
        smolcap_session_free(s2);
    }
}

fn merge_params() -> smolcap_merge_params {
    let mut p = MaybeUninit::<smolcap_merge_params>::uninit();
    // SAFETY: init writes the whole struct.
    ok(unsafe { smolcap_merge_params_init(p.as_mut_ptr(), size_of::<smolcap_merge_params>()) });
    // SAFETY: initialised above.
    unsafe { p.assume_init() }
}

fn report() -> smolcap_merge_report {
    // SAFETY: all-zero is valid for the integer fields.
    let mut r: smolcap_merge_report = unsafe { MaybeUninit::zeroed().assume_init() };
    r.struct_size = size_of::<smolcap_merge_report>() as u32;
    r
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-ffi-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn merge_save_contract() {
    let _g = serial();
    let _live = LiveCheck::new();
    let base = model_dir();
    let seed_dir = adapter_dir("seed_style_r2_a5");
    let out = temp_dir("merge");
    let out_c = cstr(out.to_str().unwrap());
    let spec = [smolcap_adapter_spec {
        dir: seed_dir.as_ptr(),
        scale: 1.0,
    }];
    let p = merge_params();
    assert_eq!(p.overwrite, 0);
    assert_eq!(p.max_shard_bytes, 5 << 30);
    assert!(p.revision.is_null());
    let mut r = report();
    let merge = |base: *const c_char,
                 specs: *const smolcap_adapter_spec,
                 n: usize,
                 out: *const c_char,
                 p: *const smolcap_merge_params,
                 r: *mut smolcap_merge_report| {
        // SAFETY: the test passes valid pointers or NULL (rejected).
        unsafe { smolcap_merge_save(base, specs, n, out, p, r) }
    };
    let st = merge(null(), spec.as_ptr(), 1, out_c.as_ptr(), &p, &mut r);
    expect(
        st,
        SMOLCAP_STATUS_INVALID_ARGUMENT,
        &["smolcap_merge_save", "base_model_dir_or_repo is NULL"],
    );
    let st = merge(bad_utf8(), spec.as_ptr(), 1, out_c.as_ptr(), &p, &mut r);
    expect(st, SMOLCAP_STATUS_UTF8, &["base_model_dir_or_repo"]);
    let st = merge(base.as_ptr(), spec.as_ptr(), 0, out_c.as_ptr(), &p, &mut r);
    expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["n is 0"]);
    let st = merge(base.as_ptr(), null(), 1, out_c.as_ptr(), &p, &mut r);
    expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["specs is NULL"]);
    let st = merge(base.as_ptr(), spec.as_ptr(), 1, null(), &p, &mut r);
    expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out_dir is NULL"]);
    let bad = [
        spec[0],
        smolcap_adapter_spec {
            dir: bad_utf8(),
            scale: 1.0,
        },
    ];
    let st = merge(base.as_ptr(), bad.as_ptr(), 2, out_c.as_ptr(), &p, &mut r);
    expect(st, SMOLCAP_STATUS_UTF8, &["specs[1].dir"]);
    let bad = [
        spec[0],
        smolcap_adapter_spec {
            dir: null(),
            scale: 1.0,
        },
    ];
    let st = merge(base.as_ptr(), bad.as_ptr(), 2, out_c.as_ptr(), &p, &mut r);
    expect(
        st,
        SMOLCAP_STATUS_INVALID_ARGUMENT,
        &["specs[1].dir is NULL"],
    );
    let nan = [smolcap_adapter_spec {
        dir: seed_dir.as_ptr(),
        scale: f32::NAN,
    }];
    let st = merge(base.as_ptr(), nan.as_ptr(), 1, out_c.as_ptr(), &p, &mut r);
    expect(
        st,
        SMOLCAP_STATUS_INVALID_ARGUMENT,
        &["specs[0].scale", "finite"],
    );
    let missing = [smolcap_adapter_spec {
        dir: c"/no/such/adapter".as_ptr(),
        scale: 1.0,
    }];
    let st = merge(
        base.as_ptr(),
        missing.as_ptr(),
        1,
        out_c.as_ptr(),
        &p,
        &mut r,
    );
    expect(st, SMOLCAP_STATUS_IO, &["specs[0].dir", "/no/such/adapter"]);
    let mut q = p;
    q.overwrite = 2;
    let st = merge(base.as_ptr(), spec.as_ptr(), 1, out_c.as_ptr(), &q, &mut r);
    expect(
        st,
        SMOLCAP_STATUS_INVALID_ARGUMENT,
        &["params.overwrite is 2"],
    );
    let mut q = p;
    q.max_shard_bytes = 0;
    let st = merge(base.as_ptr(), spec.as_ptr(), 1, out_c.as_ptr(), &q, &mut r);
    expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["max_shard_bytes"]);
    let mut q = p;
    q.struct_size = 4;
    let st = merge(base.as_ptr(), spec.as_ptr(), 1, out_c.as_ptr(), &q, &mut r);
    expect(
        st,
        SMOLCAP_STATUS_INVALID_ARGUMENT,
        &["smolcap_merge_params.struct_size is 4"],
    );
    let mut small = report();
    small.struct_size = 8;
    let st = merge(
        base.as_ptr(),
        spec.as_ptr(),
        1,
        out_c.as_ptr(),
        &p,
        &mut small,
    );
    expect(
        st,
        SMOLCAP_STATUS_INVALID_ARGUMENT,
        &["out.struct_size is 8"],
    );
    let st = merge(
        c"/no/such/base".as_ptr(),
        spec.as_ptr(),
        1,
        out_c.as_ptr(),
        &p,
        &mut r,
    );
    expect(st, SMOLCAP_STATUS_IO, &["/no/such/base"]);
    assert!(!out.exists(), "failed merges wrote {}", out.display());
    assert_eq!(r.tensors, 0, "report written on failure");

    // Success (NULL params = defaults); a larger params struct (newer header) is accepted.
    let st = merge(
        base.as_ptr(),
        spec.as_ptr(),
        1,
        out_c.as_ptr(),
        null(),
        &mut r,
    );
    ok(st);
    let c = cases("adapters");
    let seed = &c["adapters"].as_array().unwrap()[1];
    assert_eq!(r.merged_modules, seed["num_lora_modules"].as_u64().unwrap());
    assert_eq!((r.replaced_modules, r.shards, r.warnings), (0, 1, 0));
    assert!(r.tensors > r.merged_modules);
    // A non-empty output directory needs overwrite.
    let st = merge(
        base.as_ptr(),
        spec.as_ptr(),
        1,
        out_c.as_ptr(),
        &p,
        null_mut(),
    );
    expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["not empty"]);
    let mut big = vec![0u8; size_of::<smolcap_merge_params>() + 16];
    // SAFETY: the buffer has the announced size.
    unsafe {
        ok(smolcap_merge_params_init(
            big.as_mut_ptr().cast(),
            big.len(),
        ));
        let mut q: smolcap_merge_params = std::ptr::read_unaligned(big.as_ptr().cast());
        q.overwrite = 1;
        std::ptr::write_unaligned(big.as_mut_ptr().cast(), q);
    }
    let st = merge(
        base.as_ptr(),
        spec.as_ptr(),
        1,
        out_c.as_ptr(),
        big.as_ptr().cast(),
        null_mut(),
    );
    ok(st);

    // The merged model captions like the unmerged adapter.
    let mut m = null_mut();
    // SAFETY: valid arguments.
    ok(unsafe { smolcap_model_load(out_c.as_ptr(), null(), &mut m) });
    let s = session(m);
    let png = file("photo_640x480.png");
    assert_eq!(
        greedy_tokens(s, &encoded(&png)),
        adapter_tokens("seed_style_r2_a5")
    );
    // SAFETY: valid handles.
    unsafe {
        smolcap_session_free(s);
        smolcap_model_free(m);
    }
    let _ = std::fs::remove_dir_all(&out);
}

// ---- metrics (issue 6) ----

fn score(
    cands: &[*const c_char],
    refs: &[*const c_char],
    offsets: &[usize],
    suite: u32,
) -> (smolcap_status, *mut smolcap_scores) {
    let mut out = null_mut();
    // SAFETY: arrays as long as the test says (cands.len(), offsets[n], n + 1).
    let st = unsafe {
        smolcap_score_captions(
            if cands.is_empty() {
                null()
            } else {
                cands.as_ptr()
            },
            cands.len(),
            if refs.is_empty() {
                null()
            } else {
                refs.as_ptr()
            },
            if offsets.is_empty() {
                null()
            } else {
                offsets.as_ptr()
            },
            suite,
            &mut out,
        )
    };
    (st, out)
}

#[test]
fn score_captions_contract() {
    let _g = serial();
    let _live = LiveCheck::new();
    let text = std::fs::read_to_string(fixture("metrics/realistic_input.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cands: Vec<String> = v["cands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    let refs: Vec<Vec<String>> = v["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    let cc: Vec<CString> = cands.iter().map(|c| cstr(c)).collect();
    let rc: Vec<CString> = refs.iter().flatten().map(|c| cstr(c)).collect();
    let cp: Vec<*const c_char> = cc.iter().map(|c| c.as_ptr()).collect();
    let rp: Vec<*const c_char> = rc.iter().map(|c| c.as_ptr()).collect();
    let mut offsets = vec![0usize];
    for r in &refs {
        offsets.push(offsets.last().unwrap() + r.len());
    }
    for (suite, rs) in [
        (SMOLCAP_SUITE_SEED, smolcap::metrics::Suite::Seed),
        (SMOLCAP_SUITE_COCO, smolcap::metrics::Suite::Coco),
    ] {
        let want = smolcap::metrics::score(&cands, &refs, rs).unwrap();
        let (st, sc) = score(&cp, &rp, &offsets, suite);
        ok(st);
        // SAFETY: valid handle.
        unsafe {
            assert_eq!(smolcap_scores_count(sc), cands.len());
            let n = smolcap_scores_metric_count(sc);
            assert_eq!(n, smolcap::metrics::METRIC_NAMES.len());
            for i in 0..n {
                let mut name = null();
                ok(smolcap_scores_metric_name(sc, i, &mut name));
                let name_s = CStr::from_ptr(name).to_str().unwrap();
                assert_eq!(name_s, smolcap::metrics::METRIC_NAMES[i]);
                let mut x = f64::NAN;
                ok(smolcap_scores_corpus(sc, name, &mut x));
                assert_eq!(x.to_bits(), want.get(name_s).unwrap().to_bits(), "{name_s}");
                for img in [0, 7, cands.len() - 1] {
                    ok(smolcap_scores_image(sc, img, name, &mut x));
                    assert_eq!(x.to_bits(), want.per_image[name_s][img].to_bits());
                }
            }
            let mut name = null();
            let st = smolcap_scores_metric_name(sc, n, &mut name);
            expect(
                st,
                SMOLCAP_STATUS_INVALID_ARGUMENT,
                &["index 7 is out of range"],
            );
            let st = smolcap_scores_metric_name(sc, 0, null_mut());
            expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["name is NULL"]);
            let mut x = 0.0;
            let st = smolcap_scores_corpus(sc, c"SPICE".as_ptr(), &mut x);
            expect(
                st,
                SMOLCAP_STATUS_INVALID_ARGUMENT,
                &["\"SPICE\"", "BLEU-4", "CIDEr"],
            );
            let st = smolcap_scores_corpus(sc, bad_utf8(), &mut x);
            expect(st, SMOLCAP_STATUS_UTF8, &["metric"]);
            let st = smolcap_scores_corpus(sc, null(), &mut x);
            expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["metric is NULL"]);
            let st = smolcap_scores_corpus(sc, c"CIDEr".as_ptr(), null_mut());
            expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out is NULL"]);
            let st = smolcap_scores_corpus(null(), c"CIDEr".as_ptr(), &mut x);
            expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["scores is NULL"]);
            let st = smolcap_scores_image(sc, 50, c"CIDEr".as_ptr(), &mut x);
            expect(
                st,
                SMOLCAP_STATUS_INVALID_ARGUMENT,
                &["image 50 is out of range"],
            );
            assert_eq!(x, 0.0, "out written on failure");
            smolcap_scores_free(sc);
        }
    }
    // SAFETY: NULL handles.
    unsafe {
        assert_eq!(smolcap_scores_count(null()), 0);
        assert_eq!(smolcap_scores_metric_count(null()), 0);
        smolcap_scores_free(null_mut());
    }

    // Argument errors.
    let c3 = &cp[..3];
    let r3 = &rp[..offsets[3]];
    let o3 = &offsets[..4];
    let (st, sc) = score(c3, r3, o3, 7);
    expect(
        st,
        SMOLCAP_STATUS_INVALID_ARGUMENT,
        &["smolcap_score_captions", "suite 7"],
    );
    assert!(sc.is_null());
    let (st, _) = score(&[], r3, o3, SMOLCAP_SUITE_SEED);
    expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["n_cands is 0"]);
    // SAFETY: NULL arrays with counts are rejected.
    unsafe {
        let mut out = null_mut();
        let st = smolcap_score_captions(null(), 3, r3.as_ptr(), o3.as_ptr(), 0, &mut out);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["cands is NULL"]);
        let st = smolcap_score_captions(c3.as_ptr(), 3, r3.as_ptr(), null(), 0, &mut out);
        expect(
            st,
            SMOLCAP_STATUS_INVALID_ARGUMENT,
            &["ref_offsets is NULL"],
        );
        let st = smolcap_score_captions(c3.as_ptr(), 3, null(), o3.as_ptr(), 0, &mut out);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["refs is NULL"]);
        let st = smolcap_score_captions(c3.as_ptr(), 3, r3.as_ptr(), o3.as_ptr(), 0, null_mut());
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["out is NULL"]);
        assert!(out.is_null());
    }
    let bad_offsets: &[(&[usize], &str)] = &[
        (&[1, 5, 9, 14], "ref_offsets[0] is 1"),
        (
            &[0, 5, 3, 14],
            "ref_offsets[2] = 3 is smaller than ref_offsets[1] = 5",
        ),
        // Past the end before decreasing (must not read out of bounds).
        (&[0, 1000, 2, 14], "ref_offsets[2] = 2 is smaller"),
        (&[0, 5, 5, 14], "image 1 has no references"),
    ];
    for (o, needle) in bad_offsets {
        let (st, _) = score(c3, r3, o, SMOLCAP_SUITE_SEED);
        expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &[needle]);
    }
    let mut cbad = c3.to_vec();
    cbad[1] = bad_utf8();
    let (st, _) = score(&cbad, r3, o3, SMOLCAP_SUITE_COCO);
    expect(st, SMOLCAP_STATUS_UTF8, &["cands[1]"]);
    let mut rbad = r3.to_vec();
    rbad[6] = bad_utf8();
    let (st, _) = score(c3, &rbad, o3, SMOLCAP_SUITE_SEED);
    expect(st, SMOLCAP_STATUS_UTF8, &["refs[6]"]);
    rbad[6] = null();
    let (st, _) = score(c3, &rbad, o3, SMOLCAP_SUITE_SEED);
    expect(st, SMOLCAP_STATUS_INVALID_ARGUMENT, &["refs[6] is NULL"]);
}
