//! The notify_me protocol: waking a loop from another thread costs a syscall only when the loop sleeps.
//!
//! QEMU keeps two variables, `notify_me` (a count of pollers about to block) and `notified`, and orders them
//! with two full barriers in a store-buffering (Dekker) pattern: `aio_notify` stores `notified` then reads
//! `notify_me`; `aio_poll` stores `notify_me` then reads `notified`. The barriers guarantee that at least one
//! side sees the other's store, so either the poller does not block or the notifier writes the eventfd.
//!
//! aioctx packs both into one atomic word: bit 1 is `notified`, the bits above count pollers in units of
//! [`WAITER`], and bit 0 is QEMU's bit 0 of `notify_me`: the window between the prepare and the check
//! of an iteration that something outside the context drives (glib through the context's GSource, or
//! the `MainLoop`), see `external.rs`. It is a bit and not a count, as in QEMU,
//! because glib may call prepare and never check (a source of higher priority was ready): the stale
//! bit then only costs eventfd writes a sleeping loop would have needed anyway, until the next check
//! clears it. Every step is then a read-modify-write of that single word, and all RMWs of one location are
//! totally ordered, so "one side sees the other" follows from the modification order alone, with no
//! reliance on fences (which also lets loom check the protocol exactly; it does not model SeqCst fences).
//! The cost is the same as QEMU's: one locked instruction on each side.
//!
//! The single word also lets [`NotifyState::notify_kick`] skip the eventfd write when `notified` was already
//! set: whoever set it first either saw no waiter (and the waiter will see `notified` and not block) or
//! wrote the eventfd itself, which is still pending. So a burst of cross-thread wakeups against a sleeping
//! loop costs one write, not one per wakeup.
//!
//! Ordering: every RMW is `AcqRel`. The notifier's work (say, pushing a bottom half) happens before its
//! `fetch_or`; the poller's [`accept`](NotifyState::accept) is an RMW later in the modification order, so it
//! acquires everything released by the notifications it clears, and the dispatch that follows sees the work.
//! Each operation below names the one it pairs with.
//!
//! [`Wakeup`] is what every waker of a context holds: the word, the context's eventfd (QEMU's
//! `ctx->notifier`), the busy-polling flag and the counters of both paths. Bottom halves, remote task
//! wakes, the virtual clock and `block_on` all wake the loop through it.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::task::Wake;

use super::msg_ring::MsgRingTarget;
use crate::atomics::{AtomicU32, Ordering};
use crate::EventNotifier;

/// The prepare..check window of an externally driven iteration (QEMU's bit 0 of `notify_me`).
const WINDOW: u32 = 1;
const NOTIFIED: u32 = 2;
/// What one poller adds to the word while it is about to block (QEMU adds 2 to `notify_me`; aioctx
/// needs one bit more, for `notified`).
const WAITER: u32 = 4;

/// Who a notification must wake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Nobody: the loop is not waiting, or an earlier notification already kicked it.
    None,
    /// The loop, blocked (or about to block) in its own fd monitor.
    Loop,
    /// An outside poller (glib, the `MainLoop`) watching the eventfd.
    OutsidePoller,
}

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

    /// `aio_notify`: marks the context notified and says who must be kicked: nobody, or a poller
    /// that may be blocked and that nobody has kicked yet.
    pub(crate) fn notify_kick(&self) -> Kick {
        // Pairs with `prepare_wait`'s fetch_add (whichever comes later in the word's modification order
        // sees the other), and releases the caller's work to `accept` and `is_notified`.
        let old = self.word.fetch_or(NOTIFIED, Ordering::AcqRel);
        if old & NOTIFIED != 0 {
            Kick::None
        } else if old & WINDOW != 0 {
            // An outside driver is between prepare and check: it polls the eventfd.
            Kick::OutsidePoller
        } else if old != 0 {
            Kick::Loop
        } else {
            Kick::None
        }
    }

    /// Called by the poller right before it blocks. Returns true if a notification is already pending,
    /// in which case the poller must not block (QEMU: `timeout = 0`). Either way the poller must call
    /// [`finish_wait`](Self::finish_wait) afterwards.
    pub(crate) fn prepare_wait(&self) -> bool {
        // Pairs with `notify_kick`'s fetch_or: a notifier before us in the modification order left NOTIFIED
        // for us to see; one after us sees our WAITER and writes the eventfd.
        let old = self.word.fetch_add(WAITER, Ordering::AcqRel);
        old & NOTIFIED != 0
    }

    /// Called by the poller once its wait returned.
    pub(crate) fn finish_wait(&self) {
        // Pairs with the Acquire half of `notify_kick`'s fetch_or. The wake decision needs only the
        // modification order of the word; Release merely keeps the withdrawal after the wait.
        self.word.fetch_sub(WAITER, Ordering::Release);
    }

    /// `aio_notify_accept`: clears `notified` before dispatch, so a notification that arrives during dispatch
    /// stops the next wait.
    pub(crate) fn accept(&self) {
        // Acquire pairs with the Release half of every `notify_kick` it clears: the dispatch that follows sees
        // the work published before those notifications.
        self.word.fetch_and(!NOTIFIED, Ordering::AcqRel);
    }

    /// The prepare step of an externally driven iteration (QEMU's `aio_ctx_prepare` setting bit 0):
    /// from now until [`close_window`](Self::close_window) a notification writes the eventfd, which
    /// the outside poller watches. Returns true if a notification is already pending (then the
    /// poller must not block). Idempotent: a window left open by a prepare without check stays open.
    #[cfg_attr(not(any(feature = "glib", loom)), allow(dead_code))]
    pub(crate) fn open_window(&self) -> bool {
        // Pairs with `notify_kick`'s fetch_or exactly as `prepare_wait` does: whichever comes later in
        // the word's modification order sees the other.
        let old = self.word.fetch_or(WINDOW, Ordering::AcqRel);
        old & NOTIFIED != 0
    }

    /// The check step of an externally driven iteration (QEMU's `aio_ctx_check`: bit 0 cleared,
    /// then `aio_notify_accept`), in one step: the window closes and pending notifications are
    /// accepted. A notification after this leaves `notified` set for the next prepare to see.
    #[cfg_attr(not(any(feature = "glib", loom)), allow(dead_code))]
    pub(crate) fn close_window(&self) {
        // Acquire pairs with the Release half of every `notify_kick` it clears, as in `accept`.
        self.word.fetch_and(!(WINDOW | NOTIFIED), Ordering::AcqRel);
    }

    /// The context notifier's userspace poll function: a notification is pending.
    pub(crate) fn is_notified(&self) -> bool {
        // Pairs with `notify_kick`'s Release half: a poll hit on NOTIFIED sees the notifier's work.
        self.word.load(Ordering::Acquire) & NOTIFIED != 0
    }
}

/// How any thread wakes a context's loop: the notify_me word, the eventfd, and whether the loop is
/// busy-polling (then even a home-thread wake must notify, so that the spinning stops).
#[derive(Debug)]
pub(crate) struct Wakeup {
    state: NotifyState,
    /// The context's own eventfd (QEMU's `ctx->notifier`), written only when the loop may be asleep.
    eventfd: EventNotifier,
    /// Where to post wake-ups instead of writing the eventfd, when the context asked for it.
    msg_ring: Option<MsgRingTarget>,
    /// The loop is busy-polling. Written and read only on the home thread (a home-thread wake checks
    /// it); the atomic only lets the struct be shared.
    polling: AtomicBool,
    counters: NotifyCounters,
}

/// Written by any thread: on their own cache line so that remote notifiers do not bounce the loop's.
#[derive(Debug, Default)]
#[repr(align(128))]
struct NotifyCounters {
    writes: AtomicU64,
    skipped: AtomicU64,
    ring_posts: AtomicU64,
}

impl Wakeup {
    pub(crate) fn new(eventfd: EventNotifier, msg_ring: Option<MsgRingTarget>) -> Self {
        Self {
            state: NotifyState::new(),
            eventfd,
            msg_ring,
            polling: AtomicBool::new(false),
            counters: NotifyCounters::default(),
        }
    }

    /// `aio_notify`: wakes the loop from its current or next wait; writes the eventfd only if the loop
    /// may be asleep and nobody kicked it yet.
    pub(crate) fn notify(&self) {
        // Relaxed counters: statistics, they publish nothing.
        match self.state.notify_kick() {
            Kick::None => {
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            }
            Kick::Loop if self.msg_ring.as_ref().is_some_and(MsgRingTarget::post) => {
                self.counters.ring_posts.fetch_add(1, Ordering::Relaxed);
            }
            Kick::Loop | Kick::OutsidePoller => {
                // Failing to write our own eventfd can only mean its counter is saturated, i.e. it
                // is set.
                let _ = self.eventfd.set();
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The ring target, while notifications may post to it (see `msg_ring.rs`).
    pub(crate) fn msg_ring(&self) -> Option<&MsgRingTarget> {
        self.msg_ring.as_ref()
    }

    /// The notify_me word, for the loop's wait protocol.
    pub(crate) fn state(&self) -> &NotifyState {
        &self.state
    }

    /// The eventfd the loop watches.
    pub(crate) fn eventfd(&self) -> &EventNotifier {
        &self.eventfd
    }

    /// Whether the loop is busy-polling. Home thread only (see the field).
    pub(crate) fn is_polling(&self) -> bool {
        // Relaxed: the flag is written and read on the same (home) thread.
        self.polling.load(Ordering::Relaxed)
    }

    /// Raises the busy-polling flag until the guard drops (also on unwind). Home thread only.
    pub(crate) fn start_polling(&self) -> PollingGuard<'_> {
        // Relaxed: see `is_polling`.
        self.polling.store(true, Ordering::Relaxed);
        PollingGuard(&self.polling)
    }

    /// `(eventfd writes, writes skipped, ring posts)` so far.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        // Relaxed: statistics.
        (
            self.counters.writes.load(Ordering::Relaxed),
            self.counters.skipped.load(Ordering::Relaxed),
            self.counters.ring_posts.load(Ordering::Relaxed),
        )
    }
}

/// Waking a `Waker` made from a `Wakeup` notifies the loop (the virtual clock holds one).
impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.notify();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.notify();
    }
}

/// Clears the busy-polling flag when polling ends, or a poll function or hook unwinds.
pub(crate) struct PollingGuard<'a>(&'a AtomicBool);

impl Drop for PollingGuard<'_> {
    fn drop(&mut self) {
        // Relaxed: see `Wakeup::is_polling`.
        self.0.store(false, Ordering::Relaxed);
    }
}
