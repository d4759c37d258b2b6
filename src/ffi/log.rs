//! The process-wide log callback.

use std::ffi::{c_char, c_void, CString};
use std::sync::RwLock;

use super::status::{entry, smolcap_status, FfiError};

/// Log level: errors (including caught panics).
pub const SMOLCAP_LOG_ERROR: u32 = 1;
/// Log level: warnings.
pub const SMOLCAP_LOG_WARN: u32 = 2;
/// Log level: one line per model load and similar events.
pub const SMOLCAP_LOG_INFO: u32 = 3;
/// Log level: per-call details (timings).
pub const SMOLCAP_LOG_DEBUG: u32 = 4;

/// Receives log messages: `level` is a `SMOLCAP_LOG_*` value, `message` a NUL-terminated UTF-8
/// string valid only during the call, `user` the pointer given to `smolcap_set_log_callback`.
///
/// It may be called from any thread that runs smolcap code (including the worker thread of a
/// stream), possibly from several at once, so it must be thread-safe. It must not call
/// `smolcap_set_log_callback` and must not unwind or longjmp.
pub type smolcap_log_callback =
    Option<unsafe extern "C" fn(level: u32, message: *const c_char, user: *mut c_void)>;

#[derive(Clone, Copy)]
struct Sink {
    cb: unsafe extern "C" fn(u32, *const c_char, *mut c_void),
    user: usize,
    max_level: u32,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Sends a message to the log callback when one is set for `level`; `msg` is only evaluated
/// then.
pub fn emit(level: u32, msg: impl FnOnce() -> String) {
    let guard = match SINK.read() {
        Ok(g) => g,
        Err(e) => e.into_inner(),
    };
    if let Some(s) = *guard {
        if level <= s.max_level {
            let c = CString::new(msg().replace('\0', "\u{FFFD}")).unwrap_or_default();
            // SAFETY: the host registered `cb` with `user` and promised it is callable from any
            // thread until replaced; we hold the read lock so it cannot be replaced meanwhile.
            unsafe { (s.cb)(level, c.as_ptr(), s.user as *mut c_void) };
        }
    }
}

/// Installs (or, with `callback` NULL, removes) the process-wide log callback; messages with a
/// level above `max_level` (a `SMOLCAP_LOG_*` value) are not sent. After this returns the
/// previous callback is no longer called. Default: no callback.
#[no_mangle]
pub extern "C" fn smolcap_set_log_callback(
    callback: smolcap_log_callback,
    user: *mut c_void,
    max_level: u32,
) -> smolcap_status {
    entry("smolcap_set_log_callback", || {
        if !(SMOLCAP_LOG_ERROR..=SMOLCAP_LOG_DEBUG).contains(&max_level) {
            return Err(FfiError::invalid(format!(
                "max_level {max_level} is not a SMOLCAP_LOG_* value (1..=4)"
            )));
        }
        let mut guard = match SINK.write() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        *guard = callback.map(|cb| Sink {
            cb,
            user: user as usize,
            max_level,
        });
        Ok(())
    })
}
