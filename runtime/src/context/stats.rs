//! Loop statistics: counters the home thread bumps and any thread can read.

use std::sync::Arc;

use crate::counter::Counter;
use crate::fdmon::UringCounters;

/// A snapshot of a context's counters since it was created. Read it with
/// [`AioContext::stats`](crate::AioContext::stats) (or from another thread through
/// [`Remote::stats`](crate::Remote::stats)).
///
/// ```
/// let ctx = aioctx::AioContext::new()?;
/// let before = ctx.stats();
/// ctx.poll(false);
/// assert_eq!(ctx.stats().iterations, before.iterations + 1);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls of `poll` (loop iterations), nested ones included.
    pub iterations: u64,
    /// Polling phases that ended because a poll function found work or the fd monitor had
    /// completions to reap (with io_uring, also the kernel's flag for pending task work).
    pub poll_hits: u64,
    /// Polling phases whose window elapsed (or that were cut short by a due timer) without finding
    /// work.
    pub poll_misses: u64,
    /// Nanoseconds spent busy-polling in userspace.
    pub poll_ns: u64,
    /// Waits in the fd monitor with a non-zero timeout (times the loop was ready to sleep).
    pub blocking_waits: u64,
    /// Notifications that had to write the eventfd because the loop was (about to be) asleep.
    pub notify_writes: u64,
    /// Notifications that skipped the eventfd write thanks to the notify_me protocol.
    pub notify_skipped: u64,
    /// Notifications delivered as a completion posted into the loop's io_uring ring instead of an
    /// eventfd write ([`Builder::wake_by_msg_ring`](crate::Builder::wake_by_msg_ring)).
    pub notify_ring_posts: u64,
    /// Bottom-half callbacks run.
    pub bhs_run: u64,
    /// fd handler dispatches (read, write or poll_ready callbacks invoked for one ready handler).
    pub handlers_dispatched: u64,
    /// Timers that fired: callbacks run and sleeping tasks woken.
    pub timers_fired: u64,
    /// Task polls (one per `Runnable` run in the task step).
    pub tasks_run: u64,
    /// io_uring monitor: `io_uring_enter` calls (submissions and waits).
    pub uring_enters: u64,
    /// io_uring monitor: SQEs the kernel accepted (fd polls, removals and user SQEs).
    pub sqes_submitted: u64,
    /// io_uring monitor: CQEs reaped.
    pub cqes_reaped: u64,
    /// io_uring monitor: userspace peeks at the completion ring that found completions (no syscall).
    pub cq_peek_hits: u64,
}

/// The loop's live counters, bumped by the home thread and read by any (see [`Counter`]). The
/// notification counters live with the [`Wakeup`](super::notify::Wakeup), which any thread writes.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) iterations: Counter,
    pub(crate) poll_hits: Counter,
    pub(crate) poll_misses: Counter,
    pub(crate) poll_ns: Counter,
    pub(crate) blocking_waits: Counter,
    pub(crate) bhs_run: Counter,
    pub(crate) handlers_dispatched: Counter,
    pub(crate) timers_fired: Counter,
    pub(crate) tasks_run: Counter,
    pub(crate) uring: Arc<UringCounters>,
}

impl Counters {
    /// A snapshot, with the notification counts `(eventfd writes, writes skipped)`.
    pub(crate) fn snapshot(
        &self,
        (notify_writes, notify_skipped, notify_ring_posts): (u64, u64, u64),
    ) -> Stats {
        Stats {
            iterations: self.iterations.get(),
            poll_hits: self.poll_hits.get(),
            poll_misses: self.poll_misses.get(),
            poll_ns: self.poll_ns.get(),
            blocking_waits: self.blocking_waits.get(),
            notify_writes,
            notify_skipped,
            notify_ring_posts,
            bhs_run: self.bhs_run.get(),
            handlers_dispatched: self.handlers_dispatched.get(),
            timers_fired: self.timers_fired.get(),
            tasks_run: self.tasks_run.get(),
            uring_enters: self.uring.enters.get(),
            sqes_submitted: self.uring.sqes_submitted.get(),
            cqes_reaped: self.uring.cqes_reaped.get(),
            cq_peek_hits: self.uring.cq_peek_hits.get(),
        }
    }
}
