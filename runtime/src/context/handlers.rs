//! fd handlers: the callbacks the loop runs when an fd is ready or a poll function finds work.
//!
//! Handlers live in a slab of `Rc<HandlerNode>`. The loop never holds a borrow of the registry while a
//! callback runs: it clones the node (an `Rc`) out first. Removing a handler marks its node deleted, so a
//! ready-list entry or a polling pass that still holds the node skips it, and frees the slot at once; a
//! generation number in the token keeps a stale event from reaching a newer handler in the same slot.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};

use slab::Slab;

use super::Inner;
use crate::fdmon::bits;
use crate::{sys, EventNotifier};

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

/// A poll function and the callback run when it finds work.
pub(crate) type PollPair = (Rc<dyn Fn() -> bool>, Rc<dyn Fn()>);

/// A registered handler as the loop sees it. Immutable but for the cells.
pub(crate) struct HandlerNode {
    pub(crate) fd: RawFd,
    pub(crate) read: Option<Rc<dyn Fn()>>,
    pub(crate) write: Option<Rc<dyn Fn()>>,
    /// `poll` and `poll_ready` together, or neither.
    pub(crate) poll: Option<PollPair>,
    pub(crate) poll_begin: Option<Rc<dyn Fn()>>,
    pub(crate) poll_end: Option<Rc<dyn Fn()>>,
    /// The context's own notifier: its activity is never progress.
    pub(crate) is_ctx_notifier: bool,
    pub(crate) deleted: Cell<bool>,
    /// This handler's adaptive busy-poll window in ns.
    pub(crate) window_ns: Cell<i64>,
    /// Set while `poll_ready` runs, so a nested poll neither polls nor dispatches this handler's poll path.
    pub(crate) in_poll_ready: Cell<bool>,
    /// Which of IN/OUT are wanted right now (readiness futures switch them without replacing the node).
    pub(crate) enabled: Cell<u32>,
    /// Whether the polling phase calls this handler's poll function: it leaves the list after finding
    /// nothing for the context's idle timeout, and comes back when its fd fires.
    pub(crate) polled: Cell<bool>,
    /// When this handler leaves the poll list if its poll function keeps finding nothing (0: not
    /// set yet; set at the next idle check).
    pub(crate) poll_idle_deadline: Cell<i64>,
}

impl HandlerNode {
    fn new(fd: RawFd, h: FdHandlers, is_ctx_notifier: bool) -> Self {
        let rc = |f: Option<Box<dyn Fn()>>| f.map(Rc::from);
        let poll = match (h.poll, h.poll_ready) {
            (Some(p), Some(r)) => Some((Rc::from(p), Rc::from(r))),
            _ => None,
        };
        Self {
            fd,
            read: rc(h.read),
            write: rc(h.write),
            poll,
            poll_begin: rc(h.poll_begin),
            poll_end: rc(h.poll_end),
            is_ctx_notifier,
            deleted: Cell::new(false),
            window_ns: Cell::new(0),
            in_poll_ready: Cell::new(false),
            enabled: Cell::new(bits::IN | bits::OUT),
            polled: Cell::new(true),
            poll_idle_deadline: Cell::new(0),
        }
    }

    /// The poll(2) events this handler waits for in the kernel.
    fn events(&self) -> u32 {
        let mut events = 0;
        if self.read.is_some() {
            events |= bits::IN;
        }
        if self.write.is_some() {
            events |= bits::OUT;
        }
        events & self.enabled.get()
    }
}

struct Slot {
    node: Rc<HandlerNode>,
    generation: u32,
}

/// The handler table of a context.
#[derive(Default)]
pub(crate) struct Registry {
    slots: Slab<Slot>,
    by_fd: HashMap<RawFd, usize>,
    /// Handlers with a poll function, as a snapshot the polling phase iterates without a borrow.
    poll_list: Rc<Vec<Rc<HandlerNode>>>,
    /// Handlers without a poll function; while non-zero the loop does not busy-poll (QEMU's
    /// `poll_disable_cnt`).
    poll_disable_cnt: usize,
    next_generation: u32,
}

fn token(key: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | key as u64
}

impl Registry {
    /// The live node for a monitor token.
    pub(crate) fn lookup(&self, token: u64) -> Option<Rc<HandlerNode>> {
        let slot = self.slots.get((token & u64::from(u32::MAX)) as usize)?;
        (token >> 32 == u64::from(slot.generation)).then(|| Rc::clone(&slot.node))
    }

    pub(crate) fn poll_list(&self) -> Rc<Vec<Rc<HandlerNode>>> {
        Rc::clone(&self.poll_list)
    }

    pub(crate) fn poll_disabled(&self) -> bool {
        self.poll_disable_cnt > 0
    }

    /// Takes `node` off the poll list or puts it back (rebuilding the list only on a change).
    pub(crate) fn set_polled(&mut self, node: &HandlerNode, polled: bool) {
        if node.polled.replace(polled) != polled {
            self.rebuild_poll_list();
        }
    }

    fn rebuild_poll_list(&mut self) {
        self.poll_list = Rc::new(
            self.slots
                .iter()
                .filter(|(_, s)| s.node.poll.is_some() && s.node.polled.get())
                .map(|(_, s)| Rc::clone(&s.node))
                .collect(),
        );
    }

    fn account(&mut self, node: &HandlerNode, added: bool) {
        if node.poll.is_none() {
            if added {
                self.poll_disable_cnt += 1;
            } else {
                self.poll_disable_cnt -= 1;
            }
        }
    }

    /// Drops every handler (context teardown), returning the nodes for the caller to drop unborrowed.
    pub(crate) fn drain(&mut self) -> Vec<Rc<HandlerNode>> {
        self.by_fd.clear();
        self.poll_list = Rc::default();
        self.poll_disable_cnt = 0;
        self.slots
            .drain()
            .map(|s| {
                s.node.deleted.set(true);
                s.node
            })
            .collect()
    }
}

impl Inner {
    /// Registers handlers for `fd` and returns the monitor token.
    pub(crate) fn add_handler(
        &self,
        fd: RawFd,
        handlers: FdHandlers,
        is_ctx_notifier: bool,
    ) -> io::Result<u64> {
        sys::check_fd_open(fd)?;
        let node = Rc::new(HandlerNode::new(fd, handlers, is_ctx_notifier));
        let mut reg = self.handlers.borrow_mut();
        if reg.by_fd.contains_key(&fd) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "fd {fd} already has handlers in this context; change them through its \
                     FdRegistration or drop that first"
                ),
            ));
        }
        let generation = reg.next_generation;
        reg.next_generation = generation.wrapping_add(1);
        let entry = reg.slots.vacant_entry();
        let token = token(entry.key(), generation);
        self.monitor.borrow_mut().set(fd, token, node.events())?;
        let key = entry.key();
        entry.insert(Slot {
            node: Rc::clone(&node),
            generation,
        });
        reg.by_fd.insert(fd, key);
        reg.account(&node, true);
        if node.poll.is_some() {
            reg.rebuild_poll_list();
        }
        drop(reg);
        self.shared.notify();
        Ok(token)
    }

    /// Replaces the handlers registered under `token`. On error the old handlers stay in place.
    pub(crate) fn update_handler(&self, token: u64, handlers: FdHandlers) -> io::Result<()> {
        let mut reg = self.handlers.borrow_mut();
        let Some(old) = reg.lookup(token) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the fd handler was removed (or its context dropped)",
            ));
        };
        let node = Rc::new(HandlerNode::new(old.fd, handlers, old.is_ctx_notifier));
        self.monitor
            .borrow_mut()
            .set(old.fd, token, node.events())?;
        old.deleted.set(true);
        let key = (token & u64::from(u32::MAX)) as usize;
        reg.slots[key].node = Rc::clone(&node);
        reg.account(&old, false);
        reg.account(&node, true);
        if old.poll.is_some() || node.poll.is_some() {
            reg.rebuild_poll_list();
        }
        drop(reg);
        // `old` (and the user's closures in it) is dropped here, after the borrow ended.
        drop(old);
        self.shared.notify();
        Ok(())
    }

    /// Switches which of `IN`/`OUT` the kernel watches for the handler under `token`, without replacing
    /// it (a cheap path for readiness futures). Returns the OS error of the monitor update, if any.
    pub(crate) fn set_interest(&self, token: u64, mask: u32) -> io::Result<()> {
        let reg = self.handlers.borrow();
        let Some(node) = reg.lookup(token) else {
            return Ok(());
        };
        if node.enabled.get() == mask {
            return Ok(());
        }
        let old = node.enabled.replace(mask);
        let result = self.monitor.borrow_mut().set(node.fd, token, node.events());
        if result.is_err() {
            node.enabled.set(old);
        }
        result
    }

    /// Removes the handlers registered under `token`, if still there.
    pub(crate) fn remove_handler(&self, token: u64) {
        let removed = {
            let mut reg = self.handlers.borrow_mut();
            let Some(node) = reg.lookup(token) else {
                return;
            };
            node.deleted.set(true);
            self.monitor.borrow_mut().set(node.fd, token, 0).ok();
            reg.slots.remove((token & u64::from(u32::MAX)) as usize);
            reg.by_fd.remove(&node.fd);
            reg.account(&node, false);
            if node.poll.is_some() {
                reg.rebuild_poll_list();
            }
            node
        };
        drop(removed);
        self.shared.notify();
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
    ctx: Weak<Inner>,
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
        inner: &Rc<Inner>,
        token: u64,
        fd: RawFd,
        notifier: Option<EventNotifier>,
    ) -> Self {
        Self {
            ctx: Rc::downgrade(inner),
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
        let inner = self.ctx.upgrade().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotConnected, "the context was dropped")
        })?;
        let mask = if read { bits::IN } else { 0 } | if write { bits::OUT } else { 0 };
        inner.set_interest(self.token, mask)
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
        let inner = self.ctx.upgrade().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotConnected, "the context was dropped")
        })?;
        inner.update_handler(self.token, handlers)
    }
}

impl Drop for FdRegistration {
    fn drop(&mut self) {
        if let Some(inner) = self.ctx.upgrade() {
            inner.remove_handler(self.token);
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
