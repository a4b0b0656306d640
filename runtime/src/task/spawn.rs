//! Spawning tasks, the task wrapper, and moving tasks between contexts.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;

use super::executor::Executor;
use super::queue::RunQueues;
use super::{JoinError, JoinHandle, PanicPayload};
use crate::context::current;
use crate::Remote;

/// What a task carries besides its future: for a `Send` task, the context it currently belongs to
/// (changed by [`reschedule`]); `!Send` tasks never move and carry nothing.
#[derive(Debug)]
pub(crate) struct TaskMeta {
    home: Option<Home>,
    /// Set by [`JoinHandle::abort`]; the task's next run drops its future instead of polling it.
    pub(crate) aborted: AtomicBool,
}

impl TaskMeta {
    fn new(home: Option<Home>) -> TaskMeta {
        TaskMeta {
            home,
            aborted: AtomicBool::new(false),
        }
    }
}

/// The executor a movable task belongs to now. It holds one strong count of that executor through a
/// raw pointer, so the schedule function reaches it with one load: no lock, no reference count, no
/// thread-local lookup.
///
/// The pointer changes only in [`reschedule`], which runs inside the task's poll. async-task never
/// calls the schedule function while the task runs (a wake during a poll is replayed after it), and
/// calls it for one wake at a time, so nobody reads the pointer while it is being replaced, and the
/// executor a reader sees stays alive for the whole call.
struct Home {
    executor: AtomicPtr<Executor>,
}

impl Home {
    fn new(executor: Arc<Executor>) -> Home {
        Home {
            executor: AtomicPtr::new(Arc::into_raw(executor).cast_mut()),
        }
    }

    /// The executor the task belongs to now.
    fn executor(&self) -> &Executor {
        // Acquire pairs with the Release swap in `move_to`.
        let ptr = self.executor.load(Ordering::Acquire);
        // SAFETY: `ptr` came from `Arc::into_raw` and this Home owns that strong count until `move_to`
        // or `drop` gives it back; neither runs while this reference lives (see the type's docs: the
        // schedule function and `reschedule` never overlap, and the reference does not outlive them).
        unsafe { &*ptr }
    }

    /// A strong count of the executor, for a caller that must keep it alive on its own.
    fn shared_executor(&self) -> Arc<Executor> {
        // Acquire pairs with the Release swap in `move_to`.
        let ptr = self.executor.load(Ordering::Acquire);
        // SAFETY: as in `executor`, `ptr` is a live `Arc` allocation whose count this Home holds; we
        // add one for the Arc we make.
        unsafe {
            Arc::increment_strong_count(ptr);
            Arc::from_raw(ptr)
        }
    }

    /// Moves the task to `target`; false if it is there already. Only from the task's own poll.
    fn move_to(&self, target: &Arc<Executor>) -> bool {
        if std::ptr::eq(self.executor(), Arc::as_ptr(target)) {
            return false;
        }
        let new = Arc::into_raw(Arc::clone(target)).cast_mut();
        // Release pairs with the Acquire load in `executor`: the next schedule call sees the new home.
        let old = self.executor.swap(new, Ordering::AcqRel);
        // SAFETY: `old` came from `Arc::into_raw` (in `new` or an earlier `move_to`) and its strong count
        // was ours; nobody else can read it any more (the swap replaced it, and no schedule call runs
        // during the poll that calls this).
        drop(unsafe { Arc::from_raw(old) });
        true
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Arc::into_raw` and its strong count is ours; `&mut self` means
        // no reader is left.
        drop(unsafe { Arc::from_raw(*self.executor.get_mut()) });
    }
}

impl std::fmt::Debug for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Home")
            .field("context", &self.executor().context_id())
            .finish()
    }
}

pub(crate) type Runnable = async_task::Runnable<TaskMeta>;
pub(crate) type Task<T> = async_task::Task<T, TaskMeta>;

thread_local! {
    /// The metadata of the task being run on this thread, for [`reschedule`].
    static RUNNING: Cell<*const TaskMeta> = const { Cell::new(std::ptr::null()) };
}

/// Where a task is registered: the executor (kept alive so a move can reach it) and the slot.
struct Registration {
    executor: Arc<Executor>,
    slot: usize,
}

impl Registration {
    /// Removes the registration (see [`Executor::unregister`]).
    fn remove(self) {
        self.executor.unregister(self.slot);
    }
}

pin_project_lite::pin_project! {
    /// Registers the task, once it waits, with the context that polls it, and unregisters it when the
    /// future is dropped (or the task moved to another context).
    struct Tracked<F> {
        #[pin]
        future: F,
        registration: Option<Registration>,
    }

    impl<F> PinnedDrop for Tracked<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(reg) = this.project().registration.take() {
                reg.remove();
            }
        }
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Only a task that waits must be reachable by teardown (one in a run queue is dropped with
        // the queue), so a task that completes in one poll never touches the registry.
        let output = this.future.poll(cx);
        if output.is_ready() {
            return output;
        }
        current::with_current(|home| {
            let here = this
                .registration
                .as_ref()
                .is_some_and(|r| r.executor.context_id() == home.id());
            if !here {
                if let Some(old) = this.registration.take() {
                    old.remove();
                }
                let executor = Executor::shared_of(home.shared());
                let slot = executor.register(cx.waker().clone());
                *this.registration = Some(Registration { executor, slot });
            }
        });
        Poll::Pending
    }
}

type TaskOutput<T> = Result<T, JoinError>;

pin_project_lite::pin_project! {
    /// Ends the task with [`JoinError::Cancelled`] once its [`JoinHandle`] aborted it. The flag lives
    /// in the task's metadata, reached through [`RUNNING`], so aborting costs a spawn no allocation
    /// and a poll one load.
    struct Abortable<F> {
        #[pin]
        future: F,
    }
}

impl<F, T> Future for Abortable<F>
where
    F: Future<Output = TaskOutput<T>>,
{
    type Output = TaskOutput<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TaskOutput<T>> {
        // SAFETY: RUNNING points at the metadata of the task being run on this thread (see
        // `set_running`), and this future is that task's outermost one, so the task is alive.
        let aborted = RUNNING
            .with(|r| unsafe { r.get().as_ref() })
            .is_some_and(|meta| meta.aborted.load(Ordering::Acquire));
        if aborted {
            return Poll::Ready(Err(JoinError::Cancelled));
        }
        self.project().future.poll(cx)
    }
}

/// Wraps a future whose output is already a task result: panics are caught, the task can be aborted,
/// the context tracks it.
fn wrap_flat<F, T>(future: F) -> impl Future<Output = TaskOutput<T>>
where
    F: Future<Output = TaskOutput<T>>,
{
    Tracked {
        future: Abortable {
            future: AssertUnwindSafe(future).catch_unwind().map(|out| {
                out.unwrap_or_else(|panic| Err(JoinError::Panic(PanicPayload::new(panic))))
            }),
        },
        registration: None,
    }
}

fn wrap<F: Future>(future: F) -> impl Future<Output = TaskOutput<F::Output>> {
    wrap_flat(future.map(Ok))
}

/// Queues the new task's first run and hands out its handle.
fn start<T>(runnable: Runnable, task: Task<TaskOutput<T>>) -> JoinHandle<T> {
    let waker = runnable.waker();
    runnable.schedule();
    JoinHandle::new(task, waker)
}

impl Executor {
    /// Spawns a `!Send` future on this context. Home thread only.
    pub(crate) fn spawn_local<F>(self: Arc<Self>, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.spawn_local_flat(future.map(Ok))
    }

    /// Spawns a `!Send` future whose output already is the task's result. Home thread only.
    pub(crate) fn spawn_local_flat<F, T>(self: Arc<Self>, future: F) -> JoinHandle<T>
    where
        F: Future<Output = TaskOutput<T>> + 'static,
        T: 'static,
    {
        let wrapped = wrap_flat(future);
        let executor = self;
        let (runnable, task) = async_task::Builder::new()
            .metadata(TaskMeta::new(None))
            .spawn_local(move |_| wrapped, move |r| drop(executor.schedule(r)));
        start(runnable, task)
    }

    /// Spawns a `Send` future on this context from any thread (QEMU's `aio_co_schedule`).
    pub(crate) fn spawn<F>(self: Arc<Self>, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let wrapped = wrap(future);
        let (runnable, task) = async_task::Builder::new()
            .metadata(TaskMeta::new(Some(Home::new(self))))
            .spawn(move |_| wrapped, schedule_movable);
        start(runnable, task)
    }

    /// Spawns a `!Send` future built on the home thread by `make`, from any thread.
    pub(crate) fn spawn_local_with<F, Fut>(self: Arc<Self>, make: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let wrapped = wrap(async move { make().await });
        let executor = self;
        // SAFETY: async-task requires a `!Send` future to be polled and dropped on one thread only. Until
        // its first poll this future holds nothing but `make` (which is Send) and Send wrapper state, so it
        // may be created here and queued for the context's home thread. Every poll then happens on the
        // home thread (the run queues are drained only there), and after the first poll the task is
        // dropped only there too: by an abort at its next run, or by the context's teardown. The one drop
        // elsewhere, a Runnable refused by the closed queue of a dead context, can only hit a task that
        // was never polled (live tasks were dropped at teardown), i.e. one holding only `make`. The
        // metadata pins the task to this context (`reschedule` refuses to move it).
        let (runnable, task) = unsafe {
            async_task::Builder::new()
                .metadata(TaskMeta::new(None))
                .spawn_unchecked(move |_| wrapped, move |r| drop(executor.schedule(r)))
        };
        start(runnable, task)
    }
}

/// The schedule function of `Send` tasks: queue on whichever context the task belongs to now.
///
/// async-task never calls this while the task runs (a wake during a poll is replayed after it), and
/// only a poll can move the task, so its home is stable for the duration of this call.
fn schedule_movable(runnable: Runnable) {
    let Some(home) = &runnable.metadata().home else {
        unreachable!("movable tasks always carry their home")
    };
    if home.executor().is_home_thread() {
        let executor: *const Executor = home.executor();
        // SAFETY: the task's Home keeps the executor alive while `runnable` lives. On the home thread,
        // `schedule` either queues the runnable on the executor's local queue, where only this thread
        // can run or drop it (not before `schedule` returns), so the runnable (and with it the executor)
        // outlives the call; or it gives the runnable back, to be dropped after the call.
        let refused = unsafe { &*executor }.schedule(runnable);
        drop(refused);
    } else {
        // From another thread the task may run, move and drop its Home as soon as it is queued, so the
        // executor is kept alive by a count of our own until `schedule` is done.
        let executor = home.shared_executor();
        let refused = executor.schedule(runnable);
        drop(refused);
        drop(executor);
    }
}

/// The task step: runs the tasks ready when it began, in wake order. Returns how many ran.
pub(crate) fn run_ready_tasks(queues: &RunQueues<Runnable>) -> usize {
    let ready = queues.begin_step();
    let mut ran = 0;
    while ran < ready {
        let Some(runnable) = queues.pop() else {
            break;
        };
        let _restore = set_running(runnable.metadata());
        runnable.run();
        ran += 1;
    }
    ran
}

/// Marks `meta` as the running task's until the guard drops (also on unwind).
fn set_running(meta: *const TaskMeta) -> impl Drop {
    struct Restore(*const TaskMeta);
    impl Drop for Restore {
        fn drop(&mut self) {
            RUNNING.with(|r| r.set(self.0));
        }
    }
    Restore(RUNNING.with(|r| r.replace(meta)))
}

/// Hides the running task from code that runs nested inside it (a `block_on` in a task), so that
/// [`reschedule`] there cannot move the outer task.
pub(crate) fn hide_running_task() -> impl Drop {
    set_running(std::ptr::null())
}

/// Moves the running task to the context behind `target` and continues there (QEMU's
/// `aio_co_reschedule_self`): the code after the `.await` runs on `target`'s home thread.
///
/// Only `Send` tasks can move, i.e. those started with [`spawn`](crate::spawn) or
/// [`Remote::spawn`]; in a `!Send` task, or outside any task (in a `block_on` future), it fails with
/// `InvalidInput`. It fails with `NotConnected` if `target`'s context is gone. Moving to the context the
/// task is on already is a no-op.
///
/// ```
/// let a = aioctx::IoThread::spawn("a")?;
/// let b = aioctx::IoThread::spawn("b")?;
/// let to_b = b.remote().clone();
/// let h = a.remote().spawn(async move {
///     let before = std::thread::current().name().unwrap().to_owned();
///     aioctx::reschedule(&to_b).await.unwrap();
///     (before, std::thread::current().name().unwrap().to_owned())
/// });
/// let (before, after) = h.join_blocking().unwrap();
/// assert_eq!((before.as_str(), after.as_str()), ("IO a", "IO b"));
/// # Ok::<(), std::io::Error>(())
/// ```
pub async fn reschedule(target: &Remote) -> io::Result<()> {
    let target_closed = {
        let shared = Arc::clone(target.shared());
        move || shared.is_closed()
    };
    let target = Executor::shared_of(target.shared());
    let mut moved = false;
    std::future::poll_fn(move |cx| {
        if moved {
            return Poll::Ready(Ok(()));
        }
        // SAFETY: RUNNING points at the metadata of the task whose `run` is on this thread's stack right
        // now (set just before `Runnable::run` and restored after it), so the task, and its metadata,
        // are alive for this poll.
        let meta = RUNNING.with(|r| unsafe { r.get().as_ref() });
        let Some(home) = meta.and_then(|m| m.home.as_ref()) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only Send tasks (aioctx::spawn, Remote::spawn) can move to another context",
            )));
        };
        if target_closed() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the target context was dropped",
            )));
        }
        if !home.move_to(&target) {
            return Poll::Ready(Ok(()));
        }
        moved = true;
        // Our next run happens where the schedule function now sends us.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
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
    current::with_current(|home| Executor::shared_of(home.shared()).spawn_local(future))
        .unwrap_or_else(|| panic!("aioctx::spawn_local called outside an aioctx context"))
}

/// Spawns a `Send` future on the current context. Like [`spawn_local`], with the bounds that let the task
/// move between contexts later ([`reschedule`]).
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
    current::with_current(|home| Executor::shared_of(home.shared()).spawn(future))
        .unwrap_or_else(|| panic!("aioctx::spawn called outside an aioctx context"))
}
