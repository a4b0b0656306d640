//! One iteration of the loop, QEMU's `aio_poll`, step by step:
//!
//! 1. timeout = the nearest deadline if blocking (0 if a task is ready, a user-SQE completion waits
//!    or a BH is scheduled; 10 ms if only idle BHs are; else the nearest timer over all clocks; else
//!    infinite), 0 otherwise.
//! 2. Polling phase (`polling.rs`): if busy-polling is allowed (every handler has a poll function and
//!    the monitor does not need to wait) spin over the poll functions for up to the largest handler
//!    window, capped by the timeout; a hit makes the timeout 0. The time spent is taken off the
//!    timeout. With polling on, the timeout is then shortened by the measured wake-up latency (see
//!    `wake_latency.rs`): the loop spins through the last microseconds before a deadline instead of
//!    waking late.
//! 3. If the loop may block, announce it (notify_me) and re-check `notified`.
//! 4. If it still has a timeout or the monitor needs a wait: leave poll mode (`poll_end` + one last
//!    poll), then wait in the fd monitor with the ns timeout. Otherwise (a busy iteration) run one
//!    pass over the poll functions, and check the monitor without blocking on every 16th busy
//!    iteration in a row, so fds are not starved by a loop that stays busy.
//! 5. Withdraw the announcement, accept notifications, measure how long this call blocked.
//! 6. Dispatch: user-SQE completions first (QEMU runs the monitor's CQE handlers before BHs), then BHs,
//!    then ready handlers (marking each polled handler as having had an event); then the poll window
//!    adapts (every polled handler's weighted block-time average takes this iteration's block time,
//!    and the window follows those dispatched: `poll_params.rs`); then expired timers, then the task
//!    step (the executor's hook: the tasks ready when it began).
//! 7. Report whether anything made progress.

use std::cell::RefCell;

use super::notify::NotifyState;
use super::ready::Ready;
use super::HomeState;
use crate::fdmon::{Completion, Event};
use crate::sys::monotonic_ns;
use crate::timers::soonest;

/// Buffers an iteration reuses. Each is taken out for the iteration and put back after it, so a
/// nested iteration finds it taken and uses a fresh one (ground rule 4).
#[derive(Default)]
pub(crate) struct IterationBuffers {
    /// Spare ready lists.
    ready_lists: RefCell<Vec<Vec<Ready>>>,
    /// The fd monitor's output buffer.
    events: RefCell<Vec<Event>>,
    /// The user-SQE completions the fd monitor reaps in a wait.
    completions: RefCell<Vec<Completion>>,
}

/// The loop's announcement that it is about to block (QEMU's `notify_me` raised), withdrawn on drop so
/// that a callback panicking between the announcement and the wait cannot leave it raised (ground
/// rule 3).
struct Announced<'a>(&'a NotifyState);

impl<'a> Announced<'a> {
    /// Announces the wait; the flag is true if a notification is already pending (do not block).
    fn prepare(state: &'a NotifyState) -> (Self, bool) {
        let pending = state.prepare_wait();
        (Announced(state), pending)
    }
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        self.0.finish_wait();
    }
}

impl HomeState {
    pub(crate) fn aio_poll(&self, blocking: bool) -> bool {
        let stats = &self.shared.stats;
        stats.iterations.bump();
        let params = self.polling.params();
        let start = if params.max_ns > 0 { monotonic_ns() } else { 0 };
        let mut ready = self
            .buffers
            .ready_lists
            .borrow_mut()
            .pop()
            .unwrap_or_default();

        let mut timeout = if blocking { self.compute_timeout() } else { 0 };
        let mut progress = self.try_poll_mode(&mut ready, &mut timeout);
        timeout = self.polling.shorten_timeout(timeout);

        // Notifiers may post wake-ups into the ring only while the loop waits on that very ring; it
        // retires the target before it announces a wait elsewhere (see `msg_ring.rs`).
        if let Some(target) = self.shared.wakeup.msg_ring() {
            if let Some(generation) = target.current_generation() {
                if self.monitor.borrow().ring_id().map(|(_, g)| g) != Some(generation) {
                    target.retire();
                }
            }
        }

        // From here until the wait returns, a notifier must write the eventfd to wake us. The guard
        // withdraws the announcement even if a poll_end hook or poll function below panics.
        let notify_state = self.shared.wakeup.state();
        let announced = (timeout != 0).then(|| {
            let (announced, pending) = Announced::prepare(notify_state);
            if pending {
                timeout = 0;
            }
            announced
        });

        if timeout != 0 || self.need_wait() {
            // Leave poll mode before sleeping so that, e.g., guest notifications are re-enabled.
            if self.poll_set_started(&mut ready, false) {
                timeout = 0;
                progress = true;
            }
            // A poll_end hook or the last poll may have woken a task: then do not sleep.
            if self.shared.tasks.has_ready() {
                timeout = 0;
            }
            self.polling.reset_busy_iterations();
            self.wait(timeout, &mut ready);
        } else {
            progress |= self.poll_once_if_polling(&mut ready);
            if self.polling.busy_iteration_due_for_monitor() {
                self.wait(0, &mut ready);
            }
        }

        drop(announced);
        notify_state.accept();

        let block_ns = if params.max_ns > 0 {
            monotonic_ns() - start
        } else {
            0
        };

        progress |= self.dispatch_completions();
        progress |= self.bh_poll();
        progress |= self.dispatch_ready(&mut ready, params.max_ns > 0);
        self.buffers.ready_lists.borrow_mut().push(ready);
        self.adjust_polling(block_ns);
        progress |= self.run_timers();
        progress |= self.run_task_step();
        progress
    }

    /// The task step: the executor runs the tasks that were ready when it began.
    pub(super) fn run_task_step(&self) -> bool {
        let ran = self.shared.tasks.run_ready();
        self.shared.stats.tasks_run.add(ran as u64);
        ran > 0
    }

    /// QEMU's `aio_compute_timeout`.
    pub(super) fn compute_timeout(&self) -> i64 {
        // Completions left undispatched (a completion callback panicked) are due now.
        if self.shared.tasks.has_ready() || self.user_sqes.has_completions() {
            return 0;
        }
        let bh = self.bh_timeout();
        if bh == Some(0) {
            return 0;
        }
        let timers = self.timer_deadline();
        if timers == 0 {
            return 0;
        }
        soonest(bh.unwrap_or(-1), timers)
    }

    /// Waits in the fd monitor and turns its events into ready entries.
    pub(super) fn wait(&self, mut timeout: i64, ready: &mut Vec<Ready>) {
        if timeout != 0 && self.monitor.borrow_mut().completions_ready() {
            timeout = 0;
        }
        if timeout != 0 {
            self.shared.stats.blocking_waits.bump();
        }
        // Ground rule 4: a nested iteration finds the buffers taken and uses fresh ones.
        let mut events = std::mem::take(&mut *self.buffers.events.borrow_mut());
        let mut completions = std::mem::take(&mut *self.buffers.completions.borrow_mut());
        let started = if timeout > 0 { monotonic_ns() } else { 0 };
        // Errors other than EINTR (which the monitors absorb) cannot happen with valid arguments;
        // there is nobody to report them to from here, and the next iteration simply waits again.
        let _ = self
            .monitor
            .borrow_mut()
            .wait(timeout, &mut events, &mut completions);
        if timeout > 0 && events.is_empty() && completions.is_empty() {
            self.polling
                .observe_timed_out_wait(timeout, monotonic_ns() - started);
        }
        self.user_sqes.queue_completions(completions.drain(..));
        ready.extend(events.drain(..).filter_map(|ev| {
            Some(Ready {
                node: self.handlers.lookup(ev.token)?,
                readiness: ev.readiness,
                poll_ready: false,
            })
        }));
        *self.buffers.events.borrow_mut() = events;
        *self.buffers.completions.borrow_mut() = completions;
    }

    /// QEMU's `aio_dispatch_ready_handlers`. With `adapt` (polling on, called from `aio_poll`), each
    /// polled handler dispatched is marked for [`HomeState::adjust_polling`].
    pub(super) fn dispatch_ready(&self, ready: &mut Vec<Ready>, adapt: bool) -> bool {
        let mut progress = false;
        for Ready {
            node,
            readiness,
            poll_ready,
        } in ready.drain(..)
        {
            if !readiness.is_none() {
                self.restore_polled(&node);
            }
            let mut dispatched = poll_ready && node.run_poll_ready();
            dispatched |= node.dispatch(readiness);
            if dispatched {
                if !node.is_ctx_notifier() {
                    progress = true;
                }
                self.shared.stats.handlers_dispatched.bump();
            }
            if adapt && node.has_poll() && !node.is_deleted() {
                node.window().mark_event();
            }
        }
        progress
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use crate::timers::Clock;
    use crate::AioContext;

    use super::super::bh::IDLE_BH_TIMEOUT_NS;

    /// Scheduling notifies, so to see the wait bound we accept the notification by hand, as an iteration
    /// that raced with the schedule would have.
    #[test]
    fn idle_bh_bounds_the_wait_to_10ms() {
        let ctx = AioContext::new().unwrap();
        let home = ctx.home();
        assert_eq!(home.compute_timeout(), -1, "nothing to do: sleep forever");
        let bh = ctx.bh(|| {});
        bh.schedule_idle();
        assert_eq!(home.compute_timeout(), IDLE_BH_TIMEOUT_NS);
        let timer = ctx.timer(Clock::Realtime, || {});
        // A stall of 3 ms between arming and computing (a loaded machine) makes the timer due: retry.
        let t = (0..5)
            .find_map(|_| {
                timer.arm_after(Duration::from_millis(3));
                Some(home.compute_timeout()).filter(|&t| t != 0)
            })
            .expect("the timer was due at every try");
        assert!(t > 0 && t <= 3_000_000, "the nearer timer wins: {t}");
        bh.schedule();
        assert_eq!(home.compute_timeout(), 0, "a non-idle BH means no wait");
        bh.cancel();
        timer.cancel();
        assert_eq!(
            home.compute_timeout(),
            -1,
            "a cancelled BH does not bound the wait"
        );

        bh.schedule_idle();
        home.shared.wakeup.state().accept();
        let start = std::time::Instant::now();
        assert!(!ctx.poll(true), "idle BHs are not progress");
        assert!(
            start.elapsed() >= Duration::from_millis(10),
            "slept {:?}",
            start.elapsed()
        );
        assert!(!bh.is_scheduled(), "and it ran");
    }

    #[test]
    fn paused_virtual_clock_does_not_bound_the_wait() {
        let ctx = AioContext::new().unwrap();
        let clock = ctx.virtual_clock();
        clock.pause();
        let timer = ctx.timer(Clock::Virtual, || {});
        timer.arm_ns(clock.now_ns() + 1_000);
        assert_eq!(ctx.home().compute_timeout(), -1);
        clock.advance(Duration::from_micros(1));
        assert_eq!(ctx.home().compute_timeout(), 0);
    }
}
