//! An NBD server on aioctx IOThreads: exports FILE (or a new temporary file of `--size`) to NBD clients
//! such as `qemu-io`, `qemu-img`, `nbdinfo`, `nbdcopy` and `nbd-client`, and prints its URI when ready.
//! Clients that negotiate structured replies or extended headers see the file's holes (`nbdinfo
//! --map`, `qemu-img map`) and copy it sparse. SIGINT or SIGTERM stop it gracefully: no new
//! connections, in-flight requests answered, the file flushed, exit status 0.
//!
//! The accept loop runs on an `aioctx::MainLoop` (glib and QEMU's two main-thread contexts in one
//! wait). `--monitor PATH` adds a QMP monitor (`examples::qmp`; `qemu.qmp`'s clients and
//! `socat - UNIX:PATH` speak to it): `qom-set` of the named IOThreads' `poll-max-ns` while they
//! serve, `query-iothreads`, `query-block-exports`, and `quit` (a graceful stop, exit status 0).
//!
//! ```text
//! cargo run --release -p examples --example nbd-server -- disk.img --socket /tmp/nbd.sock
//! qemu-io -f raw -c 'write -P 0xa5 0 1M' -c 'read -P 0xa5 0 1M' 'nbd+unix:///disk?socket=/tmp/nbd.sock'
//! nbdinfo --map 'nbd+unix:///disk?socket=/tmp/nbd.sock'
//!
//! cargo run --release -p examples --example nbd-server -- disk.img --socket /tmp/nbd.sock \
//!     --iothread io0 --iothread io1,poll-max-ns=0 --monitor /tmp/qmp.sock
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use examples::nbd::{Config, IoThreadSpec, Listen, Server, TlsConfig};

/// Serves a file as an NBD export from aioctx IOThreads.
#[derive(Parser, Debug)]
#[command(name = "nbd-server", version)]
struct Args {
    /// The file or block device to export (default: a new temporary file of --size bytes).
    file: Option<PathBuf>,
    /// Size of the temporary file, e.g. 64M, 1G (only without FILE).
    #[arg(long, default_value = "64M", value_parser = examples::nbd::parse_size)]
    size: u64,
    /// The export's name.
    #[arg(long, default_value = "disk")]
    export_name: String,
    /// TCP address to listen on.
    #[arg(long, default_value = "127.0.0.1:10809", conflicts_with = "socket")]
    listen: SocketAddr,
    /// Unix socket path to listen on instead of TCP.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// IOThreads serving connections (default: one per core), named nbd0, nbd1...
    #[arg(long, conflicts_with = "iothread")]
    iothreads: Option<usize>,
    /// A named IOThread serving connections, as QEMU's `-object iothread,id=ID`: ID[,poll-max-ns=NS].
    /// Repeat for more; connections go round-robin over them.
    #[arg(long, value_name = "ID[,poll-max-ns=NS]")]
    iothread: Vec<IoThreadSpec>,
    /// Serve a QMP monitor on this Unix socket path.
    #[arg(long, value_name = "PATH")]
    monitor: Option<PathBuf>,
    /// Refuse writes.
    #[arg(long)]
    read_only: bool,
    /// Open the file with O_DIRECT (bypass the page cache).
    #[arg(long)]
    direct: bool,
    /// The IOThreads' busy-polling budget in nanoseconds (0 disables polling).
    #[arg(long)]
    poll_max_ns: Option<u64>,
    /// Connections served at once; more are closed at once (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_connections: usize,
    /// Seconds a client may take for the handshake before it is dropped (0: no limit).
    #[arg(long, default_value_t = 10.0)]
    handshake_limit: f64,
    /// Require TLS with the x509 credentials in DIR (ca-cert.pem, server-cert.pem, server-key.pem: the
    /// layout of QEMU's tls-creds-x509, so one directory serves qemu-nbd and nbd-server).
    #[arg(long, value_name = "DIR")]
    tls_creds: Option<PathBuf>,
    /// With --tls-creds: require a client certificate signed by ca-cert.pem (yes, as qemu-nbd's
    /// verify-peer) or accept any client (no).
    #[arg(long, default_value = "yes", value_parser = ["yes", "no"], requires = "tls_creds")]
    tls_verify_peer: String,
    /// Seconds a closing connection waits for its in-flight requests before aborting them.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let defaults = Config::default();
    let config = Config {
        file: args.file,
        size: args.size,
        export_name: args.export_name,
        listen: match args.socket {
            Some(path) => Listen::Unix(path),
            None => Listen::Tcp(args.listen),
        },
        iothreads: args.iothreads.unwrap_or(defaults.iothreads),
        named_iothreads: args.iothread,
        read_only: args.read_only,
        direct: args.direct,
        poll_max_ns: args.poll_max_ns,
        max_connections: (args.max_connections > 0).then_some(args.max_connections),
        handshake_limit: match Duration::try_from_secs_f64(args.handshake_limit) {
            Ok(limit) if limit.is_zero() => None,
            Ok(limit) => Some(limit),
            Err(e) => {
                eprintln!("nbd-server: --handshake-limit: {e}");
                return ExitCode::FAILURE;
            }
        },
        drain_timeout: match Duration::try_from_secs_f64(args.drain_timeout) {
            Ok(timeout) => timeout,
            Err(e) => {
                eprintln!("nbd-server: --drain-timeout: {e}");
                return ExitCode::FAILURE;
            }
        },
        tls: args.tls_creds.map(|creds_dir| TlsConfig {
            creds_dir,
            verify_peer: args.tls_verify_peer == "yes",
        }),
    };
    // The main loop first: it owns glib's default context and becomes the thread's context.
    let ml = match aioctx::MainLoop::builder().handle_signals(false).build() {
        Ok(ml) => ml,
        Err(e) => {
            eprintln!("nbd-server: main loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("nbd-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server.shutdown_handle().on_termination_signals() {
        eprintln!("nbd-server: installing signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let monitor = match args
        .monitor
        .map(|path| server.monitor(&ml, path))
        .transpose()
    {
        Ok(monitor) => monitor,
        Err(e) => {
            eprintln!("nbd-server: --monitor: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", server.uri());
    let served = server.serve_on(&ml);
    // After the server: replies and events already produced (quit's, SHUTDOWN) reach their clients.
    if let Some(monitor) = monitor {
        monitor.shutdown();
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nbd-server: {e}");
            ExitCode::FAILURE
        }
    }
}
