//! [`timeout`]: bound a future's running time.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{sleep, sleep_until, Instant, Sleep};

/// The error of a [`timeout`] whose deadline passed first.
///
/// ```
/// use std::time::Duration;
/// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
/// ctx.block_on(async {
///     let never = std::future::pending::<()>();
///     let err = aioctx::time::timeout(Duration::from_secs(1), never).await.unwrap_err();
///     assert_eq!(err.to_string(), "deadline has elapsed");
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed(());

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for std::io::Error {
    fn from(e: Elapsed) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, e)
    }
}

pin_project_lite::pin_project! {
    /// The future of [`timeout`] and [`timeout_at`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::{sleep, timeout, Instant};
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// ctx.block_on(async {
    ///     let start = Instant::now();
    ///     let slow = sleep(Duration::from_secs(7200));
    ///     assert!(timeout(Duration::from_secs(3600), slow).await.is_err());
    ///     assert_eq!(start.elapsed(), Duration::from_secs(3600)); // gave up at the deadline
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[derive(Debug)]
    #[must_use = "futures do nothing unless awaited"]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: Sleep,
    }
}

/// Runs `future` for at most `duration`: `Ok(output)` if it finished first, `Err(Elapsed)` if the
/// deadline passed first (the future is then dropped with the `Timeout`). The future is polled before
/// the deadline is checked, so one that is ready at once always wins.
///
/// ```
/// use std::time::Duration;
/// use aioctx::time::{sleep, timeout};
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     assert_eq!(timeout(Duration::from_millis(10), async { 7 }).await, Ok(7));
///     let slow = timeout(Duration::from_micros(100), sleep(Duration::from_secs(60))).await;
///     assert!(slow.is_err());
///     let err: std::io::Error = slow.unwrap_err().into();
///     assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep(duration),
    }
}

/// Like [`timeout`] with an absolute deadline.
///
/// One deadline for several steps:
///
/// ```
/// use std::time::Duration;
/// use aioctx::time::{sleep, timeout_at, Instant};
/// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
/// ctx.block_on(async {
///     let deadline = Instant::now() + Duration::from_secs(30);
///     assert_eq!(timeout_at(deadline, sleep(Duration::from_secs(10))).await, Ok(()));
///     assert!(timeout_at(deadline, std::future::pending::<()>()).await.is_err());
///     assert_eq!(Instant::now(), deadline);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep_until(deadline),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.future.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match Pin::new(this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed(()))),
            Poll::Pending => Poll::Pending,
        }
    }
}
