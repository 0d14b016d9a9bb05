//! Two threads on one small forward pass (a search query), without a wake-up per matmul.
//!
//! Why: a 19-token query makes 24 matmuls of 30–125 µs each. Splitting each across a
//! rayon pool gave no speed-up (6.1 ms single-threaded, 6.4 ms with two threads): the
//! second worker falls asleep between matmuls, and waking it costs about as much as the
//! work it takes over. A [`Team`] keeps one helper thread spinning for the length of one
//! forward pass (a few ms), so handing it half of a matmul costs two atomic operations.
//!
//! Robust by construction: every job is *claimed* with a compare-and-swap, and the
//! caller runs the helper's half itself if the helper has not claimed it by the time the
//! caller's own half is done. So a helper that never gets scheduled costs time, never
//! correctness, and a pass cannot hang.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use gemm::Parallelism;

/// How a dense layer may use other threads.
#[derive(Clone, Copy)]
pub(crate) enum Par<'a> {
    /// Through the `gemm` crate's or the current rayon pool's threads.
    Pool(Parallelism),
    /// Split in two with the helper of a [`Team`].
    Team(&'a Team),
}

impl Par<'_> {
    /// The `gemm` parallelism to use on paths that do not know teams.
    pub fn pool(self) -> Parallelism {
        match self {
            Par::Pool(p) => p,
            Par::Team(_) => Parallelism::None,
        }
    }
}

/// Idle spins (a `pause` each, tens of cycles) before the helper starts yielding: longer
/// than the gap between two matmuls of a query (attention, GELU: tens of µs).
const SPINS_BEFORE_YIELD: u32 = 4_000;

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const CLAIMED: u8 = 2;
const DONE: u8 = 3;

/// A job for the helper: a borrowed closure whose lifetime was erased when posted.
type Job = *const (dyn Fn() + Sync);

/// The shared state of a caller and its spinning helper.
pub(crate) struct Team {
    state: AtomicU8,
    stop: AtomicBool,
    /// A job panicked on the helper (re-raised by `split` on the caller's thread).
    panicked: AtomicBool,
    job: UnsafeCell<Option<Job>>,
}

// SAFETY: `job` is written only by the caller while `state` is IDLE or DONE (the helper
// does not read it then), and read by whichever thread wins the POSTED -> CLAIMED swap;
// the swap's Acquire pairs with the Release that published it.
unsafe impl Sync for Team {}

impl Team {
    /// Run `f` with a helper thread spinning beside it (scoped: the helper ends with `f`).
    /// If no thread can be started, `f` still runs: every `split` then does both halves
    /// on the caller's thread.
    pub fn run<R>(f: impl FnOnce(&Team) -> R) -> R {
        let team = Team {
            state: AtomicU8::new(IDLE),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
        };
        std::thread::scope(|s| {
            let helper = std::thread::Builder::new()
                .name("embed-helper".into())
                .spawn_scoped(s, || team.help())
                .ok();
            // Stop the helper even if `f` panics.
            struct Stop<'t>(&'t Team);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.stop.store(true, Ordering::Release);
                }
            }
            let stop = Stop(&team);
            let r = f(&team);
            drop(stop);
            // The helper only spins and runs jobs that cannot outlive their `split`.
            if let Some(h) = helper {
                let _ = h.join();
            }
            r
        })
    }

    /// The helper's loop: spin until a job is posted, claim it, run it.
    fn help(&self) {
        // Spin (pause) between jobs; after a while also yield, so that a helper waiting
        // through a long gap gives its core to other runnable threads (a busy server
        // runs many queries at once), and costs nothing when the core is idle.
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            if self.state.load(Ordering::Acquire) == POSTED
                && self
                    .state
                    .compare_exchange(POSTED, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                // SAFETY: we won the claim, so the job is published and its caller is
                // blocked in `split` until we store DONE.
                let job = unsafe { (*self.job.get()).expect("posted with a job") };
                // SAFETY: `split` keeps the closure alive until DONE (see there). A panic
                // is caught so that DONE is always stored (the caller would spin forever
                // otherwise) and passed on to the caller.
                let run = std::panic::AssertUnwindSafe(|| unsafe { (*job)() });
                if std::panic::catch_unwind(run).is_err() {
                    self.panicked.store(true, Ordering::Release);
                }
                self.state.store(DONE, Ordering::Release);
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
                if idle > SPINS_BEFORE_YIELD {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }

    /// Run `mine` on this thread and `theirs` on the helper (or here, if the helper has
    /// not picked it up by the time `mine` is done); return when both are done.
    pub fn split(&self, mine: impl Fn() + Sync, theirs: impl Fn() + Sync) {
        let theirs: &(dyn Fn() + Sync) = &theirs;
        // SAFETY: the erased reference is used only until DONE, and this function does
        // not return (nor unwind: see `Wait`) before the state leaves CLAIMED.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), Job>(theirs) };
        // SAFETY: state is IDLE here (the previous split waited for DONE and reset it),
        // so the helper does not touch `job`.
        unsafe { *self.job.get() = Some(job) };
        self.state.store(POSTED, Ordering::Release);

        // If `mine` panics, wait for a claimed job before the borrow ends.
        struct Wait<'t>(&'t Team);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                let t = self.0;
                if t.state
                    .compare_exchange(POSTED, IDLE, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    while t.state.load(Ordering::Acquire) != DONE {
                        std::hint::spin_loop();
                    }
                }
                t.state.store(IDLE, Ordering::Release);
            }
        }
        let wait = Wait(self);
        mine();
        if self
            .state
            .compare_exchange(POSTED, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // The helper is late: do its half here. DONE is stored even if it panics
            // (before `wait` runs, which waits for DONE).
            struct Done<'t>(&'t Team);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.state.store(DONE, Ordering::Release);
                }
            }
            let _done = Done(self);
            theirs();
        }
        drop(wait);
        assert!(
            !self.panicked.load(Ordering::Acquire),
            "a dense-layer job panicked on the helper thread"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn both_halves_run_exactly_once_every_time() {
        let counts = [AtomicUsize::new(0), AtomicUsize::new(0)];
        Team::run(|team| {
            for _ in 0..10_000 {
                team.split(
                    || {
                        counts[0].fetch_add(1, Ordering::Relaxed);
                    },
                    || {
                        counts[1].fetch_add(1, Ordering::Relaxed);
                    },
                );
            }
        });
        assert_eq!(counts[0].load(Ordering::Relaxed), 10_000);
        assert_eq!(counts[1].load(Ordering::Relaxed), 10_000);
    }

    #[test]
    fn a_panicking_helper_job_reaches_the_caller_instead_of_hanging() {
        let r = std::panic::catch_unwind(|| {
            Team::run(|team| {
                for _ in 0..100 {
                    team.split(|| {}, || panic!("job failed"));
                }
            })
        });
        assert!(r.is_err());
    }

    #[test]
    fn results_are_visible_after_split() {
        let out = std::sync::Mutex::new(vec![0u64; 2]);
        let total = Team::run(|team| {
            let mut total = 0;
            for i in 1..=1000u64 {
                team.split(
                    || out.lock().expect("not poisoned")[0] = i,
                    || out.lock().expect("not poisoned")[1] = 2 * i,
                );
                let v = out.lock().expect("not poisoned");
                total += v[0] + v[1];
            }
            total
        });
        assert_eq!(total, 3 * 1000 * 1001 / 2);
    }
}
