//! Status codes, the per-thread last-error message and the entry-point wrapper.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::Error;

/// Result code of every fallible smolcap function: `SMOLCAP_STATUS_OK` (0) or one of the
/// `SMOLCAP_STATUS_*` error codes. The numbers are fixed and never reused.
pub type smolcap_status = i32;

/// Success.
pub const SMOLCAP_STATUS_OK: smolcap_status = 0;
/// An argument is NULL, out of range or inconsistent (the message names it).
pub const SMOLCAP_STATUS_INVALID_ARGUMENT: smolcap_status = 1;
/// A string argument is not valid UTF-8.
pub const SMOLCAP_STATUS_UTF8: smolcap_status = 2;
/// A file or directory could not be read or written.
pub const SMOLCAP_STATUS_IO: smolcap_status = 3;
/// A file is malformed (config, weights, tokenizer, ...).
pub const SMOLCAP_STATUS_FORMAT: smolcap_status = 4;
/// Valid input that this build does not support (e.g. a CUDA device without CUDA support).
pub const SMOLCAP_STATUS_UNSUPPORTED: smolcap_status = 5;
/// An image could not be decoded or processed.
pub const SMOLCAP_STATUS_IMAGE: smolcap_status = 6;
/// A limit was exceeded (pixels, bytes, tokens, counts).
pub const SMOLCAP_STATUS_LIMIT: smolcap_status = 7;
/// The compute device (or the model hub) failed.
pub const SMOLCAP_STATUS_DEVICE: smolcap_status = 8;
/// The operation was cancelled (`smolcap_session_cancel`).
pub const SMOLCAP_STATUS_CANCELLED: smolcap_status = 9;
/// The handle is in use by another call (sessions are used by one thread at a time).
pub const SMOLCAP_STATUS_BUSY: smolcap_status = 10;
/// The library panicked (a bug); the handle is now poisoned.
pub const SMOLCAP_STATUS_PANIC: smolcap_status = 11;
/// The handle was poisoned by an earlier panic; free it.
pub const SMOLCAP_STATUS_POISONED: smolcap_status = 12;
/// An internal error (a tensor operation failed).
pub const SMOLCAP_STATUS_INTERNAL: smolcap_status = 13;
/// Training produced non-finite loss or gradients too many steps in a row.
pub const SMOLCAP_STATUS_NUMERIC: smolcap_status = 14;

/// An error on its way to the C caller: a status and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FfiError {
    /// The `SMOLCAP_STATUS_*` code.
    pub status: smolcap_status,
    /// What went wrong, naming the argument, field, file or value.
    pub msg: String,
}

impl FfiError {
    /// An error with a status and message.
    pub fn new(status: smolcap_status, msg: impl Into<String>) -> Self {
        Self {
            status,
            msg: msg.into(),
        }
    }

    /// `SMOLCAP_STATUS_INVALID_ARGUMENT`.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(SMOLCAP_STATUS_INVALID_ARGUMENT, msg)
    }

    /// `SMOLCAP_STATUS_LIMIT`.
    pub fn limit(msg: impl Into<String>) -> Self {
        Self::new(SMOLCAP_STATUS_LIMIT, msg)
    }

    /// Prefixes the message with `what: `.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }
}

/// The status code an [`Error`] maps to.
pub fn status_of(e: &Error) -> smolcap_status {
    match e {
        Error::InvalidArgument(_) => SMOLCAP_STATUS_INVALID_ARGUMENT,
        Error::Io { .. } => SMOLCAP_STATUS_IO,
        Error::Format { .. } => SMOLCAP_STATUS_FORMAT,
        Error::Unsupported(_) => SMOLCAP_STATUS_UNSUPPORTED,
        Error::Image(_) => SMOLCAP_STATUS_IMAGE,
        Error::Limit(_) => SMOLCAP_STATUS_LIMIT,
        Error::Device(_) => SMOLCAP_STATUS_DEVICE,
        Error::Cancelled => SMOLCAP_STATUS_CANCELLED,
        Error::Internal(_) => SMOLCAP_STATUS_INTERNAL,
        Error::Numeric(_) => SMOLCAP_STATUS_NUMERIC,
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        Self::new(status_of(&e), e.to_string())
    }
}

/// Result type of entry-point bodies.
pub type FfiResult<T> = std::result::Result<T, FfiError>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Stores `msg` as this thread's last error (NUL bytes are replaced).
pub fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\u{FFFD}")).unwrap_or_default();
    // During thread teardown the thread-local may be gone; then the message is dropped.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

/// The message of this thread's last error (for Rust tests).
pub fn last_error_string() -> String {
    LAST_ERROR
        .try_with(|e| e.borrow().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Text of a panic payload.
pub fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs an entry-point body: catches panics, records failures in the last error (prefixed with
/// the function name) and returns the status. Handles poison themselves during unwinding
/// through [`crate::ffi::handles::PoisonOnUnwind`].
pub fn entry(name: &str, body: impl FnOnce() -> FfiResult<()>) -> smolcap_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => SMOLCAP_STATUS_OK,
        Ok(Err(e)) => {
            set_last_error(&format!("{name}: {}", e.msg));
            e.status
        }
        Err(payload) => {
            let msg = format!(
                "{name}: panic: {} (the handle is now poisoned; free it)",
                panic_message(payload.as_ref())
            );
            set_last_error(&msg);
            crate::ffi::log::emit(crate::ffi::log::SMOLCAP_LOG_ERROR, || msg.clone());
            // A payload whose destructor panics must not unwind into C.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            SMOLCAP_STATUS_PANIC
        }
    }
}

/// Runs an infallible body that returns a value; a panic yields `fallback` (and a last error).
pub fn entry_value<T>(name: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            set_last_error(&format!(
                "{name}: panic: {}",
                panic_message(payload.as_ref())
            ));
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            fallback
        }
    }
}

static EMPTY: &std::ffi::CStr = c"";

/// The message of the last failed smolcap call on the calling thread: never NULL, "" when no
/// call on this thread has failed yet. It names the function and the argument, field, file or
/// value at fault. Only failing calls change it; the pointer stays valid until the next failing
/// smolcap call on the same thread (copy it if you need it longer).
#[no_mangle]
pub extern "C" fn smolcap_last_error() -> *const c_char {
    entry_value("smolcap_last_error", EMPTY.as_ptr(), || {
        LAST_ERROR
            .try_with(|e| e.borrow().as_ptr())
            .unwrap_or(EMPTY.as_ptr())
    })
}

/// A static, human-readable name for a status code ("ok", "invalid argument", ...); never NULL
/// ("unknown status" for numbers that are not `SMOLCAP_STATUS_*` values).
#[no_mangle]
pub extern "C" fn smolcap_status_string(status: smolcap_status) -> *const c_char {
    let s: &'static std::ffi::CStr = match status {
        SMOLCAP_STATUS_OK => c"ok",
        SMOLCAP_STATUS_INVALID_ARGUMENT => c"invalid argument",
        SMOLCAP_STATUS_UTF8 => c"invalid UTF-8",
        SMOLCAP_STATUS_IO => c"I/O error",
        SMOLCAP_STATUS_FORMAT => c"malformed file",
        SMOLCAP_STATUS_UNSUPPORTED => c"unsupported",
        SMOLCAP_STATUS_IMAGE => c"image error",
        SMOLCAP_STATUS_LIMIT => c"limit exceeded",
        SMOLCAP_STATUS_DEVICE => c"device error",
        SMOLCAP_STATUS_CANCELLED => c"cancelled",
        SMOLCAP_STATUS_BUSY => c"busy",
        SMOLCAP_STATUS_PANIC => c"panic",
        SMOLCAP_STATUS_POISONED => c"poisoned",
        SMOLCAP_STATUS_INTERNAL => c"internal error",
        SMOLCAP_STATUS_NUMERIC => c"non-finite values",
        _ => c"unknown status",
    };
    s.as_ptr()
}
