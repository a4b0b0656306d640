//! Timers on the loop: the context's [`Timers`] state (the timer lists of `timers/`, the virtual clock,
//! and which clock the time futures use), and QEMU's callback [`Timer`] with its [`TimerHandle`].

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::task::Waker;
use std::time::Duration;

use super::HomeState;
use crate::timers::{
    clock_now, duration_ns, soonest, Clock, TimerAction, TimerCallback, TimerLists, VirtualClock,
};

/// A context's timers: the lists, the guest clock, and the time futures' settings.
pub(crate) struct Timers {
    lists: RefCell<TimerLists>,
    virtual_clock: VirtualClock,
    /// The clock the `aioctx::time` futures use on this context: Realtime, or Virtual once time is
    /// paused.
    future_clock: Cell<Clock>,
    /// With the virtual clock paused, `block_on` jumps to the next virtual timer instead of sleeping.
    auto_advance: Cell<bool>,
}

impl Timers {
    /// Timers on a fresh context; with `start_paused`, time starts paused and auto-advancing.
    pub(crate) fn new(virtual_clock: VirtualClock, start_paused: bool) -> Self {
        if start_paused {
            virtual_clock.pause();
        }
        Self {
            lists: RefCell::default(),
            virtual_clock,
            future_clock: Cell::new(if start_paused {
                Clock::Virtual
            } else {
                Clock::Realtime
            }),
            auto_advance: Cell::new(start_paused),
        }
    }

    pub(crate) fn virtual_clock(&self) -> &VirtualClock {
        &self.virtual_clock
    }

    /// Reads `clock` as this context sees it.
    pub(crate) fn now(&self, clock: Clock) -> i64 {
        clock_now(clock, &self.virtual_clock)
    }

    /// The clock the time futures use here.
    pub(crate) fn future_clock(&self) -> Clock {
        self.future_clock.get()
    }

    /// `time::pause`: the futures switch to the virtual clock, frozen, and `block_on` auto-advances it.
    pub(crate) fn pause_time(&self) {
        self.future_clock.set(Clock::Virtual);
        self.auto_advance.set(true);
        self.virtual_clock.pause();
    }

    /// `time::resume`: virtual time runs again and `block_on` stops auto-advancing it.
    pub(crate) fn resume_time(&self) {
        self.auto_advance.set(false);
        self.virtual_clock.resume();
    }

    /// A timer whose expiry wakes a task (a `Sleep`); arm it with [`arm_waker`](Self::arm_waker).
    pub(crate) fn insert_waker_timer(&self, clock: Clock) -> (usize, u64) {
        self.lists
            .borrow_mut()
            .insert(clock, TimerCallback::Wake(None))
    }

    /// Arms the waking timer `(key, id)` for `deadline` with `waker`; false if that timer is gone (it
    /// fired, or its slot belongs to another timer now).
    pub(crate) fn arm_waker(&self, key: usize, id: u64, deadline: i64, waker: &Waker) -> bool {
        self.lists.borrow_mut().arm_waker(key, id, deadline, waker)
    }

    /// Removes the timer `(key, id)`, if it is still there.
    pub(crate) fn remove(&self, key: usize, id: u64) {
        let callback = self.lists.borrow_mut().remove(key, id);
        // Ground rule 2.
        drop(callback);
    }

    /// Takes every callback out (context teardown), for the caller to drop unborrowed.
    pub(crate) fn drain(&self) -> Vec<TimerCallback> {
        self.lists.borrow_mut().drain()
    }
}

impl HomeState {
    /// The ns until the nearest timer over all clocks: 0 if one is due, -1 if none is armed.
    pub(super) fn timer_deadline(&self) -> i64 {
        let lists = self.timers.lists.borrow();
        let mut deadline = -1;
        for clock in Clock::ALL {
            let Some(first) = lists.first_deadline(clock) else {
                continue;
            };
            let remaining = match clock {
                Clock::Virtual => {
                    let (now, paused) = self.timers.virtual_clock.read();
                    if first <= now {
                        0
                    } else if paused {
                        // Paused guest time will not reach it by itself; an advance or resume notifies us.
                        continue;
                    } else {
                        first.saturating_sub(now)
                    }
                }
                _ => first.saturating_sub(self.timers.now(clock)).max(0),
            };
            deadline = soonest(deadline, remaining);
        }
        deadline
    }

    /// Runs expired timers of every clock, each clock read once (QEMU's `timerlist_run_timers`).
    pub(super) fn run_timers(&self) -> bool {
        let mut progress = false;
        for clock in Clock::ALL {
            if self.timers.lists.borrow().is_empty(clock) {
                continue;
            }
            let now = self.timers.now(clock);
            loop {
                // Ground rule 1: the action is taken out, the borrow ends, then it runs.
                let action = self.timers.lists.borrow_mut().pop_expired(clock, now);
                let Some(action) = action else {
                    break;
                };
                self.shared.stats.timers_fired.bump();
                match action {
                    TimerAction::Call(callback) => callback(),
                    TimerAction::Wake(waker) => waker.wake(),
                }
                progress = true;
            }
        }
        progress
    }

    /// `block_on`'s auto-advance rule: with the virtual clock paused and auto-advance on, run a
    /// non-blocking iteration; if it did nothing and `woken()` is false, move virtual time to the next
    /// virtual deadline. Returns false if the caller should run a normal blocking iteration instead.
    pub(crate) fn poll_or_advance_paused_time(&self, woken: impl Fn() -> bool) -> bool {
        if !self.timers.auto_advance.get() || !self.timers.virtual_clock.is_paused() {
            return false;
        }
        if self.aio_poll(false) || woken() {
            return true;
        }
        let next = self.timers.lists.borrow().first_deadline(Clock::Virtual);
        match next {
            Some(deadline) => {
                self.timers.virtual_clock.advance_to(deadline);
                true
            }
            None => false,
        }
    }
}

/// A weak, cloneable handle to a [`Timer`]: it can arm, cancel and inspect the timer, and does nothing once
/// the timer (or its context) is gone. Hand it to the timer's own callback to re-arm it.
///
/// ```
/// use std::{cell::Cell, rc::Rc, time::Duration};
/// use aioctx::{AioContext, time::Clock};
///
/// let ctx = AioContext::new()?;
/// let fired = Rc::new(Cell::new(0));
/// let slot = Rc::new(std::cell::OnceCell::new());
/// let timer = ctx.timer(Clock::Realtime, {
///     let (fired, slot) = (fired.clone(), slot.clone());
///     move || {
///         fired.set(fired.get() + 1);
///         if fired.get() < 3 {
///             let handle: &aioctx::time::TimerHandle = slot.get().unwrap();
///             handle.arm_after(Duration::from_micros(50)); // re-arm from the callback
///         }
///     }
/// });
/// slot.set(timer.handle()).unwrap();
/// timer.arm_after(Duration::from_micros(50));
/// while fired.get() < 3 {
///     ctx.poll(true);
/// }
/// assert!(!timer.is_pending());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct TimerHandle {
    ctx: Weak<HomeState>,
    key: usize,
    id: u64,
    clock: Clock,
}

impl std::fmt::Debug for TimerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerHandle")
            .field("clock", &self.clock)
            .field("expire_time_ns", &self.expire_time_ns())
            .finish()
    }
}

impl TimerHandle {
    fn with<R>(&self, f: impl FnOnce(&mut TimerLists) -> R) -> Option<R> {
        let home = self.ctx.upgrade()?;
        let mut lists = home.timers.lists.borrow_mut();
        Some(f(&mut lists))
    }

    /// The clock this timer's deadlines are measured on.
    ///
    /// ```
    /// use aioctx::time::Clock;
    /// let ctx = aioctx::AioContext::new()?;
    /// let timer = ctx.timer(Clock::Virtual, || {});
    /// assert_eq!(timer.clock(), Clock::Virtual);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Arms the timer to fire when its clock reaches `deadline_ns` (QEMU's `timer_mod_ns`). A deadline in
    /// the past fires at the next iteration. Re-arming replaces the previous deadline.
    ///
    /// With the guest clock paused, the timer fires exactly when the clock is moved to its deadline:
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc, time::Duration};
    /// use aioctx::time::Clock;
    /// let ctx = aioctx::AioContext::new()?;
    /// let clock = ctx.virtual_clock();
    /// clock.pause();
    /// let fired = Rc::new(Cell::new(false));
    /// let timer = ctx.timer(Clock::Virtual, { let f = fired.clone(); move || f.set(true) });
    /// timer.arm_ns(clock.now_ns() + 1_000);
    /// ctx.poll(false);
    /// assert!(!fired.get());
    /// clock.advance(Duration::from_nanos(1_000));
    /// ctx.poll(false);
    /// assert!(fired.get());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn arm_ns(&self, deadline_ns: i64) {
        let became_head = self
            .with(|t| t.arm(self.key, self.id, deadline_ns))
            .unwrap_or(false);
        if became_head {
            // A sleeping loop must recompute its timeout.
            if let Some(home) = self.ctx.upgrade() {
                home.shared.notify();
            }
        }
    }

    /// Arms the timer only if that makes it fire earlier (QEMU's `timer_mod_anticipate_ns`).
    ///
    /// ```
    /// use aioctx::time::Clock;
    /// let ctx = aioctx::AioContext::new()?;
    /// let timer = ctx.timer(Clock::Realtime, || {});
    /// let now = ctx.now_ns(Clock::Realtime);
    /// timer.arm_ns(now + 2_000_000_000);
    /// timer.arm_ns_anticipate(now + 3_000_000_000); // later: ignored
    /// assert_eq!(timer.expire_time_ns(), Some(now + 2_000_000_000));
    /// timer.arm_ns_anticipate(now + 1_000_000_000); // earlier: taken
    /// assert_eq!(timer.expire_time_ns(), Some(now + 1_000_000_000));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn arm_ns_anticipate(&self, deadline_ns: i64) {
        match self.expire_time_ns() {
            Some(current) if current <= deadline_ns => {}
            _ => self.arm_ns(deadline_ns),
        }
    }

    /// Arms the timer `after` from now on its clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::Clock;
    /// let ctx = aioctx::AioContext::new()?;
    /// let clock = ctx.virtual_clock();
    /// clock.pause(); // so that "now" stays put while we check
    /// let timer = ctx.timer(Clock::Virtual, || {});
    /// timer.arm_after(Duration::from_millis(5));
    /// assert_eq!(timer.expire_time_ns(), Some(clock.now_ns() + 5_000_000));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn arm_after(&self, after: Duration) {
        let Some(home) = self.ctx.upgrade() else {
            return;
        };
        let now = home.timers.now(self.clock);
        self.arm_ns(now.saturating_add(duration_ns(after)));
    }

    /// Disarms the timer (QEMU's `timer_del`). Idempotent.
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc, time::Duration};
    /// use aioctx::time::Clock;
    /// let ctx = aioctx::AioContext::new()?;
    /// let clock = ctx.virtual_clock();
    /// clock.pause();
    /// let fired = Rc::new(Cell::new(false));
    /// let timer = ctx.timer(Clock::Virtual, { let f = fired.clone(); move || f.set(true) });
    /// timer.arm_after(Duration::from_millis(1));
    /// timer.cancel();
    /// assert!(!timer.is_pending());
    /// clock.advance(Duration::from_millis(1));
    /// ctx.poll(false);
    /// assert!(!fired.get());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn cancel(&self) {
        self.with(|t| t.cancel(self.key, self.id));
    }

    /// The deadline the timer is armed for, or `None` if it is not armed.
    ///
    /// ```
    /// use aioctx::time::Clock;
    /// let ctx = aioctx::AioContext::new()?;
    /// let timer = ctx.timer(Clock::Realtime, || {});
    /// assert_eq!(timer.expire_time_ns(), None);
    /// let deadline = ctx.now_ns(Clock::Realtime) + 1_000_000_000;
    /// timer.arm_ns(deadline);
    /// assert_eq!(timer.expire_time_ns(), Some(deadline));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn expire_time_ns(&self) -> Option<i64> {
        self.with(|t| t.expire_time(self.key, self.id)).flatten()
    }

    /// Whether the timer is armed.
    ///
    /// A timer is disarmed once it has fired:
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::Clock;
    /// let ctx = aioctx::AioContext::new()?;
    /// let clock = ctx.virtual_clock();
    /// clock.pause();
    /// let timer = ctx.timer(Clock::Virtual, || {});
    /// timer.arm_after(Duration::from_micros(1));
    /// assert!(timer.is_pending());
    /// clock.advance(Duration::from_micros(1));
    /// ctx.poll(false);
    /// assert!(!timer.is_pending());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_pending(&self) -> bool {
        self.expire_time_ns().is_some()
    }
}

/// A timer on a context's timer list, created with [`AioContext::timer`](crate::AioContext::timer).
///
/// It dereferences to [`TimerHandle`] for `arm_ns`, `arm_after`, `cancel`, `expire_time_ns`. Dropping it
/// deletes the timer (QEMU's `timer_free`); its callback is dropped at once, on the home thread.
///
/// ```
/// use std::{cell::Cell, rc::Rc, time::Duration};
/// use aioctx::{AioContext, time::Clock};
///
/// let ctx = AioContext::new()?;
/// let fired = Rc::new(Cell::new(false));
/// let timer = ctx.timer(Clock::Realtime, { let f = fired.clone(); move || f.set(true) });
/// timer.arm_after(Duration::from_micros(100));
/// while !fired.get() {
///     ctx.poll(true); // sleeps about 100 us, then runs the callback
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Timer {
    handle: TimerHandle,
}

impl Timer {
    pub(crate) fn new(home: &Rc<HomeState>, clock: Clock, callback: Rc<dyn Fn()>) -> Self {
        let (key, id) = home
            .timers
            .lists
            .borrow_mut()
            .insert(clock, TimerCallback::Call(callback));
        Timer {
            handle: TimerHandle {
                ctx: Rc::downgrade(home),
                key,
                id,
                clock,
            },
        }
    }

    /// A weak handle that can arm and cancel this timer, e.g. from its own callback.
    ///
    /// The handle does not keep the timer alive:
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::Clock;
    /// let ctx = aioctx::AioContext::new()?;
    /// let timer = ctx.timer(Clock::Realtime, || {});
    /// let handle = timer.handle();
    /// handle.arm_after(Duration::from_secs(1));
    /// assert!(timer.is_pending()); // the same timer
    /// drop(timer);
    /// handle.arm_after(Duration::from_secs(1)); // does nothing: the timer is gone
    /// assert!(!handle.is_pending());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn handle(&self) -> TimerHandle {
        self.handle.clone()
    }
}

impl std::ops::Deref for Timer {
    type Target = TimerHandle;

    fn deref(&self) -> &TimerHandle {
        &self.handle
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let callback = self
            .handle
            .with(|t| t.remove(self.handle.key, self.handle.id));
        // Dropped here, after the borrow ended: the closure may own other timers (ground rule 2).
        drop(callback);
    }
}
