//! One request, served: the command runs on the export, and its reply (framed as the connection
//! negotiated, see `framing`) is queued for the writer.

use std::io;
use std::rc::Rc;

use super::block::Block;
use super::conn::{Connection, Permit};
use super::export::MAX_STATUS_EXTENTS;
use super::proto::extents::{Extent, ReadChunk};
use super::proto::{self, cmd, Request};

/// What a command produced, before it is framed.
enum Answer {
    /// Success without data.
    Done,
    /// Read data, all of it.
    Read(Block),
    /// Read data as content chunks.
    Sparse(Block, Vec<ReadChunk>),
    /// `base:allocation` extents.
    Status(Vec<Extent>),
}

/// Runs one request (checked by `proto::check_request`) and queues its reply.
pub(crate) async fn execute(
    conn: Rc<Connection>,
    request: Request,
    payload: Option<Block>,
    permit: Permit,
) {
    let framing = conn.framing;
    let reply = match run(&conn, &request, payload).await {
        Ok(Answer::Done) => framing.done(&request, permit),
        Ok(Answer::Read(block)) => framing.data(&request, block, permit),
        Ok(Answer::Sparse(block, chunks)) => framing.sparse(&request, block, &chunks, permit),
        Ok(Answer::Status(extents)) => framing.block_status(&request, &extents, permit),
        Err((what, e)) => {
            let message = format!("{what}: {e}");
            framing.error(&request, proto::errno_for(&e), &message, permit)
        }
    };
    conn.replies.push(reply);
}

/// The command itself; an error says what failed.
async fn run(
    conn: &Connection,
    request: &Request,
    payload: Option<Block>,
) -> Result<Answer, (&'static str, io::Error)> {
    let export = &conn.export;
    let (offset, length) = (request.offset, request.length);
    let flag = |bit: u16| request.flags & bit != 0;
    let done = |result: io::Result<()>, what| result.map(|()| Answer::Done).map_err(|e| (what, e));
    // check_request bounds READ to MAX_PAYLOAD, so the length fits a usize.
    let read_len = length as usize;
    match (request.command, payload) {
        (cmd::READ, _) if conn.framing.0 == proto::ReplyMode::Simple || flag(cmd::FLAG_DF) => {
            let block = export.read(offset, read_len).await;
            block.map(Answer::Read).map_err(|e| ("read", e))
        }
        (cmd::READ, _) => match export.read_sparse(offset, read_len).await {
            Ok((block, chunks)) => Ok(Answer::Sparse(block, chunks)),
            Err(e) => Err(("read", e)),
        },
        (cmd::WRITE, Some(block)) => done(
            export.write(block, offset, flag(cmd::FLAG_FUA)).await,
            "write",
        ),
        (cmd::FLUSH, _) => done(export.flush().await, "flush"),
        (cmd::TRIM, _) => done(
            export.trim(offset, length, flag(cmd::FLAG_FUA)).await,
            "trim",
        ),
        (cmd::WRITE_ZEROES, _) => {
            let (fua, fast) = (flag(cmd::FLAG_FUA), flag(cmd::FLAG_FAST_ZERO));
            let may_punch = !flag(cmd::FLAG_NO_HOLE);
            let zeroed = export
                .write_zeroes(offset, length, fua, fast, may_punch)
                .await;
            done(zeroed, "write zeroes")
        }
        (cmd::CACHE, _) => done(export.cache(offset, length).await, "cache"),
        (cmd::BLOCK_STATUS, _) => {
            let max = if flag(cmd::FLAG_REQ_ONE) {
                1
            } else {
                MAX_STATUS_EXTENTS
            };
            Ok(Answer::Status(export.block_status(offset, length, max)))
        }
        // check_request lets nothing else through.
        _ => Err(("request", io::Error::from_raw_os_error(libc::EINVAL))),
    }
}
