//! [`Interval`]: ticks at a fixed period.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{sleep_until, Instant, Sleep};

/// What an [`Interval`] does when ticks were missed (the task was busy past one or more deadlines).
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
    pub async fn tick(&mut self) -> Instant {
        poll_fn(|cx| self.poll_tick(cx)).await
    }

    /// Polls for the next tick.
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
    pub fn reset(&mut self) {
        self.sleep.reset(Instant::now() + self.period);
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The missed-tick behaviour.
    pub fn missed_tick_behavior(&self) -> MissedTickBehavior {
        self.missed
    }

    /// Sets the missed-tick behaviour.
    pub fn set_missed_tick_behavior(&mut self, behavior: MissedTickBehavior) {
        self.missed = behavior;
    }
}
