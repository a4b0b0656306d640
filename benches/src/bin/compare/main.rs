//! `cargo run --release -p benches --bin compare`: aioctx against tokio, side by side, in one run.
//!
//! Fairness rules, printed with the results: tokio's current-thread runtime wherever aioctx runs
//! one context; the same client, `futures::channel` channels and payloads on both sides; tokio's
//! idiomatic best for each job (`spawn_blocking` + positional `FileExt` I/O for files). Rounds
//! alternate the two sides after a warm-up; the table shows medians and min-max spreads.
//!
//! A second table (`glib.rs`) compares two ways of running aioctx, to show what glib costs: sleeps
//! on a `MainLoop` against a bare context and against glib's own 1 ms timeouts, and an IoThread's
//! cross-thread round trip in poll mode against glib mode.

mod device;
mod files;
mod glib;
mod harness;
mod net;
mod report;
mod tasks;
mod wake;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use harness::{Config, Scenario};

/// Compare aioctx with tokio on the jobs device models and block layers care about.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Run every scenario briefly, one round (proves the binary works; numbers mean little).
    #[arg(long)]
    quick: bool,
    /// Run only the scenarios whose name contains this text (repeatable).
    #[arg(long)]
    filter: Vec<String>,
    /// Measured rounds per scenario and side (after one warm-up round each).
    #[arg(long)]
    rounds: Option<usize>,
    /// Measure one side only (to profile it with perf or strace); the other column shows "-".
    #[arg(long, value_enum)]
    only: Option<harness::Side>,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

fn scenarios() -> impl Iterator<Item = &'static Scenario> {
    tasks::SCENARIOS
        .iter()
        .chain(wake::SCENARIOS)
        .chain(net::SCENARIOS)
        .chain(files::SCENARIOS)
        .chain(device::SCENARIOS)
        .chain(glib::SCENARIOS)
}

/// Lets the idle_fds scenario hold 20,000 descriptors.
fn raise_fd_limit() -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE; without it, settle for the hard limit.
    let wanted = limit.rlim_max.max(65_536);
    for hard in [wanted, limit.rlim_max] {
        let raised = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: `raised` is a valid rlimit; the kernel rejects values this process may not set.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = raise_fd_limit() {
        eprintln!("warning: could not raise RLIMIT_NOFILE: {e}");
    }
    let scratch = std::env::temp_dir().join(format!("aioctx-compare-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        eprintln!("cannot create {}: {e}", scratch.display());
        return ExitCode::FAILURE;
    }
    let config = Config {
        quick: args.quick,
        scratch: scratch.clone(),
        only: args.only,
    };
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 5 });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "aioctx vs tokio: {rounds} rounds per side after a warm-up, alternating; {cores} cores; {}",
        if args.quick {
            "--quick (short runs)"
        } else {
            "full runs"
        }
    );
    println!("tokio: current_thread runtime where aioctx runs one context; same client, channels");
    println!("(futures::channel) and payloads; files: spawn_blocking + FileExt::read_at/write_at.");
    println!("speedup = tokio/aioctx for times, aioctx/tokio for rates: above 1 favours aioctx.\n");

    let mut rows = Vec::new();
    let mut failed = false;
    for scenario in scenarios() {
        if !args.filter.is_empty()
            && !args
                .filter
                .iter()
                .any(|f| scenario.name.contains(f.as_str()))
        {
            continue;
        }
        eprintln!("running {} ...", scenario.name);
        match harness::measure(scenario, &config, rounds) {
            Ok(r) => rows.extend(r),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                println!("{}: not run: {e}", scenario.name);
            }
            Err(e) => {
                println!("{}: FAILED: {e}", scenario.name);
                failed = true;
            }
        }
    }
    report::print_table(&rows);
    report::print_targets(&rows);
    if let Some(path) = &args.json {
        if let Err(e) = report::write_json(&rows, path) {
            eprintln!("cannot write {}: {e}", path.display());
            failed = true;
        }
    }
    // Best effort: a leftover scratch file only costs disk space.
    let _ = std::fs::remove_dir_all(&scratch);
    if failed || rows.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
