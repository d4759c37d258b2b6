//! `smolcap._smolcap`: the Python extension module over the smolcap Rust API.
//!
//! Every long call runs on a worker thread with the GIL released while the calling thread waits
//! and polls for signals, so Ctrl-C (`KeyboardInterrupt`) sets the call's cancel flag and the
//! Rust code stops at its next check; the exception then reaches the caller.

mod errors;
mod images;
mod model;
mod tools;
mod train;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use pyo3::prelude::*;

/// How often a waiting call checks for signals (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Runs `f` on a worker thread with the GIL released; on a pending signal (KeyboardInterrupt)
/// sets `cancel`, waits for the worker to stop and raises the signal's exception.
pub(crate) fn run_detached<T: Send>(
    py: Python<'_>,
    cancel: &AtomicBool,
    f: impl FnOnce() -> smolcap::Result<T> + Send,
) -> PyResult<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::scope(|s| {
        s.spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(f));
            let _ = tx.send(r);
        });
        let mut interrupted: Option<PyErr> = None;
        let mut rx = rx;
        loop {
            // The receiver moves in and out: it may not be shared across threads.
            let (back, got) = py.detach(move || {
                let got = rx.recv_timeout(SIGNAL_POLL);
                (rx, got)
            });
            rx = back;
            match got {
                Ok(r) => {
                    if let Some(e) = interrupted {
                        return Err(e);
                    }
                    return match r {
                        Ok(v) => v.map_err(errors::to_pyerr),
                        Err(p) => Err(errors::panic_err(&*p)),
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if interrupted.is_none() {
                        if let Err(e) = py.check_signals() {
                            cancel.store(true, Ordering::Relaxed);
                            interrupted = Some(e);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(errors::panic_err(&"worker thread ended without a result"));
                }
            }
        }
    })
}

/// The extension module.
#[pymodule]
fn _smolcap(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Caption>()?;
    m.add_class::<model::CaptionNll>()?;
    m.add_class::<model::CaptionStream>()?;
    m.add_class::<train::Trainer>()?;
    m.add_function(wrap_pyfunction!(tools::score, m)?)?;
    m.add_function(wrap_pyfunction!(tools::merge, m)?)?;
    m.add_function(wrap_pyfunction!(tools::shard_of, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
