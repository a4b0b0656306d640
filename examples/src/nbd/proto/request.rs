//! Transmission requests: the compact (28-byte) and extended (32-byte) headers, what the handshake
//! negotiated, and which requests an export accepts.

use super::{
    cmd, errno, Cursor, ProtoError, EXTENDED_REQUEST_LEN, EXTENDED_REQUEST_MAGIC, MAX_PAYLOAD,
    REQUEST_LEN, REQUEST_MAGIC,
};

/// A transmission request header, compact or extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*` bits.
    pub flags: u16,
    /// The `NBD_CMD_*` type (unknown types are answered with `EINVAL` by [`check_request`]).
    pub command: u16,
    /// Chosen by the client; echoed in the reply.
    pub cookie: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Byte count: the payload length for `WRITE` (and, with extended headers, for any request with
    /// `NBD_CMD_FLAG_PAYLOAD_LEN`), else the length of the range the request acts on. Compact headers
    /// carry 32 bits, extended ones 64.
    pub length: u64,
}

impl Request {
    /// How many bytes of payload follow the header on the wire: `length` for `WRITE`, and with extended
    /// headers for any request flagged `NBD_CMD_FLAG_PAYLOAD_LEN`; else none. (A compact request's flag
    /// brings no payload: it is an unknown flag there, refused by [`check_request`].)
    pub fn payload_len(&self, extended: bool) -> u64 {
        let flagged = extended && self.flags & cmd::FLAG_PAYLOAD_LEN != 0;
        if self.command == cmd::WRITE || flagged {
            self.length
        } else {
            0
        }
    }
}

/// Parses a 28-byte compact request header, checking the request magic (a bad magic must close the
/// connection: the stream cannot be resynchronised).
pub fn parse_request(buf: &[u8]) -> Result<Request, ProtoError> {
    let mut c = Cursor::new(buf, "request", REQUEST_LEN)?;
    let magic = c.u32()?;
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "request",
            found: magic.into(),
        });
    }
    Ok(Request {
        flags: c.u16()?,
        command: c.u16()?,
        cookie: c.u64()?,
        offset: c.u64()?,
        length: c.u32()?.into(),
    })
}

/// Parses a 32-byte extended request header (magic `0x21e41c71`, 64-bit length), the only kind a
/// client may send once extended headers are negotiated.
pub fn parse_extended_request(buf: &[u8]) -> Result<Request, ProtoError> {
    let what = "extended request";
    let mut c = Cursor::new(buf, what, EXTENDED_REQUEST_LEN)?;
    let magic = c.u32()?;
    if magic != EXTENDED_REQUEST_MAGIC {
        return Err(ProtoError::BadMagic {
            what,
            found: magic.into(),
        });
    }
    Ok(Request {
        flags: c.u16()?,
        command: c.u16()?,
        cookie: c.u64()?,
        offset: c.u64()?,
        length: c.u64()?,
    })
}

/// How replies are framed in transmission, from what the client negotiated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReplyMode {
    /// Nothing negotiated: compact requests, simple replies.
    #[default]
    Simple,
    /// `NBD_OPT_STRUCTURED_REPLY`: compact requests; `READ`, `BLOCK_STATUS` and errors answered with
    /// structured chunks, other successes with simple replies.
    Structured,
    /// `NBD_OPT_EXTENDED_HEADERS`: extended requests, and every reply an extended chunk.
    Extended,
}

/// What a client negotiated in the handshake that shapes transmission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Negotiated {
    /// The reply framing.
    pub mode: ReplyMode,
    /// `base:allocation` was selected by the last `NBD_OPT_SET_META_CONTEXT`: `BLOCK_STATUS` is allowed.
    pub base_allocation: bool,
}

impl Negotiated {
    /// Structured or extended replies: `READ` answers with chunks.
    pub fn structured(&self) -> bool {
        self.mode != ReplyMode::Simple
    }

    /// Extended headers.
    pub fn extended(&self) -> bool {
        self.mode == ReplyMode::Extended
    }

    /// The bytes of a request header in this mode.
    pub fn request_len(&self) -> usize {
        if self.extended() {
            EXTENDED_REQUEST_LEN
        } else {
            REQUEST_LEN
        }
    }

    /// Parses a request header of this mode.
    pub fn parse_request(&self, buf: &[u8]) -> Result<Request, ProtoError> {
        if self.extended() {
            parse_extended_request(buf)
        } else {
            parse_request(buf)
        }
    }
}

/// What requests an export accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportLimits {
    /// Export size in bytes.
    pub size: u64,
    /// Writes, trims and write-zeroes fail with `EPERM`.
    pub read_only: bool,
    /// Offsets and lengths must be multiples of this (1: any).
    pub min_block: u32,
}

/// Why a request is refused: the errno of the reply and, for structured replies, a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// An `NBD_E*` value.
    pub errno: u32,
    /// Says why, for a human.
    pub reason: &'static str,
}

fn refuse(errno: u32, reason: &'static str) -> Result<(), Refused> {
    Err(Refused { errno, reason })
}

/// The command flags `command` accepts once `negotiated`, or `None` for an unknown command.
fn allowed_flags(command: u16, negotiated: &Negotiated) -> Option<u16> {
    let flags = match command {
        cmd::READ if negotiated.structured() => cmd::FLAG_DF,
        cmd::READ | cmd::DISC | cmd::FLUSH | cmd::CACHE => 0,
        cmd::WRITE if negotiated.extended() => cmd::FLAG_FUA | cmd::FLAG_PAYLOAD_LEN,
        cmd::WRITE | cmd::TRIM => cmd::FLAG_FUA,
        cmd::WRITE_ZEROES => cmd::FLAG_FUA | cmd::FLAG_NO_HOLE | cmd::FLAG_FAST_ZERO,
        cmd::BLOCK_STATUS => cmd::FLAG_REQ_ONE,
        _ => return None,
    };
    Some(flags)
}

/// Checks a request against the export and what was negotiated; `Err` is the error to reply with.
///
/// `EINVAL`: unknown commands; flags a command does not take (`DF` only with structured replies,
/// `PAYLOAD_LEN` only on a `WRITE` with extended headers); ranges past the end; misalignment;
/// `READ`/`WRITE`/`CACHE` over [`MAX_PAYLOAD`]; `BLOCK_STATUS` without `base:allocation` selected or of
/// length 0. `EPERM`: `WRITE`/`TRIM`/`WRITE_ZEROES` on a read-only export. `DISC` and `FLUSH` ignore
/// their range.
pub fn check_request(
    req: &Request,
    limits: &ExportLimits,
    negotiated: &Negotiated,
) -> Result<(), Refused> {
    let Some(allowed) = allowed_flags(req.command, negotiated) else {
        return refuse(errno::EINVAL, "unknown command");
    };
    if req.flags & !allowed != 0 {
        return refuse(errno::EINVAL, "a flag this command does not take");
    }
    if matches!(req.command, cmd::DISC | cmd::FLUSH) {
        return Ok(());
    }
    if req.command == cmd::BLOCK_STATUS && !negotiated.base_allocation {
        return refuse(errno::EINVAL, "BLOCK_STATUS without a metadata context");
    }
    let writes = matches!(req.command, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if writes && limits.read_only {
        return refuse(errno::EPERM, "the export is read-only");
    }
    let buffered = matches!(req.command, cmd::READ | cmd::WRITE | cmd::CACHE);
    if buffered && req.length > u64::from(MAX_PAYLOAD) {
        return refuse(errno::EINVAL, "longer than the 32 MiB maximum");
    }
    match req.offset.checked_add(req.length) {
        Some(end) if end <= limits.size => {}
        _ => return refuse(errno::EINVAL, "past the end of the export"),
    }
    let min = u64::from(limits.min_block.max(1));
    if req.offset % min != 0 || req.length % min != 0 {
        return refuse(errno::EINVAL, "not aligned to the minimum block size");
    }
    if req.command == cmd::BLOCK_STATUS && req.length == 0 {
        return refuse(errno::EINVAL, "BLOCK_STATUS of length 0");
    }
    Ok(())
}
