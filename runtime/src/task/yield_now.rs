//! [`yield_now`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Yields to the loop once: the task is queued behind every task that is ready now and runs again at the
/// next iteration, after fds and timers were checked.
///
/// ```
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     for _ in 0..3 {
///         aioctx::yield_now().await;
///     }
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future of [`yield_now`].
///
/// Yielding lets a task that is ready run before the yielding one continues:
///
/// ```
/// use std::{cell::Cell, rc::Rc};
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let ran = Rc::new(Cell::new(false));
///     let other = aioctx::spawn_local({ let ran = ran.clone(); async move { ran.set(true) } });
///     assert!(!ran.get());
///     aioctx::yield_now().await;
///     assert!(ran.get());
///     other.await.unwrap();
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
