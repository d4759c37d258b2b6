//! One Python exception class per smolcap status (the C API's `SMOLCAP_STATUS_*`), all
//! subclasses of `SmolcapError`; each class carries its C status code as `status`.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use smolcap::ffi::status as st;
use smolcap::Error;

create_exception!(
    _smolcap,
    SmolcapError,
    PyException,
    "Base class of every smolcap error."
);
create_exception!(
    _smolcap,
    InvalidArgumentError,
    SmolcapError,
    "An argument is out of range or inconsistent."
);
create_exception!(
    _smolcap,
    IoError,
    SmolcapError,
    "A file or directory could not be read or written."
);
create_exception!(
    _smolcap,
    FormatError,
    SmolcapError,
    "A file is malformed (config, weights, tokenizer, adapter, dataset)."
);
create_exception!(
    _smolcap,
    UnsupportedError,
    SmolcapError,
    "Valid input that this build does not support."
);
create_exception!(
    _smolcap,
    ImageError,
    SmolcapError,
    "An image could not be decoded or processed."
);
create_exception!(
    _smolcap,
    LimitError,
    SmolcapError,
    "A limit was exceeded (pixels, bytes, tokens, batch, cache)."
);
create_exception!(
    _smolcap,
    DeviceError,
    SmolcapError,
    "The compute device (or the model hub) failed."
);
create_exception!(
    _smolcap,
    CancelledError,
    SmolcapError,
    "The operation was cancelled."
);
create_exception!(
    _smolcap,
    PanicError,
    SmolcapError,
    "smolcap panicked (a bug; please report it)."
);
create_exception!(
    _smolcap,
    InternalError,
    SmolcapError,
    "A tensor operation failed (an internal error)."
);
create_exception!(
    _smolcap,
    NumericError,
    SmolcapError,
    "Training produced non-finite values too many steps in a row."
);

/// The Python exception of a smolcap error, with its message.
pub(crate) fn to_pyerr(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::InvalidArgument(_) => InvalidArgumentError::new_err(msg),
        Error::Io { .. } => IoError::new_err(msg),
        Error::Format { .. } => FormatError::new_err(msg),
        Error::Unsupported(_) => UnsupportedError::new_err(msg),
        Error::Image(_) => ImageError::new_err(msg),
        Error::Limit(_) => LimitError::new_err(msg),
        Error::Device(_) => DeviceError::new_err(msg),
        Error::Cancelled => CancelledError::new_err(msg),
        Error::Internal(_) => InternalError::new_err(msg),
        Error::Numeric(_) => NumericError::new_err(msg),
    }
}

/// `PanicError` with the panic's message.
pub(crate) fn panic_err(p: &(dyn std::any::Any + Send)) -> PyErr {
    PanicError::new_err(format!("smolcap panicked: {}", st::panic_message(p)))
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    st::panic_message(p)
}

/// `InvalidArgumentError` with `msg`.
pub(crate) fn invalid(msg: impl Into<String>) -> PyErr {
    InvalidArgumentError::new_err(msg.into())
}

/// Adds the classes to the module, each with its status code.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let classes: [(&str, Bound<'_, pyo3::types::PyType>, i32); 12] = [
        ("SmolcapError", py.get_type::<SmolcapError>(), -1),
        (
            "InvalidArgumentError",
            py.get_type::<InvalidArgumentError>(),
            st::SMOLCAP_STATUS_INVALID_ARGUMENT,
        ),
        ("IoError", py.get_type::<IoError>(), st::SMOLCAP_STATUS_IO),
        (
            "FormatError",
            py.get_type::<FormatError>(),
            st::SMOLCAP_STATUS_FORMAT,
        ),
        (
            "UnsupportedError",
            py.get_type::<UnsupportedError>(),
            st::SMOLCAP_STATUS_UNSUPPORTED,
        ),
        (
            "ImageError",
            py.get_type::<ImageError>(),
            st::SMOLCAP_STATUS_IMAGE,
        ),
        (
            "LimitError",
            py.get_type::<LimitError>(),
            st::SMOLCAP_STATUS_LIMIT,
        ),
        (
            "DeviceError",
            py.get_type::<DeviceError>(),
            st::SMOLCAP_STATUS_DEVICE,
        ),
        (
            "CancelledError",
            py.get_type::<CancelledError>(),
            st::SMOLCAP_STATUS_CANCELLED,
        ),
        (
            "PanicError",
            py.get_type::<PanicError>(),
            st::SMOLCAP_STATUS_PANIC,
        ),
        (
            "InternalError",
            py.get_type::<InternalError>(),
            st::SMOLCAP_STATUS_INTERNAL,
        ),
        (
            "NumericError",
            py.get_type::<NumericError>(),
            st::SMOLCAP_STATUS_NUMERIC,
        ),
    ];
    for (name, ty, status) in classes {
        if status >= 0 {
            ty.setattr("status", status)?;
        }
        m.add(name, ty)?;
    }
    Ok(())
}
