//! The loop: QEMU's per-thread `AioContext`.
//!
//! [`AioContext`] (in `aio_context.rs`) is the public face. Behind it, a context is two states:
//! - [`HomeState`]: what only the home thread touches. It is a composition of subsystem states, each
//!   owned by its module, with private fields: the fd handler table (`handler_table.rs`), bottom-half
//!   dispatch (`bh.rs`), the timer lists and clocks (`timer.rs`), busy-polling (`polling.rs`), user
//!   SQEs (`user_sqe.rs`), the iteration's buffers (`aio_poll.rs`), the blocking pool's slot
//!   (`thread_pool.rs`) and what an outside driver keeps between steps (`external.rs`), plus the fd
//!   monitor, which several of them drive.
//! - [`SharedState`]: what other threads reach through a [`Remote`]: the [`Wakeup`] (notify_me word,
//!   eventfd), the lock-free BH list, the statistics, the closed flag, and the executor's hook.
//!
//! `aio_poll.rs` sequences one iteration over these states; `external.rs` splits the same iteration
//! into prepare / check / dispatch for a poller outside the context (glib, the main loop). The executor sits above the loop (in
//! `task/`), as QEMU's coroutine scheduling sits on a BH: the loop knows it only as a [`TaskStep`],
//! called once per iteration, and knows nothing of futures.
//!
//! # Ground rules
//!
//! Home-thread state lives in `Cell`s and `RefCell`s, and these rules keep them sound with callbacks
//! that may do anything (add and remove handlers, schedule BHs, arm timers, spawn tasks, poll the
//! context nested, panic):
//!
//! 1. **No borrow is held while user code runs.** A `RefCell` is borrowed only for a bounded step that
//!    calls nothing the user wrote: take what is needed out (an `Rc` of a handler node, a BH's
//!    callback, a timer's action, a completion), end the borrow, then call it.
//! 2. **Nothing user-owned is dropped under a borrow.** A removed handler, timer or BH callback may own
//!    registrations of this very context whose drops come back here: take it out, end the borrow,
//!    drop it.
//! 3. **Every flag raised around user code is lowered by a guard**, so a panic leaves the state
//!    consistent: the notify_me announcement, the busy-polling flag, a handler's `in_poll_ready`.
//! 4. **Iteration scratch is taken, not borrowed**, so a nested iteration finds it taken and uses its
//!    own (the ready list, the monitor's event buffer).
//!
//! Sites that borrow a cell refer to these rules as "ground rule N".

mod aio_context;
mod aio_poll;
mod bh;
pub(crate) mod bh_list;
mod builder;
pub(crate) mod current;
mod external;
mod fd_handlers;
mod handler_table;
mod hit_rate;
pub(crate) mod msg_ring;
pub(crate) mod notify;
mod poll_params;
mod polling;
mod ready;
mod remote;
#[cfg(all(test, not(loom)))]
mod stale_taskrun_tests;
mod stats;
mod task_step;
mod thread_pool;
mod timer;
mod user_sqe;
mod wake_latency;

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

pub use aio_context::{try_with_current, with_current, AioContext, EnterGuard};
pub use bh::{Bh, RemoteBh};
pub use builder::Builder;
pub use fd_handlers::{FdHandlers, FdRegistration};
pub use poll_params::PollParams;
pub use remote::Remote;
pub use stats::Stats;
pub(crate) use task_step::{TaskStep, TaskStepSeed};
pub use timer::{Timer, TimerHandle};
pub use user_sqe::SqeCompletion;

use crate::fdmon::{Backend, FdMonitor, Interest, MonitorConfig};
use crate::thread_id::thread_token;
use crate::timers::VirtualClock;
use crate::{sys, EventNotifier};
use notify::Wakeup;

/// The part of a context that other threads may touch.
pub(crate) struct SharedState {
    /// A process-unique identity (futures keep it to find their context without keeping it alive).
    id: u64,
    /// The home thread's [`thread_token`].
    home: u64,
    wakeup: Arc<Wakeup>,
    bhs: bh_list::BhList<bh::BhPayload>,
    stats: stats::Counters,
    closed: AtomicBool,
    /// The executor layered on this loop.
    tasks: Arc<dyn TaskStep>,
}

impl fmt::Debug for SharedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedState")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SharedState {
    /// `aio_notify`.
    pub(crate) fn notify(&self) {
        self.wakeup.notify();
    }

    /// How any thread wakes the loop.
    pub(crate) fn wakeup(&self) -> &Arc<Wakeup> {
        &self.wakeup
    }

    /// The executor's hook (the executor downcasts it to itself).
    pub(crate) fn tasks(&self) -> &Arc<dyn TaskStep> {
        &self.tasks
    }

    /// Whether the context has been dropped.
    pub(crate) fn is_closed(&self) -> bool {
        // Acquire pairs with the Release store at teardown.
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn stats(&self) -> Stats {
        self.stats.snapshot(self.wakeup.counts())
    }
}

/// The home-thread state of a context: one owned state per subsystem (see the module's ground rules).
pub(crate) struct HomeState {
    shared: Arc<SharedState>,
    /// Shared by the handler table (registrations), user SQEs (the ring) and the iteration (waits).
    monitor: RefCell<FdMonitor>,
    handlers: handler_table::HandlerTable,
    bhs: bh::BhDispatch,
    timers: timer::Timers,
    polling: polling::Polling,
    user_sqes: user_sqe::UserSqes,
    buffers: aio_poll::IterationBuffers,
    pool: thread_pool::ThreadPoolSlot,
    /// What an outside driver (glib, the main loop) keeps between the steps of an iteration.
    external: external::ExternalState,
}

impl HomeState {
    /// Builds a context's state from a builder, with the executor `make_tasks` builds hooked in.
    pub(crate) fn new(
        b: Builder,
        make_tasks: impl FnOnce(TaskStepSeed) -> Arc<dyn TaskStep>,
    ) -> io::Result<Rc<HomeState>> {
        let poll = b.poll.validate()?;
        let pool = thread_pool::ThreadPoolSlot::new(b.pool_size)?;
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
        let eventfd = EventNotifier::new()
            .map_err(|e| sys::with_context(e, "creating the context's event notifier"))?;
        let counters = stats::Counters::default();
        let simulate_uring_errno = b.simulate_uring_errno();
        let monitor = FdMonitor::new(&MonitorConfig {
            backend,
            forced,
            ring_entries: b.ring_entries,
            max_batch: b.max_batch,
            simulate_uring_errno,
            uring_stats: Arc::clone(&counters.uring),
        })?;
        // Relaxed: only distinctness matters; the id publishes nothing.
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let home = thread_token();
        let msg_ring = match monitor.ring_id() {
            Some(ring) if b.wake_by_msg_ring => Some(msg_ring::MsgRingTarget::new(ring)?),
            _ => None,
        };
        let wakeup = Arc::new(Wakeup::new(eventfd, msg_ring));
        let tasks = make_tasks(TaskStepSeed {
            context_id: id,
            home_thread: home,
            wakeup: Arc::clone(&wakeup),
        });
        let shared = Arc::new(SharedState {
            id,
            home,
            wakeup: Arc::clone(&wakeup),
            bhs: bh_list::BhList::new(),
            stats: counters,
            closed: AtomicBool::new(false),
            tasks,
        });
        let virtual_clock = VirtualClock::new(Waker::from(Arc::clone(&wakeup)));
        let home_state = Rc::new(HomeState {
            shared,
            monitor: RefCell::new(monitor),
            handlers: handler_table::HandlerTable::default(),
            bhs: bh::BhDispatch::default(),
            timers: timer::Timers::new(virtual_clock, b.start_paused),
            polling: polling::Polling::new(poll, b.poll_idle_timeout),
            user_sqes: user_sqe::UserSqes::new(simulate_uring_errno),
            buffers: aio_poll::IterationBuffers::default(),
            pool,
            external: external::ExternalState::default(),
        });
        home_state.watch_own_notifier()?;
        sys::set_thread_timer_slack_1ns();
        Ok(home_state)
    }

    /// Registers the context's own eventfd: read clears it, and while polling a pending notification
    /// is a poll hit (QEMU's `aio_context_notifier_poll`).
    fn watch_own_notifier(&self) -> io::Result<()> {
        let wakeup = &self.shared.wakeup;
        let handlers = FdHandlers::new()
            .read({
                let wakeup = Arc::clone(wakeup);
                move || {
                    let _ = wakeup.eventfd().test_and_clear();
                }
            })
            .poll(
                {
                    let wakeup = Arc::clone(wakeup);
                    move || wakeup.state().is_notified()
                },
                || {},
            );
        self.add_handler(wakeup.eventfd().as_raw_fd(), handlers, true)
            .map(drop)
    }

    /// The shared part.
    pub(crate) fn shared(&self) -> &Arc<SharedState> {
        &self.shared
    }

    /// An identity for this context that futures can keep without keeping the context alive.
    pub(crate) fn id(&self) -> u64 {
        self.shared.id
    }

    /// The fd monitor in use.
    pub(crate) fn backend(&self) -> Backend {
        self.monitor.borrow().backend()
    }

    /// The timer lists, clocks and the time futures' settings.
    pub(crate) fn timers(&self) -> &timer::Timers {
        &self.timers
    }

    /// Teardown, in the order that keeps every invariant: tasks first (their futures may own
    /// registrations, timers and BHs of this context); then user SQEs (their memory belongs to
    /// callbacks, and the kernel must be done with it before anything that might unwind drops user
    /// values); then everything else, each taken out first and dropped after its borrow ended
    /// (ground rule 2).
    fn tear_down(&self) {
        self.run_teardown_hooks();
        let tasks = Arc::clone(&self.shared.tasks);
        tasks.cancel_all();
        self.cancel_all_user_sqes();
        // Release pairs with `SharedState::is_closed`'s Acquire.
        self.shared.closed.store(true, Ordering::Release);
        // A remote spawn may have slipped in between the task cancellation and the close.
        tasks.close();
        self.pool.shut_down();
        let handlers = self.handlers.drain();
        for node in &handlers {
            self.monitor
                .borrow_mut()
                .set(node.fd(), 0, Interest::NONE)
                .ok();
        }
        drop(handlers);
        let timers = self.timers.drain();
        drop(timers);
        self.bhs.drop_all(&self.shared);
    }
}

/// Runs `f` on the current context's home-thread state (for work that reaches a context as a closure,
/// e.g. an IOThread's control calls). Fails with `NotConnected` outside a context.
pub(crate) fn with_current_home<R>(f: impl FnOnce(&HomeState) -> io::Result<R>) -> io::Result<R> {
    current::with_current(|home| f(home)).unwrap_or_else(|| {
        Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "not running inside an aioctx context",
        ))
    })
}
