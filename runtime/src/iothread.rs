//! [`IoThread`]: a named OS thread running one context (QEMU's iothread.c), and its glib mode
//! (feature `glib`): once someone asks for its `GMainContext`, the thread runs glib instead of `poll`.

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
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().name("disk1").spawn()?;
    /// let os_name = io.remote().call(|| std::thread::current().name().map(str::to_owned))?;
    /// assert_eq!(os_name.as_deref(), Some("IO disk1"));
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The fd monitor (default: `Backend::Auto`).
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().backend(aioctx::Backend::Epoll).spawn()?;
    /// io.remote().call(|| ())?;
    /// assert_eq!(io.stats().uring_enters, 0); // epoll: no io_uring_enter calls
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.context = self.context.backend(backend);
        self
    }

    /// QEMU's `poll-max-ns` (default 65536, twice QEMU's IOThreads': [`PollParams::IOTHREAD`] says why).
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().poll_max_ns(16_384).spawn()?;
    /// assert_eq!(io.poll_params()?.max_ns, 16_384);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_max_ns(mut self, ns: u64) -> Self {
        self.context = self.context.poll_max_ns(ns);
        self
    }

    /// QEMU's `poll-grow` (0: double).
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().poll_grow(4).spawn()?;
    /// assert_eq!(io.poll_params()?.grow, 4);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_grow(mut self, factor: u64) -> Self {
        self.context = self.context.poll_grow(factor);
        self
    }

    /// QEMU's `poll-shrink` (0: reset).
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().poll_shrink(2).spawn()?;
    /// assert_eq!(io.poll_params()?.shrink, 2);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_shrink(mut self, divisor: u64) -> Self {
        self.context = self.context.poll_shrink(divisor);
        self
    }

    /// QEMU's `poll-weight` (0: 3, the newest block time counts 1/8 in the average that sizes the
    /// poll window): see [`Builder::poll_weight`](crate::Builder::poll_weight).
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().poll_weight(1).spawn()?;
    /// assert_eq!(io.poll_params()?.weight, 1);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_weight(mut self, weight: u64) -> Self {
        self.context = self.context.poll_weight(weight);
        self
    }

    /// The share of recent polling phases (percent) that must have found work for the IoThread to
    /// poll at every chance (default 75; 0: always poll, as QEMU does): see
    /// [`Builder::poll_min_hit_percent`](crate::Builder::poll_min_hit_percent).
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().poll_min_hit_percent(0).spawn()?;
    /// assert_eq!(io.poll_params()?.min_hit_percent, 0);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_min_hit_percent(mut self, percent: u64) -> Self {
        self.context = self.context.poll_min_hit_percent(percent);
        self
    }

    /// How long a handler's poll function may find nothing before the loop stops polling it (QEMU's
    /// 7 s; io_uring only): see [`Builder::poll_idle_timeout`](crate::Builder::poll_idle_timeout).
    ///
    /// ```
    /// let io = aioctx::IoThread::builder()
    ///     .poll_idle_timeout(std::time::Duration::from_secs(1))
    ///     .spawn()?;
    /// assert_eq!(io.remote().call(|| 1 + 1)?, 2);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.context = self.context.poll_idle_timeout(timeout);
        self
    }

    /// Wake the IOThread's loop from other threads through its io_uring ring (`IORING_OP_MSG_RING`)
    /// instead of its eventfd; see [`Builder::wake_by_msg_ring`](crate::Builder::wake_by_msg_ring).
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().poll_max_ns(0).wake_by_msg_ring(true).spawn()?;
    /// assert_eq!(io.remote().call(|| 1 + 1)?, 2);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wake_by_msg_ring(mut self, on: bool) -> Self {
        self.context = self.context.wake_by_msg_ring(on);
        self
    }

    /// QEMU's `aio-max-batch`: submit io_uring SQEs early once this many are queued (0: at the next wait).
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().max_batch(32).spawn()?;
    /// assert_eq!(io.remote().call(|| 1 + 1)?, 2);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.context = self.context.max_batch(max_batch);
        self
    }

    /// QEMU's `thread-pool-min` and `thread-pool-max` for [`spawn_blocking`](crate::spawn_blocking) work
    /// submitted from this IOThread (defaults 0 and 64).
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().thread_pool(0, 2).spawn()?;
    /// let h = io.remote().spawn(async { aioctx::spawn_blocking(|| 6 * 7).await });
    /// assert_eq!(h.join_blocking().unwrap().unwrap(), 42);
    /// io.stop();
    /// assert!(aioctx::IoThread::builder().thread_pool(3, 2).spawn().is_err()); // min > max
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn thread_pool(mut self, min: usize, max: usize) -> Self {
        self.context = self.context.thread_pool(min, max);
        self
    }

    /// Starts the thread and its context; returns once the context runs (or failed to be created).
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().spawn()?;
    /// assert_eq!(io.name(), "iothread"); // the default name
    /// io.stop();
    /// let err = aioctx::IoThread::builder().name("a\0b").spawn().unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn(self) -> io::Result<IoThread> {
        if self.name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an IOThread name cannot contain a NUL byte",
            ));
        }
        let running = Arc::new(AtomicBool::new(true));
        #[cfg(feature = "glib")]
        let glib_mode = Arc::new(GlibMode::default());
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<(Remote, libc::pid_t)>>();
        let context = self.context.clone();
        let thread = thread::Builder::new()
            .name(format!("IO {}", self.name))
            .spawn({
                let running = Arc::clone(&running);
                #[cfg(feature = "glib")]
                let glib_mode = Arc::clone(&glib_mode);
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
                    // Acquire pairs with the Release stores in `stop_and_join` (both run on this thread
                    // in practice: a BH or the IOThread's own code clears the flag).
                    while running.load(Ordering::Acquire) {
                        ctx.poll(true);
                        #[cfg(feature = "glib")]
                        glib_mode.run_if_asked(&ctx, &running);
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
                #[cfg(feature = "glib")]
                glib_mode,
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
    #[cfg(feature = "glib")]
    glib_mode: Arc<GlibMode>,
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
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().spawn()?;
    /// assert_eq!(io.poll_params()?, aioctx::PollParams::IOTHREAD);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn builder() -> IoThreadBuilder {
        IoThreadBuilder::default()
    }

    /// Starts an IOThread with the defaults and this name.
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("worker")?;
    /// assert_eq!(io.remote().call(|| 2 + 2)?, 4);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn(name: impl Into<String>) -> io::Result<IoThread> {
        Self::builder().name(name).spawn()
    }

    /// The IOThread's id (its name without the `IO ` prefix).
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("disk0")?;
    /// assert_eq!(io.name(), "disk0");
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The handle other threads use to reach its context.
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("worker")?;
    /// let remote = io.remote().clone();
    /// let thread_name = || std::thread::current().name().map(String::from);
    /// let caller = std::thread::spawn(move || remote.call(thread_name));
    /// assert_eq!(caller.join().unwrap()?.as_deref(), Some("IO worker"));
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The kernel thread id (what QEMU's `query-iothreads` reports as `thread-id`).
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("tid")?;
    /// // A thread of this process, as /proc lists it.
    /// assert!(std::path::Path::new(&format!("/proc/self/task/{}", io.thread_id())).exists());
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn thread_id(&self) -> libc::pid_t {
        self.tid
    }

    /// The context's statistics, read from this thread.
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("stats")?;
    /// io.remote().call(|| ())?; // runs as a bottom half
    /// assert!(io.stats().bhs_run >= 1);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.remote.stats()
    }

    /// Changes the polling parameters of the running context (QEMU's `qom-set` of `poll-max-ns` etc.)
    /// and returns once they are in effect.
    ///
    /// ```
    /// use aioctx::{IoThread, PollParams};
    /// let io = IoThread::spawn("tuned")?;
    /// io.set_poll_params(PollParams { max_ns: 0, ..PollParams::IOTHREAD })?; // polling off
    /// assert_eq!(io.poll_params()?.max_ns, 0);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_poll_params(&self, params: PollParams) -> io::Result<()> {
        params.validate()?;
        self.remote
            .call(move || crate::context::with_current_home(|home| home.set_poll_params(params)))?
    }

    /// The polling parameters in effect.
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("params")?;
    /// assert_eq!(io.poll_params()?.max_ns, 65_536); // the IOThread default (QEMU's is 32768)
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_params(&self) -> io::Result<PollParams> {
        self.remote
            .call(|| crate::context::with_current_home(|home| Ok(home.poll_params())))?
    }

    /// Changes QEMU's `aio-max-batch` of the running context (its `qom-set`; see
    /// [`IoThreadBuilder::max_batch`]) and returns once it is in effect.
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("batch")?;
    /// assert_eq!(io.max_batch()?, 0); // QEMU's default: submit at the next wait
    /// io.set_max_batch(32)?;
    /// assert_eq!(io.max_batch()?, 32);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_max_batch(&self, max_batch: usize) -> io::Result<()> {
        self.remote.call(move || {
            crate::context::with_current_home(|home| {
                home.set_max_batch(max_batch);
                Ok(())
            })
        })?
    }

    /// QEMU's `aio-max-batch` in effect.
    ///
    /// ```
    /// let io = aioctx::IoThread::builder().max_batch(8).spawn()?;
    /// assert_eq!(io.max_batch()?, 8);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn max_batch(&self) -> io::Result<usize> {
        self.remote
            .call(|| crate::context::with_current_home(|home| Ok(home.max_batch())))?
    }

    /// Changes the IOThread's blocking thread pool bounds (QEMU's `thread-pool-min`/`-max`).
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("pool")?;
    /// io.set_thread_pool_size(1, 8)?;
    /// assert!(io.set_thread_pool_size(4, 2).is_err()); // min > max
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_thread_pool_size(&self, min: usize, max: usize) -> io::Result<()> {
        self.remote.call(move || {
            crate::context::with_current_home(|home| home.set_thread_pool_size(min, max))
        })?
    }

    /// The IOThread's own glib context (QEMU's `iothread_get_g_main_context`; feature `glib`). The
    /// first call switches the thread from running its context's [`poll`](crate::AioContext::poll)
    /// to running glib on this `MainContext`, with the context attached as a source
    /// ([`AioContext::g_source`](crate::AioContext::g_source)): glib sources attached to it then run
    /// on the IOThread, and so does everything the context ran before. The thread stays in glib mode
    /// until it stops. Every call returns the same context.
    ///
    /// glib mode is the compatibility path: glib's timeouts are whole milliseconds (a timer of the
    /// context fires up to 1 ms late), and it does not busy-poll (the poll parameters have no effect,
    /// and every cross-thread wake is an eventfd write and a wakeup of glib's poll).
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use aioctx::glib;
    ///
    /// let io = aioctx::IoThread::spawn("gio")?;
    /// let gctx = io.g_main_context();
    /// let (tx, rx) = mpsc::channel();
    /// let source = glib::idle_source_new(None, glib::Priority::DEFAULT, move || {
    ///     tx.send(std::thread::current().name().map(str::to_owned)).unwrap();
    ///     glib::ControlFlow::Break
    /// });
    /// source.attach(Some(&gctx)); // from this thread; it runs on the IOThread
    /// assert_eq!(rx.recv().unwrap().as_deref(), Some("IO gio"));
    /// assert_eq!(io.remote().call(|| 1 + 1)?, 2); // the context still runs too
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[cfg(feature = "glib")]
    pub fn g_main_context(&self) -> glib::MainContext {
        let context = self
            .glib_mode
            .context
            .get_or_init(glib::MainContext::new)
            .clone();
        // Release pairs with the Acquire load in `run_if_asked`: the context is visible there.
        self.glib_mode.asked.store(true, Ordering::Release);
        self.remote.notify();
        context
    }

    /// Stops the loop and joins the thread. Pending tasks are cancelled on the IOThread.
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("short")?;
    /// let remote = io.remote().clone();
    /// io.stop();
    /// assert!(remote.is_closed());
    /// assert!(remote.call(|| ()).is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
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

/// An IOThread's glib mode: its `GMainContext`, created on first request, and whether it was
/// requested (QEMU's `worker_context` and `run_gcontext`).
#[cfg(feature = "glib")]
#[derive(Debug, Default)]
struct GlibMode {
    context: std::sync::OnceLock<glib::MainContext>,
    asked: AtomicBool,
}

#[cfg(feature = "glib")]
impl GlibMode {
    /// On the IOThread, after each `poll`: once glib mode was asked for, runs glib until the
    /// IOThread stops. If another thread owns the glib context, stays on `poll`.
    fn run_if_asked(&self, ctx: &crate::AioContext, running: &AtomicBool) {
        // Acquire pairs with the Release store in `g_main_context`.
        if !self.asked.load(Ordering::Acquire) {
            return;
        }
        let Some(context) = self.context.get() else {
            return;
        };
        if !crate::gsource::run_gcontext(ctx, context, running) {
            // Relaxed: read back only on this thread.
            self.asked.store(false, Ordering::Relaxed);
        }
    }
}
