//! Unix-domain stream sockets.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::SocketAddr;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

use super::{connect, stream_io_impls};
use crate::io::Async;

/// A Unix-domain listener on the current context.
#[derive(Debug)]
pub struct UnixListener {
    inner: Async<std::os::unix::net::UnixListener>,
}

impl UnixListener {
    /// Binds to `path` (which must not exist).
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
    pub async fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (stream, peer) = self.inner.read_with(|l| l.accept()).await?;
        Ok((UnixStream::wrap(Async::new(stream)?), peer))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }
}

impl AsRawFd for UnixListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// A Unix-domain stream on the current context.
#[derive(Debug)]
pub struct UnixStream {
    inner: Async<std::os::unix::net::UnixStream>,
    recv: super::recv::Recv,
}

impl UnixStream {
    /// Connects to the socket at `path` without blocking the loop.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
        let s = connect(socket, &SockAddr::unix(path)?).await?;
        let stream =
            std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(s.into_inner()));
        Ok(UnixStream::wrap(Async::new(stream)?))
    }

    /// A connected pair.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        Ok((
            UnixStream::wrap(Async::new(a)?),
            UnixStream::wrap(Async::new(b)?),
        ))
    }

    /// Wraps a connected std stream (made non-blocking).
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        Ok(UnixStream::wrap(Async::new(stream)?))
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().peer_addr()
    }
}

stream_io_impls!(UnixStream, std::os::unix::net::UnixStream);
