//! Bottom halves: callbacks any thread can schedule to run once at the home thread's next iteration.
//!
//! The scheduling state lives in an `Arc<BhNode>` on the lock-free [`BhList`](super::bh_list::BhList);
//! the callback itself, which may be `!Send`, stays in the home thread's slab and is only ever called and
//! dropped there. A node that is deleted is freed by the loop when it next dequeues it (QEMU's rule),
//! never earlier, because a remote schedule may have pushed it onto the list concurrently.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use slab::Slab;

use super::bh_list::{self, BhNode, DELETED, IDLE, ONESHOT, SCHEDULED};
use super::{HomeState, SharedState};

/// Wait bound while only idle BHs are scheduled (QEMU: 10 ms).
pub(crate) const IDLE_BH_TIMEOUT_NS: i64 = 10_000_000;

/// What a node carries to find its callback.
pub(crate) enum BhPayload {
    /// A callback in the home thread's slab, at this key.
    Local(usize),
    /// A `Send` one-shot scheduled from another thread; taken when it runs.
    Remote(Mutex<Option<Box<dyn FnOnce() + Send>>>),
}

impl fmt::Debug for BhPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BhPayload::Local(key) => write!(f, "Local({key})"),
            BhPayload::Remote(_) => f.write_str("Remote"),
        }
    }
}

pub(crate) type Node = BhNode<BhPayload>;
pub(crate) type Slice = VecDeque<Arc<Node>>;

/// A home-thread callback and the node it belongs to (to tell it apart from a later BH in the same slot).
pub(crate) struct BhCallback {
    node: Arc<Node>,
    call: BhCall,
}

/// A home-thread BH callback: a [`Bh`]'s, run each time it is scheduled, or a one-shot's.
pub(crate) enum BhCall {
    Repeat(Rc<dyn Fn()>),
    Once(Box<dyn FnOnce()>),
}

/// The home-thread side of a context's bottom halves: their callbacks, and the slices being run.
#[derive(Default)]
pub(crate) struct BhDispatch {
    callbacks: RefCell<Slab<BhCallback>>,
    /// Slices of BHs being run (QEMU's `bh_slice_list`); more than one only during nested polls.
    slices: RefCell<VecDeque<Slice>>,
}

/// A bottom half created with [`AioContext::bh`](crate::AioContext::bh).
///
/// Scheduling it any number of times before it runs runs it once; it runs at the context's next
/// iteration, never inside the `schedule` call. Dropping the handle deletes the BH (QEMU's
/// `qemu_bh_delete`): it will not run again, and its callback is freed by the loop on the home thread.
///
/// ```
/// use std::{cell::Cell, rc::Rc};
/// let ctx = aioctx::AioContext::new()?;
/// let runs = Rc::new(Cell::new(0));
/// let bh = ctx.bh({ let r = runs.clone(); move || r.set(r.get() + 1) });
/// bh.schedule();
/// bh.schedule();
/// assert!(ctx.poll(false)); // progress: the BH ran
/// assert_eq!(runs.get(), 1); // once, though scheduled twice
/// assert!(!ctx.poll(false)); // nothing left to do
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Bh {
    node: Arc<Node>,
    shared: Arc<SharedState>,
}

impl fmt::Debug for Bh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bh")
            .field("scheduled", &self.is_scheduled())
            .finish()
    }
}

impl Bh {
    pub(crate) fn new(home: &HomeState, call: BhCall) -> Bh {
        let node = home.bhs.insert(0, call);
        Bh {
            node,
            shared: Arc::clone(&home.shared),
        }
    }

    /// Schedules the BH to run at the next iteration (QEMU's `qemu_bh_schedule`); wakes the loop. A BH
    /// pending as idle work becomes normal work.
    ///
    /// ```
    /// # use std::{cell::Cell, rc::Rc};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let runs = Rc::new(Cell::new(0));
    /// let bh = ctx.bh({ let r = runs.clone(); move || r.set(r.get() + 1) });
    /// bh.schedule();
    /// assert_eq!(runs.get(), 0); // never inside schedule
    /// assert!(ctx.poll(false));
    /// bh.schedule(); // again, now that it ran
    /// assert!(ctx.poll(false));
    /// assert_eq!(runs.get(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn schedule(&self) {
        schedule(&self.shared, &self.node, SCHEDULED);
    }

    /// Schedules the BH as idle work (QEMU's `qemu_bh_schedule_idle`): it does not count as progress and
    /// only bounds a blocking wait to 10 ms instead of ending it.
    ///
    /// ```
    /// # use std::{cell::Cell, rc::Rc};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let runs = Rc::new(Cell::new(0));
    /// let bh = ctx.bh({ let r = runs.clone(); move || r.set(r.get() + 1) });
    /// bh.schedule_idle();
    /// assert!(!ctx.poll(false)); // it ran, but idle work is not progress
    /// assert_eq!(runs.get(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn schedule_idle(&self) {
        schedule(&self.shared, &self.node, SCHEDULED | IDLE);
    }

    /// Unschedules the BH if it has not run yet (QEMU's `qemu_bh_cancel`).
    ///
    /// ```
    /// # use std::{cell::Cell, rc::Rc};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let runs = Rc::new(Cell::new(0));
    /// let bh = ctx.bh({ let r = runs.clone(); move || r.set(r.get() + 1) });
    /// bh.schedule();
    /// bh.cancel();
    /// assert!(!ctx.poll(false));
    /// assert_eq!(runs.get(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn cancel(&self) {
        self.node.clear(SCHEDULED);
    }

    /// Whether the BH is scheduled and has not run yet.
    ///
    /// ```
    /// # use std::{cell::Cell, rc::Rc};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let runs = Rc::new(Cell::new(0));
    /// let bh = ctx.bh({ let r = runs.clone(); move || r.set(r.get() + 1) });
    /// assert!(!bh.is_scheduled());
    /// bh.schedule();
    /// assert!(bh.is_scheduled());
    /// ctx.poll(false);
    /// assert!(!bh.is_scheduled());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_scheduled(&self) -> bool {
        self.node.flags() & (SCHEDULED | DELETED) == SCHEDULED
    }

    /// A `Send + Sync` handle that schedules this BH from any thread. It does not keep the BH alive:
    /// once the `Bh` is dropped (or its context is), scheduling through it does nothing.
    ///
    /// ```
    /// # use std::{cell::Cell, rc::Rc};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let runs = Rc::new(Cell::new(0));
    /// let bh = ctx.bh({ let r = runs.clone(); move || r.set(r.get() + 1) });
    /// let remote = bh.remote();
    /// remote.schedule();
    /// assert!(ctx.poll(false));
    /// drop(bh);
    /// remote.schedule(); // the BH is gone: nothing runs
    /// assert!(!ctx.poll(false));
    /// assert_eq!(runs.get(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn remote(&self) -> RemoteBh {
        RemoteBh {
            node: Arc::clone(&self.node),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Bh {
    fn drop(&mut self) {
        // The loop frees the callback when it dequeues the node; enqueueing with DELETED makes sure it
        // does, and notifies it like QEMU's qemu_bh_delete.
        schedule(&self.shared, &self.node, DELETED);
    }
}

/// Schedules a [`Bh`] from any thread. Cheap to clone; see [`Bh::remote`].
///
/// ```
/// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
/// let ctx = aioctx::AioContext::new()?;
/// let runs = Arc::new(AtomicUsize::new(0));
/// let bh = ctx.bh({ let r = runs.clone(); move || { r.fetch_add(1, Ordering::SeqCst); } });
/// let remote = bh.remote();
/// std::thread::spawn(move || remote.schedule()).join().unwrap();
/// while runs.load(Ordering::SeqCst) == 0 {
///     ctx.poll(true);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct RemoteBh {
    node: Arc<Node>,
    shared: Arc<SharedState>,
}

impl fmt::Debug for RemoteBh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteBh").finish_non_exhaustive()
    }
}

impl RemoteBh {
    /// Schedules the BH; see [`Bh::schedule`].
    ///
    /// ```
    /// # use std::{cell::Cell, rc::Rc};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let runs = Rc::new(Cell::new(0));
    /// let bh = ctx.bh({ let r = runs.clone(); move || r.set(r.get() + 1) });
    /// let remote = bh.remote();
    /// std::thread::spawn(move || remote.schedule()).join().unwrap();
    /// assert!(ctx.poll(false));
    /// assert_eq!(runs.get(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn schedule(&self) {
        schedule(&self.shared, &self.node, SCHEDULED);
    }

    /// Schedules the BH as idle work; see [`Bh::schedule_idle`].
    ///
    /// ```
    /// # use std::{cell::Cell, rc::Rc};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let runs = Rc::new(Cell::new(0));
    /// let bh = ctx.bh({ let r = runs.clone(); move || r.set(r.get() + 1) });
    /// let remote = bh.remote();
    /// std::thread::spawn(move || remote.schedule_idle()).join().unwrap();
    /// assert!(!ctx.poll(false)); // it ran, but idle work is not progress
    /// assert_eq!(runs.get(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn schedule_idle(&self) {
        schedule(&self.shared, &self.node, SCHEDULED | IDLE);
    }

    /// Unschedules the BH if it has not run yet; see [`Bh::cancel`].
    ///
    /// ```
    /// # use std::{cell::Cell, rc::Rc};
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let runs = Rc::new(Cell::new(0));
    /// let bh = ctx.bh({ let r = runs.clone(); move || r.set(r.get() + 1) });
    /// let remote = bh.remote();
    /// bh.schedule();
    /// std::thread::spawn(move || remote.cancel()).join().unwrap();
    /// assert!(!ctx.poll(false));
    /// assert_eq!(runs.get(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn cancel(&self) {
        self.node.clear(SCHEDULED);
    }
}

/// Enqueues `node` on the shared list with `flags` and wakes the loop (`aio_bh_enqueue`).
pub(crate) fn schedule(shared: &SharedState, node: &Arc<Node>, flags: u32) {
    // Unlike QEMU, a plain schedule of a BH that is pending as idle makes it normal work again: whoever
    // asks for it now should not be made to wait up to 10 ms. (IDLE is only a hint; a race here at worst
    // lets the BH run as idle work once.)
    if flags & (SCHEDULED | IDLE) == SCHEDULED && node.flags() & IDLE != 0 {
        node.clear(IDLE);
    }
    if shared.bhs.enqueue(node, flags) {
        shared.notify();
    }
}

impl BhDispatch {
    /// Stores a home-thread callback and returns the node that schedules it.
    fn insert(&self, flags: u32, call: BhCall) -> Arc<Node> {
        let mut callbacks = self.callbacks.borrow_mut();
        let entry = callbacks.vacant_entry();
        let node = BhNode::new(BhPayload::Local(entry.key()), flags);
        entry.insert(BhCallback {
            node: Arc::clone(&node),
            call,
        });
        node
    }

    fn next(&self) -> Option<(Arc<Node>, u32)> {
        let mut slices = self.slices.borrow_mut();
        loop {
            let front = slices.front_mut()?;
            match bh_list::dequeue(front) {
                Some(next) => return Some(next),
                None => {
                    slices.pop_front();
                }
            }
        }
    }

    /// Runs a BH's callback with no borrow held (ground rule 1).
    fn run(&self, node: &Arc<Node>, flags: u32) {
        match &node.payload {
            BhPayload::Local(key) => {
                let call = {
                    let mut callbacks = self.callbacks.borrow_mut();
                    match callbacks.get(*key) {
                        Some(cb) if Arc::ptr_eq(&cb.node, node) => {
                            if flags & ONESHOT != 0 {
                                Some(callbacks.remove(*key).call)
                            } else if let BhCall::Repeat(f) = &cb.call {
                                Some(BhCall::Repeat(Rc::clone(f)))
                            } else {
                                None
                            }
                        }
                        _ => None,
                    }
                };
                match call {
                    Some(BhCall::Repeat(f)) => f(),
                    Some(BhCall::Once(f)) => f(),
                    None => {}
                }
            }
            BhPayload::Remote(slot) => {
                let f = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(f) = f {
                    f();
                }
            }
        }
    }

    /// Frees a deleted BH's callback (or a one-shot that never ran) if its slot still belongs to `node`.
    fn free(&self, node: &Arc<Node>) {
        if let BhPayload::Local(key) = node.payload {
            let removed = {
                let mut callbacks = self.callbacks.borrow_mut();
                match callbacks.get(key) {
                    Some(cb) if Arc::ptr_eq(&cb.node, node) => Some(callbacks.remove(key)),
                    _ => None,
                }
            };
            // Ground rule 2.
            drop(removed);
        }
    }

    /// Context teardown: deletes every BH and drops every callback on this (the home) thread.
    pub(crate) fn drop_all(&self, shared: &SharedState) {
        let callbacks: Vec<BhCallback> = self.callbacks.borrow_mut().drain().collect();
        for cb in &callbacks {
            cb.node.mark_deleted();
        }
        let slices = std::mem::take(&mut *self.slices.borrow_mut());
        let pending = shared.bhs.take_all();
        // Ground rule 2.
        drop(callbacks);
        drop(slices);
        drop(pending);
    }
}

impl HomeState {
    /// Schedules a home-thread one-shot (`aio_bh_schedule_oneshot` with a `!Send` closure).
    pub(crate) fn schedule_local_oneshot(&self, f: Box<dyn FnOnce()>) {
        let node = self.bhs.insert(ONESHOT, BhCall::Once(f));
        schedule(&self.shared, &node, SCHEDULED);
    }

    /// QEMU's `aio_bh_poll`: moves the pending list into a new slice and runs slices oldest first until
    /// none is left. A BH scheduled meanwhile lands on the shared list and runs at the next call; a nested
    /// call (from a callback that polls) finishes the outer slices first.
    pub(crate) fn bh_poll(&self) -> bool {
        let slice = self.shared.bhs.take_all();
        if !slice.is_empty() {
            self.bhs.slices.borrow_mut().push_back(slice);
        }
        let mut progress = false;
        while let Some((node, flags)) = self.bhs.next() {
            if flags & (SCHEDULED | DELETED) == SCHEDULED {
                if flags & IDLE == 0 {
                    progress = true;
                }
                self.shared.stats.bhs_run.bump();
                self.bhs.run(&node, flags);
            } else if flags & (DELETED | ONESHOT) != 0 {
                self.bhs.free(&node);
            }
        }
        progress
    }

    /// The part of `aio_compute_timeout` that BHs decide: `Some(0)` if a non-idle BH is scheduled,
    /// `Some(10 ms)` if only idle ones are, `None` if none is.
    pub(crate) fn bh_timeout(&self) -> Option<i64> {
        let mut timeout = None;
        let mut visit = |flags: u32| {
            if flags & (SCHEDULED | DELETED) == SCHEDULED {
                if flags & IDLE == 0 {
                    timeout = Some(0);
                    return false;
                }
                timeout = Some(IDLE_BH_TIMEOUT_NS);
            }
            true
        };
        let mut keep_going = true;
        for slice in self.bhs.slices.borrow().iter() {
            for node in slice {
                keep_going = visit(node.flags());
                if !keep_going {
                    break;
                }
            }
            if !keep_going {
                break;
            }
        }
        if keep_going {
            self.shared.bhs.for_each_flags(&mut visit);
        }
        timeout
    }
}
