//! The replies of one connection: request tasks queue them, one writer sends them. Whatever is queued
//! when the writer runs goes out in one socket write (copied into a batch buffer), so a burst of
//! completions costs one syscall instead of one per reply. Each reply carries its request's budget
//! permit until it is written, so queued replies are bounded by the connection's budget.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::task::{Poll, Waker};

use futures::{AsyncWrite, AsyncWriteExt};

use super::export::Block;
use super::proto::{self, SIMPLE_REPLY_LEN};

/// Read data up to this size is copied into the batch; longer reads are written from their block.
const COPY_MAX: usize = 64 * 1024;
/// A batch stops growing past this many bytes.
const BATCH_MAX: usize = 256 * 1024;

/// One reply, holding whatever must live until it is sent (the request's budget permit).
pub(crate) struct Reply<P> {
    kind: Kind,
    _permit: P,
}

enum Kind {
    /// A reply without data.
    Header([u8; SIMPLE_REPLY_LEN]),
    /// A successful read: the header goes into the block's headroom.
    Data(u64, Block),
}

impl<P> Reply<P> {
    /// A reply with `error` (0: success) and no data.
    pub(crate) fn status(error: u32, cookie: u64, permit: P) -> Self {
        Reply {
            kind: Kind::Header(proto::simple_reply(error, cookie)),
            _permit: permit,
        }
    }

    /// A successful read's reply with its data.
    pub(crate) fn data(cookie: u64, block: Block, permit: P) -> Self {
        Reply {
            kind: Kind::Data(cookie, block),
            _permit: permit,
        }
    }
}

/// The queue between the request tasks and the writer.
pub(crate) struct Replies<P> {
    queue: RefCell<VecDeque<Reply<P>>>,
    writer: Cell<Option<Waker>>,
    /// The socket failed (or the connection gave up): replies are dropped instead of queued.
    closed: Cell<bool>,
}

impl<P> Replies<P> {
    pub(crate) fn new() -> Self {
        Replies {
            queue: RefCell::new(VecDeque::new()),
            writer: Cell::new(None),
            closed: Cell::new(false),
        }
    }

    /// Queues a reply and wakes the writer.
    pub(crate) fn push(&self, reply: Reply<P>) {
        if self.closed.get() {
            return;
        }
        self.queue.borrow_mut().push_back(reply);
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    /// Drops every queued reply (and its permit) and every later one.
    pub(crate) fn close(&self) {
        self.closed.set(true);
        let dropped = std::mem::take(&mut *self.queue.borrow_mut());
        drop(dropped);
    }

    /// Sends queued replies until the socket fails; then closes the queue. Never returns `Ok`.
    pub(crate) async fn write_all<W: AsyncWrite + Unpin>(&self, mut socket: W) -> io::Result<()> {
        let mut batch = Vec::new();
        let result = loop {
            let ready = poll_fn(|cx| {
                let queue = std::mem::take(&mut *self.queue.borrow_mut());
                if queue.is_empty() {
                    self.writer.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    Poll::Ready(queue)
                }
            })
            .await;
            if let Err(e) = send_batch(&mut socket, &mut batch, ready).await {
                break e;
            }
        };
        self.close();
        Err(result)
    }
}

/// Writes `replies` with as few writes as possible; their permits are released once written.
async fn send_batch<W, P>(
    socket: &mut W,
    batch: &mut Vec<u8>,
    replies: VecDeque<Reply<P>>,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    batch.clear();
    let mut written = Vec::with_capacity(replies.len());
    for mut reply in replies {
        match &mut reply.kind {
            Kind::Header(header) => batch.extend_from_slice(header),
            Kind::Data(cookie, block) => {
                let bytes = block.with_header(&proto::simple_reply(0, *cookie));
                if bytes.len() <= COPY_MAX {
                    batch.extend_from_slice(bytes);
                } else {
                    socket.write_all(batch).await?;
                    batch.clear();
                    socket.write_all(bytes).await?;
                }
            }
        }
        written.push(reply);
        if batch.len() >= BATCH_MAX {
            socket.write_all(batch).await?;
            batch.clear();
            written.clear();
        }
    }
    if !batch.is_empty() {
        socket.write_all(batch).await?;
    }
    // Keep the batch buffer for the next round unless one big burst inflated it.
    if batch.capacity() > 2 * BATCH_MAX {
        *batch = Vec::new();
    }
    drop(written);
    Ok(())
}
