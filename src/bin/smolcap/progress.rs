//! Progress on stderr: an `indicatif` bar on a terminal, one plain line per update elsewhere
//! when `--progress` asks for it, nothing with `--quiet` or on a non-terminal by default.

use std::cell::Cell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing.
    Off,
    /// A redrawn bar (stderr is a terminal).
    Bar,
    /// A line per update, at most one a second (stderr is a file or a pipe and `--progress`
    /// was given).
    Lines,
}

impl Mode {
    /// The mode for the global flags and the stderr at hand.
    pub fn from_flags(quiet: bool, progress: bool) -> Mode {
        let tty = std::io::stderr().is_terminal();
        match (quiet, progress, tty) {
            (true, _, _) => Mode::Off,
            (false, _, true) => Mode::Bar,
            (false, true, false) => Mode::Lines,
            (false, false, false) => Mode::Off,
        }
    }
}

/// One task's progress (`total` units, or a spinner without a total).
pub struct Progress {
    mode: Mode,
    label: String,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Cell<Option<Instant>>,
}

impl Progress {
    /// Starts showing `label`; `total` units of `unit`, or `None` for a task without a count.
    pub fn new(mode: Mode, label: &str, total: Option<u64>, unit: &str) -> Progress {
        let bar = (mode == Mode::Bar).then(|| {
            let b = match total {
                Some(n) => {
                    let b = ProgressBar::new(n);
                    let t = format!(
                        "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}} ({{elapsed}}, ETA {{eta}})"
                    );
                    if let Ok(s) = ProgressStyle::with_template(&t) {
                        b.set_style(s.progress_chars("#>-"));
                    }
                    b
                }
                None => {
                    let b = ProgressBar::new_spinner();
                    if let Ok(s) = ProgressStyle::with_template("{spinner} {prefix} {msg} {elapsed}")
                    {
                        b.set_style(s);
                    }
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                }
            };
            b.set_prefix(label.to_string());
            b
        });
        if mode == Mode::Lines && total.is_none() {
            eprintln!("{label} ...");
        }
        Progress {
            mode,
            label: label.to_string(),
            total,
            bar,
            started: Instant::now(),
            last_line: Cell::new(None),
        }
    }

    /// Moves to `pos` with a short status message.
    pub fn set(&self, pos: u64, msg: &str) {
        match self.mode {
            Mode::Off => {}
            Mode::Bar => {
                if let Some(b) = &self.bar {
                    b.set_position(pos);
                    b.set_message(msg.to_string());
                }
            }
            Mode::Lines => {
                if self
                    .last_line
                    .get()
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
                {
                    return;
                }
                self.last_line.set(Some(Instant::now()));
                let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
                eprintln!(
                    "{} {pos}{of} {msg} ({:.1} s)",
                    self.label,
                    self.started.elapsed().as_secs_f64()
                );
            }
        }
    }

    /// Prints a message without breaking the bar.
    pub fn note(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{msg}")),
            None if self.mode == Mode::Lines => eprintln!("{msg}"),
            None => {}
        }
    }

    /// Ends the display: the bar is left in place with `msg`; a plain line says it too.
    pub fn finish(&self, msg: &str) {
        match self.mode {
            Mode::Off => {}
            Mode::Bar => {
                if let Some(b) = &self.bar {
                    b.finish_with_message(msg.to_string());
                }
            }
            Mode::Lines => eprintln!(
                "{} {msg} ({:.1} s)",
                self.label,
                self.started.elapsed().as_secs_f64()
            ),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A bar left unfinished (an error) is cleared rather than frozen mid-line.
        if let Some(b) = &self.bar {
            if !b.is_finished() {
                b.abandon();
            }
        }
    }
}
