//! Waking a sleeping io_uring loop by posting a CQE into its ring (`IORING_OP_MSG_RING`), instead of
//! writing its eventfd (opt-in: [`Builder::wake_by_msg_ring`](crate::Builder::wake_by_msg_ring)).
//!
//! The eventfd path costs the loop a poll completion and a `read(2)` of the eventfd after every such
//! wake-up; a posted CQE ends the loop's `io_uring_enter` by itself and leaves nothing to clear. The
//! notifying thread pays one `io_uring_enter` on a small ring of its own (one per thread, made on
//! first use) instead of one `write(2)`.
//!
//! When a posted CQE would not wake the loop, the notifier writes the eventfd as before:
//! - while an outside poller drives the loop (glib, the `MainLoop`: bit `WINDOW` of the notify
//!   word), because it watches the eventfd, not the ring;
//! - once the loop stopped waiting on the ring the target was made for (the monitor fell back to
//!   epoll or poll, or replaced its ring): the loop then [`retire`](MsgRingTarget::retire)s the
//!   target before it announces its next wait. A notifier only kicks after it saw that announcement
//!   (the notify word's RMWs order them), so it sees the retirement too;
//! - when the post fails (the notifying thread cannot make a ring, or the kernel refuses).
//!
//! The target holds a duplicate of the ring's fd, so that the fd number cannot be reused for another
//! file while a notifier may still post to it; the duplicate keeps the kernel's ring alive until the
//! last waker of the context is gone.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use io_uring::{opcode, types, IoUring};

use crate::atomics::{AtomicBool, Ordering};
use crate::fdmon::io_uring::WAKE_USER_DATA;

/// The ring a context's notifiers post wake-ups into.
#[derive(Debug)]
pub(crate) struct MsgRingTarget {
    ring: OwnedFd,
    generation: u64,
    current: Current,
}

/// Whether the loop still waits on the target's ring: cleared for good once it does not. The loom
/// model `msg_ring_retired_before_a_wait_is_seen_by_its_kicker` runs this very type.
#[derive(Debug)]
pub(crate) struct Current(AtomicBool);

impl Current {
    pub(crate) fn new() -> Self {
        Self(AtomicBool::new(true))
    }

    /// The loop no longer waits on the ring. Home thread, before it announces its next wait.
    pub(crate) fn retire(&self) {
        // Release pairs with the Acquire in `is_current`. The notify word orders the two anyway: a
        // notifier kicks only after its RMW saw the wait announced after this store.
        self.0.store(false, Ordering::Release);
    }

    pub(crate) fn is_current(&self) -> bool {
        // Acquire pairs with `retire`'s Release.
        self.0.load(Ordering::Acquire)
    }
}

impl MsgRingTarget {
    /// A target for the ring `(fd, generation)` (see `FdMonitor::ring_id`).
    pub(crate) fn new((fd, generation): (RawFd, u64)) -> io::Result<Self> {
        // SAFETY: `fd` is the monitor's open ring fd for the duration of this call; the borrow only
        // lives until it is duplicated.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        Ok(Self {
            ring: borrowed.try_clone_to_owned()?,
            generation,
            current: Current::new(),
        })
    }

    /// The generation of the ring this target posts to, while the loop still waits on it.
    pub(crate) fn current_generation(&self) -> Option<u64> {
        self.current.is_current().then_some(self.generation)
    }

    /// The loop no longer waits on this ring: notifiers go back to the eventfd. Home thread, before
    /// the loop announces its next wait.
    pub(crate) fn retire(&self) {
        self.current.retire();
    }

    /// Posts a wake-up CQE into the loop's ring; false if nothing was posted (the ring is retired, or
    /// the post failed), and the caller writes the eventfd. The fallback allocates nothing: after a
    /// retirement every notification takes it.
    pub(crate) fn post(&self) -> bool {
        self.current.is_current() && post_from_this_thread(self.ring.as_fd().as_raw_fd()).is_ok()
    }
}

thread_local! {
    /// The notifying thread's own ring, made on its first post.
    static SENDER: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// Submits one `MSG_RING` on this thread's ring and waits for its result (the kernel completes it
/// inline, so the wait does not sleep).
fn post_from_this_thread(target: RawFd) -> io::Result<()> {
    SENDER
        .try_with(|sender| {
            let mut sender = sender
                .try_borrow_mut()
                .map_err(|_| io::Error::other("reentrant MSG_RING post"))?;
            let ring = match &mut *sender {
                Some(ring) => ring,
                empty => empty.insert(IoUring::new(4)?),
            };
            // A completion left by an earlier post that failed after its submission is stale.
            ring.completion().for_each(drop);
            let sqe = opcode::MsgRingData::new(types::Fd(target), 0, WAKE_USER_DATA, None)
                .build()
                .user_data(0);
            // SAFETY: a MSG_RING with IORING_MSG_DATA references no memory of this process.
            unsafe { ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("the sender ring's SQ is full"))?;
            // A signal may interrupt the wait, not the post: submitting again waits for its CQE.
            while let Err(e) = ring.submit_and_wait(1) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let cqe = ring
                .completion()
                .next()
                .ok_or_else(|| io::Error::other("no MSG_RING completion"))?;
            match cqe.result() {
                res if res < 0 => Err(io::Error::from_raw_os_error(-res)),
                _ => Ok(()),
            }
        })
        .unwrap_or_else(|_| Err(io::Error::other("thread is exiting")))
}
