//! What glib costs (aioctx's feature `glib`): both columns run aioctx, the two ways a user can run it.
//!
//! - `glib_timer_lateness`: a 50 us `aioctx::time::sleep` on a `MainLoop` (glib's context and two
//!   aioctx contexts in one `ppoll` with a ns timeout) against the same sleep on a bare context, and
//!   against glib's own `timeout_add` of 1 ms (glib's timeouts are whole milliseconds): the main loop
//!   should keep the bare context's nanosecond timers.
//! - `glib_iothread_wake`: the cross-thread round trip of `cross_thread_wake` on an IoThread in its
//!   default poll mode (polling on, then off) against the same IoThread switched to glib mode
//!   (`IoThread::g_main_context`: glib's poll, no busy-polling).
//!
//! The ratio column is B / A for times: how many times the second way costs the first.

use std::io;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use aioctx::glib;
use futures::channel::mpsc;
use futures::StreamExt;

use crate::harness::{percentile, Config, Metric, Scenario, Side, Table};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "glib_timer_lateness",
        table: Table::Versus(["MainLoop", "bare ctx"]),
        metrics: &[
            Metric::lower("median lateness of sleep(50us)", "us"),
            Metric::lower("p99 lateness of sleep(50us)", "us"),
        ],
        run: |side, config| match side {
            Side::Aioctx => main_loop_sleeps(config),
            _ => bare_context_sleeps(config),
        },
    },
    Scenario {
        name: "glib_timer_lateness",
        table: Table::Versus(["MainLoop 50us", "glib 1ms"]),
        metrics: &[
            Metric::lower("median lateness, glib timeout_add", "us"),
            Metric::lower("p99 lateness, glib timeout_add", "us"),
        ],
        run: |side, config| match side {
            Side::Aioctx => main_loop_sleeps(config),
            _ => glib_timeouts(config),
        },
    },
    Scenario {
        name: "glib_iothread_wake",
        table: Table::Versus(["poll mode", "glib mode"]),
        metrics: &[
            Metric::lower("p50 round trip, polling on", "us"),
            Metric::lower("p99 round trip, polling on", "us"),
        ],
        run: |side, config| iothread_wake(side, config, true),
    },
    Scenario {
        name: "glib_iothread_wake",
        table: Table::Versus(["poll mode", "glib mode"]),
        metrics: &[
            Metric::lower("p50 round trip, polling off", "us"),
            Metric::lower("p99 round trip, polling off", "us"),
        ],
        run: |side, config| iothread_wake(side, config, false),
    },
];

const PERIOD: Duration = Duration::from_micros(50);

fn lateness_summary(lateness: &[f64]) -> Vec<f64> {
    vec![percentile(lateness, 50.0), percentile(lateness, 99.0)]
}

/// Microseconds past `period` since `start`.
fn late_us(start: Instant, period: Duration) -> f64 {
    start.elapsed().saturating_sub(period).as_nanos() as f64 / 1e3
}

async fn sleeps(count: usize) -> Vec<f64> {
    let mut lateness = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        aioctx::time::sleep(PERIOD).await;
        lateness.push(late_us(start, PERIOD));
    }
    lateness
}

fn main_loop_sleeps(config: &Config) -> io::Result<Vec<f64>> {
    let ml = aioctx::MainLoop::builder()
        .context(glib::MainContext::new())
        .handle_signals(false)
        .build()?;
    Ok(lateness_summary(&ml.block_on(sleeps(config.pick(400, 20)))))
}

fn bare_context_sleeps(config: &Config) -> io::Result<Vec<f64>> {
    let ctx = aioctx::AioContext::new()?;
    Ok(lateness_summary(
        &ctx.block_on(sleeps(config.pick(400, 20))),
    ))
}

/// glib's `timeout_add` of 1 ms (its finest), re-added after each firing, on a glib context
/// iterated by glib itself.
fn glib_timeouts(config: &Config) -> io::Result<Vec<f64>> {
    let count = config.pick(200, 10);
    let period = Duration::from_millis(1);
    let gctx = glib::MainContext::new();
    let _owner = gctx.acquire().map_err(io::Error::other)?;
    let mut lateness = Vec::with_capacity(count);
    for _ in 0..count {
        let (tx, rx) = std_mpsc::channel();
        let start = Instant::now();
        glib::timeout_source_new(period, None, glib::Priority::DEFAULT, move || {
            let _ = tx.send(late_us(start, period));
            glib::ControlFlow::Break
        })
        .attach(Some(&gctx));
        let late = loop {
            gctx.iteration(true);
            if let Ok(late) = rx.try_recv() {
                break late;
            }
        };
        lateness.push(late);
    }
    Ok(lateness_summary(&lateness))
}

/// The loop-side half of a round trip: answer every request on the reply channel.
async fn responder(
    mut requests: mpsc::UnboundedReceiver<u64>,
    replies: mpsc::UnboundedSender<u64>,
) {
    while let Some(v) = requests.next().await {
        if replies.unbounded_send(v + 1).is_err() {
            break;
        }
    }
}

/// `Side::Aioctx`: the IoThread in poll mode; `Side::Tokio`: the same IoThread in glib mode.
fn iothread_wake(side: Side, config: &Config, polling: bool) -> io::Result<Vec<f64>> {
    let trips = config.pick(5_000, 200);
    let mut builder = aioctx::IoThread::builder().name("compare-glib");
    if !polling {
        builder = builder.poll_max_ns(0);
    }
    let thread = builder.spawn()?;
    if side == Side::Tokio {
        // Switch to glib mode, and wait until glib itself runs a source there.
        let gctx = thread.g_main_context();
        let (tx, rx) = std_mpsc::channel();
        glib::idle_source_new(None, glib::Priority::DEFAULT, move || {
            let _ = tx.send(());
            glib::ControlFlow::Break
        })
        .attach(Some(&gctx));
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::other("the IoThread did not switch to glib mode"))?;
    }
    let (req_tx, req_rx) = mpsc::unbounded();
    let (rep_tx, mut rep_rx) = mpsc::unbounded();
    let task = thread.remote().spawn(responder(req_rx, rep_tx));
    let mut rtts = Vec::with_capacity(trips as usize);
    for i in 0..trips {
        let start = Instant::now();
        req_tx
            .unbounded_send(i)
            .map_err(|_| io::Error::other("responder gone"))?;
        let reply = futures::executor::block_on(rep_rx.next());
        rtts.push(start.elapsed().as_nanos() as f64 / 1e3);
        if reply != Some(i + 1) {
            return Err(io::Error::other("wrong reply"));
        }
    }
    drop(req_tx);
    task.join_blocking()?;
    thread.stop();
    Ok(vec![percentile(&rtts, 50.0), percentile(&rtts, 99.0)])
}
