//! An NBD server on IOThreads: a file exported to real NBD clients (`qemu-io`, `qemu-img`, the kernel's
//! `nbd-client`) with the fixed newstyle handshake and simple replies.
//!
//! - [`proto`]: the wire format, pure parsing and encoding over byte slices (no I/O, no panics).
//! - `handshake`: option negotiation (`GO`, `INFO`, `LIST`, `ABORT`, `EXPORT_NAME`; others `ERR_UNSUP`).
//! - `conn`: one connection's requests, served concurrently by tasks and answered out of order.
//! - `export`: the block operations on `aioctx::fs::File` (io_uring on the IOThread's ring).
//! - [`replay`]: the handshake driven from a client's bytes in memory (for fuzzing and property tests).
//! - [`Server`]: accepts on the calling thread, spreads connections round-robin over IOThreads, stops
//!   gracefully through a [`ShutdownHandle`].

mod conn;
mod export;
mod handshake;
pub mod proto;
pub mod replay;
mod replies;
mod server;

pub use handshake::{Outcome as HandshakeOutcome, MAX_OPTIONS};
pub use server::{Activity, Config, Listen, Server, ShutdownHandle};
