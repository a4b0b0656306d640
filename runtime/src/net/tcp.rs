//! TCP sockets.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::addr::{resolve, resolve_now, ToSocketAddrs};
use super::shared_socket::SharedSocket;
use super::{connect, poll_read_with, stream_io_impls, Incoming};
use crate::io::Async;

/// A TCP listener on the current context.
///
/// ```
/// use futures::{AsyncReadExt, AsyncWriteExt};
/// use aioctx::net::{TcpListener, TcpStream};
///
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let listener = TcpListener::bind("127.0.0.1:0")?;
///     let mut client = TcpStream::connect(listener.local_addr()?).await?;
///     let (mut server_side, _peer) = listener.accept().await?;
///     client.write_all(b"ping").await?;
///     let mut buf = [0; 4];
///     server_side.read_exact(&mut buf).await?;
///     assert_eq!(&buf, b"ping");
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct TcpListener {
    inner: Async<std::net::TcpListener>,
}

impl TcpListener {
    /// Binds to `addr` (the first address it resolves to that binds) with `SO_REUSEADDR`.
    ///
    /// `bind` is synchronous, like `std`'s: a host name (`"localhost:8080"`) is resolved on the
    /// context's blocking pool while the caller waits, and no iteration of the loop runs meanwhile. A
    /// literal address needs no resolver. To keep the loop running during a slow lookup, resolve
    /// first with [`lookup_host`](super::lookup_host)`.await` and bind an address it returns.
    ///
    /// Port 0 lets the kernel pick a free port:
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let listener = aioctx::net::TcpListener::bind("127.0.0.1:0")?;
    /// assert_ne!(listener.local_addr()?.port(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        let mut last = None;
        for addr in resolve_now(&addr)? {
            let socket = Socket::new(
                Domain::for_address(addr),
                Type::STREAM.cloexec(),
                Some(Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            match socket.bind(&addr.into()).and_then(|()| socket.listen(1024)) {
                Ok(()) => {
                    return Ok(TcpListener {
                        inner: Async::new(std::net::TcpListener::from(socket))?,
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no address to bind to")
        }))
    }

    /// Takes over a listening std socket (made non-blocking) on the current context, e.g. one
    /// bound before the IOThread that serves it existed, or inherited from a supervisor.
    ///
    /// ```
    /// let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let addr = std_listener.local_addr()?;
    /// aioctx::AioContext::new()?.block_on(async move {
    ///     let listener = aioctx::net::TcpListener::from_std(std_listener)?;
    ///     assert_eq!(listener.local_addr()?, addr);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        Ok(TcpListener {
            inner: Async::new(listener)?,
        })
    }

    /// Accepts a connection.
    ///
    /// The address that comes with the connection is the client's:
    ///
    /// ```
    /// use aioctx::net::{TcpListener, TcpStream};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let client = TcpStream::connect(listener.local_addr()?).await?;
    /// let (conn, peer) = listener.accept().await?;
    /// assert_eq!(peer, client.local_addr()?);
    /// assert_eq!(conn.peer_addr()?, peer);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.inner.read_with(|l| l.accept()).await?;
        Ok((TcpStream::wrap(stream)?, peer))
    }

    /// The bound address.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let listener = aioctx::net::TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }
}

impl TcpListener {
    /// The accepted connections as a [`Stream`](futures::Stream).
    ///
    /// ```
    /// use futures::StreamExt;
    /// use aioctx::net::{TcpListener, TcpStream};
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let listener = TcpListener::bind("127.0.0.1:0")?;
    ///     let _client = TcpStream::connect(listener.local_addr()?).await?;
    ///     let mut incoming = listener.incoming();
    ///     let conn = incoming.next().await.expect("never ends")?;
    ///     assert_eq!(conn.local_addr()?, listener.local_addr()?);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn incoming(&self) -> Incoming<'_, TcpListener> {
        Incoming { listener: self }
    }

    /// The std listener, deregistered from the context (still non-blocking).
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let _guard = ctx.enter();
    /// let listener = aioctx::net::TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// let std_listener = listener.into_std()?;
    /// assert_eq!(std_listener.local_addr()?, addr);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_std(self) -> io::Result<std::net::TcpListener> {
        Ok(self.inner.into_inner())
    }
}

impl futures::Stream for Incoming<'_, TcpListener> {
    type Item = io::Result<TcpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        poll_read_with(&self.listener.inner, cx, |l| l.accept())
            .map(|accepted| Some(accepted.and_then(|(stream, _)| TcpStream::wrap(stream))))
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl AsFd for TcpListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// A TCP connection on the current context.
///
/// ```
/// use futures::{AsyncReadExt, AsyncWriteExt};
/// use aioctx::net::{TcpListener, TcpStream};
///
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let listener = TcpListener::bind("127.0.0.1:0")?;
///     let mut client = TcpStream::connect(listener.local_addr()?).await?;
///     let (mut server_side, _) = listener.accept().await?;
///     server_side.write_all(b"hello").await?;
///     server_side.close().await?; // shuts down writing: the client reads to the end
///     let mut got = Vec::new();
///     client.read_to_end(&mut got).await?;
///     assert_eq!(got, b"hello");
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct TcpStream {
    inner: Async<SharedSocket<std::net::TcpStream>>,
    recv: super::recv::Recv,
}

impl TcpStream {
    /// Connects to `addr` (trying each resolved address in turn) without blocking the loop: a host
    /// name is resolved on the context's blocking pool (see [`ToSocketAddrs`]), a literal address
    /// needs no resolver.
    ///
    /// ```
    /// use aioctx::net::{TcpListener, TcpStream};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let stream = TcpStream::connect(listener.local_addr()?).await?;
    /// assert_eq!(stream.peer_addr()?, listener.local_addr()?);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in resolve(&addr).await? {
            let socket = Socket::new(
                Domain::for_address(addr),
                Type::STREAM.cloexec(),
                Some(Protocol::TCP),
            )?;
            match connect(socket, &SockAddr::from(addr)).await {
                Ok(s) => {
                    let stream = std::net::TcpStream::from(s.into_inner());
                    return TcpStream::wrap(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to")
        }))
    }

    /// Wraps a connected std stream (made non-blocking).
    ///
    /// ```
    /// let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let std_stream = std::net::TcpStream::connect(std_listener.local_addr()?)?;
    /// let ctx = aioctx::AioContext::new()?;
    /// let _guard = ctx.enter();
    /// let stream = aioctx::net::TcpStream::from_std(std_stream)?;
    /// assert_eq!(stream.peer_addr()?, std_listener.local_addr()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        TcpStream::wrap(stream)
    }

    /// The peer's address.
    ///
    /// ```
    /// use aioctx::net::{TcpListener, TcpStream};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let client = TcpStream::connect(listener.local_addr()?).await?;
    /// let (server_side, _) = listener.accept().await?;
    /// assert_eq!(client.peer_addr()?, listener.local_addr()?);
    /// assert_eq!(server_side.peer_addr()?, client.local_addr()?);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().get().peer_addr()
    }

    /// The local address.
    ///
    /// ```
    /// use aioctx::net::{TcpListener, TcpStream};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let client = TcpStream::connect(listener.local_addr()?).await?;
    /// let (server_side, _) = listener.accept().await?;
    /// assert_eq!(server_side.local_addr()?, listener.local_addr()?);
    /// assert_eq!(client.local_addr()?, server_side.peer_addr()?);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().get().local_addr()
    }

    /// `TCP_NODELAY`.
    ///
    /// Small writes of a request/response protocol go out at once instead of waiting for Nagle's
    /// algorithm:
    ///
    /// ```
    /// use aioctx::net::{TcpListener, TcpStream};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// # let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let stream = TcpStream::connect(listener.local_addr()?).await?;
    /// stream.set_nodelay(true)?;
    /// assert!(stream.nodelay()?);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.get_ref().get().set_nodelay(on)
    }

    /// Whether `TCP_NODELAY` is set.
    ///
    /// ```
    /// use aioctx::net::{TcpListener, TcpStream};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// # let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let stream = TcpStream::connect(listener.local_addr()?).await?;
    /// assert!(!stream.nodelay()?); // off by default, as for any TCP socket
    /// stream.set_nodelay(true)?;
    /// assert!(stream.nodelay()?);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn nodelay(&self) -> io::Result<bool> {
        self.inner.get_ref().get().nodelay()
    }
}

stream_io_impls!(
    TcpStream,
    std::net::TcpStream,
    "# let listener = aioctx::net::TcpListener::bind(\"127.0.0.1:0\")?;
# let mut a = aioctx::net::TcpStream::connect(listener.local_addr()?).await?;
# let (mut b, _) = listener.accept().await?;"
);
