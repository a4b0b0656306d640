//! A tour of the loop: a vCPU thread kicks a device through an ioeventfd-like notifier, the device
//! completes requests through a bottom half, a timer paces the run, and the loop prints what its
//! statistics saw, once with busy-polling off and once on. Then a task measures how late a 50 us
//! `aioctx::time::sleep` wakes up.
//!
//! `cargo run --release -p examples --example loop-tour`

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aioctx::time::Clock;
use aioctx::{AioContext, EventNotifier, PollParams};

const KICKS: u64 = 20_000;

fn run(poll: PollParams) -> std::io::Result<()> {
    let ctx = AioContext::builder().poll_params(poll).build()?;
    let kick = EventNotifier::new()?;
    // The "guest" publishes work in memory, then kicks; the device may also find it by polling.
    let published = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let consumed = Rc::new(Cell::new(0u64));

    // Completions go back to the vCPU thread through a BH-like path: here, just an atomic it spins on.
    let complete_bh = ctx.bh({
        let (consumed, completed) = (consumed.clone(), completed.clone());
        move || completed.store(consumed.get(), Ordering::Release)
    });
    let complete_bh = Rc::new(complete_bh);
    let drain = {
        let (published, consumed, complete_bh) =
            (published.clone(), consumed.clone(), complete_bh.clone());
        move || {
            let now = published.load(Ordering::Acquire);
            if now > consumed.get() {
                consumed.set(now);
                complete_bh.schedule();
            }
        }
    };
    let _reg = ctx.set_event_notifier(
        &kick,
        {
            let (kick, drain) = (kick.clone(), drain.clone());
            move || {
                let _ = kick.test_and_clear();
                drain()
            }
        },
        Some(Box::new({
            let (published, consumed) = (published.clone(), consumed.clone());
            move || published.load(Ordering::Acquire) > consumed.get()
        })),
    )?;

    let ticks = Rc::new(Cell::new(0u32));
    let tick_timer = ctx.timer(Clock::Realtime, {
        let ticks = ticks.clone();
        move || ticks.set(ticks.get() + 1)
    });
    let tick = tick_timer.handle();

    let done = Arc::new(AtomicBool::new(false));
    let vcpu = std::thread::spawn({
        let (published, completed, kick, done) = (
            published.clone(),
            completed.clone(),
            kick.clone(),
            done.clone(),
        );
        move || {
            let mut latencies = Vec::with_capacity(KICKS as usize);
            for i in 1..=KICKS {
                let t0 = Instant::now();
                published.store(i, Ordering::Release);
                kick.set().unwrap();
                while completed.load(Ordering::Acquire) < i {
                    std::hint::spin_loop();
                }
                latencies.push(t0.elapsed());
            }
            done.store(true, Ordering::Release);
            kick.set().unwrap();
            latencies.sort();
            latencies
        }
    });

    let start = Instant::now();
    tick.arm_after(Duration::from_millis(1));
    while !done.load(Ordering::Acquire) {
        if !tick.is_pending() {
            tick.arm_after(Duration::from_millis(1));
        }
        ctx.poll(true);
    }
    let elapsed = start.elapsed();
    let latencies = vcpu.join().expect("vcpu thread");
    let s = ctx.stats();
    println!(
        "poll_max_ns={:>6}: {KICKS} kick->completion round trips in {:?}; p50 {:?}, p99 {:?}",
        poll.max_ns,
        elapsed,
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
    );
    println!(
        "    iterations {} | poll hits {} misses {} ({} us polling) | blocking waits {} | \
         eventfd writes {} skipped {} | bhs {} | handlers {} | timer ticks {}",
        s.iterations,
        s.poll_hits,
        s.poll_misses,
        s.poll_ns / 1000,
        s.blocking_waits,
        s.notify_writes,
        s.notify_skipped,
        s.bhs_run,
        s.handlers_dispatched,
        ticks.get(),
    );
    Ok(())
}

/// Sleeps 50 us a few thousand times in a task and reports the lateness percentiles.
fn sleep_precision() -> std::io::Result<()> {
    let ctx = AioContext::new()?;
    let mut late: Vec<Duration> = ctx.block_on(async {
        let mut late = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let t0 = Instant::now();
            aioctx::time::sleep(Duration::from_micros(50)).await;
            late.push(t0.elapsed().saturating_sub(Duration::from_micros(50)));
        }
        late
    });
    late.sort();
    println!(
        "sleep(50 us) x {}: lateness p50 {:?}, p99 {:?}, max {:?}",
        late.len(),
        late[late.len() / 2],
        late[late.len() * 99 / 100],
        late[late.len() - 1]
    );
    Ok(())
}

fn main() -> std::io::Result<()> {
    let ctx = AioContext::new()?;
    println!("aioctx loop tour (backend {:?})", ctx.backend());
    drop(ctx);
    run(PollParams::default())?;
    run(PollParams::IOTHREAD)?;
    sleep_precision()
}
