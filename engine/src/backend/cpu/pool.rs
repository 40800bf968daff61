//! A small fork–join pool for the CPU backend's matrix products: native threads, or in the
//! browser's multi-threaded wasm build (atomics + shared memory) Web Workers that the embedder
//! starts through [`set_spawner`] (the engine names no DOM API).
//!
//! A decode step runs ~200 products of a few tens of microseconds each, with short
//! single-threaded ops between them. Waking sleeping threads for every product costs about as
//! much as the product itself (rayon's workers go to sleep within microseconds), so 2-thread
//! decode used to equal 1-thread decode. Here the workers spin on a job counter for
//! [`SPIN`] after each job (as ggml's thread pool does) and only then park, so back-to-back
//! products start within a cache-line transfer; an idle model costs nothing after that.
//!
//! A job is `f(i)` for `i in 0..n`: the caller and the workers that join in time take indices
//! from one atomic counter, and [`Pool::run`] returns once all are done. Once every index is
//! taken the job is closed, so on a busy machine the caller never waits for a worker the OS has
//! not scheduled yet (only for one that is inside an index). Nothing is allocated per job.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle, Thread};
#[cfg(not(target_arch = "wasm32"))]
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
#[cfg(not(target_arch = "wasm32"))]
const SPIN: Duration = Duration::from_micros(200);

/// Polls of the job's count by [`Pool::run`]'s caller, waiting for the workers still inside the
/// job, before it lets a descheduled worker run: natively then `yield_now` (cheap); wasm32 has
/// no yield, only a timed wait that nothing ends early (no worker notifies the caller) and that
/// lasts the timer's slack (~50 µs on Linux) beyond its 20 µs.
const WAIT_SPINS: u32 = 256;

/// [`WAIT_SPINS`] for a short job ([`Pool::run_short`]: a decode product). In wasm32 parking after
/// 256 polls (< 1 µs) cost ~70 µs per decode product, and 2-thread decode in the browser ran at
/// about 0.75× the 1-thread speed; polling ~65 µs (about 1 ns a poll), longer than a decode
/// product's last chunk takes: SmolLM2 2-thread decode in headless Chromium, median of 5
/// interleaved runs, 33.0 → 45.0 tok/s (2026-11-30). Long jobs (prefill) keep the short poll: on
/// a busy 2-core machine a polling caller can hold the core its worker needs (Gemma-3-270M
/// 2-thread prefill, median of 4 interleaved runs, 87.8 tok/s with the long poll everywhere,
/// 106.7 with this split).
#[cfg(not(target_arch = "wasm32"))]
const WAIT_SPINS_SHORT: u32 = WAIT_SPINS;
#[cfg(target_arch = "wasm32")]
const WAIT_SPINS_SHORT: u32 = 1 << 16;

/// Starts one worker thread running the closure; `Err` says why it could not.
pub type Spawner = fn(Box<dyn FnOnce() + Send>) -> Result<(), String>;

/// The embedder's way to start a thread where `std::thread::spawn` cannot (wasm32: a Web
/// Worker that instantiates the same module on the shared memory and runs the closure).
static SPAWNER: OnceLock<Spawner> = OnceLock::new();

/// Registers how worker threads are started where `std::thread` cannot start them (the browser's
/// multi-threaded wasm build); the first registration wins. Without one, a wasm pool has no
/// workers and every product runs on the calling thread.
pub fn set_spawner(f: Spawner) {
    let _ = SPAWNER.set(f);
}

/// When an idle worker stops spinning: after [`SPIN`] natively; in wasm32, where std has no
/// clock, after a number of polls of about the same length (~1 ns each).
struct SpinClock {
    #[cfg(not(target_arch = "wasm32"))]
    start: Instant,
    #[cfg(target_arch = "wasm32")]
    checks: u32,
}

impl SpinClock {
    fn start() -> Self {
        Self {
            #[cfg(not(target_arch = "wasm32"))]
            start: Instant::now(),
            #[cfg(target_arch = "wasm32")]
            checks: 0,
        }
    }

    /// Called every 1024 polls.
    fn expired(&mut self) -> bool {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.start.elapsed() >= SPIN
        }
        #[cfg(target_arch = "wasm32")]
        {
            self.checks += 1;
            self.checks >= 200
        }
    }
}

/// The job of the current epoch: a lifetime-erased `&(dyn Fn(usize) + Sync)` and its count.
type Job = (*const (dyn Fn(usize) + Sync), usize);

struct Shared {
    /// Written by [`Pool::run`] while no worker holds a place in a job (the previous one is
    /// closed and its count is 0), published by the Release store of `ctl`; read by a worker
    /// only after it joined the current job.
    job: UnsafeCell<Job>,
    /// Bits 32..64: the job's epoch (incremented per job); bit 31: [`CLOSED`] (no worker may
    /// join any more); bits 0..31: workers that joined and have not finished.
    ctl: AtomicU64,
    /// Next index to run.
    next: AtomicUsize,
    /// A worker's job panicked.
    panicked: AtomicBool,
    /// Indices the workers (not the caller) ran, in all jobs: whether they take part.
    helped: AtomicUsize,
    stop: AtomicBool,
    /// Per worker: parked (or about to park), so `run` must unpark it.
    sleeping: Vec<AtomicBool>,
    /// Per worker: its thread handle, set by the worker itself before it first parks.
    threads: Vec<OnceLock<Thread>>,
}

/// `ctl` bit set once every index of a job was taken: a worker that wakes up later does not
/// join it, so the caller never waits for a thread the OS has not scheduled yet.
const CLOSED: u64 = 1 << 31;
const COUNT: u64 = CLOSED - 1;

// SAFETY: `job` is written only by `run` while no worker may read it (see the field) and read
// only by workers that joined the job, before they leave it; the closure it points to is `Sync`
// and outlives the job (`run` returns only when no worker is in it).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// `n` threads in all: the caller of [`run`](Self::run) and `n - 1` workers.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    /// Natively the workers' handles (joined on drop); empty where a [`Spawner`] started them.
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool with `n - 1` worker threads (`n ≥ 2`), or `None` when a thread cannot be spawned
    /// (in wasm32: no [`Spawner`] registered, or it failed).
    pub(crate) fn new(n: usize) -> Option<Self> {
        let n_workers = n.checked_sub(1).filter(|&w| w > 0)?;
        let noop: &'static (dyn Fn(usize) + Sync) = &|_| {};
        let shared = Arc::new(Shared {
            job: UnsafeCell::new((noop as *const _, 0)),
            ctl: AtomicU64::new(CLOSED),
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            helped: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            sleeping: (0..n_workers).map(|_| AtomicBool::new(false)).collect(),
            threads: (0..n_workers).map(|_| OnceLock::new()).collect(),
        });
        let mut pool = Pool {
            shared: shared.clone(),
            handles: Vec::with_capacity(n_workers),
        };
        // `pool`'s Drop stops the workers already started when a later one fails.
        if cfg!(target_arch = "wasm32") {
            let spawn = SPAWNER.get()?;
            for w in 0..n_workers {
                let s = shared.clone();
                spawn(Box::new(move || worker(&s, w))).ok()?;
            }
        } else {
            for w in 0..n_workers {
                let s = shared.clone();
                let h = thread::Builder::new()
                    .name(format!("slm-cpu-{w}"))
                    .spawn(move || worker(&s, w))
                    .ok()?;
                pool.handles.push(h);
            }
        }
        Some(pool)
    }

    /// Indices of all jobs so far that a worker, not the caller, ran.
    pub(crate) fn helped(&self) -> usize {
        self.shared.helped.load(Ordering::Relaxed)
    }

    /// Threads in all (workers + the caller).
    pub(crate) fn threads(&self) -> usize {
        self.shared.sleeping.len() + 1
    }

    /// Opens a new epoch (closed, or open for workers to join) and wakes parked workers.
    fn publish(&self, closed: bool) {
        let s = &*self.shared;
        let epoch = (s.ctl.load(Ordering::Relaxed) >> 32) + 1;
        let flag = if closed { CLOSED } else { 0 };
        s.ctl.store((epoch << 32) | flag, Ordering::SeqCst);
        for (sleeping, t) in s.sleeping.iter().zip(&s.threads) {
            if sleeping.load(Ordering::SeqCst) {
                // Set: a worker registers its handle before it first parks.
                if let Some(t) = t.get() {
                    t.unpark();
                }
            }
        }
    }

    /// Runs `f(i)` for every `i in 0..n` on the caller and the workers that join in time;
    /// returns when all are done. A panic in `f` is re-raised here (after every thread has left
    /// `f`).
    pub(crate) fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        self.run_polling(n, f, WAIT_SPINS);
    }

    /// [`run`](Self::run) for a job of tens of microseconds (a decode product): in wasm32 the
    /// caller polls longer for the workers still inside it before it parks.
    pub(crate) fn run_short(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        self.run_polling(n, f, WAIT_SPINS_SHORT);
    }

    fn run_polling(&self, n: usize, f: &(dyn Fn(usize) + Sync), wait_spins: u32) {
        let s = &*self.shared;
        // SAFETY: the previous job is closed with no worker in it (`run` waited for that), so
        // no worker reads `job` now. The lifetime is erased because `f` outlives this call and
        // no worker touches it once the job's count is back to 0 below.
        unsafe {
            let f: *const (dyn Fn(usize) + Sync + '_) = f;
            let f = std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(f);
            *s.job.get() = (f, n);
        }
        s.next.store(0, Ordering::Relaxed);
        self.publish(false);
        let mine = catch_unwind(AssertUnwindSafe(|| take_indices(s, f, n)));
        // Every index is taken: close the job and wait for the workers inside it.
        s.ctl.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while s.ctl.load(Ordering::Acquire) & COUNT != 0 {
            spins += 1;
            if spins < wait_spins {
                std::hint::spin_loop();
            } else {
                // A worker was descheduled mid-index (a busy machine): let it run.
                #[cfg(not(target_arch = "wasm32"))]
                thread::yield_now();
                // wasm32 cannot yield: wait a little instead (`memory.atomic.wait32`).
                #[cfg(target_arch = "wasm32")]
                thread::park_timeout(std::time::Duration::from_micros(20));
            }
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a CPU worker thread panicked");
        }
    }
}

/// Runs indices of the job until none is left; returns how many it ran.
fn take_indices(s: &Shared, f: &(dyn Fn(usize) + Sync), n: usize) -> usize {
    let mut ran = 0;
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            return ran;
        }
        f(i);
        ran += 1;
    }
}

/// Joins the job of `epoch` unless it is closed or already replaced.
fn join(s: &Shared, epoch: u64) -> bool {
    let mut c = s.ctl.load(Ordering::Acquire);
    loop {
        if c >> 32 != epoch || c & CLOSED != 0 {
            return false;
        }
        match s
            .ctl
            .compare_exchange_weak(c, c + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return true,
            Err(now) => c = now,
        }
    }
}

fn worker(s: &Shared, w: usize) {
    let _ = s.threads[w].set(thread::current());
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin, then park.
        let mut clock = SpinClock::start();
        let mut k = 0u32;
        loop {
            if s.ctl.load(Ordering::Acquire) >> 32 != seen {
                break;
            }
            k = k.wrapping_add(1);
            if !k.is_multiple_of(1024) || !clock.expired() {
                std::hint::spin_loop();
                continue;
            }
            s.sleeping[w].store(true, Ordering::SeqCst);
            if s.ctl.load(Ordering::SeqCst) >> 32 == seen {
                thread::park();
            }
            s.sleeping[w].store(false, Ordering::SeqCst);
        }
        seen = s.ctl.load(Ordering::Acquire) >> 32;
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        if !join(s, seen) {
            continue;
        }
        // SAFETY: published before the epoch we joined; valid until we leave the job.
        let (f, n) = unsafe { *s.job.get() };
        let f = unsafe { &*f };
        match catch_unwind(AssertUnwindSafe(|| take_indices(s, f, n))) {
            Ok(ran) => {
                s.helped.fetch_add(ran, Ordering::Relaxed);
            }
            Err(_) => s.panicked.store(true, Ordering::Relaxed),
        }
        s.ctl.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.publish(true);
        for t in self.shared.threads.iter().filter_map(OnceLock::get) {
            t.unpark();
        }
        // Workers a spawner started leave on their own (a late one sees `stop` first thing).
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_per_job() {
        let pool = Pool::new(3).unwrap();
        assert_eq!(pool.threads(), 3);
        let hits: Vec<AtomicUsize> = (0..97).map(|_| AtomicUsize::new(0)).collect();
        for round in 0..500 {
            let n = round % 97 + 1;
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            if round % 100 == 0 {
                // Let the workers park, so the wake-up path runs too.
                thread::sleep(SPIN * 3);
            }
        }
        let total: usize = hits.iter().map(|h| h.load(Ordering::Relaxed)).sum();
        assert_eq!(total, (0..500).map(|r| r % 97 + 1).sum::<usize>());
        for (i, h) in hits.iter().enumerate() {
            let want = (0..500).filter(|r| r % 97 + 1 > i).count();
            assert_eq!(h.load(Ordering::Relaxed), want, "index {i}");
        }
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_pool_still_works() {
        let pool = Pool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(64, &|i| assert!(i != 33, "index 33"));
        }));
        assert!(r.is_err());
        let sum = AtomicUsize::new(0);
        pool.run(10, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }
}
