//! TCP, UDP and Unix-domain sockets on the current context: [`TcpListener`], [`TcpStream`],
//! [`UnixListener`], [`UnixStream`], and the datagram sockets [`UdpSocket`] and [`UnixDatagram`].
//! Streams implement `futures::io::AsyncRead` and `AsyncWrite`; datagram sockets have async
//! `send_to`/`recv_from`, `send`/`recv` (once connected) and, for UDP, `peek_from`, all through
//! `&self`, so that one task can receive while another sends on the same socket.
//!
//! On a context whose backend is io_uring, stream reads are completion-based: a read that has to
//! wait leaves an `IORING_OP_RECV` in flight into a buffer the stream owns (4 to 64 KiB), which the
//! loop submits in its one `io_uring_enter` per iteration together with everyone else's; the data
//! comes with the completion and later reads copy it out, so a waiting reader costs no read syscall.
//! The stream, not the read future, owns that receive: dropping a read future loses no data, and
//! dropping the stream cancels the receive and closes the socket. Writes stay readiness-based, and
//! so do reads on the epoll and poll backends. Reading the fd directly (through `AsRawFd`) bypasses
//! the stream's buffer: mixing such reads with `AsyncRead` on io_uring may reorder data.
//!
//! Datagram receives follow the same pattern: on io_uring, a receive that has to wait leaves an
//! `IORING_OP_RECVMSG` in flight into a 64 KiB datagram buffer the socket owns (enough for any UDP
//! datagram), which brings the datagram and its sender's address with the completion; the socket,
//! not the receive future, owns it, so a receive future dropped mid-flight (a timeout, a
//! `select!`) loses no datagram: the next receive gets it. Each receive returns one datagram, cut
//! to the caller's buffer exactly as `recvfrom(2)` cuts it (the rest is discarded, never returned
//! by the next receive); an empty datagram is a 0-byte receive with its sender. Sends are a plain
//! `sendto(2)` on every backend: for UDP it completes at once, and a ring operation would cost a
//! copy of the payload and a loop iteration per awaited send (measured 25-40% slower awaited in
//! turn, no faster with 32 sends in flight together: `benches/benches/udp_send.rs`).
//!
//! ```
//! use aioctx::net::UdpSocket;
//! use std::time::Duration;
//! use aioctx::time::timeout;
//!
//! let ctx = aioctx::AioContext::new()?;
//! ctx.block_on(async {
//!     let server = UdpSocket::bind("127.0.0.1:0")?;
//!     let client = UdpSocket::bind("127.0.0.1:0")?;
//!     client.connect(server.local_addr()?).await?;
//!     let mut buf = [0; 64];
//!     // A receive that gives up loses nothing: the datagram goes to the next one.
//!     assert!(timeout(Duration::from_millis(1), server.recv_from(&mut buf)).await.is_err());
//!     client.send(b"late").await?;
//!     let (n, from) = server.recv_from(&mut buf).await?;
//!     assert_eq!((&buf[..n], from), (&b"late"[..], client.local_addr()?));
//!     Ok::<_, std::io::Error>(())
//! })?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! They are `!Send` (see [`Async`]); on an IOThread, create them inside a task spawned
//! with [`Remote::spawn_local_with`](crate::Remote::spawn_local_with).
//!
//! ```
//! use futures::{AsyncReadExt, AsyncWriteExt};
//! use aioctx::net::{TcpListener, TcpStream};
//!
//! let ctx = aioctx::AioContext::new()?;
//! ctx.block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     let addr = listener.local_addr()?;
//!     let server = aioctx::spawn_local(async move {
//!         let (mut conn, _peer) = listener.accept().await?;
//!         let mut buf = [0; 5];
//!         conn.read_exact(&mut buf).await?;
//!         conn.write_all(&buf).await?;
//!         Ok::<_, std::io::Error>(())
//!     });
//!     let mut client = TcpStream::connect(addr).await?;
//!     client.set_nodelay(true)?;
//!     client.write_all(b"hello").await?;
//!     let mut echo = [0; 5];
//!     client.read_exact(&mut echo).await?;
//!     assert_eq!(&echo, b"hello");
//!     server.await.unwrap()
//! })?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod addr;
mod recv;
mod recv_msg;
mod shared_socket;
mod tcp;
mod udp;
mod unix;
mod unix_datagram;

pub use addr::{lookup_host, ToSocketAddrs};
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixListener, UnixStream};
pub use unix_datagram::UnixDatagram;

use std::io;

use socket2::{SockAddr, Socket};

use crate::io::Async;

/// Connects a non-blocking socket: starts the connect, waits until writable, reports `SO_ERROR`.
async fn connect(socket: Socket, addr: &SockAddr) -> io::Result<Async<Socket>> {
    socket.set_nonblocking(true)?;
    match socket.connect(addr) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(libc::EINPROGRESS)
                || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let socket = Async::new(socket)?;
    socket.writable().await?;
    if let Some(err) = socket.get_ref().take_error()? {
        return Err(err);
    }
    Ok(socket)
}

/// Why [`TcpStream::into_std`], [`UnixStream::into_std`], [`UdpSocket::into_std`] or
/// [`UnixDatagram::into_std`] gave the socket back: it holds received bytes (or a datagram) not read
/// yet, or a receive is in flight on the io_uring ring, and handing the socket over now would lose
/// them. Read until nothing is buffered (or drop the socket) instead.
///
/// ```
/// use futures::{AsyncReadExt, AsyncWriteExt};
/// use aioctx::net::UnixStream;
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let (mut a, b) = UnixStream::pair()?;
///     a.write_all(b"left over").await?;
///     let mut byte = [0; 1];
///     (&b).read_exact(&mut byte).await?; // on io_uring, the rest waits in b's buffer
///     match b.into_std() {
///         Ok(_std) => {} // readiness backends buffer nothing
///         Err(e) => {
///             let b = e.into_inner(); // nothing is lost: the stream comes back
///             let mut rest = [0; 8];
///             (&b).read_exact(&mut rest).await?;
///             assert_eq!(&rest, b"eft over");
///         }
///     }
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct IntoStdError<S> {
    // Boxed: a socket is large, and errors should be small.
    stream: Box<S>,
}

impl<S> IntoStdError<S> {
    /// The socket, unchanged.
    ///
    /// See [`IntoStdError`] for an example.
    pub fn into_inner(self) -> S {
        *self.stream
    }
}

impl<S> std::fmt::Debug for IntoStdError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntoStdError").finish_non_exhaustive()
    }
}

impl<S> std::fmt::Display for IntoStdError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the socket holds received data not read yet (or a receive in flight); \
             read it before into_std",
        )
    }
}

impl<S> std::error::Error for IntoStdError<S> {}

impl<S> From<IntoStdError<S>> for io::Error {
    fn from(e: IntoStdError<S>) -> io::Error {
        io::Error::new(io::ErrorKind::WouldBlock, e.to_string())
    }
}

/// What both stream types share: shutdown, readiness, the fd, and the futures-io traits (reads
/// through `recv::Recv`, completion-based on io_uring).
///
/// `$connected_pair` is hidden doctest code that makes two connected streams `a` and `b` of `$ty`
/// inside an async block, so that each type's docs show its own type.
macro_rules! stream_io_impls {
    ($ty:ty, $io:ty, $connected_pair:literal) => {
        impl $ty {
            /// Registers `socket` with the current context, with RECVs if it runs io_uring.
            fn wrap(socket: $io) -> std::io::Result<$ty> {
                Ok(Self {
                    inner: $crate::io::Async::new($crate::net::shared_socket::SharedSocket::new(
                        socket,
                    ))?,
                    recv: $crate::net::recv::Recv::for_current_context(),
                })
            }

            /// Shuts down the read half, the write half or both (`shutdown(2)`); the peer sees end of
            /// stream after a write shutdown.
            ///
            /// ```
            /// # use futures::AsyncReadExt;
            /// # let ctx = aioctx::AioContext::new()?;
            /// # ctx.block_on(async {
            #[doc = $connected_pair]
            /// a.shutdown(std::net::Shutdown::Write)?;
            /// let mut rest = Vec::new();
            /// b.read_to_end(&mut rest).await?; // end of stream at once
            /// assert!(rest.is_empty());
            /// # Ok::<_, std::io::Error>(())
            /// # })?;
            /// # Ok::<(), std::io::Error>(())
            /// ```
            pub fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
                self.inner.get_ref().get().shutdown(how)
            }

            /// Waits until a read would not block (received bytes are buffered or the socket is
            /// readable).
            ///
            /// ```
            /// # use futures::AsyncWriteExt;
            /// # let ctx = aioctx::AioContext::new()?;
            /// # ctx.block_on(async {
            #[doc = $connected_pair]
            /// a.write_all(b"x").await?;
            /// b.readable().await?;
            /// # Ok::<_, std::io::Error>(())
            /// # })?;
            /// # Ok::<(), std::io::Error>(())
            /// ```
            pub async fn readable(&self) -> std::io::Result<()> {
                std::future::poll_fn(|cx| self.recv.poll_readable(cx, &self.inner)).await
            }

            /// Waits until a write would not block.
            ///
            /// ```
            /// # let ctx = aioctx::AioContext::new()?;
            /// # ctx.block_on(async {
            #[doc = $connected_pair]
            /// a.writable().await?; // a fresh socket has buffer space
            /// # let _ = &mut b;
            /// # Ok::<_, std::io::Error>(())
            /// # })?;
            /// # Ok::<(), std::io::Error>(())
            /// ```
            pub async fn writable(&self) -> std::io::Result<()> {
                self.inner.writable().await
            }

            /// Receives bytes into `buf` without consuming them: the next read returns them again.
            /// Waits until at least one byte (or end of stream, then 0) is there.
            ///
            /// ```
            /// # use futures::{AsyncReadExt, AsyncWriteExt};
            /// # let ctx = aioctx::AioContext::new()?;
            /// # ctx.block_on(async {
            #[doc = $connected_pair]
            /// a.write_all(b"hello").await?;
            /// let mut peeked = [0; 5];
            /// let n = b.peek(&mut peeked).await?;
            /// assert_eq!(&peeked[..n], &b"hello"[..n]);
            /// let mut read = [0; 5];
            /// b.read_exact(&mut read).await?;
            /// assert_eq!(&read, b"hello"); // peeking consumed nothing
            /// # Ok::<_, std::io::Error>(())
            /// # })?;
            /// # Ok::<(), std::io::Error>(())
            /// ```
            pub async fn peek(&self, buf: &mut [u8]) -> std::io::Result<usize> {
                std::future::poll_fn(|cx| self.recv.poll_peek::<$io>(cx, &self.inner, buf)).await
            }

            /// The std stream, deregistered from the context (still non-blocking). On the io_uring
            /// backend a stream may hold received bytes not read yet, or a receive in flight; then
            /// the stream comes back in the error (see [`IntoStdError`](crate::net::IntoStdError)) so
            /// nothing is lost.
            ///
            /// ```
            /// # let ctx = aioctx::AioContext::new()?;
            /// # ctx.block_on(async {
            #[doc = $connected_pair]
            /// let std_stream = a.into_std()?; // nothing read yet: nothing buffered
            /// std_stream.set_nonblocking(false)?;
            /// # let _ = &mut b;
            /// # Ok::<_, std::io::Error>(())
            /// # })?;
            /// # Ok::<(), std::io::Error>(())
            /// ```
            pub fn into_std(self) -> Result<$io, $crate::net::IntoStdError<$ty>> {
                if self.recv.holds_data() || !self.inner.get_ref().is_unique() {
                    return Err($crate::net::IntoStdError {
                        stream: Box::new(self),
                    });
                }
                let Self { inner, recv } = self;
                drop(recv);
                Ok(inner
                    .into_inner()
                    .into_inner()
                    .expect("no operation holds the socket: checked above"))
            }
        }

        impl std::os::fd::AsRawFd for $ty {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                self.inner.as_raw_fd()
            }
        }

        impl std::os::fd::AsFd for $ty {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                self.inner.as_fd()
            }
        }

        impl futures::io::AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_read(cx, buf)
            }

            fn poll_read_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_read_vectored(cx, bufs)
            }
        }

        /// Reads through a shared reference: one task may read while another writes the same
        /// stream, with no lock (at most one reader at a time: the read side keeps one waker).
        impl futures::io::AsyncRead for &$ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let mut bufs = [std::io::IoSliceMut::new(buf)];
                self.recv.poll_read::<$io>(cx, &self.inner, &mut bufs)
            }

            fn poll_read_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.recv.poll_read::<$io>(cx, &self.inner, bufs)
            }
        }

        impl futures::io::AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_write_vectored(cx, bufs)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut &*self).poll_flush(cx)
            }

            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut &*self).poll_close(cx)
            }
        }

        /// Writes through a shared reference (see the `AsyncRead` impl for `&` this type).
        impl futures::io::AsyncWrite for &$ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &self.inner).poll_write_vectored(cx, bufs)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut &self.inner).poll_flush(cx)
            }

            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(
                    self.inner
                        .get_ref()
                        .get()
                        .shutdown(std::net::Shutdown::Write),
                )
            }
        }
    };
}
pub(crate) use stream_io_impls;

/// The connections a listener accepts, as a [`Stream`](futures::Stream) (see
/// [`TcpListener::incoming`] and [`UnixListener::incoming`]). It never ends; an accept error is an item.
#[must_use = "streams do nothing unless polled"]
pub struct Incoming<'a, L> {
    listener: &'a L,
}

impl<L> std::fmt::Debug for Incoming<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

/// Runs `attempt` (one non-blocking accept or receive on `io`) until it does not fail with
/// `WouldBlock`, waiting for readability in between; `Pending` when it has to wait.
fn poll_read_with<T: std::os::fd::AsRawFd, S>(
    io: &Async<T>,
    cx: &mut std::task::Context<'_>,
    mut attempt: impl FnMut(&T) -> io::Result<S>,
) -> std::task::Poll<io::Result<S>> {
    loop {
        match attempt(io.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match io.poll_readable(cx) {
                std::task::Poll::Ready(Ok(())) => continue,
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            },
            other => return std::task::Poll::Ready(other),
        }
    }
}
