//! A virtio-blk device model in async/await on an aioctx IoThread, driven by a simulated guest on a
//! vCPU thread (this one), with every read verified against what the guest wrote.
//!
//! `cargo run --release --example device-model` creates a sparse disk image in a temp dir, runs a short
//! mix of workloads with the IoThread's busy-polling on and off, and prints IOPS, latencies and, per
//! request, the guest kicks, the eventfd writes, the io_uring_enter calls and the poll hits.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use aioctx::PollParams;
use clap::{Parser, ValueEnum};
use examples::virtio_blk::bench::{AioctxRig, Measurement};
use examples::virtio_blk::workload::{Rw, Workload, WorkloadResult};
use examples::virtio_blk::GuestWait;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Polling {
    On,
    Off,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Wait {
    /// Sleep on the irqfd until the device interrupts.
    Irq,
    /// Spin on the used ring (interrupts suppressed).
    Poll,
}

/// virtio-blk on an aioctx IoThread, driven by a simulated guest.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Disk image to use (created sparse if missing; kept). Default: a fresh image in a temp dir,
    /// removed at exit.
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Disk size for a new image (suffixes K, M, G).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    size: u64,
    /// Workload: randread, randwrite or randrw. Default: all three.
    #[arg(long)]
    rw: Option<Rw>,
    /// Requests in flight. Default: 1 and 32.
    #[arg(long)]
    iodepth: Option<usize>,
    /// Request size (suffixes K, M).
    #[arg(long, default_value = "4K", value_parser = parse_size)]
    bs: u64,
    /// Seconds per row.
    #[arg(long, default_value_t = 0.25)]
    seconds: f64,
    /// The IoThread's busy-polling.
    #[arg(long, value_enum, default_value_t = Polling::Both)]
    polling: Polling,
    /// How the guest waits for completions.
    #[arg(long, value_enum, default_value_t = Wait::Irq)]
    guest_wait: Wait,
    /// With polling on: the share of recent polling phases (percent) that must find work for the
    /// IoThread to poll at every chance (`PollParams::min_hit_percent`; 0: always poll, QEMU's rule).
    #[arg(long, default_value_t = PollParams::IOTHREAD.min_hit_percent)]
    min_hit_percent: u64,
    /// With polling on: the longest the IoThread busy-polls before it sleeps, in nanoseconds
    /// (`PollParams::max_ns`, QEMU's `poll-max-ns`; default: the IoThread default, 65536; QEMU's
    /// IOThreads use 32768).
    #[arg(long, default_value_t = PollParams::IOTHREAD.max_ns)]
    poll_max_ns: u64,
    /// Rounds: every row runs this many times, polling on and off taking turns in alternating order
    /// (on first in even rounds, off first in odd ones), and a summary gives each row's median IOPS and
    /// p99 with polling on against off, and the p99 of all rounds' requests pooled.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Also write the table as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&s[..s.len() - 1], 10),
        Some(b'M') => (&s[..s.len() - 1], 20),
        Some(b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|e| format!("size {s:?}: {e}"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

struct Row {
    round: usize,
    rw: Rw,
    iodepth: usize,
    polling: bool,
    m: Measurement,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("device-model: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--seconds must be in (0, 3600]",
        ));
    }
    if args.iodepth.is_some_and(|d| !(1..=1024).contains(&d)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--iodepth must be 1 to 1024",
        ));
    }
    if !(1..=1000).contains(&args.rounds) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--rounds must be 1 to 1000",
        ));
    }
    let block_size = usize::try_from(args.bs).unwrap_or(usize::MAX);
    let workloads = match args.rw {
        Some(rw) => vec![rw],
        None => vec![Rw::RandWrite, Rw::RandRead, Rw::RandRw],
    };
    let depths = match args.iodepth {
        Some(d) => vec![d],
        None => vec![1, 32],
    };
    let pollings = match args.polling {
        Polling::On => vec![true],
        Polling::Off => vec![false],
        Polling::Both => vec![true, false],
    };
    let wait = match args.guest_wait {
        Wait::Irq => GuestWait::Interrupt,
        Wait::Poll => GuestWait::Poll,
    };

    // The temp dir (if any) lives until the end of main, after the rig is shut down.
    let tmp = match &args.disk {
        Some(_) => None,
        None => Some(tempfile::tempdir()?),
    };
    let disk = match (&args.disk, &tmp) {
        (Some(path), _) => path.clone(),
        (None, Some(dir)) => dir.path().join("disk.img"),
        (None, None) => unreachable!("a temp dir is made when no disk is given"),
    };
    let slots = depths.iter().copied().max().unwrap_or(1);
    let mut rig = AioctxRig::new(&disk, args.size, slots, block_size)?;
    let polling_on = PollParams {
        min_hit_percent: args.min_hit_percent,
        max_ns: args.poll_max_ns,
        ..PollParams::IOTHREAD
    };
    // The IoThread checks the parameters (ranges of --poll-max-ns, --min-hit-percent) before any row.
    rig.set_poll_params(polling_on)?;
    println!(
        "virtio-blk on an aioctx IoThread: disk {} ({} MiB), {} B requests, guest waits by {}, \
         {:.2} s per row, polling on: up to {} ns, min hit {}%",
        disk.display(),
        (rig.model.blocks() * block_size as u64) >> 20,
        block_size,
        if wait == GuestWait::Interrupt {
            "interrupt"
        } else {
            "polling the used ring"
        },
        args.seconds,
        args.poll_max_ns,
        args.min_hit_percent,
    );

    let mut rows = Vec::new();
    for round in 0..args.rounds {
        for &rw in &workloads {
            for &iodepth in &depths {
                // Alternate which side runs first, so that neither always pays for what the other
                // left behind (allocated blocks, a warm page cache, a CPU frequency).
                let order: Vec<bool> = if round % 2 == 0 {
                    pollings.clone()
                } else {
                    pollings.iter().rev().copied().collect()
                };
                for polling in order {
                    rig.set_poll_params(if polling {
                        polling_on
                    } else {
                        PollParams::default()
                    })?;
                    let workload = Workload {
                        rw,
                        iodepth,
                        duration: Duration::from_secs_f64(args.seconds),
                        max_ios: u64::MAX,
                        seed: 0x5eed
                            ^ ((iodepth as u64) << 8)
                            ^ u64::from(polling)
                            ^ ((round as u64) << 16),
                    };
                    let m = rig.run(&workload, wait)?;
                    rows.push(Row {
                        round,
                        rw,
                        iodepth,
                        polling,
                        m,
                    });
                }
            }
        }
    }
    let counters = rig.device().map(|d| {
        use std::sync::atomic::Ordering::Relaxed;
        (
            d.counters().rejected.load(Relaxed),
            d.counters().io_errors.load(Relaxed),
        )
    });
    rig.shutdown()?;

    print_table(&rows);
    if args.rounds > 1 && pollings.len() == 2 {
        print_summary(&rows, &workloads, &depths, args.rounds);
    }
    let verified: u64 = rows.iter().map(|r| r.m.result.verified_reads).sum();
    let reads: u64 = rows.iter().map(|r| r.m.result.reads).sum();
    let unknown = if verified == reads {
        String::new()
    } else {
        format!(
            " (the other {} read blocks of the existing image this run never wrote)",
            reads - verified
        )
    };
    println!(
        "{verified} of {reads} reads verified against what the guest wrote, or zeroes{unknown}; \
         every request completed with VIRTIO_BLK_S_OK."
    );
    if let Some((rejected, io_errors)) = counters {
        if rejected + io_errors > 0 {
            println!("device: {rejected} chains rejected, {io_errors} I/O errors");
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, json(&rows))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<10} {:>3} {:>7} {:>9} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10}",
        "workload",
        "qd",
        "polling",
        "IOPS",
        "p50 us",
        "p99 us",
        "kicks/rq",
        "irqs/rq",
        "efd wr/rq",
        "enters/rq",
        "hits/rq",
        "miss/rq",
        "poll us/rq"
    );
    for r in rows {
        let m = &r.m;
        let us = |p| m.result.percentile(p).as_nanos() as f64 / 1000.0;
        println!(
            "{:<10} {:>3} {:>7} {:>9.0} {:>8.1} {:>8.1} {:>9.3} {:>9.3} {:>10.3} {:>10.3} {:>9.3} {:>9.3} {:>10.2}",
            r.rw.to_string(),
            r.iodepth,
            if r.polling { "on" } else { "off" },
            m.result.iops(),
            us(50.0),
            us(99.0),
            m.per_request(m.result.kicks),
            m.per_request(m.interrupts),
            m.per_request(m.eventfd_writes()),
            m.per_request(m.uring_enters),
            m.per_request(m.poll_hits),
            m.per_request(m.poll_misses),
            m.per_request(m.poll_ns) / 1000.0,
        );
    }
}

/// The median of `values` (the upper one of an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Per workload and depth, polling on against off: the median IOPS and p99 over the rounds, and the p99
/// of every round's requests pooled.
fn print_summary(rows: &[Row], workloads: &[Rw], depths: &[usize], rounds: usize) {
    println!(
        "\npolling on against off, medians of {rounds} rounds (p99 pooled: of every round's requests \
         together)\n{:<10} {:>3} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>10} {:>10} {:>7}",
        "workload",
        "qd",
        "IOPS on",
        "IOPS off",
        "on/off",
        "p99 on",
        "p99 off",
        "on/off",
        "pooled on",
        "pooled off",
        "on/off"
    );
    for &rw in workloads {
        for &iodepth in depths {
            let measured = |polling: bool| {
                rows.iter()
                    .filter(move |r| r.rw == rw && r.iodepth == iodepth && r.polling == polling)
                    .map(|r| &r.m)
            };
            let median_of = |polling: bool, f: &dyn Fn(&Measurement) -> f64| {
                median(measured(polling).map(f).collect())
            };
            let pooled_p99 = |polling: bool| {
                let mut pooled = WorkloadResult::default();
                for m in measured(polling) {
                    pooled
                        .latencies_ns
                        .extend_from_slice(&m.result.latencies_ns);
                }
                pooled.latencies_ns.sort_unstable();
                pooled.percentile(99.0).as_nanos() as f64 / 1000.0
            };
            let iops = |m: &Measurement| m.result.iops();
            let p99 = |m: &Measurement| m.result.percentile(99.0).as_nanos() as f64 / 1000.0;
            let (iops_on, iops_off) = (median_of(true, &iops), median_of(false, &iops));
            let (p99_on, p99_off) = (median_of(true, &p99), median_of(false, &p99));
            let (pooled_on, pooled_off) = (pooled_p99(true), pooled_p99(false));
            println!(
                "{:<10} {:>3} {:>9.0} {:>9.0} {:>7.2} {:>9.1} {:>9.1} {:>7.2} {:>10.1} {:>10.1} {:>7.2}",
                rw.to_string(),
                iodepth,
                iops_on,
                iops_off,
                iops_on / iops_off.max(1e-9),
                p99_on,
                p99_off,
                p99_on / p99_off.max(1e-9),
                pooled_on,
                pooled_off,
                pooled_on / pooled_off.max(1e-9),
            );
        }
    }
}

fn json(rows: &[Row]) -> String {
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            let m = &r.m;
            serde_json::json!({
                "round": r.round,
                "workload": r.rw.to_string(),
                "iodepth": r.iodepth,
                "polling": r.polling,
                "ios": m.result.ios,
                "iops": m.result.iops(),
                "p50_ns": m.result.percentile(50.0).as_nanos() as u64,
                "p99_ns": m.result.percentile(99.0).as_nanos() as u64,
                "reads": m.result.reads,
                "verified_reads": m.result.verified_reads,
                "writes": m.result.writes,
                "kicks": m.result.kicks,
                "interrupts": m.interrupts,
                "eventfd_writes": m.eventfd_writes(),
                "uring_enters": m.uring_enters,
                "poll_hits": m.poll_hits,
                "poll_misses": m.poll_misses,
                "poll_ns": m.poll_ns,
            })
        })
        .collect();
    serde_json::to_string_pretty(&rows).unwrap_or_default()
}
