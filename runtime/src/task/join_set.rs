//! [`JoinSet`]: an owned group of tasks (tokio's `JoinSet`).

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{FuturesUnordered, Stream};

use super::{spawn, spawn_local, JoinError, JoinHandle};

/// A group of tasks on the current context, joined in the order they finish.
///
/// Dropping the set aborts every task still in it (unlike a [`JoinHandle`], which detaches): the set
/// owns its tasks. Each task is spawned on the context current at [`spawn`](JoinSet::spawn) or
/// [`spawn_local`](JoinSet::spawn_local), and follows the usual rules there (a panic becomes the
/// task's [`JoinError`]; [`reschedule`](crate::reschedule) may move a `Send` one).
///
/// ```
/// use std::time::Duration;
/// use aioctx::task::JoinSet;
/// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
/// ctx.block_on(async {
///     let mut set = JoinSet::new();
///     for ms in [30, 10, 20] {
///         set.spawn_local(async move {
///             aioctx::time::sleep(Duration::from_millis(ms)).await;
///             ms
///         });
///     }
///     let mut order = Vec::new();
///     while let Some(done) = set.join_next().await {
///         order.push(done.unwrap());
///     }
///     assert_eq!(order, [10, 20, 30]); // in the order they finished
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct JoinSet<T> {
    tasks: FuturesUnordered<JoinHandle<T>>,
}

impl<T> fmt::Debug for JoinSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinSet").field("len", &self.len()).finish()
    }
}

impl<T> Default for JoinSet<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> JoinSet<T> {
    /// An empty set.
    ///
    /// ```
    /// let set = aioctx::task::JoinSet::<()>::new();
    /// assert!(set.is_empty());
    /// ```
    pub fn new() -> Self {
        Self {
            tasks: FuturesUnordered::new(),
        }
    }

    /// How many tasks the set holds: running, or finished and not joined yet.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let mut set = aioctx::task::JoinSet::new();
    ///     set.spawn_local(async { 1 });
    ///     set.spawn_local(async { 2 });
    ///     assert_eq!(set.len(), 2);
    ///     set.join_next().await;
    ///     assert_eq!(set.len(), 1);
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the set holds no task.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let mut set = aioctx::task::JoinSet::new();
    ///     set.spawn_local(async {});
    ///     assert!(!set.is_empty());
    ///     set.join_next().await;
    ///     assert!(set.is_empty());
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Waits for the next task to finish and returns its result, or `None` once the set is empty.
    /// Cancel safe: dropping the future loses no result.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let mut set = aioctx::task::JoinSet::new();
    ///     set.spawn_local(async { panic!("boom") });
    ///     let err = set.join_next().await.unwrap().unwrap_err();
    ///     assert!(err.is_panic());
    ///     assert!(set.join_next().await.is_none());
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn join_next(&mut self) -> Option<Result<T, JoinError>> {
        poll_fn(|cx| self.poll_join_next(cx)).await
    }

    /// Polls for the next finished task (see [`join_next`](JoinSet::join_next)).
    ///
    /// ```
    /// use std::task::Poll;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let mut set = aioctx::task::JoinSet::<u8>::new();
    ///     let empty = std::future::poll_fn(|cx| Poll::Ready(set.poll_join_next(cx).is_ready())).await;
    ///     assert!(empty, "an empty set is ready with None");
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_join_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, JoinError>>> {
        Pin::new(&mut self.tasks).poll_next(cx)
    }

    /// Aborts every task in the set. They stay in it until joined: each then yields
    /// [`JoinError::Cancelled`], or its result if it finished first.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let mut set = aioctx::task::JoinSet::new();
    ///     set.spawn_local(std::future::pending::<()>());
    ///     set.abort_all();
    ///     assert!(set.join_next().await.unwrap().unwrap_err().is_cancelled());
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn abort_all(&mut self) {
        for task in self.tasks.iter() {
            task.abort();
        }
    }

    /// Aborts every task and waits until each has ended (its future dropped or finished).
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let mut set = aioctx::task::JoinSet::new();
    ///     for _ in 0..3 {
    ///         set.spawn_local(std::future::pending::<()>());
    ///     }
    ///     set.shutdown().await;
    ///     assert!(set.is_empty());
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn shutdown(&mut self) {
        self.abort_all();
        while self.join_next().await.is_some() {}
    }
}

impl<T: 'static> JoinSet<T> {
    /// Spawns a `!Send` future on the current context into the set.
    ///
    /// # Panics
    ///
    /// Outside a context (see [`spawn_local`](crate::spawn_local)).
    ///
    /// ```
    /// use std::rc::Rc;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let mut set = aioctx::task::JoinSet::new();
    ///     let shared = Rc::new(21); // !Send is fine
    ///     set.spawn_local(async move { *shared * 2 });
    ///     assert_eq!(set.join_next().await.unwrap().unwrap(), 42);
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[track_caller]
    pub fn spawn_local<F>(&mut self, future: F)
    where
        F: Future<Output = T> + 'static,
    {
        self.tasks.push(spawn_local(future));
    }
}

impl<T: Send + 'static> JoinSet<T> {
    /// Spawns a `Send` future on the current context into the set (it may move with
    /// [`reschedule`](crate::reschedule)).
    ///
    /// # Panics
    ///
    /// Outside a context (see [`spawn`](crate::spawn)).
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("joinset")?;
    /// let total = io.remote().spawn(async {
    ///     let mut set = aioctx::task::JoinSet::new();
    ///     for i in 1..=4u32 {
    ///         set.spawn(async move { i * i });
    ///     }
    ///     let mut sum = 0;
    ///     while let Some(square) = set.join_next().await {
    ///         sum += square.unwrap();
    ///     }
    ///     sum
    /// });
    /// assert_eq!(total.join_blocking().unwrap(), 30);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[track_caller]
    pub fn spawn<F>(&mut self, future: F)
    where
        F: Future<Output = T> + Send + 'static,
    {
        self.tasks.push(spawn(future));
    }
}

impl<T> Drop for JoinSet<T> {
    fn drop(&mut self) {
        self.abort_all();
    }
}
