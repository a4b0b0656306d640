//! [`Builder`] and [`Backend`]: how a context is configured.

use std::io;

use super::AioContext;
use crate::PollParams;

/// Which fd monitor a context sleeps in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// The best the kernel offers, unless the `AIOCTX_BACKEND` environment variable (`poll`, `epoll` or
    /// `io_uring`) names one. Today that is epoll; io_uring becomes the default once its monitor lands.
    #[default]
    Auto,
    /// io_uring: fd readiness, timeouts and block I/O on one ring. Not available in this build yet:
    /// forcing it is an `Unsupported` error.
    IoUring,
    /// epoll with `epoll_pwait2` nanosecond timeouts. Falls back to poll for fds epoll cannot watch
    /// (regular files), unless forced with [`Builder::backend`].
    Epoll,
    /// `ppoll` over a pollfd array; upgrades itself to epoll at 64 fds unless forced.
    Poll,
}

impl Backend {
    /// Parses `poll`, `epoll`, `io_uring` (or `io-uring`, `iouring`) and `auto`.
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

    /// The backend `Auto` resolves to, honouring `AIOCTX_BACKEND`.
    pub(crate) fn resolve_auto() -> io::Result<(Backend, bool)> {
        match std::env::var("AIOCTX_BACKEND") {
            Ok(name) if !name.trim().is_empty() => {
                let backend = Backend::from_name(&name).map_err(|e| {
                    io::Error::new(e.kind(), format!("AIOCTX_BACKEND={name:?}: {e}"))
                })?;
                match backend {
                    Backend::Auto => Ok((Backend::Epoll, false)),
                    // Naming a backend in the environment forces it, like naming it in code.
                    other => Ok((other, true)),
                }
            }
            _ => Ok((Backend::Epoll, false)),
        }
    }
}

/// Configures and creates an [`AioContext`].
///
/// ```
/// use aioctx::{AioContext, Backend};
/// let ctx = AioContext::builder()
///     .backend(Backend::Epoll)
///     .poll_max_ns(32_768)
///     .poll_grow(2)
///     .poll_shrink(0)
///     .build()?;
/// assert_eq!(ctx.backend(), Backend::Epoll);
/// assert_eq!(ctx.poll_params().max_ns, 32_768);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a Builder does nothing until .build() is called"]
pub struct Builder {
    pub(crate) backend: Backend,
    pub(crate) poll: PollParams,
}

impl Builder {
    /// A builder with QEMU's bare-context defaults: `Backend::Auto`, polling off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Chooses the fd monitor. A named backend is used as is (no fallback); `Auto` picks the best available.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The longest busy-poll window in ns; 0 (the default) disables polling.
    pub fn poll_max_ns(mut self, ns: u64) -> Self {
        self.poll.max_ns = ns;
        self
    }

    /// The factor a poll window grows by; 0 means 2.
    pub fn poll_grow(mut self, factor: u64) -> Self {
        self.poll.grow = factor;
        self
    }

    /// The divisor a poll window shrinks by; 0 means reset it to 0.
    pub fn poll_shrink(mut self, divisor: u64) -> Self {
        self.poll.shrink = divisor;
        self
    }

    /// All polling parameters at once.
    pub fn poll_params(mut self, params: PollParams) -> Self {
        self.poll = params;
        self
    }

    /// Creates the context on the calling thread, which becomes its home thread.
    ///
    /// Errors: an invalid `AIOCTX_BACKEND` or poll parameters (`InvalidInput`), a backend the kernel or
    /// this build does not offer (`Unsupported`), or running out of file descriptors (`EMFILE`).
    pub fn build(self) -> io::Result<AioContext> {
        AioContext::from_builder(self)
    }
}
