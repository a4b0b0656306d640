//! Unix-domain stream sockets.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{Domain, SockAddr, Socket, Type};

use super::shared_socket::SharedSocket;
use super::{connect, poll_read_with, stream_io_impls, Incoming};
use crate::io::Async;

/// A Unix-domain listener on the current context.
///
/// ```
/// use futures::{AsyncReadExt, AsyncWriteExt};
/// use aioctx::net::{UnixListener, UnixStream};
///
/// let path = std::env::temp_dir().join(format!("aioctx-doc-{}-listener.sock", std::process::id()));
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let listener = UnixListener::bind(&path)?;
///     let mut client = UnixStream::connect(&path).await?;
///     let (mut server_side, _) = listener.accept().await?;
///     client.write_all(b"ping").await?;
///     let mut buf = [0; 4];
///     server_side.read_exact(&mut buf).await?;
///     assert_eq!(&buf, b"ping");
///     Ok::<_, std::io::Error>(())
/// })?;
/// std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct UnixListener {
    inner: Async<std::os::unix::net::UnixListener>,
}

impl UnixListener {
    /// Binds to `path` (which must not exist).
    ///
    /// The socket file stays after the listener is dropped; remove it when done:
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-{}-bind.sock", std::process::id()));
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let listener = aioctx::net::UnixListener::bind(&path)?;
    /// assert!(aioctx::net::UnixListener::bind(&path).is_err()); // the path exists now
    /// drop(listener);
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        UnixListener::from_std(std::os::unix::net::UnixListener::bind(path)?)
    }

    /// Takes over a listening std socket (made non-blocking) on the current context.
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-{}.sock", std::process::id()));
    /// let std_listener = std::os::unix::net::UnixListener::bind(&path)?;
    /// aioctx::AioContext::new()?.block_on(async {
    ///     let listener = aioctx::net::UnixListener::from_std(std_listener)?;
    ///     let client = aioctx::net::UnixStream::connect(&path).await?;
    ///     let (_server_side, _) = listener.accept().await?;
    ///     drop(client);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        Ok(UnixListener {
            inner: Async::new(listener)?,
        })
    }

    /// Accepts a connection.
    ///
    /// ```
    /// use aioctx::net::{UnixListener, UnixStream};
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-{}-accept.sock", std::process::id()));
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let listener = UnixListener::bind(&path)?;
    /// let _client = UnixStream::connect(&path).await?;
    /// let (conn, peer) = listener.accept().await?;
    /// assert!(peer.is_unnamed()); // the client did not bind a path
    /// assert_eq!(conn.peer_addr()?.as_pathname(), None);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (stream, peer) = self.inner.read_with(|l| l.accept()).await?;
        Ok((UnixStream::wrap(stream)?, peer))
    }

    /// The bound address.
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-{}-addr.sock", std::process::id()));
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let listener = aioctx::net::UnixListener::bind(&path)?;
    /// assert_eq!(listener.local_addr()?.as_pathname(), Some(path.as_path()));
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }
}

impl UnixListener {
    /// The accepted connections as a [`Stream`](futures::Stream).
    ///
    /// ```
    /// use futures::StreamExt;
    /// use aioctx::net::{UnixListener, UnixStream};
    /// let dir = std::env::temp_dir().join(format!("aioctx-doc-incoming-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// std::fs::create_dir(&dir)?;
    /// let path = dir.join("sock");
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let listener = UnixListener::bind(&path)?;
    ///     let _client = UnixStream::connect(&path).await?;
    ///     let conn = listener.incoming().next().await.expect("never ends")?;
    ///     assert!(conn.peer_addr()?.is_unnamed());
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn incoming(&self) -> Incoming<'_, UnixListener> {
        Incoming { listener: self }
    }

    /// The std listener, deregistered from the context (still non-blocking).
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("aioctx-doc-unix-into-std-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// std::fs::create_dir(&dir)?;
    /// let ctx = aioctx::AioContext::new()?;
    /// let _guard = ctx.enter();
    /// let listener = aioctx::net::UnixListener::bind(dir.join("sock"))?;
    /// let std_listener = listener.into_std()?;
    /// assert!(std_listener.local_addr()?.as_pathname().is_some());
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_std(self) -> io::Result<std::os::unix::net::UnixListener> {
        Ok(self.inner.into_inner())
    }
}

impl futures::Stream for Incoming<'_, UnixListener> {
    type Item = io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        poll_read_with(&self.listener.inner, cx, |l| l.accept())
            .map(|accepted| Some(accepted.and_then(|(stream, _)| UnixStream::wrap(stream))))
    }
}

impl AsRawFd for UnixListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl AsFd for UnixListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// A Unix-domain stream on the current context.
///
/// ```
/// use futures::{AsyncReadExt, AsyncWriteExt};
///
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let (mut a, mut b) = aioctx::net::UnixStream::pair()?;
///     a.write_all(b"hello").await?;
///     a.close().await?; // shuts down writing: b reads to the end
///     let mut got = Vec::new();
///     b.read_to_end(&mut got).await?;
///     assert_eq!(got, b"hello");
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct UnixStream {
    inner: Async<SharedSocket<std::os::unix::net::UnixStream>>,
    recv: super::recv::Recv,
}

impl UnixStream {
    /// Connects to the socket at `path` without blocking the loop.
    ///
    /// ```
    /// use aioctx::net::{UnixListener, UnixStream};
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-{}-connect.sock", std::process::id()));
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let listener = UnixListener::bind(&path)?;
    /// let stream = UnixStream::connect(&path).await?;
    /// assert_eq!(stream.peer_addr()?.as_pathname(), Some(path.as_path()));
    /// # drop(listener);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
        let s = connect(socket, &SockAddr::unix(path)?).await?;
        let stream =
            std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(s.into_inner()));
        UnixStream::wrap(stream)
    }

    /// A connected pair.
    ///
    /// ```
    /// use futures::{AsyncReadExt, AsyncWriteExt};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (mut a, mut b) = aioctx::net::UnixStream::pair()?;
    /// b.write_all(b"pong").await?;
    /// let mut buf = [0; 4];
    /// a.read_exact(&mut buf).await?;
    /// assert_eq!(&buf, b"pong");
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        Ok((UnixStream::wrap(a)?, UnixStream::wrap(b)?))
    }

    /// Wraps a connected std stream (made non-blocking).
    ///
    /// E.g. one end of a socketpair made before the context, the other end staying blocking:
    ///
    /// ```
    /// use std::io::Write;
    /// use futures::AsyncReadExt;
    ///
    /// let (std_a, mut std_b) = std::os::unix::net::UnixStream::pair()?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let mut a = aioctx::net::UnixStream::from_std(std_a)?;
    ///     std_b.write_all(b"hi")?;
    ///     let mut buf = [0; 2];
    ///     a.read_exact(&mut buf).await?;
    ///     assert_eq!(&buf, b"hi");
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        UnixStream::wrap(stream)
    }

    /// The peer's address.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let (a, _b) = aioctx::net::UnixStream::pair()?;
    /// assert!(a.peer_addr()?.is_unnamed()); // socketpair ends have no path
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().get().peer_addr()
    }
}

stream_io_impls!(
    UnixStream,
    std::os::unix::net::UnixStream,
    "# let (mut a, mut b) = aioctx::net::UnixStream::pair()?;"
);
