//! TCP and Unix-domain sockets on the current context: [`TcpListener`], [`TcpStream`],
//! [`UnixListener`], [`UnixStream`]. Streams implement `futures::io::AsyncRead` and `AsyncWrite`.
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

mod recv;
mod tcp;
mod unix;

pub use tcp::{TcpListener, TcpStream};
pub use unix::{UnixListener, UnixStream};

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

/// What both stream types share: shutdown, readiness, the fd, and the futures-io traits (reads
/// through [`recv::Recv`], completion-based on io_uring).
///
/// `$connected_pair` is hidden doctest code that makes two connected streams `a` and `b` of `$ty`
/// inside an async block, so that each type's docs show its own type.
macro_rules! stream_io_impls {
    ($ty:ty, $io:ty, $connected_pair:literal) => {
        impl $ty {
            /// Wraps a registered socket, with RECVs if the current context runs io_uring.
            fn wrap(inner: $crate::io::Async<$io>) -> $ty {
                Self {
                    inner,
                    recv: $crate::net::recv::Recv::for_current_context(),
                }
            }

            /// Shuts down reading, writing or both.
            ///
            /// Shutting down writing sends end-of-stream while the stream can still read (`a` and `b` are
            /// the two ends of a connection):
            ///
            /// ```
            /// use futures::AsyncReadExt;
            /// # let ctx = aioctx::AioContext::new()?;
            /// # ctx.block_on(async {
            #[doc = $connected_pair]
            /// a.shutdown(std::net::Shutdown::Write)?;
            /// let mut rest = Vec::new();
            /// b.read_to_end(&mut rest).await?; // ends: `a` will write no more
            /// assert!(rest.is_empty());
            /// # Ok::<_, std::io::Error>(())
            /// # })?;
            /// # Ok::<(), std::io::Error>(())
            /// ```
            pub fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
                self.inner.get_ref().shutdown(how)
            }

            /// Waits until readable: data is buffered or the socket is readable (or hung up, or in
            /// error).
            ///
            /// With `a` and `b` the two ends of a connection:
            ///
            /// ```
            /// use futures::{AsyncReadExt, AsyncWriteExt};
            /// # let ctx = aioctx::AioContext::new()?;
            /// # ctx.block_on(async {
            #[doc = $connected_pair]
            /// a.write_all(b"x").await?;
            /// b.readable().await?; // a read now returns at once
            /// let mut buf = [0; 1];
            /// assert_eq!(b.read(&mut buf).await?, 1);
            /// # Ok::<_, std::io::Error>(())
            /// # })?;
            /// # Ok::<(), std::io::Error>(())
            /// ```
            pub async fn readable(&self) -> std::io::Result<()> {
                std::future::poll_fn(|cx| self.recv.poll_readable(cx, &self.inner)).await
            }

            /// Waits until writable.
            ///
            /// With `a` and `b` the two ends of a connection:
            ///
            /// ```
            /// use futures::AsyncWriteExt;
            /// # let ctx = aioctx::AioContext::new()?;
            /// # ctx.block_on(async {
            #[doc = $connected_pair]
            /// a.writable().await?; // a fresh stream has room in its send buffer
            /// assert_eq!(a.write(b"x").await?, 1);
            /// # Ok::<_, std::io::Error>(())
            /// # })?;
            /// # Ok::<(), std::io::Error>(())
            /// ```
            pub async fn writable(&self) -> std::io::Result<()> {
                self.inner.writable().await
            }
        }

        impl std::os::fd::AsRawFd for $ty {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                self.inner.as_raw_fd()
            }
        }

        impl futures::io::AsyncRead for $ty {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let this = &mut *self;
                let mut bufs = [std::io::IoSliceMut::new(buf)];
                this.recv.poll_read(cx, &mut this.inner, &mut bufs)
            }

            fn poll_read_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let this = &mut *self;
                this.recv.poll_read(cx, &mut this.inner, bufs)
            }
        }

        impl futures::io::AsyncWrite for $ty {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(self.inner.get_ref().shutdown(std::net::Shutdown::Write))
            }
        }
    };
}
pub(crate) use stream_io_impls;
