//! A vhost-user-blk daemon on aioctx IOThreads: serves IMAGE to a QEMU front end on a Unix socket.
//! SIGINT or SIGTERM stop it gracefully: rings stopped after their requests in flight, the image
//! flushed, exit status 0.
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
    #[arg(long)]
    iothreads: Option<usize>,
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
        read_only: args.read_only,
        direct: args.direct,
        poll_max_ns: args.poll_max_ns,
        size: args.size,
        backend: args.backend,
        ..Options::new("", "")
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-blk: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> std::io::Result<()> {
    let daemon = Daemon::bind(options)?;
    let ctx = aioctx::AioContext::builder()
        .backend(options.backend)
        .build()?;
    ctx.block_on(async {
        let mut term = aioctx::signal::signal(libc::SIGTERM)?;
        let mut int = aioctx::signal::signal(libc::SIGINT)?;
        println!("vhost-user-blk: listening on {}", daemon.socket().display());
        let stop = async {
            futures::future::select(Box::pin(term.recv()), Box::pin(int.recv())).await;
        };
        daemon.serve_until(stop).await
    })?;
    eprintln!(
        "vhost-user-blk: stopping after {} front end(s)",
        daemon.front_ends()
    );
    daemon.shutdown()
}
