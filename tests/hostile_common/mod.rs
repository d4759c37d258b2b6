//! Helpers shared by the bad-input tests split by kind (`tests/hostile_*.rs`): case counts,
//! error kinds, a watchdog for inputs that used to hang, scratch directories, FIFOs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use smolcap::error::Error;

/// Case counts per entry point (tests run in parallel; each prints its own).
static COUNTS: Mutex<BTreeMap<&'static str, usize>> = Mutex::new(BTreeMap::new());

/// Counts one case of `entry`.
pub fn count(entry: &'static str) {
    *COUNTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(entry)
        .or_insert(0) += 1;
}

/// Prints `hostile: <entry>: N cases` for each entry and checks the total.
pub fn report(entries: &[&'static str], min_total: usize) {
    let c = COUNTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut total = 0;
    for e in entries {
        let n = c.get(e).copied().unwrap_or(0);
        total += n;
        println!("hostile: {e}: {n} cases");
    }
    assert!(total >= min_total, "only {total} cases for {entries:?}");
}

/// The error kind as a short name (the C status it maps to).
pub fn kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument(_) => "invalid",
        Error::Io { .. } => "io",
        Error::Format { .. } => "format",
        Error::Unsupported(_) => "unsupported",
        Error::Image(_) => "image",
        Error::Limit(_) => "limit",
        Error::Device(_) => "device",
        Error::Cancelled => "cancelled",
        Error::Internal(_) => "internal",
        Error::Numeric(_) => "numeric",
    }
}

/// Runs `f` on another thread and fails the test if it has not returned within `secs` (the
/// inputs here used to hang or run for minutes) or if it panicked.
pub fn within<T: Send + 'static>(
    case: &str,
    secs: f64,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let r = catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs_f64(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{case}: the library panicked: {msg}");
        }
        Err(_) => panic!(
            "{case}: no answer after {:.1} s (hang or unbounded work)",
            start.elapsed().as_secs_f64()
        ),
    }
}

/// Asserts `r` is an error of kind `want` whose message contains every needle.
#[track_caller]
pub fn expect_err<T>(case: &str, r: smolcap::Result<T>, want: &str, needles: &[&str]) {
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
            assert!(
                !msg.contains("Some("),
                "{case}: debug formatting in {msg:?}"
            );
        }
    }
}

/// A fresh scratch directory for one test.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-hostile2-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies the regular files of `src` into `dst` (no subdirectories).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// Creates a FIFO at `path` (nobody ever writes to it: opening it for reading blocks).
pub fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// The non-regular things a path can name, made at `path`: a FIFO, symlinks to the endless
/// devices, a directory. Returns a label for each, in order; `make(i)` builds the i-th.
pub const NON_REGULAR: [&str; 4] = ["fifo", "/dev/zero", "/dev/urandom", "directory"];

/// Replaces whatever is at `path` with the `which` of [`NON_REGULAR`].
pub fn make_non_regular(path: &Path, which: &str) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir_all(path);
    match which {
        "fifo" => mkfifo(path),
        "directory" => std::fs::create_dir_all(path).unwrap(),
        dev => std::os::unix::fs::symlink(dev, path).unwrap(),
    }
}
