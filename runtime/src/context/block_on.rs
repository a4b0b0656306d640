//! `AioContext::block_on`: drive a future to completion on the calling (home) thread.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::{waker, ArcWake};

use super::{current, AioContext, Shared};
use crate::time::Clock;

/// The waker of a `block_on` future: a flag plus a notification of the context, so a wake from any
/// thread ends the loop's wait (and costs no syscall while the loop runs or polls).
struct BlockOnWaker {
    woken: AtomicBool,
    shared: Arc<Shared>,
}

impl ArcWake for BlockOnWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.woken.store(true, Ordering::Release);
        arc_self.shared.notify();
    }
}

impl AioContext {
    /// Runs `future` to completion on this thread, running the loop (tasks, BHs, fd handlers, timers)
    /// while it waits. The future need not be `Send` or `'static`.
    ///
    /// May be called nested, from inside a task or callback of this context (QEMU's `AIO_WAIT_WHILE`): the
    /// task that called it is not polled again until it returns, and everything else keeps running.
    ///
    /// With the virtual clock paused and auto-advance on ([`Builder::start_paused`](crate::Builder::start_paused)),
    /// an iteration that finds nothing to do jumps virtual time to the next virtual timer instead of
    /// sleeping, so tests of long timeouts run instantly.
    ///
    /// ```
    /// use std::time::Duration;
    /// let ctx = aioctx::AioContext::new()?;
    /// let out = ctx.block_on(async {
    ///     aioctx::time::sleep(Duration::from_micros(50)).await;
    ///     "done"
    /// });
    /// assert_eq!(out, "done");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let _enter = current::enter(&self.inner);
        let _hidden = crate::task::hide_running_task();
        let flag = Arc::new(BlockOnWaker {
            woken: AtomicBool::new(true),
            shared: Arc::clone(&self.inner.shared),
        });
        let waker = waker(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if flag.woken.swap(false, Ordering::AcqRel) {
                if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    return out;
                }
            }
            if !self.try_auto_advance(&flag.woken) {
                self.inner.aio_poll(true);
            }
        }
    }

    /// The auto-advance rule: with the virtual clock paused and auto-advance on, run a non-blocking
    /// iteration; if it did nothing and the future was not woken, move virtual time to the next virtual
    /// deadline. Returns false if the caller should run a normal blocking iteration instead.
    fn try_auto_advance(&self, woken: &AtomicBool) -> bool {
        let inner = &self.inner;
        if !inner.auto_advance.get() || !inner.virtual_clock.is_paused() {
            return false;
        }
        if inner.aio_poll(false) || woken.load(Ordering::Acquire) {
            return true;
        }
        let next = inner.timers.borrow().first_deadline(Clock::Virtual);
        match next {
            Some(deadline) => {
                inner.virtual_clock.advance_to(deadline);
                true
            }
            None => false,
        }
    }
}
