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

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use gemm::Parallelism;

/// A raw pointer into a buffer that several threads write at once, each a part no
/// other thread touches (output columns of a matmul, heads of an attention; the users
/// state which parts in their `SAFETY` comments).
#[derive(Clone, Copy)]
pub(crate) struct SharedPtr(pub *mut f32);
// SAFETY: the wrapper only carries the address; every dereference is an `unsafe` block
// at a use site that writes a disjoint part (see above).
unsafe impl Send for SharedPtr {}
// SAFETY: as above.
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// Through a method, so closures capture the whole (Send + Sync) wrapper rather
    /// than its raw-pointer field.
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

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

thread_local! {
    /// The team this thread is running (see [`Team::run`]), or null.
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Marks a team as this thread's current one until dropped (also on unwinding).
struct Current(*const Team);

impl Current {
    fn set(team: &Team) -> Current {
        Current(CURRENT.with(|c| c.replace(team)))
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

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
    ///
    /// Called while this thread already runs a team (`Team::run` inside `Team::run`, as
    /// when a search that holds a team embeds its query), `f` gets that team instead of
    /// a new thread.
    pub fn run<R>(f: impl FnOnce(&Team) -> R) -> R {
        Team::run_with_side(|| {}, f)
    }

    /// [`Team::run`], with the helper first running `side` (a job of its own, such as a
    /// BM25 query) before it starts helping; `split`s posted meanwhile run wholly on
    /// the caller's thread, so the two threads never wait for each other. Returns once
    /// both `f` and `side` are done. If the helper has not started by the time `f` is
    /// done (a busy machine), `side` runs on the caller's thread instead. A panic in
    /// `side` reaches the caller.
    ///
    /// Nested inside another team on this thread, or when no thread can be started,
    /// `side` runs on the caller's thread before `f`.
    pub fn run_with_side<R>(side: impl FnOnce() + Send, f: impl FnOnce(&Team) -> R) -> R {
        let outer = CURRENT.with(Cell::get);
        if !outer.is_null() {
            side();
            // SAFETY: CURRENT is set only by the `Current` guard below, to a team that
            // lives until the guard (on this thread's stack, in an enclosing call) drops.
            return f(unsafe { &*outer });
        }
        let team = Team {
            state: AtomicU8::new(IDLE),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
        };
        // The side job moves to the helper if one starts, else runs here.
        let side = std::sync::Mutex::new(Some(side));
        std::thread::scope(|s| {
            let helper = std::thread::Builder::new()
                .name("embed-helper".into())
                .spawn_scoped(s, || {
                    let job = side.lock().map(|mut g| g.take()).unwrap_or(None);
                    // Stop spinning even if the side job panics (then `join` reports it).
                    if let Some(job) = job {
                        job();
                    }
                    team.help();
                })
                .ok();
            if helper.is_none() {
                let job = side.lock().map(|mut g| g.take()).unwrap_or(None);
                if let Some(job) = job {
                    job();
                }
            }
            // Stop the helper even if `f` panics.
            struct Stop<'t>(&'t Team);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.stop.store(true, Ordering::Release);
                }
            }
            let stop = Stop(&team);
            let current = Current::set(&team);
            let r = f(&team);
            drop(current);
            // A helper that has not even started yet (a busy machine) does not hold the
            // caller up: the side job, still unclaimed, runs here.
            let job = side.lock().map(|mut g| g.take()).unwrap_or(None);
            if let Some(job) = job {
                job();
            }
            drop(stop);
            // The helper only spins and runs jobs that cannot outlive their `split`.
            if let Some(h) = helper
                && let Err(panic) = h.join()
            {
                std::panic::resume_unwind(panic);
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

impl Team {
    /// Run `f(worker, item)` once for every `item` in `0..n`, the items handed out one at
    /// a time to whichever of the two threads is free (`worker` is 0 on the caller's
    /// thread, 1 on the helper's, so each can use its own scratch). Returns when all are
    /// done.
    ///
    /// Why not [`Team::split`] in two fixed halves: the helper reaches a job some µs
    /// late, or is descheduled for a while, and the caller then spun at the join for
    /// ~8% of a query (perf). Shared items keep both threads busy to the end; the
    /// caller waits at most for the one item the helper is running.
    pub fn share(&self, n: usize, f: impl Fn(usize, usize) + Sync) {
        let next = AtomicUsize::new(0);
        let work = |worker: usize| {
            loop {
                let item = next.fetch_add(1, Ordering::Relaxed);
                if item >= n {
                    break;
                }
                f(worker, item);
            }
        };
        // If the helper never claims its job, the caller has drained every item by the
        // time `split` would run the helper's half here, which then finds none.
        self.split(|| work(0), || work(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn shared_items_run_exactly_once_each_on_a_valid_worker() {
        Team::run(|team| {
            for n in [0usize, 1, 2, 7, 64] {
                for _ in 0..500 {
                    let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    let bad_worker = AtomicBool::new(false);
                    team.share(n, |worker, item| {
                        if worker > 1 {
                            bad_worker.store(true, Ordering::Relaxed);
                        }
                        seen[item].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(!bad_worker.load(Ordering::Relaxed));
                    assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1), "n={n}");
                }
            }
        });
    }

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
    fn the_side_job_runs_once_and_is_done_when_run_returns() {
        for _ in 0..200 {
            let side_ran = AtomicUsize::new(0);
            let halves = AtomicUsize::new(0);
            let mut out = 0u64;
            let r = Team::run_with_side(
                || {
                    side_ran.fetch_add(1, Ordering::Relaxed);
                    out = 7;
                },
                |team| {
                    for _ in 0..50 {
                        team.split(
                            || {
                                halves.fetch_add(1, Ordering::Relaxed);
                            },
                            || {
                                halves.fetch_add(1, Ordering::Relaxed);
                            },
                        );
                    }
                    3
                },
            );
            assert_eq!((r, out), (3, 7));
            assert_eq!(side_ran.load(Ordering::Relaxed), 1);
            assert_eq!(halves.load(Ordering::Relaxed), 100);
        }
    }

    #[test]
    fn a_nested_run_reuses_the_outer_team_and_runs_its_side_job() {
        let mut side = false;
        let same = Team::run(|outer| {
            Team::run_with_side(|| side = true, |inner| std::ptr::eq(outer, inner))
        });
        assert!(same && side);
        // After the outer run, a new run gets a new team again (no dangling current team).
        let again = Team::run(|t| {
            let mut n = 0;
            t.split(|| {}, || {});
            n += 1;
            n
        });
        assert_eq!(again, 1);
    }

    #[test]
    fn a_panicking_side_job_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            Team::run_with_side(|| panic!("side failed"), |team| team.split(|| {}, || {}))
        });
        assert!(r.is_err());
        // The thread's current team was reset while unwinding.
        assert!(CURRENT.with(Cell::get).is_null());
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
