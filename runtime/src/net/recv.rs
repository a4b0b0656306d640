//! Completion-based receives for streams on an io_uring context.
//!
//! On a readiness backend a read is `read -> EAGAIN -> wait -> read`. On the io_uring backend a
//! stream instead keeps one `IORING_OP_RECV` in flight into a buffer it owns: `poll_read` copies out
//! what an earlier RECV brought, or queues a RECV and returns `Pending`. The SQE goes to the kernel
//! in the loop's one `io_uring_enter` per iteration, together with every other stream's, and its CQE
//! brings the data, so waiting for and receiving a message cost no syscall of their own.
//!
//! # Buffer ownership
//!
//! The kernel writes into the receive buffer until the RECV's CQE arrives, whatever happens to the
//! future or the stream in the meantime. So the buffer (a `Vec<u8>` whose heap block does not move
//! when the `Vec` does) and an owner of the socket itself ([`SharedSocket`]'s `Arc`) travel inside
//! the operation's resources ([`Op`]), in the cell shared with the completion callback: the stream,
//! not the read future, owns the RECV, so a read future dropped mid-flight loses nothing (the next
//! read gets the bytes). When the stream is dropped with a RECV in flight it shuts the socket down
//! (so the peer sees the connection end at once), queues `IORING_OP_ASYNC_CANCEL` for the RECV and
//! lets go; the buffer and the last owner of the socket are released by the completion callback when
//! the RECV's own CQE (`-ECANCELED`, or data nobody will read) arrives, and only then does the fd
//! close, so the fd number in the SQE is this socket's until then (an SQE still queued resolves its
//! fd at submission; a reused number would be another file). One fd per socket: no duplicate. At
//! context teardown the context cancels and waits for every RECV like any user SQE.
//!
//! Bytes move from the socket into the buffer only while a read is pending, at most one buffer's
//! worth (4 KiB to 64 KiB, sized by the reads, never growing past that), and reads take them in
//! order before the next RECV is queued. Raw reads on the fd (through `AsRawFd`) bypass the buffer:
//! mixing them with `AsyncRead` on the io_uring backend may reorder data; that is the caller's
//! problem.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};

use io_uring::{opcode, types};

use super::shared_socket::SharedSocket;
use crate::context::{current, HomeState};
use crate::io::ring_op::{cqe_result, Op};
use crate::io::Async;
use crate::Backend;

const MIN_BUF: usize = 4 * 1024;
const MAX_BUF: usize = 64 * 1024;
/// `IORING_RECVSEND_POLL_FIRST` (Linux 5.19, in the SQE's `ioprio`): wait for readiness before the
/// first receive attempt, saving the kernel a doomed attempt when the socket was just drained.
const RECVSEND_POLL_FIRST: u16 = 1;

/// What a RECV in flight owns: the buffer the kernel writes and (an owner of) the socket whose fd the
/// SQE names.
struct RecvResources {
    _socket: Arc<dyn AsFd + Send + Sync>,
    buf: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// The context that runs this stream, when its backend is io_uring and RECVs are in use.
    ring: Option<Weak<HomeState>>,
    /// The fd the RECV in flight names (its resources keep the socket open), to shut the socket
    /// down if the stream is dropped first.
    in_flight_fd: Option<RawFd>,
    /// The receive buffer, when no RECV is in flight; `buf[pos..filled]` is still to be read.
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
    /// An end of stream (`Ok`) or error a RECV reported, for the next read.
    ended: Option<io::Result<()>>,
    op: Option<Op<RecvResources>>,
    /// The last RECV left the socket empty (it returned less than its buffer), so the next one
    /// will most likely wait: it asks for `RECVSEND_POLL_FIRST`.
    drained: bool,
    /// Whether the RECV in flight asked for `RECVSEND_POLL_FIRST`.
    in_flight_polls_first: bool,
    /// The kernel refused `RECVSEND_POLL_FIRST` (EINVAL, older than 5.19): not asked again.
    poll_first_refused: bool,
}

/// A stream's receive side on an io_uring context (inert on the other backends).
#[derive(Default)]
pub(crate) struct Recv {
    state: RefCell<State>,
}

impl std::fmt::Debug for Recv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("Recv")
            .field("completion_based", &state.ring.is_some())
            .field("buffered", &(state.filled - state.pos))
            .field("in_flight", &state.op.is_some())
            .finish()
    }
}

impl Recv {
    /// Uses RECVs when the current context's backend is io_uring.
    pub(crate) fn for_current_context() -> Recv {
        let ring = current::with_current(|home| {
            (home.backend() == Backend::IoUring).then(|| Rc::downgrade(home))
        })
        .flatten();
        Recv {
            state: RefCell::new(State {
                ring,
                ..State::default()
            }),
        }
    }

    /// `AsyncRead::poll_read_vectored` for the stream that owns `io`.
    pub(crate) fn poll_read<S>(
        &self,
        cx: &mut Context<'_>,
        io: &Async<SharedSocket<S>>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>>
    where
        S: AsRawFd + AsFd + Send + Sync + 'static,
        for<'a> &'a SharedSocket<S>: io::Read,
    {
        let mut state = self.state.borrow_mut();
        if state.ring.is_none() && state.filled == state.pos {
            drop(state);
            return readiness_read::<SharedSocket<S>>(io, cx, bufs);
        }
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        if wanted == 0 {
            return Poll::Ready(Ok(0));
        }
        match state.poll_fill(cx, io, wanted) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Filled::Data) => Poll::Ready(Ok(state.copy_out(bufs))),
            Poll::Ready(Filled::Ended) => {
                let ended = state.ended.take().expect("poll_fill saw it");
                Poll::Ready(ended.map(|()| 0))
            }
            Poll::Ready(Filled::Readiness) => {
                drop(state);
                readiness_read::<SharedSocket<S>>(io, cx, bufs)
            }
        }
    }

    /// Copies received bytes into `buf` without consuming them: the next read sees them again. On
    /// the io_uring backend the bytes come through the stream's RECV buffer (a RECV is started if none
    /// is buffered); elsewhere `recv(MSG_PEEK)` reads them in place.
    pub(crate) fn poll_peek<S>(
        &self,
        cx: &mut Context<'_>,
        io: &Async<SharedSocket<S>>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>>
    where
        S: AsRawFd + AsFd + Send + Sync + 'static,
    {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut state = self.state.borrow_mut();
        if state.ring.is_none() && state.filled == state.pos {
            drop(state);
            return readiness_peek::<SharedSocket<S>>(io, cx, buf);
        }
        match state.poll_fill(cx, io, buf.len()) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Filled::Data) => {
                let available = &state.buf[state.pos..state.filled];
                let n = available.len().min(buf.len());
                buf[..n].copy_from_slice(&available[..n]);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Filled::Ended) => Poll::Ready(match state.ended.as_ref() {
                Some(Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
                _ => Ok(0),
            }),
            Poll::Ready(Filled::Readiness) => {
                drop(state);
                readiness_peek::<SharedSocket<S>>(io, cx, buf)
            }
        }
    }

    /// Whether received bytes wait in the stream's buffer, or a receive is in flight (so handing the
    /// socket elsewhere would lose or reorder data).
    pub(crate) fn holds_data(&self) -> bool {
        let state = self.state.borrow();
        state.pos < state.filled || state.op.is_some()
    }

    pub(crate) fn poll_readable<T: AsRawFd>(
        &self,
        cx: &mut Context<'_>,
        io: &Async<T>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.state.borrow_mut();
        if state.pos < state.filled || state.ended.is_some() {
            return Poll::Ready(Ok(()));
        }
        if state.op.is_some() {
            return state.poll_op(cx).map(Ok);
        }
        drop(state);
        io.poll_readable(cx)
    }
}

/// What [`State::poll_fill`] found.
enum Filled {
    /// Received bytes wait in the buffer.
    Data,
    /// The stream ended (end of file or an error, in `ended`).
    Ended,
    /// No ring any more (the context is gone, or the kernel answered EAGAIN): readiness reads from
    /// now on.
    Readiness,
}

impl State {
    /// Makes received bytes available in the buffer, starting a RECV of up to `wanted` bytes if none
    /// is in flight, or says why there will be none.
    fn poll_fill<S: AsFd + AsRawFd + Send + Sync + 'static>(
        &mut self,
        cx: &mut Context<'_>,
        io: &Async<SharedSocket<S>>,
        wanted: usize,
    ) -> Poll<Filled> {
        loop {
            if self.pos < self.filled {
                return Poll::Ready(Filled::Data);
            }
            if self.ended.is_some() {
                return Poll::Ready(Filled::Ended);
            }
            if self.op.is_some() {
                if self.poll_op(cx).is_pending() {
                    return Poll::Pending;
                }
                continue;
            }
            let Some(ring) = self.ring.as_ref().and_then(Weak::upgrade) else {
                // No ring, or the context is gone: plain readiness I/O from now on.
                self.ring = None;
                return Poll::Ready(Filled::Readiness);
            };
            self.start(&ring, io.get_ref().share(), wanted);
        }
    }

    fn copy_out(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> usize {
        let mut copied = 0;
        for buf in bufs {
            let available = &self.buf[self.pos..self.filled];
            let n = available.len().min(buf.len());
            buf[..n].copy_from_slice(&available[..n]);
            self.pos += n;
            copied += n;
            if self.pos == self.filled {
                break;
            }
        }
        copied
    }

    /// Polls the RECV in flight; when it completed, takes back its buffer and records what it
    /// brought (data, end of stream or error).
    fn poll_op(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let op = self.op.as_mut().expect("a RECV is in flight");
        let Poll::Ready((result, resources)) = Pin::new(op).poll(cx) else {
            return Poll::Pending;
        };
        self.op = None;
        self.in_flight_fd = None;
        let capacity = resources.buf.len();
        self.buf = resources.buf;
        self.pos = 0;
        self.filled = 0;
        match result.and_then(cqe_result) {
            Ok(0) => self.ended = Some(Ok(())),
            Ok(n) => {
                self.filled = n;
                self.drained = n < capacity;
            }
            // An older kernel refused the flag: the caller's loop queues the RECV again without.
            Err(err) if self.in_flight_polls_first && err.raw_os_error() == Some(libc::EINVAL) => {
                self.poll_first_refused = true;
            }
            // A kernel that returned EAGAIN instead of waiting would do so again: this stream
            // goes back to readiness reads (the caller's next read takes that path).
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.ring = None,
            Err(err) => self.ended = Some(Err(err)),
        }
        Poll::Ready(())
    }

    /// Queues a RECV on `socket` into the (lazily allocated, grown only up to `MAX_BUF`) buffer.
    fn start(&mut self, ring: &Rc<HomeState>, socket: Arc<dyn AsFd + Send + Sync>, wanted: usize) {
        let size = wanted.clamp(MIN_BUF, MAX_BUF);
        let mut buf = std::mem::take(&mut self.buf);
        if buf.len() < size {
            buf.resize(size, 0);
        }
        let len = buf.len().min(MAX_BUF) as u32;
        self.in_flight_polls_first = self.drained && !self.poll_first_refused;
        let ioprio = if self.in_flight_polls_first {
            RECVSEND_POLL_FIRST
        } else {
            0
        };
        let ptr = buf.as_mut_ptr();
        let raw_fd = socket.as_fd().as_raw_fd();
        self.in_flight_fd = Some(raw_fd);
        let resources = RecvResources {
            _socket: socket,
            buf,
        };
        // SAFETY: `ptr` points at `len` initialised bytes of the heap block `resources.buf` owns
        // (moving the Vec does not move its heap block), and `raw_fd` is the socket `resources`
        // owns a share of, so it stays open (and this socket's) until the op lets go; the op keeps
        // both until the RECV's CQE arrives, also if the stream is dropped first, and nothing else
        // touches the buffer meanwhile (it is only reachable through the op). A RECV produces
        // exactly one CQE.
        let op = unsafe {
            Op::submit_on(ring, resources, |_| {
                opcode::Recv::new(types::Fd(raw_fd), ptr, len)
                    .ioprio(ioprio)
                    .build()
            })
        };
        self.op = Some(op);
    }
}

impl Drop for Recv {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        if let Some(op) = state.op.take() {
            // The op keeps the socket open until its CQE: shut it down now so the peer sees the
            // connection end at once, and cancel the RECV so the CQE comes soon.
            if let Some(fd) = state.in_flight_fd.take() {
                // SAFETY: shutdown(2) takes no pointers; `fd` is open while the RECV holds its share
                // of the socket, which it does until its CQE (not before this drop returns).
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            if let Some(ring) = state.ring.as_ref().and_then(Weak::upgrade) {
                op.cancel_on(&ring);
            }
        }
    }
}

/// A readiness-based read: `read(2)`-style for one buffer (cheaper in the kernel than `readv`),
/// vectored otherwise.
/// `recv(MSG_PEEK)` when the socket is readable.
fn readiness_peek<T: AsRawFd>(
    io: &Async<T>,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    loop {
        // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes; recv writes at most that many.
        let n = unsafe {
            libc::recv(
                io.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK,
            )
        };
        if n >= 0 {
            return Poll::Ready(Ok(n as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => match io.poll_readable(cx) {
                Poll::Ready(Ok(())) => continue,
                other => return other.map(|r| r.map(|()| 0)),
            },
            io::ErrorKind::Interrupted => continue,
            _ => return Poll::Ready(Err(err)),
        }
    }
}

fn readiness_read<T>(
    mut io: &Async<T>,
    cx: &mut Context<'_>,
    bufs: &mut [io::IoSliceMut<'_>],
) -> Poll<io::Result<usize>>
where
    T: AsRawFd,
    for<'a> &'a T: io::Read,
{
    match bufs {
        [buf] => futures::io::AsyncRead::poll_read(Pin::new(&mut io), cx, buf),
        _ => futures::io::AsyncRead::poll_read_vectored(Pin::new(&mut io), cx, bufs),
    }
}
