//! A device whose requests complete on timers and whose completions go out through tasks: what a
//! device model with a latency model, interrupt coalescing and housekeeping does, on every runtime.
//!
//! A guest thread keeps 32 requests in flight through a channel (each a cross-thread wake-up of the
//! device's thread). The device's main task gives every request a timer (its completion latency,
//! 20 to 80 us from the request's id) in a `FuturesUnordered`; a spawned coalescing task delivers
//! finished requests to the guest every 25 us (a periodic timer, as interrupt coalescing); another
//! spawned task ticks every millisecond, as a device's statistics timer. Reported: requests per
//! second, p99 latency seen by the guest, and the device side's CPU per request (the process's CPU
//! minus the guest thread's).

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;

use crate::cpu;
use crate::harness::{per_second, percentile, Config, Metric, Scenario, Table};
use crate::runtimes::{with_executor, Executor};

pub const SCENARIOS: &[Scenario] = &[Scenario {
    name: "device_timers_tasks",
    table: Table::Peers,
    metrics: &[
        Metric::higher("qd32, 20-80 us timer per request", "req/s"),
        Metric::lower("p99 latency seen by the guest", "us"),
        Metric::lower("device CPU per request", "us"),
    ],
    run: |side, config| with_executor!(side, run_on(config)),
}];

const DEPTH: usize = 32;
const COALESCE: Duration = Duration::from_micros(25);
const HOUSEKEEPING: Duration = Duration::from_millis(1);

/// A request's completion latency: 20 to 80 us, spread by its id.
fn latency(id: u64) -> Duration {
    Duration::from_micros(20 + id.wrapping_mul(7_919) % 61)
}

fn run_on<E: Executor>(config: &Config) -> io::Result<Vec<f64>> {
    let window = config.window();
    let (requests, device_requests) = mpsc::unbounded::<u64>();
    let (device_completions, completions) = mpsc::unbounded::<Vec<u64>>();
    let device = std::thread::Builder::new()
        .name("device".into())
        .spawn(move || E::block_on_local(device::<E>(device_requests, device_completions)))?;
    let result = guest(requests, completions, window);
    device
        .join()
        .map_err(|_| io::Error::other("the device thread panicked"))??;
    let run = result?;
    Ok(vec![
        per_second(run.completed, run.elapsed),
        percentile(&run.latencies_us, 99.0),
        cpu::us_per(run.device_cpu, run.completed),
    ])
}

/// The device: until the guest closes its channel and every request completed.
async fn device<E: Executor>(
    mut requests: mpsc::UnboundedReceiver<u64>,
    completions: mpsc::UnboundedSender<Vec<u64>>,
) {
    let done = Rc::new(RefCell::new(Vec::new()));
    let closing = Rc::new(std::cell::Cell::new(false));
    let coalescer = E::spawn_local({
        let (done, closing) = (done.clone(), closing.clone());
        async move {
            loop {
                E::sleep(COALESCE).await;
                let batch = std::mem::take(&mut *done.borrow_mut());
                if !batch.is_empty() && completions.unbounded_send(batch).is_err() {
                    return;
                }
                if closing.get() && done.borrow().is_empty() {
                    return;
                }
            }
        }
    });
    let housekeeping = E::spawn_local({
        let closing = closing.clone();
        async move {
            let mut ticks = 0u64;
            while !closing.get() {
                E::sleep(HOUSEKEEPING).await;
                ticks += 1;
            }
            ticks
        }
    });
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        futures::select_biased! {
            id = in_flight.select_next_some() => done.borrow_mut().push(id),
            request = requests.next() => match request {
                Some(id) => in_flight.push(async move {
                    E::sleep(latency(id)).await;
                    id
                }),
                None => open = false,
            },
            complete => break,
        }
    }
    closing.set(true);
    coalescer.await;
    housekeeping.await;
}

struct GuestRun {
    completed: u64,
    elapsed: Duration,
    latencies_us: Vec<f64>,
    device_cpu: Duration,
}

/// Keeps `DEPTH` requests in flight for `window`, then lets the last ones complete.
fn guest(
    requests: mpsc::UnboundedSender<u64>,
    mut completions: mpsc::UnboundedReceiver<Vec<u64>>,
    window: Duration,
) -> io::Result<GuestRun> {
    let mut submitted_at = std::collections::HashMap::with_capacity(DEPTH);
    let mut next_id = 0u64;
    let mut submit = |submitted_at: &mut std::collections::HashMap<u64, Instant>| {
        submitted_at.insert(next_id, Instant::now());
        requests
            .unbounded_send(next_id)
            .map_err(|_| io::Error::other("the device stopped"))?;
        next_id += 1;
        io::Result::Ok(())
    };
    // The first round trip waits for the device's runtime to be built: not measured.
    submit(&mut submitted_at)?;
    let first = futures::executor::block_on(completions.next())
        .ok_or_else(|| io::Error::other("the device stopped"))?;
    for id in first {
        submitted_at.remove(&id);
    }
    let meter = cpu::OthersMeter::start()?;
    let start = Instant::now();
    let mut latencies_us = Vec::new();
    while submitted_at.len() < DEPTH {
        submit(&mut submitted_at)?;
    }
    while start.elapsed() < window {
        let batch = futures::executor::block_on(completions.next())
            .ok_or_else(|| io::Error::other("the device stopped"))?;
        for id in batch {
            let at = submitted_at
                .remove(&id)
                .ok_or_else(|| io::Error::other(format!("request {id} completed twice")))?;
            latencies_us.push(at.elapsed().as_nanos() as f64 / 1e3);
            submit(&mut submitted_at)?;
        }
    }
    let elapsed = start.elapsed();
    let device_cpu = meter.others()?;
    let completed = latencies_us.len() as u64;
    drop(requests);
    // The rest complete; the device ends when its channel is closed and drained.
    while !submitted_at.is_empty() {
        let Some(batch) = futures::executor::block_on(completions.next()) else {
            return Err(io::Error::other(
                "the device stopped with requests in flight",
            ));
        };
        for id in batch {
            submitted_at.remove(&id);
        }
    }
    Ok(GuestRun {
        completed,
        elapsed,
        latencies_us,
        device_cpu,
    })
}
