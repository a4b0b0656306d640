//! The fd handler table: every registered [`FdHandlers`] as a [`HandlerNode`], found by the token the
//! fd monitor reports.
//!
//! Handlers live in a slab of `Rc<HandlerNode>`. The loop never holds a borrow of the table while a
//! callback runs (ground rule 1): it clones the node (an `Rc`) out first. Removing a handler marks its
//! node deleted, so a ready-list entry or a polling pass that still holds the node skips it, and frees
//! the slot at once; a generation number in the token keeps a stale event from reaching a newer handler
//! in the same slot.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use slab::Slab;

use super::polling::PollWindow;
use super::HomeState;
use crate::fdmon::{Interest, Readiness};
use crate::{sys, FdHandlers};

/// A poll function and the callback run when it finds work.
type PollPair = (Rc<dyn Fn() -> bool>, Rc<dyn Fn()>);

/// A registered handler as the loop sees it: immutable callbacks and a few cells.
pub(crate) struct HandlerNode {
    fd: RawFd,
    read: Option<Rc<dyn Fn()>>,
    write: Option<Rc<dyn Fn()>>,
    /// `poll` and `poll_ready` together, or neither.
    poll: Option<PollPair>,
    poll_begin: Option<Rc<dyn Fn()>>,
    poll_end: Option<Rc<dyn Fn()>>,
    /// The context's own notifier: its activity is never progress.
    is_ctx_notifier: bool,
    deleted: Cell<bool>,
    /// Set while `poll_ready` runs, so a nested poll neither polls nor dispatches this handler's poll path.
    in_poll_ready: Cell<bool>,
    /// Which directions are wanted right now (readiness futures switch them without replacing the node).
    enabled: Cell<Interest>,
    /// Whether the polling phase calls this handler's poll function: it leaves the list after finding
    /// nothing for the context's idle timeout, and comes back when its fd fires.
    polled: Cell<bool>,
    /// This handler's adaptive busy-poll window and idle clock.
    window: PollWindow,
}

/// Clears a handler's `in_poll_ready` when its `poll_ready` returns, or unwinds (ground rule 3).
struct PollReadyGuard<'a>(&'a HandlerNode);

impl Drop for PollReadyGuard<'_> {
    fn drop(&mut self) {
        self.0.in_poll_ready.set(false);
    }
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
            in_poll_ready: Cell::new(false),
            enabled: Cell::new(Interest::BOTH),
            polled: Cell::new(true),
            window: PollWindow::default(),
        }
    }

    /// What this handler waits for in the kernel: the directions it has callbacks for and wants now.
    fn interest(&self) -> Interest {
        Interest::of(self.read.is_some(), self.write.is_some()).and(self.enabled.get())
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.get()
    }

    /// The context's own notifier, whose activity is never progress.
    pub(crate) fn is_ctx_notifier(&self) -> bool {
        self.is_ctx_notifier
    }

    /// Whether the handler takes part in busy-polling at all.
    pub(crate) fn has_poll(&self) -> bool {
        self.poll.is_some()
    }

    /// Whether it is on the polling phase's list.
    pub(crate) fn is_polled(&self) -> bool {
        self.polled.get()
    }

    pub(crate) fn window(&self) -> &PollWindow {
        &self.window
    }

    /// Calls the poll function, unless the handler is deleted, has none, or its `poll_ready` is
    /// running further up the stack. True if it found work.
    pub(crate) fn poll_for_work(&self) -> bool {
        if self.deleted.get() || self.in_poll_ready.get() {
            return false;
        }
        self.poll.as_ref().is_some_and(|(poll, _)| poll())
    }

    /// Runs the `poll_begin` hook, if any.
    pub(crate) fn poll_begin(&self) {
        if let Some(hook) = &self.poll_begin {
            hook();
        }
    }

    /// Runs the `poll_end` hook, if any.
    pub(crate) fn poll_end(&self) {
        if let Some(hook) = &self.poll_end {
            hook();
        }
    }

    /// Runs `poll_ready` (its poll function found work), unless deleted or already running. Returns
    /// whether it ran.
    pub(crate) fn run_poll_ready(&self) -> bool {
        if self.deleted.get() || self.in_poll_ready.get() {
            return false;
        }
        let Some((_, on_ready)) = &self.poll else {
            return false;
        };
        self.in_poll_ready.set(true);
        let _guard = PollReadyGuard(self);
        on_ready();
        true
    }

    /// Runs the read and write callbacks `readiness` calls for (each only while the handler is not
    /// deleted, since the first may remove it). Returns whether any ran.
    pub(crate) fn dispatch(&self, readiness: Readiness) -> bool {
        let mut dispatched = false;
        if readiness.wakes_reader() && !self.deleted.get() {
            if let Some(read) = &self.read {
                read();
                dispatched = true;
            }
        }
        if readiness.wakes_writer() && !self.deleted.get() {
            if let Some(write) = &self.write {
                write();
                dispatched = true;
            }
        }
        dispatched
    }
}

struct Slot {
    node: Rc<HandlerNode>,
    generation: u32,
}

#[derive(Default)]
struct Table {
    slots: Slab<Slot>,
    by_fd: HashMap<RawFd, usize>,
    /// Handlers with a poll function on the polling list, as a snapshot the polling phase iterates
    /// without a borrow.
    poll_list: Rc<Vec<Rc<HandlerNode>>>,
    /// Handlers without a poll function; while non-zero the loop does not busy-poll (QEMU's
    /// `poll_disable_cnt`).
    poll_disable_cnt: usize,
    next_generation: u32,
}

fn token(key: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | key as u64
}

fn slot_of(token: u64) -> usize {
    (token & u64::from(u32::MAX)) as usize
}

impl Table {
    fn lookup(&self, token: u64) -> Option<Rc<HandlerNode>> {
        let slot = self.slots.get(slot_of(token))?;
        (token >> 32 == u64::from(slot.generation)).then(|| Rc::clone(&slot.node))
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
}

/// The handler table of a context.
#[derive(Default)]
pub(crate) struct HandlerTable {
    table: RefCell<Table>,
}

impl HandlerTable {
    /// The live node for a monitor token.
    pub(crate) fn lookup(&self, token: u64) -> Option<Rc<HandlerNode>> {
        self.table.borrow().lookup(token)
    }

    /// The handlers the polling phase calls, as a snapshot that outlives the borrow (ground rule 1).
    pub(crate) fn poll_list(&self) -> Rc<Vec<Rc<HandlerNode>>> {
        Rc::clone(&self.table.borrow().poll_list)
    }

    /// Whether a handler without a poll function forbids busy-polling.
    pub(crate) fn poll_disabled(&self) -> bool {
        self.table.borrow().poll_disable_cnt > 0
    }

    /// Takes `node` off the poll list or puts it back (rebuilding the list only on a change).
    pub(crate) fn set_polled(&self, node: &HandlerNode, polled: bool) {
        if node.polled.replace(polled) != polled {
            self.table.borrow_mut().rebuild_poll_list();
        }
    }

    /// Drops every handler (context teardown), returning the nodes for the caller to drop unborrowed
    /// (ground rule 2).
    pub(crate) fn drain(&self) -> Vec<Rc<HandlerNode>> {
        let mut table = self.table.borrow_mut();
        table.by_fd.clear();
        table.poll_list = Rc::default();
        table.poll_disable_cnt = 0;
        table
            .slots
            .drain()
            .map(|s| {
                s.node.deleted.set(true);
                s.node
            })
            .collect()
    }
}

impl HomeState {
    /// Registers handlers for `fd` and returns the monitor token.
    pub(crate) fn add_handler(
        &self,
        fd: RawFd,
        handlers: FdHandlers,
        is_ctx_notifier: bool,
    ) -> io::Result<u64> {
        sys::check_fd_open(fd)?;
        let node = Rc::new(HandlerNode::new(fd, handlers, is_ctx_notifier));
        let mut table = self.handlers.table.borrow_mut();
        if table.by_fd.contains_key(&fd) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "fd {fd} already has handlers in this context; change them through its \
                     FdRegistration or drop that first"
                ),
            ));
        }
        let generation = table.next_generation;
        table.next_generation = generation.wrapping_add(1);
        let entry = table.slots.vacant_entry();
        let key = entry.key();
        let token = token(key, generation);
        self.monitor.borrow_mut().set(fd, token, node.interest())?;
        entry.insert(Slot {
            node: Rc::clone(&node),
            generation,
        });
        table.by_fd.insert(fd, key);
        table.account(&node, true);
        if node.poll.is_some() {
            table.rebuild_poll_list();
        }
        drop(table);
        self.shared.notify();
        Ok(token)
    }

    /// Replaces the handlers registered under `token`. On error the old handlers stay in place.
    pub(crate) fn update_handler(&self, token: u64, handlers: FdHandlers) -> io::Result<()> {
        let mut table = self.handlers.table.borrow_mut();
        let Some(old) = table.lookup(token) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the fd handler was removed (or its context dropped)",
            ));
        };
        let node = Rc::new(HandlerNode::new(old.fd, handlers, old.is_ctx_notifier));
        self.monitor
            .borrow_mut()
            .set(old.fd, token, node.interest())?;
        old.deleted.set(true);
        table.slots[slot_of(token)].node = Rc::clone(&node);
        table.account(&old, false);
        table.account(&node, true);
        if old.poll.is_some() || node.poll.is_some() {
            table.rebuild_poll_list();
        }
        drop(table);
        // `old` (and the user's closures in it) is dropped here, after the borrow ended (ground rule 2).
        drop(old);
        self.shared.notify();
        Ok(())
    }

    /// Switches which directions the kernel watches for the handler under `token`, without replacing
    /// it (a cheap path for readiness futures). Returns the OS error of the monitor update, if any.
    pub(crate) fn set_interest(&self, token: u64, interest: Interest) -> io::Result<()> {
        let Some(node) = self.handlers.lookup(token) else {
            return Ok(());
        };
        if node.enabled.get() == interest {
            return Ok(());
        }
        let old = node.enabled.replace(interest);
        let result = self
            .monitor
            .borrow_mut()
            .set(node.fd, token, node.interest());
        if result.is_err() {
            node.enabled.set(old);
        }
        result
    }

    /// Removes the handlers registered under `token`, if still there.
    pub(crate) fn remove_handler(&self, token: u64) {
        let removed = {
            let mut table = self.handlers.table.borrow_mut();
            let Some(node) = table.lookup(token) else {
                return;
            };
            node.deleted.set(true);
            self.monitor
                .borrow_mut()
                .set(node.fd, token, Interest::NONE)
                .ok();
            table.slots.remove(slot_of(token));
            table.by_fd.remove(&node.fd);
            table.account(&node, false);
            if node.poll.is_some() {
                table.rebuild_poll_list();
            }
            node
        };
        // Ground rule 2.
        drop(removed);
        self.shared.notify();
    }
}
