//! One iteration of the loop, QEMU's `aio_poll`, step by step:
//!
//! 1. timeout = the nearest deadline if blocking (0 if a BH is scheduled, 10 ms if only idle BHs are,
//!    else the nearest timer over all clocks, else infinite), 0 otherwise.
//! 2. Polling phase: if busy-polling is allowed (every handler has a poll function and the monitor does
//!    not need to wait) spin over the poll functions for up to the largest handler window, capped by the
//!    timeout; a hit makes the timeout 0. The time spent is taken off the timeout. With polling on, the
//!    timeout is then shortened by the measured wake-up latency (see `wake_lead`): the loop spins
//!    through the last microseconds before a deadline instead of waking late.
//! 3. If the loop may block, announce it (notify_me) and re-check `notified`.
//! 4. If it still has a timeout or the monitor needs a wait: leave poll mode (`poll_end` + one last
//!    poll), then wait in the fd monitor with the ns timeout.
//! 5. Withdraw the announcement, accept notifications, measure how long this call blocked.
//! 6. Dispatch: BHs, then ready handlers (adjusting each polled handler's window), then expired timers.
//! 7. Report whether anything made progress.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::handlers::HandlerNode;
use super::notify::NotifyState;
use super::polling::soonest;
use super::Inner;
use crate::fdmon::{bits, Event};
use crate::sys::monotonic_ns;
use crate::time::{Clock, Fired};

/// A handler found ready in this iteration: by the fd monitor (`revents`) and/or by its poll function.
pub(crate) struct Ready {
    node: Rc<HandlerNode>,
    revents: u32,
    poll_ready: bool,
}

/// The loop's announcement that it is about to block (QEMU's `notify_me` raised), withdrawn on drop so
/// that a callback panicking between the announcement and the wait cannot leave it raised.
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

/// Clears the context's `polling` flag when busy-polling ends, or a poll function or hook unwinds.
struct PollingFlag<'a>(&'a AtomicBool);

impl<'a> PollingFlag<'a> {
    fn raise(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Relaxed);
        PollingFlag(flag)
    }
}

impl Drop for PollingFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Clears a handler's `in_poll_ready` when its `poll_ready` returns, or unwinds.
struct PollReadyGuard<'a>(&'a HandlerNode);

impl Drop for PollReadyGuard<'_> {
    fn drop(&mut self) {
        self.0.in_poll_ready.set(false);
    }
}

impl Inner {
    pub(crate) fn aio_poll(&self, blocking: bool) -> bool {
        let stats = &self.shared.stats;
        stats.iterations.bump();
        let params = self.poll_params.get();
        let start = if params.max_ns > 0 { monotonic_ns() } else { 0 };
        let mut ready = self.ready_pool.borrow_mut().pop().unwrap_or_default();

        let mut timeout = if blocking { self.compute_timeout() } else { 0 };
        let mut progress = self.try_poll_mode(&mut ready, &mut timeout);
        // With polling on, wake before a deadline by the kernel's wake-up latency and spin the rest.
        timeout = self.wake_lead.shorten(timeout, params.max_ns);

        // From here until the wait returns, a notifier must write the eventfd to wake us. The guard
        // withdraws the announcement even if a poll_end hook or poll function below panics.
        let announced = (timeout != 0).then(|| {
            let (announced, pending) = Announced::prepare(&self.shared.notify_state);
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
            self.busy_iterations.set(0);
            self.wait(timeout, &mut ready);
        } else {
            progress |= self.busy_iteration(&mut ready);
        }

        drop(announced);
        self.shared.notify_state.accept();

        let block_ns = if params.max_ns > 0 {
            monotonic_ns() - start
        } else {
            0
        };

        // User SQE completions first (QEMU runs the monitor's CQE handlers before BHs).
        progress |= self.dispatch_completions();
        progress |= self.bh_poll();
        progress |= self.dispatch_ready(&mut ready, block_ns);
        self.ready_pool.borrow_mut().push(ready);
        progress |= self.run_timers();
        progress |= self.run_tasks();
        progress
    }

    /// The task step: runs the tasks that were ready when it began.
    fn run_tasks(&self) -> bool {
        let ran = crate::task::run_ready_tasks(&self.shared.tasks);
        self.shared.stats.tasks_run.add(ran as u64);
        ran > 0
    }

    /// An iteration that must not block and may skip the fd monitor (every handler can be polled in
    /// userspace). QEMU skips the syscall here. aioctx runs one pass over the poll functions (if polling
    /// is on), so work they can see (a virtqueue, a completion ring) is not starved by a loop that stays
    /// busy, and checks the fd monitor without blocking every 16th such iteration in a row, so fds are
    /// not starved either.
    fn busy_iteration(&self, ready: &mut Vec<Ready>) -> bool {
        // With polling off (max_ns 0) poll functions are never called, as in QEMU.
        let mut progress = false;
        if self.poll_params.get().max_ns > 0 {
            let list = self.handlers.borrow().poll_list();
            progress = run_poll_handlers_once(&list, ready, &mut 0);
        }
        let busy = self.busy_iterations.get() + 1;
        if busy >= 16 {
            self.busy_iterations.set(0);
            self.wait(0, ready);
        } else {
            self.busy_iterations.set(busy);
        }
        progress
    }

    /// Busy-polling is impossible while a handler lacks a poll function or the monitor has work queued.
    fn need_wait(&self) -> bool {
        self.handlers.borrow().poll_disabled() || self.monitor.borrow_mut().need_wait()
    }

    /// QEMU's `aio_compute_timeout`.
    fn compute_timeout(&self) -> i64 {
        // Completions left undispatched (a completion callback panicked) are due now.
        if self.shared.tasks.has_ready() || !self.completions_buf.borrow().is_empty() {
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

    /// The ns until the nearest timer over all clocks: 0 if one is due, -1 if none is armed.
    fn timer_deadline(&self) -> i64 {
        let timers = self.timers.borrow();
        let mut deadline = -1;
        for clock in Clock::ALL {
            let Some(first) = timers.first_deadline(clock) else {
                continue;
            };
            let remaining = match clock {
                Clock::Virtual => {
                    let (now, paused) = self.virtual_clock.read();
                    if first <= now {
                        0
                    } else if paused {
                        // Paused guest time will not reach it by itself; an advance or resume notifies us.
                        continue;
                    } else {
                        first.saturating_sub(now)
                    }
                }
                _ => first
                    .saturating_sub(crate::time::clock_now(clock, &self.virtual_clock))
                    .max(0),
            };
            deadline = soonest(deadline, remaining);
        }
        deadline
    }

    /// QEMU's `try_poll_mode`: returns true if a poll function found work (other than the notifier).
    fn try_poll_mode(&self, ready: &mut Vec<Ready>, timeout: &mut i64) -> bool {
        let params = self.poll_params.get();
        if params.max_ns == 0 {
            return false;
        }
        let list = self.handlers.borrow().poll_list();
        if list.is_empty() {
            return false;
        }
        let widest = list.iter().map(|n| n.window_ns.get()).max().unwrap_or(0);
        let max_ns = soonest(*timeout, widest);
        if max_ns > 0 {
            // Queued submissions go out now, so that polling never holds them back.
            self.monitor.borrow_mut().submit_pending();
        }
        if max_ns > 0 && !self.need_wait() {
            // Set first: a poll_begin hook that wakes a task must stop the spinning too.
            let _polling = PollingFlag::raise(&self.shared.polling);
            self.poll_set_started(ready, true);
            return self.run_poll_handlers(&list, ready, max_ns, timeout);
        }
        false
    }

    /// QEMU's `run_poll_handlers`: spins until a poll function hits, the window elapses or the monitor
    /// needs to wait. Takes the time spent off `timeout`.
    fn run_poll_handlers(
        &self,
        list: &[Rc<HandlerNode>],
        ready: &mut Vec<Ready>,
        mut max_ns: i64,
        timeout: &mut i64,
    ) -> bool {
        let start = monotonic_ns();
        let mut progress;
        let mut elapsed;
        loop {
            progress = run_poll_handlers_once(list, ready, timeout);
            elapsed = monotonic_ns() - start;
            max_ns = soonest(*timeout, max_ns);
            if elapsed >= max_ns || self.need_wait() {
                break;
            }
        }
        if self.remove_idle_poll_handlers(list, ready, start + elapsed) {
            *timeout = 0;
            progress = true;
        }
        let stats = &self.shared.stats;
        stats.poll_ns.add(elapsed.max(0) as u64);
        if *timeout == 0 {
            stats.poll_hits.bump();
        } else {
            stats.poll_misses.bump();
        }
        if *timeout != -1 {
            *timeout -= (*timeout).min(elapsed);
        }
        progress
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
        if self.monitor.borrow().backend() != crate::Backend::IoUring {
            return false;
        }
        let mut idle = Vec::new();
        for node in list {
            if node.deleted.get() || node.is_ctx_notifier {
                continue;
            }
            match node.poll_idle_deadline.get() {
                0 => node
                    .poll_idle_deadline
                    .set(now.saturating_add(self.poll_idle_ns).max(1)),
                deadline if now >= deadline => idle.push(Rc::clone(node)),
                _ => {}
            }
        }
        if idle.is_empty() {
            return false;
        }
        {
            let mut handlers = self.handlers.borrow_mut();
            for node in &idle {
                node.poll_idle_deadline.set(0);
                handlers.set_polled(node, false);
            }
        }
        let mut progress = false;
        for node in &idle {
            if !self.poll_started.get() || node.deleted.get() {
                continue;
            }
            if let Some(poll_end) = &node.poll_end {
                poll_end();
            }
            // Work that raced with poll_end (e.g. a request queued before notifications came back on).
            if let Some((poll, _)) = &node.poll {
                if !node.deleted.get() && !node.in_poll_ready.get() && poll() {
                    push_poll_ready(ready, node);
                    progress = true;
                }
            }
        }
        progress
    }

    /// A handler off the poll list whose fd fired goes back on it (joining poll mode if it is on).
    fn restore_polled(&self, node: &HandlerNode) {
        if node.poll.is_none() || node.polled.get() || node.deleted.get() {
            return;
        }
        self.handlers.borrow_mut().set_polled(node, true);
        if self.poll_started.get() {
            if let Some(poll_begin) = &node.poll_begin {
                poll_begin();
            }
        }
    }

    /// QEMU's `poll_set_started`: enters or leaves poll mode, calling `poll_begin`/`poll_end`. On leaving,
    /// polls each handler once more in case work raced with `poll_end`; returns whether that found any.
    fn poll_set_started(&self, ready: &mut Vec<Ready>, started: bool) -> bool {
        if self.poll_started.get() == started {
            return false;
        }
        self.poll_started.set(started);
        let list = self.handlers.borrow().poll_list();
        let mut progress = false;
        for node in list.iter() {
            if node.deleted.get() {
                continue;
            }
            let hook = if started {
                &node.poll_begin
            } else {
                &node.poll_end
            };
            if let Some(hook) = hook {
                hook();
            }
            if !started && !node.in_poll_ready.get() && !node.deleted.get() {
                if let Some((poll, _)) = &node.poll {
                    if poll() {
                        push_poll_ready(ready, node);
                        progress |= !node.is_ctx_notifier;
                    }
                }
            }
        }
        progress
    }

    /// Waits in the fd monitor and turns its events into ready entries.
    fn wait(&self, mut timeout: i64, ready: &mut Vec<Ready>) {
        if timeout != 0 && self.monitor.borrow_mut().completions_ready() {
            timeout = 0;
        }
        if timeout != 0 {
            self.shared.stats.blocking_waits.bump();
        }
        // A nested iteration finds the buffer taken and uses a fresh one.
        let mut events: Vec<Event> = std::mem::take(&mut *self.events_buf.borrow_mut());
        {
            let mut monitor = self.monitor.borrow_mut();
            // Errors other than EINTR (which the monitors absorb) cannot happen with valid arguments;
            // there is nobody to report them to from here, and the next iteration simply waits again.
            let mut completions = self.completions_tmp.borrow_mut();
            let started = if timeout > 0 { monotonic_ns() } else { 0 };
            let _ = monitor.wait(timeout, &mut events, &mut completions);
            if timeout > 0 && events.is_empty() && completions.is_empty() {
                self.wake_lead
                    .observe_timed_out_wait(timeout, monotonic_ns() - started);
            }
            self.completions_buf
                .borrow_mut()
                .extend(completions.drain(..));
        }
        if !events.is_empty() {
            let handlers = self.handlers.borrow();
            ready.extend(events.drain(..).filter_map(|ev| {
                Some(Ready {
                    node: handlers.lookup(ev.token)?,
                    revents: ev.revents,
                    poll_ready: false,
                })
            }));
        }
        *self.events_buf.borrow_mut() = events;
    }

    /// QEMU's `aio_dispatch_ready_handlers`.
    fn dispatch_ready(&self, ready: &mut Vec<Ready>, block_ns: i64) -> bool {
        let params = self.poll_params.get();
        let mut progress = false;
        for Ready {
            node,
            revents,
            poll_ready,
        } in ready.drain(..)
        {
            let mut dispatched = false;
            if revents != 0 {
                self.restore_polled(&node);
            }
            if poll_ready && !node.deleted.get() && !node.in_poll_ready.get() {
                if let Some((_, on_ready)) = &node.poll {
                    node.in_poll_ready.set(true);
                    let _guard = PollReadyGuard(&node);
                    on_ready();
                    dispatched = true;
                }
            }
            if revents & (bits::IN | bits::HUP | bits::ERR) != 0 && !node.deleted.get() {
                if let Some(read) = &node.read {
                    read();
                    dispatched = true;
                }
            }
            if revents & (bits::OUT | bits::ERR) != 0 && !node.deleted.get() {
                if let Some(write) = &node.write {
                    write();
                    dispatched = true;
                }
            }
            if dispatched {
                if !node.is_ctx_notifier {
                    progress = true;
                }
                self.shared.stats.handlers_dispatched.bump();
            }
            if params.max_ns > 0 && node.poll.is_some() && !node.deleted.get() {
                node.window_ns
                    .set(params.adjust_window(node.window_ns.get(), block_ns));
            }
        }
        progress
    }

    /// Runs expired timers of every clock, each clock read once (QEMU's `timerlist_run_timers`).
    fn run_timers(&self) -> bool {
        let mut progress = false;
        for clock in Clock::ALL {
            if self.timers.borrow().is_empty(clock) {
                continue;
            }
            let now = crate::time::clock_now(clock, &self.virtual_clock);
            loop {
                let fired = self.timers.borrow_mut().pop_expired(clock, now);
                let Some(fired) = fired else {
                    break;
                };
                self.shared.stats.timers_fired.bump();
                match fired {
                    Fired::Call(callback) => callback(),
                    Fired::Wake(waker) => waker.wake(),
                    Fired::Nothing => {}
                }
                progress = true;
            }
        }
        progress
    }
}

/// QEMU's `run_poll_handlers_once`: one pass over the poll functions. Any hit sets `timeout` to 0 so
/// polling stops; hits other than the context's own notifier are progress.
fn run_poll_handlers_once(
    list: &[Rc<HandlerNode>],
    ready: &mut Vec<Ready>,
    timeout: &mut i64,
) -> bool {
    let mut progress = false;
    for node in list {
        if node.deleted.get() || node.in_poll_ready.get() {
            continue;
        }
        if let Some((poll, _)) = &node.poll {
            if poll() {
                push_poll_ready(ready, node);
                *timeout = 0;
                progress |= !node.is_ctx_notifier;
                // Busy: the idle clock starts again at the next check.
                node.poll_idle_deadline.set(0);
            }
        }
    }
    progress
}

fn push_poll_ready(ready: &mut Vec<Ready>, node: &Rc<HandlerNode>) {
    if let Some(entry) = ready.iter_mut().find(|r| Rc::ptr_eq(&r.node, node)) {
        entry.poll_ready = true;
        return;
    }
    ready.push(Ready {
        node: Rc::clone(node),
        revents: 0,
        poll_ready: true,
    });
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use crate::time::Clock;
    use crate::AioContext;

    use super::super::bh::IDLE_BH_TIMEOUT_NS;

    /// Scheduling notifies, so to see the wait bound we accept the notification by hand, as an iteration
    /// that raced with the schedule would have.
    #[test]
    fn idle_bh_bounds_the_wait_to_10ms() {
        let ctx = AioContext::new().unwrap();
        let inner = &ctx.inner;
        assert_eq!(inner.compute_timeout(), -1, "nothing to do: sleep forever");
        let bh = ctx.bh(|| {});
        bh.schedule_idle();
        assert_eq!(inner.compute_timeout(), IDLE_BH_TIMEOUT_NS);
        let timer = ctx.timer(Clock::Realtime, || {});
        // A stall of 3 ms between arming and computing (a loaded machine) makes the timer due: retry.
        let t = (0..5)
            .find_map(|_| {
                timer.arm_after(Duration::from_millis(3));
                Some(inner.compute_timeout()).filter(|&t| t != 0)
            })
            .expect("the timer was due at every try");
        assert!(t > 0 && t <= 3_000_000, "the nearer timer wins: {t}");
        bh.schedule();
        assert_eq!(inner.compute_timeout(), 0, "a non-idle BH means no wait");
        bh.cancel();
        timer.cancel();
        assert_eq!(
            inner.compute_timeout(),
            -1,
            "a cancelled BH does not bound the wait"
        );

        bh.schedule_idle();
        inner.shared.notify_state.accept();
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
        assert_eq!(ctx.inner.compute_timeout(), -1);
        clock.advance(Duration::from_micros(1));
        assert_eq!(ctx.inner.compute_timeout(), 0);
    }
}
