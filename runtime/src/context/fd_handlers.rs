//! [`FdHandlers`] and [`FdRegistration`]: the callbacks a user registers for an fd, and the handle that
//! keeps them registered. The table that holds them is `handler_table.rs`.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};

use super::HomeState;
use crate::fdmon::Interest;
use crate::EventNotifier;

/// The callbacks of one fd, QEMU's `aio_set_fd_handler` arguments.
///
/// - `read` runs while the fd is readable, hung up or in error (level-triggered: it runs again at every
///   iteration until the condition is consumed); `write` while it is writable or in error.
/// - `poll` is a userspace check the loop calls while it busy-polls (e.g. "does the virtqueue have new
///   buffers?"); when it returns true the loop calls `poll_ready` instead of waiting for the fd. `poll`
///   is ignored without `poll_ready`. A handler without `poll` disables busy-polling for the whole
///   context, as in QEMU: the loop could not notice its fd otherwise.
/// - `poll_begin` and `poll_end` run when the loop enters and leaves busy-polling (e.g. to suppress and
///   re-enable guest notifications); after `poll_end` the loop calls `poll` once more to close the race.
///
/// Callbacks may add, change and remove any handler (including their own), schedule BHs, arm timers
/// and call [`AioContext::poll`](crate::AioContext::poll) nested. A nested poll never re-enters the
/// `poll_ready` callback that is running.
///
/// ```
/// use std::{cell::Cell, os::fd::AsRawFd, rc::Rc};
/// use aioctx::{AioContext, EventNotifier, FdHandlers};
///
/// let ctx = AioContext::new()?;
/// let n = EventNotifier::new()?;
/// let hits = Rc::new(Cell::new(0));
/// let _reg = ctx.set_fd_handler(
///     n.as_raw_fd(),
///     FdHandlers::new().read({
///         let (n, hits) = (n.clone(), hits.clone());
///         move || {
///             n.test_and_clear().unwrap();
///             hits.set(hits.get() + 1);
///         }
///     }),
/// )?;
/// n.set()?;
/// assert!(ctx.poll(false));
/// assert_eq!(hits.get(), 1);
/// assert!(!ctx.poll(false)); // level-triggered, but the handler cleared it
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Default)]
pub struct FdHandlers {
    /// Called when the fd is readable (or hung up, or in error).
    pub read: Option<Box<dyn Fn()>>,
    /// Called when the fd is writable (or in error).
    pub write: Option<Box<dyn Fn()>>,
    /// Userspace readiness check run while busy-polling.
    pub poll: Option<Box<dyn Fn() -> bool>>,
    /// Called when `poll` returned true.
    pub poll_ready: Option<Box<dyn Fn()>>,
    /// Called when the loop starts busy-polling.
    pub poll_begin: Option<Box<dyn Fn()>>,
    /// Called when the loop stops busy-polling, right before it sleeps.
    pub poll_end: Option<Box<dyn Fn()>>,
}

impl fmt::Debug for FdHandlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdHandlers")
            .field("read", &self.read.is_some())
            .field("write", &self.write.is_some())
            .field("poll", &self.poll.is_some())
            .field("poll_ready", &self.poll_ready.is_some())
            .field("poll_begin", &self.poll_begin.is_some())
            .field("poll_end", &self.poll_end.is_some())
            .finish()
    }
}

impl FdHandlers {
    /// No callbacks; add them with the builder methods.
    ///
    /// ```
    /// let handlers = aioctx::FdHandlers::new();
    /// assert!(handlers.read.is_none() && handlers.write.is_none() && handlers.poll.is_none());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the read callback.
    ///
    /// ```
    /// # use std::{cell::Cell, io::Write, os::fd::AsRawFd, os::unix::net::UnixStream, rc::Rc};
    /// # use aioctx::FdHandlers;
    /// # let ctx = aioctx::AioContext::new()?;
    /// # use std::io::Read;
    /// let (rx, mut tx) = UnixStream::pair()?;
    /// let got = Rc::new(Cell::new(0));
    /// let _reg = ctx.set_fd_handler(rx.as_raw_fd(), FdHandlers::new().read({
    ///     let (rx, got) = (rx.try_clone()?, got.clone());
    ///     move || got.set(got.get() + (&rx).read(&mut [0; 16]).unwrap())
    /// }))?;
    /// tx.write_all(b"ping")?;
    /// assert!(ctx.poll(true));
    /// assert_eq!(got.get(), 4);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn read(mut self, f: impl Fn() + 'static) -> Self {
        self.read = Some(Box::new(f));
        self
    }

    /// Sets the write callback.
    ///
    /// ```
    /// # use std::{cell::Cell, io::Write, os::fd::AsRawFd, os::unix::net::UnixStream, rc::Rc};
    /// # use aioctx::FdHandlers;
    /// # let ctx = aioctx::AioContext::new()?;
    /// let (a, _b) = UnixStream::pair()?;
    /// let writable = Rc::new(Cell::new(false));
    /// let _reg = ctx.set_fd_handler(a.as_raw_fd(), FdHandlers::new().write({
    ///     let w = writable.clone();
    ///     move || w.set(true)
    /// }))?;
    /// assert!(ctx.poll(true)); // a fresh socket has buffer space
    /// assert!(writable.get());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn write(mut self, f: impl Fn() + 'static) -> Self {
        self.write = Some(Box::new(f));
        self
    }

    /// Sets the busy-poll check and the callback run when it finds work.
    ///
    /// ```
    /// # use std::{cell::Cell, os::fd::AsRawFd, rc::Rc};
    /// # use aioctx::{AioContext, EventNotifier, FdHandlers};
    /// let ctx = AioContext::builder().poll_max_ns(32_768).build()?;
    /// let kick = EventNotifier::new()?;
    /// let queued = Rc::new(Cell::new(1)); // e.g. buffers a device put in a shared ring
    /// let served = Rc::new(Cell::new(0));
    /// let _reg = ctx.set_fd_handler(kick.as_raw_fd(), FdHandlers::new().poll(
    ///     { let q = queued.clone(); move || q.get() > 0 },
    ///     { let (q, s) = (queued.clone(), served.clone()); move || s.set(s.get() + q.take()) },
    /// ))?;
    /// // Non-blocking iterations call poll functions once the fd monitor has nothing queued: the work
    /// // is found without the eventfd ever being written.
    /// assert!((0..16).any(|_| ctx.poll(false)));
    /// assert_eq!(served.get(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll(mut self, poll: impl Fn() -> bool + 'static, ready: impl Fn() + 'static) -> Self {
        self.poll = Some(Box::new(poll));
        self.poll_ready = Some(Box::new(ready));
        self
    }

    /// Sets the callbacks run when busy-polling starts and ends.
    ///
    /// ```
    /// # use std::{cell::Cell, os::fd::AsRawFd, rc::Rc, time::Duration};
    /// # use aioctx::{AioContext, EventNotifier, FdHandlers, time::Clock};
    /// let ctx = AioContext::builder().poll_max_ns(1_000_000_000).build()?;
    /// let kick = EventNotifier::new()?;
    /// let (work, begins) = (Rc::new(Cell::new(1)), Rc::new(Cell::new(0)));
    /// let poll = { let w = work.clone(); move || w.get() > 0 };
    /// let ready = { let w = work.clone(); move || w.set(0) };
    /// let begin = {
    ///     let (b, w) = (begins.clone(), work.clone());
    ///     move || { b.set(b.get() + 1); w.set(1) }
    /// };
    /// let handlers = FdHandlers::new().poll(poll, ready).poll_begin_end(begin, || {});
    /// let _reg = ctx.set_fd_handler(kick.as_raw_fd(), handlers)?;
    /// assert!((0..16).any(|_| ctx.poll(false))); // a poll hit opens this handler's busy-poll window
    /// # let _backstop = ctx.timer(Clock::Realtime, || {}); // fail, not hang, if polling never began
    /// # _backstop.arm_after(Duration::from_secs(5));
    /// // A blocking iteration now busy-polls before it sleeps; poll_begin runs first (and here makes work).
    /// assert!(ctx.poll(true));
    /// assert_eq!(begins.get(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_begin_end(mut self, begin: impl Fn() + 'static, end: impl Fn() + 'static) -> Self {
        self.poll_begin = Some(Box::new(begin));
        self.poll_end = Some(Box::new(end));
        self
    }
}

/// The registration of an fd's handlers with a context; dropping it removes them (QEMU's
/// `aio_set_fd_handler` with all-NULL callbacks).
///
/// The fd must stay open while it is registered; close it only after dropping the registration.
///
/// ```
/// # use std::{cell::Cell, io::Write, os::fd::AsRawFd, os::unix::net::UnixStream, rc::Rc};
/// # use aioctx::FdHandlers;
/// # let ctx = aioctx::AioContext::new()?;
/// let (rx, mut tx) = UnixStream::pair()?;
/// let hits = Rc::new(Cell::new(0));
/// let reg = ctx.set_fd_handler(rx.as_raw_fd(), FdHandlers::new().read({
///     let h = hits.clone();
///     move || h.set(h.get() + 1)
/// }))?;
/// drop(reg); // removes the handler
/// tx.write_all(b"x")?;
/// assert!(!ctx.poll(false));
/// assert_eq!(hits.get(), 0);
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "dropping the registration removes the handlers at once"]
pub struct FdRegistration {
    ctx: Weak<HomeState>,
    token: u64,
    fd: RawFd,
    /// Keeps an event notifier's eventfd open while registered.
    _notifier: Option<EventNotifier>,
}

impl fmt::Debug for FdRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdRegistration")
            .field("fd", &self.fd)
            .finish()
    }
}

impl FdRegistration {
    pub(crate) fn new(
        home: &Rc<HomeState>,
        token: u64,
        fd: RawFd,
        notifier: Option<EventNotifier>,
    ) -> Self {
        Self {
            ctx: Rc::downgrade(home),
            token,
            fd,
            _notifier: notifier,
        }
    }

    /// The registered fd.
    ///
    /// ```
    /// # use std::{cell::Cell, io::Write, os::fd::AsRawFd, os::unix::net::UnixStream, rc::Rc};
    /// # use aioctx::FdHandlers;
    /// # let ctx = aioctx::AioContext::new()?;
    /// let (a, _b) = UnixStream::pair()?;
    /// let reg = ctx.set_fd_handler(a.as_raw_fd(), FdHandlers::new())?;
    /// assert_eq!(reg.fd(), a.as_raw_fd());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Chooses whether the read and write callbacks are armed, without replacing the handlers: the
    /// kernel stops watching for what is disarmed (so a level-triggered fd nobody is ready to serve does
    /// not keep the loop spinning). Both are armed at registration.
    ///
    /// ```
    /// # use std::{cell::Cell, io::Write, os::fd::AsRawFd, os::unix::net::UnixStream, rc::Rc};
    /// # use aioctx::FdHandlers;
    /// # let ctx = aioctx::AioContext::new()?;
    /// let (rx, mut tx) = UnixStream::pair()?;
    /// let hits = Rc::new(Cell::new(0));
    /// let reg = ctx.set_fd_handler(rx.as_raw_fd(), FdHandlers::new().read({
    ///     let h = hits.clone();
    ///     move || h.set(h.get() + 1)
    /// }))?;
    /// reg.set_interest(false, false)?; // nobody is ready to serve it
    /// tx.write_all(b"x")?;
    /// assert!(!ctx.poll(false));
    /// reg.set_interest(true, false)?;
    /// assert!(ctx.poll(true));
    /// assert_eq!(hits.get(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_interest(&self, read: bool, write: bool) -> io::Result<()> {
        self.context()?
            .set_interest(self.token, Interest::of(read, write))
    }

    /// Replaces the handlers (QEMU's `aio_set_fd_handler` on a registered fd). Safe from inside any
    /// callback, including this fd's own. The new poll handler starts with a fresh window.
    ///
    /// ```
    /// # use std::{cell::Cell, io::Write, os::fd::AsRawFd, os::unix::net::UnixStream, rc::Rc};
    /// # use aioctx::FdHandlers;
    /// # let ctx = aioctx::AioContext::new()?;
    /// let (rx, mut tx) = UnixStream::pair()?;
    /// let served_by = Rc::new(Cell::new(""));
    /// let reg = ctx.set_fd_handler(rx.as_raw_fd(), FdHandlers::new().read({
    ///     let s = served_by.clone();
    ///     move || s.set("old")
    /// }))?;
    /// reg.update(FdHandlers::new().read({ let s = served_by.clone(); move || s.set("new") }))?;
    /// tx.write_all(b"x")?;
    /// assert!(ctx.poll(true));
    /// assert_eq!(served_by.get(), "new");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn update(&self, handlers: FdHandlers) -> io::Result<()> {
        self.context()?.update_handler(self.token, handlers)
    }
}

impl FdRegistration {
    fn context(&self) -> io::Result<Rc<HomeState>> {
        self.ctx
            .upgrade()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the context was dropped"))
    }
}

impl Drop for FdRegistration {
    fn drop(&mut self) {
        if let Some(home) = self.ctx.upgrade() {
            home.remove_handler(self.token);
        }
    }
}

/// Builds the handlers of an event notifier: `on_read` serves both the fd and, if `poll` is given, the
/// poll path (QEMU's `aio_set_event_notifier` with `io_poll_ready` = the read handler).
pub(crate) fn notifier_handlers(
    on_read: impl Fn() + 'static,
    poll: Option<Box<dyn Fn() -> bool>>,
) -> FdHandlers {
    let on_read: Rc<dyn Fn()> = Rc::new(on_read);
    let mut handlers = FdHandlers::new().read({
        let f = Rc::clone(&on_read);
        move || f()
    });
    if let Some(poll) = poll {
        handlers.poll = Some(poll);
        handlers.poll_ready = Some(Box::new(move || on_read()));
    }
    handlers
}
