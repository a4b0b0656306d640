//! `AioContext::block_on`: drive a future to completion on the calling (home) thread, running the
//! loop while it waits.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use crate::context::current;
use crate::context::notify::Wakeup;
use crate::AioContext;

/// The waker of a `block_on` future: a flag plus a notification of the context, so a wake from any
/// thread ends the loop's wait (and costs no syscall while the loop runs or polls). `MainLoop::block_on`
/// uses it too, with the notification of its aio context.
pub(crate) struct BlockOnWaker {
    woken: AtomicBool,
    wakeup: Arc<Wakeup>,
}

impl BlockOnWaker {
    /// A waker that notifies `wakeup`, set at first so the future is polled once before any wait.
    pub(crate) fn new(wakeup: Arc<Wakeup>) -> Arc<Self> {
        Arc::new(BlockOnWaker {
            woken: AtomicBool::new(true),
            wakeup,
        })
    }

    /// Whether the future was woken since the last call (then it is polled again).
    pub(crate) fn take(&self) -> bool {
        // Acquire pairs with the Release store of `wake_by_ref`.
        self.woken.swap(false, Ordering::AcqRel)
    }

    /// Whether the future has been woken, without clearing it.
    fn is_woken(&self) -> bool {
        // Acquire pairs with the Release store of `wake_by_ref`.
        self.woken.load(Ordering::Acquire)
    }
}

impl Wake for BlockOnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Release pairs with the Acquire swap in `block_on`: the future's wake reason is visible.
        self.woken.store(true, Ordering::Release);
        self.wakeup.notify();
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
        let home = self.home();
        let _enter = current::enter(home);
        let _hidden = super::spawn::hide_running_task();
        let flag = BlockOnWaker::new(Arc::clone(home.shared().wakeup()));
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if flag.take() {
                if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    return out;
                }
            }
            if !home.poll_or_advance_paused_time(|| flag.is_woken()) {
                home.aio_poll(true);
            }
        }
    }
}
