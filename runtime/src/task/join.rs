//! [`JoinHandle`] and [`JoinError`].

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::task::Waker;

use super::spawn::TaskMeta;

/// Why a task produced no value. `Send + Sync`, so it converts into `io::Error`,
/// `Box<dyn Error + Send + Sync>` and the like.
///
/// ```
/// let ctx = aioctx::AioContext::new()?;
/// let err = ctx.block_on(ctx.spawn_local(async { panic!("boom") })).unwrap_err();
/// let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
/// assert_eq!(boxed.to_string(), "task panicked: boom");
/// # Ok::<(), std::io::Error>(())
/// ```
pub enum JoinError {
    /// The task was aborted with [`JoinHandle::abort`], or dropped because its context was dropped (or its
    /// IOThread stopped) before it finished.
    Cancelled,
    /// The task panicked; the payload is what it panicked with.
    Panic(PanicPayload),
}

/// What a task panicked with, and its message when the payload is a string.
///
/// ```
/// use aioctx::JoinError;
/// let ctx = aioctx::AioContext::new()?;
/// let err = ctx.block_on(ctx.spawn_local(async { panic!("disk on fire") })).unwrap_err();
/// let JoinError::Panic(payload) = err else { unreachable!("the task panicked") };
/// assert_eq!(payload.message(), "disk on fire");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct PanicPayload {
    message: String,
    // A Mutex makes the `Send`-only payload `Sync`; it is only ever taken whole, never shared.
    payload: Mutex<Box<dyn Any + Send + 'static>>,
}

impl PanicPayload {
    pub(crate) fn new(payload: Box<dyn Any + Send + 'static>) -> PanicPayload {
        PanicPayload {
            message: panic_message(&*payload).to_owned(),
            payload: Mutex::new(payload),
        }
    }

    /// The panic message (`"<non-string panic payload>"` when the payload is not a string).
    ///
    /// ```
    /// use aioctx::JoinError;
    /// let ctx = aioctx::AioContext::new()?;
    /// let code = 7;
    /// let err = ctx.block_on(ctx.spawn_local(async move { panic!("exit code {code}") })).unwrap_err();
    /// if let JoinError::Panic(payload) = err {
    ///     assert_eq!(payload.message(), "exit code 7");
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The payload, to resume the panic with [`std::panic::resume_unwind`].
    ///
    /// The payload of `panic!` with a plain string literal is a `&'static str`:
    ///
    /// ```
    /// use aioctx::JoinError;
    /// let ctx = aioctx::AioContext::new()?;
    /// let err = ctx.block_on(ctx.spawn_local(async { panic!("boom") })).unwrap_err();
    /// if let JoinError::Panic(payload) = err {
    ///     let inner = payload.into_inner();
    ///     assert_eq!(inner.downcast_ref::<&str>(), Some(&"boom"));
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_inner(self) -> Box<dyn Any + Send + 'static> {
        self.payload
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for PanicPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PanicPayload({:?})", self.message)
    }
}

impl JoinError {
    /// Whether the task was cancelled.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let task = ctx.spawn_local(futures::future::pending::<()>());
    /// task.abort();
    /// let err = ctx.block_on(task).unwrap_err();
    /// assert!(err.is_cancelled());
    /// assert!(!err.is_panic());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_cancelled(&self) -> bool {
        matches!(self, JoinError::Cancelled)
    }

    /// Whether the task panicked.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let err = ctx.block_on(ctx.spawn_local(async { panic!("boom") })).unwrap_err();
    /// assert!(err.is_panic());
    /// assert!(!err.is_cancelled());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_panic(&self) -> bool {
        matches!(self, JoinError::Panic(_))
    }

    /// The panic payload, to resume it with [`std::panic::resume_unwind`].
    ///
    /// # Panics
    ///
    /// If the task was cancelled rather than panicking (check [`is_panic`](Self::is_panic) first, or use
    /// [`try_into_panic`](Self::try_into_panic)).
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let err = ctx.block_on(ctx.spawn_local(async { panic!("boom") })).unwrap_err();
    /// assert!(err.is_panic());
    /// let payload = err.into_panic();
    /// assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
    /// // or, to propagate it: std::panic::resume_unwind(payload)
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.try_into_panic()
            .unwrap_or_else(|_| panic!("JoinError::into_panic on a cancelled task"))
    }

    /// The panic payload, or the error itself if the task was cancelled.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let task = ctx.spawn_local(futures::future::pending::<()>());
    /// task.abort();
    /// let err = ctx.block_on(task).unwrap_err();
    /// match err.try_into_panic() {
    ///     Ok(payload) => std::panic::resume_unwind(payload),
    ///     Err(err) => assert!(err.is_cancelled()),
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send + 'static>, JoinError> {
        match self {
            JoinError::Panic(p) => Ok(p.into_inner()),
            other => Err(other),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>")
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Cancelled => f.write_str("JoinError::Cancelled"),
            JoinError::Panic(p) => write!(f, "JoinError::Panic({:?})", p.message()),
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Cancelled => f.write_str("task was cancelled"),
            JoinError::Panic(p) => write!(f, "task panicked: {}", p.message()),
        }
    }
}

impl std::error::Error for JoinError {}

impl From<JoinError> for std::io::Error {
    fn from(e: JoinError) -> Self {
        std::io::Error::other(e)
    }
}

/// An owned permission to await a task's result: a future of `Result<T, JoinError>`.
///
/// Dropping the handle detaches the task (it keeps running, as in tokio); [`abort`](Self::abort) cancels
/// it: its future is dropped, on its home thread, the next time the context runs it.
///
/// ```
/// let ctx = aioctx::AioContext::new()?;
/// let answer = ctx.block_on(async {
///     let h = aioctx::spawn_local(async { 6 * 7 });
///     h.await
/// });
/// assert_eq!(answer.unwrap(), 42);
///
/// let failed = ctx.block_on(ctx.spawn_local(async { panic!("boom") }));
/// assert!(failed.unwrap_err().is_panic());
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "dropping a JoinHandle detaches the task; `let _ =` it to make that explicit"]
pub struct JoinHandle<T> {
    task: Option<async_task::FallibleTask<Result<T, JoinError>, TaskMeta>>,
    /// The task's metadata (its abort flag), inside the task's allocation.
    meta: NonNull<TaskMeta>,
    /// Wakes the task so that an abort takes effect; it also keeps the allocation, and so `meta`,
    /// alive for as long as this handle exists.
    waker: Waker,
}

// SAFETY: `meta` only gives access to the `TaskMeta`, whose fields are `Sync` (atomics and a mutex)
// and live as long as `waker` holds the task allocation; everything else in the handle is Send/Sync
// as the `FallibleTask` and `Waker` are.
unsafe impl<T: Send> Send for JoinHandle<T> {}
// SAFETY: as for Send: shared access through `&JoinHandle` reads the atomics of `TaskMeta` only.
unsafe impl<T: Send> Sync for JoinHandle<T> {}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    pub(crate) fn new(task: super::Task<Result<T, JoinError>>, waker: Waker) -> Self {
        let meta = NonNull::from(task.metadata());
        Self {
            task: Some(task.fallible()),
            meta,
            waker,
        }
    }

    /// Cancels the task. Its future is dropped the next time its context runs it (on its home thread);
    /// awaiting the handle then gives [`JoinError::Cancelled`]. A task that already finished keeps its
    /// result. Works from any thread.
    ///
    /// ```
    /// use std::time::Duration;
    /// let ctx = aioctx::AioContext::new()?;
    /// let task = ctx.spawn_local(async {
    ///     aioctx::time::sleep(Duration::from_secs(3600)).await;
    ///     "never"
    /// });
    /// task.abort();
    /// assert!(ctx.block_on(task).unwrap_err().is_cancelled());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn abort(&self) {
        // SAFETY: `waker` references the task allocation that holds the metadata, so it is alive.
        let meta = unsafe { self.meta.as_ref() };
        // Pairs with the Acquire load at the task's next run, which this wake causes.
        meta.aborted.store(true, Ordering::Release);
        self.waker.wake_by_ref();
    }

    /// Blocks the calling thread until the task finishes and returns its result. For threads that do not
    /// run the task's context (a vCPU thread waiting for an IOThread, a test's main thread); on the
    /// task's own home thread use [`AioContext::block_on`](crate::AioContext::block_on) instead, since
    /// this would wait for a loop that it keeps from running.
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("join-demo")?;
    /// let h = io.remote().spawn(async { 40 + 2 });
    /// assert_eq!(h.join_blocking().unwrap(), 42);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn join_blocking(self) -> Result<T, JoinError> {
        futures::executor::block_on(self)
    }

    /// Whether the task has finished (completed, panicked or been cancelled).
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let task = ctx.spawn_local(async { 42 });
    /// assert!(!task.is_finished()); // spawning only queues it
    /// ctx.poll(false);
    /// assert!(task.is_finished());
    /// assert_eq!(ctx.block_on(task).unwrap(), 42);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(Err(JoinError::Cancelled));
        };
        match Pin::new(task).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(out) => {
                self.task = None;
                Poll::Ready(out.unwrap_or(Err(JoinError::Cancelled)))
            }
        }
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }
}
