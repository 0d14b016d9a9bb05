//! A small persistent fork-join pool whose workers spin briefly between jobs.
//!
//! Why not rayon: a decode step of a small model is a few hundred matmuls of 10–100 µs
//! each, separated by short element-wise ops on the calling thread. rayon's idle workers
//! go to sleep within microseconds and waking one costs a futex round trip and a
//! scheduler pass (tens of µs on a busy machine), which is as long as the matmul
//! itself. Like llama.cpp's thread pool, these workers spin for a short while after each
//! job (then park on a condvar), and work is handed out as chunks through one atomic
//! counter, so one job costs one atomic store to start and a few atomics per chunk.
//!
//! The number of participants of a job (the caller included) is
//! `rayon::current_num_threads()`, so a caller controls it by running inside a rayon
//! pool of the wanted size. Jobs are serialised: a job submitted while another one runs
//! (e.g. two threads running matmuls concurrently) simply runs on its caller's thread.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_micros(200);

/// One job: `f(i)` for every chunk `i < n`.
struct Job {
    /// Lifetime-erased `&(dyn Fn(usize) + Sync)`; only called for `i < n`, i.e. while
    /// the job is unfinished and its submitter is still waiting (so `f` is alive).
    f: *const (dyn Fn(usize) + Sync),
    n: usize,
    /// Workers with an id below this take part.
    workers: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

// SAFETY: `f` points to a `Sync` closure that outlives every call made through it (see
// `Job::f`); the rest are atomics.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Run chunks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            // SAFETY: `i < n`, so chunk `i` is not done and the submitter is still
            // waiting in `Pool::run`, which keeps `f` borrowed.
            let f = unsafe { &*self.f };
            // A panicking chunk must still count as done, or the submitter would wait
            // forever (and must not return while others still run `f`).
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Shared {
    generation: AtomicU64,
    slot: Mutex<Option<Arc<Job>>>,
    sleeping: AtomicUsize,
    wake: Condvar,
}

pub(crate) struct Pool {
    shared: Arc<Shared>,
    spawned: Mutex<usize>,
    busy: AtomicBool,
}

impl Pool {
    pub(crate) fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool {
            shared: Arc::new(Shared {
                generation: AtomicU64::new(0),
                slot: Mutex::new(None),
                sleeping: AtomicUsize::new(0),
                wake: Condvar::new(),
            }),
            spawned: Mutex::new(0),
            busy: AtomicBool::new(false),
        })
    }

    /// Run `f(i)` for `i in 0..n` on up to `threads` threads (the caller included);
    /// returns when all are done.
    pub(crate) fn run(&self, threads: usize, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if threads <= 1 || n <= 1 || self.busy.swap(true, Ordering::Acquire) {
            (0..n).for_each(f);
            return;
        }
        let workers = threads - 1;
        self.ensure_workers(workers);
        // SAFETY (lifetime erasure): see `Job::f`; we wait below until every chunk is
        // done before returning, and no worker calls `f` after that.
        let f: *const (dyn Fn(usize) + Sync + '_) = f;
        let f: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let job = Arc::new(Job {
            f,
            n,
            workers,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        let sh = &*self.shared;
        *sh.slot.lock().expect("pool mutex is never poisoned") = Some(job.clone());
        sh.generation.fetch_add(1, Ordering::SeqCst);
        if sh.sleeping.load(Ordering::SeqCst) > 0 {
            let _guard = sh.slot.lock().expect("pool mutex is never poisoned");
            sh.wake.notify_all();
        }
        job.work();
        // The last chunks run on other threads: spin briefly, then yield so that a
        // descheduled worker on an oversubscribed machine gets the core back sooner.
        let mut spins = 0u32;
        while job.done.load(Ordering::Acquire) < n {
            spins += 1;
            if spins < 4096 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        self.busy.store(false, Ordering::Release);
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a kernel thread-pool chunk panicked");
        }
    }

    fn ensure_workers(&self, want: usize) {
        let mut spawned = self.spawned.lock().expect("pool mutex is never poisoned");
        while *spawned < want {
            let id = *spawned;
            let sh = self.shared.clone();
            let ok = std::thread::Builder::new()
                .name(format!("overseer-kernels-{id}"))
                .spawn(move || worker(id, &sh))
                .is_ok();
            if !ok {
                // Could not spawn: jobs still complete (the caller runs every chunk
                // nobody else takes).
                return;
            }
            *spawned += 1;
        }
    }
}

fn worker(id: usize, sh: &Shared) {
    let mut seen = sh.generation.load(Ordering::SeqCst);
    loop {
        // Spin for new work, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = sh.generation.load(Ordering::SeqCst);
            if g != seen {
                seen = g;
                break;
            }
            spins += 1;
            if spins > 4096 {
                // Past the first few µs: keep polling, but let other threads run.
                std::thread::yield_now();
            }
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let mut guard = sh.slot.lock().expect("pool mutex is never poisoned");
                sh.sleeping.fetch_add(1, Ordering::SeqCst);
                while sh.generation.load(Ordering::SeqCst) == seen {
                    guard = sh.wake.wait(guard).expect("pool mutex is never poisoned");
                }
                sh.sleeping.fetch_sub(1, Ordering::SeqCst);
                drop(guard);
                seen = sh.generation.load(Ordering::SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        let job = sh
            .slot
            .lock()
            .expect("pool mutex is never poisoned")
            .clone();
        if let Some(job) = job
            && id < job.workers
        {
            job.work();
        }
    }
}
