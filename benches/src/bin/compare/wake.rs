//! Latency scenarios: cross-thread wakeups and short sleeps.

use std::io;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;

use crate::harness::{percentile, tokio_current_thread, Config, Metric, Scenario, Side, VS_TOKIO};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "cross_thread_wake",
        sides: VS_TOKIO,
        metrics: &[
            Metric::lower("p50 round trip, polling on", "us"),
            Metric::lower("p99 round trip, polling on", "us"),
        ],
        run: cross_thread_wake_polling,
    },
    Scenario {
        name: "cross_thread_wake",
        sides: VS_TOKIO,
        metrics: &[
            Metric::lower("p50 round trip, polling off", "us"),
            Metric::lower("p99 round trip, polling off", "us"),
        ],
        run: cross_thread_wake_no_polling,
    },
    Scenario {
        name: "timer_accuracy",
        sides: VS_TOKIO,
        metrics: &[
            Metric::lower("median lateness of sleep(50us)", "us"),
            Metric::lower("p99 lateness of sleep(50us)", "us"),
        ],
        run: |side, config| timer_accuracy(side, config, false),
    },
    Scenario {
        name: "timer_accuracy",
        sides: VS_TOKIO,
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

/// A plain thread sends to a task on the runtime's thread and parks until the reply arrives.
fn client_round_trips(
    requests: mpsc::UnboundedSender<u64>,
    mut replies: mpsc::UnboundedReceiver<u64>,
    trips: u64,
) -> Vec<f64> {
    let mut rtts = Vec::with_capacity(trips as usize);
    for i in 0..trips {
        let start = Instant::now();
        requests.unbounded_send(i).expect("responder gone");
        let reply = futures::executor::block_on(replies.next());
        rtts.push(start.elapsed().as_nanos() as f64 / 1e3);
        assert_eq!(reply, Some(i + 1));
    }
    rtts
}

fn cross_thread_wake(side: Side, config: &Config, polling: bool) -> io::Result<Vec<f64>> {
    let trips = config.pick(20_000, 500);
    let (req_tx, req_rx) = mpsc::unbounded();
    let (rep_tx, rep_rx) = mpsc::unbounded();
    let rtts = match side {
        Side::Aioctx => {
            let mut builder = aioctx::IoThread::builder().name("compare-iothread");
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
        Side::Tokio => {
            let rt = tokio_current_thread()?;
            let thread = std::thread::spawn(move || rt.block_on(responder(req_rx, rep_tx)));
            let rtts = client_round_trips(req_tx, rep_rx, trips);
            thread
                .join()
                .map_err(|_| io::Error::other("tokio thread panicked"))?;
            rtts
        }
    };
    Ok(vec![percentile(&rtts, 50.0), percentile(&rtts, 99.0)])
}

fn cross_thread_wake_polling(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    cross_thread_wake(side, config, true)
}

fn cross_thread_wake_no_polling(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    cross_thread_wake(side, config, false)
}

/// `polling`: the aioctx context uses an IOThread's poll parameters (it then spins through the
/// measured wake-up latency before a deadline); tokio has no such mode and runs the same either way.
fn timer_accuracy(side: Side, config: &Config, polling: bool) -> io::Result<Vec<f64>> {
    let sleeps = config.pick(400, 20);
    let period = Duration::from_micros(50);
    let mut lateness = Vec::with_capacity(sleeps);
    let measure = |lateness: &mut Vec<f64>, start: Instant| {
        let late = start.elapsed().saturating_sub(period);
        lateness.push(late.as_nanos() as f64 / 1e3);
    };
    match side {
        Side::Aioctx => {
            let mut builder = aioctx::AioContext::builder();
            if polling {
                builder = builder.poll_params(aioctx::PollParams::IOTHREAD);
            }
            builder.build()?
        }
        .block_on(async {
            for _ in 0..sleeps {
                let start = Instant::now();
                aioctx::time::sleep(period).await;
                measure(&mut lateness, start);
            }
        }),
        Side::Tokio => tokio_current_thread()?.block_on(async {
            for _ in 0..sleeps {
                let start = Instant::now();
                tokio::time::sleep(period).await;
                measure(&mut lateness, start);
            }
        }),
    }
    Ok(vec![
        percentile(&lateness, 50.0),
        percentile(&lateness, 99.0),
    ])
}
