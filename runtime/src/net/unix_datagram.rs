//! Unix-domain datagram sockets.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;
use std::path::Path;

use socket2::SockAddr;

use super::recv_msg::DatagramRecv;
use super::shared_socket::SharedSocket;
use super::IntoStdError;
use crate::context::current;
use crate::io::Async;

/// A Unix-domain datagram socket on the current context.
///
/// Its methods take `&self`: one task may receive while another sends (share it in an `Rc`); one
/// task at a time should wait to receive. On an io_uring context receives are completion-based, as
/// for [`UdpSocket`](super::UdpSocket) (see the [module docs](super)). Datagrams keep their
/// boundaries: a receive returns one datagram, truncated to the buffer as `recvfrom(2)` truncates.
///
/// ```
/// use aioctx::net::UnixDatagram;
///
/// let dir = std::env::temp_dir().join(format!("aioctx-doc-dgram-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// std::fs::create_dir(&dir)?;
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let server = UnixDatagram::bind(dir.join("server"))?;
///     let client = UnixDatagram::bind(dir.join("client"))?;
///     client.send_to(b"ping", dir.join("server")).await?;
///     let mut buf = [0; 64];
///     let (n, from) = server.recv_from(&mut buf).await?;
///     assert_eq!(&buf[..n], b"ping");
///     let from = from.as_pathname().expect("the client bound a path");
///     server.send_to(b"pong", from).await?;
///     let (n, _) = client.recv_from(&mut buf).await?;
///     assert_eq!(&buf[..n], b"pong");
///     Ok::<_, std::io::Error>(())
/// })?;
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct UnixDatagram {
    inner: Async<SharedSocket<std::os::unix::net::UnixDatagram>>,
    recv: DatagramRecv,
    /// [`shutdown`](UnixDatagram::shutdown) shut down receiving: a receive that finds nothing
    /// returns 0 bytes (see `receive_once`).
    read_shutdown: Cell<bool>,
}

/// The sender's address a RECVMSG reported, as std's type.
fn sender(addr: &SockAddr) -> io::Result<SocketAddr> {
    if let Some(path) = addr.as_pathname() {
        return SocketAddr::from_pathname(path);
    }
    if let Some(name) = addr.as_abstract_namespace() {
        return SocketAddr::from_abstract_name(name);
    }
    // An unbound sender (or end of file after a read shutdown).
    unnamed()
}

/// An unnamed address (what an unbound sender has), made without a syscall where std allows.
fn unnamed() -> io::Result<SocketAddr> {
    match SocketAddr::from_pathname("") {
        Ok(unnamed) if unnamed.is_unnamed() => Ok(unnamed),
        _ => std::os::unix::net::UnixDatagram::unbound()?.local_addr(),
    }
}

/// One non-blocking receive attempt for the readiness path. After a read shutdown, Linux reports
/// the socket readable while its non-blocking receives fail with `EAGAIN` once the queue is empty
/// (a blocking `recv(2)` returns 0 there): waiting for readiness would spin, so an empty queue is
/// a 0-byte receive from an unnamed sender, as the blocking call reports it. (A RECVMSG on the ring
/// completes with `EAGAIN` there, which sends the socket to this path.)
fn receive_once<R>(
    read_shutdown: bool,
    attempt: io::Result<(usize, R)>,
    empty: impl FnOnce() -> io::Result<R>,
) -> io::Result<(usize, R)> {
    match attempt {
        Err(e) if read_shutdown && e.kind() == io::ErrorKind::WouldBlock => Ok((0, empty()?)),
        other => other,
    }
}

impl UnixDatagram {
    /// Binds a socket to `path` (which must not exist). The socket file stays after the socket is
    /// dropped: remove it when done.
    ///
    /// Errors: outside a context, `NotConnected` (and no file is created); an existing path,
    /// `AddrInUse`.
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-{}-dgram-bind", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let err = aioctx::net::UnixDatagram::bind(&path).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::NotConnected); // no context yet
    /// let ctx = aioctx::AioContext::new()?;
    /// let _guard = ctx.enter();
    /// let socket = aioctx::net::UnixDatagram::bind(&path)?;
    /// assert_eq!(socket.local_addr()?.as_pathname(), Some(path.as_path()));
    /// assert!(aioctx::net::UnixDatagram::bind(&path).is_err()); // the path exists now
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixDatagram> {
        if current::with_current(|_| ()).is_none() {
            return Err(crate::sys::outside_context("aioctx::net::UnixDatagram"));
        }
        UnixDatagram::from_std(std::os::unix::net::UnixDatagram::bind(path)?)
    }

    /// A socket bound to no path. It can send (with [`send_to`](Self::send_to), or after
    /// [`connect`](Self::connect)); its receivers see an unnamed sender, which they cannot answer.
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-{}-unbound", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let server = aioctx::net::UnixDatagram::bind(&path)?;
    ///     let client = aioctx::net::UnixDatagram::unbound()?;
    ///     client.send_to(b"anonymous", &path).await?;
    ///     let mut buf = [0; 16];
    ///     let (n, from) = server.recv_from(&mut buf).await?;
    ///     assert_eq!(&buf[..n], b"anonymous");
    ///     assert!(from.is_unnamed()); // nowhere to reply to
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn unbound() -> io::Result<UnixDatagram> {
        UnixDatagram::from_std(std::os::unix::net::UnixDatagram::unbound()?)
    }

    /// A connected pair of unnamed sockets.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = aioctx::net::UnixDatagram::pair()?;
    /// a.send(b"one").await?;
    /// a.send(b"two").await?;
    /// let mut buf = [0; 8];
    /// assert_eq!(b.recv(&mut buf).await?, 3); // one datagram at a time
    /// assert_eq!(&buf[..3], b"one");
    /// assert_eq!(b.recv(&mut buf).await?, 3);
    /// assert_eq!(&buf[..3], b"two");
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
        let (a, b) = std::os::unix::net::UnixDatagram::pair()?;
        Ok((UnixDatagram::from_std(a)?, UnixDatagram::from_std(b)?))
    }

    /// Takes over a std socket (made non-blocking) on the current context.
    ///
    /// ```
    /// let (std_a, std_b) = std::os::unix::net::UnixDatagram::pair()?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let a = aioctx::net::UnixDatagram::from_std(std_a)?;
    ///     std_b.send(b"hi")?; // the other end stays a blocking std socket
    ///     let mut buf = [0; 4];
    ///     assert_eq!(a.recv(&mut buf).await?, 2);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_std(socket: std::os::unix::net::UnixDatagram) -> io::Result<UnixDatagram> {
        let inner = Async::new(SharedSocket::new(socket))?;
        Ok(UnixDatagram {
            inner,
            recv: DatagramRecv::for_current_context(),
            read_shutdown: Cell::new(false),
        })
    }

    /// The std socket, deregistered from the context (still non-blocking). On the io_uring backend a
    /// socket may hold a received datagram, or a receive in flight; then the socket comes back in
    /// the error (see [`IntoStdError`]) so that nothing is lost.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let _guard = ctx.enter();
    /// let (a, _b) = aioctx::net::UnixDatagram::pair()?;
    /// let std_a = a.into_std()?; // nothing received yet: nothing held
    /// std_a.set_nonblocking(false)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_std(self) -> Result<std::os::unix::net::UnixDatagram, IntoStdError<UnixDatagram>> {
        if self.recv.holds_data() || !self.inner.get_ref().is_unique() {
            return Err(IntoStdError {
                stream: Box::new(self),
            });
        }
        let UnixDatagram { inner, recv, .. } = self;
        drop(recv);
        Ok(inner
            .into_inner()
            .into_inner()
            .expect("no operation holds the socket: checked above"))
    }

    /// The std socket, shared with a receive in flight (for its own methods).
    fn socket(&self) -> &std::os::unix::net::UnixDatagram {
        self.inner.get_ref().get()
    }

    /// Sets the peer to the socket at `path`: [`send`](Self::send) goes there, and this socket
    /// receives only from there. Connecting a Unix socket does not wait, so this is synchronous.
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-{}-dgram-peer", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let server = aioctx::net::UnixDatagram::bind(&path)?;
    ///     let client = aioctx::net::UnixDatagram::unbound()?;
    ///     client.connect(&path)?;
    ///     assert_eq!(client.peer_addr()?.as_pathname(), Some(path.as_path()));
    ///     client.send(b"hello").await?;
    ///     let mut buf = [0; 8];
    ///     assert_eq!(server.recv(&mut buf).await?, 5);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn connect(&self, path: impl AsRef<Path>) -> io::Result<()> {
        self.socket().connect(path)
    }

    /// Sends `buf` as one datagram to the socket at `path`; returns the bytes sent.
    ///
    /// A receiver whose queue is full makes the send wait. Linux reports an unconnected sender
    /// writable regardless, so such a send retries at each loop iteration until the receiver
    /// catches up; a [`connect`](Self::connect)ed sender waits without retrying.
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-{}-dgram-send", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let server = aioctx::net::UnixDatagram::bind(&path)?;
    ///     let client = aioctx::net::UnixDatagram::unbound()?;
    ///     assert_eq!(client.send_to(b"to a path", &path).await?, 9);
    ///     let mut buf = [0; 16];
    ///     assert_eq!(server.recv(&mut buf).await?, 9);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn send_to(&self, buf: &[u8], path: impl AsRef<Path>) -> io::Result<usize> {
        let path = path.as_ref();
        self.inner.write_with(|s| s.get().send_to(buf, path)).await
    }

    /// Receives one datagram into `buf`; returns its length and its sender. A datagram longer than
    /// `buf` is truncated to `buf.len()` bytes and the rest discarded; an empty datagram is a 0-byte
    /// receive.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = aioctx::net::UnixDatagram::pair()?;
    /// a.send(b"truncated").await?;
    /// a.send(b"").await?;
    /// let mut buf = [0; 5];
    /// let (n, from) = b.recv_from(&mut buf).await?;
    /// assert_eq!(&buf[..n], b"trunc");
    /// assert!(from.is_unnamed()); // a socketpair end has no path
    /// assert_eq!(b.recv_from(&mut buf).await?.0, 0); // the empty datagram, not "ated"
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let shut = &self.read_shutdown;
        poll_fn(|cx| {
            self.recv
                .poll_recv(cx, &self.inner, buf, false, sender, |s, b| {
                    receive_once(shut.get(), s.recv_from(b), unnamed)
                })
        })
        .await
    }

    /// Sends `buf` as one datagram to the peer (see [`connect`](Self::connect) and
    /// [`pair`](Self::pair)).
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = aioctx::net::UnixDatagram::pair()?;
    /// assert_eq!(a.send(b"hi").await?, 2);
    /// let mut buf = [0; 2];
    /// assert_eq!(b.recv(&mut buf).await?, 2);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_with(|s| s.get().send(buf)).await
    }

    /// Receives one datagram into `buf` (truncated like [`recv_from`](Self::recv_from)).
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = aioctx::net::UnixDatagram::pair()?;
    /// b.send(b"reply").await?;
    /// let mut buf = [0; 8];
    /// let n = a.recv(&mut buf).await?;
    /// assert_eq!(&buf[..n], b"reply");
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let ignore = |_: &SockAddr| Ok(());
        let shut = &self.read_shutdown;
        poll_fn(|cx| {
            self.recv
                .poll_recv(cx, &self.inner, buf, false, ignore, |s, b| {
                    receive_once(shut.get(), s.recv(b).map(|n| (n, ())), || Ok(()))
                })
        })
        .await
        .map(|(n, ())| n)
    }

    /// The bound address (unnamed for an unbound socket or a socketpair end).
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UnixDatagram::unbound()?;
    /// assert!(socket.local_addr()?.is_unnamed());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket().local_addr()
    }

    /// The peer's address; `NotConnected` if there is none.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let (a, _b) = aioctx::net::UnixDatagram::pair()?;
    /// assert!(a.peer_addr()?.is_unnamed()); // a socketpair end has a peer, without a path
    /// let lone = aioctx::net::UnixDatagram::unbound()?;
    /// assert_eq!(lone.peer_addr().unwrap_err().kind(), std::io::ErrorKind::NotConnected);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.socket().peer_addr()
    }

    /// Shuts down receiving, sending or both (`shutdown(2)`). After a read shutdown, receives
    /// return the datagrams already queued, then 0 bytes at once (as a blocking `recv(2)` does);
    /// after a write shutdown, sends fail with `BrokenPipe`.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = aioctx::net::UnixDatagram::pair()?;
    /// b.send(b"queued").await?;
    /// a.shutdown(std::net::Shutdown::Both)?;
    /// let mut buf = [0; 8];
    /// assert_eq!(a.recv(&mut buf).await?, 6); // what was queued before
    /// assert_eq!(a.recv(&mut buf).await?, 0); // then nothing more, at once
    /// assert_eq!(a.send(b"x").await.unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.socket().shutdown(how)?;
        if how != std::net::Shutdown::Write {
            self.read_shutdown.set(true);
        }
        Ok(())
    }
}

impl AsRawFd for UnixDatagram {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl AsFd for UnixDatagram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}
