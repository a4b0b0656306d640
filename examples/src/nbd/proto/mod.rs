//! The NBD wire format: pure parsers and encoders over byte slices, with no I/O. Every parser checks the
//! length it is given and returns a [`ProtoError`] on any input it cannot accept, never panicking, so it
//! can be fuzzed on arbitrary bytes. All integers on the wire are big-endian.
//!
//! - this module: constants, the fixed newstyle handshake (greeting, client flags, option headers,
//!   `INFO`/`GO`, `LIST`, `EXPORT_NAME`), simple replies and the errno mapping;
//! - [`meta`]: the data of `NBD_OPT_LIST_META_CONTEXT`/`SET_META_CONTEXT` and the `base:` namespace;
//! - request headers (compact and extended), what was negotiated, and which requests an export
//!   accepts (`request.rs`, re-exported here);
//! - [`chunks`]: structured and extended reply chunks (`OFFSET_DATA`, `OFFSET_HOLE`, `BLOCK_STATUS`,
//!   `BLOCK_STATUS_EXT`, `ERROR`, `ERROR_OFFSET`, `NONE`);
//! - [`extents`]: the allocation map of a range (from `SEEK_DATA`/`SEEK_HOLE` answers) as block status
//!   extents and as the chunks of a sparse `READ`.

use std::fmt;
use std::io;

pub mod chunks;
pub mod extents;
pub mod meta;
mod request;

pub use request::{
    check_request, parse_extended_request, parse_request, ExportLimits, Negotiated, Refused,
    ReplyMode, Request,
};

/// First word of the server's greeting (`NBDMAGIC`).
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// Second word of the greeting, and the magic in front of every client option (`IHAVEOPT`).
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic in front of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic in front of every compact transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic in front of every extended transmission request (after `NBD_OPT_EXTENDED_HEADERS`).
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// The magic in front of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags the server sends: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flags the server sends: the client may ask to skip the 124 zero bytes of `EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no 124 zero bytes after the `EXPORT_NAME` answer.
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Option numbers (`NBD_OPT_*`).
pub mod opt {
    /// Select an export, old style: no reply header, no error reporting.
    pub const EXPORT_NAME: u32 = 1;
    /// End the handshake without transmission.
    pub const ABORT: u32 = 2;
    /// List the exports.
    pub const LIST: u32 = 3;
    /// Describe an export.
    pub const INFO: u32 = 6;
    /// Describe an export and enter transmission with it.
    pub const GO: u32 = 7;
    /// Upgrade the connection to TLS; the rest of the handshake and transmission run over it.
    pub const STARTTLS: u32 = 5;
    /// Use structured reply chunks in transmission.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List the metadata contexts matching some queries.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select the metadata contexts `NBD_CMD_BLOCK_STATUS` reports.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Use 32-byte extended request and reply headers (implies structured replies).
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types (`NBD_REP_*`).
pub mod rep {
    /// The option is done.
    pub const ACK: u32 = 1;
    /// One export of a `LIST`.
    pub const SERVER: u32 = 2;
    /// One piece of information of an `INFO`/`GO`.
    pub const INFO: u32 = 3;
    /// One metadata context of a `LIST_META_CONTEXT`/`SET_META_CONTEXT`: u32 id, name.
    pub const META_CONTEXT: u32 = 4;
    /// The option is not supported.
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    /// The server's configuration forbids the option (`STARTTLS` on a server without TLS).
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    /// The option data is malformed.
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    /// TLS is required before this option (`NBD_REP_ERR_TLS_REQD`).
    pub const ERR_TLS_REQD: u32 = (1 << 31) + 5;
    /// No export of that name.
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// Extended headers are negotiated: structured replies cannot be asked for any more.
    pub const ERR_EXT_HEADER_REQD: u32 = (1 << 31) + 10;
}

/// Information types of an `NBD_REP_INFO` (`NBD_INFO_*`).
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command types and command flags (`NBD_CMD_*`, `NBD_CMD_FLAG_*`).
pub mod cmd {
    /// Read `length` bytes at `offset`.
    pub const READ: u16 = 0;
    /// Write the `length` bytes of payload at `offset`.
    pub const WRITE: u16 = 1;
    /// Disconnect once every in-flight request is answered.
    pub const DISC: u16 = 2;
    /// Make every completed write stable.
    pub const FLUSH: u16 = 3;
    /// The range's contents may be discarded.
    pub const TRIM: u16 = 4;
    /// The client will access the range soon: the server may prefetch it.
    pub const CACHE: u16 = 5;
    /// Make the range read as zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Report the range's status in the selected metadata contexts.
    pub const BLOCK_STATUS: u16 = 7;
    /// Force unit access: stable before the reply.
    pub const FLAG_FUA: u16 = 1 << 0;
    /// `WRITE_ZEROES` must not punch a hole.
    pub const FLAG_NO_HOLE: u16 = 1 << 1;
    /// Don't fragment: a structured `READ` is answered with one content chunk.
    pub const FLAG_DF: u16 = 1 << 2;
    /// `BLOCK_STATUS` answers with exactly one extent, no longer than the request.
    pub const FLAG_REQ_ONE: u16 = 1 << 3;
    /// `WRITE_ZEROES` fails with `ENOTSUP` unless it is faster than writing zeroes.
    pub const FLAG_FAST_ZERO: u16 = 1 << 4;
    /// Extended headers: `length` is the length of a payload that follows the header.
    pub const FLAG_PAYLOAD_LEN: u16 = 1 << 5;
}

/// Transmission flags (`NBD_FLAG_*` of the export).
pub mod tflags {
    /// Always set: the other flags are meaningful.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Writes fail with `EPERM`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_CMD_TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_CMD_FLAG_DF` is supported (only once structured replies are negotiated).
    pub const SEND_DF: u16 = 1 << 7;
    /// Several connections to the export see each other's flushed writes.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_CMD_CACHE` is supported.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `NBD_CMD_FLAG_FAST_ZERO` is supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// The errno values a reply may carry.
pub mod errno {
    /// Operation not permitted (a write to a read-only export).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid request (out of range, misaligned, too long, unknown command or flag).
    pub const EINVAL: u32 = 22;
    /// No space left.
    pub const ENOSPC: u32 = 28;
    /// Value too large.
    pub const EOVERFLOW: u32 = 75;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
    /// The server is shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// Bytes of a client option header: `IHAVEOPT`, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of a compact transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of an extended transmission request header.
pub const EXTENDED_REQUEST_LEN: usize = 32;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// The longest option data accepted; longer options close the connection (names are at most 4096 bytes).
pub const MAX_OPTION_DATA: u32 = 16 * 1024;
/// The longest `READ`, `WRITE` or `CACHE` served (the maximum block size advertised), and the longest
/// payload of any request.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// The longest string the protocol allows (names, queries, error messages).
pub const MAX_STRING: usize = 4096;

/// Why bytes from a client could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// Fewer bytes than the structure needs.
    Short {
        /// What was parsed.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// A magic number did not match.
    BadMagic {
        /// What was parsed.
        what: &'static str,
        /// The magic found.
        found: u64,
    },
    /// The client set flags this server does not know.
    UnknownClientFlags(u32),
    /// The structure's fields contradict each other.
    Malformed(&'static str),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Short { what, needed, got } => {
                write!(f, "{what}: needs {needed} bytes, got {got}")
            }
            ProtoError::BadMagic { what, found } => write!(f, "{what}: bad magic {found:#x}"),
            ProtoError::UnknownClientFlags(flags) => write!(f, "unknown client flags {flags:#x}"),
            ProtoError::Malformed(what) => write!(f, "malformed {what}"),
        }
    }
}

impl std::error::Error for ProtoError {}

impl From<ProtoError> for io::Error {
    fn from(e: ProtoError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Reads big-endian integers off the front of a slice, failing (never panicking) when it runs out.
struct Cursor<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], what: &'static str, needed: usize) -> Result<Self, ProtoError> {
        if buf.len() < needed {
            return Err(ProtoError::Short {
                what,
                needed,
                got: buf.len(),
            });
        }
        Ok(Cursor { rest: buf, what })
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        // `new` checked the fixed part, so running out here means a variable-length field before this
        // one (a name) took the room of the fields after it: the lengths disagree, the input is not
        // short. (Found by the nbd_handshake_options fuzz target: a 6-byte INFO request with a 1-byte
        // name was reported as "needs 6 bytes, got 5".)
        let Some((head, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(ProtoError::Malformed(self.what));
        };
        self.rest = rest;
        Ok(*head)
    }

    fn u16(&mut self) -> Result<u16, ProtoError> {
        self.take().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, ProtoError> {
        self.take().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, ProtoError> {
        self.take().map(u64::from_be_bytes)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.rest.len() < n {
            return Err(ProtoError::Malformed(self.what));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
}

/// What the client's flags word says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFlags {
    /// The client speaks fixed newstyle (error replies to options are allowed).
    pub fixed_newstyle: bool,
    /// No zero padding after the `EXPORT_NAME` answer.
    pub no_zeroes: bool,
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut out = [0; 18];
    out[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// Parses the client's 4-byte flags word; unknown flags are an error (the server must close).
pub fn parse_client_flags(buf: &[u8]) -> Result<ClientFlags, ProtoError> {
    let flags = Cursor::new(buf, "client flags", 4)?.u32()?;
    if flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(ProtoError::UnknownClientFlags(flags));
    }
    Ok(ClientFlags {
        fixed_newstyle: flags & CLIENT_FIXED_NEWSTYLE != 0,
        no_zeroes: flags & CLIENT_NO_ZEROES != 0,
    })
}

/// A client option header; `length` bytes of option data follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// The `NBD_OPT_*` number.
    pub option: u32,
    /// Bytes of option data.
    pub length: u32,
}

/// Parses a 16-byte option header, checking the `IHAVEOPT` magic.
pub fn parse_option_header(buf: &[u8]) -> Result<OptionHeader, ProtoError> {
    let mut c = Cursor::new(buf, "option header", OPTION_HEADER_LEN)?;
    let magic = c.u64()?;
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic {
            what: "option header",
            found: magic,
        });
    }
    Ok(OptionHeader {
        option: c.u32()?,
        length: c.u32()?,
    })
}

/// The data of an `NBD_OPT_INFO` or `NBD_OPT_GO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// The export name (empty: the default export).
    pub name: &'a [u8],
    /// The `NBD_INFO_*` types the client asks for.
    pub info_types: Vec<u16>,
}

/// Parses `INFO`/`GO` option data: u32 name length, name, u16 count, count u16 info types, and nothing
/// more.
pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest<'_>, ProtoError> {
    let mut c = Cursor::new(data, "INFO/GO option data", 6)?;
    let name_len = usize::try_from(c.u32()?).map_err(|_| ProtoError::Malformed("name length"))?;
    let name = c.bytes(name_len)?;
    let count = usize::from(c.u16()?);
    if c.rest.len() != count * 2 {
        return Err(ProtoError::Malformed("INFO/GO option data"));
    }
    let info_types = c
        .rest
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    Ok(InfoRequest { name, info_types })
}

/// Appends an option reply: magic, option, reply type, length, data.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    // Data is built by this server and short (at most a name plus a few fields).
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
}

/// `NBD_INFO_EXPORT`: type, size, transmission flags.
pub fn info_export(size: u64, flags: u16) -> [u8; 12] {
    let mut out = [0; 12];
    out[..2].copy_from_slice(&info::EXPORT.to_be_bytes());
    out[2..10].copy_from_slice(&size.to_be_bytes());
    out[10..].copy_from_slice(&flags.to_be_bytes());
    out
}

/// `NBD_INFO_BLOCK_SIZE`: type, minimum, preferred, maximum.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> [u8; 14] {
    let mut out = [0; 14];
    out[..2].copy_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    out[2..6].copy_from_slice(&min.to_be_bytes());
    out[6..10].copy_from_slice(&preferred.to_be_bytes());
    out[10..].copy_from_slice(&max.to_be_bytes());
    out
}

/// The data of one `NBD_REP_SERVER` (for `LIST`): name length, name.
pub fn list_entry(name: &[u8]) -> Vec<u8> {
    let len = u32::try_from(name.len()).unwrap_or(u32::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(name);
    out
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes unless the client
/// asked for none.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.resize(out.len() + 124, 0);
    }
    out
}

/// A simple reply header: magic, error, cookie (the data of a successful `READ` follows it).
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0; SIMPLE_REPLY_LEN];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// The NBD error for an I/O error: the protocol's own errno values pass through, related ones are
/// folded into them, and everything else is `EIO`.
pub fn errno_for(e: &io::Error) -> u32 {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EROFS | libc::EACCES) => errno::EPERM,
        Some(libc::ENOMEM) => errno::ENOMEM,
        Some(libc::EINVAL) => errno::EINVAL,
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => errno::ENOSPC,
        Some(libc::EOVERFLOW) => errno::EOVERFLOW,
        Some(libc::EOPNOTSUPP) => errno::ENOTSUP,
        Some(libc::ESHUTDOWN) => errno::ESHUTDOWN,
        _ if e.kind() == io::ErrorKind::InvalidInput => errno::EINVAL,
        _ => errno::EIO,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_transmission;
