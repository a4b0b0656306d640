//! [`spawn_blocking`]: a job on the context's blocking thread pool (`pool/`), awaited by a task.
//!
//! A job's result goes back to the context as a one-shot bottom half, which completes the job's task on
//! the home thread: the submitting side never blocks. Aborting the job's [`JoinHandle`] before a worker
//! picked the job up cancels it (the handle reports [`JoinError::Cancelled`]); a job that started runs
//! to its end, and its result is dropped.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

use futures::channel::oneshot;

use super::executor::Executor;
use super::{JoinError, JoinHandle, PanicPayload};
use crate::context::{current, HomeState};
use crate::Remote;

/// Runs `f` on `home`'s pool; the task that awaits it runs on the home thread.
pub(crate) fn spawn_blocking_on<F, T>(home: &HomeState, f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel::<std::thread::Result<T>>();
    let remote = Remote::new(std::sync::Arc::clone(home.shared()));
    home.thread_pool().submit(Box::new(move || {
        if tx.is_canceled() {
            // Aborted before it started: do not run it. Its task already reported Cancelled.
            return;
        }
        let out = catch_unwind(AssertUnwindSafe(f));
        // The result travels back as a one-shot BH; the task wakes on its home thread.
        remote.schedule_oneshot(move || {
            let _ = tx.send(out);
        });
    }));
    Executor::shared_of(home.shared()).spawn_local_flat(async move {
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => Err(JoinError::Panic(PanicPayload::new(panic))),
            // The pool dropped the job: the context is shutting down.
            Err(oneshot::Canceled) => Err(JoinError::Cancelled),
        }
    })
}

/// `spawn_blocking` for fallible I/O on the current context, as an `io::Result` (a cancelled or panicked
/// job, or no current context, becomes an error).
pub(crate) async fn spawn_blocking_io<F, T>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let handle = current::with_current(|home| spawn_blocking_on(home, f))
        .ok_or_else(|| crate::sys::outside_context("aioctx I/O"))?;
    handle.await.map_err(io::Error::from)?
}

/// Runs `f` on the current context's blocking thread pool and returns a [`JoinHandle`] for its result.
/// Use it for work that would block the loop: `fsync` on a slow device, `getaddrinfo`, a compression
/// step. The result comes back through the context, so the task awaiting it runs on the home thread.
///
/// # Panics
///
/// Outside a context (see [`spawn_local`](crate::spawn_local)).
///
/// ```
/// let ctx = aioctx::AioContext::new()?;
/// let sum = ctx.block_on(async {
///     aioctx::spawn_blocking(|| (1..=100u64).sum::<u64>()).await
/// });
/// assert_eq!(sum.unwrap(), 5050);
/// # Ok::<(), std::io::Error>(())
/// ```
#[track_caller]
pub fn spawn_blocking<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    current::with_current(|home| spawn_blocking_on(home, f))
        .unwrap_or_else(|| panic!("aioctx::spawn_blocking called outside an aioctx context"))
}
