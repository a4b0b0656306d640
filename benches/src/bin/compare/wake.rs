//! Latency scenarios: cross-thread wakeups and short sleeps.
//!
//! "MSG_RING" rows wake aioctx's IOThread by posting a completion into its ring instead of writing
//! its eventfd (`IoThreadBuilder::wake_by_msg_ring`). "polling on" rows run aioctx with an IOThread's
//! adaptive polling (up to 64 us, the IOThread default) and glommio with the same 64 us of
//! `spin_before_park`, its counterpart; tokio, compio, monoio and smol have no busy-polling mode and
//! run the same in both rows.

use std::io;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;

use crate::harness::{percentile, Config, Metric, Scenario, Side, Table};
use crate::runtimes::{with_executor, Executor, Glommio};

/// How long glommio spins before it parks in the "polling on" rows: aioctx's IOThread default.
const GLOMMIO_SPIN: Duration = Duration::from_nanos(aioctx::PollParams::IOTHREAD.max_ns);

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "cross_thread_wake",
        table: Table::Peers,
        metrics: &[
            Metric::lower("p50 round trip, polling on", "us"),
            Metric::lower("p99 round trip, polling on", "us"),
        ],
        run: cross_thread_wake_polling,
    },
    Scenario {
        name: "cross_thread_wake",
        table: Table::Peers,
        metrics: &[
            Metric::lower("p50 round trip, polling off", "us"),
            Metric::lower("p99 round trip, polling off", "us"),
        ],
        run: cross_thread_wake_no_polling,
    },
    Scenario {
        name: "cross_thread_wake",
        table: Table::Peers,
        metrics: &[
            Metric::lower("p50 round trip, polling off, MSG_RING", "us"),
            Metric::lower("p99 round trip, polling off, MSG_RING", "us"),
        ],
        run: |side, config| cross_thread_wake(side, config, false, true),
    },
    Scenario {
        name: "timer_accuracy",
        table: Table::Peers,
        metrics: &[
            Metric::lower("median lateness of sleep(50us)", "us"),
            Metric::lower("p99 lateness of sleep(50us)", "us"),
        ],
        run: |side, config| timer_accuracy(side, config, false),
    },
    Scenario {
        name: "timer_accuracy",
        table: Table::Peers,
        metrics: &[
            Metric::lower("median lateness, polling on", "us"),
            Metric::lower("p99 lateness, polling on", "us"),
        ],
        run: |side, config| timer_accuracy(side, config, true),
    },
];

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

const WARM_UP_TRIPS: u64 = 100;

/// A plain thread sends to a task on the runtime's thread and parks until the reply arrives.
fn client_round_trips(
    requests: mpsc::UnboundedSender<u64>,
    mut replies: mpsc::UnboundedReceiver<u64>,
    trips: u64,
) -> Vec<f64> {
    let mut rtts = Vec::with_capacity(trips as usize);
    // The first trips wait for the runtime's thread to build its runtime: not measured.
    for i in 0..trips + WARM_UP_TRIPS {
        let start = Instant::now();
        requests.unbounded_send(i).expect("responder gone");
        let reply = futures::executor::block_on(replies.next());
        if i >= WARM_UP_TRIPS {
            rtts.push(start.elapsed().as_nanos() as f64 / 1e3);
        }
        assert_eq!(reply, Some(i + 1));
    }
    rtts
}

/// `msg_ring`: aioctx's IOThread is woken through its io_uring ring (`wake_by_msg_ring`) instead of
/// its eventfd; the peers have no such option and run as without it.
fn cross_thread_wake(
    side: Side,
    config: &Config,
    polling: bool,
    msg_ring: bool,
) -> io::Result<Vec<f64>> {
    let trips = config.pick(20_000, 500);
    let (req_tx, req_rx) = mpsc::unbounded();
    let (rep_tx, rep_rx) = mpsc::unbounded();
    let rtts = match side {
        Side::Aioctx => {
            let mut builder = aioctx::IoThread::builder()
                .name("compare-iothread")
                .wake_by_msg_ring(msg_ring);
            if !polling {
                builder = builder.poll_max_ns(0);
            }
            let thread = builder.spawn()?;
            let task = thread.remote().spawn(responder(req_rx, rep_tx));
            let rtts = client_round_trips(req_tx, rep_rx, trips);
            task.join_blocking()?;
            thread.stop();
            rtts
        }
        _ => {
            let spin = polling.then_some(GLOMMIO_SPIN);
            let thread = std::thread::Builder::new()
                .name(format!("compare-{}", side.name()))
                .spawn(move || match side {
                    Side::Glommio => Glommio::block_on_spinning(spin, responder(req_rx, rep_tx)),
                    _ => with_executor!(side, block_on(responder(req_rx, rep_tx))),
                })?;
            let rtts = client_round_trips(req_tx, rep_rx, trips);
            thread
                .join()
                .map_err(|_| io::Error::other("runtime thread panicked"))??;
            rtts
        }
    };
    Ok(vec![percentile(&rtts, 50.0), percentile(&rtts, 99.0)])
}

/// `E::block_on`, in the shape `with_executor!` calls.
fn block_on<E: Executor>(future: impl std::future::Future<Output = ()>) -> io::Result<()> {
    E::block_on(future)
}

fn cross_thread_wake_polling(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    cross_thread_wake(side, config, true, false)
}

fn cross_thread_wake_no_polling(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    cross_thread_wake(side, config, false, false)
}

/// `polling`: the aioctx context uses an IOThread's poll parameters (it then spins through the
/// measured wake-up latency before a deadline), glommio spins before it parks; the other runtimes
/// have no such mode and run the same either way.
fn timer_accuracy(side: Side, config: &Config, polling: bool) -> io::Result<Vec<f64>> {
    let sleeps = config.pick(400, 20);
    let lateness = match side {
        Side::Aioctx => {
            let mut builder = aioctx::AioContext::builder();
            if polling {
                builder = builder.poll_params(aioctx::PollParams::IOTHREAD);
            }
            builder
                .build()?
                .block_on(sleep_lateness::<crate::runtimes::Aioctx>(sleeps))
        }
        Side::Glommio => Glommio::block_on_spinning(
            polling.then_some(GLOMMIO_SPIN),
            sleep_lateness::<Glommio>(sleeps),
        )?,
        _ => with_executor!(side, block_on_lateness(sleeps))?,
    };
    Ok(vec![
        percentile(&lateness, 50.0),
        percentile(&lateness, 99.0),
    ])
}

fn block_on_lateness<E: Executor>(sleeps: usize) -> io::Result<Vec<f64>> {
    E::block_on(sleep_lateness::<E>(sleeps))
}

/// How late each of `sleeps` sleeps of 50 us ends, in us.
async fn sleep_lateness<E: Executor>(sleeps: usize) -> Vec<f64> {
    let period = Duration::from_micros(50);
    let mut lateness = Vec::with_capacity(sleeps);
    for _ in 0..sleeps {
        let start = Instant::now();
        E::sleep(period).await;
        let late = start.elapsed().saturating_sub(period);
        lateness.push(late.as_nanos() as f64 / 1e3);
    }
    lateness
}
