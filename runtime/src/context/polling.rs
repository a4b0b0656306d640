//! Busy-polling (QEMU's poll mode): before it sleeps, the loop spins over the handlers' userspace poll
//! functions for up to the widest handler window, so work another thread publishes in memory (a
//! virtqueue, a completion ring, the notify word) is seen without a syscall or a wakeup.
//!
//! This module owns the context's [`Polling`] state (parameters, whether poll mode is on, the measured
//! wake-up latency) and each handler's [`PollWindow`], and holds the machinery QEMU spreads over
//! `try_poll_mode`, `run_poll_handlers`, `remove_idle_poll_handlers` and `poll_set_started`. The window
//! rule itself (a weighted average of block times per handler, QEMU's `poll-weight`) is pure and lives
//! in `poll_params.rs`; the hit-rate gates (a context whose recent polling phases mostly ran out their
//! window polls rarely) are pure too and live in `hit_rate.rs`: this module asks one before each phase
//! and tells it how the phase ended.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use super::handler_table::HandlerNode;
use super::hit_rate::HitRate;
use super::poll_params::{adjust_after_iteration, BlockEstimate};
use super::ready::{push_poll_ready, Ready};
use super::wake_latency::WakeLatency;
use super::HomeState;
use crate::sys::monotonic_ns;
use crate::timers::soonest;
use crate::{Backend, PollParams};

/// A context's busy-polling state.
pub(crate) struct Polling {
    params: Cell<PollParams>,
    /// How long the next polling phase may spin, in ns (QEMU's `ctx->poll_ns`).
    window_ns: Cell<i64>,
    /// Whether recent polling phases that waited for the context's own I/O (user SQEs in flight)
    /// found work: polling is mostly skipped when they did not (`hit_rate.rs`)...
    io_waits: HitRate,
    /// ...and the same for the other phases, kept apart: on a file whose writes the kernel hands to
    /// a worker thread, waits for their completions can keep missing while waits for a guest's next
    /// request keep hitting.
    event_waits: HitRate,
    /// Whether the loop is in poll mode (`poll_begin` called, `poll_end` not yet).
    started: Cell<bool>,
    /// Consecutive iterations that skipped the fd monitor because the loop was busy.
    busy_iterations: Cell<u32>,
    /// Measured wake-up latency of timed waits, spun away when polling is on.
    wake_latency: WakeLatency,
    /// How long a poll function may find nothing before it leaves the poll list (io_uring only).
    idle_ns: i64,
}

impl Polling {
    pub(crate) fn new(params: PollParams, idle_timeout: Duration) -> Self {
        Self {
            params: Cell::new(params),
            window_ns: Cell::new(0),
            io_waits: HitRate::default(),
            event_waits: HitRate::default(),
            started: Cell::new(false),
            busy_iterations: Cell::new(0),
            wake_latency: WakeLatency::default(),
            idle_ns: i64::try_from(idle_timeout.as_nanos()).unwrap_or(i64::MAX),
        }
    }

    pub(crate) fn params(&self) -> PollParams {
        self.params.get()
    }

    /// With polling on, a wait bounded by a deadline ends early by the measured wake-up latency.
    pub(crate) fn shorten_timeout(&self, timeout: i64) -> i64 {
        self.wake_latency.shorten(timeout, self.params.get().max_ns)
    }

    /// Records a timed wait that ended without an event (see [`WakeLatency`]).
    pub(crate) fn observe_timed_out_wait(&self, requested_ns: i64, elapsed_ns: i64) {
        self.wake_latency
            .observe_timed_out_wait(requested_ns, elapsed_ns);
    }

    /// Counts an iteration that skipped the fd monitor; true on every 16th in a row, when the monitor
    /// must be checked anyway so that fds are not starved.
    pub(crate) fn busy_iteration_due_for_monitor(&self) -> bool {
        let busy = self.busy_iterations.get() + 1;
        if busy >= 16 {
            self.busy_iterations.set(0);
            true
        } else {
            self.busy_iterations.set(busy);
            false
        }
    }

    /// The loop is about to wait in the monitor: the run of busy iterations ends.
    pub(crate) fn reset_busy_iterations(&self) {
        self.busy_iterations.set(0);
    }
}

/// A handler's share of adaptive polling: its block-time estimate and idle clock.
#[derive(Default)]
pub(crate) struct PollWindow {
    /// How long the loop blocks between this handler's events (a weighted moving average).
    estimate: BlockEstimate,
    /// When the handler leaves the poll list if its poll function keeps finding nothing (0: not set
    /// yet; set at the next idle check).
    idle_deadline: Cell<i64>,
}

impl PollWindow {
    /// The iteration dispatched this handler: its block time goes into the handler's average.
    pub(crate) fn mark_event(&self) {
        self.estimate.mark_event();
    }
}

impl HomeState {
    /// The current polling parameters.
    pub(crate) fn poll_params(&self) -> PollParams {
        self.polling.params()
    }

    /// Changes the polling parameters and resets every handler's window
    /// (`aio_context_set_poll_params`).
    pub(crate) fn set_poll_params(&self, params: PollParams) -> io::Result<()> {
        let params = params.validate()?;
        self.polling.params.set(params);
        self.polling.window_ns.set(0);
        self.polling.io_waits.reset();
        self.polling.event_waits.reset();
        for node in self.handlers.poll_list().iter() {
            node.window().estimate.reset();
        }
        self.shared.notify();
        Ok(())
    }

    /// After an iteration that blocked `block_ns` (polling included): every polled handler's estimate
    /// takes it in, and the window follows those the iteration dispatched (QEMU's `adjust_block_ns`).
    pub(super) fn adjust_polling(&self, block_ns: i64) {
        let params = self.polling.params();
        if params.max_ns == 0 {
            return;
        }
        let list = self.handlers.poll_list();
        let window = self.polling.window_ns.get();
        let estimates = list.iter().map(|node| &node.window().estimate);
        let window = adjust_after_iteration(params, window, block_ns, estimates);
        self.polling.window_ns.set(window);
    }

    /// Busy-polling is impossible while a handler lacks a poll function or the monitor has work queued.
    pub(super) fn need_wait(&self) -> bool {
        self.handlers.poll_disabled() || self.monitor.borrow_mut().need_wait()
    }

    /// QEMU's `try_poll_mode`: returns true if a poll function found work (other than the notifier).
    pub(super) fn try_poll_mode(&self, ready: &mut Vec<Ready>, timeout: &mut i64) -> bool {
        let params = self.polling.params();
        if params.max_ns == 0 {
            return false;
        }
        let list = self.handlers.poll_list();
        if list.is_empty() {
            return false;
        }
        let window = self.polling.window_ns.get();
        let max_ns = soonest(*timeout, window);
        if max_ns <= 0 {
            return false;
        }
        // While recent phases of this kind mostly ran out their window, most chances skip polling.
        let gate = if self.user_sqes.in_flight() {
            &self.polling.io_waits
        } else {
            &self.polling.event_waits
        };
        if !gate.admits(params) {
            gate.skip();
            return false;
        }
        // Queued submissions go out now, so that polling never holds them back.
        self.monitor.borrow_mut().submit_pending();
        if self.need_wait() {
            return false;
        }
        let phase = gate.begin(params);
        // Set first: a poll_begin hook that wakes a task must stop the spinning too.
        let _polling = self.shared.wakeup.start_polling();
        self.poll_set_started(ready, true);
        let (progress, hit) = self.run_poll_handlers(&list, ready, window, max_ns, timeout);
        gate.record(params, phase, hit);
        progress
    }

    /// QEMU's `run_poll_handlers`: spins until a poll function hits, the window elapses or the monitor
    /// needs to wait. Takes the time spent off `timeout`. Returns whether a poll function found work
    /// (other than the notifier), and whether the phase ended before its window ran out (for the gate).
    fn run_poll_handlers(
        &self,
        list: &[Rc<HandlerNode>],
        ready: &mut Vec<Ready>,
        window: i64,
        mut max_ns: i64,
        timeout: &mut i64,
    ) -> (bool, bool) {
        let start = monotonic_ns();
        let mut progress;
        let mut elapsed;
        // The monitor has completions to reap (or, with io_uring, task work that posts them).
        let mut monitor_ready = false;
        loop {
            progress = poll_once(list, ready, timeout);
            elapsed = monotonic_ns() - start;
            max_ns = soonest(*timeout, max_ns);
            if elapsed >= max_ns {
                break;
            }
            if self.need_wait() {
                monitor_ready = true;
                break;
            }
        }
        if self.remove_idle_poll_handlers(list, ready, start + elapsed) {
            *timeout = 0;
            progress = true;
        }
        let stats = &self.shared.stats;
        stats.poll_ns.add(elapsed.max(0) as u64);
        let found_work = *timeout == 0 || monitor_ready;
        // For the gate, a phase that ran into the timeout (a due timer) rather than its window did
        // not miss: it spared the loop a late wake-up. The statistics count it as finding no work.
        let hit = found_work || elapsed < window;
        if found_work {
            stats.poll_hits.bump();
        } else {
            stats.poll_misses.bump();
        }
        if *timeout != -1 {
            *timeout -= (*timeout).min(elapsed);
        }
        (progress, hit)
    }

    /// One pass over the poll functions in an iteration that does not block (see `aio_poll.rs`'s
    /// busy iterations). With polling off (max_ns 0) poll functions are never called, as in QEMU.
    pub(super) fn poll_once_if_polling(&self, ready: &mut Vec<Ready>) -> bool {
        if self.polling.params().max_ns == 0 {
            return false;
        }
        let list = self.handlers.poll_list();
        poll_once(&list, ready, &mut 0)
    }

    /// QEMU's `remove_idle_poll_handlers`: a handler whose poll function found nothing for the idle
    /// timeout leaves the poll list, so a context with many quiet devices does not spin over all of
    /// them (QEMU measured 10k -> 105k IOPS with 100 devices). io_uring only: during polling the loop
    /// notices the removed handler's fd in the completion queue (`need_wait`), and dispatching it puts
    /// the handler back. Returns whether the final poll after `poll_end` found work.
    fn remove_idle_poll_handlers(
        &self,
        list: &[Rc<HandlerNode>],
        ready: &mut Vec<Ready>,
        now: i64,
    ) -> bool {
        if self.backend() != Backend::IoUring {
            return false;
        }
        let mut idle = Vec::new();
        for node in list {
            if node.is_deleted() || node.is_ctx_notifier() {
                continue;
            }
            let window = node.window();
            match window.idle_deadline.get() {
                0 => window
                    .idle_deadline
                    .set(now.saturating_add(self.polling.idle_ns).max(1)),
                deadline if now >= deadline => idle.push(Rc::clone(node)),
                _ => {}
            }
        }
        if idle.is_empty() {
            return false;
        }
        for node in &idle {
            node.window().idle_deadline.set(0);
            self.handlers.set_polled(node, false);
        }
        let mut progress = false;
        for node in &idle {
            if !self.polling.started.get() || node.is_deleted() {
                continue;
            }
            node.poll_end();
            // Work that raced with poll_end (e.g. a request queued before notifications came back on).
            if node.poll_for_work() {
                push_poll_ready(ready, node);
                progress = true;
            }
        }
        progress
    }

    /// A handler off the poll list whose fd fired goes back on it (joining poll mode if it is on).
    pub(super) fn restore_polled(&self, node: &HandlerNode) {
        if !node.has_poll() || node.is_polled() || node.is_deleted() {
            return;
        }
        self.handlers.set_polled(node, true);
        if self.polling.started.get() {
            node.poll_begin();
        }
    }

    /// QEMU's `poll_set_started`: enters or leaves poll mode, calling `poll_begin`/`poll_end`. On leaving,
    /// polls each handler once more in case work raced with `poll_end`; returns whether that found any.
    pub(super) fn poll_set_started(&self, ready: &mut Vec<Ready>, started: bool) -> bool {
        if self.polling.started.get() == started {
            return false;
        }
        self.polling.started.set(started);
        let list = self.handlers.poll_list();
        let mut progress = false;
        for node in list.iter() {
            if node.is_deleted() {
                continue;
            }
            if started {
                node.poll_begin();
            } else {
                node.poll_end();
                if node.poll_for_work() {
                    push_poll_ready(ready, node);
                    progress |= !node.is_ctx_notifier();
                }
            }
        }
        progress
    }
}

/// QEMU's `run_poll_handlers_once`: one pass over the poll functions. Any hit sets `timeout` to 0 so
/// polling stops; hits other than the context's own notifier are progress.
fn poll_once(list: &[Rc<HandlerNode>], ready: &mut Vec<Ready>, timeout: &mut i64) -> bool {
    let mut progress = false;
    for node in list {
        if node.poll_for_work() {
            push_poll_ready(ready, node);
            *timeout = 0;
            progress |= !node.is_ctx_notifier();
            // Busy: the idle clock starts again at the next check.
            node.window().idle_deadline.set(0);
        }
    }
    progress
}
