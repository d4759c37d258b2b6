//! Pull-style caption streams: a worker thread captions and sends pieces over a channel; the
//! host pulls them with `smolcap_stream_next` (no callbacks into the host).

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;

use super::handles::{self, Busy};
use super::session::{
    settings, smolcap_captions, smolcap_generate_params, smolcap_image, smolcap_session,
    source_image,
};
use super::status::{
    entry, panic_message, smolcap_status, FfiError, FfiResult, SMOLCAP_STATUS_BUSY,
    SMOLCAP_STATUS_INTERNAL, SMOLCAP_STATUS_PANIC, SMOLCAP_STATUS_POISONED,
};
use crate::session::Caption;

enum Msg {
    Piece(String),
    Done(FfiResult<Caption>),
}

enum End {
    Running,
    Finished(Caption),
    Failed(FfiError),
}

struct Inner {
    rx: Option<Receiver<Msg>>,
    /// The last piece, NUL-terminated (valid until the next `stream_next`).
    piece: Vec<u8>,
    end: End,
}

/// A caption being generated on a worker thread; pull its text with `smolcap_stream_next`.
/// Used by one thread at a time (concurrent calls return `SMOLCAP_STATUS_BUSY`). While it runs,
/// its session is busy; `smolcap_session_cancel` on the session cancels it.
pub struct smolcap_stream {
    inner: Mutex<Inner>,
    cancel: Arc<AtomicBool>,
    poisoned: AtomicBool,
    worker: Option<JoinHandle<()>>,
}

impl Drop for smolcap_stream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        // Dropping the receiver makes a blocked send fail, so the worker ends at its next step.
        match self.inner.get_mut() {
            Ok(i) => drop(i.rx.take()),
            Err(e) => drop(e.into_inner().rx.take()),
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Pieces buffered between the worker and the host before the worker waits.
const CHANNEL_CAP: usize = 256;

/// Starts captioning `image` on a worker thread. On success `*out` receives a stream; pull the
/// text with `smolcap_stream_next`, and free it with `smolcap_stream_free`. Image and params
/// errors are reported here; generation errors by `smolcap_stream_next`. The session stays busy
/// until the stream has ended (or is freed). `params.batch_size` is ignored.
///
/// # Safety
/// `session` NULL or live; `image` NULL or a valid image; `params` NULL or valid; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_stream_begin(
    session: *mut smolcap_session,
    image: *const smolcap_image,
    params: *const smolcap_generate_params,
    out: *mut *mut smolcap_stream,
) -> smolcap_status {
    entry("smolcap_stream_begin", || {
        // SAFETY: caller contract.
        let s = unsafe { handles::handle(session.cast_const(), "session") }?;
        // SAFETY: caller contract.
        let img = unsafe { handles::handle(image, "image") }?;
        handles::check_out(out, "out")?;
        s.check()?;
        let _poison = handles::PoisonOnUnwind(&s.state.poisoned);
        let busy = Busy::acquire(&s.state.busy, "the session")?;
        // SAFETY: caller contract.
        let mut set = unsafe { settings(params, &s.model) }?;
        set.opts.adapters = s.state.adapters();
        // SAFETY: caller contract on the image buffer.
        let src = unsafe { source_image(img, &set.limits, "image") }?;
        let cancel = s.state.new_call();
        let (tx, rx) = sync_channel::<Msg>(CHANNEL_CAP);
        let model = Arc::clone(&s.model);
        let state = Arc::clone(&s.state);
        let flag = Arc::clone(&cancel);
        let work = move || {
            let run = catch_unwind(AssertUnwindSafe(|| {
                let mut on_piece = |_r: usize, piece: &str| {
                    if tx.send(Msg::Piece(piece.to_string())).is_err() {
                        std::ops::ControlFlow::Break(())
                    } else {
                        std::ops::ControlFlow::Continue(())
                    }
                };
                model
                    .model
                    .caption(&[vec![&src]], &set.opts, &flag, &mut on_piece)
                    .map_err(|e| FfiError::from(e).context("image"))
                    .and_then(|mut v| {
                        v.pop().ok_or_else(|| {
                            FfiError::new(SMOLCAP_STATUS_INTERNAL, "no caption returned")
                        })
                    })
            }));
            let result = match run {
                Ok(r) => r,
                Err(p) => {
                    state.poisoned.store(true, Ordering::SeqCst);
                    let msg = format!(
                        "panic in the stream worker: {} (the session is now poisoned)",
                        panic_message(p.as_ref())
                    );
                    let _ = catch_unwind(AssertUnwindSafe(move || drop(p)));
                    Err(FfiError::new(SMOLCAP_STATUS_PANIC, msg))
                }
            };
            // Release the session before announcing the end, so it is usable at once.
            drop(busy);
            let _ = tx.send(Msg::Done(result));
        };
        let worker = std::thread::Builder::new()
            .name("smolcap-stream".into())
            .spawn(work)
            .map_err(|e| {
                FfiError::new(
                    SMOLCAP_STATUS_INTERNAL,
                    format!("cannot start the worker thread: {e}"),
                )
            })?;
        let h = handles::into_handle(smolcap_stream {
            inner: Mutex::new(Inner {
                rx: Some(rx),
                piece: Vec::new(),
                end: End::Running,
            }),
            cancel,
            poisoned: AtomicBool::new(false),
            worker: Some(worker),
        });
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { out.write(h) };
        Ok(())
    })
}

fn lock(st: &smolcap_stream) -> FfiResult<std::sync::MutexGuard<'_, Inner>> {
    handles::check_poison(&st.poisoned, "the stream")?;
    match st.inner.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(FfiError::new(
            SMOLCAP_STATUS_BUSY,
            "the stream is in use by another thread",
        )),
        Err(TryLockError::Poisoned(_)) => Err(FfiError::new(
            SMOLCAP_STATUS_POISONED,
            "the stream was poisoned by an earlier panic; free it",
        )),
    }
}

/// Waits for the next piece of text. On `SMOLCAP_STATUS_OK`, `*piece` is a NUL-terminated UTF-8
/// string owned by the stream (valid until the next call on it), or NULL when the caption is
/// complete; `len` (may be NULL) receives its length. After the end every call returns OK with
/// NULL. A generation error (e.g. `SMOLCAP_STATUS_CANCELLED`) is returned by this call and by
/// every later one.
///
/// # Safety
/// `stream` NULL or live; `piece` NULL or writable; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_stream_next(
    stream: *mut smolcap_stream,
    piece: *mut *const c_char,
    len: *mut usize,
) -> smolcap_status {
    entry("smolcap_stream_next", || {
        // SAFETY: caller contract.
        let st = unsafe { handles::handle(stream.cast_const(), "stream") }?;
        handles::check_out(piece, "piece")?;
        let mut g = lock(st)?;
        let _poison = handles::PoisonOnUnwind(&st.poisoned);
        let inner = &mut *g;
        let msg = match &inner.end {
            End::Finished(_) => None,
            End::Failed(e) => return Err(e.clone()),
            End::Running => {
                let rx = inner.rx.as_ref().ok_or_else(|| {
                    FfiError::new(SMOLCAP_STATUS_INTERNAL, "stream channel missing")
                })?;
                Some(rx.recv().map_err(|_| {
                    FfiError::new(
                        SMOLCAP_STATUS_INTERNAL,
                        "the stream worker ended without a result",
                    )
                })?)
            }
        };
        let (ptr, n) = match msg {
            None => (std::ptr::null(), 0),
            Some(Msg::Piece(p)) => {
                inner.piece.clear();
                inner.piece.extend_from_slice(p.as_bytes());
                inner.piece.push(0);
                (inner.piece.as_ptr().cast::<c_char>(), p.len())
            }
            Some(Msg::Done(Ok(c))) => {
                inner.end = End::Finished(c);
                (std::ptr::null(), 0)
            }
            Some(Msg::Done(Err(e))) => {
                if e.status == SMOLCAP_STATUS_PANIC {
                    st.poisoned.store(true, Ordering::SeqCst);
                    inner.end = End::Failed(FfiError::new(
                        SMOLCAP_STATUS_POISONED,
                        "the stream was poisoned by a panic; free it",
                    ));
                } else {
                    inner.end = End::Failed(e.clone());
                }
                return Err(e);
            }
        };
        // SAFETY: `piece` checked non-NULL; `len` written only when non-NULL.
        unsafe {
            piece.write(ptr);
            if !len.is_null() {
                len.write(n);
            }
        }
        Ok(())
    })
}

/// The finished caption of a stream (text, tokens, stats) as a captions object holding one
/// caption; call after `smolcap_stream_next` returned the end (NULL piece). Free it with
/// `smolcap_captions_free`; it does not depend on the stream.
///
/// # Safety
/// `stream` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_stream_result(
    stream: *mut smolcap_stream,
    out: *mut *mut smolcap_captions,
) -> smolcap_status {
    entry("smolcap_stream_result", || {
        // SAFETY: caller contract.
        let st = unsafe { handles::handle(stream.cast_const(), "stream") }?;
        handles::check_out(out, "out")?;
        let g = lock(st)?;
        let _poison = handles::PoisonOnUnwind(&st.poisoned);
        match &g.end {
            End::Finished(c) => {
                let h = handles::into_handle(smolcap_captions::from_captions(vec![c.clone()]));
                // SAFETY: checked non-NULL.
                unsafe { out.write(h) };
                Ok(())
            }
            End::Failed(e) => Err(e.clone()),
            End::Running => Err(FfiError::invalid(
                "the stream has not ended yet (call smolcap_stream_next until it returns a \
                 NULL piece)",
            )),
        }
    })
}

/// Stops (if still running) and frees a stream; NULL is a no-op. Blocks until the worker has
/// stopped, which takes at most one decoding step (or the image encoding in progress).
///
/// # Safety
/// `stream` must be NULL or a live stream not used by another thread during this call.
#[no_mangle]
pub unsafe extern "C" fn smolcap_stream_free(stream: *mut smolcap_stream) {
    let _ = entry("smolcap_stream_free", || {
        // SAFETY: forwarded contract.
        unsafe { handles::free_handle(stream) };
        Ok(())
    });
}
