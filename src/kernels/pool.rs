//! Where the model's parallel kernels run: on Rayon's pool, with the pool's other threads kept
//! looking for work through the many short parallel passes of a decode step.
//!
//! A decode step is a few hundred parallel passes of tens of microseconds each, separated by
//! short serial stretches. Rayon parks an idle worker after about 33 empty rounds, and waking it
//! again is a futex call on the critical path plus the scheduler's latency (on 2 cores of a VM,
//! futex wake/wait and `sched_yield` took 9% of decode's CPU time). So while a forward pass runs,
//! and briefly after it, one helper job per other worker keeps taking work instead of parking.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long helpers go on after the last forward pass ends: longer than the gap between two
/// decode steps (sampling, detokenizing), short enough that an idle process soon stops spinning.
const GRACE: Duration = Duration::from_millis(2);

/// Longest one helper holds its thread before handing it back to Rayon; the next forward pass
/// starts a new one. Bounds the delay a helper can cause to work waiting beneath it on its stack.
const LIFETIME: Duration = Duration::from_millis(50);

/// The pool's warmth: the sections running and the helpers keeping its workers busy.
pub(crate) struct Warmth {
    /// Warm sections (forward passes) running now, in any thread.
    active: AtomicUsize,
    /// When the last section ended, in nanoseconds since [`epoch`].
    last_end: AtomicU64,
    /// Helpers queued or taking work (a helper hosting a section beneath it does not count).
    helpers: AtomicUsize,
}

/// The warmth of Rayon's global pool, which the model's kernels use.
static GLOBAL: Warmth = Warmth::new();

thread_local! {
    /// Warm sections on this thread's stack, whatever their [`Warmth`].
    static SECTIONS: Cell<usize> = const { Cell::new(0) };
    /// Whether a helper is on this thread's stack.
    static HELPING: Cell<bool> = const { Cell::new(false) };
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `f` on a thread of Rayon's pool (directly when already on one) with the pool kept warm,
/// so the parallel kernels inside it are split from a pool thread instead of being handed over
/// from this one, and the other workers take them without being woken.
///
/// A thread outside the pool blocks and is woken again at every parallel kernel, and a decode
/// step runs a few hundred of them (in-process A/B on the 256M model, 2 cores: 33-44 →
/// 26-34 ms/token).
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        GLOBAL.section(f)
    } else {
        rayon::scope(|_| GLOBAL.section(f))
    }
}

impl Warmth {
    const fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            helpers: AtomicUsize::new(0),
        }
    }

    /// Runs `f` (on a pool thread) as a warm section, starting helpers for the other workers.
    fn section<R>(&'static self, f: impl FnOnce() -> R) -> R {
        /// Ends the section even if `f` unwinds.
        struct End(&'static Warmth, bool);
        impl Drop for End {
            fn drop(&mut self) {
                SECTIONS.with(|d| d.set(d.get() - 1));
                if self.1 {
                    self.0.helpers.fetch_add(1, Ordering::SeqCst);
                }
                // The end time is written before the count drops, so a helper that sees no
                // section running also sees when the last one ended.
                self.0.last_end.store(now_ns(), Ordering::SeqCst);
                self.0.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.active.fetch_add(1, Ordering::SeqCst);
        // A helper that took this section as its work is busy with it until it ends: another
        // helper is started for the thread it leaves without one.
        let hosted = SECTIONS.with(|d| d.replace(d.get() + 1)) == 0 && HELPING.with(Cell::get);
        if hosted {
            self.helpers.fetch_sub(1, Ordering::SeqCst);
        }
        let _end = End(self, hosted);
        let want = rayon::current_num_threads().saturating_sub(1);
        let mut running = self.helpers.load(Ordering::SeqCst);
        while running < want {
            match self.helpers.compare_exchange(
                running,
                running + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    rayon::spawn(move || self.help());
                    running += 1;
                }
                Err(now) => running = now,
            }
        }
        f()
    }

    /// Whether helpers should stop: no section running and the last one ended over [`GRACE`]
    /// ago.
    fn cooled(&self) -> bool {
        self.active.load(Ordering::SeqCst) == 0
            && now_ns().saturating_sub(self.last_end.load(Ordering::SeqCst))
                > GRACE.as_nanos() as u64
    }

    /// A helper: takes pool work until the pool cools down or its lifetime ends. On a thread
    /// with a section or helper already on its stack (the forward pass that spawned it, say) it
    /// returns at once: spinning there would keep what lies beneath from ever resuming.
    fn help(&self) {
        /// Counts the helper out even if a job it ran unwinds.
        struct Out<'a>(&'a Warmth, bool);
        impl Drop for Out<'_> {
            fn drop(&mut self) {
                if self.1 {
                    HELPING.with(|h| h.set(false));
                }
                self.0.helpers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if SECTIONS.with(Cell::get) > 0 || HELPING.with(Cell::get) {
            drop(Out(self, false));
            return;
        }
        HELPING.with(|h| h.set(true));
        let _out = Out(self, true);
        let start = Instant::now();
        while let Some(done) = rayon::yield_now() {
            if done == rayon::Yield::Idle {
                if self.cooled() || start.elapsed() > LIFETIME {
                    break;
                }
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn sections_nest_anywhere_and_helpers_stop_when_cooled() {
        let warmth: &'static Warmth = Box::leak(Box::new(Warmth::new()));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        // Sections inside parallel work inside sections, so helpers run nested sections.
        let sum: u64 = pool.install(|| {
            warmth.section(|| {
                (0..64u64)
                    .into_par_iter()
                    .map(|i| {
                        warmth.section(|| (0..1000u64).into_par_iter().map(|j| i * j).sum::<u64>())
                    })
                    .sum()
            })
        });
        assert_eq!(sum, (0..64u64).sum::<u64>() * (0..1000u64).sum::<u64>());
        assert_eq!(warmth.active.load(Ordering::SeqCst), 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while warmth.helpers.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "helpers still running");
            std::thread::sleep(Duration::from_millis(1));
        }
        // From outside any pool, through the global pool.
        assert_eq!(on_pool(|| (0..100u64).into_par_iter().sum::<u64>()), 4950);
    }
}
