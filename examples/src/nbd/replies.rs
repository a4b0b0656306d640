//! The replies of one connection: request tasks queue them, one writer sends them. Whatever is queued
//! when the writer runs goes out in one socket write (copied into a batch buffer), so a burst of
//! completions costs one syscall instead of one per reply. Each reply carries its request's budget
//! permit until it is written, so queued replies are bounded by the connection's budget. What a reply
//! says is chosen by `framing`; here it is only bytes and data blocks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::task::{Poll, Waker};

use futures::{AsyncWrite, AsyncWriteExt};

use super::block::Block;
use super::proto::chunks::Fixed;

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
    /// A short reply: a simple reply without data, or one fixed-size chunk.
    Fixed(Fixed),
    /// Chunks built in memory (errors with a message, block status).
    Bytes(Vec<u8>),
    /// Read data after its header (a simple reply's or one content chunk's), which goes into the
    /// block's headroom.
    Data(Fixed, Block),
    /// A read in several chunks.
    Sparse(Block, Vec<Piece>),
}

/// One chunk of a read in several chunks.
pub(crate) enum Piece {
    /// A chunk without data from the block (a hole).
    Fixed(Fixed),
    /// A data chunk: its header and offset (`prefix`), then the `len` bytes at `at` in the block.
    Data {
        prefix: Fixed,
        at: usize,
        len: usize,
    },
}

impl<P> Reply<P> {
    /// A short reply.
    pub(crate) fn fixed(bytes: Fixed, permit: P) -> Self {
        Reply {
            kind: Kind::Fixed(bytes),
            _permit: permit,
        }
    }

    /// A reply built in memory.
    pub(crate) fn bytes(bytes: Vec<u8>, permit: P) -> Self {
        Reply {
            kind: Kind::Bytes(bytes),
            _permit: permit,
        }
    }

    /// `prefix` followed by all of the block's data.
    pub(crate) fn data(prefix: Fixed, block: Block, permit: P) -> Self {
        Reply {
            kind: Kind::Data(prefix, block),
            _permit: permit,
        }
    }

    /// Chunks, some with data from `block`.
    pub(crate) fn sparse(block: Block, pieces: Vec<Piece>, permit: P) -> Self {
        Reply {
            kind: Kind::Sparse(block, pieces),
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

/// Adds `bytes` to the batch, or (when long) writes the batch and then `bytes` from where they are.
async fn emit<W: AsyncWrite + Unpin>(
    socket: &mut W,
    batch: &mut Vec<u8>,
    bytes: &[u8],
) -> io::Result<()> {
    if bytes.len() <= COPY_MAX {
        batch.extend_from_slice(bytes);
        return Ok(());
    }
    socket.write_all(batch).await?;
    batch.clear();
    socket.write_all(bytes).await
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
            Kind::Fixed(bytes) => batch.extend_from_slice(bytes),
            Kind::Bytes(bytes) => batch.extend_from_slice(bytes),
            Kind::Data(prefix, block) => emit(socket, batch, block.with_header(prefix)).await?,
            Kind::Sparse(block, pieces) => {
                for piece in pieces.iter() {
                    match piece {
                        Piece::Fixed(bytes) => batch.extend_from_slice(bytes),
                        Piece::Data { prefix, at, len } => {
                            // The header goes over unsent bytes right before the data if there are
                            // enough; else it is copied into the batch first.
                            match block.with_header_at(*at, *len, prefix) {
                                Some(bytes) => emit(socket, batch, bytes).await?,
                                None => {
                                    batch.extend_from_slice(prefix);
                                    emit(socket, batch, block.data(*at, *len)).await?;
                                }
                            }
                        }
                    }
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
    // A TLS stream sends its records on flush (a socket has nothing to flush).
    socket.flush().await?;
    // Keep the batch buffer for the next round unless one big burst inflated it.
    if batch.capacity() > 2 * BATCH_MAX {
        *batch = Vec::new();
    }
    drop(written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::Context;

    use futures::future::{self, Either};

    use super::*;
    use crate::nbd::proto::{self, SIMPLE_REPLY_LEN};

    fn simple(error: u32, cookie: u64) -> Fixed {
        let mut out = Fixed::new();
        out.push(&proto::simple_reply(error, cookie));
        out
    }

    /// A socket that records each write, or fails every write with `EPIPE`.
    struct Recorder {
        writes: Rc<RefCell<Vec<Vec<u8>>>>,
        broken: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            self.writes.borrow_mut().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn queued_replies_go_out_in_one_write_and_release_their_permits() {
        let replies = Replies::new();
        let permits = Rc::new(());
        let mut block = Block::new(512, SIMPLE_REPLY_LEN, 1);
        block.data_mut().fill(0xcd);
        replies.push(Reply::fixed(simple(0, 1), Rc::clone(&permits)));
        replies.push(Reply::data(simple(0, 2), block, Rc::clone(&permits)));
        replies.push(Reply::fixed(simple(22, 3), Rc::clone(&permits)));
        let writes = Rc::new(RefCell::new(Vec::new()));
        let socket = Recorder {
            writes: Rc::clone(&writes),
            broken: false,
        };
        // The writer never finishes on its own; stop it once the queue has been sent.
        let sent = futures::executor::block_on(future::select(
            Box::pin(replies.write_all(socket)),
            future::ready(()),
        ));
        assert!(matches!(sent, Either::Right(_)));
        let writes = writes.borrow();
        assert_eq!(writes.len(), 1, "one write for three replies");
        let bytes = &writes[0];
        assert_eq!(bytes.len(), 16 + 16 + 512 + 16);
        assert_eq!(&bytes[..16], &proto::simple_reply(0, 1));
        assert_eq!(&bytes[16..32], &proto::simple_reply(0, 2));
        assert!(bytes[32..544].iter().all(|&b| b == 0xcd));
        assert_eq!(&bytes[544..], &proto::simple_reply(22, 3));
        assert_eq!(Rc::strong_count(&permits), 1, "every permit released");
    }

    #[test]
    fn a_failed_socket_closes_the_queue() {
        let replies = Replies::new();
        let permits = Rc::new(());
        replies.push(Reply::fixed(simple(0, 1), Rc::clone(&permits)));
        let broken = Recorder {
            writes: Rc::default(),
            broken: true,
        };
        let err = futures::executor::block_on(replies.write_all(broken)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        replies.push(Reply::fixed(simple(0, 2), Rc::clone(&permits)));
        assert_eq!(
            Rc::strong_count(&permits),
            1,
            "nothing kept after the failure"
        );
    }

    #[test]
    fn a_sparse_read_sends_its_pieces_in_order_headers_over_unsent_bytes() {
        let replies = Replies::new();
        let mut block = Block::new(3 * COPY_MAX, 8, 1);
        block.data_mut().fill(0x11);
        let fixed = |byte: u8, len: usize| {
            let mut out = Fixed::new();
            out.push(&vec![byte; len]);
            out
        };
        let pieces = vec![
            // At the start of the data: the 8-byte headroom is too short for 12 header bytes.
            Piece::Data {
                prefix: fixed(1, 12),
                at: 0,
                len: 100,
            },
            Piece::Fixed(fixed(2, 20)),
            // Over the unsent bytes 100..4096.
            Piece::Data {
                prefix: fixed(3, 12),
                at: 4096,
                len: 10,
            },
            // Long: written from the block, after the batch.
            Piece::Data {
                prefix: fixed(4, 12),
                at: COPY_MAX,
                len: 2 * COPY_MAX,
            },
        ];
        replies.push(Reply::sparse(block, pieces, ()));
        let writes = Rc::new(RefCell::new(Vec::new()));
        let socket = Recorder {
            writes: Rc::clone(&writes),
            broken: false,
        };
        let _ = futures::executor::block_on(future::select(
            Box::pin(replies.write_all(socket)),
            future::ready(()),
        ));
        let writes = writes.borrow();
        assert_eq!(
            writes.len(),
            2,
            "the batch, then the long piece with its header"
        );
        let mut expected = vec![1; 12];
        expected.extend([0x11; 100]);
        expected.extend([2; 20]);
        expected.extend([3; 12]);
        expected.extend([0x11; 10]);
        assert_eq!(writes[0], expected);
        assert_eq!(&writes[1][..12], &[4; 12]);
        assert_eq!(writes[1].len(), 12 + 2 * COPY_MAX);
        assert!(writes[1][12..].iter().all(|&b| b == 0x11));
    }
}
