//! UDP sockets.

use std::borrow::Borrow;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use socket2::SockAddr;

use super::addr::{resolve, resolve_now, ToSocketAddrs};
use super::recv_msg::DatagramRecv;
use super::shared_socket::SharedSocket;
use super::IntoStdError;
use crate::io::Async;

/// A UDP socket on the current context.
///
/// Its methods take `&self`: one task may receive while another sends on the same socket (share it
/// in an `Rc`). One task at a time should wait to receive: the receive side keeps one waker, so a
/// second task waiting at the same time may not be woken. On an io_uring context receives are completion-based (an `IORING_OP_RECVMSG` on the
/// loop's ring, owned by the socket: a receive future dropped mid-flight loses no datagram); sends
/// are a plain `sendto(2)`, which for UDP completes at once (see the [module docs](super)).
///
/// ```
/// use aioctx::net::UdpSocket;
///
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let server = UdpSocket::bind("127.0.0.1:0")?;
///     let client = UdpSocket::bind("127.0.0.1:0")?;
///     client.send_to(b"ping", server.local_addr()?).await?;
///     let mut buf = [0; 64];
///     let (n, from) = server.recv_from(&mut buf).await?;
///     assert_eq!((&buf[..n], from), (&b"ping"[..], client.local_addr()?));
///     server.send_to(b"pong", from).await?;
///     let (n, _) = client.recv_from(&mut buf).await?;
///     assert_eq!(&buf[..n], b"pong");
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct UdpSocket {
    inner: Async<SharedSocket<std::net::UdpSocket>>,
    recv: DatagramRecv,
}

fn sender(addr: &SockAddr) -> io::Result<SocketAddr> {
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the kernel reported a datagram whose sender is not an IPv4 or IPv6 address",
        )
    })
}

impl UdpSocket {
    /// Binds a UDP socket to `addr` (the first address it resolves to that binds).
    ///
    /// `bind` is synchronous, like `std`'s: a host name (`"localhost:0"`) is resolved on the
    /// context's blocking pool while the caller waits (see
    /// [`TcpListener::bind`](super::TcpListener::bind)). Port 0 lets the kernel pick a free port.
    ///
    /// Errors: outside a context, `NotConnected`; an address in use, `AddrInUse`.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0")?;
    /// assert_ne!(socket.local_addr()?.port(), 0);
    /// let named = aioctx::net::UdpSocket::bind("localhost:0")?; // a name: resolved on the pool
    /// assert!(named.local_addr()?.ip().is_loopback());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        let mut last = None;
        for addr in resolve_now(&addr)? {
            match std::net::UdpSocket::bind(addr) {
                Ok(socket) => return UdpSocket::from_std(socket),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no address to bind to")
        }))
    }

    /// Takes over a std socket (made non-blocking) on the current context.
    ///
    /// ```
    /// let std_socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// let addr = std_socket.local_addr()?;
    /// // Outside a context there is no loop to register with.
    /// let err = aioctx::net::UdpSocket::from_std(std_socket.try_clone()?).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
    /// aioctx::AioContext::new()?.block_on(async move {
    ///     let socket = aioctx::net::UdpSocket::from_std(std_socket)?;
    ///     assert_eq!(socket.local_addr()?, addr);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        let inner = Async::new(SharedSocket::new(socket))?;
        Ok(UdpSocket {
            inner,
            recv: DatagramRecv::for_current_context(),
        })
    }

    /// The std socket, deregistered from the context (still non-blocking). On the io_uring backend a
    /// socket may hold a received datagram not read yet, or a receive in flight; then the socket
    /// comes back in the error (see [`IntoStdError`]) so that nothing is lost.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0")?;
    /// let addr = socket.local_addr()?;
    /// let std_socket = socket.into_std()?; // nothing received yet: nothing held
    /// assert_eq!(std_socket.local_addr()?, addr);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_std(self) -> Result<std::net::UdpSocket, IntoStdError<UdpSocket>> {
        if self.recv.holds_data() || !self.inner.get_ref().is_unique() {
            return Err(IntoStdError {
                stream: Box::new(self),
            });
        }
        let UdpSocket { inner, recv } = self;
        drop(recv);
        Ok(inner
            .into_inner()
            .into_inner()
            .expect("no operation holds the socket: checked above"))
    }

    /// The std socket, shared with a receive in flight (for its own methods).
    fn socket(&self) -> &std::net::UdpSocket {
        self.inner.get_ref().get()
    }

    /// Sends `buf` as one datagram to `target` (a host name is resolved on the context's blocking
    /// pool, and the datagram goes to the first address it resolves to); returns the bytes sent.
    ///
    /// ```
    /// use aioctx::net::UdpSocket;
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// assert_eq!(a.send_to(b"hello", b.local_addr()?).await?, 5);
    /// let mut buf = [0; 16];
    /// let (n, from) = b.recv_from(&mut buf).await?;
    /// assert_eq!((&buf[..n], from), (&b"hello"[..], a.local_addr()?));
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn send_to(&self, buf: &[u8], target: impl ToSocketAddrs) -> io::Result<usize> {
        let addr =
            resolve(&target).await?.into_iter().next().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "no address to send to")
            })?;
        self.inner.write_with(|s| s.get().send_to(buf, addr)).await
    }

    /// Receives one datagram into `buf`; returns its length and its sender. A datagram longer than
    /// `buf` is truncated to `buf.len()` bytes and the rest discarded, as `recvfrom(2)` does; an
    /// empty datagram is a 0-byte receive.
    ///
    /// ```
    /// use aioctx::net::UdpSocket;
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// a.send_to(b"a long datagram", b.local_addr()?).await?;
    /// a.send_to(b"next", b.local_addr()?).await?;
    /// let mut small = [0; 6];
    /// assert_eq!(b.recv_from(&mut small).await?, (6, a.local_addr()?));
    /// assert_eq!(&small, b"a long"); // the rest of that datagram is gone
    /// let (n, _) = b.recv_from(&mut small).await?;
    /// assert_eq!(&small[..n], b"next");
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| {
            self.recv
                .poll_recv(cx, &self.inner, buf, false, sender, |s, b| s.recv_from(b))
        })
        .await
    }

    /// Receives one datagram into `buf` without consuming it: the next receive returns it again.
    ///
    /// ```
    /// use aioctx::net::UdpSocket;
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// a.send_to(b"again", b.local_addr()?).await?;
    /// let mut buf = [0; 16];
    /// let (n, from) = b.peek_from(&mut buf).await?;
    /// assert_eq!((&buf[..n], from), (&b"again"[..], a.local_addr()?));
    /// let (n, _) = b.recv_from(&mut buf).await?; // the same datagram
    /// assert_eq!(&buf[..n], b"again");
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| {
            self.recv
                .poll_recv(cx, &self.inner, buf, true, sender, |s, b| s.peek_from(b))
        })
        .await
    }

    /// Sets the peer: [`send`](Self::send) goes there, and the socket receives only from there.
    /// A host name is resolved on the context's blocking pool, and each address it resolves to is
    /// tried in turn.
    ///
    /// ```
    /// use aioctx::net::UdpSocket;
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// a.connect(b.local_addr()?).await?;
    /// assert_eq!(a.peer_addr()?, b.local_addr()?);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn connect(&self, addr: impl ToSocketAddrs) -> io::Result<()> {
        let mut last = None;
        for addr in resolve(&addr).await? {
            match self.socket().connect(addr) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to")
        }))
    }

    /// Sends `buf` as one datagram to the peer set by [`connect`](Self::connect).
    ///
    /// ```
    /// use aioctx::net::UdpSocket;
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// // Not connected yet: no peer to send to.
    /// assert!(a.send(b"lost").await.is_err());
    /// a.connect(b.local_addr()?).await?;
    /// assert_eq!(a.send(b"hi").await?, 2);
    /// let mut buf = [0; 8];
    /// assert_eq!(b.recv(&mut buf).await?, 2);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_with(|s| s.get().send(buf)).await
    }

    /// Receives one datagram into `buf` (truncated like [`recv_from`](Self::recv_from)); on a
    /// connected socket, only the peer's.
    ///
    /// ```
    /// use aioctx::net::UdpSocket;
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// a.connect(b.local_addr()?).await?;
    /// b.connect(a.local_addr()?).await?;
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
        poll_fn(|cx| {
            self.recv
                .poll_recv(cx, &self.inner, buf, false, ignore, |s, b| {
                    s.recv(b).map(|n| (n, ()))
                })
        })
        .await
        .map(|(n, ())| n)
    }

    /// The bound address.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0")?;
    /// assert_eq!(socket.local_addr()?.ip(), std::net::Ipv4Addr::LOCALHOST);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket().local_addr()
    }

    /// The peer set by [`connect`](Self::connect); `NotConnected` if none.
    ///
    /// ```
    /// use aioctx::net::UdpSocket;
    /// # let ctx = aioctx::AioContext::new()?;
    /// # ctx.block_on(async {
    /// let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// assert_eq!(a.peer_addr().unwrap_err().kind(), std::io::ErrorKind::NotConnected);
    /// a.connect(b.local_addr()?).await?;
    /// assert_eq!(a.peer_addr()?, b.local_addr()?);
    /// # Ok::<_, std::io::Error>(())
    /// # })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.socket().peer_addr()
    }
}

/// Socket options, as `std::net::UdpSocket` has them.
impl UdpSocket {
    /// Sets `SO_BROADCAST`: whether the socket may send to a broadcast address.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0")?;
    /// socket.set_broadcast(true)?;
    /// assert!(socket.broadcast()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.socket().set_broadcast(on)
    }

    /// Whether `SO_BROADCAST` is set.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0")?;
    /// assert!(!socket.broadcast()?); // off by default
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn broadcast(&self) -> io::Result<bool> {
        self.socket().broadcast()
    }

    /// Sets `IP_TTL`, the time to live of the datagrams this socket sends.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0")?;
    /// socket.set_ttl(5)?;
    /// assert_eq!(socket.ttl()?, 5);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.socket().set_ttl(ttl)
    }

    /// `IP_TTL`.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0")?;
    /// assert!(socket.ttl()? > 0); // the system's default, usually 64
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn ttl(&self) -> io::Result<u32> {
        self.socket().ttl()
    }

    /// Sets `IP_MULTICAST_LOOP`: whether IPv4 multicast datagrams this socket sends come back to
    /// the local host's members of the group.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0")?;
    /// socket.set_multicast_loop_v4(false)?;
    /// assert!(!socket.multicast_loop_v4()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_multicast_loop_v4(&self, on: bool) -> io::Result<()> {
        self.socket().set_multicast_loop_v4(on)
    }

    /// `IP_MULTICAST_LOOP`.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0")?;
    /// assert!(socket.multicast_loop_v4()?); // on by default
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn multicast_loop_v4(&self) -> io::Result<bool> {
        self.socket().multicast_loop_v4()
    }

    /// Sets `IP_MULTICAST_TTL`, the time to live of the IPv4 multicast datagrams this socket sends.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0")?;
    /// socket.set_multicast_ttl_v4(4)?;
    /// assert_eq!(socket.multicast_ttl_v4()?, 4);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_multicast_ttl_v4(&self, ttl: u32) -> io::Result<()> {
        self.socket().set_multicast_ttl_v4(ttl)
    }

    /// `IP_MULTICAST_TTL`.
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0")?;
    /// assert_eq!(socket.multicast_ttl_v4()?, 1); // the local network only, by default
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn multicast_ttl_v4(&self) -> io::Result<u32> {
        self.socket().multicast_ttl_v4()
    }

    /// Joins the IPv4 multicast group `multiaddr` on the interface with address `interface`
    /// (`Ipv4Addr::UNSPECIFIED`: the system picks one). The addresses may be given by value (as
    /// tokio takes them) or by reference (as std does).
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("0.0.0.0:0")?;
    /// let group = Ipv4Addr::new(224, 0, 0, 251);
    /// socket.join_multicast_v4(group, Ipv4Addr::LOCALHOST)?;
    /// socket.leave_multicast_v4(&group, &Ipv4Addr::LOCALHOST)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn join_multicast_v4(
        &self,
        multiaddr: impl Borrow<Ipv4Addr>,
        interface: impl Borrow<Ipv4Addr>,
    ) -> io::Result<()> {
        self.socket()
            .join_multicast_v4(multiaddr.borrow(), interface.borrow())
    }

    /// Leaves an IPv4 multicast group joined with [`join_multicast_v4`](Self::join_multicast_v4).
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let socket = aioctx::net::UdpSocket::bind("0.0.0.0:0")?;
    /// let group = Ipv4Addr::new(224, 0, 0, 251);
    /// // Not a member: nothing to leave.
    /// assert!(socket.leave_multicast_v4(group, Ipv4Addr::LOCALHOST).is_err());
    /// socket.join_multicast_v4(group, Ipv4Addr::LOCALHOST)?;
    /// socket.leave_multicast_v4(group, Ipv4Addr::LOCALHOST)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn leave_multicast_v4(
        &self,
        multiaddr: impl Borrow<Ipv4Addr>,
        interface: impl Borrow<Ipv4Addr>,
    ) -> io::Result<()> {
        self.socket()
            .leave_multicast_v4(multiaddr.borrow(), interface.borrow())
    }

    /// Joins the IPv6 multicast group `multiaddr` on the interface with index `interface` (0: the
    /// system picks one).
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// // (A host without IPv6 skips this example.)
    /// let Ok(socket) = aioctx::net::UdpSocket::bind("[::1]:0") else { return Ok(()) };
    /// let group: std::net::Ipv6Addr = "ff01::1:3".parse().unwrap(); // interface-local scope
    /// socket.join_multicast_v6(&group, 0)?;
    /// socket.leave_multicast_v6(&group, 0)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn join_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.socket().join_multicast_v6(multiaddr, interface)
    }

    /// Leaves an IPv6 multicast group joined with [`join_multicast_v6`](Self::join_multicast_v6).
    ///
    /// ```
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// // (A host without IPv6 skips this example.)
    /// let Ok(socket) = aioctx::net::UdpSocket::bind("[::1]:0") else { return Ok(()) };
    /// let group: std::net::Ipv6Addr = "ff01::1:3".parse().unwrap();
    /// assert!(socket.leave_multicast_v6(&group, 0).is_err()); // not a member
    /// socket.join_multicast_v6(&group, 0)?;
    /// socket.leave_multicast_v6(&group, 0)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn leave_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.socket().leave_multicast_v6(multiaddr, interface)
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}
