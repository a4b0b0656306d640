//! Socket addresses, and host names resolved off the loop.
//!
//! `getaddrinfo` blocks (on DNS, on `/etc/hosts`, on nsswitch modules), so a host name is resolved
//! on the context's blocking thread pool while the loop goes on; a literal address never touches
//! the pool.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::mpsc;

use crate::context::current;

/// What a socket can connect or bind to: a literal address (`SocketAddr`, `(IpAddr, u16)`,
/// `"127.0.0.1:8080"`, `"[::1]:80"`) or a host name with a port (`"localhost:8080"`,
/// `("example.org", 443)`), which aioctx resolves on the context's blocking pool instead of the
/// loop. Implemented like `std::net::ToSocketAddrs`, for the same types; sealed.
///
/// ```
/// use aioctx::net::TcpListener;
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let listener = TcpListener::bind("127.0.0.1:0")?; // a literal: no resolver involved
///     let port = listener.local_addr()?.port();
///     // "localhost" is a name: resolved on the pool while the loop keeps running. Each address it
///     // resolves to is tried in turn (a refused ::1 first is fine), so the connection is made.
///     let client = aioctx::net::TcpStream::connect(("localhost", port)).await?;
///     assert_eq!(client.peer_addr()?.port(), port);
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait ToSocketAddrs: sealed::Sealed {}

mod sealed {
    /// Where the addresses come from (unnameable outside this module tree).
    #[derive(Debug)]
    pub enum Addrs {
        /// Literal addresses: no resolver.
        Literal(Vec<std::net::SocketAddr>),
        /// A host name and port for `getaddrinfo`.
        Name(String, u16),
    }

    /// The addresses a value names (the trait's one method, hidden from users).
    pub trait Sealed {
        #[doc(hidden)]
        fn to_addrs(&self) -> std::io::Result<Addrs>;
    }
}

use sealed::Addrs;

fn literal(addr: impl Into<SocketAddr>) -> io::Result<Addrs> {
    Ok(Addrs::Literal(vec![addr.into()]))
}

macro_rules! literal_impls {
    ($($ty:ty),*) => {$(
        impl sealed::Sealed for $ty {
            fn to_addrs(&self) -> io::Result<Addrs> {
                literal(*self)
            }
        }
        impl ToSocketAddrs for $ty {}
    )*};
}

literal_impls!(
    SocketAddr,
    SocketAddrV4,
    SocketAddrV6,
    (IpAddr, u16),
    (Ipv4Addr, u16),
    (Ipv6Addr, u16)
);

impl sealed::Sealed for (&str, u16) {
    fn to_addrs(&self) -> io::Result<Addrs> {
        let (host, port) = *self;
        match host.parse::<IpAddr>() {
            Ok(ip) => literal((ip, port)),
            Err(_) => Ok(Addrs::Name(host.to_owned(), port)),
        }
    }
}
impl ToSocketAddrs for (&str, u16) {}

impl sealed::Sealed for (String, u16) {
    fn to_addrs(&self) -> io::Result<Addrs> {
        (self.0.as_str(), self.1).to_addrs()
    }
}
impl ToSocketAddrs for (String, u16) {}

impl sealed::Sealed for str {
    fn to_addrs(&self) -> io::Result<Addrs> {
        if let Ok(addr) = self.parse::<SocketAddr>() {
            return literal(addr);
        }
        let invalid = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid socket address {self:?}: expected HOST:PORT"),
            )
        };
        let (host, port) = self.rsplit_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().map_err(|_| invalid())?;
        (host, port).to_addrs()
    }
}
impl ToSocketAddrs for str {}

impl sealed::Sealed for String {
    fn to_addrs(&self) -> io::Result<Addrs> {
        self.as_str().to_addrs()
    }
}
impl ToSocketAddrs for String {}

impl sealed::Sealed for [SocketAddr] {
    fn to_addrs(&self) -> io::Result<Addrs> {
        Ok(Addrs::Literal(self.to_vec()))
    }
}
impl ToSocketAddrs for [SocketAddr] {}

impl<T: ToSocketAddrs + ?Sized> sealed::Sealed for &T {
    fn to_addrs(&self) -> io::Result<Addrs> {
        (**self).to_addrs()
    }
}
impl<T: ToSocketAddrs + ?Sized> ToSocketAddrs for &T {}

/// `getaddrinfo`, with an error that names what failed to resolve.
fn lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let not_found = |detail: String| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("cannot resolve host name {host:?}: {detail}"),
        )
    };
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| not_found(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(not_found("no addresses".into()));
    }
    Ok(addrs)
}

/// The addresses `addr` names, resolving a host name on the current context's blocking pool.
pub(crate) async fn resolve(addr: &(impl ToSocketAddrs + ?Sized)) -> io::Result<Vec<SocketAddr>> {
    match addr.to_addrs()? {
        Addrs::Literal(addrs) => Ok(addrs),
        Addrs::Name(host, port) => {
            crate::task::blocking::spawn_blocking_io(move || lookup(&host, port)).await
        }
    }
}

/// The addresses `addr` names, for a synchronous call (`bind`): a host name is resolved on the current
/// context's blocking pool while the caller waits (no iteration of the loop runs meanwhile).
pub(crate) fn resolve_now(addr: &(impl ToSocketAddrs + ?Sized)) -> io::Result<Vec<SocketAddr>> {
    match addr.to_addrs()? {
        Addrs::Literal(addrs) => Ok(addrs),
        Addrs::Name(host, port) => {
            let pool = current::with_current(|home| home.thread_pool())
                .ok_or_else(|| crate::sys::outside_context("aioctx::net name resolution"))?;
            let (tx, rx) = mpsc::sync_channel(1);
            pool.submit(Box::new(move || {
                let _ = tx.send(lookup(&host, port));
            }));
            rx.recv().unwrap_or_else(|_| {
                Err(io::Error::other(
                    "the context's blocking pool shut down before resolving the name",
                ))
            })
        }
    }
}

/// Resolves `host` (a `HOST:PORT` string, a `(host, port)` pair or a literal address) to socket
/// addresses on the current context's blocking pool (tokio's `lookup_host`). A literal address is
/// returned as is, without the pool.
///
/// Errors: a name that does not resolve is `NotFound`, with the name in the message; a string without
/// a port is `InvalidInput`; outside a context, `NotConnected`.
///
/// ```
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let addrs = aioctx::net::lookup_host("127.0.0.1:80").await?;
///     assert_eq!(addrs, ["127.0.0.1:80".parse().unwrap()]);
///     let err = aioctx::net::lookup_host("no-such-host.invalid:80").await.unwrap_err();
///     assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
///     assert!(err.to_string().contains("no-such-host.invalid"));
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub async fn lookup_host(host: impl ToSocketAddrs) -> io::Result<Vec<SocketAddr>> {
    resolve(&host).await
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::sealed::Sealed;
    use super::*;

    fn kind(addr: &(impl ToSocketAddrs + ?Sized)) -> &'static str {
        match addr.to_addrs() {
            Ok(Addrs::Literal(_)) => "literal",
            Ok(Addrs::Name(..)) => "name",
            Err(_) => "error",
        }
    }

    #[test]
    fn literals_never_need_the_resolver() {
        assert_eq!(kind("127.0.0.1:80"), "literal");
        assert_eq!(kind("[::1]:80"), "literal");
        assert_eq!(kind(&("::1", 80)), "literal");
        assert_eq!(kind(&(IpAddr::from([10, 0, 0, 1]), 9)), "literal");
        assert_eq!(
            kind(&"10.0.0.1:9".parse::<SocketAddr>().unwrap()),
            "literal"
        );
    }

    #[test]
    fn names_go_to_the_resolver_and_bad_input_is_an_error() {
        assert_eq!(kind("localhost:80"), "name");
        assert_eq!(kind(&("example.org", 443)), "name");
        assert_eq!(kind("localhost"), "error");
        assert_eq!(kind("localhost:http"), "error");
        assert_eq!(
            "host-without-port".to_addrs().unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
