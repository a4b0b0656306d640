//! The blocking thread pool (`spawn_blocking`), ported from QEMU's test-thread-pool.c: jobs run on pool
//! threads, their completions arrive only through the loop, cancellation takes only jobs that have not
//! started, panics become `JoinError`s, and the pool's bounds hold. A job's completion reaches its
//! context from the pool thread as a cross-thread wakeup, so the context's cases run on every backend.
//! Every wait is bounded.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex as StdMutex};
use std::time::{Duration, Instant};

use aioctx::IoThread;
use tests::{context, per_backend};

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

/// A gate jobs can wait on, opened once.
#[derive(Default)]
struct Gate(StdMutex<bool>, Condvar);

impl Gate {
    fn wait(&self) {
        let mut open = self.0.lock().unwrap();
        while !*open {
            open = self.1.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.0.lock().unwrap() = true;
        self.1.notify_all();
    }
}

per_backend! {
    fn pool_submit_without_waiting_for_the_result(backend) {
        let ctx = context(backend);
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        drop(ctx.spawn_blocking(move || {
            d.fetch_add(1, Ordering::SeqCst);
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline);
            ctx.poll(true);
        }
    }

    fn pool_completion_arrives_only_through_the_loop(backend) {
        let ctx = context(backend);
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let h = ctx.spawn_blocking(move || {
            r.store(true, Ordering::SeqCst);
            thread_name()
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ran.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        // The job ran, but its completion is a BH of this context: until the loop runs, nothing is done.
        assert!(!h.is_finished());
        let worker = ctx.block_on(h).unwrap();
        assert_eq!(worker, "aioctx-pool");
    }

    fn pool_submit_from_a_task_and_100_jobs_on_few_threads(backend) {
        let ctx = context(backend);
        ctx.set_thread_pool_size(0, 4).unwrap();
        let busy = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let results = ctx.block_on(async {
            let handles: Vec<_> = (0..100u64)
                .map(|i| {
                    let (busy, peak) = (busy.clone(), peak.clone());
                    aioctx::spawn_blocking(move || {
                        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        busy.fetch_sub(1, Ordering::SeqCst);
                        i * i
                    })
                })
                .collect();
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out
        });
        assert_eq!(results, (0..100u64).map(|i| i * i).collect::<Vec<_>>());
        assert!(
            peak.load(Ordering::SeqCst) <= 4,
            "never more workers than max"
        );
    }

    /// test_cancel: only jobs that have not started are cancelled; a started one runs to the end; no
    /// completion is lost.
    fn pool_cancellation_only_for_jobs_not_started(backend) {
        let ctx = context(backend);
        ctx.set_thread_pool_size(0, 1).unwrap();
        let gate = Arc::new(Gate::default());
        let started = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let first = {
            let (gate, started, ran) = (gate.clone(), started.clone(), ran.clone());
            ctx.spawn_blocking(move || {
                started.fetch_add(1, Ordering::SeqCst);
                gate.wait();
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let queued: Vec<_> = (0..10)
            .map(|_| {
                let ran = ran.clone();
                ctx.spawn_blocking(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        while started.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        // The first job is running (the only worker is stuck in it); abort it and every other queued job.
        first.abort();
        for h in queued.iter().step_by(2) {
            h.abort();
        }
        // Let the aborted tasks run their cancellation before the worker gets to their jobs.
        while ctx.poll(false) {}
        gate.open();
        assert!(ctx.block_on(first).unwrap_err().is_cancelled());
        let mut cancelled = 0;
        for (i, h) in queued.into_iter().enumerate() {
            match ctx.block_on(h) {
                Ok(()) => assert!(i % 2 == 1, "job {i} was aborted but completed"),
                Err(e) => {
                    assert!(e.is_cancelled() && i % 2 == 0, "job {i}: {e}");
                    cancelled += 1;
                }
            }
        }
        assert_eq!(cancelled, 5);
        // The started job ran to its end; of the queued ones, only the five not aborted ran.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ran.load(Ordering::SeqCst) < 6 {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 6);
    }

    fn pool_job_panic_is_a_join_error(backend) {
        let ctx = context(backend);
        let err = ctx
            .block_on(ctx.spawn_blocking(|| panic!("blocking boom")))
            .unwrap_err();
        assert!(err.is_panic());
        assert_eq!(ctx.block_on(ctx.spawn_blocking(|| 1)).unwrap(), 1);
    }
}

#[test]
fn pool_on_an_iothread_with_configured_bounds() {
    let io = IoThread::builder()
        .name("pooled")
        .thread_pool(1, 2)
        .spawn()
        .unwrap();
    let h = io
        .remote()
        .spawn(async { aioctx::spawn_blocking(thread_name).await.unwrap() });
    assert_eq!(h.join_blocking().unwrap(), "aioctx-pool");
    io.set_thread_pool_size(0, 8).unwrap();
    assert_eq!(
        io.set_thread_pool_size(3, 2).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
}
