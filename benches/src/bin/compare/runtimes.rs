//! One single-threaded executor of each runtime, behind one trait, so that scenarios needing only
//! spawn, sleep and yield are written once and run on every runtime ([`with_executor!`]).
//!
//! Each runtime runs in its idiomatic single-thread form, the fair counterpart of one AioContext:
//! tokio's current-thread runtime, compio's `Runtime` (io_uring), monoio's `IoUringDriver` with its
//! timer, smol's `LocalExecutor` driven by `async_io::block_on` (async-io's reactor: epoll, timers
//! through the poller's timeout), glommio's `LocalExecutor` made on the calling thread. A fresh
//! runtime serves every run, so nothing a run leaves behind (idle tasks) reaches the next.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use futures::future::{FutureExt, Map};

/// A single-threaded executor with its timers.
pub trait Executor {
    /// The awaitable handle of a spawned task; it yields the task's output (a task that panicked
    /// panics the benchmark).
    type Join<T: Send + 'static>: Future<Output = T>;

    /// Builds a fresh runtime on this thread and runs `future` on it to completion.
    fn block_on<F: Future>(future: F) -> io::Result<F::Output>;

    /// Spawns `future` on the runtime current on this thread.
    fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Self::Join<T>;

    /// The awaitable handle of a task spawned with [`spawn_local`](Self::spawn_local).
    type LocalJoin<T: 'static>: Future<Output = T>;

    /// Spawns a future that need not be `Send` (it may hold the runtime's timers, which are not
    /// `Send` on every runtime) on this thread's runtime; only inside
    /// [`block_on_local`](Self::block_on_local).
    fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> Self::LocalJoin<T>;

    /// [`block_on`](Self::block_on), where [`spawn_local`](Self::spawn_local) works (tokio needs a
    /// `LocalSet` for it).
    fn block_on_local<F: Future>(future: F) -> io::Result<F::Output> {
        Self::block_on(future)
    }

    /// The runtime's own timer.
    fn sleep(duration: Duration) -> impl Future<Output = ()>;

    /// Lets every other ready task run once before this one goes on.
    fn yield_now() -> impl Future<Output = ()> + Send;
}

/// Runs `$f::<E>($args)` with `E` the [`Executor`] of `$side`.
macro_rules! with_executor {
    ($side:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $side {
            $crate::harness::Side::Aioctx => $f::<$crate::runtimes::Aioctx>($($arg),*),
            $crate::harness::Side::Tokio => $f::<$crate::runtimes::Tokio>($($arg),*),
            $crate::harness::Side::Compio => $f::<$crate::runtimes::Compio>($($arg),*),
            $crate::harness::Side::Monoio => $f::<$crate::runtimes::Monoio>($($arg),*),
            $crate::harness::Side::Smol => $f::<$crate::runtimes::Smol>($($arg),*),
            $crate::harness::Side::Glommio => $f::<$crate::runtimes::Glommio>($($arg),*),
        }
    };
}
pub(crate) use with_executor;

/// Turns a join result into the task's output: a failed task is a failed benchmark.
fn joined<T, E: std::fmt::Debug>(result: Result<T, E>) -> T {
    result.expect("a benchmark task failed")
}

type Unwrapped<H, T, E> = Map<H, fn(Result<T, E>) -> T>;

pub struct Aioctx;

impl Executor for Aioctx {
    type Join<T: Send + 'static> = Unwrapped<aioctx::JoinHandle<T>, T, aioctx::JoinError>;

    fn block_on<F: Future>(future: F) -> io::Result<F::Output> {
        Ok(crate::harness::aioctx_context()?.block_on(future))
    }

    fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Self::Join<T> {
        aioctx::spawn(future).map(joined as fn(_) -> T)
    }

    type LocalJoin<T: 'static> = Unwrapped<aioctx::JoinHandle<T>, T, aioctx::JoinError>;

    fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> Self::LocalJoin<T> {
        aioctx::spawn_local(future).map(joined as fn(_) -> T)
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        aioctx::time::sleep(duration)
    }

    fn yield_now() -> impl Future<Output = ()> + Send {
        aioctx::yield_now()
    }
}

pub struct Tokio;

impl Executor for Tokio {
    type Join<T: Send + 'static> = Unwrapped<tokio::task::JoinHandle<T>, T, tokio::task::JoinError>;

    fn block_on<F: Future>(future: F) -> io::Result<F::Output> {
        Ok(crate::harness::tokio_current_thread()?.block_on(future))
    }

    fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Self::Join<T> {
        tokio::spawn(future).map(joined as fn(_) -> T)
    }

    type LocalJoin<T: 'static> = Unwrapped<tokio::task::JoinHandle<T>, T, tokio::task::JoinError>;

    fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> Self::LocalJoin<T> {
        tokio::task::spawn_local(future).map(joined as fn(_) -> T)
    }

    fn block_on_local<F: Future>(future: F) -> io::Result<F::Output> {
        let runtime = crate::harness::tokio_current_thread()?;
        Ok(tokio::task::LocalSet::new().block_on(&runtime, future))
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        tokio::time::sleep(duration)
    }

    fn yield_now() -> impl Future<Output = ()> + Send {
        tokio::task::yield_now()
    }
}

pub struct Compio;

impl Compio {
    pub fn runtime() -> io::Result<compio::runtime::Runtime> {
        compio::runtime::Runtime::new()
    }
}

impl Executor for Compio {
    type Join<T: Send + 'static> =
        Unwrapped<compio::runtime::JoinHandle<T>, T, compio::runtime::JoinError>;

    fn block_on<F: Future>(future: F) -> io::Result<F::Output> {
        Ok(Compio::runtime()?.block_on(future))
    }

    fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Self::Join<T> {
        compio::runtime::spawn(future).map(joined as fn(_) -> T)
    }

    type LocalJoin<T: 'static> =
        Unwrapped<compio::runtime::JoinHandle<T>, T, compio::runtime::JoinError>;

    fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> Self::LocalJoin<T> {
        compio::runtime::spawn(future).map(joined as fn(_) -> T)
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        compio::time::sleep(duration)
    }

    fn yield_now() -> impl Future<Output = ()> + Send {
        // compio has no yield of its own: the executor-neutral one (wake self, pend once).
        futures_lite::future::yield_now()
    }
}

pub struct Monoio;

impl Monoio {
    /// io_uring driver with timers: monoio's best on Linux.
    pub fn runtime() -> io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>>
    {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
    }
}

impl Executor for Monoio {
    type Join<T: Send + 'static> = monoio::task::JoinHandle<T>;

    fn block_on<F: Future>(future: F) -> io::Result<F::Output> {
        Ok(Monoio::runtime()?.block_on(future))
    }

    fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Self::Join<T> {
        monoio::spawn(future)
    }

    type LocalJoin<T: 'static> = monoio::task::JoinHandle<T>;

    fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> Self::LocalJoin<T> {
        monoio::spawn(future)
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        monoio::time::sleep(duration)
    }

    fn yield_now() -> impl Future<Output = ()> + Send {
        // monoio has no public yield: the executor-neutral one.
        futures_lite::future::yield_now()
    }
}

pub struct Smol;

thread_local! {
    /// The executor of the `Smol::block_on` running on this thread.
    static SMOL_EXECUTOR: RefCell<Option<Rc<async_executor::LocalExecutor<'static>>>> =
        const { RefCell::new(None) };
}

impl Smol {
    /// Spawns a task that need not be `Send` on the smol executor of this thread.
    pub fn spawn_local<T: 'static>(
        future: impl Future<Output = T> + 'static,
    ) -> async_executor::Task<T> {
        SMOL_EXECUTOR.with(|current| {
            current
                .borrow()
                .as_ref()
                .expect("Smol::spawn outside Smol::block_on")
                .spawn(future)
        })
    }
}

impl Executor for Smol {
    type Join<T: Send + 'static> = async_executor::Task<T>;

    fn block_on<F: Future>(future: F) -> io::Result<F::Output> {
        let executor = Rc::new(async_executor::LocalExecutor::new());
        SMOL_EXECUTOR.with(|current| *current.borrow_mut() = Some(executor.clone()));
        let output = async_io::block_on(executor.run(future));
        // Dropping the executor drops the tasks the run left behind.
        SMOL_EXECUTOR.with(|current| current.borrow_mut().take());
        Ok(output)
    }

    fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Self::Join<T> {
        Smol::spawn_local(future)
    }

    type LocalJoin<T: 'static> = async_executor::Task<T>;

    fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> Self::LocalJoin<T> {
        Smol::spawn_local(future)
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        async_io::Timer::after(duration).map(drop)
    }

    fn yield_now() -> impl Future<Output = ()> + Send {
        futures_lite::future::yield_now()
    }
}

pub struct Glommio;

impl Glommio {
    /// A glommio executor on the calling thread; `spin` is how long it busy-polls before it parks
    /// (glommio's counterpart of adaptive polling; off by default).
    pub fn block_on_spinning<F: Future>(
        spin: Option<Duration>,
        future: F,
    ) -> io::Result<F::Output> {
        let mut builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound);
        if let Some(spin) = spin {
            builder = builder.spin_before_park(spin);
        }
        let executor = builder
            .make()
            .map_err(|e| io::Error::other(format!("glommio executor: {e}")))?;
        Ok(executor.run(future))
    }
}

impl Executor for Glommio {
    type Join<T: Send + 'static> = glommio::Task<T>;

    fn block_on<F: Future>(future: F) -> io::Result<F::Output> {
        Glommio::block_on_spinning(None, future)
    }

    fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Self::Join<T> {
        glommio::spawn_local(future)
    }

    type LocalJoin<T: 'static> = glommio::Task<T>;

    fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> Self::LocalJoin<T> {
        glommio::spawn_local(future)
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        glommio::timer::sleep(duration)
    }

    fn yield_now() -> impl Future<Output = ()> + Send {
        // glommio's `yield_if_needed` only yields once the task queue's time slice is spent; the
        // executor-neutral yield does what the other runtimes' yields do.
        futures_lite::future::yield_now()
    }
}
