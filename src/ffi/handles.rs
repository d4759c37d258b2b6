//! Handle machinery shared by every object type: live counting, poisoning, busy flags, and
//! checked conversions of C pointers and strings.

use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::status::{
    FfiError, FfiResult, SMOLCAP_STATUS_BUSY, SMOLCAP_STATUS_POISONED, SMOLCAP_STATUS_UTF8,
};

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Counts a newly returned handle.
pub fn live_inc() {
    LIVE.fetch_add(1, Ordering::SeqCst);
}

/// Counts a freed handle.
pub fn live_dec() {
    LIVE.fetch_sub(1, Ordering::SeqCst);
}

/// Boxes `value`, counts it as live and returns the raw handle.
pub fn into_handle<T>(value: T) -> *mut T {
    live_inc();
    Box::into_raw(Box::new(value))
}

/// Frees a handle made by [`into_handle`]; NULL is a no-op.
///
/// # Safety
/// `p` must be NULL or a pointer returned by [`into_handle`] with the same `T`, not yet freed.
pub unsafe fn free_handle<T>(p: *mut T) {
    if p.is_null() {
        return;
    }
    // SAFETY: per the contract, `p` came from `Box::into_raw` and is freed exactly once.
    drop(unsafe { Box::from_raw(p) });
    live_dec();
}

/// Number of handles (models, sessions, captions, streams, ...) returned and not yet freed, in
/// the whole process. For tests and leak hunting: a host that freed everything sees 0.
#[no_mangle]
pub extern "C" fn smolcap_debug_live_objects() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// Sets a poison flag if dropped during a panic: hold one for each handle a call works on.
pub struct PoisonOnUnwind<'a>(pub &'a AtomicBool);

impl Drop for PoisonOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Fails with `POISONED` when the flag is set.
pub fn check_poison(flag: &AtomicBool, what: &str) -> FfiResult<()> {
    if flag.load(Ordering::SeqCst) {
        return Err(FfiError::new(
            SMOLCAP_STATUS_POISONED,
            format!("{what} was poisoned by an earlier panic; free it"),
        ));
    }
    Ok(())
}

/// Exclusive use of a handle: acquired with [`Busy::acquire`], released on drop.
pub struct Busy(Arc<AtomicBool>);

impl Busy {
    /// Marks the handle busy, or fails with `BUSY` when another call holds it.
    pub fn acquire(flag: &Arc<AtomicBool>, what: &str) -> FfiResult<Self> {
        flag.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .map_err(|_| {
                FfiError::new(
                    SMOLCAP_STATUS_BUSY,
                    format!(
                        "{what} is in use by another call or an unfinished stream \
                         (use one session per thread)"
                    ),
                )
            })?;
        Ok(Busy(Arc::clone(flag)))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Borrows a handle, failing with `INVALID_ARGUMENT` naming `what` when NULL.
///
/// # Safety
/// `p` must be NULL or point to a live `T` that outlives `'a`.
pub unsafe fn handle<'a, T>(p: *const T, what: &str) -> FfiResult<&'a T> {
    // SAFETY: the caller guarantees `p` is NULL or valid for `'a`.
    unsafe { p.as_ref() }.ok_or_else(|| FfiError::invalid(format!("{what} is NULL")))
}

/// Fails with `INVALID_ARGUMENT` when an out-pointer is NULL.
pub fn check_out<T>(p: *mut T, what: &str) -> FfiResult<()> {
    if p.is_null() {
        return Err(FfiError::invalid(format!("{what} is NULL")));
    }
    Ok(())
}

/// Reads an optional C string (NULL gives `None`), checking UTF-8.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string valid for `'a`.
pub unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map(Some).map_err(|e| {
        FfiError::new(
            SMOLCAP_STATUS_UTF8,
            format!(
                "{what} is not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Reads a required C string.
///
/// # Safety
/// As [`opt_str`].
pub unsafe fn req_str<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    // SAFETY: forwarded contract.
    unsafe { opt_str(p, what) }?.ok_or_else(|| FfiError::invalid(format!("{what} is NULL")))
}

/// Largest element count accepted for any caller array (guards `len * size` overflow).
pub(crate) const MAX_ARRAY_LEN: usize = 1 << 20;

/// Borrows a caller array of `n` elements; `n == 0` is allowed here (callers decide).
///
/// # Safety
/// When `n > 0`, `p` must point to `n` valid, initialised `T`s that outlive `'a`.
pub unsafe fn slice<'a, T>(p: *const T, n: usize, what: &str) -> FfiResult<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(FfiError::invalid(format!(
            "{what} is NULL but its count is {n}"
        )));
    }
    if n > MAX_ARRAY_LEN {
        return Err(FfiError::limit(format!(
            "{what} count {n} exceeds the limit of {MAX_ARRAY_LEN}"
        )));
    }
    // SAFETY: non-NULL, `n` bounded so `n * size_of::<T>()` cannot overflow isize for our
    // types, and the caller guarantees `n` valid elements.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Borrows a caller byte buffer of `len` bytes (non-NULL, non-empty, at most `max_len`).
///
/// # Safety
/// `p` must point to `len` readable bytes that outlive `'a`.
pub unsafe fn bytes<'a>(p: *const u8, len: usize, max_len: u64, what: &str) -> FfiResult<&'a [u8]> {
    if p.is_null() {
        return Err(FfiError::invalid(format!("{what} is NULL")));
    }
    if len == 0 {
        return Err(FfiError::invalid(format!("{what} has length 0")));
    }
    if len as u64 > max_len || len > isize::MAX as usize {
        return Err(FfiError::limit(format!(
            "{what} has {len} bytes, more than the limit of {max_len}"
        )));
    }
    // SAFETY: non-NULL, len <= isize::MAX, and the caller guarantees `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}
