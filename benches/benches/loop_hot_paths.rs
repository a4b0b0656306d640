//! Micro-benchmarks of the callback loop's hot paths: `cargo bench -p benches`.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aioctx::time::Clock;
use aioctx::{AioContext, Backend};
use criterion::{criterion_group, criterion_main, Criterion};

fn ctx(backend: Backend) -> AioContext {
    AioContext::builder().backend(backend).build().unwrap()
}

fn empty_poll(c: &mut Criterion) {
    for backend in [Backend::Poll, Backend::Epoll, Backend::IoUring] {
        let ctx = ctx(backend);
        c.bench_function(&format!("empty_poll_nonblocking/{backend:?}"), |b| {
            b.iter(|| ctx.poll(false))
        });
    }
}

fn bh_schedule_run(c: &mut Criterion) {
    let ctx = ctx(Backend::Epoll);
    let runs = Rc::new(Cell::new(0u64));
    let bh = ctx.bh({
        let r = runs.clone();
        move || r.set(r.get() + 1)
    });
    c.bench_function("bh_schedule_and_run_local", |b| {
        b.iter(|| {
            bh.schedule();
            ctx.poll(false)
        })
    });
    let remote = bh.remote();
    c.bench_function("bh_schedule_remote_handle", |b| {
        b.iter(|| remote.schedule())
    });
    ctx.poll(false);
}

/// A BH scheduled from this thread and run by a loop asleep in another: the full cross-thread trip.
fn bh_schedule_run_remote(c: &mut Criterion) {
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let loop_thread = std::thread::spawn({
        let (stop, runs) = (stop.clone(), runs.clone());
        move || {
            let ctx = ctx(Backend::Epoll);
            let bh = ctx.bh(move || {
                runs.fetch_add(1, Ordering::Release);
            });
            tx.send(bh.remote()).unwrap();
            while !stop.load(Ordering::Acquire) {
                ctx.poll(true);
            }
        }
    });
    let remote = rx.recv().unwrap();
    c.bench_function("bh_schedule_and_run_remote", |b| {
        b.iter(|| {
            let before = runs.load(Ordering::Acquire);
            remote.schedule();
            while runs.load(Ordering::Acquire) == before {
                std::hint::spin_loop();
            }
        })
    });
    stop.store(true, Ordering::Release);
    remote.schedule();
    loop_thread.join().unwrap();
}

fn timer_arm_cancel(c: &mut Criterion) {
    let ctx = ctx(Backend::Epoll);
    let timers: Vec<_> = (0..1024)
        .map(|_| ctx.timer(Clock::Realtime, || {}))
        .collect();
    let mut i = 0;
    c.bench_function("timer_arm_cancel_1024_armed", |b| {
        for t in &timers {
            t.arm_after(Duration::from_secs(3600));
        }
        b.iter(|| {
            let t = &timers[i % timers.len()];
            i += 1;
            t.arm_after(Duration::from_secs(60));
            t.cancel();
        })
    });
}

fn notify(c: &mut Criterion) {
    let ctx = ctx(Backend::Epoll);
    let remote = ctx.remote();
    c.bench_function("notify_running_loop", |b| b.iter(|| remote.notify()));
    ctx.poll(false);

    // A loop asleep in another thread: each notify must write the eventfd (once per sleep).
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let loop_thread = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let ctx = AioContext::builder()
                .backend(Backend::Epoll)
                .build()
                .unwrap();
            tx.send(ctx.remote()).unwrap();
            while !stop.load(Ordering::Acquire) {
                ctx.poll(true);
            }
        }
    });
    let sleeping = rx.recv().unwrap();
    c.bench_function("notify_sleeping_loop", |b| b.iter(|| sleeping.notify()));
    stop.store(true, Ordering::Release);
    sleeping.notify();
    loop_thread.join().unwrap();
}

criterion_group!(
    benches,
    empty_poll,
    bh_schedule_run,
    bh_schedule_run_remote,
    timer_arm_cancel,
    notify
);
criterion_main!(benches);
