//! Clocks, nanosecond timers, and the time futures.
//!
//! Deadlines are `i64` nanoseconds on one of three clocks, as in QEMU:
//! - [`Clock::Realtime`]: `CLOCK_MONOTONIC`; runs always (QEMU_CLOCK_REALTIME).
//! - [`Clock::Host`]: `CLOCK_REALTIME`, the wall clock; jumps when the system time is set (QEMU_CLOCK_HOST).
//! - [`Clock::Virtual`]: the context's [`VirtualClock`], guest time that can be paused, resumed and
//!   advanced by hand (QEMU_CLOCK_VIRTUAL); timers on it do not fire while it is paused.
//!
//! The clocks and timer lists are the loop's own (a core below the loop); this module is the layer
//! above it that tasks use, and re-exports the loop's types so that everything about time is found
//! here.
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

pub use crate::context::{Timer, TimerHandle};
pub use crate::timers::{Clock, VirtualClock};
pub use instant::Instant;
pub use interval::{interval, interval_at, Interval, MissedTickBehavior};
pub use sleep::{advance, pause, resume, sleep, sleep_on, sleep_until, Sleep};
pub use timeout::{timeout, timeout_at, Elapsed, Timeout};
