//! [`Sleep`] and the functions that control a context's time.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{Clock, Instant};
use crate::context::{current, HomeState};
use crate::timers::duration_ns;

/// Where a sleep's timer lives: which context, which slot.
#[derive(Clone, Copy, Debug)]
struct Registration {
    context: u64,
    key: usize,
    id: u64,
}

/// A future that completes at a deadline; see [`sleep`].
///
/// It is `Send` and `Unpin`, takes no allocation of its own, and registers a timer on the context that
/// polls it; the timer is removed when the sleep completes or is dropped.
///
/// ```
/// use std::time::Duration;
/// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
/// ctx.block_on(async {
///     let mut nap = aioctx::time::sleep(Duration::from_secs(60));
///     assert!(!nap.is_elapsed());
///     (&mut nap).await; // `Unpin`: await it by reference to keep it
///     assert!(nap.is_elapsed());
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    deadline: i64,
    clock: Clock,
    registration: Option<Registration>,
}

fn time_clock() -> Clock {
    current::with_current(|home| home.timers().future_clock()).unwrap_or(Clock::Realtime)
}

/// Waits for `duration` on the current context's time clock, with nanosecond precision.
///
/// ```
/// use std::time::{Duration, Instant};
/// let ctx = aioctx::AioContext::new()?;
/// let start = Instant::now();
/// ctx.block_on(aioctx::time::sleep(Duration::from_micros(50)));
/// assert!(start.elapsed() >= Duration::from_micros(50));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Waits until `deadline` on the current context's time clock.
///
/// ```
/// use std::time::Duration;
/// use aioctx::time::{sleep_until, Instant};
/// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
/// ctx.block_on(async {
///     let deadline = Instant::now() + Duration::from_secs(3600);
///     sleep_until(deadline).await;
///     assert_eq!(Instant::now(), deadline);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline: deadline.as_ns(),
        clock: time_clock(),
        registration: None,
    }
}

/// Waits for `duration` on an explicit clock, e.g. [`Clock::Virtual`] for a device timer that must stop
/// while the guest is paused, whatever the context's time clock is.
///
/// # Panics
///
/// Outside a context (the clock is read from the current context).
///
/// ```
/// use std::time::Duration;
/// use aioctx::time::{sleep_on, Clock};
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async { sleep_on(Clock::Virtual, Duration::from_micros(10)).await });
/// # Ok::<(), std::io::Error>(())
/// ```
#[track_caller]
pub fn sleep_on(clock: Clock, duration: Duration) -> Sleep {
    let now = current::with_current(|home| home.timers().now(clock))
        .unwrap_or_else(|| panic!("aioctx::time::sleep_on called outside an aioctx context"));
    Sleep {
        deadline: now.saturating_add(duration_ns(duration)),
        clock,
        registration: None,
    }
}

impl Sleep {
    /// The deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::{sleep, Instant};
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// let _guard = ctx.enter();
    /// let start = Instant::now();
    /// let nap = sleep(Duration::from_millis(5));
    /// assert_eq!(nap.deadline(), start + Duration::from_millis(5));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn deadline(&self) -> Instant {
        Instant::from_ns(self.deadline)
    }

    /// The clock the deadline is on.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::{sleep, sleep_on, Clock};
    /// let ctx = aioctx::AioContext::new()?;
    /// let _guard = ctx.enter();
    /// assert_eq!(sleep(Duration::from_millis(1)).clock(), Clock::Realtime); // time is not paused
    /// assert_eq!(sleep_on(Clock::Virtual, Duration::from_millis(1)).clock(), Clock::Virtual);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Moves the deadline (earlier or later); the sleep can be awaited again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::{sleep, Instant};
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// ctx.block_on(async {
    ///     let start = Instant::now();
    ///     let mut nap = sleep(Duration::from_secs(1));
    ///     nap.reset(start + Duration::from_secs(5));
    ///     (&mut nap).await;
    ///     assert_eq!(Instant::now(), start + Duration::from_secs(5));
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline.as_ns();
    }

    /// Whether the deadline has passed, on the current context's view of the clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// let _guard = ctx.enter();
    /// let nap = aioctx::time::sleep(Duration::from_millis(5));
    /// assert!(!nap.is_elapsed());
    /// aioctx::time::advance(Duration::from_millis(5));
    /// assert!(nap.is_elapsed());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_elapsed(&self) -> bool {
        current::with_current(|home| home.timers().now(self.clock) >= self.deadline)
            .unwrap_or(false)
    }

    fn deregister(&mut self) {
        if let Some(reg) = self.registration.take() {
            current::with_context(reg.context, |home| home.timers().remove(reg.key, reg.id));
        }
    }

    /// Arms this sleep's timer on `home` with the task's waker. No notification is needed: sleeps are
    /// polled by the loop's own thread, which computes its next timeout afterwards.
    fn register(&mut self, home: &HomeState, cx: &Context<'_>) {
        let timers = home.timers();
        if let Some(reg) = self.registration {
            if reg.context == home.id()
                && timers.arm_waker(reg.key, reg.id, self.deadline, cx.waker())
            {
                return;
            }
        }
        // First poll, the entry fired, or the task moved to another context: a new entry here. (An entry
        // left on another context fires once, waking the task spuriously, and goes away.)
        let (key, id) = timers.insert_waker_timer(self.clock);
        timers.arm_waker(key, id, self.deadline, cx.waker());
        self.registration = Some(Registration {
            context: home.id(),
            key,
            id,
        });
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let home = current::with_current(std::rc::Rc::clone).unwrap_or_else(|| {
            panic!("an aioctx::time future was polled outside an aioctx context")
        });
        if home.timers().now(this.clock) >= this.deadline {
            this.deregister();
            return Poll::Ready(());
        }
        this.register(&home, cx);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.deregister();
    }
}

#[track_caller]
fn with_current_or_panic<R>(what: &str, f: impl FnOnce(&HomeState) -> R) -> R {
    current::with_current(|home| f(home))
        .unwrap_or_else(|| panic!("aioctx::time::{what} called outside an aioctx context"))
}

/// Pauses time on the current context: from now on its `aioctx::time` futures and [`Instant::now`] use
/// its virtual clock, frozen, and `block_on` auto-advances it to the next timer whenever the loop has
/// nothing else to do (tokio's `time::pause`). Sleeps created before the call keep the clock they were
/// created with.
///
/// # Panics
///
/// Outside a context.
///
/// ```
/// use std::time::Duration;
/// use aioctx::time::{self, Instant};
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     time::pause();
///     let t0 = Instant::now();
///     time::advance(Duration::from_millis(5));
///     assert_eq!(Instant::now() - t0, Duration::from_millis(5));
///     time::resume();
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[track_caller]
pub fn pause() {
    with_current_or_panic("pause", |home| home.timers().pause_time());
}

/// Lets the current context's virtual time run again (at real speed) and stops auto-advancing.
///
/// # Panics
///
/// Outside a context.
///
/// ```
/// use aioctx::time;
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     time::pause();
///     assert!(ctx.virtual_clock().is_paused());
///     time::resume();
///     assert!(!ctx.virtual_clock().is_paused());
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[track_caller]
pub fn resume() {
    with_current_or_panic("resume", |home| home.timers().resume_time());
}

/// Moves the current context's virtual time forward by `by`; virtual timers it passes fire at the next
/// iteration.
///
/// # Panics
///
/// Outside a context.
///
/// ```
/// use std::time::Duration;
/// use aioctx::time::{self, sleep, Instant};
/// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
/// ctx.block_on(async {
///     let start = Instant::now();
///     let nap = sleep(Duration::from_secs(10));
///     time::advance(Duration::from_secs(10));
///     assert!(nap.is_elapsed());
///     assert_eq!(start.elapsed(), Duration::from_secs(10));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[track_caller]
pub fn advance(by: Duration) {
    with_current_or_panic("advance", |home| home.timers().virtual_clock().advance(by));
}
