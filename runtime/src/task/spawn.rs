//! Spawning tasks and the task wrapper.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use async_task::Runnable;
use futures::future::{AbortHandle, Abortable};
use futures::FutureExt;
use slab::Slab;

use super::queue::RunQueues;
use super::{JoinError, JoinHandle};
use crate::context::{current, Inner, Shared};

/// The wakers of a context's live tasks, so that teardown can reach tasks that wait for something.
pub(crate) type TaskRegistry = Slab<Waker>;

pin_project_lite::pin_project! {
    /// Registers the task with its context at first poll and unregisters it when the future is dropped.
    struct Tracked<F> {
        #[pin]
        future: F,
        context: u64,
        slot: Option<usize>,
    }

    impl<F> PinnedDrop for Tracked<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(slot) = this.slot.take() {
                // Task futures are only ever dropped on their home thread, where the context is current
                // (while it runs the task, or while it tears down).
                current::with_context(*this.context, |inner| {
                    let waker = inner.tasks.borrow_mut().try_remove(slot);
                    drop(waker);
                });
            }
        }
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.slot.is_none() {
            *this.slot = current::with_context(*this.context, |inner| {
                inner.tasks.borrow_mut().insert(cx.waker().clone())
            });
        }
        this.future.poll(cx)
    }
}

type TaskOutput<T> = Result<T, JoinError>;

/// Wraps a future: panics are caught, the task can be aborted, the context tracks it.
fn wrap<F: Future>(
    future: F,
    context: u64,
) -> (impl Future<Output = TaskOutput<F::Output>>, AbortHandle) {
    let (abort, registration) = AbortHandle::new_pair();
    let wrapped = Tracked {
        future: Abortable::new(AssertUnwindSafe(future).catch_unwind(), registration).map(|out| {
            match out {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(panic)) => Err(JoinError::Panic(panic)),
                Err(_aborted) => Err(JoinError::Cancelled),
            }
        }),
        context,
        slot: None,
    };
    (wrapped, abort)
}

fn scheduler(shared: &Arc<Shared>) -> impl Fn(Runnable) + Send + Sync + 'static {
    let shared = Arc::clone(shared);
    move |runnable| shared.schedule_task(runnable)
}

impl Inner {
    /// Spawns a `!Send` future on this context. Home thread only.
    pub(crate) fn spawn_local<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let (wrapped, abort) = wrap(future, self.id());
        let (runnable, task) = async_task::spawn_local(wrapped, scheduler(&self.shared));
        runnable.schedule();
        JoinHandle::new(task, abort)
    }
}

impl Shared {
    /// Spawns a `Send` future on this context from any thread (QEMU's `aio_co_schedule`).
    pub(crate) fn spawn<F>(self: &Arc<Self>, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (wrapped, abort) = wrap(future, self.id);
        let (runnable, task) = async_task::spawn(wrapped, scheduler(self));
        runnable.schedule();
        JoinHandle::new(task, abort)
    }
}

/// Runs the task step: the tasks ready when it began, in wake order. Returns how many ran.
pub(crate) fn run_ready_tasks(queues: &RunQueues<Runnable>) -> usize {
    let ready = queues.begin_step();
    let mut ran = 0;
    while ran < ready {
        let Some(runnable) = queues.pop() else {
            break;
        };
        runnable.run();
        ran += 1;
    }
    ran
}

/// Spawns a `!Send` future on the current context (the one polling on this thread) and returns its
/// [`JoinHandle`].
///
/// # Panics
///
/// When called outside a context: not inside [`AioContext::block_on`](crate::AioContext::block_on), a
/// task, or a callback of [`AioContext::poll`](crate::AioContext::poll). Use
/// [`AioContext::spawn_local`](crate::AioContext::spawn_local) there.
///
/// ```
/// use std::rc::Rc;
/// let ctx = aioctx::AioContext::new()?;
/// let shared = Rc::new(5); // !Send is fine
/// let doubled = ctx.block_on(async move {
///     aioctx::spawn_local(async move { *shared * 2 }).await
/// });
/// assert_eq!(doubled.unwrap(), 10);
/// # Ok::<(), std::io::Error>(())
/// ```
#[track_caller]
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    current::with_current(|inner| inner.spawn_local(future))
        .unwrap_or_else(|| panic!("aioctx::spawn_local called outside an aioctx context"))
}

/// Spawns a `Send` future on the current context. Like [`spawn_local`], with the bounds that let the task
/// move between contexts later.
///
/// # Panics
///
/// When called outside a context, like [`spawn_local`].
///
/// ```
/// let ctx = aioctx::AioContext::new()?;
/// let n = ctx.block_on(async { aioctx::spawn(async { 1 + 1 }).await });
/// assert_eq!(n.unwrap(), 2);
/// # Ok::<(), std::io::Error>(())
/// ```
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    current::with_current(|inner| Arc::clone(&inner.shared).spawn(future))
        .unwrap_or_else(|| panic!("aioctx::spawn called outside an aioctx context"))
}
