//! An iteration driven from outside the context: QEMU's `aio_ctx_prepare`, `aio_ctx_check` and
//! `aio_ctx_dispatch`. glib (the context's GSource, an IoThread in glib mode) and the `MainLoop`
//! sleep in a poll of their own over many fds; the context then splits `aio_poll` into steps around
//! that sleep:
//!
//! 1. **prepare** ([`HomeState::external_prepare`]): leave poll mode (no busy-polling here: the
//!    outside poller goes to the kernel at once), make the fd monitor pollable from outside (io_uring:
//!    see `fdmon/io_uring.rs`), hand queued SQEs to the kernel, open the notify window (bit 0 of the
//!    notify word, `notify.rs`), and compute the timeout in ns: 0 if work is pending (a notification,
//!    a ready task, a non-idle BH, an expired timer, reaped completions), else the nearest deadline.
//! 2. The outside poller sleeps on [`HomeState::external_fds`] (one fd for epoll and io_uring, every
//!    watched fd for poll) together with its own, for at most that timeout.
//! 3. **check** ([`HomeState::external_check`]): close the window and accept notifications; report
//!    whether dispatch has work (the fds fired, a BH is scheduled, idle ones too as in QEMU, a timer
//!    is due, a task is ready).
//! 4. **dispatch** ([`HomeState::external_dispatch`]): collect the monitor's events with a zero
//!    timeout (only if its fds fired; always on io_uring, whose completion queue is read in memory),
//!    then run user-SQE completions, BHs, ready handlers (with `block_ns = 0`, so poll windows do not
//!    adapt), expired timers and the task step, as `aio_poll` does.
//!
//! What it costs against `aio_poll`: no busy-polling, so every cross-thread wake while the loop sleeps
//! is an eventfd write and a wakeup of the outside poller; one more syscall per iteration that finds
//! fds ready (the outside poll, then the monitor's zero-timeout wait); and the outside poller's own
//! work over its fds. glib also rounds timeouts up to milliseconds (the GSource does that; the
//! `MainLoop` keeps nanoseconds). A context should be driven from one place at a time: its own `poll`
//! nested inside a dispatch is fine (QEMU's `AIO_WAIT_WHILE`), two outside drivers are not.

// Without the glib feature nothing drives a context from outside yet.
#![cfg_attr(not(feature = "glib"), allow(dead_code))]

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::ready::Ready;
use super::{current, HomeState};
use crate::fdmon::Backend;
use crate::timers::soonest;

/// How long an outside poller may sleep while the io_uring monitor cannot be polled from outside yet
/// (user SQEs in flight on a ring with deferred task running): their completions are then found by
/// the next dispatch, at most this late.
const UNPOLLABLE_WAIT_NS: i64 = 1_000_000;

/// What an outside driver keeps between its steps.
#[derive(Default)]
pub(crate) struct ExternalState {
    /// Handlers whose poll functions found work when prepare left poll mode, dispatched next.
    ready: RefCell<Vec<Ready>>,
    /// Prepare opened the notify window and no check or dispatch closed it yet.
    window: Cell<bool>,
    /// Run first thing at teardown: an outside driver lets go of the context's fds (the GSource
    /// detaches from its GMainContext before the monitor's fd is closed).
    on_teardown: RefCell<Vec<Box<dyn FnOnce()>>>,
}

impl HomeState {
    /// Registers `f` to run first thing when the context is torn down.
    pub(crate) fn on_teardown(&self, f: Box<dyn FnOnce()>) {
        self.external.on_teardown.borrow_mut().push(f);
    }

    /// Runs the teardown hooks (ground rule 1: taken out, then run).
    pub(super) fn run_teardown_hooks(&self) {
        let hooks = std::mem::take(&mut *self.external.on_teardown.borrow_mut());
        for hook in hooks {
            hook();
        }
    }

    /// Step 1: returns the timeout in ns for the outside poller (-1: none, 0: do not sleep).
    pub(crate) fn external_prepare(self: &Rc<Self>) -> i64 {
        let _enter = current::enter(self);
        // Ground rule 4: the list is taken out while poll_end hooks (user code) run.
        let mut ready = std::mem::take(&mut *self.external.ready.borrow_mut());
        self.poll_set_started(&mut ready, false);
        let pending = !ready.is_empty();
        self.external.ready.borrow_mut().append(&mut ready);
        let pollable = {
            let mut monitor = self.monitor.borrow_mut();
            let pollable = monitor.make_pollable();
            monitor.submit_pending();
            pollable
        };
        self.external.window.set(true);
        let notified = self.shared.wakeup.state().open_window();
        let mut timeout = if pending || notified {
            0
        } else {
            self.compute_timeout()
        };
        if timeout != 0 && self.monitor.borrow_mut().completions_ready() {
            timeout = 0;
        }
        if !pollable {
            timeout = soonest(timeout, UNPOLLABLE_WAIT_NS);
        }
        timeout
    }

    /// Counts a wait the outside poller lets block (the context's `blocking_waits`), once the window
    /// is open: from here a notification writes the eventfd.
    pub(crate) fn external_will_block(&self) {
        self.shared.stats.blocking_waits.bump();
    }

    /// The fds the outside poller must watch for this context, appended to `out`.
    pub(crate) fn external_fds(&self, out: &mut Vec<libc::pollfd>) {
        self.monitor.borrow().external_fds(out);
    }

    /// Step 3: closes the window and reports whether [`external_dispatch`](Self::external_dispatch)
    /// has work; `fds_fired` says whether any of [`external_fds`](Self::external_fds) polled ready.
    pub(crate) fn external_check(&self, fds_fired: bool) -> bool {
        self.close_external_window();
        fds_fired
            || !self.external.ready.borrow().is_empty()
            || self.shared.tasks.has_ready()
            || self.user_sqes.has_completions()
            || self.monitor.borrow_mut().completions_ready()
            || self.bh_timeout().is_some()
            || self.timer_deadline() == 0
    }

    /// Closes the notify window if prepare left it open (glib skips check for a source whose prepare
    /// reported it ready).
    pub(crate) fn close_external_window(&self) {
        if self.external.window.replace(false) {
            self.shared.wakeup.state().close_window();
        }
    }

    /// Step 4: runs what is ready; returns whether anything made progress (as `aio_poll` does).
    pub(crate) fn external_dispatch(self: &Rc<Self>, fds_fired: bool) -> bool {
        let _enter = current::enter(self);
        self.close_external_window();
        self.shared.stats.iterations.bump();
        // Ground rule 4: a nested prepare finds the list taken and starts its own.
        let mut ready = std::mem::take(&mut *self.external.ready.borrow_mut());
        if fds_fired || self.backend() == Backend::IoUring {
            self.wait(0, &mut ready);
        }
        let mut progress = self.dispatch_completions();
        progress |= self.bh_poll();
        progress |= self.dispatch_ready(&mut ready, false);
        progress |= self.run_timers();
        progress |= self.run_task_step();
        let mut slot = self.external.ready.borrow_mut();
        if slot.is_empty() {
            *slot = ready;
        }
        progress
    }
}
