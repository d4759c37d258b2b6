//! The error type every fallible smolcap function returns.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in smolcap; each variant maps to one C status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-supplied argument is out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory at fault.
        path: PathBuf,
        /// The underlying OS error.
        source: std::io::Error,
    },
    /// A file exists but its content is malformed (config, safetensors, tokenizer, adapter, ...).
    #[error("{path}: {msg}")]
    Format {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong, naming the field or key.
        msg: String,
    },
    /// The input is valid but this build does not support it.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An image could not be decoded or processed.
    #[error("image: {0}")]
    Image(String),
    /// A configured limit was exceeded (pixels, bytes, tokens, ...).
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The compute device failed or is unavailable.
    #[error("device: {0}")]
    Device(String),
    /// The operation was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    /// A tensor operation failed (an internal invariant, reported rather than panicking).
    #[error("internal: {0}")]
    Internal(String),
    /// Training produced non-finite values too many times in a row.
    #[error("numeric: {0}")]
    Numeric(String),
}

impl Error {
    /// Builds a `Format` error for `path` with a message.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// Builds an `Io` error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        // candle appends a backtrace when RUST_BACKTRACE is set; keep the message only.
        let msg = e.to_string();
        let first = msg
            .lines()
            .next()
            .unwrap_or("tensor error")
            .trim()
            .to_string();
        Error::Internal(first)
    }
}

impl From<crate::metrics::MetricsError> for Error {
    fn from(e: crate::metrics::MetricsError) -> Self {
        use crate::metrics::MetricsError as M;
        match e {
            M::Io { path, source } => Error::Io {
                path: path.into(),
                source,
            },
            M::Format { path, msg } => Error::Format {
                path: path.into(),
                msg,
            },
            M::WordNet(_) => Error::Internal(e.to_string()),
            M::Limit(m) => Error::Limit(m),
            _ => Error::InvalidArgument(e.to_string()),
        }
    }
}
