//! Ctrl-C and SIGTERM: the first asks the running command to stop at its next safe point (a
//! cancel flag the library polls), the second exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Exit status of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Installs the handlers and returns the flag the first signal sets.
pub fn install() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered before the flag setter, so it sees the flag as the previous signal left
        // it: the second signal exits without waiting for the command.
        let _ = signal_hook::flag::register_conditional_shutdown(
            sig,
            i32::from(EXIT_INTERRUPTED),
            flag.clone(),
        );
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

/// Whether a stop was asked for.
pub fn requested(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}

/// The error a command returns once it has stopped early and flushed what it finished.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}
