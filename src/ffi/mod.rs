//! The C ABI (`include/smolcap.h`, generated from this module by cbindgen).
//!
//! This module holds every `#[no_mangle]` symbol and most of the crate's `unsafe` code (the rest
//! is in the CPU kernels under `src/kernels`; see docs/DESIGN.md, "Where `unsafe`
//! is"). Conventions (docs/DESIGN.md, "C API conventions"):
//! - every fallible function returns a [`status::smolcap_status`]; the message is in the
//!   per-thread [`status::smolcap_last_error`];
//! - out-params are written only on success; inputs are borrowed for the call only;
//! - params structs begin with `uint32_t struct_size` and have a `*_params_init` function;
//!   NULL params mean defaults;
//! - enums cross as `uint32_t` plus `SMOLCAP_*` constants and are validated;
//! - every entry point catches panics: the call returns `SMOLCAP_STATUS_PANIC` and the handle it
//!   was working on is poisoned (later calls return `SMOLCAP_STATUS_POISONED`);
//! - each returned object has one `_free` function that accepts NULL.
//!
//! New functions (adapters, trainer, metrics) follow the same pattern: wrap the body in
//! [`status::entry`], resolve handles with [`handles`], read params with [`params::read`],
//! and count new handle kinds with [`handles::live_inc`] / [`handles::live_dec`].

pub mod adapter;
pub mod handles;
pub mod log;
pub mod metrics;
pub mod model;
pub mod params;
pub mod session;
pub mod status;
pub mod stream;
pub mod train;
pub mod version;
