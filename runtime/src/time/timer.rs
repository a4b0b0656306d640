//! Timer lists (QEMU's QEMUTimerList, one per clock) and the [`Timer`] handle.

use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::task::Waker;
use std::time::Duration;

use slab::Slab;

use super::{clock_now, duration_ns, Clock};
use crate::context::Inner;

struct TimerEntry {
    clock: Clock,
    /// Distinguishes this timer from a later one that reuses its slab slot.
    id: u64,
    /// `(deadline, sequence)` while armed; the sequence makes equal deadlines fire in arming order.
    armed: Option<(i64, u64)>,
    callback: TimerCallback,
}

/// What a timer does when it fires: call a callback ([`Timer`]) or wake a task (the `sleep` futures,
/// which need no allocation of their own).
pub(crate) enum TimerCallback {
    Call(Rc<dyn Fn()>),
    Wake(Option<Waker>),
}

/// A fired timer's action, taken out so that it runs with no borrow held.
pub(crate) enum Fired {
    Call(Rc<dyn Fn()>),
    Wake(Waker),
    Nothing,
}

/// Every timer of a context: a slab of entries and, per clock, the armed ones ordered by deadline.
#[derive(Default)]
pub(crate) struct TimerLists {
    entries: Slab<TimerEntry>,
    queues: [BTreeMap<(i64, u64), usize>; 3],
    next_seq: u64,
}

impl TimerLists {
    fn entry_mut(&mut self, key: usize, id: u64) -> Option<&mut TimerEntry> {
        self.entries.get_mut(key).filter(|e| e.id == id)
    }

    /// Arms (or re-arms) a timer. Returns true if it became the earliest deadline of its clock, which
    /// means a sleeping loop must recompute its timeout.
    pub(crate) fn arm(&mut self, key: usize, id: u64, deadline: i64) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(entry) = self.entries.get_mut(key).filter(|e| e.id == id) else {
            return false;
        };
        let clock = entry.clock;
        let old = entry.armed.replace((deadline, seq));
        let queue = &mut self.queues[clock.index()];
        if let Some(old) = old {
            queue.remove(&old);
        }
        queue.insert((deadline, seq), key);
        queue.first_key_value().map(|(k, _)| *k) == Some((deadline, seq))
    }

    pub(crate) fn cancel(&mut self, key: usize, id: u64) {
        if let Some(entry) = self.entry_mut(key, id) {
            if let Some(armed) = entry.armed.take() {
                let clock = entry.clock;
                self.queues[clock.index()].remove(&armed);
            }
        }
    }

    /// Adds a timer. Returns its slot and id.
    pub(crate) fn insert(&mut self, clock: Clock, callback: TimerCallback) -> (usize, u64) {
        // Ids are unique across contexts, so a handle can never mistake another context's timer for its own.
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = self.entries.insert(TimerEntry {
            clock,
            id,
            armed: None,
            callback,
        });
        (key, id)
    }

    /// Arms a waking timer for `deadline` and stores the waker to wake (replacing an older one). Returns
    /// false if the entry is gone (it fired, or belongs to another timer now).
    pub(crate) fn arm_waker(&mut self, key: usize, id: u64, deadline: i64, waker: &Waker) -> bool {
        let Some(entry) = self.entry_mut(key, id) else {
            return false;
        };
        match &mut entry.callback {
            TimerCallback::Wake(Some(w)) if w.will_wake(waker) => {}
            TimerCallback::Wake(slot) => *slot = Some(waker.clone()),
            TimerCallback::Call(_) => return false,
        }
        if entry.armed.map(|(d, _)| d) != Some(deadline) {
            self.arm(key, id, deadline);
        }
        true
    }

    /// Removes a timer; the callback is returned so the caller can drop it outside any borrow.
    pub(crate) fn remove(&mut self, key: usize, id: u64) -> Option<TimerCallback> {
        self.cancel(key, id);
        self.entry_mut(key, id)?;
        Some(self.entries.remove(key).callback)
    }

    /// Takes every callback out (context teardown).
    pub(crate) fn drain(&mut self) -> Vec<TimerCallback> {
        for q in &mut self.queues {
            q.clear();
        }
        self.entries.drain().map(|e| e.callback).collect()
    }

    pub(crate) fn is_empty(&self, clock: Clock) -> bool {
        self.queues[clock.index()].is_empty()
    }

    /// The earliest armed deadline of `clock`.
    pub(crate) fn first_deadline(&self, clock: Clock) -> Option<i64> {
        self.queues[clock.index()]
            .first_key_value()
            .map(|(&(deadline, _), _)| deadline)
    }

    /// Pops the earliest timer of `clock` if it expired at `now`, disarming it, and returns its action.
    pub(crate) fn pop_expired(&mut self, clock: Clock, now: i64) -> Option<Fired> {
        let queue = &mut self.queues[clock.index()];
        let (&(deadline, _), _) = queue.first_key_value()?;
        if deadline > now {
            return None;
        }
        let (_, key) = queue.pop_first()?;
        let entry = &mut self.entries[key];
        entry.armed = None;
        Some(match &mut entry.callback {
            TimerCallback::Call(f) => Fired::Call(Rc::clone(f)),
            // A sleep's entry is one-shot: it goes away when it fires (its future re-inserts one if it is
            // polled early again), so an entry whose future was dropped elsewhere cannot leak.
            TimerCallback::Wake(_) => match self.entries.remove(key).callback {
                TimerCallback::Wake(Some(w)) => Fired::Wake(w),
                _ => Fired::Nothing,
            },
        })
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
    ctx: Weak<Inner>,
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
    fn with<R>(&self, f: impl FnOnce(&Inner, &mut TimerLists) -> R) -> Option<R> {
        let inner = self.ctx.upgrade()?;
        let mut timers = inner.timers.borrow_mut();
        Some(f(&inner, &mut timers))
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
            .with(|_, t| t.arm(self.key, self.id, deadline_ns))
            .unwrap_or(false);
        if became_head {
            if let Some(inner) = self.ctx.upgrade() {
                inner.shared.notify();
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
        let Some(inner) = self.ctx.upgrade() else {
            return;
        };
        let now = clock_now(self.clock, &inner.virtual_clock);
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
        self.with(|_, t| t.cancel(self.key, self.id));
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
        self.with(|_, t| {
            t.entries
                .get(self.key)
                .filter(|e| e.id == self.id)
                .and_then(|e| e.armed.map(|(deadline, _)| deadline))
        })
        .flatten()
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
    pub(crate) fn new(inner: &Rc<Inner>, clock: Clock, callback: Rc<dyn Fn()>) -> Self {
        let (key, id) = inner
            .timers
            .borrow_mut()
            .insert(clock, TimerCallback::Call(callback));
        Timer {
            handle: TimerHandle {
                ctx: Rc::downgrade(inner),
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
            .with(|_, t| t.remove(self.handle.key, self.handle.id));
        // Dropped here, after the borrow ended: the closure may own other timers.
        drop(callback);
    }
}
