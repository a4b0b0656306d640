//! Executor scenarios on one thread: spawn, yield, local message ping-pong, timer churn.
//!
//! Every runtime runs one single-threaded executor ([`crate::runtimes`]); all spawn `Send` tasks
//! with their `spawn`, use `futures::channel`, and poll the same futures.

use std::io;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use crate::cpu;
use crate::harness::{ns_per, percentile, Config, Metric, Scenario, Side, Table};
use crate::runtimes::{with_executor, Executor};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "spawn_join",
        table: Table::Peers,
        metrics: &[Metric::lower("per task", "ns")],
        run: spawn_join,
    },
    Scenario {
        name: "yield_many",
        table: Table::Peers,
        metrics: &[Metric::lower("per yield", "ns")],
        run: yield_many,
    },
    Scenario {
        name: "ping_pong_local",
        table: Table::Peers,
        metrics: &[Metric::lower("per round trip", "ns")],
        run: ping_pong_local,
    },
    Scenario {
        name: "timer_churn",
        table: Table::Peers,
        metrics: &[Metric::lower("per arm+cancel", "ns")],
        run: timer_churn,
    },
    Scenario {
        name: "timers_100k",
        table: Table::Peers,
        metrics: &[
            Metric::lower("CPU per timer: 100k armed, 1% fire", "ns"),
            Metric::lower("median lateness of the 1% that fire", "us"),
        ],
        run: timers_at_scale,
    },
];

/// Runs `body` to completion on a fresh runtime of kind `E` and times it (not the runtime's
/// creation: glommio's takes milliseconds).
fn timed<E: Executor>(body: impl std::future::Future<Output = ()>) -> io::Result<Duration> {
    E::block_on(async move {
        let start = Instant::now();
        body.await;
        start.elapsed()
    })
}

fn spawn_join(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    with_executor!(side, spawn_join_on(config))
}

fn spawn_join_on<E: Executor>(config: &Config) -> io::Result<Vec<f64>> {
    let tasks = config.pick(100_000u64, 5_000);
    let elapsed = timed::<E>(async move {
        let handles: Vec<_> = (0..tasks).map(|i| E::spawn(async move { i })).collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await;
        }
        assert_eq!(sum, tasks * (tasks - 1) / 2);
    })?;
    Ok(vec![ns_per(elapsed, tasks)])
}

fn yield_many(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    with_executor!(side, yield_many_on(config))
}

fn yield_many_on<E: Executor>(config: &Config) -> io::Result<Vec<f64>> {
    let (tasks, yields) = (8u64, config.pick(25_000u64, 1_000));
    let elapsed = timed::<E>(async move {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                E::spawn(async move {
                    for _ in 0..yields {
                        E::yield_now().await;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await;
        }
    })?;
    Ok(vec![ns_per(elapsed, tasks * yields)])
}

fn ping_pong_local(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    with_executor!(side, ping_pong_local_on(config))
}

fn ping_pong_local_on<E: Executor>(config: &Config) -> io::Result<Vec<f64>> {
    let trips = config.pick(200_000u64, 5_000);
    let elapsed = timed::<E>(async move {
        let (mut to_echo, mut echo_in) = mpsc::channel::<u64>(1);
        let (mut to_main, mut main_in) = mpsc::channel::<u64>(1);
        let echo = E::spawn(async move {
            while let Some(v) = echo_in.next().await {
                to_main.send(v + 1).await.expect("main task gone");
            }
        });
        for i in 0..trips {
            to_echo.send(i).await.expect("echo task gone");
            assert_eq!(main_in.next().await, Some(i + 1));
        }
        drop(to_echo);
        echo.await;
    })?;
    Ok(vec![ns_per(elapsed, trips)])
}

fn timer_churn(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    with_executor!(side, timer_churn_on(config))
}

fn timer_churn_on<E: Executor>(config: &Config) -> io::Result<Vec<f64>> {
    let ops = config.pick(1_000_000u64, 20_000);
    let far = Duration::from_secs(3600);
    let elapsed = timed::<E>(async move {
        // Polling once registers the timer on every runtime; dropping the pending sleep cancels it.
        for _ in 0..ops {
            let pending = futures::poll!(pin!(E::sleep(far))).is_pending();
            assert!(pending, "a sleep of an hour completed");
        }
    })?;
    Ok(vec![ns_per(elapsed, ops)])
}

fn timers_at_scale(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    with_executor!(side, timers_at_scale_on(config))
}

/// Timer churn at scale: arms `timers` sleeps, 99% due in an hour and then 1% due within 1 to
/// 10 ms, waits for the 1% to fire and cancels (drops) the rest. Reports the runtime thread's CPU
/// time per timer (arming, firing and cancelling; the waiting costs no CPU) and the median lateness
/// of the timers that fired, measured while the 99% are armed.
///
/// The far timers are polled once with a no-op waker: that arms them (they never fire) without
/// each holding a clone of the task's waker, which glommio counts in 16 bits (one task polling
/// 100,000 of its timers panics there). The near ones run in a `FuturesUnordered`.
fn timers_at_scale_on<E: Executor>(config: &Config) -> io::Result<Vec<f64>> {
    let timers = config.pick(100_000u64, 10_000);
    let firing = timers / 100;
    let far = Duration::from_secs(3600);
    E::block_on(async move {
        let cpu_start = cpu::this_thread()?;
        let mut armed = std::task::Context::from_waker(futures::task::noop_waker_ref());
        let pending: Vec<_> = (0..timers - firing)
            .map(|_| {
                let mut sleep = Box::pin(E::sleep(far));
                assert!(std::future::Future::poll(sleep.as_mut(), &mut armed).is_pending());
                sleep
            })
            .collect();
        let start = Instant::now();
        let mut due: futures::stream::FuturesUnordered<_> = (0..firing)
            .map(|i| {
                // Deadlines spread over 1..10 ms.
                let deadline = start + Duration::from_micros(1_000 + i * 9_000 / firing);
                async move {
                    E::sleep(deadline.saturating_duration_since(Instant::now())).await;
                    Instant::now().saturating_duration_since(deadline)
                }
            })
            .collect();
        let mut lateness = Vec::with_capacity(firing as usize);
        while let Some(late) = due.next().await {
            lateness.push(late.as_nanos() as f64 / 1e3);
        }
        drop(pending);
        let cpu = cpu::this_thread()?.saturating_sub(cpu_start);
        Ok(vec![ns_per(cpu, timers), percentile(&lateness, 50.0)])
    })?
}
