//! IOThreads and moving tasks between contexts (`reschedule`), waiting on them, and the async mutex
//! across them, ported from QEMU's test-aio-multithread.c. The blocking thread pool (test-thread-pool.c)
//! is in `rt_thread_pool.rs`. Every load loop is bounded.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use aioctx::sync::Mutex;
use aioctx::{reschedule, AioContext, IoThread, PollParams, Remote};

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

/// A tiny deterministic PRNG (xorshift64*), enough to scatter work.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % below
    }
}

#[test]
fn create_call_and_join_iothreads() {
    let io = IoThread::builder()
        .name("t0")
        .poll_max_ns(0)
        .spawn()
        .unwrap();
    assert_eq!(io.name(), "t0");
    // SAFETY: gettid takes no arguments.
    let (tid, name) = io
        .remote()
        .call(|| (unsafe { libc::gettid() }, thread_name()))
        .unwrap();
    assert_eq!(tid, io.thread_id());
    assert_eq!(name, "IO t0");
    assert_eq!(io.poll_params().unwrap().max_ns, 0);
    let remote = io.remote().clone();
    io.stop();
    assert!(remote.is_closed());
    assert_eq!(
        remote.call(|| 1).unwrap_err().kind(),
        std::io::ErrorKind::NotConnected
    );
}

#[test]
fn call_from_a_plain_thread_and_panics_come_back_to_the_caller() {
    let io = IoThread::spawn("caller").unwrap();
    let remote = io.remote().clone();
    let from_thread = std::thread::spawn(move || remote.call(|| 6 * 7).unwrap())
        .join()
        .unwrap();
    assert_eq!(from_thread, 42);
    let remote = io.remote().clone();
    let panicked = std::thread::spawn(move || remote.call(|| panic!("in the iothread"))).join();
    assert!(panicked.is_err(), "the panic resumed in the calling thread");
    assert_eq!(
        io.remote().call(|| 1).unwrap(),
        1,
        "the IOThread kept running"
    );
}

#[test]
fn stopping_cancels_pending_tasks_on_the_iothread() {
    let io = IoThread::spawn("stopper").unwrap();
    let dropped_on = Arc::new(StdMutex::new(None));
    struct Witness(Arc<StdMutex<Option<String>>>);
    impl Drop for Witness {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(thread_name());
        }
    }
    let w = Witness(dropped_on.clone());
    let h = io.remote().spawn(async move {
        let _w = w;
        std::future::pending::<()>().await
    });
    io.remote().call(|| ()).unwrap(); // the task has been polled once by now
    io.stop();
    assert!(h.join_blocking().unwrap_err().is_cancelled());
    assert_eq!(dropped_on.lock().unwrap().as_deref(), Some("IO stopper"));
}

/// test_multi_co_schedule: tasks bounce between five IOThreads at random for a while; each hop lands
/// on the chosen thread, and every hop is counted exactly once.
#[test]
fn tasks_reschedule_randomly_across_five_iothreads() {
    const THREADS: usize = 5;
    const TASKS: usize = 20;
    const RUN_FOR: Duration = Duration::from_secs(2);
    const MAX_HOPS_PER_TASK: usize = 100_000;
    let iothreads: Vec<IoThread> = (0..THREADS)
        .map(|i| IoThread::builder().name(format!("hop{i}")).spawn().unwrap())
        .collect();
    let remotes: Arc<Vec<Remote>> =
        Arc::new(iothreads.iter().map(|io| io.remote().clone()).collect());
    let arrivals: Arc<Vec<AtomicU64>> = Arc::new((0..THREADS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let (remotes, arrivals, stop) = (remotes.clone(), arrivals.clone(), stop.clone());
            let first = remotes[t % THREADS].clone();
            first.spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut hops = 0u64;
                while !stop.load(Ordering::Relaxed) && (hops as usize) < MAX_HOPS_PER_TASK {
                    let to = rng.next(THREADS);
                    reschedule(&remotes[to]).await.unwrap();
                    assert_eq!(
                        thread_name(),
                        format!("IO hop{to}"),
                        "continued on the target"
                    );
                    arrivals[to].fetch_add(1, Ordering::Relaxed);
                    hops += 1;
                }
                hops
            })
        })
        .collect();
    let start = Instant::now();
    while start.elapsed() < RUN_FOR && !handles.iter().all(|h| h.is_finished()) {
        std::thread::park_timeout(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let hops: u64 = handles
        .into_iter()
        .map(|h| h.join_blocking().unwrap())
        .sum();
    let arrived: u64 = arrivals.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    assert_eq!(arrived, hops, "every hop counted once");
    assert!(hops > TASKS as u64, "tasks actually moved ({hops} hops)");
    assert!(
        arrivals.iter().all(|a| a.load(Ordering::Relaxed) > 0),
        "every IOThread got visitors"
    );
}

#[test]
fn reschedule_errors() {
    let ctx = AioContext::new().unwrap();
    let io = IoThread::spawn("target").unwrap();
    let target = io.remote().clone();
    // In a block_on future (not a task) and in a !Send task: InvalidInput.
    let err = ctx.block_on(async { reschedule(&target).await.unwrap_err() });
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let t2 = target.clone();
    let err = ctx
        .block_on(ctx.spawn_local(async move { reschedule(&t2).await.unwrap_err() }))
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    // To the context it is on: a no-op.
    let here = ctx.remote();
    let ok =
        ctx.block_on(async move { aioctx::spawn(async move { reschedule(&here).await }).await });
    ok.unwrap().unwrap();
    // To a dropped context: NotConnected.
    io.stop();
    let err = ctx
        .block_on(async move { aioctx::spawn(async move { reschedule(&target).await }).await })
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
}

/// test_multi_co_mutex: tasks on five IOThreads increment a counter under the async mutex; it ends equal
/// to an atomic counter bumped alongside.
#[test]
fn contended_mutex_across_five_iothreads() {
    const THREADS: usize = 5;
    const PER_TASK: u64 = 2_000;
    let iothreads: Vec<IoThread> = (0..THREADS)
        .map(|i| IoThread::spawn(format!("mx{i}")).unwrap())
        .collect();
    let counter = Arc::new(Mutex::new(0u64));
    let atomic = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = iothreads
        .iter()
        .flat_map(|io| (0..2).map(move |_| io.remote().clone()))
        .map(|remote| {
            let (counter, atomic) = (counter.clone(), atomic.clone());
            remote.spawn(async move {
                for _ in 0..PER_TASK {
                    let mut n = counter.lock().await;
                    let seen = *n;
                    aioctx::yield_now().await; // hold it across a yield: others must wait
                    *n = seen + 1;
                    atomic.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join_blocking().unwrap();
    }
    let total = atomic.load(Ordering::Relaxed);
    assert_eq!(total, THREADS as u64 * 2 * PER_TASK);
    assert_eq!(*counter.try_lock().unwrap(), total);
}

/// test_multi_fair_mutex: two IOThreads hammering one mutex take turns (fair handoff). Each side,
/// holding the lock, waits until the other is queued on it, then unlocks and at once asks for it
/// again: a fair mutex has handed it to the queued side already, so ownership strictly alternates. An
/// unfair one lets the releasing side take it back.
#[test]
fn mutex_hands_off_fairly_between_two_iothreads() {
    const ROUNDS: usize = 200;
    let a = IoThread::spawn("fair-a").unwrap();
    let b = IoThread::spawn("fair-b").unwrap();
    let log = Arc::new(Mutex::new(Vec::with_capacity(2 * ROUNDS)));
    // Per side: whether it waits in `lock()`, and how many rounds it has left.
    let queued = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let left = Arc::new([AtomicUsize::new(ROUNDS), AtomicUsize::new(ROUNDS)]);
    let spawn = |io: &IoThread, me: usize| {
        let (log, queued, left) = (log.clone(), queued.clone(), left.clone());
        let peer = 1 - me;
        io.remote().spawn(async move {
            for _ in 0..ROUNDS {
                let mut lock = std::pin::pin!(log.lock());
                let mut guard = match futures::poll!(lock.as_mut()) {
                    std::task::Poll::Ready(guard) => guard,
                    std::task::Poll::Pending => {
                        queued[me].store(true, Ordering::SeqCst);
                        lock.await
                    }
                };
                queued[me].store(false, Ordering::SeqCst);
                guard.push(me as u8);
                left[me].fetch_sub(1, Ordering::SeqCst);
                while left[peer].load(Ordering::SeqCst) > 0 && !queued[peer].load(Ordering::SeqCst)
                {
                    aioctx::yield_now().await;
                }
                drop(guard);
            }
        })
    };
    let (ha, hb) = (spawn(&a, 0), spawn(&b, 1));
    ha.join_blocking().unwrap();
    hb.join_blocking().unwrap();
    let log = Arc::try_unwrap(log).unwrap().into_inner();
    assert_eq!(log.len(), 2 * ROUNDS);
    let switches = log.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(
        switches,
        log.len() - 1,
        "ownership must alternate on every unlock: {log:?}"
    );
}

#[test]
fn set_poll_params_on_a_running_iothread_changes_its_behaviour() {
    let io = IoThread::builder()
        .name("tune")
        .poll_max_ns(1_000_000)
        .spawn()
        .unwrap();
    let remote = io.remote().clone();
    let busy = |n: usize| {
        for _ in 0..n {
            remote.call(|| ()).unwrap();
        }
    };
    busy(2_000);
    let polling = io.stats();
    assert!(
        polling.poll_ns > 0 && polling.poll_hits + polling.poll_misses > 0,
        "{polling:?}"
    );

    io.set_poll_params(PollParams {
        max_ns: 0,
        grow: 0,
        shrink: 0,
        weight: 0,
        min_hit_percent: 0,
    })
    .unwrap();
    assert_eq!(io.poll_params().unwrap().max_ns, 0);
    let before = io.stats();
    busy(2_000);
    let after = io.stats();
    assert_eq!(after.poll_ns, before.poll_ns, "no polling with max_ns = 0");
    assert_eq!(
        after.poll_hits + after.poll_misses,
        before.poll_hits + before.poll_misses
    );
    assert!(
        after.notify_writes > before.notify_writes,
        "wakes now go through the eventfd"
    );

    let bad = PollParams {
        max_ns: u64::MAX,
        grow: 0,
        shrink: 0,
        weight: 0,
        min_hit_percent: 0,
    };
    assert_eq!(
        io.set_poll_params(bad).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
}

#[test]
fn abort_from_another_thread_drops_the_future_on_its_iothread() {
    struct ReportDrop(std::sync::mpsc::Sender<Option<String>>);
    impl Drop for ReportDrop {
        fn drop(&mut self) {
            let _ = self
                .0
                .send(std::thread::current().name().map(str::to_owned));
        }
    }
    let io = IoThread::spawn("abortee").unwrap();
    let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
    let (started_tx, started_rx) = futures::channel::oneshot::channel::<()>();
    let handle = io.remote().spawn(async move {
        let _report = ReportDrop(dropped_tx);
        started_tx.send(()).unwrap();
        std::future::pending::<()>().await
    });
    futures::executor::block_on(started_rx).unwrap();
    assert!(!handle.is_finished());
    // The handle moves to a third thread, which aborts the waiting task and collects the result.
    let result = std::thread::spawn(move || {
        handle.abort();
        handle.join_blocking()
    })
    .join()
    .unwrap();
    assert!(result.unwrap_err().is_cancelled());
    assert_eq!(dropped_rx.recv().unwrap().as_deref(), Some("IO abortee"));
}
