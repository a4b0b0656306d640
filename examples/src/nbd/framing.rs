//! How a connection answers, by what its client negotiated (qemu-nbd's choices):
//!
//! | answer | simple | structured | extended |
//! |---|---|---|---|
//! | success without data | simple reply | simple reply | `NONE` chunk |
//! | error | simple reply with errno | `ERROR` chunk with a message | `ERROR` chunk |
//! | `READ` | simple reply and data | `OFFSET_DATA` / `OFFSET_HOLE` chunks, the last `DONE` | same, extended headers |
//! | `BLOCK_STATUS` | - | `BLOCK_STATUS` chunk | `BLOCK_STATUS_EXT` chunk |
//!
//! A `READ` of length 0 with chunks is one `NONE` chunk. The bytes come from `proto`'s encoders; this
//! module only chooses them and ties them to the data and the request's budget permit.

use super::block::Block;
use super::proto::chunks::{self, ChunkTo, Fixed};
use super::proto::extents::{Extent, ReadChunk};
use super::proto::meta::BASE_ALLOCATION_ID;
use super::proto::{self, ReplyMode, Request};
use super::replies::{Piece, Reply};

/// The reply framing of one connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Framing(pub(crate) ReplyMode);

impl Framing {
    fn to(&self, req: &Request) -> ChunkTo {
        ChunkTo {
            extended: self.0 == ReplyMode::Extended,
            cookie: req.cookie,
            offset: req.offset,
        }
    }

    fn simple(error: u32, req: &Request) -> Fixed {
        let mut out = Fixed::new();
        out.push(&proto::simple_reply(error, req.cookie));
        out
    }

    /// Success without data.
    pub(crate) fn done<P>(&self, req: &Request, permit: P) -> Reply<P> {
        let bytes = match self.0 {
            ReplyMode::Simple | ReplyMode::Structured => Self::simple(0, req),
            ReplyMode::Extended => chunks::none_chunk(&self.to(req)),
        };
        Reply::fixed(bytes, permit)
    }

    /// A failure: `errno`, and `message` where chunks can carry one.
    pub(crate) fn error<P>(&self, req: &Request, errno: u32, message: &str, permit: P) -> Reply<P> {
        if self.0 == ReplyMode::Simple {
            return Reply::fixed(Self::simple(errno, req), permit);
        }
        let mut out = Vec::new();
        chunks::error_chunk(&mut out, &self.to(req), true, errno, message, None);
        Reply::bytes(out, permit)
    }

    /// A `READ`'s data, all of it in one reply (simple) or one content chunk.
    pub(crate) fn data<P>(&self, req: &Request, block: Block, permit: P) -> Reply<P> {
        let to = self.to(req);
        let prefix = match self.0 {
            ReplyMode::Simple => Self::simple(0, req),
            _ if block.len() == 0 => return Reply::fixed(chunks::none_chunk(&to), permit),
            _ => chunks::data_chunk_prefix(&to, true, req.offset, block.len() as u64),
        };
        Reply::data(prefix, block, permit)
    }

    /// A structured `READ` as `chunks` (consecutive from the request's offset, data read into `block`
    /// at the same positions); the last chunk is flagged `DONE`.
    pub(crate) fn sparse<P>(
        &self,
        req: &Request,
        block: Block,
        chunks: &[ReadChunk],
        permit: P,
    ) -> Reply<P> {
        if let [ReadChunk::Data { .. }] | [] = chunks {
            return self.data(req, block, permit);
        }
        let to = self.to(req);
        let last = chunks.len() - 1;
        let pieces = chunks.iter().enumerate().map(|(i, chunk)| match *chunk {
            ReadChunk::Hole { offset, length } => {
                Piece::Fixed(chunks::hole_chunk(&to, i == last, offset, length))
            }
            ReadChunk::Data { offset, length } => Piece::Data {
                prefix: chunks::data_chunk_prefix(&to, i == last, offset, length),
                at: offset.saturating_sub(req.offset) as usize,
                len: length as usize,
            },
        });
        Reply::sparse(block, pieces.collect(), permit)
    }

    /// The `base:allocation` extents of a `BLOCK_STATUS`, as its one (`DONE`) status chunk.
    pub(crate) fn block_status<P>(&self, req: &Request, extents: &[Extent], permit: P) -> Reply<P> {
        let extents: Vec<(u64, u32)> = extents.iter().map(|e| (e.length, e.status())).collect();
        let mut out = Vec::with_capacity(chunks::EXTENDED_HEADER_LEN + 8 + 16 * extents.len());
        chunks::block_status_chunk(&mut out, &self.to(req), true, BASE_ALLOCATION_ID, &extents);
        Reply::bytes(out, permit)
    }
}

/// The most bytes a `BLOCK_STATUS` reply of `max` extents takes (for the connection's budget).
pub(crate) fn block_status_bytes(max: usize) -> usize {
    chunks::EXTENDED_HEADER_LEN + 8 + 16 * max
}
