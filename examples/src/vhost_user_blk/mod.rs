//! A vhost-user-blk backend: the virtio-blk device of [`virtio_blk`](crate::virtio_blk) served to a real
//! virtual machine monitor (QEMU's `-device vhost-user-blk-pci`) over a Unix socket, its virtqueues on
//! aioctx IoThreads.
//!
//! - [`memory`]: the front end's memory table mapped into this process (vm-memory), every region
//!   checked, and front-end addresses translated to guest addresses.
//! - [`config`]: the virtio and vhost-user features offered and the configuration space.
//! - [`backend`]: what each vhost-user message does; rings run as
//!   [`VirtioBlkDevice`](crate::virtio_blk::VirtioBlkDevice)s on IoThreads, the same device the
//!   in-process demo drives, so the request parsing and block I/O are that device's.
//! - [`framing`]: a whole message queued (and room for its reply) before the `vhost` crate reads
//!   one, so that a slow or hostile front end cannot make it spin the main thread.
//! - [`daemon`]: the image, the IoThreads, the listening socket and the connection, whose messages
//!   are read by rust-vmm's `vhost` crate when the socket is readable on the main thread's context.
//!
//! ```no_run
//! use examples::vhost_user_blk::{Daemon, Options};
//!
//! let mut options = Options::new("disk.img", "/tmp/vhost-blk.sock");
//! options.num_queues = 4;
//! let daemon = Daemon::bind(&options)?;
//! let ctx = aioctx::AioContext::new()?;
//! ctx.block_on(daemon.serve_until(std::future::pending()))?;
//! daemon.shutdown()?;
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod backend;
pub mod config;
pub mod daemon;
pub mod framing;
pub mod memory;

pub use backend::{BackendConfig, BlkBackend};
pub use daemon::{Daemon, Options};
pub use memory::{GuestMemoryTable, RegionSpec};
