//! The lock-free list of pending bottom halves (QEMU's `ctx->bh_list`).
//!
//! Any thread pushes; only the home thread takes. A push happens only when a schedule flips the PENDING flag
//! from clear to set, so a node is on the list at most once, and its `next` link is written only by the one
//! thread that set PENDING. The home thread takes the whole list with one `swap` (QEMU's QSLIST_MOVE_ATOMIC),
//! walks it into a slice, and clears a node's flags only when it dequeues it from that slice; until then
//! PENDING stays set, so nobody else writes that node's `next` while the home thread reads it. Taking the
//! whole list at once makes ABA impossible: there is no single-node pop to race with.
//!
//! The list owns one strong count of each node on it (`Arc::into_raw` on push, `Arc::from_raw` on take), so
//! a node whose handles are all dropped stays alive until the home thread takes it off.

use std::collections::VecDeque;
use std::ptr;
use std::sync::Arc;

use crate::atomics::{AtomicPtr, AtomicU32, Ordering};

/// On the list (or in a slice not yet dequeued).
pub(crate) const PENDING: u32 = 1 << 0;
/// Should run when dequeued (cleared by cancel).
pub(crate) const SCHEDULED: u32 = 1 << 1;
/// Deleted: never runs again and is freed when dequeued.
pub(crate) const DELETED: u32 = 1 << 2;
/// Freed after it runs once.
pub(crate) const ONESHOT: u32 = 1 << 3;
/// Scheduled with `schedule_idle`: bounds the wait to 10 ms and does not count as progress.
pub(crate) const IDLE: u32 = 1 << 4;

/// A bottom half as the list sees it: atomic flags, an intrusive link and a payload.
#[derive(Debug)]
pub(crate) struct BhNode<T> {
    flags: AtomicU32,
    next: AtomicPtr<BhNode<T>>,
    pub(crate) payload: T,
}

impl<T> BhNode<T> {
    pub(crate) fn new(payload: T, flags: u32) -> Arc<Self> {
        Arc::new(Self {
            flags: AtomicU32::new(flags),
            next: AtomicPtr::new(ptr::null_mut()),
            payload,
        })
    }

    pub(crate) fn flags(&self) -> u32 {
        // Acquire pairs with the AcqRel RMWs that set the flags (`enqueue`, `clear`, `mark_deleted`).
        self.flags.load(Ordering::Acquire)
    }

    /// Clears `mask` (QEMU's `qemu_bh_cancel` clears SCHEDULED).
    pub(crate) fn clear(&self, mask: u32) {
        // Pairs with `dequeue`'s fetch_and: whichever is later in the flags' modification order sees
        // the other, so a cancel either lands before the BH runs or is too late, never half.
        self.flags.fetch_and(!mask, Ordering::AcqRel);
    }

    /// Marks the node deleted without enqueueing it (context teardown, where the list is drained anyway).
    pub(crate) fn mark_deleted(&self) {
        // Pairs with `enqueue`'s fetch_or, which then refuses to schedule the node.
        self.flags.fetch_or(DELETED, Ordering::AcqRel);
    }

    /// Clears the run-state flags as the node leaves a slice and returns the flags it had. DELETED and
    /// ONESHOT stay set: they describe the node, not one scheduling of it.
    fn dequeue(&self) -> u32 {
        // Pairs with `enqueue`'s fetch_or: a schedule before this in the modification order is run now;
        // one after it sees PENDING clear and pushes the node again.
        self.flags
            .fetch_and(!(PENDING | SCHEDULED | IDLE), Ordering::AcqRel)
    }
}

/// The multi-producer, single-consumer list head.
#[derive(Debug)]
pub(crate) struct BhList<T> {
    head: AtomicPtr<BhNode<T>>,
}

// SAFETY: the list hands `Arc<BhNode<T>>` between threads, which is sound exactly when `Arc<BhNode<T>>` is
// Send and Sync, i.e. when T is Send + Sync. The raw pointers are only ever produced by `Arc::into_raw`.
unsafe impl<T: Send + Sync> Send for BhList<T> {}
// SAFETY: as above; all shared access goes through atomics.
unsafe impl<T: Send + Sync> Sync for BhList<T> {}

impl<T> BhList<T> {
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// `aio_bh_enqueue`: sets `new_flags | PENDING` on the node and pushes it if it was not pending yet.
    /// Returns false if the node is deleted, in which case nothing was pushed and nobody should be woken.
    pub(crate) fn enqueue(&self, node: &Arc<BhNode<T>>, new_flags: u32) -> bool {
        // Pairs with `dequeue`'s fetch_and (see there) and with `mark_deleted`.
        let old = node.flags.fetch_or(PENDING | new_flags, Ordering::AcqRel);
        if old & DELETED != 0 && new_flags & DELETED == 0 {
            // Scheduling a deleted BH (say, through a remote handle that outlived it) does nothing.
            return false;
        }
        if old & PENDING == 0 {
            self.push(Arc::clone(node));
        }
        true
    }

    fn push(&self, node: Arc<BhNode<T>>) {
        let raw = Arc::into_raw(node).cast_mut();
        // Relaxed: only the CAS's first guess; a stale head makes the CAS fail and retry.
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `raw` came from Arc::into_raw above and the list's reference keeps it alive. We set
            // PENDING on it, so no other thread writes its link until the home thread dequeues it.
            // Relaxed: the CAS below releases this store.
            unsafe { (*raw).next.store(head, Ordering::Relaxed) };
            // Release publishes the link and everything the scheduler did before scheduling; it pairs
            // with `take_all`'s swap and `for_each_flags`'s load. Relaxed on failure: we only retry.
            match self
                .head
                .compare_exchange_weak(head, raw, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(current) => head = current,
            }
        }
    }

    /// Takes every pushed node, oldest first. Home thread only.
    pub(crate) fn take_all(&self) -> VecDeque<Arc<BhNode<T>>> {
        // Acquire pairs with `push`'s Release CAS: the links and the schedulers' work are visible.
        let mut raw = self.head.swap(ptr::null_mut(), Ordering::AcqRel);
        let mut slice = VecDeque::new();
        while !raw.is_null() {
            // SAFETY: every non-null pointer on the list came from Arc::into_raw in `push`, and the list's
            // strong reference is transferred back here exactly once (the swap emptied the shared head, and
            // the node keeps PENDING, so it is not pushed again before it is dequeued).
            let node = unsafe { Arc::from_raw(raw) };
            // Relaxed: the link was published by the CAS that the swap above acquired.
            raw = node.next.load(Ordering::Relaxed);
            // Pushes go to the head, so walking from the head meets the newest first.
            slice.push_front(node);
        }
        slice
    }

    /// Calls `f` on the flags of every node on the list without taking them (for `aio_compute_timeout`).
    /// Home thread only: it is the only thread that removes nodes, so the nodes it walks stay alive.
    pub(crate) fn for_each_flags(&self, mut f: impl FnMut(u32) -> bool) {
        // Acquire pairs with `push`'s Release CAS.
        let mut raw = self.head.load(Ordering::Acquire);
        while !raw.is_null() {
            // SAFETY: the node is on the list, which holds a strong reference; only this (home) thread takes
            // nodes off, and its link was published by the Release CAS we synchronised with.
            let node = unsafe { &*raw };
            if !f(node.flags()) {
                return;
            }
            // Relaxed: published by the CAS the load of the head acquired.
            raw = node.next.load(Ordering::Relaxed);
        }
    }
}

impl<T> Drop for BhList<T> {
    fn drop(&mut self) {
        drop(self.take_all());
    }
}

/// Dequeues the next node of a slice: pops it and clears its run-state flags, returning the flags it had.
pub(crate) fn dequeue<T>(slice: &mut VecDeque<Arc<BhNode<T>>>) -> Option<(Arc<BhNode<T>>, u32)> {
    let node = slice.pop_front()?;
    let flags = node.dequeue();
    Some((node, flags))
}
