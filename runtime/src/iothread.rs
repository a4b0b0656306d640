//! [`IoThread`]: a named OS thread running one context (QEMU's iothread.c).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use crate::{Backend, Builder, PollParams, Remote, Stats};

/// Configures and starts an [`IoThread`].
///
/// ```
/// let io = aioctx::IoThread::builder().name("io0").poll_max_ns(16_384).spawn()?;
/// assert_eq!(io.remote().call(|| 2 + 2)?, 4); // runs in the IOThread
/// io.stop();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "an IoThread builder does nothing until .spawn() is called"]
pub struct IoThreadBuilder {
    name: String,
    /// The context's configuration, built on the new thread.
    context: Builder,
}

impl Default for IoThreadBuilder {
    fn default() -> Self {
        Self {
            name: "iothread".into(),
            context: Builder::new().poll_params(PollParams::IOTHREAD),
        }
    }
}

impl IoThreadBuilder {
    /// The IOThread's id; the OS thread is named `IO <name>` (truncated by the kernel to 15 bytes).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The fd monitor (default: `Backend::Auto`).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.context = self.context.backend(backend);
        self
    }

    /// QEMU's `poll-max-ns` (default 32768, as for QEMU's IOThreads).
    pub fn poll_max_ns(mut self, ns: u64) -> Self {
        self.context = self.context.poll_max_ns(ns);
        self
    }

    /// QEMU's `poll-grow` (0: double).
    pub fn poll_grow(mut self, factor: u64) -> Self {
        self.context = self.context.poll_grow(factor);
        self
    }

    /// QEMU's `poll-shrink` (0: reset).
    pub fn poll_shrink(mut self, divisor: u64) -> Self {
        self.context = self.context.poll_shrink(divisor);
        self
    }

    /// How long a handler's poll function may find nothing before the loop stops polling it (QEMU's
    /// 7 s; io_uring only): see [`Builder::poll_idle_timeout`](crate::Builder::poll_idle_timeout).
    pub fn poll_idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.context = self.context.poll_idle_timeout(timeout);
        self
    }

    /// QEMU's `aio-max-batch`: submit io_uring SQEs early once this many are queued (0: at the next wait).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.context = self.context.max_batch(max_batch);
        self
    }

    /// QEMU's `thread-pool-min` and `thread-pool-max` for [`spawn_blocking`](crate::spawn_blocking) work
    /// submitted from this IOThread (defaults 0 and 64).
    pub fn thread_pool(mut self, min: usize, max: usize) -> Self {
        self.context = self.context.thread_pool(min, max);
        self
    }

    /// Starts the thread and its context; returns once the context runs (or failed to be created).
    pub fn spawn(self) -> io::Result<IoThread> {
        if self.name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an IOThread name cannot contain a NUL byte",
            ));
        }
        let running = Arc::new(AtomicBool::new(true));
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<(Remote, libc::pid_t)>>();
        let context = self.context.clone();
        let thread = thread::Builder::new()
            .name(format!("IO {}", self.name))
            .spawn({
                let running = Arc::clone(&running);
                move || {
                    let ctx = context.build();
                    let ctx = match ctx {
                        Ok(ctx) => ctx,
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                            return;
                        }
                    };
                    // SAFETY: gettid has no arguments and cannot fail.
                    let tid = unsafe { libc::gettid() };
                    if ready_tx.send(Ok((ctx.remote(), tid))).is_err() {
                        return;
                    }
                    while running.load(Ordering::Acquire) {
                        ctx.poll(true);
                    }
                    // Dropping the context here cancels the tasks still pending, on this thread.
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok((remote, tid))) => Ok(IoThread {
                name: self.name,
                remote,
                tid,
                running,
                thread: Some(thread),
            }),
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(err)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other(
                    "the IOThread exited before its context started",
                ))
            }
        }
    }
}

/// A thread that runs one [`AioContext`](crate::AioContext) until stopped: QEMU's IOThread.
///
/// Work reaches it through [`remote`](IoThread::remote): spawn tasks, schedule closures, [`Remote::call`]
/// and wait. Polling parameters can change while it runs. Dropping the `IoThread` stops and joins it;
/// tasks still pending then are dropped on the IOThread and their [`JoinHandle`](crate::JoinHandle)s
/// report [`JoinError::Cancelled`](crate::JoinError::Cancelled).
///
/// ```
/// let io = aioctx::IoThread::builder().name("disk0").spawn()?;
/// let handle = io.remote().spawn(async { std::thread::current().name().map(str::to_owned) });
/// assert_eq!(handle.join_blocking().unwrap().as_deref(), Some("IO disk0"));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct IoThread {
    name: String,
    remote: Remote,
    tid: libc::pid_t,
    running: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl fmt::Debug for IoThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoThread")
            .field("name", &self.name)
            .field("thread_id", &self.tid)
            .finish_non_exhaustive()
    }
}

impl IoThread {
    /// A builder with QEMU's IOThread defaults.
    pub fn builder() -> IoThreadBuilder {
        IoThreadBuilder::default()
    }

    /// Starts an IOThread with the defaults and this name.
    pub fn spawn(name: impl Into<String>) -> io::Result<IoThread> {
        Self::builder().name(name).spawn()
    }

    /// The IOThread's id (its name without the `IO ` prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The handle other threads use to reach its context.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The kernel thread id (what QEMU's `query-iothreads` reports as `thread-id`).
    pub fn thread_id(&self) -> libc::pid_t {
        self.tid
    }

    /// The context's statistics, read from this thread.
    pub fn stats(&self) -> Stats {
        self.remote.stats()
    }

    /// Changes the polling parameters of the running context (QEMU's `qom-set` of `poll-max-ns` etc.)
    /// and returns once they are in effect.
    pub fn set_poll_params(&self, params: PollParams) -> io::Result<()> {
        params.validate()?;
        self.remote.call(move || {
            crate::context::with_current_inner(|inner| inner.set_poll_params(params))
        })?
    }

    /// The polling parameters in effect.
    pub fn poll_params(&self) -> io::Result<PollParams> {
        self.remote
            .call(|| crate::context::with_current_inner(|inner| Ok(inner.poll_params.get())))?
    }

    /// Changes the IOThread's blocking thread pool bounds (QEMU's `thread-pool-min`/`-max`).
    pub fn set_thread_pool_size(&self, min: usize, max: usize) -> io::Result<()> {
        self.remote.call(move || {
            crate::context::with_current_inner(|inner| inner.set_thread_pool_size(min, max))
        })?
    }

    /// Stops the loop and joins the thread. Pending tasks are cancelled on the IOThread.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if thread.thread().id() == thread::current().id() {
            // Dropped by code running in the IOThread itself: it cannot join itself. Stop the loop and
            // let the thread end on its own.
            self.running.store(false, Ordering::Release);
            return;
        }
        let running = Arc::clone(&self.running);
        // QEMU stops an IOThread with a one-shot BH that clears `running`, so the loop sees it at once.
        self.remote
            .schedule_oneshot(move || running.store(false, Ordering::Release));
        let _ = thread.join();
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
