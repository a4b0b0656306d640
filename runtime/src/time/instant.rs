//! [`Instant`]: a point in time on the current context's time clock.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::time::Duration;

use crate::context::current;
use crate::sys;
use crate::timers::duration_ns;

/// A point in time in ns on the current context's time clock (monotonic time, or the virtual clock once
/// time is paused). Outside any context it reads the monotonic clock. Instants from different clocks
/// do not compare meaningfully; the virtual clock starts equal to the monotonic one.
///
/// ```
/// use std::time::Duration;
/// use aioctx::time::Instant;
/// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
/// ctx.block_on(async {
///     let start = Instant::now();
///     aioctx::time::sleep(Duration::from_secs(3600)).await; // instant: virtual time auto-advances
///     assert_eq!(start.elapsed(), Duration::from_secs(3600));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    ns: i64,
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instant({} ns)", self.ns)
    }
}

impl Instant {
    /// Now, on the current context's time clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::Instant;
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// ctx.block_on(async {
    ///     let t0 = Instant::now();
    ///     assert_eq!(Instant::now(), t0); // paused: time stands still...
    ///     aioctx::time::sleep(Duration::from_secs(1)).await;
    ///     assert_eq!(Instant::now(), t0 + Duration::from_secs(1)); // ...until a sleep moves it
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn now() -> Instant {
        let ns = current::with_current(|home| home.timers().now(home.timers().future_clock()))
            .unwrap_or_else(sys::monotonic_ns);
        Instant { ns }
    }

    /// An instant from raw ns on a clock (see [`AioContext::now_ns`](crate::AioContext::now_ns)).
    ///
    /// ```
    /// use aioctx::time::{Clock, Instant};
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// let _guard = ctx.enter();
    /// // With time paused, the context's time clock is its virtual clock.
    /// assert_eq!(Instant::from_ns(ctx.now_ns(Clock::Virtual)), Instant::now());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_ns(ns: i64) -> Instant {
        Instant { ns }
    }

    /// The raw ns value.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::Instant;
    /// assert_eq!(Instant::from_ns(1_500).as_ns(), 1_500);
    /// assert_eq!((Instant::from_ns(0) + Duration::from_micros(2)).as_ns(), 2_000);
    /// ```
    pub fn as_ns(self) -> i64 {
        self.ns
    }

    /// Time since `earlier`, or zero if `earlier` is later.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::Instant;
    /// let (earlier, later) = (Instant::from_ns(2_000), Instant::from_ns(5_000));
    /// assert_eq!(later.duration_since(earlier), Duration::from_micros(3));
    /// assert_eq!(earlier.duration_since(later), Duration::ZERO);
    /// ```
    pub fn duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.ns.saturating_sub(earlier.ns).max(0) as u64)
    }

    /// Time since this instant, on the current context's time clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::Instant;
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// let _guard = ctx.enter();
    /// let start = Instant::now();
    /// aioctx::time::advance(Duration::from_millis(3));
    /// assert_eq!(start.elapsed(), Duration::from_millis(3));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn elapsed(self) -> Duration {
        Instant::now().duration_since(self)
    }

    /// `self + d`, or `None` on overflow.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::Instant;
    /// let t = Instant::from_ns(1_000);
    /// assert_eq!(t.checked_add(Duration::from_nanos(500)), Some(Instant::from_ns(1_500)));
    /// assert_eq!(Instant::from_ns(i64::MAX).checked_add(Duration::from_nanos(1)), None);
    /// ```
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let d = i64::try_from(d.as_nanos()).ok()?;
        self.ns.checked_add(d).map(Instant::from_ns)
    }

    /// `self - d`, or `None` on overflow.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::Instant;
    /// let t = Instant::from_ns(1_000);
    /// assert_eq!(t.checked_sub(Duration::from_nanos(500)), Some(Instant::from_ns(500)));
    /// assert_eq!(Instant::from_ns(i64::MIN).checked_sub(Duration::from_nanos(1)), None);
    /// ```
    pub fn checked_sub(self, d: Duration) -> Option<Instant> {
        let d = i64::try_from(d.as_nanos()).ok()?;
        self.ns.checked_sub(d).map(Instant::from_ns)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Saturates at the end of time instead of overflowing.
    fn add(self, d: Duration) -> Instant {
        Instant::from_ns(self.ns.saturating_add(duration_ns(d)))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;

    fn sub(self, d: Duration) -> Instant {
        Instant::from_ns(self.ns.saturating_sub(duration_ns(d)))
    }
}

impl SubAssign<Duration> for Instant {
    fn sub_assign(&mut self, d: Duration) {
        *self = *self - d;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    /// Saturates at zero.
    fn sub(self, earlier: Instant) -> Duration {
        self.duration_since(earlier)
    }
}
