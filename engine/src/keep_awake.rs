//! [`KeepAwake`]: the compute pool's other workers poll for work for the length of an engine
//! step instead of parking between its parallel regions.
//!
//! A forward pass forks and joins a few hundred times — every matrix product, every layer's
//! attention — with short serial stretches between them on the engine's worker (norms, RoPE,
//! KV writes, the sampler's bookkeeping). Rayon parks a worker that finds nothing to steal
//! after a few dozen `sched_yield`s, and the next fork must then wake it: a futex wake, and on
//! a virtual machine an interrupt delivered through the hypervisor to a halted vCPU, tens of
//! µs each. A 16-stream decode step of the reference model made about 150 such round trips
//! (`perf stat` context switches) and spent a tenth of its cycles in the kernel's scheduler.
//!
//! While a guard lives, every other worker of the current pool polls the pool with
//! [`rayon::yield_now`], running each task it steals at once, until the guard is dropped.
//! OpenMP runtimes spin the same way inside a parallel program (llama.cpp's threadpool too).
//! The cost is a core busy for the step's serial stretches; between steps the workers park
//! as before, so an idle engine burns nothing.
//!
//! **No job polls for long.** A worker also runs queued jobs while it waits inside a join of
//! its own (for a half another thread stole), and rayon checks that join's latch only between
//! jobs: one poll job looping until the step ends would sit on top of a join the step needs
//! — a deadlock. So a poll job returns after [`SLICE`], queueing its successor on its own
//! worker first: an enclosing wait sees its latch at most a slice late.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest a poll job runs before handing over to its successor.
const SLICE: Duration = Duration::from_micros(20);

/// Other workers of the current rayon pool poll for work until this is dropped.
#[derive(Debug)]
pub(crate) struct KeepAwake {
    done: Arc<AtomicBool>,
}

impl KeepAwake {
    /// Starts polling jobs on the current pool's other workers. `None` (nothing to do) outside
    /// a pool or in a pool of one thread.
    pub fn start() -> Option<Self> {
        let driver = rayon::current_thread_index()?;
        if rayon::current_num_threads() < 2 {
            return None;
        }
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        rayon::spawn_broadcast(move |_| poll(Arc::clone(&flag), driver));
        Some(Self { done })
    }
}

/// Polls the pool for one slice, then queues its successor on this worker, until `done`. The
/// driver (the thread running the step) returns at once: it meets a poll job only while it
/// waits inside a join, or by stealing a successor, and must get back to the step.
fn poll(done: Arc<AtomicBool>, driver: usize) {
    if rayon::current_thread_index() == Some(driver) {
        return;
    }
    let started = Instant::now();
    while !done.load(Ordering::Acquire) {
        if started.elapsed() >= SLICE {
            rayon::spawn(move || poll(done, driver));
            return;
        }
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::hint::spin_loop();
        }
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use rayon::prelude::*;

    use super::*;

    /// Nested parallel work completes under the guard — workers waiting inside their own
    /// joins meet poll jobs there, which once deadlocked — and the pollers stop once it is
    /// dropped: the pool then runs a job on every worker again. A watchdog turns a hang into
    /// a failure.
    #[test]
    fn nested_parallel_work_completes_and_polling_stops_when_dropped() {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
            let want: u64 = (0..64u64).map(|i| (0..2000u64).map(|j| (i * j) % 7).sum::<u64>()).sum();
            for _ in 0..200 {
                let got: u64 = pool.install(|| {
                    let _guard = KeepAwake::start().expect("a pool of three threads");
                    (0..64u64)
                        .into_par_iter()
                        .map(|i| (0..2000u64).into_par_iter().map(|j| (i * j) % 7).sum::<u64>())
                        .sum()
                });
                assert_eq!(got, want);
            }
            let ran = AtomicUsize::new(0);
            pool.broadcast(|_| ran.fetch_add(1, Ordering::Relaxed));
            sender.send(ran.load(Ordering::Relaxed)).expect("the test waits");
        });
        let ran = receiver.recv_timeout(Duration::from_secs(60)).expect("nested joins under KeepAwake hung");
        assert_eq!(ran, 3);
    }

    #[test]
    fn nothing_to_keep_awake_outside_a_pool_or_alone() {
        assert!(KeepAwake::start().is_none());
        let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
        assert!(single.install(KeepAwake::start).is_none());
    }
}
