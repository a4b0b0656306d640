//! Executor scenarios on one thread: spawn, yield, local message ping-pong, timer churn.
//!
//! aioctx runs one bare `AioContext` (`block_on`), tokio its current-thread runtime; both spawn
//! `Send` tasks with their `spawn`, use `futures::channel`, and poll the same futures.

use std::io;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use crate::harness::{
    aioctx_context, ns_per, tokio_current_thread, Config, Metric, Scenario, Side, VS_TOKIO,
};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "spawn_join",
        sides: VS_TOKIO,
        metrics: &[Metric::lower("per task", "ns")],
        run: spawn_join,
    },
    Scenario {
        name: "yield_many",
        sides: VS_TOKIO,
        metrics: &[Metric::lower("per yield", "ns")],
        run: yield_many,
    },
    Scenario {
        name: "ping_pong_local",
        sides: VS_TOKIO,
        metrics: &[Metric::lower("per round trip", "ns")],
        run: ping_pong_local,
    },
    Scenario {
        name: "timer_churn",
        sides: VS_TOKIO,
        metrics: &[Metric::lower("per arm+cancel", "ns")],
        run: timer_churn,
    },
];

/// Runs `body` to completion on a fresh single-threaded runtime of `side` and times it.
fn timed<F>(side: Side, body: impl FnOnce(Side) -> F) -> io::Result<Duration>
where
    F: std::future::Future<Output = ()>,
{
    let future = body(side);
    match side {
        Side::Aioctx => {
            let ctx = aioctx_context()?;
            let start = Instant::now();
            ctx.block_on(future);
            Ok(start.elapsed())
        }
        Side::Tokio => {
            let rt = tokio_current_thread()?;
            let start = Instant::now();
            rt.block_on(future);
            Ok(start.elapsed())
        }
    }
}

/// Spawns a `Send` task on the runtime that is current on this thread.
macro_rules! spawn_on {
    ($side:expr, $future:expr) => {
        match $side {
            Side::Aioctx => futures::future::Either::Left(aioctx::spawn($future)),
            Side::Tokio => futures::future::Either::Right(tokio::spawn($future)),
        }
    };
}

/// Awaits either side's join handle, turning a failed task into a panic of the benchmark.
async fn join<T>(
    handle: futures::future::Either<aioctx::JoinHandle<T>, tokio::task::JoinHandle<T>>,
) -> T {
    match handle {
        futures::future::Either::Left(h) => h.await.expect("aioctx task failed"),
        futures::future::Either::Right(h) => h.await.expect("tokio task failed"),
    }
}

fn spawn_join(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    let tasks = config.pick(100_000u64, 5_000);
    let elapsed = timed(side, |side| async move {
        let handles: Vec<_> = (0..tasks)
            .map(|i| spawn_on!(side, async move { i }))
            .collect();
        let mut sum = 0;
        for handle in handles {
            sum += join(handle).await;
        }
        assert_eq!(sum, tasks * (tasks - 1) / 2);
    })?;
    Ok(vec![ns_per(elapsed, tasks)])
}

async fn yield_now(side: Side) {
    match side {
        Side::Aioctx => aioctx::yield_now().await,
        Side::Tokio => tokio::task::yield_now().await,
    }
}

fn yield_many(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    let (tasks, yields) = (8u64, config.pick(25_000u64, 1_000));
    let elapsed = timed(side, |side| async move {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                spawn_on!(side, async move {
                    for _ in 0..yields {
                        yield_now(side).await;
                    }
                })
            })
            .collect();
        for handle in handles {
            join(handle).await;
        }
    })?;
    Ok(vec![ns_per(elapsed, tasks * yields)])
}

fn ping_pong_local(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    let trips = config.pick(200_000u64, 5_000);
    let elapsed = timed(side, |side| async move {
        let (mut to_echo, mut echo_in) = mpsc::channel::<u64>(1);
        let (mut to_main, mut main_in) = mpsc::channel::<u64>(1);
        let echo = spawn_on!(side, async move {
            while let Some(v) = echo_in.next().await {
                to_main.send(v + 1).await.expect("main task gone");
            }
        });
        for i in 0..trips {
            to_echo.send(i).await.expect("echo task gone");
            assert_eq!(main_in.next().await, Some(i + 1));
        }
        drop(to_echo);
        join(echo).await;
    })?;
    Ok(vec![ns_per(elapsed, trips)])
}

fn timer_churn(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    let ops = config.pick(1_000_000u64, 20_000);
    let far = Duration::from_secs(3600);
    let elapsed = timed(side, |side| async move {
        // Polling once registers the timer on both runtimes; dropping the pending sleep cancels it.
        for _ in 0..ops {
            let pending = match side {
                Side::Aioctx => futures::poll!(pin!(aioctx::time::sleep(far))).is_pending(),
                Side::Tokio => futures::poll!(pin!(tokio::time::sleep(far))).is_pending(),
            };
            assert!(pending, "a sleep of an hour completed");
        }
    })?;
    Ok(vec![ns_per(elapsed, ops)])
}
