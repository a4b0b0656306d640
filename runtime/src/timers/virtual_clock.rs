//! [`VirtualClock`]: a context's guest clock.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;
use std::time::Duration;

use super::duration_ns;
use crate::sys;

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
/// It starts running and equal to [`Clock::Realtime`](super::Clock::Realtime). Pausing freezes it (timers on [`Clock::Virtual`](super::Clock::Virtual) stop
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
    /// Wakes the loop that owns the clock, so it recomputes its timeout after every change.
    wake_loop: Waker,
}

impl VirtualClock {
    /// A running clock equal to the monotonic one; every change wakes `wake_loop`.
    pub(crate) fn new(wake_loop: Waker) -> Self {
        Self {
            state: Arc::new(Mutex::new(VirtualState {
                paused: false,
                offset_ns: 0,
                frozen_ns: 0,
            })),
            wake_loop,
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
        self.wake_loop.wake_by_ref();
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
        self.wake_loop.wake_by_ref();
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
        self.wake_loop.wake_by_ref();
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
