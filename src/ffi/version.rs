//! Library and ABI versions, compiled features.

use std::ffi::{c_char, CStr};

/// Major version of the header (compare with `smolcap_version()` at run time).
pub const SMOLCAP_VERSION_MAJOR: u32 = 0;
/// Minor version of the header.
pub const SMOLCAP_VERSION_MINOR: u32 = 1;
/// Patch version of the header.
pub const SMOLCAP_VERSION_PATCH: u32 = 0;
/// ABI version of the header: the number in the SONAME (`libsmolcap.so.0`). A library whose
/// `smolcap_abi_version()` differs is not compatible with this header.
pub const SMOLCAP_ABI_VERSION: u32 = 0;

static VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(c) => c,
        Err(_) => c"unknown",
    };

static FEATURES: &CStr = match (cfg!(feature = "cuda"), cfg!(feature = "metal")) {
    (false, false) => c"cpu",
    (true, false) => c"cpu,cuda",
    (false, true) => c"cpu,metal",
    (true, true) => c"cpu,cuda,metal",
};

/// The library version as "MAJOR.MINOR.PATCH" (static string, never NULL).
#[no_mangle]
pub extern "C" fn smolcap_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The ABI version of the loaded library (compare with `SMOLCAP_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn smolcap_abi_version() -> u32 {
    SMOLCAP_ABI_VERSION
}

/// Comma-separated compute backends compiled in: "cpu", plus "cuda" and/or "metal" (static
/// string, never NULL).
#[no_mangle]
pub extern "C" fn smolcap_features() -> *const c_char {
    FEATURES.as_ptr()
}
