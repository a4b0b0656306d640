//! The AioContext: QEMU's per-thread event loop.
//!
//! [`AioContext`] is the home-thread object: it owns the handler table, the bottom-half callbacks, the
//! timers and the fd monitor, all behind `RefCell`s that are never borrowed while user code runs.
//! [`Shared`] is the part other threads reach through [`Remote`]: the notify_me word, the context's
//! eventfd, the lock-free BH list and the statistics. See `aio_poll.rs` for one iteration of the loop.

mod aio_poll;
pub(crate) mod bh;
pub(crate) mod bh_list;
mod block_on;
mod builder;
pub(crate) mod current;
mod handlers;
pub(crate) mod notify;
mod polling;
mod remote;
#[cfg(all(test, not(loom)))]
mod stale_taskrun_tests;
mod stats;
mod uring;
mod wake_lead;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;

use slab::Slab;

pub use bh::{Bh, RemoteBh};
pub use builder::{Backend, Builder};
pub use handlers::{FdHandlers, FdRegistration};
pub use polling::PollParams;
pub use remote::Remote;
pub use stats::Stats;
pub(crate) use stats::UringCounters;
pub use uring::SqeCompletion;

use crate::fdmon::{FdMonitor, MonitorConfig};
use crate::task::queue::{thread_token, RunQueues};
use crate::task::{JoinHandle, Runnable, TaskRegistry};
use crate::time::{Clock, Timer, TimerLists, VirtualClock};
use crate::{sys, EventNotifier};

/// The part of a context that other threads may touch.
pub(crate) struct Shared {
    /// A process-unique identity (futures keep it to find their context without keeping it alive).
    pub(crate) id: u64,
    /// The home thread's [`thread_token`](crate::task::queue::thread_token).
    pub(crate) home: u64,
    pub(crate) notify_state: notify::NotifyState,
    /// The context's own eventfd (QEMU's `ctx->notifier`), written only when the loop may be asleep.
    pub(crate) notifier: EventNotifier,
    pub(crate) bhs: bh_list::BhList<bh::BhPayload>,
    pub(crate) stats: stats::Counters,
    pub(crate) closed: AtomicBool,
    /// The task run queues.
    pub(crate) tasks: RunQueues<Runnable>,
    /// The loop is busy-polling: a home-thread wake must notify so that polling stops.
    pub(crate) polling: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// The schedule function of every task of this context.
    pub(crate) fn schedule_task(&self, runnable: Runnable) {
        if self.closed.load(Ordering::Acquire) {
            // The context is gone; its tasks were cancelled at teardown. This can only be a `Send` task
            // spawned through a Remote afterwards: dropping it here cancels it.
            drop(runnable);
            return;
        }
        let on_home = thread_token() == self.home;
        match self.tasks.push(runnable, on_home) {
            Ok(true) => self.notify(),
            Ok(false) => {
                if self.polling.load(Ordering::Relaxed) {
                    self.notify();
                }
            }
            Err(runnable) => drop(runnable),
        }
    }

    /// `aio_notify`.
    pub(crate) fn notify(&self) {
        if self.notify_state.notify() {
            // Failing to write our own eventfd can only mean its counter is saturated, i.e. it is set.
            let _ = self.notifier.set();
            self.stats
                .remote
                .notify_writes
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats
                .remote
                .notify_skipped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The home-thread state of a context.
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) monitor: RefCell<FdMonitor>,
    pub(crate) handlers: RefCell<handlers::Registry>,
    pub(crate) bh_callbacks: RefCell<Slab<bh::BhCallback>>,
    /// Slices of BHs being run (QEMU's `bh_slice_list`); more than one only during nested polls.
    pub(crate) bh_slices: RefCell<VecDeque<bh::Slice>>,
    pub(crate) timers: RefCell<TimerLists>,
    pub(crate) virtual_clock: VirtualClock,
    pub(crate) poll_params: Cell<PollParams>,
    /// Whether the loop is in busy-poll mode (`poll_begin` called, `poll_end` not yet).
    pub(crate) poll_started: Cell<bool>,
    /// Spare ready lists, so an iteration does not allocate (nested iterations take their own).
    pub(crate) ready_pool: RefCell<Vec<Vec<aio_poll::Ready>>>,
    /// The fd monitor's output buffer, reused across iterations.
    pub(crate) events_buf: RefCell<Vec<crate::fdmon::Event>>,
    pub(crate) notifier_token: Cell<Option<u64>>,
    /// Completion callbacks of user SQEs in flight, keyed by the slot in their `user_data`.
    pub(crate) sqe_callbacks: RefCell<Slab<uring::SqeCallback>>,
    /// The fd monitor's user-completion buffer, reused across iterations.
    pub(crate) completions_buf: RefCell<VecDeque<crate::fdmon::Completion>>,
    /// Scratch space the fd monitor fills with completions.
    pub(crate) completions_tmp: RefCell<Vec<crate::fdmon::Completion>>,
    /// Consecutive iterations that skipped the fd monitor because the loop was busy.
    pub(crate) busy_iterations: Cell<u32>,
    /// Measured wake-up latency of timed waits, spun away when polling is on.
    pub(crate) wake_lead: wake_lead::WakeLead,
    /// How long a poll function may find nothing before it leaves the poll list (io_uring only).
    pub(crate) poll_idle_ns: i64,
    /// Wakers of live tasks, for teardown.
    pub(crate) tasks: RefCell<TaskRegistry>,
    /// The clock `aioctx::time` futures use on this context: Realtime, or Virtual once time is paused.
    pub(crate) time_clock: Cell<Clock>,
    /// With the virtual clock paused, `block_on` jumps to the next virtual timer instead of sleeping.
    pub(crate) auto_advance: Cell<bool>,
    /// The blocking thread pool, created at the first `spawn_blocking`.
    pub(crate) pool: RefCell<Option<Arc<crate::pool::Pool>>>,
    /// `(min, max)` workers for the pool.
    pub(crate) pool_size: Cell<(usize, usize)>,
    /// The ring for user SQEs when the fd monitor is not io_uring, created on first use.
    pub(crate) side_ring: RefCell<Option<uring::SideRing>>,
    /// Fault injection from the builder: io_uring setup fails with this errno.
    pub(crate) simulate_uring_errno: Option<i32>,
}

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
pub struct AioContext {
    inner: Rc<Inner>,
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
    /// A context with the default configuration: `Backend::Auto` (or `AIOCTX_BACKEND`), polling off.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// assert_eq!(ctx.poll_params().max_ns, 0); // polling off
    /// assert!(!ctx.poll(false)); // nothing to do yet
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<AioContext> {
        Builder::new().build()
    }

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

    fn from_builder(b: Builder) -> io::Result<AioContext> {
        let poll = b.poll.validate()?;
        crate::pool::validate_size(b.pool_size.0, b.pool_size.1)?;
        let (backend, forced) = match b.backend {
            Backend::Auto => Backend::resolve_auto()?,
            other => (other, true),
        };
        if b.ring_entries == 0 || b.ring_entries > 32_768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "io_uring ring size {} out of range 1..=32768",
                    b.ring_entries
                ),
            ));
        }
        let notifier = EventNotifier::new()
            .map_err(|e| sys::with_context(e, "creating the context's event notifier"))?;
        let counters = stats::Counters::default();
        let monitor = FdMonitor::new(&MonitorConfig {
            backend,
            forced,
            ring_entries: b.ring_entries,
            max_batch: b.max_batch,
            simulate_uring_errno: b.simulate_uring_errno,
            uring_stats: Arc::clone(&counters.uring),
        })?;
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let home = thread_token();
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            home,
            tasks: RunQueues::new(home),
            polling: AtomicBool::new(false),
            notify_state: notify::NotifyState::new(),
            notifier,
            bhs: bh_list::BhList::new(),
            stats: counters,
            closed: AtomicBool::new(false),
        });
        let inner = Rc::new(Inner {
            virtual_clock: VirtualClock::new(Arc::clone(&shared)),
            shared,
            monitor: RefCell::new(monitor),
            handlers: RefCell::default(),
            bh_callbacks: RefCell::default(),
            bh_slices: RefCell::default(),
            timers: RefCell::default(),
            poll_params: Cell::new(poll),
            poll_started: Cell::new(false),
            ready_pool: RefCell::default(),
            events_buf: RefCell::default(),
            notifier_token: Cell::new(None),
            sqe_callbacks: RefCell::default(),
            completions_buf: RefCell::default(),
            completions_tmp: RefCell::default(),
            busy_iterations: Cell::new(0),
            wake_lead: wake_lead::WakeLead::default(),
            poll_idle_ns: i64::try_from(b.poll_idle_timeout.as_nanos()).unwrap_or(i64::MAX),
            tasks: RefCell::default(),
            time_clock: Cell::new(if b.start_paused {
                Clock::Virtual
            } else {
                Clock::Realtime
            }),
            auto_advance: Cell::new(b.start_paused),
            pool: RefCell::new(None),
            pool_size: Cell::new(b.pool_size),
            side_ring: RefCell::new(None),
            simulate_uring_errno: b.simulate_uring_errno,
        });
        if b.start_paused {
            inner.virtual_clock.pause();
        }
        let notify_token = inner.add_handler(
            inner.shared.notifier.as_raw_fd(),
            FdHandlers::new()
                .read({
                    let shared = Arc::clone(&inner.shared);
                    move || {
                        let _ = shared.notifier.test_and_clear();
                    }
                })
                .poll(
                    {
                        let shared = Arc::clone(&inner.shared);
                        move || shared.notify_state.is_notified()
                    },
                    || {},
                ),
            true,
        )?;
        inner.notifier_token.set(Some(notify_token));
        sys::set_thread_timer_slack_1ns();
        Ok(AioContext { inner })
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
        let _enter = current::enter(&self.inner);
        self.inner.aio_poll(blocking)
    }

    /// Spawns a `!Send` future as a task of this context; it runs at the task step of the coming
    /// iterations. See [`JoinHandle`].
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let h = ctx.spawn_local(async { "hello" });
    /// assert_eq!(ctx.block_on(h).unwrap(), "hello");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn_local<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.inner.spawn_local(future)
    }

    /// Runs `f` on this context's blocking thread pool; see [`spawn_blocking`](crate::spawn_blocking).
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let worker = ctx.block_on(ctx.spawn_blocking(|| std::thread::current().id())).unwrap();
    /// assert_ne!(worker, std::thread::current().id()); // ran on a pool thread
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn_blocking<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.inner.spawn_blocking(f)
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
            _guard: current::enter(&self.inner),
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
        self.inner.shared.notify();
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
        Remote {
            shared: Arc::clone(&self.inner.shared),
        }
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
        self.inner.monitor.borrow().backend()
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
        self.inner.shared.stats.snapshot()
    }

    /// The current polling parameters.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// assert_eq!(ctx.poll_params(), aioctx::PollParams::default());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_params(&self) -> PollParams {
        self.inner.poll_params.get()
    }

    /// Changes the polling parameters at run time and resets every handler's window (QEMU's
    /// `aio_context_set_poll_params`). Fails with `InvalidInput` if a value does not fit in an `i64`.
    ///
    /// ```
    /// use aioctx::{AioContext, PollParams};
    /// let ctx = AioContext::new()?;
    /// ctx.set_poll_params(PollParams { max_ns: 16_384, grow: 2, shrink: 2 })?;
    /// assert_eq!(ctx.poll_params().shrink, 2);
    /// let too_big = PollParams { max_ns: u64::MAX, ..PollParams::default() };
    /// assert_eq!(ctx.set_poll_params(too_big).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_poll_params(&self, params: PollParams) -> io::Result<()> {
        self.inner.set_poll_params(params)
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
        self.inner.set_thread_pool_size(min, max)
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
        Bh::new(&self.inner, Rc::new(f))
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
        bh::schedule_local_oneshot(&self.inner, Box::new(f));
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
        let token = self.inner.add_handler(fd, handlers, false)?;
        Ok(FdRegistration::new(&self.inner, token, fd, None))
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
            self.inner
                .add_handler(fd, handlers::notifier_handlers(on_read, poll), false)?;
        Ok(FdRegistration::new(
            &self.inner,
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
        Timer::new(&self.inner, clock, Rc::new(f))
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
        self.inner.virtual_clock.clone()
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
        crate::time::clock_now(clock, &self.inner.virtual_clock)
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

/// Runs `f` on the current context's home-thread state (for work that reaches a context as a closure,
/// e.g. an IOThread's control calls). Fails with `NotConnected` outside a context.
pub(crate) fn with_current_inner<R>(f: impl FnOnce(&Inner) -> io::Result<R>) -> io::Result<R> {
    current::with_current(|inner| f(inner)).unwrap_or_else(|| {
        Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "not running inside an aioctx context",
        ))
    })
}

impl Inner {
    pub(crate) fn set_poll_params(&self, params: PollParams) -> io::Result<()> {
        let params = params.validate()?;
        self.poll_params.set(params);
        for node in self.handlers.borrow().poll_list().iter() {
            node.window_ns.set(0);
        }
        self.shared.notify();
        Ok(())
    }

    /// Teardown: wakes every live task and drops each one's future here, on the home thread.
    fn cancel_all_tasks(&self) {
        let mut idle_rounds = 0;
        loop {
            let wakers: Vec<Waker> = self.tasks.borrow().iter().map(|(_, w)| w.clone()).collect();
            for waker in wakers {
                waker.wake();
            }
            let mut dropped = 0;
            while let Some(runnable) = self.shared.tasks.pop_any() {
                // Dropping a Runnable cancels its task and drops its future, here.
                drop(runnable);
                dropped += 1;
            }
            if self.tasks.borrow().is_empty() && !self.shared.tasks.has_ready() {
                return;
            }
            if dropped == 0 {
                // What is left is a task another thread is queueing right now (give it a moment), or a
                // task that moved to another context (its registration here is stale). Bounded.
                idle_rounds += 1;
                if idle_rounds > 1_000 {
                    let stale = std::mem::take(&mut *self.tasks.borrow_mut());
                    drop(stale);
                    return;
                }
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for AioContext {
    fn drop(&mut self) {
        let inner = &self.inner;
        let _enter = current::enter(inner);
        // Tasks first: their futures may own registrations, timers and BHs of this context.
        inner.cancel_all_tasks();
        // Next let the kernel finish (or cancel) every user SQE: their memory is owned by callbacks. This
        // runs before anything else that drops user values, which might unwind.
        inner.cancel_all_user_sqes();
        inner.shared.closed.store(true, Ordering::Release);
        inner.shared.tasks.close();
        // A remote spawn may have slipped in between the task cancellation and the close.
        while let Some(runnable) = inner.shared.tasks.pop_any() {
            drop(runnable);
        }
        let pool = inner.pool.borrow_mut().take();
        if let Some(pool) = pool {
            pool.shutdown();
        }
        // Take everything out first and drop it after the borrows end: user closures may own
        // registrations, timers and BHs of this context whose own drops come back here.
        let handlers = inner.handlers.borrow_mut().drain();
        for node in &handlers {
            inner.monitor.borrow_mut().set(node.fd, 0, 0).ok();
        }
        drop(handlers);
        let timers = inner.timers.borrow_mut().drain();
        drop(timers);
        inner.drop_all_bhs();
    }
}
