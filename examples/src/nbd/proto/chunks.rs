//! Reply chunks of structured replies (`NBD_OPT_STRUCTURED_REPLY`: 20-byte header, 32-bit length) and
//! of extended headers (`NBD_OPT_EXTENDED_HEADERS`: 32-byte header echoing the request's offset, 64-bit
//! length). Encoders only: the server never reads a reply.
//!
//! ```text
//! structured: magic 0x668e33ef u32, flags u16, type u16, cookie u64, length u32, payload
//! extended:   magic 0x6e8a278c u32, flags u16, type u16, cookie u64, offset u64, length u64, payload
//! ```

use std::ops::Deref;

use super::MAX_STRING;

/// The magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// The magic of an extended reply chunk.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;
/// Bytes of a structured chunk header.
pub const STRUCTURED_HEADER_LEN: usize = 20;
/// Bytes of an extended chunk header.
pub const EXTENDED_HEADER_LEN: usize = 32;
/// Reply flag: the last chunk of its reply.
pub const FLAG_DONE: u16 = 1 << 0;
/// The longest fixed-size chunk: an extended header and an `OFFSET_HOLE` payload.
pub const MAX_FIXED: usize = EXTENDED_HEADER_LEN + 12;

/// Chunk types (`NBD_REPLY_TYPE_*`).
pub mod kind {
    /// No payload; always the last chunk.
    pub const NONE: u16 = 0;
    /// u64 offset, then data.
    pub const OFFSET_DATA: u16 = 1;
    /// u64 offset, u32 length of zeroes.
    pub const OFFSET_HOLE: u16 = 2;
    /// u32 context id, then (u32 length, u32 flags) extents (structured replies only).
    pub const BLOCK_STATUS: u16 = 5;
    /// u32 context id, u32 count, then (u64 length, u64 flags) extents (extended headers only).
    pub const BLOCK_STATUS_EXT: u16 = 6;
    /// u32 errno, u16 message length, message.
    pub const ERROR: u16 = (1 << 15) + 1;
    /// As `ERROR`, then the u64 offset the error is at.
    pub const ERROR_OFFSET: u16 = (1 << 15) + 2;
}

/// A short chunk (or simple reply) built without allocating: at most [`MAX_FIXED`] bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    bytes: [u8; MAX_FIXED],
    len: usize,
}

impl Fixed {
    /// Empty.
    pub const fn new() -> Fixed {
        Fixed {
            bytes: [0; MAX_FIXED],
            len: 0,
        }
    }

    /// Appends `bytes`, or as many of them as fit (callers append at most [`MAX_FIXED`] in all).
    pub fn push(&mut self, bytes: &[u8]) {
        let room = &mut self.bytes[self.len..];
        let n = bytes.len().min(room.len());
        room[..n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }
}

impl Default for Fixed {
    fn default() -> Self {
        Fixed::new()
    }
}

impl Deref for Fixed {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fixed({:02x?})", &**self)
    }
}

/// The reply a chunk belongs to: the framing and the request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkTo {
    /// Extended headers (else structured).
    pub extended: bool,
    /// The request's cookie.
    pub cookie: u64,
    /// The request's offset (extended headers echo it).
    pub offset: u64,
}

impl ChunkTo {
    /// Bytes of this framing's chunk header.
    pub fn header_len(&self) -> usize {
        if self.extended {
            EXTENDED_HEADER_LEN
        } else {
            STRUCTURED_HEADER_LEN
        }
    }

    /// A chunk header for `payload_len` bytes of payload. Structured headers carry 32 bits of length:
    /// callers keep payloads under 4 GiB (the server's are at most [`MAX_PAYLOAD`](super::MAX_PAYLOAD)
    /// plus a few bytes); a longer one would be announced as `u32::MAX`.
    pub fn header(&self, flags: u16, kind: u16, payload_len: u64) -> Fixed {
        let mut out = Fixed::new();
        let magic = if self.extended {
            EXTENDED_REPLY_MAGIC
        } else {
            STRUCTURED_REPLY_MAGIC
        };
        out.push(&magic.to_be_bytes());
        out.push(&flags.to_be_bytes());
        out.push(&kind.to_be_bytes());
        out.push(&self.cookie.to_be_bytes());
        if self.extended {
            out.push(&self.offset.to_be_bytes());
            out.push(&payload_len.to_be_bytes());
        } else {
            let len = u32::try_from(payload_len).unwrap_or(u32::MAX);
            out.push(&len.to_be_bytes());
        }
        out
    }
}

fn done_flag(done: bool) -> u16 {
    if done {
        FLAG_DONE
    } else {
        0
    }
}

/// `NBD_REPLY_TYPE_NONE` with `DONE`: success without data.
pub fn none_chunk(to: &ChunkTo) -> Fixed {
    to.header(FLAG_DONE, kind::NONE, 0)
}

/// The front of an `OFFSET_DATA` chunk for `data_len` bytes at `offset`: header and offset. The data
/// follows it on the wire.
pub fn data_chunk_prefix(to: &ChunkTo, done: bool, offset: u64, data_len: u64) -> Fixed {
    let mut out = to.header(
        done_flag(done),
        kind::OFFSET_DATA,
        data_len.saturating_add(8),
    );
    out.push(&offset.to_be_bytes());
    out
}

/// An `OFFSET_HOLE` chunk: `length` bytes of zeroes at `offset`.
pub fn hole_chunk(to: &ChunkTo, done: bool, offset: u64, length: u32) -> Fixed {
    let mut out = to.header(done_flag(done), kind::OFFSET_HOLE, 12);
    out.push(&offset.to_be_bytes());
    out.push(&length.to_be_bytes());
    out
}

/// The longest prefix of `message` that is at most [`MAX_STRING`] bytes and ends on a character.
fn bounded(message: &str) -> &str {
    let mut end = message.len().min(MAX_STRING);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Appends an `ERROR` chunk (or `ERROR_OFFSET` with `at`): errno, message (cut to [`MAX_STRING`]
/// bytes), and the offset.
pub fn error_chunk(
    out: &mut Vec<u8>,
    to: &ChunkTo,
    done: bool,
    errno: u32,
    message: &str,
    at: Option<u64>,
) {
    let message = bounded(message);
    let (kind, tail) = match at {
        Some(_) => (kind::ERROR_OFFSET, 8),
        None => (kind::ERROR, 0),
    };
    let payload = 6 + message.len() + tail;
    out.extend_from_slice(&to.header(done_flag(done), kind, payload as u64));
    out.extend_from_slice(&errno.to_be_bytes());
    // bounded() keeps the message within MAX_STRING, so its length fits 16 bits.
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    if let Some(at) = at {
        out.extend_from_slice(&at.to_be_bytes());
    }
}

/// Appends a block status chunk for context `id`: `BLOCK_STATUS` (u32 lengths and flags) with
/// structured replies, `BLOCK_STATUS_EXT` (u32 count, u64 lengths and flags) with extended headers.
/// `extents` are (length, flags); with structured replies each length must fit 32 bits (a request's
/// range does), a longer one would be sent as `u32::MAX`.
pub fn block_status_chunk(
    out: &mut Vec<u8>,
    to: &ChunkTo,
    done: bool,
    id: u32,
    extents: &[(u64, u32)],
) {
    let flags = done_flag(done);
    // A count fits 32 bits (the server sends at most a few thousand extents); more are not sent.
    let count = u32::try_from(extents.len()).unwrap_or(u32::MAX);
    let extents = &extents[..count as usize];
    let n = u64::from(count);
    if to.extended {
        out.extend_from_slice(&to.header(flags, kind::BLOCK_STATUS_EXT, 8 + 16 * n));
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        for &(length, status) in extents {
            out.extend_from_slice(&length.to_be_bytes());
            out.extend_from_slice(&u64::from(status).to_be_bytes());
        }
    } else {
        out.extend_from_slice(&to.header(flags, kind::BLOCK_STATUS, 4 + 8 * n));
        out.extend_from_slice(&id.to_be_bytes());
        for &(length, status) in extents {
            let length = u32::try_from(length).unwrap_or(u32::MAX);
            out.extend_from_slice(&length.to_be_bytes());
            out.extend_from_slice(&status.to_be_bytes());
        }
    }
}
