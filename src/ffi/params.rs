//! Versioned structs: every params (input) and info (output) struct begins with
//! `uint32_t struct_size`, the `sizeof` the caller was compiled with.
//!
//! - Smaller than the first version's size: `INVALID_ARGUMENT`.
//! - Between the first and the current size (an older header): the fields it covers are used,
//!   later fields take their defaults.
//! - Larger than the current size (a newer header): the fields beyond ours are ignored.
//!
//! Adding a field: append it at the end of the struct, give it a default in
//! [`Versioned::defaults`], and keep `V1_SIZE` pointing at the last field of the first version.

use std::mem::size_of;

use super::status::{FfiError, FfiResult};

/// A `#[repr(C)]` plain-old-data struct whose first field is `struct_size: u32`.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, start with a `u32` size field, and be valid for any bit
/// pattern in every field (integers, floats, raw pointers only).
pub unsafe trait Versioned: Copy {
    /// The C type name, for messages.
    const NAME: &'static str;
    /// Bytes up to the end of the last field of the first version.
    const V1_SIZE: usize;
    /// The defaults (`struct_size` set to `size_of::<Self>()`).
    fn defaults() -> Self;
}

/// `offset_of!(T, field) + size_of(field)`: the end of a field, for `V1_SIZE`.
#[macro_export]
#[doc(hidden)]
macro_rules! ffi_field_end {
    ($t:ty, $field:ident, $ft:ty) => {
        ::std::mem::offset_of!($t, $field) + ::std::mem::size_of::<$ft>()
    };
}

fn too_small<T: Versioned>(size: u32) -> FfiError {
    FfiError::invalid(format!(
        "{}.struct_size is {size}, smaller than the first version's {} bytes \
         (initialise the struct with its _init function or set struct_size = sizeof)",
        T::NAME,
        T::V1_SIZE
    ))
}

/// Reads a caller's params struct; NULL gives the defaults.
///
/// # Safety
/// `p` must be NULL or point to at least `p->struct_size` readable bytes (at least `V1_SIZE`
/// of them once `struct_size` is checked).
pub unsafe fn read<T: Versioned>(p: *const T) -> FfiResult<T> {
    if p.is_null() {
        return Ok(T::defaults());
    }
    // SAFETY: a non-NULL params pointer has at least its leading u32 readable.
    let size = unsafe { std::ptr::read_unaligned(p.cast::<u32>()) };
    if (size as usize) < T::V1_SIZE {
        return Err(too_small::<T>(size));
    }
    let mut out = T::defaults();
    let n = (size as usize).min(size_of::<T>());
    // SAFETY: the caller has `size >= n` readable bytes; `out` has `size_of::<T>() >= n`
    // bytes; any bit pattern is valid for `T` (trait contract); the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(p.cast::<u8>(), (&raw mut out).cast::<u8>(), n);
    }
    Ok(out)
}

/// Writes `value` into a caller's struct, leaving its `struct_size` as is and never touching
/// bytes beyond `min(struct_size, size_of::<T>())`.
///
/// # Safety
/// `p` must be non-NULL and point to at least `p->struct_size` writable bytes.
pub unsafe fn write<T: Versioned>(p: *mut T, value: &T) -> FfiResult<()> {
    // SAFETY: non-NULL (checked by callers), leading u32 readable.
    let size = unsafe { std::ptr::read_unaligned(p.cast::<u32>().cast_const()) };
    if (size as usize) < T::V1_SIZE {
        return Err(too_small::<T>(size));
    }
    let n = (size as usize).min(size_of::<T>());
    let skip = size_of::<u32>();
    // SAFETY: both regions have at least `n` bytes (caller contract / size_of), `n >= skip`
    // since V1_SIZE covers at least the size field, and they do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (value as *const T).cast::<u8>().add(skip),
            p.cast::<u8>().add(skip),
            n - skip,
        );
    }
    Ok(())
}

/// Fills a caller's params struct with defaults: `struct_size` must be the caller's
/// `sizeof`; bytes beyond the fields this library knows are zeroed.
///
/// # Safety
/// `p` must be NULL or point to `struct_size` writable bytes.
pub unsafe fn init<T: Versioned>(p: *mut T, struct_size: usize) -> FfiResult<()> {
    if p.is_null() {
        return Err(FfiError::invalid("params is NULL"));
    }
    if struct_size < T::V1_SIZE || struct_size > u32::MAX as usize {
        return Err(FfiError::invalid(format!(
            "struct_size {struct_size} is not a valid size for {} (at least {} bytes; pass \
             sizeof({}))",
            T::NAME,
            T::V1_SIZE,
            T::NAME
        )));
    }
    let d = T::defaults();
    let n = struct_size.min(size_of::<T>());
    // SAFETY: the caller owns `struct_size` writable bytes at `p`; we write `n <= struct_size`
    // bytes from `d`, then zero the remaining `struct_size - n` bytes, then the size field.
    unsafe {
        let dst = p.cast::<u8>();
        std::ptr::copy_nonoverlapping((&raw const d).cast::<u8>(), dst, n);
        std::ptr::write_bytes(dst.add(n), 0, struct_size - n);
        std::ptr::write_unaligned(p.cast::<u32>(), struct_size as u32);
    }
    Ok(())
}

/// Reads a 0/1 field of a params struct as a bool (`INVALID_ARGUMENT` naming it otherwise).
pub fn flag(v: u32, what: &str) -> FfiResult<bool> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(FfiError::invalid(format!(
            "params.{what} is {v}, must be 0 or 1"
        ))),
    }
}
