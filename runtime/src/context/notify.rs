//! The notify_me protocol: waking a loop from another thread costs a syscall only when the loop sleeps.
//!
//! QEMU keeps two variables, `notify_me` (a count of pollers about to block) and `notified`, and orders them
//! with two full barriers in a store-buffering (Dekker) pattern: `aio_notify` stores `notified` then reads
//! `notify_me`; `aio_poll` stores `notify_me` then reads `notified`. The barriers guarantee that at least one
//! side sees the other's store, so either the poller does not block or the notifier writes the eventfd.
//!
//! aioctx packs both into one atomic word: bit 0 is `notified`, the bits above count pollers in units of
//! [`WAITER`]. Every step is then a read-modify-write of that single word, and all RMWs of one location are
//! totally ordered, so "one side sees the other" follows from the modification order alone, with no
//! reliance on fences (which also lets loom check the protocol exactly; it does not model SeqCst fences).
//! The cost is the same as QEMU's: one locked instruction on each side.
//!
//! The single word also lets [`NotifyState::notify`] skip the eventfd write when `notified` was already
//! set: whoever set it first either saw no waiter (and the waiter will see `notified` and not block) or
//! wrote the eventfd itself, which is still pending. So a burst of cross-thread wakeups against a sleeping
//! loop costs one write, not one per wakeup.
//!
//! Ordering: every RMW is `AcqRel`. The notifier's work (say, pushing a bottom half) happens before its
//! `fetch_or`; the poller's [`accept`](NotifyState::accept) is an RMW later in the modification order, so it
//! acquires everything released by the notifications it clears, and the dispatch that follows sees the work.

use crate::atomics::{AtomicU32, Ordering};

const NOTIFIED: u32 = 1;
/// What one poller adds to the word while it is about to block (QEMU adds 2 to `notify_me` too).
const WAITER: u32 = 2;

/// The `notified` flag and the `notify_me` count in one atomic word.
#[derive(Debug)]
pub(crate) struct NotifyState {
    word: AtomicU32,
}

impl NotifyState {
    pub(crate) fn new() -> Self {
        Self {
            word: AtomicU32::new(0),
        }
    }

    /// `aio_notify`: marks the context notified. Returns true when the caller must write the eventfd
    /// because a poller may be blocked and nobody has kicked it yet.
    pub(crate) fn notify(&self) -> bool {
        let old = self.word.fetch_or(NOTIFIED, Ordering::AcqRel);
        old & NOTIFIED == 0 && old >= WAITER
    }

    /// Called by the poller right before it blocks. Returns true if a notification is already pending,
    /// in which case the poller must not block (QEMU: `timeout = 0`). Either way the poller must call
    /// [`finish_wait`](Self::finish_wait) afterwards.
    pub(crate) fn prepare_wait(&self) -> bool {
        let old = self.word.fetch_add(WAITER, Ordering::AcqRel);
        old & NOTIFIED != 0
    }

    /// Called by the poller once its wait returned.
    pub(crate) fn finish_wait(&self) {
        self.word.fetch_sub(WAITER, Ordering::Release);
    }

    /// `aio_notify_accept`: clears `notified` before dispatch, so a notification that arrives during dispatch
    /// stops the next wait.
    pub(crate) fn accept(&self) {
        self.word.fetch_and(!NOTIFIED, Ordering::AcqRel);
    }

    /// The context notifier's userspace poll function: a notification is pending.
    pub(crate) fn is_notified(&self) -> bool {
        self.word.load(Ordering::Acquire) & NOTIFIED != 0
    }
}
