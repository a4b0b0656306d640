//! The executor's methods on the loop's types: a context is built with its [`Executor`] hooked in
//! (`Builder::build`, `AioContext::new`), and tasks are spawned on it from its home thread
//! (`AioContext::spawn_local`, `spawn_blocking`) or from anywhere (`Remote::spawn`,
//! `Remote::spawn_local_with`). These live here, above the loop, because the loop knows nothing of
//! futures.

use std::future::Future;
use std::io;

use super::blocking::spawn_blocking_on;
use super::executor::Executor;
use super::JoinHandle;
use crate::context::HomeState;
use crate::{AioContext, Builder, Remote};

impl Builder {
    /// Creates the context on the calling thread, which becomes its home thread.
    ///
    /// Errors: an invalid `AIOCTX_BACKEND`, ring size or poll parameters (`InvalidInput`), a forced
    /// backend the kernel refuses (io_uring: the error says why), or running out of file descriptors
    /// (`EMFILE`).
    ///
    /// ```
    /// let ctx = aioctx::Builder::new().build()?;
    /// assert!(!ctx.poll(false)); // a fresh context has nothing to do
    /// let err = aioctx::Builder::new().poll_max_ns(u64::MAX).build().unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn build(self) -> io::Result<AioContext> {
        HomeState::new(self, Executor::hook).map(AioContext::from_home)
    }
}

impl AioContext {
    /// A context with the default configuration: `Backend::Auto` (or `AIOCTX_BACKEND`), polling off.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// assert_eq!(ctx.poll_params().max_ns, 0); // polling off
    /// assert!(!ctx.poll(false)); // nothing to do yet
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<AioContext> {
        Builder::new().build()
    }

    /// Spawns a `!Send` future as a task of this context; it runs at the task step of the coming
    /// iterations. See [`JoinHandle`].
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let h = ctx.spawn_local(async { "hello" });
    /// assert_eq!(ctx.block_on(h).unwrap(), "hello");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn_local<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        Executor::shared_of(self.home().shared()).spawn_local(future)
    }

    /// Runs `f` on this context's blocking thread pool; see [`spawn_blocking`](crate::spawn_blocking).
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let worker = ctx.block_on(ctx.spawn_blocking(|| std::thread::current().id())).unwrap();
    /// assert_ne!(worker, std::thread::current().id()); // ran on a pool thread
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn_blocking<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        spawn_blocking_on(self.home(), f)
    }
}

impl Remote {
    /// Spawns a `Send` future as a task of the context from any thread (QEMU's `aio_co_schedule`). It
    /// runs on the context's home thread. If the context is gone, the task is cancelled at once and its
    /// handle yields [`JoinError::Cancelled`](crate::JoinError::Cancelled).
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let remote = ctx.remote();
    /// let handle = std::thread::spawn(move || remote.spawn(async { std::thread::current().id() }))
    ///     .join()
    ///     .unwrap();
    /// let ran_on = ctx.block_on(handle).unwrap();
    /// assert_eq!(ran_on, std::thread::current().id());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Executor::shared_of(self.shared()).spawn(future)
    }

    /// Spawns a task whose future is built on the context's home thread by `make`, so it may be `!Send`:
    /// sockets, `Rc`s, readiness futures. This is how code on another thread starts I/O tasks on an
    /// IOThread. The output must be `Send` to travel back through the [`JoinHandle`].
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("net")?;
    /// let h = io.remote().spawn_local_with(|| async {
    ///     let (a, b) = aioctx::net::UnixStream::pair()?; // !Send, created on the IOThread
    ///     drop((a, b));
    ///     Ok::<_, std::io::Error>(std::thread::current().name().map(str::to_owned))
    /// });
    /// assert_eq!(h.join_blocking().unwrap()?.as_deref(), Some("IO net"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn_local_with<F, Fut>(&self, make: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        Executor::shared_of(self.shared()).spawn_local_with(make)
    }
}
