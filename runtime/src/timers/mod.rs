//! The timer core: clocks and per-clock timer lists (QEMU's QEMUClock and QEMUTimerList), below the
//! loop. It names no context type: the loop owns a [`TimerLists`] and asks it for its nearest deadline
//! and for the actions of expired timers; the [`VirtualClock`] wakes the loop through a `Waker` the
//! loop gave it.
//!
//! Deadlines are `i64` nanoseconds on one of three clocks, as in QEMU:
//! - [`Clock::Realtime`]: `CLOCK_MONOTONIC`; runs always (QEMU_CLOCK_REALTIME).
//! - [`Clock::Host`]: `CLOCK_REALTIME`, the wall clock; jumps when the system time is set (QEMU_CLOCK_HOST).
//! - [`Clock::Virtual`]: the context's [`VirtualClock`], guest time that can be paused, resumed and
//!   advanced by hand (QEMU_CLOCK_VIRTUAL); timers on it do not fire while it is paused.

mod lists;
mod virtual_clock;

use std::time::Duration;

use crate::sys;

pub(crate) use lists::{TimerAction, TimerCallback, TimerLists};
pub use virtual_clock::VirtualClock;

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
#[non_exhaustive]
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

/// Reads `clock` in ns, the virtual one being `virtual_clock`.
pub(crate) fn clock_now(clock: Clock, virtual_clock: &VirtualClock) -> i64 {
    match clock {
        Clock::Realtime => sys::monotonic_ns(),
        Clock::Host => sys::clock_ns(libc::CLOCK_REALTIME),
        Clock::Virtual => virtual_clock.now_ns(),
    }
}

/// QEMU's `qemu_soonest_timeout`: the smaller of two timeouts where -1 means infinite.
pub(crate) fn soonest(a: i64, b: i64) -> i64 {
    if (a as u64) < (b as u64) {
        a
    } else {
        b
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::soonest;

    #[test]
    fn soonest_treats_minus_one_as_infinite() {
        assert_eq!(soonest(-1, 5), 5);
        assert_eq!(soonest(7, -1), 7);
        assert_eq!(soonest(-1, -1), -1);
        assert_eq!(soonest(3, 5), 3);
        assert_eq!(soonest(0, 5), 0);
    }
}
