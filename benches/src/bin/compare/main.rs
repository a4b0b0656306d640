//! `cargo run --release -p benches --bin compare`: aioctx against tokio, compio, monoio, smol and
//! glommio, side by side, in one run.
//!
//! Fairness rules, printed with the results: every runtime runs one single-threaded executor
//! wherever aioctx runs one context (`runtimes.rs`); the same client, `futures::channel` channels
//! and payloads for all; each runtime's idiomatic best for each job (its own timers, its io_uring
//! file and socket APIs where it has them, its blocking pool where it does not). A scenario a
//! runtime cannot express shows `null` with the reason. Rounds take the runtimes in turn after a
//! warm-up; the table shows medians, the JSON file also the min-max spreads.
//!
//! A second table (`glib.rs`) compares two ways of running aioctx, to show what glib costs: sleeps
//! on a `MainLoop` against a bare context and against glib's own 1 ms timeouts, and an IoThread's
//! cross-thread round trip in poll mode against glib mode.

mod cpu;
mod device;
mod files;
mod glib;
mod harness;
mod mixed;
mod net;
mod report;
mod runtimes;
mod tasks;
mod wake;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use harness::{Config, Scenario};

/// Compare aioctx with tokio, compio, monoio, smol and glommio on the jobs device models and block
/// layers care about.
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
    /// Measure only these runtimes (repeatable; to profile one with perf or strace, or to compare
    /// two); the other columns show null.
    #[arg(long, value_enum)]
    only: Vec<harness::Side>,
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
        .chain(mixed::SCENARIOS)
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
        only: (!args.only.is_empty()).then_some(args.only),
    };
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 5 });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "aioctx vs tokio, compio, monoio, smol, glommio: {rounds} rounds per runtime after a \
         warm-up, taking turns; {cores} cores; {}",
        if args.quick {
            "--quick (short runs)"
        } else {
            "full runs"
        }
    );
    println!("every runtime single-threaded where aioctx runs one context (tokio current_thread,");
    println!("compio Runtime, monoio IoUringDriver, smol LocalExecutor + async-io, glommio");
    println!(
        "LocalExecutor); same client, channels (futures::channel) and payloads; files: io_uring"
    );
    println!(
        "files where the runtime has them, else FileExt::read_at/write_at on its blocking pool."
    );
    println!(
        "CPU rows: CPU time of the serving side (the process minus the client thread) per request."
    );
    println!("cell = value (speedup); speedup = peer/aioctx for times, aioctx/peer for rates:");
    println!("above 1 favours aioctx.\n");

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
