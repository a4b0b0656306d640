//! An NBD server on IOThreads: a file exported to real NBD clients (`qemu-io`, `qemu-img`, libnbd's
//! `nbdinfo` and `nbdcopy`, the kernel's `nbd-client`) with the fixed newstyle handshake, and what
//! qemu-nbd 10 offers beyond simple replies: structured replies, extended headers, the
//! `base:allocation` metadata context with `NBD_CMD_BLOCK_STATUS` (holes found with
//! `SEEK_DATA`/`SEEK_HOLE`, sent as `OFFSET_HOLE` chunks by `READ`), `CACHE`, `FAST_ZERO` and `DF`.
//! A client that negotiates nothing gets simple replies, as before.
//!
//! - [`proto`]: the wire format, pure parsing and encoding over byte slices (no I/O, no panics).
//! - `handshake`: option negotiation (`GO`, `INFO`, `LIST`, `ABORT`, `EXPORT_NAME`,
//!   `STRUCTURED_REPLY`, `EXTENDED_HEADERS`, `LIST_META_CONTEXT`, `SET_META_CONTEXT`, `STARTTLS`:
//!   see `tls`, and without TLS configured `ERR_POLICY`, as qemu-nbd; others `ERR_UNSUP`).
//! - `conn`: one connection's requests (compact or extended headers), served concurrently by tasks
//!   and answered out of order, within a budget (64 requests, 64 MiB of buffers) that stops the
//!   reader while it is spent.
//! - `commands`: one request run on the export; `framing`: its reply as the client negotiated (simple
//!   reply, structured or extended chunks).
//! - `replies`: the reply queue and its writer, which sends every queued reply in one socket write.
//! - `export`: the block operations on `aioctx::fs::File` (io_uring on the IOThread's ring), holes by
//!   `lseek`, `CACHE` by `posix_fadvise`; `block`: the data buffers, with room for reply headers.
//! - [`replay`]: the handshake driven from a client's bytes in memory (for fuzzing and property tests).
//! - [`Server`]: accepts on the calling thread (on its own context, or on an `aioctx::MainLoop` with
//!   [`Server::serve_on`]), spreads connections round-robin over IOThreads (numbered, or named with
//!   [`IoThreadSpec`]), stops gracefully through a [`ShutdownHandle`]; `monitor`: a QMP monitor
//!   for it ([`Server::monitor`]).

mod block;
mod commands;
mod conn;
mod export;
mod framing;
mod handshake;
mod monitor;
pub mod proto;
pub mod replay;
mod replies;
mod server;
pub mod tls;

pub use handshake::{Outcome as HandshakeOutcome, MAX_OPTIONS};
pub use server::{Activity, Config, IoThreadSpec, Listen, Server, ShutdownHandle};
pub use tls::TlsConfig;

/// Parses a size for the command line: `4096`, `64k`, `16M`, `1G`, `1T` (binary units, any case,
/// optionally `KiB`...). Zero and overflow are errors.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with an optional k/M/G/T unit"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}")),
    };
    number
        .checked_mul(1 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?}: size must be between 1 byte and 2^64-1"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size(" 2t "), Ok(2 << 40));
        for bad in ["", "0", "M", "12Q", "-1", "99999999999T", "1.5G"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}
