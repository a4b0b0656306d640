//! [`AioContext`]: the public face of the loop. Every method delegates to the owned states of
//! [`HomeState`]; the executor's methods (`new`, `block_on`, `spawn_local`, `spawn_blocking`) are in
//! `task/`, the layer above.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use super::bh::BhCall;
use super::Timer;
use super::{current, fd_handlers, HomeState};
use crate::fdmon::Backend;
use crate::timers::{Clock, VirtualClock};
use crate::{Bh, Builder, EventNotifier, FdHandlers, FdRegistration, PollParams, Remote, Stats};

/// A QEMU-style event loop bound to the thread that created it (its home thread).
///
/// One iteration, [`poll`](AioContext::poll), busy-polls if allowed, sleeps in the fd monitor until an fd
/// is ready, a timer is due or another thread notifies it, then runs bottom halves, ready fd handlers and
/// expired timers, in QEMU's order. Sources of work:
/// - [`bh`](AioContext::bh) / [`Remote::schedule_oneshot`]: bottom halves, schedulable from any thread;
/// - [`set_fd_handler`](AioContext::set_fd_handler), [`set_event_notifier`](AioContext::set_event_notifier):
///   fd readiness and userspace poll functions;
/// - [`timer`](AioContext::timer): nanosecond timers on three clocks.
///
/// The context is `!Send`: it lives and runs on its home thread; other threads use [`Remote`].
/// Dropping it drops every remaining callback on the home thread; remote handles then do nothing.
///
/// ```
/// use std::{cell::Cell, rc::Rc, time::Duration};
/// use aioctx::{AioContext, time::Clock};
///
/// let ctx = AioContext::new()?;
/// let log = Rc::new(std::cell::RefCell::new(Vec::new()));
/// let bh = ctx.bh({ let log = log.clone(); move || log.borrow_mut().push("bh") });
/// let timer = ctx.timer(Clock::Realtime, { let log = log.clone(); move || log.borrow_mut().push("timer") });
/// bh.schedule();
/// timer.arm_after(Duration::from_micros(200));
/// while log.borrow().len() < 2 {
///     ctx.poll(true);
/// }
/// assert_eq!(*log.borrow(), ["bh", "timer"]);
/// # Ok::<(), std::io::Error>(())
/// ```
#[repr(transparent)]
pub struct AioContext {
    home: Rc<HomeState>,
}

impl fmt::Debug for AioContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AioContext")
            .field("backend", &self.backend())
            .field("poll_params", &self.poll_params())
            .finish_non_exhaustive()
    }
}

impl AioContext {
    /// A [`Builder`] to choose the backend and polling parameters.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::builder().poll_max_ns(32_768).build()?;
    /// assert_eq!(ctx.poll_params().max_ns, 32_768);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Runs one iteration of the loop (QEMU's `aio_poll`) and returns whether it made progress: ran a
    /// bottom half, an fd handler or a timer (activity on the context's own notifier and idle BHs do not
    /// count). With `blocking`, it first sleeps until something is due; without, it only checks.
    ///
    /// May be called from inside any callback of this context (a nested poll, QEMU's `AIO_WAIT_WHILE`).
    /// A panic in a callback (bottom half, timer, fd handler, poll function or hook, SQE completion)
    /// propagates out of `poll` (or `block_on`): the runtime cannot know whether the state the callback
    /// was changing is consistent, so it does not swallow the panic (QEMU would abort). Its own state stays
    /// consistent, so a caller that catches the panic can go on polling: no borrow or lock is left held,
    /// flags set around user code are restored, and the work that was due and had not run yet (the rest of
    /// the BH slice, later expired timers, other ready fds, reaped completions) runs at the next
    /// iteration, which does not sleep while such work is pending. A panic in a task is caught at the
    /// task boundary instead and becomes its [`JoinError`](crate::JoinError).
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// assert!(!ctx.poll(false)); // nothing due: returns at once
    /// ctx.bh_oneshot(|| {});
    /// assert!(ctx.poll(true)); // a BH is due, so it does not sleep
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll(&self, blocking: bool) -> bool {
        let _enter = current::enter(&self.home);
        self.home.aio_poll(blocking)
    }

    /// Makes this context the thread's current one until the guard is dropped, so that
    /// [`spawn_local`](crate::spawn_local), the [`time`](crate::time) futures and [`Instant::now`](crate::time::Instant::now)
    /// find it outside `block_on` and `poll` (for example to poll a future by hand in a test).
    ///
    /// ```
    /// use std::time::Duration;
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// let _guard = ctx.enter();
    /// let sleep = aioctx::time::sleep(Duration::from_millis(5)); // measured on ctx's clock
    /// assert!(!sleep.is_elapsed());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn enter(&self) -> EnterGuard<'_> {
        EnterGuard {
            _guard: current::enter(&self.home),
            _context: std::marker::PhantomData,
        }
    }

    /// Wakes the loop from its current or next wait (QEMU's `aio_notify`).
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.notify();
    /// // The next wait returns at once; a wake-up alone is not progress.
    /// assert!(!ctx.poll(true));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn notify(&self) {
        self.home.shared.notify();
    }

    /// A `Send + Sync` handle for other threads.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let remote = ctx.remote();
    /// let answer = std::thread::spawn(move || remote.spawn(async { 6 * 7 })).join().unwrap();
    /// assert_eq!(ctx.block_on(answer).unwrap(), 42);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn remote(&self) -> Remote {
        Remote::new(Arc::clone(&self.home.shared))
    }

    /// The fd monitor in use. The poll monitor reports `Epoll` once it upgraded itself (64 fds or more),
    /// and an auto-chosen epoll monitor reports `Poll` after it fell back for an fd epoll cannot watch.
    ///
    /// ```
    /// use aioctx::{AioContext, Backend};
    /// let ctx = AioContext::builder().backend(Backend::Epoll).build()?;
    /// assert_eq!(ctx.backend(), Backend::Epoll);
    /// assert_ne!(AioContext::new()?.backend(), Backend::Auto); // Auto names what it chose
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn backend(&self) -> Backend {
        self.home.backend()
    }

    /// Counters since the context was created.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.bh_oneshot(|| {});
    /// ctx.poll(false);
    /// assert_eq!(ctx.stats().bhs_run, 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.home.shared.stats()
    }

    /// The current polling parameters.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// assert_eq!(ctx.poll_params(), aioctx::PollParams::default());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_params(&self) -> PollParams {
        self.home.poll_params()
    }

    /// Changes the polling parameters at run time and resets every handler's window and the
    /// hit-rate averages, so the next chance polls (QEMU's `aio_context_set_poll_params`). Fails with `InvalidInput` if a value does not fit in an `i64`,
    /// `weight` is over 62 or `min_hit_percent` over 100.
    ///
    /// ```
    /// use aioctx::{AioContext, PollParams};
    /// let ctx = AioContext::new()?;
    /// let params = PollParams { max_ns: 16_384, grow: 2, shrink: 2, weight: 2, min_hit_percent: 50 };
    /// ctx.set_poll_params(params)?;
    /// assert_eq!(ctx.poll_params().shrink, 2);
    /// let too_big = PollParams { max_ns: u64::MAX, ..PollParams::default() };
    /// assert_eq!(ctx.set_poll_params(too_big).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_poll_params(&self, params: PollParams) -> io::Result<()> {
        self.home.set_poll_params(params)
    }

    /// Sets the bounds of this context's blocking thread pool (QEMU's `thread-pool-min`/`-max`): at
    /// most `max` workers run [`spawn_blocking`](crate::spawn_blocking) jobs; idle workers above `min`
    /// exit after 10 s. Fails with `InvalidInput` if `max` is 0 or `min > max`.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.set_thread_pool_size(1, 4)?;
    /// assert!(ctx.set_thread_pool_size(5, 4).is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_thread_pool_size(&self, min: usize, max: usize) -> io::Result<()> {
        self.home.set_thread_pool_size(min, max)
    }

    /// Creates a bottom half (QEMU's `aio_bh_new`). It runs `f` on this thread at the iteration after each
    /// [`Bh::schedule`]. See [`Bh`].
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc};
    /// let ctx = aioctx::AioContext::new()?;
    /// let runs = Rc::new(Cell::new(0));
    /// let bh = ctx.bh({ let r = runs.clone(); move || r.set(r.get() + 1) });
    /// for _ in 0..3 {
    ///     bh.schedule();
    ///     ctx.poll(false);
    /// }
    /// assert_eq!(runs.get(), 3); // unlike bh_oneshot, a Bh runs each time it is scheduled
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bh(&self, f: impl Fn() + 'static) -> Bh {
        Bh::new(&self.home, BhCall::Repeat(Rc::new(f)))
    }

    /// Runs `f` once at the next iteration (QEMU's `aio_bh_schedule_oneshot`). For a `Send` closure from
    /// another thread use [`Remote::schedule_oneshot`].
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let ran = std::rc::Rc::new(std::cell::Cell::new(false));
    /// ctx.bh_oneshot({ let r = ran.clone(); move || r.set(true) });
    /// assert!(!ran.get());
    /// ctx.poll(false);
    /// assert!(ran.get());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bh_oneshot(&self, f: impl FnOnce() + 'static) {
        self.home.schedule_local_oneshot(Box::new(f));
    }

    /// Registers handlers for `fd` (QEMU's `aio_set_fd_handler`); dropping the returned registration
    /// removes them. See [`FdHandlers`] for what each callback does.
    ///
    /// Errors: `fd` is not open (`EBADF`), `fd` already has handlers in this context (`AlreadyExists`),
    /// or the forced epoll backend cannot watch it (`EPERM`, e.g. a regular file; the default backends
    /// fall back to poll instead). The context is unchanged after an error.
    ///
    /// ```
    /// use std::{cell::Cell, io::Write, os::fd::AsRawFd, os::unix::net::UnixStream, rc::Rc};
    /// use aioctx::{AioContext, FdHandlers};
    /// let ctx = AioContext::new()?;
    /// let (rx, mut tx) = UnixStream::pair()?;
    /// let readable = Rc::new(Cell::new(false));
    /// let _reg = ctx.set_fd_handler(rx.as_raw_fd(), FdHandlers::new().read({
    ///     let r = readable.clone();
    ///     move || r.set(true)
    /// }))?;
    /// tx.write_all(b"x")?;
    /// assert!(ctx.poll(true)); // sleeps until rx is readable, then runs the read callback
    /// assert!(readable.get());
    /// let again = ctx.set_fd_handler(rx.as_raw_fd(), FdHandlers::new());
    /// assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_fd_handler(
        &self,
        fd: std::os::fd::RawFd,
        handlers: FdHandlers,
    ) -> io::Result<FdRegistration> {
        let token = self.home.add_handler(fd, handlers, false)?;
        Ok(FdRegistration::new(&self.home, token, fd, None))
    }

    /// Watches an [`EventNotifier`] (QEMU's `aio_set_event_notifier`): `on_read` runs when it is set.
    /// It does not clear the notifier: call [`EventNotifier::test_and_clear`] in `on_read`.
    ///
    /// With `poll`, the handler takes part in busy-polling: the loop calls `poll` while it spins and calls
    /// `on_read` when it returns true, with no syscall. For separate `poll_ready`, `poll_begin` and
    /// `poll_end` callbacks use [`set_fd_handler`](Self::set_fd_handler) on the notifier's fd.
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc};
    /// use aioctx::{AioContext, EventNotifier};
    ///
    /// let ctx = AioContext::new()?;
    /// let n = EventNotifier::new()?;
    /// let hits = Rc::new(Cell::new(0));
    /// let _reg = ctx.set_event_notifier(&n, {
    ///     let (n, hits) = (n.clone(), hits.clone());
    ///     move || if n.test_and_clear().unwrap() { hits.set(hits.get() + 1) }
    /// }, None)?;
    /// n.set()?;
    /// ctx.poll(false);
    /// assert_eq!(hits.get(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_event_notifier(
        &self,
        notifier: &EventNotifier,
        on_read: impl Fn() + 'static,
        poll: Option<Box<dyn Fn() -> bool>>,
    ) -> io::Result<FdRegistration> {
        let fd = notifier.as_raw_fd();
        let token =
            self.home
                .add_handler(fd, fd_handlers::notifier_handlers(on_read, poll), false)?;
        Ok(FdRegistration::new(
            &self.home,
            token,
            fd,
            Some(notifier.clone()),
        ))
    }

    /// Creates a timer on `clock` that runs `f` when it expires (QEMU's `timer_new_ns`). It starts
    /// disarmed; see [`Timer`].
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc, time::Duration};
    /// use aioctx::{AioContext, time::Clock};
    /// let ctx = AioContext::new()?;
    /// let clock = ctx.virtual_clock();
    /// clock.pause();
    /// let fired = Rc::new(Cell::new(false));
    /// let timer = ctx.timer(Clock::Virtual, { let f = fired.clone(); move || f.set(true) });
    /// timer.arm_after(Duration::from_secs(60));
    /// assert!(!ctx.poll(false));
    /// clock.advance(Duration::from_secs(60)); // a minute of guest time, at once
    /// assert!(ctx.poll(false));
    /// assert!(fired.get());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn timer(&self, clock: Clock, f: impl Fn() + 'static) -> Timer {
        Timer::new(&self.home, clock, Rc::new(f))
    }

    /// This context's guest clock, the one [`Clock::Virtual`] timers use.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let clock = ctx.virtual_clock();
    /// // The handle is Send: a control thread can stop this context's guest time.
    /// std::thread::spawn(move || clock.pause()).join().unwrap();
    /// assert!(ctx.virtual_clock().is_paused());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn virtual_clock(&self) -> VirtualClock {
        self.home.timers().virtual_clock().clone()
    }

    /// Reads `clock` in ns as this context sees it.
    ///
    /// ```
    /// use aioctx::time::Clock;
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// let frozen = ctx.now_ns(Clock::Virtual);
    /// let before = ctx.now_ns(Clock::Realtime);
    /// assert!(ctx.now_ns(Clock::Realtime) >= before); // monotonic
    /// assert_eq!(ctx.now_ns(Clock::Virtual), frozen); // paused
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn now_ns(&self, clock: Clock) -> i64 {
        self.home.timers().now(clock)
    }
}

/// Keeps a context current on this thread; see [`AioContext::enter`].
///
/// ```
/// let ctx = aioctx::AioContext::new()?;
/// let handle = {
///     let _guard = ctx.enter();
///     aioctx::spawn_local(async { 7 }) // finds ctx through the guard
/// };
/// assert_eq!(ctx.block_on(handle).unwrap(), 7);
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "the context is current only while the guard lives"]
pub struct EnterGuard<'a> {
    _guard: current::EnterGuard,
    _context: std::marker::PhantomData<&'a AioContext>,
}

impl fmt::Debug for EnterGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnterGuard")
    }
}

/// Runs `f` with the context that runs on this thread right now (QEMU's
/// `qemu_get_current_aio_context()`, tokio's `Handle::current()`): the innermost one polling, running
/// `block_on` or entered with [`AioContext::enter`]. From any task, bottom half, timer or fd handler,
/// including on an [`IoThread`](crate::IoThread), `f` reaches that context's full callback API:
/// [`bh`](AioContext::bh), [`timer`](AioContext::timer), [`set_fd_handler`](AioContext::set_fd_handler),
/// [`set_event_notifier`](AioContext::set_event_notifier), [`add_sqe`](AioContext::add_sqe),
/// [`remote`](AioContext::remote), [`stats`](AioContext::stats). A nested context (a `block_on` inside
/// a callback of another one) is the one `f` sees until it returns.
///
/// # Panics
///
/// Outside a thread that runs a context; [`try_with_current`] returns `None` there instead.
///
/// ```
/// use std::{cell::Cell, rc::Rc};
/// let io = aioctx::IoThread::spawn("current")?;
/// let ran = io.remote().spawn_local_with(|| async {
///     // A task on the IOThread creates a bottom half on its own loop.
///     let hits = Rc::new(Cell::new(0));
///     let bh = aioctx::with_current(|ctx| ctx.bh({ let h = hits.clone(); move || h.set(h.get() + 1) }));
///     bh.schedule();
///     aioctx::yield_now().await; // the BH runs at the next iteration
///     hits.get()
/// });
/// assert_eq!(ran.join_blocking().unwrap(), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
#[track_caller]
pub fn with_current<R>(f: impl FnOnce(&AioContext) -> R) -> R {
    try_with_current(f).unwrap_or_else(|| {
        panic!(
            "aioctx::with_current called outside an aioctx context: call it from a task, a callback, \
             block_on or inside AioContext::enter, or use aioctx::try_with_current"
        )
    })
}

/// Runs `f` with the context that runs on this thread right now (see [`with_current`]), or returns
/// `None` if there is none.
///
/// ```
/// assert!(aioctx::try_with_current(|_| ()).is_none()); // no context on this thread yet
/// let ctx = aioctx::AioContext::new()?;
/// let backend = ctx.block_on(async { aioctx::try_with_current(|ctx| ctx.backend()) });
/// assert_eq!(backend, Some(ctx.backend()));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn try_with_current<R>(f: impl FnOnce(&AioContext) -> R) -> Option<R> {
    current::with_current(|home| {
        // SAFETY: `AioContext` is `repr(transparent)` over `Rc<HomeState>`, so a reference to one is a
        // valid reference to the other. The reference lends the context only for `f`: no owned
        // `AioContext` is made, so its `Drop` (the teardown) never runs for it.
        let ctx = unsafe { &*(home as *const Rc<HomeState>).cast::<AioContext>() };
        f(ctx)
    })
}

impl AioContext {
    /// Wraps a freshly built state (see `task/`, which builds contexts with their executor).
    pub(crate) fn from_home(home: Rc<HomeState>) -> AioContext {
        AioContext { home }
    }

    /// The home-thread state, for the layers above the loop.
    pub(crate) fn home(&self) -> &Rc<HomeState> {
        &self.home
    }
}

impl Drop for AioContext {
    fn drop(&mut self) {
        let _enter = current::enter(&self.home);
        self.home.tear_down();
    }
}
