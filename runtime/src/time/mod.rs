//! Clocks and nanosecond timers.
//!
//! Deadlines are `i64` nanoseconds on one of three clocks, as in QEMU:
//! - [`Clock::Realtime`]: `CLOCK_MONOTONIC`; runs always (QEMU_CLOCK_REALTIME).
//! - [`Clock::Host`]: `CLOCK_REALTIME`, the wall clock; jumps when the system time is set (QEMU_CLOCK_HOST).
//! - [`Clock::Virtual`]: the context's [`VirtualClock`], guest time that can be paused, resumed and
//!   advanced by hand (QEMU_CLOCK_VIRTUAL); timers on it do not fire while it is paused.
//!
//! The loop sleeps exactly until the nearest deadline over all clocks, with nanosecond timeouts in the
//! kernel (ppoll, epoll_pwait2, io_uring's timespec) and a 1 ns timer slack on the loop's thread, so a
//! 50 us timer fires within microseconds of its deadline instead of being rounded to a millisecond.
//!
//! Two layers use them: [`Timer`] is QEMU's callback timer; [`sleep`], [`timeout`] and [`interval`] are
//! futures for tasks. The futures measure time on their context's *time clock*: [`Clock::Realtime`],
//! or the virtual clock once time is [`pause`]d (or the context was built with
//! [`Builder::start_paused`](crate::Builder::start_paused)). [`sleep_on`] picks a clock explicitly, e.g.
//! guest time for a device timer.

mod instant;
mod interval;
mod sleep;
mod timeout;
mod timer;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::context::Shared;
use crate::sys;

pub use instant::Instant;
pub use interval::{interval, interval_at, Interval, MissedTickBehavior};
pub use sleep::{advance, pause, resume, sleep, sleep_on, sleep_until, Sleep};
pub use timeout::{timeout, timeout_at, Elapsed, Timeout};
pub(crate) use timer::{Fired, TimerCallback, TimerLists};
pub use timer::{Timer, TimerHandle};

/// The clock a timer's deadline is measured on.
///
/// ```
/// use aioctx::time::Clock;
/// let ctx = aioctx::AioContext::new()?;
/// ctx.virtual_clock().pause();
/// let frozen = ctx.now_ns(Clock::Virtual);
/// // The virtual clock started equal to the monotonic one and has stood still since the pause.
/// assert!(ctx.now_ns(Clock::Realtime) >= frozen);
/// assert_eq!(ctx.now_ns(Clock::Virtual), frozen);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Clock {
    /// Monotonic time (`CLOCK_MONOTONIC`), QEMU's QEMU_CLOCK_REALTIME.
    Realtime,
    /// Wall-clock time (`CLOCK_REALTIME`), QEMU's QEMU_CLOCK_HOST.
    Host,
    /// The context's pausable [`VirtualClock`], QEMU's QEMU_CLOCK_VIRTUAL.
    Virtual,
}

impl Clock {
    pub(crate) const ALL: [Clock; 3] = [Clock::Realtime, Clock::Host, Clock::Virtual];

    pub(crate) fn index(self) -> usize {
        match self {
            Clock::Realtime => 0,
            Clock::Host => 1,
            Clock::Virtual => 2,
        }
    }
}

/// Converts a duration to ns, saturating at `i64::MAX` (about 292 years).
pub(crate) fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[derive(Debug)]
struct VirtualState {
    paused: bool,
    /// While running: virtual time = monotonic time + offset.
    offset_ns: i64,
    /// While paused: the frozen virtual time.
    frozen_ns: i64,
}

/// A context's guest clock: monotonic time that can be paused, resumed and moved forward.
///
/// It starts running and equal to [`Clock::Realtime`]. Pausing freezes it (timers on [`Clock::Virtual`] stop
/// firing); [`advance`](VirtualClock::advance) moves it forward whether paused or not, firing the timers it
/// passes at the context's next iteration. The handle is `Send + Sync`: a VMM's control thread can stop
/// and resume guest time of a context running elsewhere; every change wakes that context.
///
/// ```
/// use std::time::Duration;
/// let ctx = aioctx::AioContext::new()?;
/// let clock = ctx.virtual_clock();
/// clock.pause();
/// let t0 = clock.now_ns();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now_ns() - t0, 5_000_000);
/// clock.resume();
/// assert!(!clock.is_paused());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct VirtualClock {
    state: Arc<Mutex<VirtualState>>,
    shared: Arc<Shared>,
}

impl VirtualClock {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            state: Arc::new(Mutex::new(VirtualState {
                paused: false,
                offset_ns: 0,
                frozen_ns: 0,
            })),
            shared,
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut VirtualState) -> R) -> R {
        // The state is three integers updated atomically under the lock; a panic cannot leave it torn.
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The current virtual time in ns.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::Clock;
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// let clock = ctx.virtual_clock();
    /// let t0 = clock.now_ns();
    /// clock.advance(Duration::from_nanos(250));
    /// assert_eq!(clock.now_ns(), t0 + 250);
    /// assert_eq!(ctx.now_ns(Clock::Virtual), clock.now_ns());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn now_ns(&self) -> i64 {
        self.with_state(|s| {
            if s.paused {
                s.frozen_ns
            } else {
                sys::monotonic_ns().saturating_add(s.offset_ns)
            }
        })
    }

    /// Whether the clock is paused.
    ///
    /// ```
    /// let running = aioctx::AioContext::new()?;
    /// assert!(!running.virtual_clock().is_paused());
    /// let paused = aioctx::AioContext::builder().start_paused(true).build()?;
    /// assert!(paused.virtual_clock().is_paused());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_paused(&self) -> bool {
        self.with_state(|s| s.paused)
    }

    /// Freezes virtual time. Idempotent.
    ///
    /// From another thread, e.g. a VMM's control thread stopping the guest:
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let clock = ctx.virtual_clock();
    /// std::thread::spawn({ let clock = clock.clone(); move || clock.pause() }).join().unwrap();
    /// assert!(clock.is_paused());
    /// let frozen = clock.now_ns();
    /// assert_eq!(clock.now_ns(), frozen);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn pause(&self) {
        self.with_state(|s| {
            if !s.paused {
                s.frozen_ns = sys::monotonic_ns().saturating_add(s.offset_ns);
                s.paused = true;
            }
        });
        self.shared.notify();
    }

    /// Lets virtual time run again from where it was frozen. Idempotent.
    ///
    /// Time advanced while paused is kept:
    ///
    /// ```
    /// use std::time::Duration;
    /// let ctx = aioctx::AioContext::new()?;
    /// let clock = ctx.virtual_clock();
    /// clock.pause();
    /// let frozen = clock.now_ns();
    /// clock.advance(Duration::from_secs(3600));
    /// clock.resume();
    /// assert!(!clock.is_paused());
    /// assert!(clock.now_ns() >= frozen + 3_600_000_000_000);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn resume(&self) {
        self.with_state(|s| {
            if s.paused {
                s.offset_ns = s.frozen_ns.saturating_sub(sys::monotonic_ns());
                s.paused = false;
            }
        });
        self.shared.notify();
    }

    /// Moves virtual time forward by `by`; timers whose deadline it passes fire at the next iteration.
    ///
    /// It works on a running clock too:
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc, time::Duration};
    /// use aioctx::time::Clock;
    /// let ctx = aioctx::AioContext::new()?;
    /// let fired = Rc::new(Cell::new(false));
    /// let timer = ctx.timer(Clock::Virtual, { let f = fired.clone(); move || f.set(true) });
    /// timer.arm_after(Duration::from_secs(3600));
    /// ctx.virtual_clock().advance(Duration::from_secs(3600));
    /// ctx.poll(false);
    /// assert!(fired.get());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn advance(&self, by: Duration) {
        let by = duration_ns(by);
        self.with_state(|s| {
            if s.paused {
                s.frozen_ns = s.frozen_ns.saturating_add(by);
            } else {
                s.offset_ns = s.offset_ns.saturating_add(by);
            }
        });
        self.shared.notify();
    }

    /// Moves virtual time forward to `deadline_ns` if it is behind it.
    pub(crate) fn advance_to(&self, deadline_ns: i64) {
        let now = self.now_ns();
        if deadline_ns > now {
            self.advance(Duration::from_nanos((deadline_ns - now) as u64));
        }
    }

    /// `(now, paused)` in one lock.
    pub(crate) fn read(&self) -> (i64, bool) {
        self.with_state(|s| {
            if s.paused {
                (s.frozen_ns, true)
            } else {
                (sys::monotonic_ns().saturating_add(s.offset_ns), false)
            }
        })
    }
}

/// Reads `clock` in ns.
pub(crate) fn clock_now(clock: Clock, virtual_clock: &VirtualClock) -> i64 {
    match clock {
        Clock::Realtime => sys::monotonic_ns(),
        Clock::Host => sys::clock_ns(libc::CLOCK_REALTIME),
        Clock::Virtual => virtual_clock.now_ns(),
    }
}
