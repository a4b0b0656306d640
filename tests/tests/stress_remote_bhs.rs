//! Stress: several threads schedule remote bottom halves as fast as they can while the home thread polls.
//! Every schedule must be observed (no lost wakeup: a lost one leaves the loop asleep and the watchdog
//! fails the test), and no BH runs more often than it was scheduled. Bounded in count and time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aioctx::{AioContext, Backend, PollParams};

const PRODUCERS: usize = 3;
/// How long producers keep going; the whole test also stops at the per-producer count below.
const RUN_FOR: Duration = Duration::from_millis(1500);
const MAX_SCHEDULES_PER_PRODUCER: u64 = 2_000_000;
const MAX_ONESHOTS_PER_PRODUCER: u64 = 200_000;

/// Aborts the process if a test hangs: a hang here means a wakeup was lost.
fn watchdog(limit: Duration, what: &'static str) -> Arc<AtomicBool> {
    let finished = Arc::new(AtomicBool::new(false));
    let flag = finished.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        while !flag.load(Ordering::Acquire) {
            if start.elapsed() > limit {
                eprintln!("{what}: no progress after {limit:?}; a wakeup was lost");
                std::process::abort();
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
    });
    finished
}

fn context(backend: Backend, polling: bool) -> AioContext {
    let poll = if polling {
        PollParams::IOTHREAD
    } else {
        PollParams::default()
    };
    AioContext::builder()
        .backend(backend)
        .poll_params(poll)
        .build()
        .unwrap()
}

/// Repeating BHs: producer i bumps `requests[i]` then schedules its BH. The BH records the latest request
/// it saw. At the end each BH must have seen its producer's final request, and run at most once per
/// schedule.
fn repeating_bhs(backend: Backend, polling: bool) {
    let ctx = context(backend, polling);
    let done = watchdog(Duration::from_secs(60), "repeating_bhs");
    let requests: Arc<Vec<AtomicU64>> =
        Arc::new((0..PRODUCERS).map(|_| AtomicU64::new(0)).collect());
    let served: Vec<std::rc::Rc<std::cell::Cell<(u64, u64)>>> =
        (0..PRODUCERS).map(|_| Default::default()).collect();
    let bhs: Vec<_> = (0..PRODUCERS)
        .map(|i| {
            let (requests, served) = (requests.clone(), served[i].clone());
            ctx.bh(move || {
                let (_, runs) = served.get();
                served.set((requests[i].load(Ordering::Acquire), runs + 1));
            })
        })
        .collect();
    let finished = Arc::new(AtomicU64::new(0));
    let remote = ctx.remote();
    let producers: Vec<_> = bhs
        .iter()
        .enumerate()
        .map(|(i, bh)| {
            let (bh, requests, finished, remote) = (
                bh.remote(),
                requests.clone(),
                finished.clone(),
                remote.clone(),
            );
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut n = 0;
                while n < MAX_SCHEDULES_PER_PRODUCER && (n % 1024 != 0 || start.elapsed() < RUN_FOR)
                {
                    requests[i].fetch_add(1, Ordering::Release);
                    bh.schedule();
                    n += 1;
                }
                finished.fetch_add(1, Ordering::AcqRel);
                remote.notify();
                n
            })
        })
        .collect();

    let all_served =
        || (0..PRODUCERS).all(|i| served[i].get().0 == requests[i].load(Ordering::Acquire));
    while !(finished.load(Ordering::Acquire) == PRODUCERS as u64 && all_served()) {
        ctx.poll(true);
    }
    let schedules: Vec<u64> = producers.into_iter().map(|p| p.join().unwrap()).collect();
    // Nothing may be left to run, and a final poll finds nothing new.
    while ctx.poll(false) {}
    done.store(true, Ordering::Release);
    let mut total_runs = 0;
    for i in 0..PRODUCERS {
        let (seen, runs) = served[i].get();
        assert_eq!(
            seen, schedules[i],
            "producer {i}: its last schedule was observed"
        );
        assert!(
            runs >= 1 && runs <= schedules[i],
            "producer {i}: {runs} runs for {} schedules",
            schedules[i]
        );
        total_runs += runs;
    }
    assert_eq!(ctx.stats().bhs_run, total_runs);
    eprintln!(
        "{backend:?} polling={polling}: {} schedules -> {total_runs} runs; stats {:?}",
        schedules.iter().sum::<u64>(),
        ctx.stats()
    );
}

/// Remote one-shots: every closure runs exactly once.
fn oneshots(backend: Backend, polling: bool) {
    let ctx = context(backend, polling);
    let done = watchdog(Duration::from_secs(60), "oneshots");
    let per = MAX_ONESHOTS_PER_PRODUCER as usize;
    let seen: Arc<Vec<AtomicU8>> =
        Arc::new((0..PRODUCERS * per).map(|_| AtomicU8::new(0)).collect());
    let ran = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (remote, seen, ran, finished) =
                (ctx.remote(), seen.clone(), ran.clone(), finished.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut n = 0;
                while n < per && (n % 1024 != 0 || start.elapsed() < RUN_FOR) {
                    let (seen, ran, id) = (seen.clone(), ran.clone(), p * per + n);
                    remote.schedule_oneshot(move || {
                        seen[id].fetch_add(1, Ordering::Relaxed);
                        ran.fetch_add(1, Ordering::Relaxed);
                    });
                    n += 1;
                }
                finished.fetch_add(1, Ordering::AcqRel);
                remote.notify();
                n
            })
        })
        .collect();
    while finished.load(Ordering::Acquire) != PRODUCERS as u64 {
        ctx.poll(true);
    }
    let counts: Vec<usize> = producers.into_iter().map(|p| p.join().unwrap()).collect();
    let total: u64 = counts.iter().map(|&c| c as u64).sum();
    while ran.load(Ordering::Relaxed) < total {
        ctx.poll(true);
    }
    while ctx.poll(false) {}
    done.store(true, Ordering::Release);
    assert_eq!(ran.load(Ordering::Relaxed), total);
    for (p, &count) in counts.iter().enumerate() {
        for n in 0..per {
            let times = seen[p * per + n].load(Ordering::Relaxed);
            let expected = u8::from(n < count);
            assert_eq!(
                times, expected,
                "one-shot {n} of producer {p} ran {times} times"
            );
        }
    }
}

#[test]
fn repeating_bhs_epoll() {
    repeating_bhs(Backend::Epoll, false);
}

#[test]
fn repeating_bhs_epoll_polling() {
    repeating_bhs(Backend::Epoll, true);
}

#[test]
fn repeating_bhs_poll() {
    repeating_bhs(Backend::Poll, false);
}

#[test]
fn repeating_bhs_poll_polling() {
    repeating_bhs(Backend::Poll, true);
}

#[test]
fn oneshots_epoll() {
    oneshots(Backend::Epoll, false);
}

#[test]
fn oneshots_poll_polling() {
    oneshots(Backend::Poll, true);
}

#[test]
fn repeating_bhs_io_uring() {
    repeating_bhs(Backend::IoUring, false);
}

#[test]
fn repeating_bhs_io_uring_polling() {
    repeating_bhs(Backend::IoUring, true);
}

#[test]
fn oneshots_io_uring() {
    oneshots(Backend::IoUring, false);
}
