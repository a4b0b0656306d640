//! A vhost-user-blk daemon on aioctx IOThreads: serves IMAGE to a QEMU front end on a Unix socket.
//! SIGINT or SIGTERM stop it gracefully: rings stopped after their requests in flight, the image
//! flushed, exit status 0. The accept loop and the front end's messages run on an
//! `aioctx::MainLoop`; `--monitor PATH` adds a QMP monitor (`examples::qmp`) for the IoThreads
//! (named with `--iothread ID[,poll-max-ns=NS]`) and the export, whose `quit` stops it the same way.
//!
//! ```text
//! cargo run --release -p examples --example vhost-user-blk -- disk.img --socket /tmp/vhost-blk.sock \
//!     --num-queues 4 --iothreads 2
//! qemu-system-x86_64 -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
//!     -chardev socket,id=blk,path=/tmp/vhost-blk.sock \
//!     -device vhost-user-blk-pci,chardev=blk,num-queues=4 ...
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use examples::vhost_user_blk::{Daemon, Options};

/// Serves a raw image to a vhost-user-blk front end from aioctx IOThreads.
#[derive(Parser, Debug)]
#[command(name = "vhost-user-blk", version)]
struct Args {
    /// The raw image or block device to serve.
    image: PathBuf,
    /// The Unix socket to listen on.
    #[arg(long)]
    socket: PathBuf,
    /// Virtqueues offered to the front end.
    #[arg(long, default_value_t = 1)]
    num_queues: u16,
    /// IOThreads serving the queues (default: one per core, at most --num-queues).
    #[arg(long, conflicts_with = "iothread")]
    iothreads: Option<usize>,
    /// A named IOThread serving queues, as QEMU's `-object iothread,id=ID`: ID[,poll-max-ns=NS].
    /// Repeat for more.
    #[arg(long, value_name = "ID[,poll-max-ns=NS]")]
    iothread: Vec<examples::nbd::IoThreadSpec>,
    /// Serve a QMP monitor on this Unix socket path.
    #[arg(long, value_name = "PATH")]
    monitor: Option<PathBuf>,
    /// Offer a read-only disk (and open the image read-only).
    #[arg(long)]
    read_only: bool,
    /// Open the image with O_DIRECT (bypass the page cache).
    #[arg(long)]
    direct: bool,
    /// The IOThreads' busy-polling budget in nanoseconds (0 disables polling).
    #[arg(long)]
    poll_max_ns: Option<u64>,
    /// The event loop backend: io_uring, epoll, poll or auto.
    #[arg(long, default_value = "auto")]
    backend: aioctx::Backend,
    /// Create the image with this size if it does not exist, or grow it to it (e.g. 1G).
    #[arg(long, value_parser = examples::nbd::parse_size)]
    size: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = Options {
        image: args.image,
        socket: args.socket,
        num_queues: args.num_queues,
        iothreads: args.iothreads,
        named_iothreads: args.iothread,
        read_only: args.read_only,
        direct: args.direct,
        poll_max_ns: args.poll_max_ns,
        size: args.size,
        backend: args.backend,
        ..Options::new("", "")
    };
    match run(&options, args.monitor.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-blk: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options, monitor: Option<&std::path::Path>) -> std::io::Result<()> {
    // The main loop first: it owns glib's default context and becomes the thread's context.
    let ml = aioctx::MainLoop::builder()
        .backend(options.backend)
        .handle_signals(false)
        .build()?;
    let daemon = Daemon::bind(options)?;
    let (quit, quitted) = futures::channel::oneshot::channel::<()>();
    let quit = std::sync::Mutex::new(Some(quit));
    let monitor = monitor
        .map(|path| {
            daemon.monitor(&ml, path, move || {
                let quit = quit.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(quit) = quit {
                    let _ = quit.send(());
                }
            })
        })
        .transpose()?;
    let served = ml.block_on(async {
        let mut term = aioctx::signal::signal(libc::SIGTERM)?;
        let mut int = aioctx::signal::signal(libc::SIGINT)?;
        println!("vhost-user-blk: listening on {}", daemon.socket().display());
        // Without a monitor the quit sender is gone: a cancelled channel is not a quit.
        let quitted = async {
            if quitted.await.is_err() {
                futures::future::pending::<()>().await;
            }
        };
        let stop = async {
            let signals = futures::future::select(Box::pin(term.recv()), Box::pin(int.recv()));
            futures::future::select(signals, Box::pin(quitted)).await;
        };
        daemon.serve_until(stop).await
    });
    // Replies and events already produced (quit's, SHUTDOWN) reach their clients.
    if let Some(monitor) = monitor {
        monitor.shutdown();
    }
    served?;
    eprintln!(
        "vhost-user-blk: stopping after {} front end(s)",
        daemon.front_ends()
    );
    daemon.shutdown()
}
