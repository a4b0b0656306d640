//! [`Backend`]: which fd monitor a context sleeps in.

use std::io;
use std::str::FromStr;

/// Which fd monitor a context sleeps in.
///
/// ```
/// use aioctx::{AioContext, Backend};
/// let ctx = AioContext::builder().backend(Backend::Auto).build()?;
/// assert_ne!(ctx.backend(), Backend::Auto); // the context names the monitor Auto chose
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Backend {
    /// The best the kernel offers, unless the `AIOCTX_BACKEND` environment variable (`poll`, `epoll` or
    /// `io_uring`) names one: io_uring if the kernel allows it (setup works and the opcodes the monitor
    /// needs are there), else epoll when the kernel refuses (`ENOSYS`, `EPERM` from seccomp or
    /// `kernel.io_uring_disabled`, `ENOMEM` from `RLIMIT_MEMLOCK`).
    /// [`AioContext::backend`](crate::AioContext::backend) tells which.
    #[default]
    Auto,
    /// io_uring: fd readiness, timeouts and user SQEs on one ring per context. Forcing it where the kernel
    /// refuses io_uring is an error that says why.
    IoUring,
    /// epoll with `epoll_pwait2` nanosecond timeouts. Falls back to poll for fds epoll cannot watch
    /// (regular files), unless forced with [`Builder::backend`](crate::Builder::backend).
    Epoll,
    /// `ppoll` over a pollfd array; upgrades itself to epoll at 64 fds, as QEMU's does (even when named),
    /// unless epoll refused one of its fds.
    Poll,
}

impl Backend {
    /// Parses `poll`, `epoll`, `io_uring` (or `io-uring`, `iouring`) and `auto`, ignoring case and
    /// surrounding spaces. The same as [`str::parse`].
    ///
    /// ```
    /// use aioctx::Backend;
    /// assert_eq!(Backend::from_name("io-uring")?, Backend::IoUring);
    /// assert_eq!(Backend::from_name(" EPOLL ")?, Backend::Epoll);
    /// assert!(Backend::from_name("kqueue").is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_name(name: &str) -> io::Result<Backend> {
        match name.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "io_uring" | "io-uring" | "iouring" => Ok(Backend::IoUring),
            "epoll" => Ok(Backend::Epoll),
            "poll" => Ok(Backend::Poll),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown aioctx backend {other:?}: expected poll, epoll, io_uring or auto"),
            )),
        }
    }

    /// The backend `Auto` resolves to, honouring `AIOCTX_BACKEND`, and whether it was named (forced).
    pub(crate) fn resolve_auto() -> io::Result<(Backend, bool)> {
        match std::env::var("AIOCTX_BACKEND") {
            Ok(name) if !name.trim().is_empty() => {
                let backend = Backend::from_name(&name).map_err(|e| {
                    io::Error::new(e.kind(), format!("AIOCTX_BACKEND={name:?}: {e}"))
                })?;
                // Naming a backend in the environment forces it, like naming it in code.
                Ok((backend, backend != Backend::Auto))
            }
            _ => Ok((Backend::Auto, false)),
        }
    }
}

/// Parses a backend name as [`Backend::from_name`] does, e.g. from a command-line flag.
///
/// ```
/// use aioctx::Backend;
/// let backend: Backend = "io_uring".parse()?;
/// assert_eq!(backend, Backend::IoUring);
/// assert_eq!("auto".parse::<Backend>()?, Backend::Auto);
/// assert_eq!("kqueue".parse::<Backend>().unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
/// # Ok::<(), std::io::Error>(())
/// ```
impl FromStr for Backend {
    type Err = io::Error;

    fn from_str(name: &str) -> io::Result<Backend> {
        Backend::from_name(name)
    }
}
