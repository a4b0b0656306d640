//! TCP sockets.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{connect, stream_io_impls};
use crate::io::Async;

/// A TCP listener on the current context.
#[derive(Debug)]
pub struct TcpListener {
    inner: Async<std::net::TcpListener>,
}

impl TcpListener {
    /// Binds to `addr` (the first address it resolves to that binds) with `SO_REUSEADDR`.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        let mut last = None;
        for addr in addr.to_socket_addrs()? {
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
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.inner.read_with(|l| l.accept()).await?;
        Ok((TcpStream::wrap(Async::new(stream)?), peer))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// A TCP connection on the current context.
#[derive(Debug)]
pub struct TcpStream {
    inner: Async<std::net::TcpStream>,
    recv: super::recv::Recv,
}

impl TcpStream {
    /// Connects to `addr` (trying each resolved address in turn) without blocking the loop.
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in addr.to_socket_addrs()? {
            let socket = Socket::new(
                Domain::for_address(addr),
                Type::STREAM.cloexec(),
                Some(Protocol::TCP),
            )?;
            match connect(socket, &SockAddr::from(addr)).await {
                Ok(s) => {
                    let stream = std::net::TcpStream::from(s.into_inner());
                    return Ok(TcpStream::wrap(Async::new(stream)?));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to")
        }))
    }

    /// Wraps a connected std stream (made non-blocking).
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        Ok(TcpStream::wrap(Async::new(stream)?))
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }

    /// `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.get_ref().set_nodelay(on)
    }

    /// Whether `TCP_NODELAY` is set.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.inner.get_ref().nodelay()
    }
}

stream_io_impls!(TcpStream, std::net::TcpStream);
