//! The blocking thread pool of a context (QEMU's util/thread-pool.c): worker threads that run jobs
//! which would block the loop. It knows nothing of contexts or tasks; `task/blocking.rs` turns it
//! into [`spawn_blocking`](crate::spawn_blocking).
//!
//! One pool per context, created at the first job. Workers are spawned on demand up to `max` (64 by
//! default); a worker idle for 10 s exits unless that would leave fewer than `min`. Shutting the pool
//! down drops the jobs still queued; running ones finish.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// QEMU's default `thread-pool-max`.
pub(crate) const DEFAULT_MAX_THREADS: usize = 64;
/// How long an idle worker waits for work before it exits (QEMU: 10 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A job: it catches its own panics (a panicking job must not take its worker down with it).
pub(crate) type Job = Box<dyn FnOnce() + Send>;

struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
    min: usize,
    max: usize,
    shutdown: bool,
}

/// A pool of worker threads.
pub(crate) struct Pool {
    state: Mutex<State>,
    work: Condvar,
}

impl Pool {
    pub(crate) fn new(min: usize, max: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                threads: 0,
                idle: 0,
                min,
                max,
                shutdown: false,
            }),
            work: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock and are caught if they panic, so the state is never left torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job`, waking an idle worker or starting a new one (up to `max`).
    pub(crate) fn submit(self: &Arc<Self>, job: Job) {
        let mut state = self.lock();
        state.queue.push_back(job);
        if state.idle >= state.queue.len() {
            self.work.notify_one();
        } else if state.threads < state.max {
            state.threads += 1;
            drop(state);
            self.spawn_worker();
        }
    }

    fn spawn_worker(self: &Arc<Self>) {
        let pool = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("aioctx-pool".into())
            .spawn(move || pool.worker());
        if spawned.is_err() {
            // Out of threads: the queued jobs wait for the workers that exist (there is at least one
            // unless this was the first, in which case the next submission tries again).
            self.lock().threads -= 1;
        }
    }

    fn worker(&self) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.queue.pop_front() {
                drop(state);
                job();
                state = self.lock();
                continue;
            }
            if state.shutdown {
                break;
            }
            state.idle += 1;
            let (next, timeout) = self
                .work
                .wait_timeout(state, IDLE_TIMEOUT)
                .unwrap_or_else(PoisonError::into_inner);
            state = next;
            state.idle -= 1;
            if timeout.timed_out() && state.queue.is_empty() && state.threads > state.min {
                break;
            }
        }
        state.threads -= 1;
    }

    pub(crate) fn set_size(&self, min: usize, max: usize) {
        let mut state = self.lock();
        state.min = min;
        state.max = max;
    }

    /// Stops the workers once the queue is empty; running jobs finish. Queued jobs are dropped, which
    /// cancels their tasks (the context is going away).
    pub(crate) fn shutdown(&self) {
        let dropped: Vec<Job> = {
            let mut state = self.lock();
            state.shutdown = true;
            state.queue.drain(..).collect()
        };
        self.work.notify_all();
        drop(dropped);
    }

    /// `(threads, idle, queued)`, for tests and statistics.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.threads, s.idle, s.queue.len())
    }
}

pub(crate) fn validate_size(min: usize, max: usize) -> io::Result<()> {
    if max == 0 || min > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("thread pool bounds min={min} max={max}: need 1 <= max and min <= max"),
        ));
    }
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn workers_are_spawned_on_demand_up_to_max() {
        let pool = Pool::new(0, 3);
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let started = Arc::new(AtomicUsize::new(0));
        for _ in 0..10 {
            let (gate, started) = (Arc::clone(&gate), Arc::clone(&started));
            pool.submit(Box::new(move || {
                started.fetch_add(1, Ordering::SeqCst);
                let mut open = gate.0.lock().unwrap();
                while !*open {
                    open = gate.1.wait(open).unwrap();
                }
            }));
        }
        while started.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        let (threads, _, queued) = pool.counts();
        assert_eq!(threads, 3, "never more than max");
        assert_eq!(queued, 7);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        while started.load(Ordering::SeqCst) < 10 {
            std::thread::yield_now();
        }
        pool.shutdown();
    }

    #[test]
    fn bad_bounds_are_invalid_input() {
        assert!(validate_size(0, 0).is_err());
        assert!(validate_size(2, 1).is_err());
        assert!(validate_size(0, 1).is_ok());
    }
}
