//! [`Interval`]: ticks at a fixed period.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{sleep_until, Instant, Sleep};

/// What an [`Interval`] does when ticks were missed (the task was busy past one or more deadlines).
///
/// ```
/// use std::time::Duration;
/// use aioctx::time::{self, interval, MissedTickBehavior};
/// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
/// ctx.block_on(async {
///     let ms = Duration::from_millis;
///     let mut ticks = interval(ms(10));
///     ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
///     let t0 = ticks.tick().await;
///     time::advance(ms(25)); // as if the task had been busy past two deadlines
///     assert_eq!(ticks.tick().await, t0 + ms(10)); // late, at once
///     assert_eq!(ticks.tick().await, t0 + ms(35)); // a period after the late tick
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissedTickBehavior {
    /// Fire the missed ticks at once, back to back, until caught up; the schedule stays on the original
    /// grid (tokio's default, and ours).
    #[default]
    Burst,
    /// Fire once now, then continue one period from now: the grid shifts.
    Delay,
    /// Fire once now, then continue at the next tick of the original grid, dropping the missed ones.
    Skip,
}

/// Ticks every `period`; see [`interval`].
///
/// ```
/// use std::time::Duration;
/// use aioctx::time::{interval, Instant};
/// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
/// ctx.block_on(async {
///     let start = Instant::now();
///     let mut ticks = interval(Duration::from_secs(1));
///     for _ in 0..3 {
///         ticks.tick().await;
///     }
///     assert_eq!(start.elapsed(), Duration::from_secs(2)); // the first tick is immediate
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Interval {
    sleep: Sleep,
    period: Duration,
    missed: MissedTickBehavior,
}

/// An interval whose first tick completes at once and then every `period` on the current context's time
/// clock, with [`MissedTickBehavior::Burst`].
///
/// # Panics
///
/// If `period` is zero.
///
/// ```
/// use std::time::Duration;
/// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
/// ctx.block_on(async {
///     let mut ticks = aioctx::time::interval(Duration::from_millis(10));
///     let t0 = ticks.tick().await;
///     let t1 = ticks.tick().await;
///     assert_eq!(t1 - t0, Duration::from_millis(10));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[track_caller]
pub fn interval(period: Duration) -> Interval {
    interval_at(Instant::now(), period)
}

/// An interval whose first tick is at `start`.
///
/// # Panics
///
/// If `period` is zero.
///
/// ```
/// use std::time::Duration;
/// use aioctx::time::{interval_at, Instant};
/// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
/// ctx.block_on(async {
///     let start = Instant::now() + Duration::from_secs(5);
///     let mut ticks = interval_at(start, Duration::from_secs(1));
///     assert_eq!(ticks.tick().await, start);
///     assert_eq!(Instant::now(), start); // the first tick waited for it
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[track_caller]
pub fn interval_at(start: Instant, period: Duration) -> Interval {
    assert!(
        !period.is_zero(),
        "aioctx::time::interval needs a non-zero period"
    );
    Interval {
        sleep: sleep_until(start),
        period,
        missed: MissedTickBehavior::default(),
    }
}

impl Interval {
    /// Waits for the next tick and returns its scheduled time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::{interval, Instant};
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// ctx.block_on(async {
    ///     let mut ticks = interval(Duration::from_millis(10));
    ///     let t0 = ticks.tick().await;
    ///     assert_eq!(t0, Instant::now());
    ///     assert_eq!(ticks.tick().await, t0 + Duration::from_millis(10));
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn tick(&mut self) -> Instant {
        poll_fn(|cx| self.poll_tick(cx)).await
    }

    /// Polls for the next tick.
    ///
    /// For a hand-written future or poll loop that holds the interval:
    ///
    /// ```
    /// use std::task::{Context, Poll};
    /// use std::time::Duration;
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// let _guard = ctx.enter();
    /// let mut ticks = aioctx::time::interval(Duration::from_millis(10));
    /// let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    /// let Poll::Ready(t0) = ticks.poll_tick(&mut cx) else { unreachable!("the first tick is immediate") };
    /// assert!(ticks.poll_tick(&mut cx).is_pending());
    /// aioctx::time::advance(Duration::from_millis(10));
    /// assert_eq!(ticks.poll_tick(&mut cx), Poll::Ready(t0 + Duration::from_millis(10)));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<Instant> {
        if Pin::new(&mut self.sleep).poll(cx).is_pending() {
            return Poll::Pending;
        }
        let scheduled = self.sleep.deadline();
        let now = Instant::now();
        let next = match self.missed {
            MissedTickBehavior::Burst => scheduled + self.period,
            MissedTickBehavior::Delay => now + self.period,
            MissedTickBehavior::Skip => {
                let behind = now.duration_since(scheduled).as_nanos();
                let period = self.period.as_nanos();
                let periods = (behind / period + 1).min(u128::from(u32::MAX)) as u32;
                scheduled + self.period.saturating_mul(periods)
            }
        };
        self.sleep.reset(next);
        Poll::Ready(scheduled)
    }

    /// Starts the schedule over: the next tick is one period from now.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::{self, interval};
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// ctx.block_on(async {
    ///     let ms = Duration::from_millis;
    ///     let mut ticks = interval(ms(10));
    ///     let t0 = ticks.tick().await;
    ///     time::advance(ms(4));
    ///     ticks.reset();
    ///     assert_eq!(ticks.tick().await, t0 + ms(14));
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reset(&mut self) {
        self.sleep.reset(Instant::now() + self.period);
    }

    /// The period.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let ctx = aioctx::AioContext::new()?;
    /// # let _guard = ctx.enter();
    /// let ticks = aioctx::time::interval(Duration::from_millis(10));
    /// assert_eq!(ticks.period(), Duration::from_millis(10));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The missed-tick behaviour.
    ///
    /// By default missed ticks fire back to back:
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::{self, interval, Instant, MissedTickBehavior};
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// ctx.block_on(async {
    ///     let ms = Duration::from_millis;
    ///     let mut ticks = interval(ms(10));
    ///     assert_eq!(ticks.missed_tick_behavior(), MissedTickBehavior::Burst);
    ///     let t0 = ticks.tick().await;
    ///     time::advance(ms(25));
    ///     assert_eq!(ticks.tick().await, t0 + ms(10));
    ///     assert_eq!(ticks.tick().await, t0 + ms(20));
    ///     assert_eq!(Instant::now(), t0 + ms(25)); // both came at once
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn missed_tick_behavior(&self) -> MissedTickBehavior {
        self.missed
    }

    /// Sets the missed-tick behaviour.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::{self, interval, MissedTickBehavior};
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// ctx.block_on(async {
    ///     let ms = Duration::from_millis;
    ///     let mut ticks = interval(ms(10));
    ///     ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ///     let t0 = ticks.tick().await;
    ///     time::advance(ms(25));
    ///     assert_eq!(ticks.tick().await, t0 + ms(10)); // the late tick
    ///     assert_eq!(ticks.tick().await, t0 + ms(30)); // t0 + 20 ms was dropped
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_missed_tick_behavior(&mut self, behavior: MissedTickBehavior) {
        self.missed = behavior;
    }
}
